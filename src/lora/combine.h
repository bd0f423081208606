/*
 * combine.h — the per-module arithmetic of `alloy lora merge`: PEFT's
 * add_weighted_adapter combination types as pure functions on float arrays
 * (no files, no adapters), so each formula is tested on its own.
 *
 * DESIGN
 *   A module of adapter i is a part: A_i [r_i, cols], B_i [rows, r_i],
 *   scaling s_i and user weight w_i (Linear: rows = out, cols = in;
 *   Embedding: A [r, vocab], B [dim, r], i.e. the same layout, so the
 *   embedding's delta (B·A)ᵀ needs no special case: everything here works on
 *   B·A [rows, cols] and the transpose is only how PEFT applies it).
 *
 *     cat         A = rows c_i·A_i stacked, B = B_i side by side (c_i = w_i s_i):
 *                 B·A = Σ c_i B_i A_i exactly; rank Σ r_i
 *     A/B types   A = mix(A_i; σ_i √|c_i|), B = mix(B_i; √|c_i|), σ_i = sign(c_i)
 *                 (linear, ties, dare_linear, dare_ties, magnitude_prune; equal ranks)
 *     SVD types   T = mix(Δ_i = s_i B_i A_i; w_i), then B = U·diag(S), A = Vt of the
 *                 truncated SVD of T (combine_svd.c)
 *
 *   mix() is PEFT's merge_utils on a list of same-shape tensors t_i:
 *   optional pruning of each t_i (magnitude: keep the k = (size_t)(density·n)
 *   largest |t|; random (DARE): keep each element with probability density
 *   and divide by density), then either the weighted sum Σ w_i t_i or, with
 *   TIES, the elected sign E = sign(Σ_i t_i) (total) or sign(Σ_i sign t_i)
 *   (frequency), ties to +1, and Σ_i w_i t_i [sign t_i = E] / max(#agreeing, 1).
 *   The election is on the unweighted tensors and the division by the count
 *   of agreeing tensors, as PEFT. Sums are accumulated in double.
 *
 *   DARE draws are alloy_rng_uniform(alloy_rng_key(seed, name, stream + i), e):
 *   a pure function of --random-seed, the module name, which list (A, B or
 *   Δ) and the element — reproducible for any thread count.
 */
#ifndef ALLOY_LORA_COMBINE_H
#define ALLOY_LORA_COMBINE_H

#include "core/internal.h"

enum alloy_lora_prune { ALLOY_LORA_PRUNE_NONE, ALLOY_LORA_PRUNE_MAGNITUDE, ALLOY_LORA_PRUNE_RANDOM };

/* One combination type (merge_method:). */
struct alloy_lora_method {
    const char *name;
    int cat;                      /* ranks concatenate */
    int svd;                      /* the SVD family: mix the dense deltas, re-factor */
    enum alloy_lora_prune prune;
    int ties;                     /* sign election, divided by the agreeing count */
};

/* The method called `name`, or NULL. alloy_lora_method_names: "cat, linear, ..." for messages. */
const struct alloy_lora_method *alloy_lora_method_find(const char *name);
extern const char alloy_lora_method_names[];

/* How mix() combines a list of tensors. */
struct alloy_lora_mix {
    enum alloy_lora_prune prune;
    int ties;
    int frequency;                /* majority_sign_method: frequency (else total) */
    double density;               /* pruning keeps this fraction, 0 < density; >= 1 keeps all */
    uint64_t seed;                /* random pruning: key alloy_rng_key(seed, name, stream + i) */
    const char *name;             /* the module (also names it in messages) */
    uint64_t stream;              /* alloy_lora_ab and alloy_lora_target set their lists' own */
};

/* Streams of the three lists a module may mix (struct alloy_lora_mix.stream). */
#define ALLOY_LORA_STREAM_A     ((uint64_t)1 << 32)
#define ALLOY_LORA_STREAM_B     ((uint64_t)2 << 32)
#define ALLOY_LORA_STREAM_DELTA ((uint64_t)3 << 32)

/* Keeps the k = (size_t)(density·n) largest |x| (equal magnitudes: lower index first), zeroes the rest;
 * density >= 1 keeps everything. Fails only to allocate its 512 KiB histogram. */
int  alloy_lora_prune_magnitude(float *x, size_t n, double density, struct alloy_err *err);
/* DARE: element e kept when alloy_rng_uniform(key, e) < density, then divided by density; density >= 1: no-op. */
void alloy_lora_prune_random(float *x, size_t n, double density, uint64_t key);
/* out[e] = the combination of t[0..nt)[e] with weights w (t is pruned in place). */
int  alloy_lora_mix(const struct alloy_lora_mix *m, float *const *t, const double *w, size_t nt, size_t n,
                    float *out, struct alloy_err *err);

/* One adapter's LoRA of one module, as float32. */
struct alloy_lora_part {
    float *a;                     /* [rank, cols] */
    float *b;                     /* [rows, rank] */
    uint32_t rank;
    double scale;                 /* s_i */
    double weight;                /* w_i */
};

/* cat: a [Σ rank, cols], b [rows, Σ rank]. */
void alloy_lora_cat(const struct alloy_lora_part *p, size_t np, uint64_t rows, uint64_t cols, float *a, float *b);
/* The A/B types: every part has rank r; a [r, cols], b [rows, r]. p's arrays are pruned in place. */
int  alloy_lora_ab(const struct alloy_lora_mix *m, const struct alloy_lora_part *p, size_t np, uint64_t rows,
                   uint64_t cols, float *a, float *b, struct alloy_err *err);
/* The SVD types' target T [rows, cols] = mix(s_i B_i A_i; w_i). Needs np dense [rows, cols] scratch matrices,
 * allocated here (ALLOY_ERR_NOMEM when they cannot be). */
int  alloy_lora_target(const struct alloy_lora_mix *m, const struct alloy_lora_part *p, size_t np, uint64_t rows,
                       uint64_t cols, float *t, struct alloy_err *err);

/* The SVD types' factors (combine_svd.c): the rank-k truncation of t [rows, cols], b = U·diag(S) [rows, k],
 * a = Vt [k, cols]; clamp in (0, 1]: both clamped to ±(the clamp-quantile of their values), PEFT's
 * svd_clamp (0: none). Reports ‖T − B·A‖_F / ‖T‖_F in *rel_err and the Eckart–Young optimum
 * sqrt(Σ_{j>k} σ_j²) / ‖T‖_F in *rel_opt (both 0 when T = 0). k <= min(rows, cols). */
int  alloy_lora_factor(const float *t, uint64_t rows, uint64_t cols, uint32_t k, double clamp, float *a, float *b,
                       double *rel_err, double *rel_opt, struct alloy_err *err);

#endif
