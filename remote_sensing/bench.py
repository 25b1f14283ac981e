"""Remote-sensing fine-tuning benchmarks, registered with mimkit.benchmarks: EuroSAT, BigEarthNet, So2Sat, GeoTIFF
class folders and GeoTIFF segmentation, plus the segmentation protocol (a head over the encoder's patch tokens).

Every task reads a local copy of its public dataset (never a download): EuroSAT, BigEarthNet and So2Sat through
torchgeo in its layouts (`mimkit.remote_sensing.data`), the GeoTIFF tasks from folders (`root/train/<class>/*.tif`,
`root/test/<class>/*.tif`; `root/{train,test}/{images,masks}/*.tif`). `mimkit.remote_sensing.synthetic` writes
all of these layouts from spectral signatures, for tests and the demo. Values are percentages, as papers print.

    task = get_task("eurosat-linear")
    row = evaluate_task("eurosat-linear", encoder, "data/eurosat")   # {"task", "metric", "value", ...}
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mimkit.benchmarks.tasks import Task, get_task, register_task
from mimkit.core.errors import ConfigError, DataError, TrainingError
from mimkit.core.tokens import unpatchify

from . import published  # noqa: F401  (registers the remote-sensing papers' published figures)
from .data import IGNORE_INDEX, GeoTiffDataset, bigearthnet, eurosat, so2sat

SEGMENTATION_HEADS = ("linear", "conv")


# ---------------------------------------------------------------------------------------------- readers
def _pair(train: Dataset, test: Dataset, root: Path) -> tuple[Dataset, Dataset]:
    if getattr(train, "classes", None) and getattr(test, "classes", None) and train.classes != test.classes:
        raise DataError(f"{root}: the training and test data hold different classes "
                        f"({len(train.classes)} vs {len(test.classes)})")
    return train, test


def eurosat_reader(root: Path, img_size=64, bands: Sequence[str] | None = None, train_split: str = "train",
                   test_split: str = "test", train_transform="eval", **options) -> tuple[Dataset, Dataset]:
    """EuroSAT train/test through torchgeo; the test split is normalised with the training split's statistics."""
    train = eurosat(root, train_split, bands, img_size, transform=train_transform, **options)
    test = eurosat(root, test_split, bands, img_size, transform="eval", mean=train.mean, std=train.std)
    return _pair(train, test, root)


def bigearthnet_reader(root: Path, img_size=120, num_classes: int = 19, train_split: str = "train",
                       test_split: str = "test", train_transform="eval", **options) -> tuple[Dataset, Dataset]:
    """BigEarthNet v1 Sentinel-2 train/test (multi-label) through torchgeo."""
    train = bigearthnet(root, train_split, num_classes, img_size, transform=train_transform, **options)
    test = bigearthnet(root, test_split, num_classes, img_size, transform="eval", mean=train.mean, std=train.std)
    return train, test


def so2sat_reader(root: Path, img_size=32, version: str = "2", bands: Sequence[str] | None = None,
                  train_split: str = "train", test_split: str = "test", train_transform="eval",
                  **options) -> tuple[Dataset, Dataset]:
    """So2Sat LCZ42 train/test through torchgeo (h5 files; needs h5py)."""
    train = so2sat(root, train_split, version, bands, img_size, transform=train_transform, **options)
    test = so2sat(root, test_split, version, bands, img_size, transform="eval", mean=train.mean, std=train.std)
    return _pair(train, test, root)


def tiles_reader(root: Path, img_size=64, patch_size=8, sensor: str = "sentinel2", bands=None,
                 scale: float | None = 1e-4, train_dir: str = "train", test_dir: str = "test", train_transform="eval",
                 **options) -> tuple[Dataset, Dataset]:
    """GeoTIFF class folders: ROOT/train/<class>/*.tif and ROOT/test/<class>/*.tif."""
    common = dict(img_size=img_size, patch_size=patch_size, sensor=sensor, bands=bands, scale=scale, labelled=True,
                  **options)
    train = GeoTiffDataset(Path(root) / train_dir, transform=train_transform, **common)
    test = GeoTiffDataset(Path(root) / test_dir, transform="eval", mean=train.mean, std=train.std,
                          **{k: v for k, v in common.items() if k not in ("mean", "std")})
    return _pair(train, test, root)


def segmentation_reader(root: Path, img_size=64, patch_size=8, sensor: str = "sentinel2", bands=None,
                        scale: float | None = 1e-4, train_dir: str = "train", test_dir: str = "test",
                        **options) -> tuple[Dataset, Dataset]:
    """GeoTIFF image/mask pairs: ROOT/<split>/images/*.tif with ROOT/<split>/masks/*.tif (class per pixel, 255 =
    nodata); ROOT/classes.json, if present, names the classes."""
    root = Path(root)
    common = dict(img_size=img_size, patch_size=patch_size, sensor=sensor, bands=bands, scale=scale, labelled=False,
                  transform="eval", **options)
    train = GeoTiffDataset(root / train_dir / "images", mask_root=root / train_dir / "masks", **common)
    test = GeoTiffDataset(root / test_dir / "images", mask_root=root / test_dir / "masks", mean=train.mean,
                          std=train.std, **{k: v for k, v in common.items() if k not in ("mean", "std")})
    names = root / "classes.json"
    if names.is_file():
        train.classes = test.classes = json.loads(names.read_text())
    return train, test


# ---------------------------------------------------------------------------------------------- segmentation
class SegmentationModel(nn.Module):
    """Per-pixel class logits from an encoder's patch tokens.

    head="linear": each token predicts the classes of every pixel of its patch with one linear map (SETR-naive /
    Segmenter's linear decoder); head="conv": a 1x1 projection, bilinear upsampling to the image and two
    convolutions, a light stand-in for UPerNet that sees neighbouring patches.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, head: str = "linear", hidden: int = 64):
        super().__init__()
        if head not in SEGMENTATION_HEADS:
            raise ConfigError(f"segmentation head must be one of {', '.join(SEGMENTATION_HEADS)}, got {head!r}")
        if len(tuple(encoder.grid)) != 2:
            raise ConfigError("segmentation needs a 2D encoder")
        self.encoder, self.head_name, self.num_classes = encoder, head, num_classes
        self.grid, self.patch = tuple(encoder.grid), tuple(encoder.patch_size)
        dim = encoder.embed_dim
        if head == "linear":
            self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes * math.prod(self.patch)))
        else:
            self.head = nn.ModuleDict({
                "project": nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU()),
                "refine": nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                                        nn.Conv2d(hidden, num_classes, 1))})

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) without the class / memory tokens."""
        features = self.encoder.forward_features(images)
        tokens = features[:, self.encoder.num_prefix_tokens:]
        if tokens.shape[1] != math.prod(self.grid):
            raise ConfigError(f"the encoder gives {tokens.shape[1]} patch tokens for a {self.grid} grid (one token "
                              f"per channel and patch?); segmentation needs one token per patch")
        return tokens

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) -> logits (B, classes, H, W)."""
        if self.head_name == "linear":
            return unpatchify(self.head(tokens), self.patch, self.grid, self.num_classes)
        maps = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)
        maps = self.head["project"](maps)
        size = (self.grid[0] * self.patch[0], self.grid[1] * self.patch[1])
        return self.head["refine"](nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.tokens(images))


def segmentation_metrics(confusion: np.ndarray) -> dict:
    """Pixel accuracy, per-class IoU and mean IoU (over classes present in the labels or the predictions)."""
    confusion = np.asarray(confusion, np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    iou = np.where(present, true_positive / np.maximum(union, 1), np.nan)
    return {"pixel_accuracy": float(true_positive.sum() / max(confusion.sum(), 1)),
            "miou": float(np.nanmean(iou)) if present.any() else 0.0,
            "iou_per_class": [None if np.isnan(v) else round(float(v), 4) for v in iou],
            "num_pixels": int(confusion.sum())}


def _segmentation_batches(data, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    def collate(items):
        for item in items:
            if "mask" not in item:
                raise DataError("segmentation needs samples with a 'mask' (read with mask_root / the "
                                "segmentation task)")
        return torch.stack([i["image"] for i in items]), torch.stack([torch.as_tensor(i["mask"]) for i in items])

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)


def _num_classes(train_set, test_set) -> int:
    classes = getattr(train_set, "classes", None)
    if classes:
        return len(classes)
    top = max(int(torch.as_tensor(d[i]["mask"]).max()) for d in (train_set, test_set) for i in range(len(d)))
    if top < 0:
        raise DataError("every mask pixel is nodata: nothing to learn or score")
    return top + 1


def segmentation_evaluate(encoder: nn.Module, train_set, test_set, *, num_classes: int | None = None,
                          head: str = "linear", epochs: int = 30, lr: float = 1e-3, weight_decay: float = 1e-4,
                          batch_size: int = 16, finetune_encoder: bool = False, seed: int = 0, device=None,
                          return_model: bool = False) -> dict:
    """Train a segmentation head over the encoder's patch tokens (frozen encoder by default: tokens are computed
    once) with cross-entropy that ignores nodata pixels, then score mean IoU and pixel accuracy on `test_set`."""
    import copy

    from mimkit.core.evaluate import default_device

    device = default_device(device)
    num_classes = num_classes or _num_classes(train_set, test_set)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = SegmentationModel(copy.deepcopy(encoder), num_classes, head).to(device)
    torch.random.set_rng_state(generator_state)
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    parameters = model.parameters() if finetune_encoder else model.head.parameters()
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs))
    history = []
    if not finetune_encoder:  # a frozen encoder: its tokens never change, so compute them once
        model.encoder.eval().requires_grad_(False)
        with torch.no_grad():
            cached = [(model.tokens(x.to(device)), y.to(device))
                      for x, y in _segmentation_batches(train_set, batch_size, False, seed)]
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        if not finetune_encoder:
            model.encoder.eval()
            batches = [cached[i] for i in torch.randperm(len(cached), generator=order).tolist()]
        else:
            batches = _segmentation_batches(train_set, batch_size, True, seed + epoch)
        total = 0.0
        for inputs, masks in batches:
            inputs, masks = inputs.to(device), masks.to(device)
            logits = model(inputs) if finetune_encoder else model.decode(inputs)
            loss = loss_fn(logits, masks)
            if not torch.isfinite(loss):
                raise TrainingError(f"segmentation loss became {loss.item()} at epoch {epoch} (all pixels nodata, "
                                    f"or lower lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        schedule.step()
        history.append(total / max(1, len(batches)))
    model.eval()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    with torch.no_grad():
        for images, masks in _segmentation_batches(test_set, batch_size, False, seed):
            predicted = model(images.to(device)).argmax(1).cpu()
            keep = masks != IGNORE_INDEX
            if (masks[keep] >= num_classes).any():
                raise DataError(f"a test mask holds class {int(masks[keep].max())}, beyond the {num_classes} classes")
            confusion += np.bincount(masks[keep].numpy() * num_classes + predicted[keep].numpy(),
                                     minlength=num_classes ** 2).reshape(num_classes, num_classes)
    result = {"protocol": "segmentation", "head": head, "epochs": epochs, "finetune_encoder": finetune_encoder,
              "num_train": len(train_set), "train_loss": history, **segmentation_metrics(confusion)}
    if return_model:
        result["model"] = model
    return result


# ---------------------------------------------------------------------------------------------- tasks
# The value of a task's metric in a protocol's result dict, as a percentage.
METRIC_KEYS = {"accuracy": "accuracy", "map": "average_precision_macro", "auroc": "auc_macro", "miou": "miou"}


def check_encoder_fits(encoder: nn.Module, dataset) -> None:
    """The encoder must read the task's bands: the same count, and the same wavelengths when it knows its own."""
    bands = getattr(dataset, "band_names", None) or []
    if getattr(dataset, "in_chans", encoder.in_chans) != encoder.in_chans:
        raise ConfigError(f"the encoder reads {encoder.in_chans} channel(s) but the task's data has {dataset.in_chans} "
                          f"band(s) ({', '.join(bands)}); choose the bands the encoder was pretrained on (--bands), "
                          f"or adapt a checkpoint's patch embedding (--adapt-in-chans)")
    own = getattr(encoder, "band_wavelengths", None)
    data = getattr(dataset, "wavelengths", None)
    if own is not None and data is not None and not torch.allclose(own.float().cpu(), data.float(), atol=1.0):
        raise ConfigError(f"the spectrum-aware encoder's bands are at {own.tolist()} nm but the task's data has bands "
                          f"at {data.tolist()} nm ({', '.join(bands)}); select the same bands in the same order")


def load_task(name: str, root: str | Path, img_size, patch_size, **reader_options) -> tuple[Task, Dataset, Dataset]:
    """A registered task and its (train, test) datasets at the given image (and, for GeoTIFF tasks, patch) size."""
    task = get_task(name)
    options = {"img_size": img_size, **reader_options}
    if task.reader in (tiles_reader, segmentation_reader):
        options.setdefault("patch_size", patch_size)
    train_set, test_set = task.load(root, **options)
    return task, train_set, test_set


def evaluate_task(name: str, encoder: nn.Module, root: str | Path, reader_options: dict | None = None,
                  labels_per_class: int | None = None, **protocol_options: Any) -> dict:
    """Load a registered remote-sensing task's data at the encoder's image size and run its protocol: a result row
    {"task", "data", "protocol", "metric", "value" (percent), "num_train", ...} plus the protocol's details.
    `labels_per_class` trains on a seeded, stratified subset of the training split."""
    task, train_set, test_set = load_task(name, root, tuple(encoder.img_size), tuple(encoder.patch_size),
                                          **(reader_options or {}))
    return run_task(task, encoder, train_set, test_set, labels_per_class, **protocol_options)


def run_task(task: Task, encoder: nn.Module, train_set, test_set, labels_per_class: int | None = None,
             **protocol_options: Any) -> dict:
    """Run a task's protocol on loaded data (see `evaluate_task`)."""
    from mimkit.core.cli import few_labels
    from mimkit.core.evaluate import evaluate

    name = task.name
    check_encoder_fits(encoder, train_set)
    if labels_per_class:
        if task.protocol == "segmentation" or getattr(train_set, "multilabel", False):
            raise ConfigError(f"--labels-per-class needs single-label classification; task {name} is not")
        skipped_train = train_set
        train_set = few_labels(train_set, labels_per_class, protocol_options.get("seed", 0))
        train_set.skipped = getattr(skipped_train, "skipped", [])
    if task.protocol == "segmentation":
        result = segmentation_evaluate(encoder, train_set, test_set, **protocol_options)
    else:
        result = evaluate(encoder, task.protocol, train_set, test_set, **protocol_options)
    value = result.get(METRIC_KEYS[task.metric])
    if value is None:
        raise DataError(f"task {name}: the {task.protocol} result has no {task.metric} "
                        f"(multi-label classes with a single label value are skipped; more test samples?)")
    skipped = len(getattr(train_set, "skipped", ())) + len(getattr(test_set, "skipped", ()))
    details = {k: v for k, v in result.items() if k not in ("model", "train_loss", "iou_per_class")}
    row = {"task": name, "data": task.dataset, "protocol": task.protocol, "metric": task.metric,
           "value": round(100 * float(value), 2), "num_train": len(train_set), "num_test": len(test_set),
           "skipped_files": skipped, "details": details}
    if "model" in result:  # return_model=True: the fine-tuned model (not JSON; the caller saves it)
        row["trained_model"] = result["model"]
    return row


def _register(name: str, dataset: str, protocol: str, metric: str, reader, description: str) -> None:
    register_task(Task(name=name, domain="remote_sensing", dataset=dataset, protocol=protocol, metric=metric,
                       reader=reader, description=description))


for _protocol in ("knn", "linear", "finetune"):
    _register(f"eurosat-{_protocol}", "EuroSAT", _protocol, "accuracy", eurosat_reader,
              f"EuroSAT land-cover classification (Sentinel-2, 13 bands, 10 classes), {_protocol}, overall accuracy "
              f"(%) on torchgeo's test split; data: a local copy in torchgeo's EuroSAT layout")
    _register(f"geotiff-tiles-{_protocol}", "GeoTIFF tiles", _protocol, "accuracy", tiles_reader,
              f"classification of GeoTIFF tiles in ROOT/train/<class> and ROOT/test/<class>, {_protocol}, overall "
              f"accuracy (%)")
for _protocol in ("linear", "finetune"):
    _register(f"bigearthnet-{_protocol}", "BigEarthNet", _protocol, "map", bigearthnet_reader,
              f"BigEarthNet v1 Sentinel-2 multi-label classification (19 classes), {_protocol}, macro mean average "
              f"precision (%); data: a local copy in torchgeo's BigEarthNet layout")
    _register(f"so2sat-{_protocol}", "So2Sat LCZ42", _protocol, "accuracy", so2sat_reader,
              f"So2Sat LCZ42 local-climate-zone classification (8 Sentinel-1 + 10 Sentinel-2 channels, 17 classes), "
              f"{_protocol}, overall accuracy (%); data: the h5 files (needs h5py)")
_register("geotiff-segmentation", "GeoTIFF segmentation", "segmentation", "miou", segmentation_reader,
          "semantic segmentation of GeoTIFF image/mask pairs (ROOT/{train,test}/{images,masks}), a head over the "
          "frozen encoder's patch tokens, mean IoU (%)")

__all__ = ["SegmentationModel", "segmentation_evaluate", "segmentation_metrics", "evaluate_task", "load_task",
           "run_task", "eurosat_reader",
           "bigearthnet_reader", "so2sat_reader", "tiles_reader", "segmentation_reader", "check_encoder_fits"]
