/*
 * test_security.c — issue 13's hostile inputs through the CLI: links out of a
 * model folder, output folders holding user data or an input's files, and
 * concurrent or killed runs into one output folder.
 *
 * DESIGN
 *   Each case builds its hostile input in the test's scratch folder from a
 *   private copy of a bundled tiny model, runs `alloy` under `timeout`, and
 *   checks the promise: exit 1 with one "alloy: error:" line naming the
 *   file or folder, no output and no temporary folder left, the inputs and
 *   unrelated files byte-identical (test_hash_dir). Secrets are marker
 *   files outside the model folder; a case fails if their bytes could reach
 *   the output. The rules are listed in docs/security.md with these names.
 */
#include "test.h"
#include "alloy.h"

#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX(name) "tests/data/tiny-llama/" name

static void sh(const char *fmt, const char *a, const char *b)
{
    char cmd[3000];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    CHECK_MSG(system(cmd) == 0, "%s", cmd);
}

/* Runs `env alloy args` under timeout(1); returns the exit status. */
static int alloy_env(const char *env, const char *args, char **log)
{
    size_t len = (env ? strlen(env) : 0) + strlen(test_alloy_bin()) + strlen(args) + 32;
    char *cmd = malloc(len);
    snprintf(cmd, len, "%s timeout 120 %s %s", env ? env : "", test_alloy_bin(), args);
    int rc = test_run(cmd, log);
    free(cmd);
    return rc;
}

/* exit 1, one error line holding want and want2 (may be NULL), no sanitizer report. */
static void expect_refusal(const char *what, int rc, const char *log, const char *want, const char *want2)
{
    CHECK_MSG(rc == 1, "%s: exit %d, expected 1: %s", what, rc, log ? log : "");
    CHECK_MSG(test_count_lines(log, "alloy: error: ") == 1 && test_count_lines(log, "") == 1, "%s: expected one line: %s", what,
              log ? log : "");
    CHECK_MSG(log && strstr(log, want), "%s: \"%s\" not in: %s", what, want, log ? log : "");
    CHECK_MSG(!want2 || (log && strstr(log, want2)), "%s: \"%s\" not in: %s", what, want2, log ? log : "");
}

/* Merges cfg into out (extra: more options, may be ""); the run must succeed. */
static void merge_ok(const char *env, const char *cfg, const char *out, const char *extra)
{
    char args[3000], *log = NULL;
    snprintf(args, sizeof args, "merge %s %s --quiet %s", cfg, out, extra);
    int rc = alloy_env(env, args, &log);
    CHECK_MSG(rc == 0, "merge %s %s %s: exit %d: %s", cfg, out, extra, rc, log ? log : "");
    free(log);
}

/* dir/in: a private copy of the code fixture; dir/c.yml: a passthrough of it. */
static void private_input(const char *dir, char *in, size_t cap, char *cfg, size_t ccap)
{
    snprintf(in, cap, "%s/in", dir);
    sh("rm -rf '%s' && cp -r " FIX("code") " '%s'", in, in);
    snprintf(cfg, ccap, "%s/c.yml", dir);
    char yaml[1200];
    snprintf(yaml, sizeof yaml, "merge_method: passthrough\nmodels:\n  - model: %s\n", in);
    CHECK_INT(test_write_text(cfg, yaml), 0);
}

/* ------------------------------------------------------------ 1. links out of a model folder */

TEST(security_links_out_of_model_folder_refused)
{
    const char *dir = test_tmpdir();
    char in[1000], cfg[1100], secret[1100], path[1200], out[1100], args[3000], *log = NULL;
    snprintf(secret, sizeof secret, "%s/id_ed25519", dir);
    CHECK_INT(test_write_text(secret, "-----BEGIN OPENSSH PRIVATE KEY----- secret"), 0);
    CHECK_INT(chmod(secret, 0600), 0);
    snprintf(out, sizeof out, "%s/out", dir);
    static const char *const names[] = {"config.json", "tokenizer.model", "special_tokens_map.json", "tokenizer.json",
                                        "generation_config.json"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        private_input(dir, in, sizeof in, cfg, sizeof cfg);
        snprintf(path, sizeof path, "%s/%s", in, names[i]);
        unlink(path);
        CHECK_INT(symlink(secret, path), 0);
        uint64_t before = test_hash_dir(in), secret_before = test_hash_dir(dir);
        snprintf(args, sizeof args, "merge %s %s --quiet", cfg, out);
        int rc = alloy_env(NULL, args, &log);
        expect_refusal(names[i], rc, log, path, "outside the model folder");
        free(log);
        CHECK_MSG(access(out, F_OK) != 0, "%s: an output was written", names[i]);
        CHECK_INT(test_leftovers(dir), 0);
        CHECK(test_hash_dir(in) == before && test_hash_dir(dir) == secret_before);
    }
    /* the evaluator reads tokenizer.json under the same rule */
    private_input(dir, in, sizeof in, cfg, sizeof cfg);
    snprintf(path, sizeof path, "%s/tokenizer.json", in);
    unlink(path);
    CHECK_INT(symlink(secret, path), 0);
    char text[1100];
    snprintf(text, sizeof text, "%s/t.txt", dir);
    CHECK_INT(test_write_text(text, "def f(x):\n    return x\n"), 0);
    snprintf(args, sizeof args, "eval %s --text %s", in, text);
    int rc = alloy_env(NULL, args, &log);
    expect_refusal("eval tokenizer.json", rc, log, path, "outside the model folder");
    free(log);
    /* a link that stays inside the folder is fine */
    private_input(dir, in, sizeof in, cfg, sizeof cfg);
    sh("cd '%s' && mv tokenizer.json tok.real && ln -s tok.real tokenizer.json%s", in, "");
    merge_ok(NULL, cfg, out, "");
}

/* Shards follow the same rule: a valid safetensors file outside the folder is refused, through
 * model.safetensors and through an index's shard; links inside the folder (a snapshot's blobs/) are followed. */
TEST(security_shards_outside_model_folder_refused)
{
    const char *dir = test_tmpdir();
    char in[1000], cfg[1100], outside[1100], path[1200], out[1100], args[3000], *log = NULL;
    snprintf(outside, sizeof outside, "%s/weights.safetensors", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    for (int indexed = 0; indexed < 2; indexed++) {
        private_input(dir, in, sizeof in, cfg, sizeof cfg);
        sh("mv '%s/model.safetensors' '%s'", in, outside);
        const char *shard = indexed ? "model-00001-of-00001.safetensors" : "model.safetensors";
        snprintf(path, sizeof path, "%s/%s", in, shard);
        CHECK_INT(symlink(outside, path), 0);
        if (indexed) {
            char index[1200];
            snprintf(index, sizeof index, "%s/model.safetensors.index.json", in);
            CHECK_INT(test_write_text(index, "{\"weight_map\": {\"model.embed_tokens.weight\": "
                                             "\"model-00001-of-00001.safetensors\"}}"), 0);
        }
        uint64_t before = test_hash_dir(dir);
        snprintf(args, sizeof args, "merge %s %s --quiet", cfg, out);
        int rc = alloy_env(NULL, args, &log);
        expect_refusal(shard, rc, log, path, "outside the model folder");
        free(log);
        CHECK_MSG(access(out, F_OK) != 0, "%s: an output was written", shard);
        CHECK_INT(test_leftovers(dir), 0);
        CHECK(test_hash_dir(dir) == before);
        /* the same file linked from inside the folder is read */
        CHECK_INT(unlink(path), 0);
        sh("mv '%s' '%s/weights.bin'", outside, in);
        CHECK_INT(symlink("weights.bin", path), 0);
        merge_ok(NULL, cfg, out, "");
        sh("rm -rf '%s'%s", out, "");
    }
}

TEST(security_copies_never_widen_permissions)
{
    const char *dir = test_tmpdir();
    char in[1000], cfg[1100], path[1200], out[1100];
    private_input(dir, in, sizeof in, cfg, sizeof cfg);
    snprintf(path, sizeof path, "%s/special_tokens_map.json", in);
    CHECK_INT(chmod(path, 0600), 0);
    snprintf(out, sizeof out, "%s/out", dir);
    merge_ok(NULL, cfg, out, "");
    struct stat st;
    snprintf(path, sizeof path, "%s/special_tokens_map.json", out);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 077) == 0);
    /* an ordinary copy keeps its bytes (written in pieces) */
    size_t a_len = 0, b_len = 0;
    char *a = test_read_file(FIX("code/tokenizer.json"), &a_len);
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    char *b = test_read_file(path, &b_len);
    CHECK(a && b && a_len == b_len && memcmp(a, b, a_len) == 0);
    free(a);
    free(b);
}

/* ------------------------------------------------------------ 2. user data in the output folder */

TEST(security_out_with_user_files_refused_unless_overwrite)
{
    const char *dir = test_tmpdir();
    char in[1000], cfg[1100], out[1100], path[1200], args[3000], *log = NULL;
    private_input(dir, in, sizeof in, cfg, sizeof cfg);
    snprintf(out, sizeof out, "%s/Documents", dir);
    sh("mkdir -p '%s/taxes' && echo mine > '%s/notes.txt'", out, out);
    snprintf(path, sizeof path, "%s/config.json", out);
    CHECK_INT(test_write_text(path, "{}"), 0);
    uint64_t before = test_hash_dir(out);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, out);
    int rc = alloy_env(NULL, args, &log);
    expect_refusal("user files", rc, log, "notes.txt", "--overwrite");
    CHECK_MSG(log && strstr(log, "taxes/"), "the subfolder is not listed: %s", log);
    free(log);
    CHECK(test_hash_dir(out) == before);
    snprintf(path, sizeof path, "%s/taxes", out);
    CHECK(access(path, F_OK) == 0);
    CHECK_INT(test_leftovers(dir), 0);
    /* --overwrite replaces it as a whole */
    merge_ok(NULL, cfg, out, "--overwrite");
    snprintf(path, sizeof path, "%s/notes.txt", out);
    CHECK(access(path, F_OK) != 0);
    /* a folder holding only a model output is replaced without it (a second run, other shards) */
    merge_ok(NULL, cfg, out, "--out-shard-size 100K");
    CHECK_INT(test_leftovers(dir), 0);
}

/* An HF cache: hub/models--org--tiny/{blobs,refs/main,snapshots/c0ffee}; config.json links into blobs/. */
static void hf_cache(const char *dir, char *repo, size_t cap)
{
    snprintf(repo, cap, "%s/hub/models--org--tiny", dir);
    sh("mkdir -p '%s/blobs' '%s/refs'", repo, repo);
    sh("mkdir -p '%s/snapshots/c0ffee' && cp " FIX("code") "/* '%s/snapshots/c0ffee/'", repo, repo);
    sh("mv '%s/snapshots/c0ffee/config.json' '%s/blobs/cfg0'", repo, repo);
    sh("ln -s ../../blobs/cfg0 '%s/snapshots/c0ffee/config.json' && printf c0ffee > '%s/refs/main'", repo, repo);
}

TEST(security_out_holding_input_files_refused)
{
    const char *dir = test_tmpdir();
    char repo[1000], cfg[1100], out[1100], env[1200], args[3000], *log = NULL;
    hf_cache(dir, repo, sizeof repo);
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    CHECK_INT(test_write_text(cfg, "merge_method: passthrough\nmodels:\n  - model: org/tiny\n"), 0);
    snprintf(env, sizeof env, "HF_HUB_CACHE='%s/hub'", dir);
    uint64_t before = test_hash_dir(repo);
    struct { const char *sub, *want; } cases[] = {
        {"refs", "Hugging Face cache folder"},
        {"blobs", "a file of input model"},
        {"", "contains the input model"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(out, sizeof out, "%s/%s", repo, cases[i].sub);
        snprintf(args, sizeof args, "merge %s %s --quiet --overwrite", cfg, out);
        int rc = alloy_env(env, args, &log);
        expect_refusal(cases[i].sub, rc, log, cases[i].want, "never overwrites its inputs");
        free(log);
        CHECK_MSG(test_hash_dir(repo) == before, "%s: the cache repository changed", cases[i].sub);
        char path[1200];
        snprintf(path, sizeof path, "%s/refs/main", repo);
        CHECK(access(path, F_OK) == 0);
        CHECK_INT(test_leftovers(repo), 0);
    }
    snprintf(out, sizeof out, "%s/out", dir); /* the cache still works as an input */
    merge_ok(env, cfg, out, "");

    /* an input whose config.json links into the output folder (a previous result): refused, nothing rewritten */
    char in[1000], path[1200];
    private_input(dir, in, sizeof in, cfg, sizeof cfg);
    snprintf(path, sizeof path, "%s/config.json", in);
    unlink(path);
    sh("ln -s ../out/config.json '%s'%s", path, "");
    uint64_t out_before = test_hash_dir(out);
    snprintf(args, sizeof args, "merge %s %s --quiet", cfg, out);
    int rc = alloy_env(NULL, args, &log);
    expect_refusal("config.json links into OUT", rc, log, path, "outside the model folder");
    free(log);
    CHECK_MSG(test_hash_dir(out) == out_before, "the output folder an input reads was rewritten");
    CHECK_INT(test_leftovers(dir), 0);
}

/* ------------------------------------------------------------ 3. races and leftovers */

static int alloy_entries(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) n += strstr(e->d_name, ".alloy-") != NULL;
    if (d) closedir(d);
    return n;
}

TEST(security_concurrent_merges_into_one_out)
{
    const char *dir = test_tmpdir();
    char cfg[1100], out[1100], cmd[4000], path[1200];
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    CHECK_INT(test_write_text(cfg, "merge_method: linear\nmodels:\n  - model: " FIX("code") "\n    parameters: {weight: 0.5}\n"
                                   "  - model: " FIX("prose") "\n    parameters: {weight: 0.5}\ndtype: bfloat16\n"), 0);
    snprintf(out, sizeof out, "%s/out", dir);
    /* eight runs at once; the binary path may be relative to the repository, so run from here */
    snprintf(cmd, sizeof cmd, "for i in 1 2 3 4 5 6 7 8; do (timeout 120 %s merge '%s' '%s' --quiet --threads 1 "
             "> '%s/log'$i 2>&1; echo $? > '%s/rc'$i) & done; wait", test_alloy_bin(), cfg, out, dir, dir);
    CHECK_INT(system(cmd), 0);
    for (int i = 1; i <= 8; i++) {
        snprintf(path, sizeof path, "%s/rc%d", dir, i);
        char *rc = test_read_file(path, NULL);
        snprintf(path, sizeof path, "%s/log%d", dir, i);
        char *log = test_read_file(path, NULL);
        int ok = rc && (atoi(rc) == 0 || (atoi(rc) == 1 && test_count_lines(log, "alloy: error: ") == 1));
        CHECK_MSG(ok, "run %d: exit %s: %s", i, rc ? rc : "?", log ? log : "");
        free(rc);
        free(log);
    }
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_model_open(out, &m, &err) == 0, "%s", err.msg);
    if (m) CHECK_INT(alloy_model_count(m), 39);
    alloy_model_close(m);
    CHECK_INT(alloy_entries(dir), 0);
}

TEST(security_stale_temporary_folders_removed)
{
    const char *dir = test_tmpdir();
    char in[1000], cfg[1100], out[1100], stale[1200], live[1200];
    private_input(dir, in, sizeof in, cfg, sizeof cfg);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(stale, sizeof stale, "%s.alloy-tmp-999999-abc", out);
    sh("mkdir -p '%s' && echo partial > '%s/model-00001-of-00002.safetensors'", stale, stale);
    snprintf(live, sizeof live, "%s.alloy-tmp-%ld-xyz", out, (long)getpid()); /* a running owner: kept */
    sh("mkdir -p '%s'%s", live, "");
    merge_ok(NULL, cfg, out, "");
    CHECK_MSG(access(stale, F_OK) != 0, "the stale temporary folder of a dead run was kept");
    CHECK_MSG(access(live, F_OK) == 0, "the temporary folder of a live process was removed");
    rmdir(live);
    CHECK_INT(alloy_entries(dir), 0);
}
