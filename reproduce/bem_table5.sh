#!/usr/bin/env bash
# BEM mixing-method ablation (structure inferred, spec bem.md §3.3 item 4): MixUp, CutMix, SaliencyMix and
#   CamMix, each in-batch (partner from the same batch, --no-bank) and from the class-balanced mix bank (--bank),
#   on FixMatch+ACR, CIFAR-10-LT gamma = 100, N1/M1 = 1500/3000, consistent; entropy parts (ESS/ESM/ECB) off so
#   that only the mixing differs. WRN-28-2, 250k steps, 3 seeds. The ACR row and the two CamMix rows are
#   Table 1 / Table 4 runs (same run dirs). No paper numbers survive (all "–").
# Usage: bash reproduce/bem_table5.sh   [SEEDS=3 SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step per model and the formula: docs/reproduce.md, "GPU-hour estimates"):
#   WRN-28-2: 4 ms/step x 250k steps = 0.28 h per run
#   6 new rows x 3 seeds = 18 runs x 0.28 h = ~5.0 GPU-h (+ 9 runs = ~2.5 GPU-h for the shared rows if not yet run)
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

S=$ABL_SETTING
ACR=$ABL_ACR
OFF=$ABL_OFF

begin bem_table5
share "bem_table1/fixmatch+acr/$S" fixmatch+acr "$S" $ACR
for mix in mixup cutmix saliencymix cammix; do
  for bank in inbatch bank; do
    flag=--bank; row=fixmatch+acr+$mix+bank; off=$OFF
    if [ "$bank" = inbatch ]; then flag=--no-bank; row=fixmatch+acr+$mix-inbatch; off=$ABL_OFF_INBATCH; fi
    if [ "$mix" = cammix ]; then
      share "bem_table4/$row/$S" "$row" "$S" $ACR --bem --mix "$mix" "$flag" $off
    else
      cell "$row" "$S" $ACR --bem --mix "$mix" "$flag" $off
    fi
  done
done
run_all
