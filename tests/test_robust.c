/*
 * test_robust.c — hostile inputs through the CLI, the output-folder safety
 * rules, and replays of every input the fuzzers ever crashed on.
 *
 * DESIGN
 *   Corrupt-input suite: each case writes one damaged model folder (or
 *   config) next to a good bundled model, runs `alloy merge` under
 *   `timeout` (a hang becomes exit 124, a failure) and requires exit 1,
 *   exactly one "alloy: error:" line naming the damaged file and saying
 *   what is wrong, no sanitizer report, no output folder and no temporary
 *   folder left behind. Sizes that come from the file (header length,
 *   shapes, index and config sizes) are made huge so that an allocation
 *   driven by them before validation would fail the run; sparse files
 *   keep that cheap.
 *   Output folder: an output that is an input, a link to one, a file or a
 *   folder inside one, or a folder holding an input's shard (an HF-cache
 *   snapshot links into blobs/) is refused and the input stays
 *   byte-identical; an output that is a symlink to a folder stands for
 *   that folder (its user files refused, the link kept).
 *   Regressions: tests/data/regress/<target>-<what> files are replayed
 *   through the same entry point as fuzz/fuzz_<target>.c.
 *   valgrind: robust_valgrind_merge runs only with ALLOY_SLOW_TESTS=1 and
 *   valgrind installed (and not in a sanitizer build).
 */
#include "lora/adapter.h"
#include "test.h"
#include "plan/vocab.h"
#include "alloy.h"
#include "config/config.h"
#include "eval/eval.h"
#include "formats/formats.h"
#include "formats/pickle.h"

#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX(name) "tests/data/tiny-llama/" name


/* ------------------------------------------------------------ helpers */

static void mkdir_p(const char *dir)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    CHECK_INT(system(cmd), 0);
}

static int write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(buf, 1, len, f) == len;
    ok &= fclose(f) == 0;
    return ok ? 0 : -1;
}

/* "<u64 len><header><data_len bytes>", header padded to 8 with spaces. */
static uint8_t *st_image(const char *header, size_t data_len, size_t *len)
{
    size_t h = strlen(header), padded = (h + 7) & ~(size_t)7;
    uint8_t *b = calloc(1, 8 + padded + data_len + 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(b + 8, header, h);
    memset(b + 8 + h, ' ', padded - h);
    *len = 8 + padded + data_len;
    return b;
}

/* A model folder holding `bytes` as model.safetensors and a config.json. */
static void model_dir(const char *dir, const void *bytes, size_t len)
{
    char path[1200];
    mkdir_p(dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_INT(write_bytes(path, bytes, len), 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK_INT(test_write_text(path, "{\"num_hidden_layers\": 1}"), 0);
}

/* Runs alloy with args under timeout(1); returns the exit status. */
static int alloy(const char *args, char **log)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "timeout 60 %s %s", test_alloy_bin(), args);
    return test_run(cmd, log);
}

/* The failure contract: exit 1, one error line holding every `want`, no
 * sanitizer report, nothing written. */
static void expect_failure(const char *what, int rc, const char *log, const char *out, const char *const *want)
{
    CHECK_MSG(rc == 1, "%s: exit %d, expected 1: %s", what, rc, log ? log : "");
    CHECK_MSG(test_count_lines(log, "alloy: error: ") == 1, "%s: expected one error line: %s", what, log);
    /* a message broken over lines (a newline from the file) shows up as a line without the prefix */
    CHECK_MSG(log && test_count_lines(log, "alloy: ") == test_count_lines(log, ""), "%s: stray lines: %s", what, log);
    for (; *want; want++) CHECK_MSG(log && strstr(log, *want), "%s: \"%s\" not in: %s", what, *want, log);
    CHECK_MSG(log && !strstr(log, "Sanitizer") && !strstr(log, "runtime error"), "%s: %s", what, log);
    if (out) {
        CHECK_MSG(access(out, F_OK) != 0, "%s: %s was created", what, out);
        char *parent = strdup(out);
        char *slash = strrchr(parent, '/');
        if (slash) *slash = '\0';
        CHECK_MSG(test_leftovers(parent) == 0, "%s: temporary folder left in %s", what, parent);
        free(parent);
    }
}

/* Merges the good fixture `code` with `bad` (linear) into dir/out. */
static int merge_with(const char *dir, const char *bad, char **log)
{
    char cfg[1200], yaml[3000], args[3000];
    snprintf(cfg, sizeof cfg, "%s/merge.yml", dir);
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: " FIX("code") "\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\n", bad);
    CHECK_INT(test_write_text(cfg, yaml), 0);
    snprintf(args, sizeof args, "merge %s %s/out --quiet", cfg, dir);
    return alloy(args, log);
}


/* ------------------------------------------------------------ corrupt safetensors through the CLI */

struct bad_case {
    const char *name;
    const char *header;   /* NULL: built by the case code */
    size_t data_len;
    const char *want;
};

TEST(robust_corrupt_safetensors_exit_1)
{
    static const struct bad_case cases[] = {
        {"huge_shape", "{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[9223372036854775807],\"data_offsets\":[0,4]}}",
         4, "overflows 64 bits"},
        {"shape_2_63", "{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[9223372036854775808],\"data_offsets\":[0,4]}}",
         4, "header JSON"},
        {"overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, "contiguous"},
        {"gap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "contiguous"},
        {"offsets_past_int64", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[18446744073709551612,0]}}", 4,
         "header JSON"},
        {"huge_offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[7],\"data_offsets\":[9223372036854775800,"
                         "9223372036854775807]}}", 4, "contiguous"},
        {"unknown_dtype", "{\"a\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype"},
        {"non_utf8_name", "{\"a\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "UTF-8"},
        {"duplicate_names", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                            "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate"},
        {"not_json", "{\"a\":{\"dtype\":\"F32\",", 0, "header JSON"},
        {"trailing_bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4096, "trailing bytes"},
        {"nine_dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         "dimensions"},
    };
    const char *dir = test_tmpdir();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char sub[900], bad[1000], *log = NULL;
        snprintf(sub, sizeof sub, "%s/%s", dir, cases[i].name);
        snprintf(bad, sizeof bad, "%s/m", sub);
        size_t len;
        uint8_t *img = st_image(cases[i].header, cases[i].data_len, &len);
        model_dir(bad, img, len);
        free(img);
        int rc = merge_with(sub, bad, &log);
        char out[1100];
        snprintf(out, sizeof out, "%s/out", sub);
        const char *want[] = {cases[i].want, "m/model.safetensors", NULL};
        expect_failure(cases[i].name, rc, log, out, want);
        free(log);
    }
}

TEST(robust_truncated_and_oversized_files)
{
    const char *dir = test_tmpdir();
    char bad[1000], path[1100], out[1100], *log = NULL;
    /* the real fixture cut in half: "file is truncated" */
    FILE *f = fopen(FIX("code/model.safetensors"), "rb");
    CHECK(f != NULL);
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    CHECK_INT(fread(buf, 1, (size_t)n, f), n);
    fclose(f);
    snprintf(bad, sizeof bad, "%s/half/m", dir);
    model_dir(bad, buf, (size_t)n / 2);
    snprintf(path, sizeof path, "%s/half", dir);
    int rc = merge_with(path, bad, &log);
    snprintf(out, sizeof out, "%s/half/out", dir);
    const char *w1[] = {"truncated", "half/m/model.safetensors", NULL};
    expect_failure("truncated", rc, log, out, w1);
    free(log);
    free(buf);

    /* header length past the end, and far past any limit */
    static const uint64_t lens[] = {1000000, 100000000, 0x8000000000000000ull, 0xffffffffffffffffull};
    static const char *const wants[] = {"past the end", "past the end", "exceeds", "exceeds"};
    for (int i = 0; i < 4; i++) {
        uint8_t img[16] = {0};
        for (int k = 0; k < 8; k++) img[k] = (uint8_t)(lens[i] >> (8 * k));
        memcpy(img + 8, "{}      ", 8);
        char sub[900];
        snprintf(sub, sizeof sub, "%s/hdr%d", dir, i);
        snprintf(bad, sizeof bad, "%s/m", sub);
        model_dir(bad, img, sizeof img);
        rc = merge_with(sub, bad, &log);
        snprintf(out, sizeof out, "%s/out", sub);
        const char *w[] = {wants[i], "model.safetensors", NULL};
        expect_failure("header length", rc, log, out, w);
        free(log);
    }

    /* a zero-byte file */
    snprintf(bad, sizeof bad, "%s/empty/m", dir);
    model_dir(bad, "", 0);
    snprintf(path, sizeof path, "%s/empty", dir);
    rc = merge_with(path, bad, &log);
    const char *w2[] = {"too small", "empty/m/model.safetensors", NULL};
    snprintf(out, sizeof out, "%s/empty/out", dir);
    expect_failure("empty file", rc, log, out, w2);
    free(log);

    /* sparse files far over the index (256 MiB) and config.json (16 MiB) limits: refused by size, not read */
    snprintf(bad, sizeof bad, "%s/bigindex/m", dir);
    mkdir_p(bad);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", bad);
    CHECK_INT(test_write_text(path, "{"), 0);
    CHECK_INT(truncate(path, (off_t)300 << 20), 0);
    snprintf(path, sizeof path, "%s/bigindex", dir);
    rc = merge_with(path, bad, &log);
    const char *w3[] = {"model.safetensors.index.json", "more than the", NULL};
    snprintf(out, sizeof out, "%s/bigindex/out", dir);
    expect_failure("huge index", rc, log, out, w3);
    free(log);
    snprintf(bad, sizeof bad, "%s/bigconfig/m", dir);
    mkdir_p(bad);
    snprintf(path, sizeof path, "cp " FIX("code/model.safetensors") " '%s/'", bad);
    CHECK_INT(system(path), 0);
    snprintf(path, sizeof path, "%s/config.json", bad);
    CHECK_INT(test_write_text(path, "{"), 0);
    CHECK_INT(truncate(path, (off_t)17 << 20), 0);
    snprintf(path, sizeof path, "%s/bigconfig", dir);
    rc = merge_with(path, bad, &log);
    const char *w4[] = {"config.json", "more than the", NULL};
    snprintf(out, sizeof out, "%s/bigconfig/out", dir);
    expect_failure("huge config.json", rc, log, out, w4);
    free(log);
}

/* ------------------------------------------------------------ index, config, shapes */

TEST(robust_index_and_config_errors)
{
    const char *dir = test_tmpdir();
    char bad[1000], path[1200], out[1100], cfg[1100], args[3000], *log = NULL;
    static const struct { const char *name, *index, *want; } idx[] = {
        {"missing_shard", "{\"weight_map\":{\"model.norm.weight\":\"model-00002-of-00002.safetensors\"}}", "does not exist"},
        {"non_string", "{\"weight_map\":{\"model.norm.weight\":\"model.safetensors\",\"lm_head.weight\":7}}",
         "expected a shard file name"},
        {"outside", "{\"weight_map\":{\"model.norm.weight\":\"../../code/model.safetensors\"}}", "must be a file in the model folder"},
        {"fifo_shard", "{\"weight_map\":{\"model.norm.weight\":\"pipe.safetensors\"}}", "does not exist"},
        {"not_in_shard", "{\"weight_map\":{\"no.such.tensor\":\"model.safetensors\"}}", "no.such.tensor"},
        {"not_json", "{\"weight_map\":", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof idx / sizeof *idx; i++) {
        char sub[900];
        snprintf(sub, sizeof sub, "%s/%s", dir, idx[i].name);
        snprintf(bad, sizeof bad, "%s/m", sub);
        mkdir_p(bad);
        snprintf(path, sizeof path, "cp " FIX("code/model.safetensors") " " FIX("code/config.json") " '%s/'", bad);
        CHECK_INT(system(path), 0);
        snprintf(path, sizeof path, "%s/pipe.safetensors", bad);
        CHECK_INT(mkfifo(path, 0644), 0); /* opening it would block: it must be refused unopened */
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", bad);
        CHECK_INT(test_write_text(path, idx[i].index), 0);
        int rc = merge_with(sub, bad, &log);
        snprintf(out, sizeof out, "%s/out", sub);
        const char *w[] = {idx[i].want, "m/model.safetensors.index.json", NULL};
        expect_failure(idx[i].name, rc, log, out, w);
        free(log);
    }

    /* a config naming a model that does not exist */
    snprintf(path, sizeof path, "%s/nomodel", dir);
    mkdir_p(path);
    snprintf(bad, sizeof bad, "%s/nomodel/not-there", dir);
    int rc = merge_with(path, bad, &log);
    snprintf(out, sizeof out, "%s/nomodel/out", dir);
    const char *w1[] = {"not-there", "not found", NULL};
    expect_failure("missing model", rc, log, out, w1);
    free(log);

    /* model.safetensors that is a FIFO or a folder: refused, never opened */
    static const char *const kinds[] = {"fifo", "folder"};
    for (int k = 0; k < 2; k++) {
        snprintf(bad, sizeof bad, "%s/%s/m", dir, kinds[k]);
        mkdir_p(bad);
        snprintf(path, sizeof path, "%s/model.safetensors", bad);
        if (k == 0) CHECK_INT(mkfifo(path, 0644), 0);
        else mkdir_p(path);
        snprintf(path, sizeof path, "%s/%s", dir, kinds[k]);
        rc = merge_with(path, bad, &log);
        snprintf(out, sizeof out, "%s/%s/out", dir, kinds[k]);
        const char *w[] = {"no model.safetensors", NULL};
        expect_failure(kinds[k], rc, log, out, w);
        free(log);
    }

    /* the config itself: a FIFO (must not hang), binary junk, a folder, over the size limit */
    snprintf(cfg, sizeof cfg, "%s/pipe.yml", dir);
    CHECK_INT(mkfifo(cfg, 0644), 0);
    snprintf(out, sizeof out, "%s/cfgout", dir);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, out);
    rc = alloy(args, &log);
    const char *w2[] = {"pipe.yml", "not a regular file", NULL};
    expect_failure("config fifo", rc, log, out, w2);
    free(log);
    snprintf(cfg, sizeof cfg, "%s/junk.yml", dir);
    CHECK_INT(write_bytes(cfg, "\x00\xff\xfe{[\x01\x1b[2J: :\n\t- &a *a", 17), 0);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, out);
    rc = alloy(args, &log);
    const char *w3[] = {"junk.yml", NULL};
    expect_failure("config junk", rc, log, out, w3);
    CHECK_MSG(log && !strchr(log, '\x1b'), "escape sequence echoed: %s", log);
    free(log);
    snprintf(args, sizeof args, "merge %s %s --quiet", dir, out);
    rc = alloy(args, &log);
    const char *w4[] = {"not a regular file", NULL};
    expect_failure("config folder", rc, log, out, w4);
    free(log);
    snprintf(cfg, sizeof cfg, "%s/huge.yml", dir);
    CHECK_INT(test_write_text(cfg, "merge_method: linear\n"), 0);
    CHECK_INT(truncate(cfg, (off_t)64 << 20), 0);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, out);
    rc = alloy(args, &log);
    const char *w5[] = {"huge.yml", "more than the", NULL};
    expect_failure("config size", rc, log, out, w5);
    free(log);
}

TEST(robust_shape_mismatch_and_hostile_names)
{
    const char *dir = test_tmpdir();
    char a[1000], b[1000], cfg[1100], yaml[3000], args[3000], out[1100], *log = NULL;
    /* a name with an escape sequence and a newline (legal JSON escapes) whose shapes disagree:
       the message must name it on one line, with the control characters neutralised */
    static const char name[] = "model.layers.0.\\u001b[2J\\nevil.weight";
    float w[8] = {0};
    for (int k = 0; k < 2; k++) {
        char hdr[400];
        snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[0,%d]}}", name,
                 k ? "[2,4]" : "[8]", 32);
        size_t len;
        uint8_t *img = st_image(hdr, 32, &len);
        memcpy(img + len - 32, w, 32);
        snprintf(k ? b : a, 1000, "%s/m%d", dir, k);
        model_dir(k ? b : a, img, len);
        free(img);
    }
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\n", a, b);
    CHECK_INT(test_write_text(cfg, yaml), 0);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, out);
    int rc = alloy(args, &log);
    const char *want[] = {"evil.weight", "[8]", "[2, 4]", NULL};
    expect_failure("shape mismatch", rc, log, out, want);
    CHECK_MSG(log && !strchr(log, '\x1b'), "escape sequence echoed: %s", log);
    free(log);
}

TEST(robust_nan_tensor_merges_with_warning)
{
    const char *dir = test_tmpdir();
    char a[1000], b[1000], cfg[1100], yaml[3000], args[3000], out[1100], *log = NULL;
    float good[12], bad[12];
    for (int i = 0; i < 12; i++) {
        good[i] = (float)i * 0.25f;
        bad[i] = i % 3 ? NAN : 1.0f; /* 8 of 12 NaN */
    }
    /* the third name holds an escape sequence (a JSON \\u escape): the warning must not pass it on */
    struct test_tensor ta[] = {{"model.layers.0.mlp.down_proj.weight", "F32", 2, {3, 4}, good},
                               {"model.norm.weight", "F32", 1, {4}, good},
                               {"model.layers.0.\\u001b[2Jx", "F32", 1, {4}, good}};
    struct test_tensor tb[] = {{"model.layers.0.mlp.down_proj.weight", "F32", 2, {3, 4}, bad},
                               {"model.norm.weight", "F32", 1, {4}, good},
                               {"model.layers.0.\\u001b[2Jx", "F32", 1, {4}, bad}};
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    for (int k = 0; k < 2; k++) {
        char path[1100];
        mkdir_p(k ? b : a);
        snprintf(path, sizeof path, "%s/model.safetensors", k ? b : a);
        CHECK_INT(test_write_safetensors(path, k ? tb : ta, 3), 0);
        snprintf(path, sizeof path, "%s/config.json", k ? b : a);
        CHECK_INT(test_write_text(path, "{\"num_hidden_layers\": 1}"), 0);
    }
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\ndtype: float32\n", a, b);
    CHECK_INT(test_write_text(cfg, yaml), 0);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, out);
    int rc = alloy(args, &log);
    CHECK_MSG(rc == 0, "NaN input must not stop the merge (exit %d): %s", rc, log);
    CHECK_STR_CONTAINS(log, "alloy: warning: tensor 'model.layers.0.mlp.down_proj.weight': 8 of 12 output values are NaN");
    CHECK_MSG(log && !strstr(log, "model.norm.weight"), "warning for a finite tensor: %s", log);
    CHECK_STR_CONTAINS(log, "alloy: warning: tensor 'model.layers.0.?[2Jx': 2 of 4 output values are NaN");
    CHECK_MSG(log && !strchr(log, '\x1b'), "escape sequence echoed: %s", log);
    free(log);
    /* the --dry-run plan lists the names, neutralised too */
    snprintf(args, sizeof args, "merge %s --dry-run", cfg);
    CHECK_INT(alloy(args, &log), 0);
    CHECK_STR_CONTAINS(log, "model.layers.0.?[2Jx [4] F32 <- linear");
    CHECK_MSG(log && !strchr(log, '\x1b'), "escape sequence echoed by --dry-run: %s", log);
    free(log);
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_model_open(out, &m, &err), ALLOY_OK);
    const struct alloy_tensor *t = m ? alloy_model_find(m, "model.layers.0.mlp.down_proj.weight") : NULL;
    CHECK(t != NULL);
    if (t) { /* (good + bad) / 2, NaN where bad is NaN */
        for (int i = 0; i < 12; i++) {
            float v;
            memcpy(&v, t->data + 4 * i, 4);
            if (i % 3) CHECK_MSG(isnan(v), "element %d: %g, expected NaN", i, v);
            else CHECK_NEAR(v, (good[i] + 1.0) / 2.0, 1e-6);
        }
    }
    alloy_model_close(m);
}

TEST(robust_eval_sizes_checked_before_allocation)
{
    /* a 1 kB config.json asking for 4.6e11 parameters: refused from the stored tensors' shapes,
       not by trying to allocate 1.8 TB first (that would say "out of memory") */
    const char *dir = test_tmpdir();
    char m[1000], path[1200], args[3000], *log = NULL;
    snprintf(m, sizeof m, "%s/m", dir);
    mkdir_p(m);
    snprintf(path, sizeof path, "cp " FIX("base") "/* '%s/'", m);
    CHECK_INT(system(path), 0);
    snprintf(path, sizeof path, "%s/config.json", m);
    CHECK_INT(test_write_text(path, "{\"model_type\": \"llama\", \"vocab_size\": 1000000, \"hidden_size\": 16384, "
                                    "\"intermediate_size\": 65536, \"num_hidden_layers\": 100, "
                                    "\"num_attention_heads\": 128, \"num_key_value_heads\": 128, \"head_dim\": 128}"), 0);
    snprintf(args, sizeof args, "eval %s --text tests/data/eval_code.txt --quiet", m);
    int rc = alloy(args, &log);
    const char *want[] = {"model.embed_tokens.weight", "[1000000, 16384] (from config.json), found [260, 128]", NULL};
    expect_failure("eval sizes", rc, log, NULL, want);
    free(log);
}

TEST(robust_empty_tensor_with_huge_rows)
{
    /* shape [0, 2^40] is a valid, empty tensor: whole-row methods must not size scratch from the row length
       (that asked malloc for 12 TB: "out of memory" in a normal build, an abort under ASan) */
    const char *dir = test_tmpdir();
    char m[3][1000], path[1200], cfg[1100], yaml[4000], args[3000], *log = NULL;
    static const char hdr[] = "{\"model.layers.0.mlp.up_proj.weight\":{\"dtype\":\"F32\",\"shape\":[0,1099511627776],"
                              "\"data_offsets\":[0,0]},\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[2],"
                              "\"data_offsets\":[0,8]}}";
    for (int k = 0; k < 3; k++) {
        snprintf(m[k], sizeof m[k], "%s/m%d", dir, k);
        size_t len;
        uint8_t *img = st_image(hdr, 8, &len);
        model_dir(m[k], img, len);
        free(img);
    }
    static const char *const methods[] = {
        "della\nparameters: {weight: 1, density: 0.5, epsilon: 0.1}", "model_stock", "arcee_fusion",
        "nuslerp\nparameters: {weight: 0.5, nuslerp_flatten: false, nuslerp_row_wise: true}", "linear\nparameters: {weight: 1}",
    };
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        int two = !strncmp(methods[i], "arcee", 5);
        snprintf(yaml, sizeof yaml, "merge_method: %s\nbase_model: %s\nmodels:\n  - model: %s\n%s%s%s\n", methods[i], m[0],
                 m[1], two ? "" : "  - model: ", two ? "" : m[2], "");
        CHECK_INT(test_write_text(cfg, yaml), 0);
        snprintf(path, sizeof path, "%s/out%zu", dir, i);
        snprintf(args, sizeof args, "merge %s %s --quiet --random-seed 3", cfg, path);
        int rc = alloy(args, &log);
        CHECK_MSG(rc == 0, "%s: exit %d: %s", methods[i], rc, log);
        free(log);
    }
}

TEST(robust_many_shards_under_a_low_fd_limit)
{
    /* 2 models x 40 shards with a soft limit of 64 descriptors: every shard stays open during the merge,
       so the CLI must raise its soft limit (the hard one allows it) instead of failing with EMFILE */
    const char *dir = test_tmpdir();
    char m[2][900], path[2100], cfg[1100], yaml[3000], cmd[4000], *log = NULL;
    float v[2] = {1, 2};
    for (int k = 0; k < 2; k++) {
        snprintf(m[k], sizeof m[k], "%s/m%d", dir, k);
        mkdir_p(m[k]);
        char index[8192];
        size_t n = (size_t)snprintf(index, sizeof index, "{\"weight_map\":{");
        for (int i = 0; i < 40; i++) {
            char name[64], file[64];
            snprintf(name, sizeof name, "model.layers.%d.w", i);
            snprintf(file, sizeof file, "model-%05d-of-00040.safetensors", i + 1);
            struct test_tensor t[] = {{name, "F32", 1, {2}, v}};
            snprintf(path, sizeof path, "%s/%s", m[k], file);
            CHECK_INT(test_write_safetensors(path, t, 1), 0);
            n += (size_t)snprintf(index + n, sizeof index - n, "%s\"%s\":\"%s\"", i ? "," : "", name, file);
        }
        snprintf(index + n, sizeof index - n, "}}");
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", m[k]);
        CHECK_INT(test_write_text(path, index), 0);
        snprintf(path, sizeof path, "%s/config.json", m[k]);
        CHECK_INT(test_write_text(path, "{\"num_hidden_layers\": 40}"), 0);
    }
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\n", m[0], m[1]);
    CHECK_INT(test_write_text(cfg, yaml), 0);
    snprintf(cmd, sizeof cmd, "ulimit -S -n 64 && timeout 60 %s merge %s %s/out --quiet", test_alloy_bin(), cfg, dir);
    int rc = test_run(cmd, &log);
    CHECK_MSG(rc == 0, "exit %d: %s", rc, log);
    free(log);
}

/* ------------------------------------------------------------ output folder safety */

TEST(robust_output_never_touches_inputs)
{
    const char *dir = test_tmpdir();
    char in[1000], path[1200], out[1100], cfg[1100], yaml[2000], args[3000], *log = NULL;
    /* a private copy of a fixture, so that a bug cannot damage the repository */
    snprintf(in, sizeof in, "%s/input", dir);
    mkdir_p(in);
    snprintf(path, sizeof path, "cp " FIX("code") "/* '%s/'", in);
    CHECK_INT(system(path), 0);
    uint64_t before = test_hash_dir(in);
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    snprintf(yaml, sizeof yaml, "merge_method: passthrough\nmodels:\n  - model: %s\n", in);
    CHECK_INT(test_write_text(cfg, yaml), 0);

    struct { const char *name, *out, *want; } cases[] = {
        {"same folder", "input", "is the input model"},
        {"trailing slash", "input/", "is the input model"},
        {"dot path", "input/.", "is the input model"},
        {"symlink to input", "link", "is the input model"},
        {"file inside input", "input/model.safetensors", "lies inside the input model"},
        {"new folder inside input", "input/merged", "lies inside the input model"},
        {"parent of input", ".", "contains the input model"},
    };
    snprintf(path, sizeof path, "%s/link", dir);
    CHECK_INT(symlink("input", path), 0);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(out, sizeof out, "%s/%s", dir, cases[i].out);
        snprintf(args, sizeof args, "merge %s %s --quiet", cfg, out);
        int rc = alloy(args, &log);
        const char *w[] = {cases[i].want, "never overwrites its inputs", NULL};
        expect_failure(cases[i].name, rc, log, NULL, w);
        free(log);
        CHECK_MSG(test_hash_dir(in) == before, "%s: the input folder changed", cases[i].name);
        CHECK_INT(test_leftovers(dir) + test_leftovers(in), 0);
    }
    snprintf(path, sizeof path, "%s/merged", in);
    CHECK_MSG(access(path, F_OK) != 0, "a folder was created inside the input");

    /* an output path that is a file (not an input) is not deleted to make room */
    char file[1100];
    snprintf(file, sizeof file, "%s/notes.txt", dir);
    CHECK_INT(test_write_text(file, "mine"), 0);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, file);
    int frc = alloy(args, &log);
    const char *wf[] = {"exists and is not a folder", NULL};
    expect_failure("output is a file", frc, log, NULL, wf);
    free(log);
    struct stat fst;
    CHECK(stat(file, &fst) == 0 && S_ISREG(fst.st_mode) && fst.st_size == 4);

    /* HF-cache layout: the snapshot's files are links into blobs/; writing over blobs/ must be refused */
    char blobs[1100], snap[1100];
    snprintf(blobs, sizeof blobs, "%s/hub/blobs", dir);
    snprintf(snap, sizeof snap, "%s/hub/snapshots/abc", dir);
    mkdir_p(blobs);
    mkdir_p(snap);
    snprintf(path, sizeof path, "cp " FIX("code/model.safetensors") " '%s/f00d'", blobs);
    CHECK_INT(system(path), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", snap);
    CHECK_INT(symlink("../../blobs/f00d", path), 0);
    snprintf(path, sizeof path, "%s/config.json", snap);
    CHECK_INT(test_write_text(path, "{\"num_hidden_layers\": 4}"), 0);
    uint64_t blobs_before = test_hash_dir(blobs);
    snprintf(yaml, sizeof yaml, "merge_method: passthrough\nmodels:\n  - model: %s\n", snap);
    CHECK_INT(test_write_text(cfg, yaml), 0);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, blobs);
    int rc = alloy(args, &log);
    const char *w[] = {"a file of input model", NULL};
    expect_failure("output holds a linked shard", rc, log, NULL, w);
    free(log);
    CHECK_MSG(test_hash_dir(blobs) == blobs_before, "the blobs folder changed");
}

/* An output path that is a symlink to a folder stands for that folder (mergekit writes into it): the folder's
 * contents are checked like any output folder's, the link is kept, a dangling link is refused. */
TEST(robust_output_symlink_stands_for_its_folder_and_mode)
{
    const char *dir = test_tmpdir();
    char target[1000], keep[1100], link[1000], cfg[1100], args[3000], path[1200], *log = NULL;
    snprintf(target, sizeof target, "%s/precious", dir);
    mkdir_p(target);
    snprintf(keep, sizeof keep, "%s/notes.txt", target);
    CHECK_INT(test_write_text(keep, "do not delete"), 0);
    snprintf(link, sizeof link, "%s/out", dir);
    CHECK_INT(symlink("precious", link), 0);
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    CHECK_INT(test_write_text(cfg, "merge_method: passthrough\nmodels:\n  - model: " FIX("code") "\n"), 0);
    /* the folder it links to holds a user file: refused, nothing touched */
    uint64_t before = test_hash_dir(dir);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, link);
    int rc = alloy(args, &log);
    const char *w[] = {target, "notes.txt", "--overwrite", NULL};
    expect_failure("link to a folder holding a user file", rc, log, NULL, w);
    free(log);
    CHECK_MSG(test_hash_dir(dir) == before, "the link or its folder changed");
    CHECK_INT(test_leftovers(dir), 0);
    /* once it holds nothing else, the merge replaces that folder and keeps the link */
    CHECK_INT(unlink(keep), 0);
    rc = alloy(args, &log);
    CHECK_MSG(rc == 0, "merge failed: %s", log);
    free(log);
    struct stat st;
    CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
    CHECK(lstat(target, &st) == 0 && S_ISDIR(st.st_mode));
    /* built private (0700) but published with the permissions the umask gives a new folder */
    mode_t um = umask(0);
    umask(um);
    CHECK_INT(st.st_mode & 0777, 0777 & ~um);
    snprintf(path, sizeof path, "%s/model.safetensors", target);
    CHECK(access(path, F_OK) == 0);
    CHECK_INT(test_leftovers(dir), 0);
    /* a second merge through the link replaces its own earlier output */
    rc = alloy(args, &log);
    CHECK_MSG(rc == 0, "second merge failed: %s", log);
    free(log);
    CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode) && access(path, F_OK) == 0);
    /* a dangling link is refused, and stays as it was */
    snprintf(path, sizeof path, "%s/dangling", dir);
    CHECK_INT(symlink("missing", path), 0);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, path);
    rc = alloy(args, &log);
    const char *wd[] = {path, "symlink to a path that does not exist", NULL};
    expect_failure("dangling link", rc, log, NULL, wd);
    free(log);
    CHECK(lstat(path, &st) == 0 && S_ISLNK(st.st_mode));
    CHECK_INT(test_leftovers(dir), 0);
}

/* ------------------------------------------------------------ fuzz regressions */

/* The shard folder fuzz/fuzz_index.c builds (the shards its inputs name). */
static void index_folder(const char *dir)
{
    float v[4] = {1, 2, 3, 4};
    struct test_tensor a[] = {{"x", "F32", 1, {1}, v}, {"y", "F32", 1, {2}, v}, {"model.layers.0.w", "F32", 1, {3}, v},
                              {"shared", "F32", 1, {4}, v}};
    struct test_tensor b[] = {{"z", "F32", 1, {1}, v}, {"shared", "F32", 1, {2}, v}, {"x", "F32", 1, {3}, v}};
    struct test_tensor s[] = {{"model.embed_tokens.weight", "F32", 1, {1}, v}, {"lm_head.weight", "F32", 1, {2}, v}};
    char path[1200];
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    CHECK_INT(test_write_safetensors(path, a, 4), 0);
    snprintf(path, sizeof path, "%s/b.safetensors", dir);
    CHECK_INT(test_write_safetensors(path, b, 3), 0);
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    CHECK_INT(test_write_safetensors(path, s, 2), 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK_INT(test_write_text(path, "{\"num_hidden_layers\": 1}"), 0);
}

static int one_line(const struct alloy_err *e)
{
    for (const char *p = e->msg; *p; p++)
        if ((unsigned char)*p < 0x20) return 0;
    return e->msg[0] != '\0';
}

/* Replays one regression input through its target's entry point; returns
 * the status and leaves the message in *err. */
static int replay(const char *target, const char *data, size_t len, const char *scratch, struct alloy_err *err)
{
    if (!strcmp(target, "safetensors")) {
        struct alloy_st_file *f = NULL;
        int rc = alloy_st_open_memory((const uint8_t *)data, len, "fuzz.safetensors", &f, err);
        alloy_st_close(f);
        return rc;
    }
    if (!strcmp(target, "index")) {
        char path[1200];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", scratch);
        CHECK_INT(write_bytes(path, data, len), 0);
        struct alloy_model *m = NULL;
        int rc = alloy_model_open(scratch, &m, err);
        alloy_model_close(m);
        return rc;
    }
    if (!strcmp(target, "tokenizer")) {
        struct alloy_tokenizer *t = NULL;
        int rc = alloy_tokenizer_parse(data, "tokenizer.json", &t, err);
        if (rc == ALLOY_OK) {
            int32_t *ids = NULL;
            size_t n = 0;
            const char *text = data + strlen(data) + (strlen(data) < len);
            if (alloy_tokenizer_encode(t, text, len - (size_t)(text - data), "text", &ids, &n, err) == ALLOY_OK) {
                char *out = NULL;
                size_t olen;
                if (alloy_tokenizer_decode(t, ids, n, &out, &olen, err) == ALLOY_OK) free(out);
            }
            free(ids);
        }
        alloy_tokenizer_free(t);
        return rc;
    }
    if (!strcmp(target, "llama_config")) {
        struct alloy_llama_config c;
        return alloy_llama_config_parse(data, "config.json", &c, err);
    }
    if (!strcmp(target, "config")) {
        struct alloy_config *c = NULL;
        int rc = alloy_config_parse(data, len, "fuzz.yml", &c, err);
        alloy_config_free(c);
        return rc;
    }
    if (!strcmp(target, "adapter_config")) {
        struct alloy_adapter *a = NULL;
        int rc = alloy_adapter_parse_config(data, len, "adapter_config.json", &a, err);
        alloy_adapter_close(a);
        return rc;
    }
    if (!strcmp(target, "torch_zip")) {
        struct alloy_tensor_file *f = NULL;
        int rc = alloy_pt_open_memory((const uint8_t *)data, len, "fuzz.bin", &f, err);
        alloy_tensor_file_close(f);
        return rc;
    }
    if (!strcmp(target, "pickle")) {
        struct alloy_pickle_tensor *t = NULL;
        size_t n = 0;
        int rc = alloy_pickle_state_dict((const uint8_t *)data, len, "fuzz.bin: archive/data.pkl", &t, &n, err);
        alloy_pickle_free(t, n);
        return rc;
    }
    if (!strcmp(target, "vocab")) { /* fuzz_vocab.c: the first byte is the config vocab size */
        size_t n = 0;
        return len ? alloy_vocab_check_text(data + 1, len - 1, (unsigned char)data[0], "<|im_start|>", &n, err)
                   : alloy_err_set(err, ALLOY_ERR_FORMAT, "empty input");
    }
    test_fail(__FILE__, __LINE__, "regression input for unknown target '%s'", target);
    return -1;
}

TEST(robust_fuzz_regressions_replay)
{
    const char *rdir = test_data("regress");
    char scratch[1000];
    snprintf(scratch, sizeof scratch, "%s", test_tmpdir());
    index_folder(scratch);
    struct dirent **list = NULL;
    int n = scandir(rdir, &list, NULL, alphasort), replayed = 0;
    CHECK_MSG(n > 0, "no regression inputs in %s", rdir);
    for (int i = 0; i < n; i++) {
        const char *name = list[i]->d_name;
        char path[1200], target[64];
        const char *dash = strchr(name, '-');
        if (name[0] == '.' || !dash || (size_t)(dash - name) >= sizeof target) { free(list[i]); continue; }
        memcpy(target, name, (size_t)(dash - name));
        target[dash - name] = '\0';
        snprintf(path, sizeof path, "%s/%s", rdir, name);
        size_t len = 0;
        char *data = test_read_file(path, &len);
        CHECK_MSG(data != NULL, "cannot read %s", path);
        struct alloy_err err = {0};
        int rc = data ? replay(target, data, len, scratch, &err) : 0;
        /* every regression input so far is invalid: it must be refused with one clean line */
        CHECK_MSG(rc != ALLOY_OK && one_line(&err), "%s: status %d, message \"%s\"", name, rc, err.msg);
        replayed++;
        free(data);
        free(list[i]);
    }
    free(list);
    CHECK(replayed >= 3);
}

TEST(robust_index_non_string_shard_regression)
{
    /* fuzz/fuzz_index.c found this: a later non-string weight_map value for a tensor that is in an
       earlier shard reached strcmp(NULL, ...) (model.c add_file_tensors) */
    const char *dir = test_tmpdir();
    index_folder(dir);
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    CHECK_INT(test_write_text(path, "{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": 5}}"), 0);
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_model_open(dir, &m, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "'y': expected a shard file name");
    CHECK(m == NULL);
    /* and a valid index over the same shards still opens, one entry per tensor */
    CHECK_INT(test_write_text(path, "{\"weight_map\": {\"x\": \"b.safetensors\", \"y\": \"a.safetensors\", "
                                    "\"shared\": \"a.safetensors\", \"z\": \"b.safetensors\"}}"), 0);
    CHECK_INT(alloy_model_open(dir, &m, &err), ALLOY_OK);
    if (m) {
        CHECK_INT(alloy_model_count(m), 4);
        CHECK_INT(alloy_model_find(m, "x")->numel, 3); /* the b.safetensors one */
        CHECK_INT(alloy_model_find(m, "shared")->numel, 4);
    }
    alloy_model_close(m);
}

/* ------------------------------------------------------------ valgrind (slow) */

TEST(robust_valgrind_merge)
{
    if (!getenv("ALLOY_SLOW_TESTS") || SANITIZER_BUILD || test_run("valgrind --version", NULL) != 0) return;
    const char *dir = test_tmpdir();
    char cfg[1100], args[3000], *log = NULL;
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    CHECK_INT(test_write_text(cfg, "merge_method: ties\nbase_model: " FIX("base") "\nmodels:\n"
                              "  - model: " FIX("code") "\n    parameters: {weight: 1, density: 0.5}\n"
                              "  - model: " FIX("prose") "\n    parameters: {weight: 0.5, density: 0.7}\n"
                              "dtype: bfloat16\n"), 0);
    snprintf(args, sizeof args, "valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect "
             "%s merge %s %s/out --threads 2 --quiet --out-shard-size 500K", test_alloy_bin(), cfg, dir);
    CHECK_MSG(test_run(args, &log) == 0, "valgrind reported errors: %s", log);
    free(log);
    snprintf(args, sizeof args, "valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect "
             "%s eval %s/out --text tests/data/eval_code.txt --max-windows 1 --threads 1 --quiet", test_alloy_bin(), dir);
    CHECK_MSG(test_run(args, &log) == 0, "valgrind reported errors in eval: %s", log);
    free(log);
}
