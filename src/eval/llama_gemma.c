/*
 * llama_gemma.c — what Gemma (model_type "gemma", HF GemmaForCausalLM)
 * changes in the Llama forward pass of llama.c.
 *
 * DESIGN
 *   Gemma is Llama with three differences, each a hook here:
 *   - RMSNorm multiplies by (1 + w) in float32: alloy_gemma_prepare adds 1
 *     to every norm weight once after loading (the same float32 sum HF
 *     computes on every call), so llama.c's rmsnorm runs unchanged;
 *   - the embedded rows are scaled by sqrt(hidden_size), rounded to float32
 *     (HF casts the normalizer to the hidden dtype);
 *   - the MLP is GeGLU: down(gelu_tanh(gate x) * up x).
 *   Attention (scale head_dim^-0.5, half-split RoPE) and the tied lm_head
 *   are Llama's. Gemma2 and Gemma3 (soft-capping, sliding layers, extra
 *   norms) are not run: llama_config.c refuses their model_type.
 */
#include "eval/eval.h"
#include "eval/llama_impl.h"
#include "core/internal.h"

#include <math.h>
#include <stdio.h>

int alloy_gemma_config(const json_t *root, const char *label, struct alloy_llama_config *c, struct alloy_err *err)
{
    /* GemmaMLP's activation: hidden_activation when set, else hidden_act ("gelu" in the first Gemma
     * configs meant the tanh approximation there). */
    static const char *const keys[2] = {"hidden_activation", "hidden_act"};
    for (int i = 0; i < 2; i++) {
        const json_t *j = json_object_get(root, keys[i]);
        if (!j || json_is_null(j)) continue;
        const char *v = json_is_string(j) ? json_string_value(j) : "";
        if (strcmp(v, "gelu_pytorch_tanh") && !(i == 1 && strcmp(v, "gelu") == 0))
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected \"gelu_pytorch_tanh\", found %s%.60s%s",
                                 label, keys[i], json_is_string(j) ? "\"" : "", json_is_string(j) ? v : "another kind",
                                 json_is_string(j) ? "\"" : "");
        break;
    }
    c->gemma = 1;
    return ALLOY_OK;
}

void alloy_gemma_prepare(struct alloy_llama *m)
{
    size_t H = (size_t)m->cfg.hidden_size;
    float *norms[3];
    for (int l = 0; l < m->cfg.num_layers; l++) {
        norms[0] = (float *)m->layers[l].attn_norm;
        norms[1] = (float *)m->layers[l].ffn_norm;
        for (int k = 0; k < 2; k++)
            for (size_t i = 0; i < H; i++) norms[k][i] = 1.0f + norms[k][i];
    }
    norms[2] = (float *)m->norm;
    for (size_t i = 0; i < H; i++) norms[2][i] = 1.0f + norms[2][i];
}

void alloy_gemma_embed_scale(const struct alloy_llama_config *c, float *h, size_t T)
{
    float s = sqrtf((float)c->hidden_size);
    size_t n = T * (size_t)c->hidden_size;
    for (size_t i = 0; i < n; i++) h[i] *= s;
}

void alloy_gemma_gelu_mul(const float *g, const float *u, float *o, size_t n)
{
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    for (size_t i = 0; i < n; i++) {
        float x = g[i];
        o[i] = 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x))) * u[i];
    }
}
