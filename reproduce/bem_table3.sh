#!/usr/bin/env bash
# BEM Table 3 (numbers via SC-SSL / LoFT, spec bem.md §3.2): ImageNet-127 (CoSSL protocol, 10 % labeled,
#   gamma ~ 286) at 32x32 and 64x64, CIFAR-style ResNet-50 (CamMix uses Grad-CAM weights at layer3).
#   Rows: FixMatch, FixMatch+BEM, FixMatch+ACR, FixMatch+ACR+BEM; 250k steps, 3 seeds.
#   Needs the downsampled ImageNet pickles + CoSSL's 127-class mapping under $DATA_DIR (see README "Datasets").
# Usage: bash reproduce/bem_table3.sh   [SEEDS=3 ONLY=in127-32 SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step per model and the formula: docs/reproduce.md, "GPU-hour estimates"):
#   ResNet-50 at 32 px: 10 ms/step x 250k = 0.7 h per run; at 64 px: 40 ms/step x 250k = 2.8 h per run
#   4 rows x 3 seeds x (0.7 + 2.8) h = ~42 GPU-h
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

FRAMEWORKS=${FRAMEWORKS:-"fixmatch acr"}

begin bem_table3
for size in 32 64; do
  bem_rows "in127-$size" --dataset imagenet127 --img-size "$size" --model resnet50
done
run_all
