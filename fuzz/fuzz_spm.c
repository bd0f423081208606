/*
 * fuzz_spm.c — libFuzzer target for the SentencePiece tokenizer.model
 * reader (src/formats/spm.c).
 *
 * DESIGN
 *   Each input is parsed from memory (alloy_spm_parse, what alloy_spm_open
 *   runs on the file's bytes). A rejection must be one line with a status.
 *   An accepted model must keep its promises: at least one and at most
 *   ALLOY_SPM_MAX_PIECES pieces, no more than the input could encode (2
 *   bytes each), every piece a non-empty C string of at most
 *   ALLOY_SPM_MAX_PIECE bytes, a finite score, a type in 1..6 and a model
 *   type in 1..4. A broken promise aborts so the fuzzer keeps the input.
 */
#include "alloy.h"
#include "formats/spm.h"
#include "fuzz.h"

#include <math.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct alloy_spm *s = NULL;
    struct alloy_err err = {0};
    int rc = alloy_spm_parse(data, size, "fuzz/tokenizer.model", &s, &err);
    if (rc != ALLOY_OK) {
        check(s == NULL && err.status == (enum alloy_status)rc);
        check(memchr(err.msg, '\n', sizeof err.msg) == NULL);
        return 0;
    }
    check(s->n >= 1 && s->n <= ALLOY_SPM_MAX_PIECES && s->n <= size / 2);
    check(s->model_type >= 1 && s->model_type <= 4);
    for (size_t i = 0; i < s->n; i++) {
        size_t len = strlen(s->piece[i]);
        check(len >= 1 && len <= ALLOY_SPM_MAX_PIECE);
        check(isfinite(s->score[i]));
        check(s->type[i] >= ALLOY_SPM_NORMAL && s->type[i] <= ALLOY_SPM_BYTE);
    }
    alloy_spm_free(s);
    return 0;
}
