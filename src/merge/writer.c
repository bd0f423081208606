/*
 * writer.c — one output file written by whichever worker finds it idle
 * (writer.h has the design).
 *
 * State under one mutex: `busy` (a thread is writing), the queue of copied
 * chunks and its byte count, and the first error. The thread that sets
 * busy keeps writing until the queue is empty, taking the whole queue at a
 * time and writing it in file order outside the lock; only then does it
 * clear busy, so nothing queued is ever left without a writer.
 */
#include "merge/writer.h"

#include "core/internal.h"

#include <pthread.h>

struct wq_item {
    uint64_t off;
    size_t len;
    uint8_t *buf;
    size_t cap;             /* bytes allocated at buf */
};

#define WQ_SPARES 32 /* written-out buffers kept: no malloc/free (and no page faults) per chunk */

struct alloy_writer {
    int fd;
    const char *path;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int busy;
    struct wq_item *q;
    size_t nq, capq;
    size_t queued;          /* bytes in q */
    struct wq_item spare[WQ_SPARES]; /* buffers written out, kept for reuse (buf and cap) */
    int nspare;
    size_t spare_bytes;
    int rc;                 /* first write error */
    struct alloy_err err;
};

struct alloy_writer *alloy_writer_new(int fd, const char *path)
{
    struct alloy_writer *w = alloy_xcalloc(1, sizeof *w);
    if (!w) return NULL;
    w->fd = fd;
    w->path = path;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    return w;
}

/* Keeps a written-out buffer for reuse while the spares stay within WQ_SPARES buffers and
 * ALLOY_WRITE_QUEUE bytes, else frees it. Lock held. */
static void spare_put(struct alloy_writer *w, uint8_t *buf, size_t cap)
{
    if (w->nspare < WQ_SPARES && w->spare_bytes + cap <= ALLOY_WRITE_QUEUE) {
        w->spare[w->nspare++] = (struct wq_item){0, 0, buf, cap};
        w->spare_bytes += cap;
        return;
    }
    free(buf);
}

/* A buffer of at least len bytes: a spare one, or new (NULL if out of memory). Lock held. */
static uint8_t *spare_get(struct alloy_writer *w, size_t len, size_t *cap)
{
    for (int i = 0; i < w->nspare; i++)
        if (w->spare[i].cap >= len) {
            uint8_t *b = w->spare[i].buf;
            *cap = w->spare[i].cap;
            w->spare_bytes -= *cap;
            w->spare[i] = w->spare[--w->nspare];
            return b;
        }
    *cap = len;
    return alloy_xmalloc(len);
}

static int item_cmp(const void *a, const void *b)
{
    const struct wq_item *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* With the lock held and busy set: writes everything queued (lock released around the writes). */
static void drain(struct alloy_writer *w)
{
    while (w->nq) {
        struct wq_item *items = w->q;
        size_t n = w->nq;
        w->q = NULL;
        w->nq = w->capq = 0;
        pthread_mutex_unlock(&w->mu);
        qsort(items, n, sizeof *items, item_cmp); /* file order: one sequential stream */
        struct alloy_err e = {0};
        int rc = ALLOY_OK;
        size_t bytes = 0;
        for (size_t i = 0; i < n; i++) {
            if (!rc && !w->rc) rc = alloy_pwrite_all(w->fd, items[i].buf, items[i].len, items[i].off, w->path, &e);
            bytes += items[i].len;
        }
        pthread_mutex_lock(&w->mu);
        for (size_t i = 0; i < n; i++) spare_put(w, items[i].buf, items[i].cap);
        free(items);
        if (rc && !w->rc) {
            w->rc = rc;
            w->err = e;
        }
        w->queued -= bytes;
        pthread_cond_broadcast(&w->cv); /* queue space for waiting submitters */
    }
}

/* With the lock held: waits for the file, writes (buf, len, off) when given, drains, releases it. */
static void write_now(struct alloy_writer *w, const void *buf, size_t len, uint64_t off)
{
    while (w->busy) pthread_cond_wait(&w->cv, &w->mu);
    w->busy = 1;
    if (buf && !w->rc) {
        pthread_mutex_unlock(&w->mu);
        struct alloy_err e = {0};
        int rc = alloy_pwrite_all(w->fd, buf, len, off, w->path, &e);
        pthread_mutex_lock(&w->mu);
        if (rc && !w->rc) {
            w->rc = rc;
            w->err = e;
        }
    }
    drain(w);
    w->busy = 0;
    pthread_cond_broadcast(&w->cv);
}

static int result(struct alloy_writer *w, struct alloy_err *err)
{
    int rc = w->rc;
    if (rc && err) *err = w->err;
    return rc;
}

int alloy_writer_submit(struct alloy_writer *w, const void *buf, size_t len, uint64_t off, struct alloy_err *err)
{
    pthread_mutex_lock(&w->mu);
    if (w->busy && !w->rc && w->queued + len <= ALLOY_WRITE_QUEUE) { /* the file is taken: queue a copy */
        if (w->nq == w->capq) {
            size_t cap = w->capq ? 2 * w->capq : 16;
            struct wq_item *q = alloy_xrealloc(w->q, cap * sizeof *q);
            if (q) {
                w->q = q;
                w->capq = cap;
            }
        }
        size_t cap = 0;
        uint8_t *copy = w->nq < w->capq ? spare_get(w, len, &cap) : NULL;
        if (copy) {
            memcpy(copy, buf, len);
            w->q[w->nq++] = (struct wq_item){off, len, copy, cap};
            w->queued += len;
            int rc = result(w, err);
            pthread_mutex_unlock(&w->mu);
            return rc;
        }
    }
    write_now(w, buf, len, off); /* idle, queue full or no memory for a copy: write it ourselves */
    int rc = result(w, err);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int alloy_writer_flush(struct alloy_writer *w, struct alloy_err *err)
{
    pthread_mutex_lock(&w->mu);
    write_now(w, NULL, 0, 0); /* waits for the current writer, drains anything left */
    int rc = result(w, err);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void alloy_writer_free(struct alloy_writer *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->nq; i++) free(w->q[i].buf);
    for (int i = 0; i < w->nspare; i++) free(w->spare[i].buf);
    free(w->q);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
