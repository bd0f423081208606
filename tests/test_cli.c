/*
 * test_cli.c — what the commands share (cli/main.c): one usage-error format
 * ("alloy: error: ..." then "Try 'alloy <cmd> --help'.", exit 2) from the one
 * option parser (--name value, --name=value, flags), dispatch including the
 * mergekit-yaml alias, --version, and merge --help listing every method.
 */
#include "test.h"
#include "alloy.h"

#include <stdlib.h>
#include <unistd.h>

/* Runs `alloy ARGS`; expects the exit status and that the output contains each needle. */
static void expect(const char *args, int status, const char *n1, const char *n2)
{
    char cmd[1200], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s %s", test_alloy_bin(), args);
    int rc = test_run(cmd, &out);
    CHECK_MSG(rc == status, "alloy %s: exit %d, expected %d: %s", args, rc, status, out ? out : "");
    CHECK_STR_CONTAINS(out, n1);
    if (n2) CHECK_STR_CONTAINS(out, n2);
    free(out);
}

TEST(cli_usage_errors_one_format)
{
    expect("merge", 2, "alloy: error: expected CONFIG.yml and OUT_DIR\n", "Try 'alloy merge --help'.\n");
    expect("merge a.yml out --dry-run=1", 2, "alloy: error: option --dry-run takes no value", "Try 'alloy merge --help'.");
    expect("merge a.yml out --threads", 2, "alloy: error: option --threads needs a value", NULL);
    expect("merge a.yml out -j 0", 2, "alloy: error: --threads: expected 1..1024, got '0'", NULL);
    expect("merge a.yml out --out-shard-size=lots", 2, "--out-shard-size: expected a size like 1G", NULL);
    expect("merge a.yml out extra", 2, "alloy: error: unexpected argument 'extra'", NULL);
    expect("merge a.yml out --bogus", 2, "alloy: error: unknown option '--bogus'", NULL);
    expect("merge a.yml out --no-safe-serialization", 2, "alloy: error: --no-safe-serialization: alloy writes "
           "safetensors only", NULL);
    expect("eval --frobnicate", 2, "alloy: error: unknown option '--frobnicate'", "Try 'alloy eval --help'.");
    expect("frobnicate", 2, "alloy: error: unknown command 'frobnicate'", "Try 'alloy --help'.");
}

TEST(cli_dispatch_version_help_alias)
{
    expect("--version", 0, "alloy " ALLOY_VERSION "\n", NULL);
    expect("--help", 0, "usage: alloy merge CONFIG.yml OUT_DIR", NULL);
    struct alloy_method_info m;
    char cmd[1200], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s merge --help", test_alloy_bin());
    CHECK_INT(test_run(cmd, &out), 0);
    for (size_t i = 0; alloy_method_info(i, &m) == 0; i++) {
        char line[64];
        snprintf(line, sizeof line, "\n  %-17s ", m.name);
        CHECK_STR_CONTAINS(out, line);
    }
    free(out);
    /* the same binary run as mergekit-yaml is `alloy merge` */
    const char *dir = test_tmpdir();
    char bin[600];
    if (test_alloy_bin()[0] == '/') snprintf(bin, sizeof bin, "%s", test_alloy_bin());
    else if (!getcwd(bin, 300) || strlen(bin) + strlen(test_alloy_bin()) + 2 > sizeof bin) return;
    else snprintf(bin + strlen(bin), sizeof bin - strlen(bin), "/%s", test_alloy_bin());
    snprintf(cmd, sizeof cmd, "ln -s '%s' '%s/mergekit-yaml' && '%s/mergekit-yaml' --bogus", bin, dir, dir);
    CHECK_INT(test_run(cmd, &out), 2);
    CHECK_STR_CONTAINS(out, "alloy: error: unknown option '--bogus'");
    free(out);
    snprintf(cmd, sizeof cmd, "'%s/mergekit-yaml' examples/linear.yml '%s/out' --lazy-unpickle --dry-run", dir, dir);
    CHECK_INT(test_run(cmd, &out), 0);
    CHECK_STR_CONTAINS(out, "alloy: note: --lazy-unpickle has no effect");
    CHECK_STR_CONTAINS(out, "model.embed_tokens.weight");
    free(out);
}
