/*
 * test_matrix.c — the matrix kind of method (src/engine/matrix.c): whole
 * inputs loaded through the load callback in chunks across chunk boundaries,
 * one call with BLAS, the result stored in chunks; a method's error and the
 * memory budget are reported with the tensor's name; non-matrices refused.
 */
#include "test.h"
#include "methods/method.h"

#include <cblas.h>
#include <stdlib.h>

/* out = X0 + X1 (X1^T X0) / cols: a real whole-matrix product (through BLAS), checked naively below. */
static int project(const struct alloy_merge_job *job, const float *const *x, float *out, struct alloy_err *err)
{
    int r = (int)job->rows, c = (int)job->cols;
    float *g = malloc((size_t)c * (size_t)c * sizeof *g);
    if (!g) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c, c, r, 1.0f / (float)c, x[1], c, x[0], c, 0.0f, g, c);
    memcpy(out, x[0], job->numel * sizeof *out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, c, c, 1.0f, x[1], c, g, c, 1.0f, out, c);
    free(g);
    return ALLOY_OK;
}

static int refuse(const struct alloy_merge_job *job, const float *const *x, float *out, struct alloy_err *err)
{
    return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "tensor '%s': the fit did not converge", job->name);
}

static uint64_t scratch(const struct alloy_merge_job *job) { return job->cols * job->cols * sizeof(float); }

static const struct alloy_method g_project = {.name = "test_project", .kind = ALLOY_METHOD_MATRIX, .matrix = project,
                                              .matrix_scratch = scratch};
static const struct alloy_method g_refuse = {.name = "test_refuse", .kind = ALLOY_METHOD_MATRIX, .matrix = refuse};

struct mem { const float *const *in; float *out; int loads; };

static int mem_load(void *ctx, int input, uint64_t e0, uint64_t e1, float *dst, int raw, struct alloy_err *err)
{
    struct mem *m = ctx;
    __atomic_add_fetch(&m->loads, 1, __ATOMIC_RELAXED);
    memcpy(dst, m->in[input] + e0, (size_t)(e1 - e0) * sizeof *dst);
    return ALLOY_OK;
}

static int mem_store(void *ctx, uint64_t e0, uint64_t e1, float *src, struct alloy_err *err)
{
    struct mem *m = ctx;
    memcpy(m->out + e0, src, (size_t)(e1 - e0) * sizeof *src);
    return ALLOY_OK;
}

TEST(matrix_method_whole_tensors)
{
    enum { R = 520, C = 512 }; /* 266,240 elements: two load chunks each */
    float *a = malloc(sizeof(float) * R * C), *b = malloc(sizeof(float) * R * C), *out = calloc(R * C, sizeof(float));
    for (int i = 0; i < R * C; i++) a[i] = (float)(((uint64_t)i * 7919) % 97) / 97.0f - 0.5f, b[i] = (float)(((uint64_t)i * 104729) % 89) / 89.0f - 0.5f;
    const float *in[2] = {a, b};
    int64_t shape[2] = {R, C};
    struct alloy_merge_job job = {.name = "w", .ndim = 2, .shape = shape, .numel = R * C, .rows = R, .cols = C, .n = 2};
    struct mem io = {in, out, 0};
    struct alloy_pool *pool = alloy_pool_new(2);
    struct alloy_err err = {0};
    CHECK_MSG(alloy_matrix_execute(&g_project, &job, mem_load, &io, mem_store, &io, pool, 0, &err) == 0, "%s", err.msg);
    CHECK_INT(io.loads, 4);
    double *g = calloc((size_t)C * C, sizeof *g), worst = 0; /* naive: G = B^T A / C, out = A + B G */
    for (int k = 0; k < R; k++)
        for (int i = 0; i < C; i++)
            for (int j = 0; j < C; j++) g[i * C + j] += (double)b[k * C + i] * a[k * C + j] / C;
    for (int r = 0; r < R; r += 37)
        for (int j = 0; j < C; j++) {
            double want = a[r * C + j];
            for (int i = 0; i < C; i++) want += (double)b[r * C + i] * g[i * C + j];
            double d = fabs(want - out[r * C + j]);
            if (d > worst) worst = d;
        }
    CHECK_MSG(worst < 1e-3, "largest difference from the naive product: %g", worst);
    free(g);

    /* the method's error, the budget, and a non-matrix, each named */
    CHECK_INT(alloy_matrix_execute(&g_refuse, &job, mem_load, &io, mem_store, &io, pool, 0, &err), ALLOY_ERR_UNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "did not converge");
    CHECK_INT(alloy_matrix_execute(&g_project, &job, mem_load, &io, mem_store, &io, pool, (uint64_t)3 << 20, &err),
              ALLOY_ERR_UNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "tensor 'w'");
    CHECK_STR_CONTAINS(err.msg, "budget of 3.0 MiB");
    job.ndim = 1;
    CHECK_INT(alloy_matrix_execute(&g_project, &job, mem_load, &io, mem_store, &io, pool, 0, &err), ALLOY_ERR_SHAPE);
    CHECK_STR_CONTAINS(err.msg, "2-D");
    alloy_pool_free(pool);
    free(a);
    free(b);
    free(out);
}
