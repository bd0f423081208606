/*
 * cmd_merge.c — `alloy merge CONFIG.yml OUT_DIR [options]`, also run as
 * `mergekit-yaml`, and as `mergekit-multi CONFIG.yml -I DIR [--out-path P]`
 * (the same merge with mergekit-multi's arguments: no OUT_DIR operand).
 *
 * DESIGN
 *   Options fill struct alloy_merge_options; alloy_merge does the rest.
 *   mergekit-yaml options alloy does not need are accepted with a note, so
 *   existing scripts run unchanged; --no-safe-serialization is refused
 *   (alloy writes safetensors only). The progress bar shows tensors, bytes,
 *   rate and ETA; SIGINT/SIGTERM stop the merge, which leaves the output
 *   folder as it was (exit 130).
 */
#include "cli.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

enum {
    OPT_HELP = 1, OPT_THREADS, OPT_SHARD, OPT_SEED, OPT_DRY, OPT_QUIET, OPT_TOK, OPT_NO_TOK, OPT_CARD, OPT_NO_CARD,
    OPT_CRIMES, OPT_OVERWRITE, OPT_FORMAT, OPT_OUTTYPE, OPT_IMATRIX, OPT_NO_SAFE, OPT_LORA_DTYPE, OPT_NO_EFFECT,
    OPT_NO_EFFECT_ARG, OPT_INTER, OPT_LAZY, OPT_NO_LAZY, OPT_BUDGET, OPT_OUT_PATH
};

static const struct cli_opt k_opts[] = {
    {"-h|--help", OPT_HELP, 0},
    {"-j|--threads|--num-threads", OPT_THREADS, 1},
    {"--out-shard-size", OPT_SHARD, 1},
    {"--random-seed", OPT_SEED, 1},
    {"--dry-run", OPT_DRY, 0},
    {"-q|--quiet", OPT_QUIET, 0},
    {"--copy-tokenizer", OPT_TOK, 0},
    {"--no-copy-tokenizer", OPT_NO_TOK, 0},
    {"--write-model-card", OPT_CARD, 0},
    {"--no-write-model-card", OPT_NO_CARD, 0},
    {"--allow-crimes", OPT_CRIMES, 0},
    {"--overwrite", OPT_OVERWRITE, 0},
    {"--format", OPT_FORMAT, 1},
    {"--outtype", OPT_OUTTYPE, 1}, {"--imatrix", OPT_IMATRIX, 1},
    {"--no-safe-serialization", OPT_NO_SAFE, 0},
    {"-I|--intermediate-dir", OPT_INTER, 1},
    {"--lazy", OPT_LAZY, 0},
    {"--no-lazy", OPT_NO_LAZY, 0},
    {"--memory-budget", OPT_BUDGET, 1},
    {"--out-path", OPT_OUT_PATH, 1},
    {"--lazy-unpickle|--no-lazy-unpickle|--cuda|--no-cuda|--low-cpu-memory|--no-low-cpu-memory|--read-to-gpu|"
     "--no-read-to-gpu|--multi-gpu|--no-multi-gpu|--gpu-rich|--async-write|--no-async-write|--clone-tensors|"
     "--no-clone-tensors|--trust-remote-code|--no-trust-remote-code|--safe-serialization|-v|-vv|--verbose|"
     "--no-quiet|--no-allow-crimes", OPT_NO_EFFECT, 0},
    {"--lora-merge-dtype", OPT_LORA_DTYPE, 1},
    {"--device|--write-threads|--transformers-cache|--lora-merge-cache", OPT_NO_EFFECT_ARG, 1},
    {NULL, 0, 0},
};

static void list_methods(FILE *f)
{
    struct alloy_method_info m;
    for (size_t i = 0; alloy_method_info(i, &m) == 0; i++) {
        fprintf(f, "  %-17s %s\n", m.name, m.summary);
        if (!m.nparams) continue;
        fprintf(f, "  %-17s ", "");
        for (int k = 0; k < m.nparams; k++) {
            fprintf(f, "%s%s%s", k ? ", " : "", m.params[k].name, m.params[k].per_model ? "*" : "");
            if (!isnan(m.params[k].def)) fprintf(f, "=%g", m.params[k].def);
        }
        fputc('\n', f);
    }
}

static void merge_usage(FILE *f)
{
    fprintf(f,
            "usage: alloy merge CONFIG.yml OUT_DIR [options]\n"
            "       mergekit-yaml CONFIG.yml OUT_DIR [options]\n"
            "       mergekit-multi CONFIG.yml -I DIR [--out-path OUT_DIR] [options]\n"
            "\n"
            "Merges the models a mergekit YAML config names and writes a Hugging Face model folder.\n"
            "A config of several YAML documents (separated by ---) is a multi-stage merge: each document\n"
            "with a name: is an intermediate that later documents use as `model: NAME`; the one unnamed\n"
            "document is the final merge, written to OUT_DIR.\n"
            "\n"
            "Example:\n"
            "  alloy merge examples/linear.yml ./merged --threads 2 --out-shard-size 1G\n"
            "\n"
            "Options:\n"
            "  -j, --threads N, --num-threads N  worker threads (default: all cores)\n"
            "  --out-shard-size SIZE    max bytes per output shard: 1G, 500M, 5B (= 5e9, mergekit's default)\n"
            "  --dry-run                print the plan (tensors, methods, sources, parameters); write nothing\n"
            "  --random-seed N          seed for the random methods (DARE, DELLA); same seed, same bits\n"
            "  --copy-tokenizer / --no-copy-tokenizer    copy the tokenizer files (default: copy)\n"
            "  --write-model-card / --no-write-model-card  README.md + mergekit_config.yml (default: write)\n"
            "  --allow-crimes           accepted (alloy matches tensors by name and shape for any architecture)\n"
            "  --overwrite              replace an existing OUT_DIR even when it holds other files (they are deleted)\n"
            "  --lora-merge-dtype T     round PATH+ADAPTER models to T (bfloat16, float16) as mergekit does; default:\n"
            "                           keep W + s*B*A in float32 until the output\n"
            "  -I, --intermediate-dir DIR  multi-stage: write each intermediate to DIR/NAME (default: keep them\n"
            "                           in memory, within --memory-budget)\n"
            "  --lazy / --no-lazy       multi-stage: reuse a finished DIR/NAME made from the same document\n"
            "                           (default: reuse)\n"
            "  --memory-budget SIZE     multi-stage: most bytes of intermediates held in memory at once\n"
            "                           (default: half the physical memory)\n"
            "  --out-path OUT_DIR       mergekit-multi: where the final (unnamed) merge goes\n"
            "  --format folder|gguf     the output's form (default: gguf when OUT ends in .gguf, else folder)\n"
            "  --outtype T              GGUF output: f32, f16, bf16, or a llama-quantize type (q8_0, q4_0, q4_1,\n"
            "                           q5_0, q5_1, q2_k, q3_k_m, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k); default: the\n"
            "                           merge's dtype; norms and 1-D tensors stay F32\n"
            "  --imatrix FILE           importance matrix (llama-imatrix) for a quantized --outtype\n"
            "  -q, --quiet              no progress bar and no notes\n"
            "  -h, --help               this help\n"
            "Accepted for mergekit compatibility, no effect here: --lazy-unpickle, --cuda, --no-cuda, --device X,\n"
            "  --low-cpu-memory, --read-to-gpu, --multi-gpu, --gpu-rich, --async-write, --write-threads N,\n"
            "  --transformers-cache X, --clone-tensors, --trust-remote-code, --safe-serialization, -v,\n"
            "  --lora-merge-cache X (adapters are applied while streaming, no cache)\n"
            "\n"
            "Exit status: 0 ok, 1 bad input or failed merge, 2 usage error, 130 interrupted.\n"
            "\n"
            "Merge methods (merge_method:), with their parameters (* = per model):\n");
    list_methods(f);
    fprintf(f, "See docs/methods.md for the formulas.\n");
}

void cli_merge_progress(void *user, const struct alloy_progress *p)
{
    struct cli_bar *b = user;
    double el = cli_seconds_since(&b->start);
    double frac = p->bytes_total ? (double)p->bytes_done / (double)p->bytes_total : 1.0;
    double rate = el > 0 ? (double)p->bytes_done / el : 0;
    double eta = rate > 0 ? (double)(p->bytes_total - p->bytes_done) / rate : 0;
    cli_bar_draw(b, frac, p->tensors_done == p->tensors_total, "%zu/%zu tensors  %.2f/%.2f GB  %.0f MB/s  ETA %.0fs",
                 p->tensors_done, p->tensors_total, (double)p->bytes_done / 1e9, (double)p->bytes_total / 1e9,
                 rate / 1e6, eta);
}

/* Applies one option to o; 0, or an exit status (help: 0 via *done). */
static int apply_option(struct cli_args *a, int id, const char *val, struct alloy_merge_options *o, int *done)
{
    long long v;
    switch (id) {
    case OPT_HELP: merge_usage(stdout); *done = 1; return 0;
    case OPT_THREADS:
        if (cli_int(val, 1, 1024, &v)) return cli_usage_error("merge", "--threads: expected 1..1024, got '%s'", val);
        o->threads = (int)v;
        return 0;
    case OPT_SHARD:
        if (alloy_parse_size(val, &o->shard_size) || o->shard_size == 0)
            return cli_usage_error("merge", "--out-shard-size: expected a size like 1G, 500M or 5B, got '%s'", val);
        return 0;
    case OPT_SEED:
        if (cli_int(val, 0, INT64_MAX, &v))
            return cli_usage_error("merge", "--random-seed: expected a non-negative integer, got '%s'", val);
        o->has_seed = 1;
        o->seed = (uint64_t)v;
        return 0;
    case OPT_DRY: o->dry_run = 1; return 0;
    case OPT_QUIET: cli_quiet = 1; return 0;
    case OPT_TOK: o->copy_tokenizer = 1; return 0;
    case OPT_NO_TOK: o->copy_tokenizer = 0; return 0;
    case OPT_CARD: o->write_model_card = 1; return 0;
    case OPT_NO_CARD: o->write_model_card = 0; return 0;
    case OPT_CRIMES: o->allow_crimes = 1; return 0;
    case OPT_OVERWRITE: o->overwrite = 1; return 0;
    case OPT_LORA_DTYPE: o->lora_merge_dtype = val; return 0;
    case OPT_INTER: o->intermediate_dir = val; return 0;
    case OPT_LAZY: o->lazy = 1; return 0;
    case OPT_NO_LAZY: o->lazy = 0; return 0;
    case OPT_BUDGET:
        if (alloy_parse_size(val, &o->memory_budget) || o->memory_budget == 0)
            return cli_usage_error("merge", "--memory-budget: expected a size like 4G or 500M, got '%s'", val);
        return 0;
    case OPT_OUT_PATH: o->out_dir = val; return 0;
    case OPT_FORMAT:
        if (strcmp(val, "folder") != 0 && strcmp(val, "gguf") != 0)
            return cli_usage_error("merge", "--format: expected folder or gguf, got '%s'", val);
        o->out_format = val;
        return 0;
    case OPT_OUTTYPE: o->outtype = val; return 0;
    case OPT_IMATRIX: o->imatrix = val; return 0;
    case OPT_NO_SAFE:
        cli_error("--no-safe-serialization: alloy writes safetensors only (PyTorch pickles can execute code when loaded)");
        return 2;
    default: /* OPT_NO_EFFECT, OPT_NO_EFFECT_ARG */
        if (!cli_quiet) fprintf(stderr, "alloy: note: %s has no effect in alloy (CPU streaming merge)\n", a->name);
        return 0;
    }
}

/* The operands: CONFIG OUT_DIR, or for mergekit-multi CONFIG alone (-I required, --out-path optional). */
static int check_operands(const struct alloy_merge_options *o, const char *const *pos, int npos, int multi)
{
    if (multi) {
        if (npos != 1) return cli_usage_error("merge", "mergekit-multi: expected CONFIG.yml alone (the final merge goes "
                                              "to --out-path)");
        if (!o->intermediate_dir) return cli_usage_error("merge", "mergekit-multi: expected --intermediate-dir DIR");
        return 0;
    }
    if (o->out_dir) return cli_usage_error("merge", "--out-path is mergekit-multi's; give OUT_DIR as the second operand");
    if (npos < 1 || (npos < 2 && !o->dry_run)) return cli_usage_error("merge", "expected CONFIG.yml and OUT_DIR");
    return 0;
}

int cmd_merge(int argc, char **argv, int multi)
{
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    struct cli_args a = {.cmd = "merge", .argc = argc, .argv = argv, .opts = k_opts};
    const char *pos[2] = {0}, *val;
    int npos = 0, id, done = 0, rc;
    while ((id = cli_next(&a, &val)) != CLI_END) {
        if (id == CLI_USAGE) return 2;
        if (id == CLI_ARG) {
            if (npos == 2) return cli_usage_error("merge", "unexpected argument '%s'", val);
            pos[npos++] = val;
        } else if ((rc = apply_option(&a, id, val, &o, &done)) || done) {
            return rc;
        }
    }
    if ((rc = check_operands(&o, pos, npos, multi))) return rc;
    o.config_path = pos[0];
    if (!multi) o.out_dir = pos[1];
    o.log = cli_log;
    o.plan_out = stdout;
    struct cli_bar bar;
    cli_bar_start(&bar);
    if (o.dry_run) bar.tty = 0;
    o.progress = cli_merge_progress;
    o.progress_user = &bar;
    o.interrupt = &cli_interrupt;
    cli_catch_signals();
    struct alloy_err err = {0};
    rc = alloy_merge(&o, &err);
    cli_bar_end(&bar, 1);
    if (rc) return cli_failed(rc, &err);
    if (!cli_quiet && !o.dry_run)
        fprintf(stderr, "alloy: merged into %s (%.1f s)\n", o.out_dir ? o.out_dir : o.intermediate_dir,
                cli_seconds_since(&bar.start));
    return 0;
}
