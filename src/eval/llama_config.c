/*
 * llama_config.c — config.json of Llama-family models, read for the
 * evaluator (llama.c) and the MoE assembler.
 *
 * DESIGN
 *   One jansson parse of config.json; every field the forward pass needs is
 *   read with its default and a bound (sizes, heads, head_dim, rope theta and
 *   scaling, norm epsilon, biases, sliding window), and a value out of bound
 *   or of the wrong JSON kind is one error naming the file and the key. The
 *   MoE keys (Mixtral, Qwen2-MoE, DeepSeek-MoE) are checked by
 *   alloy_llama_moe_check in llama_moe.c; Qwen3-MoE's (experts of their own
 *   size, decoder_sparse_step, mlp_only_layers) are read here by
 *   parse_qwen3_moe. Nothing here touches weights.
 */
#include "eval/eval.h"
#include "eval/llama_impl.h"
#include "core/internal.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>

static const char *json_kind(const json_t *j, char *buf, size_t n)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:  return "an object";
    case JSON_ARRAY:   return "an array";
    case JSON_STRING:  snprintf(buf, n, "\"%.60s\"", json_string_value(j)); return buf;
    case JSON_INTEGER: snprintf(buf, n, "%lld", (long long)json_integer_value(j)); return buf;
    case JSON_REAL:    snprintf(buf, n, "%g", json_real_value(j)); return buf;
    case JSON_TRUE:    return "true";
    case JSON_FALSE:   return "false";
    case JSON_NULL:    return "null";
    }
    return "?";
}

/* An integer key in [lo, hi]; absent or null gives def, or an error when def < lo. */
static int cfg_int(const json_t *root, const char *label, const char *key, long long def, long long lo,
                   long long hi, int *out, struct alloy_err *err)
{
    const json_t *j = json_object_get(root, key);
    char buf[96];
    if (!j || json_is_null(j)) {
        if (def < lo)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: missing, expected an integer in [%lld, %lld]",
                                 label, key, lo, hi);
        *out = (int)def;
        return ALLOY_OK;
    }
    double v = json_is_integer(j) ? (double)json_integer_value(j) : json_is_real(j) ? json_real_value(j) : NAN;
    if (!(v >= (double)lo && v <= (double)hi) || v != floor(v))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected an integer in [%lld, %lld], found %s", label,
                             key, lo, hi, json_kind(j, buf, sizeof buf));
    *out = (int)v;
    return ALLOY_OK;
}

static int num_value(const json_t *j, double *v)
{
    if (json_is_integer(j)) *v = (double)json_integer_value(j);
    else if (json_is_real(j)) *v = json_real_value(j);
    else return 0;
    return 1;
}

/* A positive number; absent or null gives def (or an error when def <= 0). */
static int cfg_pos(const json_t *root, const char *label, const char *prefix, const char *key, double def,
                   double *out, struct alloy_err *err)
{
    const json_t *j = json_object_get(root, key);
    char buf[96];
    if (!j || json_is_null(j)) {
        if (def <= 0)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s%s: missing, expected a positive number", label,
                                 prefix, key);
        *out = def;
        return ALLOY_OK;
    }
    double v;
    if (!num_value(j, &v) || !(v > 0) || !isfinite(v))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s%s: expected a positive number, found %s", label, prefix,
                             key, json_kind(j, buf, sizeof buf));
    *out = v;
    return ALLOY_OK;
}

static int cfg_bool(const json_t *root, const char *label, const char *key, int def, int *out, struct alloy_err *err)
{
    const json_t *j = json_object_get(root, key);
    char buf[96];
    if (!j || json_is_null(j)) { *out = def; return ALLOY_OK; }
    if (!json_is_boolean(j))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected true or false, found %s", label, key,
                             json_kind(j, buf, sizeof buf));
    *out = json_is_true(j);
    return ALLOY_OK;
}

static int parse_rope_scaling(const json_t *rs, const char *label, struct alloy_llama_config *c,
                              struct alloy_err *err)
{
    char buf[96];
    c->rope_kind = ALLOY_ROPE_DEFAULT;
    if (!rs || json_is_null(rs)) return ALLOY_OK;
    if (!json_is_object(rs))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: rope_scaling: expected an object or null, found %s", label,
                             json_kind(rs, buf, sizeof buf));
    const char *tkey = "rope_type";
    const json_t *t = json_object_get(rs, "rope_type");
    if (!t || json_is_null(t)) { t = json_object_get(rs, "type"); tkey = "type"; }
    if (!json_is_string(t))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: rope_scaling.rope_type: expected a string, found %s", label,
                             t ? json_kind(t, buf, sizeof buf) : "nothing");
    const char *type = json_string_value(t);
    int rc;
    if (strcmp(type, "default") == 0) return ALLOY_OK;
    if (strcmp(type, "linear") == 0) {
        c->rope_kind = ALLOY_ROPE_LINEAR;
        return cfg_pos(rs, label, "rope_scaling.", "factor", 0, &c->rope_factor, err);
    }
    if (strcmp(type, "llama3") == 0) {
        c->rope_kind = ALLOY_ROPE_LLAMA3;
        if ((rc = cfg_pos(rs, label, "rope_scaling.", "factor", 0, &c->rope_factor, err)) ||
            (rc = cfg_pos(rs, label, "rope_scaling.", "low_freq_factor", 0, &c->rope_low_freq_factor, err)) ||
            (rc = cfg_pos(rs, label, "rope_scaling.", "high_freq_factor", 0, &c->rope_high_freq_factor, err)) ||
            (rc = cfg_pos(rs, label, "rope_scaling.", "original_max_position_embeddings", 0,
                          &c->rope_original_max_pos, err)))
            return rc;
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
            return alloy_err_set(err, ALLOY_ERR_FORMAT,
                                 "%s: rope_scaling.high_freq_factor: expected more than low_freq_factor (%g), found %g",
                                 label, c->rope_low_freq_factor, c->rope_high_freq_factor);
        return ALLOY_OK;
    }
    return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                         "%s: rope_scaling.%s: \"%s\" is not supported (default, linear, llama3 are)", label, tkey,
                         type);
}

/* Qwen3MoeConfig: experts of moe_intermediate_size, routed by a softmax router (no shared expert); layer l
 * sparse when (l + 1) % decoder_sparse_step == 0 and l is not in mlp_only_layers. */
static int parse_qwen3_moe(const json_t *root, const char *label, struct alloy_llama_config *c, struct alloy_err *err)
{
    int rc;
    if ((rc = cfg_int(root, label, "num_experts", 128, 1, 1024, &c->n_experts, err)) ||
        (rc = cfg_int(root, label, "num_experts_per_tok", 8, 1, c->n_experts, &c->experts_per_tok, err)) ||
        (rc = cfg_bool(root, label, "norm_topk_prob", 0, &c->norm_topk_prob, err)) ||
        (rc = cfg_int(root, label, "moe_intermediate_size", 768, 1, 1 << 24, &c->moe_intermediate_size, err)) ||
        (rc = cfg_int(root, label, "decoder_sparse_step", 1, 1, 100000, &c->sparse_step, err)))
        return rc;
    const json_t *only = json_object_get(root, "mlp_only_layers"), *v;
    size_t i;
    if (!only || json_is_null(only)) return ALLOY_OK;
    if (!json_is_array(only) || json_array_size(only) > ALLOY_LLAMA_MAX_DENSE)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: mlp_only_layers: expected an array of at most %d layer "
                             "indices, found %s", label, ALLOY_LLAMA_MAX_DENSE,
                             json_is_array(only) ? "a longer array" : "another kind");
    json_array_foreach(only, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= c->num_layers)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: mlp_only_layers[%zu]: expected a layer index in [0, %d), "
                                 "found another value", label, i, c->num_layers);
        c->dense_layers[c->n_dense_layers++] = (int)json_integer_value(v);
    }
    return ALLOY_OK;
}

int alloy_llama_layer_sparse(const struct alloy_llama_config *c, int l)
{
    if (!c->n_experts || (l + 1) % (c->sparse_step ? c->sparse_step : 1)) return 0;
    for (int i = 0; i < c->n_dense_layers; i++)
        if (c->dense_layers[i] == l) return 0;
    return 1;
}

/* The keys of each model_type family: activation, biases, sliding window, q/k norms, MoE keys. */
static int parse_family(const json_t *root, const char *label, struct alloy_llama_config *c, struct alloy_err *err)
{
    const char *type = c->model_type;
    int is_deepseek = strcmp(type, "deepseek") == 0, is_llama = is_deepseek || strcmp(type, "llama") == 0,
        is_mixtral = strcmp(type, "mixtral") == 0, is_qmoe = strcmp(type, "qwen2_moe") == 0,
        is_qwen2 = is_qmoe || strcmp(type, "qwen2") == 0, is_q3moe = strcmp(type, "qwen3_moe") == 0,
        is_qwen3 = is_q3moe || strcmp(type, "qwen3") == 0, rc;
    char buf[96];
    const json_t *act = json_object_get(root, "hidden_act");
    if (strcmp(type, "gemma") == 0) {
        int ab = 0;
        if ((rc = alloy_gemma_config(root, label, c, err)) || (rc = cfg_bool(root, label, "attention_bias", 0, &ab, err)))
            return rc;
        c->qkv_bias = c->o_bias = ab;
    } else if (act && !json_is_null(act) &&
        (!json_is_string(act) || (strcmp(json_string_value(act), "silu") && strcmp(json_string_value(act), "swish")))) {
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: hidden_act: %s is not supported (silu is)", label,
                             json_kind(act, buf, sizeof buf));
    }
    if (is_llama) {
        int ab = 0;
        if ((rc = cfg_bool(root, label, "attention_bias", 0, &ab, err)) ||
            (rc = cfg_bool(root, label, "mlp_bias", 0, &c->mlp_bias, err)))
            return rc;
        c->qkv_bias = c->o_bias = ab;
    } else if (is_qwen2 || is_qwen3) {
        int sw = 0, ab = 0;
        c->qkv_bias = is_qwen2;
        c->qk_norm = is_qwen3;
        if (is_qwen3 && (rc = cfg_bool(root, label, "attention_bias", 0, &ab, err))) return rc;
        c->qkv_bias = c->qkv_bias || ab;
        c->o_bias = ab;
        if ((rc = cfg_bool(root, label, "use_sliding_window", 0, &sw, err))) return rc;
        if (sw) {
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                                 "%s: use_sliding_window: true is not supported for %s (false is)", label, type);
        }
    } else {
        if ((rc = cfg_int(root, label, "sliding_window", 0, 0, 1 << 30, &c->sliding_window, err))) return rc;
    }
    c->norm_topk_prob = 1;
    if (is_mixtral && ((rc = cfg_int(root, label, "num_local_experts", -1, 1, 1024, &c->n_experts, err)) ||
                       (rc = cfg_int(root, label, "num_experts_per_tok", 2, 1, c->n_experts, &c->experts_per_tok, err))))
        return rc;
    if (is_qmoe && ((rc = cfg_int(root, label, "num_experts", 60, 1, 1024, &c->n_experts, err)) ||
                    (rc = cfg_int(root, label, "num_experts_per_tok", 4, 1, c->n_experts, &c->experts_per_tok, err)) ||
                    (rc = cfg_bool(root, label, "norm_topk_prob", 0, &c->norm_topk_prob, err)) ||
                    (rc = alloy_llama_moe_check(root, label, c, err))))
        return rc;
    if (is_deepseek && ((rc = cfg_int(root, label, "n_routed_experts", -1, 1, 1024, &c->n_experts, err)) ||
                        (rc = cfg_int(root, label, "num_experts_per_tok", -1, 1, c->n_experts, &c->experts_per_tok, err)) ||
                        (rc = cfg_bool(root, label, "norm_topk_prob", 0, &c->norm_topk_prob, err)) ||
                        (rc = alloy_llama_moe_check(root, label, c, err))))
        return rc;
    if (is_q3moe && (rc = parse_qwen3_moe(root, label, c, err))) return rc;
    c->sparse_step = c->sparse_step ? c->sparse_step : 1;
    c->moe_intermediate_size = c->moe_intermediate_size ? c->moe_intermediate_size : c->intermediate_size;
    return ALLOY_OK;
}

int alloy_llama_config_parse(const char *json_text, const char *label, struct alloy_llama_config *c,
                             struct alloy_err *err)
{
    json_error_t jerr;
    char buf[96];
    memset(c, 0, sizeof *c);
    json_t *root = json_loads(json_text, 0, &jerr);
    if (!root)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", label, jerr.text, jerr.line);
    int rc = ALLOY_OK;
    if (!json_is_object(root)) {
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: expected a JSON object, found %s", label,
                           json_kind(root, buf, sizeof buf));
        goto done;
    }
    const json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt)) {
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model_type: expected \"llama\", \"mistral\" or \"qwen2\", found %s",
                           label, mt ? json_kind(mt, buf, sizeof buf) : "nothing");
        goto done;
    }
    const char *type = json_string_value(mt);
    int is_llama = strcmp(type, "deepseek") == 0 || strcmp(type, "llama") == 0,
        is_mistral = strcmp(type, "mixtral") == 0 || strcmp(type, "mistral") == 0,
        is_qwen2 = strcmp(type, "qwen2_moe") == 0 || strcmp(type, "qwen2") == 0,
        is_qwen3 = strcmp(type, "qwen3_moe") == 0 || strcmp(type, "qwen3") == 0, is_gemma = strcmp(type, "gemma") == 0;
    if (!is_llama && !is_mistral && !is_qwen2 && !is_qwen3 && !is_gemma) {
        rc = alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: model_type: \"%.60s\" is not supported (llama, mistral, "
                           "mixtral, qwen2, qwen2_moe, deepseek, qwen3, qwen3_moe, gemma are)", label, type);
        goto done;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", type);
    const int big = 1 << 24;
    if ((rc = cfg_int(root, label, "vocab_size", -1, 1, big, &c->vocab_size, err)) ||
        (rc = cfg_int(root, label, "hidden_size", -1, 1, big, &c->hidden_size, err)) ||
        (rc = cfg_int(root, label, "intermediate_size", -1, 1, big, &c->intermediate_size, err)) ||
        (rc = cfg_int(root, label, "num_hidden_layers", -1, 1, 100000, &c->num_layers, err)) ||
        (rc = cfg_int(root, label, "num_attention_heads", -1, 1, 65536, &c->num_heads, err)) ||
        (rc = cfg_int(root, label, "num_key_value_heads", c->num_heads, 1, c->num_heads, &c->num_kv_heads, err)))
        goto done;
    if (c->num_heads % c->num_kv_heads) {
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT,
                           "%s: num_key_value_heads: expected a divisor of num_attention_heads (%d), found %d", label,
                           c->num_heads, c->num_kv_heads);
        goto done;
    }
    /* Qwen3Config's head_dim defaults to 128, GemmaConfig's to 256, not hidden_size / heads */
    int def_hd = is_qwen3 ? 128 : is_gemma ? 256 : c->hidden_size % c->num_heads == 0 ? c->hidden_size / c->num_heads : -1;
    if ((rc = cfg_int(root, label, "head_dim", def_hd, 2, 1 << 16, &c->head_dim, err))) goto done;
    if (c->head_dim % 2) {
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: head_dim: expected an even number (RoPE rotates halves), found %d",
                           label, c->head_dim);
        goto done;
    }
    int def_maxpos = is_llama ? 2048 : is_mistral ? 131072 : is_gemma ? 8192 : 32768;
    if ((rc = cfg_int(root, label, "max_position_embeddings", def_maxpos, 1, 1 << 30, &c->max_position_embeddings,
                      err)) ||
        (rc = cfg_pos(root, label, "", "rms_norm_eps", 1e-6, &c->rms_norm_eps, err)) ||
        (rc = cfg_pos(root, label, "", "rope_theta", 10000.0, &c->rope_theta, err)) ||
        (rc = parse_rope_scaling(json_object_get(root, "rope_scaling"), label, c, err)) ||
        (rc = cfg_bool(root, label, "tie_word_embeddings", is_gemma, &c->tie_word_embeddings, err)))
        goto done;
    if ((rc = parse_family(root, label, c, err))) goto done;
    const json_t *bos = json_object_get(root, "bos_token_id");
    c->bos_token_id = -1;
    if (json_is_integer(bos) && json_integer_value(bos) >= 0 && json_integer_value(bos) < c->vocab_size)
        c->bos_token_id = (int)json_integer_value(bos);
done:
    json_decref(root);
    return rc;
}
