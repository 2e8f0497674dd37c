#!/usr/bin/env bash
# Jitter paper Table 4 (spec jitter.md §4.4 item 2; numbers lost): jitter vs no jitter, in both replacement
#   modes, on CIFAR-100-LT (imbalance 100) and ImageNet-LT (imbalance 256), RIDE 4 experts + reduce, the rows of
#   Table 3 (common.sh ablation_rows: CE in stage 1 as the paper's multi-expert setting, and the two baselines as
#   RIDE's code runs them). CIFAR-100-LT cells are Tables 1 and 3's runs (same run dirs).
#   Compared pairs, each one flag apart: jitter vs none with and without replacement (the paper's pairs), and the
#   stage-1 loss (ldam -> ce), on each dataset. Sampler figure: results/jitter_table4_sampler.png.
#   ImageNet-LT uses RIDE's ImageNet-LT recipe (jitter.md §4.5, reconstructed): RIDE ResNeXt-50, batch 256,
#   lr 0.1 x0.1 at epochs 60/80, wd 2e-4, 100 epochs, DRW + jitter stop at 80 -- all train.py defaults for
#   --dataset imagenet_lt. Its images are JPEGs decoded in DataLoader workers (--workers, default CPUs - 1, at most
#   16); put the OLTR lists and links to ImageNet's train/ and val/ under $DATA_DIR/imagenet_lt (README "Datasets").
#   ONLY=c100 runs CIFAR alone.
# Usage: bash reproduce/jitter_table4.sh   [SEEDS=3 ONLY=regex SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step and formula: docs/reproduce.md):
#   CIFAR-100-LT: 0 after Tables 1 and 3 (else 6 rows x 3 seeds x 0.05 h = 0.9 GPU-h)
#   ImageNet-LT:  45k steps (100 epochs x 453 steps of 256). Per step: 17.6 TFLOP (FlopCounterMode, RIDE
#                 ResNeXt-50 4 experts + reduce, fwd+bwd) = ~60 ms at 30% of an H100's bf16 peak; decoding
#                 256 JPEGs at 5.5 ms/image/core (measured, 500x375) = ~95 ms with 15 workers, ~180 ms with 8.
#                 ~0.1-0.2 s/step = 1.2-2.3 h per run; 6 rows x 3 seeds = ~22-41 GPU-h
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

begin jitter_table4
ablation_rows c100-lt-r100 shared --dataset cifar100 --imb 100
ablation_rows imagenet-lt own --dataset imagenet_lt
for s in c100-lt-r100 imagenet-lt; do
  jitter_pairs "$s"
  loss_pairs "$s"
done
run_all
sampler_figure
