/*
 * rss_run.c — runs one command and reports its wall time and peak memory.
 *
 * DESIGN
 *   `bench_rss [--pty] [--drop-caches] -- CMD ARGS...` forks, execs CMD and
 *   waits for it with wait4(), whose rusage gives the child's peak resident
 *   set (ru_maxrss, KiB: anonymous memory plus mapped file pages it had
 *   resident) and its user/system CPU time. Wall time is measured around
 *   fork..wait4 with CLOCK_MONOTONIC, so it includes exec and exit.
 *   --pty gives the child a pseudo-terminal as stdout and stderr (so alloy
 *   draws its progress bar, as for a user at a terminal); the parent drains
 *   and counts what it writes (the child's new session gets the caller's
 *   autogroup nice value, so it is scheduled like a run without --pty).
 *   --drop-caches syncs and empties the page
 *   cache first (root only; fails loudly otherwise), for cold-cache runs.
 *   Output: one line of `key=value` pairs on stdout:
 *     status=0 wall_s=1.234567 maxrss_kib=12345 user_s=1.10 sys_s=0.20 pty_bytes=0
 *   status is the exit status, or 128 + signal.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int drop_caches(void)
{
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd < 0) return -1;
    int ok = write(fd, "3\n", 2) == 2;
    close(fd);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    int use_pty = 0, drop = 0, i = 1;
    for (; i < argc && strcmp(argv[i], "--"); i++) {
        if (!strcmp(argv[i], "--pty")) use_pty = 1;
        else if (!strcmp(argv[i], "--drop-caches")) drop = 1;
        else break;
    }
    if (i >= argc || strcmp(argv[i], "--") || i + 1 >= argc) {
        fprintf(stderr, "usage: bench_rss [--pty] [--drop-caches] -- CMD ARGS...\n");
        return 2;
    }
    char **cmd = argv + i + 1;
    if (drop && drop_caches() != 0) {
        fprintf(stderr, "bench_rss: cannot drop the page cache: %s\n", strerror(errno));
        return 3;
    }
    int master = -1;
    const char *slave_name = NULL;
    if (use_pty) {
        master = posix_openpt(O_RDWR | O_NOCTTY);
        if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0 || !(slave_name = ptsname(master))) {
            fprintf(stderr, "bench_rss: cannot open a pseudo-terminal: %s\n", strerror(errno));
            return 3;
        }
    }
    /* setsid() below starts a new autogroup; give it the caller's autogroup nice value so that
       --pty runs are scheduled like the others (best effort: needs root to raise it) */
    int ag_nice = 0, have_ag = 0;
    FILE *ag = use_pty ? fopen("/proc/self/autogroup", "r") : NULL;
    if (ag) {
        have_ag = fscanf(ag, "%*s nice %d", &ag_nice) == 1;
        fclose(ag);
    }
    double t0 = now();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "bench_rss: fork failed: %s\n", strerror(errno));
        return 3;
    }
    if (pid == 0) {
        if (use_pty) {
            setsid();
            if (have_ag && (ag = fopen("/proc/self/autogroup", "w"))) {
                fprintf(ag, "%d\n", ag_nice);
                fclose(ag);
            }
            int s = open(slave_name, O_RDWR);
            if (s < 0) _exit(126);
            dup2(s, 1);
            dup2(s, 2);
            if (s > 2) close(s);
            close(master);
        }
        execvp(cmd[0], cmd);
        fprintf(stderr, "bench_rss: cannot run %s: %s\n", cmd[0], strerror(errno));
        _exit(127);
    }
    unsigned long long pty_bytes = 0;
    if (use_pty) {
        /* drain until the child closes the terminal (EIO once no slave is open) */
        char buf[4096];
        for (;;) {
            ssize_t r = read(master, buf, sizeof buf);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            pty_bytes += (unsigned long long)r;
        }
    }
    int st = 0;
    struct rusage ru;
    while (wait4(pid, &st, 0, &ru) < 0) {
        if (errno != EINTR) {
            fprintf(stderr, "bench_rss: wait4 failed: %s\n", strerror(errno));
            return 3;
        }
    }
    double wall = now() - t0;
    if (master >= 0) close(master);
    int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    printf("status=%d wall_s=%.6f maxrss_kib=%ld user_s=%.3f sys_s=%.3f pty_bytes=%llu\n", status, wall, ru.ru_maxrss,
           (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6,
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6, pty_bytes);
    return 0;
}
