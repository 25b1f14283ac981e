"""The `mimkit-rs` command: help, pretraining on GeoTIFFs (bands, scale, wavelengths into the run; its config.yaml
re-runs it), evaluation and fine-tuning on tasks, tiling scenes into shards, recipes, and clear errors for bad input
(an unknown config key is one line naming key and file)."""
import json

import numpy as np
import pytest
import rasterio
import timm
import torch
import yaml

from mimkit.core.finetune import load_finetuned
from mimkit.remote_sensing import synthetic
from safetensors.torch import load_file

from mimkit.core.cli import recipe_files
from mimkit.remote_sensing.cli import build_tool, main
from mimkit.remote_sensing.data import GeoTiffDataset, write_geotiff

TINY = ["--img-size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
        "--set", "decoder_embed_dim=32", "--set", "decoder_depth=1", "--set", "decoder_num_heads=2"]
QUICK = ["--max-steps", "3", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--checkpoint-every", "3"]
BANDS = ["B02", "B03", "B04", "B08"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rs_cli")
    synthetic.write_classification_folders(root / "tiles", per_class=3, size=32, classes=3)
    synthetic.write_eurosat(root / "eurosat", per_class=5, size=32, classes=3)
    return root


@pytest.fixture(scope="module")
def mae_run(data):
    out = data / "run_mae"
    code = main(["pretrain", "--data", str(data / "tiles"), "--out", str(out), "--scale", "1e-4",
                 "--bands", *BANDS, *TINY, *QUICK])
    assert code == 0
    return out


def test_help_explains_every_command(capsys):
    tool = build_tool()
    assert {"pretrain", "finetune", "evaluate", "tile", "recipes", "sensors", "synthetic", "demo"} <= set(tool.commands)
    for name, command in tool.commands.items():
        assert main([name, "--help"]) == 0, name
        text = capsys.readouterr().out
        assert "--config" in text and "--print_config" in text, name
        if name == "tile":
            assert "window by window" in text and "--shard_size" in text
    assert main(["pretrain", "--help"]) == 0
    text = capsys.readouterr().out
    assert "wavelengths" in text and "--data.tile_size" in text and "--model.encoder.embed_dim" in text
    assert "--sensor" in text and "--scale" in text and "--bands" in text and "--mask-ratio" in text  # short forms
    assert main(["finetune", "--help"]) == 0
    assert "--resume" in capsys.readouterr().out


def test_pretrain_records_bands_wavelengths_and_statistics(mae_run):
    config = yaml.safe_load((mae_run / "config.yaml").read_text())
    assert config["data"]["band_names"] == BANDS and config["data"]["scale"] == 1e-4
    assert config["data"]["wavelengths"] == pytest.approx([492.4, 559.8, 664.6, 832.8])
    assert config["model"]["encoder"]["in_chans"] == 4 and 0.01 < config["data"]["mean"][0] < 0.5  # reflectances
    assert (mae_run / "model.safetensors").is_file()
    assert (mae_run / "pictures" / "reconstruction_rgb.png").is_file()  # B04, B03, B02 composites


def test_a_runs_config_yaml_re_runs_it_exactly(mae_run, tmp_path):
    second = tmp_path / "again"
    assert main(["pretrain", "--config", str(mae_run / "config.yaml"), "--out", str(second)]) == 0
    a, b = load_file(mae_run / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first, stored = (yaml.safe_load((run / "config.yaml").read_text()) for run in (mae_run, second))
    assert stored["data"] == first["data"] and stored["model"] == first["model"] and stored["out"] == str(second)
    assert (second / "pictures" / "reconstruction_rgb.png").is_file()


def test_recorded_bands_must_match_the_data(mae_run, data, tmp_path, capsys):
    config = yaml.safe_load((mae_run / "config.yaml").read_text())
    config["data"]["band_names"] = ["B02", "B03", "B04", "B05"]  # B05 is not what --bands read
    edited = tmp_path / "config.yaml"
    edited.write_text(yaml.safe_dump(config))
    assert main(["pretrain", "--config", str(edited), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.band_names" in err and "B08" in err and "\n" not in err


@pytest.mark.parametrize("section,key", [("data", "second_sensor"), ("model", "foo"), ("data", "img_size")])
def test_an_unknown_config_key_is_one_line_naming_key_and_file(data, tmp_path, capsys, section, key):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"method": "smarties", section: {key: 1}}))
    assert main(["pretrain", "--config", str(recipe), "--data", str(data / "tiles"), "--out", str(tmp_path / "run"),
                 *TINY, *QUICK]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{section}.{key}" in err and str(recipe) in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_spectrum_aware_method_takes_the_data_bands(data, tmp_path):
    out = tmp_path / "smarties"
    code = main(["pretrain", "--data", str(data / "tiles"), "--out", str(out), "--method", "smarties",
                 "--scale", "1e-4", "--bands", "B02", "B03", "B04", "B08", "B11", *TINY, *QUICK])
    assert code == 0
    model = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert model["sensor"] == "sentinel2" and model["bands"] == ["B02", "B03", "B04", "B08", "B11"]


def test_evaluate_a_run_on_eurosat_with_its_pretraining_bands(mae_run, data, capsys):
    code = main(["evaluate", "--run", str(mae_run), "--task", "eurosat-knn", "--data", str(data / "eurosat"),
                 "--k", "3", "--compare-random-init"])
    assert code == 0
    rows = json.loads((mae_run / "metrics.json").read_text())["results"]
    assert [r["init"] for r in rows if r.get("task") == "eurosat-knn"] == ["pretrained", "random"]
    assert all(0 <= r["value"] <= 100 and r["num_train"] == 9 for r in rows if r.get("task") == "eurosat-knn")
    assert "| eurosat-knn | pretrained | accuracy |" in capsys.readouterr().out


def test_finetune_a_timm_checkpoint_needs_an_explicit_channel_adaptation(data, tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                              embed_dim=32, depth=2, num_heads=2)
    checkpoint = tmp_path / "rgb_vit.pth"
    torch.save(model.state_dict(), checkpoint)
    common = ["finetune", "--checkpoint", str(checkpoint), "--img-size", "32", "--task", "eurosat-finetune",
              "--data", str(data / "eurosat"), "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path / "ft")]
    assert main(common) == 2
    assert "adapt" in capsys.readouterr().err  # the error names the fix
    assert main([*common, "--adapt-in-chans", "select"]) == 0
    weights = tmp_path / "ft" / "eurosat-finetune" / "pretrained" / "model.safetensors"
    rows = json.loads((tmp_path / "ft" / "metrics.json").read_text())["results"]
    assert rows[0]["task"] == "eurosat-finetune" and rows[0]["weights"] == str(weights)
    model, config = load_finetuned(weights)  # encoder and head, rebuilt from the file alone
    assert config["num_outputs"] == 3 and model(torch.zeros(1, 13, 32, 32)).shape == (1, 3)


def test_finetune_resumes_from_its_own_config(mae_run, data, tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", "--run", str(mae_run), "--task", "eurosat-finetune", "--data", str(data / "eurosat"),
                 "--epochs", "1", "--batch-size", "4", "--out", str(out)]) == 0
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["task"] == ["eurosat-finetune"] and stored["epochs"] == 1 and stored["resume"] is False
    # --resume --out OUT reads OUT/config.yaml (task, data, run): the flags given are only what changes
    assert main(["finetune", "--resume", "--out", str(out), "--epochs", "2"]) == 0
    first, resumed = json.loads((out / "metrics.json").read_text())["results"]
    assert resumed["settings"]["epochs"] == 2 and resumed["details"]["steps"] > first["details"]["steps"]


def test_finetune_segmentation_reads_the_run_bands_with_the_chosen_head(mae_run, data, tmp_path, capsys):
    segmentation = synthetic.write_segmentation(data / "segmentation", count=4, size=32)
    out = tmp_path / "seg"
    assert main(["finetune", "--run", str(mae_run), "--task", "geotiff-segmentation", "--data", str(segmentation),
                 "--head", "conv", "--epochs", "2", "--batch-size", "4", "--out", str(out)]) == 0
    row, = json.loads((out / "metrics.json").read_text())["results"]
    assert row["settings"]["head_options"] == {"decoder": "conv"} and row["settings"]["freeze_encoder"]
    assert row["metric"] == "miou" and row["num_train"] == 4 and 0 <= row["value"] <= 100
    assert (out / "geotiff-segmentation" / "pretrained" / "model.safetensors").is_file()
    assert "| geotiff-segmentation | pretrained | miou |" in capsys.readouterr().out


def test_tile_cuts_a_scene_into_georeferenced_shards(tmp_path, capsys):
    scene = synthetic.write_scene(tmp_path / "scene.tif", 96, 128)
    out = tmp_path / "tiles"
    assert main(["tile", str(scene), "--out", str(out), "--tile-size", "32", "--shard-size", "4",
                 "--sensor", "sentinel2", "--no-progress"]) == 0
    index = json.loads((out / "index.json").read_text())
    with rasterio.open(scene) as src:
        valid, transform, crs = src.read_masks(1) > 0, src.transform, src.crs
        whole = src.read()
    empty = sum(not valid[r:r + 32, c:c + 32].any() for r in range(0, 96, 32) for c in range(0, 128, 32))
    assert index["written"] == 12 - empty and index["skipped_tiles"]["all_nodata"] == empty > 0
    assert index["shards"] == -(-index["written"] // 4) and len(list(out.glob("shard-*"))) == index["shards"]
    first = index["tiles"][0]
    row, col = first["window"][:2]
    with rasterio.open(out / first["path"]) as tile:
        assert tile.crs == crs
        assert (tile.transform.c, tile.transform.f) == (transform.c + col * 10, transform.f - row * 10)
        assert np.array_equal(tile.read(), whole[:, row:row + 32, col:col + 32])
        assert tile.descriptions[3] == "B04" and tile.nodata == 0
    assert len(GeoTiffDataset(out, img_size=32, patch_size=8, transform="center_crop")) == index["written"]


def test_tile_counts_or_refuses_an_ungeoreferenced_scene(tmp_path, capsys):
    good = synthetic.write_scene(tmp_path / "a" / "good.tif", 64, 64)
    write_geotiff(tmp_path / "a" / "plain.tif", rasterio.open(good).read())
    assert main(["tile", str(tmp_path / "a"), "--out", str(tmp_path / "t"), "--tile-size", "32", "--no-progress"]) == 0
    index = json.loads((tmp_path / "t" / "index.json").read_text())
    assert len(index["skipped_scenes"]) == 1 and "georeferencing" in index["skipped_scenes"][0][1]
    assert main(["tile", str(tmp_path / "a"), "--out", str(tmp_path / "u"), "--tile-size", "32", "--strict"]) == 2
    assert "georeferencing" in capsys.readouterr().err


def test_recipes_are_packaged_and_printable(capsys):
    assert {"smarties", "cha_mae", "selective_mae"} <= set(recipe_files("mimkit.remote_sensing"))
    assert main(["recipes"]) == 0
    assert "smarties" in capsys.readouterr().out
    assert main(["recipes", "smarties"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["method"] == "smarties"
    assert main(["recipes", "nope"]) == 2
    capsys.readouterr()
    assert main(["sensors", "landsat8"]) == 0
    assert capsys.readouterr().out.startswith("landsat8")


def test_bad_input_is_one_clear_line(tmp_path, data, capsys):
    source = next((data / "tiles").rglob("*.tif"))
    with rasterio.open(source) as src:
        write_geotiff(tmp_path / "bad" / "twelve.tif", src.read()[:12], crs=src.crs, transform=src.transform)
    code = main(["pretrain", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "run"), *TINY, *QUICK])
    err = capsys.readouterr().err
    assert code == 2 and "12 band(s) but sensor 'sentinel2' describes 13" in err and "Traceback" not in err
    assert main(["evaluate", "--run", str(tmp_path / "nope"), "--task", "eurosat-knn", "--data", "x"]) == 2
    capsys.readouterr()
    # a GeoTIFF flag on a torchgeo task would be dropped: refused, naming the flag
    assert main(["evaluate", "--checkpoint", str(source), "--task", "eurosat-knn", "--data", str(data / "eurosat"),
                 "--sensor", "landsat8"]) == 2
    assert "--sensor read GeoTIFF files" in capsys.readouterr().err
