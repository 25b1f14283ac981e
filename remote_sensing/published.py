"""Published results of the remote-sensing methods, registered with mimkit.benchmarks on import (from bench.py).

Only figures read in a table of their source are here. SelectiveMAE: the official repository's README table
"Results on downstream tasks" (the paper's ViT-B / ViT-L models pretrained on OpticalRS-4M and OpticalRS-13M);
its object-detection columns (DIOR, DIOR-R mAP50) are left out because mimkit has no detection protocol.
SMARTIES and ChA-MAEViT print their EuroSAT / BigEarthNet / So2Sat figures only in their papers' tables, which we
could not read in full, so none of their figures is registered yet.
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

register_results(SELECTIVE_MAE_RESULTS)
