"""The HTML leaderboard: one self-contained file (inline CSS/JS, charts as data URIs, no network).

The canonical group comes first (`tables.superseded`: the groups after it are collapsed). Each
group opens with its compact table (readable at 1,400 px without scrolling; a details row under
each row holds the full config of every run behind it, and the method cell shows the training
settings on hover), then the forest plot, trade-off figure and heatmap, then one full table per
threat and the class-wise charts. Every table is sortable by any column (click a header, or open
``index.html#sort=KEY`` / ``#sort=-KEY`` for descending, e.g. ``#sort=pgd20_worst``); its header
row and its rank and method columns stay in view while it scrolls.
"""

from __future__ import annotations

import base64
import json
from html import escape as _escape
from typing import Sequence

from fairbench.report.figures import figure_paths, forest_paths, heatmap_paths, tradeoff_paths, usual_seeds
from fairbench.report.model import Group, Leaderboard, Row, threat_name
from fairbench.report.sensitivity import Study, sensitivity_paths
from fairbench.report.tables import (
    LEGEND,
    MASKED,
    Column,
    Table,
    group_tables,
    group_title,
    one_line,
    rank_text,
    shortfall_note,
    shown_threats,
    sort_note,
    superseded,
)


def escape(text: object) -> str:
    """Text for an HTML text node or a quoted attribute value (``&<>"'`` escaped), on one line."""
    return _escape(one_line(str(text)), quote=True)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:32px 0 4px}
p.note{color:#555;max-width:70em;margin:4px 0}
nav a{margin-right:12px}
h3{font-size:15px;margin:18px 0 2px}
table.leaderboard{border-collapse:separate;border-spacing:0;margin:0;font-variant-numeric:tabular-nums}
.leaderboard th,.leaderboard td{padding:4px 7px;border-bottom:1px solid #e3e3e3;white-space:nowrap;background:#fff}
.leaderboard th{background:#f4f5f7;cursor:pointer;user-select:none;text-align:right;position:sticky;top:0;z-index:2}
.leaderboard .rank{position:sticky;left:0;z-index:1;min-width:2em;max-width:2em}
.leaderboard .method{position:sticky;left:calc(2em + 14px);z-index:1;border-right:1px solid #d8d8d8}
.leaderboard th.rank,.leaderboard th.method{z-index:3}
.leaderboard td.method{white-space:normal;min-width:10em;max-width:24em}
.leaderboard .flag{display:block;font-size:11px;color:#a33a00;font-weight:600}
.scroll{overflow:auto;max-height:85vh;margin:8px 0;max-width:100%}
details.group>summary{font-size:17px;font-weight:600;margin:28px 0 4px;cursor:pointer}
.figs figure{margin:12px 0}.figs img{max-width:100%;height:auto;border:1px solid #eee}
.leaderboard th.text,.leaderboard td.text{text-align:left}.leaderboard td{text-align:right}
.leaderboard th[aria-sort=ascending]::after{content:" \\25B2"}
.leaderboard th[aria-sort=descending]::after{content:" \\25BC"}
.leaderboard tr.row:hover td{background:#f0f6ff}
.leaderboard tr.row.baseline td{font-weight:600}
.leaderboard tr.config td{font-size:12px;color:#444;text-align:left;border-bottom:2px solid #d0d0d0}
.leaderboard tr.config pre{margin:4px 0 8px 16px;white-space:pre-wrap;max-width:90em}
.warn{border-left:4px solid #d9822b;background:#fff7ec;padding:6px 12px;margin:12px 0}
figcaption{font-size:13px;color:#444;max-width:70em}
"""

_JS = """
(function () {
  function value(td, numeric) {
    var v = td.getAttribute('data-sort');
    if (v === null || v === '') return null;
    return numeric ? parseFloat(v) : v;
  }
  function sortTable(table, key, descending) {
    var heads = table.tHead.rows[table.tHead.rows.length - 1].cells, index = -1, numeric = true;
    for (var i = 0; i < heads.length; i++) {
      if (heads[i].getAttribute('data-key') === key) { index = i; numeric = !/\\btext\\b/.test(heads[i].className); }
    }
    if (index < 0) return;
    for (var j = 0; j < heads.length; j++) heads[j].removeAttribute('aria-sort');
    var bodies = Array.prototype.slice.call(table.tBodies);
    bodies.sort(function (a, b) {
      var x = value(a.rows[0].cells[index], numeric), y = value(b.rows[0].cells[index], numeric);
      if (x === null || y === null) return (x === null) - (y === null);  /* missing values last */
      var c = numeric ? x - y : x.localeCompare(y);
      return descending ? -c : c;
    });
    bodies.forEach(function (body) { table.appendChild(body); });
    heads[index].setAttribute('aria-sort', descending ? 'descending' : 'ascending');
  }
  var tables = document.querySelectorAll('table.leaderboard');
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[table.tHead.rows.length - 1].cells, function (th) {
      var go = function () {
        sortTable(table, th.getAttribute('data-key'), th.getAttribute('aria-sort') === 'ascending');
      };
      th.tabIndex = 0;
      th.addEventListener('click', go);
      th.addEventListener('keydown', function (e) { if (e.key === 'Enter' || e.key === ' ') go(); });
    });
    table.setAttribute('data-sortable', 'ready');
  });
  var m = /sort=(-?)([A-Za-z0-9_.-]+)/.exec(location.hash);
  if (m) Array.prototype.forEach.call(tables, function (t) { sortTable(t, m[2], m[1] === '-'); });
})();
"""


def _run_config(row: Row) -> str:
    """Every run behind a row, each in its own details element (seed, id, path, full config)."""
    items = []
    for run in sorted(row.runs, key=lambda r: (r.seed, r.path)):
        d = run.record.to_json()
        config = {
            k: d.get(k)
            for k in (
                "run_id",
                "method",
                "params",
                "seed",
                "threat",
                "training",
                "preset",
                "select",
                "ema",
                "init_from",
                "timing",
                "env",
                "checkpoint",
            )
        }
        summary = f"seed {run.seed} · {run.record.run_id} · {run.path}"
        text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=True)  # newlines: only json's
        items.append(f"<details><summary>{escape(summary)}</summary><pre>{_escape(text, quote=True)}</pre></details>")
    return "".join(items)


def _hover(row: Row) -> str:
    t = row.runs[0].training
    keys = (
        "epochs",
        "batch_size",
        "lr",
        "schedule",
        "eps",
        "step_size",
        "attack_steps",
        "train_per_class",
        "eval_per_class",
    )
    params = row.runs[0].record.params
    return (
        f"{row.method} params {json.dumps(params, sort_keys=True)}; "
        + ", ".join(f"{k}={t[k]:.6g}" if isinstance(t.get(k), float) else f"{k}={t.get(k)}" for k in keys if k in t)
        + f"; seeds {', '.join(map(str, row.seeds))}"
    )


def _table(group: Group, slug: str, table: Table, configs: bool) -> list[str]:
    """One table; ``configs``: with a details row of every run's config under each row."""
    cols = table.columns
    default_key = f"{group.sort_threat}_{group.sort_stat}" if table.key == "compact" else ""

    def kind(c: Column) -> str:
        return "method text" if c.key == "method" else "num" if c.numeric else "text"

    heads = ['<th data-key="rank" class="rank">#</th>'] + [
        f'<th data-key="{escape(c.key)}" class="{kind(c)}"'
        + (' aria-sort="ascending"' if c.key == default_key else "")
        + f">{escape(c.header)}</th>"
        for c in cols
    ]
    key = escape(table.key)
    out = [
        f'<div class="scroll"><table class="leaderboard {key}" id="t-{escape(slug)}-{key}">',
        "<thead><tr>" + "".join(heads) + "</tr></thead>",
    ]
    for row in group.rows:
        rank = "" if row.rank is None else row.rank
        cells = [f'<td data-sort="{rank}" class="rank">{rank_text(row)}</td>']
        for c in cols:
            text, sort_key = c.cell(row)
            attrs = f' data-sort="{escape("" if sort_key is None else str(sort_key))}"'
            if c.key == "method":
                attrs += f' class="method text" title="{escape(_hover(row))}"'
                flag = (
                    f'<span class="flag" title="{escape(_masked_title(group, row))}">{MASKED}</span>'
                    if row.possibly_masked
                    else ""
                )
                cells.append(f"<td{attrs}>{escape(text)}{flag}</td>")
                continue
            attrs += ' class="text"' if not c.numeric else ""
            cells.append(f"<td{attrs}>{escape(text)}</td>")
        base = " baseline" if row.label == group.baseline else ""
        out += ["<tbody>", f'<tr class="row{base}">' + "".join(cells) + "</tr>"]
        if configs:
            out.append(
                f'<tr class="config"><td colspan="{len(cols) + 1}"><details><summary>'
                f"{len(row.runs)} run(s): configs</summary>{_run_config(row)}</details></td></tr>"
            )
        out.append("</tbody>")
    return out + ["</table></div>"]


def _masked_title(group: Group, row: Row) -> str:
    c = row.check
    check = threat_name(group.check_threat or "")
    return (
        (
            f"{check} minus {threat_name(group.sort_threat)}, {group.sort_stat} error on the same images: "
            f"{100 * c.value:+.1f} [{100 * c.lo:+.1f}, {100 * c.hi:+.1f}] points"
        )
        if c
        else ""
    )


def _figure(png: str, svg: str, charts: dict[str, bytes], alt: str, caption: str, kind: str) -> list[str]:
    if png not in charts:
        return []
    data = base64.b64encode(charts[png]).decode()
    return [
        f'<figure class="{kind}"><img alt="{escape(alt)}" src="data:image/png;base64,{data}">'
        f'<figcaption>{escape(caption)} Files: <a href="{escape(png)}">PNG</a>, '
        f'<a href="{escape(svg)}">SVG</a>.</figcaption></figure>'
    ]


def _charts(group: Group, slug: str, charts: dict[str, bytes]) -> list[str]:
    """The forest plot, the trade-off figure and the heatmap, under the ranking threat."""
    name, n = threat_name(group.sort_threat), usual_seeds(group)
    base = group.baseline or "the baseline"
    out = ['<div class="figs">']
    out += _figure(
        *forest_paths(slug),
        charts,
        f"forest plot: differences from {base}, {name}",
        f"Each row minus {base} under {name}: worst-class (left) and average (right) error in "
        f"percentage points, with 95% paired intervals; filled where the interval excludes 0 and both "
        f"rows have more than one seed.",
        "forest",
    )
    out += _figure(
        *tradeoff_paths(slug),
        charts,
        f"trade-off: average vs worst-class {name} error",
        f"Average against worst-class {name} error, one point per method (mean over {n} seeds unless "
        f"labelled), its 95% intervals as a cross (none for a row without outcomes); the baseline "
        f"outlined; dashed: the Pareto front, the methods no other beats on both.",
        "tradeoff",
    )
    out += _figure(
        *heatmap_paths(slug),
        charts,
        f"heatmap: {name} error per method and class",
        f"{name} error (%) of every method (rows, in rank order) on every class.",
        "heatmap",
    )
    return out + ["</div>"]


def _class_charts(group: Group, slug: str, charts: dict[str, bytes]) -> list[str]:
    threats, _ = shown_threats(group)
    out = ['<details><summary>Class-wise bar charts, one per threat</summary><div class="figs">']
    for threat, (png, svg) in figure_paths(group, slug).items():
        if threat not in threats:
            continue
        name = threat_name(threat)
        out += _figure(
            png,
            svg,
            charts,
            f"{name} error per class",
            f"{name} error per class, mean over seeds; error bars: 95% intervals "
            f"(none for a row without outcomes); the baseline outlined.",
            "classwise",
        )
    return out + ["</div></details>"]


def _group_body(group: Group, slug: str, charts: dict[str, bytes]) -> list[str]:
    tables = group_tables(group)
    body = [f'<p class="note">{escape(sort_note(group))}</p>'] + _table(group, slug, tables[0], True)
    body += _charts(group, slug, charts)
    for table in tables[1:]:
        body += [f"<h3>{escape(table.title)}</h3>"]
        body += [f'<p class="note">{escape(table.note.replace("*", ""))}</p>'] if table.note else []
        body += _table(group, slug, table, False)
    _, note = shown_threats(group)
    if note:
        body.append(f'<p class="note">{escape(note)}</p>')
    return body + _class_charts(group, slug, charts)


def _points(criterion: float | None) -> str:
    return "diverged" if criterion is None else f"{100 * criterion:.1f}"


def _sensitivity(studies: Sequence[Study], charts: dict[str, bytes]) -> list[str]:
    """Each tuning study's sensitivity figure and a table: per method, how far its trials' validation
    criterion spreads, the paper default's (trial 0) and the selected trial's."""
    if not studies:
        return []
    out = [
        '<section id="sensitivity"><h2>Sensitivity to hyperparameters (tuning trials, validation only)</h2>',
        '<p class="note">Criterion: validation average + worst-class robust accuracy (points, higher is '
        "better) of every finished trial; trial 0 is the paper default; a method is selected only once "
        "all its trials are finished; a trial whose training diverged has no score and is never selected. "
        "No test image is used here.</p>",
    ]
    for study in studies:
        out += _figure(
            *sensitivity_paths(study),
            charts,
            f"sensitivity: every trial of {study.path}",
            f"Every finished trial of {study.path}: one dot per trial, the paper default (trial 0) "
            f"a hollow diamond, the selected trial a star.",
            "sensitivity",
        )
        rows = []
        for method in study.methods:
            mine = [p for p in study.points if p.method == method]
            scores = [p.criterion for p in mine if p.criterion is not None]
            diverged = len(mine) - len(scores)
            default = next((p for p in mine if p.trial == 0), None)
            chosen = next((p for p in mine if p.selected), None)
            cells = [
                method,
                f"{len(mine)}" + (f" ({diverged} diverged)" if diverged else ""),
                f"{100 * min(scores):.1f}" if scores else "",
                f"{100 * max(scores):.1f}" if scores else "",
                "" if default is None else _points(default.criterion),
                "not yet (study unfinished)"
                if chosen is None
                else f"trial {chosen.trial}: {_points(chosen.criterion)}",
            ]
            rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
        head = "".join(
            f"<th>{h}</th>" for h in ("method", "trials finished", "lowest", "highest", "paper default", "selected")
        )
        out.append(
            f'<table class="compact"><caption>{escape(study.path)}</caption><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>"
        )
    return out + ["</section>"]


def to_html(board: Leaderboard, slugs: list[str], charts: dict[str, bytes]) -> str:
    """The whole page; ``charts`` maps a figure's PNG path (see `figure_paths`) to its bytes."""
    n_runs = sum(len(r.runs) for g in board.groups for r in g.rows)
    body = [
        "<h1>fairbench leaderboard</h1>",
        f'<p class="note">{escape(LEGEND.replace("*", ""))}</p>',
        f'<p class="note">{n_runs} runs from {board.n_files} metrics.json files. Click a column header '
        f"to sort; open a row's \"configs\" for every run's settings; hover a method for its "
        f"training settings.</p>",
    ]
    for title, notes in (
        (f"Skipped {len(board.skipped)} file(s)", board.skipped),
        (f"Warnings ({len(board.warnings)})", board.warnings),
    ):
        if notes:
            items = "".join(f"<li><code>{escape(p)}</code>: {escape(why)}</li>" for p, why in notes)
            body.append(f'<div class="warn"><strong>{escape(title)}</strong><ul>{items}</ul></div>')
    body.append(
        "<nav>"
        + "".join(f'<a href="#g-{escape(s)}">{escape(group_title(g, board))}</a>' for g, s in zip(board.groups, slugs))
        + "</nav>"
    )
    for group, slug in zip(board.groups, slugs):
        title = escape(group_title(group, board))
        if superseded(group, board):
            body += (
                [f'<section id="g-{escape(slug)}"><details class="group"><summary>{title}</summary>']
                + _group_body(group, slug, charts)
                + ["</details></section>"]
            )
        else:
            body += [f'<section id="g-{escape(slug)}">', f"<h2>{title}</h2>"]
            if group.shortfall is not None:
                body.append(f'<p class="warn">{escape(shortfall_note(group))}</p>')
            body += _group_body(group, slug, charts) + ["</section>"]
    body += _sensitivity(board.studies, charts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fairbench leaderboard</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{_JS}</script>\n</body></html>\n"
    )
