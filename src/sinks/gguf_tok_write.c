/*
 * gguf_tok_write.c — tokenizer.* keys of a GGUF output from tokenizer.json
 * and tokenizer_config.json.
 *
 * DESIGN
 *   Two vocabulary forms are written (gguf.md §1.8). llama.cpp's "gpt2"
 *   byte-level BPE, which is also the only form alloy's own reader turns
 *   back into a tokenizer, from two tokenizer.json shapes that map onto it
 *   exactly:
 *   - a ByteLevel BPE (GPT-2, Llama 3, Qwen): tokens and merges as they
 *     are (a merge given as a pair is joined with a space);
 *   - a byte-fallback BPE whose learned tokens are all "<0xNN>" byte
 *     tokens (the fixtures' byte-level model): each "<0xNN>" is spelled as
 *     GPT-2's byte-to-unicode character of NN, so llama.cpp's byte-level
 *     tokenizer maps bytes to the same ids.
 *   And SentencePiece's "llama" form (Llama 2, Mistral) from a byte-fallback
 *   BPE with other pieces than "<0xNN>" or from a Unigram: pieces as they
 *   are ("▁" kept), "<0xNN>" typed BYTE, the unk token UNKNOWN, no merges,
 *   pre "default", and scores: a Unigram's own; for a BPE, the piece made
 *   by merge r scores -(r+1) and other pieces 0, so llama.cpp's SPM
 *   tokenizer (highest-scoring pair first) merges in the BPE's order (the
 *   converter's tokenizer.json path writes -1000 for every piece, which
 *   loses that order). Added tokens and pads score -1000. Other shapes
 *   (WordPiece, ...) are refused with the shape named. Added tokens keep their ids:
 *   special ones are CONTROL, others USER_DEFINED; ids no token has up to
 *   the embedding's rows are "[PADn]" UNUSED, as the converter pads.
 *   tokenizer.ggml.pre is a GGUF donor's own, else named from the pre-tokenizer: none -> "default", a
 *   bare ByteLevel -> "gpt-2", the Llama 3 and Qwen2 split patterns ->
 *   "llama-bpe" and "qwen2"; any other is refused (llama.cpp would
 *   tokenize with another regex).
 *   When the tokenizer source has SentencePiece's tokenizer.model (read by
 *   formats/spm.c), the sink takes the "llama" form from it instead, as
 *   the converter's _create_vocab_sentencepiece: the file's pieces, scores
 *   and types, then added_tokens.json and tokenizer_config.json's
 *   added_tokens_decoder over them (gguf_tokenizer_keys_spm).
 */
#include "sinks/gguf_out.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* tokenizer.json's shape: byte-level BPE, byte-fallback BPE of "<0xNN>" tokens only (both written as "gpt2"),
 * SentencePiece (written as "llama"). */
enum form { FORM_BYTELEVEL, FORM_BYTES, FORM_SPM };

struct vocab {
    char **tok;     /* [n], NULL: no token */
    int32_t *type;  /* [n] */
    float *score;   /* [n], the "llama" form's scores */
    int64_t n;
};

/* GPT-2's byte-to-unicode character of byte c as UTF-8 (printable Latin-1 bytes are themselves, the
 * rest are U+0100 upwards in byte order). */
static size_t byte_char(unsigned c, char out[3])
{
    unsigned cp, k = 0;
    int printable = (c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || (c >= 0xae);
    if (printable) cp = c;
    else {
        for (unsigned b = 0; b < c; b++)
            k += !((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae));
        cp = 0x100 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

static int is_byte_token(const char *s, unsigned *byte)
{
    unsigned v;
    char tail;
    return strlen(s) == 6 && sscanf(s, "<0x%2X%c", &v, &tail) == 2 && tail == '>' && (*byte = v, 1);
}

static const char *pre_name(json_t *pre)
{
    if (!pre || json_is_null(pre)) return "default";
    const char *t = json_string_value(json_object_get(pre, "type"));
    if (t && strcmp(t, "ByteLevel") == 0) return "gpt-2";
    json_t *seq = json_object_get(pre, "pretokenizers");
    json_t *split = json_array_get(seq, 0);
    const char *re = json_string_value(json_object_get(json_object_get(split, "pattern"), "Regex"));
    static const char llama3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}"
                                 "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    static const char qwen2[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}"
                                "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    if (re && json_array_size(seq) == 2 && strcmp(re, llama3) == 0) return "llama-bpe";
    if (re && json_array_size(seq) == 2 && strcmp(re, qwen2) == 0) return "qwen2";
    return NULL;
}

static int set_token(struct vocab *v, int64_t id, const char *s, size_t len, int32_t type)
{
    if (id < 0 || id >= v->n) return 1;
    free(v->tok[id]);
    if (!(v->tok[id] = alloy_xmalloc(len + 1))) return -1;
    memcpy(v->tok[id], s, len);
    v->tok[id][len] = '\0';
    v->type[id] = type;
    return 0;
}

/* A Unigram's vocabulary: [piece, score] pairs, the id being the index. */
static int fill_unigram(struct vocab *v, json_t *pieces, const char *path, struct alloy_err *err)
{
    size_t i;
    json_t *x;
    json_array_foreach(pieces, i, x) {
        const char *k = json_string_value(json_array_get(x, 0));
        json_t *sc = json_array_get(x, 1);
        unsigned byte;
        if (!k || !json_is_number(sc))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.vocab[%zu]: a [piece, score] pair, found another "
                                 "value", path, i);
        int rc = set_token(v, (int64_t)i, k, strlen(k), is_byte_token(k, &byte) ? TT_BYTE : TT_NORMAL);
        if (rc < 0) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (rc > 0)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.vocab: at most the embedding's %lld rows, found "
                                 "%zu", path, (long long)v->n, json_array_size(pieces));
        v->score[i] = (float)json_number_value(sc);
    }
    return ALLOY_OK;
}

/* A BPE's vocabulary: "<0xNN>" as GPT-2's byte character (FORM_BYTES), or typed BYTE (FORM_SPM). */
static int fill_bpe(struct vocab *v, json_t *vocab, enum form form, const char *path, struct alloy_err *err)
{
    const char *k;
    json_t *x;
    json_object_foreach(vocab, k, x) {
        char buf[3];
        unsigned byte = 0;
        int is_byte = form != FORM_BYTELEVEL && is_byte_token(k, &byte);
        int rc = is_byte && form == FORM_BYTES ? set_token(v, json_integer_value(x), buf, byte_char(byte, buf), TT_NORMAL)
                                               : set_token(v, json_integer_value(x), k, strlen(k),
                                                           is_byte ? TT_BYTE : TT_NORMAL);
        if (rc < 0) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (rc > 0 || !json_is_integer(x))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.vocab: \"%s\": an id below the embedding's %lld "
                                 "rows, found another value", path, k, (long long)v->n);
    }
    return ALLOY_OK;
}

/* The model's vocabulary, then the added tokens over it (scoring -1000). */
static int fill_vocab(struct vocab *v, json_t *model, json_t *added, enum form form, const char *path,
                      struct alloy_err *err)
{
    json_t *vocab = json_object_get(model, "vocab"), *x;
    int rc = json_is_array(vocab) ? fill_unigram(v, vocab, path, err) : fill_bpe(v, vocab, form, path, err);
    if (rc) return rc;
    size_t i;
    json_array_foreach(added, i, x) {
        const char *s = json_string_value(json_object_get(x, "content"));
        json_t *id = json_object_get(x, "id");
        if (!s || !json_is_integer(id))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: added_tokens[%zu]: an id and a content, found another "
                                 "value", path, i);
        rc = set_token(v, json_integer_value(id), s, strlen(s),
                       json_is_true(json_object_get(x, "special")) ? TT_CONTROL : TT_USER);
        if (rc < 0) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (rc > 0)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: added_tokens[%zu]: an id below the embedding's %lld rows, "
                                 "found %lld", path, i, (long long)v->n, (long long)json_integer_value(id));
        v->score[json_integer_value(id)] = -1000.0f;
    }
    return ALLOY_OK;
}

static int is_added(json_t *tok, const char *s)
{
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(tok, "added_tokens"), i, x) {
        const char *c = json_string_value(json_object_get(x, "content"));
        if (c && strcmp(c, s) == 0) return 1;
    }
    return 0;
}

/* The tokenizer's shape, -1 when none the writer knows (err set). */
static int vocab_form(json_t *tok, json_t *model, const char *path, struct alloy_err *err)
{
    const char *type = json_string_value(json_object_get(model, "type"));
    if (type && strcmp(type, "Unigram") == 0 && json_is_array(json_object_get(model, "vocab"))) return FORM_SPM;
    if (!type || strcmp(type, "BPE") != 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: model.type: \"BPE\" or \"Unigram\" (the forms the GGUF "
                             "writer knows), found \"%s\"", path, type ? type : "none"), -1;
    if (json_is_true(json_object_get(model, "byte_fallback"))) {
        const char *k;
        json_t *x;
        unsigned byte;
        json_object_foreach(json_object_get(model, "vocab"), k, x) if (!is_byte_token(k, &byte) && !is_added(tok, k))
            return FORM_SPM;
        return FORM_BYTES;
    }
    char *dec = json_dumps(json_object_get(tok, "decoder"), JSON_COMPACT | JSON_ENCODE_ANY);
    char *pre = json_dumps(json_object_get(tok, "pre_tokenizer"), JSON_COMPACT | JSON_ENCODE_ANY);
    int bl = (dec && strstr(dec, "\"ByteLevel\"")) || (pre && strstr(pre, "\"ByteLevel\""));
    free(dec);
    free(pre);
    if (!bl)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: decoder or pre_tokenizer: ByteLevel (a byte-level BPE), "
                             "found neither", path), -1;
    return FORM_BYTELEVEL;
}

/* A BPE's merge r (a "left right" string or a pair) scores the piece it makes -(r+1), if a NORMAL piece
 * without a score yet. */
static int merge_scores(struct vocab *v, json_t *model, const char *path, struct alloy_err *err)
{
    json_t *merges = json_object_get(model, "merges"), *vocab = json_object_get(model, "vocab"), *m;
    size_t r;
    json_array_foreach(merges, r, m) {
        const char *l = json_string_value(json_array_get(m, 0)), *rt = json_string_value(json_array_get(m, 1));
        const char *s = json_string_value(m), *sp = s ? strchr(s, ' ') : NULL;
        if (!sp && !(l && rt))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.merges[%zu]: \"left right\" or a pair of strings, "
                                 "found another value", path, r);
        char *piece = sp ? alloy_xasprintf("%.*s%s", (int)(sp - s), s, sp + 1) : alloy_xasprintf("%s%s", l, rt);
        if (!piece) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        json_t *id = json_object_get(vocab, piece);
        free(piece);
        int64_t i = json_is_integer(id) ? json_integer_value(id) : -1;
        if (i >= 0 && i < v->n && v->type[i] == TT_NORMAL && v->score[i] == 0) v->score[i] = -(float)(r + 1);
    }
    return ALLOY_OK;
}

/* The "llama" form's unk piece (model.unk_token or a Unigram's unk_id) is typed UNKNOWN. */
static void mark_unknown(struct vocab *v, json_t *model)
{
    const char *s = json_string_value(json_object_get(model, "unk_token"));
    json_t *uid = json_object_get(model, "unk_id");
    int64_t id = json_is_integer(uid) ? json_integer_value(uid) : -1;
    for (int64_t i = 0; s && id < 0 && i < v->n; i++)
        if (v->tok[i] && strcmp(v->tok[i], s) == 0) id = i;
    if (id >= 0 && id < v->n && v->tok[id]) v->type[id] = TT_UNKNOWN;
}

static int write_merges(struct gguf_buf *b, json_t *merges, const char *path, struct alloy_err *err)
{
    size_t i;
    json_t *m;
    gguf_kv_array(b, "tokenizer.ggml.merges", GGUF_STRING, json_array_size(merges));
    json_array_foreach(merges, i, m) {
        if (json_is_string(m)) {
            gguf_buf_str(b, json_string_value(m), json_string_length(m));
            continue;
        }
        const char *l = json_string_value(json_array_get(m, 0)), *r = json_string_value(json_array_get(m, 1));
        if (!l || !r || json_array_size(m) != 2)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.merges[%zu]: a string or a pair of strings, found "
                                 "another value", path, i);
        size_t ll = strlen(l), rl = strlen(r);
        gguf_buf_u64(b, ll + 1 + rl);
        gguf_buf_bytes(b, l, ll);
        gguf_buf_bytes(b, " ", 1);
        gguf_buf_bytes(b, r, rl);
    }
    return ALLOY_OK;
}

/* The id of a special token named in tokenizer_config.json (a string or {"content": ...}), or config.json's
 * <which>_token_id; -1 when neither names one. The name is looked up among the vocabulary's non-NORMAL
 * tokens, or, with spm_added (the tokenizer.model path), as gguf-py's SpecialVocab does: among
 * tokenizer.json's added_tokens only (an empty array when there is no tokenizer.json). */
static int64_t special_id(const struct vocab *v, json_t *tcfg, json_t *config, const char *which, json_t *spm_added)
{
    char k[32];
    snprintf(k, sizeof k, "%s_token", which);
    json_t *t = json_object_get(tcfg, k), *a;
    const char *s = json_is_object(t) ? json_string_value(json_object_get(t, "content")) : json_string_value(t);
    size_t j;
    json_array_foreach(spm_added, j, a) {
        const char *c = json_string_value(json_object_get(a, "content"));
        json_t *id = json_object_get(a, "id");
        if (s && c && !strcmp(c, s) && json_is_integer(id) && json_integer_value(id) >= 0 && json_integer_value(id) < v->n)
            return json_integer_value(id);
    }
    for (int64_t i = 0; s && !spm_added && i < v->n; i++)
        if (v->tok[i] && v->type[i] != TT_NORMAL && strcmp(v->tok[i], s) == 0) return i;
    snprintf(k, sizeof k, "%s_token_id", which);
    json_t *id = json_object_get(config, k);
    return json_is_integer(id) && json_integer_value(id) >= 0 && json_integer_value(id) < v->n ? json_integer_value(id)
                                                                                               : -1;
}

static void special_keys(struct gguf_buf *b, const struct vocab *v, json_t *tcfg, json_t *config, json_t *spm_added)
{
    static const char *const which[] = {"bos", "eos", "unk", "pad"};
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(which); i++) {
        int64_t id = special_id(v, tcfg, config, which[i], spm_added);
        char k[64];
        snprintf(k, sizeof k, "tokenizer.ggml.%s_token_id", which[i]);
        if (id >= 0) gguf_kv_u32(b, k, (uint32_t)id);
    }
    json_t *ab = json_object_get(tcfg, "add_bos_token"), *ae = json_object_get(tcfg, "add_eos_token");
    if (json_is_boolean(ab)) gguf_kv_bool(b, "tokenizer.ggml.add_bos_token", json_is_true(ab));
    if (json_is_boolean(ae)) gguf_kv_bool(b, "tokenizer.ggml.add_eos_token", json_is_true(ae));
    json_t *ct = json_object_get(tcfg, "chat_template");
    if (json_is_string(ct)) gguf_kv_str(b, "tokenizer.chat_template", json_string_value(ct));
}

/* tokenizer.ggml.model, pre, tokens, scores (the "llama" form only) and token_type. */
static void write_vocab(struct gguf_buf *b, const struct vocab *v, int spm, const char *pre)
{
    gguf_kv_str(b, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    gguf_kv_str(b, "tokenizer.ggml.pre", pre);
    gguf_kv_array(b, "tokenizer.ggml.tokens", GGUF_STRING, (uint64_t)v->n);
    for (int64_t i = 0; i < v->n; i++) gguf_buf_str(b, v->tok[i], strlen(v->tok[i]));
    if (spm) {
        gguf_kv_array(b, "tokenizer.ggml.scores", GGUF_F32, (uint64_t)v->n);
        for (int64_t i = 0; i < v->n; i++) {
            uint32_t bits;
            memcpy(&bits, &v->score[i], sizeof bits);
            gguf_buf_u32(b, bits);
        }
    }
    gguf_kv_array(b, "tokenizer.ggml.token_type", GGUF_I32, (uint64_t)v->n);
    for (int64_t i = 0; i < v->n; i++) gguf_buf_u32(b, (uint32_t)v->type[i]);
}

static int vocab_keys(struct gguf_buf *b, struct vocab *v, json_t *tok, json_t *tcfg, json_t *config,
                      const char *path, const char *pre, struct alloy_err *err)
{
    json_t *model = json_object_get(tok, "model");
    int form = vocab_form(tok, model, path, err);
    if (form < 0) return (int)err->status;
    if (form == FORM_SPM) pre = "default";
    if (!pre) pre = pre_name(json_object_get(tok, "pre_tokenizer"));
    if (!pre)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: pre_tokenizer: none, ByteLevel, or the Llama 3 or Qwen2 "
                             "split (a name llama.cpp knows), found another", path);
    int rc = fill_vocab(v, model, json_object_get(tok, "added_tokens"), form, path, err);
    for (int64_t i = 0; !rc && i < v->n; i++) {
        char pad[32];
        int n = snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
        if (!v->tok[i] && set_token(v, i, pad, (size_t)n, TT_UNUSED) < 0)
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        else if (v->type[i] == TT_UNUSED) v->score[i] = -1000.0f;
    }
    if (rc) return rc;
    if (form == FORM_SPM && !json_is_array(json_object_get(model, "vocab"))) rc = merge_scores(v, model, path, err);
    if (rc) return rc;
    if (form == FORM_SPM) mark_unknown(v, model);
    write_vocab(b, v, form == FORM_SPM, pre);
    if (form != FORM_SPM) rc = write_merges(b, json_object_get(model, "merges"), path, err);
    if (!rc) special_keys(b, v, tcfg, config, NULL);
    return rc;
}

static int vocab_alloc(struct vocab *v, int64_t n, struct alloy_err *err)
{
    *v = (struct vocab){alloy_xcalloc((size_t)n, sizeof(char *)), alloy_xcalloc((size_t)n, 4),
                        alloy_xcalloc((size_t)n, sizeof(float)), n};
    return v->tok && v->type && v->score ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
}

static void vocab_free(struct vocab *v)
{
    for (int64_t i = 0; v->tok && i < v->n; i++) free(v->tok[i]);
    free(v->tok);
    free(v->type);
    free(v->score);
}

int gguf_tokenizer_keys(struct gguf_buf *b, json_t *tok, json_t *tcfg, json_t *config, const char *path,
                        const char *pre, int64_t n_vocab, struct alloy_err *err)
{
    struct vocab v;
    int rc = vocab_alloc(&v, n_vocab, err);
    if (!rc) rc = vocab_keys(b, &v, tok, tcfg, config, path, pre, err);
    vocab_free(&v);
    return rc;
}

/* ------------------------------------------------------------ SentencePiece's tokenizer.model */

/* The pieces as the converter's _create_vocab_sentencepiece takes them: ids past the file "[PADn]" UNUSED
 * scoring -10000; UNKNOWN, CONTROL, UNUSED and BYTE pieces keep their type, NORMAL and USER_DEFINED ones are
 * NORMAL (sentencepiece's Is* queries know no USER_DEFINED); every piece keeps its score. */
static int spm_pieces(struct vocab *v, const struct alloy_spm *s, const char *path, struct alloy_err *err)
{
    if ((int64_t)s->n > v->n)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: pieces: at most the embedding's %lld rows, found %zu", path,
                             (long long)v->n, s->n);
    for (int64_t i = 0; i < v->n; i++) {
        char pad[32];
        int n = snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
        int known = i < (int64_t)s->n, t = known ? s->type[i] : TT_UNUSED;
        if (set_token(v, i, known ? s->piece[i] : pad, known ? strlen(s->piece[i]) : (size_t)n,
                      t == ALLOY_SPM_USER_DEFINED ? TT_NORMAL : t))
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        v->score[i] = known ? s->score[i] : -10000.0f;
    }
    return ALLOY_OK;
}

/* added_tokens.json ({"content": id}): USER_DEFINED, -1000; ids past the vocabulary are ignored, as the
 * converter does. */
static int spm_added_file(struct vocab *v, json_t *added, const char *path, struct alloy_err *err)
{
    const char *k;
    json_t *x;
    json_object_foreach(added, k, x) {
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: \"%s\": a token id, found another value", path, k);
        if (json_integer_value(x) >= v->n) continue;
        if (set_token(v, json_integer_value(x), k, strlen(k), TT_USER) < 0)
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        v->score[json_integer_value(x)] = -1000.0f;
    }
    return ALLOY_OK;
}

/* tokenizer_config.json's added_tokens_decoder ({"id": {"content", "special"}}): CONTROL when special or one
 * of the names the converter deems special, else USER_DEFINED with U+2581 turned into spaces; -1000. */
static int spm_added_decoder(struct vocab *v, json_t *dec, const char *path, struct alloy_err *err)
{
    static const char *const look_special[] = {"<pad>", "<mask>", "<2mass>", "[@BOS@]"};
    const char *k;
    json_t *x;
    json_object_foreach(dec, k, x) {
        char *end;
        long long id = strtoll(k, &end, 10);
        const char *c = json_string_value(json_object_get(x, "content"));
        if (!c || end == k || *end || id < 0 || id >= v->n)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: added_tokens_decoder.\"%s\": an id below the embedding's "
                                 "%lld rows with a content, found another value", path, k, (long long)v->n);
        int special = json_is_true(json_object_get(x, "special"));
        for (size_t i = 0; i < ALLOY_ARRAY_LEN(look_special); i++) special |= strcmp(c, look_special[i]) == 0;
        char *t = alloy_xstrdup(c), *w = t;
        for (const char *r = c; t && *r; r++) /* U+2581 (3 bytes) -> ' ' */
            *w++ = !special && !strncmp(r, "\xe2\x96\x81", 3) ? (r += 2, ' ') : *r;
        if (t) *w = '\0';
        int rc = t ? set_token(v, id, t, strlen(t), special ? TT_CONTROL : TT_USER) : -1;
        free(t);
        if (rc < 0) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        v->score[id] = -1000.0f;
    }
    return ALLOY_OK;
}

int gguf_tokenizer_keys_spm(struct gguf_buf *b, const struct alloy_spm *s, json_t *added, json_t *tcfg,
                            json_t *tok, json_t *config, const char *path, int64_t n_vocab, int space_prefix,
                            struct alloy_err *err)
{
    json_t *tok_added = json_object_get(tok, "added_tokens"), *none = json_array();
    if (!none) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    struct vocab v;
    int rc = vocab_alloc(&v, n_vocab, err);
    if (!rc) rc = spm_pieces(&v, s, path, err);
    if (!rc && added) rc = spm_added_file(&v, added, "added_tokens.json", err);
    if (!rc) rc = spm_added_decoder(&v, json_object_get(tcfg, "added_tokens_decoder"), "tokenizer_config.json", err);
    if (!rc) {
        write_vocab(b, &v, 1, "default");
        special_keys(b, &v, tcfg, config, json_is_array(tok_added) ? tok_added : none);
        json_t *sp = json_object_get(tcfg, "add_prefix_space");
        if (space_prefix >= 0) gguf_kv_bool(b, "tokenizer.ggml.add_space_prefix", space_prefix);
        else if (json_is_boolean(sp)) gguf_kv_bool(b, "tokenizer.ggml.add_space_prefix", json_is_true(sp));
    }
    vocab_free(&v);
    json_decref(none);
    return rc;
}

int gguf_tokenizer_is_spm(json_t *tok)
{
    return vocab_form(tok, json_object_get(tok, "model"), "", NULL) == FORM_SPM;
}
