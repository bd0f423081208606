/*
 * della_rank.h — DELLA's keep limits of one row, shared by della_rank.c
 * and the kernel tables that compile the row code (src/kernels/).
 *
 * DESIGN
 *   The row code (gta_della_row_body, below; the mechanism is described in
 *   della_rank.c) is compiled into each kernel table with that table's
 *   steps: the key loop, the listing of the exceptions and of the nonempty
 *   buckets, and the sort of a few exceptions. The steps come as a constant
 *   struct, so each compiled copy calls its own versions directly; the
 *   scalar steps (della_rank.c) are the reference, the AVX2 and AVX-512
 *   ones (kernels/avx2.c, kernels/avx512.c) give the same lists. The parts
 *   every table shares (the radix sort, the walk's exceptions) are plain
 *   functions of della_rank.c.
 */
#ifndef ALLOY_DELLA_RANK_H
#define ALLOY_DELLA_RANK_H

#include "methods/method.h"
#include "methods/select.h"

#include "core/internal.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Inputs taken raw (method.h ALLOY_INPUT_BF16_RAW) are the stored bfloat16 values: element e of input
 * row p, as an address and as a float32 value. */
static inline const void *gta_in_at(const float *p, size_t e, int raw)
{
    return raw ? (const void *)(ALLOY_RAW_BF16(p) + e) : (const void *)(p + e);
}
static inline float gta_in_f32(const void *p, size_t j, int raw)
{
    if (!raw) return ((const float *)p)[j];
    uint32_t u = (uint32_t)((const uint16_t *)p)[j] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
/* DELLA's keep limits of one row. Elements of equal |delta| share their mean rank;
 * a group of equal keys at 1-based ranks first..last gets lim2[first + last - 1] (lim2: 2 cols entries,
 * [0] unused but readable). The limit of element j is bucket[hk[j]] (hk[j]: the top 16 bits of
 * alloy_sel_key_abs(xi[j] - b[j])) unless j is one of the nx exceptions (keys with low bits set,
 * hk[j] == GTA_DELLA_EXCEPTION: columns xcol ascending, limits xlim), or elem[j] when bucket is NULL
 * (rows sorted whole). Everything points into slot (GTA_DELLA_SLOT(cols) uint32, valid until the slot
 * is reused); sort: GTA_DELLA_SORT(cols) uint64 of scratch whose last GTA_RANK_TABLE / 2 + 1, from
 * index GTA_DELLA_SORT_ZERO(cols) on (the bucket counts), are zero before the first call and are left
 * zero by every call. */
#define GTA_RANK_TABLE 32768
#define GTA_DELLA_EXCEPTION 0x8000u
#define GTA_DELLA_SLOT(cols) (2 * (size_t)(cols) + GTA_RANK_TABLE + 3)
#define GTA_DELLA_SORT_ZERO(cols) (3 * (size_t)(cols) + 256)
#define GTA_DELLA_SORT(cols) (GTA_DELLA_SORT_ZERO(cols) + GTA_RANK_TABLE / 2 + 1)
struct gta_della_row {
    const uint32_t *bucket, *elem;
    const uint16_t *hk;
    const uint32_t *xcol, *xlim;
    uint32_t nx;
};
/* A kernel table's della_row(xi, b, cols, lim2, slot, sort, raw, row) fills row; xi, b: the row as
 * float32, or as stored bfloat16 when raw (gta_in_at). */
/* The index into lim2 of element j alone, counted directly: O(cols) (when no scratch can be allocated). */
uint32_t gta_della_rank2(const void *xi, const void *b, size_t cols, size_t j, int raw);

/* The key of element j: |xi[j] - b[j]| as an ordered integer. */
static ALLOY_INLINE uint32_t gta_della_key(const void *xi, const void *b, size_t j, int raw)
{
    return alloy_sel_key_abs(gta_in_f32(xi, j, raw) - gta_in_f32(b, j, raw));
}

/* The steps of the row code that differ between kernel tables. */
struct gta_della_steps {
    /* The key loop that also lists the exceptions' columns into xc as it goes (the return: their number);
     * NULL: gta_della_keys, then list_exceptions. */
    uint32_t (*keys_listing)(const void *xi, const void *b, size_t cols, int raw, uint16_t *hk, uint32_t *xc,
                             int32_t *kmax, int32_t *kmin);
    /* The columns from `from` on of the row's nx exceptions, ascending, into xc; returns how many. */
    uint32_t (*list_exceptions)(const uint16_t *hk, size_t from, size_t cols, uint32_t nx, uint32_t *xc);
    /* The nonempty buckets among hlo..hmax (a count in ca or cb), ascending, appended to list[nl..] (room
     * for 16 entries past the end); returns the new count. */
    uint32_t (*list_nonempty)(const uint16_t *ca, const uint16_t *cb, uint32_t hlo, uint32_t hmax, uint32_t *list,
                              uint32_t nl);
    /* n <= 32 exceptions (key << 32 | index) sorted into out; NULL: insertion sort. */
    void (*sort_small)(const uint32_t *xk, uint32_t n, uint64_t *out);
};

/* The scalar steps (della_rank.c), also the tails of the vector ones. */
uint32_t gta_della_list_exceptions(const uint16_t *hk, size_t from, size_t cols, uint32_t nx, uint32_t *xc);
uint32_t gta_della_list_nonempty(const uint16_t *ca, const uint16_t *cb, uint32_t hlo, uint32_t hmax, uint32_t *list,
                                 uint32_t nl);

/* The shared parts of the row code (della_rank.c). n keys sorted stably as key << 32 | index (vbits: the
 * OR of key[j] ^ key[0]; a, t: n uint64 each; returns the one holding the result). */
const uint64_t *gta_della_sort_radix(const uint32_t *key, size_t n, uint32_t vbits, uint64_t *a, uint64_t *t);
/* The limits of n sorted entries (key << 32 | index) that take ranks pos + 1 .. pos + n: each group of
 * equal keys gets lim2[first + last - 1], written to out[index]. */
void gta_della_limits_of_sorted(const uint64_t *a, size_t n, uint32_t pos, const uint32_t *lim2, uint32_t *out);
/* The walk over a row's buckets in ascending order: ranks taken so far, the next sorted exception and its
 * bucket (UINT32_MAX: none left). */
struct gta_della_walk {
    uint32_t pos, p, xh;
};
/* The limits of the remaining exceptions up to bucket hx (a prefix of the sorted xs), at ranks from pos + 1
 * on, in runs of equal keys. */
void gta_della_exceptions_upto(const uint64_t *xs, uint32_t nx, uint32_t hx, const uint32_t *lim2, uint32_t *xl,
                               struct gta_della_walk *w);

/* The key loop (vectorized by the compiler for float32 rows): bucket ids, the largest key, the smallest
 * key >= 2^16 less 2^16, and the number of exceptions. */
static ALLOY_INLINE uint32_t gta_della_keys(const void *xi, const void *b, size_t cols, int raw, uint16_t *hk,
                                           int32_t *kmax_out, int32_t *kmin_out)
{
    uint32_t nx = 0;
    int32_t kmax = 0, kmin = INT32_MAX;
    for (size_t j = 0; j < cols; j++) {
        uint32_t k = gta_della_key(xi, b, j, raw);
        int32_t m = (int32_t)((k - 0x10000u) & 0x7fffffffu);
        hk[j] = (uint16_t)((k & 0xffffu) ? GTA_DELLA_EXCEPTION : k >> 16);
        kmax = (int32_t)k > kmax ? (int32_t)k : kmax;
        kmin = m < kmin ? m : kmin;
        nx += (k & 0xffffu) != 0;
    }
    *kmax_out = kmax;
    *kmin_out = kmin;
    return nx;
}

/* The row's limits (gta_della_row above), with the steps of one kernel table. The fast path: each
 * key's bucket id; a histogram of them (only
 * buckets 0, GTA_DELLA_EXCEPTION and those from the row's smallest nonzero key to its largest are
 * cleared); the exceptions listed in column order and sorted; the nonempty buckets listed in
 * ascending order (no branch per bucket: most are empty); then one walk over them that gives each
 * bucket's normal keys the limit of their group (written over its count) and the exceptions below
 * the bucket, in runs of equal keys, the limits of theirs (an exception ranks after the normal keys
 * of its bucket and before the next nonempty bucket's). */
static ALLOY_INLINE void gta_della_row_body(const struct gta_della_steps *st, const void *xi, const void *b,
                                           size_t cols, const uint32_t *lim2, uint32_t *slot, uint64_t *sort, int raw,
                                           struct gta_della_row *row)
{
    memset(row, 0, sizeof *row);
    if (cols == 0) return;
    /* slot: keys (sorted rows) or limits | bucket ids | exceptions (3 x nx <= cols / 2) | bucket table;
       sort: 2 cols for radix sorts | the list of nonempty buckets | the counts (zero between rows) */
    const size_t half = (cols + 1) / 2;
    uint32_t *key = slot, *xk = key + cols + half, *lim = xk + half;
    uint16_t *hk = (uint16_t *)(void *)(key + cols);
    uint16_t *ca = (uint16_t *)(void *)(sort + GTA_DELLA_SORT_ZERO(cols)), *cb = ca + GTA_RANK_TABLE + 1;
    uint32_t nx = 0;
    int32_t kmax = 0, kmin = INT32_MAX; /* the largest key; the smallest >= 2^16, less 2^16 */
    if (st->keys_listing) /* the exceptions' columns listed on the way, into key[] (unused by the fast path) */
        nx = st->keys_listing(xi, b, cols, raw, hk, key, &kmax, &kmin);
    else
        nx = raw ? gta_della_keys(xi, b, cols, 1, hk, &kmax, &kmin) : gta_della_keys(xi, b, cols, 0, hk, &kmax, &kmin);
    const uint32_t hmax = (uint32_t)kmax >> 16, hlo = ((uint32_t)kmin >> 16) + 1; /* buckets 0, hlo..hmax */
    const uint32_t nbk = hlo <= hmax ? hmax - hlo + 1 : 0;
    if (nx > cols / 8 || nbk > 2 * cols + 256 || cols >= (size_t)1 << 17) {
        for (size_t j = 0; j < cols; j++) key[j] = gta_della_key(xi, b, j, raw);
        uint32_t vb = 0;
        for (size_t j = 0; j < cols; j++) vb |= key[j] ^ key[0];
        const uint64_t *sorted = gta_della_sort_radix(key, cols, vb, sort, sort + cols);
        gta_della_limits_of_sorted(sorted, cols, 0, lim2, key); /* key[] is read no more */
        row->elem = key;
        return;
    }
    size_t j = 0; /* counts below 2^16: cols < 2^17, and each table takes half the columns */
#ifdef __GNUC__
#pragma GCC unroll 2
#endif
    for (; j + 2 <= cols; j += 2) {
        ca[hk[j]]++;
        cb[hk[j + 1]]++;
    }
    if (j < cols) ca[hk[j]]++;
    ca[GTA_DELLA_EXCEPTION] = cb[GTA_DELLA_EXCEPTION] = 0; /* counted apart (nx) */
    /* the exceptions in column order, and their keys */
    uint32_t *xc = xk + nx, *xl = xc + nx; /* key, column, limit (nx <= cols / 8 each) */
    if (st->keys_listing) xc = key; /* listed by the key loop */
    else st->list_exceptions(hk, 0, cols, nx, xc);
    for (uint32_t i = 0; i < nx; i++) xk[i] = gta_della_key(xi, b, xc[i], raw);
    const uint64_t *xs = sort;
    if (nx > 32) {
        uint32_t vb = 0;
        for (uint32_t i = 0; i < nx; i++) vb |= xk[i] ^ xk[0];
        xs = gta_della_sort_radix(xk, nx, vb, sort, sort + cols);
    } else if (st->sort_small) {
        st->sort_small(xk, nx, sort);
    } else {
        for (uint32_t i = 0; i < nx; i++) { /* insertion sort by (key, index) */
            uint64_t v = (uint64_t)xk[i] << 32 | i;
            uint32_t q = i;
            for (; q > 0 && sort[q - 1] > v; q--) sort[q] = sort[q - 1];
            sort[q] = v;
        }
    }
    /* the nonempty buckets in ascending order */
    uint32_t *list = (uint32_t *)(void *)(sort + 2 * cols), nl = (ca[0] | cb[0]) != 0;
    list[0] = 0;
    nl = st->list_nonempty(ca, cb, hlo, hmax, list, nl);
    struct gta_della_walk w = {0, 0, nx ? (uint32_t)(xs[0] >> 48) : UINT32_MAX};
    for (uint32_t i = 0; i < nl; i++) {
        const uint32_t h = list[i];
        if (w.xh < h) gta_della_exceptions_upto(xs, nx, h - 1, lim2, xl, &w);
        const uint32_t next = w.pos + ca[h] + cb[h]; /* normal keys: ranks pos + 1 .. next */
        ca[h] = cb[h] = 0;
        lim[h] = lim2[w.pos + next];
        w.pos = next;
    }
    if (w.p < nx) gta_della_exceptions_upto(xs, nx, UINT32_MAX, lim2, xl, &w);
    row->bucket = lim;
    row->hk = hk;
    row->xcol = xc;
    row->xlim = xl;
    row->nx = nx;
}

#endif
