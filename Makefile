# `make` runs the main job, `make test` the tests; both install what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: main test setup bench
# The mini-benchmark: every registered method on Fashion-MNIST (small CNN, CPU, seed 0), a short
# budget, as one `fairbench sweep` (two runs at once), then `fairbench report`; the leaderboard
# lands in mini-benchmark/ (not committed).
main: setup
	EPOCHS=3 TRAIN_PER_CLASS=300 EVAL_PER_CLASS=10 WORKERS=2 PY=$(PY) bash scripts/benchmark.sh \
		--val-per-class 30 --out mini-benchmark

test: setup
	$(PY) -m pytest -q

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@
