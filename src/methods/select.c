/*
 * select.c — radix selection of the k largest keys over streamed chunks.
 *
 * DESIGN
 *   See select.h for the API and the total order (key, then lower index =
 *   larger). reduce() sums the chunk histograms of one level in chunk order,
 *   walks the bins from the top until the running count reaches the rank
 *   still wanted, and fixes that bin's digit in the prefix. Invariants after
 *   each level: `rem` (1-based) is the rank of the k-th largest key among
 *   the keys that share `prefix`, and `n_gt` counts the keys above that
 *   prefix range. Finishing sets thr/n_tie so that "key > thr, plus n_tie
 *   ties at thr" is exactly the k largest; thr is lowered by one when no
 *   tie needs splitting, so the common case needs no per-chunk state.
 */
#include "methods/select.h"

#include "core/internal.h"

static const unsigned g_shift[ALLOY_SEL_LEVELS] = {21, 10, 0};
static const unsigned g_nbins[ALLOY_SEL_LEVELS] = {2048, 2048, 1024};

void alloy_sel_init(struct alloy_select *s, uint64_t n, uint64_t k, int want_value)
{
    memset(s, 0, sizeof *s);
    if (k > n) k = n;
    s->n = n;
    s->k = k;
    s->rem = k;
    s->want_value = want_value;
    s->level = 0;
    if (k == 0) {                      /* keep nothing: no key exceeds UINT32_MAX */
        s->thr = (int64_t)UINT32_MAX;
        s->level = ALLOY_SEL_LEVELS;
        return;
    }
    if (k == n && !want_value) {       /* keep everything */
        s->thr = -1;
        s->n_gt = n;
        s->level = ALLOY_SEL_LEVELS;
    }
}

void alloy_sel_hist_keys(const struct alloy_select *s, const uint32_t *keys, size_t n, uint32_t *hist)
{
    /* alloy_sel_bin() with the level's shifts and prefix in locals: the hist[] stores may alias
       the selection, so the compiler would reload them for every key */
    int l = s->level;
    if (l >= ALLOY_SEL_LEVELS) return;
    if (l == 0) { /* no prefix yet: bits 31..21 */
        for (size_t e = 0; e < n; e++) hist[keys[e] >> 21]++;
        return;
    }
    const unsigned sh = g_shift[l], psh = g_shift[l - 1];
    const uint32_t prefix = s->prefix, mask = g_nbins[l] - 1;
    for (size_t e = 0; e < n; e++) {
        uint32_t key = keys[e];
        if ((key >> psh) == prefix) hist[(key >> sh) & mask]++;
    }
}

void alloy_sel_keep_block(const struct alloy_select *s, const uint32_t *keys, size_t n, uint64_t *ties,
                          uint32_t *mask)
{
    if (s->thr < 0) { /* keep everything */
        for (size_t e = 0; e < n; e++) mask[e] = ~0u;
        return;
    }
    if (s->thr > (int64_t)UINT32_MAX) { /* keep nothing (never: thr <= UINT32_MAX) */
        for (size_t e = 0; e < n; e++) mask[e] = 0;
        return;
    }
    const uint32_t thr = (uint32_t)s->thr;
    if (*ties) {
        uint64_t eq = 0;
        for (size_t e = 0; e < n; e++) eq += keys[e] == thr;
        if (eq <= *ties) { /* the budget covers every tie of the block */
            for (size_t e = 0; e < n; e++) mask[e] = -(uint32_t)(keys[e] >= thr);
            *ties -= eq;
            return;
        }
        /* the one block of the chunk where the budget runs out: element by element */
        for (size_t e = 0; e < n; e++) mask[e] = alloy_sel_keep(s, keys[e], ties) ? ~0u : 0;
        return;
    }
    for (size_t e = 0; e < n; e++) mask[e] = -(uint32_t)(keys[e] > thr);
}

/* Chooses the bin of the current level from the summed histogram; returns
 * the bin, or -1 when the histogram holds fewer keys than wanted (a caller
 * bug: scan and reduce disagree). */
static int choose_bin(struct alloy_select *s, const uint64_t *hist)
{
    unsigned nb = g_nbins[s->level];
    uint64_t above = 0;
    for (int b = (int)nb - 1; b >= 0; b--) {
        if (above + hist[b] >= s->rem) {
            s->rem -= above;
            s->n_gt += above;
            s->prefix = (s->prefix << (s->level == 2 ? 10 : 11)) | (uint32_t)b;
            return b;
        }
        above += hist[b];
    }
    return -1;
}

/* Finishes after the chosen bin `count` keys; returns 1 if ties must be split. */
static int finish_level(struct alloy_select *s, uint64_t count)
{
    int l = s->level;
    if (l == ALLOY_SEL_LEVELS - 1) {
        s->kth = s->prefix;
        s->kth_known = 1;
        s->n_eq = count;
        s->level = ALLOY_SEL_LEVELS;
        if (s->rem == count) {         /* every tie kept: keep key >= kth */
            s->thr = (int64_t)s->kth - 1;
            s->n_gt += count;
            s->n_tie = 0;
            return 0;
        }
        s->thr = (int64_t)s->kth;
        s->n_tie = s->rem;
        return 1;
    }
    if (!s->want_value && s->rem == count) { /* the whole bin is kept: stop early */
        s->thr = (int64_t)((uint64_t)s->prefix << g_shift[l]) - 1;
        s->n_gt += count;
        s->n_tie = 0;
        s->level = ALLOY_SEL_LEVELS;
        return 0;
    }
    s->level = l + 1;
    return 0;
}

int alloy_sel_reduce(struct alloy_select *s, const void *accs, size_t nchunks, size_t acc_size, size_t hist_offset,
                     struct alloy_err *err)
{
    if (!alloy_sel_active(s)) return ALLOY_OK;
    uint64_t hist[ALLOY_SEL_BINS] = {0};
    unsigned nb = g_nbins[s->level];
    const uint8_t *base = accs;
    for (size_t c = 0; c < nchunks; c++) {
        const uint32_t *h = (const uint32_t *)(const void *)(base + c * acc_size + hist_offset);
        for (unsigned b = 0; b < nb; b++) hist[b] += h[b];
    }
    int b = choose_bin(s, hist);
    if (b < 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                             "select: histogram holds fewer keys than the %llu wanted (scan and reduce disagree)",
                             (unsigned long long)s->k);
    if (!finish_level(s, hist[b])) return ALLOY_OK;
    s->tie_before = alloy_xmalloc((nchunks ? nchunks : 1) * sizeof *s->tie_before);
    if (!s->tie_before)
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "select: out of memory for %zu chunk tie counts", nchunks);
    s->nchunks = nchunks;
    uint64_t run = 0;
    for (size_t c = 0; c < nchunks; c++) {
        const uint32_t *h = (const uint32_t *)(const void *)(base + c * acc_size + hist_offset);
        s->tie_before[c] = run;
        run += h[b];
    }
    return ALLOY_OK;
}

int alloy_sel_reduce_total(struct alloy_select *s, const uint64_t *hist, struct alloy_err *err)
{
    if (!alloy_sel_active(s)) return ALLOY_OK;
    int b = choose_bin(s, hist);
    if (b < 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                             "select: histogram holds fewer keys than the %llu wanted (scan and reduce disagree)",
                             (unsigned long long)s->k);
    finish_level(s, hist[b]); /* a split keeps n_tie for a single chunk (see select.h) */
    return ALLOY_OK;
}

void alloy_sel_free(struct alloy_select *s)
{
    free(s->tie_before);
    s->tie_before = NULL;
    s->nchunks = 0;
}
