# make demo | make test | make smoke | make bench  -- each builds .venv on first use.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	touch $@

.PHONY: demo test smoke bench clean
demo: $(VENV)/.installed
	PYTHON=$(PYTHON) bash reproduce/demo.sh

test: $(VENV)/.installed
	$(PYTHON) -m pytest -q tests

smoke: $(VENV)/.installed
	PYTHON=$(PYTHON) bash reproduce/smoke_all.sh

bench: $(VENV)/.installed
	$(PYTHON) bench.py --quick

clean:
	rm -rf runs/smoke results/smoke
