/*
 * multi.c — multi-stage merges (mergekit-multi): the documents of one YAML
 * config run in dependency order, named ones as intermediates that later
 * documents use as `model: NAME`, the unnamed one as the final merge.
 *
 * DESIGN
 *   1. Check the documents: names are folder names, unique; at most one
 *      document is unnamed (the final merge, into out_dir / out_model); a
 *      reference equal to a name is a dependency (mergekit's rule: a name
 *      wins over a folder of that name); a bare reference that is neither a
 *      name nor a model is an error naming both possibilities.
 *   2. Order them by a depth-first walk in document order (post-order), so a
 *      stage runs after everything it uses; meeting a stage still on the
 *      walk's path is a cycle, reported as the chain of names.
 *   3. Run each stage with engine.c's alloy_merge_stage and the shared
 *      options. An intermediate goes to <intermediate_dir>/<name> through the
 *      folder sink (published whole or not at all) and is then opened as a
 *      model; without intermediate_dir it goes to the memory sink and stays
 *      an alloy_model, freed after the last stage that uses it. Either way
 *      later plans find it by name (plan.h: alloy_given_models), so both
 *      give the same bits. In-memory intermediates must fit the memory
 *      budget (tensor bytes held at once), else the stage fails before any
 *      work, asking for --intermediate-dir.
 *   4. --lazy: a folder is finished when it has config.json, model.safetensors
 *      or its index (mergekit's test) and a mergekit_config.yml equal byte
 *      for byte to the document's text — alloy publishes folders atomically,
 *      so a present folder is whole, and the recorded config says it was
 *      made from this recipe. It is not reused when a stage it uses was
 *      merged again in this run.
 *   A dry run plans every stage against zero-valued stand-ins of the
 *   intermediates (engine.c: shape_only) and says where each one goes.
 *   A failing stage stops the run: later stages, the final output
 *   included, are not started; intermediates finished before it stay.
 */
#include "core/internal.h"
#include "engine/engine.h"

#include <errno.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

struct stage {
    const struct alloy_config *cfg;
    const char *name;          /* NULL: the final merge */
    size_t *deps, ndeps;       /* stages it uses */
    int mark;                  /* walk: 0 new, 1 on the path, 2 ordered */
    size_t users;              /* stages still to run that use it */
    struct alloy_model *model; /* its result while a later stage needs it */
    uint64_t bytes;            /* tensor bytes of an in-memory result */
    int fresh;                 /* merged (not reused) in this run */
};

struct multi {
    const struct alloy_merge_options *o;
    struct stage *st;
    size_t n;
    size_t *order, norder;
    const char *path;          /* the config, for messages */
    struct alloy_err *err;
};

static void note(const struct multi *M, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(const struct multi *M, const char *fmt, ...)
{
    if (!M->o->log) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    M->o->log(M->o->log_user, 1, msg);
}

static long named(const struct multi *M, const char *ref)
{
    for (size_t i = 0; i < M->n; i++)
        if (M->st[i].name && strcmp(M->st[i].name, ref) == 0) return (long)i;
    return -1;
}

/* ------------------------------------------------------------ checks */

/* A name becomes <intermediate_dir>/<name> and is printed in the dry run: one plain folder name. */
static int folder_name(const char *nm)
{
    for (const unsigned char *p = (const unsigned char *)nm; *p; p++)
        if (*p == '/' || *p < 0x20 || *p == 0x7f) return 0;
    return *nm && strcmp(nm, ".") != 0 && strcmp(nm, "..") != 0;
}

static int check_names(struct multi *M)
{
    long unnamed = -1;
    for (size_t i = 0; i < M->n; i++) {
        const struct alloy_config *c = M->st[i].cfg;
        const char *nm = c->name;
        if (!nm) {
            if (unnamed >= 0)
                return alloy_err_set(M->err, ALLOY_ERR_CONFIG, "%s:%d:%d: name: one unnamed document (the final merge) "
                                     "expected, found a second one (the first is at line %d)", M->path,
                                     c->merge_method_pos.line, c->merge_method_pos.col,
                                     M->st[unnamed].cfg->merge_method_pos.line);
            unnamed = (long)i;
            continue;
        }
        if (!folder_name(nm))
            return alloy_err_set(M->err, ALLOY_ERR_CONFIG, "%s:%d:%d: name: expected a folder name (not empty, no '/' "
                                 "or control characters, not . or ..), found '%s'", M->path, c->name_pos.line,
                                 c->name_pos.col, nm);
        long first = named(M, nm);
        if (first >= 0 && (size_t)first < i)
            return alloy_err_set(M->err, ALLOY_ERR_CONFIG, "%s:%d:%d: name: '%s' names one document, found a second "
                                 "one (the first is at line %d)", M->path, c->name_pos.line, c->name_pos.col, nm,
                                 M->st[first].cfg->name_pos.line);
        M->st[i].name = nm;
    }
    return ALLOY_OK;
}

/* A reference that is not a name: fine when it is a path with '/', a folder, or a model that opens; else
 * an error saying it is neither a document's name nor a model. */
static int check_plain_ref(struct multi *M, const char *ref, struct alloy_pos pos)
{
    struct stat sb;
    if (strchr(ref, '/') || stat(ref, &sb) == 0) return ALLOY_OK;
    struct alloy_model *m = NULL;
    struct alloy_err e = {0};
    if (alloy_model_open(ref, &m, &e) == ALLOY_OK) {
        alloy_model_close(m);
        return ALLOY_OK;
    }
    char names[512] = "";
    size_t at = 0;
    for (size_t i = 0; i < M->n && at < sizeof names; i++)
        if (M->st[i].name) at += (size_t)snprintf(names + at, sizeof names - at, "%s%s", at ? ", " : "", M->st[i].name);
    return alloy_err_set(M->err, ALLOY_ERR_CONFIG, "%s:%d:%d: model: '%s': expected the name of a document (%s) or a "
                         "model folder, found neither", M->path, pos.line, pos.col, ref, at ? names : "none named");
}

/* Records ref as a dependency of stage i when it is a name, else checks it. */
static int add_ref(struct multi *M, size_t i, const char *ref, struct alloy_pos pos)
{
    if (!ref) return ALLOY_OK;
    if (!strncmp(ref, "model:", 6)) ref += 6; /* tokenizer_source: model:X */
    if (!strcmp(ref, "base") || !strcmp(ref, "union")) return ALLOY_OK;
    long d = named(M, ref);
    if (d < 0) return check_plain_ref(M, ref, pos);
    struct stage *s = &M->st[i];
    for (size_t k = 0; k < s->ndeps; k++)
        if (s->deps[k] == (size_t)d) return ALLOY_OK;
    size_t *nd = alloy_xrealloc(s->deps, (s->ndeps + 1) * sizeof *nd);
    if (!nd) return alloy_err_set(M->err, ALLOY_ERR_NOMEM, "out of memory");
    s->deps = nd;
    s->deps[s->ndeps++] = (size_t)d;
    M->st[d].users++;
    return ALLOY_OK;
}

static int find_deps(struct multi *M)
{
    int rc = ALLOY_OK;
    for (size_t i = 0; i < M->n && !rc; i++) {
        const struct alloy_config *c = M->st[i].cfg;
        rc = add_ref(M, i, c->base_model, c->base_model_pos);
        for (size_t k = 0; k < c->nslices && !rc; k++) {
            rc = add_ref(M, i, c->slices[k].base_model, c->slices[k].pos);
            for (size_t j = 0; j < c->slices[k].nsources && !rc; j++)
                rc = add_ref(M, i, c->slices[k].sources[j].model, c->slices[k].sources[j].pos);
        }
        if (!rc) rc = add_ref(M, i, c->tokenizer_source, c->tokenizer_pos);
    }
    return rc;
}

/* ------------------------------------------------------------ order */

/* The cycle through stage `at` as "a -> b -> a", from the walk's path. */
static int cycle_error(struct multi *M, const size_t *path, size_t depth, size_t at)
{
    char chain[600] = "";
    size_t len = 0, from = 0;
    while (from < depth && path[from] != at) from++;
    for (size_t k = from; k < depth && len < sizeof chain; k++)
        len += (size_t)snprintf(chain + len, sizeof chain - len, "'%s' -> ", M->st[path[k]].name);
    if (len < sizeof chain) snprintf(chain + len, sizeof chain - len, "'%s'", M->st[at].name);
    const struct alloy_config *c = M->st[at].cfg;
    return alloy_err_set(M->err, ALLOY_ERR_CONFIG, "%s:%d:%d: name: '%s': expected merges that do not use their own "
                         "results, found the cycle %s", M->path, c->name_pos.line, c->name_pos.col, M->st[at].name, chain);
}

/* Depth-first post-order from stage `root`, with an explicit stack (no recursion on untrusted depth). */
static int walk(struct multi *M, size_t root, size_t *path, size_t *next)
{
    size_t depth = 0;
    path[depth] = root;
    next[depth++] = 0;
    M->st[root].mark = 1;
    while (depth) {
        struct stage *s = &M->st[path[depth - 1]];
        if (next[depth - 1] < s->ndeps) {
            size_t d = s->deps[next[depth - 1]++];
            if (M->st[d].mark == 1) return cycle_error(M, path, depth, d);
            if (M->st[d].mark == 0) {
                M->st[d].mark = 1;
                path[depth] = d;
                next[depth++] = 0;
            }
            continue;
        }
        s->mark = 2;
        M->order[M->norder++] = path[--depth];
    }
    return ALLOY_OK;
}

static int order_stages(struct multi *M)
{
    size_t *path = alloy_xcalloc(M->n, sizeof *path), *next = alloy_xcalloc(M->n, sizeof *next);
    M->order = alloy_xcalloc(M->n, sizeof *M->order);
    int rc = path && next && M->order ? ALLOY_OK : alloy_err_set(M->err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < M->n && !rc; i++)
        if (M->st[i].mark == 0) rc = walk(M, i, path, next);
    free(path);
    free(next);
    return rc;
}

/* Where results go: an unnamed document needs an output; without one, intermediates need a folder; an
 * intermediate held in memory must have a user. */
static int check_outputs(struct multi *M)
{
    const struct alloy_merge_options *o = M->o;
    int has_final = 0;
    for (size_t i = 0; i < M->n; i++) has_final |= !M->st[i].name;
    if (has_final && !o->out_dir && !o->out_model && !o->dry_run)
        return alloy_err_set(M->err, ALLOY_ERR_CONFIG, "%s: the unnamed document is the final merge: expected an "
                             "output folder for it, found none", M->path);
    if (!has_final && (o->out_dir || o->out_model))
        return alloy_err_set(M->err, ALLOY_ERR_CONFIG, "%s: name: an output was given for the final merge, but every "
                             "document is named: expected one unnamed document", M->path);
    if (!has_final && !o->intermediate_dir)
        return alloy_err_set(M->err, ALLOY_ERR_CONFIG, "%s: name: every document is named: expected an intermediate "
                             "folder to write them to (--intermediate-dir), found none", M->path);
    for (size_t i = 0; i < M->n && !o->intermediate_dir; i++)
        if (M->st[i].name && !M->st[i].users)
            return alloy_err_set(M->err, ALLOY_ERR_CONFIG, "%s:%d:%d: name: '%s' is used by no other document: "
                                 "expected an intermediate folder to keep it in (--intermediate-dir), found none",
                                 M->path, M->st[i].cfg->name_pos.line, M->st[i].cfg->name_pos.col, M->st[i].name);
    return ALLOY_OK;
}

/* ------------------------------------------------------------ running */

/* mergekit's test for a finished folder, plus alloy's: the recorded config is the document's text. */
static int finished(const char *dir, const struct alloy_config *cfg)
{
    static const char *const need[] = {"config.json", "mergekit_config.yml"};
    char *p;
    int ok = 1;
    for (size_t k = 0; k < 2 && ok; k++) {
        if (!(p = alloy_xasprintf("%s/%s", dir, need[k]))) return 0;
        ok = alloy_is_file(p);
        free(p);
    }
    char *a = alloy_xasprintf("%s/model.safetensors", dir), *b = alloy_xasprintf("%s/model.safetensors.index.json", dir);
    ok = ok && a && b && (alloy_is_file(a) || alloy_is_file(b));
    free(a);
    free(b);
    char *text = NULL;
    size_t len = 0;
    struct alloy_err e = {0};
    if (ok && (p = alloy_xasprintf("%s/mergekit_config.yml", dir)) != NULL) {
        ok = alloy_read_file(p, ALLOY_CONFIG_MAX_BYTES, &text, &len, &e) == ALLOY_OK && len == cfg->text_len &&
             memcmp(text, cfg->text, len) == 0;
        free(text);
        free(p);
    }
    return ok;
}

static int deps_fresh(const struct multi *M, const struct stage *s)
{
    for (size_t k = 0; k < s->ndeps; k++)
        if (M->st[s->deps[k]].fresh) return 1;
    return 0;
}

/* The results held now, as the plan looks them up. */
static void given_now(const struct multi *M, const char **names, struct alloy_model **models,
                      struct alloy_given_models *g)
{
    g->n = 0;
    for (size_t i = 0; i < M->n; i++)
        if (M->st[i].model) names[g->n] = M->st[i].name, models[g->n++] = M->st[i].model;
    g->names = names;
    g->models = models;
}

/* An intermediate into <dir>/<name>: reused when finished (--lazy), else merged; then opened. */
static int run_to_folder(struct multi *M, struct stage *s, size_t k, struct alloy_merge_options *so,
                         struct alloy_stage_io *io, FILE *plan_out)
{
    char *dir = alloy_xasprintf("%s/%s", M->o->intermediate_dir, s->name);
    if (!dir) return alloy_err_set(M->err, ALLOY_ERR_NOMEM, "out of memory");
    int rc = ALLOY_OK, reuse = M->o->lazy && !deps_fresh(M, s) && finished(dir, s->cfg);
    if (M->o->dry_run) fprintf(plan_out, "# -> %s%s\n", dir, reuse ? " (finished: reused, not merged again)" : "");
    if (reuse) note(M, "stage %zu/%zu: %s: finished with the same config, reused (--no-lazy merges it again)", k + 1,
                    M->n, dir);
    else note(M, "stage %zu/%zu: merging %s into %s", k + 1, M->n, s->name, dir);
    if (reuse) {
        rc = alloy_model_open(dir, &s->model, M->err);
    } else if (M->o->dry_run) {
        so->out_model = &s->model;
        io->shape_only = 1;
        rc = alloy_merge_stage(so, s->cfg, io, M->err);
    } else {
        so->out_dir = dir;
        rc = alloy_merge_stage(so, s->cfg, io, M->err);
        if (!rc) rc = alloy_model_open(dir, &s->model, M->err);
        s->fresh = 1;
    }
    free(dir);
    return rc;
}

static uint64_t default_budget(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size / 2 : (uint64_t)1 << 30;
}

/* Stage s: an intermediate into memory or a folder, or the final merge into the caller's output. */
static int run_stage(struct multi *M, struct stage *s, size_t k, uint64_t *held)
{
    const struct alloy_merge_options *o = M->o;
    FILE *plan_out = o->plan_out ? o->plan_out : stdout;
    const char *names[M->n ? M->n : 1];
    struct alloy_model *models[M->n ? M->n : 1];
    struct alloy_given_models g;
    given_now(M, names, models, &g);
    struct alloy_merge_options so = *o;
    struct alloy_stage_io io = {.given = &g, .label = s->name, .out_bytes = &s->bytes};
    so.out_dir = NULL;
    so.out_model = NULL;
    if (o->dry_run) fprintf(plan_out, "# stage %zu/%zu: %s%s%s\n", k + 1, M->n, s->name ? "'" : "the final merge",
                            s->name ? s->name : "", s->name ? "'" : "");
    if (!s->name) {
        note(M, "stage %zu/%zu: the final merge", k + 1, M->n);
        so.out_dir = o->out_dir;
        so.out_model = o->out_model;
        if (o->dry_run)
            fprintf(plan_out, "# -> %s\n", o->out_model ? "the caller's model in memory" : o->out_dir ? o->out_dir : "none");
        return alloy_merge_stage(&so, s->cfg, &io, M->err);
    }
    if (o->intermediate_dir) return run_to_folder(M, s, k, &so, &io, plan_out);
    note(M, "stage %zu/%zu: merging %s into memory", k + 1, M->n, s->name);
    uint64_t budget = o->memory_budget ? o->memory_budget : default_budget();
    if (*held >= budget)
        return alloy_err_set(M->err, ALLOY_ERR_UNSUPPORTED, "%s: name: '%s': the intermediates held already take the "
                             "whole memory budget of %llu bytes (give --intermediate-dir DIR, or raise "
                             "--memory-budget)", M->path, s->name, (unsigned long long)budget);
    io.mem_limit = budget - *held;
    io.shape_only = o->dry_run;
    so.out_model = &s->model;
    if (o->dry_run) fprintf(plan_out, "# -> kept in memory\n");
    int rc = alloy_merge_stage(&so, s->cfg, &io, M->err);
    if (!rc) {
        *held += s->bytes;
        s->fresh = 1;
        if (o->dry_run)
            fprintf(plan_out, "# '%s' held in memory: %llu bytes (%llu of the %llu-byte budget in use)\n", s->name,
                    (unsigned long long)s->bytes, (unsigned long long)*held, (unsigned long long)budget);
    }
    return rc;
}

/* After stage s: the results no later stage uses are let go. */
static void release_deps(struct multi *M, const struct stage *s, uint64_t *held)
{
    for (size_t k = 0; k < s->ndeps; k++) {
        struct stage *d = &M->st[s->deps[k]];
        if (--d->users) continue;
        if (!M->o->intermediate_dir) *held -= d->bytes;
        alloy_model_close(d->model);
        d->model = NULL;
    }
}

static int run_all(struct multi *M)
{
    uint64_t held = 0;
    if (M->o->intermediate_dir && !M->o->dry_run && mkdir(M->o->intermediate_dir, 0777) != 0 && errno != EEXIST)
        return alloy_err_set(M->err, ALLOY_ERR_IO, "%s: cannot create the intermediate folder: %s",
                             M->o->intermediate_dir, strerror(errno));
    for (size_t k = 0; k < M->norder; k++) {
        struct stage *s = &M->st[M->order[k]];
        if (M->o->interrupt && *M->o->interrupt)
            return alloy_err_set(M->err, ALLOY_ERR_INTERRUPTED, "interrupted before stage %zu of %zu", k + 1, M->n);
        int rc = run_stage(M, s, k, &held);
        if (rc) return rc;
        release_deps(M, s, &held);
    }
    return ALLOY_OK;
}

int alloy_merge_multi(const struct alloy_merge_options *o, const struct alloy_config *const *docs, size_t n,
                      struct alloy_err *err)
{
    struct multi M = {.o = o, .n = n, .path = n ? docs[0]->path : "<config>", .err = err};
    if (o->out_model) *o->out_model = NULL;
    M.st = alloy_xcalloc(n ? n : 1, sizeof *M.st);
    if (!M.st) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) M.st[i].cfg = docs[i];
    int rc = check_names(&M);
    if (!rc) rc = find_deps(&M);
    if (!rc) rc = order_stages(&M);
    if (!rc) rc = check_outputs(&M);
    if (!rc) rc = run_all(&M);
    for (size_t i = 0; i < n; i++) {
        alloy_model_close(M.st[i].model);
        free(M.st[i].deps);
    }
    free(M.st);
    free(M.order);
    return rc;
}
