/*
 * err.c — status codes and the caller-owned error buffer.
 *
 * DESIGN
 *   There is no global error state: every fallible call takes a
 *   `struct alloy_err *` and writes one line into it. alloy_err_set keeps
 *   errno intact so callers may still inspect it after cleanup.
 *   Messages quote untrusted text (tensor names, JSON and YAML snippets), so
 *   control characters, and the UTF-8 C1 controls U+0080..U+009F, become '?':
 *   the message stays one line and cannot drive a terminal (ESC sequences).
 *   A message longer than the buffer keeps its beginning (the file) and its
 *   end (what was expected) and loses the middle of the names between them.
 */
#include "alloy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Copies text (n bytes) into msg: whole when it fits, else its head and its tail around " ... ", so a long
 * name in the middle loses its middle and the reason at the end survives. Cuts fall on UTF-8 boundaries. */
static void fit_message(char *msg, size_t size, const char *text, size_t n)
{
    if (n < size) {
        memcpy(msg, text, n + 1);
        return;
    }
    static const char gap[] = " ... ";
    size_t head = size / 4, tail = size - 1 - head - (sizeof gap - 1);
    while (head > 0 && ((unsigned char)text[head] & 0xc0) == 0x80) head--;
    size_t from = n - tail;
    while (from < n && ((unsigned char)text[from] & 0xc0) == 0x80) from++, tail--;
    memcpy(msg, text, head);
    memcpy(msg + head, gap, sizeof gap - 1);
    memcpy(msg + head + sizeof gap - 1, text + from, tail);
    msg[head + sizeof gap - 1 + tail] = '\0';
}

int alloy_err_set(struct alloy_err *err, enum alloy_status status, const char *fmt, ...)
{
    int saved = errno;
    if (err) {
        char local[8192], *text = local;
        va_list ap, again;
        va_start(ap, fmt);
        va_copy(again, ap);
        int n = vsnprintf(local, sizeof local, fmt, ap); /* may quote err->msg itself: formatted apart first */
        if (n >= (int)sizeof local && (text = malloc((size_t)n + 1)) != NULL) vsnprintf(text, (size_t)n + 1, fmt, again);
        else if (n >= (int)sizeof local) text = local, n = (int)sizeof local - 1;
        va_end(again);
        va_end(ap);
        fit_message(err->msg, sizeof err->msg, text, n > 0 ? (size_t)n : 0);
        if (n <= 0) err->msg[0] = '\0';
        if (text != local) free(text);
        for (unsigned char *p = (unsigned char *)err->msg; *p; p++) {
            if (*p < 0x20 || *p == 0x7f) *p = '?';
            else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) p[0] = p[1] = '?';
        }
        err->status = status;
    }
    errno = saved;
    return (int)status;
}

const char *alloy_status_str(enum alloy_status status)
{
    switch (status) {
    case ALLOY_OK:              return "ok";
    case ALLOY_ERR_IO:          return "I/O error";
    case ALLOY_ERR_FORMAT:      return "invalid file format";
    case ALLOY_ERR_CONFIG:      return "invalid configuration";
    case ALLOY_ERR_SHAPE:       return "tensor mismatch";
    case ALLOY_ERR_UNSUPPORTED: return "unsupported";
    case ALLOY_ERR_NOMEM:       return "out of memory";
    case ALLOY_ERR_INTERRUPTED: return "interrupted";
    }
    return "unknown status";
}
