/*
 * gta_loops.h — the task-arithmetic family's chunk loops (gta.h): what
 * scan() and apply() do to one chunk, block by block.
 *
 * DESIGN
 *   Read gta_apply_body (at the end) first: per row and block of GTA_BLK
 *   elements, for every model the delta X_i - B (block_delta), its trim
 *   (keep_block: a keep mask from the magnitude selection, the outlier
 *   window, or the random and della draws, or the keep bits the L1 pass
 *   recorded), the weight (and L1 rescale) applied under the mask; then
 *   merge_block elects the sign and merges the agreeing entries (TIES: trim
 *   -> elect sign -> disjoint merge), or sums them without consensus.
 *   gta_scan_body is the scan pass: the magnitude keys into the selections'
 *   histograms or windows, then the L1 sums of the kept deltas.
 *
 *   Keep masks are integer compares without a branch (alloy_sel_keep_block
 *   splits ties element by element only in the one block per chunk where
 *   the tie budget runs out). These bodies are inlined into each kernel
 *   table's scan and apply (src/kernels/: the portable build and an AVX2
 *   build of the same code, twice the lanes, the same operations in the
 *   same order, no FMA, so the same bits); they reach the table's other
 *   leaves through s->k: the draws, the selection's window pass, della's
 *   row limits and, where the table has them (AVX-512), the fused loops
 *   that keep the keep decisions in mask registers (kernels/gta_avx512.c).
 *   A raw chunk (ALLOY_INPUT_BF16_RAW) holds the stored bfloat16 values:
 *   the fused loops and della's key loop widen them in registers, blocks
 *   off the fused path are widened here (in_block).
 */
#ifndef ALLOY_GTA_LOOPS_H
#define ALLOY_GTA_LOOPS_H

#include "methods/gta.h"

#include "core/internal.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

/* The exact integer form of `u < p` for the draw u = x * 2^-32 of an element, x its 32-bit half of
 * one 64-bit hash (gta_draw_body): x * 2^-32 < p  <=>  x < ceil(p * 2^32) (p * 2^32 is exact), clamped
 * to [0, 2^32]; NaN keeps nothing, like the comparison. */
static inline uint64_t draw_threshold(double p)
{
    double t = p * 0x1p32;
    if (!(t > 0)) return 0;
    if (t >= 0x1p32) return (uint64_t)1 << 32;
    return (uint64_t)ceil(t);
}

/* ---------------------------------------------------------------- masks */

/* Per model and chunk: tie budgets of the selections, della's row limits and draw thresholds. */
struct gta_cursor {
    uint64_t ties[2];
    struct gta_della_row row; /* della: limits of the current row (no bucket nor elem: counted per element) */
    uint32_t xnext;           /* della: the row's next exception */
    const uint32_t *dmax;     /* della: largest kept draw by lim2 index (gta.h), NULL: computed per element */
};

static inline void cursor_init(const struct gta_model *m, size_t chunk, struct gta_cursor *cur)
{
    cur->ties[0] = m->nsel > 0 ? alloy_sel_chunk_ties(&m->sel[0], chunk) : 0;
    cur->ties[1] = m->nsel > 1 ? alloy_sel_chunk_ties(&m->sel[1], chunk) : 0;
    memset(&cur->row, 0, sizeof cur->row);
    cur->xnext = 0;
    cur->dmax = NULL;
}

/* Della's keep probability in a row of cols >= 2 elements at lim2 index s = 2 r - 1 (r: the 1-based mean
 * rank; s = 0, unused, as s = 1), as the largest draw kept: draw_threshold() - 1, which fits 32 bits as
 * the probability lies in (0, 1) (gta_check). p = (density - eps) + 2 eps (r - 1) / (cols - 1). */
static inline uint32_t della_keepmax(const struct gta_model *m, size_t s, size_t cols)
{
    double p = (m->density - m->extra) + m->extra * (double)(s ? s - 1 : 0) / (double)(cols - 1);
    uint64_t t = draw_threshold(p);
    return t ? (uint32_t)(t - 1) : 0; /* t >= 1 here */
}

/* Model m's table of keep limits for rows of cols >= 2 elements: lim2[s] for s = 0 .. 2 cols - 1. */
static inline void della_limits(const struct gta_model *m, size_t cols, uint32_t *lim2)
{
    for (size_t s = 0; s < 2 * cols; s++) lim2[s] = della_keepmax(m, s, cols);
}

/* Elements per block of the apply() and scan() loops. */
#define GTA_BLK 256

/* Random keep decisions of one block: keep[q] = ~0u iff x(e + q) < thr (or x(e + q) <= kmax[q] when
 * kmax is set), draw_threshold()'s integer form of `u < p`. Element e's 32 random bits x(e) are the low
 * (e even) or high (e odd) half of alloy_rng_u64(rk, e >> 1): one hash per two elements. The hash is
 * integer arithmetic, so any instruction set gives the same bits; AVX-512 has the 64-bit lane
 * multiplies that let the compiler vectorize it (the "avx512" kernel table's build). Comparisons are
 * signed: both sides are below 2^63. */
static ALLOY_INLINE void gta_draw_body(uint64_t rk, uint64_t e, size_t n, uint64_t thr, const uint32_t *restrict kmax,
                                       uint32_t *restrict keep)
{
    uint64_t h[GTA_BLK / 2 + 1];
    uint32_t x[GTA_BLK + 2];
    const uint64_t p0 = e >> 1;
    const size_t np = (size_t)(((e + n + 1) >> 1) - p0);
    for (size_t i = 0; i < np; i++) h[i] = alloy_rng_u64(rk, p0 + i);
    for (size_t i = 0; i < np; i++) {
        x[2 * i] = (uint32_t)h[i];
        x[2 * i + 1] = (uint32_t)(h[i] >> 32);
    }
    const uint32_t *xe = x + (e & 1);
    if (kmax) {
        for (size_t q = 0; q < n; q++) keep[q] = -(uint32_t)(xe[q] <= kmax[q]);
    } else {
        for (size_t q = 0; q < n; q++) keep[q] = -(uint32_t)((int64_t)xe[q] < (int64_t)thr);
    }
}

/* Elements [e, e + n) of input p (n <= GTA_BLK) as float32: in place, or widened into tmp when the inputs
 * are raw bfloat16 (a block off the fused path). */
static ALLOY_INLINE const float *in_block(const float *p, size_t e, size_t n, int raw, float *tmp)
{
    if (!raw) return p + e;
    alloy_to_f32(ALLOY_DTYPE_BF16, gta_in_at(p, e, 1), tmp, n);
    return tmp;
}

/* Deltas of one block: d[q] = xi[q] - b[q]. */
static ALLOY_INLINE void block_delta(const float *restrict xi, const float *restrict b, size_t n, float *restrict d)
{
    for (size_t q = 0; q < n; q++) d[q] = xi[q] - b[q];
}

/* Keep masks of a sparsified model (m->sparse) over one block: keep[q] = ~0u if it keeps element
 * e + q (global index) with delta d[q], else 0. Della: the block is [j0, j0 + n) of the row
 * xi/b of cols elements. Decisions per element as in the DESIGN note, consumed in element order. */
static ALLOY_INLINE void keep_block(const struct gta_state *s, const struct gta_model *m, struct gta_cursor *cur, uint64_t e,
                       const float *d, size_t n, size_t j0, const void *xi, const void *b, size_t cols, int raw,
                       uint32_t *restrict keep)
{
    uint32_t key[GTA_BLK];
    key[0] = 0; /* n >= 1; tells GCC's -O1 uninitialized-use analysis so */
    if (m->zero) {
        memset(keep, 0, n * sizeof *keep);
        return;
    }
    switch (s->kind->sparsify) {
    case GTA_SPARSIFY_MAGNITUDE:
        for (size_t q = 0; q < n; q++) key[q] = alloy_sel_key_abs(d[q]);
        alloy_sel_keep_block(&m->sel[0], key, n, &cur->ties[0], keep);
        return;
    case GTA_SPARSIFY_OUTLIERS: {
        uint32_t top[GTA_BLK];
        for (size_t q = 0; q < n; q++) key[q] = alloy_sel_key_abs(d[q]);
        alloy_sel_keep_block(&m->sel[0], key, n, &cur->ties[0], keep);
        alloy_sel_keep_block(&m->sel[1], key, n, &cur->ties[1], top); /* always: consumes its tie budget */
        for (size_t q = 0; q < n; q++) keep[q] &= ~top[q];
        return;
    }
    case GTA_SPARSIFY_RANDOM:
        s->k->gta_draw(m->rng_key, e, n, m->draw_thr, NULL, keep);
        return;
    case GTA_SPARSIFY_DELLA: {
        if (cols < 2) { /* mergekit: 0/0 rank normalisation (NaN, Bernoulli error): p = density */
            s->k->gta_draw(m->rng_key, e, n, m->draw_thr, NULL, keep);
            return;
        }
        uint32_t kmax[GTA_BLK];
        const struct gta_della_row *row = &cur->row;
        if (row->bucket) { /* the usual case: a gather from the row's bucket table, then its exceptions */
            const uint16_t *hk = row->hk + j0;
            for (size_t q = 0; q < n; q++) kmax[q] = row->bucket[hk[q]];
            for (; cur->xnext < row->nx && row->xcol[cur->xnext] < j0 + n; cur->xnext++)
                kmax[row->xcol[cur->xnext] - j0] = row->xlim[cur->xnext];
        } else if (row->elem) {
            memcpy(kmax, row->elem + j0, n * sizeof *kmax);
        } else {
            for (size_t q = 0; q < n; q++) {
                uint32_t i = gta_della_rank2(xi, b, cols, j0 + q, raw);
                kmax[q] = cur->dmax ? cur->dmax[i] : della_keepmax(m, i, cols);
            }
        }
        s->k->gta_draw(m->rng_key, e, n, 0, kmax, keep);
        return;
    }
    case GTA_SPARSIFY_NONE:
        break;
    }
    for (size_t q = 0; q < n; q++) keep[q] = ~0u;
}

/* Row blocks: della works row by row (chunks hold whole rows), the others on the whole chunk. */
static inline size_t row_len(const struct gta_state *s, const struct alloy_merge_job *job, size_t len)
{
    if (s->kind->sparsify == GTA_SPARSIFY_DELLA) {
        size_t cols = job->cols ? (size_t)job->cols : 1;
        return cols < len ? cols : len;
    }
    return len;
}

/* Della's per-call scratch: a row slot per model (gta_della_row), one sort scratch and the draw
 * thresholds of nr models. NULL when not della, rows shorter than 2, or out of memory (then
 * everything is computed per element). */
struct della_scratch {
    const struct alloy_kernels *k; /* della_row */
    uint64_t *sort;         /* GTA_DELLA_SORT(cols) */
    uint32_t *slot;         /* nr * GTA_DELLA_SLOT(cols) */
    uint32_t *kmax;         /* nr * 2 cols */
};

static inline void della_scratch_free(struct della_scratch *ds)
{
    free(ds->kmax);
    free(ds->slot);
    free(ds->sort);
    memset(ds, 0, sizeof *ds);
}

static inline int della_scratch_new(const struct gta_state *s, size_t cols, size_t nr, struct della_scratch *ds)
{
    memset(ds, 0, sizeof *ds);
    ds->k = s->k;
    if (s->kind->sparsify != GTA_SPARSIFY_DELLA || cols < 2) return 0;
    ds->kmax = alloy_xmalloc(nr * 2 * cols * sizeof *ds->kmax);
    ds->slot = alloy_xmalloc(nr * GTA_DELLA_SLOT(cols) * sizeof *ds->slot);
    ds->sort = alloy_xmalloc(GTA_DELLA_SORT(cols) * sizeof *ds->sort);
    if (!ds->kmax || !ds->slot || !ds->sort) {
        della_scratch_free(ds);
        return 0;
    }
    memset(ds->sort + GTA_DELLA_SORT_ZERO(cols), 0, (GTA_DELLA_SORT(cols) - GTA_DELLA_SORT_ZERO(cols)) * sizeof *ds->sort);
    return 1;
}

/* Points model m's cursor (slot i of the scratch) at its keep limits: the table gta_init made, or
 * computed into the scratch per call (not per row). */
static inline void della_scratch_thresholds(const struct della_scratch *ds, const struct gta_model *m, size_t i,
                                     size_t cols, struct gta_cursor *cur)
{
    if (!ds->kmax || !m->sparse || m->zero) return;
    if (m->della_kmax) {
        cur->dmax = m->della_kmax;
        return;
    }
    uint32_t *km = ds->kmax + i * 2 * cols;
    della_limits(m, cols, km);
    cur->dmax = km;
}

/* The limits of model m's row at xi/b (slot i of the scratch). */
static inline void della_scratch_row(const struct della_scratch *ds, const struct gta_model *m, size_t i,
                              const void *xi, const void *b, size_t cols, int raw, struct gta_cursor *cur)
{
    if (!ds->sort || !m->sparse || m->zero) return;
    ds->k->della_row(xi, b, cols, cur->dmax, ds->slot + i * GTA_DELLA_SLOT(cols), ds->sort, raw, &cur->row);
    cur->xnext = 0;
}

/* Bit i of a 32-bit word, for the bitmap loops (vectorized as lane masks). */
static const uint32_t g_lane_bit[32] = {
    1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,
    1u << 8,  1u << 9,  1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15,
    1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21, 1u << 22, 1u << 23,
    1u << 24, 1u << 25, 1u << 26, 1u << 27, 1u << 28, 1u << 29, 1u << 30, 1u << 31};

/* Keep bitmaps: bits [e, e + n) of map from keep[] (bitmap zeroed before the pass; each bit is
 * written once). Words inside the chunk [c0, c1) belong to this call's chunk alone; a word that
 * reaches into a neighbouring chunk is OR-ed atomically, since that chunk may run at the same time. */
static inline void bits_store(_Atomic uint64_t *map, uint64_t e, const uint32_t *keep, size_t n, uint64_t c0, uint64_t c1)
{
    for (size_t q = 0; q < n;) {
        uint64_t w = (e + q) >> 6;
        unsigned bit = (unsigned)((e + q) & 63);
        size_t take = 64 - bit < n - q ? 64 - bit : n - q;
        uint64_t v = 0;
        if (take == 64) { /* a whole word (the usual case): an OR of lane bits, vectorized */
            uint32_t lo = 0, hi = 0;
            for (size_t i = 0; i < 32; i++) lo |= keep[q + i] & g_lane_bit[i];
            for (size_t i = 0; i < 32; i++) hi |= keep[q + 32 + i] & g_lane_bit[i];
            v = (uint64_t)hi << 32 | lo;
        } else {
            for (size_t i = 0; i < take; i++) v |= (uint64_t)(keep[q + i] & 1) << (bit + i);
        }
        if (w * 64 < c0 || w * 64 + 64 > c1)
            atomic_fetch_or_explicit(&map[w], v, memory_order_relaxed);
        else if (take == 64) /* the whole word, written once: no read first (a read would map the zero
                                page, and the write after it copy the page and flush the other threads' TLBs) */
            atomic_store_explicit(&map[w], v, memory_order_relaxed);
        else
            atomic_store_explicit(&map[w], atomic_load_explicit(&map[w], memory_order_relaxed) | v,
                                  memory_order_relaxed);
        q += take;
    }
}

/* keep[q] = ~0u if bit e + q of map is set, else 0 (after the pass: the pool's barrier orders it). */
static ALLOY_INLINE void bits_load(_Atomic uint64_t *map, uint64_t e, size_t n, uint32_t *restrict keep)
{
    for (size_t q = 0; q < n;) {
        unsigned bit = (unsigned)((e + q) & 63);
        size_t take = 64 - bit < n - q ? 64 - bit : n - q;
        uint64_t v = atomic_load_explicit(&map[(e + q) >> 6], memory_order_relaxed) >> bit;
        if (take == 64) { /* whole words (the usual case): lane masks, vectorized */
            uint32_t lo = (uint32_t)v, hi = (uint32_t)(v >> 32);
            for (size_t i = 0; i < 32; i++) keep[q + i] = -(uint32_t)((lo & g_lane_bit[i]) != 0);
            for (size_t i = 0; i < 32; i++) keep[q + 32 + i] = -(uint32_t)((hi & g_lane_bit[i]) != 0);
        } else {
            for (size_t i = 0; i < take; i++) keep[q + i] = -(uint32_t)((v >> i) & 1);
        }
        q += take;
    }
}

/* ---------------------------------------------------------------- scan passes */

#define GTA_L1_LANES 8

/* L1 sums of one block: lane[q % 8] += |d[q]| (before) and the same for kept entries (after; a
 * dropped one adds +0: after >= +0, so that changes nothing). */
static ALLOY_INLINE void l1_block(const float *restrict d, const uint32_t *restrict keep, size_t n,
                                double *restrict before, double *restrict after)
{
    size_t q = 0;
#ifdef __GNUC__
    /* GCC does not vectorize eight fixed reduction lanes by itself: vector types, lanes 0-3 and 4-7 */
    typedef double v4d __attribute__((vector_size(32)));
    typedef float v4f __attribute__((vector_size(16)));
    typedef int32_t v4i __attribute__((vector_size(16)));
    const v4i nosign = {INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX};
    v4d b[2], k[2];
    memcpy(b, before, sizeof b);
    memcpy(k, after, sizeof k);
    for (; q + GTA_L1_LANES <= n; q += GTA_L1_LANES)
        for (int h = 0; h < 2; h++) {
            v4i f, m;
            memcpy(&f, d + q + 4 * h, sizeof f);
            memcpy(&m, keep + q + 4 * h, sizeof m);
            f &= nosign; /* |d|, then masked in float (keep is 0 or -1): exact, so the same doubles */
            b[h] += __builtin_convertvector((v4f)f, v4d);
            k[h] += __builtin_convertvector((v4f)(f & m), v4d);
        }
    memcpy(before, b, sizeof b);
    memcpy(after, k, sizeof k);
#endif
    for (; q < n; q++) { /* the tail (and without GCC's vectors, everything), lane q % 8 as above */
        double a = fabs((double)d[q]);
        before[q % GTA_L1_LANES] += a;
        after[q % GTA_L1_LANES] += keep[q] ? a : 0.0;
    }
}

static inline double l1_fold(const double *lane)
{
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

static ALLOY_INLINE void gta_scan_body(const struct alloy_merge_job *job, const struct gta_state *s,
                                 const struct alloy_chunk *c, const float *const *x, void *acc)
{
    size_t len = (size_t)(c->e1 - c->e0);
    const float *b = x[s->base];
    uint32_t *hist0 = (uint32_t *)(void *)((uint8_t *)acc + sizeof(struct gta_acc_head));
    struct alloy_sel_local loc = {NULL}; /* a wide level 0's table, shared by the slots */
    int have_loc = 0;
    for (int h = 0, h1; h < s->n_hist; h = h1) {
        /* slots h .. h1-1: one model's selections (outliers: two), over the same keys; those at a wide
           level 0 share one count */
        const struct gta_model *m = &s->m[s->hist_model[h]];
        const float *xi = x[m->input];
        const struct alloy_select *wide[2];
        int nwide = 0;
        for (h1 = h; h1 < s->n_hist && s->hist_model[h1] == s->hist_model[h]; h1++)
            if (alloy_sel_wide_level0(&m->sel[s->hist_sel[h1]]) && nwide < 2) wide[nwide++] = &m->sel[s->hist_sel[h1]];
        if (nwide && !have_loc) {
            alloy_sel_local_init(&loc);
            have_loc = 1;
        }
        for (size_t e = 0; e < len; e += GTA_BLK) {
            size_t n = len - e < GTA_BLK ? len - e : GTA_BLK;
            uint32_t key[GTA_BLK];
            for (size_t q = 0; q < n; q++) key[q] = alloy_sel_key_abs(xi[e + q] - b[e + q]);
            for (int w = 0; w < nwide; w++)
                if (w == 0 || !loc.h) alloy_sel_hist_wide(wide[w], key, n, &loc); /* no table: each its own */
            for (int t = h; t < h1; t++) {
                const struct alloy_select *sel = &m->sel[s->hist_sel[t]];
                if (alloy_sel_window_stage(sel))
                    s->k->sel_window_add(sel, c->index, key, n);
                else if (!alloy_sel_wide_level0(sel))
                    alloy_sel_hist_keys(sel, key, n, hist0 + (size_t)t * ALLOY_SEL_BINS);
            }
        }
        if (nwide) alloy_sel_merge_wide(wide, nwide, &loc);
    }
    if (have_loc) alloy_sel_local_free(&loc);
    if (!s->n_l1) return;
    struct gta_acc_head *head = acc;
    size_t cols = row_len(s, job, len);
    struct della_scratch ds;
    della_scratch_new(s, cols, 1, &ds);
    for (int l = 0; l < s->n_l1; l++) {
        const struct gta_model *m = &s->m[s->l1_model[l]];
        const float *xi = x[m->input];
        struct gta_cursor cur;
        cursor_init(m, c->index, &cur);
        della_scratch_thresholds(&ds, m, 0, cols, &cur);
        /* eight partial sums (element q of a block into lane q % 8), folded in a fixed order: the
           same bits on any instruction set and thread count, and a vectorized loop */
        double before[GTA_L1_LANES] = {0}, after[GTA_L1_LANES] = {0};
        const int raw = c->input == ALLOY_INPUT_BF16_RAW;
        for (size_t r0 = 0; r0 < len; r0 += cols) {
            della_scratch_row(&ds, m, 0, gta_in_at(xi, r0, raw), gta_in_at(b, r0, raw), cols, raw, &cur);
            for (size_t j0 = 0; j0 < cols; j0 += GTA_BLK) {
                size_t n = cols - j0 < GTA_BLK ? cols - j0 : GTA_BLK, e = r0 + j0;
                float d[GTA_BLK];
                uint32_t keep[GTA_BLK];
                if (s->k->gta_scan_fused && !m->zero && (c->e0 + e) % 64 == 0 && n % 64 == 0 &&
                    (s->kind->sparsify == GTA_SPARSIFY_RANDOM ||
                     (s->kind->sparsify == GTA_SPARSIFY_DELLA && cols >= 2 && cur.row.bucket))) {
                    s->k->gta_scan_fused(m, s->kind->sparsify == GTA_SPARSIFY_DELLA ? &cur.row : NULL, &cur.xnext,
                                          c->e0 + e, gta_in_at(xi, e, raw), gta_in_at(b, e, raw), raw, n, j0, c->e0,
                                          c->e1, before, after);
                    continue;
                }
                float tx[GTA_BLK], tb[GTA_BLK];
                block_delta(in_block(xi, e, n, raw, tx), in_block(b, e, n, raw, tb), n, d);
                keep_block(s, m, &cur, c->e0 + e, d, n, j0, gta_in_at(xi, r0, raw), gta_in_at(b, r0, raw), cols, raw,
                           keep);
                if (m->keep_bits) bits_store(m->keep_bits, c->e0 + e, keep, n, c->e0, c->e1);
                l1_block(d, keep, n, before, after);
            }
        }
        head->l1[l][0] = l1_fold(before);
        head->l1[l][1] = l1_fold(after);
    }
    della_scratch_free(&ds);
}

/* ---------------------------------------------------------------- apply */

/* TIES' first step for model m over one block of n elements (element e of the chunk, [j0, j0 + n) of
 * its row at r0): Dj = keep ? cj * (xi - b) : +0, the delta trimmed by the keep mask (keep_block, or the
 * bits the L1 pass recorded) and weighted (cj: weight times L1 rescale). bb: the base's block as
 * float32; tx: room for the model's block widened from raw bfloat16. */
static ALLOY_INLINE void trimmed_delta(const struct gta_state *s, const struct gta_model *m, struct gta_cursor *cur,
                                       const struct alloy_chunk *c, const float *xi, const float *b,
                                       const float *bb, size_t r0, size_t j0, size_t n, size_t cols, int raw,
                                       float cj, float *tx, float *restrict Dj)
{
    const size_t e = r0 + j0;
    block_delta(in_block(xi, e, n, raw, tx), bb, n, Dj);
    if (!m->sparse) {
        for (size_t q = 0; q < n; q++) Dj[q] *= cj;
        return;
    }
    uint32_t keep[GTA_BLK];
    if (m->keep_bits)
        bits_load(m->keep_bits, c->e0 + e, n, keep);
    else
        keep_block(s, m, cur, c->e0 + e, Dj, n, j0, xi + r0, b + r0, cols, 0, keep); /* not raw */
    for (size_t q = 0; q < n; q++) { /* keep ? cj * d : +0, on the bits */
        float v = cj * Dj[q];
        uint32_t u;
        memcpy(&u, &v, sizeof u);
        u &= keep[q];
        memcpy(&Dj[q], &u, sizeof u);
    }
}

/* The sums over models below run in model order. Zero entries and disagreeing signs add +0, which
 * leaves a sum's bits unchanged (none of them is ever -0); every sum starts as 0 + its first term
 * (not the term itself: 0 + -0 is +0). nm >= 1. */

/* TIES' second step: the elected sign of each element is that of sum[q] = sum_j D[j][q] (0 counts
 * as +), in float32 like the deltas. */
static ALLOY_INLINE void elect_sign(int nm, float (*D)[GTA_BLK], size_t n, float *restrict sum)
{
    for (size_t q = 0; q < n; q++) sum[q] = 0.0f + D[0][q];
    for (int j = 1; j < nm; j++)
        for (size_t q = 0; q < n; q++) sum[q] += D[j][q];
}

/* TIES' third step, the disjoint merge: num[q] sums the entries whose sign agrees with the elected
 * one, z[q] their models' weights (the divisor of normalize); zero entries never agree. */
static ALLOY_INLINE void disjoint_merge(const struct gta_state *s, int nm, float (*D)[GTA_BLK],
                                        const float *restrict sum, size_t n, float *restrict num, float *restrict z)
{
    for (int j = 0; j < nm; j++) {
        const float *Dj = D[j];
        const float w = s->m[j].w;
        if (j == 0) {
            for (size_t q = 0; q < n; q++) {
                int agree = sum[q] >= 0 ? Dj[q] > 0 : Dj[q] < 0;
                num[q] = 0.0f + (agree ? Dj[q] : 0.0f);
                z[q] = 0.0f + (agree ? w : 0.0f);
            }
            continue;
        }
        for (size_t q = 0; q < n; q++) {
            int agree = sum[q] >= 0 ? Dj[q] > 0 : Dj[q] < 0;
            num[q] += agree ? Dj[q] : 0.0f;
            z[q] += agree ? w : 0.0f;
        }
    }
}

/* Merges one block of n elements from the models' trimmed, weighted deltas D[j][0..n): with "sum"
 * consensus, elect the sign and merge the agreeing entries (in float32: twice the lanes of double and
 * no double division), divide by their weights when normalizing, scale by lambda; without consensus
 * (task arithmetic's weighted sum) the plain sum in double, scaled by lin_scale. out = b + that. */
static ALLOY_INLINE void merge_block(const struct gta_state *s, int nm, float (*D)[GTA_BLK], const float *restrict b,
                                   size_t n, float *restrict out)
{
    if (!s->kind->consensus) {
        double sum[GTA_BLK];
        for (size_t q = 0; q < n; q++) sum[q] = 0.0 + (double)D[0][q];
        for (int j = 1; j < nm; j++)
            for (size_t q = 0; q < n; q++) sum[q] += D[j][q];
        const double ls = s->lin_scale;
        for (size_t q = 0; q < n; q++) out[q] = b[q] + (float)(ls * sum[q]);
        return;
    }
    float sum[GTA_BLK], num[GTA_BLK], z[GTA_BLK];
    elect_sign(nm, D, n, sum);
    disjoint_merge(s, nm, D, sum, n, num, z);
    const float lambda = s->lambda;
    if (s->normalize)
        for (size_t q = 0; q < n; q++) num[q] /= (z[q] == 0 ? 1.0f : z[q]);
    for (size_t q = 0; q < n; q++) out[q] = b[q] + lambda * num[q];
}

/* apply() of one chunk: per row and block, every model's trimmed, weighted delta, then the merge
 * (TIES: trim -> elect sign -> disjoint merge), or the fused AVX-512 loop where the table has it and
 * every sparse model has keep bits. Compiled into each kernel table with the block helpers inlined. */
static ALLOY_INLINE void gta_apply_body(const struct alloy_merge_job *job, const struct gta_state *s,
                                  const struct alloy_chunk *c, const float *const *x, float *out)
{
    size_t len = (size_t)(c->e1 - c->e0);
    const float *b = x[s->base];
    const int raw = c->input == ALLOY_INPUT_BF16_RAW;
    int nm = s->nm;
    if (nm == 0) {
        memcpy(out, b, len * sizeof *out);
        return;
    }
    struct gta_cursor cur[GTA_MAX_MODELS];
    float coef[GTA_MAX_MODELS];
    size_t cols = row_len(s, job, len);
    struct della_scratch ds = {0};
    int redraw = 0; /* a model without keep bits ranks its rows again */
    for (int j = 0; j < nm; j++) redraw |= s->m[j].sparse && !s->m[j].keep_bits;
    if (redraw) della_scratch_new(s, cols, (size_t)nm, &ds);
    for (int j = 0; j < nm; j++) {
        cursor_init(&s->m[j], c->index, &cur[j]);
        coef[j] = s->m[j].w * s->m[j].rescale;
        della_scratch_thresholds(&ds, &s->m[j], (size_t)j, cols, &cur[j]);
    }
    float D[GTA_MAX_MODELS][GTA_BLK];
    /* the fused loop: consensus, every sparse model with keep bits, blocks on 16-element boundaries */
    const int fused = s->k->gta_apply_fused && s->kind->consensus && !redraw;
    for (size_t r0 = 0; r0 < len; r0 += cols) {
        for (int j = 0; j < nm; j++)
            if (!s->m[j].keep_bits) /* not raw: gta_takes_bf16 wants keep bits */
                della_scratch_row(&ds, &s->m[j], (size_t)j, x[s->m[j].input] + r0, b + r0, cols, 0, &cur[j]);
        for (size_t j0 = 0; j0 < cols; j0 += GTA_BLK) {
            size_t n = cols - j0 < GTA_BLK ? cols - j0 : GTA_BLK, e = r0 + j0;
            if (fused && (c->e0 + e) % 16 == 0 && n % 16 == 0) {
                s->k->gta_apply_fused(s, x, e, c->e0 + e, n, coef, raw, out + e);
                continue;
            }
            float tx[GTA_BLK], tb[GTA_BLK];
            const float *bb = in_block(b, e, n, raw, tb); /* widened once for every model */
            for (int j = 0; j < nm; j++) /* trim */
                trimmed_delta(s, &s->m[j], &cur[j], c, x[s->m[j].input], b, bb, r0, j0, n, cols, raw, coef[j], tx,
                              D[j]);
            merge_block(s, nm, D, bb, n, out + e); /* elect sign, disjoint merge */
        }
    }
    della_scratch_free(&ds);
}

#endif
