/*
 * test_kernels.c — the kernel tables (src/kernels/): the probe picks the
 * widest table the CPU runs, and every entry of every table the CPU has
 * gives the scalar table's bits: conversions over every 16-bit pattern and
 * a large sample of float32 patterns (with their NaN/Inf counts), the
 * streaming copy, the draws, DELLA's row limits. The selection's window
 * pass and the task-arithmetic chunk loops are compared the same way by
 * tests/test_select.c and tests/test_gta_avx512.c. Tables the CPU lacks
 * are skipped, and said so once on stdout.
 */
#include "test.h"
#include "alloy.h"
#include "kernels/kernels.h"
#include "methods/gta.h"

#include <stdint.h>
#include <stdlib.h>

static uint64_t g_s = 88172645463325252ull;
static uint64_t next64(void)
{
    g_s ^= g_s << 13;
    g_s ^= g_s >> 7;
    g_s ^= g_s << 17;
    return g_s;
}

TEST(kernels_probe_picks_widest_table)
{
    const struct alloy_kernels *best = alloy_kernels(), *widest = NULL;
    CHECK(alloy_kernels_isa(ALLOY_ISA_SCALAR) == &alloy_kernels_scalar);
    CHECK(alloy_kernels_isa(-1) == NULL && alloy_kernels_isa(ALLOY_ISA_COUNT) == NULL);
    for (int i = 0; i < ALLOY_ISA_COUNT; i++) {
        const struct alloy_kernels *k = alloy_kernels_isa(i);
        static const char *const names[ALLOY_ISA_COUNT] = {"scalar", "avx2", "avx512"};
        if (!k) {
            printf("test_kernels: %s table skipped (not in this build or not on this CPU)\n", names[i]);
            continue;
        }
        CHECK_MSG(!strcmp(k->isa, names[i]), "table %d is %s", i, k->isa);
        CHECK(k->to_f32 && k->from_f32 && k->copy_stream && k->sel_window_add && k->gta_draw && k->gta_scan &&
              k->gta_apply && k->della_row);
        CHECK(!k->gta_scan_fused == !k->gta_apply_fused);
        widest = k;
    }
    const char *no_simd = getenv("ALLOY_NO_SIMD");
    CHECK(best == (no_simd && *no_simd && strcmp(no_simd, "0") ? &alloy_kernels_scalar : widest));
}

TEST(kernels_conversions_match_scalar)
{
    enum { N = 65536 + 7 };
    static const enum alloy_dtype types[] = {ALLOY_DTYPE_BF16, ALLOY_DTYPE_F16, ALLOY_DTYPE_F32, ALLOY_DTYPE_F64};
    uint16_t *h = malloc(N * 2);
    uint32_t *u = malloc(N * 4);
    float *fa = malloc(N * 4), *fb = malloc(N * 4);
    uint8_t *a = malloc(N * 8), *b = malloc(N * 8);
    for (uint32_t i = 0; i < N; i++) h[i] = (uint16_t)i;
    const struct alloy_kernels *ref = &alloy_kernels_scalar;
    for (int isa = 1; isa < ALLOY_ISA_COUNT; isa++) {
        const struct alloy_kernels *k = alloy_kernels_isa(isa);
        if (!k) continue;
        for (int t = 0; t < 2; t++) { /* every 16-bit pattern widened */
            ref->to_f32(types[t], h, fa, N);
            k->to_f32(types[t], h, fb, N);
            CHECK_MSG(!memcmp(fa, fb, N * 4), "%s: %s -> f32 differs", k->isa, alloy_dtype_traits(types[t])->name);
        }
        /* f32 -> each type over structured and random bit patterns (all exponents, NaN, Inf, subnormals) */
        for (uint32_t i = 0; i < N; i++)
            u[i] = i < 65536 ? (i << 16) | (uint32_t)(next64() & 0xffff) : (uint32_t)next64();
        for (int round = 0; round < 8; round++) {
            for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
                size_t w = (size_t)alloy_dtype_traits(types[t])->bits / 8;
                size_t na = ref->from_f32(types[t], (float *)u, a, N), nb = k->from_f32(types[t], (float *)u, b, N);
                CHECK_MSG(na == nb, "%s: f32 -> %s: %zu vs %zu NaN/Inf", k->isa, alloy_dtype_traits(types[t])->name,
                          na, nb);
                CHECK_MSG(!memcmp(a, b, N * w), "%s: f32 -> %s differs", k->isa, alloy_dtype_traits(types[t])->name);
            }
            for (uint32_t i = 0; i < N; i++) u[i] = (uint32_t)(next64() >> 7);
        }
    }
    free(h); free(u); free(fa); free(fb); free(a); free(b);
}

TEST(kernels_copy_stream_matches_memcpy)
{
    enum { N = 5000 };
    uint8_t *src = malloc(N + 64), *dst = malloc(N + 64), *want = malloc(N + 64);
    for (size_t i = 0; i < N + 64; i++) src[i] = (uint8_t)next64();
    static const size_t sizes[] = {0, 1, 31, 255, 256, 257, 1000, 4096, N};
    for (int isa = 0; isa < ALLOY_ISA_COUNT; isa++) {
        const struct alloy_kernels *k = alloy_kernels_isa(isa);
        if (!k) continue;
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
            for (size_t off = 0; off < 40; off += 13) {
                memset(dst, 0xa5, N + 64);
                memset(want, 0xa5, N + 64);
                memcpy(want + off, src + 3, sizes[si]);
                k->copy_stream(dst + off, src + 3, sizes[si]);
                CHECK_MSG(!memcmp(dst, want, N + 64), "%s: copy of %zu bytes at offset %zu", k->isa, sizes[si], off);
            }
    }
    free(src); free(dst); free(want);
}

TEST(kernels_draws_match_scalar)
{
    enum { BLK = 256 };
    uint32_t kmax[BLK], want[BLK], got[BLK];
    for (int isa = 1; isa < ALLOY_ISA_COUNT; isa++) {
        const struct alloy_kernels *k = alloy_kernels_isa(isa);
        if (!k) continue;
        for (int c = 0; c < 400; c++) {
            uint64_t rk = next64(), e = next64() >> (c % 40 + 20), thr = next64() % ((uint64_t)1 << 32 | 1);
            size_t n = 1 + (size_t)(next64() % BLK);
            int with_kmax = c & 1;
            for (size_t q = 0; q < n; q++) kmax[q] = (uint32_t)next64();
            alloy_kernels_scalar.gta_draw(rk, e, n, thr, with_kmax ? kmax : NULL, want);
            k->gta_draw(rk, e, n, thr, with_kmax ? kmax : NULL, got);
            CHECK_MSG(!memcmp(want, got, n * sizeof *got), "%s: draw %d (n %zu, e %llu) differs", k->isa, c, n,
                      (unsigned long long)e);
        }
    }
}

/* Element j's limit in a row filled by della_row. */
static uint32_t row_limit(const struct gta_della_row *r, size_t j, size_t *x)
{
    if (!r->bucket) return r->elem[j];
    if (*x < r->nx && r->xcol[*x] == j) return r->xlim[(*x)++];
    return r->bucket[r->hk[j]];
}

TEST(kernels_della_rows_match_scalar)
{
    static const size_t cols[] = {2, 17, 300, 2048, 5632};
    const size_t C = 5632;
    float *x = malloc(C * 4), *b = malloc(C * 4);
    uint16_t *xr = malloc(C * 2), *br = malloc(C * 2);
    uint32_t *lim2 = malloc(2 * C * 4), *want = malloc(C * 4);
    for (size_t i = 0; i < 2 * C; i++) lim2[i] = (uint32_t)(i * 2654435761u);
    for (int isa = 1; isa < ALLOY_ISA_COUNT; isa++) {
        const struct alloy_kernels *k = alloy_kernels_isa(isa);
        if (!k) continue;
        for (size_t ci = 0; ci < sizeof cols / sizeof cols[0]; ci++)
            for (int kind = 0; kind < 3; kind++) { /* bfloat16 values, a few exceptions, float32 values */
                const size_t n = cols[ci];
                for (size_t j = 0; j < n; j++) {
                    uint32_t ub = 0x3c000000u + (uint32_t)(next64() % 0x2000000u);
                    uint32_t ux = ub + (uint32_t)(next64() % 0x100000u);
                    if (kind == 0 || (kind == 1 && next64() % 50)) {
                        ub &= 0xffff0000u;
                        ux &= 0xffff0000u;
                    }
                    memcpy(&b[j], &ub, 4);
                    memcpy(&x[j], &ux, 4);
                    xr[j] = (uint16_t)(ux >> 16);
                    br[j] = (uint16_t)(ub >> 16);
                }
                for (int raw = 0; raw < (kind == 0 ? 2 : 1); raw++) {
                    const void *xi = raw ? (const void *)xr : (const void *)x;
                    const void *bi = raw ? (const void *)br : (const void *)b;
                    uint32_t *slot = malloc(GTA_DELLA_SLOT(n) * 4);
                    uint64_t *sort = calloc(GTA_DELLA_SORT(n), 8);
                    struct gta_della_row r;
                    alloy_kernels_scalar.della_row(xi, bi, n, lim2, slot, sort, raw, &r);
                    size_t p = 0, bad = 0;
                    for (size_t j = 0; j < n; j++) want[j] = row_limit(&r, j, &p);
                    k->della_row(xi, bi, n, lim2, slot, sort, raw, &r);
                    p = 0;
                    for (size_t j = 0; j < n; j++) bad += row_limit(&r, j, &p) != want[j];
                    CHECK_MSG(bad == 0, "%s: della row of %zu (kind %d, raw %d): %zu limits differ", k->isa, n, kind,
                              raw, bad);
                    free(slot);
                    free(sort);
                }
            }
    }
    free(x); free(b); free(xr); free(br); free(lim2); free(want);
}
