# `make` runs the main job, `make test` the tests; both install what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: main test setup bench
main: setup
	$(PY) -m fairbench run --preset cpu-fmnist --method pgd-at

test: setup
	$(PY) -m pytest -q

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@
