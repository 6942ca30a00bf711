#!/usr/bin/env bash
# GPU smoke test of the host path (at most 5 minutes on a GPU machine): device and driver, the
# shipped default bundle through tensorrt, cuda and tensorrt-ep against the CPU at 128x256 and
# 375x1242, a second start that loads the cached engines, decode latency per frame.
# Needs only:  pip install '.[gpu-cu12]'  (or '.[gpu-cu13]': the driver's CUDA major, see nvidia-smi)
# Writes benchmarks/results/gpu_smoke.json.   Usage: bash benchmarks/gpu_smoke.sh [--frames N]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

echo "== device and driver"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || echo "nvidia-smi not found"
"$PYTHON" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' || true
"$PYTHON" -c 'import tensorrt as t; print("tensorrt", t.__version__)' || true

# A fresh engine cache: the first start builds every engine, the second start must only load them.
export STEREODSC_CACHE_DIR=${STEREODSC_CACHE_DIR:-$(mktemp -d -t stereodsc-gpu-smoke.XXXXXX)}
echo "== engine cache: $STEREODSC_CACHE_DIR"
timeout 300 "$PYTHON" benchmarks/gpu_smoke.py --budget 270 "$@"
