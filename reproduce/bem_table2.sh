#!/usr/bin/env bash
# BEM Table 2 (structure inferred, spec bem.md §3.3): mismatched labeled/unlabeled distributions.
#   CIFAR-10-LT gamma_l = 100, unlabeled uniform (gamma_u = 1) and reversed (gamma_u = 1/100),
#               N1/M1 = 500/4000 and 1500/3000                                         (WRN-28-2)
#   STL-10-LT   gamma_l = 10 and 20, N1 = 150 and 450; unlabeled = the 100k split (gamma_u unknown, M1 unused)
#   Rows: FixMatch and FixMatch+ACR, each without and with BEM (FRAMEWORKS="fixmatch la abc acr" adds +LA, +ABC);
#   250k steps, 3 seeds.
# Usage: bash reproduce/bem_table2.sh   [SEEDS=3 FRAMEWORKS="fixmatch acr" ONLY=regex SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step per model and the formula: docs/reproduce.md, "GPU-hour estimates"):
#   WRN-28-2: 4 ms/step (STL is resized to 32 px) x 250k steps = 0.28 h per run
#   4 rows x 8 settings x 3 seeds = 96 runs x 0.28 h = ~27 GPU-h (FRAMEWORKS with la abc: ~54 GPU-h)
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

FRAMEWORKS=${FRAMEWORKS:-"fixmatch acr"}

begin bem_table2
for s in uniform reversed; do
  for nm in 500/4000 1500/3000; do
    n=${nm%/*}; m=${nm#*/}
    bem_rows "c10-g100-$s-n$n-m$m" --dataset cifar10 --n1 "$n" --m1 "$m" --imb-l 100 --setting "$s"
  done
done
for g in 10 20; do
  for n in 150 450; do
    bem_rows "stl10-g$g-n$n" --dataset stl10 --n1 "$n" --imb-l "$g"
  done
done
run_all
