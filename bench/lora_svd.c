/*
 * lora_svd.c — the SVD step of `alloy lora extract` against mergekit's
 * approach, on the same machine (`make bench`, bench/run.sh).
 *
 * DESIGN
 *   usage: bench_lora_svd [HIDDEN [INTER [RANK]]]    (default 2048 8192 32)
 *   For the seven module shapes of one Llama layer of that size (q, k, v, o
 *   [H, H] / [H/4, H], gate, up [I, H], down [H, I]) a synthetic fine-tune
 *   delta is built: a rank-256 product of Gaussian factors with decaying
 *   weights plus Gaussian noise (a decaying spectrum with a full-rank tail,
 *   like real deltas). Each is factored twice:
 *     mergekit  the full thin SVD in float32 (LAPACK sgesdd, all min(m, n)
 *               triplets; what torch.linalg.svd(full_matrices=False) runs),
 *               then truncated to RANK;
 *     alloy     alloy_svd_truncated at RANK (the randomized range finder at
 *               these sizes).
 *   Printed per module: both times (best of ROUNDS, interleaved, so a passing
 *   disturbance spoils one round, not a row), their ratio, and alloy's
 *   rank-RANK error over the Eckart–Young optimum (from the full SVD's
 *   singular values). Shapes below 512 take the exact path in both: ratio ~1.
 *   The last line sums the layer. Both use every core through OpenBLAS.
 */
#include "linalg/svd.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint64_t g_state = 12345;
static float gauss(void)
{
    g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
    double u1 = (double)(g_state >> 11) * 0x1p-53;
    g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
    double u2 = (double)(g_state >> 11) * 0x1p-53;
    return (float)(sqrt(-2 * log(1 - u1)) * cos(6.283185307179586 * u2));
}

static float *make_delta(size_t m, size_t n)
{
    size_t r = 256;
    float *l = malloc(sizeof(float) * m * r), *rt = malloc(sizeof(float) * r * n), *d = malloc(sizeof(float) * m * n);
    if (!l || !rt || !d) exit(1);
    for (size_t i = 0; i < m * r; i++) l[i] = gauss() * (float)pow(0.98, (double)(i % r));
    for (size_t i = 0; i < r * n; i++) rt[i] = gauss();
    for (size_t i = 0; i < m * n; i++) d[i] = 0.05f * gauss();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, 1.0f / 16, l, (int)r, rt, (int)n,
                1.0f, d, (int)n);
    free(l);
    free(rt);
    return d;
}

static double frob_err(const float *a, size_t m, size_t n, size_t k, const float *u, const float *s, const float *vt)
{
    float *us = malloc(sizeof(float) * m * k), *p = malloc(sizeof(float) * m * n);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < k; j++) us[i * k + j] = u[i * k + j] * s[j];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, us, (int)k, vt, (int)n, 0.0f, p,
                (int)n);
    double e2 = 0;
    for (size_t i = 0; i < m * n; i++) e2 += ((double)a[i] - p[i]) * ((double)a[i] - p[i]);
    free(us);
    free(p);
    return sqrt(e2);
}

#define ROUNDS 3

/* Seconds of one alloy_svd_truncated call; exits on failure. */
static double time_svd(const float *d, size_t m, size_t n, size_t k, float *u, float *s, float *vt, float *all)
{
    struct alloy_err err = {0};
    double t0 = now();
    if (alloy_svd_truncated(d, m, n, k, u, s, vt, all, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    return now() - t0;
}

int main(int argc, char **argv)
{
    size_t h = argc > 1 ? strtoul(argv[1], NULL, 10) : 2048, in = argc > 2 ? strtoul(argv[2], NULL, 10) : 8192;
    size_t k = argc > 3 ? strtoul(argv[3], NULL, 10) : 32;
    const char *names[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    size_t shapes[7][2] = {{h, h}, {h / 4, h}, {h / 4, h}, {h, h}, {in, h}, {in, h}, {h, in}};
    double tf = 0, ta = 0, worst = 0;
    printf("lora extract SVD, rank %zu, one Llama layer (hidden %zu, intermediate %zu):\n", k, h, in);
    printf("%-10s %12s %10s %10s %8s %12s\n", "module", "shape", "full s", "alloy s", "ratio", "err/optimum");
    for (int i = 0; i < 7; i++) {
        size_t m = shapes[i][0], n = shapes[i][1], mn = m < n ? m : n;
        float *d = make_delta(m, n), *u = malloc(sizeof(float) * m * k), *s = malloc(sizeof(float) * k);
        float *vt = malloc(sizeof(float) * k * n), *all = malloc(sizeof(float) * mn);
        double full = INFINITY, fast = INFINITY;
        for (int round = 0; round < ROUNDS; round++) { /* best of ROUNDS, the two interleaved */
            double t = time_svd(d, m, n, k, u, s, vt, all); /* sv_all: the full SVD, mergekit's way */
            full = t < full ? t : full;
            t = time_svd(d, m, n, k, u, s, vt, NULL);
            fast = t < fast ? t : fast;
        }
        double opt2 = 0;
        for (size_t j = k; j < mn; j++) opt2 += (double)all[j] * all[j];
        double ratio = frob_err(d, m, n, k, u, s, vt) / sqrt(opt2);
        printf("%-10s %5zux%-6zu %10.3f %10.3f %7.1fx %12.6f\n", names[i], m, n, full, fast, full / fast, ratio);
        tf += full;
        ta += fast;
        worst = ratio > worst ? ratio : worst;
        free(d);
        free(u);
        free(s);
        free(vt);
        free(all);
    }
    printf("%-10s %12s %10.3f %10.3f %7.1fx %12.6f (worst)\n", "layer", "", tf, ta, tf / ta, worst);
    return worst <= 1.01 ? 0 : 1;
}
