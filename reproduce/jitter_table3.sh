#!/usr/bin/env bash
# Jitter paper Table 3 (spec jitter.md §4.4 item 1; numbers lost): sampling with vs without replacement,
#   RIDE 4 experts + reduce, CIFAR-100-LT imbalance 100, 200 epochs. The ablations keep the multi-expert setting
#   (jitter.md §4.4: "the same as experiments for multi-experts model", §4.3): CE in stage 1, LDAM-DRW from 160.
#   Rows (common.sh ablation_rows): with replacement (u ~ n, --sampler instance) | without (shuffle) | the same
#         jittered (jitter1 = Table 1's J-sampling run; jitter-noreplace, per-class queues) -- all CE in stage 1 |
#         with / without replacement as RIDE's public code runs them (its loss from epoch 0: Table 1's baselines).
#   Compared pairs, each one flag apart (listed under the table): with vs without replacement (the paper's pair),
#   the same jittered and under RIDE's code; the stage-1 loss (ldam -> ce) in both modes.
#   3 seeds. Sampler figure: results/jitter_table3_sampler.png.
# Usage: bash reproduce/jitter_table3.sh   [SEEDS=3 SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step and formula: docs/reproduce.md): RIDE-4 CIFAR, 200 epochs x 85 steps
#   x 8 ms = 0.04 h (+ evals) ~ 0.05 h per run; 3 new rows x 3 seeds = 9 runs = ~0.45 GPU-h (+0.45 before Table 1)
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

S=c100-lt-r100
begin jitter_table3
ablation_rows "$S" shared --dataset cifar100 --imb 100
replacement_pairs "$S"
loss_pairs "$S"
run_all
sampler_figure
