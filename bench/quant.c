/*
 * quant.c — quantization throughput of every GGUF block type (src/quant:
 * the bit-exact reference quantizers), on one thread and on all threads.
 * `make bench` builds and runs it before bench/run.sh.
 *
 *   build/bench_quant [MiB of float32 input per type and thread count, default 64]
 *
 * Input: 4096-column rows of gaussian-like values (sum of uniforms), the
 * shape of a transformer weight. Each thread quantizes its own rows with
 * alloy_quantize_rows (finite check included) until the asked input size is
 * reached; the rate is MB/s of float32 input (10^6 bytes), best of 3 runs.
 * The imatrix rows use the Q4_K imatrix variant with positive weights.
 */
#include "alloy.h"
#include "quant/quantize.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { COLS = 4096, ROWS = 64 }; /* one 1 MiB chunk of float32 per call */

struct job {
    enum alloy_dtype t;
    const float *x, *w;
    uint8_t *q;
    size_t calls;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *run(void *arg)
{
    struct job *j = arg;
    struct alloy_err err = {0};
    for (size_t c = 0; c < j->calls; c++)
        if (alloy_quantize_rows(j->t, j->x, j->q, ROWS, COLS, j->w, "bench", "x", &err)) abort();
    return NULL;
}

/* MB/s of float32 input for type t on nthreads threads, total_mib per thread count. */
static double rate(enum alloy_dtype t, const float *x, const float *w, uint8_t *q, int nthreads, size_t total_mib)
{
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        pthread_t th[256];
        struct job jobs[256];
        size_t calls = total_mib / (size_t)nthreads ? total_mib / (size_t)nthreads : 1;
        double t0 = now();
        for (int i = 0; i < nthreads; i++) {
            jobs[i] = (struct job){t, x, w, q + (size_t)i * ROWS * COLS * 2, calls};
            if (pthread_create(&th[i], NULL, run, &jobs[i])) abort();
        }
        for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
        double mbs = (double)calls * nthreads * ROWS * COLS * 4 / 1e6 / (now() - t0);
        if (mbs > best) best = mbs;
    }
    return best;
}

int main(int argc, char **argv)
{
    size_t total_mib = argc > 1 ? (size_t)atol(argv[1]) : 64;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nthreads = ncpu < 1 ? 1 : ncpu > 256 ? 256 : (int)ncpu;
    float *x = malloc((size_t)ROWS * COLS * sizeof *x), *w = malloc(COLS * sizeof *w);
    uint8_t *q = malloc((size_t)nthreads * ROWS * COLS * 2);
    if (!x || !w || !q) return 1;
    srand(1);
    for (size_t i = 0; i < (size_t)ROWS * COLS; i++) {
        float s = 0;
        for (int k = 0; k < 4; k++) s += (float)rand() / RAND_MAX - 0.5f;
        x[i] = 0.02f * s;
    }
    for (int i = 0; i < COLS; i++) w[i] = 0.1f + (float)rand() / RAND_MAX;
    printf("quantization, MB/s of float32 input (%d x %d rows, %zu MiB per measurement)\n", ROWS, COLS, total_mib);
    printf("%-14s %12s %12s\n", "type", "1 thread", "threads");
    printf("%-14s %12s %12d\n", "", "", nthreads);
    for (int t = ALLOY_DTYPE_FIRST_QUANT; t <= ALLOY_DTYPE_COUNT; t++) {
        const int im = t == ALLOY_DTYPE_COUNT; /* the last row: Q4_K with an imatrix */
        enum alloy_dtype d = im ? ALLOY_DTYPE_Q4_K : (enum alloy_dtype)t;
        char name[32];
        snprintf(name, sizeof name, "%s%s", alloy_dtype_traits(d)->name, im ? " imatrix" : "");
        double r1 = rate(d, x, im ? w : NULL, q, 1, total_mib);
        double rn = rate(d, x, im ? w : NULL, q, nthreads, total_mib);
        printf("%-14s %12.1f %12.1f\n", name, r1, rn);
        fflush(stdout);
    }
    free(x);
    free(w);
    free(q);
    return 0;
}
