"""Where CFA's average cost comes from at fmnist-standard: paired PGD-20 differences, step by step.

Rows (3 seeds each, the same 10,000 test images): PGD-AT, TRADES, CFA with CCM, CCR and FAWA off
(the official code's normalized TRADES, `ntrades-seedS`), CFA's last weights without the FAWA
average (`last-seedS`: `fairbench eval` of the leaderboard run's unaveraged weights), and CFA as
on the leaderboard (FAWA). The leaderboard's rows are read through the report's own model and pool
(`fairbench.report.model`, `.intervals`); each step is compared with the row before it by the
report's paired bootstrap (`fairbench.report.stats`). Every file is read as the report reads
results from others: a corrupt, FIFO, symlinked or missing file is one `error:` line naming it.
Run from the repository root:
    python results/cfa-ablation/compare.py
"""

import sys
from pathlib import Path

import numpy as np
from fairbench.errors import FairbenchError
from fairbench.report.intervals import pool
from fairbench.report.model import build_leaderboard
from fairbench.report.stats import bootstrap_threat
from fairbench.schema import read_metrics, read_outcomes

HERE = Path(__file__).parent
GROUP = "fashion-mnist_testbed-cnn_linf-0.1_e8_trall_teall_aa50"  # the fmnist-standard leaderboard
SEEDS = (0, 1, 2)


def renamed(here: Path, name: str) -> list:
    """The outcomes of this folder's runs ``name``, read and checked as the report reads results
    (regular files only, bounded, validated): a corrupt, FIFO, symlinked or missing file is one
    `FairbenchError` naming it."""
    rows = []
    for s in SEEDS:
        outcomes = here / f"outcomes-{name}-seed{s}.csv.gz"
        got = read_outcomes(outcomes, read_metrics(here / f"metrics-{name}-seed{s}.json"))
        if got is None:
            raise FairbenchError(f"{outcomes}: no such file")
        rows.append(got)
    return rows


def leaderboard_rows(results: Path) -> dict:
    board = {g.key.slug(): g for g in build_leaderboard(results).groups}
    if GROUP not in board:
        raise FairbenchError(f"no group {GROUP} under {results}/ (run from the repository root)")
    return {row.label: sorted(row.runs, key=lambda r: r.seed) for row in board[GROUP].rows}


def leaderboard_row(leaderboard: dict, label: str) -> list:
    runs = leaderboard.get(label, [])
    if [r.seed for r in runs] != list(SEEDS):
        raise FairbenchError(f"{GROUP}: row {label} has seeds {[r.seed for r in runs]}, not {list(SEEDS)}")
    if any(r.outcomes is None for r in runs):
        raise FairbenchError(f"{GROUP}: a run of row {label} has no outcomes.csv.gz")
    return [r.outcomes for r in runs]


def main(results: Path = Path("results"), here: Path = HERE) -> list[str]:
    """The table's lines (printed as they come)."""
    ntrades, last = renamed(here, "ntrades"), renamed(here, "last")  # this folder's files first: quick errors
    leaderboard = leaderboard_rows(results)
    rows_by_name = {
        "pgd-at": leaderboard_row(leaderboard, "pgd-at"),
        "trades": leaderboard_row(leaderboard, "trades"),
        "cfa, ccm ccr fawa off (normalized TRADES)": ntrades,
        "cfa, last weights (no FAWA average)": last,
        "cfa (leaderboard: FAWA average)": leaderboard_row(leaderboard, "cfa"),
    }
    index, labels, wrong, rows = None, None, [], []
    for name, outcomes in rows_by_name.items():
        rows.append(list(range(len(wrong), len(wrong) + len(outcomes))))
        for out in outcomes:
            if "pgd20" not in out.results:
                raise FairbenchError(f"{name}: a run without PGD-20 outcomes")
            idx, lab, bad = pool(out, "pgd20")
            if index is None:
                index, labels = idx, lab
            if len(idx) != len(out) or not np.array_equal(idx, index) or not np.array_equal(lab, labels):
                raise FairbenchError(
                    f"{name}: PGD-20 was not run on the same test images (and labels) as the rows before it"
                )
            wrong.append(bad)
    wrong = np.stack(wrong)
    lines = [
        "PGD-20 error in %, 95% intervals; each step against the row above it (paired bootstrap;"
        " * where its interval excludes 0)"
    ]
    print(lines[-1])
    for i, name in enumerate(rows_by_name):
        st = bootstrap_threat(labels, wrong, rows, n_classes=10, baseline=max(i - 1, 0), seed=0)[i]
        line = (
            f"{name:44s} avg {100 * st.avg.value:5.1f} [{100 * st.avg.lo:5.1f}, {100 * st.avg.hi:5.1f}]"
            f"  worst {100 * st.worst.value:5.1f} [{100 * st.worst.lo:5.1f}, {100 * st.worst.hi:5.1f}]"
        )
        if i:
            d, w = st.avg_delta, st.worst_delta
            line += (
                f"  step: avg {100 * d.value:+5.1f} [{100 * d.lo:+5.1f}, {100 * d.hi:+5.1f}]"
                f"{' *' if d.significant else '  '} worst {100 * w.value:+5.1f} [{100 * w.lo:+5.1f},"
                f" {100 * w.hi:+5.1f}]{' *' if w.significant else ''}"
            )
        print(line)
        lines.append(line)
    return lines


if __name__ == "__main__":
    try:
        main()
    except FairbenchError as exc:  # one line naming the file, as fairbench's commands say it
        sys.exit("error: " + " ".join(str(exc).split()))
