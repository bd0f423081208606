/*
 * test_lora_kinds.c — adapters of every kind PEFT merges, built in the test
 * on a small synthetic model, applied through `model+adapter`, and checked
 * against PEFT's formula computed here (lora_util.c, naive loops in double):
 * rank/alpha patterns with overlapping keys (first match in file order),
 * rsLoRA, modules_to_save with a resized vocabulary, embedding LoRA on a
 * base_layer copy, DoRA (Linear and Embedding), bfloat16 and mixed-dtype
 * adapters with fan_in_fan_out, lora_B.bias; and the lora source read in
 * arbitrary chunks and windows.
 */
#include "lora_util.h"
#include "formats/formats.h"
#include "lora/adapter.h"
#include "sources/source.h"

#include <math.h>
#include <stdlib.h>

/* The synthetic model: name, shape, seed. */
static const struct { const char *name; int ndim; long long shape[2]; } k_model[] = {
    {"model.embed_tokens.weight", 2, {10, 4}},
    {"model.layers.0.self_attn.q_proj.weight", 2, {4, 4}},
    {"model.layers.0.mlp.up_proj.weight", 2, {6, 4}},
    {"model.layers.0.mlp.up_proj.bias", 1, {6, 0}},
    {"model.layers.0.mlp.down_proj.weight", 2, {4, 6}},
    {"model.layers.1.mlp.down_proj.weight", 2, {4, 6}},
    {"model.norm.weight", 1, {4, 0}},
    {"lm_head.weight", 2, {10, 4}},
};
#define NMODEL ((int)(sizeof k_model / sizeof k_model[0]))

struct fixture {
    char model[512], adapter[512], ref[1100];
    double *w[NMODEL];          /* the model's values as stored (rounded for BF16) */
};

static void model_write(struct fixture *f, const char *dtype, const char *tag)
{
    struct lt_tensor t[NMODEL];
    snprintf(f->model, sizeof f->model, "%s/model-%s", test_tmpdir(), tag);
    snprintf(f->adapter, sizeof f->adapter, "%s/adapter-%s", test_tmpdir(), tag);
    snprintf(f->ref, sizeof f->ref, "%s+%s", f->model, f->adapter);
    for (int i = 0; i < NMODEL; i++) {
        size_t n = (size_t)k_model[i].shape[0] * (size_t)(k_model[i].ndim == 2 ? k_model[i].shape[1] : 1);
        f->w[i] = lt_values(n, 100 + (unsigned)i, 1.0);
        if (!strcmp(dtype, "BF16"))
            for (size_t k = 0; k < n; k++) f->w[i][k] = lt_bf16(f->w[i][k]);
        t[i] = (struct lt_tensor){k_model[i].name, dtype, k_model[i].ndim, {k_model[i].shape[0], k_model[i].shape[1]}, f->w[i]};
    }
    CHECK(lt_write_model(f->model, t, NMODEL) == 0);
}

static void fixture_free(struct fixture *f)
{
    for (int i = 0; i < NMODEL; i++) free(f->w[i]);
}

static const double *model_w(const struct fixture *f, const char *name)
{
    for (int i = 0; i < NMODEL; i++)
        if (!strcmp(k_model[i].name, name)) return f->w[i];
    return NULL;
}

/* Tensor `name` of out against the formula on base values w; bf16: within 1 BF16 ulp, else float32's
 * 2e-6 of the terms' size. */
static void expect(const struct alloy_model *out, const char *name, const double *w, const double *a, const double *b,
                   const double *mag, int emb, long long rows, long long cols, long long r, double s, int bf16)
{
    size_t n = 0, bad = 0;
    double *got = lt_read(out, name, &n);
    CHECK_MSG(got && n == (size_t)(rows * cols), "%s: %zu values", name, n);
    if (!got || n != (size_t)(rows * cols)) return free(got);
    double *want = malloc(n * sizeof *want), *size = malloc(n * sizeof *size);
    lt_formula(w, a, b, mag, emb, rows, cols, r, s, want, size);
    if (bf16) bad = lt_bf16_over_ulp(got, want, mag ? NULL : size, n);
    else
        for (size_t i = 0; i < n; i++) bad += !(fabs(got[i] - want[i]) <= 2e-6 * (mag ? fabs(want[i]) + 1e-3 : size[i]));
    CHECK_MSG(bad == 0, "%s: %zu of %zu values off the formula", name, bad, n);
    free(got), free(want), free(size);
}

#define T2(nm, dt, r0, r1, vals) ((struct lt_tensor){nm, dt, 2, {r0, r1}, vals})
#define T1(nm, dt, r0, vals) ((struct lt_tensor){nm, dt, 1, {r0, 0}, vals})

/* rank_pattern {"layers.1.mlp.down_proj": 2, "down_proj": 3} and alpha_pattern {"down_proj": 5,
 * "layers.1.mlp.down_proj": 7}: the first key in file order that matches wins, r and alpha separately. */
static void patterns_case(int rslora)
{
    struct fixture f;
    model_write(&f, "F32", rslora ? "pat-rs" : "pat");
    double *qa = lt_values(4 * 4, 1, 0.5), *qb = lt_values(4 * 4, 2, 0.5), *d0a = lt_values(3 * 6, 3, 0.5),
           *d0b = lt_values(4 * 3, 4, 0.5), *d1a = lt_values(2 * 6, 5, 0.5), *d1b = lt_values(4 * 2, 6, 0.5);
    struct lt_tensor t[] = {
        T2("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", 4, 4, qa),
        T2("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", 4, 4, qb),
        T2("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight", "F32", 3, 6, d0a),
        T2("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight", "F32", 4, 3, d0b),
        T2("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight", "F32", 2, 6, d1a),
        T2("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight", "F32", 4, 2, d1b),
    };
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"use_rslora\": %s,\n"
             " \"target_modules\": [\"q_proj\", \"down_proj\"],\n"
             " \"rank_pattern\": {\"layers.1.mlp.down_proj\": 2, \"down_proj\": 3},\n"
             " \"alpha_pattern\": {\"down_proj\": 5, \"layers.1.mlp.down_proj\": 7}}\n", rslora ? "true" : "false");
    CHECK(lt_write_adapter(f.adapter, cfg, t, 6) == 0);
    double sq = rslora ? 8 / 2.0 : 8 / 4.0, s0 = rslora ? 5 / sqrt(3) : 5 / 3.0, s1 = rslora ? 5 / sqrt(2) : 5 / 2.0;
    struct alloy_adapter *ad = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_adapter_open(f.adapter, &ad, &err) == 0, "%s", err.msg);
    const struct alloy_lora_module *m = ad ? alloy_adapter_module(ad, "model.layers.1.mlp.down_proj") : NULL;
    CHECK(m && m->rank == 2 && m->alpha == 5 && fabs(m->scale - s1) < 1e-12);
    m = ad ? alloy_adapter_module(ad, "model.layers.0.mlp.down_proj") : NULL;
    CHECK(m && m->rank == 3 && m->alpha == 5 && fabs(m->scale - s0) < 1e-12);
    alloy_adapter_close(ad);
    struct alloy_model *out = lt_apply(f.ref, NULL, &err);
    CHECK_MSG(out != NULL, "%s", err.msg);
    if (out) {
        expect(out, "model.layers.0.self_attn.q_proj.weight", model_w(&f, "model.layers.0.self_attn.q_proj.weight"), qa,
               qb, NULL, 0, 4, 4, 4, sq, 0);
        expect(out, "model.layers.0.mlp.down_proj.weight", model_w(&f, "model.layers.0.mlp.down_proj.weight"), d0a, d0b,
               NULL, 0, 4, 6, 3, s0, 0);
        expect(out, "model.layers.1.mlp.down_proj.weight", model_w(&f, "model.layers.1.mlp.down_proj.weight"), d1a, d1b,
               NULL, 0, 4, 6, 2, s1, 0);
        expect(out, "lm_head.weight", model_w(&f, "lm_head.weight"), NULL, NULL, NULL, 0, 10, 4, 0, 0, 0);
    }
    alloy_model_close(out);
    free(qa), free(qb), free(d0a), free(d0b), free(d1a), free(d1b);
    fixture_free(&f);
}

TEST(lora_kind_rank_alpha_patterns_first_match)
{
    patterns_case(0);
}

TEST(lora_kind_rslora_patterns)
{
    patterns_case(1);
}

/* modules_to_save: lm_head replaced by the saved copy (12 rows: a resized vocabulary); embed_tokens
 * carries an embedding LoRA on top of its base_layer copy: E' = copy + s·(B·A)ᵀ. */
TEST(lora_kind_modules_to_save_and_embedding_base_layer)
{
    struct fixture f;
    model_write(&f, "F32", "save");
    double *head = lt_values(12 * 4, 7, 1.0), *copy = lt_values(10 * 4, 8, 1.0), *ea = lt_values(2 * 10, 9, 0.5),
           *eb = lt_values(4 * 2, 10, 0.5);
    struct lt_tensor t[] = {
        T2("base_model.model.lm_head.weight", "F32", 12, 4, head),
        T2("base_model.model.model.embed_tokens.base_layer.weight", "F32", 10, 4, copy),
        T2("base_model.model.model.embed_tokens.lora_embedding_A", "F32", 2, 10, ea),
        T2("base_model.model.model.embed_tokens.lora_embedding_B", "F32", 4, 2, eb),
    };
    CHECK(lt_write_adapter(f.adapter, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 3, \"target_modules\": "
                           "[\"embed_tokens\"], \"modules_to_save\": [\"lm_head\"]}", t, 4) == 0);
    struct alloy_err err = {0};
    struct alloy_model *out = lt_apply(f.ref, NULL, &err);
    CHECK_MSG(out != NULL, "%s", err.msg);
    if (out) {
        expect(out, "lm_head.weight", head, NULL, NULL, NULL, 0, 12, 4, 0, 0, 0);
        expect(out, "model.embed_tokens.weight", copy, ea, eb, NULL, 1, 10, 4, 2, 1.5, 0);
        expect(out, "model.norm.weight", model_w(&f, "model.norm.weight"), NULL, NULL, NULL, 0, 1, 4, 0, 0, 0);
    }
    alloy_model_close(out);
    free(head), free(copy), free(ea), free(eb);
    fixture_free(&f);
}

/* DoRA: rows of W + s·B·A scaled to the magnitude (Linear), columns over the vocabulary (Embedding). */
TEST(lora_kind_dora_linear_and_embedding)
{
    struct fixture f;
    model_write(&f, "F32", "dora");
    double *qa = lt_values(2 * 4, 11, 0.5), *qb = lt_values(4 * 2, 12, 0.5), *qm = lt_values(4, 13, 1.0),
           *ea = lt_values(2 * 10, 14, 0.5), *eb = lt_values(4 * 2, 15, 0.5), *em = lt_values(4, 16, 1.0);
    for (int i = 0; i < 4; i++) qm[i] += 2, em[i] += 3;
    struct lt_tensor t[] = {
        T2("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", 2, 4, qa),
        T2("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", 4, 2, qb),
        T1("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", "F32", 4, qm),
        T2("base_model.model.model.embed_tokens.lora_embedding_A", "F32", 2, 10, ea),
        T2("base_model.model.model.embed_tokens.lora_embedding_B", "F32", 4, 2, eb),
        T1("base_model.model.model.embed_tokens.lora_magnitude_vector", "F32", 4, em),
    };
    CHECK(lt_write_adapter(f.adapter, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"use_dora\": true, "
                           "\"target_modules\": [\"q_proj\", \"embed_tokens\"]}", t, 6) == 0);
    struct alloy_err err = {0};
    struct alloy_model *out = lt_apply(f.ref, NULL, &err);
    CHECK_MSG(out != NULL, "%s", err.msg);
    if (out) {
        expect(out, "model.layers.0.self_attn.q_proj.weight", model_w(&f, "model.layers.0.self_attn.q_proj.weight"), qa,
               qb, qm, 0, 4, 4, 2, 2.0, 0);
        expect(out, "model.embed_tokens.weight", model_w(&f, "model.embed_tokens.weight"), ea, eb, em, 1, 10, 4, 2, 2.0, 0);
    }
    alloy_model_close(out);
    free(qa), free(qb), free(qm), free(ea), free(eb), free(em);
    fixture_free(&f);
}

/* A BF16 model with a bfloat16 lora_A and a float32 lora_B (mixed, as PEFT saves), fan_in_fan_out: true
 * (ignored for Linear, as PEFT does), and lora_B.bias added to the layer's bias: output BF16 within one
 * ulp of the formula on the stored values. */
TEST(lora_kind_bf16_mixed_fan_in_fan_out_and_bias)
{
    struct fixture f;
    model_write(&f, "BF16", "bf16");
    double *ua = lt_values(3 * 4, 17, 0.5), *ub = lt_values(6 * 3, 18, 0.5), *ubias = lt_values(6, 19, 0.5);
    for (int i = 0; i < 12; i++) ua[i] = lt_bf16(ua[i]);
    struct lt_tensor t[] = {
        T2("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight", "BF16", 3, 4, ua),
        T2("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight", "F32", 6, 3, ub),
        T1("base_model.model.model.layers.0.mlp.up_proj.lora_B.bias", "F32", 6, ubias),
    };
    CHECK(lt_write_adapter(f.adapter, "{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 6, \"fan_in_fan_out\": true, "
                           "\"lora_bias\": true, \"target_modules\": \"model\\\\.layers\\\\.\\\\d+\\\\.mlp\\\\.up_proj\"}",
                           t, 3) == 0);
    struct alloy_err err = {0};
    struct alloy_model *out = lt_apply(f.ref, NULL, &err);
    CHECK_MSG(out != NULL, "%s", err.msg);
    if (out) {
        const struct alloy_tensor *w = alloy_model_find(out, "model.layers.0.mlp.up_proj.weight");
        CHECK(w && w->dtype == ALLOY_DTYPE_BF16);
        expect(out, "model.layers.0.mlp.up_proj.weight", model_w(&f, "model.layers.0.mlp.up_proj.weight"), ua, ub, NULL,
               0, 6, 4, 3, 2.0, 1);
        double one = 1;
        expect(out, "model.layers.0.mlp.up_proj.bias", model_w(&f, "model.layers.0.mlp.up_proj.bias"), &one, ubias, NULL,
               0, 6, 1, 1, 2.0, 1); /* b + s·bias: a rank-1 "product" of bias and 1 */
    }
    alloy_model_close(out);
    free(ua), free(ub), free(ubias);
    fixture_free(&f);
}

/* The lora source read in any chunk [e0, e1) (partial rows at both ends) and as a window (fewer
 * columns) equals the whole tensor read at once. */
TEST(lora_source_chunks_and_windows)
{
    struct fixture f;
    model_write(&f, "F32", "chunks");
    double *ea = lt_values(3 * 10, 20, 0.5), *eb = lt_values(4 * 3, 21, 0.5), *da = lt_values(3 * 6, 22, 0.5),
           *db = lt_values(4 * 3, 23, 0.5);
    struct lt_tensor t[] = {
        T2("base_model.model.model.embed_tokens.lora_embedding_A", "F32", 3, 10, ea),
        T2("base_model.model.model.embed_tokens.lora_embedding_B", "F32", 4, 3, eb),
        T2("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight", "F32", 3, 6, da),
        T2("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight", "F32", 4, 3, db),
    };
    CHECK(lt_write_adapter(f.adapter, "{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 3}", t, 4) == 0);
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_model_open(f.ref, &m, &err) == 0, "%s", err.msg);
    const char *names[] = {"model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"};
    for (int k = 0; m && k < 2; k++) {
        const struct alloy_tensor *w = alloy_model_find(m, names[k]);
        uint64_t rows = (uint64_t)w->shape[0], cols = (uint64_t)w->shape[1];
        float whole[64], part[64];
        CHECK(alloy_model_read_f32(m, w, whole, &err) == 0);
        struct alloy_input in;
        CHECK_INT(alloy_input_lora(&in, 0, m, w, rows, cols, -1), 1);
        for (uint64_t e0 = 0; e0 < rows * cols; e0 += 3) {
            uint64_t e1 = e0 + 7 < rows * cols ? e0 + 7 : rows * cols;
            CHECK(alloy_input_read(&in, e0, e1, part, ALLOY_INPUT_F32, &err) == 0);
            CHECK(memcmp(part, whole + e0, (size_t)(e1 - e0) * 4) == 0);
        }
        alloy_input_free(&in);
        CHECK_INT(alloy_input_lora(&in, 0, m, w, rows - 1, cols - 1, -1), 1); /* a window */
        CHECK(alloy_input_read(&in, 1, (rows - 1) * (cols - 1), part, ALLOY_INPUT_F32, &err) == 0);
        for (uint64_t e = 1; e < (rows - 1) * (cols - 1); e++)
            CHECK(part[e - 1] == whole[(e / (cols - 1)) * cols + e % (cols - 1)]);
        alloy_input_release(&in);
        alloy_input_free(&in);
    }
    alloy_model_close(m);
    free(ea), free(eb), free(da), free(db);
    fixture_free(&f);
}

/* --lora-merge-dtype bfloat16 (mergekit's cached copy of the applied model): W rounded to BF16 first and
 * the applied value rounded to BF16, even into a float32 output. */
TEST(lora_kind_lora_merge_dtype_rounds_like_mergekit)
{
    struct fixture f;
    model_write(&f, "F32", "lmd");
    double *qa = lt_values(2 * 4, 24, 0.5), *qb = lt_values(4 * 2, 25, 0.5);
    struct lt_tensor t[] = {
        T2("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", 2, 4, qa),
        T2("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", 4, 2, qb),
    };
    CHECK(lt_write_adapter(f.adapter, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2}", t, 2) == 0);
    char cfg[1400];
    snprintf(cfg, sizeof cfg, "merge_method: passthrough\nmodels:\n  - model: %s\n", f.ref);
    struct alloy_merge_options o;
    struct alloy_model *out = NULL;
    struct alloy_err err = {0};
    alloy_merge_options_init(&o);
    o.config_text = cfg;
    o.out_model = &out;
    o.lora_merge_dtype = "bfloat16";
    CHECK_MSG(alloy_merge(&o, &err) == 0, "%s", err.msg);
    size_t n = 0;
    double *got = out ? lt_read(out, "model.layers.0.self_attn.q_proj.weight", &n) : NULL;
    CHECK(got && n == 16);
    const double *w = model_w(&f, "model.layers.0.self_attn.q_proj.weight");
    double wb[16], want[16];
    for (int i = 0; i < 16; i++) wb[i] = lt_bf16(w[i]);
    lt_formula(wb, qa, qb, NULL, 0, 4, 4, 2, 1.0, want, NULL);
    for (size_t i = 0; got && i < n; i++) {
        CHECK(got[i] == lt_bf16(got[i]));                        /* a BF16 value */
        CHECK(lt_bf16_over_ulp(&got[i], &want[i], NULL, 1) == 0); /* the rounded formula */
    }
    struct alloy_model *none = NULL;
    o.out_model = &none;
    o.lora_merge_dtype = "int8";
    CHECK_INT(alloy_merge(&o, &err), ALLOY_ERR_CONFIG);
    CHECK(none == NULL);
    CHECK_STR_CONTAINS(err.msg, "--lora-merge-dtype: expected bfloat16, float16 or float32, found 'int8'");
    free(got);
    alloy_model_close(out);
    free(qa), free(qb);
    fixture_free(&f);
}
