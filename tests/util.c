/*
 * util.c — helpers shared by the tests: an independent safetensors writer
 * (so reader and engine are checked against bytes they did not produce),
 * text files, and child-process peak memory.
 */
#include "test.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static size_t dtype_size(const char *d)
{
    if (!strcmp(d, "F64") || !strcmp(d, "I64") || !strcmp(d, "U64")) return 8;
    if (!strcmp(d, "F32") || !strcmp(d, "I32") || !strcmp(d, "U32")) return 4;
    if (!strcmp(d, "F16") || !strcmp(d, "BF16") || !strcmp(d, "I16") || !strcmp(d, "U16")) return 2;
    return 1;
}

int test_write_safetensors(const char *path, const struct test_tensor *t, int n)
{
    size_t cap = 256 + (size_t)n * 256, len = 0;
    char *h = malloc(cap);
    uint64_t off = 0;
    len += (size_t)snprintf(h + len, cap - len, "{");
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (uint64_t)t[i].shape[d];
        uint64_t bytes = numel * dtype_size(t[i].dtype);
        len += (size_t)snprintf(h + len, cap - len, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "", t[i].name,
                                t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++) len += (size_t)snprintf(h + len, cap - len, "%s%lld", d ? "," : "", t[i].shape[d]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                                (unsigned long long)(off + bytes));
        off += bytes;
    }
    len += (size_t)snprintf(h + len, cap - len, ",\"__metadata__\":{\"format\":\"pt\"}}");
    while (len % 8) h[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) { free(h); return -1; }
    uint8_t hl[8];
    for (int i = 0; i < 8; i++) hl[i] = (uint8_t)((uint64_t)len >> (8 * i));
    int ok = fwrite(hl, 1, 8, f) == 8 && fwrite(h, 1, len, f) == len;
    for (int i = 0; i < n && ok; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (uint64_t)t[i].shape[d];
        size_t bytes = (size_t)numel * dtype_size(t[i].dtype);
        ok = fwrite(t[i].data, 1, bytes, f) == bytes;
    }
    ok &= fclose(f) == 0;
    free(h);
    return ok ? 0 : -1;
}

int test_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0;
    ok &= fclose(f) == 0;
    return ok ? 0 : -1;
}

int test_write_model(const char *dir, const struct test_tensor *t, int n, const char *config_json)
{
    char path[1024];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (test_write_safetensors(path, t, n)) return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    return test_write_text(path, config_json);
}

/* The peak RSS of `sh -c cmd`. A child forked from this runner starts with the runner's resident pages in
 * its own count (and exec records that peak), so the measurement runs in a freshly exec'd copy of the
 * runner (test_rss_helper, small), which forks the command and reports wait4's ru_maxrss on fd 3. */
int test_run_rss(const char *cmd, long *maxrss_kib)
{
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fds[0]);
        if (dup2(fds[1], 3) < 0) _exit(127);
        execl("/proc/self/exe", "alloy_tests", "--rss-run", cmd, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char buf[64] = {0};
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    int st;
    if (waitpid(pid, &st, 0) != pid || n <= 0) return -1;
    *maxrss_kib = strtol(buf, NULL, 10);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int test_rss_helper(const char *cmd)
{
    pid_t pid = fork();
    if (pid < 0) return 127;
    if (pid == 0) {
        close(3);
        freopen("/dev/null", "w", stdout);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int st;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) != pid) return 127;
    dprintf(3, "%ld\n", ru.ru_maxrss);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 127;
}

static uint64_t hash_file(const char *path, uint64_t h)
{
    FILE *f = fopen(path, "rb");
    if (!f) return h ^ 0xdead;
    uint8_t buf[1 << 15];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < n; i++) h = (h ^ buf[i]) * 0x100000001b3ull;
        h = (h ^ n) * 0x100000001b3ull;
    }
    fclose(f);
    return h;
}

uint64_t test_hash_dir(const char *dir)
{
    uint64_t h = 0xcbf29ce484222325ull;
    struct dirent **list = NULL;
    int n = scandir(dir, &list, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", dir, list[i]->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            for (const char *c = list[i]->d_name; *c; c++) h = (h ^ (uint8_t)*c) * 0x100000001b3ull;
            h = hash_file(path, h);
        }
        free(list[i]);
    }
    free(list);
    return n < 0 ? 0 : h;
}

char *test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(n > 0 ? n : 0) + 1);
    size_t got = b ? fread(b, 1, (size_t)(n > 0 ? n : 0), f) : 0;
    if (b) b[got] = '\0';
    if (len) *len = got;
    fclose(f);
    return b;
}

int test_count_lines(const char *log, const char *prefix)
{
    int n = 0;
    for (const char *p = log; p && *p;) {
        n += strncmp(p, prefix, strlen(prefix)) == 0;
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : NULL;
    }
    return n;
}

int test_leftovers(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) n += strstr(e->d_name, ".alloy-tmp-") || strstr(e->d_name, ".alloy-old-");
    if (d) closedir(d);
    return n;
}
