/*
 * test_lora_write.c — the PEFT adapter writer (src/lora/adapter_write.c):
 * a round trip through the safetensors reader and jansson (keys, shapes,
 * dtypes, values, the config), and the output-folder rules.
 */
#include "test.h"

#include "lora/adapter_write.h"

#include <jansson.h>
#include <stdlib.h>
#include <sys/stat.h>

static struct alloy_adapter_spec spec_bf16(void)
{
    struct alloy_adapter_spec s;
    memset(&s, 0, sizeof s);
    s.base_model = "org/base";
    s.r = 2;
    s.lora_alpha = 2;
    s.dtype = ALLOY_DTYPE_BF16;
    return s;
}

static void check_tensor(const struct alloy_st_file *f, const char *name, enum alloy_dtype dt, int64_t d0, int64_t d1,
                         const float *want)
{
    const struct alloy_tensor *t = alloy_st_find(f, name);
    CHECK_MSG(t != NULL, "%s missing", name);
    if (!t) return;
    CHECK_INT(t->dtype, dt);
    CHECK_INT(t->ndim, d1 ? 2 : 1);
    CHECK_INT(t->shape[0], d0);
    if (d1) CHECK_INT(t->shape[1], d1);
    float v[64];
    alloy_to_f32(t->dtype, t->data, v, (size_t)t->numel);
    for (uint64_t i = 0; i < t->numel; i++) CHECK_MSG(v[i] == want[i], "%s[%llu] = %g, expected %g", name,
                                                       (unsigned long long)i, v[i], want[i]);
}

/* Values exact in BF16, so the stored values must equal them. */
static const float A2x3[6] = {0.5f, -1.25f, 2, 0.125f, -3, 1};
static const float B4x2[8] = {1, 2, 3, 4, -0.5f, -1, 0.25f, 8};
static const float EA3x5[15] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static const float EB2x3[6] = {-1, -2, -3, 0.5f, 0.75f, 1.5f};
static const float NORM[4] = {1, 1.5f, 0.75f, 2};

static int write_sample(const char *out, const struct alloy_adapter_spec *s, struct alloy_err *err)
{
    struct alloy_adapter_writer *w;
    int rc = alloy_adapter_writer_new(out, s, &w, err);
    if (rc) return rc;
    int64_t nshape[1] = {4};
    rc = alloy_adapter_writer_module(w, "model.layers.0.self_attn.q_proj", ALLOY_LORA_LINEAR, 2, 2, A2x3, 3, B4x2, 4, err);
    if (!rc) rc = alloy_adapter_writer_module(w, "model.embed_tokens", ALLOY_LORA_EMBEDDING, 3, 6, EA3x5, 5, EB2x3, 2, err);
    if (!rc) rc = alloy_adapter_writer_full(w, "model.norm", NORM, 1, nshape, ALLOY_DTYPE_F32, err);
    if (!rc) rc = alloy_adapter_writer_commit(w, "# card\n", err);
    alloy_adapter_writer_free(w);
    return rc;
}

TEST(lora_write_round_trip)
{
    char dir[1024], out[1100];
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    snprintf(out, sizeof out, "%s/adapter", dir);
    struct alloy_adapter_spec s = spec_bf16();
    struct alloy_err err = {0};
    CHECK_MSG(write_sample(out, &s, &err) == 0, "%s", err.msg);
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    struct alloy_st_file *f = NULL;
    CHECK_MSG(alloy_st_open(path, &f, &err) == 0, "%s", err.msg);
    if (!f) return;
    CHECK_INT(alloy_st_count(f), 5);
    check_tensor(f, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", ALLOY_DTYPE_BF16, 2, 3, A2x3);
    check_tensor(f, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", ALLOY_DTYPE_BF16, 4, 2, B4x2);
    check_tensor(f, "base_model.model.model.embed_tokens.lora_embedding_A", ALLOY_DTYPE_BF16, 3, 5, EA3x5);
    check_tensor(f, "base_model.model.model.embed_tokens.lora_embedding_B", ALLOY_DTYPE_BF16, 2, 3, EB2x3);
    check_tensor(f, "base_model.model.model.norm.weight", ALLOY_DTYPE_F32, 4, 0, NORM);
    CHECK(alloy_st_metadata(f, "format") && !strcmp(alloy_st_metadata(f, "format"), "pt"));
    alloy_st_close(f);

    snprintf(path, sizeof path, "%s/adapter_config.json", out);
    char *text = test_read_file(path, NULL);
    CHECK(text && strstr(text, "\n  \"alpha_pattern\": {") == text + 1); /* indent 2, sorted: alpha_pattern first */
    json_error_t je;
    json_t *c = text ? json_loads(text, 0, &je) : NULL;
    CHECK(c != NULL);
    if (c) {
        CHECK(!strcmp(json_string_value(json_object_get(c, "peft_type")), "LORA"));
        CHECK(!strcmp(json_string_value(json_object_get(c, "task_type")), "CAUSAL_LM"));
        CHECK(!strcmp(json_string_value(json_object_get(c, "base_model_name_or_path")), "org/base"));
        CHECK_INT(json_integer_value(json_object_get(c, "r")), 2);
        CHECK_NEAR(json_number_value(json_object_get(c, "lora_alpha")), 2, 0);
        CHECK(json_is_false(json_object_get(c, "use_rslora")) && json_is_false(json_object_get(c, "use_dora")));
        CHECK(json_is_false(json_object_get(c, "fan_in_fan_out")) && json_is_true(json_object_get(c, "init_lora_weights")));
        CHECK(!strcmp(json_string_value(json_object_get(c, "bias")), "none"));
        json_t *rp = json_object_get(c, "rank_pattern"), *ap = json_object_get(c, "alpha_pattern");
        CHECK_INT(json_object_size(rp), 1);
        CHECK_INT(json_integer_value(json_object_get(rp, "model.embed_tokens")), 3);
        CHECK_INT(json_object_size(ap), 1);
        CHECK_NEAR(json_number_value(json_object_get(ap, "model.embed_tokens")), 6, 0);
        json_t *tm = json_object_get(c, "target_modules"), *ms = json_object_get(c, "modules_to_save");
        CHECK_INT(json_array_size(tm), 2);
        CHECK(!strcmp(json_string_value(json_array_get(tm, 0)), "q_proj"));
        CHECK(!strcmp(json_string_value(json_array_get(tm, 1)), "embed_tokens"));
        CHECK_INT(json_array_size(ms), 1);
        CHECK(!strcmp(json_string_value(json_array_get(ms, 0)), "norm"));
        json_decref(c);
    }
    free(text);
    snprintf(path, sizeof path, "%s/README.md", out);
    text = test_read_file(path, NULL);
    CHECK(text && !strcmp(text, "# card\n"));
    free(text);
    CHECK_INT(test_leftovers(dir), 0);
}

TEST(lora_write_refusals)
{
    char dir[1024], out[1100], path[1200];
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    snprintf(out, sizeof out, "%s/adapter", dir);
    struct alloy_adapter_spec s = spec_bf16();
    struct alloy_err err = {0};
    struct alloy_adapter_writer *w;
    float nan3[3] = {1, NAN, 2}, b1[1] = {1};
    CHECK_INT(alloy_adapter_writer_new(out, &s, &w, &err), 0);
    CHECK_INT(alloy_adapter_writer_module(w, "m.q", ALLOY_LORA_LINEAR, 0, 1, b1, 1, b1, 1, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "m.q: a LoRA rank >= 1 expected, found 0");
    CHECK_INT(alloy_adapter_writer_module(w, "m.q", ALLOY_LORA_LINEAR, 1, 1, nan3, 3, b1, 1, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "lora_A.weight: finite values expected, found NaN at element 1");
    CHECK_INT(alloy_adapter_writer_commit(w, NULL, &err), ALLOY_ERR_CONFIG); /* nothing added */
    alloy_adapter_writer_free(w); /* abandoned: nothing on disk */
    struct stat st;
    CHECK(stat(out, &st) != 0);
    CHECK_INT(test_leftovers(dir), 0);

    /* a folder with a foreign file: refused unless overwrite, then replaced whole */
    mkdir(out, 0755);
    snprintf(path, sizeof path, "%s/notes.txt", out);
    test_write_text(path, "mine");
    CHECK_INT(write_sample(out, &s, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "notes.txt");
    CHECK(stat(path, &st) == 0);
    s.overwrite = 1;
    CHECK_MSG(write_sample(out, &s, &err) == 0, "%s", err.msg);
    CHECK(stat(path, &st) != 0);
    /* an adapter folder is an output folder: writing it again needs no --overwrite */
    s.overwrite = 0;
    CHECK_MSG(write_sample(out, &s, &err) == 0, "%s", err.msg);

    /* never inside an input model */
    struct alloy_model *m = NULL;
    CHECK_INT(alloy_model_open(test_data("tiny-llama/base"), &m, &err), 0);
    const struct alloy_model *inputs[1] = {m};
    s.inputs = inputs;
    s.ninputs = 1;
    snprintf(out, sizeof out, "%s/sub", test_data("tiny-llama/base"));
    CHECK_INT(alloy_adapter_writer_new(out, &s, &w, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "lies inside the input model");
    alloy_model_close(m);
    s.dtype = ALLOY_DTYPE_I8;
    s.ninputs = 0;
    CHECK_INT(alloy_adapter_writer_new(out, &s, &w, &err), ALLOY_ERR_CONFIG);
}
