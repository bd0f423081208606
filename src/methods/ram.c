/*
 * ram.c — Reinforced Agent Merging (`ram`) and its tensor-local variant
 * (`ramplus_tl`).
 *
 *   T_i = X_i - B,   A_i = |T_i| > epsilon            (active; per position)
 *   c   = sum_i A_i                                  (active count)
 *   ram:         R = B + sum_i A_i T_i * (c == 1 ? 1 : 1/c)
 *   ramplus_tl:  sh_i = #{A_i and c > 1},  un_i = #{A_i and c == 1}   (whole tensor)
 *                rho_i = sh_i / max(un_i, epsilon),  lambda_i = 1 + r * clamp(rho_i, 0, alpha)
 *                R = B + sum_i A_i T_i * (c == 1 ? lambda_i : 1/c)
 *
 * mergekit: mergekit/merge_methods/ram.py (spec §1.12). Global parameters
 * only: `epsilon` (1e-5) for ram; `r` (0.1), `alpha` (0.2), `epsilon` (1e-5)
 * for ramplus_tl. A base model is required; the base is excluded from the
 * T_i; with no other model the result is B. Positions no model changes by
 * more than epsilon keep B, positions one model changes take its full
 * delta (times lambda_i for RAM+), shared positions take the mean of the
 * active deltas. ramplus_tl returns float32 for half inputs in mergekit
 * (lambda is float32), hence ALLOY_METHOD_F32_OUTPUT; ram keeps the dtype.
 *
 * DESIGN
 *   ram is elementwise. ramplus_tl needs the per-model counts sh_i/un_i
 *   over the whole tensor: one scan pass counts them per chunk (2n
 *   integers), fold sums them window by window and end_pass fixes lambda_i. State
 *   is O(n). Deltas and the per-position sum are computed in double and
 *   rounded once; the same helper decides activity in scan and apply, so the
 *   counts match the positions apply treats as unique. A lambda_i whose
 *   model has no unique position (un_i = 0) is never used, so epsilon <= 0
 *   cannot turn 0/0 into NaN output as it would in mergekit.
 */
#include "methods/method.h"

#include <string.h>

#define RAM_MAX_MODELS 64

enum { P_EPSILON };                     /* ram */
enum { PT_R, PT_ALPHA, PT_EPSILON };    /* ramplus_tl */

static const struct alloy_param_spec ram_params[] = {
    [P_EPSILON] = {"epsilon", ALLOY_PARAM_GLOBAL, 1e-5, 0, "a delta counts as active when |delta| > epsilon"},
};

static const struct alloy_param_spec ramplus_params[] = {
    [PT_R] = {"r", ALLOY_PARAM_GLOBAL, 0.1, 0, "strength of the unique-delta boost"},
    [PT_ALPHA] = {"alpha", ALLOY_PARAM_GLOBAL, 0.2, 0, "cap on the shared/unique ratio used by the boost"},
    [PT_EPSILON] = {"epsilon", ALLOY_PARAM_GLOBAL, 1e-5, 0, "a delta counts as active when |delta| > epsilon"},
};

struct ram_state {
    double eps;
    double lambda[RAM_MAX_MODELS]; /* per input index; 1 for ram */
    uint64_t sh[RAM_MAX_MODELS], un[RAM_MAX_MODELS]; /* ram_plus: the scan's counts, summed */
};

struct ram_acc {
    uint64_t sh[RAM_MAX_MODELS];
    uint64_t un[RAM_MAX_MODELS];
};

static int check_common(const struct alloy_merge_job *job, const char *method, const double *globals, int nglobals,
                        const struct alloy_param_spec *spec, struct alloy_err *err)
{
    for (int k = 0; k < nglobals; k++)
        if (isnan(globals[k]))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s: parameter `%s` is not a number",
                                 job->config_path, job->name, method, spec[k].name);
    if (job->base < 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s: needs a base_model", job->config_path,
                             job->name, method);
    if (job->n > RAM_MAX_MODELS)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': %s: %d models, at most %d supported",
                             job->config_path, job->name, method, job->n, RAM_MAX_MODELS);
    return ALLOY_OK;
}

static int ram_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    return check_common(job, "ram", job->gp, 1, ram_params, err);
}

static int ramplus_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    return check_common(job, "ramplus_tl", job->gp, 3, ramplus_params, err);
}

static int ram_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct ram_state *s = state;
    s->eps = job->gp[P_EPSILON];
    for (int i = 0; i < job->n; i++) s->lambda[i] = 1;
    return ALLOY_OK;
}

static int ramplus_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct ram_state *s = state;
    s->eps = job->gp[PT_EPSILON];
    for (int i = 0; i < job->n; i++) s->lambda[i] = 1;
    return ALLOY_OK;
}

/* Task vector of input i at element e (double), and whether it is active.
 * The one place that decides activity, shared by scan and apply. */
static inline double delta_at(const struct alloy_merge_job *job, const float *const *x, int i, size_t e)
{
    return (double)x[i][e] - (double)x[job->base][e];
}

static inline int active(double d, double eps) { return fabs(d) > eps; }

static int ramplus_want_pass(const struct alloy_merge_job *job, void *state, int pass)
{
    return pass == 0 && job->n > 1;
}

static int ramplus_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
                        const float *const *x, void *accp, struct alloy_err *err)
{
    const struct ram_state *s = state;
    struct ram_acc *acc = accp;
    size_t len = (size_t)(c->e1 - c->e0);
    for (size_t e = 0; e < len; e++) {
        uint64_t act = 0; /* bit i: input i active here */
        int cnt = 0;
        for (int i = 0; i < job->n; i++)
            if (i != job->base && active(delta_at(job, x, i, e), s->eps)) {
                act |= (uint64_t)1 << i;
                cnt++;
            }
        if (cnt == 0) continue;
        for (int i = 0; i < job->n; i++) {
            if (!(act >> i & 1)) continue;
            if (cnt == 1) acc->un[i]++;
            else acc->sh[i]++;
        }
    }
    return ALLOY_OK;
}

static int ramplus_fold(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first,
                        size_t count, size_t nchunks, struct alloy_err *err)
{
    struct ram_state *s = state;
    const struct ram_acc *a = accs;
    for (int i = 0; i < job->n; i++)
        for (size_t ch = 0; ch < count; ch++) {
            s->sh[i] += a[ch].sh[i];
            s->un[i] += a[ch].un[i];
        }
    return ALLOY_OK;
}

static int ramplus_end_pass(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks,
                            struct alloy_err *err)
{
    struct ram_state *s = state;
    const double r = job->gp[PT_R], alpha = job->gp[PT_ALPHA];
    for (int i = 0; i < job->n; i++) {
        uint64_t sh = s->sh[i], un = s->un[i];
        if (i == job->base || un == 0) {
            s->lambda[i] = 1; /* never multiplies anything */
            continue;
        }
        double rho = (double)sh / fmax((double)un, s->eps);
        /* torch.clamp(min=0, max=alpha): the max bound wins when alpha < 0 */
        double cl = fmin(fmax(rho, 0.0), alpha);
        s->lambda[i] = (double)(float)(1.0 + r * cl); /* lambda is a float32 tensor in mergekit */
    }
    return ALLOY_OK;
}

static int ram_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                     const float *const *x, float *out, struct alloy_err *err)
{
    const struct ram_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0);
    const float *b = x[job->base];
    if (job->n == 1) {
        memcpy(out, b, len * sizeof *out);
        return ALLOY_OK;
    }
    for (size_t e = 0; e < len; e++) {
        double sum = 0;
        int cnt = 0, last = -1;
        for (int i = 0; i < job->n; i++) {
            if (i == job->base) continue;
            double d = delta_at(job, x, i, e);
            if (!active(d, s->eps)) continue;
            sum += d;
            cnt++;
            last = i;
        }
        double delta = 0;
        if (cnt == 1) delta = sum * s->lambda[last];
        else if (cnt > 1) delta = sum / cnt;
        out[e] = (float)((double)b[e] + delta);
    }
    return ALLOY_OK;
}

const struct alloy_method alloy_method_ram = {
    .name = "ram",
    .summary = "Reinforced Agent Merging: unique deltas kept whole, shared deltas averaged",
    .params = ram_params,
    .nparams = 1,
    .flags = ALLOY_METHOD_NEEDS_BASE,
    .state_size = sizeof(struct ram_state),
    .check = ram_check,
    .init = ram_init,
    .apply = ram_apply,
};

const struct alloy_method alloy_method_ramplus_tl = {
    .name = "ramplus_tl",
    .summary = "RAM+ (tensor-local): RAM with unique deltas boosted by the model's shared/unique ratio",
    .params = ramplus_params,
    .nparams = 3,
    .flags = ALLOY_METHOD_NEEDS_BASE | ALLOY_METHOD_F32_OUTPUT,
    .state_size = sizeof(struct ram_state),
    .acc_size = sizeof(struct ram_acc),
    .check = ramplus_check,
    .init = ramplus_init,
    .want_pass = ramplus_want_pass,
    .scan = ramplus_scan,
    .fold = ramplus_fold,
    .end_pass = ramplus_end_pass,
    .apply = ram_apply,
};
