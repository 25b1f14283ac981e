"""Synthetic multispectral GeoTIFFs for tests and the demo: land cover drawn from typical spectral signatures.

Each land-cover material has a surface-reflectance signature at the 13 Sentinel-2 band centres. The values are
coarse readings of typical curves, not measurements: clear water (high in blue, near zero beyond 750 nm), green
vegetation (chlorophyll absorption in blue and red, the red edge at 700-750 nm, a high near-infrared plateau,
water absorption lowering SWIR), dry bare soil (rising slowly from blue to SWIR-1) and urban surfaces (flat,
moderate: concrete and asphalt), as in the USGS Spectral Library Version 7 (Kokaly et al. 2017,
doi:10.3133/ds1035: e.g. "Seawater", "Lawn_Grass", "Soil", "Concrete" spectra) and the reflectance curves of
remote-sensing textbooks. B10 (1375 nm) sits in a water-vapour absorption band, so every material is near zero
there. Scenes are regions of materials (warped Voronoi cells) with multiplicative texture and sensor noise,
stored like Sentinel-2 L2A products: uint16 reflectance x 10000, nodata 0, with a real CRS (EPSG:32632, UTM
zone 32N) and a 10 m affine transform.

Writers lay tiles out as mimkit's folders (class subfolders, image/mask pairs, one large scene) and as the
public datasets' layouts that torchgeo reads (EuroSAT, BigEarthNet v1), so the same readers run on real and
synthetic data.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from rasterio.crs import CRS
from affine import Affine
from scipy.ndimage import gaussian_filter

from mimkit.core.errors import ConfigError

from .data import write_geotiff
from .sensors import SENSORS, Band

CRS_UTM32N = CRS.from_epsg(32632)
PIXEL_SIZE_M = 10.0
DN_SCALE = 10000          # Sentinel-2 L2A digital number = reflectance x 10000
NODATA = 0

_S2 = SENSORS["sentinel2"]
# Reflectance at B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12 (the sensors.py order of Sentinel-2 bands).
SIGNATURES: dict[str, tuple[float, ...]] = {
    "water":      (0.060, 0.055, 0.045, 0.025, 0.020, 0.015, 0.012, 0.010, 0.009, 0.006, 0.002, 0.004, 0.003),
    "vegetation": (0.030, 0.040, 0.085, 0.040, 0.130, 0.300, 0.380, 0.420, 0.430, 0.380, 0.010, 0.210, 0.095),
    "bare_soil":  (0.090, 0.110, 0.160, 0.220, 0.250, 0.270, 0.290, 0.300, 0.310, 0.300, 0.020, 0.380, 0.330),
    "urban":      (0.110, 0.120, 0.130, 0.140, 0.150, 0.160, 0.170, 0.180, 0.185, 0.180, 0.010, 0.210, 0.190),
}
MATERIALS = tuple(SIGNATURES)

# EuroSAT's ten classes as mixtures of the materials: (share of each material, spatial pattern, brightness).
# Patterns: "regions" (warped Voronoi cells), "stripes" (field rows), "line" (a road or river across the tile).
LAND_COVER_CLASSES: dict[str, tuple[dict[str, float], str, float]] = {
    "AnnualCrop": ({"vegetation": 0.5, "bare_soil": 0.5}, "stripes", 1.0),
    "Forest": ({"vegetation": 1.0}, "regions", 0.75),
    "HerbaceousVegetation": ({"vegetation": 0.7, "bare_soil": 0.3}, "regions", 1.0),
    "Highway": ({"vegetation": 0.6, "bare_soil": 0.2, "urban": 0.2}, "line", 1.0),
    "Industrial": ({"urban": 0.8, "bare_soil": 0.2}, "regions", 1.25),
    "Pasture": ({"vegetation": 0.9, "bare_soil": 0.1}, "regions", 1.15),
    "PermanentCrop": ({"vegetation": 0.6, "bare_soil": 0.4}, "stripes", 0.9),
    "Residential": ({"urban": 0.6, "vegetation": 0.4}, "regions", 1.0),
    "River": ({"vegetation": 0.7, "water": 0.3}, "line", 1.0),
    "SeaLake": ({"water": 1.0}, "regions", 1.0),
}
# Materials -> BigEarthNet (CORINE) level-3 class names of torchgeo's 43-class list.
BIGEARTHNET_NAMES = {"water": "Water bodies", "vegetation": "Broad-leaved forest",
                     "bare_soil": "Non-irrigated arable land", "urban": "Continuous urban fabric"}


def signature(material: str, bands: Sequence[Band] | None = None) -> np.ndarray:
    """A material's reflectance at each band (default: the 13 Sentinel-2 bands), interpolated by centre wavelength."""
    if material not in SIGNATURES:
        raise ConfigError(f"unknown material {material!r}; choose from {', '.join(MATERIALS)}")
    values = np.asarray(SIGNATURES[material], np.float64)
    if bands is None:
        return values.astype(np.float32)
    centres = np.asarray([b.center_nm for b in _S2.bands])
    order = np.argsort(centres)
    wanted = np.asarray([b.center_nm for b in bands])
    if (wanted > 3000).any():
        raise ConfigError("synthetic signatures are optical (400-2300 nm); radar and thermal bands have none")
    return np.interp(wanted, centres[order], values[order]).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std spatially correlated noise (Gaussian-filtered white noise)."""
    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def land_cover_map(rng: np.random.Generator, size: int | tuple[int, int], weights: dict[str, float],
                   pattern: str = "regions", regions: int | None = None) -> np.ndarray:
    """(H, W) material indices (into MATERIALS) following a pattern; material shares close to `weights`."""
    height, width = (size, size) if isinstance(size, int) else size
    names = list(weights)
    probs = np.asarray([weights[n] for n in names], np.float64)
    probs = probs / probs.sum()
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    if pattern == "line" and len(names) > 1:
        # The last-listed minority material runs as a band across the tile; the rest are regions around it.
        line_material = min(names, key=lambda n: weights[n])
        angle = rng.uniform(0, np.pi)
        distance = (xx - width / 2) * np.sin(angle) - (yy - height / 2) * np.cos(angle) + rng.uniform(-3, 3)
        rest = {n: w for n, w in weights.items() if n != line_material}
        out = land_cover_map(rng, (height, width), rest, "regions", regions)
        half_width = max(1.0, weights[line_material] * min(height, width) / 2)
        out[np.abs(distance) < half_width] = MATERIALS.index(line_material)
        return out
    if pattern == "stripes":
        period = rng.uniform(4, 8)
        angle = rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period % 1.0
        edges = np.cumsum(probs)
        return np.asarray([MATERIALS.index(names[k]) for k in range(len(names))])[np.searchsorted(edges, phase)]
    if pattern != "regions":
        raise ConfigError(f"pattern must be regions, stripes or line, got {pattern!r}")
    count = regions or int(rng.integers(3, 7))
    seeds = rng.uniform(0, 1, (count, 2)) * (height, width)
    materials = rng.choice(len(names), size=count, p=probs)
    materials[: min(count, len(names))] = rng.permutation(len(names))[: min(count, len(names))]
    # Warping the coordinates with smooth noise bends the Voronoi edges into natural-looking boundaries.
    warp = 0.08 * min(height, width)
    wy = yy + warp * smooth_noise(rng, (height, width), max(2.0, height / 8))
    wx = xx + warp * smooth_noise(rng, (height, width), max(2.0, width / 8))
    nearest = np.argmin((wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2, 0)
    return np.asarray([MATERIALS.index(names[m]) for m in materials])[nearest]


def render(rng: np.random.Generator, materials: np.ndarray, bands: Sequence[Band] | None = None,
           brightness: float = 1.0, texture: float = 0.12, noise: float = 0.004) -> np.ndarray:
    """Reflectance (C, H, W) float32 of a material map: signature x (brightness + smooth texture) + sensor noise."""
    table = np.stack([signature(m, bands) for m in MATERIALS])           # (materials, C)
    image = table[materials].transpose(2, 0, 1)                           # (C, H, W)
    shade = brightness * (1 + texture * smooth_noise(rng, materials.shape, max(1.5, materials.shape[0] / 10)))
    image = image * shade[None] + noise * rng.standard_normal(image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def to_digital_numbers(reflectance: np.ndarray) -> np.ndarray:
    """uint16 reflectance x 10000 (L2A convention); valid pixels are at least 1 so 0 stays nodata."""
    return np.clip(np.round(reflectance * DN_SCALE), 1, 65535).astype(np.uint16)


def _transform_at(index: int, size: int):
    # Tiles laid side by side in UTM zone 32N (around 9 deg E, 45 deg N), so each has its own place on Earth.
    west, north = 500_000 + (index % 100) * size * PIXEL_SIZE_M, 5_000_000 - (index // 100) * size * PIXEL_SIZE_M
    return Affine(PIXEL_SIZE_M, 0.0, west, 0.0, -PIXEL_SIZE_M, north)


def write_tile(path: str | Path, reflectance: np.ndarray, index: int = 0, band_names: Sequence[str] | None = None,
               georeferenced: bool = True) -> Path:
    """One uint16 GeoTIFF (nodata 0) at tile position `index` of the synthetic grid (or without georeferencing)."""
    size = reflectance.shape[-1]
    return write_geotiff(path, to_digital_numbers(reflectance), crs=CRS_UTM32N if georeferenced else None,
                         transform=_transform_at(index, size) if georeferenced else None, nodata=NODATA,
                         band_names=band_names)


def classification_tile(rng: np.random.Generator, name: str, size: int,
                        bands: Sequence[Band] | None = None) -> np.ndarray:
    """Reflectance (C, size, size) of one tile of a land-cover class of LAND_COVER_CLASSES."""
    weights, pattern, brightness = LAND_COVER_CLASSES[name]
    return render(rng, land_cover_map(rng, size, weights, pattern), bands, brightness)


def _classes(classes: Sequence[str] | int | None) -> list[str]:
    names = list(LAND_COVER_CLASSES)
    if classes is None:
        return names
    if isinstance(classes, int):
        return names[:classes]
    unknown = [c for c in classes if c not in LAND_COVER_CLASSES]
    if unknown:
        raise ConfigError(f"unknown land-cover class(es) {unknown}; choose from {', '.join(names)}")
    return list(classes)


def write_classification_folders(root: str | Path, per_class: int = 8, size: int = 32,
                                 classes: Sequence[str] | int | None = None, sensor: str = "sentinel2",
                                 seed: int = 0, start: int = 0) -> Path:
    """ROOT/<class>/<class>_<n>.tif: `per_class` georeferenced tiles of each land-cover class, all sensor bands."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    bands = SENSORS[sensor].bands
    for c, name in enumerate(_classes(classes)):
        for i in range(per_class):
            write_tile(root / name / f"{name}_{i + 1}.tif", classification_tile(rng, name, size, bands),
                       start + c * per_class + i, [b.name for b in bands])
    return root


def write_eurosat(root: str | Path, per_class: int = 10, size: int = 64, classes: Sequence[str] | int | None = None,
                  seed: int = 0, split: Sequence[float] = (0.6, 0.2, 0.2)) -> Path:
    """A EuroSAT-shaped copy in torchgeo's layout (13-band GeoTIFFs in EuroSAT's band order, B8A last, and the
    eurosat-{train,val,test}.txt split files), for running the EuroSAT task without the real data."""
    from torchgeo.datasets import EuroSAT

    root = Path(root)
    folder = root / EuroSAT.base_dir
    rng = np.random.default_rng(seed)
    bands = _S2.select(EuroSAT.all_band_names)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, name in enumerate(_classes(classes)):
        counts = np.floor(np.asarray(split) * per_class).astype(int)
        counts[0] += per_class - counts.sum()
        labels = ["train"] * counts[0] + ["val"] * counts[1] + ["test"] * counts[2]
        for i in range(per_class):
            filename = f"{name}_{i + 1}.tif"
            write_tile(folder / name / filename, classification_tile(rng, name, size, bands), c * per_class + i,
                       [b.name for b in bands])
            splits[labels[i]].append(filename.replace(".tif", ".jpg"))  # the real split files list .jpg names
    for part, names in splits.items():
        (root / EuroSAT.split_filenames[part]).write_text("\n".join(names) + "\n")
    return root


def write_bigearthnet(root: str | Path, count: int = 12, size: int = 40, seed: int = 0,
                      split: Sequence[float] = (0.5, 0.25, 0.25)) -> Path:
    """A BigEarthNet-v1-shaped Sentinel-2 copy in torchgeo's layout: one folder per patch with a GeoTIFF per L2A
    band and <patch>_labels_metadata.json (CORINE names of the materials covering >= 10% of the patch)."""
    from torchgeo.datasets import BigEarthNet

    root = Path(root)
    rng = np.random.default_rng(seed)
    bands = SENSORS["sentinel2"].select(
        ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"])
    directory = root / BigEarthNet.metadata["s2"]["directory"]
    rows = []
    for i in range(count):
        weights = {m: rng.uniform(0.2, 1.0) for m in rng.choice(MATERIALS, size=int(rng.integers(1, 4)), replace=False)}
        materials = land_cover_map(rng, size, weights, "regions")
        reflectance = render(rng, materials, bands)
        patch = f"S2A_MSIL2A_20170613T101031_{i:02d}_{i:02d}"
        for b, band in enumerate(bands):
            write_geotiff(directory / patch / f"{patch}_{band.name}.tif", to_digital_numbers(reflectance[b]),
                          crs=CRS_UTM32N, transform=_transform_at(i, size), nodata=NODATA)
        shares = np.bincount(materials.ravel(), minlength=len(MATERIALS)) / materials.size
        labels = [BIGEARTHNET_NAMES[m] for m, share in zip(MATERIALS, shares) if share >= 0.1]
        (directory / patch / f"{patch}_labels_metadata.json").write_text(json.dumps({"labels": labels}))
        rows.append(f"{patch},S1A_IW_GRDH_{i:02d}")
    counts = np.floor(np.asarray(split) * count).astype(int)
    counts[0] += count - counts.sum()
    edges = np.cumsum(counts)
    for part, lo, hi in zip(("train", "val", "test"), (0, *edges[:2]), edges):
        (root / BigEarthNet.splits_metadata[part]["filename"]).write_text("\n".join(rows[lo:hi]) + "\n")
    return root


def write_segmentation(root: str | Path, count: int = 8, size: int = 32, seed: int = 0,
                       splits: Sequence[str] = ("train", "test"), materials: Sequence[str] = MATERIALS) -> Path:
    """ROOT/<split>/images/tile_<n>.tif (13-band Sentinel-2) and ROOT/<split>/masks/tile_<n>.tif (uint8 material
    index, 255 = nodata) for each split: `count` tiles per split."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    index = 0
    for split in splits:
        for i in range(count):
            weights = {m: rng.uniform(0.3, 1.0) for m in materials}
            labels = land_cover_map(rng, size, weights, "regions")
            write_tile(root / split / "images" / f"tile_{i:03d}.tif", render(rng, labels), index, _S2.band_names)
            write_geotiff(root / split / "masks" / f"tile_{i:03d}.tif", labels.astype(np.uint8), crs=CRS_UTM32N,
                          transform=_transform_at(index, size), nodata=255)
            index += 1
    (root / "classes.json").write_text(json.dumps(list(MATERIALS)))
    return root


def write_scene(path: str | Path, height: int = 256, width: int = 256, seed: int = 0, nodata_corner: float = 0.3,
                sensor: str = "sentinel2") -> Path:
    """One large georeferenced scene with a nodata triangle in a corner (like the edge of a satellite swath)."""
    rng = np.random.default_rng(seed)
    materials = land_cover_map(rng, (height, width), {m: 1.0 for m in MATERIALS}, "regions", regions=12)
    bands = SENSORS[sensor].bands
    numbers = to_digital_numbers(render(rng, materials, bands))
    yy, xx = np.mgrid[0:height, 0:width]
    outside = (yy / height + xx / width) < 2 * nodata_corner   # the top-left corner has no data
    numbers[:, outside] = NODATA
    return write_geotiff(path, numbers, crs=CRS_UTM32N, transform=_transform_at(0, width), nodata=NODATA,
                         band_names=[b.name for b in bands])


__all__ = ["SIGNATURES", "MATERIALS", "LAND_COVER_CLASSES", "signature", "land_cover_map", "render",
           "write_tile", "write_classification_folders", "write_eurosat", "write_bigearthnet", "write_segmentation",
           "write_scene", "CRS_UTM32N"]
