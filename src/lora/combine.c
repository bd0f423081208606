/*
 * combine.c — PEFT's adapter combination types on float arrays (combine.h
 * has the formulas): the method table, magnitude and random pruning, the
 * TIES sign election, and the three ways a module's parts become one LoRA
 * (cat, A/B-separate, the SVD types' dense target).
 *
 * DESIGN
 *   Magnitude pruning finds the k-th largest |x| by a two-level radix
 *   selection on the bits of |x| (for non-negative floats the unsigned order
 *   of the bits is the float order, NaN above Inf): a histogram of the high
 *   16 bits over all elements, then one of the low 16 bits over the elements
 *   of the chosen bin. Two passes, O(n), no copy of the data, and an exact
 *   k kept whatever the ties (the lowest indices among equal magnitudes
 *   win; torch.topk leaves that order unspecified).
 */
#include "lora/combine.h"
#include "linalg/svd.h"

#include <cblas.h>
#include <inttypes.h>
#include <math.h>

static const struct alloy_lora_method methods[] = {
    {"cat", 1, 0, ALLOY_LORA_PRUNE_NONE, 0},
    {"linear", 0, 0, ALLOY_LORA_PRUNE_NONE, 0},
    {"ties", 0, 0, ALLOY_LORA_PRUNE_MAGNITUDE, 1},
    {"dare_linear", 0, 0, ALLOY_LORA_PRUNE_RANDOM, 0},
    {"dare_ties", 0, 0, ALLOY_LORA_PRUNE_RANDOM, 1},
    {"magnitude_prune", 0, 0, ALLOY_LORA_PRUNE_MAGNITUDE, 0},
    {"svd", 0, 1, ALLOY_LORA_PRUNE_NONE, 0},
    {"ties_svd", 0, 1, ALLOY_LORA_PRUNE_MAGNITUDE, 1},
    {"dare_linear_svd", 0, 1, ALLOY_LORA_PRUNE_RANDOM, 0},
    {"dare_ties_svd", 0, 1, ALLOY_LORA_PRUNE_RANDOM, 1},
    {"magnitude_prune_svd", 0, 1, ALLOY_LORA_PRUNE_MAGNITUDE, 0},
};

const char alloy_lora_method_names[] = "cat, linear, ties, dare_linear, dare_ties, magnitude_prune, svd, ties_svd, "
                                       "dare_linear_svd, dare_ties_svd, magnitude_prune_svd";

const struct alloy_lora_method *alloy_lora_method_find(const char *name)
{
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(methods); i++)
        if (strcmp(methods[i].name, name) == 0) return &methods[i];
    return NULL;
}

/* ---------------------------------------------------------------- pruning */

#define RADIX_BINS 65536

static inline uint32_t mag_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x7fffffffu;
}

/* The bin holding the k-th largest key, counting down from the top; *above: keys in higher bins (updated). */
static uint32_t kth_bin(const size_t *hist, size_t k, size_t *above)
{
    uint32_t bin = RADIX_BINS - 1;
    while (*above + hist[bin] < k) *above += hist[bin--];
    return bin;
}

int alloy_lora_prune_magnitude(float *x, size_t n, double density, struct alloy_err *err)
{
    if (density >= 1.0) return 0;
    size_t k = density > 0 ? (size_t)(density * (double)n) : 0;
    if (k >= n) return 0;
    if (k == 0) {
        memset(x, 0, n * sizeof *x);
        return 0;
    }
    size_t *hist = alloy_xcalloc(RADIX_BINS, sizeof *hist), above = 0;
    if (!hist) return alloy_err_set(err, ALLOY_ERR_NOMEM, "magnitude pruning: out of memory");
    for (size_t e = 0; e < n; e++) hist[mag_key(x[e]) >> 16]++;
    uint32_t hi = kth_bin(hist, k, &above);
    memset(hist, 0, RADIX_BINS * sizeof *hist);
    for (size_t e = 0; e < n; e++) {
        uint32_t key = mag_key(x[e]);
        if (key >> 16 == hi) hist[key & 0xffffu]++;
    }
    uint32_t thr = hi << 16 | kth_bin(hist, k, &above);
    free(hist);
    size_t ties = k - above; /* keys == thr still kept, lowest index first */
    for (size_t e = 0; e < n; e++) {
        uint32_t key = mag_key(x[e]);
        if (key > thr) continue;
        if (key == thr && ties) {
            ties--;
            continue;
        }
        x[e] = 0.0f;
    }
    return 0;
}

void alloy_lora_prune_random(float *x, size_t n, double density, uint64_t key)
{
    if (density >= 1.0) return;
    for (size_t e = 0; e < n; e++) x[e] = alloy_rng_uniform(key, e) < density ? (float)(x[e] / density) : 0.0f;
}

/* ---------------------------------------------------------------- mixing a list */

static void weighted_sum(float *const *t, const double *w, size_t nt, size_t n, float *out)
{
    for (size_t e = 0; e < n; e++) {
        double s = 0;
        for (size_t i = 0; i < nt; i++) s += w[i] * t[i][e];
        out[e] = (float)s;
    }
}

/* TIES: elect a sign per element, keep the tensors that agree, divide by how many do. */
static void ties_sum(float *const *t, const double *w, size_t nt, size_t n, int frequency, float *out)
{
    for (size_t e = 0; e < n; e++) {
        double elect = 0;
        for (size_t i = 0; i < nt; i++) {
            float v = t[i][e];
            elect += frequency ? (double)((v > 0) - (v < 0)) : (double)v;
        }
        int pos = elect >= 0;
        double s = 0;
        size_t agree = 0;
        for (size_t i = 0; i < nt; i++) {
            float v = t[i][e];
            if (pos ? v > 0 : v < 0) {
                s += w[i] * v;
                agree++;
            }
        }
        out[e] = agree ? (float)(s / (double)agree) : 0.0f;
    }
}

int alloy_lora_mix(const struct alloy_lora_mix *m, float *const *t, const double *w, size_t nt, size_t n,
                   float *out, struct alloy_err *err)
{
    for (size_t i = 0; i < nt; i++) {
        if (m->prune == ALLOY_LORA_PRUNE_MAGNITUDE && alloy_lora_prune_magnitude(t[i], n, m->density, err))
            return (int)err->status;
        if (m->prune == ALLOY_LORA_PRUNE_RANDOM)
            alloy_lora_prune_random(t[i], n, m->density, alloy_rng_key(m->seed, m->name, m->stream + i));
    }
    if (m->ties) ties_sum(t, w, nt, n, m->frequency, out);
    else weighted_sum(t, w, nt, n, out);
    return 0;
}

/* ---------------------------------------------------------------- a module's parts */

void alloy_lora_cat(const struct alloy_lora_part *p, size_t np, uint64_t rows, uint64_t cols, float *a, float *b)
{
    uint64_t total = 0, off = 0;
    for (size_t i = 0; i < np; i++) total += p[i].rank;
    for (size_t i = 0; i < np; i++) {
        double c = p[i].weight * p[i].scale;
        uint64_t r = p[i].rank;
        for (uint64_t e = 0; e < r * cols; e++) a[off * cols + e] = (float)(c * p[i].a[e]);
        for (uint64_t row = 0; row < rows; row++)
            memcpy(b + row * total + off, p[i].b + row * r, r * sizeof *b);
        off += r;
    }
}

int alloy_lora_ab(const struct alloy_lora_mix *m, const struct alloy_lora_part *p, size_t np, uint64_t rows,
                  uint64_t cols, float *a, float *b, struct alloy_err *err)
{
    float **ta = alloy_xcalloc(2 * np, sizeof *ta);
    double *wa = alloy_xcalloc(2 * np, sizeof *wa);
    if (!ta || !wa) {
        free(ta);
        free(wa);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", m->name);
    }
    float **tb = ta + np;
    double *wb = wa + np;
    for (size_t i = 0; i < np; i++) {
        double c = p[i].weight * p[i].scale, root = sqrt(fabs(c));
        wa[i] = c < 0 ? -root : root; /* the sign goes on A only */
        wb[i] = root;
        ta[i] = p[i].a;
        tb[i] = p[i].b;
    }
    uint64_t r = p[0].rank;
    struct alloy_lora_mix ma = *m, mb = *m;
    ma.stream = ALLOY_LORA_STREAM_A;
    mb.stream = ALLOY_LORA_STREAM_B;
    int rc = alloy_lora_mix(&ma, ta, wa, np, r * cols, a, err);
    if (!rc) rc = alloy_lora_mix(&mb, tb, wb, np, rows * r, b, err);
    free(ta);
    free(wa);
    return rc;
}

int alloy_lora_target(const struct alloy_lora_mix *m, const struct alloy_lora_part *p, size_t np, uint64_t rows,
                      uint64_t cols, float *t, struct alloy_err *err)
{
    uint64_t n = rows * cols;
    float **d = alloy_xcalloc(np, sizeof *d);
    double *w = alloy_xcalloc(np, sizeof *w);
    int rc = d && w ? alloy_blas_room(err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", m->name);
    for (size_t i = 0; !rc && i < np; i++) {
        if (!(d[i] = alloy_xmalloc(n * sizeof **d))) {
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for %zu dense %" PRIu64 " x %" PRIu64
                               " deltas", m->name, np, rows, cols);
            break;
        }
        w[i] = p[i].weight;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)cols, (int)p[i].rank,
                    (float)p[i].scale, p[i].b, (int)p[i].rank, p[i].a, (int)cols, 0.0f, d[i], (int)cols);
    }
    if (!rc) {
        struct alloy_lora_mix md = *m;
        md.stream = ALLOY_LORA_STREAM_DELTA;
        rc = alloy_lora_mix(&md, d, w, np, n, t, err);
    }
    for (size_t i = 0; d && i < np; i++) free(d[i]);
    free(d);
    free(w);
    return rc;
}
