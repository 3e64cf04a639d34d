"""`fairbench report`: per-class leaderboards built from metrics.json files and nothing else.

Imports point down, never in a circle:

    command        writes every output into the results folder (`fairbench report`)
      html         the self-contained index.html (uses tables' columns and figures' paths)
      tables       Markdown, CSV, LaTeX
      figures      class-wise charts and the trade-off figure
    intervals      from the runs' outcomes: bootstrap intervals, baseline comparisons, tied ranks
    model          runs read through the schema, grouped, aggregated over seeds
    stats          the bootstrap and tied ranks: pure numpy, nothing of the package

This file imports nothing, so importing one layer never loads the layers above it.
"""
