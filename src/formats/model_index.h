/*
 * model_index.h — a model.safetensors.index.json (or pytorch_model.bin.index.json) read in pieces.
 *
 * The index's text is never held whole: it is walked through a fixed-size
 * window (formats/json_members.h), and what stays is its entries: each
 * tensor name (in an arena) with its shard number, in a map sized once.
 */
#ifndef ALLOY_FORMATS_MODEL_INDEX_H
#define ALLOY_FORMATS_MODEL_INDEX_H

#include "core/arena.h"
#include "core/strmap.h"

#include <stddef.h>

struct alloy_err;

/* The default window: the bytes of index text held at once (a member longer than it grows it). */
#define ALLOY_INDEX_WINDOW ((size_t)1 << 20)
/* The largest index read, as for any JSON file alloy reads whole before. */
#define ALLOY_INDEX_MAX ((size_t)256 << 20)

struct alloy_index {
    struct alloy_strmap names; /* tensor name -> entry number (index order) */
    struct alloy_arena arena;  /* the names and the shard file names */
    const char **strs;         /* entry i's name */
    size_t *shard;             /* entry i's shard number (order of first appearance) */
    size_t n;
};

/* Opens the shard fname, named first by entry key, as shard number *k (the next one); 0 or an error code. */
typedef int (*alloy_index_shard_fn)(void *ctx, const char *key, const char *fname, size_t *k);

/* Reads the index at path through a window of `window` bytes (0: ALLOY_INDEX_WINDOW), calling open_shard for
 * each shard name the first time it appears. On error *ix is freed. */
int alloy_index_read(const char *path, size_t window, alloy_index_shard_fn open_shard, void *ctx,
                     struct alloy_index *ix, struct alloy_err *err);
void alloy_index_free(struct alloy_index *ix);

/* The window alloy_model_open reads an index through (tests split an index at every byte; 0: the default). */
void alloy_index_set_window(size_t bytes);
size_t alloy_index_window(void);

#endif
