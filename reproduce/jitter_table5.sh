#!/usr/bin/env bash
# Jitter paper Table 5 (spec jitter.md §4.4 item 3; numbers and epoch counts lost): normal vs long training.
#   RIDE 4 experts + reduce, CIFAR-100-LT imbalance 100, 200 epochs (normal) vs 400 epochs (long, inferred,
#   jitter.md §7 #15; train.py scales the lr steps 160/180 in proportion), for the rows of Table 3 (common.sh
#   ablation_rows: CE in stage 1 as the paper's multi-expert setting, the two baselines also as RIDE's code runs
#   them). The 200-epoch cells are Tables 1 and 3's runs (same run dirs). 3 seeds.
#   Compared pairs, each one flag apart: 200 vs 400 epochs for every row (the paper's pairs), and jitter vs none
#   with and without replacement at each length. Sampler figure: results/jitter_table5_sampler.png.
# Usage: bash reproduce/jitter_table5.sh   [SEEDS=3 SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step and formula: docs/reproduce.md): RIDE-4 CIFAR, 400 epochs x 85 steps
#   x 8 ms = 0.08 h (+ evals) ~ 0.1 h per run; 6 rows x 3 seeds = 18 runs = ~1.8 GPU-h (+0.9 before Tables 1 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

N=c100-lt-r100-e200
L=c100-lt-r100-e400
begin jitter_table5
ablation_rows "$N" shared --dataset cifar100 --imb 100
ablation_rows "$L" own --dataset cifar100 --imb 100 --epochs 400
for row in "${ABL_ROWS[@]}"; do pair "200 vs 400 epochs, $row" "$row/$N" "$row/$L"; done
jitter_pairs "$N"
jitter_pairs "$L"
run_all
sampler_figure
