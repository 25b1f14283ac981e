"""Medical images and volumes through MONAI dictionary transforms, with caching and per-sample seeds.

Readers: NIfTI (nibabel), DICOM series folders and single DICOM files (pydicom), 8/16-bit PNG, TIFF (2D images
or stacks), JPEG fundus photographs and .npy arrays. Pipelines: orientation (RAS), resampling to a spacing,
CT intensity window, MR z-score, foreground crop, random 3D sub-volumes, random resized 2D crops, 2D slices of
volumes. The deterministic part of a pipeline is cached (MONAI's CacheDataset in memory or PersistentDataset on
disk); the random part is seeded per sample from the key (index, sample_seed) of core.data.ResumableSampler.

Layouts, read from a local folder (nothing is downloaded): a plain folder of images or volumes (pretraining),
class sub-folders (OCT, fundus), the Medical Segmentation Decathlon / BTCV `dataset.json`, the NIH ChestX-ray14
CSV and the CheXpert CSV. A file that cannot be used (wrong number of dimensions, a DICOM folder mixing series,
NaN voxels, a spacing that leaves the volume smaller than the crop) raises a DataError naming it with
`strict=True`, and is otherwise skipped and counted in `dataset.skipped`.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable, Transform
from torch.utils.data import Dataset

from mimkit.core.data import (IMAGE_SUFFIXES, ChannelStats, NormalisedDataset, normalisation_stats, probe_image,
                              read_image, to_unit_range)
from mimkit.core.errors import ConfigError, DataError, MimkitError
from mimkit.core.tokens import as_tuple

log = logging.getLogger(__name__)

MODALITIES = ("ct", "mr", "xray", "oct", "fundus")
LAYOUTS = ("folder", "classes", "msd", "chestxray14", "chexpert")
CACHES = ("none", "memory", "disk")

CT_WINDOW = (-175.0, 250.0)   # UNETR's BTCV pipeline and the Hi-End-MAE README: HU clipped to [-175, 250]
CT_SPACING = (1.5, 1.5, 1.5)  # Hi-End-MAE README: 1.5 mm isotropic voxels
MAX_VOXELS = 2 ** 28          # a spacing that resamples into more voxels than this (1 GiB as float32) is refused

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
INPUT_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES + IMAGE_SUFFIXES

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


# ============================================================================================ files
def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_dicom_file(path: Path) -> bool:
    """A .dcm/.dicom file, or a suffix-less file with the DICOM preamble ("DICM" at byte 128)."""
    if _suffix(path) in DICOM_SUFFIXES:
        return True
    if path.suffix or not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_inputs(root: str | Path, volumes: bool) -> list[Path]:
    """Every image or volume under `root` (recursive): NIfTI, DICOM, PNG/JPEG/TIFF/NPY files.

    With `volumes`, a folder holding several DICOM files is one series (one volume); otherwise each DICOM
    file is one image. Files of other types are not inputs.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist" if not root.exists() else
                        f"data path {root} is a file; expected a folder of images or volumes")
    found, dicom_by_folder = [], {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or _hidden(path, root):
            continue
        if is_dicom_file(path):
            dicom_by_folder.setdefault(path.parent, []).append(path)
        elif _suffix(path) in INPUT_SUFFIXES:
            found.append(path)
    for folder, files in dicom_by_folder.items():
        found += [folder] if volumes and len(files) > 1 else files
    return sorted(found)


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))


def check_dicom_series(folder: Path) -> list:
    """The headers of a DICOM folder's files; DataError if they belong to more than one series."""
    import pydicom

    files = dicom_files(folder)
    if not files:
        raise DataError(f"{folder}: no DICOM files in this folder")
    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as error:  # pydicom raises several types for a damaged header
            raise DataError(f"{path}: not a readable DICOM file ({type(error).__name__}: {error})") from None
    series = Counter(str(getattr(h, "SeriesInstanceUID", "<missing SeriesInstanceUID>")) for h in headers)
    if len(series) > 1:
        listing = ", ".join(f"{uid} ({count} files)" for uid, count in series.most_common())
        raise DataError(f"{folder}: this DICOM folder mixes {len(series)} series ({listing}); a volume is one "
                        f"series: put each series in its own folder")
    return headers


# ============================================================================================ probing
@dataclass(frozen=True)
class Probe:
    """What a file's header says: channels, spatial shape (RAS order for volumes) and voxel spacing (mm)."""

    channels: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None


def probe_input(path: str | Path) -> Probe:
    """Read only the header of an image, volume or DICOM folder; DataError if it cannot be read."""
    path = Path(path)
    try:
        if path.is_dir():
            headers = check_dicom_series(path)
            first = headers[0]
            spacing = None
            if hasattr(first, "PixelSpacing"):
                row, col = (float(v) for v in first.PixelSpacing)
                positions = sorted(float(h.ImagePositionPatient[2]) for h in headers
                                   if hasattr(h, "ImagePositionPatient"))
                gaps = np.diff(positions)
                step = float(np.median(gaps)) if len(gaps) and np.median(gaps) > 0 else \
                    float(getattr(first, "SliceThickness", 1.0) or 1.0)
                spacing = (col, row, step)
            return Probe(int(getattr(first, "SamplesPerPixel", 1)),
                         (int(first.Columns), int(first.Rows), len(headers)), spacing)
        suffix = _suffix(path)
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            image = nib.load(str(path))
            shape, zooms = image.shape, tuple(float(z) for z in image.header.get_zooms())
            if len(shape) == 2:
                return Probe(1, tuple(shape), zooms[:2])
            if len(shape) not in (3, 4):
                raise DataError(f"{path}: a {len(shape)}-dimensional NIfTI image {tuple(shape)}; expected 2D, a 3D "
                                f"volume, or a 3D volume with channels in the 4th dimension")
            # Orientationd("RAS") permutes the axes: report the shape and spacing in that order.
            order = nib.io_orientation(image.affine)[:, 0].astype(int)
            ras_shape, ras_spacing = [0] * 3, [0.0] * 3
            for axis, target in enumerate(order):
                ras_shape[target], ras_spacing[target] = shape[axis], zooms[axis]
            return Probe(shape[3] if len(shape) == 4 else 1, tuple(ras_shape), tuple(ras_spacing))
        if is_dicom_file(path):
            import pydicom

            header = pydicom.dcmread(path, stop_before_pixels=True)
            frames = int(getattr(header, "NumberOfFrames", 1) or 1)
            rows, cols = int(header.Rows), int(header.Columns)
            spacing = tuple(float(v) for v in header.PixelSpacing) if hasattr(header, "PixelSpacing") else None
            shape = (cols, rows, frames) if frames > 1 else (rows, cols)
            if frames > 1 and spacing is not None:
                spacing = (spacing[1], spacing[0], float(getattr(header, "SliceThickness", 1.0) or 1.0))
            return Probe(int(getattr(header, "SamplesPerPixel", 1)), shape, spacing)
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape, axes = tuple(tif.series[0].shape), tif.series[0].axes
            if len(shape) == 2:
                return Probe(1, shape, None)
            if len(shape) == 3:  # an RGB image ("YXS") or a stack of slices
                return Probe(shape[2], shape[:2], None) if axes.endswith("S") else Probe(1, shape, None)
            if len(shape) == 4:
                return Probe(shape[3], shape[:3], None) if axes.endswith("S") else Probe(shape[0], shape[1:], None)
            raise DataError(f"{path}: a TIFF of shape {shape} (axes {axes}); expected a 2D image or a 3D stack")
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.dtype.kind not in "biuf":
                raise DataError(f"{path}: expected a numeric array, found dtype {array.dtype}")
            # (H, W) and (D, H, W) hold one channel; (C, D, H, W) is channel-first. A 3-axis array is read as a
            # single-channel volume; 2D multi-channel arrays belong in PNG/TIFF files.
            if array.ndim in (2, 3):
                return Probe(1, tuple(array.shape), None)
            if array.ndim == 4:
                return Probe(array.shape[0], tuple(array.shape[1:]), None)
            raise DataError(f"{path}: a {array.ndim}-dimensional array {array.shape}; expected (H, W), (D, H, W) "
                            f"or (C, D, H, W)")
        channels, height, width = probe_image(path)
        return Probe(channels, (height, width), None)
    except MimkitError:
        raise
    except Exception as error:  # nibabel, pydicom and tifffile raise their own types for a broken file
        raise DataError(f"{path}: cannot read the header ({type(error).__name__}: {error})") from None


# ============================================================================================ reading
def _dicom_2d(path: Path, unit_range: bool = True) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A single-frame DICOM image as float32 (C, H, W), modality LUT applied (HU for CT). With `unit_range`
    (radiographs): scaled to [0, 1] by the stored bit depth, MONOCHROME1 (white = low values) inverted."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    raw = ds.pixel_array
    values = apply_modality_lut(raw, ds).astype(np.float32)
    spacing = tuple(float(v) for v in ds.PixelSpacing) if hasattr(ds, "PixelSpacing") else None
    if not unit_range:
        return (values[None] if values.ndim == 2 else np.moveaxis(values, -1, 0)), spacing
    bits = int(getattr(ds, "BitsStored", 8 * raw.dtype.itemsize))
    if values.min() >= 0 and values.max() <= 2 ** bits - 1:
        values = values / np.float32(2 ** bits - 1)
    else:  # a rescale moved the values out of the stored range: use the image's own range
        values = (values - values.min()) / max(float(values.max() - values.min()), 1e-6)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        values = 1.0 - values
    values = values[None] if values.ndim == 2 else np.moveaxis(values, -1, 0)
    return values, spacing


def _flat_volume(path: Path) -> np.ndarray:
    """A TIFF stack or .npy volume as (C, D, H, W) in its stored dtype."""
    if _suffix(path) == ".npy":
        array = np.load(path, allow_pickle=False)
        return array[None] if array.ndim == 3 else array
    import tifffile

    with tifffile.TiffFile(path) as tif:
        array, axes = tif.series[0].asarray(), tif.series[0].axes
    if array.ndim == 3:
        return array[None]
    return np.moveaxis(array, -1, 0) if axes.endswith("S") else array


_LOADERS: dict[str, Any] = {}


def _monai_loader(reader: str):
    """One MONAI LoadImage per reader (channel first, float32), built once: the readers are costly to build."""
    if reader not in _LOADERS:
        from monai.transforms import LoadImage

        with warnings.catch_warnings():  # the DICOM reader warns that an optional GPU decoder is missing
            warnings.simplefilter("ignore")
            _LOADERS[reader] = LoadImage(reader=reader, image_only=True, ensure_channel_first=True,
                                         dtype=np.float32)
    return _LOADERS[reader]


def read_input(path: str | Path, rank: int, unit_range: bool) -> torch.Tensor:
    """Decode an image (rank 2) or volume (rank 3) to a float32 MetaTensor (C, *spatial) with its affine.

    `unit_range` maps intensities to [0, 1]: integer files by their dtype's maximum (16-bit PNG / 65535),
    DICOM by its stored bit depth, float volumes by their own minimum and maximum. Without it (CT, MR) the
    stored values (Hounsfield units for CT) are kept.
    """
    from monai.data import MetaTensor

    path = Path(path)
    suffix = _suffix(path)
    spacing = None
    if path.is_dir() or suffix in NIFTI_SUFFIXES or (is_dicom_file(path) and rank == 3):
        if path.is_dir():
            check_dicom_series(path)
        reader = "NibabelReader" if suffix in NIFTI_SUFFIXES else "PydicomReader"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = _monai_loader(reader)(str(path))
        image.meta["spacing_known"] = True
        if unit_range and torch.isfinite(image).all():  # NaN voxels are left for the check that counts them
            low, high = float(image.min()), float(image.max())
            image = (image - low) / max(high - low, 1e-6)
        return image
    if is_dicom_file(path):
        array, spacing = _dicom_2d(path, unit_range)
    elif rank == 3:
        array = to_unit_range(_flat_volume(path)) if unit_range else _flat_volume(path).astype(np.float32)
    else:
        array = read_image(path)
        array = to_unit_range(array) if unit_range else array.astype(np.float32)
    affine = torch.eye(4, dtype=torch.float64)
    if spacing is not None:
        affine[0, 0], affine[1, 1] = spacing
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), affine=affine)
    image.meta["spacing_known"] = spacing is not None
    return image


# ============================================================================================ transforms
class LoadMedicalImaged(MapTransform):
    """Read the files named under `keys` and check them: rank, finite values, channel count, label values.

    The image keeps its affine (MetaTensor) so Orientationd and Spacingd can follow. A 1-channel image for a
    3-channel model is repeated (grey radiographs for RGB-pretrained models); any other mismatch is an error.
    """

    def __init__(self, keys: Sequence[str], rank: int, unit_range: bool, in_chans: int | None = None,
                 label_key: str | None = None):
        super().__init__(keys)
        self.rank, self.unit_range, self.in_chans, self.label_key = rank, unit_range, in_chans, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.keys:
            path = d[key]
            image = read_input(path, self.rank, self.unit_range and key != self.label_key)
            if image.ndim - 1 != self.rank:
                raise DataError(f"{path}: read as shape {tuple(image.shape)} (channels first), a "
                                f"{image.ndim - 1}D {'volume' if image.ndim == 4 else 'image'}; expected "
                                f"{self.rank}D {'volumes' if self.rank == 3 else 'images'}")
            bad = int((~torch.isfinite(image)).sum())
            if bad:
                raise DataError(f"{path}: {bad} of {image.numel()} values are NaN or infinite; fix or remove the "
                                f"file (mimkit does not fill them in)")
            if key == self.label_key:
                if image.shape[0] != 1 or not torch.equal(image, image.round()) or image.min() < 0:
                    raise DataError(f"{path}: a label map must hold one channel of non-negative integer classes; "
                                    f"found {image.shape[0]} channel(s), values {float(image.min())}.."
                                    f"{float(image.max())}")
            elif self.in_chans is not None and image.shape[0] != self.in_chans:
                if image.shape[0] == 1 and self.rank == 2:
                    image = image.repeat(self.in_chans, *([1] * self.rank))
                else:
                    raise DataError(f"{path}: {image.shape[0]} channel(s) where the model takes in_chans="
                                    f"{self.in_chans}")
            d[key] = image
        return d


class CheckSpacingd(MapTransform):
    """Before resampling: the file must state its spacing, and the resampled volume must be neither larger than
    MAX_VOXELS nor smaller than `min_fraction` of the crop on any axis (the crop would be mostly padding)."""

    def __init__(self, keys: Sequence[str], spacing: Sequence[float], roi: Sequence[int] | None, min_fraction: float):
        super().__init__(keys)
        self.spacing, self.min_fraction = tuple(spacing), min_fraction
        self.roi = tuple(roi) if roi is not None else None  # 2D slices: no 3D crop to check

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image = d[self.keys[0]]
        path = d.get("path", "")
        if not image.meta.get("spacing_known", True):
            raise DataError(f"{path}: this file states no voxel spacing (TIFF/NPY/PNG), so it cannot be resampled "
                            f"to {self.spacing} mm; drop --spacing or convert it to NIfTI/DICOM")
        check_resampled_shape(path, image.shape[1:], image.pixdim.tolist(), self.spacing, self.roi,
                              self.min_fraction)
        return d


def check_resampled_shape(path, shape: Sequence[int], pixdim: Sequence[float], spacing: Sequence[float],
                          roi: Sequence[int] | None, min_fraction: float) -> tuple[int, ...]:
    """The shape after resampling `shape` from `pixdim` to `spacing` (mm); DataError when unusable."""
    if len(pixdim) != len(spacing):
        raise DataError(f"{path}: {len(pixdim)} spacing values for {len(spacing)} requested (--spacing)")
    new = tuple(max(1, int(round(n * p / s))) for n, p, s in zip(shape, pixdim, spacing))
    if math.prod(new) > MAX_VOXELS:
        raise DataError(f"{path}: resampling {tuple(shape)} voxels of {tuple(round(p, 3) for p in pixdim)} mm to "
                        f"{tuple(spacing)} mm gives {new} ({math.prod(new):,} voxels, over {MAX_VOXELS:,}); "
                        f"choose a coarser --spacing")
    if roi is not None:
        short = [axis for axis, (n, r) in enumerate(zip(new, roi)) if n < min_fraction * r]
        if short:
            raise DataError(f"{path}: at {tuple(spacing)} mm the volume is {new} voxels, less than "
                            f"{min_fraction:g} x the crop {tuple(roi)} on axis {short}; a crop there would be "
                            f"mostly padding: use a finer --spacing or a smaller --roi")
    return new


class CheckSized(MapTransform):
    """After resampling: no axis may be shorter than `min_fraction` of the crop (then padding fills the rest)."""

    def __init__(self, keys: Sequence[str], roi: Sequence[int], min_fraction: float):
        super().__init__(keys)
        self.roi, self.min_fraction = tuple(roi), min_fraction

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        shape = tuple(data[self.keys[0]].shape[1:])
        short = [axis for axis, (n, r) in enumerate(zip(shape, self.roi)) if n < self.min_fraction * r]
        if short:
            raise DataError(f"{data.get('path', '')}: the volume is {shape} voxels after resampling, less than "
                            f"{self.min_fraction:g} x the crop {self.roi} on axis {short}; use a finer --spacing "
                            f"or a smaller --roi")
        return dict(data)


class SliceVolumed(Randomizable, MapTransform):
    """2D slices of 3D volumes: a random slice along `axis` (0-2, spatial) when training, the middle one otherwise."""

    def __init__(self, keys: Sequence[str], axis: int = 2, random: bool = True):
        MapTransform.__init__(self, keys)
        if axis not in (0, 1, 2):
            raise ConfigError(f"slice_axis must be 0, 1 or 2 (a spatial axis of the volume), got {axis}")
        self.axis, self.random, self.index = axis, random, 0

    def randomize(self, size: int) -> None:
        self.index = int(self.R.randint(size)) if self.random else size // 2

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        self.randomize(d[self.keys[0]].shape[1 + self.axis])
        for key in self.keys:
            d[key] = d[key].select(1 + self.axis, self.index)
        return d


def _resize(image: torch.Tensor, size: Sequence[int], nearest: bool = False) -> torch.Tensor:
    image = torch.as_tensor(image).float()
    if tuple(image.shape[1:]) == tuple(size):
        return image
    if nearest:
        return F.interpolate(image[None], size=tuple(size), mode="nearest")[0]
    mode = "bicubic" if len(size) == 2 else "trilinear"
    return F.interpolate(image[None], size=tuple(size), mode=mode, align_corners=False,
                         antialias=len(size) == 2)[0]


class RandResizedCropd(Randomizable, MapTransform):
    """MAE's random resized crop for 2D images: a crop of `scale` of the area and aspect ratio in `ratio`
    (log-uniform), resized to `size` with bicubic interpolation; torchvision's sampling rule."""

    def __init__(self, keys: Sequence[str], size: Sequence[int], scale: Sequence[float] = (0.2, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3)):
        MapTransform.__init__(self, keys)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
        self.size, self.scale, self.ratio = tuple(size), tuple(scale), tuple(ratio)
        self.box = (0, 0, 0, 0)

    def randomize(self, height: int, width: int) -> None:
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                self.box = (int(self.R.randint(0, height - h + 1)), int(self.R.randint(0, width - w + 1)), h, w)
                return
        # torchvision's fallback: the whole image, cropped to the nearest allowed aspect ratio
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        self.box = ((height - h) // 2, (width - w) // 2, h, w)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        self.randomize(*d[self.keys[0]].shape[1:3])
        top, left, h, w = self.box
        for key in self.keys:
            d[key] = _resize(d[key][:, top:top + h, left:left + w], self.size)
        return d


class ResizeShortSided(MapTransform):
    """Resize so the shorter side is `size` (aspect kept), as torchvision's Resize(int) does."""

    def __init__(self, keys: Sequence[str], size: int):
        super().__init__(keys)
        self.size = int(size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.keys:
            height, width = d[key].shape[1:3]
            scale = self.size / min(height, width)
            d[key] = _resize(d[key], (max(1, round(height * scale)), max(1, round(width * scale))))
        return d


class GuardedPrepare(Transform):
    """Runs the deterministic pipeline; a failure becomes {"error": message} so a cache can hold it and the
    dataset can count the file as skipped (MONAI wraps a transform's exception in RuntimeError: unwrap it)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, item: Mapping[Hashable, Any]) -> dict:
        try:
            out = self.pipeline(dict(item))
        except Exception as error:  # every failure is reported with the file's name, not raised mid-epoch
            return {"error": _explain(error, item.get("image")), "path": str(item.get("image"))}
        out = dict(out)
        for key, value in out.items():
            if isinstance(value, torch.Tensor):
                out[key] = value.as_tensor() if hasattr(value, "as_tensor") else value
        out.pop("spacing_known", None)
        return out


def _explain(error: BaseException, path) -> str:
    seen, current = [], error
    while current is not None and current not in seen:
        if isinstance(current, MimkitError):
            return str(current)
        seen.append(current)
        current = current.__cause__ or current.__context__
    inner = seen[-1]
    return f"{path}: cannot be prepared ({type(inner).__name__}: {inner})"


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
                "uncertainty", "classes", "caption", "caption_fundus", "caption_oct", "views", "skipped_files",
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


# ============================================================================================ pipelines
def _pipelines(pre: Preprocessing, in_chans: int | None, label_kind: str | None, whole_volume: bool):
    """(deterministic, train-time random, evaluation) MONAI Compose pipelines for these settings."""
    from monai import transforms as T

    mask = label_kind == "mask"
    keys = ["image", "label"] if mask else ["image"]
    modes = ("bilinear", "nearest") if mask else "bilinear"
    rank = 3 if pre.volumes else 2
    roi3 = pre.img_size if pre.spatial_dims == 3 else None
    unit = pre.modality not in ("ct", "mr")
    steps = [LoadMedicalImaged(keys, rank, unit, in_chans, label_key="label" if mask else None)]
    if pre.volumes:
        steps.append(T.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))))
        if pre.spacing is not None:
            steps += [CheckSpacingd(["image"], pre.spacing, roi3, pre.min_roi_fraction),
                      T.Spacingd(keys, pixdim=pre.spacing, mode=modes)]
    if pre.intensity_range is not None:
        low, high = pre.intensity_range
        steps.append(T.ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    elif pre.modality == "mr":
        steps.append(T.NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    foreground = pre.foreground if pre.foreground is not None else pre.modality in ("ct", "mr")
    if pre.volumes and foreground:
        # CT: voxels above the window's low end; MR: non-zero voxels (NormalizeIntensityd keeps zeros at 0)
        select = (lambda x: x > 0) if pre.modality != "mr" else (lambda x: x != 0)
        steps.append(T.CropForegroundd(keys, source_key="image", select_fn=select, allow_smaller=True))
    if roi3 is not None:
        steps += [CheckSized(["image"], roi3, pre.min_roi_fraction), T.SpatialPadd(keys, spatial_size=roi3)]
    prepare = T.Compose(steps)

    augment, evaluate = [], []
    if pre.spatial_dims == 3:
        if pre.crop == "rand_pos_neg":
            # Hi-End-MAE pretraining (med_datasets.py): crops centred on foreground pos:neg of the time; without
            # a label map the image itself marks the foreground (voxels above the window's low end)
            augment.append(T.RandCropByPosNegLabeld(keys, label_key="label" if mask else "image", spatial_size=roi3,
                                                    pos=pre.crop_pos, neg=pre.crop_neg, num_samples=1,
                                                    image_key="image", image_threshold=0))
        else:
            augment.append(T.RandSpatialCropd(keys, roi_size=roi3, random_size=False))
        if pre.flip_prob:
            augment += [T.RandFlipd(keys, prob=pre.flip_prob, spatial_axis=axis) for axis in range(3)]
        if pre.rotate90_prob:
            augment.append(T.RandRotate90d(keys, prob=pre.rotate90_prob, max_k=3))
        if not whole_volume:
            evaluate.append(T.CenterSpatialCropd(keys, roi_size=roi3))
    else:
        if pre.slices:
            augment.append(SliceVolumed(keys, pre.slice_axis, random=True))
            evaluate.append(SliceVolumed(keys, pre.slice_axis, random=False))
        augment.append(RandResizedCropd(["image"], pre.img_size, scale=pre.crop_scale))
        if pre.hflip:
            augment.append(T.RandFlipd(["image"], prob=0.5, spatial_axis=1))
        evaluate += [ResizeShortSided(["image"], round(min(pre.img_size) / pre.crop_pct)),
                     T.CenterSpatialCropd(["image"], roi_size=pre.img_size)]
    if pre.scale_intensity[1]:
        augment.append(T.RandScaleIntensityd("image", factors=pre.scale_intensity[0], prob=pre.scale_intensity[1]))
    if pre.shift_intensity[1]:
        augment.append(T.RandShiftIntensityd("image", offsets=pre.shift_intensity[0], prob=pre.shift_intensity[1]))
    return prepare, T.Compose(augment), T.Compose(evaluate)


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
                 stats_samples: int = 32, cache_workers: int = 2):
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
        self.samples_per_volume = samples_per_volume
        self.patch_size = as_tuple(patch_size, preprocessing.spatial_dims, "patch_size")
        self.skipped: list[tuple[str, str]] = []
        self.items = [dict(item, path=str(item["image"])) for item in items]
        if not self.items:
            raise DataError(f"no images or volumes found{f' under {self.root}' if self.root else ''}")
        self.in_chans = self._probe_all(in_chans)
        self.store_index = list(range(len(self.items)))
        self.prepare, self.augment, self.evaluate = _pipelines(preprocessing, self.in_chans, label_kind, whole_volume)
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
            sample["text"] = self.caption.replace("[CLS]", self.classes[int(label)])
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

    Labels are 14-long multi-hot vectors in CHESTXRAY14_CLASSES order. Listed images that are absent are
    skipped and counted (appended to `skipped`).
    """
    root = Path(root)
    table = root / csv_name
    if not table.is_file():
        raise DataError(f"{table} does not exist; the ChestX-ray14 layout needs {csv_name} with the columns "
                        f"'Image Index' and 'Finding Labels'")
    split_files = {"train": "train_val_list.txt", "test": "test_list.txt"}
    if split not in split_files:
        raise ConfigError(f"ChestX-ray14 split must be 'train' or 'test', got {split!r}")
    listed = root / split_files[split]
    if not listed.is_file():
        raise DataError(f"{listed} does not exist; ChestX-ray14's official split lists train_val_list.txt and "
                        f"test_list.txt belong next to {csv_name}")
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


__all__ = ["MODALITIES", "LAYOUTS", "CACHES", "CT_WINDOW", "CT_SPACING", "CHESTXRAY14_CLASSES", "CHEXPERT_CLASSES",
           "CHEXPERT_COMPETITION", "Probe", "probe_input", "read_input", "find_inputs", "check_dicom_series",
           "Preprocessing", "preprocessing_from", "MedicalDataset", "UnifiedDataset", "folder_items",
           "class_folder_items", "decathlon_items", "chestxray14_items", "chexpert_items", "layout_items",
           "build_dataset", "SYNTHETIC_KINDS", "write_synthetic", "write_synthetic_organs",
           "write_synthetic_chestxray14", "write_synthetic_chexpert", "write_synthetic_classes",
           "write_synthetic_anomaly", "LoadMedicalImaged", "RandResizedCropd", "SliceVolumed"]
