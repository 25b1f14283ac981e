"""Reading medical images and volumes: finding the inputs in a folder, DICOM series, header probes, decoding.

NIfTI (nibabel), DICOM series folders and single DICOM files (pydicom), 8/16-bit PNG, TIFF (2D images or
stacks), JPEG fundus photographs and .npy arrays. A file that cannot be read raises a DataError naming it.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimkit.core.data import IMAGE_SUFFIXES, probe_image, read_image, to_unit_range
from mimkit.core.errors import DataError, MimkitError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
INPUT_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES + IMAGE_SUFFIXES


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


__all__ = ["NIFTI_SUFFIXES", "DICOM_SUFFIXES", "INPUT_SUFFIXES", "is_dicom_file", "find_inputs", "dicom_files",
           "check_dicom_series", "Probe", "probe_input", "read_input"]
