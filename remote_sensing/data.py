"""Remote-sensing rasters: GeoTIFF / COG reading with rasterio, tile datasets, torchgeo datasets, band metadata.
`GeoTiffData` is the data section of `mimkit-rs pretrain` (its config.yaml re-creates it).

Every sample is a dict in the core's convention plus the bands it holds:
{"image": float32 (C, H, W) normalised per band, "wavelengths": (C,) centre wavelengths in nm, "bandwidths":
(C,) nm, "band_names": [C names], "valid": (H, W) bool nodata mask, "index": int, optional "label"
(class index or multi-hot) and "mask" (segmentation classes, -1 = ignore)}. `dataset[(index, sample_seed)]`
(from core.data.ResumableSampler) seeds the augmentation, so a resumed run sees the same crops.

Reflectance scaling: `scale` and `offset` turn stored digital numbers into reflectance (x * scale + offset;
Sentinel-2 L2A stores reflectance x 10000, so scale=1e-4). Per-band mean / std of the scaled values are computed
once over the valid pixels of up to `stats_tiles` tiles and cached in a JSON file beside the data, keyed by the
file list (names, sizes, modification times) and the band selection.

Bad input: an unreadable file, a GeoTIFF without georeferencing, a band count that does not match the sensor
description, a file too small for one tile, an all-nodata tile, a tile under `min_valid`, and a tile with NaN or
infinite values in a file that declares no nodata are skipped and counted in `dataset.skipped` (or raise with
strict=True); if every file is bad, or the folder mixes integer digital numbers with floating-point reflectances,
a DataError says what was found. NaN / infinite values in a file that declares nodata (a nodata value, a mask or an
alpha band in the file, or `nodata` given) are nodata pixels: `valid` is 0 there, and each such file is counted with
its number of those pixels in `dataset.partial` (the run's metrics.json lists both).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import random
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import albumentations as A
import numpy as np
import rasterio
import torch
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from torch.utils.data import Dataset

from mimkit.core.data import (ChannelStats, NormalisedDataset, center_crop_transform, eval_transform, list_files,
                              mae_train_transform, normalisation_stats, scan_folder)
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.tokens import as_tuple, grid_shape

from .sensors import SENSORS, SENTINEL2_L2A_BANDS, Band, Sensor
from .sensors import sensor as sensor_by_name

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff")
STATS_FILE = ".mimkit_band_stats.json"
IGNORE_INDEX = -1          # segmentation pixels without a label (nodata), skipped by the loss and the metrics
# Centre wavelengths (nm) used to pick a red, green, blue band for pictures and RGB band sets.
RGB_CENTRES_NM = (665.0, 560.0, 490.0)
_TRANSFORMS = {"train": mae_train_transform, "eval": lambda size: eval_transform(size, crop_pct=1.0),
               "center_crop": center_crop_transform}

# Sentinel-2 Level-2A files hold 12 bands (no cirrus band B10): a sensor description of its own.
SENTINEL2_L2A = Sensor("sentinel2_l2a", tuple(SENSORS["sentinel2"].select(SENTINEL2_L2A_BANDS)))


def resolve_sensor(name: str | Sensor | None) -> Sensor | None:
    """A sensor by name ("sentinel2", "sentinel2_l2a", "landsat8", "sentinel1", "rgb", "naip", ...); None or
    "none" for files described by band indices only (no wavelengths)."""
    if name is None or isinstance(name, Sensor):
        return name
    if name.lower() in ("none", ""):
        return None
    if name.lower() == SENTINEL2_L2A.name:
        return SENTINEL2_L2A
    try:
        return sensor_by_name(name)
    except ConfigError:
        raise ConfigError(f"unknown sensor {name!r}; choose one of {', '.join([*SENSORS, SENTINEL2_L2A.name])} "
                          f"or 'none' (bands by index, no wavelengths)") from None


def rgb_band_positions(bands: Sequence[Band]) -> list[int] | None:
    """Positions of the bands nearest in centre wavelength to red, green and blue (narrow optical bands only)."""
    optical = [i for i, b in enumerate(bands) if 380 <= b.center_nm <= 760 and b.width_nm <= 160]
    if len(optical) < 3:
        return None
    picks = [min(optical, key=lambda i: abs(bands[i].center_nm - centre)) for centre in RGB_CENTRES_NM]
    return picks if len(set(picks)) == 3 else None


def band_indices_by_wavelength(source: Sequence[Band], target: Sequence[Band],
                               max_distance_nm: float = 40.0) -> list[int | None]:
    """For each target band, the position of the source band nearest in centre wavelength (None beyond
    `max_distance_nm`): the `band_indices` of `adapt_patch_embed(mode="select")` for moving a checkpoint
    between sensors, e.g. an RGB ViT into a Sentinel-2 encoder."""
    out: list[int | None] = []
    for band in target:
        distances = [abs(s.center_nm - band.center_nm) for s in source]
        best = int(np.argmin(distances))
        out.append(best if distances[best] <= max_distance_nm else None)
    return out


# ---------------------------------------------------------------------------------------------- raster files
@dataclass(frozen=True)
class RasterHeader:
    """What a raster's header says, read without decoding pixels."""

    path: Path
    count: int
    height: int
    width: int
    dtype: str
    crs: str | None
    transform: tuple[float, ...]
    nodata: float | None
    descriptions: tuple[str | None, ...]
    georeferenced: bool
    may_have_nodata: bool     # a nodata value, an internal mask or an alpha band


def read_header(path: str | Path) -> RasterHeader:
    """Open a GeoTIFF / COG and read its header; DataError if it cannot be opened."""
    path = Path(path)
    try:
        # rasterio warns about a file without georeferencing; the header's `georeferenced` says so instead.
        # (No catch_warnings here: it is not thread-safe, and headers are read in threads.)
        with rasterio.open(path) as src:
            flags = src.mask_flag_enums
            has_gcps = bool(src.gcps[0])
            georeferenced = src.crs is not None and (not src.transform.is_identity or has_gcps)
            return RasterHeader(
                path=path, count=src.count, height=src.height, width=src.width, dtype=src.dtypes[0],
                crs=src.crs.to_string() if src.crs else None, transform=tuple(src.transform)[:6],
                nodata=src.nodata, descriptions=tuple(src.descriptions), georeferenced=georeferenced,
                may_have_nodata=any(MaskFlags.all_valid not in f for f in flags))
    except RasterioError as error:
        raise DataError(f"{path}: cannot open as a raster ({type(error).__name__}: {error})") from None


def read_window(path: str | Path, indexes: Sequence[int] | None = None, window: Sequence[int] | None = None,
                nodata: float | None = None, finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read bands (0-based `indexes`, default all) of a window (row, col, height, width; default the whole file):
    (array (C, h, w) in the stored dtype, valid (h, w) bool). A pixel is invalid when any selected band is
    nodata: the file's nodata value or mask, `nodata` if given, or (with `finite`) NaN or infinite."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                bands = [i + 1 for i in (indexes if indexes is not None else range(src.count))]
                win = Window(window[1], window[0], window[3], window[2]) if window is not None else None
                array = src.read(bands, window=win)
                valid = (src.read_masks(bands, window=win) > 0).all(0)
    except RasterioError as error:
        raise DataError(f"{path}: cannot read {'window ' + str(tuple(window)) if window else 'pixels'} "
                        f"({type(error).__name__}: {error})") from None
    if nodata is not None:
        valid &= ~(array == nodata).any(0)
    if finite and array.dtype.kind == "f":
        valid &= np.isfinite(array).all(0)
    return array, valid


def write_geotiff(path: str | Path, array: np.ndarray, *, crs: Any = None, transform: Any = None,
                  nodata: float | None = None, band_names: Sequence[str] | None = None,
                  tags: dict | None = None, compress: str = "deflate") -> Path:
    """Write (C, H, W) as a tiled GeoTIFF with its CRS, affine transform, nodata value and band descriptions."""
    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise DataError(f"write_geotiff({path}): expected (C, H, W) or (H, W), got shape {array.shape}")
    count, height, width = array.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "count": count, "height": height, "width": width, "dtype": array.dtype.name,
               "crs": crs, "transform": transform, "nodata": nodata, "compress": compress}
    if height >= 16 and width >= 16 and height % 16 == 0 and width % 16 == 0:
        profile.update(tiled=True, blockxsize=min(256, width), blockysize=min(256, height))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
            if band_names is not None:
                if len(band_names) != count:
                    raise DataError(f"write_geotiff({path}): {len(band_names)} band names for {count} bands")
                for i, name in enumerate(band_names, start=1):
                    dst.set_band_description(i, str(name))
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
    return path


@dataclass(frozen=True)
class BandSelection:
    """Which bands of a file are read (0-based `indexes`), with their descriptions when the sensor is known."""

    indexes: tuple[int, ...]
    names: tuple[str, ...]
    bands: tuple[Band, ...] | None

    @property
    def wavelengths(self) -> torch.Tensor | None:
        return None if self.bands is None else torch.tensor([b.center_nm for b in self.bands], dtype=torch.float32)

    @property
    def bandwidths(self) -> torch.Tensor | None:
        return None if self.bands is None else torch.tensor([b.width_nm for b in self.bands], dtype=torch.float32)


def parse_bands(bands: str | int | Sequence[str | int] | None) -> list[str | int] | str | None:
    """Band choices from the command line or a recipe: names, 0-based indices (digits), or a set ("all", "rgb")."""
    if bands is None:
        return None
    if isinstance(bands, (str, int)):
        if isinstance(bands, str) and bands.lower() in ("all", "rgb"):
            return bands.lower()
        bands = [b for b in str(bands).replace(",", " ").split()] if isinstance(bands, str) else [bands]
    out: list[str | int] = []
    for band in bands:
        out.append(int(band) if isinstance(band, int) or str(band).lstrip("-").isdigit() else str(band))
    if len(out) == 1 and isinstance(out[0], str) and out[0].lower() in ("all", "rgb"):
        return out[0].lower()
    return out


# Band orders of known GeoTIFF datasets whose files carry no band descriptions (`band_order` takes a key or a list).
BAND_ORDERS = {
    # EuroSAT-MS GeoTIFFs (and torchgeo's EuroSAT.all_band_names): B8A stored last, after B12
    "eurosat": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"),
}
_assumed_order_warned: set[tuple[str, str]] = set()


def select_bands(header: RasterHeader, sensor: Sensor | None, bands=None,
                 band_order: str | Sequence[str] | None = None) -> BandSelection:
    """Resolve a band choice against one file: by name (the sensor's names, or the file's band descriptions) or by
    0-based index; DataError when the file's band count does not match the sensor description.

    The file's band order comes from its band descriptions, else `band_order` (band names, or a known dataset
    layout of BAND_ORDERS such as "eurosat"), else it is assumed to be the sensor's (with a warning)."""
    bands = parse_bands(bands)
    if sensor is not None:
        names = [d for d in header.descriptions if d]
        known = {b.name.lower(): b for b in sensor.bands}
        order = BAND_ORDERS.get(band_order.lower()) if isinstance(band_order, str) else band_order
        if isinstance(band_order, str) and order is None:
            raise ConfigError(f"band_order {band_order!r} is not a known layout ({', '.join(BAND_ORDERS)}); give the "
                              f"file's band names in order instead")
        if len(names) == header.count and all(n.lower() in known for n in names):
            # the file names its bands: trust that order (EuroSAT's files store B8A last, not in the sensor's order)
            file_bands = [known[n.lower()] for n in names]
        elif order is not None:
            unknown = [n for n in order if str(n).lower() not in known]
            if len(order) != header.count or unknown:
                raise DataError(f"{header.path}: band_order names {len(order)} band(s)"
                                f"{f' ({unknown} not of sensor ' + repr(sensor.name) + ')' if unknown else ''} but "
                                f"the file has {header.count}")
            file_bands = [known[str(n).lower()] for n in order]
        elif header.count == len(sensor.bands):
            if (str(Path(header.path).parent), sensor.name) not in _assumed_order_warned:  # once per folder
                _assumed_order_warned.add((str(Path(header.path).parent), sensor.name))
                log.warning("%s: no band descriptions; its %d bands are assumed to be in %s's order (%s). If the "
                            "files store another order (EuroSAT-MS: B8A last), set band_order", header.path,
                            header.count, sensor.name, ", ".join(sensor.band_names))
            file_bands = list(sensor.bands)
        else:
            hint = (" (Sentinel-2 L2A products have 12 bands: use sensor 'sentinel2_l2a')"
                    if sensor.name == "sentinel2" and header.count == 12 else "")
            raise DataError(f"{header.path}: has {header.count} band(s) but sensor {sensor.name!r} describes "
                            f"{len(sensor.bands)} ({', '.join(sensor.band_names)}){hint}; choose the sensor "
                            f"that wrote the file, or sensor 'none' with band indices")
        file_names = [b.name for b in file_bands]
    else:
        file_bands = None
        file_names = [d or f"band{i}" for i, d in enumerate(header.descriptions)]
    if bands is None or bands == "all":
        picks = list(range(header.count))
    elif bands == "rgb":
        picks = rgb_band_positions(file_bands) if file_bands else ([0, 1, 2] if header.count >= 3 else None)
        if picks is None:
            raise ConfigError(f"{header.path}: band set 'rgb' needs red, green and blue bands; the file has "
                              f"{', '.join(file_names)}")
    else:
        lookup = {n.lower(): i for i, n in enumerate(file_names)}
        picks = []
        for band in bands:
            if isinstance(band, int):
                if not 0 <= band < header.count:
                    raise ConfigError(f"band index {band} is out of range for {header.path} ({header.count} bands; "
                                      f"indices start at 0)")
                picks.append(band)
            elif band.lower() in lookup:
                picks.append(lookup[band.lower()])
            else:
                raise ConfigError(f"band {band!r} is not in {header.path}; its bands are {', '.join(file_names)}")
    return BandSelection(tuple(picks), tuple(file_names[i] for i in picks),
                         None if file_bands is None else tuple(file_bands[i] for i in picks))


def tile_windows(height: int, width: int, tile: int | Sequence[int], stride: int | Sequence[int] | None = None
                 ) -> list[tuple[int, int, int, int]]:
    """Windows (row, col, h, w) of size `tile` covering the image; the last row and column are moved in to end at
    the border, so every pixel is covered and no window is partial."""
    th, tw = as_tuple(tile, 2, "tile_size")
    sh, sw = as_tuple(stride if stride is not None else (th, tw), 2, "stride")
    if th > height or tw > width:
        return []

    def starts(size, length, step):
        values = list(range(0, size - length + 1, step))
        return values + [size - length] if values[-1] != size - length else values

    return [(r, c, th, tw) for r in starts(height, th, sh) for c in starts(width, tw, sw)]


def write_tiles(scenes: Sequence[str | Path], out: str | Path, tile_size: int | Sequence[int] = 256,
                stride: int | Sequence[int] | None = None, shard_size: int = 1000, sensor: str | Sensor | None = None,
                bands=None, nodata: float | None = None, min_valid: float = 0.0, require_georeference: bool = True,
                strict: bool = False, progress: bool = False) -> dict:
    """Cut scenes (files or folders of GeoTIFF / COG) into georeferenced tiles, `shard_size` per folder.

    Each scene is read window by window (never whole); a tile keeps the scene's CRS, gets its own affine
    transform, the nodata value and band names. All-nodata tiles, tiles whose valid fraction is below
    `min_valid`, and scenes that cannot be used (unreadable, no georeferencing, wrong band count) are skipped
    and counted. OUT/index.json lists every tile (shard, scene, window, bounds, valid fraction) and the counts;
    OUT/shard-00000/, shard-00001/, ... hold the tiles, ready for `GeoTiffDataset(OUT)`.
    """
    from rasterio.windows import bounds as window_bounds
    from rasterio.windows import transform as window_transform
    from tqdm.auto import tqdm

    out = Path(out)
    if shard_size < 1:
        raise ConfigError(f"shard_size must be at least 1, got {shard_size}")
    if not 0.0 <= min_valid <= 1.0:
        raise ConfigError(f"min_valid is a fraction of the tile's pixels, in [0, 1]; got {min_valid}")
    files: list[Path] = []
    for scene in scenes:
        scene = Path(scene)
        if scene.is_dir():
            files += list_files(scene, RASTER_SUFFIXES)
        elif scene.is_file():
            files.append(scene)
        else:
            raise DataError(f"scene {scene} does not exist")
    if not files:
        raise DataError(f"no GeoTIFF files (.tif, .tiff) in {', '.join(map(str, scenes))}")
    sensor = resolve_sensor(sensor)
    tiles, skipped_scenes = [], []
    counts = {"all_nodata": 0, "below_min_valid": 0}
    names: tuple[str, ...] | None = None
    for path in tqdm(files, desc="scenes", disable=not progress):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)  # counted as a skipped scene instead
                header = read_header(path)
            if require_georeference and not header.georeferenced:
                raise DataError(f"{path}: has no georeferencing (no CRS or an identity transform); tiles would have "
                                f"no place on Earth (--allow-ungeoreferenced to cut it anyway)")
            selection = select_bands(header, sensor, bands)
            if names is not None and selection.names != names:
                raise DataError(f"{path}: its bands {selection.names} differ from the first scene's {names}")
            windows = tile_windows(header.height, header.width, tile_size, stride)
            if not windows:
                raise DataError(f"{path}: is {header.height}x{header.width} pixels, smaller than one tile")
        except DataError as error:
            if strict:
                raise
            skipped_scenes.append([str(path), str(error)])
            log.warning("skipping scene: %s", error)
            continue
        names = selection.names
        fill = nodata if nodata is not None else header.nodata
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                indexes = [i + 1 for i in selection.indexes]
                for row, col, height, width in windows:
                    window = Window(col, row, width, height)
                    array = src.read(indexes, window=window)
                    valid = (src.read_masks(indexes, window=window) > 0).all(0)
                    if nodata is not None:
                        valid &= ~(array == nodata).any(0)
                    fraction = float(valid.mean())
                    if fraction == 0.0:
                        counts["all_nodata"] += 1
                        continue
                    if fraction < min_valid:
                        counts["below_min_valid"] += 1
                        continue
                    shard = f"shard-{len(tiles) // shard_size:05d}"
                    name = f"{path.stem}_r{row:06d}_c{col:06d}.tif"
                    georeferenced = header.georeferenced
                    write_geotiff(out / shard / name, array, crs=src.crs if georeferenced else None,
                                  transform=window_transform(window, src.transform) if georeferenced else None,
                                  nodata=fill, band_names=list(names))
                    tiles.append({"path": f"{shard}/{name}", "scene": str(path), "window": [row, col, height, width],
                                  "bounds": list(window_bounds(window, src.transform)) if georeferenced else None,
                                  "crs": header.crs, "valid_fraction": round(fraction, 4)})
    summary = {"tile_size": list(as_tuple(tile_size, 2, "tile_size")), "stride": stride, "shard_size": shard_size,
               "sensor": sensor.name if sensor else None, "bands": list(names or ()), "written": len(tiles),
               "shards": -(-len(tiles) // shard_size), "scenes": len(files), "skipped_tiles": counts,
               "skipped_scenes": skipped_scenes, "tiles": tiles}
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").write_text(json.dumps(summary, indent=1))
    if not tiles:
        raise DataError(f"no tile written from {len(files)} scene(s): {counts['all_nodata']} all-nodata, "
                        f"{counts['below_min_valid']} below min_valid, {len(skipped_scenes)} scene(s) skipped"
                        + (f" (first: {skipped_scenes[0][1]})" if skipped_scenes else ""))
    return summary


# ---------------------------------------------------------------------------------------------- statistics
def cache_key(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_stats(cache_file: Path | None, key: str) -> tuple[list[float], list[float]] | None:
    if cache_file is None or not cache_file.is_file():
        return None
    try:
        entry = json.loads(cache_file.read_text()).get(key)
    except (OSError, json.JSONDecodeError):
        log.warning("ignoring an unreadable statistics cache %s", cache_file)
        return None
    return (entry["mean"], entry["std"]) if entry else None


def store_stats(cache_file: Path | None, key: str, mean, std, about: dict) -> None:
    if cache_file is None:
        return
    try:
        content = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        content = {}
    content[key] = {"mean": list(mean), "std": list(std), **about}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(content, indent=1))
    except OSError as error:  # a read-only data folder: statistics are recomputed next time
        log.warning("cannot write the band statistics cache %s (%s); pass cache_dir", cache_file, error)


# ---------------------------------------------------------------------------------------------- datasets
def _transform(name_or_compose, img_size):
    if isinstance(name_or_compose, str):
        if name_or_compose not in _TRANSFORMS:
            raise ConfigError(f"transform must be one of {sorted(_TRANSFORMS)} or an albumentations Compose, "
                              f"got {name_or_compose!r}")
        return name_or_compose, _TRANSFORMS[name_or_compose](img_size)
    return "custom", name_or_compose


def _scaled(image: np.ndarray, scale: float | None, offset: float) -> np.ndarray:
    image = image.astype(np.float32)
    if scale is not None:
        image = image * np.float32(scale) + np.float32(offset)
    return image


class GeoTiffDataset(NormalisedDataset):
    """GeoTIFF / COG tiles from a folder (flat = unlabelled, class subfolders = labelled) or a list of files.

    With `tile_size`, every file is a scene cut into windows of that size (read window by window, never whole);
    otherwise each file is one sample. `sensor` describes the files' bands (see `sensors.py`; "none" for
    unknown bands chosen by index); `bands` picks some by name or 0-based index ("rgb" picks red, green, blue).
    `mask_root` holds segmentation masks with the same relative paths (class values, `mask_nodata` ignored).
    """

    def __init__(self, root: str | Path | Sequence[str | Path], sensor: str | Sensor | None = "sentinel2",
                 bands=None, img_size: int | Sequence[int] = 64, patch_size: int | Sequence[int] = 16,
                 tile_size: int | Sequence[int] | None = None, stride: int | Sequence[int] | None = None,
                 transform: str | A.BaseCompose = "train", scale: float | None = None, offset: float = 0.0,
                 nodata: float | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 labelled: bool | None = None, mask_root: str | Path | None = None, mask_nodata: int | None = 255,
                 strict: bool = False, require_georeference: bool = True, stats_tiles: int = 256,
                 cache_dir: str | Path | None = None, band_order: str | Sequence[str] | None = None,
                 min_valid: float = 0.0, clip_percentiles: Sequence[float] | None = None,
                 second_root: str | Path | None = None, second_sensor: str | Sensor | None = "sentinel1",
                 second_bands=None, second_scale: float | None = None):
        if not 0.0 <= min_valid <= 1.0:
            raise ConfigError(f"min_valid is a fraction of a tile's pixels, in [0, 1]; got {min_valid}")
        self.band_order, self.min_valid = band_order, float(min_valid)
        self.img_size = as_tuple(img_size, 2, "img_size")
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        grid_shape(self.img_size, self.patch_size)
        self.sensor = resolve_sensor(sensor)
        self.scale, self.offset, self.nodata = scale, float(offset), nodata
        self.tile_size = as_tuple(tile_size, 2, "tile_size") if tile_size is not None else None
        self.stride = stride
        self.strict, self.require_georeference = strict, require_georeference
        self.mask_root, self.mask_nodata = (Path(mask_root) if mask_root is not None else None), mask_nodata
        self.transform_name, self.transform = _transform(transform, self.img_size)
        self.skipped: list[tuple[Path, str]] = []
        self.root, files, self.targets, self.classes = self._scan(root, labelled)
        self.files, self.selections, headers = self._check_files(files, bands)
        self.selection = self.selections[0]
        self.in_chans = len(self.selection.indexes)
        # a file that says it has nodata (a value, a mask or an alpha band), or nodata given: its NaN / inf pixels
        # are nodata; elsewhere they are bad data (skipped and counted, as the core reader does)
        self.declares_nodata = [h.may_have_nodata or nodata is not None for h in headers]
        self.partial: list[tuple[Path, str]] = []
        self.items = self._items(headers)
        cache = Path(cache_dir) if cache_dir is not None else (self.root if self.root.is_dir() else self.root.parent)
        self.cache_file = cache / STATS_FILE
        # SMARTIES' normalisation: each band rescaled from its (1st, 99th) percentiles to [0, 1] and clipped there,
        # then standardised (utils/data_utils.py ImageNormalizeStandardize)
        self.clip_percentiles, self.clip_range = (tuple(clip_percentiles) if clip_percentiles is not None else None), None
        if self.clip_percentiles is not None:
            low, high = self.clip_percentiles
            if len(self.clip_percentiles) != 2 or not 0 <= low < high <= 100:
                raise ConfigError(f"clip_percentiles must be (low, high) with 0 <= low < high <= 100, got "
                                  f"{list(self.clip_percentiles)}")
            self.clip_range = self._percentiles(stats_tiles)
        self.mean, self.std = self._stats(mean, std, stats_tiles)
        self.second, self.pairs = None, {}
        if second_root is not None:
            self._pair(second_root, second_sensor, second_bands, second_scale, stats_tiles, clip_percentiles)

    # ------------------------------------------------------------------ scanning and checks
    def _scan(self, root, labelled):
        if isinstance(root, (list, tuple)):
            files = [Path(p) for p in root]
            missing = [p for p in files if not p.is_file()]
            if missing:
                raise DataError(f"raster file {missing[0]} does not exist ({len(missing)} of {len(files)} missing)")
            if not files:
                raise DataError("no raster files given")
            return files[0].parent, files, [], []
        root = Path(root)
        if not root.exists():
            raise DataError(f"data path {root} does not exist")
        if root.is_file():
            return root.parent, [root], [], []
        if labelled is None and self.mask_root is not None:  # segmentation pairs: images, not classes
            labelled = False
        files, targets, classes, labelled = scan_folder(root, RASTER_SUFFIXES, labelled)
        if not files:
            raise DataError(f"no GeoTIFF files (.tif, .tiff) under {root} "
                            f"({'class subfolders' if labelled else 'searched recursively'})")
        return root, files, targets, classes

    def _skip(self, path: Path, reason: str, warn: bool = True) -> None:
        if self.strict:
            raise DataError(f"{reason} (strict: pass strict=False / drop --strict-data to skip and count such files)")
        if (path, reason) in self.skipped:
            return  # the same tile found again (a later epoch, another statistics pass)
        self.skipped.append((path, reason))
        if warn:
            log.warning("skipping: %s", reason)

    def _mask_path(self, path: Path) -> Path:
        return self.mask_root / path.relative_to(self.root)

    def _check_files(self, files: list[Path], bands):
        def probe(path: Path):
            try:
                return read_header(path)
            except DataError as error:
                return str(error)

        with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=8) as pool:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # counted below as a skip instead
            headers = list(pool.map(probe, files))
        keep, selections, kept_headers, targets = [], [], [], []
        need = self.tile_size or self.patch_size
        for i, (path, header) in enumerate(zip(files, headers)):
            try:
                if isinstance(header, str):
                    raise DataError(header)
                if self.require_georeference and not header.georeferenced:
                    raise DataError(f"{path}: has no georeferencing (no CRS or an identity transform); tiles cut "
                                    f"from a scene keep theirs. Pass require_georeference=False "
                                    f"(--allow-ungeoreferenced) to read such files anyway")
                if header.height < need[0] or header.width < need[1]:
                    raise DataError(f"{path}: is {header.height}x{header.width} pixels, smaller than "
                                    f"{'one tile' if self.tile_size else 'one patch'} ({need[0]}x{need[1]})")
                if self.mask_root is not None:
                    mask = read_header(self._mask_path(path)) if self._mask_path(path).is_file() else None
                    if mask is None or (mask.height, mask.width) != (header.height, header.width):
                        raise DataError(f"{path}: its mask {self._mask_path(path)} is missing or differs in size")
                selection = select_bands(header, self.sensor, bands, self.band_order)
            except DataError as error:
                self._skip(path, str(error), warn=False)
                continue
            keep.append(path)
            selections.append(selection)
            kept_headers.append(header)
            if self.targets:
                targets.append(self.targets[i])
        if not keep:
            raise DataError(f"none of the {len(files)} raster file(s) under {self.root} can be used; first problem: "
                            f"{self.skipped[0][1]}")
        if self.skipped:
            log.warning("skipped %d of %d raster files under %s (dataset.skipped lists them); first: %s",
                        len(self.skipped), len(files), self.root, self.skipped[0][1])
        self.targets = targets
        names = {s.names for s in selections}
        if len(names) > 1:
            raise DataError(f"the files under {self.root} resolve to different bands: {sorted(names)[:2]}")
        kinds = {("floating point" if np.dtype(h.dtype).kind == "f" else "integer") for h in kept_headers}
        if len(kinds) > 1:
            first = {k: next(h for h in kept_headers if (np.dtype(h.dtype).kind == "f") == (k == "floating point"))
                     for k in kinds}
            raise DataError(f"{self.root} mixes integer digital numbers ({first['integer'].path}, "
                            f"{first['integer'].dtype}) with floating-point values ({first['floating point'].path}, "
                            f"{first['floating point'].dtype}): one scale cannot fit both; keep one kind per folder")
        if self.scale is not None and kinds == {"floating point"}:
            raise DataError(f"scale={self.scale} is for integer digital numbers, but the files under {self.root} "
                            f"hold floating-point values ({kept_headers[0].dtype}, e.g. {kept_headers[0].path}) that "
                            f"are probably reflectances already; drop the scale (--scale) for them")
        return keep, selections, kept_headers

    def _items(self, headers: list[RasterHeader]) -> list[tuple[int, tuple[int, int, int, int] | None]]:
        items = []
        for f, header in enumerate(headers):
            windows = (tile_windows(header.height, header.width, self.tile_size, self.stride)
                       if self.tile_size else [None])
            stray = 0
            for window in windows:
                # A scene with a nodata border often has tiles with no data at all: count them once, up front.
                if self.declares_nodata[f]:
                    _, valid, nonfinite = self._read_pixels(f, window)
                    if not valid.any():
                        self._skip(header.path, f"{header.path}: tile {window or 'whole file'} is all nodata",
                                   warn=False)
                        continue
                    if valid.mean() < self.min_valid:
                        self._skip(header.path, f"{header.path}: tile {window or 'whole file'} is below min_valid "
                                   f"({valid.mean():.3f} < {self.min_valid} of its pixels valid)", warn=False)
                        continue
                    stray += nonfinite
                items.append((f, window))
            if stray:
                nodata = self.nodata if self.nodata is not None else header.nodata
                declared = f"nodata {nodata}" if nodata is not None else "a nodata mask"
                self.partial.append((header.path, f"{header.path}: {stray} pixel(s) with NaN or infinite values read "
                                     f"as nodata (the data declares {declared})"))
        if self.partial:
            log.warning("%d file(s) under %s hold NaN or infinite pixels, read as nodata (dataset.partial lists them); "
                        "first: %s", len(self.partial), self.root, self.partial[0][1])
        if not items:
            raise DataError(f"every tile under {self.root} is all nodata ({len(self.skipped)} skipped)")
        nodata_tiles = sum("all nodata" in reason for _, reason in self.skipped)
        sparse_tiles = sum("below min_valid" in reason for _, reason in self.skipped)
        if nodata_tiles or sparse_tiles:
            log.warning("skipped %d all-nodata tile(s) and %d tile(s) below min_valid=%s under %s", nodata_tiles,
                        sparse_tiles, self.min_valid, self.root)
        return items

    def _pair(self, root, sensor, bands, scale, stats_tiles, clip_percentiles) -> None:
        """SMARTIES' second sensor: the co-registered scene of the same relative path under `root` (its own sensor,
        bands, scale and statistics); files without one are skipped and counted."""
        self.second = GeoTiffDataset(root, sensor=sensor, bands=bands, img_size=self.img_size,
                                     patch_size=self.patch_size, tile_size=self.tile_size, stride=self.stride,
                                     transform="eval", scale=scale, labelled=False, strict=self.strict,
                                     require_georeference=self.require_georeference, stats_tiles=stats_tiles,
                                     clip_percentiles=clip_percentiles)
        index = {p.relative_to(self.second.root) if p.is_relative_to(self.second.root) else p.name: i
                 for i, p in enumerate(self.second.files)}
        kept = []
        for f, window in self.items:
            rel = self.files[f].relative_to(self.root) if self.files[f].is_relative_to(self.root) else self.files[f].name
            if rel in index:
                self.pairs[f] = index[rel]
                kept.append((f, window))
            else:
                self._skip(self.files[f], f"{self.files[f]}: no paired scene {rel} under {self.second.root}", warn=False)
        if not kept:
            raise DataError(f"no file under {self.root} has a paired scene of the same relative path under "
                            f"{self.second.root}")
        unpaired = len(self.items) - len(kept)
        if unpaired:
            log.warning("skipped %d tile(s) under %s without a paired scene under %s", unpaired, self.root,
                        self.second.root)
        self.items = kept

    def _read_second(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """The second sensor's bands of an item, normalised with its own statistics (nodata at its mean: 0), and
        its valid mask."""
        f, window = self.items[item]
        other = self.second
        raw, valid, _ = other._read_pixels(self.pairs[f], window)
        image = _scaled(raw, other.scale, other.offset)
        if other.clip_range is not None:
            low, high = other.clip_range
            image = np.clip((image - low[:, None, None]) / (high - low)[:, None, None], 0.0, 1.0).astype(np.float32)
        image = np.where(valid[None], image, other.mean[:, None, None])
        return (image - other.mean[:, None, None]) / other.std[:, None, None], valid

    # ------------------------------------------------------------------ statistics
    def _percentiles(self, stats_tiles: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-band (low, high) percentiles of the valid pixels of up to `stats_tiles` evenly spaced tiles."""
        count = min(stats_tiles, len(self.items))
        picks = np.unique(np.linspace(0, len(self.items) - 1, count).round()).astype(int)
        rng, samples = np.random.default_rng(0), []
        for i in picks:
            try:
                image, valid = self._read(int(i))
            except DataError as error:
                self._skip(self.files[self.items[int(i)][0]], str(error))
                continue
            pixels = image[:, valid]
            if pixels.shape[1] > 20000:  # a bounded, seeded sample of each tile's pixels
                pixels = pixels[:, rng.choice(pixels.shape[1], 20000, replace=False)]
            samples.append(pixels)
        values = np.concatenate(samples, axis=1)
        if not values.size:
            raise DataError(f"no valid pixel under {self.root} to compute the clip percentiles from")
        low, high = np.percentile(values, self.clip_percentiles, axis=1)
        return low.astype(np.float32), np.maximum(high, low + 1e-6).astype(np.float32)

    def _stats(self, mean, std, stats_tiles: int) -> tuple[np.ndarray, np.ndarray]:
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std, or neither (then they are computed from the data)")
        if mean is None:
            count = min(stats_tiles, len(self.items))
            picks = np.unique(np.linspace(0, len(self.items) - 1, count).round()).astype(int)
            description = {
                "files": [(str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p),
                           p.stat().st_size, p.stat().st_mtime_ns) for p in self.files],
                "bands": self.selection.names, "indexes": [s.indexes for s in self.selections], "scale": self.scale,
                "offset": self.offset, "nodata": self.nodata, "tile_size": self.tile_size, "stride": self.stride,
                "picks": len(picks), "clip_percentiles": self.clip_percentiles}
            key = cache_key(description)
            found = cached_stats(self.cache_file, key)
            if found is not None:
                mean, std = found
            else:
                accumulator = ChannelStats(self.in_chans, constant_below=1e-8)
                for i in picks:
                    try:
                        image, valid = self._read(int(i))
                    except DataError as error:
                        self._skip(self.files[self.items[int(i)][0]], str(error))
                        continue
                    accumulator.add(image[:, valid])
                if not accumulator.count:
                    raise DataError(f"no valid pixel under {self.root} to compute band statistics from")
                mean, std = accumulator.result()
                store_stats(self.cache_file, key, mean, std, {"bands": list(self.selection.names),
                                                              "scale": self.scale, "tiles": len(picks)})
        return normalisation_stats(mean, std, self.in_chans,
                                   f"{self.in_chans} bands are read ({', '.join(self.selection.names)})")

    # ------------------------------------------------------------------ public attributes
    @property
    def band_names(self) -> list[str]:
        return list(self.selection.names)

    @property
    def wavelengths(self) -> torch.Tensor | None:
        return self.selection.wavelengths

    @property
    def rgb_channels(self) -> list[int] | None:
        """Positions of red, green, blue among the bands read (for RGB composites), when the sensor has them."""
        return rgb_band_positions(self.selection.bands) if self.selection.bands else None

    def eval_view(self) -> "GeoTiffDataset":
        """The same data with the deterministic evaluation transform (resize and center crop), for pictures."""
        view = copy.copy(self)
        view.transform_name, view.transform = _transform("eval", self.img_size)
        return view

    def __len__(self) -> int:
        return len(self.items)

    # ------------------------------------------------------------------ reading
    def _read_pixels(self, f: int, window) -> tuple[np.ndarray, np.ndarray, int]:
        """File `f`'s selected bands in `window` as stored, the valid mask, and how many pixels the file's declared
        nodata left valid but hold NaN or infinite values: nodata in a file that declares nodata, else DataError."""
        path = self.files[f]
        raw, valid = read_window(path, self.selections[f].indexes, window, self.nodata, finite=False)
        if raw.dtype.kind != "f":
            return raw, valid, 0
        finite = np.isfinite(raw).all(0)
        stray = int((valid & ~finite).sum())
        if stray and not self.declares_nodata[f]:
            nan, inf = int(np.isnan(raw).sum()), int(np.isinf(raw).sum())
            raise DataError(f"{path}: {nan} NaN and {inf} infinite value(s) in tile {window or 'whole file'}, and "
                            f"the file declares no nodata value; expected finite pixels (give nodata / --nodata to "
                            f"read them as nodata)")
        return raw, valid & finite, stray

    def _read(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Scaled float32 bands (C, h, w) and the valid mask of one item (before normalisation and transforms)."""
        f, window = self.items[item]
        raw, valid, _ = self._read_pixels(f, window)
        image = _scaled(raw, self.scale, self.offset)
        if self.clip_range is not None:
            low, high = self.clip_range
            image = np.clip((image - low[:, None, None]) / (high - low)[:, None, None], 0.0, 1.0).astype(np.float32)
        return image, valid

    def _read_mask(self, item: int) -> np.ndarray:
        f, window = self.items[item]
        mask, _ = read_window(self._mask_path(self.files[f]), [0], window)
        mask = mask[0].astype(np.int64)
        if self.mask_nodata is not None:
            mask[mask == self.mask_nodata] = IGNORE_INDEX
        return mask

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))
        for attempt in range(min(len(self.items), 16)):
            # A tile that fails now is replaced by the next one: the same one on every run and worker.
            current = (index + attempt) % len(self.items)
            path = self.files[self.items[current][0]]
            try:
                image, valid = self._read(current)
                second, valid2 = self._read_second(current) if self.second is not None else (None, None)
            except DataError as error:
                self._skip(path, str(error))
                continue
            if valid.any():
                break
            self._skip(path, f"{path}: tile {self.items[current][1] or 'whole file'} is all nodata")
        else:
            raise DataError(f"tile {index} and the 15 after it under {self.root} could not be read")
        # Nodata pixels take the band mean, i.e. 0 after normalisation, so they carry no signal.
        image = np.where(valid[None], image, self.mean[:, None, None])
        image = (image - self.mean[:, None, None]) / self.std[:, None, None]
        planes = [valid.astype(np.int32)]
        if self.mask_root is not None:
            labels = self._read_mask(current)
            planes.append(np.where(valid, labels, IGNORE_INDEX).astype(np.int32))
        chans = image.shape[0]
        if second is not None:  # one crop and flip for both sensors: their bands travel as one stack
            if second.shape[1:] != image.shape[1:]:
                raise DataError(f"{path}: its paired scene is {second.shape[1]}x{second.shape[2]} pixels, not "
                                f"{image.shape[1]}x{image.shape[2]}; the two sensors' files must be co-registered")
            image = np.concatenate([image, second])
            planes.append(valid2.astype(np.int32))  # the second sensor's own nodata, last
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self.transform(image=np.ascontiguousarray(image.transpose(1, 2, 0), np.float32),
                             mask=np.stack(planes, -1))
        transformed = out["image"] if out["image"].ndim == 3 else out["image"][..., None]
        transformed, second = transformed[..., :chans], transformed[..., chans:]
        masks = out["mask"]
        sample = {"image": torch.from_numpy(np.ascontiguousarray(transformed.transpose(2, 0, 1), np.float32)),
                  "valid": torch.from_numpy(masks[..., 0] > 0), "index": current,
                  "band_names": list(self.selection.names)}
        if self.selection.bands is not None:
            sample["wavelengths"], sample["bandwidths"] = self.selection.wavelengths, self.selection.bandwidths
        if self.second is not None:
            sample["image2"] = torch.from_numpy(np.ascontiguousarray(second.transpose(2, 0, 1), np.float32))
            sample["valid2"] = torch.from_numpy(masks[..., -1] > 0)
            sample["band_names2"] = list(self.second.selection.names)
            if self.second.selection.bands is not None:
                sample["wavelengths2"] = self.second.selection.wavelengths
                sample["bandwidths2"] = self.second.selection.bandwidths
        if self.mask_root is not None:
            sample["mask"] = torch.from_numpy(masks[..., 1].astype(np.int64))
        if self.targets:
            sample["label"] = self.targets[self.items[current][0]]
        return sample


# ---------------------------------------------------------------------------------------------- torchgeo
@dataclass
class GeoTiffData:
    """Unlabelled pretraining GeoTIFFs: how `mimkit-rs pretrain` reads a folder of tiles or scenes.

    Args:
        root: a folder of GeoTIFF / COG files, searched recursively (tiles from `mimkit-rs tile`, or scenes with
            tile_size)
        sensor: the files' sensor: sentinel2 (13 bands), sentinel2_l2a (12), landsat8, landsat9, sentinel1, rgb,
            naip, or none (bands by index; see `mimkit-rs sensors`)
        bands: bands to read, by name (B04 B03 B02) or 0-based index (3 2 1), or rgb; None: all
        scale: reflectance = value x scale + offset for integer files (Sentinel-2 L2A: 1e-4); None: values as
            stored
        offset: added after scale (Landsat C2 L2: -0.2 with scale 2.75e-5)
        nodata: nodata value when the files do not declare one
        tile_size: cut each file into windows of this size (large scenes); None: one sample per file
        stride: step between windows (None: the tile size)
        crop_scale: RandomResizedCrop's area range (MAE: 0.2 to 1)
        hflip: random horizontal flips (MAE: yes)
        mean: per-band mean of the scaled values (None: measured on up to 256 tiles, cached beside the data)
        std: per-band standard deviation (None: measured with the mean)
        strict: stop at the first unusable file instead of skipping and counting it
        allow_ungeoreferenced: read GeoTIFFs without a CRS / transform instead of skipping them
        cache_dir: where the per-band statistics are cached (None: beside the data)
        band_names: the bands read, by name, in order (recorded by pretraining for evaluation; when given, the
            data must hold exactly these)
        wavelengths: their centre wavelengths in nm (recorded by pretraining; when given, they must match)
        band_order: the files' band order when they carry no band descriptions: band names, or a known layout
            (eurosat: B01..B12 then B8A); None: the band descriptions, else the sensor's order (with a warning)
        clip_percentiles: (low, high) percentiles (SMARTIES: 1 99): each band rescaled from them to [0, 1] and
            clipped before standardisation; measured on the statistics tiles
        second_root: SMARTIES' second sensor: a folder of co-registered scenes with the same relative paths as
            root's (image2 in the batch, cropped and flipped with the first); files without a pair are skipped and
            counted
        second_sensor: the second folder's sensor (sentinel1, rgb, ...)
        second_bands: its bands to read (None: all)
        second_scale: its reflectance scale (as scale)
        min_valid: skip (and count) tiles with a smaller fraction of valid (not nodata) pixels; the nodata pixels of
            the tiles kept do not count in the losses of methods that read batch["valid"] (mae, selective_mae,
            smarties, cha_mae)
    """

    root: str | None = None
    sensor: str = "sentinel2"
    bands: list[str | int] | str | None = None
    scale: float | None = None
    offset: float = 0.0
    nodata: float | None = None
    tile_size: int | None = None
    stride: int | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None
    strict: bool = False
    allow_ungeoreferenced: bool = False
    cache_dir: str | None = None
    band_names: list[str] | None = None
    wavelengths: list[float] | None = None
    band_order: list[str] | str | None = None
    min_valid: float = 0.0
    clip_percentiles: list[float] | None = None
    second_root: str | None = None
    second_sensor: str = "sentinel1"
    second_bands: list[str | int] | str | None = None
    second_scale: float | None = None

    def dataset(self, img_size, patch_size, transform: str | A.BaseCompose = "train") -> GeoTiffDataset:
        """The files as a GeoTiffDataset of this image and patch size (`transform`: train, eval or a pipeline)."""
        if self.root is None:
            raise ConfigError("no data given: pass --data DIR (a folder of GeoTIFF files)")
        return GeoTiffDataset(
            self.root, sensor=self.sensor, bands=self.bands, img_size=img_size, patch_size=patch_size,
            tile_size=self.tile_size, stride=self.stride, transform=transform, scale=self.scale, offset=self.offset,
            nodata=self.nodata, mean=self.mean, std=self.std, labelled=False, strict=self.strict,
            require_georeference=not self.allow_ungeoreferenced, cache_dir=self.cache_dir, band_order=self.band_order,
            min_valid=self.min_valid, clip_percentiles=self.clip_percentiles, second_root=self.second_root,
            second_sensor=self.second_sensor, second_bands=self.second_bands, second_scale=self.second_scale)

    def build(self, model: dict, method: str) -> GeoTiffDataset:
        """The pretraining dataset; records the bands, wavelengths and statistics on `self` and gives a
        spectrum-aware method (one that takes `bands`, like SMARTIES) the data's bands."""
        from mimkit.core.config import encoder_setting
        from mimkit.core.registry import method_arguments

        img_size = encoder_setting(model, "img_size", method)
        dataset = self.dataset(img_size, encoder_setting(model, "patch_size", method),
                               mae_train_transform(img_size, scale=self.crop_scale, hflip=self.hflip))
        wavelengths = [round(float(w), 3) for w in dataset.wavelengths] if dataset.wavelengths is not None else None
        if self.band_names is not None and list(self.band_names) != dataset.band_names:
            raise ConfigError(f"data.band_names {list(self.band_names)} but the files under {self.root} read as "
                              f"{dataset.band_names} (sensor {self.sensor}, bands {self.bands})")
        if self.wavelengths is not None and (wavelengths is None or not np.allclose(self.wavelengths, wavelengths)):
            raise ConfigError(f"data.wavelengths {list(self.wavelengths)} but the bands read from {self.root} lie at "
                              f"{wavelengths}")
        if self.scale is None and dataset.selection.bands is not None and \
                all(b.center_nm < 3000 for b in dataset.selection.bands):
            log.info("optical data read as stored (no --scale); Sentinel-2 L2A digital numbers need --scale 1e-4 "
                     "to be reflectances")
        self.mean, self.std = [float(v) for v in dataset.stats[0]], [float(v) for v in dataset.stats[1]]
        self.band_names, self.wavelengths = dataset.band_names, wavelengths
        if dataset.selection.bands is not None and "bands" in method_arguments(method):
            # a spectrum-aware model's default bands are the data's bands
            model["sensor"] = "sentinel2" if dataset.sensor is SENTINEL2_L2A else dataset.sensor.name
            model["bands"] = dataset.band_names
        return dataset


class TorchGeoDataset(NormalisedDataset):
    """A torchgeo classification dataset read from a local root, turned into mimkit samples.

    Its images are scaled to reflectance (`scale`), normalised per band with statistics of the training split
    (computed once, cached beside the data), resized or cropped to `img_size` and given their bands'
    wavelengths; labels stay class indices, or become float multi-hot vectors for multi-label data.
    """

    def __init__(self, dataset: Dataset, bands: Sequence[Band], band_names: Sequence[str], classes: Sequence[str],
                 img_size: int | Sequence[int], transform: str | A.BaseCompose = "eval", scale: float | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, stats_items: int = 512,
                 cache_file: Path | None = None, cache_description: dict | None = None, multilabel: bool = False):
        self.dataset, self.bands, self.band_names = dataset, tuple(bands), list(band_names)
        self.classes, self.multilabel, self.scale = list(classes), multilabel, scale
        self.img_size = as_tuple(img_size, 2, "img_size")
        self.transform_name, self.transform = _transform(transform, self.img_size)
        self.in_chans = len(self.bands)
        self.skipped: list[tuple[Path, str]] = []
        self.wavelengths = torch.tensor([b.center_nm for b in self.bands], dtype=torch.float32)
        self.bandwidths = torch.tensor([b.width_nm for b in self.bands], dtype=torch.float32)
        if len(dataset) == 0:
            raise DataError(f"{type(dataset).__name__} at {getattr(dataset, 'root', '?')} holds no samples")
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std, or neither (then they are computed from the data)")
        if mean is None:
            key = cache_key({**(cache_description or {}), "scale": scale, "items": stats_items, "size": len(dataset)})
            found = cached_stats(cache_file, key)
            if found is None:
                accumulator = ChannelStats(self.in_chans, constant_below=1e-8)
                for i in np.unique(np.linspace(0, len(dataset) - 1, min(stats_items, len(dataset))).round()):
                    image = self._raw(int(i))[0]
                    accumulator.add(image[:, np.isfinite(image).all(0)])
                found = accumulator.result()
                store_stats(cache_file, key, *found, {"bands": self.band_names, "scale": scale,
                                                      **(cache_description or {})})
            mean, std = found
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.std = np.asarray(std, np.float32).reshape(-1)
        if self.mean.size != self.in_chans or self.std.size != self.in_chans:
            raise ConfigError(f"mean/std need {self.in_chans} values (bands {', '.join(self.band_names)}), got "
                              f"{self.mean.size} and {self.std.size}")

    @property
    def targets(self) -> list[int]:
        """Class index of every sample (single-label data): torchgeo's folder index, else every label read once."""
        known = getattr(self.dataset, "targets", None)
        if known is not None and len(known) == len(self):
            return [int(t) for t in known]
        return [int(torch.as_tensor(self.dataset[i]["label"])) for i in range(len(self))]

    @property
    def rgb_channels(self) -> list[int] | None:
        return rgb_band_positions(self.bands)

    def eval_view(self) -> "TorchGeoDataset":
        view = copy.copy(self)
        view.transform_name, view.transform = _transform("eval", self.img_size)
        return view

    def __len__(self) -> int:
        return len(self.dataset)

    def _raw(self, index: int) -> tuple[np.ndarray, Any]:
        sample = self.dataset[index]
        image = sample["image"].numpy() if torch.is_tensor(sample["image"]) else np.asarray(sample["image"])
        return _scaled(image, self.scale, 0.0), sample["label"]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))
        image, label = self._raw(index)
        valid = np.isfinite(image).all(0)
        image = np.where(valid[None], image, self.mean[:, None, None])
        image = (image - self.mean[:, None, None]) / self.std[:, None, None]
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self.transform(image=np.ascontiguousarray(image.transpose(1, 2, 0), np.float32),
                             mask=valid.astype(np.uint8))
        label = torch.as_tensor(label)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1), np.float32)),
                  "valid": torch.from_numpy(out["mask"] > 0), "index": index, "wavelengths": self.wavelengths,
                  "bandwidths": self.bandwidths, "band_names": list(self.band_names),
                  "label": label.float() if self.multilabel else int(label)}
        return sample


def _torchgeo(dataset_class, name: str, root: Path, layout: str, **options):
    """Build a torchgeo dataset from a local root, never downloading; a DataError says where the files go."""
    from torchgeo.datasets import DatasetNotFoundError, DependencyNotFoundError

    import inspect

    if "download" in inspect.signature(dataset_class.__init__).parameters:
        options["download"] = False
    try:
        return dataset_class(root=str(root), checksum=False, **options)
    except DatasetNotFoundError:
        raise DataError(f"{name} was not found under {root}. mimkit never downloads data: place a copy of the "
                        f"public dataset there, laid out as torchgeo expects ({layout})") from None
    except DependencyNotFoundError as error:
        raise DataError(f"{name} needs a package that is not installed: {' '.join(str(error).split())}") from None
    except (ValueError, AssertionError) as error:
        raise ConfigError(f"{name}: invalid option(s) {options}: {error or 'rejected by torchgeo'}") from None
    except FileNotFoundError as error:
        raise DataError(f"{name} under {root} is incomplete: {error}") from None


EUROSAT_LAYOUT = ("ROOT/eurosat-{train,val,test}.txt split files and the class folders of EuroSATallBands.zip "
                  "under ROOT/ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_<n>.tif")
BIGEARTHNET_LAYOUT = ("ROOT/bigearthnet-{train,val,test}.csv and ROOT/BigEarthNet-v1.0/<patch>/<patch>_B01.tif ... "
                      "_B12.tif with <patch>_labels_metadata.json (and ROOT/BigEarthNet-S1-v1.0 for Sentinel-1)")
SO2SAT_LAYOUT = "ROOT/training.h5, validation.h5, testing.h5 (version 2; version 3 in ROOT/random/ etc.)"


def eurosat(root: str | Path, split: str = "train", bands: Sequence[str] | None = None, img_size=64,
            transform: str | A.BaseCompose = "eval", scale: float | None = 1e-4, **options) -> TorchGeoDataset:
    """EuroSAT (Sentinel-2 L1C, 13 bands, 10 classes, 64x64) through torchgeo; digital numbers x 1e-4 = reflectance."""
    from torchgeo.datasets import EuroSAT

    names = tuple(bands) if bands is not None else EuroSAT.all_band_names
    data = _torchgeo(EuroSAT, "EuroSAT", Path(root), EUROSAT_LAYOUT, split=split, bands=names)
    s2 = SENSORS["sentinel2"]
    return TorchGeoDataset(data, s2.select(names), names, data.classes, img_size, transform, scale,
                           cache_file=Path(root) / STATS_FILE, cache_description={"dataset": "EuroSAT", "bands": names},
                           **options)


def bigearthnet(root: str | Path, split: str = "train", num_classes: int = 19, img_size=120,
                transform: str | A.BaseCompose = "eval", scale: float | None = 1e-4, **options) -> TorchGeoDataset:
    """BigEarthNet v1 Sentinel-2 (12 L2A bands resampled to 120x120, multi-label, 19 or 43 classes) via torchgeo."""
    from torchgeo.datasets import BigEarthNet

    data = _torchgeo(BigEarthNet, "BigEarthNet", Path(root), BIGEARTHNET_LAYOUT, split=split, bands="s2",
                     num_classes=num_classes)
    bands = SENTINEL2_L2A.bands
    return TorchGeoDataset(data, bands, [b.name for b in bands], BigEarthNet.class_sets[num_classes], img_size,
                           transform, scale, cache_file=Path(root) / STATS_FILE, multilabel=True,
                           cache_description={"dataset": "BigEarthNet", "num_classes": num_classes}, **options)


# So2Sat's Sentinel-1 channels are the real and imaginary parts of the VH and VV backscatter, their Lee-filtered
# intensities and the Lee-filtered covariance (Zhu et al., So2Sat LCZ42, 2020): all at the C-band wavelength.
_C_BAND = SENSORS["sentinel1"].bands[0]
SO2SAT_BANDS = {
    **{f"S1_B{i + 1}": Band(name, _C_BAND.center_nm, _C_BAND.width_nm) for i, name in enumerate(
        ("VH", "VH", "VV", "VV", "VH", "VV", "VV", "VV"))},
    **{f"S2_{b.name}": b for b in SENSORS["sentinel2"].select(
        ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"])},
}


def _reorder_image(order: list[int], sample: dict) -> dict:
    return {**sample, "image": sample["image"][order]}


def so2sat(root: str | Path, split: str = "train", version: str = "2", bands: Sequence[str] | None = None,
           img_size=32, transform: str | A.BaseCompose = "eval", **options) -> TorchGeoDataset:
    """So2Sat LCZ42 (8 Sentinel-1 + 10 Sentinel-2 channels, 32x32, 17 local climate zones) via torchgeo (needs h5py).

    The Sentinel-2 channels are stored as reflectances already; nothing is rescaled.
    """
    from torchgeo.datasets import So2Sat

    names = tuple(bands) if bands is not None else So2Sat.all_band_names
    # torchgeo stacks the selected Sentinel-1 channels before the Sentinel-2 ones whatever the order asked for;
    # put them back in the order of `names`, the order their wavelengths are given in.
    stacked = [n for n in names if n.startswith("S1_")] + [n for n in names if not n.startswith("S1_")]
    order = [stacked.index(n) for n in names]  # a repeated band: its copies hold the same values
    reorder = None if order == list(range(len(names))) else functools.partial(_reorder_image, order)
    data = _torchgeo(So2Sat, "So2Sat", Path(root), SO2SAT_LAYOUT, split=split, version=version, bands=names,
                     transforms=reorder)
    return TorchGeoDataset(data, [SO2SAT_BANDS[n] for n in names], names, So2Sat.classes, img_size, transform, None,
                           cache_file=Path(root) / STATS_FILE,
                           cache_description={"dataset": "So2Sat", "version": version, "bands": names}, **options)


__all__ = ["GeoTiffDataset", "GeoTiffData", "TorchGeoDataset", "RasterHeader", "BandSelection", "read_header",
           "read_window", "write_geotiff", "write_tiles", "select_bands", "parse_bands", "tile_windows", "resolve_sensor",
           "rgb_band_positions", "band_indices_by_wavelength", "eurosat", "bigearthnet", "so2sat", "SENTINEL2_L2A", "IGNORE_INDEX"]
