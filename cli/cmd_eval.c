/*
 * cmd_eval.c — `alloy eval MODEL... --text FILE...`: loss and perplexity of
 * Llama-family models on texts, as a table or JSON.
 *
 * DESIGN
 *   All inputs are checked before any model runs: texts and token files are
 *   read, every model's config.json is checked (alloy_eval_check, so a bad
 *   model fails fast) and the default window length is the smallest default
 *   among the models, so every model is scored on the same windows. Models
 *   are then loaded one at a time (the float32 weights of one model in
 *   memory); a text is tokenized once per distinct tokenizer.json
 *   (alloy_tokenizer_same). The protocol itself is the library's
 *   (src/eval/eval.c, docs/eval.md).
 *   Exit status: 0 ok, 1 bad input (one line "alloy: error: ..."), 2 usage,
 *   130 interrupted.
 */
#include "cli.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { OPT_HELP = 1, OPT_TEXT, OPT_TOKENS, OPT_CTX, OPT_BOS, OPT_MAXW, OPT_THREADS, OPT_JSON, OPT_QUIET };

static const struct cli_opt k_opts[] = {
    {"-h|--help", OPT_HELP, 0},     {"--text", OPT_TEXT, 1},       {"--tokens", OPT_TOKENS, 1},
    {"--ctx", OPT_CTX, 1},          {"--bos", OPT_BOS, 1},         {"--max-windows", OPT_MAXW, 1},
    {"--threads", OPT_THREADS, 1},  {"--json", OPT_JSON, 0},       {"-q|--quiet", OPT_QUIET, 0},
    {NULL, 0, 0},
};

static void eval_usage(FILE *f)
{
    fprintf(f,
            "usage: alloy eval MODEL... (--text FILE | --tokens FILE)... [options]\n"
            "\n"
            "Mean negative log-likelihood (nats/token) and perplexity of each model on each text,\n"
            "over non-overlapping windows of --ctx tokens, each scored after a BOS token.\n"
            "MODEL is a model folder (config.json, safetensors, tokenizer.json) or an org/name\n"
            "reference in the local Hugging Face cache. Llama, Mistral and Qwen2 models.\n"
            "\n"
            "options:\n"
            "  --text FILE         a UTF-8 text, tokenized with each model's tokenizer.json (repeatable)\n"
            "  --tokens FILE       pre-tokenized ids, whitespace-separated integers (repeatable)\n"
            "  --ctx N             window length in tokens (default: min(max_position_embeddings/2, 512),\n"
            "                      the smallest over the models; 128 for the bundled tiny models)\n"
            "  --bos ID|none       BOS token id put before each window (default: config.json bos_token_id;\n"
            "                      without one, each window's first token is context only)\n"
            "  --max-windows N     score only the first N windows of each text\n"
            "  --threads N         worker threads (default: all cores)\n"
            "  --json              print a JSON array of {model, text, tokens, nll, ppl}\n"
            "  --quiet             no progress bar and no speed line\n"
            "  -h, --help          this help\n"
            "\n"
            "example:\n"
            "  alloy eval tests/data/tiny-llama/base tests/data/tiny-llama/code \\\n"
            "      --text tests/data/eval_code.txt --text tests/data/eval_prose.txt\n"
            "\n"
            "Exit status: 0 ok, 1 bad input, 2 usage error, 130 interrupted. See docs/eval.md.\n");
}

struct input {
    const char *path;
    int is_tokens;
    char *text;      /* --text: file contents */
    size_t len;
    int32_t *ids;    /* --tokens: parsed ids; --text: ids under the current tokenizer */
    size_t n;
};

struct row { const char *model; const char *text; uint64_t tokens; double nll, ppl; };

struct run {
    char **models;
    struct input *in;
    size_t nm, nin;
    long long ctx, max_windows, threads, bos;
    int json;
    struct row *rows;
    struct alloy_pool *pool;
    struct alloy_tokenizer *tok; /* the tokenizer the --text ids were made with */
    uint64_t total_tokens;
    double total_seconds;
};

/* ------------------------------------------------------------ output */

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s && s[1] ? s + 1 : p;
}

/* Prints one table line with trailing blanks removed. */
static void put_line(char *line)
{
    size_t n = strlen(line);
    while (n && line[n - 1] == ' ') line[--n] = '\0';
    printf("%s\n", line);
}

static void print_table(const struct row *rows, size_t nmodels, const struct input *in, size_t nin)
{
    size_t mw = 5;
    for (size_t m = 0; m < nmodels; m++)
        if (strlen(rows[m * nin].model) > mw) mw = strlen(rows[m * nin].model);
    /* column titles: base names unless two inputs share one */
    const char **title = calloc(nin, sizeof *title);
    size_t cw = 18;
    for (size_t i = 0; title && i < nin; i++) {
        title[i] = base_name(in[i].path);
        for (size_t j = 0; j < nin; j++)
            if (j != i && !strcmp(base_name(in[j].path), title[i])) title[i] = in[i].path;
        if (strlen(title[i]) + 2 > cw) cw = strlen(title[i]) + 2;
    }
    size_t cap = mw + 2 + (nin + 1) * (cw + 32) + 64, k;
    char *line = malloc(cap);
    if (!title || !line) {
        free(title);
        free(line);
        return;
    }
    k = (size_t)snprintf(line, cap, "%-*s", (int)mw + 2, "model");
    for (size_t i = 0; i < nin; i++) k += (size_t)snprintf(line + k, cap - k, "%-*s", (int)cw, title[i]);
    if (nin > 1) snprintf(line + k, cap - k, "average");
    put_line(line);
    k = (size_t)snprintf(line, cap, "%-*s", (int)mw + 2, "");
    for (size_t i = 0; i < nin + (nin > 1); i++) k += (size_t)snprintf(line + k, cap - k, "%-9s%-*s", "nll", (int)cw - 9, "ppl");
    put_line(line);
    for (size_t m = 0; m < nmodels; m++) {
        k = (size_t)snprintf(line, cap, "%-*s", (int)mw + 2, rows[m * nin].model);
        double sum = 0;
        for (size_t i = 0; i < nin; i++) {
            const struct row *r = &rows[m * nin + i];
            char cell[64];
            snprintf(cell, sizeof cell, "%-8.5f %.4f", r->nll, r->ppl);
            k += (size_t)snprintf(line + k, cap - k, "%-*s", (int)cw, cell);
            sum += r->nll;
        }
        if (nin > 1) snprintf(line + k, cap - k, "%-8.5f %.4f", sum / (double)nin, exp(sum / (double)nin));
        put_line(line);
    }
    free(line);
    free(title);
}

/* A JSON string: quotes, backslashes and control characters escaped, other bytes as they are. */
static void json_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        const char *esc = *p == '"' ? "\\\"" : *p == '\\' ? "\\\\" : *p == '\n' ? "\\n" : *p == '\t' ? "\\t"
                        : *p == '\r' ? "\\r" : *p == '\b' ? "\\b" : *p == '\f' ? "\\f" : NULL;
        if (esc) fputs(esc, stdout);
        else if (*p < 0x20) printf("\\u%04X", *p);
        else putchar(*p);
    }
    putchar('"');
}

/* A JSON number with 17 significant digits, always with '.' or an exponent; NaN/Inf: null (JSON has none). */
static void json_num(double v)
{
    char b[64];
    if (!isfinite(v)) { fputs("null", stdout); return; }
    snprintf(b, sizeof b, "%.17g", v);
    if (!strchr(b, '.') && !strchr(b, 'e')) strcat(b, ".0");
    char *e = strchr(b, 'e');
    if (e) { /* e+05 -> e5, e-05 -> e-5 */
        char *d = e + 1 + (e[1] == '-'), *s = e + 1;
        while (*s == '+' || *s == '-' || (*s == '0' && s[1])) s++;
        memmove(d, s, strlen(s) + 1);
    }
    fputs(b, stdout);
}

static void print_json(const struct row *rows, size_t nrows)
{
    printf("[\n");
    for (size_t i = 0; i < nrows; i++) {
        printf("  {\n    \"model\": ");
        json_str(rows[i].model);
        printf(",\n    \"text\": ");
        json_str(rows[i].text);
        printf(",\n    \"tokens\": %llu,\n    \"nll\": ", (unsigned long long)rows[i].tokens);
        json_num(rows[i].nll);
        printf(",\n    \"ppl\": ");
        json_num(rows[i].ppl);
        printf("\n  }%s\n", i + 1 < nrows ? "," : "");
    }
    printf("]\n");
}

/* ------------------------------------------------------------ running */

/* Reads and parses every input; 0 or 1 (error printed). */
static int read_inputs(struct input *in, size_t nin)
{
    struct alloy_err err = {0};
    for (size_t i = 0; i < nin; i++) {
        int rc = in[i].is_tokens ? alloy_eval_read_ids(in[i].path, &in[i].ids, &in[i].n, &err)
                                 : alloy_eval_read_text(in[i].path, &in[i].text, &in[i].len, &err);
        if (rc) {
            cli_error("%s", err.msg);
            return 1;
        }
    }
    return 0;
}

/* Checks every model's config.json; the smallest default ctx goes to *ctx. 0 or 1 (error printed). */
static int check_models(char **models, size_t nm, long long *ctx)
{
    struct alloy_err err = {0};
    int best = INT_MAX;
    for (size_t i = 0; i < nm; i++) {
        struct alloy_model *mod = NULL;
        struct alloy_eval_info info;
        int rc = alloy_model_open(models[i], &mod, &err);
        if (!rc) rc = alloy_eval_check(mod, &info, &err);
        alloy_model_close(mod);
        if (rc) {
            cli_error("%s", err.msg);
            return 1;
        }
        if (info.default_ctx < best) best = info.default_ctx;
    }
    *ctx = best;
    return 0;
}

/* Gives every --text input its ids under the tokenizer of the model in dir,
 * re-encoding only when that tokenizer differs from the previous one. */
static int tokenize_inputs(struct run *r, const struct alloy_model *mod, struct alloy_err *err)
{
    int has_text = 0;
    for (size_t i = 0; i < r->nin; i++) has_text |= !r->in[i].is_tokens;
    if (!has_text) return ALLOY_OK;
    struct alloy_tokenizer *tok = NULL;
    int rc = alloy_model_tokenizer(mod, &tok, err); /* tokenizer.json inside the folder, or a GGUF's own */
    if (rc) return rc;
    if (alloy_tokenizer_same(tok, r->tok)) {
        alloy_tokenizer_free(tok);
        return ALLOY_OK;
    }
    alloy_tokenizer_free(r->tok);
    r->tok = tok;
    for (size_t i = 0; i < r->nin && !rc; i++) {
        struct input *in = &r->in[i];
        if (in->is_tokens) continue;
        free(in->ids);
        in->ids = NULL;
        rc = alloy_tokenizer_encode(tok, in->text, in->len, in->path, &in->ids, &in->n, err);
    }
    if (rc) { /* ids half made: forget the tokenizer so none are reused */
        alloy_tokenizer_free(r->tok);
        r->tok = NULL;
    }
    return rc;
}

struct eval_bar { struct cli_bar bar; const char *model, *text; };

static void draw(void *user, const struct alloy_eval_progress *p)
{
    struct eval_bar *b = user;
    double frac = p->windows_total ? (double)p->windows_done / (double)p->windows_total : 1.0;
    cli_bar_draw(&b->bar, frac, p->windows_done == p->windows_total, "%zu/%zu windows  %.40s on %.40s",
                 p->windows_done, p->windows_total, b->model, b->text);
}

/* Scores model m on every input into rows[m * nin + i]; an exit status. */
static int eval_model(struct run *r, size_t m, struct alloy_err *err)
{
    struct alloy_model *mod = NULL;
    struct alloy_evaluator *ev = NULL;
    int rc = alloy_model_open(r->models[m], &mod, err);
    if (!rc) rc = alloy_evaluator_new(mod, &ev, err);
    if (!rc && r->ctx > alloy_evaluator_info(ev)->max_positions && !cli_quiet)
        fprintf(stderr, "alloy: warning: %s: --ctx %lld is longer than max_position_embeddings (%d)\n", r->models[m],
                r->ctx, alloy_evaluator_info(ev)->max_positions);
    if (!rc) rc = tokenize_inputs(r, mod, err);
    alloy_model_close(mod);
    for (size_t i = 0; i < r->nin && !rc; i++) {
        struct alloy_eval_options o;
        struct alloy_eval_result res;
        struct eval_bar bar = {.model = r->models[m], .text = r->in[i].path};
        alloy_eval_options_init(&o);
        o.ctx = (int)r->ctx;
        o.bos = (int)r->bos;
        o.max_windows = (size_t)r->max_windows;
        o.pool = r->pool;
        o.progress = draw;
        o.progress_user = &bar;
        o.interrupt = &cli_interrupt;
        cli_bar_start(&bar.bar);
        rc = alloy_evaluate_ids(ev, r->in[i].ids, r->in[i].n, r->in[i].path, &o, &res, err);
        cli_bar_end(&bar.bar, 0);
        if (rc) break;
        r->rows[m * r->nin + i] = (struct row){r->models[m], r->in[i].path, res.tokens, res.nll, res.ppl};
        r->total_tokens += res.tokens;
        r->total_seconds += res.seconds;
    }
    alloy_evaluator_free(ev);
    return rc == ALLOY_ERR_INTERRUPTED ? 130 : rc ? 1 : 0;
}

static void report(const struct run *r)
{
    double tps = r->total_seconds > 0 ? (double)r->total_tokens / r->total_seconds : 0;
    if (r->json) {
        print_json(r->rows, r->nm * r->nin);
        if (!cli_quiet)
            fprintf(stderr, "alloy: eval: ctx %lld: %llu tokens in %.2f s on %d threads, %.0f tokens/s\n", r->ctx,
                    (unsigned long long)r->total_tokens, r->total_seconds, alloy_pool_size(r->pool), tps);
        return;
    }
    print_table(r->rows, r->nm, r->in, r->nin);
    printf("\nnll: mean negative log-likelihood, nats/token; ppl = exp(nll); ctx %lld tokens per window\n"
           "speed: %llu tokens in %.2f s on %d threads, %.0f tokens/s\n",
           r->ctx, (unsigned long long)r->total_tokens, r->total_seconds, alloy_pool_size(r->pool), tps);
}

/* ------------------------------------------------------------ options */

/* Applies one option; 0 or an exit status (help sets *done). */
static int apply_option(struct run *r, int id, const char *val, int *done)
{
    switch (id) {
    case OPT_HELP: eval_usage(stdout); *done = 1; return 0;
    case OPT_TEXT:
    case OPT_TOKENS:
        r->in[r->nin].path = val;
        r->in[r->nin++].is_tokens = id == OPT_TOKENS;
        return 0;
    case OPT_CTX:
        if (cli_int(val, 1, 1 << 20, &r->ctx)) return cli_usage_error("eval", "--ctx: expected 1..1048576, got '%s'", val);
        return 0;
    case OPT_MAXW:
        if (cli_int(val, 1, LLONG_MAX, &r->max_windows))
            return cli_usage_error("eval", "--max-windows: expected a positive integer, got '%s'", val);
        return 0;
    case OPT_THREADS:
        if (cli_int(val, 1, 1024, &r->threads)) return cli_usage_error("eval", "--threads: expected 1..1024, got '%s'", val);
        return 0;
    case OPT_BOS:
        if (!strcmp(val, "none")) r->bos = -1;
        else if (cli_int(val, 0, INT32_MAX, &r->bos))
            return cli_usage_error("eval", "--bos: expected a token id or 'none', got '%s'", val);
        return 0;
    case OPT_JSON: r->json = 1; return 0;
    default: cli_quiet = 1; return 0; /* OPT_QUIET */
    }
}

static int parse_args(struct run *r, int argc, char **argv, int *done)
{
    struct cli_args a = {.cmd = "eval", .argc = argc, .argv = argv, .opts = k_opts};
    const char *val;
    int id, rc;
    while ((id = cli_next(&a, &val)) != CLI_END) {
        if (id == CLI_USAGE) return 2;
        if (id == CLI_ARG) r->models[r->nm++] = (char *)val;
        else if ((rc = apply_option(r, id, val, done)) || *done) return rc;
    }
    if (!r->nm) return cli_usage_error("eval", "expected at least one MODEL");
    if (!r->nin) return cli_usage_error("eval", "expected at least one --text FILE or --tokens FILE");
    return 0;
}

int cmd_eval(int argc, char **argv)
{
    struct run r = {.bos = -2};
    struct alloy_err err = {0};
    int status, done = 0;
    r.models = calloc((size_t)argc + 1, sizeof *r.models);
    r.in = calloc((size_t)argc + 1, sizeof *r.in);
    if (!r.models || !r.in) { cli_error("out of memory"); status = 1; goto out; }
    if ((status = parse_args(&r, argc, argv, &done)) || done) goto out;
    if ((status = read_inputs(r.in, r.nin))) goto out;
    long long def_ctx = 0;
    if ((status = check_models(r.models, r.nm, &def_ctx))) goto out;
    if (!r.ctx) r.ctx = def_ctx;
    r.rows = calloc(r.nm * r.nin, sizeof *r.rows);
    r.pool = alloy_pool_new((int)r.threads);
    if (!r.rows || !r.pool) { cli_error("out of memory"); status = 1; goto out; }
    cli_catch_signals();
    for (size_t m = 0; m < r.nm && !status; m++) status = eval_model(&r, m, &err);
    if (status) cli_error("%s", err.msg);
    else report(&r);
out:
    for (size_t i = 0; r.in && i < r.nin; i++) {
        free(r.in[i].text);
        free(r.in[i].ids);
    }
    alloy_tokenizer_free(r.tok);
    alloy_pool_free(r.pool);
    free(r.rows);
    free(r.models);
    free(r.in);
    return status;
}
