#!/bin/sh
# demo.sh — merge the bundled tiny models, apply a LoRA adapter, assemble a MoE, and evaluate the results.
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
# A union merge: a "chat" fine-tune whose tokenizer turns the two unused slots into <|im_start|> and
# <|im_end|> (mixchat with its tokenizer edited), merged with the prose model under tokenizer_source: union.
# The output has 262 tokens: prose's 260 and the two chat tokens, whose rows come from the chat model.
CHAT="$OUT/chat"
rm -rf "$CHAT" && cp -r tests/data/tiny-llama/mixchat "$CHAT"
sed -i 's/<unused0>/<|im_start|>/; s/<unused1>/<|im_end|>/' "$CHAT/tokenizer.json" "$CHAT/tokenizer_config.json"
cat > "$OUT/union.yml" <<YAML
merge_method: linear
base_model: tests/data/tiny-llama/prose
models:
  - model: tests/data/tiny-llama/prose
    parameters: {weight: 0.5}
  - model: $CHAT
    parameters: {weight: 0.5}
tokenizer_source: union
chat_template: chatml
YAML
echo "== alloy merge $OUT/union.yml $OUT/union (tokenizer_source: union)"
"$ALLOY" merge "$OUT/union.yml" "$OUT/union" --threads 2 --overwrite
grep '"vocab_size"' "$OUT/union/config.json"
if "$ALLOY" eval --help >/dev/null 2>&1; then
  head -c 3000 tests/data/eval_prose.txt | awk '{ printf "<|im_start|>user\n%s<|im_end|>\n", $0 }' > "$OUT/chat.txt"
  echo "== alloy eval: the union merge next to its parents on a chat-formatted text"
  "$ALLOY" eval tests/data/tiny-llama/prose "$CHAT" "$OUT/union" --text "$OUT/chat.txt"
fi

# A mixture of experts (mergekit-moe): the code and prose MLPs as two experts behind the base's attention,
# routers from the base's hidden states on each expert's prompts, evaluated next to its parents.
echo "== alloy moe examples/moe/tiny_mixtral.yml $OUT/moe (a 2-expert Mixtral)"
"$ALLOY" moe examples/moe/tiny_mixtral.yml "$OUT/moe" --overwrite
echo "== alloy moe examples/moe/tiny_qwen_moe.yml $OUT/qwen_moe (a Qwen MoE: 2 experts + a shared expert)"
"$ALLOY" moe examples/moe/tiny_qwen_moe.yml "$OUT/qwen_moe" --overwrite
if "$ALLOY" eval --help >/dev/null 2>&1; then
  echo "== alloy eval: the MoEs next to their base and experts"
  "$ALLOY" eval tests/data/tiny-llama/base tests/data/tiny-llama/code tests/data/tiny-llama/prose "$OUT/moe" \
    "$OUT/qwen_moe" --text tests/data/eval_code.txt --text tests/data/eval_prose.txt
fi
