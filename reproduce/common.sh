#!/usr/bin/env bash
# reproduce/common.sh -- helpers sourced by every reproduce/<table>.sh; not meant to be run on its own.
#
# A script declares its cells (row x setting), then calls run_all:
#   begin TABLE                      # runs/TABLE/, results/TABLE.md, `python report.py TABLE`
#   cell ROW SETTING FLAGS...        # trains in runs/TABLE/ROW/SETTING/seed<k>
#   share DIR ROW SETTING FLAGS...   # reuses another table's run dir runs/DIR/seed<k>; FLAGS must be that cell's
#   pair NAME ROW/SETTING ROW/SETTING  # two declared cells the table compares; they must differ in exactly one flag
#   run_all                          # data preflight, plan.tsv, every cell x seed through train.py, then report.py
#
# Run-dir / label convention (report.py reads it back; no other label file):
#   runs/<table>/<row>/<setting>/seed<k>/  row and setting ARE the directory names and the `row`/`setting`
#                                          keys of reproduce/paper_numbers.csv
#   runs/<table>/plan.tsv                  row<TAB>setting<TAB>dir (relative to runs/, without seed<k>) of every
#                                          cell the script declares, including cells whose dir belongs to another
#                                          table (shared runs are trained once, e.g. Table 4's ACR+BEM = Table 1's)
#   runs/<table>/pairs.tsv                 name<TAB>row A<TAB>setting A<TAB>row B<TAB>setting B<TAB>the flag that
#                                          differs (A -> B): the pairs report.py prints B - A for
# A run whose summary.json says "finished": true is skipped; an existing unfinished run dir gets --resume.
#
# Environment (all optional):
#   SEEDS=3           seeds 0..SEEDS-1; seeds are the outer loop, so a full table for seed 0 comes first
#   ONLY=REGEX        run only cells whose "row/setting" matches (grep -E), e.g. ONLY=c10 or ONLY='^fixmatch\+acr'
#                     (also the way to split one table over several GPUs: one ONLY per box)
#   ROW=NAME          run only the row NAME, matched exactly (ROW=fixmatch+acr+bem), or one cell: ROW=NAME/SETTING;
#                     it sets ONLY (not both). A finished cell is skipped as always: delete its run dir to train it again
#   SMOKE=1           CPU pipeline check: synthetic data, a few steps, 1 seed, every row once;
#                     writes runs/smoke/... and results/smoke/...
#   DRY_RUN=1         print the commands, run nothing
#   DATA_DIR=./datasets  RUNS=runs  RESULTS=results  PYTHON=.venv/bin/python (falls back to python3)
#   SMOKE_SSL, SMOKE_LT  flags appended in SMOKE mode (argparse keeps the last occurrence of a flag)
#   GPUS=0,1,2,3 RUNS_PER_GPU=2   run the plan's runs concurrently: GNU parallel (else xargs -P) with
#                     len(GPUS) x RUNS_PER_GPU workers; each run claims a free slot (flock) and gets that slot's
#                     CUDA_VISIBLE_DEVICES; output per run in runs/<table>/logs/; skip/resume as in the serial loop
#   SLURM=1           write runs/<table>/sbatch.sh (a job array: one task per RUNS_PER_GPU runs on one GPU) and
#                     runs/<table>/jobs.tsv instead of running; SBATCH_ARGS="--partition=x --time=12:00:00" adds
#                     #SBATCH lines; then `sbatch runs/<table>/sbatch.sh` and, when it is done, the printed report
# Without GPUS the GPU is chosen by CUDA_VISIBLE_DEVICES only (one run at a time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source reproduce/knobs.sh
knob_python
SEEDS=${SEEDS:-3}
SMOKE=${SMOKE:-0}
DRY_RUN=${DRY_RUN:-0}
ONLY=${ONLY:-}
ROW=${ROW:-}
if [ -n "$ROW" ]; then   # an exact row (or row/setting) name as an ONLY regex: every ERE metacharacter escaped
  if [ -n "$ONLY" ]; then echo "reproduce: give ROW or ONLY, not both (ROW=$ROW, ONLY=$ONLY)" >&2; exit 2; fi
  ONLY="^$(printf '%s' "$ROW" | sed 's/[][\.*^$+?(){}|]/\\&/g')$(case $ROW in */*) echo '$' ;; *) echo / ;; esac)"
fi
DATA_DIR=${DATA_DIR:-./datasets}
RUNS=${RUNS:-runs}
GPUS=${GPUS:-}
RUNS_PER_GPU=${RUNS_PER_GPU:-1}
SLURM=${SLURM:-0}
RESULTS=${RESULTS:-results}
# SMOKE: synthetic 32 px data (600 images/class, so N1/M1 shrink to 150/300), WRN-28-1, 4 steps of batch 8;
# LT: 2 epochs of 3 steps of batch 32.
SMOKE_SSL=${SMOKE_SSL:-"--dataset synthetic --img-size 32 --model wrn --width 1 --n1 150 --m1 300 --batch-size 8 --iters 4 --eval-every 4 --device cpu --no-progress"}
SMOKE_LT=${SMOKE_LT:-"--dataset synthetic --epochs 2 --iters-per-epoch 3 --eval-every 2 --batch-size 32 --device cpu --no-progress"}
if [ "$SMOKE" = 1 ]; then RUNS=$RUNS/smoke; RESULTS=$RESULTS/smoke; SEEDS=1; fi
# The knobs are checked before anything runs (reproduce/knobs.sh): one line naming the knob and the fix, exit 2.
knob_switch SMOKE DRY_RUN SLURM
knob_count SEEDS RUNS_PER_GPU
[[ -z $GPUS || $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || knob_fail "GPUS=$GPUS must be comma-separated GPU indices, e.g. GPUS=0,1"
_rc=0; grep -Eq -- "$ONLY" <<<'' 2>/dev/null || _rc=$?
[ "$_rc" -le 1 ] || knob_fail "ONLY=$ONLY is not an extended regular expression (grep -E); e.g. ONLY=c10 or ONLY='^fixmatch\+acr'"

# Flag groups shared by several scripts (a shared run dir needs identical flags in every script).
RIDE4="--task lt --model ride --experts 4 --loss ride"           # RIDE 4 experts, RIDE loss (LDAM + DRW in stage 2)
SINGLE="--task lt --model resnet32 --sampler jitter2 --group-l2norm multi"  # 500-epoch recipe = train.py defaults
ABL_SETTING=c10-g100-n1500-m3000                                   # BEM ablations: CIFAR-10-LT, consistent
ABL_DATA="--dataset cifar10 --n1 1500 --m1 3000 --imb-l 100 --setting consistent"
ABL_ACR="--task ltssl --alg acr $ABL_DATA"                        # base of both BEM ablation tables
ABL_OFF="--ess off --esm off --ecb off"                            # entropy parts off
ABL_OFF_INBATCH="--ecb off"      # in-batch rows: ESS/ESM shape bank draws only, so with --no-bank they are refused

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

# The six rows of the jitter ablations (Tables 3-5) at setting $1, RIDE 4 experts + reduce: with / without
# replacement (instance / shuffle) and the same jittered (jitter1 / jitter-noreplace), all CE in stage 1 (the
# multi-expert setting the ablations keep, jitter.md §4.4), and with / without replacement as RIDE's code runs
# them (its loss from epoch 0). $2 = shared: the 200-epoch CIFAR-100-LT runs, trained once (dirs of Tables 1 and 3).
ABL_ROWS=(with-replacement without-replacement jitter-with-replacement jitter-without-replacement
          with-replacement-ride-code without-replacement-ride-code)
ABL_FLAGS=("--sampler instance" "--sampler shuffle" "--sampler jitter1" "--sampler jitter-noreplace" "$RIDE_BASE"
           "$RIDE_SHUFFLE")
ABL_HOME=(jitter_table3/with-replacement jitter_table3/without-replacement jitter_table1/j-sampling+ride-4e-reduce
          jitter_table3/jitter-without-replacement jitter_table1/ride-4e-reduce jitter_table1/ride-4e-reduce-shuffle)
ablation_rows() {
  local s=$1 shared=$2 i; shift 2
  for i in "${!ABL_ROWS[@]}"; do
    if [ "$shared" = shared ] && [ "${ABL_HOME[i]%%/*}" != "$TABLE" ]; then
      share "${ABL_HOME[i]}/c100-lt-r100" "${ABL_ROWS[i]}" "$s" $RIDE4 --reduce ${ABL_FLAGS[i]} "$@"
    else
      cell "${ABL_ROWS[i]}" "$s" $RIDE4 --reduce ${ABL_FLAGS[i]} "$@"
    fi
  done
}
# Their pairs at setting $1, each one flag apart: the replacement mode, jitter vs none, the stage-1 loss (ldam -> ce).
replacement_pairs() {
  pair "with vs without replacement" "with-replacement/$1" "without-replacement/$1"
  pair "with vs without replacement, jittered" "jitter-with-replacement/$1" "jitter-without-replacement/$1"
  pair "with vs without replacement, RIDE's code" "with-replacement-ride-code/$1" "without-replacement-ride-code/$1"
}
jitter_pairs() {
  pair "jitter vs none, with replacement" "with-replacement/$1" "jitter-with-replacement/$1"
  pair "jitter vs none, without replacement" "without-replacement/$1" "jitter-without-replacement/$1"
}
loss_pairs() {
  pair "stage-1 loss, with replacement" "with-replacement-ride-code/$1" "with-replacement/$1"
  pair "stage-1 loss, without replacement" "without-replacement-ride-code/$1" "without-replacement/$1"
}

# The sampler figure beside a jitter table: delta_t and the tail/head sampling ratio of every row over epochs.
sampler_figure() {
  local cmd=("$PYTHON" report.py sampler "$TABLE" --runs "$RUNS" --out "$RESULTS")
  echo "+ ${cmd[*]}"
  [ "$DRY_RUN" = 1 ] || "${cmd[@]}"
}

TABLE=
C_DIR=(); C_ROW=(); C_SET=(); C_FLAGS=(); SEL=(); P_LINE=()

begin() { TABLE=$1; C_DIR=(); C_ROW=(); C_SET=(); C_FLAGS=(); P_LINE=(); }

# Index of the declared cell "row/setting" $1.
_cell_index() {
  local i
  for ((i = 0; i < ${#C_ROW[@]}; i++)); do
    if [ "${C_ROW[i]}/${C_SET[i]}" = "$1" ]; then echo "$i"; return 0; fi
  done
  echo "reproduce/common.sh: pair names $1, which $TABLE does not declare; declare the cell first" >&2
  exit 2
}

# The flags of cell $1 as "--flag value" lines, the last occurrence winning (--no-x = --x off, a bare --x = on).
_flag_values() {
  local -a w
  local -A v=()
  local i k
  read -ra w <<<"${C_FLAGS[$1]}"
  for ((i = 0; i < ${#w[@]}; i++)); do
    k=${w[i]}
    [[ $k == --* ]] || continue
    if [[ $k == --no-* ]]; then v[--${k#--no-}]=off
    elif [ $((i + 1)) -lt ${#w[@]} ] && [[ ${w[i + 1]} != --* ]]; then v[$k]=${w[i + 1]}
    else v[$k]=on; fi
  done
  for k in "${!v[@]}"; do echo "$k ${v[$k]}"; done | LC_ALL=C sort
}

# pair NAME A B: the table compares cells A and B (row/setting); refused unless they differ in exactly one flag.
pair() {
  local name=$1 a b diff n
  a=$(_cell_index "$2"); b=$(_cell_index "$3")
  diff=$(LC_ALL=C join -a1 -a2 -e '(default)' -o 0,1.2,2.2 <(_flag_values "$a") <(_flag_values "$b") |
         awk '$2 != $3 { printf "%s%s %s -> %s", (n++ ? "; " : ""), $1, $2, $3 }')
  n=$(grep -o ' -> ' <<<"$diff" | wc -l)
  if [ "$n" != 1 ]; then
    echo "reproduce/common.sh: pair '$name' ($2 vs $3) differs in $n flags (${diff:-none}); a pair changes one thing" >&2
    exit 2
  fi
  P_LINE+=("$name"$'\t'"${C_ROW[a]}"$'\t'"${C_SET[a]}"$'\t'"${C_ROW[b]}"$'\t'"${C_SET[b]}"$'\t'"$diff")
}

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
  local i p
  local -a f
  for p in "${P_LINE[@]}"; do
    IFS=$'\t' read -ra f <<<"$p"
    echo "[$TABLE] pair ${f[0]}: ${f[1]}/${f[2]} vs ${f[3]}/${f[4]} (differs in ${f[5]})"
  done
  [ "$DRY_RUN" = 1 ] && return 0
  mkdir -p "$RUNS/$TABLE"
  for ((i = 0; i < ${#C_ROW[@]}; i++)); do
    printf '%s\t%s\t%s\n' "${C_ROW[i]}" "${C_SET[i]}" "${C_DIR[i]}"
  done >"$RUNS/$TABLE/plan.tsv"
  rm -f "$RUNS/$TABLE/pairs.tsv"
  [ "${#P_LINE[@]}" = 0 ] || printf '%s\n' "${P_LINE[@]}" >"$RUNS/$TABLE/pairs.tsv"
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
  if [ "${#SEL[@]}" = 0 ] && [ -n "$ROW" ]; then
    echo "[$TABLE] no row or cell named ROW=$ROW; rows: $(printf '%s\n' "${C_ROW[@]}" | awk '!s[$0]++' | paste -sd' ')" >&2
    exit 2
  fi
  if [ "${#SEL[@]}" = 0 ]; then echo "[$TABLE] no cell matches ONLY='$ONLY'" >&2; exit 2; fi
  echo "[$TABLE] ${#SEL[@]} cells x $SEEDS seeds -> $RUNS (SMOKE=$SMOKE)"
  _preflight
  _write_plan
  if [ "$SLURM" = 1 ]; then _write_slurm "$@"; return 0; fi
  if [ -n "$GPUS" ]; then
    local failed=0
    _run_parallel || failed=$?
    _report "$@"
    if [ "$failed" != 0 ]; then echo "[$TABLE] some runs failed (exit $failed): see $RUNS/$TABLE/logs/" >&2; exit 1; fi
    return 0
  fi
  local i k
  for ((k = 0; k < SEEDS; k++)); do
    for i in "${SEL[@]}"; do _run_one "$i" "$k"; done
  done
  _report "$@"
}

# ------------------------------------------------------------------------------------------------
# Concurrent runs (GPUS / RUNS_PER_GPU) and Slurm job arrays (SLURM=1). One job = one run = one line of
# runs/<table>/jobs.tsv: out dir <TAB> label <TAB> train.py command without --resume (flags are plain words).
# `bash reproduce/common.sh --job JOBS N...` runs lines N... of JOBS with the serial loop's skip/resume rule.
# ------------------------------------------------------------------------------------------------

_jobs_tsv() {    # the jobs of the selected cells, seeds outer (as the serial loop)
  local i k out
  for ((k = 0; k < SEEDS; k++)); do
    for i in "${SEL[@]}"; do
      out="$RUNS/${C_DIR[i]}/seed$k"
      printf '%s\t%s\t%s\n' "$out" "[$TABLE] cell ${C_ROW[i]} | ${C_SET[i]} | seed $k" \
        "$PYTHON train.py $(_flags "$i") --seed $k --data-dir $DATA_DIR --out $out"
    done
  done
}

_run_parallel() {
  local -a gpus
  IFS=, read -ra gpus <<<"$GPUS"
  local ng=${#gpus[@]} n s dir="$RUNS/$TABLE" tool
  n=$(( ng * RUNS_PER_GPU ))
  if command -v parallel >/dev/null 2>&1; then tool="parallel --will-cite -j $n --line-buffer"
  else tool="xargs -P $n -n 1"; fi
  local m
  m=$(_jobs_tsv | wc -l)
  echo "[$TABLE] $m runs on GPUs $GPUS x $RUNS_PER_GPU runs per GPU = $n workers: seq 1 $m | $tool bash reproduce/common.sh --job $dir/jobs.tsv"
  if [ "$DRY_RUN" = 1 ]; then
    for ((s = 0; s < n; s++)); do echo "  slot $s -> GPU ${gpus[s % ng]}"; done
    _jobs_tsv | while IFS=$'\t' read -r out label cmd; do echo "$label"; echo "+ $cmd"; done
    return 0
  fi
  mkdir -p "$dir/slots" "$dir/logs"
  _jobs_tsv >"$dir/jobs.tsv"
  rm -f "$dir"/slots/gpu.* "$dir"/slots/lock.*
  for ((s = 0; s < n; s++)); do echo "${gpus[s % ng]}" >"$dir/slots/gpu.$s"; done
  # shellcheck disable=SC2086  # $tool is a command line
  seq 1 "$m" | PYTHON="$PYTHON" DATA_DIR="$DATA_DIR" $tool bash reproduce/common.sh --job "$dir/jobs.tsv"
}

# One job line: claim a free GPU slot (at most as many jobs run as there are slots), skip if finished, resume if
# a killed run left its dir, output to logs/<line>.log.
_job() {
  local jobs=$1 dir line out label cmd fd f rc=0 claimed= p
  local -a pids=()
  dir=$(dirname "$jobs")
  shift
  for line in "$@"; do
    IFS=$'\t' read -r out label cmd < <(sed -n "${line}p" "$jobs")
    if [ -d "$dir/slots" ]; then
      for f in "$dir"/slots/gpu.*; do
        exec {fd}>>"$dir/slots/lock.${f##*.}"
        if flock -n "$fd"; then claimed=$f; break; fi
        exec {fd}>&-
      done
      [ -n "$claimed" ] || { echo "$label: no free GPU slot" >&2; return 1; }
      read -r CUDA_VISIBLE_DEVICES <"$claimed"
      export CUDA_VISIBLE_DEVICES
    fi
    if _finished "$out"; then echo "$label: finished, skipped: $out"; continue; fi
    [ -d "$out" ] && cmd="$cmd --resume"
    mkdir -p "$dir/logs"
    echo "$label -> GPU ${CUDA_VISIBLE_DEVICES:-(as set)} (log $dir/logs/$line.log)"
    echo "+ $cmd" >"$dir/logs/$line.log"
    # shellcheck disable=SC2086  # flags are plain words
    if [ "$#" -gt 1 ]; then $cmd >>"$dir/logs/$line.log" 2>&1 & pids+=($!); else $cmd >>"$dir/logs/$line.log" 2>&1 || rc=$?; fi
  done
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  [ "$rc" = 0 ] || echo "$label: exit $rc (log $dir/logs/$line.log)" >&2
  return "$rc"
}

_write_slurm() {
  local dir="$RUNS/$TABLE" m tasks root a
  m=$(_jobs_tsv | wc -l)
  tasks=$(( (m + RUNS_PER_GPU - 1) / RUNS_PER_GPU ))
  root=$(pwd)
  local adir=$dir script
  case $dir in /*) ;; *) adir=$root/$dir ;; esac
  script=$(
    echo '#!/usr/bin/env bash'
    echo "#SBATCH --job-name=$TABLE"
    echo "#SBATCH --array=1-$tasks"
    echo '#SBATCH --gres=gpu:1'
    echo "#SBATCH --cpus-per-task=${SLURM_CPUS:-$(( 4 * RUNS_PER_GPU ))}"
    echo "#SBATCH --output=$adir/logs/slurm-%A_%a.out"
    for a in ${SBATCH_ARGS:-}; do echo "#SBATCH $a"; done
    echo "# $m runs of $TABLE, $RUNS_PER_GPU per array task (one GPU each); written by reproduce/common.sh SLURM=1"
    echo "cd $root"
    echo "R=$RUNS_PER_GPU M=$m"
    echo 'first=$(( (SLURM_ARRAY_TASK_ID - 1) * R + 1 )); last=$(( first + R - 1 < M ? first + R - 1 : M ))'
    echo "PYTHON=$PYTHON DATA_DIR=$DATA_DIR exec bash reproduce/common.sh --job $adir/jobs.tsv \$(seq \$first \$last)"
  )
  if [ "$DRY_RUN" = 1 ]; then
    echo "[$TABLE] SLURM=1 DRY_RUN: $dir/sbatch.sh would be:"; echo "$script"
    echo "[$TABLE] and $dir/jobs.tsv ($m lines):"; _jobs_tsv
    return 0
  fi
  mkdir -p "$dir/logs"
  _jobs_tsv >"$dir/jobs.tsv"
  echo "$script" >"$dir/sbatch.sh"
  echo "[$TABLE] wrote $dir/sbatch.sh ($tasks array tasks, $m runs) and $dir/jobs.tsv"
  echo "[$TABLE] submit: sbatch $dir/sbatch.sh ; when it is done: $PYTHON report.py $TABLE --runs $RUNS --out $RESULTS $*"
}

if [ "${BASH_SOURCE[0]}" = "$0" ] && [ "${1:-}" = --job ]; then
  shift
  _job "$@"
  exit $?
fi
