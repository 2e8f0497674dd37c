#!/usr/bin/env bash
# Jitter paper Table 4 (spec jitter.md §4.4 item 2; numbers lost): jitter vs no jitter, in both replacement
#   modes, on CIFAR-100-LT (imbalance 100) and ImageNet-LT (imbalance 256), RIDE 4 experts + reduce.
#   CIFAR-100-LT cells are Table 3's runs (same run dirs). Baselines (instance, shuffle) = RIDE's code: its loss from
#   epoch 0 (--ride-stage1 ldam); jitter rows: CE in stage 1 (paper). Sampler figure: results/jitter_table4_sampler.png. ImageNet-LT uses RIDE's ImageNet-LT recipe
#   (jitter.md §4.5, reconstructed): RIDE ResNeXt-50, batch 256, lr 0.1 x0.1 at epochs 60/80, wd 2e-4,
#   100 epochs, DRW + jitter stop at 80 -- all train.py defaults for --dataset imagenet_lt. Its images are
#   JPEGs decoded in DataLoader workers (--workers, default CPUs - 1, at most 16); put the OLTR lists and links
#   to ImageNet's train/ and val/ under $DATA_DIR/imagenet_lt (README "Datasets"). ONLY=c100 runs CIFAR alone.
# Usage: bash reproduce/jitter_table4.sh   [SEEDS=3 ONLY=regex SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (no GPU was available to measure them):
#   CIFAR-100-LT: 0 after Table 3 (else 4 rows x 3 seeds x 0.05 h = 0.6 GPU-h)
#   ImageNet-LT:  45k steps (100 epochs x 453 steps of 256). Per step: 17.6 TFLOP (FlopCounterMode, RIDE
#                 ResNeXt-50 4 experts + reduce, fwd+bwd) = ~60 ms at 30% of an H100's bf16 peak; decoding
#                 256 JPEGs at 5.5 ms/image/core (measured, 500x375) = ~95 ms with 15 workers, ~180 ms with 8.
#                 ~0.1-0.2 s/step = 1.2-2.3 h per run; 4 rows x 3 seeds = ~15-28 GPU-h
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

begin jitter_table4
S=c100-lt-r100; D="--dataset cifar100 --imb 100"
share "jitter_table1/ride-4e-reduce/$S" with-replacement "$S" $RIDE4 --reduce $RIDE_BASE $D
share "jitter_table1/j-sampling+ride-4e-reduce/$S" jitter-with-replacement "$S" $RIDE4 --reduce --sampler jitter1 $D
share "jitter_table1/ride-4e-reduce-shuffle/$S" without-replacement "$S" $RIDE4 --reduce $RIDE_SHUFFLE $D
share "jitter_table3/jitter-without-replacement/$S" jitter-without-replacement "$S" $RIDE4 --reduce --sampler jitter-noreplace $D
S=imagenet-lt; D="--dataset imagenet_lt"
cell with-replacement "$S" $RIDE4 --reduce $RIDE_BASE $D
cell jitter-with-replacement "$S" $RIDE4 --reduce --sampler jitter1 $D
cell without-replacement "$S" $RIDE4 --reduce $RIDE_SHUFFLE $D
cell jitter-without-replacement "$S" $RIDE4 --reduce --sampler jitter-noreplace $D
run_all
sampler_figure
