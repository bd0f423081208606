/*
 * safetensors.c — read and validate safetensors files.
 *
 * DESIGN
 *   Layout: u64 LE header size N, N bytes of UTF-8 JSON, then the data
 *   buffer. The file is mapped read-only and never written. Validation runs
 *   entirely on the header before any tensor byte is touched, in the order of
 *   the reference Rust reader (safetensors/src/tensor.rs), each rule with its
 *   own message:
 *     1. file >= 8 bytes                         (HeaderTooSmall)
 *     2. N <= 100,000,000                          (HeaderTooLarge)
 *     3. 8 + N <= file size                        (InvalidHeaderLength)
 *     4. header is UTF-8, then JSON of the right shape: every entry has a
 *        known dtype, a shape of non-negative integers, data_offsets [b, e];
 *        __metadata__ maps strings to strings       (InvalidHeader*)
 *     5. sorted by offsets, tensors are contiguous from 0 with no gap or
 *        overlap; numel x bits is overflow-checked, a whole number of bytes
 *        and equal to e - b                         (InvalidOffset, ...)
 *     6. the last tensor ends exactly at end of file (MetadataIncompleteBuffer)
 *   alloy also rejects duplicate names (the reference silently overwrites),
 *   more than ALLOY_MAX_DIMS dimensions and extra keys are ignored as the
 *   reference does. Leading/trailing JSON whitespace in the header is allowed.
 *   Parsing walks the header one member at a time (json_members.h); a plain
 *   record is read by fast_entry, anything else by jansson (parse_entry),
 *   with the same verdicts. Names live in one arena, and the header's mapped
 *   pages are released once parsed.
 */
#include "core/arena.h"
#include "core/internal.h"
#include "core/strmap.h"
#include "formats/formats.h"
#include "formats/json_members.h"
#include "formats/mapped.h"
#include "formats/tensor_file.h"

#include <jansson.h>
#include <sys/mman.h>
#include <unistd.h>

struct alloy_st_file {
    struct alloy_tensor_file base; /* path, tensors in header order, name index (tensor_file.h) */
    struct alloy_mapped m;  /* the whole file (fd -1 for in-memory images) */
    const uint8_t *data;    /* start of the data buffer */
    struct alloy_arena names; /* the tensors' names */
    size_t nmeta;
    char **meta;            /* key0, value0, key1, value1, ... */
};

size_t alloy_utf8_check(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t n;
        uint32_t cp;
        uint64_t w;
        if (c < 0x80) {
            for (i++; i + 8 <= len && (memcpy(&w, s + i, 8), !(w & 0x8080808080808080ull)); i += 8) {} /* ASCII */
            continue;
        }
        else if ((c & 0xe0) == 0xc0) { n = 1; cp = c & 0x1f; }
        else if ((c & 0xf0) == 0xe0) { n = 2; cp = c & 0x0f; }
        else if ((c & 0xf8) == 0xf0) { n = 3; cp = c & 0x07; }
        else return i;
        for (size_t k = 1; k <= n; k++) {
            if (i + k >= len || (s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += n + 1;
    }
    return len;
}

static uint64_t read_u64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const struct alloy_tensor *ta = *(const struct alloy_tensor *const *)a;
    const struct alloy_tensor *tb = *(const struct alloy_tensor *const *)b;
    /* before validation, data holds the begin offset and nbytes the end offset */
    if (ta->data != tb->data) return ta->data < tb->data ? -1 : 1;
    if (ta->nbytes != tb->nbytes) return ta->nbytes < tb->nbytes ? -1 : 1;
    return 0;
}

/* Parses one tensor entry into t; begin/end are returned separately because
 * t->data is only set after validation. */
static int parse_entry(const char *label, const char *name, json_t *v, struct alloy_tensor *t,
                       uint64_t *begin, uint64_t *end, struct alloy_err *err)
{
    if (!json_is_object(v))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': header entry must be an object", label, name);
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", label, name);
    if (alloy_dtype_parse(json_string_value(dt), 0, &t->dtype) != 0)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%.40s\"", label, name,
                             json_string_value(dt));
    if (!json_is_array(sh))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': missing or non-array \"shape\"", label, name);
    size_t nd = json_array_size(sh);
    if (nd > ALLOY_MAX_DIMS)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': %zu dimensions, at most %d supported",
                             label, name, nd, ALLOY_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(sh, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return alloy_err_set(err, ALLOY_ERR_FORMAT,
                                 "%s: tensor '%s': shape[%zu] must be a non-negative integer", label, name, i);
        t->shape[i] = json_integer_value(d);
    }
    if (!json_is_array(off) || json_array_size(off) != 2 || !json_is_integer(json_array_get(off, 0)) ||
        !json_is_integer(json_array_get(off, 1)) || json_integer_value(json_array_get(off, 0)) < 0 ||
        json_integer_value(json_array_get(off, 1)) < 0)
        return alloy_err_set(err, ALLOY_ERR_FORMAT,
                             "%s: tensor '%s': \"data_offsets\" must be a pair of non-negative integers", label, name);
    *begin = (uint64_t)json_integer_value(json_array_get(off, 0));
    *end = (uint64_t)json_integer_value(json_array_get(off, 1));
    return ALLOY_OK;
}

/* ------------------------------------------------------------ the fast path for one record */

/* A cursor over one header record. The fast path reads the record every
 * writer emits, {"dtype": "X", "shape": [..], "data_offsets": [b, e]} in any
 * order with plain strings and integers, without building a jansson tree.
 * Anything else (escapes, extra or repeated keys, negative or huge numbers,
 * unknown dtypes, too many dimensions) returns 0 and goes to parse_entry,
 * which accepts exactly what the fast path accepts, with the same values,
 * and reports every error; so the fast path changes no verdict. */
struct rec { const char *s; size_t i, n; };

static void rec_ws(struct rec *r)
{
    while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' || r->s[r->i] == '\r'))
        r->i++;
}

static int rec_char(struct rec *r, char ch)
{
    rec_ws(r);
    if (r->i >= r->n || r->s[r->i] != ch) return 0;
    r->i++;
    return 1;
}

static int rec_string(struct rec *r, const char **p, size_t *len)
{
    rec_ws(r);
    size_t a = r->i, e = a + 1;
    if (a >= r->n || r->s[a] != '"') return 0;
    while (e < r->n && r->s[e] != '"' && r->s[e] != '\\') e++;
    if (e >= r->n || r->s[e] != '"') return 0;
    r->i = e + 1;
    return json_plain_string(r->s, a, e + 1, p, len);
}

/* [u, u, ...] of at most max plain non-negative integers. */
static int rec_uints(struct rec *r, uint64_t *out, size_t max, size_t *count)
{
    *count = 0;
    if (!rec_char(r, '[')) return 0;
    if (rec_char(r, ']')) return 1;
    for (;;) {
        unsigned long long v;
        rec_ws(r);
        size_t a = r->i;
        while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9') r->i++;
        if (*count == max || !json_plain_uint(r->s, a, r->i, &v)) return 0;
        out[(*count)++] = v;
        if (!rec_char(r, ',')) return rec_char(r, ']');
    }
}

static int fast_field(struct rec *r, const char *k, size_t kn, unsigned *seen, struct alloy_tensor *t,
                      uint64_t *begin, uint64_t *end)
{
    uint64_t v[ALLOY_MAX_DIMS];
    size_t n;
    if (kn == 5 && memcmp(k, "dtype", 5) == 0 && !(*seen & 1)) {
        const char *d;
        char buf[16];
        if (!rec_string(r, &d, &n) || n >= sizeof buf) return 0;
        memcpy(buf, d, n);
        buf[n] = '\0';
        *seen |= 1;
        return alloy_dtype_parse(buf, 0, &t->dtype) == 0;
    }
    if (kn == 5 && memcmp(k, "shape", 5) == 0 && !(*seen & 2)) {
        if (!rec_uints(r, v, ALLOY_MAX_DIMS, &n)) return 0;
        t->ndim = (int)n;
        for (size_t d = 0; d < n; d++) t->shape[d] = (int64_t)v[d];
        *seen |= 2;
        return 1;
    }
    if (kn == 12 && memcmp(k, "data_offsets", 12) == 0 && !(*seen & 4)) {
        if (!rec_uints(r, v, 2, &n) || n != 2) return 0;
        *begin = v[0];
        *end = v[1];
        *seen |= 4;
        return 1;
    }
    return 0;
}

/* 1 when s[a, b) is a common record, parsed into t, *begin, *end; 0 to parse it with jansson. */
static int fast_entry(const char *s, size_t a, size_t b, struct alloy_tensor *t, uint64_t *begin, uint64_t *end)
{
    struct rec r = {s, a, b};
    unsigned seen = 0;
    if (b - a > JSON_PART_MAX || !rec_char(&r, '{')) return 0;
    do {
        const char *k;
        size_t kn;
        if (!rec_string(&r, &k, &kn) || !rec_char(&r, ':') || !fast_field(&r, k, kn, &seen, t, begin, end)) return 0;
    } while (rec_char(&r, ','));
    if (!rec_char(&r, '}') || seen != 7) return 0;
    rec_ws(&r);
    return r.i == r.n;
}

/* ------------------------------------------------------------ the header, one member at a time */

struct hdr_ctx {
    struct alloy_st_file *f;
    const char *label;
    uint64_t *begins;
    struct alloy_tensor **sorted;
    struct alloy_strmap metakeys;
    int seen_meta;
    struct alloy_err *err;
};

static json_t *load_part(struct hdr_ctx *c, const char *s, size_t a, size_t b, int *rc)
{
    return json_part(s, a, b, c->label, "header JSON", rc, c->err);
}

static int scan_error(struct hdr_ctx *c, const char *what, size_t at)
{
    return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: header JSON: %s (byte %zu)", c->label, what, at);
}

static int meta_member(void *vctx, const char *s, const struct json_member *m)
{
    struct hdr_ctx *c = vctx;
    struct alloy_st_file *f = c->f;
    int rc = ALLOY_OK, dup = 0;
    json_t *k = load_part(c, s, m->ks, m->ke, &rc), *v = k ? load_part(c, s, m->vs, m->ve, &rc) : NULL;
    if (!v) goto out;
    if (!json_is_string(v)) {
        rc = alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: __metadata__: key '%s' must map to a string", c->label,
                           json_string_value(k));
        goto out;
    }
    f->meta[2 * f->nmeta] = alloy_xstrdup(json_string_value(k));
    f->meta[2 * f->nmeta + 1] = alloy_xstrdup(json_string_value(v));
    f->nmeta++;
    if (!f->meta[2 * f->nmeta - 2] || !f->meta[2 * f->nmeta - 1] ||
        alloy_strmap_put(&c->metakeys, f->meta[2 * f->nmeta - 2], 0, &dup) != 0)
        rc = alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: out of memory", c->label);
    else if (dup)
        rc = scan_error(c, "duplicate object key in __metadata__", m->ks);
out:
    json_decref(k);
    json_decref(v);
    return rc;
}

static int parse_meta(struct hdr_ctx *c, const char *s, const struct json_member *m)
{
    const char *what;
    size_t n, at;
    if (c->seen_meta) return scan_error(c, "duplicate object key '__metadata__'", m->ks);
    c->seen_meta = 1;
    if (s[m->vs] != '{')
        return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: __metadata__ must be an object of strings", c->label);
    if (json_members(s, m->vs, m->ve, NULL, NULL, &n, &what, &at)) return scan_error(c, what, at);
    if (!(c->f->meta = alloy_xcalloc(n * 2, sizeof *c->f->meta)))
        return alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: out of memory", c->label);
    int rc = json_members(s, m->vs, m->ve, meta_member, c, &n, &what, &at);
    return rc < 0 ? scan_error(c, what, at) : rc;
}

static int add_entry(struct hdr_ctx *c, const char *key, size_t klen, const char *s, const struct json_member *m)
{
    struct alloy_st_file *f = c->f;
    size_t i = f->base.count;
    struct alloy_tensor *t = &f->base.tensors[i];
    int rc = ALLOY_OK, dup = 0;
    if (!(t->name = alloy_arena_strndup(&f->names, key, klen)))
        return alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: out of memory", c->label);
    if (!fast_entry(s, m->vs, m->ve, t, &c->begins[2 * i], &c->begins[2 * i + 1])) {
        json_t *val = load_part(c, s, m->vs, m->ve, &rc);
        if (!val) return rc;
        rc = parse_entry(c->label, t->name, val, t, &c->begins[2 * i], &c->begins[2 * i + 1], c->err);
        json_decref(val);
        if (rc) return rc;
    }
    t->file = &f->base;
    f->base.count++;
    /* stash offsets in data/nbytes fields for sorting; fixed up by check_layout */
    t->data = (const uint8_t *)(uintptr_t)c->begins[2 * i];
    t->nbytes = c->begins[2 * i + 1];
    c->sorted[i] = t;
    if (alloy_strmap_putn(&f->base.index, t->name, klen, i, &dup) != 0)
        return alloy_err_set(c->err, ALLOY_ERR_NOMEM, "%s: out of memory", c->label);
    if (dup) return alloy_err_set(c->err, ALLOY_ERR_FORMAT, "%s: tensor '%s': duplicate name", c->label, t->name);
    return ALLOY_OK;
}

static int header_member(void *vctx, const char *s, const struct json_member *m)
{
    struct hdr_ctx *c = vctx;
    const char *p;
    size_t n;
    if (json_plain_string(s, m->ks, m->ke, &p, &n))
        return n == 12 && memcmp(p, "__metadata__", 12) == 0 ? parse_meta(c, s, m) : add_entry(c, p, n, s, m);
    int rc = ALLOY_OK;
    json_t *k = load_part(c, s, m->ks, m->ke, &rc);
    if (!k) return rc;
    const char *key = json_string_value(k);
    rc = strcmp(key, "__metadata__") == 0 ? parse_meta(c, s, m) : add_entry(c, key, strlen(key), s, m);
    json_decref(k);
    return rc;
}

/* Rules 5 and 6 over the parsed entries, then data/nbytes get their final meaning. */
static int check_layout(struct alloy_st_file *f, struct alloy_tensor **sorted, uint64_t n, struct alloy_err *err)
{
    const char *label = f->base.path;
    alloy_qsort(sorted, f->base.count, sizeof *sorted, cmp_by_offset);
    uint64_t expect = 0;
    for (size_t i = 0; i < f->base.count; i++) {
        struct alloy_tensor *t = sorted[i];
        uint64_t b = (uint64_t)(uintptr_t)t->data, e = t->nbytes;
        if (b != expect || e < b)
            return alloy_err_set(err, ALLOY_ERR_FORMAT,
                               "%s: tensor '%s': data_offsets [%llu, %llu] but the previous tensor ends at %llu "
                               "(tensors must be contiguous, without gaps or overlaps)",
                               label, t->name, (unsigned long long)b, (unsigned long long)e,
                               (unsigned long long)expect);
        uint64_t numel = 1, nbits;
        for (int d = 0; d < t->ndim; d++) {
            if (ckd_mul_u64(&numel, numel, (uint64_t)t->shape[d]))
                return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': element count overflows 64 bits",
                                   label, t->name);
        }
        if (ckd_mul_u64(&nbits, numel, alloy_dtype_traits(t->dtype)->bits))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': byte size overflows 64 bits", label, t->name);
        if (nbits % 8)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': %llu elements of %s are not a whole number of bytes",
                               label, t->name, (unsigned long long)numel, alloy_dtype_traits(t->dtype)->name);
        if (e - b != nbits / 8) {
            char shape[160];
            size_t pos = 0;
            shape[0] = '\0';
            for (int d = 0; d < t->ndim && pos < sizeof shape - 24; d++)
                pos += (size_t)snprintf(shape + pos, sizeof shape - pos, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            return alloy_err_set(err, ALLOY_ERR_FORMAT,
                                 "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but shape [%s] x %s needs %llu",
                                 label, t->name, (unsigned long long)b, (unsigned long long)e,
                                 (unsigned long long)(e - b), shape, alloy_dtype_traits(t->dtype)->name,
                                 (unsigned long long)(nbits / 8));
        }
        t->numel = numel;
        expect = e;
    }
    uint64_t data_len = f->m.size - 8 - n;
    if (expect != data_len)
        return alloy_err_set(err, ALLOY_ERR_FORMAT,
                           "%s: tensor data ends at byte %llu of the data buffer but the file holds %llu bytes there "
                           "(%s)",
                           label, (unsigned long long)expect, (unsigned long long)data_len,
                           expect < data_len ? "trailing bytes" : "file is truncated");
    f->data = f->m.map + 8 + n;
    for (size_t i = 0; i < f->base.count; i++) {
        struct alloy_tensor *t = &f->base.tensors[i];
        uint64_t b = (uint64_t)(uintptr_t)t->data, e = t->nbytes;
        t->data = f->data + b;
        t->nbytes = e - b;
    }
    return ALLOY_OK;
}

static int parse_header(struct alloy_st_file *f, struct alloy_err *err)
{
    const char *label = f->base.path;
    if (f->m.size < 8)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: file is %zu bytes, too small for the 8-byte header size",
                             label, f->m.size);
    uint64_t n = read_u64le(f->m.map);
    if (n > ALLOY_ST_MAX_HEADER)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: header size %llu exceeds the %llu-byte limit", label,
                             (unsigned long long)n, (unsigned long long)ALLOY_ST_MAX_HEADER);
    if (n > f->m.size - 8)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: header size %llu runs past the end of the %zu-byte file",
                             label, (unsigned long long)n, f->m.size);
    const char *hdr = (const char *)f->m.map + 8;
    size_t bad = alloy_utf8_check((const uint8_t *)hdr, (size_t)n);
    if (bad != n)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: header is not valid UTF-8 (byte %zu)", label, bad);

    struct hdr_ctx c = {.f = f, .label = label, .err = err};
    const char *what;
    size_t count, at;
    int rc = json_members(hdr, 0, (size_t)n, NULL, NULL, &count, &what, &at);
    if (rc) {
        if (strcmp(what, "expected an object") == 0)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: header must be a JSON object", label);
        return scan_error(&c, what, at);
    }
    f->base.tensors = alloy_xcalloc(count, sizeof *f->base.tensors);
    c.begins = alloy_xcalloc(count * 2, sizeof *c.begins);
    c.sorted = alloy_xcalloc(count, sizeof *c.sorted);
    if (!f->base.tensors || !c.begins || !c.sorted || alloy_strmap_reserve(&f->base.index, count) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for %zu tensors", label, count);
    if (!rc) rc = json_members(hdr, 0, (size_t)n, header_member, &c, &count, &what, &at);
    if (rc < 0) rc = scan_error(&c, what, at);
    if (!rc) rc = check_layout(f, c.sorted, n, err);
    free(c.sorted);
    free(c.begins);
    alloy_strmap_free(&c.metakeys);
    return rc;
}

static const struct alloy_tensor_file_ops st_ops;

/* After parsing nothing points into the header (names and metadata are copies): its mapped pages leave
 * the process (the page cache keeps them), so a header costs memory only while it is parsed. */
static void release_header(const struct alloy_st_file *f)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t end = ((uintptr_t)f->data) & ~(page - 1);
    if (f->m.owns_map && end > (uintptr_t)f->m.map) madvise((void *)f->m.map, end - (uintptr_t)f->m.map, MADV_DONTNEED);
}

static int open_common(struct alloy_st_file *f, struct alloy_st_file **out, struct alloy_err *err)
{
    int rc = parse_header(f, err);
    if (rc) {
        alloy_st_close(f);
        return rc;
    }
    release_header(f);
    *out = f;
    return ALLOY_OK;
}

int alloy_st_open_memory(const uint8_t *buf, size_t len, const char *label, struct alloy_st_file **out,
                         struct alloy_err *err)
{
    struct alloy_st_file *f = alloy_xcalloc(1, sizeof *f);
    if (!f || !(f->base.path = alloy_xstrdup(label ? label : "<memory>"))) {
        free(f);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", label ? label : "<memory>");
    }
    f->base.ops = &st_ops;
    alloy_mapped_memory(buf, len, &f->m);
    return open_common(f, out, err);
}

int alloy_st_open(const char *path, struct alloy_st_file **out, struct alloy_err *err)
{
    struct alloy_st_file *f = alloy_xcalloc(1, sizeof *f);
    if (!f || !(f->base.path = alloy_xstrdup(path))) {
        free(f);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    }
    f->base.ops = &st_ops;
    int rc = alloy_mapped_open(path, &f->m, err);
    if (rc) {
        free(f->base.path);
        free(f);
        return rc;
    }
    return open_common(f, out, err);
}

void alloy_st_close(struct alloy_st_file *f)
{
    if (!f) return;
    alloy_mapped_close(&f->m);
    for (size_t i = 0; i < 2 * f->nmeta; i++) free(f->meta[i]);
    free(f->meta);
    alloy_arena_free(&f->names);
    free(f->base.tensors);
    alloy_strmap_free(&f->base.index);
    free(f->base.path);
    free(f);
}

const char *alloy_st_path(const struct alloy_st_file *f) { return f->base.path; }
size_t alloy_st_count(const struct alloy_st_file *f) { return f->base.count; }

const struct alloy_tensor *alloy_st_tensor(const struct alloy_st_file *f, size_t i)
{
    return alloy_tensor_file_tensor(&f->base, i);
}

const struct alloy_tensor *alloy_st_find(const struct alloy_st_file *f, const char *name)
{
    return alloy_tensor_file_find(&f->base, name);
}

const char *alloy_st_metadata(const struct alloy_st_file *f, const char *key)
{
    for (size_t i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
    return NULL;
}

static void st_release_range(const struct alloy_tensor_file *tf, const struct alloy_tensor *t, uint64_t off,
                             uint64_t len)
{
    alloy_mapped_release(&((const struct alloy_st_file *)tf)->m, t, off, len);
}

static int st_pread(const struct alloy_tensor_file *tf, const struct alloy_tensor *t, uint64_t off, void *dst,
                    size_t len, struct alloy_err *err)
{
    return alloy_mapped_pread(&((const struct alloy_st_file *)tf)->m, tf->path, t, off, dst, len, err);
}

static void st_close(struct alloy_tensor_file *tf) { alloy_st_close((struct alloy_st_file *)tf); }

static const struct alloy_tensor_file_ops st_ops = {"safetensors", st_close, st_pread, st_release_range, NULL};

struct alloy_tensor_file *alloy_st_file_base(struct alloy_st_file *f) { return &f->base; }
