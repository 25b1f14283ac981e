"""Tile shards (remote_sensing.shards, `mimkit-rs tile --format litdata`): a scene cut into tiles and stored as LitData
shards reads back tile-for-tile as the tile folder does (bands, reflectance scale, nodata, statistics), splits across
processes and loader workers without overlap, and is read by `mimkit-rs pretrain --data`."""
import json

import numpy as np
import pytest
import torch

from mimkit.core.data import ResumableSampler, make_loader
from mimkit.core.errors import ConfigError
from mimkit.remote_sensing import synthetic
from mimkit.remote_sensing.cli import main
from mimkit.remote_sensing.data import GeoTiffDataset, write_tiles
from mimkit.remote_sensing.shards import TileShardDataset, write_tile_shards

BANDS = ["B04", "B03", "B02", "B08"]
READ = dict(sensor="sentinel2", bands=BANDS, img_size=32, patch_size=8, scale=1e-4)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One 96 x 128 Sentinel-2 scene with a nodata corner, cut into 32-pixel tiles as a folder and as shards."""
    root = tmp_path_factory.mktemp("rs_shards")
    synthetic.write_scene(root / "scenes" / "scene.tif", 96, 128)
    write_tiles([root / "scenes"], root / "tiles", tile_size=32, sensor="sentinel2")
    meta = write_tile_shards([root / "scenes"], root / "shards", tile_size=32, sensor="sentinel2")
    return root, meta


def test_the_shards_hold_the_tiles_the_folder_holds(written):
    root, meta = written
    index = json.loads((root / "tiles" / "index.json").read_text())
    assert meta["count"] == index["written"] == len(meta["paths"]) and meta["count"] < 12  # 12 windows, some nodata
    assert meta["skipped_tiles"] == index["skipped_tiles"] and meta["skipped_tiles"]["all_nodata"] > 0
    assert meta["bands"][:4] == ["B01", "B02", "B03", "B04"] and meta["dtype"] == "uint16"
    # the scene's path is stored as text: LitData would store a string naming a .tif as the whole file
    stored = json.loads((root / "shards" / "index.json").read_text())["config"]["data_format"]
    assert "tifffile" not in stored and "str" not in stored


@pytest.mark.parametrize("options", [{}, {"min_valid": 0.9}, {"nodata": 0}])
def test_a_shard_tile_equals_the_folder_tile_for_the_same_key(written, options):
    root, _ = written
    folder = GeoTiffDataset(root / "tiles", **READ, **options, cache_dir=str(root / "stats_folder"))
    stored = TileShardDataset(root / "shards", **READ, **options)
    assert len(stored) == len(folder) and stored.band_names == folder.band_names == BANDS
    assert np.allclose(stored.mean, folder.mean) and np.allclose(stored.std, folder.std)
    assert torch.equal(stored[0]["wavelengths"], folder[0]["wavelengths"])
    for key in [(0, 1), (len(folder) - 1, 99), (len(folder) // 2, 7)]:
        a, b = folder[key], stored[key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["valid"], b["valid"]) and a["index"] == b["index"]
    if options.get("min_valid"):  # the swath's edge tiles are under 90% valid: left out by both
        assert len(folder) < json.loads((root / "tiles" / "index.json").read_text())["written"]


def test_two_processes_with_two_workers_each_see_disjoint_tiles_that_cover_the_epoch(written):
    root, _ = written
    stored = TileShardDataset(root / "shards", **READ)
    seen = []
    for rank in range(2):  # each DDP rank's share of the sampler, read through two loader worker processes
        sampler = ResumableSampler(len(stored), seed=0, rank=rank, world_size=2, stop=len(stored))
        seen.append([int(i) for batch in make_loader(stored, 2, num_workers=2, sampler=sampler) for i in batch["index"]])
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(len(stored)))


def test_shards_refuse_options_for_scenes(written):
    root, _ = written
    with pytest.raises(ConfigError, match="tile_size applies to GeoTIFF folders"):
        TileShardDataset(root / "shards", **READ, tile_size=16)


def test_tile_command_writes_litdata_shards_that_pretrain_reads(written, tmp_path, capsys):
    root, _ = written
    out, run = tmp_path / "s", tmp_path / "run"
    assert main(["tile", str(root / "scenes"), "--out", str(out), "--tile-size", "32", "--sensor", "sentinel2",
                 "--format", "litdata", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == len(json.loads((out / "mimkit_rs_shards.json").read_text())
                                                                ["paths"])
    assert main(["pretrain", "--data", str(out), "--out", str(run), "--scale", "1e-4", "--bands", *BANDS,
                 "--img-size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
                 "--set", "decoder_embed_dim=32", "--set", "decoder_depth=1", "--set", "decoder_num_heads=2",
                 "--max-steps", "2", "--batch-size", "2", "--num-workers", "0", "--no-progress"]) == 0
    assert (run / "model.safetensors").is_file() and (run / "pictures" / "reconstruction_rgb.png").is_file()
