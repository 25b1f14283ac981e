"""Published results of the remote-sensing methods, registered with mimkit.benchmarks on import (from bench.py).

Only figures read in a table of their source are here. SelectiveMAE: the official repository's README table
"Results on downstream tasks" (the paper's ViT-B / ViT-L models pretrained on OpticalRS-4M and OpticalRS-13M);
its object-detection columns (DIOR, DIOR-R mAP50) are left out because mimkit has no detection protocol.
ChA-MAEViT: the paper's Table 1 ("Comparison of channel adaptive models"; mean of three runs, ViT-S backbone), read
in a full-text copy of the NeurIPS 2025 paper and matched by an independent paper note; image sizes are those of the
official repository's training-log configurations (chaudatascience/cha_mae_vit, training_logs/). SMARTIES prints its
EuroSAT / BigEarthNet figures only in its paper's tables (its README and project page list no numbers), which we
could not read, so none of its figures is registered yet.
"""
from __future__ import annotations

from mimkit.benchmarks.published import PublishedResult, register_results

SELECTIVE_MAE_SOURCE = ("Wang et al., Harnessing Massive Satellite Imagery with Efficient Masked Image Modeling, "
                        "ICCV 2025 (arXiv:2406.11933); official repository Fengxiang23/SelectiveMAE, README.md")
_TABLE = "README.md, Results on downstream tasks"


def _selective(value: float, data: str, protocol: str, metric: str, model: str, corpus: str, setting: str = "",
               note: str = "") -> PublishedResult:
    return PublishedResult(value=value, metric=metric, protocol=protocol, model=model, method="selective_mae",
                           data=data, source=SELECTIVE_MAE_SOURCE, table=_TABLE, img_size=224,
                           setting=f"pretrained on {corpus}" + (f"; {setting}" if setting else ""), note=note)


def _models(corpus: str, model: str, aid: tuple[float, float], resisc: tuple[float, float], loveda: float,
            spacenet: float) -> list[PublishedResult]:
    rows = []
    for data, values in (("AID", aid), ("NWPU-RESISC45", resisc)):
        for ratio, value in zip(("20%", "50%"), values):
            rows.append(_selective(value, data, "finetune", "accuracy", model, corpus,
                                   f"{ratio} of the images for training", "overall accuracy (%)"))
    rows.append(_selective(loveda, "LoveDA", "segmentation", "miou", model, corpus, note="mean IoU (%)"))
    rows.append(_selective(spacenet, "SpaceNet v1", "segmentation", "mf1", model, corpus, note="mean F1 (%)"))
    return rows


SELECTIVE_MAE_RESULTS = [
    *_models("OpticalRS-4M", "ViT-B/16", (96.90, 98.12), (93.35, 94.58), 53.05, 79.50),
    *_models("OpticalRS-4M", "ViT-L/16", (97.25, 98.48), (94.57, 95.77), 54.31, 79.46),
    *_models("OpticalRS-13M", "ViT-B/16", (97.10, 98.28), (93.70, 95.48), 52.68, 79.44),
    *_models("OpticalRS-13M", "ViT-L/16", (97.49, 98.52), (94.73, 96.36), 53.92, 79.48),
]


CHA_MAE_SOURCE = ("Pham, Caicedo and Plummer, ChA-MAEViT: Unifying Channel-Aware Masked Autoencoders and Multi-Channel "
                  "Vision Transformers for Improved Cross-Channel Learning, NeurIPS 2025 (arXiv:2503.19331)")
_CHA_TABLE = "Table 1, Comparison of channel adaptive models"
# The paper trains its task loss jointly with the reconstruction loss (no separate pretraining stage).
_CHA_JOINT = "classification loss trained jointly with the reconstruction loss"


def _cha(value: float, spread: float, data: str, protocol: str, metric: str, img_size: int, setting: str,
         note: str) -> PublishedResult:
    return PublishedResult(value=value, metric=metric, protocol=protocol, model="ViT-S", method="cha_mae", data=data,
                           source=CHA_MAE_SOURCE, table=_CHA_TABLE, img_size=img_size,
                           setting=f"{_CHA_JOINT}; {setting}",
                           note=f"{note}; mean ± {spread} over three runs; encoder of 11 blocks (one removed to fit "
                                f"the decoder)")


CHA_MAE_RESULTS = [
    _cha(67.44, 0.38, "So2Sat LCZ42", "finetune", "accuracy", 32, "city split, all 18 channels at test (Full)",
         "top-1 accuracy (%)"),
    _cha(52.11, 0.49, "So2Sat LCZ42", "finetune", "accuracy", 32,
         "city split, the 8 Sentinel-1 channels only at test (Partial)", "top-1 accuracy (%)"),
    _cha(90.73, 0.14, "JUMP-CP", "finetune", "accuracy", 224, "plate BR00116991, all 8 channels at test (Full)",
         "top-1 accuracy (%), 161 classes"),
    _cha(68.05, 0.21, "JUMP-CP", "finetune", "accuracy", 224,
         "plate BR00116991, the 5 fluorescence channels only at test (Partial)", "top-1 accuracy (%), 161 classes"),
    _cha(74.63, 0.54, "CHAMMI", "knn", "f1", 224, "features scored by the CHAMMI benchmark's nearest-neighbour "
         "classifier", "average F1 score (%) over the WTC-11 and HPA tasks"),
]

register_results(SELECTIVE_MAE_RESULTS)
register_results(CHA_MAE_RESULTS)
