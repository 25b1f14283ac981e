"""MONAI dictionary transforms for medical images and volumes, and the pipelines built from them.

Pipelines: reading and checking (rank, finite values, channels, label maps), orientation (RAS), resampling to a
spacing, CT intensity window, MR z-score, foreground crop, random 3D sub-volumes, random resized 2D crops, 2D
slices of volumes. The deterministic part runs under GuardedPrepare, which turns a failure into a record the
dataset counts as skipped.
"""
from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable, Transform

from mimkit.core.errors import ConfigError, DataError, MimkitError

from .readers import read_input

MAX_VOXELS = 2 ** 28          # a spacing that resamples into more voxels than this (1 GiB as float32) is refused


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


# ============================================================================================ pipelines
def build_pipelines(pre, in_chans: int | None, label_kind: str | None, whole_volume: bool):
    """(deterministic, train-time random, evaluation) MONAI Compose pipelines for the settings `pre` (a
    mimkit.medical.data.Preprocessing; not imported here, so the imports run readers <- transforms <- data)."""
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


__all__ = ["MAX_VOXELS", "LoadMedicalImaged", "CheckSpacingd", "check_resampled_shape", "CheckSized", "SliceVolumed",
           "RandResizedCropd", "ResizeShortSided", "GuardedPrepare", "build_pipelines"]
