/*
 * adapter_check.c — does an adapter fit a model? Every LoRA module and full
 * copy against the model's tensors, before any value is read.
 *
 * DESIGN
 *   PEFT silently ignores adapter keys that match nothing and fails late on
 *   shapes; alloy checks everything up front so `model+adapter` fails at
 *   planning time with one line naming the adapter file, the key, the
 *   expected and the found shape. A Linear module needs `<m>.weight` of
 *   [out, in] = [rows of B, columns of A]; an Embedding module `<m>.weight`
 *   of [vocab, dim] = [columns of A, rows of B]. Full copies replace the
 *   model's tensor of the same name: same shape, except that an embedding
 *   copy may have another vocabulary size (a resized vocabulary). The LoRA
 *   of a module whose base weight is replaced is checked against the copy.
 */
#include "lora/lora_config.h"

static void dims(const int64_t *s, int nd, char *buf, size_t len)
{
    size_t k = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < nd && k < len; d++) k += (size_t)snprintf(buf + k, len - k, "%s%lld", d ? ", " : "", (long long)s[d]);
    if (k < len) snprintf(buf + k, len - k, "]");
}

/* The tensor the LoRA of module m adds to: the adapter's base_layer copy, else the model's. */
static const struct alloy_tensor *base_of(const struct alloy_adapter *a, const char *wname,
                                          const struct alloy_tensor *(*m_tensor)(const void *, const char *),
                                          const void *ctx)
{
    const struct alloy_lora_full *f = alloy_adapter_full(a, wname);
    return f ? f->t : m_tensor(ctx, wname);
}

static int check_lora(const struct alloy_adapter *a, const struct alloy_lora_module *m,
                      const struct alloy_tensor *(*m_tensor)(const void *, const char *), const void *ctx,
                      struct alloy_err *err)
{
    char wname[600], want[96], found[96];
    snprintf(wname, sizeof wname, "%.500s.weight", m->name);
    const struct alloy_tensor *w = base_of(a, wname, m_tensor, ctx);
    if (!w)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected a module of the model (tensor '%s'), found no such "
                             "tensor", a->weights_path, m->a->name, wname);
    int emb = m->kind == ALLOY_LORA_EMBEDDING;
    int64_t e[2] = {emb ? m->a->shape[1] : m->b->shape[0], emb ? m->b->shape[0] : m->a->shape[1]};
    if (w->ndim != 2 || w->shape[0] != e[0] || w->shape[1] != e[1]) {
        const struct alloy_tensor *culprit = (w->ndim == 2 && w->shape[emb ? 1 : 0] == e[emb ? 1 : 0]) ? m->a : m->b;
        dims(e, 2, want, sizeof want);
        dims(w->shape, w->ndim, found, sizeof found);
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected it to fit '%s' of shape %s, found the LoRA's "
                             "shape %s", a->weights_path, culprit->name, wname, found, want);
    }
    if (!alloy_dtype_traits(w->dtype)->mergeable)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected a float weight '%s', found %s", a->weights_path,
                             m->a->name, wname, alloy_dtype_traits(w->dtype)->name);
    if (!m->bias) return ALLOY_OK;
    snprintf(wname, sizeof wname, "%.500s.bias", m->name);
    const struct alloy_tensor *b = base_of(a, wname, m_tensor, ctx);
    if (!b)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected the model to have '%s' to add it to (PEFT cannot "
                             "merge lora_bias into a layer without bias), found none", a->weights_path, m->bias->name,
                             wname);
    if (b->ndim != 1 || b->shape[0] != m->bias->shape[0]) {
        dims(m->bias->shape, 1, want, sizeof want);
        dims(b->shape, b->ndim, found, sizeof found);
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected '%s' of shape %s, found %s", a->weights_path,
                             m->bias->name, wname, want, found);
    }
    return ALLOY_OK;
}

static int check_full(const struct alloy_adapter *a, const struct alloy_lora_full *f,
                      const struct alloy_tensor *(*m_tensor)(const void *, const char *), const void *ctx,
                      struct alloy_err *err)
{
    char want[96], found[96];
    const struct alloy_tensor *t = m_tensor(ctx, f->name);
    if (!t)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected a copy of a tensor of the model ('%s'), found no "
                             "such tensor", a->weights_path, f->t->name, f->name);
    int same = t->ndim == f->t->ndim;
    for (int d = 0; d < t->ndim && same; d++) same = t->shape[d] == f->t->shape[d] || (d == 0 && t->ndim == 2);
    if (same) return ALLOY_OK;
    dims(t->shape, t->ndim, want, sizeof want);
    dims(f->t->shape, f->t->ndim, found, sizeof found);
    return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected the shape of '%s', %s, found %s", a->weights_path,
                         f->t->name, f->name, want, found);
}

/* 1 when base_model_name_or_path names ref or dir: equal, or one ends with "/" + the other. */
static int names_model(const char *bm, const char *s)
{
    size_t nb = strlen(bm), ns = strlen(s);
    while (nb > 1 && bm[nb - 1] == '/') nb--;
    while (ns > 1 && s[ns - 1] == '/') ns--;
    if (nb == ns) return strncmp(bm, s, nb) == 0;
    if (nb < ns) return s[ns - nb - 1] == '/' && strncmp(s + ns - nb, bm, nb) == 0;
    return bm[nb - ns - 1] == '/' && strncmp(bm + nb - ns, s, ns) == 0;
}

int alloy_adapter_check(const struct alloy_adapter *a, const char *m_ref,
                        const struct alloy_tensor *(*m_tensor)(const void *ctx, const char *name), const void *ctx,
                        char *warn, size_t warnlen, struct alloy_err *err)
{
    if (warnlen) warn[0] = '\0';
    for (size_t i = 0; i < a->nfull; i++) {
        int rc = check_full(a, &a->full[i], m_tensor, ctx, err);
        if (rc) return rc;
    }
    for (size_t i = 0; i < a->nmodules; i++) {
        int rc = check_lora(a, &a->modules[i], m_tensor, ctx, err);
        if (rc) return rc;
    }
    if (a->base_model && *a->base_model && !names_model(a->base_model, m_ref) && warnlen)
        snprintf(warn, warnlen, "%s: base_model_name_or_path: the adapter was trained on '%.200s', applied to '%.200s'",
                 a->config_path, a->base_model, m_ref);
    return ALLOY_OK;
}
