/*
 * lora.c — the computed source of a `model+adapter` tensor: W + s·B·A
 * (PEFT's merge_and_unload), produced chunk by chunk.
 *
 * DESIGN
 *   A chunk [e0, e1) of the output covers output rows r0..r1 (partly at its
 *   ends). The source reads those rows of the stored W as float32 and adds
 *   s·B[r0:r1]·A with one cblas_sgemm (beta = 1), so only the rows asked for
 *   are computed and no copy of W exists beyond the chunk:
 *     Linear     W [out, in],    A [r, in],    B [out, r]:  rows += s·B[rows]·A
 *     Embedding  E [vocab, dim], A [r, vocab], B [dim, r]:  rows += s·(A[:, rows])ᵀ·Bᵀ
 *   DoRA scales each row of V = W + s·B·A by m_o / ‖V[o, :]‖ — whole rows, which
 *   every chunk has — and for an embedding each column by m_d / ‖V[:, d]‖, a
 *   norm over the whole vocabulary: the column factors are computed once per
 *   tensor, on first use, by a pass over V in blocks of rows. lora_B.bias is
 *   the source of `<module>.bias`: b + s·bias. The small factors (A, B, the
 *   vectors) are read once per tensor, on first use by any thread (a mutex),
 *   and dropped when the engine releases the tensor. A window (an embedding
 *   cut to a common vocabulary) computes whole source rows and keeps the
 *   window's columns. Values stay float32 (rounded once by the sink) unless
 *   --lora-merge-dtype asks for mergekit's rounding: W and the applied value
 *   rounded to that dtype.
 */
#include "core/internal.h"
#include "formats/formats.h"
#include "lora/adapter.h"
#include "sources/source.h"
#include "linalg/svd.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>

struct lora_ctx {
    const struct alloy_adapter *ad;
    const struct alloy_lora_module *m;
    int bias;                 /* 1: the source of `<module>.bias` */
    int round;                /* dtype the applied values are rounded to, -1: none */
    pthread_mutex_t lock;
    int loaded;
    float *a, *b, *mag, *lbias;
    float *col_factor;        /* embedding DoRA: m_d / ‖V[:, d]‖ */
};

static void round_to(int dtype, float *x, size_t n)
{
    if (dtype == ALLOY_DTYPE_BF16)
        for (size_t i = 0; i < n; i++) x[i] = alloy_bf16_to_f32(alloy_f32_to_bf16(x[i]));
    else if (dtype == ALLOY_DTYPE_F16)
        for (size_t i = 0; i < n; i++) x[i] = alloy_f16_to_f32(alloy_f32_to_f16(x[i]));
}

/* Elements [e0, e1) of stored tensor t as float32. */
static int read_stored_range(const struct alloy_tensor *t, uint64_t e0, uint64_t e1, float *dst, struct alloy_err *err)
{
    struct alloy_input in;
    alloy_input_stored(&in, 0, t, 1, t->numel, 0);
    return alloy_input_read(&in, e0, e1, dst, ALLOY_INPUT_F32, err);
}

static float *read_whole(const struct lora_ctx *c, const struct alloy_tensor *t, int *rc, struct alloy_err *err)
{
    if (!t || *rc) return NULL;
    float *v = alloy_xmalloc((size_t)t->numel * sizeof *v);
    if (!v) *rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory reading '%s'", c->ad->weights_path, t->name);
    else if ((*rc = alloy_adapter_read_f32(c->ad, t, v, err))) {
        free(v);
        v = NULL;
    }
    return v;
}

/* Rows [r0, r1) of W + s·B·A (before DoRA) into out, (r1 - r0) x cols of W. */
static int applied_rows(const struct lora_ctx *c, const struct alloy_tensor *w, uint64_t r0, uint64_t r1, float *out,
                        struct alloy_err *err)
{
    const struct alloy_lora_module *m = c->m;
    uint64_t cols = (uint64_t)w->shape[1];
    int rc = read_stored_range(w, r0 * cols, r1 * cols, out, err);
    if (!rc) rc = alloy_blas_room(err);
    if (rc) return rc;
    if (c->round >= 0) round_to(c->round, out, (size_t)((r1 - r0) * cols));
    int nr = (int)(r1 - r0), r = (int)m->rank;
    if (m->kind == ALLOY_LORA_LINEAR)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, (int)cols, r, (float)m->scale, c->b + r0 * (uint64_t)r,
                    r, c->a, (int)cols, 1.0f, out, (int)cols);
    else
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, nr, (int)cols, r, (float)m->scale, c->a + r0,
                    (int)w->shape[0], c->b, r, 1.0f, out, (int)cols);
    return ALLOY_OK;
}

/* Embedding DoRA: the factor m_d / ‖V[:, d]‖ of every column, from one pass over V in blocks of rows. */
static int column_factors(struct lora_ctx *c, const struct alloy_tensor *w, struct alloy_err *err)
{
    uint64_t rows = (uint64_t)w->shape[0], cols = (uint64_t)w->shape[1];
    uint64_t step = cols >= (1u << 18) ? 1 : (1u << 18) / cols;
    double *sum = alloy_xcalloc((size_t)cols, sizeof *sum);
    float *blk = alloy_xmalloc((size_t)(step * cols) * sizeof *blk);
    c->col_factor = alloy_xmalloc((size_t)cols * sizeof *c->col_factor);
    int rc = sum && blk && c->col_factor ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory for '%s'", w->name);
    for (uint64_t r0 = 0; r0 < rows && !rc; r0 += step) {
        uint64_t r1 = r0 + step < rows ? r0 + step : rows;
        rc = applied_rows(c, w, r0, r1, blk, err);
        for (uint64_t i = 0; i < (r1 - r0) * cols && !rc; i++) sum[i % cols] += (double)blk[i] * blk[i];
    }
    for (uint64_t d = 0; d < cols && !rc; d++) c->col_factor[d] = (float)(c->mag[d] / sqrt(sum[d]));
    free(sum);
    free(blk);
    return rc;
}

static void drop(struct lora_ctx *c)
{
    free(c->a);
    free(c->b);
    free(c->mag);
    free(c->lbias);
    free(c->col_factor);
    c->a = c->b = c->mag = c->lbias = c->col_factor = NULL;
    c->loaded = 0;
}

/* A, B and the vectors, once per tensor (the first chunk of any thread reads them). */
static int load(struct lora_ctx *c, const struct alloy_tensor *w, struct alloy_err *err)
{
    int rc = ALLOY_OK;
    pthread_mutex_lock(&c->lock);
    if (!c->loaded) {
        if (c->bias) {
            c->lbias = read_whole(c, c->m->bias, &rc, err);
        } else {
            c->a = read_whole(c, c->m->a, &rc, err);
            c->b = read_whole(c, c->m->b, &rc, err);
            c->mag = read_whole(c, c->m->magnitude, &rc, err);
            if (!rc && c->mag && c->m->kind == ALLOY_LORA_EMBEDDING) rc = column_factors(c, w, err);
        }
        if (rc) drop(c);
        else c->loaded = 1;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static void dora_rows(const struct lora_ctx *c, uint64_t r0, uint64_t nr, uint64_t cols, float *v)
{
    for (uint64_t i = 0; i < nr; i++) {
        float *row = v + i * cols;
        if (c->m->kind == ALLOY_LORA_EMBEDDING) {
            for (uint64_t d = 0; d < cols; d++) row[d] *= c->col_factor[d];
            continue;
        }
        double ss = 0;
        for (uint64_t d = 0; d < cols; d++) ss += (double)row[d] * row[d];
        float f = (float)(c->mag[r0 + i] / sqrt(ss));
        for (uint64_t d = 0; d < cols; d++) row[d] *= f;
    }
}

static int read_bias(const struct alloy_input *s, const struct lora_ctx *c, uint64_t e0, uint64_t e1, float *dst,
                     struct alloy_err *err)
{
    int rc = read_stored_range(s->t, e0, e1, dst, err);
    if (rc) return rc;
    if (c->round >= 0) round_to(c->round, dst, (size_t)(e1 - e0));
    for (uint64_t e = e0; e < e1; e++) dst[e - e0] += (float)c->m->scale * c->lbias[e];
    if (c->round >= 0) round_to(c->round, dst, (size_t)(e1 - e0));
    return ALLOY_OK;
}

static int read_lora(const struct alloy_input *s, uint64_t e0, uint64_t e1, void *dst, enum alloy_input_mode mode,
                     struct alloy_err *err)
{
    struct lora_ctx *c = s->ctx;
    const struct alloy_tensor *w = s->t;
    (void)mode; /* never raw: alloy_input_raw_bf16 is 0 for computed sources */
    int rc = load(c, w, err);
    if (rc || e0 == e1) return rc;
    if (c->bias) return read_bias(s, c, e0, e1, dst, err);
    uint64_t wcols = (uint64_t)w->shape[1], r0 = e0 / s->cols, r1 = (e1 - 1) / s->cols + 1;
    int direct = s->cols == wcols && e0 == r0 * wcols && e1 == r1 * wcols;
    float *rows = direct ? dst : alloy_xmalloc((size_t)((r1 - r0) * wcols) * sizeof *rows);
    if (!rows) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory applying the LoRA of '%s'", w->name);
    rc = applied_rows(c, w, r0, r1, rows, err);
    if (!rc && c->mag) dora_rows(c, r0, r1 - r0, wcols, rows);
    if (!rc && c->round >= 0) round_to(c->round, rows, (size_t)((r1 - r0) * wcols));
    if (!rc && !direct) {
        float *out = dst;
        for (uint64_t e = e0; e < e1;) { /* the output's elements, from the computed rows */
            uint64_t r = e / s->cols, col = e % s->cols, run = s->cols - col;
            if (run > e1 - e) run = e1 - e;
            memcpy(out + (e - e0), rows + (r - r0) * wcols + col, (size_t)run * sizeof *out);
            e += run;
        }
    }
    if (!direct) free(rows);
    return rc;
}

static void release_lora(const struct alloy_input *s)
{
    drop(s->ctx);
    alloy_tensor_release(s->t);
}

static void free_lora(struct alloy_input *s)
{
    struct lora_ctx *c = s->ctx;
    if (!c) return;
    drop(c);
    pthread_mutex_destroy(&c->lock);
    free(c);
    s->ctx = NULL;
}

static const struct alloy_input_ops g_lora = {"lora", read_lora, release_lora, free_lora};

int alloy_input_lora(struct alloy_input *s, int model, const struct alloy_model *mod, const struct alloy_tensor *t,
                     uint64_t rows, uint64_t cols, int round_dtype)
{
    const struct alloy_adapter *ad = alloy_model_adapter(mod);
    size_t n = strlen(t->name);
    int bias = n > 5 && strcmp(t->name + n - 5, ".bias") == 0, weight = n > 7 && strcmp(t->name + n - 7, ".weight") == 0;
    if (!ad || (!bias && !weight)) return 0;
    char *module = alloy_xstrdup(t->name);
    if (!module) return -1;
    module[n - (bias ? 5 : 7)] = '\0';
    const struct alloy_lora_module *m = alloy_adapter_module(ad, module);
    free(module);
    if (!m || (bias && !m->bias)) return 0;
    struct lora_ctx *c = alloy_xcalloc(1, sizeof *c);
    if (!c) return -1;
    *c = (struct lora_ctx){.ad = ad, .m = m, .bias = bias, .round = round_dtype};
    pthread_mutex_init(&c->lock, NULL);
    *s = (struct alloy_input){.ops = &g_lora, .model = model, .t = t, .rows = rows, .cols = cols, .ctx = c};
    return 1;
}

int alloy_input_is_lora(const struct alloy_input *s) { return s->ops == &g_lora; }

int alloy_model_read_f32(const struct alloy_model *mod, const struct alloy_tensor *t, float *dst, struct alloy_err *err)
{
    uint64_t cols = t->ndim ? (uint64_t)t->shape[t->ndim - 1] : 1, rows = cols ? t->numel / cols : 0;
    struct alloy_input in;
    int rc, is = alloy_input_lora(&in, 0, mod, t, rows, cols, -1);
    if (is < 0) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory reading '%s'", t->name);
    if (!is) alloy_input_stored(&in, 0, t, rows, cols, 0);
    rc = t->numel ? alloy_input_read(&in, 0, t->numel, dst, ALLOY_INPUT_F32, err) : ALLOY_OK;
    alloy_input_release(&in);
    alloy_input_free(&in);
    return rc;
}
