/*
 * arcee_fusion.c — keep the base except where the other model's change is
 * unusually important.
 *
 *   per row r (last dimension; a 1-D tensor is one row):
 *       p = softmax(X_r) + 1e-8,  q = softmax(B_r) + 1e-8
 *       kl_r = sum_j p_j log(p_j / q_j)
 *   I = |X - B| * kl_r                      (importance, per element)
 *   Q1, med, Q3 = sorted(I)[floor(q (N - 1))] for q = 0.25, 0.5, 0.75
 *   thr = med + 1.5 (Q3 - Q1)
 *   R = X where I >= thr, else B
 *
 * mergekit: mergekit/merge_methods/arcee_fusion.py (spec §1.10). No
 * parameters. A base model and exactly one other model; with only the base
 * the result is the base. Embeddings of different sizes use the common
 * top-left block (RECTIFY). mergekit returns float32 for half inputs (the
 * mask is float32), hence ALLOY_METHOD_F32_OUTPUT.
 *
 * Exact where mergekit samples: for tensors above 10^6 elements mergekit
 * estimates the quantiles from a random sample of 10^6 importances (global
 * torch RNG); alloy computes the exact order statistics over the whole
 * tensor, so the result is deterministic and needs no random seed. For
 * tensors up to 10^6 elements both are exact.
 *
 * DESIGN
 *   Chunks hold whole rows (ALLOY_METHOD_WHOLE_ROWS), so every scan and
 *   apply recomputes kl_r from the row it holds (max, sum of exponentials,
 *   then the KL sum; float32 exp/log, double sums) — no per-row array is
 *   kept, at the price of recomputing the exponentials in each of the (at
 *   most four) passes. I is rounded to float32 once, by the same code in
 *   scan and apply, so both see the same values. The three order statistics are three exact radix selections
 *   (select.h, want_value) run side by side over the same passes (at most
 *   three): the element at ascending index i is the (N - i)-th largest.
 *   thr is computed in float32 like torch does for float32 inputs. Where
 *   the mask is 1 the result is X itself (mergekit's B + (X - B) * 1 may
 *   differ from X by rounding). State: O(1) plus select.h's tie counts.
 */
#include "methods/method.h"
#include "methods/select.h"

#include <stddef.h>

enum { NQ = 3 }; /* Q1, median, Q3 */

struct fusion_state {
    int other;                    /* input index of the non-base model, -1: base only */
    struct alloy_select sel[NQ];
    float thr;
};

struct fusion_acc {
    uint32_t hist[NQ][ALLOY_SEL_BINS];
};

static int fusion_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    if (job->base < 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': arcee_fusion: needs a base_model",
                             job->config_path, job->name);
    if (job->n > 2)
        return alloy_err_set(err, ALLOY_ERR_CONFIG,
                             "%s: tensor '%s': arcee_fusion: expects the base model and exactly one other model, got "
                             "%d models",
                             job->config_path, job->name, job->n);
    return ALLOY_OK;
}

static int fusion_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct fusion_state *s = state;
    s->other = job->n == 2 && job->numel ? 1 - job->base : -1;
    if (s->other < 0) return ALLOY_OK;
    uint64_t last = job->numel - 1;
    /* ascending index floor(q * (N - 1)) for q = 1/4, 1/2, 3/4, exactly */
    uint64_t idx[NQ] = {last / 4, last / 2, last / 4 * 3 + (last % 4) * 3 / 4};
    for (int q = 0; q < NQ; q++) alloy_sel_init(&s->sel[q], job->numel, job->numel - idx[q], 1);
    return ALLOY_OK;
}

/* kl_r of one row: a = base, b = other, `len` elements. Exponentials and
 * logarithms in float32 (as mergekit computes them for float32 inputs),
 * sums in double. */
static double row_kl(const float *a, const float *b, size_t len)
{
    float ma = a[0], mb = b[0];
    for (size_t j = 1; j < len; j++) {
        if (a[j] > ma) ma = a[j];
        if (b[j] > mb) mb = b[j];
    }
    double za = 0, zb = 0;
    for (size_t j = 0; j < len; j++) {
        za += expf(a[j] - ma);
        zb += expf(b[j] - mb);
    }
    const float ra = (float)(1 / za), rb = (float)(1 / zb);
    double kl = 0;
    for (size_t j = 0; j < len; j++) {
        float p = expf(b[j] - mb) * rb + 1e-8f;
        float q = expf(a[j] - ma) * ra + 1e-8f;
        kl += (double)p * logf(p / q);
    }
    return kl;
}

static inline float importance(float a, float b, double kl) { return (float)(fabs((double)b - (double)a) * kl); }

static int fusion_want_pass(const struct alloy_merge_job *job, void *state, int pass)
{
    const struct fusion_state *s = state;
    if (s->other < 0) return 0;
    for (int q = 0; q < NQ; q++)
        if (alloy_sel_active(&s->sel[q])) return 1;
    return 0;
}

static int fusion_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
                       const float *const *x, void *accp, struct alloy_err *err)
{
    const struct fusion_state *s = state;
    struct fusion_acc *acc = accp;
    const float *a = x[job->base], *b = x[s->other];
    size_t len = (size_t)(c->e1 - c->e0), cols = (size_t)job->cols;
    for (size_t r0 = 0; r0 < len; r0 += cols) {
        double kl = row_kl(a + r0, b + r0, cols);
        for (size_t j = r0; j < r0 + cols; j++) {
            uint32_t key = alloy_sel_key(importance(a[j], b[j], kl));
            for (int q = 0; q < NQ; q++) {
                int bin = alloy_sel_bin(&s->sel[q], key);
                if (bin >= 0) acc->hist[q][bin]++;
            }
        }
    }
    return ALLOY_OK;
}

static int fusion_fold(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first,
                       size_t count, size_t nchunks, struct alloy_err *err)
{
    struct fusion_state *s = state;
    for (int q = 0; q < NQ; q++) {
        int rc = alloy_sel_fold(&s->sel[q], accs, first, count, nchunks, sizeof(struct fusion_acc),
                                offsetof(struct fusion_acc, hist) + (size_t)q * sizeof(uint32_t) * ALLOY_SEL_BINS, err);
        if (rc) return rc;
    }
    return ALLOY_OK;
}

static int fusion_end_pass(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks,
                           struct alloy_err *err)
{
    struct fusion_state *s = state;
    int done = 1;
    for (int q = 0; q < NQ; q++) {
        int rc = alloy_sel_end(&s->sel[q], 0, nchunks, err);
        if (rc) return rc;
        if (alloy_sel_active(&s->sel[q])) done = 0;
    }
    if (done) {
        float q1 = alloy_sel_unkey(alloy_sel_kth(&s->sel[0]));
        float med = alloy_sel_unkey(alloy_sel_kth(&s->sel[1]));
        float q3 = alloy_sel_unkey(alloy_sel_kth(&s->sel[2]));
        float iqr = q3 - q1;
        float spread = 1.5f * iqr;
        s->thr = med + spread;
    }
    return ALLOY_OK;
}

static int fusion_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                        const float *const *x, float *out, struct alloy_err *err)
{
    const struct fusion_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0), cols = (size_t)job->cols;
    const float *a = x[job->base];
    if (s->other < 0) {
        memcpy(out, a, len * sizeof *out);
        return ALLOY_OK;
    }
    const float *b = x[s->other];
    for (size_t r0 = 0; r0 < len; r0 += cols) {
        double kl = row_kl(a + r0, b + r0, cols);
        for (size_t j = r0; j < r0 + cols; j++) out[j] = importance(a[j], b[j], kl) >= s->thr ? b[j] : a[j];
    }
    return ALLOY_OK;
}

static void fusion_fini(const struct alloy_merge_job *job, void *state)
{
    struct fusion_state *s = state;
    for (int q = 0; q < NQ; q++) alloy_sel_free(&s->sel[q]);
}

const struct alloy_method alloy_method_arcee_fusion = {
    .name = "arcee_fusion",
    .summary = "keep the base except where the model's change has outlying KL-weighted importance",
    .params = NULL,
    .nparams = 0,
    .flags = ALLOY_METHOD_NEEDS_BASE | ALLOY_METHOD_WHOLE_ROWS | ALLOY_METHOD_F32_OUTPUT | ALLOY_METHOD_RECTIFY,
    .state_size = sizeof(struct fusion_state),
    .acc_size = sizeof(struct fusion_acc),
    .check = fusion_check,
    .init = fusion_init,
    .want_pass = fusion_want_pass,
    .scan = fusion_scan,
    .fold = fusion_fold,
    .end_pass = fusion_end_pass,
    .apply = fusion_apply,
    .fini = fusion_fini,
};
