#!/usr/bin/env bash
# Theory figure of the jitter-sampling paper (effective sampling theory, §3.1 and App. A.1):
# E_{i,n} with/without replacement, S_n against the sampling exponent, Method 2's utilisation KL against δt,
# and the δt schedules of the single-expert and RIDE settings. Computed from jitter.py alone.
# Output: results/jitter_fig_theory.png.  Runtime: a few seconds on one CPU core, no GPU, no data.
# DRY_RUN=1 prints the command and runs nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || PY=python3
cmd=("$PY" reproduce/jitter_theory_plots.py --out results/jitter_fig_theory.png)
if [ "${DRY_RUN:-0}" = 1 ]; then echo "+ ${cmd[*]}"; exit 0; fi
mkdir -p results
"${cmd[@]}"
