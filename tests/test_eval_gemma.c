/*
 * test_eval_gemma.c — the Gemma (model_type "gemma") forward pass against a
 * naive float64 reference written here from HF GemmaForCausalLM: embeddings
 * times sqrt(hidden_size), RMSNorm x * (1 + w), GQA attention with half-split
 * RoPE and scale head_dim^-0.5, GeGLU MLP with the tanh GELU, tied lm_head.
 * A tiny random model (2 layers, hidden 8, vocab 7) is written as F32
 * safetensors + config.json; the mutation check (a reference without the
 * +1 or with SiLU) must fail the same comparison, and the model must give the
 * same logits through `alloy convert --outtype f32` to GGUF.
 */
#include "test.h"
#include "eval/eval.h"

#include <stdint.h>
#include <stdlib.h>

enum { GV = 7, GH = 8, GF = 6, GL = 2, GNH = 2, GNKV = 1, GHD = 4, GT = 10 };
#define GEPS 1e-6
#define GTHETA 10000.0

struct gemma_tiny {
    float embed[GV * GH], norm[GH];
    struct { float an[GH], fn[GH], wq[GNH * GHD * GH], wk[GNKV * GHD * GH], wv[GNKV * GHD * GH],
             wo[GH * GNH * GHD], wg[GF * GH], wu[GF * GH], wd[GH * GF]; } l[GL];
};

enum mutation { MUT_NONE, MUT_NO_PLUS_ONE, MUT_SILU, MUT_NO_EMBED_SCALE };

static uint64_t g_seed = 99;
static float grnd(float scale)
{
    g_seed = g_seed * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(((double)(g_seed >> 11) * 0x1p-53 - 0.5) * 2 * scale);
}

static void fill(float *v, size_t n, float scale) { for (size_t i = 0; i < n; i++) v[i] = grnd(scale); }

static void gemma_init(struct gemma_tiny *m)
{
    fill(m->embed, GV * GH, 0.5f);
    fill(m->norm, GH, 0.3f); /* norms stored around 0: the model multiplies by 1 + w */
    for (int l = 0; l < GL; l++) {
        fill(m->l[l].an, GH, 0.3f);
        fill(m->l[l].fn, GH, 0.3f);
        fill(m->l[l].wq, sizeof m->l[l].wq / 4, 0.5f);
        fill(m->l[l].wk, sizeof m->l[l].wk / 4, 0.5f);
        fill(m->l[l].wv, sizeof m->l[l].wv / 4, 0.5f);
        fill(m->l[l].wo, sizeof m->l[l].wo / 4, 0.4f);
        fill(m->l[l].wg, sizeof m->l[l].wg / 4, 0.6f);
        fill(m->l[l].wu, sizeof m->l[l].wu / 4, 0.6f);
        fill(m->l[l].wd, sizeof m->l[l].wd / 4, 0.5f);
    }
}

/* ------------------------------------------------------------ the folder */

static void gemma_write(const struct gemma_tiny *m, const char *dir)
{
    struct { char name[80]; long d0, d1; const float *v; } t[2 + 9 * GL];
    int n = 0;
#define GADD(a, b, vals, ...) do { snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__); t[n].d0 = (a); t[n].d1 = (b); t[n].v = (vals); n++; } while (0)
    GADD(GV, GH, m->embed, "model.embed_tokens.weight");
    for (int l = 0; l < GL; l++) {
        GADD(GH, 0, m->l[l].an, "model.layers.%d.input_layernorm.weight", l);
        GADD(GH, 0, m->l[l].fn, "model.layers.%d.post_attention_layernorm.weight", l);
        GADD(GNH * GHD, GH, m->l[l].wq, "model.layers.%d.self_attn.q_proj.weight", l);
        GADD(GNKV * GHD, GH, m->l[l].wk, "model.layers.%d.self_attn.k_proj.weight", l);
        GADD(GNKV * GHD, GH, m->l[l].wv, "model.layers.%d.self_attn.v_proj.weight", l);
        GADD(GH, GNH * GHD, m->l[l].wo, "model.layers.%d.self_attn.o_proj.weight", l);
        GADD(GF, GH, m->l[l].wg, "model.layers.%d.mlp.gate_proj.weight", l);
        GADD(GF, GH, m->l[l].wu, "model.layers.%d.mlp.up_proj.weight", l);
        GADD(GH, GF, m->l[l].wd, "model.layers.%d.mlp.down_proj.weight", l);
    }
    GADD(GH, 0, m->norm, "model.norm.weight");
#undef GADD
    char hdr[8192], path[600];
    size_t k = 0, off = 0;
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "{");
    for (int i = 0; i < n; i++) {
        size_t cnt = (size_t)t[i].d0 * (size_t)(t[i].d1 ? t[i].d1 : 1);
        char shape[40];
        if (t[i].d1) snprintf(shape, sizeof shape, "%ld,%ld", t[i].d0, t[i].d1);
        else snprintf(shape, sizeof shape, "%ld", t[i].d0);
        k += (size_t)snprintf(hdr + k, sizeof hdr - k, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%s],\"data_offsets\":[%zu,%zu]}",
                              i ? "," : "", t[i].name, shape, off, off + cnt * 4);
        off += cnt * 4;
    }
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "}");
    while (k % 8) hdr[k++] = ' ';
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    uint64_t hl = k;
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, k, f);
    for (int i = 0; i < n; i++) fwrite(t[i].v, 4, (size_t)t[i].d0 * (size_t)(t[i].d1 ? t[i].d1 : 1), f);
    fclose(f);
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "w");
    fprintf(f, "{\"architectures\": [\"GemmaForCausalLM\"], \"model_type\": \"gemma\", \"vocab_size\": %d, "
               "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
               "\"num_key_value_heads\": %d, \"head_dim\": %d, \"rms_norm_eps\": %g, \"rope_theta\": %g, "
               "\"hidden_act\": \"gelu\", \"hidden_activation\": \"gelu_pytorch_tanh\", \"max_position_embeddings\": 64, "
               "\"bos_token_id\": 2, \"eos_token_id\": 1, \"torch_dtype\": \"float32\"}\n",
            GV, GH, GF, GL, GNH, GNKV, GHD, GEPS, GTHETA);
    fclose(f);
}

/* ------------------------------------------------------------ naive reference (float64) */

static void gmatvec(const float *W, const double *x, double *y, int out, int in)
{
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int i = 0; i < in; i++) s += (double)W[o * in + i] * x[i];
        y[o] = s;
    }
}

static void gnorm(const double *x, const float *w, double *y, int n, enum mutation mut)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i] * x[i];
    double r = 1 / sqrt(s / n + GEPS);
    for (int i = 0; i < n; i++) y[i] = x[i] * r * ((mut == MUT_NO_PLUS_ONE ? 0.0 : 1.0) + w[i]);
}

static void grope(double *x, int pos)
{
    for (int i = 0; i < GHD / 2; i++) {
        double a = pos / pow(GTHETA, 2.0 * i / GHD), c = cos(a), s = sin(a), x1 = x[i], x2 = x[i + GHD / 2];
        x[i] = x1 * c - x2 * s;
        x[i + GHD / 2] = x2 * c + x1 * s;
    }
}

static void gattend(double q[][GNH * GHD], double k[][GNKV * GHD], double v[][GNKV * GHD], int t, double *o)
{
    for (int j = 0; j < GNH; j++) {
        int kh = j / (GNH / GNKV);
        double sc[GT], mx = -1e300, sum = 0;
        for (int s = 0; s <= t; s++) {
            double d = 0;
            for (int i = 0; i < GHD; i++) d += q[t][j * GHD + i] * k[s][kh * GHD + i];
            sc[s] = d / sqrt((double)GHD);
            mx = sc[s] > mx ? sc[s] : mx;
        }
        for (int s = 0; s <= t; s++) sum += exp(sc[s] - mx);
        for (int i = 0; i < GHD; i++) {
            double acc = 0;
            for (int s = 0; s <= t; s++) acc += exp(sc[s] - mx) / sum * v[s][kh * GHD + i];
            o[j * GHD + i] = acc;
        }
    }
}

static void gemma_naive(const struct gemma_tiny *m, const int32_t *ids, int T, double *logits, enum mutation mut)
{
    double h[GT][GH], q[GT][GNH * GHD], k[GT][GNKV * GHD], v[GT][GNKV * GHD], a[GH], o[GNH * GHD], y[GH], g[GF], u[GF];
    double scale = mut == MUT_NO_EMBED_SCALE ? 1.0 : (double)sqrtf((float)GH);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < GH; i++) h[t][i] = m->embed[ids[t] * GH + i] * scale;
    for (int l = 0; l < GL; l++) {
        for (int t = 0; t < T; t++) {
            gnorm(h[t], m->l[l].an, a, GH, mut);
            gmatvec(m->l[l].wq, a, q[t], GNH * GHD, GH);
            gmatvec(m->l[l].wk, a, k[t], GNKV * GHD, GH);
            gmatvec(m->l[l].wv, a, v[t], GNKV * GHD, GH);
            for (int j = 0; j < GNH; j++) grope(q[t] + j * GHD, t);
            for (int j = 0; j < GNKV; j++) grope(k[t] + j * GHD, t);
        }
        for (int t = 0; t < T; t++) { /* causal: row t only reads k, v of rows <= t, computed above */
            gattend(q, k, v, t, o);
            gmatvec(m->l[l].wo, o, y, GH, GNH * GHD);
            for (int i = 0; i < GH; i++) h[t][i] += y[i];
            gnorm(h[t], m->l[l].fn, a, GH, mut);
            gmatvec(m->l[l].wg, a, g, GF, GH);
            gmatvec(m->l[l].wu, a, u, GF, GH);
            for (int i = 0; i < GF; i++) {
                double x = g[i];
                double act = mut == MUT_SILU ? x / (1 + exp(-x))
                                             : 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
                g[i] = act * u[i];
            }
            gmatvec(m->l[l].wd, g, y, GH, GF);
            for (int i = 0; i < GH; i++) h[t][i] += y[i];
        }
    }
    for (int t = 0; t < T; t++) {
        gnorm(h[t], m->norm, a, GH, mut);
        gmatvec(m->embed, a, logits + t * GV, GV, GH); /* tied lm_head: the unscaled embeddings */
    }
}

/* ------------------------------------------------------------ tests */

static const int32_t k_gids[GT] = {2, 5, 0, 6, 3, 3, 1, 4, 6, 0};

/* max |alloy - naive| over the logits of k_gids; *maxabs the largest |naive logit| */
static double gemma_gap(const struct gemma_tiny *m, const float *got, enum mutation mut, double *maxabs)
{
    double want[GT * GV], gap = 0;
    gemma_naive(m, k_gids, GT, want, mut);
    *maxabs = 0;
    for (int i = 0; i < GT * GV; i++) {
        gap = fabs(want[i] - got[i]) > gap ? fabs(want[i] - got[i]) : gap;
        *maxabs = fabs(want[i]) > *maxabs ? fabs(want[i]) : *maxabs;
    }
    return gap;
}

/* The logits of k_gids by alloy for the model at ref (a folder or a GGUF file); 0 on success. */
static int gemma_logits(const char *ref, float *out)
{
    struct alloy_llama *lm = NULL;
    struct alloy_err err = {0};
    if (alloy_llama_open(ref, &lm, &err)) {
        CHECK_MSG(0, "%s: open: %s", ref, err.msg);
        return -1;
    }
    CHECK_INT(alloy_llama_cfg(lm)->gemma, 1);
    struct alloy_llama_ws *ws = alloy_llama_ws_new(lm, GT, 1);
    CHECK(ws != NULL);
    if (ws) alloy_llama_logits(lm, ws, k_gids, 1, GT, out);
    alloy_llama_ws_free(ws);
    alloy_llama_close(lm);
    return ws ? 0 : -1;
}

TEST(eval_gemma_matches_naive)
{
    static struct gemma_tiny m;
    float got[GT * GV];
    g_seed = 99;
    gemma_init(&m);
    const char *dir = test_tmpdir();
    gemma_write(&m, dir);
    if (gemma_logits(dir, got)) return;
    double maxabs, gap = gemma_gap(&m, got, MUT_NONE, &maxabs);
    CHECK_MSG(gap < 2e-5 * (1 + maxabs), "max |logit - naive| = %g (max |logit| %g)", gap, maxabs);
    CHECK_MSG(maxabs > 0.1, "logits suspiciously small (%g)", maxabs);
    /* each Gemma difference matters on this model: a reference without it fails the same bound */
    static const enum mutation muts[3] = {MUT_NO_PLUS_ONE, MUT_SILU, MUT_NO_EMBED_SCALE};
    for (int i = 0; i < 3; i++) {
        double mabs, g = gemma_gap(&m, got, muts[i], &mabs);
        CHECK_MSG(g > 2e-5 * (1 + mabs) * 100, "mutation %d: gap %g does not fail", i, g);
    }
}

TEST(eval_gemma_gguf_same_logits)
{
    static struct gemma_tiny m;
    float a[GT * GV], b[GT * GV];
    char out[600], cmd[2048], *log = NULL;
    g_seed = 7;
    gemma_init(&m);
    const char *dir = test_tmpdir();
    gemma_write(&m, dir);
    snprintf(out, sizeof out, "%s/tokenizer.json", dir); /* GGUF needs a vocabulary: a Unigram one of GV pieces */
    CHECK_INT(test_write_text(out, "{\"version\": \"1.0\", \"added_tokens\": [], \"model\": {\"type\": \"Unigram\", "
                                   "\"unk_id\": 1, \"vocab\": [[\"<pad>\", 0.0], [\"<unk>\", 0.0], [\"<bos>\", 0.0], "
                                   "[\"<eos>\", 0.0], [\"\\u2581a\", -1.5], [\"b\", -2.5], [\"c\", -3.0]]}}"), 0);
    snprintf(out, sizeof out, "%s.gguf", dir);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q -j 2 2>&1", test_alloy_bin(), dir, out);
    int rc = test_run(cmd, &log);
    CHECK_MSG(rc == 0, "%s", log ? log : "");
    free(log);
    if (rc || gemma_logits(dir, a) || gemma_logits(out, b)) return;
    CHECK_MSG(memcmp(a, b, sizeof a) == 0, "GGUF logits differ from the folder's");
    double maxabs, gap = gemma_gap(&m, b, MUT_NONE, &maxabs);
    CHECK_MSG(gap < 2e-5 * (1 + maxabs), "GGUF: max |logit - naive| = %g", gap);
}

TEST(eval_gemma_config_errors)
{
    struct alloy_llama_config c;
    struct alloy_err err = {0};
    const char *ok = "{\"model_type\": \"gemma\", \"vocab_size\": 7, \"hidden_size\": 8, \"intermediate_size\": 6, "
                     "\"num_hidden_layers\": 1, \"num_attention_heads\": 2";
    char text[512];
    snprintf(text, sizeof text, "%s}", ok);
    CHECK_INT(alloy_llama_config_parse(text, "c.json", &c, &err), 0);
    CHECK_INT(c.gemma, 1);
    CHECK_INT(c.head_dim, 256); /* GemmaConfig's default, not hidden / heads */
    CHECK_INT(c.tie_word_embeddings, 1);
    snprintf(text, sizeof text, "%s, \"hidden_activation\": \"gelu\"}", ok);
    CHECK(alloy_llama_config_parse(text, "c.json", &c, &err) != 0);
    CHECK_MSG(strstr(err.msg, "c.json: hidden_activation: expected \"gelu_pytorch_tanh\", found \"gelu\""), "%s", err.msg);
    snprintf(text, sizeof text, "%s, \"hidden_act\": 3}", ok);
    CHECK(alloy_llama_config_parse(text, "c.json", &c, &err) != 0);
    CHECK_MSG(strstr(err.msg, "c.json: hidden_act: expected \"gelu_pytorch_tanh\", found another kind"), "%s", err.msg);
    CHECK(alloy_llama_config_parse("{\"model_type\": \"gemma2\"}", "c.json", &c, &err) != 0);
    CHECK_MSG(strstr(err.msg, "\"gemma2\" is not supported"), "%s", err.msg);
}
