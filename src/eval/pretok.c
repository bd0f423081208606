/*
 * pretok.c — the split regexes of byte-level BPE tokenizers, as scanners.
 *
 * DESIGN
 *   tokenizer.json files carry their pre-tokenizer as a regex (GPT-2's is
 *   implied by ByteLevel use_regex=true; Llama-3 and Qwen2 give theirs in a
 *   Split). Rather than embed a regex engine, alloy recognises the three
 *   patterns by their exact text and runs a hand-written scanner that
 *   reproduces the regex semantics: at each position the alternatives are
 *   tried in order (leftmost-first, as Oniguruma does), each greedy with the
 *   backtracking the pattern implies ("\s+(?!\S)" gives back one space before
 *   a non-space, "\s*[\r\n]+" ends at the last newline of a whitespace run).
 *   Every code point is covered by some alternative, so the matches tile the
 *   input and "Isolated" splitting is just the list of match ends.
 *
 *   GPT-2:  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   Llama-3 (Qwen2: \p{N} instead of \p{N}{1,3}):
 *           (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *           ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *
 * INVARIANTS
 *   alloy_pretok_split returns at least one piece for n > 0; ends[] is
 *   strictly increasing and ends with n.
 */
#include "eval/eval.h"

#include <string.h>

static const char RE_GPT2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char RE_LLAMA3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN2[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                               "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

int alloy_pretok_regex_lookup(const char *pattern, enum alloy_pretok_regex *out)
{
    if (strcmp(pattern, RE_GPT2) == 0) *out = ALLOY_SPLIT_GPT2;
    else if (strcmp(pattern, RE_LLAMA3) == 0) *out = ALLOY_SPLIT_LLAMA3;
    else if (strcmp(pattern, RE_QWEN2) == 0) *out = ALLOY_SPLIT_QWEN2;
    else return -1;
    return 0;
}

static int is_L(uint32_t c) { return alloy_uni_class(c) == 1; }
static int is_N(uint32_t c) { return alloy_uni_class(c) == 2; }
static int is_S(uint32_t c) { return alloy_uni_is_space(c); }
static int is_other(uint32_t c) { return !is_S(c) && alloy_uni_class(c) == 0; } /* [^\s\p{L}\p{N}] */
static int is_nl(uint32_t c) { return c == '\r' || c == '\n'; }

/* Lower-cases for the (?i:) contractions: ASCII plus the characters that
 * case-fold onto s, t, r, e, v, m, l, d (U+017F LONG S folds to s). */
static uint32_t fold(uint32_t c, int icase)
{
    if (!icase) return c;
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's';
    return c;
}

/* 's 't 're 've 'm 'll 'd at i: match length or 0. */
static size_t contraction(const uint32_t *c, size_t i, size_t n, int icase)
{
    if (c[i] != '\'' || i + 1 >= n) return 0;
    uint32_t a = fold(c[i + 1], icase), b = i + 2 < n ? fold(c[i + 2], icase) : 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

static size_t run(const uint32_t *c, size_t i, size_t n, int (*pred)(uint32_t))
{
    while (i < n && pred(c[i])) i++;
    return i;
}

/* \s+(?!\S) then \s+, at a whitespace position i: the match end. */
static size_t spaces(const uint32_t *c, size_t i, size_t n)
{
    size_t e = run(c, i, n, is_S);
    if (e == n) return e;          /* (?!\S) holds at the end of text */
    if (e - i >= 2) return e - 1;  /* give one space back to the next token */
    return e;                      /* \s+ */
}

static size_t next_gpt2(const uint32_t *c, size_t i, size_t n)
{
    size_t k;
    if ((k = contraction(c, i, n, 0))) return i + k;
    size_t j = c[i] == ' ' && i + 1 < n ? i + 1 : i;
    if (is_L(c[j])) return run(c, j, n, is_L);
    if (is_N(c[j])) return run(c, j, n, is_N);
    if (is_other(c[j])) return run(c, j, n, is_other);
    return spaces(c, i, n);
}

static size_t next_llama3(const uint32_t *c, size_t i, size_t n, size_t max_digits)
{
    size_t k;
    if ((k = contraction(c, i, n, 1))) return i + k;
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (!is_nl(c[i]) && !is_L(c[i]) && !is_N(c[i]) && i + 1 < n && is_L(c[i + 1])) return run(c, i + 1, n, is_L);
    if (is_L(c[i])) return run(c, i, n, is_L);
    /* \p{N}{1,max} */
    if (is_N(c[i])) {
        size_t e = i;
        while (e < n && e - i < max_digits && is_N(c[e])) e++;
        return e;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t j = c[i] == ' ' && i + 1 < n ? i + 1 : i;
    if (is_other(c[j])) return run(c, run(c, j, n, is_other), n, is_nl);
    /* \s*[\r\n]+ : up to and including the last newline of the whitespace run */
    size_t e = run(c, i, n, is_S), last = n;
    for (size_t t = i; t < e; t++)
        if (is_nl(c[t])) last = t;
    if (last != n) return last + 1;
    return spaces(c, i, n);
}

size_t alloy_pretok_split(enum alloy_pretok_regex re, const uint32_t *cps, size_t n, size_t *ends)
{
    size_t np = 0;
    for (size_t i = 0; i < n;) {
        size_t e = re == ALLOY_SPLIT_GPT2 ? next_gpt2(cps, i, n) : next_llama3(cps, i, n, re == ALLOY_SPLIT_QWEN2 ? 1 : 3);
        if (e <= i) e = i + 1; /* cannot happen: every code point starts a match */
        ends[np++] = e;
        i = e;
    }
    return np;
}
