/*
 * test_tokenizer_limit.c — tokenizer.json is parsed whole by jansson, so
 * its size is bounded (ALLOY_TOKENIZER_JSON_MAX) wherever it is parsed: by
 * a tokenizer merge's plan (src/plan/vocab.c) and by alloy eval
 * (src/eval/tokenizer.c). A sparse file one byte over the limit (nothing is
 * read before the size is checked) is refused with one line naming the
 * file and both sizes; a file at the limit gets past the size check (and
 * fails as JSON: it is all zero bytes).
 */
#include "test.h"
#include "alloy.h"
#include "core/internal.h"
#include "plan/vocab.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static void sparse(const char *path, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    if (fd < 0) return;
    CHECK_INT(ftruncate(fd, (off_t)size), 0);
    close(fd);
}

TEST(tokenizer_json_size_bounded)
{
    char path[600], want[800];
    snprintf(path, sizeof path, "%s/tokenizer.json", test_tmpdir());
    snprintf(want, sizeof want, "%s: file is %zu bytes, more than the %zu allowed", path,
             (size_t)(64 << 20) + 1, (size_t)64 << 20);
    sparse(path, ((size_t)64 << 20) + 1);
    struct alloy_err err = {0};
    CHECK(alloy_json_load_file(path, &err) == NULL);
    CHECK(strcmp(err.msg, want) == 0);
    struct alloy_tokenizer *tok = NULL;
    err = (struct alloy_err){0};
    CHECK(alloy_tokenizer_load(path, &tok, &err) != ALLOY_OK);
    CHECK(strcmp(err.msg, want) == 0);
    alloy_tokenizer_free(tok);
    sparse(path, (size_t)64 << 20); /* at the limit: read, then refused as JSON */
    err = (struct alloy_err){0};
    CHECK(alloy_json_load_file(path, &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "not valid JSON");
}
