/*
 * della_rank.c — DELLA's keep limits of one row (gta.h: gta_della_row).
 *
 * DESIGN
 *   DELLA keeps an element with a probability that grows linearly with the
 *   ascending rank of |delta| within its row. Elements of equal magnitude
 *   share their mean rank (the average of the places they occupy):
 *   mergekit's argsort orders ties arbitrarily, so in expectation each of
 *   them gets that mean, where a fixed tie order (by column) would favour
 *   some columns. A row's limits are then a function of its multiset of
 *   keys alone, and the common case needs no sort at all: nearly every
 *   magnitude of a difference of bfloat16 values has its low 16 bits zero
 *   ("normal" keys: 99.4% in the benchmark's fine-tunes), so each element's
 *   bucket (bits 30..16, 16-bit ids), one histogram of them (two tables of
 *   16-bit counts, for the even and the odd columns, so that runs of one
 *   bucket do not chain their increments; zero between rows, as the walk
 *   clears the counts it reads, so no table is ever cleared whole) and one
 *   walk over the nonempty buckets give every bucket its limit. The caller
 *   reads bucket[id] per element where it draws (gta.c keep_block); no
 *   per-element rank is computed. The other keys (exceptions, id
 *   GTA_DELLA_EXCEPTION) rank after their bucket's normal keys; they are
 *   sorted (insertion sort up to 32, else radix) and listed by column with
 *   their own limits. A row has ~2,000 to 5,600 elements but only ~110
 *   nonempty buckets and ~14 exceptions (benchmark), so the per-bucket and
 *   per-exception steps are worth no branch per candidate: with AVX-512
 *   the key loop lists the exceptions as it goes (a compress of their
 *   columns), their sort counts each one's place with vector compares, and
 *   the nonempty buckets are listed by compress (della-3: row work 1.4e9 ->
 *   0.9e9 cycles; AVX2 and portable versions of each step remain). Rows
 *   may come as stored bfloat16 (raw, gta_in_at). Rows with over cols / 8
 *   exceptions (float32 inputs), a span of over 2 cols + 256 buckets, or
 *   2^17 columns or more, are sorted whole (stable LSD radix over the bits in which the
 *   keys differ) and get one limit per element.
 *
 *   Limits come from the caller's table lim2, indexed by s = first + last - 1
 *   for a group of equal keys at 1-based ranks first..last (s in
 *   1 .. 2 cols - 1; twice the mean rank, less 1); lim2[0] must be readable.
 */
#include "methods/gta.h"

#include "core/internal.h"

#if ALLOY_X86_DISPATCH
#include <immintrin.h>
#endif

/* The index s of lim2 for element j, counted directly: O(cols). */
/* The key of element j: |xi[j] - b[j]| as an ordered integer. */
static ALLOY_INLINE uint32_t key_at(const void *xi, const void *b, size_t j, int raw)
{
    return alloy_sel_key_abs(gta_in_f32(xi, j, raw) - gta_in_f32(b, j, raw));
}

uint32_t gta_della_rank2(const void *xi, const void *b, size_t cols, size_t j, int raw)
{
    uint32_t kj = key_at(xi, b, j, raw), less = 0, eq = 0;
    for (size_t t = 0; t < cols; t++) {
        uint32_t kt = key_at(xi, b, t, raw);
        less += kt < kj;
        eq += kt == kj;
    }
    return 2 * less + eq; /* first = less + 1, last = less + eq */
}

/* The limits of n sorted entries (key << 32 | index) that take ranks pos + 1 .. pos + n: each group
 * of equal keys gets lim2[first + last - 1], written to out[index]. */
static void limits_of_sorted(const uint64_t *a, size_t n, uint32_t pos, const uint32_t *lim2, uint32_t *out)
{
    for (size_t p = 0; p < n;) {
        size_t q = p + 1;
        while (q < n && (a[q] >> 32) == (a[p] >> 32)) q++;
        const uint32_t lim = lim2[2 * (size_t)pos + p + q]; /* first = pos + p + 1, last = pos + q */
        for (size_t i = p; i < q; i++) out[(uint32_t)a[i]] = lim;
        p = q;
    }
}

/* One counting pass of sort_radix: the histograms of nd digits of w bits (nd constant: inlined per count). */
static ALLOY_INLINE void radix_hist(const uint32_t *key, size_t n, unsigned lo, uint32_t kmask, unsigned w,
                                  unsigned nd, uint32_t *cnt)
{
    const uint32_t nb = 1u << w;
    for (size_t j = 0; j < n; j++) {
        uint32_t k = (key[j] >> lo) & kmask;
        for (unsigned d = 0; d < nd; d++) cnt[d * nb + ((k >> (d * w)) & (nb - 1))]++;
    }
}

/* n keys sorted stably as key << 32 | index by an LSD radix sort over the bits in which they differ
 * (vbits: the OR of key[j] ^ key[0]), cut into as few digits as cover them, of at most 8 to 11 bits
 * (8 up to 256 keys, 11 from 1025: tables no larger than the keys): all histograms in one counting
 * pass, digits every key shares skipped, one 64-bit move per element and pass. a, t: n uint64 each;
 * returns the one holding the result. */
static const uint64_t *sort_radix(const uint32_t *key, size_t n, uint32_t vbits, uint64_t *a, uint64_t *t)
{
    if (vbits == 0) { /* all keys equal: index order */
        for (size_t j = 0; j < n; j++) a[j] = (uint64_t)key[j] << 32 | j;
        return a;
    }
    unsigned lo = 0, hi = 31, wmax = 8;
    while (!(vbits >> lo & 1)) lo++;
    while (!(vbits >> hi & 1)) hi--;
    while (wmax < 11 && ((size_t)1 << wmax) < n) wmax++;
    const unsigned bits = hi - lo + 1, nd = (bits + wmax - 1) / wmax, w = (bits + nd - 1) / nd;
    const uint32_t nb = 1u << w, kmask = (uint32_t)(((uint64_t)1 << bits) - 1);
    uint32_t cnt[3 << 11]; /* nd <= 4 digits, nd << w <= 3 << 11 */
    memset(cnt, 0, nd * nb * sizeof *cnt);
    if (nd == 1) radix_hist(key, n, lo, kmask, w, 1, cnt);
    else if (nd == 2) radix_hist(key, n, lo, kmask, w, 2, cnt);
    else if (nd == 3) radix_hist(key, n, lo, kmask, w, 3, cnt);
    else radix_hist(key, n, lo, kmask, w, 4, cnt);
    /* per active digit: its shift in the key, mask (the top digit's narrower) and table */
    unsigned na = 0, sh[4] = {0};
    uint32_t mk[4] = {0}, *tab[4] = {0};
    const uint32_t k0 = (key[0] >> lo) & kmask;
    for (unsigned d = 0; d < nd; d++) {
        uint32_t *c = cnt + d * nb, m = d + 1 == nd ? kmask >> (d * w) : nb - 1;
        if (c[(k0 >> (d * w)) & m] == n) continue; /* every key has this digit */
        uint32_t pos = 0;
        for (uint32_t v = 0; v <= m; v++) {
            uint32_t cv = c[v];
            c[v] = pos;
            pos += cv;
        }
        sh[na] = lo + d * w;
        mk[na] = m;
        tab[na++] = c;
    }
    {
        const unsigned s0 = sh[0];
        const uint32_t m = mk[0];
        uint32_t *c = tab[0];
        for (size_t j = 0; j < n; j++) {
            uint32_t k = key[j];
            a[c[(k >> s0) & m]++] = (uint64_t)k << 32 | j;
        }
    }
    for (unsigned q = 1; q < na; q++) {
        const unsigned s = 32 + sh[q];
        const uint32_t m = mk[q];
        uint32_t *c = tab[q];
        for (size_t i = 0; i < n; i++) {
            uint64_t v = a[i];
            t[c[(v >> s) & m]++] = v;
        }
        uint64_t *u = a;
        a = t;
        t = u;
    }
    return a;
}

/* The walk over a row's buckets in ascending order: ranks taken so far, the next sorted exception
 * and its bucket (UINT32_MAX: none left). */
struct bucket_walk {
    uint32_t pos, p, xh;
};

/* The limits of the remaining exceptions up to bucket hx (a prefix of the sorted xs), at ranks from
 * pos + 1 on, in runs of equal keys. */
static void exceptions_upto(const uint64_t *xs, uint32_t nx, uint32_t hx, const uint32_t *lim2, uint32_t *xl,
                            struct bucket_walk *w)
{
    uint32_t q = w->p;
    while (q < nx && (uint32_t)(xs[q] >> 48) <= hx) q++;
    limits_of_sorted(xs + w->p, q - w->p, w->pos, lim2, xl);
    w->pos += q - w->p;
    w->p = q;
    w->xh = q < nx ? (uint32_t)(xs[q] >> 48) : UINT32_MAX;
}

/* The columns from `from` on of the row's nx exceptions there (ids GTA_DELLA_EXCEPTION), ascending, into
 * xc; returns how many. */
static uint32_t list_exceptions(const uint16_t *hk, size_t from, size_t cols, uint32_t nx, uint32_t *xc)
{
    uint32_t n = 0;
    for (size_t j0 = from; j0 < cols && n < nx; j0 += 16) { /* sixteen ids at a time: most groups have none */
        const size_t m = cols - j0 < 16 ? cols - j0 : 16;
        uint32_t any = 0;
        for (size_t i = 0; i < m; i++) any |= hk[j0 + i] == GTA_DELLA_EXCEPTION;
        for (size_t i = 0; any && i < m; i++)
            if (hk[j0 + i] == GTA_DELLA_EXCEPTION) xc[n++] = (uint32_t)(j0 + i);
    }
    return n;
}

/* The nonempty buckets among hlo..hmax (a count in ca or cb), ascending, appended to list[nl..]; returns
 * the new count. */
static uint32_t list_nonempty(const uint16_t *ca, const uint16_t *cb, uint32_t hlo, uint32_t hmax, uint32_t *list,
                              uint32_t nl)
{
    uint32_t h = hlo;
    for (; h <= hmax && hmax - h >= 15; h += 16) { /* sixteen at a time: most are empty, often all sixteen */
        uint32_t any = 0;
        for (uint32_t i = 0; i < 16; i++) any |= (uint32_t)(ca[h + i] | cb[h + i]);
        if (!any) continue;
        for (uint32_t i = 0; i < 16; i++) {
            list[nl] = h + i;
            nl += (ca[h + i] | cb[h + i]) != 0;
        }
    }
    for (; h <= hmax; h++) {
        list[nl] = h;
        nl += (ca[h] | cb[h]) != 0;
    }
    return nl;
}

#if ALLOY_X86_DISPATCH
/* The same two with AVX2 compares and byte masks: one test per sixteen ids or eight buckets. */
__attribute__((target("avx2"))) static uint32_t list_exceptions_avx2(const uint16_t *hk, size_t cols, uint32_t nx,
                                                                     uint32_t *xc)
{
    const __m256i ex = _mm256_set1_epi16((short)GTA_DELLA_EXCEPTION);
    uint32_t n = 0;
    size_t j0 = 0;
    for (; j0 + 16 <= cols && n < nx; j0 += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(hk + j0));
        uint32_t m = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(v, ex)) & 0x55555555u; /* bit 2i: id i */
        for (; m; m &= m - 1) xc[n++] = (uint32_t)(j0 + (size_t)(__builtin_ctz(m) >> 1));
    }
    return n < nx ? n + list_exceptions(hk, j0, cols, nx - n, xc + n) : n;
}

__attribute__((target("avx2"))) static uint32_t list_nonempty_avx2(const uint16_t *ca, const uint16_t *cb,
                                                                   uint32_t hlo, uint32_t hmax, uint32_t *list,
                                                                   uint32_t nl)
{
    const __m256i zero = _mm256_setzero_si256();
    uint32_t h = hlo;
    for (; h <= hmax && hmax - h >= 15; h += 16) {
        __m256i v = _mm256_or_si256(_mm256_loadu_si256((const __m256i *)(const void *)(ca + h)),
                                    _mm256_loadu_si256((const __m256i *)(const void *)(cb + h)));
        uint32_t m = ~(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(v, zero)) & 0x55555555u; /* bit 2i: i */
        for (; m; m &= m - 1) list[nl++] = h + ((uint32_t)__builtin_ctz(m) >> 1);
    }
    return h <= hmax ? list_nonempty(ca, cb, h, hmax, list, nl) : nl;
}

/* The same with AVX-512: no branch per group (a compress of the nonempty lanes' ids, stored whole: the
 * list has room for 16 entries past its end). */
__attribute__((target("avx2,avx512f,avx512bw,avx512vl"))) static uint32_t
list_nonempty_avx512(const uint16_t *ca, const uint16_t *cb, uint32_t hlo, uint32_t hmax, uint32_t *list, uint32_t nl)
{
    const __m512i step = _mm512_set1_epi32(16);
    __m512i id = _mm512_add_epi32(_mm512_set1_epi32((int)hlo),
                                  _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    uint32_t h = hlo;
    for (; h <= hmax && hmax - h >= 15; h += 16) {
        __m256i v = _mm256_or_si256(_mm256_loadu_si256((const __m256i *)(const void *)(ca + h)),
                                    _mm256_loadu_si256((const __m256i *)(const void *)(cb + h)));
        __mmask16 m = _mm256_test_epi16_mask(v, v);
        _mm512_storeu_si512(list + nl, _mm512_maskz_compress_epi32(m, id));
        nl += (uint32_t)__builtin_popcount(m);
        id = _mm512_add_epi32(id, step);
    }
    return h <= hmax ? list_nonempty(ca, cb, h, hmax, list, nl) : nl;
}

/* Sixteen input values from element j of p: float32, or bfloat16 widened (raw). */
__attribute__((target("avx2,avx512f,avx512bw,avx512vl"))) static ALLOY_INLINE __m512
load16_avx512(const void *p, size_t j, int raw)
{
    if (raw) /* bfloat16: the stored bits are the float32's top half */
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)((const uint16_t *)p + j))), 16));
    return _mm512_loadu_ps((const float *)p + j);
}

/* The key loop of della_row_body with AVX-512, sixteen columns at a time: the bucket ids, the largest
 * key and the smallest key >= 2^16 less 2^16 (as keys_scalar computes them), and the exceptions'
 * columns, compressed into xc in column order (each store of sixteen stays below column j + 16 <= cols).
 * Returns the number of exceptions. */
__attribute__((target("avx2,avx512f,avx512bw,avx512vl"))) static ALLOY_INLINE uint32_t
keys_avx512_body(const void *xi, const void *b, size_t cols, int raw, uint16_t *hk, uint32_t *xc, int32_t *kmax_out,
                 int32_t *kmin_out)
{
    const __m512i nosign = _mm512_set1_epi32(0x7fffffff), low = _mm512_set1_epi32(0xffff);
    const __m512i exc = _mm512_set1_epi32((int)GTA_DELLA_EXCEPTION), unit = _mm512_set1_epi32(0x10000);
    const __m512i step = _mm512_set1_epi32(16);
    __m512i vmax = _mm512_setzero_si512(), vmin = _mm512_set1_epi32(INT32_MAX);
    __m512i col = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    uint32_t nx = 0;
    size_t j = 0;
    for (; j + 16 <= cols; j += 16) {
        __m512 d = _mm512_sub_ps(load16_avx512(xi, j, raw), load16_avx512(b, j, raw));
        __m512i k = _mm512_and_si512(_mm512_castps_si512(d), nosign);
        __mmask16 x = _mm512_test_epi32_mask(k, low);
        _mm256_storeu_si256((__m256i *)(void *)(hk + j),
                            _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(_mm512_srli_epi32(k, 16), x, exc)));
        vmax = _mm512_max_epi32(vmax, k);
        vmin = _mm512_min_epi32(vmin, _mm512_and_si512(_mm512_sub_epi32(k, unit), nosign));
        _mm512_storeu_si512(xc + nx, _mm512_maskz_compress_epi32(x, col));
        nx += (uint32_t)__builtin_popcount(x);
        col = _mm512_add_epi32(col, step);
    }
    int32_t kmax = _mm512_reduce_max_epi32(vmax), kmin = _mm512_reduce_min_epi32(vmin);
    for (; j < cols; j++) {
        uint32_t k = key_at(xi, b, j, raw);
        int32_t m = (int32_t)((k - 0x10000u) & 0x7fffffffu);
        hk[j] = (uint16_t)((k & 0xffffu) ? GTA_DELLA_EXCEPTION : k >> 16);
        kmax = (int32_t)k > kmax ? (int32_t)k : kmax;
        kmin = m < kmin ? m : kmin;
        if (k & 0xffffu) xc[nx++] = (uint32_t)j;
    }
    *kmax_out = kmax;
    *kmin_out = kmin;
    return nx;
}

/* keys_avx512_body for float32 and for bfloat16 rows (each with its loads inlined). */
__attribute__((target("avx2,avx512f,avx512bw,avx512vl"))) static uint32_t
keys_avx512(const void *xi, const void *b, size_t cols, int raw, uint16_t *hk, uint32_t *xc, int32_t *kmax_out,
            int32_t *kmin_out)
{
    if (raw) return keys_avx512_body(xi, b, cols, 1, hk, xc, kmax_out, kmin_out);
    return keys_avx512_body(xi, b, cols, 0, hk, xc, kmax_out, kmin_out);
}

/* n <= 32 exceptions (key << 32 | index, all distinct) sorted without a branch per comparison: each
 * one's place is the number of smaller ones, counted sixteen at a time. */
__attribute__((target("avx2,avx512f,avx512bw,avx512vl"))) static void sort_small_avx512(const uint32_t *xk, uint32_t n,
                                                                                    uint64_t *out)
{
    uint64_t v[32];
    for (uint32_t i = 0; i < 32; i++) v[i] = i < n ? (uint64_t)xk[i] << 32 | i : UINT64_MAX;
    const __m512i v0 = _mm512_loadu_si512(v), v1 = _mm512_loadu_si512(v + 8);
    const __m512i v2 = _mm512_loadu_si512(v + 16), v3 = _mm512_loadu_si512(v + 24);
    for (uint32_t i = 0; i < n; i++) {
        const __m512i e = _mm512_set1_epi64((long long)v[i]);
        uint32_t r = (uint32_t)__builtin_popcount(_mm512_cmplt_epu64_mask(v0, e)) +
                     (uint32_t)__builtin_popcount(_mm512_cmplt_epu64_mask(v1, e));
        if (n > 16)
            r += (uint32_t)__builtin_popcount(_mm512_cmplt_epu64_mask(v2, e)) +
                 (uint32_t)__builtin_popcount(_mm512_cmplt_epu64_mask(v3, e));
        out[r] = v[i];
    }
}
#endif

/* The key loop (vectorized by the compiler for float32 rows): bucket ids, the largest key, the smallest
 * key >= 2^16 less 2^16, and the number of exceptions. */
static ALLOY_INLINE uint32_t keys_scalar(const void *xi, const void *b, size_t cols, int raw, uint16_t *hk,
                                        int32_t *kmax_out, int32_t *kmin_out)
{
    uint32_t nx = 0;
    int32_t kmax = 0, kmin = INT32_MAX;
    for (size_t j = 0; j < cols; j++) {
        uint32_t k = key_at(xi, b, j, raw);
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

/* The row's limits (see gta.h). The fast path: each key's bucket id; a histogram of them (only
 * buckets 0, GTA_DELLA_EXCEPTION and those from the row's smallest nonzero key to its largest are
 * cleared); the exceptions listed in column order and sorted; the nonempty buckets listed in
 * ascending order (no branch per bucket: most are empty); then one walk over them that gives each
 * bucket's normal keys the limit of their group (written over its count) and the exceptions below
 * the bucket, in runs of equal keys, the limits of theirs (an exception ranks after the normal keys
 * of its bucket and before the next nonempty bucket's). */
static ALLOY_INLINE void della_row_body(const void *xi, const void *b, size_t cols, const uint32_t *lim2,
                                       uint32_t *slot, uint64_t *sort, int raw, struct gta_della_row *row, int isa)
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
#if ALLOY_X86_DISPATCH
    if (isa >= 2) /* the exceptions' columns listed on the way, into key[] (unused by the fast path) */
        nx = keys_avx512(xi, b, cols, raw, hk, key, &kmax, &kmin);
    else
#endif
        nx = raw ? keys_scalar(xi, b, cols, 1, hk, &kmax, &kmin) : keys_scalar(xi, b, cols, 0, hk, &kmax, &kmin);
    const uint32_t hmax = (uint32_t)kmax >> 16, hlo = ((uint32_t)kmin >> 16) + 1; /* buckets 0, hlo..hmax */
    const uint32_t nbk = hlo <= hmax ? hmax - hlo + 1 : 0;
    if (nx > cols / 8 || nbk > 2 * cols + 256 || cols >= (size_t)1 << 17) {
        for (size_t j = 0; j < cols; j++) key[j] = key_at(xi, b, j, raw);
        uint32_t vb = 0;
        for (size_t j = 0; j < cols; j++) vb |= key[j] ^ key[0];
        const uint64_t *sorted = sort_radix(key, cols, vb, sort, sort + cols);
        limits_of_sorted(sorted, cols, 0, lim2, key); /* key[] is read no more */
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
#if ALLOY_X86_DISPATCH
    if (isa >= 2) xc = key; /* listed by keys_avx512 */
    else if (isa >= 1) list_exceptions_avx2(hk, cols, nx, xc);
    else
#endif
        list_exceptions(hk, 0, cols, nx, xc);
    for (uint32_t i = 0; i < nx; i++) xk[i] = key_at(xi, b, xc[i], raw);
    const uint64_t *xs = sort;
    if (nx > 32) {
        uint32_t vb = 0;
        for (uint32_t i = 0; i < nx; i++) vb |= xk[i] ^ xk[0];
        xs = sort_radix(xk, nx, vb, sort, sort + cols);
#if ALLOY_X86_DISPATCH
    } else if (isa >= 2) {
        sort_small_avx512(xk, nx, sort);
#endif
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
#if ALLOY_X86_DISPATCH
    if (isa >= 2) nl = list_nonempty_avx512(ca, cb, hlo, hmax, list, nl);
    else if (isa >= 1) nl = list_nonempty_avx2(ca, cb, hlo, hmax, list, nl);
    else
#endif
        nl = list_nonempty(ca, cb, hlo, hmax, list, nl);
    struct bucket_walk w = {0, 0, nx ? (uint32_t)(xs[0] >> 48) : UINT32_MAX};
    for (uint32_t i = 0; i < nl; i++) {
        const uint32_t h = list[i];
        if (w.xh < h) exceptions_upto(xs, nx, h - 1, lim2, xl, &w);
        const uint32_t next = w.pos + ca[h] + cb[h]; /* normal keys: ranks pos + 1 .. next */
        ca[h] = cb[h] = 0;
        lim[h] = lim2[w.pos + next];
        w.pos = next;
    }
    if (w.p < nx) exceptions_upto(xs, nx, UINT32_MAX, lim2, xl, &w);
    row->bucket = lim;
    row->hk = hk;
    row->xcol = xc;
    row->xlim = xl;
    row->nx = nx;
}

static void della_row_generic(const void *xi, const void *b, size_t cols, const uint32_t *lim2, uint32_t *slot,
                              uint64_t *sort, int raw, struct gta_della_row *row)
{
    della_row_body(xi, b, cols, lim2, slot, sort, raw, row, 0);
}

/* Also compiled for AVX2 (the key loop vectorizes twice as wide; same limits), chosen by the CPU at
 * the call (not by an ifunc: sanitizer runtimes are not ready when ifunc resolvers run). */
#if ALLOY_X86_DISPATCH
__attribute__((target("avx2"))) static void della_row_avx2(const void *xi, const void *b, size_t cols,
                                                           const uint32_t *lim2, uint32_t *slot, uint64_t *sort,
                                                           int raw, struct gta_della_row *row)
{
    della_row_body(xi, b, cols, lim2, slot, sort, raw, row, 1);
}

__attribute__((target("avx2,avx512f,avx512bw,avx512vl"))) static void
della_row_avx512(const void *xi, const void *b, size_t cols, const uint32_t *lim2, uint32_t *slot, uint64_t *sort,
                 int raw, struct gta_della_row *row)
{
    della_row_body(xi, b, cols, lim2, slot, sort, raw, row, 2);
}
#endif

int gta_della_isa_cap = 2;

void gta_della_row(const void *xi, const void *b, size_t cols, const uint32_t *lim2, uint32_t *slot, uint64_t *sort,
                   int raw, struct gta_della_row *row)
{
#if ALLOY_X86_DISPATCH
    if (gta_della_isa_cap >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
        della_row_avx512(xi, b, cols, lim2, slot, sort, raw, row);
        return;
    }
    if (gta_della_isa_cap >= 1 && __builtin_cpu_supports("avx2")) {
        della_row_avx2(xi, b, cols, lim2, slot, sort, raw, row);
        return;
    }
#endif
    della_row_generic(xi, b, cols, lim2, slot, sort, raw, row);
}
