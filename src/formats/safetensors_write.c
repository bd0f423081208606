/*
 * safetensors_write.c — the safetensors header of a file about to be written.
 *
 * DESIGN
 *   A streaming writer knows every tensor's name, dtype, shape and size
 *   before it has a byte of data, so the header is built first and every
 *   tensor's offset is fixed; the data can then be filled in any order. The
 *   JSON keeps the given order (jansson with JSON_PRESERVE_ORDER), ends with
 *   __metadata__ {"format": "pt"} as transformers writes it, and is padded
 *   with spaces to a multiple of 8 bytes so the data buffer is aligned (the
 *   reference writer does the same).
 */
#include "core/internal.h"
#include "formats/formats.h"

#include <jansson.h>

static json_t *entry(const struct alloy_tensor_desc *t)
{
    json_t *shape = json_array(), *offs = json_array(), *e = json_object();
    if (!shape || !offs || !e) {
        json_decref(shape);
        json_decref(offs);
        json_decref(e);
        return NULL;
    }
    for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
    json_array_append_new(offs, json_integer((json_int_t)t->offset));
    json_array_append_new(offs, json_integer((json_int_t)(t->offset + t->nbytes)));
    json_object_set_new(e, "dtype", json_string(alloy_dtype_traits(t->dtype)->name));
    json_object_set_new(e, "shape", shape);
    json_object_set_new(e, "data_offsets", offs);
    return e;
}

uint8_t *alloy_st_header(const struct alloy_tensor_desc *t, size_t n, size_t *len)
{
    json_t *root = json_object(), *meta = json_object();
    int ok = root && meta;
    for (size_t i = 0; i < n && ok; i++) {
        json_t *e = entry(&t[i]);
        ok = e && json_object_set_new(root, t[i].name, e) == 0;
    }
    if (ok) {
        json_object_set_new(meta, "format", json_string("pt"));
        ok = json_object_set_new(root, "__metadata__", meta) == 0;
        meta = NULL;
    }
    char *text = ok ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    json_decref(meta);
    if (!text) return NULL;
    size_t tl = strlen(text), padded = (tl + 7) & ~(size_t)7;
    uint8_t *buf = alloy_xmalloc(8 + padded);
    if (buf) {
        for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
        memcpy(buf + 8, text, tl);
        memset(buf + 8 + tl, ' ', padded - tl);
        *len = 8 + padded;
    }
    free(text);
    return buf;
}
