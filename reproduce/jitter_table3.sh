#!/usr/bin/env bash
# Jitter paper Table 3 (spec jitter.md §4.4 item 1; numbers lost): sampling with vs without replacement,
#   RIDE 4 experts + reduce, CIFAR-100-LT imbalance 100, 200 epochs (the multi-expert setting, jitter.md §4.3).
#   Rows: with replacement (u ~ n, --sampler instance) | without (shuffle) -- both RIDE's loss from epoch 0, the
#         baselines of Table 1 (same run dirs) | jitter with replacement (Method 1, jitter1; Table 1's run) |
#         jitter without replacement (per-class queues) -- both CE in stage 1, LDAM-DRW from 160 (paper).
#   3 seeds. Sampler figure: results/jitter_table3_sampler.png.
# Usage: bash reproduce/jitter_table3.sh   [SEEDS=3 SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured): 200 epochs x 85 steps x ~8 ms ~ 0.05 h per run;
#   1 new row x 3 seeds = 3 runs = ~0.15 GPU-h (+0.45 if Table 1 has not run)
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

S=c100-lt-r100
D="--dataset cifar100 --imb 100"

begin jitter_table3
share "jitter_table1/ride-4e-reduce/$S" with-replacement "$S" $RIDE4 --reduce $RIDE_BASE $D
share "jitter_table1/ride-4e-reduce-shuffle/$S" without-replacement "$S" $RIDE4 --reduce $RIDE_SHUFFLE $D
share "jitter_table1/j-sampling+ride-4e-reduce/$S" jitter-with-replacement "$S" $RIDE4 --reduce --sampler jitter1 $D
cell jitter-without-replacement "$S" $RIDE4 --reduce --sampler jitter-noreplace $D
run_all
sampler_figure
