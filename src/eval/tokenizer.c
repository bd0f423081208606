/*
 * tokenizer.c — reading Hugging Face tokenizer.json files (BPE models).
 *
 * DESIGN
 *   tokenizer.json is read into one of three kinds:
 *     bytes          the bundled fixture: a BPE with no merges, byte_fallback,
 *                    no normalizer/pre-tokenizer and a vocab of exactly the 256
 *                    "<0xNN>" tokens (id NN) plus added tokens: ids = bytes,
 *                    the added tokens matched first as for the other kinds.
 *     byte-level BPE a ByteLevel pre-tokenizer (GPT-2, Llama-3, Qwen2): the
 *                    text is split by the GPT-2 / Llama-3 / Qwen2 regex (see
 *                    pretok.c), each piece's bytes become GPT-2's printable
 *                    byte-to-unicode characters, then BPE.
 *     SentencePiece-style BPE (Llama-2, Mistral): a Prepend("▁") + Replace(" ",
 *                    "▁") normalizer or a Metaspace pre-tokenizer, then BPE
 *                    over characters with byte_fallback to "<0xNN>" tokens.
 *   Parsing builds the vocabulary map, the merge table (pair of ids -> rank,
 *   result; merges given as "a b" strings or [a, b] pairs) and the lists of
 *   normalizer and pre-tokenizer steps that bpe.c runs. Anything the file asks
 *   for that is not implemented is an error naming the JSON key, so a
 *   tokenizer alloy cannot reproduce never silently gives other ids.
 *
 * INVARIANTS
 *   - Every id the tokenizer emits is < n_ids; strings are owned by `strs`.
 *   - A ByteLevel step is the last pre-tokenizer (it maps bytes to characters).
 */
#include "eval/tokenizer_impl.h"

#include <jansson.h>
#include <stdio.h>

/* ------------------------------------------------------------ parse-time helpers */

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

/* Makes room for step n of a step list (capacity doubles at powers of two); at most TOK_MAX_STEPS. */
static int grow_steps(void **list, size_t n, size_t size, const char *label, const char *what, struct alloy_err *err)
{
    if (n >= TOK_MAX_STEPS)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: more than %d steps (the limit alloy accepts)", label,
                             what, TOK_MAX_STEPS);
    size_t cap = n == 0 ? 8 : n >= 8 && !(n & (n - 1)) ? 2 * n : 0;
    if (!cap) return ALLOY_OK;
    void *p = alloy_xrealloc(*list, cap * size);
    if (!p) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    *list = p;
    return ALLOY_OK;
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
    int rc = grow_steps((void **)&t->norm, t->nnorm, sizeof *t->norm, label, "normalizer", err);
    if (rc) return rc;
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
    int rc = grow_steps((void **)&t->pre, t->npre, sizeof *t->pre, label, "pre-tokenizer", err);
    if (rc) return rc;
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
    if (!(t->label = own(t, label, strlen(label)))) {
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        goto done;
    }
    t->src_len = strlen(json_text);
    t->src_hash = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < t->src_len; i++) t->src_hash = (t->src_hash ^ (unsigned char)json_text[i]) * 0x100000001b3ull;
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
    int rc = alloy_read_file(path, ALLOY_TOKENIZER_JSON_MAX, &text, NULL, err);
    if (rc) return rc;
    rc = alloy_tokenizer_parse(text, path, out, err);
    free(text);
    return rc;
}

int alloy_tokenizer_same(const struct alloy_tokenizer *a, const struct alloy_tokenizer *b)
{
    return a && b && a->src_len == b->src_len && a->src_hash == b->src_hash;
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
