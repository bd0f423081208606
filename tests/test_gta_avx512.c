/*
 * test_gta_avx512.c — the task-arithmetic family's chunk loops in every
 * kernel table the CPU has (src/kernels/: the AVX2 build, the fused
 * AVX-512 loops of gta_avx512.c) against the scalar table's, bit for bit,
 * on float32 and on bfloat16 inputs taken raw.
 */
#include "test.h"
#include "alloy.h"
#include "methods/method.h"
#include "methods/gta.h"
#include "kernels/kernels.h"
#include "gta_case.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static float bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* Every kernel table's chunk loops (the AVX-512 one with its fused L1-pass and apply loops) give the
 * scalar table's bits: random and della methods, with and without consensus, rows that are and are
 * not multiples of the fused block, several chunkings and thread counts, a model at full density (not
 * sparse) and one at zero (no keep bits: its apply path is not fused), bfloat16-like and float32 data.
 * bfloat16 data also runs as stored values (alloy_method_run_memory_bf16: taken raw where gta_takes_bf16
 * allows, the off-path blocks widened in gta_loops.h), again with the same bits. */
TEST(gta_kernel_tables_match_scalar)
{
    static const char *methods[] = {"dare_ties", "dare_linear", "della", "della_linear"};
    static const struct { uint64_t rows, cols; } shapes[] = {{64, 256}, {6, 2048}, {9, 200}, {40, 96}, {1, 3000}};
    static const uint64_t chunks[] = {0, 640, 4096 + 16};
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        const size_t R = shapes[sh].rows, C = shapes[sh].cols, N = R * C;
        for (int bf = 0; bf < 2; bf++) {
            float **in = malloc(4 * sizeof *in);
            for (int i = 0; i < 4; i++) in[i] = malloc(N * sizeof(float));
            for (size_t e = 0; e < N; e++) {
                float base = (float)(urand() - 0.5) * 0.05f;
                in[0][e] = bf ? bf16_round(base) : base;
                for (int i = 1; i < 4; i++) {
                    float v = base + (float)(urand() - 0.5) * 0.002f;
                    in[i][e] = bf ? bf16_round(v) : v;
                }
            }
            float *want = malloc(N * sizeof *want), *got = malloc(N * sizeof *got);
            uint16_t *in16[4];
            for (int i = 0; i < 4; i++) {
                in16[i] = malloc(N * sizeof *in16[i]);
                for (size_t e = 0; e < N; e++) {
                    uint32_t u;
                    memcpy(&u, &in[i][e], 4);
                    in16[i][e] = (uint16_t)(u >> 16);
                }
            }
            for (size_t mi = 0; mi < sizeof methods / sizeof methods[0]; mi++)
                for (int variant = 0; variant < 2; variant++) {
                    struct gcase k;
                    gcase_init(&k, methods[mi], 4, 0, R, C);
                    k.w[1] = 0.5; k.w[2] = 0.7; k.w[3] = 0.3;
                    k.density[1] = 0.5; k.density[2] = 0.3; k.density[3] = variant ? 0.0 : 1.0;
                    if (!strncmp(methods[mi], "della", 5)) k.extra[1] = k.extra[2] = k.extra[3] = 0.1;
                    k.seed = 11 + (uint64_t)variant;
                    for (size_t ci = 0; ci < sizeof chunks / sizeof chunks[0]; ci++) {
                        struct alloy_err err = {0};
                        k.kernels = alloy_kernels_isa(ALLOY_ISA_SCALAR);
                        CHECK_INT(run_case(&k, (const float *const *)in, want, 1, chunks[ci], &err), ALLOY_OK);
                        for (int isa = 0; isa < ALLOY_ISA_COUNT; isa++) {
                            if (!(k.kernels = alloy_kernels_isa(isa))) continue;
                            CHECK_INT(run_case(&k, (const float *const *)in, got, 2, chunks[ci], &err), ALLOY_OK);
                            size_t bad = 0;
                            for (size_t e = 0; e < N; e++) bad += memcmp(&want[e], &got[e], 4) != 0;
                            CHECK_MSG(bad == 0, "%s %s %zux%zu %s variant %d chunk %llu: %zu of %zu outputs differ",
                                      k.kernels->isa, methods[mi], R, C, bf ? "bf16" : "f32", variant,
                                      (unsigned long long)chunks[ci], bad, N);
                            if (!bf) continue;
                            CHECK_INT(run_case_in(&k, NULL, (const uint16_t *const *)in16, got, 2, chunks[ci], &err),
                                      ALLOY_OK);
                            bad = 0;
                            for (size_t e = 0; e < N; e++) bad += memcmp(&want[e], &got[e], 4) != 0;
                            CHECK_MSG(bad == 0, "%s %s %zux%zu raw bf16 variant %d chunk %llu: %zu of %zu differ",
                                      k.kernels->isa, methods[mi], R, C, variant, (unsigned long long)chunks[ci], bad,
                                      N);
                        }
                    }
                }
            free(want);
            free(got);
            for (int i = 0; i < 4; i++) free(in16[i]);
            free_inputs(in, 4);
        }
    }
}
