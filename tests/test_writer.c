/*
 * test_writer.c — the output writer (src/sinks/writer.c): many threads
 * submitting chunks at their offsets, in any order, end up with exactly the
 * bytes submitted, buffered and with O_DIRECT; orders far from file order
 * (every slot unfinished) and segments filled in many pieces go straight
 * to the file; direct segments bypass the page cache; a failing file
 * returns its error from submit and flush, naming the file, and never
 * loses the first error.
 */
#include "test.h"
#include "alloy.h"
#include "sinks/writer.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { NCHUNK = 96, NTHREAD = 4 };

struct job {
    struct alloy_writer *w;
    const uint8_t *data;
    const uint64_t *off;    /* [NCHUNK + 1] chunk boundaries */
    int first, step;        /* chunks first, first + step, ... (reversed for odd threads) */
    int fails;
};

static void *submitter(void *arg)
{
    struct job *j = arg;
    uint8_t *buf = malloc(8u << 20);
    int last = j->first + (NCHUNK - 1 - j->first) / j->step * j->step;
    for (int c = j->first; c < NCHUNK; c += j->step) {
        int k = j->first % 2 ? last - (c - j->first) : c; /* odd threads go backwards: out-of-order offsets */
        size_t len = (size_t)(j->off[k + 1] - j->off[k]);
        memcpy(buf, j->data + j->off[k], len);
        struct alloy_err err = {0};
        j->fails += alloy_writer_submit(j->w, buf, len, j->off[k], &err) != ALLOY_OK;
        memset(buf, 0xee, len); /* the writer must have copied or written it: reuse the buffer at once */
    }
    free(buf);
    return NULL;
}

/* A fresh file <tmp>/name (path: its name, 4096 bytes) and its writer; *fd: the descriptor. */
static struct alloy_writer *file_writer(const char *name, unsigned flags, char *path, int *fd)
{
    snprintf(path, 4096, "%s/%s", test_tmpdir(), name);
    *fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(*fd >= 0);
    struct alloy_err err = {0};
    struct alloy_writer *w = alloy_writer_new(*fd, path, flags, &err);
    CHECK_MSG(w != NULL, "%s: %s", name, err.msg);
    return w;
}

/* Flushes and frees w, checks that the file holds the n bytes of data, and removes it. */
static void finish_and_check(struct alloy_writer *w, int fd, const char *path, const uint8_t *data, size_t n,
                             const char *what)
{
    struct alloy_err err = {0};
    CHECK_INT(alloy_writer_flush(w, &err), ALLOY_OK);
    alloy_writer_free(w);
    uint8_t *back = malloc(n);
    CHECK((size_t)pread(fd, back, n, 0) == n);
    CHECK_MSG(!memcmp(back, data, n), "%s: the file differs from the bytes submitted", what);
    free(back);
    close(fd);
    unlink(path);
}

/* Writes NCHUNK chunks with NTHREAD threads; chunk sizes up to max_chunk bytes; checks the file. */
static void run_writers(size_t max_chunk, unsigned flags, const char *name)
{
    uint64_t off[NCHUNK + 1];
    uint64_t seed = 12345;
    off[0] = 0;
    for (int c = 0; c < NCHUNK; c++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        off[c + 1] = off[c] + 1 + (seed >> 33) % max_chunk;
    }
    size_t total = (size_t)off[NCHUNK];
    uint8_t *data = malloc(total);
    for (size_t i = 0; i < total; i++) data[i] = (uint8_t)(i * 131 + (i >> 9));
    char path[4096];
    int fd;
    struct alloy_writer *w = file_writer(name, flags, path, &fd);
    pthread_t th[NTHREAD];
    struct job jobs[NTHREAD];
    for (int t = 0; t < NTHREAD; t++) {
        jobs[t] = (struct job){w, data, off, t, NTHREAD, 0};
        pthread_create(&th[t], NULL, submitter, &jobs[t]);
    }
    for (int t = 0; t < NTHREAD; t++) {
        pthread_join(th[t], NULL);
        CHECK_INT(jobs[t].fails, 0);
    }
    finish_and_check(w, fd, path, data, total, name);
    free(data);
}

TEST(writer_threads_write_every_chunk_once)
{
    for (unsigned flags = 0; flags <= ALLOY_WRITER_DIRECT; flags += ALLOY_WRITER_DIRECT) {
        run_writers(256 << 10, flags, "writer-small"); /* several chunks per segment */
        run_writers(6 << 20, flags, "writer-large");   /* chunks over several segments; backward threads fill
                                                          every slot with unfinished ones: straight to the file */
    }
}

/* A file of n bytes written as pieces of `piece` bytes: the even-numbered pieces first, then the odd
 * ones, so each segment holds up to NSPAN separate spans and then overflows them. */
TEST(writer_many_pieces_per_segment)
{
    const size_t n = 3 * ALLOY_WRITE_SEGMENT + 12345, piece = 4096 + 7;
    uint8_t *data = malloc(n);
    for (size_t i = 0; i < n; i++) data[i] = (uint8_t)(i * 7 + (i >> 12));
    char path[4096];
    int fd;
    struct alloy_writer *w = file_writer("writer-pieces", ALLOY_WRITER_DIRECT, path, &fd);
    struct alloy_err err = {0};
    for (int parity = 0; parity < 2; parity++)
        for (size_t off = (size_t)parity * piece; off < n; off += 2 * piece) {
            size_t len = n - off < piece ? n - off : piece;
            CHECK_INT(alloy_writer_submit(w, data + off, len, off, &err), ALLOY_OK);
        }
    finish_and_check(w, fd, path, data, n, "writer-pieces");
    free(data);
}

/* Whole segments written with O_DIRECT leave no page in the page cache (where the file system takes
 * O_DIRECT: tmpfs, for one, may not). */
TEST(writer_direct_segments_skip_the_page_cache)
{
    const size_t seg = ALLOY_WRITE_SEGMENT, n = 4 * seg;
    uint8_t *data = malloc(n);
    for (size_t i = 0; i < n; i++) data[i] = (uint8_t)(i * 13 + 1);
    char path[4096];
    int fd;
    struct alloy_writer *w = file_writer("writer-direct", ALLOY_WRITER_DIRECT, path, &fd);
    struct alloy_err err = {0};
    for (size_t off = 0; off < n; off += 65536) CHECK_INT(alloy_writer_submit(w, data + off, 65536, off, &err), ALLOY_OK);
    CHECK_INT(alloy_writer_flush(w, &err), ALLOY_OK);
    if (alloy_writer_direct(w)) {
        long page = sysconf(_SC_PAGESIZE);
        void *map = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
        CHECK(map != MAP_FAILED);
        unsigned char *vec = malloc(n / (size_t)page);
        CHECK(mincore(map, n, vec) == 0);
        size_t resident = 0;
        for (size_t i = 0; i < n / (size_t)page; i++) resident += vec[i] & 1;
        CHECK_MSG(resident == 0, "%zu of %zu pages of a directly written file are in the page cache", resident,
                  n / (size_t)page);
        free(vec);
        munmap(map, n);
    }
    finish_and_check(w, fd, path, data, n, "writer-direct");
    free(data);
}

TEST(writer_reports_the_first_error)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/writer-ro", test_tmpdir());
    CHECK(test_write_text(path, "x") == 0);
    int fd = open(path, O_RDONLY); /* every buffered write fails (EBADF) */
    CHECK(fd >= 0);
    struct alloy_err err = {0};
    struct alloy_writer *w = alloy_writer_new(fd, path, 0, &err);
    CHECK(w != NULL);
    const size_t seg = ALLOY_WRITE_SEGMENT;
    uint8_t *buf = calloc(1, seg);
    /* a whole segment goes to the I/O thread, whose failure the next submit (or the flush) reports */
    int rc = alloy_writer_submit(w, buf, seg, 0, &err);
    for (int i = 1; i < 100 && rc == ALLOY_OK; i++) {
        usleep(10000);
        rc = alloy_writer_submit(w, buf, 4096, (uint64_t)i * 4 * seg, &err);
    }
    CHECK_INT(rc, ALLOY_ERR_IO);
    CHECK_MSG(strstr(err.msg, "writer-ro") != NULL, "message names the file: %s", err.msg);
    struct alloy_err again = {0};
    CHECK_INT(alloy_writer_submit(w, buf, seg, seg, &again), ALLOY_ERR_IO);
    struct alloy_err fl = {0};
    CHECK_INT(alloy_writer_flush(w, &fl), ALLOY_ERR_IO);
    CHECK(!strcmp(fl.msg, err.msg)); /* the first error, kept */
    alloy_writer_free(w);
    free(buf);

    /* an unfinished segment fails at the flush */
    w = alloy_writer_new(fd, path, 0, &err);
    CHECK(w != NULL);
    uint8_t small[100] = {0};
    CHECK_INT(alloy_writer_submit(w, small, sizeof small, 0, &err), ALLOY_OK);
    CHECK_INT(alloy_writer_flush(w, &fl), ALLOY_ERR_IO);
    CHECK_MSG(strstr(fl.msg, "writer-ro") != NULL, "message names the file: %s", fl.msg);
    alloy_writer_free(w);
    close(fd);
    unlink(path);
}
