/*
 * adapter.c — open a PEFT LoRA adapter folder: adapter_config.json, the
 * tensor index of adapter_model.safetensors, the tensors grouped by module.
 *
 * DESIGN
 *   The folder is resolved like a model reference (a directory, or an id in
 *   the local Hugging Face cache) and both files are opened through
 *   alloy_folder_file, so a link out of the folder is refused. Each tensor
 *   key is `base_model.model.<module>.<suffix>`; the suffix (docs/lora.md)
 *   says which part of which module it is. Keys are grouped into modules in
 *   a name index, then every module is checked on its own (A and B both
 *   present, 2-D, the same rank, that rank the config's) and the tables are
 *   sorted by name for binary search. Nothing but the header is read: values
 *   come on demand through alloy_adapter_read_f32 or the lora source.
 */
#include "lora/lora_config.h"
#include "core/strmap.h"
#include "formats/formats.h"
#include "sources/source.h"

#include <math.h>

#define PREFIX "base_model.model."

enum part { P_A, P_B, P_BIAS, P_EA, P_EB, P_MAG, P_BASE_W, P_BASE_B, P_W, P_B_FULL };

static const struct { const char *suffix; enum part part; } g_suffixes[] = {
    {".lora_A.weight", P_A},          {".lora_B.weight", P_B},
    {".lora_B.bias", P_BIAS},         {".lora_embedding_A", P_EA},
    {".lora_embedding_B", P_EB},      {".lora_magnitude_vector", P_MAG},
    {".lora_magnitude_vector.weight", P_MAG}, {".base_layer.weight", P_BASE_W},
    {".base_layer.bias", P_BASE_B},   {".weight", P_W},
    {".bias", P_B_FULL},
};

/* The part a key's tail names, and the module length; -1 for an unknown suffix. */
static int split_key(const char *key, size_t *mlen)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_suffixes); i++) {
        size_t s = strlen(g_suffixes[i].suffix);
        if (n > s && strcmp(key + n - s, g_suffixes[i].suffix) == 0) {
            *mlen = n - s;
            return (int)g_suffixes[i].part;
        }
    }
    return -1;
}

static void shape_str(const struct alloy_tensor *t, char *buf, size_t len)
{
    size_t k = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < t->ndim && k < len; d++)
        k += (size_t)snprintf(buf + k, len - k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (k < len) snprintf(buf + k, len - k, "]");
}

/* ------------------------------------------------------------ grouping */

struct group {
    struct alloy_adapter *a;
    struct alloy_strmap index;  /* module name -> position in a->modules */
    size_t cap, fcap;
    struct alloy_err *err;
};

static struct alloy_lora_module *module_slot(struct group *g, char *name)
{
    struct alloy_adapter *a = g->a;
    size_t at;
    if (alloy_strmap_get(&g->index, name, &at)) {
        free(name);
        return &a->modules[at];
    }
    if (a->nmodules == g->cap) {
        size_t nc = g->cap ? 2 * g->cap : 32;
        struct alloy_lora_module *nm = alloy_xrealloc(a->modules, nc * sizeof *nm);
        if (!nm) return free(name), NULL;
        a->modules = nm;
        g->cap = nc;
        /* keys point into the module names, which do not move; only the array did */
    }
    a->modules[a->nmodules] = (struct alloy_lora_module){.name = name, .kind = ALLOY_LORA_LINEAR};
    if (alloy_strmap_put(&g->index, name, a->nmodules, NULL) != 0) return free(name), NULL;
    return &a->modules[a->nmodules++];
}

static int add_full(struct group *g, char *name, const struct alloy_tensor *t, const char *key)
{
    struct alloy_adapter *a = g->a;
    for (size_t i = 0; i < a->nfull; i++)
        if (strcmp(a->full[i].name, name) == 0) {
            free(name);
            return alloy_err_set(g->err, ALLOY_ERR_FORMAT, "%s: %s: expected one full copy of '%s', found a second one",
                                 a->weights_path, key, a->full[i].name);
        }
    if (a->nfull == g->fcap) {
        size_t nc = g->fcap ? 2 * g->fcap : 8;
        struct alloy_lora_full *nf = alloy_xrealloc(a->full, nc * sizeof *nf);
        if (!nf) return free(name), alloy_err_set(g->err, ALLOY_ERR_NOMEM, "out of memory");
        a->full = nf;
        g->fcap = nc;
    }
    a->full[a->nfull++] = (struct alloy_lora_full){.name = name, .t = t};
    return ALLOY_OK;
}

/* A full copy (modules_to_save, base_layer, biases): allowed by the config? */
static int full_part(struct group *g, enum part part, const char *module, const char *key, const struct alloy_tensor *t)
{
    const struct alloy_adapter *a = g->a;
    int saved = alloy_lora_saved(a, module);
    if ((part == P_W && !saved) || ((part == P_B_FULL || part == P_BASE_B) && !saved && a->cfg->bias == LORA_BIAS_NONE))
        return alloy_err_set(g->err, ALLOY_ERR_FORMAT, "%s: %s: expected a LoRA tensor (lora_A, lora_B, ...) or a "
                             "module of modules_to_save%s, found a full %s of module '%s'", a->weights_path, key,
                             part == P_W ? "" : " (or bias: all / lora_only)", part == P_W ? "weight" : "bias", module);
    char *name = alloy_xasprintf("%s.%s", module, part == P_W || part == P_BASE_W ? "weight" : "bias");
    if (!name) return alloy_err_set(g->err, ALLOY_ERR_NOMEM, "out of memory");
    return add_full(g, name, t, key);
}

static int add_key(struct group *g, const struct alloy_tensor *t)
{
    const struct alloy_adapter *a = g->a;
    const char *key = t->name;
    size_t mlen = 0;
    int part = strncmp(key, PREFIX, strlen(PREFIX)) == 0 ? split_key(key + strlen(PREFIX), &mlen) : -2;
    if (part < 0)
        return alloy_err_set(g->err, ALLOY_ERR_FORMAT, "%s: %s: expected %s, found %s", a->weights_path, key,
                             part == -2 ? "a key starting with 'base_model.model.'"
                                        : "a PEFT LoRA key (<module>.lora_A.weight, .lora_B.weight, .lora_embedding_A, "
                                          "...)", part == -2 ? "another prefix" : "an unknown suffix");
    if (!alloy_dtype_traits(t->dtype)->mergeable)
        return alloy_err_set(g->err, ALLOY_ERR_FORMAT, "%s: %s: expected a float dtype, found %s", a->weights_path, key,
                             alloy_dtype_traits(t->dtype)->name);
    char *module = alloy_xstrdup(key + strlen(PREFIX));
    if (!module) return alloy_err_set(g->err, ALLOY_ERR_NOMEM, "out of memory");
    module[mlen] = '\0';
    if (part >= P_BASE_W && part != P_BASE_W) {
        int rc = full_part(g, (enum part)part, module, key, t);
        free(module);
        return rc;
    }
    if (part == P_BASE_W) {
        char *name = alloy_xasprintf("%s.weight", module);
        free(module);
        return name ? add_full(g, name, t, key) : alloy_err_set(g->err, ALLOY_ERR_NOMEM, "out of memory");
    }
    struct alloy_lora_module *m = module_slot(g, module);
    if (!m) return alloy_err_set(g->err, ALLOY_ERR_NOMEM, "out of memory");
    const struct alloy_tensor **slot = part == P_A || part == P_EA ? &m->a : part == P_B || part == P_EB ? &m->b
                                       : part == P_MAG ? &m->magnitude : &m->bias;
    if (*slot)
        return alloy_err_set(g->err, ALLOY_ERR_FORMAT, "%s: %s: expected one such tensor for module '%s', found two "
                             "spellings", a->weights_path, key, m->name);
    *slot = t;
    if (part == P_EA || part == P_EB) m->kind = ALLOY_LORA_EMBEDDING;
    return ALLOY_OK;
}

/* ------------------------------------------------------------ per-module checks */

static int check_2d(const struct alloy_adapter *a, const struct alloy_tensor *t, struct alloy_err *err)
{
    char s[96];
    if (t->ndim == 2 && t->shape[0] > 0 && t->shape[1] > 0) return ALLOY_OK;
    shape_str(t, s, sizeof s);
    return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected a 2-D shape [rows, cols], found %s", a->weights_path,
                         t->name, s);
}

static int check_vector(const struct alloy_adapter *a, const struct alloy_tensor *t, int64_t n, struct alloy_err *err)
{
    char s[96];
    if (!t || (t->ndim == 1 && t->shape[0] == n)) return ALLOY_OK;
    shape_str(t, s, sizeof s);
    return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected shape [%lld], found %s", a->weights_path, t->name,
                         (long long)n, s);
}

static int check_module(const struct alloy_adapter *a, struct alloy_lora_module *m, struct alloy_err *err)
{
    const char *ea = m->kind == ALLOY_LORA_EMBEDDING ? "lora_embedding_A" : "lora_A.weight";
    const char *eb = m->kind == ALLOY_LORA_EMBEDDING ? "lora_embedding_B" : "lora_B.weight";
    const struct alloy_tensor *any = m->a ? m->a : m->b ? m->b : m->magnitude ? m->magnitude : m->bias;
    if (!m->a || !m->b)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected " PREFIX "%s.%s with it, found none", a->weights_path,
                             any->name, m->name, m->a ? eb : ea);
    if ((strstr(m->a->name, ".lora_embedding_A") != NULL) != (strstr(m->b->name, ".lora_embedding_B") != NULL))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a %s to go with it, found %s", a->weights_path,
                             m->a->name, m->kind == ALLOY_LORA_EMBEDDING ? "lora_A.weight" : "lora_embedding_B",
                             m->b->name);
    int rc = check_2d(a, m->a, err);
    if (!rc) rc = check_2d(a, m->b, err);
    if (rc) return rc;
    uint32_t want = alloy_lora_rank_for(a, m->name);
    if (m->a->shape[0] != m->b->shape[1])
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected rank %lld (the columns of %s), found %lld rows",
                             a->weights_path, m->a->name, (long long)m->b->shape[1], m->b->name,
                             (long long)m->a->shape[0]);
    if ((uint64_t)m->a->shape[0] != want)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected rank %u (r / rank_pattern of adapter_config.json), "
                             "found %lld rows", a->weights_path, m->a->name, want, (long long)m->a->shape[0]);
    if (m->magnitude && !a->use_dora)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected use_dora: true in adapter_config.json for a DoRA "
                             "magnitude, found false", a->weights_path, m->magnitude->name);
    if (!m->magnitude && a->use_dora)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected " PREFIX "%s.lora_magnitude_vector (use_dora: "
                             "true), found none", a->weights_path, m->a->name, m->name);
    if (m->bias && !a->lora_bias)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected lora_bias: true in adapter_config.json, found "
                             "false", a->weights_path, m->bias->name);
    if (m->bias && m->kind == ALLOY_LORA_EMBEDDING)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected no bias on an embedding LoRA, found one",
                             a->weights_path, m->bias->name);
    if ((rc = check_vector(a, m->magnitude, m->b->shape[0], err)) || (rc = check_vector(a, m->bias, m->b->shape[0], err)))
        return rc;
    if (!alloy_lora_targeted(a, m->name))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a module that target_modules selects (PEFT would "
                             "ignore this tensor), found '%s' not selected", a->weights_path, m->a->name, m->name);
    m->rank = want;
    m->alpha = alloy_lora_alpha_for(a, m->name);
    m->scale = a->use_rslora ? m->alpha / sqrt((double)m->rank) : m->alpha / (double)m->rank;
    return ALLOY_OK;
}

static int cmp_module(const void *x, const void *y)
{
    return strcmp(((const struct alloy_lora_module *)x)->name, ((const struct alloy_lora_module *)y)->name);
}

static int cmp_full(const void *x, const void *y)
{
    return strcmp(((const struct alloy_lora_full *)x)->name, ((const struct alloy_lora_full *)y)->name);
}

static int group_tensors(struct alloy_adapter *a, struct alloy_err *err)
{
    struct group g = {.a = a, .err = err};
    size_t n = alloy_tensor_file_count(a->file);
    int rc = ALLOY_OK;
    for (size_t i = 0; i < n && !rc; i++) rc = add_key(&g, alloy_tensor_file_tensor(a->file, i));
    alloy_strmap_free(&g.index);
    for (size_t i = 0; i < a->nmodules && !rc; i++) rc = check_module(a, &a->modules[i], err);
    for (size_t i = 0; i < a->nfull && !rc; i++) { /* a base_layer copy needs its LoRA */
        const char *key = a->full[i].t->name;
        size_t kl = strlen(key), sl = strlen(".base_layer.weight");
        if (kl <= sl || strcmp(key + kl - sl, ".base_layer.weight") != 0) continue;
        int found = 0;
        for (size_t k = 0; k < a->nmodules && !found; k++)
            found = strlen(a->modules[k].name) + strlen(PREFIX) == kl - sl &&
                    strncmp(key + strlen(PREFIX), a->modules[k].name, kl - sl - strlen(PREFIX)) == 0;
        if (!found)
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected the LoRA tensors of its module with a "
                               "base_layer copy, found none", a->weights_path, key);
    }
    if (rc) return rc;
    if (a->nmodules) qsort(a->modules, a->nmodules, sizeof *a->modules, cmp_module);
    if (a->nfull) qsort(a->full, a->nfull, sizeof *a->full, cmp_full);
    if (!a->nmodules && !a->nfull)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: expected LoRA tensors, found none", a->weights_path);
    return ALLOY_OK;
}

/* ------------------------------------------------------------ opening */

int alloy_adapter_parse_config(const char *text, size_t len, const char *path, struct alloy_adapter **out,
                               struct alloy_err *err)
{
    struct alloy_adapter *a = alloy_xcalloc(1, sizeof *a);
    if (!a || !(a->config_path = alloy_xstrdup(path))) {
        free(a);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    int rc = alloy_lora_cfg_parse(text, len, path, a, err);
    if (rc) {
        alloy_adapter_close(a);
        return rc;
    }
    *out = a;
    return ALLOY_OK;
}

static int open_weights(struct alloy_adapter *a, const char *dir, struct alloy_err *err)
{
    int rc = alloy_folder_file(dir, "adapter_model.safetensors", &a->weights_path, err);
    if (rc) return rc;
    if (!alloy_is_file(a->weights_path)) {
        char *bin = NULL;
        rc = alloy_folder_file(dir, "adapter_model.bin", &bin, err);
        if (!rc && alloy_is_file(bin))
            rc = alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: expected adapter_model.safetensors, found only this "
                               "PyTorch pickle (alloy does not read .bin files; convert it to safetensors)", bin);
        else if (!rc)
            rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: expected the adapter's tensors, found no such file",
                               a->weights_path);
        free(bin);
        return rc;
    }
    rc = alloy_tensor_file_open(a->weights_path, &a->file, err);
    return rc ? rc : group_tensors(a, err);
}

int alloy_adapter_open(const char *ref, struct alloy_adapter **out, struct alloy_err *err)
{
    char *dir = NULL, *cpath = NULL, *text = NULL;
    size_t len = 0;
    struct alloy_adapter *a = NULL;
    int rc = alloy_resolve_ref(ref, &dir, err);
    if (!rc) rc = alloy_folder_file(dir, "adapter_config.json", &cpath, err);
    if (!rc && !alloy_is_file(cpath))
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: expected a PEFT adapter folder, found no adapter_config.json in it", ref);
    if (!rc) rc = alloy_read_file(cpath, (size_t)16 << 20, &text, &len, err);
    if (!rc) rc = alloy_adapter_parse_config(text, len, cpath, &a, err);
    free(text);
    free(cpath);
    if (!rc) {
        a->dir = dir;
        dir = NULL;
        rc = open_weights(a, a->dir, err);
    }
    free(dir);
    if (rc) {
        alloy_adapter_close(a);
        return rc;
    }
    *out = a;
    return ALLOY_OK;
}

void alloy_adapter_close(struct alloy_adapter *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->nmodules; i++) free(a->modules[i].name);
    for (size_t i = 0; i < a->nfull; i++) free(a->full[i].name);
    for (size_t i = 0; i < a->ntarget_modules; i++) free(a->target_modules[i]);
    free(a->modules);
    free(a->full);
    free(a->target_modules);
    free(a->target_regex);
    alloy_lora_cfg_free(a->cfg);
    if (a->file) alloy_tensor_file_close(a->file);
    free(a->base_model);
    free(a->dir);
    free(a->config_path);
    free(a->weights_path);
    free(a);
}

const struct alloy_lora_module *alloy_adapter_module(const struct alloy_adapter *a, const char *name)
{
    struct alloy_lora_module key = {.name = (char *)name};
    return a->nmodules ? bsearch(&key, a->modules, a->nmodules, sizeof key, cmp_module) : NULL;
}

const struct alloy_lora_full *alloy_adapter_full(const struct alloy_adapter *a, const char *name)
{
    struct alloy_lora_full key = {.name = (char *)name};
    return a->nfull ? bsearch(&key, a->full, a->nfull, sizeof key, cmp_full) : NULL;
}

int alloy_adapter_read_f32(const struct alloy_adapter *a, const struct alloy_tensor *t, float *dst,
                           struct alloy_err *err)
{
    (void)a;
    struct alloy_input in;
    alloy_input_stored(&in, 0, t, 1, t->numel, 0);
    return t->numel ? alloy_input_read(&in, 0, t->numel, dst, ALLOY_INPUT_F32, err) : ALLOY_OK;
}
