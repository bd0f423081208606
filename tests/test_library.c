/*
 * test_library.c — liballoy as a program linking it sees it: the example of
 * examples/library built against the installed library (make check builds
 * it statically and shared, through pkg-config, into $ALLOY_EXAMPLES), the
 * evaluation API over opened models against tests/data/results.json, the
 * config builder against the same YAML (same plan, same merged bytes, same
 * text round trip), and the method descriptions.
 */
#include "test.h"
#include "alloy.h"
#include "config/config.h"
#include "plan/plan.h"

#include <jansson.h>
#include <stdlib.h>

#define TINY "tests/data/tiny-llama/"

/* The reference loss of a bundled model on a text ("code" or "prose"). */
static double ref_loss(const char *model, const char *text)
{
    json_error_t jerr;
    json_t *ref = json_load_file(test_data("results.json"), 0, &jerr);
    char key[32];
    snprintf(key, sizeof key, "%s_loss", text);
    double v = json_real_value(json_object_get(json_object_get(ref, model), key));
    json_decref(ref);
    return v;
}

TEST(library_example_static_and_shared)
{
    const char *dir = getenv("ALLOY_EXAMPLES");
    if (!dir || !*dir) {
        printf("SKIP library_example: ALLOY_EXAMPLES unset (make check builds the example against the installed library)\n");
        return;
    }
    static const char *const kinds[] = {"shared", "static"};
    for (int k = 0; k < 2; k++) {
        char cmd[700], *out = NULL;
        snprintf(cmd, sizeof cmd, "%s/merge_and_eval_%s tests/data", dir, kinds[k]);
        int rc = test_run(cmd, &out);
        CHECK_MSG(rc == 0, "%s: exit %d: %s", cmd, rc, out ? out : "");
        CHECK_STR_CONTAINS(out, "merged ");
        const char *b = out ? strstr(out, "base    nll ") : NULL, *m = out ? strstr(out, "merged  nll ") : NULL;
        CHECK_MSG(b && m, "%s: %s", cmd, out ? out : "");
        if (b && m) {
            CHECK_NEAR(atof(b + 12), ref_loss("base", "code"), 1e-4);
            CHECK_MSG(atof(m + 12) > 0 && atof(m + 12) < 10, "merged loss: %s", m);
        }
        free(out);
    }
}

/* The registry pulls every method out of liballoy.a: the static example holds all their tables. */
TEST(library_static_link_has_every_method)
{
    const char *dir = getenv("ALLOY_EXAMPLES");
    if (!dir || !*dir) return;
    char cmd[700], *out = NULL;
    snprintf(cmd, sizeof cmd, "nm %s/merge_and_eval_static | grep -c ' [RrDd] alloy_method_'", dir);
    int rc = test_run(cmd, &out);
    struct alloy_method_info m;
    size_t n = 0;
    while (alloy_method_info(n, &m) == 0) n++;
    CHECK_MSG(rc == 0 && out && (size_t)atoi(out) == n, "%s: %s (expected %zu)", cmd, out ? out : "", n);
    free(out);
}

TEST(library_evaluator_reference_losses)
{
    static const char *const models[] = {"base", "code"};
    char *text = NULL;
    size_t len = 0;
    struct alloy_err err = {0};
    CHECK_INT(alloy_eval_read_text("tests/data/eval_code.txt", &text, &len, &err), 0);
    struct alloy_pool *pool = alloy_pool_new(2);
    for (int i = 0; text && i < 2; i++) {
        char dir[128];
        snprintf(dir, sizeof dir, TINY "%s", models[i]);
        struct alloy_model *m = NULL;
        struct alloy_evaluator *ev = NULL;
        struct alloy_eval_info info;
        CHECK_INT(alloy_model_open(dir, &m, &err), 0);
        if (!m) continue;
        CHECK_INT(alloy_eval_check(m, &info, &err), 0);
        CHECK_INT(info.default_ctx, 128);
        CHECK_INT(info.bos_token_id, 256);
        int rc = alloy_evaluator_new(m, &ev, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        alloy_model_close(m); /* the evaluator holds its own float32 weights */
        struct alloy_eval_options o;
        struct alloy_eval_result r = {0}, r2 = {0};
        alloy_eval_options_init(&o);
        o.pool = pool;
        if (!rc) rc = alloy_evaluate_text(ev, text, len, "eval_code.txt", &o, &r, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        CHECK_NEAR(r.nll, ref_loss(models[i], "code"), 1e-4);
        CHECK_INT(r.tokens, 512 * 128);
        o.pool = NULL; /* one thread: the same bits */
        if (!rc) rc = alloy_evaluate_text(ev, text, len, "eval_code.txt", &o, &r2, &err);
        CHECK(rc == 0 && r2.nll == r.nll);
        alloy_evaluator_free(ev);
    }
    alloy_pool_free(pool);
    free(text);
}

TEST(library_evaluator_errors)
{
    struct alloy_err err = {0};
    struct alloy_model *m = NULL;
    struct alloy_evaluator *ev = NULL;
    struct alloy_eval_result r;
    CHECK_INT(alloy_model_open(TINY "base", &m, &err), 0);
    if (!m) return;
    CHECK_INT(alloy_evaluator_new(m, &ev, &err), 0);
    int32_t ids[4] = {1, 2, 3, 4};
    struct alloy_eval_options o;
    alloy_eval_options_init(&o);
    CHECK_INT(alloy_evaluate_ids(ev, ids, 4, "four.txt", &o, &r, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "four.txt: 4 tokens: expected at least one window of 128 tokens");
    ids[2] = 999;
    o.ctx = 2;
    CHECK_INT(alloy_evaluate_ids(ev, ids, 4, "four.txt", &o, &r, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "four.txt: token 2: id 999 is outside the vocabulary");
    alloy_evaluator_free(ev);
    alloy_model_close(m);
}

/* The builder's config for examples/linear-like merges: code and prose onto base. */
static struct alloy_config *built_linear(struct alloy_err *err)
{
    struct alloy_config *c = NULL;
    int i = -1, j = -1;
    double grad[] = {0.25, 0.75};
    if (alloy_config_new("linear", &c, err) || alloy_config_add_model(c, TINY "code", &i, err) ||
        alloy_config_set_param(c, i, "weight", 0.7, err) || alloy_config_add_model(c, TINY "prose", &j, err) ||
        alloy_config_set_gradient(c, j, "weight", grad, 2, err) || alloy_config_set_param(c, -1, "normalize", 1, err) ||
        alloy_config_set_dtype(c, "bfloat16", err) || i != 0 || j != 1) {
        alloy_config_free(c);
        return NULL;
    }
    return c;
}

static const char k_linear_yaml[] = "merge_method: linear\n"
                                    "models:\n"
                                    "  - model: " TINY "code\n"
                                    "    parameters: {weight: 0.7}\n"
                                    "  - model: " TINY "prose\n"
                                    "    parameters: {weight: [0.25, 0.75]}\n"
                                    "parameters: {normalize: true}\n"
                                    "dtype: bfloat16\n";

static char *plan_text(const struct alloy_config *c)
{
    struct alloy_merge_options o;
    struct alloy_plan *p = NULL;
    struct alloy_err err = {0};
    alloy_merge_options_init(&o);
    if (alloy_plan_build(c, &o, &p, &err)) return NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f) {
        alloy_plan_print(p, f);
        fclose(f);
    }
    alloy_plan_free(p);
    return buf;
}

TEST(library_config_builder_plans_like_yaml)
{
    struct alloy_err err = {0};
    struct alloy_config *built = built_linear(&err), *parsed = NULL, *again = NULL;
    CHECK_MSG(built != NULL, "%s", err.msg);
    CHECK_INT(alloy_config_parse(k_linear_yaml, strlen(k_linear_yaml), "linear.yml", &parsed, &err), 0);
    if (!built || !parsed) goto out;
    /* the builder's YAML text parses back into the same config */
    const char *text = alloy_config_text(built);
    CHECK_INT(alloy_config_parse(text, strlen(text), "built.yml", &again, &err), 0);
    char *a = plan_text(built), *b = plan_text(parsed), *c = again ? plan_text(again) : NULL;
    CHECK_MSG(a && b && !strcmp(a, b), "built plan:\n%s\nYAML plan:\n%s", a ? a : "", b ? b : "");
    CHECK_MSG(a && c && !strcmp(a, c), "built plan:\n%s\nre-parsed plan:\n%s", a ? a : "", c ? c : "");
    CHECK_STR_CONTAINS(a, "model.layers.0.mlp.down_proj.weight");
    free(a);
    free(b);
    free(c);
    /* setters refuse a parsed config (it keeps the text it came from) */
    CHECK_INT(alloy_config_set_dtype(parsed, "float32", &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "linear.yml: a parsed config cannot be changed");
out:
    alloy_config_free(built);
    alloy_config_free(parsed);
    alloy_config_free(again);
}

/* Merges with options o into dir; 1 merged, -1 failed. */
static int merge_into(struct alloy_merge_options *o, const char *dir)
{
    struct alloy_err err = {0};
    o->out_dir = dir;
    o->threads = 2;
    int rc = alloy_merge(o, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    return rc ? -1 : 1;
}

TEST(library_config_builder_merges_like_yaml)
{
    const char *tmp = test_tmpdir();
    char yml[600], out_yaml[600], out_built[600], st_a[700], st_b[700];
    snprintf(yml, sizeof yml, "%s/linear.yml", tmp);
    snprintf(out_yaml, sizeof out_yaml, "%s/from_yaml", tmp);
    snprintf(out_built, sizeof out_built, "%s/from_structs", tmp);
    CHECK_INT(test_write_text(yml, k_linear_yaml), 0);
    struct alloy_err err = {0};
    struct alloy_config *built = built_linear(&err);
    CHECK_MSG(built != NULL, "%s", err.msg);
    if (!built) return;
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.config_path = yml;
    CHECK_INT(merge_into(&o, out_yaml), 1);
    alloy_merge_options_init(&o);
    o.config = built;
    int got = merge_into(&o, out_built);
    CHECK_INT(got, 1);
    if (got == 1) {
        snprintf(st_a, sizeof st_a, "%s/model.safetensors", out_yaml);
        snprintf(st_b, sizeof st_b, "%s/model.safetensors", out_built);
        size_t la = 0, lb = 0;
        char *a = test_read_file(st_a, &la), *b = test_read_file(st_b, &lb);
        CHECK_MSG(a && b && la == lb && !memcmp(a, b, la), "%s and %s differ", st_a, st_b);
        free(a);
        free(b);
    }
    alloy_config_free(built);
}

TEST(library_config_builder_errors)
{
    struct alloy_err err = {0};
    struct alloy_config *c = NULL;
    CHECK_INT(alloy_config_new("lineer", &c, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "merge_method: unknown method 'lineer' (known: linear, slerp");
    CHECK(c == NULL);
    CHECK_INT(alloy_config_new("ties", &c, &err), 0);
    if (!c) return;
    CHECK_INT(alloy_config_add_model(c, "org/a@b@c", NULL, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "models[0].model: invalid model reference 'org/a@b@c': more than one '@'");
    CHECK_INT(alloy_config_set_base(c, "base+", &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "base_model: invalid model reference 'base+': the adapter path after '+' is empty");
    CHECK_INT(alloy_config_set_param(c, 0, "density", 0.5, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "model 0 does not exist (0 models");
    CHECK_INT(alloy_config_set_dtype(c, "int64", &err), ALLOY_ERR_UNSUPPORTED);
    CHECK_INT(alloy_config_set_out_dtype(c, "float8", &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "out_dtype: expected bfloat16, float16 or float32");
    /* a setter replaces the earlier value in place; the text follows */
    CHECK_INT(alloy_config_set_base(c, TINY "base", &err), 0);
    CHECK_INT(alloy_config_add_model(c, TINY "code", NULL, &err), 0);
    CHECK_INT(alloy_config_set_param(c, 0, "density", 0.5, &err), 0);
    CHECK_INT(alloy_config_set_param(c, 0, "density", 0.25, &err), 0);
    CHECK_INT(alloy_config_set_param(c, -1, "lambda", 1.0 / 3, &err), 0);
    CHECK_STR_CONTAINS(alloy_config_text(c), "base_model: \"" TINY "base\"\n");
    CHECK_STR_CONTAINS(alloy_config_text(c), "    parameters:\n      \"density\": 0.25\n");
    CHECK_STR_CONTAINS(alloy_config_text(c), "  \"lambda\": 0.33333333333333331\n");
    CHECK(!strstr(alloy_config_text(c), "0.5"));
    alloy_config_free(c);
}

TEST(library_method_info)
{
    struct alloy_method_info m;
    size_t n = 0;
    int linear_weight = 0;
    while (alloy_method_info(n, &m) == 0) {
        CHECK(m.name && m.summary && m.nparams >= 0 && m.nparams <= ALLOY_METHOD_MAX_PARAMS);
        if (!strcmp(m.name, "linear"))
            for (int k = 0; k < m.nparams; k++) linear_weight |= !strcmp(m.params[k].name, "weight") && m.params[k].per_model;
        n++;
    }
    CHECK(n >= 20);
    CHECK(linear_weight);
    CHECK_INT(alloy_method_info(n, &m), -1);
}
