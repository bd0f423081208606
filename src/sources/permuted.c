/*
 * permuted.c — the permuted-rows source (see permuted.h).
 *
 * DESIGN
 *   A read of elements [e0, e1) walks the output rows it touches; for each
 *   row it fills the asked columns [c0, c1) from one of: the input's own
 *   stored row, the token's default (the mean of a few stored rows, read
 *   into a scratch row and summed in model order as mergekit does), zeros,
 *   or the padding row. Stored rows are read through a stored source of the
 *   whole matrix (stored.c), so every byte still comes through the checked
 *   pread. The padding row of input k is the mean of its rows 0..vocab-1 as
 *   this source presents them; the first reader computes it under the lock
 *   and later readers copy it.
 */
#include "core/internal.h"
#include "sources/permuted.h"

/* Columns [c0, c1) of row r of matrix k, as float32. */
static int read_row(const struct alloy_permuted *p, size_t k, int32_t r, uint64_t c0, uint64_t c1, float *dst,
                    struct alloy_err *err)
{
    const struct alloy_tensor *t = p->mat[k];
    struct alloy_input s;
    alloy_input_stored(&s, p->model[k], t, (uint64_t)t->shape[0], p->cols, 0);
    return alloy_input_read(&s, (uint64_t)r * p->cols + c0, (uint64_t)r * p->cols + c1, dst, ALLOY_INPUT_F32, err);
}

/* Columns [c0, c1) of row j (< vocab) of input k: its own row, else the default. */
static int vocab_row(const struct alloy_permuted *p, size_t k, uint64_t j, uint64_t c0, uint64_t c1, float *dst,
                     float *scratch, struct alloy_err *err)
{
    int32_t own = p->own[k * p->vocab + j];
    if (own >= 0) return read_row(p, k, own, c0, c1, dst, err);
    size_t n = c1 - c0, a = p->def_off[j], b = p->def_off[j + 1];
    memset(dst, 0, n * sizeof *dst);
    for (size_t i = a; i < b; i++) {
        int rc = read_row(p, (size_t)p->def[i].k, p->def[i].r, c0, c1, scratch, err);
        if (rc) return rc;
        for (size_t c = 0; c < n; c++) dst[c] += scratch[c];
    }
    if (b - a > 1)
        for (size_t c = 0; c < n; c++) dst[c] /= (float)(b - a);
    return ALLOY_OK;
}

/* The padding row of input k (the mean of its vocabulary rows), computed once. */
static int pad_row(struct alloy_permuted *p, size_t k, struct alloy_err *err)
{
    int rc = ALLOY_OK;
    pthread_mutex_lock(&p->lock);
    if (!p->pad_done[k]) {
        size_t n = (size_t)p->cols;
        double *sum = alloy_xcalloc(n, sizeof *sum);
        float *row = alloy_xmalloc(2 * n * sizeof *row);
        if (!sum || !row) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        for (uint64_t j = 0; !rc && j < p->vocab; j++) {
            rc = vocab_row(p, k, j, 0, n, row, row + n, err);
            for (size_t c = 0; !rc && c < n; c++) sum[c] += row[c];
        }
        for (size_t c = 0; !rc && c < n; c++) p->pad[k * n + c] = (float)(sum[c] / (double)p->vocab);
        if (!rc) p->pad_done[k] = 1;
        free(sum);
        free(row);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

static int read_permuted(const struct alloy_input *s, uint64_t e0, uint64_t e1, void *dst, enum alloy_input_mode mode,
                         struct alloy_err *err)
{
    const struct alloy_perm_input *in = s->ctx;
    struct alloy_permuted *p = in->p;
    float *out = dst, *scratch = NULL;
    (void)mode; /* never raw: the source reports no raw bfloat16 */
    int rc = ALLOY_OK;
    for (uint64_t e = e0; e < e1 && !rc;) {
        uint64_t j = e / p->cols, c0 = e % p->cols, c1 = p->cols;
        if (c1 - c0 > e1 - e) c1 = c0 + (e1 - e);
        float *d = out + (e - e0);
        if (j >= p->vocab) {
            rc = pad_row(p, in->k, err);
            if (!rc) memcpy(d, p->pad + in->k * p->cols + c0, (c1 - c0) * sizeof *d);
        } else {
            if (!scratch && !(scratch = alloy_xmalloc(p->cols * sizeof *scratch)))
                rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
            if (!rc) rc = vocab_row(p, in->k, j, c0, c1, d, scratch, err);
        }
        e += c1 - c0;
    }
    free(scratch);
    return rc;
}

static void release_permuted(const struct alloy_input *s)
{
    const struct alloy_perm_input *in = s->ctx;
    for (size_t k = 0; k < in->p->nm; k++) alloy_tensor_release(in->p->mat[k]);
}

static const struct alloy_input_ops g_permuted = {"permuted", read_permuted, release_permuted, NULL};

struct alloy_permuted *alloy_permuted_new(size_t nm, uint64_t vocab, uint64_t rows, uint64_t cols)
{
    struct alloy_permuted *p = alloy_xcalloc(1, sizeof *p);
    if (!p) return NULL;
    *p = (struct alloy_permuted){.nm = nm, .vocab = vocab, .rows = rows, .cols = cols};
    pthread_mutex_init(&p->lock, NULL);
    p->mat = alloy_xcalloc(nm, sizeof *p->mat);
    p->model = alloy_xcalloc(nm, sizeof *p->model);
    size_t nown = (size_t)(nm * vocab), npad = (size_t)(nm * cols);
    p->own = alloy_xmalloc((nown ? nown : 1) * sizeof *p->own);
    p->def_off = alloy_xcalloc(vocab + 1, sizeof *p->def_off);
    p->in = alloy_xcalloc(nm, sizeof *p->in);
    p->pad = alloy_xcalloc(npad ? npad : 1, sizeof *p->pad);
    p->pad_done = alloy_xcalloc(nm, 1);
    if (!p->mat || !p->model || !p->own || !p->def_off || !p->in || !p->pad || !p->pad_done) {
        alloy_permuted_free(p);
        return NULL;
    }
    for (size_t i = 0; i < nown; i++) p->own[i] = -1;
    for (size_t k = 0; k < nm; k++) p->in[k] = (struct alloy_perm_input){p, k};
    return p;
}

int alloy_permuted_add_default(struct alloy_permuted *p, uint64_t j, int32_t k, int32_t r)
{
    while (p->filled <= j) p->def_off[p->filled++] = (uint32_t)p->ndef;
    if (p->ndef == p->capdef) {
        size_t cap = p->capdef ? 2 * p->capdef : 64;
        struct alloy_perm_pick *d = cap <= UINT32_MAX ? alloy_xrealloc(p->def, cap * sizeof *d) : NULL;
        if (!d) return -1;
        p->def = d;
        p->capdef = cap;
    }
    p->def[p->ndef++] = (struct alloy_perm_pick){k, r};
    return 0;
}

void alloy_permuted_seal(struct alloy_permuted *p)
{
    while (p->filled <= p->vocab) p->def_off[p->filled++] = (uint32_t)p->ndef;
}

void alloy_permuted_free(struct alloy_permuted *p)
{
    if (!p) return;
    pthread_mutex_destroy(&p->lock);
    free(p->mat);
    free(p->model);
    free(p->own);
    free(p->def_off);
    free(p->def);
    free(p->in);
    free(p->pad);
    free(p->pad_done);
    free(p);
}

void alloy_input_permuted(struct alloy_input *s, struct alloy_permuted *p, size_t k)
{
    *s = (struct alloy_input){.ops = &g_permuted, .model = p->model[k], .t = p->mat[k], .rows = p->rows,
                              .cols = p->cols, .ctx = &p->in[k]};
}
