/*
 * test_eval_forward.c — the Llama forward pass and the eval protocol against
 * a naive scalar float64 implementation written here from the formulas
 * (HF LlamaForCausalLM / Qwen2 / Mistral), never calling src/eval code for
 * the expected values.
 *
 * Each case writes a tiny random model (1-2 layers, hidden 8, vocab 6) as
 * F32 safetensors + config.json, loads it with alloy_llama_open and compares
 * logits; variants cover GQA, q/k/v(/o) and MLP biases, tied embeddings,
 * an explicit head_dim, rope_scaling linear and llama3 (all three frequency
 * bands), Mistral's sliding window and Qwen3's per-head q/k norms.
 */
#include "test.h"
#include "eval/eval.h"

#include <stdint.h>
#include <stdlib.h>

#define MAXT 32

struct tiny {
    const char *type;
    int V, H, F, L, nh, nkv, hd;
    int qkv_bias, o_bias, mlp_bias, tie, window;
    int qk_norm;         /* qwen3: q_norm / k_norm per head before RoPE */
    double theta, eps;
    int rope;            /* 0 default, 1 linear, 2 llama3 */
    double factor, lo, hi, orig;
    int bos;
    /* weights (row-major [out][in]) */
    double *embed, *lm, *norm;
    struct { double *an, *fn, *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo, *wg, *wu, *wd, *bg, *bu, *bd, *qn, *kn; } layer[2];
};

static uint64_t g_rng = 12345;
static int g_norm_after_rope; /* a mutation of the reference: Qwen3's q/k norms after RoPE */
static double rnd(double scale)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return ((double)(g_rng >> 11) * 0x1p-53 - 0.5) * 2 * scale;
}

/* Values are rounded to float32 so the file holds them exactly. */
static double *randv(size_t n, double center, double scale)
{
    double *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = (double)(float)(center + rnd(scale));
    return v;
}

static void tiny_init(struct tiny *m)
{
    int Q = m->nh * m->hd, KV = m->nkv * m->hd;
    m->embed = randv((size_t)m->V * m->H, 0, 1.0);
    m->lm = m->tie ? m->embed : randv((size_t)m->V * m->H, 0, 0.8);
    m->norm = randv((size_t)m->H, 1, 0.2);
    for (int l = 0; l < m->L; l++) {
        m->layer[l].an = randv((size_t)m->H, 1, 0.2);
        m->layer[l].fn = randv((size_t)m->H, 1, 0.2);
        m->layer[l].wq = randv((size_t)Q * m->H, 0, 0.7);
        m->layer[l].wk = randv((size_t)KV * m->H, 0, 0.7);
        m->layer[l].wv = randv((size_t)KV * m->H, 0, 0.7);
        m->layer[l].wo = randv((size_t)m->H * Q, 0, 0.5);
        m->layer[l].bq = m->qkv_bias ? randv((size_t)Q, 0, 0.3) : NULL;
        m->layer[l].bk = m->qkv_bias ? randv((size_t)KV, 0, 0.3) : NULL;
        m->layer[l].bv = m->qkv_bias ? randv((size_t)KV, 0, 0.3) : NULL;
        m->layer[l].bo = m->o_bias ? randv((size_t)m->H, 0, 0.3) : NULL;
        m->layer[l].wg = randv((size_t)m->F * m->H, 0, 0.6);
        m->layer[l].wu = randv((size_t)m->F * m->H, 0, 0.6);
        m->layer[l].wd = randv((size_t)m->H * m->F, 0, 0.5);
        m->layer[l].bg = m->mlp_bias ? randv((size_t)m->F, 0, 0.3) : NULL;
        m->layer[l].bu = m->mlp_bias ? randv((size_t)m->F, 0, 0.3) : NULL;
        m->layer[l].bd = m->mlp_bias ? randv((size_t)m->H, 0, 0.3) : NULL;
        m->layer[l].qn = m->qk_norm ? randv((size_t)m->hd, 1, 0.5) : NULL;
        m->layer[l].kn = m->qk_norm ? randv((size_t)m->hd, 1, 0.5) : NULL;
    }
}

static void tiny_free(struct tiny *m)
{
    free(m->embed);
    if (!m->tie) free(m->lm);
    free(m->norm);
    for (int l = 0; l < m->L; l++) {
        double **p = (double **)&m->layer[l];
        for (size_t k = 0; k < sizeof m->layer[l] / sizeof(double *); k++) free(p[k]);
    }
}

/* ------------------------------------------------------------ writing the model folder */

struct wt { char name[96]; int nd; long d0, d1; const double *v; };

static void write_model(const struct tiny *m, const char *dir, const char *skip_tensor)
{
    struct wt t[64];
    int n = 0, Q = m->nh * m->hd, KV = m->nkv * m->hd;
#define ADD(nm, a, b, vals) do { if (vals) { snprintf(t[n].name, sizeof t[n].name, "%s", nm); t[n].nd = (b) ? 2 : 1; t[n].d0 = (a); t[n].d1 = (b); t[n].v = (vals); n++; } } while (0)
    ADD("model.embed_tokens.weight", m->V, m->H, m->embed);
    for (int l = 0; l < m->L; l++) {
        char nm[96];
#define LADD(suffix, a, b, vals) do { snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix); ADD(nm, a, b, vals); } while (0)
        LADD("input_layernorm.weight", m->H, 0, m->layer[l].an);
        LADD("post_attention_layernorm.weight", m->H, 0, m->layer[l].fn);
        LADD("self_attn.q_proj.weight", Q, m->H, m->layer[l].wq);
        LADD("self_attn.k_proj.weight", KV, m->H, m->layer[l].wk);
        LADD("self_attn.v_proj.weight", KV, m->H, m->layer[l].wv);
        LADD("self_attn.o_proj.weight", m->H, Q, m->layer[l].wo);
        LADD("self_attn.q_proj.bias", Q, 0, m->layer[l].bq);
        LADD("self_attn.k_proj.bias", KV, 0, m->layer[l].bk);
        LADD("self_attn.v_proj.bias", KV, 0, m->layer[l].bv);
        LADD("self_attn.o_proj.bias", m->H, 0, m->layer[l].bo);
        LADD("self_attn.q_norm.weight", m->hd, 0, m->layer[l].qn);
        LADD("self_attn.k_norm.weight", m->hd, 0, m->layer[l].kn);
        LADD("mlp.gate_proj.weight", m->F, m->H, m->layer[l].wg);
        LADD("mlp.up_proj.weight", m->F, m->H, m->layer[l].wu);
        LADD("mlp.down_proj.weight", m->H, m->F, m->layer[l].wd);
        LADD("mlp.gate_proj.bias", m->F, 0, m->layer[l].bg);
        LADD("mlp.up_proj.bias", m->F, 0, m->layer[l].bu);
        LADD("mlp.down_proj.bias", m->H, 0, m->layer[l].bd);
    }
    ADD("model.norm.weight", m->H, 0, m->norm);
    if (!m->tie) ADD("lm_head.weight", m->V, m->H, m->lm);
    char hdr[16384];
    size_t k = 0, off = 0;
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "{");
    for (int i = 0; i < n; i++) {
        if (skip_tensor && !strcmp(t[i].name, skip_tensor)) continue;
        size_t cnt = (size_t)t[i].d0 * (size_t)(t[i].nd == 2 ? t[i].d1 : 1);
        if (t[i].nd == 2)
            k += (size_t)snprintf(hdr + k, sizeof hdr - k, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%ld,%ld],\"data_offsets\":[%zu,%zu]}",
                                  k > 1 ? "," : "", t[i].name, t[i].d0, t[i].d1, off, off + cnt * 4);
        else
            k += (size_t)snprintf(hdr + k, sizeof hdr - k, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%ld],\"data_offsets\":[%zu,%zu]}",
                                  k > 1 ? "," : "", t[i].name, t[i].d0, off, off + cnt * 4);
        off += cnt * 4;
    }
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "}");
    while ((8 + k) % 8) hdr[k++] = ' ';
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    uint64_t hl = k;
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, k, f);
    for (int i = 0; i < n; i++) {
        if (skip_tensor && !strcmp(t[i].name, skip_tensor)) continue;
        size_t cnt = (size_t)t[i].d0 * (size_t)(t[i].nd == 2 ? t[i].d1 : 1);
        for (size_t j = 0; j < cnt; j++) {
            float x = (float)t[i].v[j];
            fwrite(&x, 4, 1, f);
        }
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "w");
    fprintf(f, "{\"model_type\": \"%s\", \"vocab_size\": %d, \"hidden_size\": %d, \"intermediate_size\": %d,\n"
               " \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d,\n"
               " \"rms_norm_eps\": %g, \"rope_theta\": %g, \"max_position_embeddings\": 64, \"hidden_act\": \"silu\",\n"
               " \"tie_word_embeddings\": %s, \"bos_token_id\": %d",
            m->type, m->V, m->H, m->F, m->L, m->nh, m->nkv, m->hd, m->eps, m->theta, m->tie ? "true" : "false", m->bos);
    if (!strcmp(m->type, "llama") || !strcmp(m->type, "qwen3"))
        fprintf(f, ", \"attention_bias\": %s, \"mlp_bias\": %s", m->o_bias ? "true" : "false", m->mlp_bias ? "true" : "false");
    if (!strcmp(m->type, "mistral")) fprintf(f, ", \"sliding_window\": %d", m->window);
    if (m->rope == 1) fprintf(f, ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": %g}", m->factor);
    if (m->rope == 2)
        fprintf(f, ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %g, \"low_freq_factor\": %g, "
                   "\"high_freq_factor\": %g, \"original_max_position_embeddings\": %g}", m->factor, m->lo, m->hi, m->orig);
    fprintf(f, "}\n");
    fclose(f);
}

/* ------------------------------------------------------------ naive reference (float64) */

static void matvec(const double *W, const double *b, const double *x, double *y, int out, int in)
{
    for (int o = 0; o < out; o++) {
        double s = b ? b[o] : 0;
        for (int i = 0; i < in; i++) s += W[o * in + i] * x[i];
        y[o] = s;
    }
}

static void rms(const double *x, const double *w, double *y, int n, double eps)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i] * x[i];
    double r = 1 / sqrt(s / n + eps);
    for (int i = 0; i < n; i++) y[i] = w[i] * x[i] * r;
}

static double inv_freq(const struct tiny *m, int i)
{
    double f = 1.0 / pow(m->theta, 2.0 * i / m->hd);
    if (m->rope == 1) return f / m->factor;
    if (m->rope == 2) {
        double wavelen = 2 * M_PI / f, low_wl = m->orig / m->lo, high_wl = m->orig / m->hi;
        if (wavelen < high_wl) return f;
        if (wavelen > low_wl) return f / m->factor;
        double smooth = (m->orig / wavelen - m->lo) / (m->hi - m->lo);
        return (1 - smooth) * f / m->factor + smooth * f;
    }
    return f;
}

static void rope_head(const struct tiny *m, double *x, int pos)
{
    int half = m->hd / 2;
    for (int i = 0; i < half; i++) {
        double a = pos * inv_freq(m, i), c = cos(a), s = sin(a);
        double x1 = x[i], x2 = x[i + half];
        x[i] = x1 * c - x2 * s;
        x[i + half] = x2 * c + x1 * s;
    }
}

/* logits[T][V] for one sequence */
static void naive_logits(const struct tiny *m, const int *ids, int T, double *logits)
{
    int H = m->H, Q = m->nh * m->hd, KV = m->nkv * m->hd, hd = m->hd;
    static double h[MAXT][64], q[MAXT][64], k[MAXT][64], v[MAXT][64];
    double a[64], o[64], t1[64], g[64], u[64];
    for (int t = 0; t < T; t++)
        for (int i = 0; i < H; i++) h[t][i] = m->embed[ids[t] * H + i];
    for (int l = 0; l < m->L; l++) {
        for (int t = 0; t < T; t++) {
            rms(h[t], m->layer[l].an, a, H, m->eps);
            matvec(m->layer[l].wq, m->layer[l].bq, a, q[t], Q, H);
            matvec(m->layer[l].wk, m->layer[l].bk, a, k[t], KV, H);
            matvec(m->layer[l].wv, m->layer[l].bv, a, v[t], KV, H);
            for (int j = 0; j < m->nh + m->nkv; j++) { /* Qwen3: each head normed, then rotated */
                double *x = j < m->nh ? q[t] + j * hd : k[t] + (j - m->nh) * hd;
                const double *w = j < m->nh ? m->layer[l].qn : m->layer[l].kn;
                if (w && !g_norm_after_rope) rms(x, w, x, hd, m->eps);
                rope_head(m, x, t);
                if (w && g_norm_after_rope) rms(x, w, x, hd, m->eps);
            }
        }
        double nh[MAXT][64];
        for (int t = 0; t < T; t++) {
            for (int j = 0; j < m->nh; j++) {
                int kh = j / (m->nh / m->nkv);
                double sc[MAXT], mx = -1e300, sum = 0;
                for (int s = 0; s <= t; s++) {
                    sc[s] = -1e300;
                    if (m->window && t - s >= m->window) continue;
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += q[t][j * hd + i] * k[s][kh * hd + i];
                    sc[s] = d / sqrt((double)hd);
                    if (sc[s] > mx) mx = sc[s];
                }
                for (int s = 0; s <= t; s++) sum += sc[s] > -1e299 ? exp(sc[s] - mx) : 0;
                for (int i = 0; i < hd; i++) {
                    double acc = 0;
                    for (int s = 0; s <= t; s++)
                        if (sc[s] > -1e299) acc += exp(sc[s] - mx) / sum * v[s][kh * hd + i];
                    o[j * hd + i] = acc;
                }
            }
            matvec(m->layer[l].wo, m->layer[l].bo, o, t1, H, Q);
            for (int i = 0; i < H; i++) nh[t][i] = h[t][i] + t1[i];
        }
        for (int t = 0; t < T; t++) {
            rms(nh[t], m->layer[l].fn, a, H, m->eps);
            matvec(m->layer[l].wg, m->layer[l].bg, a, g, m->F, H);
            matvec(m->layer[l].wu, m->layer[l].bu, a, u, m->F, H);
            for (int i = 0; i < m->F; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            matvec(m->layer[l].wd, m->layer[l].bd, g, t1, H, m->F);
            for (int i = 0; i < H; i++) h[t][i] = nh[t][i] + t1[i];
        }
    }
    for (int t = 0; t < T; t++) {
        rms(h[t], m->norm, a, H, m->eps);
        matvec(m->lm, NULL, a, logits + t * m->V, m->V, H);
    }
}

/* ------------------------------------------------------------ comparisons */

static const int k_ids[2][12] = {{0, 3, 5, 1, 1, 4, 2, 0, 5, 3, 2, 4}, {5, 5, 2, 0, 1, 3, 4, 4, 1, 0, 2, 3}};

/* The largest |logit - naive logit| over two 12-token sequences run as one batch; *maxabs the largest
 * |naive logit|. */
static double logit_gap(const struct tiny *m, struct alloy_llama *lm, double *maxabs)
{
    const int T = 12;
    int32_t ids[2 * 12];
    for (int s = 0; s < 2; s++)
        for (int t = 0; t < T; t++) ids[s * T + t] = k_ids[s][t];
    float *got = malloc(sizeof(float) * 2 * T * (size_t)m->V);
    double want[12 * 16], maxd = 0;
    struct alloy_llama_ws *ws = alloy_llama_ws_new(lm, T, 2);
    alloy_llama_logits(lm, ws, ids, 2, T, got); /* two sequences in one batch */
    for (int s = 0; s < 2; s++) {
        naive_logits(m, k_ids[s], T, want);
        for (int i = 0; i < T * m->V; i++) {
            double d = fabs(want[i] - got[s * T * m->V + i]);
            if (d > maxd) maxd = d;
            if (fabs(want[i]) > *maxabs) *maxabs = fabs(want[i]);
        }
    }
    alloy_llama_ws_free(ws);
    free(got);
    return maxd;
}

static void check_model(struct tiny *m, const char *what)
{
    g_rng = 12345;
    tiny_init(m);
    const char *dir = test_tmpdir();
    write_model(m, dir, NULL);
    struct alloy_llama *lm = NULL;
    struct alloy_err err = {0};
    int rc = alloy_llama_open(dir, &lm, &err);
    CHECK_MSG(rc == 0, "%s: open: %s", what, err.msg);
    if (rc) { tiny_free(m); return; }
    double maxabs = 0, maxd = logit_gap(m, lm, &maxabs);
    CHECK_MSG(maxd < 2e-5 * (1 + maxabs), "%s: max |logit - naive| = %g (max |logit| %g)", what, maxd, maxabs);
    CHECK_MSG(maxabs > 0.1, "%s: logits suspiciously small (%g)", what, maxabs);

    /* eval protocol: windows of 6 with BOS 2, then without BOS, against the naive logits */
    int32_t text[13] = {1, 4, 0, 3, 5, 5, 2, 1, 0, 4, 3, 3, 1}; /* 13 tokens: 2 windows, 1 dropped */
    for (int with_bos = 1; with_bos >= 0; with_bos--) {
        struct alloy_eval_options o;
        struct alloy_eval_result r;
        alloy_eval_options_init(&o);
        o.ctx = 6;
        o.bos = with_bos ? 2 : -1;
        rc = alloy_eval_ids(lm, text, 13, "text", &o, &r, &err);
        CHECK_MSG(rc == 0, "%s: eval: %s", what, err.msg);
        double total = 0;
        int cnt = 0;
        for (int w = 0; w < 2; w++) {
            int in[6];
            double lg[6 * 16];
            const int32_t *c = text + 6 * w;
            for (int t = 0; t < 6; t++) in[t] = with_bos ? (t ? c[t - 1] : 2) : c[t];
            naive_logits(m, in, 6, lg);
            for (int t = with_bos ? 0 : 1; t < 6; t++) {
                const double *row = lg + (with_bos ? t : t - 1) * m->V;
                double mx = row[0], s = 0;
                for (int v = 1; v < m->V; v++) mx = row[v] > mx ? row[v] : mx;
                for (int v = 0; v < m->V; v++) s += exp(row[v] - mx);
                total += mx + log(s) - row[c[t]];
                cnt++;
            }
        }
        CHECK_INT(r.tokens, cnt);
        CHECK_INT(r.tokens, with_bos ? 12 : 10);
        CHECK_NEAR(r.nll, total / cnt, 2e-6);
        CHECK_NEAR(r.ppl, exp(total / cnt), 2e-5);
    }
    alloy_llama_close(lm);
    tiny_free(m);
}

static struct tiny base_tiny(void)
{
    return (struct tiny){.type = "llama", .V = 6, .H = 8, .F = 6, .L = 1, .nh = 2, .nkv = 2, .hd = 4,
                         .theta = 10000, .eps = 1e-5, .bos = 2};
}

TEST(eval_forward_llama_mha)
{
    struct tiny m = base_tiny();
    check_model(&m, "llama 2 heads");
}

TEST(eval_forward_llama_gqa_two_layers)
{
    struct tiny m = base_tiny();
    m.nh = 4; m.nkv = 2; m.hd = 2; m.L = 2; m.theta = 100;
    check_model(&m, "llama GQA 4/2");
}

TEST(eval_forward_qwen2_bias_tied)
{
    struct tiny m = base_tiny();
    m.type = "qwen2"; m.qkv_bias = 1; m.tie = 1; m.nkv = 1; m.eps = 1e-6; m.theta = 1e6;
    check_model(&m, "qwen2 q/k/v bias, tied, MQA");
}

TEST(eval_forward_llama_biases_headdim_linear_rope)
{
    struct tiny m = base_tiny();
    m.qkv_bias = m.o_bias = m.mlp_bias = 1;
    m.hd = 6; /* num_heads * head_dim = 12 != hidden_size 8 */
    m.rope = 1; m.factor = 2.5; m.theta = 50;
    check_model(&m, "llama attention_bias+mlp_bias, head_dim 6, linear rope");
}

TEST(eval_forward_llama3_rope)
{
    struct tiny m = base_tiny();
    /* head_dim 8, theta 10000: wavelengths 6.3, 63, 628, 6283 against
     * high/low wavelengths 64/4 = 16 and 64/1 = 64: one band each way, one smoothed */
    m.hd = 8; m.nh = 2; m.nkv = 1;
    m.rope = 2; m.factor = 8; m.lo = 1; m.hi = 4; m.orig = 64;
    check_model(&m, "llama3 rope_scaling");
}

TEST(eval_forward_mistral_sliding_window)
{
    struct tiny m = base_tiny();
    m.type = "mistral"; m.window = 3; m.L = 2; m.nkv = 1;
    check_model(&m, "mistral sliding_window 3");
}

/* Qwen3: no q/k/v biases, q_norm and k_norm per head before RoPE, head_dim 6 != hidden / heads. */
TEST(eval_forward_qwen3_qk_norm)
{
    struct tiny m = base_tiny();
    m.type = "qwen3"; m.qk_norm = 1; m.hd = 6; m.nh = 2; m.nkv = 1; m.L = 2; m.eps = 1e-6; m.theta = 1e6;
    check_model(&m, "qwen3 q/k norm, GQA, head_dim 6");
}

/* Mutations: the same Qwen3 folder against a reference without the q/k norms, and with them after RoPE
 * (rather than before), must not match. */
TEST(eval_forward_qwen3_mutations_fail)
{
    struct tiny m = base_tiny();
    m.type = "qwen3"; m.qk_norm = 1; m.hd = 6; m.nh = 2; m.nkv = 1; m.L = 2;
    g_rng = 12345;
    tiny_init(&m);
    const char *dir = test_tmpdir();
    write_model(&m, dir, NULL);
    struct alloy_llama *lm = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_llama_open(dir, &lm, &err) == 0, "%s", err.msg);
    double maxabs = 0;
    CHECK(lm && logit_gap(&m, lm, &maxabs) < 2e-5 * (1 + maxabs));
    double *qn[2] = {m.layer[0].qn, m.layer[1].qn}, *kn[2] = {m.layer[0].kn, m.layer[1].kn};
    for (int l = 0; l < 2; l++) m.layer[l].qn = m.layer[l].kn = NULL;
    CHECK_MSG(lm && logit_gap(&m, lm, &maxabs) > 1e-2, "the q/k norms change nothing");
    for (int l = 0; l < 2; l++) { m.layer[l].qn = qn[l]; m.layer[l].kn = kn[l]; }
    g_norm_after_rope = 1;
    CHECK_MSG(lm && logit_gap(&m, lm, &maxabs) > 1e-2, "q/k norms after RoPE match as well");
    g_norm_after_rope = 0;
    alloy_llama_close(lm);
    tiny_free(&m);
}

/* ------------------------------------------------------------ bad model folders */

static void expect_open_error(const char *dir, const char *needle, int status)
{
    struct alloy_llama *lm = NULL;
    struct alloy_err err = {0};
    int rc = alloy_llama_open(dir, &lm, &err);
    CHECK_INT(rc, status);
    CHECK_STR_CONTAINS(err.msg, needle);
    alloy_llama_close(lm);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

TEST(eval_model_errors)
{
    struct tiny m = base_tiny();
    g_rng = 1;
    tiny_init(&m);
    const char *dir = test_tmpdir();
    char buf[700];

    write_model(&m, dir, "model.layers.0.mlp.up_proj.weight");
    snprintf(buf, sizeof buf, "%s: model.layers.0.mlp.up_proj.weight: tensor not found (expected shape [6, 8])", dir);
    expect_open_error(dir, buf, ALLOY_ERR_FORMAT);

    write_model(&m, dir, "lm_head.weight");
    expect_open_error(dir, "lm_head.weight: tensor not found and tie_word_embeddings is false", ALLOY_ERR_FORMAT);

    /* shape disagreeing with config.json */
    m.F = 5;
    write_model(&m, dir, NULL);
    m.F = 6;
    write_text(dir, "config.json", "{\"model_type\":\"llama\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":6,"
                                   "\"num_hidden_layers\":1,\"num_attention_heads\":2}");
    expect_open_error(dir, "model.layers.0.mlp.gate_proj.weight: expected shape [6, 8] (from config.json), found [5, 8]",
                      ALLOY_ERR_SHAPE);

    /* a config asking for a huge model is checked against the tensors before anything is allocated */
    write_model(&m, dir, NULL);
    write_text(dir, "config.json", "{\"model_type\":\"llama\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":6,"
                                   "\"num_hidden_layers\":100000,\"num_attention_heads\":2}");
    expect_open_error(dir, "model.layers.1.input_layernorm.weight: tensor not found", ALLOY_ERR_FORMAT);
    write_text(dir, "config.json", "{\"model_type\":\"llama\",\"vocab_size\":6,\"hidden_size\":16000000,"
                                   "\"intermediate_size\":16000000,\"num_hidden_layers\":100000,\"num_attention_heads\":2}");
    expect_open_error(dir, "model.embed_tokens.weight: expected shape [6, 16000000] (from config.json), found [6, 8]",
                      ALLOY_ERR_SHAPE);

    write_text(dir, "config.json", "{\"model_type\": \"gpt2\"}");
    snprintf(buf, sizeof buf, "%s/config.json: model_type: \"gpt2\" is not supported (llama, mistral, "
             "mixtral, qwen2, qwen2_moe, deepseek, qwen3, qwen3_moe, gemma are)", dir);
    expect_open_error(dir, buf, ALLOY_ERR_UNSUPPORTED);

    write_text(dir, "config.json", "{\"model_type\": \"llama\", oops}");
    expect_open_error(dir, "config.json: not valid JSON", ALLOY_ERR_FORMAT);
    tiny_free(&m);
}

TEST(eval_config_errors)
{
    struct { const char *json, *needle; int status; } cases[] = {
        {"[1, 2]", "c.json: expected a JSON object, found an array", ALLOY_ERR_FORMAT},
        {"{\"hidden_size\": 8}", "c.json: model_type: expected \"llama\", \"mistral\" or \"qwen2\", found nothing", ALLOY_ERR_FORMAT},
        {"{\"model_type\": \"llama\", \"vocab_size\": 6}", "c.json: hidden_size: missing, expected an integer", ALLOY_ERR_FORMAT},
        {"{\"model_type\": \"llama\", \"vocab_size\": 6, \"hidden_size\": \"8\"}",
         "c.json: hidden_size: expected an integer in [1, 16777216], found \"8\"", ALLOY_ERR_FORMAT},
        {"{\"model_type\":\"llama\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":4,\"num_key_value_heads\":3}",
         "c.json: num_key_value_heads: expected a divisor of num_attention_heads (4), found 3", ALLOY_ERR_FORMAT},
        {"{\"model_type\":\"llama\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":2,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}",
         "c.json: rope_scaling.rope_type: \"yarn\" is not supported (default, linear, llama3 are)", ALLOY_ERR_UNSUPPORTED},
        {"{\"model_type\":\"llama\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":2,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}",
         "c.json: rope_scaling.low_freq_factor: missing, expected a positive number", ALLOY_ERR_FORMAT},
        {"{\"model_type\":\"llama\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":2,\"hidden_act\":\"gelu\"}",
         "c.json: hidden_act: \"gelu\" is not supported (silu is)", ALLOY_ERR_UNSUPPORTED},
        {"{\"model_type\":\"qwen2\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":2,\"use_sliding_window\":true}",
         "c.json: use_sliding_window: true is not supported for qwen2", ALLOY_ERR_UNSUPPORTED},
        {"{\"model_type\":\"llama\",\"vocab_size\":6,\"hidden_size\":9,\"intermediate_size\":4,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":2}",
         "c.json: head_dim: missing, expected an integer", ALLOY_ERR_FORMAT},
        {"{\"model_type\":\"qwen3\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":2,\"use_sliding_window\":true}",
         "c.json: use_sliding_window: true is not supported for qwen3", ALLOY_ERR_UNSUPPORTED},
        {"{\"model_type\":\"qwen3_moe\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":2,"
         "\"num_attention_heads\":2,\"mlp_only_layers\":[0, 2]}",
         "c.json: mlp_only_layers[1]: expected a layer index in [0, 2), found another value", ALLOY_ERR_FORMAT},
        {"{\"model_type\":\"qwen3_moe\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":2,"
         "\"num_attention_heads\":2,\"mlp_only_layers\":{}}",
         "c.json: mlp_only_layers: expected an array of at most 64 layer indices, found another kind", ALLOY_ERR_UNSUPPORTED},
        {"{\"model_type\":\"qwen3_moe\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":2,"
         "\"num_attention_heads\":2,\"num_experts\":4,\"num_experts_per_tok\":5}",
         "c.json: num_experts_per_tok: expected an integer in [1, 4], found 5", ALLOY_ERR_FORMAT},
        {"{\"model_type\":\"qwen3_moe\",\"vocab_size\":6,\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":2,"
         "\"num_attention_heads\":2,\"decoder_sparse_step\":0}",
         "c.json: decoder_sparse_step: expected an integer in [1, 100000], found 0", ALLOY_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct alloy_llama_config c;
        struct alloy_err err = {0};
        int rc = alloy_llama_config_parse(cases[i].json, "c.json", &c, &err);
        CHECK_MSG(rc == cases[i].status, "case %zu: status %d, expected %d (%s)", i, rc, cases[i].status, err.msg);
        CHECK_STR_CONTAINS(err.msg, cases[i].needle);
    }
    /* defaults */
    struct alloy_llama_config c;
    struct alloy_err err = {0};
    CHECK_INT(alloy_llama_config_parse("{\"model_type\":\"mistral\",\"vocab_size\":6,\"hidden_size\":8,"
                                       "\"intermediate_size\":4,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
                                       "\"bos_token_id\":null,\"rope_scaling\":null,\"sliding_window\":null}",
                                       "c.json", &c, &err), 0);
    CHECK_INT(c.num_kv_heads, 2);
    CHECK_INT(c.head_dim, 4);
    CHECK_INT(c.bos_token_id, -1);
    CHECK_INT(c.sliding_window, 0);
    CHECK_NEAR(c.rope_theta, 10000, 0);
    CHECK_NEAR(c.rms_norm_eps, 1e-6, 0);
    CHECK_INT(c.tie_word_embeddings, 0);
}

/* A model whose activations are NaN is reported, not hidden: nan in the table, null in JSON. */
TEST(eval_cli_nan_model)
{
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "%s eval --help", test_alloy_bin());
    if (test_run(cmd, NULL) != 0) return; /* the CLI is not wired into this binary */
    struct tiny m = base_tiny();
    g_rng = 7;
    tiny_init(&m);
    m.layer[0].wq[3] = NAN;
    const char *dir = test_tmpdir();
    write_model(&m, dir, NULL);
    char toks[700];
    snprintf(toks, sizeof toks, "%s/ids.txt", dir);
    FILE *f = fopen(toks, "w");
    fputs("1 2 3 4 5 0 1 2", f);
    fclose(f);
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "%s eval %s --tokens %s --ctx 4 --json --quiet", test_alloy_bin(), dir, toks);
    CHECK_INT(test_run(cmd, &out), 0);
    CHECK_STR_CONTAINS(out, "\"nll\": null");
    CHECK_STR_CONTAINS(out, "\"tokens\": 8");
    free(out);
    snprintf(cmd, sizeof cmd, "%s eval %s --tokens %s --ctx 4 --quiet", test_alloy_bin(), dir, toks);
    CHECK_INT(test_run(cmd, &out), 0);
    CHECK_STR_CONTAINS(out, "nan");
    free(out);
    tiny_free(&m);
}
