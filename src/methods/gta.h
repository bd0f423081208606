/*
 * gta.h — the generalized task arithmetic family, shared by
 * task_arithmetic.c, ties.c, dare.c, breadcrumbs.c and della.c.
 *
 * mergekit: mergekit/merge_methods/generalized_task_arithmetic.py and
 * mergekit/sparsify.py (spec §1.6, §1.6.1). Every method is one
 * (sparsification, consensus) pair over the same pipeline:
 *
 *   delta_i = X_i - B                          (every input but the base)
 *   delta_i = sparsify(delta_i, density_i, gamma_i | epsilon_i)   (+ L1 rescale)
 *   D_i     = w_i * delta_i
 *   consensus "sum":  sigma = sign(sum_i D_i) (0 counts as +),  M_i = [sign(D_i) == sigma]
 *                     Delta = sum_i D_i M_i,   Z = sum_i w_i M_i  (Z == 0 -> 1)
 *   none:             Delta = sum_i D_i,       Z = sum_i w_i      (|Z| < 1e-8 -> 1)
 *   normalize:        Delta /= Z
 *   R = B + lambda * Delta
 *
 * A method file declares its parameter table with GTA_COMMON_PARAMS (plus
 * gamma/epsilon at GTA_P_EXTRA) and one GTA_DEFINE_METHOD line; everything
 * else (validation, passes, apply) is shared in gta.c and gta_loops.h.
 */
#ifndef ALLOY_GTA_H
#define ALLOY_GTA_H

#include "methods/method.h"
#include "kernels/kernels.h"
#include "methods/della_rank.h"
#include "methods/select.h"

#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#define GTA_MAX_MODELS 64   /* task vectors per tensor (inputs minus the base) */
#define GTA_L1_SLOTS   16   /* L1-norm sums per scan pass */
#define GTA_HIST_SLOTS 8    /* radix histograms per scan pass (magnitude methods) */
#define GTA_KEEP_BITS  ((uint64_t)1 << 27) /* keep-bitmap bits per tensor (16 MiB), whatever its size */

/* Parameter indices, identical for every method of the family. */
enum {
    GTA_P_WEIGHT,     /* tensor, required */
    GTA_P_DENSITY,    /* tensor, 1.0 */
    GTA_P_INT8_MASK,  /* global, false (no numerical effect) */
    GTA_P_NORMALIZE,  /* global, per method */
    GTA_P_RESCALE,    /* global, per method */
    GTA_P_LAMBDA,     /* global, 1.0 */
    GTA_P_EXTRA,      /* tensor: gamma (breadcrumbs) or epsilon (della); absent otherwise */
};

#define GTA_COMMON_PARAMS(normalize_def, rescale_def)                                                            \
    [GTA_P_WEIGHT] = {"weight", ALLOY_PARAM_TENSOR, NAN, 1, "scale of this model's task vector"},                  \
    [GTA_P_DENSITY] = {"density", ALLOY_PARAM_TENSOR, 1.0, 0, "fraction of the task vector to keep"},              \
    [GTA_P_INT8_MASK] = {"int8_mask", ALLOY_PARAM_GLOBAL, 0.0, 0, "accepted for compatibility; no effect"},        \
    [GTA_P_NORMALIZE] = {"normalize", ALLOY_PARAM_GLOBAL, (normalize_def), 0, "divide by the sum of the weights"}, \
    [GTA_P_RESCALE] = {"rescale", ALLOY_PARAM_GLOBAL, (rescale_def), 0,                                          \
                       "restore each sparsified task vector's L1 norm"},                                           \
    [GTA_P_LAMBDA] = {"lambda", ALLOY_PARAM_GLOBAL, 1.0, 0, "scale of the merged task vector"}

enum gta_sparsify {
    GTA_SPARSIFY_NONE,      /* task_arithmetic */
    GTA_SPARSIFY_MAGNITUDE, /* ties: keep the top-k |delta| */
    GTA_SPARSIFY_RANDOM,    /* dare: Bernoulli(density) */
    GTA_SPARSIFY_OUTLIERS,  /* breadcrumbs: drop the gamma largest and the smallest */
    GTA_SPARSIFY_DELLA,     /* della: Bernoulli with rank-dependent probability per row */
};

struct gta_kind {
    const char *name;
    enum gta_sparsify sparsify;
    int consensus;          /* 1: "sum" sign consensus */
    int nparams;            /* 6, or 7 with gamma/epsilon */
};

/* Per task vector. */
struct gta_model {
    int input;              /* index among the job's inputs */
    float w;                /* weight */
    double density, extra;  /* extra: gamma or epsilon */
    int sparse;             /* 0: density >= 1, the task vector is used unchanged */
    int zero;               /* 1: sparsified to nothing (density <= 0) */
    int nsel;               /* selections: 1 (magnitude), 2 (outliers: keep-top A minus top B) */
    struct alloy_select sel[2];
    int need_l1, l1_done;
    double before, after;   /* sum |delta|, sum |kept delta| */
    float rescale;          /* before / after, or 1 */
    uint64_t rng_key;       /* random methods */
    uint64_t draw_thr;      /* random methods: keep iff the element's 32 random bits < draw_thr (u < density) */
    uint32_t *della_kmax;   /* della: largest kept draw by lim2 index (gta_della_row), NULL: per call */
    _Atomic uint64_t *keep_bits; /* random methods with rescale: the L1 pass's keep decisions, bit e of
                                    the tensor (within GTA_KEEP_BITS); NULL: apply() draws them again */
};

struct gta_state {
    const struct gta_kind *kind;
    const struct alloy_kernels *k; /* the job's kernel table: the chunk loops and their leaves */
    int nm;                 /* task vectors */
    int base;
    struct gta_model m[GTA_MAX_MODELS];
    int normalize;
    float lambda;
    float lin_scale;        /* no consensus: lambda / Z, or lambda */
    /* plan of the current scan pass */
    int n_hist, n_l1;
    int hist_model[GTA_HIST_SLOTS], hist_sel[GTA_HIST_SLOTS];
    int l1_model[GTA_L1_SLOTS];
    size_t pass_k;          /* chunks sampled by the current pass (0: all): selections in their sample stage */
};

/* Per-chunk accumulator: L1 sums, then hist_slots histograms. */
struct gta_acc_head {
    double l1[GTA_L1_SLOTS][2];
};

#define GTA_ACC_SIZE(hist_slots) \
    (sizeof(struct gta_acc_head) + (size_t)(hist_slots) * ALLOY_SEL_BINS * sizeof(uint32_t))

int  gta_check(const struct gta_kind *kind, const struct alloy_merge_job *job, struct alloy_err *err);
int  gta_init(const struct gta_kind *kind, const struct alloy_merge_job *job, void *state, struct alloy_err *err);
int  gta_want_pass(const struct alloy_merge_job *job, void *state, int pass);
size_t gta_pass_sample(const struct alloy_merge_job *job, const void *state, int pass);
int  gta_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
              const float *const *x, void *acc, struct alloy_err *err);
int  gta_fold(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first,
              size_t count, size_t nchunks, struct alloy_err *err);
int  gta_end_pass(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks, struct alloy_err *err);
int  gta_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
               const float *const *x, float *out, struct alloy_err *err);
void gta_fini(const struct alloy_merge_job *job, void *state);

/* Whether this job takes its inputs raw (method.h takes_bf16): the consensus random and della merges whose
 * every block runs the fused AVX-512 loops, which widen bfloat16 in registers. */
int gta_takes_bf16(const struct alloy_merge_job *job, const void *state);

#define GTA_NEEDS_HIST(sp) ((sp) == GTA_SPARSIFY_MAGNITUDE || (sp) == GTA_SPARSIFY_OUTLIERS)
#define GTA_ACC_SIZE_FOR(sp) GTA_ACC_SIZE(GTA_NEEDS_HIST(sp) ? GTA_HIST_SLOTS : 0)

/*
 * Defines `const struct alloy_method alloy_method_<ident>`: the kind, the
 * two wrappers that pass it, and the shared hooks. `params` is the method's
 * parameter table (6 entries, or 7 with gamma/epsilon at GTA_P_EXTRA).
 */
#define GTA_DEFINE_METHOD(ident, sp, consensus_, params_, extra_flags, summary_)                                  \
    static const struct gta_kind ident##_kind = {#ident, (sp), (consensus_),                                      \
                                                 (int)(sizeof(params_) / sizeof((params_)[0]))};                  \
    static int ident##_check(const struct alloy_merge_job *job, struct alloy_err *err)                            \
    {                                                                                                              \
        return gta_check(&ident##_kind, job, err);                                                                 \
    }                                                                                                              \
    static int ident##_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)                 \
    {                                                                                                              \
        return gta_init(&ident##_kind, job, state, err);                                                           \
    }                                                                                                              \
    const struct alloy_method alloy_method_##ident = {                                                             \
        .name = #ident,                                                                                            \
        .summary = (summary_),                                                                                     \
        .params = (params_),                                                                                       \
        .nparams = (int)(sizeof(params_) / sizeof((params_)[0])),                                                  \
        .flags = ALLOY_METHOD_NEEDS_BASE | ALLOY_METHOD_BASE_SHAPE | ALLOY_METHOD_TAKES_BF16 | (extra_flags),      \
        .state_size = sizeof(struct gta_state),                                                                    \
        .acc_size = GTA_ACC_SIZE_FOR(sp),                                                                          \
        .check = ident##_check,                                                                                    \
        .init = ident##_init,                                                                                      \
        .want_pass = gta_want_pass,                                                                                \
        .scan = gta_scan,                                                                                          \
        .fold = gta_fold,                                                                                          \
        .end_pass = gta_end_pass,                                                                                  \
        .apply = gta_apply,                                                                                        \
        .fini = gta_fini,                                                                                          \
        .pass_sample = gta_pass_sample,                                                                            \
        .takes_bf16 = gta_takes_bf16,                                                                              \
    }

#endif
