/*
 * fuzz_torch_zip.c — libFuzzer target for PyTorch .bin files (src/formats/torch_zip.c with the pickle).
 *
 * DESIGN
 *   The input is a whole torch.save zip handed to alloy_pt_open_memory, the
 *   path alloy_pt_open runs on a mapped file. A refusal must be one line
 *   naming the file. An accepted file must keep the reader's promises
 *   against the input: every tensor's bytes lie inside the buffer, nbytes =
 *   numel x itemsize with numel the product of the shape, the name finds
 *   its own tensor, and the first and last bytes can be read (through the
 *   tensor-file pread too). The buffer libFuzzer passes is exactly `size`
 *   bytes of heap, so AddressSanitizer flags any read past the end.
 */
#include "alloy.h"
#include "formats/formats.h"
#include "fuzz.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct alloy_tensor_file *f = NULL;
    struct alloy_err err = {0};
    int rc = alloy_pt_open_memory(data, size, "fuzz.bin", &f, &err);
    if (rc != ALLOY_OK) {
        check(f == NULL);
        check_refusal(rc, err, "fuzz.bin");
        return 0;
    }
    check(f != NULL);
    check(strcmp(alloy_tensor_file_format(f), "pytorch") == 0);
    for (size_t i = 0; i < alloy_tensor_file_count(f); i++) {
        const struct alloy_tensor *t = alloy_tensor_file_tensor(f, i);
        check_tensor_in(t, data, data + size);
        check(t->file == f);
        check(alloy_tensor_file_find(f, t->name) == t);
        if (t->nbytes) {
            uint8_t first = 0, last = 0;
            check(alloy_tensor_pread(t, 0, &first, 1, &err) == ALLOY_OK && first == t->data[0]);
            check(alloy_tensor_pread(t, t->nbytes - 1, &last, 1, &err) == ALLOY_OK && last == t->data[t->nbytes - 1]);
        }
    }
    alloy_tensor_file_close(f);
    return 0;
}
