/*
 * size.c — parse human byte counts for --out-shard-size.
 *
 * mergekit's rule: an integer with an optional k/m/b suffix (×1e3/1e6/1e9,
 * case-insensitive), so "5B" is five billion bytes. alloy adds G and T
 * (decimal, like mergekit's letters), KiB/MiB/GiB/TiB (binary) and a
 * decimal fraction ("2.5G").
 */
#include "core/internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <strings.h>

int alloy_parse_size(const char *s, uint64_t *out)
{
    static const struct { const char *suffix; double mult; } units[] = {
        {"", 1}, {"k", 1e3}, {"m", 1e6}, {"b", 1e9}, {"g", 1e9}, {"t", 1e12},
        {"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
        {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0}, {"tib", 1099511627776.0},
    };
    if (!s || !*s || isspace((unsigned char)*s) || *s == '-' || *s == '+') return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0) return -1;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].suffix) == 0) {
            double bytes = v * units[i].mult;
            if (bytes >= 1.8e19) return -1;
            *out = (uint64_t)llround(bytes);
            return 0;
        }
    }
    return -1;
}
