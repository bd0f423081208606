/*
 * linear.c — weighted average of the inputs ("model soup").
 *
 *   R = sum_i w_i X_i            and, if normalize (default true), R /= sum_i w_i
 *
 * mergekit: mergekit/merge_methods/linear.py (spec §1.1). Every input needs a
 * weight — including a base_model that is not listed under models:, which is
 * an error there and here. Negative weights are allowed; a zero weight sum
 * with normalize gives Inf/NaN as in mergekit, so check() rejects it with a
 * clear message instead. Embeddings of different vocab sizes use the common
 * top-left block (RECTIFY).
 */
#include "methods/method.h"

enum { P_WEIGHT, P_NORMALIZE };

static const struct alloy_param_spec params[] = {
    [P_WEIGHT] = {"weight", ALLOY_PARAM_TENSOR, NAN, 1, "weight of this model"},
    [P_NORMALIZE] = {"normalize", ALLOY_PARAM_GLOBAL, 1.0, 0, "divide by the sum of the weights"},
};

struct linear_state {
    float w[64];
    int n;
};

static int linear_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    double sum = 0;
    for (int i = 0; i < job->n; i++) {
        double w = job->tp[(size_t)i * 2 + P_WEIGHT];
        if (isnan(w))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': model %s has no `weight` (linear needs one "
                                 "for every model, the base model included)", job->config_path, job->name, job->models[i]);
        sum += w;
    }
    if (job->n > 64)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: linear: %d models, at most 64 supported", job->config_path, job->n);
    if (job->gp[P_NORMALIZE] != 0 && fabs(sum) < 1e-12)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': the weights sum to 0, which normalize would "
                             "divide by (set normalize: false)", job->config_path, job->name);
    return ALLOY_OK;
}

static int linear_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct linear_state *s = state;
    double sum = 0;
    s->n = job->n;
    for (int i = 0; i < job->n; i++) sum += job->tp[(size_t)i * 2 + P_WEIGHT];
    for (int i = 0; i < job->n; i++) {
        double w = job->tp[(size_t)i * 2 + P_WEIGHT];
        s->w[i] = (float)(job->gp[P_NORMALIZE] != 0 ? w / sum : w);
    }
    return ALLOY_OK;
}

static int linear_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                        const float *const *x, float *out, struct alloy_err *err)
{
    const struct linear_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0);
    const float w0 = s->w[0];
    const float *x0 = x[0];
    for (size_t e = 0; e < len; e++) out[e] = w0 * x0[e];
    for (int i = 1; i < s->n; i++) {
        const float wi = s->w[i];
        const float *xi = x[i];
        for (size_t e = 0; e < len; e++) out[e] += wi * xi[e];
    }
    return ALLOY_OK;
}

const struct alloy_method alloy_method_linear = {
    .name = "linear",
    .summary = "weighted average of the models (model soup)",
    .params = params,
    .nparams = 2,
    .flags = ALLOY_METHOD_RECTIFY,
    .state_size = sizeof(struct linear_state),
    .check = linear_check,
    .init = linear_init,
    .apply = linear_apply,
};
