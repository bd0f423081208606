/*
 * test_sinks.c — the two sinks agree: a merge into memory (a model returned
 * by alloy_merge with out_model) holds exactly the tensors, bytes and
 * config.json the folder sink writes, for a config given as a file, as YAML
 * text or as a parsed config object; and a failed merge leaves no model.
 */
#include "test.h"
#include "alloy.h"

#include <stdlib.h>

#define M(name) "tests/data/tiny-llama/" name

static const char g_yaml[] = "merge_method: ties\nbase_model: " M("base") "\nmodels:\n"
                             "  - model: " M("code") "\n    parameters: {weight: 1.0, density: 0.5}\n"
                             "  - model: " M("prose") "\n    parameters: {weight: 0.5, density: 0.7}\n"
                             "dtype: bfloat16\n";

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = calloc(1, 1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    (void)n;
    fclose(f);
    return buf;
}

/* Every tensor of a in b with the same dtype, shape and bytes, and the same count. */
static void check_same_model(const struct alloy_model *a, const struct alloy_model *b)
{
    CHECK_INT(alloy_model_count(a), alloy_model_count(b));
    for (size_t i = 0; i < alloy_model_count(a); i++) {
        const struct alloy_tensor *ta = alloy_model_tensor(a, i), *tb = alloy_model_find(b, ta->name);
        CHECK_MSG(tb != NULL, "tensor %s missing", ta->name);
        if (!tb) continue;
        CHECK_INT(ta->dtype, tb->dtype);
        CHECK_INT(ta->nbytes, tb->nbytes);
        CHECK_MSG(ta->nbytes == tb->nbytes && memcmp(ta->data, tb->data, ta->nbytes) == 0, "tensor %s differs",
                  ta->name);
    }
}

static struct alloy_model *merge_memory(struct alloy_merge_options *o, struct alloy_err *err)
{
    struct alloy_model *m = NULL;
    o->out_model = &m;
    o->threads = 2;
    o->has_seed = 1;
    o->seed = 7;
    int rc = alloy_merge(o, err);
    CHECK_MSG(rc == ALLOY_OK, "merge into memory: %s", err->msg);
    return m;
}

TEST(sinks_memory_equals_folder)
{
    const char *dir = test_tmpdir();
    char cfg[600], out[600], cmd[2000], cfgjson[700];
    snprintf(cfg, sizeof cfg, "%s/ties.yml", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    test_write_text(cfg, g_yaml);
    snprintf(cmd, sizeof cmd, "%s merge %s %s --quiet --threads 2 --random-seed 7", test_alloy_bin(), cfg, out);
    CHECK_INT(test_run(cmd, NULL), 0);
    struct alloy_model *folder = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_model_open(out, &folder, &err) == ALLOY_OK, "%s", err.msg);
    snprintf(cfgjson, sizeof cfgjson, "%s/config.json", out);
    char *want_config = read_text(cfgjson);

    struct alloy_config *parsed = NULL;
    CHECK_MSG(alloy_config_parse(g_yaml, strlen(g_yaml), "inline", &parsed, &err) == ALLOY_OK, "%s", err.msg);
    for (int how = 0; how < 3 && folder; how++) { /* file, text, parsed config */
        struct alloy_merge_options o;
        alloy_merge_options_init(&o);
        if (how == 0) o.config_path = cfg;
        if (how == 1) o.config_text = g_yaml;
        if (how == 2) o.config = parsed;
        struct alloy_model *mem = merge_memory(&o, &err);
        if (!mem) continue;
        check_same_model(folder, mem);
        check_same_model(mem, folder);
        CHECK(want_config && alloy_model_config_text(mem) && !strcmp(want_config, alloy_model_config_text(mem)));
        CHECK_STR_CONTAINS(alloy_model_dir(mem), "tiny-llama/base"); /* where its tokenizer comes from */
        alloy_model_close(mem);
    }
    alloy_config_free(parsed);
    free(want_config);
    alloy_model_close(folder);
}

TEST(sinks_memory_failure_leaves_no_model)
{
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.config_text = "merge_method: linear\nmodels:\n  - model: " M("code") "\n    parameters: {weight: 1}\n"
                    "  - model: tests/data/no-such-model\n    parameters: {weight: 1}\n";
    struct alloy_model *m = (struct alloy_model *)&o; /* must be overwritten */
    o.out_model = &m;
    struct alloy_err err = {0};
    CHECK(alloy_merge(&o, &err) != ALLOY_OK);
    CHECK(m == NULL);
    CHECK_STR_CONTAINS(err.msg, "no-such-model");
    o.config_text = "merge_method: linear\nmodels: [\n";
    CHECK_INT(alloy_merge(&o, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "<config>");
}
