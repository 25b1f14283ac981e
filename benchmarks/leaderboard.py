"""Benchmark result files, the leaderboard that merges them beside the published figures, run-to-run comparison,
the regression check, and the self-contained HTML page.

A result file is one task run with one subject (a pretraining run or a checkpoint) over one or more seeds:

    {"schema": "mimkit-bench-result/1", "subject": "mae-b16", "method": "mae", "model": "ViT-B/16", "img_size": 224,
     "task": "imagenet1k-linear", "domain": "core", "data": "ImageNet-1K", "protocol": "linear", "metric": "top1",
     "results": {"pretrained": {"values": [67.1, 67.4], "mean": 67.25, "std": 0.21, "seeds": [0, 1]},
                 "random": {...}},
     "rows": [...run_task rows...], "machine": "...", "created": "2026-12-02T18:00:00Z", "mimkit": "0.1.0"}

Values are in the published figures' units (accuracies in percent). Files from any number of runs and machines
merge into one leaderboard; a published figure sits beside ours as comparable only when the protocol matches
(data, protocol, metric, model, input size and any protocol detail both sides state); otherwise the differences
are printed.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import platform
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from mimkit.core.errors import ConfigError, DataError

from .published import PublishedResult, published_results
from .report import signed, write_table

SCHEMA = "mimkit-bench-result/1"
# metrics where a smaller value is better (a regression is a rise)
LOWER_IS_BETTER = {"eer", "fid", "loss", "hd95", "mae_error"}
# the protocol details a task's settings and a published record may both state; a mismatch makes them incomparable
PROTOCOL_DETAILS = ("split", "label_set", "metric_variant", "background", "bands", "labels_per_class")


# ---------------------------------------------------------------------------------------------- result files
def summarise(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (0 for one value) of the seeds' values."""
    values = [float(v) for v in values]
    return {"values": values, "mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def result_record(subject: str, task, rows: Sequence[dict], *, method: str | None = None,
                  img_size: int | None = None, protocol_details: dict | None = None) -> dict:
    """One result file's content from `run_task` rows of one task over several seeds."""
    if not rows:
        raise ConfigError(f"task {task.name!r}: no result rows to record")
    by_init: dict[str, list[dict]] = {}
    for row in rows:
        by_init.setdefault(row["init"], []).append(row)
    results = {init: {**summarise([r["value"] for r in group]), "seeds": [r["seed"] for r in group]}
               for init, group in by_init.items()}
    return {"schema": SCHEMA, "subject": subject, "method": method, "model": rows[0]["model"], "img_size": img_size,
            "task": task.name, "domain": task.domain, "data": task.dataset, "protocol": task.protocol,
            "metric": task.metric, "protocol_details": dict(protocol_details or {}), "results": results,
            "rows": list(rows), "machine": platform.node(),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def write_result(record: dict, out_dir: str | Path) -> Path:
    """OUT/<subject>/<task>.json, written whole (a temporary file renamed into place)."""
    folder = Path(out_dir) / _safe(record["subject"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe(record['task'])}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2, default=str) + "\n")
    partial.replace(path)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name)).strip("_") or "unnamed"


def read_results(paths: Iterable[str | Path]) -> list[dict]:
    """Every result file under the given files and folders (searched recursively), checked."""
    records, seen = [], set()
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise DataError(f"result path {str(path)!r} does not exist")
        files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        found = 0
        for file in files:
            record = _read_one(file, strict=not path.is_dir())
            if record is None:
                continue
            key = (record["subject"], record["task"], record.get("machine"), record.get("created"))
            if key not in seen:
                seen.add(key)
                records.append(record)
            found += 1
        if path.is_dir() and not found:
            raise DataError(f"no mimkit-bench result files (schema {SCHEMA}) under {str(path)!r}")
    return records


def _read_one(file: Path, strict: bool) -> dict | None:
    try:
        content = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        if strict:
            raise DataError(f"{str(file)!r} is not a readable JSON result file: {error}") from None
        return None
    if not isinstance(content, dict) or content.get("schema") != SCHEMA:
        if strict:
            raise DataError(f"{str(file)!r} is not a mimkit-bench result file (expected \"schema\": {SCHEMA!r})")
        return None  # other JSON files in a results folder (tables, configs) are not results
    missing = [k for k in ("subject", "task", "data", "protocol", "metric", "results") if k not in content]
    bad = [init for init, entry in (content.get("results") or {}).items()
           if not isinstance(entry, dict) or not _finite(entry.get("mean")) or not _finite(entry.get("std", 0))]
    if missing or bad or not isinstance(content.get("results"), dict):
        raise DataError(f"{str(file)!r}: a result file needs subject, task, data, protocol, metric and results with a "
                        f"finite mean and std per init; missing {missing}, bad entries {bad}")
    return content


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------- comparability
def protocol_differences(record: dict, published: PublishedResult) -> list[str]:
    """What separates our result from a published figure: empty when they are measured the same way."""
    differences = []
    for ours, theirs, name in ((record["data"], published.data, "data"),
                               (record["protocol"], published.protocol, "protocol"),
                               (record["metric"], published.metric, "metric"),
                               (record.get("model"), published.model, "model"),
                               (record.get("img_size"), published.img_size, "input size")):
        if ours is None:
            differences.append(f"{name}: not recorded here vs {theirs}")
        elif ours != theirs:
            differences.append(f"{name}: {ours} here vs {theirs}")
    details = record.get("protocol_details") or {}
    theirs = getattr(published, "protocol_details", None) or {}
    for key in PROTOCOL_DETAILS:
        if key in details and key in theirs and details[key] != theirs[key]:
            differences.append(f"{key}: {details[key]} here vs {theirs[key]}")
    return differences


def published_for(record: dict, records: Sequence[PublishedResult] | None = None) -> list[PublishedResult]:
    """The published figures on the same data, protocol and metric as a result (comparable or not)."""
    records = published_results() if records is None else records
    return [p for p in records
            if (p.data, p.protocol, p.metric) == (record["data"], record["protocol"], record["metric"])]


def beside_published(records: Sequence[dict], published: Sequence[PublishedResult] | None = None) -> list[dict]:
    """One row per (our result, published figure on the same task): the difference only when comparable."""
    rows = []
    for record in records:
        for init, entry in sorted(record["results"].items()):
            for p in published_for(record, published):
                differences = protocol_differences(record, p)
                rows.append({"subject": _label(record, init), "task": record["task"], "ours": entry["mean"],
                             "std": entry["std"], "published": p.value, "method": p.method, "model": p.model,
                             "comparable": not differences,
                             "difference": entry["mean"] - p.value if not differences else None,
                             "why_not": "; ".join(differences), "source": p.source, "table": p.table,
                             "setting": p.setting})
    return rows


# ---------------------------------------------------------------------------------------------- leaderboard
@dataclass
class Leaderboard:
    """Rows (our subjects and the published figures) by columns (tasks)."""

    tasks: list[str]
    rows: list[dict] = field(default_factory=list)        # {"name", "kind": ours|published, task: cell...}
    beside: list[dict] = field(default_factory=list)      # beside_published rows

    def table_rows(self) -> list[dict]:
        return [{"name": r["name"], "kind": r["kind"], **{t: r.get(t, {}).get("text", "") for t in self.tasks}}
                for r in self.rows]


def _label(record: dict, init: str) -> str:
    return record["subject"] if init == "pretrained" else f"{record['subject']} ({init} init)"


def build_leaderboard(records: Sequence[dict], published: Sequence[PublishedResult] | None = None,
                      with_published: bool = True) -> Leaderboard:
    """Merge result files: one row per subject and initialisation (mean +- std over seeds, n), one row per
    published figure on any of the tasks' data, protocol and metric (with its source)."""
    if not records:
        raise DataError("no results to put on a leaderboard")
    published = published_results() if published is None else list(published)
    tasks = sorted({r["task"] for r in records})
    ours: dict[str, dict] = {}
    for record in records:
        for init, entry in record["results"].items():
            row = ours.setdefault(_label(record, init), {"name": _label(record, init), "kind": "ours",
                                                         "model": record.get("model"), "method": record.get("method")})
            if record["task"] in row:
                raise DataError(f"two results for {row['name']} on {record['task']} (from {record.get('machine')} "
                                f"{record.get('created')} and another); keep one")
            n = len(entry.get("values") or [entry["mean"]])
            row[record["task"]] = {"mean": entry["mean"], "std": entry["std"], "n": n,
                                   "text": f"{entry['mean']:.2f} ± {entry['std']:.2f} (n={n})"}
    board = Leaderboard(tasks, list(ours.values()))
    if with_published:
        first = {r["task"]: r for r in records}
        for p in published:
            columns = [t for t in tasks if (first[t]["data"], first[t]["protocol"], first[t]["metric"])
                       == (p.data, p.protocol, p.metric)]
            if not columns:
                continue
            name = f"{p.method} {p.model} ({_short_source(p.source)}, {p.table})"
            if p.setting:
                name += f" [{p.setting}]"
            if p.img_size != 224:
                name += f" @{p.img_size}px"
            row = {"name": name, "kind": "published", "source": p.source, "url": source_url(p.source),
                   "table": p.table}
            for task in columns:
                row[task] = {"mean": p.value, "std": None, "n": None, "text": f"{p.value:g}"}
            board.rows.append(row)
        board.beside = beside_published(records, published)
    return board


def _short_source(source: str) -> str:
    return source.split(",")[0].strip()


def source_url(source: str) -> str | None:
    """A link for a source text: its arXiv id, DOI or GitHub repository; None when it names none."""
    arxiv = re.search(r"arXiv[: ]?(\d{4}\.\d{4,5})", source, re.I)
    if arxiv:
        return f"https://arxiv.org/abs/{arxiv.group(1)}"
    doi = re.search(r"\b(10\.\d{4,9}/\S+[^\s.,;)])", source)
    if doi:
        return f"https://doi.org/{doi.group(1)}"
    url = re.search(r"https?://\S+[^\s.,;)]", source)
    if url:
        return url.group(0)
    repo = re.search(r"(?:github\.com/)?\b([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)\b", source)
    if repo and not re.match(r"\d", repo.group(1)):
        return f"https://github.com/{repo.group(1).rstrip('.')}"
    return None


def leaderboard_markdown(board: Leaderboard, path: str | Path | None = None) -> str:
    """The leaderboard as markdown (and CSV/JSON beside it with `path`), then the comparisons with published
    figures: the difference where the protocol matches, the reasons where it does not."""
    columns = {"name": "subject", "kind": "kind", **{t: t for t in board.tasks}}
    text = write_table(board.table_rows(), columns, path,
                       "## Leaderboard\n\nOurs: mean ± sample std over seeds (n seeds). Published: the paper's "
                       "figure on the same data, protocol and metric (not necessarily the same model or input size).")
    if board.beside:
        stem = None if path is None else Path(str(path).removesuffix(".md") + "_published")
        text += "\n" + write_table(
            board.beside, ("subject", "task", "ours", "std", "published", "method", "model", "comparable",
                           "difference", "why_not", "source", "table"), stem,
            "## Beside the published figures\n\nA difference is shown only where the protocol matches; "
            "`why_not` lists what differs otherwise.", formats={"difference": signed})
    return text


# ---------------------------------------------------------------------------------------------- compare, check
def _index(records: Sequence[dict]) -> dict[tuple, dict]:
    index = {}
    for record in records:
        for init, entry in record["results"].items():
            index[(record["task"], init)] = {**entry, "metric": record["metric"]}
    return index


def compare_results(a: Sequence[dict], b: Sequence[dict]) -> list[dict]:
    """Two runs' results task by task: each mean +- std, the difference B - A, and whether it exceeds the spread
    (the larger of the two standard deviations)."""
    left, right = _index(a), _index(b)
    rows = []
    for key in sorted(set(left) | set(right)):
        x, y = left.get(key), right.get(key)
        row = {"task": key[0], "init": key[1], "a": _text(x), "b": _text(y), "difference": None, "beyond_spread": None}
        if x and y:
            spread = max(x["std"], y["std"])
            row["difference"] = round(y["mean"] - x["mean"], 4)
            row["beyond_spread"] = abs(row["difference"]) > spread
        rows.append(row)
    return rows


def _text(entry: dict | None) -> str:
    if entry is None:
        return "(absent)"
    return f"{entry['mean']:.2f} ± {entry['std']:.2f} (n={len(entry.get('values') or [0])})"


def check_regressions(results: Sequence[dict], baseline: Sequence[dict], tolerance: float = 0.0) -> list[dict]:
    """The tasks where a metric got worse than the baseline by more than its measured spread (the larger of the two
    standard deviations) plus `tolerance`; a task the baseline has and the results lack is a failure too."""
    now, before = _index(results), _index(baseline)
    failures = []
    for key, base in sorted(before.items()):
        new = now.get(key)
        if new is None:
            failures.append({"task": key[0], "init": key[1], "baseline": base["mean"], "now": None,
                             "allowed": None, "why": "missing from the results"})
            continue
        allowed = max(base["std"], new["std"]) + tolerance
        change = new["mean"] - base["mean"]
        worse = -change if base["metric"] not in LOWER_IS_BETTER else change
        if worse > allowed:
            failures.append({"task": key[0], "init": key[1], "baseline": base["mean"], "now": new["mean"],
                             "allowed": round(allowed, 4),
                             "why": f"{base['metric']} {'fell' if change < 0 else 'rose'} by {abs(change):.3g}"})
    return failures


# ---------------------------------------------------------------------------------------------- pictures, HTML
def bar_chart(board: Leaderboard, path: str | Path, title: str = "") -> Path:
    """One PNG: a group of bars per task, one bar per subject (error bar: the seeds' std); published figures on
    the same task as black ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [r for r in board.rows if r["kind"] == "ours"]
    width = 0.8 / max(len(ours), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(board.tasks) + 1), 3.6))
    for i, row in enumerate(ours):
        xs = [t + (i - (len(ours) - 1) / 2) * width for t in range(len(board.tasks))]
        means = [row.get(task, {}).get("mean", math.nan) for task in board.tasks]
        stds = [row.get(task, {}).get("std") or 0.0 for task in board.tasks]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=row["name"])
    for row in board.rows:
        if row["kind"] == "published":
            for t, task in enumerate(board.tasks):
                if task in row:
                    ax.plot([t - 0.4, t + 0.4], [row[task]["mean"]] * 2, color="black", lw=1)
    ax.set_xticks(range(len(board.tasks)), board.tasks, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("metric (task's unit)")
    ax.set_title(title or "mimkit-bench", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
th {{ background: #f3f3f3; cursor: pointer; user-select: none; }}
th.asc::after {{ content: " \\25B2"; }} th.desc::after {{ content: " \\25BC"; }}
tr.published td {{ color: #555; font-style: italic; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
</style></head><body>
<h1>{title}</h1>
<p>{intro}</p>
{tables}
{images}
<pre id="selftest" hidden></pre>
<script>
function cellValue(td) {{
  const v = td.getAttribute("data-value");
  if (v !== null && v !== "") return parseFloat(v);
  return td.textContent.trim().toLowerCase();
}}
function sortTable(table, column, descending) {{
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {{
    const x = cellValue(a.cells[column]), y = cellValue(b.cells[column]);
    const xe = (x === "" || Number.isNaN(x)), ye = (y === "" || Number.isNaN(y));
    if (xe || ye) return xe - ye;  // empty cells last either way
    const order = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
    return descending ? -order : order;
  }});
  rows.forEach(r => body.appendChild(r));
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => {{
    th.classList.remove("asc", "desc");
    if (i === column) th.classList.add(descending ? "desc" : "asc");
  }});
}}
document.querySelectorAll("table.sortable").forEach(table => {{
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => th.addEventListener("click", () => {{
    sortTable(table, i, th.classList.contains("asc"));
  }}));
}});
// `#selftest`: click a numeric column header twice (as a person would) and print the orders it produced,
// so a headless browser test can read them from the page.
if (location.hash === "#selftest") {{
  const table = document.querySelector("table.sortable");
  const th = table.tHead.rows[0].cells[2];
  const column = () => Array.from(table.tBodies[0].rows).map(r => r.cells[2].getAttribute("data-value"));
  th.click(); const ascending = column();
  th.click(); const descending = column();
  const out = document.getElementById("selftest");
  out.textContent = JSON.stringify({{ascending, descending}});
  out.hidden = false;
}}
</script>
</body></html>
"""


def _html_table(board: Leaderboard) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["subject", "kind", *board.tasks])
    lines = []
    for row in board.rows:
        name = html.escape(row["name"])
        if row["kind"] == "published":
            title = html.escape(f"{row['source']}, {row['table']}", quote=True)
            name = (f'<a href="{html.escape(row["url"], quote=True)}" title="{title}">{name}</a>' if row.get("url")
                    else f'<span title="{title}">{name}</span>')
        cells = [f"<td>{name}</td>", f"<td>{row['kind']}</td>"]
        for task in board.tasks:
            cell = row.get(task)
            if not cell:
                cells.append('<td class="num" data-value=""></td>')
                continue
            text = html.escape(cell["text"])
            if row["kind"] == "published":
                title = html.escape(f"{row['source']}, {row['table']}", quote=True)
                text = (f'<a class="source" href="{html.escape(row["url"], quote=True)}" title="{title}">{text}</a>'
                        if row.get("url") else f'<span class="source" title="{title}">{text}</span>')
            cells.append(f'<td class="num" data-value="{cell["mean"]}">{text}</td>')
        lines.append(f'<tr class="{row["kind"]}">{"".join(cells)}</tr>')
    return (f'<table class="sortable" id="leaderboard"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(lines)}</tbody></table>')


def _html_beside(board: Leaderboard) -> str:
    if not board.beside:
        return ""
    columns = ("subject", "task", "ours", "published", "comparable", "difference", "why_not", "source")
    head = "".join(f"<th>{c}</th>" for c in columns)
    lines = []
    for row in board.beside:
        cells = []
        for c in columns:
            value = row.get(c)
            text = "" if value is None else (signed(value) if c == "difference" else str(value))
            if c == "source":
                url = source_url(row["source"])
                label = html.escape(f"{row['source']}, {row['table']}")
                text_html = f'<a href="{html.escape(url, quote=True)}">{label}</a>' if url else label
            else:
                text_html = html.escape(text)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f'<td{" class=num" if number else ""} data-value="{value if number else ""}">{text_html}</td>')
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<h2>Beside the published figures</h2><p>A difference only where the protocol matches; otherwise what '
            f'differs.</p><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody>'
            f'</table>')


def write_html(board: Leaderboard, path: str | Path, images: Sequence[str | Path] = (),
               title: str = "mimkit-bench leaderboard") -> Path:
    """One self-contained page: the sortable leaderboard, the comparisons, the plots inlined as data URIs (no file
    or network needed to open it); every published value links to its source."""
    pictures = []
    for image in images:
        data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
        pictures.append(f'<h2>{html.escape(Path(image).stem)}</h2><img alt="{html.escape(Path(image).stem)}" '
                        f'src="data:image/png;base64,{data}">')
    intro = ("Ours: mean ± sample standard deviation over seeds. Published rows are in italics; hover a value for "
             "its paper and table, click to open the source. Click a column header to sort.")
    page = _PAGE.format(title=html.escape(title), intro=intro,
                        tables=_html_table(board) + _html_beside(board), images="\n".join(pictures))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def write_leaderboard(records: Sequence[dict], out_dir: str | Path, with_published: bool = True) -> dict[str, Path]:
    """leaderboard.md/.csv/.json, one bar chart per suite (domain) and leaderboard.html in OUT."""
    out = Path(out_dir)
    board = build_leaderboard(records, with_published=with_published)
    leaderboard_markdown(board, out / "leaderboard")
    charts = []
    for domain in sorted({r["domain"] for r in records if r.get("domain")}):
        part = build_leaderboard([r for r in records if r.get("domain") == domain], with_published=with_published)
        charts.append(bar_chart(part, out / f"suite_{domain}.png", f"suite {domain}"))
    page = write_html(board, out / "leaderboard.html", charts)
    return {"markdown": out / "leaderboard.md", "html": page, **{c.stem: c for c in charts}}


__all__ = ["SCHEMA", "summarise", "result_record", "write_result", "read_results", "protocol_differences",
           "beside_published", "build_leaderboard", "leaderboard_markdown", "compare_results", "check_regressions",
           "bar_chart", "write_html", "write_leaderboard", "source_url", "Leaderboard"]
