/*
 * writer.h — one output file written by whichever worker finds it idle.
 *
 * DESIGN
 *   Workers finish output chunks in any order and each used to pwrite its
 *   own: concurrent writes to one file serialise on the kernel's inode lock,
 *   and the waiting thread spins on it (rwsem_spin_on_owner: up to a fifth
 *   of a merge's CPU time here), so a core that could be merging waits for
 *   the other's copy into the page cache. Now the first worker to submit
 *   while the file is idle writes its chunk and then drains what the others
 *   queued meanwhile, in file order; the others copy their chunk into the
 *   queue (at most ALLOY_WRITE_QUEUE bytes) and go back to merging. With
 *   the queue full (or no memory for a copy) a worker waits for the file
 *   and writes its chunk itself. So the writes are one thread's sequential
 *   stream, overlapped with the other threads' compute, in bounded memory:
 *   the queue, plus as much again of written-out buffers kept for reuse (no
 *   allocation and page faults per chunk).
 *
 *   Errors: the first failed write is kept and returned by every later
 *   submit and by alloy_writer_flush, which waits until nothing is queued
 *   or being written (call it before sync_file_range/fsync of the data).
 */
#ifndef ALLOY_WRITER_H
#define ALLOY_WRITER_H

#include "alloy.h"

#include <stddef.h>
#include <stdint.h>

#define ALLOY_WRITE_QUEUE ((size_t)16 << 20)

struct alloy_writer;

/* A writer for fd (path: for messages); NULL if out of memory. */
struct alloy_writer *alloy_writer_new(int fd, const char *path);
/* Writes len bytes of buf at off, now or later (then from a copy: buf may be reused on return). */
int  alloy_writer_submit(struct alloy_writer *w, const void *buf, size_t len, uint64_t off, struct alloy_err *err);
/* Waits until every submitted byte is written; the first write error, if any. */
int  alloy_writer_flush(struct alloy_writer *w, struct alloy_err *err);
/* Frees the writer (after a flush; queued bytes not yet written are dropped). */
void alloy_writer_free(struct alloy_writer *w);

#endif
