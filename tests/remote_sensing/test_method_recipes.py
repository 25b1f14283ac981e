"""The remote-sensing method recipes: each is a complete typed config of `mimkit-rs pretrain` (every key an argument
of its method, GeoTiffData or TrainConfig; --print_config shows every written value), and they carry the papers'
defining settings."""
import dataclasses
import inspect
from importlib import resources

import pytest
import yaml
from lightning.pytorch import Trainer

from mimkit.core.registry import method_arguments
from mimkit.core.train import TrainConfig
from mimkit.remote_sensing.cli import main
from mimkit.remote_sensing.data import GeoTiffData

NAMES = ["selective_mae", "cha_mae", "smarties"]


def recipe_text(name):
    return resources.files("mimkit.remote_sensing").joinpath("recipes", f"{name}.yaml").read_text()


def recipe(name):
    return yaml.safe_load(recipe_text(name))


@pytest.mark.parametrize("name", NAMES)
def test_recipe_keys_are_arguments_of_what_they_configure(name):
    r = recipe(name)
    assert r["method"] == name and {"method", "model", "train", "data"} <= set(r) <= {"method", "model", "train",
                                                                                          "data", "trainer"}
    arguments = method_arguments(name)
    assert {f"encoder.{k}" for k in r["model"]["encoder"]} <= set(arguments)
    assert set(r["model"]) - {"encoder"} <= set(arguments)
    assert set(r["data"]) <= {f.name for f in dataclasses.fields(GeoTiffData)}  # the image size is the model's only
    assert set(r["train"]) <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(r.get("trainer", {})) <= set(inspect.signature(Trainer.__init__).parameters)  # Lightning's own


@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_is_a_complete_typed_config(name, tmp_path, capsys):
    path = resources.files("mimkit.remote_sensing").joinpath("recipes", f"{name}.yaml")
    written = recipe(name)
    assert main(["pretrain", "--config", str(path), "--data", str(tmp_path / "tiles"), "--out", str(tmp_path / "run"),
                 "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == name and printed["data"]["root"] == str(tmp_path / "tiles")
    for section in ("model", "train", "data", "trainer"):
        for key, value in written.get(section, {}).items():
            if isinstance(value, dict):
                assert {k: printed[section][key][k] for k in value} == value, (section, key)
            else:
                assert printed[section][key] == value, (section, key)
    assert not (tmp_path / "run").exists()


def test_smarties_second_sensor_is_read_from_a_paired_folder_given_at_run_time():
    # the paper pairs two sensors' scenes: a local folder (--second-root), so the recipe names how, not where
    text = recipe_text("smarties")
    assert "second_root" not in recipe("smarties")["data"] and "--second-root" in text
    assert recipe("smarties")["model"]["second_view"] == "rgb"  # the fallback without a second folder


def test_recipes_hold_the_papers_settings():
    selective, cha, smarties = recipe("selective_mae"), recipe("cha_mae"), recipe("smarties")
    assert (selective["model"]["mask_ratio"], selective["model"]["target_ratio"]) == (0.85, 0.25)
    assert selective["train"]["base_lr"] == pytest.approx(1.5e-4 * 0.25 / 0.85, rel=1e-3)
    assert (cha["model"]["p_patch"], cha["model"]["p_channel"], cha["model"]["mask_ratio"]) == (0.0, 0.0, 0.25)
    assert cha["model"]["num_memory_tokens"] == 8 and cha["model"]["reconstruction_weight"] == 0.99
    assert cha["model"]["encoder"]["in_chans"] == 18 and cha["model"]["encoder"]["patch_size"] == 8
    assert smarties["model"]["projection_scale"] == 12.0 and smarties["model"]["mask_ratio"] == 0.75
    assert smarties["model"]["encoder"]["img_size"] == 224 and smarties["data"]["crop_scale"] == [0.25, 1.0]
