/*
 * test_config.c — the mergekit YAML config reader (src/config/config.c,
 * params.c): every accepted form, the gradient formula against a naive
 * double-precision transcription of spec §2.3, filter precedence, every
 * error path with its message and line:column, YAML 1.1 number typing
 * (expected values taken from PyYAML's safe_load), and robustness against
 * truncated, bit-flipped and hostile input.
 */
#include "test.h"
#include "config/config.h"

#include <stdint.h>
#include <stdlib.h>

#define PATH "cfg.yml"

static struct alloy_config *parse_ok(const char *yaml, int line)
{
    struct alloy_config *c = NULL;
    struct alloy_err err = {0};
    int rc = alloy_config_parse(yaml, strlen(yaml), PATH, &c, &err);
    if (rc || !c) test_fail(__FILE__, line, "parse failed (%d): %s", rc, err.msg);
    return c;
}
#define PARSE_OK(y) parse_ok((y), __LINE__)

/* Parses yaml expecting `status` and a message starting with "cfg.yml:<where>: " and containing `needle`. */
static void expect_err(const char *yaml, enum alloy_status status, const char *where, const char *needle, int line)
{
    struct alloy_config *c = (struct alloy_config *)1;
    struct alloy_err err = {0};
    int rc = alloy_config_parse(yaml, strlen(yaml), PATH, &c, &err);
    char prefix[64]; /* where "" means a message without a position */
    snprintf(prefix, sizeof prefix, where[0] ? "%s:%s: " : "%s: ", PATH, where);
    if (rc != (int)status || (int)err.status != (int)status)
        test_fail(__FILE__, line, "status %d (%s), expected %d; message: %s", rc, alloy_status_str(rc), status, err.msg);
    if (c != NULL) test_fail(__FILE__, line, "*out not NULL on error");
    if (strncmp(err.msg, prefix, strlen(prefix)) != 0)
        test_fail(__FILE__, line, "message \"%s\" does not start with \"%s\"", err.msg, prefix);
    if (!strstr(err.msg, needle)) test_fail(__FILE__, line, "message \"%s\" does not contain \"%s\"", err.msg, needle);
    if (strchr(err.msg, '\n')) test_fail(__FILE__, line, "message has a newline: %s", err.msg);
    if (rc == 0) alloy_config_free(c);
}
#define EXPECT_ERR(y, st, where, needle) expect_err((y), (st), (where), (needle), __LINE__)

/* Spec §2.3 written out naively: s = t(L-1), i0 = floor(s), i1 = min(L-1, i0+1). */
static double naive_gradient(const double *v, int L, double t)
{
    double s = t * (L - 1);
    int i0 = (int)floor(s);
    int i1 = i0 + 1 < L - 1 ? i0 + 1 : L - 1;
    double f = s - i0;
    return (1 - f) * v[i0] + f * v[i1];
}

static double eval_or_nan(const struct alloy_setting *s, const char *tensor, double t)
{
    double v;
    return s && alloy_setting_eval(s, tensor, t, &v) ? v : NAN;
}

/* ---------------------------------------------------------------- accepted forms */

TEST(config_models_form)
{
    const char *y =
        "models:\n"                                   /* 1 */
        "  - model: org/base\n"                       /* 2 */
        "  - model: ./local/model@v1.0\n"             /* 3 */
        "    parameters:\n"                           /* 4 */
        "      weight: 0.7\n"                         /* 5 */
        "      density: [0.2, 0.8]\n"                 /* 6 */
        "merge_method: ties\n"                        /* 7 */
        "base_model: org/base\n"                      /* 8 */
        "parameters:\n"                               /* 9 */
        "  normalize: true\n"                         /* 10 */
        "  int8_mask: off\n"                          /* 11 */
        "dtype: torch.bfloat16\n"                     /* 12 */
        "out_dtype: float16\n"                        /* 13 */
        "tokenizer_source: union\n"                   /* 14 */
        "chat_template: chatml\n"                     /* 15 */
        "name: my-merge\n";                           /* 16 */
    struct alloy_config *c = PARSE_OK(y);
    if (!c) return;
    CHECK(strcmp(c->merge_method, "ties") == 0);
    CHECK_INT(c->merge_method_pos.line, 7);
    CHECK_INT(c->merge_method_pos.col, 15);
    CHECK_INT(c->from_slices, 0);
    CHECK_INT(c->nslices, 1);
    CHECK_INT(c->slices[0].nsources, 2);
    CHECK(strcmp(c->slices[0].sources[0].model, "org/base") == 0);
    CHECK(strcmp(c->slices[0].sources[1].model, "./local/model@v1.0") == 0);
    CHECK_INT(c->slices[0].sources[0].has_range, 0);
    CHECK_INT(c->slices[0].sources[1].pos.line, 3);
    CHECK_INT(c->slices[0].sources[1].pos.col, 5);
    CHECK_INT(c->slices[0].sources[0].params.n, 0);
    CHECK_INT(c->slices[0].params.n, 0);
    CHECK(c->slices[0].base_model == NULL);
    const struct alloy_params *p = &c->slices[0].sources[1].params;
    CHECK_INT(p->n, 2);
    CHECK(strcmp(p->names[0], "weight") == 0 && strcmp(p->names[1], "density") == 0);
    CHECK_INT(p->pos[1].line, 6);
    CHECK_INT(p->pos[1].col, 7);
    const struct alloy_setting *w = alloy_params_get(p, "weight");
    CHECK(w && w->kind == ALLOY_SETTING_SCALAR && w->value == 0.7);
    const struct alloy_setting *d = alloy_params_get(p, "density");
    CHECK(d && d->kind == ALLOY_SETTING_GRADIENT && d->ngrad == 2 && d->grad[0] == 0.2 && d->grad[1] == 0.8);
    CHECK(d && d->pos.line == 6 && d->pos.col == 16);
    CHECK(alloy_params_get(p, "missing") == NULL);
    CHECK(strcmp(c->base_model, "org/base") == 0);
    CHECK_INT(c->base_model_pos.line, 8);
    CHECK_NEAR(eval_or_nan(alloy_params_get(&c->params, "normalize"), "x", 0), 1, 0);
    CHECK_NEAR(eval_or_nan(alloy_params_get(&c->params, "int8_mask"), "x", 0), 0, 0);
    CHECK(c->has_dtype && c->dtype == ALLOY_DTYPE_BF16);
    CHECK(c->has_out_dtype && c->out_dtype == ALLOY_DTYPE_F16);
    CHECK(strcmp(c->tokenizer_source, "union") == 0);
    CHECK_INT(c->tokenizer_pos.line, 14);
    CHECK(strcmp(c->chat_template, "chatml") == 0);
    CHECK(c->text_len == strlen(y) && memcmp(c->text, y, c->text_len) == 0 && c->text[c->text_len] == 0);
    CHECK(strcmp(c->path, PATH) == 0);
    alloy_config_free(c);
}

TEST(config_slices_form)
{
    const char *y =
        "slices:\n"                                         /* 1 */
        "  - sources:\n"                                    /* 2 */
        "      - model: a\n"                                /* 3 */
        "        layer_range: [0, 16]\n"                    /* 4 */
        "        parameters: {weight: 0.25}\n"              /* 5 */
        "      - model: b@main\n"                           /* 6 */
        "        layer_range: [8, 24]\n"                    /* 7 */
        "    base_model: a\n"                               /* 8 */
        "    residual_weight: 0.1\n"                        /* 9 */
        "    parameters:\n"                                 /* 10 */
        "      t: [0, 1]\n"                                 /* 11 */
        "  - sources:\n"                                    /* 12 */
        "      - {model: b, layer_range: [24, 25]}\n"       /* 13 */
        "merge_method: slerp\n"                             /* 14 */
        "parameters: {t: 0.5}\n"                            /* 15 */
        "dtype: float32\n";                                 /* 16 */
    struct alloy_config *c = PARSE_OK(y);
    if (!c) return;
    CHECK_INT(c->from_slices, 1);
    CHECK_INT(c->nslices, 2);
    const struct alloy_slice *s0 = &c->slices[0], *s1 = &c->slices[1];
    CHECK_INT(s0->nsources, 2);
    CHECK(strcmp(s0->sources[1].model, "b@main") == 0);
    CHECK(s0->sources[0].has_range && s0->sources[0].layer_range[0] == 0 && s0->sources[0].layer_range[1] == 16);
    CHECK(s0->sources[1].layer_range[0] == 8 && s0->sources[1].layer_range[1] == 24);
    CHECK_INT(s0->pos.line, 2);
    CHECK_INT(s0->pos.col, 5);
    CHECK(s0->base_model && strcmp(s0->base_model, "a") == 0);
    CHECK_NEAR(eval_or_nan(alloy_params_get(&s0->sources[0].params, "weight"), "x", 0), 0.25, 0);
    CHECK_NEAR(eval_or_nan(alloy_params_get(&s0->params, "t"), "x", 0.5), 0.5, 1e-15);
    CHECK_INT(s1->nsources, 1);
    CHECK(s1->sources[0].layer_range[0] == 24 && s1->sources[0].layer_range[1] == 25);
    CHECK_INT(s1->sources[0].pos.line, 13);
    CHECK_INT(s1->sources[0].pos.col, 9);
    CHECK(s1->base_model == NULL);
    CHECK(c->base_model == NULL);
    CHECK(c->tokenizer_source == NULL && c->chat_template == NULL && !c->has_out_dtype);
    CHECK(c->has_dtype && c->dtype == ALLOY_DTYPE_F32);
    alloy_config_free(c);
}

TEST(config_model_references)
{
    struct alloy_config *c = PARSE_OK(
        "merge_method: linear\n"
        "models:\n"
        "  - model: {model: {path: org/x, revision: abc123}}\n"
        "  - model: {model: org/y@dev}\n"
        "  - model: {model: {path: /abs/path}, lora: null, override_architecture: ~}\n"
        "  - model: 'quoted name'\n"
        "base_model: {model: {path: org/x, revision: abc123}}\n"
        "tokenizer_source: model:org/tok@r2\n");
    if (c) {
        CHECK(strcmp(c->slices[0].sources[0].model, "org/x@abc123") == 0);
        CHECK(strcmp(c->slices[0].sources[1].model, "org/y@dev") == 0);
        CHECK(strcmp(c->slices[0].sources[2].model, "/abs/path") == 0);
        CHECK(strcmp(c->slices[0].sources[3].model, "quoted name") == 0);
        CHECK(strcmp(c->base_model, "org/x@abc123") == 0);
        CHECK(strcmp(c->tokenizer_source, "org/tok@r2") == 0);
        alloy_config_free(c);
    }
    /* tokenizer: block; its source defaults to union as in mergekit */
    c = PARSE_OK("merge_method: linear\nmodels: [{model: a}]\ntokenizer:\n  source: base\n  tokens: {}\n"
                 "  pad_to_multiple_of: null\n");
    if (c) { CHECK(strcmp(c->tokenizer_source, "base") == 0); CHECK_INT(c->tokenizer_pos.line, 4); alloy_config_free(c); }
    c = PARSE_OK("merge_method: linear\nmodels: [{model: a}]\ntokenizer: {}\n");
    if (c) { CHECK(strcmp(c->tokenizer_source, "union") == 0); alloy_config_free(c); }
    c = PARSE_OK("merge_method: linear\nmodels: [{model: a}]\ntokenizer:\n  source: org/donor\n");
    if (c) { CHECK(strcmp(c->tokenizer_source, "org/donor") == 0); alloy_config_free(c); }
    c = PARSE_OK("merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: base\nbase_model: ~\n");
    if (c) { CHECK(strcmp(c->tokenizer_source, "base") == 0); CHECK(c->base_model == NULL); alloy_config_free(c); }
}

TEST(config_setting_forms)
{
    const char *y =
        "merge_method: linear\n"
        "models: [{model: a}]\n"
        "parameters:\n"
        "  s_int: 2\n"
        "  s_neg: -0.5\n"
        "  s_true: true\n"
        "  s_false: False\n"
        "  s_yes: yes\n"
        "  s_off: OFF\n"
        "  s_exp: 1e-5\n"          /* a string for YAML 1.1, a float for pydantic */
        "  s_quoted: '0.25'\n"
        "  s_octal: 010\n"         /* YAML 1.1 octal: 8 */
        "  s_hex: 0x10\n"
        "  s_us: 1_000\n"
        "  s_b60: 1:30\n"
        "  s_inf: .inf\n"
        "  s_tag: !!float 3\n"
        "  g: [1, 2.5, true]\n"
        "  g1: [7]\n"
        "  c:\n"
        "    - filter: mlp\n"
        "      value: [0, 1]\n"
        "    - {filter: '*', value: 3}\n"
        "    - value: 4\n";
    struct alloy_config *c = PARSE_OK(y);
    if (!c) return;
    const struct alloy_params *p = &c->params;
    static const struct { const char *name; double v; } want[] = {
        {"s_int", 2}, {"s_neg", -0.5}, {"s_true", 1}, {"s_false", 0}, {"s_yes", 1}, {"s_off", 0},
        {"s_exp", 1e-5}, {"s_quoted", 0.25}, {"s_octal", 8}, {"s_hex", 16}, {"s_us", 1000}, {"s_b60", 90},
        {"s_tag", 3},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const struct alloy_setting *s = alloy_params_get(p, want[i].name);
        CHECK_MSG(s && s->kind == ALLOY_SETTING_SCALAR && s->value == want[i].v, "%s", want[i].name);
    }
    const struct alloy_setting *inf = alloy_params_get(p, "s_inf");
    CHECK(inf && isinf(inf->value) && inf->value > 0);
    const struct alloy_setting *g = alloy_params_get(p, "g");
    CHECK(g && g->kind == ALLOY_SETTING_GRADIENT && g->ngrad == 3 && g->grad[2] == 1);
    const struct alloy_setting *g1 = alloy_params_get(p, "g1");
    CHECK(g1 && g1->kind == ALLOY_SETTING_GRADIENT && g1->ngrad == 1);
    CHECK_NEAR(eval_or_nan(g1, "x", 0.3), 7, 0);
    const struct alloy_setting *cs = alloy_params_get(p, "c");
    CHECK(cs && cs->kind == ALLOY_SETTING_COND && cs->nconds == 3);
    if (cs && cs->nconds == 3) {
        CHECK(strcmp(cs->conds[0].filter, "mlp") == 0 && cs->conds[0].value.kind == ALLOY_SETTING_GRADIENT);
        CHECK(strcmp(cs->conds[1].filter, "*") == 0 && cs->conds[1].value.value == 3);
        CHECK(cs->conds[2].filter == NULL && cs->conds[2].value.value == 4);
        CHECK_INT(cs->pos.line, 21);
    }
    /* names keep YAML order */
    CHECK(strcmp(p->names[0], "s_int") == 0 && strcmp(p->names[p->n - 1], "c") == 0);
    alloy_config_free(c);
}

TEST(config_anchors_and_merge_keys)
{
    const char *y =
        "merge_method: ties\n"
        "models:\n"
        "  - model: a\n"
        "    parameters: &p {weight: 0.5, density: 0.3}\n"
        "  - model: b\n"
        "    parameters:\n"
        "      <<: *p\n"
        "      weight: 0.9\n"
        "  - model: c\n"
        "    parameters: *p\n"
        "base_model: a\n";
    struct alloy_config *c = PARSE_OK(y);
    if (!c) return;
    const struct alloy_source *s = c->slices[0].sources;
    CHECK_NEAR(eval_or_nan(alloy_params_get(&s[1].params, "weight"), "x", 0), 0.9, 0);
    CHECK_NEAR(eval_or_nan(alloy_params_get(&s[1].params, "density"), "x", 0), 0.3, 0);
    CHECK_INT(s[1].params.n, 2);
    CHECK_NEAR(eval_or_nan(alloy_params_get(&s[2].params, "weight"), "x", 0), 0.5, 0);
    CHECK_NEAR(eval_or_nan(alloy_params_get(&s[2].params, "density"), "x", 0), 0.3, 0);
    alloy_config_free(c);
    /* list of merges: the first mapping wins (PyYAML) */
    c = PARSE_OK("merge_method: linear\nmodels:\n  - model: a\n    parameters:\n"
                 "      <<: [{weight: 1}, {weight: 2, x: 3}]\n");
    if (c) {
        const struct alloy_params *p = &c->slices[0].sources[0].params;
        CHECK_NEAR(eval_or_nan(alloy_params_get(p, "weight"), "x", 0), 1, 0);
        CHECK_NEAR(eval_or_nan(alloy_params_get(p, "x"), "x", 0), 3, 0);
        alloy_config_free(c);
    }
}

/* ---------------------------------------------------------------- evaluation */

TEST(config_gradient_formula)
{
    /* Spec §2.4 example: 40 layers, t for self_attn [0, 0.5, 0.3, 0.7, 1], layer 10. */
    struct alloy_config *c = PARSE_OK(
        "merge_method: slerp\nbase_model: a\n"
        "slices: [{sources: [{model: a, layer_range: [0, 40]}, {model: b, layer_range: [0, 40]}]}]\n"
        "parameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n    - value: 0.5\n");
    if (!c) return;
    const struct alloy_setting *t = alloy_params_get(&c->params, "t");
    double v = eval_or_nan(t, "model.layers.10.self_attn.q_proj.weight", 10.0 / 39.0);
    CHECK_NEAR(v, 0.4949, 5e-5);
    /* by hand: s = 40/39, f = 1/39, value = (38/39)*0.5 + (1/39)*0.3 */
    CHECK_NEAR(v, (38.0 / 39.0) * 0.5 + (1.0 / 39.0) * 0.3, 1e-15);
    CHECK_NEAR(eval_or_nan(t, "model.layers.10.mlp.up_proj.weight", 10.0 / 39.0), 0.5, 0);
    alloy_config_free(c);

    /* random gradients against the naive formula, including the end points */
    double vals[9];
    struct alloy_setting s = {.kind = ALLOY_SETTING_GRADIENT, .grad = vals};
    srand(7);
    int bad = 0;
    for (int iter = 0; iter < 2000; iter++) {
        int L = 1 + rand() % 9;
        for (int i = 0; i < L; i++) vals[i] = (rand() % 2001 - 1000) / 250.0;
        s.ngrad = (size_t)L;
        double tt = iter % 10 == 0 ? 0 : iter % 10 == 1 ? 1 : (double)rand() / RAND_MAX;
        double got = eval_or_nan(&s, "w", tt), want = naive_gradient(vals, L, tt);
        if (!(fabs(got - want) <= 1e-12 * (1 + fabs(want)))) bad++;
    }
    CHECK_INT(bad, 0);
    /* end points are exact */
    double three[3] = {0.1, 0.2, 0.3};
    s.grad = three;
    s.ngrad = 3;
    CHECK(eval_or_nan(&s, "w", 0) == 0.1);
    CHECK(eval_or_nan(&s, "w", 1) == 0.3);
    CHECK(eval_or_nan(&s, "w", 0.5) == 0.2);
    CHECK_NEAR(eval_or_nan(&s, "w", 0.25), 0.15, 1e-15);
    /* out-of-range t is clamped, never read out of bounds */
    CHECK(eval_or_nan(&s, "w", -3) == 0.1);
    CHECK(eval_or_nan(&s, "w", 7) == 0.3);
    CHECK(eval_or_nan(&s, "w", NAN) == 0.1);
}

TEST(config_filter_precedence)
{
    struct alloy_config *c = PARSE_OK(
        "merge_method: ties\nmodels: [{model: a}]\nparameters:\n"
        "  d:\n"
        "    - filter: layers.1.\n"
        "      value: 1\n"
        "    - filter: mlp\n"
        "      value: [2, 4]\n"
        "    - filter: layers.1\n"
        "      value: 3\n"
        "  only_attn:\n"
        "    - filter: self_attn\n"
        "      value: 9\n"
        "  empty_filter:\n"
        "    - filter: ''\n"
        "      value: 5\n");
    if (!c) return;
    const struct alloy_setting *d = alloy_params_get(&c->params, "d");
    /* first match wins, plain substring (a '.' is not a regex wildcard) */
    CHECK_NEAR(eval_or_nan(d, "model.layers.1.mlp.up_proj.weight", 1), 1, 0);
    CHECK_NEAR(eval_or_nan(d, "model.layers.2.mlp.up_proj.weight", 0.5), 3, 0);
    CHECK_NEAR(eval_or_nan(d, "model.layers.12.mlp.up_proj.weight", 1), 4, 0);
    CHECK_NEAR(eval_or_nan(d, "model.layers.10.self_attn.o_proj.weight", 0), 3, 0);
    CHECK(isnan(eval_or_nan(d, "model.layers.2Xmlp", 0)) == 0);
    CHECK(isnan(eval_or_nan(d, "model.embed_tokens.weight", 0)));   /* no match: unset */
    CHECK(isnan(eval_or_nan(d, "MODEL.LAYERS.1.MLP", 0)));          /* case-sensitive */
    const struct alloy_setting *oa = alloy_params_get(&c->params, "only_attn");
    CHECK_NEAR(eval_or_nan(oa, "model.layers.0.self_attn.q_proj.weight", 0), 9, 0);
    double out = 123;
    CHECK_INT(alloy_setting_eval(oa, "lm_head.weight", 0, &out), 0);
    CHECK(out == 123); /* untouched when unset */
    /* mergekit: an empty filter is a substring of any non-empty name, but an empty name matches nothing */
    const struct alloy_setting *ef = alloy_params_get(&c->params, "empty_filter");
    CHECK_NEAR(eval_or_nan(ef, "x", 0), 5, 0);
    CHECK(isnan(eval_or_nan(ef, "", 0)));
    CHECK(isnan(eval_or_nan(ef, NULL, 0)));
    alloy_config_free(c);
}

TEST(config_yaml_number_typing)
{
    /* expected types/values as PyYAML 6 safe_load gives them */
    static const struct { const char *s; enum alloy_yaml_type t; double v; } cases[] = {
        {"0", ALLOY_YAML_INT, 0},          {"-1", ALLOY_YAML_INT, -1},       {"+7", ALLOY_YAML_INT, 7},
        {"010", ALLOY_YAML_INT, 8},        {"09", ALLOY_YAML_STR, 0},        {"0x1F", ALLOY_YAML_INT, 31},
        {"0b101", ALLOY_YAML_INT, 5},      {"1_000", ALLOY_YAML_INT, 1000},  {"1:30", ALLOY_YAML_INT, 90},
        {"1:30.5", ALLOY_YAML_FLOAT, 90.5}, {"190:20:30", ALLOY_YAML_INT, 685230}, {"1:60", ALLOY_YAML_STR, 0},
        {"1.5", ALLOY_YAML_FLOAT, 1.5},    {"1.", ALLOY_YAML_FLOAT, 1},      {".5", ALLOY_YAML_FLOAT, 0.5},
        {"-.5", ALLOY_YAML_STR, 0},        {"1e5", ALLOY_YAML_STR, 0},       {"1.0e5", ALLOY_YAML_STR, 0},
        {"1.0e+5", ALLOY_YAML_FLOAT, 1e5}, {"1_.5", ALLOY_YAML_FLOAT, 1.5},  {"-.inf", ALLOY_YAML_FLOAT, -INFINITY},
        {"yes", ALLOY_YAML_BOOL, 1},       {"No", ALLOY_YAML_BOOL, 0},       {"ON", ALLOY_YAML_BOOL, 0 + 1},
        {"tRue", ALLOY_YAML_STR, 0},       {"y", ALLOY_YAML_STR, 0},         {"~", ALLOY_YAML_NULL, 0},
        {"", ALLOY_YAML_NULL, 0},          {"Null", ALLOY_YAML_NULL, 0},     {"nULL", ALLOY_YAML_STR, 0},
        {"inf", ALLOY_YAML_STR, 0},        {"0.5.5", ALLOY_YAML_STR, 0},     {"0o10", ALLOY_YAML_STR, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double v = -99;
        enum alloy_yaml_type t = alloy_yaml_resolve(cases[i].s, strlen(cases[i].s), &v);
        CHECK_MSG(t == cases[i].t, "'%s': type %d, expected %d", cases[i].s, t, cases[i].t);
        if (t == ALLOY_YAML_INT || t == ALLOY_YAML_FLOAT || t == ALLOY_YAML_BOOL)
            CHECK_MSG(v == cases[i].v, "'%s': %g, expected %g", cases[i].s, v, cases[i].v);
    }
    double v = 0;
    CHECK(alloy_yaml_resolve(".NaN", 4, &v) == ALLOY_YAML_FLOAT && isnan(v));
    /* pydantic's lax str -> float */
    static const struct { const char *s; int ok; double v; } co[] = {
        {"1e-5", 1, 1e-5}, {" 0.25 ", 1, 0.25}, {"-.5", 1, -0.5}, {"5.", 1, 5}, {"+3", 1, 3}, {"1E+2", 1, 100},
        {"abc", 0, 0}, {"1_0", 0, 0}, {"0x10", 0, 0}, {".", 0, 0}, {"1e", 0, 0}, {"", 0, 0}, {"1 2", 0, 0},
    };
    for (size_t i = 0; i < sizeof co / sizeof co[0]; i++) {
        double x = -99;
        int ok = alloy_yaml_coerce_number(co[i].s, strlen(co[i].s), &x) == 0;
        CHECK_MSG(ok == co[i].ok && (!ok || x == co[i].v), "coerce '%s': ok %d value %g", co[i].s, ok, x);
    }
    CHECK(alloy_yaml_coerce_number("Infinity", 8, &v) == 0 && isinf(v));
    CHECK(alloy_yaml_coerce_number("nan", 3, &v) == 0 && isnan(v));
}

/* ---------------------------------------------------------------- errors */

#define HEAD "merge_method: linear\n"
#define MODELS "models: [{model: a}]\n"

TEST(config_errors_structure)
{
    EXPECT_ERR("", ALLOY_ERR_CONFIG, "", "empty config");
    EXPECT_ERR("# only a comment\n\n", ALLOY_ERR_CONFIG, "", "empty config");
    EXPECT_ERR("---\n", ALLOY_ERR_CONFIG, "", "empty config");
    EXPECT_ERR("- a\n- b\n", ALLOY_ERR_CONFIG, "1:1", "expected a mapping at the top level");
    EXPECT_ERR(MODELS, ALLOY_ERR_CONFIG, "1:1", "top level: missing required key 'merge_method'");
    EXPECT_ERR("merge_method: [a]\n" MODELS, ALLOY_ERR_CONFIG, "1:15", "merge_method: expected a method name");
    EXPECT_ERR(HEAD MODELS "paramters: {}\n", ALLOY_ERR_CONFIG, "3:1",
               "unknown key 'paramters' in the top level (expected one of: merge_method, models,");
    EXPECT_ERR(HEAD MODELS "paramters: {}\n", ALLOY_ERR_CONFIG, "3:1", "did you mean 'parameters'?");
    EXPECT_ERR(HEAD MODELS "embed_slerp: true\n", ALLOY_ERR_CONFIG, "3:1", "unknown key 'embed_slerp'");
    EXPECT_ERR(HEAD, ALLOY_ERR_CONFIG, "1:1", "no models to merge");
    EXPECT_ERR(HEAD "models: []\nslices: []\n", ALLOY_ERR_CONFIG, "2:9", "no models to merge");
    EXPECT_ERR(HEAD MODELS "slices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n", ALLOY_ERR_CONFIG, "3:9",
               "slices: both models: and slices: are given");
    EXPECT_ERR(HEAD "modules:\n  text_decoder:\n    models: [{model: a}]\n", ALLOY_ERR_UNSUPPORTED, "3:3",
               "modules: multi-module configs are not supported yet; use models: or slices:");
    EXPECT_ERR(HEAD "models:\n  - a\n", ALLOY_ERR_CONFIG, "3:5", "models[0]: expected a mapping, found 'a'");
    EXPECT_ERR(HEAD "models: a\n", ALLOY_ERR_CONFIG, "2:9", "models: expected a list of");
    EXPECT_ERR(HEAD "models:\n  - parameters: {weight: 1}\n", ALLOY_ERR_CONFIG, "3:5",
               "models[0]: missing required key 'model'");
    EXPECT_ERR(HEAD "models:\n  - model: a\n    weight: 1\n", ALLOY_ERR_CONFIG, "4:5",
               "unknown key 'weight' in models[0] (expected one of: model, parameters)");
    EXPECT_ERR(HEAD MODELS "dup: 1\ndup: 2\n", ALLOY_ERR_CONFIG, "4:1", "duplicate key 'dup'"); /* before key names */
    EXPECT_ERR(HEAD MODELS "dtype: float16\ndtype: bfloat16\n", ALLOY_ERR_CONFIG, "4:1",
               "duplicate key 'dtype' (first given at line 3, column 1)");
    EXPECT_ERR(HEAD MODELS "parameters: [1, 2]\n", ALLOY_ERR_CONFIG, "3:13",
               "parameters: expected a mapping of parameter names to values, found a list");
    EXPECT_ERR(HEAD MODELS "? [a]\n: 1\n", ALLOY_ERR_CONFIG, "3:3", "mapping keys must be plain strings");
}

TEST(config_errors_slices)
{
    EXPECT_ERR(HEAD "slices:\n  - sources: []\n", ALLOY_ERR_CONFIG, "3:14", "slices[0].sources: expected at least one");
    EXPECT_ERR(HEAD "slices:\n  - base_model: a\n", ALLOY_ERR_CONFIG, "3:5", "slices[0]: missing required key 'sources'");
    EXPECT_ERR(HEAD "slices:\n  - sources: [{model: a, layer_range: [0, 4]}]\n    weight: 1\n", ALLOY_ERR_CONFIG,
               "4:5", "unknown key 'weight' in slices[0] (expected one of: sources, base_model, parameters, "
               "residual_weight)");
    EXPECT_ERR(HEAD "slices:\n  - sources:\n      - model: a\n        layers: [0, 4]\n", ALLOY_ERR_CONFIG, "5:9",
               "unknown key 'layers' in slices[0].sources[0]");
    EXPECT_ERR(HEAD "slices:\n  - sources:\n      - model: a\n", ALLOY_ERR_CONFIG, "4:9",
               "slices[0].sources[0]: missing required key 'layer_range'");
    EXPECT_ERR(HEAD "slices:\n  - sources:\n      - layer_range: [0, 1]\n", ALLOY_ERR_CONFIG, "4:9",
               "slices[0].sources[0]: missing required key 'model'");
    const char *lr_cases[][3] = {
        {"4", "4:33", "layer_range: expected [start, end] (two layer indices, end exclusive), found the number 4"},
        {"[0, 1, 2]", "4:33", "found a list of 3"},
        {"[0, 1.5]", "4:37", "slices[0].sources[0].layer_range[1]: expected a layer index (an integer), found the "
                             "number 1.5"},
        {"[x, 4]", "4:34", "layer_range[0]: expected a layer index (an integer), found 'x'"},
        {"[-1, 4]", "4:33", "expected 0 <= start < end, found [-1, 4]"},
        {"[4, 4]", "4:33", "expected 0 <= start < end, found [4, 4]"},
        {"[5, 1]", "4:33", "expected 0 <= start < end, found [5, 1]"},
        {"[0, 99999999999]", "4:37", "layer_range[1]: expected a layer index"},
    };
    for (size_t i = 0; i < sizeof lr_cases / sizeof lr_cases[0]; i++) {
        char y[256];
        snprintf(y, sizeof y, HEAD "slices:\n  - sources:\n      - {model: a, layer_range: %s}\n", lr_cases[i][0]);
        EXPECT_ERR(y, ALLOY_ERR_CONFIG, lr_cases[i][1], lr_cases[i][2]);
    }
    /* integral floats and quoted integers are accepted like pydantic does */
    struct alloy_config *c = PARSE_OK(HEAD "slices: [{sources: [{model: a, layer_range: [2.0, '6']}]}]\n");
    if (c) { CHECK(c->slices[0].sources[0].layer_range[0] == 2 && c->slices[0].sources[0].layer_range[1] == 6); alloy_config_free(c); }
    EXPECT_ERR(HEAD "slices:\n  - sources:\n      - {model: a, layer_range: [0, 8]}\n"
               "      - {model: b, layer_range: [8, 12]}\n", ALLOY_ERR_CONFIG, "5:33",
               "slices[0].sources[1].layer_range: spans 4 layers but sources[0] spans 8 (all inputs to a slice must "
               "contain the same number of layers)");
    EXPECT_ERR(HEAD "slices:\n  - sources: [{model: a, layer_range: [0, 4]}]\n    residual_weight: heavy\n",
               ALLOY_ERR_CONFIG, "4:22", "slices[0].residual_weight: expected a number, found 'heavy'");
}

TEST(config_errors_model_refs)
{
    EXPECT_ERR(HEAD "models:\n  - model: 'org/m+'\n", ALLOY_ERR_CONFIG, "3:12",
               "models[0].model: invalid model reference 'org/m+': the adapter path after '+' is empty");
    EXPECT_ERR(HEAD "models:\n  - model: 'org/m+a@r1@r2'\n", ALLOY_ERR_CONFIG, "3:12",
               "invalid model reference 'org/m+a@r1@r2': more than one '@'");
    EXPECT_ERR(HEAD "models:\n  - model: a+b+c\n", ALLOY_ERR_CONFIG, "3:12",
               "models[0].model: can't parse model reference 'a+b+c': more than one '+'");
    EXPECT_ERR(HEAD "models:\n  - model: org/m@r1@r2\n", ALLOY_ERR_CONFIG, "3:12",
               "invalid model reference 'org/m@r1@r2': more than one '@'");
    EXPECT_ERR(HEAD "models:\n  - model: '@main'\n", ALLOY_ERR_CONFIG, "3:12", "the model path is empty");
    EXPECT_ERR(HEAD "models:\n  - model: 'org/m@'\n", ALLOY_ERR_CONFIG, "3:12", "the revision after '@' is empty");
    EXPECT_ERR(HEAD "models:\n  - model: ~\n", ALLOY_ERR_CONFIG, "3:12",
               "models[0].model: expected a model reference (PATH[@REVISION]), found null");
    EXPECT_ERR(HEAD "models:\n  - model: [a]\n", ALLOY_ERR_CONFIG, "3:12", "expected a model reference");
    EXPECT_ERR(HEAD "models:\n  - model:\n      model: a\n      lora: [b]\n", ALLOY_ERR_CONFIG, "5:13",
               "models[0].model.lora: expected the path of a LoRA adapter folder");
    EXPECT_ERR(HEAD "models:\n  - model:\n      model: a\n      override_architecture: LlamaForCausalLM\n",
               ALLOY_ERR_UNSUPPORTED, "5:30", "models[0].model.override_architecture: override_architecture is not "
               "supported yet");
    EXPECT_ERR(HEAD "models:\n  - model:\n      model: {path: a, rev: b}\n", ALLOY_ERR_CONFIG, "4:24",
               "unknown key 'rev' in models[0].model.model (expected one of: path, revision)");
    EXPECT_ERR(HEAD "models:\n  - model:\n      model: {revision: b}\n", ALLOY_ERR_CONFIG, "4:14",
               "models[0].model.model: missing required key 'path'");
    EXPECT_ERR(HEAD "models:\n  - model:\n      model: {path: 'a@b'}\n", ALLOY_ERR_CONFIG, "4:21",
               "models[0].model.model.path: 'a@b' contains '@'");
    EXPECT_ERR(HEAD "models:\n  - model:\n      path: a\n", ALLOY_ERR_CONFIG, "4:7",
               "unknown key 'path' in models[0].model (expected one of: model, lora, override_architecture)");
    EXPECT_ERR(HEAD MODELS "base_model: '+lora'\n", ALLOY_ERR_CONFIG, "3:13", "base_model: invalid model reference "
               "'+lora': the model path is empty");
    EXPECT_ERR(HEAD MODELS "tokenizer_source: 'model:'\n", ALLOY_ERR_CONFIG, "3:19",
               "tokenizer_source: invalid model reference '': the model path is empty");
}

TEST(config_errors_top_values)
{
    EXPECT_ERR(HEAD MODELS "dtype: float64\n", ALLOY_ERR_CONFIG, "3:8",
               "dtype: expected bfloat16, float16 or float32 (optionally with a torch. prefix), found 'float64'");
    EXPECT_ERR(HEAD MODELS "out_dtype: torch.int64\n", ALLOY_ERR_UNSUPPORTED, "3:12", "out_dtype: int64 is not supported");
    EXPECT_ERR(HEAD MODELS "dtype: {a: 1}\n", ALLOY_ERR_CONFIG, "3:8", "dtype: expected a string, found a mapping");
    EXPECT_ERR(HEAD MODELS "chat_template: '{{ hi }}'\n", ALLOY_ERR_CONFIG, "3:16",
               "chat_template: invalid chat template '{{ hi }}'");
    EXPECT_ERR(HEAD MODELS "chat_template: 'a long template without braces'\n", ALLOY_ERR_CONFIG, "3:16",
               "invalid chat template");
    struct alloy_config *c = PARSE_OK(HEAD MODELS "chat_template: \"{% for m in messages %}{{ m.content }}{% endfor %}\"\n");
    if (c) { CHECK(strncmp(c->chat_template, "{% for", 6) == 0); alloy_config_free(c); }
    EXPECT_ERR(HEAD MODELS "tokenizer_source: base\ntokenizer: {source: union}\n", ALLOY_ERR_CONFIG, "4:12",
               "tokenizer: tokenizer_source: and tokenizer: are both given");
    EXPECT_ERR(HEAD MODELS "tokenizer:\n  tokens:\n    <|im_start|>: {force: true}\n", ALLOY_ERR_CONFIG, "5:19",
               "tokenizer.tokens.<|im_start|>: missing required key 'source'");
    EXPECT_ERR(HEAD MODELS "tokenizer:\n  tokens:\n    x: {source: a, force: maybe}\n", ALLOY_ERR_CONFIG, "5:27",
               "tokenizer.tokens.x.force: expected true or false, found 'maybe'");
    EXPECT_ERR(HEAD MODELS "tokenizer:\n  tokens:\n    x: {source: {kind: model_token, model: a}}\n", ALLOY_ERR_CONFIG,
               "5:17", "tokenizer.tokens.x.source: give exactly one of token_id and token, found neither");
    EXPECT_ERR(HEAD MODELS "tokenizer:\n  tokens:\n    x: {source: {kind: model_token, model: a, token_id: 1, token: b}}\n",
               ALLOY_ERR_CONFIG, "5:17", "give exactly one of token_id and token, found both");
    EXPECT_ERR(HEAD MODELS "tokenizer:\n  tokens:\n    x: {source: {kind: model_token, model: a, token_id: -1}}\n",
               ALLOY_ERR_CONFIG, "5:57", "tokenizer.tokens.x.source.token_id: expected a whole number >= 0, found the number -1");
    EXPECT_ERR(HEAD MODELS "tokenizer:\n  tokens:\n    x: {source: {kind: ones}}\n", ALLOY_ERR_CONFIG, "5:24",
               "tokenizer.tokens.x.source.kind: expected model_token or zero, found 'ones'");
    EXPECT_ERR(HEAD MODELS "tokenizer:\n  tokens:\n    x: {source: {kind: zero, model: a}}\n", ALLOY_ERR_CONFIG, "5:30",
               "unknown key 'model' in tokenizer.tokens.x.source");
    EXPECT_ERR(HEAD MODELS "tokenizer:\n  tokens: [a]\n", ALLOY_ERR_CONFIG, "4:11",
               "tokenizer.tokens: expected a mapping of tokens, found a list");
    EXPECT_ERR(HEAD MODELS "tokenizer:\n  pad_to_multiple_of: 6.5\n", ALLOY_ERR_CONFIG, "4:23",
               "tokenizer.pad_to_multiple_of: expected a whole number >= 0, found the number 6.5");
    c = PARSE_OK(HEAD MODELS "tokenizer:\n  pad_to_multiple_of: 64\n  tokens:\n"
                 "    <|im_start|>: {source: a, force: true}\n"
                 "    t1: {source: {kind: model_token, model: org/b@r1, token_id: 64}}\n"
                 "    t2: {source: {kind: model_token, model: a, token: <s>}}\n"
                 "    t3: {source: {kind: zero}}\n");
    if (c) {
        CHECK(strcmp(c->tokenizer_source, "union") == 0);
        CHECK_INT(c->pad_to_multiple_of, 64);
        CHECK_INT(c->ntokens, 4);
        if (c->ntokens == 4) {
            CHECK(strcmp(c->tokens[0].token, "<|im_start|>") == 0 && c->tokens[0].kind == ALLOY_TOKEN_MODEL &&
                  strcmp(c->tokens[0].model, "a") == 0 && c->tokens[0].force == 1);
            CHECK(c->tokens[1].kind == ALLOY_TOKEN_MODEL_TOKEN && strcmp(c->tokens[1].model, "org/b@r1") == 0 &&
                  c->tokens[1].token_id == 64 && !c->tokens[1].src_token && !c->tokens[1].force);
            CHECK(c->tokens[2].kind == ALLOY_TOKEN_MODEL_TOKEN && c->tokens[2].token_id == -1 &&
                  strcmp(c->tokens[2].src_token, "<s>") == 0);
            CHECK(c->tokens[3].kind == ALLOY_TOKEN_ZERO && !c->tokens[3].model);
            CHECK_INT(c->tokens[3].pos.line, 9);
        }
        alloy_config_free(c);
    }
    EXPECT_ERR(HEAD MODELS "tokenizer:\n  sorce: base\n", ALLOY_ERR_CONFIG, "4:3",
               "unknown key 'sorce' in tokenizer (expected one of: source, tokens, pad_to_multiple_of); did you mean "
               "'source'?");
    EXPECT_ERR(HEAD MODELS "name: [x]\n", ALLOY_ERR_CONFIG, "3:7", "name: expected a string, found a list");
}

TEST(config_errors_parameters)
{
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight:\n    filter: mlp\n    value: 1\n", ALLOY_ERR_CONFIG, "5:5",
               "parameters.weight: a {filter, value} entry must be inside a list");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight: heavy\n", ALLOY_ERR_CONFIG, "4:11",
               "parameters.weight: expected a number, found 'heavy'");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight: '0.5x'\n", ALLOY_ERR_CONFIG, "4:11", "expected a number, found '0.5x'");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight:\n", ALLOY_ERR_CONFIG, "4:10",
               "parameters.weight: expected a number, found null");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight: []\n", ALLOY_ERR_CONFIG, "4:11",
               "expected a number or a list of numbers, found an empty list");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight: [1, x]\n", ALLOY_ERR_CONFIG, "4:15",
               "parameters.weight[1]: expected a number, found 'x'");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight: [1, [2]]\n", ALLOY_ERR_CONFIG, "4:15",
               "parameters.weight[1]: a gradient is a list of numbers, found a list");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight: [1, {value: 2}]\n", ALLOY_ERR_CONFIG, "4:15",
               "parameters.weight[1]: a list holds either numbers (a gradient) or {filter, value} entries, not both");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight: [{value: 2}, 1]\n", ALLOY_ERR_CONFIG, "4:24",
               "parameters.weight[1]: a list holds either numbers");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight:\n    - filter: mlp\n", ALLOY_ERR_CONFIG, "5:7",
               "parameters.weight[0]: missing required key 'value'");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight:\n    - filter: mlp\n      val: 1\n", ALLOY_ERR_CONFIG, "6:7",
               "unknown key 'val' in parameters.weight[0] (expected one of: filter, value); did you mean 'value'?");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight:\n    - value: [{value: 1}]\n", ALLOY_ERR_CONFIG, "5:14",
               "parameters.weight[0].value: expected a number or a list of numbers (conditional entries do not nest)");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight:\n    - value: abc\n", ALLOY_ERR_CONFIG, "5:14",
               "parameters.weight[0].value: expected a number, found 'abc'");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight:\n    - {filter: [mlp], value: 1}\n", ALLOY_ERR_CONFIG, "5:16",
               "parameters.weight[0].filter: expected a string, found a list");
    EXPECT_ERR(HEAD "models:\n  - model: a\n    parameters:\n      weight: [0.1, 'x']\n", ALLOY_ERR_CONFIG, "5:21",
               "models[0].parameters.weight[1]: expected a number, found 'x'");
    EXPECT_ERR(HEAD "slices:\n  - sources: [{model: a, layer_range: [0, 1]}]\n    parameters: {t: no-way}\n",
               ALLOY_ERR_CONFIG, "4:21", "slices[0].parameters.t: expected a number, found 'no-way'");
    EXPECT_ERR(HEAD MODELS "parameters:\n  weight: !!int abc\n", ALLOY_ERR_CONFIG, "4:11",
               "'abc' does not match its explicit YAML tag");
}

TEST(config_errors_yaml)
{
    EXPECT_ERR(HEAD "models: [{model: a}\n", ALLOY_ERR_CONFIG, "3:1", "invalid YAML: did not find expected ',' or ']'");
    EXPECT_ERR(HEAD "models:\n\t- model: a\n", ALLOY_ERR_CONFIG, "3:1",
               "invalid YAML: found character that cannot start any token");
    EXPECT_ERR(HEAD "models: 'unterminated\n", ALLOY_ERR_CONFIG, "3:1", "invalid YAML: found unexpected end of stream");
    EXPECT_ERR(HEAD MODELS "---\nmerge_method: ties\n", ALLOY_ERR_CONFIG, "3:1",
               "expected a single YAML document, found a second one");
    EXPECT_ERR(HEAD "models: [{model: *nope}]\n", ALLOY_ERR_CONFIG, "2:18", "unknown alias '*nope'");
    EXPECT_ERR(HEAD MODELS "parameters: &p {x: *p}\n", ALLOY_ERR_CONFIG, "3:20",
               "alias '*p' refers to a value that contains it");
    EXPECT_ERR(HEAD MODELS "parameters: !!python/object:os.system {x: 1}\n", ALLOY_ERR_CONFIG, "3:13",
               "unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'");
    const char bad_utf8[] = HEAD MODELS "name: \xff\xfe\n";
    EXPECT_ERR(bad_utf8, ALLOY_ERR_CONFIG, "3:7", "invalid YAML: invalid leading UTF-8 octet (byte 0xff)");
    /* an embedded NUL byte in the text (not a C string, so use the length) */
    const char nul[] = "merge_method: li\0near\n" MODELS;
    struct alloy_config *c = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_config_parse(nul, sizeof nul - 1, PATH, &c, &err), ALLOY_ERR_CONFIG);
    CHECK(c == NULL);
    CHECK_STR_CONTAINS(err.msg, "cfg.yml:1:17: invalid YAML: control characters are not allowed");
    /* 100 nested lists: refused at level 65, no deep recursion anywhere */
    char deep[512];
    size_t n = (size_t)snprintf(deep, sizeof deep, HEAD MODELS "parameters: {x: ");
    for (int i = 0; i < 100; i++) deep[n++] = '[';
    deep[n] = 0;
    EXPECT_ERR(deep, ALLOY_ERR_CONFIG, "3:79", "values nested more than 64 levels deep");
}

/* Alias expansion: a small text that would expand to billions of values. */
TEST(config_alias_bomb)
{
    char y[4096];
    size_t n = (size_t)snprintf(y, sizeof y, HEAD MODELS "parameters:\n  a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1]\n");
    for (int i = 1; i < 20; i++)
        n += (size_t)snprintf(y + n, sizeof y - n, "  a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i,
                              i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    struct alloy_config *c = NULL;
    struct alloy_err err = {0};
    int rc = alloy_config_parse(y, n, PATH, &c, &err);
    CHECK_INT(rc, ALLOY_ERR_CONFIG);
    CHECK(c == NULL);
    /* either a gradient-of-lists error (the schema rejects nested lists) or the budget, never a hang */
    CHECK(strstr(err.msg, "a gradient is a list of numbers") || strstr(err.msg, "expands"));
    /* schema-valid expansion: one 1000-value gradient aliased by 5000 parameters */
    size_t cap = 200000;
    char *b = malloc(cap);
    if (!b) return;
    n = (size_t)snprintf(b, cap, HEAD MODELS "parameters:\n  g: &g [");
    for (int i = 0; i < 1000; i++) n += (size_t)snprintf(b + n, cap - n, "%s1", i ? "," : "");
    n += (size_t)snprintf(b + n, cap - n, "]\n");
    for (int i = 0; i < 5000; i++) n += (size_t)snprintf(b + n, cap - n, "  p%d: *g\n", i);
    rc = alloy_config_parse(b, n, PATH, &c, &err);
    CHECK(rc == ALLOY_ERR_CONFIG && c == NULL);
    CHECK_STR_CONTAINS(err.msg, "expands (through aliases) to more than");
    /* one 1 MB model name aliased 70 times: the copied-bytes budget */
    free(b);
    cap = (1u << 20) + 4096;
    if (!(b = malloc(cap))) return;
    n = (size_t)snprintf(b, cap, HEAD "models:\n  - model: &s ");
    memset(b + n, 'm', 1u << 20);
    n += 1u << 20;
    n += (size_t)snprintf(b + n, cap - n, "\n");
    for (int i = 0; i < 70; i++) n += (size_t)snprintf(b + n, cap - n, "  - model: *s\n");
    rc = alloy_config_parse(b, n, PATH, &c, &err);
    CHECK(rc == ALLOY_ERR_CONFIG && c == NULL);
    CHECK_STR_CONTAINS(err.msg, "expands (through aliases) to more than");
    free(b);
    /* merge keys chained: each mapping merges the previous one */
    n = (size_t)snprintf(y, sizeof y, HEAD MODELS "parameters:\n  <<: &m0 {k0: 1}\n");
    size_t m = 0;
    char big[200000];
    m = (size_t)snprintf(big, sizeof big, "%s", y);
    for (int i = 1; i < 3000 && m < sizeof big - 100; i++)
        m += (size_t)snprintf(big + m, sizeof big - m, "  x%d: &m%d {<<: *m%d, k%d: 1}\n", i, i, i - 1, i);
    rc = alloy_config_parse(big, m, PATH, &c, &err);
    CHECK(rc != 0 && c == NULL);
    CHECK_STR_CONTAINS(err.msg, "merge keys expand to more than");
}

TEST(config_load_file)
{
    const char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/merge.yml", dir);
    const char *y = "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 2]\n";
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(y, f);
    fclose(f);
    struct alloy_config *c = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_config_load(path, &c, &err), 0);
    if (c) {
        CHECK(strcmp(c->path, path) == 0);
        CHECK(strcmp(c->text, y) == 0);
        CHECK(strcmp(c->merge_method, "passthrough") == 0);
        alloy_config_free(c);
    }
    snprintf(path, sizeof path, "%s/bad.yml", dir);
    f = fopen(path, "w");
    if (f) { fputs("merge_method: linear\nmodels: [{model: a}]\nfoo: 1\n", f); fclose(f); }
    CHECK_INT(alloy_config_load(path, &c, &err), ALLOY_ERR_CONFIG);
    char want[600];
    snprintf(want, sizeof want, "%s:3:1: unknown key 'foo'", path);
    CHECK_STR_CONTAINS(err.msg, want);
    snprintf(path, sizeof path, "%s/missing.yml", dir);
    CHECK_INT(alloy_config_load(path, &c, &err), ALLOY_ERR_IO);
    CHECK(c == NULL);
    alloy_config_free(NULL);
}

/* ---------------------------------------------------------------- robustness */

static const char *g_valid =
    "# gradient slerp\n"
    "slices:\n"
    "  - sources:\n"
    "      - model: org/a@main\n"
    "        layer_range: [0, 32]\n"
    "        parameters: &w {weight: [0.1, 0.9], density: 0.5}\n"
    "      - model: {model: {path: org/b, revision: v2}}\n"
    "        layer_range: [0, 32]\n"
    "        parameters: {<<: *w, weight: 1}\n"
    "    parameters:\n"
    "      t:\n"
    "        - filter: self_attn\n"
    "          value: [0, 0.5, 0.3, 0.7, 1]\n"
    "        - {filter: '*', value: 0.5}\n"
    "merge_method: slerp\n"
    "base_model: org/a@main\n"
    "parameters: {normalize: yes, lambda: 1.0e+0, epsilon: 1e-3}\n"
    "dtype: torch.bfloat16\n"
    "out_dtype: float16\n"
    "tokenizer: {source: \"model:org/a@main\"}\n"
    "chat_template: \"{% for m in messages %}{{ m['content'] }}{% endfor %}\"\n";

TEST(config_valid_reference_parses)
{
    struct alloy_config *c = PARSE_OK(g_valid);
    if (!c) return;
    CHECK(strcmp(c->tokenizer_source, "org/a@main") == 0);
    CHECK(strcmp(c->slices[0].sources[1].model, "org/b@v2") == 0);
    CHECK_NEAR(eval_or_nan(alloy_params_get(&c->slices[0].sources[1].params, "density"), "x", 0), 0.5, 0);
    CHECK_NEAR(eval_or_nan(alloy_params_get(&c->slices[0].sources[0].params, "weight"), "x", 0.5), 0.5, 1e-15);
    CHECK_NEAR(eval_or_nan(alloy_params_get(&c->params, "epsilon"), "x", 0), 1e-3, 0);
    alloy_config_free(c);
}

static int parse_any(const char *buf, size_t len)
{
    struct alloy_config *c = NULL;
    struct alloy_err err = {0};
    int rc = alloy_config_parse(buf, len, PATH, &c, &err);
    int sane = rc == 0 ? c != NULL : (c == NULL && err.msg[0] && (int)err.status == rc);
    /* touch everything a consumer would */
    if (c) {
        for (size_t i = 0; i < c->nslices; i++)
            for (size_t j = 0; j < c->slices[i].nsources; j++) {
                const struct alloy_params *p = &c->slices[i].sources[j].params;
                for (size_t k = 0; k < p->n; k++) {
                    double v;
                    alloy_setting_eval(&p->values[k], "model.layers.3.mlp.weight", 0.3, &v);
                }
            }
        alloy_config_free(c);
    }
    return sane;
}

TEST(config_truncations_and_flips_never_crash)
{
    size_t len = strlen(g_valid);
    char *buf = malloc(len + 1);
    if (!buf) return;
    int insane = 0, ok_prefixes = 0;
    for (size_t n = 0; n <= len; n++) {
        memcpy(buf, g_valid, n); /* not NUL-terminated on purpose: the parser must honour len */
        insane += !parse_any(buf, n);
        struct alloy_config *c = NULL;
        if (alloy_config_parse(buf, n, PATH, &c, NULL) == 0) { ok_prefixes++; alloy_config_free(c); }
    }
    CHECK_INT(insane, 0);
    CHECK(ok_prefixes >= 1); /* the whole text at least */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, g_valid, len);
        int flips = 1 + iter % 4;
        for (int f = 0; f < flips; f++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            size_t at = (size_t)(x % len);
            if (iter % 3 == 0) buf[at] ^= (char)(1u << ((x >> 32) % 8));
            else buf[at] = "[]{}:,-&*!|>'\"#%@`?\n \t0.e+"[(x >> 40) % 27];
        }
        insane += !parse_any(buf, len);
    }
    CHECK_INT(insane, 0);
    free(buf);
}
