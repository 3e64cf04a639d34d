"""The HTML leaderboard: one self-contained file (inline CSS/JS, charts as data URIs, no network).

Each group is a table sortable by any column (click a header, or open ``index.html#sort=KEY`` /
``#sort=-KEY`` for descending, e.g. ``#sort=pgd20_worst``); each row has a details row with the
full config of every run behind it, and the method cell shows the training settings on hover.
"""

from __future__ import annotations

import base64
import json
from html import escape as _escape

from fairbench.report.model import Group, Leaderboard, Row, threat_name
from fairbench.report.figures import figure_paths, tradeoff_paths
from fairbench.report.tables import LEGEND, columns, one_line, rank_text, sort_note


def escape(text: object) -> str:
    """Text for an HTML text node or a quoted attribute value (``&<>"'`` escaped), on one line."""
    return _escape(one_line(str(text)), quote=True)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:32px 0 4px}
p.note{color:#555;max-width:70em;margin:4px 0}
nav a{margin-right:12px}
table.leaderboard{border-collapse:collapse;margin:10px 0;font-variant-numeric:tabular-nums}
.leaderboard th,.leaderboard td{padding:4px 8px;border-bottom:1px solid #e3e3e3;white-space:nowrap}
.leaderboard th{background:#f4f5f7;cursor:pointer;user-select:none;text-align:right}
.leaderboard th.threat{text-align:center;cursor:default;border-bottom:2px solid #c8c8c8}
.scroll{overflow-x:auto}
.leaderboard th.text,.leaderboard td.text{text-align:left}.leaderboard td{text-align:right}
.leaderboard th[aria-sort=ascending]::after{content:" \\25B2"}
.leaderboard th[aria-sort=descending]::after{content:" \\25BC"}
.leaderboard tr.row:hover td{background:#f0f6ff}
.leaderboard tr.config td{font-size:12px;color:#444;text-align:left;border-bottom:2px solid #d0d0d0}
.leaderboard tr.config pre{margin:4px 0 8px 16px;white-space:pre-wrap;max-width:90em}
.warn{border-left:4px solid #d9822b;background:#fff7ec;padding:6px 12px;margin:12px 0}
.charts figure{margin:12px 0}.charts img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12px;color:#555}
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
      if (heads[i].getAttribute('data-key') === key) { index = i; numeric = heads[i].className !== 'text'; }
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
        config = {k: d.get(k) for k in ("run_id", "method", "params", "seed", "threat", "training", "preset",
                                        "select", "ema", "init_from", "timing", "env", "checkpoint")}
        summary = f"seed {run.seed} · {run.record.run_id} · {run.path}"
        text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=True)  # newlines: only json's
        items.append(f"<details><summary>{escape(summary)}</summary>"
                     f"<pre>{_escape(text, quote=True)}</pre></details>")
    return "".join(items)


def _hover(row: Row) -> str:
    t = row.runs[0].training
    keys = ("epochs", "batch_size", "lr", "schedule", "eps", "step_size", "attack_steps",
            "train_per_class", "eval_per_class")
    params = row.runs[0].record.params
    return (f"{row.method} params {json.dumps(params, sort_keys=True)}; "
            + ", ".join(f"{k}={t[k]:.6g}" if isinstance(t.get(k), float) else f"{k}={t.get(k)}"
                        for k in keys if k in t) + f"; seeds {', '.join(map(str, row.seeds))}")


def _table(group: Group, slug: str) -> list[str]:
    cols = columns(group)
    default_key = f"{group.sort_threat}_worst"
    heads = ['<th data-key="rank">#</th>'] + [
        f'<th data-key="{escape(c.key)}"' + ("" if c.numeric else ' class="text"')
        + (' aria-sort="ascending"' if c.key == default_key else "") + f">{escape(c.short or c.header)}</th>"
        for c in cols]
    spans = f'<th colspan="{1 + sum(c.threat is None for c in cols)}"></th>' + "".join(
        f'<th colspan="{sum(c.threat == t for c in cols)}" class="threat">{escape(threat_name(t))}</th>'
        for t in group.threats)
    out = [f'<div class="scroll"><table class="leaderboard" id="t-{escape(slug)}">',
           f"<thead><tr>{spans}</tr><tr>" + "".join(heads) + "</tr></thead>"]
    for row in group.rows:
        rank = "" if row.rank is None else row.rank
        cells = [f'<td data-sort="{rank}">{rank_text(row)}</td>']
        for c in cols:
            text, key = c.cell(row)
            attrs = f' data-sort="{escape("" if key is None else str(key))}"'
            attrs += ' class="text"' if not c.numeric else ""
            attrs += f' title="{escape(_hover(row))}"' if c.key == "method" else ""
            cells.append(f"<td{attrs}>{escape(text)}</td>")
        out += ["<tbody>", '<tr class="row">' + "".join(cells) + "</tr>",
                f'<tr class="config"><td colspan="{len(cols) + 1}"><details><summary>'
                f'{len(row.runs)} run(s): configs</summary>{_run_config(row)}</details></td></tr>', "</tbody>"]
    return out + ["</table></div>"]


def _figure(png: str, svg: str, charts: dict[str, bytes], alt: str, caption: str, kind: str) -> list[str]:
    if png not in charts:
        return []
    data = base64.b64encode(charts[png]).decode()
    return [f'<figure class="{kind}"><img alt="{escape(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{escape(caption)} Files: <a href="{escape(png)}">PNG</a>, '
            f'<a href="{escape(svg)}">SVG</a>.</figcaption></figure>']


def _charts(group: Group, slug: str, charts: dict[str, bytes]) -> list[str]:
    name = threat_name(group.sort_threat)
    out = ['<div class="charts">'] + _figure(
        *tradeoff_paths(slug), charts, f"trade-off: average vs worst-class {name} error",
        f"Average against worst-class {name} error, one point per method (mean over seeds), its 95% "
        f"bootstrap intervals as a cross (none for a row without outcomes); dashed: the Pareto front, "
        f"the methods no other beats on both.", "tradeoff")
    for threat, (png, svg) in figure_paths(group, slug).items():
        name = threat_name(threat)
        out += _figure(png, svg, charts, f"{name} error per class",
                       f"{name} error per class, mean over seeds; error bars: 95% bootstrap intervals "
                       f"(none for a row without outcomes).", "classwise")
    return out + ["</div>"]


def to_html(board: Leaderboard, slugs: list[str], charts: dict[str, bytes]) -> str:
    """The whole page; ``charts`` maps a figure's PNG path (see `figure_paths`) to its bytes."""
    n_runs = sum(len(r.runs) for g in board.groups for r in g.rows)
    body = ["<h1>fairbench leaderboard</h1>", f'<p class="note">{escape(LEGEND.replace("*", ""))}</p>',
            f'<p class="note">{n_runs} runs from {board.n_files} metrics.json files. Click a column header '
            f'to sort; open a row\'s "configs" for every run\'s settings; hover a method for its '
            f'training settings.</p>']
    for title, notes in ((f"Skipped {len(board.skipped)} file(s)", board.skipped),
                         (f"Warnings ({len(board.warnings)})", board.warnings)):
        if notes:
            items = "".join(f"<li><code>{escape(p)}</code>: {escape(why)}</li>" for p, why in notes)
            body.append(f'<div class="warn"><strong>{escape(title)}</strong><ul>{items}</ul></div>')
    body.append("<nav>" + "".join(f'<a href="#g-{escape(s)}">{escape(g.key.label())}</a>'
                                  for g, s in zip(board.groups, slugs)) + "</nav>")
    for group, slug in zip(board.groups, slugs):
        body += [f'<section id="g-{escape(slug)}">', f"<h2>{escape(group.key.label())}</h2>",
                 f'<p class="note">{escape(sort_note(group))}</p>']
        body += _table(group, slug) + _charts(group, slug, charts) + ["</section>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>fairbench leaderboard</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{_JS}</script>\n</body></html>\n")
