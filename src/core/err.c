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
 */
#include "alloy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

int alloy_err_set(struct alloy_err *err, enum alloy_status status, const char *fmt, ...)
{
    int saved = errno;
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
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
