#!/usr/bin/env bash
# The mini-benchmark: every registered method on Fashion-MNIST with the small CNN on the CPU, a
# short budget and the same seed(s), then `fairbench report`. Extra arguments go to every
# `fairbench run` (e.g. --out DIR, --device cuda, --param ...); the report reads the same --out.
#
#   scripts/benchmark.sh                         # defaults below, into results/
#   EPOCHS=1 TRAIN_PER_CLASS=50 EVAL_PER_CLASS=50 ATTACKS=clean,pgd20 scripts/benchmark.sh --out /tmp/b
#
# Rerunning is safe: a finished run (its metrics.json exists) is skipped, a killed one resumes.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- budget (override from the environment) ---------------------------------------------------
EPOCHS="${EPOCHS:-5}"                         # training epochs
TRAIN_PER_CLASS="${TRAIN_PER_CLASS:-1000}"    # training images per class (10 classes)
EVAL_PER_CLASS="${EVAL_PER_CLASS:-200}"       # test images per class
SEEDS="${SEEDS:-0}"                           # space-separated, e.g. "0 1"
ATTACKS="${ATTACKS:-clean,pgd20,autoattack}"  # threats evaluated after training
METHODS="${METHODS:-}"                        # space-separated; empty: every registered method
PY="${PY:-.venv/bin/python}"                  # the environment's python (make setup creates .venv)
DATASET=fashion-mnist
ARCH=small-cnn
DEVICE="${DEVICE:-cpu}"

# the folder the runs go to (--out DIR / --out=DIR among the extra arguments, else results), and
# the other extra arguments, which change what is trained and so get their own run ids
OUT=results
training_args=()
prev=""
for arg in "$@"; do
    if [ "$prev" = "--out" ]; then OUT="$arg"
    elif [[ "$arg" == --out=* ]]; then OUT="${arg#--out=}"
    elif [ "$arg" != "--out" ]; then training_args+=("$arg")
    fi
    prev="$arg"
done

if [ ! -x "$PY" ]; then
    echo "error: no python at $PY; run 'make setup' (or set PY=/path/to/python)" >&2
    exit 2
fi
if [ -z "$METHODS" ]; then
    METHODS="$("$PY" -c 'from fairbench.registry import METHODS; print(" ".join(METHODS.names()))')"
fi
# Methods that fine-tune a finished run (FAAL) start from the pgd-at run of the same seed and
# budget, for FT_EPOCHS epochs at FT_LR (FAAL's 2 epochs at 0.01, then 0.001); they run last.
FT_EPOCHS="${FT_EPOCHS:-2}"
FT_LR="${FT_LR:-0.01}"
FINE_TUNE=" $("$PY" -c 'from fairbench.registry import METHODS as M; print(" ".join(n for n in M.names() if M.get(n).requires_init))') "
tag=""
[ ${#training_args[@]} -gt 0 ] && tag="_$(printf '%s\0' "${training_args[@]}" | sha256sum | cut -c1-8)"

run_one() {  # run_one METHOD SEED RUN_ID [extra fairbench run arguments]
    local method=$1 seed=$2 run_id=$3
    shift 3
    local run_dir="$OUT/runs/$run_id" resume=()
    if [ -f "$run_dir/metrics.json" ]; then
        echo "== $run_id: done, skipped"
        return
    fi
    [ -f "$run_dir/checkpoint.pt" ] && resume=(--resume)
    echo "== $run_id"
    "$PY" -m fairbench run --method "$method" --arch "$ARCH" --dataset "$DATASET" \
        --epochs "$EPOCHS" --train-per-class "$TRAIN_PER_CLASS" --eval-per-class "$EVAL_PER_CLASS" \
        --attacks "$ATTACKS" --seed "$seed" --device "$DEVICE" --run-id "$run_id" --no-progress \
        --out "$OUT" "${resume[@]}" "${training_args[@]}" "$@"
}

bench_id() {  # bench_id METHOD SEED
    echo "bench_${1}_${ARCH}_${DATASET}_e${EPOCHS}_n${TRAIN_PER_CLASS}-${EVAL_PER_CLASS}_seed${2}${tag}"
}

start=$SECONDS
first="" last=""
for m in $METHODS; do
    if [[ "$FINE_TUNE" == *" $m "* ]]; then last="$last $m"; else first="$first $m"; fi
done
for method in $first $last; do
    for seed in $SEEDS; do
        if [[ "$FINE_TUNE" == *" $method "* ]]; then
            source_id="$(bench_id pgd-at "$seed")"
            run_one pgd-at "$seed" "$source_id"  # skipped when it is done
            run_id="bench_${method}_from-pgd-at_${ARCH}_${DATASET}_e${EPOCHS}+${FT_EPOCHS}_n${TRAIN_PER_CLASS}-${EVAL_PER_CLASS}_seed${seed}${tag}"
            run_one "$method" "$seed" "$run_id" --init-from "$OUT/runs/$source_id" \
                --epochs "$FT_EPOCHS" --lr "$FT_LR"
        else
            run_one "$method" "$seed" "$(bench_id "$method" "$seed")"
        fi
    done
done
echo "== runs took $((SECONDS - start))s"
"$PY" -m fairbench report --results "$OUT"
