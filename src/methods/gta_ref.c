/*
 * gta_ref.c — the task-arithmetic family computed the naive way: whole
 * tensors in memory, in double, each step of spec §1.6 / §1.6.1 written
 * out once (gta.h's pipeline), for tests to compare the streaming code
 * with.
 *
 * DESIGN
 *   No chunks, no selections, no kernels: the magnitude and outlier masks
 *   come from sorting the whole task vector (|delta| descending, lower
 *   index first: select.h's total order), DELLA's ranks from sorting each
 *   row (equal magnitudes share their mean rank), the random draws from
 *   the same counter-based hash the methods use (core/internal.h), so the
 *   keep decisions are exactly the methods'. Then the L1 rescale, the
 *   weights, the "sum" sign consensus (or the plain sum), normalize and
 *   lambda, per element, in double. The streaming code keeps deltas in
 *   float32, so results agree within float32 rounding, not bit for bit.
 *   Quadratic memory is fine here: tests run it on small tensors.
 */
#include "methods/gta_ref.h"

#include "core/internal.h"

#include <math.h>
#include <stdlib.h>

struct ord {
    double a;
    size_t idx;
};

static int ord_desc(const void *x, const void *y) /* |delta| descending, lower index first */
{
    const struct ord *p = x, *q = y;
    if (p->a != q->a) return p->a > q->a ? -1 : 1;
    return p->idx < q->idx ? -1 : (p->idx > q->idx);
}

static int ord_asc(const void *x, const void *y) { return ord_desc(y, x); } /* the exact reverse order */

/* The draw of element e against probability p: its 32 random bits x (a half of one 64-bit hash per two
 * elements) compared as x < ceil(p * 2^32), the methods' integer form of u < p. */
static int ref_draw(uint64_t key, uint64_t e, double p)
{
    uint64_t h = alloy_rng_u64(key, e >> 1), x = (e & 1) ? h >> 32 : h & 0xffffffffu;
    double t = p * 0x1p32;
    if (!(t > 0)) return 0;
    return t >= 0x1p32 || (double)x < ceil(t);
}

/* Magnitude (top k of |d|) and outliers (ascending places [n_bot, N - n_top)) masks. */
static void keep_ranked(enum gta_sparsify sp, double density, double gamma, size_t N, const double *d,
                        unsigned char *keep)
{
    struct ord *o = malloc(N * sizeof *o);
    for (size_t e = 0; e < N; e++) o[e] = (struct ord){fabs(d[e]), e};
    if (sp == GTA_SPARSIFY_MAGNITUDE) {
        size_t k = (size_t)(density * (double)N); /* k == 0: keep nothing (mergekit asserts) */
        qsort(o, N, sizeof *o, ord_desc);
        for (size_t r = 0; r < k; r++) keep[o[r].idx] = 1;
    } else {
        long long target = (long long)(density * (double)N), n_top = (long long)(gamma * (double)N);
        long long n_bot = (long long)N - target - n_top;
        if (n_bot < 0) {
            n_top += n_bot;
            n_bot = 0;
        }
        qsort(o, N, sizeof *o, ord_asc);
        for (long long r = n_bot; r < (long long)N - n_top; r++) keep[o[r].idx] = 1;
    }
    free(o);
}

/* DELLA: per row, keep with p = (density - eps) + eps (s - 1) / (cols - 1), s = first + last - 1 for the
 * group of equal |d| at 1-based ascending ranks first..last (twice the mean rank, less 1). */
static void keep_della(double density, double eps, uint64_t key, size_t rows, size_t cols, const double *d,
                       unsigned char *keep)
{
    struct ord *o = malloc(cols * sizeof *o);
    for (size_t r = 0; r < rows; r++) {
        const double *dr = d + r * cols;
        if (cols < 2) { /* mergekit: 0/0 rank normalisation, p = density */
            for (size_t j = 0; j < cols; j++) keep[r * cols + j] = (unsigned char)ref_draw(key, r * cols + j, density);
            continue;
        }
        for (size_t j = 0; j < cols; j++) o[j] = (struct ord){fabs(dr[j]), j};
        qsort(o, cols, sizeof *o, ord_asc);
        for (size_t p = 0, q; p < cols; p = q) {
            for (q = p + 1; q < cols && o[q].a == o[p].a; q++) {}
            size_t s = (p + 1) + q - 1;
            double prob = (density - eps) + eps * (double)(s - 1) / (double)(cols - 1);
            for (size_t i = p; i < q; i++) {
                size_t e = r * cols + o[i].idx;
                keep[e] = (unsigned char)ref_draw(key, e, prob);
            }
        }
    }
    free(o);
}

/* Task vector i sparsified (mask, or the method's own decisions) and L1-rescaled, in place. */
static void sparsify(const struct gta_ref *r, int i, size_t N, double *d)
{
    double density = isnan(r->density[i]) ? 1.0 : r->density[i];
    if (r->sparsify == GTA_SPARSIFY_NONE || density >= 1) return;
    unsigned char *keep = calloc(N, 1);
    const double gamma = isnan(r->extra[i]) ? 0.01 : r->extra[i], eps = isnan(r->extra[i]) ? 0.15 : r->extra[i];
    const uint64_t key = alloy_rng_key(r->seed, r->name, ((uint64_t)r->sparsify << 32) | (uint64_t)i);
    if (r->mask && r->mask[i]) {
        memcpy(keep, r->mask[i], N);
    } else if (density <= 0) {
        /* keep nothing */
    } else if (r->sparsify == GTA_SPARSIFY_RANDOM) {
        for (size_t e = 0; e < N; e++) keep[e] = (unsigned char)ref_draw(key, e, density);
    } else if (r->sparsify == GTA_SPARSIFY_DELLA) {
        keep_della(density, eps, key, (size_t)r->rows, (size_t)r->cols, d, keep);
    } else {
        keep_ranked(r->sparsify, density, gamma, N, d, keep);
    }
    double before = 0, after = 0;
    for (size_t e = 0; e < N; e++) {
        before += fabs(d[e]);
        if (!keep[e]) d[e] = 0;
        after += fabs(d[e]);
    }
    if (r->rescale && before >= 1e-7 && after >= 1e-7)
        for (size_t e = 0; e < N; e++) d[e] *= before / after;
    free(keep);
}

void gta_ref_merge(const struct gta_ref *r, const float *const *in, double *out)
{
    const size_t N = (size_t)(r->rows * r->cols);
    double *delta[GTA_MAX_MODELS + 1] = {0};
    double wsum = 0;
    for (int i = 0; i < r->n; i++) { /* the task vectors, sparsified */
        if (i == r->base) continue;
        delta[i] = malloc((N ? N : 1) * sizeof(double));
        for (size_t e = 0; e < N; e++) delta[i][e] = (double)in[i][e] - (double)in[r->base][e];
        sparsify(r, i, N, delta[i]);
        wsum += r->w[i];
    }
    for (size_t e = 0; e < N; e++) { /* elect the sign, merge the agreeing entries */
        double S = 0, num = 0, Z = 0;
        for (int i = 0; i < r->n; i++)
            if (i != r->base) S += r->w[i] * delta[i][e];
        if (r->consensus) {
            int sigma = S >= 0 ? 1 : -1;
            for (int i = 0; i < r->n; i++) {
                if (i == r->base) continue;
                double D = r->w[i] * delta[i][e];
                int sg = D > 0 ? 1 : (D < 0 ? -1 : 0);
                if (sg == sigma) {
                    num += D;
                    Z += r->w[i];
                }
            }
            if (Z == 0) Z = 1;
        } else {
            num = S;
            Z = fabs(wsum) < 1e-8 ? 1 : wsum;
        }
        if (r->normalize) num /= Z;
        out[e] = (double)in[r->base][e] + r->lambda * num;
    }
    for (int i = 0; i < r->n; i++) free(delta[i]);
}
