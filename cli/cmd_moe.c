/*
 * cmd_moe.c — `alloy moe CONFIG.yml OUT_DIR [options]` (alias mergekit-moe):
 * a Mixtral, DeepSeek MoE, Qwen MoE or Qwen3 MoE mixture of experts
 * assembled from dense models.
 *
 * DESIGN
 *   Options fill struct alloy_moe_options; alloy_moe does the rest. mergekit's
 *   flags that only matter to PyTorch (--load-in-4bit, --cuda...) are not
 *   accepted rather than silently ignored.
 */
#include "cli.h"

#include <stdint.h>

enum { OPT_HELP = 1, OPT_SEED, OPT_CRIMES, OPT_NO_TOKENIZER, OPT_OVERWRITE, OPT_QUIET, OPT_SHARD, OPT_FUSED };

static const struct cli_opt k_opts[] = {
    {"-h|--help", OPT_HELP, 0},
    {"--random-seed", OPT_SEED, 1},
    {"--i-understand-this-is-not-useful-without-training", OPT_CRIMES, 0},
    {"--no-copy-tokenizer", OPT_NO_TOKENIZER, 0},
    {"--overwrite", OPT_OVERWRITE, 0},
    {"-q|--quiet", OPT_QUIET, 0},
    {"--out-shard-size", OPT_SHARD, 1},
    {"--fused-experts", OPT_FUSED, 0},
    {NULL, 0, 0},
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: alloy moe CONFIG.yml OUT_DIR [options]      (also: mergekit-moe CONFIG.yml OUT_DIR)\n"
            "\n"
            "Assembles a mixture of experts from a dense base and dense experts: Mixtral (Llama/Mistral inputs),\n"
            "DeepSeek MoE or Qwen MoE (with a shared expert), Qwen3 MoE (Qwen3 inputs).\n"
            "\n"
            "CONFIG.yml (mergekit-moe's):\n"
            "  base_model: path/to/base       # attention, norms, embeddings\n"
            "  gate_mode: hidden              # hidden | hidden_avg | hidden_last | cheap_embed | random | uniform_random\n"
            "  architecture: mixtral          # optional: mixtral | deepseek | qwen | qwen3 (a prefix; default: mergekit's pick)\n"
            "  dtype: bfloat16                # optional: float32 | float16 | bfloat16\n"
            "  experts_per_token: 2\n"
            "  experts:\n"
            "    - source_model: path/to/code_model\n"
            "      positive_prompts: [\"def \", \"import \"]\n"
            "      negative_prompts: [\"Once upon a time\"]   # optional\n"
            "      noise_scale: 0.01          # optional: N(0, s^2) added to this expert's weights\n"
            "      residual_scale: 1.0        # optional: multiplies its down_proj (w2)\n"
            "    - source_model: path/to/prose_model\n"
            "      positive_prompts: [\"Once upon a time\"]\n"
            "  shared_experts:                # optional, at most one: DeepSeek MoE (no prompts), Qwen MoE (prompts)\n"
            "    - source_model: path/to/base\n"
            "\n"
            "Options:\n"
            "  --random-seed N          seed of the random gates and noise_scale (default 0)\n"
            "  --i-understand-this-is-not-useful-without-training\n"
            "                           allow identical experts or identical prompts\n"
            "  --no-copy-tokenizer      do not copy the base's tokenizer files\n"
            "  --out-shard-size SIZE    max bytes per output shard: 1G, 500M, 5B (default 5B)\n"
            "  --fused-experts          Mixtral / Qwen3 MoE: one [experts, ...] tensor per projection\n"
            "                           (mlp.experts.gate_up_proj, down_proj: transformers 5's layout)\n"
            "  --overwrite              replace an existing OUT_DIR even when it holds other files\n"
            "  -q, --quiet              no notes\n"
            "  -h, --help               this help\n"
            "\n"
            "Exit status: 0 ok, 1 bad input or failed assembly, 2 usage error, 130 interrupted.\n"
            "See docs/moe.md.\n");
}

int cmd_moe(int argc, char **argv)
{
    struct alloy_moe_options o;
    alloy_moe_options_init(&o);
    struct cli_args a = {.cmd = "moe", .argc = argc, .argv = argv, .opts = k_opts};
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
        case OPT_SEED:
            if (cli_int(val, 0, INT64_MAX, &v))
                return cli_usage_error("moe", "--random-seed: expected a non-negative integer, got '%s'", val);
            o.seed = (uint64_t)v;
            o.has_seed = 1;
            break;
        case OPT_CRIMES: o.allow_crimes = 1; break;
        case OPT_NO_TOKENIZER: o.copy_tokenizer = 0; break;
        case OPT_OVERWRITE: o.overwrite = 1; break;
        case OPT_FUSED: o.fused_experts = 1; break;
        case OPT_SHARD:
            if (alloy_parse_size(val, &o.shard_size) || o.shard_size == 0)
                return cli_usage_error("moe", "--out-shard-size: expected a size like 1G, 500M or 5B, got '%s'", val);
            break;
        default: cli_quiet = 1; break; /* OPT_QUIET */
        }
    }
    if (npos < 2) return cli_usage_error("moe", "expected CONFIG.yml and OUT_DIR");
    o.config_path = pos[0];
    o.out_dir = pos[1];
    o.log = cli_log;
    o.interrupt = &cli_interrupt;
    cli_catch_signals();
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    struct alloy_err err = {0};
    int rc = alloy_moe(&o, &err);
    if (rc) return cli_failed(rc, &err);
    if (!cli_quiet) fprintf(stderr, "alloy: assembled the MoE into %s (%.1f s)\n", o.out_dir, cli_seconds_since(&start));
    return 0;
}
