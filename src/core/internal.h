/*
 * internal.h — helpers shared by the library's source files (not installed).
 *
 * Overflow-checked arithmetic, small string/path utilities, the reference and
 * SIMD conversion rows, and the allocation macros tests can hook.
 */
#ifndef ALLOY_INTERNAL_H
#define ALLOY_INTERNAL_H

#include "alloy.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* x86 builds compile their hot loops for AVX2 (and wider) too: the kernel tables of src/kernels/,
 * one chosen by the CPU at run time (target attributes, never the compiler's -march). */
#if defined(__x86_64__) && defined(__GNUC__) && defined(ALLOY_HAVE_AVX2)
#define ALLOY_X86_DISPATCH 1
#else
#define ALLOY_X86_DISPATCH 0
#endif

/* A loop body inlined into each instruction-set version of its caller. */
#ifdef __GNUC__
#define ALLOY_INLINE inline __attribute__((always_inline))
#else
#define ALLOY_INLINE inline
#endif

#define ALLOY_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Checked arithmetic: return true on overflow. */
static inline bool ckd_mul_u64(uint64_t *r, uint64_t a, uint64_t b) { return __builtin_mul_overflow(a, b, r); }
static inline bool ckd_add_u64(uint64_t *r, uint64_t a, uint64_t b) { return __builtin_add_overflow(a, b, r); }

static inline int getenv_flag(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

/* Allocation wrappers; NULL on failure, never abort. */
void *alloy_xmalloc(size_t n);
void *alloy_xcalloc(size_t n, size_t size);
void *alloy_xrealloc(void *p, size_t n);
void *alloy_xaligned(size_t align, size_t n); /* align: a power of two, multiple of sizeof(void *); free() it */
char *alloy_xstrdup(const char *s);
char *alloy_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* qsort, after one pass that finds most inputs (tensors in file order) already sorted and leaves them. */
void alloy_qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *));

/* The largest tokenizer.json read: it is parsed whole into a jansson tree (tens of bytes of memory per byte
 * of JSON), so its size bounds that memory. */
#define ALLOY_TOKENIZER_JSON_MAX ((size_t)64 << 20)

/* Reads a whole file into a NUL-terminated buffer (max bytes; 0 = 1 GiB). */
int alloy_read_file(const char *path, size_t max, char **out, size_t *len, struct alloy_err *err);
/* Opens a regular file of at most max bytes for reading (a FIFO is refused without blocking): *fd, *size. */
int alloy_open_bounded(const char *path, size_t max, int *fd, size_t *size, struct alloy_err *err);
int alloy_is_dir(const char *path);
int alloy_is_file(const char *path);
/* Copies a regular file 1 MiB at a time (holes stay holes), then fsyncs it; no size limit. The copy's mode
 * is the source's masked by 0644, never wider than the source. */
int alloy_copy_file(const char *src, const char *dst, struct alloy_err *err);
/* 1 when canonical path a is b or lies inside b. */
int alloy_path_within(const char *a, const char *b);
/* That model root, canonical, into root (PATH_MAX bytes); -1 when dir cannot be resolved. */
int alloy_folder_root(const char *dir, char *root);
/* Writes buf to path (create/truncate) and fsyncs it. */
int alloy_write_file(const char *path, const void *buf, size_t len, struct alloy_err *err);
/* Writes the whole buffer at offset, retrying short writes. */
int alloy_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *path, struct alloy_err *err);

/* How input values travel from a source (src/sources/) to a method (src/methods/method.h): as float32, or
 * as the stored bfloat16 bits (2 bytes each) for a method that takes them raw. */
enum alloy_input_mode {
    ALLOY_INPUT_F32 = 0,
    ALLOY_INPUT_BF16_RAW = 1,
};

/* The reference conversion rows (dtype.c; the other instruction sets' rows: kernels/kernels.h). */
void alloy_ref_to_f32(enum alloy_dtype t, const void *src, float *dst, size_t n);
/* The from_f32 rows also return how many of the n values were NaN or Inf (all exponent bits set). */
size_t alloy_ref_from_f32(enum alloy_dtype t, const float *src, void *dst, size_t n);
/* alloy_from_f32, returning the number of NaN and Inf values among the n converted. */
size_t alloy_from_f32_count(enum alloy_dtype t, const float *src, void *dst, size_t n);
/* memcpy for bytes no core reads soon (output staged for O_DIRECT): non-temporal stores where the CPU
 * has them, no read for ownership and no cache lines evicted; ordered before the caller's next store. */
void alloy_copy_stream(void *dst, const void *src, size_t n);

/* Counter-based random numbers (rng.c): a pure function of (key, counter). */
uint64_t alloy_rng_key(uint64_t seed, const char *name, uint64_t stream);
/* The SplitMix64 finalizer (a bijection); inline because random methods draw once per element and
 * model. */
static inline uint64_t alloy_rng_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* The stream's odd Weyl increment, from its key (SplittableRandom's mixGamma: at least 24 bit flips
 * between neighbouring bits, so the low bits of the sequence vary too). */
static inline uint64_t alloy_rng_gamma(uint64_t key)
{
    uint64_t g = alloy_rng_mix64(key ^ 0x632be59bd9b4e019ull) | 1;
    return __builtin_popcountll(g ^ (g >> 1)) < 24 ? g ^ 0xaaaaaaaaaaaaaaaaull : g;
}
/* Draw `counter` of stream `key`: SplitMix64's output for the Weyl sequence key + counter * gamma(key),
 * one finalizer per draw. Each stream has its own increment, so two streams are never shifted copies
 * of one sequence. In a loop over counters the increment is loop-invariant (computed once). */
static inline uint64_t alloy_rng_u64(uint64_t key, uint64_t counter)
{
    return alloy_rng_mix64(key + counter * alloy_rng_gamma(key));
}
/* Uniform in [0, 1) with 53 bits. */
static inline double alloy_rng_uniform(uint64_t key, uint64_t counter)
{
    return (double)(alloy_rng_u64(key, counter) >> 11) * 0x1p-53;
}

#endif
