/*
 * gta_avx512.c — the task-arithmetic family's fused AVX-512 loops (the
 * "avx512" kernel table's gta_scan_fused and gta_apply_fused):
 * the L1 pass of a random or della model, and the consensus merge of
 * models with keep bits, sixteen elements at a time.
 *
 * DESIGN
 *   gta_loops.h's portable loops go block by block through arrays: deltas, keep
 *   masks (one uint32 per element), limits, draws, then the bitmap and the
 *   L1 lanes; apply() loads the bits back into masks and merges. Here the
 *   keep decisions stay in mask registers from the compare to the bitmap
 *   word, the masked adds of the L1 lanes and the masked weighted deltas,
 *   so nothing per element is written and read back. The operations, their
 *   order and their rounding are gta_loops.h's (no FMA; the L1 lanes take element
 *   q into lane q % 8 in order; a dropped entry adds nothing, as +0 does
 *   there), so the bits are the same; tests/test_gta_avx512.c compares the two.
 *   The chunk loops call them through the job's kernel table (only the
 *   AVX-512 table has them) for blocks on 64-element (scan) or 16-element
 *   (apply) boundaries.
 */
#include "kernels/kernels.h"

#include "core/internal.h"
#include "methods/gta.h"

#if ALLOY_X86_DISPATCH
#include <immintrin.h>

/* Sixteen input values from element j of p: float32, or bfloat16 widened (raw). */
__attribute__((target("avx2,avx512f,avx512dq,avx512vl,avx512bw"))) static ALLOY_INLINE __m512
load16(const void *p, size_t j, int raw)
{
    if (raw)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)((const uint16_t *)p + j))), 16));
    return _mm512_loadu_ps((const float *)p + j);
}

/* The L1 pass of a random or della model over a block of n elements (n and the element index e
 * multiples of 64), fused with AVX-512: sixteen elements at a time, the draws (eight hashes), the
 * keep decisions as a mask (della: the limits gathered from the row's bucket table, its exceptions
 * patched; else x < draw_thr), the keep bits straight from the masks, and the eight L1 lanes (element
 * q into lane q % 8, in order; dropped entries add nothing, as +0 does). The same bits as keep_block,
 * bits_store and l1_block. row: NULL for a threshold, else della's row of block [j0, j0 + n). */
__attribute__((target("avx2,avx512f,avx512dq,avx512vl,avx512bw"))) static ALLOY_INLINE void
scan_block_body(const struct gta_model *m, const struct gta_della_row *row, uint32_t *xnext, uint64_t e,
                const void *xi, const void *b, int raw, size_t n, size_t j0, uint64_t c0, uint64_t c1, double *before,
                double *after)
{
    const uint64_t rk = m->rng_key;
    const __m512i key = _mm512_set1_epi64((long long)rk), gamma = _mm512_set1_epi64((long long)alloy_rng_gamma(rk));
    const __m512i c1m = _mm512_set1_epi64((long long)0xbf58476d1ce4e5b9ull);
    const __m512i c2m = _mm512_set1_epi64((long long)0x94d049bb133111ebull);
    const __m512i nosign = _mm512_set1_epi32(0x7fffffff), eight = _mm512_set1_epi64(8);
    const int all = m->draw_thr >= (uint64_t)1 << 32;
    const __m512i thr = _mm512_set1_epi32((int)(uint32_t)m->draw_thr);
    __m512i ctr = _mm512_add_epi64(_mm512_set1_epi64((long long)(e >> 1)), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
    __m512d vb = _mm512_loadu_pd(before), va = _mm512_loadu_pd(after);
    for (size_t q = 0; q < n; q += 64) {
        uint64_t word = 0;
        for (size_t o = q; o < q + 64; o += 16) {
            /* alloy_rng_u64 on eight pairs (core/internal.h: the same Weyl step and finalizer); 32 random
               bits per element, the low (even element) and high (odd) halves of the pair's hash */
            __m512i z = _mm512_add_epi64(key, _mm512_mullo_epi64(ctr, gamma));
            z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), c1m);
            z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), c2m);
            const __m512i x = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
            ctr = _mm512_add_epi64(ctr, eight);
            __mmask16 k;
            if (row) {
                const __m512i id = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(row->hk + j0 + o)));
                k = _mm512_cmple_epu32_mask(x, _mm512_i32gather_epi32(id, (const void *)row->bucket, 4));
                if (*xnext < row->nx && row->xcol[*xnext] < j0 + o + 16) {
                    uint32_t xv[16];
                    _mm512_storeu_si512(xv, x);
                    for (; *xnext < row->nx && row->xcol[*xnext] < j0 + o + 16; ++*xnext) {
                        const unsigned lane = (unsigned)(row->xcol[*xnext] - j0 - o);
                        k = (__mmask16)((k & ~(1u << lane)) | (unsigned)(xv[lane] <= row->xlim[*xnext]) << lane);
                    }
                }
            } else {
                k = all ? (__mmask16)0xffff : _mm512_cmplt_epu32_mask(x, thr);
            }
            word |= (uint64_t)k << (o - q);
            const __m512i d =
                _mm512_and_si512(_mm512_castps_si512(_mm512_sub_ps(load16(xi, o, raw), load16(b, o, raw))), nosign);
            const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_castsi512_ps(d)));
            const __m512d hi = _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(d, 1)));
            vb = _mm512_add_pd(vb, lo);
            va = _mm512_mask_add_pd(va, (__mmask8)k, va, lo);
            vb = _mm512_add_pd(vb, hi);
            va = _mm512_mask_add_pd(va, (__mmask8)(k >> 8), va, hi);
        }
        if (m->keep_bits) {
            const uint64_t w = (e + q) >> 6;
            if (e + q < c0 || e + q + 64 > c1) /* shared with a neighbouring chunk: bits_store's rule */
                atomic_fetch_or_explicit(&m->keep_bits[w], word, memory_order_relaxed);
            else
                atomic_store_explicit(&m->keep_bits[w], word, memory_order_relaxed);
        }
    }
    _mm512_storeu_pd(before, vb);
    _mm512_storeu_pd(after, va);
}

__attribute__((target("avx2,avx512f,avx512dq,avx512vl,avx512bw"))) void
alloy_avx512_gta_scan_fused(const struct gta_model *m, const struct gta_della_row *row, uint32_t *xnext, uint64_t e,
                      const void *xi, const void *b, int raw, size_t n, size_t j0, uint64_t c0, uint64_t c1,
                      double *before, double *after)
{
    if (raw) scan_block_body(m, row, xnext, e, xi, b, 1, n, j0, c0, c1, before, after);
    else scan_block_body(m, row, xnext, e, xi, b, 0, n, j0, c0, c1, before, after);
}

/* The consensus merge of a block of n elements (n and the element index e multiples of 16) whose sparse
 * models all have keep bits, fused with AVX-512: per sixteen elements and model, the weighted delta
 * masked by the keep bits as a mask register, then merge_block's sign election, sums, divisor and
 * output, in the same float operations and order (no FMA), so the same bits. The block starts at offset
 * off of the chunk's inputs x (element e of the tensor); out: its n outputs. */
__attribute__((target("avx2,avx512f,avx512dq,avx512vl,avx512bw"))) static ALLOY_INLINE void
apply_block_body(const struct gta_state *s, const float *const *x, size_t off, uint64_t e, size_t n, const float *coef,
                 int raw, float *out)
{
    const int nm = s->nm;
    const void *b = gta_in_at(x[s->base], off, raw);
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), lambda = _mm512_set1_ps(s->lambda);
    __m512 D[GTA_MAX_MODELS];
    for (size_t o = 0; o < n; o += 16) {
        const __m512 bv = load16(b, o, raw);
        const uint64_t at = e + o;
        __m512 sum = zero;
        for (int j = 0; j < nm; j++) {
            const struct gta_model *m = &s->m[j];
            __m512 v = _mm512_mul_ps(_mm512_set1_ps(coef[j]),
                                     _mm512_sub_ps(load16(gta_in_at(x[m->input], off, raw), o, raw), bv));
            if (m->sparse) {
                uint64_t word = atomic_load_explicit(&m->keep_bits[at >> 6], memory_order_relaxed);
                v = _mm512_maskz_mov_ps((__mmask16)(word >> (at & 63)), v);
            }
            D[j] = v;
            sum = _mm512_add_ps(sum, v); /* 0 + the first term, then the others in model order */
        }
        const __mmask16 pos = _mm512_cmp_ps_mask(sum, zero, _CMP_GE_OQ);
        __m512 num = zero, z = zero;
        for (int j = 0; j < nm; j++) {
            const __mmask16 agree = (__mmask16)((pos & _mm512_cmp_ps_mask(D[j], zero, _CMP_GT_OQ)) |
                                                (~pos & _mm512_cmp_ps_mask(D[j], zero, _CMP_LT_OQ)));
            num = _mm512_add_ps(num, _mm512_maskz_mov_ps(agree, D[j]));
            z = _mm512_add_ps(z, _mm512_maskz_mov_ps(agree, _mm512_set1_ps(s->m[j].w)));
        }
        if (s->normalize)
            num = _mm512_div_ps(num, _mm512_mask_mov_ps(z, _mm512_cmp_ps_mask(z, zero, _CMP_EQ_OQ), one));
        _mm512_storeu_ps(out + o, _mm512_add_ps(bv, _mm512_mul_ps(lambda, num)));
    }
}

__attribute__((target("avx2,avx512f,avx512dq,avx512vl,avx512bw"))) void
alloy_avx512_gta_apply_fused(const struct gta_state *s, const float *const *x, size_t off, uint64_t e, size_t n,
                       const float *coef, int raw, float *out)
{
    if (raw) apply_block_body(s, x, off, e, n, coef, 1, out);
    else apply_block_body(s, x, off, e, n, coef, 0, out);
}
#endif
