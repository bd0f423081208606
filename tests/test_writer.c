/*
 * test_writer.c — the shared output writer (src/merge/writer.c): many
 * threads submitting chunks at their offsets, in any order, end up with
 * exactly the bytes submitted; chunks too large to queue are written
 * directly; a failing file returns its error from submit and flush, naming
 * the file, and never loses the first error.
 */
#include "test.h"
#include "alloy.h"
#include "merge/writer.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Writes NCHUNK chunks with NTHREAD threads; chunk sizes up to max_chunk bytes; checks the file. */
static void run_writers(size_t max_chunk, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    uint64_t off[NCHUNK + 1];
    uint64_t seed = 12345;
    off[0] = 0;
    for (int c = 0; c < NCHUNK; c++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        off[c + 1] = off[c] + 1 + (seed >> 33) % max_chunk;
    }
    size_t total = (size_t)off[NCHUNK];
    uint8_t *data = malloc(total), *back = malloc(total);
    for (size_t i = 0; i < total; i++) data[i] = (uint8_t)(i * 131 + (i >> 9));
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    struct alloy_writer *w = alloy_writer_new(fd, path);
    CHECK(w != NULL);
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
    struct alloy_err err = {0};
    CHECK_INT(alloy_writer_flush(w, &err), ALLOY_OK);
    alloy_writer_free(w);
    CHECK((size_t)pread(fd, back, total, 0) == total);
    CHECK_MSG(!memcmp(back, data, total), "%s: the file differs from the chunks submitted", name);
    close(fd);
    unlink(path);
    free(data);
    free(back);
}

TEST(writer_threads_write_every_chunk_once)
{
    run_writers(256 << 10, "writer-small");  /* queued copies */
    run_writers(6 << 20, "writer-large");    /* the 16 MiB queue fills: chunks written directly too */
}

TEST(writer_reports_the_first_error)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/writer-ro", test_tmpdir());
    CHECK(test_write_text(path, "x") == 0);
    int fd = open(path, O_RDONLY); /* every write fails (EBADF) */
    CHECK(fd >= 0);
    struct alloy_writer *w = alloy_writer_new(fd, path);
    uint8_t buf[4096] = {0};
    struct alloy_err err = {0};
    CHECK_INT(alloy_writer_submit(w, buf, sizeof buf, 0, &err), ALLOY_ERR_IO);
    CHECK_MSG(strstr(err.msg, "writer-ro") != NULL, "message names the file: %s", err.msg);
    struct alloy_err again = {0};
    CHECK_INT(alloy_writer_submit(w, buf, sizeof buf, 8192, &again), ALLOY_ERR_IO);
    struct alloy_err fl = {0};
    CHECK_INT(alloy_writer_flush(w, &fl), ALLOY_ERR_IO);
    CHECK(!strcmp(fl.msg, err.msg)); /* the first error, kept */
    alloy_writer_free(w);
    close(fd);
    unlink(path);
}
