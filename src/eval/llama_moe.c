/*
 * llama_moe.c — the sparse MoE blocks of the evaluator, float32: Mixtral's
 * (HF MixtralSparseMoeBlock), Qwen2-MoE's (HF Qwen2MoeSparseMoeBlock) and
 * DeepSeek-MoE's (deepseek-moe-16b's remote DeepseekMoE, softmax scoring).
 *
 * DESIGN
 *   For each token: router logits = W_gate x ([E]); softmax in float32;
 *   the experts_per_token largest probabilities (ties: the lower expert
 *   index), renormalised to sum 1 when norm_topk_prob (always for Mixtral);
 *   output = Σ weight_e · expert_e(x), each expert the same SiLU-gated MLP
 *   as a dense layer. Tokens are grouped per expert: the rows routed to
 *   expert e are gathered, run through its MLP as one batch (llama.c's sgemm
 *   path), and added back weighted, so the cost is experts_per_token dense
 *   MLPs per token. Qwen2-MoE adds its shared expert, run on every token and
 *   weighted by sigmoid(shared_expert_gate · x); DeepSeek adds its shared
 *   expert unweighted and renormalises only when it keeps several experts.
 *   Qwen3-MoE's block (HF Qwen3MoeSparseMoeBlock) is Qwen2-MoE's without the
 *   shared expert, its experts of moe_intermediate_size. Mixtral's and
 *   Qwen3-MoE's experts are read per expert (block_sparse_moe.experts.E.w1/
 *   w3/w2, mlp.experts.E.*_proj) or fused (mlp.experts.gate_up_proj
 *   [E, 2F, H], down_proj [E, H, F]), which is the same layout in memory.
 */
#include "eval/llama_impl.h"
#include "core/internal.h"
#include "sources/source.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>

int alloy_llama_moe_check(const json_t *root, const char *label, struct alloy_llama_config *c, struct alloy_err *err)
{
    int ds = strcmp(c->model_type, "deepseek") == 0;
    const char *const sizes[2] = {"moe_intermediate_size", ds ? NULL : "shared_expert_intermediate_size"};
    for (int i = 0; i < 2 && sizes[i]; i++) {
        const json_t *v = json_object_get(root, sizes[i]);
        if (!json_is_integer(v) || json_integer_value(v) != c->intermediate_size)
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected intermediate_size (%d) as mergekit-moe "
                                 "writes it (the evaluator runs only that), found %s", label, sizes[i],
                                 c->intermediate_size, v ? "another value" : "nothing");
    }
    const json_t *step = json_object_get(root, ds ? "moe_layer_freq" : "decoder_sparse_step");
    const json_t *dense = json_object_get(root, ds ? "first_k_dense_replace" : "mlp_only_layers");
    const json_t *shared = json_object_get(root, "n_shared_experts"), *scoring = json_object_get(root, "scoring_func");
    if ((step && !(json_is_integer(step) && json_integer_value(step) == 1)) ||
        (dense && (ds ? !json_is_integer(dense) || json_integer_value(dense) != 0 : json_array_size(dense) != 0)))
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s, %s: expected every layer sparse (1 and %s), found "
                             "others", label, ds ? "moe_layer_freq" : "decoder_sparse_step",
                             ds ? "first_k_dense_replace" : "mlp_only_layers", ds ? "0" : "[]");
    if (ds && ((shared && !json_is_null(shared) && !(json_is_integer(shared) && json_integer_value(shared) <= 1)) ||
               (scoring && !(json_is_string(scoring) && !strcmp(json_string_value(scoring), "softmax")))))
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: n_shared_experts, scoring_func: expected at most 1 and "
                             "softmax, found others", label);
    c->shared_expert = ds ? json_integer_value(shared) == 1 : 1;
    if (ds) c->norm_topk_prob = c->norm_topk_prob && c->experts_per_tok > 1; /* DeepSeek's MoEGate */
    return ALLOY_OK;
}


/* Tensor model.layers.l.<sub> [d0, d1] into arena + *off (arena NULL: checked only), *start pointed at it. */
static int moe_tensor(const struct alloy_model *mod, const char *dir, int l, const char *sub, int64_t d0, int64_t d1,
                      float *arena, uint64_t *off, const float **start, struct alloy_err *err)
{
    char name[160];
    snprintf(name, sizeof name, "model.layers.%d.%s", l, sub);
    if (start && arena) *start = arena + *off;
    int rc = alloy_llama_load_tensor(mod, dir, name, d0, d1, arena ? arena + *off : NULL, err);
    *off += (uint64_t)d0 * (uint64_t)d1;
    return rc;
}

/* Fused expert tensor model.layers.l.mlp.experts.<sub> [E, d1, d2] into arena + *off: read whole, it is already
 * in the arena's order (expert after expert). */
static int fused_tensor(const struct alloy_model *mod, const char *dir, int l, const char *sub, int64_t E, int64_t d1,
                        int64_t d2, float *arena, uint64_t *off, const float **start, struct alloy_err *err)
{
    char name[160];
    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s", l, sub);
    const struct alloy_tensor *t = alloy_model_find(mod, name);
    if (!t || t->ndim != 3 || t->shape[0] != E || t->shape[1] != d1 || t->shape[2] != d2 ||
        !alloy_dtype_traits(t->dtype)->mergeable)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected a float tensor of shape [%lld, %lld, %lld] (from "
                             "config.json), found %s", dir, name, (long long)E, (long long)d1, (long long)d2,
                             t ? "another shape or dtype" : "nothing");
    int rc = ALLOY_OK;
    if (arena) {
        if (start) *start = arena + *off;
        rc = alloy_model_read_f32(mod, t, arena + *off, err);
        alloy_tensor_release(t);
    }
    *off += (uint64_t)E * (uint64_t)d1 * (uint64_t)d2;
    return rc;
}

int alloy_llama_moe_load(struct alloy_llama *m, const struct alloy_model *mod, const char *dir, int l, float *arena,
                         uint64_t *off, struct alloy_err *err)
{
    static const char *const mx[4] = {"block_sparse_moe.gate.weight", "block_sparse_moe.experts.%d.w1.weight",
                                      "block_sparse_moe.experts.%d.w3.weight", "block_sparse_moe.experts.%d.w2.weight"};
    static const char *const qw[4] = {"mlp.gate.weight", "mlp.experts.%d.gate_proj.weight",
                                      "mlp.experts.%d.up_proj.weight", "mlp.experts.%d.down_proj.weight"};
    const struct alloy_llama_config *c = &m->cfg;
    struct llama_layer *L = &m->layers[l];
    int mixtral = strcmp(c->model_type, "mixtral") == 0, ds = strcmp(c->model_type, "deepseek") == 0;
    int q3 = strcmp(c->model_type, "qwen3_moe") == 0;
    const char *const *nm = mixtral ? mx : qw;
    int64_t H = c->hidden_size, F = c->moe_intermediate_size;
    char sub[96];
    snprintf(sub, sizeof sub, "model.layers.%d.mlp.experts.gate_up_proj", l);
    if ((mixtral || q3) && alloy_model_find(mod, sub)) { /* the fused layout (transformers 5) */
        int rc = moe_tensor(mod, dir, l, "mlp.gate.weight", c->n_experts, H, arena, off, &L->router, err);
        if (!rc) rc = fused_tensor(mod, dir, l, "gate_up_proj", c->n_experts, 2 * F, H, arena, off, &L->wgu, err);
        if (!rc) rc = fused_tensor(mod, dir, l, "down_proj", c->n_experts, H, F, arena, off, &L->wdown, err);
        return rc;
    }
    int rc = moe_tensor(mod, dir, l, nm[0], c->n_experts, H, arena, off, &L->router, err);
    for (int e = 0; e < 2 * c->n_experts && !rc; e++) { /* [E][2F][H]: each expert's gate rows, then up rows */
        snprintf(sub, sizeof sub, nm[1 + e % 2], e / 2);
        rc = moe_tensor(mod, dir, l, sub, F, H, arena, off, e ? NULL : &L->wgu, err);
    }
    for (int e = 0; e < c->n_experts && !rc; e++) {
        snprintf(sub, sizeof sub, nm[3], e);
        rc = moe_tensor(mod, dir, l, sub, H, F, arena, off, e ? NULL : &L->wdown, err);
    }
    if (rc || !c->shared_expert) return rc;
    const char *sh = ds ? "mlp.shared_experts" : "mlp.shared_expert";
    static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
    const float **start[3] = {&L->swgu, NULL, &L->swdown};
    for (int k = 0; k < 3 && !rc; k++) {
        snprintf(sub, sizeof sub, "%s.%s.weight", sh, proj[k]);
        rc = moe_tensor(mod, dir, l, sub, k == 2 ? H : F, k == 2 ? F : H, arena, off, start[k], err);
    }
    if (!rc && !ds) rc = moe_tensor(mod, dir, l, "mlp.shared_expert_gate.weight", 1, H, arena, off, &L->sgate, err);
    return rc;
}

int alloy_llama_moe_ws(const struct alloy_llama *m, struct alloy_llama_ws *ws, size_t T)
{
    size_t E = (size_t)m->cfg.n_experts, H = (size_t)m->cfg.hidden_size;
    ws->route = alloy_xmalloc(T * E * sizeof(float));
    ws->mx = alloy_xmalloc(T * H * sizeof(float));
    ws->my = alloy_xmalloc(T * H * sizeof(float));
    return ws->route && ws->mx && ws->my ? 0 : -1;
}

/* Row r[E] of router logits to routing weights in place: top k of the softmax, renormalised when norm;
 * others 0. */
static void route_row(float *r, int E, int k, int norm)
{
    float mx = r[0];
    for (int e = 1; e < E; e++) mx = r[e] > mx ? r[e] : mx;
    double sum = 0;
    for (int e = 0; e < E; e++) sum += (r[e] = expf(r[e] - mx));
    for (int e = 0; e < E; e++) r[e] = (float)(r[e] / sum);
    unsigned char keep[1024] = {0};
    double kept = 0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!keep[e] && (best < 0 || r[e] > r[best])) best = e;
        keep[best] = 1;
        kept += r[best];
    }
    for (int e = 0; e < E; e++) r[e] = keep[e] ? (float)(norm ? r[e] / kept : r[e]) : 0.0f;
}

void alloy_llama_moe_block(const struct alloy_llama *m, const struct llama_layer *L, struct alloy_llama_ws *ws,
                           size_t T, llama_ffn_fn ffn)
{
    const struct alloy_llama_config *c = &m->cfg;
    size_t E = (size_t)c->n_experts, H = (size_t)c->hidden_size, F = (size_t)c->moe_intermediate_size;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)E, (int)H, 1.0f, ws->a, (int)H, L->router,
                (int)H, 0.0f, ws->route, (int)E);
    for (size_t t = 0; t < T; t++) route_row(ws->route + t * E, (int)E, c->experts_per_tok, c->norm_topk_prob);
    memset(ws->my, 0, T * H * sizeof(float));
    for (size_t e = 0; e < E; e++) {
        size_t n = 0;
        for (size_t t = 0; t < T; t++)
            if (ws->route[t * E + e] > 0) memcpy(ws->mx + n++ * H, ws->a + t * H, H * sizeof(float));
        if (!n) continue;
        ffn(m, L->wgu + e * 2 * F * H, NULL, L->wdown + e * H * F, NULL, ws->mx, ws->gu, ws->act, ws->mx, n, F);
        n = 0;
        for (size_t t = 0; t < T; t++) {
            float w = ws->route[t * E + e];
            if (w <= 0) continue;
            const float *y = ws->mx + n++ * H;
            for (size_t j = 0; j < H; j++) ws->my[t * H + j] += w * y[j];
        }
    }
    if (L->swgu) { /* every token through the shared expert, weighted by its sigmoid gate (DeepSeek: none) */
        ffn(m, L->swgu, NULL, L->swdown, NULL, ws->a, ws->gu, ws->act, ws->mx, T, F);
        for (size_t t = 0; t < T; t++) {
            float g = L->sgate ? 1.0f / (1.0f + expf(-cblas_sdot((int)H, L->sgate, 1, ws->a + t * H, 1))) : 1.0f;
            for (size_t j = 0; j < H; j++) ws->my[t * H + j] += g * ws->mx[t * H + j];
        }
    }
    memcpy(ws->a, ws->my, T * H * sizeof(float));
}
