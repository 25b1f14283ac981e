"""Medical benchmark tasks, registered with mimkit.benchmarks on import and run by
`mimkit.benchmarks.runner.run_task`.

Tasks: multi-label chest X-ray classification (ChestX-ray14, CheXpert; macro ROC-AUC in percent), 3D organ
segmentation with core's UNETR head over the pretrained ViT (BTCV, any Decathlon task; mean Dice in percent),
OCT / fundus classification (accuracy in percent) and anomaly detection (image-level ROC-AUC in percent,
MemMC-MAE; the anomaly tasks' own runner). Each reads a local copy of the public dataset in its usual layout
(see mimkit.medical.layouts); the `synthetic-*` tasks read the small data that `mimkit-medical synthetic` writes,
for tests and the demo. Importing this module also registers the medical papers' published figures
(mimkit.medical.published).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mimkit.benchmarks.tasks import Task, register_task
from mimkit.core.errors import ConfigError, DataError
from mimkit.medical import published  # noqa: F401  (registers the medical papers' published figures)
from mimkit.medical.data import build_dataset, preprocessing_from
from mimkit.medical.layouts import CHEXPERT_COMPETITION

# Segmentation fine-tuning: the BTCV recipe of UNETR's and Hi-End-MAE's code (FineTuneConfig settings): DiceCE
# loss (core.finetune's default for Dice), AdamW with lr 1e-4 and weight decay 1e-5, no layer decay or drop path,
# linear warmup over a tenth of the steps then cosine to 0; whole test volumes one at a time, sliding window.
SEGMENTATION_SETTINGS = {"max_steps": 500, "batch_size": 2, "lr": 1e-4, "weight_decay": 1e-5, "warmup_steps": 50,
                         "min_lr": 0.0, "layer_decay": 1.0, "drop_path": 0.0, "eval_batch_size": 1, "overlap": 0.5}
SEGMENTATION_HEAD = {"feature_size": 16}  # UNETR's decoder width (Hi-End-MAE's BTCV recipe: 32)


# ============================================================================================ anomaly detection
def _binary_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    return float(roc_auc_score(labels, np.asarray(scores))) if len(np.unique(labels)) == 2 else None


def anomaly_scores(method: nn.Module, dataset, batch_size: int = 16, seed: int = 0, device=None,
                   with_maps: bool = False):
    """Scores (N,) from `method.anomaly_score` (higher = more anomalous), labels (N,) when the data has them,
    and the (N, 1, H, W) anomaly maps when `with_maps`."""
    from mimkit.core.evaluate import default_device

    if not hasattr(method, "anomaly_map"):
        raise ConfigError(f"method {getattr(method, 'method_name', type(method).__name__)!r} does not score "
                          f"anomalies; train a memmc_mae run (mimkit-medical pretrain --method memmc_mae)")
    device = default_device(device)
    home = next(method.parameters()).device
    method.to(device)
    scores, labels, maps = [], [], []
    try:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([item["image"] for item in items]).to(device)
            amap = method.anomaly_map(images, seed=seed).cpu()
            scores.append(amap.flatten(1).mean(1))
            labels += [item.get("label") for item in items]
            if with_maps:
                maps.append(amap)
    finally:
        method.to(home)
    out = torch.cat(scores).numpy(), labels
    return (*out, torch.cat(maps)) if with_maps else out


def normal_labels(dataset, normal_class: str = "normal") -> np.ndarray:
    """1 for anomalous, 0 for the normal class (matched case-insensitively among the dataset's classes)."""
    lowered = [c.lower() for c in dataset.classes]
    if normal_class.lower() not in lowered:
        raise DataError(f"no class folder named {normal_class!r} (case-insensitive) among {dataset.classes}; "
                        f"name the normal class with --normal-class")
    normal = lowered.index(normal_class.lower())
    return np.asarray([0 if item["label"] == normal else 1 for item in dataset.items])


def anomaly_auc(method: nn.Module, test_set, normal_class: str = "normal", masks: str | Path | None = None,
                batch_size: int = 16, seed: int = 0, device=None) -> dict:
    """Image-level ROC-AUC of the anomaly scores (normal class 0, every other class 1); with a `masks` folder
    (a PNG per anomalous image, same name, non-zero = anomalous) also the pixel-level ROC-AUC."""
    labels = normal_labels(test_set, normal_class)
    scores, _, maps = anomaly_scores(method, test_set, batch_size, seed, device, with_maps=True)
    result = {"protocol": "anomaly", "auroc": _binary_auc(labels, scores), "num_normal": int((labels == 0).sum()),
              "num_anomalous": int((labels == 1).sum())}
    if masks is not None and Path(masks).is_dir():
        from PIL import Image

        truth = []
        for item, amap in zip(test_set.items, maps):
            path = Path(masks) / Path(item["image"]).name
            mask = np.asarray(Image.open(path)) > 0 if path.is_file() else np.zeros(amap.shape[1:], bool)
            mask = torch.from_numpy(mask.astype(np.float32))[None, None]
            truth.append(F.interpolate(mask, size=amap.shape[1:], mode="nearest")[0, 0] > 0.5)
        result["pixel_auroc"] = _binary_auc(torch.stack(truth).flatten().numpy(), maps[:, 0].flatten().numpy())
    return result

def anomaly_runner(method: nn.Module, train_set, test_set, root: Path, normal_class: str = "normal",
                   batch_size: int = 16, seed: int = 0, device=None) -> dict:
    """The anomaly tasks' protocol: ROC-AUC of the method's anomaly scores on the test split (the method learnt
    from the normal training images); ROOT/masks, when present, adds the pixel-level ROC-AUC."""
    return anomaly_auc(method, test_set, normal_class, masks=Path(root) / "masks", batch_size=batch_size, seed=seed,
                       device=device)


# ============================================================================================ task readers
def _reader(layout: str, modality: str, spatial_dims: int, splits: tuple[str, str],
            options: dict | None = None) -> Callable[..., tuple[Dataset, Dataset]]:
    """A task reader: read(root, img_size, patch_size=16, in_chans=None, mean=None, std=None, augment=True,
    data=None, layout_options=None, **dataset_options) -> (train MedicalDataset, test MedicalDataset). The test
    set uses the training set's mean/std; `data` holds preprocessing settings (a recipe's data section) and
    `layout_options` the layout's (json_name, uncertainty, classes, views)."""

    def read(root: Path, img_size=None, patch_size=16, in_chans=None, mean=None, std=None, augment: bool = True,
             data: dict | None = None, layout_options: dict | None = None,
             **dataset_options) -> tuple[Dataset, Dataset]:
        settings = dict(data or {})
        if img_size is not None:
            settings["img_size"] = img_size
        pre = preprocessing_from(settings, modality, spatial_dims)
        common = dict(patch_size=patch_size, in_chans=in_chans, options={**(options or {}), **(layout_options or {})},
                      **dataset_options)
        train = build_dataset(root, layout, pre, split=splits[0], train=augment, mean=mean, std=std, **common)
        mean, std = train.stats
        test = build_dataset(root, layout, pre, split=splits[1], train=False, mean=mean, std=std,
                             whole_volume=layout == "msd", **{**common, "in_chans": train.in_chans})
        if layout != "msd" and train.classes != test.classes:
            raise DataError(f"{root}: the training and test splits hold different classes "
                            f"({train.classes} vs {test.classes})")
        return train, test
    return read


def _anomaly_reader(modality: str = "xray") -> Callable[..., tuple[Dataset, Dataset]]:
    """train/ (normal images only, unlabelled) and test/<class>/ folders with a normal class; `masks/` beside
    them is optional. Images are not augmented: anomaly scores compare them as they are."""

    def read(root: Path, img_size=None, patch_size=16, in_chans=None, mean=None, std=None, augment: bool = False,
             data: dict | None = None, layout_options: dict | None = None, **dataset_options):
        settings = {**(data or {}), **({"img_size": img_size} if img_size is not None else {})}
        pre = preprocessing_from(settings, modality, 2)
        common = dict(patch_size=patch_size, train=False, **dataset_options)
        train = build_dataset(Path(root) / "train", "folder", pre, labelled=False, in_chans=in_chans, mean=mean,
                              std=std, **common)
        mean, std = train.stats
        test = build_dataset(root, "classes", pre, split="test", in_chans=train.in_chans, mean=mean, std=std,
                             options=layout_options, **common)
        return train, test
    return read


# the pretraining run's data settings a task's images are prepared with (mean/std come with them)
RUN_DATA_KEYS = ("spacing", "intensity_range", "crop_pct", "mean", "std")


def _reader_options(encoder: nn.Module, data: dict | None, extra: dict | None) -> dict:
    """The reader arguments that make the data fit the encoder (size, channels) and its pretraining stats."""
    data = dict(data or {})
    options = {"img_size": tuple(encoder.img_size), "patch_size": tuple(encoder.patch_size),
               "in_chans": encoder.in_chans, "data": {k: v for k, v in data.items()
                                                      if k not in ("img_size", "mean", "std", "skipped_files")}}
    if data.get("mean") is not None and data.get("std") is not None:
        options.update(mean=data["mean"], std=data["std"])
    options.update(extra or {})
    return options


def fit_encoder(augment: bool, volumes: bool = False) -> Callable[[nn.Module, dict], dict]:
    """A task's `prepare`: the data at the encoder's size, patch and channels, preprocessed with the pretraining
    run's spacing, intensity window and mean/std; `augment` the training split (fine-tuning), `volumes` kept in
    memory once decoded and resampled (MONAI's CacheDataset)."""
    def prepare(encoder: nn.Module, run_config: dict | None) -> dict:
        data = {k: v for k, v in ((run_config or {}).get("data") or {}).items() if k in RUN_DATA_KEYS}
        return _reader_options(encoder, data, {"augment": augment, **({"cache": "memory"} if volumes else {})})
    return prepare


CHESTXRAY14_DETAILS = {"split": "train_official / test_list", "label_set": "14 findings"}
_DESCRIPTION = {
    "chestxray14": "root holds Data_Entry_2017.csv, test_list.txt, Thorax MAE's train_official.txt (lambert-x/"
                   "medical_mae data_splits/chestxray) and the PNGs (any sub-folder)",
    "chexpert": "root is CheXpert-v1.0(-small) with train.csv and valid.csv (valid.csv is the test split); "
                "uncertain labels as U-Ones",
    "msd": "root holds dataset.json ('training' and 'validation' lists, or the MSD's 'training' with the last "
           "20% held out) and the NIfTI images and label maps",
    "classes": "root holds train/<class>/ and test/<class>/ image folders",
    "anomaly": "root holds train/normal/ (normal images only), test/<class>/ with a 'normal' class and "
               "optionally masks/<image name> marking anomalous pixels",
}

_METRIC_KEYS = {"auroc": "auc_macro", "accuracy": "accuracy", "dice": "dice_mean"}


def _task(name: str, dataset: str, protocol: str, metric: str, reader, description: str,
          protocol_details: dict | None = None) -> Task:
    """A medical task with the head, data preparation and settings of its protocol."""
    details = dict(protocol_details or {})
    if protocol == "segmentation":
        # core.finetune's Dice leaves the background class out (compute_dice include_background=False)
        return Task(name, "medical", dataset, protocol, metric, reader, description, head="unetr",
                    head_options=SEGMENTATION_HEAD, prepare=fit_encoder(augment=True, volumes=True),
                    metric_key=_METRIC_KEYS[metric], settings=SEGMENTATION_SETTINGS,
                    protocol_details={"background": "excluded", **details})
    if protocol == "anomaly":  # images as they are: anomaly scores compare them unaugmented
        return Task(name, "medical", dataset, protocol, metric, reader, description, runner=anomaly_runner,
                    prepare=fit_encoder(augment=False), metric_key="auroc")
    return Task(name, "medical", dataset, protocol, metric, reader, description,
                head="linear" if protocol == "finetune" else None, prepare=fit_encoder(augment=protocol == "finetune"),
                metric_key=_METRIC_KEYS[metric], protocol_details=details)


TASKS = [
    # Thorax MAE trains on train_official (75,312 images) and holds out val_official; train_val_list has 86,524
    _task("chestxray14-finetune", "ChestX-ray14", "finetune", "auroc",
          _reader("chestxray14", "xray", 2, ("train_official", "test")),
          "NIH ChestX-ray14, 14 findings, fine-tuned on Thorax MAE's train_official list, mean ROC-AUC (%) on the "
          "official test list; " + _DESCRIPTION["chestxray14"], CHESTXRAY14_DETAILS),
    _task("chestxray14-linear", "ChestX-ray14", "linear", "auroc",
          _reader("chestxray14", "xray", 2, ("train_official", "test")),
          "NIH ChestX-ray14, linear probe on frozen features (train_official), mean ROC-AUC (%); "
          + _DESCRIPTION["chestxray14"], CHESTXRAY14_DETAILS),
    _task("chexpert-finetune", "CheXpert", "finetune", "auroc",
          _reader("chexpert", "xray", 2, ("train", "test")),
          "CheXpert, 14 observations, fine-tuned, mean ROC-AUC (%); " + _DESCRIPTION["chexpert"],
          {"label_set": "14 observations"}),
    _task("chexpert-competition-finetune", "CheXpert (5 competition tasks)", "finetune", "auroc",
          _reader("chexpert", "xray", 2, ("train", "test"), {"classes": list(CHEXPERT_COMPETITION)}),
          "CheXpert, the 5 competition observations, fine-tuned, mean ROC-AUC (%); " + _DESCRIPTION["chexpert"],
          {"label_set": "5 competition observations"}),
    _task("btcv-segmentation", "BTCV", "segmentation", "dice",
          _reader("msd", "ct", 3, ("train", "test"), {"json_name": "dataset_0.json"}),
          "BTCV abdomen CT, 13 organs, UNETR-style decoder fine-tuned, mean Dice (%) on the 'validation' list of "
          "dataset_0.json (the UNETR/Swin UNETR split); CT window [-175, 250] HU, 1.5 mm spacing, 96^3 crops"),
    _task("msd-segmentation", "MSD", "segmentation", "dice",
          _reader("msd", "ct", 3, ("train", "test")),
          "A Medical Segmentation Decathlon CT task, UNETR-style decoder fine-tuned, mean Dice (%); "
          + _DESCRIPTION["msd"]),
    _task("oct2017-finetune", "OCT2017", "finetune", "accuracy",
          _reader("classes", "oct", 2, ("train", "test")),
          "Kermany et al. OCT2017 (CNV, DME, DRUSEN, NORMAL), fine-tuned, accuracy (%); " + _DESCRIPTION["classes"]),
    _task("oct2017-linear", "OCT2017", "linear", "accuracy",
          _reader("classes", "oct", 2, ("train", "test")),
          "OCT2017, linear probe on frozen features, accuracy (%); " + _DESCRIPTION["classes"]),
    _task("fundus-finetune", "Fundus (class folders)", "finetune", "accuracy",
          _reader("classes", "fundus", 2, ("train", "test")),
          "Colour fundus photographs in class folders (e.g. APTOS, IDRiD grades), fine-tuned, accuracy (%); "
          + _DESCRIPTION["classes"]),
    _task("xray-anomaly", "Chest X-ray anomaly (normal vs abnormal)", "anomaly", "auroc",
          _anomaly_reader("xray"),
          "Anomaly detection trained on normal radiographs only (MemMC-MAE), image-level ROC-AUC (%); "
          + _DESCRIPTION["anomaly"]),
    # The project's own small data (`mimkit-medical synthetic --out DIR`): for tests and the demo.
    _task("synthetic-organs-segmentation", "mimkit synthetic organs (3D)", "segmentation", "dice",
          _reader("msd", "ct", 3, ("train", "test")),
          "32^3 CT-like volumes with 3 spherical organ classes (MONAI's create_test_image_3d), mean Dice (%)"),
    _task("synthetic-chestxray14-finetune", "mimkit synthetic ChestX-ray14", "finetune", "auroc",
          _reader("chestxray14", "xray", 2, ("train", "test")),
          "32^2 16-bit radiograph-like PNGs in the ChestX-ray14 layout, 3 findings drawn, mean ROC-AUC (%)"),
    _task("synthetic-chexpert-finetune", "mimkit synthetic CheXpert", "finetune", "auroc",
          _reader("chexpert", "xray", 2, ("train", "test"),
                  {"classes": ["Cardiomegaly", "Edema", "Pleural Effusion"]}),
          "32^2 radiograph-like PNGs in the CheXpert layout, 3 observations (U-Ones), mean ROC-AUC (%)"),
    _task("synthetic-oct-finetune", "mimkit synthetic OCT", "finetune", "accuracy",
          _reader("classes", "oct", 2, ("train", "test")),
          "32^2 OCT-like B-scans, NORMAL / DRUSEN / CNV class folders, accuracy (%)"),
    _task("synthetic-fundus-finetune", "mimkit synthetic fundus", "finetune", "accuracy",
          _reader("classes", "fundus", 2, ("train", "test")),
          "32^2 fundus-like RGB images, normal / haemorrhage / exudate class folders, accuracy (%)"),
    _task("synthetic-anomaly", "mimkit synthetic anomaly", "anomaly", "auroc", _anomaly_reader("xray"),
          "32^2 images, train/normal only; test/abnormal carry a bright square lesion (masks/), ROC-AUC (%)"),
]
for _registered in TASKS:
    register_task(_registered)

SYNTHETIC_TASK_DATA = {"synthetic-organs-segmentation": "organs", "synthetic-chestxray14-finetune": "chestxray14",
                       "synthetic-chexpert-finetune": "chexpert", "synthetic-oct-finetune": "oct",
                       "synthetic-fundus-finetune": "fundus", "synthetic-anomaly": "anomaly"}


__all__ = ["anomaly_scores", "anomaly_auc", "anomaly_runner", "normal_labels", "fit_encoder", "TASKS",
           "SYNTHETIC_TASK_DATA", "SEGMENTATION_SETTINGS", "SEGMENTATION_HEAD"]
