/*
 * config.h — the merge configuration, as read from a mergekit YAML file.
 *
 * DESIGN
 *   config.c turns the YAML text (libyaml) into these plain structs and
 *   validates everything that does not need the models: key names (unknown
 *   keys are errors with line and column, unlike mergekit which ignores
 *   them), value types, dtype names, layer ranges, model reference syntax,
 *   exclusivity of models/slices. `models:` configs are normalised into one
 *   slice whose sources have no layer_range (has_range = 0), exactly as
 *   mergekit's planner treats them.
 *
 *   Parameter values (struct alloy_setting) keep mergekit's three forms:
 *   a scalar, a gradient list of numbers, or a list of conditional entries
 *   {filter, value}. params.c evaluates them for a tensor name and layer
 *   position t. YAML booleans are read as 1/0 (mergekit coerces them to
 *   numbers too).
 *
 *   Every struct records the line/column of its YAML node so later stages
 *   (planning, method validation) can point at the offending key.
 */
#ifndef ALLOY_CONFIG_H
#define ALLOY_CONFIG_H

#include "alloy.h"

#include <stddef.h>

struct alloy_pos { int line, col; }; /* 1-based; 0 when unknown */

enum alloy_setting_kind {
    ALLOY_SETTING_SCALAR,   /* value */
    ALLOY_SETTING_GRADIENT, /* grad[0..ngrad-1], ngrad >= 1 */
    ALLOY_SETTING_COND,     /* conds[0..nconds-1] */
};

struct alloy_cond;

struct alloy_setting {
    enum alloy_setting_kind kind;
    double value;
    double *grad;
    size_t ngrad;
    struct alloy_cond *conds;
    size_t nconds;
    struct alloy_pos pos;
};

struct alloy_cond {
    char *filter;               /* NULL or "*": matches every tensor */
    struct alloy_setting value; /* SCALAR or GRADIENT (the reader never nests COND; eval would recurse) */
};

/* An ordered map name -> setting (order as in the YAML). */
struct alloy_params {
    size_t n;
    char **names;
    struct alloy_setting *values;
    struct alloy_pos *pos;      /* position of each key */
};

struct alloy_source {
    char *model;                /* reference string: path or org/name[@rev] */
    int has_range;
    long long layer_range[2];   /* [start, end) when has_range */
    struct alloy_params params;
    struct alloy_pos pos;
};

struct alloy_slice {
    struct alloy_source *sources;
    size_t nsources;
    char *base_model;           /* per-slice override, NULL if none */
    struct alloy_params params;
    struct alloy_pos pos;
};

/* One entry of tokenizer.tokens (mergekit TokenEmbeddingConfig): where the embedding rows of a token come from. */
enum alloy_token_kind { ALLOY_TOKEN_MODEL, ALLOY_TOKEN_MODEL_TOKEN, ALLOY_TOKEN_ZERO };
struct alloy_token_cfg {
    char *token;                /* the token string (the key) */
    enum alloy_token_kind kind;
    char *model;                /* MODEL and MODEL_TOKEN: a model reference */
    long long token_id;         /* MODEL_TOKEN: the row in that model, -1 when given as src_token */
    char *src_token;            /* MODEL_TOKEN: a token of that model's own vocabulary, or NULL */
    int force;                  /* 1: every model takes this row, even one that has the token */
    struct alloy_pos pos;
};

struct alloy_config {
    char *path;                 /* file name used in messages */
    char *text;                 /* verbatim YAML (written as mergekit_config.yml) */
    size_t text_len;
    char *merge_method;
    struct alloy_pos merge_method_pos;
    int from_slices;            /* 1: `slices:`, 0: `models:` (one normalised slice) */
    struct alloy_slice *slices;
    size_t nslices;
    char *base_model;           /* NULL if none */
    struct alloy_pos base_model_pos;
    struct alloy_params params; /* top-level `parameters:` */
    int has_dtype, has_out_dtype;
    enum alloy_dtype dtype, out_dtype;
    char *tokenizer_source;     /* NULL, "base", "union" or a model reference */
    struct alloy_pos tokenizer_pos;
    struct alloy_token_cfg *tokens; /* tokenizer.tokens, in config order */
    size_t ntokens;
    long long pad_to_multiple_of; /* tokenizer.pad_to_multiple_of, 0: none */
    char *chat_template;        /* NULL or as given */
    char *name;                 /* mergekit-multi's `name:` (an intermediate's name), NULL if none */
    struct alloy_pos name_pos;
    int built;                  /* made by alloy_config_new (build.c): the setters may change it */
};

#define ALLOY_CONFIG_MAX_BYTES  ((size_t)16 << 20) /* config file size */
#define ALLOY_CONFIG_MAX_DEPTH  64                 /* nested lists/mappings */
#define ALLOY_CONFIG_MAX_NODES  ((size_t)1 << 18)  /* YAML values and aliases in the text */
#define ALLOY_CONFIG_MAX_EXPAND ((size_t)1 << 22)  /* values visited after alias expansion */

/* alloy_config_parse, alloy_config_load and alloy_config_free are public (alloy.h). */

/* Shared by the YAML reader (config.c) and the builder (build.c), so both
 * accept and refuse the same things with the same words. */
#define ALLOY_CONFIG_INT64_MSG "int64 is not supported (alloy merges floating-point tensors; use bfloat16, float16 or float32)"
#define ALLOY_CONFIG_DTYPE_MSG "expected bfloat16, float16 or float32 (optionally with a torch. prefix)"
/* NULL when s[0..len) is a valid PATH[@REVISION], else what is wrong with it. */
const char *alloy_config_ref_problem(const char *s, size_t len);
/* "bfloat16"/"float16"/"float32" (optionally "torch."-prefixed): 0 and *out; "int64": 1; else -1. */
int         alloy_config_dtype_name(const char *s, enum alloy_dtype *out);
/* The unknown-method message: "merge_method: unknown method 'x' (known: linear, ...)" into buf. */
void        alloy_config_unknown_method(const char *name, char *buf, size_t size);

/* A multi-document config (mergekit-multi, documents.c): every document parsed as its own config, in file
 * order. Each config's text is its document's text alone (what mergekit_config.yml records), and its
 * messages give lines and columns of the whole file. At most ALLOY_CONFIG_MAX_DOCS documents. */
#define ALLOY_CONFIG_MAX_DOCS 256
int  alloy_config_parse_docs(const char *text, size_t len, const char *path, struct alloy_config ***out, size_t *n,
                             struct alloy_err *err);
void alloy_config_free_docs(struct alloy_config **c, size_t n);

/* Frees the names and settings of p and empties it (p itself is not freed). */
void alloy_params_free(struct alloy_params *p);

/* Looks a key up in params; NULL when absent. */
const struct alloy_setting *alloy_params_get(const struct alloy_params *p, const char *name);

/* Evaluates a setting for `tensor` (filter subject) at layer position t in
 * [0, 1]. Returns 1 and sets *out when the setting yields a value, 0 when it
 * is "unset" (no conditional entry matched). Gradient rule (mergekit):
 * s = t*(L-1), i0 = floor(s), i1 = min(L-1, i0+1), f = s-i0,
 * value = (1-f)*v[i0] + f*v[i1]. */
int  alloy_setting_eval(const struct alloy_setting *s, const char *tensor, double t, double *out);

/* How mergekit (PyYAML safe_load + pydantic) reads numbers; params.c.
 * alloy_yaml_resolve types an UNQUOTED scalar by YAML 1.1 rules (as
 * PyYAML's resolver does) and sets *num for NULL (0), BOOL (1/0), INT and
 * FLOAT. alloy_yaml_coerce_number is pydantic's lax str -> float: returns 0
 * and sets *out when s (trimmed) is a decimal number, inf/infinity or nan. */
enum alloy_yaml_type { ALLOY_YAML_NULL, ALLOY_YAML_BOOL, ALLOY_YAML_INT, ALLOY_YAML_FLOAT, ALLOY_YAML_STR };
enum alloy_yaml_type alloy_yaml_resolve(const char *s, size_t len, double *num);
int                  alloy_yaml_coerce_number(const char *s, size_t len, double *out);

#endif
