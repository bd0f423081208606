/*
 * tensor_file.c — the format-independent side of tensor files.
 *
 * DESIGN
 *   Each format fills a struct alloy_tensor_file (tensor_file.h) and a table
 *   of its operations; everything here works on that base: lookups by index
 *   or name, bounds-checked reads, page release. Opening a path recognises
 *   the format from its first bytes, never from the file name.
 */
#include "core/internal.h"
#include "formats/formats.h"
#include "formats/tensor_file.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

int alloy_tensor_file_open(const char *path, struct alloy_tensor_file **out, struct alloy_err *err)
{
    uint8_t magic[4] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    ssize_t got = read(fd, magic, sizeof magic);
    close(fd);
    if (got == 4 && memcmp(magic, "GGUF", 4) == 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: a GGUF file; alloy reads safetensors files only so far",
                             path);
    if (got == 4 && memcmp(magic, "PK\x03\x04", 4) == 0) return alloy_pt_open(path, out, err); /* torch.save zip */
    if (got == 4 && memcmp(magic, "\x80\x02\x8a\x0a", 4) == 0) /* PROTO 2, then torch's legacy magic number */
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: expected a torch.save zip (PyTorch >= 1.6), found the "
                             "legacy PyTorch format; load and save it again with a recent PyTorch", path);
    struct alloy_st_file *f;
    int rc = alloy_st_open(path, &f, err);
    if (rc == ALLOY_OK) *out = alloy_st_file_base(f);
    return rc;
}

void alloy_tensor_file_close(struct alloy_tensor_file *f)
{
    if (f) f->ops->close(f);
}

const char *alloy_tensor_file_path(const struct alloy_tensor_file *f) { return f->path; }
const char *alloy_tensor_file_format(const struct alloy_tensor_file *f) { return f->ops->format; }
size_t alloy_tensor_file_count(const struct alloy_tensor_file *f) { return f->count; }

const struct alloy_tensor *alloy_tensor_file_tensor(const struct alloy_tensor_file *f, size_t i)
{
    return i < f->count ? &f->tensors[i] : NULL;
}

const struct alloy_tensor *alloy_tensor_file_find(const struct alloy_tensor_file *f, const char *name)
{
    size_t i;
    return alloy_strmap_get(&f->index, name, &i) ? &f->tensors[i] : NULL;
}

int alloy_tensor_pread(const struct alloy_tensor *t, uint64_t off, void *dst, size_t len, struct alloy_err *err)
{
    const struct alloy_tensor_file *f = t->file;
    if (off > t->nbytes || len > t->nbytes - off)
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: tensor '%s': read of %zu bytes at %llu is outside the tensor",
                             f ? f->path : "?", t->name, len, (unsigned long long)off);
    if (!f) {
        memcpy(dst, t->data + off, len);
        return ALLOY_OK;
    }
    return f->ops->pread(f, t, off, dst, len, err);
}

void alloy_tensor_release_range(const struct alloy_tensor *t, uint64_t off, uint64_t len)
{
    if (t->file) t->file->ops->release_range(t->file, t, off, len);
}

void alloy_tensor_release(const struct alloy_tensor *t) { alloy_tensor_release_range(t, 0, t->nbytes); }
