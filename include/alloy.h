/*
 * alloy.h — the public interface of liballoy, a model-merging library.
 *
 * DESIGN
 *   alloy reads Hugging Face model folders (safetensors, possibly sharded),
 *   merges them tensor by tensor as a mergekit YAML config describes, and
 *   writes a new model folder. It streams: inputs are memory-mapped read-only,
 *   every tensor is processed in row chunks converted to float32, and output
 *   bytes go straight to their final place in the output shard, so memory is
 *   bounded by a few chunks per thread, never by the model or tensor size.
 *
 * ERRORS
 *   Every fallible function returns an `int` status (ALLOY_OK == 0) and fills
 *   a caller-provided `struct alloy_err` with one line of the form
 *   "<file>: <tensor or key>: <what was expected, what was found>".
 *   The library never prints and never exits; warnings go through the log
 *   callback in the options (NULL: dropped).
 *
 * OWNERSHIP
 *   `*_open`/`*_new`/`*_load` return owned objects freed with the matching
 *   `*_close`/`*_free`; `*_free(NULL)` is a no-op. Getters return borrowed
 *   pointers valid until the owner is closed. Objects are not thread-safe
 *   unless stated; read-only getters on an opened file may be called from
 *   several threads at once.
 */
#ifndef ALLOY_H
#define ALLOY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ALLOY_VERSION "0.1.0"

/* ---------------------------------------------------------------- status */

enum alloy_status {
    ALLOY_OK = 0,
    ALLOY_ERR_IO,          /* open/read/write/fsync/rename failed */
    ALLOY_ERR_FORMAT,      /* a file is not what it claims to be */
    ALLOY_ERR_CONFIG,      /* the merge config is invalid */
    ALLOY_ERR_SHAPE,       /* tensors disagree in name, shape or count */
    ALLOY_ERR_UNSUPPORTED, /* valid input alloy cannot handle */
    ALLOY_ERR_NOMEM,       /* allocation failed */
    ALLOY_ERR_INTERRUPTED, /* a signal asked the merge to stop */
};

struct alloy_err {
    enum alloy_status status;
    char msg[1024];
};

/* Formats msg into err (err may be NULL) and returns status. */
int alloy_err_set(struct alloy_err *err, enum alloy_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *alloy_status_str(enum alloy_status status);

/* Log callback for warnings and notes (level 0 = warning, 1 = info). */
typedef void (*alloy_log_fn)(void *user, int level, const char *msg);

/* ---------------------------------------------------------------- dtypes */

enum alloy_dtype {
    ALLOY_DTYPE_F32 = 0,
    ALLOY_DTYPE_F16,
    ALLOY_DTYPE_BF16,
    ALLOY_DTYPE_F64,
    ALLOY_DTYPE_BOOL,
    ALLOY_DTYPE_U8,
    ALLOY_DTYPE_I8,
    ALLOY_DTYPE_I16,
    ALLOY_DTYPE_U16,
    ALLOY_DTYPE_I32,
    ALLOY_DTYPE_U32,
    ALLOY_DTYPE_I64,
    ALLOY_DTYPE_U64,
    ALLOY_DTYPE_F8_E4M3,
    ALLOY_DTYPE_F8_E5M2,
    ALLOY_DTYPE_F8_E4M3FNUZ,
    ALLOY_DTYPE_F8_E5M2FNUZ,
    ALLOY_DTYPE_F8_E8M0,
    ALLOY_DTYPE_F6_E2M3,
    ALLOY_DTYPE_F6_E3M2,
    ALLOY_DTYPE_F4,
    ALLOY_DTYPE_C64,
    /* ggml's block-quantized types (GGUF files): read as float32; from_f32 is ggml's reference quantizer */
    ALLOY_DTYPE_Q8_0,
    ALLOY_DTYPE_Q4_0,
    ALLOY_DTYPE_Q4_1,
    ALLOY_DTYPE_Q5_0,
    ALLOY_DTYPE_Q5_1,
    ALLOY_DTYPE_Q2_K,
    ALLOY_DTYPE_Q3_K,
    ALLOY_DTYPE_Q4_K,
    ALLOY_DTYPE_Q5_K,
    ALLOY_DTYPE_Q6_K,
    ALLOY_DTYPE_IQ4_NL, /* 32-element blocks on a non-linear 16-level table: llama-quantize's Q2_K/Q3_K fallback */
    ALLOY_DTYPE_COUNT
};
#define ALLOY_DTYPE_FIRST_QUANT ALLOY_DTYPE_Q8_0

/* One row per dtype, in the style of ggml's type_traits: values are stored in
 * blocks of `block` elements taking `block_bytes` bytes each (1 element for
 * plain types; 2 per byte for F4, 4 per 3 bytes for F6), so a quantized block
 * type is one more row. to_f32 / from_f32 are the type's reference row
 * conversions (n a multiple of `block`); faster versions for the CPU are
 * chosen by alloy_to_f32 / alloy_from_f32. */
struct alloy_dtype_traits {
    const char *name;     /* safetensors spelling: "BF16"; ggml's, upper-cased, for block types: "Q4_K" */
    const char *torch;    /* torch spelling: "bfloat16" (NULL if none) */
    unsigned bits;        /* bits per element (block_bytes * 8 / block, rounded down: 8 for Q8_0's 8.5;
                             sizes of block types come from alloy_dtype_nbytes) */
    int mergeable;        /* 1: alloy reads it as float32 and merges it (to_f32 is set); from_f32 is set
                             too: for the quantized types ggml's reference quantizer (src/quant) */
    unsigned block;       /* elements per block */
    unsigned block_bytes; /* bytes per block */
    void   (*to_f32)(const void *src, float *dst, size_t n);
    size_t (*from_f32)(const float *src, void *dst, size_t n); /* returns how many values were NaN or Inf */
};

const struct alloy_dtype_traits *alloy_dtype_traits(enum alloy_dtype dtype);
/* Bytes of n elements of dtype into *out; -1 when n is not a whole number of blocks or the size
 * overflows 64 bits. */
int alloy_dtype_nbytes(enum alloy_dtype dtype, uint64_t n, uint64_t *out);
/* Parses "BF16" (safetensors; the quantized types are GGUF-only and never match) or, with torch_names,
 * "bfloat16"/"torch.bfloat16". */
int alloy_dtype_parse(const char *s, int torch_names, enum alloy_dtype *out);

/* Row conversions for mergeable dtypes. float32 -> narrower rounds to nearest
 * even; NaN stays NaN (quiet); overflow gives Inf as IEEE rounding does.
 * The dispatch picks AVX2/F16C versions when the CPU has them; results are
 * bit-identical to the scalar reference (tests/test_convert.c pins this). */
void alloy_to_f32(enum alloy_dtype src_type, const void *src, float *dst, size_t n);
void alloy_from_f32(enum alloy_dtype dst_type, const float *src, void *dst, size_t n);

uint16_t alloy_f32_to_bf16(float f);
float    alloy_bf16_to_f32(uint16_t h);
uint16_t alloy_f32_to_f16(float f);
float    alloy_f16_to_f32(uint16_t h);

/* ---------------------------------------------------------------- tensors */

#define ALLOY_MAX_DIMS 8

/* A tensor inside a mapped file. `data` is not necessarily aligned. */
struct alloy_tensor {
    const char     *name;
    enum alloy_dtype dtype;
    int             ndim;
    int64_t         shape[ALLOY_MAX_DIMS];
    uint64_t        numel;
    const uint8_t  *data;
    uint64_t        nbytes;
    struct alloy_tensor_file *file; /* the file it lives in */
};

/* ---------------------------------------------------------------- tensor files */

/*
 * A tensor file is any file of named tensors alloy reads — safetensors or
 * GGUF (tensors under Hugging Face names and shapes, see alloy_model_open).
 * Every format implements the same operations, so models and
 * merges work on any of them. alloy_tensor_file_open recognises the format
 * from the file's content.
 */
struct alloy_tensor_file;

int  alloy_tensor_file_open(const char *path, struct alloy_tensor_file **out, struct alloy_err *err);
void alloy_tensor_file_close(struct alloy_tensor_file *f);
const char                *alloy_tensor_file_path(const struct alloy_tensor_file *f);
const char                *alloy_tensor_file_format(const struct alloy_tensor_file *f); /* "safetensors", "gguf" */
size_t                     alloy_tensor_file_count(const struct alloy_tensor_file *f);
const struct alloy_tensor *alloy_tensor_file_tensor(const struct alloy_tensor_file *f, size_t i);
const struct alloy_tensor *alloy_tensor_file_find(const struct alloy_tensor_file *f, const char *name);
/* Copies bytes [off, off + len) of t's stored bytes into dst (pread for a
 * file, memcpy for an in-memory image): streaming readers use it instead of
 * faulting a mapping. */
int  alloy_tensor_pread(const struct alloy_tensor *t, uint64_t off, void *dst, size_t len, struct alloy_err *err);
/* Drops the pages of t's bytes (or of bytes [off, off + len)) from this
 * process; they stay in the page cache and a later access faults them back. */
void alloy_tensor_release(const struct alloy_tensor *t);
void alloy_tensor_release_range(const struct alloy_tensor *t, uint64_t off, uint64_t len);

/* ---------------------------------------------------------------- safetensors */

/*
 * A safetensors file: u64 LE header length N (<= 100,000,000), N bytes of
 * UTF-8 JSON {"name": {"dtype","shape","data_offsets":[b,e]}, ...,
 * "__metadata__": {str: str}}, then the data buffer. Validation follows the
 * reference Rust reader (see docs/formats.md): offsets sorted are contiguous
 * from 0, byte counts match dtype x shape (overflow-checked), the buffer ends
 * exactly at end of file; alloy additionally rejects duplicate names.
 */
#define ALLOY_ST_MAX_HEADER 100000000ull

struct alloy_st_file;

int  alloy_st_open(const char *path, struct alloy_st_file **out, struct alloy_err *err);
/* Parses an in-memory image (not copied; must outlive the handle). `label` names it in errors. */
int  alloy_st_open_memory(const uint8_t *buf, size_t len, const char *label,
                          struct alloy_st_file **out, struct alloy_err *err);
void alloy_st_close(struct alloy_st_file *f);

const char                *alloy_st_path(const struct alloy_st_file *f);
size_t                     alloy_st_count(const struct alloy_st_file *f);
const struct alloy_tensor *alloy_st_tensor(const struct alloy_st_file *f, size_t i); /* header order */
const struct alloy_tensor *alloy_st_find(const struct alloy_st_file *f, const char *name);
/* __metadata__ value for key, or NULL. */
const char                *alloy_st_metadata(const struct alloy_st_file *f, const char *key);
/* The file as a generic tensor file (alloy_tensor_file_*), owned by f. */
struct alloy_tensor_file  *alloy_st_file_base(struct alloy_st_file *f);

/* ---------------------------------------------------------------- models */

/*
 * A model folder: config.json plus model.safetensors, or shards listed by
 * model.safetensors.index.json. A reference that is not a directory
 * ("org/name" or "org/name@rev") is looked up in the local Hugging Face cache:
 * $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub.
 *
 * A reference "MODEL+ADAPTER" (mergekit's syntax; each part a folder or a cache
 * id) opens MODEL with a PEFT LoRA adapter folder applied (docs/lora.md): the
 * adapter is checked against the model when opened (one error line naming the
 * adapter file and key), its full copies (modules_to_save) replace the model's
 * tensors, and every reader of the model that goes through the merge engine or
 * the evaluator gets W + s·B·A for the adapted weights. alloy_model_dir() is
 * MODEL's folder. Such references work anywhere a model reference does: merge
 * configs (alloy_merge; a passthrough of MODEL+ADAPTER is `alloy lora apply`)
 * and evaluation (alloy_evaluator_new). alloy_model_tensor()/alloy_model_find()
 * describe the stored tensors (the base weights, not the applied values).
 *
 * A GGUF file (or the first shard of a split one, <prefix>-00001-of-0000N.gguf)
 * is a model as well: architectures llama (incl. Mistral), qwen2 and qwen3;
 * its tensors are presented with Hugging Face names and shapes, dequantized
 * to float32 on reading, llama's Q/K rows un-permuted; alloy_model_dir() is
 * the file's path.
 */
struct alloy_model;

int  alloy_model_open(const char *ref, struct alloy_model **out, struct alloy_err *err);
void alloy_model_close(struct alloy_model *m);

const char                *alloy_model_ref(const struct alloy_model *m);  /* as given */
const char                *alloy_model_dir(const struct alloy_model *m);  /* resolved folder */
size_t                     alloy_model_count(const struct alloy_model *m);
const struct alloy_tensor *alloy_model_tensor(const struct alloy_model *m, size_t i); /* file order */
const struct alloy_tensor *alloy_model_find(const struct alloy_model *m, const char *name);
/* config.json as text (NUL-terminated), or NULL when the folder has none; for a GGUF model, rebuilt
 * from its metadata. */
const char                *alloy_model_config_text(const struct alloy_model *m);
/* The trust rule for files of a model folder: *path = "<dir>/<name>" (malloc'd; free it), and ALLOY_OK
 * when that file is absent or resolves (realpath) inside the model root: dir itself, or for a Hugging
 * Face snapshot (".../snapshots/<rev>") the repository folder whose blobs/ it links into. A file that
 * resolves anywhere else (a link to ~/.ssh/id_ed25519) is refused with an error naming it. */
int alloy_folder_file(const char *dir, const char *name, char **path, struct alloy_err *err);

/* ---------------------------------------------------------------- threads */

struct alloy_pool;

struct alloy_pool *alloy_pool_new(int nthreads);  /* nthreads <= 0: all cores */
void               alloy_pool_free(struct alloy_pool *p);
int                alloy_pool_size(const struct alloy_pool *p);
/* Runs fn(ctx, item, ith) for item in [0, n), items handed out by an atomic
 * counter; returns when all are done. fn runs on the caller too (ith 0). */
void alloy_pool_for(struct alloy_pool *p, size_t n,
                    void (*fn)(void *ctx, size_t item, int ith), void *ctx);
int  alloy_cpu_count(void);
/* A grow-only buffer of at least `bytes` owned by thread ith of the pool,
 * kept across calls and freed with the pool (NULL on allocation failure).
 * Call it from the thread that calls alloy_pool_for, not from workers. */
void *alloy_pool_scratch(struct alloy_pool *p, int ith, size_t bytes);

/* ---------------------------------------------------------------- configs */

/*
 * A merge config: mergekit's YAML schema (docs/config.md). Parsed once, it can
 * run any number of merges. alloy_config_parse reads YAML text (len bytes,
 * need not be NUL-terminated); `path` names it in messages
 * ("<path>:<line>:<col>: <key>: <what was expected>").
 */
struct alloy_config;

int  alloy_config_parse(const char *text, size_t len, const char *path, struct alloy_config **out,
                        struct alloy_err *err);
int  alloy_config_load(const char *path, struct alloy_config **out, struct alloy_err *err);
void alloy_config_free(struct alloy_config *c);

/*
 * A config given as structs: the same object alloy_config_parse fills, built
 * call by call and checked as the YAML reader checks it (an unknown method,
 * a malformed model reference or dtype is an error naming it). It covers
 * `models:` configs (no slices); every setter replaces an earlier value.
 * The config keeps an equivalent YAML text, written as mergekit_config.yml.
 *
 *   struct alloy_config *c;
 *   alloy_config_new("linear", &c, &err);
 *   alloy_config_add_model(c, "org/code", &i, &err);
 *   alloy_config_set_param(c, i, "weight", 0.5, &err);   (model -1: top-level parameters)
 *   alloy_config_set_dtype(c, "bfloat16", &err);
 */
int alloy_config_new(const char *merge_method, struct alloy_config **out, struct alloy_err *err);
int alloy_config_set_base(struct alloy_config *c, const char *model_ref, struct alloy_err *err);
/* Appends a model; *index (may be NULL) receives its position, 0, 1, ... */
int alloy_config_add_model(struct alloy_config *c, const char *model_ref, int *index, struct alloy_err *err);
int alloy_config_set_param(struct alloy_config *c, int model, const char *name, double value, struct alloy_err *err);
/* A gradient: n >= 1 values interpolated over the layers (docs/config.md). */
int alloy_config_set_gradient(struct alloy_config *c, int model, const char *name, const double *values, size_t n,
                              struct alloy_err *err);
/* "bfloat16", "float16" or "float32", optionally "torch."-prefixed. */
int alloy_config_set_dtype(struct alloy_config *c, const char *dtype, struct alloy_err *err);
int alloy_config_set_out_dtype(struct alloy_config *c, const char *dtype, struct alloy_err *err);
/* The config as YAML (borrowed; for a parsed config, the text it was parsed from). */
const char *alloy_config_text(const struct alloy_config *c);

/* ---------------------------------------------------------------- merge */

struct alloy_progress {
    size_t   tensors_done, tensors_total;
    uint64_t bytes_done, bytes_total; /* output bytes */
};
typedef void (*alloy_progress_fn)(void *user, const struct alloy_progress *p);

struct alloy_merge_options {
    /* The config: the first set of config, config_text, config_path is used. */
    const struct alloy_config *config; /* parsed or built (alloy_config_*) */
    const char *config_text;   /* mergekit YAML text (NUL-terminated); config_path, if set, labels messages */
    const char *config_path;   /* mergekit YAML file */
    /* The output: a model folder, or (out_model non-NULL) a model held in memory. */
    const char *out_dir;       /* output model folder */
    struct alloy_model **out_model; /* receives the merged model, owned by the caller (alloy_model_close);
                                       its alloy_model_dir() is the folder its tokenizer files come from */
    int         threads;       /* <= 0: all cores */
    uint64_t    shard_size;    /* max bytes per output shard; 0: default 5e9 */
    int         dry_run;       /* print the plan to plan_out, write nothing */
    FILE       *plan_out;
    int         copy_tokenizer;   /* default 1 */
    int         write_model_card; /* default 1 */
    int         allow_crimes;
    int         has_seed;
    uint64_t    seed;
    alloy_log_fn      log;
    void             *log_user;
    alloy_progress_fn progress;
    void             *progress_user;
    volatile int     *interrupt;   /* when non-NULL and set, the merge stops cleanly */
    int         overwrite;     /* replace an existing out_dir even when it holds files a merge does not write */
    const char *lora_merge_dtype; /* `model+adapter` references: round W and W + s·B·A to this dtype
                                     ("bfloat16", "float16"; mergekit's --lora-merge-dtype); NULL: keep
                                     the applied values in float32 until the output */
    /* Multi-stage merges: config text or file of several YAML documents (mergekit-multi, docs/config.md).
     * Named documents are intermediates a later document uses as `model: NAME`; the one unnamed document
     * is the final merge into out_dir / out_model. */
    const char *intermediate_dir; /* each intermediate written to <dir>/<name> (created if missing); NULL: held
                                     in memory, freed after its last user (set, it also makes a one-document
                                     config a multi-stage one, as mergekit-multi does) */
    int         lazy;          /* default 1: keep a finished <dir>/<name> whose mergekit_config.yml is the
                                  document's text, unless something it uses was merged again in this run */
    uint64_t    memory_budget; /* most tensor bytes of intermediates held in memory at once; 0: half the
                                  physical memory. An intermediate that does not fit is an error */
    /* GGUF output: out_dir is then the file written. */
    const char *out_format;    /* "folder" or "gguf"; NULL: "gguf" when out_dir ends in ".gguf" */
    const char *outtype;       /* GGUF tensor type of the weights: "f32", "f16", "bf16", or a llama-quantize
                                  mixture ("q8_0", "q4_k_m", ...); NULL: the merge's output dtype (norms and
                                  1-D tensors are always F32) */
    const char *imatrix;       /* quantized GGUF output: an importance matrix file (llama-imatrix's format) */
};

/* The merge methods, in the order of docs/methods.md (`alloy merge --help` lists them). */
#define ALLOY_METHOD_MAX_PARAMS 16
struct alloy_method_param_info {
    const char *name;
    int         per_model;  /* 1: set per model (models[i].parameters), 0: top-level parameters only */
    double      def;        /* default value; NaN: none */
};
struct alloy_method_info {
    const char *name;       /* merge_method: spelling */
    const char *summary;    /* one line */
    int         nparams;
    struct alloy_method_param_info params[ALLOY_METHOD_MAX_PARAMS];
};
/* Describes method i (0, 1, ...); returns 0, or -1 past the last method. */
int alloy_method_info(size_t i, struct alloy_method_info *out);

void alloy_merge_options_init(struct alloy_merge_options *o);
int  alloy_merge(const struct alloy_merge_options *o, struct alloy_err *err);

/* ---------------------------------------------------------------- LoRA adapters: merge */

/*
 * `alloy lora merge`: PEFT LoRA adapters combined into one adapter folder
 * with one of PEFT's add_weighted_adapter combination types (cat, linear,
 * ties, dare_linear, dare_ties, magnitude_prune, svd, ties_svd,
 * dare_linear_svd, dare_ties_svd, magnitude_prune_svd), described by a YAML
 * config (docs/lora-merge.md). The SVD types re-factor Σ w_i s_i B_i A_i.
 */
struct alloy_lora_merge_options {
    const char *config_text;   /* the YAML text (NUL-terminated); config_path, if set, labels messages */
    const char *config_path;   /* the YAML file, read when config_text is NULL */
    const char *out_dir;       /* the adapter folder written (complete or not at all) */
    int         threads;       /* modules combined at once; <= 0: all cores */
    uint64_t    seed;          /* DARE types: --random-seed */
    int         overwrite;     /* replace an existing out_dir even when it holds other files */
    volatile int *interrupt;   /* when non-NULL and set, the merge stops cleanly (ALLOY_ERR_INTERRUPTED) */
};

void alloy_lora_merge_options_init(struct alloy_lora_merge_options *o);
int  alloy_lora_merge(const struct alloy_lora_merge_options *o, struct alloy_err *err);

/* ---------------------------------------------------------------- evaluation */

/*
 * Perplexity of Llama-family causal language models (Llama, Mistral, Qwen2)
 * over any struct alloy_model, so weights merged in memory are evaluated
 * without being written: config.json comes from alloy_model_config_text(),
 * the tensors from alloy_model_find(), tokenizer.json from the folder
 * alloy_model_dir() names. The protocol (windows of ctx tokens, each scored
 * after a BOS token) is docs/eval.md's; results do not depend on threads.
 */
struct alloy_eval_info {
    char     model_type[16];   /* "llama", "mistral", "qwen2" */
    int      vocab_size;
    int      max_positions;    /* config.json max_position_embeddings */
    int      default_ctx;      /* min(max_positions / 2, 512), at least 2 */
    int      bos_token_id;     /* -1: none */
};

struct alloy_eval_progress {
    size_t windows_done, windows_total;
};
typedef void (*alloy_eval_progress_fn)(void *user, const struct alloy_eval_progress *p);

struct alloy_eval_options {
    int    ctx;          /* window length in tokens; <= 0: the model's default_ctx */
    int    bos;          /* -2 (default): config.json bos_token_id; -1: no BOS; else the id */
    size_t max_windows;  /* 0: all */
    struct alloy_pool *pool; /* NULL: single thread */
    alloy_eval_progress_fn progress;
    void  *progress_user;
    volatile int *interrupt; /* when non-NULL and set, evaluation stops (ALLOY_ERR_INTERRUPTED) */
};

struct alloy_eval_result {
    uint64_t tokens;     /* predicted tokens */
    uint64_t windows;
    double   nll;        /* mean negative log-likelihood, nats/token */
    double   ppl;        /* exp(nll) */
    double   seconds;    /* wall time of the forward passes */
};

void alloy_eval_options_init(struct alloy_eval_options *o);

/* Checks m's config.json alone (no weights are read) and describes it. */
int  alloy_eval_check(const struct alloy_model *m, struct alloy_eval_info *info, struct alloy_err *err);

struct alloy_evaluator;

/* Validates m's tensors against its config.json and converts the weights to
 * float32 (4 bytes per parameter); m may be closed afterwards. */
int  alloy_evaluator_new(const struct alloy_model *m, struct alloy_evaluator **out, struct alloy_err *err);
void alloy_evaluator_free(struct alloy_evaluator *ev);
const struct alloy_eval_info *alloy_evaluator_info(const struct alloy_evaluator *ev);
/* Scores token ids (label names them in errors; o NULL: the defaults). */
int  alloy_evaluate_ids(const struct alloy_evaluator *ev, const int32_t *ids, size_t n, const char *label,
                        const struct alloy_eval_options *o, struct alloy_eval_result *r, struct alloy_err *err);
/* Tokenizes text (len bytes of UTF-8) with the model's tokenizer.json, loaded
 * on first use, and scores it. */
int  alloy_evaluate_text(struct alloy_evaluator *ev, const char *text, size_t len, const char *label,
                         const struct alloy_eval_options *o, struct alloy_eval_result *r, struct alloy_err *err);

/* Tokenizers (tokenizer.json): byte-level BPE (GPT-2, Llama-3, Qwen2),
 * SentencePiece-style BPE with byte fallback (Llama-2, Mistral), bytes. */
struct alloy_tokenizer;

int  alloy_tokenizer_load(const char *path, struct alloy_tokenizer **out, struct alloy_err *err);
void alloy_tokenizer_free(struct alloy_tokenizer *t);
/* 1 when both were read from byte-identical tokenizer.json texts (same length and 64-bit hash). */
int  alloy_tokenizer_same(const struct alloy_tokenizer *a, const struct alloy_tokenizer *b);
/* The tokenizer of model m: its folder's tokenizer.json, or for a GGUF model the one rebuilt from its
 * metadata (byte-level BPE, tokenizer.ggml.model "gpt2"; other forms are an error naming them). */
int  alloy_model_tokenizer(const struct alloy_model *m, struct alloy_tokenizer **out, struct alloy_err *err);
/* Encodes text without special tokens; *ids is malloc'd (free()). label names the text in errors. */
int  alloy_tokenizer_encode(const struct alloy_tokenizer *t, const char *text, size_t len, const char *label,
                            int32_t **ids, size_t *n, struct alloy_err *err);

/* Reads a text file (*text malloc'd, NUL-terminated), or whitespace-separated
 * non-negative token ids (*ids malloc'd). */
int  alloy_eval_read_text(const char *path, char **text, size_t *len, struct alloy_err *err);
int  alloy_eval_read_ids(const char *path, int32_t **ids, size_t *n, struct alloy_err *err);

/* Stops OpenBLAS's idle worker threads (they spin for about 0.1 s of a core
 * after loading); a no-op with other BLAS builds. Merges use BLAS only for
 * MODEL+ADAPTER references, one BLAS thread per pool thread. */
void alloy_blas_idle(void);

/* ---------------------------------------------------------------- LoRA extraction */

/*
 * `alloy lora extract` (mergekit-extract-lora): a PEFT LoRA adapter that
 * turns base_model into model. Each module's delta W_model - W_base (float32)
 * is factored by a truncated SVD into lora_B [out, r] and lora_A [r, in]
 * (embeddings: lora_embedding_A [r, vocab], lora_embedding_B [dim, r]) with
 * every scaling alpha / r = 1; its error is within 1 % of the best rank-r
 * approximation's (docs/lora-extract.md). Embeddings, lm_head, norms and
 * --save-module modules are saved in full (modules_to_save). The output
 * folder appears complete or not at all, with the rules of a merge output.
 */
struct alloy_lora_extract_options {
    const char *model;              /* the fine-tuned model (folder or HF-cache id) */
    const char *base_model;         /* the base it was tuned from */
    const char *out_dir;            /* the adapter folder to write */
    int         max_rank;           /* default 128 */
    int         distribute_scale;   /* default 1: A = sqrt(S) Vt, B = U sqrt(S); 0: A = S Vt, B = U */
    int         embed_lora;         /* 1: LoRA on embeddings/lm_head too (default 0: saved in full) */
    const char *const *save_modules;    /* saved in full: full module names or last components */
    size_t      nsave_modules;
    const char *const *include_regexes; /* POSIX extended regexes searched in module names */
    size_t      ninclude;
    const char *const *exclude_regexes;
    size_t      nexclude;
    double      sv_epsilon;         /* drop singular values <= this (absolute); 0: keep all */
    double      rank_energy;        /* in (0, 1]: each module's rank keeps this fraction of ||delta||^2; 0: off */
    int         skip_undecomposable;/* modules that are not 2-D weights (norms) are skipped, not saved in full */
    enum alloy_dtype lora_dtype;    /* dtype of lora_A/lora_B: F32 (default), BF16 or F16 */
    int         threads;            /* <= 0: all cores (bounded by memory) */
    int         overwrite;          /* replace an out_dir holding other files */
    int         write_card;         /* default 1: README.md with the per-module table */
    alloy_log_fn log;
    void       *log_user;
    volatile int *interrupt;        /* when non-NULL and set, extraction stops (ALLOY_ERR_INTERRUPTED) */
};

void alloy_lora_extract_options_init(struct alloy_lora_extract_options *o);
int  alloy_lora_extract(const struct alloy_lora_extract_options *o, struct alloy_err *err);

/* ---------------------------------------------------------------- MoE assembly */

/*
 * `alloy moe CONFIG OUT` (mergekit-moe, docs/moe.md): a Mixtral, DeepSeek
 * MoE, Qwen MoE (shared expert) or Qwen3 MoE mixture of experts from a dense
 * base and dense experts of its shape. Attention, norms and embeddings come
 * from the base; each expert's MLP becomes that expert's MLP in the output
 * (block_sparse_moe.experts.E.{w1,w3,w2} for Mixtral); the routers
 * ([experts, hidden] per layer) come from gate_mode.
 * Tensors are copied as they are read (bounded memory); the folder is
 * published whole or not at all.
 */
struct alloy_moe_options {
    const char *config_path;   /* mergekit-moe YAML file */
    const char *config_text;   /* or its text (config_path, if set, labels messages) */
    const char *out_dir;
    int         allow_crimes;  /* --i-understand-this-is-not-useful-without-training */
    int         has_seed;      /* random gates and noise_scale: the seed (default 0) */
    uint64_t    seed;
    int         copy_tokenizer;/* default 1 */
    int         overwrite;
    int         fused_experts; /* Mixtral / Qwen3 MoE: mlp.experts.gate_up_proj / down_proj [E, ...] (transformers 5) */
    uint64_t    shard_size;    /* max bytes per output shard; 0: default 5e9 */
    alloy_log_fn log;
    void       *log_user;
    volatile int *interrupt;   /* when non-NULL and set, the assembly stops cleanly (ALLOY_ERR_INTERRUPTED) */
};

void alloy_moe_options_init(struct alloy_moe_options *o);
int  alloy_moe(const struct alloy_moe_options *o, struct alloy_err *err);

/* ---------------------------------------------------------------- sizes */

/* Parses a byte count: "4096", "500M", "1G", "5B", "2.5G", "512MiB".
 * K/M/G/T and mergekit's B (billion) are decimal, case-insensitive, as in
 * mergekit ("5B" = 5e9); KiB/MiB/GiB/TiB are binary. */
int alloy_parse_size(const char *s, uint64_t *out);

#ifdef __cplusplus
}
#endif
#endif /* ALLOY_H */
