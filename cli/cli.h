/*
 * cli.h — what the command files of the alloy CLI share (main.c implements it).
 *
 * DESIGN
 *   One option parser over a per-command table: `--name value`, `--name=value`
 *   and flags; a command loops over cli_next() and switches on the ids. One
 *   error format: "alloy: error: <message>" (usage errors add
 *   "Try 'alloy <cmd> --help'." and exit 2). One progress bar, drawn on a
 *   terminal only, at most ten times a second. One signal policy: SIGINT and
 *   SIGTERM set cli_interrupt, which the library polls and stops at, and the
 *   command exits 130. Every cmd_*.c includes alloy.h and this header only.
 */
#ifndef ALLOY_CLI_H
#define ALLOY_CLI_H

#include "alloy.h"

#include <stdio.h>
#include <time.h>

/* ------------------------------------------------------------ options */

struct cli_opt {
    const char *names;  /* "|"-separated spellings: "-j|--threads|--num-threads" */
    int id;             /* > 0, returned by cli_next */
    int takes_value;
};

enum { CLI_END = 0, CLI_ARG = -1, CLI_USAGE = -2 };

struct cli_args {
    const char *cmd;               /* "merge", "eval": names the command in usage errors */
    int argc, i;
    char **argv;
    const struct cli_opt *opts;    /* ends with {NULL} */
    char name[64];                 /* the option as spelled, without "=value" */
};

/* Next item: an option id (value in *val, NULL for a flag), CLI_ARG (an operand
 * in *val), CLI_END, or CLI_USAGE after printing a usage error (exit 2). */
int cli_next(struct cli_args *a, const char **val);
/* Prints "alloy: error: <message>\nTry 'alloy <cmd> --help'." and returns 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses a decimal integer in [lo, hi]; 0 or -1. */
int cli_int(const char *s, long long lo, long long hi, long long *out);
/* Stores positional argument val in pos[*npos] (at most max); one more is a usage error (returns 2). */
int cli_positional(const char *cmd, const char **pos, int *npos, int max, const char *val);

/* ------------------------------------------------------------ messages */

extern int cli_quiet;          /* -q: no notes, no progress bar */
/* "alloy: error: <message>" on one line (control characters shown as '?'). */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The library's log callback: "alloy: warning: ..." / "alloy: note: ..." (notes dropped when quiet). */
void cli_log(void *user, int level, const char *msg);

/* ------------------------------------------------------------ progress */

struct cli_bar {
    int tty, drawn;
    struct timespec start, last;
};

void   cli_bar_start(struct cli_bar *b);  /* draws only when stderr is a terminal and not quiet */
/* Redraws "\r[####....] <text>" (fraction frac done); at most every 0.1 s unless final. */
void   cli_bar_draw(struct cli_bar *b, double frac, int final, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Ends the bar: keep = 1 moves to a new line, 0 erases it. */
void   cli_bar_end(struct cli_bar *b, int keep);
double cli_seconds_since(const struct timespec *t);
/* The merge progress callback (user: a started struct cli_bar): tensors, bytes, rate, ETA. */
void   cli_merge_progress(void *user, const struct alloy_progress *p);

/* ------------------------------------------------------------ signals */

extern volatile int cli_interrupt;
/* SIGINT/SIGTERM set cli_interrupt (the merge or eval stops; exit 130). */
void cli_catch_signals(void);
/* Prints a failed command's error line and returns its exit status: 130 when it was interrupted, else 1. */
int  cli_failed(int rc, const struct alloy_err *err);

/* ------------------------------------------------------------ commands */

/* multi: run as mergekit-multi (CONFIG alone, -I DIR, --out-path OUT_DIR). */
int cmd_merge(int argc, char **argv, int multi);
int cmd_eval(int argc, char **argv);
int cmd_lora(int argc, char **argv);
int cmd_moe(int argc, char **argv);  /* `alloy moe` / `mergekit-moe` (cmd_moe.c) */
int cli_lora_merge(int argc, char **argv); /* `alloy lora merge` (argv[0] = "merge") */
/* `alloy lora extract` / `mergekit-extract-lora` (cmd_lora_extract.c); argv[0] is the command name. */
int cli_lora_extract(int argc, char **argv);
int cmd_convert(int argc, char **argv);

#endif
