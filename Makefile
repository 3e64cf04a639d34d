# `make` runs the main job, `make test` the tests; both install what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: main test lint setup bench
# The main job: the fmnist-standard recipe (testbed-cnn, CPU) for a short budget, PGD-AT and
# FairAT, seed 0, as one `fairbench sweep` (two runs at once), then `fairbench report`: the
# leaderboard, with intervals, lands in mini-benchmark/ (not committed). The real leaderboard is
# results/ (results/README.md).
main: setup
	$(PY) -m fairbench sweep --methods pgd-at,fairat --seeds 0 --workers 2 --preset fmnist-standard \
		--epochs 2 --train-per-class 5000 --val-per-class 100 --eval-per-class 100 --aa-per-class 5 \
		--out mini-benchmark --report

test: setup
	$(PY) -m pytest -q

# ruff (pyproject.toml's [tool.ruff]): pycodestyle, pyflakes, sorted imports and the formatter's
# layout over the code, tests, benchmarks and scripts; then mypy (pyproject.toml's [tool.mypy]): the
# types of the fairbench package. `ruff format fairbench tests bench scripts results` fixes the layout.
lint: setup
	$(VENV)/bin/ruff check fairbench tests bench scripts results
	$(VENV)/bin/ruff format --check fairbench tests bench scripts results
	$(PY) -m mypy

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@
