/*
 * model.c — open a Hugging Face model folder: resolve the reference, open the
 * safetensors shards, and index every tensor by name.
 *
 * DESIGN
 *   A reference is a local directory, or "org/name[@revision]" looked up in
 *   the local Hugging Face cache (no network): for each root in
 *   $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub the snapshot is
 *   models--org--name/snapshots/<rev>, where <rev> is the revision itself
 *   when such a snapshot exists, else the commit in refs/<revision>
 *   (refs/main by default). A miss lists every place searched.
 *   In the folder, model.safetensors.index.json wins over model.safetensors,
 *   as in transformers. Only the index's weight_map is trusted; shard names
 *   may follow any pattern. Tensors are ordered by shard (first appearance
 *   in the index) and then by data offset, which is the file order.
 *   Trust rule (alloy_folder_file): config.json, the index and the files
 *   copied to the output or read by the evaluator must resolve inside the
 *   folder (for a snapshot, inside the repository folder whose blobs/ it
 *   links into): a link to ~/.ssh/id_ed25519 named config.json or
 *   tokenizer.model is refused, never read or copied. Shards may link
 *   anywhere (shared weight stores do): they are parsed as safetensors,
 *   anything else is refused, and their bytes are never copied verbatim.
 *   A reference that is a GGUF file (recognised by its magic; the first
 *   shard of a split model) is a model too: its tensors come with Hugging
 *   Face names and shapes (gguf.c), config.json and tokenizer.json are
 *   rebuilt from its metadata (gguf_meta.c), and its "folder" is the file
 *   itself, so no file beside it is ever read or copied as its own.
 */
#include "core/internal.h"
#include "core/strmap.h"
#include "formats/formats.h"
#include "formats/gguf.h"
#include "formats/json_members.h"

#include <jansson.h>
#include <limits.h>

struct alloy_model {
    char *ref;
    char *dir;
    char *config_text;
    uint8_t *image;                  /* an in-memory model's safetensors image (owned), else NULL */
    size_t nfiles;
    struct alloy_tensor_file **files;
    size_t count;
    const struct alloy_tensor **tensors;
    struct alloy_strmap index;
};

/* ------------------------------------------------------------ reference resolution */

static int looks_like_repo_id(const char *ref)
{
    if (!*ref || ref[0] == '/' || ref[0] == '.' || ref[0] == '~') return 0;
    const char *slash = strchr(ref, '/');
    return !slash || !strchr(slash + 1, '/');
}

static char *try_cache_root(const char *root, const char *repo, const char *rev)
{
    char dashed[1100];
    size_t k = 0;
    for (const char *p = repo; *p && k < sizeof dashed - 3; p++) { /* "org/name" -> "org--name" */
        if (*p == '/') dashed[k++] = '-', dashed[k++] = '-';
        else dashed[k++] = *p;
    }
    dashed[k] = '\0';
    char *base = alloy_xasprintf("%s/models--%s", root, dashed);
    if (!base) return NULL;
    char *snap = alloy_xasprintf("%s/snapshots/%s", base, rev);
    if (snap && alloy_is_dir(snap)) { free(base); return snap; }
    free(snap);
    snap = NULL;
    char *refpath = alloy_xasprintf("%s/refs/%s", base, rev);
    char *commit = NULL;
    size_t len = 0;
    if (refpath && alloy_read_file(refpath, 256, &commit, &len, NULL) == ALLOY_OK) {
        while (len && (commit[len - 1] == '\n' || commit[len - 1] == ' ' || commit[len - 1] == '\r'))
            commit[--len] = '\0';
        if (len && !strchr(commit, '/')) snap = alloy_xasprintf("%s/snapshots/%s", base, commit);
        if (snap && !alloy_is_dir(snap)) { free(snap); snap = NULL; }
    }
    free(commit);
    free(refpath);
    free(base);
    return snap;
}

static int resolve_ref(const char *ref, char **dir, struct alloy_err *err)
{
    if (alloy_is_dir(ref)) return (*dir = alloy_xstrdup(ref)) ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!looks_like_repo_id(ref))
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: model folder not found", ref);
    char repo[512], rev[256] = "main";
    const char *at = strchr(ref, '@');
    size_t rlen = at ? (size_t)(at - ref) : strlen(ref);
    if (rlen == 0 || rlen >= sizeof repo || (at && (strlen(at + 1) == 0 || strlen(at + 1) >= sizeof rev)))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: malformed model reference", ref);
    memcpy(repo, ref, rlen);
    repo[rlen] = '\0';
    if (at) strcpy(rev, at + 1);

    char *roots[3] = {0};
    const char *e;
    if ((e = getenv("HF_HUB_CACHE")) && *e) roots[0] = alloy_xstrdup(e);
    if ((e = getenv("HF_HOME")) && *e) roots[1] = alloy_xasprintf("%s/hub", e);
    if ((e = getenv("HOME")) && *e) roots[2] = alloy_xasprintf("%s/.cache/huggingface/hub", e);
    char searched[700] = "";
    size_t pos = 0;
    int rc = ALLOY_ERR_IO;
    for (int i = 0; i < 3; i++) {
        if (!roots[i]) continue;
        char *snap = try_cache_root(roots[i], repo, rev);
        if (snap) { *dir = snap; rc = ALLOY_OK; break; }
        if (pos < sizeof searched - 2)
            pos += (size_t)snprintf(searched + pos, sizeof searched - pos, "%s%s", pos ? ", " : "", roots[i]);
    }
    for (int i = 0; i < 3; i++) free(roots[i]);
    if (rc == ALLOY_OK) return rc;
    return alloy_err_set(err, ALLOY_ERR_IO,
                         "%s: not a local folder and not in the Hugging Face cache (searched: %s; "
                         "alloy does not download, fetch it first with `huggingface-cli download %s`)",
                         ref, pos ? searched : "no cache folder: HF_HUB_CACHE, HF_HOME and HOME are unset", repo);
}

/* ------------------------------------------------------------ the trust rule */

/* The folder whose files a model may read: dir itself, or for a snapshot (".../snapshots/<rev>" in a folder
 * that also holds blobs/ or refs/) the repository folder two levels up. */
int alloy_folder_root(const char *dir, char *root)
{
    if (!realpath(dir, root)) return -1;
    char *slash = strrchr(root, '/');
    if (!slash || slash == root) return 0;
    *slash = '\0';
    char *parent_slash = strrchr(root, '/');
    if (parent_slash && parent_slash != root && strcmp(parent_slash + 1, "snapshots") == 0) {
        *parent_slash = '\0';
        char *blobs = alloy_xasprintf("%s/blobs", root), *refs = alloy_xasprintf("%s/refs", root);
        int repo = (blobs && alloy_is_dir(blobs)) || (refs && alloy_is_dir(refs));
        free(blobs);
        free(refs);
        if (repo) return 0;
        *parent_slash = '/';
    }
    *slash = '/';
    return 0;
}

int alloy_folder_file(const char *dir, const char *name, char **path, struct alloy_err *err)
{
    if (!(*path = alloy_xasprintf("%s/%s", dir, name))) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    char root[PATH_MAX], real[PATH_MAX];
    if (alloy_folder_root(dir, root) != 0 || !realpath(*path, real)) return ALLOY_OK; /* absent: the caller says so */
    if (alloy_path_within(real, root)) return ALLOY_OK;
    int rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: links to %s, outside the model folder %s; alloy reads only "
                           "files inside a model folder", *path, real, root);
    free(*path);
    *path = NULL;
    return rc;
}

/* ------------------------------------------------------------ opening */

static int add_file(struct alloy_model *m, const char *path, struct alloy_tensor_file **out, struct alloy_err *err)
{
    struct alloy_tensor_file **nf = alloy_xrealloc(m->files, (m->nfiles + 1) * sizeof *nf);
    if (!nf) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    m->files = nf;
    int rc = alloy_tensor_file_open(path, &m->files[m->nfiles], err);
    if (rc) return rc;
    *out = m->files[m->nfiles++];
    return ALLOY_OK;
}

static int add_tensor(struct alloy_model *m, const struct alloy_tensor *t, struct alloy_err *err)
{
    int dup;
    if (alloy_strmap_put(&m->index, t->name, m->count, &dup) != 0)
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", m->dir);
    if (dup)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': appears in more than one shard",
                             alloy_tensor_file_path(t->file), t->name);
    m->tensors[m->count++] = t;
    return ALLOY_OK;
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const struct alloy_tensor *ta = *(const struct alloy_tensor *const *)a, *tb = *(const struct alloy_tensor *const *)b;
    if (ta->file != tb->file) return 0; /* never happens within one shard's run */
    return ta->data < tb->data ? -1 : ta->data > tb->data;
}

/* Appends the tensors of f in data order. `want` (may be NULL) restricts them
 * to names the index assigns to shard number `shard`. */
static int add_file_tensors(struct alloy_model *m, struct alloy_tensor_file *f, const struct alloy_strmap *want,
                            size_t shard, struct alloy_err *err)
{
    size_t n = alloy_tensor_file_count(f), first = m->count;
    const struct alloy_tensor **grown = alloy_xrealloc(m->tensors, (m->count + n) * sizeof *grown);
    if (!grown) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", alloy_tensor_file_path(f));
    m->tensors = grown;
    size_t added = 0;
    for (size_t i = 0; i < n; i++) {
        const struct alloy_tensor *t = alloy_tensor_file_tensor(f, i);
        size_t at;
        if (want && (!alloy_strmap_get(want, t->name, &at) || at != shard)) continue; /* not indexed here */
        m->tensors[first + added++] = t;
    }
    qsort(m->tensors + first, added, sizeof *m->tensors, cmp_tensor_offset);
    for (size_t i = 0; i < added; i++) {
        const struct alloy_tensor *t = m->tensors[first + i];
        int rc = add_tensor(m, t, err);
        if (rc) return rc;
    }
    return ALLOY_OK;
}

/* ------------------------------------------------------------ the index, one weight_map entry at a time */

/* The index is walked with json_members (formats/json_members.h): jansson
 * parses one key or value at a time, and what is kept per entry is its name
 * and shard number, so memory stays a small multiple of the index size. */
struct index_walk {
    struct alloy_model *m;
    const char *path;
    struct alloy_strmap names;  /* tensor name -> shard number */
    struct alloy_strmap shards; /* shard file name -> shard number (order of first appearance) */
    char **strs;                /* owned: names[i] is strs[2i], its shard's file name is strs[2i + 1] or NULL */
    size_t n, cap;
    size_t wm_from, wm_to;      /* the weight_map value in the text */
    int has_wm;
    struct alloy_err *err;
};

static json_t *index_part(struct index_walk *w, const char *s, size_t a, size_t b, int *rc)
{
    return json_part(s, a, b, w->path, "not valid JSON", rc, w->err);
}

static int index_top(void *ctx, const char *s, const struct json_member *mb)
{
    struct index_walk *w = ctx;
    int rc = ALLOY_OK;
    json_t *k = index_part(w, s, mb->ks, mb->ke, &rc);
    if (!k) return rc;
    if (strcmp(json_string_value(k), "weight_map") == 0) {
        if (w->has_wm) rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: not valid JSON: duplicate key 'weight_map'", w->path);
        w->has_wm = 1;
        w->wm_from = mb->vs;
        w->wm_to = mb->ve;
    } else { /* other members (metadata) are only validated */
        json_t *v = index_part(w, s, mb->vs, mb->ve, &rc);
        json_decref(v);
    }
    json_decref(k);
    return rc;
}

/* A shard seen for the first time is checked and opened now, as the index is read. */
static int index_shard(struct index_walk *w, const char *key, const char *fname, size_t *shard)
{
    int known = 0;
    if (alloy_strmap_get(&w->shards, fname, shard)) return ALLOY_OK;
    char *path = alloy_xasprintf("%s/%s", w->m->dir, fname), *own = alloy_xstrdup(fname);
    int rc = ALLOY_OK;
    struct alloy_tensor_file *f;
    if (!path || !own) rc = alloy_err_set(w->err, ALLOY_ERR_NOMEM, "out of memory");
    else if (!alloy_is_file(path))
        rc = alloy_err_set(w->err, ALLOY_ERR_IO, "%s: weight_map: '%s': shard %s does not exist", w->path, key, path);
    else if (!(rc = add_file(w->m, path, &f, w->err))) {
        *shard = w->m->nfiles - 1;
        w->strs[2 * w->n + 1] = own;
        own = NULL;
        if (alloy_strmap_put(&w->shards, w->strs[2 * w->n + 1], *shard, &known) != 0)
            rc = alloy_err_set(w->err, ALLOY_ERR_NOMEM, "out of memory");
    }
    free(path);
    free(own);
    return rc;
}

static int index_grow(struct index_walk *w)
{
    if (w->n < w->cap) return 0;
    size_t nc = w->cap ? 2 * w->cap : 64;
    char **ns = alloy_xrealloc(w->strs, nc * 2 * sizeof *ns);
    if (!ns) return -1;
    w->strs = ns;
    w->cap = nc;
    return 0;
}

static int index_entry(void *ctx, const char *s, const struct json_member *mb)
{
    struct index_walk *w = ctx;
    int rc = ALLOY_OK, dup = 0;
    json_t *k = index_part(w, s, mb->ks, mb->ke, &rc), *v = k ? index_part(w, s, mb->vs, mb->ve, &rc) : NULL;
    if (!v) goto out;
    const char *key = json_string_value(k), *fname = json_string_value(v);
    size_t shard = 0;
    if (!json_is_string(v)) {
        rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: weight_map: '%s': expected a shard file name", w->path, key);
    } else if (!*fname || strstr(fname, "..") || fname[0] == '/') {
        rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT,
                           "%s: weight_map: '%s': shard name \"%s\" must be a file in the model folder", w->path, key,
                           fname);
    } else if (index_grow(w)) {
        rc = alloy_err_set(w->err, ALLOY_ERR_NOMEM, "out of memory");
    } else {
        w->strs[2 * w->n] = alloy_xstrdup(key);
        w->strs[2 * w->n + 1] = NULL;
        if (!w->strs[2 * w->n]) rc = alloy_err_set(w->err, ALLOY_ERR_NOMEM, "out of memory");
        else if (!(rc = index_shard(w, key, fname, &shard))) {
            w->n++;
            if (alloy_strmap_put(&w->names, w->strs[2 * w->n - 2], shard, &dup) != 0)
                rc = alloy_err_set(w->err, ALLOY_ERR_NOMEM, "out of memory");
            else if (dup)
                rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: not valid JSON: weight_map: duplicate key '%s'",
                                   w->path, key);
        } else {
            free(w->strs[2 * w->n]);
            free(w->strs[2 * w->n + 1]);
        }
    }
out:
    json_decref(k);
    json_decref(v);
    return rc;
}

static int open_index(struct alloy_model *m, const char *index_path, struct alloy_err *err)
{
    char *text;
    size_t len, count, at;
    const char *what;
    int rc = alloy_read_file(index_path, (size_t)256 << 20, &text, &len, err);
    if (rc) return rc;
    struct index_walk w = {.m = m, .path = index_path, .err = err};
    rc = json_members(text, 0, len, index_top, &w, &count, &what, &at);
    if (!rc && (!w.has_wm || text[w.wm_from] != '{'))
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: weight_map: expected an object of tensor name -> shard file",
                           index_path);
    if (!rc) rc = json_members(text, w.wm_from, w.wm_to, index_entry, &w, &count, &what, &at);
    if (rc < 0) rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: not valid JSON: %s (byte %zu)", index_path, what, at);
    free(text);
    for (size_t k = 0; k < m->nfiles && !rc; k++) rc = add_file_tensors(m, m->files[k], &w.names, k, err);
    for (size_t i = 0; i < w.n && !rc; i++) { /* every indexed tensor must exist in its shard */
        size_t k = 0;
        if (alloy_strmap_get(&m->index, w.strs[2 * i], NULL)) continue;
        alloy_strmap_get(&w.names, w.strs[2 * i], &k);
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: weight_map: tensor '%s' is not in shard %s", index_path,
                           w.strs[2 * i], alloy_tensor_file_path(m->files[k]));
    }
    for (size_t i = 0; i < 2 * w.n; i++) free(w.strs[i]);
    free(w.strs);
    alloy_strmap_free(&w.names);
    alloy_strmap_free(&w.shards);
    return rc;
}

static int is_gguf_file(const char *path)
{
    char magic[4];
    FILE *f = alloy_is_file(path) ? fopen(path, "rb") : NULL;
    int yes = f && fread(magic, 1, 4, f) == 4 && memcmp(magic, "GGUF", 4) == 0;
    if (f) fclose(f);
    return yes;
}

/* A GGUF file as a model: one tensor file (all shards), config.json and tokenizer.json from the metadata. */
static int open_gguf(struct alloy_model *m, struct alloy_err *err)
{
    struct alloy_tensor_file *f;
    if (!(m->dir = alloy_xstrdup(m->ref))) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    int rc = add_file(m, m->ref, &f, err);
    if (!rc) rc = add_file_tensors(m, f, NULL, 0, err);
    if (!rc) rc = alloy_gguf_config_json(alloy_gguf_of(f), &m->config_text, err);
    return rc; /* the tokenizer is rebuilt when asked for: a model without a usable one can still be merged */
}

int alloy_model_open(const char *ref, struct alloy_model **out, struct alloy_err *err)
{
    struct alloy_model *m = alloy_xcalloc(1, sizeof *m);
    if (!m || !(m->ref = alloy_xstrdup(ref))) {
        free(m);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    char *index = NULL, *single = NULL, *config = NULL;
    int rc;
    if (is_gguf_file(ref)) {
        if ((rc = open_gguf(m, err))) goto fail;
        *out = m;
        return ALLOY_OK;
    }
    if ((rc = resolve_ref(ref, &m->dir, err))) goto fail;
    if ((rc = alloy_folder_file(m->dir, "model.safetensors.index.json", &index, err)) ||
        (rc = alloy_folder_file(m->dir, "config.json", &config, err)))
        goto fail;
    if (!(single = alloy_xasprintf("%s/model.safetensors", m->dir))) {
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (alloy_is_file(index)) {
        rc = open_index(m, index, err);
    } else if (alloy_is_file(single)) {
        struct alloy_tensor_file *f;
        rc = add_file(m, single, &f, err);
        if (!rc) rc = add_file_tensors(m, f, NULL, 0, err);
    } else {
        rc = alloy_err_set(err, ALLOY_ERR_IO,
                           "%s: no model.safetensors or model.safetensors.index.json in the folder "
                           "(PyTorch .bin checkpoints are not supported; convert them to safetensors)",
                           m->dir);
    }
    if (rc) goto fail;
    if (alloy_is_file(config)) {
        rc = alloy_read_file(config, (size_t)16 << 20, &m->config_text, NULL, err);
        if (rc) goto fail;
    }
    free(index);
    free(single);
    free(config);
    *out = m;
    return ALLOY_OK;
fail:
    free(index);
    free(single);
    free(config);
    alloy_model_close(m);
    return rc;
}

void alloy_model_close(struct alloy_model *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->nfiles; i++) alloy_tensor_file_close(m->files[i]);
    free(m->files);
    free(m->image);
    free(m->tensors);
    alloy_strmap_free(&m->index);
    free(m->config_text);
    free(m->dir);
    free(m->ref);
    free(m);
}

int alloy_model_from_image(const char *ref, const char *dir, uint8_t *image, size_t len, char *config_text,
                           struct alloy_model **out, struct alloy_err *err)
{
    struct alloy_model *m = alloy_xcalloc(1, sizeof *m);
    if (!m || !(m->ref = alloy_xstrdup(ref)) || !(m->dir = alloy_xstrdup(dir ? dir : ""))) {
        alloy_model_close(m);
        free(image);
        free(config_text);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", ref);
    }
    m->image = image;
    m->config_text = config_text;
    struct alloy_tensor_file **nf = alloy_xcalloc(1, sizeof *nf);
    struct alloy_st_file *st = NULL;
    int rc = nf ? alloy_st_open_memory(image, len, ref, &st, err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    m->files = nf;
    if (!rc) {
        m->files[m->nfiles++] = alloy_st_file_base(st);
        rc = add_file_tensors(m, m->files[0], NULL, 0, err);
    }
    if (rc) {
        alloy_model_close(m);
        return rc;
    }
    *out = m;
    return ALLOY_OK;
}

const char *alloy_model_ref(const struct alloy_model *m) { return m->ref; }
const char *alloy_model_dir(const struct alloy_model *m) { return m->dir; }
size_t alloy_model_count(const struct alloy_model *m) { return m->count; }
const char *alloy_model_config_text(const struct alloy_model *m) { return m->config_text; }

int alloy_model_gguf_tokenizer(const struct alloy_model *m, char **text, struct alloy_err *err)
{
    struct alloy_gguf *g = m->nfiles == 1 && !m->image ? alloy_gguf_of(m->files[0]) : NULL;
    *text = NULL;
    if (g) return alloy_gguf_tokenizer_json(g, text, err);
    if (!m->image || !is_gguf_file(m->dir)) return ALLOY_OK;
    /* a model merged in memory whose tokenizer donor is a GGUF file: its "folder" is that file */
    int rc = alloy_gguf_open(m->dir, &g, err);
    if (rc) return rc;
    rc = alloy_gguf_tokenizer_json(g, text, err);
    alloy_tensor_file_close(alloy_gguf_base(g));
    return rc;
}

const struct alloy_tensor *alloy_model_tensor(const struct alloy_model *m, size_t i)
{
    return i < m->count ? m->tensors[i] : NULL;
}

const struct alloy_tensor *alloy_model_find(const struct alloy_model *m, const char *name)
{
    size_t i;
    return alloy_strmap_get(&m->index, name, &i) ? m->tensors[i] : NULL;
}
