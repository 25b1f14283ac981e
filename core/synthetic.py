"""Data the project writes for its demo and tests, from real pixels a package ships.

scikit-learn ships 1,797 real 8x8 scans of handwritten digits (UCI optical digits, `sklearn/datasets/data/
digits.csv.gz`); `write_digits` writes them as PNG folders in the layout a user's own data takes.
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


__all__ = ["write_digits", "TEST_FRACTION"]
