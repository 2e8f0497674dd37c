# make demo | make test | make smoke | make bench  -- each builds .venv on first use.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python

# Bad knobs stop make before anything is built: one line, exit 2 (make's $(error); a failing recipe would add make's
# own "*** Error" line). The scripts' knobs (QUICK, DRY_RUN, SEED, SEEDS, ONLY ...) are checked by the scripts
# themselves (reproduce/knobs.sh), run here first; PY/PYTHON where make uses them.
GOALS := $(or $(MAKECMDGOALS),demo)
# $(shell) sees make's environment, not `make demo QUICK=2`'s variables: the given knobs are passed on by name.
KNOBS := QUICK DRY_RUN SEED ITERS EVAL EPOCH SEEDS ONLY ROW GPUS RUNS_PER_GPU SLURM
given = $(foreach k,$(KNOBS),$(if $(filter-out undefined,$(origin $(k))),$(k)='$($(k))'))
knobs = $(eval _bad := $(shell env -u PYTHON $(given) $(1) 2>&1 >/dev/null))$(if $(_bad),$(error $(_bad)))
runnable = $(shell command -v '$(1)' 2>/dev/null)
ifeq ($(origin PYTHON),command line)
  $(if $(call runnable,$(PYTHON)),,$(error PYTHON=$(PYTHON) cannot be run; leave it out (make builds $(VENV)) or name a Python with torch))
endif
ifeq ($(origin PY),command line)   # checked also when $(VENV) is built already (the recipe below would not run)
  $(if $(call runnable,$(PY)),,$(error PY=$(PY) cannot be run; name the Python that builds $(VENV), e.g. make PY=python3.11))
endif
ifneq ($(filter demo,$(GOALS)),)
  $(call knobs,bash reproduce/demo.sh --knobs)
endif
ifneq ($(filter smoke,$(GOALS)),)
  $(call knobs,SMOKE=1 bash -c 'source reproduce/common.sh')
endif

# A fresh Debian/Ubuntu lacks python3-venv: installed when we are root with apt-get (one line says so).
$(VENV)/.installed: requirements.txt requirements-core.txt
	$(if $(call runnable,$(PY)),,$(error PY=$(PY) cannot be run; name the Python that builds $(VENV), e.g. make PY=python3.11))
	$(PY) -m venv $(VENV) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && echo "python3 -m venv failed: installing Debian's python3-venv (root, apt-get)" \
	  && apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null \
	  && rm -rf $(VENV) && $(PY) -m venv $(VENV); }
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	touch $@

.PHONY: demo test test-slow smoke bench gpu_check clean
# Fashion-MNIST: Debian's dataset-fashion-mnist (installed by the demo as root with apt-get), else the synthetic
# set. QUICK=1 (CI), FMNIST_DIR=<empty dir> (force the fallback), DRY_RUN=1: see reproduce/demo.sh.
demo: $(VENV)/.installed
	PYTHON=$(PYTHON) bash reproduce/demo.sh

test: $(VENV)/.installed       # the README's test command: < 10 min on 2 cores
	$(PYTHON) -m pytest -q -m "not slow" --durations=15 tests

test-slow: $(VENV)/.installed  # end-to-end checks of 15 s or more each (torchrun, learning, bench); CI runs both
	$(PYTHON) -m pytest -q -m slow --durations=15 tests

smoke: $(VENV)/.installed
	PYTHON=$(PYTHON) bash reproduce/smoke_all.sh

bench: $(VENV)/.installed
	$(PYTHON) bench.py --quick

gpu_check:            # on a GPU machine: no venv, no pip (python3 with torch already there)
	bash reproduce/gpu_check.sh

clean:
	rm -rf runs/smoke results/smoke runs/gpu_check_smoke results/gpu_check_smoke
