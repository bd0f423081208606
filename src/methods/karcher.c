/*
 * karcher.c — Karcher (Riemannian) mean of the models' directions on the
 * unit hypersphere, scaled by their mean norm.
 *
 * DESIGN
 *   mergekit: mergekit/merge_methods/karcher.py (spec §1.5). Every input —
 *   a configured base model included, as an ordinary input — has weight
 *   1/N; configured weights are ignored.
 *
 *     n_i = ||X_i||,  U_i = X_i / n_i  (0 when n_i == 0)
 *     valid = {i : n_i > tol}  (none: the result is zero),  a_i = 1/|valid|
 *     u = Σ a_i U_i;  u = U_first_valid if ||u|| < tol, else u / ||u||
 *     repeat max_iter times:
 *         c_i = clamp(<u, U_i>, -1, 1), θ_i = acos c_i
 *         T = Σ_{valid i, θ_i >= tol} a_i θ_i / sin θ_i · (U_i - c_i u)
 *         stop if ||T|| < tol
 *         u = cos(||T||) u + sin(||T||) T / ||T||;  u /= ||u|| if ||u|| > tol
 *     R = (Σ_i n_i / N) · u      (the norm average runs over all N inputs)
 *
 *   u and T always lie in span{U_i}, so they are kept as N coefficients and
 *   every dot product comes from the Gram matrix G_ij = <X_i, X_j>: one scan
 *   pass (double, per-chunk partials folded in chunk order) replaces the
 *   max_iter passes a direct implementation would make over the tensors,
 *   with the same mathematics. apply() forms R = Σ_j β_j X_j in double.
 *   State is O(N), at most 32 inputs.
 *
 *   Antipodal input: when u = -U_i (c_i = -1, within 1e-12) the tangent
 *   direction of U_i is undefined (θ/sin θ diverges while U_i - c_i u
 *   vanishes); the term is skipped, which is what mergekit's elementwise
 *   arithmetic gives (U_i + u == 0 exactly) and what keeps the coefficient
 *   form from amplifying rounding.
 *
 *   One input is copied unchanged. mergekit's rectify call has no effect for
 *   karcher, so alloy does not rectify either (shapes must match).
 */
#include "methods/method.h"
#include "methods/vecmath.h"

#include <string.h>

enum { P_MAX_ITER, P_TOL, NPARAMS };

static const struct alloy_param_spec params[] = {
    [P_MAX_ITER] = {"max_iter", ALLOY_PARAM_GLOBAL, 10.0, 0, "maximum number of Karcher mean iterations"},
    [P_TOL] = {"tol", ALLOY_PARAM_GLOBAL, 1e-5, 0, "convergence tolerance (tangent norm, angle and norm cut-off)"},
};

struct ka_state {
    int copy;
    double beta[ALLOY_VM_MAX]; /* R = Σ beta_j X_j */
    double g[ALLOY_VM_GRAM];   /* the scan's Gram matrix, folded window by window */
};

struct ka_acc {
    double g[ALLOY_VM_GRAM];
};

static int ka_check(const struct alloy_merge_job *job, struct alloy_err *err)
{
    if (job->n > ALLOY_VM_MAX)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': karcher: %d models, at most %d supported",
                             job->config_path, job->name, job->n, ALLOY_VM_MAX);
    double it = job->gp[P_MAX_ITER], tol = job->gp[P_TOL];
    if (!(it >= 0) || it != floor(it) || it > 1e6)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': karcher: `max_iter` must be a whole number "
                             "between 0 and 1000000, got %g", job->config_path, job->name, it);
    if (!(tol >= 0) || !isfinite(tol))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': karcher: `tol` must be a finite number >= 0, "
                             "got %g", job->config_path, job->name, tol);
    return ALLOY_OK;
}

static int ka_init(const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct ka_state *s = state;
    int rc = ka_check(job, err);
    if (rc) return rc;
    s->copy = job->n == 1;
    return ALLOY_OK;
}

static int ka_want_pass(const struct alloy_merge_job *job, void *state, int pass)
{
    const struct ka_state *s = state;
    return !s->copy && pass == 0;
}

static int ka_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
                   const float *const *x, void *acc, struct alloy_err *err)
{
    alloy_vm_gram_add(x, job->n, NULL, (size_t)(c->e1 - c->e0), ((struct ka_acc *)acc)->g);
    return ALLOY_OK;
}

static int ka_fold(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first,
                   size_t count, size_t nchunks, struct alloy_err *err)
{
    struct ka_state *s = state;
    alloy_vm_fold(accs, first, count, sizeof(struct ka_acc), (size_t)(job->n * (job->n + 1) / 2), s->g);
    return ALLOY_OK;
}

static int ka_end_pass(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks,
                       struct alloy_err *err)
{
    struct ka_state *s = state;
    const int n = job->n;
    const double tol = job->gp[P_TOL];
    const long max_iter = (long)job->gp[P_MAX_ITER];
    const double *g = s->g;
    double gu[ALLOY_VM_GRAM], nrm[ALLOY_VM_MAX], a[ALLOY_VM_MAX], u[ALLOY_VM_MAX];

    int nvalid = 0, first = -1;
    for (int i = 0; i < n; i++) {
        nrm[i] = sqrt(g[alloy_vm_tri(i, i)]);
        if (isnan(nrm[i]) || isinf(nrm[i])) { /* non-finite input: NaN out, as the arithmetic would give */
            for (int j = 0; j < n; j++) s->beta[j] = NAN;
            return ALLOY_OK;
        }
        if (nrm[i] > tol) {
            nvalid++;
            if (first < 0) first = i;
        }
    }
    memset(s->beta, 0, sizeof s->beta);
    if (!nvalid) return ALLOY_OK; /* zeros */
    /* Gram matrix of the unit vectors (zero rows/columns for invalid inputs) */
    for (int j = 0; j < n; j++)
        for (int i = 0; i <= j; i++) {
            int ok = nrm[i] > tol && nrm[j] > tol;
            gu[alloy_vm_tri(i, j)] = ok ? g[alloy_vm_tri(i, j)] / (nrm[i] * nrm[j]) : 0.0;
        }
    for (int i = 0; i < n; i++) a[i] = nrm[i] > tol ? 1.0 / nvalid : 0.0;

    double un = sqrt(fmax(alloy_vm_quad(gu, n, a, a), 0.0));
    for (int i = 0; i < n; i++) u[i] = un < tol ? (i == first) : a[i] / un;

    for (long it = 0; it < max_iter; it++) {
        double tg[ALLOY_VM_MAX] = {0}, c[ALLOY_VM_MAX];
        for (int i = 0; i < n; i++) c[i] = alloy_vm_gx(gu, n, u, i);
        for (int i = 0; i < n; i++) {
            if (a[i] == 0) continue;
            double ci = c[i] > 1 ? 1 : c[i] < -1 ? -1 : c[i];
            double th = acos(ci);
            if (th < tol || ci <= -1.0 + 1e-12) continue;
            double f = a[i] * th / sin(th);
            tg[i] += f;
            for (int j = 0; j < n; j++) tg[j] -= f * ci * u[j];
        }
        double tn = sqrt(fmax(alloy_vm_quad(gu, n, tg, tg), 0.0));
        if (isnan(tn) || tn < tol) break;
        double ct = cos(tn), st = sin(tn) / tn;
        for (int j = 0; j < n; j++) u[j] = ct * u[j] + st * tg[j];
        un = sqrt(fmax(alloy_vm_quad(gu, n, u, u), 0.0));
        if (un > tol)
            for (int j = 0; j < n; j++) u[j] /= un;
    }
    double scale = 0;
    for (int i = 0; i < n; i++) scale += nrm[i] / n;
    for (int j = 0; j < n; j++) s->beta[j] = nrm[j] > tol ? scale * u[j] / nrm[j] : 0.0;
    return ALLOY_OK;
}

static int ka_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                    const float *const *x, float *out, struct alloy_err *err)
{
    const struct ka_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0);
    if (s->copy) {
        memcpy(out, x[0], len * sizeof *out);
        return ALLOY_OK;
    }
    for (size_t e = 0; e < len; e++) {
        double r = 0;
        for (int j = 0; j < job->n; j++) r += s->beta[j] * x[j][e];
        out[e] = (float)r;
    }
    return ALLOY_OK;
}

const struct alloy_method alloy_method_karcher = {
    .name = "karcher",
    .summary = "Karcher mean of the models' directions on the hypersphere, scaled by their mean norm",
    .params = params,
    .nparams = NPARAMS,
    .flags = 0,
    .state_size = sizeof(struct ka_state),
    .acc_size = sizeof(struct ka_acc),
    .check = ka_check,
    .init = ka_init,
    .want_pass = ka_want_pass,
    .scan = ka_scan,
    .fold = ka_fold,
    .end_pass = ka_end_pass,
    .apply = ka_apply,
};
