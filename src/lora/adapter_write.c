/*
 * adapter_write.c — a PEFT LoRA adapter folder: adapter_model.safetensors,
 * adapter_config.json, README.md, published atomically.
 *
 * DESIGN
 *   The writer keeps every tensor it is given, already converted to its
 *   stored dtype (an adapter is small next to its model: r (in + out)
 *   values per module, plus the modules saved in full), and the module
 *   list the config is built from. Nothing touches the disk before
 *   alloy_adapter_writer_commit: the output path is checked by
 *   alloy_adapter_writer_new with the rule merge outputs follow
 *   (sinks/publish.c: never an input's folder, never a folder holding
 *   foreign files unless --overwrite), and commit writes the three files
 *   into a temporary sibling folder, fsyncs them, and renames it into place
 *   (alloy_publish_dir), so OUT appears complete or not at all.
 *
 *   Key names are PEFT's (docs/lora-extract.md): `base_model.model.<module>`
 *   + `.lora_A.weight` / `.lora_B.weight` for a Linear module,
 *   `.lora_embedding_A` / `.lora_embedding_B` (no `.weight`) for an
 *   Embedding, `.weight` for a module saved in full. The tensors are written
 *   in the order they were added; the config is a complete LoraConfig as
 *   PEFT saves it (indent 2, sorted keys): r and lora_alpha are the spec's,
 *   a module whose rank or alpha differs goes to rank_pattern / alpha_pattern
 *   under its full path, target_modules lists the modules' last name
 *   components (or their full paths, alloy_adapter_writer_exact_targets, when
 *   a last component would also name modules without a LoRA), and
 *   modules_to_save the last components of the modules saved in full.
 */
#include "lora/adapter_write.h"

#include "formats/formats.h"
#include "sinks/publish.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <unistd.h>

#define PREFIX "base_model.model."

struct wtensor {
    char *name;
    enum alloy_dtype dtype;
    int ndim;
    int64_t shape[ALLOY_MAX_DIMS];
    void *bytes;
    uint64_t nbytes;
};

struct wmodule {
    char *name;
    uint32_t rank;
    double alpha;
};

struct alloy_adapter_writer {
    char *out;
    struct alloy_adapter_spec spec;
    char *base_model;
    struct wtensor *t;
    size_t nt, capt;
    struct wmodule *mods; /* LoRA modules, in the order added */
    size_t nmods, capm;
    char **saved;         /* modules saved in full */
    size_t nsaved, caps;
    int exact_targets;
    char *tmp;            /* the temporary folder while commit runs */
};

static int nomem(struct alloy_err *err) { return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); }

/* Grows *arr (elements of size sz) to hold one more; -1 when out of memory. */
static int grow(void **arr, size_t *cap, size_t n, size_t sz)
{
    if (n < *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    void *p = alloy_xrealloc(*arr, nc * sz);
    if (!p) return -1;
    *arr = p;
    *cap = nc;
    return 0;
}

int alloy_adapter_writer_new(const char *out_dir, const struct alloy_adapter_spec *spec,
                             struct alloy_adapter_writer **out, struct alloy_err *err)
{
    *out = NULL;
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(spec->dtype);
    if (!tr || !tr->mergeable || tr->block != 1 || tr->bits < 16)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: adapter dtype: F32, BF16 or F16 expected, found %s", out_dir,
                             tr ? tr->name : "?");
    if (spec->r == 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: r: a rank >= 1 expected, found 0", out_dir);
    int rc = alloy_check_out_dir_models(spec->inputs, spec->ninputs, out_dir, spec->overwrite, err);
    if (rc) return rc;
    struct alloy_adapter_writer *w = alloy_xcalloc(1, sizeof *w);
    if (!w) return nomem(err);
    w->spec = *spec;
    w->out = alloy_xstrdup(out_dir);
    w->base_model = spec->base_model ? alloy_xstrdup(spec->base_model) : NULL;
    if (!w->out || (spec->base_model && !w->base_model)) {
        alloy_adapter_writer_free(w);
        return nomem(err);
    }
    w->spec.base_model = w->base_model;
    w->spec.inputs = NULL;
    w->spec.ninputs = 0;
    *out = w;
    return ALLOY_OK;
}

void alloy_adapter_writer_exact_targets(struct alloy_adapter_writer *w, int on) { w->exact_targets = on; }

/* Adds tensor `name` (shape [d0, d1] or [d0]) from float32 values, stored as dtype. */
static int add_tensor(struct alloy_adapter_writer *w, char *name, enum alloy_dtype dtype, int ndim,
                      const int64_t *shape, const float *data, struct alloy_err *err)
{
    uint64_t numel = 1, nbytes;
    for (int i = 0; i < ndim; i++) numel *= (uint64_t)shape[i];
    void *bytes = NULL;
    if (!name || alloy_dtype_nbytes(dtype, numel, &nbytes) != 0 || grow((void **)&w->t, &w->capt, w->nt, sizeof *w->t) ||
        !(bytes = alloy_xmalloc(nbytes ? nbytes : 1))) {
        free(name);
        return nomem(err);
    }
    for (uint64_t i = 0; i < numel; i++)
        if (!isfinite(data[i])) {
            int rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: finite values expected, found %s at element %llu",
                                   w->out, name, isnan(data[i]) ? "NaN" : "Inf", (unsigned long long)i);
            free(name);
            free(bytes);
            return rc;
        }
    alloy_from_f32(dtype, data, bytes, numel);
    struct wtensor *t = &w->t[w->nt++];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    t->bytes = bytes;
    t->nbytes = nbytes;
    return ALLOY_OK;
}

static int known_module(const struct alloy_adapter_writer *w, const char *module)
{
    for (size_t i = 0; i < w->nmods; i++)
        if (!strcmp(w->mods[i].name, module)) return 1;
    for (size_t i = 0; i < w->nsaved; i++)
        if (!strcmp(w->saved[i], module)) return 1;
    return 0;
}

int alloy_adapter_writer_module(struct alloy_adapter_writer *w, const char *module, enum alloy_lora_kind kind,
                                uint32_t rank, double alpha, const float *a, uint64_t in, const float *b,
                                uint64_t out, struct alloy_err *err)
{
    if (rank == 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: %s: a LoRA rank >= 1 expected, found 0 (PEFT refuses rank 0)",
                             w->out, module);
    if (known_module(w, module))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: %s: one entry per module expected, found a second", w->out,
                             module);
    if (grow((void **)&w->mods, &w->capm, w->nmods, sizeof *w->mods)) return nomem(err);
    int emb = kind == ALLOY_LORA_EMBEDDING;
    int64_t sa[2] = {rank, (int64_t)in}, sb[2] = {(int64_t)out, rank};
    int rc = add_tensor(w, alloy_xasprintf(PREFIX "%s.%s", module, emb ? "lora_embedding_A" : "lora_A.weight"),
                        w->spec.dtype, 2, sa, a, err);
    if (!rc)
        rc = add_tensor(w, alloy_xasprintf(PREFIX "%s.%s", module, emb ? "lora_embedding_B" : "lora_B.weight"),
                        w->spec.dtype, 2, sb, b, err);
    char *name = rc ? NULL : alloy_xstrdup(module);
    if (!rc && !name) rc = nomem(err);
    if (rc) return rc;
    w->mods[w->nmods++] = (struct wmodule){name, rank, alpha};
    return ALLOY_OK;
}

int alloy_adapter_writer_full(struct alloy_adapter_writer *w, const char *module, const float *data, int ndim,
                              const int64_t *shape, enum alloy_dtype dtype, struct alloy_err *err)
{
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(dtype);
    if (!tr || !tr->mergeable || tr->block != 1)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s.weight: a float dtype expected, found %s", w->out,
                             module, tr ? tr->name : "?");
    if (ndim < 1 || ndim > ALLOY_MAX_DIMS)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s.weight: 1 to %d dimensions expected, found %d", w->out,
                             module, ALLOY_MAX_DIMS, ndim);
    if (known_module(w, module))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: %s: one entry per module expected, found a second", w->out,
                             module);
    if (grow((void **)&w->saved, &w->caps, w->nsaved, sizeof *w->saved)) return nomem(err);
    int rc = add_tensor(w, alloy_xasprintf(PREFIX "%s.weight", module), dtype, ndim, shape, data, err);
    if (rc) return rc;
    if (!(w->saved[w->nsaved] = alloy_xstrdup(module))) return nomem(err);
    w->nsaved++;
    return ALLOY_OK;
}

static const char *last_component(const char *module)
{
    const char *dot = strrchr(module, '.');
    return dot ? dot + 1 : module;
}

/* Appends s to the JSON array arr unless it is there already; -1 when out of memory. */
static int add_unique(json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) if (!strcmp(json_string_value(v), s)) return 0;
    return json_array_append_new(arr, json_string(s));
}

/* An integral value as a JSON integer (16, not 16.0), any other as a real. */
static json_t *number(double v)
{
    return v == floor(v) && fabs(v) < 9e15 ? json_integer((json_int_t)v) : json_real(v);
}

static json_t *config_json(const struct alloy_adapter_writer *w)
{
    json_t *root = json_object(), *targets = json_array(), *rp = json_object(), *ap = json_object();
    json_t *mts = w->nsaved ? json_array() : json_null();
    int bad = !root || !targets || !rp || !ap || !mts;
    for (size_t i = 0; !bad && i < w->nmods; i++) {
        const struct wmodule *m = &w->mods[i];
        bad |= add_unique(targets, w->exact_targets ? m->name : last_component(m->name)) != 0;
        if (m->rank != w->spec.r) bad |= json_object_set_new(rp, m->name, json_integer(m->rank)) != 0;
        if (m->alpha != w->spec.lora_alpha) bad |= json_object_set_new(ap, m->name, number(m->alpha)) != 0;
    }
    for (size_t i = 0; !bad && i < w->nsaved; i++) bad |= add_unique(mts, last_component(w->saved[i])) != 0;
    bad |= json_object_set_new(root, "alpha_pattern", ap) | json_object_set_new(root, "rank_pattern", rp) |
           json_object_set_new(root, "target_modules", targets) | json_object_set_new(root, "modules_to_save", mts);
    bad |= json_object_set_new(root, "base_model_name_or_path",
                               w->spec.base_model ? json_string(w->spec.base_model) : json_null());
    bad |= json_object_set_new(root, "peft_type", json_string("LORA")) |
           json_object_set_new(root, "task_type", json_string("CAUSAL_LM")) |
           json_object_set_new(root, "r", json_integer(w->spec.r)) |
           json_object_set_new(root, "lora_alpha", number(w->spec.lora_alpha)) |
           json_object_set_new(root, "use_rslora", json_boolean(w->spec.use_rslora)) |
           json_object_set_new(root, "use_dora", json_false()) | json_object_set_new(root, "lora_bias", json_false()) |
           json_object_set_new(root, "bias", json_string("none")) |
           json_object_set_new(root, "fan_in_fan_out", json_false()) |
           json_object_set_new(root, "lora_dropout", json_real(0.0)) |
           json_object_set_new(root, "init_lora_weights", json_true()) |
           json_object_set_new(root, "inference_mode", json_true()) |
           json_object_set_new(root, "layers_to_transform", json_null()) |
           json_object_set_new(root, "layers_pattern", json_null()) |
           json_object_set_new(root, "exclude_modules", json_null()) | json_object_set_new(root, "revision", json_null());
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return root;
}

/* adapter_model.safetensors: the header, then every tensor's bytes in order; fsynced. */
static int write_weights(const struct alloy_adapter_writer *w, const char *path, struct alloy_err *err)
{
    struct alloy_tensor_desc *d = alloy_xcalloc(w->nt ? w->nt : 1, sizeof *d);
    if (!d) return nomem(err);
    uint64_t off = 0;
    for (size_t i = 0; i < w->nt; i++) {
        d[i] = (struct alloy_tensor_desc){w->t[i].name, w->t[i].dtype, w->t[i].ndim, w->t[i].shape, off, w->t[i].nbytes};
        off += w->t[i].nbytes;
    }
    size_t hlen;
    uint8_t *hdr = alloy_st_header(d, w->nt, &hlen);
    free(d);
    if (!hdr) return nomem(err);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = fd < 0 ? alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot create: %s", path, strerror(errno))
                    : alloy_pwrite_all(fd, hdr, hlen, 0, path, err);
    free(hdr);
    off = hlen;
    for (size_t i = 0; !rc && i < w->nt; i++) {
        rc = alloy_pwrite_all(fd, w->t[i].bytes, w->t[i].nbytes, off, path, err);
        off += w->t[i].nbytes;
    }
    if (!rc && fsync(fd) != 0) rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    if (fd >= 0 && close(fd) != 0 && !rc) rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    return rc;
}

static int write_text(const char *dir, const char *name, const char *text, struct alloy_err *err)
{
    char *path = alloy_xasprintf("%s/%s", dir, name);
    if (!path) return nomem(err);
    int rc = alloy_write_file(path, text, strlen(text), err);
    free(path);
    return rc;
}

int alloy_adapter_writer_commit(struct alloy_adapter_writer *w, const char *card, struct alloy_err *err)
{
    if (w->nmods == 0 && w->nsaved == 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: at least one module expected, found none", w->out);
    json_t *cfg = config_json(w);
    char *text = cfg ? json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(cfg);
    if (!text) return nomem(err);
    int rc = alloy_make_tmp_dir(w->out, &w->tmp, err);
    char *wpath = rc ? NULL : alloy_xasprintf("%s/adapter_model.safetensors", w->tmp);
    if (!rc && !wpath) rc = nomem(err);
    if (!rc) rc = write_weights(w, wpath, err);
    if (!rc) rc = write_text(w->tmp, "adapter_config.json", text, err);
    if (!rc && card) rc = write_text(w->tmp, "README.md", card, err);
    if (!rc) rc = alloy_seal_tmp_dir(w->tmp, err);
    if (!rc) rc = alloy_publish_dir(w->tmp, w->out, err);
    if (!rc) {
        free(w->tmp);
        w->tmp = NULL;
    }
    free(wpath);
    free(text);
    return rc;
}

void alloy_adapter_writer_free(struct alloy_adapter_writer *w)
{
    if (!w) return;
    if (w->tmp) alloy_remove_tree(w->tmp);
    free(w->tmp);
    for (size_t i = 0; i < w->nt; i++) {
        free(w->t[i].name);
        free(w->t[i].bytes);
    }
    for (size_t i = 0; i < w->nmods; i++) free(w->mods[i].name);
    for (size_t i = 0; i < w->nsaved; i++) free(w->saved[i]);
    free(w->t);
    free(w->mods);
    free(w->saved);
    free(w->out);
    free(w->base_model);
    free(w);
}
