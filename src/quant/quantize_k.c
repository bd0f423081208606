/*
 * quantize_k.c — float32 to ggml's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K),
 * reference and imatrix variants, bit-exact with llama-quantize.
 *
 * DESIGN
 *   A 256-element super-block is split into 16 or 8 sub-blocks. Each
 *   sub-block gets its own scale (and min) from a search of helpers.c; the
 *   sub-scales are then themselves quantized (to 4, 6 or 8 bits) against
 *   one or two fp16 super-scales. The final pass re-reads the stored fp16
 *   super-scale and the packed sub-scale and recomputes every element code
 *   with a division; a sub-block whose decoded scale is 0 keeps the codes of
 *   its search (gguf.md §3.3). With an imatrix (§3.4) the searches take
 *   weights qw*sqrt(sigma^2 + x^2) (Q6_K: qw alone), and the sub-scales are
 *   fitted by make_qp_quants / make_qx_quants with the sub-blocks' weight
 *   sums. The per-type packers mirror blocks.h's layouts byte by byte.
 *   Compiled with -ffp-contract=off.
 */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#include "quant/quantize.h"
#include "quant/blocks.h"
#include "quant/helpers.h"

#include <math.h>

#define QK_K ALLOY_QK_K

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Q2_K/Q3_K 2-bit fields: element 128c+32j+l in bits 2j of qs[32c+l]. */
static void pack2(const uint8_t *L, uint8_t *qs)
{
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

/* ------------------------------------------------------------------ Q2_K */

static void q2_final(const float *x, uint8_t *b, uint8_t *L)
{
    const float dd = alloy_get_half(b + 80), dmin = alloy_get_half(b + 82);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = dd * (b[j] & 0xF);
        if (!d) continue;
        const float dm = dmin * (b[j] >> 4);
        for (int ii = 0; ii < 16; ++ii) L[16 * j + ii] = (uint8_t)clampi(alloy_nearest_int((x[16 * j + ii] + dm) / d), 0, 3);
    }
    pack2(L, b + 16);
}

static void q2_block_ref(const float *x, uint8_t *b)
{
    uint8_t L[QK_K];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16], max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
        for (int l = 0; l < 16; ++l) weights[l] = fabsf(x[16 * j + l]);
        scales[j] = alloy_make_qkx_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, 1, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    memset(b, 0, 16);
    if (max_scale > 0) {
        const float iscale = 15.f / max_scale;
        for (int j = 0; j < QK_K / 16; ++j) b[j] = (uint8_t)alloy_nearest_int(iscale * scales[j]);
        alloy_put_half(b + 80, max_scale / 15.f);
    } else {
        alloy_put_half(b + 80, 0.f);
    }
    if (max_min > 0) {
        const float iscale = 15.f / max_min;
        for (int j = 0; j < QK_K / 16; ++j) b[j] |= (uint8_t)(alloy_nearest_int(iscale * mins[j]) << 4);
        alloy_put_half(b + 82, max_min / 15.f);
    } else {
        alloy_put_half(b + 82, 0.f);
    }
    q2_final(x, b, L);
}

static void q2_block_imatrix(const float *x, uint8_t *b, const float *qw)
{
    uint8_t L[QK_K], Ls[QK_K / 16], Lm[QK_K / 16];
    float mins[QK_K / 16], scales[QK_K / 16], sw[QK_K / 16], weight[16];
    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
    const float sigma2 = sumx2 / QK_K;
    for (int j = 0; j < QK_K / 16; ++j) {
        for (int l = 0; l < 16; ++l) weight[l] = qw[16 * j + l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
        sw[j] = 0;
        for (int l = 0; l < 16; ++l) sw[j] += weight[l];
        scales[j] = alloy_make_qkx_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], -0.9f, 0.05f, 36, 0, 1);
    }
    const float dm = alloy_make_qp_quants(QK_K / 16, 15, scales, Ls, sw);
    const float mm = alloy_make_qp_quants(QK_K / 16, 15, mins, Lm, sw);
    alloy_put_half(b + 80, dm);
    alloy_put_half(b + 82, mm);
    for (int j = 0; j < QK_K / 16; ++j) b[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
    q2_final(x, b, L);
}

void alloy_quantize_q2_k(const float *x, void *dst, int64_t n, const float *w)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K, b += 84) {
        if (w) q2_block_imatrix(x, b, w + i * QK_K);
        else q2_block_ref(x, b);
    }
}

/* ------------------------------------------------------------------ Q3_K */

/* Pack the 6-bit u_j (0..63) into Q3_K's 12 scale bytes. */
static void q3_pack_scales(const int *u, uint8_t *s)
{
    memset(s, 0, 12);
    for (int j = 0; j < 16; ++j) {
        if (j < 8) s[j] = (uint8_t)(u[j] & 0xF);
        else s[j - 8] |= (uint8_t)((u[j] & 0xF) << 4);
        s[j % 4 + 8] |= (uint8_t)((u[j] >> 4) << (2 * (j / 4)));
    }
}

static void q3_final(const float *x, uint8_t *b, int8_t *L)
{
    const uint8_t *s = b + 96;
    const float dd = alloy_get_half(b + 108);
    for (int j = 0; j < QK_K / 16; ++j) {
        int u = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
        int sc = (u | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        const float d = dd * sc;
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii) L[16 * j + ii] = (int8_t)(clampi(alloy_nearest_int(x[16 * j + ii] / d), -4, 3) + 4);
    }
    uint8_t *hmask = b, q[QK_K];
    memset(hmask, 0, QK_K / 8);
    for (int j = 0; j < QK_K; ++j) {
        q[j] = (uint8_t)L[j];
        if (q[j] > 3) {
            hmask[j % 32] |= (uint8_t)(1u << (j / 32));
            q[j] -= 4;
        }
    }
    pack2(q, b + 32);
}

static void q3_block(const float *x, uint8_t *b, const float *qw)
{
    int8_t L[QK_K];
    float scales[QK_K / 16];
    int u[QK_K / 16] = {0};
    float d;
    if (qw) {
        float weight[16], sw[QK_K / 16], sumx2 = 0;
        int8_t Ls[QK_K / 16];
        for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
        const float sigma2 = 2 * sumx2 / QK_K;
        for (int j = 0; j < QK_K / 16; ++j) {
            for (int l = 0; l < 16; ++l) weight[l] = qw[16 * j + l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
            float sumw = 0;
            for (int l = 0; l < 16; ++l) sumw += weight[l];
            sw[j] = sumw;
            scales[j] = alloy_make_qx_quants(16, 4, x + 16 * j, L + 16 * j, 1, weight);
        }
        d = alloy_make_qx_quants(QK_K / 16, 32, scales, Ls, 1, sw);
        for (int j = 0; j < QK_K / 16; ++j) u[j] = Ls[j];
    } else {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            scales[j] = alloy_make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        d = 0.f;
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) {
                int8_t l = (int8_t)alloy_nearest_int(iscale * scales[j]);
                u[j] = clampi(l, -32, 31) + 32;
            }
            d = 1 / iscale;
        }
    }
    q3_pack_scales(u, b + 96); /* all zero bytes when the reference found no scale */
    alloy_put_half(b + 108, d);
    q3_final(x, b, L);
}

void alloy_quantize_q3_k(const float *x, void *dst, int64_t n, const float *w)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K, b += 110) q3_block(x, b, w ? w + i * QK_K : NULL);
}

/* ------------------------------------------------------------ Q4_K / Q5_K */

static void k4_pack_scales(const uint8_t *ls, const uint8_t *lm, uint8_t *s)
{
    for (int j = 0; j < QK_K / 32; ++j) {
        if (j < 4) {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            s[j - 0] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

static void k4_scale_min(int j, const uint8_t *q, int *d, int *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

/* Sub-block search and scale packing shared by Q4_K (nmax 15) and Q5_K (31); b starts at d. */
static void k45_scales(const float *x, uint8_t *b, const float *qw, int nmax, uint8_t *L)
{
    uint8_t ls[QK_K / 32], lm[QK_K / 32];
    float weights[32], mins[QK_K / 32], scales[QK_K / 32], sw[QK_K / 32];
    float sigma2 = 0;
    if (qw) {
        float sum_x2 = 0;
        for (int l = 0; l < QK_K; ++l) sum_x2 += x[l] * x[l];
        sigma2 = 2 * sum_x2 / QK_K;
    }
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        const float *xs = x + 32 * j;
        if (qw) {
            for (int l = 0; l < 32; ++l) weights[l] = qw[32 * j + l] * sqrtf(sigma2 + xs[l] * xs[l]);
            float sumw = 0;
            for (int l = 0; l < 32; ++l) sumw += weights[l];
            sw[j] = sumw;
            scales[j] = alloy_make_qkx_quants(32, nmax, xs, weights, L + 32 * j, &mins[j], -0.9f, 0.05f, 36, 0, 1);
            continue;
        }
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(xs[l]);
        scales[j] = nmax == 15
                        ? alloy_make_qkx_quants(32, 15, xs, weights, L + 32 * j, &mins[j], -1.f, 0.1f, 20, 0, 0)
                        : alloy_make_qkx_quants(32, 31, xs, weights, L + 32 * j, &mins[j], -0.5f, 0.1f, 15, 0, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float d, dmin;
    if (qw) {
        d = alloy_make_qp_quants(QK_K / 32, 63, scales, ls, sw);
        dmin = alloy_make_qp_quants(QK_K / 32, 63, mins, lm, sw);
    } else {
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        for (int j = 0; j < QK_K / 32; ++j) {
            uint8_t a = (uint8_t)alloy_nearest_int(inv_scale * scales[j]); /* via uint8_t, as ggml */
            uint8_t m = (uint8_t)alloy_nearest_int(inv_min * mins[j]);
            ls[j] = a < 63 ? a : 63;
            lm[j] = m < 63 ? m : 63;
        }
        d = max_scale / 63.f;
        dmin = max_min / 63.f;
    }
    k4_pack_scales(ls, lm, b + 4);
    alloy_put_half(b, d);
    alloy_put_half(b + 2, dmin);
    const float dd = alloy_get_half(b), dm0 = alloy_get_half(b + 2);
    for (int j = 0; j < QK_K / 32; ++j) {
        int sc, m;
        k4_scale_min(j, b + 4, &sc, &m);
        const float dj = dd * sc;
        if (!dj) continue;
        const float dm = dm0 * m;
        for (int ii = 0; ii < 32; ++ii)
            L[32 * j + ii] = (uint8_t)clampi(alloy_nearest_int((x[32 * j + ii] + dm) / dj), 0, nmax);
    }
}

void alloy_quantize_q4_k(const float *x, void *dst, int64_t n, const float *w)
{
    uint8_t *b = dst, L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K, b += 144) {
        k45_scales(x, b, w ? w + i * QK_K : NULL, 15, L);
        uint8_t *q = b + 16;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

void alloy_quantize_q5_k(const float *x, void *dst, int64_t n, const float *w)
{
    uint8_t *b = dst, L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K, b += 176) {
        k45_scales(x, b, w ? w + i * QK_K : NULL, 31, L);
        uint8_t *qh = b + 16, *ql = b + 48, m1 = 1, m2 = 2;
        memset(qh, 0, QK_K / 8);
        for (int c = 0; c < QK_K; c += 64, ql += 32, m1 <<= 2, m2 <<= 2) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[c + j], l2 = L[c + j + 32];
                if (l1 > 15) {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if (l2 > 15) {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
        }
    }
}

/* ------------------------------------------------------------------ Q6_K */

static void q6_block(const float *x, uint8_t *b, const float *qw)
{
    int8_t L[QK_K];
    float scales[QK_K / 16], max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        scales[ib] = alloy_make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1, qw ? qw + 16 * ib : NULL);
        if (fabsf(scales[ib]) > max_abs_scale) {
            max_abs_scale = fabsf(scales[ib]);
            max_scale = scales[ib];
        }
    }
    if (max_abs_scale < ALLOY_GROUP_MAX_EPS) {
        memset(b, 0, 210);
        return;
    }
    const float iscale = -128.f / max_scale;
    alloy_put_half(b + 208, 1 / iscale);
    int8_t *sc = (int8_t *)(b + 192);
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        int l = alloy_nearest_int(iscale * scales[ib]);
        sc[ib] = (int8_t)(l < 127 ? l : 127);
    }
    const float dd = alloy_get_half(b + 208);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = dd * sc[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii) L[16 * j + ii] = (int8_t)(clampi(alloy_nearest_int(x[16 * j + ii] / d), -32, 31) + 32);
    }
    uint8_t *ql = b, *qh = b + 128;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
            const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
            ql[l] = (uint8_t)(q1 | (q3 << 4));
            ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
            qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                              ((L[j + l + 96] >> 4) << 6));
        }
    }
}

void alloy_quantize_q6_k(const float *x, void *dst, int64_t n, const float *w)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K, b += 210) q6_block(x, b, w ? w + i * QK_K : NULL);
}
