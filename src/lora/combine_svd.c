/*
 * combine_svd.c — the SVD types' last step: the combined delta T of a module
 * re-factored to rank k (combine.h, alloy_lora_factor).
 *
 * DESIGN
 *   alloy_svd_truncated (linalg/svd.h) gives U [rows, k], S [k], Vt [k, cols]
 *   and all singular values; B = U·diag(S), A = Vt, so B·A is the rank-k
 *   truncation of T itself: the written adapter has scaling 1 and no second
 *   factor of s_i (PEFT's v0.8+ svd path scales each adapter twice). PEFT's
 *   svd_clamp is a quantile of the values of B and A together (torch.quantile,
 *   linear interpolation between order statistics), both clamped to ±h.
 *   The achieved error ‖T − B·A‖_F is measured on the result (one more dense
 *   product), not inferred from the singular values, so a clamp or an
 *   inaccurate SVD shows in the card; the optimum is sqrt(Σ_{j>k} σ_j²).
 */
#include "linalg/svd.h"
#include "lora/combine.h"

#include <cblas.h>
#include <inttypes.h>
#include <math.h>

static int cmp_float(const void *x, const void *y)
{
    float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

/* PEFT's svd_clamp: h = quantile(values of a and b, q); both clamped to [-h, h]. */
static int clamp_quantile(float *a, size_t na, float *b, size_t nb, double q, struct alloy_err *err)
{
    size_t n = na + nb;
    float *v = alloy_xmalloc(n * sizeof *v);
    if (!v) return alloy_err_set(err, ALLOY_ERR_NOMEM, "svd_clamp: out of memory");
    memcpy(v, b, nb * sizeof *v);
    memcpy(v + nb, a, na * sizeof *v);
    qsort(v, n, sizeof *v, cmp_float);
    double pos = q * (double)(n - 1), lo = floor(pos);
    size_t i = (size_t)lo, j = i + 1 < n ? i + 1 : i;
    float h = (float)(v[i] + (v[j] - v[i]) * (pos - lo));
    free(v);
    for (size_t e = 0; e < na; e++) a[e] = fminf(fmaxf(a[e], -h), h);
    for (size_t e = 0; e < nb; e++) b[e] = fminf(fmaxf(b[e], -h), h);
    return 0;
}

/* ‖T − B·A‖_F, with r a [rows, cols] scratch. */
static double residual(const float *t, const float *b, const float *a, uint64_t rows, uint64_t cols, uint32_t k,
                       float *r)
{
    memcpy(r, t, rows * cols * sizeof *r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)cols, (int)k, -1.0f, b, (int)k, a, (int)cols,
                1.0f, r, (int)cols);
    double s = 0;
    for (uint64_t e = 0; e < rows * cols; e++) s += (double)r[e] * r[e];
    return sqrt(s);
}

int alloy_lora_factor(const float *t, uint64_t rows, uint64_t cols, uint32_t k, double clamp, float *a, float *b,
                      double *rel_err, double *rel_opt, struct alloy_err *err)
{
    size_t mn = rows < cols ? rows : cols;
    float *u = alloy_xmalloc((size_t)(rows * k) * sizeof *u), *s = alloy_xmalloc(k * sizeof *s);
    float *sv = alloy_xmalloc(mn * sizeof *sv), *r = alloy_xmalloc((size_t)(rows * cols) * sizeof *r);
    int rc = u && s && sv && r ? 0 : alloy_err_set(err, ALLOY_ERR_NOMEM, "svd of a %" PRIu64 " x %" PRIu64
                                                   " delta: out of memory", rows, cols);
    if (!rc) rc = alloy_svd_truncated(t, rows, cols, k, u, s, a, sv, err);
    if (!rc) {
        for (uint64_t i = 0; i < rows; i++)
            for (uint32_t j = 0; j < k; j++) b[i * k + j] = u[i * k + j] * s[j];
        if (clamp > 0) rc = clamp_quantile(a, (size_t)k * cols, b, (size_t)rows * k, clamp, err);
    }
    if (!rc) {
        double norm = 0, tail = 0;
        for (uint64_t e = 0; e < rows * cols; e++) norm += (double)t[e] * t[e];
        for (size_t j = k; j < mn; j++) tail += (double)sv[j] * sv[j];
        norm = sqrt(norm);
        double res = residual(t, b, a, rows, cols, k, r);
        *rel_err = norm > 0 ? res / norm : 0;
        *rel_opt = norm > 0 ? sqrt(tail) / norm : 0;
    }
    free(u);
    free(s);
    free(sv);
    free(r);
    return rc;
}
