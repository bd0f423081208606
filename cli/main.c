/*
 * main.c — the alloy command line: `alloy merge`, `alloy eval`, and the
 * `mergekit-yaml` alias.
 *
 * DESIGN
 *   A thin layer over liballoy: parse options, install SIGINT/SIGTERM
 *   handlers that ask the library to stop cleanly, draw a progress bar on a
 *   terminal, print library errors as one line "alloy: error: <message>".
 *   Exit status: 0 success, 1 bad input or failed merge, 2 usage error,
 *   130 interrupted (the output folder is left as it was).
 *   mergekit-yaml options alloy does not need are accepted with a note, so
 *   existing scripts run unchanged.
 */
#include "alloy.h"
#include "merge/method.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int alloy_cmd_eval(int argc, char **argv) __attribute__((weak));

/* OpenBLAS's pthread build starts its worker threads when the library loads, and they spin on
 * sched_yield for 2^28 cycles (about 0.1 s of a core) before they sleep: 3-5% of a one-second merge
 * on two cores, taken from the merge threads. Merges use no BLAS and eval runs it single-threaded,
 * so main() stops them at once (OpenBLAS starts them again if a call ever needs them). Weak: other
 * BLAS builds lack the function. */
int blas_thread_shutdown_(void) __attribute__((weak));

static volatile sig_atomic_t g_interrupt;
static volatile int g_interrupt_flag;

static void on_signal(int sig)
{
    (void)sig;
    g_interrupt = 1;
    g_interrupt_flag = 1;
}

static int g_quiet;

static void log_line(void *user, int level, const char *msg)
{
    (void)user;
    if (g_quiet && level > 0) return;
    /* messages quote tensor names from untrusted files: keep them one line, free of terminal escapes */
    fprintf(stderr, "alloy: %s: ", level == 0 ? "warning" : "note");
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, stderr);
    fputc('\n', stderr);
}

/* ------------------------------------------------------------ progress */

struct bar {
    int tty;
    struct timespec start, last;
    int drawn;
};

static double seconds_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

static void draw_progress(void *user, const struct alloy_progress *p)
{
    struct bar *b = user;
    if (!b->tty) return;
    int done = p->tensors_done == p->tensors_total;
    if (!done && b->drawn && seconds_since(&b->last) < 0.1) return;
    clock_gettime(CLOCK_MONOTONIC, &b->last);
    double el = seconds_since(&b->start);
    double frac = p->bytes_total ? (double)p->bytes_done / (double)p->bytes_total : 1.0;
    double rate = el > 0 ? (double)p->bytes_done / el : 0;
    double eta = rate > 0 ? (double)(p->bytes_total - p->bytes_done) / rate : 0;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    fprintf(stderr, "\r[%s] %zu/%zu tensors  %.2f/%.2f GB  %.0f MB/s  ETA %.0fs   ", bar, p->tensors_done,
            p->tensors_total, (double)p->bytes_done / 1e9, (double)p->bytes_total / 1e9, rate / 1e6, eta);
    if (done) fputc('\n', stderr);
    b->drawn = 1;
}

/* ------------------------------------------------------------ merge */

static void merge_usage(FILE *f)
{
    fprintf(f,
            "usage: alloy merge CONFIG.yml OUT_DIR [options]\n"
            "       mergekit-yaml CONFIG.yml OUT_DIR [options]\n"
            "\n"
            "Merges the models a mergekit YAML config names and writes a Hugging Face model folder.\n"
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
            "  -q, --quiet              no progress bar and no notes\n"
            "  -h, --help               this help\n"
            "Accepted for mergekit compatibility, no effect here: --lazy-unpickle, --cuda, --no-cuda, --device X,\n"
            "  --low-cpu-memory, --read-to-gpu, --multi-gpu, --gpu-rich, --async-write, --write-threads N,\n"
            "  --transformers-cache X, --clone-tensors, --trust-remote-code, --safe-serialization, -v\n"
            "\n"
            "Exit status: 0 ok, 1 bad input or failed merge, 2 usage error, 130 interrupted.\n"
            "\n"
            "Merge methods (merge_method:), with their parameters (* = per model):\n");
    for (size_t i = 0; i < alloy_method_count(); i++) {
        const struct alloy_method *m = alloy_method_at(i);
        fprintf(f, "  %-17s %s\n", m->name, m->summary ? m->summary : "");
        if (m->nparams) {
            fprintf(f, "  %-17s ", "");
            for (int k = 0; k < m->nparams; k++) {
                const struct alloy_param_spec *ps = &m->params[k];
                fprintf(f, "%s%s%s", k ? ", " : "", ps->name, ps->scope == ALLOY_PARAM_TENSOR ? "*" : "");
                if (!isnan(ps->def)) fprintf(f, "=%g", ps->def);
            }
            fputc('\n', f);
        }
    }
    fprintf(f, "See docs/methods.md for the formulas.\n");
}

static int usage_error(const char *cmd, const char *fmt, const char *arg)
{
    fprintf(stderr, "alloy: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'alloy %s --help'.\n", cmd);
    return 2;
}

static int parse_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int cmd_merge(int argc, char **argv)
{
    static const char *const no_effect[] = {"--lazy-unpickle", "--no-lazy-unpickle", "--cuda", "--no-cuda",
                                            "--low-cpu-memory", "--no-low-cpu-memory", "--read-to-gpu",
                                            "--no-read-to-gpu", "--multi-gpu", "--no-multi-gpu", "--gpu-rich",
                                            "--async-write", "--no-async-write", "--clone-tensors", "--no-clone-tensors",
                                            "--trust-remote-code", "--no-trust-remote-code", "--safe-serialization",
                                            "-v", "-vv", "--verbose", "--no-quiet", "--no-allow-crimes"};
    static const char *const no_effect_arg[] = {"--device", "--write-threads", "--transformers-cache",
                                                "--lora-merge-cache", "--lora-merge-dtype"};
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    const char *pos[2] = {0};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        char name[64];
        if (eq && (size_t)(eq - a) < sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = '\0';
            val = eq + 1;
            a = name;
        }
#define NEED_VAL()                                                                        \
    do {                                                                                  \
        if (!val) {                                                                       \
            if (i + 1 >= argc) return usage_error("merge", "option %s needs a value", a); \
            val = argv[++i];                                                              \
        }                                                                                 \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { merge_usage(stdout); return 0; }
        else if (!strcmp(a, "-j") || !strcmp(a, "--threads") || !strcmp(a, "--num-threads")) {
            long long v;
            NEED_VAL();
            if (parse_int(val, 1, 1024, &v)) return usage_error("merge", "--threads: expected 1..1024, got '%s'", val);
            o.threads = (int)v;
        } else if (!strcmp(a, "--out-shard-size")) {
            NEED_VAL();
            if (alloy_parse_size(val, &o.shard_size) || o.shard_size == 0)
                return usage_error("merge", "--out-shard-size: expected a size like 1G, 500M or 5B, got '%s'", val);
        } else if (!strcmp(a, "--random-seed")) {
            long long v;
            NEED_VAL();
            if (parse_int(val, 0, INT64_MAX, &v)) return usage_error("merge", "--random-seed: expected a non-negative integer, got '%s'", val);
            o.has_seed = 1;
            o.seed = (uint64_t)v;
        } else if (!strcmp(a, "--dry-run")) o.dry_run = 1;
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) g_quiet = 1;
        else if (!strcmp(a, "--copy-tokenizer")) o.copy_tokenizer = 1;
        else if (!strcmp(a, "--no-copy-tokenizer")) o.copy_tokenizer = 0;
        else if (!strcmp(a, "--write-model-card")) o.write_model_card = 1;
        else if (!strcmp(a, "--no-write-model-card")) o.write_model_card = 0;
        else if (!strcmp(a, "--allow-crimes")) o.allow_crimes = 1;
        else if (!strcmp(a, "--no-safe-serialization")) {
            fprintf(stderr, "alloy: error: --no-safe-serialization: alloy writes safetensors only (PyTorch pickles "
                            "can execute code when loaded)\n");
            return 2;
        } else {
            int known = 0;
            for (size_t k = 0; k < sizeof no_effect / sizeof *no_effect && !known; k++) known = !strcmp(a, no_effect[k]);
            for (size_t k = 0; k < sizeof no_effect_arg / sizeof *no_effect_arg && !known; k++)
                if (!strcmp(a, no_effect_arg[k])) { NEED_VAL(); known = 1; }
            if (known) {
                if (!g_quiet) fprintf(stderr, "alloy: note: %s has no effect in alloy (CPU streaming merge)\n", a);
            } else if (a[0] == '-' && a[1]) {
                return usage_error("merge", "unknown option '%s'", a);
            } else if (npos < 2) {
                pos[npos++] = a;
            } else {
                return usage_error("merge", "unexpected argument '%s'", a);
            }
        }
#undef NEED_VAL
    }
    if (npos < 1 || (npos < 2 && !o.dry_run))
        return usage_error("merge", "%s", "expected CONFIG.yml and OUT_DIR");
    o.config_path = pos[0];
    o.out_dir = pos[1];
    o.log = log_line;
    o.plan_out = stdout;
    struct bar bar = {.tty = !g_quiet && !o.dry_run && isatty(2)};
    clock_gettime(CLOCK_MONOTONIC, &bar.start);
    o.progress = draw_progress;
    o.progress_user = &bar;
    o.interrupt = &g_interrupt_flag;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct alloy_err err = {0};
    int rc = alloy_merge(&o, &err);
    if (bar.drawn && rc) fputc('\n', stderr);
    if (rc) {
        fprintf(stderr, "alloy: error: %s\n", err.msg);
        return rc == ALLOY_ERR_INTERRUPTED || g_interrupt ? 130 : 1;
    }
    if (!g_quiet && !o.dry_run)
        fprintf(stderr, "alloy: merged into %s (%.1f s)\n", o.out_dir, seconds_since(&bar.start));
    return 0;
}

/* ------------------------------------------------------------ main */

static void main_usage(FILE *f)
{
    fprintf(f,
            "alloy %s — merge fine-tuned language models, natively and in bounded memory\n"
            "\n"
            "usage: alloy merge CONFIG.yml OUT_DIR [options]   merge models as a mergekit YAML config says\n"
            "       alloy eval MODEL... --text FILE [options]  measure loss/perplexity of models on texts\n"
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
        fprintf(stderr, "alloy: error: writing to standard output failed: %s\n", strerror(errno));
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

int main(int argc, char **argv)
{
    if (blas_thread_shutdown_) blas_thread_shutdown_();
    raise_fd_limit();
    const char *prog = strrchr(argv[0], '/');
    prog = prog ? prog + 1 : argv[0];
    if (!strcmp(prog, "mergekit-yaml")) return finish(cmd_merge(argc, argv));
    if (argc < 2) {
        main_usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "merge")) return finish(cmd_merge(argc - 1, argv + 1));
    if (!strcmp(cmd, "eval")) {
        if (!alloy_cmd_eval) {
            fprintf(stderr, "alloy: error: eval is not built into this binary\n");
            return 1;
        }
        return finish(alloy_cmd_eval(argc - 1, argv + 1));
    }
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        main_usage(stdout);
        return finish(0);
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("alloy %s\n", ALLOY_VERSION);
        return finish(0);
    }
    fprintf(stderr, "alloy: unknown command '%s'\n", cmd);
    main_usage(stderr);
    return 2;
}
