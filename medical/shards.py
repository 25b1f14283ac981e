"""Medical images and volumes as LitData shards, preprocessed once: `mimkit-medical shard`.

`write_medical_shards` runs the deterministic part of the MONAI pipeline (reading, RAS orientation, resampling to
the spacing, CT window / MR z-score, foreground crop, padding to the ROI; transforms.build_pipelines) once per file
and stores its output with `litdata.optimize`, plus `mimkit_medical_shards.json` (the preprocessing settings, the
channel count, the source paths and the files that could not be used and why). `MedicalShardDataset` is a
`MedicalDataset` whose prepared inputs come from the shards instead of the files, so the random part (3D crops,
flips, 2D resized crops) and the per-sample seeds are those of the folder path: the same key gives the same tensor.
Shards are tied to their preprocessing: a run asking for another spacing, window or ROI is refused by name.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import torch

from mimkit.core.errors import ConfigError, DataError
from mimkit.core.shards import (ReopensInWorkers, check_out, field_text, optimize, own_reader, read_meta, text_field,
                                write_meta)

from .data import MedicalData, MedicalDataset, Preprocessing
from .layouts import layout_items
from .transforms import GuardedPrepare, build_pipelines

META = "mimkit_medical_shards.json"
FORMAT = "mimkit-medical-shards/1"
# Preprocessing fields that shape the stored (deterministic) part; Preprocessing.key() hashes the same ones.
PREPARED_FIELDS = ("modality", "spatial_dims", "img_size", "slices", "spacing", "intensity_range", "foreground",
                   "min_roi_fraction")


def is_medical_shard_folder(path: str | Path | None) -> bool:
    """Whether `path` holds shards written by `write_medical_shards`."""
    return path is not None and (Path(path) / "index.json").is_file() and (Path(path) / META).is_file()


def shard_modality(root) -> str | None:
    """The modality of the shards in `root`, or None when `root` holds none (or their metadata is unreadable)."""
    if not isinstance(root, (str, Path)) or not is_medical_shard_folder(root):
        return None
    try:
        return read_meta(Path(root), META, FORMAT)["preprocessing"]["modality"]
    except DataError:
        return None  # reading the data names the problem


def _prepared_settings(pre: Preprocessing) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(pre).items()
            if k in PREPARED_FIELDS}


class _Prepare:
    """One file through the deterministic pipeline, in a LitData worker (built there: MONAI's lambdas do not pickle)."""

    def __init__(self, pre: Preprocessing, in_chans: int):
        self.pre, self.in_chans, self.guarded = pre, in_chans, None

    def __call__(self, item: dict) -> dict:
        if self.guarded is None:
            self.guarded = GuardedPrepare(build_pipelines(self.pre, self.in_chans, None, False)[0])
        out = self.guarded(item)
        if "error" in out:
            raise DataError(out["error"])
        return {"image": out["image"].float().contiguous().numpy(), "path": text_field(item["image"]),
                "index": int(item["index"])}


def write_medical_shards(data: MedicalData, out: str | Path, img_size: int | Sequence[int] | None = None,
                         in_chans: int | None = None, chunk_bytes: str = "256MB", num_workers: int = 1,
                         overwrite: bool = False) -> dict:
    """Prepare the inputs of `data` (its root, layout, modality and preprocessing settings; 3D: its roi, else
    `img_size`) once into LitData shards in `out`; returns the metadata written to OUT/mimkit_medical_shards.json."""
    if data.root is None:
        raise ConfigError("no data given: pass --data DIR (a folder of images or volumes)")
    if data.volume_data is not None:
        raise ConfigError("--volume-data (uni4eye's paired volumes): shard the images and the volumes separately")
    root = Path(data.root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"shard source {str(root)!r} is not a folder")
    out = check_out(out, root, overwrite, is_medical_shard_folder)
    dims = data.dims()
    if dims == 3 and data.roi:
        img_size = data.roi[0] if len(data.roi) == 1 else list(data.roi)
    pre = data.preprocessing(img_size, dims)
    items, _, _, skipped = layout_items(data.layout, root, pre.volumes, None,
                                        {"normal_only": data.normal_only, "normal_class": data.normal_class})
    # probing (rank, channels, spacing against the ROI) is MedicalDataset's; mean/std given: nothing is prepared here
    probed = MedicalDataset([{"image": item["image"]} for item in items], pre, in_chans=in_chans, patch_size=1,
                            mean=[0.0], std=[1.0], strict=data.strict, root=root)
    inputs = [{"image": item["image"], "index": i} for i, item in enumerate(probed.items)]
    failures = optimize(_Prepare(pre, probed.in_chans), inputs, out, chunk_bytes, num_workers)
    if data.strict and failures:
        raise DataError(f"{failures[0]['reason']} (strict: drop --strict-data to skip and count such files)")
    failed = {f["path"] for f in failures}
    skipped = [{"path": str(p), "reason": r} for p, r in list(skipped) + probed.skipped] + failures
    meta = {"format": FORMAT, "source": str(root), "layout": data.layout, "preprocessing": _prepared_settings(pre),
            "key": pre.key(), "in_chans": probed.in_chans, "count": len(inputs) - len(failures),
            "paths": [item["image"] for item in inputs if item["image"] not in failed], "skipped": skipped,
            "chunk_bytes": chunk_bytes}
    write_meta(out, META, meta)
    return meta


class MedicalShardDataset(ReopensInWorkers, MedicalDataset):
    """A MedicalDataset over shards from `write_medical_shards`: the prepared inputs are read, not computed; the
    preprocessing must be the one the shards were written with. Same arguments as MedicalDataset after `root`."""

    # each loader worker opens its own reader and builds its own pipelines (MONAI's lambdas do not pickle)
    not_pickled = ("store", "prepare", "augment", "evaluate")

    def __init__(self, root: str | Path, preprocessing: Preprocessing, **options):
        root = Path(root)
        if not is_medical_shard_folder(root):
            raise DataError(f"{root} is not a mimkit-medical shard folder (expected index.json and {META}; write one "
                            f"with `mimkit-medical shard --data FOLDER --out {root}`)")
        self.meta = read_meta(root, META, FORMAT)
        wanted, stored = _prepared_settings(preprocessing), self.meta["preprocessing"]
        differ = [k for k in PREPARED_FIELDS if wanted[k] != stored[k]]
        if differ:
            raise ConfigError(f"the shards in {root} were prepared with {differ[0]}={stored[differ[0]]} but this run "
                              f"asks for {differ[0]}={wanted[differ[0]]}; pass the shards' settings or write the "
                              f"shards again with `mimkit-medical shard`")
        super().__init__([{"image": path} for path in self.meta["paths"]], preprocessing, root=root, **options)

    def _probe_all(self, in_chans: int | None) -> int:
        stored = int(self.meta["in_chans"])
        if in_chans is not None and int(in_chans) != stored:
            raise DataError(f"the shards in {self.root} hold {stored}-channel inputs but in_chans is {in_chans}")
        self.skipped.extend((s["path"], s["reason"]) for s in self.meta.get("skipped", []))
        return stored

    def _build_store(self, cache: str, cache_dir, workers: int):
        from litdata import StreamingDataset

        stream = StreamingDataset(str(self.root))
        if len(stream) != self.meta["count"]:
            raise DataError(f"{self.root}: the shards hold {len(stream)} samples but {META} says "
                            f"{self.meta['count']} (an interrupted write?); write them again")
        self._reader_pid = os.getpid()
        return stream

    def _prepared(self, index: int) -> dict:
        sample = own_reader(self, "store")[self.store_index[index]]
        return {"image": torch.from_numpy(sample["image"]), "path": field_text(sample["path"])}

    def __setstate__(self, state):
        super().__setstate__(state)  # the reader opens on first use (own_reader); the pipelines are built here
        self.prepare, self.augment, self.evaluate = build_pipelines(self.pre, self.in_chans, self.label_kind,
                                                                    self.whole_volume)


@dataclasses.dataclass
class MedicalShardsData(MedicalData):
    __doc__ = MedicalData.__doc__.replace("    Args:\n        root: the data folder (",
                                          "    Args:\n        root: the data folder, or shards from `mimkit-medical "
                                          "shard` (")

    def checked_modality(self) -> str:
        self.modality = self.modality or shard_modality(self.root)  # shards know theirs
        return super().checked_modality()

    def build(self, model: dict, method: str):
        """MedicalData.build; for shards: the prepared inputs read from them, and the preprocessing settings not
        given here taken from them (those given must agree)."""
        if not is_medical_shard_folder(self.root):
            return super().build(model, method)
        from mimkit.core.config import encoder_setting, set_encoder_setting
        from mimkit.core.registry import method_class

        if self.volume_data is not None or method in ("urfound", "uni4eye"):
            raise ConfigError(f"{self.root}: shards hold one kind of unlabelled input; {method} (captions, paired "
                              f"2D and 3D inputs) reads the folders")
        stored = read_meta(Path(self.root), META, FORMAT)["preprocessing"]
        self.modality = self.modality or stored["modality"]
        self.slices = self.slices or stored["slices"]
        for name in ("spatial_dims", "spacing", "intensity_range", "foreground"):
            if getattr(self, name) is None:
                setattr(self, name, stored[name])
        dims = self.dims()
        if dims not in getattr(method_class(method), "supported_dims", (2,)):
            raise ConfigError(f"method {method!r} does not train on {dims}D inputs, which the shards in {self.root} "
                              f"hold")
        set_encoder_setting(model, "spatial_dims", dims)
        img_size = encoder_setting(model, "img_size", method)
        if dims == 3:  # the ROI is the model's input size (MedicalData.build)
            roi = self.roi or stored["img_size"]
            img_size = roi[0] if len(roi) == 1 else list(roi)
            set_encoder_setting(model, "img_size", img_size)
        pre = self.preprocessing(img_size, dims)
        dataset = MedicalShardDataset(self.root, pre, patch_size=encoder_setting(model, "patch_size", method),
                                      in_chans=encoder_setting(model, "in_chans"), mean=self.mean, std=self.std,
                                      samples_per_volume=int(self.crops_per_volume), strict=self.strict)
        self.spatial_dims = dims
        self.mean, self.std = ([float(v) for v in values] for values in dataset.stats)
        self.spacing = list(pre.spacing) if pre.spacing is not None else None
        self.intensity_range = tuple(pre.intensity_range) if pre.intensity_range is not None else None
        return dataset


def shard_summary(meta: dict, out: str | Path) -> list[str]:
    """The lines `mimkit-medical shard` prints."""
    pre = meta["preprocessing"]
    lines = [f"wrote {meta['count']} prepared {'volumes' if pre['spatial_dims'] == 3 or pre['slices'] else 'images'} "
             f"({meta['in_chans']} channel(s); {pre['modality']}, size {pre['img_size']}, spacing {pre['spacing']}, "
             f"window {pre['intensity_range']}) as shards in {out}"]
    if meta["skipped"]:
        lines.append(f"skipped {len(meta['skipped'])} unusable file(s) (listed in {Path(out) / META}); first: "
                     f"{meta['skipped'][0]['reason']}")
    return lines


__all__ = ["write_medical_shards", "MedicalShardDataset", "MedicalShardsData", "is_medical_shard_folder", "META"]
