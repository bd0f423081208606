/*
 * test_lora_merge.c — `alloy lora merge`: the config reader
 * (src/config/lora_merge_config.c) — every option, each misuse refused with
 * one "file:line:col: key: expected, found" line — and whole merges of the
 * real tiny-llama adapters and of small adapters built here, read back with
 * the adapter reader and checked against the formulas computed in the test
 * in double: cat reproduces Σ w_i s_i B_i A_i, linear is PEFT's A/B formula,
 * the SVD types meet the Eckart–Young rule (error within 1 % of the optimum,
 * whose singular values come from the tests' Jacobi reference, svd_ref.c) and
 * reproduce their target exactly at full rank; bad inputs are refused with
 * no output folder left behind.
 */
#include "test.h"
#include "config/lora_merge_config.h"
#include "lora/adapter.h"
#include "svd_ref.h"

#include <stdlib.h>
#include <sys/stat.h>

static int parse(const char *text, struct alloy_lora_merge_config **c, struct alloy_err *err)
{
    return alloy_lora_merge_config_parse(text, strlen(text), "m.yml", c, err);
}

TEST(lora_config_reads_every_option)
{
    struct alloy_lora_merge_config *c = NULL;
    struct alloy_err err = {0};
    CHECK_INT(parse("merge_method: ties_svd\n"
                    "models:\n"
                    "  - model: a\n"
                    "    parameters: {weight: 0.75}\n"
                    "  - model: dir/b\n"
                    "    parameters:\n"
                    "      weight: -2\n"
                    "rank: 12\n"
                    "density: 0.25\n"
                    "majority_sign_method: frequency\n"
                    "svd_clamp: 0.99\n",
                    &c, &err),
              0);
    CHECK_MSG(c != NULL, "%s", err.msg);
    if (!c) return;
    CHECK(strcmp(c->method->name, "ties_svd") == 0 && c->method->svd && c->method->ties);
    CHECK_INT(c->ninputs, 2);
    CHECK(strcmp(c->inputs[0].adapter, "a") == 0 && c->inputs[0].weight == 0.75);
    CHECK(strcmp(c->inputs[1].adapter, "dir/b") == 0 && c->inputs[1].weight == -2);
    CHECK_INT(c->rank, 12);
    CHECK(c->density == 0.25 && c->frequency == 1 && c->svd_clamp == 0.99);
    alloy_lora_merge_config_free(c);

    CHECK_INT(parse("merge_method: cat\nmodels:\n  - model: a\n    parameters: {weight: 1}\n", &c, &err), 0);
    CHECK(c && c->method->cat && c->rank == 0 && c->density == 1 && c->frequency == 0 && c->svd_clamp == 0);
    alloy_lora_merge_config_free(c);
}

TEST(lora_config_errors_name_the_key)
{
    static const struct { const char *yaml, *want; } cases[] = {
        {"merge_method: slerp\nmodels:\n  - model: a\n    parameters: {weight: 1}\n",
         "m.yml:1:15: merge_method: expected one of: cat, linear"},
        {"merge_method: cat\nmodel:\n  - model: a\n", "m.yml:2:1: unknown key 'model' in the top level"},
        {"merge_method: cat\nmodels: [\n", "m.yml:3:1: invalid YAML"},
        {"merge_method: cat\nmodels: []\n", "models: expected a non-empty list"},
        {"merge_method: cat\nmodels:\n  - model: a\n", "m.yml:3:5: models[0].parameters: expected {weight: W}"},
        {"merge_method: cat\nmodels:\n  - model: a\n    parameters: {weight: x}\n",
         "models[0].parameters.weight: expected a number, found 'x'"},
        {"merge_method: cat\nmodels:\n  - model: a\n    parameters: {weight: 1e200}\n",
         "models[0].parameters.weight: expected a finite number within float32's range (|w| <= 3.4e38), found 1e200"},
        {"merge_method: cat\nmodels:\n  - model: a\n    parameters: {weight: .nan}\n",
         "models[0].parameters.weight: expected a finite number within float32's range"},
        {"merge_method: cat\nmodels:\n  - model: a\n    parameters: {weight: 1, density: 0.5}\n",
         "unknown key 'density' in models[0].parameters"},
        {"merge_method: ties\nmodels:\n  - model: a\n    parameters: {weight: 1}\n",
         "density: merge_method ties needs density:"},
        {"merge_method: dare_linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\ndensity: 1.5\n",
         "m.yml:5:10: density: expected a number in (0, 1], found 1.5"},
        {"merge_method: cat\nmodels:\n  - model: a\n    parameters: {weight: 1}\ndensity: 0.5\n",
         "density: used only by the ties, dare and magnitude_prune types, found it with merge_method cat"},
        {"merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\nrank: 4\n",
         "rank: used only by the svd types"},
        {"merge_method: svd\nmodels:\n  - model: a\n    parameters: {weight: 1}\nrank: 4.5\n",
         "rank: expected a whole number, found 4.5"},
        {"merge_method: ties_svd\nmodels:\n  - model: a\n    parameters: {weight: 1}\ndensity: 0.5\n"
         "majority_sign_method: most\n",
         "majority_sign_method: expected total or frequency, found 'most'"},
        {"merge_method: svd\nmodels:\n  - model: a\n    parameters: {weight: 1}\nmajority_sign_method: total\n",
         "majority_sign_method: used only by the ties types"},
        {"", "m.yml: empty config"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct alloy_lora_merge_config *c = NULL;
        struct alloy_err err = {0};
        int rc = parse(cases[i].yaml, &c, &err);
        CHECK_MSG(rc == ALLOY_ERR_CONFIG && c == NULL, "case %zu: status %d", i, rc);
        CHECK_STR_CONTAINS(err.msg, cases[i].want);
        CHECK(strchr(err.msg, '\n') == NULL);
    }
}

/* ---------------------------------------------------------------- helpers */

#define CODE  "tiny-llama-lora/code-r8"
#define PROSE "tiny-llama-lora/prose-r16"

static int g_threads = 2; /* of lora_merge() */

/* Runs alloy_lora_merge on YAML text into out; returns the status. */
static int lora_merge(const char *yaml, const char *out, uint64_t seed, struct alloy_err *err)
{
    struct alloy_lora_merge_options o;
    alloy_lora_merge_options_init(&o);
    o.config_text = yaml;
    o.config_path = "test.yml";
    o.out_dir = out;
    o.threads = g_threads;
    o.seed = seed;
    return alloy_lora_merge(&o, err);
}

/* s·B·A of a module in double ([rows, cols]); NULL when the adapter lacks it. */
static double *delta(const struct alloy_adapter *ad, const char *name, uint64_t *rows, uint64_t *cols)
{
    const struct alloy_lora_module *m = alloy_adapter_module(ad, name);
    if (!m) return NULL;
    struct alloy_err err = {0};
    float *a = malloc(m->a->numel * sizeof *a), *b = malloc(m->b->numel * sizeof *b);
    CHECK_INT(alloy_adapter_read_f32(ad, m->a, a, &err), 0);
    CHECK_INT(alloy_adapter_read_f32(ad, m->b, b, &err), 0);
    *rows = (uint64_t)m->b->shape[0];
    *cols = (uint64_t)m->a->shape[1];
    double *d = calloc(*rows * *cols, sizeof *d);
    for (uint64_t i = 0; i < *rows; i++)
        for (uint64_t k = 0; k < m->rank; k++) {
            double bik = m->scale * b[i * m->rank + k];
            for (uint64_t j = 0; j < *cols; j++) d[i * *cols + j] += bik * a[k * *cols + j];
        }
    free(a);
    free(b);
    return d;
}

static double frob(const double *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i] * x[i];
    return sqrt(s);
}

/* A small PEFT adapter: the first nmods of layer 0's q_proj, v_proj (nmods < 0: an embedding LoRA on
 * embed_tokens instead), rank r, random A and B, `extra` config keys, `more` tensors. */
static void write_adapter(const char *dir, int r, int alpha, int rslora, uint64_t seed, int nmods, const char *extra,
                          const struct test_tensor *more, int nmore)
{
    static const char *const mods[2] = {"q_proj", "v_proj"};
    enum { ROWS = 12, COLS = 20 };
    mkdir(dir, 0755);
    float *vals = malloc(sizeof(float) * 2 * (size_t)r * (ROWS + COLS));
    uint64_t st = seed;
    for (size_t i = 0; i < 2 * (size_t)r * (ROWS + COLS); i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        vals[i] = (float)((double)(st >> 11) * 0x1p-53 - 0.5);
    }
    struct test_tensor t[8];
    static char names[4][96];
    int n = 0;
    for (int m = 0; m < (nmods < 0 ? 1 : nmods); m++) {
        if (nmods < 0) { /* an embedding LoRA: A [r, vocab], B [dim, r], no .weight suffix */
            snprintf(names[0], 96, "base_model.model.model.embed_tokens.lora_embedding_A");
            snprintf(names[1], 96, "base_model.model.model.embed_tokens.lora_embedding_B");
        } else {
            snprintf(names[2 * m], 96, "base_model.model.model.layers.0.self_attn.%s.lora_A.weight", mods[m]);
            snprintf(names[2 * m + 1], 96, "base_model.model.model.layers.0.self_attn.%s.lora_B.weight", mods[m]);
        }
        float *base = vals + (size_t)m * r * (ROWS + COLS);
        t[n++] = (struct test_tensor){names[2 * m], "F32", 2, {r, COLS}, base};
        t[n++] = (struct test_tensor){names[2 * m + 1], "F32", 2, {ROWS, r}, base + (size_t)r * COLS};
    }
    for (int i = 0; i < nmore; i++) t[n++] = more[i];
    char path[1200], json[1024];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    CHECK_INT(test_write_safetensors(path, t, n), 0);
    snprintf(json, sizeof json, "{\"peft_type\": \"LORA\", \"r\": %d, \"lora_alpha\": %d, \"use_rslora\": %s, "
             "\"target_modules\": [\"q_proj\", \"v_proj\", \"embed_tokens\"], \"base_model_name_or_path\": \"tiny\", "
             "\"rank_pattern\": {}, \"alpha_pattern\": {}%s}", r, alpha, rslora ? "true" : "false", extra ? extra : "");
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    CHECK_INT(test_write_text(path, json), 0);
    free(vals);
}

static struct alloy_adapter *open_ok(const char *dir)
{
    struct alloy_adapter *a = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_adapter_open(dir, &a, &err) == 0, "%s: %s", dir, err.msg);
    return a;
}

/* ---------------------------------------------------------------- real adapters */

TEST(lora_merge_cat_reproduces_weighted_deltas)
{
    char out[1200], yaml[4096];
    snprintf(out, sizeof out, "%s/cat", test_tmpdir());
    snprintf(yaml, sizeof yaml, "merge_method: cat\nmodels:\n  - model: %s\n    parameters: {weight: 0.6}\n"
             "  - model: %s\n    parameters: {weight: -0.4}\n", test_data(CODE), test_data(PROSE));
    struct alloy_err err = {0};
    CHECK_MSG(lora_merge(yaml, out, 0, &err) == 0, "%s", err.msg);
    struct alloy_adapter *m = open_ok(out), *c = open_ok(test_data(CODE)), *p = open_ok(test_data(PROSE));
    if (!m || !c || !p) return;
    CHECK_INT(m->nmodules, 28);
    CHECK(m->use_rslora == 0 && m->r == 24 && m->lora_alpha == 24);
    char *written = test_read_file(((void)snprintf(yaml, sizeof yaml, "%s/adapter_config.json", out), yaml), NULL);
    CHECK_STR_CONTAINS(written, "\"use_rslora\": false"); /* prose-r16's rsLoRA is not inherited */
    free(written);
    double worst = 0;
    for (size_t i = 0; i < m->nmodules; i++) {
        const char *name = m->modules[i].name;
        uint64_t rows, cols, r2, c2;
        CHECK(m->modules[i].scale == 1.0 && m->modules[i].rank == 24);
        double *got = delta(m, name, &rows, &cols), *dc = delta(c, name, &r2, &c2), *dp = delta(p, name, &r2, &c2);
        CHECK(alloy_adapter_module(c, name)->scale == 2.0 && alloy_adapter_module(p, name)->scale == 4.0);
        double err_max = 0, ref_max = 0; /* dc, dp already carry s_i = 16/8 and 16/sqrt(16) */
        for (uint64_t e = 0; e < rows * cols; e++) {
            double want = 0.6 * dc[e] - 0.4 * dp[e];
            err_max = fmax(err_max, fabs(got[e] - want));
            ref_max = fmax(ref_max, fabs(want));
        }
        worst = fmax(worst, err_max / ref_max);
        free(got);
        free(dc);
        free(dp);
    }
    CHECK_MSG(worst < 1e-6, "cat: largest relative difference %.3g", worst);
    alloy_adapter_close(m);
    alloy_adapter_close(c);
    alloy_adapter_close(p);
}

/* The SVD merge of the two real adapters at `rank`: per module, error vs the test's own optimum. */
static void check_svd(int rank, double *worst_ratio, double *worst_exact)
{
    char out[1200], yaml[4096];
    snprintf(out, sizeof out, "%s/svd%d", test_tmpdir(), rank);
    snprintf(yaml, sizeof yaml, "merge_method: svd\nmodels:\n  - model: %s\n    parameters: {weight: 0.5}\n"
             "  - model: %s\n    parameters: {weight: 0.7}\nrank: %d\n", test_data(CODE), test_data(PROSE), rank);
    struct alloy_err err = {0};
    CHECK_MSG(lora_merge(yaml, out, 0, &err) == 0, "%s", err.msg);
    struct alloy_adapter *m = open_ok(out), *c = open_ok(test_data(CODE)), *p = open_ok(test_data(PROSE));
    if (!m || !c || !p) return;
    CHECK_INT(m->nmodules, 28);
    char *card = test_read_file(((void)snprintf(yaml, sizeof yaml, "%s/README.md", out), yaml), NULL);
    CHECK_STR_CONTAINS(card, "| module | rank | error | optimum |");
    free(card);
    for (size_t i = 0; i < m->nmodules; i++) {
        const char *name = m->modules[i].name;
        uint64_t rows, cols, r2, c2;
        double *got = delta(m, name, &rows, &cols), *dc = delta(c, name, &r2, &c2), *dp = delta(p, name, &r2, &c2);
        uint64_t n = rows * cols, k = (uint64_t)rank < (rows < cols ? rows : cols) ? (uint64_t)rank : (rows < cols ? rows : cols);
        CHECK_INT(m->modules[i].rank, k);
        double *t = malloc(n * sizeof *t), *res = malloc(n * sizeof *res);
        for (uint64_t e = 0; e < n; e++) { /* the intended target: s_i once, not PEFT's s_i² */
            t[e] = 0.5 * dc[e] + 0.7 * dp[e];
            res[e] = got[e] - t[e];
        }
        double *sv = malloc((rows < cols ? rows : cols) * sizeof *sv), tail = 0;
        jacobi_sv(t, rows, cols, sv);
        for (uint64_t j = k; j < (rows < cols ? rows : cols); j++) tail += sv[j] * sv[j];
        double e_got = frob(res, n), e_opt = sqrt(tail), tn = frob(t, n);
        if (rank >= 24) *worst_exact = fmax(*worst_exact, e_got / tn); /* rank(T) <= 8 + 16 */
        else *worst_ratio = fmax(*worst_ratio, e_got / e_opt);
        free(sv);
        free(t);
        free(res);
        free(got);
        free(dc);
        free(dp);
    }
    alloy_adapter_close(m);
    alloy_adapter_close(c);
    alloy_adapter_close(p);
}

TEST(lora_merge_svd_meets_eckart_young_and_is_exact_at_full_rank)
{
    double ratio = 0, exact = 0;
    check_svd(6, &ratio, &exact);
    CHECK_MSG(ratio > 0.999 && ratio <= 1.01, "rank 6: worst error / optimum %.5f", ratio);
    check_svd(24, &ratio, &exact);
    CHECK_MSG(exact < 1e-5, "rank 24: worst relative error %.3g (T has rank <= 24)", exact);
}

/* ---------------------------------------------------------------- small adapters */

/* The float values of tensor `t` of adapter ad. */
static float *values(const struct alloy_adapter *ad, const struct alloy_tensor *t)
{
    struct alloy_err err = {0};
    float *v = malloc(t->numel * sizeof *v);
    CHECK_INT(alloy_adapter_read_f32(ad, t, v, &err), 0);
    return v;
}

TEST(lora_merge_linear_is_peft_ab_formula)
{
    char a[1100], b[1100], out[1100], yaml[8192];
    snprintf(a, sizeof a, "%s/a", test_tmpdir());
    snprintf(b, sizeof b, "%s/b", test_tmpdir());
    snprintf(out, sizeof out, "%s/linear", test_tmpdir());
    write_adapter(a, 4, 8, 0, 1, 2, NULL, NULL, 0); /* s = 2, q_proj and v_proj */
    write_adapter(b, 4, 8, 1, 2, 1, NULL, NULL, 0); /* rsLoRA: s = 8 / 2 = 4, q_proj only */
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 0.5}\n"
             "  - model: %s\n    parameters: {weight: -0.25}\n", a, b);
    struct alloy_err err = {0};
    CHECK_MSG(lora_merge(yaml, out, 0, &err) == 0, "%s", err.msg);
    struct alloy_adapter *m = open_ok(out), *x = open_ok(a), *y = open_ok(b);
    if (!m || !x || !y) return;
    CHECK_INT(m->nmodules, 2);
    const char *q = "model.layers.0.self_attn.q_proj", *v = "model.layers.0.self_attn.v_proj";
    const struct alloy_lora_module *mq = alloy_adapter_module(m, q), *xq = alloy_adapter_module(x, q),
                                   *yq = alloy_adapter_module(y, q), *mv = alloy_adapter_module(m, v),
                                   *xv = alloy_adapter_module(x, v);
    CHECK(mq && xq && yq && mv && xv);
    if (!mq || !xq || !yq || !mv || !xv) return;
    CHECK(xq->scale == 2.0 && yq->scale == 4.0 && mq->scale == 1.0);
    /* q_proj: c = 0.5·2 = 1 and -0.25·4 = -1: A = 1·A_x - 1·A_y, B = B_x + B_y. */
    float *ma = values(m, mq->a), *mb = values(m, mq->b), *xa = values(x, xq->a), *xb = values(x, xq->b);
    float *ya = values(y, yq->a), *yb = values(y, yq->b);
    for (uint64_t e = 0; e < mq->a->numel; e++) CHECK_NEAR(ma[e], xa[e] - ya[e], 1e-6);
    for (uint64_t e = 0; e < mq->b->numel; e++) CHECK_NEAR(mb[e], xb[e] + yb[e], 1e-6);
    free(ma), free(mb), free(xa), free(xb), free(ya), free(yb);
    /* v_proj: only adapter a has it: A = sqrt(1)·A_x, B = sqrt(1)·B_x. */
    ma = values(m, mv->a), xa = values(x, xv->a);
    for (uint64_t e = 0; e < mv->a->numel; e++) CHECK_NEAR(ma[e], xa[e], 1e-6);
    free(ma), free(xa);
    alloy_adapter_close(m);
    alloy_adapter_close(x);
    alloy_adapter_close(y);
}

/* ties_svd at full rank: the written delta is the TIES target the test computes from the deltas. */
TEST(lora_merge_ties_svd_target_exact)
{
    char a[1100], b[1100], out[1100], yaml[8192];
    snprintf(a, sizeof a, "%s/ta", test_tmpdir());
    snprintf(b, sizeof b, "%s/tb", test_tmpdir());
    write_adapter(a, 4, 8, 0, 3, 1, NULL, NULL, 0);
    write_adapter(b, 6, 6, 0, 4, 1, NULL, NULL, 0);
    for (int freq = 0; freq < 2; freq++) {
        snprintf(out, sizeof out, "%s/ties%d", test_tmpdir(), freq);
        snprintf(yaml, sizeof yaml, "merge_method: ties_svd\nmodels:\n  - model: %s\n    parameters: {weight: 0.9}\n"
                 "  - model: %s\n    parameters: {weight: 0.6}\nrank: 64\ndensity: 0.5\nmajority_sign_method: %s\n",
                 a, b, freq ? "frequency" : "total");
        struct alloy_err err = {0};
        CHECK_MSG(lora_merge(yaml, out, 0, &err) == 0, "%s", err.msg);
        struct alloy_adapter *m = open_ok(out), *x = open_ok(a), *y = open_ok(b);
        if (!m || !x || !y) return;
        const char *q = "model.layers.0.self_attn.q_proj";
        uint64_t rows, cols;
        double *got = delta(m, q, &rows, &cols), *d[2] = {delta(x, q, &rows, &cols), delta(y, q, &rows, &cols)};
        CHECK_INT(alloy_adapter_module(m, q)->rank, 12); /* min(12, 20) */
        uint64_t n = rows * cols, k = n / 2;
        for (int i = 0; i < 2; i++) { /* keep the k largest |Δ_i| */
            double *mag = malloc(n * sizeof *mag);
            for (uint64_t e = 0; e < n; e++) mag[e] = fabs(d[i][e]);
            uint64_t kept = 0; /* by counting: kept when fewer than k are larger (random data: no ties) */
            for (uint64_t e = 0; e < n; e++) {
                uint64_t larger = 0;
                for (uint64_t f = 0; f < n; f++) larger += mag[f] > mag[e];
                if (larger >= k) d[i][e] = 0;
                else kept++;
            }
            CHECK_INT(kept, k);
            free(mag);
        }
        const double w[2] = {0.9, 0.6};
        double maxerr = 0, maxref = 0;
        for (uint64_t e = 0; e < n; e++) {
            double elect = freq ? (d[0][e] > 0) - (d[0][e] < 0) + (d[1][e] > 0) - (d[1][e] < 0) : d[0][e] + d[1][e];
            double sum = 0;
            int agree = 0;
            for (int i = 0; i < 2; i++)
                if (elect >= 0 ? d[i][e] > 0 : d[i][e] < 0) sum += w[i] * d[i][e], agree++;
            double want = agree ? sum / agree : 0;
            maxerr = fmax(maxerr, fabs(got[e] - want));
            maxref = fmax(maxref, fabs(want));
        }
        CHECK_MSG(maxerr < 1e-5 * maxref, "%s: target off by %.3g of %.3g", freq ? "frequency" : "total", maxerr, maxref);
        free(got), free(d[0]), free(d[1]);
        alloy_adapter_close(m);
        alloy_adapter_close(x);
        alloy_adapter_close(y);
    }
}

TEST(lora_merge_dare_reproducible_per_seed)
{
    char a[1100], b[1100], out[3][1100], yaml[8192];
    snprintf(a, sizeof a, "%s/da", test_tmpdir());
    snprintf(b, sizeof b, "%s/db", test_tmpdir());
    write_adapter(a, 4, 8, 0, 5, 2, NULL, NULL, 0);
    write_adapter(b, 4, 4, 0, 6, 2, NULL, NULL, 0);
    snprintf(yaml, sizeof yaml, "merge_method: dare_ties_svd\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\ndensity: 0.3\n", a, b);
    const uint64_t seeds[3] = {7, 7, 8};
    char *st[3];
    size_t len[3] = {0};
    for (int i = 0; i < 3; i++) {
        snprintf(out[i], sizeof out[i], "%s/dare%d", test_tmpdir(), i);
        struct alloy_err err = {0};
        g_threads = i == 1 ? 1 : 2; /* the same bits with one thread */
        CHECK_MSG(lora_merge(yaml, out[i], seeds[i], &err) == 0, "%s", err.msg);
        g_threads = 2;
        char path[4096];
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", out[i]);
        st[i] = test_read_file(path, &len[i]);
        CHECK(st[i] && len[i] > 0);
    }
    if (!st[0] || !st[1] || !st[2]) return;
    CHECK(len[0] == len[1] && memcmp(st[0], st[1], len[0]) == 0); /* same seed: the same file */
    struct alloy_adapter *m0 = open_ok(out[0]), *m1 = open_ok(out[1]), *m2 = open_ok(out[2]);
    if (m0 && m1 && m2) {
        const struct alloy_lora_module *q0 = &m0->modules[0], *q1 = &m1->modules[0], *q2 = &m2->modules[0];
        float *v0 = values(m0, q0->b), *v1 = values(m1, q1->b), *v2 = values(m2, q2->b);
        CHECK(memcmp(v0, v1, q0->b->numel * sizeof *v0) == 0);
        CHECK(memcmp(v0, v2, q0->b->numel * sizeof *v0) != 0);
        free(v0), free(v1), free(v2);
    }
    alloy_adapter_close(m0);
    alloy_adapter_close(m1);
    alloy_adapter_close(m2);
    for (int i = 0; i < 3; i++) free(st[i]);
}

/* ---------------------------------------------------------------- refusals */

static void expect_refused(const char *yaml, const char *out, const char *want)
{
    struct alloy_err err = {0};
    int rc = lora_merge(yaml, out, 0, &err);
    CHECK_MSG(rc != 0, "merged, expected a refusal containing \"%s\"", want);
    CHECK_STR_CONTAINS(err.msg, want);
    CHECK(strchr(err.msg, '\n') == NULL);
    struct stat sb;
    CHECK_MSG(stat(out, &sb) != 0, "%s exists after a refused merge", out);
}

TEST(lora_merge_refusals)
{
    char dir[1100], yaml[8192], out[1200];
    const char *tmp = test_tmpdir();
    snprintf(out, sizeof out, "%s/never", tmp);
    /* unequal ranks for an A/B type */
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\n", test_data(CODE), test_data(PROSE));
    expect_refused(yaml, out, "rank 8 as in");
    /* modules_to_save */
    float head[12 * 20] = {0};
    struct test_tensor full = {"base_model.model.lm_head.weight", "F32", 2, {12, 20}, head};
    snprintf(dir, sizeof dir, "%s/mts", tmp);
    write_adapter(dir, 4, 8, 0, 1, 1, ", \"modules_to_save\": [\"lm_head\"]", &full, 1);
    snprintf(yaml, sizeof yaml, "merge_method: cat\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n", dir);
    expect_refused(yaml, out, "lm_head");
    /* DoRA */
    float mag[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    struct test_tensor dora = {"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", "F32", 1,
                               {12}, mag};
    snprintf(dir, sizeof dir, "%s/dora", tmp);
    write_adapter(dir, 4, 8, 0, 1, 1, ", \"use_dora\": true", &dora, 1);
    snprintf(yaml, sizeof yaml, "merge_method: svd\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n", dir);
    expect_refused(yaml, out, "DoRA");
    /* OUT is an input adapter (or inside one): refused, the adapter unchanged */
    snprintf(dir, sizeof dir, "%s/self", tmp);
    write_adapter(dir, 4, 8, 0, 1, 1, NULL, NULL, 0);
    uint64_t before = test_hash_dir(dir);
    snprintf(yaml, sizeof yaml, "merge_method: cat\nmodels:\n  - model: %s\n    parameters: {weight: 2}\n", dir);
    for (int inside = 0; inside < 2; inside++) {
        struct alloy_err err = {0};
        char target[1200];
        snprintf(target, sizeof target, "%s%s", dir, inside ? "/sub" : "");
        struct alloy_lora_merge_options o;
        alloy_lora_merge_options_init(&o);
        o.config_text = yaml;
        o.out_dir = target;
        o.overwrite = 1;
        CHECK(alloy_lora_merge(&o, &err) != 0);
        CHECK_STR_CONTAINS(err.msg, "an output folder apart from the input adapters");
    }
    CHECK(test_hash_dir(dir) == before);
    /* interrupted: stops after the first batch of modules, nothing published */
    {
        volatile int stop = 1;
        struct alloy_err err = {0};
        struct alloy_lora_merge_options o;
        alloy_lora_merge_options_init(&o);
        o.config_text = yaml;
        o.out_dir = out;
        o.interrupt = &stop;
        CHECK_INT(alloy_lora_merge(&o, &err), ALLOY_ERR_INTERRUPTED);
        struct stat sb;
        CHECK(stat(out, &sb) != 0 && test_leftovers(tmp) == 0);
    }
    /* a missing adapter, bad YAML, an unknown method */
    snprintf(yaml, sizeof yaml, "merge_method: cat\nmodels:\n  - model: %s/nowhere\n    parameters: {weight: 1}\n", tmp);
    expect_refused(yaml, out, "nowhere");
    expect_refused("merge_method: cat\nmodels: [\n", out, "test.yml:3:1: invalid YAML");
    expect_refused("merge_method: mean\nmodels:\n  - model: x\n    parameters: {weight: 1}\n", out,
                   "test.yml:1:15: merge_method: expected one of: cat");
}

TEST(lora_merge_cli)
{
    char cfg[1100], out[1100], cmd[8192], yaml[8192];
    snprintf(cfg, sizeof cfg, "%s/cli.yml", test_tmpdir());
    snprintf(out, sizeof out, "%s/cli-out", test_tmpdir());
    snprintf(yaml, sizeof yaml, "merge_method: svd\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\nrank: 4\n", test_data(CODE), test_data(PROSE));
    CHECK_INT(test_write_text(cfg, yaml), 0);
    snprintf(cmd, sizeof cmd, "%s lora merge %s %s --threads 2 -q 2>&1", test_alloy_bin(), cfg, out);
    char *log = NULL;
    CHECK_INT(test_run(cmd, &log), 0);
    free(log);
    snprintf(cmd, sizeof cmd, "%s/adapter_config.json", out);
    char *json = test_read_file(cmd, NULL);
    CHECK_STR_CONTAINS(json, "\"r\": 4");
    free(json);
    snprintf(cmd, sizeof cmd, "%s lora merge %s/missing.yml %s/x 2>&1", test_alloy_bin(), test_tmpdir(), test_tmpdir());
    log = NULL;
    CHECK_INT(test_run(cmd, &log), 1);
    CHECK_STR_CONTAINS(log, "alloy: error: ");
    CHECK_INT(test_count_lines(log, ""), 1);
    free(log);
    snprintf(cmd, sizeof cmd, "%s lora merge %s 2>&1", test_alloy_bin(), cfg);
    log = NULL;
    CHECK_INT(test_run(cmd, &log), 2);
    free(log);
}

/* End to end: cat at 0.5/0.5 writes the delta 0.5·Δ_code + 0.5·Δ_prose, so base+merged is the model
 * W + 0.5 Δ_code + 0.5 Δ_prose = 0.5 (W + Δ_code) + 0.5 (W + Δ_prose): the linear 0.5/0.5 merge of the
 * two adapted models whose loss the fixture README measured independently (1.44147 nats/token on
 * eval_code, BF16-rounded weights; alloy evaluates base+adapter in float32, within 1e-4 of that). */
TEST(lora_merge_cat_applied_gives_the_measured_loss)
{
    char out[1100], cmd[8192], yaml[4096];
    snprintf(out, sizeof out, "%s/half", test_tmpdir());
    snprintf(yaml, sizeof yaml, "merge_method: cat\nmodels:\n  - model: %s\n    parameters: {weight: 0.5}\n"
             "  - model: %s\n    parameters: {weight: 0.5}\n", test_data(CODE), test_data(PROSE));
    struct alloy_err err = {0};
    CHECK_MSG(lora_merge(yaml, out, 0, &err) == 0, "%s", err.msg);
    snprintf(cmd, sizeof cmd, "%s eval %s+%s --text %s --json 2>/dev/null", test_alloy_bin(), test_data("tiny-llama/base"),
             out, test_data("eval_code.txt"));
    char *log = NULL;
    CHECK_INT(test_run(cmd, &log), 0);
    const char *p = log ? strstr(log, "\"nll\": ") : NULL;
    CHECK_MSG(p != NULL, "no nll in: %s", log ? log : "(nothing)");
    if (p) CHECK_NEAR(strtod(p + 7, NULL), 1.44147, 2e-4);
    free(log);
}

/* An embedding LoRA is combined in its stored layout: the merged B·A [dim, vocab] is the weighted sum. */
TEST(lora_merge_embedding_modules)
{
    char a[1100], b[1100], out[1100], yaml[8192];
    snprintf(a, sizeof a, "%s/ea", test_tmpdir());
    snprintf(b, sizeof b, "%s/eb", test_tmpdir());
    write_adapter(a, 3, 6, 0, 11, -1, NULL, NULL, 0);
    write_adapter(b, 5, 5, 0, 12, -1, NULL, NULL, 0);
    for (int svd = 0; svd < 2; svd++) {
        snprintf(out, sizeof out, "%s/emb%d", test_tmpdir(), svd);
        snprintf(yaml, sizeof yaml, "merge_method: %s\nmodels:\n  - model: %s\n    parameters: {weight: 0.3}\n"
                 "  - model: %s\n    parameters: {weight: 1.2}\n%s", svd ? "svd" : "cat", a, b, svd ? "rank: 8\n" : "");
        struct alloy_err err = {0};
        CHECK_MSG(lora_merge(yaml, out, 0, &err) == 0, "%s", err.msg);
        struct alloy_adapter *m = open_ok(out), *x = open_ok(a), *y = open_ok(b);
        if (!m || !x || !y) return;
        const char *e = "model.embed_tokens";
        const struct alloy_lora_module *me = alloy_adapter_module(m, e);
        CHECK(me && me->kind == ALLOY_LORA_EMBEDDING && me->rank == 8 && me->a->shape[1] == 20 && me->b->shape[0] == 12);
        uint64_t rows, cols;
        double *got = delta(m, e, &rows, &cols), *dx = delta(x, e, &rows, &cols), *dy = delta(y, e, &rows, &cols);
        double worst = 0; /* rank(T) <= 3 + 5 = 8: the svd type is exact too */
        for (uint64_t k = 0; k < rows * cols; k++) worst = fmax(worst, fabs(got[k] - (0.3 * dx[k] + 1.2 * dy[k])));
        CHECK_MSG(worst < 1e-5, "%s: embedding delta off by %.3g", svd ? "svd" : "cat", worst);
        free(got), free(dx), free(dy);
        alloy_adapter_close(m);
        alloy_adapter_close(x);
        alloy_adapter_close(y);
    }
}
