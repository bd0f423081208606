/*
 * test_quant.c — the block dequantizers against llama.cpp itself, and the
 * sha256 the comparison uses.
 *
 * DESIGN
 *   tests/data/gguf/expected.json (trimmed from ../shared/fixtures/gguf) holds,
 *   per tensor of every GGUF file made by a real llama.cpp (c392e50), the
 *   sha256 of its stored bytes and of ggml's own dequantized float32 values
 *   in file layout. Each tensor's stored bytes are read through the tensor
 *   file (alloy_tensor_pread) and dequantized with the dtype table's row
 *   (alloy_to_f32): both digests must match, for all ten block types and
 *   F16/BF16/F32, the imatrix file and the split file (its three shards'
 *   tensors in shard order). Small hand-built blocks pin the formulas apart
 *   from the golden data (Q5_0's signed 5th bit, Q4_K's packed scales of
 *   sub-blocks 4-7, Q6_K's signed scales), computed here from the layout.
 */
#include "test.h"
#include "sha256.h"

#include "alloy.h"

#include <jansson.h>
#include <malloc.h>
#include <stdlib.h>

TEST(quant_sha256_fips_vectors)
{
    char hex[65];
    sha256_of("abc", 3, hex);
    CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    sha256_of("", 0, hex);
    CHECK(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_of(two, strlen(two), hex);
    CHECK(strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0);
    struct sha256 s;
    sha256_init(&s);
    char a[1000];
    memset(a, 'a', sizeof a);
    for (int i = 0; i < 1000; i++) sha256_update(&s, a, sizeof a); /* one million 'a', in pieces */
    sha256_hex(&s, hex);
    CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0);
}

static uint16_t h16(float f) { return alloy_f32_to_f16(f); }

TEST(quant_hand_built_blocks)
{
    float y[256];
    /* Q5_0: d = 0.5; element j's 5th bit from qh bit j; value (nib | hbit<<4) - 16 */
    uint8_t q5[22] = {0};
    uint16_t d = h16(0.5f);
    memcpy(q5, &d, 2);
    q5[2] = 0x01;                 /* qh bit 0: element 0 gets +16 */
    q5[5] = 0x80;                 /* qh bit 31: element 31 gets +16 */
    q5[6] = 0x3f;                 /* element 0: nib 15, element 16: nib 3 */
    q5[6 + 15] = 0xf0;            /* element 15: nib 0, element 31: nib 15 */
    alloy_to_f32(ALLOY_DTYPE_Q5_0, q5, y, 32);
    CHECK(y[0] == (15 + 16 - 16) * 0.5f);
    CHECK(y[16] == (3 - 16) * 0.5f);
    CHECK(y[15] == (0 - 16) * 0.5f);
    CHECK(y[31] == (15 + 16 - 16) * 0.5f);
    /* Q4_K: sub-block 5's scale and min live in byte 9 (low 4 bits) and bits 6-7 of bytes 1 and 5 */
    uint8_t q4[144] = {0};
    uint16_t dd = h16(0.25f), dm = h16(2.0f);
    memcpy(q4, &dd, 2);
    memcpy(q4 + 2, &dm, 2);
    int sc5 = 0x2b, m5 = 0x1d;                            /* 6-bit values */
    q4[4 + 9] = (uint8_t)((sc5 & 15) | (m5 & 15) << 4);  /* scales[9] */
    q4[4 + 1] = (uint8_t)((sc5 >> 4) << 6);              /* scales[1] bits 6-7: sc5 bits 4-5 */
    q4[4 + 5] = (uint8_t)((m5 >> 4) << 6);               /* scales[5] bits 6-7: m5 bits 4-5 */
    q4[16 + 64 + 3] = 0x70;                              /* chunk 2, l = 3: high nibble 7 -> element 160 + 3 */
    alloy_to_f32(ALLOY_DTYPE_Q4_K, q4, y, 256);
    CHECK(y[163] == 0.25f * (float)sc5 * 7.0f - 2.0f * (float)m5);
    CHECK(y[164] == 0.25f * (float)sc5 * 0.0f - 2.0f * (float)m5);
    CHECK(y[0] == 0.0f); /* sub-block 0: scale 0 (scales[0] = 0 apart from bit 6-7 of byte 1) */
    /* Q6_K: signed int8 scales; element 0 = d * sc[0] * (q6 - 32) */
    uint8_t q6[210] = {0};
    uint16_t d6 = h16(0.125f);
    memcpy(q6 + 208, &d6, 2);
    q6[192] = (uint8_t)-3;      /* scales[0] = -3 */
    q6[0] = 0x05;               /* element 0 low 4 bits: 5; qh[0] bits 0-1 = 0 -> q6 = 5 */
    alloy_to_f32(ALLOY_DTYPE_Q6_K, q6, y, 256);
    CHECK(y[0] == 0.125f * -3.0f * (float)(5 - 32));
    CHECK(y[1] == 0.125f * -3.0f * (float)(0 - 32));
}

/* The digests of one tensor, in file layout. */
static void check_tensor(const char *file, const struct alloy_tensor *t, json_t *want)
{
    const char *sha = json_string_value(json_object_get(want, "sha256"));
    const char *deq = json_string_value(json_object_get(want, "deq_sha256"));
    uint8_t *raw = malloc(t->nbytes ? t->nbytes : 1);
    float *f = malloc((t->numel ? t->numel : 1) * sizeof *f);
    struct alloy_err err = {0};
    char hex[65];
    CHECK(raw && f);
    if (!raw || !f) goto out;
    CHECK_MSG(alloy_tensor_pread(t, 0, raw, t->nbytes, &err) == ALLOY_OK, "%s", err.msg);
    sha256_of(raw, t->nbytes, hex);
    CHECK_MSG(sha && strcmp(hex, sha) == 0, "%s: %s: stored bytes sha256 %s, expected %s", file, t->name, hex, sha);
    alloy_to_f32(t->dtype, raw, f, t->numel);
    sha256_of(f, t->numel * sizeof *f, hex);
    CHECK_MSG(deq && strcmp(hex, deq) == 0, "%s: %s (%s): dequantized sha256 %s, expected %s", file, t->name,
              alloy_dtype_traits(t->dtype)->name, hex, deq);
out:
    free(raw);
    free(f);
}

TEST(quant_every_file_dequantizes_as_llamacpp)
{
    json_error_t jerr;
    json_t *exp = json_load_file(test_data("gguf/expected.json"), 0, &jerr);
    CHECK_MSG(exp, "expected.json: %s", jerr.text);
    if (!exp) return;
    json_t *files = json_object_get(exp, "files");
    const char *name;
    json_t *spec;
    int nfiles = 0, types_seen[ALLOY_DTYPE_COUNT] = {0};
    json_object_foreach(files, name, spec) {
        if (strstr(name, "-00002-of-") || strstr(name, "-00003-of-")) continue; /* read through shard 1 */
        struct alloy_tensor_file *f = NULL;
        struct alloy_err err = {0};
        char path[512];
        snprintf(path, sizeof path, "gguf/%s", name);
        int rc = alloy_tensor_file_open(test_data(path), &f, &err);
        CHECK_MSG(rc == ALLOY_OK, "%s", err.msg);
        if (rc) continue;
        json_t *want = json_array();
        json_array_extend(want, json_object_get(spec, "tensors"));
        for (int s = 2; strstr(name, "-00001-of-") && s <= 3; s++) { /* the other shards' tensors follow */
            char other[512];
            snprintf(other, sizeof other, "%.*s-%05d-of-00003.gguf", (int)(strstr(name, "-00001-of-") - name), name, s);
            json_array_extend(want, json_object_get(json_object_get(files, other), "tensors"));
        }
        CHECK_INT(alloy_tensor_file_count(f), json_array_size(want));
        for (size_t i = 0; i < alloy_tensor_file_count(f) && i < json_array_size(want); i++) {
            const struct alloy_tensor *t = alloy_tensor_file_tensor(f, i);
            check_tensor(name, t, json_array_get(want, i));
            types_seen[t->dtype] = 1;
        }
        json_decref(want);
        alloy_tensor_file_close(f);
        nfiles++;
    }
    CHECK_INT(nfiles, 18);
    for (int t = ALLOY_DTYPE_FIRST_QUANT; t <= ALLOY_DTYPE_Q6_K; t++)
        CHECK_MSG(types_seen[t], "no tensor of type %s in the golden files", alloy_dtype_traits((enum alloy_dtype)t)->name);
    CHECK(types_seen[ALLOY_DTYPE_F16] && types_seen[ALLOY_DTYPE_BF16] && types_seen[ALLOY_DTYPE_F32]);
    json_decref(exp);
    malloc_trim(0); /* later tests fork commands whose peak RSS they bound (test_run_rss) */
}
