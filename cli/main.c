/*
 * main.c — the alloy command line: dispatch (`alloy merge`, `alloy eval`,
 * the `mergekit-yaml`, `mergekit-multi` and `mergekit-moe` aliases, --help, --version) and
 * what every command shares (cli.h): the option parser, error and log
 * lines, the progress bar, the signal policy.
 *
 * DESIGN
 *   A thin layer over liballoy (alloy.h only): one file per command
 *   (cmd_merge.c, cmd_eval.c) parses its options with cli_next() over its
 *   own table and calls the library. Exit status: 0 success, 1 bad input or
 *   failed command, 2 usage error, 130 interrupted (the output folder is left
 *   as it was). Messages quote names from untrusted files, so every line is
 *   printed with control characters replaced by '?'.
 */
#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

int cli_quiet;
volatile int cli_interrupt;

/* ------------------------------------------------------------ options */

/* Whether `name` is one of the "|"-separated spellings. */
static int opt_matches(const char *names, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = names; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !memcmp(p, name, n)) return 1;
        p += len + (bar != NULL);
    }
    return 0;
}

int cli_next(struct cli_args *a, const char **val)
{
    if (++a->i >= a->argc) return CLI_END;
    const char *arg = a->argv[a->i], *eq = NULL;
    *val = arg;
    if (arg[0] != '-' || !arg[1]) return CLI_ARG;
    if (arg[1] == '-' && (eq = strchr(arg, '=')) != NULL) {
        size_t k = (size_t)(eq - arg) < sizeof a->name ? (size_t)(eq - arg) : sizeof a->name - 1;
        memcpy(a->name, arg, k);
        a->name[k] = '\0';
    } else {
        snprintf(a->name, sizeof a->name, "%s", arg);
    }
    for (const struct cli_opt *o = a->opts; o->names; o++) {
        if (!opt_matches(o->names, a->name)) continue;
        if (!o->takes_value && eq) return cli_usage_error(a->cmd, "option %s takes no value", a->name), CLI_USAGE;
        if (!o->takes_value) { *val = NULL; return o->id; }
        if (eq) { *val = eq + 1; return o->id; }
        if (a->i + 1 >= a->argc) return cli_usage_error(a->cmd, "option %s needs a value", a->name), CLI_USAGE;
        *val = a->argv[++a->i];
        return o->id;
    }
    cli_usage_error(a->cmd, "unknown option '%s'", a->name);
    return CLI_USAGE;
}

int cli_positional(const char *cmd, const char **pos, int *npos, int max, const char *val)
{
    if (*npos == max) return cli_usage_error(cmd, "unexpected argument '%s'", val);
    pos[(*npos)++] = val;
    return 0;
}

int cli_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------ messages */

static void put_clean(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, stderr);
}

static void vline(const char *kind, const char *fmt, va_list ap)
{
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    fprintf(stderr, "alloy: %s: ", kind);
    put_clean(msg);
    fputc('\n', stderr);
}

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline("error", fmt, ap);
    va_end(ap);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline("error", fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try 'alloy %s%s--help'.\n", cmd ? cmd : "", cmd && *cmd ? " " : "");
    return 2;
}

void cli_log(void *user, int level, const char *msg)
{
    (void)user;
    if (cli_quiet && level > 0) return;
    fprintf(stderr, "alloy: %s: ", level == 0 ? "warning" : "note");
    put_clean(msg);
    fputc('\n', stderr);
}

/* ------------------------------------------------------------ progress */

int cli_failed(int rc, const struct alloy_err *err)
{
    cli_error("%s", err->msg);
    return rc == ALLOY_ERR_INTERRUPTED || cli_interrupt ? 130 : 1;
}

double cli_seconds_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

void cli_bar_start(struct cli_bar *b)
{
    memset(b, 0, sizeof *b);
    b->tty = !cli_quiet && isatty(2);
    clock_gettime(CLOCK_MONOTONIC, &b->start);
}

void cli_bar_draw(struct cli_bar *b, double frac, int final, const char *fmt, ...)
{
    if (!b->tty || (!final && b->drawn && cli_seconds_since(&b->last) < 0.1)) return;
    clock_gettime(CLOCK_MONOTONIC, &b->last);
    char bar[31], text[256];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\r[%s] %s\033[K", bar, text);
    b->drawn = 1;
}

void cli_bar_end(struct cli_bar *b, int keep)
{
    if (b->tty && b->drawn) fputs(keep ? "\n" : "\r\033[K", stderr);
    b->drawn = 0;
}

/* ------------------------------------------------------------ signals */

static void on_signal(int sig)
{
    (void)sig;
    cli_interrupt = 1;
}

void cli_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ------------------------------------------------------------ main */

static void main_usage(FILE *f)
{
    fprintf(f,
            "alloy %s — merge fine-tuned language models, natively and in bounded memory\n"
            "\n"
            "usage: alloy merge CONFIG.yml OUT_DIR [options]   merge models as a mergekit YAML config says\n"
            "                                                  (several documents: a multi-stage merge)\n"
            "       alloy eval MODEL... --text FILE [options]  measure loss/perplexity of models on texts\n"
            "       alloy moe CONFIG.yml OUT_DIR               a Mixtral MoE from dense experts (mergekit-moe)\n"
            "       alloy lora apply MODEL ADAPTER OUT_DIR      merge a PEFT LoRA adapter into its model\n"
            "       alloy lora merge CONFIG.yml OUT_DIR         combine LoRA adapters into one adapter\n"
            "       alloy lora extract --model FT --base-model BASE --out-path OUT   a LoRA adapter from a fine-tune\n"
            "       (a MODEL may be MODEL+ADAPTER anywhere: the adapter applied while streaming)\n"
            "       alloy convert IN OUT [--outtype T]          HF folder <-> GGUF file, GGUF -> GGUF\n"
            "       alloy --version\n"
            "\n"
            "Example:\n"
            "  alloy merge examples/linear.yml ./merged && alloy eval ./merged --text tests/data/eval_code.txt\n"
            "\n"
            "Run 'alloy merge --help' or 'alloy eval --help' for options.\n",
            ALLOY_VERSION);
}

static int finish(int rc)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        cli_error("writing to standard output failed: %s", strerror(errno));
        return rc ? rc : 1;
    }
    return rc;
}

/* Every input shard keeps a descriptor open for the whole run (pread), and a
 * merge of several large sharded models passes the usual soft limit of 1024:
 * raise it to the hard limit (capped), as the process is allowed to. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (1u << 20) ? (1u << 20) : rl.rlim_max;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* OpenBLAS's pthread build starts a worker per core when it loads, each reserving buffers; under an
 * address-space limit (ulimit -v) too small for them a worker retries its allocation forever and the
 * process hangs at the first join, before any work (even `alloy --version`). OpenBLAS reads
 * OPENBLAS_NUM_THREADS only when it loads, so under a finite RLIMIT_AS, with the variable unset, the CLI
 * sets it to 1 and executes itself again (the workers go with the old image). Merges use no BLAS, and
 * eval and lora run one BLAS thread per worker, so little is lost. execv failing (no /proc) changes nothing. */
static void blas_single_under_limit(char **argv)
{
    struct rlimit rl;
    if (getenv("OPENBLAS_NUM_THREADS") || getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return;
    if (setenv("OPENBLAS_NUM_THREADS", "1", 1) == 0) execv("/proc/self/exe", argv);
}

int main(int argc, char **argv)
{
    blas_single_under_limit(argv);
    alloy_blas_idle();
    raise_fd_limit();
    const char *prog = strrchr(argv[0], '/');
    prog = prog ? prog + 1 : argv[0];
    if (!strcmp(prog, "mergekit-yaml")) return finish(cmd_merge(argc, argv, 0));
    if (!strcmp(prog, "mergekit-multi")) return finish(cmd_merge(argc, argv, 1));
    if (!strcmp(prog, "mergekit-extract-lora")) return finish(cli_lora_extract(argc, argv));
    if (!strcmp(prog, "mergekit-moe")) return finish(cmd_moe(argc, argv));
    if (argc < 2) {
        main_usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "merge")) return finish(cmd_merge(argc - 1, argv + 1, 0));
    if (!strcmp(cmd, "eval")) return finish(cmd_eval(argc - 1, argv + 1));
    if (!strcmp(cmd, "lora")) return finish(cmd_lora(argc - 1, argv + 1));
    if (!strcmp(cmd, "convert")) return finish(cmd_convert(argc - 1, argv + 1));
    if (!strcmp(cmd, "moe")) return finish(cmd_moe(argc - 1, argv + 1));
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        main_usage(stdout);
        return finish(0);
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("alloy %s\n", ALLOY_VERSION);
        return finish(0);
    }
    return cli_usage_error("", "unknown command '%s'", cmd);
}
