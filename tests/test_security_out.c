/*
 * test_security_out.c — issue 13's output rule for the commands beyond
 * `alloy merge` into a folder: a GGUF output file and `lora apply`.
 *
 * DESIGN
 *   Each case builds its hostile output path in the test's scratch folder
 *   (an input adapter folder, a shard of a split GGUF input, a user's file
 *   that happens to end in .gguf, a folder inside an input), runs `alloy`
 *   under `timeout` and checks the promise: exit 1, one "alloy: error:" line
 *   naming the path and the reason, the inputs and the user's file
 *   byte-identical (test_hash_dir), no temporary file left. The rules are
 *   in docs/security.md ("What alloy writes") with these names.
 */
#include "test.h"
#include "alloy.h"

#include <stdlib.h>
#include <unistd.h>

static void sh(const char *fmt, const char *a, const char *b)
{
    char cmd[3000];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    CHECK_MSG(system(cmd) == 0, "%s", cmd);
}

/* Runs `alloy args` (under timeout); expects exit 1 with one error line holding want and want2. */
static void refused(const char *args, const char *want, const char *want2)
{
    char cmd[4000], *log = NULL;
    snprintf(cmd, sizeof cmd, "timeout 120 %s %s --quiet", test_alloy_bin(), args);
    int rc = test_run(cmd, &log);
    CHECK_MSG(rc == 1, "%s: exit %d, expected 1: %s", args, rc, log ? log : "");
    CHECK_MSG(test_count_lines(log, "alloy: error: ") == 1, "%s: expected one error line: %s", args, log ? log : "");
    CHECK_MSG(log && strstr(log, want) && strstr(log, want2), "%s: \"%s\", \"%s\" not in: %s", args, want, want2,
              log ? log : "");
    free(log);
}

static int succeeds(const char *args)
{
    char cmd[4000], *log = NULL;
    snprintf(cmd, sizeof cmd, "timeout 120 %s %s --quiet", test_alloy_bin(), args);
    int rc = test_run(cmd, &log);
    CHECK_MSG(rc == 0, "%s: exit %d: %s", args, rc, log ? log : "");
    free(log);
    return rc;
}

/* `lora apply MODEL ADAPTER OUT`: OUT may not be, or lie inside, the adapter folder (it was replaced whole,
 * deleting the adapter: its two files are names an output folder may hold). */
TEST(security_out_is_never_the_input_adapter)
{
    const char *dir = test_tmpdir();
    char ad[1000], args[3000], sub[1100];
    snprintf(ad, sizeof ad, "%s/adapter", dir);
    sh("cp -r tests/data/tiny-llama-lora/code-r8 '%s'%s", ad, "");
    uint64_t before = test_hash_dir(ad);
    snprintf(args, sizeof args, "lora apply tests/data/tiny-llama/code %s %s", ad, ad);
    refused(args, "is the input adapter", "never overwrites its inputs");
    snprintf(sub, sizeof sub, "%s/merged", ad);
    snprintf(args, sizeof args, "lora apply tests/data/tiny-llama/code %s %s --overwrite", ad, sub);
    refused(args, "lies inside the input adapter", "never overwrites its inputs");
    snprintf(sub, sizeof sub, "%s/merged.gguf", ad);
    snprintf(args, sizeof args, "lora apply tests/data/tiny-llama/code %s %s", ad, sub);
    refused(args, "lies inside the input adapter", "never overwrites its inputs");
    CHECK_MSG(test_hash_dir(ad) == before, "the adapter folder changed");
    CHECK_INT(test_leftovers(dir), 0);
}

/* A GGUF output file follows the folder rule: never a shard of a split input, never inside an input's folder
 * (its subfolders too), never over a user's file that is not a GGUF file unless --overwrite. */
TEST(security_gguf_out_never_replaces_inputs_or_user_files)
{
    const char *dir = test_tmpdir();
    char split[1000], in[1000], args[3000], path[1200];
    snprintf(split, sizeof split, "%s/split", dir);
    sh("cp -r tests/data/gguf/split '%s'%s", split, "");
    uint64_t before = test_hash_dir(split);
    for (int k = 2; k <= 3; k++) {
        snprintf(args, sizeof args, "convert %s/base-Q4_K_M-00001-of-00003.gguf %s/base-Q4_K_M-0000%d-of-00003.gguf",
                 split, split, k);
        refused(args, "a file of input model", "never overwrites its inputs");
    }
    CHECK_MSG(test_hash_dir(split) == before, "a shard of the split input was rewritten");

    snprintf(in, sizeof in, "%s/in", dir);
    sh("cp -r tests/data/tiny-llama/code '%s' && mkdir '%s/sub'", in, in);
    before = test_hash_dir(in);
    snprintf(args, sizeof args, "convert %s %s/sub/x.gguf", in, in);
    refused(args, "lies inside the input model", "never overwrites its inputs");
    CHECK_MSG(test_hash_dir(in) == before, "the input folder changed");

    snprintf(path, sizeof path, "%s/thesis.gguf", dir); /* a user's file, not a GGUF file */
    CHECK_INT(test_write_text(path, "chapter one"), 0);
    snprintf(args, sizeof args, "convert %s %s", in, path);
    refused(args, path, "--overwrite");
    char *text = test_read_file(path, NULL);
    CHECK_MSG(text && strcmp(text, "chapter one") == 0, "the user's file was replaced");
    free(text);
    CHECK_INT(test_leftovers(dir), 0);
    /* a GGUF file is replaced; --overwrite replaces anything that is not a folder */
    snprintf(args, sizeof args, "convert %s %s --overwrite", in, path);
    if (succeeds(args) == 0) {
        snprintf(args, sizeof args, "convert %s %s", in, path);
        succeeds(args);
    }
    CHECK_INT(test_leftovers(dir), 0);
}

/* A second `alloy moe` into the same OUT replaces the first one's output: mergekit_moe_config.yml is a name a
 * model output holds (it was taken for a user's file, so every rerun was refused). */
TEST(security_moe_output_is_replaced_by_a_rerun)
{
    const char *dir = test_tmpdir();
    char args[3000];
    snprintf(args, sizeof args, "moe examples/moe/tiny_mixtral.yml %s/moe", dir);
    if (succeeds(args) == 0) succeeds(args);
    CHECK_INT(test_leftovers(dir), 0);
}

/* `alloy moe` copies the base's tokenizer files under the model-folder trust rule, checked before any work: a
 * tokenizer.model that links out of the base (a secret) is refused by name and nothing is written. */
TEST(security_moe_tokenizer_link_out_of_the_base_refused)
{
    const char *dir = test_tmpdir();
    char base[600], secret[600], cfg[700], yaml[1600], args[3000];
    snprintf(base, sizeof base, "%s/base", dir);
    snprintf(secret, sizeof secret, "%s/id_secret", dir);
    sh("mkdir -p %s && cp tests/data/tiny-llama/base/* %s/", base, base);
    CHECK_INT(test_write_text(secret, "PRIVATE KEY\n"), 0);
    sh("ln -sf %s %s/tokenizer.model", secret, base);
    snprintf(yaml, sizeof yaml, "base_model: %s\ngate_mode: random\nexperts_per_token: 1\nexperts:\n"
             "  - source_model: tests/data/tiny-llama/code\n  - source_model: tests/data/tiny-llama/prose\n", base);
    snprintf(cfg, sizeof cfg, "%s/moe.yml", dir);
    CHECK_INT(test_write_text(cfg, yaml), 0);
    snprintf(args, sizeof args, "moe %s %s/out", cfg, dir);
    refused(args, "tokenizer.model", "base");
    snprintf(args, sizeof args, "%s/out", dir);
    CHECK(access(args, F_OK) != 0);
    CHECK_INT(test_leftovers(dir), 0);
}

/* An interrupt (the CLI sets the flag on SIGINT/SIGTERM and exits 130) stops `alloy moe` before its next piece
 * of work: ALLOY_ERR_INTERRUPTED, no output folder, no temporary folder left. */
TEST(security_moe_interrupted_leaves_nothing)
{
    const char *dir = test_tmpdir();
    char out[600];
    snprintf(out, sizeof out, "%s/out", dir);
    volatile int stop = 1;
    struct alloy_moe_options o;
    alloy_moe_options_init(&o);
    o.config_path = "examples/moe/tiny_mixtral.yml";
    o.out_dir = out;
    o.interrupt = &stop;
    struct alloy_err err = {0};
    CHECK_INT(alloy_moe(&o, &err), ALLOY_ERR_INTERRUPTED);
    CHECK(access(out, F_OK) != 0);
    CHECK_INT(test_leftovers(dir), 0);
    stop = 0;
    CHECK_MSG(alloy_moe(&o, &err) == ALLOY_OK, "%s", err.msg);
    CHECK(access(out, F_OK) == 0);
}

/* Under an address-space limit too small for OpenBLAS's per-core buffers, every command hung before its
 * work (`alloy --version` too): the CLI now runs OpenBLAS single-threaded under a finite RLIMIT_AS. */
TEST(security_small_address_space_does_not_hang)
{
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__) /* sanitizers reserve terabytes */
    char cmd[2000], *log = NULL;
    snprintf(cmd, sizeof cmd, "ulimit -v 120000 && env -u OPENBLAS_NUM_THREADS timeout 30 %s --version",
             test_alloy_bin());
    int rc = test_run(cmd, &log);
    CHECK_MSG(rc == 0 && log && strstr(log, "alloy "), "exit %d: %s", rc, log ? log : "");
    free(log);
#ifdef ALLOY_HAVE_OPENBLAS
    /* the BLAS commands: OpenBLAS's per-thread buffer does not fit, and it would retry forever (lora extract
     * spun until killed): one error line instead, no output, no leftover */
    static const char *const cmds[] = {
        "lora extract --model tests/data/tiny-llama/code --base-model tests/data/tiny-llama/base --out-path %s/lx "
        "--max-rank 4",
        "eval tests/data/tiny-llama/base --text tests/data/eval_code.txt",
        "lora apply tests/data/tiny-llama/base tests/data/tiny-llama-lora/code-r8 %s/la",
    };
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        char args[600];
        snprintf(args, sizeof args, cmds[i], test_tmpdir());
        snprintf(cmd, sizeof cmd, "ulimit -v 100000 && env -u OPENBLAS_NUM_THREADS timeout -s KILL 60 %s %s -q 2>&1",
                 test_alloy_bin(), args);
        log = NULL;
        rc = test_run(cmd, &log);
        CHECK_MSG(rc == 1 && test_count_lines(log, "alloy: error: ") == 1 && strstr(log, "ulimit -v"),
                  "%s: exit %d: %s", cmds[i], rc, log ? log : "");
        free(log);
    }
    CHECK_INT(test_leftovers(test_tmpdir()), 0);
#endif
#endif
}
