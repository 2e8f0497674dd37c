#!/usr/bin/env bash
# One prepared GPU run (issue 13): in BUDGET_S seconds on one GPU, with no network and no pip, it
#   1. runs the CUDA-only tests (tests/test_cuda_paths_cpu.py's `cuda` cases, the host-sync test) and a torchrun step
#   2. times FixMatch, FixMatch+ACR, FixMatch+ACR+BEM (WRN-28-2, batch 64, mu 1 and 2) and the LT step (ResNet-32,
#      batch 128) eager and compiled against the reference pipeline (bench.py), with the PASS/FAIL target lines
#   5. measures images/s of 1, 2 and 4 concurrent runs on the one GPU
#   3. trains FixMatch, +BEM, +ACR, ACR+BEM and ResNet-32 instance / jitter1 / jitter2 on Fashion-MNIST-LT
#      (gamma 100, the demo's split), SEEDS seeds each, all at once, for as many steps as the budget allows
#   4. prints GPU-hours per reproduce/ table from the step times of 2
# and writes $OUT/gpu_check.md (the report), speed.json, throughput.png, fidelity.png and gpu_check.log (every
# command's output): five files, under the device tool's limit of eight. Runs go to runs/gpu_check/ (not $OUT).
# Usage:  bash reproduce/gpu_check.sh                 (a GPU; ~BUDGET_S seconds)
#         SMOKE=1 bash reproduce/gpu_check.sh         (CPU, every stage at toy size, < 3 min; CI runs it)
# Environment: OUT (default results/gpu_check; results/gpu_check_smoke with SMOKE=1), BUDGET_S (300; with SMOKE a 600 s cap: its work is fixed-size),
#   SEEDS (2; SMOKE 1), FMNIST_DIR (a folder holding the four Fashion-MNIST .gz files, e.g. carried with the working tree;
#   else /usr/share/datasets/fashion-mnist and DATA_DIR/fashion-mnist; synthetic data when none is found),
#   DATA_DIR (./datasets), STAGES (tests,speed,throughput,fidelity,hours), PYTHON (.venv/bin/python, else python3).
# Exit status 0 when every stage ran and the tests passed, 1 otherwise, 2 without a visible CUDA device (one line,
# in seconds, nothing run), 128+N when stopped by signal N. The report is rewritten after every stage, so a
# timeout or a signal keeps every stage done before it (bench.py rewrites speed.json after every row).
# On a lent device (15 min in all): copy the .gz files into the ignored datasets/fashion-mnist/ (found there without
# FMNIST_DIR), then one call: command `bash reproduce/gpu_check.sh`, carry ["datasets/fashion-mnist"], timeout_s 560;
# $OUT is the device tool's folder, so the report comes back. A second call with BUDGET_S=450 if the lease allows.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}; [ -x "$PYTHON" ] || PYTHON=python3
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  OUT=${OUT:-results/gpu_check_smoke}; BUDGET_S=${BUDGET_S:-600}; export GPU_CHECK_RUNS=${GPU_CHECK_RUNS:-runs/gpu_check_smoke}
else
  OUT=${OUT:-results/gpu_check}; BUDGET_S=${BUDGET_S:-300}
fi
export OUT BUDGET_S SMOKE
# first seconds: no visible CUDA device -> one line, exit 2 (SMOKE runs on the CPU on purpose)
"$PYTHON" reproduce/gpu_check.py --preflight || exit $?
mkdir -p "$OUT"
start=$(date +%s)
# python in the background so that a SIGTERM/SIGINT to this script (the device tool's timeout) reaches it: it
# writes the report of the stages done, stops its children, and exits 128+signal; the report is printed below
"$PYTHON" reproduce/gpu_check.py >"$OUT/gpu_check.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null' TERM INT
wait $pid; rc=$?
if kill -0 $pid 2>/dev/null; then wait $pid; rc=$?; fi   # `wait` returned on the trapped signal: wait for the report
trap - TERM INT
cat "$OUT/gpu_check.md" 2>/dev/null || { echo "gpu_check: no report; last log lines:"; tail -40 "$OUT/gpu_check.log"; }
echo "gpu_check: exit $rc, $(( $(date +%s) - start )) s, report $OUT/gpu_check.md, log $OUT/gpu_check.log"
exit $rc
