#!/usr/bin/env bash
# Jitter paper Table 1 (spec jitter.md §5; numbers lost except a fragment): CIFAR-100-LT, imbalance 100.
#   Single expert: ResNet-32 + group L2norm + jitter Method 2 + long training (500 epochs, bs 256, lr 0.5,
#                  delta_t = 0.5 from epoch 350: all train.py defaults for --model resnet32, jitter.md §4.2)
#   Multi-expert:  RIDE 4 experts with and without "reduce" as the paper ran them (its * rows, "public code of
#                  sampling with replacement"): instance sampling with replacement + RIDE's LDAM loss from epoch 0;
#                  the same without replacement (RIDE's DataLoader shuffle) as separate *-shuffle rows;
#                  J-sampling (Method 1, with replacement) + RIDE 4 experts +- reduce, CE in stage 1 and LDAM-DRW
#                  from epoch 160 as the paper says (200 epochs, jitter.md §4.3);
#                  beyond the paper: J-sampling Method 2 + RIDE +- reduce (*-beyond-paper rows; Method 1 at
#                  alpha 0.05 samples the tail 1.004x as often as instance sampling, Method 2 ~4x).
#   Metric: mean per-class accuracy of the final model; 3 seeds. Beside the table: results/jitter_table1_sampler.png
#   (delta_t and the realised tail/head sampling ratio per epoch of every row, report.py sampler).
# Usage: bash reproduce/jitter_table1.sh   [SEEDS=3 ONLY=regex SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step per model and the formula: docs/reproduce.md, "GPU-hour estimates"):
#   ResNet-32: 500 epochs x 43 steps (10,847 images / 256) = 21.5k steps x 5 ms = 0.03 h (+ evals) ~ 0.05 h
#   RIDE-4:    200 epochs x 85 steps (/ 128) = 17k steps x 8 ms = 0.04 h (+ evals) ~ 0.05 h
#   9 rows x 3 seeds = 27 runs x 0.05 h = ~1.4 GPU-h
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

begin jitter_table1
jitter_main_rows c100-lt-r100 --dataset cifar100 --imb 100
run_all
sampler_figure
