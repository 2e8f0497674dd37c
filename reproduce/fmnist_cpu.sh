#!/usr/bin/env bash
# CPU sanity runs on Fashion-MNIST-LT (the real data this workplace has offline), behind the numbers in README
# "Results on this machine". Not a paper table: a short schedule whose ORDERING is checked against the papers'.
#   LTSSL: gamma = 100, ACR split, N1/M1 = 1000/2000; supervised, FixMatch, +LA, +ABC, +ACR, FixMatch+BEM,
#          ACR+BEM; WRN-28-1, batch 32, mu 1, 250 steps, lr 0.1, BN momentum 0.1, EMA 0.99 (short-schedule
#          values: the paper's 0.001 / 0.999 average over thousands of steps), --epoch-steps 25 (ACR's epoch,
#          so its tau estimate and BEM's d^u start within the run), eval every 125 steps.
#   LT:    imbalance 100 (6000 -> 60), ResNet-32, batch 64, 10 epochs x 30 steps, the jitter recipe scaled to
#          10 epochs (lr 0.5 in the single-expert recipe, here 0.1 for the short run); samplers instance /
#          jitter1 / jitter2 / jitter-noreplace, and jitter2 with group L2norm.
# Runtime on an idle 2-core CPU: about 50 min for both seeds. SEEDS (default "0 1"), ONLY=ltssl|lt,
# DRY_RUN=1 (print the commands, run nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
source reproduce/knobs.sh      # a bad knob: one line, exit 2, before anything runs
knob_python
SEEDS=${SEEDS:-"0 1"}
ONLY=${ONLY:-}
ROOT=${ROOT:-runs/fmnist_cpu}
DRY_RUN=${DRY_RUN:-0}
knob_seeds SEEDS
knob_choice ONLY '' ltssl lt
knob_switch DRY_RUN
say() { if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi; }
say "$PYTHON" train.py --check-data --dataset fmnist
SUP=(--dataset fmnist --n1 1000 --imb-l 100 --split acr --width 1 --batch-size 32 --iters 250 --eval-every 125
     --lr 0.1 --bn-momentum 0.1 --ema 0.99 --device cpu --no-progress)
SSL=("${SUP[@]}" --m1 2000 --setting consistent --mu 1 --epoch-steps 25)   # + the unlabeled recipe (SSL --alg only)
LT=(--task lt --dataset fmnist --imb 100 --model resnet32 --batch-size 64 --epochs 10 --iters-per-epoch 30 --lr 0.1
    --eval-every 5 --device cpu --no-progress)
run() {  # run <dir> <flags...>
  local out=$1; shift
  [ -f "$out/summary.json" ] && return
  local resume=(); [ -f "$out/args.json" ] && resume=(--resume)
  say "$PYTHON" train.py "$@" --out "$out" "${resume[@]}"
}
for seed in $SEEDS; do
  if [ "$ONLY" != lt ]; then
    run "$ROOT/ltssl/supervised/seed$seed" "${SUP[@]}" --alg supervised --seed $seed
    for alg in fixmatch la abc acr; do run "$ROOT/ltssl/$alg/seed$seed" "${SSL[@]}" --alg $alg --seed $seed; done
    for alg in fixmatch acr; do run "$ROOT/ltssl/$alg+bem/seed$seed" "${SSL[@]}" --alg $alg --bem --seed $seed; done
  fi
  if [ "$ONLY" != ltssl ]; then
    for s in instance jitter1 jitter2 jitter-noreplace; do
      run "$ROOT/lt/$s/seed$seed" "${LT[@]}" --sampler $s --group-l2norm off --seed $seed
    done
    run "$ROOT/lt/jitter2+gl2norm/seed$seed" "${LT[@]}" --sampler jitter2 --group-l2norm multi --seed $seed
  fi
done
[ "$DRY_RUN" = 1 ] && { echo "+ $PYTHON - $ROOT  (the summary table)"; exit 0; }
"$PYTHON" - "$ROOT" <<'PY'
import json, sys, glob, os, numpy as np
from tabulate import tabulate
root = sys.argv[1]
for task in ('ltssl', 'lt'):
    rows = []
    for d in sorted(glob.glob(f'{root}/{task}/*')):
        ss = [json.load(open(f)) for f in sorted(glob.glob(f'{d}/seed*/summary.json'))]
        if not ss: continue
        f = lambda k: f"{np.mean([s[k] for s in ss]):.2f} ± {np.std([s[k] for s in ss]):.2f}"
        # LT (6000 -> 60 images) has no class under 20 images: its smallest group is RIDE's medium (20-100)
        rows.append([os.path.basename(d), len(ss), f('last'), f('head_half'), f('tail_half'),
                     f('few' if task == 'ltssl' else 'medium'), f"{np.mean([s['timing']['wall_time_s'] for s in ss]):.0f}"])
    if rows:
        small = 'few (<20 labels)' if task == 'ltssl' else 'medium (60, 100 imgs)'
        print(f'\n{task}: {ss[0]["statistic"]}\n')
        print(tabulate(rows, headers=['run', 'seeds', 'last', 'head half', 'tail half', small, 'wall s'], tablefmt='github'))
PY
