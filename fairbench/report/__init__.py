"""`fairbench report`: per-class leaderboards built from metrics.json files and nothing else.

Imports point down, never in a circle:

    command        writes every output into the results folder (`fairbench report`)
      html         the self-contained index.html (uses tables' columns and figures' paths)
      tables       Markdown, CSV, LaTeX
      figures      class-wise charts and the trade-off figure
    intervals      reads the runs' outcomes; bootstrap intervals, baseline comparisons, tied ranks
    model          runs read from metrics.json, grouped, aggregated over seeds
    stats          the bootstrap and tied ranks: pure numpy, nothing of the package
    outcomes       reads a run's outcomes.csv.gz and checks it against its metrics.json

This file imports nothing, so importing one layer never loads the layers above it.
"""
