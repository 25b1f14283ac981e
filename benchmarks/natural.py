"""Natural-image tasks of the core: ImageNet-1K classification, read from a local `train/` + `val/` folder.

These are the tasks MAE's published figures refer to (see `published.py`); the data layout is the one
torchvision's `ImageFolder` reads (one sub-folder per class), as in the MAE and DeiT repositories.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from mimkit.core.errors import DataError

from .tasks import Task, register_task

# ImageNet channel statistics, used by MAE's data pipeline.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def evaluation_transform(img_size: int = 224) -> Callable:
    """Resize to img_size * 256/224 (bicubic), centre-crop img_size, normalise: MAE's evaluation transform."""
    return transforms.Compose([
        transforms.Resize(int(img_size * 256 / 224), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class LabelledImageFolder(Dataset):
    """A class-per-folder image set whose samples are mimkit batch dicts: {"image", "label"}."""

    def __init__(self, root: Path, transform: Callable):
        if not root.is_dir():
            raise DataError(f"expected the image folder {str(root)!r} (one sub-folder per class); it does not exist")
        try:
            self.folder = datasets.ImageFolder(str(root), transform=transform)
        except (FileNotFoundError, RuntimeError) as error:
            raise DataError(f"cannot read images from {str(root)!r}: {error}") from None
        self.classes = self.folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict:
        image, label = self.folder[index]
        return {"image": image, "label": label}


def image_folder_reader(train_dir: str = "train", test_dir: str = "val") -> Callable[..., tuple[Dataset, Dataset]]:
    """A reader for `root/<train_dir>/<class>/*` and `root/<test_dir>/<class>/*` image folders."""
    def read(root: Path, img_size: int = 224, train_transform: Callable | None = None,
             test_transform: Callable | None = None) -> tuple[Dataset, Dataset]:
        default = evaluation_transform(img_size)
        train = LabelledImageFolder(Path(root) / train_dir, train_transform or default)
        test = LabelledImageFolder(Path(root) / test_dir, test_transform or default)
        if train.classes != test.classes:
            raise DataError(f"{str(root)!r}: the {train_dir}/ and {test_dir}/ folders hold different classes "
                            f"({len(train.classes)} vs {len(test.classes)})")
        return train, test
    return read


for _protocol in ("knn", "linear", "finetune", "partial-finetune"):
    register_task(Task(
        name=f"imagenet1k-{_protocol}", domain="core", dataset="ImageNet-1K", protocol=_protocol, metric="top1",
        reader=image_folder_reader(),
        description=f"ImageNet-1K classification, {_protocol} protocol, top-1 accuracy (%) on the 50,000 "
                    "validation images; data: a local folder with train/ and val/ class sub-folders"))
