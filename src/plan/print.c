/*
 * print.c — the plan as text (`alloy merge --dry-run`): every output tensor
 * with its shape, dtype, method, layer position and parameters, then each
 * input with its model, stored name and kind of source.
 *
 * DESIGN
 *   Tensor names and model references come from untrusted files, so each is
 *   printed on one line with control characters shown as '?'.
 */
#include "core/internal.h"
#include "plan/plan.h"
#include "plan/vocab.h"

#include <math.h>

/* Tensor names come from untrusted files: printed one line, control characters as '?'. */
static void put_name(FILE *f, const char *s)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) fputc(*c < 0x20 || *c == 0x7f ? '?' : *c, f);
}

void alloy_plan_print(const struct alloy_plan *p, FILE *f)
{
    const struct alloy_method *m = p->method;
    fprintf(f, "# alloy merge plan: %s, %zu tensors, %zu shard(s), %.1f MB\n", m->name, p->ntensors, p->nshards,
            (double)p->total_bytes / 1e6);
    if (p->vocab)
        fprintf(f, "# tokenizer: %s, %zu tokens, embedding rows %llu\n", p->cfg->tokenizer_source, p->vocab->n,
                (unsigned long long)p->vocab->rows);
    for (size_t i = 0; i < p->ntensors; i++) {
        const struct alloy_plan_tensor *t = &p->tensors[i];
        put_name(f, t->name);
        fputs(" [", f);
        for (int d = 0; d < t->ndim; d++) fprintf(f, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        fprintf(f, "] %s <- %s", alloy_dtype_traits(t->dtype)->name, t->copy ? "copy" : m->name);
        if (!t->copy && t->layer >= 0) fprintf(f, " t=%.4g", t->t);
        for (int k = 0; k < m->nparams && !t->copy; k++)
            if (m->params[k].scope == ALLOY_PARAM_GLOBAL && !isnan(t->gp[k])) fprintf(f, " %s=%.6g", m->params[k].name, t->gp[k]);
        fputc('\n', f);
        for (int j = 0; j < t->n; j++) {
            fprintf(f, "    %s%s:", j == t->base ? "base " : "", alloy_model_ref(p->models[t->inputs[j].model]));
            put_name(f, t->inputs[j].t->name);
            if (alloy_input_is_tied(&t->inputs[j])) fputs(" (tied)", f);
            if (alloy_input_is_lora(&t->inputs[j])) fputs(" (lora)", f);
            if (t->perm) fputs(" (rows re-indexed to the merged vocabulary)", f);
            for (int k = 0; k < m->nparams && !t->copy; k++) {
                double v = t->tp[(size_t)j * (size_t)m->nparams + (size_t)k];
                if (m->params[k].scope == ALLOY_PARAM_TENSOR && !isnan(v)) fprintf(f, " %s=%.6g", m->params[k].name, v);
            }
            fputc('\n', f);
        }
    }
}
