"""Put a run's numbers beside the published ones: a markdown table and a CSV file.

Command line: `python -m mimkit.benchmarks.report --run RUN_DIR [--out DIR]` reads RUN_DIR/metrics.json,
prints the markdown table and writes report.md and report.csv (into RUN_DIR unless --out is given).

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
from typing import Iterable, Sequence

from mimkit.core.errors import ConfigError, DataError, MimkitError

from .published import PublishedResult, published_results
from .tasks import get_task

REQUIRED = ("data", "method", "model", "protocol", "metric", "value")
COLUMNS = ("data", "protocol", "metric", "method", "model", "img_size", "ours", "published", "difference",
           "source", "table", "setting")


def _normalise(result: dict, index: int) -> dict:
    """Fill data/protocol/metric from a named task, check the required keys and the value."""
    entry = dict(result)
    if "task" in entry:
        task = get_task(entry["task"])
        for key, value in (("data", task.dataset), ("protocol", task.protocol), ("metric", task.metric)):
            entry.setdefault(key, value)
    missing = [key for key in REQUIRED if key not in entry]
    if missing:
        raise ConfigError(f"run result #{index} lacks {', '.join(missing)}; each needs {', '.join(REQUIRED)} "
                          f"(or a 'task' in place of data/protocol/metric); got keys {sorted(entry)}")
    value = entry["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"run result #{index}: value must be a finite number, got {value!r}")
    return entry


def _matches(run: dict, published: PublishedResult) -> bool:
    same = all(run[key] == getattr(published, key) for key in ("data", "protocol", "metric", "method", "model"))
    # An image size constrains the match only when the run states one.
    return same and (run.get("img_size") is None or run["img_size"] == published.img_size)


def compare(run_results: Iterable[dict], published: Sequence[PublishedResult] | None = None) -> list[dict]:
    """One row per (run result, matching published figure); a result with no published match gets one row
    with empty published columns. Rows match on data, protocol, metric, method and model (and image size)."""
    records = list(published) if published is not None else published_results()
    rows = []
    for index, result in enumerate(run_results):
        run = _normalise(result, index)
        base = {key: run[key] for key in ("data", "protocol", "metric", "method", "model")}
        base["ours"] = run["value"]
        matched = [p for p in records if _matches(run, p)]
        if not matched:
            rows.append({**base, "img_size": run.get("img_size"), "published": None, "difference": None,
                         "source": "", "table": "", "setting": ""})
        for p in matched:
            rows.append({**base, "img_size": p.img_size, "published": p.value, "difference": run["value"] - p.value,
                         "source": p.source, "table": p.table, "setting": p.setting})
    return rows


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def markdown_table(rows: Sequence[dict]) -> str:
    """The comparison as a markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for column in COLUMNS:
            value = row.get(column)
            if column in ("ours", "published"):
                cells.append(_number(value))
            elif column == "difference":
                cells.append(_number(value, signed=True))
            else:
                cells.append("" if value is None else str(value).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[dict], out_dir: str | Path, name: str = "report") -> tuple[Path, Path]:
    """Write `<name>.md` and `<name>.csv` into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out / f"{name}.md", out / f"{name}.csv"
    md_path.write_text(markdown_table(rows))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    return md_path, csv_path


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
    parser.add_argument("--out", help="where report.md and report.csv go (default: the run folder)")
    args = parser.parse_args(argv)
    try:
        rows = compare(read_run(args.run))
        write_report(rows, args.out or args.run)
    except MimkitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
