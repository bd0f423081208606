/*
 * fuzz_gguf.c — libFuzzer target for the GGUF reader (src/formats/gguf.c)
 * and what is rebuilt from its metadata (gguf_meta.c).
 *
 * DESIGN
 *   The reader maps files, so each input is written to an anonymous memory
 *   file (memfd) and opened through /proc/self/fd/N, the path a real file
 *   would take. When the reader accepts the input, its promises are checked:
 *   every tensor's bytes lie inside the file, nbytes matches the dtype and
 *   element count, names find their own tensor, and every tensor reads
 *   through alloy_tensor_read_f32 at its first and last element (blocks
 *   dequantized, permuted rows followed). Opened as a model, config.json and
 *   tokenizer.json are rebuilt and must be JSON or a one-line error. A
 *   broken promise aborts so the fuzzer keeps the input.
 */
#include "alloy.h"
#include "formats/formats.h"
#include "formats/tensor_file.h"
#include "fuzz.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void check_error(int rc, const struct alloy_err *err)
{
    check(err->status == (enum alloy_status)rc);
    check(memchr(err->msg, '\n', sizeof err->msg) == NULL);
}

static void check_file(struct alloy_tensor_file *f, size_t size)
{
    for (size_t i = 0; i < alloy_tensor_file_count(f); i++) {
        const struct alloy_tensor *t = alloy_tensor_file_tensor(f, i);
        uint64_t nb;
        check(alloy_tensor_file_find(f, t->name) == t);
        check(alloy_dtype_nbytes(t->dtype, t->numel, &nb) == 0 && nb == t->nbytes);
        check(t->nbytes <= size);
        if (!t->numel || !alloy_dtype_traits(t->dtype)->to_f32) continue;
        float v[2];
        struct alloy_err err = {0};
        int rc = alloy_tensor_read_f32(t, 0, 1, v, &err);
        if (!rc) rc = alloy_tensor_read_f32(t, t->numel - 1, 1, v + 1, &err);
        check(rc == ALLOY_OK);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz.gguf", MFD_CLOEXEC);
    if (fd < 0) return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    struct alloy_tensor_file *f = NULL;
    struct alloy_err err = {0};
    int rc = alloy_tensor_file_open(path, &f, &err);
    if (rc) check_error(rc, &err);
    else {
        check_file(f, size);
        alloy_tensor_file_close(f);
        struct alloy_model *m = NULL;
        rc = alloy_model_open(path, &m, &err);
        if (rc) check_error(rc, &err);
        else {
            json_t *c = json_loads(alloy_model_config_text(m), 0, NULL); /* rebuilt by alloy: always JSON */
            check(json_is_object(c));
            json_decref(c);
            char *tok = NULL;
            rc = alloy_model_gguf_tokenizer(m, &tok, &err);
            if (rc) check_error(rc, &err);
            else if (tok) {
                json_t *j = json_loads(tok, 0, NULL);
                check(json_is_object(j));
                json_decref(j);
            }
            free(tok);
            alloy_model_close(m);
        }
    }
    close(fd);
    return 0;
}
