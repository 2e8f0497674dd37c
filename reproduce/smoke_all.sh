#!/usr/bin/env bash
# Every reproduce/ script in SMOKE=1 mode (a few CPU steps on `synthetic`), as CI runs them; prints the time of each.
set -euo pipefail
cd "$(dirname "$0")/.."
export SMOKE=1
for s in reproduce/bem_table{1,2,3,4,5}.sh reproduce/bem_fig1.sh reproduce/bem_fig_cammix.sh \
         reproduce/jitter_table{1,2,3,4,5}.sh reproduce/jitter_fig_theory.sh; do
  t=$(date +%s)
  name=$(basename "$s" .sh)
  bash "$s" > "/tmp/smoke_$name.log" 2>&1 || { echo "FAILED: $s"; tail -20 "/tmp/smoke_$name.log"; exit 1; }
  # each script must have written its table or figure
  out=results/smoke/$name.md; [ "$name" = jitter_fig_theory ] && out=results/jitter_fig_theory.png
  [ -s "$out" ] || { echo "FAILED: $s wrote no $out"; exit 1; }
  echo "ok  $s  $(( $(date +%s) - t )) s  -> $out"
done
