/*
 * moe.c — `alloy moe` (mergekit-moe): a Mixtral mixture of experts from a
 * dense Llama/Mistral base and dense experts of the same shapes.
 *
 * DESIGN
 *   Planning reads only headers and config.json: the output tensor list is
 *   the base's, in its order, with each layer's three MLP weights replaced
 *   by the layer's router `block_sparse_moe.gate.weight` [E, hidden] and,
 *   for every expert e, `block_sparse_moe.experts.e.{w1,w2,w3}.weight` read
 *   from expert e's `mlp.{gate,down,up}_proj.weight` (mergekit's Mixtral
 *   mapping). Every shape and dtype is checked before a byte is written.
 *
 *   Writing streams: a copied tensor moves 1 MiB at a time from its source
 *   to its final offset in model.safetensors (header first, offsets fixed
 *   by the plan); a tensor that changes (dtype conversion, residual_scale on
 *   w2, noise_scale) goes through float32 in chunks of 64 Ki elements. Only
 *   the routers (layers x E x hidden floats, moe_gates.c) are held whole.
 *   The folder is built in a hidden temporary sibling and published by
 *   rename (sinks/publish.c), so an error leaves no partial output.
 *
 *   config.json is the base's with mergekit's Mixtral fields: architectures
 *   [MixtralForCausalLM], model_type mixtral, num_local_experts,
 *   num_experts_per_tok, sliding_window null, torch_dtype, and MixtralConfig's
 *   router defaults (docs/moe.md). The base's tokenizer files are copied and
 *   the config is kept as mergekit_moe_config.yml.
 */
#include "core/internal.h"
#include "engine/moe.h"
#include "formats/formats.h"
#include "plan/plan.h"
#include "sinks/output.h"
#include "sinks/publish.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <unistd.h>

#define CHUNK ((size_t)1 << 16)

struct out_t {
    char *name;
    enum alloy_dtype dtype;
    int ndim;
    int64_t shape[2];
    const struct alloy_tensor *src; /* NULL: the router of `layer` */
    int layer;
    double scale, noise;            /* residual_scale (w2), noise_scale */
    uint64_t offset, nbytes;
};

struct moe {
    const struct alloy_moe_options *o;
    struct alloy_moe_config *c;
    struct alloy_model *base, **experts;
    json_t *config;
    int layers, hidden;
    struct out_t *t;
    size_t n, cap;
    float *gates;
};

/* The status of the error just set (err may be NULL: the caller wants no message). */
static int failed(const struct alloy_err *err, int status)
{
    return err && err->status ? (int)err->status : status;
}

static void warn(const struct moe *m, const char *msg)
{
    if (m->o->log) m->o->log(m->o->log_user, 0, msg);
}

static json_t *config_json(const struct alloy_model *mod, struct alloy_err *err)
{
    const char *text = alloy_model_config_text(mod);
    json_t *j = text ? json_loads(text, JSON_REJECT_DUPLICATES, NULL) : NULL;
    if (!json_is_object(j)) {
        json_decref(j);
        alloy_err_set(err, ALLOY_ERR_FORMAT, "%s/config.json: expected a JSON object, found %s",
                      alloy_model_dir(mod), text ? "something else" : "no file");
        return NULL;
    }
    return j;
}

/* Mixtral takes llama or mistral models (mergekit's MixtralModuleArchitecture.supports_config). */
static int check_type(const struct alloy_model *mod, struct alloy_err *err)
{
    json_t *j = config_json(mod, err);
    if (!j) return failed(err, ALLOY_ERR_FORMAT);
    const char *t = json_string_value(json_object_get(j, "model_type"));
    int ok = t && (strcmp(t, "llama") == 0 || strcmp(t, "mistral") == 0);
    int rc = ok ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s/config.json: model_type: expected llama or "
                                           "mistral for a Mixtral MoE (the only output supported yet), found %s",
                                           alloy_model_dir(mod), t ? t : "nothing");
    json_decref(j);
    return rc;
}

/* mergekit's `architecture`: a case-insensitive prefix of an output architecture's name. */
static int check_architecture(const struct moe *m, struct alloy_err *err)
{
    static const char *const others[] = {"deepseek moe", "qwen moe", "qwen3 moe", NULL};
    const char *a = m->c->architecture;
    if (a && strncasecmp("mixtral", a, strlen(a)) != 0) {
        for (int i = 0; others[i]; i++)
            if (strncasecmp(others[i], a, strlen(a)) == 0)
                return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: architecture: expected mixtral (%s output is "
                                     "not supported yet), found %s", m->c->path, others[i], a);
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: architecture: expected a prefix of mixtral, deepseek moe, "
                             "qwen moe or qwen3 moe, found %s", m->c->path, a);
    }
    if (m->c->nshared)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: shared_experts: expected none (Mixtral has no shared "
                             "experts; the DeepSeek and Qwen MoE outputs that take them are not supported yet), found %zu",
                             m->c->path, m->c->nshared);
    return ALLOY_OK;
}

static int open_models(struct moe *m, struct alloy_err *err)
{
    int rc = alloy_model_open(m->c->base_model, &m->base, err);
    if (!rc) rc = check_type(m->base, err);
    if (!rc && !(m->experts = alloy_xcalloc(m->c->nexperts, sizeof *m->experts)))
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t e = 0; e < m->c->nexperts && !rc; e++) {
        rc = alloy_model_open(m->c->experts[e].source_model, &m->experts[e], err);
        if (!rc) rc = check_type(m->experts[e], err);
    }
    if (!rc && !(m->config = config_json(m->base, err))) rc = failed(err, ALLOY_ERR_NOMEM);
    if (rc) return rc;
    json_int_t L = json_integer_value(json_object_get(m->config, "num_hidden_layers"));
    json_int_t H = json_integer_value(json_object_get(m->config, "hidden_size"));
    if (L < 1 || L > 100000 || H < 1 || H > 1000000)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s/config.json: num_hidden_layers, hidden_size: expected "
                             "positive integers, found %lld, %lld", alloy_model_dir(m->base), (long long)L, (long long)H);
    m->layers = (int)L;
    m->hidden = (int)H;
    return ALLOY_OK;
}

static struct out_t *add(struct moe *m, char *name, struct alloy_err *err)
{
    if (name && m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 256;
        struct out_t *t = alloy_xrealloc(m->t, cap * sizeof *t);
        if (t) m->t = t, m->cap = cap;
    }
    if (!name || m->n == m->cap) {
        free(name);
        alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory planning the MoE");
        return NULL;
    }
    struct out_t *t = &m->t[m->n++];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->scale = 1;
    return t;
}

static enum alloy_dtype out_dtype(const struct moe *m, enum alloy_dtype stored)
{
    return m->c->has_dtype && alloy_moe_plain_float(stored) ? m->c->dtype : stored;
}

/* The router of layer l, then w1, w2, w3 of every expert, named with the layer's prefix. */
static int add_layer(struct moe *m, const char *prefix, size_t plen, long long l, const struct alloy_tensor *bgate,
                     struct alloy_err *err)
{
    static const char *const src[3] = {"mlp.gate_proj.weight", "mlp.down_proj.weight", "mlp.up_proj.weight"};
    if (l >= m->layers)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a layer below num_hidden_layers %d",
                             alloy_model_dir(m->base), bgate->name, m->layers);
    struct out_t *r = add(m, alloy_xasprintf("%.*s.%lld.block_sparse_moe.gate.weight", (int)plen, prefix, l), err);
    if (!r) return failed(err, ALLOY_ERR_NOMEM);
    *r = (struct out_t){r->name, out_dtype(m, bgate->dtype), 2, {(int64_t)m->c->nexperts, m->hidden}, NULL, (int)l,
                        1, 0, 0, 0};
    for (size_t e = 0; e < m->c->nexperts; e++) {
        for (int w = 0; w < 3; w++) {
            char name[512];
            snprintf(name, sizeof name, "%.*s.%lld.%s", (int)plen, prefix, l, src[w]);
            const struct alloy_tensor *b = alloy_model_find(m->base, name), *x = alloy_model_find(m->experts[e], name);
            if (!b || !x || x->ndim != 2 || b->ndim != 2 || x->shape[0] != b->shape[0] || x->shape[1] != b->shape[1] ||
                !alloy_moe_plain_float(x->dtype))
                return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a float matrix of the base's shape "
                                     "[%lld, %lld], found %s", alloy_model_dir(m->experts[e]), name,
                                     b ? (long long)b->shape[0] : -1LL, b && b->ndim == 2 ? (long long)b->shape[1] : -1LL,
                                     x ? "another shape or dtype" : "no such tensor");
            struct out_t *t = add(m, alloy_xasprintf("%.*s.%lld.block_sparse_moe.experts.%zu.w%d.weight", (int)plen,
                                                     prefix, l, e, w + 1), err);
            if (!t) return failed(err, ALLOY_ERR_NOMEM);
            t->dtype = out_dtype(m, x->dtype);
            t->ndim = 2;
            t->shape[0] = x->shape[0];
            t->shape[1] = x->shape[1];
            t->src = x;
            t->noise = m->c->experts[e].noise_scale;
            if (w == 1) t->scale = m->c->experts[e].residual_scale;
        }
    }
    return ALLOY_OK;
}

static int plan(struct moe *m, struct alloy_err *err)
{
    uint8_t *done = alloy_xcalloc((size_t)m->layers, 1);
    if (!done) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    int rc = ALLOY_OK;
    for (size_t i = 0; i < alloy_model_count(m->base) && !rc; i++) {
        const struct alloy_tensor *s = alloy_model_tensor(m->base, i);
        size_t plen = 0;
        const char *suffix = NULL;
        long long l = alloy_name_layer(s->name, &plen, &suffix);
        if (l >= 0 && strncmp(suffix, "mlp.", 4) == 0) {
            if (strcmp(suffix, "mlp.gate_proj.weight") && strcmp(suffix, "mlp.up_proj.weight") &&
                strcmp(suffix, "mlp.down_proj.weight"))
                rc = alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected only gate_proj, up_proj and "
                                   "down_proj weights in a Llama MLP, found this tensor", alloy_model_dir(m->base), s->name);
            else if (l < m->layers && done[l]) continue;
            else if (!(rc = add_layer(m, s->name, plen, l, s, err))) done[l] = 1;
            continue;
        }
        if (s->ndim > 2) {
            rc = alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected at most 2 dimensions, found %d",
                               alloy_model_dir(m->base), s->name, s->ndim);
            break;
        }
        struct out_t *t = add(m, alloy_xstrdup(s->name), err);
        if (!t) rc = failed(err, ALLOY_ERR_NOMEM);
        else {
            t->dtype = out_dtype(m, s->dtype);
            t->ndim = s->ndim;
            for (int d = 0; d < s->ndim; d++) t->shape[d] = s->shape[d];
            t->src = s;
        }
    }
    for (int l = 0; l < m->layers && !rc; l++)
        if (!done[l])
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.layers.%d.mlp.gate_proj.weight: expected an MLP in "
                               "each of the num_hidden_layers %d layers, found none in this one",
                               alloy_model_dir(m->base), l, m->layers);
    free(done);
    uint64_t off = 0;
    for (size_t i = 0; i < m->n && !rc; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < m->t[i].ndim; d++) numel *= (uint64_t)m->t[i].shape[d];
        const struct alloy_dtype_traits *tr = alloy_dtype_traits(m->t[i].dtype);
        m->t[i].nbytes = m->t[i].src && m->t[i].dtype == m->t[i].src->dtype ? m->t[i].src->nbytes
                                                                            : numel * tr->block_bytes / tr->block;
        m->t[i].offset = off;
        off += m->t[i].nbytes;
    }
    return rc;
}

/* A tensor whose values change on the way: float32 chunks, scaled, noised, converted. */
static int write_converted(const struct moe *m, const struct out_t *t, int fd, const char *path, uint64_t at,
                           struct alloy_err *err)
{
    const struct alloy_tensor *s = t->src;
    size_t ein = alloy_dtype_traits(s->dtype)->block_bytes, eout = alloy_dtype_traits(t->dtype)->block_bytes;
    uint64_t numel = s->nbytes / ein, key = alloy_rng_key(m->o->has_seed ? m->o->seed : 0, t->name, 1);
    float *f = alloy_xmalloc(CHUNK * sizeof *f);
    uint8_t *raw = alloy_xmalloc(CHUNK * (ein > eout ? ein : eout));
    int rc = f && raw ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory writing %s", t->name);
    for (uint64_t e0 = 0; e0 < numel && !rc; e0 += CHUNK) {
        size_t k = (size_t)(numel - e0 < CHUNK ? numel - e0 : CHUNK);
        rc = alloy_tensor_pread(s, e0 * ein, raw, k * ein, err);
        if (rc) break;
        alloy_to_f32(s->dtype, raw, f, k);
        for (size_t i = 0; i < k; i++) {
            double v = f[i] * t->scale;
            if (t->noise > 0) v += t->noise * alloy_moe_normal(key, e0 + i);
            f[i] = (float)v;
        }
        alloy_from_f32(t->dtype, f, raw, k);
        rc = alloy_pwrite_all(fd, raw, k * eout, at + e0 * eout, path, err);
    }
    free(f);
    free(raw);
    return rc;
}

static int write_tensor(const struct moe *m, const struct out_t *t, int fd, const char *path, uint64_t at,
                        struct alloy_err *err)
{
    if (!t->src) { /* a router */
        size_t n = m->c->nexperts * (size_t)m->hidden;
        uint8_t *raw = alloy_xmalloc(t->nbytes ? (size_t)t->nbytes : 1);
        if (!raw) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory writing %s", t->name);
        alloy_from_f32(t->dtype, m->gates + (size_t)t->layer * n, raw, n);
        int rc = alloy_pwrite_all(fd, raw, (size_t)t->nbytes, at, path, err);
        free(raw);
        return rc;
    }
    if (t->dtype != t->src->dtype || t->scale != 1 || t->noise > 0) return write_converted(m, t, fd, path, at, err);
    const uint64_t step = (uint64_t)1 << 20;
    uint8_t *buf = alloy_xmalloc(step);
    int rc = buf ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory copying %s", t->name);
    for (uint64_t off = 0; off < t->nbytes && !rc; off += step) {
        size_t k = (size_t)(t->nbytes - off < step ? t->nbytes - off : step);
        rc = alloy_tensor_pread(t->src, off, buf, k, err);
        if (!rc) rc = alloy_pwrite_all(fd, buf, k, at + off, path, err);
    }
    free(buf);
    return rc;
}

static int write_weights(const struct moe *m, const char *dir, struct alloy_err *err)
{
    struct alloy_tensor_desc *d = alloy_xcalloc(m->n ? m->n : 1, sizeof *d);
    size_t hlen = 0;
    uint8_t *hdr = NULL;
    for (size_t i = 0; d && i < m->n; i++)
        d[i] = (struct alloy_tensor_desc){m->t[i].name, m->t[i].dtype, m->t[i].ndim, m->t[i].shape, m->t[i].offset,
                                          m->t[i].nbytes};
    if (d) hdr = alloy_st_header(d, m->n, &hlen);
    free(d);
    char *path = hdr ? alloy_xasprintf("%s/model.safetensors", dir) : NULL;
    if (!path) {
        free(hdr);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory building the MoE's header");
    }
    int rc = ALLOY_OK, fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    if (!rc) rc = alloy_pwrite_all(fd, hdr, hlen, 0, path, err);
    for (size_t i = 0; i < m->n && !rc; i++) rc = write_tensor(m, &m->t[i], fd, path, hlen + m->t[i].offset, err);
    if (!rc && fsync(fd) != 0) rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    if (fd >= 0 && close(fd) != 0 && !rc)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    free(hdr);
    free(path);
    return rc;
}

static int write_json_file(const char *dir, const char *name, const json_t *j, struct alloy_err *err)
{
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER), *path = alloy_xasprintf("%s/%s", dir, name);
    int rc = text && path ? alloy_write_file(path, text, strlen(text), err)
                          : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory writing %s", name);
    free(text);
    free(path);
    return rc;
}

/* The base's config.json as mergekit's MixtralConfig(**MistralConfig(base)) writes it. */
static int write_config(const struct moe *m, const char *dir, struct alloy_err *err)
{
    json_t *j = m->config, *arch = json_array();
    if (!arch || json_array_append_new(arch, json_string("MixtralForCausalLM")))
        return json_decref(arch), alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    json_object_set_new(j, "architectures", arch);
    json_object_set_new(j, "model_type", json_string("mixtral"));
    json_object_set_new(j, "num_local_experts", json_integer((json_int_t)m->c->nexperts));
    json_object_set_new(j, "num_experts_per_tok", json_integer(m->c->experts_per_token));
    json_object_set_new(j, "sliding_window", json_null());
    if (!json_object_get(j, "output_router_logits")) json_object_set_new(j, "output_router_logits", json_false());
    if (!json_object_get(j, "router_aux_loss_coef")) json_object_set_new(j, "router_aux_loss_coef", json_real(0.001));
    if (!json_object_get(j, "router_jitter_noise")) json_object_set_new(j, "router_jitter_noise", json_real(0.0));
    if (m->c->has_dtype) json_object_set_new(j, "torch_dtype", json_string(alloy_dtype_traits(m->c->dtype)->torch));
    return write_json_file(dir, "config.json", j, err);
}

static int write_files(const struct moe *m, const char *dir, const char *config_text, struct alloy_err *err)
{
    int rc = write_config(m, dir, err);
    if (!rc && config_text) {
        char *p = alloy_xasprintf("%s/mergekit_moe_config.yml", dir);
        rc = p ? alloy_write_file(p, config_text, strlen(config_text), err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        free(p);
    }
    for (size_t i = 0; m->o->copy_tokenizer && !rc && alloy_output_tokenizer_file(i); i++) {
        const char *f = alloy_output_tokenizer_file(i);
        char *from = alloy_xasprintf("%s/%s", alloy_model_dir(m->base), f), *to = alloy_xasprintf("%s/%s", dir, f);
        if (!from || !to) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        else if (alloy_is_file(from)) rc = alloy_copy_file(from, to, err);
        free(from);
        free(to);
    }
    return rc;
}

static int publish(struct moe *m, const char *config_text, struct alloy_err *err)
{
    char *out = NULL, *tmp = NULL;
    size_t nm = m->c->nexperts + 1;
    const struct alloy_model **models = alloy_xcalloc(nm, sizeof *models);
    int rc = models ? alloy_out_target(m->o->out_dir, &out, err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) {
        models[0] = m->base;
        for (size_t e = 0; e < m->c->nexperts; e++) models[e + 1] = m->experts[e];
        rc = alloy_check_out_dir_models(models, nm, out, m->o->overwrite, err);
    }
    if (!rc) rc = alloy_make_tmp_dir(out, &tmp, err);
    if (!rc) rc = write_weights(m, tmp, err);
    if (!rc) rc = write_files(m, tmp, config_text, err);
    if (!rc) rc = alloy_seal_tmp_dir(tmp, err);
    if (!rc) rc = alloy_publish_dir(tmp, out, err);
    if (rc && tmp) alloy_remove_tree(tmp);
    free(tmp);
    free(out);
    free(models);
    return rc;
}

void alloy_moe_options_init(struct alloy_moe_options *o)
{
    memset(o, 0, sizeof *o);
    o->copy_tokenizer = 1;
}

static void moe_free(struct moe *m)
{
    for (size_t i = 0; i < m->n; i++) free(m->t[i].name);
    free(m->t);
    for (size_t e = 0; m->experts && e < m->c->nexperts; e++) alloy_model_close(m->experts[e]);
    free(m->experts);
    alloy_model_close(m->base);
    json_decref(m->config);
    free(m->gates);
    alloy_moe_config_free(m->c);
}

int alloy_moe(const struct alloy_moe_options *o, struct alloy_err *err)
{
    if (!o->out_dir) return alloy_err_set(err, ALLOY_ERR_CONFIG, "a MoE assembly needs an output folder");
    char *text = NULL;
    size_t len = 0;
    int rc = o->config_text ? ALLOY_OK : !o->config_path ? alloy_err_set(err, ALLOY_ERR_CONFIG, "a MoE assembly needs a config")
                                       : alloy_read_file(o->config_path, ALLOY_CONFIG_MAX_BYTES, &text, &len, err);
    if (rc) return rc;
    const char *t = o->config_text ? o->config_text : text;
    struct moe m = {.o = o};
    rc = alloy_moe_config_parse(t, strlen(t), o->config_path, o->allow_crimes, &m.c, err);
    if (!rc) rc = check_architecture(&m, err);
    if (!rc) rc = open_models(&m, err);
    if (!rc) rc = plan(&m, err);
    if (!rc) rc = alloy_moe_gates(m.c, m.base, m.layers, m.hidden, o->has_seed ? o->seed : 0, &m.gates, err);
    if (!rc && (m.c->nexperts & (m.c->nexperts - 1)))
        warn(&m, "the number of experts is not a power of two: llama.cpp may not load the model");
    if (!rc) rc = publish(&m, t, err);
    if (m.c) moe_free(&m);
    free(text);
    return rc;
}
