/*
 * avx512.c — the "avx512" kernel table (kernels.h): the selection's window
 * pass and DELLA's row steps with AVX-512 compresses and compares, the
 * draws with 64-bit lane multiplies, and the task-arithmetic family's
 * fused loops (gta_avx512.c).
 *
 * DESIGN
 *   The window pass becomes one compare and one compress per 16 keys (no
 *   branch per group: the wide windows of breadcrumbs' outlier selections
 *   take keys everywhere). DELLA's row code (methods/della_rank.h) gets a
 *   key loop that lists the exceptions as it goes (a compress of their
 *   columns), a sort of up to 32 exceptions that counts each one's place
 *   with vector compares, and a listing of the nonempty buckets by
 *   compress. The draws are the portable body compiled for AVX-512 (the
 *   hash's 64-bit multiplies vectorize). The chunk loops and conversion
 *   rows are the AVX2 table's, which call the fused loops through this
 *   table. Every result equals the scalar table's: integer work, or the
 *   same float operations in the same order. Only the CPU probe
 *   (kernels.c) hands this table out, on CPUs with AVX-512 F, DQ, VL, BW.
 */
#include "kernels/kernels.h"

#include "core/internal.h"

#if ALLOY_X86_DISPATCH
#include "methods/della_rank.h"
#include "methods/gta_loops.h"
#include "methods/select_window.h"

#include <immintrin.h>

__attribute__((target("avx512f"))) static void window_add_avx512(const struct alloy_select *s, size_t chunk,
                                                                 const uint32_t *keys, size_t n)
{
    struct alloy_sel_window *w = s->window;
    struct sel_bucket *b = w ? alloy_sel_window_record(w, chunk) : NULL;
    if (!b || atomic_load_explicit(&w->failed, memory_order_relaxed)) return;
    const uint32_t lo = w->lo, hi = w->hi, span = hi - lo;
    const uint32_t zlow = count_zero_low(w, b, keys, n);
    const __m512i vlo = _mm512_set1_epi32((int)lo), vhi = _mm512_set1_epi32((int)hi);
    const __m512i vspan = _mm512_set1_epi32((int)span), vz = _mm512_set1_epi32((int)zlow);
    uint64_t above = 0;
    size_t j = b->n;
    if (!alloy_sel_bucket_reserve(w, b, j + n + 16)) return; /* every store below writes 16 keys, taken or not */
    uint32_t *dst = b->keys;
    for (size_t e = 0; e < n; e += 16) {
        const __mmask16 lm = n - e >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - e)) - 1);
        const __m512i k = _mm512_maskz_loadu_epi32(lm, keys + e);
        above += (uint64_t)__builtin_popcount(_mm512_mask_cmpgt_epu32_mask(lm, k, vhi));
        __mmask16 t = _mm512_mask_cmple_epu32_mask(lm, _mm512_sub_epi32(k, vlo), vspan);
        if (zlow) t &= _mm512_test_epi32_mask(k, vz);
        _mm512_storeu_si512((void *)(dst + j), _mm512_maskz_compress_epi32(t, k)); /* no branch on t */
        j += (size_t)__builtin_popcount(t);
    }
    b->above += above;
    uint64_t taken = j - b->n;
    b->n = j;
    if (taken && atomic_fetch_add_explicit(&w->total, taken, memory_order_relaxed) + taken > s->window_keys)
        atomic_store_explicit(&w->failed, 1, memory_order_relaxed);
}

__attribute__((target("avx512f,avx512dq,avx512vl"))) static void
draw_avx512(uint64_t rk, uint64_t e, size_t n, uint64_t thr, const uint32_t *restrict kmax, uint32_t *restrict keep)
{
    gta_draw_body(rk, e, n, thr, kmax, keep);
}

/* ---------------------------------------------------------------- DELLA's row steps */

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
    return h <= hmax ? gta_della_list_nonempty(ca, cb, h, hmax, list, nl) : nl;
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


/* The key loop of gta_della_row_body with AVX-512, sixteen columns at a time: the bucket ids, the largest
 * key and the smallest key >= 2^16 less 2^16 (as gta_della_keys computes them), and the exceptions'
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
        uint32_t k = gta_della_key(xi, b, j, raw);
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

static const struct gta_della_steps della_steps_avx512 = {
    .keys_listing = keys_avx512,
    .list_exceptions = gta_della_list_exceptions, /* unused: the key loop lists them */
    .list_nonempty = list_nonempty_avx512,
    .sort_small = sort_small_avx512,
};

__attribute__((target("avx2,avx512f,avx512bw,avx512vl"))) static void
della_row_avx512(const void *xi, const void *b, size_t cols, const uint32_t *lim2, uint32_t *slot, uint64_t *sort,
                 int raw, struct gta_della_row *row)
{
    gta_della_row_body(&della_steps_avx512, xi, b, cols, lim2, slot, sort, raw, row);
}

const struct alloy_kernels alloy_kernels_avx512 = {
    .isa = "avx512",
    .to_f32 = alloy_avx2_to_f32,
    .from_f32 = alloy_avx2_from_f32,
    .copy_stream = alloy_avx2_copy_stream,
    .sel_window_add = window_add_avx512,
    .gta_draw = draw_avx512,
    .gta_scan = alloy_avx2_gta_scan,
    .gta_apply = alloy_avx2_gta_apply,
    .gta_scan_fused = alloy_avx512_gta_scan_fused,
    .gta_apply_fused = alloy_avx512_gta_apply_fused,
    .della_row = della_row_avx512,
};
#endif
