/*
 * folder.c — the folder sink: a Hugging Face model folder of safetensors
 * shards, index, config.json, tokenizer files and model card.
 *
 * DESIGN
 *   The plan fixes every tensor's shard and offset, so each shard file is
 *   created at its final size with its header first, and every tensor's
 *   bytes go straight to their final place: converted from float32 to the
 *   output dtype directly into the shard writer's staging segment
 *   (writer.h: aligned 2 MiB segments written whole by the writer's own I/O
 *   thread, with O_DIRECT where the file system allows), so no tensor is
 *   ever held whole in memory. A shard is flushed, fsynced and closed when
 *   the first tensor of the next one begins, and the last one on commit.
 *
 *   Atomicity (publish.c): everything is written into a hidden temporary
 *   sibling of the output folder (of the folder it links to, when the output
 *   path is a symlink), which commit fsyncs and renames into place and abort
 *   removes.
 */
#include "core/internal.h"
#include "formats/formats.h"
#include "sinks/output.h"
#include "sinks/publish.h"
#include "sinks/sink.h"
#include "sinks/writer.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

struct folder_sink {
    struct alloy_sink base;
    const struct alloy_merge_options *o;
    const struct alloy_plan *p;
    char *out;               /* the folder published: o->out_dir, or the folder it links to */
    char *tmp;               /* the temporary folder, NULL until begin */
    size_t shard;            /* the open shard (valid while fd >= 0) */
    int fd;
    char *path;              /* its path */
    struct alloy_writer *w;  /* its writes */
    uint64_t data_start;     /* file offset of its data buffer (= header length) */
};

static int open_shard(struct folder_sink *f, size_t si, struct alloy_err *err)
{
    const struct alloy_plan *p = f->p;
    const struct alloy_plan_shard *s = &p->shards[si];
    size_t hlen = 0;
    uint8_t *hdr = alloy_plan_shard_header(p, si, &hlen);
    if (!hdr || !(f->path = alloy_xasprintf("%s/%s", f->tmp, s->file))) {
        free(hdr);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory building the header of %s", s->file);
    }
    int rc = ALLOY_OK;
    f->shard = si;
    f->data_start = hlen;
    f->fd = open(f->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot create: %s", f->path, strerror(errno));
    else if (!(f->w = alloy_writer_new(f->fd, f->path, ALLOY_WRITER_DIRECT, err)))
        rc = err ? (int)err->status : ALLOY_ERR_NOMEM;
    if (!rc) rc = alloy_writer_submit(f->w, hdr, hlen, 0, err);
    if (!rc && s->data_bytes && ftruncate(f->fd, (off_t)(hlen + s->data_bytes)) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot size the file to %llu bytes: %s", f->path,
                           (unsigned long long)(hlen + s->data_bytes), strerror(errno));
    free(hdr);
    return rc;
}

/* Flushes, fsyncs and closes the open shard (write = 0: only frees it, after an error). */
static int close_shard(struct folder_sink *f, int write, struct alloy_err *err)
{
    int rc = ALLOY_OK;
    if (f->fd < 0) return rc;
    if (write && f->w) rc = alloy_writer_flush(f->w, err); /* the staged last segment; waits for the I/O thread */
    if (write && !rc && fsync(f->fd) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync failed: %s", f->path, strerror(errno));
    alloy_writer_free(f->w);
    f->w = NULL;
    if (close(f->fd) != 0 && write && !rc)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: close failed: %s", f->path, strerror(errno));
    f->fd = -1;
    free(f->path);
    f->path = NULL;
    return rc;
}

static int folder_begin(struct alloy_sink *s, const struct alloy_plan *p, struct alloy_err *err)
{
    struct folder_sink *f = (struct folder_sink *)s;
    f->p = p;
    free(f->out);
    f->out = NULL;
    int rc = alloy_out_target(f->o->out_dir, &f->out, err);
    if (!rc) rc = alloy_check_out_dir(p, f->out, f->o->overwrite, err);
    if (!rc) rc = alloy_output_check_sources(p, err);
    return rc ? rc : alloy_make_tmp_dir(f->out, &f->tmp, err);
}

static int folder_tensor_begin(struct alloy_sink *s, size_t i, struct alloy_err *err)
{
    struct folder_sink *f = (struct folder_sink *)s;
    size_t si = (size_t)f->p->tensors[i].shard;
    if (f->fd >= 0 && f->shard == si) return ALLOY_OK;
    int rc = close_shard(f, 1, err);
    return rc ? rc : open_shard(f, si, err);
}

static int folder_write(struct alloy_sink *s, size_t i, uint64_t e0, uint64_t e1, float *src, uint64_t *nonfinite,
                        struct alloy_err *err)
{
    struct folder_sink *f = (struct folder_sink *)s;
    const struct alloy_plan_tensor *t = &f->p->tensors[i];
    size_t esize = alloy_dtype_traits(t->dtype)->block_bytes; /* merged outputs are plain float types */
    *nonfinite = 0;
    return alloy_writer_submit_f32(f->w, f->data_start + t->offset + e0 * esize, src, (size_t)(e1 - e0), t->dtype,
                                   nonfinite, err);
}

static int folder_write_bytes(struct alloy_sink *s, size_t i, uint64_t off, const void *buf, size_t len,
                              struct alloy_err *err)
{
    struct folder_sink *f = (struct folder_sink *)s;
    return alloy_writer_submit(f->w, buf, len, f->data_start + f->p->tensors[i].offset + off, err);
}

static int folder_commit(struct alloy_sink *s, struct alloy_err *err)
{
    struct folder_sink *f = (struct folder_sink *)s;
    int rc = close_shard(f, 1, err);
    if (!rc) rc = alloy_output_write_files(f->p, f->o, f->tmp, err);
    if (!rc && f->o->interrupt && *f->o->interrupt) rc = alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "interrupted");
    if (!rc) rc = alloy_seal_tmp_dir(f->tmp, err);
    if (!rc) rc = alloy_publish_dir(f->tmp, f->out, err);
    if (!rc) {
        free(f->tmp);
        f->tmp = NULL;
    }
    return rc;
}

static void folder_abort(struct alloy_sink *s)
{
    struct folder_sink *f = (struct folder_sink *)s;
    close_shard(f, 0, NULL);
    if (f->tmp) alloy_remove_tree(f->tmp);
    free(f->tmp);
    f->tmp = NULL;
}

static void folder_free(struct alloy_sink *s)
{
    folder_abort(s); /* nothing left after a commit */
    free(((struct folder_sink *)s)->out);
    free(s);
}

static const struct alloy_sink_ops g_folder = {
    "folder", folder_begin, folder_tensor_begin, folder_write, folder_write_bytes, NULL, folder_commit,
    folder_abort, folder_free,
};

struct alloy_sink *alloy_sink_folder_new(const struct alloy_merge_options *o, struct alloy_err *err)
{
    struct folder_sink *f = alloy_xcalloc(1, sizeof *f);
    if (!f) {
        alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        return NULL;
    }
    f->base.ops = &g_folder;
    f->o = o;
    f->fd = -1;
    return &f->base;
}
