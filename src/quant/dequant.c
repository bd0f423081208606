/*
 * dequant.c — ggml's block types to float32, bit-exact with ggml's
 * dequantize_row_* reference functions.
 *
 * DESIGN
 *   Each function walks whole blocks (layouts in blocks.h, read by byte
 *   offset) and computes every element with the same float operations in
 *   the same order as ggml: the fp16 scale widened exactly, then
 *   `(d * sc) * q - (dmin * m)` and so on, each product rounded to float32
 *   before the next operation. Contraction into FMA would change the last
 *   bit, so this file is compiled with -ffp-contract=off (Makefile) and
 *   asks for it with the standard pragma as well. tests/test_quant.c pins
 *   the results to llama.cpp's own dequantized floats (sha256 per tensor).
 */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#include "quant/blocks.h"

#include "alloy.h"

#include <string.h>

static inline float half_at(const uint8_t *p) { return alloy_f16_to_f32((uint16_t)(p[0] | (p[1] << 8))); }

void alloy_dequant_q8_0(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK; i++, b += 34, y += ALLOY_QK) {
        const float d = half_at(b);
        for (int j = 0; j < ALLOY_QK; j++) y[j] = (float)(int8_t)b[2 + j] * d;
    }
}

void alloy_dequant_q4_0(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK; i++, b += 18, y += ALLOY_QK) {
        const float d = half_at(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((qs[j] & 0x0f) - 8) * d;
            y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
        }
    }
}

void alloy_dequant_q4_1(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK; i++, b += 20, y += ALLOY_QK) {
        const float d = half_at(b), m = half_at(b + 2);
        const uint8_t *qs = b + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(qs[j] & 0x0f) * d + m;
            y[j + 16] = (float)(qs[j] >> 4) * d + m;
        }
    }
}

/* The 5th bits of Q5_0/Q5_1: element j's is bit j of the little-endian u32 qh. */
static inline uint32_t qh_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void alloy_dequant_q5_0(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK; i++, b += 22, y += ALLOY_QK) {
        const float d = half_at(b);
        const uint32_t qh = qh_u32(b + 2);
        const uint8_t *qs = b + 6;
        for (int j = 0; j < 16; j++) {
            int x0 = (int)((qs[j] & 0x0f) | (((qh >> j) << 4) & 0x10)) - 16; /* signed: Q5_0's trap */
            int x1 = (int)((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16;
            y[j] = (float)x0 * d;
            y[j + 16] = (float)x1 * d;
        }
    }
}

void alloy_dequant_q5_1(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK; i++, b += 24, y += ALLOY_QK) {
        const float d = half_at(b), m = half_at(b + 2);
        const uint32_t qh = qh_u32(b + 4);
        const uint8_t *qs = b + 8;
        for (int j = 0; j < 16; j++) {
            int x0 = (int)((qs[j] & 0x0f) | (((qh >> j) << 4) & 0x10));
            int x1 = (int)((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10));
            y[j] = (float)x0 * d + m;
            y[j + 16] = (float)x1 * d + m;
        }
    }
}

void alloy_dequant_q2_k(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK_K; i++, b += 84) {
        const uint8_t *sc = b, *q = b + 16;
        const float d = half_at(b + 80), min = half_at(b + 82);
        int is = 0;
        for (int c = 0; c < 2; c++, q += 32) {
            for (int j = 0, shift = 0; j < 4; j++, shift += 2) {
                for (int half = 0; half < 2; half++) { /* two 16-element sub-blocks per 2-bit plane */
                    const float dl = d * (float)(sc[is] & 0x0f), ml = min * (float)(sc[is] >> 4);
                    is++;
                    for (int l = 0; l < 16; l++) *y++ = dl * (float)((q[16 * half + l] >> shift) & 3) - ml;
                }
            }
        }
    }
}

/* Q3_K's 16 six-bit scales (u = sc + 32) from their 12 packed bytes (gguf.md §2). */
static void q3k_scales(const uint8_t *p, int8_t *out)
{
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? p[j] & 0x0f : p[j - 8] >> 4;
        int hi = (p[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (int8_t)((lo | hi << 4) - 32);
    }
}

void alloy_dequant_q3_k(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK_K; i++, b += 110) {
        const uint8_t *hm = b, *q = b + 32;
        const float d_all = half_at(b + 108);
        int8_t scales[16];
        q3k_scales(b + 96, scales);
        int is = 0;
        uint8_t m = 1;
        for (int c = 0; c < 2; c++, q += 32) {
            for (int j = 0, shift = 0; j < 4; j++, shift += 2, m = (uint8_t)(m << 1)) {
                for (int half = 0; half < 2; half++) {
                    const float dl = d_all * (float)(scales[is++]);
                    for (int l = 0; l < 16; l++) {
                        int k = 16 * half + l;
                        int v = ((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4);
                        *y++ = dl * (float)v;
                    }
                }
            }
        }
    }
}

/* Scale and min of sub-block j of a Q4_K/Q5_K super-block (ggml's get_scale_min_k4). */
static inline void scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

void alloy_dequant_q4_k(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK_K; i++, b += 144) {
        const float d = half_at(b), min = half_at(b + 2);
        const uint8_t *scales = b + 4, *q = b + 16;
        for (int is = 0; is < 8; is += 2, q += 32) {
            uint8_t sc, m;
            scale_min_k4(is, scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = min * (float)m;
            scale_min_k4(is + 1, scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = min * (float)m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0x0f) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

void alloy_dequant_q5_k(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK_K; i++, b += 176) {
        const float d = half_at(b), min = half_at(b + 2);
        const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + 48;
        uint8_t u1 = 1, u2 = 2;
        for (int is = 0; is < 8; is += 2, ql += 32, u1 = (uint8_t)(u1 << 2), u2 = (uint8_t)(u2 << 2)) {
            uint8_t sc, m;
            scale_min_k4(is, scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = min * (float)m;
            scale_min_k4(is + 1, scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = min * (float)m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)((ql[l] & 0x0f) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

void alloy_dequant_q6_k(const void *restrict src, float *restrict y, size_t n)
{
    const uint8_t *b = src;
    for (size_t i = 0; i < n / ALLOY_QK_K; i++, b += 210) {
        const float d = half_at(b + 208);
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int h = 0; h < 2; h++, y += 128, ql += 64, qh += 32, sc += 8) {
            /* quarter k (elements 32k..32k+31): low nibble of ql[l] (k 0) or ql[l+32] (k 1), high nibble
             * (k 2, 3); top bits 2k..2k+1 of qh[l]; sub-block of 16 = 2k + l/16. (d * sc) * q as ggml. */
            for (int k = 0; k < 4; k++) {
                const uint8_t *lo = ql + 32 * (k & 1);
                const int nshift = 4 * (k >> 1), hshift = 2 * k;
                for (int s16 = 0; s16 < 2; s16++) {
                    const float ds = d * (float)sc[2 * k + s16];
                    for (int l = 16 * s16; l < 16 * s16 + 16; l++) {
                        int q = (((lo[l] >> nshift) & 0x0f) | (((qh[l] >> hshift) & 3) << 4)) - 32;
                        y[32 * k + l] = ds * (float)q;
                    }
                }
            }
        }
    }
}
