/*
 * kernels.h — the table of instruction-set-specific leaf loops.
 *
 * DESIGN
 *   Every loop alloy runs in more than one instruction-set version is an
 *   entry of struct alloy_kernels: the conversion rows, the streaming copy,
 *   the selection's window pass, the task-arithmetic family's draws and
 *   chunk loops, its fused AVX-512 loops and DELLA's row limits. One table
 *   per instruction set (scalar.c: the portable reference, avx2.c,
 *   avx512.c), each filled from its own translation units, whose functions
 *   carry target attributes; nothing outside src/kernels/ tests the CPU.
 *   One probe at the first alloy_kernels() call (pthread_once) picks the
 *   widest table the CPU runs; ALLOY_NO_SIMD=1 picks the scalar one.
 *
 *   Callers never switch on the instruction set: code that runs a loop
 *   calls through a table (a merge job's, job->kernels, or the probed
 *   one), and a NULL entry means the table has no such loop (the fused
 *   loops exist only with AVX-512). Every entry gives the scalar entry's
 *   bits: the same operations in the same order (no FMA, no reassociated
 *   sums), integer work where the order could differ. tests/test_kernels.c
 *   and the method tests run every table the CPU has (alloy_kernels_isa)
 *   and compare.
 */
#ifndef ALLOY_KERNELS_H
#define ALLOY_KERNELS_H

#include "alloy.h"

#include <stddef.h>
#include <stdint.h>

struct alloy_merge_job;
struct alloy_chunk;
struct alloy_select;
struct gta_state;
struct gta_model;
struct gta_della_row;

/* The instruction sets, narrowest first: index i of alloy_kernels_isa. */
enum { ALLOY_ISA_SCALAR, ALLOY_ISA_AVX2, ALLOY_ISA_AVX512, ALLOY_ISA_COUNT };

struct alloy_kernels {
    const char *isa; /* "scalar", "avx2", "avx512" */
    /* Conversion rows of the mergeable dtypes (dtype.c's reference); from_f32 returns the number of NaN
     * and Inf values among the n. */
    void (*to_f32)(enum alloy_dtype t, const void *src, float *dst, size_t n);
    size_t (*from_f32)(enum alloy_dtype t, const float *src, void *dst, size_t n);
    /* memcpy for bytes no core reads soon (core/internal.h alloy_copy_stream). */
    void (*copy_stream)(void *dst, const void *src, size_t n);
    /* The selection's window pass (select.h alloy_sel_window_add). */
    void (*sel_window_add)(const struct alloy_select *s, size_t chunk, const uint32_t *keys, size_t n);
    /* Random keep decisions of a block of n <= GTA_BLK elements (methods/gta_loops.h). */
    void (*gta_draw)(uint64_t rk, uint64_t e, size_t n, uint64_t thr, const uint32_t *kmax, uint32_t *keep);
    /* The task-arithmetic family's scan() and apply() of one chunk (methods/gta_loops.h). */
    void (*gta_scan)(const struct alloy_merge_job *job, const struct gta_state *s, const struct alloy_chunk *c,
                     const float *const *x, void *acc);
    void (*gta_apply)(const struct alloy_merge_job *job, const struct gta_state *s, const struct alloy_chunk *c,
                      const float *const *x, float *out);
    /* The fused loops (kernels/gta_avx512.c; NULL without AVX-512): the L1 pass of a random (row NULL) or
     * della model over a block of n elements at element e (n and e multiples of 64; della: block
     * [j0, j0 + n) of its row, exceptions from *xnext on), its keep bits and L1 lanes; and the consensus
     * merge of a block of n elements at offset off of the chunk (element e; n and e multiples of 16)
     * whose sparse models all have keep bits. */
    void (*gta_scan_fused)(const struct gta_model *m, const struct gta_della_row *row, uint32_t *xnext, uint64_t e,
                           const void *xi, const void *b, int raw, size_t n, size_t j0, uint64_t c0, uint64_t c1,
                           double *before, double *after);
    void (*gta_apply_fused)(const struct gta_state *s, const float *const *x, size_t off, uint64_t e, size_t n,
                            const float *coef, int raw, float *out);
    /* DELLA's keep limits of one row (methods/della_rank.h gta_della_row_body). */
    void (*della_row)(const void *xi, const void *b, size_t cols, const uint32_t *lim2, uint32_t *slot,
                      uint64_t *sort, int raw, struct gta_della_row *row);
};

/* The widest table this CPU runs (probed once, thread-safe). */
const struct alloy_kernels *alloy_kernels(void);
/* Table i (enum ALLOY_ISA_*), or NULL when this build or this CPU lacks it. */
const struct alloy_kernels *alloy_kernels_isa(int i);

/* ------------------------------------------------------- entries shared between the tables (src/kernels/) */

extern const struct alloy_kernels alloy_kernels_scalar, alloy_kernels_avx2, alloy_kernels_avx512;

void alloy_avx2_to_f32(enum alloy_dtype t, const void *src, float *dst, size_t n);
size_t alloy_avx2_from_f32(enum alloy_dtype t, const float *src, void *dst, size_t n);
void alloy_avx2_copy_stream(void *dst, const void *src, size_t n);
void alloy_avx2_gta_scan(const struct alloy_merge_job *job, const struct gta_state *s, const struct alloy_chunk *c,
                         const float *const *x, void *acc);
void alloy_avx2_gta_apply(const struct alloy_merge_job *job, const struct gta_state *s, const struct alloy_chunk *c,
                          const float *const *x, float *out);
void alloy_avx512_gta_scan_fused(const struct gta_model *m, const struct gta_della_row *row, uint32_t *xnext,
                                 uint64_t e, const void *xi, const void *b, int raw, size_t n, size_t j0, uint64_t c0,
                                 uint64_t c1, double *before, double *after);
void alloy_avx512_gta_apply_fused(const struct gta_state *s, const float *const *x, size_t off, uint64_t e, size_t n,
                                  const float *coef, int raw, float *out);

#endif
