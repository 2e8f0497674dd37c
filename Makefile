# make demo | make test | make smoke | make bench  -- each builds .venv on first use.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python

# A fresh Debian/Ubuntu lacks python3-venv: installed when we are root with apt-get (one line says so).
$(VENV)/.installed: requirements.txt requirements-core.txt
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
