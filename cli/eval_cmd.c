/*
 * eval_cmd.c — `alloy eval MODEL... --text FILE...`: loss and perplexity of
 * Llama-family models on texts, as a table or JSON.
 *
 * DESIGN
 *   All inputs are checked before any model runs: texts and token files are
 *   read, every model's config.json is parsed (so a bad model fails fast) and
 *   the default window length is the smallest default among the models, so
 *   every model is scored on the same windows. Models are then loaded one at
 *   a time (float32 weights of one model in memory); a text is tokenized once
 *   per distinct tokenizer.json. The protocol itself lives in src/eval/eval.c
 *   and docs/eval.md.
 *   Exit status: 0 ok, 1 bad input (one line "alloy: error: ..."), 2 usage,
 *   130 interrupted.
 */
#include "alloy.h"
#include "eval/eval.h"
#include "core/internal.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int alloy_cmd_eval(int argc, char **argv);

static volatile int g_eval_interrupt;

static void eval_on_signal(int sig)
{
    (void)sig;
    g_eval_interrupt = 1;
}

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

static int eval_usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "alloy: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nRun 'alloy eval --help' for usage.\n");
    return 2;
}

static int parse_count(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
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

struct progress {
    int tty;
    const char *model, *text;
    struct timespec last;
    int drawn;
};

static void draw(void *user, const struct alloy_eval_progress *p)
{
    struct progress *b = user;
    if (!b->tty) return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int done = p->windows_done == p->windows_total;
    double dt = (double)(now.tv_sec - b->last.tv_sec) + (double)(now.tv_nsec - b->last.tv_nsec) / 1e9;
    if (!done && b->drawn && dt < 0.1) return;
    b->last = now;
    char bar[31];
    int fill = p->windows_total ? (int)(30.0 * (double)p->windows_done / (double)p->windows_total) : 30;
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    fprintf(stderr, "\r[%s] %zu/%zu windows  %.40s on %.40s\033[K", bar, p->windows_done, p->windows_total, b->model,
            b->text);
    b->drawn = 1;
}

static void clear_bar(struct progress *b)
{
    if (b->tty && b->drawn) fprintf(stderr, "\r\033[K");
    b->drawn = 0;
}

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

static int print_json(const struct row *rows, size_t nrows)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < nrows; i++) {
        json_t *o = json_object();
        if (!o) break;
        json_object_set_new(o, "model", json_string(rows[i].model));
        json_object_set_new(o, "text", json_string(rows[i].text));
        json_object_set_new(o, "tokens", json_integer((json_int_t)rows[i].tokens));
        /* a model with NaN/Inf activations gets null (JSON has no NaN) */
        json_object_set_new(o, "nll", isfinite(rows[i].nll) ? json_real(rows[i].nll) : json_null());
        json_object_set_new(o, "ppl", isfinite(rows[i].ppl) ? json_real(rows[i].ppl) : json_null());
        json_array_append_new(arr, o);
    }
    char *s = arr ? json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(arr);
    if (!s) {
        fprintf(stderr, "alloy: error: out of memory\n");
        return 1;
    }
    printf("%s\n", s);
    free(s);
    return 0;
}

/* Reads and parses every input; 0 or 1 (error printed). */
static int read_inputs(struct input *in, size_t nin)
{
    struct alloy_err err = {0};
    for (size_t i = 0; i < nin; i++) {
        int rc = in[i].is_tokens ? alloy_eval_read_ids(in[i].path, &in[i].ids, &in[i].n, &err)
                                 : alloy_read_file(in[i].path, 0, &in[i].text, &in[i].len, &err);
        if (rc) {
            fprintf(stderr, "alloy: error: %s\n", err.msg);
            return 1;
        }
    }
    return 0;
}

/* Parses every model's config.json; the smallest default ctx goes to *ctx. */
static int check_models(char **models, size_t nm, int *ctx)
{
    struct alloy_err err = {0};
    int best = INT_MAX;
    for (size_t i = 0; i < nm; i++) {
        struct alloy_model *mod = NULL;
        struct alloy_llama_config cfg;
        int rc = alloy_model_open(models[i], &mod, &err);
        if (!rc) {
            char *label = alloy_xasprintf("%s/config.json", alloy_model_dir(mod));
            if (!label) rc = alloy_err_set(&err, ALLOY_ERR_NOMEM, "out of memory");
            else if (!alloy_model_config_text(mod))
                rc = alloy_err_set(&err, ALLOY_ERR_IO, "%s: file not found (evaluation needs the model's config)", label);
            else rc = alloy_llama_config_parse(alloy_model_config_text(mod), label, &cfg, &err);
            free(label);
        }
        alloy_model_close(mod);
        if (rc) {
            fprintf(stderr, "alloy: error: %s\n", err.msg);
            return 1;
        }
        if (alloy_eval_default_ctx(&cfg) < best) best = alloy_eval_default_ctx(&cfg);
    }
    *ctx = best;
    return 0;
}

int alloy_cmd_eval(int argc, char **argv)
{
    char **models = calloc((size_t)argc + 1, sizeof *models);
    struct input *in = calloc((size_t)argc + 1, sizeof *in);
    size_t nm = 0, nin = 0;
    long long ctx = 0, max_windows = 0, threads = 0, bos = -2;
    int json = 0, quiet = 0, status = 0;
    struct row *rows = NULL;
    struct alloy_pool *pool = NULL;
    struct alloy_tokenizer *tok = NULL;
    char *tok_text = NULL;
    if (!models || !in) {
        fprintf(stderr, "alloy: error: out of memory\n");
        free(models);
        free(in);
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char opt[64];
        if (a[0] == '-' && a[1] == '-' && strchr(a, '=')) {
            size_t k = (size_t)(strchr(a, '=') - a);
            if (k >= sizeof opt) k = sizeof opt - 1;
            memcpy(opt, a, k);
            opt[k] = '\0';
            val = strchr(a, '=') + 1;
            a = opt;
        }
        int takes = !strcmp(a, "--text") || !strcmp(a, "--tokens") || !strcmp(a, "--ctx") || !strcmp(a, "--bos") ||
                    !strcmp(a, "--max-windows") || !strcmp(a, "--threads");
        if (takes && !val) {
            if (i + 1 >= argc) { status = eval_usage_error("option %s needs a value", a); goto out; }
            val = argv[++i];
        } else if (!takes && val) {
            status = eval_usage_error("option %s takes no value", a);
            goto out;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { eval_usage(stdout); goto out; }
        else if (!strcmp(a, "--text") || !strcmp(a, "--tokens")) {
            in[nin].path = val;
            in[nin++].is_tokens = !strcmp(a, "--tokens");
        } else if (!strcmp(a, "--ctx")) {
            if (parse_count(val, 1, 1 << 20, &ctx)) { status = eval_usage_error("--ctx: expected 1..1048576, got '%s'", val); goto out; }
        } else if (!strcmp(a, "--max-windows")) {
            if (parse_count(val, 1, LLONG_MAX, &max_windows)) { status = eval_usage_error("--max-windows: expected a positive integer, got '%s'", val); goto out; }
        } else if (!strcmp(a, "--threads")) {
            if (parse_count(val, 1, 1024, &threads)) { status = eval_usage_error("--threads: expected 1..1024, got '%s'", val); goto out; }
        } else if (!strcmp(a, "--bos")) {
            if (!strcmp(val, "none")) bos = -1;
            else if (parse_count(val, 0, INT32_MAX, &bos)) { status = eval_usage_error("--bos: expected a token id or 'none', got '%s'", val); goto out; }
        } else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) quiet = 1;
        else if (a[0] == '-' && a[1]) { status = eval_usage_error("unknown option '%s'", a); goto out; }
        else models[nm++] = argv[i];
    }
    if (!nm) { status = eval_usage_error("%s", "expected at least one MODEL"); goto out; }
    if (!nin) { status = eval_usage_error("%s", "expected at least one --text FILE or --tokens FILE"); goto out; }

    if ((status = read_inputs(in, nin))) goto out;
    int def_ctx = 0;
    if ((status = check_models(models, nm, &def_ctx))) goto out;
    if (!ctx) ctx = def_ctx;
    rows = calloc(nm * nin, sizeof *rows);
    pool = alloy_pool_new((int)threads);
    if (!rows || !pool) { fprintf(stderr, "alloy: error: out of memory\n"); status = 1; goto out; }

    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = eval_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    g_eval_interrupt = 0;

    struct progress bar = {.tty = !quiet && isatty(2)};
    struct alloy_err err = {0};
    uint64_t total_tokens = 0;
    double total_seconds = 0;
    for (size_t m = 0; m < nm && !status; m++) {
        struct alloy_llama *model = NULL;
        if (alloy_llama_open(models[m], &model, &err)) { status = 1; break; }
        if (ctx > alloy_llama_cfg(model)->max_position_embeddings && !quiet)
            fprintf(stderr, "alloy: warning: %s: --ctx %lld is longer than max_position_embeddings (%d)\n", models[m],
                    ctx, alloy_llama_cfg(model)->max_position_embeddings);
        for (size_t i = 0; i < nin && !status; i++) {
            if (!in[i].is_tokens) {
                /* (re)tokenize when this model's tokenizer.json differs from the previous one */
                char *path = alloy_xasprintf("%s/tokenizer.json", alloy_llama_dir(model)), *text = NULL;
                int rc = path ? alloy_read_file(path, (size_t)256 << 20, &text, NULL, &err)
                              : alloy_err_set(&err, ALLOY_ERR_NOMEM, "out of memory");
                if (!rc && (!tok_text || strcmp(text, tok_text) != 0)) {
                    alloy_tokenizer_free(tok);
                    tok = NULL;
                    free(tok_text);
                    tok_text = NULL;
                    for (size_t k = 0; k < nin; k++)
                        if (!in[k].is_tokens) { free(in[k].ids); in[k].ids = NULL; }
                    rc = alloy_tokenizer_parse(text, path, &tok, &err);
                    if (!rc) { tok_text = text; text = NULL; }
                }
                free(text);
                free(path);
                if (!rc && !in[i].ids) rc = alloy_tokenizer_encode(tok, in[i].text, in[i].len, in[i].path, &in[i].ids, &in[i].n, &err);
                if (rc) { status = 1; break; }
            }
            struct alloy_eval_options o;
            struct alloy_eval_result r;
            alloy_eval_options_init(&o);
            o.ctx = (int)ctx;
            o.bos = (int)bos;
            o.max_windows = (size_t)max_windows;
            o.pool = pool;
            o.progress = draw;
            o.progress_user = &bar;
            o.interrupt = &g_eval_interrupt;
            bar.model = models[m];
            bar.text = in[i].path;
            int rc = alloy_eval_ids(model, in[i].ids, in[i].n, in[i].path, &o, &r, &err);
            clear_bar(&bar);
            if (rc) { status = rc == ALLOY_ERR_INTERRUPTED ? 130 : 1; break; }
            rows[m * nin + i] = (struct row){models[m], in[i].path, r.tokens, r.nll, r.ppl};
            total_tokens += r.tokens;
            total_seconds += r.seconds;
        }
        alloy_llama_close(model);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (status) {
        fprintf(stderr, "alloy: error: %s\n", err.msg);
        goto out;
    }
    double tps = total_seconds > 0 ? (double)total_tokens / total_seconds : 0;
    if (json) {
        status = print_json(rows, nm * nin);
        if (!quiet)
            fprintf(stderr, "alloy: eval: ctx %lld: %llu tokens in %.2f s on %d threads, %.0f tokens/s\n", ctx,
                    (unsigned long long)total_tokens, total_seconds, alloy_pool_size(pool), tps);
    } else {
        print_table(rows, nm, in, nin);
        printf("\nnll: mean negative log-likelihood, nats/token; ppl = exp(nll); ctx %lld tokens per window\n"
               "speed: %llu tokens in %.2f s on %d threads, %.0f tokens/s\n",
               ctx, (unsigned long long)total_tokens, total_seconds, alloy_pool_size(pool), tps);
    }
out:
    for (size_t i = 0; i < nin; i++) {
        free(in[i].text);
        free(in[i].ids);
    }
    alloy_tokenizer_free(tok);
    free(tok_text);
    alloy_pool_free(pool);
    free(rows);
    free(models);
    free(in);
    return status;
}
