/*
 * test_windows.c — scan passes in windows of chunks (driver.c, method.h fold).
 *
 * A tensor of more than ALLOY_MAX_CHUNKS chunks (2^28 elements) folds its
 * scan accumulators window by window. Such a tensor is too big to merge in
 * a test, so alloy_driver_set_window() forces windows of a few chunks on
 * small tensors cut into small chunks, and every method with a scan pass
 * must give the same bits as with one window: the float sums are running
 * sums in chunk order (the same additions in the same order, only paused
 * between windows), the selections choose the same exact set, and ties at
 * a threshold split by the lowest-index rule, found past one window by the
 * extra tie pass instead of the per-chunk histograms. The selection itself
 * is also checked against sorting, and the driver's plan for a 2^36-element
 * tensor is computed without running it, to pin the memory bound.
 */
#include "test.h"
#include "method_util.h"
#include "core/internal.h"
#include "kernels/kernels.h"
#include "methods/select.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

enum { ROWS = 48, COLS = 100, NUMEL = ROWS * COLS };

static void set_param(struct tj *t, const struct alloy_method *m, const char *name, int input, double v)
{
    int k = alloy_method_param(m, name);
    CHECK_MSG(k >= 0, "%s: no parameter %s", m->name, name);
    if (k < 0) return;
    if (input < 0) t->gp[k] = v;
    else t->tp[input * m->nparams + k] = v;
}

/* Inputs with many exact ties: values on a grid of 1/16 (bfloat16-exact), so |deltas|, variances and
 * importances repeat and every selection's threshold splits ties across chunks and windows. */
static void tie_inputs(float *const *in, int n, size_t numel)
{
    for (int i = 0; i < n; i++)
        for (size_t e = 0; e < numel; e++) in[i][e] = (float)(int)(frand() * 8) / 16.0f;
}

/* Runs the job with chunks of `chunk` elements under scan windows of `window` chunks (0: the
 * default) on `pool`; out must be numel floats. */
static int run_window(const struct alloy_method *m, const struct alloy_merge_job *job, const float *const *in,
                      float *out, size_t window, uint64_t chunk, struct alloy_pool *pool)
{
    struct alloy_err err = {0};
    size_t prev = alloy_driver_set_window(window);
    int rc = alloy_method_run_memory(m, job, in, out, pool, chunk, &err);
    alloy_driver_set_window(prev);
    CHECK_MSG(rc == ALLOY_OK, "%s: window %zu: %s", m->name, window, err.msg);
    return rc;
}

/* The method over windows of 1, 4 and 5 chunks (the last partial) gives the bits of one window. */
static void check_windows(const struct alloy_method *m, const struct alloy_merge_job *job, const float *const *in,
                          uint64_t chunk, const char *what)
{
    size_t numel = (size_t)job->numel;
    float *one = malloc(numel * sizeof *one), *got = malloc(numel * sizeof *got);
    struct alloy_pool *pool = alloy_pool_new(3);
    const size_t windows[] = {1, 4, 5};
    if (run_window(m, job, in, one, 0, chunk, NULL) == ALLOY_OK)
        for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++)
            for (int p = 0; p < 2; p++) {
                memset(got, 0xff, numel * sizeof *got);
                if (run_window(m, job, in, got, windows[w], chunk, p ? pool : NULL) != ALLOY_OK) continue;
                size_t bad = 0, first = 0;
                for (size_t e = numel; e-- > 0;)
                    if (memcmp(&one[e], &got[e], sizeof *got)) bad++, first = e;
                CHECK_MSG(bad == 0, "%s (%s): windows of %zu chunks: %zu elements differ from one window, first %zu: "
                          "%.9g vs %.9g", m->name, what, windows[w], bad, first, got[first], one[first]);
            }
    alloy_pool_free(pool);
    free(one);
    free(got);
}

/* One method on 3 (or 2) tie-heavy inputs of ROWS x COLS, chunks of one row: 48 chunks. */
static void window_case(const char *name, int n, int base, const char *what,
                        void (*params)(struct tj *, const struct alloy_method *))
{
    const struct alloy_method *m = alloy_method_find(name);
    CHECK_MSG(m != NULL, "no method %s", name);
    if (!m) return;
    static float buf[3][NUMEL];
    float *in[3] = {buf[0], buf[1], buf[2]};
    tie_inputs(in, n, NUMEL);
    struct tj t;
    const int64_t shape[2] = {ROWS, COLS};
    tj_setup(&t, m, 2, shape, n, base);
    t.job.seed = 7;
    if (params) params(&t, m);
    check_windows(m, &t.job, (const float *const *)in, COLS, what);
}

static void p_slerp(struct tj *t, const struct alloy_method *m) { set_param(t, m, "t", -1, 0.3); }
static void p_weights(struct tj *t, const struct alloy_method *m)
{
    for (int i = 0; i < t->job.n; i++) set_param(t, m, "weight", i, 0.5 + 0.25 * i);
}
static void p_nuslerp_cols(struct tj *t, const struct alloy_method *m)
{
    p_weights(t, m);
    set_param(t, m, "nuslerp_flatten", -1, 0);
}
static void p_sce(struct tj *t, const struct alloy_method *m) { set_param(t, m, "select_topk", -1, 0.3); }
static void p_gta(struct tj *t, const struct alloy_method *m)
{
    for (int i = 1; i < t->job.n; i++) {
        set_param(t, m, "weight", i, 0.6 + 0.3 * i);
        set_param(t, m, "density", i, i == 1 ? 0.5 : 0.3);
    }
}
static void p_gta_rescale(struct tj *t, const struct alloy_method *m)
{
    p_gta(t, m);
    set_param(t, m, "rescale", -1, 1);
}
static void p_della(struct tj *t, const struct alloy_method *m)
{
    p_gta(t, m);
    for (int i = 1; i < t->job.n; i++) set_param(t, m, "epsilon", i, 0.1);
}

TEST(windows_every_scan_method_matches_one_window)
{
    window_case("slerp", 2, 0, "flat", p_slerp);
    window_case("nuslerp", 2, -1, "flattened", p_weights);
    window_case("nuslerp", 2, -1, "per column", p_nuslerp_cols);
    window_case("multislerp", 3, 0, "around a base", p_weights);
    window_case("karcher", 3, -1, "three models", NULL);
    window_case("model_stock", 3, 0, "three models", NULL);
    window_case("ramplus_tl", 3, 0, "three models", NULL);
    window_case("sce", 3, 0, "select_topk 0.3", p_sce);
    window_case("arcee_fusion", 2, 0, "quantiles", NULL);
    window_case("ties", 3, 0, "narrow selection", p_gta);
    window_case("breadcrumbs", 3, 0, "two nested selections", p_gta);
    window_case("breadcrumbs_ties", 3, 0, "two nested selections", p_gta);
    window_case("dare_ties", 3, 0, "L1 rescale", p_gta_rescale);
    window_case("dare_linear", 3, 0, "L1 rescale", p_gta_rescale);
    window_case("della", 3, 0, "rows", p_della);
}

/* TIES on tensors that select in the wide layout (>= 2^17 elements) and the sampled one (>= 2^21,
 * whose window stage collects keys per chunk record and, past one driver window, combines them),
 * on bfloat16 deltas (thresholds with zero low bits) and on float32 ones (three levels). */
TEST(windows_ties_wide_and_sampled_layouts)
{
    const struct alloy_method *m = alloy_method_find("ties");
    const size_t sizes[] = {(size_t)1 << 18, (size_t)1 << 21};
    for (size_t z = 0; z < 2; z++)
        for (int bf = 0; bf < 2; bf++) {
            size_t numel = sizes[z];
            float *in[3];
            for (int i = 0; i < 3; i++) {
                in[i] = malloc(numel * sizeof *in[i]);
                for (size_t e = 0; e < numel; e++) {
                    float v = frand() * 0.02f;
                    in[i][e] = bf ? alloy_bf16_to_f32(alloy_f32_to_bf16(v)) : v;
                }
            }
            struct tj t;
            const int64_t shape[1] = {(int64_t)numel};
            tj_setup(&t, m, 1, shape, 3, 0);
            p_gta(&t, m);
            check_windows(m, &t.job, (const float *const *)in, numel / 64, bf ? "bfloat16" : "float32");
            for (int i = 0; i < 3; i++) free(in[i]);
        }
}

/* TIES keeps exactly k = int(density * n) task-vector entries, the largest |delta| and, among those
 * equal to the threshold, the lowest indices, when the ties span many chunks and windows: the
 * expected output is built here from that rule alone. */
TEST(windows_ties_split_keeps_k_lowest_index)
{
    const struct alloy_method *m = alloy_method_find("ties");
    enum { N = 6000 };
    static float base[N], model[N], out[N];
    static double expect[N];
    /* |delta| 1 at every 7th element (858), 0.5 at every even one otherwise, 0.25 elsewhere */
    size_t big = 0;
    for (size_t e = 0; e < N; e++) {
        base[e] = (float)(e % 5) * 0.125f;
        float d = e % 7 == 0 ? 1.0f : e % 2 == 0 ? 0.5f : 0.25f;
        model[e] = base[e] + (e % 3 ? d : -d);
        big += e % 7 == 0;
    }
    const double density = 0.4;
    uint64_t k = (uint64_t)(density * N), ties = k - big; /* 2400 - 858 of the 0.5 entries */
    for (size_t e = 0; e < N; e++) {
        int keep = e % 7 == 0 || (e % 2 == 0 && ties > 0 && ties--);
        expect[e] = keep ? (double)model[e] : (double)base[e];
    }
    const float *in[2] = {base, model};
    struct tj t;
    const int64_t shape[1] = {N};
    tj_setup(&t, m, 1, shape, 2, 0);
    set_param(&t, m, "weight", 1, 1.0);
    set_param(&t, m, "density", 1, density);
    const size_t windows[] = {0, 1, 3, 4};
    for (size_t w = 0; w < 4; w++) {
        if (run_window(m, &t.job, in, out, windows[w], 100, NULL) != ALLOY_OK) continue;
        size_t kept = 0, bad = 0;
        for (size_t e = 0; e < N; e++) {
            kept += out[e] != base[e];
            bad += (double)out[e] != expect[e];
        }
        CHECK_MSG(kept == k && bad == 0, "window %zu: %zu kept (want %llu), %zu differ from the rule", windows[w],
                  kept, (unsigned long long)k, bad);
    }
}

/* ---------------------------------------------------------------- the selection alone */

/* Selects the k largest keys of v over chunks of cs elements folded in windows of `window` chunks,
 * as the driver does; keep[e] = 1 for the kept elements. Returns the passes, or -1. */
static int select_windowed(const uint32_t *keys, size_t n, size_t cs, size_t window, uint64_t k, int layout,
                           unsigned char *keep)
{
    struct alloy_select s;
    struct alloy_err err = {0};
    size_t nchunks = (n + cs - 1) / cs, ks = 3;
    int rc = layout == 2 ? alloy_sel_init_sampled(&s, n, k, &err) : layout == 1 ? alloy_sel_init_wide(&s, n, k, &err)
                                                                            : (alloy_sel_init(&s, n, k, 0), 0);
    const struct alloy_kernels *kt = alloy_kernels_isa(0);
    int passes = 0;
    uint32_t *accs = malloc(window * ALLOY_SEL_BINS * sizeof *accs);
    while (!rc && alloy_sel_active(&s) && passes++ < 8) {
        int sampled = alloy_sel_sample_stage(&s) && ks < nchunks;
        for (size_t first = 0; first < nchunks && !rc; first += window) {
            size_t count = nchunks - first < window ? nchunks - first : window;
            memset(accs, 0, window * ALLOY_SEL_BINS * sizeof *accs);
            for (size_t c = first; c < first + count; c++) {
                int in_sample = 0;
                for (size_t i = 0; i < ks && sampled; i++) in_sample |= alloy_sample_chunk(i, ks, nchunks) == c;
                if (sampled && !in_sample) continue;
                const uint32_t *kc = keys + c * cs;
                size_t len = (c + 1) * cs < n ? cs : n - c * cs;
                if (alloy_sel_window_stage(&s)) {
                    kt->sel_window_add(&s, c, kc, len);
                } else if (alloy_sel_wide_level0(&s)) {
                    struct alloy_sel_local loc;
                    alloy_sel_local_init(&loc);
                    alloy_sel_hist_wide(&s, kc, len, &loc);
                    const struct alloy_select *sp = &s;
                    alloy_sel_merge_wide(&sp, 1, &loc);
                    alloy_sel_local_free(&loc);
                } else {
                    alloy_sel_hist_keys(&s, kc, len, accs + (c - first) * ALLOY_SEL_BINS);
                }
            }
            rc = alloy_sel_fold(&s, accs, first, count, nchunks, ALLOY_SEL_BINS * sizeof *accs, 0, &err);
        }
        if (!rc) rc = alloy_sel_end(&s, sampled, nchunks, &err);
    }
    CHECK_MSG(rc == ALLOY_OK && !alloy_sel_active(&s), "select: %s", err.msg);
    for (size_t c = 0; c < nchunks; c++) {
        uint64_t t = alloy_sel_chunk_ties(&s, c);
        for (size_t e = c * cs; e < n && e < (c + 1) * cs; e++) keep[e] = (unsigned char)alloy_sel_keep(&s, keys[e], &t);
    }
    free(accs);
    alloy_sel_free(&s);
    return rc ? -1 : passes;
}

static int cmp_desc(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b; /* key << 32 | ~index */
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Narrow, wide and sampled selections folded over windows keep what sorting keeps (key descending,
 * then index ascending), with ties at the threshold in every layout. */
TEST(windows_selection_matches_sort)
{
    enum { N = 40000 };
    static uint32_t keys[N];
    static uint64_t order[N];
    static unsigned char want[N], got[N];
    const uint64_t ks[] = {1, 777, 20000, 33333, N - 1};
    for (int data = 0; data < 2; data++) {
        for (size_t e = 0; e < N; e++) {
            float v = frand() * 0.01f;
            if (data == 0) v = alloy_bf16_to_f32(alloy_f32_to_bf16(v)); /* bfloat16: heavy ties */
            else if (e % 3 == 0) v = 0.0025f;                           /* a third tie on one value */
            keys[e] = alloy_sel_key_abs(v);
            order[e] = (uint64_t)keys[e] << 32 | (uint32_t)~(uint32_t)e;
        }
        qsort(order, N, sizeof *order, cmp_desc);
        for (size_t b = 0; b < sizeof ks / sizeof ks[0]; b++) {
            memset(want, 0, sizeof want);
            for (uint64_t r = 0; r < ks[b]; r++) want[~(uint32_t)order[r]] = 1;
            for (int layout = 0; layout < 3; layout++)
                for (size_t window = 1; window <= 7; window += 3) {
                    memset(got, 0, sizeof got);
                    int p = select_windowed(keys, N, 500, window, ks[b], layout, got);
                    size_t bad = 0;
                    for (size_t e = 0; e < N; e++) bad += want[e] != got[e];
                    CHECK_MSG(p > 0 && bad == 0, "data %d k=%llu layout %d window %zu: %zu differ (passes %d)", data,
                              (unsigned long long)ks[b], layout, window, bad, p);
                }
        }
    }
}

/* ---------------------------------------------------------------- the plan */

/* A 2^36-element tensor with two inputs keeps chunks of 2^18 elements, 1 MiB of scratch per input
 * and lane, one window of accumulators: what a 2^20-element tensor takes, so the memory bound holds
 * at any size. Whole-row methods take whole rows; rows over 2^18 elements are one chunk each. */
TEST(windows_plan_of_a_huge_tensor_is_bounded)
{
    const struct alloy_method *slerp = alloy_method_find("slerp"), *ties = alloy_method_find("ties");
    const struct alloy_method *ms = alloy_method_find("model_stock");
    struct tj t;
    const int64_t shape[2] = {(int64_t)1 << 20, (int64_t)1 << 16};
    tj_setup(&t, slerp, 2, shape, 2, 0);
    struct alloy_chunk_plan p;
    alloy_chunk_plan(slerp, &t.job, 64, 0, &p);
    CHECK_INT(p.chunk_elems, ALLOY_CHUNK_ELEMS);
    CHECK_INT(p.nchunks, (uint64_t)1 << 18);
    CHECK_INT(p.window, ALLOY_MAX_CHUNKS);
    CHECK_INT(p.lane_bytes, 3 * ALLOY_CHUNK_ELEMS * sizeof(float));
    CHECK_INT(p.lanes, 42); /* 64 lanes of 3 MiB would pass the 128 MiB budget: 42 fit */
    CHECK_INT(p.acc_bytes, ALLOY_MAX_CHUNKS * slerp->acc_size);
    tj_setup(&t, ties, 2, shape, 2, 0);
    alloy_chunk_plan(ties, &t.job, 2, 0, &p);
    CHECK_INT(p.chunk_elems, ALLOY_CHUNK_ELEMS);
    CHECK_INT(p.lanes, 2);
    CHECK_INT(p.acc_bytes, ALLOY_MAX_CHUNKS * ties->acc_size);
    CHECK(p.acc_bytes <= (uint64_t)65 << 20); /* eight 8 KiB histograms and the L1 sums per chunk */
    tj_setup(&t, ms, 2, shape, 2, 0); /* whole rows of 2^16: four per chunk */
    alloy_chunk_plan(ms, &t.job, 2, 0, &p);
    CHECK_INT(p.chunk_elems, ALLOY_CHUNK_ELEMS);
    /* rows of 2^30 elements: a whole-row method needs one per chunk, in one lane (the one size-dependent
       term left, docs/security.md) */
    const int64_t wide[2] = {(int64_t)1 << 6, (int64_t)1 << 30};
    tj_setup(&t, ms, 2, wide, 2, 0);
    alloy_chunk_plan(ms, &t.job, 2, 0, &p);
    CHECK_INT(p.chunk_elems, (uint64_t)1 << 30);
    CHECK_INT(p.lanes, 1);
    /* a small tensor is one window, as before windows existed */
    const int64_t small[1] = {1000};
    tj_setup(&t, slerp, 1, small, 2, 0);
    alloy_chunk_plan(slerp, &t.job, 2, 0, &p);
    CHECK(p.nchunks == 1 && p.window == 1 && p.chunk_elems == 1000);
}

/* ---------------------------------------------------------------- a tensor past 2^28 elements */

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__) /* the test below: not under sanitizers */
/* A sparse model (ftruncate'd: all zero, no blocks) with one bfloat16 tensor of rows x cols. */
static int sparse_model(const char *dir, long long rows, long long cols)
{
    char path[700], hdr[300];
    mkdir(dir, 0755);
    int n = snprintf(hdr, sizeof hdr, "{\"model.embed_tokens.weight\":{\"dtype\":\"BF16\",\"shape\":[%lld,%lld],"
                     "\"data_offsets\":[0,%lld]}}", rows, cols, rows * cols * 2);
    while (n % 8) hdr[n++] = ' ';
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint64_t len = (uint64_t)n;
    int ok = fwrite(&len, 8, 1, f) == 1 && fwrite(hdr, 1, (size_t)n, f) == (size_t)n && fflush(f) == 0 &&
             ftruncate(fileno(f), (off_t)(8 + n + rows * cols * 2)) == 0;
    ok = (fclose(f) == 0) && ok;
    snprintf(path, sizeof path, "%s/config.json", dir);
    return ok && test_write_text(path, "{\"num_hidden_layers\": 0}") == 0 ? 0 : -1;
}
#endif

/* Two models whose one tensor has 2^29 elements (1 GiB each as bfloat16, 2 GiB as float32), merged
 * by a scan method (slerp: one scan pass in two windows, then apply), peak under the bound of a
 * 64 MiB tensor (tests/test_merge.c merge_memory_bounded_by_chunks): before windows, its chunks and
 * scratch doubled. About 10 s on two cores (it reads 4 GiB and writes 1 GiB); not under sanitizers. */
TEST(windows_sparse_2pow29_merge_memory_bounded)
{
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    const char *dir = test_tmpdir();
    char a[600], b[600], cfg[700], out[600], yaml[1600], cmd[2000];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    CHECK_INT(sparse_model(a, 1LL << 15, 1LL << 14), 0);
    CHECK_INT(sparse_model(b, 1LL << 15, 1LL << 14), 0);
    snprintf(yaml, sizeof yaml, "merge_method: slerp\nbase_model: %s\nmodels:\n  - model: %s\nparameters:\n  t: 0.5\n"
             "dtype: bfloat16\n", a, b);
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    test_write_text(cfg, yaml);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(cmd, sizeof cmd, "%s merge %s %s --quiet --threads 2", test_alloy_bin(), cfg, out);
    long rss = 0;
    CHECK_INT(test_run_rss(cmd, &rss), 0);
    CHECK_MSG(rss < 48 * 1024, "peak RSS %ld KiB for a 2^29-element tensor", rss);
    char path[700];
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size > (1LL << 30)); /* the whole tensor was written */
    unlink(path); /* 1 GiB of real blocks: not left for the end of the run */
#endif
}
