"""The one schema of a run's results: ``metrics.json`` and ``outcomes.csv.gz``, built, checked, read.

``outcomes.csv.gz`` holds one row per evaluated test image (``index,label``, then one 1/0 column
per registered threat and ``union``; empty where a threat did not run on that image); every
number in ``metrics.json`` is what these rows give. One typed record (`RunRecord`), one builder
(`build_record`), one validator (`validate`, `check_outcomes`) serve the writers (`fairbench
run`, `fairbench eval`) and the reader (`fairbench report`).

Imports point down: ``record`` (dataclasses, limits, outcome arithmetic) <- ``validate`` <-
``files`` (build, write, read); this file only re-exports them.
"""

from fairbench.schema.files import (
    build_record,
    find_metrics,
    outcomes_bytes,
    parse_metrics,
    parse_outcomes,
    read_metrics,
    read_outcomes,
    read_regular,
    write_run,
)
from fairbench.schema.record import (
    FINISHED,
    MAX_METRICS_BYTES,
    MAX_OUTCOMES_BYTES,
    MAX_OUTCOMES_TEXT,
    METRICS_FILE,
    OUTCOMES_FILE,
    SCHEMA_VERSION,
    UNION,
    Outcomes,
    RunRecord,
    ThreatMetrics,
    ThreatModel,
    derive_union,
    make_outcomes,
    metrics_from_outcomes,
    summarize,
    threat_columns,
)
from fairbench.schema.validate import check_init_from, check_outcomes, validate

__all__ = [
    "FINISHED",
    "MAX_METRICS_BYTES",
    "MAX_OUTCOMES_BYTES",
    "MAX_OUTCOMES_TEXT",
    "METRICS_FILE",
    "OUTCOMES_FILE",
    "SCHEMA_VERSION",
    "UNION",
    "Outcomes",
    "RunRecord",
    "ThreatMetrics",
    "ThreatModel",
    "build_record",
    "check_init_from",
    "check_outcomes",
    "derive_union",
    "find_metrics",
    "make_outcomes",
    "metrics_from_outcomes",
    "outcomes_bytes",
    "parse_metrics",
    "parse_outcomes",
    "read_metrics",
    "read_outcomes",
    "read_regular",
    "summarize",
    "threat_columns",
    "validate",
    "write_run",
]
