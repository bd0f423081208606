/*
 * imatrix.c — reads llama.cpp's legacy binary importance-matrix files.
 *
 * DESIGN
 *   The file is read whole (it is small: one float per input column of
 *   each matmul) and parsed by a cursor that checks every length against
 *   the bytes left before using it, so a corrupt count can never make the
 *   reader allocate or walk past the end. Layout (fixtures/gguf/README.md):
 *   i32 n_entries; per entry i32 name length, name bytes, i32 ncall, i32
 *   nval, nval f32; then i32 chunk count, i32 length, dataset name. Names
 *   are 1..ALLOY_IMATRIX_NAME_MAX bytes without NUL; ncall must be > 0
 *   (llama-quantize divides by it); values finite and not negative (sums of
 *   squares); nval > 0; no duplicate names; nothing after the dataset name.
 *   Values are divided by ncall at open, each a float division as
 *   llama-quantize does, and the map (core/strmap) finds an entry by name.
 */
#include "quant/imatrix.h"

#include "core/internal.h"
#include "core/strmap.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ALLOY_IMATRIX_NAME_MAX 1024
#define ALLOY_IMATRIX_FILE_MAX ((size_t)1 << 31)

struct imatrix_entry {
    char *name;
    float *values;
    size_t n;
};

struct alloy_imatrix {
    struct imatrix_entry *e;
    size_t count;
    int32_t chunks;
    char *dataset;
    struct alloy_strmap map;
};

struct cursor {
    const uint8_t *p;
    size_t left;
    const char *path;
    struct alloy_err *err;
};

/* A little-endian i32 named what; an error when fewer than 4 bytes are left. */
static int get_i32(struct cursor *c, const char *what, int32_t *out)
{
    if (c->left < 4)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: 4 bytes, %zu left in the file", c->path, what, c->left);
    uint32_t u = (uint32_t)c->p[0] | (uint32_t)c->p[1] << 8 | (uint32_t)c->p[2] << 16 | (uint32_t)c->p[3] << 24;
    memcpy(out, &u, 4);
    c->p += 4;
    c->left -= 4;
    return ALLOY_OK;
}

/* A length-prefixed string (1..max bytes unless allow_empty) copied into *out. */
static int get_str(struct cursor *c, const char *what, size_t max, int allow_empty, char **out)
{
    int32_t len = 0;
    if (get_i32(c, what, &len)) return c->err->status;
    if (len < !allow_empty || (size_t)len > max || (size_t)len > c->left)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: a length of %d..%zu bytes (%zu left), %d", c->path,
                             what, !allow_empty, max, c->left, len);
    if (memchr(c->p, 0, (size_t)len))
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: a name without NUL bytes, one with a NUL", c->path, what);
    *out = malloc((size_t)len + 1);
    if (!*out) return alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: %s: out of memory", c->path, what);
    memcpy(*out, c->p, (size_t)len);
    (*out)[len] = 0;
    c->p += len;
    c->left -= (size_t)len;
    return ALLOY_OK;
}

static int parse_entry(struct cursor *c, size_t idx, struct imatrix_entry *e)
{
    char what[64];
    snprintf(what, sizeof what, "entry %zu name", idx);
    if (get_str(c, what, ALLOY_IMATRIX_NAME_MAX, 0, &e->name)) return c->err->status;
    int32_t ncall = 0, nval = 0;
    if (get_i32(c, e->name, &ncall) || get_i32(c, e->name, &nval)) return c->err->status;
    if (ncall <= 0)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: a call count > 0, %d", c->path, e->name, ncall);
    if (nval <= 0 || (size_t)nval > c->left / 4)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: 1..%zu values (the bytes left), %d", c->path, e->name,
                             c->left / 4, nval);
    e->n = (size_t)nval;
    e->values = malloc(e->n * sizeof *e->values);
    if (!e->values) return alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: %s: out of memory", c->path, e->name);
    for (size_t j = 0; j < e->n; j++) {
        float v;
        memcpy(&v, c->p + 4 * j, 4); /* little-endian hosts only, as the rest of alloy */
        if (!isfinite(v) || v < 0)
            return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: finite non-negative sums, %g at value %zu", c->path,
                                 e->name, (double)v, j);
        e->values[j] = v / (float)ncall;
    }
    c->p += 4 * e->n;
    c->left -= 4 * e->n;
    return ALLOY_OK;
}

static int parse(struct cursor *c, struct alloy_imatrix *m)
{
    int32_t n = 0;
    if (get_i32(c, "entry count", &n)) return c->err->status;
    /* each entry takes at least 4 + 1 + 4 + 4 + 4 bytes */
    if (n < 0 || (size_t)n > c->left / 17)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: entry count: 0..%zu (the bytes left), %d", c->path,
                             c->left / 17, n);
    m->e = calloc((size_t)n ? (size_t)n : 1, sizeof *m->e);
    if (!m->e) return alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: entries: out of memory", c->path);
    for (size_t i = 0; i < (size_t)n; i++) {
        m->count = i + 1;
        if (parse_entry(c, i, &m->e[i])) return c->err->status;
        int dup = 0;
        if (alloy_strmap_put(&m->map, m->e[i].name, i, &dup))
            return alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: entries: out of memory", c->path);
        if (dup) return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: one entry per name, two", c->path, m->e[i].name);
    }
    if (get_i32(c, "chunk count", &m->chunks)) return c->err->status;
    if (m->chunks < 0)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: chunk count: >= 0, %d", c->path, (int)m->chunks);
    if (get_str(c, "dataset name", ALLOY_IMATRIX_NAME_MAX * 4, 1, &m->dataset)) return c->err->status;
    if (c->left)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: end of file: nothing after the dataset name, %zu bytes",
                             c->path, c->left);
    return ALLOY_OK;
}

int alloy_imatrix_parse(const void *buf, size_t len, const char *path, struct alloy_imatrix **out, struct alloy_err *err)
{
    *out = NULL;
    struct alloy_imatrix *m = calloc(1, sizeof *m);
    if (!m) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    struct cursor c = {buf, len, path, err};
    if (parse(&c, m)) {
        alloy_imatrix_close(m);
        return err->status;
    }
    *out = m;
    return ALLOY_OK;
}

int alloy_imatrix_open(const char *path, struct alloy_imatrix **out, struct alloy_err *err)
{
    char *buf = NULL;
    size_t len = 0;
    *out = NULL;
    if (alloy_read_file(path, ALLOY_IMATRIX_FILE_MAX, &buf, &len, err)) return err->status;
    int rc = alloy_imatrix_parse(buf, len, path, out, err);
    free(buf);
    return rc;
}

const float *alloy_imatrix_lookup(const struct alloy_imatrix *m, const char *name, size_t *n)
{
    size_t i;
    if (!m || !alloy_strmap_get(&m->map, name, &i)) return NULL;
    *n = m->e[i].n;
    return m->e[i].values;
}

const char *alloy_imatrix_entry(const struct alloy_imatrix *m, size_t i, const float **values, size_t *n)
{
    *values = m->e[i].values;
    *n = m->e[i].n;
    return m->e[i].name;
}

size_t alloy_imatrix_entries(const struct alloy_imatrix *m) { return m->count; }
int32_t alloy_imatrix_chunks(const struct alloy_imatrix *m) { return m->chunks; }
const char *alloy_imatrix_dataset(const struct alloy_imatrix *m) { return m->dataset; }

void alloy_imatrix_close(struct alloy_imatrix *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->count; i++) {
        free(m->e[i].name);
        free(m->e[i].values);
    }
    free(m->e);
    free(m->dataset);
    alloy_strmap_free(&m->map);
    free(m);
}
