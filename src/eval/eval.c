/*
 * eval.c — the windowed perplexity driver behind `alloy eval`.
 *
 * DESIGN
 *   Token ids are cut into non-overlapping windows of ctx tokens (a trailing
 *   partial window is dropped). A window c[0..n-1] is scored as
 *     with BOS:    input [bos, c0..c(n-2)] at positions 0..n-1, targets c0..c(n-1)
 *     without BOS: input c0..c(n-1), targets c1..c(n-1) (the first token is context)
 *   Windows are grouped into batches of about 512 tokens (one sgemm per
 *   linear layer covers the whole batch) and batches are spread over the
 *   thread pool, each worker calling BLAS single-threaded (OpenBLAS results
 *   change with its thread count; this way they do not). A text shorter
 *   than two batches therefore runs on one core.
 *
 * INVARIANTS
 *   - Each window's NLL sum is a float64 stored in its own slot, and the
 *     slots are added in window order, so the result does not depend on the
 *     thread count or on scheduling.
 *   - Progress is reported from the calling thread only, between chunks.
 */
#include "eval/eval.h"
#include "core/internal.h"
#include "linalg/svd.h"

#include <cblas.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <time.h>

#define BATCH_TOKENS 512

void alloy_eval_options_init(struct alloy_eval_options *o)
{
    memset(o, 0, sizeof *o);
    o->bos = -2;
}

int alloy_eval_default_ctx(const struct alloy_llama_config *cfg)
{
    int c = cfg->max_position_embeddings / 2;
    if (c > 512) c = 512;
    if (c < 2) c = 2;
    return c;
}

int alloy_eval_bos(const struct alloy_llama *m, int bos)
{
    return bos == -2 ? alloy_llama_cfg(m)->bos_token_id : bos < 0 ? -1 : bos;
}

struct eval_job {
    const struct alloy_llama *m;
    struct alloy_llama_ws **ws;
    int32_t **in, **tgt; /* per thread [S * ctx] */
    const int32_t *ids;
    size_t nwin, first_item;
    int ctx, S, bos;
    double *wnll;
};

static void eval_item(void *ctx, size_t item, int ith)
{
    struct eval_job *j = ctx;
    size_t w0 = (j->first_item + item) * (size_t)j->S;
    int nseq = (int)(j->nwin - w0 < (size_t)j->S ? j->nwin - w0 : (size_t)j->S);
    int n = j->ctx;
    int32_t *in = j->in[ith], *tgt = j->tgt[ith];
    for (int s = 0; s < nseq; s++) {
        const int32_t *c = j->ids + (w0 + (size_t)s) * (size_t)n;
        int32_t *x = in + (size_t)s * (size_t)n, *y = tgt + (size_t)s * (size_t)n;
        if (j->bos >= 0) {
            x[0] = j->bos;
            memcpy(x + 1, c, (size_t)(n - 1) * sizeof *x);
            memcpy(y, c, (size_t)n * sizeof *y);
        } else {
            memcpy(x, c, (size_t)n * sizeof *x);
            memcpy(y, c + 1, (size_t)(n - 1) * sizeof *y);
            y[n - 1] = -1;
        }
    }
    alloy_llama_nll(j->m, j->ws[ith], in, tgt, nseq, n, j->wnll + w0);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int alloy_eval_ids(const struct alloy_llama *m, const int32_t *ids, size_t n, const char *label,
                   const struct alloy_eval_options *o, struct alloy_eval_result *r, struct alloy_err *err)
{
    const struct alloy_llama_config *c = alloy_llama_cfg(m);
    int ctx = o->ctx > 0 ? o->ctx : alloy_eval_default_ctx(c);
    int bos = alloy_eval_bos(m, o->bos);
    memset(r, 0, sizeof *r);
    if (bos >= c->vocab_size)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: bos: id %d is outside the vocabulary (vocab_size %d)",
                             alloy_llama_dir(m), bos, c->vocab_size);
    if (bos < 0 && ctx < 2)
        return alloy_err_set(err, ALLOY_ERR_CONFIG,
                             "%s: ctx: a model without a BOS token needs windows of at least 2 tokens, got %d",
                             alloy_llama_dir(m), ctx);
    if (ctx > (1 << 20))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "ctx: expected at most %d tokens, got %d", 1 << 20, ctx);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return alloy_err_set(err, ALLOY_ERR_FORMAT,
                                 "%s: token %zu: id %d is outside the vocabulary of %s (vocab_size %d)", label, i,
                                 (int)ids[i], alloy_llama_dir(m), c->vocab_size);
    size_t nwin = n / (size_t)ctx;
    if (o->max_windows && nwin > o->max_windows) nwin = o->max_windows;
    if (nwin == 0)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %zu tokens: expected at least one window of %d tokens (ctx)",
                             label, n, ctx);

    /* The batching depends on ctx only and BLAS runs single-threaded inside
     * each worker, so the result does not depend on the thread count. */
    int S = BATCH_TOKENS / ctx;
    if (S < 1) S = 1;
    if ((size_t)S > nwin) S = (int)nwin;
    size_t nitems = (nwin + (size_t)S - 1) / (size_t)S;
    int nthreads = alloy_pool_size(o->pool);
    int parallel = nthreads > 1 && nitems > 1;
    int nws = parallel ? nthreads : 1;

    struct eval_job job = {.m = m, .ids = ids, .nwin = nwin, .ctx = ctx, .S = S, .bos = bos};
    job.ws = alloy_xcalloc((size_t)nws, sizeof *job.ws);
    job.in = alloy_xcalloc((size_t)nws, sizeof *job.in);
    job.tgt = alloy_xcalloc((size_t)nws, sizeof *job.tgt);
    job.wnll = alloy_xcalloc(nwin, sizeof *job.wnll);
    int rc = ALLOY_OK;
    if (!job.ws || !job.in || !job.tgt || !job.wnll) {
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int t = 0; t < nws; t++) {
        job.ws[t] = alloy_llama_ws_new(m, ctx, S);
        job.in[t] = alloy_xmalloc((size_t)S * (size_t)ctx * sizeof(int32_t));
        job.tgt[t] = alloy_xmalloc((size_t)S * (size_t)ctx * sizeof(int32_t));
        if (!job.ws[t] || !job.in[t] || !job.tgt[t]) {
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for the activations of %d x %d tokens",
                               alloy_llama_dir(m), S, ctx);
            goto done;
        }
    }

    if ((rc = alloy_blas_room(err))) goto done; /* under ulimit -v: an error, not OpenBLAS's endless retry */
#ifdef ALLOY_HAVE_OPENBLAS /* windows run in parallel on the pool: one BLAS thread each */
    int saved_blas = openblas_get_num_threads();
    openblas_set_num_threads(1);
#endif
    double t0 = now_s();
    size_t chunk = parallel ? (size_t)nthreads * 2 : 1;
    for (size_t it = 0; it < nitems; it += chunk) {
        if (o->interrupt && *o->interrupt) {
            rc = alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "%s: interrupted", label);
            break;
        }
        size_t cnt = nitems - it < chunk ? nitems - it : chunk;
        job.first_item = it;
        if (parallel) alloy_pool_for(o->pool, cnt, eval_item, &job);
        else
            for (size_t k = 0; k < cnt; k++) eval_item(&job, k, 0);
        if (o->progress) {
            size_t done = (it + cnt) * (size_t)S;
            struct alloy_eval_progress p = {done < nwin ? done : nwin, nwin};
            o->progress(o->progress_user, &p);
        }
    }
    r->seconds = now_s() - t0;
#ifdef ALLOY_HAVE_OPENBLAS
    openblas_set_num_threads(saved_blas);
#endif
    if (rc == ALLOY_OK) {
        double total = 0;
        for (size_t w = 0; w < nwin; w++) total += job.wnll[w];
        r->windows = nwin;
        r->tokens = (uint64_t)nwin * (uint64_t)(bos >= 0 ? ctx : ctx - 1);
        r->nll = total / (double)r->tokens;
        r->ppl = exp(r->nll);
    }
done:
    for (int t = 0; job.ws && t < nws; t++) alloy_llama_ws_free(job.ws[t]);
    for (int t = 0; job.in && t < nws; t++) free(job.in[t]);
    for (int t = 0; job.tgt && t < nws; t++) free(job.tgt[t]);
    free(job.ws);
    free(job.in);
    free(job.tgt);
    free(job.wnll);
    return rc;
}

int alloy_eval_read_ids(const char *path, int32_t **ids, size_t *n, struct alloy_err *err)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = alloy_read_file(path, 0, &buf, &len, err);
    if (rc) return rc;
    size_t cap = len / 2 + 1, cnt = 0;
    int32_t *out = alloy_xmalloc(cap * sizeof *out);
    if (!out) {
        free(buf);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    }
    const char *p = buf, *end = buf + len;
    while (p < end) {
        while (p < end && isspace((unsigned char)*p)) p++;
        if (p >= end) break;
        const char *s = p;
        while (p < end && !isspace((unsigned char)*p)) p++;
        long long v = 0;
        int ok = p - s <= 10;
        for (const char *q = s; ok && q < p; q++) {
            if (!isdigit((unsigned char)*q)) ok = 0;
            else v = v * 10 + (*q - '0');
        }
        if (!ok || v > INT32_MAX) {
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: token %zu: expected a non-negative integer id, found \"%.*s\"",
                               path, cnt, (int)(p - s > 24 ? 24 : p - s), s);
            free(out);
            free(buf);
            return rc;
        }
        out[cnt++] = (int32_t)v; /* cnt <= len/2 + 1: each id takes at least one byte plus a separator */
    }
    free(buf);
    *ids = out;
    *n = cnt;
    return ALLOY_OK;
}
