"""NaN and infinite pixels in GeoTIFFs: nodata where the file declares nodata (counted per file), bad data where it
does not (skipped and counted, or an error naming the file with strict); the counts reach the run's metrics.json.

Pixels: the real Sentinel-2 L2A sample spyndex ships (`spyndex/data/S2_10m.json`: B02, B03, B04, B08 at 10 m,
300 x 300, reflectance x 10000), read as a file without importing spyndex; the synthetic scene stands in when the
package is absent."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.transform import Affine

from mimkit.core.errors import DataError
from mimkit.core.train import TrainConfig, pretrain
from mimkit.remote_sensing import synthetic
from mimkit.remote_sensing.data import GeoTiffDataset, read_window, write_geotiff

BANDS = ["B02", "B03", "B04", "B08"]
CRS = "EPSG:32632"


@pytest.fixture(scope="module")
def reflectance(tmp_path_factory) -> np.ndarray:
    """(4, 300, 300) float32 reflectance of B02, B03, B04, B08."""
    spec = importlib.util.find_spec("spyndex")
    sample = Path(next(iter(spec.submodule_search_locations))) / "data" / "S2_10m.json" if spec else None
    if sample is not None and sample.is_file():
        return np.asarray(json.loads(sample.read_text()), dtype=np.float32) * np.float32(1e-4)
    scene = synthetic.write_scene(tmp_path_factory.mktemp("s2") / "scene.tif", 300, 300, nodata_corner=0.0)
    return read_window(scene, [1, 2, 3, 7])[0].astype(np.float32) * np.float32(1e-4)  # B02 B03 B04 B08


def write(path, array, nodata=None):
    """A float32 GeoTIFF at 10 m in UTM 32N with the bands named."""
    return write_geotiff(path, array, crs=CRS, transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0),
                         nodata=nodata, band_names=BANDS)


def crop(reflectance, k, size=32):
    return reflectance[:, 40 * k: 40 * k + size, 40 * k: 40 * k + size].copy()


def dataset(root, **options):
    return GeoTiffDataset(root, **{"sensor": "sentinel2", "img_size": 32, "patch_size": 8,
                                   "transform": "center_crop", **options})


@pytest.fixture
def folder(tmp_path, reflectance):
    """clean.tif; declared.tif (nodata -9999: 5 NaN, 1 inf, 2 nodata pixels); undeclared.tif (2 NaN, no nodata)."""
    root = tmp_path / "tiles"
    write(root / "a_clean.tif", crop(reflectance, 0))
    declared = crop(reflectance, 1)
    declared[0, 3, 4:9] = np.nan
    declared[2, 10, 10] = np.inf
    declared[:, 20, 20:22] = -9999
    write(root / "b_declared.tif", declared, nodata=-9999)
    undeclared = crop(reflectance, 2)
    undeclared[1, 5, 5] = undeclared[3, 6, 7] = np.nan
    write(root / "c_undeclared.tif", undeclared)
    return root


def test_nan_in_a_file_that_declares_nodata_is_nodata_and_counted_per_file(folder):
    data = dataset(folder)
    assert [p.name for p, _ in data.partial] == ["b_declared.tif"]
    assert "6 pixel(s) with NaN or infinite values read as nodata (the data declares nodata -9999.0)" in \
        data.partial[0][1]  # the two -9999 pixels are ordinary nodata, not counted
    sample = next(data[i] for i in range(len(data)) if data.files[data.items[i][0]].name == "b_declared.tif")
    valid = sample["valid"]
    assert not valid[3, 4:9].any() and not valid[10, 10] and not valid[20, 20:22].any()
    assert int(valid.sum()) == 32 * 32 - 8 and torch.isfinite(sample["image"]).all()
    assert np.isfinite(data.stats[0]).all() and np.isfinite(data.stats[1]).all()


def test_nan_in_a_file_without_nodata_is_skipped_and_counted_or_an_error_naming_it(folder):
    data = dataset(folder)  # the statistics pass reads every file here and finds it
    assert [(p.name, "2 NaN and 0 infinite value(s)" in r) for p, r in data.skipped] == [("c_undeclared.tif", True)]
    assert "declares no nodata value" in data.skipped[0][1]
    given = dataset(folder, mean=data.stats[0], std=data.stats[1])  # statistics given: found when read
    assert given.skipped == []
    samples = [given[i] for i in range(len(given))]
    assert [p.name for p, _ in given.skipped] == ["c_undeclared.tif"]  # ... and replaced by the next tile
    assert all(torch.isfinite(s["image"]).all() for s in samples)
    with pytest.raises(DataError, match=r"c_undeclared\.tif: 2 NaN and 0 infinite .*strict"):
        dataset(folder, strict=True, cache_dir=folder.parent / "fresh")  # statistics not cached yet: measured
    with pytest.raises(DataError, match=r"c_undeclared\.tif: 2 NaN"):
        given_strict = dataset(folder, mean=data.stats[0], std=data.stats[1], strict=True)
        [given_strict[i] for i in range(len(given_strict))]
    # a nodata value given for the files declares it: the NaN pixels become nodata, the file is kept and counted
    declared = dataset(folder, nodata=-9999)
    assert declared.skipped == [] and sorted(p.name for p, _ in declared.partial) == ["b_declared.tif",
                                                                                       "c_undeclared.tif"]


def test_only_the_tiles_of_a_scene_that_hold_nan_are_skipped(tmp_path, reflectance):
    scene = reflectance[:, :64, :64].copy()
    scene[0, 40, 50] = np.nan  # in the bottom-right tile of four
    write(tmp_path / "scene" / "s.tif", scene)
    data = dataset(tmp_path / "scene", tile_size=32)
    assert len(data) == 4 and len(data.skipped) == 1 and "tile (32, 32, 32, 32)" in data.skipped[0][1]


def test_nan_pixels_count_against_the_valid_pixel_threshold(tmp_path, reflectance):
    mostly_nan = crop(reflectance, 3)
    mostly_nan[:, :24] = np.nan  # three quarters NaN in a file that declares nodata
    write(tmp_path / "f" / "a_good.tif", crop(reflectance, 0), nodata=-9999)
    write(tmp_path / "f" / "b_mostly_nan.tif", mostly_nan, nodata=-9999)
    kept = dataset(tmp_path / "f", min_valid=0.5)
    assert len(kept) == 1 and [p.name for p, _ in kept.skipped] == ["b_mostly_nan.tif"]
    assert "below min_valid (0.250 < 0.5" in kept.skipped[0][1] and kept.partial == []  # skipped, not partial
    assert len(dataset(tmp_path / "f").partial) == 1  # without the threshold: kept, its NaN pixels counted


def test_the_run_counts_skipped_and_partial_files_in_metrics_json(folder, tmp_path):
    data = dataset(folder)
    given = dataset(folder, mean=data.stats[0], std=data.stats[1])  # only a loader worker meets the NaN file
    tiny = dict(img_size=32, patch_size=8, in_chans=4, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                decoder_depth=1, decoder_num_heads=2)
    config = TrainConfig(batch_size=2, max_steps=2, checkpoint_every=2, num_workers=1, progress=False,
                         accelerator="cpu", lr=1e-3, warmup_steps=1)
    summary = pretrain("mae", given, tmp_path / "run", config, method_config=tiny)
    assert np.isfinite(summary["final_loss"])  # the NaN pixels never reach the loss
    counted = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]
    assert counted["skipped_files"] == 1 and counted["skipped"][0]["file"].endswith("c_undeclared.tif")
    assert counted["partial_files"] == 1 and counted["partial"][0]["file"].endswith("b_declared.tif")


def test_the_second_sensors_nodata_reaches_the_batch_as_valid2(tmp_path, reflectance):
    first = crop(reflectance, 0)
    write(tmp_path / "s2" / "a.tif", first)
    rgb = first[[2, 1, 0]].copy()  # the same scene as an RGB camera's red, green, blue
    rgb[:, :8, :16] = -1  # a corner the second sensor did not see
    write_geotiff(tmp_path / "rgb" / "a.tif", rgb, crs=CRS, transform=Affine(10.0, 0, 500_000.0, 0, -10.0, 5e6),
                  nodata=-1, band_names=["red", "green", "blue"])
    data = dataset(tmp_path / "s2", second_root=tmp_path / "rgb", second_sensor="rgb")
    sample = data[0]
    assert bool(sample["valid"].all())
    assert not sample["valid2"][:8, :16].any() and int(sample["valid2"].sum()) == 32 * 32 - 8 * 16
    assert (sample["image2"][:, :8, :16] == 0).all()  # filled with the second sensor's mean: 0 once normalised
