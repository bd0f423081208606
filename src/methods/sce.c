/*
 * sce.c — SCE merging: Select (high-variance positions), Calculate (per-model
 * weights from the mean square of the deltas), Erase (minority signs).
 *
 *   T_i = X_i - B                                   (the n non-base models)
 *   if select_topk < 1:
 *       v = population variance of the T_i at each position (divide by n)
 *       k = int(count_nonzero(v) * select_topk)     (select_topk <= 0: k = 0)
 *       M = 1 at the k positions of largest |v|, else 0;   T_i = T_i * M
 *   sigma = +1 where sum_i T_i >= 0, else -1;   E_i = (sign(T_i) == sigma)
 *   s_i = mean(T_i^2) over the tensor;  S = sum_i s_i
 *   w_i = 1/n if |S| < 1e-6, else s_i / S
 *   R = B + sum_i w_i E_i T_i / max(sum_i w_i E_i, 1e-6)
 *
 * mergekit: mergekit/merge_methods/sce.py (spec §1.11). Global parameters
 * `select_topk` (1.0) and `int8_mask` (false; only the mask's integer type
 * in mergekit, no numerical effect — accepted and ignored). No weight,
 * lambda or normalize: configured weights are ignored. Base required; with
 * no other model the result is B. Note that a single model with
 * select_topk < 1 has zero variance everywhere, so k = 0 and R = B (as in
 * mergekit).
 *
 * DESIGN
 *   Scan passes, each over the whole tensor:
 *     [topk]  pass 0: count v != 0 and the level-0 radix histogram of |v|
 *             (that level does not depend on k), then k and the selection
 *             (select.h) are fixed; up to two more histogram passes refine
 *             the exact k-th largest |v|. Ties at the threshold: the lowest
 *             element indices are kept, split across chunks by select.h's
 *             per-chunk tie counts (one more pass for a tensor of several
 *             driver windows) — mergekit's torch.topk leaves ties
 *             unspecified.
 *     then    one pass sums T_i^2 (masked) per model, in double, folded in
 *             chunk order -> w_i.
 *   apply recomputes v and the mask element by element with the same code
 *   as the scans, so scan and apply agree bit for bit. Deltas, variance,
 *   sums and the division are double; v is rounded to float32 for the
 *   selection key. State: O(n) plus select.h's O(nchunks) tie counts.
 *   select_topk <= 0 masks everything: R = B with no pass at all.
 */
#include "methods/method.h"
#include "methods/select.h"

#include <stddef.h>

#define SCE_MAX_MODELS 64

enum { P_SELECT_TOPK, P_INT8_MASK };

static const struct alloy_param_spec params[] = {
    [P_SELECT_TOPK] = {"select_topk", ALLOY_PARAM_GLOBAL, 1.0, 0,
                       "fraction of the positions (by delta variance across models) to keep"},
    [P_INT8_MASK] = {"int8_mask", ALLOY_PARAM_GLOBAL, 0.0, 0, "accepted for compatibility; no effect"},
};

enum sce_mode {
    SCE_ALL,      /* select_topk >= 1: no selection */
    SCE_NONE,     /* select_topk <= 0, or no other model: R = B */
    SCE_TOPK,     /* 0 < select_topk < 1 */
};

struct sce_state {
    enum sce_mode mode;
    int sel_done;              /* TOPK: selection finished */
    int ss_done;               /* mean squares computed */
    int nm;                    /* non-base models */
    int idx[SCE_MAX_MODELS];   /* their input indices */
    double w[SCE_MAX_MODELS];  /* w_i, by non-base position */
    struct alloy_select sel;   /* top-k of |v| */
    /* the scans' sums, folded window by window (method.h) */
    uint64_t nonzero;                  /* pass 0: v != 0 */
    uint64_t hist0[ALLOY_SEL_BINS];    /* pass 0: level 0 of the selection, before k is known */
    double ss[SCE_MAX_MODELS];         /* mean-square pass */
};

struct sce_acc {
    uint64_t nonzero;                 /* pass 0: v != 0 */
    uint32_t hist[ALLOY_SEL_BINS];    /* selection passes */
    double ss[SCE_MAX_MODELS];        /* mean-square pass: sum of T_i^2 */
};

static int sce_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    if (isnan(job->gp[P_SELECT_TOPK]))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': sce: `select_topk` is not a number",
                             job->config_path, job->name);
    if (job->base < 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': sce: needs a base_model", job->config_path,
                             job->name);
    if (job->n > SCE_MAX_MODELS)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': sce: %d models, at most %d supported",
                             job->config_path, job->name, job->n, SCE_MAX_MODELS);
    return ALLOY_OK;
}

static int sce_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct sce_state *s = state;
    double topk = job->gp[P_SELECT_TOPK];
    s->nm = 0;
    for (int i = 0; i < job->n; i++)
        if (i != job->base) s->idx[s->nm++] = i;
    if (s->nm == 0 || topk <= 0 || job->numel == 0) s->mode = SCE_NONE;
    else if (topk >= 1) s->mode = SCE_ALL;
    else s->mode = SCE_TOPK;
    if (s->mode == SCE_TOPK)
        /* any 1 <= k <= n with want_value starts at level 0; the real k is set after pass 0 */
        alloy_sel_init(&s->sel, job->numel, 1, 1);
    else
        s->sel_done = 1;
    return ALLOY_OK;
}

/* Deltas of the non-base models at element e, in double. */
static inline void deltas_at(const struct alloy_merge_job *job, const struct sce_state *s, const float *const *x,
                             size_t e, double *t)
{
    double b = x[job->base][e];
    for (int j = 0; j < s->nm; j++) t[j] = (double)x[s->idx[j]][e] - b;
}

/* Selection key of the population variance of t[0..nm). */
static inline uint32_t variance_key(const double *t, int nm, int *nonzero)
{
    double mean = 0;
    for (int j = 0; j < nm; j++) mean += t[j];
    mean /= nm;
    double v = 0;
    for (int j = 0; j < nm; j++) v += (t[j] - mean) * (t[j] - mean);
    float vf = (float)(v / nm);
    *nonzero = vf != 0;
    return alloy_sel_key_abs(vf);
}

static int sce_want_pass(const struct alloy_merge_job *job, void *state, int pass)
{
    struct sce_state *s = state;
    if (s->mode == SCE_NONE) return 0;
    return !s->sel_done || !s->ss_done;
}

static int sce_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
                    const float *const *x, void *accp, struct alloy_err *err)
{
    const struct sce_state *s = state;
    struct sce_acc *acc = accp;
    size_t len = (size_t)(c->e1 - c->e0);
    double t[SCE_MAX_MODELS];
    if (!s->sel_done) {
        for (size_t e = 0; e < len; e++) {
            deltas_at(job, s, x, e, t);
            int nz;
            uint32_t key = variance_key(t, s->nm, &nz);
            acc->nonzero += (uint64_t)nz;
            int b = alloy_sel_bin(&s->sel, key);
            if (b >= 0) acc->hist[b]++;
        }
        return ALLOY_OK;
    }
    uint64_t ties = s->mode == SCE_TOPK ? alloy_sel_chunk_ties(&s->sel, c->index) : 0;
    for (size_t e = 0; e < len; e++) {
        deltas_at(job, s, x, e, t);
        if (s->mode == SCE_TOPK) {
            int nz;
            if (!alloy_sel_keep(&s->sel, variance_key(t, s->nm, &nz), &ties)) continue;
        }
        for (int j = 0; j < s->nm; j++) acc->ss[j] += t[j] * t[j];
    }
    return ALLOY_OK;
}

static int sce_fold(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first,
                    size_t count, size_t nchunks, struct alloy_err *err)
{
    struct sce_state *s = state;
    const struct sce_acc *a = accs;
    if (!s->sel_done && pass == 0) { /* k depends on the whole count: level 0 is summed here, reduced at the end */
        for (size_t ch = 0; ch < count; ch++) {
            s->nonzero += a[ch].nonzero;
            for (size_t b = 0; b < ALLOY_SEL_BINS; b++) s->hist0[b] += a[ch].hist[b];
        }
        return ALLOY_OK;
    }
    if (!s->sel_done)
        return alloy_sel_fold(&s->sel, accs, first, count, nchunks, sizeof(struct sce_acc),
                              offsetof(struct sce_acc, hist), err);
    for (int j = 0; j < s->nm; j++) { /* running sums in chunk order: the same bits for any window */
        if (first == 0) s->ss[j] = 0;
        for (size_t ch = 0; ch < count; ch++) s->ss[j] += a[ch].ss[j];
    }
    return ALLOY_OK;
}

static int sce_end_pass(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks,
                        struct alloy_err *err)
{
    struct sce_state *s = state;
    if (!s->sel_done) {
        int rc;
        if (pass == 0) {
            /* mergekit: k = int(select_topk * count_nonzero(v)); level 0 never splits ties, so the summed
               histogram serves */
            uint64_t k = (uint64_t)(job->gp[P_SELECT_TOPK] * (double)s->nonzero);
            alloy_sel_init(&s->sel, job->numel, k, 0);
            rc = alloy_sel_reduce_total(&s->sel, s->hist0, err);
        } else {
            rc = alloy_sel_end(&s->sel, 0, nchunks, err);
        }
        if (rc) return rc;
        if (!alloy_sel_active(&s->sel)) s->sel_done = 1;
        return ALLOY_OK;
    }
    double ms[SCE_MAX_MODELS], sum = 0;
    for (int j = 0; j < s->nm; j++) {
        ms[j] = s->ss[j] / (double)job->numel;
        sum += ms[j];
    }
    for (int j = 0; j < s->nm; j++) s->w[j] = fabs(sum) < 1e-6 ? 1.0 / s->nm : ms[j] / sum;
    s->ss_done = 1;
    return ALLOY_OK;
}

static int sce_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                     const float *const *x, float *out, struct alloy_err *err)
{
    const struct sce_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0);
    const float *b = x[job->base];
    if (s->mode == SCE_NONE) {
        memcpy(out, b, len * sizeof *out);
        return ALLOY_OK;
    }
    uint64_t ties = s->mode == SCE_TOPK ? alloy_sel_chunk_ties(&s->sel, c->index) : 0;
    double t[SCE_MAX_MODELS];
    for (size_t e = 0; e < len; e++) {
        deltas_at(job, s, x, e, t);
        if (s->mode == SCE_TOPK) {
            int nz;
            if (!alloy_sel_keep(&s->sel, variance_key(t, s->nm, &nz), &ties)) {
                out[e] = b[e]; /* every T_i masked to 0: no model passes the sign test */
                continue;
            }
        }
        double sum = 0;
        for (int j = 0; j < s->nm; j++) sum += t[j];
        double sigma = sum >= 0 ? 1 : -1;
        double num = 0, den = 0;
        for (int j = 0; j < s->nm; j++) {
            double sg = (t[j] > 0) - (t[j] < 0);
            if (sg != sigma) continue;
            num += s->w[j] * t[j];
            den += s->w[j];
        }
        out[e] = (float)((double)b[e] + num / (den > 1e-6 ? den : 1e-6));
    }
    return ALLOY_OK;
}

static void sce_fini(const struct alloy_merge_job *job, void *state)
{
    struct sce_state *s = state;
    alloy_sel_free(&s->sel);
}

const struct alloy_method alloy_method_sce = {
    .name = "sce",
    .summary = "select high-variance positions, weight models by delta energy, erase minority signs",
    .params = params,
    .nparams = 2,
    .flags = ALLOY_METHOD_NEEDS_BASE,
    .state_size = sizeof(struct sce_state),
    .acc_size = sizeof(struct sce_acc),
    .check = sce_check,
    .init = sce_init,
    .want_pass = sce_want_pass,
    .scan = sce_scan,
    .fold = sce_fold,
    .end_pass = sce_end_pass,
    .apply = sce_apply,
    .fini = sce_fini,
};
