"""Dataset layouts read from a local folder (nothing is downloaded) as item lists {"image", "label"}.

A plain folder of images or volumes (pretraining), class sub-folders (OCT, fundus), the Medical Segmentation
Decathlon / BTCV `dataset.json`, the NIH ChestX-ray14 CSV and the CheXpert CSV; `layout_items` picks one.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from mimkit.core.data import IMAGE_SUFFIXES
from mimkit.core.errors import ConfigError, DataError

from .readers import DICOM_SUFFIXES, _hidden, find_inputs

log = logging.getLogger(__name__)

LAYOUTS = ("folder", "classes", "msd", "chestxray14", "chexpert")

# NIH ChestX-ray14 (Wang et al., CVPR 2017): the 14 findings in the order CheXNet and Thorax MAE use.
CHESTXRAY14_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                       "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
                       "Hernia")
# CheXpert (Irvin et al., AAAI 2019): the 14 observation columns of train.csv / valid.csv, in file order.
CHEXPERT_CLASSES = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                    "Pleural Other", "Fracture", "Support Devices")
# The five observations of the CheXpert competition (the paper's Table 2).
CHEXPERT_COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
UNCERTAINTY_POLICIES = ("ones", "zeros")


# ============================================================================================ layouts
def folder_items(root: str | Path, volumes: bool) -> list[dict]:
    """A plain folder of images or volumes (searched recursively), unlabelled: for pretraining."""
    return [{"image": str(path)} for path in find_inputs(root, volumes)]


def class_folder_items(root: str | Path, volumes: bool,
                       classes: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
    """Class sub-folders (OCT2017's CNV/DME/DRUSEN/NORMAL, fundus grades, ...): one class per folder name.

    `classes` fixes the class order (so train and test agree); by default the sorted folder names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist" if not root.exists() else
                        f"{root} is a file; expected a folder of class sub-folders")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = folders
    missing = [c for c in classes if c not in folders]
    if missing or not classes:
        raise DataError(f"{root}: expected class sub-folders {list(classes) or '(one per class)'}; "
                        f"missing {missing or 'all'}; found {folders}")
    items = []
    for label, name in enumerate(classes):
        items += [{"image": str(path), "label": label} for path in find_inputs(root / name, volumes)]
    if not items:
        raise DataError(f"{root}: the class sub-folders {list(classes)} hold no images or volumes")
    return items, list(classes)


def decathlon_items(root: str | Path, split: str = "training", json_name: str = "dataset.json",
                    holdout: float = 0.2) -> tuple[list[dict], list[str]]:
    """Medical Segmentation Decathlon / BTCV `dataset.json`: {"training": [{"image", "label"}], ...}.

    split "training" / "validation" use those lists. A file without a "validation" list (the MSD's own) keeps
    its last `holdout` fraction of "training" cases for validation. Class names come from its "labels".
    """
    from monai.data import load_decathlon_datalist

    root = Path(root)
    path = root / json_name
    if not path.is_file():
        raise DataError(f"{path} does not exist; the Decathlon/BTCV layout needs a {json_name} with a "
                        f"'training' list of {{'image': ..., 'label': ...}}")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(content.get("training"), list) or not content["training"]:
        raise DataError(f"{path}: expected a non-empty 'training' list; found keys {sorted(content)}")
    labels = content.get("labels") or {}
    classes = [labels[k] for k in sorted(labels, key=int)] if labels else []
    try:
        if split == "validation" and isinstance(content.get("validation"), list):
            items = load_decathlon_datalist(path, True, "validation", base_dir=root)
        else:
            items = load_decathlon_datalist(path, True, "training", base_dir=root)
            if not isinstance(content.get("validation"), list):
                cut = len(items) - max(1, int(round(len(items) * holdout))) if len(items) > 1 else len(items)
                items = items[:cut] if split == "training" else items[cut:]
    except (ValueError, KeyError) as error:
        raise DataError(f"{path}: {error}") from None
    if split not in ("training", "validation"):
        raise ConfigError(f"split must be 'training' or 'validation', got {split!r}")
    missing = [item["image"] for item in items if not Path(item["image"]).exists()]
    if missing:
        log.warning("%s: %d listed image(s) do not exist, first %s (they are skipped and counted)", path,
                    len(missing), missing[0])
    return [dict(item) for item in items], classes


def _index_images(root: Path) -> dict[str, Path]:
    """File name -> path for every image under root (ChestX-ray14 spreads images over images_001/images ...)."""
    return {p.name: p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES
            and p.is_file() and not _hidden(p, root)}


def chestxray14_items(root: str | Path, split: str = "train", csv_name: str = "Data_Entry_2017.csv",
                      skipped: list | None = None) -> tuple[list[dict], list[str]]:
    """NIH ChestX-ray14: `Data_Entry_2017.csv` ("Image Index", "Finding Labels" joined by '|', "No Finding"),
    the official split lists `train_val_list.txt` / `test_list.txt`, images anywhere under root.

    Splits: train (train_val_list.txt, 86,524 images), test (test_list.txt); train_official, val_official and
    test_official read the lists of the same names that Thorax MAE trains with (lambert-x/medical_mae
    data_splits/chestxray: 75,312 training images, the rest of train_val_list held out for validation).

    Labels are 14-long multi-hot vectors in CHESTXRAY14_CLASSES order. Listed images that are absent are
    skipped and counted (appended to `skipped`).
    """
    root = Path(root)
    table = root / csv_name
    if not table.is_file():
        raise DataError(f"{table} does not exist; the ChestX-ray14 layout needs {csv_name} with the columns "
                        f"'Image Index' and 'Finding Labels'")
    split_files = {"train": "train_val_list.txt", "test": "test_list.txt", "train_official": "train_official.txt",
                   "val_official": "val_official.txt", "test_official": "test_official.txt"}
    if split not in split_files:
        raise ConfigError(f"ChestX-ray14 split must be one of {', '.join(split_files)}, got {split!r}")
    listed = root / split_files[split]
    if not listed.is_file():
        where = ("Thorax MAE's split lists (lambert-x/medical_mae data_splits/chestxray)" if "official" in split
                 else "ChestX-ray14's official split lists train_val_list.txt and test_list.txt")
        raise DataError(f"{listed} does not exist; {where} belong next to {csv_name}")
    wanted = {line.strip() for line in listed.read_text().splitlines() if line.strip()}
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"Image Index", "Finding Labels"} <= set(reader.fieldnames or ()):
            raise DataError(f"{table}: expected columns 'Image Index' and 'Finding Labels', found "
                            f"{reader.fieldnames}")
        rows = [row for row in reader if row["Image Index"] in wanted]
    images = _index_images(root)
    index = {name: i for i, name in enumerate(CHESTXRAY14_CLASSES)}
    items, absent = [], 0
    for row in rows:
        path = images.get(row["Image Index"])
        if path is None:
            absent += 1
            if skipped is not None:
                skipped.append((row["Image Index"], f"{row['Image Index']}: listed in {csv_name} but not under {root}"))
            continue
        label = [0.0] * len(CHESTXRAY14_CLASSES)
        for finding in row["Finding Labels"].split("|"):
            finding = finding.strip()
            if finding == "No Finding" or not finding:
                continue
            if finding not in index:
                raise DataError(f"{table}: unknown finding {finding!r} for {row['Image Index']}; expected one of "
                                f"{', '.join(CHESTXRAY14_CLASSES)} or 'No Finding'")
            label[index[finding]] = 1.0
        items.append({"image": str(path), "label": label})
    if absent:
        log.warning("ChestX-ray14 %s: %d of %d listed images are not under %s (skipped)", split, absent, len(rows),
                    root)
    if not items:
        raise DataError(f"{root}: none of the {len(rows)} images listed in {listed.name} were found")
    return items, list(CHESTXRAY14_CLASSES)


def chexpert_items(root: str | Path, split: str = "train", uncertainty: str = "ones",
                   classes: Sequence[str] = CHEXPERT_CLASSES, views: str = "all",
                   skipped: list | None = None) -> tuple[list[dict], list[str]]:
    """CheXpert: `train.csv` / `valid.csv` with "Path" and the 14 observation columns (1, 0, -1, blank).

    Uncertainty policy (Irvin et al. 2019, Section 3): "ones" (U-Ones) reads -1 as positive, "zeros"
    (U-Zeros) as negative; a blank (not mentioned) is negative. `classes` picks columns (e.g.
    CHEXPERT_COMPETITION); `views` "all" or "frontal". Paths may start with the dataset folder's name
    ("CheXpert-v1.0-small/train/...") or be relative to root.
    """
    root = Path(root)
    if uncertainty not in UNCERTAINTY_POLICIES:
        raise ConfigError(f"CheXpert uncertainty policy must be 'ones' (U-Ones) or 'zeros' (U-Zeros), "
                          f"got {uncertainty!r}")
    names = {"train": "train.csv", "test": "valid.csv", "valid": "valid.csv"}
    if split not in names:
        raise ConfigError(f"CheXpert split must be 'train' or 'test' (valid.csv), got {split!r}")
    table = root / names[split]
    if not table.is_file():
        raise DataError(f"{table} does not exist; the CheXpert layout needs train.csv and valid.csv with a 'Path' "
                        f"column and the observation columns")
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("Path", *classes) if c not in columns]
        if missing:
            raise DataError(f"{table}: missing column(s) {missing}; found {columns}")
        rows = list(reader)
    unknown = {"ones": 1.0, "zeros": 0.0}[uncertainty]
    items = []
    for row in rows:
        if views == "frontal" and row.get("Frontal/Lateral", "Frontal") != "Frontal":
            continue
        relative = Path(row["Path"])
        candidates = [root / relative, root.parent / relative, root / Path(*relative.parts[1:])]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            if skipped is not None:
                skipped.append((row["Path"], f"{row['Path']}: listed in {table.name} but not found under {root}"))
            continue
        label = []
        for name in classes:
            text = row[name].strip()
            try:
                value = float(text) if text else 0.0
            except ValueError:
                raise DataError(f"{table}: column {name!r} of {row['Path']} holds {text!r}; expected 1, 0, -1 or "
                                f"blank") from None
            if value not in (1.0, 0.0, -1.0):
                raise DataError(f"{table}: column {name!r} of {row['Path']} holds {value}; expected 1, 0, -1 or blank")
            label.append(unknown if value == -1.0 else value)
        items.append({"image": str(path), "label": label})
    if skipped:
        log.warning("CheXpert %s: %d listed images not found under %s (skipped)", split, len(skipped), root)
    if not items:
        raise DataError(f"{root}: none of the {len(rows)} images listed in {table.name} were found")
    return items, list(classes)


def layout_items(layout: str, root: str | Path, volumes: bool, split: str | None = None,
                 options: Mapping[str, Any] | None = None) -> tuple[list[dict], list[str], str | None, list]:
    """(items, classes, label_kind, skipped) for one of LAYOUTS; split None reads the whole folder (pretraining)."""
    options = dict(options or {})
    skipped: list = []
    if layout == "folder":
        if options.get("normal_only") and (Path(root) / options.get("normal_class", "normal")).is_dir():
            return folder_items(Path(root) / options.get("normal_class", "normal"), volumes), [], None, skipped
        return folder_items(root, volumes), [], None, skipped
    if layout == "classes":
        folder = Path(root) / split if split and (Path(root) / split).is_dir() else Path(root)
        items, classes = class_folder_items(folder, volumes, options.get("classes"))
        return items, classes, "class", skipped
    if layout == "msd":
        json_name = options.get("json_name", "dataset.json")
        if split is None:  # pretraining: every listed image, without its labels
            items = sum((decathlon_items(root, part, json_name)[0] for part in ("training", "validation")), [])
            return [{"image": item["image"]} for item in items], [], None, skipped
        items, classes = decathlon_items(root, {"train": "training", "test": "validation"}.get(split, split),
                                         json_name)
        return items, classes, "mask", skipped
    if layout == "chestxray14":
        items, classes = chestxray14_items(root, split or "train", skipped=skipped)
        return items, classes, "multilabel", skipped
    if layout == "chexpert":
        items, classes = chexpert_items(root, split or "train", options.get("uncertainty", "ones"),
                                        options.get("classes") or CHEXPERT_CLASSES, options.get("views", "all"),
                                        skipped=skipped)
        return items, classes, "multilabel", skipped
    raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


__all__ = ["LAYOUTS", "CHESTXRAY14_CLASSES", "CHEXPERT_CLASSES", "CHEXPERT_COMPETITION", "UNCERTAINTY_POLICIES",
           "folder_items", "class_folder_items", "decathlon_items", "chestxray14_items", "chexpert_items",
           "layout_items"]
