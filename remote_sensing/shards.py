"""GeoTIFF tiles as LitData shards: `mimkit-rs tile --format litdata`.

`write_tile_shards` cuts scenes exactly as `write_tiles` does (window by window; all-nodata tiles and tiles below
min_valid skipped and counted), then stores each tile's raw bands (stored dtype), its per-band validity masks, its
scene, window and georeferencing with `litdata.optimize`, plus `mimkit_rs_shards.json` (bands, dtype, nodata,
counts, skipped scenes). `TileShardDataset` is a `GeoTiffDataset` whose tiles come from the shards instead of
files, so band selection, reflectance scale, nodata filling, statistics, augmentation and per-sample seeds are the
folder path's: the same key gives the same tensor as the tile folder. The tile-folder format stays readable.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from mimkit.core.data import ChannelStats, normalisation_stats
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.shards import ReopensInWorkers, check_out, optimize, own_reader, read_meta, text_field, write_meta

from .data import (GeoTiffData, GeoTiffDataset, RasterHeader, _scaled, cache_key, cached_stats,
                   select_bands, store_stats, write_tiles)

META = "mimkit_rs_shards.json"
FORMAT = "mimkit-rs-tile-shards/1"


def is_tile_shard_folder(path: str | Path | None) -> bool:
    """Whether `path` holds tile shards written by `write_tile_shards`."""
    return path is not None and (Path(path) / "index.json").is_file() and (Path(path) / META).is_file()


class _ReadTile:
    """One tile file as a shard sample: all its bands as stored, validity masks (one plane when the bands agree)."""

    def __call__(self, item) -> dict:
        index, path, tile = item
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    image, masks = src.read(), src.read_masks() > 0
        except rasterio.errors.RasterioError as error:
            raise DataError(f"{path}: cannot read the tile ({type(error).__name__}: {error})") from None
        if (masks == masks[:1]).all():
            masks = masks[:1]
        return {"image": np.ascontiguousarray(image), "masks": np.ascontiguousarray(masks), "index": int(index),
                "path": text_field(tile["path"]), "scene": text_field(tile["scene"]),
                "window": np.asarray(tile["window"], np.int64), "crs": text_field(tile["crs"] or "none")}


def write_tile_shards(scenes: Sequence[str | Path], out: str | Path, tile_size: int | Sequence[int] = 256,
                      stride: int | Sequence[int] | None = None, sensor: str | None = None, bands=None,
                      nodata: float | None = None, min_valid: float = 0.0, require_georeference: bool = True,
                      strict: bool = False, progress: bool = False, chunk_bytes: str = "256MB", num_workers: int = 1,
                      overwrite: bool = False) -> dict:
    """Cut `scenes` into tiles (as `write_tiles`) and store them as LitData shards in `out`; returns the metadata
    written to OUT/mimkit_rs_shards.json."""
    out = check_out(out, None, overwrite, is_tile_shard_folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tiles-") as scratch:  # the tiles pass through once
        summary = write_tiles(scenes, scratch, tile_size=tile_size, stride=stride, shard_size=10 ** 9, sensor=sensor,
                              bands=bands, nodata=nodata, min_valid=min_valid, require_georeference=require_georeference,
                              strict=strict, progress=progress)
        tiles = sorted(summary.pop("tiles"), key=lambda t: t["path"])  # a tile folder's reading order
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(Path(scratch) / tiles[0]["path"]) as first:
                dtype, declared, georeferenced = first.dtypes[0], first.nodata, first.crs is not None
        inputs = [(i, str(Path(scratch) / t["path"]), t) for i, t in enumerate(tiles)]
        failures = optimize(_ReadTile(), inputs, out, chunk_bytes, num_workers)
    failed = {f["path"] for f in failures}
    kept = [t for (_, path, t) in inputs if path not in failed]
    meta = {"format": FORMAT, **summary, "count": len(kept), "dtype": dtype, "nodata": declared,
            "georeferenced": georeferenced, "paths": [t["path"] for t in kept],
            "valid_fraction": [t["valid_fraction"] for t in kept], "failed_tiles": failures,
            "chunk_bytes": chunk_bytes}
    write_meta(out, META, meta)
    return meta


class TileShardDataset(ReopensInWorkers, GeoTiffDataset):
    """A GeoTiffDataset over tile shards from `write_tile_shards` (same arguments; tiles are already cut, and a
    second sensor or masks are read from folders)."""

    def __init__(self, root: str | Path, **options):
        given = [k for k in ("tile_size", "stride", "second_root", "mask_root") if options.get(k) is not None]
        if given:
            raise ConfigError(f"{root} holds tiles already cut into shards; {given[0]} applies to GeoTIFF folders")
        super().__init__(root, **options)

    def _scan(self, root, labelled):
        from litdata import StreamingDataset

        root = Path(root)
        if not is_tile_shard_folder(root):
            raise DataError(f"{root} is not a mimkit-rs tile shard folder (expected index.json and {META}; write one "
                            f"with `mimkit-rs tile SCENES --out {root} --format litdata`)")
        self.meta = read_meta(root, META, FORMAT)
        self.stream = StreamingDataset(str(root))
        self._reader_pid = os.getpid()
        if len(self.stream) != self.meta["count"]:
            raise DataError(f"{root}: the shards hold {len(self.stream)} tiles but {META} says {self.meta['count']} "
                            f"(an interrupted write?); write them again")
        self.skipped.extend((Path(path), reason) for path, reason in self.meta["skipped_scenes"])
        return root, [root / path for path in self.meta["paths"]], [], []

    def _check_files(self, files, bands):
        meta = self.meta
        height, width = meta["tile_size"]
        if self.require_georeference and not meta["georeferenced"]:
            raise DataError(f"{self.root}: the tiles have no georeferencing; pass require_georeference=False "
                            f"(--allow-ungeoreferenced) to read them anyway")
        if height < self.patch_size[0] or width < self.patch_size[1]:
            raise DataError(f"{self.root}: its tiles are {height}x{width} pixels, smaller than one patch "
                            f"{tuple(self.patch_size)}")
        if self.scale is not None and np.dtype(meta["dtype"]).kind == "f":
            raise DataError(f"scale={self.scale} is for integer digital numbers, but the tiles in {self.root} hold "
                            f"floating-point values ({meta['dtype']}); drop the scale (--scale) for them")
        header = RasterHeader(path=self.root, count=len(meta["bands"]), height=height, width=width,
                              dtype=meta["dtype"], crs=None, transform=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                              nodata=meta["nodata"], descriptions=tuple(meta["bands"]),
                              georeferenced=meta["georeferenced"], may_have_nodata=True)
        selection = select_bands(header, self.sensor, bands, self.band_order)
        return files, [selection] * len(files), [header] * len(files)

    def _items(self, headers):
        items = []
        for i, fraction in enumerate(self.meta["valid_fraction"]):
            # a tile's stored fraction counts all its bands: the bands read have at least as many valid pixels, so
            # only a tile under min_valid (or a nodata value given now) needs its pixels read to decide
            if fraction < self.min_valid or self.nodata is not None:
                _, valid = self._raw(i)
                if not valid.any() or valid.mean() < self.min_valid:
                    state = "all nodata" if not valid.any() else "below min_valid"
                    self._skip(self.files[i], f"{self.files[i]}: tile is {state} ({valid.mean():.3f} of its pixels "
                               f"valid)", warn=False)
                    continue
            items.append((i, None))
        if not items:
            raise DataError(f"every tile in {self.root} is all nodata or below min_valid ({len(self.skipped)} skipped)")
        return items

    def _raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The selected bands as stored and their valid mask, as `read_window` gives them for a tile file."""
        sample = own_reader(self)[index]
        indexes = list(self.selections[index].indexes)
        image, masks = sample["image"][indexes], sample["masks"]
        valid = (masks if masks.shape[0] == 1 else masks[indexes]).all(0)
        if self.nodata is not None:
            valid &= ~(image == self.nodata).any(0)
        if image.dtype.kind == "f":
            valid &= np.isfinite(image).all(0)
        return image, valid

    def _read(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        raw, valid = self._raw(self.items[item][0])
        image = _scaled(raw, self.scale, self.offset)
        if self.clip_range is not None:
            low, high = self.clip_range
            image = np.clip((image - low[:, None, None]) / (high - low)[:, None, None], 0.0, 1.0).astype(np.float32)
        return image, valid

    def _stats(self, mean, std, stats_tiles: int):
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std, or neither (then they are computed from the data)")
        if mean is None:
            picks = np.unique(np.linspace(0, len(self.items) - 1, min(stats_tiles, len(self.items))).round())
            index = (self.root / "index.json").stat()
            key = cache_key({"shards": [index.st_size, index.st_mtime_ns], "bands": self.selection.names,
                             "scale": self.scale, "offset": self.offset, "nodata": self.nodata, "picks": len(picks),
                             "clip_percentiles": self.clip_percentiles, "min_valid": self.min_valid})
            found = cached_stats(self.cache_file, key)
            if found is not None:
                mean, std = found
            else:
                accumulator = ChannelStats(self.in_chans, constant_below=1e-8)
                for i in picks.astype(int):
                    image, valid = self._read(int(i))
                    accumulator.add(image[:, valid])
                if not accumulator.count:
                    raise DataError(f"no valid pixel in {self.root} to compute band statistics from")
                mean, std = accumulator.result()
                store_stats(self.cache_file, key, mean, std, {"bands": list(self.selection.names),
                                                              "scale": self.scale, "tiles": len(picks)})
        return normalisation_stats(mean, std, self.in_chans,
                                   f"{self.in_chans} bands are read ({', '.join(self.selection.names)})")



@dataclasses.dataclass
class GeoTiffShardsData(GeoTiffData):
    __doc__ = GeoTiffData.__doc__.replace(
        "        root: a folder of GeoTIFF / COG files, searched recursively (tiles from `mimkit-rs tile`, or whole "
        "scenes with\n            tile_size)",
        "        root: a folder of GeoTIFF / COG files, searched recursively (tiles from `mimkit-rs tile`, or whole "
        "scenes with\n            tile_size), or tile shards from `mimkit-rs tile --format litdata`")

    def dataset(self, img_size, patch_size, transform="train") -> GeoTiffDataset:
        """GeoTiffData.dataset, reading tile shards when root holds them."""
        if not is_tile_shard_folder(self.root):
            return super().dataset(img_size, patch_size, transform)
        return TileShardDataset(
            self.root, sensor=self.sensor, bands=self.bands, img_size=img_size, patch_size=patch_size,
            tile_size=self.tile_size, stride=self.stride, transform=transform, scale=self.scale, offset=self.offset,
            nodata=self.nodata, mean=self.mean, std=self.std, labelled=False, strict=self.strict,
            require_georeference=not self.allow_ungeoreferenced, cache_dir=self.cache_dir, band_order=self.band_order,
            min_valid=self.min_valid, clip_percentiles=self.clip_percentiles, second_root=self.second_root)


__all__ = ["write_tile_shards", "TileShardDataset", "GeoTiffShardsData", "is_tile_shard_folder", "META"]
