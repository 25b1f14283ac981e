"""Published results of the faces methods, registered with mimkit.benchmarks on import (from bench.py).

Vec2Face (Wu et al., ICLR 2025): the official repository's README, "Dataset scaling up to 300K identities and
15M images" table: face-verification accuracy (percent) of an ArcFace IResNet-50 trained from scratch on each
generated HSFace set (its first table's HSFace10K row is the same). The protocol is "finetune" for want of a
train-on-generated-data protocol: the recognizer is trained from random initialisation, not from Vec2Face.

GM-DF (Lai et al., arXiv 2406.20078): its result tables could not be read here (only the abstract was reachable)
and no official code or README with figures exists, so none of its numbers is registered rather than guessed.
"""
from __future__ import annotations

from mimkit.benchmarks.published import PublishedResult, register_results

GM_DF_RESULTS: list[PublishedResult] = []  # deliberately empty: see the module docstring
register_results(GM_DF_RESULTS)

VEC2FACE_SOURCE = ("Wu et al., Vec2Face: Scaling Face Dataset Generation with Loosely Constrained Vectors, ICLR 2025; "
                   "official repository HaiyuWu/Vec2Face, README.md")
_VEC2FACE_TABLE = "README.md, Performance: dataset scaling up to 300K identities and 15M images"
_VEC2FACE_SETS = ("LFW", "CFP-FP", "CPLFW", "AgeDB", "CALFW", "mean of the five")
# generated training set (identities, images) -> accuracies in the order of _VEC2FACE_SETS
_VEC2FACE_ROWS = {
    ("HSFace10K", "0.5M"): (98.87, 88.97, 85.47, 93.12, 93.57, 92.00),
    ("HSFace20K", "1M"): (98.87, 89.87, 86.13, 93.85, 93.65, 92.47),
    ("HSFace100K", "5M"): (99.25, 90.36, 86.75, 94.38, 94.12, 92.97),
    ("HSFace200K", "10M"): (99.23, 90.81, 87.30, 94.22, 94.52, 93.22),
    ("HSFace300K", "15M"): (99.30, 91.54, 87.70, 94.45, 94.58, 93.52),
}
VEC2FACE_RESULTS = [
    PublishedResult(value=value, metric="accuracy", protocol="finetune", model="IResNet-50 (ArcFace)",
                    method="vec2face", data=data, source=VEC2FACE_SOURCE, table=_VEC2FACE_TABLE, img_size=112,
                    setting=f"recognizer trained from scratch on {name} ({images} generated images)",
                    note="face-verification accuracy (percent) on the data set's standard pairs",
                    protocol_details=dict(split="the set's standard verification pairs, 10 folds",
                                          metric_variant="verification accuracy, threshold chosen on 9 folds"))
    for (name, images), values in _VEC2FACE_ROWS.items() for data, value in zip(_VEC2FACE_SETS, values)]
register_results(VEC2FACE_RESULTS)

__all__ = ["GM_DF_RESULTS", "VEC2FACE_RESULTS"]
