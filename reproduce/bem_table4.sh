#!/usr/bin/env bash
# BEM ablation table (structure inferred, spec bem.md §3.3 item 4): BEM's parts added one at a time on
#   FixMatch+ACR, CIFAR-10-LT gamma = 100, N1/M1 = 1500/3000, consistent; WRN-28-2, 250k steps, 3 seeds.
#   Rows (cumulative): ACR | + CamMix in-batch | + class-balanced mix bank (CBMB) | + ESS | + ESM | + ECB (= full BEM).
#   The first and last rows are Table 1's runs (same run dirs). No paper numbers survive (all "–").
#   Two more rows are ablations of OUR reconstruction, not of the paper (README "ECB scope"): full BEM with
#   the ECB weights on every unlabeled term (--ecb-scope all: unmixed views, ACR's L_u^b too) and with them on
#   the target label only (--ecb-scope target: the pasted label, already drawn by ESS, is not weighted again).
# Usage: bash reproduce/bem_table4.sh   [SEEDS=3 SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step per model and the formula: docs/reproduce.md, "GPU-hour estimates"):
#   WRN-28-2: 4 ms/step x 250k steps = 0.28 h per run
#   6 new rows x 3 seeds = 18 runs x 0.28 h = ~5.0 GPU-h (+ 6 runs = ~1.7 GPU-h if Table 1 has not run)
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

S=$ABL_SETTING
ACR=$ABL_ACR
OFF=$ABL_OFF

begin bem_table4
share "bem_table1/fixmatch+acr/$S" fixmatch+acr "$S" $ACR
cell fixmatch+acr+cammix-inbatch "$S" $ACR --bem --mix cammix --no-bank $ABL_OFF_INBATCH
cell fixmatch+acr+cammix+bank "$S" $ACR --bem --mix cammix --bank $OFF
cell fixmatch+acr+cammix+bank+ess "$S" $ACR --bem --mix cammix --bank --ess mul --esm off --ecb off
cell fixmatch+acr+cammix+bank+ess+esm "$S" $ACR --bem --mix cammix --bank --ess mul --esm class --ecb off
share "bem_table1/fixmatch+acr+bem/$S" fixmatch+acr+cammix+bank+ess+esm+ecb "$S" $ACR --bem
cell recon-ablation-ecb-scope-all "$S" $ACR --bem --ecb-scope all
cell recon-ablation-ecb-scope-target "$S" $ACR --bem --ecb-scope target
run_all
