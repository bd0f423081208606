/*
 * moe_gates.c — the router weights of an assembled MoE (mergekit's
 * moe/router.py), one [experts, hidden] matrix per layer.
 *
 * DESIGN
 *   random          N(0, 1) per element, not normalised;
 *   uniform_random  U(-1/sqrt(hidden), 1/sqrt(hidden));
 *   cheap_embed     per expert: the sum of the base's token embeddings over
 *                   every token of every positive prompt (each prompt is the
 *                   BOS text followed by the prompt, tokenized without
 *                   special tokens, as mergekit's tokenize_prompts), L2-
 *                   normalised; the same for the negative prompts is
 *                   subtracted; the difference is L2-normalised again (norm
 *                   clamped at 1e-8). The same row serves every layer.
 *   hidden,         per expert and layer: the base's residual stream entering
 *   hidden_last     the layer at the last token (alloy's own float32 forward
 *                   pass, eval/llama.c), averaged over the positive prompts,
 *                   minus the same over the negative ones, L2-normalised.
 *   hidden_avg      the same with the state averaged over the positions of
 *                   the prompts' left-padded batch, pad positions included as
 *                   mergekit does (their states: the pad token's, attending
 *                   to nothing, see pad_states).
 *   Shared experts (Qwen MoE's shared_expert_gate) get rows after the routed
 *   experts' when the caller asks (with_shared).
 *   Draws are counter-based (core/rng.c) keyed by the seed and the gate
 *   tensor's layer, so a seed gives the same routers on any machine.
 */
#include "core/internal.h"
#include "linalg/svd.h"
#include "engine/moe.h"
#include "eval/eval.h"
#include "formats/formats.h"

#include <jansson.h>
#include <math.h>

#define ALLOY_MOE_MAX_PROMPT_TOKENS 4096

double alloy_moe_normal(uint64_t key, uint64_t counter)
{
    double u1 = alloy_rng_uniform(key, 2 * counter), u2 = alloy_rng_uniform(key, 2 * counter + 1);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2); /* 1 - u1 in (0, 1] */
}

static void random_gates(enum alloy_moe_gate mode, size_t nx, int layers, int hidden, uint64_t seed, float *g)
{
    size_t per = nx * (size_t)hidden;
    double bound = 1.0 / sqrt((double)hidden);
    for (int l = 0; l < layers; l++) {
        uint64_t key = alloy_rng_key(seed, "moe.gate", (uint64_t)l);
        for (size_t i = 0; i < per; i++)
            g[l * per + i] = mode == ALLOY_GATE_RANDOM ? (float)alloy_moe_normal(key, i)
                                                       : (float)((2.0 * alloy_rng_uniform(key, i) - 1.0) * bound);
    }
}

/* The text of special token `key` (bos_token, eos_token) of the base's tokenizer_config.json ("" when it
 * names none). */
static int special_text(const char *dir, const char *key, char **out, struct alloy_err *err)
{
    char *path = alloy_xasprintf("%s/tokenizer_config.json", dir);
    if (!path) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    json_t *root = alloy_is_file(path) ? json_load_file(path, 0, NULL) : NULL;
    json_t *b = json_object_get(root, key);
    if (json_is_object(b)) b = json_object_get(b, "content");
    *out = alloy_xstrdup(json_is_string(b) ? json_string_value(b) : "");
    json_decref(root);
    free(path);
    return *out ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
}

/* A prompt as mergekit's tokenize_prompts makes it: the BOS text, then the prompt, without special tokens. */
static int encode(const struct alloy_tokenizer *tok, const char *bos, const char *prompt, int32_t **ids, size_t *n,
                  struct alloy_err *err)
{
    char *text = alloy_xasprintf("%s%s", bos, prompt);
    int rc = text ? alloy_tokenizer_encode(tok, text, strlen(text), "prompt", ids, n, err)
                  : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    free(text);
    if (!rc && !*n) rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "prompt: expected some text, found ''");
    return rc;
}

/* acc += the embedding rows of every token of every prompt (BOS text prefixed). */
static int sum_prompts(const struct alloy_tokenizer *tok, const char *bos, char *const *prompts, size_t n,
                       const struct alloy_tensor *embed, int hidden, double *acc, float *row, struct alloy_err *err)
{
    size_t esize = alloy_dtype_traits(embed->dtype)->block_bytes;
    uint8_t *raw = alloy_xmalloc((size_t)hidden * esize);
    if (!raw) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    int rc = ALLOY_OK;
    for (size_t p = 0; p < n && !rc; p++) {
        int32_t *ids = NULL;
        size_t nids = 0;
        rc = encode(tok, bos, prompts[p], &ids, &nids, err);
        for (size_t k = 0; k < nids && !rc; k++) {
            if (ids[k] < 0 || (uint64_t)ids[k] >= (uint64_t)embed->shape[0]) {
                rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: token id below %lld, found %d in prompt '%.80s'",
                                   embed->name, (long long)embed->shape[0], ids[k], prompts[p]);
                break;
            }
            rc = alloy_tensor_pread(embed, (uint64_t)ids[k] * (uint64_t)hidden * esize, raw, (size_t)hidden * esize,
                                    err);
            if (rc) break;
            alloy_to_f32(embed->dtype, raw, row, (size_t)hidden);
            for (int j = 0; j < hidden; j++) acc[j] += row[j];
        }
        free(ids);
    }
    free(raw);
    return rc;
}

static void normalize(double *v, int n)
{
    double s = 0;
    for (int j = 0; j < n; j++) s += v[j] * v[j];
    s = sqrt(s);
    if (s < 1e-8) s = 1e-8;
    for (int j = 0; j < n; j++) v[j] /= s;
}

/* One expert's cheap_embed row into out[hidden]. */
static int expert_row(const struct alloy_moe_expert *x, const struct alloy_tokenizer *tok, const char *bos,
                      const struct alloy_tensor *embed, int hidden, float *out, struct alloy_err *err)
{
    double *pos = alloy_xcalloc(2 * (size_t)hidden, sizeof *pos), *neg = pos ? pos + hidden : NULL;
    float *row = alloy_xmalloc((size_t)hidden * sizeof *row);
    int rc = pos && row ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = sum_prompts(tok, bos, x->positive, x->npositive, embed, hidden, pos, row, err);
    if (!rc && x->nnegative) {
        rc = sum_prompts(tok, bos, x->negative, x->nnegative, embed, hidden, neg, row, err);
        normalize(pos, hidden);
        normalize(neg, hidden);
        for (int j = 0; j < hidden; j++) pos[j] -= neg[j];
    }
    if (!rc) {
        normalize(pos, hidden);
        for (int j = 0; j < hidden; j++) out[j] = (float)pos[j];
    }
    free(pos);
    free(row);
    return rc;
}

/* The base's tokenizer and BOS text. */
struct prompts {
    struct alloy_tokenizer *tok;
    char *bos;
};

static int prompts_open(const struct alloy_model *base, struct prompts *p, struct alloy_err *err)
{
    char *path = alloy_xasprintf("%s/tokenizer.json", alloy_model_dir(base));
    int rc = path ? alloy_tokenizer_load(path, &p->tok, err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = special_text(alloy_model_dir(base), "bos_token", &p->bos, err);
    free(path);
    return rc;
}

static void prompts_close(struct prompts *p)
{
    alloy_tokenizer_free(p->tok);
    free(p->bos);
}

/* The forward pass of the base and what a prompt batch needs: the pad token's states (hidden_avg). */
struct fwd {
    struct alloy_llama *lm;
    int pad;                /* mergekit's pad token: BOS, else EOS; -1: none */
    float *pad_taps;        /* [(layers + 1) * hidden]: the pad token's states, NULL until needed */
};

/* The pad token's residual stream at a left-padding position: mergekit runs the batch under transformers'
 * SDPA with the attention mask; a pad row attends to no key (all are padding or in the future), for which
 * PyTorch's SDPA (>= 2.5) gives 0, so the pad position only goes through o_proj's bias and the MLPs. */
static int pad_states(struct fwd *f, int layers, int hidden, const char *prompt, struct alloy_err *err)
{
    if (f->pad_taps) return ALLOY_OK;
    if (f->pad < 0 || f->pad >= alloy_llama_cfg(f->lm)->vocab_size)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s/tokenizer_config.json: bos_token, eos_token: expected a "
                             "token to left-pad prompt '%.60s' with (gate_mode hidden_avg), found none",
                             alloy_llama_dir(f->lm), prompt);
    struct alloy_llama_ws *ws = alloy_llama_ws_new(f->lm, 1, 1);
    f->pad_taps = alloy_xmalloc(((size_t)layers + 1) * (size_t)hidden * sizeof *f->pad_taps);
    if (!ws || !f->pad_taps) {
        alloy_llama_ws_free(ws);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory for a forward pass");
    }
    alloy_llama_unattended_residuals(f->lm, ws, f->pad, f->pad_taps);
    alloy_llama_ws_free(ws);
    return ALLOY_OK;
}

/* Tokenizes the n prompts into ids[p] / nids[p] and sets *T to the longest (the batch's padded length). */
static int encode_batch(const struct fwd *f, const struct prompts *pc, char *const *prompts, size_t n, int32_t **ids,
                        size_t *nids, size_t *T, struct alloy_err *err)
{
    int vocab = alloy_llama_cfg(f->lm)->vocab_size, rc = ALLOY_OK;
    for (size_t p = 0; p < n && !rc; p++) {
        rc = encode(pc->tok, pc->bos, prompts[p], &ids[p], &nids[p], err);
        if (!rc && nids[p] > ALLOY_MOE_MAX_PROMPT_TOKENS)
            rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "prompt '%.60s...': expected at most %d tokens, found %zu",
                               prompts[p], ALLOY_MOE_MAX_PROMPT_TOKENS, nids[p]);
        for (size_t k = 0; !rc && k < nids[p]; k++)
            if (ids[p][k] < 0 || ids[p][k] >= vocab)
                rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "prompt '%.60s': token id below vocab_size %d, found %d",
                                   prompts[p], vocab, ids[p][k]);
        if (!rc && nids[p] > *T) *T = nids[p];
    }
    return rc;
}

/* acc[l * hidden + j] += the statistic of the n prompts as one left-padded batch, averaged over the batch
 * (mergekit's get_hidden_states): hidden / hidden_last, the residual stream entering layer l at the last
 * position; hidden_avg, its sum over the batch's T positions (the prompt's own and T - len pad positions)
 * divided by T. One prompt at a time: RoPE scores depend only on relative positions and the padding is
 * masked out, so a prompt's own positions have the states of the unpadded prompt. */
static int hidden_mean(struct fwd *f, const struct prompts *pc, char *const *prompts, size_t n, int avg,
                       int layers, int hidden, double *acc, struct alloy_err *err)
{
    size_t LH = (size_t)layers * (size_t)hidden, T = 0;
    int32_t **ids = alloy_xcalloc(n ? n : 1, sizeof *ids);
    size_t *nids = alloy_xcalloc(n ? n : 1, sizeof *nids);
    float *taps = alloy_xmalloc(((size_t)layers + 1) * (size_t)hidden * sizeof *taps);
    int rc = ids && nids && taps ? encode_batch(f, pc, prompts, n, ids, nids, &T, err)
                                 : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = alloy_blas_room(err); /* the forward passes below run BLAS on this thread */
    for (size_t p = 0; p < n && !rc; p++) {
        if (avg && nids[p] < T) rc = pad_states(f, layers, hidden, prompts[p], err);
        struct alloy_llama_ws *ws = rc ? NULL : alloy_llama_ws_new(f->lm, (int)nids[p], 1);
        if (!rc && !ws) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory for a forward pass");
        if (!rc && avg) alloy_llama_residual_sums(f->lm, ws, ids[p], (int)nids[p], taps);
        else if (!rc) alloy_llama_residuals(f->lm, ws, ids[p], (int)nids[p], taps);
        for (size_t i = 0; !rc && i < LH; i++) {
            double v = taps[i];
            if (avg && nids[p] < T) v += (double)(T - nids[p]) * f->pad_taps[i];
            acc[i] += (avg ? v / (double)T : v) / (double)n;
        }
        alloy_llama_ws_free(ws);
    }
    for (size_t p = 0; ids && p < n; p++) free(ids[p]);
    free(ids);
    free(nids);
    free(taps);
    return rc;
}

/* mergekit's pad token into *id: tokenizer.pad_token_id = bos_token_id, else the EOS token; -1: neither. */
static int pad_token(const struct alloy_model *base, const struct prompts *pc, int *id, struct alloy_err *err)
{
    char *eos = NULL;
    *id = pc->bos[0] ? alloy_tokenizer_token_id(pc->tok, pc->bos) : -1;
    int rc = *id < 0 ? special_text(alloy_model_dir(base), "eos_token", &eos, err) : ALLOY_OK;
    if (!rc && eos && eos[0]) *id = alloy_tokenizer_token_id(pc->tok, eos);
    free(eos);
    return rc;
}

/* hidden / hidden_last / hidden_avg: per expert and layer, mean(positive) - mean(negative), L2-normalised. */
static int hidden_gates(const struct alloy_moe_config *c, const struct alloy_moe_expert *const *x, size_t nx,
                        const struct alloy_model *base, int layers, int hidden, float *g, struct alloy_err *err)
{
    struct fwd f = {.pad = -1};
    struct prompts pc = {0};
    size_t LH = (size_t)layers * (size_t)hidden;
    int avg = c->gate == ALLOY_GATE_HIDDEN_AVG;
    double *pos = alloy_xmalloc(2 * LH * sizeof *pos), *neg = pos ? pos + LH : NULL;
    int rc = pos ? alloy_llama_new(base, &f.lm, err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc && (alloy_llama_cfg(f.lm)->num_layers != layers || alloy_llama_cfg(f.lm)->hidden_size != hidden))
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s/config.json: num_hidden_layers, hidden_size: expected %d, %d, "
                           "found others", alloy_model_dir(base), layers, hidden);
    if (!rc) rc = prompts_open(base, &pc, err);
    if (!rc && avg) rc = pad_token(base, &pc, &f.pad, err);
    for (size_t e = 0; e < nx && !rc; e++) {
        memset(pos, 0, 2 * LH * sizeof *pos);
        rc = hidden_mean(&f, &pc, x[e]->positive, x[e]->npositive, avg, layers, hidden, pos, err);
        if (!rc) rc = hidden_mean(&f, &pc, x[e]->negative, x[e]->nnegative, avg, layers, hidden, neg, err);
        for (int l = 0; l < layers && !rc; l++) {
            double *v = pos + (size_t)l * hidden;
            for (int j = 0; j < hidden; j++) v[j] -= neg[(size_t)l * hidden + j];
            normalize(v, hidden);
            for (int j = 0; j < hidden; j++) g[((size_t)l * nx + e) * hidden + j] = (float)v[j];
        }
    }
    prompts_close(&pc);
    alloy_llama_close(f.lm);
    free(f.pad_taps);
    free(pos);
    return rc;
}

static int cheap_embed(const struct alloy_moe_expert *const *x, size_t nx, const struct alloy_model *base, int layers,
                       int hidden, float *g, struct alloy_err *err)
{
    const struct alloy_tensor *embed = alloy_model_find(base, "model.embed_tokens.weight");
    if (!embed || embed->ndim != 2 || embed->shape[1] != hidden || !alloy_moe_plain_float(embed->dtype))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.embed_tokens.weight: expected a float [vocab, %d] "
                             "matrix for gate_mode cheap_embed, found %s", alloy_model_dir(base), hidden,
                             embed ? "another shape or dtype" : "nothing");
    struct prompts pc = {0};
    int rc = prompts_open(base, &pc, err);
    for (size_t e = 0; e < nx && !rc; e++) rc = expert_row(x[e], pc.tok, pc.bos, embed, hidden, g + e * (size_t)hidden, err);
    for (int l = 1; l < layers && !rc; l++) memcpy(g + (size_t)l * nx * hidden, g, nx * (size_t)hidden * sizeof *g);
    prompts_close(&pc);
    return rc;
}

int alloy_moe_gates(const struct alloy_moe_config *c, int with_shared, const struct alloy_model *base, int layers,
                    int hidden, uint64_t seed, float **gates, struct alloy_err *err)
{
    *gates = NULL;
    size_t nx = c->nexperts + (with_shared ? c->nshared : 0);
    const struct alloy_moe_expert **x = alloy_xcalloc(nx, sizeof *x);
    float *g = alloy_xcalloc((size_t)layers * nx * (size_t)hidden, sizeof *g);
    if (!x || !g) {
        free(x);
        free(g);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory for the routers");
    }
    for (size_t e = 0; e < nx; e++) x[e] = e < c->nexperts ? &c->experts[e] : &c->shared[e - c->nexperts];
    int rc = ALLOY_OK;
    if (c->gate == ALLOY_GATE_CHEAP_EMBED) rc = cheap_embed(x, nx, base, layers, hidden, g, err);
    else if (c->gate == ALLOY_GATE_RANDOM || c->gate == ALLOY_GATE_UNIFORM_RANDOM)
        random_gates(c->gate, nx, layers, hidden, seed, g);
    else rc = hidden_gates(c, x, nx, base, layers, hidden, g, err);
    free(x);
    if (rc) free(g);
    else *gates = g;
    return rc;
}
