"""Where CFA's average cost comes from at fmnist-standard: paired PGD-20 differences, step by step.

Rows (3 seeds each, the same 10,000 test images): PGD-AT, TRADES, CFA with CCM, CCR and FAWA off
(the official code's normalized TRADES, `ntrades-seedS`), CFA's last weights without the FAWA
average (`last-seedS`: `fairbench eval` of the leaderboard run's unaveraged weights), and CFA as
on the leaderboard (FAWA). Each step is compared with the row before it by the report's paired
bootstrap (`fairbench.report.stats`). Run from the repository root:
    python results/cfa-ablation/compare.py
"""

import glob
import json
from pathlib import Path

import numpy as np

from fairbench.report.stats import bootstrap_threat
from fairbench.schema import read_metrics, read_outcomes

HERE = Path(__file__).parent


def leaderboard_run(method: str, seed: int) -> Path:
    for f in sorted(glob.glob(f"results/runs/{method}_testbed-cnn_fashion-mnist_seed{seed}_*/metrics.json")):
        m = json.loads(Path(f).read_text())
        if m.get("preset") == "fmnist-standard" and m["epochs"] == 8 and m.get("init_from") is None:
            return Path(f)
    raise SystemExit(f"no fmnist-standard run of {method} seed {seed} under results/runs")


def outcomes(metrics: Path, outcomes_file: Path):
    return read_outcomes(outcomes_file, read_metrics(metrics))


ROWS = {
    "pgd-at": lambda s: (leaderboard_run("pgd-at", s), None),
    "trades": lambda s: (leaderboard_run("trades", s), None),
    "cfa, ccm ccr fawa off (normalized TRADES)": lambda s: (HERE / f"metrics-ntrades-seed{s}.json",
                                                          HERE / f"outcomes-ntrades-seed{s}.csv.gz"),
    "cfa, last weights (no FAWA average)": lambda s: (HERE / f"metrics-last-seed{s}.json",
                                                     HERE / f"outcomes-last-seed{s}.csv.gz"),
    "cfa (leaderboard: FAWA average)": lambda s: (leaderboard_run("cfa", s), None),
}
wrong, labels, index, rows = [], None, None, []
for name, where in ROWS.items():
    rows.append([])
    for seed in (0, 1, 2):
        m, o = where(seed)
        out = outcomes(m, o if o is not None else m.parent / "outcomes.csv.gz")
        if index is None:
            index, labels = out.index, out.label
        if not np.array_equal(out.index, index):
            raise SystemExit(f"{m}: not evaluated on the same test images as the rows before it")
        if not (out.results["pgd20"] >= 0).all():
            raise SystemExit(f"{m}: PGD-20 was not run on every test image")
        rows[-1].append(len(wrong))
        wrong.append(out.results["pgd20"] == 0)
wrong = np.stack(wrong)
names = list(ROWS)
print("PGD-20 error in %, 95% intervals; each step against the row above it (paired bootstrap;"
      " * where its interval excludes 0)")
for i, name in enumerate(names):
    st = bootstrap_threat(labels, wrong, rows, n_classes=10, baseline=max(i - 1, 0), seed=0)[i]
    line = (f"{name:44s} avg {100 * st.avg.value:5.1f} [{100 * st.avg.lo:5.1f}, {100 * st.avg.hi:5.1f}]"
            f"  worst {100 * st.worst.value:5.1f} [{100 * st.worst.lo:5.1f}, {100 * st.worst.hi:5.1f}]")
    if i:
        d, w = st.avg_delta, st.worst_delta
        line += (f"  step: avg {100 * d.value:+5.1f} [{100 * d.lo:+5.1f}, {100 * d.hi:+5.1f}]"
                 f"{' *' if d.significant else '  '} worst {100 * w.value:+5.1f} [{100 * w.lo:+5.1f},"
                 f" {100 * w.hi:+5.1f}]{' *' if w.significant else ''}")
    print(line)
