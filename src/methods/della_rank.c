/*
 * della_rank.c — DELLA's per-row magnitude ranks (gta.h: gta_rank_row).
 *
 * DESIGN
 *   DELLA keeps an element with a probability that grows linearly with the
 *   1-based ascending rank of |delta| within its row (equal magnitudes rank
 *   by column), so every row of every model is ranked, once per element in
 *   the L1 pass (and again in apply() for models without a keep bitmap).
 *   The ranks must be exact (they pick the draw threshold), and the sort is
 *   the method's largest cost, so the common case is special-cased: nearly
 *   all magnitudes of differences of bfloat16 values have their low 16
 *   bits zero, and a counting sort on bits 30..16 ranks such a row in two
 *   passes. Everything else (float32 inputs, wide spans, huge rows) goes to
 *   a stable LSD radix sort over the bits in which the keys differ.
 */
#include "methods/gta.h"

#include "core/internal.h"

#ifdef __GNUC__
#define RANK_INLINE inline __attribute__((always_inline))
#else
#define RANK_INLINE inline
#endif

/* 1-based ascending rank of |xi[j] - b[j]| within the row (ties by column), counted directly: O(C). */
uint32_t gta_rank_count(const float *xi, const float *b, size_t cols, size_t j)
{
    uint32_t kj = alloy_sel_key_abs(xi[j] - b[j]), r = 1;
    for (size_t t = 0; t < cols; t++) {
        uint32_t kt = alloy_sel_key_abs(xi[t] - b[t]);
        r += kt < kj || (kt == kj && t < j);
    }
    return r;
}

/* One counting pass of rank_radix: the histograms of nd digits of w bits (nd constant: inlined per count). */
static RANK_INLINE void radix_hist(const uint32_t *key, size_t n, unsigned lo, uint32_t kmask, unsigned w,
                                  unsigned nd, uint32_t *cnt)
{
    const uint32_t nb = 1u << w;
    for (size_t j = 0; j < n; j++) {
        uint32_t k = (key[j] >> lo) & kmask;
        for (unsigned d = 0; d < nd; d++) cnt[d * nb + ((k >> (d * w)) & (nb - 1))]++;
    }
}

/* Stable 1-based ascending ranks of n keys (equal keys by index) by an LSD radix sort over the bits
 * in which they differ (vbits: the OR of key[j] ^ key[0]), cut into as few digits as cover them, of at
 * most 8 to 11 bits (8 up to 256 keys, 11 from 1025: tables no larger than the keys): all histograms
 * in one counting pass, digits every key shares skipped, the order carried as key << 32 | index (one
 * 64-bit move per element and pass), the first pass reading key[], the last writing the ranks.
 * a, t: n uint64 each. */
static void rank_radix(const uint32_t *key, size_t n, uint32_t vbits, uint32_t *rank, uint64_t *a, uint64_t *t)
{
    if (vbits == 0) { /* all keys equal: index order */
        for (size_t j = 0; j < n; j++) rank[j] = (uint32_t)(j + 1);
        return;
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
    if (na == 1) { /* one digit: a counting sort straight into the ranks */
        const unsigned s0 = sh[0];
        const uint32_t m = mk[0];
        uint32_t *c = tab[0];
        for (size_t j = 0; j < n; j++) rank[j] = ++c[(key[j] >> s0) & m];
        return;
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
    for (unsigned q = 1; q + 1 < na; q++) {
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
    const unsigned s = 32 + sh[na - 1];
    const uint32_t m = mk[na - 1];
    uint32_t *c = tab[na - 1];
    for (size_t i = 0; i < n; i++) {
        uint64_t v = a[i];
        rank[(uint32_t)v] = ++c[(v >> s) & m];
    }
}

/* Ranks of one row. Nearly all magnitudes of deltas between bfloat16 values have their low 16 bits
 * zero (99.4% in the benchmark's fine-tunes; the others need more than 8 significant bits), so a
 * counting sort on bits 30..16, one bucket per value, ranks the row in two passes over the keys
 * (only bucket 0 and those from the row's smallest nonzero value to its largest are cleared and
 * summed): the counting pass stores with each "normal" key (low bits zero, so all of its bucket's
 * normal keys are equal and rank by column) the count of normal keys before it in its bucket, and
 * after the prefix sums one sequential pass adds that to the bucket's first place. The other keys
 * (exceptions) take the last places of their bucket in (key, column) order: an insertion sort for
 * up to 32 of them, else rank_radix. Rows with over cols / 8 exceptions (float32 inputs), a span of
 * over 2 * cols + 256 buckets or over 2^17 columns go to rank_radix whole. scratch:
 * GTA_RANK_SCRATCH(cols) uint32 (two rows of uint64 for rank_radix, the keys, the exceptions, the
 * table of GTA_RANK_TABLE buckets). */
static RANK_INLINE void rank_row_body(const float *xi, const float *b, size_t cols, uint32_t *rank,
                                      uint32_t *scratch)
{
    if (cols == 0) return;
    uint64_t *a = (uint64_t *)(void *)scratch, *t = a + cols;
    uint32_t *key = scratch + 4 * cols, *xk = key + cols, *cnt = xk + cols;
    uint32_t nx = 0;
    int32_t kmax = 0, kmin = INT32_MAX; /* the largest key; the smallest >= 2^16, less 2^16 */
    for (size_t j = 0; j < cols; j++) {
        uint32_t k = alloy_sel_key_abs(xi[j] - b[j]);
        int32_t m = (int32_t)((k - 0x10000u) & 0x7fffffffu);
        key[j] = k;
        kmax = (int32_t)k > kmax ? (int32_t)k : kmax;
        kmin = m < kmin ? m : kmin;
        nx += (k & 0xffffu) != 0;
    }
    const uint32_t hmax = (uint32_t)kmax >> 16, hlo = ((uint32_t)kmin >> 16) + 1; /* buckets 0, hlo..hmax */
    const uint32_t nbk = hlo <= hmax ? hmax - hlo + 1 : 0;
    if (nx > cols / 8 || nbk > 2 * cols + 256 || cols > (size_t)1 << 17) {
        uint32_t vb = 0;
        for (size_t j = 0; j < cols; j++) vb |= key[j] ^ key[0];
        rank_radix(key, cols, vb, rank, a, t);
        return;
    }
    cnt[0] = 0;
    if (nbk) memset(cnt + hlo, 0, nbk * sizeof *cnt);
    uint32_t *xc = xk + nx, *xr = xc + nx, *xf = xr + nx, n = 0; /* exceptions: key, column, ... */
    for (size_t j = 0; j < cols; j++) {
        uint32_t k = key[j], h = k >> 16;
        if (k & 0xffffu) {
            xk[n] = k;
            xc[n++] = (uint32_t)j;
            key[j] = h; /* a rank overwritten below */
            continue;
        }
        key[j] = h | cnt[h]++ << 15;
    }
    for (uint32_t i = 0; i < nx; i++) xr[i] = cnt[xk[i] >> 16]; /* normal keys in the bucket */
    for (uint32_t i = 0; i < nx; i++) cnt[xk[i] >> 16]++;
    uint32_t pos = 1, m = cnt[0];
    cnt[0] = pos;
    pos += m;
    for (uint32_t h = hlo; h < hlo + nbk; h++) {
        m = cnt[h];
        cnt[h] = pos;
        pos += m;
    }
    for (size_t j = 0; j < cols; j++) {
        uint32_t v = key[j];
        rank[j] = cnt[v & 0x7fffu] + (v >> 15);
    }
    if (nx == 0) return;
    for (uint32_t i = 0; i < nx; i++) xf[i] = cnt[xk[i] >> 16] + xr[i]; /* the bucket's first exception place */
    for (uint32_t i = 0; i < nx; i++) cnt[xk[i] >> 16] = xf[i];
    if (nx <= 32) {
        for (uint32_t i = 0; i < nx; i++) {
            uint64_t v = (uint64_t)xk[i] << 32 | xc[i];
            uint32_t q = i;
            for (; q > 0 && a[q - 1] > v; q--) a[q] = a[q - 1];
            a[q] = v;
        }
    } else {
        uint32_t vb = 0;
        for (uint32_t i = 0; i < nx; i++) vb |= xk[i] ^ xk[0];
        rank_radix(xk, nx, vb, xr, a, t);
        for (uint32_t i = 0; i < nx; i++) a[xr[i] - 1] = (uint64_t)xk[i] << 32 | xc[i];
    }
    for (uint32_t p = 0; p < nx; p++) rank[(uint32_t)a[p]] = cnt[a[p] >> 48]++;
}

static void rank_row_generic(const float *xi, const float *b, size_t cols, uint32_t *rank, uint32_t *scratch)
{
    rank_row_body(xi, b, cols, rank, scratch);
}

/* Also compiled for AVX2 (the key and rank loops vectorize twice as wide; same ranks), chosen by the
 * CPU at the call (not by an ifunc: sanitizer runtimes are not ready when ifunc resolvers run). */
#if defined(__x86_64__) && defined(__GNUC__) && defined(ALLOY_HAVE_AVX2)
__attribute__((target("avx2"))) static void rank_row_avx2(const float *xi, const float *b, size_t cols,
                                                          uint32_t *rank, uint32_t *scratch)
{
    rank_row_body(xi, b, cols, rank, scratch);
}
#endif

void gta_rank_row(const float *xi, const float *b, size_t cols, uint32_t *rank, uint32_t *scratch)
{
#if defined(__x86_64__) && defined(__GNUC__) && defined(ALLOY_HAVE_AVX2)
    if (__builtin_cpu_supports("avx2")) {
        rank_row_avx2(xi, b, cols, rank, scratch);
        return;
    }
#endif
    rank_row_generic(xi, b, cols, rank, scratch);
}
