/*
 * test_formats.c — the format-independent tensor-file interface and the
 * safetensors header writer: a header written by alloy_st_header, followed
 * by data, reads back through alloy_tensor_file_open with every name, dtype,
 * shape and byte; GGUF files are recognised by content and refused with a
 * clear message; reads outside a tensor are errors; the dtype table's block
 * sizes give the byte counts of sub-byte and plain types.
 */
#include "test.h"
#include "alloy.h"
#include "formats/formats.h"

#include <stdlib.h>

TEST(formats_header_writer_round_trip)
{
    int64_t s0[2] = {3, 4}, s1[1] = {5}, s2[1] = {0};
    struct alloy_tensor_desc d[3] = {
        {"b.weight", ALLOY_DTYPE_BF16, 2, s0, 0, 24},
        {"a.bias", ALLOY_DTYPE_F32, 1, s1, 24, 20},
        {"empty", ALLOY_DTYPE_I64, 1, s2, 44, 0},
    };
    size_t hlen = 0;
    uint8_t *hdr = alloy_st_header(d, 3, &hlen);
    CHECK(hdr != NULL);
    if (!hdr) return;
    CHECK_INT(hlen % 8, 0);
    CHECK_STR_CONTAINS((const char *)hdr + 8, "\"__metadata__\":{\"format\":\"pt\"}");
    char path[600];
    snprintf(path, sizeof path, "%s/w.safetensors", test_tmpdir());
    FILE *f = fopen(path, "wb");
    uint8_t data[44];
    for (int i = 0; i < 44; i++) data[i] = (uint8_t)(i * 3 + 1);
    fwrite(hdr, 1, hlen, f);
    fwrite(data, 1, sizeof data, f);
    fclose(f);
    free(hdr);
    struct alloy_tensor_file *tf = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_tensor_file_open(path, &tf, &err) == ALLOY_OK, "%s", err.msg);
    if (!tf) return;
    CHECK(!strcmp(alloy_tensor_file_format(tf), "safetensors"));
    CHECK_INT(alloy_tensor_file_count(tf), 3);
    for (int i = 0; i < 3; i++) {
        const struct alloy_tensor *t = alloy_tensor_file_find(tf, d[i].name);
        CHECK_MSG(t != NULL, "%s missing", d[i].name);
        if (!t) continue;
        CHECK(t->file == tf);
        CHECK_INT(t->dtype, d[i].dtype);
        CHECK_INT(t->ndim, d[i].ndim);
        CHECK_INT(t->shape[0], d[i].shape[0]);
        CHECK_INT(t->nbytes, d[i].nbytes);
        uint8_t got[24] = {0};
        if (t->nbytes) CHECK_INT(alloy_tensor_pread(t, 0, got, (size_t)t->nbytes, &err), ALLOY_OK);
        CHECK(memcmp(got, data + d[i].offset, (size_t)t->nbytes) == 0);
    }
    const struct alloy_tensor *b = alloy_tensor_file_find(tf, "b.weight");
    uint8_t tmp[32];
    CHECK_INT(alloy_tensor_pread(b, 20, tmp, 8, &err), ALLOY_ERR_IO); /* past the tensor's end */
    CHECK_STR_CONTAINS(err.msg, "outside the tensor");
    alloy_tensor_file_close(tf);
}

TEST(formats_gguf_recognised_by_content)
{
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", test_tmpdir()); /* the name says safetensors */
    test_write_text(path, "GGUF\x03");
    struct alloy_tensor_file *tf = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_tensor_file_open(path, &tf, &err), ALLOY_ERR_FORMAT); /* read as GGUF: the version is cut */
    CHECK_STR_CONTAINS(err.msg, "version: expected more bytes");
    CHECK_STR_CONTAINS(err.msg, path);
    snprintf(path, sizeof path, "%s/missing.safetensors", test_tmpdir());
    CHECK_INT(alloy_tensor_file_open(path, &tf, &err), ALLOY_ERR_IO);
    CHECK_STR_CONTAINS(err.msg, "cannot open");
}

TEST(formats_dtype_blocks)
{
    uint64_t n = 0;
    CHECK(alloy_dtype_nbytes(ALLOY_DTYPE_BF16, 7, &n) == 0 && n == 14);
    CHECK(alloy_dtype_nbytes(ALLOY_DTYPE_F4, 6, &n) == 0 && n == 3);
    CHECK(alloy_dtype_nbytes(ALLOY_DTYPE_F4, 5, &n) == -1);         /* half a block */
    CHECK(alloy_dtype_nbytes(ALLOY_DTYPE_F6_E2M3, 8, &n) == 0 && n == 6);
    CHECK(alloy_dtype_nbytes(ALLOY_DTYPE_F64, UINT64_MAX / 4, &n) == -1); /* overflow */
    for (int t = 0; t < ALLOY_DTYPE_COUNT; t++) {
        const struct alloy_dtype_traits *tr = alloy_dtype_traits((enum alloy_dtype)t);
        uint64_t one;
        CHECK(alloy_dtype_nbytes((enum alloy_dtype)t, tr->block, &one) == 0 && one == tr->block_bytes);
        CHECK_INT(tr->bits, tr->block_bytes * 8 / tr->block);
        CHECK_INT(tr->mergeable, tr->to_f32 != NULL);
        CHECK_INT(tr->from_f32 != NULL, tr->mergeable); /* block types: the reference quantizers */
    }
    /* the table's reference rows agree with the dispatching conversions */
    const struct alloy_dtype_traits *bf = alloy_dtype_traits(ALLOY_DTYPE_BF16);
    float src[5] = {1.0f, -2.5f, 3.14159f, 1e-40f, 65504.0f}, a[5], b[5];
    uint16_t h1[5], h2[5];
    CHECK_INT(bf->from_f32(src, h1, 5), 0);
    alloy_from_f32(ALLOY_DTYPE_BF16, src, h2, 5);
    CHECK(memcmp(h1, h2, sizeof h1) == 0);
    bf->to_f32(h1, a, 5);
    alloy_to_f32(ALLOY_DTYPE_BF16, h1, b, 5);
    CHECK(memcmp(a, b, sizeof a) == 0);
}
