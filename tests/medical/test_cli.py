"""The `mimkit-medical` command: pretrain (3D CT, 2D X-ray, unified 2D+3D, anomaly), evaluate, finetune, anomaly,
bench, recipes (each a typed config of its command), synthetic, and one clear line with exit code 2 for bad input."""
import json
import subprocess
import sys
from importlib import resources

import pytest
import torch
import yaml

from mimkit.core.checkpoints import load_method
from mimkit.medical.cli import build_tool, main
from mimkit.medical.synthetic import write_synthetic

TINY = ["--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--batch-size", "4", "--num-workers", "0",
        "--no-progress", "--accelerator", "cpu", "--max-steps", "3"]
MAE_DECODER = ["--set", "decoder_embed_dim=32", "--set", "decoder_depth=1", "--set", "decoder_num_heads=2"]
RECIPES = sorted(entry.name[:-5] for entry in resources.files("mimkit.medical").joinpath("recipes").iterdir()
                 if entry.name.endswith(".yaml"))


def recipe_copy(tmp_path, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(resources.files("mimkit.medical").joinpath("recipes", f"{name}.yaml").read_text())
    return path


def command_of(recipe: str) -> str:
    return "finetune" if recipe.endswith("finetune") else "pretrain"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {kind: write_synthetic(root, kind) for kind in ("organs", "chestxray14", "oct", "anomaly")}


def test_help_explains_every_command(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("pretrain", "evaluate", "finetune", "anomaly", "bench", "recipes", "synthetic"):
        assert command in text
    for command, phrase in (("pretrain", "--hu-window"), ("finetune", "UNETR-style"), ("anomaly", "ROC-AUC")):
        assert main([command, "--help"]) == 0
        assert phrase in capsys.readouterr().out.replace("\n", " ")


def test_ct_pretraining_stores_its_preprocessing_then_segments(tmp_path, data, capsys):
    run = tmp_path / "ct"
    assert main(["pretrain", "--data", str(data["organs"]), "--layout", "msd", "--modality", "ct", "--roi", "16",
                 "--patch-size", "8", "--spacing", "1.5", "--crops-per-volume", "2", "--out", str(run), *TINY,
                 "--set", "decoder_embed_dim=32", "--set", "decoder_self_depth=1", "--set", "decoder_num_heads=2",
                 "--set", "decoder_layers=[1]"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    encoder = config["model"]["encoder"]
    assert config["method"] == "hiend_mae" and encoder["spatial_dims"] == 3    # CT's default method, 3D
    assert encoder["img_size"] == 16 and encoder["in_chans"] == 1              # the ROI; channels from the data
    data_section = config["data"]
    assert data_section["spacing"] == [1.5, 1.5, 1.5] and data_section["intensity_range"] == [-175.0, 250.0]
    assert data_section["modality"] == "ct" and data_section["spatial_dims"] == 3
    assert json.loads((run / "metrics.json").read_text())["data"]["skipped_files"] == 0
    assert "16 images" in capsys.readouterr().err                 # 8 volumes x 2 crops per pass
    method, _ = load_method(run / "model.safetensors")
    assert method.encoder.grid == (2, 2, 2)

    assert main(["finetune", "--run", str(run), "--data", str(data["organs"]), "--layout", "msd", "--steps", "2",
                 "--compare-random-init"]) == 0
    results = json.loads((run / "metrics.json").read_text())["results"]
    assert {(r["protocol"], r["init"]) for r in results} == {("segmentation", "pretrained"), ("segmentation", "random")}
    assert all(0.0 <= r["value"] <= 100.0 and len(r["details"]["dice_per_class"]) == 3 for r in results)
    # --layout msd: the BTCV recipe's settings (bench.SEGMENTATION_SETTINGS), the steps from the flag
    assert all(r["settings"]["max_steps"] == 2 and r["settings"]["layer_decay"] == 1.0 for r in results)

    capsys.readouterr()
    assert main(["bench", "--task", "synthetic-organs-segmentation", "--root", str(data["organs"]), "--run", str(run),
                 "--steps", "2"]) == 0
    table = capsys.readouterr().out
    assert "| mimkit synthetic organs (3D) | segmentation | dice | hiend_mae | ViT-32x2/8 |" in table
    assert (run / "report_synthetic-organs-segmentation.md").is_file()


def test_the_hiend_mae_recipe_drives_pretraining_resume_and_the_btcv_recipe_finetuning(tmp_path, data, capsys):
    """The papers' recipes as shipped (sizes and steps overridden by flags): the recipe's data section decides the
    preprocessing, no --modality is needed, a run resumes, and the segmentation recipe configures fine-tuning."""
    hiend, btcv = recipe_copy(tmp_path, "hiend_mae"), recipe_copy(tmp_path, "hiend_mae_btcv_finetune")
    run = tmp_path / "run"
    tiny = ["--roi", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
            "--set", "decoder_embed_dim=32", "--set", "decoder_num_heads=2", "--set", "decoder_layers=[1]",
            "--batch-size", "2", "--devices", "1", "--num-workers", "0", "--no-progress", "--accelerator", "cpu"]
    assert main(["pretrain", "--config", str(hiend), "--data", str(data["organs"]), "--layout", "msd", "--out",
                 str(run), "--max-steps", "2", "--checkpoint-every", "2", *tiny]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["modality"] == "ct" and config["data"]["crop"] == "rand_pos_neg"
    assert config["data"]["crops_per_volume"] == 8 and config["data"]["scale_intensity"] == [0.1, 0.1]
    assert config["train"]["max_steps"] == 2 and config["train"]["devices"] == 1 and config["train"]["lr"] == 1e-4
    assert "64 images" in capsys.readouterr().err                   # 8 volumes x the recipe's 8 crops
    assert main(["pretrain", "--config", str(hiend), "--data", str(data["organs"]), "--layout", "msd", "--out",
                 str(run), "--max-steps", "3", "--resume", *tiny]) == 0
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 3
    capsys.readouterr()
    assert main(["finetune", "--config", str(btcv), "--run", str(run), "--data", str(data["organs"]), "--steps", "1",
                 "--batch-size", "1"]) == 0
    assert "| segmentation | pretrained | dice |" in capsys.readouterr().out
    row = json.loads((run / "metrics.json").read_text())["results"][-1]
    assert row["settings"]["head_options"] == {"feature_size": 32} and row["settings"]["lr"] == 1e-4
    assert row["settings"]["max_steps"] == 1 and row["settings"]["weight_decay"] == 1e-5


def test_xray_pretraining_auc_evaluation_and_the_thorax_finetuning_recipe(tmp_path, data, capsys):
    run = tmp_path / "xr"
    assert main(["pretrain", "--data", str(data["chestxray14"] / "images"), "--modality", "xray", "--img-size", "32",
                 "--patch-size", "8", "--in-chans", "3", "--out", str(run), *TINY, *MAE_DECODER]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "thorax_mae" and config["model"]["encoder"]["in_chans"] == 3  # grey radiographs as RGB
    assert len(config["data"]["mean"]) == 3
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(data["chestxray14"]), "--layout", "chestxray14",
                 "--protocol", "linear", "--epochs", "2"]) == 0
    assert "| linear | pretrained | auroc |" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(run), "--data", str(data["chestxray14"]), "--layout", "chestxray14",
                 "--protocol", "knn"]) == 2
    assert "kNN needs single-label data" in capsys.readouterr().err
    # the paper's fine-tuning recipe with one device and a short schedule from the command line: the rest is kept
    recipe = recipe_copy(tmp_path, "thorax_mae_finetune")
    assert main(["finetune", "--config", str(recipe), "--run", str(run), "--data", str(data["chestxray14"]),
                 "--devices", "1", "--accelerator", "cpu", "--steps", "2", "--batch-size", "4", "--no-progress"]) == 0
    assert "| finetune | pretrained | auroc |" in capsys.readouterr().out
    settings = json.loads((run / "metrics.json").read_text())["results"][-1]["settings"]
    assert settings["devices"] == 1 and settings["max_steps"] == 2 and settings["batch_size"] == 4
    assert settings["rand_augment"] == "rand-m6-mstd0.5-inc1" and settings["layer_decay"] == 0.55
    assert settings["drop_path"] == 0.2 and settings["label_smoothing"] == 0.0 and settings["base_lr"] == 2.5e-4


def test_a_runs_config_yaml_re_creates_its_medical_data_and_re_runs_it_exactly(tmp_path, data):
    from safetensors.torch import load_file

    first = tmp_path / "first"
    assert main(["pretrain", "--data", str(data["anomaly"] / "train"), "--modality", "xray", "--method", "mae",
                 "--img-size", "32", "--patch-size", "8", "--out", str(first), *TINY, *MAE_DECODER]) == 0
    second = tmp_path / "second"
    assert main(["pretrain", "--config", str(first / "config.yaml"), "--out", str(second)]) == 0
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stored = yaml.safe_load((second / "config.yaml").read_text())
    assert stored["data"] == yaml.safe_load((first / "config.yaml").read_text())["data"]


def test_unified_2d_3d_pretraining_and_class_folder_finetuning(tmp_path, data, capsys):
    run = tmp_path / "eye"
    assert main(["pretrain", "--data", str(data["oct"] / "train"), "--layout", "classes", "--modality", "oct",
                 "--img-size", "32", "--patch-size", "8", "--volume-data", str(data["organs"] / "imagesTr"),
                 "--roi", "16", "--out", str(run), *TINY, *MAE_DECODER]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "uni4eye" and config["model"]["volume_size"] == [16, 16, 16]
    assert config["model"]["encoder"]["img_size"] == 32 and config["model"]["volume_chans"] == 1
    assert len(config["data"]["volume_mean"]) == 1
    summary = json.loads((run / "metrics.json").read_text())["train"]
    assert {"image_2d", "image_3d"} <= set(summary["history"][0])        # both kinds trained in the same steps
    capsys.readouterr()
    assert main(["finetune", "--run", str(run), "--data", str(data["oct"]), "--layout", "classes", "--epochs", "1",
                 "--labels-per-class", "2"]) == 0
    out = capsys.readouterr().out
    assert "| finetune | pretrained | accuracy |" in out and "| 6 |" in out     # 2 labels x 3 classes


def test_anomaly_command_scores_and_maps(tmp_path, data, capsys):
    run = tmp_path / "memmc"
    assert main(["pretrain", "--data", str(data["anomaly"] / "train"), "--modality", "xray", "--method", "memmc_mae",
                 "--img-size", "32", "--patch-size", "8", "--set", "num_memory=4", "--out", str(run),
                 *TINY, *MAE_DECODER]) == 0
    capsys.readouterr()
    assert main(["anomaly", "--run", str(run), "--data", str(data["anomaly"] / "test"), "--maps", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 24 and summary["anomalous"] == 12 and 0.0 <= summary["auroc"] <= 1.0
    assert len(list((run / "anomaly" / "maps").glob("*.png"))) == 3
    rows = (run / "anomaly" / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,score,anomalous" and len(rows) == 25
    xr = tmp_path / "mae"
    assert main(["pretrain", "--data", str(data["anomaly"] / "train"), "--modality", "xray", "--method", "mae",
                 "--img-size", "32", "--patch-size", "8", "--out", str(xr), *TINY, *MAE_DECODER]) == 0
    capsys.readouterr()
    assert main(["anomaly", "--run", str(xr), "--data", str(data["anomaly"] / "test")]) == 2
    assert "memmc_mae" in capsys.readouterr().err


def test_recipes_are_package_data_and_listed(capsys):
    expected = {"hiend_mae", "memmc_mae", "thorax_mae_pretrain", "thorax_mae_finetune", "uni4eye", "urfound"}
    assert expected <= set(RECIPES)
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in RECIPES)
    assert main(["recipes", "hiend_mae"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["spacing"] == [1.5, 1.5, 1.5]
    assert main(["recipes", "nope"]) == 2
    assert "no recipe 'nope'" in capsys.readouterr().err


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _lookup(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_is_a_config_of_its_command_and_every_value_is_applied(tmp_path, capsys, name):
    """--print_config shows the configuration the command runs with: each value of the recipe is in it, unchanged."""
    recipe = recipe_copy(tmp_path, name)
    assert main([command_of(name), "--config", str(recipe), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, value in _leaves(yaml.safe_load(recipe.read_text())):
        shown = _lookup(printed, key)
        assert shown == value or (isinstance(value, list) and list(shown) == value), key


def test_the_finetuning_recipe_reaches_the_settings_and_flags_win(tmp_path, capsys):
    recipe = recipe_copy(tmp_path, "thorax_mae_finetune")
    assert main(["finetune", "--config", str(recipe), "--run", "RUN", "--data", "DATA", "--devices", "1",
                 "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["finetune"]["devices"] == 1 and printed["finetune"]["batch_size"] == 128
    assert printed["finetune"]["rand_augment"] == "rand-m6-mstd0.5-inc1" and printed["data"]["crop_pct"] == 0.875
    assert printed["data"]["root"] == "DATA" and printed["data"]["layout"] == "chestxray14"


@pytest.mark.parametrize("name,section,key", [("hiend_mae", "data", "hu_window"),
                                              ("thorax_mae_finetune", "finetune", "randaugment")])
def test_a_recipe_key_the_code_cannot_apply_is_one_line_naming_key_and_file(tmp_path, capsys, name, section, key):
    recipe = recipe_copy(tmp_path, name)
    content = yaml.safe_load(recipe.read_text())
    content[section][key] = 1
    recipe.write_text(yaml.safe_dump(content))
    where = ["--out", str(tmp_path / "run")] if command_of(name) == "pretrain" else ["--run", str(tmp_path)]
    assert main([command_of(name), "--config", str(recipe), "--data", str(tmp_path), *where, "--print_config"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{section}.{key}" in err and str(recipe) in err


@pytest.mark.parametrize("argv,message", [
    (["pretrain", "--data", "{organs}", "--out", "{out}"], "--modality is required"),
    (["pretrain", "--data", "{organs}", "--out", "{out}", "--modality", "ct", "--method", "urfound"], "2D only"),
    (["pretrain", "--data", "{missing}", "--out", "{out}", "--modality", "ct", "--layout", "msd"], "dataset.json"),
    (["pretrain", "--data", "{organs}", "--out", "{out}", "--modality", "ct", "--hu-window", "300", "100"],
     "--hu-window"),
    (["pretrain", "--data", "{organs}", "--out", "{out}", "--modality", "pet"], "--modality must be one of"),
    (["finetune", "--run", "{out}", "--data", "{organs}", "--layout", "msd", "--roi", "8"],
     "applies to pretraining only"),
    (["bench", "--task", "no-such-task", "--root", "{organs}", "--run", "{out}"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, data, capsys, argv, message):
    filled = [a.format(organs=data["organs"], out=tmp_path / "run", missing=tmp_path / "nothing") for a in argv]
    assert main(filled + (TINY if filled[0] == "pretrain" else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mimkit-medical {filled[0]}: error:") and message in err[-1]


def test_synthetic_command_and_the_module_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mimkit.medical.cli", "synthetic", "--out", str(tmp_path),
                          "--kind", "oct", "fundus"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "synthetic-oct-finetune" in out.stdout
    assert sorted(p.name for p in (tmp_path / "oct" / "train").iterdir()) == ["CNV", "DRUSEN", "NORMAL"]
    assert (tmp_path / "fundus" / "test" / "exudate").is_dir()
    assert build_tool().prog == "mimkit-medical"
