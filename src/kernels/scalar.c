/*
 * scalar.c — the "scalar" kernel table (kernels.h): the portable reference
 * every other table is compared with.
 *
 * DESIGN
 *   Each entry is the portable body (dtype.c's conversion rows,
 *   methods/select_window.h, gta_loops.h, della_rank.h with its scalar
 *   steps) compiled for the baseline instruction set. Every build has this
 *   table; it runs where the CPU has nothing wider or ALLOY_NO_SIMD is set.
 */
#include "kernels/kernels.h"

#include "core/internal.h"
#include "methods/della_rank.h"
#include "methods/gta_loops.h"
#include "methods/select_window.h"

static void copy_stream_scalar(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }

static void window_add_scalar(const struct alloy_select *s, size_t chunk, const uint32_t *keys, size_t n)
{
    alloy_sel_window_add_body(s, chunk, keys, n);
}

static void draw_scalar(uint64_t rk, uint64_t e, size_t n, uint64_t thr, const uint32_t *restrict kmax,
                        uint32_t *restrict keep)
{
    gta_draw_body(rk, e, n, thr, kmax, keep);
}

static void gta_scan_scalar(const struct alloy_merge_job *job, const struct gta_state *s, const struct alloy_chunk *c,
                            const float *const *x, void *acc)
{
    gta_scan_body(job, s, c, x, acc);
}

static void gta_apply_scalar(const struct alloy_merge_job *job, const struct gta_state *s, const struct alloy_chunk *c,
                             const float *const *x, float *out)
{
    gta_apply_body(job, s, c, x, out);
}

static const struct gta_della_steps della_steps_scalar = {
    .keys_listing = NULL,
    .list_exceptions = gta_della_list_exceptions,
    .list_nonempty = gta_della_list_nonempty,
    .sort_small = NULL,
};

static void della_row_scalar(const void *xi, const void *b, size_t cols, const uint32_t *lim2, uint32_t *slot,
                             uint64_t *sort, int raw, struct gta_della_row *row)
{
    gta_della_row_body(&della_steps_scalar, xi, b, cols, lim2, slot, sort, raw, row);
}

const struct alloy_kernels alloy_kernels_scalar = {
    .isa = "scalar",
    .to_f32 = alloy_ref_to_f32,
    .from_f32 = alloy_ref_from_f32,
    .copy_stream = copy_stream_scalar,
    .sel_window_add = window_add_scalar,
    .gta_draw = draw_scalar,
    .gta_scan = gta_scan_scalar,
    .gta_apply = gta_apply_scalar,
    .gta_scan_fused = NULL,
    .gta_apply_fused = NULL,
    .della_row = della_row_scalar,
};
