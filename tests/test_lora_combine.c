/*
 * test_lora_combine.c — the combination arithmetic of `alloy lora merge`
 * (src/lora/combine.c) against first principles: magnitude pruning keeps
 * exactly k = int(density·n) largest magnitudes, DARE keeps a Bernoulli
 * fraction and rescales, reproducibly per seed; the TIES sign election and
 * the division by the agreeing count on hand-built values; cat reproduces
 * Σ w_i s_i B_i A_i exactly; the A/B types are PEFT's formula (cross terms
 * included); the SVD types' target is the weighted sum of the (pruned)
 * deltas; the SVD re-factoring reports its measured error, meets the
 * optimum, and clamps as PEFT's svd_clamp. References are naive loops in
 * double.
 */
#include "test.h"
#include "lora/combine.h"

#include <stdlib.h>

static uint64_t lcg_state;

static float rnd(void) /* uniform in [-1, 1) */
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(lcg_state >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static float *rnd_array(size_t n)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; x && i < n; i++) x[i] = rnd();
    return x;
}

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

TEST(lora_prune_magnitude_keeps_k_largest)
{
    struct alloy_err err = {0};
    float x[10] = {0.5f, -3, 1, 2, -0.25f, 4, -1, 0, 2, 0.1f};
    CHECK_INT(alloy_lora_prune_magnitude(x, 10, 0.5, &err), 0); /* k = 5: 4, -3, 2, 2, then the first |1| */
    const float want[10] = {0, -3, 1, 2, 0, 4, 0, 0, 2, 0};
    for (int i = 0; i < 10; i++) CHECK_MSG(x[i] == want[i], "x[%d] = %g, expected %g", i, x[i], want[i]);

    float y[7] = {1, 2, 3, 4, 5, 6, 7}; /* int(0.3 * 7) = 2 */
    CHECK_INT(alloy_lora_prune_magnitude(y, 7, 0.3, &err), 0);
    for (int i = 0; i < 7; i++) CHECK(y[i] == (i >= 5 ? (float)(i + 1) : 0.0f));
    float z[3] = {1, -2, 3};
    CHECK_INT(alloy_lora_prune_magnitude(z, 3, 1.0, &err), 0);
    CHECK(z[0] == 1 && z[1] == -2 && z[2] == 3);
    CHECK_INT(alloy_lora_prune_magnitude(z, 3, 0.1, &err), 0); /* k = 0 */
    CHECK(z[0] == 0 && z[1] == 0 && z[2] == 0);

    /* Random data: exactly k survive, and none dropped is larger than one kept. */
    lcg_state = 11;
    size_t n = 50000;
    float *r = rnd_array(n);
    double *mag = malloc(n * sizeof *mag);
    for (size_t i = 0; i < n; i++) mag[i] = fabs(r[i]);
    qsort(mag, n, sizeof *mag, cmp_desc);
    size_t k = (size_t)(0.37 * (double)n);
    CHECK_INT(alloy_lora_prune_magnitude(r, n, 0.37, &err), 0);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i] != 0) kept++;
        if (r[i] != 0) CHECK(fabs(r[i]) >= mag[k - 1]);
    }
    CHECK_INT(kept, k);
    free(r);
    free(mag);
}

TEST(lora_prune_random_statistics_and_seed)
{
    size_t n = 200000;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    for (size_t i = 0; i < n; i++) x[i] = y[i] = 1.0f + (float)(i % 7);
    uint64_t key = alloy_rng_key(42, "model.layers.0.self_attn.q_proj", 3);
    alloy_lora_prune_random(x, n, 0.3, key);
    alloy_lora_prune_random(y, n, 0.3, key);
    size_t kept = 0, same = 1;
    double sum = 0, want = 0;
    for (size_t i = 0; i < n; i++) {
        float orig = 1.0f + (float)(i % 7);
        if (x[i] != 0) {
            kept++;
            CHECK_NEAR(x[i], orig / 0.3, 1e-5 * orig / 0.3); /* rescaled by 1/density */
        }
        same &= x[i] == y[i];
        sum += x[i];
        want += orig;
    }
    double sd = sqrt(0.3 * 0.7 / (double)n);
    CHECK_MSG(fabs((double)kept / (double)n - 0.3) < 5 * sd, "kept fraction %.5f", (double)kept / (double)n);
    CHECK_MSG(fabs(sum / want - 1) < 0.02, "expectation kept: sum ratio %.4f", sum / want); /* E = unchanged */
    CHECK(same);
    for (size_t i = 0; i < n; i++) y[i] = 1.0f;
    alloy_lora_prune_random(y, n, 0.3, alloy_rng_key(43, "model.layers.0.self_attn.q_proj", 3));
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += (x[i] != 0) != (y[i] != 0);
    CHECK_MSG(differ > n / 4, "another seed changes the mask: %zu of %zu differ", differ, n); /* E = 0.42 n */
    free(x);
    free(y);
}

TEST(lora_ties_sign_election_and_count_division)
{
    struct alloy_err err = {0};
    float t0[5] = {1, -2, 3, 0, 0.5f}, t1[5] = {2, 1, -1, 0, -0.5f}, t2[5] = {-1, -3, -1, 0, 0};
    float *t[3] = {t0, t1, t2};
    const double w[3] = {1, 0.5, 2};
    float out[5];
    struct alloy_lora_mix m = {.ties = 1, .name = "m"};
    CHECK_INT(alloy_lora_mix(&m, t, w, 3, 5, out, &err), 0);
    /* total: sums 2, -4, 1, 0, 0 elect +, -, +, +, +; agreeing (weighted) / count */
    const float total[5] = {(1 * 1 + 0.5f * 2) / 2, (1 * -2 + 2 * -3) / 2, 3, 0, 0.5f};
    for (int i = 0; i < 5; i++) CHECK_NEAR(out[i], total[i], 1e-6);
    m.frequency = 1; /* sign counts +1, -1, -1, 0, 0 elect +, -, -, +, + */
    CHECK_INT(alloy_lora_mix(&m, t, w, 3, 5, out, &err), 0);
    const float freq[5] = {1, -4, (0.5f * -1 + 2 * -1) / 2, 0, 0.5f};
    for (int i = 0; i < 5; i++) CHECK_NEAR(out[i], freq[i], 1e-6);

    /* With magnitude pruning first (density 0.4 of 5: k = 2 per tensor). */
    float u0[5] = {1, -2, 3, 0, 0.5f}, u1[5] = {2, 1, -1, 0, -0.5f}, u2[5] = {-1, -3, -1, 0, 0};
    float *u[3] = {u0, u1, u2}; /* pruned: {0,-2,3,0,0}, {2,1,0,0,0} (|-1| ties lose to |1| at index 1), {-1,-3,0,0,0} */
    struct alloy_lora_mix mp = {.ties = 1, .prune = ALLOY_LORA_PRUNE_MAGNITUDE, .density = 0.4, .name = "m"};
    CHECK_INT(alloy_lora_mix(&mp, u, w, 3, 5, out, &err), 0);
    const float pruned[5] = {0.5f * 2, (1 * -2 + 2 * -3) / 2, 3, 0, 0}; /* e0: sum 1 -> +, only u1 agrees */
    for (int i = 0; i < 5; i++) CHECK_NEAR(out[i], pruned[i], 1e-6);
}

/* Parts with the given ranks, random values. */
static void make_parts(struct alloy_lora_part *p, size_t np, const uint32_t *ranks, uint64_t rows, uint64_t cols)
{
    const double scale[4] = {2, 4, 0.5, 1}, weight[4] = {0.6, -0.4, 1.5, 0.3};
    for (size_t i = 0; i < np; i++) {
        p[i] = (struct alloy_lora_part){rnd_array(ranks[i] * cols), rnd_array(rows * ranks[i]), ranks[i], scale[i],
                                        weight[i]};
    }
}

static void free_parts(struct alloy_lora_part *p, size_t np)
{
    for (size_t i = 0; i < np; i++) {
        free(p[i].a);
        free(p[i].b);
    }
}

/* B·A in double. */
static double *product(const float *b, const float *a, uint64_t rows, uint64_t r, uint64_t cols, double c)
{
    double *d = calloc(rows * cols, sizeof *d);
    for (uint64_t i = 0; i < rows; i++)
        for (uint64_t j = 0; j < cols; j++) {
            double s = 0;
            for (uint64_t k = 0; k < r; k++) s += (double)b[i * r + k] * a[k * cols + j];
            d[i * cols + j] = c * s;
        }
    return d;
}

/* max |x - y| / max |y| */
static double rel_diff(const double *x, const double *y, size_t n)
{
    double m = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        m = fmax(m, fabs(y[i]));
        d = fmax(d, fabs(x[i] - y[i]));
    }
    return m > 0 ? d / m : d;
}

TEST(lora_cat_is_the_weighted_sum_of_deltas)
{
    lcg_state = 5;
    enum { ROWS = 24, COLS = 40 };
    const uint32_t ranks[3] = {3, 8, 5};
    struct alloy_lora_part p[3];
    make_parts(p, 3, ranks, ROWS, COLS);
    float *a = malloc(16 * COLS * sizeof *a), *b = malloc(ROWS * 16 * sizeof *b);
    alloy_lora_cat(p, 3, ROWS, COLS, a, b);
    double *want = calloc(ROWS * COLS, sizeof *want);
    for (int i = 0; i < 3; i++) {
        double *d = product(p[i].b, p[i].a, ROWS, ranks[i], COLS, p[i].weight * p[i].scale);
        for (int e = 0; e < ROWS * COLS; e++) want[e] += d[e];
        free(d);
    }
    float *bf = b;
    double *got = product(bf, a, ROWS, 16, COLS, 1.0);
    double rd = rel_diff(got, want, ROWS * COLS);
    CHECK_MSG(rd < 1e-6, "cat: B·A differs from Σ w s B_i A_i by %.3g (relative)", rd);
    free(got);
    free(want);
    free(a);
    free(b);
    free_parts(p, 3);
}

TEST(lora_ab_types_follow_peft_formula)
{
    lcg_state = 9;
    enum { ROWS = 12, COLS = 20, R = 4 };
    const uint32_t ranks[3] = {R, R, R};
    struct alloy_lora_part p[3];
    make_parts(p, 3, ranks, ROWS, COLS);
    /* PEFT: A = Σ sign(c_i) sqrt|c_i| A_i, B = Σ sqrt|c_i| B_i, c_i = w_i s_i (weight[1] < 0: sign on A). */
    double wa[R * COLS] = {0}, wb[ROWS * R] = {0};
    for (int i = 0; i < 3; i++) {
        double c = p[i].weight * p[i].scale, root = sqrt(fabs(c));
        for (int e = 0; e < R * COLS; e++) wa[e] += (c < 0 ? -root : root) * p[i].a[e];
        for (int e = 0; e < ROWS * R; e++) wb[e] += root * p[i].b[e];
    }
    float a[R * COLS], b[ROWS * R];
    struct alloy_err err = {0};
    struct alloy_lora_mix m = {.name = "m"};
    CHECK_INT(alloy_lora_ab(&m, p, 3, ROWS, COLS, a, b, &err), 0);
    for (int e = 0; e < R * COLS; e++) CHECK_NEAR(a[e], wa[e], 1e-5);
    for (int e = 0; e < ROWS * R; e++) CHECK_NEAR(b[e], wb[e], 1e-5);
    /* Cross terms: B·A is not the weighted sum of the deltas. */
    double *ba = product(b, a, ROWS, R, COLS, 1.0), *sum = calloc(ROWS * COLS, sizeof *sum);
    for (int i = 0; i < 3; i++) {
        double *d = product(p[i].b, p[i].a, ROWS, R, COLS, p[i].weight * p[i].scale);
        for (int e = 0; e < ROWS * COLS; e++) sum[e] += d[e];
        free(d);
    }
    CHECK(rel_diff(ba, sum, ROWS * COLS) > 0.1);
    free(ba);
    free(sum);
    free_parts(p, 3);
}

TEST(lora_svd_targets_are_mixed_deltas)
{
    lcg_state = 17;
    enum { ROWS = 16, COLS = 30, N = ROWS * COLS };
    const uint32_t ranks[2] = {4, 6};
    struct alloy_err err = {0};
    for (int kind = 0; kind < 3; kind++) { /* svd, magnitude_prune_svd, dare_linear_svd */
        struct alloy_lora_part p[2];
        make_parts(p, 2, ranks, ROWS, COLS);
        double want[N] = {0};
        for (int i = 0; i < 2; i++) {
            double *d = product(p[i].b, p[i].a, ROWS, ranks[i], COLS, p[i].scale);
            if (kind == 1) { /* keep the int(0.25 N) largest |Δ_i| */
                double mag[N];
                for (int e = 0; e < N; e++) mag[e] = fabs(d[e]);
                qsort(mag, N, sizeof *mag, cmp_desc);
                for (int e = 0; e < N; e++)
                    if (fabs(d[e]) < mag[N / 4 - 1]) d[e] = 0;
            }
            for (int e = 0; e < N; e++) want[e] += p[i].weight * d[e];
            free(d);
        }
        struct alloy_lora_mix m = {.prune = (enum alloy_lora_prune)kind, .density = 0.25, .seed = 1, .name = "m"};
        float t[N], t2[N];
        CHECK_INT(alloy_lora_target(&m, p, 2, ROWS, COLS, t, &err), 0);
        if (kind < 2) {
            double got[N];
            for (int e = 0; e < N; e++) got[e] = t[e];
            CHECK_MSG(rel_diff(got, want, N) < 1e-5, "kind %d: target off by %.3g", kind, rel_diff(got, want, N));
        } else { /* DARE: same seed, same target; E[T] = the plain target (checked in distribution above) */
            CHECK_INT(alloy_lora_target(&m, p, 2, ROWS, COLS, t2, &err), 0);
            CHECK(memcmp(t, t2, sizeof t) == 0);
            m.seed = 2;
            CHECK_INT(alloy_lora_target(&m, p, 2, ROWS, COLS, t2, &err), 0);
            CHECK(memcmp(t, t2, sizeof t) != 0);
        }
        free_parts(p, 2);
    }
}

static int cmp_asc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* alloy_lora_factor: the reported error is the measured ‖T − B·A‖ and meets the optimum; svd_clamp
 * clamps A and B to ±(the q-quantile of their values, torch.quantile's linear interpolation). */
TEST(lora_factor_error_and_clamp)
{
    lcg_state = 23;
    enum { ROWS = 10, COLS = 14, K = 3, N = ROWS * COLS, NV = K * (ROWS + COLS) };
    float *t = rnd_array(N), a[K * COLS], b[ROWS * K], ca[K * COLS], cb[ROWS * K];
    struct alloy_err err = {0};
    double rel, opt, crel, copt;
    CHECK_INT(alloy_lora_factor(t, ROWS, COLS, K, 0, a, b, &rel, &opt, &err), 0);
    double res = 0, norm = 0;
    for (int i = 0; i < ROWS; i++)
        for (int j = 0; j < COLS; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)b[i * K + k] * a[k * COLS + j];
            res += (t[i * COLS + j] - s) * (t[i * COLS + j] - s);
            norm += (double)t[i * COLS + j] * t[i * COLS + j];
        }
    CHECK_NEAR(rel, sqrt(res / norm), 1e-6);
    CHECK_MSG(opt > 0.1 && rel >= opt * (1 - 1e-6) && rel <= opt * 1.01, "error %.6f, optimum %.6f", rel, opt);

    CHECK_INT(alloy_lora_factor(t, ROWS, COLS, K, 0.8, ca, cb, &crel, &copt, &err), 0);
    double v[NV];
    for (int e = 0; e < ROWS * K; e++) v[e] = b[e];
    for (int e = 0; e < K * COLS; e++) v[ROWS * K + e] = a[e];
    qsort(v, NV, sizeof *v, cmp_asc);
    double pos = 0.8 * (NV - 1), h = v[(int)pos] + (v[(int)pos + 1] - v[(int)pos]) * (pos - floor(pos));
    for (int e = 0; e < K * COLS; e++) CHECK_NEAR(ca[e], fmin(fmax(a[e], -h), h), 1e-6);
    for (int e = 0; e < ROWS * K; e++) CHECK_NEAR(cb[e], fmin(fmax(b[e], -h), h), 1e-6);
    CHECK(crel > rel && copt == opt); /* the clamp costs accuracy, and the card shows it */
    free(t);
}
