/*
 * gguf_meta.c — a GGUF model's metadata as the Hugging Face files a model
 * folder would hold: config.json and tokenizer.json.
 *
 * DESIGN
 *   config.json is rebuilt from the architecture-prefixed hyperparameters
 *   (gguf.md §1.7, read in reverse): {arch}.embedding_length -> hidden_size,
 *   block_count, feed_forward_length, attention.head_count(_kv),
 *   layer_norm_rms_epsilon, rope.freq_base, context_length, key_length ->
 *   head_dim; vocab_size from {arch}.vocab_size, else the token list, else
 *   token_embd's rows; tied when there is no output.weight; bos/eos from
 *   tokenizer.ggml.*; the HF class, model_type and activation of the
 *   architecture (gguf_arch.h), Gemma2/3's softcaps and sliding window,
 *   Phi-3's original context, sliding window and partial rotary factor.
 *   A required key that is missing is an error naming it; rope_scaling
 *   comes from gguf_rope.c, which refuses what it cannot rebuild (it would
 *   be silently lost).
 *
 *   tokenizer.json is built for the byte-level BPE form (tokenizer.ggml.model
 *   "gpt2"): the token list as the BPE vocabulary, the merges, a ByteLevel
 *   pre-tokenizer (GPT-2's split) and CONTROL / USER_DEFINED tokens as added
 *   special tokens — what the evaluator's tokenizer reads. The SentencePiece
 *   form ("llama") becomes a byte-fallback BPE as Hugging Face's Llama
 *   tokenizers are: a Prepend("▁") (unless add_space_prefix is false) +
 *   Replace(" ", "▁") normalizer, no pre-tokenizer, the unk token, and
 *   merges derived from the scores as Hugging Face's SentencePiece
 *   extractor does: every split of a NORMAL piece into two pieces of the
 *   vocabulary is a merge, ranked by the piece's score (highest first),
 *   then its id, then the left part's length. Other forms ("bert", ...)
 *   are refused with the form named.
 *   Both are assembled with jansson, so every string is escaped properly;
 *   tokens that are not UTF-8 are refused by name. The typed lookups
 *   (alloy_gguf_int, ...) read the values gguf.c validated, in place.
 */
#include "core/internal.h"
#include "formats/gguf.h"
#include "formats/gguf_arch.h"

#include <jansson.h>
#include <math.h>

static int nomem(const struct alloy_gguf *g, struct alloy_err *err)
{
    return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", alloy_gguf_base((struct alloy_gguf *)g)->path);
}

static const char *path_of(const struct alloy_gguf *g) { return alloy_gguf_base((struct alloy_gguf *)g)->path; }

/* ------------------------------------------------------------ typed lookups */

static int type_err(const struct alloy_gguf *g, const char *key, const char *want, uint32_t found, struct alloy_err *err)
{
    alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected %s, found %s", path_of(g), key, want,
                  alloy_gguf_vtype_name(found));
    return -1;
}

static int64_t int_at(uint32_t type, const uint8_t *p)
{
    switch (type) {
    case GGUF_U8: return p[0];
    case GGUF_I8: return (int8_t)p[0];
    case GGUF_U16: { uint16_t v; memcpy(&v, p, 2); return v; }
    case GGUF_I16: { int16_t v; memcpy(&v, p, 2); return v; }
    case GGUF_U32: { uint32_t v; memcpy(&v, p, 4); return v; }
    case GGUF_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case GGUF_U64: { uint64_t v; memcpy(&v, p, 8); return v > INT64_MAX ? -1 : (int64_t)v; }
    default: { int64_t v; memcpy(&v, p, 8); return v; }
    }
}

static unsigned int_size(uint32_t t) { return t <= GGUF_I8 ? 1 : t <= GGUF_I16 ? 2 : t <= GGUF_I32 ? 4 : 8; }
static int is_int_type(uint32_t t) { return t <= GGUF_I32 || t == GGUF_U64 || t == GGUF_I64; }

int alloy_gguf_int(const struct alloy_gguf *g, const char *key, int64_t *v, struct alloy_err *err)
{
    uint32_t t, e;
    uint64_t n;
    const uint8_t *p;
    if (!alloy_gguf_kv(g, key, &t, &e, &n, &p)) return 0;
    if (!is_int_type(t)) return type_err(g, key, "an integer", t, err);
    *v = int_at(t, p);
    return 1;
}

int alloy_gguf_float(const struct alloy_gguf *g, const char *key, double *v, struct alloy_err *err)
{
    uint32_t t, e;
    uint64_t n;
    const uint8_t *p;
    if (!alloy_gguf_kv(g, key, &t, &e, &n, &p)) return 0;
    if (t == GGUF_F32) { float f; memcpy(&f, p, 4); *v = f; }
    else if (t == GGUF_F64) memcpy(v, p, 8);
    else return type_err(g, key, "FLOAT32 or FLOAT64", t, err);
    return 1;
}

int alloy_gguf_bool(const struct alloy_gguf *g, const char *key, int *v, struct alloy_err *err)
{
    uint32_t t, e;
    uint64_t n;
    const uint8_t *p;
    if (!alloy_gguf_kv(g, key, &t, &e, &n, &p)) return 0;
    if (t != GGUF_BOOL) return type_err(g, key, "BOOL", t, err);
    *v = p[0];
    return 1;
}

int alloy_gguf_str(const struct alloy_gguf *g, const char *key, const char **s, uint64_t *len, struct alloy_err *err)
{
    uint32_t t, e;
    uint64_t n;
    const uint8_t *p;
    if (!alloy_gguf_kv(g, key, &t, &e, &n, &p)) return 0;
    if (t != GGUF_STRING) return type_err(g, key, "STRING", t, err);
    memcpy(len, p, 8);
    *s = (const char *)p + 8;
    return 1;
}

int alloy_gguf_array(const struct alloy_gguf *g, const char *key, enum gguf_vtype elem, uint64_t *n,
                     struct alloy_err *err)
{
    uint32_t t, e;
    const uint8_t *p;
    if (!alloy_gguf_kv(g, key, &t, &e, n, &p)) return 0;
    if (t != GGUF_ARRAY) return type_err(g, key, "an ARRAY", t, err);
    if (e != (uint32_t)elem && !(is_int_type(elem) && is_int_type(e)))
        return type_err(g, key, alloy_gguf_vtype_name(elem), e, err);
    return 1;
}

int alloy_gguf_array_strings(const struct alloy_gguf *g, const char *key,
                             int (*fn)(void *ctx, uint64_t i, const char *s, uint64_t len), void *ctx)
{
    uint32_t t, e;
    uint64_t n;
    const uint8_t *p;
    if (!alloy_gguf_kv(g, key, &t, &e, &n, &p) || t != GGUF_ARRAY || e != GGUF_STRING) return 0;
    for (uint64_t i = 0; i < n; i++) { /* lengths were validated when the file was opened */
        uint64_t len;
        memcpy(&len, p, 8);
        int rc = fn(ctx, i, (const char *)p + 8, len);
        if (rc) return rc;
        p += 8 + len;
    }
    return 0;
}

int64_t alloy_gguf_array_int(const struct alloy_gguf *g, const char *key, uint64_t i)
{
    uint32_t t, e;
    uint64_t n;
    const uint8_t *p;
    if (!alloy_gguf_kv(g, key, &t, &e, &n, &p) || t != GGUF_ARRAY || !is_int_type(e) || i >= n) return -1;
    return int_at(e, p + i * int_size(e));
}

/* ------------------------------------------------------------ config.json */

/* {arch}.<suffix> as an integer into the JSON object under name; required: absent is an error. */
static int put_int(const struct alloy_gguf *g, json_t *o, const char *suffix, const char *name, int required,
                   int64_t *out, struct alloy_err *err)
{
    char key[128];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", alloy_gguf_arch(g), suffix);
    int has = alloy_gguf_int(g, key, &v, err);
    if (has < 0) return ALLOY_ERR_FORMAT;
    if (!has && required)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected an integer (config.json's %s), found none",
                             path_of(g), key, name);
    if (!has) return ALLOY_OK;
    if (v < 0 || v > INT32_MAX)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected 0 to 2^31-1, found %lld", path_of(g), key,
                             (long long)v);
    if (out) *out = v;
    return json_object_set_new(o, name, json_integer(v)) ? nomem(g, err) : ALLOY_OK;
}

static int put_float(const struct alloy_gguf *g, json_t *o, const char *suffix, const char *name, double def,
                     struct alloy_err *err)
{
    char key[128];
    double v = def;
    snprintf(key, sizeof key, "%s.%s", alloy_gguf_arch(g), suffix);
    int has = alloy_gguf_float(g, key, &v, err);
    if (has < 0) return ALLOY_ERR_FORMAT;
    if (!has && isinf(def)) return ALLOY_OK; /* optional */
    if (!has && isnan(def))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a float (config.json's %s), found none",
                             path_of(g), key, name);
    if (!isfinite(v))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a finite value, found %g", path_of(g), key, v);
    return json_object_set_new(o, name, json_real(v)) ? nomem(g, err) : ALLOY_OK;
}

static int put_token_id(const struct alloy_gguf *g, json_t *o, const char *which, struct alloy_err *err)
{
    char key[64], name[32];
    int64_t v;
    snprintf(key, sizeof key, "tokenizer.ggml.%s_token_id", which);
    snprintf(name, sizeof name, "%s_token_id", which);
    int has = alloy_gguf_int(g, key, &v, err);
    if (has < 0) return ALLOY_ERR_FORMAT;
    if (has && v >= 0 && v <= INT32_MAX && json_object_set_new(o, name, json_integer(v))) return nomem(g, err);
    return ALLOY_OK;
}

static int set_int(const struct alloy_gguf *g, json_t *o, const char *name, int64_t v, struct alloy_err *err)
{
    return json_object_set_new(o, name, json_integer(v)) ? nomem(g, err) : ALLOY_OK;
}

/* What HF's config classes of Gemma2/3 and Phi-3 hold beyond the common keys; *rot the rotary dimension. */
static int arch_fields(const struct alloy_gguf *g, const struct gguf_arch *a, json_t *o, int64_t embd, int64_t heads,
                       int64_t *rot, struct alloy_err *err)
{
    int64_t hd = json_integer_value(json_object_get(o, "head_dim")), v = 0;
    int rc = ALLOY_OK;
    if (a->flags & GA_NORM_PLUS1 && json_object_set_new(o, "hidden_activation", json_string(a->hidden_act)))
        return nomem(g, err);
    if (a->id == GA_GEMMA2 || a->id == GA_GEMMA3) {
        /* llama.cpp scales queries by 1/sqrt(head_dim) for the sizes the converter writes (query_pre_attn_scalar
         * is not stored); Gemma3's local layers use base 10000 and every sixth layer is global */
        if ((rc = put_float(g, o, "attn_logit_softcapping", "attn_logit_softcapping", INFINITY, err)) ||
            (rc = put_float(g, o, "final_logit_softcapping", "final_logit_softcapping", INFINITY, err)) ||
            (rc = put_int(g, o, "attention.sliding_window", "sliding_window", 0, NULL, err)) ||
            (rc = set_int(g, o, "query_pre_attn_scalar", hd, err)))
            return rc;
        if (a->id == GA_GEMMA3 && (json_object_set_new(o, "rope_local_base_freq", json_real(10000.0)) ||
                                   json_object_set_new(o, "sliding_window_pattern", json_integer(6))))
            return nomem(g, err);
    }
    if (a->id == GA_PHI3) {
        if ((rc = put_int(g, o, "rope.scaling.original_context_length", "original_max_position_embeddings", 0, NULL,
                          err)) ||
            (rc = put_int(g, o, "attention.sliding_window", "sliding_window", 0, &v, err)) ||
            (rc = put_int(g, o, "rope.dimension_count", "rope_dimension_count", 0, rot, err)))
            return rc;
        json_object_del(o, "rope_dimension_count");
        if (v == 0 && json_object_set_new(o, "sliding_window", json_null())) return nomem(g, err); /* 0: none (Phi-4) */
        if (heads > 0 && *rot * heads != embd &&
            json_object_set_new(o, "partial_rotary_factor", json_real((double)(*rot * heads) / (double)embd)))
            return nomem(g, err);
    }
    return ALLOY_OK;
}

static int config_head(const struct alloy_gguf *g, const struct gguf_arch *a, json_t *o, struct alloy_err *err)
{
    json_t *archs = json_array();
    if (!archs || json_array_append_new(archs, json_string(a->hf_class)) || json_object_set_new(o, "architectures", archs) ||
        json_object_set_new(o, "model_type", json_string(a->model_type)) ||
        json_object_set_new(o, "hidden_act", json_string(a->hidden_act)))
        return nomem(g, err);
    return ALLOY_OK;
}

/* vocab_size: {arch}.vocab_size, else the token list's length, else token_embd's rows. */
static int put_vocab(const struct alloy_gguf *g, json_t *o, struct alloy_err *err)
{
    int64_t vocab = -1;
    int rc = put_int(g, o, "vocab_size", "vocab_size", 0, &vocab, err);
    if (rc) return rc;
    const struct alloy_tensor_file *f = alloy_gguf_base((struct alloy_gguf *)g);
    const struct alloy_tensor *emb = alloy_tensor_file_find(f, "model.embed_tokens.weight");
    uint64_t ntok;
    if (vocab < 0 && alloy_gguf_array(g, "tokenizer.ggml.tokens", GGUF_STRING, &ntok, err) > 0) vocab = (int64_t)ntok;
    if (vocab < 0 && emb && emb->ndim == 2) vocab = emb->shape[0];
    if (vocab < 0) return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s.vocab_size: expected a vocabulary size (or a "
                                        "token list or token_embd.weight), found none", path_of(g), alloy_gguf_arch(g));
    return set_int(g, o, "vocab_size", vocab, err);
}

static int config_fields(const struct alloy_gguf *g, json_t *o, struct alloy_err *err)
{
    const struct gguf_arch *a = gguf_arch_named(alloy_gguf_arch(g));
    if (!a)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: general.architecture: %s, found \"%s\"", path_of(g),
                             gguf_arch_names(), alloy_gguf_arch(g));
    int64_t heads = 0, embd = 0, rot = 0;
    int rc;
    if ((rc = config_head(g, a, o, err)) ||
        (rc = put_int(g, o, "embedding_length", "hidden_size", 1, &embd, err)) ||
        (rc = put_int(g, o, "feed_forward_length", "intermediate_size", 1, NULL, err)) ||
        (rc = put_int(g, o, "block_count", "num_hidden_layers", 1, NULL, err)) ||
        (rc = put_int(g, o, "attention.head_count", "num_attention_heads", 1, &heads, err)) ||
        (rc = put_int(g, o, "context_length", "max_position_embeddings", 1, NULL, err)) ||
        (rc = put_float(g, o, "attention.layer_norm_rms_epsilon", "rms_norm_eps", NAN, err)) ||
        (rc = put_float(g, o, "rope.freq_base", "rope_theta", 10000.0, err)))
        return rc;
    if ((rc = put_int(g, o, "attention.head_count_kv", "num_key_value_heads", 0, NULL, err))) return rc;
    if (!json_object_get(o, "num_key_value_heads") && (rc = set_int(g, o, "num_key_value_heads", heads, err)))
        return rc; /* llama.cpp's default: as many as the query heads */
    if ((rc = put_int(g, o, "attention.key_length", "head_dim", 0, NULL, err))) return rc;
    if (!json_object_get(o, "head_dim") && heads > 0 && (rc = set_int(g, o, "head_dim", embd / heads, err))) return rc;
    rot = json_integer_value(json_object_get(o, "head_dim"));
    if ((rc = arch_fields(g, a, o, embd, heads, &rot, err)) || (rc = gguf_rope_config(g, o, rot, err)) ||
        (rc = put_vocab(g, o, err)))
        return rc;
    int tied = !alloy_tensor_file_find(alloy_gguf_base((struct alloy_gguf *)g), "lm_head.weight");
    if (json_object_set_new(o, "tie_word_embeddings", json_boolean(tied)) ||
        json_object_set_new(o, "torch_dtype", json_string("float32")))
        return nomem(g, err);
    if ((rc = put_token_id(g, o, "bos", err)) || (rc = put_token_id(g, o, "eos", err))) return rc;
    return ALLOY_OK;
}

static int dump(const struct alloy_gguf *g, json_t *o, char **out, struct alloy_err *err)
{
    *out = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(o);
    return *out ? ALLOY_OK : nomem(g, err);
}

int alloy_gguf_config_json(const struct alloy_gguf *g, char **out, struct alloy_err *err)
{
    json_t *o = json_object();
    if (!o) return nomem(g, err);
    int rc = config_fields(g, o, err);
    if (rc) {
        json_decref(o);
        return rc;
    }
    return dump(g, o, out, err);
}

/* ------------------------------------------------------------ tokenizer.json */

struct tok_walk {
    const struct alloy_gguf *g;
    json_t *vocab, *added, *merges;
    int64_t ntypes;
    int spm;          /* the "llama" form */
    const char *unk;  /* its UNKNOWN token (borrowed from vocab's keys), NULL: none */
    struct alloy_err *err;
};

static int add_token(void *ctx, uint64_t i, const char *s, uint64_t len)
{
    struct tok_walk *w = ctx;
    json_t *str = json_stringn(s, (size_t)len); /* NULL for invalid UTF-8 (or no memory) */
    if (!str)
        return alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%llu]: expected UTF-8 text",
                             path_of(w->g), (unsigned long long)i);
    char *key = alloy_xmalloc(len + 1);
    int rc = key ? ALLOY_OK : nomem(w->g, w->err);
    if (!rc) {
        memcpy(key, s, len);
        key[len] = '\0';
        if (memchr(s, 0, len) || json_object_get(w->vocab, key))
            rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%llu]: a unique token without NUL, "
                               "found \"%.40s\" again", path_of(w->g), (unsigned long long)i, key);
        else if (json_object_set_new(w->vocab, key, json_integer((json_int_t)i)))
            rc = nomem(w->g, w->err);
    }
    int64_t type = (int64_t)i < w->ntypes ? alloy_gguf_array_int(w->g, "tokenizer.ggml.token_type", i) : 1;
    if (!rc && w->spm && type == 2) w->unk = json_object_iter_key(json_object_iter_at(w->vocab, key));
    if (!rc && (type == 3 || type == 4 || (w->spm && type == 2))) { /* CONTROL, USER_DEFINED: matched whole */
        json_t *a = json_pack("{s:I, s:O, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)i, "content", str,
                              "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1);
        if (!a || json_array_append_new(w->added, a)) rc = nomem(w->g, w->err);
    }
    free(key);
    json_decref(str);
    return rc;
}

static int add_merge(void *ctx, uint64_t i, const char *s, uint64_t len)
{
    struct tok_walk *w = ctx;
    json_t *str = json_stringn(s, (size_t)len);
    if (!str)
        return alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu]: expected UTF-8 text",
                             path_of(w->g), (unsigned long long)i);
    return json_array_append_new(w->merges, str) ? nomem(w->g, w->err) : ALLOY_OK;
}

/* 0 for "gpt2", 1 for "llama", else an error. */
static int tokenizer_model(const struct alloy_gguf *g, struct alloy_err *err)
{
    const char *s;
    uint64_t len;
    int has = alloy_gguf_str(g, "tokenizer.ggml.model", &s, &len, err);
    if (has < 0) return ALLOY_ERR_FORMAT;
    if (!has)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tokenizer.ggml.model: expected a tokenizer, found none",
                             path_of(g));
    if (len == 5 && memcmp(s, "llama", 5) == 0) return 1;
    if (len != 4 || memcmp(s, "gpt2", 4) != 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model: \"gpt2\" or \"llama\" (the forms "
                             "alloy rebuilds so far), found \"%.*s\"", path_of(g), (int)(len < 40 ? len : 40), s), -1;
    return 0;
}

struct spm_merge { float score; int64_t id; size_t left; char *text; };

static int by_rank(const void *a, const void *b)
{
    const struct spm_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return (x->left > y->left) - (x->left < y->left);
}

/* The merges of piece k (id, score): every split at a character boundary into two pieces of the vocabulary. */
static int piece_merges(struct tok_walk *w, const char *k, int64_t id, float score, struct spm_merge **m, size_t *n,
                        size_t *cap)
{
    size_t len = strlen(k);
    for (size_t p = 1; p < len; p++) {
        if (((unsigned char)k[p] & 0xc0) == 0x80 || !json_object_get(w->vocab, k + p)) continue;
        char *t = alloy_xasprintf("%.*s %s", (int)p, k, k + p);
        if (!t) return nomem(w->g, w->err);
        t[p] = '\0';
        int known = json_object_get(w->vocab, t) != NULL;
        t[p] = ' ';
        if (!known) {
            free(t);
            continue;
        }
        if (*n == *cap) {
            struct spm_merge *bigger = realloc(*m, (*cap = *cap ? 2 * *cap : 256) * sizeof **m);
            if (!bigger) {
                free(t);
                return nomem(w->g, w->err);
            }
            *m = bigger;
        }
        (*m)[(*n)++] = (struct spm_merge){score, id, p, t};
    }
    return ALLOY_OK;
}

/* Bound on the sum of squared piece lengths split into merges (real vocabularies: a few million). */
#define SPM_MAX_WORK ((uint64_t)1 << 30)

/* The "llama" form's merges, from its scores (tokenizer.ggml.scores, one per token). */
static int spm_merges(struct tok_walk *w, uint64_t ntok)
{
    uint64_t nsc = 0;
    uint32_t t, elem;
    const uint8_t *sc = NULL;
    int has = alloy_gguf_array(w->g, "tokenizer.ggml.scores", GGUF_F32, &nsc, w->err);
    if (has < 0) return ALLOY_ERR_FORMAT;
    if (!has || nsc != ntok || !alloy_gguf_kv(w->g, "tokenizer.ggml.scores", &t, &elem, &nsc, &sc))
        return alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: tokenizer.ggml.scores: one score per token (%llu), found "
                             "%llu", path_of(w->g), (unsigned long long)ntok, (unsigned long long)(has ? nsc : 0));
    struct spm_merge *m = NULL;
    size_t n = 0, cap = 0;
    const char *k;
    json_t *x;
    int rc = ALLOY_OK;
    uint64_t work = 0; /* splitting a piece of len bytes costs about len^2: bounded over the whole vocabulary */
    json_object_foreach(w->vocab, k, x) {
        int64_t id = json_integer_value(x);
        float score;
        memcpy(&score, sc + 4 * (size_t)id, sizeof score);
        if (id < w->ntypes && alloy_gguf_array_int(w->g, "tokenizer.ggml.token_type", (uint64_t)id) != 1) continue;
        uint64_t len = strlen(k);
        if (len > SPM_MAX_WORK || (work += len * len) > SPM_MAX_WORK) {
            rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: tokenizer.ggml.tokens: deriving the merges of the "
                               "\"llama\" form costs the squares of the piece lengths, at most %llu in all; token %lld "
                               "(%llu bytes) goes past it", path_of(w->g), (unsigned long long)SPM_MAX_WORK,
                               (long long)id, (unsigned long long)len);
            break;
        }
        if ((rc = piece_merges(w, k, id, score, &m, &n, &cap))) break;
    }
    if (!rc) qsort(m, n, sizeof *m, by_rank);
    for (size_t i = 0; i < n; i++) {
        if (!rc && json_array_append_new(w->merges, json_string(m[i].text))) rc = nomem(w->g, w->err);
        free(m[i].text);
    }
    free(m);
    return rc;
}

static int tokenizer_lists(struct tok_walk *w, struct alloy_err *err)
{
    const struct alloy_gguf *g = w->g;
    uint64_t ntok = 0, nmerge = 0, ntype = 0;
    int has = alloy_gguf_array(g, "tokenizer.ggml.tokens", GGUF_STRING, &ntok, err);
    if (has < 0) return ALLOY_ERR_FORMAT;
    if (!has) return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tokenizer.ggml.tokens: expected a token list, found none",
                                   path_of(g));
    if (ntok > INT32_MAX)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tokenizer.ggml.tokens: at most 2^31-1 tokens, found %llu",
                             path_of(g), (unsigned long long)ntok);
    if ((has = alloy_gguf_array(g, "tokenizer.ggml.token_type", GGUF_I32, &ntype, err)) < 0) return ALLOY_ERR_FORMAT;
    w->ntypes = has ? (int64_t)ntype : 0;
    if (w->spm) {
        int rc = alloy_gguf_array_strings(g, "tokenizer.ggml.tokens", add_token, w);
        return rc ? rc : spm_merges(w, ntok);
    }
    if ((has = alloy_gguf_array(g, "tokenizer.ggml.merges", GGUF_STRING, &nmerge, err)) < 0) return ALLOY_ERR_FORMAT;
    if (!has) return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tokenizer.ggml.merges: expected a list (required for "
                                   "gpt2), found none", path_of(g));
    int rc = alloy_gguf_array_strings(g, "tokenizer.ggml.tokens", add_token, w);
    if (!rc) rc = alloy_gguf_array_strings(g, "tokenizer.ggml.merges", add_merge, w);
    return rc;
}

/* The "llama" form's normalizer (the space prefix unless add_space_prefix is false), BPE options and decoder,
 * set on root and model; non-zero when out of memory. */
static int spm_parts(const struct tok_walk *w, json_t *root, json_t *model)
{
    int prefix = 1;
    struct alloy_err ignore = {0};
    if (alloy_gguf_bool(w->g, "tokenizer.ggml.add_space_prefix", &prefix, &ignore) < 0) prefix = 1;
    json_t *steps = json_pack("[{s:s, s:{s:s}, s:s}]", "type", "Replace", "pattern", "String", " ", "content", "\u2581");
    if (steps && prefix && json_array_insert_new(steps, 0, json_pack("{s:s, s:s}", "type", "Prepend", "prepend", "\u2581"))) {
        json_decref(steps);
        return -1;
    }
    json_t *dec = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}, {s:s}, {s:s, s:s, s:i, s:i}]}", "type", "Sequence",
                            "decoders", "type", "Replace", "pattern", "String", "\u2581", "content", " ", "type",
                            "ByteFallback", "type", "Fuse", "type", "Strip", "content", " ", "start", prefix, "stop", 0);
    if (!steps || !dec) {
        json_decref(steps);
        json_decref(dec);
        return -1;
    }
    return json_object_set_new(root, "normalizer", json_pack("{s:s, s:o}", "type", "Sequence",
                                                                              "normalizers", steps)) ||
           json_object_set_new(root, "decoder", dec) || json_object_set_new(model, "byte_fallback", json_true()) ||
           json_object_set_new(model, "fuse_unk", json_true()) ||
           json_object_set_new(model, "unk_token", w->unk ? json_string(w->unk) : json_null());
}

int alloy_gguf_tokenizer_json(const struct alloy_gguf *g, char **out, struct alloy_err *err)
{
    int spm = tokenizer_model(g, err);
    if (spm < 0) return (int)err->status;
    struct tok_walk w = {.g = g, .vocab = json_object(), .added = json_array(), .merges = json_array(), .spm = spm,
                         .err = err};
    json_t *root = json_object(), *model = json_object();
    json_t *pre = spm ? json_null() : json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                                                "trim_offsets", 1, "use_regex", 1);
    int rc = !w.vocab || !w.added || !w.merges || !root || !model || !pre ? nomem(g, err) : ALLOY_OK;
    if (!rc) rc = tokenizer_lists(&w, err);
    if (!rc && (json_object_set_new(model, "type", json_string("BPE")) || json_object_set(model, "vocab", w.vocab) ||
                json_object_set(model, "merges", w.merges) || json_object_set_new(root, "version", json_string("1.0")) ||
                json_object_set(root, "added_tokens", w.added) || json_object_set_new(root, "normalizer", json_null()) ||
                json_object_set(root, "pre_tokenizer", pre) || (spm && spm_parts(&w, root, model)) ||
                json_object_set(root, "model", model)))
        rc = nomem(g, err);
    json_decref(w.vocab);
    json_decref(w.added);
    json_decref(w.merges);
    json_decref(pre);
    json_decref(model);
    if (rc) {
        json_decref(root);
        return rc;
    }
    return dump(g, root, out, err);
}
