/*
 * nuslerp.c — slerp between two models with weights, per tensor, row or
 * column, optionally around a third (base) model.
 *
 * DESIGN
 *   mergekit: mergekit/merge_methods/nuslerp.py (spec §1.3). Two non-base
 *   models a, b with weights w_a, w_b:
 *
 *     t = w_b / (w_a + w_b)          (t = 0.5 when |w_a + w_b| < 1e-6)
 *     with a base model B (a third input):  R = B + nuslerp(t, X_a - B, X_b - B)
 *     without:                              R = nuslerp(t, X_a, X_b)
 *
 *   nuslerp(t, a, b), for every vector v of the chosen layout:
 *     â = a / max(||a||, 1e-7), b̂ likewise, c = clamp(<â, b̂>, -1, 1), θ = acos c
 *     R = (sin((1-t)θ) a + sin(tθ) b) / sin θ,   or (1-t) a + t b when colinear
 *
 *   Layouts (global parameters nuslerp_flatten, default true, and
 *   nuslerp_row_wise, default false):
 *     FLAT  flatten: the whole tensor is one vector. One scan pass collects
 *           <a,a>, <a,b>, <b,b>; state O(1).
 *     ROWS  !flatten, !row_wise: vectors along the last dimension (each row).
 *           Chunks hold whole rows (ALLOY_METHOD_WHOLE_ROWS), so apply()
 *           computes each row's dot products itself; no pass, no state.
 *     COLS  !flatten, row_wise: vectors along dimension 0 (mergekit transposes
 *           dim 0 and the last one): for a [R, C] weight each column. Vector j
 *           holds the elements e with e mod inner == j, inner = numel/shape[0].
 *           Pass 0 finds max |a|, |b| over the tensor; pass 1 accumulates
 *           per-vector sums in state arrays of O(inner) (inner = cols for
 *           2-D tensors; more than 2^20 vectors is refused as unsupported).
 *   1-D tensors and scalars are one vector in every layout (FLAT).
 *
 *   COLS accumulates across chunks into shared arrays, which the scan
 *   contract (each chunk writes only its fixed-size accumulator) cannot
 *   express with O(cols) partials per chunk without memory proportional to
 *   the tensor. To stay deterministic anyway the sums are exact: every
 *   product (double) is converted to a 128-bit fixed-point integer with a
 *   scale derived from pass 0's maximum, so that no sum can overflow, and
 *   integers are added under a mutex. Integer addition is associative, so the
 *   result is bit-identical for any thread count and any chunk size. The
 *   resolution is max|x|^2 * 2^-(126 - log2(shape[0])), far below double
 *   rounding of any vector that is not ~2^60 times smaller than the largest.
 *
 *   Colinear test: mergekit lerps where |sin θ| < 1e-8, which happens when
 *   c rounds to exactly ±1 in its working dtype. alloy computes c in double
 *   and lerps when |c| >= 1 - 2^-25 (c rounds to ±1 in float32) or
 *   |sin θ| < 1e-8, so exactly (anti)parallel vectors lerp whatever the last
 *   bit of the double dot product; below that angle slerp and lerp differ by
 *   less than float32 precision. A zero vector normalises to 0, so c = 0,
 *   θ = π/2 and R = sin((1-t)π/2) a + sin(tπ/2) b (mergekit's behaviour).
 *
 *   A single input (optional weight missing elsewhere) is copied unchanged.
 *   Non-finite inputs give NaN: per vector in FLAT/ROWS, for the whole
 *   tensor in COLS.
 */
#include "core/internal.h"
#include "methods/method.h"
#include "methods/vecmath.h"

#include <pthread.h>

enum { P_WEIGHT, P_FLATTEN, P_ROW_WISE, NPARAMS };

static const struct alloy_param_spec params[] = {
    [P_WEIGHT] = {"weight", ALLOY_PARAM_TENSOR, NAN, 1, "relative weight of this model (t = w_b / (w_a + w_b))"},
    [P_FLATTEN] = {"nuslerp_flatten", ALLOY_PARAM_GLOBAL, 1.0, 0, "treat the whole tensor as one vector"},
    [P_ROW_WISE] = {"nuslerp_row_wise", ALLOY_PARAM_GLOBAL, 0.0, 0,
                    "without flatten: interpolate vectors along dimension 0 (columns) instead of rows"},
};

enum nu_mode { NU_COPY, NU_FLAT, NU_ROWS, NU_COLS };

#define NU_MAX_INNER ((uint64_t)1 << 20)
enum { NU_SEG = 256 };  /* vectors per fixed-point segment in COLS scans */

struct nu_shared {      /* COLS only; written by scans under mu */
    pthread_mutex_t mu;
    __int128 *sum;      /* [3 * inner]: <a,a>, <a,b>, <b,b> per vector, fixed point */
    double *coef;       /* [2 * inner]: ca, cb per vector */
};

struct nu_state {
    enum nu_mode mode;
    int ia, ib, ibase;  /* inputs a, b, base (-1: none) */
    double t;
    double ca, cb;      /* FLAT coefficients */
    uint64_t inner;     /* COLS: vectors */
    int scale;          /* COLS: fixed point = value * 2^scale */
    int nonfinite;      /* COLS: some input was NaN/Inf */
    double g[3];        /* FLAT: the Gram matrix; COLS pass 0: g[0] max |x| (folded window by window) */
    struct nu_shared *sh;
};

struct nu_acc {
    double v[3];        /* FLAT: packed Gram; COLS pass 0: max |x|, nonfinite flag */
};

static int nu_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    if (job->n == 1) return ALLOY_OK;
    if (job->base >= 0 && job->n != 3)
        return alloy_err_set(err, ALLOY_ERR_CONFIG,
                             "%s: tensor '%s': nuslerp: the base model must be a third model, distinct from the two "
                             "models merged (got %d inputs including the base)", job->config_path, job->name, job->n);
    if (job->base < 0 && job->n != 2)
        return alloy_err_set(err, ALLOY_ERR_CONFIG,
                             "%s: tensor '%s': nuslerp: expects exactly two models (plus an optional base model), "
                             "got %d", job->config_path, job->name, job->n);
    for (int i = 0; i < job->n; i++) {
        if (i == job->base) continue;
        double w = job->tp[(size_t)i * NPARAMS + P_WEIGHT];
        if (isnan(w))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': nuslerp: model %s has no `weight`",
                                 job->config_path, job->name, job->models[i]);
        if (!isfinite(w))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': nuslerp: model %s: `weight` must be "
                                 "finite, got %g", job->config_path, job->name, job->models[i], w);
    }
    return ALLOY_OK;
}

/* Interpolation coefficients of one vector pair from its dot products. */
static void nu_coef(double t, double aa, double ab, double bb, double *ca, double *cb)
{
    double na = fmax(sqrt(aa), 1e-7), nb = fmax(sqrt(bb), 1e-7);
    double c = ab / (na * nb);
    if (isnan(c)) {
        *ca = *cb = NAN;
        return;
    }
    if (c > 1) c = 1;
    if (c < -1) c = -1;
    double theta = acos(c), st = sin(theta);
    if (fabs(c) >= 1.0 - 0x1p-25 || fabs(st) < 1e-8) {
        *ca = 1.0 - t;
        *cb = t;
        return;
    }
    *ca = sin((1.0 - t) * theta) / st;
    *cb = sin(t * theta) / st;
}

static void nu_fini(const struct alloy_merge_job *job, void *state)
{
    struct nu_state *s = state;
    if (!s->sh) return;
    pthread_mutex_destroy(&s->sh->mu);
    free(s->sh->sum);
    free(s->sh->coef);
    free(s->sh);
    s->sh = NULL;
}

static int nu_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct nu_state *s = state;
    int rc = nu_check(job, err);
    if (rc) return rc;
    s->ibase = job->base;
    if (job->n == 1) {
        s->mode = NU_COPY;
        return ALLOY_OK;
    }
    int idx[3];
    alloy_vm_others(job, idx);
    s->ia = idx[0];
    s->ib = idx[1];
    double wa = job->tp[(size_t)s->ia * NPARAMS + P_WEIGHT], wb = job->tp[(size_t)s->ib * NPARAMS + P_WEIGHT];
    s->t = fabs(wa + wb) < 1e-6 ? 0.5 : wb / (wa + wb);

    int flatten = job->gp[P_FLATTEN] != 0, row_wise = job->gp[P_ROW_WISE] != 0;
    if (flatten || job->ndim <= 1 || job->numel == 0) s->mode = NU_FLAT;
    else if (!row_wise) s->mode = NU_ROWS;
    else s->mode = NU_COLS;
    if (s->mode != NU_COLS) return ALLOY_OK;

    s->inner = job->numel / (uint64_t)job->shape[0];
    if (s->inner > NU_MAX_INNER)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                             "%s: tensor '%s': nuslerp: nuslerp_row_wise on this %d-D tensor needs per-vector state "
                             "for %llu vectors (numel / shape[0]); alloy supports at most %llu", job->config_path,
                             job->name, job->ndim, (unsigned long long)s->inner, (unsigned long long)NU_MAX_INNER);
    s->sh = alloy_xcalloc(1, sizeof *s->sh);
    if (!s->sh) goto nomem;
    pthread_mutex_init(&s->sh->mu, NULL);
    s->sh->sum = alloy_xcalloc((size_t)s->inner * 3, sizeof *s->sh->sum);
    s->sh->coef = alloy_xcalloc((size_t)s->inner * 2, sizeof *s->sh->coef);
    if (!s->sh->sum || !s->sh->coef) goto nomem;
    return ALLOY_OK;
nomem:
    return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: tensor '%s': nuslerp: out of memory for %llu column statistics",
                         job->config_path, job->name, (unsigned long long)s->inner);
}

static int nu_want_pass(const struct alloy_merge_job *job, void *state, int pass)
{
    const struct nu_state *s = state;
    if (s->mode == NU_FLAT) return pass == 0;
    if (s->mode == NU_COLS) return pass <= 1;
    return 0;
}

/* v * 2^scale as a 128-bit integer, truncated toward zero. v is finite and
 * |v| * 2^scale < 2^126 (guaranteed by the choice of scale). */
static inline __int128 nu_fixed(double v, int scale)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    int be = (int)((u >> 52) & 0x7ff);
    if (be == 0) return 0; /* zero (products of floats are never subnormal doubles) */
    uint64_t mant = (u & 0xfffffffffffffull) | (1ull << 52);
    int sh = be - 1075 + scale;
    unsigned __int128 m;
    if (sh >= 0) m = (unsigned __int128)mant << sh;
    else if (sh > -64) m = mant >> -sh;
    else m = 0;
    return (u >> 63) ? -(__int128)m : (__int128)m;
}

static void nu_scan_cols(const struct nu_state *s, const struct alloy_chunk *c, const float *xa, const float *xb,
                         const float *xB)
{
    const uint64_t inner = s->inner, e0 = c->e0, e1 = c->e1;
    const uint64_t r0 = e0 / inner, r1 = (e1 - 1) / inner;
    __int128 loc[3][NU_SEG];
    for (uint64_t js = 0; js < inner; js += NU_SEG) {
        uint64_t je = js + NU_SEG < inner ? js + NU_SEG : inner;
        int any = 0;
        for (uint64_t r = r0; r <= r1; r++) {
            uint64_t a = r * inner + js > e0 ? r * inner + js : e0;
            uint64_t b = r * inner + je < e1 ? r * inner + je : e1;
            if (a >= b) continue;
            if (!any) {
                memset(loc, 0, sizeof loc);
                any = 1;
            }
            for (uint64_t e = a; e < b; e++) {
                size_t i = (size_t)(e - e0), j = (size_t)(e - r * inner - js);
                double da = xa[i], db = xb[i];
                if (xB) {
                    da -= xB[i];
                    db -= xB[i];
                }
                loc[0][j] += nu_fixed(da * da, s->scale);
                loc[1][j] += nu_fixed(da * db, s->scale);
                loc[2][j] += nu_fixed(db * db, s->scale);
            }
        }
        if (!any) continue;
        pthread_mutex_lock(&s->sh->mu);
        __int128 *sum = s->sh->sum;
        for (uint64_t j = js; j < je; j++) {
            sum[3 * j] += loc[0][j - js];
            sum[3 * j + 1] += loc[1][j - js];
            sum[3 * j + 2] += loc[2][j - js];
        }
        pthread_mutex_unlock(&s->sh->mu);
    }
}

static int nu_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
                   const float *const *x, void *accp, struct alloy_err *err)
{
    const struct nu_state *s = state;
    struct nu_acc *acc = accp;
    const float *xa = x[s->ia], *xb = x[s->ib], *xB = s->ibase >= 0 ? x[s->ibase] : NULL;
    size_t len = (size_t)(c->e1 - c->e0);
    if (s->mode == NU_FLAT) {
        const float *v[2] = {xa, xb};
        alloy_vm_gram_add(v, 2, xB, len, acc->v);
        return ALLOY_OK;
    }
    if (pass == 0) {
        double mx = 0;
        int bad = 0;
        for (size_t i = 0; i < len; i++) {
            double da = xa[i], db = xb[i];
            if (xB) {
                da -= xB[i];
                db -= xB[i];
            }
            if (!isfinite(da) || !isfinite(db)) bad = 1;
            else mx = fmax(mx, fmax(fabs(da), fabs(db)));
        }
        acc->v[0] = mx;
        acc->v[1] = bad;
        return ALLOY_OK;
    }
    if (!s->nonfinite) nu_scan_cols(s, c, xa, xb, xB);
    return ALLOY_OK;
}

static int nu_fold(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first,
                   size_t count, size_t nchunks, struct alloy_err *err)
{
    struct nu_state *s = state;
    const struct nu_acc *acc = accs;
    if (s->mode == NU_FLAT) {
        alloy_vm_fold(accs, first, count, sizeof *acc, 3, s->g);
    } else if (pass == 0) { /* a maximum: exact in any order (the state starts at 0) */
        for (size_t i = 0; i < count; i++) {
            s->g[0] = fmax(s->g[0], acc[i].v[0]);
            if (acc[i].v[1] != 0) s->nonfinite = 1;
        }
    } /* COLS pass 1 sums into s->sh during the scan */
    return ALLOY_OK;
}

static int nu_end_pass(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks,
                       struct alloy_err *err)
{
    struct nu_state *s = state;
    if (s->mode == NU_FLAT) {
        nu_coef(s->t, s->g[0], s->g[1], s->g[2], &s->ca, &s->cb);
        return ALLOY_OK;
    }
    if (pass == 0) {
        double mx = s->g[0];
        int em = 0, lg = 0;
        frexp(mx, &em); /* mx < 2^em, so every product < 2^(2 em) */
        while (lg < 63 && ((uint64_t)1 << lg) <= (uint64_t)job->shape[0]) lg++;
        s->scale = 126 - lg - 2 * em; /* shape[0] terms of < 2^(126 - lg) each: no overflow */
        return ALLOY_OK;
    }
    double *coef = s->sh->coef;
    for (uint64_t j = 0; j < s->inner; j++) {
        if (s->nonfinite) {
            coef[2 * j] = coef[2 * j + 1] = NAN;
            continue;
        }
        const __int128 *q = s->sh->sum + 3 * j;
        nu_coef(s->t, ldexp((double)q[0], -s->scale), ldexp((double)q[1], -s->scale),
                ldexp((double)q[2], -s->scale), &coef[2 * j], &coef[2 * j + 1]);
    }
    free(s->sh->sum);
    s->sh->sum = NULL;
    return ALLOY_OK;
}

static int nu_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                    const float *const *x, float *out, struct alloy_err *err)
{
    const struct nu_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0);
    if (s->mode == NU_COPY) {
        memcpy(out, x[0], len * sizeof *out);
        return ALLOY_OK;
    }
    const float *xa = x[s->ia], *xb = x[s->ib], *xB = s->ibase >= 0 ? x[s->ibase] : NULL;
    if (s->mode == NU_FLAT || s->mode == NU_ROWS) {
        size_t cols = s->mode == NU_FLAT ? len : (size_t)job->cols;
        for (size_t r0 = 0; r0 < len; r0 += cols) {
            double ca = s->ca, cb = s->cb;
            if (s->mode == NU_ROWS) {
                double g[3] = {0, 0, 0};
                const float *v[2] = {xa + r0, xb + r0};
                alloy_vm_gram_add(v, 2, xB ? xB + r0 : NULL, cols, g);
                nu_coef(s->t, g[0], g[1], g[2], &ca, &cb);
            }
            for (size_t i = r0; i < r0 + cols; i++) {
                double bb = xB ? xB[i] : 0.0;
                out[i] = (float)(bb + ca * ((double)xa[i] - bb) + cb * ((double)xb[i] - bb));
            }
        }
        return ALLOY_OK;
    }
    const double *coef = s->sh->coef;
    uint64_t j = c->e0 % s->inner;
    for (size_t i = 0; i < len; i++) {
        double bb = xB ? xB[i] : 0.0;
        out[i] = (float)(bb + coef[2 * j] * ((double)xa[i] - bb) + coef[2 * j + 1] * ((double)xb[i] - bb));
        if (++j == s->inner) j = 0;
    }
    return ALLOY_OK;
}

const struct alloy_method alloy_method_nuslerp = {
    .name = "nuslerp",
    .summary = "weighted slerp of two models (whole tensor, per row or per column), optionally around a base model",
    .params = params,
    .nparams = NPARAMS,
    .flags = ALLOY_METHOD_WHOLE_ROWS | ALLOY_METHOD_RECTIFY,
    .state_size = sizeof(struct nu_state),
    .acc_size = sizeof(struct nu_acc),
    .check = nu_check,
    .init = nu_init,
    .want_pass = nu_want_pass,
    .scan = nu_scan,
    .fold = nu_fold,
    .end_pass = nu_end_pass,
    .apply = nu_apply,
    .fini = nu_fini,
};
