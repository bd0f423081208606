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
 *   Draws are counter-based (core/rng.c) keyed by the seed and the gate
 *   tensor's layer, so a seed gives the same routers on any machine.
 *   The hidden* modes need a forward pass of the base and are refused.
 */
#include "core/internal.h"
#include "engine/moe.h"
#include "formats/formats.h"

#include <jansson.h>
#include <math.h>

double alloy_moe_normal(uint64_t key, uint64_t counter)
{
    double u1 = alloy_rng_uniform(key, 2 * counter), u2 = alloy_rng_uniform(key, 2 * counter + 1);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2); /* 1 - u1 in (0, 1] */
}

static void random_gates(const struct alloy_moe_config *c, int layers, int hidden, uint64_t seed, float *g)
{
    size_t per = c->nexperts * (size_t)hidden;
    double bound = 1.0 / sqrt((double)hidden);
    for (int l = 0; l < layers; l++) {
        uint64_t key = alloy_rng_key(seed, "moe.gate", (uint64_t)l);
        for (size_t i = 0; i < per; i++)
            g[l * per + i] = c->gate == ALLOY_GATE_RANDOM ? (float)alloy_moe_normal(key, i)
                                                          : (float)((2.0 * alloy_rng_uniform(key, i) - 1.0) * bound);
    }
}

/* The BOS token's text from the base's tokenizer_config.json ("" when it names none). */
static int bos_text(const char *dir, char **out, struct alloy_err *err)
{
    char *path = alloy_xasprintf("%s/tokenizer_config.json", dir);
    if (!path) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    json_t *root = alloy_is_file(path) ? json_load_file(path, 0, NULL) : NULL;
    json_t *b = json_object_get(root, "bos_token");
    if (json_is_object(b)) b = json_object_get(b, "content");
    *out = alloy_xstrdup(json_is_string(b) ? json_string_value(b) : "");
    json_decref(root);
    free(path);
    return *out ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
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
        char *text = alloy_xasprintf("%s%s", bos, prompts[p]);
        int32_t *ids = NULL;
        size_t nids = 0;
        rc = text ? alloy_tokenizer_encode(tok, text, strlen(text), "prompt", &ids, &nids, err)
                  : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
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
        free(text);
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

static int cheap_embed(const struct alloy_moe_config *c, const struct alloy_model *base, int layers, int hidden,
                       float *g, struct alloy_err *err)
{
    const struct alloy_tensor *embed = alloy_model_find(base, "model.embed_tokens.weight");
    if (!embed || embed->ndim != 2 || embed->shape[1] != hidden || !alloy_moe_plain_float(embed->dtype))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.embed_tokens.weight: expected a float [vocab, %d] "
                             "matrix for gate_mode cheap_embed, found %s", alloy_model_dir(base), hidden,
                             embed ? "another shape or dtype" : "nothing");
    char *path = alloy_xasprintf("%s/tokenizer.json", alloy_model_dir(base)), *bos = NULL;
    struct alloy_tokenizer *tok = NULL;
    int rc = path ? alloy_tokenizer_load(path, &tok, err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = bos_text(alloy_model_dir(base), &bos, err);
    for (size_t e = 0; e < c->nexperts && !rc; e++)
        rc = expert_row(&c->experts[e], tok, bos, embed, hidden, g + e * (size_t)hidden, err);
    for (int l = 1; l < layers && !rc; l++) memcpy(g + (size_t)l * c->nexperts * hidden, g, c->nexperts * (size_t)hidden * sizeof *g);
    alloy_tokenizer_free(tok);
    free(bos);
    free(path);
    return rc;
}

int alloy_moe_gates(const struct alloy_moe_config *c, const struct alloy_model *base, int layers, int hidden,
                    uint64_t seed, float **gates, struct alloy_err *err)
{
    *gates = NULL;
    if (c->gate == ALLOY_GATE_HIDDEN || c->gate == ALLOY_GATE_HIDDEN_AVG || c->gate == ALLOY_GATE_HIDDEN_LAST)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: gate_mode: expected cheap_embed, random or "
                             "uniform_random (the hidden modes are not supported yet), found %s", c->path,
                             alloy_moe_gate_name(c->gate));
    float *g = alloy_xcalloc((size_t)layers * c->nexperts * (size_t)hidden, sizeof *g);
    if (!g) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory for the routers");
    int rc = ALLOY_OK;
    if (c->gate == ALLOY_GATE_CHEAP_EMBED) rc = cheap_embed(c, base, layers, hidden, g, err);
    else random_gates(c, layers, hidden, seed, g);
    if (rc) free(g);
    else *gates = g;
    return rc;
}
