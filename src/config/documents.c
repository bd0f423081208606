/*
 * documents.c — a multi-document config (mergekit-multi): the YAML stream
 * cut into its documents, each parsed as its own config.
 *
 * DESIGN
 *   One pass of libyaml's event parser over the whole text finds where each
 *   document starts (the beginning of the line of its first mark: its `---`,
 *   or its first value; the first document starts at byte 0) and ends (the mark of its end event: an explicit
 *   `...`, the next `---` or the end of the stream); the events in between
 *   are only counted, so the pass is bounded like the tree builder. Each
 *   document is then parsed by alloy_config_parse from a copy of the text
 *   in which everything before it is blanked out, newlines kept: a message
 *   points at the line and column of the whole file. The config keeps the
 *   document's own text (blanked part dropped), which is what its
 *   mergekit_config.yml records and what --lazy compares.
 */
#include "config/yaml_tree.h"
#include "core/internal.h"

#include <yaml.h>

struct span { size_t from, to; };

/* Document boundaries: *spans (malloc'd) and *n; an error status for invalid YAML or too many documents. */
static int find_documents(struct cfgp *P, struct span **spans, size_t *n)
{
    yaml_parser_t yp;
    size_t cap = 0, events = 0;
    int rc = 0, done = 0;
    *spans = NULL;
    *n = 0;
    if (!yaml_parser_initialize(&yp)) return alloy_cfg_nomem(P);
    yaml_parser_set_input_string(&yp, (const unsigned char *)P->text, P->len);
    while (!done && !rc) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&yp, &ev)) { rc = alloy_yaml_error(P, &yp); break; }
        if (++events > ALLOY_CONFIG_MAX_NODES * 2) {
            rc = alloy_err_set(P->err, ALLOY_ERR_CONFIG, "%s: more than %zu YAML values", P->path,
                               (size_t)ALLOY_CONFIG_MAX_NODES);
        } else if (ev.type == YAML_DOCUMENT_START_EVENT) {
            struct alloy_pos pos = {(int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1};
            if (*n == ALLOY_CONFIG_MAX_DOCS) {
                rc = alloy_cfg_err(P, ALLOY_ERR_CONFIG, pos, NULL, "more than %d YAML documents", ALLOY_CONFIG_MAX_DOCS);
            } else if (*n == cap) {
                size_t nc = cap ? cap * 2 : 8;
                struct span *ns = alloy_xrealloc(*spans, nc * sizeof *ns);
                if (!ns) rc = alloy_cfg_nomem(P);
                else *spans = ns, cap = nc;
            }
            /* the first document keeps what precedes it (comments), as a one-document config does */
            size_t from = *n ? ev.start_mark.index - ev.start_mark.column : 0;
            if (!rc) (*spans)[(*n)++] = (struct span){from, P->len};
        } else if (ev.type == YAML_DOCUMENT_END_EVENT && *n) {
            size_t to = ev.end_mark.index; /* after an explicit `...`, its newline too */
            (*spans)[*n - 1].to = to < P->len && P->text[to] == '\n' ? to + 1 : to;
        } else if (ev.type == YAML_STREAM_END_EVENT) {
            done = 1;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&yp);
    if (!rc && *n) (*spans)[*n - 1].to = P->len; /* the last one keeps what follows it: one document is the file */
    if (rc) {
        free(*spans);
        *spans = NULL;
        *n = 0;
    }
    return rc;
}

/* Document s of text parsed alone, its messages placed in the whole file. */
static int parse_one(const char *text, struct span s, const char *path, struct alloy_config **out,
                     struct alloy_err *err)
{
    char *copy = alloy_xmalloc(s.to + 1);
    if (!copy) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < s.from; i++) copy[i] = text[i] == '\n' ? '\n' : ' ';
    memcpy(copy + s.from, text + s.from, s.to - s.from);
    int rc = alloy_config_parse(copy, s.to, path, out, err);
    if (!rc) { /* keep the document's own text */
        struct alloy_config *c = *out;
        memmove(c->text, c->text + s.from, s.to - s.from);
        c->text_len = s.to - s.from;
        c->text[c->text_len] = '\0';
    }
    free(copy);
    return rc;
}

void alloy_config_free_docs(struct alloy_config **c, size_t n)
{
    if (!c) return;
    for (size_t i = 0; i < n; i++) alloy_config_free(c[i]);
    free(c);
}

int alloy_config_parse_docs(const char *text, size_t len, const char *path, struct alloy_config ***out, size_t *n,
                            struct alloy_err *err)
{
    *out = NULL;
    *n = 0;
    if (!path) path = "<config>";
    if (len > ALLOY_CONFIG_MAX_BYTES)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: config is %zu bytes, more than the %zu allowed", path, len,
                             ALLOY_CONFIG_MAX_BYTES);
    struct cfgp P = {.path = path, .text = text ? text : "", .len = text ? len : 0, .err = err};
    struct span *spans;
    size_t ns;
    int rc = find_documents(&P, &spans, &ns);
    if (rc) return rc;
    if (!ns) return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: empty config: expected a mapping with merge_method: and "
                                  "models: or slices:", path);
    struct alloy_config **c = alloy_xcalloc(ns, sizeof *c);
    if (!c) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; !rc && i < ns; i++) rc = parse_one(P.text, spans[i], path, &c[i], err);
    free(spans);
    if (rc) {
        alloy_config_free_docs(c, ns);
        return rc;
    }
    *out = c;
    *n = ns;
    return ALLOY_OK;
}
