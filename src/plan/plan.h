/*
 * plan.h — from a config and the opened models to the list of output tensors.
 *
 * DESIGN
 *   The plan is everything the engine needs and nothing it has to decide:
 *   for every output tensor its name, shape, output dtype, its inputs (each a
 *   source: a stored tensor, a top-left window of one, a tied embedding), the index
 *   of the base among them, every method parameter already resolved for this
 *   tensor (mergekit's precedence, filters and gradients), and its place in
 *   the output shards. Planning reads only headers, so --dry-run is instant
 *   and every config or shape error is found before a byte is written.
 *
 *   Tensors are matched by name; layers are found from the first numeric
 *   path component of a name (`model.layers.12.mlp...`, `h.3.attn...`,
 *   `blocks.0...`), so no per-architecture template is needed.
 */
#ifndef ALLOY_PLAN_H
#define ALLOY_PLAN_H

#include "alloy.h"
#include "config/config.h"
#include "methods/method.h"
#include "sources/source.h"

/* Most inputs (sources, base included) one output tensor may have: a bound for the arrays sized by it. */
#define ALLOY_MAX_INPUTS 1024

struct alloy_plan_tensor {
    char *name;                      /* output name */
    enum alloy_dtype dtype;          /* output dtype */
    int ndim;
    int64_t shape[ALLOY_MAX_DIMS];
    uint64_t numel, nbytes, rows, cols;
    int copy;                        /* 1: copy inputs[0]'s bytes (integer tensors) */
    int n;
    struct alloy_input *inputs;     /* [n]: where each input's values come from (sources/source.h) */
    int base;                        /* index of the base among inputs, -1 if none */
    double *gp;                      /* [method->nparams] */
    double *tp;                      /* [n * method->nparams] */
    double t;                        /* gradient position used */
    int is_embed;
    int layer;                       /* output layer index, -1 for other tensors */
    int shard;                       /* output shard index */
    uint64_t offset;                 /* byte offset in the shard's data buffer */
    struct alloy_permuted *perm;     /* the re-indexed rows its inputs read (tokenizer merge), or NULL */
};

struct alloy_plan_shard {
    char *file;                      /* final name: model.safetensors or model-0000i-of-0000N.safetensors */
    size_t first, count;             /* tensors [first, first + count) */
    uint64_t data_bytes;
};

struct alloy_plan {
    const struct alloy_config *cfg;
    const struct alloy_method *method;
    size_t nmodels;
    struct alloy_model **models;     /* opened once each, in order of first reference */
    int base;                        /* index into models of the global base_model, -1 if none */
    int donor;                       /* model whose config.json is the output's */
    int tokenizer_donor;             /* model whose tokenizer files are copied, -1: none */
    long long out_layers;            /* layer count after a slices merge, -1 for models: merges */
    size_t ntensors;
    struct alloy_plan_tensor *tensors;
    size_t nshards;
    struct alloy_plan_shard *shards;
    uint64_t total_bytes;
    size_t nwarnings;
    struct alloy_vocab *vocab;       /* the merged vocabulary when a tokenizer merge is configured, else NULL */
};

struct alloy_vocab;
struct alloy_permuted;
typedef void (*alloy_plan_warn_fn)(void *user, const char *msg);

int  alloy_plan_build(const struct alloy_config *cfg, const struct alloy_merge_options *o, struct alloy_plan **out,
                      struct alloy_err *err);
/* Models a multi-stage merge already holds (its intermediates, engine/multi.c), found by the name a
 * config's references use for them before any folder or cache is looked at; the plan shares each one it
 * uses (alloy_model_share), so the caller keeps its own hold. */
struct alloy_given_models {
    size_t n;
    const char *const *names;
    struct alloy_model *const *models;
};
int  alloy_plan_build_given(const struct alloy_config *cfg, const struct alloy_merge_options *o,
                            const struct alloy_given_models *given, struct alloy_plan **out, struct alloy_err *err);
void alloy_plan_free(struct alloy_plan *p);
/* Human-readable plan (--dry-run). */
void alloy_plan_print(const struct alloy_plan *p, FILE *f);
/* A note on tensor i for the printed plan (the output's view of it: what a GGUF file stores), written into
 * buf[n]; NULL or "" for none. */
typedef const char *alloy_plan_note_fn(void *ctx, size_t i, char *buf, size_t n);
/* alloy_plan_print with note(ctx, i, ...) appended to each tensor's line. */
void alloy_plan_print_noted(const struct alloy_plan *p, FILE *f, alloy_plan_note_fn *note, void *ctx);
/* The job a method sees for tensor i. `shape` storage comes from the tensor. */
void alloy_plan_job(const struct alloy_plan *p, size_t i, uint64_t seed, const char **model_names,
                    struct alloy_merge_job *job);

/* shards.c: places every tensor in an output shard of at most shard_size bytes (0: 5e9, mergekit's default). */
int  alloy_plan_assign_shards(struct alloy_plan *p, uint64_t shard_size, struct alloy_err *err);
/* The safetensors header of shard si (its tensors' names, dtypes, shapes and offsets), malloc'd, length in
 * *len; NULL when out of memory. */
uint8_t *alloy_plan_shard_header(const struct alloy_plan *p, size_t si, size_t *len);
/* embed.c: makes embedding-like tensor t (its stored inputs found) read every input re-indexed to p->vocab:
 * rows per mergekit's PermutedEmbeddings (own row, else the token's default), padded rows past it. */
int  alloy_plan_embed(const struct alloy_plan *p, struct alloy_plan_tensor *t, alloy_plan_warn_fn warn, void *user,
                      struct alloy_err *err);

/* Name analysis (exposed for tests). Returns the layer index and sets
 * *prefix_len (bytes before ".N.") and *suffix (text after ".N."), or -1. */
long long alloy_name_layer(const char *name, size_t *prefix_len, const char **suffix);
int       alloy_name_is_embed(const char *name);
int       alloy_name_is_pre(const char *name); /* embeddings come before the layers */
/* An embedding whose rows are the vocabulary (token embeddings, heads; not position or token-type
 * embeddings): what a tokenizer merge re-indexes. */
int       alloy_name_is_vocab_rows(const char *name);

#endif
