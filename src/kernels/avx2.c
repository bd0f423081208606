/*
 * avx2.c — the "avx2" kernel table (kernels.h): AVX2 builds of the portable
 * loops, and DELLA's row steps with AVX2 compares.
 *
 * DESIGN
 *   The selection's window pass, the draws and the task-arithmetic chunk
 *   loops are the portable bodies (methods/select_window.h, gta_loops.h)
 *   inlined into functions compiled with target("avx2"): the compiler
 *   vectorizes their integer and float loops twice as wide; no FMA (the
 *   target does not enable it) and C11 mode does not contract, so every
 *   float operation rounds as in the scalar table. DELLA's row code
 *   (methods/della_rank.h) is compiled here with two AVX2 steps that list
 *   the exceptions and the nonempty buckets one compare per sixteen. The
 *   conversion rows are in convert_avx2.c. Only the CPU probe (kernels.c)
 *   hands this table out, on CPUs with AVX2 and F16C.
 */
#include "kernels/kernels.h"

#include "core/internal.h"

#if ALLOY_X86_DISPATCH
#include "methods/della_rank.h"
#include "methods/gta_loops.h"
#include "methods/select_window.h"

#include <immintrin.h>

#define AVX2 __attribute__((target("avx2")))

AVX2 static void window_add_avx2(const struct alloy_select *s, size_t chunk, const uint32_t *keys, size_t n)
{
    alloy_sel_window_add_body(s, chunk, keys, n);
}

AVX2 static void draw_avx2(uint64_t rk, uint64_t e, size_t n, uint64_t thr, const uint32_t *restrict kmax,
                           uint32_t *restrict keep)
{
    gta_draw_body(rk, e, n, thr, kmax, keep);
}

AVX2 void alloy_avx2_gta_scan(const struct alloy_merge_job *job, const struct gta_state *s, const struct alloy_chunk *c,
                              const float *const *x, void *acc)
{
    gta_scan_body(job, s, c, x, acc);
}

AVX2 void alloy_avx2_gta_apply(const struct alloy_merge_job *job, const struct gta_state *s,
                               const struct alloy_chunk *c, const float *const *x, float *out)
{
    gta_apply_body(job, s, c, x, out);
}

/* DELLA's row steps (methods/della_rank.h) with AVX2 compares and byte masks: one test per sixteen ids or
 * eight buckets. */
AVX2 static uint32_t list_exceptions_avx2(const uint16_t *hk, size_t from, size_t cols, uint32_t nx, uint32_t *xc)
{
    const __m256i ex = _mm256_set1_epi16((short)GTA_DELLA_EXCEPTION);
    uint32_t n = 0;
    size_t j0 = from;
    for (; j0 + 16 <= cols && n < nx; j0 += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(hk + j0));
        uint32_t m = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(v, ex)) & 0x55555555u; /* bit 2i: id i */
        for (; m; m &= m - 1) xc[n++] = (uint32_t)(j0 + (size_t)(__builtin_ctz(m) >> 1));
    }
    return n < nx ? n + gta_della_list_exceptions(hk, j0, cols, nx - n, xc + n) : n;
}

AVX2 static uint32_t list_nonempty_avx2(const uint16_t *ca, const uint16_t *cb, uint32_t hlo, uint32_t hmax,
                                        uint32_t *list, uint32_t nl)
{
    const __m256i zero = _mm256_setzero_si256();
    uint32_t h = hlo;
    for (; h <= hmax && hmax - h >= 15; h += 16) {
        __m256i v = _mm256_or_si256(_mm256_loadu_si256((const __m256i *)(const void *)(ca + h)),
                                    _mm256_loadu_si256((const __m256i *)(const void *)(cb + h)));
        uint32_t m = ~(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(v, zero)) & 0x55555555u; /* bit 2i: i */
        for (; m; m &= m - 1) list[nl++] = h + ((uint32_t)__builtin_ctz(m) >> 1);
    }
    return h <= hmax ? gta_della_list_nonempty(ca, cb, h, hmax, list, nl) : nl;
}

static const struct gta_della_steps della_steps_avx2 = {
    .keys_listing = NULL, /* the portable key loop, compiled here twice as wide */
    .list_exceptions = list_exceptions_avx2,
    .list_nonempty = list_nonempty_avx2,
    .sort_small = NULL,
};

AVX2 static void della_row_avx2(const void *xi, const void *b, size_t cols, const uint32_t *lim2, uint32_t *slot,
                                uint64_t *sort, int raw, struct gta_della_row *row)
{
    gta_della_row_body(&della_steps_avx2, xi, b, cols, lim2, slot, sort, raw, row);
}

const struct alloy_kernels alloy_kernels_avx2 = {
    .isa = "avx2",
    .to_f32 = alloy_avx2_to_f32,
    .from_f32 = alloy_avx2_from_f32,
    .copy_stream = alloy_avx2_copy_stream,
    .sel_window_add = window_add_avx2,
    .gta_draw = draw_avx2,
    .gta_scan = alloy_avx2_gta_scan,
    .gta_apply = alloy_avx2_gta_apply,
    .gta_scan_fused = NULL,
    .gta_apply_fused = NULL,
    .della_row = della_row_avx2,
};
#endif
