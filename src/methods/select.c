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
 *   wide level 1 may finish on its zero bin (select.h). The sampled layout
 *   is the wide one with two stages in front of level 0 (sample, window);
 *   leaving them, by success or by fallback, never touches rem/n_gt/prefix
 *   until the exact answer is known.
 *
 *   Driver windows (method.h fold): a tensor of one window is reduced at
 *   its fold by alloy_sel_reduce, exactly as before windows existed. Past
 *   one window, alloy_sel_fold sums each window's histograms into
 *   fold_hist (a window stage: moves its records into one combined record
 *   with per-chunk boundaries) and alloy_sel_end reduces; a split of ties
 *   after a histogram level then takes the tie stage, one counting pass
 *   into tie_before, turned into prefix counts at its end.
 */
#include "methods/select.h"
#include "methods/select_window.h"

#include "core/internal.h"
#include "methods/method.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

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
    uint64_t *hist;                   /* [2][ALLOY_SEL_WIDE_BINS], allocated by the first chunk: the
                                         level-0 counts; during a sample stage also, in the second
                                         half, those of keys with zero low 16 bits */
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

int alloy_sel_init_sampled(struct alloy_select *s, uint64_t n, uint64_t k, struct alloy_err *err)
{
    int rc = alloy_sel_init_wide(s, n, k, err);
    if (rc == ALLOY_OK && alloy_sel_active(s)) s->stage = ALLOY_SEL_STAGE_SAMPLE;
    s->window_keys = ALLOY_SEL_WINDOW_KEYS;
    return rc;
}

static void window_free(struct alloy_select *s)
{
    struct alloy_sel_window *w = s->window;
    if (!w) return;
    for (size_t c = 0; c < w->nrec && w->mem; c++) free(alloy_sel_bucket(w, c)->keys);
    if (w->all) free(w->all->keys);
    free(w->all);
    free(w->all_end);
    free(w->all_zero);
    free(w->mem);
    free(w);
    s->window = NULL;
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
        sh->hist = alloy_xcalloc(2 * ALLOY_SEL_WIDE_BINS, sizeof *sh->hist);
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
    if (s->stage == ALLOY_SEL_STAGE_TIES) {
        const uint32_t t = (uint32_t)s->thr; /* a split: 0 <= thr <= UINT32_MAX */
        uint32_t z = 0;
        for (size_t e = 0; e < n; e++) z += keys[e] == t;
        hist[0] += z;
        return;
    }
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
    l->h = alloy_xcalloc(2 * ALLOY_SEL_WIDE_BINS, sizeof *l->h);
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
        if (s->stage == ALLOY_SEL_STAGE_SAMPLE)
            for (size_t e = 0; e < n; e++) h[ALLOY_SEL_WIDE_BINS + (keys[e] >> 16)] += (keys[e] & 0xffffu) == 0;
        for (int i = STRIPES - 1; i >= 0; i--) pthread_mutex_unlock(&s->shared->stripe[i]);
        return;
    }
    uint32_t *h = l->h;
    for (size_t e = 0; e < n; e++) h[keys[e] >> 16]++;
    if (s->stage == ALLOY_SEL_STAGE_SAMPLE) /* a sample: a small part of the tensor */
        for (size_t e = 0; e < n; e++) h[ALLOY_SEL_WIDE_BINS + (keys[e] >> 16)] += (keys[e] & 0xffffu) == 0;
}

void alloy_sel_merge_wide(const struct alloy_select *const *sel, int nsel, struct alloy_sel_local *l)
{
    if (!l->h) return;
    /* stripe by stripe, skipping the empty ones (all of the upper half for magnitude keys); the table
       is left zeroed for the next chunk */
    const size_t per = ALLOY_SEL_WIDE_BINS / STRIPES;
    for (int i = 0; i < 2 * STRIPES; i++) { /* both halves: stripe i % STRIPES guards bins i * per.. */
        uint32_t *src = l->h + (size_t)i * per, any = 0;
        for (size_t b = 0; b < per; b++) any |= src[b]; /* vectorized */
        if (!any) continue;
        for (int q = 0; q < nsel; q++) {
            uint64_t *h = shared_hist(sel[q]);
            if (!h) continue; /* no total: reduce reports it */
            uint64_t *dst = h + (size_t)i * per;
            pthread_mutex_lock(&sel[q]->shared->stripe[i % STRIPES]);
            for (size_t b = 0; b < per; b++) dst[b] += src[b];
            pthread_mutex_unlock(&sel[q]->shared->stripe[i % STRIPES]);
        }
        memset(src, 0, per * sizeof *src);
    }
}

void alloy_sel_keep_block_split(const struct alloy_select *s, const uint32_t *keys, size_t n, uint64_t *ties,
                                uint32_t *mask)
{
    for (size_t e = 0; e < n; e++) mask[e] = alloy_sel_keep(s, keys[e], ties) ? ~0u : 0;
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

static int level0_nomem(struct alloy_err *err)
{
    return alloy_err_set(err, ALLOY_ERR_NOMEM, "select: out of memory for the level-0 counts");
}

/* Frees a wide level 0's total (its locks stay: a window may fall back to a full level 0). */
static void shared_hist_free(struct alloy_select *s)
{
    free(s->shared->hist);
    s->shared->hist = NULL;
}

/* A wide level 0: from the shared total, which is then freed. */
static int reduce_wide0(struct alloy_select *s, struct alloy_err *err)
{
    struct alloy_sel_shared *sh = s->shared;
    if (!sh || sh->nomem) return level0_nomem(err);
    int b = sh->hist ? choose_bin(s, sh->hist) : -1; /* no total: no key was counted */
    if (b < 0) return short_hist(s, err);
    finish_level(s, sh->hist[b]); /* level 0 never splits ties */
    shared_hist_free(s);
    return ALLOY_OK;
}

/* Places the window from the sample's level-0 counts h (ns keys; z: those with zero low bits): the
 * level-0 bins holding the sample ranks r -+ m around the k-th key's expected rank r, m a generous
 * margin (0.5% of the ranks plus 8 standard deviations of a sample quantile). 1 if it is worth a
 * window pass: at most ALLOY_SEL_WINDOW_BINS bins, and the keys it would collect (those with
 * nonzero low bits; the others are counted per bin) expected within 3/4 of the budget. */
static int place_window(struct alloy_select *s, const uint64_t *h, const uint64_t *z, uint64_t ns, int *blo_out,
                        int *bhi_out)
{
    double q = (double)s->k / (double)s->n, r = q * (double)ns;
    double m = 0.005 * (double)ns + 8.0 * sqrt((double)ns * q * (1.0 - q)) + 16.0;
    double ru = r - m, rl = r + m, cum = 0;
    int bhi = -1, blo = 0;
    for (int b = ALLOY_SEL_WIDE_BINS - 1; b >= 0; b--) {
        if (!h[b]) continue;
        cum += (double)h[b];
        if (bhi < 0 && cum >= ru) bhi = b;
        blo = b; /* the lowest bin reached: where the walk ends when rl is past every sample key */
        if (cum >= rl) break;
    }
    if (bhi < 0 || bhi - blo >= ALLOY_SEL_WINDOW_BINS) return 0;
    uint64_t collect = 0; /* a narrow window counts the keys with zero low bits instead (window_add) */
    for (int b = blo; b <= bhi; b++) collect += bhi - blo < 8 ? h[b] - z[b] : h[b];
    if ((double)collect * ((double)s->n / (double)ns) > 0.75 * (double)s->window_keys) return 0;
    *blo_out = blo;
    *bhi_out = bhi;
    return 1;
}

/* A window with records for the first driver window's chunks (all of them when the tensor is one). */
static struct alloy_sel_window *window_new(int blo, int bhi, size_t nchunks)
{
    struct alloy_sel_window *w = alloy_xcalloc(1, sizeof *w);
    if (!w) return NULL;
    if (nchunks > ALLOY_MAX_CHUNKS) nchunks = ALLOY_MAX_CHUNKS;
    size_t nc = nchunks ? nchunks : 1;
    w->nb = (unsigned)(bhi - blo + 1);
    w->stride = (sizeof(struct sel_bucket) + w->nb * sizeof(uint32_t) + 63) & ~(size_t)63;
    w->mem = alloy_xcalloc(1, nc * w->stride + 64);
    if (!w->mem) {
        free(w);
        return NULL;
    }
    w->lo = (uint32_t)blo << 16;
    w->hi = ((uint32_t)bhi << 16) | 0xffffu;
    w->nrec = nchunks;
    atomic_init(&w->total, 0);
    atomic_init(&w->failed, 0);
    return w;
}

int alloy_sel_reduce_sample(struct alloy_select *s, int sampled, size_t nchunks, struct alloy_err *err)
{
    if (!alloy_sel_sample_stage(s)) return ALLOY_OK;
    s->stage = ALLOY_SEL_STAGE_LEVELS;
    if (!sampled) return reduce_wide0(s, err); /* every chunk was counted: an exact level 0 */
    struct alloy_sel_shared *sh = s->shared;
    if (!sh || sh->nomem) return level0_nomem(err);
    uint64_t ns = 0;
    for (size_t b = 0; sh->hist && b < ALLOY_SEL_WIDE_BINS; b++) ns += sh->hist[b];
    int blo, bhi;
    if (ns && place_window(s, sh->hist, sh->hist + ALLOY_SEL_WIDE_BINS, ns, &blo, &bhi)) {
        s->window = window_new(blo, bhi, nchunks); /* no memory: the full level 0 needs none */
        if (s->window) s->stage = ALLOY_SEL_STAGE_WINDOW;
    }
    shared_hist_free(s); /* the full level 0, if it comes to that, counts afresh */
    return ALLOY_OK;
}


/* Room for `need` keys in a chunk's bucket (doubling); 0, with the window failed, if out of memory. */
int alloy_sel_bucket_reserve(struct alloy_sel_window *w, struct sel_bucket *b, size_t need)
{
    if (need <= b->cap) return 1;
    size_t cap = b->cap ? 2 * b->cap : 1024;
    while (cap < need) cap *= 2;
    uint32_t *nk = realloc(b->keys, cap * sizeof *nk);
    if (!nk) {
        atomic_store_explicit(&w->failed, 1, memory_order_relaxed);
        return 0;
    }
    b->keys = nk;
    b->cap = cap;
    return 1;
}

/* Walks a 65536-bin histogram from the top for the rank s->rem; returns the bin and moves the keys
 * above it from rem to n_gt. */
static int choose16(struct alloy_select *s, const uint64_t *h)
{
    uint64_t above = 0;
    for (int b = ALLOY_SEL_WIDE_BINS - 1; b >= 0; b--) {
        if (above + h[b] >= s->rem) {
            s->rem -= above;
            s->n_gt += above;
            return b;
        }
        above += h[b];
    }
    return -1;
}

/* Enters the tie stage (select.h): one more pass counts each chunk's keys equal to thr into
 * tie_before[nchunks], which the pass's end turns into the counts of the chunks before each. */
static int ties_stage(struct alloy_select *s, size_t nchunks, struct alloy_err *err)
{
    s->tie_before = alloy_xcalloc(nchunks ? nchunks : 1, sizeof *s->tie_before);
    if (!s->tie_before)
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "select: out of memory for %zu chunk tie counts", nchunks);
    s->nchunks = nchunks;
    s->stage = ALLOY_SEL_STAGE_TIES;
    return ALLOY_OK;
}

/* The window's records: one per chunk of the tensor's single driver window, or the combined one. */
static size_t window_nrec(const struct alloy_sel_window *w) { return w->all ? 1 : w->nrec; }
static const struct sel_bucket *window_rec(const struct alloy_sel_window *w, size_t r)
{
    return w->all ? w->all : alloy_sel_bucket(w, r);
}

/* Split ties from the window's per-chunk collections: tie_before from the collected keys equal to
 * kth and, when its low 16 bits are zero, the counted ones (a narrow window; a wide one collected
 * them). One record per chunk, or the combined record with its chunk boundaries. */
static int window_ties(struct alloy_select *s, const struct alloy_sel_window *w, uint32_t kth, size_t nchunks,
                       struct alloy_err *err)
{
    if (!w->all) nchunks = w->nrec;
    s->tie_before = alloy_xmalloc((nchunks ? nchunks : 1) * sizeof *s->tie_before);
    if (!s->tie_before)
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "select: out of memory for %zu chunk tie counts", nchunks);
    s->nchunks = nchunks;
    uint64_t run = 0;
    const unsigned z = (kth >> 16) - (w->lo >> 16), nb = w->nb;
    for (size_t c = 0; c < nchunks; c++) {
        s->tie_before[c] = run;
        const struct sel_bucket *bk = w->all ? NULL : alloy_sel_bucket(w, c);
        if ((kth & 0xffffu) == 0) run += bk ? bk->zero[z] : w->all_zero ? w->all_zero[c * nb + z] : 0;
        const uint32_t *k = bk ? bk->keys : w->all->keys + (c ? w->all_end[c - 1] : 0);
        size_t n = bk ? bk->n : (size_t)(w->all_end[c] - (c ? w->all_end[c - 1] : 0));
        for (size_t e = 0; e < n; e++) run += k[e] == kth;
    }
    return ALLOY_OK;
}

/* Ends a window pass: the exact k-th key from the window's keys in memory (two 16-bit levels over
 * the collected keys and the per-bin counts of the others), or back to a full level 0 when the
 * window failed or does not hold the k-th key. Split ties come from the per-chunk collections. */
static int reduce_window(struct alloy_select *s, size_t nchunks, struct alloy_err *err)
{
    struct alloy_sel_window *w = s->window;
    s->stage = ALLOY_SEL_STAGE_LEVELS;
    const unsigned nb = w->nb, blo = w->lo >> 16;
    const size_t nrec = window_nrec(w);
    uint64_t above = 0, in = atomic_load(&w->total);
    for (size_t c = 0; c < nrec; c++) {
        above += window_rec(w, c)->above;
        for (unsigned b = 0; b < nb; b++) in += window_rec(w, c)->zero[b];
    }
    if (atomic_load(&w->failed) || above >= s->rem || above + in < s->rem) {
        window_free(s);
        return ALLOY_OK;
    }
    uint64_t *h = alloy_xcalloc(ALLOY_SEL_WIDE_BINS, sizeof *h);
    if (!h) {
        window_free(s);
        return level0_nomem(err);
    }
    uint64_t rem = s->rem, n_gt = s->n_gt;
    s->rem -= above;
    s->n_gt += above;
    for (size_t c = 0; c < nrec; c++) {
        const struct sel_bucket *bk = window_rec(w, c);
        for (size_t e = 0; e < bk->n; e++) h[bk->keys[e] >> 16]++;
        for (unsigned b = 0; b < nb; b++) h[blo + b] += bk->zero[b];
    }
    int hi16 = choose16(s, h);
    memset(h, 0, ALLOY_SEL_WIDE_BINS * sizeof *h);
    for (size_t c = 0; c < nrec && hi16 >= (int)blo && hi16 < (int)(blo + nb); c++) {
        const struct sel_bucket *bk = window_rec(w, c);
        for (size_t e = 0; e < bk->n; e++)
            if (bk->keys[e] >> 16 == (uint32_t)hi16) h[bk->keys[e] & 0xffffu]++;
        h[0] += bk->zero[(unsigned)hi16 - blo];
    }
    int lo16 = hi16 >= 0 ? choose16(s, h) : -1;
    if (lo16 < 0) { /* cannot happen: the window holds the rank */
        s->rem = rem;
        s->n_gt = n_gt;
        free(h);
        window_free(s);
        return short_hist(s, err);
    }
    uint32_t kth = ((uint32_t)hi16 << 16) | (uint32_t)lo16;
    int split = finish_exact(s, kth, h[lo16]), rc = ALLOY_OK;
    free(h);
    if (split) rc = window_ties(s, w, kth, nchunks, err);
    window_free(s);
    return rc;
}

/* Bins of the current level's histogram (a wide level 1's zero bin included). */
static unsigned level_bins(const struct alloy_select *s)
{
    return (1u << layout_of(s)->bits[s->level]) + (s->wide && s->level == 1 ? 1 : 0);
}

/* The current level from its summed histogram: chooses the bin and finishes or moves on. Returns 1
 * when ties at the threshold must be split (*tie_bin: the per-chunk bin that counts them), 0 when
 * not, -1 when the histogram holds fewer keys than wanted. */
static int reduce_hist(struct alloy_select *s, const uint64_t *hist, int *tie_bin)
{
    int zero_bin = s->wide && s->level == 1;
    int b = choose_bin(s, hist);
    if (b < 0) return -1;
    *tie_bin = b;
    if (zero_bin && b == 0 && s->rem > hist[0] - hist[WIDE_ZERO_BIN]) {
        /* the k-th key is prefix << 6, all low bits zero: the keys of bin 0 above it are kept */
        uint64_t above = hist[0] - hist[WIDE_ZERO_BIN];
        s->rem -= above;
        s->n_gt += above;
        *tie_bin = WIDE_ZERO_BIN;
        return finish_exact(s, s->prefix << 6, hist[WIDE_ZERO_BIN]);
    }
    return finish_level(s, hist[b]);
}

static const uint32_t *chunk_hist(const void *accs, size_t c, size_t acc_size, size_t hist_offset)
{
    return (const uint32_t *)(const void *)((const uint8_t *)accs + c * acc_size + hist_offset);
}

int alloy_sel_reduce(struct alloy_select *s, const void *accs, size_t nchunks, size_t acc_size, size_t hist_offset,
                     struct alloy_err *err)
{
    if (!alloy_sel_active(s)) return ALLOY_OK;
    if (alloy_sel_window_stage(s)) return reduce_window(s, nchunks, err);
    if (alloy_sel_sample_stage(s)) return alloy_sel_reduce_sample(s, 0, nchunks, err);
    if (alloy_sel_wide_level0(s)) return reduce_wide0(s, err);
    uint64_t hist[ALLOY_SEL_BINS + 1] = {0};
    unsigned nb = level_bins(s);
    for (size_t c = 0; c < nchunks; c++) {
        const uint32_t *h = chunk_hist(accs, c, acc_size, hist_offset);
        for (unsigned b = 0; b < nb; b++) hist[b] += h[b];
    }
    int tie_bin, split = reduce_hist(s, hist, &tie_bin);
    if (split < 0) return short_hist(s, err);
    if (!split) return ALLOY_OK;
    s->tie_before = alloy_xmalloc((nchunks ? nchunks : 1) * sizeof *s->tie_before);
    if (!s->tie_before)
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "select: out of memory for %zu chunk tie counts", nchunks);
    s->nchunks = nchunks;
    uint64_t run = 0;
    for (size_t c = 0; c < nchunks; c++) {
        s->tie_before[c] = run;
        run += chunk_hist(accs, c, acc_size, hist_offset)[tie_bin];
    }
    return ALLOY_OK;
}

/* ---------------------------------------------------------------- windows of chunks (method.h fold) */

/* A window stage's fold when the tensor spans several driver windows: the records' counts and keys
 * move into the combined record (keys grown to the exact size: their total is bounded by
 * window_keys), with each chunk's end among the keys and, for a narrow window, its per-bin counts
 * (8 + 4 nb bytes per chunk of the tensor), so split ties need no further pass; the records start
 * afresh for the chunks from first + count. Out of memory fails the window: the full level 0
 * follows, which needs none of this. */
static void window_fold(struct alloy_select *s, size_t first, size_t count, size_t nchunks)
{
    struct alloy_sel_window *w = s->window;
    if (!w->all) {
        w->all = alloy_xcalloc(1, sizeof *w->all + w->nb * sizeof(uint32_t));
        w->all_end = alloy_xcalloc(nchunks ? nchunks : 1, sizeof *w->all_end);
        w->all_zero = w->nb <= 8 ? alloy_xcalloc((nchunks ? nchunks : 1) * w->nb, sizeof *w->all_zero) : NULL;
        if (!w->all || !w->all_end || (w->nb <= 8 && !w->all_zero)) atomic_store(&w->failed, 1);
    }
    for (size_t r = 0; r < count && r < w->nrec; r++) {
        struct sel_bucket *b = alloy_sel_bucket(w, r), *all = w->all;
        if (!atomic_load(&w->failed) && first + r < nchunks) {
            all->above += b->above;
            for (unsigned z = 0; z < w->nb; z++) all->zero[z] += b->zero[z];
            if (w->all_zero) memcpy(w->all_zero + (first + r) * w->nb, b->zero, w->nb * sizeof *b->zero);
            uint32_t *k = b->n ? realloc(all->keys, (all->n + b->n) * sizeof *k) : NULL;
            if (b->n && !k) {
                atomic_store(&w->failed, 1);
            } else if (b->n) {
                memcpy(k + all->n, b->keys, b->n * sizeof *k);
                all->keys = k;
                all->n += b->n;
            }
            w->all_end[first + r] = all->n;
        }
        free(b->keys);
        memset(b, 0, sizeof *b + w->nb * sizeof(uint32_t));
    }
    w->first = first + count;
}

int alloy_sel_fold(struct alloy_select *s, const void *accs, size_t first, size_t count, size_t nchunks,
                   size_t acc_size, size_t hist_offset, struct alloy_err *err)
{
    if (!alloy_sel_active(s) || alloy_sel_sample_stage(s) || alloy_sel_wide_level0(s)) return ALLOY_OK;
    if (s->stage == ALLOY_SEL_STAGE_TIES) {
        for (size_t c = 0; c < count; c++) s->tie_before[first + c] = chunk_hist(accs, c, acc_size, hist_offset)[0];
        return ALLOY_OK;
    }
    if (first == 0 && count == nchunks) { /* the whole tensor in one window: the per-chunk tie counts too */
        s->folded = 1;
        return alloy_sel_reduce(s, accs, nchunks, acc_size, hist_offset, err);
    }
    if (alloy_sel_window_stage(s)) {
        window_fold(s, first, count, nchunks);
        return ALLOY_OK;
    }
    if (!s->fold_hist && !(s->fold_hist = alloy_xcalloc(ALLOY_SEL_BINS + 1, sizeof *s->fold_hist)))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "select: out of memory for a histogram");
    unsigned nb = level_bins(s);
    for (size_t c = 0; c < count; c++) {
        const uint32_t *h = chunk_hist(accs, c, acc_size, hist_offset);
        for (unsigned b = 0; b < nb; b++) s->fold_hist[b] += h[b];
    }
    return ALLOY_OK;
}

int alloy_sel_end(struct alloy_select *s, int sampled, size_t nchunks, struct alloy_err *err)
{
    if (s->folded) { /* reduced at its one fold */
        s->folded = 0;
        return ALLOY_OK;
    }
    if (!alloy_sel_active(s)) return ALLOY_OK;
    if (alloy_sel_sample_stage(s)) return alloy_sel_reduce_sample(s, sampled, nchunks, err);
    if (alloy_sel_wide_level0(s)) return reduce_wide0(s, err);
    if (alloy_sel_window_stage(s)) return reduce_window(s, nchunks, err);
    if (s->stage == ALLOY_SEL_STAGE_TIES) { /* each chunk's count becomes the count before it */
        uint64_t run = 0;
        for (size_t c = 0; c < s->nchunks; c++) {
            uint64_t t = s->tie_before[c];
            s->tie_before[c] = run;
            run += t;
        }
        s->stage = ALLOY_SEL_STAGE_LEVELS;
        return ALLOY_OK;
    }
    uint64_t *hist = s->fold_hist;
    s->fold_hist = NULL;
    int tie_bin, split = hist ? reduce_hist(s, hist, &tie_bin) : -1;
    free(hist);
    if (split < 0) return short_hist(s, err);
    return split && !s->want_value ? ties_stage(s, nchunks, err) : ALLOY_OK;
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
    free(s->fold_hist);
    s->fold_hist = NULL;
    free(s->tie_before);
    s->tie_before = NULL;
    s->nchunks = 0;
    window_free(s);
    shared_free(s);
}
