#!/usr/bin/env bash
# BEM CamMix visualisation (the paper's CAM / SaliencyMix figure was not recovered, spec bem.md §3.1):
#   for test images of a trained FixMatch+ACR+BEM model (CIFAR-10-LT, gamma = 100, 1500/3000, consistent; the
#   Table 1 run, seed 0): the image, its CAM with the CamMix box (tau_c from the run's args) and the SaliencyMix
#   box, and the mixed images that CamMix and SaliencyMix paste into the same target images.
#   RUN=runs/<...>/seed0 plots another finished WRN run instead (nothing is trained then).
# Output: results/bem_fig_cammix.png
# Usage: bash reproduce/bem_fig_cammix.sh   [RUN=dir SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step and formula: docs/reproduce.md): 0 if Table 1 ran; else one run,
#   WRN-28-2: 4 ms/step x 250k = ~0.3 GPU-h
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

if [ -n "${RUN:-}" ]; then
  echo "+ $PYTHON report.py bem_fig_cammix --run $RUN --out $RESULTS"
  [ "$DRY_RUN" = 1 ] || "$PYTHON" report.py bem_fig_cammix --run "$RUN" --out "$RESULTS"
  exit 0
fi
SEEDS=1            # the figure needs one model
begin bem_fig_cammix
share "bem_table1/fixmatch+acr+bem/$ABL_SETTING" fixmatch+acr+bem "$ABL_SETTING" --task ltssl --alg acr --bem $ABL_DATA
run_all
