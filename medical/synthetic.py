"""Small medical data sets the project writes for tests and the demo, each in the layout of a real one.

CT-like organ volumes (Decathlon/BTCV), radiographs (ChestX-ray14, CheXpert), OCT B-scans and fundus photographs
(class folders) and anomaly-detection images with lesion masks; MONAI's synthetic shapes where it ships them.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mimkit.core.errors import ConfigError

from .layouts import CHESTXRAY14_CLASSES, CHEXPERT_CLASSES

# ============================================================================================ synthetic data
SYNTHETIC_KINDS = ("organs", "chestxray14", "chexpert", "oct", "fundus", "anomaly")


def _rng(seed: int) -> np.random.RandomState:
    return np.random.RandomState(seed)


def write_synthetic_organs(root: str | Path, cases: int = 8, size: int = 32, classes: int = 3, seed: int = 0,
                           spacing: float = 1.5, validation: int = 2) -> Path:
    """Small CT-like NIfTI volumes with spherical "organs" and their label maps in the Decathlon/BTCV layout.

    MONAI's create_test_image_3d draws spheres whose class sets their brightness; intensities are written as
    Hounsfield-like values (air -1000, a soft-tissue "body" cylinder near -60, organs 40..240) so the CT
    window and the foreground crop act as on real scans.
    """
    import nibabel as nib
    from monai.data.synthetic import create_test_image_3d

    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rs = _rng(seed)
    entries = []
    affine = np.diag([spacing, spacing, spacing, 1.0])
    for case in range(cases):
        for _ in range(50):  # redraw until every organ class is present, so each test case scores every class
            image, label = create_test_image_3d(size, size, size, num_objs=max(4, classes + 1),
                                                rad_max=max(3, size // 5), rad_min=max(2, size // 10), noise_max=0.1,
                                                num_seg_classes=classes, random_state=rs)
            if len(np.unique(label)) == classes + 1:
                break
        xx, yy = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        body = np.broadcast_to(((xx / 0.48) ** 2 + (yy / 0.42) ** 2 < 1)[..., None], label.shape)
        hu = np.where(body, -60.0 + 40.0 * rs.rand(*label.shape), -1000.0)
        hu = np.where(label > 0, 40.0 + 200.0 * image, hu).astype(np.float32)
        name = f"case_{case:03d}.nii.gz"
        nib.save(nib.Nifti1Image(hu, affine), str(root / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(root / "labelsTr" / name))
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    content = {"name": "mimkit synthetic organs", "modality": {"0": "CT"},
               "labels": {"0": "background", **{str(c): f"organ_{c}" for c in range(1, classes + 1)}},
               "training": entries[:cases - validation], "validation": entries[cases - validation:]}
    (root / "dataset.json").write_text(json.dumps(content, indent=2))
    return root


def _xray(rs: np.random.RandomState, size: int, findings: Sequence[int]) -> np.ndarray:
    """A 16-bit radiograph-like image: a smooth chest-like field; finding c adds a bright disk in region c."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    field = 0.35 + 0.25 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.08) + 0.05 * rs.rand(size, size)
    for c in findings:
        cy, cx = 0.25 + 0.5 * (c // 2 % 2), 0.25 + 0.5 * (c % 2)
        radius = 0.12 + 0.04 * rs.rand()
        field += 0.35 * (((xx - cx) ** 2 + (yy - cy) ** 2) < radius ** 2)
    return (np.clip(field, 0, 1) * 65535).astype(np.uint16)


def write_synthetic_chestxray14(root: str | Path, count: int = 48, size: int = 32, findings: int = 3,
                                seed: int = 0, test_fraction: float = 0.33) -> Path:
    """16-bit PNG radiographs in the NIH ChestX-ray14 layout (Data_Entry_2017.csv, split lists, images/):
    each of the first `findings` classes shows as a bright disk in its own quadrant."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rs = _rng(seed)
    rows, names = [], []
    for i in range(count):
        present = [c for c in range(findings) if rs.rand() < 0.4]
        name = f"{i:08d}_000.png"
        Image.fromarray(_xray(rs, size, present)).save(root / "images" / name)
        labels = "|".join(CHESTXRAY14_CLASSES[c] for c in present) or "No Finding"
        rows.append({"Image Index": name, "Finding Labels": labels, "Follow-up #": 0, "Patient ID": i})
        names.append(name)
    with (root / "Data_Entry_2017.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cut = count - max(1, int(round(count * test_fraction)))
    (root / "train_val_list.txt").write_text("\n".join(names[:cut]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[cut:]) + "\n")
    return root


def write_synthetic_chexpert(root: str | Path, count: int = 48, size: int = 32, seed: int = 0,
                             valid_fraction: float = 0.33) -> Path:
    """8-bit JPEG-free PNG radiographs in the CheXpert layout (CheXpert-v1.0-small/train.csv, valid.csv):
    Cardiomegaly, Edema and Pleural Effusion are drawn as disks; some are marked uncertain (-1) or blank."""
    from PIL import Image

    root = Path(root)
    base = "CheXpert-v1.0-small"
    rs = _rng(seed)
    drawn = ("Cardiomegaly", "Edema", "Pleural Effusion")
    cut = count - max(1, int(round(count * valid_fraction)))
    tables = {"train.csv": [], "valid.csv": []}
    for i in range(count):
        split = "train" if i < cut else "valid"
        present = [c for c in range(len(drawn)) if rs.rand() < 0.4]
        relative = Path(base) / split / f"patient{i:05d}" / "study1" / "view1_frontal.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        image = (_xray(rs, size, present) // 257).astype(np.uint8)
        Image.fromarray(image).save(root / relative)
        row = {"Path": str(relative), "Sex": "Female", "Age": 50, "Frontal/Lateral": "Frontal", "AP/PA": "PA"}
        for name in CHEXPERT_CLASSES:
            row[name] = ""
        for c, name in enumerate(drawn):
            if c in present:
                row[name] = "-1.0" if split == "train" and rs.rand() < 0.15 else "1.0"
            elif rs.rand() < 0.5:
                row[name] = "0.0"
        row["No Finding"] = "" if present else "1.0"
        tables["train.csv" if split == "train" else "valid.csv"].append(row)
    for name, rows in tables.items():
        with (root / base / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root / base


def _oct_bscan(rs: np.random.RandomState, size: int, kind: int) -> np.ndarray:
    """An OCT-like B-scan: bright horizontal retinal layers; kind 1 adds drusen bumps, kind 2 a bright blob."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    surface = 0.45 + 0.05 * np.sin(2 * np.pi * xx + rs.rand() * 6)
    if kind == 1:
        for cx in rs.uniform(0.2, 0.8, 2):
            surface -= 0.12 * np.exp(-((xx - cx) ** 2) / 0.003)
    image = np.zeros((size, size))
    for depth, brightness in ((0.0, 0.9), (0.12, 0.5), (0.22, 0.8)):
        image += brightness * np.exp(-((yy - surface - depth) ** 2) / 0.0015)
    if kind == 2:
        cx, cy = rs.uniform(0.3, 0.7), 0.6
        image += 0.9 * (((xx - cx) ** 2 + (yy - cy) ** 2) < 0.01)
    image += 0.08 * rs.rand(size, size)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _fundus(rs: np.random.RandomState, size: int, kind: int) -> np.ndarray:
    """A fundus-like RGB photograph: an orange disc with an optic disc; kind 1 adds dark red haemorrhages,
    kind 2 bright yellow exudates."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    inside = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.2
    image = np.zeros((size, size, 3))
    image[inside] = (0.8, 0.35, 0.15)
    disc = ((xx - 0.7) ** 2 + (yy - 0.5) ** 2) < 0.006
    image[disc] = (1.0, 0.9, 0.6)
    for _ in range(3 if kind else 0):
        cx, cy = rs.uniform(0.25, 0.6, 2)
        spot = ((xx - cx) ** 2 + (yy - cy) ** 2) < 0.002
        image[spot] = (0.4, 0.05, 0.05) if kind == 1 else (1.0, 1.0, 0.3)
    image += 0.05 * rs.rand(size, size, 1)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_synthetic_classes(root: str | Path, kind: str, per_class: int = 16, size: int = 32,
                            seed: int = 0, test_fraction: float = 0.33) -> Path:
    """OCT B-scans (NORMAL / DRUSEN / CNV) or fundus photographs (normal / haemorrhage / exudate) in class
    folders under train/ and test/, the layout of Kermany et al.'s OCT2017."""
    from PIL import Image

    if kind not in ("oct", "fundus"):
        raise ConfigError(f"synthetic class folders are 'oct' or 'fundus', got {kind!r}")
    root = Path(root)
    names = ("NORMAL", "DRUSEN", "CNV") if kind == "oct" else ("normal", "haemorrhage", "exudate")
    draw = _oct_bscan if kind == "oct" else _fundus
    rs = _rng(seed)
    cut = per_class - max(1, int(round(per_class * test_fraction)))
    for label, name in enumerate(names):
        for i in range(per_class):
            folder = root / ("train" if i < cut else "test") / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(draw(rs, size, label)).save(folder / f"{name.lower()}_{i:03d}.png")
    return root


def write_synthetic_anomaly(root: str | Path, normal: int = 32, abnormal: int = 12, size: int = 32,
                            seed: int = 0) -> Path:
    """Anomaly detection data: train/normal (normal images only, as MemMC-MAE trains) and test/normal,
    test/abnormal, where an abnormal image carries a bright square lesion that masks/<same name> marks."""
    from monai.data.synthetic import create_test_image_2d
    from PIL import Image

    root = Path(root)
    rs = _rng(seed)
    for folder in ("train/normal", "test/normal", "test/abnormal", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)

    def base() -> np.ndarray:
        image, _ = create_test_image_2d(size, size, num_objs=3, rad_max=max(3, size // 6), rad_min=2,
                                        noise_max=0.05, num_seg_classes=1, random_state=rs)
        return 0.2 + 0.5 * image

    test_normal = max(1, abnormal)
    for i in range(normal + test_normal):
        folder = root / ("train/normal" if i < normal else "test/normal")
        Image.fromarray((base() * 255).astype(np.uint8)).save(folder / f"normal_{i:03d}.png")
    lesion = max(3, size // 5)
    for i in range(abnormal):
        image, mask = base(), np.zeros((size, size), np.uint8)
        top, left = rs.randint(2, size - lesion - 2, 2)
        image[top:top + lesion, left:left + lesion] = 1.0
        mask[top:top + lesion, left:left + lesion] = 255
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "test/abnormal" / f"abnormal_{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"abnormal_{i:03d}.png")
    return root


def write_synthetic(root: str | Path, kind: str, seed: int = 0, size: int | None = None) -> Path:
    """Write one kind of SYNTHETIC_KINDS under root/<kind>; returns the folder a task reads."""
    if kind not in SYNTHETIC_KINDS:
        raise ConfigError(f"synthetic data kind must be one of {', '.join(SYNTHETIC_KINDS)}, got {kind!r}")
    folder = Path(root) / kind
    sized = {} if size is None else {"size": size}
    if kind == "organs":
        return write_synthetic_organs(folder, seed=seed, **sized)
    if kind == "chestxray14":
        return write_synthetic_chestxray14(folder, seed=seed, **sized)
    if kind == "chexpert":
        return write_synthetic_chexpert(folder, seed=seed, **sized)
    if kind == "anomaly":
        return write_synthetic_anomaly(folder, seed=seed, **sized)
    return write_synthetic_classes(folder, kind, seed=seed, **sized)


__all__ = ["SYNTHETIC_KINDS", "write_synthetic", "write_synthetic_organs", "write_synthetic_chestxray14",
           "write_synthetic_chexpert", "write_synthetic_classes", "write_synthetic_anomaly"]
