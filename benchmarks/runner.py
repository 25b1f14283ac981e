"""The one benchmark runner: a registered task with a pretrained method or encoder and, when asked, the same
protocol on the same architecture at random initialisation; one result row per initialisation.

    rows = run_task("imagenet1k-linear", method, "/data/imagenet", run_config=config, compare_random_init=True)

Protocols: knn and linear go through mimkit.core.evaluate (a linear task with its own head through
mimkit.core.finetune with a frozen encoder); finetune, partial-finetune (MAE, Section 4.3: only the last
`tuned_blocks` blocks learn), few-shot (fine-tuning on `labels_per_class` labels per class) and segmentation
through mimkit.core.finetune with the task's head; anomaly, or any task with its own runner, through `task.runner`.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from mimkit.core.errors import ConfigError, DataError

from .tasks import Task, get_task

# core.finetune's metric kind for a dense task's metric
DENSE_METRICS = {"dice": "dice", "miou": "iou"}
SIZE_LETTERS = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
# fine-tuning result keys reported beside the test metrics
_TRAINING_KEYS = ("steps", "best_step", "num_val", "learning_rate", "effective_batch", "model_path")


def model_name(encoder: nn.Module) -> str:
    """The usual short name of an encoder: "ViT-S/16" for a named size, else "ViT-<width>x<depth>/<patch>"; an
    encoder that is not one ViT names itself (`encoder.model_name`)."""
    from mimkit.core.encoders import VIT_SIZES

    if isinstance(getattr(encoder, "model_name", None), str):
        return encoder.model_name

    patch = tuple(encoder.patch_size)
    patch_text = str(patch[0]) if len(set(patch)) == 1 else "x".join(map(str, patch))
    shape = (encoder.embed_dim, len(encoder.blocks), encoder.num_heads)
    for name, size in VIT_SIZES.items():
        if (size.embed_dim, size.depth, size.num_heads) == shape:
            return f"ViT-{SIZE_LETTERS.get(name, name.capitalize())}/{patch_text}"
    return f"ViT-{encoder.embed_dim}x{len(encoder.blocks)}/{patch_text}"


def encoder_of(subject: nn.Module) -> nn.Module:
    """A method's transferable encoder, or the subject itself when it is an encoder."""
    encoder = getattr(subject, "encoder", None)
    if isinstance(encoder, nn.Module):
        return encoder
    if isinstance(subject, nn.Module) and hasattr(subject, "forward_features"):
        return subject
    raise ConfigError(f"expected a method (with an .encoder) or a mimkit encoder, got {type(subject).__name__}")


# ---------------------------------------------------------------------------------------------- random init
def random_init(subject: nn.Module, run_config: Mapping | None = None, seed: int = 0) -> nn.Module:
    """The subject's architecture at random initialisation (a method for a method, an encoder for an encoder):
    `build_method(run_config["method"], **run_config["model"])` seeded with `seed` when the run's config is known,
    else a deep copy with every parameter initialised again. The global random state is left as it was."""
    is_method = isinstance(getattr(subject, "encoder", None), nn.Module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if run_config and run_config.get("method"):
            from mimkit.core.registry import build_method

            fresh = build_method(run_config["method"], **dict(run_config.get("model") or {}))
            return fresh if is_method else fresh.encoder
        return _reinitialised(subject)


def _reinitialised(subject: nn.Module) -> nn.Module:
    """A deep copy initialised again: each layer's own reset, MAE's rule for linear layers and norms, and a
    truncated normal (std 0.02, as ViTs start their tokens) for learned parameters no layer owns."""
    from mimkit.core.encoders import init_weights

    fresh = copy.deepcopy(subject)
    covered = set()
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        if callable(reset) or isinstance(module, (nn.Linear, nn.LayerNorm)):
            covered |= {id(p) for p in module.parameters(recurse=False)}
    fresh.apply(init_weights)
    for parameter in fresh.parameters():
        if id(parameter) not in covered and parameter.requires_grad:  # class / mask tokens, learned positions
            nn.init.trunc_normal_(parameter, std=0.02)
    return fresh


# ---------------------------------------------------------------------------------------------- running
def run_task(task: Task | str, subject: nn.Module, data_root: str | Path, *, run_config: Mapping | None = None,
             compare_random_init: bool = False, labels_per_class: int | None = None, seed: int = 0,
             reader_options: Mapping | None = None, out_dir: str | Path | None = None,
             **protocol_options: Any) -> list[dict]:
    """Run a task with `subject` (a method, or a bare encoder; anomaly runners need the whole method) on the local
    data at `data_root`; one row per initialisation ("pretrained", and "random" with compare_random_init).

    `run_config` is the pretraining run's config.yaml mapping (method, model, data): the task's `prepare` reads it
    so the data reach the encoder as in pretraining, and the random initialisation is built from it.
    `labels_per_class` trains on a seeded, stratified subset (single-label data only). `protocol_options` (the
    protocol's settings, over the task's own) go to core.evaluate, core.finetune or the task's runner.
    With `out_dir`, fine-tuning protocols keep checkpoints and the model in out_dir/<init>/.
    Row: task, data, protocol, metric, value (percent), init, seed, model, num_train, num_test, skipped_files,
    settings (what the protocol ran with), details (its metric dict).
    """
    task = get_task(task) if isinstance(task, str) else task
    if not isinstance(task, Task):
        raise ConfigError(f"run_task expects a Task or a registered task name, got {type(task).__name__}")
    encoder = encoder_of(subject)
    root = Path(data_root).expanduser()
    prepared = dict(task.prepare(encoder, dict(run_config or {}))) if task.prepare is not None else {}
    train, test = task.load(root, **{**prepared, **dict(reader_options or {})})
    if task.check is not None:
        task.check(encoder, train)
    skipped = len(getattr(train, "skipped", None) or ()) + len(getattr(test, "skipped", None) or ())
    if task.protocol == "few-shot" and not labels_per_class:
        raise ConfigError(f"task {task.name!r} is a few-shot task: give labels_per_class (labels per class to "
                          f"fine-tune on)")
    if labels_per_class:
        train = _few_labels(task, train, labels_per_class, seed)
    subjects = {"pretrained": subject}
    if compare_random_init:
        subjects["random"] = random_init(subject, run_config, seed)
    rows = []
    for init, model in subjects.items():
        out = Path(out_dir) / init if out_dir is not None else None
        details, settings = _run_protocol(task, model, train, test, root, seed, out, dict(protocol_options))
        value = details.get(task.value_key)
        if value is None or not math.isfinite(float(value)):
            shown = {k: v for k, v in _plain(details).items() if not isinstance(v, list)}
            raise DataError(f"task {task.name!r}: the {task.metric} ({task.value_key}) could not be computed on "
                            f"{root} with the {init} encoder (every test label the same, or no foreground class "
                            f"present?); the protocol gave {shown}")
        rows.append({"task": task.name, "data": task.dataset, "protocol": task.protocol, "metric": task.metric,
                     "value": round(100 * float(value), 2), "init": init, "seed": seed, "model": model_name(encoder),
                     "num_train": len(train), "num_test": len(test), "skipped_files": skipped,
                     "settings": _plain(settings), "details": _plain(details)})
    return rows


def _few_labels(task: Task, train, per_class: int, seed: int):
    from mimkit.core.data import few_labels

    targets = getattr(train, "targets", None)
    single = (task.protocol not in ("segmentation", "anomaly") and targets is not None
              and len(targets) == len(train) and np.asarray(targets).ndim == 1)
    if not single:
        raise ConfigError(f"labels_per_class needs single-label classification data; task {task.name!r} "
                          f"({task.protocol}, {type(train).__name__}) has none")
    if not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"labels_per_class must be a positive integer, got {per_class!r}")
    return few_labels(train, per_class, seed)


def _run_protocol(task: Task, subject: nn.Module, train, test, root: Path, seed: int, out_dir: Path | None,
                  options: dict) -> tuple[dict, dict]:
    """(the protocol's result dict, the settings it ran with) for one initialisation."""
    options = {**task.settings, **options}
    if task.runner is not None:
        given = _with_seed(task.runner, options, seed)
        return dict(task.runner(subject, train, test, root=root, **given)), _defaults(task.runner, given, 3, {"root"})
    encoder = encoder_of(subject)
    if task.protocol == "knn" or (task.protocol == "linear" and task.head is None and "head" not in options):
        from mimkit.core.evaluate import evaluate, knn_evaluate, linear_probe

        protocol = knn_evaluate if task.protocol == "knn" else linear_probe
        given = _with_seed(protocol, options, seed)
        result = evaluate(encoder, task.protocol, train, test, **given)
        return {k: v for k, v in result.items() if k not in ("model", "train_loss")}, _defaults(protocol, given, 3)
    return _finetune(task, encoder, train, test, seed, out_dir, options)


def _finetune(task: Task, encoder: nn.Module, train, test, seed: int, out_dir: Path | None,
              options: dict) -> tuple[dict, dict]:
    from mimkit.core.finetune import FineTuneConfig, finetune

    default_head = {"segmentation": "segmentation", "linear": "bn_linear"}.get(task.protocol, "linear")
    head = options.pop("head", None) or task.head or default_head
    head_options = {**task.head_options, **(options.pop("head_options", None) or {})}
    settings = {"val_fraction": 0.0, "progress": sys.stderr.isatty(), **options, "seed": seed}
    if settings.get("resume") and (out_dir is None or not (out_dir / "checkpoints" / "last.ckpt").exists()):
        settings["resume"] = False  # this initialisation had not started when the command was interrupted
    if task.protocol == "linear":
        settings.setdefault("freeze_encoder", True)
    if task.protocol == "segmentation" and task.metric in DENSE_METRICS:
        settings.setdefault("metric", DENSE_METRICS[task.metric])
    extra = {}
    if task.protocol == "partial-finetune":
        extra["tuned_blocks"] = settings.pop("tuned_blocks", 1)  # MAE Fig. 9: one block already gains most
        encoder = _partially_frozen(encoder, extra["tuned_blocks"])
    row = finetune(encoder, train, test, out_dir, head=head, head_options=head_options, **settings)
    fields = {f.name for f in dataclasses.fields(FineTuneConfig)}
    used = {**row["settings"], "head": head, **extra, **{k: v for k, v in settings.items() if k not in fields}}
    return {**(row["test"] or {}), **{k: row[k] for k in _TRAINING_KEYS}}, used


def _partially_frozen(encoder: nn.Module, tuned_blocks: int) -> nn.Module:
    """A copy of the encoder in which only the last `tuned_blocks` blocks and the final norm learn."""
    depth = len(encoder.blocks)
    if isinstance(tuned_blocks, bool) or not isinstance(tuned_blocks, int) or not 0 <= tuned_blocks <= depth:
        raise ConfigError(f"tuned_blocks must be an integer from 0 to the encoder's {depth} blocks, got "
                          f"{tuned_blocks!r}")
    frozen = copy.deepcopy(encoder).requires_grad_(False)
    for block in frozen.blocks[depth - tuned_blocks:]:
        block.requires_grad_(True)
    frozen.norm.requires_grad_(True)
    return frozen


def _with_seed(function, options: dict, seed: int) -> dict:
    """The options, plus the seed when the protocol takes one."""
    parameters = inspect.signature(function).parameters
    takes = "seed" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return {**options, "seed": seed} if takes else dict(options)


def _defaults(function, given: dict, skip: int, leave_out: set[str] = frozenset()) -> dict:
    """The settings a protocol function runs with: its keyword defaults, overridden by the given options."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    defaults = {p.name: p.default for p in parameters
                if p.default is not inspect.Parameter.empty and p.name not in leave_out}
    return {**defaults, **given}


def _plain(value):
    """A JSON-able copy: numbers, strings, lists and dicts (tensors and arrays as numbers or lists, models left
    out, anything else by its text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not isinstance(v, nn.Module)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


__all__ = ["run_task", "random_init", "model_name", "encoder_of", "DENSE_METRICS"]
