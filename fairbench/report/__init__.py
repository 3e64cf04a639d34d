"""`fairbench report`: per-class leaderboards built from metrics.json files and nothing else.

Imports point down, never in a circle:

    command        writes every output into the results folder (`fairbench report`)
      html         the self-contained index.html (uses tables' columns and figures' paths)
      tables       Markdown, CSV, LaTeX
      figures      class-wise charts
    model          runs read from metrics.json, grouped, aggregated over seeds

This file imports nothing, so importing one layer never loads the layers above it.
"""
