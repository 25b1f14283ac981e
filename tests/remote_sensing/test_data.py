"""Remote-sensing data: GeoTIFF reading (windows, bands, nodata, scaling, cached statistics), bad input, torchgeo
wrappers on copies in torchgeo's layouts, and the synthetic tiles' georeferencing and spectra."""
import json

import numpy as np
import pytest
import rasterio
import torch
from torch.utils.data import DataLoader

from mimkit.core.errors import ConfigError, DataError
from mimkit.core.registry import build_method
from mimkit.remote_sensing import synthetic
from mimkit.remote_sensing.data import (STATS_FILE, GeoTiffDataset, bigearthnet, eurosat, read_window, select_bands,
                                        read_header, so2sat, tile_windows, write_geotiff)
from mimkit.remote_sensing.sensors import SENSORS


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return synthetic.write_classification_folders(tmp_path_factory.mktemp("rs") / "tiles", per_class=3, size=32,
                                                  classes=3)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return synthetic.write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", 96, 128)


def small(root, **options):
    defaults = dict(img_size=32, patch_size=8, transform="center_crop", scale=1e-4)
    return GeoTiffDataset(root, **{**defaults, **options})


# ---------------------------------------------------------------------------------------------- synthetic tiles
def test_synthetic_tiles_are_georeferenced_sentinel2_rasters(tiles):
    path = next((tiles / "Forest").glob("*.tif"))
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32632 and src.res == (10.0, 10.0)
        assert src.count == 13 and src.dtypes[0] == "uint16" and src.nodata == 0
        assert list(src.descriptions) == SENSORS["sentinel2"].band_names
    origins = {rasterio.open(p).transform.c for p in tiles.rglob("*.tif")}
    assert len(origins) == len(list(tiles.rglob("*.tif")))  # each tile at its own place


def test_synthetic_signatures_behave_like_published_spectra():
    s2 = SENSORS["sentinel2"].band_names
    red, nir, swir = s2.index("B04"), s2.index("B08"), s2.index("B11")
    ndvi = {m: (synthetic.signature(m)[nir] - synthetic.signature(m)[red])
            / (synthetic.signature(m)[nir] + synthetic.signature(m)[red]) for m in synthetic.MATERIALS}
    assert ndvi["vegetation"] > 0.6 and ndvi["water"] < 0 and 0 < ndvi["bare_soil"] < 0.3
    assert synthetic.signature("bare_soil")[swir] > synthetic.signature("bare_soil")[nir]  # soil rises into SWIR
    # interpolated at Landsat's red and NIR bands, vegetation keeps its red edge
    landsat = synthetic.signature("vegetation", SENSORS["landsat8"].select(["B4", "B5"]))
    assert landsat[1] > 5 * landsat[0]


# ---------------------------------------------------------------------------------------------- reading
def test_sample_carries_bands_and_wavelengths(tiles):
    data = small(tiles)
    sample = data[0]
    assert data.classes == ["AnnualCrop", "Forest", "HerbaceousVegetation"] and data.in_chans == 13
    assert sample["image"].shape == (13, 32, 32) and sample["image"].dtype == torch.float32
    assert torch.allclose(sample["wavelengths"], torch.tensor([b.center_nm for b in SENSORS["sentinel2"].bands]))
    assert sample["band_names"][8] == "B8A" and sample["label"] == 0 and sample["valid"].all()
    assert data.rgb_channels == [3, 2, 1]


def test_band_selection_by_name_and_index_agree(tiles):
    full = small(tiles)
    by_name, by_index = small(tiles, bands=["B04", "B03", "B02"]), small(tiles, bands=[3, 2, 1])
    assert by_name.band_names == by_index.band_names == ["B04", "B03", "B02"]
    assert torch.allclose(by_name.wavelengths, torch.tensor([664.6, 559.8, 492.4]))
    assert torch.allclose(by_name[1]["image"], by_index[1]["image"])
    # same pixels as the full read, in the chosen order (normalisation is per band, so undo it)
    raw_full = full[1]["image"] * torch.tensor(full.std)[:, None, None] + torch.tensor(full.mean)[:, None, None]
    raw_rgb = by_name[1]["image"] * torch.tensor(by_name.std)[:, None, None] + torch.tensor(by_name.mean)[:, None, None]
    assert torch.allclose(raw_rgb, raw_full[[3, 2, 1]], atol=1e-5)
    assert small(tiles, bands="rgb").band_names == ["B04", "B03", "B02"]
    with pytest.raises(ConfigError, match="B99"):
        small(tiles, bands=["B99"])
    with pytest.raises(ConfigError, match="out of range"):
        small(tiles, bands=[13])


def test_windowed_tiles_of_a_scene_match_the_scene_and_skip_all_nodata(scene):
    data = small(scene, tile_size=32, stride=32)
    windows = tile_windows(96, 128, 32)
    assert len(windows) == 12 and windows[-1] == (64, 96, 32, 32)
    with rasterio.open(scene) as src:
        whole, valid = src.read(), src.read_masks(1) > 0
    empty = [w for w in windows if not valid[w[0]:w[0] + 32, w[1]:w[1] + 32].any()]
    assert empty and len(data) == len(windows) - len(empty)
    assert len(data.skipped) == len(empty) and all("all nodata" in reason for _, reason in data.skipped)
    for item, (_, window) in enumerate(data.items[:4]):
        r, c = window[:2]
        array, mask = read_window(scene, None, window)
        assert np.array_equal(array, whole[:, r:r + 32, c:c + 32])
        assert np.array_equal(mask, valid[r:r + 32, c:c + 32])
        sample = data[item]
        assert torch.equal(sample["valid"], torch.from_numpy(mask))
        assert (sample["image"][:, ~sample["valid"]] == 0).all()  # nodata = band mean = 0 after normalisation


def test_band_statistics_are_of_scaled_valid_pixels_and_cached(scene, tiles, monkeypatch):
    data = small(scene, tile_size=32)
    with rasterio.open(scene) as src:
        whole, valid = src.read().astype(np.float64) * 1e-4, src.read_masks(1) > 0
    pixels = np.concatenate([whole[:, r:r + h, c:c + w][:, valid[r:r + h, c:c + w]] for _, (r, c, h, w) in data.items],
                            axis=1)
    assert np.allclose(data.mean, pixels.mean(1), rtol=1e-4) and np.allclose(data.std, pixels.std(1), rtol=1e-3)
    assert 0.01 < data.mean[1] < 0.5  # reflectance, not digital numbers
    entries = len(json.loads((scene.parent / STATS_FILE).read_text()))
    # a second dataset on the same files and bands reads the cache instead of the pixels
    monkeypatch.setattr(GeoTiffDataset, "_read", lambda self, item: (_ for _ in ()).throw(AssertionError("read")))
    again = small(scene, tile_size=32)
    assert np.allclose(again.mean, data.mean)
    monkeypatch.undo()
    small(scene, tile_size=32, bands=["B02"])  # another band selection is another entry
    assert len(json.loads((scene.parent / STATS_FILE).read_text())) == entries + 1


def test_augmentation_is_a_function_of_the_sample_seed(tiles):
    data = small(tiles, transform="train")
    first, again, other = data[(2, 11)], data[(2, 11)], data[(2, 12)]
    assert torch.equal(first["image"], again["image"]) and not torch.equal(first["image"], other["image"])


def test_collated_batches_feed_spectrum_aware_and_plain_methods(tiles):
    data = small(tiles, bands=["B02", "B03", "B04", "B08"])
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch["wavelengths"].shape == (4, 4)  # default collate stacks per-sample wavelengths
    tiny = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                decoder_depth=1, decoder_num_heads=2)
    smarties = build_method("smarties", **tiny, sensor="sentinel2", bands=data.band_names)
    mae = build_method("mae", **tiny, in_chans=4)
    assert torch.isfinite(smarties(batch).loss) and torch.isfinite(mae(batch).loss)


def test_segmentation_masks_follow_the_tiles(tmp_path):
    root = synthetic.write_segmentation(tmp_path / "seg", count=2, size=32, splits=("train",))
    with rasterio.open(root / "train" / "masks" / "tile_000.tif", "r+") as dst:
        mask = dst.read(1)
        mask[:4, :4] = 255
        dst.write(mask, 1)
    data = small(root / "train" / "images", mask_root=root / "train" / "masks", labelled=False)
    sample = data[0]
    expected = torch.from_numpy(mask.astype(np.int64))
    expected[:4, :4] = -1
    assert torch.equal(sample["mask"], expected)


# ---------------------------------------------------------------------------------------------- bad input
def test_file_without_georeferencing_is_counted_or_an_error(tmp_path, tiles):
    folder = tmp_path / "mixed"
    source = next((tiles / "Forest").glob("*.tif"))
    array = rasterio.open(source).read()
    synthetic.write_tile(folder / "good.tif", array / 1e4, 0)
    write_geotiff(folder / "plain.tif", array)  # no CRS, no transform
    data = small(folder)
    assert len(data) == 1 and len(data.skipped) == 1 and "georeferencing" in data.skipped[0][1]
    with pytest.raises(DataError, match="georeferencing"):
        small(folder, strict=True)
    assert not read_header(folder / "plain.tif").georeferenced
    assert len(small(folder, require_georeference=False)) == 2


def test_band_count_that_does_not_match_the_sensor(tmp_path, tiles):
    source = next((tiles / "Forest").glob("*.tif"))
    with rasterio.open(source) as src:
        array, crs, transform = src.read(), src.crs, src.transform
    write_geotiff(tmp_path / "twelve" / "a.tif", array[:12], crs=crs, transform=transform)
    with pytest.raises(DataError, match=r"12 band\(s\) but sensor 'sentinel2' describes 13.*sentinel2_l2a"):
        small(tmp_path / "twelve")
    # a file whose band descriptions name its bands is read by name
    l2a = [b for b in SENSORS["sentinel2"].band_names if b != "B10"]
    write_geotiff(tmp_path / "named" / "a.tif", array[:12], crs=crs, transform=transform, band_names=l2a)
    assert small(tmp_path / "named").band_names == l2a
    # with the sensor's band count too: EuroSAT's files store B8A last, and say so
    eurosat_order = [b for b in SENSORS["sentinel2"].band_names if b != "B8A"] + ["B8A"]
    write_geotiff(tmp_path / "reordered" / "a.tif", array, crs=crs, transform=transform, band_names=eurosat_order)
    assert small(tmp_path / "reordered", bands=["B8A", "B09"]).selection.indexes == (12, 8)
    assert small(tmp_path / "twelve", sensor="sentinel2_l2a").in_chans == 12
    header = read_header(tmp_path / "twelve" / "a.tif")
    assert select_bands(header, None, [0, 5]).wavelengths is None  # bands by index: no wavelengths


def test_all_nodata_tile_is_counted(tmp_path, tiles):
    source = next((tiles / "Forest").glob("*.tif"))
    with rasterio.open(source) as src:
        array, crs, transform = src.read(), src.crs, src.transform
    write_geotiff(tmp_path / "f" / "good.tif", array, crs=crs, transform=transform, nodata=0)
    write_geotiff(tmp_path / "f" / "empty.tif", np.zeros_like(array), crs=crs, transform=transform, nodata=0)
    data = small(tmp_path / "f")
    assert len(data) == 1 and [p.name for p, _ in data.skipped] == ["empty.tif"]
    write_geotiff(tmp_path / "g" / "empty.tif", np.zeros_like(array), crs=crs, transform=transform, nodata=0)
    with pytest.raises(DataError, match="all nodata"):
        small(tmp_path / "g")
    # a tile under the valid-pixel threshold is skipped and counted; the kept tile's nodata pixels are marked
    sparse = array.copy()
    sparse[:, : array.shape[1] * 3 // 4] = 0  # three quarters nodata
    write_geotiff(tmp_path / "f" / "sparse.tif", sparse, crs=crs, transform=transform, nodata=0)
    assert len(small(tmp_path / "f")) == 2  # without a threshold the sparse tile is read
    kept = small(tmp_path / "f", min_valid=0.5)
    assert len(kept) == 1 and sorted(p.name for p, _ in kept.skipped) == ["empty.tif", "sparse.tif"]
    assert any("below min_valid" in reason for _, reason in kept.skipped)
    partial = small(tmp_path / "f", transform="eval")
    sample = next(partial[i] for i in range(len(partial)) if not bool(partial[i]["valid"].all()))
    assert 0.1 < sample["valid"].float().mean() < 0.5


def test_integer_and_float_scaling_are_not_mixed(tmp_path, tiles):
    source = next((tiles / "Forest").glob("*.tif"))
    with rasterio.open(source) as src:
        array, crs, transform = src.read(), src.crs, src.transform
    write_geotiff(tmp_path / "m" / "dn.tif", array, crs=crs, transform=transform)
    write_geotiff(tmp_path / "m" / "reflectance.tif", (array * 1e-4).astype(np.float32), crs=crs, transform=transform)
    with pytest.raises(DataError, match="mixes integer.*floating-point"):
        small(tmp_path / "m")
    write_geotiff(tmp_path / "r" / "reflectance.tif", (array * 1e-4).astype(np.float32), crs=crs, transform=transform)
    with pytest.raises(DataError, match="drop the scale"):
        small(tmp_path / "r")
    floats = small(tmp_path / "r", scale=None)
    integers = small(tmp_path / "m" / "dn.tif")
    assert np.allclose(floats.mean, integers.mean, rtol=1e-4)  # the same reflectances either way


def test_unreadable_file_is_counted(tmp_path, tiles):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "junk.tif").write_bytes(b"not a tiff at all")
    synthetic.write_tile(folder / "good.tif", rasterio.open(next(tiles.rglob("*.tif"))).read() / 1e4, 0)
    data = small(folder)
    assert len(data) == 1 and data.skipped[0][0].name == "junk.tif"


# ---------------------------------------------------------------------------------------------- torchgeo
def test_eurosat_through_torchgeo_from_a_local_copy(tmp_path):
    root = synthetic.write_eurosat(tmp_path / "eurosat", per_class=5, size=32, classes=3)
    train, test = eurosat(root, "train", img_size=32), eurosat(root, "test", img_size=32)
    assert train.classes == ["AnnualCrop", "Forest", "HerbaceousVegetation"] and (len(train), len(test)) == (9, 3)
    assert sorted(set(train.targets)) == [0, 1, 2]
    sample = train[0]
    assert sample["image"].shape == (13, 32, 32) and sample["band_names"][-1] == "B8A"
    assert sample["wavelengths"][-1] == pytest.approx(864.7)  # EuroSAT stores B8A last
    assert 0.01 < train.mean[1] < 0.5 and (root / STATS_FILE).is_file()
    rgb = eurosat(root, "train", bands=["B04", "B03", "B02"], img_size=32)
    assert rgb.in_chans == 3 and rgb.rgb_channels == [0, 1, 2]


def test_bigearthnet_multilabel_from_a_local_copy(tmp_path):
    root = synthetic.write_bigearthnet(tmp_path / "ben", count=6, size=24)
    train = bigearthnet(root, "train", img_size=32)
    sample = train[0]
    assert sample["image"].shape == (12, 32, 32) and sample["label"].dtype == torch.float32
    assert sample["label"].shape == (19,) and sample["label"].sum() >= 1 and "B10" not in train.band_names


def test_missing_public_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="never downloads.*eurosat-"):
        eurosat(tmp_path / "nowhere")
    with pytest.raises(DataError, match="BigEarthNet"):
        bigearthnet(tmp_path)
    with pytest.raises(DataError, match="So2Sat"):  # no local copy (and h5py may be missing): never a download
        so2sat(tmp_path)


def test_eurosat_ordered_file_without_band_descriptions(tmp_path, tiles, caplog):
    # EuroSAT-MS GeoTIFFs carry no band descriptions and store B8A last: each band here holds its file position
    source = next((tiles / "Forest").glob("*.tif"))
    with rasterio.open(source) as src:
        shape, crs, transform = src.read().shape, src.crs, src.transform
    array = np.broadcast_to(np.arange(13, dtype=np.uint16)[:, None, None] * 100 + 100, shape).copy()
    write_geotiff(tmp_path / "eurosat" / "a.tif", array, crs=crs, transform=transform)
    ordered = small(tmp_path / "eurosat", band_order="eurosat", bands=["B8A", "B08"])
    assert ordered.selection.indexes == (12, 7)  # B8A read from the last band, B08 from the eighth
    expected = [b.center_nm for b in SENSORS["sentinel2"].select(["B8A", "B08"])]
    assert ordered.selection.wavelengths.tolist() == pytest.approx(expected)
    assert small(tmp_path / "eurosat", band_order=[*SENSORS["sentinel2"].band_names]).band_names[8] == "B8A"
    # without band_order the sensor's order is assumed, and a warning says so
    with caplog.at_level("WARNING"):
        assumed = small(tmp_path / "eurosat")
    assert assumed.band_names[8] == "B8A" and "assumed" in caplog.text and "band_order" in caplog.text
    with pytest.raises(ConfigError, match="band_order"):
        small(tmp_path / "eurosat", band_order="no_such_layout")


def test_percentile_clip_before_standardisation_as_smarties(tmp_path, tiles):
    # SMARTIES: (x - p1) / (p99 - p1), clipped to [0, 1], then standardised with the clipped data's statistics
    source = next((tiles / "Forest").glob("*.tif"))
    with rasterio.open(source) as src:
        array, crs, transform = src.read(), src.crs, src.transform
    spiky = array.copy()
    spiky[:, 0, 0] = 60000  # one saturated pixel per band
    write_geotiff(tmp_path / "c" / "a.tif", spiky, crs=crs, transform=transform)
    plain = small(tmp_path / "c")
    clipped = small(tmp_path / "c", clip_percentiles=(1, 99))
    image, _ = clipped._read(0)
    assert image.min() >= 0 and image.max() <= 1 and np.allclose(image[:, 0, 0], 1.0)
    raw, _ = plain._read(0)
    low, high = np.percentile(raw.reshape(raw.shape[0], -1), (1, 99), axis=1)
    assert np.allclose(clipped.clip_range[0], low, rtol=1e-4) and np.allclose(clipped.clip_range[1], high, rtol=1e-4)
    assert np.allclose(clipped.mean, image.reshape(image.shape[0], -1).mean(1), atol=1e-4)
    with pytest.raises(ConfigError, match="clip_percentiles"):
        small(tmp_path / "c", clip_percentiles=(99, 1))


def test_second_sensor_scenes_are_paired_by_path_and_cropped_with_the_first(tmp_path, tiles):
    # SMARTIES pairs co-registered scenes of two sensors; here a 2-band "Sentinel-1" file repeats band B01
    source = next((tiles / "Forest").glob("*.tif"))
    with rasterio.open(source) as src:
        array, crs, transform = src.read(), src.crs, src.transform
    write_geotiff(tmp_path / "s2" / "a.tif", array, crs=crs, transform=transform)
    write_geotiff(tmp_path / "s2" / "lonely.tif", array, crs=crs, transform=transform)
    write_geotiff(tmp_path / "s1" / "a.tif", np.stack([array[0], array[0][::-1]]).astype(np.float32), crs=crs,
                  transform=transform, band_names=["VV", "VH"])
    data = small(tmp_path / "s2", transform="train", second_root=tmp_path / "s1", second_sensor="sentinel1")
    assert len(data) == 1 and [p.name for p, _ in data.skipped] == ["lonely.tif"]  # no pair: skipped, counted
    sample = data[(0, 3)]
    assert sample["image2"].shape == (2, 32, 32) and sample["band_names2"] == ["VV", "VH"]
    assert sample["wavelengths2"] is not None
    # the same random crop and flip for both: the paired band follows B01 pixel for pixel
    first, second = sample["image"][0].flatten(), sample["image2"][0].flatten()
    assert torch.corrcoef(torch.stack([first, second]))[0, 1] > 0.999
    # SMARTIES mixes the two real views (no derived RGB view)
    model = build_method("smarties", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                         decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    batch = next(iter(DataLoader(data, batch_size=1)))  # default-collated, as the trainer's loader gives it
    assert set(model(batch).parts) == {"reconstruction_first", "reconstruction_second"}
