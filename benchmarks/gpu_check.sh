#!/usr/bin/env bash
# What has never run on a GPU, run once on one (issue 28): LoRA training in bfloat16 and float32, full fine-tuning,
# evaluation, bench_serve, DeepSpeed ZeRO-2 and FSDP with one process; one table at the end (benchmarks/gpu_check.py).
# For the `device` tool's lent machine only, never CI or the tests: under 8 minutes (7 checks of at most
# GPU_CHECK_LIMIT_S=100 s each, plus building two random models).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py
