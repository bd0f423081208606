/*
 * test_err.c — error messages (src/core/err.c): one line, control characters
 * shown as '?', and a message longer than the buffer keeps its beginning (the
 * file) and its end (the reason), losing only the middle of the long names,
 * also when the message quotes the previous one.
 */
#include "test.h"
#include "alloy.h"

#include <stdlib.h>

TEST(err_long_names_keep_the_reason)
{
    struct alloy_err err = {0};
    size_t n = 5000;
    char *name = malloc(n + 1);
    for (size_t i = 0; i < n; i++) name[i] = (char)('a' + i % 26);
    name[n] = '\0';
    CHECK_INT(alloy_err_set(&err, ALLOY_ERR_SHAPE, "models/x.safetensors: tensor '%s': shape [2, 3] in a but [3, 2] in b",
                            name), ALLOY_ERR_SHAPE);
    CHECK(strncmp(err.msg, "models/x.safetensors: tensor 'abc", 33) == 0);
    CHECK_STR_CONTAINS(err.msg, " ... ");
    CHECK_STR_CONTAINS(err.msg, "': shape [2, 3] in a but [3, 2] in b");
    CHECK(strlen(err.msg) < sizeof err.msg);
    /* quoting the previous message, and multi-byte characters cut on their boundaries */
    char *wide = malloc(3 * 2000 + 1);
    for (int i = 0; i < 2000; i++) memcpy(wide + 3 * i, "\xe2\x82\xac", 3); /* U+20AC */
    wide[3 * 2000] = '\0';
    alloy_err_set(&err, ALLOY_ERR_IO, "%s: %s: the reason", err.msg, wide);
    CHECK_STR_CONTAINS(err.msg, ": the reason");
    size_t len = strlen(err.msg);
    for (size_t i = 0; i + 1 < len; i++) /* no lone continuation byte after an ASCII one */
        CHECK(!((unsigned char)err.msg[i] < 0x80 && ((unsigned char)err.msg[i + 1] & 0xc0) == 0x80));
    alloy_err_set(&err, ALLOY_ERR_IO, "short %s\n\x1b[2J", "line");
    CHECK(!strcmp(err.msg, "short line??[2J"));
    free(name);
    free(wide);
}
