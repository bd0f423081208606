/*
 * cmd_convert.c — `alloy convert IN OUT [--outtype T]`: one model from one
 * form into another.
 *
 * DESIGN
 *   A conversion is a passthrough merge of the one model IN, built with the
 *   public config builder and run by the same engine as `alloy merge`, so
 *   it streams in bounded memory and publishes OUT atomically:
 *   - HF folder -> GGUF (OUT ending in .gguf, or --format gguf): names,
 *     Q/K row order, metadata and tokenizer keys as convert_hf_to_gguf.py;
 *   - GGUF -> HF folder: the reader dequantizes and undoes the names and
 *     the permutation; --outtype picks the folder's dtype (default f32);
 *   - GGUF -> GGUF: the tensors re-encoded in --outtype.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

enum { OPT_HELP = 1, OPT_OUTTYPE, OPT_IMATRIX, OPT_FORMAT, OPT_THREADS, OPT_QUIET, OPT_OVERWRITE };

static const struct cli_opt k_opts[] = {
    {"-h|--help", OPT_HELP, 0},     {"--outtype", OPT_OUTTYPE, 1}, {"--imatrix", OPT_IMATRIX, 1}, {"--format", OPT_FORMAT, 1},
    {"-j|--threads", OPT_THREADS, 1}, {"-q|--quiet", OPT_QUIET, 0},  {"--overwrite", OPT_OVERWRITE, 0},
    {NULL, 0, 0},
};

static void convert_usage(FILE *f)
{
    fprintf(f, "usage: alloy convert IN OUT [options]\n"
               "\n"
               "Converts one model: a Hugging Face folder to a GGUF file (OUT ending in .gguf), a GGUF file to a\n"
               "folder (dequantized, Hugging Face names and row order), or a GGUF file to another GGUF file.\n"
               "\n"
               "Example:\n"
               "  alloy convert ./my-model my-model-f16.gguf --outtype f16\n"
               "\n"
               "Options:\n"
               "  --outtype T              f32, f16, bf16 (a folder: its dtype; GGUF: the weights, norms stay F32;\n"
               "                           default f16), or for GGUF a llama-quantize type: q8_0, q4_k_m, q6_k, ...\n"
               "                           (default for a folder: f32)\n"
               "  --imatrix FILE           importance matrix (llama-imatrix) for a quantized --outtype\n"
               "  --format folder|gguf     the output's form (default: gguf when OUT ends in .gguf)\n"
               "  -j, --threads N          worker threads (default: all cores)\n"
               "  --overwrite              replace an existing OUT folder holding other files, or a\n"
               "                           GGUF OUT over a file that is not a GGUF file\n"
               "  -q, --quiet              no notes\n"
               "  -h, --help               this help\n"
               "\n"
               "Exit status: 0 ok, 1 bad input or failed conversion, 2 usage error, 130 interrupted.\n");
}

static const char *torch_name(const char *outtype)
{
    return !strcmp(outtype, "f32") ? "float32" : !strcmp(outtype, "f16") ? "float16" : !strcmp(outtype, "bf16") ? "bfloat16" : NULL;
}

static int run(const char *in, struct alloy_merge_options *o)
{
    struct alloy_err err = {0};
    struct alloy_config *c = NULL;
    int gguf = o->out_format ? !strcmp(o->out_format, "gguf")
                             : strlen(o->out_dir) > 5 && !strcmp(o->out_dir + strlen(o->out_dir) - 5, ".gguf");
    const char *outtype = o->outtype ? o->outtype : gguf ? "f16" : "f32";
    int rc = alloy_config_new("passthrough", &c, &err);
    if (!rc) rc = alloy_config_add_model(c, in, NULL, &err);
    if (!rc && !gguf) {
        if (!torch_name(outtype)) rc = alloy_err_set(&err, ALLOY_ERR_CONFIG, "--outtype: f32, f16 or bf16 for a folder, "
                                                     "found \"%s\"", outtype);
        else rc = alloy_config_set_out_dtype(c, torch_name(outtype), &err);
    }
    o->config = c;
    o->outtype = gguf ? outtype : NULL;
    if (!rc) rc = alloy_merge(o, &err);
    alloy_config_free(c);
    if (rc) return cli_failed(rc, &err);
    if (!cli_quiet) fprintf(stderr, "alloy: converted %s into %s\n", in, o->out_dir);
    return 0;
}

int cmd_convert(int argc, char **argv)
{
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.write_model_card = 0;
    struct cli_args a = {.cmd = "convert", .argc = argc, .argv = argv, .opts = k_opts};
    const char *pos[2] = {0}, *val;
    int npos = 0, id;
    long long v;
    while ((id = cli_next(&a, &val)) != CLI_END) {
        switch (id) {
        case CLI_USAGE: return 2;
        case CLI_ARG:
            if (cli_positional(a.cmd, pos, &npos, 2, val)) return 2;
            break;
        case OPT_HELP: convert_usage(stdout); return 0;
        case OPT_OUTTYPE: o.outtype = val; break;
        case OPT_IMATRIX: o.imatrix = val; break;
        case OPT_FORMAT:
            if (strcmp(val, "folder") != 0 && strcmp(val, "gguf") != 0)
                return cli_usage_error("convert", "--format: expected folder or gguf, got '%s'", val);
            o.out_format = val;
            break;
        case OPT_THREADS:
            if (cli_int(val, 1, 1024, &v)) return cli_usage_error("convert", "--threads: expected 1..1024, got '%s'", val);
            o.threads = (int)v;
            break;
        case OPT_QUIET: cli_quiet = 1; break;
        default: o.overwrite = 1; break; /* OPT_OVERWRITE */
        }
    }
    if (npos < 2) return cli_usage_error("convert", "expected IN and OUT");
    o.out_dir = pos[1];
    o.log = cli_log;
    o.interrupt = &cli_interrupt;
    cli_catch_signals();
    return run(pos[0], &o);
}
