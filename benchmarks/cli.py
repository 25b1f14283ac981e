"""`mimkit-bench` (also `python -m mimkit.benchmarks`): every domain's benchmark tasks, run with a pretraining run or a
checkpoint over several seeds, merged into one leaderboard beside the published figures, compared run to run,
checked for regressions, and the cost of reproducing a published row."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from mimkit.core.config import Command, Tool
from mimkit.core.errors import ConfigError, DataError

SYNTHETIC = "synthetic"  # the suite of tasks on data mimkit writes itself (quick; what CI runs)


def suite_tasks(suite: str) -> list:
    """The tasks of a suite: a domain's (core, medical, remote_sensing, faces, multimodal) or `synthetic` (every task
    on data mimkit writes)."""
    from .tasks import DOMAINS, list_tasks

    if suite == SYNTHETIC:
        return [t for t in list_tasks() if t.name.startswith("synthetic-") or t.dataset.startswith("mimkit synthetic")]
    if suite not in DOMAINS:
        raise ConfigError(f"unknown suite {suite!r}; choose a domain ({', '.join(DOMAINS)}) or {SYNTHETIC!r}")
    return list_tasks(suite)


def tasks(domain: str | None = None, published: bool = True) -> None:
    """List every registered task with its protocol, metric, data layout and the published figures on it.

    Args:
        domain: only this domain's tasks
        published: also list the published figures measured on each task's data, protocol and metric
    """
    from .published import published_results
    from .tasks import list_tasks

    records = published_results() if published else []
    for task in list_tasks(domain):
        print(f"{task.name}  [{task.domain}]  {task.protocol} / {task.metric} on {task.dataset}")
        if task.description:
            print(f"    {task.description}")
        for p in records:
            if (p.data, p.protocol, p.metric) == (task.dataset, task.protocol, task.metric):
                extra = f", {p.setting}" if p.setting else ""
                print(f"    published: {p.value:g} {p.method} {p.model} @{p.img_size}px ({p.source}, {p.table}{extra})")


def published(method: str | None = None, data: str | None = None) -> None:
    """The published figures, numbered as `mimkit-bench cost N` takes them.

    Args:
        method: only this method's figures
        data: only figures on this data set
    """
    from .cost import published_rows

    for number, p in enumerate(published_rows(), 1):
        if (method is None or p.method == method) and (data is None or p.data == data):
            print(f"{number:4d}  {p.value:g} {p.metric} {p.protocol}  {p.method} {p.model} @{p.img_size}px  {p.data}  "
                  f"({p.source}, {p.table}{', ' + p.setting if p.setting else ''})")


def run(data_root: str, task: list[str] | None = None, suite: str | None = None, run: str | None = None,
        checkpoint: str | None = None, seeds: list[int] | None = None, out: str = "bench-results",
        name: str | None = None, compare_random_init: bool = False, labels_per_class: int | None = None,
        epochs: int | None = None, max_steps: int | None = None, batch_size: int | None = None,
        lr: float | None = None) -> list[Path]:
    """Run tasks with a pretraining run or a checkpoint over several seeds; one JSON result file per task and subject
    (OUT/<subject>/<task>.json) with each seed's value, the mean and the sample std.

    Args:
        data_root: the data folder: DATA_ROOT/<task name> when that exists, else DATA_ROOT itself
        task: task names (see `mimkit-bench tasks`)
        suite: or all tasks of a suite: a domain name, or `synthetic`
        run: a pretraining run folder (its config.yaml tells the tasks how the encoder saw its data)
        checkpoint: or a weights file written by mimkit (save_method)
        seeds: protocol seeds (default 0 1 2)
        out: where the result files go
        name: the subject's name in the results (default: the run folder's or checkpoint's name)
        compare_random_init: also run each task at random initialisation (same architecture, same seed)
        labels_per_class: fine-tune on this many labels per class (few-label protocols)
        epochs: the protocol's epochs
        max_steps: the protocol's optimiser steps (fine-tuning protocols)
        batch_size: the protocol's batch size
        lr: the protocol's learning rate
    """
    from mimkit.core.checkpoints import load_method
    from mimkit.core.runs import load_run

    from .leaderboard import result_record, write_result
    from .runner import run_task
    from .tasks import get_task

    if bool(task) == bool(suite):
        raise ConfigError("give exactly one of --task T [T ...] and --suite NAME")
    if (run is None) == (checkpoint is None):
        raise ConfigError("give exactly one of --run RUN (a pretraining run folder) and --checkpoint FILE")
    chosen = [get_task(t) for t in task] if task else suite_tasks(suite)
    if not chosen:
        raise ConfigError(f"suite {suite!r} has no registered tasks")
    seeds = list(seeds) if seeds else [0, 1, 2]
    if run is not None:
        subject, config = load_run(run)
        label = name or Path(run).resolve().name
    else:
        subject, model = load_method(checkpoint)
        config = {"method": subject.method_name, "model": model}
        label = name or Path(checkpoint).stem
    img_size = getattr(subject.encoder, "img_size", None)
    img_size = img_size[0] if isinstance(img_size, (tuple, list)) else img_size
    options = {k: v for k, v in dict(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr).items()
               if v is not None}
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"--data-root {str(root)!r} is not a folder")
    written = []
    for entry in chosen:
        folder = root / entry.name if (root / entry.name).is_dir() else root
        rows = []
        for seed in seeds:
            rows += run_task(entry, subject, folder, run_config=config, compare_random_init=compare_random_init,
                             labels_per_class=labels_per_class, seed=seed, **options)
        # the task's protocol details (split, label set, metric variant...) decide comparability with published ones
        details = {**entry.protocol_details, **({"labels_per_class": labels_per_class} if labels_per_class else {})}
        record = result_record(label, entry, rows, method=config.get("method"), img_size=img_size,
                               protocol_details=details)
        path = write_result(record, out)
        written.append(path)
        summary = ", ".join(f"{init} {r['mean']:.2f} ± {r['std']:.2f}" for init, r in record["results"].items())
        print(f"{entry.name}: {summary} (seeds {seeds}) -> {path}")
    return written


def leaderboard(results: list[str], out: str = "leaderboard", published: bool = True) -> dict:
    """Merge result files from any number of runs and machines into one leaderboard: markdown and CSV tables, a bar
    chart per suite and one self-contained HTML page; published figures beside ours, with their sources.

    Args:
        results: result files or folders holding them
        out: where leaderboard.md/.csv/.json, suite_<domain>.png and leaderboard.html go
        published: put the published figures on the same tasks beside ours
    """
    from .leaderboard import leaderboard_markdown, build_leaderboard, read_results, write_leaderboard

    records = read_results(results)
    written = write_leaderboard(records, out, with_published=published)
    print(leaderboard_markdown(build_leaderboard(records, with_published=published)), end="")
    print(f"\nwrote {', '.join(str(p) for p in written.values())}")
    return written


def compare(a: str, b: str) -> list[dict]:
    """Two runs' results task by task: each mean ± std, the difference B - A, and whether it exceeds the spread.

    Args:
        a: result files or a folder (the first run)
        b: result files or a folder (the second run)
    """
    from .leaderboard import compare_results, read_results
    from .report import signed, write_table

    rows = compare_results(read_results([a]), read_results([b]))
    print(write_table(rows, ("task", "init", "a", "b", "difference", "beyond_spread"),
                      title=f"A = {a}\nB = {b}", formats={"difference": signed}), end="")
    return rows


def check(results: list[str], against: list[str], tolerance: float = 0.0) -> None:
    """Exit 1 when any metric is worse than the baseline by more than its measured spread (the larger std) plus
    `tolerance`, or a baseline task is missing; 0 otherwise.

    Args:
        results: the new result files or folders
        against: the baseline's result files or folders (e.g. benchmarks/results/...)
        tolerance: an extra allowance in the metric's unit
    """
    from .leaderboard import check_regressions, read_results
    from .report import write_table

    if tolerance < 0:
        raise ConfigError(f"--tolerance must be >= 0, got {tolerance}")
    failures = check_regressions(read_results(results), read_results(against), tolerance)
    if failures:
        print(write_table(failures, ("task", "init", "baseline", "now", "allowed", "why"),
                          title=f"{len(failures)} regression(s) against {', '.join(against)}"), end="")
        raise SystemExit(1)
    print(f"no regression against {', '.join(against)} (tolerance {tolerance} + the measured spread)")


def cost(row: int, images: int | None = None, gpu: str = "A100", utilisation: float = 0.4,
         measure: bool = True) -> dict:
    """What reproducing a published figure's pretraining would cost: its recipe, the counted FLOPs of one step,
    the measured step time here, and GPU-hours at a stated utilisation.

    Args:
        row: the figure's number in `mimkit-bench published`
        images: pretraining images (known for ImageNet-1K; give it for other data)
        gpu: the GPU class for the estimate (V100, A100, L40S, H100, H200)
        utilisation: the share of the GPU's dense bf16 peak a training step reaches
        measure: time a training step on this machine (off: only count FLOPs)
    """
    from .cost import estimate, published_rows

    rows = published_rows()
    if not 1 <= row <= len(rows):
        raise ConfigError(f"row must be a number from 1 to {len(rows)} (see `mimkit-bench published`), got {row}")
    result = estimate(rows[row - 1], images=images, gpu=gpu, utilisation=utilisation, measure=measure)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:{width}s}  {value}")
    return result


def build_tool() -> Tool:
    return Tool("mimkit-bench", "Benchmark tasks of every domain, leaderboards beside the published figures, "
                "regression checks and reproduction costs.", [
                    Command("tasks", tasks, "every registered task with its protocol and the published figures on it"),
                    Command("published", published, "the published figures, numbered for `cost`"),
                    Command("run", run, "run tasks with a run or checkpoint over seeds; one result file per task"),
                    Command("leaderboard", leaderboard, "merge result files into tables, plots and an HTML page",
                            preprocess=_positional_list("results")),
                    Command("compare", compare, "two runs' results task by task with the spread",
                            preprocess=_positionals("a", "b")),
                    Command("check", check, "exit 1 when a metric fell by more than its spread",
                            preprocess=_positional_list("results")),
                    Command("cost", cost, "the compute a published row's pretraining needs",
                            preprocess=_positionals("row")),
                ], epilog="Example: mimkit-bench run --suite synthetic --run runs/demo --data-root DATA --out results; "
                          "mimkit-bench leaderboard results --out board")


def _positionals(*names: str):
    """`compare A B` as well as `compare --a A --b B`: leading bare words fill the named flags in order."""
    def rewrite(argv: list[str]) -> list[str]:
        out, given = [], list(names)
        i = 0
        while i < len(argv) and not argv[i].startswith("-") and given:
            out += [f"--{given.pop(0)}", argv[i]]
            i += 1
        return out + argv[i:]
    return rewrite


def _positional_list(name: str):
    """`leaderboard R1 R2 --out X`: the leading bare words are the list flag's values."""
    def rewrite(argv: list[str]) -> list[str]:
        i = 0
        while i < len(argv) and not argv[i].startswith("-"):
            i += 1
        return ([f"--{name}", json.dumps(argv[:i])] if i else []) + argv[i:]
    return rewrite


def main(argv: Sequence[str] | None = None) -> int:
    return build_tool().run(argv)


if __name__ == "__main__":
    sys.exit(main())
