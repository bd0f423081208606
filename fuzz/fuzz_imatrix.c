/*
 * fuzz_imatrix.c — libFuzzer target for the imatrix reader
 * (src/quant/imatrix.c).
 *
 * DESIGN
 *   Each input is parsed from memory (alloy_imatrix_parse, the same code
 *   alloy_imatrix_open runs on the file's bytes). A rejection must be one
 *   line with a status. An accepted file must keep its promises: every
 *   entry is found by its own name, has at least one value, every value is
 *   finite and not negative, and the dataset name is a C string. A broken
 *   promise aborts so the fuzzer keeps the input.
 */
#include "alloy.h"
#include "fuzz.h"
#include "quant/imatrix.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct alloy_imatrix *m = NULL;
    struct alloy_err err = {0};
    int rc = alloy_imatrix_parse(data, size, "fuzz.imatrix", &m, &err);
    if (rc != ALLOY_OK) {
        check(m == NULL && err.status == (enum alloy_status)rc);
        check(memchr(err.msg, '\n', sizeof err.msg) == NULL);
        return 0;
    }
    check(alloy_imatrix_entries(m) <= size / 17);
    check(alloy_imatrix_chunks(m) >= 0 && alloy_imatrix_dataset(m) != NULL);
    check(alloy_imatrix_lookup(m, "", &(size_t){0}) == NULL); /* names are never empty */
    (void)strlen(alloy_imatrix_dataset(m));
    for (size_t i = 0; i < alloy_imatrix_entries(m); i++) {
        const float *v, *found;
        size_t n, n2 = 0;
        const char *name = alloy_imatrix_entry(m, i, &v, &n);
        check(name[0] != 0 && n > 0);
        found = alloy_imatrix_lookup(m, name, &n2);
        check(found == v && n2 == n);
        for (size_t j = 0; j < n; j++) check(isfinite(v[j]) && v[j] >= 0);
    }
    alloy_imatrix_close(m);
    return 0;
}
