"""Every recipe of every domain is a complete config of its command: each written value is applied unchanged
(--print_config shows it), a key the code cannot apply is an error; every core method has a recipe."""
from importlib import resources

import pytest
import yaml

from mimkit.core.registry import list_methods

DOMAINS = {"core": "mimkit.core", "medical": "mimkit.medical", "remote_sensing": "mimkit.remote_sensing"}
RECIPES = sorted((domain, entry.name[:-5]) for domain, package in DOMAINS.items()
                 for entry in resources.files(package).joinpath("recipes").iterdir() if entry.name.endswith(".yaml"))


def main_of(domain: str):
    if domain == "core":
        from mimkit.core.cli import main
    elif domain == "medical":
        from mimkit.medical.cli import main
    else:
        from mimkit.remote_sensing.cli import main
    return main


def command_line(domain: str, name: str, path, tmp_path) -> list[str]:
    if not name.endswith("finetune"):
        return ["pretrain", "--config", str(path), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    data = ["--train", str(tmp_path / "data")] if domain == "core" else ["--data", str(tmp_path / "data")]
    return ["finetune", "--config", str(path), "--run", str(tmp_path / "run"), *data, "--out", str(tmp_path / "ft")]


def leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        elif value is None and not prefix:  # a section of comments only
            continue
        else:
            yield f"{prefix}{key}", value


def lookup(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def copy(domain: str, name: str, tmp_path):
    path = tmp_path / f"{name}.yaml"
    path.write_text(resources.files(DOMAINS[domain]).joinpath("recipes", f"{name}.yaml").read_text())
    return path


@pytest.mark.parametrize("domain,name", RECIPES, ids=[f"{d}/{n}" for d, n in RECIPES])
def test_every_value_of_every_recipe_is_applied(domain, name, tmp_path, capsys):
    path = copy(domain, name, tmp_path)
    assert main_of(domain)([*command_line(domain, name, path, tmp_path), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, value in leaves(yaml.safe_load(path.read_text())):
        shown = lookup(printed, key)
        assert shown == value or (isinstance(value, list) and list(shown) == value), key


@pytest.mark.parametrize("domain,name", RECIPES, ids=[f"{d}/{n}" for d, n in RECIPES])
def test_an_unknown_recipe_key_is_an_error_naming_it(domain, name, tmp_path, capsys):
    path = copy(domain, name, tmp_path)
    content = yaml.safe_load(path.read_text())
    section = "finetune" if name.endswith("finetune") else "model"
    content[section]["no_such_setting"] = 1
    path.write_text(yaml.safe_dump(content))
    assert main_of(domain)([*command_line(domain, name, path, tmp_path), "--print_config"]) == 2
    assert "no_such_setting" in capsys.readouterr().err


def test_every_core_method_has_a_recipe_and_clipping_is_the_officials():
    core = {name for domain, name in RECIPES if domain == "core"}
    own = {"mae", "simmim", "cae", "dmjd", "cropmae", "mixedae", "maskalign", "mrmae", "maskembed"}
    assert own <= set(list_methods()) and own <= core and "mae_finetune" in core
    clip = {name: yaml.safe_load(resources.files("mimkit.core").joinpath("recipes", f"{name}.yaml").read_text())
            .get("trainer", {}).get("gradient_clip_val") for name in ("cae", "simmim", "maskembed", "mae")}
    assert clip == {"cae": 3.0, "simmim": 5.0, "maskembed": 1.0, "mae": None}  # MAE pretraining does not clip
