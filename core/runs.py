"""The run folder, handled in one place.

A run is one folder: `config.yaml` (the complete, resolved configuration: re-running it with
`--config RUN/config.yaml` repeats the run), `metrics.json` (training summary and every evaluation),
`checkpoints/` (Lightning checkpoints, `last.ckpt` for resuming), `model.safetensors` and `pictures/`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

CONFIG = "config.yaml"
METRICS = "metrics.json"
WEIGHTS = "model.safetensors"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def _atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file and rename it, so an interrupted write never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def read_config(run_dir: str | Path) -> dict:
    """RUN/config.yaml as a mapping ({} when the run has none)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a mapping, found {type(config).__name__}")
    return config


def write_config(run_dir: str | Path, config: dict) -> Path:
    """Write RUN/config.yaml (keys in the order given)."""
    path = Path(run_dir) / CONFIG
    _atomic_write(path, yaml.safe_dump(config, sort_keys=False))
    return path


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / METRICS
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(run_dir: str | Path, values: dict[str, Any]) -> Path:
    """Merge `values` into RUN/metrics.json (a "results" list is appended to, other keys are replaced)."""
    path = Path(run_dir) / METRICS
    data = read_metrics(run_dir)
    for key, value in values.items():
        if key == "results":
            data.setdefault("results", []).extend(value)
        else:
            data[key] = value
    _atomic_write(path, json.dumps(data, indent=2, default=float))
    return path


def weights_path(run_dir: str | Path) -> Path:
    """RUN/model.safetensors, or a clear error when the run has not finished."""
    weights = Path(run_dir) / WEIGHTS
    if not weights.is_file():
        if not Path(run_dir).is_dir():
            raise ConfigError(f"run folder {run_dir} does not exist")
        raise ConfigError(f"{run_dir} is not a finished mimkit run: {weights} is missing "
                          f"(pretrain first, or --resume an interrupted run)")
    return weights


def load_run(run_dir: str | Path):
    """A run folder's method (rebuilt from model.safetensors) and its resolved config: (method, config)."""
    from .checkpoints import load_method

    weights = weights_path(run_dir)
    config = read_config(run_dir)
    method, _ = load_method(weights)
    return method, config


__all__ = ["read_config", "write_config", "read_metrics", "update_metrics", "weights_path", "load_run",
           "CONFIG", "METRICS", "WEIGHTS", "LAST_CHECKPOINT"]
