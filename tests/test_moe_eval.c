/*
 * test_moe_eval.c — `alloy eval` of assembled Qwen MoE and DeepSeek MoE
 * models, checked against dense Llamas that compute the same function
 * (test_moe.c's pair: an MLP of 0.5 code(x) + 0.5 prose(x)), the MoEs
 * arranged so that routing and shared-expert gates give exactly that.
 */
#include "test.h"
#include "eval/eval.h"
#include "test_moe.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BASE  "tiny-llama/base"
#define CODE  "tiny-llama/code"
#define PROSE "tiny-llama/prose"
#define L 4

/* Overwrites tensor `name` of the one-file model dir with zeros, in place. */
static int zero_tensor(const char *dir, const char *name)
{
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    if (alloy_model_open(dir, &m, &err)) return -1;
    const struct alloy_tensor *t = alloy_model_find(m, name);
    const uint8_t *start = NULL;
    for (size_t i = 0; i < alloy_model_count(m); i++)
        if (!start || alloy_model_tensor(m, i)->data < start) start = alloy_model_tensor(m, i)->data;
    long long off = t ? (long long)(t->data - start) : -1;
    uint64_t nbytes = t ? t->nbytes : 0;
    alloy_model_close(m);
    char path[800];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = off >= 0 ? fopen(path, "r+b") : NULL;
    uint8_t hl[8];
    int rc = f && fread(hl, 1, 8, f) == 8 ? 0 : -1;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | hl[i];
    if (!rc) rc = fseek(f, (long)(8 + hlen + (uint64_t)off), SEEK_SET);
    for (uint64_t i = 0; !rc && i < nbytes; i++) rc = fputc(0, f) == EOF;
    if (f && fclose(f)) rc = -1;
    return rc;
}


/* A Qwen MoE (ds: DeepSeek MoE) assembled from `experts` (YAML list items) with shared expert prose, whose
 * output is 0.5 prose(x): Qwen's shared expert gates zeroed (sigmoid 0.5), DeepSeek's ungated shared expert
 * at residual_scale 0.5. Its routers zeroed too when zero_routers (softmax 1/2 each). */
static void moe_for_eval(const char *out, int ds, const char *experts, int k, int zero_routers)
{
    char yaml[2000];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\ngate_mode: random\ndtype: float32\narchitecture: %s\nexperts_per_token: %d\n"
             "experts:\n%sshared_experts: [{source_model: %s%s}]\n", test_data(BASE), ds ? "deepseek" : "qwen", k,
             experts, test_data(PROSE), ds ? ", residual_scale: 0.5" : "");
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, out, 0, 0, 0, &err) == 0, "%s", err.msg);
    for (int l = 0; l < L; l++) {
        char name[100];
        snprintf(name, sizeof name, "model.layers.%d.mlp.shared_expert_gate.weight", l);
        if (!ds) CHECK_INT(zero_tensor(out, name), 0);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight", l);
        if (zero_routers) CHECK_INT(zero_tensor(out, name), 0);
    }
}

/* alloy eval runs Qwen2-MoE, checked against the dense Llama of test_moe.c's pair whose MLP is
 * 0.5 code(x) + 0.5 prose(x):
 *   - routed experts code, code at residual_scale 0.5 (whatever the routing, 0.5 code(x)) and the shared
 *     expert prose behind a zero gate (0.5 prose(x));
 *   - norm_topk_prob false (transformers' default): routed experts code, prose, zero routers, 1 per token:
 *     expert 0 with its unnormalised probability 1/2 (renormalised it would weigh 1, and differ). */
TEST(moe_eval_qwen2_moe_equals_its_dense_equivalent)
{
    char experts[600], moe[700], moe2[700], dense[700], mix[700], cp[800];
    snprintf(moe, sizeof moe, "%s", moe_out_path("qwen2moe-eval"));
    snprintf(moe2, sizeof moe2, "%s", moe_out_path("qwen2moe-eval-topk"));
    snprintf(dense, sizeof dense, "%s", moe_out_path("qwen2moe-dense"));
    snprintf(mix, sizeof mix, "%s", moe_out_path("qwen2moe-mixtral"));
    CHECK_INT(moe_write_pair(mix, dense, 2), 0);
    snprintf(experts, sizeof experts, "  - {source_model: %s, residual_scale: 0.5}\n"
             "  - {source_model: %s, residual_scale: 0.5}\n", test_data(CODE), test_data(CODE));
    moe_for_eval(moe, 0, experts, 2, 0);
    double gap = moe_logit_gap(moe, dense);
    CHECK_MSG(gap < 2e-4, "logits differ by %g", gap);
    snprintf(experts, sizeof experts, "  - {source_model: %s}\n  - {source_model: %s}\n", test_data(CODE),
             test_data(PROSE));
    moe_for_eval(moe2, 0, experts, 1, 1);
    CHECK_MSG(moe_logit_gap(moe2, dense) > 1e-2, "norm_topk_prob true should differ");
    snprintf(cp, sizeof cp, "%s/config.json", moe2);
    char *cfg = test_read_file(cp, NULL), *at = cfg ? strstr(cfg, "\"norm_topk_prob\": true") : NULL;
    char *edited = at ? malloc(strlen(cfg) + 2) : NULL;
    if (edited) sprintf(edited, "%.*s\"norm_topk_prob\": false%s", (int)(at - cfg), cfg, at + 22);
    CHECK(edited && test_write_text(cp, edited) == 0);
    free(edited);
    free(cfg);
    gap = moe_logit_gap(moe2, dense);
    CHECK_MSG(gap < 2e-4, "norm_topk_prob false: logits differ by %g", gap);
}

/* alloy eval runs DeepSeek MoE (its shared expert unweighted), against the same dense pair: routed experts
 * code, code at residual_scale 0.5 with 2 per token (renormalised: 0.5 code(x)); then code, prose with zero
 * routers and 1 per token, where DeepSeek's gate, unlike Mixtral's, does not renormalise (0.5 code(x)). */
TEST(moe_eval_deepseek_equals_its_dense_equivalent)
{
    char experts[600], moe[700], dense[700], mix[700];
    snprintf(dense, sizeof dense, "%s", moe_out_path("deepseek-dense"));
    snprintf(mix, sizeof mix, "%s", moe_out_path("deepseek-mixtral"));
    CHECK_INT(moe_write_pair(mix, dense, 2), 0);
    snprintf(experts, sizeof experts, "  - {source_model: %s, residual_scale: 0.5}\n"
             "  - {source_model: %s, residual_scale: 0.5}\n", test_data(CODE), test_data(CODE));
    snprintf(moe, sizeof moe, "%s", moe_out_path("deepseek-eval"));
    moe_for_eval(moe, 1, experts, 2, 0);
    double gap = moe_logit_gap(moe, dense);
    CHECK_MSG(gap < 2e-4, "k=2: logits differ by %g", gap);
    /* random gates draw a row for the shared expert too (mergekit's need_gates), after the routed ones: the
     * routers are a Mixtral's of the same seed */
    char yaml[1000], mixtral[700];
    snprintf(yaml, sizeof yaml, "base_model: %s\ngate_mode: random\ndtype: float32\nexperts:\n%s", test_data(BASE),
             experts);
    snprintf(mixtral, sizeof mixtral, "%s", moe_out_path("deepseek-vs-mixtral"));
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, mixtral, 0, 0, 0, &err) == 0, "%s", err.msg);
    CHECK(moe_same_tensor(moe, "model.layers.3.mlp.gate.weight", mixtral, "model.layers.3.block_sparse_moe.gate.weight"));
    snprintf(experts, sizeof experts, "  - {source_model: %s}\n  - {source_model: %s}\n", test_data(CODE),
             test_data(PROSE));
    snprintf(moe, sizeof moe, "%s", moe_out_path("deepseek-eval-k1"));
    moe_for_eval(moe, 1, experts, 1, 1);
    gap = moe_logit_gap(moe, dense);
    CHECK_MSG(gap < 2e-4, "k=1: logits differ by %g", gap);
}
