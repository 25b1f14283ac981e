"""Remote-sensing benchmark tasks, registered with mimkit.benchmarks: EuroSAT, BigEarthNet, So2Sat, GeoTIFF class
folders and GeoTIFF segmentation; `mimkit.benchmarks.runner.run_task` runs them.

Every task reads a local copy of its public dataset (never a download): EuroSAT, BigEarthNet and So2Sat through
torchgeo in its layouts (`mimkit.remote_sensing.data`), the GeoTIFF tasks from folders (`root/train/<class>/*.tif`,
`root/test/<class>/*.tif`; `root/{train,test}/{images,masks}/*.tif`). `mimkit.remote_sensing.synthetic` writes
all of these layouts from spectral signatures, for tests and the demo. Each task's `prepare` reads the data the
way the encoder was pretrained (image size, bands in its order, sensor, scale and, where they apply, the run's
band statistics); its `check` refuses an encoder that cannot read the task's bands. Segmentation trains the
"segmentation" head of core.heads over the frozen encoder's patch tokens (SEGMENTATION_OPTIONS).

    from mimkit.benchmarks.runner import run_task
    rows = run_task("eurosat-linear", encoder, "data/eurosat")   # [{"task", "metric", "value" (percent), ...}]
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from mimkit.benchmarks.tasks import Task, register_task
from mimkit.core.errors import ConfigError, DataError

from . import published  # noqa: F401  (registers the remote-sensing papers' published figures)
from .data import IGNORE_INDEX, SENTINEL2_L2A, GeoTiffDataset, bigearthnet, eurosat, so2sat

# The segmentation protocol: masks under "mask" (nodata pixels IGNORE_INDEX), a head trained on the frozen
# encoder's patch tokens with AdamW and a cosine schedule, no warm-up, label smoothing or validation split.
SEGMENTATION_OPTIONS = dict(target_key="mask", ignore_index=IGNORE_INDEX, freeze_encoder=True, epochs=30, lr=1e-3,
                            weight_decay=1e-4, batch_size=16, warmup_epochs=0, layer_decay=1.0, drop_path=0.0,
                            label_smoothing=0.0, val_fraction=0)


# ---------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class BandStatistics:
    """A pretraining run's per-band mean and std, by band name, at the scale its data were read at."""

    scale: float | None
    mean: Mapping[str, float]
    std: Mapping[str, float]

    @classmethod
    def of_run(cls, data: Mapping) -> BandStatistics | None:
        """From a run config's `data` section; None when it does not record the bands' statistics."""
        names, mean, std = data.get("band_names"), data.get("mean"), data.get("std")
        if not names or mean is None or std is None or not len(names) == len(mean) == len(std):
            return None
        return cls(data.get("scale"), dict(zip(names, map(float, mean))), dict(zip(names, map(float, std))))

    def select(self, bands: Sequence, scale: float | None) -> dict:
        """{"mean", "std"} for `bands` read at `scale`, or {} (the reader computes its own) when the run did not
        read every one of these bands at that scale."""
        same_scale = (scale is None) == (self.scale is None) and (scale is None or math.isclose(scale, self.scale))
        if not same_scale or not all(isinstance(b, str) and b in self.mean for b in bands):
            return {}
        return {"mean": [self.mean[b] for b in bands], "std": [self.std[b] for b in bands]}


def _statistics(statistics: BandStatistics | None, bands, scale, options: dict) -> dict:
    """The reader options with the run's statistics for `bands`, unless mean/std are given."""
    if statistics is None or bands is None or "mean" in options or "std" in options:
        return options
    return {**statistics.select(list(bands), scale), **options}


# ---------------------------------------------------------------------------------------------- readers
def _pair(train: Dataset, test: Dataset, root: Path) -> tuple[Dataset, Dataset]:
    if getattr(train, "classes", None) and getattr(test, "classes", None) and train.classes != test.classes:
        raise DataError(f"{root}: the training and test data hold different classes "
                        f"({len(train.classes)} vs {len(test.classes)})")
    return train, test


def eurosat_reader(root: Path, img_size=64, bands: Sequence[str] | None = None, train_split: str = "train",
                   test_split: str = "test", train_transform="eval", statistics: BandStatistics | None = None,
                   **options) -> tuple[Dataset, Dataset]:
    """EuroSAT train/test through torchgeo; the test split is normalised with the training split's statistics (or
    the pretraining run's, `statistics`, when they cover the bands read)."""
    from torchgeo.datasets import EuroSAT

    names = bands if bands is not None else EuroSAT.all_band_names
    options = _statistics(statistics, names, options.get("scale", 1e-4), options)
    train = eurosat(root, train_split, bands, img_size, transform=train_transform, **options)
    test = eurosat(root, test_split, bands, img_size, transform="eval", mean=train.mean, std=train.std,
                   **{k: v for k, v in options.items() if k not in ("mean", "std")})
    return _pair(train, test, root)


def bigearthnet_reader(root: Path, img_size=120, num_classes: int = 19, train_split: str = "train",
                       test_split: str = "test", train_transform="eval", statistics: BandStatistics | None = None,
                       **options) -> tuple[Dataset, Dataset]:
    """BigEarthNet v1 Sentinel-2 train/test (multi-label) through torchgeo."""
    names = [b.name for b in SENTINEL2_L2A.bands]
    options = _statistics(statistics, names, options.get("scale", 1e-4), options)
    train = bigearthnet(root, train_split, num_classes, img_size, transform=train_transform, **options)
    test = bigearthnet(root, test_split, num_classes, img_size, transform="eval", mean=train.mean, std=train.std,
                       **{k: v for k, v in options.items() if k not in ("mean", "std")})
    return train, test


def so2sat_reader(root: Path, img_size=32, version: str = "2", bands: Sequence[str] | None = None,
                  train_split: str = "train", test_split: str = "test", train_transform="eval",
                  statistics: BandStatistics | None = None, **options) -> tuple[Dataset, Dataset]:
    """So2Sat LCZ42 train/test through torchgeo (h5 files; needs h5py)."""
    from torchgeo.datasets import So2Sat

    options = _statistics(statistics, bands if bands is not None else So2Sat.all_band_names, None, options)
    train = so2sat(root, train_split, version, bands, img_size, transform=train_transform, **options)
    test = so2sat(root, test_split, version, bands, img_size, transform="eval", mean=train.mean, std=train.std,
                  **{k: v for k, v in options.items() if k not in ("mean", "std")})
    return _pair(train, test, root)


def tiles_reader(root: Path, img_size=64, patch_size=8, sensor: str = "sentinel2", bands=None,
                 scale: float | None = 1e-4, train_dir: str = "train", test_dir: str = "test", train_transform="eval",
                 statistics: BandStatistics | None = None, **options) -> tuple[Dataset, Dataset]:
    """GeoTIFF class folders: ROOT/train/<class>/*.tif and ROOT/test/<class>/*.tif."""
    options = _statistics(statistics, bands if isinstance(bands, (list, tuple)) else None, scale, options)
    common = dict(img_size=img_size, patch_size=patch_size, sensor=sensor, bands=bands, scale=scale, labelled=True,
                  **options)
    train = GeoTiffDataset(Path(root) / train_dir, transform=train_transform, **common)
    test = GeoTiffDataset(Path(root) / test_dir, transform="eval", mean=train.mean, std=train.std,
                          **{k: v for k, v in common.items() if k not in ("mean", "std")})
    return _pair(train, test, root)


def segmentation_reader(root: Path, img_size=64, patch_size=8, sensor: str = "sentinel2", bands=None,
                        scale: float | None = 1e-4, train_dir: str = "train", test_dir: str = "test",
                        statistics: BandStatistics | None = None, **options) -> tuple[Dataset, Dataset]:
    """GeoTIFF image/mask pairs: ROOT/<split>/images/*.tif with ROOT/<split>/masks/*.tif (class per pixel, 255 =
    nodata); ROOT/classes.json, if present, names the classes."""
    root = Path(root)
    options = _statistics(statistics, bands if isinstance(bands, (list, tuple)) else None, scale, options)
    common = dict(img_size=img_size, patch_size=patch_size, sensor=sensor, bands=bands, scale=scale, labelled=False,
                  transform="eval", **options)
    train = GeoTiffDataset(root / train_dir / "images", mask_root=root / train_dir / "masks", **common)
    test = GeoTiffDataset(root / test_dir / "images", mask_root=root / test_dir / "masks", mean=train.mean,
                          std=train.std, **{k: v for k, v in common.items() if k not in ("mean", "std")})
    names = root / "classes.json"
    if names.is_file():
        train.classes = test.classes = json.loads(names.read_text())
    return train, test


# ---------------------------------------------------------------------------------------------- prepare / check
def _pretraining_data(run_config: Mapping | None) -> dict:
    return dict((run_config or {}).get("data") or {})


def _with_statistics(options: dict, data: dict) -> dict:
    statistics = BandStatistics.of_run(data)
    return {**options, "statistics": statistics} if statistics is not None else options


def _prepare_torchgeo(band_names):
    """prepare() of a torchgeo task whose data knows the bands `band_names()` (None: a fixed set)."""
    def prepare(encoder: nn.Module, run_config: Mapping | None = None) -> dict:
        data = _pretraining_data(run_config)
        options = {"img_size": tuple(encoder.img_size)}
        bands = data.get("band_names")
        # the bands the encoder was pretrained on, in its order, when this dataset has them all
        if band_names is not None and bands and set(bands) <= set(band_names()):
            options["bands"] = list(bands)
        return _with_statistics(options, data)

    return prepare


def _eurosat_bands() -> tuple[str, ...]:
    from torchgeo.datasets import EuroSAT

    return tuple(EuroSAT.all_band_names)


def _so2sat_bands() -> tuple[str, ...]:
    from torchgeo.datasets import So2Sat

    return tuple(So2Sat.all_band_names)


def prepare_geotiff(encoder: nn.Module, run_config: Mapping | None = None) -> dict:
    """Reader options of the GeoTIFF tasks: the encoder's image and patch size, the run's sensor, scale, offset and
    bands (in the encoder's order) and band statistics."""
    data = _pretraining_data(run_config)
    options = {"img_size": tuple(encoder.img_size), "patch_size": tuple(encoder.patch_size)}
    for key in ("sensor", "scale", "offset"):
        if data.get(key) is not None:
            options[key] = data[key]
    if data.get("band_names"):
        options["bands"] = list(data["band_names"])
    return _with_statistics(options, data)


def check_encoder_fits(encoder: nn.Module, dataset) -> None:
    """The encoder must read the task's bands: the same count, and the same wavelengths when it knows its own."""
    bands = getattr(dataset, "band_names", None) or []
    if getattr(dataset, "in_chans", encoder.in_chans) != encoder.in_chans:
        raise ConfigError(f"the encoder reads {encoder.in_chans} channel(s) but the task's data has {dataset.in_chans} "
                          f"band(s) ({', '.join(bands)}); choose the bands the encoder was pretrained on (--bands), "
                          f"or adapt a checkpoint's patch embedding (--adapt-in-chans)")
    own = getattr(encoder, "band_wavelengths", None)
    data = getattr(dataset, "wavelengths", None)
    if own is not None and data is not None and not torch.allclose(own.float().cpu(), data.float(), atol=1.0):
        raise ConfigError(f"the spectrum-aware encoder's bands are at {own.tolist()} nm but the task's data has bands "
                          f"at {data.tolist()} nm ({', '.join(bands)}); select the same bands in the same order")


# ---------------------------------------------------------------------------------------------- tasks
def _register(name: str, dataset: str, protocol: str, metric: str, reader, prepare, description: str,
              **fields) -> None:
    register_task(Task(name=name, domain="remote_sensing", dataset=dataset, protocol=protocol, metric=metric,
                       reader=reader, description=description, check=check_encoder_fits, prepare=prepare, **fields))


for _protocol in ("knn", "linear", "finetune"):
    _register(f"eurosat-{_protocol}", "EuroSAT", _protocol, "accuracy", eurosat_reader,
              _prepare_torchgeo(_eurosat_bands),
              f"EuroSAT land-cover classification (Sentinel-2, 13 bands, 10 classes), {_protocol}, overall accuracy "
              f"(%) on torchgeo's test split; data: a local copy in torchgeo's EuroSAT layout",
              protocol_details={"split": "torchgeo train/test", "bands": "13 Sentinel-2 L1C bands"})
    _register(f"geotiff-tiles-{_protocol}", "GeoTIFF tiles", _protocol, "accuracy", tiles_reader, prepare_geotiff,
              f"classification of GeoTIFF tiles in ROOT/train/<class> and ROOT/test/<class>, {_protocol}, overall "
              f"accuracy (%)")
for _protocol in ("linear", "finetune"):
    # SMARTIES (and most of the remote-sensing literature) reports micro mAP; the macro one is its own task
    _register(f"bigearthnet-{_protocol}", "BigEarthNet", _protocol, "map", bigearthnet_reader,
              _prepare_torchgeo(None),
              f"BigEarthNet v1 Sentinel-2 multi-label classification (19 classes), {_protocol}, micro mean average "
              f"precision (%); data: a local copy in torchgeo's BigEarthNet layout",
              metric_key="average_precision_micro",
              protocol_details={"metric_variant": "micro", "label_set": "19 classes"})
    _register(f"bigearthnet-{_protocol}-macro", "BigEarthNet", _protocol, "map", bigearthnet_reader,
              _prepare_torchgeo(None),
              f"BigEarthNet v1 Sentinel-2 multi-label classification (19 classes), {_protocol}, macro mean average "
              f"precision (%, the mean of the per-class APs); data: a local copy in torchgeo's BigEarthNet layout",
              metric_key="average_precision_macro",
              protocol_details={"metric_variant": "macro", "label_set": "19 classes"})
    _register(f"so2sat-{_protocol}", "So2Sat LCZ42", _protocol, "accuracy", so2sat_reader,
              _prepare_torchgeo(_so2sat_bands),
              f"So2Sat LCZ42 local-climate-zone classification (8 Sentinel-1 + 10 Sentinel-2 channels, 17 classes), "
              f"{_protocol}, overall accuracy (%); data: the h5 files (needs h5py)")
_register("geotiff-segmentation", "GeoTIFF segmentation", "segmentation", "miou", segmentation_reader,
          prepare_geotiff,
          "semantic segmentation of GeoTIFF image/mask pairs (ROOT/{train,test}/{images,masks}), a linear head over "
          "the frozen encoder's patch tokens, mean IoU (%)",
          head="segmentation", head_options={"decoder": "linear"}, settings=SEGMENTATION_OPTIONS)

__all__ = ["eurosat_reader", "bigearthnet_reader", "so2sat_reader", "tiles_reader", "segmentation_reader",
           "prepare_geotiff", "check_encoder_fits", "BandStatistics", "SEGMENTATION_OPTIONS"]
