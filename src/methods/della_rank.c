/*
 * della_rank.c — DELLA's keep limits of one row (della_rank.h).
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
 *   ("normal" keys: nearly all, docs/performance.md), so each element's
 *   bucket (bits 30..16, 16-bit ids), one histogram of them (two tables of
 *   16-bit counts, for the even and the odd columns, so that runs of one
 *   bucket do not chain their increments; zero between rows, as the walk
 *   clears the counts it reads, so no table is ever cleared whole) and one
 *   walk over the nonempty buckets give every bucket its limit. The caller
 *   reads bucket[id] per element where it draws (gta_loops.h keep_block); no
 *   per-element rank is computed. The other keys (exceptions, id
 *   GTA_DELLA_EXCEPTION) rank after their bucket's normal keys; they are
 *   sorted (insertion sort up to 32, else radix) and listed by column with
 *   their own limits. A row has thousands of elements but only a few
 *   nonempty buckets and exceptions (docs/performance.md), so the
 *   per-bucket and per-exception steps are worth no branch per candidate: with AVX-512
 *   the key loop lists the exceptions as it goes (a compress of their
 *   columns), their sort counts each one's place with vector compares, and
 *   the nonempty buckets are listed by compress (kernels/avx512.c; AVX2
 *   and portable versions of each step remain: della_rank.h's steps, one
 *   set per kernel table; this file holds the scalar steps and the parts
 *   every table shares). Rows may come as stored bfloat16 (raw, gta_in_at). Rows with over cols / 8
 *   exceptions (float32 inputs), a span of over 2 cols + 256 buckets, or
 *   2^17 columns or more, are sorted whole (stable LSD radix over the bits in which the
 *   keys differ) and get one limit per element.
 *
 *   Limits come from the caller's table lim2, indexed by s = first + last - 1
 *   for a group of equal keys at 1-based ranks first..last (s in
 *   1 .. 2 cols - 1; twice the mean rank, less 1); lim2[0] must be readable.
 */
#include "methods/della_rank.h"

#include "core/internal.h"

/* The index s of lim2 for element j, counted directly: O(cols). */
uint32_t gta_della_rank2(const void *xi, const void *b, size_t cols, size_t j, int raw)
{
    uint32_t kj = gta_della_key(xi, b, j, raw), less = 0, eq = 0;
    for (size_t t = 0; t < cols; t++) {
        uint32_t kt = gta_della_key(xi, b, t, raw);
        less += kt < kj;
        eq += kt == kj;
    }
    return 2 * less + eq; /* first = less + 1, last = less + eq */
}

void gta_della_limits_of_sorted(const uint64_t *a, size_t n, uint32_t pos, const uint32_t *lim2, uint32_t *out)
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
const uint64_t *gta_della_sort_radix(const uint32_t *key, size_t n, uint32_t vbits, uint64_t *a, uint64_t *t)
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

void gta_della_exceptions_upto(const uint64_t *xs, uint32_t nx, uint32_t hx, const uint32_t *lim2, uint32_t *xl,
                               struct gta_della_walk *w)
{
    uint32_t q = w->p;
    while (q < nx && (uint32_t)(xs[q] >> 48) <= hx) q++;
    gta_della_limits_of_sorted(xs + w->p, q - w->p, w->pos, lim2, xl);
    w->pos += q - w->p;
    w->p = q;
    w->xh = q < nx ? (uint32_t)(xs[q] >> 48) : UINT32_MAX;
}

/* The scalar steps (della_rank.h): one test per sixteen ids or buckets. */
uint32_t gta_della_list_exceptions(const uint16_t *hk, size_t from, size_t cols, uint32_t nx, uint32_t *xc)
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

uint32_t gta_della_list_nonempty(const uint16_t *ca, const uint16_t *cb, uint32_t hlo, uint32_t hmax, uint32_t *list,
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
