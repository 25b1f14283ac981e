"""Users' image histories for Pigeon: a table of (user, image) interactions read as sliding windows.

The official Pigeon data (YiyanXu/Pigeon README, "train.npy"): "a sliding window of six interactions, moving one
step at a time ... the first five interactions as the user history images and the last as the target image". Here
the table has one row per interaction: a user column, an image-path column and, optionally, an order column (a
number or a date; without one, the file's row order is the interaction order). Every window of `num_history + 1`
consecutive interactions of a user is one sample: `history` (K, C, H, W) the first K images, `image` the last.
Rows whose image does not exist or that have no user are left out and counted; a user with fewer than K + 1 usable
interactions gives no sample and is counted too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import pandas as pd
import torch
from torch.utils.data import Dataset

from mimkit.core.errors import ConfigError, DataError

from .data import _Images, _key, _report_skipped, _resolve
from .tables import read_table

log = logging.getLogger("mimkit")

PIGEON_NUM_HISTORY = 5  # Pigeon README: windows of six interactions, five of them the history


class PreferenceHistoryDataset(Dataset):
    """Sliding windows over each user's interactions: `history` (K, C, H, W), `image` (the next one), `user`."""

    def __init__(self, table: str | Path, user_column: str = "user", image_column: str = "image",
                 order_column: str | None = None, image_root: str | Path | None = None,
                 num_history: int = PIGEON_NUM_HISTORY, img_size=32, in_chans: int | None = None,
                 transform: str | A.BaseCompose = "eval", crop_scale=(0.2, 1.0), hflip: bool = False, mean=None,
                 std=None, strict: bool = False):
        if int(num_history) < 1:
            raise ConfigError(f"num_history must be at least 1, got {num_history}")
        path = Path(table)
        frame = read_table(path)
        root = Path(image_root) if image_root is not None else path.parent
        for role, column in (("user", user_column), ("image", image_column), ("order", order_column)):
            if column is not None and column not in frame.columns:
                raise ConfigError(f"{path}: no {role} column {column!r}; columns: {', '.join(map(str, frame.columns))}")
        number = (lambda i: f"row {i + 2}") if path.suffix.lower() in (".csv", ".tsv") else (lambda i: f"row {i}")
        skipped, usable = [], []
        for i, (user, image) in enumerate(zip(frame[user_column], frame[image_column])):
            file = _resolve(image, root) if isinstance(image, str) and image.strip() else None
            if user is None or (isinstance(user, float) and pd.isna(user)) or str(user).strip() == "":
                skipped.append((number(i), "no user"))
            elif file is None or not file.is_file():
                skipped.append((number(i), f"image {file or '(empty cell)'} does not exist"))
            else:
                usable.append((str(user), i, file))
        if order_column is not None:
            order = frame[order_column]
            numeric = pd.to_numeric(order, errors="coerce")
            keys = numeric if numeric.notna().any() else pd.to_datetime(order, errors="coerce", format="mixed")
            if keys.isna().any():  # a column of numbers names its first non-number, one of dates its first non-date
                bad = int(keys.isna().to_numpy().nonzero()[0][0])
                raise DataError(f"{path}, {number(bad)}: order column {order_column!r} holds {order[bad]!r}, "
                                f"expected a number or a date in every row")
        sequences: dict[str, list[Path]] = {user: [] for user, _, _ in usable}  # users in the file's order
        for user, _, file in (sorted(usable, key=lambda entry: (keys[entry[1]], entry[1])) if order_column else
                              usable):  # ties keep the file's order
            sequences.setdefault(user, []).append(file)
        self.num_history = int(num_history)
        self.files: list[Path] = []
        self.windows: list[tuple[int, ...]] = []  # indices into self.files: K history images, then the target
        self.users: list[str] = []
        short = []
        for user, files in sequences.items():
            if len(files) <= self.num_history:
                short.append(user)
                continue
            start = len(self.files)
            self.files += files
            for first in range(len(files) - self.num_history):
                self.windows.append(tuple(range(start + first, start + first + self.num_history + 1)))
                self.users.append(user)
        self.skipped = skipped
        self.short_users = short
        _report_skipped(skipped, len(frame), str(path), strict)
        if short:
            log.warning("%s: %d of %d users have %d or fewer usable interactions and give no %d-image window "
                        "(dataset.short_users names them)", path, len(short), len(sequences), self.num_history,
                        self.num_history + 1)
        if not self.windows:
            raise DataError(f"{path}: no user has more than num_history={self.num_history} usable interactions "
                            f"({len(usable)} usable rows, {len(sequences)} users)")
        self.images = _Images(self.files, img_size, in_chans, transform, crop_scale, hflip, mean, std)
        self.in_chans = self.images.in_chans

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def stats(self) -> tuple[list[float], list[float]]:
        return self.images.stats

    def __getitem__(self, key) -> dict:
        index, seed = _key(key)
        *history, target = self.windows[index]
        # each image of the window gets its own augmentation draw
        images = [self.images(self.files[f], seed * (self.num_history + 1) + j) for j, f in enumerate(history)]
        return {"history": torch.stack(images), "image": self.images(self.files[target], seed * (self.num_history + 1)
                                                                     + self.num_history),
                "user": self.users[index], "index": index}


@dataclass
class PreferenceHistoryData:
    """Users' interaction histories for Pigeon (the `data` section of `mimkit-multimodal pretrain --method pigeon`):
    a CSV / JSONL / Parquet table with one row per (user, image) interaction, read as sliding windows.

    Args:
        root: the interaction table
        user_column: the column naming the user
        image_column: the column of image paths (relative to image_root, else to the table's folder)
        order_column: a number or date column giving the interaction order (default: the rows' order)
        image_root: the folder image paths are relative to
        num_history: history images per target (Pigeon README: 5, windows of six interactions)
        augment: random resized crops and flips (off: resize only)
        crop_scale: the crops' area range when augmenting
        mean: per-channel image mean after scaling to [0, 1] (None: measured)
        std: per-channel standard deviation (None: measured)
        strict: stop at the first bad row instead of leaving it out and counting it
    """

    root: str | None = None
    user_column: str = "user"
    image_column: str = "image"
    order_column: str | None = None
    image_root: str | None = None
    num_history: int = PIGEON_NUM_HISTORY
    augment: bool = False
    crop_scale: tuple[float, float] = (0.2, 1.0)
    mean: list[float] | None = None
    std: list[float] | None = None
    strict: bool = False

    def default_method(self) -> str:
        return "pigeon"

    def build(self, model: dict, method: str) -> PreferenceHistoryDataset:
        """The windows at the method's image size; the method must hold `num_history` history slots."""
        from mimkit.core.config import encoder_setting
        from mimkit.core.registry import method_arguments

        if self.root is None:
            raise ConfigError("no data given: pass --data TABLE (one row per user and image: user, image columns)")
        slots = model.get("max_history", method_arguments(method).get("max_history"))
        if slots is not None and int(self.num_history) > int(slots):
            raise ConfigError(f"data.num_history is {self.num_history} but model.max_history is {slots}: "
                              f"raise model.max_history (--set max_history={self.num_history})")
        dataset = PreferenceHistoryDataset(
            self.root, self.user_column, self.image_column, self.order_column, self.image_root, self.num_history,
            img_size=encoder_setting(model, "img_size", method), in_chans=encoder_setting(model, "in_chans"),
            transform="train" if self.augment else "eval", crop_scale=tuple(self.crop_scale), hflip=self.augment,
            mean=self.mean, std=self.std, strict=self.strict)
        self.mean, self.std = dataset.stats
        return dataset


__all__ = ["PreferenceHistoryDataset", "PreferenceHistoryData", "PIGEON_NUM_HISTORY"]
