/*
 * test_select.c — radix selection (src/methods/select.c) against sorting.
 *
 * Every case streams the values through simulated chunks exactly as a merge
 * method would (per-chunk histograms, reduce in chunk order, per-chunk tie
 * budgets) and compares the kept set with a reference computed by sorting
 * (key descending, then index ascending) — the documented total order.
 */
#include "test.h"
#include "alloy.h"
#include "methods/method.h"
#include "methods/select.h"
#include "kernels/kernels.h"

#include <stdint.h>
#include <stdlib.h>

static uint64_t g_state = 0x1234567;
static double urand(void) /* xorshift64*, independent of the library's generator */
{
    g_state ^= g_state >> 12;
    g_state ^= g_state << 25;
    g_state ^= g_state >> 27;
    return (double)((g_state * 2685821657736338717ull) >> 11) * 0x1p-53;
}

static float bf16_round(float f) { return alloy_bf16_to_f32(alloy_f32_to_bf16(f)); }

struct ref_item { uint32_t key; size_t idx; };

static int ref_cmp(const void *a, const void *b)
{
    const struct ref_item *x = a, *y = b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1; /* descending key */
    return x->idx < y->idx ? -1 : (x->idx > y->idx);       /* lower index first */
}

static uint32_t key_of(float v, int abs_keys) { return abs_keys ? alloy_sel_key_abs(v) : alloy_sel_key(v); }

/* Runs the selection over chunks of `cs` elements; fills keep[]; returns the pass count or -1. */
static int run_select(const float *v, size_t n, size_t cs, uint64_t k, int abs_keys, int want_value,
                      struct alloy_select *s, unsigned char *keep)
{
    size_t nchunks = (n + cs - 1) / cs;
    int passes = 0;
    alloy_sel_init(s, n, k, want_value);
    while (alloy_sel_active(s)) {
        uint32_t *accs = calloc(nchunks ? nchunks : 1, ALLOY_SEL_BINS * sizeof(uint32_t));
        for (size_t c = 0; c < nchunks; c++)
            for (size_t e = c * cs; e < n && e < (c + 1) * cs; e++) {
                int b = alloy_sel_bin(s, key_of(v[e], abs_keys));
                if (b >= 0) accs[c * ALLOY_SEL_BINS + (size_t)b]++;
            }
        struct alloy_err err = {0};
        int rc = alloy_sel_reduce(s, accs, nchunks, ALLOY_SEL_BINS * sizeof(uint32_t), 0, &err);
        free(accs);
        if (rc) return -1;
        if (++passes > ALLOY_SEL_LEVELS) return -1;
    }
    for (size_t c = 0; c < nchunks; c++) {
        uint64_t ties = alloy_sel_chunk_ties(s, c);
        for (size_t e = c * cs; e < n && e < (c + 1) * cs; e++) keep[e] = (unsigned char)alloy_sel_keep(s, key_of(v[e], abs_keys), &ties);
    }
    return passes;
}

/* The reference: the items sorted (key descending, then index ascending; caller frees) and
 * ref[e] = 1 for the k largest. */
static struct ref_item *sorted_reference(const float *v, size_t n, uint64_t k, int abs_keys, unsigned char *ref)
{
    struct ref_item *it = malloc((n ? n : 1) * sizeof *it);
    for (size_t e = 0; e < n; e++) it[e] = (struct ref_item){key_of(v[e], abs_keys), e};
    qsort(it, n, sizeof *it, ref_cmp);
    for (size_t r = 0; r < k && r < n; r++) ref[it[r].idx] = 1;
    return it;
}

/* Compares with sorting; returns the number of mismatching elements. */
static size_t check_against_sort(const float *v, size_t n, size_t cs, uint64_t k, int abs_keys, int want_value)
{
    unsigned char *ref = calloc(n ? n : 1, 1), *got = calloc(n ? n : 1, 1);
    struct ref_item *it = sorted_reference(v, n, k, abs_keys, ref);
    struct alloy_select s;
    int passes = run_select(v, n, cs, k, abs_keys, want_value, &s, got);
    size_t bad = passes < 0 ? n + 1 : 0;
    for (size_t e = 0; e < n && passes >= 0; e++) bad += ref[e] != got[e];
    if (want_value && k >= 1 && k <= n && passes >= 0) {
        CHECK_MSG(s.kth_known && s.kth == it[k - 1].key, "k=%llu: kth key %08x, expected %08x",
                  (unsigned long long)k, s.kth, it[k - 1].key);
    }
    if (bad) test_fail(__FILE__, __LINE__, "n=%zu cs=%zu k=%llu abs=%d: %zu mismatches (passes %d)", n, cs,
                       (unsigned long long)k, abs_keys, bad, passes);
    alloy_sel_free(&s);
    free(it);
    free(ref);
    free(got);
    return bad;
}

TEST(select_key_orders_floats)
{
    for (int t = 0; t < 20000; t++) {
        float a = (float)((urand() - 0.5) * pow(10, (int)(urand() * 20) - 10));
        float b = (t % 3 == 0) ? a : (float)((urand() - 0.5) * pow(10, (int)(urand() * 20) - 10));
        CHECK((a < b) == (alloy_sel_key(a) < alloy_sel_key(b)));
        CHECK((fabsf(a) < fabsf(b)) == (alloy_sel_key_abs(a) < alloy_sel_key_abs(b)));
        CHECK(alloy_sel_unkey(alloy_sel_key(a)) == a);
        CHECK(alloy_sel_unkey_abs(alloy_sel_key_abs(a)) == fabsf(a));
    }
    CHECK(alloy_sel_key(-INFINITY) < alloy_sel_key(-1e30f));
    CHECK(alloy_sel_key(-0.0f) < alloy_sel_key(0.0f));
    CHECK(alloy_sel_key(1e30f) < alloy_sel_key(INFINITY));
    CHECK(alloy_sel_key_abs(INFINITY) < alloy_sel_key_abs(NAN));
}

TEST(select_matches_sort_many_ties)
{
    enum { N = 1000 };
    static float v[N];
    for (size_t e = 0; e < N; e++) v[e] = (float)((int)(urand() * 9) - 4) * 0.25f; /* 9 distinct values */
    const size_t cs[] = {1, 7, 64, N};
    const uint64_t ks[] = {0, 1, 2, 17, 111, 500, 999, 1000};
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 8; b++) {
            check_against_sort(v, N, cs[a], ks[b], 1, 0);
            check_against_sort(v, N, cs[a], ks[b], 0, 1);
        }
}

TEST(select_matches_sort_bf16_values)
{
    enum { N = 5000 };
    static float v[N];
    for (size_t e = 0; e < N; e++) {
        double g = sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand());
        v[e] = bf16_round((float)(g * 0.02));
    }
    const uint64_t ks[] = {1, 50, 1234, 2500, 4999};
    for (size_t b = 0; b < 5; b++) {
        check_against_sort(v, N, 333, ks[b], 1, 0);
        check_against_sort(v, N, 5000, ks[b], 1, 1);
        check_against_sort(v, N, 64, ks[b], 0, 0);
    }
}

TEST(select_matches_sort_distinct_values)
{
    enum { N = 3000 };
    static float v[N];
    for (size_t e = 0; e < N; e++) v[e] = (float)(urand() * 2 - 1);
    check_against_sort(v, N, 100, 1500, 1, 0);
    check_against_sort(v, N, 100, 1500, 1, 1);
    check_against_sort(v, N, 1, 7, 0, 1);
}

TEST(select_all_equal)
{
    enum { N = 100 };
    static float v[N];
    for (size_t e = 0; e < N; e++) v[e] = 0.5f;
    const uint64_t ks[] = {0, 1, 37, 99, 100};
    for (size_t b = 0; b < 5; b++) {
        check_against_sort(v, N, 9, ks[b], 1, 0);
        check_against_sort(v, N, 9, ks[b], 0, 1);
    }
    /* all zeros, too: the lowest possible key (0) must still work */
    for (size_t e = 0; e < N; e++) v[e] = 0.0f;
    for (size_t b = 0; b < 5; b++) check_against_sort(v, N, 13, ks[b], 1, 0);
}

TEST(select_k_zero_and_n_need_no_pass)
{
    float v[10] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
    unsigned char keep[10];
    struct alloy_select s;
    CHECK_INT(run_select(v, 10, 3, 0, 1, 0, &s, keep), 0);
    for (int e = 0; e < 10; e++) CHECK_INT(keep[e], 0);
    CHECK_INT(run_select(v, 10, 3, 10, 1, 0, &s, keep), 0);
    for (int e = 0; e < 10; e++) CHECK_INT(keep[e], 1);
    CHECK_INT(run_select(v, 10, 3, 25, 1, 0, &s, keep), 0); /* k clamped to n */
    for (int e = 0; e < 10; e++) CHECK_INT(keep[e], 1);
    /* the k = 2 largest: 9 and 6 */
    CHECK(run_select(v, 10, 3, 2, 1, 0, &s, keep) > 0);
    for (int e = 0; e < 10; e++) CHECK_INT(keep[e], v[e] >= 6);
    /* ties split across chunks: k = 3 takes 9, 6 and the FIRST 5 (index 4), not index 8 */
    CHECK(run_select(v, 10, 3, 3, 1, 0, &s, keep) > 0);
    CHECK(keep[4] && !keep[8] && keep[5] && keep[7] && keep[3] == 0);
    alloy_sel_free(&s);
}

TEST(select_nested_selections_are_subsets)
{
    enum { N = 777 };
    static float v[N];
    static unsigned char a[N], b[N];
    for (size_t e = 0; e < N; e++) v[e] = bf16_round((float)(urand() - 0.5) * 0.01f) * (e % 5 ? 1 : 0);
    struct alloy_select s1, s2;
    run_select(v, N, 50, 400, 1, 0, &s1, a);
    run_select(v, N, 50, 123, 1, 0, &s2, b);
    size_t na = 0, nb = 0, bad = 0;
    for (size_t e = 0; e < N; e++) {
        na += a[e];
        nb += b[e];
        bad += b[e] && !a[e];
    }
    CHECK_INT(na, 400);
    CHECK_INT(nb, 123);
    CHECK_INT(bad, 0);
    alloy_sel_free(&s1);
    alloy_sel_free(&s2);
}

TEST(select_want_value_gives_quantiles)
{
    enum { N = 2001 };
    static float v[N], sorted[N];
    for (size_t e = 0; e < N; e++) sorted[e] = v[e] = (float)(urand() * 100 - 50);
    /* ascending sort by insertion into a copy (reference) */
    for (size_t i = 1; i < N; i++) {
        float x = sorted[i];
        size_t j = i;
        while (j > 0 && sorted[j - 1] > x) { sorted[j] = sorted[j - 1]; j--; }
        sorted[j] = x;
    }
    const double qs[] = {0.25, 0.5, 0.75};
    for (int q = 0; q < 3; q++) {
        size_t idx = (size_t)floor(qs[q] * (N - 1));  /* ascending index */
        unsigned char keep[N];
        struct alloy_select s;
        run_select(v, N, 100, N - idx, 0, 1, &s, keep); /* (N-idx)-th largest */
        CHECK(s.kth_known);
        CHECK(alloy_sel_unkey(alloy_sel_kth(&s)) == sorted[idx]);
        alloy_sel_free(&s);
    }
}

/* ---------------------------------------------------------------- wide layout, block keep */

/* run_select() for the wide and sampled layouts: level 0 through chunk-local tables (or, with
 * no_local, straight into the shared total), the other levels through alloy_sel_hist_keys() in blocks
 * of varying size; keep decisions through alloy_sel_keep_block() in blocks of varying size. Sampled
 * (k_sample > 0): the sample pass counts only k_sample chunks (as the driver's sample passes:
 * alloy_sample_chunk) and the window pass collects through a kernel table's sel_window_add (g_k), with a window
 * budget of window_keys. */
static int g_window_passes; /* window passes of the last sampled run */
static const struct alloy_kernels *g_k; /* the kernel table whose window pass runs (every one the CPU has) */

static int run_select_layout(const float *v, size_t n, size_t cs, uint64_t k, int abs_keys, int no_local,
                             size_t k_sample, uint64_t window_keys, struct alloy_select *s, unsigned char *keep)
{
    size_t nchunks = (n + cs - 1) / cs;
    int passes = 0;
    struct alloy_err err = {0};
    if (k_sample ? alloy_sel_init_sampled(s, n, k, &err) : alloy_sel_init_wide(s, n, k, &err)) return -1;
    if (k_sample) s->window_keys = window_keys;
    g_window_passes = 0;
    uint32_t *keys = malloc((n ? n : 1) * sizeof *keys), *mask = malloc((n ? n : 1) * sizeof *mask);
    for (size_t e = 0; e < n; e++) keys[e] = key_of(v[e], abs_keys);
    while (alloy_sel_active(s)) {
        int sample = alloy_sel_sample_stage(s) && k_sample < nchunks;
        size_t todo = sample ? k_sample : nchunks;
        g_window_passes += alloy_sel_window_stage(s);
        uint32_t *accs = calloc(nchunks ? nchunks : 1, ALLOY_SEL_BINS * sizeof(uint32_t));
        for (size_t i = 0; i < todo; i++) {
            size_t c = sample ? alloy_sample_chunk(i, k_sample, nchunks) : i;
            size_t e0 = c * cs, e1 = e0 + cs < n ? e0 + cs : n;
            struct alloy_sel_local loc = {NULL};
            int wide0 = alloy_sel_wide_level0(s), window = alloy_sel_window_stage(s);
            if (wide0 && !no_local) alloy_sel_local_init(&loc);
            for (size_t e = e0; e < e1;) {
                size_t len = 1 + (size_t)(urand() * 300);
                if (len > e1 - e) len = e1 - e;
                if (window)
                    g_k->sel_window_add(s, c, keys + e, len);
                else if (wide0)
                    alloy_sel_hist_wide(s, keys + e, len, &loc);
                else
                    alloy_sel_hist_keys(s, keys + e, len, accs + c * ALLOY_SEL_BINS);
                e += len;
            }
            if (wide0) {
                const struct alloy_select *sp = s;
                alloy_sel_merge_wide(&sp, 1, &loc);
                alloy_sel_local_free(&loc);
            }
        }
        int rc = alloy_sel_sample_stage(s) ? alloy_sel_reduce_sample(s, sample, nchunks, &err)
                                           : alloy_sel_reduce(s, accs, nchunks, ALLOY_SEL_BINS * sizeof(uint32_t), 0, &err);
        free(accs);
        if (rc || ++passes > ALLOY_SEL_LEVELS + 2) {
            free(keys);
            free(mask);
            return -1;
        }
    }
    for (size_t c = 0; c < nchunks; c++) {
        uint64_t ties = alloy_sel_chunk_ties(s, c);
        size_t e0 = c * cs, e1 = e0 + cs < n ? e0 + cs : n;
        for (size_t e = e0; e < e1;) {
            size_t len = 1 + (size_t)(urand() * 300);
            if (len > e1 - e) len = e1 - e;
            alloy_sel_keep_block(s, keys + e, len, &ties, mask + e);
            e += len;
        }
    }
    for (size_t e = 0; e < n; e++) keep[e] = mask[e] == ~0u ? 1 : mask[e] == 0 ? 0 : 2;
    free(keys);
    free(mask);
    return passes;
}

/* Compares a wide (k_sample 0) or sampled layout run with sorting; returns the pass count (-1 on a
 * mismatch or failure), reported at `line`. */
static int check_layout(const float *v, size_t n, size_t cs, uint64_t k, int abs_keys, int no_local, size_t k_sample,
                        uint64_t window_keys, int line)
{
    unsigned char *ref = calloc(n ? n : 1, 1), *got = calloc(n ? n : 1, 1);
    struct ref_item *it = sorted_reference(v, n, k, abs_keys, ref);
    struct alloy_select s;
    int passes = run_select_layout(v, n, cs, k, abs_keys, no_local, k_sample, window_keys, &s, got);
    size_t bad = passes < 0 ? n + 1 : 0;
    for (size_t e = 0; e < n && passes >= 0; e++) bad += ref[e] != got[e];
    if (bad) {
        test_fail(__FILE__, line, "%s: n=%zu cs=%zu k=%llu abs=%d sample=%zu: %zu mismatches (passes %d)",
                  k_sample ? "sampled" : "wide", n, cs, (unsigned long long)k, abs_keys, k_sample, bad, passes);
        passes = -1;
    }
    alloy_sel_free(&s);
    free(it);
    free(ref);
    free(got);
    return passes;
}

static int check_wide(const float *v, size_t n, size_t cs, uint64_t k, int abs_keys, int no_local)
{
    return check_layout(v, n, cs, k, abs_keys, no_local, 0, 0, __LINE__);
}

/* Every chunk of the wide level merges a local 65,536-bin histogram: one-element chunks mean 6,000 such
 * merges per pass. ThreadSanitizer instruments every access, which makes that many minutes, and its
 * subject is the threads, not the layout: there the smallest chunk holds 500 elements. */
#if defined(__SANITIZE_THREAD__)
#define WIDE_SMALLEST_CHUNK 500
#else
#define WIDE_SMALLEST_CHUNK 1
#endif

TEST(select_wide_matches_sort)
{
    enum { N = 6000 };
    static float v[N];
    const uint64_t ks[] = {0, 1, 2, 77, 1500, 3000, 5999, 6000};
    const size_t cs[] = {WIDE_SMALLEST_CHUNK, 97, 1000, N};
    /* bfloat16 values, many ties, both signs and zeros: thresholds with zero low bits */
    for (size_t e = 0; e < N; e++) {
        double g = sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand());
        v[e] = e % 7 == 3 ? 0.0f : bf16_round((float)(g * 0.01));
    }
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 8; b++) {
            int p = check_wide(v, N, cs[a], ks[b], 1, 0);
            if (ks[b] > 0 && ks[b] < N) CHECK(p >= 1 && p <= 2); /* the zero bin ends it at level 1 */
            check_wide(v, N, cs[a], ks[b], 0, 0);
        }
    /* bfloat16 values and a few with random low bits in the same 16-bit bins (differences across
       exponents): the zero bin is used only when the threshold is below all of those */
    for (size_t e = 0; e < N; e++) {
        uint32_t u;
        memcpy(&u, &v[e], sizeof u);
        if (e % 11 == 5) u |= 1u + (uint32_t)(urand() * 65535);
        if (e % 13 == 6) u |= 1u + (uint32_t)(urand() * 63); /* bin 0 of level 1, above the zero key */
        memcpy(&v[e], &u, sizeof u);
    }
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 8; b++) {
            check_wide(v, N, cs[a], ks[b], 1, 0);
            check_wide(v, N, cs[a], ks[b], 0, 0);
        }
    for (uint64_t k = 1; k < N; k += 37) check_wide(v, N, 1000, k, 1, 0); /* thresholds all over bin 0 */
    /* continuous values: three levels */
    for (size_t e = 0; e < N; e++) v[e] = (float)(urand() * 2 - 1);
    for (size_t b = 0; b < 8; b++) {
        check_wide(v, N, 333, ks[b], 1, 0);
        check_wide(v, N, 1000, ks[b], 0, 0);
    }
    /* all equal, and all zero */
    for (size_t e = 0; e < N; e++) v[e] = 0.25f;
    for (size_t b = 0; b < 8; b++) CHECK(check_wide(v, N, 1000, ks[b], 1, 0) <= 2);
    for (size_t e = 0; e < N; e++) v[e] = 0.0f;
    for (size_t b = 0; b < 8; b++) check_wide(v, N, 777, ks[b], 1, 0);
}

/* ---------------------------------------------------------------- sampled layout */

/* check_layout() for the sampled layout on magnitudes. */
static int check_sampled(const float *v, size_t n, size_t cs, uint64_t k, size_t k_sample, uint64_t window_keys,
                         int line)
{
    return check_layout(v, n, cs, k, 1, 0, k_sample, window_keys, line);
}

static double gauss(void) { return sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand()); }

static void sampled_window_cases(void);
static void sampled_fallback_cases(void);

/* Every kernel table's window pass the CPU has (kernels.h) gives the same kept set. */
TEST(select_sampled_window_matches_sort)
{
    for (int isa = ALLOY_ISA_COUNT - 1; isa >= 0; isa--)
        if ((g_k = alloy_kernels_isa(isa))) sampled_window_cases();
}

TEST(select_sampled_falls_back_exactly)
{
    for (int isa = ALLOY_ISA_COUNT - 1; isa >= 0; isa--)
        if ((g_k = alloy_kernels_isa(isa))) sampled_fallback_cases();
}

static void sampled_window_cases(void)
{
    enum { N = 60000, CS = 1000 };
    static float v[N];
    const uint64_t ks[] = {1, 600, 15000, 30000, 30001, 45000, 59000, N - 1};
    const uint64_t big = ALLOY_SEL_WINDOW_KEYS;
    /* bfloat16 deltas: heavy ties on a few exact values, counted per bin, never collected */
    for (size_t e = 0; e < N; e++) v[e] = bf16_round((float)(gauss() * 0.01)) - bf16_round((float)(gauss() * 0.01));
    for (size_t b = 0; b < 8; b++) {
        int p = check_sampled(v, N, CS, ks[b], 4, big, __LINE__);
        if (ks[b] >= 15000 && ks[b] <= 45000) /* tails: windows reaching the zero deltas span too many bins */
            CHECK_MSG(p == 2, "bf16 k=%llu: %d passes, the window should hold it", (unsigned long long)ks[b], p);
    }
    /* float32 values: the window's keys are collected (and the chunk count not a multiple of the sample) */
    for (size_t e = 0; e < N; e++) v[e] = (float)(gauss() * 0.01);
    for (size_t b = 0; b < 8; b++) {
        int p = check_sampled(v, N - 123, CS, ks[b] > N - 123 ? N - 123 : ks[b], 5, big, __LINE__);
        if (ks[b] >= 15000 && ks[b] <= 45000) CHECK(p == 2); /* tails: windows of too many bins here */
    }
    /* all equal: the k-th key is a zero-low key of one bin; ties split across chunks from the counts */
    for (size_t e = 0; e < N; e++) v[e] = 0.25f;
    for (size_t b = 0; b < 8; b++) CHECK(check_sampled(v, N, CS, ks[b], 4, big, __LINE__) == 2);
    /* a window of more than 8 bins with zero-low keys: bfloat16 magnitudes over one octave (128 values;
       this small sample's margin is about 13% of the ranks) */
    for (size_t e = 0; e < N; e++) v[e] = bf16_round((float)exp2(-urand()));
    for (size_t b = 0; b < 8; b++) {
        int p = check_sampled(v, N, CS, ks[b], 6, big, __LINE__);
        if (ks[b] >= 15000 && ks[b] <= 45000) CHECK_MSG(p == 2, "one octave, k=%llu: %d passes", (unsigned long long)ks[b], p);
    }
}

static void sampled_fallback_cases(void)
{
    enum { N = 40000, CS = 500 };
    static float v[N];
    const uint64_t ks[] = {1, 400, 20000, 39999};
    const size_t nchunks = N / CS, ksample = 4;
    /* unrepresentative sample: the sampled chunks hold small values, the others large ones */
    for (size_t e = 0; e < N; e++) v[e] = (float)(gauss() * 0.01);
    for (size_t i = 0; i < ksample; i++) {
        size_t c = alloy_sample_chunk(i, ksample, nchunks);
        for (size_t e = c * CS; e < (c + 1) * CS; e++) v[e] *= 1e-3f;
    }
    for (size_t b = 0; b < 4; b++) {
        int p = check_sampled(v, N, CS, ks[b], ksample, ALLOY_SEL_WINDOW_KEYS, __LINE__);
        if (ks[b] == 20000) CHECK_MSG(p > 2 && g_window_passes == 1, "k=20000: %d passes, expected a fallback", p);
    }
    /* more keys in the window than the sample promised: over the budget, then the full levels. The
       sample sees uniform values; elsewhere half of them crowd around the median */
    for (size_t e = 0; e < N; e++) v[e] = (float)(1 + urand());
    for (size_t c = 0; c < nchunks; c++) {
        int sampled = 0;
        for (size_t i = 0; i < ksample; i++) sampled |= alloy_sample_chunk(i, ksample, nchunks) == c;
        for (size_t e = c * CS; e < (c + 1) * CS && !sampled; e += 2) v[e] = 1.5f * (float)(1 + 1e-6 * urand());
    }
    for (size_t b = 0; b < 4; b++) {
        int p = check_sampled(v, N, CS, ks[b], ksample, 20000, __LINE__);
        if (ks[b] == 20000) CHECK(p > 2 && g_window_passes == 1);
    }
    /* magnitudes over 40 octaves: too many bins for a window */
    for (size_t e = 0; e < N; e++) v[e] = (float)exp2(-40.0 * urand());
    check_sampled(v, N, CS, 20000, ksample, ALLOY_SEL_WINDOW_KEYS, __LINE__);
    CHECK(g_window_passes == 0);
    /* a sample of every chunk is an exact level 0 */
    for (size_t e = 0; e < N; e++) v[e] = bf16_round((float)(gauss() * 0.01));
    for (size_t b = 0; b < 4; b++) {
        check_sampled(v, N, CS, ks[b], nchunks, ALLOY_SEL_WINDOW_KEYS, __LINE__);
        CHECK(g_window_passes == 0);
    }
    /* k = 0 and k = n need no pass */
    CHECK(check_sampled(v, N, CS, 0, ksample, ALLOY_SEL_WINDOW_KEYS, __LINE__) == 0);
    CHECK(check_sampled(v, N, CS, N, ksample, ALLOY_SEL_WINDOW_KEYS, __LINE__) == 0);
}

TEST(select_wide_without_local_tables)
{
    enum { N = 3000 };
    static float v[N];
    for (size_t e = 0; e < N; e++) v[e] = bf16_round((float)(urand() - 0.5) * 0.02f);
    const uint64_t ks[] = {1, 1000, 2999};
    for (size_t b = 0; b < 3; b++) {
        check_wide(v, N, 400, ks[b], 1, 1);
        check_wide(v, N, 400, ks[b], 0, 1);
    }
}

TEST(select_keep_block_matches_keep)
{
    enum { N = 4000 };
    static float v[N];
    static uint32_t keys[N], mask[N];
    for (size_t e = 0; e < N; e++) v[e] = (float)((int)(urand() * 5)) * 0.5f; /* 5 values: heavy ties */
    for (size_t e = 0; e < N; e++) keys[e] = alloy_sel_key_abs(v[e]);
    const uint64_t ks[] = {0, 1, 800, 1999, 2000, 3999, 4000};
    for (size_t b = 0; b < 7; b++) {
        unsigned char want[N];
        struct alloy_select s;
        CHECK(run_select(v, N, 500, ks[b], 1, 0, &s, want) >= 0);
        size_t bad = 0;
        for (size_t c = 0; c < N / 500; c++) {
            uint64_t ties = alloy_sel_chunk_ties(&s, c);
            for (size_t e = c * 500; e < (c + 1) * 500;) {
                size_t len = 1 + (size_t)(urand() * 64);
                if (len > (c + 1) * 500 - e) len = (c + 1) * 500 - e;
                alloy_sel_keep_block(&s, keys + e, len, &ties, mask + e);
                e += len;
            }
        }
        for (size_t e = 0; e < N; e++) bad += mask[e] != (want[e] ? ~0u : 0u);
        CHECK_INT(bad, 0);
        alloy_sel_free(&s);
    }
}
