/*
 * dequant.c — dequantization throughput of every GGUF block type alloy
 * reads (the dtype table's to_f32 rows, src/quant/dequant.c), one thread.
 *
 *   cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude bench/dequant.c build/liballoy.a \
 *      $(sed -n 's/^DEP_LIBS = //p' build/config.mk) -lpthread -lm -o build/bench_dequant
 *   build/bench_dequant [MiB of float32 output per type, default 256]
 *
 * Each type converts a 1 MiB-float buffer of random blocks (fp16 scales
 * kept finite) in a loop until the asked output size is reached; it prints
 * the output rate (MB/s of float32) and the input rate (MB/s of blocks).
 */
#include "alloy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    size_t total_mib = argc > 1 ? (size_t)atol(argv[1]) : 256;
    const size_t n = 1 << 18; /* elements per call: 1 MiB of float32 */
    float *out = malloc(n * sizeof *out);
    uint8_t *in = malloc(n * 2);
    if (!out || !in) return 1;
    srand(1);
    printf("%-6s %12s %12s\n", "type", "out MB/s", "in MB/s");
    for (int t = ALLOY_DTYPE_FIRST_QUANT; t < ALLOY_DTYPE_COUNT; t++) {
        const struct alloy_dtype_traits *tr = alloy_dtype_traits((enum alloy_dtype)t);
        uint64_t nb;
        alloy_dtype_nbytes((enum alloy_dtype)t, n, &nb);
        for (uint64_t i = 0; i < nb; i++) in[i] = (uint8_t)rand();
        for (uint64_t i = 0; i + 1 < nb; i += 2) in[i + 1] &= 0x3b; /* every 16-bit word a finite fp16 */
        size_t reps = total_mib;
        double t0 = now();
        for (size_t r = 0; r < reps; r++) alloy_to_f32((enum alloy_dtype)t, in, out, n);
        double s = now() - t0;
        printf("%-6s %12.0f %12.0f\n", tr->name, (double)(reps * n * 4) / s / 1e6, (double)(reps * nb) / s / 1e6);
    }
    free(out);
    free(in);
    return 0;
}
