#!/usr/bin/env bash
# vLLM serves what `bapo export` writes, per model family: the exported model and two exported LoRA adapters (one at
# scale 0.5), greedy answers to 6 prompts x 3 models against transformers + PEFT (benchmarks/vllm_check.py).
#   benchmarks/vllm_env.sh                         # once: vLLM for CPUs in .venv-vllm
#   benchmarks/vllm_check.sh [FAMILY ...]          # default: every tiny family of tests/families.py, then smollm2
# Needs bapo's .venv (make install). float32 throughout: bfloat16 greedy decoding turns on rounding. On CPUs
# --gpu-memory-utilization is the share of RAM vLLM reserves for its KV cache: 0.15 of 24 GiB is plenty here.
set -euo pipefail
cd "$(dirname "$0")/.."
BAPO_PY=${BAPO_PY:-.venv/bin/python}
VLLM_PY=${VLLM_PY:-.venv-vllm/bin/python}
FAMILIES=${*:-llama3 qwen2.5 qwen3 mistral gemma2 gemma3 phi3 olmo2 smollm2}
WORK=${WORK:-$(mktemp -d)}
PORT=${PORT:-8765}
mkdir -p "$WORK"
echo "== $(date '+%F %T') $(uname -m), $(nproc) CPUs; $("$VLLM_PY" -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null)"
for f in $FAMILIES; do
  dir="$WORK/$f"
  rm -rf "$dir"
  "$BAPO_PY" benchmarks/vllm_check.py prepare "$f" "$dir" >/dev/null 2>"$dir.prepare.log" || { echo "$f: prepare failed: $(tail -1 "$dir.prepare.log")"; continue; }
  "$VLLM_PY" -m vllm.entrypoints.openai.api_server --model "$dir/model" --served-model-name base --dtype float32 \
      --enable-lora --max-lora-rank 16 --lora-modules "a=$dir/a" "b=$dir/b" --max-model-len 1024 --gpu-memory-utilization 0.15 \
      --host 127.0.0.1 --port "$PORT" >"$dir.vllm.log" 2>&1 &
  server=$!
  up=0
  for _ in $(seq 1 240); do
    if curl -sf "127.0.0.1:$PORT/v1/models" >/dev/null; then up=1; break; fi
    kill -0 $server 2>/dev/null || break
    sleep 1
  done
  if [ $up = 0 ]; then
    echo "$f: vLLM did not start: $(grep -E 'Error|error' "$dir.vllm.log" | tail -1)"
    kill $server 2>/dev/null || true; wait $server 2>/dev/null || true
    continue
  fi
  "$VLLM_PY" - "$dir" "$PORT" <<'PY'
import json, sys, urllib.request
from pathlib import Path
d, port = Path(sys.argv[1]), sys.argv[2]
want = json.loads((d / "expected.json").read_text())
got = {}
for name in want["answers"]:
    got[name] = []
    for p in want["prompts"]:
        body = {"model": name, "messages": [{"role": "user", "content": p}], "temperature": 0, "max_tokens": 48}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        got[name].append(json.loads(urllib.request.urlopen(req, timeout=300).read())["choices"][0]["message"]["content"])
(d / "got.json").write_text(json.dumps(got, indent=1))
PY
  kill $server 2>/dev/null || true; wait $server 2>/dev/null || true
  "$BAPO_PY" benchmarks/vllm_check.py compare "$dir" || true
done
