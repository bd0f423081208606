/*
 * cmd_lora_extract.c — `alloy lora extract` and its alias
 * `mergekit-extract-lora`: a PEFT LoRA adapter from a fine-tune and its base.
 *
 * DESIGN
 *   mergekit-extract-lora's options and defaults, parsed with cli_next()
 *   into struct alloy_lora_extract_options; the work is the library's
 *   (alloy_lora_extract). mergekit options that choose hardware or Python
 *   loading (--cuda, --lazy-unpickle, ...) are accepted and noted as having
 *   no effect, so mergekit command lines run unchanged. Repeatable options
 *   (--save-module, -e, -i) collect into arrays sized by argc.
 *   Exit status: 0 ok, 1 bad input, 2 usage error, 130 interrupted.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

enum {
    OPT_HELP = 1, OPT_MODEL, OPT_BASE, OPT_OUT, OPT_RANK, OPT_DIST, OPT_NODIST, OPT_EMBED, OPT_NOEMBED, OPT_SAVE,
    OPT_EXCL, OPT_INCL, OPT_EPS, OPT_SKIP, OPT_NOSKIP, OPT_ENERGY, OPT_DTYPE, OPT_THREADS, OPT_QUIET, OPT_OVERWRITE,
    OPT_CARD, OPT_NOCARD, OPT_NOOP_FLAG, OPT_NOOP_VALUE,
};

static const struct cli_opt k_opts[] = {
    {"-h|--help", OPT_HELP, 0},
    {"--model", OPT_MODEL, 1},
    {"--base-model", OPT_BASE, 1},
    {"--out-path", OPT_OUT, 1},
    {"--max-rank", OPT_RANK, 1},
    {"--distribute-scale", OPT_DIST, 0},
    {"--no-distribute-scale", OPT_NODIST, 0},
    {"--embed-lora", OPT_EMBED, 0},
    {"--no-embed-lora", OPT_NOEMBED, 0},
    {"--save-module", OPT_SAVE, 1},
    {"-e|--exclude-regex|--exclude-regexes", OPT_EXCL, 1},
    {"-i|--include-regex|--include-regexes", OPT_INCL, 1},
    {"--sv-epsilon", OPT_EPS, 1},
    {"--skip-undecomposable", OPT_SKIP, 0},
    {"--no-skip-undecomposable", OPT_NOSKIP, 0},
    {"--rank-energy", OPT_ENERGY, 1},
    {"--lora-dtype", OPT_DTYPE, 1},
    {"-j|--threads|--num-threads", OPT_THREADS, 1},
    {"-q|--quiet", OPT_QUIET, 0},
    {"--overwrite", OPT_OVERWRITE, 0},
    {"--write-model-card", OPT_CARD, 0},
    {"--no-write-model-card", OPT_NOCARD, 0},
    {"--cuda|--no-cuda|--lazy-unpickle|--no-lazy-unpickle|--trust-remote-code|--no-trust-remote-code|"
     "--low-cpu-memory|--no-low-cpu-memory|--read-to-gpu|--no-read-to-gpu|--multi-gpu|--no-multi-gpu|"
     "--clone-tensors|--no-clone-tensors|--safe-serialization|--async-write|--no-async-write|--gpu-rich|"
     "--allow-crimes|--no-allow-crimes|--copy-tokenizer|--no-copy-tokenizer|-v|--verbose|--no-quiet",
     OPT_NOOP_FLAG, 0},
    {"--random-seed|--lora-merge-cache|--lora-merge-dtype|--transformers-cache|--write-threads|--device",
     OPT_NOOP_VALUE, 1},
    {NULL, 0, 0},
};

static void extract_usage(FILE *f)
{
    fprintf(f,
            "usage: alloy lora extract --model FT --base-model BASE --out-path OUT [options]\n"
            "       mergekit-extract-lora --model FT --base-model BASE --out-path OUT [options]\n"
            "\n"
            "A PEFT LoRA adapter that turns BASE into FT: each module's delta W_FT - W_BASE is\n"
            "factored by a truncated SVD (within 1%% of the best rank-r error). Embeddings, lm_head\n"
            "and norms are saved in full (modules_to_save). OUT appears complete or not at all.\n"
            "\n"
            "options (mergekit-extract-lora's, same defaults):\n"
            "  --max-rank R              largest rank per module (default 128)\n"
            "  --distribute-scale        A = sqrt(S) Vt, B = U sqrt(S) (default)\n"
            "  --no-distribute-scale     A = S Vt, B = U\n"
            "  --embed-lora              LoRA on embeddings and lm_head too (default: saved in full)\n"
            "  --save-module M           save module M in full (full name or last component; repeatable)\n"
            "  -e, --exclude-regex RE    skip modules whose name matches RE (POSIX extended; repeatable)\n"
            "  -i, --include-regex RE    only modules whose name matches some RE (repeatable)\n"
            "  --sv-epsilon X            drop singular values <= X (absolute; default 0)\n"
            "  --skip-undecomposable     skip modules that are not 2-D weights (default: saved in full)\n"
            "  --no-write-model-card     no README.md\n"
            "options (alloy's):\n"
            "  --rank-energy F           per-module rank: the smallest keeping fraction F of ||delta||^2,\n"
            "                            at most --max-rank (written as rank_pattern / alpha_pattern)\n"
            "  --lora-dtype T            float32 (default), bfloat16 or float16 for lora_A / lora_B\n"
            "  -j, --threads N           modules factored in parallel (default: all cores, bounded by memory)\n"
            "  --overwrite               replace OUT even when it holds files an adapter does not\n"
            "  -q, --quiet               no notes\n"
            "  -h, --help                this help\n"
            "mergekit's --cuda, --lazy-unpickle, --trust-remote-code, ... are accepted and have no effect.\n"
            "\n"
            "example:\n"
            "  alloy lora extract --model tests/data/tiny-llama/code --base-model tests/data/tiny-llama/base \\\n"
            "      --out-path ./code-lora --max-rank 16\n"
            "\n"
            "Exit status: 0 ok, 1 bad input, 2 usage error, 130 interrupted. See docs/lora-extract.md.\n");
}

struct lists {
    const char **save, **incl, **excl;
    size_t nsave, nincl, nexcl;
};

static int parse_double(const char *opt, const char *v, double *out)
{
    char *end;
    double d = strtod(v, &end);
    if (!*v || *end) return cli_usage_error("lora extract", "%s: a number expected, found '%s'", opt, v);
    *out = d;
    return 0;
}

/* One option into o (and the lists); 0, or the exit status of a usage error. */
static int apply_opt(struct cli_args *a, int id, const char *v, struct alloy_lora_extract_options *o, struct lists *l)
{
    long long n;
    switch (id) {
    case OPT_MODEL: o->model = v; break;
    case OPT_BASE: o->base_model = v; break;
    case OPT_OUT: o->out_dir = v; break;
    case OPT_RANK:
        if (cli_int(v, 1, 1 << 20, &n)) return cli_usage_error("lora extract", "--max-rank: an integer >= 1 expected, found '%s'", v);
        o->max_rank = (int)n;
        break;
    case OPT_DIST: case OPT_NODIST: o->distribute_scale = id == OPT_DIST; break;
    case OPT_EMBED: case OPT_NOEMBED: o->embed_lora = id == OPT_EMBED; break;
    case OPT_SKIP: case OPT_NOSKIP: o->skip_undecomposable = id == OPT_SKIP; break;
    case OPT_CARD: case OPT_NOCARD: o->write_card = id == OPT_CARD; break;
    case OPT_SAVE: l->save[l->nsave++] = v; break;
    case OPT_EXCL: l->excl[l->nexcl++] = v; break;
    case OPT_INCL: l->incl[l->nincl++] = v; break;
    case OPT_EPS: return parse_double("--sv-epsilon", v, &o->sv_epsilon);
    case OPT_ENERGY: return parse_double("--rank-energy", v, &o->rank_energy);
    case OPT_DTYPE:
        if (alloy_dtype_parse(v, 1, &o->lora_dtype) != 0)
            return cli_usage_error("lora extract", "--lora-dtype: float32, bfloat16 or float16 expected, found '%s'", v);
        break;
    case OPT_THREADS:
        if (cli_int(v, 1, 4096, &n)) return cli_usage_error("lora extract", "--threads: an integer >= 1 expected, found '%s'", v);
        o->threads = (int)n;
        break;
    case OPT_QUIET: cli_quiet = 1; break;
    case OPT_OVERWRITE: o->overwrite = 1; break;
    case OPT_NOOP_FLAG: case OPT_NOOP_VALUE:
        if (!cli_quiet) fprintf(stderr, "alloy: note: %s has no effect in alloy (ignored)\n", a->name);
        break;
    default: return cli_usage_error("lora extract", "unexpected argument '%s'", v);
    }
    return 0;
}

int cli_lora_extract(int argc, char **argv)
{
    struct alloy_lora_extract_options o;
    alloy_lora_extract_options_init(&o);
    struct lists l = {0};
    l.save = calloc((size_t)argc + 1, sizeof *l.save);
    l.incl = calloc((size_t)argc + 1, sizeof *l.incl);
    l.excl = calloc((size_t)argc + 1, sizeof *l.excl);
    int rc = 0;
    if (!l.save || !l.incl || !l.excl) {
        cli_error("out of memory");
        rc = 1;
    }
    struct cli_args a = {"lora extract", argc, 0, argv, k_opts, ""};
    const char *v;
    int id;
    while (!rc && (id = cli_next(&a, &v)) != CLI_END) {
        if (id == CLI_USAGE) rc = 2;
        else if (id == OPT_HELP) {
            extract_usage(stdout);
            rc = -1;
        } else rc = apply_opt(&a, id, v, &o, &l);
    }
    if (!rc && (!o.model || !o.base_model || !o.out_dir))
        rc = cli_usage_error("lora extract", "--model, --base-model and --out-path are required");
    if (!rc) {
        o.save_modules = l.save, o.nsave_modules = l.nsave;
        o.include_regexes = l.incl, o.ninclude = l.nincl;
        o.exclude_regexes = l.excl, o.nexclude = l.nexcl;
        o.log = cli_log;
        o.interrupt = &cli_interrupt;
        cli_catch_signals();
        struct alloy_err err = {0};
        if (alloy_lora_extract(&o, &err) != ALLOY_OK) {
            cli_error("%s", err.msg);
            rc = err.status == ALLOY_ERR_INTERRUPTED ? 130 : 1;
        }
    }
    free(l.save);
    free(l.incl);
    free(l.excl);
    return rc < 0 ? 0 : rc;
}
