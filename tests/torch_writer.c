/*
 * torch_writer.c — the tests' torch.save (see torch_writer.h for the byte layout and its sources).
 *
 * DESIGN
 *   Buffers grow by doubling and abort the test run when memory runs out
 *   (a test helper, not library code). The pickler keeps Python's memo
 *   numbering: every memoized object takes the next index, and objects
 *   Python would meet again by identity (the globals, the 'storage' and
 *   'cpu' literals, 'version', a storage's key string) are fetched with
 *   BINGET from the index they first got.
 */
#include "torch_writer.h"

#include "alloy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tw_put(struct tw_buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->n + n) nc *= 2;
        uint8_t *np = realloc(b->p, nc);
        if (!np) abort();
        b->p = np;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}

void tw_le(struct tw_buf *b, uint64_t v, int n)
{
    uint8_t x[8];
    for (int i = 0; i < n; i++) x[i] = (uint8_t)(v >> (8 * i));
    tw_put(b, x, (size_t)n);
}

static void op(struct tw_buf *b, uint8_t o) { tw_put(b, &o, 1); }

/* ------------------------------------------------------------ the pickler */

struct pk {
    struct tw_buf *b;
    int memo;                                        /* next memo index */
    int g_odict, g_rebuild, s_storage, s_cpu, s_version;
    const char *types[16];
    int g_types[16], ntypes;
    const char *keys[256];
    int s_keys[256], nkeys;
};

static int memoize(struct pk *p)
{
    if (p->memo < 256) op(p->b, 'q'), op(p->b, (uint8_t)p->memo);
    else op(p->b, 'r'), tw_le(p->b, (uint64_t)p->memo, 4);
    return p->memo++;
}

static void get(struct pk *p, int idx)
{
    if (idx < 256) op(p->b, 'h'), op(p->b, (uint8_t)idx);
    else op(p->b, 'j'), tw_le(p->b, (uint64_t)idx, 4);
}

/* Pickler.save_long for protocol 2. */
static void save_int(struct pk *p, int64_t v)
{
    if (v >= 0 && v <= 0xff) op(p->b, 'K'), tw_le(p->b, (uint64_t)v, 1);
    else if (v >= 0 && v <= 0xffff) op(p->b, 'M'), tw_le(p->b, (uint64_t)v, 2);
    else if (v >= INT32_MIN && v <= INT32_MAX) op(p->b, 'J'), tw_le(p->b, (uint64_t)v, 4);
    else { /* LONG1: the shortest two's complement */
        int n = 8;
        while (n > 1 && ((v >> (8 * (n - 1) - 1)) == 0 || (v >> (8 * (n - 1) - 1)) == -1)) n--;
        op(p->b, 0x8a), op(p->b, (uint8_t)n), tw_le(p->b, (uint64_t)v, n);
    }
}

static int save_str(struct pk *p, const char *s)
{
    op(p->b, 'X');
    tw_le(p->b, strlen(s), 4);
    tw_put(p->b, s, strlen(s));
    return memoize(p);
}

/* A string (or global) Python meets again by identity: BINGET after the first time. */
static void save_same_str(struct pk *p, const char *s, int *slot)
{
    if (*slot >= 0) get(p, *slot);
    else *slot = save_str(p, s);
}

static void save_global(struct pk *p, const char *mod, const char *name, int *slot)
{
    if (*slot >= 0) {
        get(p, *slot);
        return;
    }
    op(p->b, 'c');
    tw_put(p->b, mod, strlen(mod));
    op(p->b, '\n');
    tw_put(p->b, name, strlen(name));
    op(p->b, '\n');
    *slot = memoize(p);
}

/* Pickler.save_tuple of ints: () unmemoized, 1-3 items with TUPLE1-3, longer with MARK ... TUPLE. */
static void save_int_tuple(struct pk *p, const int64_t *v, int n)
{
    if (n == 0) {
        op(p->b, ')');
        return;
    }
    if (n > 3) op(p->b, '(');
    for (int i = 0; i < n; i++) save_int(p, v[i]);
    op(p->b, n > 3 ? 't' : (uint8_t)(0x84 + n));
    memoize(p);
}

static int *slot_of(const char **names, int *slots, int *count, const char *name)
{
    for (int i = 0; i < *count; i++)
        if (strcmp(names[i], name) == 0) return &slots[i];
    names[*count] = name;
    slots[*count] = -1;
    return &slots[(*count)++];
}

static void save_tensor(struct pk *p, const struct tw_tensor *t)
{
    save_global(p, "torch._utils", "_rebuild_tensor_v2", &p->g_rebuild);
    op(p->b, '(');
    op(p->b, '('); /* the persistent id, saved with save_persistent_id=False */
    save_same_str(p, "storage", &p->s_storage);
    save_global(p, "torch", t->type, slot_of(p->types, p->g_types, &p->ntypes, t->type));
    save_same_str(p, t->key, slot_of(p->keys, p->s_keys, &p->nkeys, t->key));
    save_same_str(p, "cpu", &p->s_cpu);
    save_int(p, (int64_t)t->numel);
    op(p->b, 't');
    memoize(p);
    op(p->b, 'Q');
    save_int(p, (int64_t)t->offset);
    save_int_tuple(p, t->shape, t->ndim);
    save_int_tuple(p, t->stride, t->ndim);
    op(p->b, 0x89);              /* requires_grad=False */
    get(p, p->g_odict);          /* backward_hooks=OrderedDict() */
    op(p->b, ')');
    op(p->b, 'R');
    memoize(p);
    op(p->b, 't');
    memoize(p);
    op(p->b, 'R');
    memoize(p);
}

/* _metadata: {'': {'version': 1}, 'model': {'version': 1}} — what nn.Module.state_dict records per module. */
static void save_metadata(struct pk *p)
{
    static const char *const prefixes[] = {"", "model"};
    op(p->b, '}');
    memoize(p);
    save_str(p, "_metadata");
    get(p, p->g_odict);
    op(p->b, ')');
    op(p->b, 'R');
    memoize(p);
    op(p->b, '(');
    for (int i = 0; i < 2; i++) {
        save_str(p, prefixes[i]);
        op(p->b, '}');
        memoize(p);
        save_same_str(p, "version", &p->s_version);
        save_int(p, 1);
        op(p->b, 's');
    }
    op(p->b, 'u');
    op(p->b, 's');
    op(p->b, 'b');
}

void tw_pickle(struct tw_buf *b, const struct tw_tensor *t, int n, int meta)
{
    struct pk p = {.b = b, .g_odict = -1, .g_rebuild = -1, .s_storage = -1, .s_cpu = -1, .s_version = -1};
    op(b, 0x80), op(b, 2);
    save_global(&p, "collections", "OrderedDict", &p.g_odict);
    op(b, ')');
    op(b, 'R');
    memoize(&p);
    for (int from = 0; from < n; from += 1000) { /* Pickler._batch_setitems */
        int k = n - from < 1000 ? n - from : 1000;
        if (k > 1) op(b, '(');
        for (int i = from; i < from + k; i++) {
            save_str(&p, t[i].name);
            save_tensor(&p, &t[i]);
        }
        op(b, k > 1 ? 'u' : 's');
    }
    if (meta) save_metadata(&p);
    op(b, '.');
}

/* ------------------------------------------------------------ the zip */

static uint32_t crc32_of(const void *data, size_t len)
{
    const uint8_t *d = data;
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < len; i++) {
        c ^= d[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

void tw_zip_add(struct tw_zip *z, const char *name, const void *data, size_t len)
{
    struct tw_buf *b = &z->b;
    size_t nlen = strlen(name);
    /* getPadding: the data starts after the 30-byte header, the name and a 4-byte "FB" field header */
    size_t start = b->n + 30 + nlen + 4, pad = (64 - start % 64) % 64;
    if (z->n == (int)(sizeof z->e / sizeof z->e[0]) || nlen >= sizeof z->e[0].name) abort();
    snprintf(z->e[z->n].name, sizeof z->e[0].name, "%s", name);
    z->e[z->n].crc = crc32_of(data, len);
    z->e[z->n].size = len;
    z->e[z->n].off = b->n;
    tw_le(b, 0x04034b50, 4);
    tw_le(b, 0, 2), tw_le(b, 0, 2), tw_le(b, 0, 2); /* version needed, flags, method 0 (stored) */
    tw_le(b, 0, 2), tw_le(b, 0, 2);                 /* time, date */
    tw_le(b, z->e[z->n].crc, 4);
    tw_le(b, len, 4), tw_le(b, len, 4);
    tw_le(b, nlen, 2), tw_le(b, 4 + pad, 2);
    tw_put(b, name, nlen);
    tw_put(b, "FB", 2);
    tw_le(b, pad, 2);
    for (size_t i = 0; i < pad; i++) tw_put(b, "Z", 1);
    tw_put(b, data, len);
    z->n++;
}

void tw_zip_finish(struct tw_zip *z, int zip64)
{
    struct tw_buf *b = &z->b;
    uint64_t cd = b->n, big = zip64 ? 0xffffffffu : 0;
    for (int i = 0; i < z->n; i++) {
        size_t nlen = strlen(z->e[i].name);
        tw_le(b, 0x02014b50, 4);
        tw_le(b, 0, 2), tw_le(b, 0, 2), tw_le(b, 0, 2), tw_le(b, 0, 2); /* made by, needed, flags, method */
        tw_le(b, 0, 2), tw_le(b, 0, 2);
        tw_le(b, z->e[i].crc, 4);
        tw_le(b, big ? big : z->e[i].size, 4), tw_le(b, big ? big : z->e[i].size, 4);
        tw_le(b, nlen, 2), tw_le(b, zip64 ? 28 : 0, 2), tw_le(b, 0, 2);
        tw_le(b, 0, 2), tw_le(b, 0, 2), tw_le(b, 0, 4);              /* disk, internal, external attributes */
        tw_le(b, big ? big : z->e[i].off, 4);
        tw_put(b, z->e[i].name, nlen);
        if (zip64) { /* extra field 1: uncompressed, compressed, local header offset */
            tw_le(b, 1, 2), tw_le(b, 24, 2);
            tw_le(b, z->e[i].size, 8), tw_le(b, z->e[i].size, 8), tw_le(b, z->e[i].off, 8);
        }
    }
    uint64_t cdsize = b->n - cd, z64 = b->n;
    if (zip64) {
        tw_le(b, 0x06064b50, 4), tw_le(b, 44, 8), tw_le(b, 45, 2), tw_le(b, 45, 2);
        tw_le(b, 0, 4), tw_le(b, 0, 4), tw_le(b, (uint64_t)z->n, 8), tw_le(b, (uint64_t)z->n, 8);
        tw_le(b, cdsize, 8), tw_le(b, cd, 8);
        tw_le(b, 0x07064b50, 4), tw_le(b, 0, 4), tw_le(b, z64, 8), tw_le(b, 1, 4);
    }
    tw_le(b, 0x06054b50, 4), tw_le(b, 0, 2), tw_le(b, 0, 2);
    tw_le(b, zip64 ? 0xffff : (uint64_t)z->n, 2), tw_le(b, zip64 ? 0xffff : (uint64_t)z->n, 2);
    tw_le(b, zip64 ? 0xffffffffu : cdsize, 4), tw_le(b, zip64 ? 0xffffffffu : cd, 4), tw_le(b, 0, 2);
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp((*(const struct tw_tensor *const *)a)->key, (*(const struct tw_tensor *const *)b)->key);
}

void tw_torch_save(struct tw_buf *out, const char *archive, const struct tw_tensor *t, int n, int zip64)
{
    struct tw_zip *z = calloc(1, sizeof *z);
    struct tw_buf pk = {0};
    const struct tw_tensor **sorted = calloc((size_t)n + 1, sizeof *sorted);
    char name[96];
    if (!z || !sorted) abort();
    tw_pickle(&pk, t, n, 1);
    snprintf(name, sizeof name, "%s/data.pkl", archive);
    tw_zip_add(z, name, pk.p, pk.n);
    snprintf(name, sizeof name, "%s/byteorder", archive);
    tw_zip_add(z, name, "little", 6);
    int ns = 0;
    for (int i = 0; i < n; i++)
        if (t[i].data) sorted[ns++] = &t[i]; /* one entry per storage */
    qsort(sorted, (size_t)ns, sizeof *sorted, cmp_key);
    for (int i = 0; i < ns; i++) {
        snprintf(name, sizeof name, "%s/data/%s", archive, sorted[i]->key);
        tw_zip_add(z, name, sorted[i]->data, sorted[i]->nbytes);
    }
    snprintf(name, sizeof name, "%s/version", archive);
    tw_zip_add(z, name, "3\n", 2);
    tw_zip_finish(z, zip64);
    *out = z->b;
    free(pk.p);
    free(sorted);
    free(z);
}

/* ------------------------------------------------------------ converting a safetensors model */

static const char *storage_type(enum alloy_dtype d)
{
    switch (d) {
    case ALLOY_DTYPE_F32: return "FloatStorage";
    case ALLOY_DTYPE_F16: return "HalfStorage";
    case ALLOY_DTYPE_BF16: return "BFloat16Storage";
    case ALLOY_DTYPE_I64: return "LongStorage";
    default: return NULL;
    }
}

static int write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(p, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* Shard k of shards: tensors [from, to) of the safetensors file. */
static int write_shard(const struct alloy_st_file *st, size_t from, size_t to, const char *path)
{
    struct tw_tensor *t = calloc(to - from + 1, sizeof *t);
    char (*keys)[24] = calloc(to - from + 1, sizeof *keys);
    int rc = (!t || !keys) ? -1 : 0;
    for (size_t i = from; i < to && !rc; i++) {
        const struct alloy_tensor *s = alloy_st_tensor(st, i);
        struct tw_tensor *w = &t[i - from];
        snprintf(keys[i - from], sizeof keys[0], "%zu", i - from);
        *w = (struct tw_tensor){.name = s->name, .type = storage_type(s->dtype), .key = keys[i - from],
                                .numel = s->numel, .ndim = s->ndim, .data = s->data, .nbytes = s->nbytes};
        if (!w->type || s->ndim > 4) rc = -1;
        for (int d = s->ndim - 1; d >= 0 && !rc; d--) {
            w->shape[d] = s->shape[d];
            w->stride[d] = d == s->ndim - 1 ? 1 : w->stride[d + 1] * s->shape[d + 1];
        }
    }
    struct tw_buf b = {0};
    if (!rc) {
        tw_torch_save(&b, "pytorch_model", t, (int)(to - from), 0);
        rc = write_bytes(path, b.p, b.n);
    }
    free(b.p);
    free(t);
    free(keys);
    return rc;
}

int tw_convert(const char *src, const char *dir, int shards)
{
    struct alloy_st_file *st;
    struct alloy_err err = {0};
    if (alloy_st_open(src, &st, &err) != ALLOY_OK) return -1;
    size_t n = alloy_st_count(st);
    char path[4200];
    int rc = 0;
    struct tw_buf idx = {0};
    static const char head[] = "{\n  \"metadata\": {},\n  \"weight_map\": {";
    tw_put(&idx, head, strlen(head));
    for (int k = 0; k < shards && !rc; k++) {
        size_t from = n * (size_t)k / (size_t)shards, to = n * (size_t)(k + 1) / (size_t)shards;
        char fname[64];
        if (shards == 1) snprintf(fname, sizeof fname, "pytorch_model.bin");
        else snprintf(fname, sizeof fname, "pytorch_model-%05d-of-%05d.bin", k + 1, shards);
        snprintf(path, sizeof path, "%s/%s", dir, fname);
        rc = write_shard(st, from, to, path);
        for (size_t i = from; i < to; i++) {
            char line[300];
            int len = snprintf(line, sizeof line, "%s\n    \"%s\": \"%s\"", idx.n > strlen(head) ? "," : "",
                               alloy_st_tensor(st, i)->name, fname);
            tw_put(&idx, line, (size_t)len);
        }
    }
    tw_put(&idx, "\n  }\n}\n", 7);
    if (!rc && shards > 1) {
        snprintf(path, sizeof path, "%s/pytorch_model.bin.index.json", dir);
        rc = write_bytes(path, idx.p, idx.n);
    }
    free(idx.p);
    alloy_st_close(st);
    return rc;
}
