/*
 * fuzz_index.c — libFuzzer target for the model.safetensors.index.json
 * reader (open_index in src/formats/model.c).
 *
 * DESIGN
 *   The reader is only reachable through alloy_model_open on a folder, so
 *   the first call builds a scratch model folder under $TMPDIR (removed at
 *   exit) holding shards the index can point at: two valid shards with
 *   overlapping tensor names, the standard sharded name, a truncated shard,
 *   a header-only shard, a zero-byte file, a symlink, a folder and a FIFO named *.safetensors (a
 *   FIFO must be refused, not opened: opening one blocks). Each input is
 *   written as the folder's index and the folder opened. An accepted model
 *   is walked: every tensor is found by its name, lies in a shard the index
 *   names, and its bytes are read. Rejections must be one line.
 *   Writing one small file per run costs a few microseconds; the fuzzer
 *   still runs thousands of inputs per second. The index is read through a
 *   window of 1 + size % 17 bytes (model_index.h), so every input is also
 *   split across window boundaries.
 */
#include "alloy.h"
#include "formats/model_index.h"
#include "fuzz.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256];
static char g_index[300];

/* A shard with F32 tensors named names[0..n), tensor i holding i + 1 elements. */
static void write_shard(const char *file, const char *const *names, int n, size_t cut)
{
    char hdr[1024], path[400];
    size_t len = 0;
    uint64_t off = 0;
    len += (size_t)snprintf(hdr + len, sizeof hdr - len, "{");
    for (int i = 0; i < n; i++) {
        uint64_t bytes = 4 * (uint64_t)(i + 1);
        len += (size_t)snprintf(hdr + len, sizeof hdr - len,
                                "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%llu,%llu]}",
                                i ? "," : "", names[i], i + 1, (unsigned long long)off,
                                (unsigned long long)(off + bytes));
        off += bytes;
    }
    len += (size_t)snprintf(hdr + len, sizeof hdr - len, "}");
    while (len % 8) hdr[len++] = ' ';
    uint8_t img[2048];
    size_t total = 0;
    for (int i = 0; i < 8; i++) img[total++] = (uint8_t)((uint64_t)len >> (8 * i));
    memcpy(img + total, hdr, len);
    total += len;
    for (uint64_t i = 0; i < off; i++) img[total++] = (uint8_t)(i * 37);
    if (cut && cut < total) total = cut;
    snprintf(path, sizeof path, "%s/%s", g_dir, file);
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(img, 1, total, fp) != total || fclose(fp) != 0) abort();
}

static void cleanup(void)
{
    DIR *d = opendir(g_dir);
    if (!d) return;
    struct dirent *e;
    char path[600];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", g_dir, e->d_name);
        if (unlink(path) != 0) rmdir(path);
    }
    closedir(d);
    rmdir(g_dir);
}

static void setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/alloy-fuzz-index-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) abort();
    atexit(cleanup);
    static const char *const a[] = {"x", "y", "model.layers.0.w", "shared"};
    static const char *const b[] = {"z", "shared", "x"};
    static const char *const s[] = {"model.embed_tokens.weight", "lm_head.weight"};
    write_shard("a.safetensors", a, 4, 0);
    write_shard("b.safetensors", b, 3, 0);
    write_shard("model-00001-of-00002.safetensors", s, 2, 0);
    write_shard("bad.safetensors", a, 4, 21);
    write_shard("empty.safetensors", a, 0, 0);
    char path[400];
    snprintf(path, sizeof path, "%s/zero.safetensors", g_dir);
    FILE *z = fopen(path, "wb");
    if (!z || fclose(z) != 0) abort();
    snprintf(path, sizeof path, "%s/link.safetensors", g_dir);
    if (symlink("a.safetensors", path) != 0) abort();
    snprintf(path, sizeof path, "%s/dir.safetensors", g_dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/fifo.safetensors", g_dir);
    mkfifo(path, 0644);
    snprintf(path, sizeof path, "%s/config.json", g_dir);
    FILE *fp = fopen(path, "w");
    if (!fp || fputs("{\"num_hidden_layers\": 1}", fp) < 0 || fclose(fp) != 0) abort();
    snprintf(g_index, sizeof g_index, "%s/model.safetensors.index.json", g_dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_dir[0]) setup();
    int fd = open(g_index, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) abort();
    for (size_t done = 0; done < size;) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0) abort();
        done += (size_t)w;
    }
    close(fd);
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    alloy_index_set_window(1 + size % 17);
    int rc = alloy_model_open(g_dir, &m, &err);
    if (rc != ALLOY_OK) {
        check(m == NULL);
        check(err.msg[0] != '\0' && memchr(err.msg, '\n', sizeof err.msg) == NULL);
        return 0;
    }
    for (size_t i = 0; i < alloy_model_count(m); i++) {
        const struct alloy_tensor *t = alloy_model_tensor(m, i);
        check(t && alloy_model_find(m, t->name) == t);
        check(strncmp(alloy_tensor_file_path(t->file), g_dir, strlen(g_dir)) == 0);
        if (t->nbytes) {
            volatile uint8_t touch = t->data[0] ^ t->data[t->nbytes - 1];
            (void)touch;
        }
    }
    alloy_model_close(m);
    return 0;
}
