"""Multimodal data: image + table (CSV / Parquet), image + text (captions, reports) and medical VQA.

Batches are dicts (DESIGN.md): `image` (B, C, H, W) normalised per channel; `tabular` (B, columns) float, the
categorical columns' category indices first and the standardised continuous columns after them, with
`tabular_missing` (B, columns) bool, True where a cell is missing; `text` a list of strings (a caption, a report
or a question); `label` a class index; VQA adds `answer` (text) and `answer_type` ("open" / "closed").

Layouts read:
- image + table: any CSV / TSV / JSONL / Parquet with an image-path column (`tables.py` fits the preprocessing);
- ROCO (`name`, `caption` columns of its traindata.csv-style files), MedICaT (JSONL `fig_uri`, `s2_caption`),
  MIMIC-CXR and IU X-ray in R2Gen's `annotation.json` ({split: [{"image_path": [...], "report": ...}]}), or
  any CSV / JSONL with named image and text columns;
- VQA-RAD (`VQA_RAD Dataset Public.json`: image_name, question, answer, answer_type) and SLAKE (train.json /
  validate.json / test.json: img_name, question, answer, answer_type, q_lang).
Rows that cannot be used (an image file that does not exist, a value of the wrong type, no label) are left
out, named in `dataset.skipped` and counted in the log; `strict=True` stops at the first instead.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mimkit.core.data import (ChannelStats, eval_transform, mae_train_transform, normalisation_stats, read_image,
                              to_unit_range)
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.tokens import as_tuple

from .tables import TablePreprocessor, read_table

log = logging.getLogger("mimkit")

# TIP's image augmentation for natural images (DVM): RandomResizedCrop scale (0.08, 1) and horizontal flips
TIP_CROP_SCALE = (0.08, 1.0)
MISSING_PATTERNS = ("value", "feature", "most_important", "least_important")


# ============================================================================================ images
class _Images:
    """Reads, converts to `in_chans`, augments and normalises images; measures mean/std when not given."""

    def __init__(self, files: Sequence[Path], img_size, in_chans: int | None, transform: str | A.BaseCompose,
                 crop_scale=(0.2, 1.0), hflip: bool = True, mean=None, std=None, stats_images: int = 256):
        self.img_size = as_tuple(img_size, 2, "img_size")
        if isinstance(transform, str):
            if transform not in ("train", "eval"):
                raise ConfigError(f"transform must be train or eval, got {transform!r}")
            transform = (mae_train_transform(self.img_size, scale=crop_scale, hflip=hflip) if transform == "train"
                         else eval_transform(self.img_size, crop_pct=1.0))
        self.transform = transform
        self.in_chans = in_chans or (read_image(files[0]).shape[0] if files else 3)
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std, or neither (then they are measured on the images)")
        if mean is None:
            stats = ChannelStats(self.in_chans)
            picks = np.unique(np.linspace(0, len(files) - 1, min(stats_images, len(files))).round().astype(int))
            for i in picks:
                stats.add(self.read(files[i]))
            mean, std = stats.result()
        self.mean, self.std = normalisation_stats(mean, std, self.in_chans)

    def read(self, path: Path) -> np.ndarray:
        image = to_unit_range(read_image(path))
        if image.shape[0] != self.in_chans:
            if image.shape[0] == 1:
                image = np.repeat(image, self.in_chans, 0)
            elif self.in_chans == 1:
                image = image[:3].mean(0, keepdims=True)
            elif image.shape[0] == 4 and self.in_chans == 3:
                image = image[:3]
            else:
                raise DataError(f"{path}: {image.shape[0]} channels cannot be read as in_chans={self.in_chans}")
        return image

    def __call__(self, path: Path, seed: int) -> torch.Tensor:
        image = self.read(path)
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        array = self.transform(image=np.ascontiguousarray(image.transpose(1, 2, 0)))["image"]
        if array.ndim == 2:
            array = array[..., None]
        array = (array - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), np.float32))

    @property
    def stats(self) -> tuple[list[float], list[float]]:
        return [float(v) for v in self.mean], [float(v) for v in self.std]


def _key(key) -> tuple[int, int]:
    """(index, augmentation seed) from `dataset[i]` or the ResumableSampler's `dataset[(i, seed)]`."""
    return (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))


def _resolve(path, root: Path) -> Path:
    path = Path(str(path))
    return path if path.is_absolute() else root / path


def _report_skipped(skipped: list[tuple[str, str]], total: int, what: str, strict: bool) -> None:
    if skipped and strict:
        raise DataError(f"{what}: {skipped[0][0]}: {skipped[0][1]} (strict: stopping at the first bad row)")
    if skipped:
        log.warning("%s: left out %d of %d rows (dataset.skipped names them); first: %s: %s", what, len(skipped),
                    total, *skipped[0])


# ============================================================================================ image + table
class ImageTableDataset(Dataset):
    """Images with a table row each: `image`, `tabular`, `tabular_missing` and, with a target, `label`.

    The preprocessing is fitted on this table unless one is given (the training set's, at evaluation and
    inference). `missing` adds cells to treat as missing (a downstream missing-data pattern, `missing_mask`).
    """

    def __init__(self, table: str | Path | pd.DataFrame, image_column: str = "image",
                 image_root: str | Path | None = None,
                 preprocessor: TablePreprocessor | None = None, target: str | None = None,
                 features: Sequence[str] | None = None, exclude: Sequence[str] = (), categorical: Sequence[str] = (),
                 continuous: Sequence[str] = (), img_size=32, in_chans: int | None = None,
                 transform: str | A.BaseCompose = "eval", crop_scale=TIP_CROP_SCALE, hflip: bool = True,
                 mean=None, std=None, strict: bool = False, labelled: bool | None = None):
        source = Path(table) if not isinstance(table, pd.DataFrame) else None
        frame = read_table(source) if source is not None else table.reset_index(drop=True)
        self.source = str(source) if source is not None else "a DataFrame"
        root = Path(image_root) if image_root is not None else (source.parent if source is not None else Path("."))
        if image_column not in frame.columns:
            raise ConfigError(f"{self.source}: no image column {image_column!r}; columns: "
                              f"{', '.join(map(str, frame.columns))}")
        if preprocessor is None:
            preprocessor = TablePreprocessor.fit(frame, features, target=target,
                                                 exclude=[image_column, *exclude], categorical=categorical,
                                                 continuous=continuous)
        self.preprocessor = preprocessor
        values, missing, bad = preprocessor.transform(frame)
        labelled = preprocessor.target is not None if labelled is None else labelled
        skipped: dict[int, str] = dict(bad)
        files = [_resolve(p, root) if isinstance(p, str) and p.strip() else None for p in frame[image_column]]
        for i, path in enumerate(files):
            if path is None or not path.is_file():
                skipped.setdefault(i, f"image {path or '(empty cell)'} does not exist")
        labels = []
        if labelled:
            if preprocessor.target not in frame.columns:
                raise ConfigError(f"{self.source}: no target column {preprocessor.target!r}")
            for i, value in enumerate(frame[preprocessor.target]):
                label = preprocessor.label(value)
                labels.append(label if label is not None else -1)
                if label is None:
                    skipped.setdefault(i, f"target {value!r} is missing or not one of the classes "
                                          f"{preprocessor.classes}")
        self.skipped = [(f"row {i + 2}" if source is not None and source.suffix in (".csv", ".tsv") else f"row {i}",
                         reason) for i, reason in sorted(skipped.items())]
        _report_skipped(self.skipped, len(frame), self.source, strict)
        keep = np.array([i for i in range(len(frame)) if i not in skipped], int)
        if not len(keep):
            raise DataError(f"{self.source}: none of its {len(frame)} rows can be used; first: {self.skipped[0][1]}")
        self.files = [files[i] for i in keep]
        self.values = torch.from_numpy(values[keep])
        self.missing = torch.from_numpy(missing[keep])
        self.targets = [labels[i] for i in keep] if labelled else []
        self.classes = list(preprocessor.classes) if labelled else []
        self.images = _Images(self.files, img_size, in_chans, transform, crop_scale, hflip, mean, std)
        self.in_chans = self.images.in_chans
        self.extra_missing: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def stats(self) -> tuple[list[float], list[float]]:
        return self.images.stats

    def with_missing(self, mask: np.ndarray | torch.Tensor | None) -> "ImageTableDataset":
        """A shallow copy in which the cells of `mask` (N, columns) are missing as well."""
        import copy

        view = copy.copy(self)
        if mask is not None:
            mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
            if tuple(mask.shape) != tuple(self.missing.shape):
                raise ConfigError(f"missing mask of shape {tuple(mask.shape)}; the table is "
                                  f"{tuple(self.missing.shape)}")
        view.extra_missing = mask
        return view

    def __getitem__(self, key) -> dict:
        index, seed = _key(key)
        missing = self.missing[index]
        if self.extra_missing is not None:
            missing = missing | self.extra_missing[index]
        sample = {"image": self.images(self.files[index], seed), "tabular": self.values[index].clone(),
                  "tabular_missing": missing.clone(), "index": index}
        if self.targets:
            sample["label"] = self.targets[index]
        return sample


def feature_importance(values: np.ndarray, missing: np.ndarray, labels: Sequence[int], seed: int = 0) -> np.ndarray:
    """Each column's importance for the labels: a random forest's impurity importance, as TIP ranks features for
    its most- and least-important missing patterns (missing cells read as 0)."""
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    forest.fit(np.where(missing, 0.0, values), np.asarray(labels))
    return forest.feature_importances_


def missing_mask(shape: tuple[int, int], pattern: str, rate: float, seed: int = 0,
                 importance: np.ndarray | None = None) -> np.ndarray:
    """Cells to hide, TIP's missing-data patterns: `value` (int(rate x cells) random cells), `feature`
    (int(rate x columns) random columns in every row), `most_important` / `least_important` (the first
    int(rate x columns) columns by `importance`, highest or lowest first)."""
    if pattern not in MISSING_PATTERNS:
        raise ConfigError(f"missing pattern must be one of {', '.join(MISSING_PATTERNS)}, got {pattern!r}")
    if not 0 <= rate <= 1:
        raise ConfigError(f"missing rate must be in [0, 1], got {rate}")
    rows, columns = shape
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    if pattern == "value":
        mask.reshape(-1)[rng.choice(rows * columns, int(rows * columns * rate), replace=False)] = True
        return mask
    count = int(columns * rate)
    if pattern == "feature":
        picked = rng.choice(columns, count, replace=False)
    else:
        if importance is None or len(importance) != columns:
            raise ConfigError(f"the {pattern} pattern needs one importance per column ({columns})")
        order = np.argsort(importance, kind="stable")
        picked = (order[::-1] if pattern == "most_important" else order)[:count]
    mask[:, picked] = True
    return mask


# ============================================================================================ image + text
# layout -> (image key, text key); R2Gen's annotation.json for MIMIC-CXR and IU X-ray has its own reader
TEXT_LAYOUTS = {"roco": ("name", "caption"), "medicat": ("fig_uri", "s2_caption"), "csv": ("image", "text")}
ANNOTATION_LAYOUTS = ("mimic-cxr", "iu-xray")


def _records(path: Path) -> list[dict]:
    if path.suffix.lower() == ".jsonl":
        records = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        return records
    return read_table(path).to_dict("records")


class ImageTextDataset(Dataset):
    """Images with a caption or report each: `image` and `text` (a string); a report's several images (R2Gen's
    annotation.json) are one row per image."""

    def __init__(self, path: str | Path, layout: str = "csv", image_root: str | Path | None = None,
                 split: str = "train", image_column: str | None = None, text_column: str | None = None,
                 img_size=32, in_chans: int | None = 3, transform: str | A.BaseCompose = "eval",
                 crop_scale=(0.2, 1.0), hflip: bool = False, mean=None, std=None, strict: bool = False):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path} does not exist")
        root = Path(image_root) if image_root is not None else path.parent
        if layout in ANNOTATION_LAYOUTS:
            try:
                annotation = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise DataError(f"{path} is not valid JSON: {error}") from None
            if not isinstance(annotation, dict) or split not in annotation:
                found = sorted(annotation) if isinstance(annotation, dict) else type(annotation).__name__
                raise DataError(f"{path}: R2Gen's annotation.json holds one list per split; no {split!r} in {found}")
            rows = [(image, entry.get("report")) for entry in annotation[split]
                    for image in (entry.get("image_path") or [None])]
        elif layout in TEXT_LAYOUTS:
            image_key, text_key = TEXT_LAYOUTS[layout]
            image_key, text_key = image_column or image_key, text_column or text_key
            records = _records(path)
            if records and (image_key not in records[0] or text_key not in records[0]):
                raise ConfigError(f"{path}: the {layout} layout reads columns {image_key!r} and {text_key!r}; the "
                                  f"file has {', '.join(map(str, records[0]))} (name them: image_column, text_column)")
            rows = [(r.get(image_key), r.get(text_key)) for r in records]
        else:
            raise ConfigError(f"text layout must be one of {', '.join([*TEXT_LAYOUTS, *ANNOTATION_LAYOUTS])}, "
                              f"got {layout!r}")
        self.files, self.texts, self.row_numbers, skipped = [], [], [], []
        for number, (image, text) in enumerate(rows):
            file = _resolve(image, root) if isinstance(image, str) and image.strip() else None
            if file is None or not file.is_file():
                skipped.append((f"row {number}", f"image {file or '(none)'} does not exist"))
            elif not isinstance(text, str) or not text.strip():
                skipped.append((f"row {number}", f"no text for {file.name}"))
            else:
                self.files.append(file)
                self.texts.append(" ".join(text.split()))
                self.row_numbers.append(number)  # the kept rows' place in the file (labels read beside them)
        self.skipped = skipped
        _report_skipped(skipped, len(rows), str(path), strict)
        if not self.files:
            raise DataError(f"{path}: none of its {len(rows)} rows has an existing image and a text")
        self.images = _Images(self.files, img_size, in_chans, transform, crop_scale, hflip, mean, std)
        self.in_chans = self.images.in_chans

    def __len__(self) -> int:
        return len(self.files)

    @property
    def stats(self):
        return self.images.stats

    def __getitem__(self, key) -> dict:
        index, seed = _key(key)
        return {"image": self.images(self.files[index], seed), "text": self.texts[index], "index": index}


# ============================================================================================ VQA
VQA_LAYOUTS = {"vqa-rad": ("image_name", "VQA_RAD Image Folder"), "slake": ("img_name", "imgs")}


class VQADataset(Dataset):
    """Medical VQA (VQA-RAD, SLAKE): `image`, `text` (the question), `answer`, `answer_type` and `label`, the
    answer's index in `answers` (the training answers; a test answer outside them gets -1)."""

    def __init__(self, path: str | Path, layout: str = "vqa-rad", image_root: str | Path | None = None,
                 answers: Sequence[str] | None = None, language: str = "en", img_size=32, in_chans: int | None = 3,
                 transform: str | A.BaseCompose = "eval", mean=None, std=None, strict: bool = False):
        if layout not in VQA_LAYOUTS:
            raise ConfigError(f"VQA layout must be one of {', '.join(VQA_LAYOUTS)}, got {layout!r}")
        path = Path(path)
        try:
            records = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path} does not exist") from None
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(records, list):
            raise DataError(f"{path}: a VQA file holds a list of questions, found {type(records).__name__}")
        image_key, folder = VQA_LAYOUTS[layout]
        root = Path(image_root) if image_root is not None else path.parent / folder
        self.files, self.questions, self.answer_texts, self.answer_types, skipped = [], [], [], [], []
        for number, record in enumerate(records):
            if layout == "slake" and record.get("q_lang", "en") != language:
                continue
            name, question, answer = record.get(image_key), record.get("question"), record.get("answer")
            file = _resolve(name, root) if isinstance(name, str) else None
            if file is None or not file.is_file():
                skipped.append((f"question {number}", f"image {file or '(none)'} does not exist"))
            elif not isinstance(question, str) or answer is None:
                skipped.append((f"question {number}", "no question or no answer"))
            else:
                self.files.append(file)
                self.questions.append(question.strip())
                self.answer_texts.append(str(answer).strip().lower())
                self.answer_types.append(str(record.get("answer_type", "")).strip().lower())
        self.skipped = skipped
        _report_skipped(skipped, len(records), str(path), strict)
        if not self.files:
            raise DataError(f"{path}: no usable question (an existing image, a question and an answer)")
        self.answers = list(answers) if answers is not None else sorted(set(self.answer_texts))
        lookup = {a: i for i, a in enumerate(self.answers)}
        self.targets = [lookup.get(a, -1) for a in self.answer_texts]
        self.images = _Images(self.files, img_size, in_chans, transform, (0.2, 1.0), False, mean, std)
        self.in_chans = self.images.in_chans

    def __len__(self) -> int:
        return len(self.files)

    @property
    def stats(self):
        return self.images.stats

    def __getitem__(self, key) -> dict:
        index, seed = _key(key)
        return {"image": self.images(self.files[index], seed), "text": self.questions[index],
                "answer": self.answer_texts[index], "answer_type": self.answer_types[index],
                "label": self.targets[index], "index": index}


# ============================================================================================ the CLI's data
@dataclass
class ImageTableData:
    """Image + table pretraining data: a CSV / Parquet table with an image-path column (the `data` section of
    `mimkit-multimodal pretrain`); the fitted preprocessing is stored here, so the run's config.yaml keeps it.

    Args:
        root: the table (.csv, .tsv, .jsonl, .parquet)
        image_column: the column of image paths (relative to image_root, else to the table's folder)
        image_root: the folder image paths are relative to
        target: a label column to leave out of the features (pretraining does not read it)
        features: the feature columns (default: every column but the image, target and excluded ones)
        exclude: columns to leave out (identifiers, dates)
        categorical: columns to read as categorical whatever their values
        continuous: columns to read as continuous numbers
        crop_scale: RandomResizedCrop's area range (TIP: 0.08 to 1)
        hflip: random horizontal flips (TIP: yes)
        mean: per-channel image mean after scaling to [0, 1] (None: measured)
        std: per-channel standard deviation (None: measured)
        strict: stop at the first bad row instead of leaving it out and counting it
        preprocessing: the fitted preprocessing (written by pretraining; given, it is applied as it is)
    """

    root: str | None = None
    image_column: str = "image"
    image_root: str | None = None
    target: str | None = None
    features: list[str] | None = None
    exclude: list[str] | None = None
    categorical: list[str] | None = None
    continuous: list[str] | None = None
    crop_scale: tuple[float, float] = TIP_CROP_SCALE
    hflip: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None
    strict: bool = False
    preprocessing: dict | None = None

    def default_method(self) -> str:
        return "tip"

    def dataset(self, img_size, transform: str = "train", in_chans: int | None = None) -> ImageTableDataset:
        """The table's dataset at an image size, with this data's preprocessing (fitted on first use)."""
        if self.root is None:
            raise ConfigError("no data given: pass --data TABLE (a CSV or Parquet file with an image-path column)")
        fitted = TablePreprocessor.from_dict(self.preprocessing) if self.preprocessing else None
        dataset = ImageTableDataset(
            self.root, self.image_column, self.image_root, fitted, target=self.target, features=self.features,
            exclude=self.exclude or (), categorical=self.categorical or (), continuous=self.continuous or (),
            img_size=img_size, in_chans=in_chans, transform=transform, crop_scale=tuple(self.crop_scale),
            hflip=self.hflip, mean=self.mean, std=self.std, strict=self.strict, labelled=False)
        self.preprocessing = dataset.preprocessor.to_dict()
        self.mean, self.std = dataset.stats
        return dataset

    def build(self, model: dict, method: str) -> ImageTableDataset:
        """The pretraining dataset; the table's shape (categories per column, continuous count) goes into `model`."""
        from mimkit.core.config import encoder_setting

        dataset = self.dataset(encoder_setting(model, "img_size", method), "train",
                               encoder_setting(model, "in_chans"))
        table = dataset.preprocessor
        for key, value in (("categorical_sizes", table.categorical_sizes), ("num_continuous", table.num_continuous)):
            if model.get(key) is not None and list(np.atleast_1d(model[key])) != list(np.atleast_1d(value)):
                raise ConfigError(f"model.{key} is {model[key]} but the table {self.root} has {value}")
            model[key] = value
        return dataset


__all__ = ["ImageTableDataset", "ImageTextDataset", "VQADataset", "ImageTableData", "TablePreprocessor",
           "feature_importance", "missing_mask", "MISSING_PATTERNS", "TEXT_LAYOUTS", "ANNOTATION_LAYOUTS",
           "VQA_LAYOUTS", "TIP_CROP_SCALE"]
