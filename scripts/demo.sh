#!/bin/sh
# demo.sh — merge the bundled tiny models, apply a LoRA adapter, and evaluate the results.
# Usage: scripts/demo.sh [path/to/alloy]
set -e
ALLOY=${1:-build/alloy}
OUT=build/demo
mkdir -p "$OUT"
echo "== alloy merge examples/linear.yml $OUT/linear"
"$ALLOY" merge examples/linear.yml "$OUT/linear" --threads 2
if [ -f examples/ties.yml ]; then
  echo "== alloy merge examples/ties.yml $OUT/ties"
  "$ALLOY" merge examples/ties.yml "$OUT/ties" --threads 2
fi
echo "== alloy merge examples/passthrough.yml $OUT/franken (a 6-layer frankenmerge)"
"$ALLOY" merge examples/passthrough.yml "$OUT/franken" --threads 2
ls -l "$OUT/linear"
if "$ALLOY" eval --help >/dev/null 2>&1; then
  echo "== alloy eval: loss (nats/byte) and perplexity on held-out code and prose"
  MODELS="tests/data/tiny-llama/base tests/data/tiny-llama/code tests/data/tiny-llama/prose $OUT/linear"
  [ -d "$OUT/ties" ] && MODELS="$MODELS $OUT/ties"
  "$ALLOY" eval $MODELS --text tests/data/eval_code.txt --text tests/data/eval_prose.txt
fi
if [ -d tests/data/tiny-llama-lora/code-r8 ]; then
  echo "== alloy lora apply: the code-r8 LoRA adapter merged into the base (PEFT merge_and_unload)"
  "$ALLOY" lora apply tests/data/tiny-llama/base tests/data/tiny-llama-lora/code-r8 "$OUT/code-r8" --threads 2 --overwrite
  echo "== alloy eval: the base, the adapter applied in memory (BASE+ADAPTER) and the applied folder"
  "$ALLOY" eval tests/data/tiny-llama/base tests/data/tiny-llama/base+tests/data/tiny-llama-lora/code-r8 "$OUT/code-r8" \
    --text tests/data/eval_code.txt --text tests/data/eval_prose.txt
fi
