/*
 * test_eval.c — `alloy eval` end to end: the bundled tiny models against the
 * reference losses in tests/data/results.json (all 5 models x 2 texts, within
 * 1e-4), the window/BOS protocol details, and the command line (output
 * formats, usage errors exit 2, bad input exits 1 with a one-line message).
 *
 * The CLI tests run only when `alloy eval --help` works in the binary under
 * test (ALLOY_BIN); the library-level tests always run.
 */
#include "test.h"
#include "eval/eval.h"

#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

static const char *k_models[] = {"base", "base-f32", "code", "prose", "mixchat"};
static const char *k_texts[] = {"code", "prose"};

static int32_t *read_bytes_as_ids(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    int32_t *ids = malloc(sizeof(int32_t) * (1 << 20));
    size_t k = 0;
    int c;
    while ((c = fgetc(f)) != EOF && k < (1 << 20)) ids[k++] = c;
    fclose(f);
    *n = k;
    return ids;
}

TEST(eval_reference_losses_all_models)
{
    json_error_t jerr;
    json_t *ref = json_load_file(test_data("results.json"), 0, &jerr);
    CHECK_MSG(ref != NULL, "results.json: %s", jerr.text);
    if (!ref) return;
    struct alloy_pool *pool = alloy_pool_new(0);
    double maxdiff = 0, tok_s_sum = 0;
    int runs = 0;
    for (size_t mi = 0; mi < 5; mi++) {
        char dir[256];
        snprintf(dir, sizeof dir, "tests/data/tiny-llama/%s", k_models[mi]);
        struct alloy_llama *m = NULL;
        struct alloy_tokenizer *tok = NULL;
        struct alloy_err err = {0};
        int rc = alloy_llama_open(dir, &m, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        if (rc) continue;
        char tpath[300];
        snprintf(tpath, sizeof tpath, "%s/tokenizer.json", dir);
        rc = alloy_tokenizer_load(tpath, &tok, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        CHECK_INT(alloy_eval_default_ctx(alloy_llama_cfg(m)), 128);
        CHECK_INT(alloy_eval_bos(m, -2), 256);
        for (size_t ti = 0; !rc && ti < 2; ti++) {
            char path[300];
            snprintf(path, sizeof path, "tests/data/eval_%s.txt", k_texts[ti]);
            size_t n = 0, nb = 0;
            int32_t *bytes = read_bytes_as_ids(path, &nb), *ids = NULL;
            FILE *f = fopen(path, "rb");
            char *text = malloc(nb + 1);
            size_t got = f ? fread(text, 1, nb, f) : 0;
            if (f) fclose(f);
            CHECK_INT(got, nb);
            rc = alloy_tokenizer_encode(tok, text, nb, path, &ids, &n, &err);
            CHECK_MSG(rc == 0, "%s", err.msg);
            CHECK_INT(n, 65536);
            CHECK(n == nb && !memcmp(ids, bytes, n * sizeof *ids)); /* the fixture rule: ids = bytes */
            struct alloy_eval_options o;
            struct alloy_eval_result r;
            alloy_eval_options_init(&o);
            o.pool = pool;
            rc = alloy_eval_ids(m, ids, n, path, &o, &r, &err);
            CHECK_MSG(rc == 0, "%s", err.msg);
            char key[64];
            snprintf(key, sizeof key, "%s_loss", k_texts[ti]);
            double want = json_real_value(json_object_get(json_object_get(ref, k_models[mi]), key));
            snprintf(key, sizeof key, "%s_ppl", k_texts[ti]);
            double want_ppl = json_real_value(json_object_get(json_object_get(ref, k_models[mi]), key));
            CHECK_MSG(fabs(r.nll - want) <= 1e-4, "%s on %s: nll %.9f, reference %.9f", k_models[mi], k_texts[ti], r.nll,
                      want);
            CHECK_NEAR(r.ppl / want_ppl, 1.0, 1e-4);
            CHECK_INT(r.tokens, 65536);
            CHECK_INT(r.windows, 512);
            if (fabs(r.nll - want) > maxdiff) maxdiff = fabs(r.nll - want);
            if (r.seconds > 0) tok_s_sum += (double)r.tokens / r.seconds;
            runs++;
            free(ids);
            free(bytes);
            free(text);
        }
        alloy_tokenizer_free(tok);
        alloy_llama_close(m);
    }
    CHECK_INT(runs, 10);
    if (getenv("ALLOY_TEST_VERBOSE"))
        printf("     reference agreement: max |nll - results.json| = %.3g over %d runs; %.0f tokens/s (%d threads)\n",
               maxdiff, runs, runs ? tok_s_sum / runs : 0, alloy_pool_size(pool));
    alloy_pool_free(pool);
    json_decref(ref);
}

TEST(eval_protocol_windows_bos_threads)
{
    struct alloy_llama *m = NULL;
    struct alloy_err err = {0};
    int rc = alloy_llama_open("tests/data/tiny-llama/base", &m, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    size_t n = 0;
    int32_t *ids = read_bytes_as_ids("tests/data/eval_prose.txt", &n);
    struct alloy_eval_options o;
    struct alloy_eval_result a, b, c;
    alloy_eval_options_init(&o);
    o.ctx = 100;
    o.max_windows = 7;
    /* single thread vs pool: bit-identical (per-window sums added in window order) */
    CHECK_INT(alloy_eval_ids(m, ids, 1000, "t", &o, &a, &err), 0);
    struct alloy_pool *pool = alloy_pool_new(3);
    o.pool = pool;
    CHECK_INT(alloy_eval_ids(m, ids, 1000, "t", &o, &b, &err), 0);
    CHECK(a.nll == b.nll);
    CHECK_INT(a.windows, 7);
    CHECK_INT(a.tokens, 700);
    /* a trailing partial window is dropped: 1099 tokens -> 10 windows of 100 */
    o.max_windows = 0;
    CHECK_INT(alloy_eval_ids(m, ids, 1099, "t", &o, &c, &err), 0);
    CHECK_INT(c.windows, 10);
    CHECK_INT(c.tokens, 1000);
    /* the first 7 windows of that run are the run above: windows are independent */
    struct alloy_eval_result d;
    o.max_windows = 7;
    CHECK_INT(alloy_eval_ids(m, ids, 1099, "t", &o, &d, &err), 0);
    CHECK(d.nll == a.nll);
    /* no BOS: the first token of each window is context, ctx-1 predictions per window */
    o.bos = -1;
    CHECK_INT(alloy_eval_ids(m, ids, 1000, "t", &o, &d, &err), 0);
    CHECK_INT(d.tokens, 7 * 99);
    CHECK(d.nll > 0 && d.nll != a.nll);
    /* errors */
    o.bos = -2;
    o.ctx = 128;
    CHECK_INT(alloy_eval_ids(m, ids, 100, "short.txt", &o, &d, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "short.txt: 100 tokens: expected at least one window of 128 tokens (ctx)");
    ids[5] = 300;
    CHECK_INT(alloy_eval_ids(m, ids, 1000, "t.tok", &o, &d, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "t.tok: token 5: id 300 is outside the vocabulary");
    o.bos = 999;
    ids[5] = 1;
    CHECK_INT(alloy_eval_ids(m, ids, 1000, "t", &o, &d, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "bos: id 999 is outside the vocabulary (vocab_size 260)");
    alloy_pool_free(pool);
    free(ids);
    alloy_llama_close(m);
}

TEST(eval_read_ids)
{
    const char *dir = test_tmpdir();
    char path[400];
    snprintf(path, sizeof path, "%s/ids.txt", dir);
    FILE *f = fopen(path, "w");
    fputs("  1 2\n3\t40000 \n", f);
    fclose(f);
    int32_t *ids = NULL;
    size_t n = 0;
    struct alloy_err err = {0};
    CHECK_INT(alloy_eval_read_ids(path, &ids, &n, &err), 0);
    CHECK_INT(n, 4);
    if (n == 4) { CHECK_INT(ids[0], 1); CHECK_INT(ids[3], 40000); }
    free(ids);
    f = fopen(path, "w");
    fputs("1 2 -3", f);
    fclose(f);
    CHECK_INT(alloy_eval_read_ids(path, &ids, &n, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "ids.txt: token 2: expected a non-negative integer id, found \"-3\"");
    CHECK_INT(alloy_eval_read_ids("/nonexistent/ids.txt", &ids, &n, &err), ALLOY_ERR_IO);
    CHECK_STR_CONTAINS(err.msg, "/nonexistent/ids.txt: cannot open");
}

/* ------------------------------------------------------------ the command line */

static int cli_ready(void)
{
    static int ready = -1;
    if (ready < 0) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "%s eval --help", test_alloy_bin());
        ready = test_run(cmd, NULL) == 0;
        if (!ready) printf("note: '%s eval' is not available; skipping the eval CLI tests\n", test_alloy_bin());
    }
    return ready;
}

static int run_eval(const char *args, char **out)
{
    size_t len = strlen(test_alloy_bin()) + strlen(args) + 16;
    char *cmd = malloc(len);
    snprintf(cmd, len, "%s eval %s", test_alloy_bin(), args);
    int rc = test_run(cmd, out);
    free(cmd);
    return rc;
}

/* Makes a model folder linking the fixture's weights, with the given config/tokenizer text (NULL: the fixture's). */
static const char *make_model(const char *config, const char *tokenizer)
{
    const char *dir = test_tmpdir();
    char abs[PATH_MAX], cmd[6 * PATH_MAX];
    if (!realpath("tests/data/tiny-llama/base", abs)) return dir;
    /* the weights are linked from inside the folder: a link out of it is refused (docs/security.md) */
    snprintf(cmd, sizeof cmd, "cp '%s/model.safetensors' '%s/weights.bin' && ln -s weights.bin '%s/model.safetensors' && "
             "cp '%s/config.json' '%s/tokenizer.json' '%s/'", abs, dir, dir, abs, abs, dir);
    if (system(cmd) != 0) return dir;
    char path[PATH_MAX];
    FILE *f;
    if (config) {
        snprintf(path, sizeof path, "%s/config.json", dir);
        if ((f = fopen(path, "w"))) { fputs(config, f); fclose(f); }
    }
    if (tokenizer) {
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        if ((f = fopen(path, "w"))) { fputs(tokenizer, f); fclose(f); }
    }
    return dir;
}

static void expect_cli(const char *args, int status, const char *needle)
{
    char *out = NULL;
    int rc = run_eval(args, &out);
    CHECK_MSG(rc == status, "alloy eval %s: exit %d, expected %d; output: %s", args, rc, status, out ? out : "");
    CHECK_STR_CONTAINS(out, needle);
    if (status == 1) { /* one line */
        const char *nl = out ? strchr(out, '\n') : NULL;
        CHECK_MSG(nl && !nl[1], "alloy eval %s: expected one line, got: %s", args, out ? out : "");
    }
    free(out);
}

TEST(eval_cli_help_and_usage)
{
    if (!cli_ready()) return;
    expect_cli("--help", 0, "usage: alloy eval MODEL...");
    expect_cli("-h", 0, "alloy eval tests/data/tiny-llama/base tests/data/tiny-llama/code");
    expect_cli("", 2, "expected at least one MODEL");
    expect_cli("tests/data/tiny-llama/base", 2, "expected at least one --text FILE or --tokens FILE");
    expect_cli("tests/data/tiny-llama/base --text", 2, "option --text needs a value");
    expect_cli("tests/data/tiny-llama/base --text x --frobnicate", 2, "unknown option '--frobnicate'");
    expect_cli("tests/data/tiny-llama/base --text x --ctx abc", 2, "--ctx: expected 1..1048576, got 'abc'");
    expect_cli("tests/data/tiny-llama/base --text x --threads 0", 2, "--threads: expected 1..1024");
    expect_cli("tests/data/tiny-llama/base --text x --bos -1", 2, "--bos: expected a token id or 'none'");
    expect_cli("tests/data/tiny-llama/base --text x --json=1", 2, "option --json takes no value");
}

TEST(eval_cli_json_and_table)
{
    if (!cli_ready()) return;
    char *out = NULL;
    int rc = run_eval("tests/data/tiny-llama/base tests/data/tiny-llama/code --text tests/data/eval_code.txt "
                      "--text=tests/data/eval_prose.txt --max-windows 16 --json --quiet --threads 2", &out);
    CHECK_INT(rc, 0);
    json_error_t jerr;
    json_t *arr = out ? json_loads(out, 0, &jerr) : NULL;
    CHECK_MSG(json_is_array(arr) && json_array_size(arr) == 4, "JSON output: %s", out ? out : "");
    /* the same numbers through the library */
    struct alloy_pool *pool = alloy_pool_new(2);
    for (size_t i = 0; arr && i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i);
        const char *model = json_string_value(json_object_get(o, "model")), *text = json_string_value(json_object_get(o, "text"));
        CHECK_STR_CONTAINS(model, i < 2 ? "tiny-llama/base" : "tiny-llama/code");
        CHECK_STR_CONTAINS(text, i % 2 ? "eval_prose.txt" : "eval_code.txt");
        CHECK_INT(json_integer_value(json_object_get(o, "tokens")), 16 * 128);
        double nll = json_number_value(json_object_get(o, "nll")), ppl = json_number_value(json_object_get(o, "ppl"));
        CHECK_NEAR(ppl, exp(nll), 1e-9 * ppl);
        struct alloy_llama *m = NULL;
        struct alloy_err err = {0};
        size_t n = 0;
        int32_t *ids = read_bytes_as_ids(text, &n);
        if (model && alloy_llama_open(model, &m, &err) == 0) {
            struct alloy_eval_options opt;
            struct alloy_eval_result r;
            alloy_eval_options_init(&opt);
            opt.max_windows = 16;
            opt.pool = pool;
            CHECK_INT(alloy_eval_ids(m, ids, n, text, &opt, &r, &err), 0);
            CHECK_NEAR(nll, r.nll, 1e-12);
            alloy_llama_close(m);
        }
        free(ids);
    }
    alloy_pool_free(pool);
    json_decref(arr);
    free(out);

    rc = run_eval("tests/data/tiny-llama/base tests/data/tiny-llama/prose --text tests/data/eval_code.txt "
                  "--text tests/data/eval_prose.txt --max-windows 4 --threads 1", &out);
    CHECK_INT(rc, 0);
    CHECK_STR_CONTAINS(out, "model");
    CHECK_STR_CONTAINS(out, "eval_code.txt");
    CHECK_STR_CONTAINS(out, "eval_prose.txt");
    CHECK_STR_CONTAINS(out, "average");
    CHECK_STR_CONTAINS(out, "tests/data/tiny-llama/prose");
    CHECK_STR_CONTAINS(out, "tokens/s");
    CHECK_STR_CONTAINS(out, "ctx 128");
    CHECK_MSG(out && !strchr(out, '\r'), "a progress bar was drawn although stderr is not a terminal");
    free(out);
}

TEST(eval_cli_tokens_bos_ctx)
{
    if (!cli_ready()) return;
    const char *dir = test_tmpdir();
    char text[400], toks[400], args[1200];
    snprintf(text, sizeof text, "%s/head.txt", dir);
    snprintf(toks, sizeof toks, "%s/head.tok", dir);
    size_t n = 0;
    int32_t *ids = read_bytes_as_ids("tests/data/eval_code.txt", &n);
    FILE *ft = fopen(text, "wb"), *fk = fopen(toks, "w");
    for (size_t i = 0; i < 1000; i++) {
        fputc(ids[i], ft);
        fprintf(fk, "%d%c", ids[i], i % 17 == 16 ? '\n' : ' ');
    }
    fclose(ft);
    fclose(fk);
    free(ids);
    /* --tokens with the byte ids gives exactly the --text result; 1000 tokens, ctx 96 -> 10 windows */
    char *out = NULL;
    snprintf(args, sizeof args, "tests/data/tiny-llama/base --text %s --tokens %s --ctx 96 --json --quiet", text, toks);
    CHECK_INT(run_eval(args, &out), 0);
    json_t *arr = out ? json_loads(out, 0, NULL) : NULL;
    CHECK(json_array_size(arr) == 2);
    if (json_array_size(arr) == 2) {
        json_t *a = json_array_get(arr, 0), *b = json_array_get(arr, 1);
        CHECK_INT(json_integer_value(json_object_get(a, "tokens")), 960);
        CHECK(json_number_value(json_object_get(a, "nll")) == json_number_value(json_object_get(b, "nll")));
    }
    json_decref(arr);
    free(out);
    /* --bos none: ctx-1 predictions per window */
    snprintf(args, sizeof args, "tests/data/tiny-llama/base --tokens %s --ctx 96 --bos none --json --quiet", toks);
    CHECK_INT(run_eval(args, &out), 0);
    arr = out ? json_loads(out, 0, NULL) : NULL;
    CHECK_INT(json_integer_value(json_object_get(json_array_get(arr, 0), "tokens")), 10 * 95);
    json_decref(arr);
    free(out);
}

TEST(eval_cli_bad_input)
{
    if (!cli_ready()) return;
    char args[2048], want[1024];
    expect_cli("tests/data/tiny-llama/base --text /nonexistent/x.txt", 1, "alloy: error: /nonexistent/x.txt: cannot open");
    expect_cli("/nonexistent/model --text tests/data/eval_code.txt", 1, "alloy: error: /nonexistent/model");

    const char *d = make_model("{\"model_type\": \"llama\",", NULL);
    snprintf(args, sizeof args, "%s --text tests/data/eval_code.txt", d);
    snprintf(want, sizeof want, "alloy: error: %s/config.json: not valid JSON", d);
    expect_cli(args, 1, want);

    d = make_model("{\"model_type\": \"gpt2\", \"n_embd\": 128}", NULL);
    snprintf(args, sizeof args, "%s --text tests/data/eval_code.txt", d);
    snprintf(want, sizeof want, "alloy: error: %s/config.json: model_type: \"gpt2\" is not supported (llama, mistral, "
             "mixtral, qwen2, qwen2_moe, deepseek, qwen3, qwen3_moe, gemma are)", d);
    expect_cli(args, 1, want);

    d = make_model("{\"model_type\":\"llama\",\"vocab_size\":260,\"hidden_size\":128,\"intermediate_size\":344,"
                   "\"num_hidden_layers\":5,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"bos_token_id\":256,"
                   "\"max_position_embeddings\":256}", NULL);
    snprintf(args, sizeof args, "%s --text tests/data/eval_code.txt", d);
    snprintf(want, sizeof want, "alloy: error: %s: model.layers.4.input_layernorm.weight: tensor not found (expected shape [128])", d);
    expect_cli(args, 1, want);

    d = make_model(NULL, "{\"model\": {\"type\": \"BPE\", \"vocab\": 3}}");
    snprintf(args, sizeof args, "%s --text tests/data/eval_code.txt", d);
    snprintf(want, sizeof want, "alloy: error: %s/tokenizer.json: model.vocab: expected an object of token -> id, found a number", d);
    expect_cli(args, 1, want);

    d = make_model(NULL, "not json");
    snprintf(args, sizeof args, "%s --text tests/data/eval_code.txt", d);
    snprintf(want, sizeof want, "alloy: error: %s/tokenizer.json: not valid JSON", d);
    expect_cli(args, 1, want);

    const char *t = test_tmpdir();
    char tok[512];
    snprintf(tok, sizeof tok, "%s/bad.tok", t);
    FILE *f = fopen(tok, "w");
    fputs("1 2 x3 4\n", f);
    fclose(f);
    snprintf(args, sizeof args, "tests/data/tiny-llama/base --tokens %s", tok);
    snprintf(want, sizeof want, "alloy: error: %s: token 2: expected a non-negative integer id, found \"x3\"", tok);
    expect_cli(args, 1, want);

    expect_cli("tests/data/tiny-llama/base --text tests/data/eval_code.txt --ctx 100000 --quiet", 1,
               "eval_code.txt: 65536 tokens: expected at least one window of 100000 tokens (ctx)");
}
