"""The project's one table writer (`write_table`: markdown, CSV, JSON; `pivot_inits`), and a run's numbers
beside the published ones (`compare`).

Command line: `python -m mimkit.benchmarks.report --run RUN_DIR [--out DIR]` reads RUN_DIR/metrics.json,
prints the markdown table and writes report.md, report.csv and report.json (into RUN_DIR unless --out is given).

metrics.json:

    {"method": "mae", "model": "ViT-B/16", "img_size": 224,
     "results": [{"data": "ImageNet-1K", "protocol": "linear", "metric": "top1", "value": 67.1},
                 {"task": "imagenet1k-finetune", "value": 83.2}]}

`method` and `model` (and the optional `img_size`) apply to every result unless a result sets its own.
A result names its data, protocol and metric directly or through a registered `task`. Values use the
published figures' units: accuracies in percent.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from mimkit.core.errors import ConfigError, DataError, MimkitError

from .published import PublishedResult, published_results
from .tasks import get_task

REQUIRED = ("data", "method", "model", "protocol", "metric", "value")
COLUMNS = ("data", "protocol", "metric", "method", "model", "img_size", "ours", "published", "difference",
           "source", "table", "setting", "differences")


def _normalise(result: dict, index: int) -> dict:
    """Fill data/protocol/metric from a named task, check the required keys and the value."""
    entry = dict(result)
    if "task" in entry:
        task = get_task(entry["task"])
        for key, value in (("data", task.dataset), ("protocol", task.protocol), ("metric", task.metric)):
            entry.setdefault(key, value)
        entry["protocol_details"] = {**task.protocol_details, **(entry.get("protocol_details") or {})}
    missing = [key for key in REQUIRED if key not in entry]
    if missing:
        raise ConfigError(f"run result #{index} lacks {', '.join(missing)}; each needs {', '.join(REQUIRED)} "
                          f"(or a 'task' in place of data/protocol/metric); got keys {sorted(entry)}")
    value = entry["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"run result #{index}: value must be a finite number, got {value!r}")
    return entry


def detail_differences(run: dict, published: PublishedResult) -> list[str]:
    """The protocol details (split, label set, metric variant, background, bands...) that our result and a
    published figure both state and that differ: empty when the two were measured the same way."""
    ours, theirs = run.get("protocol_details") or {}, published.protocol_details or {}
    return [f"{key}: {ours[key]} here vs {theirs[key]}" for key in sorted(set(ours) & set(theirs))
            if ours[key] != theirs[key]]


def _matches(run: dict, published: PublishedResult) -> bool:
    same = all(run[key] == getattr(published, key) for key in ("data", "protocol", "metric", "method", "model"))
    # An image size constrains the match only when the run states one.
    return same and (run.get("img_size") is None or run["img_size"] == published.img_size)


def compare(run_results: Iterable[dict], published: Sequence[PublishedResult] | None = None) -> list[dict]:
    """One row per (run result, matching published figure); a result with no published match gets one row
    with empty published columns. Rows match on data, protocol, metric, method and model (and image size); the
    difference is given only when their protocol details agree, else `differences` says what differs."""
    records = list(published) if published is not None else published_results()
    rows = []
    for index, result in enumerate(run_results):
        run = _normalise(result, index)
        base = {key: run[key] for key in ("data", "protocol", "metric", "method", "model")}
        base["ours"] = run["value"]
        matched = [p for p in records if _matches(run, p)]
        if not matched:
            rows.append({**base, "img_size": run.get("img_size"), "published": None, "difference": None,
                         "source": "", "table": "", "setting": "", "differences": ""})
        for p in matched:
            differs = detail_differences(run, p)
            rows.append({**base, "img_size": p.img_size, "published": p.value,
                         "difference": None if differs else run["value"] - p.value,
                         "source": p.source, "table": p.table, "setting": p.setting, "differences": "; ".join(differs)})
    return rows


def _number(value: float) -> str:
    """A number as a reader wants it: at most 3 decimals, trailing zeros dropped; tiny values in 3 digits."""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3g}"
    text = f"{value:.3f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def signed(value) -> str:
    """A difference with its sign: "+1.25", "-3"."""
    return "" if value is None else ("+" if value > 0 else "") + _number(float(value))


def _cell(value, formatter=None) -> str:
    if callable(formatter):  # a function sees None too (it may write "n/a")
        text = formatter(value)
    elif formatter is not None and value is not None:
        text = format(value, formatter)
    elif value is None:
        text = ""
    elif isinstance(value, bool) or isinstance(value, (int, str)):
        text = str(value)
    elif isinstance(value, float):
        text = _number(value) if math.isfinite(value) else str(value)
    else:
        text = json.dumps(value, default=str)
    return text.replace("|", "/").replace("\n", " ")


def _csv_cell(value):
    if value is None:
        return ""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value, default=str)


def write_table(rows: Sequence[dict], columns: Sequence[str] | Mapping[str, str], path: str | Path | None = None,
                title: str | None = None, *, formats: Mapping[str, str | Callable] | None = None) -> str:
    """The markdown table of `rows` (one column per key of `columns`; a mapping names each column's header) under
    `title` (any markdown: a heading, a sentence, notes); with `path` (a stem, or a .md path) it also writes
    PATH.md (the same text), PATH.csv and PATH.json (the values unformatted). `formats` gives a column a format
    spec (".1f") or a function (which also gets None) for its markdown cells; numbers otherwise show at most 3
    decimals, None as a blank."""
    headers = dict(columns) if isinstance(columns, Mapping) else {column: column for column in columns}
    formats = dict(formats or {})
    lines = [f"{title.rstrip()}", ""] if title else []
    lines += ["| " + " | ".join(headers.values()) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(row.get(key), formats.get(key)) for key in headers) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    if path is not None:
        stem = Path(path)
        stem = stem.with_suffix("") if stem.suffix.lower() == ".md" else stem
        stem.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{stem}.md").write_text(text)
        with open(f"{stem}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(headers))
            writer.writerows([_csv_cell(row.get(key)) for key in headers] for row in rows)
        table = {"title": title, "columns": list(headers),
                 "rows": [{key: row.get(key) for key in headers} for row in rows]}
        Path(f"{stem}.json").write_text(json.dumps(table, indent=2, default=str) + "\n")
    return text


def pivot_inits(rows: Sequence[dict]) -> list[dict]:
    """Rows with an init (pretrained / random) -> one row per (task, protocol, metric) with each init's value side
    by side and `gain` (pretrained minus random) when both are there."""
    table: dict[tuple, dict] = {}
    for row in rows:
        key = (row.get("task"), row["protocol"], row["metric"])
        entry = table.setdefault(key, {**({"task": row["task"]} if row.get("task") else {}),
                                       "protocol": row["protocol"], "metric": row["metric"]})
        entry[row["init"]] = row["value"]
    for entry in table.values():
        if entry.get("pretrained") is not None and entry.get("random") is not None:
            entry["gain"] = round(entry["pretrained"] - entry["random"], 2)
    return list(table.values())


def comparison_table(rows: Sequence[dict], path: str | Path | None = None, title: str | None = None) -> str:
    """`compare`'s rows as a table: our value, the published one and the difference, with the source."""
    return write_table(rows, COLUMNS, path, title, formats={"difference": signed})


def read_run(run_dir: str | Path) -> list[dict]:
    """The results of RUN_DIR/metrics.json, with the run-level method/model/img_size applied to each."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise DataError(f"expected a run's metrics file at {str(path)!r}; it does not exist")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(content, dict) or not isinstance(content.get("results"), list):
        raise DataError(f"{str(path)!r} must hold an object with a 'results' list; see `mimkit.benchmarks.report`")
    shared = {k: content[k] for k in ("method", "model", "img_size") if k in content}
    results = []
    for index, result in enumerate(content["results"]):
        if not isinstance(result, dict):
            raise DataError(f"{str(path)!r}: results[{index}] must be an object, got {type(result).__name__}")
        results.append({**shared, **result})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimkit.benchmarks.report",
                                     description="Compare a run's metrics.json with published results.")
    parser.add_argument("--run", required=True, help="run folder holding metrics.json")
    parser.add_argument("--out", help="where report.md, report.csv and report.json go (default: the run folder)")
    args = parser.parse_args(argv)
    try:
        table = comparison_table(compare(read_run(args.run)), Path(args.out or args.run) / "report")
    except MimkitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
