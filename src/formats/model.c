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
 *   as in transformers; without either, pytorch_model.bin.index.json and
 *   then pytorch_model.bin (torch.save zips, torch_zip.c) are read, as
 *   mergekit does. Only the index's weight_map is trusted; shard names
 *   may follow any pattern. Tensors are ordered by shard (first appearance
 *   in the index) and then by data offset, which is the file order (in a
 *   .bin, the state dict's order: its storages are stored by key).
 *   Trust rule (alloy_folder_file): config.json, the index and the files
 *   copied to the output or read by the evaluator must resolve inside the
 *   folder (for a snapshot, inside the repository folder whose blobs/ it
 *   links into): a link to ~/.ssh/id_ed25519 named config.json or
 *   tokenizer.model is refused, never read or copied. Shards follow the
 *   same rule: a model.safetensors linking to a file elsewhere is refused.
 *   A reference that is a GGUF file (recognised by its magic; the first
 *   shard of a split model) is a model too: its tensors come with Hugging
 *   Face names and shapes (gguf.c), config.json and tokenizer.json are
 *   rebuilt from its metadata (gguf_meta.c), and its "folder" is the file
 *   itself, so no file beside it is ever read or copied as its own.
 */
#include "core/arena.h"
#include "core/internal.h"
#include "core/strmap.h"
#include "formats/formats.h"
#include "formats/gguf.h"
#include "formats/model_index.h"
#include "lora/adapter.h"

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
    struct alloy_adapter *adapter;   /* a `model+adapter` reference's overlay, else NULL */
    struct alloy_tensor *copies;     /* the adapter's full tensors under the model's names */
    char *warning;                   /* the overlay's base_model_name_or_path warning, or NULL */
    unsigned shares;                 /* holders besides the first (alloy_model_share); close frees at 0 */
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

int alloy_resolve_ref(const char *ref, char **dir, struct alloy_err *err)
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

/* Appends the tensors of f in data order (a .bin's in its state dict's order). */
static int add_file_tensors(struct alloy_model *m, struct alloy_tensor_file *f, struct alloy_err *err)
{
    size_t n = alloy_tensor_file_count(f), first = m->count;
    const struct alloy_tensor **grown = alloy_xrealloc(m->tensors, (m->count + n) * sizeof *grown);
    if (!grown) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", alloy_tensor_file_path(f));
    m->tensors = grown;
    for (size_t i = 0; i < n; i++) m->tensors[first + i] = alloy_tensor_file_tensor(f, i);
    if (strcmp(alloy_tensor_file_format(f), "pytorch") != 0) /* a .bin's order is its state dict's, kept */
        alloy_qsort(m->tensors + first, n, sizeof *m->tensors, cmp_tensor_offset);
    if (alloy_strmap_reserve(&m->index, m->count + n) != 0)
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", alloy_tensor_file_path(f));
    for (size_t i = 0; i < n; i++) {
        int rc = add_tensor(m, m->tensors[first + i], err);
        if (rc) return rc;
    }
    return ALLOY_OK;
}

/* ------------------------------------------------------------ a sharded model: its index (model_index.c) */

struct shard_ctx { struct alloy_model *m; const char *path; struct alloy_err *err; };

/* A shard seen for the first time is checked and opened now, as the index is read. */
static int index_shard(void *vctx, const char *key, const char *fname, size_t *shard)
{
    struct shard_ctx *c = vctx;
    if (!*fname || strstr(fname, "..") || fname[0] == '/')
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT,
                             "%s: weight_map: '%s': shard name \"%s\" must be a file in the model folder", c->path,
                             key, fname);
    char *path = NULL;
    int rc = alloy_folder_file(c->m->dir, fname, &path, c->err); /* the trust rule: inside the model root */
    struct alloy_tensor_file *f;
    if (rc) return rc;
    if (!alloy_is_file(path))
        rc = alloy_err_set(c->err, ALLOY_ERR_IO, "%s: weight_map: '%s': shard %s does not exist", c->path, key, path);
    else if (!(rc = add_file(c->m, path, &f, c->err)))
        *shard = c->m->nfiles - 1;
    free(path);
    return rc;
}

/* The tensors of shard k that the index assigns to it, in data order; each one's entry is marked found
 * (INDEX_FOUND | its position in the model) and its key becomes the tensor's name. One lookup per tensor:
 * the index's map becomes the model's. */
#define INDEX_FOUND ((size_t)1 << (sizeof(size_t) * 8 - 1))
struct placed { uint64_t key; const struct alloy_tensor *t; size_t entry; };

static int cmp_placed(const void *a, const void *b)
{
    uint64_t x = ((const struct placed *)a)->key, y = ((const struct placed *)b)->key;
    return x < y ? -1 : x > y;
}

static int add_indexed(struct alloy_model *m, size_t k, struct alloy_index *ix, struct alloy_err *err)
{
    struct alloy_tensor_file *f = m->files[k];
    size_t n = alloy_tensor_file_count(f), added = 0;
    const struct alloy_tensor **grown = alloy_xrealloc(m->tensors, (m->count + n) * sizeof *grown);
    struct placed *pl = grown ? alloy_xcalloc(n ? n : 1, sizeof *pl) : NULL;
    if (grown) m->tensors = grown;
    if (!pl) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", alloy_tensor_file_path(f));
    for (size_t i = 0; i < n; i++) {
        const struct alloy_tensor *t = alloy_tensor_file_tensor(f, i), *ahead = alloy_tensor_file_tensor(f, i + 8);
        if (ahead) alloy_strmap_prefetch(&ix->names, ahead->name, strlen(ahead->name)); /* hide the miss */
        struct alloy_strmap_slot *e = alloy_strmap_find(&ix->names, t->name, strlen(t->name));
        if (!e || ix->shard[e->val] != k) continue;
        e->key = t->name; /* the same bytes, owned by the file: the index's copy can go */
        pl[added++] = (struct placed){(uint64_t)(uintptr_t)t->data, t, e->val};
    }
    if (strcmp(alloy_tensor_file_format(f), "pytorch") != 0) /* a .bin's order is its state dict's, kept */
        alloy_qsort(pl, added, sizeof *pl, cmp_placed);
    for (size_t i = 0; i < added; i++) {
        ix->shard[pl[i].entry] = INDEX_FOUND | m->count;
        m->tensors[m->count++] = pl[i].t;
    }
    free(pl);
    return ALLOY_OK;
}

/* Every indexed tensor must exist in its shard (the first missing one, in index order, is named); then the
 * index's map, from names to entries, becomes the model's, from names to positions (its keys are the
 * tensors' own names by now, so the index's names are freed). */
static int index_adopt(struct alloy_model *m, const char *path, struct alloy_index *ix, struct alloy_err *err)
{
    for (size_t i = 0; i < ix->n; i++) {
        if (!(ix->shard[i] & INDEX_FOUND))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: weight_map: tensor '%s' is not in shard %s", path,
                                 ix->strs[i], alloy_tensor_file_path(m->files[ix->shard[i]]));
        ix->shard[i] &= ~INDEX_FOUND;
    }
    alloy_strmap_remap(&ix->names, ix->shard);
    m->index = ix->names;
    ix->names = (struct alloy_strmap){0};
    return ALLOY_OK;
}

static int open_index(struct alloy_model *m, const char *index_path, struct alloy_err *err)
{
    struct alloy_index ix;
    struct shard_ctx c = {m, index_path, err};
    int rc = alloy_index_read(index_path, alloy_index_window(), index_shard, &c, &ix, err);
    for (size_t k = 0; k < m->nfiles && !rc; k++) rc = add_indexed(m, k, &ix, err);
    if (!rc) rc = index_adopt(m, index_path, &ix, err);
    alloy_index_free(&ix);
    return rc;
}

static int open_folder(const char *ref, struct alloy_model **out, struct alloy_err *err);

static const struct alloy_tensor *find_cb(const void *m, const char *name) { return alloy_model_find(m, name); }

/* The adapter's full tensors (modules_to_save, base_layer copies) take the place of the model's. */
static int overlay(struct alloy_model *m, struct alloy_err *err)
{
    const struct alloy_adapter *a = m->adapter;
    if (a->nfull && !(m->copies = alloy_xcalloc(a->nfull, sizeof *m->copies)))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t k = 0; k < a->nfull; k++) {
        size_t i = 0;
        alloy_strmap_get(&m->index, a->full[k].name, &i); /* present: alloy_adapter_check said so */
        m->copies[k] = *a->full[k].t;
        m->copies[k].name = m->tensors[i]->name; /* the model's name, owned by its file */
        m->tensors[i] = &m->copies[k];
    }
    return ALLOY_OK;
}

/* "MODEL+ADAPTER": the model with the adapter as an overlay (its tensors: the model's, full copies
 * replaced; the LoRA deltas are applied by the lora source, sources/lora.c). */
static int open_with_adapter(const char *ref, const char *plus, struct alloy_model **out, struct alloy_err *err)
{
    char *mref = alloy_xstrdup(ref), warn[700];
    struct alloy_model *m = NULL;
    if (!mref) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    mref[plus - ref] = '\0';
    int rc = open_folder(mref, &m, err);
    if (!rc) rc = alloy_adapter_open(plus + 1, &m->adapter, err);
    if (!rc) rc = alloy_adapter_check(m->adapter, mref, find_cb, m, warn, sizeof warn, err);
    if (!rc && warn[0] && !(m->warning = alloy_xstrdup(warn))) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = overlay(m, err);
    char *full = rc ? NULL : alloy_xstrdup(ref);
    if (!rc && !full) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) {
        free(m->ref);
        m->ref = full;
    }
    free(mref);
    if (rc) {
        alloy_model_close(m);
        return rc;
    }
    *out = m;
    return ALLOY_OK;
}

static int open_single(struct alloy_model *m, const char *path, struct alloy_err *err)
{
    struct alloy_tensor_file *f;
    int rc = add_file(m, path, &f, err);
    return rc ? rc : add_file_tensors(m, f, err);
}

/* The weights of the folder, in mergekit's order of preference: a safetensors index or file, then a
 * PyTorch index or file (pytorch_model.bin); the PyTorch names must resolve inside the folder. */
static int open_weights(struct alloy_model *m, const char *st_index, struct alloy_err *err)
{
    char *st_single = NULL, *pt_index = NULL, *pt_single = NULL;
    int rc = ALLOY_OK;
    if (alloy_is_file(st_index)) {
        rc = open_index(m, st_index, err);
    } else if ((rc = alloy_folder_file(m->dir, "model.safetensors", &st_single, err))) {
        /* a model.safetensors that resolves outside the model folder */
    } else if (alloy_is_file(st_single)) {
        rc = open_single(m, st_single, err);
    } else if (!(rc = alloy_folder_file(m->dir, "pytorch_model.bin.index.json", &pt_index, err)) &&
               !(rc = alloy_folder_file(m->dir, "pytorch_model.bin", &pt_single, err))) {
        if (alloy_is_file(pt_index)) rc = open_index(m, pt_index, err);
        else if (alloy_is_file(pt_single)) rc = open_single(m, pt_single, err);
        else rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: no model.safetensors, model.safetensors.index.json, "
                                "pytorch_model.bin or pytorch_model.bin.index.json in the folder", m->dir);
    }
    free(st_single);
    free(pt_index);
    free(pt_single);
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
    if (!rc) rc = add_file_tensors(m, f, err);
    if (!rc) rc = alloy_gguf_config_json(alloy_gguf_of(f), &m->config_text, err);
    return rc; /* the tokenizer is rebuilt when asked for: a model without a usable one can still be merged */
}

int alloy_model_open(const char *ref, struct alloy_model **out, struct alloy_err *err)
{
    const char *plus = strchr(ref, '+');
    if (plus && !alloy_is_dir(ref)) {
        if (strchr(plus + 1, '+') || plus == ref || !plus[1])
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: malformed model reference (expected MODEL+ADAPTER)", ref);
        return open_with_adapter(ref, plus, out, err);
    }
    return open_folder(ref, out, err);
}

static int open_folder(const char *ref, struct alloy_model **out, struct alloy_err *err)
{
    struct alloy_model *m = alloy_xcalloc(1, sizeof *m);
    if (!m || !(m->ref = alloy_xstrdup(ref))) {
        free(m);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    char *index = NULL, *config = NULL;
    int rc;
    if (is_gguf_file(ref)) {
        if ((rc = open_gguf(m, err))) goto fail;
        *out = m;
        return ALLOY_OK;
    }
    if ((rc = alloy_resolve_ref(ref, &m->dir, err))) goto fail;
    if ((rc = alloy_folder_file(m->dir, "model.safetensors.index.json", &index, err)) ||
        (rc = alloy_folder_file(m->dir, "config.json", &config, err)) || (rc = open_weights(m, index, err)))
        goto fail;
    if (alloy_is_file(config)) {
        rc = alloy_read_file(config, (size_t)16 << 20, &m->config_text, NULL, err);
        if (rc) goto fail;
    }
    free(index);
    free(config);
    *out = m;
    return ALLOY_OK;
fail:
    free(index);
    free(config);
    alloy_model_close(m);
    return rc;
}

void alloy_model_share(struct alloy_model *m) { m->shares++; }

int alloy_model_in_memory(const struct alloy_model *m) { return m->image != NULL; }

void alloy_model_close(struct alloy_model *m)
{
    if (!m) return;
    if (m->shares) {
        m->shares--;
        return;
    }
    alloy_adapter_close(m->adapter);
    free(m->copies);
    free(m->warning);
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
        rc = add_file_tensors(m, m->files[0], err);
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

const struct alloy_adapter *alloy_model_adapter(const struct alloy_model *m) { return m->adapter; }
const char *alloy_model_warning(const struct alloy_model *m) { return m->warning; }
