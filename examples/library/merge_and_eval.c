/*
 * merge_and_eval.c — liballoy in one page: merge two fine-tunes in memory and
 * measure how well the result kept the skill of each, without writing a file.
 *
 *   cc merge_and_eval.c $(pkg-config --cflags --libs alloy) -o merge_and_eval
 *   ./merge_and_eval [DATA_DIR]        (DATA_DIR: alloy's tests/data, the default)
 *
 * It parses a linear config given as text over the bundled tiny Llama models
 * (base, code, prose), merges it into memory (out_model), and evaluates the
 * base and the merged model on the Python text; exits 1 on any error.
 */
#include <alloy.h>

#include <stdio.h>
#include <stdlib.h>

static int fail(const char *what, int rc, const struct alloy_err *err)
{
    fprintf(stderr, "merge_and_eval: %s: %s (%s)\n", what, err->msg, alloy_status_str((enum alloy_status)rc));
    return 1;
}

/* Prints the loss of model m on the text in `path`. */
static int evaluate(const char *name, const struct alloy_model *m, const char *path, struct alloy_pool *pool)
{
    struct alloy_err err = {0};
    struct alloy_evaluator *ev = NULL;
    struct alloy_eval_options o;
    struct alloy_eval_result r;
    char *text = NULL;
    size_t len = 0;
    int rc = alloy_eval_read_text(path, &text, &len, &err);
    if (!rc) rc = alloy_evaluator_new(m, &ev, &err);
    if (!rc) {
        alloy_eval_options_init(&o);
        o.pool = pool;
        rc = alloy_evaluate_text(ev, text, len, path, &o, &r, &err);
    }
    if (!rc) printf("%-7s nll %.5f  ppl %.4f  (%llu tokens)\n", name, r.nll, r.ppl, (unsigned long long)r.tokens);
    alloy_evaluator_free(ev);
    free(text);
    return rc ? fail(name, rc, &err) : 0;
}

int main(int argc, char **argv)
{
    const char *data = argc > 1 ? argv[1] : "tests/data";
    char config[1024], base_dir[512], code_text[512];
    snprintf(config, sizeof config,
             "merge_method: linear\n"
             "models:\n"
             "  - model: %s/tiny-llama/code\n"
             "    parameters: {weight: 0.5}\n"
             "  - model: %s/tiny-llama/prose\n"
             "    parameters: {weight: 0.5}\n"
             "dtype: float32\n",
             data, data);
    snprintf(base_dir, sizeof base_dir, "%s/tiny-llama/base", data);
    snprintf(code_text, sizeof code_text, "%s/eval_code.txt", data);

    struct alloy_err err = {0};
    struct alloy_model *base = NULL, *merged = NULL;
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.config_text = config;     /* or o.config: a struct alloy_config from alloy_config_parse/alloy_config_new */
    o.out_model = &merged;      /* keep the result in memory */
    o.threads = 2;
    int rc = alloy_merge(&o, &err);
    if (rc) return fail("merge", rc, &err);
    printf("merged %zu tensors in memory\n", alloy_model_count(merged));

    rc = alloy_model_open(base_dir, &base, &err);
    if (rc) {
        alloy_model_close(merged);
        return fail(base_dir, rc, &err);
    }
    struct alloy_pool *pool = alloy_pool_new(2);
    int status = evaluate("base", base, code_text, pool) | evaluate("merged", merged, code_text, pool);
    alloy_pool_free(pool);
    alloy_model_close(base);
    alloy_model_close(merged);
    return status;
}
