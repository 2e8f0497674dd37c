#!/usr/bin/env bash
# reproduce/knobs.sh -- the environment knobs' checks, sourced by common.sh, demo.sh and fmnist_cpu.sh (and run by
# the Makefile before it builds anything). A bad value stops the script before any plan, run or write: one line on
# stderr naming the knob and the fix, exit 2. A knob read with `= 1` elsewhere would otherwise take DRY_RUN=yes
# as "run everything" and QUICK=2 as the full schedule.

knob_fail() { echo "reproduce: $1" >&2; exit 2; }

# knob_python: $PYTHON as given, or .venv/bin/python, or python3. A PYTHON that is given but cannot be run is
# refused: falling back to another interpreter (one without torch) would end in a traceback instead.
knob_python() {
  if [ -n "${PYTHON:-}" ]; then
    command -v "$PYTHON" >/dev/null 2>&1 ||
      knob_fail "PYTHON=$PYTHON cannot be run; point it at the Python with torch (e.g. PYTHON=.venv/bin/python) or leave it out"
  else
    PYTHON=.venv/bin/python
    [ -x "$PYTHON" ] || PYTHON=python3
  fi
}

# knob_switch NAME...: each is 0 or 1.
knob_switch() {
  local k
  for k in "$@"; do
    [[ ${!k} == [01] ]] || knob_fail "$k=${!k} must be 0 or 1, e.g. $k=1"
  done
}

# knob_count NAME...: each is a positive integer.
knob_count() {
  local k
  for k in "$@"; do
    [[ ${!k} =~ ^[1-9][0-9]*$ ]] || knob_fail "$k=${!k} must be a positive integer, e.g. $k=2"
  done
}

# knob_seeds NAME: a list of seeds (non-negative integers, separated by spaces), at least one.
knob_seeds() {
  [[ ${!1} =~ ^[[:space:]]*[0-9]+([[:space:]]+[0-9]+)*[[:space:]]*$ ]] ||
    knob_fail "$1=${!1} must be seeds (non-negative integers separated by spaces), e.g. $1='0 1'"
}

# knob_choice NAME VALUE...: one of the VALUEs ('' allowed when listed as '').
knob_choice() {
  local k=$1 v
  shift
  for v in "$@"; do [ "${!k}" = "$v" ] && return 0; done
  knob_fail "$k=${!k} is not one of: $(printf "'%s' " "$@")"
}
