/*
 * cmd_lora_merge.c — `alloy lora merge CONFIG.yml OUT_DIR [options]`:
 * LoRA adapters combined into one adapter (PEFT's add_weighted_adapter
 * combination types).
 *
 * DESIGN
 *   Options fill struct alloy_lora_merge_options; alloy_lora_merge does the
 *   rest. SIGINT/SIGTERM stop between batches of modules, leaving OUT_DIR as
 *   it was (exit 130).
 */
#include "cli.h"

#include <stdint.h>

enum { OPT_HELP = 1, OPT_THREADS, OPT_SEED, OPT_OVERWRITE, OPT_QUIET };

static const struct cli_opt k_opts[] = {
    {"-h|--help", OPT_HELP, 0},
    {"-j|--threads", OPT_THREADS, 1},
    {"--random-seed", OPT_SEED, 1},
    {"--overwrite", OPT_OVERWRITE, 0},
    {"-q|--quiet", OPT_QUIET, 0},
    {NULL, 0, 0},
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: alloy lora merge CONFIG.yml OUT_DIR [options]\n"
            "\n"
            "Combines PEFT LoRA adapters into one adapter folder (PEFT's add_weighted_adapter types).\n"
            "\n"
            "CONFIG.yml:\n"
            "  merge_method: svd      # cat | linear | svd | ties_svd | dare_linear_svd | dare_ties_svd |\n"
            "                         #   magnitude_prune_svd | ties | dare_linear | dare_ties | magnitude_prune\n"
            "  models:\n"
            "    - model: path/to/adapter_a\n"
            "      parameters: {weight: 0.6}\n"
            "    - model: path/to/adapter_b\n"
            "      parameters: {weight: 0.4}\n"
            "  rank: 16               # svd types (default: the largest input rank)\n"
            "  density: 0.5           # ties, dare and magnitude_prune types (required there)\n"
            "  majority_sign_method: total   # ties types: total | frequency\n"
            "  svd_clamp: 0.99        # svd types: clamp A and B to this quantile of their values\n"
            "\n"
            "Options:\n"
            "  -j, --threads N          modules combined at once (default: all cores)\n"
            "  --random-seed N          seed of the DARE types; same seed, same bits\n"
            "  --overwrite              replace an existing OUT_DIR even when it holds other files\n"
            "  -q, --quiet              no notes\n"
            "  -h, --help               this help\n"
            "\n"
            "Exit status: 0 ok, 1 bad input or failed merge, 2 usage error, 130 interrupted.\n"
            "See docs/lora-merge.md for the formulas.\n");
}

int cli_lora_merge(int argc, char **argv)
{
    struct alloy_lora_merge_options o;
    alloy_lora_merge_options_init(&o);
    struct cli_args a = {.cmd = "lora merge", .argc = argc, .argv = argv, .opts = k_opts};
    const char *pos[2] = {0}, *val;
    int npos = 0, id;
    long long v;
    while ((id = cli_next(&a, &val)) != CLI_END) {
        switch (id) {
        case CLI_USAGE: return 2;
        case CLI_ARG:
            if (cli_positional(a.cmd, pos, &npos, 2, val)) return 2;
            break;
        case OPT_HELP: usage(stdout); return 0;
        case OPT_THREADS:
            if (cli_int(val, 1, 1024, &v)) return cli_usage_error("lora merge", "--threads: expected 1..1024, got '%s'", val);
            o.threads = (int)v;
            break;
        case OPT_SEED:
            if (cli_int(val, 0, INT64_MAX, &v))
                return cli_usage_error("lora merge", "--random-seed: expected a non-negative integer, got '%s'", val);
            o.seed = (uint64_t)v;
            break;
        case OPT_OVERWRITE: o.overwrite = 1; break;
        default: cli_quiet = 1; break; /* OPT_QUIET */
        }
    }
    if (npos < 2) return cli_usage_error("lora merge", "expected CONFIG.yml and OUT_DIR");
    o.config_path = pos[0];
    o.out_dir = pos[1];
    o.interrupt = &cli_interrupt;
    cli_catch_signals();
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    struct alloy_err err = {0};
    int rc = alloy_lora_merge(&o, &err);
    if (rc) return cli_failed(rc, &err);
    if (!cli_quiet) fprintf(stderr, "alloy: merged the adapters into %s (%.1f s)\n", o.out_dir, cli_seconds_since(&start));
    return 0;
}
