/*
 * yaml_tree.h — stage 1 of config parsing (yaml_tree.c): YAML text to a
 * bounded tree of nodes, shared with stage 2 (config.c). Private to
 * src/config/.
 */
#ifndef ALLOY_YAML_TREE_H
#define ALLOY_YAML_TREE_H

#include "config/config.h"
#include "core/strmap.h"

enum ykind { Y_SCALAR, Y_SEQ, Y_MAP };
enum ytag { YT_AUTO, YT_STR, YT_INT, YT_FLOAT, YT_BOOL, YT_NULL, YT_MERGE };

struct ynode {
    enum ykind kind;
    enum ytag tag;          /* scalars: YT_AUTO = plain, typed by YAML 1.1 rules */
    int open;               /* collection still being read */
    struct alloy_pos pos;
    char *text;             /* scalars, NUL-terminated */
    size_t len;
    struct ynode **kids;    /* list items; mappings: key, value, key, value... */
    size_t n, cap;
};

struct anchor { char *name; struct ynode *node; };

struct cfgp {
    const char *path;
    const char *text;
    size_t len;
    struct alloy_err *err;
    struct ynode **nodes;   /* every node, for freeing */
    size_t nnodes, capnodes;
    size_t events;          /* nodes + aliases seen */
    size_t merged;          /* key/value slots copied by merge keys */
    struct anchor *anchors;
    size_t nanchors, capanchors;
    struct alloy_strmap anchor_map;
    size_t work, bytes;     /* stage-2 budgets */
};

/* "<path>:<line>:<col>: <key>: <message>" into P->err, made one line; returns st. */
int  alloy_cfg_err(struct cfgp *P, enum alloy_status st, struct alloy_pos pos, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
int  alloy_cfg_nomem(struct cfgp *P);
/* Parses P->text into a tree (root NULL for an empty document); every node is owned by P. */
int  alloy_yaml_tree_build(struct cfgp *P, struct ynode **root);
void alloy_yaml_tree_free(struct cfgp *P);
/* libyaml's parse error as "<path>:<line>:<col>: invalid YAML: <problem>" into P->err; returns its status. */
struct yaml_parser_s;
int  alloy_yaml_error(struct cfgp *P, const struct yaml_parser_s *yp);
/* The scalar's YAML type (enum alloy_yaml_type) and numeric value, honouring explicit tags; -1: a tag
 * that does not fit the text (`!!int abc`). */
int  alloy_yaml_scalar_type(const struct ynode *n, double *num);

/* Typed access (config_access.c), shared by the config readers. Each charges the visit (and copied bytes)
 * to the budgets: alloy_cfg_charge alone does that. A value's description for "found ..."; a string (null:
 * *out = NULL); the number mergekit would get (-1, no message, when it is none); a number; a mapping whose
 * keys are all in `allowed` (NULL-terminated; messages name `where` and suggest a near key); the value of key
 * `name` (map_get), the same with a null value counting as absent (map_val); a missing required key. */
int           alloy_cfg_charge(struct cfgp *P, const struct ynode *n, size_t bytes);
const char   *alloy_cfg_describe(const struct ynode *n, char *buf, size_t size);
int           alloy_cfg_get_string(struct cfgp *P, const struct ynode *n, const char *key, char **out);
int           alloy_cfg_to_number(const struct ynode *n, double *out);
int           alloy_cfg_get_number(struct cfgp *P, const struct ynode *n, const char *key, double *out);
int           alloy_cfg_is_null(const struct ynode *n);
int           alloy_cfg_check_map(struct cfgp *P, const struct ynode *m, const char *key, const char *where,
                                  const char *const *allowed);
struct ynode *alloy_cfg_map_get(const struct ynode *m, const char *name);
struct ynode *alloy_cfg_map_val(const struct ynode *m, const char *name);
int           alloy_cfg_missing(struct cfgp *P, const struct ynode *m, const char *where, const char *name);

#endif
