/*
 * iq4_nl.c — ggml's IQ4_NL: 32-element blocks of 4-bit indices into a fixed
 * non-linear table of 16 int8 levels, one fp16 scale per block (18 bytes).
 *
 * DESIGN
 *   IQ4_NL is llama-quantize's fallback for Q2_K/Q3_K rows whose length is
 *   not a multiple of 256 (gguf.md §3.7), so what matters is ggml's
 *   quantize_iq4_nl, the function ggml_quantize_chunk calls with or without
 *   an imatrix; it is mirrored here operation for operation:
 *     - weights: x^2, or with an imatrix qw*sqrt(sigma^2 + x^2) where sigma^2
 *       is 2/32 of the block's sum of squares;
 *     - a first scale from the signed extreme `max` (d = max/127), every
 *       element mapped to its nearest table level (ties to the upper level,
 *       ggml's best_index_int8), and the least-squares scale sumqx/sumq2;
 *     - 15 more candidate inverse scales (itry - 127)/max, itry = -7..7, each
 *       kept when its sumqx^2/sumq2 beats the best so far;
 *     - the final indices from the unrounded f32 scale, then fp16(scale).
 *   Sums run from element 0 in f32; the file is compiled with
 *   -ffp-contract=off. ggml's quantize_row_iq4_nl_ref (ntry -1: no search,
 *   no final re-indexing) is here too for completeness; an all-zero block in
 *   it keeps the previous block's indices as in ggml (ggml leaves the first
 *   block's uninitialised; here they start as 0). ggml before 2026-03 had no
 *   sumq2 > 0 guard (a NaN scale when every weight of a block is 0, only
 *   possible with a zero imatrix); this follows the guarded version.
 */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#include "quant/blocks.h"
#include "quant/helpers.h"
#include "quant/quantize.h"

#include <math.h>

#define IQ4NL_LEVELS {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
const int8_t alloy_iq4nl_values[16] = IQ4NL_LEVELS;
static const float k_levels[16] = IQ4NL_LEVELS; /* the same, as the floats the searches compare with */

/* ggml's best_index_int8 over the 16 levels: bisection, ties to the upper level. */
static inline int best_index(float x)
{
    const float *v = k_levels;
    if (x <= v[0]) return 0;
    if (x >= v[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (x < v[mid]) hi = mid;
        else lo = mid;
    }
    return x - v[hi - 1] < v[hi] - x ? hi - 1 : hi;
}

/* sumqx and sumq2 of the codes that inverse scale id gives block x; L receives them when non-NULL. */
static void score(const float *x, const float *w, float id, uint8_t *L, float *sumqx, float *sumq2)
{
    float sx = 0, s2 = 0;
    for (int j = 0; j < ALLOY_QK; j++) {
        int l = best_index(id * x[j]);
        if (L) L[j] = (uint8_t)l;
        float q = k_levels[l];
        sx += w[j] * q * x[j];
        s2 += w[j] * q * q;
    }
    *sumqx = sx;
    *sumq2 = s2;
}

/* One block (ggml's quantize_row_iq4_nl_impl with super_block = block = 32). L: in/out indices. */
static void iq4_block(const float *x, uint8_t *b, const float *qw, int ntry, uint8_t *L)
{
    float w[ALLOY_QK], amax = 0, max = 0, d = 0;
    float sigma2 = 0;
    for (int j = 0; j < ALLOY_QK; j++) sigma2 += x[j] * x[j];
    sigma2 *= 2.f / ALLOY_QK;
    for (int j = 0; j < ALLOY_QK; j++) w[j] = qw ? qw[j] * sqrtf(sigma2 + x[j] * x[j]) : x[j] * x[j];
    for (int j = 0; j < ALLOY_QK; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    if (amax >= ALLOY_GROUP_MAX_EPS) {
        const float v0 = k_levels[0];
        float sumqx, sumq2;
        d = ntry > 0 ? -max / v0 : max / v0;
        score(x, w, 1 / d, L, &sumqx, &sumq2);
        d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
        float best = d * sumqx;
        for (int itry = -ntry; itry <= ntry; itry++) {
            score(x, w, (float)(itry - 127) / max, NULL, &sumqx, &sumq2); /* ggml: (itry + values[0])/max */
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
    }
    alloy_put_half(b, d);
    if (ntry > 0) {
        const float id = d ? 1 / d : 0;
        for (int j = 0; j < ALLOY_QK; j++) L[j] = (uint8_t)best_index(id * x[j]);
    }
    for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
}

void alloy_quantize_iq4_nl(const float *x, void *dst, int64_t n, const float *w)
{
    uint8_t *b = dst, L[ALLOY_QK];
    for (int64_t i = 0; i < n / ALLOY_QK; i++) iq4_block(x + i * ALLOY_QK, b + i * 18, w ? w + i * ALLOY_QK : NULL, 7, L);
}

void alloy_quantize_iq4_nl_ref(const float *x, void *dst, int64_t n)
{
    uint8_t *b = dst, L[ALLOY_QK] = {0};
    for (int64_t i = 0; i < n / ALLOY_QK; i++) iq4_block(x + i * ALLOY_QK, b + i * 18, NULL, -1, L);
}

void alloy_dequant_iq4_nl(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK; i++, b += 18, y += ALLOY_QK) {
        const float d = alloy_get_half(b);
        for (int j = 0; j < 16; j++) {
            y[j] = d * alloy_iq4nl_values[b[2 + j] & 0x0f];
            y[j + 16] = d * alloy_iq4nl_values[b[2 + j] >> 4];
        }
    }
}
