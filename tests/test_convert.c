/*
 * test_convert.c — dtype conversions: the scalar reference against values
 * computed from first principles (the SIMD rows are pinned to it in
 * tests/test_kernels.c).
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
