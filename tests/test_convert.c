/*
 * test_convert.c — dtype conversions: the scalar reference against values
 * computed from first principles, and the SIMD rows pinned to the reference
 * over every 16-bit pattern and a large sample of float32 patterns.
 */
#include "test.h"
#include "alloy.h"
#include "core/internal.h"

#include <stdint.h>
#include <stdlib.h>

static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

TEST(convert_bf16_reference_values)
{
    CHECK_INT(alloy_f32_to_bf16(1.0f), 0x3f80);
    CHECK_INT(alloy_f32_to_bf16(-2.0f), 0xc000);
    /* 1 + 2^-8 is exactly half way between bf16 1.0 and 1.0078125: ties to even (1.0) */
    CHECK_INT(alloy_f32_to_bf16(from_bits(0x3f808000)), 0x3f80);
    /* 1.0078125 + half ulp: ties to even (1.015625, mantissa 2) */
    CHECK_INT(alloy_f32_to_bf16(from_bits(0x3f818000)), 0x3f82);
    CHECK_INT(alloy_f32_to_bf16(from_bits(0x3f808001)), 0x3f81);
    CHECK_INT(alloy_f32_to_bf16(INFINITY), 0x7f80);
    CHECK_INT(alloy_f32_to_bf16(from_bits(0x7f7fffff)), 0x7f80); /* FLT_MAX rounds up to Inf */
    uint16_t n = alloy_f32_to_bf16(from_bits(0x7f800001));       /* signalling NaN stays NaN */
    CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f));
    CHECK(isnan(alloy_bf16_to_f32(n)));
    CHECK(alloy_bf16_to_f32(0x3f80) == 1.0f);
}

TEST(convert_f16_reference_values)
{
    CHECK_INT(alloy_f32_to_f16(1.0f), 0x3c00);
    CHECK_INT(alloy_f32_to_f16(65504.0f), 0x7bff);
    CHECK_INT(alloy_f32_to_f16(65519.0f), 0x7bff);
    CHECK_INT(alloy_f32_to_f16(65520.0f), 0x7c00);
    CHECK_INT(alloy_f32_to_f16(0x1p-24f), 0x0001);  /* smallest subnormal */
    CHECK_INT(alloy_f32_to_f16(0x1p-25f), 0x0000);  /* half of it: ties to even -> 0 */
    CHECK_INT(alloy_f32_to_f16(0x1.8p-24f), 0x0002); /* 1.5 ulp -> 2 (even) */
    CHECK_INT(alloy_f32_to_f16(-0.0f), 0x8000);
    CHECK_INT(alloy_f32_to_f16(0x1p-14f), 0x0400);  /* smallest normal */
    CHECK(alloy_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(alloy_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(isinf(alloy_f16_to_f32(0x7c00)));
    CHECK(isnan(alloy_f16_to_f32(0x7e00)));
    /* every finite f16 survives f16 -> f32 -> f16 */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
        if (alloy_f32_to_f16(alloy_f16_to_f32((uint16_t)h)) != h) bad++;
    }
    CHECK_INT(bad, 0);
}

/* f16 rounding checked against double arithmetic: the nearest representable value. */
TEST(convert_f16_matches_nearest_even)
{
    srand(12345);
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        float f = (float)((rand() / (double)RAND_MAX - 0.5) * ldexp(1.0, rand() % 40 - 26));
        uint16_t h = alloy_f32_to_f16(f);
        double v = alloy_f16_to_f32(h);
        /* neighbours */
        double lo = alloy_f16_to_f32((uint16_t)(h - 1)), hi = alloy_f16_to_f32((uint16_t)(h + 1));
        if ((h & 0x7fff) == 0 || (h & 0x7c00) == 0x7c00) continue;
        double d = fabs(v - f);
        if (d > fabs(lo - f) || d > fabs(hi - f)) bad++;
    }
    CHECK_INT(bad, 0);
}

TEST(convert_simd_matches_reference)
{
    enum { N = 65536 + 7 };
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("f16c")) return; /* nothing to pin */
#endif
    uint16_t *h = malloc(N * 2), *a = malloc(N * 2), *b = malloc(N * 2);
    float *fa = malloc(N * 4), *fb = malloc(N * 4);
    for (uint32_t i = 0; i < N; i++) h[i] = (uint16_t)(i * 1u);
    enum alloy_dtype types[2] = {ALLOY_DTYPE_BF16, ALLOY_DTYPE_F16};
    for (int k = 0; k < 2; k++) {
        alloy_ref_to_f32(types[k], h, fa, N);
        alloy_avx2_to_f32(types[k], h, fb, N);
        CHECK_MSG(memcmp(fa, fb, N * 4) == 0, "%s -> f32 differs", alloy_dtype_traits(types[k])->name);
    }
    /* f32 -> 16 bit over structured and random bit patterns (all exponents, NaN, Inf, subnormals) */
    uint32_t *u = malloc(N * 4);
    uint64_t s = 88172645463325252ull;
    for (uint32_t i = 0; i < N; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        u[i] = i < 65536 ? (i << 16) | (uint32_t)(s & 0xffff) : (uint32_t)s;
    }
    for (int round = 0; round < 8; round++) {
        for (int k = 0; k < 2; k++) {
            alloy_ref_from_f32(types[k], (float *)u, a, N);
            alloy_avx2_from_f32(types[k], (float *)u, b, N);
            int diff = 0;
            for (int i = 0; i < N; i++) diff += a[i] != b[i];
            CHECK_MSG(diff == 0, "f32 -> %s: %d of %d differ", alloy_dtype_traits(types[k])->name, diff, N);
        }
        for (uint32_t i = 0; i < N; i++) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; u[i] = (uint32_t)(s >> 7); }
    }
    free(u); free(h); free(a); free(b); free(fa); free(fb);
}
