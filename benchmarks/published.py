"""The registry of published results: figures from papers (and official repositories), each with its source.

Every seeded number below was checked against the text of its source; the `table` field says where it is.
Accuracies are percentages, as the papers print them. Each domain (core included) keeps its papers' figures in
its own `published.py`, registered with `register_results([...])` when its `bench.py` is imported.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping

from mimkit.core.errors import ConfigError

from .tasks import PROTOCOLS, load_domain_tasks


@dataclass(frozen=True)
class PublishedResult:
    """One published figure: what was measured, on which model and data, and where it was printed."""

    value: float
    metric: str          # e.g. "top1" (percent)
    protocol: str        # one of tasks.PROTOCOLS
    model: str           # e.g. "ViT-B/16"
    method: str          # registered method name, e.g. "mae"
    data: str            # evaluation data set, e.g. "ImageNet-1K"
    source: str          # paper (authors, title, venue year) or repository file
    table: str           # where in the source, e.g. "Table 3"
    img_size: int = 224  # evaluation image size
    setting: str = ""    # what distinguishes this figure from others for the same model (schedule, target...)
    note: str = ""
    # the protocol details that change the number (split, label_set, metric_variant, background, bands; see
    # benchmarks.leaderboard.PROTOCOL_DETAILS): ours sits beside it as comparable only when they agree
    protocol_details: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"published result {self.method}/{self.model}: protocol must be one of "
                              f"{', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ConfigError(f"published result {self.method}/{self.model}: value must be a finite number, "
                              f"got {self.value!r}")

    @property
    def key(self) -> tuple:
        return (self.method, self.model, self.data, self.protocol, self.metric, self.img_size, self.setting,
                self.source, self.table)

    def as_dict(self) -> dict:
        return asdict(self)


_RESULTS: dict[tuple, PublishedResult] = {}
FILTERS = ("method", "data", "protocol", "metric", "model")


def register_result(result: PublishedResult) -> PublishedResult:
    """Add one published figure; the same figure (same model, data, protocol, setting, source) twice is an error."""
    if not isinstance(result, PublishedResult):
        raise ConfigError(f"register_result expects a PublishedResult, got {type(result).__name__}")
    if result.key in _RESULTS:
        old = _RESULTS[result.key]
        raise ConfigError(f"published result registered twice: {result.method} {result.model} {result.protocol} "
                          f"{result.metric} on {result.data} from {result.source}, {result.table} "
                          f"({old.value} and {result.value})")
    _RESULTS[result.key] = result
    return result


def register_results(results: list[PublishedResult]) -> None:
    """Add several published figures."""
    for result in results:
        register_result(result)


def published_results(method: str | None = None, data: str | None = None, protocol: str | None = None,
                      metric: str | None = None, model: str | None = None) -> list[PublishedResult]:
    """Published figures matching every given field; a value no record has is an error listing the choices."""
    load_domain_tasks()  # domain bench modules register their papers' figures too
    wanted = {"method": method, "data": data, "protocol": protocol, "metric": metric, "model": model}
    records = list(_RESULTS.values())
    for field, value in wanted.items():
        if value is None:
            continue
        choices = sorted({getattr(r, field) for r in records})
        if value not in choices:
            raise ConfigError(f"no published result has {field}={value!r}; known: {', '.join(choices)}")
    return [r for r in records if all(v is None or getattr(r, f) == v for f, v in wanted.items())]
