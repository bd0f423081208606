/*
 * rng.c — a counter-based random generator for the random merge methods.
 *
 * DESIGN
 *   Random methods (DARE, DELLA, arcee_fusion sampling) must give the same
 *   bits for any thread count and chunking, so a draw is a pure function of
 *   (key, counter): key = hash(seed, tensor name, stream), counter = element
 *   index. A draw is SplitMix64's output at position `counter` of a stream
 *   seeded with key whose Weyl increment (gamma) is also derived from the
 *   key, as Java's SplittableRandom does for split streams: one finalizer
 *   per 64-bit draw (a bijection of the counter for a fixed key; SplitMix64
 *   passes BigCrush), and streams of different keys are not shifted copies
 *   of one sequence. (Until 2026-11 a draw took two finalizer rounds; the
 *   draws, and so DARE/DELLA outputs for a seed, changed then.)
 */
#include "core/internal.h"

#define mix64 alloy_rng_mix64

uint64_t alloy_rng_key(uint64_t seed, const char *name, uint64_t stream)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a over the name */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    return mix64(mix64(seed ^ 0x9e3779b97f4a7c15ull) ^ h ^ mix64(stream + 0x632be59bd9b4e019ull));
}

/* alloy_rng_u64 is inline in core/internal.h. */
