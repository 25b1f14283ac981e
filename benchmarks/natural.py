"""Natural-image tasks of the core: ImageNet-1K classification, read from a local `train/` + `val/` folder.

These are the tasks MAE's published figures refer to (see `published.py`); the layout is one sub-folder
per class under `train/` and `val/`, as in the MAE and DeiT repositories.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from torch.utils.data import Dataset

from mimkit.core.data import ImageFolderDataset
from mimkit.core.errors import DataError

from .tasks import Task, register_task

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
    def read(root: Path, img_size: int = 224, train_transform="eval", test_transform="eval",
             **dataset_options) -> tuple[Dataset, Dataset]:
        options = {"img_size": img_size, "mean": mean, "std": std, "labelled": True, **dataset_options}
        train = ImageFolderDataset(Path(root) / train_dir, transform=train_transform, **options)
        test = ImageFolderDataset(Path(root) / test_dir, transform=test_transform, **options)
        if train.classes != test.classes:
            raise DataError(f"{root}: the {train_dir}/ and {test_dir}/ folders hold different classes "
                            f"({len(train.classes)} vs {len(test.classes)})")
        return train, test
    return read


for _protocol in ("knn", "linear", "finetune", "partial-finetune"):
    register_task(Task(
        name=f"imagenet1k-{_protocol}", domain="core", dataset="ImageNet-1K", protocol=_protocol, metric="top1",
        reader=image_folder_reader(),
        description=f"ImageNet-1K classification, {_protocol} protocol, top-1 accuracy (%) on the 50,000 "
                    "validation images; data: a local folder with train/ and val/ class sub-folders"))
