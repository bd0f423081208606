/*
 * moe.c — `alloy moe` (mergekit-moe): a mixture of experts assembled from a
 * dense base and dense experts of its shapes. This file chooses the output
 * architecture and plans the output tensors; moe_write.c writes them.
 *
 * DESIGN
 *   The architecture is mergekit's select_output_arch: among Mixtral,
 *   DeepSeek MoE, Qwen MoE and Qwen3 MoE (those whose name starts with the
 *   config's `architecture`, case-insensitively), the ones that support the
 *   config (input model types, shared experts and their prompts); Mixtral
 *   when it is one of them, else the first.
 *
 *   Planning reads only headers and config.json. The output tensors are the
 *   base's, in its order, with each MLP weight replaced in place by the
 *   experts' copies of it (then the shared expert's), as mergekit writes
 *   them:
 *     Mixtral     block_sparse_moe.experts.E.w1/w2/w3 (gate/down/up_proj)
 *     Qwen MoE    mlp.experts.E.*_proj, mlp.shared_expert.*_proj
 *     DeepSeek    mlp.experts.E.*_proj, mlp.shared_experts.*_proj
 *     Qwen3 MoE   mlp.experts.E.*_proj
 *   With the fused layout (Mixtral, Qwen3 MoE: mergekit on transformers 5)
 *   the MLP weights are dropped there and each layer gets, after the base's
 *   tensors, mlp.experts.gate_up_proj [E, 2I, H] (expert e's gate rows then
 *   its up rows) and mlp.experts.down_proj [E, H, I]. Then every layer's
 *   router ([E, H]: block_sparse_moe.gate.weight for classic Mixtral, else
 *   mlp.gate.weight) and Qwen MoE's mlp.shared_expert_gate.weight [1, H].
 *   Qwen MoE needs q/k/v biases: a base without them gets zeros. Every
 *   shape and dtype is checked before a byte is written.
 */
#include "core/internal.h"
#include "engine/moe.h"
#include "formats/formats.h"
#include "plan/plan.h"

static const char *const g_arch[ALLOY_MOE_NARCH] = {"Mixtral", "DeepSeek MoE", "Qwen MoE", "Qwen3 MoE"};

const char *alloy_moe_arch_name(enum alloy_moe_arch a) { return g_arch[a]; }

static int failed(const struct alloy_err *err, int status)
{
    return err && err->status ? (int)err->status : status;
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

/* ------------------------------------------------------------ the output architecture */

/* The models' common model_type into type[n] ("" when they differ); rc on a config that cannot be read. */
static int common_type(const struct alloy_moe_job *m, char *type, size_t n, struct alloy_err *err)
{
    size_t nm = m->c->nexperts + m->c->nshared;
    for (size_t i = 0; i <= nm; i++) {
        json_t *j = config_json(i ? m->experts[i - 1] : m->base, err);
        if (!j) return failed(err, ALLOY_ERR_FORMAT);
        const char *t = json_string_value(json_object_get(j, "model_type"));
        if (i == 0) snprintf(type, n, "%s", t ? t : "");
        else if (!t || strcmp(t, type) != 0) type[0] = 0;
        json_decref(j);
    }
    return ALLOY_OK;
}

static int type_in(const char *t, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(t, *list) == 0) return 1;
    return 0;
}

/* mergekit's supports_config of architecture a: NULL, or why not (a static string). */
static const char *unsupported(const struct alloy_moe_job *m, enum alloy_moe_arch a, const char *type, int fused)
{
    static const char *const llama[] = {"llama", "mistral", NULL}, *const qwen[] = {"llama", "mistral", "qwen2", NULL};
    const struct alloy_moe_config *c = m->c;
    if (fused && (a == ALLOY_MOE_DEEPSEEK || a == ALLOY_MOE_QWEN)) return "no fused expert layout";
    switch (a) {
    case ALLOY_MOE_MIXTRAL:
        if (c->nshared) return "no shared experts";
        return !type_in(type, llama) ? "llama or mistral models of one model_type" : NULL;
    case ALLOY_MOE_DEEPSEEK:
        if (c->nshared > 1) return "at most one shared expert";
        if (c->nshared && (c->shared[0].npositive || c->shared[0].nnegative)) return "a shared expert without prompts";
        return !type_in(type, llama) ? "llama or mistral models of one model_type" : NULL;
    case ALLOY_MOE_QWEN:
        if (c->nshared != 1) return "exactly one shared expert";
        if (c->gate != ALLOY_GATE_RANDOM && !c->shared[0].npositive) return "positive_prompts on the shared expert";
        return !type_in(type, qwen) ? "qwen2, llama or mistral models of one model_type" : NULL;
    default:
        if (c->nshared) return "no shared experts";
        return strcmp(type, "qwen3") != 0 ? "qwen3 models" : NULL;
    }
}

static int select_arch(struct alloy_moe_job *m, struct alloy_err *err)
{
    char type[64], why[600] = "";
    int rc = common_type(m, type, sizeof type, err), any = 0;
    const char *a = m->c->architecture;
    for (int i = 0; i < ALLOY_MOE_NARCH && !rc; i++) {
        if (a && strncasecmp(g_arch[i], a, strlen(a)) != 0) continue;
        any = 1;
        const char *no = unsupported(m, (enum alloy_moe_arch)i, type, m->fused);
        if (!no) {
            m->arch = (enum alloy_moe_arch)i; /* the first that fits; Mixtral is first */
            return ALLOY_OK;
        }
        snprintf(why + strlen(why), sizeof why - strlen(why), "%s%s needs %s", why[0] ? "; " : "", g_arch[i], no);
    }
    if (rc) return rc;
    if (!any)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: architecture: expected a prefix of mixtral, deepseek moe, "
                             "qwen moe or qwen3 moe, found %s", m->c->path, a);
    return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: architecture: expected a config that an output "
                         "architecture supports, found none for these models (model_type %s, %zu shared experts%s): %s",
                         m->c->path, type[0] ? type : "differing", m->c->nshared, m->fused ? ", fused layout" : "", why);
}

static int open_models(struct alloy_moe_job *m, struct alloy_err *err)
{
    size_t nm = m->c->nexperts + m->c->nshared;
    int rc = alloy_model_open(m->c->base_model, &m->base, err);
    if (!rc && !(m->experts = alloy_xcalloc(nm ? nm : 1, sizeof *m->experts)))
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t e = 0; e < nm && !rc; e++) {
        const struct alloy_moe_expert *x = e < m->c->nexperts ? &m->c->experts[e] : &m->c->shared[e - m->c->nexperts];
        rc = alloy_model_open(x->source_model, &m->experts[e], err);
    }
    if (!rc && !(m->config = config_json(m->base, err))) rc = failed(err, ALLOY_ERR_NOMEM);
    if (!rc) rc = select_arch(m, err);
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

/* ------------------------------------------------------------ the output tensors */

static struct alloy_moe_out *add(struct alloy_moe_job *m, char *name, struct alloy_err *err)
{
    if (name && m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 256;
        struct alloy_moe_out *t = alloy_xrealloc(m->t, cap * sizeof *t);
        if (t) m->t = t, m->cap = cap;
    }
    if (!name || m->n == m->cap) {
        free(name);
        alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory planning the MoE");
        return NULL;
    }
    struct alloy_moe_out *t = &m->t[m->n++];
    memset(t, 0, sizeof *t);
    t->name = name;
    return t;
}

static enum alloy_dtype out_dtype(const struct alloy_moe_job *m, enum alloy_dtype stored)
{
    return m->c->has_dtype && alloy_moe_plain_float(stored) ? m->c->dtype : stored;
}

static const struct alloy_moe_expert *expert_cfg(const struct alloy_moe_job *m, size_t e)
{
    return e < m->c->nexperts ? &m->c->experts[e] : &m->c->shared[e - m->c->nexperts];
}

/* Appends to t the piece of expert model e (routed, then shared) for base MLP weight `name` (suffix: its
 * "mlp.X_proj.weight"), after checking it has the base's shape; `key` names its noise draws. */
static int add_piece(struct alloy_moe_job *m, struct alloy_moe_out *t, size_t e, const struct alloy_tensor *b,
                     const char *suffix, const char *key, struct alloy_err *err)
{
    const struct alloy_tensor *x = alloy_model_find(m->experts[e], b->name);
    if (!x || x->ndim != 2 || x->shape[0] != b->shape[0] || x->shape[1] != b->shape[1] || !alloy_moe_plain_float(x->dtype))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a float matrix of the base's shape [%lld, %lld], "
                             "found %s", alloy_model_dir(m->experts[e]), b->name, (long long)b->shape[0],
                             (long long)b->shape[1], x ? "another shape or dtype" : "no such tensor");
    struct alloy_moe_piece *pc = alloy_xrealloc(t->pc, (t->npc + 1) * sizeof *pc);
    if (!pc) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory planning the MoE");
    t->pc = pc;
    const struct alloy_moe_expert *xc = expert_cfg(m, e);
    int down = strcmp(suffix, "mlp.down_proj.weight") == 0;
    t->pc[t->npc++] = (struct alloy_moe_piece){x, down ? xc->residual_scale : 1, xc->noise_scale,
                                               alloy_rng_key(m->o->has_seed ? m->o->seed : 0, key, 1)};
    if (t->npc == 1) t->dtype = out_dtype(m, x->dtype);
    return ALLOY_OK;
}

/* The per-expert name of base MLP weight `suffix` of layer l for expert e (e = routed count: the shared). */
static char *expert_name(const struct alloy_moe_job *m, long long l, const char *suffix, size_t e)
{
    const char *proj = suffix + 4; /* after "mlp." */
    if (m->arch == ALLOY_MOE_MIXTRAL) /* gate_proj -> w1, down_proj -> w2, up_proj -> w3 */
        return alloy_xasprintf("%s.%lld.block_sparse_moe.experts.%zu.w%c.weight", m->prefix, l, e,
                               proj[0] == 'g' ? '1' : proj[0] == 'd' ? '2' : '3');
    if (e == m->c->nexperts)
        return alloy_xasprintf("%s.%lld.mlp.%s.%s", m->prefix, l,
                               m->arch == ALLOY_MOE_QWEN ? "shared_expert" : "shared_experts", proj);
    return alloy_xasprintf("%s.%lld.mlp.experts.%zu.%s", m->prefix, l, e, proj);
}

/* The copies of base MLP weight b (layer l) for every expert, then the shared expert: mergekit's order. */
static int add_mlp_weight(struct alloy_moe_job *m, long long l, const struct alloy_tensor *b, const char *suffix,
                          struct alloy_err *err)
{
    size_t nm = m->c->nexperts + m->c->nshared;
    for (size_t e = 0; e < nm; e++) {
        struct alloy_moe_out *t = add(m, expert_name(m, l, suffix, e), err);
        if (!t) return failed(err, ALLOY_ERR_NOMEM);
        *t = (struct alloy_moe_out){t->name, ALLOY_DTYPE_F32, 2, {b->shape[0], b->shape[1]}, ALLOY_MOE_COPY, NULL, 0,
                                    (int)l, 0, 0};
        int rc = add_piece(m, t, e, b, suffix, t->name, err);
        if (rc) return rc;
    }
    return ALLOY_OK;
}

/* Qwen MoE's attention biases: a base without q/k/v_proj.bias gets zeros of the projection's rows. */
static int add_zero_bias(struct alloy_moe_job *m, const struct alloy_tensor *s, const char *suffix,
                         struct alloy_err *err)
{
    static const char *const w[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"};
    if (m->arch != ALLOY_MOE_QWEN || s->ndim != 2) return ALLOY_OK;
    for (int i = 0; i < 3; i++) {
        if (strcmp(suffix, w[i]) != 0) continue;
        char *name = alloy_xasprintf("%.*sbias", (int)(strlen(s->name) - strlen("weight")), s->name);
        if (name && alloy_model_find(m->base, name)) {
            free(name); /* the base has it: copied in its place */
            return ALLOY_OK;
        }
        struct alloy_moe_out *t = add(m, name, err);
        if (!t) return failed(err, ALLOY_ERR_NOMEM);
        t->kind = ALLOY_MOE_ZEROS;
        t->dtype = out_dtype(m, s->dtype);
        t->ndim = 1;
        t->shape[0] = s->shape[0];
    }
    return ALLOY_OK;
}

static int is_mlp_weight(const char *suffix)
{
    return !strcmp(suffix, "mlp.gate_proj.weight") || !strcmp(suffix, "mlp.up_proj.weight") ||
           !strcmp(suffix, "mlp.down_proj.weight");
}

/* One base tensor: copied, or (an MLP weight) replaced by the experts' copies; seen[l] marks layers with MLPs. */
static int plan_base_tensor(struct alloy_moe_job *m, const struct alloy_tensor *s, uint8_t *seen, struct alloy_err *err)
{
    size_t plen = 0;
    const char *suffix = NULL;
    long long l = alloy_name_layer(s->name, &plen, &suffix);
    if (l >= 0 && strncmp(suffix, "mlp.", 4) == 0) {
        if (!is_mlp_weight(suffix) || s->ndim != 2)
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected only gate_proj, up_proj and down_proj "
                                 "weights in a dense MLP, found this tensor", alloy_model_dir(m->base), s->name);
        if (l >= m->layers)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a layer below num_hidden_layers %d",
                                 alloy_model_dir(m->base), s->name, m->layers);
        if (!m->prefix && !(m->prefix = alloy_xasprintf("%.*s", (int)plen, s->name)))
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (strncmp(s->name, m->prefix, plen) != 0 || strlen(m->prefix) != plen)
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected the layer prefix %s, found another",
                                 alloy_model_dir(m->base), s->name, m->prefix);
        seen[l] = 1;
        return m->fused ? ALLOY_OK : add_mlp_weight(m, l, s, suffix, err);
    }
    if (s->ndim > 2)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected at most 2 dimensions, found %d",
                             alloy_model_dir(m->base), s->name, s->ndim);
    struct alloy_moe_out *t = add(m, alloy_xstrdup(s->name), err);
    if (!t) return failed(err, ALLOY_ERR_NOMEM);
    t->ndim = s->ndim;
    for (int d = 0; d < s->ndim; d++) t->shape[d] = s->shape[d];
    t->pc = alloy_xcalloc(1, sizeof *t->pc);
    if (!t->pc) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    t->pc[0] = (struct alloy_moe_piece){s, 1, 0, 0};
    t->npc = 1;
    t->dtype = out_dtype(m, s->dtype);
    return l >= 0 ? add_zero_bias(m, s, suffix, err) : ALLOY_OK;
}

/* Layer l's fused expert tensors: gate_up_proj [E, 2I, H] (gate rows, then up rows, per expert) and
 * down_proj [E, H, I]. */
static int add_fused(struct alloy_moe_job *m, int l, struct alloy_err *err)
{
    static const char *const parts[2][2] = {{"mlp.gate_proj.weight", "mlp.up_proj.weight"}, {"mlp.down_proj.weight", NULL}};
    static const char *const names[2] = {"gate_up_proj", "down_proj"};
    for (int k = 0; k < 2; k++) {
        char bn[512];
        snprintf(bn, sizeof bn, "%s.%d.%s", m->prefix, l, parts[k][0]);
        const struct alloy_tensor *b = alloy_model_find(m->base, bn);
        struct alloy_moe_out *t = add(m, alloy_xasprintf("%s.%d.mlp.experts.%s", m->prefix, l, names[k]), err);
        if (!t) return failed(err, ALLOY_ERR_NOMEM);
        if (!b) return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected an MLP weight, found none",
                                     alloy_model_dir(m->base), bn);
        t->ndim = 3;
        t->shape[0] = (int64_t)m->c->nexperts;
        t->shape[1] = b->shape[0] * (k == 0 ? 2 : 1);
        t->shape[2] = b->shape[1];
        t->layer = l;
        for (size_t e = 0; e < m->c->nexperts; e++)
            for (int p = 0; p < 2 && parts[k][p]; p++) {
                snprintf(bn, sizeof bn, "%s.%d.%s", m->prefix, l, parts[k][p]);
                const struct alloy_tensor *bp = alloy_model_find(m->base, bn);
                char key[600]; /* the per-expert name: the same noise as the per-expert layout */
                snprintf(key, sizeof key, "%s.%d.mlp.experts.%zu.%s", m->prefix, l, e, parts[k][p] + 4);
                int rc = bp ? add_piece(m, t, e, bp, parts[k][p], key, err)
                            : alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected an MLP weight, found none",
                                            alloy_model_dir(m->base), bn);
                if (rc) return rc;
            }
        t->dtype = out_dtype(m, b->dtype);
    }
    return ALLOY_OK;
}

/* Layer l's router [E, H] (and Qwen MoE's shared expert gate [1, H]), in the dtype of the base's MLP. */
static int add_routers(struct alloy_moe_job *m, int l, struct alloy_err *err)
{
    char bn[512];
    snprintf(bn, sizeof bn, "%s.%d.mlp.gate_proj.weight", m->prefix, l);
    const struct alloy_tensor *b = alloy_model_find(m->base, bn);
    enum alloy_dtype d = out_dtype(m, b ? b->dtype : ALLOY_DTYPE_F32);
    int classic = m->arch == ALLOY_MOE_MIXTRAL && !m->fused;
    for (int k = 0; k < (m->arch == ALLOY_MOE_QWEN ? 2 : 1); k++) {
        struct alloy_moe_out *t = add(m, alloy_xasprintf("%s.%d.%s", m->prefix, l, k ? "mlp.shared_expert_gate.weight" :
                                                         classic ? "block_sparse_moe.gate.weight" : "mlp.gate.weight"),
                                      err);
        if (!t) return failed(err, ALLOY_ERR_NOMEM);
        *t = (struct alloy_moe_out){t->name, d, 2, {k ? 1 : (int64_t)m->c->nexperts, m->hidden}, ALLOY_MOE_ROUTER,
                                    NULL, 0, l, k ? m->c->nexperts : 0, 0};
    }
    return ALLOY_OK;
}

static int plan(struct alloy_moe_job *m, struct alloy_err *err)
{
    uint8_t *seen = alloy_xcalloc((size_t)m->layers, 1);
    if (!seen) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    int rc = ALLOY_OK;
    for (size_t i = 0; i < alloy_model_count(m->base) && !rc; i++)
        rc = plan_base_tensor(m, alloy_model_tensor(m->base, i), seen, err);
    for (int l = 0; l < m->layers && !rc; l++)
        if (!seen[l])
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: model.layers.%d.mlp.gate_proj.weight: expected an MLP in "
                               "each of the num_hidden_layers %d layers, found none in this one",
                               alloy_model_dir(m->base), l, m->layers);
    free(seen);
    for (int l = 0; l < m->layers && m->fused && !rc; l++) rc = add_fused(m, l, err);
    for (int l = 0; l < m->layers && !rc; l++) rc = add_routers(m, l, err);
    for (size_t i = 0; i < m->n && !rc; i++) {
        struct alloy_moe_out *t = &m->t[i];
        const struct alloy_dtype_traits *tr = alloy_dtype_traits(t->dtype);
        if (t->npc == 1 && t->pc[0].src->dtype == t->dtype) {
            t->nbytes = t->pc[0].src->nbytes; /* a copy: any dtype */
            continue;
        }
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (uint64_t)t->shape[d];
        t->nbytes = numel * tr->block_bytes / tr->block;
    }
    return rc;
}

/* ------------------------------------------------------------ entry */

void alloy_moe_options_init(struct alloy_moe_options *o)
{
    memset(o, 0, sizeof *o);
    o->copy_tokenizer = 1;
}

static void job_free(struct alloy_moe_job *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->t[i].name);
        free(m->t[i].pc);
    }
    free(m->t);
    for (size_t e = 0; m->experts && e < m->c->nexperts + m->c->nshared; e++) alloy_model_close(m->experts[e]);
    free(m->experts);
    alloy_model_close(m->base);
    json_decref(m->config);
    free(m->gates);
    free(m->prefix);
    alloy_moe_config_free(m->c);
}

/* mergekit's need_gates: shared experts get router rows when they have prompts or the gates are random. */
static int shared_gates(const struct alloy_moe_config *c)
{
    return c->nshared && (c->shared[0].npositive || c->gate == ALLOY_GATE_RANDOM || c->gate == ALLOY_GATE_UNIFORM_RANDOM);
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
    struct alloy_moe_job m = {.o = o, .config_text = t, .fused = o->fused_experts};
    rc = alloy_moe_config_parse(t, strlen(t), o->config_path, o->allow_crimes, &m.c, err);
    if (!rc) rc = open_models(&m, err);
    if (!rc) rc = plan(&m, err);
    m.ngates = m.c ? m.c->nexperts + (shared_gates(m.c) ? m.c->nshared : 0) : 0;
    if (!rc) rc = alloy_moe_gates(m.c, shared_gates(m.c), m.base, m.layers, m.hidden, o->has_seed ? o->seed : 0,
                                  &m.gates, err);
    if (!rc && (m.c->nexperts & (m.c->nexperts - 1)) && o->log)
        o->log(o->log_user, 0, "the number of experts is not a power of two: llama.cpp may not load the model");
    if (!rc) rc = alloy_moe_write(&m, err);
    if (m.c) job_free(&m);
    free(text);
    return rc;
}
