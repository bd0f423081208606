/*
 * slerp.c — spherical linear interpolation between the base and one model.
 *
 * DESIGN
 *   One angle for the whole tensor, whatever its rank (mergekit
 *   mergekit/merge_methods/slerp.py, spec §1.2). With v0 = base, v1 = other:
 *
 *     n_i = ||v_i||,  u_i = v_i / n_i if n_i > 1e-8 else v_i,  d = <u0, u1>
 *     |d| > 0.9995:  R = (1-t) v0 + t v1                       (plain lerp)
 *     otherwise:     θ = acos d,  R = sin((1-t)θ)/sin θ · v0 + sin(tθ)/sin θ · v1
 *
 *   The coefficients multiply the original (un-normalised) tensors. A zero
 *   tensor keeps its zero norm in the dot product, so d = 0, θ = π/2 and
 *   R = cos(tπ/2) v0 + sin(tπ/2) v1 — mergekit's behaviour, kept on purpose.
 *
 *   One scan pass collects <v0,v0>, <v1,v1>, <v0,v1> (double, per-chunk
 *   partials folded in chunk order); end_pass turns them into the two
 *   coefficients; apply is an elementwise axpy in double rounded once to
 *   float32. State is O(1). A single input (an optional weight missing in
 *   the other model) is copied unchanged.
 *
 *   mergekit computes d in float32; alloy in double. t is not range-checked
 *   (values outside [0, 1] extrapolate, as in mergekit).
 */
#include "methods/method.h"
#include "methods/vecmath.h"

#include <string.h>

enum { P_T, NPARAMS };

static const struct alloy_param_spec params[] = {
    [P_T] = {"t", ALLOY_PARAM_GLOBAL, NAN, 1, "interpolation factor: 0 = base model, 1 = the other model"},
};

struct slerp_state {
    int copy;           /* one input: copy it */
    int i0, i1;         /* input index of the base (v0) and of the other model (v1) */
    double c0, c1;      /* R = c0 v0 + c1 v1 */
    double g[3];        /* the scan's Gram matrix, folded window by window */
};

struct slerp_acc {
    double g[3];        /* packed Gram: <v0,v0>, <v0,v1>, <v1,v1> */
};

static int slerp_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    if (isnan(job->gp[P_T]))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': slerp: parameter `t` is required",
                             job->config_path, job->name);
    if (!isfinite(job->gp[P_T]))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': slerp: `t` must be finite, got %g",
                             job->config_path, job->name, job->gp[P_T]);
    if (job->n == 1) return ALLOY_OK;
    if (job->n != 2)
        return alloy_err_set(err, ALLOY_ERR_CONFIG,
                             "%s: tensor '%s': slerp: expects exactly two models (the base model and one other), "
                             "got %d", job->config_path, job->name, job->n);
    if (job->base < 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG,
                             "%s: tensor '%s': slerp: base_model is required and must be one of the two models",
                             job->config_path, job->name);
    return ALLOY_OK;
}

static int slerp_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct slerp_state *s = state;
    int rc = slerp_check(job, err);
    if (rc) return rc;
    s->copy = job->n == 1;
    if (!s->copy) {
        s->i0 = job->base;
        s->i1 = 1 - job->base;
    }
    return ALLOY_OK;
}

static int slerp_want_pass(const struct alloy_merge_job *job, void *state, int pass)
{
    const struct slerp_state *s = state;
    return !s->copy && pass == 0;
}

static int slerp_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
                      const float *const *x, void *acc, struct alloy_err *err)
{
    const struct slerp_state *s = state;
    const float *v[2] = {x[s->i0], x[s->i1]};
    alloy_vm_gram_add(v, 2, NULL, (size_t)(c->e1 - c->e0), ((struct slerp_acc *)acc)->g);
    return ALLOY_OK;
}

static int slerp_fold(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first,
                      size_t count, size_t nchunks, struct alloy_err *err)
{
    struct slerp_state *s = state;
    alloy_vm_fold(accs, first, count, sizeof(struct slerp_acc), 3, s->g);
    return ALLOY_OK;
}

static int slerp_end_pass(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks,
                          struct alloy_err *err)
{
    struct slerp_state *s = state;
    const double *g = s->g;
    double t = job->gp[P_T];
    double n0 = sqrt(g[0]), n1 = sqrt(g[2]);
    double d = g[1] / (n0 > 1e-8 ? n0 : 1.0) / (n1 > 1e-8 ? n1 : 1.0);
    if (fabs(d) > 0.9995) {
        s->c0 = 1.0 - t;
        s->c1 = t;
    } else {
        double theta = acos(d), st = sin(theta);
        s->c0 = sin((1.0 - t) * theta) / st;
        s->c1 = sin(t * theta) / st;
    }
    return ALLOY_OK;
}

static int slerp_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                       const float *const *x, float *out, struct alloy_err *err)
{
    const struct slerp_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0);
    if (s->copy) {
        memcpy(out, x[0], len * sizeof *out);
        return ALLOY_OK;
    }
    const float *v0 = x[s->i0], *v1 = x[s->i1];
    const double c0 = s->c0, c1 = s->c1;
    for (size_t e = 0; e < len; e++) out[e] = (float)(c0 * v0[e] + c1 * v1[e]);
    return ALLOY_OK;
}

const struct alloy_method alloy_method_slerp = {
    .name = "slerp",
    .summary = "spherical interpolation between the base model and one other model (one angle per tensor)",
    .params = params,
    .nparams = NPARAMS,
    .flags = ALLOY_METHOD_NEEDS_BASE | ALLOY_METHOD_RECTIFY,
    .state_size = sizeof(struct slerp_state),
    .acc_size = sizeof(struct slerp_acc),
    .check = slerp_check,
    .init = slerp_init,
    .want_pass = slerp_want_pass,
    .scan = slerp_scan,
    .fold = slerp_fold,
    .end_pass = slerp_end_pass,
    .apply = slerp_apply,
};
