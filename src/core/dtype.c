/*
 * dtype.c — the dtype traits table and the scalar reference conversions.
 *
 * DESIGN
 *   One table describes every safetensors dtype and ggml's block-quantized
 *   types (GGUF; their rows live in src/quant/); nothing else in alloy
 *   switches on dtype names. Mergeable dtypes (F32, F16, BF16, F64) convert
 *   to and from float32 in rows. The scalar functions here are the reference:
 *   round-to-nearest-even, NaN kept NaN (forced quiet), subnormals exact:
 *   the scalar kernel table's rows (kernels/scalar.c). The public
 *   conversions call the probed table (kernels.h), whose AVX2/F16C rows
 *   (kernels/convert_avx2.c) give bit-identical results.
 */
#include "alloy.h"
#include "core/internal.h"
#include "kernels/kernels.h"
#include "quant/blocks.h"
#include "quant/quantize.h"

#include <string.h>

/* The reference rows of the mergeable types, as the table's to_f32 / from_f32. */
#define REF_ROWS(T)                                                                                             \
    static void T##_to_f32(const void *src, float *dst, size_t n) { alloy_ref_to_f32(ALLOY_DTYPE_##T, src, dst, n); } \
    static size_t T##_from_f32(const float *src, void *dst, size_t n)                                           \
    {                                                                                                           \
        return alloy_ref_from_f32(ALLOY_DTYPE_##T, src, dst, n);                                                \
    }
REF_ROWS(F32)
REF_ROWS(F16)
REF_ROWS(BF16)
REF_ROWS(F64)
#undef REF_ROWS

#define FLOAT(T, torch, bytes) {#T, torch, 8 * (bytes), 1, 1, bytes, T##_to_f32, T##_from_f32}
#define PLAIN(name, torch, bytes) {name, torch, 8 * (bytes), 0, 1, bytes, NULL, NULL}
/* A ggml block type: read through its dequantizer, written through its reference quantizer. */
#define QUANT(name, elems, bytes, deq, q) {name, NULL, 8 * (bytes) / (elems), 1, elems, bytes, deq, q}

static const struct alloy_dtype_traits g_dtypes[ALLOY_DTYPE_COUNT] = {
    [ALLOY_DTYPE_F32]         = FLOAT(F32, "float32", 4),
    [ALLOY_DTYPE_F16]         = FLOAT(F16, "float16", 2),
    [ALLOY_DTYPE_BF16]        = FLOAT(BF16, "bfloat16", 2),
    [ALLOY_DTYPE_F64]         = FLOAT(F64, "float64", 8),
    [ALLOY_DTYPE_BOOL]        = PLAIN("BOOL", "bool", 1),
    [ALLOY_DTYPE_U8]          = PLAIN("U8", "uint8", 1),
    [ALLOY_DTYPE_I8]          = PLAIN("I8", "int8", 1),
    [ALLOY_DTYPE_I16]         = PLAIN("I16", "int16", 2),
    [ALLOY_DTYPE_U16]         = PLAIN("U16", "uint16", 2),
    [ALLOY_DTYPE_I32]         = PLAIN("I32", "int32", 4),
    [ALLOY_DTYPE_U32]         = PLAIN("U32", "uint32", 4),
    [ALLOY_DTYPE_I64]         = PLAIN("I64", "int64", 8),
    [ALLOY_DTYPE_U64]         = PLAIN("U64", "uint64", 8),
    [ALLOY_DTYPE_F8_E4M3]     = PLAIN("F8_E4M3", NULL, 1),
    [ALLOY_DTYPE_F8_E5M2]     = PLAIN("F8_E5M2", NULL, 1),
    [ALLOY_DTYPE_F8_E4M3FNUZ] = PLAIN("F8_E4M3FNUZ", NULL, 1),
    [ALLOY_DTYPE_F8_E5M2FNUZ] = PLAIN("F8_E5M2FNUZ", NULL, 1),
    [ALLOY_DTYPE_F8_E8M0]     = PLAIN("F8_E8M0", NULL, 1),
    [ALLOY_DTYPE_F6_E2M3]     = {"F6_E2M3", NULL, 6, 0, 4, 3, NULL, NULL},
    [ALLOY_DTYPE_F6_E3M2]     = {"F6_E3M2", NULL, 6, 0, 4, 3, NULL, NULL},
    [ALLOY_DTYPE_F4]          = {"F4", NULL, 4, 0, 2, 1, NULL, NULL},
    [ALLOY_DTYPE_C64]         = PLAIN("C64", "complex64", 8),
    [ALLOY_DTYPE_Q8_0]        = QUANT("Q8_0", ALLOY_QK, 34, alloy_dequant_q8_0, alloy_from_f32_q8_0),
    [ALLOY_DTYPE_Q4_0]        = QUANT("Q4_0", ALLOY_QK, 18, alloy_dequant_q4_0, alloy_from_f32_q4_0),
    [ALLOY_DTYPE_Q4_1]        = QUANT("Q4_1", ALLOY_QK, 20, alloy_dequant_q4_1, alloy_from_f32_q4_1),
    [ALLOY_DTYPE_Q5_0]        = QUANT("Q5_0", ALLOY_QK, 22, alloy_dequant_q5_0, alloy_from_f32_q5_0),
    [ALLOY_DTYPE_Q5_1]        = QUANT("Q5_1", ALLOY_QK, 24, alloy_dequant_q5_1, alloy_from_f32_q5_1),
    [ALLOY_DTYPE_Q2_K]        = QUANT("Q2_K", ALLOY_QK_K, 84, alloy_dequant_q2_k, alloy_from_f32_q2_k),
    [ALLOY_DTYPE_Q3_K]        = QUANT("Q3_K", ALLOY_QK_K, 110, alloy_dequant_q3_k, alloy_from_f32_q3_k),
    [ALLOY_DTYPE_Q4_K]        = QUANT("Q4_K", ALLOY_QK_K, 144, alloy_dequant_q4_k, alloy_from_f32_q4_k),
    [ALLOY_DTYPE_Q5_K]        = QUANT("Q5_K", ALLOY_QK_K, 176, alloy_dequant_q5_k, alloy_from_f32_q5_k),
    [ALLOY_DTYPE_Q6_K]        = QUANT("Q6_K", ALLOY_QK_K, 210, alloy_dequant_q6_k, alloy_from_f32_q6_k),
    [ALLOY_DTYPE_IQ4_NL]      = QUANT("IQ4_NL", ALLOY_QK, 18, alloy_dequant_iq4_nl, alloy_from_f32_iq4_nl),
};
#undef FLOAT
#undef PLAIN
#undef QUANT

int alloy_dtype_nbytes(enum alloy_dtype dtype, uint64_t n, uint64_t *out)
{
    if ((unsigned)dtype >= ALLOY_DTYPE_COUNT) return -1;
    const struct alloy_dtype_traits *t = &g_dtypes[dtype];
    if (n % t->block) return -1;
    return ckd_mul_u64(out, n / t->block, t->block_bytes) ? -1 : 0;
}

const struct alloy_dtype_traits *alloy_dtype_traits(enum alloy_dtype dtype)
{
    if ((unsigned)dtype >= ALLOY_DTYPE_COUNT) return NULL;
    return &g_dtypes[dtype];
}

int alloy_dtype_parse(const char *s, int torch_names, enum alloy_dtype *out)
{
    if (torch_names && strncmp(s, "torch.", 6) == 0) s += 6;
    for (int i = 0; i < ALLOY_DTYPE_FIRST_QUANT; i++) { /* block types are GGUF's, never a safetensors dtype */
        const struct alloy_dtype_traits *t = &g_dtypes[i];
        if ((!torch_names && strcmp(s, t->name) == 0) ||
            (torch_names && t->torch && strcmp(s, t->torch) == 0)) {
            *out = (enum alloy_dtype)i;
            return 0;
        }
    }
    return -1;
}

/* ------------------------------------------------------------ scalar reference */

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t alloy_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float alloy_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t alloy_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) /* Inf or NaN; NaN keeps its top payload bits, made quiet */
        return (uint16_t)(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u | ((x >> 13) & 0x3ffu) : 0));
    if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to Inf */
    if (x < 0x38800000u) {                                    /* f16 subnormal or zero */
        if (x < 0x33000000u) return (uint16_t)sign;           /* <= 2^-25 rounds to 0 */
        uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e, r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = x - 0x38000000u; /* rebias 127 -> 15 */
    uint32_t res = r >> 13, rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (res & 1u))) res++;
    return (uint16_t)(sign | res);
}

float alloy_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m ? 0x400000u | (m << 13) : 0));
    if (e == 0) {
        if (m == 0) return bits_f32(sign);
        float v = (float)m * 0x1p-24f; /* exact: m < 2^10 */
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

void alloy_ref_to_f32(enum alloy_dtype t, const void *src, float *dst, size_t n)
{
    const uint8_t *p = src;
    switch (t) {
    case ALLOY_DTYPE_F32: memcpy(dst, src, n * 4); break;
    case ALLOY_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = alloy_bf16_to_f32(h); }
        break;
    case ALLOY_DTYPE_F16:
        for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = alloy_f16_to_f32(h); }
        break;
    case ALLOY_DTYPE_F64:
        for (size_t i = 0; i < n; i++) { double d; memcpy(&d, p + 8 * i, 8); dst[i] = (float)d; }
        break;
    default: memset(dst, 0, n * sizeof *dst); break; /* callers only pass mergeable types */
    }
}

size_t alloy_ref_from_f32(enum alloy_dtype t, const float *src, void *dst, size_t n)
{
    uint8_t *p = dst;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) { /* NaN/Inf on the exponent bits: vectorizes */
        uint32_t u;
        memcpy(&u, &src[i], 4);
        bad += (u & 0x7f800000u) == 0x7f800000u;
    }
    switch (t) {
    case ALLOY_DTYPE_F32: memcpy(dst, src, n * 4); break;
    case ALLOY_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) { uint16_t h = alloy_f32_to_bf16(src[i]); memcpy(p + 2 * i, &h, 2); }
        break;
    case ALLOY_DTYPE_F16:
        for (size_t i = 0; i < n; i++) { uint16_t h = alloy_f32_to_f16(src[i]); memcpy(p + 2 * i, &h, 2); }
        break;
    case ALLOY_DTYPE_F64:
        for (size_t i = 0; i < n; i++) { double d = src[i]; memcpy(p + 8 * i, &d, 8); }
        break;
    default: break;
    }
    return bad;
}

/* ------------------------------------------------------------ through the kernel table */

/* The kernel tables have CPU-specific rows for the plain float types; any other convertible type (a block
 * type, say) converts through its own row in g_dtypes. */
static int kernel_row(enum alloy_dtype t)
{
    return t == ALLOY_DTYPE_F32 || t == ALLOY_DTYPE_F16 || t == ALLOY_DTYPE_BF16 || t == ALLOY_DTYPE_F64;
}

void alloy_to_f32(enum alloy_dtype t, const void *src, float *dst, size_t n)
{
    if (kernel_row(t)) alloy_kernels()->to_f32(t, src, dst, n);
    else if ((unsigned)t < ALLOY_DTYPE_COUNT && g_dtypes[t].to_f32) g_dtypes[t].to_f32(src, dst, n);
}

void alloy_copy_stream(void *dst, const void *src, size_t n) { alloy_kernels()->copy_stream(dst, src, n); }

size_t alloy_from_f32_count(enum alloy_dtype t, const float *src, void *dst, size_t n)
{
    if (kernel_row(t)) return alloy_kernels()->from_f32(t, src, dst, n);
    return (unsigned)t < ALLOY_DTYPE_COUNT && g_dtypes[t].from_f32 ? g_dtypes[t].from_f32(src, dst, n) : 0;
}

void alloy_from_f32(enum alloy_dtype t, const float *src, void *dst, size_t n)
{
    (void)alloy_from_f32_count(t, src, dst, n);
}
