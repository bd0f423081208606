/*
 * writer.c — one output file staged in aligned segments, written by its
 * own I/O thread (writer.h has the design).
 *
 * State under one mutex: the slots (each free, open = being filled, queued
 * = complete and waiting for the I/O thread, or writing), the first error
 * and the stop flag. One condition variable announces every change a
 * waiter may need: a slot freed or queued, a copy finished, stop. A slot's
 * filled bytes are recorded as spans when a copy is reserved; it is queued
 * by whichever copier finishes last once the spans cover it whole, so the
 * I/O thread never writes a buffer that is still being filled.
 */
#include "sinks/writer.h"

#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#define SEG ALLOY_WRITE_SEGMENT
#define NSLOT ALLOY_WRITE_SLOTS
#define NSPAN 8          /* separate filled pieces one segment may hold */
#define BUF_ALIGN 4096   /* O_DIRECT: buffer address, file offset and length multiples of the block size */

enum slot_state { SLOT_FREE, SLOT_OPEN, SLOT_QUEUED, SLOT_WRITING };

struct span {
    size_t lo, hi;       /* bytes [lo, hi) of the segment */
};

struct slot {
    enum slot_state state;
    uint64_t index;      /* the segment: file bytes [index * SEG, (index + 1) * SEG) */
    uint8_t *buf;        /* SEG bytes, BUF_ALIGN-aligned, kept for the next segment */
    int copiers;         /* threads copying into buf outside the lock */
    int nspan;
    struct span span[NSPAN]; /* sorted, disjoint and not adjacent */
};

struct alloy_writer {
    int fd;              /* the caller's descriptor (buffered writes) */
    int dfd;             /* O_DIRECT descriptor of the same file, -1 without */
    int direct;          /* segments go through dfd (cleared when the file system refuses) */
    const char *path;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t io;
    int stop;
    struct slot slot[NSLOT];
    int rc;              /* first write error */
    struct alloy_err err;
};

/* Lock held. */
static void keep_error(struct alloy_writer *w, int rc, const struct alloy_err *e)
{
    if (rc && !w->rc) {
        w->rc = rc;
        w->err = *e;
    }
}

static int result(struct alloy_writer *w, struct alloy_err *err)
{
    int rc = w->rc;
    if (rc && err) *err = w->err;
    return rc;
}

/* Records bytes [lo, hi) as filled, merging with the spans they touch; -1 when that needs a span more than
 * NSPAN. */
static int span_add(struct slot *s, size_t lo, size_t hi)
{
    int i = 0;
    while (i < s->nspan && s->span[i].hi < lo) i++;
    int j = i;
    for (; j < s->nspan && s->span[j].lo <= hi; j++) {
        if (s->span[j].lo < lo) lo = s->span[j].lo;
        if (s->span[j].hi > hi) hi = s->span[j].hi;
    }
    if (j == i && s->nspan == NSPAN) return -1;
    memmove(&s->span[i + 1], &s->span[j], (size_t)(s->nspan - j) * sizeof *s->span);
    s->span[i] = (struct span){lo, hi};
    s->nspan += 1 - (j - i);
    return 0;
}

static int slot_full(const struct slot *s) { return s->nspan == 1 && s->span[0].lo == 0 && s->span[0].hi == SEG; }

/* Lock held: the slot to copy bytes [lo, hi) of segment k into, with the span recorded and the copy
 * counted; NULL when the bytes should go straight to the file (too many pieces, every slot holding an
 * unfinished segment, or no memory for a buffer). Waits while slots are on their way to the disk. */
static struct slot *reserve(struct alloy_writer *w, uint64_t k, size_t lo, size_t hi)
{
    for (;;) {
        struct slot *open = NULL, *fresh = NULL;
        int pending = 0;
        for (int i = 0; i < NSLOT; i++) {
            struct slot *s = &w->slot[i];
            if (s->state == SLOT_OPEN && s->index == k) open = s;
            else if (s->state == SLOT_FREE && !fresh) fresh = s;
            else if (s->state == SLOT_QUEUED || s->state == SLOT_WRITING) pending = 1;
        }
        if (open) {
            if (span_add(open, lo, hi)) return NULL;
            open->copiers++;
            return open;
        }
        if (fresh) {
            if (!fresh->buf && !(fresh->buf = alloy_xaligned(BUF_ALIGN, SEG))) return NULL;
            fresh->state = SLOT_OPEN;
            fresh->index = k;
            fresh->nspan = 0;
            fresh->copiers = 1;
            span_add(fresh, lo, hi);
            return fresh;
        }
        if (!pending) return NULL;
        pthread_cond_wait(&w->cv, &w->mu);
    }
}

/* Writes a whole segment at off: direct when dfd >= 0 (a short write finishes buffered; EINVAL sets
 * *refused and writes it buffered), else buffered with writeback started at once. */
static int write_segment(struct alloy_writer *w, int dfd, const uint8_t *buf, uint64_t off, int *refused,
                         struct alloy_err *e)
{
    size_t done = 0;
    if (dfd >= 0) {
        ssize_t n;
        do n = pwrite(dfd, buf, SEG, (off_t)off);
        while (n < 0 && errno == EINTR);
        if (n < 0 && errno == EINVAL) {
            *refused = 1;
            n = 0;
        } else if (n < 0) {
            return alloy_err_set(e, ALLOY_ERR_IO, "%s: write failed at offset %llu: %s", w->path,
                                 (unsigned long long)off, strerror(errno));
        }
        done = (size_t)n;
        if (done == SEG) return ALLOY_OK;
    }
    int rc = alloy_pwrite_all(w->fd, buf + done, SEG - done, off + done, w->path, e);
    if (!rc) sync_file_range(w->fd, (off64_t)off, (off64_t)SEG, SYNC_FILE_RANGE_WRITE);
    return rc;
}

/* The I/O thread: writes queued segments, lowest first, until stopped. */
static void *io_main(void *arg)
{
    struct alloy_writer *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct slot *s = NULL;
        for (int i = 0; i < NSLOT; i++)
            if (w->slot[i].state == SLOT_QUEUED && (!s || w->slot[i].index < s->index)) s = &w->slot[i];
        if (!s) {
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        s->state = SLOT_WRITING;
        int skip = w->rc != 0, dfd = w->direct ? w->dfd : -1, refused = 0, rc = ALLOY_OK;
        struct alloy_err e = {0};
        pthread_mutex_unlock(&w->mu);
        if (!skip) rc = write_segment(w, dfd, s->buf, s->index * SEG, &refused, &e);
        pthread_mutex_lock(&w->mu);
        if (refused) w->direct = 0;
        keep_error(w, rc, &e);
        s->state = SLOT_FREE;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

struct alloy_writer *alloy_writer_new(int fd, const char *path, unsigned flags, struct alloy_err *err)
{
    struct alloy_writer *w = alloy_xcalloc(1, sizeof *w);
    if (!w) {
        alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for the file's writer", path);
        return NULL;
    }
    w->fd = fd;
    w->dfd = -1;
    w->path = path;
#ifdef O_DIRECT
    if (flags & ALLOY_WRITER_DIRECT) w->dfd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC); /* -1: refused */
#endif
    w->direct = w->dfd >= 0;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    int e = pthread_create(&w->io, NULL, io_main, w);
    if (e) {
        alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: cannot start the file's writer thread: %s", path, strerror(e));
        if (w->dfd >= 0) close(w->dfd);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        return NULL;
    }
    return w;
}

int alloy_writer_direct(const struct alloy_writer *w)
{
    struct alloy_writer *m = (struct alloy_writer *)w; /* the lock, not the state, changes */
    pthread_mutex_lock(&m->mu);
    int d = m->direct;
    pthread_mutex_unlock(&m->mu);
    return d;
}

int alloy_writer_submit_fill(struct alloy_writer *w, uint64_t off, size_t len, alloy_writer_fill_fn fill, void *ctx,
                             struct alloy_err *err)
{
    size_t from = 0;
    pthread_mutex_lock(&w->mu);
    while (from < len && !w->rc) {
        uint64_t k = off / SEG;
        size_t lo = (size_t)(off - k * SEG), n = SEG - lo < len - from ? SEG - lo : len - from;
        struct slot *s = reserve(w, k, lo, lo + n);
        pthread_mutex_unlock(&w->mu);
        if (s) {
            fill(ctx, s->buf + lo, from, n);
            pthread_mutex_lock(&w->mu);
            if (--s->copiers == 0) {
                if (slot_full(s)) s->state = SLOT_QUEUED;
                pthread_cond_broadcast(&w->cv);
            }
        } else { /* straight to the file: the bytes never enter a slot, so no slot of segment k is ever full */
            uint8_t tmp[16384];
            struct alloy_err e = {0};
            int rc = ALLOY_OK;
            for (size_t d = 0; d < n && !rc; d += sizeof tmp) {
                size_t m = n - d < sizeof tmp ? n - d : sizeof tmp;
                fill(ctx, tmp, from + d, m);
                rc = alloy_pwrite_all(w->fd, tmp, m, off + d, w->path, &e);
            }
            pthread_mutex_lock(&w->mu);
            keep_error(w, rc, &e);
        }
        from += n;
        off += n;
    }
    int rc = result(w, err);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

static void fill_copy(void *ctx, uint8_t *dst, size_t from, size_t n)
{
    alloy_copy_stream(dst, (const uint8_t *)ctx + from, n);
}

int alloy_writer_submit(struct alloy_writer *w, const void *buf, size_t len, uint64_t off, struct alloy_err *err)
{
    return alloy_writer_submit_fill(w, off, len, fill_copy, (void *)(uintptr_t)buf, err);
}

int alloy_writer_flush(struct alloy_writer *w, struct alloy_err *err)
{
    pthread_mutex_lock(&w->mu);
    for (;;) {
        struct slot *open = NULL;
        int busy = 0;
        for (int i = 0; i < NSLOT; i++) {
            struct slot *s = &w->slot[i];
            if (s->copiers || s->state == SLOT_QUEUED || s->state == SLOT_WRITING) busy = 1;
            else if (s->state == SLOT_OPEN && !open) open = s;
        }
        if (open) { /* an unfinished segment (the file's last, normally): its pieces, buffered */
            open->state = SLOT_WRITING;
            struct span sp[NSPAN];
            int ns = w->rc ? 0 : open->nspan, rc = ALLOY_OK; /* after an error the file is discarded */
            memcpy(sp, open->span, (size_t)ns * sizeof *sp);
            struct alloy_err e = {0};
            pthread_mutex_unlock(&w->mu);
            for (int j = 0; j < ns && !rc; j++)
                rc = alloy_pwrite_all(w->fd, open->buf + sp[j].lo, sp[j].hi - sp[j].lo, open->index * SEG + sp[j].lo,
                                      w->path, &e);
            pthread_mutex_lock(&w->mu);
            keep_error(w, rc, &e);
            open->state = SLOT_FREE;
            pthread_cond_broadcast(&w->cv);
        } else if (busy) {
            pthread_cond_wait(&w->cv, &w->mu);
        } else {
            break;
        }
    }
    int rc = result(w, err);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void alloy_writer_free(struct alloy_writer *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->io, NULL);
    for (int i = 0; i < NSLOT; i++) free(w->slot[i].buf);
    if (w->dfd >= 0) close(w->dfd);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

/* A chunk's output bytes, converted from float32 as the writer asks for them (writer.h): through a
 * buffer that stays in L1, then streamed into the staging segment; an element a piece boundary cuts
 * is converted whole and only its bytes in the piece copied. */
struct out_fill {
    const float *src;
    enum alloy_dtype dtype;
    size_t esize;
    uint64_t nonfinite;     /* NaN/Inf values converted, each element counted once */
};

static void fill_out(void *ctx, uint8_t *dst, size_t from, size_t n)
{
    struct out_fill *f = ctx;
    uint8_t tmp[16384] __attribute__((aligned(64)));
    size_t e = from / f->esize, skip = from % f->esize;
    while (n) {
        size_t k = (skip + n + f->esize - 1) / f->esize; /* elements touching the rest */
        if (k > sizeof tmp / f->esize) k = sizeof tmp / f->esize;
        f->nonfinite += alloy_from_f32_count(f->dtype, f->src + e, tmp, k);
        if (skip) { /* counted with the piece before, which holds its first byte */
            uint32_t u;
            memcpy(&u, f->src + e, 4);
            f->nonfinite -= (u & 0x7f800000u) == 0x7f800000u;
        }
        size_t take = k * f->esize - skip < n ? k * f->esize - skip : n;
        alloy_copy_stream(dst, tmp + skip, take);
        dst += take;
        n -= take;
        e += k;
        skip = 0;
    }
}

int alloy_writer_submit_f32(struct alloy_writer *w, uint64_t off, const float *src, size_t n, enum alloy_dtype dtype,
                            uint64_t *nonfinite, struct alloy_err *err)
{
    struct out_fill fo = {src, dtype, alloy_dtype_traits(dtype)->block_bytes, 0};
    int rc = alloy_writer_submit_fill(w, off, n * fo.esize, fill_out, &fo, err);
    *nonfinite += fo.nonfinite;
    return rc;
}
