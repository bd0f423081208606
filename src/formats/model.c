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
 */
#include "core/internal.h"
#include "core/strmap.h"
#include "formats/formats.h"

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
 * to names the index assigns to this file. */
static int add_file_tensors(struct alloy_model *m, struct alloy_tensor_file *f, json_t *weight_map,
                            const char *fname, struct alloy_err *err)
{
    size_t n = alloy_tensor_file_count(f), first = m->count;
    const struct alloy_tensor **grown = alloy_xrealloc(m->tensors, (m->count + n) * sizeof *grown);
    if (!grown) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", alloy_tensor_file_path(f));
    m->tensors = grown;
    size_t added = 0;
    for (size_t i = 0; i < n; i++) {
        const struct alloy_tensor *t = alloy_tensor_file_tensor(f, i);
        if (weight_map) {
            json_t *v = json_object_get(weight_map, t->name);
            /* not indexed here (a non-string entry is reported by the caller's walk) */
            if (!json_is_string(v) || strcmp(json_string_value(v), fname) != 0) continue;
        }
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

static int open_index(struct alloy_model *m, const char *index_path, struct alloy_err *err)
{
    char *text;
    size_t len;
    int rc = alloy_read_file(index_path, (size_t)256 << 20, &text, &len, err);
    if (rc) return rc;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", index_path, jerr.text, jerr.line);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(wm)) {
        json_decref(root);
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: weight_map: expected an object of tensor name -> shard file",
                             index_path);
    }
    /* Shards in order of first appearance; each opened once. */
    const char *key;
    json_t *val;
    char **seen = NULL;
    size_t nseen = 0;
    rc = ALLOY_OK;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val)) {
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: weight_map: '%s': expected a shard file name", index_path, key);
            break;
        }
        const char *fname = json_string_value(val);
        if (!*fname || strstr(fname, "..") || fname[0] == '/') {
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: weight_map: '%s': shard name \"%s\" must be a file in the model folder",
                               index_path, key, fname);
            break;
        }
        int known = 0;
        for (size_t i = 0; i < nseen && !known; i++) known = strcmp(seen[i], fname) == 0;
        if (known) continue;
        char **ns = alloy_xrealloc(seen, (nseen + 1) * sizeof *ns);
        if (!ns) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); break; }
        seen = ns;
        seen[nseen++] = (char *)fname;
        char *path = alloy_xasprintf("%s/%s", m->dir, fname); /* shards may link anywhere: parsed, never copied */
        if (!path) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); break; }
        if (!alloy_is_file(path)) {
            rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: weight_map: '%s': shard %s does not exist", index_path, key, path);
            free(path);
            break;
        }
        struct alloy_tensor_file *f;
        rc = add_file(m, path, &f, err);
        free(path);
        if (rc) break;
        rc = add_file_tensors(m, f, wm, fname, err);
        if (rc) break;
    }
    free(seen);
    if (rc == ALLOY_OK) { /* every indexed tensor must exist in its shard */
        json_object_foreach(wm, key, val) {
            if (!alloy_strmap_get(&m->index, key, NULL)) {
                rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: weight_map: tensor '%s' is not in shard %s", index_path,
                                   key, json_string_value(val));
                break;
            }
        }
    }
    json_decref(root);
    return rc;
}

int alloy_model_open(const char *ref, struct alloy_model **out, struct alloy_err *err)
{
    struct alloy_model *m = alloy_xcalloc(1, sizeof *m);
    if (!m || !(m->ref = alloy_xstrdup(ref))) {
        free(m);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    int rc = resolve_ref(ref, &m->dir, err);
    char *index = NULL, *single = NULL, *config = NULL;
    if (rc) goto fail;
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
        if (!rc) rc = add_file_tensors(m, f, NULL, NULL, err);
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
        rc = add_file_tensors(m, m->files[0], NULL, NULL, err);
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

const struct alloy_tensor *alloy_model_tensor(const struct alloy_model *m, size_t i)
{
    return i < m->count ? m->tensors[i] : NULL;
}

const struct alloy_tensor *alloy_model_find(const struct alloy_model *m, const char *name)
{
    size_t i;
    return alloy_strmap_get(&m->index, name, &i) ? m->tensors[i] : NULL;
}
