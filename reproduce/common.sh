#!/usr/bin/env bash
# reproduce/common.sh -- helpers sourced by every reproduce/<table>.sh; not meant to be run on its own.
#
# A script declares its cells (row x setting), then calls run_all:
#   begin TABLE                      # runs/TABLE/, results/TABLE.md, `python report.py TABLE`
#   cell ROW SETTING FLAGS...        # trains in runs/TABLE/ROW/SETTING/seed<k>
#   share DIR ROW SETTING FLAGS...   # reuses another table's run dir runs/DIR/seed<k>; FLAGS must be that cell's
#   run_all                          # data preflight, plan.tsv, every cell x seed through train.py, then report.py
#
# Run-dir / label convention (report.py reads it back; no other label file):
#   runs/<table>/<row>/<setting>/seed<k>/  row and setting ARE the directory names and the `row`/`setting`
#                                          keys of reproduce/paper_numbers.csv
#   runs/<table>/plan.tsv                  row<TAB>setting<TAB>dir (relative to runs/, without seed<k>) of every
#                                          cell the script declares, including cells whose dir belongs to another
#                                          table (shared runs are trained once, e.g. Table 4's ACR+BEM = Table 1's)
# A run whose summary.json says "finished": true is skipped; an existing unfinished run dir gets --resume.
#
# Environment (all optional):
#   SEEDS=3           seeds 0..SEEDS-1; seeds are the outer loop, so a full table for seed 0 comes first
#   ONLY=REGEX        run only cells whose "row/setting" matches (grep -E), e.g. ONLY=c10 or ONLY='^fixmatch\+acr'
#                     (also the way to split one table over several GPUs: one ONLY per box)
#   SMOKE=1           CPU pipeline check: synthetic data, a few steps, 1 seed, every row once;
#                     writes runs/smoke/... and results/smoke/...
#   DRY_RUN=1         print the commands, run nothing
#   DATA_DIR=./datasets  RUNS=runs  RESULTS=results  PYTHON=.venv/bin/python (falls back to python3)
#   SMOKE_SSL, SMOKE_LT  flags appended in SMOKE mode (argparse keeps the last occurrence of a flag)
# The GPU is chosen by CUDA_VISIBLE_DEVICES only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-.venv/bin/python}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
SEEDS=${SEEDS:-3}
SMOKE=${SMOKE:-0}
DRY_RUN=${DRY_RUN:-0}
ONLY=${ONLY:-}
DATA_DIR=${DATA_DIR:-./datasets}
RUNS=${RUNS:-runs}
RESULTS=${RESULTS:-results}
# SMOKE: synthetic 32 px data (600 images/class, so N1/M1 shrink to 150/300), WRN-28-1, 4 steps of batch 8;
# LT: 2 epochs of 3 steps of batch 32.
SMOKE_SSL=${SMOKE_SSL:-"--dataset synthetic --img-size 32 --model wrn --width 1 --n1 150 --m1 300 --batch-size 8 --iters 4 --eval-every 4 --device cpu --no-progress"}
SMOKE_LT=${SMOKE_LT:-"--dataset synthetic --epochs 2 --iters-per-epoch 3 --eval-every 2 --batch-size 32 --device cpu --no-progress"}
if [ "$SMOKE" = 1 ]; then RUNS=$RUNS/smoke; RESULTS=$RESULTS/smoke; SEEDS=1; fi

# Flag groups shared by several scripts (a shared run dir needs identical flags in every script).
RIDE4="--task lt --model ride --experts 4 --loss ride"           # RIDE 4 experts, RIDE loss (LDAM + DRW in stage 2)
SINGLE="--task lt --model resnet32 --sampler jitter2 --group-l2norm multi"  # 500-epoch recipe = train.py defaults
ABL_SETTING=c10-g100-n1500-m3000                                   # BEM ablations: CIFAR-10-LT, consistent
ABL_DATA="--dataset cifar10 --n1 1500 --m1 3000 --imb-l 100 --setting consistent"
ABL_ACR="--task ltssl --alg acr $ABL_DATA"                        # base of both BEM ablation tables
ABL_OFF="--ess off --esm off --ecb off"                            # entropy parts off

# The rows of jitter Tables 1 and 2: jitter_main_rows <setting> <dataset flags...>
# Baselines = RIDE's public code as the paper ran it ("*: results reported by their public code of sampling with
# replacement"): instance sampling WITH replacement and RIDE's LDAM-based loss from epoch 0 (--ride-stage1 ldam).
# RIDE's own DataLoader(shuffle=True) samples WITHOUT replacement: that baseline is its own row (*-shuffle).
# J-sampling + RIDE rows keep the paper's CE in stage 1 and LDAM-DRW after (--ride-stage1 ce, the default).
RIDE_BASE="--sampler instance --ride-stage1 ldam"
RIDE_SHUFFLE="--sampler shuffle --ride-stage1 ldam"
jitter_main_rows() {
  local s=$1; shift
  cell j-sampling+gl2norm+longtrain "$s" $SINGLE "$@"
  cell ride-4e "$s" $RIDE4 --no-reduce $RIDE_BASE "$@"
  cell ride-4e-reduce "$s" $RIDE4 --reduce $RIDE_BASE "$@"
  cell ride-4e-shuffle "$s" $RIDE4 --no-reduce $RIDE_SHUFFLE "$@"
  cell ride-4e-reduce-shuffle "$s" $RIDE4 --reduce $RIDE_SHUFFLE "$@"
  cell j-sampling+ride-4e "$s" $RIDE4 --no-reduce --sampler jitter1 "$@"
  cell j-sampling+ride-4e-reduce "$s" $RIDE4 --reduce --sampler jitter1 "$@"
  # beyond the paper: Method 2 with RIDE (Method 1 at RIDE's alpha 0.05 samples like instance sampling)
  cell j-sampling-m2+ride-4e-beyond-paper "$s" $RIDE4 --no-reduce --sampler jitter2 "$@"
  cell j-sampling-m2+ride-4e-reduce-beyond-paper "$s" $RIDE4 --reduce --sampler jitter2 "$@"
}

# The sampler figure beside a jitter table: delta_t and the tail/head sampling ratio of every row over epochs.
sampler_figure() {
  local cmd=("$PYTHON" report.py sampler "$TABLE" --runs "$RUNS" --out "$RESULTS")
  echo "+ ${cmd[*]}"
  [ "$DRY_RUN" = 1 ] || "${cmd[@]}"
}

TABLE=
C_DIR=(); C_ROW=(); C_SET=(); C_FLAGS=(); SEL=()

begin() { TABLE=$1; C_DIR=(); C_ROW=(); C_SET=(); C_FLAGS=(); }

share() {
  C_DIR+=("$1"); C_ROW+=("$2"); C_SET+=("$3"); shift 3; C_FLAGS+=("$*")
}

cell() { local row=$1 setting=$2; shift 2; share "$TABLE/$row/$setting" "$row" "$setting" "$@"; }

# The frameworks BEM plugs into (--alg), each without and with --bem; dirs of table ${OWNER:-$TABLE}.
bem_rows() {
  local setting=$1 f row; shift
  for f in $FRAMEWORKS; do
    row=fixmatch; [ "$f" = fixmatch ] || row=fixmatch+$f
    share "${OWNER:-$TABLE}/$row/$setting" "$row" "$setting" --task ltssl --alg "$f" "$@"
    share "${OWNER:-$TABLE}/$row+bem/$setting" "$row+bem" "$setting" --task ltssl --alg "$f" --bem "$@"
  done
}

# The train.py flags of cell $1; SMOKE appends its overrides (the last occurrence of a flag wins).
_flags() {
  local f=${C_FLAGS[$1]}
  if [ "$SMOKE" = 1 ]; then
    case " $f " in *" --task lt "*) f="$f $SMOKE_LT" ;; *) f="$f $SMOKE_SSL" ;; esac
  fi
  echo "$f"
}

# Value of the last occurrence of flag $1 among the words $2...
_last() {
  local want=$1 prev= v= a; shift
  for a in "$@"; do if [ "$prev" = "$want" ]; then v=$a; fi; prev=$a; done
  echo "$v"
}

# Cells to run: those matching ONLY; in SMOKE mode each row once, spread diagonally over the settings.
_select() {
  SEL=()
  local i n=${#C_ROW[@]} nset
  local -a keep=()
  for ((i = 0; i < n; i++)); do
    if [ -z "$ONLY" ] || grep -Eq -- "$ONLY" <<<"${C_ROW[i]}/${C_SET[i]}"; then keep+=("$i"); fi
  done
  if [ "$SMOKE" != 1 ]; then SEL=("${keep[@]}"); return 0; fi
  local -A row_done=() set_done=()
  nset=$(for i in "${keep[@]}"; do echo "${C_SET[i]}"; done | sort -u | wc -l)
  for i in "${keep[@]}"; do
    [ -z "${row_done[${C_ROW[i]}]:-}" ] || continue
    if [ -n "${set_done[${C_SET[i]}]:-}" ] && [ "${#set_done[@]}" -lt "$nset" ]; then continue; fi
    SEL+=("$i"); row_done[${C_ROW[i]}]=1; set_done[${C_SET[i]}]=1
  done
  for i in "${keep[@]}"; do        # rows seen only with settings that were already covered
    [ -z "${row_done[${C_ROW[i]}]:-}" ] || continue
    SEL+=("$i"); row_done[${C_ROW[i]}]=1
  done
}

# One `train.py --check-data` per dataset before any training; it prints the one-line reason and exits 2.
_preflight() {
  local i f task ds sz key seen=" "
  for i in "${SEL[@]}"; do
    f=$(_flags "$i")
    # shellcheck disable=SC2086  # flags are plain words
    task=$(_last --task $f); ds=$(_last --dataset $f); sz=$(_last --img-size $f)
    key="${task}:${ds}:${sz}"
    [[ $seen == *" $key "* ]] && continue
    seen+="$key "
    local cmd=("$PYTHON" train.py --check-data --task "${task:-ltssl}" --dataset "$ds" --img-size "${sz:-32}"
               --data-dir "$DATA_DIR")
    if [ "$DRY_RUN" = 1 ]; then echo "+ ${cmd[*]}"; else "${cmd[@]}" || exit 2; fi
  done
}

_write_plan() {
  [ "$DRY_RUN" = 1 ] && return 0
  mkdir -p "$RUNS/$TABLE"
  local i
  for ((i = 0; i < ${#C_ROW[@]}; i++)); do
    printf '%s\t%s\t%s\n' "${C_ROW[i]}" "${C_SET[i]}" "${C_DIR[i]}"
  done >"$RUNS/$TABLE/plan.tsv"
}

_finished() { [ -f "$1/summary.json" ] && grep -Eq '"finished"[[:space:]]*:[[:space:]]*true' "$1/summary.json"; }

_run_one() {
  local i=$1 k=$2 out="$RUNS/${C_DIR[$1]}/seed$2"
  local -a resume=()
  echo "[$TABLE] cell ${C_ROW[i]} | ${C_SET[i]} | seed $k"
  if _finished "$out"; then echo "[$TABLE] finished, skipped: $out"; return 0; fi
  [ -d "$out" ] && resume=(--resume)
  # shellcheck disable=SC2046  # flags are plain words
  local cmd=("$PYTHON" train.py $(_flags "$i") --seed "$k" --data-dir "$DATA_DIR" --out "$out" "${resume[@]}")
  echo "+ ${cmd[*]}"
  [ "$DRY_RUN" = 1 ] || "${cmd[@]}"
}

_report() {
  local cmd=("$PYTHON" report.py "$TABLE" --runs "$RUNS" --out "$RESULTS" "$@")
  echo "+ ${cmd[*]}"
  [ "$DRY_RUN" = 1 ] || "${cmd[@]}"
}

run_all() {
  _select
  if [ "${#SEL[@]}" = 0 ]; then echo "[$TABLE] no cell matches ONLY='$ONLY'" >&2; exit 2; fi
  echo "[$TABLE] ${#SEL[@]} cells x $SEEDS seeds -> $RUNS (SMOKE=$SMOKE)"
  _preflight
  _write_plan
  local i k
  for ((k = 0; k < SEEDS; k++)); do
    for i in "${SEL[@]}"; do _run_one "$i" "$k"; done
  done
  _report "$@"
}
