/*
 * tensor_file.c — the format-independent side of tensor files.
 *
 * DESIGN
 *   Each format fills a struct alloy_tensor_file (tensor_file.h) and a table
 *   of its operations; everything here works on that base: lookups by index
 *   or name, bounds-checked reads, page release. Opening a path recognises
 *   the format from its first bytes, never from the file name.
 *   alloy_tensor_read_f32 is the one place stored bytes become float32 for
 *   a range of elements: it reads whole blocks (a block type's range may
 *   start or end inside a block: those blocks go through a small buffer),
 *   in pieces of at most PIECE bytes, and follows a file's row permutation
 *   (GGUF's llama Q/K rows) one row at a time and its value offset (GGUF's
 *   Gemma norms, stored + 1) in float32.
 */
#include "core/internal.h"
#include "formats/formats.h"
#include "formats/gguf.h"
#include "formats/tensor_file.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

int alloy_tensor_file_open(const char *path, struct alloy_tensor_file **out, struct alloy_err *err)
{
    uint8_t magic[4] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    ssize_t got = read(fd, magic, sizeof magic);
    close(fd);
    if (got == 4 && memcmp(magic, "GGUF", 4) == 0) {
        struct alloy_gguf *g;
        int rc = alloy_gguf_open(path, &g, err);
        if (rc == ALLOY_OK) *out = alloy_gguf_base(g);
        return rc;
    }
    if (got == 4 && memcmp(magic, "PK\x03\x04", 4) == 0) return alloy_pt_open(path, out, err); /* torch.save zip */
    if (got == 4 && memcmp(magic, "\x80\x02\x8a\x0a", 4) == 0) /* PROTO 2, then torch's legacy magic number */
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: expected a torch.save zip (PyTorch >= 1.6), found the "
                             "legacy PyTorch format; load and save it again with a recent PyTorch", path);
    struct alloy_st_file *f;
    int rc = alloy_st_open(path, &f, err);
    if (rc == ALLOY_OK) *out = alloy_st_file_base(f);
    return rc;
}

void alloy_tensor_file_close(struct alloy_tensor_file *f)
{
    if (f) f->ops->close(f);
}

const char *alloy_tensor_file_path(const struct alloy_tensor_file *f) { return f->path; }
const char *alloy_tensor_file_format(const struct alloy_tensor_file *f) { return f->ops->format; }
size_t alloy_tensor_file_count(const struct alloy_tensor_file *f) { return f->count; }

const struct alloy_tensor *alloy_tensor_file_tensor(const struct alloy_tensor_file *f, size_t i)
{
    return i < f->count ? &f->tensors[i] : NULL;
}

const struct alloy_tensor *alloy_tensor_file_find(const struct alloy_tensor_file *f, const char *name)
{
    size_t i;
    return alloy_strmap_get(&f->index, name, &i) ? &f->tensors[i] : NULL;
}

int alloy_tensor_pread(const struct alloy_tensor *t, uint64_t off, void *dst, size_t len, struct alloy_err *err)
{
    const struct alloy_tensor_file *f = t->file;
    if (off > t->nbytes || len > t->nbytes - off)
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: tensor '%s': read of %zu bytes at %llu is outside the tensor",
                             f ? f->path : "?", t->name, len, (unsigned long long)off);
    if (!f) {
        memcpy(dst, t->data + off, len);
        return ALLOY_OK;
    }
    return f->ops->pread(f, t, off, dst, len, err);
}

void alloy_tensor_release_range(const struct alloy_tensor *t, uint64_t off, uint64_t len)
{
    if (t->file) t->file->ops->release_range(t->file, t, off, len);
}

void alloy_tensor_release(const struct alloy_tensor *t) { alloy_tensor_release_range(t, 0, t->nbytes); }

/* ------------------------------------------------------------ float32 reads */

#define PIECE 16384

/* Elements [e, e + n) of stored tensor t, in stored order, as float32. */
static int read_stored_f32(const struct alloy_tensor *t, uint64_t e, size_t n, float *dst, struct alloy_err *err)
{
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(t->dtype);
    uint8_t buf[PIECE] __attribute__((aligned(64)));
    size_t bk = tr->block; /* at most 256 (the K-quants) for a type with a to_f32 row */
    if (!n) return ALLOY_OK;
    if (e % bk || n < bk) { /* a partial block at the head, or the range lies inside one block */
        uint64_t b0 = e - e % bk;
        size_t skip = (size_t)(e - b0), k = bk - skip < n ? bk - skip : n;
        float tmp[256];
        int rc = alloy_tensor_pread(t, b0 / bk * tr->block_bytes, buf, tr->block_bytes, err);
        if (rc) return rc;
        alloy_to_f32(t->dtype, buf, tmp, bk);
        memcpy(dst, tmp + skip, k * sizeof *dst);
        return n > k ? read_stored_f32(t, e + k, n - k, dst + k, err) : ALLOY_OK;
    }
    size_t whole = n - n % bk, per = PIECE / tr->block_bytes * bk; /* elements per piece, whole blocks */
    for (size_t done = 0; done < whole;) {
        size_t k = whole - done < per ? whole - done : per;
        int rc = alloy_tensor_pread(t, (e + done) / bk * tr->block_bytes, buf, k / bk * tr->block_bytes, err);
        if (rc) return rc;
        alloy_to_f32(t->dtype, buf, dst + done, k);
        done += k;
    }
    return n > whole ? read_stored_f32(t, e + whole, n - whole, dst + whole, err) : ALLOY_OK; /* the tail block */
}

static uint64_t perm_heads(const struct alloy_tensor *t)
{
    return t->file && t->file->ops->perm_heads ? t->file->ops->perm_heads(t->file, t) : 0;
}

static float value_offset(const struct alloy_tensor *t)
{
    return t->file && t->file->ops->value_offset ? t->file->ops->value_offset(t->file, t) : 0.0f;
}

int alloy_tensor_permuted(const struct alloy_tensor *t) { return perm_heads(t) != 0 || value_offset(t) != 0.0f; }

/* Logical elements [e0, e0 + n) following the file's row permutation. */
static int read_rows_f32(const struct alloy_tensor *t, uint64_t e0, size_t n, float *dst, struct alloy_err *err)
{
    uint64_t heads = perm_heads(t);
    if (!heads) return read_stored_f32(t, e0, n, dst, err);
    /* one row at a time: logical row r = h*d + a*d/2 + b lives at stored row h*d + 2b + a */
    uint64_t cols = t->ndim >= 2 ? (uint64_t)t->shape[t->ndim - 1] : 1, rows = cols ? t->numel / cols : 0;
    uint64_t d = rows / heads, half = d / 2;
    for (uint64_t e = e0; e < e0 + n;) {
        uint64_t r = e / cols, c = e % cols, run = cols - c;
        if (run > e0 + n - e) run = e0 + n - e;
        uint64_t h = r / d, a = (r % d) / half, b = r % half;
        int rc = read_stored_f32(t, (h * d + 2 * b + a) * cols + c, (size_t)run, dst + (e - e0), err);
        if (rc) return rc;
        e += run;
    }
    return ALLOY_OK;
}

int alloy_tensor_read_f32(const struct alloy_tensor *t, uint64_t e0, size_t n, float *dst, struct alloy_err *err)
{
    if (!alloy_dtype_traits(t->dtype)->to_f32)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': dtype %s cannot be read as float32",
                             t->file ? t->file->path : "?", t->name, alloy_dtype_traits(t->dtype)->name);
    int rc = read_rows_f32(t, e0, n, dst, err);
    float off = value_offset(t);
    for (size_t i = 0; !rc && off != 0.0f && i < n; i++) dst[i] += off; /* in float32, as llama.cpp's reader would */
    return rc;
}
