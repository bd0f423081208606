/*
 * multislerp.c — barycentric interpolation of several models on a
 * hypersphere (tangent space at the weighted mean direction).
 *
 * DESIGN
 *   mergekit: mergekit/merge_methods/multislerp.py (spec §1.4). With the
 *   non-base models X_i, weights w_i, optional base B:
 *
 *     T_i = X_i - B (or X_i), flattened;  w = w / Σw if normalize_weights
 *     N_i = ||T_i||,  U_i = T_i / (N_i + eps)
 *     m = Σ w_i U_i;  if ||m|| < eps: two models -> w_0 T_0 + w_1 T_1 (+ B),
 *                                     otherwise an error
 *     m̂ = m / ||m||,  V_i = U_i - <U_i, m̂> m̂,  v = Σ w_i V_i,  τ = ||v|| + eps
 *     R = (m̂ cos τ + v sin τ / τ) · Σ w_i N_i  (+ B)
 *
 *   Every vector above lies in span{T_i}, so the algorithm runs on
 *   coefficients: one scan pass collects the Gram matrix G_ij = <T_i, T_j>
 *   (double, per-chunk partials folded in chunk order), end_pass carries out
 *   the steps on k-vectors with dot products x^T G y, and apply forms
 *   R = B + Σ_j β_j T_j elementwise in double. State is O(k), no tensor-size
 *   memory. (Analytically v = m - ||m|| m̂ = 0, so the result is the
 *   normalised weighted mean direction times Σ w_i N_i; the tangent step
 *   only carries rounding, which alloy computes in double.)
 *
 *   Inputs: all non-base models (at most 32). One non-base model: it is
 *   returned as is (no base added back, as mergekit). Only the base present
 *   (an optional tensor missing from all others): the base is returned
 *   (mergekit fails on an empty stack). No rectify: shapes must match.
 *   normalize_weights with Σw = 0 is rejected (mergekit divides by zero).
 */
#include "methods/method.h"
#include "methods/vecmath.h"

#include <string.h>

enum { P_WEIGHT, P_NORMALIZE, P_EPS, NPARAMS };

static const struct alloy_param_spec params[] = {
    [P_WEIGHT] = {"weight", ALLOY_PARAM_TENSOR, NAN, 1, "weight of this model"},
    [P_NORMALIZE] = {"normalize_weights", ALLOY_PARAM_GLOBAL, 1.0, 0, "divide the weights by their sum"},
    [P_EPS] = {"eps", ALLOY_PARAM_GLOBAL, 1e-8, 0, "small constant added to norms for numerical stability"},
};

struct msl_state {
    int copy;                 /* >= 0: copy this input */
    int k;
    int idx[ALLOY_VM_MAX];    /* non-base inputs */
    double beta[ALLOY_VM_MAX];/* R = B + Σ beta_j T_j */
    double g[ALLOY_VM_GRAM];  /* the scan's Gram matrix, folded window by window */
};

struct msl_acc {
    double g[ALLOY_VM_GRAM];
};

static int msl_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    int k = job->n - (job->base >= 0);
    if (k > ALLOY_VM_MAX)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': multislerp: %d models, at most %d "
                             "supported", job->config_path, job->name, k, ALLOY_VM_MAX);
    double eps = job->gp[P_EPS];
    if (!(eps >= 0) || !isfinite(eps))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': multislerp: `eps` must be a finite number "
                             ">= 0, got %g", job->config_path, job->name, eps);
    double sum = 0;
    for (int i = 0; i < job->n; i++) {
        if (i == job->base) continue;
        double w = job->tp[(size_t)i * NPARAMS + P_WEIGHT];
        if (isnan(w))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': multislerp: model %s has no `weight`",
                                 job->config_path, job->name, job->models[i]);
        if (!isfinite(w))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': multislerp: model %s: `weight` must be "
                                 "finite, got %g", job->config_path, job->name, job->models[i], w);
        sum += w;
    }
    if (k >= 2 && job->gp[P_NORMALIZE] != 0 && fabs(sum) < 1e-12)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': multislerp: the weights sum to 0, which "
                             "normalize_weights would divide by (set normalize_weights: false)",
                             job->config_path, job->name);
    return ALLOY_OK;
}

static int msl_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct msl_state *s = state;
    int rc = msl_check(job, err);
    if (rc) return rc;
    s->k = alloy_vm_others(job, s->idx);
    s->copy = s->k == 0 ? job->base : s->k == 1 ? s->idx[0] : -1;
    return ALLOY_OK;
}

static int msl_want_pass(const struct alloy_merge_job *job, void *state, int pass)
{
    const struct msl_state *s = state;
    return s->copy < 0 && pass == 0;
}

static int msl_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
                    const float *const *x, void *acc, struct alloy_err *err)
{
    const struct msl_state *s = state;
    const float *v[ALLOY_VM_MAX];
    for (int a = 0; a < s->k; a++) v[a] = x[s->idx[a]];
    alloy_vm_gram_add(v, s->k, job->base >= 0 ? x[job->base] : NULL, (size_t)(c->e1 - c->e0),
                      ((struct msl_acc *)acc)->g);
    return ALLOY_OK;
}

static int msl_fold(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first,
                    size_t count, size_t nchunks, struct alloy_err *err)
{
    struct msl_state *s = state;
    alloy_vm_fold(accs, first, count, sizeof(struct msl_acc), (size_t)(s->k * (s->k + 1) / 2), s->g);
    return ALLOY_OK;
}

static int msl_end_pass(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks,
                        struct alloy_err *err)
{
    struct msl_state *s = state;
    const int k = s->k;
    const double eps = job->gp[P_EPS];
    const double *g = s->g;
    double gu[ALLOY_VM_GRAM], w[ALLOY_VM_MAX], nrm[ALLOY_VM_MAX], d[ALLOY_VM_MAX];

    double wsum = 0;
    for (int i = 0; i < k; i++) wsum += w[i] = job->tp[(size_t)s->idx[i] * NPARAMS + P_WEIGHT];
    for (int i = 0; i < k; i++) {
        if (job->gp[P_NORMALIZE] != 0) w[i] /= wsum;
        nrm[i] = sqrt(g[alloy_vm_tri(i, i)]);
        d[i] = nrm[i] + eps;
    }
    /* Gram matrix of the unit vectors U_i = T_i / d_i */
    for (int j = 0; j < k; j++)
        for (int i = 0; i <= j; i++) gu[alloy_vm_tri(i, j)] = g[alloy_vm_tri(i, j)] / (d[i] * d[j]);

    /* m = Σ w_i U_i, in U coefficients */
    double mn = sqrt(fmax(alloy_vm_quad(gu, k, w, w), 0.0));
    if (!(mn >= eps)) {
        if (isnan(mn)) {
            for (int i = 0; i < k; i++) s->beta[i] = NAN;
            return ALLOY_OK;
        }
        if (k == 2) { /* linear fallback on the task vectors */
            s->beta[0] = w[0];
            s->beta[1] = w[1];
            return ALLOY_OK;
        }
        return alloy_err_set(err, ALLOY_ERR_CONFIG,
                             "%s: tensor '%s': multislerp: the weighted sum of the normalised task vectors is zero "
                             "(||m|| = %g < eps): opposite vectors whose weights cancel; use different weights",
                             job->config_path, job->name, mn);
    }
    double mh[ALLOY_VM_MAX], c[ALLOY_VM_MAX], v[ALLOY_VM_MAX];
    for (int i = 0; i < k; i++) mh[i] = w[i] / mn;              /* m̂ */
    for (int i = 0; i < k; i++) c[i] = alloy_vm_gx(gu, k, mh, i); /* <U_i, m̂> */
    /* v = Σ_i w_i (U_i - c_i m̂) */
    double wc = 0;
    for (int i = 0; i < k; i++) wc += w[i] * c[i];
    for (int j = 0; j < k; j++) v[j] = w[j] - wc * mh[j];
    double tau = sqrt(fmax(alloy_vm_quad(gu, k, v, v), 0.0)) + eps;
    double avg = 0;
    for (int i = 0; i < k; i++) avg += w[i] * nrm[i];
    double ct = cos(tau), st = sin(tau) / tau;
    for (int j = 0; j < k; j++) s->beta[j] = (mh[j] * ct + v[j] * st) * avg / d[j];
    return ALLOY_OK;
}

static int msl_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                     const float *const *x, float *out, struct alloy_err *err)
{
    const struct msl_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0);
    if (s->copy >= 0) {
        memcpy(out, x[s->copy], len * sizeof *out);
        return ALLOY_OK;
    }
    const float *b = job->base >= 0 ? x[job->base] : NULL;
    for (size_t e = 0; e < len; e++) {
        double be = b ? b[e] : 0.0, r = be;
        for (int j = 0; j < s->k; j++) r += s->beta[j] * ((double)x[s->idx[j]][e] - be);
        out[e] = (float)r;
    }
    return ALLOY_OK;
}

const struct alloy_method alloy_method_multislerp = {
    .name = "multislerp",
    .summary = "spherical barycentric interpolation of several models, optionally around a base model",
    .params = params,
    .nparams = NPARAMS,
    .flags = 0,
    .state_size = sizeof(struct msl_state),
    .acc_size = sizeof(struct msl_acc),
    .check = msl_check,
    .init = msl_init,
    .want_pass = msl_want_pass,
    .scan = msl_scan,
    .fold = msl_fold,
    .end_pass = msl_end_pass,
    .apply = msl_apply,
};
