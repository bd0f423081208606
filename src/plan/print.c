/*
 * print.c — the plan as text (`alloy merge --dry-run`): every output tensor
 * with its shape, dtype, method, layer position and parameters, then each
 * input with its model, stored name and kind of source. An output can add
 * a note to each tensor line (the GGUF sink: the stored name and type, and
 * whether the input's blocks are copied unchanged).
 *
 * DESIGN
 *   Tensor names and model references come from untrusted files, so each is
 *   printed on one line with control characters shown as '?'. A plan can
 *   hold millions of lines (one per tensor and input), so the stream is
 *   locked once and written with the unlocked stdio calls, names and shape
 *   numbers go out without printf, and the few distinct parameter values a
 *   plan repeats on every line are formatted once each (a small cache keyed
 *   by the value's bits and its precision).
 */
#include "core/internal.h"
#include "plan/plan.h"
#include "plan/vocab.h"

#include <math.h>
#include <stdio.h>

/* Tensor names come from untrusted files: printed one line, control characters as '?'. */
static void put_name(FILE *f, const char *s)
{
    size_t n = 0;
    while (s[n] && (unsigned char)s[n] >= 0x20 && s[n] != 0x7f) n++;
    fwrite_unlocked(s, 1, n, f);
    for (const unsigned char *c = (const unsigned char *)s + n; *c; c++)
        fputc_unlocked(*c < 0x20 || *c == 0x7f ? '?' : *c, f);
}

static void put_i64(FILE *f, long long v)
{
    char buf[24], *p = buf + sizeof buf;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do *--p = (char)('0' + u % 10); while (u /= 10);
    if (v < 0) *--p = '-';
    fwrite_unlocked(p, 1, (size_t)(buf + sizeof buf - p), f);
}

/* The last few numbers formatted, by bits and precision (so -0 and 0 stay apart). */
struct num_cache {
    struct { uint64_t bits; int prec; char text[40]; } e[8];
    int n, next;
};

/* " name=value" with value as %.<prec>g. */
static void put_param(FILE *f, struct num_cache *c, const char *name, double v, int prec)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    int i = 0;
    while (i < c->n && (c->e[i].bits != bits || c->e[i].prec != prec)) i++;
    if (i == c->n) {
        i = c->n < 8 ? c->n++ : (c->next++ & 7);
        c->e[i].bits = bits;
        c->e[i].prec = prec;
        snprintf(c->e[i].text, sizeof c->e[i].text, "%.*g", prec, v);
    }
    fputc_unlocked(' ', f);
    fputs_unlocked(name, f);
    fputc_unlocked('=', f);
    fputs_unlocked(c->e[i].text, f);
}

static void print_inputs(FILE *f, const struct alloy_plan *p, const struct alloy_plan_tensor *t,
                         struct num_cache *c)
{
    const struct alloy_method *m = p->method;
    for (int j = 0; j < t->n; j++) {
        fputs_unlocked(j == t->base ? "    base " : "    ", f);
        fputs_unlocked(alloy_model_ref(p->models[t->inputs[j].model]), f);
        fputc_unlocked(':', f);
        put_name(f, t->inputs[j].t->name);
        if (alloy_input_is_tied(&t->inputs[j])) fputs_unlocked(" (tied)", f);
        if (alloy_input_is_lora(&t->inputs[j])) fputs_unlocked(" (lora)", f);
        if (t->perm) fputs_unlocked(" (rows re-indexed to the merged vocabulary)", f);
        for (int k = 0; k < m->nparams && !t->copy; k++) {
            double v = t->tp[(size_t)j * (size_t)m->nparams + (size_t)k];
            if (m->params[k].scope == ALLOY_PARAM_TENSOR && !isnan(v)) put_param(f, c, m->params[k].name, v, 6);
        }
        fputc_unlocked('\n', f);
    }
}

void alloy_plan_print_noted(const struct alloy_plan *p, FILE *f, alloy_plan_note_fn *note, void *ctx)
{
    const struct alloy_method *m = p->method;
    struct num_cache c = {0};
    flockfile(f);
    fprintf(f, "# alloy merge plan: %s, %zu tensors, %zu shard(s), %.1f MB\n", m->name, p->ntensors, p->nshards,
            (double)p->total_bytes / 1e6);
    if (p->vocab)
        fprintf(f, "# tokenizer: %s, %zu tokens, embedding rows %llu\n", p->cfg->tokenizer_source, p->vocab->n,
                (unsigned long long)p->vocab->rows);
    for (size_t i = 0; i < p->ntensors; i++) {
        const struct alloy_plan_tensor *t = &p->tensors[i];
        put_name(f, t->name);
        fputs_unlocked(" [", f);
        for (int d = 0; d < t->ndim; d++) {
            if (d) fputs_unlocked(", ", f);
            put_i64(f, (long long)t->shape[d]);
        }
        fputs_unlocked("] ", f);
        fputs_unlocked(alloy_dtype_traits(t->dtype)->name, f);
        fputs_unlocked(" <- ", f);
        fputs_unlocked(t->copy ? "copy" : m->name, f);
        if (!t->copy && t->layer >= 0) put_param(f, &c, "t", t->t, 4);
        for (int k = 0; k < m->nparams && !t->copy; k++)
            if (m->params[k].scope == ALLOY_PARAM_GLOBAL && !isnan(t->gp[k])) put_param(f, &c, m->params[k].name, t->gp[k], 6);
        char buf[256];
        const char *s = note ? note(ctx, i, buf, sizeof buf) : NULL;
        if (s && *s) {
            fputs_unlocked(" => ", f);
            put_name(f, s);
        }
        fputc_unlocked('\n', f);
        print_inputs(f, p, t, &c);
    }
    funlockfile(f);
}

void alloy_plan_print(const struct alloy_plan *p, FILE *f)
{
    alloy_plan_print_noted(p, f, NULL, NULL);
}
