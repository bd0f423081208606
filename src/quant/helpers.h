/*
 * helpers.h — the scale searches shared by the legacy and K-quant
 * quantizers (gguf.md §3.2), and the byte helpers of their blocks.
 *
 * DESIGN
 *   Each search mirrors ggml's helper of the same name operation for
 *   operation (sequential f32 sums from element 0, products in source order,
 *   no FMA): any reordering changes which candidate scale wins and so the
 *   stored bytes. nearest_int is ggml's magic-number rounding.
 */
#ifndef ALLOY_QUANT_HELPERS_H
#define ALLOY_QUANT_HELPERS_H

#include <stdint.h>
#include <string.h>

#include "alloy.h"

#define ALLOY_GROUP_MAX_EPS 1e-15f

/* ggml's nearest_int: round half to even through the f32 mantissa of v + 1.5*2^23. */
static inline int alloy_nearest_int(float v)
{
    float t = v + 12582912.f;
    int32_t i;
    memcpy(&i, &t, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

static inline void alloy_put_half(uint8_t *p, float f)
{
    uint16_t h = alloy_f32_to_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

static inline float alloy_get_half(const uint8_t *p) { return alloy_f16_to_f32((uint16_t)(p[0] | (p[1] << 8))); }

/* Symmetric scale for n values, L in [0, 2*nmax-1]; w NULL: weights by rmse_type. */
float alloy_make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type, const float *w);
/* Q3_K's symmetric search with coordinate descent (weights x^2), L in [0, 2*nmax-1]. */
float alloy_make_q3_quants(int n, int nmax, const float *x, int8_t *L);
/* Asymmetric scale and min (ggml make_qkx2_quants; x3 = 1: make_qkx3_quants, w NULL means x^2); n <= 256. */
float alloy_make_qkx_quants(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                            float rmin, float rdelta, int nstep, int use_mad, int x3);
/* Scale of non-negative x (sub-scales), L in [0, nmax], weights w. */
float alloy_make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *w);

#endif
