/*
 * test_tokenizer_union.c — tokenizer merging (mergekit §6): the cases of
 * mergekit's tests/test_tokenizer.py as golden cases, with their tokenizers
 * and models built here, a chat fine-tune of the bundled tiny Llama that
 * adds <|im_start|>/<|im_end|>, and the refusals.
 *
 * Models of the §6.4 cases: 64 tokens <unk>, <s>, </s>, _tok_3.._tok_63
 * (the first three added special tokens, as LlamaTokenizerFast adds them);
 * chatml adds <|im_start|>, <|im_end|> at 64, 65 (66 rows); padded has 4
 * <UNUSED_i> past its config vocab_size 64. Embedding row r, column c of a
 * model with seed s is s + r + c/8 (lm_head: its negation), so the expected
 * value of every output row is written down from the rules, not computed
 * by the code under test.
 */
#include "alloy.h"
#include "test.h"
#include "plan/plan.h"
#include "plan/vocab.h"

#include <jansson.h>
#include <stdlib.h>
#include <unistd.h>

#define COLS 4

struct spec {
    const char *name;
    float seed;
    int rows, config_vocab;
    const char *const *extra; /* added tokens from id 64 */
    int nextra, extra_special;
    int alt5;                 /* 1: token 5 is _alt_5 instead of _tok_5 */
};

static float emb(float seed, int r, int c) { return seed + (float)r + (float)c / 8; }

/* A tokenizer.json of 64 BPE tokens plus the extra added tokens. */
static char *tokenizer_json(const struct spec *s)
{
    size_t cap = 16384, n = 0;
    char *b = malloc(cap);
    if (!b) return NULL;
#define EMIT(...) (n += (size_t)snprintf(b + n, cap - n, __VA_ARGS__))
    EMIT("{\"version\": \"1.0\", \"added_tokens\": [");
    static const char *const special[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++)
        EMIT("%s{\"id\": %d, \"content\": \"%s\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
             "\"normalized\": false, \"special\": true}", i ? ", " : "", i, special[i]);
    for (int i = 0; i < s->nextra; i++)
        EMIT(", {\"id\": %d, \"content\": \"%s\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
             "\"normalized\": %s, \"special\": %s}", 64 + i, s->extra[i], s->extra_special ? "false" : "true",
             s->extra_special ? "true" : "false");
    EMIT("], \"normalizer\": null, \"pre_tokenizer\": null, \"model\": {\"type\": \"BPE\", \"vocab\": {");
    for (int i = 0; i < 64 + s->nextra; i++) {
        if (i < 3) EMIT("%s\"%s\": %d", i ? ", " : "", special[i], i);
        else if (i < 64) EMIT(", \"_%s_%d\": %d", i == 5 && s->alt5 ? "alt" : "tok", i, i);
        else EMIT(", \"%s\": %d", s->extra[i - 64], i);
    }
    EMIT("}, \"merges\": []}}");
#undef EMIT
    return b;
}

static void make_model(const char *dir, const struct spec *s)
{
    float *e = malloc(sizeof *e * (size_t)s->rows * COLS), *h = malloc(sizeof *h * (size_t)s->rows * COLS);
    float w[COLS * COLS], norm[COLS];
    for (int r = 0; r < s->rows; r++)
        for (int c = 0; c < COLS; c++) e[r * COLS + c] = emb(s->seed, r, c), h[r * COLS + c] = -emb(s->seed, r, c);
    for (int i = 0; i < COLS * COLS; i++) w[i] = s->seed;
    for (int i = 0; i < COLS; i++) norm[i] = 1;
    struct test_tensor t[] = {
        {"model.embed_tokens.weight", "F32", 2, {s->rows, COLS}, e},
        {"model.layers.0.mlp.down_proj.weight", "F32", 2, {COLS, COLS}, w},
        {"model.norm.weight", "F32", 1, {COLS}, norm},
        {"lm_head.weight", "F32", 2, {s->rows, COLS}, h},
    };
    char config[256], path[600];
    snprintf(config, sizeof config, "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
             "\"vocab_size\": %d, \"hidden_size\": %d, \"num_hidden_layers\": 1}", s->config_vocab, COLS);
    CHECK_INT(test_write_model(dir, t, 4, config), 0);
    char *tok = tokenizer_json(s);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    CHECK_INT(test_write_text(path, tok), 0);
    free(tok);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    CHECK_INT(test_write_text(path, "{\"tokenizer_class\": \"LlamaTokenizerFast\", \"bos_token\": \"<s>\"}"), 0);
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    CHECK_INT(test_write_text(path, "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}"), 0);
    free(e);
    free(h);
}

static const char *const g_chat[] = {"<|im_start|>", "<|im_end|>"};
static const char *const g_unused[] = {"<UNUSED_0>", "<UNUSED_1>", "<UNUSED_2>", "<UNUSED_3>"};
static const struct spec g_base = {"base", 0, 64, 64, NULL, 0, 0, 0};
static const struct spec g_chatml = {"chatml", 1000, 66, 66, g_chat, 2, 0, 0};
static const struct spec g_padded = {"padded", 2000, 64, 64, g_unused, 4, 0, 0};
static const struct spec g_chatml2 = {"chatml2", 3000, 66, 66, g_chat, 2, 0, 1};

static char g_dir[300];      /* this test's folder */
static char g_paths[4][600]; /* its models, made on first use */

/* Every test starts here: a fresh folder (test_tmpdir's buffer is reused by each call). */
static void setup(void)
{
    snprintf(g_dir, sizeof g_dir, "%s", test_tmpdir());
    memset(g_paths, 0, sizeof g_paths);
}

/* The folder of model s under this test's folder, made on first use. */
static const char *model(const struct spec *s)
{
    char (*paths)[600] = g_paths;
    const struct spec *all[] = {&g_base, &g_chatml, &g_padded, &g_chatml2};
    for (int i = 0; i < 4; i++)
        if (all[i] == s) {
            snprintf(paths[i], sizeof paths[i], "%s/%s", g_dir, s->name);
            if (access(paths[i], F_OK) != 0) make_model(paths[i], s);
            return paths[i];
        }
    return NULL;
}

/* Runs alloy merge on `yaml` (models: the listed specs, weight 1, base the first) into <tmp>/out. */
static int run_merge(const char *method, const struct spec *const *ms, int n, const char *extra_yaml, char **log)
{
    char yaml[4096], cfg[700], cmd[2048];
    size_t k = (size_t)snprintf(yaml, sizeof yaml, "merge_method: %s\nbase_model: %s\ndtype: float32\nmodels:\n",
                                method, model(ms[0]));
    for (int i = 0; i < n; i++)
        k += (size_t)snprintf(yaml + k, sizeof yaml - k, "  - model: %s\n    parameters: {weight: 1.0}\n", model(ms[i]));
    snprintf(yaml + k, sizeof yaml - k, "%s", extra_yaml);
    snprintf(cfg, sizeof cfg, "%s/config.yml", g_dir);
    CHECK_INT(test_write_text(cfg, yaml), 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s/out && %s merge %s %s/out --quiet", g_dir, test_alloy_bin(), cfg,
             g_dir);
    return test_run(cmd, log);
}

struct out {
    struct alloy_model *m;
    json_t *tok, *tc, *config;
    const float *embed, *head;
    long long rows;
};

static json_t *load(const char *name)
{
    char path[700];
    snprintf(path, sizeof path, "%s/out/%s", g_dir, name);
    json_t *j = json_load_file(path, 0, NULL);
    CHECK_MSG(j != NULL, "%s unreadable", path);
    return j;
}

static int open_out(struct out *o)
{
    char path[700];
    struct alloy_err err = {0};
    memset(o, 0, sizeof *o);
    snprintf(path, sizeof path, "%s/out", g_dir);
    if (alloy_model_open(path, &o->m, &err)) { CHECK_MSG(0, "%s", err.msg); return -1; }
    const struct alloy_tensor *e = alloy_model_find(o->m, "model.embed_tokens.weight");
    const struct alloy_tensor *h = alloy_model_find(o->m, "lm_head.weight");
    if (!e || !h || e->dtype != ALLOY_DTYPE_F32 || e->shape[1] != COLS) { CHECK(0); return -1; }
    o->embed = (const float *)e->data;
    o->head = (const float *)h->data;
    o->rows = e->shape[0];
    CHECK_INT(h->shape[0], o->rows);
    o->tok = load("tokenizer.json");
    o->tc = load("tokenizer_config.json");
    o->config = load("config.json");
    return o->tok && o->tc && o->config ? 0 : -1;
}

static void close_out(struct out *o)
{
    alloy_model_close(o->m);
    json_decref(o->tok);
    json_decref(o->tc);
    json_decref(o->config);
}

/* The output id of token s: from model.vocab or added_tokens; -1 when absent. */
static long long out_id(const struct out *o, const char *s)
{
    const json_t *v = json_object_get(json_object_get(json_object_get(o->tok, "model"), "vocab"), s);
    if (v) return json_integer_value(v);
    const json_t *a;
    size_t i;
    json_array_foreach(json_object_get(o->tok, "added_tokens"), i, a)
        if (strcmp(json_string_value(json_object_get(a, "content")), s) == 0) return json_integer_value(json_object_get(a, "id"));
    return -1;
}

static size_t out_size(const struct out *o)
{
    size_t n = json_object_size(json_object_get(json_object_get(o->tok, "model"), "vocab"));
    const json_t *a;
    size_t i;
    json_array_foreach(json_object_get(o->tok, "added_tokens"), i, a)
        if (!json_object_get(json_object_get(json_object_get(o->tok, "model"), "vocab"),
                             json_string_value(json_object_get(a, "content")))) n++;
    return n;
}

/* Row `token` of the output's embedding (and negated lm_head) equals want[c] for every column. */
static void check_row(const struct out *o, const char *token, const float *want, int line)
{
    long long id = out_id(o, token);
    if (id < 0 || id >= o->rows) { test_fail(__FILE__, line, "token %s: id %lld", token, id); return; }
    for (int c = 0; c < COLS; c++) {
        if (fabsf(o->embed[id * COLS + c] - want[c]) > 1e-3f || fabsf(-o->head[id * COLS + c] - want[c]) > 1e-3f)
            test_fail(__FILE__, line, "token %s col %d: embed %g, -lm_head %g, want %g", token, c,
                      (double)o->embed[id * COLS + c], (double)-o->head[id * COLS + c], (double)want[c]);
    }
}
#define CHECK_ROW(o, tok, want) check_row(o, tok, want, __LINE__)

/* want = mean over the (seed, row) pairs. */
static void mean_of(float *want, int n, const float *seeds, const int *rows)
{
    for (int c = 0; c < COLS; c++) {
        double s = 0;
        for (int i = 0; i < n; i++) s += emb(seeds[i], rows[i], c);
        want[c] = (float)(s / n);
    }
}

static long long config_vocab(const struct out *o) { return json_integer_value(json_object_get(o->config, "vocab_size")); }

TEST(tokunion_no_setting_and_base)
{
    setup();
    const struct spec *ms[] = {&g_base, &g_padded, &g_chatml};
    char *log = NULL, path[700];
    CHECK_MSG(run_merge("linear", ms, 3, "", &log) == 0, "%s", log);
    free(log);
    /* no tokenizer setting: the base's files are copied as they are */
    snprintf(path, sizeof path, "%s/out/tokenizer.json", g_dir);
    char *got = test_read_file(path, NULL), *base_text = tokenizer_json(&g_base);
    CHECK(got && base_text && strcmp(got, base_text) == 0);
    free(got);
    free(base_text);
    CHECK_MSG(run_merge("linear", ms, 3, "tokenizer_source: base\n", &log) == 0, "%s", log);
    free(log);
    struct out o;
    if (open_out(&o) == 0) {
        CHECK_INT(out_size(&o), 64);
        CHECK_INT(json_array_size(json_object_get(o.tok, "added_tokens")), 3);
        CHECK_INT(o.rows, 64);
        CHECK_INT(config_vocab(&o), 64);
        CHECK_INT(out_id(&o, "<|im_start|>"), -1);
        float want[COLS], seeds[] = {0, 2000, 1000};
        int rows[] = {7, 7, 7};
        mean_of(want, 3, seeds, rows);
        CHECK_ROW(&o, "_tok_7", want);
    }
    close_out(&o);
}

TEST(tokunion_union_and_model_source)
{
    setup();
    const struct spec *ms[] = {&g_base, &g_padded, &g_chatml};
    char *log = NULL;
    CHECK_MSG(run_merge("linear", ms, 3, "tokenizer_source: union\n", &log) == 0, "%s", log);
    free(log);
    struct out o;
    if (open_out(&o) == 0) {
        CHECK_INT(out_size(&o), 66);
        CHECK_INT(json_array_size(json_object_get(o.tok, "added_tokens")), 5);
        CHECK_INT(json_object_size(json_object_get(o.tc, "added_tokens_decoder")), 5);
        CHECK_STR_CONTAINS(json_string_value(json_object_get(json_object_get(json_object_get(o.tc, "added_tokens_decoder"),
                                                                             "65"), "content")), "<|im_end|>");
        for (int i = 0; i < 4; i++) CHECK_INT(out_id(&o, g_unused[i]), -1);
        CHECK_INT(o.rows, 66);
        CHECK_INT(config_vocab(&o), 66);
        float want[COLS], seeds[] = {0, 2000, 1000};
        int rows[] = {9, 9, 9};
        mean_of(want, 3, seeds, rows);
        CHECK_ROW(&o, "_tok_9", want);
        rows[0] = 64; /* only chatml has them: every model takes chatml's row */
        mean_of(want, 1, seeds + 2, rows);
        CHECK_ROW(&o, "<|im_start|>", want);
        rows[0] = 65;
        mean_of(want, 1, seeds + 2, rows);
        CHECK_ROW(&o, "<|im_end|>", want);
    }
    close_out(&o);
    /* --dry-run shows the vocabulary and which inputs are re-indexed */
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "%s merge %s/config.yml %s/dry --dry-run", test_alloy_bin(), g_dir, g_dir);
    CHECK_INT(test_run(cmd, &log), 0);
    CHECK_STR_CONTAINS(log, "# tokenizer: union, 66 tokens, embedding rows 66");
    CHECK_STR_CONTAINS(log, "lm_head.weight (rows re-indexed to the merged vocabulary)");
    free(log);
    char yaml[800];
    snprintf(yaml, sizeof yaml, "tokenizer_source: %s\n", model(&g_chatml));
    CHECK_MSG(run_merge("linear", ms, 3, yaml, &log) == 0, "%s", log);
    free(log);
    if (open_out(&o) == 0) {
        CHECK_INT(out_size(&o), 66);
        CHECK_INT(out_id(&o, "<|im_end|>"), 65);
    }
    close_out(&o);
    const struct spec *two[] = {&g_base, &g_chatml};
    CHECK_MSG(run_merge("slerp", two, 2, "parameters: {t: 0.5}\ntokenizer_source: union\n", &log) == 0, "%s", log);
    free(log);
    if (open_out(&o) == 0) {
        CHECK_INT(out_size(&o), 66);
        /* slerp of the whole re-indexed matrices (first principles): base's rows 0..63 then chatml's 64, 65,
           against chatml's 66 rows; both hold chatml's row for <|im_start|>, so it comes out scaled by
           (sin((1-t)θ) + sin(tθ)) / sin θ */
        double dot = 0, na = 0, nb = 0;
        for (int r = 0; r < 66; r++)
            for (int c = 0; c < COLS; c++) {
                double a = emb(r < 64 ? 0 : 1000, r, c), b = emb(1000, r, c);
                dot += a * b, na += a * a, nb += b * b;
            }
        double th = acos(dot / sqrt(na * nb)), k = (sin(0.5 * th) + sin(0.5 * th)) / sin(th);
        float want[COLS];
        for (int c = 0; c < COLS; c++) want[c] = (float)(k * emb(1000, 64, c));
        CHECK_ROW(&o, "<|im_start|>", want);
    }
    close_out(&o);
}

TEST(tokunion_forced_model_token_and_zero)
{
    setup();
    const struct spec *ms[] = {&g_base, &g_chatml};
    char *log = NULL, yaml[2048];
    float want[COLS], seeds[] = {0, 1000};
    int rows[] = {0};
    snprintf(yaml, sizeof yaml, "tokenizer:\n  source: union\n  tokens:\n"
             "    _tok_10: {source: %s, force: true}\n    _tok_11: {source: %s, force: true}\n"
             "    <brand_new>: {source: {kind: zero}}\n", model(&g_chatml), model(&g_base));
    CHECK_MSG(run_merge("linear", ms, 2, yaml, &log) == 0, "%s", log);
    free(log);
    struct out o;
    if (open_out(&o) == 0) {
        CHECK_INT(out_size(&o), 67);
        CHECK_INT(out_id(&o, "<brand_new>"), 66);
        rows[0] = 10;
        mean_of(want, 1, seeds + 1, rows);
        CHECK_ROW(&o, "_tok_10", want);
        rows[0] = 11;
        mean_of(want, 1, seeds, rows);
        CHECK_ROW(&o, "_tok_11", want);
        memset(want, 0, sizeof want);
        CHECK_ROW(&o, "<brand_new>", want);
    }
    close_out(&o);
    snprintf(yaml, sizeof yaml, "tokenizer:\n  source: base\n  tokens:\n"
             "    _tok_20: {source: {kind: model_token, model: %s, token_id: 64}, force: true}\n"
             "    _tok_21: {source: {kind: model_token, model: %s, token: <s>}, force: true}\n",
             model(&g_chatml), model(&g_base));
    CHECK_MSG(run_merge("linear", ms, 2, yaml, &log) == 0, "%s", log);
    free(log);
    if (open_out(&o) == 0) {
        CHECK_INT(out_size(&o), 64);
        rows[0] = 64;
        mean_of(want, 1, seeds + 1, rows);
        CHECK_ROW(&o, "_tok_20", want);
        rows[0] = 1;
        mean_of(want, 1, seeds, rows);
        CHECK_ROW(&o, "_tok_21", want);
    }
    close_out(&o);
}

/* The default rules one by one: the base's row when it has the token, else the mean of those that do. */
TEST(tokunion_default_rows)
{
    setup();
    const struct spec *ms[] = {&g_base, &g_chatml, &g_chatml2};
    char *log = NULL;
    CHECK_MSG(run_merge("linear", ms, 3, "tokenizer_source: union\n", &log) == 0, "%s", log);
    free(log);
    struct out o;
    if (open_out(&o) == 0) {
        CHECK_INT(out_size(&o), 67); /* + _alt_5 */
        float want[COLS], s2[] = {1000, 3000}, s3[] = {0, 1000, 0}, s1[] = {3000};
        int r2[] = {64, 64}, r3[] = {5, 5, 5}, r1[] = {5};
        mean_of(want, 2, s2, r2); /* base lacks it: it takes the mean of the two; the merge is that mean */
        CHECK_ROW(&o, "<|im_start|>", want);
        mean_of(want, 3, s3, r3); /* chatml2 lacks _tok_5: it takes the base's row */
        CHECK_ROW(&o, "_tok_5", want);
        mean_of(want, 1, s1, r1); /* only chatml2 has _alt_5 */
        CHECK_ROW(&o, "_alt_5", want);
    }
    close_out(&o);
}

TEST(tokunion_pad_to_multiple_of)
{
    setup();
    const struct spec *ms[] = {&g_chatml};
    char *log = NULL;
    CHECK_MSG(run_merge("linear", ms, 1, "tokenizer:\n  source: base\n  pad_to_multiple_of: 16\n"
              "chat_template: mistral\n", &log) == 0, "%s", log);
    free(log);
    struct out o;
    if (open_out(&o) == 0) {
        CHECK_INT(out_size(&o), 66);
        CHECK_INT(o.rows, 80);
        CHECK_INT(config_vocab(&o), 80);
        /* a bundled template (mergekit's text) applied to the built tokenizer */
        CHECK_STR_CONTAINS(json_string_value(json_object_get(o.tc, "chat_template")), "{{- ' [INST] ' + message['content']");
        for (int r = 66; r < 80; r++) /* padding rows: the mean of rows 0..65 */
            for (int c = 0; c < COLS; c++) CHECK_NEAR(o.embed[r * COLS + c], emb(1000, 0, c) + 32.5f, 1e-3);
    }
    close_out(&o);
}

TEST(tokunion_refusals)
{
    setup();
    char dir[700], cmd[1600], *log = NULL, yaml[1200];
    snprintf(dir, sizeof dir, "%s/notok", g_dir);
    snprintf(cmd, sizeof cmd, "cp -r %s %s && rm %s/tokenizer.json", model(&g_chatml), dir, dir);
    CHECK_INT(system(cmd), 0);
    snprintf(yaml, sizeof yaml, "merge_method: linear\nbase_model: %s\nmodels:\n  - model: %s\n  - model: %s\n"
             "tokenizer_source: union\n", model(&g_base), model(&g_base), dir);
    snprintf(cmd, sizeof cmd, "%s/bad.yml", g_dir);
    CHECK_INT(test_write_text(cmd, yaml), 0);
    snprintf(cmd, sizeof cmd, "%s merge %s/bad.yml %s/o2 --quiet", test_alloy_bin(), g_dir, g_dir);
    CHECK_INT(test_run(cmd, &log), 1);
    CHECK_STR_CONTAINS(log, "notok/tokenizer.json: missing");
    CHECK_INT(test_count_lines(log, "alloy: error:"), 1);
    free(log);
    snprintf(dir, sizeof dir, "%s/o2", g_dir);
    CHECK(access(dir, F_OK) != 0);
    /* a token sourced from a model that is not merged */
    const struct spec *ms[] = {&g_base, &g_chatml};
    snprintf(yaml, sizeof yaml, "tokenizer:\n  tokens:\n    _tok_3: {source: %s, force: true}\n", model(&g_padded));
    CHECK_INT(run_merge("linear", ms, 2, yaml, &log), 1);
    CHECK_STR_CONTAINS(log, "tokenizer.tokens._tok_3.source: expected a model merged into");
    free(log);
    snprintf(yaml, sizeof yaml, "tokenizer:\n  tokens:\n    _tok_3: {source: {kind: model_token, model: %s, token: nope}}\n"
             "    _tok_4: {source: {kind: zero}, force: true}\n", model(&g_base));
    CHECK_INT(run_merge("linear", ms, 2, yaml, &log), 1);
    CHECK_STR_CONTAINS(log, "'nope' is not in the vocabulary");
    free(log);
    /* the built tokenizer exists only as files: a merge into memory is refused before any work */
    snprintf(yaml, sizeof yaml, "merge_method: linear\nparameters: {weight: 1}\nmodels:\n  - model: %s\n  - model: %s\n"
             "tokenizer_source: union\n",
             model(&g_base), model(&g_chatml));
    struct alloy_merge_options o;
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    alloy_merge_options_init(&o);
    o.config_text = yaml;
    o.out_model = &m;
    CHECK(alloy_merge(&o, &err) != 0 && m == NULL);
    CHECK_STR_CONTAINS(err.msg, "merge into a folder, not into memory");
}

/* ------------------------------------------------------------ a chat fine-tune of the bundled tiny Llama */

#define TL_VOCAB 260
static float chat_drift(int r, int c) { return r < TL_VOCAB ? 0.001f * (float)((r * 7 + c) % 13 - 6) : 0; }
static float chat_new_row(int r, int c) { return 0.02f * sinf((float)(r * 31 + c)); }

/* <dir>: tiny-llama/base-f32 with rows 260, 261 added to embed_tokens and lm_head (the others drifted a little)
 * and <|im_start|>, <|im_end|> added to its tokenizer.json as special tokens. */
static int make_chat(const char *dir, const struct alloy_model *base)
{
    size_t n = alloy_model_count(base);
    struct test_tensor *t = calloc(n, sizeof *t);
    float *grown[2] = {NULL, NULL};
    int g = 0, rc = -1;
    for (size_t i = 0; t && i < n; i++) {
        const struct alloy_tensor *s = alloy_model_tensor(base, i);
        t[i] = (struct test_tensor){s->name, "F32", s->ndim, {0}, s->data};
        for (int d = 0; d < s->ndim; d++) t[i].shape[d] = s->shape[d];
        if (s->dtype != ALLOY_DTYPE_F32) goto done;
        if (s->ndim == 2 && s->shape[0] == TL_VOCAB && g < 2) { /* embed_tokens, lm_head */
            long long cols = s->shape[1];
            float *v = grown[g++] = malloc(sizeof *v * (size_t)(TL_VOCAB + 2) * (size_t)cols);
            if (!v) goto done;
            for (long long r = 0; r < TL_VOCAB + 2; r++)
                for (long long c = 0; c < cols; c++)
                    v[r * cols + c] = r < TL_VOCAB ? ((const float *)s->data)[r * cols + c] + chat_drift((int)r, (int)c)
                                                   : chat_new_row((int)r, (int)c);
            t[i].shape[0] = TL_VOCAB + 2;
            t[i].data = v;
        }
    }
    char *config = strdup(alloy_model_config_text(base)), *at = config ? strstr(config, "\"vocab_size\": 260") : NULL;
    if (!at || g != 2) { free(config); goto done; }
    at[16] = '2'; /* 262 */
    rc = test_write_model(dir, t, (int)n, config);
    free(config);
    json_t *tok = json_load_file(test_data("tiny-llama/base-f32/tokenizer.json"), 0, NULL);
    for (int i = 0; tok && i < 2; i++)
        json_array_append_new(json_object_get(tok, "added_tokens"),
                              json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", TL_VOCAB + i, "content", g_chat[i],
                                        "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1));
    char path[900], cmd[2000];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (!tok || json_dump_file(tok, path, JSON_INDENT(1))) rc = -1;
    json_decref(tok);
    snprintf(cmd, sizeof cmd, "cp %s/tokenizer_config.json %s/special_tokens_map.json %s/", test_data("tiny-llama/base-f32"),
             test_data("tiny-llama/base-f32"), dir);
    if (system(cmd) != 0) rc = -1;
done:
    free(grown[0]);
    free(grown[1]);
    free(t);
    return rc;
}

/* Output rows r of embed_tokens and lm_head against want(r, c, base value). */
static void check_tiny(const struct alloy_model *out, const struct alloy_model *base, float wb, float wc)
{
    static const char *const names[] = {"model.embed_tokens.weight", "lm_head.weight"};
    for (int k = 0; k < 2; k++) {
        const struct alloy_tensor *o = alloy_model_find(out, names[k]), *b = alloy_model_find(base, names[k]);
        if (!o || !b || o->shape[0] != TL_VOCAB + 2 || o->dtype != ALLOY_DTYPE_F32) { CHECK(0); return; }
        long long cols = o->shape[1], bad = 0;
        for (long long r = 0; r < TL_VOCAB + 2; r++)
            for (long long c = 0; c < cols; c++) {
                float chat = r < TL_VOCAB ? ((const float *)b->data)[r * cols + c] + chat_drift((int)r, (int)c)
                                          : chat_new_row((int)r, (int)c);
                /* base rows for its own tokens; for the new ones it takes the chat model's (the only one with them) */
                float base_row = r < TL_VOCAB ? ((const float *)b->data)[r * cols + c] : chat;
                float want = (wb * base_row + wc * chat) / (wb + wc);
                bad += fabsf(((const float *)o->data)[r * cols + c] - want) > 1e-5f;
            }
        CHECK_MSG(bad == 0, "%s: %lld values differ from the naive merge", names[k], bad);
    }
}

TEST(tokunion_tiny_llama_chat_finetune)
{
    setup();
    char chat[700], yaml[2048], cfg[700], out[700], cmd[3000], *log = NULL;
    struct alloy_model *base = NULL, *o = NULL;
    struct alloy_err err = {0};
    const char *base_dir = test_data("tiny-llama/base-f32");
    if (alloy_model_open(base_dir, &base, &err)) { CHECK_MSG(0, "%s", err.msg); return; }
    snprintf(chat, sizeof chat, "%s/chat", g_dir);
    CHECK_INT(make_chat(chat, base), 0);
    snprintf(cfg, sizeof cfg, "%s/c.yml", g_dir);
    snprintf(out, sizeof out, "%s/out", g_dir);
    static const char *const methods[] = {
        "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 0.3}\n"
        "  - model: %s\n    parameters: {weight: 0.7}\n",
        "merge_method: ties\nbase_model: %s\nmodels:\n  - model: %s\n    parameters: {weight: 1.0, density: 1.0}\n",
    };
    for (int m = 0; m < 2; m++) {
        int n = snprintf(yaml, sizeof yaml, methods[m], base_dir, chat);
        snprintf(yaml + n, sizeof yaml - n, "dtype: float32\ntokenizer_source: union\n");
        CHECK_INT(test_write_text(cfg, yaml), 0);
        snprintf(cmd, sizeof cmd, "rm -rf %s && %s merge %s %s --quiet", out, test_alloy_bin(), cfg, out);
        CHECK_MSG(test_run(cmd, &log) == 0, "%s", log);
        free(log);
        if (alloy_model_open(out, &o, &err)) { CHECK_MSG(0, "%s", err.msg); break; }
        check_tiny(o, base, m == 0 ? 0.3f : 0.0f, m == 0 ? 0.7f : 1.0f); /* TIES of one model at density 1: it */
        alloy_model_close(o);
    }
    /* alloy's tokenizer reads the written tokenizer.json and keeps the new special tokens whole */
    struct alloy_tokenizer *tok = NULL;
    char path[800];
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    if (alloy_tokenizer_load(path, &tok, &err) == 0) {
        static const char text[] = "<|im_start|>user\nhi<|im_end|>";
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK_INT(alloy_tokenizer_encode(tok, text, strlen(text), "text", &ids, &n, &err), 0);
        size_t at = n >= 10 ? n - 10 + 1 : 0; /* after a BOS, if the post-processor adds one */
        int32_t want[] = {TL_VOCAB, 'u', 's', 'e', 'r', '\n', 'h', 'i', TL_VOCAB + 1};
        CHECK_INT(n - at, 9);
        for (size_t i = 0; i < 9 && at + i < n; i++) CHECK_INT(ids[at + i], want[i]);
        free(ids);
        alloy_tokenizer_free(tok);
    } else {
        CHECK_MSG(0, "%s", err.msg);
    }
    /* and alloy eval runs the merged model next to its parent on a text with them */
    snprintf(path, sizeof path, "%s/chat.txt", g_dir);
    char text[1024] = "";
    for (int i = 0; i < 4; i++)
        strcat(text, "<|im_start|>user\nWrite a line of prose.<|im_end|>\n<|im_start|>assistant\n"
                     "The river ran slowly past the old mill.<|im_end|>\n");
    CHECK_INT(test_write_text(path, text), 0);
    snprintf(cmd, sizeof cmd, "%s eval %s %s --text %s", test_alloy_bin(), out, chat, path);
    CHECK_MSG(test_run(cmd, &log) == 0, "%s", log);
    free(log);
    alloy_model_close(base);
}

TEST(tokunion_which_tensors_are_reindexed)
{
    CHECK_INT(alloy_name_is_vocab_rows("model.embed_tokens.weight"), 1);
    CHECK_INT(alloy_name_is_vocab_rows("lm_head.weight"), 1);
    CHECK_INT(alloy_name_is_vocab_rows("transformer.wte.weight"), 1);
    CHECK_INT(alloy_name_is_vocab_rows("bert.embeddings.word_embeddings.weight"), 1);
    CHECK_INT(alloy_name_is_vocab_rows("bert.embeddings.position_embeddings.weight"), 0);
    CHECK_INT(alloy_name_is_vocab_rows("bert.embeddings.token_type_embeddings.weight"), 0);
    CHECK_INT(alloy_name_is_vocab_rows("model.layers.0.mlp.down_proj.weight"), 0);
}

/* The vocabulary steps on tokenizer.json texts (what fuzz/fuzz_vocab.c drives). */
TEST(tokunion_vocab_text_steps)
{
    struct alloy_err err = {0};
    size_t n = 0;
    /* stripping to 2 removes "a" (id 2) with its merge; the added token takes the next id */
    static const char strip[] = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":2,\"b\":1,\"c\":0},\"merges\":[\"a b\",\"b c\"]}}";
    CHECK_INT(alloy_vocab_check_text(strip, strlen(strip), 2, "<x>", &n, &err), 0);
    CHECK_INT(n, 3);
    CHECK_INT(alloy_vocab_check_text(strip, strlen(strip), 0, "b", &n, &err), 0); /* already there */
    CHECK_INT(n, 3);
    /* fuzz finding: the merges list replaced while still looked at */
    static const char merges[] = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":1,\"b\":0},\"merges\":[\"a b\"]}}";
    CHECK_INT(alloy_vocab_check_text(merges, strlen(merges), 1, NULL, &n, &err), 0);
    CHECK_INT(n, 1);
    static const char holes[] = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":5}}}";
    CHECK_INT(alloy_vocab_check_text(holes, strlen(holes), 0, NULL, &n, &err), 0); /* "b" is past the size 2 */
    CHECK_INT(n, 1);
    CHECK(alloy_vocab_check_text(holes, strlen(holes), 6, NULL, &n, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "tokenizer.json: token ids are not 0..1, one each");
    static const char uni[] = "{\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"a\",0],[\"b\",0]]}}";
    CHECK_INT(alloy_vocab_check_text(uni, strlen(uni), 0, NULL, &n, &err), 0);
    CHECK_INT(n, 2);
    CHECK(alloy_vocab_check_text(uni, strlen(uni), 1, NULL, &n, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "only a BPE tokenizer can be cut to it (as in mergekit), found Unigram");
    static const char bad[] = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1}}}";
    CHECK(alloy_vocab_check_text(bad, strlen(bad), 0, NULL, &n, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "tokenizer.json: model.vocab: 'a': expected an id (integer >= 0)");
}

/* slices: the embeddings come from the first slice's models, the head from the last's (mergekit §3.3), each
 * re-indexed among its own inputs: a token none of them has is zeros, with a warning */
TEST(tokunion_slices_passthrough)
{
    setup();
    char yaml[2048], cfg[700], cmd[2000], *log = NULL;
    snprintf(yaml, sizeof yaml, "merge_method: passthrough\ndtype: float32\ntokenizer_source: union\nslices:\n"
             "  - sources: [{model: %s, layer_range: [0, 1]}]\n  - sources: [{model: %s, layer_range: [0, 1]}]\n",
             model(&g_base), model(&g_chatml));
    snprintf(cfg, sizeof cfg, "%s/config.yml", g_dir);
    CHECK_INT(test_write_text(cfg, yaml), 0);
    snprintf(cmd, sizeof cmd, "%s merge %s %s/out", test_alloy_bin(), cfg, g_dir);
    CHECK_MSG(test_run(cmd, &log) == 0, "%s", log);
    CHECK_STR_CONTAINS(log, "model.embed_tokens.weight: 2 tokens (first '<|im_start|>') are in no model's vocabulary");
    free(log);
    struct out o;
    if (open_out(&o) == 0) {
        CHECK_INT(o.rows, 66);
        long long id = out_id(&o, "<|im_start|>");
        for (int c = 0; c < COLS && id == 64; c++) {
            CHECK_NEAR(o.embed[id * COLS + c], 0, 0);
            CHECK_NEAR(-o.head[id * COLS + c], emb(1000, 64, c), 1e-4);
            CHECK_NEAR(o.embed[7 * COLS + c], emb(0, 7, c), 1e-4);
        }
        CHECK_INT(id, 64);
    }
    close_out(&o);
}
