/*
 * limits.c — what the machine allows: the I/O floor of a merge and the
 * memory bandwidth.
 *
 * DESIGN
 *   `bench_limits [options] FILE...` measures, with plain read()/write():
 *     read   every FILE once, sequentially, in 8 MiB blocks (a merge must
 *            read each input byte at least once);
 *     write  --write-bytes bytes (one output of a model's size) into a new
 *            file in --write-dir, then fsync it (alloy fsyncs its output);
 *   and the sum read + write + fsync is the "limit" a merge of these files is
 *   compared with: a merge cannot be faster than moving its bytes once (it
 *   can come close, or even pass it slightly, because alloy maps the inputs
 *   instead of copying them through read()).
 *   Memory bandwidth is a streaming copy (memcpy) of --bw-mib MiB, on one
 *   thread and on --threads threads (each copies its own slice), counted as
 *   bytes read + bytes written; best of three.
 *   Output: one JSON object on stdout. Nothing here is timed twice: the
 *   caller decides hot or cold cache (it drops caches before a cold run).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK ((size_t)8 << 20)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *what, const char *arg)
{
    fprintf(stderr, "bench_limits: %s %s: %s\n", what, arg, strerror(errno));
    exit(1);
}

/* ------------------------------------------------------------ I/O */

static uint64_t read_file(const char *path, char *buf)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("cannot open", path);
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    uint64_t total = 0;
    for (;;) {
        ssize_t r = read(fd, buf, BLOCK);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("cannot read", path);
        if (r == 0) break;
        total += (uint64_t)r;
    }
    close(fd);
    return total;
}

/* Writes n bytes into a new file under dir; returns the seconds spent in write() and in fsync(). */
static void write_file(const char *dir, uint64_t n, char *buf, double *write_s, double *fsync_s)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/bench-limit.XXXXXX", dir) >= (int)sizeof path) die("path too long:", dir);
    int fd = mkstemp(path);
    if (fd < 0) die("cannot create a file in", dir);
    double t0 = now();
    for (uint64_t off = 0; off < n;) {
        size_t len = n - off < BLOCK ? (size_t)(n - off) : BLOCK;
        ssize_t w = write(fd, buf, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die("cannot write", path);
        off += (uint64_t)w;
    }
    double t1 = now();
    if (fsync(fd) != 0) die("cannot fsync", path);
    double t2 = now();
    close(fd);
    unlink(path);
    *write_s = t1 - t0;
    *fsync_s = t2 - t1;
}

/* ------------------------------------------------------------ memory bandwidth */

struct copy_job {
    char *dst;
    const char *src;
    size_t n;
};

static void *copy_main(void *arg)
{
    struct copy_job *j = arg;
    memcpy(j->dst, j->src, j->n);
    return NULL;
}

/* Best of three copies of n bytes on nth threads, in bytes moved (read + write) per second. */
static double copy_bw(char *dst, const char *src, size_t n, int nth)
{
    double best = 1e30;
    struct copy_job jobs[256];
    pthread_t tid[256];
    size_t per = (n / (size_t)nth) & ~(size_t)4095;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (int t = 0; t < nth; t++) {
            size_t len = t == nth - 1 ? n - (size_t)t * per : per;
            jobs[t] = (struct copy_job){dst + (size_t)t * per, src + (size_t)t * per, len};
            if (t && pthread_create(&tid[t], NULL, copy_main, &jobs[t]) != 0) die("cannot start a thread", "");
        }
        copy_main(&jobs[0]);
        for (int t = 1; t < nth; t++) pthread_join(tid[t], NULL);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return 2.0 * (double)n / best;
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    const char *dir = ".";
    uint64_t write_bytes = 0;
    size_t bw_mib = 256;
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int nfiles = 0;
    const char **files = calloc((size_t)argc, sizeof *files);
    if (!files) die("out of memory", "");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--write-dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(a, "--write-bytes") && i + 1 < argc) write_bytes = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--bw-mib") && i + 1 < argc) bw_mib = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (a[0] == '-') {
            fprintf(stderr, "usage: bench_limits [--write-dir DIR] [--write-bytes N] [--bw-mib M (0: skip)] "
                            "[--threads T] FILE...\n");
            return 2;
        } else files[nfiles++] = a;
    }
    if (threads < 1) threads = 1;
    if (threads > 256) threads = 256;
    char *buf = aligned_alloc(4096, BLOCK);
    if (!buf) die("out of memory", "");
    memset(buf, 0x3c, BLOCK); /* not zero pages: the kernel must copy real data */

    uint64_t read_bytes = 0;
    double t0 = now();
    for (int i = 0; i < nfiles; i++) read_bytes += read_file(files[i], buf);
    double read_s = now() - t0;
    double write_s = 0, fsync_s = 0;
    if (write_bytes) write_file(dir, write_bytes, buf, &write_s, &fsync_s);
    double limit_s = read_s + write_s + fsync_s;

    double bw1 = 0, bwn = 0;
    if (bw_mib) {
        size_t n = bw_mib << 20;
        char *src = aligned_alloc(4096, n), *dst = aligned_alloc(4096, n);
        if (!src || !dst) die("out of memory for the bandwidth test", "");
        memset(src, 1, n);
        memset(dst, 2, n);
        bw1 = copy_bw(dst, src, n, 1);
        bwn = copy_bw(dst, src, n, threads);
        free(src);
        free(dst);
    }
    printf("{\"read_bytes\": %llu, \"read_s\": %.6f, \"write_bytes\": %llu, \"write_s\": %.6f, \"fsync_s\": %.6f, "
           "\"limit_s\": %.6f, \"limit_gbps\": %.4f, \"membw_1t_gbps\": %.3f, \"membw_gbps\": %.3f, \"threads\": %d}\n",
           (unsigned long long)read_bytes, read_s, (unsigned long long)write_bytes, write_s, fsync_s, limit_s,
           limit_s > 0 ? (double)(read_bytes + write_bytes) / limit_s / 1e9 : 0.0, bw1 / 1e9, bwn / 1e9, threads);
    free(buf);
    free(files);
    return 0;
}
