/*
 * fuzz_safetensors.c — libFuzzer target for the safetensors header parser.
 *
 * DESIGN
 *   The input is a whole safetensors image handed to alloy_st_open_memory,
 *   the same validation path alloy_st_open runs on a mapped file. When the
 *   reader accepts the image, every promise it makes is checked against the
 *   input: each tensor's bytes lie inside the buffer, in the data section,
 *   nbytes = numel x bits / 8, names find their own tensor, and the first
 *   elements of every float tensor convert to float32 (unaligned data, as
 *   real files have). A broken promise aborts, so the fuzzer reports it
 *   like a sanitizer error. The buffer libFuzzer passes is exactly `size`
 *   bytes of heap, so AddressSanitizer flags any read past the end.
 *   Built by fuzz/run.sh (clang, libFuzzer) or with fuzz/fuzz_main.c (any
 *   C compiler) to replay a crash file.
 */
#include "alloy.h"
#include "fuzz.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct alloy_st_file *f = NULL;
    struct alloy_err err = {0};
    int rc = alloy_st_open_memory(data, size, "fuzz.safetensors", &f, &err);
    if (rc != ALLOY_OK) {
        /* a rejection is one line that names the file */
        check(f == NULL);
        check_refusal(rc, err, "fuzz.safetensors");
        return 0;
    }
    check(f != NULL && size >= 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | data[i];
    const uint8_t *start = data + 8 + hlen, *end = data + size;
    uint64_t total = 0;
    for (size_t i = 0; i < alloy_st_count(f); i++) {
        const struct alloy_tensor *t = alloy_st_tensor(f, i);
        check_tensor_in(t, start, end);
        check(t->file == alloy_st_file_base(f));
        const struct alloy_dtype_traits *tr = alloy_dtype_traits(t->dtype);
        check(alloy_st_find(f, t->name) == t);
        total += t->nbytes;
        if (tr->mergeable && t->numel) {
            float tmp[64];
            size_t n = t->numel < 64 ? (size_t)t->numel : 64;
            alloy_to_f32(t->dtype, t->data, tmp, n);
        } else if (t->nbytes) {
            volatile uint8_t touch = t->data[0] ^ t->data[t->nbytes - 1];
            (void)touch;
        }
    }
    check(total == (uint64_t)(end - start)); /* tensors tile the data section */
    (void)alloy_st_metadata(f, "format");
    alloy_st_close(f);
    return 0;
}
