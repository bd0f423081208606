/*
 * fuzz_json_stream.c — libFuzzer target for the windowed JSON member walk
 * (json_stream_members, src/formats/json_members.c) that reads an index in
 * pieces.
 *
 * DESIGN
 *   A differential target: the input (after its first byte) is written to
 *   a scratch file and walked through a window of 1 + (first byte % 64)
 *   bytes, with members held and not held; the result must equal the
 *   whole-text walk of the same bytes in memory (json_members): the same
 *   members at the same offsets with the same key bytes, the same count,
 *   and the same error at the same byte. The window may grow only for a
 *   held member (or a key) longer than it.
 */
#include "fuzz.h"
#include "formats/json_members.h"

#include <fcntl.h>
#include <unistd.h>

enum { MAXM = 256 };

struct seen {
    size_t n, off[MAXM][4], keysum[MAXM];
    size_t longest;  /* the longest member (held) or key (not held) */
    int held;
};

static int record(void *ctx, const char *s, const struct json_member *m)
{
    struct seen *r = ctx;
    size_t span = r->held ? m->ve - m->ks : m->ke - m->ks, sum = 0;
    if (span > r->longest) r->longest = span;
    if (r->n == MAXM) return 0;
    for (size_t i = m->ks; i < m->ke; i++) sum = sum * 31 + (unsigned char)s[i];
    r->off[r->n][0] = m->base + m->ks, r->off[r->n][1] = m->base + m->ke;
    r->off[r->n][2] = m->base + m->vs, r->off[r->n][3] = m->base + m->ve;
    r->keysum[r->n++] = sum;
    return 0;
}

static char g_path[300];

static void cleanup(void) { unlink(g_path); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size) return 0;
    if (!g_path[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(g_path, sizeof g_path, "%s/alloy-fuzz-json-stream-%d", tmp && *tmp ? tmp : "/tmp", (int)getpid());
        atexit(cleanup);
    }
    size_t window = 1 + data[0] % 64, len = size - 1;
    const char *text = (const char *)data + 1;
    int fd = open(g_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    check(fd >= 0);
    check(write(fd, text, len) == (ssize_t)len);
    struct seen ref = {0};
    size_t rcount, rat = 0, count, at = 0;
    const char *rwhat = NULL, *what = NULL;
    int rrc = json_members(text, 0, len, record, &ref, &rcount, &rwhat, &rat);
    for (int held = 0; held <= 1; held++) {
        struct json_stream js;
        struct seen got = {.held = held};
        check(json_stream_init(&js, fd, len, window) == 0);
        int rc = json_stream_members(&js, 0, len, held, record, &got, &count, &what, &at);
        check(rc == rrc && count == rcount && got.n == ref.n);
        check(rc != -1 || (at == rat && strcmp(what, rwhat) == 0));
        for (size_t i = 0; i < got.n; i++)
            check(memcmp(got.off[i], ref.off[i], sizeof got.off[i]) == 0 && got.keysum[i] == ref.keysum[i]);
        check(js.cap <= 2 * (window > got.longest + 1 ? window : got.longest + 1) || js.cap <= 4096);
        json_stream_free(&js);
    }
    close(fd);
    return 0;
}
