/*
 * test_rng.c — the counter-based generator (src/core/rng.c, core/internal.h):
 * golden values computed independently (Python, the formulas of rng.c's
 * design note), uniform bytes and balanced bits, streams of neighbouring
 * keys uncorrelated, and no stream a shifted copy of another (which one
 * shared Weyl increment would make of keys that differ by a multiple of it).
 */
#include "test.h"
#include "core/internal.h"

#include <math.h>

TEST(rng_golden_values)
{
    static const struct { uint64_t key, counter, want; } g[] = {
        {0x1, 0, 0x5692161d100b05e5ull},
        {0x1, 1, 0x8a0f69d4ecf8e821ull},
        {0x123456789abcdef0ull, 12345, 0x0a20ce67439819dcull},
        {0xffffffffffffffffull, 1ull << 40, 0xd1983eacf2e16e9aull},
    };
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
        CHECK_MSG(alloy_rng_u64(g[i].key, g[i].counter) == g[i].want, "key %#llx counter %llu: %#llx",
                  (unsigned long long)g[i].key, (unsigned long long)g[i].counter,
                  (unsigned long long)alloy_rng_u64(g[i].key, g[i].counter));
}

TEST(rng_bytes_uniform_and_bits_balanced)
{
    enum { N = 1 << 20 };
    static uint32_t bins[256];
    uint32_t ones[64] = {0};
    uint64_t key = alloy_rng_key(7, "model.layers.0.mlp.up_proj.weight", 3);
    for (uint64_t c = 0; c < N; c++) {
        uint64_t v = alloy_rng_u64(key, c);
        bins[v >> 56]++;
        for (int b = 0; b < 64; b++) ones[b] += (uint32_t)(v >> b) & 1;
    }
    double chi = 0, e = N / 256.0;
    for (int i = 0; i < 256; i++) chi += (bins[i] - e) * (bins[i] - e) / e;
    CHECK_MSG(chi < 350, "top byte chi-square %.1f over 255 degrees of freedom", chi); /* p ~ 1e-4 */
    for (int b = 0; b < 64; b++) /* 5 standard deviations of a fair bit: 2.5 * sqrt(N) */
        CHECK_MSG(fabs((double)ones[b] - N / 2.0) < 2.5 * sqrt((double)N), "bit %d set %u of %d times", b, ones[b], N);
}

TEST(rng_streams_independent)
{
    enum { N = 1 << 18 };
    /* keys one bit apart, and keys one shared-increment apart (stream B would be stream A moved by one
       draw if the increment did not depend on the key) */
    const uint64_t a = alloy_rng_key(1, "t", 0);
    const uint64_t others[] = {a ^ 1, a + 0x9e3779b97f4a7c15ull, a + alloy_rng_gamma(a)};
    for (size_t k = 0; k < sizeof others / sizeof others[0]; k++) {
        const uint64_t b = others[k];
        double sa = 0, sb = 0, sab = 0, saa = 0, sbb = 0;
        size_t same_shifted = 0;
        for (uint64_t c = 0; c < N; c++) {
            double x = (double)(alloy_rng_u64(a, c) >> 11), y = (double)(alloy_rng_u64(b, c) >> 11);
            sa += x, sb += y, sab += x * y, saa += x * x, sbb += y * y;
            for (uint64_t d = 1; d <= 2; d++) same_shifted += alloy_rng_u64(b, c) == alloy_rng_u64(a, c + d);
        }
        double cov = sab / N - (sa / N) * (sb / N);
        double r = cov / sqrt((saa / N - (sa / N) * (sa / N)) * (sbb / N - (sb / N) * (sb / N)));
        CHECK_MSG(fabs(r) < 5.0 / sqrt((double)N), "streams %zu: correlation %.5f", k, r);
        /* two Weyl lines with different slopes may cross at a point (b = a + gamma(a) meets stream a at
           its counter 1), never along a run: a shared increment would repeat all N draws here */
        CHECK_MSG(same_shifted <= 1, "streams %zu: %zu draws repeat the other stream's shifted", k, same_shifted);
    }
}
