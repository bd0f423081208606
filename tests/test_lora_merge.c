/*
 * test_lora_merge.c — `alloy lora merge`: the config reader
 * (src/config/lora_merge_config.c) — every option, each misuse refused with one
 * "file:line:col: key: expected, found" line.
 */
#include "test.h"
#include "config/lora_merge_config.h"

#include <stdlib.h>

static int parse(const char *text, struct alloy_lora_merge_config **c, struct alloy_err *err)
{
    return alloy_lora_merge_config_parse(text, strlen(text), "m.yml", c, err);
}

TEST(lora_config_reads_every_option)
{
    struct alloy_lora_merge_config *c = NULL;
    struct alloy_err err = {0};
    CHECK_INT(parse("merge_method: ties_svd\n"
                    "models:\n"
                    "  - model: a\n"
                    "    parameters: {weight: 0.75}\n"
                    "  - model: dir/b\n"
                    "    parameters:\n"
                    "      weight: -2\n"
                    "rank: 12\n"
                    "density: 0.25\n"
                    "majority_sign_method: frequency\n"
                    "svd_clamp: 0.99\n",
                    &c, &err),
              0);
    CHECK_MSG(c != NULL, "%s", err.msg);
    if (!c) return;
    CHECK(strcmp(c->method->name, "ties_svd") == 0 && c->method->svd && c->method->ties);
    CHECK_INT(c->ninputs, 2);
    CHECK(strcmp(c->inputs[0].adapter, "a") == 0 && c->inputs[0].weight == 0.75);
    CHECK(strcmp(c->inputs[1].adapter, "dir/b") == 0 && c->inputs[1].weight == -2);
    CHECK_INT(c->rank, 12);
    CHECK(c->density == 0.25 && c->frequency == 1 && c->svd_clamp == 0.99);
    alloy_lora_merge_config_free(c);

    CHECK_INT(parse("merge_method: cat\nmodels:\n  - model: a\n    parameters: {weight: 1}\n", &c, &err), 0);
    CHECK(c && c->method->cat && c->rank == 0 && c->density == 1 && c->frequency == 0 && c->svd_clamp == 0);
    alloy_lora_merge_config_free(c);
}

TEST(lora_config_errors_name_the_key)
{
    static const struct { const char *yaml, *want; } cases[] = {
        {"merge_method: slerp\nmodels:\n  - model: a\n    parameters: {weight: 1}\n",
         "m.yml:1:15: merge_method: expected one of: cat, linear"},
        {"merge_method: cat\nmodel:\n  - model: a\n", "m.yml:2:1: unknown key 'model' in the top level"},
        {"merge_method: cat\nmodels: [\n", "m.yml:3:1: invalid YAML"},
        {"merge_method: cat\nmodels: []\n", "models: expected a non-empty list"},
        {"merge_method: cat\nmodels:\n  - model: a\n", "m.yml:3:5: models[0].parameters: expected {weight: W}"},
        {"merge_method: cat\nmodels:\n  - model: a\n    parameters: {weight: x}\n",
         "models[0].parameters.weight: expected a number, found 'x'"},
        {"merge_method: cat\nmodels:\n  - model: a\n    parameters: {weight: 1, density: 0.5}\n",
         "unknown key 'density' in models[0].parameters"},
        {"merge_method: ties\nmodels:\n  - model: a\n    parameters: {weight: 1}\n",
         "density: merge_method ties needs density:"},
        {"merge_method: dare_linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\ndensity: 1.5\n",
         "m.yml:5:10: density: expected a number in (0, 1], found 1.5"},
        {"merge_method: cat\nmodels:\n  - model: a\n    parameters: {weight: 1}\ndensity: 0.5\n",
         "density: used only by the ties, dare and magnitude_prune types, found it with merge_method cat"},
        {"merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\nrank: 4\n",
         "rank: used only by the svd types"},
        {"merge_method: svd\nmodels:\n  - model: a\n    parameters: {weight: 1}\nrank: 4.5\n",
         "rank: expected a whole number, found 4.5"},
        {"merge_method: ties_svd\nmodels:\n  - model: a\n    parameters: {weight: 1}\ndensity: 0.5\n"
         "majority_sign_method: most\n",
         "majority_sign_method: expected total or frequency, found 'most'"},
        {"merge_method: svd\nmodels:\n  - model: a\n    parameters: {weight: 1}\nmajority_sign_method: total\n",
         "majority_sign_method: used only by the ties types"},
        {"", "m.yml: empty config"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct alloy_lora_merge_config *c = NULL;
        struct alloy_err err = {0};
        int rc = parse(cases[i].yaml, &c, &err);
        CHECK_MSG(rc == ALLOY_ERR_CONFIG && c == NULL, "case %zu: status %d", i, rc);
        CHECK_STR_CONTAINS(err.msg, cases[i].want);
        CHECK(strchr(err.msg, '\n') == NULL);
    }
}
