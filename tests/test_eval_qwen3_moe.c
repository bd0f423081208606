/*
 * test_eval_qwen3_moe.c — the evaluator's Qwen3-MoE layer plan: which layers
 * are sparse (decoder_sparse_step, mlp_only_layers), experts of their own
 * size (moe_intermediate_size), per-expert and fused expert tensors.
 *
 * A dense Qwen3 is written from tiny-llama base (its tensors as F32, plus
 * q_norm / k_norm weights); the MoE shares every tensor with it but the MLP
 * of its one sparse layer, whose experts are all that layer's MLP padded
 * with zero rows (a wider MLP computing the same function), behind a random
 * router. With norm_topk_prob the kept weights sum to 1, so the MoE must
 * score exactly as the dense model (up to float32 summation order); without
 * it the layer's MLP is scaled down, which must show.
 */
#include "test.h"
#include "eval/eval.h"
#include "test_moe.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NL 4     /* layers of tiny-llama base */
#define HS 128   /* hidden_size */
#define FD 344   /* intermediate_size */
#define FE 352   /* moe_intermediate_size: FD and 8 zero rows */
#define NE 3     /* experts */
#define SPARSE 3 /* the one sparse layer: decoder_sparse_step 2 (layers 1, 3) minus mlp_only_layers [1] */
#define MAXT 96

struct built {
    struct test_tensor t[MAXT];
    char names[MAXT][96];
    float *data[MAXT];
    int n;
};

static void add(struct built *b, const char *name, int ndim, long long d0, long long d1, long long d2, float *data)
{
    if (b->n >= MAXT || !data) { free(data); return; }
    snprintf(b->names[b->n], sizeof b->names[b->n], "%s", name);
    b->data[b->n] = data;
    b->t[b->n] = (struct test_tensor){b->names[b->n], "F32", ndim, {d0, d1, d2}, data};
    b->n++;
}

static void built_free(struct built *b)
{
    for (int i = 0; i < b->n; i++) free(b->data[i]);
    b->n = 0;
}

static uint64_t g_seed = 99;
static float *rand_floats(size_t n, float center, float scale)
{
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; v && i < n; i++) {
        g_seed = g_seed * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = center + scale * (float)((double)(g_seed >> 11) * 0x1p-53 * 2 - 1);
    }
    return v;
}

/* The base's tensors as F32 into b, with q/k norms (seeded); moe: layer SPARSE's MLP left out. */
static int base_tensors(struct built *b, int moe)
{
    const char *dir = test_data("tiny-llama/base");
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    if (alloy_model_open(dir, &m, &err)) return -1;
    char skip[64];
    snprintf(skip, sizeof skip, "model.layers.%d.mlp.", SPARSE);
    g_seed = 99;
    for (size_t i = 0; i < alloy_model_count(m); i++) {
        const struct alloy_tensor *s = alloy_model_tensor(m, i);
        if (moe && !strncmp(s->name, skip, strlen(skip))) continue;
        size_t n = 0;
        add(b, s->name, s->ndim, s->shape[0], s->ndim > 1 ? s->shape[1] : 0, 0, moe_read_f32(dir, s->name, &n));
    }
    alloy_model_close(m);
    for (int l = 0; l < NL; l++)
        for (int k = 0; k < 2; k++) {
            char name[96];
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%c_norm.weight", l, "qk"[k]);
            add(b, name, 1, 32, 0, 0, rand_floats(32, 1.0f, 0.5f));
        }
    return 0;
}

/* Layer SPARSE's MLP of the base as NE identical experts of FE rows (per expert, or fused), and a router. */
static void experts(struct built *b, int fused)
{
    const char *dir = test_data("tiny-llama/base");
    static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
    float *w[3];
    for (int k = 0; k < 3; k++) {
        char name[96];
        size_t n = 0;
        snprintf(name, sizeof name, "model.layers.%d.mlp.%s.weight", SPARSE, proj[k]);
        w[k] = moe_read_f32(dir, name, &n);
    }
    char name[128];
    for (int e = 0; e < NE && !fused; e++)
        for (int k = 0; k < 3; k++) {
            float *p = calloc((size_t)FE * HS, sizeof *p);
            for (int r = 0; p && w[k] && r < (k == 2 ? HS : FD); r++) /* gate/up rows, or down's first FD columns */
                memcpy(p + (size_t)r * (k == 2 ? FE : HS), w[k] + (size_t)r * (k == 2 ? FD : HS),
                       (k == 2 ? FD : HS) * sizeof *p);
            snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s.weight", SPARSE, e, proj[k]);
            add(b, name, 2, k == 2 ? HS : FE, k == 2 ? FE : HS, 0, p);
        }
    if (fused) {
        float *gu = calloc((size_t)NE * 2 * FE * HS, sizeof *gu), *dn = calloc((size_t)NE * HS * FE, sizeof *dn);
        for (int e = 0; gu && dn && w[0] && w[1] && w[2] && e < NE; e++) {
            for (int k = 0; k < 2; k++)
                memcpy(gu + ((size_t)e * 2 + (size_t)k) * FE * HS, w[k], (size_t)FD * HS * sizeof *gu);
            for (int r = 0; r < HS; r++)
                memcpy(dn + (size_t)e * HS * FE + (size_t)r * FE, w[2] + (size_t)r * FD, FD * sizeof *dn);
        }
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.gate_up_proj", SPARSE);
        add(b, name, 3, NE, 2 * FE, HS, gu);
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.down_proj", SPARSE);
        add(b, name, 3, NE, HS, FE, dn);
    }
    for (int k = 0; k < 3; k++) free(w[k]);
    g_seed = 7;
    snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight", SPARSE);
    add(b, name, 2, NE, HS, 0, rand_floats((size_t)NE * HS, 0, 0.5f));
}

static const char *write_qwen3(const char *name, int moe, int fused, int norm_topk)
{
    struct built b = {0};
    char cfg[1500];
    const char *dir = moe_out_path(name);
    int rc = base_tensors(&b, moe);
    if (moe) experts(&b, fused);
    snprintf(cfg, sizeof cfg, "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"vocab_size\": 260, \"hidden_size\": %d, "
             "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": 4, "
             "\"num_key_value_heads\": 2, \"head_dim\": 32, \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, "
             "\"max_position_embeddings\": 256, \"tie_word_embeddings\": false, \"bos_token_id\": 256%s%s}",
             moe ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM", moe ? "qwen3_moe" : "qwen3", HS, FD, NL,
             moe ? ", \"num_experts\": 3, \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 352, "
                   "\"decoder_sparse_step\": 2, \"mlp_only_layers\": [1]" : "",
             !moe ? "" : norm_topk ? ", \"norm_topk_prob\": true" : ", \"norm_topk_prob\": false");
    if (!rc) rc = test_write_model(dir, b.t, b.n, cfg);
    for (int f = 0; f < 2 && !rc; f++) { /* tiny-llama's tokenizer, which the GGUF writer needs */
        static const char *const files[2] = {"tokenizer.json", "tokenizer_config.json"};
        char from[700], to[900];
        snprintf(from, sizeof from, "tiny-llama/base/%s", files[f]);
        snprintf(to, sizeof to, "%s/%s", dir, files[f]);
        char *text = test_read_file(test_data(from), NULL);
        rc = text ? test_write_text(to, text) : -1;
        free(text);
    }
    CHECK_MSG(rc == 0 && b.n > 0, "cannot write %s", dir);
    built_free(&b);
    return dir;
}

TEST(eval_qwen3_moe_sparse_layers_and_expert_size)
{
    const char *dense = write_qwen3("q3-dense", 0, 0, 0), *pe = write_qwen3("q3moe-pe", 1, 0, 1);
    double gap = moe_logit_gap(pe, dense);
    CHECK_MSG(gap < 2e-4, "per expert: logits differ from the dense model by %g", gap);
    const char *fu = write_qwen3("q3moe-fused", 1, 1, 1);
    gap = moe_logit_gap(fu, pe);
    CHECK_MSG(gap == 0, "fused and per-expert experts differ by %g", gap);
    /* without norm_topk_prob the two kept experts weigh less than 1: the layer's MLP shrinks */
    const char *un = write_qwen3("q3moe-unnormed", 1, 0, 0);
    gap = moe_logit_gap(un, dense);
    CHECK_MSG(gap > 1e-3 && isfinite(gap), "norm_topk_prob false: logits differ by only %g", gap);
}

/* alloy convert to GGUF F32 and back: the GGUF of the dense Qwen3 (q/k norms: attn_q_norm, attn_k_norm)
 * evaluates exactly as its folder. */
TEST(eval_qwen3_gguf_round_trip)
{
    const char *dense = write_qwen3("q3-dense-g", 0, 0, 0);
    char out[800], cmd[2000];
    snprintf(out, sizeof out, "%s.gguf", dense);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q -j 2 2>&1", test_alloy_bin(), dense, out);
    char *log = NULL;
    CHECK_MSG(test_run(cmd, &log) == 0, "%s", log ? log : "");
    free(log);
    double gap = moe_logit_gap(out, dense);
    CHECK_MSG(gap == 0, "GGUF and folder logits differ by %g", gap);
}

/* A layer the config makes sparse without a router: one error naming the tensor. */
TEST(eval_qwen3_moe_missing_expert_tensors)
{
    const char *pe = write_qwen3("q3moe-bad", 1, 0, 1);
    char path[800];
    snprintf(path, sizeof path, "%s/config.json", pe);
    char *cfg = test_read_file(path, NULL), *at = cfg ? strstr(cfg, "\"mlp_only_layers\": [1]") : NULL;
    if (at) memcpy(at, "\"mlp_only_layers\": [ ]", 22);
    CHECK(at && test_write_text(path, cfg) == 0);
    free(cfg);
    struct alloy_llama *lm = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_llama_open(pe, &lm, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "model.layers.1.mlp.gate.weight: tensor not found");
    alloy_llama_close(lm);
}
