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
 *   The two layouts (narrow 11/11/10 bits, wide 16/10/6) differ only in
 *   their digit tables and in two places: a wide level 0 is counted into a
 *   shared total (local table per chunk, added under striped locks), and a
 *   wide level 1 may finish on its zero bin (select.h).
 */
#include "methods/select.h"

#include "core/internal.h"

#include <pthread.h>

/* Digit of level l: bits [shift, shift + bits) of the key, among keys whose higher bits equal the prefix. */
struct sel_layout {
    unsigned shift[ALLOY_SEL_LEVELS], bits[ALLOY_SEL_LEVELS];
};
static const struct sel_layout g_narrow = {{21, 10, 0}, {11, 11, 10}};
static const struct sel_layout g_wide = {{16, 6, 0}, {16, 10, 6}};

#define WIDE_ZERO_BIN 1024 /* wide level 1: keys == prefix << 16 (also counted in bin 0) */
#define STRIPES 16         /* locks over the wide level-0 total, ALLOY_SEL_WIDE_BINS / STRIPES bins each */

struct alloy_sel_shared {
    pthread_mutex_t mu;               /* guards hist's allocation and nomem */
    pthread_mutex_t stripe[STRIPES];  /* guard the bins of hist */
    uint64_t *hist;                   /* [ALLOY_SEL_WIDE_BINS], allocated by the first chunk */
    int nomem;
};

static const struct sel_layout *layout_of(const struct alloy_select *s) { return s->wide ? &g_wide : &g_narrow; }

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

int alloy_sel_init_wide(struct alloy_select *s, uint64_t n, uint64_t k, struct alloy_err *err)
{
    alloy_sel_init(s, n, k, 0);
    s->wide = 1;
    if (!alloy_sel_active(s)) return ALLOY_OK;
    struct alloy_sel_shared *sh = alloy_xcalloc(1, sizeof *sh);
    if (!sh) return alloy_err_set(err, ALLOY_ERR_NOMEM, "select: out of memory for the level-0 counts");
    pthread_mutex_init(&sh->mu, NULL);
    for (int i = 0; i < STRIPES; i++) pthread_mutex_init(&sh->stripe[i], NULL);
    s->shared = sh;
    return ALLOY_OK;
}

static void shared_free(struct alloy_select *s)
{
    struct alloy_sel_shared *sh = s->shared;
    if (!sh) return;
    pthread_mutex_destroy(&sh->mu);
    for (int i = 0; i < STRIPES; i++) pthread_mutex_destroy(&sh->stripe[i]);
    free(sh->hist);
    free(sh);
    s->shared = NULL;
}

/* The wide level-0 total, allocated by the first caller; NULL if that failed (reduce reports it). */
static uint64_t *shared_hist(const struct alloy_select *s)
{
    struct alloy_sel_shared *sh = s->shared;
    if (!sh) return NULL;
    pthread_mutex_lock(&sh->mu);
    if (!sh->hist && !sh->nomem) {
        sh->hist = alloy_xcalloc(ALLOY_SEL_WIDE_BINS, sizeof *sh->hist);
        sh->nomem = !sh->hist;
    }
    uint64_t *h = sh->hist;
    pthread_mutex_unlock(&sh->mu);
    return h;
}

/* Counts the keys whose bits above `psh` equal `prefix` into hist[(key >> sh) & mask]. Bin 0 is
 * counted apart: at a wide level 1 it holds every key with zero low bits (most of a bfloat16 tensor's
 * threshold ties), whose increments of one address would form a chain through memory. */
static void hist_prefix(const uint32_t *keys, size_t n, unsigned psh, uint32_t prefix, unsigned sh, uint32_t mask,
                        uint32_t *hist)
{
    const uint32_t prefix0 = prefix << (psh - sh); /* key >> sh of bin 0 */
    uint32_t bins[256], in0 = 0;
    for (size_t e0 = 0; e0 < n; e0 += 256) {
        const uint32_t *kb = keys + e0;
        size_t m = n - e0 < 256 ? n - e0 : 256;
        uint32_t k = 0, k0 = 0;
        for (size_t e = 0; e < m; e++) { /* vectorized */
            k += (kb[e] >> psh) == prefix;
            k0 += (kb[e] >> sh) == prefix0;
        }
        in0 += k0;
        if (k == k0) continue;
        if ((k - k0) * 8 < m) { /* few: a branch that is mostly not taken */
            for (size_t e = 0; e < m; e++)
                if ((kb[e] >> psh) == prefix && (kb[e] >> sh) != prefix0) hist[(kb[e] >> sh) & mask]++;
            continue;
        }
        /* many, at unpredictable places: gather their bins without a branch, then count them */
        size_t j = 0;
        for (size_t e = 0; e < m; e++) {
            uint32_t key = kb[e];
            bins[j] = (key >> sh) & mask;
            j += ((key >> psh) == prefix) & ((key >> sh) != prefix0);
        }
        for (size_t i = 0; i < j; i++) hist[bins[i]]++;
    }
    hist[0] += in0;
}

void alloy_sel_hist_keys(const struct alloy_select *s, const uint32_t *keys, size_t n, uint32_t *hist)
{
    /* the level's shifts and prefix in locals: the hist[] stores may alias the selection, so the
       compiler would reload them for every key */
    int l = s->level;
    if (l >= ALLOY_SEL_LEVELS) return;
    if (s->wide && l == 0) {
        struct alloy_sel_local direct = {NULL};
        alloy_sel_hist_wide(s, keys, n, &direct);
        return;
    }
    const struct sel_layout *L = layout_of(s);
    const unsigned sh = L->shift[l];
    const uint32_t mask = (1u << L->bits[l]) - 1;
    if (l == 0) { /* no prefix yet */
        for (size_t e = 0; e < n; e++) hist[keys[e] >> sh]++;
        return;
    }
    const uint32_t prefix = s->prefix;
    hist_prefix(keys, n, sh + L->bits[l], prefix, sh, mask, hist);
    if (s->wide && l == 1) { /* the zero bin: keys with all 16 low bits zero */
        const uint32_t key0 = prefix << 16;
        uint32_t z = 0;
        for (size_t e = 0; e < n; e++) z += keys[e] == key0;
        hist[WIDE_ZERO_BIN] += z;
    }
}

void alloy_sel_local_init(struct alloy_sel_local *l)
{
    l->h = alloy_xcalloc(ALLOY_SEL_WIDE_BINS, sizeof *l->h);
}

void alloy_sel_local_free(struct alloy_sel_local *l)
{
    free(l->h);
    l->h = NULL;
}

void alloy_sel_hist_wide(const struct alloy_select *s, const uint32_t *keys, size_t n, struct alloy_sel_local *l)
{
    if (!alloy_sel_wide_level0(s) || n == 0) return;
    if (!l->h) { /* no local table: into the total, every stripe locked */
        uint64_t *h = shared_hist(s);
        if (!h) return;
        for (int i = 0; i < STRIPES; i++) pthread_mutex_lock(&s->shared->stripe[i]);
        for (size_t e = 0; e < n; e++) h[keys[e] >> 16]++;
        for (int i = STRIPES - 1; i >= 0; i--) pthread_mutex_unlock(&s->shared->stripe[i]);
        return;
    }
    uint32_t *h = l->h;
    for (size_t e = 0; e < n; e++) h[keys[e] >> 16]++;
}

void alloy_sel_merge_wide(const struct alloy_select *const *sel, int nsel, struct alloy_sel_local *l)
{
    if (!l->h) return;
    /* stripe by stripe, skipping the empty ones (all of the upper half for magnitude keys); the table
       is left zeroed for the next chunk */
    const size_t per = ALLOY_SEL_WIDE_BINS / STRIPES;
    for (int i = 0; i < STRIPES; i++) {
        uint32_t *src = l->h + (size_t)i * per, any = 0;
        for (size_t b = 0; b < per; b++) any |= src[b]; /* vectorized */
        if (!any) continue;
        for (int q = 0; q < nsel; q++) {
            uint64_t *h = shared_hist(sel[q]);
            if (!h) continue; /* no total: reduce reports it */
            uint64_t *dst = h + (size_t)i * per;
            pthread_mutex_lock(&sel[q]->shared->stripe[i]);
            for (size_t b = 0; b < per; b++) dst[b] += src[b];
            pthread_mutex_unlock(&sel[q]->shared->stripe[i]);
        }
        memset(src, 0, per * sizeof *src);
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
    const struct sel_layout *L = layout_of(s);
    unsigned bits = L->bits[s->level];
    uint64_t above = 0;
    for (int b = (int)(1u << bits) - 1; b >= 0; b--) {
        if (above + hist[b] >= s->rem) {
            s->rem -= above;
            s->n_gt += above;
            s->prefix = (s->prefix << bits) | (uint32_t)b;
            return b;
        }
        above += hist[b];
    }
    return -1;
}

/* Finishes on the exact k-th key, which `count` keys equal; returns 1 if ties must be split. */
static int finish_exact(struct alloy_select *s, uint32_t key, uint64_t count)
{
    s->kth = key;
    s->kth_known = 1;
    s->n_eq = count;
    s->level = ALLOY_SEL_LEVELS;
    if (s->rem == count) {         /* every tie kept: keep key >= kth */
        s->thr = (int64_t)key - 1;
        s->n_gt += count;
        s->n_tie = 0;
        return 0;
    }
    s->thr = (int64_t)key;
    s->n_tie = s->rem;
    return 1;
}

/* Finishes after the chosen bin `count` keys; returns 1 if ties must be split. */
static int finish_level(struct alloy_select *s, uint64_t count)
{
    int l = s->level;
    if (l == ALLOY_SEL_LEVELS - 1) return finish_exact(s, s->prefix, count);
    if (!s->want_value && s->rem == count) { /* the whole bin is kept: stop early */
        s->thr = (int64_t)((uint64_t)s->prefix << layout_of(s)->shift[l]) - 1;
        s->n_gt += count;
        s->n_tie = 0;
        s->level = ALLOY_SEL_LEVELS;
        return 0;
    }
    s->level = l + 1;
    return 0;
}

static int short_hist(const struct alloy_select *s, struct alloy_err *err)
{
    return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                         "select: histogram holds fewer keys than the %llu wanted (scan and reduce disagree)",
                         (unsigned long long)s->k);
}

/* A wide level 0: from the shared total, which is then freed. */
static int reduce_wide0(struct alloy_select *s, struct alloy_err *err)
{
    struct alloy_sel_shared *sh = s->shared;
    if (!sh || sh->nomem)
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "select: out of memory for the level-0 counts");
    int b = sh->hist ? choose_bin(s, sh->hist) : -1; /* no total: no key was counted */
    if (b < 0) return short_hist(s, err);
    finish_level(s, sh->hist[b]); /* level 0 never splits ties */
    shared_free(s);
    return ALLOY_OK;
}

int alloy_sel_reduce(struct alloy_select *s, const void *accs, size_t nchunks, size_t acc_size, size_t hist_offset,
                     struct alloy_err *err)
{
    if (!alloy_sel_active(s)) return ALLOY_OK;
    if (alloy_sel_wide_level0(s)) return reduce_wide0(s, err);
    uint64_t hist[ALLOY_SEL_BINS] = {0};
    int zero_bin = s->wide && s->level == 1;
    unsigned nb = (1u << layout_of(s)->bits[s->level]) + (zero_bin ? 1 : 0);
    const uint8_t *base = accs;
    for (size_t c = 0; c < nchunks; c++) {
        const uint32_t *h = (const uint32_t *)(const void *)(base + c * acc_size + hist_offset);
        for (unsigned b = 0; b < nb; b++) hist[b] += h[b];
    }
    int b = choose_bin(s, hist);
    if (b < 0) return short_hist(s, err);
    int tie_bin = b;
    if (zero_bin && b == 0 && s->rem > hist[0] - hist[WIDE_ZERO_BIN]) {
        /* the k-th key is prefix << 6, all low bits zero: the keys of bin 0 above it are kept */
        uint64_t above = hist[0] - hist[WIDE_ZERO_BIN];
        s->rem -= above;
        s->n_gt += above;
        tie_bin = WIDE_ZERO_BIN;
        if (!finish_exact(s, s->prefix << 6, hist[WIDE_ZERO_BIN])) return ALLOY_OK;
    } else if (!finish_level(s, hist[b])) {
        return ALLOY_OK;
    }
    s->tie_before = alloy_xmalloc((nchunks ? nchunks : 1) * sizeof *s->tie_before);
    if (!s->tie_before)
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "select: out of memory for %zu chunk tie counts", nchunks);
    s->nchunks = nchunks;
    uint64_t run = 0;
    for (size_t c = 0; c < nchunks; c++) {
        const uint32_t *h = (const uint32_t *)(const void *)(base + c * acc_size + hist_offset);
        s->tie_before[c] = run;
        run += h[tie_bin];
    }
    return ALLOY_OK;
}

int alloy_sel_reduce_total(struct alloy_select *s, const uint64_t *hist, struct alloy_err *err)
{
    if (!alloy_sel_active(s)) return ALLOY_OK;
    int b = choose_bin(s, hist);
    if (b < 0) return short_hist(s, err);
    finish_level(s, hist[b]); /* a split keeps n_tie for a single chunk (see select.h) */
    return ALLOY_OK;
}

void alloy_sel_free(struct alloy_select *s)
{
    free(s->tie_before);
    s->tie_before = NULL;
    s->nchunks = 0;
    shared_free(s);
}
