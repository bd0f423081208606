/*
 * mapped.c — open, map, read and release the bytes of a tensor file (mapped.h).
 *
 * DESIGN
 *   The file is mapped once, read-only and shared; it is never written.
 *   pread loops over short reads and EINTR. Release rounds the range inward
 *   to whole pages, so a page shared with a neighbouring tensor stays.
 */
#include "core/internal.h"
#include "formats/mapped.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int alloy_mapped_open(const char *path, struct alloy_mapped *m, struct alloy_err *err)
{
    memset(m, 0, sizeof *m);
    m->fd = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block the open */
    if (fd < 0) return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: not a regular file", path);
    }
    m->size = (size_t)st.st_size;
    if (m->size > 0) {
        void *p = mmap(NULL, m->size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return alloy_err_set(err, ALLOY_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
        }
        m->map = p;
        m->owns_map = 1;
    }
    m->fd = fd;
    return ALLOY_OK;
}

void alloy_mapped_memory(const uint8_t *buf, size_t len, struct alloy_mapped *m)
{
    m->map = buf;
    m->size = len;
    m->owns_map = 0;
    m->fd = -1;
}

void alloy_mapped_close(struct alloy_mapped *m)
{
    if (m->owns_map && m->map) munmap((void *)m->map, m->size);
    if (m->fd >= 0) close(m->fd);
    m->map = NULL;
    m->fd = -1;
}

int alloy_mapped_pread(const struct alloy_mapped *m, const char *path, const struct alloy_tensor *t, uint64_t off,
                       void *dst, size_t len, struct alloy_err *err)
{
    if (m->fd < 0) {
        memcpy(dst, t->data + off, len);
        return ALLOY_OK;
    }
    uint64_t pos = (uint64_t)(t->data - m->map) + off;
    uint8_t *p = dst;
    while (len) {
        ssize_t r = pread(m->fd, p, len, (off_t)pos);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return alloy_err_set(err, ALLOY_ERR_IO, "%s: tensor '%s': read failed at byte %llu: %s", path, t->name,
                                 (unsigned long long)pos, r < 0 ? strerror(errno) : "file shrank while open");
        p += r;
        len -= (size_t)r;
        pos += (uint64_t)r;
    }
    return ALLOY_OK;
}

void alloy_release_tensor_pages(const struct alloy_tensor *t, uint64_t off, uint64_t len)
{
    if (!len || off >= t->nbytes) return;
    if (len > t->nbytes - off) len = t->nbytes - off;
    static _Atomic uintptr_t page_size; /* set once; racing threads store the same value */
    uintptr_t page = atomic_load_explicit(&page_size, memory_order_relaxed);
    if (!page) atomic_store_explicit(&page_size, page = (uintptr_t)sysconf(_SC_PAGESIZE), memory_order_relaxed);
    uintptr_t lo = ((uintptr_t)(t->data + off) + page - 1) & ~(page - 1);
    uintptr_t hi = ((uintptr_t)(t->data + off + len)) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

void alloy_mapped_release(const struct alloy_mapped *m, const struct alloy_tensor *t, uint64_t off, uint64_t len)
{
    if (m->owns_map) alloy_release_tensor_pages(t, off, len);
}
