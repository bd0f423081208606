/*
 * vocab.c — the output vocabulary of a tokenizer merge (see vocab.h).
 *
 * DESIGN
 *   mergekit builds the union through Hugging Face objects; this follows
 *   what they do to the files. A model's tokens are its tokenizer.json
 *   model.vocab (an object for BPE/WordPiece/WordLevel, a list of
 *   [piece, score] for Unigram) plus its added_tokens, which win. Stripping
 *   removes from a copy of the base's document the tokens at or past the
 *   base config's vocab_size: from model.vocab, added_tokens and every merge
 *   that names one. The union walks the models (base first) in id order —
 *   mergekit walks a hash map, so its order of new ids is not defined — and
 *   adds each token the base lacks as a plain added token, then the models'
 *   added tokens (first definition wins), then the configured tokens. A new
 *   id is the next one after the model vocabulary and the added tokens, as
 *   the tokenizers library assigns it.
 */
#include "plan/vocab.h"
#include "config/config.h"

json_t *alloy_json_load_file(const char *path, struct alloy_err *err)
{
    char *text;
    size_t len;
    if (alloy_read_file(path, ALLOY_TOKENIZER_JSON_MAX, &text, &len, err) != ALLOY_OK) return NULL;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", path, jerr.text, jerr.line);
    return root;
}

/* config.json's vocab_size (top level or text_config), or -1. */
static long long config_vocab_size(const struct alloy_model *m)
{
    const char *text = alloy_model_config_text(m);
    json_t *root = text ? json_loads(text, 0, NULL) : NULL;
    json_t *v = json_object_get(root, "vocab_size");
    if (!json_is_integer(v)) v = json_object_get(json_object_get(root, "text_config"), "vocab_size");
    long long n = json_is_integer(v) && json_integer_value(v) > 0 ? (long long)json_integer_value(v) : -1;
    json_decref(root);
    return n;
}

static int put(struct alloy_strmap *m, const char *key, size_t id, struct alloy_err *err)
{
    return alloy_strmap_put(m, key, id, NULL) ? alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory") : ALLOY_OK;
}

/* A token id from the file: an integer in [0, 2^31 - 1). */
static int token_id(const json_t *v, size_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= INT32_MAX) return -1;
    *id = (size_t)json_integer_value(v);
    return 0;
}

/* token -> id for doc: the added tokens first (they win), then the model vocabulary. */
static int index_doc(const char *path, const json_t *doc, struct alloy_strmap *ids, struct alloy_err *err)
{
    const json_t *vocab = json_object_get(json_object_get(doc, "model"), "vocab");
    const json_t *added = json_object_get(doc, "added_tokens");
    size_t id;
    if (!json_is_object(vocab) && !json_is_array(vocab))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.vocab: expected an object (BPE, WordPiece) or a list "
                             "(Unigram), found %s", path, vocab ? "another JSON value" : "nothing");
    if (added && !json_is_array(added) && !json_is_null(added))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: added_tokens: expected a list", path);
    for (size_t i = 0; i < json_array_size(added); i++) {
        const json_t *a = json_array_get(added, i), *c = json_object_get(a, "content");
        if (!json_is_string(c) || !json_string_length(c) || token_id(json_object_get(a, "id"), &id))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: added_tokens[%zu]: expected {\"id\": integer >= 0, "
                                 "\"content\": non-empty string}", path, i);
        if (put(ids, json_string_value(c), id, err)) return ALLOY_ERR_NOMEM;
    }
    if (json_is_object(vocab)) {
        const char *key;
        const json_t *v;
        json_object_foreach((json_t *)vocab, key, v) {
            if (token_id(v, &id))
                return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.vocab: '%.60s': expected an id (integer >= 0)",
                                     path, key);
            if (put(ids, key, id, err)) return ALLOY_ERR_NOMEM;
        }
        return ALLOY_OK;
    }
    for (size_t i = 0; i < json_array_size(vocab) && i < INT32_MAX; i++) {
        const json_t *piece = json_array_get(json_array_get(vocab, i), 0);
        if (!json_is_string(piece))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.vocab[%zu]: expected [piece, score]", path, i);
        if (put(ids, json_string_value(piece), i, err)) return ALLOY_ERR_NOMEM;
    }
    return ALLOY_OK;
}

static int read_doc(const struct alloy_model *m, struct alloy_tokdoc *d, struct alloy_err *err)
{
    int rc = alloy_folder_file(alloy_model_dir(m), "tokenizer.json", &d->path, err);
    if (rc) return rc;
    if (!alloy_is_file(d->path))
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: missing: a tokenizer merge reads the tokenizer.json of every model "
                             "(%s has none)", d->path, alloy_model_ref(m));
    if (!(d->doc = alloy_json_load_file(d->path, err))) return (int)err->status;
    if ((rc = index_doc(d->path, d->doc, &d->ids, err))) return rc;
    d->size = config_vocab_size(m);
    if (d->size < 0) d->size = (long long)d->ids.count;
    return ALLOY_OK;
}

static void doc_free(struct alloy_tokdoc *d)
{
    free(d->path);
    json_decref(d->doc);
    alloy_strmap_free(&d->ids);
}

/* ------------------------------------------------------------ stripping */

/* 1 when merge m (a "a b" string or an [a, b] list) names a token of gone. */
static int merge_names(const json_t *m, const struct alloy_strmap *gone)
{
    size_t id;
    if (json_is_array(m)) {
        for (size_t i = 0; i < json_array_size(m); i++) {
            const char *s = json_string_value(json_array_get(m, i));
            if (s && alloy_strmap_get(gone, s, &id)) return 1;
        }
        return 0;
    }
    const char *s = json_string_value(m);
    char part[1024];
    while (s && *s) {
        size_t n = strcspn(s, " ");
        if (n < sizeof part) {
            memcpy(part, s, n);
            part[n] = 0;
            if (alloy_strmap_get(gone, part, &id)) return 1;
        }
        s += n + (s[n] == ' ');
    }
    return 0;
}

/* Removes from doc's vocab, merges and added tokens every token of gone (all in a BPE vocab object). */
static int strip_tokens(json_t *doc, const struct alloy_strmap *gone, long long size, struct alloy_err *err)
{
    json_t *model = json_object_get(doc, "model"), *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges"), *added = json_object_get(doc, "added_tokens");
    for (size_t i = 0; i < gone->cap; i++)
        if (gone->slots[i].key) json_object_del(vocab, gone->slots[i].key);
    if (json_is_array(merges)) {
        json_t *keep = json_array();
        for (size_t i = 0; keep && i < json_array_size(merges); i++)
            if (!merge_names(json_array_get(merges, i), gone) && json_array_append(keep, json_array_get(merges, i))) {
                json_decref(keep);
                keep = NULL;
            }
        if (!keep || json_object_set_new(model, "merges", keep)) /* frees the old list */
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    for (size_t i = json_array_size(added); i-- > 0;) {
        size_t id = 0;
        if (!token_id(json_object_get(json_array_get(added, i), "id"), &id) && (long long)id >= size)
            json_array_remove(added, i);
    }
    return ALLOY_OK;
}

/* A copy of the base's tokenizer.json without the tokens at or past its config vocab size (BPE only). */
static int strip(const struct alloy_tokdoc *d, json_t **out, struct alloy_err *err)
{
    struct alloy_strmap gone = {0};
    int rc = ALLOY_OK;
    if (!(*out = json_deep_copy(d->doc))) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < d->ids.cap && !rc; i++)
        if (d->ids.slots[i].key && (long long)d->ids.slots[i].val >= d->size) rc = put(&gone, d->ids.slots[i].key, 0, err);
    const json_t *model = json_object_get(d->doc, "model");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!rc && gone.count && (!type || strcmp(type, "BPE") != 0 || !json_is_object(json_object_get(model, "vocab"))))
        rc = alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: model.type: %zu tokens are at or past the config vocab_size "
                           "%lld and only a BPE tokenizer can be cut to it (as in mergekit), found %s", d->path,
                           gone.count, d->size, type ? type : "no type");
    if (!rc && gone.count) rc = strip_tokens(*out, &gone, d->size, err);
    alloy_strmap_free(&gone);
    return rc;
}

/* ------------------------------------------------------------ the output document */

struct outdoc {
    json_t *doc, *added;         /* the document and its added_tokens list */
    struct alloy_strmap ids;     /* token -> id over vocab and added tokens */
    struct alloy_strmap is_added;
    size_t model_size;           /* entries of model.vocab */
    long long max_added;         /* -1: none */
};

static int outdoc_open(struct outdoc *o, json_t *doc, const char *path, struct alloy_err *err)
{
    memset(o, 0, sizeof *o);
    o->doc = doc;
    o->max_added = -1;
    if (!json_is_array(o->added = json_object_get(doc, "added_tokens"))) {
        if (!(o->added = json_array()) || json_object_set_new(doc, "added_tokens", o->added))
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    const json_t *vocab = json_object_get(json_object_get(doc, "model"), "vocab");
    o->model_size = json_is_object(vocab) ? json_object_size(vocab) : json_array_size(vocab);
    int rc = index_doc(path, doc, &o->ids, err);
    for (size_t i = 0; !rc && i < json_array_size(o->added); i++) {
        const json_t *a = json_array_get(o->added, i);
        size_t id = (size_t)json_integer_value(json_object_get(a, "id"));
        rc = put(&o->is_added, json_string_value(json_object_get(a, "content")), id, err);
        if ((long long)id > o->max_added) o->max_added = (long long)id;
    }
    return rc;
}

/* Adds `content` as an added token with the flags of info (NULL: a plain, normalized, non-special one). A
 * token of the model vocabulary keeps its id and becomes an added token; one already added is left. */
static int outdoc_add(struct outdoc *o, const char *content, const json_t *info, struct alloy_err *err)
{
    size_t id;
    int known = alloy_strmap_get(&o->ids, content, &id);
    if (known && (!info || alloy_strmap_get(&o->is_added, content, &id))) return ALLOY_OK;
    if (!known) /* the next id, as the tokenizers library assigns it */
        id = o->max_added < 0 || (size_t)o->max_added < o->model_size ? o->model_size : (size_t)o->max_added + 1;
    json_t *a = info ? json_deep_copy(info) : json_object();
    if (!a) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    int bad = json_object_set_new(a, "id", json_integer((json_int_t)id));
    if (!info) {
        bad |= json_object_set_new(a, "content", json_string(content));
        bad |= json_object_set_new(a, "single_word", json_false()) | json_object_set_new(a, "lstrip", json_false());
        bad |= json_object_set_new(a, "rstrip", json_false()) | json_object_set_new(a, "normalized", json_true());
        bad |= json_object_set_new(a, "special", json_false());
    }
    if (bad || json_array_append_new(o->added, a)) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    const char *key = json_string_value(json_object_get(a, "content"));
    if ((!known && put(&o->ids, key, id, err)) || put(&o->is_added, key, id, err)) return ALLOY_ERR_NOMEM;
    if ((long long)id > o->max_added) o->max_added = (long long)id;
    return ALLOY_OK;
}

static int cmp_added(const void *pa, const void *pb)
{
    json_int_t a = json_integer_value(json_object_get(*(json_t *const *)pa, "id"));
    json_int_t b = json_integer_value(json_object_get(*(json_t *const *)pb, "id"));
    return (a > b) - (a < b);
}

/* added_tokens sorted by id, as the tokenizers library writes them. */
static int sort_added(struct outdoc *o, struct alloy_err *err)
{
    size_t n = json_array_size(o->added);
    json_t **v = alloy_xcalloc(n ? n : 1, sizeof *v), *sorted = json_array();
    int rc = v && sorted ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n; i++) v[i] = json_array_get(o->added, i);
    if (!rc) qsort(v, n, sizeof *v, cmp_added);
    for (size_t i = 0; !rc && i < n; i++)
        if (json_array_append(sorted, v[i])) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc && json_array_clear(o->added) == 0 && json_array_extend(o->added, sorted) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    json_decref(sorted);
    free(v);
    return rc;
}

/* ------------------------------------------------------------ union */

struct uni {
    struct alloy_strmap seen;    /* regular tokens in the union */
    const char **list;
    size_t n, cap;
    struct alloy_strmap added;   /* added token content -> index in info */
    const json_t **info;
    size_t ninfo;
    alloy_vocab_warn_fn warn;
    void *user;
};

static int same_added(const json_t *a, const json_t *b)
{
    static const char *const keys[] = {"content", "single_word", "lstrip", "rstrip", "normalized", "special"};
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(keys); i++)
        if (!json_equal(json_object_get(a, keys[i]), json_object_get(b, keys[i]))) return 0;
    return 1;
}

/* Adds model d's tokens below its config vocab size: regular ones in id order, then its added tokens. */
static int union_add(struct uni *u, const struct alloy_tokdoc *d, struct alloy_err *err)
{
    size_t size = (size_t)d->size, idx;
    const char **byid = alloy_xcalloc(size ? size : 1, sizeof *byid);
    const json_t *added = json_object_get(d->doc, "added_tokens");
    if (!byid || !(u->list = u->list ? u->list : alloy_xcalloc(1, sizeof *u->list)) ||
        !(u->info = u->info ? u->info : alloy_xcalloc(1, sizeof *u->info))) {
        free(byid);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < d->ids.cap; i++)
        if (d->ids.slots[i].key && d->ids.slots[i].val < size) byid[d->ids.slots[i].val] = d->ids.slots[i].key;
    int rc = ALLOY_OK;
    for (size_t id = 0; id < size && !rc; id++) {
        if (!byid[id] || alloy_strmap_get(&u->seen, byid[id], &idx)) continue;
        if (u->n == u->cap) {
            size_t cap = u->cap ? 2 * u->cap : 256;
            const char **l = alloy_xrealloc(u->list, cap * sizeof *l);
            if (!l) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); break; }
            u->list = l;
            u->cap = cap;
        }
        u->list[u->n++] = byid[id];
        rc = put(&u->seen, byid[id], 0, err);
    }
    free(byid);
    for (size_t i = 0; i < json_array_size(added) && !rc; i++) {
        const json_t *a = json_array_get(added, i);
        const char *c = json_string_value(json_object_get(a, "content"));
        if ((long long)json_integer_value(json_object_get(a, "id")) >= d->size) continue;
        if (alloy_strmap_get(&u->added, c, &idx)) {
            if (!same_added(u->info[idx], a) && u->warn) {
                char msg[320];
                snprintf(msg, sizeof msg, "%.120s: added token '%.60s' is defined differently from an earlier model's; "
                         "the first definition is kept", d->path, c);
                u->warn(u->user, msg);
            }
            continue;
        }
        const json_t **v = alloy_xrealloc(u->info, (u->ninfo + 1) * sizeof *v);
        if (!v) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        u->info = v;
        u->info[u->ninfo] = a;
        rc = put(&u->added, c, u->ninfo++, err);
    }
    return rc;
}

/* The base (stripped) plus the union's new tokens, then the models' added tokens. */
static int build_union(struct outdoc *o, const struct alloy_vocab *v, int base, const struct alloy_strmap *base_ids,
                       alloy_vocab_warn_fn warn, void *user, struct alloy_err *err)
{
    struct uni u = {.warn = warn, .user = user};
    int rc = union_add(&u, &v->docs[base], err);
    for (size_t i = 0; i < v->nm && !rc; i++)
        if ((int)i != base) rc = union_add(&u, &v->docs[i], err);
    size_t idx;
    for (size_t i = 0; i < u.n && !rc; i++)
        if (!alloy_strmap_get(&u.added, u.list[i], &idx) && !alloy_strmap_get(base_ids, u.list[i], &idx))
            rc = outdoc_add(o, u.list[i], NULL, err);
    for (size_t i = 0; i < u.ninfo && !rc; i++)
        rc = outdoc_add(o, json_string_value(json_object_get(u.info[i], "content")), u.info[i], err);
    alloy_strmap_free(&u.seen);
    alloy_strmap_free(&u.added);
    free(u.list);
    free(u.info);
    return rc;
}

/* ------------------------------------------------------------ build */

/* tok[] and the index from the finished document: ids must be exactly 0..n-1. */
static int finish(struct alloy_vocab *v, struct outdoc *o, const char *path, long long pad, struct alloy_err *err)
{
    v->n = o->ids.count;
    if (!(v->tok = alloy_xcalloc(v->n ? v->n : 1, sizeof *v->tok)))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < o->ids.cap; i++) {
        if (!o->ids.slots[i].key) continue;
        size_t id = o->ids.slots[i].val;
        if (id >= v->n || v->tok[id])
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: token ids are not 0..%zu, one each (id %zu of '%.60s')",
                                 path, v->n - 1, id, o->ids.slots[i].key);
        v->tok[id] = o->ids.slots[i].key;
    }
    v->index = o->ids;
    memset(&o->ids, 0, sizeof o->ids);
    v->rows = v->n;
    if (pad > 0 && v->rows % (uint64_t)pad) v->rows = (v->rows / (uint64_t)pad + 1) * (uint64_t)pad;
    return ALLOY_OK;
}

/* Each model's id of every output token; the base's from its stripped vocabulary. */
static int permutations(struct alloy_vocab *v, int base, const struct alloy_strmap *base_ids,
                        alloy_vocab_warn_fn warn, void *user, struct alloy_err *err)
{
    size_t total = v->nm * v->n;
    if (!(v->perm = alloy_xmalloc((total ? total : 1) * sizeof *v->perm)))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t m = 0; m < v->nm; m++) {
        const struct alloy_strmap *ids = (int)m == base ? base_ids : &v->docs[m].ids;
        size_t past = 0, id;
        const char *first = NULL;
        for (size_t j = 0; j < v->n; j++) {
            int32_t r = -1;
            if (alloy_strmap_get(ids, v->tok[j], &id)) {
                if ((long long)id < v->docs[m].size) r = (int32_t)id;
                else if (!past++) first = v->tok[j];
            }
            v->perm[m * v->n + j] = r;
        }
        if (past && warn) { /* mergekit fails on these (KeyError); they are treated as absent */
            char msg[320];
            snprintf(msg, sizeof msg, "%.160s: %zu output tokens (first '%.40s') are at or past the config vocab_size "
                     "%lld; their rows count as absent", v->docs[m].path, past, first, v->docs[m].size);
            warn(user, msg);
        }
    }
    return ALLOY_OK;
}

int alloy_vocab_build(const struct alloy_config *cfg, struct alloy_model *const *models, size_t nm, int base,
                      int source, alloy_vocab_warn_fn warn, void *user, struct alloy_vocab **out,
                      struct alloy_err *err)
{
    struct alloy_vocab *v = alloy_xcalloc(1, sizeof *v);
    struct alloy_tokdoc extra = {0};
    struct alloy_strmap base_ids = {0};
    struct outdoc o = {0};
    json_t *stripped = NULL;
    *out = NULL;
    if (!v || !(v->docs = alloy_xcalloc(nm, sizeof *v->docs))) {
        free(v);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    v->nm = nm;
    v->source = source >= 0 ? source : base;
    int rc = ALLOY_OK;
    for (size_t i = 0; i < nm && !rc; i++) rc = read_doc(models[i], &v->docs[i], err);
    if (!rc && source >= (int)nm) rc = read_doc(models[source], &extra, err);
    if (!rc) rc = strip(&v->docs[base], &stripped, err);
    if (!rc) rc = index_doc(v->docs[base].path, stripped, &base_ids, err);
    const struct alloy_tokdoc *from = source < 0 ? &v->docs[base] : source < (int)nm ? &v->docs[source] : &extra;
    json_t *doc = source < 0 ? json_deep_copy(stripped) : json_deep_copy(from->doc);
    if (!rc && !doc) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = outdoc_open(&o, doc, from->path, err);
    else json_decref(doc);
    if (!rc && strcmp(cfg->tokenizer_source, "union") == 0)
        rc = build_union(&o, v, base, &base_ids, warn, user, err);
    for (size_t i = 0; i < cfg->ntokens && !rc; i++) rc = outdoc_add(&o, cfg->tokens[i].token, NULL, err);
    if (!rc) rc = sort_added(&o, err);
    if (!rc) rc = finish(v, &o, from->path, cfg->pad_to_multiple_of, err);
    if (!rc) rc = permutations(v, base, &base_ids, warn, user, err);
    v->tokenizer = o.doc;
    alloy_strmap_free(&o.ids);
    alloy_strmap_free(&o.is_added);
    alloy_strmap_free(&base_ids);
    json_decref(stripped);
    doc_free(&extra);
    if (rc) {
        alloy_vocab_free(v);
        return rc;
    }
    *out = v;
    return ALLOY_OK;
}

int alloy_vocab_check_text(const char *text, size_t len, long long size, const char *add, size_t *ntokens,
                           struct alloy_err *err)
{
    struct alloy_tokdoc d = {.path = alloy_xstrdup("tokenizer.json")};
    struct alloy_vocab v = {.nm = 1, .docs = &d};
    struct alloy_strmap base_ids = {0};
    struct outdoc o = {0};
    json_t *stripped = NULL;
    json_error_t jerr;
    int rc = ALLOY_OK;
    *ntokens = 0;
    if (!d.path) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!(d.doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr)))
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", d.path, jerr.text, jerr.line);
    if (!rc) rc = index_doc(d.path, d.doc, &d.ids, err);
    d.size = size > 0 ? size : (long long)d.ids.count;
    if (!rc) rc = strip(&d, &stripped, err);
    if (!rc) rc = index_doc(d.path, stripped, &base_ids, err);
    json_t *copy = rc ? NULL : json_deep_copy(stripped);
    if (!rc && !copy) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = outdoc_open(&o, copy, d.path, err);
    if (!rc) rc = build_union(&o, &v, 0, &base_ids, NULL, NULL, err);
    if (!rc && add) rc = outdoc_add(&o, add, NULL, err);
    if (!rc) rc = sort_added(&o, err);
    if (!rc) rc = finish(&v, &o, d.path, 0, err);
    if (!rc) *ntokens = v.n;
    free(v.tok);
    alloy_strmap_free(&v.index);
    alloy_strmap_free(&o.ids);
    alloy_strmap_free(&o.is_added);
    json_decref(o.doc);
    alloy_strmap_free(&base_ids);
    json_decref(stripped);
    doc_free(&d);
    return rc;
}

void alloy_vocab_free(struct alloy_vocab *v)
{
    if (!v) return;
    for (size_t i = 0; i < v->nm; i++) doc_free(&v->docs[i]);
    free(v->docs);
    free(v->tok);
    free(v->perm);
    alloy_strmap_free(&v->index);
    json_decref(v->tokenizer);
    free(v);
}
