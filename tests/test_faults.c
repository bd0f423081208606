/*
 * test_faults.c — output faults and interrupts: a full disk, short writes,
 * failing fsync/ftruncate/rename, SIGINT and SIGTERM in the middle of a
 * merge. The contract in every case: the output folder is either the
 * complete new result or exactly what it was before, no temporary folder
 * is left, the inputs are byte-identical, and the CLI says what happened in
 * one line (exit 1 for a failure, 130 for an interrupt).
 *
 * DESIGN
 *   Faults come from tests/shim/faultinject.c, compiled here once with
 *   `cc -shared -fPIC` and preloaded into the alloy child only, aimed at
 *   the test's temporary folder (ALLOY_FI_PATH), so reads of the inputs and
 *   the child's stderr are never affected. ENOSPC is injected after N bytes
 *   for N spread over the whole output (first shard header, inside a
 *   tensor, a later shard, the last metadata file), so every stage of the
 *   writer meets it. ASan refuses a preloaded library ahead of its runtime
 *   unless verify_asan_link_order=0, which the child gets.
 *   Interrupts: two 64 MiB float32 models merged with one thread; the
 *   signal is sent once the temporary folder exists (so the merge is under
 *   way), after a few different delays.
 */
#include "test.h"
#include "alloy.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FIX(name) "tests/data/tiny-llama/" name

/* ------------------------------------------------------------ helpers */

static const char *shim(void)
{
    static char so[1024];
    static int state; /* 0 not built, 1 built, -1 failed */
    if (!state) {
        char cmd[1400], *log = NULL;
        snprintf(so, sizeof so, "%s/faultinject.so", test_tmpdir());
        snprintf(cmd, sizeof cmd, "cc -shared -fPIC -O1 -o '%s' tests/shim/faultinject.c -ldl", so);
        state = test_run(cmd, &log) == 0 ? 1 : -1;
        CHECK_MSG(state == 1, "cannot build the fault shim: %s", log);
        free(log);
    }
    return state == 1 ? so : NULL;
}


static uint64_t dir_bytes(const char *dir)
{
    uint64_t total = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[1400];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) total += (uint64_t)st.st_size;
    }
    if (d) closedir(d);
    return total;
}

/* An existing output folder with one marker file: what must survive a failure. */
static void old_output(const char *out)
{
    char path[1400];
    mkdir(out, 0755);
    snprintf(path, sizeof path, "%s/keep.txt", out);
    CHECK_INT(test_write_text(path, "old result"), 0);
}

static int old_output_intact(const char *out)
{
    char path[1400], buf[64] = "";
    snprintf(path, sizeof path, "%s/keep.txt", out);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    DIR *d = opendir(out);
    int entries = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) entries += e->d_name[0] != '.';
    if (d) closedir(d);
    return strcmp(buf, "old result") == 0 && entries == 1;
}

/* Runs `alloy merge cfg out extra` with the shim and the given fault settings. */
static int faulty_merge(const char *root, const char *faults, const char *cfg, const char *out, const char *extra,
                        char **log)
{
    const char *so = shim();
    if (!so) return -1;
    const char *asan = getenv("ASAN_OPTIONS");
    char cmd[6144];
    snprintf(cmd, sizeof cmd,
             "ALLOY_FI_PATH='%s' %s ASAN_OPTIONS='%s%sverify_asan_link_order=0' LD_PRELOAD='%s' "
             "timeout 120 %s merge %s %s --quiet --overwrite %s",
             root, faults, asan ? asan : "", asan && *asan ? ":" : "", so, test_alloy_bin(), cfg, out,
             extra ? extra : "");
    return test_run(cmd, log);
}

static const char g_linear[] = "merge_method: linear\nmodels:\n"
                               "  - model: " FIX("code") "\n    parameters: {weight: 0.6}\n"
                               "  - model: " FIX("prose") "\n    parameters: {weight: 0.4}\n";

/* A canonical scratch folder (the shim compares /proc/self/fd targets, which are canonical). */
static void scratch(char *root, size_t len)
{
    char *r = realpath(test_tmpdir(), NULL);
    snprintf(root, len, "%s", r ? r : "/nonexistent");
    free(r);
}

/* ------------------------------------------------------------ disk full and short writes */

TEST(faults_enospc_at_every_stage)
{
    char root[512], cfg[1024], ref[1024], out[1024], cmd[4096], *log = NULL;
    scratch(root, sizeof root);
    snprintf(cfg, sizeof cfg, "%s/c.yml", root);
    CHECK_INT(test_write_text(cfg, g_linear), 0);
    uint64_t in_code = test_hash_dir(FIX("code")), in_prose = test_hash_dir(FIX("prose"));
    /* a fault-free run gives the number of bytes the output takes (same folder name length) */
    snprintf(ref, sizeof ref, "%s/ref", root);
    snprintf(cmd, sizeof cmd, "%s merge %s %s --quiet --out-shard-size 500K", test_alloy_bin(), cfg, ref);
    CHECK_INT(test_run(cmd, NULL), 0);
    uint64_t total = dir_bytes(ref);
    CHECK_MSG(total > 1000000, "reference output is only %llu bytes", (unsigned long long)total);
    uint64_t limits[] = {0, 3, 4000, total / 3, total / 2 + 12345, total * 9 / 10, total - 1};
    snprintf(out, sizeof out, "%s/out", root);
    old_output(out);
    for (size_t i = 0; i < sizeof limits / sizeof *limits; i++) {
        char faults[64];
        snprintf(faults, sizeof faults, "ALLOY_FI_ENOSPC_AFTER=%llu", (unsigned long long)limits[i]);
        int rc = faulty_merge(root, faults, cfg, out, "--out-shard-size 500K", &log);
        CHECK_MSG(rc == 1, "%s: exit %d: %s", faults, rc, log);
        CHECK_MSG(test_count_lines(log, "alloy: error: ") == 1, "%s: expected one error line: %s", faults, log);
        CHECK_MSG(log && strstr(log, "No space left on device") && strstr(log, "/out.alloy-tmp-"),
                  "%s: the message must name the file and the cause: %s", faults, log);
        CHECK_MSG(old_output_intact(out), "%s: the existing output folder changed", faults);
        CHECK_MSG(test_leftovers(root) == 0, "%s: temporary folder left behind", faults);
        free(log);
    }
    /* without an existing folder, a failed run leaves none */
    char fresh[1024];
    snprintf(fresh, sizeof fresh, "%s/fresh", root);
    int rc = faulty_merge(root, "ALLOY_FI_ENOSPC_AFTER=500000", cfg, fresh, NULL, &log);
    CHECK_MSG(rc == 1, "exit %d: %s", rc, log);
    free(log);
    CHECK(access(fresh, F_OK) != 0);
    CHECK_INT(test_leftovers(root), 0);
    CHECK_MSG(test_hash_dir(FIX("code")) == in_code && test_hash_dir(FIX("prose")) == in_prose, "an input changed");
}

TEST(faults_short_writes_are_retried)
{
    /* every write moves at most 777 bytes: the result must be byte-identical to a normal run */
    char root[512], a[1024], b[1024], cfg[1024], cmd[4096], *log = NULL;
    scratch(root, sizeof root);
    snprintf(cfg, sizeof cfg, "%s/c.yml", root);
    CHECK_INT(test_write_text(cfg, g_linear), 0);
    snprintf(a, sizeof a, "%s/a", root);
    snprintf(b, sizeof b, "%s/b", root);
    mkdir(a, 0755);
    mkdir(b, 0755);
    snprintf(a, sizeof a, "%s/a/out", root);
    snprintf(b, sizeof b, "%s/b/out", root);
    snprintf(cmd, sizeof cmd, "%s merge %s %s --quiet --out-shard-size 700K --threads 2", test_alloy_bin(), cfg, a);
    CHECK_INT(test_run(cmd, NULL), 0);
    int rc = faulty_merge(root, "ALLOY_FI_SHORT=777", cfg, b, "--out-shard-size 700K --threads 2", &log);
    CHECK_MSG(rc == 0, "short writes made the merge fail (%d): %s", rc, log);
    free(log);
    uint64_t ha = test_hash_dir(a), hb = test_hash_dir(b);
    CHECK_MSG(ha == hb && ha != 0, "short writes changed the output");
    /* a write that makes no progress at all is a failure, not a loop */
    char c[1024];
    snprintf(c, sizeof c, "%s/c", root);
    old_output(c);
    rc = faulty_merge(root, "ALLOY_FI_ZERO=1", cfg, c, NULL, &log);
    CHECK_MSG(rc == 1, "zero-byte writes: exit %d: %s", rc, log);
    CHECK_MSG(test_count_lines(log, "alloy: error: ") == 1 && strstr(log, "write failed"), "%s", log);
    free(log);
    CHECK(old_output_intact(c));
    CHECK_INT(test_leftovers(root), 0);
}

TEST(faults_fsync_ftruncate_rename)
{
    char root[512], cfg[1024], out[1024], *log = NULL;
    scratch(root, sizeof root);
    snprintf(cfg, sizeof cfg, "%s/c.yml", root);
    CHECK_INT(test_write_text(cfg, g_linear), 0);
    snprintf(out, sizeof out, "%s/out", root);
    old_output(out);
    static const struct { const char *faults, *want; } cases[] = {
        {"ALLOY_FI_FSYNC_EIO=1", "fsync failed"},
        {"ALLOY_FI_FTRUNCATE=1", "cannot size the file"},
        /* moving the old folder aside fails: nothing has changed yet */
        {"ALLOY_FI_RENAME_FAIL=1", "cannot move the existing folder aside"},
        /* the old folder is aside and the new one cannot be renamed in: the old one must come back */
        {"ALLOY_FI_RENAME_FAIL=2", "into place"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc = faulty_merge(root, cases[i].faults, cfg, out, NULL, &log);
        CHECK_MSG(rc == 1, "%s: exit %d: %s", cases[i].faults, rc, log);
        CHECK_MSG(test_count_lines(log, "alloy: error: ") == 1 && log && strstr(log, cases[i].want) &&
                  (strstr(log, "Input/output error\n") || strstr(log, "File too large\n")),
                  "%s: %s", cases[i].faults, log);
        CHECK_MSG(old_output_intact(out), "%s: the existing output folder changed", cases[i].faults);
        CHECK_MSG(test_leftovers(root) == 0, "%s: temporary folder left behind", cases[i].faults);
        free(log);
    }
    /* with the faults gone the same command replaces the folder as a whole */
    int rc = faulty_merge(root, "", cfg, out, NULL, &log);
    CHECK_MSG(rc == 0, "%s", log);
    free(log);
    char path[1400];
    snprintf(path, sizeof path, "%s/keep.txt", out);
    CHECK(access(path, F_OK) != 0);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    CHECK(access(path, F_OK) == 0);
    CHECK_INT(test_leftovers(root), 0);
}

/* ------------------------------------------------------------ interrupts */

static int tmp_exists(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    while (d && !found && (e = readdir(d))) found = strstr(e->d_name, ".alloy-tmp-") != NULL;
    if (d) closedir(d);
    return found;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* Starts alloy, waits for its temporary folder, waits delay_ms more, sends
 * sig. Returns the exit status (-signal when killed by one, -999 on hang);
 * stderr goes to errpath. */
static int interrupted_merge(const char *root, const char *cfg, const char *out, const char *threads, int sig,
                             long delay_ms, const char *errpath)
{
    pid_t pid = fork();
    if (pid < 0) return -1000;
    if (pid == 0) {
        int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, 2);
        execl(test_alloy_bin(), test_alloy_bin(), "merge", cfg, out, "--quiet", "--overwrite", "--threads", threads,
              (char *)NULL);
        _exit(127);
    }
    int st = 0, waited = 0;
    for (int i = 0; i < 20000 && !tmp_exists(root); i++) { /* up to 20 s for the merge to start */
        if (waitpid(pid, &st, WNOHANG) == pid) { waited = 1; break; }
        sleep_ms(1);
    }
    if (!waited) {
        sleep_ms(delay_ms);
        kill(pid, sig);
        for (int i = 0; i < 60000; i++) { /* up to 60 s to stop */
            if (waitpid(pid, &st, WNOHANG) == pid) { waited = 1; break; }
            sleep_ms(1);
        }
        if (!waited) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -999;
        }
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

TEST(faults_sigint_sigterm_mid_merge)
{
    char root[512], cfg[1024], out[1024], m[2][1024], errpath[1024], yaml[4096];
    scratch(root, sizeof root);
    const long long rows = 4096, cols = 4096; /* 64 MiB of float32 per model */
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    CHECK(w != NULL);
    if (!w) return;
    for (int k = 0; k < 2; k++) {
        for (long long i = 0; i < rows * cols; i++) w[i] = (float)((i * 7 + k) % 1000) * 0.001f;
        char path[2100];
        snprintf(m[k], sizeof m[k], "%s/m%d", root, k);
        mkdir(m[k], 0755);
        struct test_tensor t[] = {{"model.layers.0.mlp.up_proj.weight", "F32", 2, {rows, cols}, w}};
        snprintf(path, sizeof path, "%s/model.safetensors", m[k]);
        CHECK_INT(test_write_safetensors(path, t, 1), 0);
        snprintf(path, sizeof path, "%s/config.json", m[k]);
        CHECK_INT(test_write_text(path, "{\"num_hidden_layers\": 1}"), 0);
    }
    free(w);
    uint64_t h0 = test_hash_dir(m[0]), h1 = test_hash_dir(m[1]);
    snprintf(cfg, sizeof cfg, "%s/c.yml", root);
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\n", m[0], m[1]);
    CHECK_INT(test_write_text(cfg, yaml), 0);
    snprintf(out, sizeof out, "%s/out", root);
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", root);
    static const struct { int sig; const char *threads; } runs[] = {{SIGINT, "1"}, {SIGTERM, "1"}, {SIGINT, "2"}};
    static const long delays[] = {0, 20, 50, 5, 1};
    for (size_t r = 0; r < sizeof runs / sizeof *runs; r++) {
        int interrupted = 0;
        for (size_t d = 0; d < sizeof delays / sizeof *delays && !interrupted; d++) {
            old_output(out);
            int rc = interrupted_merge(root, cfg, out, runs[r].threads, runs[r].sig, delays[d], errpath);
            size_t n = 0;
            char err[2048] = "";
            FILE *f = fopen(errpath, "r");
            if (f) { n = fread(err, 1, sizeof err - 1, f); fclose(f); }
            err[n] = '\0';
            CHECK_MSG(rc == 130 || rc == 0, "signal %d after %ld ms: exit %d (hang: -999): %s", runs[r].sig, delays[d],
                      rc, err);
            if (rc == 130) {
                interrupted = 1;
                CHECK_MSG(test_count_lines(err, "alloy: error: ") == 1 && strstr(err, "interrupted"), "%s", err);
                CHECK_MSG(old_output_intact(out), "signal %d: the existing output folder changed", runs[r].sig);
            } else if (rc == 0) { /* finished before the signal landed: then it must be the whole new result */
                char path[1400];
                snprintf(path, sizeof path, "%s/model.safetensors", out);
                CHECK(access(path, F_OK) == 0);
                snprintf(path, sizeof path, "rm -rf '%s'", out);
                CHECK_INT(system(path), 0);
            }
            CHECK_MSG(test_leftovers(root) == 0, "signal %d: temporary folder left behind", runs[r].sig);
        }
        CHECK_MSG(interrupted, "signal %d never landed mid-merge", runs[r].sig);
    }
    CHECK_MSG(test_hash_dir(m[0]) == h0 && test_hash_dir(m[1]) == h1, "an input changed");
}

/* A GGUF output meets a full disk in its header, inside a tensor and at its last bytes: one error line naming
 * the temporary file, the existing file unchanged, nothing left behind. */
TEST(faults_enospc_gguf_output)
{
    char root[512], cfg[1024], out[1024], *log = NULL;
    scratch(root, sizeof root);
    snprintf(cfg, sizeof cfg, "%s/c.yml", root);
    CHECK_INT(test_write_text(cfg, "merge_method: passthrough\nmodels:\n  - model: tests/data/tiny-llama/base\n"), 0);
    snprintf(out, sizeof out, "%s/out.gguf", root);
    CHECK_INT(test_write_text(out, "old result"), 0);
    static const unsigned long long limits[] = {0, 100, 20000, 700000, 1580000};
    for (size_t i = 0; i < sizeof limits / sizeof *limits; i++) {
        char faults[64];
        snprintf(faults, sizeof faults, "ALLOY_FI_ENOSPC_AFTER=%llu", limits[i]);
        int rc = faulty_merge(root, faults, cfg, out, "--outtype f16", &log);
        CHECK_MSG(rc == 1, "%s: exit %d: %s", faults, rc, log);
        CHECK_MSG(test_count_lines(log, "alloy: error: ") == 1 && log && strstr(log, "No space left on device") &&
                  strstr(log, "/out.gguf.alloy-tmp-"), "%s: %s", faults, log);
        char *old = test_read_file(out, NULL);
        CHECK_MSG(old && strcmp(old, "old result") == 0, "%s: the existing output changed", faults);
        free(old);
        CHECK_MSG(test_leftovers(root) == 0, "%s: temporary file left behind", faults);
        free(log);
    }
}
