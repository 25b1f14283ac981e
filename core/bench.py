"""Core's benchmark tasks (natural images), registered with mimkit.benchmarks on import: ImageNet-1K
classification read from a local `train/` + `val/` folder.

These are the tasks MAE's published figures refer to (core/published.py, registered on import); the layout is one
sub-folder per class under `train/` and `val/`, as in the MAE and DeiT repositories.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from torch import nn
from torch.utils.data import Dataset

from mimkit.benchmarks.tasks import Task, register_task

from . import published  # noqa: F401  (registers the core papers' published figures)
from .data import ImageFolderDataset, eval_transform
from .errors import DataError

# ImageNet channel statistics on the [0, 1] scale, used by MAE's data pipeline.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_folder_reader(train_dir: str = "train", test_dir: str = "val",
                        mean: Sequence[float] | None = IMAGENET_MEAN,
                        std: Sequence[float] | None = IMAGENET_STD) -> Callable[..., tuple[Dataset, Dataset]]:
    """A reader for `root/<train_dir>/<class>/*` and `root/<test_dir>/<class>/*` image folders.

    The returned `read(root, img_size=224, train_transform="eval", test_transform="eval", **dataset_options)`
    builds two labelled `ImageFolderDataset`s; the transforms are ImageFolderDataset's names or
    albumentations pipelines (a protocol that augments, like fine-tuning, passes its own).
    """
    def read(root: Path, img_size=224, train_transform="eval", test_transform="eval",
             **dataset_options) -> tuple[Dataset, Dataset]:
        options = {"img_size": img_size, "mean": mean, "std": std, "labelled": True, **dataset_options}
        train = ImageFolderDataset(Path(root) / train_dir, transform=train_transform, **options)
        test = ImageFolderDataset(Path(root) / test_dir, transform=test_transform, **options)
        if train.classes != test.classes:
            raise DataError(f"{root}: the {train_dir}/ and {test_dir}/ folders hold different classes "
                            f"({len(train.classes)} vs {len(test.classes)})")
        return train, test
    return read


def fit_encoder(augment: bool) -> Callable[[nn.Module, dict], dict]:
    """A task's `prepare`: images at the encoder's size and channels, normalised with the pretraining run's
    mean/std when the run recorded them (else ImageNet's) and centre-cropped with the run's crop_pct (else
    MAE's 224/256); `augment` gives the training split MAE's random resized crops and flips (fine-tuning)."""
    def prepare(encoder: nn.Module, run_config: dict | None) -> dict:
        data = dict((run_config or {}).get("data") or {})
        img_size = tuple(encoder.img_size)
        crop = {"crop_pct": data["crop_pct"]} if data.get("crop_pct") else {}
        options = {"img_size": img_size, "patch_size": tuple(encoder.patch_size), "in_chans": encoder.in_chans,
                   "train_transform": "train" if augment else eval_transform(img_size, **crop),
                   "test_transform": eval_transform(img_size, **crop)}
        if data.get("mean") is not None and data.get("std") is not None:
            options.update(mean=data["mean"], std=data["std"])
        elif encoder.in_chans != 3:  # images read as grey (or repeated): ImageNet's statistics averaged over RGB
            options.update(mean=(sum(IMAGENET_MEAN) / 3,) * encoder.in_chans,
                           std=(sum(IMAGENET_STD) / 3,) * encoder.in_chans)
        return options
    return prepare


for _protocol in ("knn", "linear", "finetune", "partial-finetune"):
    register_task(Task(
        name=f"imagenet1k-{_protocol}", domain="core", dataset="ImageNet-1K", protocol=_protocol, metric="top1",
        reader=image_folder_reader(), prepare=fit_encoder(augment=_protocol.endswith("finetune")),
        metric_key="accuracy",
        description=f"ImageNet-1K classification, {_protocol} protocol, top-1 accuracy (%) on the 50,000 "
                    "validation images; data: a local folder with train/ and val/ class sub-folders"))

__all__ = ["image_folder_reader", "fit_encoder", "IMAGENET_MEAN", "IMAGENET_STD"]
