"""The registry of benchmark tasks: a local data reader, an evaluation protocol and a metric.

A task never downloads: its reader builds `(train_set, test_set)` torch datasets from a folder the user
already has. Each domain (core included) registers its tasks in `mimkit.<domain>.bench`; `list_tasks()` and
`get_task()` import those modules on first use, as `build_method` does for methods. `mimkit.benchmarks.runner`
runs any task.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from torch.utils.data import Dataset

from mimkit.core.errors import ConfigError, DataError

# How a pretrained encoder is evaluated on a task. "partial-finetune" tunes only the last blocks
# (MAE paper, Section 4.3); the others are the usual protocols of the MIM literature.
PROTOCOLS = ("knn", "linear", "finetune", "partial-finetune", "few-shot", "segmentation", "anomaly", "retrieval",
             "generation")
RUNNER_PROTOCOLS = ("anomaly", "retrieval", "generation")  # core runs none of these: a task brings its runner

DOMAINS = ("core", "medical", "remote_sensing", "faces", "multimodal")

Reader = Callable[..., tuple[Dataset, Dataset]]


@dataclass(frozen=True, eq=False)  # a task is itself (registered once by name): hashable despite its dict fields
class Task:
    """One benchmark task: where the data comes from, how the encoder is evaluated, what is measured."""

    name: str                 # unique, e.g. "imagenet1k-linear"
    domain: str               # one of DOMAINS
    dataset: str              # the data set's usual name, matched against published results, e.g. "ImageNet-1K"
    protocol: str             # one of PROTOCOLS
    metric: str               # e.g. "top1" (percent), "dice", "auroc"
    reader: Reader            # reader(root, **options) -> (train_set, test_set), from local files only
    description: str = ""
    head: str | None = None   # core.heads name for fine-tuning / segmentation; None: the protocol's default
    head_options: Mapping = field(default_factory=dict)
    # a protocol core does not have (RUNNER_PROTOCOLS): runner(subject, train_set, test_set, root=Path,
    # **options) -> dict of metric values as fractions, holding the task's metric key
    runner: Callable | None = None
    check: Callable | None = None    # check(encoder, train_set): ConfigError when the encoder cannot read the data
    prepare: Callable | None = None  # prepare(encoder, run_config) -> reader options that fit the data to the encoder
    metric_key: str | None = None    # the metric's key in the protocol's result dict; None: `metric` itself
    settings: Mapping = field(default_factory=dict)  # the protocol's settings for this task (its paper's recipe)
    # what changes the number beside a published one (benchmarks.leaderboard.PROTOCOL_DETAILS: split, label_set,
    # metric_variant, background, bands): a published figure is comparable only when the details both state agree
    protocol_details: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"task {self.name!r}: protocol must be one of {', '.join(PROTOCOLS)}, "
                              f"got {self.protocol!r}")
        if self.domain not in DOMAINS:
            raise ConfigError(f"task {self.name!r}: domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}")
        for name in ("reader", "runner", "check", "prepare"):
            value = getattr(self, name)
            if not callable(value) and (name == "reader" or value is not None):
                raise ConfigError(f"task {self.name!r}: {name} must be callable, got {type(value).__name__}")
        if self.protocol in RUNNER_PROTOCOLS and self.runner is None:
            raise ConfigError(f"task {self.name!r}: the {self.protocol} protocol needs the task's own runner")

    @property
    def value_key(self) -> str:
        """The key of the task's metric in the protocol's result dict."""
        return self.metric_key or self.metric

    def load(self, root: str | Path, **options: Any) -> tuple[Dataset, Dataset]:
        """Build the task's (train_set, test_set) from the local folder `root`."""
        path = Path(root).expanduser()
        if not path.exists():
            raise DataError(f"task {self.name!r}: data folder {str(path)!r} does not exist "
                            f"(mimkit never downloads data; point --data at a local copy of {self.dataset})")
        return self.reader(path, **options)


_TASKS: dict[str, Task] = {}
_loaded = False


def register_task(task: Task) -> Task:
    """Add a task to the registry; a second task with the same name is an error."""
    if not isinstance(task, Task):
        raise ConfigError(f"register_task expects a Task, got {type(task).__name__}")
    if task.name in _TASKS and _TASKS[task.name] is not task:
        raise ConfigError(f"task name {task.name!r} is registered twice "
                          f"(datasets {_TASKS[task.name].dataset!r} and {task.dataset!r})")
    _TASKS[task.name] = task
    return task


def load_domain_tasks() -> None:
    """Import every installed `mimkit.<domain>.bench` module (core's included) so that its tasks register
    themselves; by name, so that this module imports none of them."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for domain in DOMAINS:
        package = f"mimkit.{domain}"
        if importlib.util.find_spec(package) and importlib.util.find_spec(f"{package}.bench"):
            importlib.import_module(f"{package}.bench")


def get_task(name: str) -> Task:
    """The registered task called `name`."""
    load_domain_tasks()
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; available: {', '.join(sorted(_TASKS)) or '(none)'}") from None


def list_tasks(domain: str | None = None) -> list[Task]:
    """Every registered task (or one domain's), sorted by name."""
    load_domain_tasks()
    if domain is not None and domain not in DOMAINS:
        raise ConfigError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    return [t for _, t in sorted(_TASKS.items()) if domain is None or t.domain == domain]
