#!/usr/bin/env bash
# Jitter paper Table 5 (spec jitter.md §4.4 item 3; numbers and epoch counts lost): normal vs long training.
#   RIDE 4 experts + reduce, CIFAR-100-LT imbalance 100, 200 epochs (normal) vs 400 epochs (long, inferred,
#   jitter.md §7 #15; train.py scales the lr steps 160/180 in proportion), for the four samplers of Table 3.
#   The 200-epoch cells are Table 3's runs (same run dirs). Baselines (instance, shuffle) = RIDE's code: its loss
#   from epoch 0 (--ride-stage1 ldam); jitter rows: CE in stage 1 (paper). 3 seeds.
#   Sampler figure: results/jitter_table5_sampler.png.
# Usage: bash reproduce/jitter_table5.sh   [SEEDS=3 SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured): 400 epochs x 85 steps x ~8 ms ~ 0.1 h per run;
#   4 rows x 3 seeds = 12 runs = ~1.2 GPU-h (+0.6 if Table 3 has not run)
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

D="--dataset cifar100 --imb 100"
N=c100-lt-r100-e200
L=c100-lt-r100-e400

begin jitter_table5
share "jitter_table1/ride-4e-reduce/c100-lt-r100" with-replacement "$N" $RIDE4 --reduce $RIDE_BASE $D
share "jitter_table1/ride-4e-reduce-shuffle/c100-lt-r100" without-replacement "$N" $RIDE4 --reduce $RIDE_SHUFFLE $D
share "jitter_table1/j-sampling+ride-4e-reduce/c100-lt-r100" jitter-with-replacement "$N" $RIDE4 --reduce --sampler jitter1 $D
share "jitter_table3/jitter-without-replacement/c100-lt-r100" jitter-without-replacement "$N" $RIDE4 --reduce --sampler jitter-noreplace $D
cell with-replacement "$L" $RIDE4 --reduce $RIDE_BASE $D --epochs 400
cell without-replacement "$L" $RIDE4 --reduce $RIDE_SHUFFLE $D --epochs 400
cell jitter-with-replacement "$L" $RIDE4 --reduce --sampler jitter1 $D --epochs 400
cell jitter-without-replacement "$L" $RIDE4 --reduce --sampler jitter-noreplace $D --epochs 400
run_all
sampler_figure
