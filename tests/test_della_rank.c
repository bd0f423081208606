/*
 * test_della_rank.c — DELLA's row limits (src/methods/della_rank.c) against
 * sorting: every element must get the limit of its mean rank (equal
 * magnitudes share the mean of the places they occupy after a sort by
 * |delta|), and gta_della_rank2() (the per-element fallback) must agree.
 * Rows cover each path of gta_della_row: bfloat16 deltas (the bucket
 * table), with a few and with many keys whose low bits are set (insertion
 * sort or counted places up to 32, radix sort beyond), float32 rows, wide spans (sorted
 * whole), all equal, zeros and -0, denormals, infinities and NaN, very long
 * rows.
 */
#include "test.h"
#include "alloy.h"
#include "methods/gta.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rs = 0x9e3779b97f4a7c15ull;
static double urand(void) /* xorshift64*, independent of the library's generator */
{
    g_rs ^= g_rs >> 12;
    g_rs ^= g_rs << 25;
    g_rs ^= g_rs >> 27;
    return (double)((g_rs * 2685821657736338717ull) >> 11) * 0x1p-53;
}

static double gauss(void) { return sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand()); }
static float bf16(double v) { return alloy_bf16_to_f32(alloy_f32_to_bf16((float)v)); }

struct item {
    uint32_t key;
    uint32_t col;
};

static int item_cmp(const void *a, const void *b)
{
    const struct item *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->col < y->col ? -1 : (x->col > y->col);
}

static const struct alloy_kernels *g_k; /* the kernel table under test */

/* Checks a kernel table's della_row (g_k) on one row against sorting (and gta_della_rank2 on a few of its elements),
 * with the identity as the limit table, so each element's limit is its own index s = first + last - 1
 * (first..last: the ranks its group of equal keys occupies); returns mismatches. */
static size_t check_row(const float *x, const float *b, size_t cols, const char *what)
{
    struct item *it = malloc(cols * sizeof *it);
    uint32_t *ref = malloc(cols * sizeof *ref), *lim2 = malloc(2 * cols * sizeof *lim2);
    uint32_t *slot = malloc(GTA_DELLA_SLOT(cols) * sizeof *slot);
    uint64_t *sort = calloc(GTA_DELLA_SORT(cols), sizeof *sort); /* the bucket counts must start zero */
    for (size_t j = 0; j < cols; j++) it[j] = (struct item){alloy_sel_key_abs(x[j] - b[j]), (uint32_t)j};
    qsort(it, cols, sizeof *it, item_cmp);
    for (size_t p = 0, q; p < cols; p = q) {
        for (q = p + 1; q < cols && it[q].key == it[p].key; q++) {}
        for (size_t i = p; i < q; i++) ref[it[i].col] = (uint32_t)(p + q); /* (p + 1) + q - 1 */
    }
    for (size_t i = 0; i < 2 * cols; i++) lim2[i] = (uint32_t)i;
    struct gta_della_row row;
    g_k->della_row(x, b, cols, lim2, slot, sort, 0, &row);
    size_t bad = 0, xi = 0;
    for (size_t i = GTA_DELLA_SORT_ZERO(cols); i < GTA_DELLA_SORT(cols); i++) bad += sort[i] != 0; /* counts left 0 */
    for (size_t j = 0; j < cols; j++) {
        uint32_t got;
        if (!row.bucket) {
            got = row.elem[j];
        } else if (xi < row.nx && row.xcol[xi] == j) {
            got = row.hk[j] == GTA_DELLA_EXCEPTION ? row.xlim[xi] : 0;
            xi++;
        } else {
            uint32_t k = alloy_sel_key_abs(x[j] - b[j]);
            got = (k & 0xffffu) || row.hk[j] != k >> 16 ? 0 : row.bucket[row.hk[j]]; /* unlisted exception: wrong */
        }
        bad += got != ref[j];
    }
    bad += row.bucket && xi != row.nx; /* exceptions listed out of order */
    for (size_t q = 0; q < 8 && cols <= 6000; q++) {
        size_t j = (size_t)(urand() * (double)cols);
        bad += gta_della_rank2(x, b, cols, j, 0) != ref[j];
    }
    /* bfloat16 rows: the same limits from the stored values (raw) */
    uint16_t *xr = malloc(cols * sizeof *xr), *br = malloc(cols * sizeof *br);
    int exact = 1;
    for (size_t j = 0; j < cols && exact; j++) {
        uint32_t ux, ub;
        memcpy(&ux, &x[j], 4);
        memcpy(&ub, &b[j], 4);
        exact = !(ux & 0xffffu) && !(ub & 0xffffu);
        xr[j] = (uint16_t)(ux >> 16);
        br[j] = (uint16_t)(ub >> 16);
    }
    if (exact) {
        uint32_t *got = malloc(cols * sizeof *got);
        for (size_t j = 0, k = 0; j < cols; j++) /* the float32 run's limits, element by element */
            got[j] = !row.bucket ? row.elem[j]
                     : (k < row.nx && row.xcol[k] == j) ? row.xlim[k++] : row.bucket[row.hk[j]];
        struct gta_della_row rr;
        g_k->della_row(xr, br, cols, lim2, slot, sort, 1, &rr);
        size_t diff = 0;
        for (size_t j = 0, k = 0; j < cols; j++) {
            uint32_t v = !rr.bucket ? rr.elem[j] : (k < rr.nx && rr.xcol[k] == j) ? rr.xlim[k++] : rr.bucket[rr.hk[j]];
            diff += v != got[j];
        }
        for (size_t q = 0; q < 4 && cols <= 6000; q++) {
            size_t j = (size_t)(urand() * (double)cols);
            diff += gta_della_rank2(xr, br, cols, j, 1) != ref[j];
        }
        if (diff) test_fail(__FILE__, __LINE__, "%s, %zu columns: %zu limits from bfloat16 differ", what, cols, diff);
        bad += diff;
        free(got);
    }
    free(xr);
    free(br);
    if (bad) test_fail(__FILE__, __LINE__, "%s, %zu columns: %zu limits differ from sorting", what, cols, bad);
    free(it);
    free(ref);
    free(lim2);
    free(slot);
    free(sort);
    return bad;
}

static void stable_sort_cases(void)
{
    static const size_t cols[] = {1, 2, 3, 7, 64, 255, 256, 257, 2048, 5632};
    enum { MAXC = 5632 };
    float *x = malloc(MAXC * sizeof *x), *b = malloc(MAXC * sizeof *b);
    for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++) {
        size_t n = cols[c];
        for (int rep = 0; rep < 3; rep++) {
            /* a fine-tune of a bfloat16 base: nearly every |delta| has zero low bits */
            for (size_t j = 0; j < n; j++) {
                b[j] = bf16(gauss() * 0.02);
                x[j] = bf16(b[j] + gauss() * 0.0005);
            }
            check_row(x, b, n, "bf16 fine-tune");
            /* the same with exceptions: some deltas across binades (low bits set), few and many */
            for (size_t j = 0; j < n; j += 97) x[j] = bf16(b[j] * 1.7f + 1e-3f);
            check_row(x, b, n, "bf16, few exceptions");
            for (size_t gap = 150; gap <= 300; gap += 150) { /* up to 16, up to 32, or more exceptions */
                for (size_t j = 0; j < n; j++) x[j] = bf16(b[j] + gauss() * 0.0005);
                for (size_t j = gap / 3; j < n; j += gap) x[j] = bf16(b[j] * 1.7f + 1e-3f);
                check_row(x, b, n, "bf16, some exceptions");
            }
            for (size_t j = 0; j < n; j++) x[j] = bf16(b[j] + gauss() * 0.0005);
            for (size_t j = 0; j < n; j += 97) x[j] = bf16(b[j] * 1.7f + 1e-3f);
            for (size_t j = 0; j < n; j += 5) x[j] = bf16(b[j] * 1.7f + 1e-3f);
            check_row(x, b, n, "bf16, many exceptions");
            /* independent bfloat16 values and float32 values: the radix sort */
            for (size_t j = 0; j < n; j++) x[j] = bf16(gauss()), b[j] = bf16(gauss());
            check_row(x, b, n, "independent bf16");
            for (size_t j = 0; j < n; j++) x[j] = (float)gauss(), b[j] = (float)gauss() * 1e-3f;
            check_row(x, b, n, "float32");
            /* magnitudes spanning many binades (wide bucket span) */
            for (size_t j = 0; j < n; j++) x[j] = bf16(exp2(-60.0 * urand())), b[j] = 0;
            check_row(x, b, n, "wide span");
        }
        /* all equal, zeros and -0, heavy ties */
        for (size_t j = 0; j < n; j++) x[j] = 0.5f, b[j] = 0.25f;
        check_row(x, b, n, "all equal");
        for (size_t j = 0; j < n; j++) x[j] = j % 2 ? -0.0f : 0.0f, b[j] = 0.0f;
        check_row(x, b, n, "zeros");
        for (size_t j = 0; j < n; j++) x[j] = (float)(j % 3) * 0.125f, b[j] = 0;
        check_row(x, b, n, "three values");
        /* specials: denormals, huge, infinities, NaN (a NaN's key ranks above infinity) */
        for (size_t j = 0; j < n; j++) {
            static const float sp[] = {1e-40f, -3e-39f, 3e38f, -3e38f, INFINITY, -INFINITY, NAN, 1.0f, 0.0f};
            x[j] = sp[(size_t)(urand() * 9)];
            b[j] = j % 4 == 0 ? 0.5f : 0.0f;
        }
        check_row(x, b, n, "specials");
    }
    free(x);
    free(b);
}

static void long_row_cases(void)
{
    /* from 2^17 columns on, rows are sorted radix-wise whole */
    static const size_t cols[] = {65536 + 3, ((size_t)1 << 17) + 3};
    float *x = malloc(cols[1] * sizeof *x), *b = malloc(cols[1] * sizeof *b);
    for (size_t c = 0; c < 2; c++) {
        for (size_t j = 0; j < cols[c]; j++) {
            b[j] = bf16(gauss() * 0.02);
            x[j] = bf16(b[j] + gauss() * 0.0005);
        }
        check_row(x, b, cols[c], "long bf16 row");
    }
    free(x);
    free(b);
}

/* Every case with each kernel table's row code the CPU has (AVX-512, AVX2, portable). */
TEST(della_rank_matches_stable_sort)
{
    for (int isa = ALLOY_ISA_COUNT - 1; isa >= 0; isa--) {
        if (!(g_k = alloy_kernels_isa(isa))) continue;
        stable_sort_cases();
        long_row_cases();
    }
}
