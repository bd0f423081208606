/*
 * extract_run.c — the work of `alloy lora extract` once it is planned
 * (extract.c): factoring each module's delta, then writing the adapter.
 *
 * DESIGN
 *   factor_one() is one worker's item: read both tensors widened to
 *   float32, Δ = W_ft − W_base (transposed for an embedding, so that
 *   lora_embedding_A is [r, vocab] and lora_embedding_B [dim, r] as PEFT
 *   stores them), a truncated SVD Δ ≈ U S Vt at k = min(max_rank, m, n), then
 *     r = k, cut to #{σ > --sv-epsilon} and to the smallest r whose
 *         Σ_{j<=r} σ_j² reaches --rank-energy × ‖Δ‖²;
 *     A = sqrt(S_r) Vt_r, B = U_r sqrt(S_r)   (--distribute-scale, default)
 *     A = S_r Vt_r,       B = U_r             (--no-distribute-scale).
 *   The card's numbers: the kept energy Σ_{j<=r} σ_j² / ‖Δ‖² from the same
 *   SVD, and the relative error ‖Δ − B·A‖ / ‖Δ‖ measured with one more
 *   GEMM (sqrt(1 − kept) in exact arithmetic, but that difference loses
 *   every digit to rounding when the kept energy is close to 1).
 *   A rank cut to 0 is an error (PEFT refuses rank 0), never an adapter.
 *
 *   Writing goes through adapter_write.c in the fine-tune's tensor order.
 */
#include "lora/extract.h"

#include "linalg/svd.h"
#include "lora/adapter_write.h"

#include <math.h>
#include <stdio.h>

#include <cblas.h>

static int nomem(struct alloy_err *err) { return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); }

/* The whole of t widened to float32 (malloc'd into *out). */
static int read_f32(const struct alloy_tensor *t, float **out, struct alloy_err *err)
{
    void *raw = alloy_xmalloc(t->nbytes ? t->nbytes : 1);
    float *f = alloy_xmalloc(sizeof(float) * (t->numel ? t->numel : 1));
    int rc = raw && f ? alloy_tensor_pread(t, 0, raw, t->nbytes, err) : nomem(err);
    if (!rc) alloy_to_f32(t->dtype, raw, f, t->numel);
    free(raw);
    if (rc) free(f);
    *out = rc ? NULL : f;
    return rc;
}

/* Δ = ft − base as an m x n matrix (an embedding [vocab, dim] transposed to [dim, vocab]); ‖Δ‖² in *norm2. */
static int read_delta(const struct alloy_extract_item *it, float **out, double *norm2, struct alloy_err *err)
{
    float *f = NULL, *b = NULL;
    int rc = read_f32(it->ft, &f, err);
    if (!rc) rc = read_f32(it->base, &b, err);
    uint64_t rows = (uint64_t)it->ft->shape[0], cols = (uint64_t)it->ft->shape[1];
    double s2 = 0;
    for (uint64_t i = 0; !rc && i < rows * cols; i++) {
        b[i] = f[i] - b[i];
        s2 += (double)b[i] * b[i];
    }
    if (!rc && it->kind == ALLOY_EXTRACT_EMBEDDING) { /* transpose into f */
        for (uint64_t i = 0; i < rows; i++)
            for (uint64_t j = 0; j < cols; j++) f[j * rows + i] = b[i * cols + j];
        float *t = f;
        f = b;
        b = t;
    }
    free(f);
    *out = rc ? NULL : b;
    if (rc) free(b);
    *norm2 = s2;
    return rc;
}

/* The rank kept of the k singular values s (descending), given ‖Δ‖² (see the file comment). */
static uint32_t choose_rank(const struct alloy_lora_extract_options *o, const float *s, size_t k, double norm2)
{
    size_t r = k;
    if (o->sv_epsilon > 0) {
        size_t above = 0;
        while (above < k && s[above] > o->sv_epsilon) above++;
        r = above;
    }
    if (o->rank_energy > 0) {
        double acc = 0, want = o->rank_energy * norm2;
        size_t need = 0;
        while (need < k && (need == 0 || acc < want)) {
            acc += (double)s[need] * s[need];
            need++;
        }
        if (need < r) r = need;
    }
    return (uint32_t)r;
}

/* A = diag(d_a) Vt_r, B = U_r diag(d_b): the split of S between the factors. */
static void build_factors(struct alloy_extract_item *it, const float *u, const float *s, const float *vt, size_t k,
                          int distribute)
{
    size_t r = it->rank, m = it->m, n = it->n;
    for (size_t j = 0; j < r; j++) {
        float da = distribute ? sqrtf(s[j]) : s[j];
        for (size_t c = 0; c < n; c++) it->a[j * n + c] = da * vt[j * n + c];
    }
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < r; j++) it->b[i * r + j] = (distribute ? sqrtf(s[j]) : 1.0f) * u[i * k + j];
}

/* ‖Δ − B·A‖_F, measured (d, holding Δ, is overwritten with the residual). */
static double residual(const struct alloy_extract_item *it, float *d)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)it->m, (int)it->n, (int)it->rank, -1.0f, it->b,
                (int)it->rank, it->a, (int)it->n, 1.0f, d, (int)it->n);
    double e2 = 0;
    for (uint64_t i = 0; i < it->m * it->n; i++) e2 += (double)d[i] * d[i];
    return sqrt(e2);
}

static int factor_one(const struct alloy_extract *x, struct alloy_extract_item *it, struct alloy_err *err)
{
    if (alloy_blas_room(err)) return (int)err->status;
    const struct alloy_lora_extract_options *o = x->o;
    const char *file = alloy_tensor_file_path(it->ft->file);
    float *d = NULL;
    double norm2 = 0;
    int rc = read_delta(it, &d, &norm2, err);
    if (rc) return rc;
    it->m = (uint64_t)it->ft->shape[it->kind == ALLOY_EXTRACT_EMBEDDING];
    it->n = (uint64_t)it->ft->shape[it->kind != ALLOY_EXTRACT_EMBEDDING];
    size_t mn = it->m < it->n ? it->m : it->n, k = (size_t)o->max_rank < mn ? (size_t)o->max_rank : mn;
    float *u = alloy_xmalloc(sizeof(float) * (it->m * k + 1)), *s = alloy_xmalloc(sizeof(float) * (k + 1));
    float *vt = alloy_xmalloc(sizeof(float) * (k * it->n + 1));
    struct alloy_err inner = {0};
    if (!u || !s || !vt) rc = nomem(err);
    else if (alloy_svd_truncated(d, it->m, it->n, k, u, s, vt, NULL, &inner))
        rc = alloy_err_set(err, inner.status, "%s: %s: %s", file, it->ft->name, inner.msg);
    if (!rc && (it->rank = choose_rank(o, s, k, norm2)) == 0)
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: %s: a LoRA rank >= 1 expected, found 0 (every singular value of "
                           "the delta is <= --sv-epsilon %g; exclude the module with -e or lower --sv-epsilon)", file,
                           it->ft->name, o->sv_epsilon);
    if (!rc && (!(it->a = alloy_xmalloc(sizeof(float) * it->rank * it->n)) ||
                !(it->b = alloy_xmalloc(sizeof(float) * it->m * it->rank))))
        rc = nomem(err);
    if (!rc) {
        build_factors(it, u, s, vt, k, o->distribute_scale);
        double kept = 0;
        for (size_t j = 0; j < it->rank; j++) kept += (double)s[j] * s[j];
        it->kept = norm2 > 0 ? fmin(1.0, kept / norm2) : 1.0;
        it->rel_error = norm2 > 0 ? residual(it, d) / sqrt(norm2) : 0.0;
    }
    free(d);
    free(u);
    free(s);
    free(vt);
    return rc;
}

static int is_lora(const struct alloy_extract_item *it)
{
    return it->kind == ALLOY_EXTRACT_LINEAR || it->kind == ALLOY_EXTRACT_EMBEDDING;
}

static void factor_item(void *ctx, size_t i, int ith)
{
    struct alloy_extract *x = ctx;
    struct alloy_extract_item *it = &x->items[i];
    (void)ith;
    if (!is_lora(it)) return;
    if (x->o->interrupt && *x->o->interrupt) {
        alloy_err_set(&it->err, ALLOY_ERR_INTERRUPTED, "interrupted");
        return;
    }
    factor_one(x, it, &it->err);
}

int alloy_extract_factor_all(struct alloy_extract *x, int nworkers, struct alloy_err *err)
{
    struct alloy_pool *pool = alloy_pool_new(nworkers);
    if (!pool) return nomem(err);
#ifdef ALLOY_HAVE_OPENBLAS /* modules run in parallel: one BLAS thread each */
    int saved_blas = openblas_get_num_threads();
    if (nworkers > 1) openblas_set_num_threads(1);
#endif
    alloy_pool_for(pool, x->nitems, factor_item, x);
#ifdef ALLOY_HAVE_OPENBLAS
    openblas_set_num_threads(saved_blas);
#endif
    alloy_pool_free(pool);
    for (size_t i = 0; i < x->nitems; i++)
        if (x->items[i].err.status) {
            *err = x->items[i].err;
            return err->status;
        }
    return ALLOY_OK;
}

/* ------------------------------------------------------------ writing */

/* 1 when a LoRA module's last name component also names a module without a LoRA: target_modules must
 * then list full paths, or PEFT would put a LoRA there too. */
static int needs_exact_targets(const struct alloy_extract *x)
{
    for (size_t i = 0; i < x->nitems; i++) {
        if (!is_lora(&x->items[i])) continue;
        const char *dot = strrchr(x->items[i].module, '.'), *li = dot ? dot + 1 : x->items[i].module;
        for (size_t j = 0; j < x->nitems; j++) {
            const char *dj = strrchr(x->items[j].module, '.'), *lj = dj ? dj + 1 : x->items[j].module;
            if (!is_lora(&x->items[j]) && x->items[j].kind != ALLOY_EXTRACT_BIAS && !strcmp(li, lj)) return 1;
        }
    }
    return 0;
}

static char *card_text(const struct alloy_extract *x)
{
    const struct alloy_lora_extract_options *o = x->o;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    fprintf(f, "---\nlibrary_name: peft\nbase_model: %s\ntags:\n- alloy\n- lora\n- peft\n---\n\n", o->base_model);
    fprintf(f, "# LoRA adapter extracted by alloy\n\n"
               "`alloy lora extract --model %s --base-model %s --max-rank %d`: each module's delta\n"
               "W_model - W_base factored by a truncated SVD; every scaling lora_alpha / r is 1.\n"
               "Kept energy is the fraction of ||delta||^2 the rank keeps; the relative error is\n"
               "||delta - B A||_F / ||delta||_F, measured with the float32 factors.\n\n"
               "| module | rank | kept energy | relative error |\n|---|---:|---:|---:|\n",
            o->model, o->base_model, o->max_rank);
    for (size_t i = 0; i < x->nitems; i++)
        if (is_lora(&x->items[i]))
            fprintf(f, "| %s | %u | %.6f | %.6f |\n", x->items[i].module, x->items[i].rank, x->items[i].kept,
                    x->items[i].rel_error);
    int any = 0;
    for (size_t i = 0; i < x->nitems; i++)
        if (x->items[i].kind == ALLOY_EXTRACT_FULL)
            fprintf(f, "%s`%s`", any++ ? ", " : "\nSaved in full (modules_to_save): ", x->items[i].module);
    fprintf(f, any ? ".\n" : "");
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* A changed bias (after its module): the delta for a LoRA module, the fine-tune's for a module saved in full. */
static int write_bias(struct alloy_adapter_writer *w, const struct alloy_extract *x,
                      const struct alloy_extract_item *it, struct alloy_err *err)
{
    const struct alloy_extract_item *mod = NULL;
    for (size_t j = 0; j < x->nitems && !mod; j++)
        if (x->items[j].kind != ALLOY_EXTRACT_BIAS && !strcmp(x->items[j].module, it->module)) mod = &x->items[j];
    if (!mod || mod->kind == ALLOY_EXTRACT_SKIP) return ALLOY_OK; /* resolve_biases let only these through */
    float *f = NULL, *b = NULL;
    int rc = read_f32(it->ft, &f, err);
    if (!rc && mod->kind == ALLOY_EXTRACT_LINEAR) rc = read_f32(it->base, &b, err);
    for (uint64_t i = 0; !rc && b && i < it->ft->numel; i++) f[i] -= b[i];
    if (!rc) rc = alloy_adapter_writer_bias(w, it->module, f, it->ft->numel, it->ft->dtype, err);
    free(f);
    free(b);
    return rc;
}

static int write_item(struct alloy_adapter_writer *w, const struct alloy_extract_item *it, struct alloy_err *err)
{
    if (is_lora(it))
        return alloy_adapter_writer_module(w, it->module, it->kind == ALLOY_EXTRACT_EMBEDDING ? ALLOY_LORA_EMBEDDING
                                           : ALLOY_LORA_LINEAR, it->rank, (double)it->rank, it->a, it->n, it->b,
                                           it->m, err);
    if (it->kind != ALLOY_EXTRACT_FULL) return ALLOY_OK;
    float *data;
    int rc = read_f32(it->ft, &data, err);
    if (!rc) rc = alloy_adapter_writer_full(w, it->module, data, it->ft->ndim, it->ft->shape, it->ft->dtype, err);
    free(data);
    return rc;
}

int alloy_extract_write(struct alloy_extract *x, struct alloy_err *err)
{
    const struct alloy_lora_extract_options *o = x->o;
    uint32_t rmax = 0;
    size_t nlora = 0, nfull = 0;
    for (size_t i = 0; i < x->nitems; i++) {
        if (is_lora(&x->items[i]) && x->items[i].rank > rmax) rmax = x->items[i].rank;
        nlora += is_lora(&x->items[i]);
        nfull += x->items[i].kind == ALLOY_EXTRACT_FULL;
    }
    if (!nlora)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: modules to extract: at least one 2-D weight expected, found "
                             "none (every module is excluded or saved in full)", alloy_model_dir(x->ft));
    const struct alloy_model *inputs[2] = {x->ft, x->base};
    struct alloy_adapter_spec spec = {o->base_model, rmax, (double)rmax, 0, o->lora_dtype, o->overwrite, inputs, 2};
    struct alloy_adapter_writer *w;
    int rc = alloy_adapter_writer_new(o->out_dir, &spec, &w, err);
    if (rc) return rc;
    alloy_adapter_writer_exact_targets(w, needs_exact_targets(x));
    for (size_t i = 0; !rc && i < x->nitems; i++) rc = write_item(w, &x->items[i], err);
    for (size_t i = 0; !rc && i < x->nitems; i++)
        if (x->items[i].kind == ALLOY_EXTRACT_BIAS) rc = write_bias(w, x, &x->items[i], err);
    char *card = !rc && o->write_card ? card_text(x) : NULL;
    if (!rc && o->write_card && !card) rc = nomem(err);
    if (!rc) rc = alloy_adapter_writer_commit(w, card, err);
    free(card);
    alloy_adapter_writer_free(w);
    if (!rc && o->log) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s: %zu modules as LoRA (largest rank %u), %zu saved in full", o->out_dir, nlora,
                 rmax, nfull);
        o->log(o->log_user, 1, msg);
    }
    return rc;
}
