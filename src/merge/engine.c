/*
 * engine.c — execute a merge plan: stream every tensor into its output shard.
 *
 * DESIGN
 *   The output folder is built as a hidden sibling "<out>.alloy-tmp-XXXXXX"
 *   and renamed into place only after every file is written and fsynced, so
 *   a failure or an interrupt leaves either the old folder or the complete
 *   new one, never a partial folder that looks finished. The temporary
 *   folder is removed on any failure. Inputs are opened read-only and an
 *   output folder that is one of the inputs is refused.
 *
 *   Each shard file is created at its final size, then its header and
 *   tensors go through the shard's writer (writer.h: staged in aligned
 *   segments, each written whole by the writer's I/O thread with O_DIRECT
 *   where the file system allows); tensors are merged chunk by chunk on the
 *   thread pool, each chunk converted to the output dtype straight into the
 *   writer's segment at its final offset (fill_out), so no tensor is ever
 *   held whole in memory. Inputs are read with pread straight into the
 *   chunk buffers (widened to float32 there, or left as stored for a method
 *   that takes bfloat16 inputs raw: method.h raw_bf16), so no input page is
 *   mapped into the process (the mapping is only touched for F64 inputs,
 *   embedding blocks and copied tensors, whose pages are dropped with
 *   madvise DONTNEED after each chunk and tensor).
 *
 *   Memory bound: threads x (inputs + 1) x chunk x 4 bytes of scratch (2
 *   threads, 3 models: 8 MiB), kept by the pool across tensors, plus the
 *   per-chunk scan accumulators, the methods' fixed-size state and the
 *   writer's staging segments (16 MiB).
 */
#include "core/internal.h"
#include "merge/output.h"
#include "merge/plan.h"
#include "merge/writer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <unistd.h>

struct tensor_io {
    const struct alloy_plan *plan;
    const struct alloy_plan_tensor *t;
    struct alloy_writer *w;       /* the shard's writes (writer.h) */
    uint64_t data_start;          /* file offset of the shard's data buffer */
    int round_to;                 /* working dtype rounding: -1 none, else dtype */
    volatile int *interrupt;
    atomic_ullong nonfinite;      /* NaN/Inf values written (warned about once per tensor) */
};

/* ------------------------------------------------------------ chunk I/O */

/* Input `input`'s elements [e0, e1) from its source, then rounded to the working dtype. */
static int load_chunk(void *ctx, int input, uint64_t e0, uint64_t e1, float *dst, int raw, struct alloy_err *err)
{
    const struct tensor_io *io = ctx;
    const struct alloy_plan_tensor *t = io->t;
    const struct alloy_input *src = &t->inputs[input];
    if (io->interrupt && *io->interrupt)
        return alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "interrupted while merging '%s'", t->name);
    int rc = alloy_input_read(src, e0, e1, dst, raw ? ALLOY_READ_RAW_BF16 : ALLOY_READ_F32, err);
    if (rc || raw) return rc;
    if (io->round_to >= 0 && (enum alloy_dtype)io->round_to != src->t->dtype) {
        /* mergekit casts inputs to the working dtype before merging */
        for (uint64_t i = 0; i < e1 - e0; i++) {
            if (io->round_to == ALLOY_DTYPE_BF16) dst[i] = alloy_bf16_to_f32(alloy_f32_to_bf16(dst[i]));
            else if (io->round_to == ALLOY_DTYPE_F16) dst[i] = alloy_f16_to_f32(alloy_f32_to_f16(dst[i]));
        }
    }
    return ALLOY_OK;
}

/* A chunk's output bytes, converted from float32 as the writer asks for them (writer.h): through a
 * buffer that stays in L1, then streamed into the staging segment; an element a piece boundary cuts
 * is converted whole and only its bytes in the piece copied. */
struct out_fill {
    const float *src;
    enum alloy_dtype dtype;
    size_t esize;
    uint64_t nonfinite;     /* NaN/Inf values converted, each element counted once */
};

static void fill_out(void *ctx, uint8_t *dst, size_t from, size_t n)
{
    struct out_fill *f = ctx;
    uint8_t tmp[16384] __attribute__((aligned(64)));
    size_t e = from / f->esize, skip = from % f->esize;
    while (n) {
        size_t k = (skip + n + f->esize - 1) / f->esize; /* elements touching the rest */
        if (k > sizeof tmp / f->esize) k = sizeof tmp / f->esize;
        f->nonfinite += alloy_from_f32_count(f->dtype, f->src + e, tmp, k);
        if (skip) { /* counted with the piece before, which holds its first byte */
            uint32_t u;
            memcpy(&u, f->src + e, 4);
            f->nonfinite -= (u & 0x7f800000u) == 0x7f800000u;
        }
        size_t take = k * f->esize - skip < n ? k * f->esize - skip : n;
        alloy_copy_stream(dst, tmp + skip, take);
        dst += take;
        n -= take;
        e += k;
        skip = 0;
    }
}

static int store_chunk(void *ctx, uint64_t e0, uint64_t e1, float *src, struct alloy_err *err)
{
    const struct tensor_io *io = ctx;
    const struct alloy_plan_tensor *t = io->t;
    size_t esize = alloy_dtype_traits(t->dtype)->bits / 8;
    struct out_fill f = {src, t->dtype, esize, 0};
    int rc = alloy_writer_submit_fill(io->w, io->data_start + t->offset + e0 * esize, (size_t)(e1 - e0) * esize,
                                      fill_out, &f, err);
    if (f.nonfinite) atomic_fetch_add(&((struct tensor_io *)ctx)->nonfinite, f.nonfinite);
    return rc;
}

static int copy_tensor(const struct tensor_io *io, struct alloy_err *err)
{
    const struct alloy_tensor *src = io->t->inputs[0].t;
    const uint64_t step = (uint64_t)8 << 20;
    for (uint64_t off = 0; off < src->nbytes; off += step) {
        if (io->interrupt && *io->interrupt)
            return alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "interrupted while copying '%s'", io->t->name);
        uint64_t n = src->nbytes - off < step ? src->nbytes - off : step;
        int rc = alloy_writer_submit(io->w, src->data + off, (size_t)n, io->data_start + io->t->offset + off, err);
        alloy_tensor_release_range(src, off, n);
        if (rc) return rc;
    }
    return ALLOY_OK;
}

/* ------------------------------------------------------------ shards */

static char *shard_header(const struct alloy_plan *p, const struct alloy_plan_shard *s, size_t *len)
{
    json_t *root = json_object();
    for (size_t i = s->first; i < s->first + s->count && root; i++) {
        const struct alloy_plan_tensor *t = &p->tensors[i];
        json_t *shape = json_array(), *offs = json_array(), *e = json_object();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_array_append_new(offs, json_integer((json_int_t)t->offset));
        json_array_append_new(offs, json_integer((json_int_t)(t->offset + t->nbytes)));
        json_object_set_new(e, "dtype", json_string(alloy_dtype_traits(t->dtype)->name));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", offs);
        json_object_set_new(root, t->name, e);
    }
    json_t *meta = json_object();
    json_object_set_new(meta, "format", json_string("pt"));
    json_object_set_new(root, "__metadata__", meta);
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text) return NULL;
    size_t n = strlen(text), padded = (n + 7) & ~(size_t)7;
    char *buf = alloy_xmalloc(8 + padded);
    if (buf) {
        uint64_t v = padded;
        for (int i = 0; i < 8; i++) buf[i] = (char)(v >> (8 * i));
        memcpy(buf + 8, text, n);
        memset(buf + 8 + n, ' ', padded - n);
        *len = 8 + padded;
    }
    free(text);
    return buf;
}

static void report(const struct alloy_merge_options *o, struct alloy_progress *pr)
{
    if (o->progress) o->progress(o->progress_user, pr);
}

static int write_shard(const struct alloy_plan *p, size_t si, const char *dir, struct alloy_pool *pool,
                       const struct alloy_merge_options *o, struct alloy_progress *pr, struct alloy_err *err)
{
    const struct alloy_plan_shard *s = &p->shards[si];
    char *path = alloy_xasprintf("%s/%s", dir, s->file);
    size_t hlen = 0;
    char *hdr = shard_header(p, s, &hlen);
    if (!path || !hdr) {
        free(path);
        free(hdr);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory building the header of %s", s->file);
    }
    int rc = ALLOY_OK;
    struct alloy_writer *w = NULL;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        goto out;
    }
    if (!(w = alloy_writer_new(fd, path, ALLOY_WRITER_DIRECT, err))) {
        rc = err ? (int)err->status : ALLOY_ERR_NOMEM;
        close(fd);
        goto out;
    }
    rc = alloy_writer_submit(w, hdr, hlen, 0, err);
    if (!rc && s->data_bytes && ftruncate(fd, (off_t)(hlen + s->data_bytes)) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot size the file to %llu bytes: %s", path,
                           (unsigned long long)(hlen + s->data_bytes), strerror(errno));
    for (size_t i = s->first; i < s->first + s->count && !rc; i++) {
        const struct alloy_plan_tensor *t = &p->tensors[i];
        struct tensor_io io = {.plan = p, .t = t, .w = w, .data_start = hlen,
                               .round_to = -1, .interrupt = o->interrupt};
        if (p->cfg->has_dtype && (p->cfg->dtype == ALLOY_DTYPE_BF16 || p->cfg->dtype == ALLOY_DTYPE_F16))
            io.round_to = (int)p->cfg->dtype;
        if (o->interrupt && *o->interrupt) {
            rc = alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "interrupted before tensor '%s'", t->name);
            break;
        }
        if (t->copy) {
            rc = copy_tensor(&io, err);
        } else {
            struct alloy_merge_job job;
            const char *names[t->n > 0 ? t->n : 1]; /* every input named, however many the config lists */
            for (int k = 0; k < t->n; k++) names[k] = alloy_model_ref(p->models[t->inputs[k].model]);
            alloy_plan_job(p, i, o->has_seed ? o->seed : 0, names, &job);
            job.inputs_bf16 = io.round_to < 0 || io.round_to == ALLOY_DTYPE_BF16;
            for (int k = 0; k < t->n; k++)
                job.inputs_bf16 &= alloy_input_raw_bf16(&t->inputs[k]);
            rc = alloy_method_execute(p->method, &job, load_chunk, &io, store_chunk, &io, pool, 0, err);
            unsigned long long bad = atomic_load(&io.nonfinite);
            if (!rc && bad && o->log) {
                char msg[600];
                snprintf(msg, sizeof msg, "tensor '%.400s': %llu of %llu output values are NaN or Inf", t->name, bad,
                         (unsigned long long)t->numel);
                o->log(o->log_user, 0, msg);
            }
        }
        for (int k = 0; k < t->n; k++) alloy_input_release(&t->inputs[k]);
        pr->tensors_done++;
        pr->bytes_done += t->nbytes;
        report(o, pr);
    }
    if (!rc) rc = alloy_writer_flush(w, err); /* the staged last segment; waits for the I/O thread */
    if (!rc && fsync(fd) != 0) rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    alloy_writer_free(w);
    if (fd >= 0 && close(fd) != 0 && !rc)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: close failed: %s", path, strerror(errno));
out:
    free(path);
    free(hdr);
    return rc;
}

/* ------------------------------------------------------------ folder handling */

static int remove_tree(const char *path)
{
    struct stat st; /* a symlink is removed, never followed: its target is not ours */
    if (lstat(path, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *sub = alloy_xasprintf("%s/%s", path, e->d_name);
        if (!sub) continue;
        remove_tree(sub);
        free(sub);
    }
    closedir(d);
    return rmdir(path);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static char *parent_dir(const char *path)
{
    char *copy = alloy_xstrdup(path);
    if (!copy) return NULL;
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/') copy[--n] = '\0';
    char *slash = strrchr(copy, '/');
    if (!slash) { free(copy); return alloy_xstrdup("."); }
    if (slash == copy) slash[1] = '\0';
    else *slash = '\0';
    return copy;
}

/* 1 when path a is b or lies inside b (both canonical). */
static int path_within(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (lb == 1 && b[0] == '/') return 1;
    return la >= lb && strncmp(a, b, lb) == 0 && (a[lb] == '\0' || a[lb] == '/');
}

/* Refuses an output folder that is (or contains, or lies inside) an input
 * folder, or that holds an input file (an HF-cache snapshot links its files
 * into blobs/): publishing replaces the output path as a whole. */
static int check_out_dir(const struct alloy_plan *p, const char *out, struct alloy_err *err)
{
    char real_out[PATH_MAX], real_parent[PATH_MAX];
    char *parent = parent_dir(out);
    if (!parent) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!alloy_is_dir(parent) || !realpath(parent, real_parent)) {
        int rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: the parent folder %s does not exist", out, parent);
        free(parent);
        return rc;
    }
    free(parent);
    if (!realpath(out, real_out)) { /* not there yet: where it will be */
        const char *base = strrchr(out, '/');
        base = base ? base + 1 : out;
        if ((size_t)snprintf(real_out, sizeof real_out, "%s/%s", strcmp(real_parent, "/") ? real_parent : "", base) >=
            sizeof real_out)
            return alloy_err_set(err, ALLOY_ERR_IO, "%s: path too long", out);
    }
    for (size_t i = 0; i < p->nmodels; i++) {
        const struct alloy_model *m = p->models[i];
        char real_in[PATH_MAX];
        if (!realpath(alloy_model_dir(m), real_in)) continue;
        int same = strcmp(real_out, real_in) == 0;
        if (same || path_within(real_in, real_out) || path_within(real_out, real_in))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: output folder %s input model %s; choose another output "
                                 "folder (alloy never overwrites its inputs)", out,
                                 same ? "is the" : path_within(real_in, real_out) ? "contains the" : "lies inside the",
                                 alloy_model_ref(m));
        const struct alloy_tensor_file *last = NULL;
        for (size_t k = 0; k < alloy_model_count(m); k++) {
            const struct alloy_tensor_file *f = alloy_model_tensor(m, k)->file;
            char real_file[PATH_MAX];
            if (f == last || !realpath(alloy_tensor_file_path(f), real_file)) continue;
            last = f;
            if (path_within(real_file, real_out))
                return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: output folder holds %s, a file of input model %s; "
                                     "choose another output folder (alloy never overwrites its inputs)", out,
                                     real_file, alloy_model_ref(m));
        }
    }
    struct stat st;
    if (stat(out, &st) == 0 && !S_ISDIR(st.st_mode)) /* publishing would delete it */
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: exists and is not a folder; alloy only replaces a folder "
                             "(move it away or choose another output path)", out);
    return ALLOY_OK;
}

/* Moves tmp into place as out. An existing out is replaced only now, as a whole. */
static int publish(const char *tmp, const char *out, struct alloy_err *err)
{
    char *old = NULL;
    if (alloy_is_dir(out) || access(out, F_OK) == 0) {
        old = alloy_xasprintf("%s.alloy-old-%ld", out, (long)getpid());
        if (!old) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (rename(out, old) != 0) {
            int rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot move the existing folder aside: %s", out, strerror(errno));
            free(old);
            return rc;
        }
    }
    if (rename(tmp, out) != 0) {
        int rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot rename %s into place: %s", out, tmp, strerror(errno));
        if (old) rename(old, out);
        free(old);
        return rc;
    }
    if (old) {
        remove_tree(old);
        free(old);
    }
    char *parent = parent_dir(out);
    if (parent) fsync_dir(parent);
    free(parent);
    return ALLOY_OK;
}

/* ------------------------------------------------------------ entry */

void alloy_merge_options_init(struct alloy_merge_options *o)
{
    memset(o, 0, sizeof *o);
    o->copy_tokenizer = 1;
    o->write_model_card = 1;
}

int alloy_merge(const struct alloy_merge_options *opts, struct alloy_err *err)
{
    if (!opts->config_path || (!opts->out_dir && !opts->dry_run))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "a config file and an output folder are required");
    struct alloy_merge_options oo = *opts;
    const struct alloy_merge_options *o = &oo;
    char *out_dir = alloy_xstrdup(opts->out_dir ? opts->out_dir : ".");
    if (!out_dir) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t n = strlen(out_dir); n > 1 && out_dir[n - 1] == '/';) out_dir[--n] = '\0';
    oo.out_dir = out_dir;
    struct alloy_config *cfg = NULL;
    struct alloy_plan *plan = NULL;
    struct alloy_pool *pool = NULL;
    char *tmp = NULL;
    int rc = alloy_config_load(o->config_path, &cfg, err);
    if (rc) { free(out_dir); return rc; }
    rc = alloy_plan_build(cfg, o, &plan, err);
    if (rc) goto out;
    if (o->dry_run) {
        alloy_plan_print(plan, o->plan_out ? o->plan_out : stdout);
        goto out;
    }
    rc = check_out_dir(plan, o->out_dir, err);
    if (rc) goto out;
    tmp = alloy_xasprintf("%s.alloy-tmp-XXXXXX", o->out_dir);
    if (!tmp) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); goto out; }
    if (!mkdtemp(tmp)) {
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot create a temporary folder next to it: %s", o->out_dir,
                           strerror(errno));
        free(tmp);
        tmp = NULL;
        goto out;
    }
    pool = alloy_pool_new(o->threads);
    if (!pool) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "cannot start %d threads", o->threads); goto out; }
    struct alloy_progress pr = {.tensors_total = plan->ntensors, .bytes_total = plan->total_bytes};
    report(o, &pr);
    for (size_t s = 0; s < plan->nshards && !rc; s++) rc = write_shard(plan, s, tmp, pool, o, &pr, err);
    if (!rc) rc = alloy_output_write_files(plan, o, tmp, err);
    if (!rc && fsync_dir(tmp) != 0) rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (!rc && o->interrupt && *o->interrupt) rc = alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "interrupted");
    if (!rc) { /* private (mkdtemp: 0700) while incomplete; published with the usual umask permissions */
        mode_t um = umask(0);
        umask(um);
        if (chmod(tmp, 0777 & ~um) != 0)
            rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: chmod failed: %s", tmp, strerror(errno));
    }
    if (!rc) rc = publish(tmp, o->out_dir, err);
out:
    if (rc && tmp) remove_tree(tmp);
    free(tmp);
    alloy_pool_free(pool);
    alloy_plan_free(plan);
    alloy_config_free(cfg);
    free(out_dir);
    return rc;
}
