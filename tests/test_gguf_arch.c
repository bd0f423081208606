/*
 * test_gguf_arch.c — GGUF architectures beyond llama/qwen: gemma, gemma2,
 * gemma3, phi3 written and read back, and Llama 3.1's rope_freqs.
 *
 * DESIGN
 *   Each case builds a tiny HF folder here (F32 weights of known values,
 *   rows of 256 so every quantizer applies, the architecture's config.json
 *   keys, the bundled tiny-llama tokenizer), converts it with the CLI and
 *   checks the file against gguf.md §1 as this test restates it in its own
 *   tables: every GGUF name, shape, type and stored value (Gemma's norms
 *   + 1, computed here, in float16 for an F16 tensor; Gemma3's embedding
 *   cut to the token count), no tensor more (llama.cpp refuses extras: no
 *   output.weight for gemma/gemma2), and each metadata key's value. The
 *   file is then converted back to an HF folder and compared with the
 *   original (exact: the norm values are multiples of 2^-12, so + 1 - 1 is
 *   exact in float32) and its config.json with the architecture's keys.
 *   Llama 3.1: rope_freqs.weight against Meta's rule evaluated here in
 *   double, the rebuilt rope_scaling, and alloy eval of the HF folder equal
 *   to eval of its GGUF (and different without the scaling).
 */
#include "test.h"

#include "alloy.h"
#include "formats/gguf.h"
#include "formats/tensor_file.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>

enum { H = 256, NH = 4, NKV = 2, HD = 64, FF = 512, NL = 2, V = 260 };
enum arch { A_GEMMA, A_GEMMA2, A_GEMMA3, A_PHI3 };

static const struct arch_case {
    const char *arch, *hf_class, *model_type, *config; /* config: keys beyond the common ones */
    int rows;                                         /* embedding rows in the HF folder */
} g_cases[] = {
    {"gemma", "GemmaForCausalLM", "gemma", "\"head_dim\": 64, \"hidden_activation\": \"gelu_pytorch_tanh\"", V},
    {"gemma2", "Gemma2ForCausalLM", "gemma2", "\"head_dim\": 64, \"attn_logit_softcapping\": 50.0, "
     "\"final_logit_softcapping\": 30.0, \"sliding_window\": 4096, \"query_pre_attn_scalar\": 64", V},
    {"gemma3", "Gemma3ForCausalLM", "gemma3_text", "\"head_dim\": 64, \"sliding_window\": 512, "
     "\"final_logit_softcapping\": null, \"attn_logit_softcapping\": null", 300},
    {"phi3", "Phi3ForCausalLM", "phi3", "\"original_max_position_embeddings\": 4096, \"sliding_window\": 2047, "
     "\"partial_rotary_factor\": 0.75, \"rope_theta\": 10000.0, \"rope_scaling\": {\"type\": \"longrope\", "
     "\"long_factor\": [LONG], \"short_factor\": [SHORT]}", V},
};

/* Long-rope factors: 24 values (phi3's rotary dimension 0.75 * 256 / 4 = 48, halved). */
static double long_factor(int i) { return 1.0 + 0.25 * i; }
static double short_factor(int i) { return 1.0 + 0.015625 * i; }

/* ------------------------------------------------------------ the HF folder */

struct hf_tensor {
    char hf[96], gguf[64]; /* gguf "": not in the file */
    int ndim;
    long long shape[2];
    int f16;               /* stored as F16 in the HF folder */
    int norm;              /* a norm weight (Gemma: + 1 in GGUF) */
    float *v;
};

struct model {
    enum arch a;
    struct hf_tensor t[64];
    int n;
};

/* Weight values: multiples of 2^-12 in [-0.25, 0.25), deterministic per tensor. */
static float value(int seed, long long i)
{
    uint32_t x = (uint32_t)seed * 2654435761u ^ (uint32_t)i * 2246822519u;
    x ^= x >> 15;
    x *= 2654435761u;
    x ^= x >> 13;
    return (float)((int)(x % 2048) - 1024) / 4096.0f;
}

static void add(struct model *m, const char *hf, const char *gguf, long long r, long long c, int norm)
{
    struct hf_tensor *t = &m->t[m->n];
    snprintf(t->hf, sizeof t->hf, "%s", hf);
    snprintf(t->gguf, sizeof t->gguf, "%s", gguf);
    t->ndim = c ? 2 : 1;
    t->shape[0] = r;
    t->shape[1] = c;
    t->norm = norm;
    long long n = c ? r * c : r;
    t->v = malloc((size_t)n * sizeof *t->v);
    for (long long i = 0; t->v && i < n; i++) t->v[i] = value(m->n + 1, i);
    m->n++;
}

static void layer(struct model *m, int l)
{
    char hf[96], gg[64];
    const int sandwich = m->a == A_GEMMA2 || m->a == A_GEMMA3;
#define L(hfs, ggs, r, c, norm)                                                \
    do {                                                                       \
        snprintf(hf, sizeof hf, "model.layers.%d.%s.weight", l, hfs);          \
        snprintf(gg, sizeof gg, "blk.%d.%s.weight", l, ggs);                   \
        add(m, hf, gg, r, c, norm);                                            \
    } while (0)
    L("input_layernorm", "attn_norm", H, 0, 1);
    if (m->a == A_PHI3) {
        L("self_attn.qkv_proj", "attn_qkv", (NH + 2 * NKV) * HD, H, 0);
        L("mlp.gate_up_proj", "ffn_up", 2 * FF, H, 0);
    } else {
        L("self_attn.q_proj", "attn_q", NH * HD, H, 0);
        L("self_attn.k_proj", "attn_k", NKV * HD, H, 0);
        L("self_attn.v_proj", "attn_v", NKV * HD, H, 0);
        L("mlp.gate_proj", "ffn_gate", FF, H, 0);
        L("mlp.up_proj", "ffn_up", FF, H, 0);
    }
    L("self_attn.o_proj", "attn_output", H, NH * HD, 0);
    L("mlp.down_proj", "ffn_down", H, FF, 0);
    L("post_attention_layernorm", sandwich ? "post_attention_norm" : "ffn_norm", H, 0, 1);
    if (sandwich) {
        L("pre_feedforward_layernorm", "ffn_norm", H, 0, 1);
        L("post_feedforward_layernorm", "post_ffw_norm", H, 0, 1);
    }
    if (m->a == A_GEMMA3) {
        L("self_attn.q_norm", "attn_q_norm", HD, 0, 1);
        L("self_attn.k_norm", "attn_k_norm", HD, 0, 1);
    }
#undef L
}

/* The tensors of case a and what gguf.md §1.2 makes of them. */
static void build(struct model *m, enum arch a)
{
    memset(m, 0, sizeof *m);
    m->a = a;
    add(m, "model.embed_tokens.weight", "token_embd.weight", g_cases[a].rows, H, 0);
    add(m, "model.norm.weight", "output_norm.weight", H, 0, 1);
    m->t[1].f16 = 1; /* Gemma adds 1 to an F16 tensor in float16 */
    /* gemma and gemma2 drop lm_head (always tied there); phi3 keeps an untied one; gemma3 here is tied */
    if (a != A_GEMMA3) add(m, "lm_head.weight", a == A_PHI3 ? "output.weight" : "", V, H, 0);
    for (int l = 0; l < NL; l++) layer(m, l);
}

static void free_model(struct model *m)
{
    for (int i = 0; i < m->n; i++) free(m->t[i].v);
}

static char *config_text(enum arch a)
{
    char lf[1000] = "", sf[1000] = "", cfg[4096];
    for (int i = 0; i < 24; i++) {
        snprintf(lf + strlen(lf), sizeof lf - strlen(lf), "%s%.17g", i ? ", " : "", long_factor(i));
        snprintf(sf + strlen(sf), sizeof sf - strlen(sf), "%s%.17g", i ? ", " : "", short_factor(i));
    }
    snprintf(cfg, sizeof cfg, "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"vocab_size\": %d, "
             "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
             "\"num_key_value_heads\": %d, \"max_position_embeddings\": %d, \"rms_norm_eps\": 1e-06, "
             "\"bos_token_id\": 256, \"eos_token_id\": 257, \"torch_dtype\": \"float32\", %s}",
             g_cases[a].hf_class, g_cases[a].model_type, g_cases[a].rows, H, FF, NL, NH, NKV,
             a == A_PHI3 ? 131072 : 8192, g_cases[a].config);
    char *text = strdup(cfg), *at;
    if (text && (at = strstr(text, "[LONG]"))) { /* splice the factor lists in */
        char *full = malloc(strlen(text) + 2 * sizeof lf);
        *at = '\0';
        char *rest = strstr(at + 1, "[SHORT]");
        *rest = '\0';
        sprintf(full, "%s[%s]%s[%s]%s", text, lf, at + 6, sf, rest + 7);
        free(text);
        text = full;
    }
    return text;
}

/* dir[n] = <tmp>/<arch>: the case's HF folder. */
static void write_folder(const struct model *m, char *dir, size_t n)
{
    struct test_tensor tt[64];
    uint16_t *half = NULL;
    snprintf(dir, n, "%s/%s", test_tmpdir(), g_cases[m->a].arch);
    for (int i = 0; i < m->n; i++) {
        const struct hf_tensor *t = &m->t[i];
        tt[i] = (struct test_tensor){t->hf, "F32", t->ndim, {t->shape[0], t->shape[1]}, t->v};
        if (t->f16) {
            half = malloc((size_t)t->shape[0] * sizeof *half);
            for (long long k = 0; half && k < t->shape[0]; k++) half[k] = alloy_f32_to_f16(t->v[k]);
            tt[i].dtype = "F16";
            tt[i].data = half;
        }
    }
    char *cfg = config_text(m->a), cmd[1400];
    CHECK_INT(test_write_model(dir, tt, m->n, cfg), 0);
    free(cfg);
    free(half);
    snprintf(cmd, sizeof cmd, "cp tests/data/tiny-llama/base/tokenizer.json tests/data/tiny-llama/base/tokenizer_config.json "
             "%s/", dir);
    CHECK_INT(test_run(cmd, NULL), 0);
}

/* ------------------------------------------------------------ checks of the GGUF */

/* f16 rounding (nearest, ties to even) of y in [0.5, 2): the grid is 2^-11 below 1, 2^-10 above. */
static double f16_round(double y)
{
    double q = y < 1 ? 2048 : 1024;
    return nearbyint(y * q) / q;
}

/* What the converter stores for value x of tensor t: Gemma's norms + 1 (in float16 for an F16 tensor). */
static float stored_value(const struct model *m, const struct hf_tensor *t, float x)
{
    if (!t->norm || m->a == A_PHI3) return x;
    return t->f16 ? (float)f16_round(1.0 + x) : x + 1.0f;
}

static void check_tensor(const struct model *m, struct alloy_gguf *g, const struct hf_tensor *t, long long rows,
                         const char *path)
{
    const struct alloy_tensor *f = alloy_tensor_file_find(alloy_gguf_base(g), t->hf);
    CHECK_MSG(f != NULL, "%s: %s missing", path, t->gguf);
    if (!f) return;
    CHECK_MSG(strcmp(alloy_gguf_stored_name(g, f), t->gguf) == 0, "%s: %s stored as %s", path, t->hf,
              alloy_gguf_stored_name(g, f));
    CHECK_INT(f->ndim, t->ndim);
    CHECK_INT(f->shape[0], rows);
    if (t->ndim == 2) CHECK_INT(f->shape[1], t->shape[1]);
    CHECK_INT(f->dtype, ALLOY_DTYPE_F32);
    float *raw = malloc(f->nbytes);
    struct alloy_err err = {0};
    CHECK_MSG(raw && alloy_tensor_pread(f, 0, raw, f->nbytes, &err) == ALLOY_OK, "%s", err.msg);
    long long bad = -1;
    for (uint64_t i = 0; raw && i < f->numel && bad < 0; i++)
        if (raw[i] != stored_value(m, t, t->v[i])) bad = (long long)i;
    CHECK_MSG(bad < 0, "%s: %s[%lld]: stored %.9g, expected %.9g", path, t->gguf, bad, raw ? raw[bad] : 0.0,
              stored_value(m, t, t->v[bad < 0 ? 0 : bad]));
    free(raw);
}

static void check_u32(struct alloy_gguf *g, const char *arch, const char *suffix, int64_t want)
{
    char key[128];
    int64_t v = -1;
    struct alloy_err err = {0};
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    CHECK_MSG(alloy_gguf_int(g, key, &v, &err) == 1 && v == want, "%s: %lld, expected %lld", key, (long long)v,
              (long long)want);
}

static void check_f32(struct alloy_gguf *g, const char *arch, const char *suffix, double want)
{
    char key[128];
    double v = NAN;
    struct alloy_err err = {0};
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    CHECK_MSG(alloy_gguf_float(g, key, &v, &err) == 1 && v == (double)(float)want, "%s: %g, expected %g", key, v, want);
}

static int has_key(struct alloy_gguf *g, const char *arch, const char *suffix)
{
    char key[128];
    uint32_t t, e;
    uint64_t n;
    const uint8_t *p;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return alloy_gguf_kv(g, key, &t, &e, &n, &p);
}

/* §1.7's keys of each case. */
static void check_keys(struct alloy_gguf *g, enum arch a)
{
    const char *s, *arch = g_cases[a].arch;
    uint64_t len = 0;
    struct alloy_err err = {0};
    CHECK(alloy_gguf_str(g, "general.architecture", &s, &len, &err) == 1 && len == strlen(arch) &&
          memcmp(s, arch, len) == 0);
    check_u32(g, arch, "block_count", NL);
    check_u32(g, arch, "context_length", a == A_PHI3 ? 131072 : 8192);
    check_u32(g, arch, "embedding_length", H);
    check_u32(g, arch, "feed_forward_length", FF);
    check_u32(g, arch, "attention.head_count", NH);
    check_u32(g, arch, "attention.head_count_kv", NKV);
    check_f32(g, arch, "attention.layer_norm_rms_epsilon", 1e-6);
    if (a != A_PHI3) check_u32(g, arch, "attention.key_length", HD), check_u32(g, arch, "attention.value_length", HD);
    if (a == A_GEMMA2) {
        check_f32(g, arch, "attn_logit_softcapping", 50.0);
        check_f32(g, arch, "final_logit_softcapping", 30.0);
        check_u32(g, arch, "attention.sliding_window", 4096);
    }
    if (a == A_GEMMA3) {
        check_f32(g, arch, "rope.freq_base", 1e6); /* Gemma3Model's default when config.json has none */
        check_u32(g, arch, "attention.sliding_window", 512);
        CHECK(!has_key(g, arch, "final_logit_softcapping") && !has_key(g, arch, "attn_logit_softcapping"));
    }
    if (a == A_PHI3) {
        check_u32(g, arch, "rope.dimension_count", 48); /* int(0.75 * 256) / 4 */
        check_u32(g, arch, "rope.scaling.original_context_length", 4096);
        check_u32(g, arch, "attention.sliding_window", 2047);
        check_f32(g, arch, "rope.scaling.attn_factor", sqrt(1 + log(131072.0 / 4096) / log(4096.0)));
        check_f32(g, arch, "rope.freq_base", 10000.0);
    }
}

/* Phi-3's generated factor tensors: F32 [24], config.json's lists. */
static void check_rope_factors(struct alloy_gguf *g)
{
    static const char *const names[] = {"rope_factors_long.weight", "rope_factors_short.weight"};
    for (int k = 0; k < 2; k++) {
        const struct alloy_tensor *t = alloy_gguf_derived(g, names[k]);
        CHECK_MSG(t && t->ndim == 1 && t->shape[0] == 24 && t->dtype == ALLOY_DTYPE_F32, "%s", names[k]);
        float v[24];
        struct alloy_err err = {0};
        CHECK(t && alloy_tensor_pread(t, 0, v, sizeof v, &err) == ALLOY_OK);
        for (int i = 0; t && i < 24; i++) CHECK(v[i] == (float)(k ? short_factor(i) : long_factor(i)));
    }
}

/* The tensor count of the file's header (everything llama.cpp will count, generated tensors included). */
static uint64_t header_tensors(const char *path)
{
    uint8_t h[16] = {0};
    FILE *f = fopen(path, "rb");
    if (f) {
        if (fread(h, 1, sizeof h, f) != sizeof h) memset(h, 0, sizeof h);
        fclose(f);
    }
    uint64_t n = 0;
    memcpy(&n, h + 8, sizeof n);
    return n;
}

static long long stored_rows(const struct model *m, const struct hf_tensor *t)
{
    /* Gemma3: the embedding cut to the tokenizer's 260 vocabulary entries + 4 added tokens */
    return m->a == A_GEMMA3 && strcmp(t->gguf, "token_embd.weight") == 0 ? V + 4 : t->shape[0];
}

static void check_gguf(const struct model *m, const char *path)
{
    struct alloy_gguf *g = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_gguf_open(path, &g, &err) == ALLOY_OK, "%s", err.msg);
    if (!g) return;
    uint64_t want = m->a == A_PHI3 ? 2 : 0; /* generated factor tensors */
    for (int i = 0; i < m->n; i++)
        if (m->t[i].gguf[0]) {
            check_tensor(m, g, &m->t[i], stored_rows(m, &m->t[i]), path);
            want++;
        }
    CHECK_INT(header_tensors(path), want);
    CHECK_MSG(m->a != A_GEMMA && m->a != A_GEMMA2 ? 1 : !alloy_tensor_file_find(alloy_gguf_base(g), "lm_head.weight"),
              "%s: output.weight written for %s", path, g_cases[m->a].arch);
    check_keys(g, m->a);
    if (m->a == A_PHI3) check_rope_factors(g);
    alloy_tensor_file_close(alloy_gguf_base(g));
}

/* ------------------------------------------------------------ back to Hugging Face */

static void check_config(enum arch a, const char *dir)
{
    char path[700];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t je;
    json_t *c = json_load_file(path, 0, &je);
    CHECK_MSG(c != NULL, "%s: %s", path, je.text);
    if (!c) return;
    const char *cls = json_string_value(json_array_get(json_object_get(c, "architectures"), 0));
    CHECK_MSG(cls && strcmp(cls, g_cases[a].hf_class) == 0, "%s: architectures %s", path, cls ? cls : "none");
    CHECK_STR_CONTAINS(json_string_value(json_object_get(c, "model_type")), g_cases[a].model_type);
    CHECK_INT(json_integer_value(json_object_get(c, "hidden_size")), H);
    CHECK_INT(json_integer_value(json_object_get(c, "num_key_value_heads")), NKV);
    CHECK_INT(json_integer_value(json_object_get(c, "head_dim")), HD);
    CHECK_INT(json_is_true(json_object_get(c, "tie_word_embeddings")), a != A_PHI3);
    CHECK_INT(json_integer_value(json_object_get(c, "vocab_size")), a == A_GEMMA3 ? V + 4 : V);
    if (a == A_GEMMA2) {
        CHECK(json_number_value(json_object_get(c, "attn_logit_softcapping")) == 50.0);
        CHECK(json_number_value(json_object_get(c, "final_logit_softcapping")) == 30.0);
        CHECK_INT(json_integer_value(json_object_get(c, "sliding_window")), 4096);
    }
    if (a == A_GEMMA3) CHECK_INT(json_integer_value(json_object_get(c, "sliding_window")), 512);
    if (a == A_PHI3) {
        json_t *rs = json_object_get(c, "rope_scaling");
        CHECK_STR_CONTAINS(json_string_value(json_object_get(rs, "type")), "longrope");
        for (int i = 0; i < 24; i++) {
            CHECK(json_number_value(json_array_get(json_object_get(rs, "long_factor"), (size_t)i)) == long_factor(i));
            CHECK(json_number_value(json_array_get(json_object_get(rs, "short_factor"), (size_t)i)) == short_factor(i));
        }
        CHECK_INT(json_integer_value(json_object_get(c, "original_max_position_embeddings")), 4096);
        CHECK_INT(json_integer_value(json_object_get(c, "sliding_window")), 2047);
        CHECK(json_number_value(json_object_get(c, "partial_rotary_factor")) == 0.75);
    }
    json_decref(c);
}

/* The HF folder alloy writes from the GGUF holds the original tensors (Gemma's +1 taken off again), and no other
 * tensor when skip < 0; else every tensor but m->t[skip]. */
static void check_back(const struct model *m, const char *dir, int skip)
{
    char path[700];
    struct alloy_tensor_file *f = NULL;
    struct alloy_err err = {0};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_MSG(alloy_tensor_file_open(path, &f, &err) == ALLOY_OK, "%s", err.msg);
    if (!f) return;
    int want = 0;
    for (int i = 0; i < m->n; i++) {
        const struct hf_tensor *t = &m->t[i];
        if (!t->gguf[0] || i == skip) continue;
        want++;
        const struct alloy_tensor *x = alloy_tensor_file_find(f, t->hf);
        CHECK_MSG(x && x->shape[0] == stored_rows(m, t), "%s: %s", path, t->hf);
        if (!x) continue;
        float *v = malloc(x->numel * sizeof *v);
        CHECK(v && alloy_tensor_read_f32(x, 0, x->numel, v, &err) == ALLOY_OK);
        long long bad = -1;
        for (uint64_t k = 0; v && k < x->numel && bad < 0; k++) {
            float s = stored_value(m, t, t->v[k]), orig = s == t->v[k] ? s : s - 1.0f;
            if (v[k] != orig) bad = (long long)k;
        }
        CHECK_MSG(bad < 0, "%s: %s[%lld] differs from the original", path, t->hf, bad);
        free(v);
    }
    if (skip < 0) CHECK_INT(alloy_tensor_file_count(f), (size_t)want);
    alloy_tensor_file_close(f);
}

static void run_case(enum arch a)
{
    struct model m;
    char dir[512], out[600], back[600], cmd[2048], *log = NULL;
    build(&m, a);
    write_folder(&m, dir, sizeof dir);
    snprintf(out, sizeof out, "%s.gguf", dir);
    snprintf(back, sizeof back, "%s-back", dir);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q -j 2 2>&1", test_alloy_bin(), dir, out);
    CHECK_MSG(test_run(cmd, &log) == 0, "%s", log ? log : "");
    free(log);
    check_gguf(&m, out);
    snprintf(cmd, sizeof cmd, "%s convert %s %s -q -j 2 2>&1", test_alloy_bin(), out, back);
    log = NULL;
    CHECK_MSG(test_run(cmd, &log) == 0, "%s", log ? log : "");
    free(log);
    check_config(a, back);
    check_back(&m, back, -1);
    free_model(&m);
}

TEST(gguf_arch_gemma_round_trip) { run_case(A_GEMMA); }
TEST(gguf_arch_gemma2_round_trip) { run_case(A_GEMMA2); }
TEST(gguf_arch_gemma3_round_trip) { run_case(A_GEMMA3); }
TEST(gguf_arch_phi3_round_trip) { run_case(A_PHI3); }

/* ------------------------------------------------------------ quantized */

/* The GGUF type of HF tensor hf in the file at path. */
static enum alloy_dtype type_of(struct alloy_gguf *g, const char *hf)
{
    const struct alloy_tensor *t = alloy_tensor_file_find(alloy_gguf_base(g), hf);
    return t ? t->dtype : ALLOY_DTYPE_COUNT;
}

/* llama-quantize's q4_k_m mixture (gguf.md §3.6-§3.7) on the new names: Phi-3's fused attn_qkv gets its own rule
 * (Q5_K), the fused ffn_up the default; gemma has no output.weight, so token_embd takes the output rule (Q6_K);
 * with 2 layers use_more_bits picks layer 1 of attn_v and ffn_down. */
TEST(gguf_arch_quant_mixture_on_new_names)
{
    static const struct { enum arch a; const char *hf; enum alloy_dtype want; } rules[] = {
        {A_PHI3, "model.layers.0.self_attn.qkv_proj.weight", ALLOY_DTYPE_Q5_K},
        {A_PHI3, "model.layers.1.self_attn.qkv_proj.weight", ALLOY_DTYPE_Q5_K},
        {A_PHI3, "model.layers.0.mlp.gate_up_proj.weight", ALLOY_DTYPE_Q4_K},
        {A_PHI3, "model.layers.0.mlp.down_proj.weight", ALLOY_DTYPE_Q4_K},
        {A_PHI3, "model.layers.1.mlp.down_proj.weight", ALLOY_DTYPE_Q6_K},
        {A_PHI3, "lm_head.weight", ALLOY_DTYPE_Q6_K},
        {A_PHI3, "model.embed_tokens.weight", ALLOY_DTYPE_Q4_K},
        {A_PHI3, "model.norm.weight", ALLOY_DTYPE_F32},
        {A_GEMMA, "model.embed_tokens.weight", ALLOY_DTYPE_Q6_K},
        {A_GEMMA, "model.layers.0.self_attn.v_proj.weight", ALLOY_DTYPE_Q4_K},
        {A_GEMMA, "model.layers.1.self_attn.v_proj.weight", ALLOY_DTYPE_Q6_K},
        {A_GEMMA, "model.layers.1.self_attn.q_proj.weight", ALLOY_DTYPE_Q4_K},
        {A_GEMMA, "model.layers.1.input_layernorm.weight", ALLOY_DTYPE_F32},
    };
    const enum arch archs[] = {A_PHI3, A_GEMMA};
    for (size_t k = 0; k < 2; k++) {
        struct model m;
        char dir[512], out[600], cmd[2048], *log = NULL;
        build(&m, archs[k]);
        write_folder(&m, dir, sizeof dir);
        snprintf(out, sizeof out, "%s-q4km.gguf", dir);
        snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype q4_k_m -q -j 2 2>&1", test_alloy_bin(), dir, out);
        CHECK_MSG(test_run(cmd, &log) == 0, "%s", log ? log : "");
        free(log);
        struct alloy_gguf *g = NULL;
        struct alloy_err err = {0};
        CHECK_MSG(alloy_gguf_open(out, &g, &err) == ALLOY_OK, "%s", err.msg);
        for (size_t i = 0; g && i < sizeof rules / sizeof rules[0]; i++)
            if (rules[i].a == archs[k])
                CHECK_MSG(type_of(g, rules[i].hf) == rules[i].want, "%s: %s is %s, expected %s", out, rules[i].hf,
                          alloy_dtype_traits(type_of(g, rules[i].hf))->name, alloy_dtype_traits(rules[i].want)->name);
        if (g) alloy_tensor_file_close(alloy_gguf_base(g));
        free_model(&m);
    }
}

/* ------------------------------------------------------------ Llama 3.1 */

/* dir[n] = <tmp>/name: tiny-llama/base-f32 with a llama3 rope_scaling of low_freq_factor lo. */
static void llama31_folder(const char *name, double lo, char *dir, size_t n)
{
    char cmd[1400], path[600];
    snprintf(dir, n, "%s/%s", test_tmpdir(), name);
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r tests/data/tiny-llama/base-f32 %s", dir, dir);
    CHECK_INT(test_run(cmd, NULL), 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *c = json_load_file(path, 0, NULL);
    CHECK(c != NULL);
    json_object_set_new(c, "rope_scaling", json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor", 8.0,
                                                     "low_freq_factor", lo, "high_freq_factor", 4.0,
                                                     "original_max_position_embeddings", 8192));
    CHECK_INT(json_dump_file(c, path, JSON_INDENT(2)), 0);
    json_decref(c);
}

/* Meta's rule in double (gguf.md §1.2), for the tiny model: theta 10000, head_dim 32. */
static double meta_factor(int i, double factor, double lo, double hi, double old)
{
    double f = pow(10000.0, -2.0 * i / 32.0), wavelen = 2 * M_PI / f;
    if (wavelen < old / hi) return 1;
    if (wavelen > old / lo) return factor;
    double s = (old / wavelen - lo) / (hi - lo);
    return 1 / ((1 - s) / factor + s);
}

static double eval_nll(const char *model, const char *text)
{
    char cmd[1400], *log = NULL;
    snprintf(cmd, sizeof cmd, "%s eval %s --ctx 64 --threads 2 --text %s --json 2>/dev/null", test_alloy_bin(), model,
             text);
    CHECK_INT(test_run(cmd, &log), 0);
    const char *at = log ? strstr(log, "\"nll\"") : NULL;
    double nll = at ? strtod(strchr(at, ':') + 1, NULL) : NAN;
    free(log);
    return nll;
}

/* rope_freqs.weight: F32 [head_dim/2], Meta's factors (1 and 8 exactly, the band between within float32 rounding
 * of the double values); no rope.scaling key (llama.cpp would scale twice); rope_scaling rebuilt on reading; the
 * GGUF evaluates exactly as the HF folder, which differs from the unscaled model. */
TEST(gguf_arch_llama31_rope_freqs)
{
    char dir[400], out[500], back[500], cmd[4096], text[600];
    struct alloy_err err = {0};
    llama31_folder("l31", 1.0, dir, sizeof dir);
    snprintf(out, sizeof out, "%s.gguf", dir);
    snprintf(back, sizeof back, "%s-back", dir);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q -j 2 && %s convert %s %s -q -j 2", test_alloy_bin(),
             dir, out, test_alloy_bin(), out, back);
    CHECK_INT(test_run(cmd, NULL), 0);
    struct alloy_gguf *g = NULL;
    CHECK_MSG(alloy_gguf_open(out, &g, &err) == ALLOY_OK, "%s", err.msg);
    const struct alloy_tensor *t = g ? alloy_gguf_derived(g, "rope_freqs.weight") : NULL;
    CHECK(t && t->ndim == 1 && t->shape[0] == 16 && t->dtype == ALLOY_DTYPE_F32);
    float v[16] = {0};
    CHECK(t && alloy_tensor_pread(t, 0, v, sizeof v, &err) == ALLOY_OK);
    int band = 0;
    for (int i = 0; i < 16; i++) {
        double want = meta_factor(i, 8, 1, 4, 8192);
        band += want != 1 && want != 8;
        CHECK_MSG(want == 1 || want == 8 ? v[i] == want : fabs(v[i] - want) <= 1e-6 * want, "rope_freqs[%d] %.9g, "
                  "Meta's rule %.9g", i, v[i], want);
    }
    CHECK_INT(band, 2); /* i = 11, 12 lie between the two wavelengths: the smooth part is tested */
    CHECK(g && !has_key(g, "llama", "rope.scaling.type") && !has_key(g, "llama", "rope.scaling.factor"));
    CHECK_INT(header_tensors(out), 4 * 9 + 3 + 1);
    if (g) alloy_tensor_file_close(alloy_gguf_base(g));
    snprintf(cmd, sizeof cmd, "%s/config.json", back);
    json_t *c = json_load_file(cmd, 0, NULL), *rs = json_object_get(c, "rope_scaling");
    CHECK_STR_CONTAINS(json_string_value(json_object_get(rs, "rope_type")), "llama3");
    CHECK(json_number_value(json_object_get(rs, "factor")) == 8 && json_number_value(json_object_get(rs, "low_freq_factor")) == 1 &&
          json_number_value(json_object_get(rs, "high_freq_factor")) == 4 &&
          json_integer_value(json_object_get(rs, "original_max_position_embeddings")) == 8192);
    json_decref(c);
    snprintf(text, sizeof text, "%s/short.txt", test_tmpdir());
    char *prose = test_read_file("tests/data/eval_prose.txt", NULL);
    CHECK(prose && strlen(prose) > 3000);
    if (prose) prose[3000] = '\0';
    CHECK_INT(test_write_text(text, prose ? prose : ""), 0);
    free(prose);
    double hf = eval_nll(dir, text), gguf = eval_nll(out, text), plain = eval_nll("tests/data/tiny-llama/base-f32", text);
    CHECK_MSG(hf == gguf && hf != plain, "nll: HF %.17g, GGUF %.17g, without rope_scaling %.17g", hf, gguf, plain);
}

/* Factors that Meta's published parameters do not give (low_freq_factor 2) are written, but reading them back
 * is refused with the tensor named rather than rebuilt as another RoPE. */
TEST(gguf_arch_llama31_unrecoverable_rope_freqs_refused)
{
    char dir[400], out[500], cmd[4096], *log = NULL;
    llama31_folder("l31lo2", 2.0, dir, sizeof dir);
    snprintf(out, sizeof out, "%s.gguf", dir);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q -j 2 && %s convert %s %s-back -q 2>&1", test_alloy_bin(),
             dir, out, test_alloy_bin(), out, dir);
    CHECK_INT(test_run(cmd, &log), 1);
    CHECK_MSG(log && strstr(log, "alloy: error: ") && strstr(log, "tensor 'rope_freqs.weight': the llama3 factors"),
              "%s", log ? log : "");
    free(log);
}

/* Unknown architectures are named, writing (an HF class) and reading (general.architecture). */
TEST(gguf_arch_unknown_is_named)
{
    struct model m;
    char dir[512], out[600], cmd[2048], *log = NULL;
    build(&m, A_GEMMA2);
    write_folder(&m, dir, sizeof dir);
    free_model(&m);
    snprintf(out, sizeof out, "%s-x.gguf", dir);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q -j 2", test_alloy_bin(), dir, out);
    CHECK_INT(test_run(cmd, NULL), 0);
    size_t len = 0;
    char *bytes = test_read_file(out, &len);
    for (size_t i = 0; bytes && i + 6 <= len; i++) /* every "gemma2" (the value and the key prefixes) */
        if (memcmp(bytes + i, "gemma2", 6) == 0) memcpy(bytes + i, "falcn2", 6);
    FILE *f = fopen(out, "wb");
    CHECK(f && bytes && fwrite(bytes, 1, len, f) == len);
    if (f) fclose(f);
    free(bytes);
    snprintf(cmd, sizeof cmd, "%s convert %s %s-y -q 2>&1", test_alloy_bin(), out, dir);
    CHECK_INT(test_run(cmd, &log), 1);
    CHECK_MSG(log && strstr(log, "general.architecture: llama, qwen2, qwen3, phi3, gemma, gemma2 or gemma3") &&
              strstr(log, "found \"falcn2\""), "%s", log ? log : "");
    free(log);
}

/* A gemma2 GGUF as a merge input: GGUF -> GGUF gives the same stored norms (- 1 on reading, + 1 on writing), and a
 * linear merge with its own HF folder (0.5 / 0.5) gives back the HF weights, so GGUF and safetensors inputs meet
 * in the same (HF) values. */
TEST(gguf_arch_gemma2_gguf_as_merge_input)
{
    struct model m;
    char dir[400], out[500], again[500], merged[500], cfg[2048], cmd[2048];
    struct alloy_err err = {0};
    build(&m, A_GEMMA2);
    write_folder(&m, dir, sizeof dir);
    snprintf(out, sizeof out, "%s-in.gguf", dir);
    snprintf(again, sizeof again, "%s-again.gguf", dir);
    snprintf(merged, sizeof merged, "%s-merged", dir);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q -j 2 && %s convert %s %s --outtype f32 -q -j 2",
             test_alloy_bin(), dir, out, test_alloy_bin(), out, again);
    CHECK_INT(test_run(cmd, NULL), 0);
    check_gguf(&m, again);
    snprintf(cfg, sizeof cfg, "models:\n  - model: %s\n    parameters: {weight: 0.5}\n  - model: %s\n"
             "    parameters: {weight: 0.5}\nmerge_method: linear\ndtype: float32\n", out, dir);
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.config_text = cfg;
    o.out_dir = merged;
    o.threads = 2;
    CHECK_MSG(alloy_merge(&o, &err) == ALLOY_OK, "%s", err.msg);
    check_back(&m, merged, 1); /* model.norm: the GGUF holds f16(x + 1), so the mean is not x there */
    free_model(&m);
}

/* Gemma's SentencePiece tokenizer (here a Unigram tokenizer.json) is written in the "llama" form with
 * add_space_prefix false, as GemmaModel.set_vocab does; the byte-level form gets no such key. */
TEST(gguf_arch_gemma_spm_has_no_space_prefix)
{
    struct model m;
    char dir[400], path[500], out[500], cmd[2048];
    build(&m, A_GEMMA);
    write_folder(&m, dir, sizeof dir);
    free_model(&m);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    CHECK_INT(test_write_text(path, "{\"version\": \"1.0\", \"added_tokens\": [], \"model\": {\"type\": \"Unigram\", "
                                    "\"unk_id\": 1, \"vocab\": [[\"<pad>\", 0.0], [\"<unk>\", 0.0], [\"<bos>\", 0.0], "
                                    "[\"<eos>\", 0.0], [\"\\u2581a\", -1.5], [\"b\", -2.5]]}}"), 0);
    snprintf(out, sizeof out, "%s-spm.gguf", dir);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q -j 2", test_alloy_bin(), dir, out);
    CHECK_INT(test_run(cmd, NULL), 0);
    struct alloy_gguf *g = NULL;
    struct alloy_err err = {0};
    const char *s = NULL;
    uint64_t len = 0;
    int prefix = 1;
    CHECK_MSG(alloy_gguf_open(out, &g, &err) == ALLOY_OK, "%s", err.msg);
    CHECK(g && alloy_gguf_str(g, "tokenizer.ggml.model", &s, &len, &err) == 1 && len == 5 && !memcmp(s, "llama", 5));
    CHECK(g && alloy_gguf_bool(g, "tokenizer.ggml.add_space_prefix", &prefix, &err) == 1 && prefix == 0);
    if (g) alloy_tensor_file_close(alloy_gguf_base(g));
    snprintf(out, sizeof out, "%s.gguf", dir); /* the byte-level tokenizer of gguf_arch_gemma_round_trip */
    snprintf(cmd, sizeof cmd, "cp tests/data/tiny-llama/base/tokenizer.json %s/ && %s convert %s %s --outtype f32 -q -j 2",
             dir, test_alloy_bin(), dir, out);
    CHECK_INT(test_run(cmd, NULL), 0);
    CHECK_MSG(alloy_gguf_open(out, &g, &err) == ALLOY_OK, "%s", err.msg);
    CHECK(g && alloy_gguf_bool(g, "tokenizer.ggml.add_space_prefix", &prefix, &err) == 0);
    if (g) alloy_tensor_file_close(alloy_gguf_base(g));
    /* a tokenizer.model (pieces "<unk>" UNKNOWN 0.0, "\u2581a" NORMAL -1.5) comes first; Gemma's false replaces
     * tokenizer_config.json's add_prefix_space, once (the reader refuses a duplicate key) */
    static const unsigned char model[] = {0x0a, 0x0e, 0x0a, 0x05, '<', 'u', 'n', 'k', '>', 0x15, 0, 0, 0, 0, 0x18, 2,
                                          0x0a, 0x0d, 0x0a, 0x04, 0xe2, 0x96, 0x81, 'a', 0x15, 0, 0, 0xc0, 0xbf, 0x18, 1};
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(model, 1, sizeof model, f) == sizeof model && fclose(f) == 0);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    CHECK_INT(test_write_text(path, "{\"add_prefix_space\": true}"), 0);
    snprintf(out, sizeof out, "%s-model.gguf", dir);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q -j 2", test_alloy_bin(), dir, out);
    CHECK_INT(test_run(cmd, NULL), 0);
    prefix = 1;
    CHECK_MSG(alloy_gguf_open(out, &g, &err) == ALLOY_OK, "%s", err.msg);
    CHECK(g && alloy_gguf_bool(g, "tokenizer.ggml.add_space_prefix", &prefix, &err) == 1 && prefix == 0);
    uint64_t ntok = 0;
    CHECK(g && alloy_gguf_array(g, "tokenizer.ggml.tokens", GGUF_STRING, &ntok, &err) == 1 && ntok >= 2);
    CHECK(g && alloy_gguf_array_int(g, "tokenizer.ggml.token_type", 0) == 2); /* "<unk>": from tokenizer.model */
    if (g) alloy_tensor_file_close(alloy_gguf_base(g));
}

/* Where rope_freqs.weight's ne[0] and its 16 stored values sit in the file's bytes b (len): the name is found in
 * the header, the values by their bytes as alloy's reader returns them. 0 on success. */
static int find_rope_freqs(const char *path, const char *b, size_t len, size_t *ne_at, size_t *data_at)
{
    struct alloy_gguf *g = NULL;
    struct alloy_err err = {0};
    uint8_t v[64];
    *ne_at = *data_at = 0;
    for (size_t i = 8; i + 17 + 12 < len && !*ne_at; i++) {
        uint64_t n;
        memcpy(&n, b + i - 8, sizeof n);
        if (n == 17 && memcmp(b + i, "rope_freqs.weight", 17) == 0) *ne_at = i + 17 + 4; /* after n_dims */
    }
    if (alloy_gguf_open(path, &g, &err) != ALLOY_OK) return -1;
    const struct alloy_tensor *t = alloy_gguf_derived(g, "rope_freqs.weight");
    int rc = t && alloy_tensor_pread(t, 0, v, sizeof v, &err) == ALLOY_OK ? 0 : -1;
    alloy_tensor_file_close(alloy_gguf_base(g));
    const char *at = rc ? NULL : memmem(b + *ne_at, len - *ne_at, v, sizeof v);
    *data_at = at ? (size_t)(at - b) : 0;
    return *ne_at && *data_at ? 0 : -1;
}

/* A corrupt rope_freqs.weight is refused naming it: a length other than head_dim/2 (15: the padding, and so every
 * offset, stays valid) and a factor that is not positive. */
TEST(gguf_arch_corrupt_rope_freqs_named)
{
    char dir[400], out[500], bad[500], cmd[2048], *log = NULL;
    llama31_folder("l31bad", 1.0, dir, sizeof dir);
    snprintf(out, sizeof out, "%s.gguf", dir);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q -j 2", test_alloy_bin(), dir, out);
    CHECK_INT(test_run(cmd, NULL), 0);
    size_t len = 0, ne_at, data_at;
    char *b = test_read_file(out, &len);
    CHECK(b && find_rope_freqs(out, b, len, &ne_at, &data_at) == 0);
    static const char *const msgs[] = {
        "tensor 'rope_freqs.weight': [16] (half the rotary dimension), found 1 dims of 15",
        "tensor 'rope_freqs.weight': positive factors, found -1 at 3",
    };
    for (size_t k = 0; b && data_at && k < 2; k++) {
        char *c = malloc(len);
        CHECK(c != NULL);
        if (!c) break;
        memcpy(c, b, len);
        const uint64_t ne = 15;
        const float minus = -1.0f;
        if (k == 0) memcpy(c + ne_at, &ne, sizeof ne);
        else memcpy(c + data_at + 3 * sizeof minus, &minus, sizeof minus);
        snprintf(bad, sizeof bad, "%s-bad%zu.gguf", dir, k);
        FILE *f = fopen(bad, "wb");
        CHECK(f && fwrite(c, 1, len, f) == len);
        if (f) fclose(f);
        free(c);
        snprintf(cmd, sizeof cmd, "%s convert %s %s-bad%zu -q 2>&1", test_alloy_bin(), bad, dir, k);
        CHECK_INT(test_run(cmd, &log), 1);
        CHECK_MSG(log && strstr(log, msgs[k]), "%s", log ? log : "");
        free(log);
        log = NULL;
    }
    free(b);
}
