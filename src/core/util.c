/*
 * util.c — allocation wrappers and small file helpers.
 *
 * DESIGN
 *   Allocation goes through alloy_x* so a test build can inject failures
 *   (ALLOY_FAIL_ALLOC_AFTER=N makes the N-th allocation fail). File helpers
 *   report errors as "<path>: <what failed>: <strerror>" and retry short
 *   reads/writes and EINTR. alloy_copy_file never holds more than one 1 MiB
 *   piece of a file, whatever its size, and keeps sparse regions sparse.
 */
#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define COPY_PIECE ((size_t)1 << 20) /* alloy_copy_file's buffer: files are copied 1 MiB at a time */

static int alloc_should_fail(void)
{
    static long budget = -2;
    if (budget == -2) {
        const char *v = getenv("ALLOY_FAIL_ALLOC_AFTER");
        budget = v ? atol(v) : -1;
    }
    if (budget < 0) return 0;
    if (budget == 0) return 1;
    budget--;
    return 0;
}

void *alloy_xmalloc(size_t n) { return alloc_should_fail() ? NULL : malloc(n ? n : 1); }
void *alloy_xcalloc(size_t n, size_t size) { return alloc_should_fail() ? NULL : calloc(n ? n : 1, size ? size : 1); }
void *alloy_xrealloc(void *p, size_t n) { return alloc_should_fail() ? NULL : realloc(p, n ? n : 1); }

void *alloy_xaligned(size_t align, size_t n)
{
    void *p = NULL;
    if (alloc_should_fail() || posix_memalign(&p, align, n ? n : 1) != 0) return NULL;
    return p;
}

char *alloy_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = alloy_xmalloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

char *alloy_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *s = alloy_xmalloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

int alloy_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int alloy_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

void alloy_qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
    const char *p = base;
    size_t run = 1;
    while (run < n && cmp(p + (run - 1) * size, p + run * size) <= 0) run++;
    if (run < n) qsort(base, n, size, cmp);
}

int alloy_open_bounded(const char *path, size_t max, int *fdp, size_t *size, struct alloy_err *err)
{
    /* O_NONBLOCK: opening a FIFO without a writer must not hang; it is refused below */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: file is %lld bytes, more than the %zu allowed",
                             path, (long long)st.st_size, max);
    }
    *fdp = fd;
    *size = (size_t)st.st_size;
    return ALLOY_OK;
}

int alloy_read_file(const char *path, size_t max, char **out, size_t *len, struct alloy_err *err)
{
    int fd;
    size_t n, got = 0;
    int rc = alloy_open_bounded(path, max ? max : (size_t)1 << 30, &fd, &n, err);
    if (rc) return rc;
    char *buf = alloy_xmalloc(n + 1);
    if (!buf) {
        close(fd);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return alloy_err_set(err, ALLOY_ERR_IO, "%s: read failed: %s", path, strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return ALLOY_OK;
}

int alloy_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *path, struct alloy_err *err)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC;
            return alloy_err_set(err, ALLOY_ERR_IO, "%s: write failed at offset %llu: %s", path,
                                 (unsigned long long)off, strerror(e));
        }
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return ALLOY_OK;
}

int alloy_write_file(const char *path, const void *buf, size_t len, struct alloy_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    int rc = alloy_pwrite_all(fd, buf, len, 0, path, err);
    if (rc == ALLOY_OK && fsync(fd) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == ALLOY_OK)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    return rc;
}

int alloy_path_within(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (lb == 1 && b[0] == '/') return 1;
    return la >= lb && strncmp(a, b, lb) == 0 && (a[lb] == '\0' || a[lb] == '/');
}

/* Copies src[off, end) to the same offsets of dst through buf (COPY_PIECE bytes). */
static int copy_range(int in, int out, uint64_t off, uint64_t end, char *buf, const char *src, const char *dst,
                      struct alloy_err *err)
{
    while (off < end) {
        size_t want = end - off < COPY_PIECE ? (size_t)(end - off) : COPY_PIECE;
        ssize_t r = pread(in, buf, want, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return alloy_err_set(err, ALLOY_ERR_IO, "%s: read failed at offset %llu: %s", src,
                                 (unsigned long long)off, r < 0 ? strerror(errno) : "file shrank while copied");
        int rc = alloy_pwrite_all(out, buf, (size_t)r, off, dst, err);
        if (rc) return rc;
        off += (uint64_t)r;
    }
    return ALLOY_OK;
}

/* Copies the data regions of src (SEEK_DATA / SEEK_HOLE; the whole file where they are not supported) and
 * sizes dst to src's size, so holes stay holes and read back as zeros. */
static int copy_fd(int in, int out, uint64_t size, const char *src, const char *dst, struct alloy_err *err)
{
    char *buf = alloy_xmalloc(COPY_PIECE);
    if (!buf) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", src);
    int rc = ALLOY_OK;
    for (uint64_t off = 0; off < size && !rc;) {
        off_t data = lseek(in, (off_t)off, SEEK_DATA), hole = data < 0 ? -1 : lseek(in, data, SEEK_HOLE);
        if (data < 0 && errno == ENXIO) break; /* only a hole is left */
        if (data < 0 || hole < 0) { data = (off_t)off; hole = (off_t)size; }
        if ((uint64_t)hole > size) hole = (off_t)size;
        rc = copy_range(in, out, (uint64_t)data, (uint64_t)hole, buf, src, dst, err);
        off = (uint64_t)hole;
    }
    free(buf);
    if (rc == ALLOY_OK && ftruncate(out, (off_t)size) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: ftruncate failed: %s", dst, strerror(errno));
    return rc;
}

int alloy_copy_file(const char *src, const char *dst, struct alloy_err *err)
{
    int in = open(src, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO without a writer must not hang */
    if (in < 0) return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    struct stat st;
    if (fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(in);
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: not a regular file", src);
    }
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 0644); /* never wider */
    if (out < 0) {
        close(in);
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
    }
    int rc = copy_fd(in, out, (uint64_t)st.st_size, src, dst, err);
    if (rc == ALLOY_OK && fsync(out) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync failed: %s", dst, strerror(errno));
    if (close(out) != 0 && rc == ALLOY_OK)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: close failed: %s", dst, strerror(errno));
    close(in);
    return rc;
}
