/*
 * gta.c — the machinery shared by the task-arithmetic family (gta.h):
 * parameter validation, the scan-pass plan, sparsification masks, L1
 * rescale and the consensus merge.
 *
 * DESIGN
 *   Masks are pure functions of the element (its index, its |delta| key,
 *   its rank inside its row) and of small per-model state fixed by the scan
 *   passes, so scan passes and apply() recompute them identically chunk by
 *   chunk:
 *     magnitude  keep the k = int(density*N) largest |delta| (select.h:
 *                exact radix selection; ties at the threshold go to the
 *                lowest element indices). Tensors of GTA_WIDE_MIN elements
 *                or more use select.h's wide layout: 2 histogram passes when
 *                the threshold has its low 16 bits zero (bfloat16 data),
 *                else 3; smaller tensors the narrow one (<= 3)
 *     outliers   keep the top (N - n_bot) minus the top n_top: two nested
 *                selections under the same total order (sharing their
 *                level-0 count)
 *     random     keep iff u(seed, tensor, model, element) < density
 *     della      keep iff u(...) < (density - eps) + 2 eps (rank - 1)/(C - 1),
 *                rank = 1-based ascending rank of |delta| within its row,
 *                equal values sharing their mean rank; the limits of a
 *                row come from gta_della_row (della_rank.c, O(cols)
 *                scratch), read per element as the block is drawn
 *   u is 32 random bits of the element (half of a 64-bit counter-based
 *   hash per pair of elements, gta_draw_body), compared as an integer
 *   (draw_threshold). With `rescale` a sparsified task vector is
 *   multiplied by sum|delta| / sum|kept delta| (whole tensor, mergekit's L1
 *   matching), which takes one more scan pass (after the selection passes
 *   for the magnitude methods). That pass also records the random methods'
 *   decisions in a keep bitmap per model (one bit per element, at most
 *   GTA_KEEP_BITS per tensor; models beyond that, or whose bitmap cannot be
 *   allocated, draw again in apply()). Each pass serves up to GTA_HIST_SLOTS
 *   histograms and GTA_L1_SLOTS L1 sums, so any number of models works with
 *   a fixed accumulator size; models beyond that take further passes.
 *
 *   The chunk loops (scan() and apply() of one chunk, block by block) are
 *   in gta_loops.h, compiled into each kernel table (src/kernels/); this
 *   file validates, plans the passes, reduces them and calls the job's
 *   table (job->kernels, or the CPU's). With AVX-512 the table also has
 *   fused loops for the L1 pass of a random or della model and for the
 *   consensus apply() of models with keep bits; those merges then take
 *   bfloat16 models' values as stored (gta_takes_bf16: the driver's
 *   ALLOY_INPUT_BF16_RAW), so no chunk is converted to float32 first. The
 *   operations and their order are the same in every table (no FMA), so
 *   the bits are (tests/test_gta_avx512.c compares the tables).

 *   Arithmetic: deltas and masked deltas in float32; the L1 sums in double
 *   (eight lanes, element q of a block into lane q % 8, folded in a fixed
 *   order); the per-element sums over models in model order: in double
 *   without consensus, in float32 with it (elected sign, numerator,
 *   divisor). Adding +0 for a dropped or disagreeing entry leaves a sum's
 *   bits unchanged, as none of them is ever -0.
 *
 *   Memory: O(models) state plus select.h's O(nchunks) tie counts (past
 *   one driver window, also a window stage's chunk boundaries) and,
 *   during a wide level 0 or a sample pass, 1 MiB per selection and a
 *   512 KiB table per scan call; the window passes' collected keys, at most
 *   GTA_WINDOW_KEYS (32 MiB) for all selections together; keep bitmaps up to GTA_KEEP_BITS / 8 bytes per tensor; della
 *   allocates O(models * cols) scratch per apply()/scan() call (if that
 *   fails, ranks and keep probabilities are computed per element — slow but
 *   exact). Scan passes write shared
 *   state in two order-independent ways (method.h's exception): the wide
 *   level-0 counts under locks, and bitmap bits, each written once, with an
 *   atomic OR on the words a chunk shares with its neighbours.
 */
#include "methods/gta.h"
#include "methods/gta_loops.h"

#include "core/internal.h"
#include "kernels/kernels.h"

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



/* Tensors from this size on select in select.h's wide layout: two histogram passes instead of three
 * (when the threshold has its low 16 bits zero), for a 512 KiB table per scan call; from
 * GTA_SAMPLED_MIN on in the sampled layout: a sample pass over GTA_SAMPLE_CHUNKS() chunks, then one
 * full pass (window) instead of two. */
#define GTA_WIDE_MIN ((uint64_t)1 << 17)
#define GTA_SAMPLED_MIN (8 * ALLOY_CHUNK_ELEMS)
#define GTA_WINDOW_KEYS ((uint64_t)1 << 23)
/* 1/16 of the chunks, at least 2 and at most 16 (a sample of 0.5 M to 4 M keys, more for huge tensors). */
static size_t sample_chunks(uint64_t numel)
{
    uint64_t k = numel / (16 * ALLOY_CHUNK_ELEMS);
    return (size_t)(k < 2 ? 2 : k > 16 ? 16 : k);
}

static int sel_init(struct alloy_select *sel, uint64_t n, uint64_t k, struct alloy_err *err)
{
    if (n >= GTA_SAMPLED_MIN) return alloy_sel_init_sampled(sel, n, k, err);
    if (n >= GTA_WIDE_MIN) return alloy_sel_init_wide(sel, n, k, err);
    alloy_sel_init(sel, n, k, 0);
    return ALLOY_OK;
}

int gta_init(const struct gta_kind *kind, const struct alloy_merge_job *job, void *state, struct alloy_err *err)
{
    struct gta_state *s = state;
    int rc = gta_check(kind, job, err);
    if (rc) return rc;
    s->kind = kind;
    s->k = job->kernels ? job->kernels : alloy_kernels();
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
        m->draw_thr = draw_threshold(m->density);
        if (kind->sparsify == GTA_SPARSIFY_MAGNITUDE) {
            uint64_t k = (uint64_t)(m->density * (double)N); /* Python int(): truncation */
            if (k == 0) m->zero = 1;    /* mergekit asserts k > 0; keeping nothing is the sensible reading */
            m->nsel = 1;
            if ((rc = sel_init(&m->sel[0], N, k, err))) return rc;
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
            if ((rc = sel_init(&m->sel[0], N, N - (uint64_t)n_bot, err))) return rc;
            if ((rc = sel_init(&m->sel[1], N, (uint64_t)n_top, err))) return rc;
        }
        m->need_l1 = rescale && !m->zero;
    }
    /* Della's keep limit of every (doubled mean) rank, once per tensor and model (within GTA_KEEP_BITS / 8
       bytes of tables; without one, each scan/apply call computes its own) */
    size_t cols = job->cols ? (size_t)job->cols : 1, tab = 0;
    for (int j = 0; j < s->nm && kind->sparsify == GTA_SPARSIFY_DELLA && cols >= 2; j++) {
        struct gta_model *m = &s->m[j];
        if (!m->sparse || m->zero || (tab += 2 * cols * sizeof(uint32_t)) > GTA_KEEP_BITS / 8) continue;
        m->della_kmax = alloy_xmalloc(2 * cols * sizeof *m->della_kmax);
        if (m->della_kmax) della_limits(m, cols, m->della_kmax);
    }
    /* The sampled selections share one window budget (GTA_WINDOW_KEYS keys, 32 MiB), so the windows
       of many models together stay bounded */
    int nsampled = 0;
    for (int j = 0; j < s->nm; j++)
        for (int q = 0; q < s->m[j].nsel; q++) nsampled += alloy_sel_sample_stage(&s->m[j].sel[q]);
    for (int j = 0; j < s->nm && nsampled; j++)
        for (int q = 0; q < s->m[j].nsel; q++) {
            uint64_t share = GTA_WINDOW_KEYS / (uint64_t)nsampled;
            if (share < s->m[j].sel[q].window_keys) s->m[j].sel[q].window_keys = share;
        }
    /* Keep bitmaps for the random methods' apply(), in model order while the budget lasts; without
       one (or if it cannot be allocated) apply() draws (and della ranks) again. */
    uint64_t bits = 0, words = (N + 63) / 64;
    for (int j = 0; j < s->nm && (kind->sparsify == GTA_SPARSIFY_RANDOM || kind->sparsify == GTA_SPARSIFY_DELLA);
         j++) {
        struct gta_model *m = &s->m[j];
        if (!m->need_l1 || !N || bits + words * 64 > GTA_KEEP_BITS) continue;
        m->keep_bits = alloy_xcalloc((size_t)words, sizeof *m->keep_bits);
        if (m->keep_bits) bits += words * 64;
    }
    if (s->normalize) {
        double z = fabs(wsum) < 1e-8 ? 1.0 : wsum;
        s->lin_scale = (float)(job->gp[GTA_P_LAMBDA] / z);
    } else {
        s->lin_scale = s->lambda;
    }
    return ALLOY_OK;
}

int gta_takes_bf16(const struct alloy_merge_job *job, const void *state)
{
    const struct gta_state *s = state;
    int ok = s->k->gta_scan_fused && s->k->gta_apply_fused && s->kind->consensus &&
             (s->kind->sparsify == GTA_SPARSIFY_RANDOM || s->kind->sparsify == GTA_SPARSIFY_DELLA);
    /* apply() reads no input but through the fused loop or a widened block: no row ranked again */
    ok = ok && s->nm > 0; /* no task vector: apply() copies the base as float32 */
    for (int j = 0; j < s->nm && ok; j++) ok = !s->m[j].sparse || s->m[j].keep_bits; /* (none when zero) */
    return ok;
}

void gta_fini(const struct alloy_merge_job *job, void *state)
{
    struct gta_state *s = state;
    for (int j = 0; j < s->nm; j++) {
        for (int q = 0; q < s->m[j].nsel; q++) alloy_sel_free(&s->m[j].sel[q]);
        free((void *)s->m[j].keep_bits);
        s->m[j].keep_bits = NULL;
        free(s->m[j].della_kmax);
        s->m[j].della_kmax = NULL;
    }
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
    /* a sample pass when every selection of the pass is in its sample stage */
    int sample = s->n_hist > 0 && s->n_l1 == 0;
    for (int h = 0; h < s->n_hist && sample; h++) sample = alloy_sel_sample_stage(&s->m[s->hist_model[h]].sel[s->hist_sel[h]]);
    s->pass_k = sample ? sample_chunks(job->numel) : 0;
    return s->n_hist + s->n_l1 > 0;
}

size_t gta_pass_sample(const struct alloy_merge_job *job, const void *state, int pass)
{
    const struct gta_state *s = state;
    return s->pass_k;
}

/* ---------------------------------------------------------------- scan and apply */

int gta_scan(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
             const float *const *x, void *acc, struct alloy_err *err)
{
    const struct gta_state *s = state;
    s->k->gta_scan(job, s, c, x, acc);
    return ALLOY_OK;
}

int gta_fold(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first, size_t count,
             size_t nchunks, struct alloy_err *err)
{
    struct gta_state *s = state;
    size_t acc_size = GTA_ACC_SIZE_FOR(s->kind->sparsify);
    for (int h = 0; h < s->n_hist; h++) {
        struct gta_model *m = &s->m[s->hist_model[h]];
        size_t off = sizeof(struct gta_acc_head) + (size_t)h * ALLOY_SEL_BINS * sizeof(uint32_t);
        int rc = alloy_sel_fold(&m->sel[s->hist_sel[h]], accs, first, count, nchunks, acc_size, off, err);
        if (rc) return rc;
    }
    for (int l = 0; l < s->n_l1; l++) { /* running sums in chunk order: the same bits for any window */
        struct gta_model *m = &s->m[s->l1_model[l]];
        if (first == 0) m->before = m->after = 0;
        for (size_t c = 0; c < count; c++) {
            const struct gta_acc_head *head = (const void *)((const uint8_t *)accs + c * acc_size);
            m->before += head->l1[l][0];
            m->after += head->l1[l][1];
        }
    }
    return ALLOY_OK;
}

int gta_end_pass(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks, struct alloy_err *err)
{
    struct gta_state *s = state;
    for (int h = 0; h < s->n_hist; h++) {
        struct gta_model *m = &s->m[s->hist_model[h]];
        int rc = alloy_sel_end(&m->sel[s->hist_sel[h]], s->pass_k && s->pass_k < nchunks, nchunks, err);
        if (rc) return rc;
    }
    for (int l = 0; l < s->n_l1; l++) {
        struct gta_model *m = &s->m[s->l1_model[l]];
        double before = m->before, after = m->after;
        m->l1_done = 1;
        /* mergekit's rescaled_masked_tensor: no rescale when either norm is below 1e-7 */
        m->rescale = (before < 1e-7 || after < 1e-7) ? 1.0f : (float)(before / after);
    }
    return ALLOY_OK;
}

int gta_apply(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
              const float *const *x, float *out, struct alloy_err *err)
{
    const struct gta_state *s = state;
    s->k->gta_apply(job, s, c, x, out);
    return ALLOY_OK;
}
