"""Data the project writes for its demo and tests, from real pixels a package ships.

scikit-learn ships 1,797 real 8x8 scans of handwritten digits (UCI optical digits, `sklearn/datasets/data/
digits.csv.gz`); `write_digits` writes them as PNG folders in the layout a user's own data takes.
`write_objects` writes scikit-image photographs with real objects pasted at known boxes and pinhole distances
(core.objects.pasted_objects) in the KITTI layout, for the methods that need boxes (mom).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

TEST_FRACTION = 0.3  # the demo's held-out share, stratified by digit


def write_digits(root: str | Path, size: int = 32, seed: int = 0) -> dict[str, Path]:
    """Write sklearn's digits as PNGs: pretrain/ (flat, unlabelled), train/<digit>/, test/<digit>/."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root)
    digits = load_digits()
    images = (digits.images / 16.0 * 255).round().astype(np.uint8)
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(index, test_size=TEST_FRACTION, stratify=digits.target, random_state=seed)
    folders = {"pretrain": root / "pretrain", "train": root / "train", "test": root / "test"}
    if all(f.exists() for f in folders.values()):
        return folders

    def save(i: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).resize((size, size), Image.BICUBIC).save(folder / f"digit_{i:04d}.png")

    for i in train_idx:
        save(i, folders["pretrain"])          # the same images, without labels: MAE needs none
        save(i, folders["train"] / str(digits.target[i]))
    for i in test_idx:
        save(i, folders["test"] / str(digits.target[i]))
    return folders


def write_objects(root: str | Path, train: int = 1000, test: int = 300, size: int = 64, seed: int = 0
                  ) -> dict[str, Path]:
    """Write the pasted-object set as KITTI-layout folders train/ and test/ (image_2/*.png, label_2/*.txt).

    Backgrounds: crops of scikit-image's `coffee`, `rocket`, `hubble_deep_field`; objects: its `chelsea` and the
    `astronaut`'s upper body; distance = `size` x 1 / box height (a pinhole camera). The two splits draw from
    different seeds; a folder already written with its count of images is kept.
    """
    from .objects import write_pasted_kitti

    root = Path(root)
    folders = {}
    for offset, (split, count) in enumerate((("train", train), ("test", test))):
        folder = root / split
        if len(list((folder / "image_2").glob("*.png"))) != count or len(list((folder / "label_2").glob("*.txt"))) \
                != count:
            write_pasted_kitti(folder, count, size, seed=seed * 2 + offset)
        folders[split] = folder
    return folders


__all__ = ["write_digits", "write_objects", "TEST_FRACTION"]
