# make demo | make test | make smoke | make bench  -- each builds .venv on first use.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	touch $@

.PHONY: demo test smoke bench gpu_check clean
demo: $(VENV)/.installed
	PYTHON=$(PYTHON) bash reproduce/demo.sh

test: $(VENV)/.installed
	$(PYTHON) -m pytest -q tests

smoke: $(VENV)/.installed
	PYTHON=$(PYTHON) bash reproduce/smoke_all.sh

bench: $(VENV)/.installed
	$(PYTHON) bench.py --quick

gpu_check:            # on a GPU machine: no venv, no pip (python3 with torch already there)
	bash reproduce/gpu_check.sh

clean:
	rm -rf runs/smoke results/smoke runs/gpu_check_smoke results/gpu_check_smoke
