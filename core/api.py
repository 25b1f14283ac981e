"""The Python API, the same functions the `mimkit` commands run: `pretrain`, `finetune`, `evaluate`, `embed`.

`mimkit pretrain --data DIR --out RUN --method mae` is `mimkit.pretrain(data="DIR", out="RUN", method="mae")`:
the command line is derived from these signatures (core.config), so names and defaults are the same.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from .config import TRAINER_OPTIONS, current_config, encoder_setting, plain, set_encoder_setting
from .data import ImageFolderData
from .errors import ConfigError
from .finetune import FineTuneConfig
from .train import TrainConfig

log = logging.getLogger("mimkit")


def _data(data: Any, method: str | None = None) -> Any:
    """Data settings from a folder path: the data class the method names (`data_class`: mom's boxes), else images."""
    if not isinstance(data, (str, Path)):
        return data
    from .registry import method_class

    data_class = getattr(method_class(method), "data_class", ImageFolderData) if method else ImageFolderData
    return data_class(root=str(data))


def pretrain(data: ImageFolderData, out: str, method: str | None = None, model: dict | None = None,
             train: TrainConfig = TrainConfig(), trainer: dict | None = None, pretrained: str | None = None,
             resume: bool = False) -> dict:
    """Pretrain a method on unlabelled images and write one run folder.

    Args:
        data: the images (a folder path, or the data settings: mimkit.core.data.ImageFolderData, or a domain's)
        out: the run folder to create, or to continue with resume
        method: a registered method (`mimkit methods`); None: the data's default (mae for plain images)
        model: the method's arguments (`mimkit methods NAME`); channels are read from the data when not given
        train: optimisation and hardware settings (MAE's pretraining recipe by default)
        trainer: other Lightning Trainer options, passed through: logger (a CSV logger in RUN/logs by default;
            TensorBoardLogger, MLFlowLogger, WandbLogger when installed), callbacks, profiler, gradient_clip_val
        pretrained: start from local weights: a mimkit run's model.safetensors, an official MAE checkpoint (with
            or without decoder) or a timm ViT state dict (format detected; nothing is downloaded)
        resume: continue the run in `out` from its last checkpoint (its config.yaml is read by the command)
    """
    from .registry import method_arguments
    from .train import _slurm_requeued
    from .train import pretrain as train_method

    data = _data(data, method)
    method = method or getattr(data, "default_method", lambda: "mae")()
    model = dict(model or {})
    train = train or TrainConfig()
    out_dir = Path(out)
    if not resume and any((out_dir / "checkpoints").glob("*.ckpt")) and not _slurm_requeued():
        raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    root = getattr(data, "root", None)
    if resume and isinstance(root, str) and not Path(root).exists():  # a run folder copied to another machine
        raise ConfigError(f"--resume: the run's data folder {root} does not exist here; give it again with --data DIR")
    dataset = data.build(model, method)
    if encoder_setting(model, "in_chans") is None:  # not given: the data's channel count
        set_encoder_setting(model, "in_chans", getattr(dataset, "in_chans", None) or
                            encoder_setting(model, "in_chans", method))
    train = train.for_data(len(dataset))
    if "total_steps" in method_arguments(method) and model.get("total_steps") is None:
        model["total_steps"] = train.max_steps  # schedules inside a method (SelectiveMAE) span the whole run
    stats = getattr(dataset, "stats", None)
    if "data_mean" in method_arguments(method) and model.get("data_mean") is None and stats is not None:
        # a teacher converts the loader's normalisation to its own (MaskAlign's forward_clip)
        model["data_mean"], model["data_std"] = ([float(v) for v in s] for s in stats)
    skipped = len(getattr(dataset, "skipped", ()))
    given = current_config.get() or {}  # the command line's own configuration (its trainer section as written)
    run_config = {"method": method, "model": plain(model), "data": plain(data), "train": plain(train),
                  "trainer": given.get("trainer", {k: plain(v) for k, v in (trainer or {}).items() if _plain_value(v)}),
                  "out": str(out_dir), "pretrained": pretrained, "resume": False}
    print(f"mimkit: pretraining {method} on {len(dataset)} images from {getattr(data, 'root', data)}"
          f"{f' ({skipped} unreadable files skipped)' if skipped else ''}; effective batch {train.effective_batch}, "
          f"lr {train.learning_rate:.3g}, {train.max_steps} steps -> {out_dir}", file=sys.stderr)
    summary = train_method(method, dataset, out_dir, train, method_config=model, resume=resume,
                           run_config=run_config, pretrained=pretrained, trainer=trainer)
    if summary:  # the skipped files (with those the loader workers found) are in metrics.json's "data"
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return summary


def _plain_value(value: Any) -> bool:
    try:
        json.dumps(plain(value))
        return True
    except TypeError:
        return False


def evaluate(run: str, train: str, test: str, protocol: list[str] | None = None, compare_random_init: bool = False,
             labels_per_class: int | None = None, epochs: int | None = None, k: int = 20, seed: int = 0) -> list[dict]:
    """Evaluate a run's pretrained encoder on labelled image folders; results are appended to RUN/metrics.json.

    Args:
        run: a pretraining run folder
        train: labelled training images, one subfolder per class
        test: labelled test images, one subfolder per class
        protocol: any of knn, linear, finetune (default: knn)
        compare_random_init: also evaluate the same architecture at random initialisation, side by side
        labels_per_class: fine-tune on only this many labelled images per class
        epochs: epochs of the linear probe and fine-tuning (default: the protocols' own)
        k: neighbours for kNN
        seed: seed of the label subset, the heads and the random-init encoder
    """
    from .data import few_labels, labelled_dataset
    from .evaluate import evaluate_encoders
    from .runs import load_run, update_metrics

    protocol = list(protocol or ["knn"])
    unknown = sorted(set(protocol) - {"knn", "linear", "finetune"})
    if unknown:
        raise ConfigError(f"protocol {', '.join(unknown)} is not one of knn, linear, finetune")
    method, config = load_run(run)
    data = config.get("data", {})
    train_set = labelled_dataset(train, method.encoder, data, "train")
    test_set = labelled_dataset(test, method.encoder, data, "test")
    encoders = {"pretrained": method.encoder}
    if compare_random_init:
        from mimkit.benchmarks.runner import random_init

        encoders["random"] = random_init(method.encoder, config, seed)
    finetune_set = few_labels(train_set, labels_per_class, seed) if labels_per_class else None
    options = {"knn": {"k": k}, "linear": {"seed": seed, **({"epochs": epochs} if epochs else {})},
               "finetune": {"seed": seed, **({"epochs": epochs} if epochs else {})}}
    rows = evaluate_encoders(encoders, protocol, train_set, test_set, options, finetune_set)
    for row in rows:
        row["data"] = Path(test).resolve().parent.name or str(test)
    update_metrics(run, {"results": rows})
    from mimkit.benchmarks.report import write_table

    print(write_table(rows, ["protocol", "init", "metric", "value", "num_train"]), end="")
    return rows


def _encoder_source(run: str | None, checkpoint: str | None):
    """(encoder, the run's data settings, run config) from a run folder or a weights file."""
    from .runs import load_run

    if (run is None) == (checkpoint is None):
        raise ConfigError("give exactly one of --run RUN (a pretraining run folder) and --checkpoint FILE")
    if run is not None:
        method, config = load_run(run)
        return method.encoder, config.get("data", {}), config
    from .checkpoints import load_method

    method, _ = load_method(checkpoint)
    return method.encoder, {}, {}


def finetune(train: str, out: str, run: str | None = None, checkpoint: str | None = None, test: str | None = None,
             head: str = "linear", finetune: FineTuneConfig = FineTuneConfig(), labels_per_class: int | None = None,
             trainer: dict | None = None, resume: bool = False) -> dict:
    """Fine-tune a pretrained encoder with a head on labelled image folders (MAE's fine-tuning recipe).

    Writes OUT/model.safetensors (encoder + head), OUT/checkpoints (best and last.ckpt for resume), OUT/logs
    and OUT/metrics.json; a seeded part of the training images validates and picks the best checkpoint.

    Args:
        train: labelled training images, one subfolder per class
        out: the fine-tuning folder to create, or to continue with resume
        run: a pretraining run folder whose encoder is fine-tuned
        checkpoint: or a weights file (mimkit, official MAE or timm) instead of a run
        test: labelled test images (one subfolder per class) scored with the best checkpoint
        head: linear, bn_linear, attentive (mimkit.core.heads)
        finetune: the fine-tuning settings (epochs, base_lr, layer_decay, drop_path, mixup, rand_augment, ...)
        labels_per_class: train on only this many labelled images per class (seeded)
        trainer: other Lightning Trainer options, passed through (logger, callbacks, profiler)
        resume: continue the fine-tuning in `out` from its last checkpoint
    """
    from .data import few_labels, labelled_dataset
    from .finetune import finetune as finetune_encoder
    from .runs import RunLock, update_metrics, write_config

    settings = finetune or FineTuneConfig()
    encoder, data, _ = _encoder_source(run, checkpoint)
    train_set = labelled_dataset(train, encoder, data, "train")
    test_set = labelled_dataset(test, encoder, data, "test") if test else None
    if labels_per_class:
        train_set = few_labels(train_set, labels_per_class, settings.seed)
    options = dict(trainer or {})
    unknown = sorted(set(options) - set(TRAINER_OPTIONS))
    if unknown:
        raise ConfigError(f"trainer option(s) {', '.join(unknown)} are not passed to Lightning here; the trainer "
                          f"section takes {', '.join(TRAINER_OPTIONS)}")
    out_dir = Path(out)
    if not resume:
        config = {**(current_config.get() or {}), "train": train, "out": out, "run": run, "checkpoint": checkpoint,
                  "test": test, "head": head, "finetune": plain(settings), "labels_per_class": labels_per_class}
        config.pop("config", None)
        out_dir.mkdir(parents=True, exist_ok=True)
        if not (out_dir / "checkpoints" / "last.ckpt").exists():
            write_config(out_dir, config)
    with RunLock(out_dir):  # one writer per folder, as pretraining
        row = finetune_encoder(encoder, train_set, test_set, out_dir, head=head, config=settings, resume=resume,
                               logger=options.pop("logger", True), callbacks=options.pop("callbacks", None) or ())
    row = {k: v for k, v in row.items() if k != "train_loss"}
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank:  # the other processes of a multi-process run report nothing
        return row
    update_metrics(out_dir, {"results": [row]})
    print(json.dumps({k: row[k] for k in ("protocol", "metric", "value", "best_step", "steps", "num_train",
                                            "num_val", "num_test", "model_path")}, indent=2))
    return row


EMBEDDING_FORMATS = ("safetensors", "parquet")


def embed(run: str, data: str, out: str, pool: str = "token", batch_size: int = 64, num_workers: int = 0) -> Path:
    """Write one embedding per image of a folder, with the file names: safetensors or Parquet (by `out`'s suffix).

    A .safetensors file holds `embeddings` (N, D) float32 and the file names (relative to `data`) in its
    metadata; a .parquet file (needs pyarrow) holds the columns `file` and `embedding`.

    Args:
        run: a pretraining (or fine-tuning) run folder, or a model.safetensors file
        data: a folder of images (searched recursively)
        out: the file to write, .safetensors or .parquet
        pool: token (the class token) or avg (the mean of the patch tokens)
        batch_size: images per forward pass
        num_workers: data-loading processes
    """
    from .data import ImageFolderDataset, eval_transform
    from .evaluate import extract_features
    from .runs import load_run, read_config

    out_path = Path(out)
    kind = out_path.suffix.lstrip(".").lower()
    if kind not in EMBEDDING_FORMATS:
        raise ConfigError(f"--out {out}: the suffix picks the format, one of .safetensors, .parquet")
    source = Path(run)
    if source.is_file():
        from .checkpoints import load_method

        method, _ = load_method(source)
        settings = read_config(source.parent).get("data", {})
    else:
        method, config = load_run(source)
        settings = config.get("data", {})
    encoder = method.encoder
    size = tuple(encoder.img_size)
    dataset = ImageFolderDataset(data, img_size=size, patch_size=encoder.patch_size, in_chans=encoder.in_chans,
                                 transform=eval_transform(size, crop_pct=settings.get("crop_pct", 1.0)),
                                 mean=settings.get("mean"), std=settings.get("std"), labelled=False)
    items = _Unlabelled(dataset)
    features, _ = extract_features(encoder, items, batch_size=batch_size, pool=pool, num_workers=num_workers)
    names = [str(Path(f).relative_to(Path(data))) for f in dataset.files]  # unreadable files are already out
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "safetensors":
        from safetensors.torch import save_file

        save_file({"embeddings": features.contiguous()}, str(out_path),
                  metadata={"files": json.dumps(names), "pool": pool, "run": str(run)})
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("writing Parquet needs pyarrow: pip install pyarrow (or write .safetensors)") from None
        table = pa.table({"file": names, "embedding": [row.tolist() for row in features]})
        pq.write_table(table, out_path)
    print(f"wrote {len(names)} embeddings of width {features.shape[1]} to {out_path}"
          f"{f' ({len(dataset.skipped)} unreadable files skipped)' if dataset.skipped else ''}", file=sys.stderr)
    return out_path


class _Unlabelled:
    """An unlabelled dataset seen as labelled by index (extract_features wants labels; they are ignored)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.dataset[index]["image"], "label": 0}


__all__ = ["pretrain", "finetune", "evaluate", "embed", "EMBEDDING_FORMATS"]
