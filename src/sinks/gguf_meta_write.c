/*
 * gguf_meta_write.c — the metadata buffer of a GGUF output and the model
 * keys that come from config.json.
 *
 * DESIGN
 *   Values are appended in GGUF's little-endian encoding (strings: u64
 *   length then bytes; a pair: key string, u32 type, value). The model keys
 *   follow what convert_hf_to_gguf.py writes for the architectures alloy
 *   maps (gguf.md §1.7), in its order: general.*, then {arch}.block_count,
 *   context, embedding and feed-forward lengths, head counts, rope base,
 *   norm epsilon, key/value lengths (when config.json has head_dim),
 *   general.file_type, and for llama the vocabulary size and rope
 *   dimension count; then each architecture's own (gguf.md §1.7): Gemma2's
 *   softcaps and sliding window, Gemma3's final softcap and sliding window,
 *   Phi-3's original context, rotary dimension and sliding window. Gemma
 *   always gets key/value lengths (its head_dim is not hidden/heads).
 *   Scaling: linear and yarn become rope.scaling.* keys; Llama 3.1's
 *   llama3 and Phi-3's long-rope become generated tensors
 *   (gguf_extra_tensors: rope_freqs, rope_factors_long/short), as the
 *   converter writes them. A rope_scaling the writer cannot express is
 *   refused rather than dropped, since llama.cpp would run the model with
 *   another RoPE.
 */
#include "sinks/gguf_out.h"

#include <math.h>
#include <strings.h>

void gguf_buf_bytes(struct gguf_buf *b, const void *v, size_t n)
{
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = alloy_xrealloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, v, n);
    b->len += n;
}

void gguf_buf_u32(struct gguf_buf *b, uint32_t v)
{
    uint8_t le[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    gguf_buf_bytes(b, le, 4);
}

void gguf_buf_u64(struct gguf_buf *b, uint64_t v)
{
    gguf_buf_u32(b, (uint32_t)v);
    gguf_buf_u32(b, (uint32_t)(v >> 32));
}

void gguf_buf_str(struct gguf_buf *b, const char *s, size_t len)
{
    gguf_buf_u64(b, len);
    gguf_buf_bytes(b, s, len);
}

static void key(struct gguf_buf *b, const char *k, enum gguf_vtype t)
{
    gguf_buf_str(b, k, strlen(k));
    gguf_buf_u32(b, (uint32_t)t);
    b->nkv++;
}

void gguf_kv_str(struct gguf_buf *b, const char *k, const char *s)
{
    key(b, k, GGUF_STRING);
    gguf_buf_str(b, s, strlen(s));
}

void gguf_kv_u32(struct gguf_buf *b, const char *k, uint32_t v)
{
    key(b, k, GGUF_U32);
    gguf_buf_u32(b, v);
}

void gguf_kv_i32(struct gguf_buf *b, const char *k, int32_t v)
{
    key(b, k, GGUF_I32);
    gguf_buf_u32(b, (uint32_t)v);
}

void gguf_kv_f32(struct gguf_buf *b, const char *k, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    key(b, k, GGUF_F32);
    gguf_buf_u32(b, u);
}

void gguf_kv_bool(struct gguf_buf *b, const char *k, int v)
{
    uint8_t one = v ? 1 : 0;
    key(b, k, GGUF_BOOL);
    gguf_buf_bytes(b, &one, 1);
}

void gguf_kv_array(struct gguf_buf *b, const char *k, enum gguf_vtype elem, uint64_t n)
{
    key(b, k, GGUF_ARRAY);
    gguf_buf_u32(b, (uint32_t)elem);
    gguf_buf_u64(b, n);
}

/* ------------------------------------------------------------ config.json */

/* A positive integer field (required: an error when absent). */
static int get_int(json_t *c, const char *path, const char *k, int required, int64_t *v, struct alloy_err *err)
{
    json_t *x = json_object_get(c, k);
    if (!x || json_is_null(x)) {
        if (!required) return ALLOY_OK;
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: a positive integer (GGUF needs it), found none", path, k);
    }
    if (!json_is_integer(x) || json_integer_value(x) <= 0 || json_integer_value(x) > UINT32_MAX)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: a positive 32-bit integer, found another value", path, k);
    *v = json_integer_value(x);
    return ALLOY_OK;
}

int gguf_model_info(json_t *c, const char *path, struct gguf_model_info *mi, struct alloy_err *err)
{
    memset(mi, 0, sizeof *mi);
    json_t *a = json_array_get(json_object_get(c, "architectures"), 0);
    const char *hf = json_is_string(a) ? json_string_value(a) : "";
    if (!(mi->ga = gguf_arch_of_hf(hf)))
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: architectures: %s (the GGUF writer's architectures), "
                             "found \"%s\"", path, gguf_arch_hf_names(), hf);
    mi->arch = mi->ga->name;
    mi->permute_qk = (mi->ga->flags & GA_PERMUTE) != 0;
    int rc = get_int(c, path, "num_attention_heads", 1, &mi->n_head, err);
    if (!rc) rc = get_int(c, path, "hidden_size", 1, &mi->n_embd, err);
    mi->n_head_kv = mi->n_head;
    if (!rc) rc = get_int(c, path, "num_key_value_heads", 0, &mi->n_head_kv, err);
    mi->head_dim = mi->n_head ? mi->n_embd / mi->n_head : 0;
    if (!rc) rc = get_int(c, path, "head_dim", 0, &mi->head_dim, err);
    if (!rc) rc = get_int(c, path, "vocab_size", 1, &mi->n_vocab, err);
    return rc;
}

/* rope_scaling's type ("" when there is none). */
static const char *scaling_type(json_t *c)
{
    json_t *rs = json_object_get(c, "rope_scaling"), *t = json_object_get(rs, "rope_type");
    if (!json_is_string(t)) t = json_object_get(rs, "type");
    return json_is_string(t) ? json_string_value(t) : json_is_object(rs) ? "?" : "";
}

/* The rope_scaling keys of llama, qwen2/3 and gemma3 (linear, yarn); llama3 writes none (rope_freqs carries it:
 * a scaling factor key would make llama.cpp scale a second time). */
static int rope_scaling(struct gguf_buf *b, json_t *c, const char *path, const struct gguf_arch *ga,
                        struct alloy_err *err)
{
    json_t *rs = json_object_get(c, "rope_scaling");
    const char *type = scaling_type(c), *arch = ga->name;
    if (!*type || (ga->id == GA_LLAMA && strcasecmp(type, "llama3") == 0)) return ALLOY_OK;
    json_t *f = json_object_get(rs, "factor");
    if (strcmp(type, "linear") != 0 && strcmp(type, "yarn") != 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: rope_scaling: none, linear or yarn%s (what the GGUF "
                             "writer expresses for %s), found \"%s\"", path, ga->id == GA_LLAMA ? " or llama3" : "",
                             arch, type);
    if (!json_is_number(f))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: rope_scaling.factor: a number, found none", path);
    char k[96];
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    gguf_kv_str(b, k, type);
    snprintf(k, sizeof k, "%s.rope.scaling.factor", arch);
    gguf_kv_f32(b, k, (float)json_number_value(f));
    json_t *o = json_object_get(rs, "original_max_position_embeddings");
    if (json_is_integer(o)) {
        snprintf(k, sizeof k, "%s.rope.scaling.original_context_length", arch);
        gguf_kv_u32(b, k, (uint32_t)json_integer_value(o));
    }
    return ALLOY_OK;
}

/* gguf-py's parameter count label: "1.7M", "8.0B", "494M" (at least two significant digits). */
static const char *size_label(uint64_t n, char *buf, size_t cap)
{
    double scaled = n > 1e12 ? n * 1e-12 : n > 1e9 ? n * 1e-9 : n > 1e6 ? n * 1e-6 : n * 1e-3;
    const char *suffix = n > 1e12 ? "T" : n > 1e9 ? "B" : n > 1e6 ? "M" : "K";
    char whole[32];
    int digits = snprintf(whole, sizeof whole, "%.0f", rint(scaled));
    int fix = whole[0] == '0' ? 2 : digits < 2 ? 2 - digits : 0;
    snprintf(buf, cap, "%.*f%s", fix, scaled, suffix);
    return buf;
}

static void arch_u32(struct gguf_buf *b, const char *arch, const char *suffix, int64_t v)
{
    char k[96];
    snprintf(k, sizeof k, "%s.%s", arch, suffix);
    gguf_kv_u32(b, k, (uint32_t)v);
}

static void arch_f32(struct gguf_buf *b, const char *arch, const char *suffix, double v)
{
    char k[96];
    snprintf(k, sizeof k, "%s.%s", arch, suffix);
    gguf_kv_f32(b, k, (float)v);
}

static int float_field(struct gguf_buf *b, json_t *c, const char *path, const char *field, const char *arch,
                       const char *suffix, int required, struct alloy_err *err)
{
    json_t *x = json_object_get(c, field);
    if (!json_is_number(x)) {
        if (!required && (!x || json_is_null(x))) return ALLOY_OK;
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: a number (GGUF needs it), found %s", path, field,
                             x ? "another value" : "none");
    }
    arch_f32(b, arch, suffix, json_number_value(x));
    return ALLOY_OK;
}

/* Phi-3 (Phi3MiniModel): the original context, the rotary dimension of partial_rotary_factor, the sliding window
 * (0 when absent, which marks Phi-4) and a long-rope attention factor. */
static int phi3_keys(struct gguf_buf *b, json_t *c, const char *path, const struct gguf_model_info *mi, int64_t ctx,
                     struct alloy_err *err)
{
    int64_t orig = 0, sw = 0;
    int rc = get_int(c, path, "original_max_position_embeddings", 1, &orig, err);
    if (!rc) rc = get_int(c, path, "sliding_window", 0, &sw, err);
    json_t *prf = json_object_get(c, "partial_rotary_factor");
    if (rc) return rc;
    double pct = json_is_number(prf) ? json_number_value(prf) : 1.0;
    arch_u32(b, "phi3", "rope.scaling.original_context_length", orig);
    arch_u32(b, "phi3", "rope.dimension_count", (int64_t)(pct * (double)mi->n_embd) / mi->n_head);
    arch_u32(b, "phi3", "attention.sliding_window", sw);
    const char *type = scaling_type(c);
    if (!*type) return ALLOY_OK;
    double scale = (double)ctx / (double)orig;
    if (!strcasecmp(type, "su") || !strcasecmp(type, "longrope"))
        arch_f32(b, "phi3", "rope.scaling.attn_factor", scale > 1.0 ? sqrt(1 + log(scale) / log((double)orig)) : 1.0);
    else if (!strcasecmp(type, "yarn"))
        arch_f32(b, "phi3", "rope.scaling.attn_factor", scale > 1.0 ? 0.1 * log(scale) + 1.0 : 1.0);
    else
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: rope_scaling.type: longrope, su or yarn (Phi-3's), found "
                             "\"%s\"", path, type);
    return ALLOY_OK;
}

/* Gemma2 (softcaps, sliding window) and Gemma3 (final softcap when set, sliding window unless every layer is
 * global: llama.cpp requires it). */
static int gemma_keys(struct gguf_buf *b, json_t *c, const char *path, const struct gguf_arch *ga,
                      struct alloy_err *err)
{
    int64_t sw = 0;
    int rc = ALLOY_OK;
    json_t *pattern = json_object_get(c, "sliding_window_pattern");
    int need_sw = ga->id == GA_GEMMA3 && !(json_is_integer(pattern) && json_integer_value(pattern) == 1);
    if (ga->id == GA_GEMMA2) rc = float_field(b, c, path, "attn_logit_softcapping", ga->name, "attn_logit_softcapping", 0, err);
    json_t *fs = json_object_get(c, "final_logit_softcapping");
    if (!rc && (ga->id == GA_GEMMA2 || (json_is_number(fs) && json_number_value(fs) != 0)))
        rc = float_field(b, c, path, "final_logit_softcapping", ga->name, "final_logit_softcapping", 0, err);
    if (!rc) rc = get_int(c, path, "sliding_window", need_sw, &sw, err);
    if (!rc && sw) arch_u32(b, ga->name, "attention.sliding_window", sw);
    return rc;
}

/* The keys every architecture has, then the architecture's own. */
int gguf_model_keys(struct gguf_buf *b, json_t *c, const char *path, const struct gguf_model_info *mi,
                    const char *name, uint32_t file_type, struct alloy_err *err)
{
    const char *a = mi->arch;
    char label[48];
    int64_t layers = 0, ctx = 0, ff = 0;
    int rc = get_int(c, path, "num_hidden_layers", 1, &layers, err);
    if (!rc) rc = get_int(c, path, "max_position_embeddings", 1, &ctx, err);
    if (!rc) rc = get_int(c, path, "intermediate_size", 1, &ff, err);
    if (rc) return rc;
    gguf_kv_str(b, "general.architecture", a);
    gguf_kv_str(b, "general.type", "model");
    gguf_kv_str(b, "general.name", name);
    gguf_kv_str(b, "general.size_label", size_label(mi->n_params, label, sizeof label));
    arch_u32(b, a, "block_count", layers);
    arch_u32(b, a, "context_length", ctx);
    arch_u32(b, a, "embedding_length", mi->n_embd);
    arch_u32(b, a, "feed_forward_length", ff);
    arch_u32(b, a, "attention.head_count", mi->n_head);
    arch_u32(b, a, "attention.head_count_kv", mi->n_head_kv);
    rc = float_field(b, c, path, "rope_theta", a, "rope.freq_base", 0, err);
    if (!rc && mi->ga->id == GA_GEMMA3 && !json_is_number(json_object_get(c, "rope_theta")))
        arch_f32(b, a, "rope.freq_base", 1e6); /* Gemma3Model's default */
    if (!rc) rc = float_field(b, c, path, "rms_norm_eps", a, "attention.layer_norm_rms_epsilon", 1, err);
    if (rc) return rc;
    if (json_is_integer(json_object_get(c, "head_dim")) || (mi->ga->flags & GA_NORM_PLUS1)) {
        arch_u32(b, a, "attention.key_length", mi->head_dim);
        arch_u32(b, a, "attention.value_length", mi->head_dim);
    }
    gguf_kv_u32(b, "general.file_type", file_type);
    if (mi->ga->id == GA_LLAMA) {
        arch_u32(b, a, "vocab_size", mi->n_vocab);
        arch_u32(b, a, "rope.dimension_count", mi->head_dim);
    }
    if (mi->ga->id == GA_PHI3) return phi3_keys(b, c, path, mi, ctx, err);
    if (mi->ga->id == GA_GEMMA2 || mi->ga->id == GA_GEMMA3) rc = gemma_keys(b, c, path, mi->ga, err);
    if (!rc && (mi->ga->id == GA_GEMMA || mi->ga->id == GA_GEMMA2) && *scaling_type(c))
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: rope_scaling: none (what the converter writes for %s), "
                             "found \"%s\"", path, a, scaling_type(c));
    return rc ? rc : rope_scaling(b, c, path, mi->ga, err);
}

/* ------------------------------------------------------------ generated tensors */

static double num_or(json_t *o, const char *k, double def)
{
    json_t *x = json_object_get(o, k);
    return json_is_number(x) ? json_number_value(x) : def;
}

/* rope_scaling.<key> (Phi-3's long_factor / short_factor) as an F32 tensor of n values. */
static int factor_list(json_t *rs, const char *key, const char *name, const char *path, int64_t n,
                       struct gguf_extra *x, struct alloy_err *err)
{
    json_t *l = json_object_get(rs, key);
    if (!json_is_array(l) || (int64_t)json_array_size(l) != n)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: rope_scaling.%s: %lld numbers (half the rotary dimension), "
                             "found %s", path, key, (long long)n, json_is_array(l) ? "another count" : "none");
    *x = (struct gguf_extra){name, alloy_xmalloc((size_t)n * sizeof(float)), n};
    if (!x->v) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        json_t *v = json_array_get(l, (size_t)i);
        if (!json_is_number(v))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: rope_scaling.%s[%lld]: a number, found another value", path,
                                 key, (long long)i);
        x->v[i] = (float)json_number_value(v);
    }
    return ALLOY_OK;
}

int gguf_extra_tensors(json_t *c, const char *path, const struct gguf_model_info *mi, struct gguf_extra *x, size_t *n,
                       struct alloy_err *err)
{
    json_t *rs = json_object_get(c, "rope_scaling");
    const char *type = scaling_type(c);
    *n = 0;
    if (mi->ga->id == GA_PHI3 && (!strcasecmp(type, "su") || !strcasecmp(type, "longrope") || !strcasecmp(type, "yarn"))) {
        double pct = num_or(c, "partial_rotary_factor", 1.0);
        int64_t half = (int64_t)(pct * (double)mi->n_embd) / mi->n_head / 2;
        int rc = factor_list(rs, "long_factor", "rope_factors_long.weight", path, half, &x[(*n)++], err);
        return rc ? rc : factor_list(rs, "short_factor", "rope_factors_short.weight", path, half, &x[(*n)++], err);
    }
    if (mi->ga->id != GA_LLAMA || strcasecmp(type, "llama3") != 0) return ALLOY_OK;
    double factor = num_or(rs, "factor", 8.0), lo = num_or(rs, "low_freq_factor", 1.0);
    double hi = num_or(rs, "high_freq_factor", 4.0);
    double old = num_or(rs, "original_max_position_embeddings", num_or(c, "original_max_position_embeddings", 8192));
    if (!(factor > 0) || !(lo > 0) || !(hi > 0) || !(old > 0) || old / lo == old / hi)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: rope_scaling: positive factors with low_freq_factor != "
                             "high_freq_factor (llama3), found factor %g, low %g, high %g, original %g", path, factor,
                             lo, hi, old);
    x[0] = (struct gguf_extra){"rope_freqs.weight", alloy_xmalloc((size_t)(mi->head_dim / 2) * sizeof(float)),
                               mi->head_dim / 2};
    if (!x[0].v) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    *n = 1;
    gguf_llama3_factors(num_or(c, "rope_theta", 10000.0), mi->head_dim, factor, lo, hi, old, x[0].v);
    return ALLOY_OK;
}
