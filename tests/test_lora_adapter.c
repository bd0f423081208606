/*
 * test_lora_adapter.c — reading PEFT adapter folders: adapter_config.json,
 * the tensor grouping, the checks against a model; every corrupt or
 * mismatched adapter is one error line naming the file, the key, what was
 * expected and what was found. Also the Python-regex translation, the
 * base_model_name_or_path warning, `{model, lora}` config references, the
 * dry-run's `(lora)` sources and the CLI's error path.
 */
#include "lora_util.h"
#include "formats/formats.h"
#include "lora/lora_config.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define Q "base_model.model.model.layers.0.self_attn.q_proj."
#define CFG(extra) "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q_proj\"]" extra "}"

/* A 2-tensor F32 model (q_proj [4, 4], embed_tokens [6, 4]) in <tmp>/<tag>/m, the adapter folder path in ad. */
static void setup(const char *tag, char *model, char *ad)
{
    double *q = lt_values(16, 1, 1), *e = lt_values(24, 2, 1);
    struct lt_tensor t[] = {{"model.layers.0.self_attn.q_proj.weight", "F32", 2, {4, 4}, q},
                            {"model.embed_tokens.weight", "F32", 2, {6, 4}, e}};
    char dir[500];
    snprintf(dir, sizeof dir, "%.300s/%.100s", test_tmpdir(), tag);
    mkdir(dir, 0755);
    snprintf(model, 600, "%s/m", dir);
    snprintf(ad, 600, "%s/a", dir);
    CHECK(lt_write_model(model, t, 2) == 0);
    free(q), free(e);
}

/* Opens model+adapter (the adapter written from config and tensors) and expects status and message. */
static void expect_open(const char *tag, const char *config, const struct lt_tensor *t, int n, int status,
                        const char *msg)
{
    char model[600], ad[600], ref[1300];
    setup(tag, model, ad);
    CHECK(lt_write_adapter(ad, config, t, n) == 0);
    snprintf(ref, sizeof ref, "%s+%s", model, ad);
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    int rc = alloy_model_open(ref, &m, &err);
    CHECK_MSG(rc == status, "%s: status %d, expected %d (%s)", tag, rc, status, err.msg);
    if (msg) CHECK_STR_CONTAINS(err.msg, msg);
    CHECK_MSG(!strchr(err.msg, '\n'), "%s: one line", tag);
    alloy_model_close(m);
}

static double g_a[64], g_b[64];
#define A(nm, r, c) ((struct lt_tensor){nm, "F32", 2, {r, c}, g_a})
#define B(nm, r, c) ((struct lt_tensor){nm, "F32", 2, {r, c}, g_b})

TEST(lora_adapter_tensor_errors)
{
    struct lt_tensor fit[] = {A(Q "lora_A.weight", 2, 5), B(Q "lora_B.weight", 4, 2)};
    expect_open("fit", CFG(""), fit, 2, ALLOY_ERR_SHAPE,
                "adapter_model.safetensors: " Q "lora_A.weight: expected it to fit "
                "'model.layers.0.self_attn.q_proj.weight' of shape [4, 4], found the LoRA's shape [4, 5]");
    struct lt_tensor noB[] = {A(Q "lora_A.weight", 2, 4)};
    expect_open("nob", CFG(""), noB, 1, ALLOY_ERR_FORMAT,
                Q "lora_A.weight: expected " Q "lora_B.weight with it, found none");
    struct lt_tensor absent[] = {A("base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight", 2, 4),
                                 B("base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight", 4, 2)};
    expect_open("absent", CFG(""), absent, 2, ALLOY_ERR_SHAPE,
                "layers.7.self_attn.q_proj.lora_A.weight: expected a module of the model (tensor "
                "'model.layers.7.self_attn.q_proj.weight'), found no such tensor");
    struct lt_tensor suffix[] = {A(Q "lora_A.default.scale", 2, 4)};
    expect_open("suffix", CFG(""), suffix, 1, ALLOY_ERR_FORMAT,
                Q "lora_A.default.scale: expected a PEFT LoRA key (<module>.lora_A.weight, .lora_B.weight, "
                ".lora_embedding_A, ...), found an unknown suffix");
    struct lt_tensor full[] = {A(Q "lora_C.weight", 2, 4)};
    expect_open("full", CFG(""), full, 1, ALLOY_ERR_FORMAT,
                Q "lora_C.weight: expected a LoRA tensor (lora_A, lora_B, ...) or a module of modules_to_save, found a "
                "full weight of module 'model.layers.0.self_attn.q_proj.lora_C'");
    struct lt_tensor prefix[] = {A("model.layers.0.self_attn.q_proj.lora_A.weight", 2, 4)};
    expect_open("prefix", CFG(""), prefix, 1, ALLOY_ERR_FORMAT,
                "model.layers.0.self_attn.q_proj.lora_A.weight: expected a key starting with 'base_model.model.', found "
                "another prefix");
    struct lt_tensor rank[] = {A(Q "lora_A.weight", 3, 4), B(Q "lora_B.weight", 4, 3)};
    expect_open("rank", CFG(""), rank, 2, ALLOY_ERR_SHAPE,
                Q "lora_A.weight: expected rank 2 (r / rank_pattern of adapter_config.json), found 3 rows");
    struct lt_tensor ab[] = {A(Q "lora_A.weight", 2, 4), B(Q "lora_B.weight", 4, 3)};
    expect_open("ab", CFG(""), ab, 2, ALLOY_ERR_SHAPE,
                Q "lora_A.weight: expected rank 3 (the columns of " Q "lora_B.weight), found 2 rows");
    struct lt_tensor flat[] = {{Q "lora_A.weight", "F32", 1, {8, 0}, g_a}, B(Q "lora_B.weight", 4, 2)};
    expect_open("flat", CFG(""), flat, 2, ALLOY_ERR_SHAPE, Q "lora_A.weight: expected a 2-D shape [rows, cols], found [8]");
    struct lt_tensor ok[] = {A(Q "lora_A.weight", 2, 4), B(Q "lora_B.weight", 4, 2)};
    expect_open("target", "{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"v_proj\"]}", ok, 2,
                ALLOY_ERR_FORMAT, Q "lora_A.weight: expected a module that target_modules selects (PEFT would ignore "
                "this tensor), found 'model.layers.0.self_attn.q_proj' not selected");
    struct lt_tensor bias[] = {A(Q "lora_A.weight", 2, 4), B(Q "lora_B.weight", 4, 2), {Q "lora_B.bias", "F32", 1, {4, 0}, g_b}};
    expect_open("nobias", CFG(", \"lora_bias\": true"), bias, 3, ALLOY_ERR_SHAPE,
                Q "lora_B.bias: expected the model to have 'model.layers.0.self_attn.q_proj.bias' to add it to");
    expect_open("nodora", CFG(", \"use_dora\": true"), ok, 2, ALLOY_ERR_FORMAT,
                Q "lora_A.weight: expected " Q "lora_magnitude_vector (use_dora: true), found none");
    expect_open("good", CFG(""), ok, 2, ALLOY_OK, NULL);
}

TEST(lora_adapter_config_errors)
{
    struct lt_tensor ok[] = {A(Q "lora_A.weight", 2, 4), B(Q "lora_B.weight", 4, 2)};
    expect_open("json", "{\"peft_type\": \"LORA\",", ok, 2, ALLOY_ERR_FORMAT, "adapter_config.json: not valid JSON");
    expect_open("dup", "{\"peft_type\": \"LORA\", \"r\": 2, \"r\": 4}", ok, 2, ALLOY_ERR_FORMAT,
                "adapter_config.json: not valid JSON: duplicate object key");
    expect_open("ia3", "{\"peft_type\": \"IA3\"}", ok, 2, ALLOY_ERR_FORMAT,
                "adapter_config.json: peft_type: expected \"LORA\", found \"IA3\"");
    expect_open("nopeft", "{\"r\": 2}", ok, 2, ALLOY_ERR_FORMAT, "adapter_config.json: peft_type: expected \"LORA\", found no such key");
    expect_open("variant", CFG(", \"target_parameters\": [\"experts.w1\"]"), ok, 2, ALLOY_ERR_UNSUPPORTED,
                "adapter_config.json: target_parameters: expected null (a plain LoRA), found a setting of a LoRA variant");
    expect_open("r0", "{\"peft_type\": \"LORA\", \"r\": 0}", ok, 2, ALLOY_ERR_FORMAT,
                "adapter_config.json: r: expected a rank (an integer from 1 to 16777216), found 0");
    expect_open("pattern", CFG(", \"rank_pattern\": {\"q_proj\": \"two\"}"), ok, 2, ALLOY_ERR_FORMAT,
                "rank_pattern.q_proj: expected a rank (an integer from 1 to 16777216), found \"two\"");
    expect_open("lookahead", CFG(", \"alpha_pattern\": {\"(?!k)q_proj\": 2}"), ok, 2, ALLOY_ERR_UNSUPPORTED,
                "alpha_pattern.(?!k)q_proj: expected a regular expression, found (?!...) has no POSIX spelling");
    expect_open("bias", CFG(", \"bias\": \"some\""), ok, 2, ALLOY_ERR_FORMAT,
                "bias: expected \"none\", \"all\" or \"lora_only\", found \"some\"");
    expect_open("dorabias", CFG(", \"use_dora\": true, \"lora_bias\": true"), ok, 2, ALLOY_ERR_FORMAT,
                "lora_bias: expected false with use_dora (PEFT refuses both), found true");
}

TEST(lora_adapter_folder_errors)
{
    char model[600], ad[600], ref[1300], path[700];
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    setup("bin", model, ad);
    mkdir(ad, 0755);
    snprintf(path, sizeof path, "%s/adapter_config.json", ad);
    CHECK(test_write_text(path, CFG("")) == 0);
    snprintf(path, sizeof path, "%s/adapter_model.bin", ad);
    CHECK(test_write_text(path, "PK pickle") == 0);
    snprintf(ref, sizeof ref, "%s+%s", model, ad);
    CHECK_INT(alloy_model_open(ref, &m, &err), ALLOY_ERR_UNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "adapter_model.bin: expected adapter_model.safetensors, found only this PyTorch pickle");
    /* adapter_config.json linking out of the adapter folder is refused before it is read */
    char outside[700];
    snprintf(outside, sizeof outside, "%s/secret.json", test_tmpdir());
    CHECK(test_write_text(outside, CFG("")) == 0);
    snprintf(path, sizeof path, "%s/adapter_config.json", ad);
    unlink(path);
    CHECK(symlink(outside, path) == 0);
    CHECK_INT(alloy_model_open(ref, &m, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "adapter_config.json: links to ");
    CHECK_STR_CONTAINS(err.msg, "outside the model folder");
    snprintf(ref, sizeof ref, "%s+%s/none", model, test_tmpdir());
    CHECK_INT(alloy_model_open(ref, &m, &err), ALLOY_ERR_IO);
    CHECK_STR_CONTAINS(err.msg, "/none: model folder not found");
    CHECK(m == NULL);
}

TEST(lora_adapter_python_regex_translation)
{
    regex_t re;
    char why[200];
    CHECK(alloy_lora_regex("model\\.layers\\.\\d+\\.(?:q|k)_proj", "^", "$", &re, why, sizeof why) == 0);
    CHECK(alloy_lora_regex_match(&re, "model.layers.12.q_proj"));
    CHECK(!alloy_lora_regex_match(&re, "model.layers.x.q_proj"));
    CHECK(!alloy_lora_regex_match(&re, "model.layers.1.v_proj"));
    regfree(&re);
    CHECK(alloy_lora_regex(".*?[\\w]_proj", "^(.*\\.)?", "$", &re, why, sizeof why) == 0); /* lazy: same matches */
    CHECK(alloy_lora_regex_match(&re, "a.b.up_proj"));
    CHECK(!alloy_lora_regex_match(&re, "a.b.up-proj"));
    regfree(&re);
    CHECK(alloy_lora_regex("down_proj", "^(.*\\.)?", "$", &re, why, sizeof why) == 0); /* PEFT's key rule */
    CHECK(alloy_lora_regex_match(&re, "model.layers.3.mlp.down_proj"));
    CHECK(alloy_lora_regex_match(&re, "down_proj"));
    CHECK(!alloy_lora_regex_match(&re, "model.layers.3.mlp.xdown_proj"));
    regfree(&re);
    CHECK(alloy_lora_regex("(a)\\1", "^", "$", &re, why, sizeof why) == -1);
    CHECK_STR_CONTAINS(why, "\\1 (a back-reference or Python-only escape) has no POSIX spelling");
    CHECK(alloy_lora_regex("(?P<x>a)", "^", "$", &re, why, sizeof why) == -1);
    CHECK(alloy_lora_regex("[a", "^", "$", &re, why, sizeof why) == -1);
    CHECK_STR_CONTAINS(why, "not a valid regular expression");
}

static void capture(void *user, int level, const char *msg)
{
    char *buf = user;
    if (level == 0 && strlen(buf) + strlen(msg) + 2 < 2048) strcat(strcat(buf, msg), "\n");
}

/* {model: M, lora: A} is M+A; the dry-run names the lora sources; a foreign base_model_name_or_path warns. */
TEST(lora_adapter_config_reference_dry_run_and_warning)
{
    char model[600], ad[600], cfg[2048], log[2048] = "", plan[4096] = "";
    setup("dry", model, ad);
    struct lt_tensor ok[] = {A(Q "lora_A.weight", 2, 4), B(Q "lora_B.weight", 4, 2)};
    CHECK(lt_write_adapter(ad, CFG(", \"base_model_name_or_path\": \"org/other\""), ok, 2) == 0);
    snprintf(cfg, sizeof cfg, "merge_method: passthrough\nmodels:\n  - model: {model: %s, lora: %s}\n", model, ad);
    FILE *f = fmemopen(plan, sizeof plan - 1, "w");
    struct alloy_merge_options o;
    struct alloy_err err = {0};
    alloy_merge_options_init(&o);
    o.config_text = cfg;
    o.dry_run = 1;
    o.plan_out = f;
    o.log = capture;
    o.log_user = log;
    CHECK_MSG(alloy_merge(&o, &err) == 0, "%s", err.msg);
    fclose(f);
    CHECK_STR_CONTAINS(plan, "model.layers.0.self_attn.q_proj.weight (lora)");
    CHECK(strstr(plan, "embed_tokens.weight (lora)") == NULL);
    CHECK_STR_CONTAINS(log, "adapter_config.json: base_model_name_or_path: the adapter was trained on 'org/other'");
}

/* The CLI: one error line, exit 1, no output folder. */
TEST(lora_cli_apply_error)
{
    char model[600], ad[600], cmd[2000], *out = NULL;
    setup("cli", model, ad);
    struct lt_tensor noB[] = {A(Q "lora_A.weight", 2, 4)};
    CHECK(lt_write_adapter(ad, CFG(""), noB, 1) == 0);
    snprintf(cmd, sizeof cmd, "%s lora apply %s %s %s-out 2>&1", test_alloy_bin(), model, ad, ad);
    CHECK_INT(test_run(cmd, &out), 1);
    CHECK_INT(test_count_lines(out, ""), 1);
    CHECK_STR_CONTAINS(out, "alloy: error: ");
    CHECK_STR_CONTAINS(out, Q "lora_A.weight: expected " Q "lora_B.weight with it, found none");
    free(out);
    snprintf(cmd, sizeof cmd, "%s-out", ad);
    CHECK(access(cmd, F_OK) != 0);
    /* a good adapter, with --dtype: the output's weights in that dtype */
    struct lt_tensor ok[] = {A(Q "lora_A.weight", 2, 4), B(Q "lora_B.weight", 4, 2)};
    CHECK(lt_write_adapter(ad, CFG(""), ok, 2) == 0);
    snprintf(cmd, sizeof cmd, "%s lora apply %s %s %s-out --dtype bfloat16 -q 2>&1", test_alloy_bin(), model, ad, ad);
    CHECK_INT(test_run(cmd, &out), 0);
    free(out);
    snprintf(cmd, sizeof cmd, "%s-out", ad);
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_model_open(cmd, &m, &err) == 0, "%s", err.msg);
    const struct alloy_tensor *t = m ? alloy_model_find(m, "model.layers.0.self_attn.q_proj.weight") : NULL;
    CHECK(t && t->dtype == ALLOY_DTYPE_BF16);
    alloy_model_close(m);
    snprintf(cmd, sizeof cmd, "%s lora frobnicate x 2>&1", test_alloy_bin());
    CHECK_INT(test_run(cmd, &out), 2);
    CHECK_STR_CONTAINS(out, "unknown lora command 'frobnicate'");
    free(out);
}

/* An adapter id in the local Hugging Face cache, and base_model: MODEL+ADAPTER. */
TEST(lora_adapter_from_hf_cache_as_base_model)
{
    char model[600], ad[600], snap[900], path[1000], cfg[2048], plan[4096] = "";
    setup("hf", model, ad);
    const char *root = test_tmpdir();
    snprintf(snap, sizeof snap, "%s/models--org--ad/snapshots/abc123", root);
    snprintf(path, sizeof path, "mkdir -p '%s' '%s/models--org--ad/refs'", snap, root);
    CHECK_INT(test_run(path, NULL), 0);
    snprintf(path, sizeof path, "%s/models--org--ad/refs/main", root);
    CHECK(test_write_text(path, "abc123\n") == 0);
    struct lt_tensor ok[] = {A(Q "lora_A.weight", 2, 4), B(Q "lora_B.weight", 4, 2)};
    CHECK(lt_write_adapter(snap, CFG(""), ok, 2) == 0);
    setenv("HF_HUB_CACHE", root, 1);
    snprintf(cfg, sizeof cfg, "merge_method: task_arithmetic\nbase_model: %s+org/ad\nmodels:\n  - model: %s\n"
             "    parameters: {weight: 1.0}\n", model, model);
    FILE *f = fmemopen(plan, sizeof plan - 1, "w");
    struct alloy_merge_options o;
    struct alloy_err err = {0};
    alloy_merge_options_init(&o);
    o.config_text = cfg;
    o.dry_run = 1;
    o.plan_out = f;
    CHECK_MSG(alloy_merge(&o, &err) == 0, "%s", err.msg);
    fclose(f);
    unsetenv("HF_HUB_CACHE");
    CHECK_STR_CONTAINS(plan, "+org/ad:model.layers.0.self_attn.q_proj.weight (lora)");
}

/* rank_pattern keys of letters, digits, '_', '-' and '.' are matched without compiling a regex; a key in
 * parentheses is compiled. Both must agree with PEFT's rule ^(.*\.)?(KEY)$ ('.' any character) on names
 * chosen to hit each edge, and so must modules_to_save's ^(.*\.)?(KEY)(\..*)?$. Then the limits. */
TEST(lora_adapter_literal_patterns_match_like_regexes)
{
    static const char *const keys[] = {"q_proj", "layers.1.q_proj", "1.q", "a-b", "x.y"};
    static const char *const names[] = {"q_proj", "model.layers.1.q_proj", "model.layers.11.q_proj", "layersX1Xq_proj",
                                        "model.layers.1.q_proj.base", "xq_proj", "a-b", "m.a-b", "x.y", "xzy", "p.xzy",
                                        "1.q", "m.1.q", "m.21.q", "m.1.qq", "", "q"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        char lit[200], re[200];
        struct alloy_adapter a = {0}, b = {0};
        struct alloy_err err = {0};
        snprintf(lit, sizeof lit, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q\"], \"rank_pattern\": "
                 "{\"%s\": 7}, \"modules_to_save\": [\"%s\"]}", keys[k], keys[k]);
        snprintf(re, sizeof re, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q\"], \"rank_pattern\": "
                 "{\"(%s)\": 7}, \"modules_to_save\": [\"(%s)\"]}", keys[k], keys[k]);
        CHECK_MSG(alloy_lora_cfg_parse(lit, strlen(lit), "a.json", &a, &err) == 0, "%s", err.msg);
        CHECK_MSG(alloy_lora_cfg_parse(re, strlen(re), "b.json", &b, &err) == 0, "%s", err.msg);
        if (!a.cfg || !b.cfg || !a.cfg->rank || !b.cfg->rank) continue;
        CHECK(!a.cfg->rank[0].is_re && b.cfg->rank[0].is_re);
        for (size_t n = 0; n < sizeof names / sizeof *names; n++) {
            CHECK_MSG(alloy_lora_rank_for(&a, names[n]) == alloy_lora_rank_for(&b, names[n]), "key %s, name %s",
                      keys[k], names[n]);
            CHECK_MSG(alloy_lora_saved(&a, names[n]) == alloy_lora_saved(&b, names[n]), "saved: key %s, name %s",
                      keys[k], names[n]);
        }
        CHECK_INT(alloy_lora_rank_for(&a, "model.layers.1.q_proj"), k < 2 ? 7 : 2);
        for (size_t i = 0; i < a.ntarget_modules; i++) free(a.target_modules[i]);
        for (size_t i = 0; i < b.ntarget_modules; i++) free(b.target_modules[i]);
        free(a.target_modules);
        free(b.target_modules);
        alloy_lora_cfg_free(a.cfg);
        alloy_lora_cfg_free(b.cfg);
    }
    /* 65,537 literal keys, or 1,025 regexes, are refused naming the file and the key, quickly */
    size_t cap = 40u * 70000 + 200, pos = 0;
    char *big = malloc(cap);
    CHECK(big != NULL);
    for (int pass = 0; big && pass < 2; pass++) {
        int n = pass ? 1025 : 65537;
        pos = (size_t)snprintf(big, cap, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q\"], \"rank_pattern\": {");
        for (int i = 0; i < n; i++)
            pos += (size_t)snprintf(big + pos, cap - pos, "%s\"%sm%d\": 3", i ? ", " : "", pass ? "(a)" : "", i);
        pos += (size_t)snprintf(big + pos, cap - pos, "}}");
        struct alloy_adapter a = {0};
        struct alloy_err err = {0};
        CHECK(alloy_lora_cfg_parse(big, pos, "big.json", &a, &err) != 0);
        CHECK_STR_CONTAINS(err.msg, pass ? "big.json: rank_pattern.(a)m1024: expected at most 1024 regular expressions"
                                         : "big.json: rank_pattern.m65536: expected at most 65536 module patterns");
        for (size_t i = 0; i < a.ntarget_modules; i++) free(a.target_modules[i]);
        free(a.target_modules);
        alloy_lora_cfg_free(a.cfg);
    }
    free(big);
}
