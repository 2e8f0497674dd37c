#!/usr/bin/env bash
# BEM Fig. 1 (caption recovered, spec bem.md §3.1), CIFAR-10-LT:
#   (a)-(c) class-wise unlabeled quantity vs class-wise entropy of the unlabeled data, consistent / uniform /
#           reversed (gamma = 100, N1/M1 = 1500/3000), from FixMatch+ACR+BEM runs: the last evaluation record of
#           metrics.jsonl (keys u_counts, u_entropy) against the true per-class unlabeled counts (data.lt_counts)
#   (d)     BEM's accuracy gain per framework (FixMatch, +LA, +ABC, +ACR) in the consistent setting, averaged
#           over the four consistent CIFAR-10-LT columns of Table 1; paper: 11.8 / 4.4 / 1.4 / 2.5
#   Every run is a Table 1 / Table 2 run (same run dirs): after those two scripts this only draws the figure.
#   and BEM's bank over training (s_c, r_c, w_c, e^x/e^u, queue fill, loss-mass shares) from the `bem` block of
#   the same metrics.jsonl records, for the consistent CIFAR-10-LT FixMatch+ACR+BEM run (seed 0)
# Output: results/bem_fig1.png, results/bem_fig1.md, results/bem_dynamics.png and results/bem_dynamics.md
# Usage: bash reproduce/bem_fig1.sh   [SEEDS=3 SMOKE=1 DRY_RUN=1]
#
# GPU-hours, ESTIMATE (not measured; ms/step and formula: docs/reproduce.md): 0 after Tables 1-2; otherwise
#   8 rows x 4 settings x 3 seeds x 0.28 h (WRN-28-2: 4 ms/step x 250k) = ~27 GPU-h, + 6 runs x 0.28 h = ~1.7 GPU-h
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/common.sh

begin bem_fig1
# (d): Table 1's consistent CIFAR-10-LT cells, all four frameworks with and without BEM
FRAMEWORKS="fixmatch la abc acr"
for g in 100 150; do
  for nm in 500/4000 1500/3000; do
    n=${nm%/*}; m=${nm#*/}
    OWNER=bem_table1 bem_rows "c10-g$g-n$n-m$m" --dataset cifar10 --n1 "$n" --m1 "$m" --imb-l "$g" --setting consistent
  done
done
# (a)-(c): consistent is in (d) already; uniform and reversed are Table 2's cells
for s in uniform reversed; do
  share "bem_table2/fixmatch+acr+bem/c10-g100-$s-n1500-m3000" fixmatch+acr+bem "c10-g100-$s-n1500-m3000" \
    --task ltssl --alg acr --bem --dataset cifar10 --n1 1500 --m1 3000 --imb-l 100 --setting "$s"
done
run_all
DYN="$RUNS/bem_table1/fixmatch+acr+bem/c10-g100-n1500-m3000/seed0"
echo "+ $PYTHON report.py dynamics --run $DYN --out $RESULTS"
[ "$DRY_RUN" = 1 ] || "$PYTHON" report.py dynamics --run "$DYN" --out "$RESULTS"
