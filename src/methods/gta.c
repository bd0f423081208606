/*
 * gta.c — the machinery shared by the task-arithmetic family (gta.h):
 * parameter validation, the scan-pass plan, sparsification masks, L1
 * rescale and the consensus merge.
 *
 * DESIGN
 *   Masks are never stored. Each one is a pure function of the element (its
 *   index, its |delta| key, its rank inside its row) and of small per-model
 *   state fixed by the scan passes, so scan passes and apply() recompute it
 *   identically chunk by chunk:
 *     magnitude  keep the k = int(density*N) largest |delta| (select.h:
 *                exact radix selection, <= 3 histogram passes; ties at the
 *                threshold go to the lowest element indices)
 *     outliers   keep the top (N - n_bot) minus the top n_top: two nested
 *                selections under the same total order
 *     random     keep iff u(seed, tensor, model, element) < density
 *     della      keep iff u(...) < (density - eps) + 2 eps (rank - 1)/(C - 1),
 *                rank = 1-based ascending rank of |delta| within its row
 *                (stable: equal values rank by column), recomputed per row
 *                with an LSD radix sort into O(cols) scratch
 *   With `rescale` a sparsified task vector is multiplied by
 *   sum|delta| / sum|kept delta| (whole tensor, mergekit's L1 matching),
 *   which takes one more scan pass (after the selection passes for the
 *   magnitude methods). Each pass serves up to GTA_HIST_SLOTS histograms and
 *   GTA_L1_SLOTS L1 sums, so any number of models works with a fixed
 *   accumulator size; models beyond that take further passes.
 *
 *   Arithmetic: deltas and masked deltas in float32; the L1 sums and the
 *   per-element sums over models (sign consensus, numerator, divisor) in
 *   double. State is O(models) plus select.h's O(nchunks) tie counts; della
 *   allocates O(models * cols) scratch per apply()/scan() call (if that
 *   fails, ranks are counted in place — slow but exact, since apply()
 *   cannot report errors).
 */
#include "methods/gta.h"

#include "core/internal.h"

#include <stdio.h>

/* ---------------------------------------------------------------- validation */

static double tparam(const struct gta_kind *kind, const struct alloy_merge_job *job, int i, int k)
{
    return job->tp[(size_t)i * (size_t)kind->nparams + (size_t)k];
}

int gta_check(const struct gta_kind *kind, const struct alloy_merge_job *job, struct alloy_err *err)
{
    const char *cfg = job->config_path, *t = job->name, *mn = kind->name;
    if (job->base < 0 || job->base >= job->n)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s: needs a base_model (task vectors are "
                             "differences to it)", cfg, t, mn);
    if (job->n - 1 > GTA_MAX_MODELS)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': %s: %d models besides the base, at most "
                             "%d supported", cfg, t, mn, job->n - 1, GTA_MAX_MODELS);
    double lambda = job->gp[GTA_P_LAMBDA];
    if (!isfinite(lambda))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s: lambda must be a finite number, got %g",
                             cfg, t, mn, lambda);
    for (int i = 0; i < job->n; i++) {
        if (i == job->base) continue;
        const char *model = job->models ? job->models[i] : "?";
        double w = tparam(kind, job, i, GTA_P_WEIGHT), d = tparam(kind, job, i, GTA_P_DENSITY);
        if (isnan(w))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s: model %s has no `weight` (required for "
                                 "every model but the base)", cfg, t, mn, model);
        if (!isfinite(w))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s: model %s: weight must be finite, got %g",
                                 cfg, t, mn, model, w);
        if (isnan(d) || d < 0)
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s: model %s: density must be >= 0 (the "
                                 "fraction of the task vector kept), got %g", cfg, t, mn, model, d);
        if (kind->sparsify == GTA_SPARSIFY_OUTLIERS) {
            double g = tparam(kind, job, i, GTA_P_EXTRA);
            if (isnan(g) || g < 0)
                return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s: model %s: gamma must be >= 0 (the "
                                     "fraction of largest outliers removed), got %g", cfg, t, mn, model, g);
        }
        if (kind->sparsify == GTA_SPARSIFY_DELLA) {
            double e = tparam(kind, job, i, GTA_P_EXTRA);
            if (isnan(e))
                return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s: model %s: epsilon is not a number",
                                     cfg, t, mn, model);
            /* mergekit checks this only when pruning happens: 0 < density < 1 */
            if (d > 0 && d < 1 && (d + e >= 1 || d - e <= 0))
                return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s: model %s: density +/- epsilon must "
                                     "lie inside (0, 1), got density %g and epsilon %g (keep probabilities %g..%g)",
                                     cfg, t, mn, model, d, e, d - e, d + e);
        }
    }
    return ALLOY_OK;
}

/* ---------------------------------------------------------------- setup */

int gta_init(const struct gta_kind *kind, const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct gta_state *s = state;
    int rc = gta_check(kind, job, err);
    if (rc) return rc;
    s->kind = kind;
    s->base = job->base;
    s->normalize = job->gp[GTA_P_NORMALIZE] != 0;
    s->lambda = (float)job->gp[GTA_P_LAMBDA];
    int rescale = job->gp[GTA_P_RESCALE] != 0;
    uint64_t N = job->numel;
    double wsum = 0;
    for (int i = 0; i < job->n; i++) {
        if (i == job->base) continue;
        struct gta_model *m = &s->m[s->nm++];
        m->input = i;
        m->w = (float)tparam(kind, job, i, GTA_P_WEIGHT);
        m->density = tparam(kind, job, i, GTA_P_DENSITY);
        m->extra = kind->nparams > GTA_P_EXTRA ? tparam(kind, job, i, GTA_P_EXTRA) : 0;
        m->rescale = 1.0f;
        wsum += tparam(kind, job, i, GTA_P_WEIGHT);
        m->sparse = kind->sparsify != GTA_SPARSIFY_NONE && m->density < 1;
        if (!m->sparse) continue;
        m->zero = m->density <= 0;
        m->rng_key = alloy_rng_key(job->seed, job->name, ((uint64_t)kind->sparsify << 32) | (uint64_t)i);
        if (kind->sparsify == GTA_SPARSIFY_MAGNITUDE) {
            uint64_t k = (uint64_t)(m->density * (double)N); /* Python int(): truncation */
            if (k == 0) m->zero = 1;    /* mergekit asserts k > 0; keeping nothing is the sensible reading */
            m->nsel = 1;
            alloy_sel_init(&m->sel[0], N, k, 0);
        } else if (kind->sparsify == GTA_SPARSIFY_OUTLIERS) {
            int64_t target = (int64_t)(m->density * (double)N);
            int64_t n_top = (int64_t)(m->extra * (double)N);
            int64_t n_bot = (int64_t)N - target - n_top;
            if (n_bot < 0) {
                n_top += n_bot;
                n_bot = 0;
            }
            /* ascending positions [n_bot, N - n_top) = top (N - n_bot) minus top n_top */
            m->nsel = 2;
            alloy_sel_init(&m->sel[0], N, N - (uint64_t)n_bot, 0);
            alloy_sel_init(&m->sel[1], N, (uint64_t)n_top, 0);
        }
        m->need_l1 = rescale && !m->zero;
    }
    if (s->normalize) {
        double z = fabs(wsum) < 1e-8 ? 1.0 : wsum;
        s->lin_scale = (float)(job->gp[GTA_P_LAMBDA] / z);
    } else {
        s->lin_scale = s->lambda;
    }
    return ALLOY_OK;
}

void gta_fini(const struct alloy_merge_job *job, void *state)
{
    struct gta_state *s = state;
    for (int j = 0; j < s->nm; j++)
        for (int q = 0; q < s->m[j].nsel; q++) alloy_sel_free(&s->m[j].sel[q]);
}

static int sel_active(const struct gta_model *m)
{
    for (int q = 0; q < m->nsel; q++)
        if (alloy_sel_active(&m->sel[q])) return 1;
    return 0;
}

int gta_want_pass(const struct alloy_merge_job *job, void *state, int pass)
{
    struct gta_state *s = state;
    s->n_hist = s->n_l1 = 0;
    for (int j = 0; j < s->nm; j++) {
        struct gta_model *m = &s->m[j];
        if (!m->sparse || m->zero) continue;
        if (sel_active(m)) {
            for (int q = 0; q < m->nsel; q++)
                if (alloy_sel_active(&m->sel[q]) && s->n_hist < GTA_HIST_SLOTS) {
                    s->hist_model[s->n_hist] = j;
                    s->hist_sel[s->n_hist++] = q;
                }
        } else if (m->need_l1 && !m->l1_done && s->n_l1 < GTA_L1_SLOTS) {
            s->l1_model[s->n_l1++] = j;
        }
    }
    return s->n_hist + s->n_l1 > 0;
}

/* ---------------------------------------------------------------- masks */

/* Per model and chunk: tie budgets of the selections, della's row ranks. */
struct gta_cursor {
    uint64_t ties[2];
    const uint32_t *rank;   /* della: ranks of the current row, NULL: count on the fly */
};

static void cursor_init(const struct gta_model *m, size_t chunk, struct gta_cursor *cur)
{
    cur->ties[0] = m->nsel > 0 ? alloy_sel_chunk_ties(&m->sel[0], chunk) : 0;
    cur->ties[1] = m->nsel > 1 ? alloy_sel_chunk_ties(&m->sel[1], chunk) : 0;
    cur->rank = NULL;
}

/* 1-based ascending rank of |xi[j] - b[j]| within the row (ties by column), counted directly: O(C). */
static uint32_t rank_count(const float *xi, const float *b, size_t cols, size_t j)
{
    uint32_t kj = alloy_sel_key_abs(xi[j] - b[j]), r = 1;
    for (size_t t = 0; t < cols; t++) {
        uint32_t kt = alloy_sel_key_abs(xi[t] - b[t]);
        r += kt < kj || (kt == kj && t < j);
    }
    return r;
}

/* Ranks of one row by a stable LSD radix sort (8-bit digits, constant digits skipped).
 * scratch: 4 * cols uint32. */
static void rank_row(const float *xi, const float *b, size_t cols, uint32_t *rank, uint32_t *scratch)
{
    uint32_t *key = scratch, *idx = scratch + cols, *key2 = scratch + 2 * cols, *idx2 = scratch + 3 * cols;
    for (size_t j = 0; j < cols; j++) {
        key[j] = alloy_sel_key_abs(xi[j] - b[j]);
        idx[j] = (uint32_t)j;
    }
    for (unsigned shift = 0; shift < 32; shift += 8) {
        size_t cnt[256] = {0};
        for (size_t j = 0; j < cols; j++) cnt[(key[j] >> shift) & 0xff]++;
        if (cnt[(key[0] >> shift) & 0xff] == cols) continue; /* every key has this digit */
        size_t pos = 0;
        for (int d = 0; d < 256; d++) {
            size_t c = cnt[d];
            cnt[d] = pos;
            pos += c;
        }
        for (size_t j = 0; j < cols; j++) {
            size_t p = cnt[(key[j] >> shift) & 0xff]++;
            key2[p] = key[j];
            idx2[p] = idx[j];
        }
        uint32_t *t = key; key = key2; key2 = t;
        t = idx; idx = idx2; idx2 = t;
    }
    for (size_t p = 0; p < cols; p++) rank[idx[p]] = (uint32_t)(p + 1);
}

/* Whether model m keeps element e (global index; j inside the current row block, d its delta). */
static inline int gta_keep(const struct gta_state *s, const struct gta_model *m, struct gta_cursor *cur,
                           uint64_t e, size_t j, float d, const float *xi, const float *b, size_t cols)
{
    if (!m->sparse) return 1;
    if (m->zero) return 0;
    switch (s->kind->sparsify) {
    case GTA_SPARSIFY_MAGNITUDE:
        return alloy_sel_keep(&m->sel[0], alloy_sel_key_abs(d), &cur->ties[0]);
    case GTA_SPARSIFY_OUTLIERS: {
        uint32_t key = alloy_sel_key_abs(d);
        int in_a = alloy_sel_keep(&m->sel[0], key, &cur->ties[0]);
        int in_b = alloy_sel_keep(&m->sel[1], key, &cur->ties[1]); /* always evaluated: consumes its tie budget */
        return in_a && !in_b;
    }
    case GTA_SPARSIFY_RANDOM:
        return alloy_rng_uniform(m->rng_key, e) < m->density;
    case GTA_SPARSIFY_DELLA: {
        double p;
        if (cols < 2) {
            p = m->density; /* mergekit: 0/0 rank normalisation (NaN, Bernoulli error) */
        } else {
            uint32_t r = cur->rank ? cur->rank[j] : rank_count(xi, b, cols, j);
            p = (m->density - m->extra) + 2.0 * m->extra * (double)(r - 1) / (double)(cols - 1);
        }
        return alloy_rng_uniform(m->rng_key, e) < p;
    }
    case GTA_SPARSIFY_NONE:
        break;
    }
    return 1;
}

/* Row blocks: della works row by row (chunks hold whole rows), the others on the whole chunk. */
static size_t block_len(const struct gta_state *s, const struct alloy_merge_job *job, size_t len)
{
    if (s->kind->sparsify == GTA_SPARSIFY_DELLA) {
        size_t cols = job->cols ? (size_t)job->cols : 1;
        return cols < len ? cols : len;
    }
    return len;
}

/* ---------------------------------------------------------------- scan passes */

void gta_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
              const float *const *x, void *acc)
{
    const struct gta_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0);
    const float *b = x[s->base];
    uint32_t *hist0 = (uint32_t *)(void *)((uint8_t *)acc + sizeof(struct gta_acc_head));
    for (int h = 0; h < s->n_hist; h++) {
        const struct gta_model *m = &s->m[s->hist_model[h]];
        const struct alloy_select *sel = &m->sel[s->hist_sel[h]];
        const float *xi = x[m->input];
        uint32_t *hist = hist0 + (size_t)h * ALLOY_SEL_BINS;
        for (size_t e = 0; e < len; e++) {
            int bin = alloy_sel_bin(sel, alloy_sel_key_abs(xi[e] - b[e]));
            if (bin >= 0) hist[bin]++;
        }
    }
    if (!s->n_l1) return;
    struct gta_acc_head *head = acc;
    size_t blk = block_len(s, job, len);
    uint32_t *scratch = NULL;
    if (s->kind->sparsify == GTA_SPARSIFY_DELLA && blk >= 2) scratch = alloy_xmalloc(5 * blk * sizeof *scratch);
    for (int l = 0; l < s->n_l1; l++) {
        const struct gta_model *m = &s->m[s->l1_model[l]];
        const float *xi = x[m->input];
        struct gta_cursor cur;
        cursor_init(m, c->index, &cur);
        double before = 0, after = 0;
        for (size_t r0 = 0; r0 < len; r0 += blk) {
            if (scratch) {
                rank_row(xi + r0, b + r0, blk, scratch + 4 * blk, scratch);
                cur.rank = scratch + 4 * blk;
            }
            for (size_t j = 0; j < blk; j++) {
                float d = xi[r0 + j] - b[r0 + j];
                double a = fabs((double)d);
                before += a;
                if (gta_keep(s, m, &cur, c->e0 + r0 + j, j, d, xi + r0, b + r0, blk)) after += a;
            }
        }
        head->l1[l][0] = before;
        head->l1[l][1] = after;
    }
    free(scratch);
}

int gta_end_pass(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t nchunks,
                 struct alloy_err *err)
{
    struct gta_state *s = state;
    size_t acc_size = GTA_ACC_SIZE_FOR(s->kind->sparsify);
    for (int h = 0; h < s->n_hist; h++) {
        struct gta_model *m = &s->m[s->hist_model[h]];
        size_t off = sizeof(struct gta_acc_head) + (size_t)h * ALLOY_SEL_BINS * sizeof(uint32_t);
        int rc = alloy_sel_reduce(&m->sel[s->hist_sel[h]], accs, nchunks, acc_size, off, err);
        if (rc) return rc;
    }
    for (int l = 0; l < s->n_l1; l++) {
        struct gta_model *m = &s->m[s->l1_model[l]];
        double before = 0, after = 0;
        for (size_t c = 0; c < nchunks; c++) {
            const struct gta_acc_head *head = (const void *)((const uint8_t *)accs + c * acc_size);
            before += head->l1[l][0];
            after += head->l1[l][1];
        }
        m->before = before;
        m->after = after;
        m->l1_done = 1;
        /* mergekit's rescaled_masked_tensor: no rescale when either norm is below 1e-7 */
        m->rescale = (before < 1e-7 || after < 1e-7) ? 1.0f : (float)(before / after);
    }
    return ALLOY_OK;
}

/* ---------------------------------------------------------------- apply */

void gta_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
               const float *const *x, float *out)
{
    const struct gta_state *s = state;
    size_t len = (size_t)(c->e1 - c->e0);
    const float *b = x[s->base];
    int nm = s->nm;
    if (nm == 0) {
        memcpy(out, b, len * sizeof *out);
        return;
    }
    struct gta_cursor cur[GTA_MAX_MODELS];
    float coef[GTA_MAX_MODELS];
    for (int j = 0; j < nm; j++) {
        cursor_init(&s->m[j], c->index, &cur[j]);
        coef[j] = s->m[j].w * s->m[j].rescale;
    }
    size_t blk = block_len(s, job, len);
    uint32_t *scratch = NULL;
    if (s->kind->sparsify == GTA_SPARSIFY_DELLA && blk >= 2)
        scratch = alloy_xmalloc((4 + (size_t)nm) * blk * sizeof *scratch);
    for (size_t r0 = 0; r0 < len; r0 += blk) {
        if (scratch)
            for (int j = 0; j < nm; j++) {
                uint32_t *rank = scratch + (4 + (size_t)j) * blk;
                rank_row(x[s->m[j].input] + r0, b + r0, blk, rank, scratch);
                cur[j].rank = rank;
            }
        for (size_t q = 0; q < blk; q++) {
            size_t e = r0 + q;
            float D[GTA_MAX_MODELS];
            double sum = 0;
            for (int j = 0; j < nm; j++) {
                const struct gta_model *m = &s->m[j];
                const float *xi = x[m->input];
                float d = xi[e] - b[e];
                D[j] = gta_keep(s, m, &cur[j], c->e0 + e, q, d, xi + r0, b + r0, blk) ? coef[j] * d : 0.0f;
                sum += D[j];
            }
            if (!s->kind->consensus) {
                out[e] = b[e] + (float)(s->lin_scale * sum);
                continue;
            }
            /* "sum" consensus: majority sign of the weighted sum (0 counts as +); zero entries never agree */
            double num = 0, z = 0;
            if (sum >= 0) {
                for (int j = 0; j < nm; j++)
                    if (D[j] > 0) { num += D[j]; z += s->m[j].w; }
            } else {
                for (int j = 0; j < nm; j++)
                    if (D[j] < 0) { num += D[j]; z += s->m[j].w; }
            }
            if (s->normalize) num /= (z == 0 ? 1.0 : z);
            out[e] = b[e] + (float)(s->lambda * num);
        }
    }
    free(scratch);
}
