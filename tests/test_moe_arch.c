/*
 * test_moe_arch.c — `alloy moe` beyond the classic Mixtral: gate_mode
 * hidden_avg against a naive left-padded batch computed here, the Qwen MoE
 * (shared expert, shared_expert_gate, zero attention biases), DeepSeek MoE
 * and Qwen3 MoE outputs (per-expert and fused layouts), the architecture
 * mergekit would pick, and sharded output. Qwen2/Qwen3 bases are made here
 * from the tiny-llama fixture (model_type renamed, q/k/v biases or q/k
 * norms added).
 */
#include "test.h"
#include "eval/eval.h"
#include "plan/plan.h"
#include "test_moe.h"

#include <jansson.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define BASE  "tiny-llama/base"
#define CODE  "tiny-llama/code"
#define PROSE "tiny-llama/prose"
#define H 128
#define F 344
#define L 4
#define CHECK_STR(a, b) CHECK_MSG((a) && !strcmp((a), (b)), "'%s' != '%s'", (a) ? (a) : "(null)", (b))

/* ------------------------------------------------------------ hidden_avg */

/* The residual stream entering each layer at every position of "<s>" + prompt (each position's state is
 * the last-position state of the prefix ending there: attention is causal), summed into sum[L * H]; the
 * prompt's length in *n. */
static void token_state_sum(struct alloy_llama *lm, const struct alloy_tokenizer *tok, const char *prompt,
                            double *sum, size_t *n)
{
    char text[256];
    snprintf(text, sizeof text, "<s>%s", prompt);
    int32_t *ids = NULL;
    struct alloy_err err = {0};
    CHECK(alloy_tokenizer_encode(tok, text, strlen(text), "p", &ids, n, &err) == 0);
    float taps[(L + 1) * H];
    for (size_t k = 1; ids && k <= *n; k++) {
        struct alloy_llama_ws *ws = alloy_llama_ws_new(lm, (int)k, 1);
        CHECK(ws != NULL);
        if (ws) alloy_llama_residuals(lm, ws, ids, (int)k, taps);
        for (int j = 0; ws && j < L * H; j++) sum[j] += taps[j];
        alloy_llama_ws_free(ws);
    }
    free(ids);
}

/* A left-padding position's states, from the weights alone in double: the pad token's (BOS, 256)
 * embedding row, then per layer h += down(silu(gate x) * up x), x = rmsnorm(h) * w (its attention, fully
 * masked, contributes nothing), into pad[(L + 1) * H]. */
static void pad_naive(double *pad)
{
    size_t n = 0;
    float *emb = moe_read_f32(test_data(BASE), "model.embed_tokens.weight", &n);
    CHECK(emb != NULL);
    double h[H];
    for (int j = 0; j < H && emb; j++) h[j] = emb[256 * H + j];
    for (int l = 0; l < L && emb; l++) {
        char nm[3][100], nn[100];
        float *w[3];
        static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int k = 0; k < 3; k++) {
            snprintf(nm[k], sizeof nm[k], "model.layers.%d.mlp.%s.weight", l, proj[k]);
            w[k] = moe_read_f32(test_data(BASE), nm[k], &n);
        }
        snprintf(nn, sizeof nn, "model.layers.%d.post_attention_layernorm.weight", l);
        float *g = moe_read_f32(test_data(BASE), nn, &n);
        memcpy(pad + (size_t)l * H, h, sizeof h);
        double ms = 0, x[H], act[F];
        for (int j = 0; j < H; j++) ms += h[j] * h[j] / H;
        for (int j = 0; j < H; j++) x[j] = (float)(h[j] / sqrt(ms + 1e-5)) * g[j]; /* HF rounds to float first */
        for (int i = 0; i < F; i++) {
            double a = 0, b = 0;
            for (int j = 0; j < H; j++) a += w[0][(size_t)i * H + j] * x[j], b += w[1][(size_t)i * H + j] * x[j];
            act[i] = a / (1 + exp(-a)) * b;
        }
        for (int j = 0; j < H; j++) {
            double y = 0;
            for (int i = 0; i < F; i++) y += w[2][(size_t)j * F + i] * act[i];
            h[j] += y;
        }
        for (int k = 0; k < 3; k++) free(w[k]);
        free(g);
    }
    memcpy(pad + (size_t)L * H, h, sizeof h);
    free(emb);
}

/* mergekit's hidden_avg statistic of one prompt list, every layer (out[L * H]), from the per-token states
 * and pad: the batch is left-padded to its longest prompt T; each prompt's positions (its own and T - n
 * pads) are summed and divided by T; the prompts are averaged. masked = 1 leaves the pads out (what
 * mergekit does not do), for the check that they matter. */
static void avg_stat(struct alloy_llama *lm, const struct alloy_tokenizer *tok, const char *const *p, int np,
                     const double *pad, int masked, double *out)
{
    static double sums[2][L * H];
    size_t n[2] = {0}, T = 0;
    memset(sums, 0, sizeof sums);
    for (int i = 0; i < np; i++) {
        token_state_sum(lm, tok, p[i], sums[i], &n[i]);
        if (n[i] > T) T = n[i];
    }
    memset(out, 0, L * H * sizeof *out);
    for (int i = 0; i < np; i++)
        for (int j = 0; j < L * H; j++)
            out[j] += (masked ? sums[i][j] / (double)n[i] : (sums[i][j] + (double)(T - n[i]) * pad[j]) / (double)T) / np;
}

static void normalise(double *v)
{
    double s = 0;
    for (int j = 0; j < H; j++) s += v[j] * v[j];
    for (int j = 0; j < H; j++) v[j] /= sqrt(s);
}

TEST(moe_hidden_avg_matches_a_naive_left_padded_batch)
{
    static const char *const pos0[] = {"def f(x): return x", "import os"}, *const pos1[] = {"Once upon a time"},
                      *const neg1[] = {"int main(void) {", "x"};
    char yaml[2000];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\ngate_mode: hidden_avg\ndtype: float32\nexperts:\n"
             "  - source_model: %s\n    positive_prompts: [\"%s\", \"%s\"]\n"
             "  - source_model: %s\n    positive_prompts: [\"%s\"]\n    negative_prompts: [\"%s\", \"%s\"]\n",
             test_data(BASE), test_data(CODE), pos0[0], pos0[1], test_data(PROSE), pos1[0], neg1[0], neg1[1]);
    const char *out = moe_out_path("hidden_avg");
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, out, 0, 0, 0, &err) == 0, "%s", err.msg);
    struct alloy_llama *lm = NULL;
    struct alloy_tokenizer *tok = NULL;
    char tokp[600];
    snprintf(tokp, sizeof tokp, "%s/tokenizer.json", test_data(BASE));
    CHECK(alloy_llama_open(test_data(BASE), &lm, &err) == 0 && alloy_tokenizer_load(tokp, &tok, &err) == 0);
    double pad[(L + 1) * H];
    pad_naive(pad);
    if (lm) { /* alloy's unattended forward pass is the naive pad state */
        float taps[(L + 1) * H];
        struct alloy_llama_ws *ws = alloy_llama_ws_new(lm, 1, 1);
        if (ws) alloy_llama_unattended_residuals(lm, ws, 256, taps);
        for (int i = 0; ws && i < (L + 1) * H; i++) CHECK_NEAR(taps[i], pad[i], 2e-4 * (1 + fabs(pad[i])));
        alloy_llama_ws_free(ws);
    }
    static double s0[L * H], s1[L * H], sn[L * H], sm[L * H];
    if (lm && tok) {
        avg_stat(lm, tok, pos0, 2, pad, 0, s0);
        avg_stat(lm, tok, pos1, 1, pad, 0, s1);
        avg_stat(lm, tok, neg1, 2, pad, 0, sn);
        avg_stat(lm, tok, pos0, 2, pad, 1, sm);
    }
    for (int l = 0; lm && tok && l < L; l++) {
        double r0[H], r1[H], m0[H];
        for (int j = 0; j < H; j++) {
            r0[j] = s0[l * H + j];
            r1[j] = s1[l * H + j] - sn[l * H + j];
            m0[j] = sm[l * H + j];
        }
        normalise(r0);
        normalise(r1);
        normalise(m0);
        char name[100];
        size_t n = 0;
        snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.gate.weight", l);
        float *g = moe_read_f32(out, name, &n);
        CHECK(g && n == 2 * H);
        double dmask = 0;
        for (int j = 0; g && j < H; j++) {
            CHECK_NEAR(g[j], r0[j], 2e-5);
            CHECK_NEAR(g[H + j], r1[j], 2e-5);
            dmask += fabs(g[j] - m0[j]);
        }
        CHECK_MSG(dmask > 1e-2, "layer %d: the pad positions changed nothing (%g)", l, dmask);
        free(g);
    }
    alloy_tokenizer_free(tok);
    alloy_llama_close(lm);
}

/* ------------------------------------------------------------ Qwen2 / Qwen3 models made from tiny-llama */

/* tiny-llama model src rewritten as model_type `type` into dir: qwen2 adds q/k/v_proj biases (value
 * bias * (row + 1), 0 for none), qwen3 q_norm/k_norm weights of ones. */
static int convert_model(const char *src, const char *dir, const char *type, float bias)
{
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    if (alloy_model_open(test_data(src), &m, &err)) return -1;
    size_t n = alloy_model_count(m), k = 0, ne = 0;
    struct test_tensor *t = calloc(n + 3 * L, sizeof *t);
    void **raw = calloc(n, sizeof *raw);
    float extra[3 * L][H];
    char names[3 * L][96];
    int rc = t && raw ? 0 : -1, q3 = !strcmp(type, "qwen3");
    for (size_t i = 0; i < n && !rc; i++) {
        const struct alloy_tensor *s = alloy_model_tensor(m, i);
        raw[i] = malloc(s->nbytes);
        rc = raw[i] && !alloy_tensor_pread(s, 0, raw[i], s->nbytes, &err) ? 0 : -1;
        t[k++] = (struct test_tensor){s->name, alloy_dtype_traits(s->dtype)->name, s->ndim, {s->shape[0], s->shape[1]},
                                      raw[i]};
        size_t plen = 0;
        const char *suffix = NULL;
        long long l = alloy_name_layer(s->name, &plen, &suffix); /* suffix "self_attn.q_proj.weight" */
        int qkv = l >= 0 && suffix[0] == 's' && suffix[10] != 'o' && !strcmp(suffix + 11, "_proj.weight");
        if (rc || !(q3 ? qkv && suffix[10] != 'v' : qkv && bias != 0)) continue;
        int rows = q3 ? 32 : (int)s->shape[0];
        for (int r = 0; r < rows; r++) extra[ne][r] = q3 ? 1.0f : bias * (float)(r + 1);
        snprintf(names[ne], 96, "%.*s.%lld.self_attn.%c_%s", (int)plen, s->name, l, suffix[10],
                 q3 ? "norm.weight" : "proj.bias");
        t[k++] = (struct test_tensor){names[ne], "F32", 1, {rows}, extra[ne]};
        ne++;
    }
    char *cfg = test_read_file(test_data("tiny-llama/base/config.json"), NULL), conf[2000] = "";
    char arch[64];
    snprintf(arch, sizeof arch, "%s", !strcmp(type, "qwen2") ? "Qwen2ForCausalLM" : "Qwen3ForCausalLM");
    const char *a = cfg ? strstr(cfg, "LlamaForCausalLM") : NULL, *b = cfg ? strstr(cfg, "\"llama\"") : NULL;
    if (a && b) /* the fixture's config with the architecture and model_type renamed */
        snprintf(conf, sizeof conf, "%.*s%s%.*s\"%s\"%s", (int)(a - cfg), cfg, arch, (int)(b - a - 16), a + 16, type,
                 b + 7);
    if (!rc) rc = conf[0] ? test_write_model(dir, t, (int)k, conf) : -1;
    for (int f = 0; f < 2 && !rc; f++) { /* the tokenizer, for the prompts */
        static const char *const files[2] = {"tokenizer.json", "tokenizer_config.json"};
        char from[700], to[700];
        snprintf(from, sizeof from, "%s/%s", test_data(src), files[f]);
        snprintf(to, sizeof to, "%s/%s", dir, files[f]);
        char *text = test_read_file(from, NULL);
        rc = text ? test_write_text(to, text) : -1;
        free(text);
    }
    for (size_t i = 0; raw && i < n; i++) free(raw[i]);
    free(raw);
    free(t);
    free(cfg);
    alloy_model_close(m);
    return rc;
}

/* A fresh Qwen model folder of `type` made from tiny-llama model `which` (base, code, prose). */
static const char *qwen_dir(const char *type, const char *which)
{
    static char buf[6][700];
    static int k;
    char *p = buf[k++ % 6];
    snprintf(p, 700, "%s/%s-%s", test_tmpdir(), type, which);
    const char *src = !strcmp(which, "base") ? BASE : !strcmp(which, "code") ? CODE : PROSE;
    CHECK_MSG(convert_model(src, p, type, !strcmp(type, "qwen2") ? 0.01f : 0) == 0, "cannot make %s", p);
    return p;
}

static json_t *load_config(const char *dir)
{
    char p[800];
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_t *j = json_load_file(p, 0, NULL);
    CHECK_MSG(json_is_object(j), "%s", p);
    return j;
}

static long long jint(const json_t *j, const char *key) { return json_integer_value(json_object_get(j, key)); }
static const char *jstr(const json_t *j, const char *key) { return json_string_value(json_object_get(j, key)); }

/* Where tensor `name` of the (one-file) model dir starts: its data pointer's offset in the file order. */
static long long position(const char *dir, const char *name)
{
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    long long at = -1;
    if (!alloy_model_open(dir, &m, &err)) {
        const struct alloy_tensor *t = alloy_model_find(m, name), *t0 = alloy_model_tensor(m, 0);
        if (t && t0) at = (long long)(t->data - t0->data);
    }
    alloy_model_close(m);
    return at;
}

static const char *const k_code[] = {"def f(x):", "import os"}, *const k_prose[] = {"Once upon a time"},
                  *const k_shared[] = {"Hello"};

/* config.json of the Qwen MoE assembled from tiny-llama: Qwen2MoeConfig's keys as mergekit sets them. */
static void check_qwen2_moe_config(const char *out)
{
    json_t *j = load_config(out);
    CHECK_STR(jstr(j, "model_type"), "qwen2_moe");
    CHECK_STR(json_string_value(json_array_get(json_object_get(j, "architectures"), 0)), "Qwen2MoeForCausalLM");
    CHECK_INT(jint(j, "num_experts"), 2);
    CHECK_INT(jint(j, "num_experts_per_tok"), 1);
    CHECK_INT(jint(j, "decoder_sparse_step"), 1);
    CHECK_INT(jint(j, "moe_intermediate_size"), F);
    CHECK_INT(jint(j, "shared_expert_intermediate_size"), F);
    CHECK(json_is_true(json_object_get(j, "norm_topk_prob")) && json_is_false(json_object_get(j, "use_sliding_window")));
    CHECK(json_is_null(json_object_get(j, "sliding_window")));
    CHECK(json_is_array(json_object_get(j, "mlp_only_layers")) && !json_array_size(json_object_get(j, "mlp_only_layers")));
    CHECK_INT(jint(j, "hidden_size"), H); /* the base's keys stay */
    json_decref(j);
}

/* Qwen MoE is what mergekit picks for one shared expert with prompts (DeepSeek takes none); from a Llama
 * base it gets zero q/k/v biases. */
TEST(moe_qwen2_moe_from_a_llama_base)
{
    char yaml[2000];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\ngate_mode: cheap_embed\nexperts_per_token: 1\nexperts:\n"
             "  - source_model: %s\n    positive_prompts: [\"%s\", \"%s\"]\n"
             "  - source_model: %s\n    positive_prompts: [\"%s\"]\n    residual_scale: 0.5\n"
             "shared_experts:\n  - source_model: %s\n    positive_prompts: [\"%s\"]\n",
             test_data(BASE), test_data(CODE), k_code[0], k_code[1], test_data(PROSE), k_prose[0], test_data(BASE),
             k_shared[0]);
    const char *out = moe_out_path("qwen2moe");
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, out, 0, 0, 0, &err) == 0, "%s", err.msg);
    static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
    double r0[H], r1[H], rs[H];
    moe_cheap_row(k_code, 2, NULL, 0, r0);
    moe_cheap_row(k_prose, 1, NULL, 0, r1);
    moe_cheap_row(k_shared, 1, NULL, 0, rs);
    for (int l = 0; l < L; l++) {
        char a[120], b[120];
        for (int k = 0; k < 3; k++) {
            snprintf(b, sizeof b, "model.layers.%d.mlp.%s.weight", l, proj[k]);
            snprintf(a, sizeof a, "model.layers.%d.mlp.experts.0.%s.weight", l, proj[k]);
            CHECK_MSG(moe_same_tensor(out, a, test_data(CODE), b), "%s", a);
            snprintf(a, sizeof a, "model.layers.%d.mlp.shared_expert.%s.weight", l, proj[k]);
            CHECK_MSG(moe_same_tensor(out, a, test_data(BASE), b), "%s", a);
            snprintf(a, sizeof a, "model.layers.%d.mlp.experts.1.%s.weight", l, proj[k]);
            size_t n1 = 0, n2 = 0;
            float *x = moe_read_f32(out, a, &n1), *y = moe_read_f32(test_data(PROSE), b, &n2);
            CHECK(x && y && n1 == n2);
            for (size_t i = 0; x && y && i < n1; i += 97) /* residual_scale on down_proj only, in bf16 */
                CHECK_NEAR(x[i], (k == 2 ? 0.5f : 1.0f) * y[i], 0);
            free(x);
            free(y);
        }
        for (int k = 0; k < 3; k++) { /* the zero biases of the Qwen2 attention */
            snprintf(a, sizeof a, "model.layers.%d.self_attn.%c_proj.bias", l, "qkv"[k]);
            size_t n = 0;
            float *z = moe_read_f32(out, a, &n);
            CHECK_MSG(z && n == (k ? 64u : 128u), "%s", a);
            for (size_t i = 0; z && i < n; i++) CHECK_NEAR(z[i], 0, 0);
            free(z);
        }
        size_t n = 0, ns = 0;
        snprintf(a, sizeof a, "model.layers.%d.mlp.gate.weight", l);
        snprintf(b, sizeof b, "model.layers.%d.mlp.shared_expert_gate.weight", l);
        float *g = moe_read_f32(out, a, &n), *gs = moe_read_f32(out, b, &ns);
        CHECK(g && gs && n == 2 * H && ns == H);
        for (int j = 0; g && gs && j < H; j++) {
            CHECK_NEAR(g[j], r0[j], 4e-3);
            CHECK_NEAR(g[H + j], r1[j], 4e-3);
            CHECK_NEAR(gs[j], rs[j], 4e-3);
        }
        free(g);
        free(gs);
    }
    /* mergekit's order: each MLP weight replaced in place by the experts' and the shared copies; the
     * routers after everything else */
    CHECK(position(out, "model.layers.0.mlp.experts.0.up_proj.weight") <
          position(out, "model.layers.0.mlp.experts.1.up_proj.weight"));
    CHECK(position(out, "model.layers.0.mlp.experts.1.up_proj.weight") <
          position(out, "model.layers.0.mlp.shared_expert.up_proj.weight"));
    CHECK(position(out, "model.layers.0.mlp.shared_expert.up_proj.weight") <
          position(out, "model.layers.1.input_layernorm.weight"));
    CHECK(position(out, "lm_head.weight") < position(out, "model.layers.0.mlp.gate.weight"));
    CHECK(position(out, "model.layers.0.mlp.gate.weight") < position(out, "model.layers.0.mlp.shared_expert_gate.weight"));
    check_qwen2_moe_config(out);
    struct alloy_llama *lm = NULL; /* the evaluator runs it */
    CHECK_MSG(alloy_llama_open(out, &lm, &err) == 0, "%s", err.msg);
    if (lm) CHECK(alloy_llama_cfg(lm)->shared_expert && alloy_llama_cfg(lm)->n_experts == 2);
    alloy_llama_close(lm);
}


/* A Qwen2 base keeps its own biases; hidden_last routers come from its forward pass (the evaluator runs
 * Qwen2), and the shared expert gets its router row from its prompts. */
TEST(moe_qwen2_moe_from_qwen2_models)
{
    const char *base = qwen_dir("qwen2", "base"), *code = qwen_dir("qwen2", "code"), *prose = qwen_dir("qwen2", "prose");
    char yaml[2000];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\ngate_mode: hidden_last\ndtype: float32\nexperts:\n"
             "  - {source_model: %s, positive_prompts: [\"%s\"]}\n  - {source_model: %s, positive_prompts: [\"%s\"]}\n"
             "shared_experts:\n  - {source_model: %s, positive_prompts: [\"%s\"]}\n",
             base, code, k_code[0], prose, k_prose[0], base, k_shared[0]);
    const char *out = moe_out_path("qwen2moe-q");
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, out, 0, 0, 0, &err) == 0, "%s", err.msg);
    CHECK(moe_same_tensor(out, "model.layers.2.self_attn.k_proj.bias", base, "model.layers.2.self_attn.k_proj.bias"));
    /* each router row: the normalised state entering layer 3 at the last token of "<s>" + its prompt */
    size_t n = 0, ns = 0;
    float *g = moe_read_f32(out, "model.layers.3.mlp.gate.weight", &n);
    float *gs = moe_read_f32(out, "model.layers.3.mlp.shared_expert_gate.weight", &ns);
    CHECK(g && gs && n == 2 * H && ns == H);
    struct alloy_llama *lm = NULL;
    struct alloy_tokenizer *tok = NULL;
    char tokp[800];
    snprintf(tokp, sizeof tokp, "%s/tokenizer.json", test_data(BASE));
    CHECK(alloy_llama_open(base, &lm, &err) == 0 && alloy_tokenizer_load(tokp, &tok, &err) == 0);
    const char *const *prompts[3] = {k_code, k_prose, k_shared};
    for (int e = 0; lm && tok && g && gs && e < 3; e++) {
        char text[100];
        snprintf(text, sizeof text, "<s>%s", prompts[e][0]);
        int32_t *ids = NULL;
        size_t nid = 0;
        float taps[(L + 1) * H];
        CHECK(alloy_tokenizer_encode(tok, text, strlen(text), "p", &ids, &nid, &err) == 0);
        struct alloy_llama_ws *ws = ids ? alloy_llama_ws_new(lm, (int)nid, 1) : NULL;
        if (ws) alloy_llama_residuals(lm, ws, ids, (int)nid, taps);
        double v[H];
        for (int j = 0; j < H; j++) v[j] = taps[3 * H + j];
        normalise(v);
        for (int j = 0; ws && j < H; j++) CHECK_NEAR(e < 2 ? g[e * H + j] : gs[j], v[j], 1e-5);
        alloy_llama_ws_free(ws);
        free(ids);
    }
    free(g);
    free(gs);
    alloy_tokenizer_free(tok);
    alloy_llama_close(lm);
}

/* A shared expert without prompts: DeepSeek MoE (Mixtral takes none, Qwen MoE needs prompts). */
TEST(moe_deepseek_with_a_shared_expert)
{
    char yaml[2000];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\ngate_mode: cheap_embed\nexperts:\n"
             "  - {source_model: %s, positive_prompts: [\"%s\"]}\n  - {source_model: %s, positive_prompts: [\"%s\"]}\n"
             "shared_experts:\n  - source_model: %s\n",
             test_data(BASE), test_data(CODE), k_code[0], test_data(PROSE), k_prose[0], test_data(BASE));
    const char *out = moe_out_path("deepseek");
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, out, 0, 0, 0, &err) == 0, "%s", err.msg);
    CHECK(moe_same_tensor(out, "model.layers.1.mlp.experts.1.down_proj.weight", test_data(PROSE),
                          "model.layers.1.mlp.down_proj.weight"));
    CHECK(moe_same_tensor(out, "model.layers.3.mlp.shared_experts.gate_proj.weight", test_data(BASE),
                          "model.layers.3.mlp.gate_proj.weight"));
    CHECK(moe_same_tensor(out, "model.layers.3.self_attn.q_proj.weight", test_data(BASE),
                          "model.layers.3.self_attn.q_proj.weight"));
    size_t n = 0;
    float *g = moe_read_f32(out, "model.layers.0.mlp.gate.weight", &n);
    CHECK(g && n == 2 * H); /* no router row for the ungated shared expert */
    free(g);
    CHECK(position(out, "model.layers.0.mlp.shared_experts.down_proj.weight") >= 0);
    CHECK(position(out, "model.layers.0.self_attn.q_proj.bias") < 0);
    json_t *j = load_config(out);
    CHECK_STR(jstr(j, "model_type"), "deepseek");
    CHECK_STR(json_string_value(json_array_get(json_object_get(j, "architectures"), 0)), "DeepseekForCausalLM");
    CHECK_INT(jint(j, "n_routed_experts"), 2);
    CHECK_INT(jint(j, "n_shared_experts"), 1);
    CHECK_INT(jint(j, "num_experts_per_tok"), 2);
    CHECK_INT(jint(j, "first_k_dense_replace"), 0);
    CHECK_INT(jint(j, "moe_layer_freq"), 1);
    CHECK_INT(jint(j, "moe_intermediate_size"), F);
    CHECK_STR(jstr(j, "scoring_func"), "softmax");
    CHECK(json_is_true(json_object_get(j, "norm_topk_prob")));
    CHECK_STR(jstr(json_object_get(j, "auto_map"), "AutoModelForCausalLM"),
              "deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekForCausalLM");
    json_decref(j);
    char p[800];
    snprintf(p, sizeof p, "%s/config.json", out);
    char *text = test_read_file(p, NULL); /* json.dump(indent=4), the base's key order */
    CHECK(text && strstr(text, "\n    \"architectures\"") && strstr(text, "\"model_type\"") < strstr(text, "\"vocab_size\""));
    free(text);
}

/* Qwen3 MoE from Qwen3 models, per expert and fused ([E, 2I, H] gate then up rows per expert; [E, H, I]):
 * the fused tensors are the per-expert ones stacked, noise and residual_scale included. */
TEST(moe_qwen3_moe_per_expert_and_fused)
{
    const char *base = qwen_dir("qwen3", "base"), *code = qwen_dir("qwen3", "code"), *prose = qwen_dir("qwen3", "prose");
    char yaml[2000];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\ngate_mode: uniform_random\nexperts:\n"
             "  - {source_model: %s, positive_prompts: [\"%s\"], noise_scale: 0.01}\n"
             "  - {source_model: %s, positive_prompts: [\"%s\"], residual_scale: 0.25}\n",
             base, code, k_code[0], prose, k_prose[0]);
    const char *pe = moe_out_path("qwen3moe"), *fu = moe_out_path("qwen3moe-fused");
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, pe, 0, 0, 0, &err) == 0, "%s", err.msg);
    CHECK_MSG(moe_assemble(yaml, fu, 0, 1, 0, &err) == 0, "%s", err.msg);
    CHECK(moe_same_tensor(pe, "model.layers.1.self_attn.q_norm.weight", base, "model.layers.1.self_attn.q_norm.weight"));
    CHECK(moe_same_tensor(pe, "model.layers.1.mlp.experts.1.gate_proj.weight", prose, "model.layers.1.mlp.gate_proj.weight"));
    CHECK(!moe_same_tensor(pe, "model.layers.1.mlp.experts.0.gate_proj.weight", code, "model.layers.1.mlp.gate_proj.weight"));
    CHECK(moe_same_tensor(pe, "model.layers.2.mlp.gate.weight", fu, "model.layers.2.mlp.gate.weight"));
    for (int l = 0; l < L; l += 3) {
        char a[120];
        size_t ngu = 0, nd = 0;
        snprintf(a, sizeof a, "model.layers.%d.mlp.experts.gate_up_proj", l);
        float *gu = moe_read_f32(fu, a, &ngu);
        snprintf(a, sizeof a, "model.layers.%d.mlp.experts.down_proj", l);
        float *dn = moe_read_f32(fu, a, &nd);
        CHECK(gu && dn && ngu == 2 * 2 * (size_t)F * H && nd == 2 * (size_t)H * F);
        for (int e = 0; gu && dn && e < 2; e++) {
            static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
            for (int k = 0; k < 3; k++) {
                size_t n = 0;
                snprintf(a, sizeof a, "model.layers.%d.mlp.experts.%d.%s.weight", l, e, proj[k]);
                float *x = moe_read_f32(pe, a, &n);
                const float *y = k == 2 ? dn + (size_t)e * H * F : gu + ((size_t)e * 2 + (size_t)k) * F * H;
                CHECK(x && n == (size_t)F * H && !memcmp(x, y, n * sizeof *x));
                free(x);
            }
        }
        free(gu);
        free(dn);
    }
    CHECK(position(fu, "model.layers.0.mlp.experts.0.gate_proj.weight") < 0);
    CHECK(position(fu, "model.norm.weight") < position(fu, "model.layers.0.mlp.experts.gate_up_proj"));
    CHECK(position(fu, "model.layers.3.mlp.experts.down_proj") < position(fu, "model.layers.0.mlp.gate.weight"));
    json_t *j = load_config(fu);
    CHECK_STR(jstr(j, "model_type"), "qwen3_moe");
    CHECK_STR(json_string_value(json_array_get(json_object_get(j, "architectures"), 0)), "Qwen3MoeForCausalLM");
    CHECK_INT(jint(j, "num_experts"), 2);
    CHECK_INT(jint(j, "moe_intermediate_size"), F);
    CHECK_INT(jint(j, "decoder_sparse_step"), 1);
    CHECK(json_is_true(json_object_get(j, "norm_topk_prob")) && !json_object_get(j, "shared_expert_intermediate_size"));
    json_decref(j);
    /* both layouts evaluate to the same logits */
    double gap = moe_logit_gap(pe, fu);
    CHECK_MSG(gap == 0, "per-expert and fused Qwen3 MoE differ by %g", gap);
    /* the routers from the forward pass of the Qwen3 base */
    char *hy = strstr(yaml, "uniform_random");
    memcpy(hy, "hidden_last   ", 14);
    const char *hid = moe_out_path("qwen3moe-h");
    CHECK_MSG(moe_assemble(yaml, hid, 0, 0, 0, &err) == 0, "%s", err.msg);
    CHECK(!moe_same_tensor(hid, "model.layers.2.mlp.gate.weight", pe, "model.layers.2.mlp.gate.weight"));
    CHECK(isfinite(moe_logit_gap(hid, base)));
}

/* A Qwen3 MoE whose experts are all its base computes the base's function (norm_topk_prob: the kept
 * weights sum to 1), per expert and fused; with experts code and prose it does not. */
TEST(moe_qwen3_moe_identical_experts_eval_as_base)
{
    const char *base = qwen_dir("qwen3", "base"), *code = qwen_dir("qwen3", "code"), *prose = qwen_dir("qwen3", "prose");
    char yaml[2000];
    struct alloy_err err = {0};
    snprintf(yaml, sizeof yaml, "base_model: %s\ngate_mode: random\ndtype: float32\nexperts_per_token: 2\n"
             "experts: [{source_model: %s}, {source_model: %s}, {source_model: %s}]\n", base, base, base, base);
    for (int fused = 0; fused < 2; fused++) {
        const char *out = moe_out_path(fused ? "qwen3moe-same-fused" : "qwen3moe-same");
        CHECK_MSG(moe_assemble(yaml, out, 0, fused, 0, &err) == 0, "%s", err.msg);
        double gap = moe_logit_gap(out, base);
        CHECK_MSG(gap < 2e-4, "fused %d: logits differ from the base by %g", fused, gap);
    }
    snprintf(yaml, sizeof yaml, "base_model: %s\ngate_mode: random\ndtype: float32\nexperts_per_token: 1\n"
             "experts: [{source_model: %s}, {source_model: %s}]\n", base, code, prose);
    const char *mix = moe_out_path("qwen3moe-mixed");
    CHECK_MSG(moe_assemble(yaml, mix, 0, 0, 0, &err) == 0, "%s", err.msg);
    CHECK_MSG(moe_logit_gap(mix, base) > 1e-2, "experts code and prose score as the base");
}

/* Mixtral fused (mergekit on transformers 5): mlp.experts.gate_up_proj / down_proj and mlp.gate. */
TEST(moe_mixtral_fused_layout)
{
    char yaml[2000];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\ngate_mode: random\nexperts: [{source_model: %s}, {source_model: %s}]\n",
             test_data(BASE), test_data(CODE), test_data(PROSE));
    const char *cl = moe_out_path("mixtral-classic"), *fu = moe_out_path("mixtral-fused");
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, cl, 0, 0, 0, &err) == 0, "%s", err.msg);
    CHECK_MSG(moe_assemble(yaml, fu, 0, 1, 0, &err) == 0, "%s", err.msg);
    CHECK(moe_same_tensor(cl, "model.layers.1.block_sparse_moe.gate.weight", fu, "model.layers.1.mlp.gate.weight"));
    size_t n = 0, n3 = 0;
    float *gu = moe_read_f32(fu, "model.layers.1.mlp.experts.gate_up_proj", &n);
    float *w3 = moe_read_f32(cl, "model.layers.1.block_sparse_moe.experts.1.w3.weight", &n3);
    CHECK(gu && w3 && n == 4 * (size_t)F * H && n3 == (size_t)F * H && !memcmp(gu + 3 * (size_t)F * H, w3, n3 * 4));
    free(gu);
    free(w3);
    json_t *j = load_config(fu);
    CHECK_STR(jstr(j, "model_type"), "mixtral");
    CHECK_INT(jint(j, "num_local_experts"), 2);
    json_decref(j);
    /* the evaluator reads both layouts into the same weights: the same logits, bit for bit */
    static const int32_t ids[16] = {256, 100, 101, 102, 32, 102, 40, 120, 41, 58, 10, 73, 110, 32, 97, 46};
    float la[16 * 260], lb[16 * 260];
    struct alloy_llama *a = NULL, *b = NULL;
    CHECK_MSG(alloy_llama_open(cl, &a, &err) == 0 && alloy_llama_open(fu, &b, &err) == 0, "%s", err.msg);
    struct alloy_llama_ws *wa = a ? alloy_llama_ws_new(a, 16, 1) : NULL, *wb = b ? alloy_llama_ws_new(b, 16, 1) : NULL;
    CHECK(wa && wb);
    if (wa && wb) {
        alloy_llama_logits(a, wa, ids, 1, 16, la);
        alloy_llama_logits(b, wb, ids, 1, 16, lb);
        CHECK(!memcmp(la, lb, sizeof la));
    }
    alloy_llama_ws_free(wa);
    alloy_llama_ws_free(wb);
    alloy_llama_close(a);
    alloy_llama_close(b);
    /* a fused tensor that does not fit the config: one line naming it */
    char cp[800];
    snprintf(cp, sizeof cp, "%s/config.json", fu);
    char *cfg = test_read_file(cp, NULL), *at = cfg ? strstr(cfg, "\"intermediate_size\": 344") : NULL;
    if (at) memcpy(at + strlen("\"intermediate_size\": "), "300", 3);
    CHECK(at && test_write_text(cp, cfg) == 0);
    free(cfg);
    CHECK(alloy_llama_open(fu, &a, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "model.layers.0.mlp.experts.gate_up_proj: expected a float tensor of shape [2, 600, 128]");
    /* DeepSeek and Qwen MoE have no fused layout */
    snprintf(yaml, sizeof yaml, "base_model: %s\ngate_mode: random\narchitecture: deepseek\nexperts_per_token: 1\n"
             "experts: [{source_model: %s}]\nshared_experts: [{source_model: %s}]\n",
             test_data(BASE), test_data(CODE), test_data(PROSE));
    CHECK(moe_assemble(yaml, moe_out_path("deepseek-fused"), 0, 1, 0, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "fused layout): DeepSeek MoE needs no fused expert layout");
}

/* Past the shard size, the output is several safetensors shards with an index, like a merge's; their
 * tensors are the one-file output's. */
TEST(moe_sharded_output)
{
    char yaml[2000];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\ngate_mode: random\nexperts: [{source_model: %s}, {source_model: %s}]\n",
             test_data(BASE), test_data(CODE), test_data(PROSE));
    const char *one = moe_out_path("moe-one"), *sh = moe_out_path("moe-sharded");
    struct alloy_err err = {0};
    CHECK_MSG(moe_assemble(yaml, one, 0, 0, 0, &err) == 0, "%s", err.msg);
    CHECK_MSG(moe_assemble(yaml, sh, 0, 0, 600000, &err) == 0, "%s", err.msg);
    char p[800];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", sh);
    json_t *idx = json_load_file(p, 0, NULL);
    json_t *wm = json_object_get(idx, "weight_map");
    CHECK(json_is_object(wm));
    struct alloy_model *a = NULL, *b = NULL;
    CHECK(alloy_model_open(one, &a, &err) == 0 && alloy_model_open(sh, &b, &err) == 0);
    uint64_t total = 0;
    for (size_t i = 0; a && b && i < alloy_model_count(a); i++) {
        const struct alloy_tensor *t = alloy_model_tensor(a, i);
        CHECK_MSG(moe_same_tensor(one, t->name, sh, t->name), "%s", t->name);
        CHECK_MSG(json_is_string(json_object_get(wm, t->name)), "%s not in the index", t->name);
        total += t->nbytes;
    }
    CHECK(a && b && alloy_model_count(a) == alloy_model_count(b) && json_object_size(wm) == alloy_model_count(a));
    CHECK_INT((long long)json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")), (long long)total);
    const char *last = json_string_value(json_object_get(wm, "model.layers.3.block_sparse_moe.gate.weight"));
    CHECK(last && strstr(last, "model-") && strstr(last, ".safetensors") && strcmp(last, "model-00001-of-00002.safetensors"));
    snprintf(p, sizeof p, "%s/model.safetensors", sh);
    struct stat st;
    CHECK(stat(p, &st) != 0);
    json_decref(idx);
    alloy_model_close(a);
    alloy_model_close(b);
    /* the CLI's options, and the tokenizer saved as mergekit saves it: padding left with the BOS token */
    char td[600], cfg[800], cmd[3000], *log = NULL;
    snprintf(td, sizeof td, "%s", test_tmpdir()); /* each call makes a new folder */
    snprintf(cfg, sizeof cfg, "%s/moe-cli.yml", td);
    CHECK(test_write_text(cfg, yaml) == 0);
    snprintf(cmd, sizeof cmd, "%s moe %s %s/moe-cli --out-shard-size 600K --fused-experts -q 2>&1 && ls %s/moe-cli",
             test_alloy_bin(), cfg, td, td);
    CHECK_MSG(test_run(cmd, &log) == 0, "%s", log ? log : "");
    CHECK(log && strstr(log, "model-00002-of-0000") && strstr(log, "model.safetensors.index.json"));
    free(log);
    snprintf(p, sizeof p, "%s/moe-cli", td);
    CHECK(position(p, "model.layers.0.mlp.experts.down_proj") < 0); /* sharded: position() reads one file */
    json_t *tc = NULL;
    snprintf(p, sizeof p, "%s/moe-cli/tokenizer_config.json", td);
    CHECK((tc = json_load_file(p, 0, NULL)) != NULL);
    CHECK_STR(jstr(tc, "padding_side"), "left");
    CHECK_STR(jstr(tc, "pad_token"), "<s>");
    CHECK_STR(jstr(tc, "bos_token"), "<s>");
    json_decref(tc);
    snprintf(p, sizeof p, "%s/moe-cli/special_tokens_map.json", td);
    CHECK((tc = json_load_file(p, 0, NULL)) != NULL);
    CHECK_STR(jstr(tc, "pad_token"), "<s>");
    CHECK(!json_object_get(tc, "padding_side"));
    json_decref(tc);
}

/* The configs under examples/moe assemble into the architecture their comments announce. */
TEST(moe_examples_assemble)
{
    static const struct { const char *file, *type; } k[] = {
        {"examples/moe/tiny_mixtral.yml", "mixtral"}, {"examples/moe/tiny_qwen_moe.yml", "qwen2_moe"}};
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        struct alloy_moe_options o;
        alloy_moe_options_init(&o);
        o.config_path = k[i].file;
        o.out_dir = moe_out_path("example");
        struct alloy_err err = {0};
        CHECK_MSG(alloy_moe(&o, &err) == 0, "%s: %s", k[i].file, err.msg);
        json_t *j = load_config(o.out_dir);
        CHECK_STR(jstr(j, "model_type"), k[i].type);
        json_decref(j);
    }
}
