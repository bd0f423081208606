/*
 * cmd_lora.c — `alloy lora COMMAND ...`: PEFT LoRA adapters. `lora apply
 * MODEL ADAPTER OUT_DIR` merges an adapter into its model (PEFT's
 * merge_and_unload) and writes a complete model folder.
 *
 * DESIGN
 *   `lora apply` is a passthrough merge of the reference MODEL+ADAPTER built
 *   with alloy_config_new: the library opens the model with the adapter as
 *   an overlay and computes W + s·B·A per chunk, so the same engine, output
 *   folder (atomic, complete or absent), sharding, tokenizer copy and model
 *   card as `alloy merge` serve it. Other lora commands are dispatched here
 *   as they are added.
 */
#include "cli.h"

#include <string.h>

enum { OPT_HELP = 1, OPT_THREADS, OPT_SHARD, OPT_OVERWRITE, OPT_QUIET, OPT_DTYPE };

static const struct cli_opt k_apply_opts[] = {
    {"-h|--help", OPT_HELP, 0},
    {"-j|--threads", OPT_THREADS, 1},
    {"--out-shard-size", OPT_SHARD, 1},
    {"--overwrite", OPT_OVERWRITE, 0},
    {"-q|--quiet", OPT_QUIET, 0},
    {"--dtype", OPT_DTYPE, 1},
    {NULL, 0, 0},
};

static void apply_usage(FILE *f)
{
    fprintf(f,
            "usage: alloy lora apply MODEL ADAPTER OUT_DIR [options]\n"
            "\n"
            "Merges a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) into MODEL and writes\n"
            "a complete model folder (config, tokenizer, model card, safetensors shards): each adapted weight is\n"
            "W + s*B*A (rsLoRA, rank/alpha patterns, embedding LoRA, DoRA, modules_to_save as PEFT merges\n"
            "them), computed in float32 and rounded once to the weight's dtype. MODEL and ADAPTER may be\n"
            "folders or org/name ids in the local Hugging Face cache. Same as PEFT's merge_and_unload().\n"
            "\n"
            "Example:\n"
            "  alloy lora apply tests/data/tiny-llama/base tests/data/tiny-llama-lora/code-r8 ./code-merged\n"
            "\n"
            "Options:\n"
            "  -j, --threads N          worker threads (default: all cores)\n"
            "  --out-shard-size SIZE    max bytes per output shard: 1G, 500M, 5B (default 5B)\n"
            "  --dtype T                output dtype: bfloat16, float16 or float32 (default: each weight's own)\n"
            "  --overwrite              replace an existing OUT_DIR even when it holds other files\n"
            "  -q, --quiet              no progress bar and no notes\n"
            "  -h, --help               this help\n"
            "\n"
            "Exit status: 0 ok, 1 bad input, 2 usage error, 130 interrupted. See docs/lora.md.\n");
}

static int apply_option(int id, const char *val, struct alloy_merge_options *o, const char **dtype)
{
    long long v;
    switch (id) {
    case OPT_THREADS:
        if (cli_int(val, 1, 1024, &v)) return cli_usage_error("lora apply", "--threads: expected 1..1024, got '%s'", val);
        o->threads = (int)v;
        return 0;
    case OPT_SHARD:
        if (alloy_parse_size(val, &o->shard_size) || o->shard_size == 0)
            return cli_usage_error("lora apply", "--out-shard-size: expected a size like 1G, 500M or 5B, got '%s'", val);
        return 0;
    case OPT_OVERWRITE: o->overwrite = 1; return 0;
    case OPT_QUIET: cli_quiet = 1; return 0;
    default: *dtype = val; return 0; /* OPT_DTYPE */
    }
}

/* The passthrough config of MODEL+ADAPTER, in *c. */
static int apply_config(const char *model, const char *adapter, const char *dtype, struct alloy_config **c,
                        struct alloy_err *err)
{
    size_t n = strlen(model) + strlen(adapter) + 2;
    char ref[n];
    snprintf(ref, n, "%s+%s", model, adapter);
    int rc = alloy_config_new("passthrough", c, err);
    if (!rc) rc = alloy_config_add_model(*c, ref, NULL, err);
    if (!rc && dtype) rc = alloy_config_set_dtype(*c, dtype, err);
    return rc;
}

static int lora_apply(int argc, char **argv)
{
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    struct cli_args a = {.cmd = "lora apply", .argc = argc, .argv = argv, .opts = k_apply_opts};
    const char *pos[3] = {0}, *val, *dtype = NULL;
    int npos = 0, id, rc;
    while ((id = cli_next(&a, &val)) != CLI_END) {
        if (id == CLI_USAGE) return 2;
        if (id == OPT_HELP) return apply_usage(stdout), 0;
        if (id == CLI_ARG) {
            if (npos == 3) return cli_usage_error("lora apply", "unexpected argument '%s'", val);
            pos[npos++] = val;
        } else if ((rc = apply_option(id, val, &o, &dtype))) {
            return rc;
        }
    }
    if (npos < 3) return cli_usage_error("lora apply", "expected MODEL, ADAPTER and OUT_DIR");
    if (strchr(pos[0], '+') || strchr(pos[1], '+'))
        return cli_usage_error("lora apply", "MODEL and ADAPTER are two arguments (no '+')");
    struct alloy_err err = {0};
    struct alloy_config *cfg = NULL;
    rc = apply_config(pos[0], pos[1], dtype, &cfg, &err);
    struct cli_bar bar;
    cli_bar_start(&bar);
    o.config = cfg;
    o.out_dir = pos[2];
    o.log = cli_log;
    o.progress = cli_merge_progress;
    o.progress_user = &bar;
    o.interrupt = &cli_interrupt;
    cli_catch_signals();
    if (!rc) rc = alloy_merge(&o, &err);
    cli_bar_end(&bar, 1);
    alloy_config_free(cfg);
    if (rc) return cli_failed(rc, &err);
    if (!cli_quiet) fprintf(stderr, "alloy: applied %s to %s into %s (%.1f s)\n", pos[1], pos[0], pos[2],
                            cli_seconds_since(&bar.start));
    return 0;
}

static void lora_usage(FILE *f)
{
    fprintf(f, "usage: alloy lora apply MODEL ADAPTER OUT_DIR [options]   merge an adapter into its model\n"
               "       alloy lora extract --model FT --base-model BASE --out-path OUT [options]   an adapter from a fine-tune\n"
               "       alloy lora merge CONFIG.yml OUT_DIR [options]   combine adapters into one adapter\n"
               "Run 'alloy lora COMMAND --help' for options. See docs/lora.md.\n");
}

int cmd_lora(int argc, char **argv)
{
    if (argc < 2) {
        lora_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) return lora_usage(stdout), 0;
    if (!strcmp(argv[1], "apply")) return lora_apply(argc - 1, argv + 1);
    if (!strcmp(argv[1], "extract")) return cli_lora_extract(argc - 1, argv + 1);
    if (!strcmp(argv[1], "merge")) return cli_lora_merge(argc - 1, argv + 1);
    return cli_usage_error("lora", "unknown lora command '%s' (expected: apply, extract, merge)", argv[1]);
}
