/*
 * tokenizer.c — Hugging Face tokenizer.json BPE tokenizers, encode and decode.
 *
 * DESIGN
 *   tokenizer.json is read into one of three kinds:
 *     bytes          the bundled fixture: a BPE with no merges, byte_fallback,
 *                    no normalizer/pre-tokenizer and a vocab of exactly the 256
 *                    "<0xNN>" tokens (id NN) plus added tokens: ids = bytes.
 *     byte-level BPE a ByteLevel pre-tokenizer (GPT-2, Llama-3, Qwen2): the
 *                    text is split by the GPT-2 / Llama-3 / Qwen2 regex (see
 *                    pretok.c), each piece's bytes become GPT-2's printable
 *                    byte-to-unicode characters, then BPE.
 *     SentencePiece-style BPE (Llama-2, Mistral): a Prepend("▁") + Replace(" ",
 *                    "▁") normalizer or a Metaspace pre-tokenizer, then BPE
 *                    over characters with byte_fallback to "<0xNN>" tokens.
 *   The pipeline mirrors `tokenizers`: added tokens are matched first
 *   (leftmost-longest on the raw text), then each remaining segment is
 *   normalized, pre-tokenized and BPE-encoded. BPE is transformers' algorithm:
 *   a min-heap of (merge rank, position) over a linked list of symbols, so a
 *   whole SentencePiece text is one O(n log n) word. Anything the file asks
 *   for that is not implemented is an error naming the JSON key.
 *
 * INVARIANTS
 *   - Every id the tokenizer emits is < n_ids; strings are owned by `strs`.
 *   - Encoding adds no special tokens (BOS/EOS belong to the caller).
 */
#include "eval/eval.h"
#include "core/internal.h"
#include "core/strmap.h"

#include <jansson.h>
#include <stdio.h>

enum norm_op { NORM_PREPEND, NORM_REPLACE, NORM_NFC };
struct norm_step { enum norm_op op; char *a, *b; };

enum pre_op { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE };
enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
struct pre_step {
    enum pre_op op;
    enum alloy_pretok_regex re;
    int use_regex, add_prefix_space; /* ByteLevel */
    char *repl;                      /* Metaspace replacement */
    enum prepend_scheme scheme;
    int split;
};

struct added { const char *s; size_t len; int id; };
struct pair_slot { uint64_t key; uint32_t rank; int32_t id; int used; };

struct alloy_tokenizer {
    enum alloy_tok_kind kind;
    int n_ids;
    const char **id_str;  /* [n_ids] token text for decoding, NULL for holes */
    char *id_is_added;    /* [n_ids] */
    char **strs;          /* owned strings */
    size_t nstrs, capstrs;
    struct alloy_strmap vocab; /* model vocab: token -> id */
    struct pair_slot *pairs;
    size_t pcap;
    int byte_fallback, byte_id[256], unk_id, fuse_unk, ignore_merges;
    struct norm_step *norm;
    size_t nnorm;
    struct pre_step *pre;
    size_t npre;
    struct added *added;
    size_t nadded;
    int strip_leading_space; /* decode: a "▁" was prepended while encoding */
    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[324];
};

/* ------------------------------------------------------------ small helpers */

struct ivec { int32_t *v; size_t n, cap; };
struct sbuf { char *s; size_t n, cap; };

static int ivec_push(struct ivec *v, int32_t x)
{
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 256;
        int32_t *nv = alloy_xrealloc(v->v, nc * sizeof *nv);
        if (!nv) return -1;
        v->v = nv;
        v->cap = nc;
    }
    v->v[v->n++] = x;
    return 0;
}

static int sbuf_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *ns = alloy_xrealloc(b->s, nc);
        if (!ns) return -1;
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
    return 0;
}

static size_t utf8_put(uint32_t cp, char *o)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Strict UTF-8 decode at s[*i]; returns the code point or -1. */
static int32_t utf8_next(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s + *i;
    size_t left = n - *i;
    uint32_t c = u[0];
    if (c < 0x80) { *i += 1; return (int32_t)c; }
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (!len || c > 0xF4 || len > left) return -1;
    uint32_t cp = c & (0x3F >> (len - 1));
    for (size_t k = 1; k < len; k++) {
        if ((u[k] & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (u[k] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    *i += len;
    return (int32_t)cp;
}

static size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2; }

static char *own(struct alloy_tokenizer *t, const char *s, size_t n)
{
    if (t->nstrs == t->capstrs) {
        size_t nc = t->capstrs ? t->capstrs * 2 : 1024;
        char **ns = alloy_xrealloc(t->strs, nc * sizeof *ns);
        if (!ns) return NULL;
        t->strs = ns;
        t->capstrs = nc;
    }
    char *d = alloy_xmalloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return t->strs[t->nstrs++] = d;
}

static int vocab_get(const struct alloy_tokenizer *t, const char *s)
{
    size_t v;
    return alloy_strmap_get(&t->vocab, s, &v) ? (int)v : -1;
}

static uint64_t pair_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static struct pair_slot *pair_find(const struct alloy_tokenizer *t, int32_t a, int32_t b)
{
    if (!t->pcap) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = pair_hash(key) & (t->pcap - 1);; i = (i + 1) & (t->pcap - 1)) {
        if (!t->pairs[i].used) return NULL;
        if (t->pairs[i].key == key) return &t->pairs[i];
    }
}

/* Later merges of the same pair overwrite earlier ones, as in `tokenizers`. */
static void pair_put(struct alloy_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = pair_hash(key) & (t->pcap - 1);
    while (t->pairs[i].used && t->pairs[i].key != key) i = (i + 1) & (t->pcap - 1);
    t->pairs[i] = (struct pair_slot){key, rank, id, 1};
}

static const char *kind_of(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

static const char *get_type(const json_t *o)
{
    const json_t *t = json_object_get(o, "type");
    return json_is_string(t) ? json_string_value(t) : NULL;
}

/* ------------------------------------------------------------ parsing */

static int parse_normalizer(struct alloy_tokenizer *t, const json_t *n, const char *label, const char *path,
                            struct alloy_err *err)
{
    if (!n || json_is_null(n)) return ALLOY_OK;
    const char *type = get_type(n);
    if (!json_is_object(n) || !type)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected an object with a \"type\", found %s", label,
                             path, kind_of(n));
    char sub[128];
    if (strcmp(type, "Sequence") == 0) {
        const json_t *arr = json_object_get(n, "normalizers");
        if (!json_is_array(arr))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s.normalizers: expected an array", label, path);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", path, i);
            int rc = parse_normalizer(t, json_array_get(arr, i), label, sub, err);
            if (rc) return rc;
        }
        return ALLOY_OK;
    }
    struct norm_step st = {0};
    if (strcmp(type, "Prepend") == 0) {
        const json_t *p = json_object_get(n, "prepend");
        if (!json_is_string(p))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s.prepend: expected a string", label, path);
        st.op = NORM_PREPEND;
        if (!(st.a = own(t, json_string_value(p), json_string_length(p))))
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    } else if (strcmp(type, "Replace") == 0) {
        const json_t *pat = json_object_get(json_object_get(n, "pattern"), "String");
        const json_t *c = json_object_get(n, "content");
        if (!json_is_string(pat) || !json_string_length(pat))
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                                 "%s: %s.pattern: only {\"String\": \"...\"} patterns are supported", label, path);
        if (!json_is_string(c))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s.content: expected a string", label, path);
        st.op = NORM_REPLACE;
        if (!(st.a = own(t, json_string_value(pat), json_string_length(pat))) ||
            !(st.b = own(t, json_string_value(c), json_string_length(c))))
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    } else if (strcmp(type, "NFC") == 0) {
        st.op = NORM_NFC;
    } else {
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                             "%s: %s.type: \"%s\" is not supported (Sequence, Prepend, Replace, NFC are)", label, path,
                             type);
    }
    struct norm_step *nn = alloy_xrealloc(t->norm, (t->nnorm + 1) * sizeof *nn);
    if (!nn) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    t->norm = nn;
    t->norm[t->nnorm++] = st;
    return ALLOY_OK;
}

static int bool_key(const json_t *o, const char *key, int def)
{
    const json_t *j = json_object_get(o, key);
    return json_is_boolean(j) ? json_is_true(j) : def;
}

static int parse_pretok(struct alloy_tokenizer *t, const json_t *p, const char *label, const char *path,
                        struct alloy_err *err)
{
    if (!p || json_is_null(p)) return ALLOY_OK;
    const char *type = get_type(p);
    if (!json_is_object(p) || !type)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected an object with a \"type\", found %s", label,
                             path, kind_of(p));
    char sub[128];
    if (strcmp(type, "Sequence") == 0) {
        const json_t *arr = json_object_get(p, "pretokenizers");
        if (!json_is_array(arr))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s.pretokenizers: expected an array", label, path);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", path, i);
            int rc = parse_pretok(t, json_array_get(arr, i), label, sub, err);
            if (rc) return rc;
        }
        return ALLOY_OK;
    }
    struct pre_step st = {0};
    if (t->npre && t->pre[t->npre - 1].op == PRE_BYTELEVEL)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: a pre-tokenizer after ByteLevel is not supported",
                             label, path);
    if (strcmp(type, "Split") == 0) {
        const json_t *re = json_object_get(json_object_get(p, "pattern"), "Regex");
        const json_t *beh = json_object_get(p, "behavior");
        if (!json_is_string(re) || alloy_pretok_regex_lookup(json_string_value(re), &st.re) != 0)
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                                 "%s: %s.pattern: this split pattern is not supported (the GPT-2, Llama-3 and Qwen2 "
                                 "regexes are)", label, path);
        if (!json_is_string(beh) || strcmp(json_string_value(beh), "Isolated") != 0 || bool_key(p, "invert", 0))
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                                 "%s: %s.behavior: only \"Isolated\" without invert is supported", label, path);
        st.op = PRE_SPLIT;
    } else if (strcmp(type, "ByteLevel") == 0) {
        st.op = PRE_BYTELEVEL;
        st.add_prefix_space = bool_key(p, "add_prefix_space", 1);
        st.use_regex = bool_key(p, "use_regex", 1);
        st.re = ALLOY_SPLIT_GPT2;
    } else if (strcmp(type, "Metaspace") == 0) {
        const json_t *r = json_object_get(p, "replacement"), *sch = json_object_get(p, "prepend_scheme");
        st.op = PRE_METASPACE;
        if (!(st.repl = own(t, json_is_string(r) ? json_string_value(r) : "\xe2\x96\x81",
                            json_is_string(r) ? json_string_length(r) : 3)))
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (!*st.repl) return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s.replacement: expected one character", label, path);
        if (json_is_string(sch)) {
            const char *s = json_string_value(sch);
            if (strcmp(s, "always") == 0) st.scheme = PREPEND_ALWAYS;
            else if (strcmp(s, "first") == 0) st.scheme = PREPEND_FIRST;
            else if (strcmp(s, "never") == 0) st.scheme = PREPEND_NEVER;
            else
                return alloy_err_set(err, ALLOY_ERR_FORMAT,
                                     "%s: %s.prepend_scheme: expected \"always\", \"first\" or \"never\", found \"%s\"",
                                     label, path, s);
        } else {
            st.scheme = bool_key(p, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
        }
        st.split = bool_key(p, "split", 1);
        if (st.scheme != PREPEND_NEVER) t->strip_leading_space = 1;
    } else {
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                             "%s: %s.type: \"%s\" is not supported (Sequence, Split, ByteLevel, Metaspace are)", label,
                             path, type);
    }
    struct pre_step *np = alloy_xrealloc(t->pre, (t->npre + 1) * sizeof *np);
    if (!np) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    t->pre = np;
    t->pre[t->npre++] = st;
    return ALLOY_OK;
}

static int set_id(struct alloy_tokenizer *t, int id, const char *s, int added)
{
    if (id >= t->n_ids) return -1;
    if (added || !t->id_str[id]) t->id_str[id] = s;
    if (added) t->id_is_added[id] = 1;
    return 0;
}

static int parse_merge(const json_t *m, const char **a, size_t *alen, const char **b, size_t *blen)
{
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *alen = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *blen = json_string_length(json_array_get(m, 1));
        return 0;
    }
    if (!json_is_string(m)) return -1;
    const char *s = json_string_value(m), *sp = strchr(s, ' ');
    if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' ')) return -1;
    *a = s;
    *alen = (size_t)(sp - s);
    *b = sp + 1;
    *blen = strlen(sp + 1);
    return 0;
}

static int parse_model(struct alloy_tokenizer *t, const json_t *root, const char *label, struct alloy_err *err)
{
    const json_t *model = json_object_get(root, "model");
    const char *type = json_is_object(model) ? get_type(model) : NULL;
    if (!json_is_object(model))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model: expected an object, found %s", label,
                             model ? kind_of(model) : "nothing");
    if (type && strcmp(type, "BPE") != 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: model.type: \"%s\" is not supported (BPE is)", label, type);
    const json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.vocab: expected an object of token -> id, found %s",
                             label, vocab ? kind_of(vocab) : "nothing");
    if (merges && !json_is_array(merges) && !json_is_null(merges))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.merges: expected an array, found %s", label,
                             kind_of(merges));
    const char *bad[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const json_t *j = json_object_get(model, bad[i]);
        if (j && !json_is_null(j) && !(json_is_string(j) && !json_string_length(j)))
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: model.%s: expected null (not supported)", label, bad[i]);
    }
    const json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) != 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: model.dropout: expected null (BPE dropout is not supported)",
                             label);
    t->byte_fallback = bool_key(model, "byte_fallback", 0);
    t->fuse_unk = bool_key(model, "fuse_unk", 0);
    t->ignore_merges = bool_key(model, "ignore_merges", 0);

    /* ids: vocab and added tokens */
    const json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added) && !json_is_null(added))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: added_tokens: expected an array, found %s", label, kind_of(added));
    long long maxid = -1;
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= (1 << 24))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.vocab: \"%.40s\": expected an id in [0, 2^24), found %s",
                                 label, key, kind_of(val));
        if (json_integer_value(val) > maxid) maxid = json_integer_value(val);
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        const json_t *a = json_array_get(added, i), *id = json_object_get(a, "id"), *c = json_object_get(a, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 24) ||
            !json_is_string(c) || !json_string_length(c))
            return alloy_err_set(err, ALLOY_ERR_FORMAT,
                                 "%s: added_tokens[%zu]: expected {\"id\": integer, \"content\": non-empty string}", label, i);
        if (json_integer_value(id) > maxid) maxid = json_integer_value(id);
    }
    if (maxid < 0) return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.vocab: empty", label);
    t->n_ids = (int)maxid + 1;
    t->id_str = alloy_xcalloc((size_t)t->n_ids, sizeof *t->id_str);
    t->id_is_added = alloy_xcalloc((size_t)t->n_ids, 1);
    if (!t->id_str || !t->id_is_added) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    json_object_foreach((json_t *)vocab, key, val) {
        char *s = own(t, key, strlen(key));
        int existing = 0;
        if (!s || alloy_strmap_put(&t->vocab, s, (size_t)json_integer_value(val), &existing) != 0)
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        set_id(t, (int)json_integer_value(val), s, 0);
    }
    t->added = alloy_xcalloc(json_array_size(added) + 1, sizeof *t->added);
    if (!t->added) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < json_array_size(added); i++) {
        const json_t *a = json_array_get(added, i), *c = json_object_get(a, "content");
        char *s = own(t, json_string_value(c), json_string_length(c));
        if (!s) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        int id = (int)json_integer_value(json_object_get(a, "id"));
        set_id(t, id, s, 1);
        t->added[t->nadded++] = (struct added){s, json_string_length(c), id};
    }

    /* unknown token, byte fallback ids */
    t->unk_id = -1;
    const json_t *unk = json_object_get(model, "unk_token");
    if (json_is_string(unk)) {
        t->unk_id = vocab_get(t, json_string_value(unk));
        if (t->unk_id < 0)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.unk_token: \"%.40s\" is not in model.vocab", label,
                                 json_string_value(unk));
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = vocab_get(t, name);
    }

    /* merges */
    size_t nm = json_array_size(merges);
    t->pcap = 16;
    while (t->pcap < nm * 2) t->pcap *= 2;
    t->pairs = alloy_xcalloc(t->pcap, sizeof *t->pairs);
    struct sbuf cat = {0};
    if (!t->pairs) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < nm; i++) {
        const char *a, *b;
        size_t al, bl;
        if (parse_merge(json_array_get(merges, i), &a, &al, &b, &bl) != 0) {
            free(cat.s);
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]",
                                 label, i);
        }
        cat.n = 0;
        if (sbuf_add(&cat, a, al) || sbuf_add(&cat, "", 1) || sbuf_add(&cat, b, bl) || sbuf_add(&cat, "", 1) ||
            sbuf_add(&cat, a, al) || sbuf_add(&cat, b, bl)) {
            free(cat.s);
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        }
        const char *sa = cat.s, *sb = cat.s + al + 1, *sab = cat.s + al + bl + 2;
        int ia = vocab_get(t, sa), ib = vocab_get(t, sb), iab = vocab_get(t, sab);
        const char *missing = ia < 0 ? sa : ib < 0 ? sb : iab < 0 ? sab : NULL;
        if (missing) {
            int rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.merges[%zu]: token \"%.40s\" is not in model.vocab",
                                   label, i, missing);
            free(cat.s);
            return rc;
        }
        pair_put(t, ia, ib, (uint32_t)i, iab);
    }
    free(cat.s);
    return ALLOY_OK;
}

static void init_byte_map(struct alloy_tokenizer *t)
{
    int n = 0;
    for (int i = 0; i < 324; i++) t->cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        t->cp_to_byte[t->byte_to_cp[b]] = (int16_t)b;
    }
}

static int is_byte_fixture(const struct alloy_tokenizer *t, const json_t *root)
{
    const json_t *n = json_object_get(root, "normalizer"), *p = json_object_get(root, "pre_tokenizer");
    if ((n && !json_is_null(n)) || (p && !json_is_null(p)) || !t->byte_fallback) return 0;
    if (t->pcap && json_array_size(json_object_get(json_object_get(root, "model"), "merges"))) return 0;
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] != b) return 0;
    /* every other vocab entry must be an added token */
    const char *key;
    const json_t *val;
    json_object_foreach(json_object_get(json_object_get(root, "model"), "vocab"), key, val) {
        int id = (int)json_integer_value(val);
        if (id >= 256 && !t->id_is_added[id]) return 0;
    }
    return 1;
}

int alloy_tokenizer_parse(const char *json_text, const char *label, struct alloy_tokenizer **out,
                          struct alloy_err *err)
{
    json_error_t jerr;
    json_t *root = json_loads(json_text, 0, &jerr);
    if (!root)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", label, jerr.text, jerr.line);
    struct alloy_tokenizer *t = alloy_xcalloc(1, sizeof *t);
    int rc = ALLOY_OK;
    if (!t) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); goto done; }
    if (!json_is_object(root)) {
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: expected a JSON object, found %s", label, kind_of(root));
        goto done;
    }
    init_byte_map(t);
    if ((rc = parse_model(t, root, label, err)) ||
        (rc = parse_normalizer(t, json_object_get(root, "normalizer"), label, "normalizer", err)) ||
        (rc = parse_pretok(t, json_object_get(root, "pre_tokenizer"), label, "pre_tokenizer", err)))
        goto done;
    for (size_t i = 0; i < t->nnorm; i++)
        if (t->norm[i].op == NORM_PREPEND) t->strip_leading_space = 1;
    t->kind = ALLOY_TOK_SP_BPE;
    for (size_t i = 0; i < t->npre; i++)
        if (t->pre[i].op == PRE_BYTELEVEL) t->kind = ALLOY_TOK_BYTELEVEL_BPE;
    if (is_byte_fixture(t, root)) t->kind = ALLOY_TOK_BYTES;
done:
    json_decref(root);
    if (rc) { alloy_tokenizer_free(t); return rc; }
    *out = t;
    return ALLOY_OK;
}

int alloy_tokenizer_load(const char *path, struct alloy_tokenizer **out, struct alloy_err *err)
{
    char *text = NULL;
    int rc = alloy_read_file(path, (size_t)256 << 20, &text, NULL, err);
    if (rc) return rc;
    rc = alloy_tokenizer_parse(text, path, out, err);
    free(text);
    return rc;
}

void alloy_tokenizer_free(struct alloy_tokenizer *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->nstrs; i++) free(t->strs[i]);
    free(t->strs);
    free(t->id_str);
    free(t->id_is_added);
    alloy_strmap_free(&t->vocab);
    free(t->pairs);
    free(t->norm);
    free(t->pre);
    free(t->added);
    free(t);
}

enum alloy_tok_kind alloy_tokenizer_kind(const struct alloy_tokenizer *t) { return t->kind; }
int alloy_tokenizer_n_ids(const struct alloy_tokenizer *t) { return t->n_ids; }

const char *alloy_tok_kind_name(enum alloy_tok_kind k)
{
    switch (k) {
    case ALLOY_TOK_BYTES: return "bytes";
    case ALLOY_TOK_BYTELEVEL_BPE: return "byte-level BPE";
    case ALLOY_TOK_SP_BPE: return "SentencePiece-style BPE";
    }
    return "?";
}

int alloy_tokenizer_token_id(const struct alloy_tokenizer *t, const char *token)
{
    for (size_t i = 0; i < t->nadded; i++)
        if (strcmp(t->added[i].s, token) == 0) return t->added[i].id;
    return vocab_get(t, token);
}

/* ------------------------------------------------------------ BPE */

struct sym { int32_t id; int32_t prev, next; int alive; };
struct merge { uint32_t rank; uint32_t pos; int32_t id; };

static int merge_less(const struct merge *a, const struct merge *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct merge *h, size_t *n, struct merge m)
{
    size_t i = (*n)++;
    h[i] = m;
    while (i && merge_less(&h[i], &h[(i - 1) / 2])) {
        struct merge tmp = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
}

static struct merge heap_pop(struct merge *h, size_t *n)
{
    struct merge top = h[0];
    h[0] = h[--*n];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && merge_less(&h[l], &h[m])) m = l;
        if (r < *n && merge_less(&h[r], &h[m])) m = r;
        if (m == i) break;
        struct merge tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
    return top;
}

static int bytes_known(const struct alloy_tokenizer *t, const char *s, size_t l)
{
    for (size_t k = 0; k < l; k++)
        if (t->byte_id[(unsigned char)s[k]] < 0) return 0;
    return 1;
}

/* BPE-encodes one pre-token `w` (UTF-8, already byte-mapped for byte-level). */
static int bpe_word(const struct alloy_tokenizer *t, const char *w, size_t n, const char *label, struct ivec *out,
                    struct alloy_err *err)
{
    if (!n) return ALLOY_OK;
    if (t->ignore_merges) {
        int id = vocab_get(t, w); /* w is NUL-terminated by the caller */
        if (id >= 0) return ivec_push(out, id) ? alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory") : ALLOY_OK;
    }
    struct sym *s = alloy_xmalloc(n * sizeof *s); /* at most one symbol per byte */
    struct merge *h = alloy_xmalloc((3 * n + 1) * sizeof *h); /* n-1 initial pairs + 2 per merge */
    size_t ns = 0, nh = 0;
    int rc = ALLOY_OK;
    if (!s || !h) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); goto done; }
    char ch[8];
    int prev_unk = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_len((unsigned char)w[i]);
        if (l > n - i) l = n - i;
        memcpy(ch, w + i, l);
        ch[l] = '\0';
        int id = vocab_get(t, ch);
        if (id >= 0) {
            s[ns++] = (struct sym){id, 0, 0, 1};
            prev_unk = 0;
        } else if (t->byte_fallback && bytes_known(t, w + i, l)) {
            for (size_t k = 0; k < l; k++) s[ns++] = (struct sym){t->byte_id[(unsigned char)w[i + k]], 0, 0, 1};
            prev_unk = 0;
        } else if (t->unk_id >= 0) {
            if (!(t->fuse_unk && prev_unk)) s[ns++] = (struct sym){t->unk_id, 0, 0, 1};
            prev_unk = 1;
        } else {
            size_t k = 0;
            int32_t cp = utf8_next(w + i, l, &k);
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT,
                               "%s: character U+%04X is not in the tokenizer's vocabulary and it has no byte_fallback "
                               "or unk_token", label, (unsigned)(cp < 0 ? 0xFFFD : cp));
            goto done;
        }
        i += l;
    }
    for (size_t i = 0; i < ns; i++) {
        s[i].prev = (int32_t)i - 1;
        s[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < ns; i++) {
        const struct pair_slot *p = pair_find(t, s[i].id, s[i + 1].id);
        if (p) heap_push(h, &nh, (struct merge){p->rank, (uint32_t)i, p->id});
    }
    while (nh) {
        struct merge top = heap_pop(h, &nh);
        struct sym *cur = &s[top.pos];
        if (!cur->alive || cur->next < 0) continue;
        struct sym *right = &s[cur->next];
        const struct pair_slot *p = pair_find(t, cur->id, right->id);
        if (!p || p->id != top.id) continue; /* stale entry */
        cur->id = top.id;
        right->alive = 0;
        cur->next = right->next;
        if (right->next >= 0) s[right->next].prev = (int32_t)top.pos;
        if (cur->prev >= 0 && (p = pair_find(t, s[cur->prev].id, cur->id)))
            heap_push(h, &nh, (struct merge){p->rank, (uint32_t)cur->prev, p->id});
        if (cur->next >= 0 && (p = pair_find(t, cur->id, s[cur->next].id)))
            heap_push(h, &nh, (struct merge){p->rank, top.pos, p->id});
    }
    for (int32_t i = 0; ns && i >= 0; i = s[i].next)
        if (ivec_push(out, s[i].id)) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); goto done; }
done:
    free(s);
    free(h);
    return rc;
}

/* ------------------------------------------------------------ encode */

struct piece { char *s; size_t n; int at_start; };
struct plist { struct piece *v; size_t n, cap; };

static void plist_free(struct plist *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i].s);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* Appends a copy of pre + s[0..n) + post. */
static int plist_add(struct plist *l, const char *pre, size_t pn, const char *s, size_t n, int at_start)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        struct piece *nv = alloy_xrealloc(l->v, nc * sizeof *nv);
        if (!nv) return -1;
        l->v = nv;
        l->cap = nc;
    }
    char *d = alloy_xmalloc(pn + n + 1);
    if (!d) return -1;
    memcpy(d, pre, pn);
    memcpy(d + pn, s, n);
    d[pn + n] = '\0';
    l->v[l->n++] = (struct piece){d, pn + n, at_start};
    return 0;
}

static int replace_all(struct sbuf *out, const char *s, size_t n, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to);
    out->n = 0;
    if (sbuf_add(out, "", 0)) return -1;
    for (size_t i = 0; i < n;) {
        if (fl && i + fl <= n && memcmp(s + i, from, fl) == 0) {
            if (sbuf_add(out, to, tl)) return -1;
            i += fl;
        } else {
            if (sbuf_add(out, s + i, 1)) return -1;
            i++;
        }
    }
    return 0;
}

static int normalize(const struct alloy_tokenizer *t, const char *seg, size_t n, size_t offset, const char *label,
                     struct sbuf *out, struct alloy_err *err)
{
    struct sbuf tmp = {0};
    out->n = 0;
    if (sbuf_add(out, seg, n)) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t k = 0; k < t->nnorm; k++) {
        const struct norm_step *st = &t->norm[k];
        if (st->op == NORM_NFC) {
            for (size_t i = 0; i < out->n;) {
                size_t at = i;
                int32_t cp = utf8_next(out->s, out->n, &i);
                if (cp >= 0 && !alloy_uni_nfc_quick_yes((uint32_t)cp)) {
                    free(tmp.s);
                    return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                                         "%s: byte %zu: U+%04X may change under the tokenizer's NFC normalizer, which "
                                         "alloy does not implement (normalize the text to NFC first)",
                                         label, offset + at, (unsigned)cp);
                }
                if (cp < 0) i++;
            }
            continue;
        }
        if (st->op == NORM_PREPEND && !out->n) continue;
        tmp.n = 0;
        int bad = st->op == NORM_PREPEND ? sbuf_add(&tmp, st->a, strlen(st->a)) || sbuf_add(&tmp, out->s, out->n)
                                         : replace_all(&tmp, out->s, out->n, st->a, st->b);
        if (bad) { free(tmp.s); return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); }
        struct sbuf sw = *out;
        *out = tmp;
        tmp = sw;
    }
    free(tmp.s);
    return ALLOY_OK;
}

static int apply_pre(const struct alloy_tokenizer *t, const struct pre_step *st, struct plist *in, struct plist *out)
{
    uint32_t *cps = NULL;
    size_t *ends = NULL, *offs = NULL;
    struct sbuf b = {0};
    int rc = 0;
    for (size_t k = 0; k < in->n && !rc; k++) {
        struct piece p = in->v[k];
        const char *pre = "";
        size_t pn = 0;
        if (st->op == PRE_METASPACE) {
            size_t rl = strlen(st->repl);
            if ((rc = replace_all(&b, p.s, p.n, " ", st->repl))) break;
            int starts = b.n >= rl && memcmp(b.s, st->repl, rl) == 0;
            int prepend = st->scheme == PREPEND_ALWAYS || (st->scheme == PREPEND_FIRST && p.at_start);
            if (prepend && !starts && b.n) { pre = st->repl; pn = rl; }
            if (!st->split) { rc = plist_add(out, pre, pn, b.s, b.n, p.at_start); continue; }
            /* MergedWithNext: every replacement character starts a new piece */
            size_t start = 0;
            for (size_t i = 1; i <= b.n && !rc; i++) {
                if (i == b.n || (i + rl <= b.n && memcmp(b.s + i, st->repl, rl) == 0)) {
                    if (i > start || pn) rc = plist_add(out, pre, pn, b.s + start, i - start, p.at_start && !start);
                    pre = "";
                    pn = 0;
                    start = i;
                }
            }
            continue;
        }
        if (st->op == PRE_BYTELEVEL && st->add_prefix_space && (!p.n || p.s[0] != ' ')) { pre = " "; pn = 1; }
        if (st->op == PRE_BYTELEVEL && !st->use_regex) { rc = plist_add(out, pre, pn, p.s, p.n, p.at_start); continue; }
        /* regex split over pre + p */
        b.n = 0;
        if ((rc = sbuf_add(&b, pre, pn)) || (rc = sbuf_add(&b, p.s, p.n))) break;
        free(cps); free(ends); free(offs);
        cps = alloy_xmalloc((b.n + 1) * sizeof *cps);
        ends = alloy_xmalloc((b.n + 1) * sizeof *ends);
        offs = alloy_xmalloc((b.n + 1) * sizeof *offs);
        if (!cps || !ends || !offs) { rc = -1; break; }
        size_t nc = 0;
        for (size_t i = 0; i < b.n;) {
            offs[nc] = i;
            int32_t cp = utf8_next(b.s, b.n, &i);
            if (cp < 0) { cp = 0xFFFD; i++; }
            cps[nc++] = (uint32_t)cp;
        }
        offs[nc] = b.n;
        size_t np = alloy_pretok_split(st->re, cps, nc, ends);
        for (size_t j = 0, from = 0; j < np && !rc; j++) {
            rc = plist_add(out, "", 0, b.s + offs[from], offs[ends[j]] - offs[from], p.at_start && j == 0);
            from = ends[j];
        }
    }
    free(cps);
    free(ends);
    free(offs);
    free(b.s);
    return rc;
}

static int encode_segment(const struct alloy_tokenizer *t, const char *seg, size_t n, size_t offset,
                          const char *label, struct ivec *out, struct alloy_err *err)
{
    struct sbuf norm = {0}, mapped = {0};
    struct plist a = {0}, b = {0};
    int rc = normalize(t, seg, n, offset, label, &norm, err);
    if (rc) goto done;
    if (plist_add(&a, "", 0, norm.s ? norm.s : "", norm.n, offset == 0)) goto nomem;
    for (size_t k = 0; k < t->npre; k++) {
        if (apply_pre(t, &t->pre[k], &a, &b)) goto nomem;
        plist_free(&a);
        a = b;
        b = (struct plist){0};
    }
    for (size_t k = 0; k < a.n; k++) {
        const char *w = a.v[k].s;
        size_t wn = a.v[k].n;
        if (t->kind == ALLOY_TOK_BYTELEVEL_BPE) {
            mapped.n = 0;
            for (size_t i = 0; i < wn; i++) {
                char u[4];
                size_t ul = utf8_put(t->byte_to_cp[(unsigned char)w[i]], u);
                if (sbuf_add(&mapped, u, ul)) goto nomem;
            }
            w = mapped.s;
            wn = mapped.n;
        }
        if ((rc = bpe_word(t, w, wn, label, out, err))) goto done;
    }
    goto done;
nomem:
    rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
done:
    free(norm.s);
    free(mapped.s);
    plist_free(&a);
    plist_free(&b);
    return rc;
}

/* Longest added token starting at text[i], or NULL. */
static const struct added *added_at(const struct alloy_tokenizer *t, const char *text, size_t len, size_t i)
{
    const struct added *best = NULL;
    for (size_t k = 0; k < t->nadded; k++) {
        const struct added *a = &t->added[k];
        if (a->len <= len - i && (!best || a->len > best->len) && text[i] == a->s[0] &&
            memcmp(text + i, a->s, a->len) == 0)
            best = a;
    }
    return best;
}

int alloy_tokenizer_encode(const struct alloy_tokenizer *t, const char *text, size_t len, const char *label,
                           int32_t **ids, size_t *n, struct alloy_err *err)
{
    struct ivec out = {0};
    int rc = ALLOY_OK;
    if (t->kind == ALLOY_TOK_BYTES) {
        out.v = alloy_xmalloc((len + 1) * sizeof *out.v);
        if (!out.v) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", label);
        for (size_t i = 0; i < len; i++) out.v[i] = (unsigned char)text[i];
        *ids = out.v;
        *n = len;
        return ALLOY_OK;
    }
    for (size_t i = 0; i < len;) {
        size_t at = i;
        if (utf8_next(text, len, &i) < 0)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: byte %zu: invalid UTF-8 (the tokenizer needs UTF-8 text)",
                                 label, at);
    }
    unsigned char first[256] = {0};
    for (size_t k = 0; k < t->nadded; k++) first[(unsigned char)t->added[k].s[0]] = 1;
    size_t seg = 0;
    for (size_t i = 0; i <= len && !rc;) {
        const struct added *a = i < len && first[(unsigned char)text[i]] ? added_at(t, text, len, i) : NULL;
        if (!a && i < len) { i++; continue; }
        if (i > seg) rc = encode_segment(t, text + seg, i - seg, seg, label, &out, err);
        if (rc || !a) break;
        if (ivec_push(&out, a->id)) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        i += a->len;
        seg = i;
        if (i == len) break;
    }
    if (rc) { free(out.v); return rc; }
    if (!out.v && !(out.v = alloy_xmalloc(sizeof *out.v))) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    *ids = out.v;
    *n = out.n;
    return ALLOY_OK;
}

/* ------------------------------------------------------------ decode */

int alloy_tokenizer_decode(const struct alloy_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len,
                           struct alloy_err *err)
{
    struct sbuf b = {0};
    const char *repl = "\xe2\x96\x81";
    for (size_t k = 0; k < t->npre; k++)
        if (t->pre[k].op == PRE_METASPACE) repl = t->pre[k].repl;
    for (size_t k = 0; k < t->nnorm; k++)
        if (t->norm[k].op == NORM_REPLACE && strcmp(t->norm[k].a, " ") == 0) repl = t->norm[k].b;
    size_t rl = strlen(repl);
    int rc = ALLOY_OK;
    if (sbuf_add(&b, "", 0)) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->id_str[id]) {
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "token %zu: id %d is not in the tokenizer's vocabulary", i, id);
            break;
        }
        const char *s = t->id_str[id];
        size_t sl = strlen(s);
        int bad = 0;
        unsigned hex;
        char c;
        if (t->kind == ALLOY_TOK_BYTES && id < 256) {
            c = (char)id;
            bad = sbuf_add(&b, &c, 1);
        } else if (t->id_is_added[id]) {
            bad = sbuf_add(&b, s, sl);
        } else if (t->kind == ALLOY_TOK_BYTELEVEL_BPE) {
            for (size_t j = 0; j < sl && !bad;) {
                size_t at = j;
                int32_t cp = utf8_next(s, sl, &j);
                if (cp < 0) { j++; continue; }
                if (cp < 324 && t->cp_to_byte[cp] >= 0) {
                    c = (char)t->cp_to_byte[cp];
                    bad = sbuf_add(&b, &c, 1);
                } else {
                    bad = sbuf_add(&b, s + at, j - at);
                }
            }
        } else if (sl == 6 && sscanf(s, "<0x%2X>", &hex) == 1 && t->byte_id[hex & 0xFF] == id) {
            c = (char)hex;
            bad = sbuf_add(&b, &c, 1);
        } else {
            for (size_t j = 0; j < sl && !bad;) {
                if (rl && j + rl <= sl && memcmp(s + j, repl, rl) == 0) { bad = sbuf_add(&b, " ", 1); j += rl; }
                else { bad = sbuf_add(&b, s + j, 1); j++; }
            }
        }
        if (bad) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    if (rc) { free(b.s); return rc; }
    if (t->kind == ALLOY_TOK_SP_BPE && t->strip_leading_space && b.n && b.s[0] == ' ') {
        memmove(b.s, b.s + 1, b.n);
        b.n--;
    }
    *text = b.s;
    *len = b.n;
    return ALLOY_OK;
}
