/*
 * embed.c — embedding re-indexing for a tokenizer merge (mergekit's
 * PermutedEmbeddings, spec §6.3), as a permuted-rows source per input.
 *
 * DESIGN
 *   The participating models are the tensor's inputs (the base among
 *   them). For every output token j each input keeps its own row when it
 *   has the token and the token is not forced; otherwise it takes the
 *   token's default row, chosen as mergekit does: a configured source
 *   (a model's row for the token, a model's row by id or by token of its
 *   original vocabulary, or zeros); else the one model that has it; zeros
 *   (with a warning) when none has it; the base's row when the base has it;
 *   else the mean of the rows of all models that have it. Only rows that
 *   some input needs get a default, so memory is a pick per such token.
 *   Nothing is read here: the source reads rows when the engine asks.
 */
#include "plan/plan.h"
#include "plan/vocab.h"
#include "sources/permuted.h"

struct ctx {
    const struct alloy_plan *p;
    const struct alloy_plan_tensor *t;
    struct alloy_permuted *pm;
    const int *uniq;             /* [n] 1: the first input of its model */
    struct alloy_err *err;
};

static int32_t perm_of(const struct ctx *c, int k, size_t j)
{
    return c->p->vocab->perm[(size_t)c->t->inputs[k].model * c->p->vocab->n + j];
}

/* A row of input k's matrix that must exist. */
static int check_row(const struct ctx *c, int k, long long r, const char *token)
{
    const struct alloy_tensor *m = c->t->inputs[k].t;
    if (r < m->shape[0]) return ALLOY_OK;
    return alloy_err_set(c->err, ALLOY_ERR_SHAPE, "%s: tensor '%s': %lld rows, but token '%.60s' needs row %lld",
                         alloy_tensor_file_path(m->file), m->name, (long long)m->shape[0], token, r);
}

/* The input whose model is `ref`, or an error naming the config key. */
static int find_input(const struct ctx *c, const struct alloy_token_cfg *ct, int *k)
{
    for (int i = 0; i < c->t->n; i++)
        if (strcmp(alloy_model_ref(c->p->models[c->t->inputs[i].model]), ct->model) == 0) return *k = i, ALLOY_OK;
    const struct alloy_config *cfg = c->p->cfg;
    return alloy_err_set(c->err, ALLOY_ERR_CONFIG, "%s:%d:%d: tokenizer.tokens.%.60s.source: expected a model merged into "
                         "'%s', found %s", cfg->path, ct->pos.line, ct->pos.col, ct->token, c->t->name, ct->model);
}

/* The configured default of token j. */
static int configured(const struct ctx *c, size_t j, const struct alloy_token_cfg *ct)
{
    const struct alloy_config *cfg = c->p->cfg;
    int k = 0, rc;
    long long r = -1;
    size_t id;
    if (ct->kind == ALLOY_TOKEN_ZERO) return ALLOY_OK;
    if ((rc = find_input(c, ct, &k))) return rc;
    if (ct->kind == ALLOY_TOKEN_MODEL) {
        if ((r = perm_of(c, k, j)) < 0)
            return alloy_err_set(c->err, ALLOY_ERR_CONFIG, "%s:%d:%d: tokenizer.tokens.%.60s.source: expected a model "
                                 "whose vocabulary has the token, found %s", cfg->path, ct->pos.line, ct->pos.col,
                                 ct->token, ct->model);
    } else if (ct->token_id >= 0) {
        r = ct->token_id;
    } else if (alloy_strmap_get(&c->p->vocab->docs[c->t->inputs[k].model].ids, ct->src_token, &id)) {
        r = (long long)id;
    } else {
        return alloy_err_set(c->err, ALLOY_ERR_CONFIG, "%s:%d:%d: tokenizer.tokens.%.60s.source.token: '%.60s' is not in "
                             "the vocabulary of %s", cfg->path, ct->pos.line, ct->pos.col, ct->token, ct->src_token,
                             ct->model);
    }
    if ((rc = check_row(c, k, r, ct->token))) return rc;
    return alloy_permuted_add_default(c->pm, j, k, (int32_t)r) ? alloy_err_set(c->err, ALLOY_ERR_NOMEM, "out of memory")
                                                               : ALLOY_OK;
}

/* mergekit's default of token j: one model -> its row; none -> zeros; the base's -> it; else the mean. */
static int automatic(const struct ctx *c, size_t j, size_t *nzero)
{
    int present = 0, only = -1, base = c->t->base;
    for (int k = 0; k < c->t->n; k++)
        if (c->uniq[k] && perm_of(c, k, j) >= 0) present++, only = k;
    if (present == 0) return ++*nzero, ALLOY_OK;
    if (present == 1) return alloy_permuted_add_default(c->pm, j, only, perm_of(c, only, j));
    if (base >= 0 && perm_of(c, base, j) >= 0) return alloy_permuted_add_default(c->pm, j, base, perm_of(c, base, j));
    for (int k = 0; k < c->t->n; k++)
        if (c->uniq[k] && perm_of(c, k, j) >= 0 && alloy_permuted_add_default(c->pm, j, k, perm_of(c, k, j))) return -1;
    return 0;
}

/* Own rows and defaults of every token. */
static int assign(const struct ctx *c, alloy_plan_warn_fn warn, void *user)
{
    const struct alloy_vocab *v = c->p->vocab;
    const struct alloy_config *cfg = c->p->cfg;
    size_t nzero = 0, first_zero = 0;
    for (size_t j = 0; j < v->n; j++) {
        const struct alloy_token_cfg *ct = NULL;
        for (size_t i = 0; i < cfg->ntokens && !ct; i++)
            if (strcmp(cfg->tokens[i].token, v->tok[j]) == 0) ct = &cfg->tokens[i];
        int need = 0, rc;
        for (int k = 0; k < c->t->n; k++) {
            int32_t r = perm_of(c, k, j);
            if (r >= 0 && (rc = check_row(c, k, r, v->tok[j]))) return rc;
            c->pm->own[(size_t)k * v->n + j] = r >= 0 && !(ct && ct->force) ? r : -1;
            need |= c->pm->own[(size_t)k * v->n + j] < 0;
        }
        if (!need && !ct) continue; /* configured sources are checked even when unused, as mergekit does */
        size_t before = nzero;
        rc = ct ? configured(c, j, ct) : automatic(c, j, &nzero);
        if (rc) return rc < 0 ? alloy_err_set(c->err, ALLOY_ERR_NOMEM, "out of memory") : rc;
        if (nzero == 1 && before == 0) first_zero = j;
    }
    alloy_permuted_seal(c->pm);
    if (nzero && warn) {
        char msg[256];
        snprintf(msg, sizeof msg, "%.80s: %zu tokens (first '%.40s') are in no model's vocabulary; their rows are zeros",
                 c->t->name, nzero, v->tok[first_zero]);
        warn(user, msg);
    }
    return ALLOY_OK;
}

int alloy_plan_embed(const struct alloy_plan *p, struct alloy_plan_tensor *t, alloy_plan_warn_fn warn, void *user,
                     struct alloy_err *err)
{
    const struct alloy_tensor *first = t->inputs[0].t;
    for (int k = 0; k < t->n; k++) {
        const struct alloy_tensor *m = t->inputs[k].t;
        if ((size_t)t->inputs[k].model >= p->vocab->nm) /* every merged model is read before planning */
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': model %s has no place in the merged "
                                 "vocabulary", alloy_tensor_file_path(m->file), m->name,
                                 alloy_model_ref(p->models[t->inputs[k].model]));
        if (m->ndim != 2 || first->ndim != 2 || m->shape[1] != first->shape[1])
            return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: tensor '%s': expected a matrix [vocab, %lld] as in %s for a "
                                 "tokenizer merge, found %d dimensions, last %lld", alloy_tensor_file_path(m->file), m->name,
                                 (long long)first->shape[first->ndim - 1], alloy_model_ref(p->models[t->inputs[0].model]),
                                 m->ndim, (long long)m->shape[m->ndim - 1]);
    }
    int uniq[t->n];
    for (int k = 0; k < t->n; k++) {
        uniq[k] = 1;
        for (int i = 0; i < k; i++) uniq[k] &= t->inputs[i].model != t->inputs[k].model;
    }
    uint64_t cols = (uint64_t)first->shape[1];
    struct alloy_permuted *pm = alloy_permuted_new((size_t)t->n, p->vocab->n, p->vocab->rows, cols);
    if (!pm) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (int k = 0; k < t->n; k++) pm->mat[k] = t->inputs[k].t, pm->model[k] = t->inputs[k].model;
    struct ctx c = {p, t, pm, uniq, err};
    int rc = assign(&c, warn, user);
    if (rc) {
        alloy_permuted_free(pm);
        return rc;
    }
    t->perm = pm;
    t->ndim = 2;
    t->shape[0] = (int64_t)p->vocab->rows;
    t->shape[1] = (int64_t)cols;
    t->rows = p->vocab->rows;
    t->cols = cols;
    t->numel = t->rows * cols;
    for (int k = 0; k < t->n; k++) alloy_input_permuted(&t->inputs[k], pm, (size_t)k);
    return ALLOY_OK;
}
