#!/bin/sh
# run.sh — build the libFuzzer targets and run each for a while.
#
#   sh fuzz/run.sh [SECONDS] [TARGET...]     fuzz each target SECONDS (default 30)
#   sh fuzz/run.sh replay TARGET FILE...     re-run inputs with the gcc + ASan build
#
# Targets are fuzz/fuzz_<name>.c (safetensors, index, json_stream, tokenizer, gguf, imatrix, pickle, torch_zip,
# llama_config, config, adapter_config, vocab, gguf_tokwrite, spm). Each is built with clang -fsanitize=fuzzer,address,
# undefined against the library sources compiled the same way (through the
# Makefile, in build-fuzz/), then run with the seed corpus fuzz/corpus/<name>/
# (read only; config also reads examples/) and a working corpus in
# build-fuzz/corpus/<name>/ that keeps what the fuzzer learns between runs.
# A crash, leak, timeout or sanitizer report stops the target, writes the
# input to build-fuzz/artifacts/<name>/ and makes the script exit 1 after the
# remaining targets ran. Keep each such input as tests/data/regress/<name>-<what>
# (tests/test_robust.c replays them all) once the bug is fixed.
#
# Environment: FUZZ_CC (default clang), FUZZ_JOBS (parallel workers per
# target through -fork, default 1), FUZZ_FLAGS (extra libFuzzer flags).
set -u
cd "$(dirname "$0")/.."

B=build-fuzz
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
# the library flags scripts/deps.sh found (it link-tests each, installing what is missing)
sh scripts/deps.sh build >/dev/null || exit 1
DEP_CFLAGS=$(sed -n 's/^DEP_CFLAGS = //p' build/config.mk)
DEP_LIBS=$(sed -n 's/^DEP_LIBS = //p' build/config.mk)
LIBS="$DEP_LIBS -lpthread -lm"
ARCHDEF=""
[ "$(uname -m)" = x86_64 ] && ARCHDEF=-DALLOY_HAVE_AVX2
TFLAGS="-std=c11 -D_GNU_SOURCE $ARCHDEF -g -O1 -Iinclude -Isrc $DEP_CFLAGS"

all_targets() {
  for f in fuzz/fuzz_*.c; do
    n=${f#fuzz/fuzz_}; n=${n%.c}
    [ "$n" = main ] || echo "$n"
  done
}

if [ "${1:-}" = replay ]; then
  [ $# -ge 3 ] || { echo "usage: sh fuzz/run.sh replay TARGET FILE..." >&2; exit 2; }
  t=$2; shift 2
  [ -f "fuzz/fuzz_$t.c" ] || { echo "fuzz/run.sh: no target fuzz/fuzz_$t.c" >&2; exit 2; }
  CC=${CC:-cc}
  make -s BUILD=build-asan OPT=-O1 EXTRA_CFLAGS="$SAN" LDFLAGS="-fsanitize=address,undefined" \
    build-asan/liballoy.a || exit 1
  $CC $TFLAGS $SAN -o "build-asan/replay_$t" fuzz/fuzz_main.c "fuzz/fuzz_$t.c" build-asan/liballoy.a $LIBS || exit 1
  exec "build-asan/replay_$t" "$@"
fi

secs=${1:-30}
[ $# -gt 0 ] && shift
targets=${*:-$(all_targets)}
FCC=${FUZZ_CC:-clang}
command -v "$FCC" >/dev/null 2>&1 || { echo "fuzz/run.sh: $FCC not found (make fuzz needs clang with libFuzzer)" >&2; exit 2; }

# The library, instrumented for coverage and sanitizers, in its own build folder.
make -s BUILD=$B CC="$FCC" OPT=-O1 EXTRA_CFLAGS="-fsanitize=fuzzer-no-link $SAN" $B/liballoy.a || exit 1

fork=""
[ "${FUZZ_JOBS:-1}" -gt 1 ] && fork="-fork=$FUZZ_JOBS"
failed=""
for t in $targets; do
  src=fuzz/fuzz_$t.c
  [ -f "$src" ] || { echo "fuzz/run.sh: no target $src" >&2; failed="$failed $t"; continue; }
  bin=$B/fuzz_$t
  $FCC $TFLAGS -fsanitize=fuzzer $SAN -o "$bin" "$src" $B/liballoy.a $LIBS || { failed="$failed $t"; continue; }
  mkdir -p "$B/corpus/$t" "$B/artifacts/$t" "fuzz/corpus/$t"
  seeds="fuzz/corpus/$t"
  [ "$t" = config ] && seeds="$seeds examples"
  echo "== fuzz $t for ${secs}s"
  # -max_len bounds the work per input; -timeout turns a hang into a failure;
  # -rss_limit_mb and -malloc_limit_mb turn an allocation driven by an
  # untrusted size into one.
  # shellcheck disable=SC2086
  "./$bin" -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    $fork -print_final_stats=1 \
    -artifact_prefix="$B/artifacts/$t/" ${FUZZ_FLAGS:-} "$B/corpus/$t" $seeds \
    > "$B/fuzz_$t.log" 2>&1
  rc=$?
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$B/fuzz_$t.log" | tr '\n' ' '
  echo
  if [ $rc -ne 0 ]; then
    echo "fuzz/run.sh: $t FAILED (exit $rc), see $B/fuzz_$t.log; inputs in $B/artifacts/$t/" >&2
    grep -E "ERROR:|SUMMARY:|runtime error" "$B/fuzz_$t.log" | head -5 >&2
    failed="$failed $t"
  fi
done
if [ -n "$failed" ]; then
  echo "fuzz/run.sh: failed:$failed" >&2
  exit 1
fi
echo "fuzz/run.sh: no crashes in: $(echo $targets)"
