#!/usr/bin/env bash
# Train the native models on one lent GPU within a fixed wall time (a lent machine gives ~10 minutes):
# phase 1 trains the intra codec (balle2018, preset native) at four rates side by side, phase 2 DSIN
# (band SI-Finder) at the same rates, warm-started from them and fed side images decoded by them.
# Each run is stopped by SIGTERM at its phase's end and checkpoints on the way out; the compact
# checkpoints in weights/ are what a later CPU session continues (configs/<run>.toml --resume).
# Needs: the packed data in .gpudata/pairs (scripts/pack_training_data.py), python3 with torch (CUDA),
# numpy, opencv, numba, scipy, tqdm. Results (weights, logs, metrics) are tarred into $OUT when set.
#
#     PHASE1=290 PHASE2=210 bash scripts/train_gpu_burst.sh
set -u
PHASE1=${PHASE1:-290}
PHASE2=${PHASE2:-210}
LAMBDAS=${LAMBDAS:-"0.05 0.012 0.002 0.0003"}
export PYTHONPATH=src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p runs weights
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"

train() {  # train <seconds> <model>: every rate of <model> side by side, each stopped after <seconds>
    local seconds=$1 model=$2 pids=()
    for l in $LAMBDAS; do
        timeout -s TERM "$seconds" python3 -m stereodsc.cli train --config "configs/gpu/${model}_native_l$l.toml" -q \
            > "runs/${model}_native_l$l.log" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    for l in $LAMBDAS; do
        echo "== ${model} l=$l: $(tail -c 300 "runs/${model}_native_l$l/metrics.jsonl" 2>/dev/null | tail -1 | cut -c1-200)"
        grep -E "Error|error" "runs/${model}_native_l$l.log" | tail -3
    done
}

start=$(date +%s)
train "$PHASE1" balle2018
echo "phase 1 done after $(( $(date +%s) - start )) s"
train "$PHASE2" dsin
echo "both phases done after $(( $(date +%s) - start )) s"

if [ -n "${OUT:-}" ]; then  # the machine's result files: at most 16 MiB each
    i=0
    for l in $LAMBDAS; do
        tar czf "$OUT/weights_l$l.tgz" weights/balle2018_native_l$l.pt weights/dsin_native_l$l.pt \
            runs/balle2018_native_l$l/metrics.jsonl runs/dsin_native_l$l/metrics.jsonl \
            runs/balle2018_native_l$l.log runs/dsin_native_l$l.log 2>/dev/null
        i=$((i + 1))
    done
    ls -la "$OUT"
fi
