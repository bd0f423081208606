/*
 * model_stock.c — Model Stock: move from the base toward the average of the
 * fine-tunes by a ratio set by how well their task vectors agree.
 *
 * DESIGN
 *   mergekit: mergekit/merge_methods/model_stock.py (spec §1.7; paper
 *   arXiv:2403.19522). Base B, N >= 2 other models X_i, o_i = X_i - B:
 *
 *     cos_ij = clamp(<o_i, o_j> / max(||o_i|| ||o_j||, 1e-6), -1, 1)
 *     cos    = mean of cos_ij over the pairs i < j
 *     t      = N cos / (1 + (N-1) cos)
 *     R      = t * mean_i X_i + (1 - t) * B  =  B + t * mean_i o_i
 *
 *   filter_wise = false (default): the vectors are whole tensors; one scan
 *   pass collects the Gram matrix of the o_i (packed, per-chunk partials
 *   folded in chunk order), so state is O(1) (O(N^2)).
 *   filter_wise = true: the vectors are rows (last dimension; a 1-D tensor is
 *   one row, as mergekit's unsqueeze(0)). Chunks hold whole rows
 *   (ALLOY_METHOD_WHOLE_ROWS) and apply() computes each row's cosines
 *   itself: no pass and no per-row state at all.
 *
 *   The result is computed as B + t * mean(o_i) in double (mathematically
 *   mergekit's t*w_avg + (1-t)*w0, better conditioned when t is large).
 *
 *   Division by zero: mergekit does not guard 1 + (N-1) cos = 0 (it happens
 *   for N = 2 with exactly opposite task vectors, cos = -1) and writes
 *   Inf/NaN. alloy uses t = 0 there (|1 + (N-1) cos| < 1e-12): the output is
 *   the base. With equal-norm task vectors that denominator vanishes exactly
 *   when the task vectors sum to zero, i.e. when mean_i X_i == B, so the
 *   base is also the limit of the formula.
 *
 *   Inputs: the base and >= 2 others (at most 32). A single input that is
 *   the base is copied. mergekit drops an optional tensor present in fewer
 *   than 3 models; a method cannot drop a tensor, so alloy reports it.
 */
#include "methods/method.h"
#include "methods/vecmath.h"

#include <string.h>

enum { P_FILTER_WISE, NPARAMS };

static const struct alloy_param_spec params[] = {
    [P_FILTER_WISE] = {"filter_wise", ALLOY_PARAM_GLOBAL, 0.0, 0,
                       "compute the ratio per row (last dimension) instead of per tensor"},
};

struct ms_state {
    int copy;                 /* one input, the base: copy it */
    int filter_wise;
    int k;                    /* N: models other than the base */
    int idx[ALLOY_VM_MAX];    /* their input indices */
    double t;                 /* whole-tensor ratio */
    double g[ALLOY_VM_GRAM];  /* the scan's Gram matrix, folded window by window */
};

struct ms_acc {
    double g[ALLOY_VM_GRAM];
};

static int ms_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    if (job->base < 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': model_stock: base_model is required and must "
                             "have this tensor", job->config_path, job->name);
    if (job->n == 1) return ALLOY_OK;
    if (job->n < 3)
        return alloy_err_set(err, ALLOY_ERR_CONFIG,
                             "%s: tensor '%s': model_stock: needs the base model plus at least two other models, "
                             "got %d model(s) in total", job->config_path, job->name, job->n);
    if (job->n - 1 > ALLOY_VM_MAX)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': model_stock: %d models besides the base, "
                             "at most %d supported", job->config_path, job->name, job->n - 1, ALLOY_VM_MAX);
    return ALLOY_OK;
}

/* t from a Gram matrix of the N task vectors. */
static double ms_ratio(const double *g, int n)
{
    double sum = 0;
    int pairs = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            double np = sqrt(g[alloy_vm_tri(i, i)]) * sqrt(g[alloy_vm_tri(j, j)]);
            double c = g[alloy_vm_tri(i, j)] / fmax(np, 1e-6);
            if (c > 1) c = 1;
            if (c < -1) c = -1;
            sum += c;
            pairs++;
        }
    double cos = sum / pairs;
    double den = 1.0 + (n - 1) * cos;
    if (fabs(den) < 1e-12) return 0.0;
    return n * cos / den;
}

static int ms_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct ms_state *s = state;
    int rc = ms_check(job, err);
    if (rc) return rc;
    s->copy = job->n == 1;
    s->filter_wise = job->gp[P_FILTER_WISE] != 0;
    if (!s->copy) s->k = alloy_vm_others(job, s->idx);
    return ALLOY_OK;
}

static int ms_want_pass(const struct alloy_merge_job *job, void *state, int pass)
{
    const struct ms_state *s = state;
    return !s->copy && !s->filter_wise && pass == 0;
}

static int ms_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
                   const float *const *x, void *acc, struct alloy_err *err)
{
    const struct ms_state *s = state;
    const float *v[ALLOY_VM_MAX];
    for (int a = 0; a < s->k; a++) v[a] = x[s->idx[a]];
    alloy_vm_gram_add(v, s->k, x[job->base], (size_t)(c->e1 - c->e0), ((struct ms_acc *)acc)->g);
    return ALLOY_OK;
}

static int ms_fold(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first,
                   size_t count, size_t nchunks, struct alloy_err *err)
{
    struct ms_state *s = state;
    alloy_vm_fold(accs, first, count, sizeof(struct ms_acc), (size_t)(s->k * (s->k + 1) / 2), s->g);
    return ALLOY_OK;
}

static int ms_end_pass(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks,
                       struct alloy_err *err)
{
    struct ms_state *s = state;
    s->t = ms_ratio(s->g, s->k);
    return ALLOY_OK;
}

static int ms_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                    const float *const *x, float *out, struct alloy_err *err)
{
    const struct ms_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0);
    if (s->copy) {
        memcpy(out, x[0], len * sizeof *out);
        return ALLOY_OK;
    }
    const float *b = x[job->base];
    size_t cols = s->filter_wise ? (size_t)job->cols : len;
    for (size_t r0 = 0; r0 < len; r0 += cols) {
        double t = s->t;
        const float *v[ALLOY_VM_MAX];
        for (int a = 0; a < s->k; a++) v[a] = x[s->idx[a]] + r0;
        if (s->filter_wise) {
            double g[ALLOY_VM_GRAM];
            memset(g, 0, sizeof(double) * (size_t)(s->k * (s->k + 1) / 2));
            alloy_vm_gram_add(v, s->k, b + r0, cols, g);
            t = ms_ratio(g, s->k);
        }
        const double tk = t / s->k;
        for (size_t e = 0; e < cols; e++) {
            double be = b[r0 + e], sum = 0;
            for (int a = 0; a < s->k; a++) sum += (double)v[a][e] - be;
            out[r0 + e] = (float)(be + tk * sum);
        }
    }
    return ALLOY_OK;
}

const struct alloy_method alloy_method_model_stock = {
    .name = "model_stock",
    .summary = "Model Stock: base + ratio * (average of the models - base), ratio from the task vectors' cosines",
    .params = params,
    .nparams = NPARAMS,
    .flags = ALLOY_METHOD_NEEDS_BASE | ALLOY_METHOD_WHOLE_ROWS | ALLOY_METHOD_RECTIFY,
    .state_size = sizeof(struct ms_state),
    .acc_size = sizeof(struct ms_acc),
    .check = ms_check,
    .init = ms_init,
    .want_pass = ms_want_pass,
    .scan = ms_scan,
    .fold = ms_fold,
    .end_pass = ms_end_pass,
    .apply = ms_apply,
};
