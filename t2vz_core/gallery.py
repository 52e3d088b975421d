"""OUTPUT_DIR/report.html: one self-contained page to review a run, one card per manifest row.

Each card: status (ok / up to date / flagged / failed / invalid / missing), mode, prompt, seed,
models, timings, QC scores (t2vz_core.qc), the error of a row that failed, looping previews of
source | control map | output (t2vz_core.previews, when they exist), links to the outputs and
the sidecar. The page filters cards by status and mode and sorts them by warp_error_ratio.

Self-contained: inline CSS and JS, no CDN, no network, no server; it opens from disk (file://),
links and previews are relative to the output folder, so the folder can be moved or shared.
Prompts, errors and paths are user input: every piece of text is HTML-escaped, and a
Content-Security-Policy allows only this page's own script and style (by hash), so markup
that slipped through could still not run. Standard library only: cheap enough to rewrite the
page every time report.csv is written.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

from t2vz_core.atomic import atomic_write_text
from t2vz_core.previews import PREVIEW_DIR, PREVIEW_KINDS, preview_name
from t2vz_core.step_results import QC_KEYS as QC_COLUMNS

GALLERY_NAME = "report.html"
# Filter order; statuses not listed here (future ones) follow in alphabetical order.
STATUS_ORDER = ("ok", "up to date", "flagged", "failed", "invalid", "missing")
# A row's previews are shown when its qc step (which makes them) belongs to the recorded run: not for
# failed rows, which would show an older run's, nor rows not run yet.
PREVIEWED = frozenset({"computed", "cached", "up to date"})

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header.page{padding:12px 20px;background:#1d2330;color:#fff}
header.page h1{font-size:18px;margin:0 0 4px}
header.page a{color:#9cc4ff}
#controls{display:flex;flex-wrap:wrap;gap:16px;padding:10px 20px;background:#fff;border-bottom:1px solid #d8dbe2;
 position:sticky;top:0;z-index:1}
#controls fieldset{border:0;margin:0;padding:0;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
#controls legend{font-weight:600;float:left;margin-right:4px}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px;padding:16px 20px}
.card{background:#fff;border:1px solid #d8dbe2;border-left:6px solid #8a93a6;border-radius:6px;padding:10px 12px;
 overflow-wrap:anywhere}
.card[hidden]{display:none}
.card h2{font-size:15px;margin:0;display:inline}
.card .top{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin-bottom:6px}
.badge{font-size:12px;font-weight:600;border-radius:10px;padding:1px 8px;background:#e3e6ec}
.st-ok{border-left-color:#2e9e5b}.st-ok .badge.status{background:#d4f1df}
.st-up-to-date{border-left-color:#4a7fd6}.st-up-to-date .badge.status{background:#dbe7fb}
.st-flagged{border-left-color:#e0a100}.st-flagged .badge.status{background:#ffefc2}
.st-failed{border-left-color:#d33}.st-failed .badge.status{background:#fbd9d9}
.st-invalid{border-left-color:#a03ad6}.st-invalid .badge.status{background:#eddafb}
.previews{display:flex;gap:6px;margin:6px 0}
.previews figure{margin:0;flex:1;text-align:center;background:#eef0f4;border-radius:4px;padding:4px;min-height:60px}
.previews img{max-width:100%;height:auto;image-rendering:auto;display:block;margin:0 auto}
.previews figcaption{font-size:11px;color:#5b6475}
.previews .none{color:#8a93a6;font-size:12px;padding:20px 0}
.prompt{margin:4px 0;font-style:italic}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:1px 10px;margin:6px 0;font-size:13px}
dl.facts dt{color:#5b6475}dl.facts dd{margin:0}
table.qc{border-collapse:collapse;font-size:12px;margin:4px 0}
table.qc th,table.qc td{border:1px solid #d8dbe2;padding:1px 6px;text-align:right}
table.qc th{background:#f4f5f7;font-weight:600}
pre.error{white-space:pre-wrap;background:#fff3f3;border:1px solid #f1c4c4;padding:6px;margin:6px 0;font-size:12px}
.links a{margin-right:10px}
#shown{color:#5b6475}
"""

_JS = """
(function () {
  var grid = document.getElementById('cards');
  var cards = Array.prototype.slice.call(grid.querySelectorAll('.card'));
  var controls = document.getElementById('controls');
  function checked(name) {
    var values = {};
    controls.querySelectorAll('input[name="' + name + '"]:checked').forEach(function (box) {
      values[box.value] = true;
    });
    return values;
  }
  function filter() {
    var statuses = checked('status'), modes = checked('mode'), shown = 0;
    cards.forEach(function (card) {
      var show = statuses[card.dataset.status] === true && modes[card.dataset.mode] === true;
      card.hidden = !show;
      if (show) { shown += 1; }
    });
    document.getElementById('shown').textContent = shown + ' of ' + cards.length + ' rows shown';
  }
  function ratio(card) {
    var value = parseFloat(card.dataset.ratio);
    return isNaN(value) ? null : value;
  }
  function sort() {
    var how = document.getElementById('sort').value;
    var order = cards.slice().sort(function (a, b) {
      var byRow = Number(a.dataset.order) - Number(b.dataset.order);
      if (how === 'row') { return byRow; }
      var ra = ratio(a), rb = ratio(b);
      if (ra === null || rb === null) { return ra === rb ? byRow : (ra === null ? 1 : -1); }
      return (how === 'ratio-desc' ? rb - ra : ra - rb) || byRow;
    });
    order.forEach(function (card) { grid.appendChild(card); });
  }
  controls.addEventListener('change', function (event) {
    if (event.target.id === 'sort') { sort(); } else { filter(); }
  });
  filter();
  sort();
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


_CSP = (
    "default-src 'none'; img-src 'self' file: data:; media-src 'self' file:; "
    f"style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; base-uri 'none'; form-action 'none'"
)


def _e(value: Any) -> str:
    """HTML-escaped text of any value (quotes too: safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def display_status(line: dict) -> str:
    """The card's status: the report's ('flagged': over the row's QC limit, which wins over 'up to
    date'), with 'up to date' for an ok row that did not run again."""
    status = str(line.get("status") or "missing")
    if status == "ok" and line.get("up_to_date"):
        return "up to date"
    return status


def _slug(status: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in status.lower())


class _Folder:
    """The output folder as the page sees it, listed once (a report may have thousands of rows: no
    per-row stat or realpath calls)."""

    def __init__(self, output_dir: Path):
        self.path = output_dir
        self.root = os.path.abspath(output_dir)
        self.names = _listing(output_dir)
        self.previews = _listing(output_dir / PREVIEW_DIR)

    def href(self, path: str | os.PathLike) -> str:
        """A link from report.html: relative inside the output folder (which can then move), else file://."""
        target = os.path.abspath(os.path.join(self.root, os.fspath(path)))
        if target.startswith(self.root + os.sep):
            return urllib.parse.quote(Path(os.path.relpath(target, self.root)).as_posix())
        return Path(target).as_uri()

    def has(self, path: str | os.PathLike) -> bool:
        target = os.path.abspath(os.path.join(self.root, os.fspath(path)))
        if os.path.dirname(target) == self.root:
            return os.path.basename(target) in self.names
        return os.path.exists(target)

    def preview(self, job_id: str, kind: str) -> str | None:
        name = preview_name(job_id, kind)
        return f"{PREVIEW_DIR}/{name}" if name in self.previews else None


def _listing(folder: Path) -> frozenset[str]:
    try:
        return frozenset(os.listdir(folder))
    except OSError:
        return frozenset()


def _number(value: Any, digits: int = 2) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "-"


def _qc_scores(line: dict, sidecar: dict) -> dict:
    scores = dict(sidecar.get("qc") or {})
    for key in QC_COLUMNS:  # report lines carry them as columns too
        if scores.get(key) in (None, "") and line.get(key) not in (None, ""):
            scores[key] = line[key]
    return {key: scores.get(key) for key in QC_COLUMNS}


def _read_sidecar(line: dict) -> dict:
    path = line.get("sidecar")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sidecar_view(sidecar: Any) -> dict:
    """What a card reads of a sidecar (a Sidecar model or its JSON), without dumping the whole model."""
    if not hasattr(sidecar, "steps"):
        return sidecar
    return {
        "job_id": sidecar.job_id,
        "mode": sidecar.mode,
        "seconds": sidecar.seconds,
        "job": sidecar.job,
        "qc": sidecar.qc,
        "steps": {name: {"status": record.status, "seconds": record.seconds} for name, record in sidecar.steps.items()},
    }


def _card(index: int, line: dict, sidecar: dict, folder: _Folder) -> str:
    status = display_status(line)
    job = sidecar.get("job") or {}
    job_id = line.get("job_id") or sidecar.get("job_id") or ""
    mode = line.get("mode") or sidecar.get("mode") or ""
    qc = _qc_scores(line, sidecar)
    ratio = qc.get("warp_error_ratio")
    parts = [
        f'<article class="card st-{_slug(status)}" id="card-{index}" data-order="{index}" '
        f'data-status="{_e(status)}" data-mode="{_e(mode)}" data-job="{_e(job_id)}" '
        f'data-ratio="{_e(_number(ratio, 6) if ratio not in (None, "") else "")}">',
        '<div class="top">',
        f'<span class="badge status">{_e(status)}</span>',
        f"<h2>row {_e(line.get('row') if line.get('row') is not None else '?')} · {_e(job_id or '?')}</h2>",
        f'<span class="badge mode">{_e(mode or "no mode")}</span>',
        "</div>",
    ]
    if line.get("qc") in PREVIEWED:  # previews are those of the run this row's sidecar records
        parts.append(_previews(job_id, mode, folder))
    if job.get("prompt"):
        parts.append(f'<p class="prompt">{_e(job["prompt"])}</p>')
    facts = []
    if job.get("negative_prompt"):
        facts.append(("negative prompt", _e(job["negative_prompt"])))
    if job.get("seed") is not None:
        facts.append(("seed", _e(job["seed"])))
    for key in ("model", "controlnet"):
        if job.get(key):
            facts.append((key, f'<span title="{_e(job[key])}">{_e(Path(str(job[key])).name or job[key])}</span>'))
    timing = _timings(line, sidecar)
    if timing:
        facts.append(("time", timing))
    if line.get("qc_max_warp_ratio") not in (None, ""):
        facts.append(("QC limit", f"warp error ratio ≤ {_e(line['qc_max_warp_ratio'])}"))
    if facts:
        parts.append('<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>")
    if any(value not in (None, "") for value in qc.values()):
        parts.append(
            '<table class="qc"><tr>'
            + "".join(f"<th>{k.replace('_', ' ')}</th>" for k in QC_COLUMNS)
            + "</tr><tr>"
            + "".join(f'<td class="{k}">{_number(qc[k])}</td>' for k in QC_COLUMNS)
            + "</tr></table>"
        )
    if line.get("error"):
        parts.append(f'<pre class="error">{_e(line["error"])}</pre>')
    links = [f'<a href="{_e(folder.href(p))}">{_e(os.path.basename(str(p)))}</a>' for p in line.get("outputs") or []]
    if line.get("sidecar") and folder.has(line["sidecar"]):
        links.append(f'<a class="sidecar" href="{_e(folder.href(line["sidecar"]))}">sidecar</a>')
    if links:
        parts.append('<p class="links">' + "".join(links) + "</p>")
    parts.append("</article>")
    return "\n".join(parts)


def _previews(job_id: str, mode: str, folder: _Folder) -> str:
    found = {kind: folder.preview(job_id, kind) for kind in PREVIEW_KINDS} if job_id else {}
    found = {kind: src for kind, src in found.items() if src is not None}
    if not found:
        return ""
    figures = []
    for kind in PREVIEW_KINDS:
        caption = "control map" if kind == "control" else kind
        if kind in found:
            src = _e(urllib.parse.quote(found[kind]))
            body = f'<img src="{src}" alt="{_e(caption)} of {_e(job_id)}" loading="lazy">'
        else:
            reason = {
                "source": "no source (text2video)"
                if mode == "text2video"
                else "the source is the control map"
                if "control" in found
                else "no source preview",
                "control": "no control map",
                "output": "no output preview",
            }[kind]
            body = f'<div class="none">{reason}</div>'
        figures.append(f'<figure class="{kind}">{body}<figcaption>{_e(caption)}</figcaption></figure>')
    return '<div class="previews">' + "".join(figures) + "</div>"


def _timings(line: dict, sidecar: dict) -> str:
    steps = sidecar.get("steps") or {}
    total = line.get("seconds") if line.get("seconds") is not None else sidecar.get("seconds")
    pieces = [] if total is None else [f"{_number(total, 1)} s in all"]
    from t2vz_core.pipeline import step_names  # imported already by the report that writes this page

    order = step_names()
    for step in list(order) + sorted(set(steps) - set(order)):
        info = steps.get(step) or {}
        if info.get("seconds") is not None:
            status = f" ({_e(info['status'])})" if info.get("status") not in (None, "computed") else ""
            pieces.append(f"{_e(step)} {_number(info['seconds'], 2)}{status}")
    return "; ".join(pieces)


def _checkboxes(name: str, values: dict[str, int], label=lambda v: v) -> str:
    boxes = "".join(
        f'<label><input type="checkbox" name="{name}" value="{_e(v)}" checked> {_e(label(v))} ({n})</label>'
        for v, n in values.items()
    )
    return f'<fieldset id="filter-{name}"><legend>{name}</legend>{boxes}</fieldset>'


def render_gallery(
    output_dir: str | os.PathLike, rows: list[dict], extra: dict | None = None, sidecars: dict[str, Any] | None = None
) -> str:
    """The page's HTML. `rows`: report lines (t2vz_core.report); `sidecars` (Sidecar models or their
    JSON, by job_id), else each row's sidecar is read from disk."""
    output_dir = Path(output_dir)
    folder = _Folder(output_dir)
    extra = extra or {}
    sidecars = sidecars or {}
    cards, statuses, modes = [], {}, {}
    for index, line in enumerate(rows):
        sidecar = sidecars.get(line.get("job_id") or "")
        sidecar = _read_sidecar(line) if sidecar is None else _sidecar_view(sidecar)
        cards.append(_card(index, line, sidecar, folder))
        status = display_status(line)
        mode = line.get("mode") or sidecar.get("mode") or ""
        statuses[status] = statuses.get(status, 0) + 1
        modes[mode] = modes.get(mode, 0) + 1
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    statuses = dict(sorted(statuses.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
    modes = dict(sorted(modes.items()))
    title = f"t2vz: {Path(str(extra.get('manifest') or output_dir)).name}"
    files = [
        f'<a href="{name}">{name}</a>'
        for name in ("report.csv", "report.json", "report.parquet")
        if name in folder.names
    ]
    summary = ", ".join(f"{n} {_e(s)}" for s, n in statuses.items())
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head><body>",
            f'<header class="page"><h1>{_e(title)}</h1>',
            f"<div>{len(rows)} rows: {summary}. Written {_e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}. "
            f"{' '.join(files)}</div></header>",
            '<form id="controls">',
            _checkboxes("status", statuses),
            _checkboxes("mode", modes, lambda v: v or "no mode"),
            '<label>sort <select id="sort"><option value="row">manifest order</option>'
            '<option value="ratio-desc">warp error ratio, highest first</option>'
            '<option value="ratio-asc">warp error ratio, lowest first</option></select></label>',
            '<span id="shown"></span>',
            "</form>",
            '<main id="cards">',
            *cards,
            "</main>",
            f"<script>{_JS}</script>",
            "</body></html>",
            "",
        ]
    )


def write_gallery(
    output_dir: str | os.PathLike, rows: list[dict], extra: dict | None = None, sidecars: dict[str, Any] | None = None
) -> Path:
    """Write OUTPUT_DIR/report.html atomically and return its path."""
    return atomic_write_text(Path(output_dir) / GALLERY_NAME, render_gallery(output_dir, rows, extra, sidecars))
