/*
 * bpe.c — encoding text to ids and back with a parsed tokenizer.json.
 *
 * DESIGN
 *   The pipeline mirrors Hugging Face `tokenizers`: added tokens are matched
 *   first (leftmost-longest on the raw text); each remaining segment is
 *   normalized (Prepend, Replace, NFC as a check), pre-tokenized (Split with
 *   the GPT-2/Llama-3/Qwen2 regexes, ByteLevel, Metaspace) and every piece is
 *   BPE-encoded. BPE is transformers' algorithm: a min-heap of (merge rank,
 *   position) over a linked list of symbols, stale entries skipped, so a whole
 *   SentencePiece text (one word) costs O(n log n). Characters missing from the
 *   vocabulary fall back to "<0xNN>" byte tokens, or the unk token (fused when
 *   fuse_unk), or are an error naming the character. No normalizer or
 *   pre-tokenizer step may grow a segment past the cap in tokenizer_impl.h
 *   (checked as the text is built, so a crafted file fails fast).
 *
 * INVARIANTS
 *   - Encoding adds no special tokens; every emitted id is < n_ids.
 *   - Pieces are NUL-terminated so the vocabulary can be probed directly.
 */
#include "eval/tokenizer_impl.h"

#include <stdio.h>

/* ------------------------------------------------------------ BPE */

struct sym { int32_t id; int32_t prev, next; int alive; };
struct merge { uint32_t rank; uint32_t pos; int32_t id; };

static int merge_less(const struct merge *a, const struct merge *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct merge *h, size_t *n, struct merge m)
{
    size_t i = (*n)++;
    h[i] = m;
    while (i && merge_less(&h[i], &h[(i - 1) / 2])) {
        struct merge tmp = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
}

static struct merge heap_pop(struct merge *h, size_t *n)
{
    struct merge top = h[0];
    h[0] = h[--*n];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && merge_less(&h[l], &h[m])) m = l;
        if (r < *n && merge_less(&h[r], &h[m])) m = r;
        if (m == i) break;
        struct merge tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
    return top;
}

static int bytes_known(const struct alloy_tokenizer *t, const char *s, size_t l)
{
    for (size_t k = 0; k < l; k++)
        if (t->byte_id[(unsigned char)s[k]] < 0) return 0;
    return 1;
}

/* BPE-encodes one pre-token `w` (UTF-8, already byte-mapped for byte-level). */
static int bpe_word(const struct alloy_tokenizer *t, const char *w, size_t n, const char *label, struct ivec *out,
                    struct alloy_err *err)
{
    if (!n) return ALLOY_OK;
    if (t->ignore_merges) {
        int id = vocab_get(t, w); /* w is NUL-terminated by the caller */
        if (id >= 0) return ivec_push(out, id) ? alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory") : ALLOY_OK;
    }
    struct sym *s = alloy_xmalloc(n * sizeof *s); /* at most one symbol per byte */
    struct merge *h = alloy_xmalloc((3 * n + 1) * sizeof *h); /* n-1 initial pairs + 2 per merge */
    size_t ns = 0, nh = 0;
    int rc = ALLOY_OK;
    if (!s || !h) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); goto done; }
    char ch[8];
    int prev_unk = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_len((unsigned char)w[i]);
        if (l > n - i) l = n - i;
        memcpy(ch, w + i, l);
        ch[l] = '\0';
        int id = vocab_get(t, ch);
        if (id >= 0) {
            s[ns++] = (struct sym){id, 0, 0, 1};
            prev_unk = 0;
        } else if (t->byte_fallback && bytes_known(t, w + i, l)) {
            for (size_t k = 0; k < l; k++) s[ns++] = (struct sym){t->byte_id[(unsigned char)w[i + k]], 0, 0, 1};
            prev_unk = 0;
        } else if (t->unk_id >= 0) {
            if (!(t->fuse_unk && prev_unk)) s[ns++] = (struct sym){t->unk_id, 0, 0, 1};
            prev_unk = 1;
        } else {
            size_t k = 0;
            int32_t cp = utf8_next(w + i, l, &k);
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT,
                               "%s: character U+%04X is not in the tokenizer's vocabulary and it has no byte_fallback "
                               "or unk_token", label, (unsigned)(cp < 0 ? 0xFFFD : cp));
            goto done;
        }
        i += l;
    }
    for (size_t i = 0; i < ns; i++) {
        s[i].prev = (int32_t)i - 1;
        s[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < ns; i++) {
        const struct pair_slot *p = pair_find(t, s[i].id, s[i + 1].id);
        if (p) heap_push(h, &nh, (struct merge){p->rank, (uint32_t)i, p->id});
    }
    while (nh) {
        struct merge top = heap_pop(h, &nh);
        struct sym *cur = &s[top.pos];
        if (!cur->alive || cur->next < 0) continue;
        struct sym *right = &s[cur->next];
        const struct pair_slot *p = pair_find(t, cur->id, right->id);
        if (!p || p->id != top.id) continue; /* stale entry */
        cur->id = top.id;
        right->alive = 0;
        cur->next = right->next;
        if (right->next >= 0) s[right->next].prev = (int32_t)top.pos;
        if (cur->prev >= 0 && (p = pair_find(t, s[cur->prev].id, cur->id)))
            heap_push(h, &nh, (struct merge){p->rank, (uint32_t)cur->prev, p->id});
        if (cur->next >= 0 && (p = pair_find(t, cur->id, s[cur->next].id)))
            heap_push(h, &nh, (struct merge){p->rank, top.pos, p->id});
    }
    for (int32_t i = 0; ns && i >= 0; i = s[i].next)
        if (ivec_push(out, s[i].id)) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); goto done; }
done:
    free(s);
    free(h);
    return rc;
}

/* ------------------------------------------------------------ encode */

struct piece { char *s; size_t n; int at_start; };
struct plist { struct piece *v; size_t n, cap, bytes, limit; }; /* bytes: sum of n; limit: 0 or the growth cap */

static void plist_free(struct plist *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i].s);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = l->bytes = 0;
}

/* Appends a copy of pre + s[0..n). -1: out of memory; 1: the pieces would pass l->limit bytes. */
static int plist_add(struct plist *l, const char *pre, size_t pn, const char *s, size_t n, int at_start)
{
    if (l->limit && l->bytes + pn + n > l->limit) return 1;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        struct piece *nv = alloy_xrealloc(l->v, nc * sizeof *nv);
        if (!nv) return -1;
        l->v = nv;
        l->cap = nc;
    }
    char *d = alloy_xmalloc(pn + n + 1);
    if (!d) return -1;
    memcpy(d, pre, pn);
    memcpy(d + pn, s, n);
    d[pn + n] = '\0';
    l->v[l->n++] = (struct piece){d, pn + n, at_start};
    l->bytes += pn + n;
    return 0;
}

/* out = s[0..n) with every `from` replaced by `to`. -1: out of memory; 1: out would pass `limit` bytes. */
static int replace_all(struct sbuf *out, const char *s, size_t n, const char *from, const char *to, size_t limit)
{
    size_t fl = strlen(from), tl = strlen(to);
    out->n = 0;
    if (sbuf_add(out, "", 0)) return -1;
    for (size_t i = 0; i < n;) {
        int hit = fl && i + fl <= n && memcmp(s + i, from, fl) == 0;
        size_t add = hit ? tl : 1;
        if (out->n + add > limit) return 1;
        if (sbuf_add(out, hit ? to : s + i, add)) return -1;
        i += hit ? fl : 1;
    }
    return 0;
}

/* The error for a step that would grow a segment of n bytes past limit. */
static int grow_error(const struct alloy_tokenizer *t, const char *what, size_t k, const char *op, size_t n,
                      size_t limit, struct alloy_err *err)
{
    return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                         "%s: %s step %zu (%s) would grow the text past %zu bytes (%d x the %zu bytes of the segment "
                         "+ %d, the limit alloy accepts)", t->label, what, k, op, limit, TOK_GROW_FACTOR, n,
                         TOK_GROW_SLACK);
}

static size_t grow_limit(size_t n)
{
    return n > (SIZE_MAX - TOK_GROW_SLACK) / TOK_GROW_FACTOR ? SIZE_MAX : n * TOK_GROW_FACTOR + TOK_GROW_SLACK;
}

static int nfc_check(const struct sbuf *b, size_t offset, const char *label, struct alloy_err *err)
{
    for (size_t i = 0; i < b->n;) {
        size_t at = i;
        int32_t cp = utf8_next(b->s, b->n, &i);
        if (cp >= 0 && !alloy_uni_nfc_quick_yes((uint32_t)cp))
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED,
                                 "%s: byte %zu: U+%04X may change under the tokenizer's NFC normalizer, which "
                                 "alloy does not implement (normalize the text to NFC first)",
                                 label, offset + at, (unsigned)cp);
        if (cp < 0) i++;
    }
    return ALLOY_OK;
}

static int normalize(const struct alloy_tokenizer *t, const char *seg, size_t n, size_t offset, const char *label,
                     struct sbuf *out, struct alloy_err *err)
{
    struct sbuf tmp = {0};
    size_t limit = grow_limit(n);
    int rc = ALLOY_OK;
    out->n = 0;
    if (sbuf_add(out, seg, n)) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t k = 0; k < t->nnorm && !rc; k++) {
        const struct norm_step *st = &t->norm[k];
        if (st->op == NORM_NFC) { rc = nfc_check(out, offset, label, err); continue; }
        if (st->op == NORM_PREPEND && !out->n) continue;
        tmp.n = 0;
        size_t al = strlen(st->a);
        int bad;
        if (st->op == NORM_REPLACE) bad = replace_all(&tmp, out->s, out->n, st->a, st->b, limit);
        else if (al > limit - out->n) bad = 1; /* out->n <= limit after every step */
        else bad = sbuf_add(&tmp, st->a, al) || sbuf_add(&tmp, out->s, out->n) ? -1 : 0;
        if (bad > 0) rc = grow_error(t, "normalizer", k, st->op == NORM_PREPEND ? "Prepend" : "Replace", n, limit, err);
        else if (bad) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        struct sbuf sw = *out;
        *out = tmp;
        tmp = sw;
    }
    free(tmp.s);
    return rc;
}

static int apply_pre(const struct alloy_tokenizer *t, const struct pre_step *st, struct plist *in, struct plist *out)
{
    uint32_t *cps = NULL;
    size_t *ends = NULL, *offs = NULL;
    struct sbuf b = {0};
    int rc = 0;
    for (size_t k = 0; k < in->n && !rc; k++) {
        struct piece p = in->v[k];
        const char *pre = "";
        size_t pn = 0;
        if (st->op == PRE_METASPACE) {
            size_t rl = strlen(st->repl);
            if ((rc = replace_all(&b, p.s, p.n, " ", st->repl, out->limit ? out->limit : SIZE_MAX))) break;
            int starts = b.n >= rl && memcmp(b.s, st->repl, rl) == 0;
            int prepend = st->scheme == PREPEND_ALWAYS || (st->scheme == PREPEND_FIRST && p.at_start);
            if (prepend && !starts && b.n) { pre = st->repl; pn = rl; }
            if (!st->split) { rc = plist_add(out, pre, pn, b.s, b.n, p.at_start); continue; }
            /* MergedWithNext: every replacement character starts a new piece */
            size_t start = 0;
            for (size_t i = 1; i <= b.n && !rc; i++) {
                if (i == b.n || (i + rl <= b.n && memcmp(b.s + i, st->repl, rl) == 0)) {
                    if (i > start || pn) rc = plist_add(out, pre, pn, b.s + start, i - start, p.at_start && !start);
                    pre = "";
                    pn = 0;
                    start = i;
                }
            }
            continue;
        }
        if (st->op == PRE_BYTELEVEL && st->add_prefix_space && (!p.n || p.s[0] != ' ')) { pre = " "; pn = 1; }
        if (st->op == PRE_BYTELEVEL && !st->use_regex) { rc = plist_add(out, pre, pn, p.s, p.n, p.at_start); continue; }
        /* regex split over pre + p */
        b.n = 0;
        if ((rc = sbuf_add(&b, pre, pn)) || (rc = sbuf_add(&b, p.s, p.n))) break;
        free(cps); free(ends); free(offs);
        cps = alloy_xmalloc((b.n + 1) * sizeof *cps);
        ends = alloy_xmalloc((b.n + 1) * sizeof *ends);
        offs = alloy_xmalloc((b.n + 1) * sizeof *offs);
        if (!cps || !ends || !offs) { rc = -1; break; }
        size_t nc = 0;
        for (size_t i = 0; i < b.n;) {
            offs[nc] = i;
            int32_t cp = utf8_next(b.s, b.n, &i);
            if (cp < 0) { cp = 0xFFFD; i++; }
            cps[nc++] = (uint32_t)cp;
        }
        offs[nc] = b.n;
        size_t np = alloy_pretok_split(st->re, cps, nc, ends);
        for (size_t j = 0, from = 0; j < np && !rc; j++) {
            rc = plist_add(out, "", 0, b.s + offs[from], offs[ends[j]] - offs[from], p.at_start && j == 0);
            from = ends[j];
        }
    }
    free(cps);
    free(ends);
    free(offs);
    free(b.s);
    return rc;
}

static int encode_segment(const struct alloy_tokenizer *t, const char *seg, size_t n, size_t offset,
                          const char *label, struct ivec *out, struct alloy_err *err)
{
    struct sbuf norm = {0}, mapped = {0};
    struct plist a = {0}, b = {0};
    int rc = normalize(t, seg, n, offset, label, &norm, err);
    if (rc) goto done;
    if (plist_add(&a, "", 0, norm.s ? norm.s : "", norm.n, offset == 0)) goto nomem;
    for (size_t k = 0; k < t->npre; k++) {
        static const char *const names[] = {"Split", "ByteLevel", "Metaspace"};
        b.limit = grow_limit(n);
        int bad = apply_pre(t, &t->pre[k], &a, &b);
        if (bad < 0) goto nomem;
        if (bad) { rc = grow_error(t, "pre-tokenizer", k, names[t->pre[k].op], n, b.limit, err); goto done; }
        plist_free(&a);
        a = b;
        b = (struct plist){0};
    }
    for (size_t k = 0; k < a.n; k++) {
        const char *w = a.v[k].s;
        size_t wn = a.v[k].n;
        if (t->kind == ALLOY_TOK_BYTELEVEL_BPE) {
            mapped.n = 0;
            for (size_t i = 0; i < wn; i++) {
                char u[4];
                size_t ul = utf8_put(t->byte_to_cp[(unsigned char)w[i]], u);
                if (sbuf_add(&mapped, u, ul)) goto nomem;
            }
            w = mapped.s;
            wn = mapped.n;
        }
        if ((rc = bpe_word(t, w, wn, label, out, err))) goto done;
    }
    goto done;
nomem:
    rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
done:
    free(norm.s);
    free(mapped.s);
    plist_free(&a);
    plist_free(&b);
    return rc;
}

/* Longest added token starting at text[i], or NULL. */
static const struct added *added_at(const struct alloy_tokenizer *t, const char *text, size_t len, size_t i)
{
    const struct added *best = NULL;
    for (size_t k = 0; k < t->nadded; k++) {
        const struct added *a = &t->added[k];
        if (a->len <= len - i && (!best || a->len > best->len) && text[i] == a->s[0] &&
            memcmp(text + i, a->s, a->len) == 0)
            best = a;
    }
    return best;
}

int alloy_tokenizer_encode(const struct alloy_tokenizer *t, const char *text, size_t len, const char *label,
                           int32_t **ids, size_t *n, struct alloy_err *err)
{
    struct ivec out = {0};
    int rc = ALLOY_OK;
    int bytes = t->kind == ALLOY_TOK_BYTES; /* ids = bytes between the added tokens, any bytes allowed */
    for (size_t i = 0; i < len && !bytes;) {
        size_t at = i;
        if (utf8_next(text, len, &i) < 0)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: byte %zu: invalid UTF-8 (the tokenizer needs UTF-8 text)",
                                 label, at);
    }
    unsigned char first[256] = {0};
    for (size_t k = 0; k < t->nadded; k++) first[(unsigned char)t->added[k].s[0]] = 1;
    size_t seg = 0;
    for (size_t i = 0; i <= len && !rc;) {
        const struct added *a = i < len && first[(unsigned char)text[i]] ? added_at(t, text, len, i) : NULL;
        if (!a && i < len) { i++; continue; }
        for (size_t k = seg; bytes && k < i && !rc; k++)
            if (ivec_push(&out, (unsigned char)text[k])) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (i > seg && !bytes) rc = encode_segment(t, text + seg, i - seg, seg, label, &out, err);
        if (rc || !a) break;
        if (ivec_push(&out, a->id)) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        i += a->len;
        seg = i;
        if (i == len) break;
    }
    if (rc) { free(out.v); return rc; }
    if (!out.v && !(out.v = alloy_xmalloc(sizeof *out.v))) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    *ids = out.v;
    *n = out.n;
    return ALLOY_OK;
}

/* ------------------------------------------------------------ decode */

int alloy_tokenizer_decode(const struct alloy_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len,
                           struct alloy_err *err)
{
    struct sbuf b = {0};
    const char *repl = "\xe2\x96\x81";
    for (size_t k = 0; k < t->npre; k++)
        if (t->pre[k].op == PRE_METASPACE) repl = t->pre[k].repl;
    for (size_t k = 0; k < t->nnorm; k++)
        if (t->norm[k].op == NORM_REPLACE && strcmp(t->norm[k].a, " ") == 0) repl = t->norm[k].b;
    size_t rl = strlen(repl);
    int rc = ALLOY_OK;
    if (sbuf_add(&b, "", 0)) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->id_str[id]) {
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "token %zu: id %d is not in the tokenizer's vocabulary", i, id);
            break;
        }
        const char *s = t->id_str[id];
        size_t sl = strlen(s);
        int bad = 0;
        unsigned hex;
        char c;
        if (t->kind == ALLOY_TOK_BYTES && id < 256) {
            c = (char)id;
            bad = sbuf_add(&b, &c, 1);
        } else if (t->id_is_added[id]) {
            bad = sbuf_add(&b, s, sl);
        } else if (t->kind == ALLOY_TOK_BYTELEVEL_BPE) {
            for (size_t j = 0; j < sl && !bad;) {
                size_t at = j;
                int32_t cp = utf8_next(s, sl, &j);
                if (cp < 0) { j++; continue; }
                if (cp < 324 && t->cp_to_byte[cp] >= 0) {
                    c = (char)t->cp_to_byte[cp];
                    bad = sbuf_add(&b, &c, 1);
                } else {
                    bad = sbuf_add(&b, s + at, j - at);
                }
            }
        } else if (sl == 6 && sscanf(s, "<0x%2X>", &hex) == 1 && t->byte_id[hex & 0xFF] == id) {
            c = (char)hex;
            bad = sbuf_add(&b, &c, 1);
        } else {
            for (size_t j = 0; j < sl && !bad;) {
                if (rl && j + rl <= sl && memcmp(s + j, repl, rl) == 0) { bad = sbuf_add(&b, " ", 1); j += rl; }
                else { bad = sbuf_add(&b, s + j, 1); j++; }
            }
        }
        if (bad) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    if (rc) { free(b.s); return rc; }
    if (t->kind == ALLOY_TOK_SP_BPE && t->strip_leading_space && b.n && b.s[0] == ' ') {
        memmove(b.s, b.s + 1, b.n);
        b.n--;
    }
    *text = b.s;
    *len = b.n;
    return ALLOY_OK;
}
