/*
 * model_index.c — read a model's index in pieces (model_index.h).
 *
 * DESIGN
 *   Three walks over the file through one window (json_stream_members),
 *   in the order the whole-text reader used, so every verdict and byte
 *   position is unchanged: (1) the top-level object, whose members other
 *   than weight_map are validated by jansson one at a time and whose
 *   weight_map value is only skipped (never held: the window stays its
 *   size); (2) weight_map's members, counted, so the entry table and the
 *   name map are sized once; (3) the entries. A plain key or shard name
 *   (json_plain_string) is used as it stands in the window, any other is
 *   decoded by jansson; a shard name equal to the previous entry's (the
 *   common case: an index lists a shard's tensors together) needs no
 *   lookup. Memory: the window, and per entry its name in the arena, a
 *   map slot, a name pointer and a shard number.
 */
#include "formats/model_index.h"
#include "core/internal.h"
#include "formats/json_members.h"

#include <errno.h>
#include <jansson.h>
#include <stdatomic.h>
#include <unistd.h>

static _Atomic size_t g_window;

void alloy_index_set_window(size_t bytes) { atomic_store(&g_window, bytes); }

size_t alloy_index_window(void)
{
    size_t w = atomic_load(&g_window);
    return w ? w : ALLOY_INDEX_WINDOW;
}

struct index_walk {
    const char *path;
    struct json_stream js;
    struct alloy_index *ix;
    struct alloy_strmap shards;  /* shard file name -> shard number */
    const char *last;            /* the previous entry's shard name (in the arena) and number */
    size_t last_len, last_shard;
    size_t cap;                  /* entries counted by walk (2) */
    size_t wm_from, wm_to;       /* the weight_map value in the file */
    int has_wm;
    alloy_index_shard_fn open_shard;
    void *ctx;
    struct alloy_err *err;
};

static json_t *index_part(struct index_walk *w, const char *s, size_t a, size_t b, size_t origin, int *rc)
{
    return json_part_at(s, a, b, origin, w->path, "not valid JSON", rc, w->err);
}

static int read_failed(struct index_walk *w)
{
    if (w->js.err == ENOMEM) return alloy_err_set(w->err, ALLOY_ERR_NOMEM, "%s: out of memory", w->path);
    return alloy_err_set(w->err, ALLOY_ERR_IO, "%s: read failed: %s", w->path, strerror(w->js.err));
}

static int index_top(void *ctx, const char *s, const struct json_member *mb)
{
    struct index_walk *w = ctx;
    int rc = ALLOY_OK;
    json_t *k = index_part(w, s, mb->ks, mb->ke, mb->base, &rc);
    if (!k) return rc;
    if (strcmp(json_string_value(k), "weight_map") == 0) {
        if (w->has_wm) rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: not valid JSON: duplicate key 'weight_map'", w->path);
        w->has_wm = 1;
        w->wm_from = mb->base + mb->vs;
        w->wm_to = mb->base + mb->ve;
    } else { /* other members (metadata) are only validated */
        const char *v = json_stream_window(&w->js, mb->base + mb->vs, mb->base + mb->ve);
        json_t *tree = v ? index_part(w, v, 0, mb->ve - mb->vs, mb->base + mb->vs, &rc) : NULL;
        if (!v) rc = read_failed(w);
        json_decref(tree);
    }
    json_decref(k);
    return rc;
}

/* A string token s[a, b): as it stands when plain (*n its length), else decoded by jansson into *tree (NULL for
 * a value that is not a string; *rc set on a parse error). */
static const char *index_string(struct index_walk *w, const char *s, size_t a, size_t b, size_t origin,
                                json_t **tree, int *rc, size_t *n)
{
    const char *p;
    *tree = NULL;
    if (json_plain_string(s, a, b, &p, n)) return p;
    if (!(*tree = index_part(w, s, a, b, origin, rc))) return NULL;
    p = json_string_value(*tree);
    *n = p ? strlen(p) : 0;
    return p;
}

/* The shard number of fname[0, n): the previous entry's, a known one, or a new one opened now. */
static int index_shard(struct index_walk *w, const char *key, const char *fname, size_t n, size_t *k)
{
    if (w->last && n == w->last_len && memcmp(fname, w->last, n) == 0) return *k = w->last_shard, ALLOY_OK;
    char *own = alloy_arena_strndup(&w->ix->arena, fname, n);
    int rc = ALLOY_OK, known;
    if (!own) return alloy_err_set(w->err, ALLOY_ERR_NOMEM, "out of memory");
    if (!alloy_strmap_getn(&w->shards, own, n, k)) {
        if ((rc = w->open_shard(w->ctx, key, own, k))) return rc;
        if (alloy_strmap_putn(&w->shards, own, n, *k, &known) != 0)
            return alloy_err_set(w->err, ALLOY_ERR_NOMEM, "out of memory");
    }
    w->last = own, w->last_len = n, w->last_shard = *k;
    return ALLOY_OK;
}

static int index_entry(void *ctx, const char *s, const struct json_member *mb)
{
    struct index_walk *w = ctx;
    struct alloy_index *ix = w->ix;
    int rc = ALLOY_OK, dup = 0;
    json_t *kt, *vt = NULL;
    size_t kn, vn, shard = 0;
    const char *key = index_string(w, s, mb->ks, mb->ke, mb->base, &kt, &rc, &kn);
    const char *fname = key ? index_string(w, s, mb->vs, mb->ve, mb->base, &vt, &rc, &vn) : NULL;
    const char *own = key ? alloy_arena_strndup(&ix->arena, key, kn) : NULL;
    if (!key || (!fname && rc)) goto out;
    if (!own) {
        rc = alloy_err_set(w->err, ALLOY_ERR_NOMEM, "out of memory");
    } else if (!fname) {
        rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: weight_map: '%s': expected a shard file name", w->path, own);
    } else if (ix->n == w->cap) {
        rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: weight_map changed while read", w->path);
    } else if (!(rc = index_shard(w, own, fname, vn, &shard))) {
        if (alloy_strmap_putn(&ix->names, own, kn, ix->n, &dup) != 0)
            rc = alloy_err_set(w->err, ALLOY_ERR_NOMEM, "out of memory");
        else if (dup)
            rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: not valid JSON: weight_map: duplicate key '%s'",
                               w->path, own);
        else
            ix->strs[ix->n] = own, ix->shard[ix->n++] = shard;
    }
out:
    json_decref(kt);
    json_decref(vt);
    return rc;
}

/* The three walks; a structural error is reported as the whole-text reader did. */
static int walk_index(struct index_walk *w)
{
    const char *what, *c;
    size_t count, at;
    int rc = json_stream_members(&w->js, 0, w->js.size, 0, index_top, w, &count, &what, &at);
    if (!rc && (!w->has_wm || !(c = json_stream_window(&w->js, w->wm_from, w->wm_from + 1)) || *c != '{'))
        rc = w->js.err ? -2 : alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: weight_map: expected an object of tensor "
                                            "name -> shard file", w->path);
    if (!rc) rc = json_stream_members(&w->js, w->wm_from, w->wm_to, 1, NULL, NULL, &count, &what, &at);
    if (!rc && (!(w->ix->strs = alloy_xcalloc(count ? count : 1, sizeof *w->ix->strs)) ||
                !(w->ix->shard = alloy_xcalloc(count ? count : 1, sizeof *w->ix->shard)) ||
                alloy_strmap_reserve(&w->ix->names, count) != 0))
        rc = alloy_err_set(w->err, ALLOY_ERR_NOMEM, "%s: out of memory for %zu entries", w->path, count);
    w->cap = count;
    if (!rc) rc = json_stream_members(&w->js, w->wm_from, w->wm_to, 1, index_entry, w, &count, &what, &at);
    if (rc == -1) rc = alloy_err_set(w->err, ALLOY_ERR_FORMAT, "%s: not valid JSON: %s (byte %zu)", w->path, what, at);
    if (rc == -2) rc = read_failed(w);
    return rc;
}

int alloy_index_read(const char *path, size_t window, alloy_index_shard_fn open_shard, void *ctx,
                     struct alloy_index *ix, struct alloy_err *err)
{
    int fd;
    size_t size;
    *ix = (struct alloy_index){0};
    int rc = alloy_open_bounded(path, ALLOY_INDEX_MAX, &fd, &size, err);
    if (rc) return rc;
    struct index_walk w = {.path = path, .ix = ix, .open_shard = open_shard, .ctx = ctx, .err = err};
    if (json_stream_init(&w.js, fd, size, window ? window : ALLOY_INDEX_WINDOW) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    else
        rc = walk_index(&w);
    json_stream_free(&w.js);
    close(fd);
    alloy_strmap_free(&w.shards);
    if (rc) alloy_index_free(ix);
    return rc;
}

void alloy_index_free(struct alloy_index *ix)
{
    alloy_strmap_free(&ix->names);
    alloy_arena_free(&ix->arena);
    free(ix->strs);
    free(ix->shard);
    *ix = (struct alloy_index){0};
}
