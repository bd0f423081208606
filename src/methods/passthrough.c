/*
 * passthrough.c — copy one input unchanged, optionally scaled.
 *
 *   R = X            or, with the tensor parameter `scale`, R = scale * X
 *
 * mergekit: mergekit/merge_methods/passthrough.py (spec §1.8). Exactly one
 * input per output tensor, so `slices:` frankenmerges use it with one source
 * per slice. The common conditional form
 *   scale: [{filter: o_proj, value: 0}, {value: 1}]
 * zeroes the matching tensors.
 */
#include "methods/method.h"

#include <string.h>

enum { P_SCALE };

static const struct alloy_param_spec params[] = {
    [P_SCALE] = {"scale", ALLOY_PARAM_TENSOR, NAN, 0, "multiply the tensor by this factor"},
};

static int passthrough_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    if (job->n != 1)
        return alloy_err_set(err, ALLOY_ERR_CONFIG,
                             "%s: tensor '%s': passthrough takes exactly one model per tensor, got %d (use one source "
                             "per slice, and no base_model unless it is that source)",
                             job->config_path, job->name, job->n);
    return ALLOY_OK;
}

static int passthrough_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                             const float *const *x, float *out, struct alloy_err *err)
{
    double scale = job->tp[P_SCALE];
    size_t len = (size_t)(c->e1 - c->e0);
    if (isnan(scale)) {
        memcpy(out, x[0], len * sizeof *out);
        return ALLOY_OK;
    }
    const float s = (float)scale;
    for (size_t e = 0; e < len; e++) out[e] = s * x[0][e];
    return ALLOY_OK;
}

const struct alloy_method alloy_method_passthrough = {
    .name = "passthrough",
    .summary = "copy one model's tensor (frankenmerge slices), optionally scaled",
    .params = params,
    .nparams = 1,
    .check = passthrough_check,
    .apply = passthrough_apply,
};
