/*
 * pickle.c — interpret the pickle of a torch.save state dict; execute nothing.
 *
 * DESIGN
 *   A pickle is a program for a stack machine: opcodes push values, build
 *   containers, look up globals ("module.name") and call them (REDUCE).
 *   Python's unpickler imports and calls whatever the file names, which is
 *   how a .bin file runs code. This interpreter knows only the opcodes
 *   torch.save emits for state dicts (pickle protocol 2, plus the protocol
 *   4-5 spellings of the same operations: FRAME, MEMOIZE, STACK_GLOBAL,
 *   SHORT_BINUNICODE, BINUNICODE8) and only these globals, each replaced by a C function:
 *     collections.OrderedDict()            -> an empty dict
 *     torch._utils._rebuild_tensor_v2(...) -> a tensor record (storage,
 *                                             offset, shape, stride)
 *     torch._utils._rebuild_parameter(t,…) -> t
 *     torch.<Type>Storage                  -> a dtype, only inside the
 *                                             persistent id
 *   BINPERSID receives torch's ('storage', type, key, location, numel)
 *   tuple and yields a storage record; BUILD on a dict (the state dict's
 *   _metadata attribute) is accepted and dropped. Any other global is
 *   refused when it is named, before anything could call it.
 *
 *   Values live in one allocation list freed at the end, so cycles made
 *   through the memo cost nothing and nothing is walked recursively. Work
 *   and memory are linear in the pickle's size: memo indexes are assigned
 *   in order (0, 1, 2, ... as Python's pickler does), at most
 *   ALLOY_PICKLE_MAX_MARKS marks are open and containers nest at most
 *   ALLOY_PICKLE_MAX_DEPTH deep.
 */
#include "core/internal.h"
#include "formats/formats.h"
#include "formats/pickle.h"

#include <stdarg.h>
#include <stdio.h>

enum pv_kind { PV_NONE, PV_BOOL, PV_INT, PV_FLOAT, PV_STR, PV_TUPLE, PV_LIST, PV_DICT, PV_GLOBAL, PV_STORAGE,
               PV_TENSOR };
static const char *const k_kind_names[] = {"None", "bool", "int", "float", "str", "tuple", "list", "dict",
                                           "global", "storage", "tensor"};

enum global_kind { G_ODICT, G_REBUILD, G_PARAM, G_STORAGE };

static const struct {
    const char *module, *name;
    enum global_kind kind;
    enum alloy_dtype dtype;
} k_globals[] = {
    {"collections", "OrderedDict", G_ODICT, 0},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD, 0},
    {"torch._utils", "_rebuild_parameter", G_PARAM, 0},
    {"torch", "FloatStorage", G_STORAGE, ALLOY_DTYPE_F32},
    {"torch", "HalfStorage", G_STORAGE, ALLOY_DTYPE_F16},
    {"torch", "BFloat16Storage", G_STORAGE, ALLOY_DTYPE_BF16},
    {"torch", "DoubleStorage", G_STORAGE, ALLOY_DTYPE_F64},
    {"torch", "LongStorage", G_STORAGE, ALLOY_DTYPE_I64},
    {"torch", "IntStorage", G_STORAGE, ALLOY_DTYPE_I32},
    {"torch", "ShortStorage", G_STORAGE, ALLOY_DTYPE_I16},
    {"torch", "CharStorage", G_STORAGE, ALLOY_DTYPE_I8},
    {"torch", "ByteStorage", G_STORAGE, ALLOY_DTYPE_U8},
    {"torch", "BoolStorage", G_STORAGE, ALLOY_DTYPE_BOOL},
};

struct pv {
    enum pv_kind kind;
    unsigned depth;
    union {
        int64_t i;
        double f;
        struct { const char *s; size_t len; } str; /* points into the pickle */
        struct { struct pv **items; size_t n, cap; } seq; /* a dict holds key, value, key, value, ... */
        size_t global;                                    /* index in k_globals */
        struct { enum alloy_dtype dtype; const char *key; size_t keylen; uint64_t numel; } st;
        struct { struct pv *storage; uint64_t offset; int ndim; int64_t shape[ALLOY_MAX_DIMS], stride[ALLOY_MAX_DIMS]; } t;
    } u;
};

struct vm {
    const uint8_t *p;
    size_t len, pos, at; /* at: the offset of the opcode being run */
    const char *label;
    struct alloy_err *err;
    struct pv **stack;
    size_t sp, scap;
    size_t marks[ALLOY_PICKLE_MAX_MARKS];
    int nmarks;
    struct pv **memo;
    size_t nmemo, memocap;
    void **allocs;
    size_t nallocs, acap;
};

/* ------------------------------------------------------------ errors, memory, the stack */

/* Copies at most 80 bytes of s into buf (121 bytes), control bytes as '?', so messages stay one line. */
static const char *printable(const char *s, size_t len, char *buf)
{
    size_t k = 0;
    for (size_t i = 0; i < len && k < 80; i++) buf[k++] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    if (len > 80) memcpy(buf + k, "...", 3), k += 3;
    buf[k] = '\0';
    return buf;
}

__attribute__((format(printf, 2, 3))) static int fail(struct vm *v, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return alloy_err_set(v->err, ALLOY_ERR_FORMAT, "%s: byte %zu: %s", v->label, v->at, msg);
}

static int nomem(struct vm *v) { return alloy_err_set(v->err, ALLOY_ERR_NOMEM, "%s: out of memory", v->label); }

static void *vm_alloc(struct vm *v, size_t n)
{
    if (v->nallocs == v->acap) {
        size_t nc = v->acap ? 2 * v->acap : 256;
        void **na = alloy_xrealloc(v->allocs, nc * sizeof *na);
        if (!na) return NULL;
        v->allocs = na;
        v->acap = nc;
    }
    void *p = alloy_xcalloc(1, n);
    if (p) v->allocs[v->nallocs++] = p;
    return p;
}

static struct pv *new_value(struct vm *v, enum pv_kind kind)
{
    struct pv *x = vm_alloc(v, sizeof *x);
    if (x) x->kind = kind;
    return x;
}

static int push(struct vm *v, struct pv *x)
{
    if (!x) return nomem(v);
    if (v->sp == v->scap) {
        size_t nc = v->scap ? 2 * v->scap : 64;
        struct pv **ns = alloy_xrealloc(v->stack, nc * sizeof *ns);
        if (!ns) return nomem(v);
        v->stack = ns;
        v->scap = nc;
    }
    v->stack[v->sp++] = x;
    return ALLOY_OK;
}

/* The stack floor: values below the innermost MARK are not this opcode's to take. */
static size_t floor_of(const struct vm *v) { return v->nmarks ? v->marks[v->nmarks - 1] : 0; }

static int pop(struct vm *v, struct pv **x)
{
    if (v->sp <= floor_of(v)) return fail(v, "expected a value on the stack, found %s", v->sp ? "a MARK" : "none");
    *x = v->stack[--v->sp];
    return ALLOY_OK;
}

/* The two values on top: *b the topmost. */
static int pop2(struct vm *v, struct pv **a, struct pv **b)
{
    int rc = pop(v, b);
    return rc ? rc : pop(v, a);
}

static int pop_mark(struct vm *v, size_t *from)
{
    if (!v->nmarks) return fail(v, "expected a MARK on the stack, found none");
    *from = v->marks[--v->nmarks];
    return ALLOY_OK;
}

/* Appends x to the tuple, list or dict c, keeping the nesting bound. */
static int seq_add(struct vm *v, struct pv *c, struct pv *x)
{
    if (x->depth + 1 > c->depth) c->depth = x->depth + 1;
    if (c->depth > ALLOY_PICKLE_MAX_DEPTH)
        return fail(v, "expected containers nested at most %d deep, found deeper", ALLOY_PICKLE_MAX_DEPTH);
    if (c->u.seq.n == c->u.seq.cap) { /* the old array stays in the allocation list: at most twice the final size */
        size_t nc = c->u.seq.cap ? 2 * c->u.seq.cap : 4;
        struct pv **ni = vm_alloc(v, nc * sizeof *ni);
        if (!ni) return nomem(v);
        if (c->u.seq.n) memcpy(ni, c->u.seq.items, c->u.seq.n * sizeof *ni);
        c->u.seq.items = ni;
        c->u.seq.cap = nc;
    }
    c->u.seq.items[c->u.seq.n++] = x;
    return ALLOY_OK;
}

/* Moves stack[from, sp) into container c (a new tuple when c is NULL and kind is PV_TUPLE). */
static int collect(struct vm *v, size_t from, struct pv *c)
{
    for (size_t i = from; i < v->sp; i++) {
        int rc = seq_add(v, c, v->stack[i]);
        if (rc) return rc;
    }
    v->sp = from;
    return ALLOY_OK;
}

/* ------------------------------------------------------------ reading operands */

static int need(struct vm *v, size_t n, const uint8_t **q)
{
    if (n > v->len - v->pos) return fail(v, "expected %zu more bytes of operand, found %zu", n, v->len - v->pos);
    *q = v->p + v->pos;
    v->pos += n;
    return ALLOY_OK;
}

static int read_uint(struct vm *v, size_t n, uint64_t *x)
{
    const uint8_t *q = NULL;
    int rc = need(v, n, &q);
    if (rc) return rc;
    *x = 0;
    for (size_t i = n; i-- > 0;) *x = (*x << 8) | q[i];
    return ALLOY_OK;
}

static int push_int(struct vm *v, int64_t i)
{
    struct pv *x = new_value(v, PV_INT);
    if (x) x->u.i = i;
    return push(v, x);
}

static int push_str(struct vm *v, size_t lenbytes)
{
    uint64_t n = 0;
    const uint8_t *q = NULL;
    int rc = read_uint(v, lenbytes, &n);
    if (!rc && n > v->len - v->pos) return fail(v, "expected a string of %llu bytes, found %zu left", (unsigned long long)n, v->len - v->pos);
    if (!rc) rc = need(v, (size_t)n, &q);
    if (rc) return rc;
    if (alloy_utf8_check(q, (size_t)n) != n) return fail(v, "expected a UTF-8 string, found invalid bytes");
    struct pv *x = new_value(v, PV_STR);
    if (x) x->u.str.s = (const char *)q, x->u.str.len = (size_t)n;
    return push(v, x);
}

/* LONG1: n little-endian two's-complement bytes, n <= 8. */
static int push_long1(struct vm *v)
{
    uint64_t n = 0, u = 0;
    int rc = read_uint(v, 1, &n);
    if (rc) return rc;
    if (n > 8) return fail(v, "expected an integer of at most 8 bytes, found %llu", (unsigned long long)n);
    if ((rc = read_uint(v, (size_t)n, &u))) return rc;
    if (n && n < 8 && (u >> (8 * n - 1)) & 1) u |= ~(uint64_t)0 << (8 * n);
    return push_int(v, (int64_t)u);
}

static int push_float(struct vm *v)
{
    const uint8_t *q = NULL;
    int rc = need(v, 8, &q);
    if (rc) return rc;
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++) bits = (bits << 8) | q[i]; /* big-endian */
    struct pv *x = new_value(v, PV_FLOAT);
    if (x) memcpy(&x->u.f, &bits, sizeof bits);
    return push(v, x);
}

/* ------------------------------------------------------------ globals and calls */

static int push_global(struct vm *v, const char *mod, size_t mlen, const char *name, size_t nlen)
{
    for (size_t g = 0; g < ALLOY_ARRAY_LEN(k_globals); g++) {
        if (strlen(k_globals[g].module) != mlen || memcmp(k_globals[g].module, mod, mlen) != 0 ||
            strlen(k_globals[g].name) != nlen || memcmp(k_globals[g].name, name, nlen) != 0)
            continue;
        struct pv *x = new_value(v, PV_GLOBAL);
        if (x) x->u.global = g;
        return push(v, x);
    }
    char a[124], b[124];
    return fail(v, "expected a global of a state dict (collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
                "torch._utils._rebuild_parameter, torch.<Type>Storage), found %s.%s (refused, never executed)",
                printable(mod, mlen, a), printable(name, nlen, b));
}

/* GLOBAL: "module\nname\n" in the operand. */
static int op_global(struct vm *v)
{
    const char *s = (const char *)v->p + v->pos, *end = (const char *)v->p + v->len;
    const char *nl1 = memchr(s, '\n', (size_t)(end - s));
    const char *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
    if (!nl2) return fail(v, "expected GLOBAL's \"module\\nname\\n\", found the end of the pickle");
    v->pos = (size_t)(nl2 + 1 - (const char *)v->p);
    return push_global(v, s, (size_t)(nl1 - s), nl1 + 1, (size_t)(nl2 - nl1 - 1));
}

static int op_stack_global(struct vm *v)
{
    struct pv *name = NULL, *mod = NULL;
    int rc = pop2(v, &mod, &name);
    if (rc) return rc;
    if (name->kind != PV_STR || mod->kind != PV_STR)
        return fail(v, "expected STACK_GLOBAL's module and name strings, found %s and %s", k_kind_names[mod->kind],
                    k_kind_names[name->kind]);
    return push_global(v, mod->u.str.s, mod->u.str.len, name->u.str.s, name->u.str.len);
}

/* Reads tuple x of n non-negative ints into out; what names it in messages. */
static int int_tuple(struct vm *v, const struct pv *x, int64_t *out, int *n, const char *what)
{
    if (x->kind != PV_TUPLE) return fail(v, "_rebuild_tensor_v2: expected %s as a tuple, found %s", what, k_kind_names[x->kind]);
    if (x->u.seq.n > ALLOY_MAX_DIMS)
        return fail(v, "_rebuild_tensor_v2: expected at most %d dimensions, found %zu", ALLOY_MAX_DIMS, x->u.seq.n);
    for (size_t i = 0; i < x->u.seq.n; i++) {
        const struct pv *d = x->u.seq.items[i];
        if (d->kind != PV_INT || d->u.i < 0)
            return fail(v, "_rebuild_tensor_v2: expected %s[%zu] a non-negative int, found %s", what, i,
                        d->kind == PV_INT ? "a negative int" : k_kind_names[d->kind]);
        out[i] = d->u.i;
    }
    *n = (int)x->u.seq.n;
    return ALLOY_OK;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]) */
static int rebuild_tensor(struct vm *v, const struct pv *args)
{
    struct pv *const *a = args->u.seq.items;
    if (args->u.seq.n != 6 && args->u.seq.n != 7)
        return fail(v, "_rebuild_tensor_v2: expected 6 or 7 arguments, found %zu", args->u.seq.n);
    if (a[0]->kind != PV_STORAGE || a[1]->kind != PV_INT || a[1]->u.i < 0 || a[4]->kind != PV_BOOL ||
        a[5]->kind != PV_DICT || (args->u.seq.n == 7 && a[6]->kind != PV_DICT && a[6]->kind != PV_NONE))
        return fail(v, "_rebuild_tensor_v2: expected (storage, offset >= 0, size, stride, bool, dict), found (%s, %s, "
                    "%s, %s, %s, %s)", k_kind_names[a[0]->kind], k_kind_names[a[1]->kind], k_kind_names[a[2]->kind],
                    k_kind_names[a[3]->kind], k_kind_names[a[4]->kind], k_kind_names[a[5]->kind]);
    struct pv *t = new_value(v, PV_TENSOR);
    if (!t) return nomem(v);
    int nstride = 0;
    int rc = int_tuple(v, a[2], t->u.t.shape, &t->u.t.ndim, "size");
    if (!rc) rc = int_tuple(v, a[3], t->u.t.stride, &nstride, "stride");
    if (rc) return rc;
    if (nstride != t->u.t.ndim)
        return fail(v, "_rebuild_tensor_v2: expected a stride per dimension (%d), found %d", t->u.t.ndim, nstride);
    t->u.t.storage = a[0];
    t->u.t.offset = (uint64_t)a[1]->u.i;
    return push(v, t);
}

static int op_reduce(struct vm *v)
{
    struct pv *args = NULL, *fn = NULL;
    int rc = pop2(v, &fn, &args);
    if (rc) return rc;
    if (fn->kind != PV_GLOBAL || args->kind != PV_TUPLE)
        return fail(v, "expected REDUCE of a global and an argument tuple, found %s and %s", k_kind_names[fn->kind],
                    k_kind_names[args->kind]);
    switch (k_globals[fn->u.global].kind) {
    case G_ODICT:
        if (args->u.seq.n) return fail(v, "collections.OrderedDict: expected no arguments, found %zu", args->u.seq.n);
        return push(v, new_value(v, PV_DICT));
    case G_REBUILD:
        return rebuild_tensor(v, args);
    case G_PARAM: /* _rebuild_parameter(data, requires_grad, backward_hooks) */
        if (args->u.seq.n != 3 || args->u.seq.items[0]->kind != PV_TENSOR)
            return fail(v, "_rebuild_parameter: expected (tensor, bool, dict), found %zu arguments", args->u.seq.n);
        return push(v, args->u.seq.items[0]);
    default:
        return fail(v, "expected a callable global, found torch.%s", k_globals[fn->u.global].name);
    }
}

/* BINPERSID with torch's ('storage', torch.<Type>Storage, key, location, numel). */
static int op_persid(struct vm *v)
{
    struct pv *pid = NULL;
    int rc = pop(v, &pid);
    if (rc) return rc;
    struct pv *const *a = pid->u.seq.items;
    if (pid->kind != PV_TUPLE || pid->u.seq.n != 5 || a[0]->kind != PV_STR || a[0]->u.str.len != 7 ||
        memcmp(a[0]->u.str.s, "storage", 7) != 0 || a[1]->kind != PV_GLOBAL ||
        k_globals[a[1]->u.global].kind != G_STORAGE || a[2]->kind != PV_STR || a[3]->kind != PV_STR ||
        a[4]->kind != PV_INT || a[4]->u.i < 0)
        return fail(v, "expected a persistent id ('storage', torch.<Type>Storage, key, location, numel), found %s",
                    pid->kind == PV_TUPLE ? "another tuple" : k_kind_names[pid->kind]);
    const char *key = a[2]->u.str.s;
    size_t klen = a[2]->u.str.len;
    for (size_t i = 0; i < klen; i++)
        if (!(key[i] >= '0' && key[i] <= '9') && !(key[i] >= 'a' && key[i] <= 'z') && !(key[i] >= 'A' && key[i] <= 'Z') &&
            key[i] != '_')
            klen = 0;
    if (klen == 0 || klen > 64) {
        char b[124];
        return fail(v, "expected a storage key of 1-64 letters, digits or '_', found '%s'", printable(key, a[2]->u.str.len, b));
    }
    struct pv *s = new_value(v, PV_STORAGE);
    if (!s) return nomem(v);
    s->u.st.dtype = k_globals[a[1]->u.global].dtype;
    s->u.st.key = key;
    s->u.st.keylen = klen;
    s->u.st.numel = (uint64_t)a[4]->u.i;
    return push(v, s);
}

/* ------------------------------------------------------------ containers and the memo */

static int op_setitems(struct vm *v, int many)
{
    size_t from = 0;
    int rc = many ? pop_mark(v, &from) : ALLOY_OK;
    if (!rc && !many) from = v->sp >= 2 ? v->sp - 2 : 0;
    if (rc) return rc;
    if (from == 0 || from > v->sp || (v->sp - from) % 2 || from - 1 < floor_of(v))
        return fail(v, "expected a dict and key/value pairs on the stack, found %zu values", v->sp - from);
    struct pv *d = v->stack[from - 1];
    if (d->kind != PV_DICT) return fail(v, "expected SETITEM(S) on a dict, found %s", k_kind_names[d->kind]);
    return collect(v, from, d);
}

static int op_appends(struct vm *v, int many)
{
    size_t from = 0;
    int rc = many ? pop_mark(v, &from) : ALLOY_OK;
    if (!rc && !many) from = v->sp >= 1 ? v->sp - 1 : 0;
    if (rc) return rc;
    if (from == 0 || from > v->sp || from - 1 < floor_of(v))
        return fail(v, "expected a list and values on the stack, found %zu values", v->sp - from);
    struct pv *l = v->stack[from - 1];
    if (l->kind != PV_LIST) return fail(v, "expected APPEND(S) on a list, found %s", k_kind_names[l->kind]);
    return collect(v, from, l);
}

/* TUPLE (n < 0: from the last MARK), TUPLE1-3, EMPTY_TUPLE; LIST and DICT with kind. */
static int op_build_seq(struct vm *v, int n, enum pv_kind kind)
{
    size_t from = 0;
    int rc = ALLOY_OK;
    if (n < 0) rc = pop_mark(v, &from);
    else if (v->sp - floor_of(v) < (size_t)n) return fail(v, "expected %d values for a tuple, found %zu", n, v->sp - floor_of(v));
    else from = v->sp - (size_t)n;
    if (rc) return rc;
    if (kind == PV_DICT && (v->sp - from) % 2) return fail(v, "expected key/value pairs for DICT, found an odd count");
    struct pv *t = new_value(v, kind);
    if (!t) return nomem(v);
    if ((rc = collect(v, from, t))) return rc;
    return push(v, t);
}

static int op_put(struct vm *v, size_t opbytes)
{
    uint64_t idx = 0;
    int rc = opbytes ? read_uint(v, opbytes, &idx) : ALLOY_OK;
    if (!opbytes) idx = v->nmemo; /* MEMOIZE */
    if (rc) return rc;
    if (v->sp <= floor_of(v)) return fail(v, "expected a value to memoize, found %s", v->sp ? "a MARK" : "none");
    if (idx > v->nmemo) /* Python's pickler numbers its memo 0, 1, 2, ... */
        return fail(v, "expected memo index %zu or below (they are assigned in order), found %llu", v->nmemo,
                    (unsigned long long)idx);
    if (idx == v->nmemo) {
        if (v->nmemo == v->memocap) {
            size_t nc = v->memocap ? 2 * v->memocap : 64;
            struct pv **nm = alloy_xrealloc(v->memo, nc * sizeof *nm);
            if (!nm) return nomem(v);
            v->memo = nm;
            v->memocap = nc;
        }
        v->nmemo++;
    }
    v->memo[idx] = v->stack[v->sp - 1];
    return ALLOY_OK;
}

static int op_get(struct vm *v, size_t opbytes)
{
    uint64_t idx = 0;
    int rc = read_uint(v, opbytes, &idx);
    if (rc) return rc;
    if (idx >= v->nmemo) return fail(v, "expected a stored memo index, found %llu", (unsigned long long)idx);
    return push(v, v->memo[idx]);
}

static int op_build(struct vm *v)
{
    struct pv *state = NULL, *obj;
    int rc = pop(v, &state);
    if (!rc && v->sp <= floor_of(v)) return fail(v, "expected an object to BUILD, found none");
    if (rc) return rc;
    obj = v->stack[v->sp - 1];
    if (obj->kind != PV_DICT) /* a state dict's attributes (_metadata): read, then dropped */
        return fail(v, "expected BUILD on a dict, found %s", k_kind_names[obj->kind]);
    return ALLOY_OK;
}

static int op_mark(struct vm *v)
{
    if (v->nmarks == ALLOY_PICKLE_MAX_MARKS)
        return fail(v, "expected at most %d open MARKs, found more", ALLOY_PICKLE_MAX_MARKS);
    v->marks[v->nmarks++] = v->sp;
    return ALLOY_OK;
}

/* ------------------------------------------------------------ the loop */

static int op_frame_proto(struct vm *v, uint8_t op)
{
    uint64_t x = 0;
    int rc = read_uint(v, op == 0x80 ? 1 : 8, &x);
    if (rc) return rc;
    if (op == 0x80 && (x < 2 || x > 5)) return fail(v, "expected pickle protocol 2 to 5, found %llu", (unsigned long long)x);
    if (op == 0x95 && x > v->len - v->pos) return fail(v, "expected a frame of %llu bytes, found %zu left", (unsigned long long)x, v->len - v->pos);
    return ALLOY_OK;
}

static int step(struct vm *v, uint8_t op)
{
    uint64_t u = 0;
    struct pv *x = NULL;
    int rc;
    switch (op) {
    case 0x80: case 0x95: return op_frame_proto(v, op);          /* PROTO, FRAME */
    case 'N': return push(v, new_value(v, PV_NONE));
    case 0x88: case 0x89:                                        /* NEWTRUE, NEWFALSE */
        if ((x = new_value(v, PV_BOOL))) x->u.i = op == 0x88;
        return push(v, x);
    case 'K': case 'M': return (rc = read_uint(v, op == 'K' ? 1 : 2, &u)) ? rc : push_int(v, (int64_t)u);
    case 'J': return (rc = read_uint(v, 4, &u)) ? rc : push_int(v, (int32_t)(uint32_t)u);
    case 0x8a: return push_long1(v);
    case 'G': return push_float(v);
    case 'X': return push_str(v, 4);
    case 0x8c: return push_str(v, 1);                            /* SHORT_BINUNICODE */
    case 0x8d: return push_str(v, 8);                            /* BINUNICODE8 */
    case '(': return op_mark(v);
    case ')': return op_build_seq(v, 0, PV_TUPLE);
    case 't': return op_build_seq(v, -1, PV_TUPLE);
    case 0x85: case 0x86: case 0x87: return op_build_seq(v, op - 0x84, PV_TUPLE);
    case ']': return op_build_seq(v, 0, PV_LIST);
    case 'l': return op_build_seq(v, -1, PV_LIST);
    case '}': return op_build_seq(v, 0, PV_DICT);
    case 'd': return op_build_seq(v, -1, PV_DICT);
    case 's': case 'u': return op_setitems(v, op == 'u');
    case 'a': case 'e': return op_appends(v, op == 'e');
    case 'q': return op_put(v, 1);
    case 'r': return op_put(v, 4);
    case 0x94: return op_put(v, 0);                              /* MEMOIZE */
    case 'h': return op_get(v, 1);
    case 'j': return op_get(v, 4);
    case 'c': return op_global(v);
    case 0x93: return op_stack_global(v);
    case 'R': return op_reduce(v);
    case 'b': return op_build(v);
    case 'Q': return op_persid(v);
    case '0': return pop(v, &x);                                 /* POP */
    case '1': return pop_mark(v, &v->sp);                        /* POP_MARK */
    case '2': return (rc = pop(v, &x)) || (rc = push(v, x)) ? rc : push(v, x); /* DUP */
    default:
        return fail(v, "expected an opcode torch.save emits for a state dict, found 0x%02x%s", op,
                    op == 'i' || op == 0x81 || op == 0x92 || op == 'o' ? " (object construction, refused)" : "");
    }
}

/* Runs to STOP; *top is the one value left. */
static int run(struct vm *v, struct pv **top)
{
    while (v->pos < v->len) {
        v->at = v->pos;
        uint8_t op = v->p[v->pos++];
        if (op == '.') {
            if (v->nmarks || v->sp != 1) return fail(v, "expected one value at STOP, found %zu and %d MARKs", v->sp, v->nmarks);
            *top = v->stack[0];
            return ALLOY_OK;
        }
        int rc = step(v, op);
        if (rc) return rc;
    }
    v->at = v->len;
    return fail(v, "expected STOP, found the end of the pickle");
}

/* ------------------------------------------------------------ the state dict out of the result */

static int dict_get(const struct pv *d, const char *key, struct pv **val)
{
    for (size_t i = 0; i + 1 < d->u.seq.n; i += 2) {
        const struct pv *k = d->u.seq.items[i];
        if (k->kind == PV_STR && k->u.str.len == strlen(key) && memcmp(k->u.str.s, key, k->u.str.len) == 0) {
            *val = d->u.seq.items[i + 1];
            return 1;
        }
    }
    return 0;
}

static int export_tensor(struct vm *v, const struct pv *k, const struct pv *t, struct alloy_pickle_tensor *o)
{
    char b[124];
    if (k->kind != PV_STR) return fail(v, "expected state-dict keys to be strings, found %s", k_kind_names[k->kind]);
    if (memchr(k->u.str.s, 0, k->u.str.len) || !k->u.str.len)
        return fail(v, "'%s': expected a tensor name without NUL bytes, found one", printable(k->u.str.s, k->u.str.len, b));
    if (t->kind != PV_TENSOR)
        return fail(v, "'%s': expected a tensor, found %s", printable(k->u.str.s, k->u.str.len, b), k_kind_names[t->kind]);
    const struct pv *s = t->u.t.storage;
    o->name = alloy_xmalloc(k->u.str.len + 1);
    o->key = alloy_xmalloc(s->u.st.keylen + 1);
    if (!o->name || !o->key) return nomem(v);
    memcpy(o->name, k->u.str.s, k->u.str.len);
    o->name[k->u.str.len] = '\0';
    memcpy(o->key, s->u.st.key, s->u.st.keylen);
    o->key[s->u.st.keylen] = '\0';
    o->dtype = s->u.st.dtype;
    o->storage_numel = s->u.st.numel;
    o->offset = t->u.t.offset;
    o->ndim = t->u.t.ndim;
    memcpy(o->shape, t->u.t.shape, sizeof o->shape);
    memcpy(o->stride, t->u.t.stride, sizeof o->stride);
    return ALLOY_OK;
}

static int export_dict(struct vm *v, struct pv *top, struct alloy_pickle_tensor **out, size_t *n)
{
    struct pv *inner;
    v->at = v->len;
    if (top->kind != PV_DICT) return fail(v, "expected a state dict (a dict of tensors), found %s", k_kind_names[top->kind]);
    if (dict_get(top, "state_dict", &inner) && inner->kind == PV_DICT) top = inner; /* a training checkpoint */
    size_t count = top->u.seq.n / 2;
    struct alloy_pickle_tensor *ts = alloy_xcalloc(count ? count : 1, sizeof *ts);
    if (!ts) return nomem(v);
    for (size_t i = 0; i < count; i++) {
        int rc = export_tensor(v, top->u.seq.items[2 * i], top->u.seq.items[2 * i + 1], &ts[i]);
        if (rc) {
            alloy_pickle_free(ts, count);
            return rc;
        }
    }
    *out = ts;
    *n = count;
    return ALLOY_OK;
}

int alloy_pickle_state_dict(const uint8_t *p, size_t len, const char *label, struct alloy_pickle_tensor **out,
                            size_t *n, struct alloy_err *err)
{
    struct vm v = {.p = p, .len = len, .label = label, .err = err};
    struct pv *top = NULL;
    *out = NULL;
    *n = 0;
    int rc = len > ALLOY_PICKLE_MAX_BYTES
                 ? alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: expected a pickle of at most %zu bytes, found %zu", label,
                                 ALLOY_PICKLE_MAX_BYTES, len)
                 : run(&v, &top);
    if (!rc) rc = export_dict(&v, top, out, n);
    for (size_t i = 0; i < v.nallocs; i++) free(v.allocs[i]);
    free(v.allocs);
    free(v.stack);
    free(v.memo);
    return rc;
}

void alloy_pickle_free(struct alloy_pickle_tensor *t, size_t n)
{
    if (!t) return;
    for (size_t i = 0; i < n; i++) {
        free(t[i].name);
        free(t[i].key);
    }
    free(t);
}
