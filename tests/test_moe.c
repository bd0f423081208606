/*
 * test_moe.c — `alloy moe` (mergekit-moe): the config reader and its
 * validation rules, and a 2-expert Mixtral assembled from the bundled
 * tiny-llama base/code/prose, checked against what the test computes from
 * the inputs itself: expert tensors bit for bit, non-MLP tensors from the
 * base, cheap_embed router rows (token embeddings summed and normalised
 * here in double), random routers' distribution and reproducibility,
 * residual_scale, config.json fields, errors that leave nothing behind.
 */
#include "test.h"
#include "config/moe_config.h"
#include "eval/eval.h"
#include "test_moe.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BASE  "tiny-llama/base"
#define CODE  "tiny-llama/code"
#define PROSE "tiny-llama/prose"

TEST(moe_config_reads_every_key)
{
    static const char y[] =
        "base_model: b\ngate_mode: cheap_embed\ndtype: float16\nexperts_per_token: 1\narchitecture: Mixtral\n"
        "experts:\n"
        "  - source_model: x\n    positive_prompts: [\"a\", \"b\"]\n    negative_prompts: [\"c\"]\n"
        "    noise_scale: 0.5\n    residual_scale: 0.25\n"
        "  - source_model: y\n    positive_prompts: [\"d\"]\n";
    struct alloy_moe_config *c = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_moe_config_parse(y, strlen(y), "t.yml", 0, &c, &err), 0);
    if (!c) return;
    CHECK(!strcmp(c->base_model, "b"));
    CHECK_INT(c->gate, ALLOY_GATE_CHEAP_EMBED);
    CHECK_INT(c->dtype, ALLOY_DTYPE_F16);
    CHECK_INT(c->experts_per_token, 1);
    CHECK(!strcmp(c->architecture, "Mixtral"));
    CHECK_INT(c->nexperts, 2);
    CHECK_INT(c->experts[0].npositive, 2);
    CHECK(!strcmp(c->experts[0].positive[1], "b"));
    CHECK(!strcmp(c->experts[0].negative[0], "c"));
    CHECK_NEAR(c->experts[0].noise_scale, 0.5, 0);
    CHECK_NEAR(c->experts[0].residual_scale, 0.25, 0);
    CHECK_NEAR(c->experts[1].residual_scale, 1, 0);
    alloy_moe_config_free(c);
    /* defaults: hidden, 2 per token */
    static const char d[] = "base_model: b\nexperts:\n- {source_model: x, positive_prompts: [a]}\n"
                            "- {source_model: y, positive_prompts: [b]}\n";
    CHECK_INT(alloy_moe_config_parse(d, strlen(d), "t.yml", 0, &c, &err), 0);
    if (c) CHECK_INT(c->gate, ALLOY_GATE_HIDDEN);
    if (c) CHECK_INT(c->experts_per_token, 2);
    alloy_moe_config_free(c);
}

TEST(moe_config_errors_follow_mergekits_rules)
{
    static const struct { const char *yaml; int crimes; const char *msg; } k[] = {
        {"experts: []\n", 0, "t.yml:1:1: base_model: expected a model, found nothing"},
        {"base_model: b\nexperts: []\n", 0, "experts: expected a list of 1 to 256"},
        {"base_model: b\nexperts_per_token: 3\ngate_mode: random\nexperts: [{source_model: x}, {source_model: y}]\n", 0,
         "experts_per_token: expected at most the 2 experts, found 3"},
        {"base_model: b\ngate_mode: random\nexperts: [{source_model: x}]\n", 0, /* the default 2 (fuzz find) */
         "t.yml:1:1: experts_per_token: expected at most the 1 experts, found 2"},
        {"base_model: b\nexperts_per_token: 0\nexperts: [{source_model: x}]\n", 0,
         "experts_per_token: expected a whole number >= 1, found 0"},
        {"base_model: b\ngate_mode: cheap_embed\nexperts: [{source_model: x, positive_prompts: [a]}, {source_model: y}]\n", 0,
         "positive_prompts: expected prompts for experts[1] with gate_mode cheap_embed"},
        {"base_model: b\nexperts: [{source_model: x, positive_prompts: [a]}, {source_model: y, positive_prompts: [a]}]\n",
         0, "found the same for all"},
        {"base_model: b\nexperts: [{source_model: x, positive_prompts: [a]}, {source_model: x, positive_prompts: [b]}]\n",
         0, "expected different expert models"},
        {"base_model: b\ngate_mode: smart\nexperts: [{source_model: x}]\n", 0,
         "gate_mode: expected one of: hidden, hidden_avg, hidden_last, cheap_embed, random, uniform_random, found 'smart'"},
        {"base_model: b\ndtype: int8\ngate_mode: random\nexperts: [{source_model: x}]\n", 0, "dtype: expected float32"},
        {"base_model: b\ngate_mode: random\nexperts: [{source_model: x, noise_scale: -1}]\n", 0,
         "experts[0].noise_scale: expected a finite number from 0 to 3.4e38 (float32's range), found -1"},
        {"base_model: b\ngate_mode: random\nexperts: [{source_model: x, residual_scale: 1e308}]\n", 0,
         "experts[0].residual_scale: expected a finite number from 0 to 3.4e38 (float32's range), found 1e308"},
        {"base_model: b\ngate_mode: random\nexperts: [{source_model: x, prompts: [a]}]\n", 0, "prompts"},
        {"base_model: b\ngate_mode: random\nexpert: []\n", 0, "expert"},
        {"base_model: b\ngate_mode: random\nexperts: [{source_model: x, positive_prompts: [[a]]}]\n", 0,
         "experts[0].positive_prompts: expected a string"},
        {"base_model: b\ngate_mode: random\nexperts_per_token: 1\nexperts: [{source_model: x}]\nshared_experts:\n"
         "  - {source_model: y}\n  - {source_model: z, positive_prompts: [a]}\n", 0,
         "t.yml:7:5: positive_prompts: expected prompts on every shared expert or on none, found them on "
         "shared_experts[1] only"},
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        struct alloy_moe_config *c = NULL;
        struct alloy_err err = {0};
        int rc = alloy_moe_config_parse(k[i].yaml, strlen(k[i].yaml), "t.yml", k[i].crimes, &c, &err);
        CHECK_MSG(rc != 0 && !c, "case %zu accepted", i);
        CHECK_MSG(strstr(err.msg, k[i].msg) && !strchr(err.msg, '\n'), "case %zu: '%s' lacks '%s'", i, err.msg, k[i].msg);
    }
    /* the same model twice is allowed with the "not useful without training" flag */
    static const char same[] = "base_model: b\nexperts: [{source_model: x, positive_prompts: [a]}, "
                               "{source_model: x, positive_prompts: [b]}]\n";
    struct alloy_moe_config *c = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_moe_config_parse(same, strlen(same), "t.yml", 1, &c, &err), 0);
    alloy_moe_config_free(c);
}

/* ------------------------------------------------------------ helpers of test_moe_arch.c / test_moe_eval.c */

int moe_assemble(const char *yaml, const char *out, uint64_t seed, int fused, uint64_t shard, struct alloy_err *err)
{
    struct alloy_moe_options o;
    alloy_moe_options_init(&o);
    o.config_text = yaml;
    o.config_path = "moe.yml";
    o.out_dir = out;
    o.has_seed = 1;
    o.seed = seed;
    o.overwrite = 1;
    o.fused_experts = fused;
    o.shard_size = shard;
    return alloy_moe(&o, err);
}

char *moe_out_path(const char *name)
{
    static char buf[4][700];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 700, "%s/%s", test_tmpdir(), name);
    return p;
}

/* The largest logit difference between models a and b on two 16-token sequences (INFINITY: not loaded). */
double moe_logit_gap(const char *da, const char *db)
{
    static const int32_t ids[32] = {256, 100, 101, 102, 32, 102, 40, 120, 41, 58, 10, 32, 32, 114, 101, 116,
                                    117, 114, 110, 32, 120, 10, 73, 110, 32, 97, 32, 116, 105, 109, 101, 46};
    struct alloy_llama *a = NULL, *b = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_llama_open(da, &a, &err) == 0, "%s", err.msg);
    CHECK_MSG(alloy_llama_open(db, &b, &err) == 0, "%s", err.msg);
    struct alloy_llama_ws *wa = a ? alloy_llama_ws_new(a, 16, 2) : NULL, *wb = b ? alloy_llama_ws_new(b, 16, 2) : NULL;
    float *la = malloc(32 * 260 * sizeof *la), *lb = malloc(32 * 260 * sizeof *lb);
    double worst = INFINITY;
    if (wa && wb && la && lb) {
        alloy_llama_logits(a, wa, ids, 2, 16, la);
        alloy_llama_logits(b, wb, ids, 2, 16, lb);
        worst = 0;
        for (int i = 0; i < 32 * 260; i++) worst = fmax(worst, fabs(la[i] - lb[i]));
    }
    alloy_llama_ws_free(wa);
    alloy_llama_ws_free(wb);
    free(la);
    free(lb);
    alloy_llama_close(a);
    alloy_llama_close(b);
    return worst;
}

/* ------------------------------------------------------------ assembly */


/* Tensor `name` of model dir as float32 (malloc'd, *n values); NULL if absent. */
float *moe_read_f32(const char *dir, const char *name, size_t *n)
{
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    if (alloy_model_open(dir, &m, &err)) return NULL;
    const struct alloy_tensor *t = alloy_model_find(m, name);
    float *f = NULL;
    if (t) {
        size_t es = t->dtype == ALLOY_DTYPE_F32 ? 4 : 2;
        *n = (size_t)(t->nbytes / es);
        uint8_t *raw = malloc(t->nbytes);
        f = malloc(*n * sizeof *f);
        if (raw && f && !alloy_tensor_pread(t, 0, raw, t->nbytes, &err)) {
            for (size_t i = 0; i < *n; i++) { /* bf16: the high half of a float32 */
                uint32_t u = 0;
                if (t->dtype == ALLOY_DTYPE_F32) memcpy(&u, raw + 4 * i, 4);
                else u = (uint32_t)(raw[2 * i] | raw[2 * i + 1] << 8) << 16;
                memcpy(&f[i], &u, 4);
            }
        }
        free(raw);
    }
    alloy_model_close(m);
    return f;
}

/* 1 when tensor a of model da and tensor b of model db hold the same bytes. */
int moe_same_tensor(const char *da, const char *a, const char *db, const char *b)
{
    struct alloy_model *ma = NULL, *mb = NULL;
    struct alloy_err err = {0};
    int same = 0;
    if (!alloy_model_open(da, &ma, &err) && !alloy_model_open(db, &mb, &err)) {
        const struct alloy_tensor *ta = alloy_model_find(ma, a), *tb = alloy_model_find(mb, b);
        if (ta && tb && ta->nbytes == tb->nbytes && ta->dtype == tb->dtype) {
            uint8_t *x = malloc(ta->nbytes), *y = malloc(tb->nbytes);
            same = x && y && !alloy_tensor_pread(ta, 0, x, ta->nbytes, &err) &&
                   !alloy_tensor_pread(tb, 0, y, tb->nbytes, &err) && !memcmp(x, y, ta->nbytes);
            free(x);
            free(y);
        }
    }
    alloy_model_close(ma);
    alloy_model_close(mb);
    return same;
}

/* mergekit's cheap_embed row computed here: Σ embedding rows of "<s>" + prompt tokens, normalised. */
void moe_cheap_row(const char *const *pos, int npos, const char *const *neg, int nneg, double *out)
{
    size_t n = 0;
    float *emb = moe_read_f32(test_data(BASE), "model.embed_tokens.weight", &n);
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", test_data(BASE));
    struct alloy_tokenizer *tok = NULL;
    struct alloy_err err = {0};
    CHECK(emb && alloy_tokenizer_load(path, &tok, &err) == 0);
    double acc[2][128] = {{0}};
    for (int s = 0; s < 2 && emb && tok; s++) {
        for (int p = 0; p < (s ? nneg : npos); p++) {
            char text[256];
            snprintf(text, sizeof text, "<s>%s", s ? neg[p] : pos[p]);
            int32_t *ids = NULL;
            size_t nid = 0;
            CHECK(alloy_tokenizer_encode(tok, text, strlen(text), "p", &ids, &nid, &err) == 0);
            CHECK(nid > 1 && ids[0] == 256); /* the BOS text is the BOS token */
            for (size_t k = 0; k < nid; k++)
                for (int j = 0; j < 128; j++) acc[s][j] += emb[(size_t)ids[k] * 128 + j];
            free(ids);
        }
        double norm = 0;
        for (int j = 0; j < 128; j++) norm += acc[s][j] * acc[s][j];
        for (int j = 0; j < 128 && norm > 0; j++) acc[s][j] /= sqrt(norm);
    }
    double norm = 0;
    for (int j = 0; j < 128; j++) out[j] = acc[0][j] - acc[1][j];
    for (int j = 0; j < 128; j++) norm += out[j] * out[j];
    for (int j = 0; j < 128; j++) out[j] /= sqrt(norm);
    alloy_tokenizer_free(tok);
    free(emb);
}

static const char *const k_code[] = {"def f(x):", "import os"}, *const k_prose[] = {"Once upon a time"},
                  *const k_neg[] = {"int main"};

TEST(moe_mixtral_from_tiny_llama_cheap_embed)
{
    char yaml[2000], out[600];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\ngate_mode: cheap_embed\nexperts:\n"
             "  - source_model: %s\n    positive_prompts: [\"%s\", \"%s\"]\n"
             "  - source_model: %s\n    positive_prompts: [\"%s\"]\n    negative_prompts: [\"%s\"]\n",
             test_data(BASE), test_data(CODE), k_code[0], k_code[1], test_data(PROSE), k_prose[0], k_neg[0]);
    snprintf(out, sizeof out, "%s/moe", test_tmpdir());
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, out, 0, 0, 0, &err) == 0, "%s", err.msg);
    static const char *const w[3] = {"gate_proj", "down_proj", "up_proj"};
    char src[2][512]; /* test_data's buffers are reused */
    snprintf(src[0], sizeof src[0], "%s", test_data(CODE));
    snprintf(src[1], sizeof src[1], "%s", test_data(PROSE));
    for (int l = 0; l < 4; l++) {
        char a[200], b[200];
        for (int e = 0; e < 2; e++)
            for (int k = 0; k < 3; k++) {
                snprintf(a, sizeof a, "model.layers.%d.block_sparse_moe.experts.%d.w%d.weight", l, e, k + 1);
                snprintf(b, sizeof b, "model.layers.%d.mlp.%s.weight", l, w[k]);
                CHECK_MSG(moe_same_tensor(out, a, src[e], b), "%s differs from %s", a, b);
            }
        snprintf(a, sizeof a, "model.layers.%d.self_attn.q_proj.weight", l);
        CHECK(moe_same_tensor(out, a, test_data(BASE), a));
        CHECK(!moe_same_tensor(out, a, test_data(CODE), a)); /* the fine-tunes' attention differs: not theirs */
        snprintf(a, sizeof a, "model.layers.%d.post_attention_layernorm.weight", l);
        CHECK(moe_same_tensor(out, a, test_data(BASE), a));
        snprintf(a, sizeof a, "model.layers.%d.mlp.gate_proj.weight", l);
        size_t n = 0;
        float *gone = moe_read_f32(out, a, &n);
        CHECK(!gone); /* dense MLP weights are not in the output */
        free(gone);
    }
    CHECK(moe_same_tensor(out, "lm_head.weight", test_data(BASE), "lm_head.weight"));
    double r0[128], r1[128];
    moe_cheap_row(k_code, 2, NULL, 0, r0);
    moe_cheap_row(k_prose, 1, k_neg, 1, r1);
    for (int l = 0; l < 4; l++) {
        char name[100];
        size_t n = 0;
        snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.gate.weight", l);
        float *g = moe_read_f32(out, name, &n);
        CHECK(g && n == 256);
        for (int j = 0; g && j < 128; j++) {
            CHECK_NEAR(g[j], r0[j], fabs(r0[j]) / 128 + 1e-6); /* bf16: 8 significant bits */
            CHECK_NEAR(g[128 + j], r1[j], fabs(r1[j]) / 128 + 1e-6);
        }
        free(g);
    }
    char path[700];
    snprintf(path, sizeof path, "%s/config.json", out);
    char *cfg = test_read_file(path, NULL);
    CHECK_STR_CONTAINS(cfg, "\"architectures\": [\n    \"MixtralForCausalLM\"\n  ]");
    CHECK_STR_CONTAINS(cfg, "\"model_type\": \"mixtral\"");
    CHECK_STR_CONTAINS(cfg, "\"num_local_experts\": 2");
    CHECK_STR_CONTAINS(cfg, "\"num_experts_per_tok\": 2");
    CHECK_STR_CONTAINS(cfg, "\"sliding_window\": null");
    CHECK_STR_CONTAINS(cfg, "\"intermediate_size\": 344");
    free(cfg);
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "cmp -s %s/tokenizer.json %s/tokenizer.json", out, test_data(BASE));
    CHECK_INT(test_run(cmd, NULL), 0);
    CHECK_INT(test_leftovers(test_tmpdir()), 0);
}

/* The routers of a random-gate assembly, seed s, as floats [4 layers][2][128]. */
static float *random_gates(const char *mode, uint64_t seed, const char *out)
{
    char yaml[1200];
    snprintf(yaml, sizeof yaml, "base_model: %s\ngate_mode: %s\ndtype: float32\nexperts:\n  - source_model: %s\n"
             "    positive_prompts: [a]\n  - source_model: %s\n    positive_prompts: [b]\n    residual_scale: 0.5\n",
             test_data(BASE), mode, test_data(CODE), test_data(PROSE));
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, out, seed, 0, 0, &err) == 0, "%s", err.msg);
    float *all = malloc(4 * 256 * sizeof *all);
    for (int l = 0; all && l < 4; l++) {
        char name[100];
        size_t n = 0;
        snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.gate.weight", l);
        float *g = moe_read_f32(out, name, &n);
        CHECK(g && n == 256);
        if (g) memcpy(all + l * 256, g, 256 * sizeof *g);
        else memset(all + l * 256, 0, 256 * sizeof *all);
        free(g);
    }
    return all;
}

TEST(moe_random_gates_follow_their_distribution_per_seed)
{
    char o1[600], o2[600];
    snprintf(o1, sizeof o1, "%s/r1", test_tmpdir());
    snprintf(o2, sizeof o2, "%s/r2", test_tmpdir());
    float *a = random_gates("random", 7, o1), *b = random_gates("random", 7, o2), *c = random_gates("random", 8, o2);
    double mean = 0, var = 0;
    for (int i = 0; i < 1024; i++) mean += a[i] / 1024.0;
    for (int i = 0; i < 1024; i++) var += (a[i] - mean) * (a[i] - mean) / 1023.0;
    CHECK(!memcmp(a, b, 1024 * sizeof *a));
    CHECK(memcmp(a, c, 1024 * sizeof *a) != 0);
    CHECK(memcmp(a, a + 256, 256 * sizeof *a) != 0); /* each layer its own draw */
    CHECK_NEAR(mean, 0, 0.1);                         /* N(0, 1): sd of the mean 1/32 */
    CHECK_NEAR(var, 1, 0.15);
    /* residual_scale 0.5 halves w2 exactly (float32 output) */
    size_t n1 = 0, n2 = 0;
    float *w2 = moe_read_f32(o1, "model.layers.1.block_sparse_moe.experts.1.w2.weight", &n1);
    float *d = moe_read_f32(test_data(PROSE), "model.layers.1.mlp.down_proj.weight", &n2);
    CHECK(w2 && d && n1 == n2);
    for (size_t i = 0; w2 && d && i < n1; i++)
        if (w2[i] != d[i] * 0.5f) {
            CHECK_MSG(0, "w2[%zu] = %g, expected %g", i, w2[i], d[i] * 0.5f);
            break;
        }
    free(w2);
    free(d);
    float *u = random_gates("uniform_random", 7, o1);
    double bound = 1 / sqrt(128.0), uvar = 0;
    for (int i = 0; i < 1024; i++) {
        CHECK(fabs(u[i]) <= bound);
        uvar += u[i] * (double)u[i] / 1024.0;
    }
    CHECK_NEAR(uvar, bound * bound / 3, bound * bound / 3 * 0.15);
    free(a);
    free(b);
    free(c);
    free(u);
}

TEST(moe_errors_leave_nothing_behind)
{
    char dir[600], bad[700], out[700], yaml[2000];
    snprintf(dir, sizeof dir, "%s/moe_err", test_tmpdir());
    snprintf(bad, sizeof bad, "%s/badexpert", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    float v[4] = {1, 2, 3, 4};
    struct test_tensor t = {"model.layers.0.mlp.gate_proj.weight", "F32", 2, {2, 2}, v};
    CHECK(mkdir(dir, 0755) == 0);
    char *cfg = test_read_file(test_data(BASE "/config.json"), NULL);
    CHECK(cfg && test_write_model(bad, &t, 1, cfg) == 0);
    free(cfg);
    static const struct { const char *fmt; const char *msg; } k[] = {
        {"base_model: %s\ngate_mode: random\nexperts: [{source_model: %s}, {source_model: %s}]\n",
         "badexpert: model.layers.0.mlp.gate_proj.weight: expected a float matrix of the base's shape [344, 128], "
         "found another shape or dtype"},
        {"base_model: %s\ngate_mode: random\narchitecture: qwen3\nexperts: [{source_model: %s}, {source_model: %s}]\n",
         "found none for these models (model_type llama, 0 shared experts): Qwen3 MoE needs qwen3 models"},
        {"base_model: %s\ngate_mode: random\narchitecture: gpt\nexperts: [{source_model: %s}, {source_model: %s}]\n",
         "architecture: expected a prefix of mixtral"},
        {"base_model: %s\ngate_mode: random\narchitecture: mix\nshared_experts: [{source_model: %s}]\n"
         "experts: [{source_model: %s}]\nexperts_per_token: 1\n", "1 shared experts): Mixtral needs no shared experts"},
        {"base_model: %s\ngate_mode: random\narchitecture: qwen\nexperts: [{source_model: %s}, {source_model: %s}]\n",
         "Qwen MoE needs exactly one shared expert; Qwen3 MoE needs qwen3 models"},
        {"base_model: %s\ngate_mode: cheap_embed\narchitecture: Qwen MoE\nshared_experts: [{source_model: %s}]\n"
         "experts: [{source_model: %s, positive_prompts: [a]}]\nexperts_per_token: 1\n",
         "Qwen MoE needs positive_prompts on the shared expert"},
        {"base_model: %s\ngate_mode: random\narchitecture: deep\nshared_experts: [{source_model: %s, "
         "positive_prompts: [a]}]\nexperts: [{source_model: %s}]\nexperts_per_token: 1\n",
         "DeepSeek MoE needs a shared expert without prompts"},
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        snprintf(yaml, sizeof yaml, k[i].fmt, test_data(BASE), i ? test_data(CODE) : bad, test_data(PROSE));
        struct alloy_err err = {0};
        CHECK_MSG(moe_assemble(yaml, out, 0, 0, 0, &err) != 0, "case %zu accepted", i);
        CHECK_MSG(strstr(err.msg, k[i].msg), "case %zu: '%s' lacks '%s'", i, err.msg, k[i].msg);
        CHECK(access(out, F_OK) != 0);
        CHECK_INT(test_leftovers(dir), 0);
    }
    /* a Qwen2 model cannot be a Mixtral expert */
    char qcfg[200];
    snprintf(qcfg, sizeof qcfg, "{\"model_type\": \"qwen2\", \"num_hidden_layers\": 1, \"hidden_size\": 2}");
    snprintf(bad, sizeof bad, "%s/qwen", dir);
    CHECK(test_write_model(bad, &t, 1, qcfg) == 0);
    snprintf(yaml, sizeof yaml, k[0].fmt, test_data(BASE), bad, test_data(PROSE));
    struct alloy_err err = {0};
    CHECK(moe_assemble(yaml, out, 0, 0, 0, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "(model_type differing, 0 shared experts): Mixtral needs llama or mistral models of "
                                "one model_type; DeepSeek MoE needs llama or mistral models of one model_type;");
}

TEST(moe_cli_and_mergekit_moe_alias)
{
    char d[600], cfg[700], bin[700], cmd[6000], yaml[1500];
    snprintf(d, sizeof d, "%s/moe_cli", test_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s", d);
    CHECK_INT(test_run(cmd, NULL), 0);
    snprintf(yaml, sizeof yaml, "base_model: %s\ngate_mode: random\nexperts:\n  - source_model: %s\n"
             "  - source_model: %s\n", test_data(BASE), test_data(CODE), test_data(PROSE));
    snprintf(cfg, sizeof cfg, "%s/moe.yml", d);
    CHECK(test_write_text(cfg, yaml) == 0);
    char *abs = realpath(test_alloy_bin(), NULL);
    snprintf(bin, sizeof bin, "%s/mergekit-moe", d);
    CHECK(abs && symlink(abs, bin) == 0);
    free(abs);
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "%s %s %s/a --random-seed 3 -q 2>&1 && %s moe %s %s/b --random-seed 3 -q 2>&1 && "
             "cmp %s/a/model.safetensors %s/b/model.safetensors", bin, cfg, d, test_alloy_bin(), cfg, d, d, d);
    CHECK_MSG(test_run(cmd, &out) == 0, "%s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s moe %s/missing.yml %s/c 2>&1", test_alloy_bin(), d, d);
    CHECK_INT(test_run(cmd, &out), 1);
    CHECK_STR_CONTAINS(out, "alloy: error: ");
    free(out);
    snprintf(cmd, sizeof cmd, "%s moe %s 2>&1", test_alloy_bin(), cfg);
    CHECK_INT(test_run(cmd, &out), 2);
    free(out);
}

/* The residual stream API the hidden routers use: entering layer 0 it is the last token's embedding row;
 * after the last layer, final-normed and projected (computed here in double), it is the evaluator's
 * logits of the last position. */
TEST(moe_llama_residuals_are_the_residual_stream)
{
    struct alloy_llama *lm = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_llama_open(test_data(BASE), &lm, &err), 0);
    if (!lm) return;
    const struct alloy_llama_config *c = alloy_llama_cfg(lm);
    int L = c->num_layers, H = c->hidden_size, V = c->vocab_size;
    const int32_t ids[5] = {256, 72, 105, 33, 10};
    struct alloy_llama_ws *ws = alloy_llama_ws_new(lm, 5, 1);
    float *taps = malloc((size_t)(L + 1) * H * sizeof *taps), *logits = malloc(5 * (size_t)V * sizeof *logits);
    size_t ne = 0, nn = 0, nl = 0;
    float *emb = moe_read_f32(test_data(BASE), "model.embed_tokens.weight", &ne);
    float *norm = moe_read_f32(test_data(BASE), "model.norm.weight", &nn), *head = moe_read_f32(test_data(BASE), "lm_head.weight", &nl);
    CHECK(ws && taps && logits && emb && norm && head);
    if (ws && taps && logits && emb && norm && head) {
        alloy_llama_residuals(lm, ws, ids, 5, taps);
        for (int j = 0; j < H; j++) CHECK_NEAR(taps[j], emb[10 * H + j], 0);
        alloy_llama_logits(lm, ws, ids, 1, 5, logits);
        const float *h = taps + (size_t)L * H;
        double ms = 0;
        for (int j = 0; j < H; j++) ms += (double)h[j] * h[j] / H;
        for (int v = 0; v < V; v++) {
            double z = 0;
            for (int j = 0; j < H; j++) z += h[j] / sqrt(ms + c->rms_norm_eps) * norm[j] * head[(size_t)v * H + j];
            CHECK_NEAR(logits[4 * (size_t)V + v], z, 1e-3 * (1 + fabs(z)));
        }
    }
    alloy_llama_ws_free(ws);
    alloy_llama_close(lm);
    free(taps);
    free(logits);
    free(emb);
    free(norm);
    free(head);
}

/* hidden routers: per layer, normalise(mean over positive prompts - mean over negative ones) of the state
 * entering the layer at the last token of "<s>" + prompt; layer 0 from the embeddings alone. */
static void hidden_row(struct alloy_llama *lm, const struct alloy_tokenizer *tok, const char *const *pos, int npos,
                       const char *const *neg, int nneg, int layer, double *out)
{
    int H = alloy_llama_cfg(lm)->hidden_size, L = alloy_llama_cfg(lm)->num_layers;
    float *taps = malloc((size_t)(L + 1) * H * sizeof *taps);
    memset(out, 0, (size_t)H * sizeof *out);
    for (int s = 0; s < 2 && taps; s++)
        for (int p = 0; p < (s ? nneg : npos); p++) {
            char text[256];
            snprintf(text, sizeof text, "<s>%s", s ? neg[p] : pos[p]);
            int32_t *ids = NULL;
            size_t nid = 0;
            struct alloy_err err = {0};
            CHECK(alloy_tokenizer_encode(tok, text, strlen(text), "p", &ids, &nid, &err) == 0);
            struct alloy_llama_ws *ws = alloy_llama_ws_new(lm, (int)nid, 1);
            CHECK(ws != NULL);
            if (ws) alloy_llama_residuals(lm, ws, ids, (int)nid, taps);
            for (int j = 0; ws && j < H; j++) out[j] += (s ? -1.0 : 1.0) * taps[(size_t)layer * H + j] / (s ? nneg : npos);
            alloy_llama_ws_free(ws);
            free(ids);
        }
    double n2 = 0;
    for (int j = 0; j < H; j++) n2 += out[j] * out[j];
    for (int j = 0; j < H; j++) out[j] /= sqrt(n2);
    free(taps);
}

TEST(moe_hidden_gates_from_the_base_forward_pass)
{
    char yaml[2000], out[600], tokp[600];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\ngate_mode: hidden\ndtype: float32\nexperts:\n"
             "  - source_model: %s\n    positive_prompts: [\"%s\", \"%s\"]\n"
             "  - source_model: %s\n    positive_prompts: [\"%s\"]\n    negative_prompts: [\"%s\"]\n",
             test_data(BASE), test_data(CODE), k_code[0], k_code[1], test_data(PROSE), k_prose[0], k_neg[0]);
    snprintf(out, sizeof out, "%s/hidden", test_tmpdir());
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, out, 0, 0, 0, &err) == 0, "%s", err.msg);
    struct alloy_llama *lm = NULL;
    struct alloy_tokenizer *tok = NULL;
    snprintf(tokp, sizeof tokp, "%s/tokenizer.json", test_data(BASE));
    CHECK(alloy_llama_open(test_data(BASE), &lm, &err) == 0 && alloy_tokenizer_load(tokp, &tok, &err) == 0);
    size_t ne = 0;
    float *emb = moe_read_f32(test_data(BASE), "model.embed_tokens.weight", &ne);
    for (int l = 0; lm && tok && emb && l < 4; l++) {
        double r0[128], r1[128];
        hidden_row(lm, tok, k_code, 2, NULL, 0, l, r0);
        hidden_row(lm, tok, k_prose, 1, k_neg, 1, l, r1);
        if (l == 0) { /* independent of the forward pass: the prompts' last tokens' embedding rows */
            static const int last_code[2] = {':', 's'}, last_prose = 'e', last_neg = 'n';
            double e0[128], e1[128], a = 0, b = 0;
            for (int j = 0; j < 128; j++) {
                e0[j] = (emb[last_code[0] * 128 + j] + emb[last_code[1] * 128 + j]) / 2;
                e1[j] = emb[last_prose * 128 + j] - emb[last_neg * 128 + j];
                a += e0[j] * e0[j];
                b += e1[j] * e1[j];
            }
            for (int j = 0; j < 128; j++) {
                CHECK_NEAR(r0[j], e0[j] / sqrt(a), 1e-6);
                CHECK_NEAR(r1[j], e1[j] / sqrt(b), 1e-6);
            }
        }
        char name[100];
        size_t n = 0;
        snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.gate.weight", l);
        float *g = moe_read_f32(out, name, &n);
        CHECK(g && n == 256);
        for (int j = 0; g && j < 128; j++) {
            CHECK_NEAR(g[j], r0[j], 1e-5);
            CHECK_NEAR(g[128 + j], r1[j], 1e-5);
        }
        free(g);
    }
    free(emb);
    alloy_tokenizer_free(tok);
    alloy_llama_close(lm);
}

/* ------------------------------------------------------------ eval of a Mixtral */

/* Builds, from tiny-llama base (attention, norms, embeddings) and the code and prose MLPs:
 *   moe:   a Mixtral with zero routers (every expert's probability 1/2), experts code and prose;
 *   dense: the Llama that equals it: with k = 2 an MLP of intermediate size 2F whose gate/up rows are
 *          code's then prose's and whose down columns are both halved; with k = 1 (the tie goes to the
 *          lower index, expert 0) the code MLP alone. */
int moe_write_pair(const char *moe, const char *dense, int k)
{
    static const char *const w[3] = {"gate_proj", "up_proj", "down_proj"};
    const int H = 128, F = 344, L = 4;
    struct test_tensor mt[80], dt[80];
    float *bufs[200] = {0}; /* names[i] and bufs[i] share an index; bufs[i] may stay NULL */
    int nm = 0, nd = 0, nb = 0;
    char names[200][96];
    const char *keep[] = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
    char code[512], prose[512], base[512];
    snprintf(code, sizeof code, "%s", test_data(CODE));
    snprintf(prose, sizeof prose, "%s", test_data(PROSE));
    snprintf(base, sizeof base, "%s", test_data(BASE));
    size_t n = 0;
#define ADD(arr, cnt, nm_, nd_, d0, d1, data) \
    arr[cnt++] = (struct test_tensor){nm_, "F32", nd_, {d0, d1}, data}
    for (int i = 0; i < 3; i++) {
        float *f = bufs[nb++] = moe_read_f32(base, keep[i], &n);
        if (!f) return -1;
        long long d0 = i == 1 ? H : 260;
        ADD(mt, nm, keep[i], i == 1 ? 1 : 2, d0, i == 1 ? 0 : H, f);
        ADD(dt, nd, keep[i], i == 1 ? 1 : 2, d0, i == 1 ? 0 : H, f);
    }
    float *zero = bufs[nb++] = calloc(2 * (size_t)H, sizeof(float));
    for (int l = 0; l < L; l++) {
        static const char *const own[6] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                           "self_attn.o_proj", "input_layernorm", "post_attention_layernorm"};
        static const long long sh[6][2] = {{128, 128}, {64, 128}, {64, 128}, {128, 128}, {128, 0}, {128, 0}};
        for (int i = 0; i < 6; i++) {
            char *nmb = names[nb];
            snprintf(nmb, 96, "model.layers.%d.%s.weight", l, own[i]);
            float *f = bufs[nb++] = moe_read_f32(base, nmb, &n);
            if (!f) return -1;
            ADD(mt, nm, nmb, sh[i][1] ? 2 : 1, sh[i][0], sh[i][1], f);
            ADD(dt, nd, nmb, sh[i][1] ? 2 : 1, sh[i][0], sh[i][1], f);
        }
        snprintf(names[nb], 96, "model.layers.%d.block_sparse_moe.gate.weight", l);
        ADD(mt, nm, names[nb], 2, 2, H, zero);
        nb++;
        float *src[2][3];
        for (int e = 0; e < 2; e++)
            for (int j = 0; j < 3; j++) {
                char nmx[96];
                snprintf(nmx, sizeof nmx, "model.layers.%d.mlp.%s.weight", l, w[j]);
                src[e][j] = bufs[nb] = moe_read_f32(e ? prose : code, nmx, &n);
                if (!src[e][j]) return -1;
                snprintf(names[nb], 96, "model.layers.%d.block_sparse_moe.experts.%d.w%d.weight", l, e,
                         j == 0 ? 1 : j == 1 ? 3 : 2);
                ADD(mt, nm, names[nb], 2, j == 2 ? H : F, j == 2 ? F : H, src[e][j]);
                nb++;
            }
        int Fd = k == 2 ? 2 * F : F;
        float *gate = bufs[nb++] = malloc((size_t)Fd * H * sizeof(float)), *up = bufs[nb++] = malloc((size_t)Fd * H * sizeof(float));
        float *down = bufs[nb++] = malloc((size_t)Fd * H * sizeof(float));
        for (int e = 0; e < k; e++) {
            memcpy(gate + (size_t)e * F * H, src[e][0], (size_t)F * H * sizeof(float));
            memcpy(up + (size_t)e * F * H, src[e][1], (size_t)F * H * sizeof(float));
            for (int r = 0; r < H; r++)
                for (int q = 0; q < F; q++) down[(size_t)r * Fd + e * F + q] = src[e][2][(size_t)r * F + q] / (float)k;
        }
        const float *dw[3] = {gate, up, down};
        for (int j = 0; j < 3; j++) {
            snprintf(names[nb], 96, "model.layers.%d.mlp.%s.weight", l, w[j]);
            ADD(dt, nd, names[nb], 2, j == 2 ? H : Fd, j == 2 ? Fd : H, dw[j]);
            bufs[nb++] = NULL;
        }
    }
#undef ADD
    char *cfg = test_read_file(test_data(BASE "/config.json"), NULL), mcfg[2000], dcfg[2000];
    char *at = cfg ? strstr(cfg, "\"intermediate_size\": 344") : NULL;
    if (!at) return -1;
    snprintf(dcfg, sizeof dcfg, "%.*s\"intermediate_size\": %d%s", (int)(at - cfg), cfg, k == 2 ? 2 * F : F,
             at + strlen("\"intermediate_size\": 344"));
    at = strstr(cfg, "\"model_type\": \"llama\"");
    snprintf(mcfg, sizeof mcfg, "%.*s\"model_type\": \"mixtral\", \"num_local_experts\": 2, \"num_experts_per_tok\": %d%s",
             (int)(at - cfg), cfg, k, at + strlen("\"model_type\": \"llama\""));
    int rc = test_write_model(moe, mt, nm, mcfg) || test_write_model(dense, dt, nd, dcfg);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    free(cfg);
    return rc;
}

TEST(moe_eval_mixtral_equals_its_dense_equivalent)
{
    for (int k = 1; k <= 2; k++) {
        char moe[600], dense[600];
        snprintf(moe, sizeof moe, "%s/mixtral_k%d", test_tmpdir(), k);
        snprintf(dense, sizeof dense, "%s/dense_k%d", test_tmpdir(), k);
        CHECK_INT(moe_write_pair(moe, dense, k), 0);
        struct alloy_llama *a = NULL;
        struct alloy_err err = {0};
        CHECK_MSG(alloy_llama_open(moe, &a, &err) == 0, "%s", err.msg);
        if (a) CHECK_INT(alloy_llama_cfg(a)->n_experts, 2);
        if (a) CHECK_INT(alloy_llama_cfg(a)->experts_per_tok, k);
        alloy_llama_close(a);
        double worst = moe_logit_gap(moe, dense);
        CHECK_MSG(worst < 2e-4, "k=%d: logits differ by %g", k, worst);
    }
}

/* An assembled MoE whose experts are all the base scores the base's loss, whatever its routers. */
TEST(moe_eval_identical_experts_score_the_dense_loss)
{
    char yaml[1200], out[600];
    snprintf(yaml, sizeof yaml, "base_model: %s\ngate_mode: random\nexperts:\n  - source_model: %s\n"
             "  - source_model: %s\n  - source_model: %s\n", test_data(BASE), test_data(BASE), test_data(BASE),
             test_data(BASE));
    snprintf(out, sizeof out, "%s/same3", test_tmpdir());
    struct alloy_moe_options o;
    alloy_moe_options_init(&o);
    o.config_text = yaml;
    o.out_dir = out;
    o.allow_crimes = 1;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_moe(&o, &err) == 0, "%s", err.msg);
    static const int32_t ids[24] = {256, 79, 110, 99, 101, 32, 117, 112, 111, 110, 32, 97,
                                    32, 116, 105, 109, 101, 44, 32, 100, 101, 102, 32, 102};
    int32_t tg[24];
    for (int i = 0; i < 24; i++) tg[i] = i + 1 < 24 ? ids[i + 1] : -1;
    double nll[2] = {0, 0};
    const char *dirs[2] = {out, test_data(BASE)};
    for (int m = 0; m < 2; m++) {
        struct alloy_llama *lm = NULL;
        CHECK_MSG(alloy_llama_open(dirs[m], &lm, &err) == 0, "%s", err.msg);
        struct alloy_llama_ws *ws = lm ? alloy_llama_ws_new(lm, 24, 1) : NULL;
        if (ws) alloy_llama_nll(lm, ws, ids, tg, 1, 24, &nll[m]);
        if (lm) CHECK_INT(alloy_llama_cfg(lm)->n_experts, m ? 0 : 3);
        alloy_llama_ws_free(ws);
        alloy_llama_close(lm);
    }
    CHECK(nll[1] > 1);
    CHECK_NEAR(nll[0], nll[1], 1e-4 * nll[1]);
}
