/*
 * nearswap.c — take the other model's value where it is close to the base.
 *
 *   w = clamp( t / max(|B - X|, 1e-6), 0, 1 )          elementwise
 *   R = w * X + (1 - w) * B
 *
 * mergekit: mergekit/merge_methods/nearswap.py (spec §1.9; idea from
 * alchemonaut/QuartetAnemoi-70B-t0.0001). Global parameter `t` (required,
 * > 0: mergekit raises "Threshold cannot be <= zero"). A base model and
 * exactly one other model; with only the base present the result is the
 * base. Positions where the models differ by at most t take X, positions
 * that differ a lot stay near B (w ~ t/|B - X|).
 *
 * DESIGN
 *   Purely elementwise: no scan passes, no state. w and the blend are
 *   computed in double from the float32 inputs and rounded once (mergekit
 *   rounds every op to the working dtype). Like the other decorator methods
 *   nearswap does not rectify embeddings of different sizes (the planner
 *   reports the shape mismatch).
 */
#include "methods/method.h"

#include <string.h>

enum { P_T };

static const struct alloy_param_spec params[] = {
    [P_T] = {"t", ALLOY_PARAM_GLOBAL, NAN, 1, "similarity threshold: |base - model| <= t takes the model's value"},
};

static int nearswap_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    double t = job->gp[P_T];
    if (isnan(t))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': nearswap: parameter `t` is required",
                             job->config_path, job->name);
    if (!(t > 0))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': nearswap: `t` must be > 0, got %g",
                             job->config_path, job->name, t);
    if (job->base < 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': nearswap: needs a base_model",
                             job->config_path, job->name);
    if (job->n > 2)
        return alloy_err_set(err, ALLOY_ERR_CONFIG,
                             "%s: tensor '%s': nearswap: expects the base model and exactly one other model, got %d "
                             "models",
                             job->config_path, job->name, job->n);
    return ALLOY_OK;
}

static int nearswap_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                          const float *const *x, float *out, struct alloy_err *err)
{
    size_t len = (size_t)(c->e1 - c->e0);
    const float *a = x[job->base];
    if (job->n == 1) {
        memcpy(out, a, len * sizeof *out);
        return ALLOY_OK;
    }
    const float *b = x[1 - job->base];
    const double t = job->gp[P_T];
    for (size_t e = 0; e < len; e++) {
        double av = a[e], bv = b[e];
        double d = fabs(av - bv);
        double w = t / (d > 1e-6 ? d : 1e-6);
        if (w > 1) w = 1;
        out[e] = (float)(w * bv + (1 - w) * av);
    }
    return ALLOY_OK;
}

const struct alloy_method alloy_method_nearswap = {
    .name = "nearswap",
    .summary = "take the other model's values where they are within t of the base",
    .params = params,
    .nparams = 1,
    .flags = ALLOY_METHOD_NEEDS_BASE,
    .check = nearswap_check,
    .apply = nearswap_apply,
};
