/*
 * gen_model.c — writes a synthetic model folder for the benchmark.
 *
 * DESIGN
 *   A standalone program (no liballoy): `bench_gen OUT_DIR [options]` writes
 *   config.json and model.safetensors — or shards of at most --shard-size
 *   bytes plus model.safetensors.index.json — in the Hugging Face layout of a
 *   Llama model, with deterministic pseudo-random weights. The folder is
 *   built as OUT_DIR.tmp and renamed into place, so an interrupted run never
 *   leaves a folder that looks complete.
 *
 *   Shapes: Llama-like (default: vocab 32000, hidden 2048, MLP 5632,
 *   k/v projections 256 wide, like TinyLlama-1.1B). --size picks the layer
 *   count so the file is about that many bytes; --big writes one
 *   131072 x 1024 F32 embedding (512 MiB, larger than the 256 MiB memory
 *   target) plus a final norm, for the bounded-memory run. With every size
 *   1 (--vocab 1 --hidden 1 --inter 1 --kv-dim 1 --layers N) it writes
 *   9N + 3 one-element tensors: the planning benchmark's many-tensor model.
 *
 *   Values: every element is a pure function of (tensor name, element
 *   index, variant), so any two runs write identical bytes. Variant 0 is
 *   the "base"; variant k > 0 is a "fine-tune": the same base values plus a
 *   small delta (about 3% of the weight scale, product of two uniforms so
 *   magnitudes vary like real task vectors, which TIES/breadcrumbs rank).
 *   Generation runs at memory speed (a splitmix64 step per element) so the
 *   cache of `make bench` fills in seconds.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUF_ELEMS   ((size_t)1 << 21)

enum dtype { DT_BF16, DT_F32 };

struct tensor {
    char name[96];
    int ndim;
    int64_t shape[2];
    uint64_t nbytes;
    float scale;      /* base values: uniform in [-scale, scale), or 1 + noise for norms */
    int is_norm;
    int shard;
    uint64_t offset;  /* inside its shard's data buffer */
};

struct spec {
    int64_t vocab, hidden, inter, kv_dim, layers;
    int tie;          /* no lm_head */
    enum dtype dt;
    unsigned variant;
    uint64_t shard_size;
    int ntensors, cap;
    struct tensor *t; /* grown by doubling: the planning benchmark asks for a million tensors */
    int nshards;
};

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "bench_gen: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(1);
}

/* ------------------------------------------------------------ values */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t hash_name(const char *s, uint64_t salt)
{
    uint64_t h = 0xcbf29ce484222325ull ^ salt;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Uniform in [-1, 1) from 24 bits. */
static inline float unit24(uint32_t r) { return (float)(int32_t)(r >> 8) * (1.0f / 8388608.0f) - 1.0f; }

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Writes elements [e0, e0 + n) of tensor t as dtype into buf. The base stream is keyed by
 * the tensor name; the delta stream by the name and the variant. Both streams are positioned
 * at element e0, so the value of an element does not depend on the buffer size. */
static void fill(const struct tensor *t, unsigned variant, enum dtype dt, uint64_t e0, size_t n, void *buf)
{
    uint64_t kb = hash_name(t->name, 0), kd = hash_name(t->name, 0x5eed0000ull + variant);
    uint64_t sb = kb + e0 * 0x9e3779b97f4a7c15ull, sd = kd + e0 * 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) {
        uint64_t rb = splitmix(&sb);
        float v = t->is_norm ? 1.0f + 0.05f * unit24((uint32_t)rb) : t->scale * unit24((uint32_t)rb);
        if (variant) {
            uint64_t rd = splitmix(&sd);
            v += 0.03f * t->scale * unit24((uint32_t)rd) * unit24((uint32_t)(rd >> 32));
        }
        if (dt == DT_BF16) ((uint16_t *)buf)[i] = f32_to_bf16(v);
        else ((float *)buf)[i] = v;
    }
}

/* ------------------------------------------------------------ layout */

static void add(struct spec *s, const char *name, int64_t r, int64_t c, int is_norm)
{
    if (s->ntensors == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        if (s->cap > (1 << 26) || !(s->t = realloc(s->t, (size_t)s->cap * sizeof *s->t)))
            die("%s", "too many tensors (lower --layers)");
    }
    struct tensor *t = &s->t[s->ntensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = c ? 2 : 1;
    t->shape[0] = r;
    t->shape[1] = c;
    uint64_t numel = (uint64_t)r * (uint64_t)(c ? c : 1);
    t->nbytes = numel * (s->dt == DT_BF16 ? 2 : 4);
    t->is_norm = is_norm;
    t->scale = c ? 1.0f / sqrtf((float)c) : 1.0f;
}

static uint64_t layer_bytes(const struct spec *s)
{
    uint64_t h = (uint64_t)s->hidden, el = 2 * h * h + 2 * h * (uint64_t)s->kv_dim + 3 * h * (uint64_t)s->inter + 2 * h;
    return el * (s->dt == DT_BF16 ? 2 : 4);
}

static void build(struct spec *s)
{
    char name[96];
    add(s, "model.embed_tokens.weight", s->vocab, s->hidden, 0);
    for (int64_t l = 0; l < s->layers; l++) {
        static const char *const proj[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
        const int64_t rows[] = {s->hidden, s->kv_dim, s->kv_dim, s->hidden, s->inter, s->inter, s->hidden};
        const int64_t cols[] = {s->hidden, s->hidden, s->hidden, s->hidden, s->hidden, s->hidden, s->inter};
        snprintf(name, sizeof name, "model.layers.%" PRId64 ".input_layernorm.weight", l);
        add(s, name, s->hidden, 0, 1);
        for (int p = 0; p < 7; p++) {
            snprintf(name, sizeof name, "model.layers.%" PRId64 ".%s.weight", l, proj[p]);
            add(s, name, rows[p], cols[p], 0);
        }
        snprintf(name, sizeof name, "model.layers.%" PRId64 ".post_attention_layernorm.weight", l);
        add(s, name, s->hidden, 0, 1);
    }
    add(s, "model.norm.weight", s->hidden, 0, 1);
    if (!s->tie) add(s, "lm_head.weight", s->vocab, s->hidden, 0);
    /* shards: greedy, in tensor order, like transformers' save_pretrained */
    uint64_t cur = 0;
    s->nshards = 1;
    for (int i = 0; i < s->ntensors; i++) {
        struct tensor *t = &s->t[i];
        if (s->shard_size && cur > 0 && cur + t->nbytes > s->shard_size) {
            s->nshards++;
            cur = 0;
        }
        t->shard = s->nshards - 1;
        t->offset = cur;
        cur += t->nbytes;
    }
}

/* ------------------------------------------------------------ files */

static void write_all(int fd, const void *buf, size_t n, const char *path)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die("cannot write %s", path);
        p += w;
        n -= (size_t)w;
    }
}

/* dir/name into out (4096 bytes). */
static void join(char *out, const char *dir, const char *name)
{
    if (snprintf(out, 4096, "%s/%s", dir, name) >= 4096) die("path too long: %s", dir);
}

static void write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("cannot create %s", path);
    write_all(fd, text, strlen(text), path);
    close(fd);
}

static void shard_name(const struct spec *s, int k, char *out, size_t n)
{
    if (s->nshards == 1) snprintf(out, n, "model.safetensors");
    else snprintf(out, n, "model-%05d-of-%05d.safetensors", k + 1, s->nshards);
}

static void write_shard(const struct spec *s, int k, const char *dir, void *buf)
{
    char fname[64], path[4096];
    shard_name(s, k, fname, sizeof fname);
    join(path, dir, fname);
    size_t cap = 256 + 160 * (size_t)s->ntensors, len = 0;
    char *hdr = malloc(cap + 8);
    if (!hdr) die("%s", "out of memory");
    len += (size_t)snprintf(hdr + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < s->ntensors; i++) {
        const struct tensor *t = &s->t[i];
        if (t->shard != k) continue;
        len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%" PRId64, t->name,
                                s->dt == DT_BF16 ? "BF16" : "F32", t->shape[0]);
        if (t->ndim == 2) len += (size_t)snprintf(hdr + len, cap - len, ",%" PRId64, t->shape[1]);
        len += (size_t)snprintf(hdr + len, cap - len, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->offset,
                                t->offset + t->nbytes);
    }
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while (len % 8) hdr[len++] = ' ';
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("cannot create %s", path);
    unsigned char n8[8];
    for (int i = 0; i < 8; i++) n8[i] = (unsigned char)((uint64_t)len >> (8 * i));
    write_all(fd, n8, 8, path);
    write_all(fd, hdr, len, path);
    free(hdr);
    size_t esize = s->dt == DT_BF16 ? 2 : 4;
    for (int i = 0; i < s->ntensors; i++) {
        const struct tensor *t = &s->t[i];
        if (t->shard != k) continue;
        uint64_t numel = t->nbytes / esize;
        for (uint64_t e = 0; e < numel; e += BUF_ELEMS) {
            size_t n = numel - e < BUF_ELEMS ? (size_t)(numel - e) : BUF_ELEMS;
            fill(t, s->variant, s->dt, e, n, buf);
            write_all(fd, buf, n * esize, path);
        }
    }
    if (close(fd) != 0) die("cannot close %s", path);
}

static void write_index(const struct spec *s, const char *dir)
{
    size_t cap = 256 + 160 * (size_t)s->ntensors, len = 0;
    char *j = malloc(cap);
    if (!j) die("%s", "out of memory");
    uint64_t total = 0;
    for (int i = 0; i < s->ntensors; i++) total += s->t[i].nbytes;
    len += (size_t)snprintf(j + len, cap - len,
                            "{\n  \"metadata\": {\"total_size\": %" PRIu64 "},\n  \"weight_map\": {", total);
    for (int i = 0; i < s->ntensors; i++) {
        char fname[64];
        shard_name(s, s->t[i].shard, fname, sizeof fname);
        len += (size_t)snprintf(j + len, cap - len, "%s\n    \"%s\": \"%s\"", i ? "," : "", s->t[i].name, fname);
    }
    snprintf(j + len, cap - len, "\n  }\n}\n");
    char path[4096];
    join(path, dir, "model.safetensors.index.json");
    write_text(path, j);
    free(j);
}

static void write_config(const struct spec *s, const char *dir)
{
    char text[2048], path[4096];
    int64_t heads = s->hidden / 64 > 0 ? s->hidden / 64 : 1, kv_heads = s->kv_dim / 64 > 0 ? s->kv_dim / 64 : 1;
    snprintf(text, sizeof text,
             "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
             "  \"vocab_size\": %" PRId64 ",\n  \"hidden_size\": %" PRId64 ",\n  \"intermediate_size\": %" PRId64 ",\n"
             "  \"num_hidden_layers\": %" PRId64 ",\n  \"num_attention_heads\": %" PRId64 ",\n"
             "  \"num_key_value_heads\": %" PRId64 ",\n  \"hidden_act\": \"silu\",\n"
             "  \"max_position_embeddings\": 2048,\n  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 10000.0,\n"
             "  \"tie_word_embeddings\": %s,\n  \"torch_dtype\": \"%s\",\n  \"bench_variant\": %u\n}\n",
             s->vocab, s->hidden, s->inter, s->layers, heads, kv_heads, s->tie ? "true" : "false",
             s->dt == DT_BF16 ? "bfloat16" : "float32", s->variant);
    join(path, dir, "config.json");
    write_text(path, text);
}

/* ------------------------------------------------------------ main */

static int64_t num_arg(const char *opt, const char *v)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    double mult = 1;
    if (*end == 'k' || *end == 'K') mult = 1e3, end++;
    else if (*end == 'M') mult = 1e6, end++;
    else if (*end == 'G') mult = 1e9, end++;
    else if (*end == 'm') mult = 1048576.0, end++;  /* MiB */
    if (errno || end == v || *end || d < 0) die("bad value for %s", opt);
    return (int64_t)(d * mult);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_gen OUT_DIR [--size BYTES] [--variant K] [--shard-size BYTES] [--quick | --big]\n"
            "                 [--vocab N] [--hidden N] [--inter N] [--kv-dim N] [--layers N] [--f32] [--tie]\n"
            "  sizes accept k, M, G (powers of 10) and m (MiB): --size 470M\n"
            "  --quick  ~50 MB shapes (vocab 8000, hidden 1024, MLP 2816, 1 layer)\n"
            "  --big    one 131072 x 1024 F32 embedding (512 MiB) and a final norm\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static struct spec s;
    s.vocab = 32000, s.hidden = 2048, s.inter = 5632, s.kv_dim = 256, s.layers = -1;
    int64_t size = 470000000;
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quick")) { s.vocab = 8000, s.hidden = 1024, s.inter = 2816, s.kv_dim = 128, s.layers = 1; }
        else if (!strcmp(a, "--big")) { s.vocab = 131072, s.hidden = 1024, s.layers = 0, s.tie = 1, s.dt = DT_F32; }
        else if (!strcmp(a, "--f32")) s.dt = DT_F32;
        else if (!strcmp(a, "--tie")) s.tie = 1;
        else if (a[0] == '-' && !v) usage();
        else if (!strcmp(a, "--size")) size = num_arg(a, argv[++i]);
        else if (!strcmp(a, "--variant")) s.variant = (unsigned)num_arg(a, argv[++i]);
        else if (!strcmp(a, "--shard-size")) s.shard_size = (uint64_t)num_arg(a, argv[++i]);
        else if (!strcmp(a, "--vocab")) s.vocab = num_arg(a, argv[++i]);
        else if (!strcmp(a, "--hidden")) s.hidden = num_arg(a, argv[++i]);
        else if (!strcmp(a, "--inter")) s.inter = num_arg(a, argv[++i]);
        else if (!strcmp(a, "--kv-dim")) s.kv_dim = num_arg(a, argv[++i]);
        else if (!strcmp(a, "--layers")) s.layers = num_arg(a, argv[++i]);
        else if (a[0] == '-') usage();
        else if (!out) out = a;
        else usage();
    }
    if (!out || s.vocab <= 0 || s.hidden <= 0 || s.inter <= 0 || s.kv_dim <= 0) usage();
    if (s.layers < 0) { /* as many layers as fit the size, at least one */
        uint64_t fixed = (uint64_t)s.vocab * (uint64_t)s.hidden * (s.tie ? 1 : 2) * (s.dt == DT_BF16 ? 2 : 4);
        double l = ((double)size - (double)fixed) / (double)layer_bytes(&s);
        s.layers = l < 1 ? 1 : (int64_t)(l + 0.5);
    }
    build(&s);

    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    char cmd[8300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", tmp, out);
    if (strchr(out, '\'') || system(cmd) != 0) die("cannot clear %s", out);
    if (mkdir(tmp, 0755) != 0) die("cannot create %s", tmp);
    void *buf = malloc(BUF_ELEMS * 4);
    if (!buf) die("%s", "out of memory");
    for (int k = 0; k < s.nshards; k++) write_shard(&s, k, tmp, buf);
    free(buf);
    if (s.nshards > 1) write_index(&s, tmp);
    write_config(&s, tmp);
    if (rename(tmp, out) != 0) die("cannot rename into %s", out);
    uint64_t total = 0;
    for (int i = 0; i < s.ntensors; i++) total += s.t[i].nbytes;
    printf("%s: %d tensors, %" PRId64 " layers, %.1f MB in %d file(s)\n", out, s.ntensors, s.layers,
           (double)total / 1e6, s.nshards);
    return 0;
}
