/*
 * quantize.c — float32 to ggml's legacy 32-element block types (Q8_0, Q4_0,
 * Q4_1, Q5_0, Q5_1), their imatrix variants, and the checked entry points.
 *
 * DESIGN
 *   The reference quantizers (gguf.md §3.1) take one scale per block from
 *   the block's extremes, its inverse from the unrounded f32 scale, and code
 *   each element with the rounding ggml uses for that type: roundf for Q8_0,
 *   truncation of x*id + 8.5 (16.5, 0.5) for the others. With an imatrix the
 *   row is quantized as ggml's quantize_row_*_impl: element weights
 *   qw*sqrt(sigma^2 + x^2) with sigma^2 the row's mean square, and the
 *   weighted searches of helpers.c. The dispatcher alloy_quantize_row maps a
 *   dtype to its function; alloy_quantize_rows adds the checks (row length,
 *   finite input) and names the tensor in its errors. The dtype table's
 *   from_f32 rows of the block types are the reference path (alloy_quant_*
 *   below). Compiled with -ffp-contract=off.
 */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#include "quant/quantize.h"
#include "quant/blocks.h"
#include "quant/helpers.h"

#include <float.h>
#include <math.h>

/* roundf (half away from zero) for |v| < 2^31: the truncation's remainder v - trunc(v) is exact. */
static inline int round_away(float v)
{
    int t = (int)v;
    float r = v - (float)t;
    return t + (r >= 0.5f) - (r <= -0.5f);
}

void alloy_quantize_q8_0(const float *x, void *dst, int64_t n)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / ALLOY_QK; i++, x += ALLOY_QK, b += 34) {
        float amax = 0;
        for (int j = 0; j < ALLOY_QK; j++) { /* ggml's MAX(amax, |x|): no libm fmaxf call (inputs are finite) */
            const float a = fabsf(x[j]);
            amax = amax > a ? amax : a;
        }
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        alloy_put_half(b, d);
        for (int j = 0; j < ALLOY_QK; j++) b[2 + j] = (uint8_t)(int8_t)round_away(x[j] * id); /* |x*id| <= 127 */
    }
}

/* Signed value of the largest |x| in a block (first wins). */
static float block_absmax(const float *x)
{
    float amax = 0, max = 0;
    for (int j = 0; j < ALLOY_QK; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static void block_minmax(const float *x, float *min, float *max)
{
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < ALLOY_QK; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *min = lo;
    *max = hi;
}

/* The 5th bits of 32 codes as Q5's little-endian u32 qh, low nibbles into qs. */
static void pack5(const uint8_t *L, uint8_t *qh, uint8_t *qs)
{
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((L[j] & 0x0f) | ((L[j + 16] & 0x0f) << 4));
        h |= ((L[j] & 0x10u) >> 4) << j;
        h |= ((L[j + 16] & 0x10u) >> 4) << (j + 16);
    }
    for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(h >> (8 * k));
}

/* sigma^2 of a legacy imatrix row, and the element weights of one block. */
static float row_sigma2(const float *x, int64_t n)
{
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; j++) sum_x2 += x[j] * x[j];
    return sum_x2 / n;
}

static void block_weights(const float *x, const float *qw, float sigma2, float *w)
{
    for (int j = 0; j < ALLOY_QK; j++) w[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
}

/* Q4_0 (nmax 8) and Q5_0 (nmax 16): symmetric, d = max / -nmax. */
static void quantize_type0(const float *x, uint8_t *b, int64_t n, const float *qw, int nmax)
{
    const int bytes = nmax == 8 ? 18 : 22;
    const float sigma2 = qw ? row_sigma2(x, n) : 0;
    uint8_t L[ALLOY_QK];
    for (int64_t i = 0; i < n / ALLOY_QK; i++, x += ALLOY_QK, b += bytes) {
        float d;
        if (qw) {
            float w[ALLOY_QK];
            int8_t Ls[ALLOY_QK];
            block_weights(x, qw + i * ALLOY_QK, sigma2, w);
            d = alloy_make_qx_quants(ALLOY_QK, nmax, x, Ls, 1, w);
            for (int j = 0; j < ALLOY_QK; j++) L[j] = (uint8_t)Ls[j];
        } else {
            d = block_absmax(x) / -nmax;
            const float id = d ? 1.0f / d : 0.0f;
            const float off = nmax + 0.5f;
            for (int j = 0; j < ALLOY_QK; j++) {
                int q = (int8_t)(x[j] * id + off);
                L[j] = (uint8_t)(q < 2 * nmax - 1 ? q : 2 * nmax - 1);
            }
        }
        alloy_put_half(b, d);
        if (nmax == 8)
            for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
        else
            pack5(L, b + 2, b + 6);
    }
}

/* Q4_1 (nmax 15) and Q5_1 (nmax 31): d = (max-min)/nmax, m = min. */
static void quantize_type1(const float *x, uint8_t *b, int64_t n, const float *qw, int nmax)
{
    const int bytes = nmax == 15 ? 20 : 24;
    const float sigma2 = qw ? row_sigma2(x, n) : 0;
    uint8_t L[ALLOY_QK];
    for (int64_t i = 0; i < n / ALLOY_QK; i++, x += ALLOY_QK, b += bytes) {
        float d, m;
        if (qw) {
            float w[ALLOY_QK], mn;
            block_weights(x, qw + i * ALLOY_QK, sigma2, w);
            d = alloy_make_qkx_quants(ALLOY_QK, nmax, x, w, L, &mn, -0.9f, 0.05f, 36, 0, 1);
            m = -mn;
        } else {
            float max;
            block_minmax(x, &m, &max);
            d = (max - m) / nmax;
            const float id = d ? 1.0f / d : 0.0f;
            for (int j = 0; j < ALLOY_QK; j++) {
                const float v = (x[j] - m) * id + 0.5f;
                if (nmax == 15) {
                    int q = (int8_t)v;
                    L[j] = (uint8_t)(q < 15 ? q : 15);
                } else {
                    L[j] = (uint8_t)v; /* Q5_1: no clamp, as ggml */
                }
            }
        }
        alloy_put_half(b, d);
        alloy_put_half(b + 2, m);
        if (nmax == 15)
            for (int j = 0; j < 16; j++) b[4 + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
        else
            pack5(L, b + 4, b + 8);
    }
}

void alloy_quantize_q4_0(const float *x, void *dst, int64_t n, const float *w) { quantize_type0(x, dst, n, w, 8); }
void alloy_quantize_q5_0(const float *x, void *dst, int64_t n, const float *w) { quantize_type0(x, dst, n, w, 16); }
void alloy_quantize_q4_1(const float *x, void *dst, int64_t n, const float *w) { quantize_type1(x, dst, n, w, 15); }
void alloy_quantize_q5_1(const float *x, void *dst, int64_t n, const float *w) { quantize_type1(x, dst, n, w, 31); }

static size_t count_nonfinite(const float *x, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !isfinite(x[i]);
    return bad;
}

#define FROM_F32(t, call)                                                   \
    size_t alloy_from_f32_##t(const float *src, void *dst, size_t n)       \
    {                                                                       \
        size_t bad = count_nonfinite(src, n);                               \
        call;                                                               \
        return bad;                                                         \
    }
FROM_F32(q8_0, alloy_quantize_q8_0(src, dst, (int64_t)n))
FROM_F32(q4_0, alloy_quantize_q4_0(src, dst, (int64_t)n, NULL))
FROM_F32(q4_1, alloy_quantize_q4_1(src, dst, (int64_t)n, NULL))
FROM_F32(q5_0, alloy_quantize_q5_0(src, dst, (int64_t)n, NULL))
FROM_F32(q5_1, alloy_quantize_q5_1(src, dst, (int64_t)n, NULL))
FROM_F32(q2_k, alloy_quantize_q2_k(src, dst, (int64_t)n, NULL))
FROM_F32(q3_k, alloy_quantize_q3_k(src, dst, (int64_t)n, NULL))
FROM_F32(q4_k, alloy_quantize_q4_k(src, dst, (int64_t)n, NULL))
FROM_F32(q5_k, alloy_quantize_q5_k(src, dst, (int64_t)n, NULL))
FROM_F32(q6_k, alloy_quantize_q6_k(src, dst, (int64_t)n, NULL))
FROM_F32(iq4_nl, alloy_quantize_iq4_nl(src, dst, (int64_t)n, NULL))
#undef FROM_F32

size_t alloy_quantize_row(enum alloy_dtype t, const float *x, void *dst, int64_t n, const float *imatrix)
{
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(t);
    if (!tr || t < ALLOY_DTYPE_FIRST_QUANT || n <= 0 || n % tr->block) return 0;
    switch (t) {
    case ALLOY_DTYPE_Q8_0: alloy_quantize_q8_0(x, dst, n); break;
    case ALLOY_DTYPE_Q4_0: alloy_quantize_q4_0(x, dst, n, imatrix); break;
    case ALLOY_DTYPE_Q4_1: alloy_quantize_q4_1(x, dst, n, imatrix); break;
    case ALLOY_DTYPE_Q5_0: alloy_quantize_q5_0(x, dst, n, imatrix); break;
    case ALLOY_DTYPE_Q5_1: alloy_quantize_q5_1(x, dst, n, imatrix); break;
    case ALLOY_DTYPE_Q2_K: alloy_quantize_q2_k(x, dst, n, imatrix); break;
    case ALLOY_DTYPE_Q3_K: alloy_quantize_q3_k(x, dst, n, imatrix); break;
    case ALLOY_DTYPE_Q4_K: alloy_quantize_q4_k(x, dst, n, imatrix); break;
    case ALLOY_DTYPE_Q5_K: alloy_quantize_q5_k(x, dst, n, imatrix); break;
    case ALLOY_DTYPE_Q6_K: alloy_quantize_q6_k(x, dst, n, imatrix); break;
    case ALLOY_DTYPE_IQ4_NL: alloy_quantize_iq4_nl(x, dst, n, imatrix); break;
    default: return 0;
    }
    return (size_t)(n / tr->block) * tr->block_bytes;
}

int alloy_quantize_rows(enum alloy_dtype t, const float *x, void *dst, int64_t nrows, int64_t n_per_row,
                        const float *imatrix, const char *file, const char *tensor, struct alloy_err *err)
{
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(t);
    if (!tr || t < ALLOY_DTYPE_FIRST_QUANT)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: a ggml block type to quantize to, %s", file, tensor,
                             tr ? tr->name : "an unknown dtype");
    if (n_per_row <= 0 || nrows < 0 || n_per_row % tr->block)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: a row length that is a multiple of %s's block of %u, %lld",
                             file, tensor, tr->name, (unsigned)tr->block, (long long)n_per_row);
    int finite = 1; /* a branch-free pass the compiler vectorizes; the position only when one is not */
    for (int64_t j = 0; j < nrows * n_per_row; j++) finite &= fabsf(x[j]) <= FLT_MAX;
    for (int64_t r = 0; !finite && r < nrows; r++) {
        const float *row = x + r * n_per_row;
        for (int64_t j = 0; j < n_per_row; j++)
            if (!isfinite(row[j]))
                return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: finite values to quantize to %s, %s at row %lld column %lld",
                                     file, tensor, tr->name, isnan(row[j]) ? "NaN" : "Inf", (long long)r, (long long)j);
    }
    if (imatrix && t != ALLOY_DTYPE_Q8_0) {
        uint8_t *out = dst;
        for (int64_t r = 0; r < nrows; r++)
            out += alloy_quantize_row(t, x + r * n_per_row, out, n_per_row, imatrix);
    } else if (nrows > 0) {
        alloy_quantize_row(t, x, dst, nrows * n_per_row, NULL);
    }
    return ALLOY_OK;
}
