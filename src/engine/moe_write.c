/*
 * moe_write.c — writes a planned MoE assembly (moe.c): shards, index,
 * config.json, tokenizer files, the config copy.
 *
 * DESIGN
 *   The output tensors, in plan order, are cut into shards by the merge
 *   path's shard planner (plan/shards.c: a new shard when the next tensor
 *   would pass the size limit, mergekit's default 5e9 bytes) and, when there
 *   are several, listed in model.safetensors.index.json (sinks/output.c).
 *   Each shard file gets its header first, then every tensor at its final
 *   offset: a copied piece moves 1 MiB at a time from its source; a piece
 *   that changes (dtype conversion, residual_scale, noise_scale) goes
 *   through float32 in chunks of 64 Ki elements; routers come from the
 *   gates in memory (layers x experts x hidden floats, the only thing held
 *   whole); zero biases are written as zeros.
 *
 *   config.json is the base's with the output architecture's keys, as
 *   mergekit writes them: Mixtral, Qwen MoE and Qwen3 MoE through
 *   transformers' save_pretrained (keys sorted, the config class's defaults
 *   for router keys the base lacks), DeepSeek MoE with json.dump (the base's
 *   key order, new keys appended, indent 4). Everything goes into a hidden
 *   temporary sibling folder published by rename (sinks/publish.c), so an
 *   error leaves no partial output. The base's tokenizer files are copied,
 *   with mergekit's padding set (padding_side left, pad token BOS or EOS).
 */
#include "core/internal.h"
#include "engine/moe.h"
#include "formats/formats.h"
#include "plan/plan.h"
#include "sinks/output.h"
#include "sinks/publish.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#define CHUNK ((size_t)1 << 16)

/* A piece whose values change on the way: float32 chunks, scaled, noised, converted to `to`. */
static int stopped(const struct alloy_moe_job *m, struct alloy_err *err)
{
    return m->o->interrupt && *m->o->interrupt ? alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "interrupted") : ALLOY_OK;
}

/* A piece whose dtype, scale or noise changes: through float32 in chunks. *bad counts the NaN/Inf written. */
static int write_converted(const struct alloy_moe_job *m, const struct alloy_moe_piece *p, enum alloy_dtype to, int fd,
                           const char *path, uint64_t at, uint64_t *bad, struct alloy_err *err)
{
    const struct alloy_tensor *s = p->src;
    size_t ein = alloy_dtype_traits(s->dtype)->block_bytes, eout = alloy_dtype_traits(to)->block_bytes;
    uint64_t numel = s->nbytes / ein;
    float *f = alloy_xmalloc(CHUNK * sizeof *f);
    uint8_t *raw = alloy_xmalloc(CHUNK * (ein > eout ? ein : eout));
    int rc = f && raw ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory writing %s", s->name);
    for (uint64_t e0 = 0; e0 < numel && !rc; e0 += CHUNK) {
        size_t k = (size_t)(numel - e0 < CHUNK ? numel - e0 : CHUNK);
        if ((rc = stopped(m, err))) break;
        rc = alloy_tensor_pread(s, e0 * ein, raw, k * ein, err);
        if (rc) break;
        alloy_to_f32(s->dtype, raw, f, k);
        for (size_t i = 0; i < k; i++) {
            double v = f[i] * p->scale;
            if (p->noise > 0) v += p->noise * alloy_moe_normal(p->key, e0 + i);
            f[i] = (float)v;
        }
        *bad += alloy_from_f32_count(to, f, raw, k);
        rc = alloy_pwrite_all(fd, raw, k * eout, at + e0 * eout, path, err);
    }
    free(f);
    free(raw);
    return rc;
}

static int write_piece(const struct alloy_moe_job *m, const struct alloy_moe_piece *p, enum alloy_dtype to, int fd,
                       const char *path, uint64_t at, uint64_t *bad, struct alloy_err *err)
{
    if (p->src->dtype != to || p->scale != 1 || p->noise > 0) return write_converted(m, p, to, fd, path, at, bad, err);
    const uint64_t step = (uint64_t)1 << 20;
    uint8_t *buf = alloy_xmalloc(step);
    int rc = buf ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory copying %s", p->src->name);
    for (uint64_t off = 0; off < p->src->nbytes && !rc; off += step) {
        size_t k = (size_t)(p->src->nbytes - off < step ? p->src->nbytes - off : step);
        if ((rc = stopped(m, err))) break;
        rc = alloy_tensor_pread(p->src, off, buf, k, err);
        if (!rc) rc = alloy_pwrite_all(fd, buf, k, at + off, path, err);
    }
    free(buf);
    return rc;
}

static int write_tensor(const struct alloy_moe_job *m, const struct alloy_moe_out *t, int fd, const char *path,
                        uint64_t at, struct alloy_err *err)
{
    if (t->kind == ALLOY_MOE_COPY) {
        int rc = ALLOY_OK;
        size_t eout = alloy_dtype_traits(t->dtype)->block_bytes;
        uint64_t bad = 0, numel = t->nbytes / eout;
        for (size_t i = 0; i < t->npc && !rc; i++) {
            rc = write_piece(m, &t->pc[i], t->dtype, fd, path, at, &bad, err);
            at += t->pc[i].src->dtype == t->dtype ? t->pc[i].src->nbytes
                                                  : t->pc[i].src->nbytes / alloy_dtype_traits(t->pc[i].src->dtype)->block_bytes * eout;
        }
        if (!rc && bad && bad == numel) /* scaled or converted into nothing usable: an error, as for merges */
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': every one of its %llu values is NaN or Inf "
                                 "(check residual_scale and noise_scale)", m->o->config_path ? m->o->config_path : "config",
                                 t->name, (unsigned long long)bad);
        if (!rc && bad && m->o->log) {
            char msg[600];
            snprintf(msg, sizeof msg, "tensor '%.400s': %llu of %llu values are NaN or Inf", t->name,
                     (unsigned long long)bad, (unsigned long long)numel);
            m->o->log(m->o->log_user, 0, msg);
        }
        return rc;
    }
    uint8_t *raw = alloy_xcalloc(t->nbytes ? (size_t)t->nbytes : 1, 1); /* zeros: a zero bias */
    if (!raw) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory writing %s", t->name);
    if (t->kind == ALLOY_MOE_ROUTER)
        alloy_from_f32(t->dtype, m->gates + ((size_t)t->layer * m->ngates + t->row0) * (size_t)m->hidden, raw,
                       (size_t)t->shape[0] * (size_t)m->hidden);
    int rc = alloy_pwrite_all(fd, raw, (size_t)t->nbytes, at, path, err);
    free(raw);
    return rc;
}

static int write_shard(const struct alloy_moe_job *m, const struct alloy_plan *p, size_t si, const char *dir,
                       struct alloy_err *err)
{
    const struct alloy_plan_shard *s = &p->shards[si];
    size_t hlen = 0;
    uint8_t *hdr = alloy_plan_shard_header(p, si, &hlen);
    char *path = hdr ? alloy_xasprintf("%s/%s", dir, s->file) : NULL;
    if (!path) {
        free(hdr);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory building the header of %s", s->file);
    }
    int rc = ALLOY_OK, fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    if (!rc) rc = alloy_pwrite_all(fd, hdr, hlen, 0, path, err);
    for (size_t i = s->first; i < s->first + s->count && !rc; i++)
        rc = write_tensor(m, &m->t[i], fd, path, hlen + p->tensors[i].offset, err);
    if (!rc && fsync(fd) != 0) rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    if (fd >= 0 && close(fd) != 0 && !rc)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    free(hdr);
    free(path);
    return rc;
}

/* The shards (plan/shards.c places the tensors) and, when there are several, their index. */
static int write_weights(const struct alloy_moe_job *m, const char *dir, struct alloy_err *err)
{
    struct alloy_plan p = {.ntensors = m->n, .tensors = alloy_xcalloc(m->n ? m->n : 1, sizeof *p.tensors)};
    if (!p.tensors) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < m->n; i++) {
        struct alloy_plan_tensor *t = &p.tensors[i];
        t->name = m->t[i].name; /* borrowed */
        t->dtype = m->t[i].dtype;
        t->ndim = m->t[i].ndim;
        for (int d = 0; d < t->ndim; d++) t->shape[d] = m->t[i].shape[d];
        t->nbytes = m->t[i].nbytes;
    }
    int rc = alloy_plan_assign_shards(&p, m->o->shard_size, err);
    for (size_t s = 0; s < p.nshards && !rc; s++) rc = write_shard(m, &p, s, dir, err);
    if (!rc && p.nshards > 1) rc = alloy_output_write_index(&p, dir, err);
    for (size_t s = 0; s < p.nshards; s++) free(p.shards[s].file);
    free(p.shards);
    free(p.tensors);
    return rc;
}

/* ------------------------------------------------------------ config.json */

static json_t *string_list(const char *s)
{
    json_t *a = json_array();
    if (a && json_array_append_new(a, json_string(s))) {
        json_decref(a);
        return NULL;
    }
    return a;
}

static void set_default(json_t *j, const char *key, json_t *v)
{
    if (!json_object_get(j, key)) json_object_set_new(j, key, v);
    else json_decref(v);
}

/* The config class's router keys that the base lacks (what save_pretrained writes from their defaults). */
static void router_defaults(json_t *j)
{
    set_default(j, "output_router_logits", json_false());
    set_default(j, "router_aux_loss_coef", json_real(0.001));
}

static void set_moe_keys(const struct alloy_moe_job *m, json_t *j)
{
    json_t *inter = json_object_get(j, "intermediate_size");
    json_int_t E = (json_int_t)m->c->nexperts, K = m->c->experts_per_token;
    switch (m->arch) {
    case ALLOY_MOE_MIXTRAL: /* MixtralConfig(**MistralConfig(base)) */
        json_object_set_new(j, "model_type", json_string("mixtral"));
        json_object_set_new(j, "num_local_experts", json_integer(E));
        json_object_set_new(j, "num_experts_per_tok", json_integer(K));
        json_object_set_new(j, "sliding_window", json_null());
        router_defaults(j);
        set_default(j, "router_jitter_noise", json_real(0.0));
        break;
    case ALLOY_MOE_DEEPSEEK:
        json_object_set_new(j, "model_type", json_string("deepseek"));
        json_object_set_new(j, "n_routed_experts", json_integer(E));
        json_object_set_new(j, "n_shared_experts", m->c->nshared ? json_integer((json_int_t)m->c->nshared) : json_null());
        json_object_set_new(j, "num_experts_per_tok", json_integer(K));
        json_object_set_new(j, "first_k_dense_replace", json_integer(0));
        json_object_set_new(j, "moe_layer_freq", json_integer(1));
        json_object_set_new(j, "scoring_func", json_string("softmax"));
        json_object_set_new(j, "norm_topk_prob", json_true());
        json_object_set_new(j, "moe_intermediate_size", json_deep_copy(inter));
        json_object_set_new(j, "auto_map", json_pack("{s:s,s:s,s:s}",
            "AutoConfig", "deepseek-ai/deepseek-moe-16b-base--configuration_deepseek.DeepseekConfig",
            "AutoModel", "deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekModel",
            "AutoModelForCausalLM", "deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekForCausalLM"));
        break;
    default: /* Qwen2MoeConfig / Qwen3MoeConfig(**base) */
        json_object_set_new(j, "model_type", json_string(m->arch == ALLOY_MOE_QWEN ? "qwen2_moe" : "qwen3_moe"));
        json_object_set_new(j, "num_experts", json_integer(E));
        json_object_set_new(j, "num_experts_per_tok", json_integer(K));
        json_object_set_new(j, "decoder_sparse_step", json_integer(1));
        json_object_set_new(j, "norm_topk_prob", json_true());
        json_object_set_new(j, "moe_intermediate_size", json_deep_copy(inter));
        if (m->arch == ALLOY_MOE_QWEN) {
            json_object_set_new(j, "sliding_window", json_null());
            json_object_set_new(j, "use_sliding_window", json_false());
            json_object_set_new(j, "shared_expert_intermediate_size", json_deep_copy(inter));
            set_default(j, "max_window_layers", json_integer(28));
        }
        router_defaults(j);
        set_default(j, "mlp_only_layers", json_array());
    }
}

static int write_config(const struct alloy_moe_job *m, const char *dir, struct alloy_err *err)
{
    static const char *const archs[ALLOY_MOE_NARCH] = {"MixtralForCausalLM", "DeepseekForCausalLM",
                                                       "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"};
    json_t *j = m->config, *arch = string_list(archs[m->arch]);
    if (!arch) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    json_object_set_new(j, "architectures", arch);
    set_moe_keys(m, j);
    if (m->c->has_dtype) {
        const char *d = alloy_dtype_traits(m->c->dtype)->torch;
        json_object_set_new(j, "torch_dtype", json_string(d));
        if (json_object_get(j, "dtype")) json_object_set_new(j, "dtype", json_string(d));
    }
    size_t flags = m->arch == ALLOY_MOE_DEEPSEEK ? JSON_INDENT(4) | JSON_PRESERVE_ORDER : JSON_INDENT(2) | JSON_SORT_KEYS;
    char *text = json_dumps(j, flags), *path = alloy_xasprintf("%s/config.json", dir);
    int rc = text && path ? alloy_write_file(path, text, strlen(text), err)
                          : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory writing config.json");
    free(text);
    free(path);
    return rc;
}

/* ------------------------------------------------------------ the folder */

/* mergekit saves the tokenizer it routed with: padding_side left, pad token = the BOS token (else EOS). */
static int set_padding(const char *dir, const char *file, int side, struct alloy_err *err)
{
    char *path = alloy_xasprintf("%s/%s", dir, file);
    if (!path) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    json_error_t jerr;
    json_t *j = alloy_is_file(path) ? json_load_file(path, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    int rc = ALLOY_OK;
    if (alloy_is_file(path) && !json_is_object(j))
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: expected a JSON object, found something else (%s)", path, jerr.text);
    json_t *pad = json_object_get(j, "bos_token");
    if (json_is_null(pad) || !pad) pad = json_object_get(j, "eos_token");
    if (!rc && j) {
        if (json_is_object(pad)) pad = json_object_get(pad, "content");
        if (json_is_string(pad)) json_object_set_new(j, "pad_token", json_string(json_string_value(pad)));
        if (side) json_object_set_new(j, "padding_side", json_string("left"));
        char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        rc = text ? alloy_write_file(path, text, strlen(text), err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        free(text);
    }
    json_decref(j);
    free(path);
    return rc;
}

/* Before any work: every tokenizer file to copy resolves inside the base's folder (docs/security.md). */
static int check_tokenizer(const struct alloy_moe_job *m, struct alloy_err *err)
{
    int rc = ALLOY_OK;
    for (size_t i = 0; m->o->copy_tokenizer && !rc && alloy_output_tokenizer_file(i); i++) {
        char *path = NULL;
        rc = alloy_folder_file(alloy_model_dir(m->base), alloy_output_tokenizer_file(i), &path, err);
        free(path);
    }
    return rc;
}

static int write_files(const struct alloy_moe_job *m, const char *dir, struct alloy_err *err)
{
    int rc = write_config(m, dir, err);
    if (!rc) {
        char *p = alloy_xasprintf("%s/mergekit_moe_config.yml", dir);
        rc = p ? alloy_write_file(p, m->config_text, strlen(m->config_text), err)
               : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        free(p);
    }
    for (size_t i = 0; m->o->copy_tokenizer && !rc && alloy_output_tokenizer_file(i); i++) {
        const char *f = alloy_output_tokenizer_file(i);
        char *from = NULL, *to = NULL;
        rc = alloy_folder_file(alloy_model_dir(m->base), f, &from, err); /* the trust rule: inside the base */
        if (!rc && !(to = alloy_xasprintf("%s/%s", dir, f))) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (!rc && alloy_is_file(from)) rc = alloy_copy_file(from, to, err);
        free(from);
        free(to);
    }
    if (!rc && m->o->copy_tokenizer) rc = set_padding(dir, "tokenizer_config.json", 1, err);
    if (!rc && m->o->copy_tokenizer) rc = set_padding(dir, "special_tokens_map.json", 0, err);
    return rc;
}

int alloy_moe_write(struct alloy_moe_job *m, struct alloy_err *err)
{
    char *out = NULL, *tmp = NULL;
    size_t nm = m->c->nexperts + m->c->nshared + 1;
    const struct alloy_model **models = alloy_xcalloc(nm, sizeof *models);
    int rc = models ? alloy_out_target(m->o->out_dir, &out, err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) {
        models[0] = m->base;
        for (size_t e = 1; e < nm; e++) models[e] = m->experts[e - 1];
        rc = alloy_check_out_dir_models(models, nm, out, m->o->overwrite, err);
    }
    if (!rc) rc = check_tokenizer(m, err);
    if (!rc) rc = alloy_make_tmp_dir(out, &tmp, err);
    if (!rc) rc = write_weights(m, tmp, err);
    if (!rc) rc = write_files(m, tmp, err);
    if (!rc) rc = alloy_seal_tmp_dir(tmp, err);
    if (!rc) rc = alloy_publish_dir(tmp, out, err);
    if (rc && tmp) alloy_remove_tree(tmp);
    free(tmp);
    free(out);
    free(models);
    return rc;
}
