#!/bin/sh
# bench/quant_vs_llama.sh — alloy's GGUF quantization against a real llama-quantize, same input, same machine.
#
# DESIGN
#   usage: sh bench/quant_vs_llama.sh [ALLOY_BINARY] [--size SIZE] [--types "q8_0 q4_0 q4_k_m q6_k"]
#   Optional: runs only when llama-quantize is found ($ALLOY_LLAMA_QUANTIZE, else on PATH); otherwise it
#   says so and exits 0 (`make bench` calls it). It never builds llama.cpp.
#   1. A synthetic Llama model (bench_gen, --size bytes of bf16, default 600M: embeddings, output and a few
#      layers) is converted once to an F32 GGUF with `alloy convert --outtype f32` (cached in bench/cache/).
#   2. For each type and for 1 thread and all threads: `llama-quantize IN OUT TYPE N` and
#      `alloy convert IN OUT --outtype TYPE --threads N`, each through bench_rss (wall seconds), best of
#      --repeat runs (default 2), page cache warm (the input is read once before each run).
#   3. Prints MB/s of F32 input for both and alloy's speed over llama-quantize's (>= 1: alloy as fast or
#      faster). That the bytes are the same is what tests/test_quantize.c pins (llama.cpp's golden files).
set -eu

ALLOY=build/alloy
SIZE=600M
TYPES="q8_0 q4_0 q4_k_m q6_k"
REPEAT=2
while [ $# -gt 0 ]; do
    case $1 in
    --size) SIZE=$2; shift ;;
    --types) TYPES=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    -*) echo "usage: sh bench/quant_vs_llama.sh [ALLOY_BINARY] [--size SIZE] [--types \"T...\"] [--repeat N]" >&2
        exit 2 ;;
    *) ALLOY=$1 ;;
    esac
    shift
done

LQ=${ALLOY_LLAMA_QUANTIZE:-$(command -v llama-quantize 2>/dev/null || true)}
if [ -z "$LQ" ] || [ ! -x "$LQ" ]; then
    echo "bench: llama-quantize not found (set ALLOY_LLAMA_QUANTIZE or put it on PATH): comparison skipped" >&2
    exit 0
fi
BENCH=$(cd "$(dirname "$0")" && pwd)
BIN=$(cd "$(dirname "$ALLOY")" && pwd)
CACHE=$BENCH/cache/llama-quantize
NPROC=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
CC=${CC:-cc}
mkdir -p "$CACHE"
[ -x "$BIN/bench_gen" ] || $CC -O2 -std=c11 -D_GNU_SOURCE -o "$BIN/bench_gen" "$BENCH/gen_model.c" -lm
[ -x "$BIN/bench_rss" ] || $CC -O2 -std=c11 -D_GNU_SOURCE -o "$BIN/bench_rss" "$BENCH/rss_run.c"

IN=$CACHE/in-f32.gguf
STAMP="$SIZE $(cksum < "$BENCH/gen_model.c")"
if [ ! -f "$IN" ] || [ "$(cat "$CACHE/.stamp" 2>/dev/null)" != "$STAMP" ]; then
    rm -rf "$CACHE/model" "$IN"
    "$BIN/bench_gen" "$CACHE/model" --size "$SIZE" >&2
    printf '%s\n' '{"added_tokens": [], "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"},
 "model": {"type": "BPE", "vocab": {}, "merges": []}}' > "$CACHE/model/tokenizer.json"
    "$ALLOY" convert "$CACHE/model" "$IN" --outtype f32 -q
    printf '%s' "$STAMP" > "$CACHE/.stamp"
fi
INB=$(wc -c < "$IN" | tr -d ' ')

kv() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# best_wall CMD...: the best wall seconds of REPEAT runs of CMD (input warmed before each)
best_wall() {
    best=""
    i=0
    while [ "$i" -lt "$REPEAT" ]; do
        cat "$IN" > /dev/null
        line=$("$BIN/bench_rss" -- "$@" 2>"$CACHE/stderr.txt" | tail -n 1)
        [ "$(kv "$line" status)" = 0 ] || { echo "bench: failed: $*: $(tail -n 2 "$CACHE/stderr.txt")" >&2; return 1; }
        w=$(kv "$line" wall_s)
        if [ -z "$best" ] || awk "BEGIN{exit !($w < $best)}"; then best=$w; fi
        i=$((i + 1))
    done
    echo "$best"
}
printf '\nllama-quantize comparison: %s (%s bytes F32 GGUF), %s\n' "$LQ" "$INB" "$(date -u '+%Y-%m-%d %H:%M UTC')"
printf '%-8s %7s %14s %14s %8s\n' type threads "llama MB/s" "alloy MB/s" "alloy/llama"
for t in $TYPES; do
    for th in 1 "$NPROC"; do
        LT=$(printf '%s' "$t" | tr 'a-z' 'A-Z')
        wl=$(best_wall "$LQ" "$IN" "$CACHE/llama.gguf" "$LT" "$th") || continue
        wa=$(best_wall "$ALLOY" convert "$IN" "$CACHE/alloy.gguf" --outtype "$t" --threads "$th" -q) || continue
        awk -v t="$t" -v th="$th" -v b="$INB" -v l="$wl" -v a="$wa" \
            'BEGIN{printf "%-8s %7d %14.1f %14.1f %8.2f\n", t, th, b/1e6/l, b/1e6/a, l/a}'
        [ "$th" = 1 ] && [ "$NPROC" = 1 ] && break
    done
done
rm -f "$CACHE/llama.gguf" "$CACHE/alloy.gguf"
