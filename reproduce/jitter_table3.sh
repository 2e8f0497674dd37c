#!/usr/bin/env bash
# Jitter paper Table 3 (spec jitter.md §4.4 item 1; numbers lost): sampling with vs without replacement,
#   RIDE 4 experts + reduce, CIFAR-100-LT imbalance 100, 200 epochs (the multi-expert setting, jitter.md §4.3).
#   Rows: with replacement (u ~ n, --sampler instance) | without (shuffle) |
#         jitter with replacement (Method 1, jitter1) | jitter without replacement (per-class queues).
#   The shuffle and jitter1 rows are Table 1's RIDE-4+reduce runs (same run dirs). 3 seeds.
# Usage: bash reproduce/jitter_table3.sh   [SEEDS=3 SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured): 200 epochs x 85 steps x ~8 ms ~ 0.05 h per run;
#   2 new rows x 3 seeds = 6 runs = ~0.3 GPU-h (+0.3 if Table 1 has not run)
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

S=c100-lt-r100
D="--dataset cifar100 --imb 100"

begin jitter_table3
cell with-replacement "$S" $RIDE4 --reduce --sampler instance $D
share "jitter_table1/ride-4e-reduce/$S" without-replacement "$S" $RIDE4 --reduce --sampler shuffle $D
share "jitter_table1/j-sampling+ride-4e-reduce/$S" jitter-with-replacement "$S" $RIDE4 --reduce --sampler jitter1 $D
cell jitter-without-replacement "$S" $RIDE4 --reduce --sampler jitter-noreplace $D
run_all
