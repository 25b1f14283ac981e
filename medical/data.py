"""Medical data sets: Preprocessing settings, MedicalDataset (MONAI pipelines, caching, per-sample seeds),
UnifiedDataset (2D images and 3D volumes together) and build_dataset for a folder in one of the layouts.

The parts live beside it: readers.py decodes files, transforms.py holds the MONAI dictionary transforms and
builds the pipelines, layouts.py turns a folder into items, synthetic.py writes the test and demo data.
The deterministic part of a pipeline is cached (MONAI's CacheDataset in memory or PersistentDataset on
disk); the random part is seeded per sample from the key (index, sample_seed) of core.data.ResumableSampler.
A file that cannot be used (wrong number of dimensions, a DICOM folder mixing series, NaN voxels, a spacing
that leaves the volume smaller than the crop) raises a DataError naming it with `strict=True`, and is
otherwise skipped and counted in `dataset.skipped`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mimkit.core.data import ChannelStats, NormalisedDataset, normalisation_stats
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.tokens import as_tuple

from .layouts import LAYOUTS, UNCERTAINTY_POLICIES, layout_items
from .readers import probe_input
from .transforms import GuardedPrepare, build_pipelines, check_resampled_shape

log = logging.getLogger(__name__)

MODALITIES = ("ct", "mr", "xray", "oct", "fundus")
CACHES = ("none", "memory", "disk")

CT_WINDOW = (-175.0, 250.0)   # UNETR's BTCV pipeline and the Hi-End-MAE README: HU clipped to [-175, 250]
CT_SPACING = (1.5, 1.5, 1.5)  # Hi-End-MAE README: 1.5 mm isotropic voxels


# ============================================================================================ settings
@dataclass
class Preprocessing:
    """How files become model inputs; a recipe's `data` section and the CLI flags fill it."""

    modality: str = "xray"
    spatial_dims: int = 2                      # of the model input
    img_size: tuple[int, ...] | None = None    # 2D input size (224), or the 3D sub-volume (ROI) size (96^3)
    slices: bool = False                       # 2D inputs cut from 3D volumes
    slice_axis: int = 2                        # after RAS orientation, axis 2 gives axial slices
    spacing: tuple[float, ...] | None = None   # mm; None keeps the file's voxels
    intensity_range: tuple[float, float] | None = None  # CT window (HU) scaled to [0, 1]
    foreground: bool | None = None             # crop to the foreground (None: CT and MR)
    min_roi_fraction: float = 0.5              # refuse volumes shorter than this fraction of the ROI on an axis
    crop: str = "random"                       # 3D: "random" or "rand_pos_neg" (foreground-biased, Hi-End-MAE)
    crop_pos: float = 6.0                      # Hi-End-MAE med_datasets.py: RandCropByPosNegLabeld(pos=6, neg=2)
    crop_neg: float = 2.0
    flip_prob: float = 0.0                     # 3D: per-axis flips
    rotate90_prob: float = 0.0                 # 3D: quarter turns in the first two axes
    scale_intensity: tuple[float, float] = (0.0, 0.0)   # (factors, prob): RandScaleIntensityd
    shift_intensity: tuple[float, float] = (0.0, 0.0)   # (offsets, prob): RandShiftIntensityd
    crop_scale: tuple[float, float] = (0.2, 1.0)        # 2D: MAE's RandomResizedCrop scale
    hflip: bool = True                         # 2D: MAE's horizontal flip
    crop_pct: float = 1.0                      # 2D evaluation: resize to img_size / crop_pct, centre crop

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ConfigError(f"--modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"--spatial-dims must be 2 or 3, got {self.spatial_dims}")
        if self.slices and self.spatial_dims != 2:
            raise ConfigError("slices of volumes are 2D inputs: use --spatial-dims 2 with --slices")
        if self.img_size is None:  # MAE's 224 for 2D; Hi-End-MAE's 96^3 crops for 3D
            self.img_size = 224 if self.spatial_dims == 2 else 96
        if not isinstance(self.img_size, int) and len(self.img_size) == 1:  # one value: a square / cube
            self.img_size = int(self.img_size[0])
        self.img_size = as_tuple(self.img_size, self.spatial_dims, "img_size")
        if self.spacing is not None:
            spacing = [self.spacing] * 3 if isinstance(self.spacing, (int, float)) else list(self.spacing)
            if len(spacing) == 1:
                spacing *= 3
            if len(spacing) != 3:
                raise ConfigError(f"--spacing takes one value or three (mm), got {self.spacing}")
            self.spacing = tuple(float(s) for s in spacing)
            if min(self.spacing) <= 0:
                raise ConfigError(f"--spacing must be positive millimetres, got {self.spacing}")
            if self.spatial_dims == 2 and not self.slices:
                raise ConfigError("--spacing resamples volumes: use it with --spatial-dims 3 or --slices")
        if self.intensity_range is not None:
            low, high = (float(v) for v in self.intensity_range)
            if not low < high:
                raise ConfigError(f"--hu-window must be LOW HIGH with LOW < HIGH, got {self.intensity_range}")
            self.intensity_range = (low, high)
        if self.crop not in ("random", "rand_pos_neg"):
            raise ConfigError(f"crop must be 'random' or 'rand_pos_neg', got {self.crop!r}")
        if not 0 < self.min_roi_fraction <= 1:
            raise ConfigError(f"min_roi_fraction must be in (0, 1], got {self.min_roi_fraction}")
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        self.crop_scale = tuple(float(s) for s in self.crop_scale)
        self.scale_intensity = tuple(float(s) for s in self.scale_intensity)
        self.shift_intensity = tuple(float(s) for s in self.shift_intensity)
        if self.rotate90_prob and self.spatial_dims == 3 and self.img_size[0] != self.img_size[1]:
            raise ConfigError(f"rotate90_prob turns the first two axes, so the ROI must be square in them; got "
                              f"{self.img_size}")

    @property
    def volumes(self) -> bool:
        """Whether the files are 3D volumes (3D inputs, or 2D slices cut from volumes)."""
        return self.spatial_dims == 3 or self.slices

    @property
    def fixed_stats(self) -> bool:
        """CT windows and MR z-scores already give a fixed scale: no further mean/std normalisation."""
        return self.modality in ("ct", "mr")

    def key(self) -> str:
        """A short hash of the settings that shape the cached (deterministic) part of the pipeline."""
        cached = {k: v for k, v in asdict(self).items()
                  if k in ("modality", "spatial_dims", "img_size", "slices", "spacing", "intensity_range",
                           "foreground", "min_roi_fraction")}
        return hashlib.sha1(json.dumps(cached, sort_keys=True, default=str).encode()).hexdigest()[:12]


# Recipe `data` keys this module reads (with the recipe's spelling) -> Preprocessing fields.
_DATA_ALIASES = {"hu_window": "intensity_range", "horizontal_flip": "hflip"}
# `data` keys read by the dataset builders and the CLI rather than by Preprocessing.
DATASET_KEYS = ("mean", "std", "crops_per_volume", "cache", "cache_dir", "layout", "normal_only", "normal_class",
                "uncertainty", "classes", "caption", "descriptions", "caption_fundus", "caption_oct", "views", "skipped_files",
                "modality", "spatial_dims", "volume_data", "roi", "volume_size", "volume_mean", "volume_std",
                "json_name")


def preprocessing_from(data: Mapping[str, Any], modality: str, spatial_dims: int) -> Preprocessing:
    """Build Preprocessing from a recipe/CLI `data` dict; keys it cannot use are named in one warning."""
    names = {f.name for f in fields(Preprocessing)}
    options, unused = {}, []
    for key, value in data.items():
        field = _DATA_ALIASES.get(key, key)
        if field in names:
            if isinstance(value, dict) and field in ("scale_intensity", "shift_intensity"):
                value = (value.get("factors", value.get("offsets", 0.0)), value.get("prob", 0.0))
            if value is not None:
                options[field] = tuple(value) if isinstance(value, list) else value
        elif key not in DATASET_KEYS:
            unused.append(key)
    if unused:
        log.warning("recipe data settings not used by mimkit.medical (kept in config.yaml for reference): %s",
                    ", ".join(sorted(unused)))
    options.update(modality=modality, spatial_dims=spatial_dims)
    if modality == "ct" and spatial_dims == 3 or (modality == "ct" and options.get("slices")):
        options.setdefault("intensity_range", CT_WINDOW)
    return Preprocessing(**options)


# ============================================================================================ dataset
def _key(key) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), int(key)


class MedicalDataset(NormalisedDataset):
    """Medical images or volumes through MONAI dictionary transforms, cached, with per-sample random seeds.

    `items` are dicts {"image": path, "label": class index | multi-hot list | label-map path (optional)}.
    `dataset[i]` (seed i) or `dataset[(i, sample_seed)]` (ResumableSampler) returns {"image": float32
    (C, H, W) or (C, D, H, W), "index": int} plus "label" (int, multi-hot float tensor, or (1, D, H, W) int64
    map) and "text" when `caption` is given ("[CLS]" is replaced by the class name). With
    `samples_per_volume` k each file yields k random crops per pass (index // k picks the file).
    `cache`: "memory" (CacheDataset: decoded once, at construction), "disk" (PersistentDataset under
    `cache_dir`) or "none". Attributes: in_chans, classes, skipped [(path, reason)], stats (mean, std).
    """

    def __init__(self, items: Sequence[dict], preprocessing: Preprocessing, *, train: bool = True,
                 in_chans: int | None = None, patch_size: int | Sequence[int] = 16,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 classes: Sequence[str] | None = None, label_kind: str | None = None, cache: str = "none",
                 cache_dir: str | Path | None = None, samples_per_volume: int = 1, strict: bool = False,
                 whole_volume: bool = False, caption: str | None = None, root: str | Path | None = None,
                 stats_samples: int = 32, cache_workers: int = 2,
                 descriptions: Mapping[str, Sequence[str]] | None = None):
        if cache not in CACHES:
            raise ConfigError(f"--cache must be one of {', '.join(CACHES)}, got {cache!r}")
        if cache == "disk" and cache_dir is None:
            raise ConfigError("--cache disk needs --cache-dir (a folder for the decoded volumes)")
        if label_kind not in (None, "class", "multilabel", "mask"):
            raise ConfigError(f"label_kind must be class, multilabel or mask, got {label_kind!r}")
        if samples_per_volume < 1:
            raise ConfigError(f"crops_per_volume must be at least 1, got {samples_per_volume}")
        self.pre, self.train, self.strict = preprocessing, train, strict
        self.root = Path(root) if root is not None else None
        self.classes = list(classes) if classes is not None else []
        self.label_kind, self.caption, self.whole_volume = label_kind, caption, whole_volume
        self.descriptions = {str(k): [str(d) for d in v] for k, v in (descriptions or {}).items()}
        self.samples_per_volume = samples_per_volume
        self.patch_size = as_tuple(patch_size, preprocessing.spatial_dims, "patch_size")
        self.skipped: list[tuple[str, str]] = []
        self.items = [dict(item, path=str(item["image"])) for item in items]
        if not self.items:
            raise DataError(f"no images or volumes found{f' under {self.root}' if self.root else ''}")
        self.in_chans = self._probe_all(in_chans)
        self.store_index = list(range(len(self.items)))
        self.prepare, self.augment, self.evaluate = build_pipelines(preprocessing, self.in_chans, label_kind,
                                                                    whole_volume)
        self.store = self._build_store(cache, cache_dir, cache_workers)
        self.mean, self.std = self._stats(mean, std, stats_samples)

    # ------------------------------------------------------------------ construction
    def _skip(self, path, reason: str, warn: bool = True) -> None:
        if self.strict:
            raise DataError(f"{reason} (strict: pass strict=False / drop --strict-data to skip unusable files)")
        if str(path) not in {p for p, _ in self.skipped}:
            if warn:
                log.warning("skipping: %s", reason)
            self.skipped.append((str(path), reason))

    def _probe_all(self, in_chans: int | None) -> int:
        """Read every header once (threads: I/O bound) so files of the wrong rank, mixed DICOM series and
        spacings that leave a volume smaller than the crop are counted up front."""
        pre = self.pre
        rank = 3 if pre.volumes else 2

        def check(item: dict):
            try:
                probe = probe_input(item["image"])
                if len(probe.shape) != rank:
                    hint = ("use --spatial-dims 3 for volumes, or --slices for 2D slices of them" if rank == 2
                            else "use --spatial-dims 2 for 2D images")
                    raise DataError(f"{item['image']}: a {len(probe.shape)}D "
                                    f"{'volume' if len(probe.shape) == 3 else 'image'} of shape {probe.shape}; "
                                    f"expected {rank}D {'volumes' if rank == 3 else 'images'} ({hint})")
                if rank == 2 and min(probe.shape) < min(self.patch_size):
                    raise DataError(f"{item['image']}: {probe.shape} pixels, smaller than one patch "
                                    f"{self.patch_size}")
                if pre.spacing is not None and probe.spacing is not None:
                    check_resampled_shape(item["image"], probe.shape, probe.spacing, pre.spacing,
                                          pre.img_size if pre.spatial_dims == 3 else None, pre.min_roi_fraction)
                return probe
            except DataError as error:
                return str(error)

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(check, self.items))
        for item, result in zip(self.items, results):
            if isinstance(result, str):
                self._skip(item["image"], result, warn=False)
        keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
        if not keep:
            raise DataError(f"none of the {len(self.items)} inputs{f' under {self.root}' if self.root else ''} "
                            f"can be used; first: {self.skipped[0][1]}")
        if self.skipped:
            log.warning("skipped %d of %d inputs that cannot be used (dataset.skipped lists them); first: %s",
                        len(self.skipped), len(self.items), self.skipped[0][1])
        self.items = [self.items[i] for i in keep]
        channels = [results[i].channels for i in keep]
        found = Counter(channels).most_common(1)[0][0]
        if in_chans is None:
            in_chans = found
        wrong = [(item["image"], c) for item, c in zip(self.items, channels)
                 if c != in_chans and not (c == 1 and rank == 2)]
        if wrong:
            hint = f"; pass --in-chans {wrong[0][1]}" if len(wrong) == len(self.items) else ""
            raise DataError(f"{wrong[0][0]} has {wrong[0][1]} channel(s) but in_chans is {in_chans} "
                            f"({len(wrong)} of {len(self.items)} inputs differ{hint})")
        return int(in_chans)

    def _build_store(self, cache: str, cache_dir, workers: int):
        from monai.data import CacheDataset, PersistentDataset

        guarded = GuardedPrepare(self.prepare)
        if cache == "none":
            return None
        if cache == "memory":
            store = CacheDataset(self.items, transform=guarded, num_workers=workers, progress=False,
                                 copy_cache=True)
            # every file was decoded just now: count the ones that failed up front and leave them out
            good = []
            for i, item in enumerate(self.items):
                prepared = store[i]
                if "error" in prepared:
                    self._skip(item["image"], prepared["error"])
                else:
                    good.append(i)
            if not good:
                raise DataError(f"none of the {len(self.items)} inputs could be prepared; first: "
                                f"{self.skipped[-1][1]}")
            self.items = [self.items[i] for i in good]
            self.store_index = good
        else:
            folder = Path(cache_dir) / f"{self.pre.key()}-c{self.in_chans}-{self.label_kind or 'none'}"
            folder.mkdir(parents=True, exist_ok=True)
            # the file's size and modification time join the hashed item, so an edited file is decoded again
            for item in self.items:
                stat = Path(item["image"]).stat()
                item["stamp"] = f"{stat.st_size}-{stat.st_mtime_ns}"
            store = PersistentDataset(self.items, transform=guarded, cache_dir=folder)
        return store

    def _prepared(self, index: int) -> dict:
        if self.store is None:
            return GuardedPrepare(self.prepare)(self.items[index])
        return dict(self.store[self.store_index[index]])

    def _stats(self, mean, std, samples: int) -> tuple[np.ndarray, np.ndarray]:
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std, or neither (then they are computed from the data)")
        if mean is None and self.pre.fixed_stats:
            mean, std = [0.0] * self.in_chans, [1.0] * self.in_chans
        if mean is None:
            picks = np.unique(np.linspace(0, len(self.items) - 1, min(samples, len(self.items))).round().astype(int))
            accumulator = ChannelStats(self.in_chans)
            for i in picks:
                prepared = self._prepared(int(i))
                if "error" in prepared:
                    self._skip(self.items[int(i)]["image"], prepared["error"])
                    continue
                accumulator.add(torch.as_tensor(prepared["image"]).double().flatten(1).numpy())
            if not accumulator.count:
                raise DataError(f"no input{f' under {self.root}' if self.root else ''} could be decoded to compute "
                                f"mean/std; first problem: {self.skipped[0][1] if self.skipped else 'unknown'}")
            mean, std = accumulator.result()
        return normalisation_stats(mean, std, self.in_chans, f"the inputs have {self.in_chans} channels")

    # ------------------------------------------------------------------ access
    @property
    def targets(self) -> list:
        """Class indices of single-label items (for stratified subsets)."""
        return [item["label"] for item in self.items] if self.label_kind == "class" else []

    def eval_view(self) -> "MedicalDataset":
        """The same files without random transforms (centre crops / middle slices), sharing the cache."""
        view = copy.copy(self)
        view.train, view.samples_per_volume = False, 1
        return view

    def __len__(self) -> int:
        return len(self.items) * self.samples_per_volume

    def __getitem__(self, key) -> dict:
        index, seed = _key(key)
        first = index // self.samples_per_volume
        for attempt in range(min(len(self.items), 16)):
            # An unusable file is replaced by the next one, the same one on every run and worker.
            current = (first + attempt) % len(self.items)
            prepared = self._prepared(current)
            if "error" not in prepared:
                break
            self._skip(self.items[current]["image"], prepared["error"])
        else:
            raise DataError(f"{self.items[first]['image']} and the inputs after it could not be read")
        pipeline = self.augment if self.train else self.evaluate
        pipeline.set_random_state(seed=seed % (2 ** 32))
        out = pipeline(prepared)
        if isinstance(out, list):  # RandCropByPosNegLabeld returns a list of its num_samples=1 crops
            out = out[0]
        image = torch.as_tensor(out["image"]).float()
        if hasattr(image, "as_tensor"):
            image = image.as_tensor()
        shape = (-1,) + (1,) * (image.ndim - 1)
        image = (image - torch.from_numpy(self.mean).view(shape)) / torch.from_numpy(self.std).view(shape)
        sample = {"image": image.contiguous(), "index": current}
        label = self.items[current].get("label")
        if self.label_kind == "mask":
            mask = torch.as_tensor(out["label"])
            sample["label"] = (mask.as_tensor() if hasattr(mask, "as_tensor") else mask).round().long()
        elif self.label_kind == "multilabel":
            sample["label"] = torch.tensor(label, dtype=torch.float32)
        elif self.label_kind == "class":
            sample["label"] = int(label)
        if self.caption is not None and self.label_kind == "class":
            name = self.classes[int(label)]
            if self.train and name in self.descriptions:
                # UrFound's AugmentDescription: the category name, or one of its expert descriptions, uniformly
                name = random.Random(seed).choice([name] + self.descriptions[name])
            sample["text"] = self.caption.replace("[CLS]", name)
        return sample


class UnifiedDataset(Dataset):
    """2D images and 3D volumes in one batch, for unified 2D+3D methods (Uni4Eye): {"image": (C, H, W),
    "volume": (C3, D, H, W), "index"}. Its length is the image set's; volumes are visited in turn."""

    def __init__(self, images: MedicalDataset, volumes: MedicalDataset):
        if images.pre.spatial_dims != 2 or volumes.pre.spatial_dims != 3:
            raise ConfigError("UnifiedDataset takes a 2D image dataset and a 3D volume dataset, in that order")
        self.images, self.volumes = images, volumes
        self.in_chans, self.volume_chans = images.in_chans, volumes.in_chans
        self.classes = []

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.images.skipped + self.volumes.skipped

    @property
    def stats(self):
        return self.images.stats

    def eval_view(self) -> "UnifiedDataset":
        return UnifiedDataset(self.images.eval_view(), self.volumes.eval_view())

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key) -> dict:
        index, seed = _key(key)
        image = self.images[(index, seed)]
        # the volume's seed differs from the image's, so the two crops are drawn independently
        volume = self.volumes[(index % len(self.volumes), (seed * 2654435761 + 1) % (2 ** 32))]
        return {"image": image["image"], "volume": volume["image"], "index": index}


def build_dataset(root: str | Path, layout: str, preprocessing: Preprocessing, *, split: str | None = None,
                  train: bool = True, labelled: bool = True, options: Mapping[str, Any] | None = None,
                  **dataset_options) -> MedicalDataset:
    """A MedicalDataset for a folder in one of LAYOUTS; `labelled=False` drops labels (pretraining)."""
    options = dict(options or {})
    items, classes, kind, skipped = layout_items(layout, root, preprocessing.volumes, split, options)
    if not labelled:
        items, kind = [{"image": item["image"]} for item in items], None
    if kind == "mask" and preprocessing.spatial_dims != 3:
        raise ConfigError("the Decathlon/BTCV layout's label maps need --spatial-dims 3")
    dataset = MedicalDataset(items, preprocessing, train=train, classes=classes, label_kind=kind, root=root,
                             **dataset_options)
    dataset.skipped = skipped + dataset.skipped
    return dataset


# ============================================================================================ the commands' data
# The method each modality pretrains with unless `method` says otherwise, and its spatial dims.
DEFAULT_METHODS = {"ct": "hiend_mae", "mr": "hiend_mae", "xray": "thorax_mae", "oct": "uni4eye", "fundus": "uni4eye"}
DEFAULT_DIMS = {"ct": 3, "mr": 3, "xray": 2, "oct": 2, "fundus": 2}
def read_descriptions(path: str | Path) -> dict[str, list[str]]:
    """Expert descriptions per category from a YAML/JSON file {category: [description, ...]} (UrFound's FLAIR
    dictionary has this shape); a category name in a caption is swapped for one of them at random."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"descriptions file {str(path)!r} does not exist")
    try:
        content = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"descriptions file {file}: not valid YAML/JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(content, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(d, str) for d in v) for k, v in content.items()):
        raise ConfigError(f"descriptions file {file}: expected a mapping category -> list of description strings, "
                          f"found {type(content).__name__}")
    return content


# UrFound's caption templates (util/flair_dataloader/transforms.py), "[CLS]" = the class folder's name.
CAPTIONS = {"fundus": "A fundus photograph of [CLS]", "oct": "An Optical Coherence Tomography Image shows [CLS]"}
# MedicalData fields that shape Preprocessing (the rest choose files, caching and labels)
PREPROCESSING_FIELDS = ("spacing", "intensity_range", "foreground", "min_roi_fraction", "crop", "crop_pos", "crop_neg",
                        "flip_prob", "rotate90_prob", "scale_intensity", "shift_intensity", "crop_scale", "hflip",
                        "crop_pct", "slices")


@dataclass
class MedicalData:
    """Medical images or volumes as `mimkit-medical` reads them: a folder in one of the layouts, MONAI preprocessing.

    Pretraining builds its dataset with `build(model, method)`; evaluate and finetune read the labelled splits of
    `root` with the same settings (those left unset come from the pretraining run).

    Args:
        root: the data folder (NIfTI, DICOM, 16-bit PNG/TIFF X-rays, OCT, fundus photographs)
        modality: ct, mr, xray, oct or fundus: picks readers, intensity transforms and the default method (ct/mr:
            hiend_mae, 3D; xray: thorax_mae; oct/fundus: uni4eye)
        layout: folder (plain, unlabelled), classes (class sub-folders), msd (dataset.json), chestxray14, chexpert
        spatial_dims: 2D images or 3D volumes (None: 3 for ct/mr, 2 for the others and with slices)
        slices: train a 2D model on random slices of 3D volumes
        spacing: resample volumes to this voxel spacing in mm, one value or three (Hi-End-MAE: 1.5)
        intensity_range: CT intensity window in HU (LOW HIGH), scaled to [0, 1] (None: -175 250 for ct)
        roi: 3D sub-volume size, one value or D H W: the model's input size (model.encoder.img_size) for volumes,
            the volume size in unified 2D + 3D batches (None: the model's img_size, or uni4eye's volume_size)
        crops_per_volume: random sub-volumes drawn from each volume per pass
        cache: memory (MONAI CacheDataset), disk (PersistentDataset, with cache_dir) or none (None: memory for
            volumes, none for 2D images)
        cache_dir: the folder for cache disk
        normal_only: read ROOT/<normal_class> only (anomaly detection pretrains on normal images)
        normal_class: the class folder of normal images
        uncertainty: CheXpert's uncertain (-1) labels: ones (U-Ones) or zeros (U-Zeros)
        volume_data: a folder of 3D volumes paired with the 2D images of root in unified 2D + 3D batches (uni4eye)
        caption: UrFound's caption template, [CLS] = the class folder name (None: the modality's)
        descriptions: a YAML/JSON file {category: [expert description, ...]}: in training captions a category name
            is swapped for one of its descriptions (or kept), uniformly, as UrFound's AugmentDescription
        foreground: crop volumes to their foreground (None: ct and mr)
        min_roi_fraction: refuse volumes shorter than this fraction of the ROI on an axis
        crop: 3D crops: random, or rand_pos_neg (foreground-biased, Hi-End-MAE)
        crop_pos: rand_pos_neg's weight of foreground centres
        crop_neg: rand_pos_neg's weight of background centres
        flip_prob: 3D: probability of a flip on each axis
        rotate90_prob: 3D: probability of quarter turns in the first two axes
        scale_intensity: (factors, prob) of MONAI's RandScaleIntensityd
        shift_intensity: (offsets, prob) of MONAI's RandShiftIntensityd
        crop_scale: 2D: RandomResizedCrop's area range (MAE: 0.2 to 1)
        hflip: 2D: random horizontal flips
        crop_pct: 2D evaluation: resize to img_size / crop_pct, then centre crop (None: 1, or the run's)
        mean: per-channel mean after intensity scaling (None: measured, or 0 for ct/mr)
        std: per-channel standard deviation (None: measured with the mean)
        volume_mean: the volumes' mean in unified batches (None: measured)
        volume_std: the volumes' standard deviation in unified batches (None: measured)
        strict: stop at the first unusable file instead of skipping and counting it
    """

    root: str | None = None
    modality: str | None = None
    layout: str = "folder"
    spatial_dims: int | None = None
    slices: bool = False
    spacing: list[float] | None = None
    intensity_range: tuple[float, float] | None = None
    roi: list[int] | None = None
    crops_per_volume: int = 1
    cache: str | None = None
    cache_dir: str | None = None
    normal_only: bool = False
    normal_class: str = "normal"
    uncertainty: str = "ones"
    volume_data: str | None = None
    caption: str | None = None
    descriptions: str | None = None
    foreground: bool | None = Preprocessing.foreground
    min_roi_fraction: float = Preprocessing.min_roi_fraction
    crop: str = Preprocessing.crop
    crop_pos: float = Preprocessing.crop_pos
    crop_neg: float = Preprocessing.crop_neg
    flip_prob: float = Preprocessing.flip_prob
    rotate90_prob: float = Preprocessing.rotate90_prob
    scale_intensity: tuple[float, float] = Preprocessing.scale_intensity
    shift_intensity: tuple[float, float] = Preprocessing.shift_intensity
    crop_scale: tuple[float, float] = Preprocessing.crop_scale
    hflip: bool = Preprocessing.hflip
    crop_pct: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    volume_mean: list[float] | None = None
    volume_std: list[float] | None = None
    strict: bool = False

    def __post_init__(self):
        if self.modality is not None and self.modality not in MODALITIES:
            raise ConfigError(f"--modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.uncertainty not in UNCERTAINTY_POLICIES:
            raise ConfigError(f"--uncertainty must be one of {', '.join(UNCERTAINTY_POLICIES)}, "
                              f"got {self.uncertainty!r}")
        if self.cache is not None and self.cache not in CACHES:
            raise ConfigError(f"--cache must be one of {', '.join(CACHES)}, got {self.cache!r}")
        if self.intensity_range is not None:
            low, high = (float(v) for v in self.intensity_range)
            if not low < high:
                raise ConfigError(f"--hu-window must be LOW HIGH with LOW < HIGH, got {list(self.intensity_range)}")

    def checked_modality(self) -> str:
        if self.modality is None:
            raise ConfigError(f"--modality is required ({', '.join(MODALITIES)}): it picks the readers, intensity "
                              f"transforms and the default method")
        return self.modality

    def default_method(self) -> str:
        """The modality's method: hiend_mae for ct/mr, thorax_mae for xray, uni4eye for oct/fundus."""
        return DEFAULT_METHODS[self.checked_modality()]

    def dims(self) -> int:
        """The model input's spatial dims: as given, else 2 for slices, else the modality's."""
        if self.spatial_dims is not None:
            return int(self.spatial_dims)
        return 2 if self.slices else DEFAULT_DIMS[self.checked_modality()]

    def preprocessing(self, img_size, spatial_dims: int, **overrides) -> Preprocessing:
        """Preprocessing of these settings for inputs of `img_size` (CT's window by default)."""
        settings = {key: getattr(self, key) for key in PREPROCESSING_FIELDS}
        settings.update(img_size=img_size, **overrides)
        return preprocessing_from(settings, self.checked_modality(), spatial_dims)

    def build(self, model: dict, method: str) -> Dataset:
        """The pretraining dataset for `method` with the `model` settings, which it completes (the encoder's
        spatial dims, img_size from the 3D ROI; uni4eye's volume_size and volume_chans); what was applied (dims,
        spacing, window, measured mean/std) is kept on `self`, so the stored settings re-create it."""
        from mimkit.core.config import encoder_setting, set_encoder_setting
        from mimkit.core.registry import method_arguments, method_class

        if self.root is None:
            raise ConfigError("no data given: pass --data DIR (a folder of images or volumes)")
        modality, dims = self.checked_modality(), self.dims()
        unified = self.volume_data is not None
        if unified and method != "uni4eye":
            raise ConfigError(f"--volume-data gives unified 2D + 3D batches, which only uni4eye trains on "
                              f"(got {method!r})")
        if method != "uni4eye":  # uni4eye's encoder is 2D; its volumes take a path of their own
            if dims not in getattr(method_class(method), "supported_dims", (2,)):
                raise ConfigError(f"method {method!r} is 2D only; use --spatial-dims 2 (or --slices for 2D slices of "
                                  f"volumes), or a 3D method such as hiend_mae")
            set_encoder_setting(model, "spatial_dims", dims)
        img_size = encoder_setting(model, "img_size", method)
        if dims == 3 and self.roi and not unified:  # for volumes the ROI is the model's input size
            img_size = self.roi[0] if len(self.roi) == 1 else list(self.roi)
            if method != "uni4eye":
                set_encoder_setting(model, "img_size", img_size)
        if method == "urfound":  # UrFound reads images at target_scale x the encoder's size (see urfound.py)
            scale = int(model.get("target_scale") or method_arguments(method).get("target_scale", 2))
            img_size = [int(v) * scale for v in ([img_size] if isinstance(img_size, int) else img_size)]
        pre = self.preprocessing(img_size, dims)
        caption = None
        if method == "urfound":
            if self.layout != "classes":
                raise ConfigError("urfound learns from captions: use --layout classes (the class folder names fill "
                                  "the caption template)")
            caption = (self.caption or CAPTIONS.get(modality, "[CLS]")).replace("[ATR] ", "")
            options_extra = {"descriptions": read_descriptions(self.descriptions)} if self.descriptions else {}
        elif self.descriptions:
            raise ConfigError("descriptions (expert descriptions per category) are read by urfound only")
        else:
            options_extra = {}
        options = dict(patch_size=encoder_setting(model, "patch_size", method),
                       in_chans=encoder_setting(model, "in_chans"), mean=self.mean, std=self.std,
                       cache=self.cache or ("memory" if pre.volumes else "none"), cache_dir=self.cache_dir,
                       samples_per_volume=int(self.crops_per_volume), strict=self.strict)
        layout_options = {"normal_only": self.normal_only, "normal_class": self.normal_class,
                          "uncertainty": self.uncertainty}
        dataset = build_dataset(self.root, self.layout, pre, labelled=caption is not None, options=layout_options,
                                caption=caption, **options, **options_extra)
        self.spatial_dims = dims
        self.mean, self.std = (_floats(v) for v in dataset.stats)
        self.spacing = list(pre.spacing) if pre.spacing is not None else None  # what was applied, defaults included
        self.intensity_range = tuple(pre.intensity_range) if pre.intensity_range is not None else None
        if method == "uni4eye" and dims == 3:  # volumes only: Uni4Eye's 3D path, at the ROI size
            model["volume_size"] = list(pre.img_size)
            set_encoder_setting(model, "img_size", list(pre.img_size[1:]))
            model["volume_chans"] = model.get("volume_chans") or dataset.in_chans
        elif unified:
            roi = self.roi or model.get("volume_size") or method_arguments(method).get("volume_size")
            roi = roi[0] if len(roi) == 1 else list(roi)
            volume_pre = self.preprocessing(roi, 3, slices=False)
            volumes = build_dataset(self.volume_data, "folder", volume_pre, labelled=False,
                                    **{**options, "in_chans": model.get("volume_chans"), "mean": self.volume_mean,
                                       "std": self.volume_std, "cache": self.cache or "memory"})
            model["volume_size"], model["volume_chans"] = list(volume_pre.img_size), volumes.in_chans
            self.volume_mean, self.volume_std = (_floats(v) for v in volumes.stats)
            return UnifiedDataset(dataset, volumes)
        return dataset


def _floats(values) -> list[float]:
    return [float(v) for v in values]


__all__ = ["MODALITIES", "CACHES", "CT_WINDOW", "CT_SPACING", "Preprocessing", "preprocessing_from",
           "MedicalDataset", "UnifiedDataset", "build_dataset", "MedicalData", "DEFAULT_METHODS", "CAPTIONS"]
