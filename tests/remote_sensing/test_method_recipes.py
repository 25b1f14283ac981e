"""The remote-sensing method recipes: every model key is an argument of its method, and the recipes carry the
papers' defining settings."""
from importlib import resources

import pytest
import yaml

from mimkit.core.registry import method_arguments


def recipe(name):
    return yaml.safe_load(resources.files("mimkit.remote_sensing").joinpath("recipes", f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["selective_mae", "cha_mae", "smarties"])
def test_recipe_keys_are_method_arguments(name):
    r = recipe(name)
    assert r["method"] == name and set(r) == {"method", "model", "train", "data"}
    assert set(r["model"]) <= {k.removeprefix("encoder.") for k in method_arguments(name)}
    assert r["data"]["img_size"] == r["model"]["img_size"]


def test_recipes_hold_the_papers_settings():
    selective, cha, smarties = recipe("selective_mae"), recipe("cha_mae"), recipe("smarties")
    assert (selective["model"]["mask_ratio"], selective["model"]["target_ratio"]) == (0.85, 0.25)
    assert selective["train"]["base_lr"] == pytest.approx(1.5e-4 * 0.25 / 0.85, rel=1e-3)
    assert (cha["model"]["p_patch"], cha["model"]["p_channel"], cha["model"]["mask_ratio"]) == (0.0, 0.0, 0.25)
    assert cha["model"]["num_memory_tokens"] == 8 and cha["model"]["reconstruction_weight"] == 0.99
    assert smarties["model"]["projection_scale"] == 12.0 and smarties["model"]["mask_ratio"] == 0.75
