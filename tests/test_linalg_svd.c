/*
 * test_linalg_svd.c — alloy_svd_truncated against references written here:
 * a one-sided Jacobi SVD in double (singular values of small random
 * matrices), and matrices built as U diag(σ) Vᵀ from Gram–Schmidt
 * orthonormal factors, whose singular values are known by construction
 * (the randomized path on large matrices). The rule checked everywhere:
 * the rank-k error ‖A − U S Vt‖_F is within 1 % of the Eckart–Young
 * optimum sqrt(Σ_{j>k} σ_j²) (plus float32 rounding).
 */
#include "test.h"

#include "linalg/svd.h"
#include "svd_ref.h"

#include <stdlib.h>

static double frand(uint64_t *st)
{
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*st >> 11) * 0x1p-53;
}

static double gauss(uint64_t *st) { return sqrt(-2 * log(1 - frand(st))) * cos(6.283185307179586 * frand(st)); }

/* Frobenius norm of a − u diag(s) vt, in double. */
static double recon_error(const float *a, size_t m, size_t n, size_t k, const float *u, const float *s, const float *vt)
{
    double e2 = 0;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double r = 0;
            for (size_t t = 0; t < k; t++) r += (double)u[i * k + t] * s[t] * vt[t * n + j];
            double d = a[i * n + j] - r;
            e2 += d * d;
        }
    return sqrt(e2);
}

/* Runs the SVD of a at rank k and checks the Eckart–Young rule against the exact singular values sv
 * (min(m, n) of them, descending); returns the measured error. path: 0 alloy_svd_truncated (exact
 * values expected), 1 the same on a size where it picks the randomized path, 2 alloy_svd_randomized. */
static double check_rule(const float *a, size_t m, size_t n, size_t k, const double *sv, int path)
{
    size_t mn = m < n ? m : n;
    float *u = malloc(sizeof(float) * m * k), *s = malloc(sizeof(float) * k), *vt = malloc(sizeof(float) * k * n);
    struct alloy_err err = {0};
    int randomized = path > 0;
    int rc = path == 2 ? alloy_svd_randomized(a, m, n, k, k + (k > 16 ? k : 16), u, s, vt, &err)
                        : alloy_svd_truncated(a, m, n, k, u, s, vt, NULL, &err);
    CHECK_MSG(rc == 0, "svd %zux%zu k=%zu: %s", m, n, k, err.msg);
    double opt2 = 0, norm2 = 0;
    for (size_t j = 0; j < mn; j++) {
        norm2 += sv[j] * sv[j];
        if (j >= k) opt2 += sv[j] * sv[j];
    }
    double e = rc ? INFINITY : recon_error(a, m, n, k, u, s, vt), opt = sqrt(opt2);
    CHECK_MSG(e <= 1.01 * opt + 2e-6 * sqrt(norm2), "svd %zux%zu k=%zu: error %.9g, optimum %.9g", m, n, k, e, opt);
    for (size_t j = 0; j < k && !rc; j++) {
        double want = j < mn ? sv[j] : 0;
        if (!randomized) /* the leading values themselves, to float precision */
            CHECK_MSG(fabs(s[j] - want) <= 1e-4 * sv[0], "s[%zu] = %g, expected %g", j, s[j], want);
        else /* those of Qᵀ A: never above A's (interlacing), close below */
            CHECK_MSG(s[j] <= want + 1e-4 * sv[0] && s[j] >= 0.9 * want, "s[%zu] = %g, expected %g", j, s[j], want);
        if (j > 0) CHECK(s[j] <= s[j - 1]);
    }
    free(u);
    free(s);
    free(vt);
    return e;
}

static void random_case(size_t m, size_t n, size_t k, uint64_t seed)
{
    float *a = malloc(sizeof(float) * m * n);
    double *ad = malloc(sizeof(double) * m * n), *sv = malloc(sizeof(double) * (m < n ? m : n));
    for (size_t i = 0; i < m * n; i++) ad[i] = a[i] = (float)gauss(&seed);
    jacobi_sv(ad, m, n, sv);
    check_rule(a, m, n, k, sv, 0);
    free(a);
    free(ad);
    free(sv);
}

TEST(svd_random_tall_wide_square)
{
    random_case(40, 30, 5, 1);
    random_case(30, 40, 5, 2);
    random_case(33, 33, 10, 3);
    random_case(64, 7, 1, 4);
    random_case(12, 50, 11, 5);
}

TEST(svd_all_values_match_jacobi)
{
    size_t m = 37, n = 21;
    uint64_t seed = 9;
    float a[37 * 21], u[37 * 3], s[3], vt[3 * 21], all[21];
    double ad[37 * 21], sv[21];
    for (size_t i = 0; i < m * n; i++) ad[i] = a[i] = (float)gauss(&seed);
    jacobi_sv(ad, m, n, sv);
    struct alloy_err err = {0};
    CHECK_INT(alloy_svd_truncated(a, m, n, 3, u, s, vt, all, &err), 0);
    for (size_t j = 0; j < n; j++) CHECK_NEAR(all[j], sv[j], 1e-5 * sv[0]);
}

/* k >= min(m, n): exact reconstruction, the extra triplets zero. */
TEST(svd_rank_at_least_min)
{
    size_t m = 9, n = 6, k = 8;
    uint64_t seed = 11;
    float a[54], u[9 * 8], s[8], vt[8 * 6];
    for (int i = 0; i < 54; i++) a[i] = (float)gauss(&seed);
    struct alloy_err err = {0};
    CHECK_INT(alloy_svd_truncated(a, m, n, k, u, s, vt, NULL, &err), 0);
    CHECK(recon_error(a, m, n, k, u, s, vt) < 1e-5 * 10);
    CHECK(s[6] == 0 && s[7] == 0);
    for (size_t j = 0; j < n; j++) CHECK(vt[7 * n + j] == 0);
}

/* A matrix of true rank 6 is recovered exactly at k = 6. */
TEST(svd_low_rank_exact)
{
    size_t m = 50, n = 40, r = 6;
    uint64_t seed = 21;
    double L[50 * 6], R[6 * 40];
    for (size_t i = 0; i < m * r; i++) L[i] = gauss(&seed);
    for (size_t i = 0; i < r * n; i++) R[i] = gauss(&seed);
    float *a = malloc(sizeof(float) * m * n), u[50 * 6], s[6], vt[6 * 40];
    double norm2 = 0;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double v = 0;
            for (size_t t = 0; t < r; t++) v += L[i * r + t] * R[t * n + j];
            a[i * n + j] = (float)v;
            norm2 += v * v;
        }
    struct alloy_err err = {0};
    CHECK_INT(alloy_svd_truncated(a, m, n, r, u, s, vt, NULL, &err), 0);
    CHECK_MSG(recon_error(a, m, n, r, u, s, vt) <= 1e-6 * sqrt(norm2), "error %g of %g",
              recon_error(a, m, n, r, u, s, vt), sqrt(norm2));
    free(a);
}

TEST(svd_zero_and_nonfinite)
{
    float a[12] = {0}, u[4 * 2], s[2], vt[2 * 3];
    struct alloy_err err = {0};
    CHECK_INT(alloy_svd_truncated(a, 4, 3, 2, u, s, vt, NULL, &err), 0);
    CHECK(s[0] == 0 && s[1] == 0);
    CHECK(recon_error(a, 4, 3, 2, u, s, vt) == 0);
    a[7] = NAN;
    CHECK_INT(alloy_svd_truncated(a, 4, 3, 2, u, s, vt, NULL, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "found NaN at [2, 1]");
    a[7] = INFINITY;
    CHECK_INT(alloy_svd_truncated(a, 4, 3, 2, u, s, vt, NULL, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "Inf");
}

/* Orthonormal columns (column j at q + j * rows) by modified Gram–Schmidt of Gaussian vectors, twice. */
static void orthonormal(double *q, size_t rows, size_t cols, uint64_t *seed)
{
    for (size_t i = 0; i < rows * cols; i++) q[i] = gauss(seed);
    for (size_t j = 0; j < cols; j++)
        for (int pass = 0; pass < 2; pass++) {
            for (size_t p = 0; p < j; p++) {
                double d = 0;
                for (size_t i = 0; i < rows; i++) d += q[p * rows + i] * q[j * rows + i];
                for (size_t i = 0; i < rows; i++) q[j * rows + i] -= d * q[p * rows + i];
            }
            double nn = 0;
            for (size_t i = 0; i < rows; i++) nn += q[j * rows + i] * q[j * rows + i];
            for (size_t i = 0; i < rows; i++) q[j * rows + i] /= sqrt(nn);
        }
}

/* A = U diag(sv) Vᵀ with known singular values (descending). */
static float *spectrum_matrix(size_t m, size_t n, const double *sv, uint64_t seed)
{
    size_t c = m < n ? m : n;
    double *U = malloc(sizeof(double) * m * c), *V = malloc(sizeof(double) * n * c);
    orthonormal(U, m, c, &seed);
    orthonormal(V, n, c, &seed);
    float *a = malloc(sizeof(float) * m * n);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double v = 0;
            for (size_t t = 0; t < c; t++) v += U[t * m + i] * sv[t] * V[t * n + j];
            a[i * n + j] = (float)v;
        }
    free(U);
    free(V);
    return a;
}

/* The randomized path (taken by alloy_svd_truncated for this size) meets the rule on flat, polynomial
 * and exponential spectra, and agrees with the exact path's error. */
TEST(svd_randomized_rule)
{
    size_t m = 600, n = 520, k = 16;
    double *sv = malloc(sizeof(double) * n);
    for (int kind = 0; kind < 3; kind++) {
        for (size_t j = 0; j < n; j++)
            sv[j] = kind == 0 ? 1.0 - 0.5 * (double)j / (double)n : kind == 1 ? 1.0 / (double)(j + 1) : pow(0.97, (double)j);
        float *a = spectrum_matrix(m, n, sv, 100 + (uint64_t)kind);
        double e_auto = check_rule(a, m, n, k, sv, 1);
        double e_rand = check_rule(a, m, n, k, sv, 2);
        CHECK_NEAR(e_auto, e_rand, 1e-6 * e_rand);
        free(a);
    }
    free(sv);
}
