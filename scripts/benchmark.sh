#!/usr/bin/env bash
# The mini-benchmark: every registered method on Fashion-MNIST with the small CNN on the CPU, a
# short budget and the same seed(s), as one `fairbench sweep` (WORKERS runs at once), then
# `fairbench report`. Extra arguments go to the sweep, so to every run (e.g. --out DIR,
# --val-per-class K, --param ...); the report reads the same --out.
#
#   scripts/benchmark.sh                         # defaults below, into results/
#   EPOCHS=1 TRAIN_PER_CLASS=50 EVAL_PER_CLASS=50 ATTACKS=clean,pgd20 scripts/benchmark.sh --out /tmp/b
#
# Rerunning is safe: a finished run (its metrics.json exists) is skipped, a stopped one resumes,
# one that failed is retried with --retry-failed. Each run's output is in <out>/sweep/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- budget (override from the environment) ---------------------------------------------------
EPOCHS="${EPOCHS:-5}"                         # training epochs
TRAIN_PER_CLASS="${TRAIN_PER_CLASS:-1000}"    # training images per class (10 classes)
EVAL_PER_CLASS="${EVAL_PER_CLASS:-200}"       # test images per class
SEEDS="${SEEDS:-0}"                           # space-separated, e.g. "0 1"
ATTACKS="${ATTACKS:-clean,pgd20,autoattack}"  # threats evaluated after training
METHODS="${METHODS:-}"                        # space-separated; empty: every registered method
                                              # that trains from scratch
WORKERS="${WORKERS:-2}"                       # runs at once (each gets cores / WORKERS threads)
PY="${PY:-.venv/bin/python}"                  # the environment's python (make setup creates .venv)
DATASET=fashion-mnist
ARCH=small-cnn
DEVICE="${DEVICE:-cpu}"

if [ ! -x "$PY" ]; then
    echo "error: no python at $PY; run 'make setup' (or set PY=/path/to/python)" >&2
    exit 2
fi
if [ -z "$METHODS" ]; then  # a method that fine-tunes a finished run (FAAL) needs --init-from RUN_DIR:
    # run it afterwards from one of these runs (e.g. pgd-at's), with `fairbench run --init-from`
    METHODS="$("$PY" -c 'from fairbench.methods import METHODS as M
print(" ".join(n for n in M.names() if not M.get(n).requires_init))')"
fi
read -r -a methods <<< "$METHODS"
read -r -a seeds <<< "$SEEDS"
methods_list="$(IFS=,; echo "${methods[*]}")"
seeds_list="$(IFS=,; echo "${seeds[*]}")"

start=$SECONDS
"$PY" -m fairbench sweep --methods "$methods_list" --seeds "$seeds_list" --workers "$WORKERS" \
    --arch "$ARCH" --dataset "$DATASET" --epochs "$EPOCHS" --train-per-class "$TRAIN_PER_CLASS" \
    --eval-per-class "$EVAL_PER_CLASS" --attacks "$ATTACKS" --device "$DEVICE" --report "$@"
echo "== sweep and report took $((SECONDS - start))s"
