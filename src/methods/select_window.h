/*
 * select_window.h — the window stage of select.c's sampled layout, shared
 * with the kernel tables that compile its pass (src/kernels/).
 *
 * DESIGN
 *   The window pass runs over every key of the tensor: each chunk collects
 *   the keys inside the window [lo, hi] in element order into its own
 *   bucket and counts those above it (no lock: one thread per chunk; the
 *   total is an atomic sum checked against the key budget). The portable
 *   body below is compiled for the scalar and AVX2 tables (integer
 *   operations, the same result); the AVX-512 table has its own
 *   compress-based version (kernels/avx512.c). select.c owns the window's
 *   life cycle and reads the buckets in chunk order. The records cover one
 *   driver window of chunks (method.h) at a time, from chunk `first`: when
 *   a tensor spans several, select.c moves each window's records into one
 *   combined record (`all`) at its fold, so they never number more than
 *   ALLOY_MAX_CHUNKS.
 */
#ifndef ALLOY_SELECT_WINDOW_H
#define ALLOY_SELECT_WINDOW_H

#include "methods/select.h"

#include "core/internal.h"

#include <stdatomic.h>

/* The window stage: per chunk, the count of keys above hi, the collected keys in element order and
 * (narrow windows) the per-bin counts of keys with zero low bits. Each chunk's record starts a cache
 * line of its own: neighbouring chunks run on different threads. */
struct sel_bucket {
    uint64_t above;
    uint32_t *keys;
    size_t n, cap;
    uint32_t zero[];           /* [nb] */
};

struct alloy_sel_window {
    uint32_t lo, hi;           /* whole level-0 bins: lo = blo << 16, hi = bhi << 16 | 0xffff */
    unsigned nb;               /* bins in the window */
    size_t nrec;               /* records: chunks first .. first + nrec - 1 */
    size_t first;              /* the chunk of record 0 (the driver window's first chunk) */
    struct sel_bucket *all;    /* the records of the windows folded so far (several windows only): keys in
                                  chunk order, chunk c's ending at all_end[c]; a narrow window's per-bin
                                  counts of chunk c at all_zero[c * nb] (the per-chunk tie counts) */
    uint64_t *all_end;
    uint32_t *all_zero;
    void *mem;                 /* the records, stride bytes each from the first 64-byte boundary */
    size_t stride;
    _Atomic uint64_t total;    /* keys collected over all chunks */
    atomic_int failed;         /* over window_keys, or out of memory: fall back to level 0 */
};

static inline struct sel_bucket *alloy_sel_bucket(const struct alloy_sel_window *w, size_t c)
{
    uintptr_t base = ((uintptr_t)w->mem + 63) & ~(uintptr_t)63;
    return (struct sel_bucket *)(void *)(base + c * w->stride);
}

/* The record of chunk `chunk`, or NULL if the chunk is outside the current driver window. */
static inline struct sel_bucket *alloy_sel_window_record(const struct alloy_sel_window *w, size_t chunk)
{
    size_t r = chunk - w->first; /* a chunk before `first` wraps past nrec */
    return r < w->nrec ? alloy_sel_bucket(w, r) : NULL;
}

/* Room for `need` keys in a chunk's bucket (doubling); 0, with the window failed, if out of memory. */
int alloy_sel_bucket_reserve(struct alloy_sel_window *w, struct sel_bucket *b, size_t need);

/* A narrow window (<= 8 bins) counts its keys with zero low bits per bin (bfloat16 data: most keys,
 * on a few exact values) with a vector compare per bin, and returns 0xffff: the mask that tells the
 * collecting loop to skip them; a wide one collects them with the others (returns 0). */
static ALLOY_INLINE uint32_t count_zero_low(const struct alloy_sel_window *w, struct sel_bucket *b,
                                         const uint32_t *keys, size_t n)
{
    if (w->nb > 8) return 0;
    for (unsigned z = 0; z < w->nb; z++) {
        const uint32_t zk = w->lo + ((uint32_t)z << 16);
        uint32_t cnt = 0;
        for (size_t e = 0; e < n; e++) cnt += keys[e] == zk; /* vectorized */
        b->zero[z] += cnt;
    }
    return 0xffffu;
}

/* The window pass over the next n keys of a chunk (select.h alloy_sel_window_stage), compiled into each
 * kernel table (src/kernels/). */
static ALLOY_INLINE void alloy_sel_window_add_body(const struct alloy_select *s, size_t chunk, const uint32_t *keys,
                                                  size_t n)
{
    struct alloy_sel_window *w = s->window;
    struct sel_bucket *b = w ? alloy_sel_window_record(w, chunk) : NULL;
    if (!b || atomic_load_explicit(&w->failed, memory_order_relaxed)) return;
    const uint32_t lo = w->lo, hi = w->hi, span = hi - lo;
    const uint32_t zlow = count_zero_low(w, b, keys, n);
    for (size_t e0 = 0; e0 < n; e0 += 256) {
        size_t m = n - e0 < 256 ? n - e0 : 256;
        const uint32_t *k = keys + e0;
        uint8_t take[256 + 8];
        uint32_t above = 0, in = 0;
        if (zlow) { /* vectorized */
            for (size_t e = 0; e < m; e++) {
                above += k[e] > hi;
                take[e] = (uint8_t)((k[e] - lo <= span) & ((k[e] & 0xffffu) != 0));
                in += take[e];
            }
        } else {
            for (size_t e = 0; e < m; e++) {
                above += k[e] > hi;
                take[e] = (uint8_t)(k[e] - lo <= span);
                in += take[e];
            }
        }
        b->above += above;
        if (!in) continue;
        if (atomic_fetch_add_explicit(&w->total, in, memory_order_relaxed) + in > s->window_keys) {
            atomic_store_explicit(&w->failed, 1, memory_order_relaxed);
            return;
        }
        if (!alloy_sel_bucket_reserve(w, b, b->n + m)) return; /* the whole block: the copy writes before it tests */
        memset(take + m, 0, 8);
        uint32_t *dst = b->keys;
        size_t j = b->n;
        for (size_t g = 0; g < m; g += 8) { /* most groups of 8 take nothing */
            uint64_t any;
            memcpy(&any, take + g, sizeof any);
            if (!any) continue;
            size_t gm = m - g < 8 ? m - g : 8;
            for (size_t i = 0; i < gm; i++) {
                dst[j] = k[g + i];
                j += take[g + i];
            }
        }
        b->n = j;
    }
}

#endif
