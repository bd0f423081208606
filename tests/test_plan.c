/*
 * test_plan.c — config semantics as the planner applies them (mergekit
 * §2.3–2.5, §3.3–3.4): gradients over layers (t restarts per slice, t = 0 for
 * embeddings/norm/lm_head, t = 1 for single-layer slices), filter subjects
 * (per-model parameters match input names, global ones output names),
 * precedence, base handling, tied lm_head, embedding size rules, integer
 * tensors, and the errors for missing parameters and unknown methods.
 */
#include "test.h"
#include "alloy.h"
#include "config/config.h"
#include "plan/plan.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

#define M(name) "tests/data/tiny-llama/" name

static char g_log[4096];

static void capture(void *user, int level, const char *msg)
{
    (void)user;
    (void)level;
    size_t n = strlen(g_log);
    snprintf(g_log + n, sizeof g_log - n, "%s\n", msg);
}

struct planned {
    struct alloy_config *cfg;
    struct alloy_plan *plan;
    struct alloy_err err;
    int rc;
};

static void plan_text(struct planned *p, const char *yaml)
{
    memset(p, 0, sizeof *p);
    g_log[0] = '\0';
    p->rc = alloy_config_parse(yaml, strlen(yaml), "plan.yml", &p->cfg, &p->err);
    if (p->rc) return;
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.log = capture;
    p->rc = alloy_plan_build(p->cfg, &o, &p->plan, &p->err);
}

static void plan_done(struct planned *p)
{
    alloy_plan_free(p->plan);
    alloy_config_free(p->cfg);
}

static const struct alloy_plan_tensor *find(const struct alloy_plan *p, const char *name)
{
    for (size_t i = 0; p && i < p->ntensors; i++)
        if (!strcmp(p->tensors[i].name, name)) return &p->tensors[i];
    test_fail(__FILE__, __LINE__, "planned tensor %s not found", name);
    return NULL;
}

static double tparam(const struct alloy_plan *p, const struct alloy_plan_tensor *t, int input, const char *name)
{
    int k = alloy_method_param(p->method, name);
    return t->tp[(size_t)input * (size_t)p->method->nparams + (size_t)k];
}

TEST(plan_gradient_over_layers)
{
    struct planned p;
    plan_text(&p, "merge_method: linear\nmodels:\n"
                  "  - model: " M("code") "\n    parameters: {weight: [0, 1]}\n"
                  "  - model: " M("prose") "\n    parameters: {weight: 1}\n");
    CHECK_MSG(p.rc == 0, "%s", p.err.msg);
    if (p.rc) return;
    for (int l = 0; l < 4; l++) {
        char name[96];
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", l);
        const struct alloy_plan_tensor *t = find(p.plan, name);
        if (t) CHECK_NEAR(tparam(p.plan, t, 0, "weight"), l / 3.0, 1e-12);
    }
    /* embeddings, final norm and lm_head use t = 0 */
    CHECK_NEAR(tparam(p.plan, find(p.plan, "model.embed_tokens.weight"), 0, "weight"), 0.0, 0);
    CHECK_NEAR(tparam(p.plan, find(p.plan, "lm_head.weight"), 0, "weight"), 0.0, 0);
    CHECK_NEAR(tparam(p.plan, find(p.plan, "model.norm.weight"), 0, "weight"), 0.0, 0);
    /* mergekit's worked example: 5-point gradient, layer 10 of 40 -> 0.4949 (here: the formula at t = 1/3) */
    plan_done(&p);
    plan_text(&p, "merge_method: linear\nmodels:\n"
                  "  - model: " M("code") "\n    parameters: {weight: [0, 0.5, 0.3, 0.7, 1]}\n"
                  "  - model: " M("prose") "\n    parameters: {weight: 1}\n");
    const struct alloy_plan_tensor *t = p.rc ? NULL : find(p.plan, "model.layers.1.self_attn.q_proj.weight");
    /* s = (1/3)*4 = 1.333: (1-0.333)*0.5 + 0.333*0.3 */
    if (t) CHECK_NEAR(tparam(p.plan, t, 0, "weight"), (2.0 / 3.0) * 0.5 + (1.0 / 3.0) * 0.3, 1e-12);
    plan_done(&p);
}

TEST(plan_gradient_restarts_per_slice)
{
    struct planned p;
    plan_text(&p, "merge_method: passthrough\nslices:\n"
                  "  - sources:\n      - model: " M("code") "\n        layer_range: [0, 2]\n"
                  "  - sources:\n      - model: " M("code") "\n        layer_range: [0, 1]\n"
                  "  - sources:\n      - model: " M("code") "\n        layer_range: [0, 2]\n"
                  "parameters:\n  scale: [0, 1]\n");
    CHECK_MSG(p.rc == 0, "%s", p.err.msg);
    if (p.rc) return;
    /* output layers 0,1 (t 0, 1), 2 (single layer: t 1), 3,4 (t 0, 1) */
    const double want[5] = {0, 1, 1, 0, 1};
    for (int l = 0; l < 5; l++) {
        char name[96];
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", l);
        const struct alloy_plan_tensor *t = find(p.plan, name);
        if (t) CHECK_NEAR(tparam(p.plan, t, 0, "scale"), want[l], 1e-12);
    }
    CHECK_INT(p.plan->out_layers, 5);
    plan_done(&p);
}

TEST(plan_filter_subjects_input_vs_output)
{
    /* Repeating layers 0-1: output layers 2 and 3 read input layers 0 and 1. A per-model
       (tensor) parameter filter sees the input name, so "layers.0." hits outputs 0 and 2. */
    struct planned p;
    plan_text(&p, "merge_method: passthrough\nslices:\n"
                  "  - sources:\n      - model: " M("code") "\n        layer_range: [0, 2]\n"
                  "        parameters:\n          scale:\n            - filter: layers.0.\n              value: 0\n"
                  "            - value: 1\n"
                  "  - sources:\n      - model: " M("code") "\n        layer_range: [0, 2]\n"
                  "        parameters:\n          scale:\n            - filter: layers.0.\n              value: 0\n"
                  "            - value: 1\n");
    CHECK_MSG(p.rc == 0, "%s", p.err.msg);
    if (p.rc) return;
    const double want[4] = {0, 1, 0, 1};
    for (int l = 0; l < 4; l++) {
        char name[96];
        snprintf(name, sizeof name, "model.layers.%d.self_attn.o_proj.weight", l);
        const struct alloy_plan_tensor *t = find(p.plan, name);
        if (t) {
            CHECK_NEAR(tparam(p.plan, t, 0, "scale"), want[l], 0);
            char in[96];
            snprintf(in, sizeof in, "model.layers.%d.self_attn.o_proj.weight", l % 2);
            CHECK(!strcmp(t->inputs[0].t->name, in));
        }
    }
    plan_done(&p);
    /* a global parameter's filter sees the output name: normalize only for output layer 3 */
    plan_text(&p, "merge_method: linear\nslices:\n"
                  "  - sources:\n      - model: " M("code") "\n        layer_range: [0, 2]\n"
                  "      - model: " M("prose") "\n        layer_range: [0, 2]\n"
                  "  - sources:\n      - model: " M("code") "\n        layer_range: [0, 2]\n"
                  "      - model: " M("prose") "\n        layer_range: [0, 2]\n"
                  "parameters:\n  weight: 1\n  normalize:\n    - filter: layers.3.\n      value: 1\n    - value: 0\n");
    CHECK_MSG(p.rc == 0, "%s", p.err.msg);
    if (!p.rc) {
        int k = alloy_method_param(p.plan->method, "normalize");
        CHECK_NEAR(find(p.plan, "model.layers.3.mlp.up_proj.weight")->gp[k], 1, 0);
        CHECK_NEAR(find(p.plan, "model.layers.1.mlp.up_proj.weight")->gp[k], 0, 0);
    }
    plan_done(&p);
}

TEST(plan_precedence_and_warnings)
{
    struct planned p;
    plan_text(&p, "merge_method: linear\nmodels:\n"
                  "  - model: " M("code") "\n    parameters: {weight: 0.7, normalize: 0}\n"
                  "  - model: " M("prose") "\n"
                  "parameters:\n  weight: 0.3\n  densty: 0.5\n");
    CHECK_MSG(p.rc == 0, "%s", p.err.msg);
    if (p.rc) return;
    const struct alloy_plan_tensor *t = find(p.plan, "model.norm.weight");
    CHECK_NEAR(tparam(p.plan, t, 0, "weight"), 0.7, 0);  /* model level wins */
    CHECK_NEAR(tparam(p.plan, t, 1, "weight"), 0.3, 0);  /* falls back to top level */
    int k = alloy_method_param(p.plan->method, "normalize");
    CHECK_NEAR(t->gp[k], 1, 0);                           /* per-model value of a global parameter is ignored */
    CHECK_STR_CONTAINS(g_log, "'normalize' is a global parameter");
    CHECK_STR_CONTAINS(g_log, "'densty' is not a parameter of linear");
    plan_done(&p);
}

TEST(plan_errors)
{
    struct planned p;
    plan_text(&p, "merge_method: linear\nmodels:\n  - model: " M("code") "\n    parameters: {weight: 1}\n"
                  "  - model: " M("prose") "\n");
    CHECK(p.rc == ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(p.err.msg, "needs the parameter 'weight'");
    CHECK_STR_CONTAINS(p.err.msg, M("prose"));
    plan_done(&p);
    plan_text(&p, "merge_method: frobnicate\nmodels:\n  - model: " M("code") "\n");
    CHECK(p.rc == ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(p.err.msg, "unknown method 'frobnicate'");
    CHECK_STR_CONTAINS(p.err.msg, "linear");
    CHECK_STR_CONTAINS(p.err.msg, "plan.yml:1:");
    plan_done(&p);
    /* a base_model that is not listed gets no weight: mergekit fails too, alloy says why */
    plan_text(&p, "merge_method: linear\nbase_model: " M("base") "\nmodels:\n"
                  "  - model: " M("code") "\n    parameters: {weight: 1}\n");
    CHECK(p.rc != 0);
    CHECK_STR_CONTAINS(p.err.msg, "weight");
    plan_done(&p);
    plan_text(&p, "merge_method: passthrough\nslices:\n"
                  "  - sources:\n      - model: " M("code") "\n        layer_range: [2, 6]\n");
    CHECK(p.rc == ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(p.err.msg, "has 4 layers");
    plan_done(&p);
}

/* Synthetic models: vocab sizes differ, one has no lm_head (tied), one integer tensor. */
static void write_model(const char *dir, int vocab, int with_head, float fill)
{
    static float emb[16 * 4], head[16 * 4], w[4 * 4];
    for (int i = 0; i < 16 * 4; i++) emb[i] = fill + i, head[i] = -fill - i;
    for (int i = 0; i < 16; i++) w[i] = fill * 10 + i;
    long long ids[3] = {7, 8, 9};
    struct test_tensor t[4] = {
        {"model.embed_tokens.weight", "F32", 2, {vocab, 4}, emb},
        {"model.layers.0.mlp.up_proj.weight", "F32", 2, {4, 4}, w},
        {"model.position_ids", "I64", 1, {3}, ids},
        {"lm_head.weight", "F32", 2, {vocab, 4}, head},
    };
    CHECK_INT(test_write_model(dir, t, with_head ? 4 : 3, "{\"num_hidden_layers\": 1}"), 0);
}

TEST(plan_embeddings_ties_and_integers)
{
    const char *dir = test_tmpdir();
    char a[600], b[600], yaml[2000];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    write_model(a, 16, 1, 1.0f);
    write_model(b, 12, 0, 2.0f); /* smaller vocab, tied lm_head */
    struct planned p;
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\n", a, b);
    plan_text(&p, yaml);
    CHECK_MSG(p.rc == 0, "%s", p.err.msg);
    if (!p.rc) {
        const struct alloy_plan_tensor *e = find(p.plan, "model.embed_tokens.weight");
        CHECK_INT(e->shape[0], 12); /* linear rectifies to the common block */
        const struct alloy_plan_tensor *h = find(p.plan, "lm_head.weight");
        CHECK(!strcmp(h->inputs[1].t->name, "model.embed_tokens.weight")); /* tied: read the embedding */
        const struct alloy_plan_tensor *ids = find(p.plan, "model.position_ids");
        CHECK(ids->copy && ids->dtype == ALLOY_DTYPE_I64);
        CHECK_STR_CONTAINS(g_log, "common [12, 4] block");
    }
    plan_done(&p);
    /* task arithmetic keeps the base's shape; a smaller input cannot cover it */
    snprintf(yaml, sizeof yaml, "merge_method: task_arithmetic\nbase_model: %s\nmodels:\n"
             "  - model: %s\n    parameters: {weight: 1}\n", a, b);
    plan_text(&p, yaml);
    if (alloy_method_find("task_arithmetic")) {
        CHECK(p.rc == ALLOY_ERR_SHAPE);
        CHECK_STR_CONTAINS(p.err.msg, "[12, 4]");
    }
    plan_done(&p);
}

/* Every plan is checked before anything is written: finite parameters (also `.nan`, which is not
 * "missing"), finite normalisation sums, a bounded number of inputs per tensor, unique output names. */
TEST(plan_rejects_invalid_numbers_and_counts)
{
    static const char *const bad[][2] = {
        {"merge_method: linear\nmodels:\n  - model: " M("code") "\n    parameters: {weight: .inf}\n"
         "  - model: " M("prose") "\n    parameters: {weight: 1}\n", "is inf; parameters must be finite"},
        {"merge_method: linear\nmodels:\n  - model: " M("code") "\n    parameters: {weight: .nan}\n"
         "  - model: " M("prose") "\n    parameters: {weight: 1}\n", "is nan; parameters must be finite"},
        {"merge_method: linear\nmodels:\n  - model: " M("code") "\n    parameters: {weight: 1e308}\n"
         "  - model: " M("prose") "\n    parameters: {weight: 1e308}\n", "add up to more than the largest number"},
        {"merge_method: ties\nbase_model: " M("base") "\nmodels:\n  - model: " M("code") "\n"
         "    parameters: {weight: 1, density: -.inf}\n", "'density' of model"},
    };
    struct planned p;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        plan_text(&p, bad[i][0]);
        CHECK_MSG(p.rc == ALLOY_ERR_CONFIG, "case %zu: rc %d (%s)", i, p.rc, p.err.msg);
        CHECK_STR_CONTAINS(p.err.msg, bad[i][1]);
        plan_done(&p);
    }
    /* 1,100 aliased sources: refused with a message, before any array is sized by them */
    size_t cap = 40000, len = 0;
    char *yaml = malloc(cap);
    len += (size_t)snprintf(yaml + len, cap - len, "merge_method: linear\nmodels:\n  - &m {model: %s, "
                            "parameters: {weight: 1}}\n", M("code"));
    for (int i = 1; i < 1100; i++) len += (size_t)snprintf(yaml + len, cap - len, "  - *m\n");
    plan_text(&p, yaml);
    CHECK_INT(p.rc, ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(p.err.msg, "1100 sources; alloy merges at most 1023 inputs");
    plan_done(&p);
    free(yaml);
}

TEST(plan_rejects_colliding_output_names)
{
    /* a's stack is model.layers; b's is blocks, and b also holds a loose model.layers.0 tensor: a frankenmerge
       of a's layers then b's writes b's loose tensor under a name a's first slice already produced */
    static float v[4] = {1, 2, 3, 4};
    char a[600], b[600], yaml[2000];
    snprintf(a, sizeof a, "%s/a", test_tmpdir());
    snprintf(b, sizeof b, "%s/b", test_tmpdir());
    struct test_tensor ta[2] = {{"model.layers.0.w", "F32", 1, {4}, v}, {"model.layers.1.w", "F32", 1, {4}, v}};
    struct test_tensor tb[4] = {{"blocks.0.w", "F32", 1, {4}, v}, {"blocks.0.u", "F32", 1, {4}, v},
                                {"blocks.1.w", "F32", 1, {4}, v}, {"model.layers.0.w", "F32", 1, {4}, v}};
    CHECK_INT(test_write_model(a, ta, 2, "{\"num_hidden_layers\": 2}"), 0);
    CHECK_INT(test_write_model(b, tb, 4, "{\"num_hidden_layers\": 2}"), 0);
    snprintf(yaml, sizeof yaml, "merge_method: passthrough\nslices:\n  - sources:\n      - model: %s\n"
             "        layer_range: [0, 2]\n  - sources:\n      - model: %s\n        layer_range: [0, 1]\n", a, b);
    struct planned p;
    plan_text(&p, yaml);
    CHECK_MSG(p.rc == ALLOY_ERR_CONFIG, "rc %d (%s)", p.rc, p.err.msg);
    CHECK_STR_CONTAINS(p.err.msg, "output tensor 'model.layers.0.w' is produced twice");
    plan_done(&p);
}

/* Planning is O(n log n) in the tensor count: a 40,000-layer frankenmerge (one tensor a layer, a few
 * tensors under other prefixes) plans in well under a second here; it took 40 s when every layer scanned
 * every tensor. The bound asserted leaves room for sanitizer builds. */
TEST(plan_scales_with_many_tensors)
{
    enum { L = 40000 };
    struct test_tensor *t = calloc(L + 3, sizeof *t);
    char (*names)[40] = calloc(L + 3, sizeof *names);
    static float one[1] = {1};
    for (int i = 0; i < L + 3; i++) {
        if (i < L) snprintf(names[i], sizeof names[i], "model.layers.%d.w", (i * 7919) % L); /* shuffled */
        else snprintf(names[i], sizeof names[i], "other.%d.x", i - L);
        t[i] = (struct test_tensor){names[i], "F32", 1, {1}, one};
    }
    char dir[600], yaml[1600];
    snprintf(dir, sizeof dir, "%s/many", test_tmpdir());
    CHECK_INT(test_write_model(dir, t, L + 3, "{\"num_hidden_layers\": 40000}"), 0);
    snprintf(yaml, sizeof yaml, "merge_method: passthrough\nslices:\n  - sources:\n      - model: %s\n"
             "        layer_range: [0, 20000]\n  - sources:\n      - model: %s\n        layer_range: [10000, 40000]\n",
             dir, dir);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct planned p;
    plan_text(&p, yaml);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    CHECK_MSG(p.rc == 0, "%s", p.err.msg);
    if (!p.rc) {
        CHECK_INT(p.plan->ntensors, 50000 + 3);
        CHECK(!strcmp(p.plan->tensors[0].name, "model.layers.0.w"));
        CHECK(!strcmp(p.plan->tensors[20000].name, "model.layers.20000.w")); /* second slice's first layer */
        CHECK(!strcmp(p.plan->tensors[20000].inputs[0].t->name, "model.layers.10000.w"));
        CHECK(!strcmp(p.plan->tensors[49999].name, "model.layers.49999.w"));
        CHECK(!strcmp(p.plan->tensors[50000].name, "other.0.x") || !strcmp(p.plan->tensors[50000].inputs[0].t->name, "other.0.x"));
    }
    CHECK_MSG(s < 10.0, "planning 40,000 layers took %.1f s", s);
    plan_done(&p);
    free(t);
    free(names);
}
