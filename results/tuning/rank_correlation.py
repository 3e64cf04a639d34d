"""Would a shorter trial rank the trials as the whole trial does? (issue 25: successive halving)

Every trial logs its PGD-10 validation accuracy per class after each epoch (log.jsonl's
``val_robust_per_class``). For each method with at least 3 finished trials, this prints the
Spearman rank correlation between the criterion (average + worst-class accuracy) after epoch E
and after the last epoch, for E = 4 and 6, and whether the trial with the best criterion at E is
the one validation selects at the end (not for a method with a trial shorter than E epochs, such
as FAAL, whose space draws its fine-tuning's length). A trial that diverged (empty criterion in
trials.csv) has no last score and is left out, and counted. Run from the repository root:

    python results/tuning/rank_correlation.py [results/tuning]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pandas as pd
from fairbench.errors import FairbenchError
from fairbench.runs.folder import read_jsonl

EARLY = (4, 6)


def criterion_by_epoch(run_dir: Path) -> dict[int, float]:
    """{epoch: average + worst-class validation accuracy} from a trial's log.jsonl."""
    out = {}
    for record in read_jsonl(run_dir / "log.jsonl"):
        per_class = record.get("val_robust_per_class") if isinstance(record, dict) else None
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if (
            isinstance(epoch, int)
            and isinstance(per_class, list)
            and per_class
            and all(isinstance(a, (int, float)) for a in per_class)
        ):
            out[epoch] = sum(per_class) / len(per_class) + min(per_class)
    return out


def main(folder: Path) -> int:
    table = folder / "trials.csv"
    if not table.is_file() or table.is_symlink():
        print(f"error: {table}: not a regular file (run fairbench tune first)", file=sys.stderr)
        return 2
    try:
        rows = list(csv.DictReader(table.open(newline="")))
        data, diverged = [], dict.fromkeys((r["method"] for r in rows), 0)
        for r in rows:
            if r.get("criterion") == "":  # diverged: no score to rank
                diverged[r["method"]] += 1
                continue
            curve = criterion_by_epoch(folder / r["run_dir"])
            last = max(curve) if curve else None
            data.append(
                {
                    "method": r["method"],
                    "trial": int(r["trial"]),
                    "last": curve.get(last),
                    **{f"e{e}": curve.get(e) for e in EARLY},
                }
            )
    except (OSError, KeyError, ValueError, FairbenchError) as exc:
        print(f"error: {table}: {str(exc)[:200]}", file=sys.stderr)
        return 2
    frame = pd.DataFrame(data)
    print("method     trials  " + "  ".join(f"rho(e{e},last)  same pick at e{e}" for e in EARLY))
    for method, mine in frame.groupby("method", sort=True):
        left_out = f"  ({diverged[str(method)]} diverged, left out)" if diverged[str(method)] else ""
        if len(mine) < 3:
            print(f"{method:<10} {len(mine):>6}  (fewer than 3 trials: no rank correlation){left_out}")
            continue
        cells = []
        for e in EARLY:
            if mine[f"e{e}"].isna().any():  # a trial of fewer epochs (FAAL draws its fine-tuning's length)
                cells.append(f"{'n/a':>13}  {'(shorter trials)':>15}")
                continue
            rho = mine[f"e{e}"].corr(mine["last"], method="spearman")
            same = mine.loc[mine[f"e{e}"].idxmax(), "trial"] == mine.loc[mine["last"].idxmax(), "trial"]
            cells.append(f"{rho:>+13.2f}  {'yes' if same else 'no':>15}")
        print(f"{method:<10} {len(mine):>6}  " + "  ".join(cells) + left_out)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/tuning")))
