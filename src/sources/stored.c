/*
 * stored.c — sources that read a stored tensor: whole (stored), a top-left
 * block of it (window), or standing in for a missing tied lm_head (tied).
 *
 * DESIGN
 *   A stored source of a plain element type preads the stored bytes into the
 *   top of the caller's float32 buffer and widens them forward in place: each
 *   write lands at or below a read that is still to come, so one buffer
 *   serves both and no page of the input is mapped into the process. Types
 *   wider than float32 (F64) and block types go through the mapping and drop
 *   its pages right after. A window reads each output row's first `cols`
 *   elements from the wider stored row, through the mapping, and drops those
 *   pages when the tensor is done.
 */
#include "core/internal.h"
#include "sources/source.h"

static int read_stored(const struct alloy_input *s, uint64_t e0, uint64_t e1, void *dst, enum alloy_input_mode mode,
                       struct alloy_err *err)
{
    const struct alloy_tensor *t = s->t;
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(t->dtype);
    size_t n = (size_t)(e1 - e0);
    if (mode == ALLOY_INPUT_BF16_RAW) return alloy_tensor_pread(t, e0 * 2, dst, n * 2, err);
    uint64_t off, len;
    if (alloy_dtype_nbytes(t->dtype, e0, &off) || alloy_dtype_nbytes(t->dtype, n, &len))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': elements [%llu, %llu) do not start and end "
                             "on %s blocks", alloy_tensor_file_path(t->file), t->name, (unsigned long long)e0,
                             (unsigned long long)e1, tr->name);
    if (tr->block == 1 && tr->block_bytes <= 4) {
        uint8_t *stored = (uint8_t *)dst + n * (4 - tr->block_bytes);
        int rc = alloy_tensor_pread(t, off, stored, (size_t)len, err);
        if (rc) return rc;
        if (t->dtype != ALLOY_DTYPE_F32) alloy_to_f32(t->dtype, stored, dst, n);
        return ALLOY_OK;
    }
    alloy_to_f32(t->dtype, t->data + off, dst, n);
    alloy_tensor_release_range(t, off, len);
    return ALLOY_OK;
}

static int read_window(const struct alloy_input *s, uint64_t e0, uint64_t e1, void *dst, enum alloy_input_mode mode,
                       struct alloy_err *err)
{
    const struct alloy_tensor *t = s->t;
    size_t esize = alloy_dtype_traits(t->dtype)->block_bytes; /* plain element types only (checked when built) */
    uint64_t src_cols = (uint64_t)t->shape[1];
    float *out = dst;
    for (uint64_t e = e0; e < e1;) {
        uint64_t r = e / s->cols, c = e % s->cols;
        uint64_t run = s->cols - c;
        if (run > e1 - e) run = e1 - e;
        alloy_to_f32(t->dtype, t->data + (r * src_cols + c) * esize, out + (e - e0), (size_t)run);
        e += run;
    }
    return ALLOY_OK;
}

static void release_tensor(const struct alloy_input *s) { alloy_tensor_release(s->t); }

static const struct alloy_input_ops g_stored = {"stored", read_stored, release_tensor, NULL};
static const struct alloy_input_ops g_window = {"window", read_window, release_tensor, NULL};
static const struct alloy_input_ops g_tied = {"tied", read_stored, release_tensor, NULL};
static const struct alloy_input_ops g_tied_window = {"tied window", read_window, release_tensor, NULL};

void alloy_input_stored(struct alloy_input *s, int model, const struct alloy_tensor *t, uint64_t rows,
                         uint64_t cols, int tied)
{
    int whole = t->numel == rows * cols;
    *s = (struct alloy_input){.model = model, .t = t, .rows = rows, .cols = cols};
    s->ops = whole ? (tied ? &g_tied : &g_stored) : (tied ? &g_tied_window : &g_window);
}

int alloy_input_raw_bf16(const struct alloy_input *s)
{
    return (s->ops == &g_stored || s->ops == &g_tied) && s->t->dtype == ALLOY_DTYPE_BF16;
}

int alloy_input_is_tied(const struct alloy_input *s) { return s->ops == &g_tied || s->ops == &g_tied_window; }
