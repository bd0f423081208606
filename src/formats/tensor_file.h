/*
 * tensor_file.h — the interface every tensor file format implements.
 *
 * DESIGN
 *   A tensor file is a file of named tensors: safetensors or GGUF.
 *   Models (model.c), the planner and the stored source (src/sources/) use
 *   only this interface, so a new format is one more implementation of these
 *   operations, not a special case anywhere else:
 *
 *       struct alloy_my_file { struct alloy_tensor_file base; ...format's own state... };
 *       static const struct alloy_tensor_file_ops my_ops = {"myformat", my_close, my_pread, my_release};
 *
 *   The base holds what every format has after parsing its header: the path
 *   (for messages), the tensors in file order (each `alloy_tensor.file`
 *   points back at this base) and a name index. Reading goes through
 *   `pread` (bytes [off, off + len) of a tensor's stored bytes: with pread(2)
 *   for a file, memcpy for an in-memory image); `release_range` drops the
 *   pages of a mapped range from the process. Both are safe to call from
 *   several threads at once.
 */
#ifndef ALLOY_TENSOR_FILE_H
#define ALLOY_TENSOR_FILE_H

#include "alloy.h"
#include "core/strmap.h"

struct alloy_tensor_file_ops {
    const char *format; /* "safetensors" */
    void (*close)(struct alloy_tensor_file *f);
    int  (*pread)(const struct alloy_tensor_file *f, const struct alloy_tensor *t, uint64_t off, void *dst,
                  size_t len, struct alloy_err *err);
    void (*release_range)(const struct alloy_tensor_file *f, const struct alloy_tensor *t, uint64_t off,
                          uint64_t len);
    /* NULL, or the number of heads whose rows t stores in GGUF's llama order (0: stored in order):
     * logical row h*d + a*d/2 + b is stored row h*d + 2b + a, d = rows / heads (gguf.md §1.3). */
    uint64_t (*perm_heads)(const struct alloy_tensor_file *f, const struct alloy_tensor *t);
    /* NULL, or a value added to each of t's stored values when read (GGUF's Gemma norms: -1, gguf.md §4). */
    float (*value_offset)(const struct alloy_tensor_file *f, const struct alloy_tensor *t);
};

struct alloy_tensor_file {
    const struct alloy_tensor_file_ops *ops;
    char *path;
    size_t count;
    struct alloy_tensor *tensors; /* file order */
    struct alloy_strmap index;    /* name -> position in tensors */
};

/* Elements [e0, e0 + n) of t in its presented (logical) order as float32: whole blocks are read and
 * converted, partial blocks at either end through a small buffer, rows mapped when the file stores
 * them permuted. t's dtype must have a to_f32 row. Safe from several threads. */
int alloy_tensor_read_f32(const struct alloy_tensor *t, uint64_t e0, size_t n, float *dst, struct alloy_err *err);
/* 1 when t's stored bytes are not its logical values (rows out of order, or values offset): they cannot be
 * used as they are. */
int alloy_tensor_permuted(const struct alloy_tensor *t);

#endif
