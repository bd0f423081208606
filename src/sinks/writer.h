/*
 * writer.h — one output file, staged in aligned segments and written by its
 * own I/O thread.
 *
 * DESIGN
 *   Workers finish output chunks in (almost) file order. Each submit copies
 *   the chunk's bytes into the staging segment(s) that cover them: file
 *   bytes [k S, (k + 1) S) of segment k, S = ALLOY_WRITE_SEGMENT, in one of
 *   ALLOY_WRITE_SLOTS page-aligned buffers. The copies run outside the lock,
 *   so workers fill the same segment side by side. Once a segment's bytes
 *   are all there it is queued, and the writer's I/O thread writes it with
 *   one pwrite of S bytes at k S, lowest segment first: through an O_DIRECT
 *   descriptor when the file system takes one (ALLOY_WRITER_DIRECT), else
 *   through the page cache followed by sync_file_range so writeback starts
 *   at once.
 *
 *   Why O_DIRECT: a buffered write allocates a page-cache page for every
 *   output byte, copies into it in the kernel and has kworkers write it
 *   back, taking ext4's allocation locks against the writing thread (what
 *   that cost is in docs/performance.md). Direct writes move the segment from the staging buffer to
 *   the disk, with the worker that filled it already merging again and the
 *   I/O thread asleep on the disk. The inputs' page cache is not evicted by
 *   the output either.
 *
 *   Anything that does not fit this stream is written at once, buffered, by
 *   the thread that submitted it: a piece that would open a segment when
 *   every slot holds an unfinished one (a submit order far from file order),
 *   or a segment filled in more than a few separate pieces. A direct write
 *   that comes back short (or refused with EINVAL: alignment rules of the
 *   file system) finishes buffered, and EINVAL turns direct writes off.
 *   Every byte is submitted once, and a segment is only written whole when
 *   all its bytes were copied into it, so the two paths never overlap;
 *   alloy_writer_flush writes the unfinished segments buffered (the file's
 *   last segment, normally) and waits for the I/O thread. Memory: the slots,
 *   ALLOY_WRITE_SLOTS x ALLOY_WRITE_SEGMENT bytes (16 MiB), allocated as
 *   first used.
 *
 *   Errors: the first failed write is kept and returned by every later
 *   submit and by alloy_writer_flush.
 */
#ifndef ALLOY_WRITER_H
#define ALLOY_WRITER_H

#include "alloy.h"

#include <stddef.h>
#include <stdint.h>

#define ALLOY_WRITE_SEGMENT ((size_t)2 << 20)
#define ALLOY_WRITE_SLOTS 8

enum {
    ALLOY_WRITER_DIRECT = 1, /* write whole segments with O_DIRECT (reopening path) when the file system allows */
};

struct alloy_writer;

/* A writer for fd, the file at path (reopened with O_DIRECT for ALLOY_WRITER_DIRECT; named in messages).
 * NULL when out of memory or without a thread, with err set. */
struct alloy_writer *alloy_writer_new(int fd, const char *path, unsigned flags, struct alloy_err *err);
/* 1 when segments are written with O_DIRECT. */
int  alloy_writer_direct(const struct alloy_writer *w);
/* Puts len bytes of buf at file offset off (buf may be reused on return). Every byte of the file is
 * submitted at most once. The first write error, if any. */
int  alloy_writer_submit(struct alloy_writer *w, const void *buf, size_t len, uint64_t off, struct alloy_err *err);
/* The same for len bytes that fill(ctx, dst, from, n) produces, bytes [from, from + n) of them at dst,
 * called piece by piece in order (each byte once) on the submitting thread: a caller that converts
 * its data writes it straight into the staging segment. */
typedef void (*alloy_writer_fill_fn)(void *ctx, uint8_t *dst, size_t from, size_t n);
int  alloy_writer_submit_fill(struct alloy_writer *w, uint64_t off, size_t len, alloy_writer_fill_fn fill, void *ctx,
                              struct alloy_err *err);
/* n float32 values converted to dtype (a plain float type: F32, F16, BF16) at off, rounding once; adds the
 * NaN/Inf values converted to *nonfinite. */
int  alloy_writer_submit_f32(struct alloy_writer *w, uint64_t off, const float *src, size_t n, enum alloy_dtype dtype,
                             uint64_t *nonfinite, struct alloy_err *err);
/* After the last submit: writes what is still staged and waits until every byte is written; the first
 * write error, if any. */
int  alloy_writer_flush(struct alloy_writer *w, struct alloy_err *err);
/* Stops the I/O thread and frees the writer (staged bytes not yet written are dropped). */
void alloy_writer_free(struct alloy_writer *w);

#endif
