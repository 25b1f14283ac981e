"""The run folder, handled in one place.

A run is one folder: `config.yaml` (the complete, resolved configuration: re-running it with
`--config RUN/config.yaml` repeats the run), `metrics.json` (training summary and every evaluation),
`checkpoints/` (Lightning checkpoints, `last.ckpt` for resuming), `model.safetensors` and `pictures/`.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

CONFIG = "config.yaml"
METRICS = "metrics.json"
WEIGHTS = "model.safetensors"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
LOCK = ".lock"

log = logging.getLogger("mimkit")


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


def _process_start(pid: int) -> str | None:
    """A process's start time (Linux /proc), so a lock whose pid was reused by another process counts as stale."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    """Whether a lock's owner still runs; an owner on another host cannot be checked and counts as alive."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    started = owner.get("started")
    return started is None or _process_start(pid) in (None, started)


def is_primary_process() -> bool:
    """False in the other processes of a multi-process run (DDP ranks, SLURM tasks), which share rank 0's folder."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"):
        value = os.environ.get(name)
        if value not in (None, "", "0"):
            return False
    return True


class RunLock:
    """RUN/.lock while a process writes the run: its pid, host and start time. A second writer is refused while the
    owner lives; a lock whose owner is gone (same host, no such process) is taken over, saying so."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.held = False

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise ConfigError(
                        f"{self.run_dir} is in use by another run (pid {owner.get('pid')} on {owner.get('host')} "
                        f"since {owner.get('since')}; lock file {self.path}): wait for it to end or choose another "
                        f"--out; if that run is gone (another machine), delete the lock file") from None
                log.warning("taking over the stale lock %s (%s)", self.path,
                            f"pid {owner.get('pid')} on {owner.get('host')} no longer runs" if owner else "unreadable")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return self
        raise ConfigError(f"{self.path}: could not take the run's lock (other processes keep taking it)")

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # empty or torn: its writer died between creating and writing it
        return owner if isinstance(owner, dict) else None

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire() if is_primary_process() else self

    def __exit__(self, *exc) -> None:
        self.release()


def load_run(run_dir: str | Path):
    """A run folder's method (rebuilt from model.safetensors) and its resolved config: (method, config)."""
    from .checkpoints import load_method

    weights = weights_path(run_dir)
    config = read_config(run_dir)
    method, _ = load_method(weights)
    return method, config


__all__ = ["RunLock", "is_primary_process", "read_config", "write_config", "read_metrics", "update_metrics", "weights_path", "load_run",
           "CONFIG", "METRICS", "WEIGHTS", "LAST_CHECKPOINT"]
