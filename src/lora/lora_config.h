/*
 * lora_config.h — the parsed adapter_config.json of a PEFT LoRA adapter
 * (private to src/lora/).
 *
 * DESIGN
 *   adapter_config.c turns the JSON into this struct once: every pattern key
 *   and regex compiled to a POSIX extended regex (Python `re` syntax is
 *   translated where the two differ, see alloy_lora_regex), rank_pattern and
 *   alpha_pattern kept in file order. adapter.c then asks it, per module,
 *   which r and lora_alpha apply and whether PEFT would have targeted it.
 */
#ifndef ALLOY_LORA_CONFIG_H
#define ALLOY_LORA_CONFIG_H

#include "lora/adapter.h"

#include <regex.h>

struct alloy_lora_pattern {
    char *key;          /* as written */
    int is_re;          /* re compiled; 0: KEY is literal (letters, digits, _ - and '.', which matches any
                           character), matched without a regex (adapter_config.c) */
    regex_t re;         /* ^(.*\.)?(KEY)$ */
    double value;
};

/* At most this many rank_pattern + alpha_pattern keys and list entries per adapter_config.json, and at most
 * ALLOY_LORA_MAX_REGEX of them compiled as regexes (a compiled POSIX regex costs about 12 KB). */
#define ALLOY_LORA_MAX_ENTRIES 65536
#define ALLOY_LORA_MAX_REGEX   1024

/* target_modules / exclude_modules / modules_to_save: absent, a list of names, or one regex. */
enum alloy_lora_sel_kind { SEL_NONE, SEL_LIST, SEL_REGEX, SEL_ALL_LINEAR };

struct alloy_lora_sel {
    enum alloy_lora_sel_kind kind;
    char **names;
    size_t n;
    regex_t *res;       /* SEL_LIST of modules_to_save: one compiled regex per non-literal name; SEL_REGEX: one */
    unsigned char *is_re; /* SEL_LIST of modules_to_save: [n], res[i] compiled */
    size_t nres;        /* SEL_REGEX, or a SEL_LIST matched as modules_to_save: 1 */
};

enum alloy_lora_bias { LORA_BIAS_NONE, LORA_BIAS_ALL, LORA_BIAS_LORA_ONLY };

struct alloy_lora_cfg {
    struct alloy_lora_pattern *rank, *alpha;
    size_t nrank, nalpha;
    struct alloy_lora_sel target, exclude, save;
    long long *layers;  /* layers_to_transform, NULL: every layer */
    size_t nlayers;
    char *layers_pattern;
    int lora_bias;
    enum alloy_lora_bias bias;
};

/* Parses adapter_config.json text into a (its scalar fields and a->cfg). `path` names it in errors. */
int  alloy_lora_cfg_parse(const char *text, size_t len, const char *path, struct alloy_adapter *a,
                          struct alloy_err *err);
void alloy_lora_cfg_free(struct alloy_lora_cfg *c);

/* r and lora_alpha of module `name`: the first matching pattern key in file order, else the defaults. */
uint32_t alloy_lora_rank_for(const struct alloy_adapter *a, const char *name);
double   alloy_lora_alpha_for(const struct alloy_adapter *a, const char *name);
/* 1 when PEFT would put a LoRA on module `name` (target_modules, exclude_modules, layers_to_transform). */
int      alloy_lora_targeted(const struct alloy_adapter *a, const char *name);
/* 1 when `name` is one of modules_to_save. */
int      alloy_lora_saved(const struct alloy_adapter *a, const char *name);

/* Compiles Python regex `py` as POSIX ERE, wrapped as pre + "(" + py + ")" + post. Translates \d \w \s
 * (and \D \W \S outside brackets), (?:...) and lazy quantifiers (whole-string matching makes them
 * equivalent to greedy ones); look-arounds, back-references, named groups and inline flags are refused.
 * 0, or -1 with the reason in why. */
int alloy_lora_regex(const char *py, const char *pre, const char *post, regex_t *re, char *why, size_t whylen);
/* 1 when re matches s. */
int alloy_lora_regex_match(const regex_t *re, const char *s);

#endif
