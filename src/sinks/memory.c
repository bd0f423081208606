/*
 * memory.c — the memory sink: the merged model held in RAM as a model.
 *
 * DESIGN
 *   begin lays the tensors out one after another (in plan order) in a single
 *   safetensors image — header from the formats writer, then the data —
 *   allocated zeroed once; writes convert float32 chunks straight into
 *   their final place in it, from any thread. commit builds the output's
 *   config.json text (the same as the folder sink writes) and turns the image
 *   into an ordinary struct alloy_model (formats.h: alloy_model_from_image),
 *   so everything that takes a model — alloy_model_find, evaluation, another
 *   merge — takes it too. Its folder is the one the tokenizer files come
 *   from (the tokenizer source, else the config donor). Until commit, the
 *   caller sees nothing; abort frees the image.
 *
 *   Memory: the image is the whole output (header + every tensor's bytes),
 *   as a library caller asking for an in-memory result expects.
 */
#include "core/internal.h"
#include "formats/formats.h"
#include "sinks/output.h"
#include "sinks/sink.h"

struct memory_sink {
    struct alloy_sink base;
    struct alloy_model **out;
    const char *label;   /* the model's ref */
    const struct alloy_plan *p;
    uint8_t *image;
    size_t len;
    uint64_t *offsets;   /* file offset of each tensor's data */
};

static int memory_begin(struct alloy_sink *s, const struct alloy_plan *p, struct alloy_err *err)
{
    struct memory_sink *m = (struct memory_sink *)s;
    m->p = p;
    if (p->vocab) /* its tokenizer files exist only as written by the folder sink */
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tokenizer merging (tokenizer_source, tokenizer:) builds new "
                             "tokenizer files; merge into a folder, not into memory", p->cfg->path);
    size_t n = p->ntensors, hlen = 0;
    struct alloy_tensor_desc *d = alloy_xcalloc(n ? n : 1, sizeof *d);
    m->offsets = alloy_xcalloc(n ? n : 1, sizeof *m->offsets);
    uint64_t off = 0;
    for (size_t i = 0; d && i < n; i++) {
        const struct alloy_plan_tensor *t = &p->tensors[i];
        d[i] = (struct alloy_tensor_desc){t->name, t->dtype, t->ndim, t->shape, off, t->nbytes};
        off += t->nbytes;
    }
    uint8_t *hdr = d && m->offsets ? alloy_st_header(d, n, &hlen) : NULL;
    free(d);
    if (!hdr || off > SIZE_MAX - hlen || !(m->image = alloy_xcalloc(1, hlen + (size_t)off))) {
        free(hdr);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory for the %llu bytes of the merged model",
                             (unsigned long long)(hlen + off));
    }
    memcpy(m->image, hdr, hlen);
    free(hdr);
    m->len = hlen + (size_t)off;
    for (size_t i = 0, o = hlen; i < n; o += p->tensors[i].nbytes, i++) m->offsets[i] = o;
    return ALLOY_OK;
}

static int memory_tensor_begin(struct alloy_sink *s, size_t i, struct alloy_err *err) { return ALLOY_OK; }

static int memory_write(struct alloy_sink *s, size_t i, uint64_t e0, uint64_t e1, float *src, uint64_t *nonfinite,
                        struct alloy_err *err)
{
    struct memory_sink *m = (struct memory_sink *)s;
    const struct alloy_plan_tensor *t = &m->p->tensors[i];
    size_t esize = alloy_dtype_traits(t->dtype)->block_bytes;
    *nonfinite = alloy_from_f32_count(t->dtype, src, m->image + m->offsets[i] + e0 * esize, (size_t)(e1 - e0));
    return ALLOY_OK;
}

static int memory_write_bytes(struct alloy_sink *s, size_t i, uint64_t off, const void *buf, size_t len,
                              struct alloy_err *err)
{
    struct memory_sink *m = (struct memory_sink *)s;
    memcpy(m->image + m->offsets[i] + off, buf, len);
    return ALLOY_OK;
}

static int memory_commit(struct alloy_sink *s, struct alloy_err *err)
{
    struct memory_sink *m = (struct memory_sink *)s;
    const struct alloy_plan *p = m->p;
    char *config = NULL;
    int rc = alloy_output_config_text(p, &config, err);
    if (rc) return rc;
    int from = p->tokenizer_donor >= 0 ? p->tokenizer_donor : p->donor;
    rc = alloy_model_from_image(m->label, alloy_model_dir(p->models[from]), m->image, m->len, config,
                                m->out, err);
    m->image = NULL; /* the model owns it now (or freed it) */
    return rc;
}

static void memory_abort(struct alloy_sink *s)
{
    struct memory_sink *m = (struct memory_sink *)s;
    free(m->image);
    m->image = NULL;
}

static void memory_free(struct alloy_sink *s)
{
    struct memory_sink *m = (struct memory_sink *)s;
    memory_abort(s);
    free(m->offsets);
    free(m);
}

static const struct alloy_sink_ops g_memory = {
    "memory", memory_begin, memory_tensor_begin, memory_write, memory_write_bytes, NULL, memory_commit,
    memory_abort, memory_free,
};

struct alloy_sink *alloy_sink_memory_new(struct alloy_model **out, const char *label, struct alloy_err *err)
{
    struct memory_sink *m = alloy_xcalloc(1, sizeof *m);
    if (!m) {
        alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        return NULL;
    }
    m->base.ops = &g_memory;
    m->out = out;
    m->label = label ? label : "<merged in memory>";
    return &m->base;
}
