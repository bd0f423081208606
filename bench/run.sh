#!/bin/sh
# bench/run.sh — alloy's throughput and memory benchmark (`make bench`).
#
# DESIGN
#   usage: sh bench/run.sh [ALLOY_BINARY] [options]        (bench/README.md)
#   1. Builds the three helpers (bench_gen, bench_limits, bench_rss) next to
#      the alloy binary and snapshots the binary, so a rebuild in the tree
#      during the run cannot mix two versions.
#   2. Generates (once; cached under bench/cache/, keyed by the generator's
#      arguments and source) a base model and two fine-tunes in Hugging Face
#      layout; the second fine-tune is sharded, to exercise the index path.
#   3. Measures on the same files the machine's limit for 2 and 3 models:
#      read every input once + write and fsync one output of a model's size
#      (plain read()/write(), bench/limits.c), and the memory bandwidth.
#   4. Runs `alloy merge` for each config in bench/configs/ with 2 and 3
#      models, through bench_rss (fork/exec/wait4: wall time and peak RSS).
#      A method alloy does not know yet is reported "n/a", not an error.
#   5. Thread scaling (linear, ties: 1..N threads), the progress bar's cost
#      (on a pseudo-terminal vs -q), cold cache (when the page cache can be
#      dropped: root only), the big-tensor memory run (one 512 MiB F32
#      tensor per model, linear and ties, peak RSS must stay <= 256 MiB), and
#      planning: `alloy merge --dry-run` of two sharded models of 10^6
#      one-element tensors each (10^5 with --quick): seconds, and peak RSS
#      per byte of safetensors header and index read.
#   5b. GGUF output (linear, 2 models, the same configs): `alloy merge CFG
#      out.gguf --outtype q4_k_m` in one pass against the two-step path,
#      `alloy merge CFG out/` then `alloy convert out/ out.gguf --outtype
#      q4_k_m`; the two-step row's verdict is its time over the one-pass
#      time. The bench models have no vocabulary: a tokenizer.json without
#      tokens (a byte-level BPE; every id becomes an unused [PADn] token) is
#      written into the base folder for it.
#   6. Prints the table and writes bench/results/<date>.json.
#   7. The SVD of `alloy lora extract` against mergekit's full SVD per module
#      (bench/lora_svd.c, linked against the liballoy.a next to the binary;
#      one Llama layer, hidden 2048 / intermediate 8192, 1024 / 4096 with
#      --quick): seconds, ratio and alloy's error over the optimum, printed
#      after the table.
#   Everything runs in --repeat rounds and each measurement keeps its best
#   (lowest) time, so a passing disturbance spoils one round, not a row; a
#   merge slower than 10x its limit runs in the first round only. The load
#   average is recorded with every row, since other work skews the numbers.
#   Ratio = limit seconds / alloy seconds for the same inputs and cache state
#   (1.0 = as fast as moving the bytes once).
set -eu

usage() {
    cat <<'EOF'
usage: sh bench/run.sh [ALLOY_BINARY] [options]
  --quick            ~50 MB models, no big-tensor run (smoke test, well under a minute)
  --size SIZE        bytes per model (default 470M; k/M/G = 10^3/10^6/10^9)
  --repeat N         N rounds, each measurement keeps its best (default 3; a merge slower
                     than 10x its limit runs once: noise cannot change its verdict)
  --methods "A B"    only these configs (names in bench/configs/)
  --threads "1 2"    thread counts for the scaling runs (default 1..nproc)
  --no-scaling --no-cold --no-big --no-progress --no-plan --no-gguf   skip those parts
  --big              run the big-tensor memory run even with --quick
  --keep             keep the merged output folders (bench/cache/work/)
  --no-nice          do not raise the benchmark's priority (default when root: nice -10 and
                     autogroup nice -10, so other work on the machine disturbs the timings less)
  --json FILE        where to write the results (default bench/results/<date>.json)
EOF
}

# Run at a higher priority when allowed: on a shared machine, other work otherwise decides the timings.
if [ "$(id -u)" = 0 ] && [ -z "${ALLOY_BENCH_NICED:-}" ]; then
    case " $* " in
    *" --no-nice "*) ;;
    *) ALLOY_BENCH_NICED=1 exec nice -n -10 sh "$0" "$@" ;;
    esac
fi

ARGS="$*"
ALLOY=build/alloy
case "${1:-}" in -*|"") ;; *) ALLOY=$1; shift ;; esac
QUICK=0 SIZE=470M REPEAT=3 METHODS="" THREADS="" SCALING=1 COLD=1 BIG=1 PROGRESS=1 KEEP=0 JSON="" BIG_FORCE=0 NICE=1
PLAN=1 LORA=1 GGUF=1
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --size) SIZE=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --methods) METHODS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --no-scaling) SCALING=0 ;;
    --no-cold) COLD=0 ;;
    --no-big) BIG=0 ;;
    --no-lora) LORA=0 ;;
    --big) BIG_FORCE=1 ;;
    --no-progress) PROGRESS=0 ;;
    --no-plan) PLAN=0 ;;
    --no-gguf) GGUF=0 ;;
    --keep) KEEP=1 ;;
    --no-nice) NICE=0 ;;
    --json) JSON=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[ "$QUICK" = 1 ] && [ "$BIG_FORCE" = 0 ] && BIG=0
PRIO="normal priority"
if [ "${ALLOY_BENCH_NICED:-}" = 1 ]; then
    PRIO="nice -10"
    # With autogroup scheduling, nice only ranks processes inside one session; the session's own
    # weight is /proc/self/autogroup. Raise it for the run and put it back afterwards.
    AG=$(sed -n 's/.* nice *//p' /proc/self/autogroup 2>/dev/null || true)
    if [ -n "$AG" ] && echo -10 2>/dev/null > /proc/self/autogroup; then
        trap 'echo "$AG" > /proc/self/autogroup 2>/dev/null || true' EXIT
        trap 'exit 130' INT TERM
        PRIO="nice -10, autogroup nice -10"
    fi
fi

BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH")
[ -x "$ALLOY" ] || { echo "bench: $ALLOY is not an executable (run make first)" >&2; exit 1; }
BIN=$(cd "$(dirname "$ALLOY")" && pwd)
CACHE=$BENCH/cache
WORK=$CACHE/work
NPROC=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
CC=${CC:-cc}
mkdir -p "$WORK" "$BENCH/results"
rm -rf "$WORK/out" "$WORK"/*.yml
: > "$WORK/rows.tsv"
: > "$WORK/once.txt"
: > "$WORK/limits.txt"

# ------------------------------------------------------------ helpers

build_tool() { # name source [libs]
    if [ ! -x "$BIN/$1" ] || [ "$BENCH/$2" -nt "$BIN/$1" ]; then
        $CC -O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -o "$BIN/$1" "$BENCH/$2" ${3:-}
    fi
}
build_tool bench_gen gen_model.c -lm
build_tool bench_limits limits.c -lpthread
build_tool bench_rss rss_run.c
cp "$ALLOY" "$WORK/alloy"
ALLOY_VERSION=$("$WORK/alloy" --version 2>/dev/null || echo unknown)
GIT_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)

loadavg() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?"; }
loadavg1() { cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0; }
LOAD_START=$(loadavg)

# Generates model folder $1 with bench_gen arguments $2..., unless the cached one has the same stamp.
gen_model() {
    dir=$1; shift
    stamp="$* $(cksum < "$BENCH/gen_model.c")"
    if [ -f "$dir/.bench-stamp" ] && [ "$(cat "$dir/.bench-stamp")" = "$stamp" ]; then return 0; fi
    "$BIN/bench_gen" "$dir" "$@"
    printf '%s' "$stamp" > "$dir/.bench-stamp"
}

st_files() { # every safetensors file of the model folders given
    for d in "$@"; do ls "$d"/*.safetensors; done
}
st_bytes() {
    # shellcheck disable=SC2046
    cat $(st_files "$@") | wc -c | tr -d ' '
}
warm() { cat $(st_files "$@") > /dev/null; }

# value of key $2 in a "k=v k=v" line $1
kv() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# value of numeric key $2 in a one-line JSON object $1
jv() { printf '%s\n' "$1" | tr ',{}' '\n\n\n' | sed -n "s/^ *\"$2\": *//p"; }

# row: kind method models threads cache bytes_in bytes_out seconds rss_kib status note limit_s cpu_s load
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$WORK/rows.tsv"; }

# measure_limit BYTES_OUT cold(0|1) MODEL_DIRS... -> LIMIT_S, LIMIT_JSON (best of REPEAT)
measure_limit() {
    lout=$1 lcold=$2; shift 2
    best="" LIMIT_JSON=""
    i=0
    while [ $i -lt "$REPEAT" ]; do
        if [ "$lcold" = 1 ]; then
            "$BIN/bench_rss" --drop-caches -- "$BIN/bench_limits" --bw-mib 0 --write-dir "$WORK" \
                --write-bytes "$lout" $(st_files "$@") > "$WORK/limit.json"
            j=$(grep "^{" "$WORK/limit.json")
        else
            warm "$@"
            j=$("$BIN/bench_limits" --bw-mib 0 --write-dir "$WORK" --write-bytes "$lout" $(st_files "$@"))
        fi
        s=$(jv "$j" limit_s)
        if [ -z "$best" ] || awk "BEGIN{exit !($s < $best)}"; then best=$s LIMIT_JSON=$j; fi
        i=$((i + 1))
    done
    LIMIT_S=$best
}

# limit_row KEY CACHE(hot|cold) BYTES_OUT MODEL_DIRS... : measures and appends a limit row; merges
# refer to it by KEY, and their ratio uses the best limit row of that KEY
limit_row() {
    key=$1 lcache=$2 lout=$3; shift 3
    lc=0; [ "$lcache" = cold ] && lc=1
    measure_limit "$lout" "$lc" "$@"
    echo "$key $LIMIT_S" >> "$WORK/limits.txt"
    row limit "read+write+fsync" $# - "$lcache" "$(st_bytes "$@")" "$lout" "$LIMIT_S" 0 ok "$LIMIT_JSON" "$key" 0 \
        "$(loadavg1)"
    echo "  $key: ${LIMIT_S}s  (read $(jv "$LIMIT_JSON" read_s)s, write $(jv "$LIMIT_JSON" write_s)s, fsync $(jv "$LIMIT_JSON" fsync_s)s)" >&2
}

# config TEMPLATE NMODELS DTYPE BASE M1 M2 -> path of the instantiated config, or "" if n/a
make_config() {
    tpl=$BENCH/configs/$1.yml n=$2
    grep -q "^# bench-models:.*$n" "$tpl" || { echo ""; return 0; }
    cfg=$WORK/$1-$n-$3.yml
    if [ "$n" = 2 ]; then drop='#3'; else drop='#2'; fi
    sed -e "/$drop\$/d" -e 's/ *#[23]$//' -e "s|@BASE@|$4|g" -e "s|@M1@|$5|g" -e "s|@M2@|$6|g" \
        -e "s|@DTYPE@|$3|g" "$tpl" > "$cfg"
    echo "$cfg"
}

# limit_of KEY: the best limit measured so far for KEY
limit_of() { awk -v k="$1" '$1 == k && (m == "" || $2 < m) { m = $2 } END { print (m == "" ? 0 : m) }' "$WORK/limits.txt"; }

# run_merge KIND METHOD CONFIG NMODELS THREADS CACHE(hot|cold) BYTES_IN LIMIT_KEY [pty|quiet]: one run,
# one row (the report keeps the best of the rounds). A config that took more than 10x its limit is
# not run again in later rounds: noise cannot change its verdict. The model folders of the config
# are read just before each hot run: this machine may page out file pages idle for a minute (DAMON),
# and "hot" must mean hot.
run_merge() {
    kind=$1 method=$2 cfg=$3 n=$4 th=$5 cache=$6 bin=$7 lim=$8 pty=${9:-}
    id="$kind/$method/$n/$th/$cache/$pty"
    grep -qxF "$id" "$WORK/once.txt" && return 0
    if [ -z "$cfg" ]; then
        row "$kind" "$method" "$n" "$th" "$cache" "$bin" 0 0 0 n/a "method takes other model counts" "$lim" 0 "$(loadavg1)"
        echo "$id" >> "$WORK/once.txt"
        return 0
    fi
    status=ok note="" cpu=0 load=$(loadavg1) w=0 rss=0
    dirs=$(sed -n 's/^ *- model: *//p; s/^base_model: *//p' "$cfg" | sort -u)
    rm -rf "$WORK/out"
    # shellcheck disable=SC2086
    [ "$cache" = hot ] && warm $dirs
    flags="-q" ropt=""
    [ "$pty" = pty ] && flags="" && ropt="--pty"
    [ "$cache" = cold ] && ropt="$ropt --drop-caches"
    # shellcheck disable=SC2086
    line=$("$BIN/bench_rss" $ropt -- "$WORK/alloy" merge "$cfg" "$WORK/out" $flags --threads "$th" \
           --random-seed 1 2>"$WORK/stderr.txt" | tail -n 1)
    st=$(kv "$line" status)
    if [ "$st" != 0 ]; then
        note=$(grep -m1 'error' "$WORK/stderr.txt" | cut -c1-160 || true)
        case "$note" in *"unknown"*method*|*method*unknown*|*"not a merge method"*) status=n/a ;; *) status=fail ;; esac
        [ -n "$note" ] || note="exit status $st"
        echo "$id" >> "$WORK/once.txt"
    else
        w=$(kv "$line" wall_s) rss=$(kv "$line" maxrss_kib)
        cpu=$(awk "BEGIN{print $(kv "$line" user_s) + $(kv "$line" sys_s)}")
        [ "$pty" = pty ] && note="progress bar on a pseudo-terminal ($(kv "$line" pty_bytes) bytes drawn)"
        [ "$pty" = quiet ] && note="-q (no progress bar)"
        awk "BEGIN{exit !($w > 10 * $(limit_of "$lim"))}" && echo "$id" >> "$WORK/once.txt"
    fi
    bout=0
    [ "$status" = ok ] && bout=$(cat "$WORK"/out/*.safetensors | wc -c | tr -d ' ')
    [ "$KEEP" = 1 ] && [ "$status" = ok ] && rm -rf "$WORK/out-$method-$n-$th-$cache" &&
        mv "$WORK/out" "$WORK/out-$method-$n-$th-$cache"
    rm -rf "$WORK/out"
    row "$kind" "$method" "$n" "$th" "$cache" "$bin" "$bout" "$w" "$rss" "$status" "$note" "$lim" "$cpu" "$load"
    printf '  %-16s %s models  %2s threads  %-4s  %s\n' "$method" "$n" "$th" "$cache" \
        "$( [ "$status" = ok ] && echo "${w}s (cpu ${cpu}s)  $((rss / 1024)) MiB" || echo "$status: $note")" >&2
}

# ------------------------------------------------------------ models

if [ "$QUICK" = 1 ]; then
    PROFILE=quick GEN="--quick" SHARD=30M
else
    PROFILE=size-$SIZE GEN="--size $SIZE"
    SHARD=$(awk -v s="$SIZE" 'BEGIN{m=1; if (s~/[kK]$/) m=1e3; else if (s~/M$/) m=1e6; else if (s~/G$/) m=1e9;
                                  sub(/[kKMG]$/, "", s); printf "%d", s*m/2 + 1}')
fi
MD=$CACHE/models/$PROFILE
mkdir -p "$MD"
echo "bench: models ($PROFILE) in $MD" >&2
# shellcheck disable=SC2086
gen_model "$MD/base" $GEN --variant 0
# shellcheck disable=SC2086
gen_model "$MD/ft1" $GEN --variant 1
# shellcheck disable=SC2086
gen_model "$MD/ft2" $GEN --variant 2 --shard-size "$SHARD"
B2="$MD/base $MD/ft1"
B3="$MD/base $MD/ft1 $MD/ft2"
# shellcheck disable=SC2086
IN2=$(st_bytes $B2) IN3=$(st_bytes $B3) OUT1=$(st_bytes "$MD/base")

# ------------------------------------------------------------ limits

echo "bench: limits (read every input once + write and fsync one output, plain read/write)" >&2
BW=$("$BIN/bench_limits" --bw-mib 256 --threads "$NPROC")
MEMBW1=$(jv "$BW" membw_1t_gbps) MEMBWN=$(jv "$BW" membw_gbps)
echo "  memory copy: $MEMBW1 GB/s (1 thread), $MEMBWN GB/s ($NPROC threads)" >&2
# shellcheck disable=SC2086
limit_row hot2 hot "$OUT1" $B2
# shellcheck disable=SC2086
limit_row hot3 hot "$OUT1" $B3

# ------------------------------------------------------------ methods

if [ -z "$METHODS" ]; then
    METHODS="linear task_arithmetic ties dare_ties slerp breadcrumbs della model_stock"
fi
ROUNDS=$(awk -v r="$REPEAT" 'BEGIN { for (i = 1; i <= r; i++) printf "%d ", i }')
for round in $ROUNDS; do
    echo "bench: methods, round $round of $REPEAT (hot cache, $NPROC threads)" >&2
    for m in $METHODS; do
        [ -f "$BENCH/configs/$m.yml" ] || { echo "bench: no config bench/configs/$m.yml" >&2; exit 2; }
        for n in 2 3; do
            cfg=$(make_config "$m" "$n" bfloat16 "$MD/base" "$MD/ft1" "$MD/ft2")
            if [ "$n" = 2 ]; then run_merge method "$m" "$cfg" 2 "$NPROC" hot "$IN2" hot2
            else run_merge method "$m" "$cfg" 3 "$NPROC" hot "$IN3" hot3; fi
        done
    done
done

if [ "$PROGRESS" = 1 ]; then
    echo "bench: progress bar cost (linear, 3 models)" >&2
    cfg=$(make_config linear 3 bfloat16 "$MD/base" "$MD/ft1" "$MD/ft2")
    for round in $ROUNDS; do
        run_merge progress linear "$cfg" 3 "$NPROC" hot "$IN3" hot3 quiet
        run_merge progress linear "$cfg" 3 "$NPROC" hot "$IN3" hot3 pty
    done
fi

if [ "$SCALING" = 1 ]; then
    if [ -z "$THREADS" ]; then
        THREADS=1 t=2
        while [ $t -lt "$NPROC" ]; do THREADS="$THREADS $t"; t=$((t * 2)); done
        [ "$NPROC" -gt 1 ] && THREADS="$THREADS $NPROC"
    fi
    echo "bench: thread scaling ($THREADS)" >&2
    for round in $ROUNDS; do
        for m in linear ties; do
            cfg=$(make_config "$m" 3 bfloat16 "$MD/base" "$MD/ft1" "$MD/ft2")
            for t in $THREADS; do run_merge scaling "$m" "$cfg" 3 "$t" hot "$IN3" hot3; done
        done
    done
fi

COLD_NOTE=""
if [ "$COLD" = 1 ]; then
    if "$BIN/bench_rss" --drop-caches -- true > /dev/null 2>&1; then
        echo "bench: cold cache (page cache dropped before each run)" >&2
        # shellcheck disable=SC2086
        limit_row cold3 cold "$OUT1" $B3
        for round in $ROUNDS; do
            for m in linear ties; do
                cfg=$(make_config "$m" 3 bfloat16 "$MD/base" "$MD/ft1" "$MD/ft2")
                run_merge cold "$m" "$cfg" 3 "$NPROC" cold "$IN3" cold3
            done
        done
    else
        COLD_NOTE="cold cache skipped: cannot write /proc/sys/vm/drop_caches (needs root)"
        echo "bench: $COLD_NOTE" >&2
    fi
fi

if [ "$BIG" = 1 ]; then
    echo "bench: big-tensor memory run (131072 x 1024 F32 embedding = 512 MiB per model)" >&2
    BD=$CACHE/models/big
    mkdir -p "$BD"
    gen_model "$BD/base" --big --variant 0
    gen_model "$BD/ft1" --big --variant 1
    gen_model "$BD/ft2" --big --variant 2
    BB3="$BD/base $BD/ft1 $BD/ft2"
    # shellcheck disable=SC2086
    BIN3=$(st_bytes $BB3) BOUT=$(st_bytes "$BD/base")
    # shellcheck disable=SC2086
    limit_row big3 hot "$BOUT" $BB3
    for round in $ROUNDS; do
        for m in linear ties; do
            cfg=$(make_config "$m" 3 float32 "$BD/base" "$BD/ft1" "$BD/ft2")
            run_merge big "$m" "$cfg" 3 "$NPROC" hot "$BIN3" big3
        done
    done
fi

# Planning: two models of many one-element tensors (every size 1: 9 per layer + 3), each sharded, so both
# are opened through an index; `--dry-run` parses every header and index, plans and prints the plan.
if [ "$PLAN" = 1 ]; then
    PLAYERS=111111
    [ "$QUICK" = 1 ] && PLAYERS=11111
    PD=$CACHE/models/plan-$PLAYERS
    mkdir -p "$PD"
    TINY="--vocab 1 --hidden 1 --inter 1 --kv-dim 1 --layers $PLAYERS"
    # shellcheck disable=SC2086
    gen_model "$PD/base" $TINY --variant 0 --shard-size $((PLAYERS * 10))
    # shellcheck disable=SC2086
    gen_model "$PD/ft1" $TINY --variant 1 --shard-size $((PLAYERS * 5))
    PTENSORS=$((PLAYERS * 9 + 3))
    PBYTES=0 # header bytes (the 8-byte length of every shard) + index bytes
    for f in "$PD"/base/*.safetensors "$PD"/ft1/*.safetensors; do
        PBYTES=$((PBYTES + $(od -An -tu8 -N8 "$f" | tr -d ' ')))
    done
    for f in "$PD"/base/model.safetensors.index.json "$PD"/ft1/model.safetensors.index.json; do
        PBYTES=$((PBYTES + $(wc -c < "$f")))
    done
    cfg=$(make_config linear 2 bfloat16 "$PD/base" "$PD/ft1" "")
    echo "bench: planning ($PTENSORS tensors per model, $PBYTES bytes of headers and indexes, --dry-run)" >&2
    for round in $ROUNDS; do
        load=$(loadavg1)
        warm "$PD/base" "$PD/ft1"
        cat "$PD"/*/model.safetensors.index.json > /dev/null
        line=$("$BIN/bench_rss" -- "$WORK/alloy" merge "$cfg" "$WORK/out" --dry-run -q 2>"$WORK/stderr.txt" |
               tail -n 1)
        if [ "$(kv "$line" status)" = 0 ]; then
            w=$(kv "$line" wall_s) rss=$(kv "$line" maxrss_kib)
            cpu=$(awk "BEGIN{print $(kv "$line" user_s) + $(kv "$line" sys_s)}")
            row plan linear 2 "$NPROC" hot "$PBYTES" 0 "$w" "$rss" ok "$PTENSORS tensors per model" - "$cpu" "$load"
            echo "  plan: ${w}s (cpu ${cpu}s)  $((rss / 1024)) MiB" >&2
        else
            note=$(grep -m1 'error' "$WORK/stderr.txt" | cut -c1-160 || true)
            row plan linear 2 "$NPROC" hot "$PBYTES" 0 0 0 fail "${note:-exit status $(kv "$line" status)}" - 0 "$load"
            echo "  plan: failed: $note" >&2
        fi
    done
fi

# GGUF output: one pass (merge straight to q4_k_m) against a folder then `alloy convert`; rows gguf (one pass)
# and gguf2 (both steps: seconds and cpu summed, the larger peak RSS).
# gguf_step ARGS...: alloy ARGS through bench_rss; sets w cpu rss, returns non-zero on failure.
gguf_step() {
    line=$("$BIN/bench_rss" -- "$WORK/alloy" "$@" -q --threads "$NPROC" 2>"$WORK/stderr.txt" | tail -n 1)
    [ "$(kv "$line" status)" = 0 ] || return 1
    w=$(kv "$line" wall_s) rss=$(kv "$line" maxrss_kib)
    cpu=$(awk "BEGIN{print $(kv "$line" user_s) + $(kv "$line" sys_s)}")
}
gguf_fail() { # kind
    note=$(grep -m1 'error' "$WORK/stderr.txt" | cut -c1-160 || true)
    row "$1" linear 2 "$NPROC" hot "$IN2" 0 0 0 fail "${note:-failed}" hot2 0 "$(loadavg1)"
    echo "  $1: failed: $note" >&2
}
if [ "$GGUF" = 1 ]; then
    echo "bench: GGUF output (linear, 2 models, q4_k_m: one pass vs folder then convert)" >&2
    [ -f "$MD/base/tokenizer.json" ] || printf '%s\n' '{"added_tokens": [], "pre_tokenizer": {"type": "ByteLevel"},
 "decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {}, "merges": []}}' > "$MD/base/tokenizer.json"
    cfg=$(make_config linear 2 bfloat16 "$MD/base" "$MD/ft1" "")
    for round in $ROUNDS; do
        rm -rf "$WORK/out" "$WORK/out.gguf" "$WORK/out2.gguf"
        # shellcheck disable=SC2086
        warm $B2
        load=$(loadavg1)
        if gguf_step merge "$cfg" "$WORK/out.gguf" --outtype q4_k_m; then
            row gguf linear 2 "$NPROC" hot "$IN2" "$(wc -c < "$WORK/out.gguf")" "$w" "$rss" ok "one pass" hot2 "$cpu" "$load"
            echo "  one pass: ${w}s (cpu ${cpu}s)  $((rss / 1024)) MiB" >&2
        else gguf_fail gguf; fi
        # shellcheck disable=SC2086
        warm $B2
        load=$(loadavg1)
        if gguf_step merge "$cfg" "$WORK/out"; then
            w1=$w cpu1=$cpu rss1=$rss
            if gguf_step convert "$WORK/out" "$WORK/out2.gguf" --outtype q4_k_m; then
                w=$(awk "BEGIN{print $w1 + $w}") cpu=$(awk "BEGIN{print $cpu1 + $cpu}")
                [ "$rss1" -gt "$rss" ] && rss=$rss1
                row gguf2 linear 2 "$NPROC" hot "$IN2" "$(wc -c < "$WORK/out2.gguf")" "$w" "$rss" ok \
                    "folder (${w1}s) then convert" hot2 "$cpu" "$load"
                echo "  folder then convert: ${w}s (merge ${w1}s; cpu ${cpu}s)  $((rss / 1024)) MiB" >&2
            else gguf_fail gguf2; fi
        else gguf_fail gguf2; fi
    done
    rm -rf "$WORK/out" "$WORK/out.gguf" "$WORK/out2.gguf"
fi

# The limit again at the end: the disk and the page cache of a shared machine vary over minutes.
echo "bench: limits again" >&2
# shellcheck disable=SC2086
limit_row hot2 hot "$OUT1" $B2
# shellcheck disable=SC2086
limit_row hot3 hot "$OUT1" $B3

LOAD_END=$(loadavg)

# ------------------------------------------------------------ report

TARGETS='linear=0.70 task_arithmetic=0.70 ties=0.40 dare_ties=0.40 slerp=0.40 breadcrumbs=0.40 della=0.40 model_stock=0.40'
# One awk program, two outputs (mode=table|json). It groups the runs of each measurement (kind,
# method, models, threads, cache, progress mode; limits by key) and keeps the fastest run, the
# largest peak RSS and every time measured.
REPORT_AWK='
function target(m,   i, n, kvs, p) {
    n = split(targets, kvs, " ")
    for (i = 1; i <= n; i++) { split(kvs[i], p, "="); if (p[1] == m) return p[2] + 0 }
    return 0.40
}
function q(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); return "\"" s "\"" }
BEGIN { FS = "\t"; rss_limit = 256 * 1024 }
{
    if ($1 == "limit") { g = "limit" SUBSEP $12; if (!($12 in lim) || $8 < lim[$12]) lim[$12] = $8 }
    else g = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4 SUBSEP $5 SUBSEP ($1 == "progress" ? substr($11, 1, 2) : "")
    if (!(g in seen)) { seen[g] = 1; order[++ng] = g; row[g] = $0 }
    if ($10 != "ok") next
    ok[g]++
    times[g] = times[g] (times[g] == "" ? "" : ", ") $8
    if (!(g in best) || $8 < best[g]) { best[g] = $8; row[g] = $0 }
    if ($9 > rss[g]) rss[g] = $9
}
END {
    for (i = 1; i <= ng; i++) {
        g = order[i]; split(row[g], f, "\t")
        kind = f[1]; method = f[2]; n = f[3]; th = f[4]; cache = f[5]; moved = f[6] + f[7]; s = f[8]
        status = f[10]; note = f[11]; key = f[12]; cpu = f[13]; load = f[14]
        ratio = (status == "ok" && s > 0) ? lim[key] / s : 0
        verdict = ""
        if (status != "ok") verdict = note
        else if (kind == "limit") verdict = key
        else if (kind == "method" || kind == "cold") {
            t = target(method)
            verdict = sprintf("target >= %.2f: %s", t, ratio >= t ? "met" : "MISSED")
        } else if (kind == "scaling") {
            if (th == 1) one[method] = s
            verdict = (method in one) ? sprintf("speedup x%.2f", one[method] / s) : ""
        } else if (kind == "progress") verdict = note
        else if (kind == "gguf") { onepass = s; verdict = note }
        else if (kind == "gguf2") verdict = onepass > 0 ? sprintf("%s: x%.2f the one-pass time", note, s / onepass) : note
        if (kind == "big") verdict = sprintf("peak RSS <= 256 MiB: %s", rss[g] <= rss_limit ? "met" : "MISSED")
        else if (kind == "plan") verdict = sprintf("%s; peak RSS %.2f bytes per header+index byte", note,
                                                   rss[g] * 1024 / f[6])
        else if (kind != "limit" && rss[g] > rss_limit) verdict = verdict "; peak RSS > 256 MiB"
        if (mode == "json") {
            extra = (kind == "limit") ? ", \"detail\": " note : ""
            printf "%s    {\"kind\": %s, \"method\": %s, \"models\": %s, \"threads\": %s, \"cache\": %s, \"limit\": %s, " \
                   "\"bytes_in\": %s, \"bytes_out\": %s, \"seconds\": %s, \"seconds_all\": [%s], \"cpu_seconds\": %s, " \
                   "\"gbps\": %.4f, \"ratio\": %.4f, \"peak_rss_kib\": %d, \"load\": %s, \"status\": %s, " \
                   "\"verdict\": %s%s}", (i > 1 ? ",\n" : ""), q(kind), q(method), n, (th == "-" ? 0 : th), q(cache),
                   q(key), f[6], f[7], s, times[g], cpu, (s > 0 ? moved / s / 1e9 : 0), ratio, rss[g], load,
                   q(status), q(verdict), extra
            continue
        }
        if (status != "ok") {
            printf "%-8s %-16s %6s %7s %-5s %10s %7s %6s %6s %6s %8s %5s  %s\n", kind, method, n, th, cache, "-",
                   "-", "-", "-", status, "-", load, verdict
        } else if (kind == "limit") {
            printf "%-8s %-16s %6s %7s %-5s %7.2f GB %7.3f %6s %6.2f %6.2f %8s %5s  %s\n", kind, method, n, "-",
                   cache, moved / 1e9, s, "-", moved / s / 1e9, 1.0, "-", load, verdict
        } else {
            printf "%-8s %-16s %6s %7s %-5s %7.2f GB %7.3f %6.2f %6.2f %6.2f %4.0f MiB %5s  %s\n", kind, method,
                   n, th, cache, moved / 1e9, s, cpu, moved / s / 1e9, ratio, rss[g] / 1024, load, verdict
        }
    }
    if (mode == "json") printf "\n"
}'

CPU_NAME=$(sed -n 's/^model name[^:]*: *//p' /proc/cpuinfo | head -n1)
{
    echo
    echo "alloy benchmark: $ALLOY_VERSION (git $GIT_REV), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $NPROC cores ($CPU_NAME), $PRIO, load average $LOAD_START at start, $LOAD_END at end"
    echo "models: $PROFILE, $(awk -v b="$OUT1" 'BEGIN{printf "%.0f MB", b/1e6}') per model (bf16); memory copy $MEMBW1 GB/s (1 thread), $MEMBWN GB/s ($NPROC threads)"
    [ -n "$COLD_NOTE" ] && echo "$COLD_NOTE"
    echo "seconds: wall, best of $REPEAT rounds (limits: best of $REPEAT per measurement); cpu: user+sys of that run;"
    echo "ratio: best limit seconds / seconds (same inputs and cache state); peak RSS: largest of the rounds"
    echo
    printf '%-8s %-16s %6s %7s %-5s %10s %7s %6s %6s %6s %8s %5s  %s\n' kind method models threads cache "moved" \
        seconds "cpu s" "GB/s" ratio "peak RSS" load "verdict"
    awk -v targets="$TARGETS" -v mode=table "$REPORT_AWK" "$WORK/rows.tsv"
} | tee "$WORK/table.txt"

# ------------------------------------------------------------ JSON

STAMP=$(date -u '+%Y-%m-%dT%H%M%SZ')
[ -n "$JSON" ] || JSON=$BENCH/results/$STAMP.json
{
    printf '{\n  "date": "%s",\n  "alloy": "%s",\n  "git": "%s",\n' "$STAMP" "$ALLOY_VERSION" "$GIT_REV"
    printf '  "command": "sh bench/run.sh %s",\n' "$ARGS"
    printf '  "machine": {"cpus": %s, "cpu": "%s", "priority": "%s", "load_start": "%s", "load_end": "%s"},\n' \
        "$NPROC" "$CPU_NAME" "$PRIO" "$LOAD_START" "$LOAD_END"
    printf '  "models": {"profile": "%s", "bytes_per_model": %s, "dir": "%s"},\n' "$PROFILE" "$OUT1" "$MD"
    printf '  "repeat": %s,\n  "memory_bandwidth": %s,\n' "$REPEAT" "$BW"
    printf '  "cold": "%s",\n  "rows": [\n' "${COLD_NOTE:-measured}"
    awk -v targets="$TARGETS" -v mode=json "$REPORT_AWK" "$WORK/rows.tsv"
    printf '  ]\n}\n'
} > "$JSON"
echo "bench: results in $JSON" >&2

# ------------------------------------------------------------ LoRA extraction SVD
if [ "$LORA" = 1 ] && [ -f "$BIN/liballoy.a" ] && [ -f "$BIN/config.mk" ]; then
    DEPC=$(sed -n 's/^DEP_CFLAGS = //p' "$BIN/config.mk")
    DEPL=$(sed -n 's/^DEP_LIBS = //p' "$BIN/config.mk")
    $CC -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -I"$ROOT/include" -I"$ROOT/src" $DEPC -o "$BIN/bench_lora_svd" \
        "$BENCH/lora_svd.c" "$BIN/liballoy.a" $DEPL -lpthread -lm
    echo
    if [ "$QUICK" = 1 ]; then "$BIN/bench_lora_svd" 1024 4096 32; else "$BIN/bench_lora_svd" 2048 8192 32; fi \
        | tee "$WORK/lora_svd.txt" || echo "bench: lora svd: alloy's error above 1.01 x the optimum" >&2
fi
