#!/usr/bin/env bash
# Demo: supervised vs FixMatch (+ FixMatch+BEM) on Fashion-MNIST-LT, gamma = 100, ACR split protocol, on CPU.
# Budget: <= 10 min on 2 CPU cores (QUICK=1: 30 steps, one evaluation, used by CI). Prints a table (overall, head and tail
# accuracy, and the statistic used) and writes results/demo_per_class.png.
# Short-schedule settings, stated because they differ from the paper's 250k-step recipe (the same as the
# LTSSL part of reproduce/fmnist_cpu.sh, so the demo's rows are its seed-0 runs):
#   WRN-28-1 (width 1), batch 32 labeled + 32 unlabeled, 250 steps, lr 0.1, BN momentum 0.1 and EMA 0.99
#   (the paper's 0.001 / 0.999 average over thousands of steps and would leave a short run's statistics at
#   init), --epoch-steps 25 (ACR's 500-step epoch scaled, so BEM's d^u estimate starts inside the run).
# Without Fashion-MNIST (offline and not installed) it says so in one line and uses `synthetic`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}; [ -x "$PYTHON" ] || PYTHON=python3
QUICK=${QUICK:-0}
ITERS=${ITERS:-$([ "$QUICK" = 1 ] && echo 30 || echo 250)}
EVAL=${EVAL:-$([ "$QUICK" = 1 ] && echo 30 || echo 125)}
EPOCH=${EPOCH:-$([ "$QUICK" = 1 ] && echo 5 || echo 25)}
SEED=${SEED:-0}
DATA=fmnist
if ! "$PYTHON" train.py --check-data --task ltssl --dataset fmnist 2>/dev/null; then
  echo "Fashion-MNIST not found (apt-get install dataset-fashion-mnist); using the generated 'synthetic' set"
  DATA=synthetic
fi
# fmnist has 6000 images per class; N1=1000/M1=2000 keeps gamma=100 (tail: 10 labeled, 20 unlabeled).
COMMON=(--dataset "$DATA" --n1 1000 --m1 2000 --imb-l 100 --setting consistent --split acr
        --width 1 --batch-size 32 --mu 1 --iters "$ITERS" --eval-every "$EVAL" --epoch-steps "$EPOCH" --lr 0.1
        --bn-momentum 0.1 --ema 0.99 --seed "$SEED" --device cpu --no-progress)
ROOT=runs/demo
if [ "$QUICK" = 1 ]; then ROOT=runs/demo_quick; fi
run() {  # run <name> <flags...>: skip if finished, resume if killed
  local out="$ROOT/$1"; shift
  if [ -f "$out/summary.json" ]; then echo "skip $out (finished)"; return; fi
  local resume=(); [ -f "$out/args.json" ] && resume=(--resume)
  "$PYTHON" train.py "${COMMON[@]}" "$@" --out "$out" "${resume[@]}"
}
start=$(date +%s)
run supervised --alg supervised
run fixmatch --alg fixmatch
run fixmatch_bem --alg fixmatch --bem
"$PYTHON" report.py demo --runs "$ROOT" --out results
echo "demo wall time: $(( $(date +%s) - start )) s"
