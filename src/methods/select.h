/*
 * select.h — exact top-k / k-th largest selection over a streamed tensor,
 * by radix selection on order-preserving float keys.
 *
 * DESIGN
 *   Merge methods see a tensor only chunk by chunk (methods/method.h), so a
 *   top-k threshold cannot come from sorting. Instead every float is mapped
 *   to a uint32 key whose unsigned order is the float order, and the k-th
 *   largest key is found digit by digit, most significant first, with one
 *   histogram scan pass per digit:
 *
 *       level 0: bits 31..21 (2048 bins)   all keys
 *       level 1: bits 20..10 (2048 bins)   only keys whose bits 31..21 match
 *       level 2: bits  9..0  (1024 bins)   only keys whose bits 31..10 match
 *
 *   so at most ALLOY_SEL_LEVELS (3) passes; a level whose chosen bin is
 *   kept entirely ends the selection early (no exact value needed then).
 *   Memory: one uint32 histogram of ALLOY_SEL_BINS per chunk accumulator and
 *   selection, plus, only when ties at the threshold are split, one uint64
 *   per chunk (and, in the wide layout below, a fixed 1 MiB total per
 *   selection during level 0; in the sampled layout, the window's keys,
 *   within a fixed budget) — never anything proportional to the element
 *   count.
 *
 *   Total order and tie rule. Elements are ordered by key, and among equal
 *   keys the LOWER element index counts as LARGER. "The k largest" is then
 *   a well-defined set: every element with key > thr, plus the first
 *   (lowest-index) `ties` elements with key == thr... split across chunks:
 *   chunk c keeps the first alloy_sel_chunk_ties(s, c) of its elements equal
 *   to thr, in element order. When the tensor is one driver window
 *   (method.h: at most ALLOY_MAX_CHUNKS chunks) the per-chunk tie counts
 *   come for free from the last level's per-chunk histograms (at level 2 a
 *   bin is one exact key; in the wide layout, the zero bin when it ends at
 *   level 1) or the window stage's per-chunk records. A larger tensor folds
 *   its histograms window by window (alloy_sel_fold), so those per-chunk
 *   counts are gone when the threshold is known: a split then takes one
 *   more pass, the tie stage, which counts each chunk's keys equal to thr
 *   (8 bytes per chunk of the tensor: O(n / 2^18)). A window stage keeps
 *   its collected keys in chunk order with each chunk's end, and a narrow
 *   window its per-chunk bin counts (8 + 4 x bins bytes per chunk), so it
 *   needs no tie pass. The kept set is the same either way. Two selections on the same keys (e.g. the top
 *   k1 and the top k2 < k1) are nested sets under this order.
 *
 *   Wide layout (alloy_sel_init_wide), for large tensors: two passes
 *   instead of three when the threshold key has its low 16 bits zero, as
 *   every magnitude of a bfloat16 value has (and most differences of two):
 *
 *       level 0: bits 31..16 (65536 bins)  all keys, counted per chunk into
 *                a local table and added, stripe by stripe under striped
 *                locks, into one total per selection (integer sums: order
 *                does not matter, so this is method.h's allowed exception;
 *                1 MiB with the sample stage's second half, allocated by
 *                the first chunk, freed at reduce)
 *       level 1: bits 15..6  (1024 bins)   per chunk, plus bin 1024: the keys
 *                equal to prefix << 16 (low 16 bits zero) — when the k-th
 *                key is that one, bin 1024 gives the per-chunk tie counts and
 *                the selection ends here
 *       level 2: bits  5..0  (64 bins)     per chunk, only otherwise
 *
 *   Both layouts select the same set: only the passes differ. At levels 1
 *   and 2 the keys inside the prefix can be a large, unpredictable fraction,
 *   so the histogram loop counts bin 0 (where a bfloat16 tensor's ties at
 *   the threshold land) with a vector compare and gathers the other
 *   matching keys' bins without a branch before counting them.
 *
 *   Sampled layout (alloy_sel_init_sampled), for tensors of many chunks:
 *   the wide layout's level 0 is first counted over a sample of the chunks
 *   only (method.h's sample passes; same counting calls). The sample places
 *   the k-th key, with a margin, inside a window of level-0 bins [lo, hi];
 *   one full pass then counts the keys above the window and collects the
 *   keys inside it, chunk by chunk (a kernel table's sel_window_add), and the exact
 *   k-th key and the per-chunk tie counts come from the collected keys in
 *   memory. A full pass costs a compare per key instead of a histogram
 *   increment, and the selection needs one full pass instead of two. The
 *   window is only tried when the sample expects at most 3/4 of the
 *   selection's budget (window_keys, ALLOY_SEL_WINDOW_KEYS unless the
 *   caller lowers it) in it; when the collection would exceed that, or the k-th key turns out to lie outside the window (an
 *   unrepresentative sample), the selection restarts at a full wide level
 *   0: slower, never different. A sample that covered every chunk is an
 *   exact level 0 and goes on as the wide layout.
 *
 *   Keys: alloy_sel_key() orders all floats (-NaN < -Inf < ... < -0 < +0 <
 *   ... < +Inf < +NaN; -0 and +0 are distinct keys). alloy_sel_key_abs()
 *   orders magnitudes |x| (NaN above Inf). Never mix the two in one
 *   selection.
 *
 * USAGE (inside a method; acc holds `uint32_t hist[ALLOY_SEL_BINS]`)
 *
 *   init:      alloy_sel_init(&s, n, k, want_value);
 *   want_pass: return alloy_sel_active(&s);
 *   scan:      for each element: int b = alloy_sel_bin(&s, key); if (b >= 0) acc->hist[b]++;
 *   fold:      alloy_sel_fold(&s, accs, first, count, nchunks, acc_size, offsetof(struct acc, hist), err);
 *   end_pass:  alloy_sel_end(&s, 0, nchunks, err);
 *   apply:     uint64_t t = alloy_sel_chunk_ties(&s, c->index);
 *              for each element: keep = alloy_sel_keep(&s, key, &t);
 *   fini:      alloy_sel_free(&s);
 *
 *   Wide: alloy_sel_init_wide() (may fail: out of memory); scan counts
 *   through alloy_sel_hist_keys() only, and at level 0
 *   (alloy_sel_wide_level0()) into a chunk-local table instead of acc:
 *              struct alloy_sel_local loc; alloy_sel_local_init(&loc);
 *              alloy_sel_hist_wide(&s, keys, n, &loc) per block of keys;
 *              alloy_sel_merge_wide(&sp, 1, &loc); alloy_sel_local_free(&loc);
 *   (sp = &s; several selections over the same keys share one count.)
 *
 * Thread safety: scan/apply only read the selection (a wide level 0 adds
 * into its shared counts under their locks); reduce/free write it.
 */
#ifndef ALLOY_SELECT_H
#define ALLOY_SELECT_H

#include "alloy.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ALLOY_SEL_BINS   2048
#define ALLOY_SEL_LEVELS 3

struct alloy_select {
    uint64_t n;          /* number of keys */
    uint64_t k;          /* wanted: the k largest (0 <= k <= n) */
    uint64_t rem;        /* rank still to find inside the current prefix (1-based) */
    uint32_t prefix;     /* key bits fixed by the levels done so far */
    int level;           /* next level 0..2; ALLOY_SEL_LEVELS when done */
    int want_value;      /* 1: always find the exact k-th key (no early exit) */
    /* Result (valid once !alloy_sel_active()): keep key > thr, plus ties == thr per chunk. */
    int64_t thr;         /* -1: keep everything */
    uint64_t n_gt;       /* keys strictly greater than thr */
    uint64_t n_eq;       /* keys equal to thr (0 if unknown after an early exit) */
    uint64_t n_tie;      /* of those, how many are kept (n_tie < n_eq: split ties) */
    uint32_t kth;        /* the k-th largest key, when kth_known */
    int kth_known;
    uint64_t *tie_before; /* split ties only: [nchunks] ties (== thr) in chunks before c (tie stage: in c) */
    size_t nchunks;
    uint64_t *fold_hist; /* a level's histogram summed over the driver windows folded so far */
    int folded;          /* the pass was reduced at its one fold (the tensor is one window) */
    int wide;            /* the wide layout (alloy_sel_init_wide) */
    struct alloy_sel_shared *shared; /* wide: level 0's total counts and their locks */
    int stage;           /* ALLOY_SEL_STAGE_*: sampled layout before the radix levels */
    uint64_t window_keys; /* sampled: most keys a window may collect (ALLOY_SEL_WINDOW_KEYS) */
    struct alloy_sel_window *window; /* window stage: the per-chunk collections */
};

enum {
    ALLOY_SEL_STAGE_LEVELS, /* radix levels (or done) */
    ALLOY_SEL_STAGE_SAMPLE, /* next pass: level-0 counts over a sample of chunks */
    ALLOY_SEL_STAGE_WINDOW, /* next pass: count above and collect inside the window */
    ALLOY_SEL_STAGE_TIES,   /* next pass: count each chunk's keys equal to thr (thr and n_tie are known) */
};

/* Most keys one sampled selection collects (32 MiB; keys with zero low 16 bits are counted per
 * bin instead; callers may lower it), and most level-0 bins its window spans. */
#define ALLOY_SEL_WINDOW_KEYS ((uint64_t)1 << 23)
#define ALLOY_SEL_WINDOW_BINS 256

#define ALLOY_SEL_WIDE_BINS 65536

/* A chunk's local level-0 counts of a wide selection (zero between
 * chunks); h NULL: counted straight into the shared total (slow; only when
 * the table could not be allocated). */
struct alloy_sel_local {
    uint32_t *h;         /* [2][ALLOY_SEL_WIDE_BINS]: all keys; zero low bits (sample stage) */
};

/* Order-preserving key of any float. */
static inline uint32_t alloy_sel_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Inverse of alloy_sel_key(). */
static inline float alloy_sel_unkey(uint32_t key)
{
    uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Order-preserving key of |f| (the bits of |f|). */
static inline uint32_t alloy_sel_key_abs(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x7fffffffu;
}

/* Inverse of alloy_sel_key_abs(): the magnitude. */
static inline float alloy_sel_unkey_abs(uint32_t key)
{
    float f;
    memcpy(&f, &key, sizeof f);
    return f;
}

/* Starts selecting the k largest of n keys (k is clamped to n). k == 0 and
 * k == n finish immediately (keep nothing / everything) unless want_value
 * asks for the exact k-th key (then 1 <= k <= n is required). A want_value
 * selection is for its k-th key: past one driver window it takes no tie
 * pass, and alloy_sel_chunk_ties/keep do not split its ties. */
void alloy_sel_init(struct alloy_select *s, uint64_t n, uint64_t k, int want_value);

/* Same selection in the wide layout (see DESIGN; want_value is not
 * supported). ALLOY_ERR_NOMEM if its lock block cannot be allocated. */
int alloy_sel_init_wide(struct alloy_select *s, uint64_t n, uint64_t k, struct alloy_err *err);

/* Same selection in the sampled layout (see DESIGN); like alloy_sel_init_wide. */
int alloy_sel_init_sampled(struct alloy_select *s, uint64_t n, uint64_t k, struct alloy_err *err);

/* 1 while another pass is needed. */
static inline int alloy_sel_active(const struct alloy_select *s)
{
    return s->level < ALLOY_SEL_LEVELS || s->stage == ALLOY_SEL_STAGE_TIES;
}

/* 1 when the next pass is a wide selection's level 0 (alloy_sel_hist_wide), over a sample of the
 * chunks or all of them (the sample stage counts the same way). */
static inline int alloy_sel_wide_level0(const struct alloy_select *s)
{
    return s->wide && s->level == 0 && s->stage != ALLOY_SEL_STAGE_WINDOW;
}

/* 1 when the next pass may scan a sample of the chunks (alloy_sel_reduce_sample after it). */
static inline int alloy_sel_sample_stage(const struct alloy_select *s)
{
    return s->level == 0 && s->stage == ALLOY_SEL_STAGE_SAMPLE;
}

/* 1 when the next pass collects the window (sel_window_add for every block of every chunk). */
static inline int alloy_sel_window_stage(const struct alloy_select *s)
{
    return s->level == 0 && s->stage == ALLOY_SEL_STAGE_WINDOW;
}

/* Window stage: the caller runs a kernel table's sel_window_add(s, chunk, keys, n) over the next n keys of
 * chunk `chunk`, in element order (one thread per chunk; kernels/kernels.h, select_window.h). */

/* Ends a sample-stage pass over nchunks chunks (sampled: only some of them were counted): places
 * the window, or (sampled 0) goes on as a finished wide level 0. ALLOY_ERR_NOMEM like reduce. */
int alloy_sel_reduce_sample(struct alloy_select *s, int sampled, size_t nchunks, struct alloy_err *err);

/* Histogram bin of `key` at the current level, or -1 if the key is outside
 * the prefix being refined (or the selection is done); in the tie stage,
 * bin 0 for a key equal to thr. Narrow layout only: wide selections count
 * with alloy_sel_hist_keys(). */
static inline int alloy_sel_bin(const struct alloy_select *s, uint32_t key)
{
    static const unsigned shift[ALLOY_SEL_LEVELS + 1] = {21, 10, 0, 0};
    static const unsigned pshift[ALLOY_SEL_LEVELS + 1] = {32, 21, 10, 0};
    static const uint32_t mask[ALLOY_SEL_LEVELS + 1] = {0x7ff, 0x7ff, 0x3ff, 0};
    int l = s->level;
    if (l >= ALLOY_SEL_LEVELS) return s->stage == ALLOY_SEL_STAGE_TIES && (int64_t)key == s->thr ? 0 : -1;
    if ((uint32_t)((uint64_t)key >> pshift[l]) != s->prefix) return -1;
    return (int)((key >> shift[l]) & mask[l]);
}

/* Adds keys to the chunk's histogram at the current level: alloy_sel_bin()
 * for each, hist[bin]++ where >= 0 (wide levels 1 and 2 likewise, with bin
 * 1024 at level 1; a wide level 0 goes to the shared total, slowly: use
 * alloy_sel_hist_wide; the tie stage counts keys equal to thr in hist[0]). */
void alloy_sel_hist_keys(const struct alloy_select *s, const uint32_t *keys, size_t n, uint32_t *hist);

/* Wide level 0: a chunk-local table (h NULL if it cannot be allocated),
 * counting keys into it, adding it to the totals of nsel selections at
 * their level 0 over the same keys (and emptying it for the next chunk),
 * freeing it. */
void alloy_sel_local_init(struct alloy_sel_local *l);
void alloy_sel_hist_wide(const struct alloy_select *s, const uint32_t *keys, size_t n, struct alloy_sel_local *l);
void alloy_sel_merge_wide(const struct alloy_select *const *sel, int nsel, struct alloy_sel_local *l);
void alloy_sel_local_free(struct alloy_sel_local *l);

/* Folds the current level's per-chunk histograms of the whole tensor at once (chunk c's histogram is at
 * (const char *)accs + c * acc_size + hist_offset, in chunk order; a wide
 * level 0 reads its shared total instead, a window stage its collections, which
 * cover at most ALLOY_MAX_CHUNKS chunks) and moves to the next level or
 * finishes. Allocates tie_before when the threshold splits ties;
 * ALLOY_ERR_NOMEM if that fails (or a wide level 0's total could not be
 * allocated during the pass). */
int alloy_sel_reduce(struct alloy_select *s, const void *accs, size_t nchunks, size_t acc_size, size_t hist_offset,
                     struct alloy_err *err);

/* A scan pass's accumulators for the chunks [first, first + count) of nchunks (method.h fold), then
 * the pass's end: a tensor that is one window (first 0, count nchunks) is reduced at the fold as
 * alloy_sel_reduce() does; a larger one sums each window's histograms (a window stage: its
 * collections) and reduces at the end, and a split of ties there starts the tie stage. `sampled`:
 * as for alloy_sel_reduce_sample, in the sample stage. ALLOY_ERR_NOMEM as reduce. */
int alloy_sel_fold(struct alloy_select *s, const void *accs, size_t first, size_t count, size_t nchunks,
                   size_t acc_size, size_t hist_offset, struct alloy_err *err);
int alloy_sel_end(struct alloy_select *s, int sampled, size_t nchunks, struct alloy_err *err);

/* Same, from one already-summed histogram (narrow layout); only valid when the caller
 * knows no per-chunk tie split is needed (e.g. want_value quantiles, or a
 * single chunk: then pass nchunks_total = 1). Returns ALLOY_ERR_NOMEM like
 * alloy_sel_reduce. */
int alloy_sel_reduce_total(struct alloy_select *s, const uint64_t *hist, struct alloy_err *err);

/* Ties (key == thr) that chunk c keeps: its first ones in element order. */
static inline uint64_t alloy_sel_chunk_ties(const struct alloy_select *s, size_t chunk)
{
    if (!s->tie_before) return s->n_tie;  /* no split: all or nothing, see alloy_sel_keep */
    uint64_t before = s->tie_before[chunk];
    return s->n_tie > before ? s->n_tie - before : 0;
}

/* Whether the next element (in element order within its chunk) with this
 * key is among the k largest; *ties is the chunk's remaining tie budget,
 * initialised from alloy_sel_chunk_ties(). */
static inline int alloy_sel_keep(const struct alloy_select *s, uint32_t key, uint64_t *ties)
{
    if ((int64_t)key > s->thr) return 1;
    if ((int64_t)key == s->thr && *ties) {
        (*ties)--;
        return 1;
    }
    return 0;
}

/* Block form of alloy_sel_keep() for the next n elements of a chunk (in
 * element order): mask[i] = ~0u if keys[i] is kept, else 0 — the same
 * decisions as n calls of alloy_sel_keep(). Branch-free except in the one
 * block per chunk where the tie budget runs out. */
void alloy_sel_keep_block_split(const struct alloy_select *s, const uint32_t *keys, size_t n, uint64_t *ties,
                                uint32_t *mask);
static inline void alloy_sel_keep_block(const struct alloy_select *s, const uint32_t *keys, size_t n,
                                        uint64_t *ties, uint32_t *mask)
{
    /* inline, so it is compiled for the caller's instruction set (gta.c's AVX2 apply) */
    const int64_t thr = s->thr;
    if (thr < 0) { /* keep everything */
        for (size_t e = 0; e < n; e++) mask[e] = ~0u;
        return;
    }
    if (thr > (int64_t)UINT32_MAX) { /* keep nothing (never: thr <= UINT32_MAX) */
        for (size_t e = 0; e < n; e++) mask[e] = 0;
        return;
    }
    const uint32_t t = (uint32_t)thr;
    if (*ties) {
        uint64_t eq = 0;
        for (size_t e = 0; e < n; e++) eq += keys[e] == t;
        if (eq > *ties) { /* the one block of the chunk where the budget runs out: element by element */
            alloy_sel_keep_block_split(s, keys, n, ties, mask);
            return;
        }
        for (size_t e = 0; e < n; e++) mask[e] = -(uint32_t)(keys[e] >= t); /* the budget covers them all */
        *ties -= eq;
        return;
    }
    for (size_t e = 0; e < n; e++) mask[e] = -(uint32_t)(keys[e] > t);
}

/* The k-th largest key as a float (alloy_sel_unkey / _unkey_abs of kth);
 * requires kth_known. */
static inline uint32_t alloy_sel_kth(const struct alloy_select *s) { return s->kth; }

void alloy_sel_free(struct alloy_select *s);

#endif
