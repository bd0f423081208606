/*
 * faultinject.c — an LD_PRELOAD shim that makes file output fail the way a
 * full or failing disk does, for tests/test_faults.c (which compiles it at
 * run time: cc -shared -fPIC -o fi.so tests/shim/faultinject.c -ldl).
 *
 * DESIGN
 *   Only descriptors whose path (/proc/self/fd/N) starts with
 *   $ALLOY_FI_PATH are touched, so stderr, pipes and the inputs behave
 *   normally. Nothing happens when ALLOY_FI_PATH is unset. Knobs:
 *     ALLOY_FI_ENOSPC_AFTER=N  the first N bytes written (all such fds, all
 *                              threads) succeed; the write that crosses N is
 *                              cut short at N, every later one fails ENOSPC
 *                              (what a filling disk does).
 *     ALLOY_FI_SHORT=K         every write moves at most K bytes (short
 *                              writes the caller must retry).
 *     ALLOY_FI_ZERO=1          writes return 0 (no progress, no errno).
 *     ALLOY_FI_FSYNC_EIO=1     fsync/fdatasync fail with EIO.
 *     ALLOY_FI_FTRUNCATE=1     ftruncate fails with EFBIG.
 *     ALLOY_FI_RENAME_FAIL=k   the k-th rename (1-based) whose source or
 *                              target starts with the prefix fails with EIO.
 *                              It also makes renameat2(RENAME_EXCHANGE) fail
 *                              with EINVAL, as on a file system without it,
 *                              so the two renames of the fallback are what fail.
 *   write, pwrite and pwrite64 are wrapped (alloy writes with pwrite).
 *   Counters are atomic: pool threads write concurrently.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static long long g_written; /* bytes written through matching fds */
static int g_renames;

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static int prefix_match(const char *path)
{
    const char *pre = env("ALLOY_FI_PATH");
    return pre && path && strncmp(path, pre, strlen(pre)) == 0;
}

static int fd_matches(int fd)
{
    if (!env("ALLOY_FI_PATH")) return 0;
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = '\0';
    return prefix_match(target);
}

/* How many of `len` bytes this write may move: -1 = fail with ENOSPC. */
static long long allowed(size_t len)
{
    long long n = (long long)len;
    const char *s = env("ALLOY_FI_SHORT");
    if (s && atoll(s) > 0 && n > atoll(s)) n = atoll(s);
    const char *lim = env("ALLOY_FI_ENOSPC_AFTER");
    if (!lim) {
        __atomic_add_fetch(&g_written, n, __ATOMIC_SEQ_CST);
        return n;
    }
    long long limit = atoll(lim);
    long long before = __atomic_load_n(&g_written, __ATOMIC_SEQ_CST);
    for (;;) {
        if (before >= limit) return len ? -1 : 0;
        long long take = n < limit - before ? n : limit - before;
        if (__atomic_compare_exchange_n(&g_written, &before, before + take, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return take;
    }
}

#define NEXT(name) static __typeof__(name) *real_##name; if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t len)
{
    NEXT(write);
    if (!fd_matches(fd)) return real_write(fd, buf, len);
    if (env("ALLOY_FI_ZERO")) return 0;
    long long n = allowed(len);
    if (n < 0) { errno = ENOSPC; return -1; }
    return real_write(fd, buf, (size_t)n);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
    NEXT(pwrite);
    if (!fd_matches(fd)) return real_pwrite(fd, buf, len, off);
    if (env("ALLOY_FI_ZERO")) return 0;
    long long n = allowed(len);
    if (n < 0) { errno = ENOSPC; return -1; }
    return real_pwrite(fd, buf, (size_t)n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t off)
{
    NEXT(pwrite64);
    if (!fd_matches(fd)) return real_pwrite64(fd, buf, len, off);
    if (env("ALLOY_FI_ZERO")) return 0;
    long long n = allowed(len);
    if (n < 0) { errno = ENOSPC; return -1; }
    return real_pwrite64(fd, buf, (size_t)n, off);
}

int fsync(int fd)
{
    NEXT(fsync);
    if (env("ALLOY_FI_FSYNC_EIO") && fd_matches(fd)) { errno = EIO; return -1; }
    return real_fsync(fd);
}

int fdatasync(int fd)
{
    NEXT(fdatasync);
    if (env("ALLOY_FI_FSYNC_EIO") && fd_matches(fd)) { errno = EIO; return -1; }
    return real_fdatasync(fd);
}

int ftruncate(int fd, off_t len)
{
    NEXT(ftruncate);
    if (env("ALLOY_FI_FTRUNCATE") && fd_matches(fd)) { errno = EFBIG; return -1; }
    return real_ftruncate(fd, len);
}

int rename(const char *from, const char *to)
{
    NEXT(rename);
    const char *k = env("ALLOY_FI_RENAME_FAIL");
    if (k && (prefix_match(from) || prefix_match(to)) &&
        __atomic_add_fetch(&g_renames, 1, __ATOMIC_SEQ_CST) == atoi(k)) {
        errno = EIO;
        return -1;
    }
    return real_rename(from, to);
}

int renameat2(int dfd, const char *from, int tfd, const char *to, unsigned int flags)
{
    NEXT(renameat2);
    if (env("ALLOY_FI_RENAME_FAIL") && (flags & 2u /* RENAME_EXCHANGE */)) {
        errno = EINVAL;
        return -1;
    }
    return real_renameat2(dfd, from, tfd, to, flags);
}
