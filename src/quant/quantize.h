/*
 * quantize.h — float32 rows to ggml's block types, bit-exact with
 * llama-quantize (the reference quantizers and their imatrix variants).
 *
 * DESIGN
 *   One entry point per type and one dispatcher. The reference path
 *   (imatrix NULL) is ggml's quantize_row_*_ref: row boundaries do not
 *   matter, so any whole number of blocks may be passed at once. The
 *   imatrix path is ggml's quantize_row_*_impl: it works row by row
 *   (legacy types take their sigma^2 from the whole row), so pass exactly
 *   one row of n_per_row elements and n_per_row importance values (already
 *   divided by ncall, see imatrix.h). Q8_0 ignores the imatrix, as ggml.
 *   Quantizers never fail on finite input; the checked wrapper
 *   alloy_quantize_rows rejects NaN/Inf and bad lengths with an error that
 *   names the tensor. Files are compiled with -ffp-contract=off (gguf.md §0).
 */
#ifndef ALLOY_QUANT_QUANTIZE_H
#define ALLOY_QUANT_QUANTIZE_H

#include "alloy.h"

#include <stddef.h>
#include <stdint.h>

/* Quantize n floats (a multiple of the type's block) of x into dst; imatrix NULL for the
 * reference path, else n importance values for this one row. Returns the bytes written, 0 when
 * t is not a block type or n is not a whole number of blocks (nothing written then). */
size_t alloy_quantize_row(enum alloy_dtype t, const float *x, void *dst, int64_t n, const float *imatrix);

/* nrows rows of n_per_row floats, each row with the same imatrix (NULL: reference). Checks the
 * type, the row length (a multiple of the block) and that every value is finite; errors read
 * "<file>: <tensor>: <expected>, <found>". ALLOY_OK or the status set in err. */
int alloy_quantize_rows(enum alloy_dtype t, const float *x, void *dst, int64_t nrows, int64_t n_per_row,
                        const float *imatrix, const char *file, const char *tensor, struct alloy_err *err);

/* Per-type quantizers: n a multiple of the block (32 legacy, 256 K-quants); w NULL or n weights
 * of one row (imatrix variant). */
void alloy_quantize_q8_0(const float *x, void *dst, int64_t n);
void alloy_quantize_q4_0(const float *x, void *dst, int64_t n, const float *w);
void alloy_quantize_q4_1(const float *x, void *dst, int64_t n, const float *w);
void alloy_quantize_q5_0(const float *x, void *dst, int64_t n, const float *w);
void alloy_quantize_q5_1(const float *x, void *dst, int64_t n, const float *w);
void alloy_quantize_q2_k(const float *x, void *dst, int64_t n, const float *w);
void alloy_quantize_q3_k(const float *x, void *dst, int64_t n, const float *w);
void alloy_quantize_q4_k(const float *x, void *dst, int64_t n, const float *w);
void alloy_quantize_q5_k(const float *x, void *dst, int64_t n, const float *w);
void alloy_quantize_q6_k(const float *x, void *dst, int64_t n, const float *w);
/* IQ4_NL as llama-quantize writes it (ggml quantize_iq4_nl: the scale search, with or without
 * w); the _ref variant is ggml's quantize_row_iq4_nl_ref (no search), used by nothing else. */
void alloy_quantize_iq4_nl(const float *x, void *dst, int64_t n, const float *w);
void alloy_quantize_iq4_nl_ref(const float *x, void *dst, int64_t n);

/* The dtype table's from_f32 rows of the block types: the reference path on n elements (a
 * multiple of the block); they return how many inputs were NaN or Inf (the bytes are then
 * meaningless; alloy_quantize_rows turns that into an error). */
#define ALLOY_QUANT_FROM_F32(t) size_t alloy_from_f32_##t(const float *src, void *dst, size_t n);
ALLOY_QUANT_FROM_F32(q8_0)
ALLOY_QUANT_FROM_F32(q4_0)
ALLOY_QUANT_FROM_F32(q4_1)
ALLOY_QUANT_FROM_F32(q5_0)
ALLOY_QUANT_FROM_F32(q5_1)
ALLOY_QUANT_FROM_F32(q2_k)
ALLOY_QUANT_FROM_F32(q3_k)
ALLOY_QUANT_FROM_F32(q4_k)
ALLOY_QUANT_FROM_F32(q5_k)
ALLOY_QUANT_FROM_F32(q6_k)
ALLOY_QUANT_FROM_F32(iq4_nl)
#undef ALLOY_QUANT_FROM_F32

#endif
