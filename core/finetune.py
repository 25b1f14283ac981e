"""Fine-tuning, linear probes and segmentation on Lightning: one `FineTuneModule` with a pluggable head, loss and
metric, and the `finetune(...)` entry point that runs it.

MAE's fine-tuning recipe (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners", FINETUNE.md):
AdamW, lr = base_lr x effective batch / 256, layer-wise lr decay (BEiT) and weight-decay groups through timm,
per-step warmup then cosine decay, drop path on the fine-tuned copy and, when asked, RandAugment, mixup / cutmix,
label smoothing and random erasing (all timm's). A linear probe freezes the encoder; when nothing augments the
training images their features are computed once. `finetune` adds a validation split with best-checkpoint
selection, `checkpoints/last.ckpt` and resume (bit-identical), a CSV logger (or any Lightning logger), DDP, bf16,
and writes the best model as `model.safetensors` (encoder + head, rebuilt by `load_finetuned`).

Datasets yield dicts {"image": tensor, "label": class index | multi-hot vector | label map, ...} (the target key
is an argument: remote sensing keeps masks under "mask"), or {"features": vector, "label": ...} to train a head on
precomputed features (`encoder=None`). Metric values are fractions in `row["test"]`; `row["value"]` is the
task's metric in percent, as every result row of the project.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import tempfile
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import Dataset, Subset

from .encoders import set_fused_attention
from .errors import CheckpointError, ConfigError, DataError, TrainingError
from .heads import FineTuneModel, build_head
from .train import MIMDataModule, TrainConfig, adamw, step_seed, warmup_cosine

log = logging.getLogger("mimkit")

LOSSES = ("cross_entropy", "bce", "soft_target_cross_entropy", "dice_ce")
METRICS = ("classification", "multilabel", "iou", "dice")
OPTIMIZERS = ("adamw", "sgd")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class FineTuneConfig(TrainConfig):
    """Fine-tuning settings on top of the training ones; defaults follow MAE's fine-tuning recipe (ViT-B)."""

    max_steps: int | None = None        # optimiser steps; None: from `epochs`; 0: score the untrained head
    epochs: float = 50                  # passes over the training split when max_steps is None
    batch_size: int = 64                # per device
    base_lr: float = 1e-3               # MAE: blr 5e-4 (ViT-B) or 1e-3 (ViT-L/H); lr = blr x batch / 256
    min_lr: float = 1e-6                # MAE
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's defaults, as MAE fine-tuning
    warmup_epochs: float = 5            # MAE; warmup_steps, when given, wins
    layer_decay: float = 0.75           # MAE ViT-B (BEiT's layer-wise lr decay); 1 = none
    drop_path: float = 0.1              # MAE ViT-B
    label_smoothing: float = 0.1        # MAE
    mixup: float = 0.0                  # MAE recipe: 0.8 (timm Mixup alpha)
    cutmix: float = 0.0                 # MAE recipe: 1.0
    mixup_prob: float = 1.0             # MAE recipe
    mixup_switch_prob: float = 0.5      # MAE recipe
    rand_augment: str | None = None     # MAE recipe: "rand-m9-mstd0.5-inc1" (timm)
    random_erasing: float = 0.0         # MAE recipe: 0.25 (timm RandomErasing, per-pixel noise)
    freeze_encoder: bool = False        # linear probing: only the head learns
    cache_features: bool = True         # frozen encoder and nothing augmenting: encode the training split once
    optimizer: str = "adamw"            # "sgd" (momentum) for MAE-style linear probes on small data
    momentum: float = 0.9
    val_every: int | None = None        # steps between validations; None: once per epoch
    eval_batch_size: int | None = None  # None: batch_size
    overlap: float = 0.5                # sliding-window overlap for dense heads on inputs larger than the encoder's
    num_workers: int = 0

    def __post_init__(self):
        steps, self.max_steps = self.max_steps, 1  # None (from epochs) and 0 (untrained) pass the shared checks
        super().__post_init__()
        self.max_steps = steps
        if steps is not None and steps < 0:
            raise ConfigError(f"max_steps must be 0 or more, got {steps}")
        if steps is None and not self.epochs > 0:
            raise ConfigError(f"epochs must be positive (or give max_steps), got {self.epochs!r}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay must be in (0, 1], got {self.layer_decay!r}")
        if not 0 <= self.random_erasing <= 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("random_erasing must be in [0, 1] and label_smoothing in [0, 1)")
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError(f"mixup and cutmix are Beta alphas (0 = off), got {self.mixup}, {self.cutmix}")
        if self.picture_every:
            raise ConfigError("picture_every does not apply to fine-tuning (it draws reconstructions)")

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


def device_settings(device) -> dict:
    """Trainer settings for a torch device name (None: Lightning's "auto")."""
    if device is None:
        return {}
    device = torch.device(device)
    if device.type == "cpu":
        return {"accelerator": "cpu"}
    if device.type == "cuda" and device.index in (None, 0):
        return {"accelerator": "gpu"}
    raise ConfigError(f"device {device} is not supported here: pass 'cpu' or 'cuda' (choose the GPU with "
                      f"CUDA_VISIBLE_DEVICES), or the Trainer settings accelerator/devices")


# ---------------------------------------------------------------------------------------------- losses
def build_loss(name: str, *, label_smoothing: float = 0.0, ignore_index: int | None = None) -> nn.Module:
    """A loss by name: cross_entropy (label smoothing, ignore_index), bce (multi-label), soft_target_cross_entropy
    (timm; mixup / cutmix targets), dice_ce (MONAI DiceCELoss as UNETR's BTCV code: softmax, squared prediction)."""
    _choice("loss", name, LOSSES)
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing,
                                   ignore_index=-100 if ignore_index is None else ignore_index)
    if name == "bce":
        return nn.BCEWithLogitsLoss()
    if name == "soft_target_cross_entropy":
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)


# ---------------------------------------------------------------------------------------------- metrics
class Metrics(nn.Module):
    """torchmetrics states (synchronised across processes) and the result dict of one task kind."""

    primary = ""

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict:
        raise NotImplementedError

    def reset(self) -> None:
        for module in self.children():
            module.reset()

    def result(self) -> dict:
        with warnings.catch_warnings():  # torchmetrics warns about classes without positives; they are counted
            warnings.simplefilter("ignore")
            values = self.compute()
        self.reset()
        return values


class ClassificationMetrics(Metrics):
    """Top-1 accuracy (micro) and balanced accuracy: the mean recall over the classes present in the labels
    (scikit-learn's definition; torchmetrics' macro recall would count a predicted-but-absent class as 0)."""

    primary = "accuracy"

    def __init__(self, num_classes: int):
        super().__init__()
        from torchmetrics.classification import MulticlassAccuracy, MulticlassStatScores

        self.accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.stats = MulticlassStatScores(num_classes, average=None)

    def update(self, logits, target):
        self.accuracy.update(logits, target)
        self.stats.update(logits, target)

    def compute(self) -> dict:
        stats = self.stats.compute().float()
        true_positive, support = stats[:, 0], stats[:, 4]
        present = support > 0
        return {"accuracy": float(self.accuracy.compute()),
                "balanced_accuracy": float((true_positive[present] / support[present]).mean()),
                "num_samples": int(support.sum())}


class MultilabelMetrics(Metrics):
    """Macro ROC-AUC and average precision over the labels that take both values in the data (the others are
    skipped and counted)."""

    primary = "auc_macro"

    def __init__(self, num_labels: int):
        super().__init__()
        from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision, MultilabelStatScores

        self.auroc = MultilabelAUROC(num_labels, average=None)
        self.average_precision = MultilabelAveragePrecision(num_labels, average=None)
        # micro: every (image, label) pair ranked together, as SMARTIES reports BigEarthNet
        self.average_precision_micro = MultilabelAveragePrecision(num_labels, average="micro")
        self.stats = MultilabelStatScores(num_labels, average=None)

    def update(self, logits, target):
        target = target.long()
        for metric in (self.auroc, self.average_precision, self.average_precision_micro, self.stats):
            metric.update(logits, target)

    def compute(self) -> dict:
        stats = self.stats.compute()
        positives, total = stats[:, 4], stats[:, :4].sum(1)
        used = (positives > 0) & (positives < total)
        auc, ap = self.auroc.compute(), self.average_precision.compute()
        return {"auc_macro": float(auc[used].mean()) if used.any() else None,
                "average_precision_macro": float(ap[used].mean()) if used.any() else None,
                "average_precision_micro": float(self.average_precision_micro.compute()),
                "auc_classes_used": int(used.sum()), "auc_classes_skipped": int((~used).sum()),
                "num_samples": int(total[0]) if len(total) else 0}


def segmentation_metrics(confusion) -> dict:
    """Pixel accuracy, per-class IoU and mean IoU (over classes present in the labels or the predictions, as
    torchmetrics' macro JaccardIndex) from a confusion matrix (rows: truth)."""
    confusion = np.asarray(confusion, np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    iou = np.where(present, true_positive / np.maximum(union, 1), np.nan)
    return {"pixel_accuracy": float(true_positive.sum() / max(confusion.sum(), 1)),
            "miou": float(np.nanmean(iou)) if present.any() else 0.0,
            "iou_per_class": [None if np.isnan(v) else round(float(v), 4) for v in iou],
            "num_pixels": int(confusion.sum())}


class IoUMetrics(Metrics):
    """Mean IoU and pixel accuracy over the whole test set (one confusion matrix), nodata pixels ignored."""

    primary = "miou"

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        super().__init__()
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)

    def update(self, logits, target):
        target = target[:, 0] if target.ndim == logits.ndim else target
        valid = target[target != self.ignore_index] if self.ignore_index is not None else target
        if valid.numel() and int(valid.max()) >= self.num_classes:
            raise DataError(f"a mask holds class {int(valid.max())}, beyond the {self.num_classes} classes")
        self.confusion.update(logits.argmax(1), target)

    def compute(self) -> dict:
        return segmentation_metrics(self.confusion.compute().cpu().numpy())


class _DiceSums(torchmetrics.Metric):
    """Per-class sums of Dice, counts of the volumes where each class is present, and the number of volumes."""

    full_state_update = False

    def __init__(self, num_foreground: int):
        super().__init__()
        self.add_state("total", default=torch.zeros(num_foreground), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_foreground), dist_reduce_fx="sum")
        self.add_state("volumes", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, dice: torch.Tensor) -> None:
        present = ~torch.isnan(dice)
        self.total += torch.where(present, dice, 0.0).sum(0)
        self.count += present.sum(0)
        self.volumes += len(dice)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.total, self.count, self.volumes


class DiceMetrics(Metrics):
    """Mean Dice over the foreground classes (MONAI's compute_dice per volume: background excluded, classes absent
    from a volume's ground truth ignored; a class absent from every volume is left out of the mean)."""

    primary = "dice_mean"

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.sums = _DiceSums(num_classes - 1)

    def update(self, logits, target):
        from monai.metrics import compute_dice

        target = target[:, 0] if target.ndim == logits.ndim else target
        predicted = F.one_hot(logits.argmax(1), self.num_classes).movedim(-1, 1)
        truth = F.one_hot(target.long().clamp_max(self.num_classes - 1), self.num_classes).movedim(-1, 1)
        self.sums.update(compute_dice(predicted, truth, include_background=False, ignore_empty=True))  # nan: absent

    def compute(self) -> dict:
        total, count, volumes = (t.cpu() for t in self.sums.compute())
        total, count = total.reshape(-1), count.reshape(-1)  # torchmetrics squeezes one-class states to scalars
        per_class = total / count.clamp_min(1)
        present = count > 0
        return {"dice_mean": float(per_class[present].mean()) if present.any() else float("nan"),
                "dice_per_class": [round(float(v), 4) if ok else None for v, ok in zip(per_class, present)],
                "num_samples": int(volumes)}


def build_metrics(kind: str, num_outputs: int, *, ignore_index: int | None = None) -> Metrics:
    """Metrics of a task kind: classification, multilabel, iou (segmentation, remote sensing) or dice (medical)."""
    _choice("metric", kind, METRICS)
    if kind == "classification":
        return ClassificationMetrics(num_outputs)
    if kind == "multilabel":
        return MultilabelMetrics(num_outputs)
    if kind == "iou":
        return IoUMetrics(num_outputs, ignore_index)
    if num_outputs < 2:
        raise ConfigError(f"Dice needs at least 2 classes (background and one more), got {num_outputs}")
    return DiceMetrics(num_outputs)


def as_labels(labels, where: str = "labels") -> torch.Tensor:
    """Class indices (N,) as int64, or multi-hot (N, C) as float32."""
    labels = torch.as_tensor(labels)
    if labels.ndim == 1:
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise DataError(f"{where}: expected integer class indices or multi-hot vectors, got fractional values")
        return labels.long()
    if labels.ndim == 2:
        if not torch.isin(labels, torch.tensor([0, 1], dtype=labels.dtype, device=labels.device)).all():
            raise DataError(f"{where}: multi-hot labels must hold only 0 and 1")
        return labels.float()
    raise DataError(f"{where}: expected a class index or a multi-hot vector per sample, "
                    f"got shape {tuple(labels.shape)}")


def classification_metrics(scores, labels) -> dict:
    """Accuracy and balanced accuracy from class scores (N, C), or macro ROC-AUC and AP for multi-hot labels."""
    scores = torch.as_tensor(scores).float().cpu()
    labels = as_labels(torch.as_tensor(labels).cpu())
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise DataError(f"expected scores shaped (N, classes) for {labels.shape[0]} labels, got {tuple(scores.shape)}")
    metrics = build_metrics("multilabel" if labels.ndim == 2 else "classification", scores.shape[1])
    metrics.update(scores, labels)
    return metrics.result()


# ---------------------------------------------------------------------------------------------- augmentation
class SampleAugment:
    """Per-sample augmentations of MAE's recipe on a normalised (C, H, W) tensor: RandAugment (timm, on the 8-bit
    picture, so 1 or 3 channels), then random erasing (timm, per-pixel noise, as MAE's --remode pixel)."""

    def __init__(self, rand_augment: str | None, random_erasing: float, mean: Sequence[float], std: Sequence[float],
                 img_size: int):
        from timm.data import rand_augment_transform
        from timm.data.random_erasing import RandomErasing  # not re-exported by timm.data (timm 1.0)

        self.mean = torch.as_tensor(np.asarray(mean, np.float32)).reshape(-1, 1, 1)
        self.std = torch.as_tensor(np.asarray(std, np.float32)).reshape(-1, 1, 1)
        self.rand_augment = None
        if rand_augment:
            fill = tuple(min(255, round(255 * float(m))) for m in np.ravel(mean))
            try:  # timm's hyper-parameters for RandAugment, as its create_transform sets them
                self.rand_augment = rand_augment_transform(rand_augment, {"translate_const": int(img_size * 0.45),
                                                                          "img_mean": fill})
            except (AssertionError, KeyError, ValueError) as error:
                raise ConfigError(f"rand_augment {rand_augment!r} is not a timm RandAugment spec "
                                  f"(e.g. 'rand-m9-mstd0.5-inc1'): {error}") from None
        self.erase = RandomErasing(random_erasing, mode="pixel", device="cpu") if random_erasing else None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.rand_augment is not None:
            from PIL import Image

            pixels = ((image * self.std + self.mean).clamp(0, 1) * 255).round().to(torch.uint8)
            array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
            array = np.asarray(self.rand_augment(Image.fromarray(array)), np.float32) / 255
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            image = (torch.from_numpy(np.ascontiguousarray(array)) - self.mean) / self.std
        if self.erase is not None:
            image = self.erase(image.clone())
        return image


def check_augmentations(config: FineTuneConfig, image: torch.Tensor, dense: bool) -> None:
    """An augmentation that cannot apply to these images or this task is an error, never skipped."""
    channels, spatial = image.shape[0], image.ndim - 1
    shape = f"{channels}-channel {spatial}D images"
    if config.rand_augment and (spatial != 2 or channels not in (1, 3)):
        raise ConfigError(f"rand_augment {config.rand_augment!r}: timm's RandAugment works on 2D pictures with 1 or 3 "
                          f"channels; the training data holds {shape}. Remove rand_augment from the settings")
    if config.random_erasing and spatial != 2:
        raise ConfigError(f"random_erasing={config.random_erasing}: timm's RandomErasing erases 2D boxes; the "
                          f"training data holds {shape}. Remove random_erasing from the settings")
    if config.cutmix and spatial != 2:
        raise ConfigError(f"cutmix={config.cutmix}: timm's cutmix pastes 2D boxes; the training data holds {shape}. "
                          f"Remove cutmix (mixup works on volumes)")
    if dense and (config.mixes or config.rand_augment or config.random_erasing):
        raise ConfigError("mixup, cutmix, rand_augment and random_erasing are classification augmentations: they "
                          "would move or blend the image without its label map; remove them for segmentation")
    if config.mixes and config.batch_size % 2:
        raise ConfigError(f"mixup/cutmix pair each sample with another: batch_size must be even, got "
                          f"{config.batch_size}")


@contextmanager
def _seeded(seed: int):
    """Seed python's, numpy's and torch's global generators for a block; restore them afterwards."""
    python, state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(state)


# ---------------------------------------------------------------------------------------------- data
def _unwrap(dataset) -> tuple[Any, list[int] | None]:
    """(base dataset, its indices) behind any chain of Subsets."""
    indices = None
    while isinstance(dataset, Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def _takes_seeded_keys(dataset) -> bool:
    """Whether dataset[(index, sample_seed)] works (mimkit's datasets seed their augmentation from the key)."""
    if isinstance(dataset, (list, tuple)) or len(dataset) == 0:
        return False
    try:
        return isinstance(dataset[(0, 0)], dict)
    except (TypeError, IndexError, KeyError, ValueError):
        return False


class TaskView(Dataset):
    """A dataset's samples as {input_key: tensor, "target": tensor}, with optional per-sample augmentation.

    Keys are indices or (index, sample_seed) from core.data.ResumableSampler: the seed reaches the dataset when it
    takes seeded keys, and seeds the augmentation, so a resumed run sees the same augmented samples.
    """

    def __init__(self, dataset, target_key: str = "label", input_key: str = "image",
                 augment: SampleAugment | None = None):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ConfigError(f"expected a torch Dataset, got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise DataError("the dataset is empty")
        self.dataset, self.target_key, self.input_key, self.augment = dataset, target_key, input_key, augment
        self.base, self.indices = _unwrap(dataset)
        self.seeded = _takes_seeded_keys(self.base)

    def __len__(self) -> int:
        return len(self.dataset)

    def item(self, key) -> dict:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))
        base_index = self.indices[index] if self.indices is not None else index
        item = self.base[(base_index, seed)] if self.seeded else self.base[base_index]
        if not isinstance(item, dict) or self.input_key not in item or self.target_key not in item:
            found = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise DataError(f"fine-tuning needs dataset items that are dicts with {self.input_key!r} and "
                            f"{self.target_key!r}, got {found}")
        return item

    def __getitem__(self, key) -> dict:
        item = self.item(key)
        image = torch.as_tensor(item[self.input_key])
        if self.augment is not None:
            with _seeded(int(key[1]) if isinstance(key, (tuple, list)) else int(key)):
                image = self.augment(image)
        return {self.input_key: image, "target": torch.as_tensor(item[self.target_key])}


class FeatureSet(Dataset):
    """Precomputed head inputs with their targets; takes plain or seeded keys (the seed is not needed)."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor):
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key) -> dict:
        index = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        return {"features": self.features[index], "target": self.targets[index]}


def _labels_if_known(dataset, target_key: str) -> np.ndarray | None:
    """Class indices of every sample when they are known without decoding images (targets attribute, plain lists)."""
    base, indices = _unwrap(dataset)
    labels = getattr(base, "targets", None)
    if labels is None and isinstance(base, (list, tuple)):
        labels = [torch.as_tensor(item[target_key]) for item in base]
        if any(label.ndim for label in labels):
            return None
        labels = [int(label) for label in labels]
    if labels is None or len(labels) != len(base):
        return None
    labels = np.asarray(labels)
    return labels[indices] if indices is not None else labels


def split_validation(dataset, fraction: float, seed: int = 0, target_key: str = "label") -> tuple[Subset, Subset]:
    """(train, validation) subsets: a seeded fraction of every class when the class labels are known, else of the
    whole set. The validation part reads the dataset's un-augmented view when it has one (`eval_view()`)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    labels = _labels_if_known(dataset, target_key)
    if labels is not None:
        picked = [rng.permutation(np.flatnonzero(labels == c))[:max(1, round(fraction * np.sum(labels == c)))]
                  for c in np.unique(labels) if np.sum(labels == c) > 1]
        val = np.sort(np.concatenate(picked)) if picked else np.array([], int)
    else:
        val = np.sort(rng.permutation(len(dataset))[:max(1, round(fraction * len(dataset)))])
    if len(val) == 0 or len(val) == len(dataset):
        raise DataError(f"cannot split a validation fraction {fraction} off {len(dataset)} training samples")
    train = np.setdiff1d(np.arange(len(dataset)), val)
    view = dataset.eval_view() if callable(getattr(dataset, "eval_view", None)) else dataset
    return Subset(dataset, train.tolist()), Subset(view, val.tolist())


def count_outputs(datasets: Sequence, target_key: str = "label") -> int:
    """Classes of a task: `classes` when the data names them, else the largest label found plus one (label maps:
    the largest non-negative value); multi-hot labels: their length."""
    first = datasets[0]
    classes = getattr(_unwrap(first)[0], "classes", None)
    if classes:
        return len(classes)
    top = -1
    for dataset in datasets:
        labels = _labels_if_known(dataset, target_key)
        if labels is not None:
            top = max(top, int(labels.max()))
            continue
        view = dataset.eval_view() if callable(getattr(dataset, "eval_view", None)) else dataset
        view = TaskView(view, target_key)
        for i in range(len(view)):
            target = torch.as_tensor(view.item(i)[target_key])
            if target.ndim == 1:  # multi-hot
                return target.numel()
            top = max(top, int(target.max()))
    if top < 0:
        raise DataError("every label is negative (nodata): nothing to learn or score")
    return top + 1


# ---------------------------------------------------------------------------------------------- the module
def set_drop_path(encoder: nn.Module, rate: float) -> nn.Module:
    """Stochastic depth rising linearly from 0 (first block) to `rate` (last block), timm's rule; in place."""
    from timm.layers import DropPath

    if not 0 <= rate < 1:
        raise ConfigError(f"drop_path must be in [0, 1), got {rate!r}")
    for block, p in zip(encoder.blocks, torch.linspace(0, rate, len(encoder.blocks)).tolist()):
        # timm builds an Identity when the rate is 0, so both slots are replaced, never edited.
        block.drop_path1 = DropPath(p) if p > 0 else nn.Identity()
        block.drop_path2 = DropPath(p) if p > 0 else nn.Identity()
    return encoder


def optimizer_groups(model: FineTuneModel, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """timm's parameter groups: layer-wise lr decay (BEiT, MAE; "lr_scale" per group) over the model's
    group_matcher, or weight-decay groups only; no weight decay on 1-D parameters, tokens and positions."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = sorted(model.no_weight_decay())
    if layer_decay < 1 and model.encoder is not None:
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


class FineTuneModule(L.LightningModule):
    """Trains a FineTuneModel with a loss and scores it with a metric: classification (single- or multi-label),
    linear probing (frozen encoder; batches may carry cached "features") and segmentation alike."""

    def __init__(self, model: FineTuneModel, config: FineTuneConfig, *, loss: str, metric: str, num_outputs: int,
                 ignore_index: int | None = None):
        super().__init__()
        self.model, self.config, self.loss_name = model, config, loss
        self.loss = build_loss(loss, label_smoothing=0.0 if config.mixes else config.label_smoothing,
                               ignore_index=ignore_index)
        self.metrics = build_metrics(metric, num_outputs, ignore_index=ignore_index)
        self.metric_kind, self.num_outputs = metric, num_outputs
        self.mixup = None
        if config.mixes:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                               switch_prob=config.mixup_switch_prob, label_smoothing=config.label_smoothing,
                               num_classes=num_outputs, multi_label=metric == "multilabel")
        if config.freeze_encoder and model.encoder is not None:
            model.encoder.requires_grad_(False)
        self.step_losses: list[float] = []
        self.results: dict[str, dict] = {}
        self.val_history: list[tuple[int, dict]] = []

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder and self.model.encoder is not None:
            self.model.encoder.eval()  # a frozen encoder also keeps drop path and dropout off
        return self

    def on_fit_start(self) -> None:
        set_fused_attention(self.model, self.device.type, "bf16" in str(self.trainer.precision))

    # ------------------------------------------------------------------ steps
    def _target(self, target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.metric_kind in ("classification", "multilabel"):
            return as_labels(target, "training labels")
        if self.loss_name == "dice_ce":
            return target[:, None] if target.ndim == logits.ndim - 1 else target  # MONAI wants (B, 1, *spatial)
        return (target[:, 0] if target.ndim == logits.ndim else target).long()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits; dense heads see larger inputs (whole volumes) through MONAI's sliding window."""
        encoder = self.model.encoder
        if self.model.head.dense and tuple(images.shape[2:]) != tuple(encoder.img_size):
            from monai.inferers import sliding_window_inference

            return sliding_window_inference(images, roi_size=tuple(encoder.img_size), sw_batch_size=4,
                                            predictor=self.model, overlap=self.config.overlap)
        return self.model(images)

    def _logits(self, batch: dict) -> torch.Tensor:
        if "features" in batch:
            return self.model.head(batch["features"])
        return self.predict(batch["image"]) if not self.training else self.model(batch["image"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        cfg = self.config
        seed = step_seed(cfg.seed, self.global_step * cfg.accumulate_grad_batches
                         + batch_idx % cfg.accumulate_grad_batches, self.global_rank)
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)  # timm's Mixup draws from numpy
        key = "features" if "features" in batch else "image"
        inputs, target = batch[key], batch["target"]
        if self.mixup is not None:
            inputs, target = self.mixup(inputs, as_labels(target, "training labels"))
            logits = self.model.head(inputs) if key == "features" else self.model(inputs)
        else:
            logits = self._logits(batch)
            target = self._target(target, logits)
        loss = self.loss(logits.float(), target)
        if not torch.isfinite(loss):
            raise TrainingError(f"the fine-tuning loss became {loss.item()} at step {self.global_step}; lower the "
                                f"learning rate (lr/base_lr), or train in 32-bit precision")
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(inputs))
        self.step_losses.append(float(loss.detach()))
        return loss

    def _score(self, batch: dict) -> None:
        logits = self._logits(batch).float()
        target = batch["target"]
        if self.metric_kind in ("classification", "multilabel"):
            target = as_labels(target, "evaluation labels")
        self.metrics.update(logits, target)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch)

    def _finish(self, stage: str) -> None:
        values = self.metrics.result()
        self.results[stage] = values
        primary = values[self.metrics.primary]
        numbers = {f"{stage}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))}
        numbers[f"{stage}/{self.metrics.primary}"] = float("nan") if primary is None else float(primary)
        self.log_dict(numbers)
        if stage == "val":
            self.val_history.append((self.global_step, values))

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        cfg = self.config
        lr = cfg.learning_rate
        groups = optimizer_groups(self.model, cfg.weight_decay, cfg.layer_decay)
        for group in groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
        else:
            optimizer = adamw(groups, lr, cfg.betas)  # fused where every parameter allows, as pretraining
        min_ratio = cfg.min_lr / lr if lr else 0.0
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, cfg.max_steps, min_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class FineTuneData(MIMDataModule):
    """The training split through the resumable sampler (as pretraining), the validation and test splits once
    each, split over processes without repeats; a frozen encoder's training features are computed once."""

    def __init__(self, train: Dataset, val: Dataset | None, test: Dataset | None, config: FineTuneConfig,
                 cache_features: bool = False):
        super().__init__(train, config)
        self.val, self.test, self.cache_features = val, test, cache_features

    @torch.no_grad()
    def _encode(self, view: TaskView) -> FeatureSet:
        from .data import make_loader

        module = self.trainer.lightning_module
        model, was_training = module.model, module.model.training
        model.eval()
        features, targets = [], []
        with self.trainer.precision_plugin.forward_context():
            for batch in make_loader(view, self.config.eval_batch_size or self.config.batch_size,
                                     self.config.num_workers):
                features.append(model.features(batch["image"].to(module.device)).float())
                targets.append(batch["target"])
        model.train(was_training)
        return FeatureSet(torch.cat(features), torch.cat(targets))

    def train_dataloader(self):
        if self.cache_features and not isinstance(self.dataset, FeatureSet):
            self.dataset = self._encode(self.dataset)
        return super().train_dataloader()

    def _once(self, data: Dataset):
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        from .data import make_loader

        trainer = self.trainer
        sampler = (UnrepeatedDistributedSampler(data, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                                shuffle=False) if trainer.world_size > 1 else None)
        return make_loader(data, self.config.eval_batch_size or self.config.batch_size, self.config.num_workers,
                           sampler=sampler)

    def val_dataloader(self):
        return self._once(self.val) if self.val is not None else []

    def test_dataloader(self):
        return self._once(self.test)


class _ValidateAtEnd(Callback):
    """Stop, and so validate, at the last step: the final weights compete for the best checkpoint too."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class _LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every` steps, written again after a validation at that step. Lightning writes it before
    the step's validation and then skips its own post-validation save, so a run resumed from it would forget
    that validation's score and could keep another best checkpoint than the uninterrupted run."""

    def __init__(self, dirpath: Path, every: int):
        super().__init__(dirpath=dirpath, every_n_train_steps=every, save_top_k=0, save_last=True)
        self.every = every

    def on_validation_end(self, trainer, module):
        super().on_validation_end(trainer, module)
        # checkpoint callbacks run last and in order, so the best checkpoint's callback has seen this score
        if (trainer.state.fn == "fit" and not trainer.sanity_checking and self.last_model_path
                and trainer.global_step % self.every == 0):
            trainer.save_checkpoint(self.last_model_path)


# ---------------------------------------------------------------------------------------------- saving
def encoder_config(encoder: nn.Module) -> dict | None:
    """Constructor arguments that rebuild a plain ViTEncoder (None for other encoder classes)."""
    from .encoders import PatchEmbed, ViTEncoder

    if type(encoder) is not ViTEncoder or type(encoder.patch_embed) is not PatchEmbed:
        return None
    block = encoder.blocks[0]
    return {"img_size": list(encoder.img_size), "patch_size": list(encoder.patch_size), "in_chans": encoder.in_chans,
            "embed_dim": encoder.embed_dim, "depth": len(encoder.blocks), "num_heads": encoder.num_heads,
            "mlp_ratio": block.mlp.fc1.out_features / encoder.embed_dim, "qkv_bias": block.attn.qkv.bias is not None,
            "spatial_dims": encoder.spatial_dims, "pos_embed": "sincos" if encoder.fixed_pos else "learned",
            "class_token": encoder.cls_token is not None, "layer_scale": encoder.layer_scale}


def save_finetuned(model: FineTuneModel, path: str | Path, num_outputs: int, extra: dict | None = None) -> Path:
    """Write encoder + head as safetensors (core.checkpoints.save_method) with what rebuilds them."""
    from .checkpoints import save_method

    config = {"head": model.head.head_name, "head_options": model.head.options, "num_outputs": num_outputs,
              "encoder": None if model.encoder is None else encoder_config(model.encoder),
              "feature_width": None, **(extra or {})}
    if model.encoder is None:
        config["feature_width"] = next(p for p in model.head.parameters() if p.ndim == 2).shape[1]
    return save_method(model, path, config)


def load_finetuned(path: str | Path, encoder: nn.Module | None = None) -> tuple[FineTuneModel, dict]:
    """Rebuild a model written by `finetune` / `save_finetuned` and load its weights strictly: (model, config).
    Pass `encoder` (any architecture, weights are replaced) when the file's encoder is not a plain ViTEncoder."""
    from safetensors import safe_open

    from .checkpoints import _load, read_state_dict
    from .encoders import ViTEncoder

    state, fmt = read_state_dict(path)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
    if metadata.get("method") != FineTuneModel.method_name:
        raise CheckpointError(f"checkpoint {path} is not a fine-tuned model (written by mimkit's finetune); "
                              f"found method {metadata.get('method')!r}")
    config = json.loads(metadata["config"])
    if encoder is None and config["encoder"] is not None:
        encoder = ViTEncoder(**config["encoder"])
    elif encoder is None and config["feature_width"] is None:
        raise CheckpointError(f"checkpoint {path}: its encoder is not a plain ViTEncoder; build one of the same "
                              f"architecture and pass it as encoder=")
    head = build_head(config["head"], encoder if encoder is not None else config["feature_width"],
                      config["num_outputs"], **config["head_options"])
    model = FineTuneModel(encoder, head, copy_encoder=False)
    _load(model, state, Path(path), True, {"format": fmt})
    return model.eval(), config


# ---------------------------------------------------------------------------------------------- entry point
@contextmanager
def _quiet(enabled: bool):
    """Lightning's start-up notes and hints, hidden when no progress is shown (library calls, tests)."""
    if not enabled:
        yield
        return
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available but not used.*")
        warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")  # Lightning's own use of a torch API
        try:
            yield
        finally:
            lightning_log.setLevel(level)


def resolve(config: FineTuneConfig, num_train: int) -> FineTuneConfig:
    """Settings that depend on the data: batch size at most the training split, steps from epochs, warmup
    and validation interval in steps."""
    world = config.world_size
    batch = config.batch_size
    if batch * world > num_train:
        batch = max(1, num_train // world)
        batch -= batch % 2 if config.mixes and batch > 1 else 0
        log.info("batch_size %d per device is more than the %d training samples allow; using %d",
                 config.batch_size, num_train, batch)
    config = dataclasses.replace(config, batch_size=batch)
    steps_per_epoch = math.ceil(num_train / config.effective_batch)
    steps = config.max_steps if config.max_steps is not None else math.ceil(config.epochs * steps_per_epoch)
    warmup = (config.warmup_steps if config.warmup_steps is not None
              else round(config.warmup_epochs * steps_per_epoch))
    return dataclasses.replace(config, max_steps=steps, warmup_steps=min(warmup, steps),
                               val_every=config.val_every or steps_per_epoch)


def _settings(config: FineTuneConfig | None, settings: dict) -> FineTuneConfig:
    names = {f.name for f in dataclasses.fields(FineTuneConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ConfigError(f"unknown fine-tuning setting(s) {', '.join(unknown)}; FineTuneConfig takes "
                          f"{', '.join(sorted(names))}")
    return dataclasses.replace(config or FineTuneConfig(), **settings)


def _data_stats(dataset, channels: int) -> tuple[np.ndarray, np.ndarray]:
    base = _unwrap(dataset)[0]
    mean, std = getattr(base, "mean", None), getattr(base, "std", None)
    if mean is None or std is None:
        log.info("the training data has no mean/std: RandAugment takes its pixels to be in [0, 1]")
        return np.zeros(channels), np.ones(channels)
    return np.broadcast_to(np.ravel(mean), channels), np.broadcast_to(np.ravel(std), channels)


def finetune(encoder: nn.Module | None, train_set, test_set=None, out_dir: str | Path | None = None, *,
             head: str = "linear", head_options: dict | None = None, num_outputs: int | None = None,
             loss: str | None = None, metric: str | None = None, target_key: str = "label",
             ignore_index: int | None = None, val_set=None, val_fraction: float = 0.1,
             config: FineTuneConfig | None = None, resume: bool = False, logger: Any = True,
             callbacks: Sequence[Callback] = (), return_model: bool = False, **settings) -> dict:
    """Fine-tune (or probe) a copy of `encoder` with a head on the Lightning Trainer and score it on `test_set`.

    `settings` are FineTuneConfig fields (they override `config`). The validation split is `val_set`, or a seeded
    stratified `val_fraction` of the training split (0: none, the last weights are kept); the checkpoint with the
    best validation metric is the model scored and saved. With `out_dir`: `checkpoints/` (`last.ckpt` for
    resume=True, the best one), `logs/` (CSV, or `logger`: any Lightning logger, False for none) and
    `model.safetensors` (encoder + head, `load_finetuned`). `encoder=None`: the data yields "features" vectors
    for a head over pooled features. Returns a result row: "value" (the test metric in percent, or the best
    validation one without a test set), "test" and "val" metric dicts (fractions), the settings used.
    """
    config = _settings(config, settings)
    out = Path(out_dir) if out_dir is not None else None
    last = out / "checkpoints" / "last.ckpt" if out is not None else None
    if resume and (last is None or not last.exists()):
        raise ConfigError(f"resume: no checkpoint to resume from at {last or 'out_dir (none given)'}")
    if not resume and last is not None and last.exists():
        raise ConfigError(f"{out} already holds a fine-tuning run; pass resume=True to continue it or choose another "
                          f"out_dir")
    if config.world_size > 1 and out is None:
        raise ConfigError("fine-tuning on several processes needs an out_dir they share (for the checkpoints)")
    input_key = "image" if encoder is not None else "features"
    if val_set is None and val_fraction:
        train_set, val_set = split_validation(train_set, val_fraction, config.seed, target_key)
    probe = TaskView(train_set, target_key, input_key).item(0)
    sample, target = torch.as_tensor(probe[input_key]), torch.as_tensor(probe[target_key])
    if test_set is not None:
        test_target = torch.as_tensor(TaskView(test_set, target_key, input_key).item(0)[target_key])
        if test_target.shape != target.shape and min(test_target.ndim, target.ndim) < 2:
            raise DataError(f"train and test labels differ in kind: shapes {tuple(target.shape)} and "
                            f"{tuple(test_target.shape)}")
    with _seeded(config.seed):  # the head's initialisation is a function of the seed
        width = encoder if encoder is not None else sample.shape[-1]
        num_outputs = num_outputs or count_outputs([d for d in (train_set, test_set) if d is not None], target_key)
        built = build_head(head, width, num_outputs, **(head_options or {}))
    dense = built.dense
    multilabel = not dense and target.ndim == 1
    metric = metric or ("iou" if dense else "multilabel" if multilabel else "classification")
    loss = loss or ("dice_ce" if metric == "dice" else "cross_entropy" if dense else "bce" if multilabel
                    else "soft_target_cross_entropy" if config.mixes else "cross_entropy")
    if config.mixes and loss == "cross_entropy":
        raise ConfigError("mixup/cutmix give soft targets: use loss 'soft_target_cross_entropy' (or the default)")
    check_augmentations(config, sample, dense)
    augment = None
    if config.rand_augment or config.random_erasing:
        mean, std = _data_stats(train_set, sample.shape[0])
        augment = SampleAugment(config.rand_augment, config.random_erasing, mean, std, min(sample.shape[1:]))
    train = TaskView(train_set, target_key, input_key, augment)
    config = resolve(config, len(train))
    model = FineTuneModel(encoder, built)
    if encoder is not None and config.drop_path and not config.freeze_encoder:
        set_drop_path(model.encoder, config.drop_path)
    module = FineTuneModule(model, config, loss=loss, metric=metric, num_outputs=num_outputs, ignore_index=ignore_index)
    cache = (encoder is not None and config.freeze_encoder and config.cache_features and augment is None
             and not config.mixes and built.reads != "layers")
    val = TaskView(val_set, target_key, input_key) if val_set is not None else None
    test = TaskView(test_set, target_key, input_key) if test_set is not None else None
    data = FineTuneData(train, val, test, config, cache_features=cache)

    with tempfile.TemporaryDirectory() if out is None else nullcontext() as scratch, _quiet(not config.progress):
        root = out or Path(scratch)
        checkpoints = root / "checkpoints"
        best = (ModelCheckpoint(dirpath=checkpoints, filename="best-step{step:06d}", auto_insert_metric_name=False,
                                monitor=f"val/{module.metrics.primary}", mode="max", save_top_k=1)
                if val is not None else None)
        keep = _LastCheckpoint(checkpoints, config.checkpoint_every) if out is not None else None
        if logger is True:
            from lightning.pytorch.loggers import CSVLogger

            logger = CSVLogger(root, name="logs") if out is not None else False
        from .distributed import check_launcher

        check_launcher(config.num_nodes)
        trainer = L.Trainer(
            default_root_dir=root, max_steps=max(config.max_steps, 1), max_epochs=-1,
            max_time={"seconds": config.max_time} if config.max_time else None,
            accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
            strategy=config.strategy, precision=config.precision,
            accumulate_grad_batches=config.accumulate_grad_batches, use_distributed_sampler=False,
            callbacks=[c for c in (best, keep) if c is not None] + ([_ValidateAtEnd()] if val is not None else [])
            + list(callbacks),
            logger=logger or False, enable_checkpointing=best is not None or keep is not None,
            enable_progress_bar=config.progress, enable_model_summary=False, log_every_n_steps=config.log_every,
            num_sanity_val_steps=0, limit_val_batches=1.0 if val is not None else 0,
            val_check_interval=config.val_every * config.accumulate_grad_batches, check_val_every_n_epoch=None)
        if config.max_steps:
            trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
            if out is not None and trainer.global_step % config.checkpoint_every:
                trainer.save_checkpoint(last)  # stopped between checkpoints (max_time, a callback): keep it resumable
        best_step = trainer.global_step
        if best is not None and best.best_model_path:
            saved = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
            module.load_state_dict(saved["state_dict"])
            best_step = saved["global_step"]
        if test is not None:
            trainer.test(module, datamodule=data, verbose=False)
        model_path = None
        if out is not None and trainer.is_global_zero:
            model_path = save_finetuned(module.model, out / "model.safetensors", num_outputs,
                                        {"metric": metric, "loss": loss, "best_step": best_step})
    val_metrics = next((values for step, values in module.val_history if step == best_step), None)
    if val_metrics is None and best is not None and best.best_model_score is not None:
        val_metrics = {module.metrics.primary: float(best.best_model_score)}
    scored = module.results.get("test") or val_metrics or {}
    value = scored.get(module.metrics.primary)
    row = {"protocol": "segmentation" if dense else "linear" if config.freeze_encoder else "finetune",
           "head": head, "metric": module.metrics.primary,
           "value": None if value is None or not math.isfinite(value) else round(100 * value, 2),
           "test": module.results.get("test"), "val": val_metrics, "best_step": best_step,
           "steps": trainer.global_step, "steps_per_epoch": math.ceil(len(train) / config.effective_batch),
           "num_train": len(train), "num_val": len(val) if val is not None else 0,
           "num_test": len(test) if test is not None else 0, "num_outputs": num_outputs, "loss": loss,
           "learning_rate": config.learning_rate, "effective_batch": config.effective_batch,
           "model_path": str(model_path) if model_path else None,
           "best_checkpoint": best.best_model_path if best is not None and out is not None else None,
           "settings": {**dataclasses.asdict(config), "head_options": built.options},
           "train_loss": list(module.step_losses)}
    if return_model:
        row["model"] = module.model.eval()
    return row


def epoch_means(row: dict) -> list[float]:
    """The per-step training losses of a result row averaged per epoch."""
    losses, size = row["train_loss"], max(1, row["steps_per_epoch"])
    return [float(np.mean(losses[i:i + size])) for i in range(0, len(losses), size)]


__all__ = ["FineTuneConfig", "FineTuneModule", "FineTuneData", "finetune", "load_finetuned", "save_finetuned",
           "build_loss", "build_metrics", "classification_metrics", "segmentation_metrics", "split_validation",
           "optimizer_groups", "set_drop_path", "SampleAugment", "TaskView", "count_outputs", "device_settings",
           "epoch_means", "LOSSES", "METRICS"]
