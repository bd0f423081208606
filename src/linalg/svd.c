/*
 * svd.c — truncated SVD of a float32 matrix: LAPACK's divide-and-conquer
 * SVD, or a randomized range finder for large matrices and small ranks.
 *
 * DESIGN
 *   The input is row-major m x n. LAPACK is column-major, and a row-major
 *   m x n buffer is the column-major n x m matrix X = Aᵀ, so the routines
 *   factor X = U' S V'ᵀ in place of A (no transpose copy) and the answer is
 *   read back swapped: A = V' S U'ᵀ, i.e. A's U is V' and A's Vt is U'ᵀ.
 *   Read as row-major, the column-major U' buffer (n x k, leading dimension
 *   n) already is A's Vt [k, n]; A's U [m, k] is gathered from V'ᵀ.
 *
 *   Exact path: sgesdd with jobz 'S' (the thin SVD, min(m, n) triplets),
 *   then the first k are kept.
 *
 *   Randomized path (Halko, Martinsson, Tropp 2011, algorithms 4.4 and 5.1):
 *   l = k + max(k, 16) Gaussian test vectors Ω; Y = X Ω; q = 4 power
 *   iterations, each re-orthonormalised by QR (sgeqrf/sorgqr) on both
 *   sides (Q = qr(X qr(Xᵀ Q))), so the singular values' decay is raised to
 *   the power 2q + 1; then the small SVD of B = Qᵀ X (l x m) and U' = Q Ub.
 *   Its rank-k error is ‖A‖² − Σ s_j² exactly (Q has orthonormal columns),
 *   and with this oversampling and q it stays within 1 % of the
 *   Eckart–Young optimum on the spectra tests/test_linalg_svd.c checks
 *   (flat, polynomial and exponential decay). It is used when all singular
 *   values are not asked for, min(m, n) >= ALLOY_SVD_RANDOM_MIN and
 *   4 l <= min(m, n): there it does O(m n l q) work instead of O(m n min).
 *   Test vectors come from alloy's counter-based generator with a fixed
 *   key: results do not depend on threads or runs.
 *
 *   k > min(m, n) returns the min(m, n) triplets followed by zeros. NaN or
 *   Inf in the input is an error (LAPACK's behaviour on them is undefined).
 */
#include "linalg/svd.h"

#include <limits.h>
#include <math.h>

#include <cblas.h>

void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s, float *u,
             const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork, int *iwork, int *info);
void sgeqrf_(const int *m, const int *n, float *a, const int *lda, float *tau, float *work, const int *lwork,
             int *info);
void sorgqr_(const int *m, const int *n, const int *k, float *a, const int *lda, const float *tau, float *work,
             const int *lwork, int *info);

static int nomem(struct alloy_err *err) { return alloy_err_set(err, ALLOY_ERR_NOMEM, "svd: out of memory"); }

static int lapack_fail(const char *what, int info, struct alloy_err *err)
{
    return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "svd: %s: LAPACK info 0, found %d (no convergence)", what, info);
}

/* sgesdd 'S' on the column-major M x N matrix x (destroyed): s [min], u [M, min] (ld M), vt [min, N] (ld min). */
static int gesdd(int M, int N, float *x, float *s, float *u, float *vt, struct alloy_err *err)
{
    int mn = M < N ? M : N, lwork = -1, info = 0;
    float q = 0;
    int *iwork = alloy_xmalloc(sizeof(int) * 8 * (size_t)mn);
    if (!iwork) return nomem(err);
    sgesdd_("S", &M, &N, x, &M, s, u, &M, vt, &mn, &q, &lwork, iwork, &info);
    double want = (double)q;
    if (info != 0 || !(want < (double)INT_MAX)) {
        free(iwork);
        return info ? lapack_fail("sgesdd workspace query", info, err)
                    : alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "svd: matrix [%d, %d]: workspace below 2^31 "
                                    "floats expected, found %.0f", N, M, want);
    }
    lwork = (int)want + 1;
    float *work = alloy_xmalloc(sizeof(float) * (size_t)lwork);
    if (!work) {
        free(iwork);
        return nomem(err);
    }
    sgesdd_("S", &M, &N, x, &M, s, u, &M, vt, &mn, work, &lwork, iwork, &info);
    free(work);
    free(iwork);
    return info ? lapack_fail("sgesdd", info, err) : ALLOY_OK;
}

/* Replaces the column-major M x L matrix y (M >= L) by the Q of its QR factorisation. */
static int orthonormalize(int M, int L, float *y, struct alloy_err *err)
{
    int info = 0, lwork = -1;
    float q1 = 0, q2 = 0;
    float *tau = alloy_xmalloc(sizeof(float) * (size_t)L);
    if (!tau) return nomem(err);
    sgeqrf_(&M, &L, y, &M, tau, &q1, &lwork, &info);
    if (!info) sorgqr_(&M, &L, &L, y, &M, tau, &q2, &lwork, &info);
    lwork = (int)fmaxf(q1, q2) + 1;
    float *work = info ? NULL : alloy_xmalloc(sizeof(float) * (size_t)lwork);
    if (!info && !work) {
        free(tau);
        return nomem(err);
    }
    if (!info) sgeqrf_(&M, &L, y, &M, tau, work, &lwork, &info);
    if (!info) sorgqr_(&M, &L, &L, y, &M, tau, work, &lwork, &info);
    free(work);
    free(tau);
    return info ? lapack_fail("sgeqrf/sorgqr", info, err) : ALLOY_OK;
}

/* Writes A's top-k factors from X's: vtx = X's U' (column-major n x *, ld n: its first k columns are A's
 * Vt rows), ux = X's V'ᵀ (column-major * x m, ld ld: A's U[i][j] = ux[j + i ld]); kk <= k triplets exist. */
static void emit(size_t m, size_t n, size_t k, size_t kk, const float *sx, const float *vtx, const float *ux,
                 size_t ld, float *u, float *s, float *vt)
{
    for (size_t j = 0; j < k; j++) s[j] = j < kk ? sx[j] : 0.0f;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < k; j++) u[i * k + j] = j < kk ? ux[j + i * ld] : 0.0f;
    memcpy(vt, vtx, sizeof(float) * kk * n);
    memset(vt + kk * n, 0, sizeof(float) * (k - kk) * n);
}

static int svd_exact(const float *a, size_t m, size_t n, size_t k, float *u, float *s, float *vt, float *sv_all,
                     struct alloy_err *err)
{
    size_t mn = m < n ? m : n, kk = k < mn ? k : mn;
    float *x = alloy_xmalloc(sizeof(float) * m * n), *sx = alloy_xmalloc(sizeof(float) * mn);
    float *ux = alloy_xmalloc(sizeof(float) * n * mn), *vx = alloy_xmalloc(sizeof(float) * mn * m);
    int rc = x && sx && ux && vx ? ALLOY_OK : nomem(err);
    if (!rc) {
        memcpy(x, a, sizeof(float) * m * n);
        rc = gesdd((int)n, (int)m, x, sx, ux, vx, err);
    }
    if (!rc) {
        emit(m, n, k, kk, sx, ux, vx, mn, u, s, vt);
        if (sv_all) memcpy(sv_all, sx, sizeof(float) * mn);
    }
    free(x);
    free(sx);
    free(ux);
    free(vx);
    return rc;
}

/* Column-major R x L test matrix of standard normal values (Box–Muller over the counter generator). */
static void gaussian(float *o, size_t count)
{
    uint64_t key = alloy_rng_key(0x5eed5eedull, "svd", 0);
    for (size_t i = 0; i < count; i++) {
        double u1 = alloy_rng_uniform(key, 2 * i), u2 = alloy_rng_uniform(key, 2 * i + 1);
        o[i] = (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2));
    }
}

/* The randomized range finder on X = Aᵀ (column-major n x m, ld n): Q [n, l] with orthonormal columns. */
static int range_finder(const float *x, int R, int C, int L, float *q, float *z, struct alloy_err *err)
{
    float *omega = z; /* C x L, reused for the power iterations */
    gaussian(omega, (size_t)C * (size_t)L);
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, R, L, C, 1.0f, x, R, omega, C, 0.0f, q, R);
    int rc = orthonormalize(R, L, q, err);
    for (int it = 0; !rc && it < ALLOY_SVD_POWER_ITERS; it++) {
        cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, C, L, R, 1.0f, x, R, q, R, 0.0f, z, C);
        rc = orthonormalize(C, L, z, err);
        if (rc) break;
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, R, L, C, 1.0f, x, R, z, C, 0.0f, q, R);
        rc = orthonormalize(R, L, q, err);
    }
    return rc;
}

int alloy_svd_randomized(const float *a, size_t m, size_t n, size_t k, size_t l, float *u, float *s, float *vt,
                         struct alloy_err *err)
{
    if (alloy_blas_room(err)) return (int)err->status;
    size_t mn = m < n ? m : n;
    if (l < k) l = k;
    if (l > mn) l = mn;
    int R = (int)n, C = (int)m, L = (int)l;
    float *q = alloy_xmalloc(sizeof(float) * n * l), *z = alloy_xmalloc(sizeof(float) * m * l);
    float *b = alloy_xmalloc(sizeof(float) * l * m), *sb = alloy_xmalloc(sizeof(float) * l);
    float *ub = alloy_xmalloc(sizeof(float) * l * l), *uq = alloy_xmalloc(sizeof(float) * n * l);
    int rc = q && z && b && sb && ub && uq ? ALLOY_OK : nomem(err);
    if (!rc) rc = range_finder(a, R, C, L, q, z, err);
    if (!rc) {
        cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, L, C, R, 1.0f, q, R, a, R, 0.0f, b, L); /* B = Qᵀ X */
        rc = gesdd(L, C, b, sb, ub, z, err);                                                  /* z: Vb [l, m] */
    }
    if (!rc) {
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, R, L, L, 1.0f, q, R, ub, L, 0.0f, uq, R);
        emit(m, n, k, k < l ? k : l, sb, uq, z, l, u, s, vt);
    }
    free(q);
    free(z);
    free(b);
    free(sb);
    free(ub);
    free(uq);
    return rc;
}

int alloy_svd_truncated(const float *a, size_t m, size_t n, size_t k, float *u, float *s, float *vt, float *sv_all,
                        struct alloy_err *err)
{
    if (alloy_blas_room(err)) return (int)err->status;
    if (m > INT_MAX || n > INT_MAX || (m && n > SIZE_MAX / sizeof(float) / m))
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "svd: matrix [%zu, %zu]: dimensions below 2^31 expected", m, n);
    for (size_t i = 0; i < m * n; i++)
        if (!isfinite(a[i]))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "svd: matrix [%zu, %zu]: finite values expected, found %s at "
                                 "[%zu, %zu]", m, n, isnan(a[i]) ? "NaN" : "Inf", i / n, i % n);
    size_t mn = m < n ? m : n;
    if (mn == 0) {
        memset(u, 0, sizeof(float) * m * k);
        memset(s, 0, sizeof(float) * k);
        memset(vt, 0, sizeof(float) * k * n);
        return ALLOY_OK;
    }
    size_t l = k + (k > 16 ? k : 16);
    if (!sv_all && mn >= ALLOY_SVD_RANDOM_MIN && 4 * l <= mn) return alloy_svd_randomized(a, m, n, k, l, u, s, vt, err);
    return svd_exact(a, m, n, k, u, s, vt, sv_all, err);
}
