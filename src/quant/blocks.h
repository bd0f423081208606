/*
 * blocks.h — byte layouts of ggml's quantized block types, and the
 * dequantizers that work on them (quantizers: quantize.h).
 *
 * DESIGN
 *   Each type stores a row as whole blocks: 32 elements for the legacy
 *   types (Q4_0 … Q8_0), 256 (a "super-block") for the K-quants. Blocks are
 *   packed, little-endian, with fp16 scales stored as their 16 bits; the
 *   structs below are documentation and size checks only, every access goes
 *   through byte offsets so nothing depends on host struct layout. The
 *   dequantizers (dequant.c) are the dtype table's to_f32 rows and match
 *   ggml's dequantize_row_* bit for bit: same operation order, no FMA
 *   contraction (the file is compiled with -ffp-contract=off). Quantizers
 *   (quantize.h) are the table's from_f32 rows of the same types.
 */
#ifndef ALLOY_QUANT_BLOCKS_H
#define ALLOY_QUANT_BLOCKS_H

#include <stddef.h>
#include <stdint.h>

#define ALLOY_QK 32   /* elements per legacy block */
#define ALLOY_QK_K 256 /* elements per K-quant super-block */

/* field order = byte order; h = fp16 bits */
struct alloy_block_q4_0 { uint16_t d; uint8_t qs[16]; };
struct alloy_block_q4_1 { uint16_t d, m; uint8_t qs[16]; };
struct alloy_block_q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };
struct alloy_block_q5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };
struct alloy_block_q8_0 { uint16_t d; int8_t qs[32]; };
struct alloy_block_q2_k { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; };
struct alloy_block_q3_k { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; };
struct alloy_block_q4_k { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct alloy_block_q5_k { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct alloy_block_q6_k { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
struct alloy_block_iq4_nl { uint16_t d; uint8_t qs[16]; }; /* indices into alloy_iq4nl_values, Q4_0 nibble order */

_Static_assert(sizeof(struct alloy_block_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(struct alloy_block_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(struct alloy_block_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(struct alloy_block_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(struct alloy_block_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(struct alloy_block_q2_k) == 84, "Q2_K block");
_Static_assert(sizeof(struct alloy_block_q3_k) == 110, "Q3_K block");
_Static_assert(sizeof(struct alloy_block_q4_k) == 144, "Q4_K block");
_Static_assert(sizeof(struct alloy_block_q5_k) == 176, "Q5_K block");
_Static_assert(sizeof(struct alloy_block_q6_k) == 210, "Q6_K block");
_Static_assert(sizeof(struct alloy_block_iq4_nl) == 18, "IQ4_NL block");

/* IQ4_NL's 16 levels (ggml kvalues_iq4nl): a code c means d * alloy_iq4nl_values[c]. */
extern const int8_t alloy_iq4nl_values[16];

/* Dequantizers: n elements (a multiple of the block) from src to dst. */
void alloy_dequant_q4_0(const void *src, float *dst, size_t n);
void alloy_dequant_q4_1(const void *src, float *dst, size_t n);
void alloy_dequant_q5_0(const void *src, float *dst, size_t n);
void alloy_dequant_q5_1(const void *src, float *dst, size_t n);
void alloy_dequant_q8_0(const void *src, float *dst, size_t n);
void alloy_dequant_q2_k(const void *src, float *dst, size_t n);
void alloy_dequant_q3_k(const void *src, float *dst, size_t n);
void alloy_dequant_q4_k(const void *src, float *dst, size_t n);
void alloy_dequant_q5_k(const void *src, float *dst, size_t n);
void alloy_dequant_q6_k(const void *src, float *dst, size_t n);
void alloy_dequant_iq4_nl(const void *src, float *dst, size_t n);

#endif
