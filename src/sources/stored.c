/*
 * stored.c — sources that read a stored tensor: whole (stored), a top-left
 * block of it (window), or standing in for a missing tied lm_head (tied).
 *
 * DESIGN
 *   Every read goes through the tensor file's checked pread, never through a
 *   mapping, so an input that shrinks during a merge is an error naming it,
 *   not a SIGBUS. A stored source of a plain type up to 4 bytes preads the
 *   stored bytes into the top of the caller's float32 buffer and widens them
 *   forward in place: each write lands at or below a read that is still to
 *   come, so one buffer serves both. Wider types (F64), block types and rows
 *   stored permuted (GGUF's llama Q/K) go through alloy_tensor_read_f32
 *   (tensor_file.h): 16 KiB pieces of whole blocks, any partial block at
 *   either end of the range through a buffer. A window reads each output row's
 *   first `cols` elements from the wider stored row the same way.
 */
#include "core/internal.h"
#include "formats/tensor_file.h"
#include "sources/source.h"

static int read_convert(const struct alloy_tensor *t, uint64_t e, size_t n, float *dst, struct alloy_err *err)
{
    return alloy_tensor_read_f32(t, e, n, dst, err);
}

static int read_stored(const struct alloy_input *s, uint64_t e0, uint64_t e1, void *dst, enum alloy_input_mode mode,
                       struct alloy_err *err)
{
    const struct alloy_tensor *t = s->t;
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(t->dtype);
    size_t n = (size_t)(e1 - e0);
    if (mode == ALLOY_INPUT_BF16_RAW) return alloy_tensor_pread(t, e0 * 2, dst, n * 2, err);
    if (tr->block == 1 && tr->block_bytes <= 4 && !alloy_tensor_permuted(t)) { /* in place: stored bytes at the top of dst, widened forward */
        uint8_t *stored = (uint8_t *)dst + n * (4 - tr->block_bytes);
        int rc = alloy_tensor_pread(t, e0 * tr->block_bytes, stored, n * tr->block_bytes, err);
        if (rc) return rc;
        if (t->dtype != ALLOY_DTYPE_F32) alloy_to_f32(t->dtype, stored, dst, n);
        return ALLOY_OK;
    }
    return read_convert(t, e0, n, dst, err); /* wider than float32, blocks, or permuted rows */
}

static int read_window(const struct alloy_input *s, uint64_t e0, uint64_t e1, void *dst, enum alloy_input_mode mode,
                       struct alloy_err *err)
{
    const struct alloy_tensor *t = s->t;
    uint64_t src_cols = (uint64_t)t->shape[1];
    float *out = dst;
    for (uint64_t e = e0; e < e1;) { /* the output row's run, from the wider stored row */
        uint64_t r = e / s->cols, c = e % s->cols;
        uint64_t run = s->cols - c;
        if (run > e1 - e) run = e1 - e;
        int rc = read_convert(t, r * src_cols + c, (size_t)run, out + (e - e0), err);
        if (rc) return rc;
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
    return (s->ops == &g_stored || s->ops == &g_tied) && s->t->dtype == ALLOY_DTYPE_BF16 &&
           !alloy_tensor_permuted(s->t);
}

int alloy_input_is_tied(const struct alloy_input *s) { return s->ops == &g_tied || s->ops == &g_tied_window; }
