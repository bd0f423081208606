/*
 * test_quant_search.c — the scale searches of src/quant/helpers.c against
 * plain sequential references written here from gguf.md §3.2.
 *
 * DESIGN
 *   helpers.c evaluates the candidate scales of make_qx_quants and
 *   make_qkx_quants side by side in SIMD lanes (make_qkx speculatively: a
 *   winner changes the min the later candidates use). The golden files pin
 *   the bytes for one model; this test pins the searches themselves on many
 *   random groups (7 distributions: gaussian-like, heavy tails, zeros,
 *   constant, coarse steps, all negative, tiny values; with and without
 *   weights, all the
 *   (n, nmax, rmin, rdelta, nstep) the quantizers use): the result, the min
 *   and every code must equal the one-candidate-at-a-time loops below,
 *   which are the textbook algorithm with float32 sums from element 0.
 */
#include "test.h"

#include "quant/helpers.h"

#include <stdlib.h>

static int ref_nearest(float v)
{
    float t = v + 12582912.f;
    int32_t i;
    memcpy(&i, &t, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static int clamp_i(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* make_qx_quants, rmse_type 1 (weights x^2) or the given weights. */
static float ref_qx(int n, int nmax, const float *x, int8_t *L, const float *w)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]), max = x[i];
    if (amax < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0;
    }
    float best = 0, scale = 0;
    for (int k = 0; k <= 18; k++) { /* k = 0: is = -nmax/max; then -9..-1, 1..9 */
        int step = k == 0 ? 0 : k <= 9 ? k - 10 : k - 9;
        float is = k == 0 ? -nmax / max : -(nmax + 0.1f * step) / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = clamp_i(ref_nearest(is * x[i]), -nmax, nmax - 1);
            float wi = w ? w[i] : x[i] * x[i];
            sumlx += wi * x[i] * l;
            suml2 += wi * l * l;
        }
        int take = k == 0 || (suml2 > 0 && sumlx * sumlx > best * suml2);
        if (!take) continue;
        scale = k == 0 && !suml2 ? 0 : sumlx / suml2;
        best = scale * sumlx;
        for (int i = 0; i < n; i++) L[i] = (int8_t)(nmax + clamp_i(ref_nearest(is * x[i]), -nmax, nmax - 1));
    }
    return scale;
}

static float ref_err(int n, const float *x, const float *w, const uint8_t *L, float scale, float min, int mad)
{
    float e = 0;
    for (int i = 0; i < n; i++) {
        float d = scale * L[i] + min - x[i];
        e += (w ? w[i] : x[i] * x[i]) * (mad ? fabsf(d) : d * d);
    }
    return e;
}

/* make_qkx2_quants (x3 0) / make_qkx3_quants (x3 1). */
static float ref_qkx(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min, float rmin,
                     float rdelta, int nstep, int mad, int x3)
{
    float min = x[0], max = x[0], sw = 0, sx = 0;
    for (int i = 0; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float wi = w ? w[i] : x[i] * x[i];
        sw += wi;
        sx += wi * x[i];
    }
    if (min > 0) min = 0;
    if (x3 ? max <= min : max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0;
    }
    float is = nmax / (max - min), scale = 1 / is;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)clamp_i(ref_nearest(is * (x[i] - min)), 0, nmax);
    float best = ref_err(n, x, w, L, scale, min, mad);
    for (int k = 0; k <= nstep; k++) {
        uint8_t La[32];
        is = (rmin + rdelta * k + nmax) / (max - min);
        float sl = 0, sl2 = 0, sxl = 0;
        for (int i = 0; i < n; i++) {
            int l = clamp_i(ref_nearest(is * (x[i] - min)), 0, nmax);
            La[i] = (uint8_t)l;
            float wi = w ? w[i] : x[i] * x[i];
            sl += wi * l;
            sl2 += wi * l * l;
            sxl += wi * l * x[i];
        }
        float D = sw * sl2 - sl * sl;
        if (D <= 0) continue;
        float s = (sw * sxl - sx * sl) / D, m = (sl2 * sx - sl * sxl) / D;
        if (m > 0) m = 0, s = sxl / sl2;
        float e = ref_err(n, x, w, La, s, m, mad);
        if (e < best) {
            memcpy(L, La, (size_t)n);
            best = e, scale = s, min = m;
        }
    }
    *the_min = -min;
    return scale;
}

static float urand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((*s >> 40) * 0x1p-24);
}

static float sample(int kind, uint64_t *s)
{
    float u = urand(s), g = 0;
    for (int i = 0; i < 4; i++) g += urand(s) - 0.5f;
    switch (kind) {
    case 0: return 0.05f * g;
    case 1: return 0.01f * g / (0.02f + u * u);
    case 2: return u < 0.4f ? 0.f : g;
    case 3: return 0.37f;
    case 4: return (float)(int)(g * 8) / 8;
    case 5: return -fabsf(g) - 2.f * u * u * u; /* all negative: the fitted min moves above the data's */
    default: return g * 1e-3f * (u < 0.5f ? 1 : -1);
    }
}

TEST(quant_search_equals_sequential_reference)
{
    uint64_t s = 0x9e3779b97f4a7c15ull;
    int qx_bad = 0, qkx_bad = 0;
    for (int it = 0; it < 30000; it++) {
        float x[32], w[32];
        for (int i = 0; i < 32; i++) {
            x[i] = sample(it % 7, &s);
            w[i] = it % 4 == 3 && i % 5 == 0 ? 0.f : 2 * urand(&s);
        }
        const float *wp = it & 1 ? w : NULL;
        static const int qx_cfg[4][2] = {{16, 32}, {16, 4}, {32, 8}, {32, 16}}; /* Q6_K, Q3_K, Q4_0, Q5_0 */
        const int *c = qx_cfg[it % 4];
        int8_t L1[32], L2[32];
        float a = alloy_make_qx_quants(c[0], c[1], x, L1, 1, wp), b = ref_qx(c[0], c[1], x, L2, wp);
        qx_bad += memcmp(&a, &b, 4) != 0 || memcmp(L1, L2, (size_t)c[0]) != 0;
        /* Q2_K, Q4_K, Q5_K reference searches, then the imatrix variant (qkx3) */
        static const struct { int n, nmax, nstep, mad, x3; float rmin, rdelta; } k[] = {
            {16, 3, 15, 1, 0, -0.5f, 0.1f}, {32, 15, 20, 0, 0, -1.f, 0.1f}, {32, 31, 15, 0, 0, -0.5f, 0.1f},
            {16, 3, 36, 0, 1, -0.9f, 0.05f}, {32, 15, 36, 0, 1, -0.9f, 0.05f},
        };
        for (size_t j = 0; j < sizeof k / sizeof *k; j++) {
            uint8_t M1[32], M2[32];
            float m1, m2;
            float r1 = alloy_make_qkx_quants(k[j].n, k[j].nmax, x, wp, M1, &m1, k[j].rmin, k[j].rdelta, k[j].nstep,
                                             k[j].mad, k[j].x3);
            float r2 = ref_qkx(k[j].n, k[j].nmax, x, wp, M2, &m2, k[j].rmin, k[j].rdelta, k[j].nstep, k[j].mad, k[j].x3);
            qkx_bad += memcmp(&r1, &r2, 4) != 0 || memcmp(&m1, &m2, 4) != 0 || memcmp(M1, M2, (size_t)k[j].n) != 0;
        }
    }
    CHECK_INT(qx_bad, 0);
    CHECK_INT(qkx_bad, 0);
}
