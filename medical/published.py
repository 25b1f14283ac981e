"""Published results of the medical methods, registered with mimkit.benchmarks on import.

Only figures read in a table of their source are here. Thorax MAE: the official repository's README lists
the fine-tuned results of the paper's released checkpoints (its first table is the models of the paper's
Table 1). Hi-End-MAE, UrFound, Uni4Eye and MemMC-MAE print their results only in their papers' tables,
which we could not read, so none of their figures is registered.
"""
from __future__ import annotations

from mimkit.benchmarks.published import PublishedResult, register_results

THORAX_SOURCE = ("Xiao et al., Delving into Masked Autoencoders for Multi-Label Thorax Disease Classification, "
                 "WACV 2023; official repository lambert-x/medical_mae, README.md")
_TABLE_1 = "README.md, checkpoint table (the paper's Table 1 models)"
_TABLE_2 = "README.md, second checkpoint table"
_SMALL = "ViT-S/16 MAE pretrained on 0.3M chest X-rays (CheXpert + ChestX-ray14)"
_BASE = "ViT-B/16 MAE pretrained on 0.5M chest X-rays (CheXpert + ChestX-ray14 + MIMIC-CXR)"


def _thorax(value: float, metric: str, model: str, data: str, table: str, setting: str,
            note: str = "", details: dict | None = None) -> PublishedResult:
    return PublishedResult(value=value, metric=metric, protocol="finetune", model=model, method="thorax_mae",
                           data=data, source=THORAX_SOURCE, table=table, img_size=224, setting=setting, note=note,
                           protocol_details=dict(details or {}))


_MEAN_AUC = "mean ROC-AUC over the 14 labels (percent), official test split"
# main_finetune_chestxray.py: data_splits/chestxray/train_official.txt (75,312 images), val_official held out
_NIH = {"split": "train_official / test_list", "label_set": "14 findings"}
# the CheXpert figures are the 5 competition observations (main_finetune_chestxray.py --dataset chexpert)
_COMPETITION = {"label_set": "5 competition observations"}

THORAX_RESULTS = [
    _thorax(82.3, "auroc", "ViT-S/16", "ChestX-ray14", _TABLE_1, _SMALL, _MEAN_AUC, _NIH),
    _thorax(83.0, "auroc", "ViT-B/16", "ChestX-ray14", _TABLE_1, _BASE, _MEAN_AUC, _NIH),
    _thorax(89.2, "auroc", "ViT-S/16", "CheXpert (5 competition tasks)", _TABLE_2, _SMALL,
            "mean ROC-AUC over the 5 competition observations (percent)", _COMPETITION),
    _thorax(89.3, "auroc", "ViT-B/16", "CheXpert (5 competition tasks)", _TABLE_2, _BASE,
            "mean ROC-AUC over the 5 competition observations (percent)", _COMPETITION),
    _thorax(95.2, "accuracy", "ViT-S/16", "COVIDx", _TABLE_2, _SMALL, "accuracy (percent)"),
    _thorax(95.3, "accuracy", "ViT-B/16", "COVIDx", _TABLE_2, _BASE, "accuracy (percent)"),
]

register_results(THORAX_RESULTS)
