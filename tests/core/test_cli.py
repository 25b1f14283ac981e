"""The `mimkit` command: the common path end to end, typed configs (--config, --print_config, dotted keys, re-running
a run from its config.yaml), recipes, and clear errors for bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest
import timm
import yaml
from safetensors.torch import load_file

from mimkit.core.checkpoints import load_method
from mimkit.core.cli import main

TINY_FLAGS = ["--img-size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
              "--set", "decoder_embed_dim=32", "--set", "decoder_depth=1", "--set", "decoder_num_heads=2",
              "--batch-size", "4", "--num-workers", "0", "--no-progress", "--accelerator", "cpu"]


def pretrain(data, out, *extra):
    return main(["pretrain", "--data", str(data), "--out", str(out), *TINY_FLAGS, *extra])


def test_common_path_pretrain_evaluate_reconstruct_export(tmp_path, labelled_folders, capsys):
    train, test = labelled_folders
    run = tmp_path / "run"
    assert pretrain(train, run, "--max-steps", "3", "--checkpoint-every", "3") == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "mae" and config["model"]["encoder"]["in_chans"] == 1  # read from the data
    assert config["train"]["max_steps"] == 3 and len(config["data"]["mean"]) == 1
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "pictures" / "reconstruction.png").exists()

    assert main(["evaluate", "--run", str(run), "--protocol", "knn", "--train", str(train), "--test", str(test),
                 "--compare-random-init", "--k", "5"]) == 0
    printed = capsys.readouterr().out
    assert "| knn | pretrained | accuracy |" in printed and "| knn | random | accuracy |" in printed
    results = json.loads((run / "metrics.json").read_text())["results"]
    assert {(r["protocol"], r["init"]) for r in results} == {("knn", "pretrained"), ("knn", "random")}
    assert all(0.0 <= r["value"] <= 100.0 and r["num_train"] == 30 for r in results)  # percent

    picture = tmp_path / "recon.png"
    assert main(["reconstruct", "--run", str(run), "--data", str(test), "--out", str(picture), "--count", "3"]) == 0
    assert picture.stat().st_size > 0

    exported = tmp_path / "encoder.safetensors"
    assert main(["export", "--run", str(run), "--out", str(exported)]) == 0
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                            in_chans=1, embed_dim=32, depth=2, num_heads=2)
    vit.load_state_dict(load_file(exported), strict=True)


def test_recipe_sets_options_and_flags_win(tmp_path, image_folder):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "method": "mae",
        "model": {"mask_ratio": 0.5, "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2},
        "train": {"epochs": 2, "warmup_epochs": 1, "base_lr": 1e-3},
        "data": {"crop_scale": [0.5, 1.0]}}))
    run = tmp_path / "run"
    assert pretrain(image_folder, run, "--config", str(recipe), "--base-lr", "2e-3") == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    # 24 images, batch 4: 2 epochs = 12 steps, 1 warmup epoch = 6 steps
    assert config["train"]["max_steps"] == 12 and config["train"]["warmup_steps"] == 6
    assert config["train"]["base_lr"] == 2e-3 and config["data"]["crop_scale"] == [0.5, 1.0]
    # --max-steps on the command line wins over the recipe's epochs
    assert pretrain(image_folder, tmp_path / "short", "--config", str(recipe), "--max-steps", "2") == 0
    assert yaml.safe_load((tmp_path / "short" / "config.yaml").read_text())["train"]["max_steps"] == 2
    method, _ = load_method(run / "model.safetensors")
    assert method.masker.schedule(0) == 0.5


def test_recipes_lists_every_packaged_recipe_and_prints_one_pretrain_takes(tmp_path, image_folder, capsys):
    from importlib import resources

    shipped = sorted(e.name[:-5] for e in resources.files("mimkit.core").joinpath("recipes").iterdir()
                     if e.name.endswith(".yaml"))
    assert main(["recipes"]) == 0
    listed = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [name for name, _ in listed] == shipped
    assert dict(listed)["mae"] == "pretrain" and dict(listed)["mae_finetune"] == "finetune"
    assert main(["recipes", "mae"]) == 0
    recipe = tmp_path / "mae.yaml"
    recipe.write_text(capsys.readouterr().out)
    assert yaml.safe_load(recipe.read_text())["method"] == "mae"
    run = tmp_path / "run"
    # the recipe first, then a tiny model on this machine (flags after --config win)
    small = ["pretrain", "--config", str(recipe), "--data", str(image_folder), "--out", str(run), *TINY_FLAGS,
             "--max-steps", "2", "--in-chans", "1", "--data.mean", "[0.5]", "--data.std", "[0.25]"]
    capsys.readouterr()
    assert main(small) == 2  # ViT-L's size under --embed-dim 32: said, not silently ViT-L
    assert "encoder.size='large' sets embed_dim=1024, depth=24, num_heads=16; got embed_dim=32, depth=2, num_heads=2" \
        in capsys.readouterr().err
    small += ["--model.encoder.size", "null"]
    assert main(small) == 2  # the paper's 8 nodes x 8 GPUs, started bare: said at once, not a hang
    assert "train.num_nodes is 8, but this process was not started by a cluster launcher" in capsys.readouterr().err
    assert main([*small, "--num-nodes", "1", "--devices", "1"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == "mae" and saved["model"]["norm_pix_loss"] is True  # the recipe's, under the tiny flags
    assert saved["model"]["encoder"]["embed_dim"] == 32 and saved["train"]["num_nodes"] == 1
    assert main(["recipes", "nope"]) == 2
    assert "no recipe 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("case,expected", [
    ("missing", "does not exist"),
    ("empty", "no image files under"),
    ("small", "smaller than"),
    ("channels", "--in-chans"),
    ("indivisible", "--img-size 32"),
])
def test_bad_input_gets_a_clear_error_naming_the_problem(tmp_path, capsys, make_pngs, case, expected):
    write_pngs = make_pngs
    data = tmp_path / "data"
    extra = []
    if case == "empty":
        data.mkdir()
        (data / "notes.txt").write_text("no images here")
    elif case == "small":
        write_pngs(data, 3, size=4)
    elif case == "channels":
        write_pngs(data, 3)
        extra = ["--in-chans", "3"]
    elif case == "indivisible":
        write_pngs(data, 3)
    args = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), *TINY_FLAGS, "--max-steps", "1", *extra]
    if case == "indivisible":
        args[args.index("--img-size") + 1] = "30"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    if case in ("missing", "empty"):
        assert str(data) in err


def test_corrupt_file_is_skipped_and_counted_or_stops_with_strict_data(tmp_path, capsys, make_pngs):
    data = make_pngs(tmp_path / "data", 8)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    assert pretrain(data, tmp_path / "run", "--max-steps", "1") == 0
    err = capsys.readouterr().err
    assert "1 unreadable files skipped" in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["skipped_files"] == 1
    assert pretrain(data, tmp_path / "strict", "--max-steps", "1", "--strict-data") == 2
    assert "broken.png" in capsys.readouterr().err


def test_evaluate_rejects_unlabelled_folder_and_missing_run(tmp_path, image_folder, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "nope"), "--train", str(image_folder),
                 "--test", str(image_folder)]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    (tmp_path / "unfinished").mkdir()
    assert main(["evaluate", "--run", str(tmp_path / "unfinished"), "--train", str(image_folder),
                 "--test", str(image_folder)]) == 2
    assert "model.safetensors is missing" in capsys.readouterr().err


def test_methods_and_help_from_the_installed_command():
    out = subprocess.run([Path(sys.executable).parent / "mimkit", "methods"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("") and "mae " in out.stdout
    helped = subprocess.run([Path(sys.executable).parent / "mimkit", "pretrain", "--help"], capture_output=True, text=True)
    assert "--resume" in helped.stdout and "--strict-data" in helped.stdout and "--max-time" in helped.stdout
    assert "--model.encoder.embed_dim" in helped.stdout and "--trainer.logger" in helped.stdout
    args = subprocess.run([Path(sys.executable).parent / "mimkit", "methods", "mae"], capture_output=True, text=True)
    assert "encoder.embed_dim = 1024" in args.stdout  # MAE's ViT-L/16
    assert "mask_ratio = 0.75" in args.stdout and "norm_pix_loss = True" in args.stdout


def test_pretrained_starts_a_new_run_from_local_weights(tmp_path, image_folder, capsys):
    first = tmp_path / "first"
    assert pretrain(image_folder, first, "--max-steps", "2") == 0
    # lr 0: the second run's weights stay exactly those it started from
    second = tmp_path / "second"
    assert pretrain(image_folder, second, "--max-steps", "1", "--lr", "0", "--pretrained",
                    str(first / "model.safetensors")) == 0
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert yaml.safe_load((second / "config.yaml").read_text())["pretrained"].endswith("model.safetensors")
    # an encoder-only timm file initialises the encoder; the decoder starts fresh
    exported = tmp_path / "encoder.safetensors"
    assert main(["export", "--run", str(first), "--out", str(exported)]) == 0
    third = tmp_path / "third"
    assert pretrain(image_folder, third, "--max-steps", "1", "--lr", "0", "--pretrained", str(exported)) == 0
    c = load_file(third / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a if k.startswith("encoder."))
    # a file that fits nothing is one clear error
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file
    save_file({"something": torch.zeros(3)}, str(bad))
    assert pretrain(image_folder, tmp_path / "fourth", "--max-steps", "1", "--pretrained", str(bad)) == 2
    assert "bad.safetensors" in capsys.readouterr().err


def test_a_runs_config_yaml_re_runs_it_exactly(tmp_path, image_folder):
    first = tmp_path / "first"
    assert pretrain(image_folder, first, "--max-steps", "3", "--model.mask_ratio", "0.6") == 0
    second = tmp_path / "second"
    assert main(["pretrain", "--config", str(first / "config.yaml"), "--out", str(second)]) == 0
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stored = yaml.safe_load((second / "config.yaml").read_text())
    assert stored["model"]["mask_ratio"] == 0.6 and stored["out"] == str(second)
    assert set(stored) == {"method", "model", "data", "train", "trainer", "out", "pretrained", "resume"}


def test_print_config_and_dotted_overrides(tmp_path, image_folder, capsys):
    assert main(["pretrain", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--method", "simmim",
                 "--model.mask_ratio", "0.4", "--embed-dim", "48", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == "simmim" and printed["model"]["mask_ratio"] == 0.4
    assert printed["model"]["encoder"]["embed_dim"] == 48 and printed["data"]["root"] == str(image_folder)
    assert printed["train"]["base_lr"] == 1.5e-4 and "logger" in printed["trainer"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content,expected", [
    ({"model": {"mask_ratio": 0.5, "foo": 1}}, "unknown key 'model.foo'"),
    ({"train": {"batch_size": "abc"}}, 'key "train.batch_size"'),
    ({"trainer": {"max_epochs": 3}}, "trainer.max_epochs"),
    ({"section": {"a": 1}}, "section"),
])
def test_a_config_key_the_code_cannot_apply_is_one_line_naming_key_and_file(tmp_path, image_folder, capsys, content,
                                                                             expected):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(content))
    assert main(["pretrain", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--config",
                 str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err
    if content.get("model") or content.get("train"):
        assert str(recipe) in err
    assert not (tmp_path / "run").exists()


def test_trainer_options_pass_through_to_lightning(tmp_path, image_folder):
    run = tmp_path / "run"
    assert pretrain(image_folder, run, "--max-steps", "2", "--log-every", "1", "--trainer.gradient_clip_val", "0.5",
                    "--trainer.callbacks+=LearningRateMonitor") == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["gradient_clip_val"] == 0.5
    assert config["trainer"]["callbacks"][0]["class_path"].endswith("LearningRateMonitor")
    assert list((run / "logs").rglob("metrics.csv"))  # the CSV logger by default


def test_embed_writes_one_embedding_per_image_with_file_names(tmp_path, image_folder):
    from safetensors import safe_open

    run = tmp_path / "run"
    assert pretrain(image_folder, run, "--max-steps", "1") == 0
    out = tmp_path / "emb.safetensors"
    assert main(["embed", "--run", str(run), "--data", str(image_folder), "--out", str(out), "--pool", "avg"]) == 0
    with safe_open(str(out), "pt") as f:
        embeddings, files = f.get_tensor("embeddings"), json.loads(f.metadata()["files"])
    assert embeddings.shape == (24, 32) and files == sorted(p.name for p in image_folder.glob("*.png"))
    # the same image gives the same embedding as the Python API's encoder
    method, _ = load_method(run / "model.safetensors")
    assert torch.isfinite(embeddings).all() and embeddings.std(0).mean() > 0
    assert main(["embed", "--run", str(run), "--data", str(image_folder), "--out", str(tmp_path / "e.csv")]) == 2


@pytest.mark.parametrize("recipe", sorted(p for p in (Path(__file__).parents[2] / "core" / "recipes").glob("*.yaml")
                                          if not p.stem.endswith("finetune")),  # fine-tuning: tests/core/test_recipes
                         ids=lambda p: p.stem)
def test_every_core_recipe_is_a_complete_typed_config(recipe, tmp_path, image_folder, capsys):
    written = yaml.safe_load(recipe.read_text())
    assert main(["pretrain", "--config", str(recipe), "--data", str(image_folder), "--out", str(tmp_path / "r"),
                 "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == written["method"]
    for section in ("model", "train", "data"):
        for key, value in (written.get(section) or {}).items():
            if isinstance(value, dict):
                assert {k: printed[section][key][k] for k in value} == value
            else:
                assert printed[section][key] == (list(value) if isinstance(value, tuple) else value), (section, key)
