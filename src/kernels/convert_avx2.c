/*
 * convert_avx2.c — AVX2/F16C conversion rows and the streaming copy of the
 * "avx2" and "avx512" kernel tables (kernels.h), bit-identical to dtype.c.
 *
 * DESIGN
 *   Compiled with target attributes (avx2, f16c) and only called through a
 *   table the CPU probe chose. BF16 uses
 *   integer lanes (shift up / round-to-nearest-even with NaN quieting, the
 *   same formula as the scalar code); F16 uses the F16C instructions, whose
 *   rounding (imm 0: nearest even) and NaN handling match the reference.
 *   Tails shorter than 8 fall back to the scalar functions.
 */
#include "kernels/kernels.h"

#include "core/internal.h"

#if ALLOY_X86_DISPATCH
#include <immintrin.h>

#define AVX2_F16C __attribute__((target("avx2,f16c")))

AVX2_F16C void alloy_avx2_to_f32(enum alloy_dtype t, const void *src, float *dst, size_t n)
{
    const uint8_t *p = src;
    size_t i = 0;
    if (t == ALLOY_DTYPE_BF16) {
        for (; i + 8 <= n; i += 8) {
            __m128i h = _mm_loadu_si128((const __m128i *)(p + 2 * i));
            __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(w));
        }
    } else if (t == ALLOY_DTYPE_F16) {
        for (; i + 8 <= n; i += 8) {
            __m128i h = _mm_loadu_si128((const __m128i *)(p + 2 * i));
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
        }
    }
    alloy_ref_to_f32(t, p + i * 2, dst + i, n - i);
}

AVX2_F16C size_t alloy_avx2_from_f32(enum alloy_dtype t, const float *src, void *dst, size_t n)
{
    uint8_t *p = dst;
    size_t i = 0, bad = 0;
    const __m256i expo = _mm256_set1_epi32(0x7f800000); /* NaN or Inf: every exponent bit set */
    if (t == ALLOY_DTYPE_BF16) {
        const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
        const __m256i inf = _mm256_set1_epi32(0x7f800000);
        const __m256i bias = _mm256_set1_epi32(0x7fff);
        const __m256i one = _mm256_set1_epi32(1);
        const __m256i quiet = _mm256_set1_epi32(0x40);
        for (; i + 8 <= n; i += 8) {
            __m256i u = _mm256_loadu_si256((const __m256i *)(src + i));
            bad += (size_t)__builtin_popcount(
                (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(u, expo), expo))));
            __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
            __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)), 16);
            __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet);
            r = _mm256_blendv_epi8(r, q, nan);
            /* pack 8 x u32 (values < 65536) into 8 x u16 */
            __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
            _mm_storeu_si128((__m128i *)(p + 2 * i), _mm_packus_epi32(lo, hi));
        }
    } else if (t == ALLOY_DTYPE_F16) {
        for (; i + 8 <= n; i += 8) {
            __m256 f = _mm256_loadu_ps(src + i);
            bad += (size_t)__builtin_popcount((unsigned)_mm256_movemask_ps(
                _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(f), expo), expo))));
            _mm_storeu_si128((__m128i *)(p + 2 * i), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
        }
    }
    return bad + alloy_ref_from_f32(t, src + i, p + i * 2, n - i);
}

/* Rows shorter than 256 bytes are copied by memcpy. */
AVX2_F16C void alloy_avx2_copy_stream(void *dst, const void *src, size_t n)
{
    if (n < 256) {
        memcpy(dst, src, n);
        return;
    }
    uint8_t *d = dst;
    const uint8_t *s = src;
    size_t i = (size_t)(-(uintptr_t)d & 31); /* to the first 32-byte boundary */
    if (i > n) i = n;
    memcpy(d, s, i);
    for (; i + 128 <= n; i += 128)
        for (int k = 0; k < 4; k++)
            _mm256_stream_si256((__m256i *)(void *)(d + i + 32 * k),
                                _mm256_loadu_si256((const __m256i *)(const void *)(s + i + 32 * k)));
    for (; i + 32 <= n; i += 32)
        _mm256_stream_si256((__m256i *)(void *)(d + i), _mm256_loadu_si256((const __m256i *)(const void *)(s + i)));
    memcpy(d + i, s + i, n - i);
    _mm_sfence(); /* the streamed bytes are visible before anything this thread does next */
}
#endif
