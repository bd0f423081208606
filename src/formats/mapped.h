/*
 * mapped.h — a tensor file's bytes: a read-only mapping of the whole file
 * (or a caller's buffer), read with pread and released page by page.
 *
 * DESIGN
 *   Formats that view tensors in place (safetensors, PyTorch zips) keep one
 *   struct alloy_mapped and set every tensor's data pointer inside it;
 *   reads go through pread(2) at (data - map) so that a file which shrinks
 *   while open is an error, not a SIGBUS, and released ranges are dropped
 *   with madvise. An in-memory image (fd < 0) is read with memcpy.
 */
#ifndef ALLOY_MAPPED_H
#define ALLOY_MAPPED_H

#include "alloy.h"

struct alloy_mapped {
    const uint8_t *map; /* whole file */
    size_t size;
    int owns_map;
    int fd;             /* -1 for an in-memory image */
};

/* Opens and maps a regular file (a FIFO never blocks the open). */
int  alloy_mapped_open(const char *path, struct alloy_mapped *m, struct alloy_err *err);
void alloy_mapped_memory(const uint8_t *buf, size_t len, struct alloy_mapped *m);
void alloy_mapped_close(struct alloy_mapped *m);
/* Bytes [off, off + len) of tensor t, whose data points into m. */
int  alloy_mapped_pread(const struct alloy_mapped *m, const char *path, const struct alloy_tensor *t, uint64_t off,
                        void *dst, size_t len, struct alloy_err *err);
/* Drops the whole pages inside bytes [off, off + len) of a mapped tensor from the process (madvise). */
void alloy_release_tensor_pages(const struct alloy_tensor *t, uint64_t off, uint64_t len);
void alloy_mapped_release(const struct alloy_mapped *m, const struct alloy_tensor *t, uint64_t off, uint64_t len);

#endif
