"""Small multimodal data sets the project writes for tests and the demo, from real pixels that packages ship.

- `digits`: scikit-learn's 1,797 handwritten digits (`sklearn/datasets/data/digits.csv.gz`, 8x8, shown at 32x32)
  with a table whose columns are measured on each image (ink, width, height, centre of mass, left-right
  symmetry; noise of a tenth of each one's spread), two noisy label-linked columns (parity and "has a closed
  loop", each 15% wrong), two noise columns (a number and a 3-way "site") and missing cells; the target is the
  digit. Also captions built from the label and the measurements, and VQA-RAD-style questions. `outcome=True`
  (the `digits-outcome` kind, TIP's demo) adds a column the image lacks: a random trial arm A / B, and the target
  `outcome` is the digit in arm A and the digit + 5 (mod 10) in arm B, so only image and table together give it.
- `crops`: 32x32 crops of scikit-image's bundled photographs and micrographs (astronaut, camera, coffee, chelsea,
  coins, the immunohistochemistry and cell micrographs, ...), the target being the source picture; the table holds
  the crop's position, brightness, contrast, edge density and colourfulness, a noise column and missing cells.
- `dicom`: pydicom's bundled CT / MR / other test files, each image as a PNG beside its real DICOM header fields
  (modality, rows, columns, pixel spacing, slice thickness, sex, body part, manufacturer); the target is the
  modality. Files pydicom cannot decode here are left out and counted.
- `histories`: users' interaction sequences of digits (each user prefers one digit) for Pigeon: `histories.csv`.
Each of the first three kinds writes `train.csv` and `test.csv` (image paths relative to the folder) and `images/`.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from mimkit.core.errors import ConfigError

log = logging.getLogger("mimkit")

SYNTHETIC_KINDS = ("digits", "digits-outcome", "crops", "dicom", "histories")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LOOPS = {0, 4, 6, 8, 9}  # digits usually drawn with a closed loop
SKIMAGE_PICTURES = ("astronaut", "camera", "coffee", "chelsea", "coins", "immunohistochemistry", "cell", "rocket",
                    "hubble_deep_field", "moon", "page", "grass", "brick", "gravel")


def _write_rows(path: Path, rows: list[dict], fields: Sequence[str] | None = None) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields or rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _hide(rows: list[dict], columns: Sequence[str], rate: float, rng: np.random.Generator) -> None:
    """Empty a `rate` share of the given cells at random (missing data)."""
    for row in rows:
        for column in columns:
            if rng.random() < rate:
                row[column] = ""


def _split(count: int, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """True for the test rows: a seeded shuffle."""
    test = np.zeros(count, bool)
    test[rng.permutation(count)[:int(round(count * test_fraction))]] = True
    return test


# ============================================================================================ digits
ARMS = ("A", "B")


def outcome_of(digit: int, arm: str) -> int:
    """The `outcome` target of `write_digits(outcome=True)`: the digit in arm A, the digit plus 5 (mod 10) in arm B.
    Neither half is enough: the image cannot tell the two arms apart (the arm is drawn independently of it), and
    the table knows the digit only through noisy measurements and label-linked columns."""
    return int(digit) if arm == ARMS[0] else (int(digit) + 5) % 10


def digit_measurements(image: np.ndarray) -> dict[str, float]:
    """What the table records about a digit image (values 0..1): ink, extent, centre of mass, symmetry."""
    total = image.sum() + 1e-8
    rows, cols = np.nonzero(image > 0.25)
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    mirrored = image[:, ::-1]
    symmetry = float(np.corrcoef(image.ravel(), mirrored.ravel())[0, 1]) if image.std() > 0 else 0.0
    return {"ink": float(image.mean()), "width": float(cols.max() - cols.min() + 1) if len(cols) else 0.0,
            "height": float(rows.max() - rows.min() + 1) if len(rows) else 0.0,
            "centre_x": float((xx * image).sum() / total), "centre_y": float((yy * image).sum() / total),
            "symmetry": symmetry}


def write_digits(root: str | Path, count: int | None = None, size: int = 32, missing_rate: float = 0.2,
                 label_noise: float = 0.15, test_fraction: float = 0.25, seed: int = 0, outcome: bool = False) -> Path:
    """scikit-learn's digits with a measured table (see the module docstring), captions and VQA questions; with
    `outcome` the table's target is `outcome` instead of `digit` (see `outcome_of`) and it gains the `arm` column the
    outcome depends on (the `digit` column is not written)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    picks = np.arange(len(digits.target)) if count is None else rng.permutation(len(digits.target))[:count]
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, captions, questions = [], [], []
    measurements = [digit_measurements(digits.images[i] / 16.0) for i in picks]
    # measurement noise: a tenth of each measurement's spread over the set
    spread = {k: float(np.std([m[k] for m in measurements])) for k in measurements[0]}
    for i, measured in zip(picks, measurements):
        image = digits.images[i] / 16.0
        label = int(digits.target[i])
        name = f"images/digit_{i:04d}.png"
        Image.fromarray((image * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC).save(root / name)
        flip = lambda value: 1 - value if rng.random() < label_noise else value  # noqa: E731
        row = {"image": name, "parity": ["even", "odd"][flip(label % 2)],
               "closed_loop": ["no", "yes"][flip(int(label in LOOPS))],
               "site": f"site_{rng.integers(3)}",
               **{k: round(v + rng.normal(0, 0.1 * spread[k]), 4) for k, v in measured.items()},
               "noise": round(float(rng.normal()), 4), "digit": label}
        rows.append(row)
        thickness = "thick" if measured["ink"] > 0.3 else "thin"
        captions.append({"image": name, "text": f"a handwritten digit {DIGIT_NAMES[label]} drawn with {thickness} "
                                                f"strokes", "label": label})
        questions += [{"image_name": name, "question": "which digit is shown?", "answer": DIGIT_NAMES[label],
                       "answer_type": "OPEN"},
                      {"image_name": name, "question": "is the digit even?",
                       "answer": "yes" if label % 2 == 0 else "no", "answer_type": "CLOSED"}]
    _hide(rows, [k for k in rows[0] if k not in ("image", "digit")], missing_rate, rng)
    if outcome:  # its own generator: the other columns, their missing cells and the split stay as without it
        arm_rng = np.random.default_rng([seed, 1])
        for number, row in enumerate(rows):
            arm = ARMS[int(arm_rng.integers(2))]
            label = row.pop("digit")
            rows[number] = {**row, "arm": "" if arm_rng.random() < missing_rate else arm,
                            "outcome": outcome_of(label, arm)}
    test = _split(len(rows), test_fraction, rng)
    _write_rows(root / "train.csv", [r for r, t in zip(rows, test) if not t])
    _write_rows(root / "test.csv", [r for r, t in zip(rows, test) if t])
    _write_rows(root / "captions_train.csv", [c for c, t in zip(captions, test) if not t])
    _write_rows(root / "captions_test.csv", [c for c, t in zip(captions, test) if t])
    (root / "vqa_train.json").write_text(json.dumps([q for j, q in enumerate(questions) if not test[j // 2]]))
    (root / "vqa_test.json").write_text(json.dumps([q for j, q in enumerate(questions) if test[j // 2]]))
    return root


# ============================================================================================ user histories
def write_histories(root: str | Path, users: int = 40, per_user: int = 10, size: int = 32, taste: float = 0.8,
                    seed: int = 0) -> Path:
    """Users' image histories for Pigeon from scikit-learn's digits: each user has a favourite digit, and each of
    their `per_user` interactions (in order, column `step`) is a digit of that class with probability `taste`, any
    other digit otherwise; `histories.csv` (user, image, step, favourite) and images/."""
    from sklearn.datasets import load_digits

    if not 0 <= taste <= 1 or users < 1 or per_user < 2:
        raise ConfigError(f"histories need users >= 1, per_user >= 2 and taste in [0, 1]; got {users}, {per_user}, "
                          f"{taste}")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    by_class = {c: np.flatnonzero(digits.target == c) for c in range(10)}
    rows, written = [], set()
    for user in range(users):
        favourite = int(rng.integers(10))
        for step in range(per_user):
            label = favourite if rng.random() < taste else int(rng.choice([c for c in range(10) if c != favourite]))
            i = int(rng.choice(by_class[label]))
            name = f"images/digit_{i:04d}.png"
            if i not in written:
                image = (digits.images[i] / 16.0 * 255).astype(np.uint8)
                Image.fromarray(image).resize((size, size), Image.BICUBIC).save(root / name)
                written.add(i)
            rows.append({"user": f"user_{user:03d}", "image": name, "step": step, "favourite": favourite})
    _write_rows(root / "histories.csv", rows)
    return root


# ============================================================================================ skimage crops
def _skimage_pictures(names: Sequence[str]) -> dict[str, np.ndarray]:
    """The bundled scikit-image pictures that load here (RGB, float 0..1); any that needs a download is left out."""
    from skimage import data as skdata

    pictures = {}
    for name in names:
        try:
            picture = np.asarray(getattr(skdata, name)(), dtype=np.float64)
        except Exception as error:  # a picture that is fetched on demand: not available offline
            log.info("scikit-image picture %s is not available here (%s)", name, type(error).__name__)
            continue
        picture = picture / (255.0 if picture.max() > 1 else 1.0)
        if picture.ndim == 2:
            picture = np.repeat(picture[..., None], 3, -1)
        pictures[name] = picture[..., :3]
    return pictures


def write_crops(root: str | Path, per_picture: int = 40, size: int = 32, pictures: Sequence[str] = SKIMAGE_PICTURES,
                missing_rate: float = 0.2, test_fraction: float = 0.25, seed: int = 0) -> Path:
    """Crops of scikit-image's bundled pictures; the target is the picture, the table measures the crop."""
    rng = np.random.default_rng(seed)
    loaded = _skimage_pictures(pictures)
    if len(loaded) < 2:
        raise ConfigError(f"fewer than two of the scikit-image pictures {', '.join(pictures)} load here")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for name, picture in loaded.items():
        height, width = picture.shape[:2]
        side = min(height, width) // 4
        for k in range(per_picture):
            y, x = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
            crop = picture[y:y + side, x:x + side]
            file = f"images/{name}_{k:03d}.png"
            Image.fromarray((crop * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC).save(root / file)
            grey = crop.mean(-1)
            edges = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
            rows.append({"image": file, "position_x": round((x + side / 2) / width, 4),
                         "position_y": round((y + side / 2) / height, 4), "brightness": round(float(grey.mean()), 4),
                         "contrast": round(float(grey.std()), 4), "edges": round(float(edges), 4),
                         "colourful": round(float(crop.std(-1).mean()), 4),
                         "noise": round(float(rng.normal()), 4), "picture": name})
    _hide(rows, [k for k in rows[0] if k not in ("image", "picture")], missing_rate, rng)
    test = _split(len(rows), test_fraction, rng)
    _write_rows(root / "train.csv", [r for r, t in zip(rows, test) if not t])
    _write_rows(root / "test.csv", [r for r, t in zip(rows, test) if t])
    return root


# ============================================================================================ DICOM
DICOM_FIELDS = ("Modality", "Rows", "Columns", "PixelSpacing", "SliceThickness", "PatientSex", "BodyPartExamined",
                "Manufacturer", "BitsStored")


def _header_value(dataset, field: str):
    value = dataset.get(field)
    if value is None or value == "":
        return ""
    if field == "PixelSpacing":
        return round(float(value[0]), 5)
    return str(value) if not isinstance(value, (int, float)) else value


def write_dicom_table(root: str | Path, size: int = 64, pattern: str = "*.dcm", test_fraction: float = 0.25,
                      seed: int = 0) -> dict:
    """pydicom's bundled test files (`pydicom/data/test_files`, those matching `pattern`) as PNGs with their header
    fields; returns {"root", "written", "skipped"}."""
    import warnings

    import pydicom

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    folder = Path(pydicom.__file__).parent / "data" / "test_files"  # read directly: pydicom's helper tries downloads
    for path in sorted(folder.glob(pattern)):
        try:
            with warnings.catch_warnings():  # the test files are damaged on purpose; what fails is counted below
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(path)
                pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
        except Exception as error:  # compressed without a decoder, no pixel data, damaged: counted, not fatal
            skipped.append((Path(path).name, type(error).__name__))
            continue
        if pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
            pixels = pixels[len(pixels) // 2]  # the middle frame of a multi-frame file
        if pixels.ndim == 3:
            pixels = pixels[..., :3].mean(-1)
        low, high = np.percentile(pixels, [1, 99])
        scaled = np.clip((pixels - low) / max(high - low, 1e-6), 0, 1)
        file = f"images/{Path(path).stem}.png"
        Image.fromarray((scaled * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR).save(root / file)
        rows.append({"image": file, **{f: _header_value(dataset, f) for f in DICOM_FIELDS}})
    if not rows:
        raise ConfigError("none of pydicom's bundled test files could be decoded here")
    if skipped:
        log.warning("left out %d of pydicom's test files that cannot be decoded here (first: %s, %s)", len(skipped),
                    *skipped[0])
    test = _split(len(rows), test_fraction, np.random.default_rng(seed))
    fields = ["image", *DICOM_FIELDS]
    _write_rows(root / "table.csv", rows, fields)
    _write_rows(root / "train.csv", [r for r, t in zip(rows, test) if not t], fields)
    _write_rows(root / "test.csv", [r for r, t in zip(rows, test) if t], fields)
    return {"root": str(root), "written": len(rows), "skipped": skipped}


__all__ = ["write_digits", "outcome_of", "ARMS", "write_crops", "write_dicom_table", "write_histories", "digit_measurements",
           "SYNTHETIC_KINDS", "DIGIT_NAMES", "DICOM_FIELDS", "SKIMAGE_PICTURES"]
