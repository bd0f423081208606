/*
 * gguf.c — read and validate GGUF v2/v3 files (single or split) and present
 * their tensors under Hugging Face names.
 *
 * DESIGN
 *   Each shard is mapped read-only and parsed with a bounds-checked cursor,
 *   in the order of ggml's gguf_init_from_file (docs/formats.md §3.1), each
 *   rule with its own message: magic; version (not 0/1, <= 3, the endianness
 *   hint); counts >= 0 and bounded by the bytes left (a key/value pair takes
 *   at least 14 bytes, a tensor info 25, so every allocation is a small
 *   multiple of the header size); non-empty unique keys, known value types,
 *   no nested arrays, strings <= 1 GiB and arrays <= 2^30 elements, none
 *   running past the end; general.alignment a UINT32 power of two; tensor
 *   names unique and < 64 bytes, <= 4 dims, dims >= 0, the element count
 *   within INT64_MAX; a known type (ids of removed types rejected; valid types
 *   alloy cannot dequantize (IQ*, TQ*, ...) refused naming tensor and type);
 *   ne[0] a multiple of the block; offsets exactly the running sum of sizes
 *   padded to the alignment; the data section inside the file. Bools must be
 *   0 or 1 (stricter than ggml, which takes any non-zero byte as true).
 *   Keys and values stay in the mapping: a key/value pair is its key (copied,
 *   for the hash map), type, count and offset.
 *
 *   A split model (<prefix>-00001-of-0000N.gguf) is opened from its first
 *   shard: split.no must be 0 there and i in shard i + 1, names never repeat
 *   across shards, and split.tensors.count is the total. Only shard 1 holds
 *   the model's keys. Tensors of all shards form one tensor file.
 *
 *   Names map back to Hugging Face (gguf.md §1.2, §4) for the architectures
 *   of gguf_arch.h; shapes are `ne` reversed; llama's attn_q / attn_k rows
 *   are un-permuted on reading and Gemma's norms read back with 1
 *   subtracted (perm_heads, value_offset: the tensor-file ops that
 *   alloy_tensor_read_f32 follows). Derived tensors (rope_freqs,
 *   rope_factors_long/short) are not model weights: they are moved behind
 *   the presented tensors (alloy_gguf_derived finds them) and only feed
 *   config.json's rope_scaling (gguf_meta.c).
 */
#include "core/internal.h"
#include "core/strmap.h"
#include "formats/gguf.h"
#include "formats/gguf_arch.h"
#include "formats/mapped.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAX_STRING (1ull << 30)
#define GGUF_MAX_ARRAY (1ull << 30)
#define GGUF_MAX_NAME 64
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_SHARDS 9999
#define GGUF_MIN_KV 14     /* key length 8 + one key byte + type 4 + one value byte */
#define GGUF_MIN_TENSOR 25 /* name length 8 + one name byte + n_dims 4 + type 4 + offset 8 */

struct gguf_kv {
    char *key;
    uint32_t type, elem; /* elem: an array's element type */
    uint64_t n;          /* an array's element count */
    uint64_t off;        /* the value (an array: its first element) in shard 0 */
};

struct gguf_shard {
    char *path;
    int fd;
    const uint8_t *map;
    size_t size;
};

struct gguf_tensor {
    uint32_t shard;
    uint64_t heads;     /* rows stored in llama's rotary order: head count, else 0 */
    float offset;       /* added to every value read (Gemma's norms: -1) */
    char *gguf_name;    /* owned */
};

struct alloy_gguf {
    struct alloy_tensor_file base; /* HF names and shapes, all shards in order */
    struct gguf_shard *shards;
    size_t nshards;
    struct gguf_kv *kv;            /* shard 0's pairs */
    size_t nkv;
    struct alloy_strmap kv_index;
    struct gguf_tensor *info;      /* parallel to base.tensors */
    char **names;
    struct alloy_strmap gguf_names; /* GGUF name -> tensor: duplicates across shards */
    char *arch;
    const struct gguf_arch *ga;
    size_t nderived;               /* derived tensors, kept after base.tensors[base.count - 1] */
};

/* ------------------------------------------------------------ the cursor */

struct cur {
    const uint8_t *p;
    size_t size, pos;
    const char *label;
    struct alloy_err *err;
};

static int trunc_err(struct cur *c, const char *what)
{
    return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: expected more bytes, found end of file at byte %zu",
                         c->label, what, c->size);
}

static int rd(struct cur *c, void *v, size_t n, const char *what)
{
    if (c->size - c->pos < n) return trunc_err(c, what);
    memcpy(v, c->p + c->pos, n); /* GGUF is little-endian; alloy runs on little-endian hosts */
    c->pos += n;
    return ALLOY_OK;
}

static int rd_str(struct cur *c, const char **s, uint64_t *len, const char *what)
{
    int rc = rd(c, len, 8, what);
    if (rc) return rc;
    if (*len > GGUF_MAX_STRING)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: string of at most %llu bytes, found length %llu",
                             c->label, what, GGUF_MAX_STRING, (unsigned long long)*len);
    if (*len > c->size - c->pos) return trunc_err(c, what);
    *s = (const char *)c->p + c->pos;
    c->pos += *len;
    return ALLOY_OK;
}

static const uint8_t g_vsize[GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const g_vname[GGUF_VTYPE_COUNT] = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32",
                                                       "FLOAT32", "BOOL", "STRING", "ARRAY", "UINT64", "INT64",
                                                       "FLOAT64"};

/* Skips n values of scalar or string type t, checking strings and bools. */
static int skip_values(struct cur *c, uint32_t t, uint64_t n, const char *key)
{
    if (t == GGUF_STRING) {
        for (uint64_t i = 0; i < n; i++) {
            const char *s;
            uint64_t len;
            int rc = rd_str(c, &s, &len, key);
            if (rc) return rc;
        }
        return ALLOY_OK;
    }
    if (n > (c->size - c->pos) / g_vsize[t]) return trunc_err(c, key);
    if (t == GGUF_BOOL)
        for (uint64_t i = 0; i < n; i++)
            if (c->p[c->pos + i] > 1)
                return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: a BOOL is 0 or 1, found %u", c->label, key,
                                     c->p[c->pos + i]);
    c->pos += n * g_vsize[t];
    return ALLOY_OK;
}

/* ------------------------------------------------------------ types */

/* ggml type id -> alloy dtype; -1: a removed id or out of range; -2: valid but not readable by alloy. */
static int ggml_type(uint32_t id, const char **name)
{
    static const struct { int dtype; const char *name; } t[] = {
        {ALLOY_DTYPE_F32, "F32"}, {ALLOY_DTYPE_F16, "F16"}, {ALLOY_DTYPE_Q4_0, "Q4_0"}, {ALLOY_DTYPE_Q4_1, "Q4_1"},
        {-1, NULL}, {-1, NULL}, {ALLOY_DTYPE_Q5_0, "Q5_0"}, {ALLOY_DTYPE_Q5_1, "Q5_1"},
        {ALLOY_DTYPE_Q8_0, "Q8_0"}, {-2, "Q8_1"}, {ALLOY_DTYPE_Q2_K, "Q2_K"}, {ALLOY_DTYPE_Q3_K, "Q3_K"},
        {ALLOY_DTYPE_Q4_K, "Q4_K"}, {ALLOY_DTYPE_Q5_K, "Q5_K"}, {ALLOY_DTYPE_Q6_K, "Q6_K"}, {-2, "Q8_K"},
        {-2, "IQ2_XXS"}, {-2, "IQ2_XS"}, {-2, "IQ3_XXS"}, {-2, "IQ1_S"}, {ALLOY_DTYPE_IQ4_NL, "IQ4_NL"}, {-2, "IQ3_S"},
        {-2, "IQ2_S"}, {-2, "IQ4_XS"}, {ALLOY_DTYPE_I8, "I8"}, {ALLOY_DTYPE_I16, "I16"}, {ALLOY_DTYPE_I32, "I32"},
        {ALLOY_DTYPE_I64, "I64"}, {ALLOY_DTYPE_F64, "F64"}, {-2, "IQ1_M"}, {ALLOY_DTYPE_BF16, "BF16"},
        {-1, NULL}, {-1, NULL}, {-1, NULL}, {-2, "TQ1_0"}, {-2, "TQ2_0"}, {-1, NULL}, {-1, NULL}, {-1, NULL},
        {-2, "MXFP4"}, {-2, "NVFP4"}, {-2, "Q1_0"}, {-2, "Q2_0"},
    };
    if (id >= ALLOY_ARRAY_LEN(t)) return -1;
    *name = t[id].name;
    return t[id].dtype;
}

/* ------------------------------------------------------------ one shard */

struct hdr {
    struct alloy_gguf *g;
    struct gguf_shard *sh;
    uint32_t shard;
    int64_t split_no, split_count, split_tensors; /* -1: absent */
    uint64_t align;
    struct cur c;
};

static int parse_preamble(struct hdr *h, uint64_t *n_tensors, uint64_t *n_kv)
{
    struct cur *c = &h->c;
    uint8_t magic[4];
    uint32_t version;
    int64_t nt, nk;
    if (c->size < 4) return trunc_err(c, "magic");
    memcpy(magic, c->p, 4);
    c->pos = 4;
    if (memcmp(magic, "GGUF", 4) != 0) {
        char m[5];
        for (int i = 0; i < 4; i++) m[i] = magic[i] >= 0x20 && magic[i] < 0x7f ? (char)magic[i] : '?';
        m[4] = '\0';
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: magic: expected \"GGUF\", found \"%s\"", c->label, m);
    }
    int rc = rd(c, &version, 4, "version");
    if (rc) return rc;
    if ((version & 0xffff) == 0)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: version: %u (0x%08x); is there a mismatch between the "
                             "host and model endianness?", c->label, version, version);
    if (version == 1 || version > 3)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: version: expected 2 or 3, found %u%s", c->label, version,
                             version == 1 ? " (GGUF v1 is no longer supported)" : "");
    if ((rc = rd(c, &nt, 8, "tensor count")) || (rc = rd(c, &nk, 8, "key/value count"))) return rc;
    uint64_t left = c->size - c->pos;
    if (nt < 0 || (uint64_t)nt > left / GGUF_MIN_TENSOR)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor count: at most %llu in a %zu-byte file, found %lld",
                             c->label, (unsigned long long)(left / GGUF_MIN_TENSOR), c->size, (long long)nt);
    if (nk < 0 || (uint64_t)nk > left / GGUF_MIN_KV)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT,
                             "%s: key/value count: at most %llu in a %zu-byte file, found %lld", c->label,
                             (unsigned long long)(left / GGUF_MIN_KV), c->size, (long long)nk);
    *n_tensors = (uint64_t)nt;
    *n_kv = (uint64_t)nk;
    return ALLOY_OK;
}

/* The split.* and general.alignment keys of any shard. */
static int special_key(struct hdr *h, const char *key, uint32_t type, const uint8_t *v)
{
    struct cur *c = &h->c;
    int64_t *dst = strcmp(key, "split.no") == 0 ? &h->split_no
                 : strcmp(key, "split.count") == 0 ? &h->split_count
                 : strcmp(key, "split.tensors.count") == 0 ? &h->split_tensors : NULL;
    if (dst) {
        uint32_t want = dst == &h->split_tensors ? GGUF_I32 : GGUF_U16;
        if (type != want)
            return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: expected %s, found %s", c->label, key,
                                 g_vname[want], g_vname[type]);
        if (want == GGUF_U16) *dst = v[0] | v[1] << 8;
        else { int32_t x; memcpy(&x, v, 4); *dst = x; }
        return ALLOY_OK;
    }
    if (strcmp(key, "general.alignment") != 0) return ALLOY_OK;
    if (type != GGUF_U32)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: general.alignment: expected UINT32, found %s", c->label,
                             g_vname[type]);
    uint32_t a;
    memcpy(&a, v, 4);
    if (a == 0 || (a & (a - 1)))
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: general.alignment: expected a non-zero power of two, "
                             "found %u", c->label, a);
    h->align = a;
    return ALLOY_OK;
}

/* The pairs of shard 0 are kept in g; another shard's are checked and dropped. */
static int parse_kv(struct hdr *h, uint64_t n_kv)
{
    struct cur *c = &h->c;
    struct alloy_gguf *g = h->g;
    struct alloy_strmap local = {0}, *idx = h->shard ? &local : &g->kv_index;
    size_t nkv = 0;
    struct gguf_kv *kvs = alloy_xcalloc(n_kv ? n_kv : 1, sizeof *kvs);
    int rc = kvs ? ALLOY_OK : alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: out of memory", c->label);
    for (uint64_t i = 0; i < n_kv && !rc; i++) {
        const char *k;
        uint64_t klen, n = 1;
        uint32_t type = 0, elem = 0;
        char at[48];
        int dup = 0;
        snprintf(at, sizeof at, "key/value pair %llu", (unsigned long long)i);
        if ((rc = rd_str(c, &k, &klen, at))) break;
        if (!klen) { rc = alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: expected a non-empty key", c->label, at); break; }
        char *key = alloy_xmalloc(klen + 1);
        if (!key) { rc = alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: out of memory", c->label); break; }
        memcpy(key, k, klen);
        key[klen] = '\0';
        kvs[nkv++].key = key;
        if (alloy_strmap_put(idx, key, nkv - 1, &dup) != 0)
            rc = alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: out of memory", c->label);
        else if (dup) rc = alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: duplicate key", c->label, key);
        else if (!(rc = rd(c, &type, 4, key)) && type >= GGUF_VTYPE_COUNT)
            rc = alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: value type in [0, 12], found %u", c->label, key, type);
        if (!rc && type == GGUF_ARRAY && !(rc = rd(c, &elem, 4, key)) && !(rc = rd(c, &n, 8, key))) {
            if (elem >= GGUF_VTYPE_COUNT || elem == GGUF_ARRAY)
                rc = alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: array element type: a scalar or STRING type, "
                                   "found %u%s", c->label, key, elem, elem == GGUF_ARRAY ? " (nested array)" : "");
            else if (n > GGUF_MAX_ARRAY)
                rc = alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: at most %llu array elements, found %llu",
                                   c->label, key, GGUF_MAX_ARRAY, (unsigned long long)n);
        }
        uint64_t off = c->pos;
        if (!rc) rc = skip_values(c, type == GGUF_ARRAY ? elem : type, n, key);
        if (!rc && type != GGUF_ARRAY) rc = special_key(h, key, type, c->p + off);
        kvs[nkv - 1] = (struct gguf_kv){key, type, elem, n, off};
    }
    if (h->shard == 0) {
        g->kv = kvs;
        g->nkv = nkv;
        return rc;
    }
    for (size_t i = 0; i < nkv; i++) free(kvs[i].key);
    free(kvs);
    alloy_strmap_free(&local);
    return rc;
}

/* Tensor name -> Hugging Face name in architecture a (gguf.md §1.2) into *out (malloc'd), with the head count
 * that permutes its rows (*perm, as gguf_arch_layer_hf); 0, 1 when the name is unknown, -1 when out of memory.
 * The layer is plain decimal ("blk.01" is not "blk.1"), so distinct GGUF names give distinct HF names. */
static int hf_name(const struct gguf_arch *a, const char *name, int *perm, char **out)
{
    static const struct { const char *gguf, *hf; } top[] = {
        {"token_embd.weight", "model.embed_tokens.weight"}, {"output_norm.weight", "model.norm.weight"},
        {"output.weight", "lm_head.weight"},
    };
    *perm = 0;
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(top); i++)
        if (strcmp(name, top[i].gguf) == 0) return (*out = alloy_xstrdup(top[i].hf)) ? 0 : -1;
    if (strncmp(name, "blk.", 4) != 0) return 1;
    const char *digits = name + 4, *rest = digits;
    while (*rest >= '0' && *rest <= '9') rest++;
    size_t nd = (size_t)(rest - digits);
    if (!nd || nd > 9 || (digits[0] == '0' && nd > 1) || *rest++ != '.') return 1;
    const char *dot = strrchr(rest, '.');
    if (!dot || (strcmp(dot, ".weight") != 0 && strcmp(dot, ".bias") != 0)) return 1;
    const char *hf = gguf_arch_layer_hf(a, rest, (size_t)(dot - rest), perm);
    if (!hf) return 1;
    *out = alloy_xasprintf("model.layers.%.*s.%s%s", (int)nd, digits, hf, dot);
    return *out ? 0 : -1;
}

static int add_tensor(struct hdr *h, const char *name, uint32_t nd, const int64_t *ne, int dtype, uint64_t nbytes,
                      uint64_t numel, uint64_t data_off)
{
    struct alloy_gguf *g = h->g;
    struct cur *c = &h->c;
    size_t i = g->base.count;
    struct alloy_tensor *t = &g->base.tensors[i];
    struct gguf_tensor *ti = &g->info[i];
    int dup = 0;
    *ti = (struct gguf_tensor){.shard = h->shard, .gguf_name = alloy_xstrdup(name)};
    int rc = !ti->gguf_name || alloy_strmap_put(&g->gguf_names, ti->gguf_name, i, &dup) != 0
                 ? alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: out of memory", c->label)
             : dup ? alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor '%s': duplicate name%s", c->label, name,
                                   h->shard ? " (also in an earlier shard)" : "")
                   : ALLOY_OK;
    if (rc) {
        free(ti->gguf_name);
        return rc;
    }
    g->base.count++; /* from here on gguf_name is freed with the file */
    *t = (struct alloy_tensor){.dtype = (enum alloy_dtype)dtype, .ndim = (int)nd, .numel = numel,
                               .data = h->sh->map + data_off, .nbytes = nbytes, .file = &g->base};
    for (uint32_t d = 0; d < nd; d++) t->shape[d] = ne[nd - 1 - d];
    t->name = ti->gguf_name; /* the HF name once every shard is read (map_names) */
    return ALLOY_OK;
}

/* One tensor info: validated, then added with its data offset (relative to the data section) in *off. */
static int parse_tensor_info(struct hdr *h, uint64_t *expect, uint64_t *offs, size_t i)
{
    struct cur *c = &h->c;
    const char *s;
    uint64_t len, off, numel = 1, nbytes;
    uint32_t nd, type;
    int64_t ne[GGUF_MAX_DIMS] = {1, 1, 1, 1};
    char name[GGUF_MAX_NAME], at[48];
    snprintf(at, sizeof at, "tensor info %zu", i);
    int rc = rd_str(c, &s, &len, at);
    if (rc) return rc;
    if (len >= GGUF_MAX_NAME || !len || memchr(s, 0, len))
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: %s: a name of 1 to %d bytes without NUL, found %llu bytes",
                             c->label, at, GGUF_MAX_NAME - 1, (unsigned long long)len);
    memcpy(name, s, len);
    name[len] = '\0';
    if ((rc = rd(c, &nd, 4, name))) return rc;
    if (nd > GGUF_MAX_DIMS)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor '%s': at most %d dimensions, found %u", c->label,
                             name, GGUF_MAX_DIMS, nd);
    for (uint32_t d = 0; d < nd; d++) {
        if ((rc = rd(c, &ne[d], 8, name))) return rc;
        if (ne[d] < 0)
            return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor '%s': ne[%u] >= 0, found %lld", c->label, name,
                                 d, (long long)ne[d]);
        if (ckd_mul_u64(&numel, numel, (uint64_t)ne[d]) || numel > INT64_MAX)
            return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor '%s': element count within INT64_MAX, "
                                 "found an overflow at ne[%u]", c->label, name, d);
    }
    if ((rc = rd(c, &type, 4, name)) || (rc = rd(c, &off, 8, name))) return rc;
    const char *tname = NULL;
    int dtype = ggml_type(type, &tname);
    if (dtype == -1)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor '%s': a ggml type id, found %u (unknown or "
                             "removed)", c->label, name, type);
    if (dtype == -2)
        return alloy_err_set(c->err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': type %s (%u) is not supported; alloy "
                             "reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL",
                             c->label, name, tname, type);
    const struct alloy_dtype_traits *tr = alloy_dtype_traits((enum alloy_dtype)dtype);
    if (ne[0] % tr->block)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor '%s': ne[0] a multiple of %s's block of %u, "
                             "found %lld", c->label, name, tname, tr->block, (long long)ne[0]);
    if (alloy_dtype_nbytes((enum alloy_dtype)dtype, numel, &nbytes) || nbytes > SIZE_MAX)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor '%s': byte size overflows", c->label, name);
    if (off != *expect)
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor '%s': offset %llu expected (the sizes before it, "
                             "each padded to %llu), found %llu", c->label, name, (unsigned long long)*expect,
                             (unsigned long long)h->align, (unsigned long long)off);
    uint64_t padded = nbytes + (h->align - nbytes % h->align) % h->align;
    if (padded < nbytes || ckd_add_u64(expect, *expect, padded))
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor '%s': data size overflows", c->label, name);
    offs[i] = off;
    return add_tensor(h, name, nd ? nd : 1, ne, dtype, nbytes, numel, 0);
}

static int parse_shard(struct hdr *h)
{
    struct cur *c = &h->c;
    struct alloy_gguf *g = h->g;
    uint64_t nt = 0, nk = 0, expect = 0;
    h->align = 32;
    h->split_no = h->split_count = h->split_tensors = -1;
    int rc = parse_preamble(h, &nt, &nk);
    if (!rc) rc = parse_kv(h, nk);
    if (rc) return rc;
    size_t first = g->base.count;
    struct alloy_tensor *nt_arr = alloy_xrealloc(g->base.tensors, (first + nt + 1) * sizeof *nt_arr);
    if (nt_arr) g->base.tensors = nt_arr;
    struct gguf_tensor *ni = nt_arr ? alloy_xrealloc(g->info, (first + nt + 1) * sizeof *ni) : NULL;
    if (ni) g->info = ni;
    uint64_t *offs = ni ? alloy_xcalloc(nt + 1, sizeof *offs) : NULL;
    if (!offs) return alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: out of memory for %llu tensors", c->label,
                                    (unsigned long long)nt);
    for (uint64_t i = 0; i < nt && !rc; i++) rc = parse_tensor_info(h, &expect, offs, (size_t)i);
    uint64_t data = c->pos + (h->align - c->pos % h->align) % h->align;
    if (!rc && nt && (data > c->size || expect > c->size - data))
        rc = alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor data: %llu bytes from byte %llu expected, found a "
                           "%zu-byte file (truncated)", c->label, (unsigned long long)expect, (unsigned long long)data,
                           c->size);
    for (uint64_t i = 0; i < nt && !rc; i++) g->base.tensors[first + i].data = h->sh->map + data + offs[i];
    free(offs);
    return rc;
}

/* ------------------------------------------------------------ names, heads, metadata */

int alloy_gguf_kv(const struct alloy_gguf *g, const char *key, uint32_t *type, uint32_t *elem, uint64_t *n,
                  const uint8_t **value)
{
    size_t i;
    if (!alloy_strmap_get(&g->kv_index, key, &i)) return 0;
    const struct gguf_kv *kv = &g->kv[i];
    *type = kv->type;
    *elem = kv->elem;
    *n = kv->n;
    *value = g->shards[0].map + kv->off;
    return 1;
}

const char *alloy_gguf_vtype_name(uint32_t t) { return t < GGUF_VTYPE_COUNT ? g_vname[t] : "?"; }

const char *alloy_gguf_arch(const struct alloy_gguf *g) { return g->arch; }

/* The head counts llama's Q/K permutation needs, checked against a tensor's rows. */
static int perm_heads_for(struct alloy_gguf *g, struct alloy_tensor *t, int kind, uint64_t *heads, struct alloy_err *err)
{
    char key[96];
    int64_t n = 0, nq = 0;
    snprintf(key, sizeof key, "%s.attention.head_count", g->arch);
    int has = alloy_gguf_int(g, key, &nq, err);
    if (has < 0) return ALLOY_ERR_FORMAT;
    if (!has || nq <= 0)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: a positive head count (needed to un-permute '%s'), "
                             "found %s", g->base.path, key, t->name, has ? "a non-positive value" : "none");
    n = nq;
    if (kind == 2) {
        snprintf(key, sizeof key, "%s.attention.head_count_kv", g->arch);
        has = alloy_gguf_int(g, key, &n, err);
        if (has < 0) return ALLOY_ERR_FORMAT;
        if (!has) n = nq;
    }
    uint64_t rows = t->ndim >= 2 ? (uint64_t)t->shape[0] : t->numel;
    if (n <= 0 || rows % (uint64_t)n || (rows / (uint64_t)n) % 2)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: tensor '%s': rows a multiple of 2 x %lld heads (%s), found "
                             "%llu", g->base.path, t->name, (long long)n, key, (unsigned long long)rows);
    *heads = (uint64_t)n;
    return ALLOY_OK;
}

static int is_derived(const char *gguf_name)
{
    return strcmp(gguf_name, "rope_freqs.weight") == 0 || strcmp(gguf_name, "rope_factors_long.weight") == 0 ||
           strcmp(gguf_name, "rope_factors_short.weight") == 0;
}

/* Derived tensors moved behind the others (order kept), out of base.count. */
static void set_derived_aside(struct alloy_gguf *g)
{
    size_t n = g->base.count, k = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_derived(g->info[i].gguf_name)) continue;
        struct alloy_tensor t = g->base.tensors[i];
        struct gguf_tensor ti = g->info[i];
        memmove(&g->base.tensors[k + 1], &g->base.tensors[k], (i - k) * sizeof t);
        memmove(&g->info[k + 1], &g->info[k], (i - k) * sizeof ti);
        g->base.tensors[k] = t;
        g->info[k++] = ti;
    }
    g->base.count = k;
    g->nderived = n - k;
}

const char *alloy_gguf_stored_name(const struct alloy_gguf *g, const struct alloy_tensor *t)
{
    return g->info[t - g->base.tensors].gguf_name;
}

const struct alloy_tensor *alloy_gguf_derived(const struct alloy_gguf *g, const char *gguf_name)
{
    for (size_t i = g->base.count; i < g->base.count + g->nderived; i++)
        if (strcmp(g->info[i].gguf_name, gguf_name) == 0) return &g->base.tensors[i];
    return NULL;
}

/* Every tensor but the derived ones gets its HF name, row order and value offset. */
static int map_names(struct alloy_gguf *g, struct alloy_err *err)
{
    if (!(g->ga = gguf_arch_named(g->arch)))
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: general.architecture: %s (the architectures whose "
                             "names alloy maps back to Hugging Face), found \"%s\"", g->base.path, gguf_arch_names(),
                             g->arch);
    set_derived_aside(g);
    if (!(g->names = alloy_xcalloc(g->base.count + g->nderived + 1, sizeof *g->names)))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", g->base.path);
    for (size_t i = 0; i < g->base.count; i++) {
        struct alloy_tensor *t = &g->base.tensors[i];
        const char *gn = g->info[i].gguf_name;
        int perm;
        char *hf = NULL;
        int known = hf_name(g->ga, gn, &perm, &hf);
        if (known < 0) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", g->base.path);
        if (known > 0)
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': no Hugging Face name known for it "
                                 "in architecture %s", g->base.path, gn, g->arch);
        g->names[i] = hf;
        t->name = hf;
        if (perm) {
            int rc = perm_heads_for(g, t, perm, &g->info[i].heads, err);
            if (rc) return rc;
        }
        if (gguf_arch_plus_one(g->ga, gn)) g->info[i].offset = -1.0f;
        int dup = 0; /* distinct GGUF names have distinct HF names (hf_name), checked all the same */
        if (alloy_strmap_put(&g->base.index, hf, i, &dup) != 0)
            return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", g->base.path);
        if (dup)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': maps to '%s' like an earlier tensor",
                                 g->base.path, gn, hf);
    }
    return ALLOY_OK;
}

/* ------------------------------------------------------------ opening, shards */

static int map_shard(struct alloy_gguf *g, const char *path, struct alloy_err *err)
{
    struct gguf_shard *sh = &g->shards[g->nshards];
    *sh = (struct gguf_shard){.fd = -1};
    if (!(sh->path = alloy_xstrdup(path))) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    g->nshards++;
    sh->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block the open */
    if (sh->fd < 0) return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(sh->fd, &st) != 0 || !S_ISREG(st.st_mode))
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: not a regular file", path);
    sh->size = (size_t)st.st_size;
    if (!sh->size) return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: magic: expected \"GGUF\", found an empty file", path);
    void *m = mmap(NULL, sh->size, PROT_READ, MAP_SHARED, sh->fd, 0);
    if (m == MAP_FAILED) return alloy_err_set(err, ALLOY_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
    sh->map = m;
    return ALLOY_OK;
}

static int open_shard(struct alloy_gguf *g, const char *path, uint32_t no, struct hdr *h, struct alloy_err *err)
{
    int rc = map_shard(g, path, err);
    if (rc) return rc;
    struct gguf_shard *sh = &g->shards[g->nshards - 1];
    *h = (struct hdr){.g = g, .sh = sh, .shard = no, .c = {sh->map, sh->size, 0, sh->path, err}};
    return parse_shard(h);
}

/* "<prefix>-00001-of-0000N.gguf": *plen = length of prefix, or -1 when path does not end so. */
static int split_prefix(const char *path, int64_t count, size_t *plen)
{
    char tail[32];
    snprintf(tail, sizeof tail, "-%05d-of-%05d.gguf", 1, (int)count);
    size_t n = strlen(path), k = strlen(tail);
    if (n < k || strcmp(path + n - k, tail) != 0) return -1;
    *plen = n - k;
    return 0;
}

static int open_splits(struct alloy_gguf *g, const struct hdr *first, struct alloy_err *err)
{
    const char *path = g->shards[0].path;
    int64_t count = first->split_count;
    size_t plen;
    if (first->split_no != 0)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: split.no: 0 (a split model is opened from its first shard), "
                             "found %lld", path, (long long)first->split_no);
    if (count > GGUF_MAX_SHARDS || split_prefix(path, count, &plen) != 0)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: split.count: %lld shards named <prefix>-00001-of-%05lld.gguf, "
                             "found this file name", path, (long long)count, (long long)count);
    struct gguf_shard *ns = alloy_xrealloc(g->shards, (size_t)count * sizeof *ns);
    if (!ns) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    g->shards = ns;
    for (int64_t i = 1; i < count; i++) {
        char *p = alloy_xasprintf("%.*s-%05d-of-%05d.gguf", (int)plen, g->shards[0].path, (int)i + 1, (int)count);
        struct hdr h;
        int rc = p ? open_shard(g, p, (uint32_t)i, &h, err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (!rc && h.split_no != i)
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: split.no: %lld expected, found %lld", p, (long long)i,
                               (long long)h.split_no);
        if (!rc && h.split_count != count)
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: split.count: %lld expected (as in the first shard), found "
                               "%lld", p, (long long)count, (long long)h.split_count);
        free(p);
        if (rc) return rc;
    }
    if (first->split_tensors >= 0 && (uint64_t)first->split_tensors != g->base.count)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: split.tensors.count: %lld expected, found %zu tensors in %lld "
                             "shards", path, (long long)first->split_tensors, g->base.count, (long long)count);
    return ALLOY_OK;
}

static void gguf_close(struct alloy_tensor_file *tf)
{
    struct alloy_gguf *g = (struct alloy_gguf *)tf;
    for (size_t i = 0; i < g->nshards; i++) {
        if (g->shards[i].map) munmap((void *)g->shards[i].map, g->shards[i].size);
        if (g->shards[i].fd >= 0) close(g->shards[i].fd);
        free(g->shards[i].path);
    }
    for (size_t i = 0; i < g->base.count + g->nderived; i++) {
        free(g->info[i].gguf_name);
        if (g->names) free(g->names[i]);
    }
    for (size_t i = 0; i < g->nkv; i++) free(g->kv[i].key);
    free(g->kv);
    free(g->names);
    free(g->info);
    free(g->shards);
    free(g->arch);
    free(g->base.tensors);
    alloy_strmap_free(&g->kv_index);
    alloy_strmap_free(&g->gguf_names);
    alloy_strmap_free(&g->base.index);
    free(g->base.path);
    free(g);
}

static int gguf_pread(const struct alloy_tensor_file *tf, const struct alloy_tensor *t, uint64_t off, void *dst,
                      size_t len, struct alloy_err *err)
{
    const struct alloy_gguf *g = (const struct alloy_gguf *)tf;
    const struct gguf_shard *sh = &g->shards[g->info[t - g->base.tensors].shard];
    uint64_t pos = (uint64_t)(t->data - sh->map) + off;
    uint8_t *p = dst;
    while (len) {
        ssize_t r = pread(sh->fd, p, len, (off_t)pos);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return alloy_err_set(err, ALLOY_ERR_IO, "%s: tensor '%s': read failed at byte %llu: %s", sh->path, t->name,
                                 (unsigned long long)pos, r < 0 ? strerror(errno) : "file shrank while open");
        p += r;
        len -= (size_t)r;
        pos += (uint64_t)r;
    }
    return ALLOY_OK;
}

static void gguf_release(const struct alloy_tensor_file *tf, const struct alloy_tensor *t, uint64_t off, uint64_t len)
{
    (void)tf;
    alloy_release_tensor_pages(t, off, len);
}

static uint64_t gguf_perm_heads(const struct alloy_tensor_file *tf, const struct alloy_tensor *t)
{
    const struct alloy_gguf *g = (const struct alloy_gguf *)tf;
    return g->info[t - g->base.tensors].heads;
}

static float gguf_value_offset(const struct alloy_tensor_file *tf, const struct alloy_tensor *t)
{
    const struct alloy_gguf *g = (const struct alloy_gguf *)tf;
    return g->info[t - g->base.tensors].offset;
}

static const struct alloy_tensor_file_ops gguf_ops = {"gguf", gguf_close, gguf_pread, gguf_release, gguf_perm_heads,
                                                      gguf_value_offset};

static int read_arch(struct alloy_gguf *g, struct alloy_err *err)
{
    const char *s;
    uint64_t len;
    int has = alloy_gguf_str(g, "general.architecture", &s, &len, err);
    if (has < 0) return ALLOY_ERR_FORMAT;
    if (!has) return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: general.architecture: expected a string, found none",
                                   g->base.path);
    if (!(g->arch = alloy_xmalloc(len + 1))) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    memcpy(g->arch, s, len);
    g->arch[len] = '\0';
    for (uint64_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: general.architecture: [a-z0-9]+, found \"%.40s\"",
                                 g->base.path, g->arch);
    return ALLOY_OK;
}

int alloy_gguf_open(const char *path, struct alloy_gguf **out, struct alloy_err *err)
{
    struct alloy_gguf *g = alloy_xcalloc(1, sizeof *g);
    if (g) g->shards = alloy_xcalloc(1, sizeof *g->shards);
    if (!g || !g->shards || !(g->base.path = alloy_xstrdup(path))) {
        if (g) free(g->shards);
        free(g);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    }
    g->base.ops = &gguf_ops;
    struct hdr first;
    int rc = open_shard(g, path, 0, &first, err);
    if (!rc && first.split_count > 1) rc = open_splits(g, &first, err);
    if (!rc) rc = read_arch(g, err);
    if (!rc) rc = map_names(g, err);
    if (rc) {
        gguf_close(&g->base);
        return rc;
    }
    *out = g;
    return ALLOY_OK;
}

struct alloy_tensor_file *alloy_gguf_base(struct alloy_gguf *g) { return &g->base; }

struct alloy_gguf *alloy_gguf_of(struct alloy_tensor_file *f)
{
    return f && f->ops == &gguf_ops ? (struct alloy_gguf *)f : NULL;
}

const char *alloy_tensor_file_part(const struct alloy_tensor_file *f, size_t i)
{
    if (f->ops != &gguf_ops) return i == 0 ? f->path : NULL;
    const struct alloy_gguf *g = (const struct alloy_gguf *)f;
    return i < g->nshards ? g->shards[i].path : NULL;
}
