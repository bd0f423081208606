/*
 * yaml_tree.c — stage 1 of reading a merge config: YAML text to a small
 * tree of nodes (scalar / list / mapping, each with its 1-based
 * line:column), bounded against hostile input.
 *
 * DESIGN
 *   libyaml's event parser rather than yaml_parser_load, because it lets us
 *   stop at the first value nested deeper than ALLOY_CONFIG_MAX_DEPTH, refuse
 *   an alias to a collection that is still open (`&a [*a]`, a cycle the
 *   document API would build) and count every value, so hostile text cannot
 *   make us recurse, loop or allocate without bound. Mapping merge keys
 *   (`<<: *defaults`) are flattened as PyYAML's SafeLoader does; explicit
 *   duplicate keys are an error (PyYAML silently keeps the last one). Every
 *   node is recorded in the parser state, which frees them all at once.
 */
#include "config/yaml_tree.h"
#include "core/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <yaml.h>

int alloy_cfg_err(struct cfgp *P, enum alloy_status st, struct alloy_pos pos, const char *key, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (pos.line > 0 && key) alloy_err_set(P->err, st, "%s:%d:%d: %s: %s", P->path, pos.line, pos.col, key, msg);
    else if (pos.line > 0) alloy_err_set(P->err, st, "%s:%d:%d: %s", P->path, pos.line, pos.col, msg);
    else if (key) alloy_err_set(P->err, st, "%s: %s: %s", P->path, key, msg);
    else alloy_err_set(P->err, st, "%s: %s", P->path, msg);
    for (char *c = P->err->msg; *c; c++) /* one line, whatever the YAML held */
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    return (int)st;
}

int alloy_cfg_nomem(struct cfgp *P) { return alloy_err_set(P->err, ALLOY_ERR_NOMEM, "%s: out of memory", P->path); }

static struct alloy_pos mark_pos(yaml_mark_t m) { return (struct alloy_pos){(int)m.line + 1, (int)m.column + 1}; }

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    while (ncap < need) ncap *= 2;
    void *p = alloy_xrealloc(*arr, ncap * elem);
    if (!p) return -1;
    *arr = p;
    *cap = ncap;
    return 0;
}

static struct ynode *node_new(struct cfgp *P, enum ykind kind, yaml_mark_t mark)
{
    if (grow((void **)&P->nodes, &P->capnodes, P->nnodes + 1, sizeof *P->nodes)) return NULL;
    struct ynode *n = alloy_xcalloc(1, sizeof *n);
    if (!n) return NULL;
    n->kind = kind;
    n->pos = mark_pos(mark);
    P->nodes[P->nnodes++] = n;
    return n;
}

static int node_add(struct ynode *parent, struct ynode *kid)
{
    if (grow((void **)&parent->kids, &parent->cap, parent->n + 1, sizeof *parent->kids)) return -1;
    parent->kids[parent->n++] = kid;
    return 0;
}

void alloy_yaml_tree_free(struct cfgp *P)
{
    for (size_t i = 0; i < P->nnodes; i++) {
        free(P->nodes[i]->text);
        free(P->nodes[i]->kids);
        free(P->nodes[i]);
    }
    free(P->nodes);
    for (size_t i = 0; i < P->nanchors; i++) free(P->anchors[i].name);
    free(P->anchors);
    alloy_strmap_free(&P->anchor_map);
}

/* Line and column (characters, 1-based) of a byte offset, for reader errors. */
static struct alloy_pos offset_pos(const char *text, size_t len, size_t off)
{
    struct alloy_pos p = {1, 1};
    for (size_t i = 0; i < off && i < len; i++) {
        if (text[i] == '\n') { p.line++; p.col = 1; }
        else if (((unsigned char)text[i] & 0xc0) != 0x80) p.col++;
    }
    return p;
}

int alloy_yaml_error(struct cfgp *P, const struct yaml_parser_s *yp)
{
    if (yp->error == YAML_MEMORY_ERROR) return alloy_cfg_nomem(P);
    const char *problem = yp->problem ? yp->problem : "malformed text";
    if (yp->error == YAML_READER_ERROR) {
        struct alloy_pos pos = offset_pos(P->text, P->len, yp->problem_offset);
        if (yp->problem_value >= 0)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "invalid YAML: %s (byte 0x%02x)", problem, yp->problem_value & 0xff);
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "invalid YAML: %s", problem);
    }
    struct alloy_pos pos = mark_pos(yp->problem_mark);
    if (yp->context)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "invalid YAML: %s (%s at line %d, column %d)", problem,
                    yp->context, (int)yp->context_mark.line + 1, (int)yp->context_mark.column + 1);
    return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "invalid YAML: %s", problem);
}

static int tag_of(struct cfgp *P, const char *tag, enum ykind kind, struct alloy_pos pos, enum ytag *out)
{
    static const struct { const char *name; enum ytag tag; enum ykind kind; } tags[] = {
        {"tag:yaml.org,2002:str", YT_STR, Y_SCALAR},     {"tag:yaml.org,2002:int", YT_INT, Y_SCALAR},
        {"tag:yaml.org,2002:float", YT_FLOAT, Y_SCALAR}, {"tag:yaml.org,2002:bool", YT_BOOL, Y_SCALAR},
        {"tag:yaml.org,2002:null", YT_NULL, Y_SCALAR},   {"tag:yaml.org,2002:merge", YT_MERGE, Y_SCALAR},
        {"tag:yaml.org,2002:seq", YT_AUTO, Y_SEQ},       {"tag:yaml.org,2002:map", YT_AUTO, Y_MAP},
    };
    if (!tag) return 0;
    if (strcmp(tag, "!") == 0) { *out = kind == Y_SCALAR ? YT_STR : YT_AUTO; return 0; }
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(tags); i++)
        if (strcmp(tag, tags[i].name) == 0 && kind == tags[i].kind) { *out = tags[i].tag; return 0; }
    char shown[64];
    snprintf(shown, sizeof shown, "%s", tag);
    return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "unsupported YAML tag '%s' (mergekit reads configs with "
                "yaml.safe_load, which only knows the standard tags)", shown);
}

/* The scalar's YAML type and numeric value, honouring explicit tags. -1: a
 * tag that does not fit the text (`!!int abc`). */
int alloy_yaml_scalar_type(const struct ynode *n, double *num)
{
    double v = 0;
    enum alloy_yaml_type t;
    switch (n->tag) {
    case YT_AUTO:  t = alloy_yaml_resolve(n->text, n->len, &v); break;
    case YT_NULL:  t = ALLOY_YAML_NULL; break;
    case YT_INT: case YT_FLOAT:
        t = alloy_yaml_resolve(n->text, n->len, &v);
        if (t != ALLOY_YAML_INT && t != ALLOY_YAML_FLOAT) return -1;
        break;
    case YT_BOOL:
        t = alloy_yaml_resolve(n->text, n->len, &v);
        if (t != ALLOY_YAML_BOOL) return -1;
        break;
    default:       t = ALLOY_YAML_STR; break;
    }
    if (num) *num = v;
    return (int)t;
}

static int is_merge_key(const struct ynode *k)
{
    return k->kind == Y_SCALAR && (k->tag == YT_MERGE || (k->tag == YT_AUTO && strcmp(k->text, "<<") == 0));
}

/* Appends the key/value pairs that a `<<` value contributes (PyYAML
 * flatten_mapping: for a list of mappings, earlier ones win). */
static int merge_source(struct cfgp *P, struct ynode *v, struct ynode ***pairs, size_t *np, size_t *cap)
{
    struct ynode *one[1] = {v};
    struct ynode **maps = v->kind == Y_SEQ ? v->kids : one;
    size_t nmaps = v->kind == Y_SEQ ? v->n : 1;
    for (size_t m = nmaps; m-- > 0;) {
        struct ynode *src = maps[m];
        if (src->kind != Y_MAP)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, src->pos, "<<", "expected a mapping or a list of mappings to merge");
        if ((P->merged += src->n) > ALLOY_CONFIG_MAX_EXPAND)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, src->pos, "<<", "merge keys expand to more than %zu values",
                        (size_t)ALLOY_CONFIG_MAX_EXPAND);
        if (!src->n) continue; /* `<<: {}`: nothing to add (and *pairs may still be NULL) */
        if (grow((void **)pairs, cap, *np + src->n, sizeof **pairs)) return alloy_cfg_nomem(P);
        memcpy(*pairs + *np, src->kids, src->n * sizeof **pairs);
        *np += src->n;
    }
    return 0;
}

/* Called when a mapping is complete: keys must be scalars, explicit duplicates
 * are errors, merge keys are flattened (explicit keys override merged ones). */
static int finish_map(struct cfgp *P, struct ynode *m)
{
    struct ynode **pairs = NULL, **out = NULL;
    size_t np = 0, cap = 0, nexplicit_from = 0, nout = 0;
    unsigned char *expl = NULL;
    struct alloy_strmap seen = {0};
    int rc = 0, has_merge = 0;
    for (size_t i = 0; i < m->n; i += 2) has_merge |= is_merge_key(m->kids[i]);
    if (has_merge) {
        for (size_t i = 0; i < m->n && !rc; i += 2)
            if (is_merge_key(m->kids[i])) rc = merge_source(P, m->kids[i + 1], &pairs, &np, &cap);
        nexplicit_from = np;
        for (size_t i = 0; i < m->n && !rc; i += 2) {
            if (is_merge_key(m->kids[i])) continue;
            if (grow((void **)&pairs, &cap, np + 2, sizeof *pairs)) { rc = alloy_cfg_nomem(P); break; }
            pairs[np++] = m->kids[i];
            pairs[np++] = m->kids[i + 1];
        }
    } else {
        pairs = m->kids;
        np = m->n;
    }
    if (!rc && np) {
        out = alloy_xmalloc(np * sizeof *out);
        expl = alloy_xmalloc(np / 2 + 1);
        if (!out || !expl) rc = alloy_cfg_nomem(P);
    }
    for (size_t i = 0; i + 1 < np && !rc; i += 2) {
        struct ynode *k = pairs[i];
        int explicit_key = i >= nexplicit_from;
        if (k->kind != Y_SCALAR) {
            rc = alloy_cfg_err(P, ALLOY_ERR_CONFIG, k->pos, NULL, "mapping keys must be plain strings, found a %s",
                      k->kind == Y_SEQ ? "list" : "mapping");
            break;
        }
        size_t at;
        if (alloy_strmap_get(&seen, k->text, &at)) {
            if (explicit_key && expl[at / 2]) {
                char shown[64];
                snprintf(shown, sizeof shown, "%.60s", k->text);
                rc = alloy_cfg_err(P, ALLOY_ERR_CONFIG, k->pos, NULL, "duplicate key '%s' (first given at line %d, column %d)",
                          shown, out[at]->pos.line, out[at]->pos.col);
                break;
            }
            out[at] = k;            /* later wins, first position kept (Python dict) */
            out[at + 1] = pairs[i + 1];
            expl[at / 2] |= (unsigned char)explicit_key;
            continue;
        }
        if (alloy_strmap_put(&seen, k->text, nout, NULL)) { rc = alloy_cfg_nomem(P); break; }
        out[nout] = k;
        out[nout + 1] = pairs[i + 1];
        expl[nout / 2] = (unsigned char)explicit_key;
        nout += 2;
    }
    if (!rc && (np || has_merge)) {
        free(m->kids);
        m->kids = out;
        m->n = m->cap = nout;
        out = NULL;
    }
    if (pairs != m->kids && has_merge) free(pairs);
    free(out);
    free(expl);
    alloy_strmap_free(&seen);
    return rc;
}

static int add_anchor(struct cfgp *P, const char *name, struct ynode *n)
{
    size_t idx;
    if (alloy_strmap_get(&P->anchor_map, name, &idx)) { P->anchors[idx].node = n; return 0; }
    if (grow((void **)&P->anchors, &P->capanchors, P->nanchors + 1, sizeof *P->anchors)) return alloy_cfg_nomem(P);
    char *copy = alloy_xstrdup(name);
    if (!copy) return alloy_cfg_nomem(P);
    P->anchors[P->nanchors] = (struct anchor){copy, n};
    if (alloy_strmap_put(&P->anchor_map, copy, P->nanchors, NULL)) { free(copy); return alloy_cfg_nomem(P); }
    P->nanchors++;
    return 0;
}

/* Handles one event; *depth/stack track the open collections. Returns 0,
 * an error status, or -1 at the end of the stream. */
static int on_event(struct cfgp *P, yaml_event_t *ev, struct ynode **stack, int *depth, struct ynode **root,
                    int *ndocs)
{
    struct alloy_pos pos = mark_pos(ev->start_mark);
    struct ynode *n = NULL;
    const yaml_char_t *anchor = NULL;
    switch (ev->type) {
    case YAML_STREAM_END_EVENT: return -1;
    case YAML_DOCUMENT_START_EVENT:
        if (++*ndocs > 1)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "expected a single YAML document, found a second one");
        return 0;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT: {
        struct ynode *c = stack[--*depth];
        c->open = 0;
        return c->kind == Y_MAP ? finish_map(P, c) : 0;
    }
    case YAML_ALIAS_EVENT: {
        size_t idx;
        const char *name = (const char *)ev->data.alias.anchor;
        if (!alloy_strmap_get(&P->anchor_map, name, &idx))
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "unknown alias '*%.60s'", name);
        n = P->anchors[idx].node;
        if (n->open)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "alias '*%.60s' refers to a value that contains it", name);
        break;
    }
    case YAML_SCALAR_EVENT: {
        if (!(n = node_new(P, Y_SCALAR, ev->start_mark))) return alloy_cfg_nomem(P);
        size_t len = ev->data.scalar.length;
        if (memchr(ev->data.scalar.value, 0, len))
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "NUL characters are not allowed in a config");
        if (!(n->text = alloy_xmalloc(len + 1))) return alloy_cfg_nomem(P);
        memcpy(n->text, ev->data.scalar.value, len);
        n->text[len] = 0;
        n->len = len;
        n->tag = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? YT_AUTO : YT_STR;
        if (tag_of(P, (const char *)ev->data.scalar.tag, Y_SCALAR, pos, &n->tag)) return (int)P->err->status;
        if (alloy_yaml_scalar_type(n, NULL) < 0)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "'%.60s' does not match its explicit YAML tag", n->text);
        anchor = ev->data.scalar.anchor;
        break;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int is_seq = ev->type == YAML_SEQUENCE_START_EVENT;
        if (*depth >= ALLOY_CONFIG_MAX_DEPTH)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "values nested more than %d levels deep", ALLOY_CONFIG_MAX_DEPTH);
        if (!(n = node_new(P, is_seq ? Y_SEQ : Y_MAP, ev->start_mark))) return alloy_cfg_nomem(P);
        const char *tag = (const char *)(is_seq ? ev->data.sequence_start.tag : ev->data.mapping_start.tag);
        if (tag_of(P, tag, n->kind, pos, &n->tag)) return (int)P->err->status;
        n->open = 1;
        anchor = is_seq ? ev->data.sequence_start.anchor : ev->data.mapping_start.anchor;
        break;
    }
    default: return 0; /* stream start, document end */
    }
    if (++P->events > ALLOY_CONFIG_MAX_NODES)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "more than %zu YAML values", (size_t)ALLOY_CONFIG_MAX_NODES);
    if (anchor && add_anchor(P, (const char *)anchor, n)) return (int)P->err->status;
    if (*depth == 0) *root = n;
    else if (node_add(stack[*depth - 1], n)) return alloy_cfg_nomem(P);
    if (n->kind != Y_SCALAR && n->open) stack[(*depth)++] = n;
    return 0;
}

int alloy_yaml_tree_build(struct cfgp *P, struct ynode **root)
{
    yaml_parser_t yp;
    struct ynode *stack[ALLOY_CONFIG_MAX_DEPTH];
    int depth = 0, ndocs = 0, rc = 0;
    *root = NULL;
    if (!yaml_parser_initialize(&yp)) return alloy_cfg_nomem(P);
    yaml_parser_set_input_string(&yp, (const unsigned char *)P->text, P->len);
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&yp, &ev)) { rc = alloy_yaml_error(P, &yp); break; }
        rc = on_event(P, &ev, stack, &depth, root, &ndocs);
        yaml_event_delete(&ev);
        if (rc) break;
    }
    yaml_parser_delete(&yp);
    return rc < 0 ? 0 : rc;
}
