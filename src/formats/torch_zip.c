/*
 * torch_zip.c — PyTorch checkpoints (torch.save, pytorch_model.bin) as tensor files.
 *
 * DESIGN
 *   Since PyTorch 1.6 torch.save writes a zip archive whose entries sit in
 *   one folder named after the archive (`archive/` or the file's stem):
 *       <a>/data.pkl     the pickled state dict (pickle.c interprets it)
 *       <a>/data/<key>   the raw bytes of storage <key>, one entry each
 *       <a>/byteorder, <a>/version, <a>/.data/serialization_id, ...
 *   Every entry is stored uncompressed and aligned to 64 bytes, so a tensor
 *   is a view (element offset, shape, stride) of a storage entry's bytes
 *   and is read in place from the mapped file, like a safetensors tensor.
 *
 *   The zip is read from its central directory (the end record, zip64
 *   records when a field overflows 32 bits), never by scanning local
 *   headers. Each entry must be stored (method 0, not encrypted), its
 *   compressed and uncompressed sizes equal, its local header and data
 *   inside the file and before the central directory: no entry can claim
 *   more bytes than the file holds, so there is nothing to inflate and no
 *   zip bomb. CRCs are not computed (that would read every byte at open).
 *   A tensor's view must be contiguous (row-major, size-1 dimensions free)
 *   and lie inside its storage, whose entry must hold exactly numel x
 *   itemsize bytes, as torch writes it.
 */
#include "core/internal.h"
#include "core/strmap.h"
#include "formats/formats.h"
#include "formats/mapped.h"
#include "formats/pickle.h"
#include "formats/tensor_file.h"

#include <stdio.h>

#define ZIP_MAX_ENTRIES ((size_t)1 << 22)

struct zip_entry {
    char *name;
    uint64_t data_off, size;
};

struct alloy_pt_file {
    struct alloy_tensor_file base; /* path, tensors in pickle order, name index */
    struct alloy_mapped m;
    struct zip_entry *entries;
    size_t nentries;
    struct alloy_strmap by_name; /* entry name -> position */
    char **names;                /* tensor names (owned) */
};

static uint64_t rd(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* ------------------------------------------------------------ the central directory */

struct cd_pos {
    uint64_t off, size, count, end; /* end: where the end records start; the directory must lie before */
};

/* From the disk numbers on, the end record (w = 2) and the zip64 end record (w = 4) list the same fields,
 * the zip64 ones wider: this disk, the directory's disk, entries on this disk, entries, size, offset. */
static int end_fields(const uint8_t *q, int w, const char *label, struct cd_pos *cd, struct alloy_err *err)
{
    int cw = w == 2 ? 2 : 8, sw = w == 2 ? 4 : 8;
    if (rd(q, w) != 0 || rd(q + w, w) != 0 || rd(q + 2 * w, cw) != rd(q + 2 * w + cw, cw))
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: zip: expected a single-disk archive, found a split one",
                             label);
    cd->count = rd(q + 2 * w + cw, cw);
    cd->size = rd(q + 2 * w + 2 * cw, sw);
    cd->off = rd(q + 2 * w + 2 * cw + sw, sw);
    return ALLOY_OK;
}

static int zip64_end(const struct alloy_pt_file *f, uint64_t eocd, struct cd_pos *cd, struct alloy_err *err)
{
    const uint8_t *m = f->m.map;
    const char *label = f->base.path;
    if (eocd < 20 || rd(m + eocd - 20, 4) != 0x07064b50)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: zip: expected a zip64 end locator before the end record, "
                             "found none", label);
    uint64_t z = rd(m + eocd - 20 + 8, 8);
    if (z > eocd - 20 || eocd - 20 - z < 56 || rd(m + z, 4) != 0x06064b50)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: zip: expected a zip64 end record at byte %llu, found none",
                             label, (unsigned long long)z);
    cd->end = z;
    return end_fields(m + z + 16, 4, label, cd, err);
}

/* Finds the end-of-central-directory record (the last one whose comment reaches the end of the file). */
static int find_directory(const struct alloy_pt_file *f, struct cd_pos *cd, struct alloy_err *err)
{
    const uint8_t *m = f->m.map;
    size_t size = f->m.size;
    const char *label = f->base.path;
    if (size < 22)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: zip: expected an end record (22 bytes), found a %zu-byte file",
                             label, size);
    size_t lo = size - 22 > 65535 ? size - 22 - 65535 : 0, i = size - 22 + 1;
    while (i-- > lo)
        if (rd(m + i, 4) == 0x06054b50 && i + 22 + rd(m + i + 20, 2) == size) break;
    if (i < lo || i == (size_t)-1 || rd(m + i, 4) != 0x06054b50)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: zip: expected an end-of-central-directory record, found none "
                             "(truncated file?)", label);
    cd->end = i;
    int rc = end_fields(m + i + 4, 2, label, cd, err);
    if (rc) return rc;
    if (cd->count == 0xffff || cd->size == 0xffffffff || cd->off == 0xffffffff) {
        if ((rc = zip64_end(f, i, cd, err))) return rc;
    }
    if (cd->off > cd->end || cd->size > cd->end - cd->off || cd->count > cd->size / 46 || cd->count > ZIP_MAX_ENTRIES)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: zip: expected a central directory of %llu entries inside the "
                             "file, found %llu bytes at byte %llu", label, (unsigned long long)cd->count,
                             (unsigned long long)cd->size, (unsigned long long)cd->off);
    return ALLOY_OK;
}

/* Reads the zip64 extra field of a central record: the 64-bit values of the fields that hold 0xffffffff. */
static int zip64_extra(const uint8_t *x, size_t xlen, uint64_t *usize, uint64_t *csize, uint64_t *lho)
{
    uint64_t *want[3] = {usize, csize, lho};
    for (size_t p = 0; p + 4 <= xlen;) {
        size_t id = rd(x + p, 2), n = rd(x + p + 2, 2);
        if (n > xlen - p - 4) return -1;
        if (id == 1) {
            size_t k = 0;
            for (int w = 0; w < 3; w++) {
                if (*want[w] != 0xffffffff) continue;
                if (k + 8 > n) return -1;
                *want[w] = rd(x + p + 4 + k, 8);
                k += 8;
            }
            return 0;
        }
        p += 4 + n;
    }
    return *usize == 0xffffffff || *csize == 0xffffffff || *lho == 0xffffffff ? -1 : 0;
}

/* Checks the entry's local header and sets its data range. name: the central record's name. */
static int local_header(const struct alloy_pt_file *f, const struct cd_pos *cd, uint64_t lho, struct zip_entry *e,
                        struct alloy_err *err)
{
    const uint8_t *m = f->m.map;
    size_t nlen = strlen(e->name);
    if (lho > cd->off || cd->off - lho < 30 || rd(m + lho, 4) != 0x04034b50)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a local header at byte %llu, found none",
                             f->base.path, e->name, (unsigned long long)lho);
    uint64_t data = lho + 30 + rd(m + lho + 26, 2) + rd(m + lho + 28, 2);
    if (data > cd->off || rd(m + lho + 26, 2) != nlen || memcmp(m + lho + 30, e->name, nlen) != 0)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a local header naming the entry, found another "
                             "at byte %llu", f->base.path, e->name, (unsigned long long)lho);
    if (e->size > cd->off - data)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected %llu bytes of data before the central directory "
                             "(byte %llu), found %llu", f->base.path, e->name, (unsigned long long)e->size,
                             (unsigned long long)cd->off, (unsigned long long)(cd->off - data));
    e->data_off = data;
    return ALLOY_OK;
}

/* One central record at *p (advanced past it) into e. */
static int central_record(struct alloy_pt_file *f, const struct cd_pos *cd, uint64_t *p, struct zip_entry *e,
                          struct alloy_err *err)
{
    const uint8_t *m = f->m.map, *r = m + *p;
    const char *label = f->base.path;
    uint64_t left = cd->off + cd->size - *p;
    if (left < 46 || rd(r, 4) != 0x02014b50)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: zip: expected a central directory record at byte %llu, found "
                             "none", label, (unsigned long long)*p);
    size_t nlen = rd(r + 28, 2), xlen = rd(r + 30, 2), clen = rd(r + 32, 2);
    if (46 + nlen + xlen + clen > left || nlen == 0 || memchr(r + 46, 0, nlen))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: zip: expected a named central record inside the directory at "
                             "byte %llu, found a bad one", label, (unsigned long long)*p);
    if (!(e->name = alloy_xmalloc(nlen + 1))) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", label);
    memcpy(e->name, r + 46, nlen);
    e->name[nlen] = '\0';
    for (size_t i = 0; i < nlen; i++) if ((unsigned char)e->name[i] < 0x20) e->name[i] = '?'; /* one-line messages */
    uint64_t usize = rd(r + 24, 4), csize = rd(r + 20, 4), lho = rd(r + 42, 4);
    unsigned flags = (unsigned)rd(r + 8, 2), method = (unsigned)rd(r + 10, 2);
    *p += 46 + nlen + xlen + clen;
    if (zip64_extra(r + 46 + nlen, xlen, &usize, &csize, &lho) != 0)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected a zip64 extra field with its sizes, found none",
                             label, e->name);
    if (flags & 1)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected an unencrypted entry, found an encrypted one",
                             label, e->name);
    if (method != 0 || csize != usize)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected a stored entry (torch.save never compresses), "
                             "found compression method %u, %llu bytes for %llu", label, e->name, method,
                             (unsigned long long)csize, (unsigned long long)usize);
    e->size = usize;
    return local_header(f, cd, lho, e, err);
}

static int read_directory(struct alloy_pt_file *f, struct alloy_err *err)
{
    struct cd_pos cd = {0};
    int rc = find_directory(f, &cd, err);
    if (rc) return rc;
    if (!(f->entries = alloy_xcalloc(cd.count ? cd.count : 1, sizeof *f->entries)))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", f->base.path);
    uint64_t p = cd.off;
    for (uint64_t i = 0; i < cd.count; i++) {
        struct zip_entry *e = &f->entries[f->nentries];
        int dup = 0;
        rc = central_record(f, &cd, &p, e, err);
        f->nentries++; /* owns e->name from here, even on failure */
        if (rc) return rc;
        if (alloy_strmap_put(&f->by_name, e->name, f->nentries - 1, &dup) != 0)
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", f->base.path);
        if (dup) return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: duplicate zip entry", f->base.path, e->name);
    }
    return ALLOY_OK;
}

/* ------------------------------------------------------------ tensors */

static const struct zip_entry *entry(const struct alloy_pt_file *f, const char *prefix, const char *rest)
{
    char name[200];
    size_t i;
    if ((size_t)snprintf(name, sizeof name, "%s/%s", prefix, rest) >= sizeof name) return NULL;
    return alloy_strmap_get(&f->by_name, name, &i) ? &f->entries[i] : NULL;
}

/* Row-major strides of p's shape into buf, or p's own strides (own != 0). */
static const char *strides_str(const struct alloy_pickle_tensor *p, int own, char *buf, size_t cap)
{
    size_t a = 0;
    buf[0] = '\0';
    for (int k = 0; k < p->ndim && a < cap - 24; k++) {
        int64_t e = 1;
        for (int j = k + 1; j < p->ndim; j++) e *= p->shape[j];
        a += (size_t)snprintf(buf + a, cap - a, "%s%lld", k ? "," : "", (long long)(own ? p->stride[k] : e));
    }
    return buf;
}

/* Row-major, except that a dimension of size 1 may have any stride (as torch's is_contiguous). */
static int check_contiguous(const struct alloy_pt_file *f, const struct alloy_pickle_tensor *p, struct alloy_err *err)
{
    int64_t want = 1;
    for (int d = p->ndim - 1; d >= 0; d--) {
        if (p->shape[d] == 0) return ALLOY_OK; /* no elements: any stride */
        if (p->shape[d] != 1 && p->stride[d] != want) {
            char got[200], exp[200];
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected a contiguous tensor (stride [%s]), found "
                                 "stride [%s]", f->base.path, p->name, strides_str(p, 0, exp, sizeof exp),
                                 strides_str(p, 1, got, sizeof got));
        }
        want *= p->shape[d];
    }
    return ALLOY_OK;
}

/* Checks tensor p against its storage entry and points t at its bytes. */
static int view(const struct alloy_pt_file *f, const char *prefix, const struct alloy_pickle_tensor *p,
                struct alloy_tensor *t, struct alloy_err *err)
{
    const char *label = f->base.path;
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(p->dtype);
    uint64_t item = tr->bits / 8, numel = 1, sbytes, end;
    char key[80];
    snprintf(key, sizeof key, "data/%s", p->key);
    const struct zip_entry *e = entry(f, prefix, key);
    if (!e)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected its storage in entry %s/%s, found no such entry",
                             label, p->name, prefix, key);
    if (ckd_mul_u64(&sbytes, p->storage_numel, item) || sbytes != e->size)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected storage '%s' to hold %llu x %s, found %llu bytes",
                             label, p->name, p->key, (unsigned long long)p->storage_numel, tr->name,
                             (unsigned long long)e->size);
    for (int d = 0; d < p->ndim; d++)
        if (ckd_mul_u64(&numel, numel, (uint64_t)p->shape[d]))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: element count overflows 64 bits", label, p->name);
    int rc = check_contiguous(f, p, err);
    if (rc) return rc;
    if (ckd_add_u64(&end, p->offset, numel) || end > p->storage_numel)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: expected its view (offset %llu + %llu elements) inside "
                             "storage '%s' of %llu elements, found it runs past the end", label, p->name,
                             (unsigned long long)p->offset, (unsigned long long)numel, p->key,
                             (unsigned long long)p->storage_numel);
    t->dtype = p->dtype;
    t->ndim = p->ndim;
    memcpy(t->shape, p->shape, sizeof t->shape);
    t->numel = numel;
    t->data = f->m.map + e->data_off + p->offset * item;
    t->nbytes = numel * item;
    t->file = (struct alloy_tensor_file *)&f->base;
    return ALLOY_OK;
}

/* The archive folder: the first entry's name up to its first '/', as torch's reader takes it. */
static int archive_prefix(const struct alloy_pt_file *f, char *prefix, size_t cap, struct alloy_err *err)
{
    const char *first = f->nentries ? f->entries[0].name : "";
    const char *slash = strchr(first, '/');
    if (!slash || slash == first || (size_t)(slash - first) >= cap)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: zip: expected entries in an archive folder (archive/data.pkl), "
                             "found '%.80s' first", f->base.path, first);
    memcpy(prefix, first, (size_t)(slash - first));
    prefix[slash - first] = '\0';
    const struct zip_entry *bo = entry(f, prefix, "byteorder");
    if (bo && !(bo->size == 6 && memcmp(f->m.map + bo->data_off, "little", 6) == 0))
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s/byteorder: expected \"little\", found another byte "
                             "order", f->base.path, prefix);
    return ALLOY_OK;
}

static int load_tensors(struct alloy_pt_file *f, struct alloy_err *err)
{
    char prefix[100];
    int rc = archive_prefix(f, prefix, sizeof prefix, err);
    if (rc) return rc;
    const struct zip_entry *pk = entry(f, prefix, "data.pkl");
    if (!pk)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: zip: expected an entry %s/data.pkl, found none", f->base.path,
                             prefix);
    char *label = alloy_xasprintf("%s: %s/data.pkl", f->base.path, prefix);
    if (!label) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", f->base.path);
    struct alloy_pickle_tensor *pt = NULL;
    size_t n = 0;
    rc = alloy_pickle_state_dict(f->m.map + pk->data_off, (size_t)pk->size, label, &pt, &n, err);
    free(label);
    if (rc) return rc;
    f->base.tensors = alloy_xcalloc(n ? n : 1, sizeof *f->base.tensors);
    f->names = alloy_xcalloc(n ? n : 1, sizeof *f->names);
    if (!f->base.tensors || !f->names) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", f->base.path);
    for (size_t i = 0; i < n && !rc; i++) {
        int dup = 0;
        struct alloy_tensor *t = &f->base.tensors[i];
        if ((rc = view(f, prefix, &pt[i], t, err))) break;
        t->name = f->names[i] = pt[i].name; /* owned by f from here */
        pt[i].name = NULL;
        f->base.count++;
        if (alloy_strmap_put(&f->base.index, t->name, i, &dup) != 0)
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", f->base.path);
        else if (dup)
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: duplicate tensor name", f->base.path, t->name);
    }
    alloy_pickle_free(pt, n);
    return rc;
}

/* ------------------------------------------------------------ the tensor file */

static void pt_close(struct alloy_tensor_file *tf)
{
    struct alloy_pt_file *f = (struct alloy_pt_file *)tf;
    if (!f) return;
    alloy_mapped_close(&f->m);
    for (size_t i = 0; i < f->nentries; i++) free(f->entries[i].name);
    for (size_t i = 0; i < f->base.count; i++) free(f->names[i]);
    free(f->entries);
    free(f->names);
    free(f->base.tensors);
    alloy_strmap_free(&f->by_name);
    alloy_strmap_free(&f->base.index);
    free(f->base.path);
    free(f);
}

static int pt_pread(const struct alloy_tensor_file *tf, const struct alloy_tensor *t, uint64_t off, void *dst,
                    size_t len, struct alloy_err *err)
{
    return alloy_mapped_pread(&((const struct alloy_pt_file *)tf)->m, tf->path, t, off, dst, len, err);
}

static void pt_release(const struct alloy_tensor_file *tf, const struct alloy_tensor *t, uint64_t off, uint64_t len)
{
    alloy_mapped_release(&((const struct alloy_pt_file *)tf)->m, t, off, len);
}

static const struct alloy_tensor_file_ops pt_ops = {"pytorch", pt_close, pt_pread, pt_release};

static struct alloy_pt_file *pt_new(const char *label)
{
    struct alloy_pt_file *f = alloy_xcalloc(1, sizeof *f);
    if (f && !(f->base.path = alloy_xstrdup(label))) {
        free(f);
        return NULL;
    }
    if (f) f->base.ops = &pt_ops, f->m.fd = -1;
    return f;
}

static int pt_finish(struct alloy_pt_file *f, struct alloy_tensor_file **out, struct alloy_err *err)
{
    int rc = read_directory(f, err);
    if (!rc) rc = load_tensors(f, err);
    if (rc) {
        pt_close(&f->base);
        return rc;
    }
    *out = &f->base;
    return ALLOY_OK;
}

int alloy_pt_open_memory(const uint8_t *buf, size_t len, const char *label, struct alloy_tensor_file **out,
                         struct alloy_err *err)
{
    struct alloy_pt_file *f = pt_new(label ? label : "<memory>");
    if (!f) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", label ? label : "<memory>");
    alloy_mapped_memory(buf, len, &f->m);
    return pt_finish(f, out, err);
}

int alloy_pt_open(const char *path, struct alloy_tensor_file **out, struct alloy_err *err)
{
    struct alloy_pt_file *f = pt_new(path);
    if (!f) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    int rc = alloy_mapped_open(path, &f->m, err);
    if (rc) {
        pt_close(&f->base);
        return rc;
    }
    return pt_finish(f, out, err);
}
