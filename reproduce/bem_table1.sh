#!/usr/bin/env bash
# BEM Table 1 (structure inferred, spec bem.md §3.3): the consistent setting gamma_l = gamma_u.
#   CIFAR-10-LT  gamma = 100, 150 with N1/M1 = 500/4000, 1500/3000      (WRN-28-2)
#   CIFAR-100-LT gamma = 10, 20   with N1/M1 = 50/400, 150/300          (WRN-28-8 = ACR's CVPR runs, the numbers
#                                  BEM compared against, baselines.md §3.0; WIDTH=2 runs WRN-28-2 into *-w2 settings)
#   Rows: FixMatch, +LA, +ABC, +ACR, each without and with BEM (--alg X [--bem]); 250k steps, 3 seeds.
#   Paper numbers: BEM's own cells are LoFT's CIFAR-100 +ACR+BEM (protocol `paper`) and SC-SSL's FixMatch+BEM /
#   ACR+BEM cells (its USB re-runs, bem.md §3.2 caveat: shown, no Δ); the rest are DASO's or ACR's baselines.
# Usage: bash reproduce/bem_table1.sh   [SEEDS=3 WIDTH=8 FRAMEWORKS="fixmatch la abc acr" ONLY=regex SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step per model and the formula: docs/reproduce.md, "GPU-hour estimates"):
#   WRN-28-2: 4 ms/step x 250k steps = 1000 s = 0.28 h per run; WRN-28-8: 25 ms/step x 250k = 6250 s = 1.74 h
#   CIFAR-10 : 8 rows x 4 settings x 3 seeds = 96 runs x 0.28 h = ~27 GPU-h
#   CIFAR-100: 96 runs x 1.74 h = ~167 GPU-h (WIDTH=2: ~27 GPU-h)      => total ~194 GPU-h (WIDTH=2: ~53)
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

FRAMEWORKS=${FRAMEWORKS:-"fixmatch la abc acr"}
WIDTH=${WIDTH:-8}
w=""; [ "$WIDTH" = 8 ] || w="-w$WIDTH"     # another width is another cell (paper_numbers.csv has *-w2 keys)

begin bem_table1
for g in 100 150; do
  for nm in 500/4000 1500/3000; do
    n=${nm%/*}; m=${nm#*/}
    bem_rows "c10-g$g-n$n-m$m" --dataset cifar10 --n1 "$n" --m1 "$m" --imb-l "$g" --setting consistent
  done
done
for g in 10 20; do
  for nm in 50/400 150/300; do
    n=${nm%/*}; m=${nm#*/}
    bem_rows "c100-g$g-n$n-m$m$w" --dataset cifar100 --n1 "$n" --m1 "$m" --imb-l "$g" --setting consistent --width "$WIDTH"
  done
done
run_all
