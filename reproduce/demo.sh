#!/usr/bin/env bash
# Demo: supervised vs FixMatch (+ FixMatch+BEM) on Fashion-MNIST-LT, gamma = 100, ACR split protocol, on CPU.
# Budget: <= 10 min on 2 CPU cores (QUICK=1: 30 steps, one evaluation, used by CI). Prints a table (overall, head and tail
# accuracy, and the statistic used; rows in run order) and writes results/demo_per_class.png.
# Short-schedule settings, stated because they differ from the paper's 250k-step recipe (the same as the
# LTSSL part of reproduce/fmnist_cpu.sh, so the demo's rows are its seed-0 runs):
#   WRN-28-1 (width 1), batch 32 labeled + 32 unlabeled, 250 steps, lr 0.1, BN momentum 0.1 and EMA 0.99
#   (the paper's 0.001 / 0.999 average over thousands of steps and would leave a short run's statistics at
#   init), --epoch-steps 25 (ACR's 500-step epoch scaled, so BEM's d^u estimate starts inside the run).
# Data: Fashion-MNIST (Debian's dataset-fashion-mnist, or the IDX files under DATA_DIR). When it is absent and we
# are root with apt-get, the demo installs the package (one line says so). Otherwise it says so in one line and
# uses the generated `synthetic` set (600 training images per class, so N1/M1 shrink from 1000/2000 to 200/400;
# gamma stays 100). FMNIST_DIR=<dir> points the Fashion-MNIST lookup at <dir> instead of the system folder (and
# skips the install): FMNIST_DIR=$(mktemp -d) runs the synthetic fallback on any machine.
# Environment: QUICK=1, SEED=0, DATA_DIR=./datasets, RUNS=runs, RESULTS=results, PYTHON=.venv/bin/python, DRY_RUN=1 (print the commands and
# run nothing; only the read-only data check runs, since it decides which commands follow). A bad knob (QUICK=2,
# SEED=abc, a PYTHON that cannot be run) stops it in one line, exit 2 (reproduce/knobs.sh); `demo.sh --knobs` checks
# them and exits (the Makefile runs that before it builds anything).
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/knobs.sh
knob_python
QUICK=${QUICK:-0}
DRY_RUN=${DRY_RUN:-0}
knob_switch QUICK DRY_RUN
DATA_DIR=${DATA_DIR:-./datasets}
RUNS=${RUNS:-runs}
RESULTS=${RESULTS:-results}
ITERS=${ITERS:-$([ "$QUICK" = 1 ] && echo 30 || echo 250)}
EVAL=${EVAL:-$([ "$QUICK" = 1 ] && echo 30 || echo 125)}
EPOCH=${EPOCH:-$([ "$QUICK" = 1 ] && echo 5 || echo 25)}
SEED=${SEED:-0}
knob_count ITERS EVAL EPOCH
[[ $SEED =~ ^[0-9]+$ ]] || knob_fail "SEED=$SEED must be one seed (a non-negative integer), e.g. SEED=1"
[ "${1:-}" != --knobs ] || exit 0
say() { if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi; }
have_fmnist() { "$PYTHON" train.py --check-data --task ltssl --dataset fmnist --data-dir "$DATA_DIR" 2>/dev/null; }
DATA=fmnist
if ! have_fmnist; then
  if [ -z "${FMNIST_DIR:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist (root, apt-get)"
    say sh -c 'apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist' >/dev/null 2>&1 || true
  fi
  if [ "$DRY_RUN" = 1 ] || ! have_fmnist; then
    echo "Fashion-MNIST not found (apt-get install dataset-fashion-mnist); using the generated 'synthetic' set"
    DATA=synthetic
  fi
fi
# fmnist has 6000 images per class: N1=1000/M1=2000 keeps gamma=100 (tail: 10 labeled, 20 unlabeled).
# synthetic has 600: N1=200/M1=400 (tail: 2 labeled, 4 unlabeled).
if [ "$DATA" = fmnist ]; then N1=1000 M1=2000; else N1=200 M1=400; fi
COMMON=(--dataset "$DATA" --data-dir "$DATA_DIR" --n1 "$N1" --imb-l 100 --split acr
        --width 1 --batch-size 32 --iters "$ITERS" --eval-every "$EVAL" --lr 0.1
        --bn-momentum 0.1 --ema 0.99 --seed "$SEED" --device cpu --no-progress)
SSL=(--m1 "$M1" --setting consistent --mu 1 --epoch-steps "$EPOCH")   # the unlabeled recipe: SSL rows only
ROOT=$RUNS/demo
if [ "$QUICK" = 1 ]; then ROOT=$RUNS/demo_quick; fi
if [ "$DATA" = synthetic ]; then ROOT=${ROOT}_synthetic; fi   # never mixed with (or skipped for) the real-data runs
run() {  # run <name> <flags...>: skip if finished, resume if killed
  local out="$ROOT/$1"; shift
  if [ -f "$out/summary.json" ]; then echo "skip $out (finished)"; return; fi
  local resume=(); [ -f "$out/args.json" ] && resume=(--resume)
  say "$PYTHON" train.py "${COMMON[@]}" "$@" --out "$out" "${resume[@]}"
}
start=$(date +%s)
run supervised --alg supervised
run fixmatch --alg fixmatch "${SSL[@]}"
run fixmatch_bem --alg fixmatch --bem "${SSL[@]}"
say "$PYTHON" report.py demo --runs "$ROOT" --out "$RESULTS"
echo "demo wall time: $(( $(date +%s) - start )) s"
