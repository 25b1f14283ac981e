"""`mimkit pretrain --method mom` end to end on the pasted-object set (KITTI layout, written by `mimkit synthetic`):
scikit-image's coffee / rocket / hubble_deep_field photographs with its chelsea and astronaut images pasted at known
boxes. The run folder evaluates and exports like any other; the recipe loads through the command line."""
import json
from importlib import resources

import numpy as np
import pytest
import torch
import yaml

from mimkit.core.cli import main
from mimkit.core.objects import KittiObjects, ObjectFolderData, distance_metrics, evaluate_distances
from mimkit.core.runs import load_run

MODEL = ["--img-size", "64", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
         "--set", "object_dim=32", "object_depth=1", "object_decoder_depth=1", "object_num_heads=2",
         "crop_size=[16, 16]", "min_box_size=[4, 4]", "--num-workers", "0", "--no-progress", "--accelerator", "cpu",
         "--log-every", "1"]
TINY = [*MODEL, "--batch-size", "8", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    assert main(["synthetic", "--out", str(root), "--kind", "objects", "--objects", "20"]) == 0
    return root / "objects"


@pytest.fixture(scope="module")
def run(objects, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mom"
    assert main(["pretrain", "--method", "mom", "--data", str(objects / "train"), "--out", str(out), *TINY,
                 "--max-steps", "12", "--checkpoint-every", "12"]) == 0
    return out


def test_synthetic_writes_kitti_folders_with_boxes_and_distances(objects):
    assert len(list((objects / "train" / "image_2").glob("*.png"))) == 20
    assert len(list((objects / "test" / "label_2").glob("*.txt"))) == 6
    batch = torch.utils.data.default_collate([KittiObjects(objects / "train", img_size=64)[i] for i in range(4)])
    assert batch["boxes"].shape[1:] == (16, 4) and batch["distances"].shape[1:] == (16,)
    valid = ~torch.isnan(batch["distances"])
    assert valid.sum(1).tolist() == [2, 2, 2, 2]  # two pasted objects per image
    heights = (batch["boxes"][..., 3] - batch["boxes"][..., 1])[valid]
    assert torch.allclose(batch["distances"][valid], 64 / heights, atol=1e-3)  # the pinhole distance


def test_pretrain_writes_a_run_whose_loss_falls(run, objects):
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "mom" and config["data"]["root"] == str(objects / "train")
    assert config["data"]["max_objects"] == 32 and config["data"]["hflip"] is True  # the object data section
    assert len(config["data"]["mean"]) == 3 and config["model"]["data_mean"] == config["data"]["mean"]
    assert config["model"]["encoder"]["in_chans"] == 3 and config["model"]["mom_weight"] == 20.0
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "model.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    history = metrics["train"]["history"]
    assert metrics["method"] == "mom" and metrics["train"]["steps"] == 12 and metrics["data"]["images"] == 20
    assert {"mom", "distance"} <= set(history[0])  # both terms logged
    assert np.mean([r["loss"] for r in history[-3:]]) < 0.5 * np.mean([r["loss"] for r in history[:3]])


def test_the_run_resumes_with_its_own_config(run, objects, tmp_path):
    import shutil

    copy = tmp_path / "mom"
    shutil.copytree(run, copy)
    assert main(["pretrain", "--resume", "--out", str(copy), "--max-steps", "14"]) == 0
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 14 and metrics["train"]["steps_this_session"] == 2


def test_the_run_evaluates_and_exports_like_other_runs(run, objects, tmp_path, make_pngs):
    method, config = load_run(run)
    test = KittiObjects(objects / "test", img_size=64, mean=config["data"]["mean"], std=config["data"]["std"])
    scores = evaluate_distances(method, test, batch_size=4)
    assert scores["objects"] == 12 and scores["rmse"] > 0 and 0 <= scores["delta_1"] <= 1
    train = make_pngs(tmp_path / "train", 12, size=64, classes=3, seed=1, channels=3)
    held_out = make_pngs(tmp_path / "test", 6, size=64, classes=3, seed=2, channels=3)
    assert main(["evaluate", "--run", str(run), "--protocol", "knn", "--train", str(train), "--test", str(held_out),
                 "--k", "3"]) == 0
    results = json.loads((run / "metrics.json").read_text())["results"]
    assert results[-1]["protocol"] == "knn" and 0 <= results[-1]["value"] <= 100
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "encoder.safetensors")]) == 0
    import timm
    from safetensors.torch import load_file

    vit = timm.models.vision_transformer.VisionTransformer(img_size=64, patch_size=8, embed_dim=32, depth=2,
                                                           num_heads=2, num_classes=0)
    vit.load_state_dict(load_file(tmp_path / "encoder.safetensors"), strict=True)
    image = torch.randn(1, 3, 64, 64)
    assert torch.allclose(vit.eval().forward_features(image), method.encoder.eval().forward_features(image),
                          atol=1e-5)


def test_the_recipe_loads_through_the_command_line(objects, tmp_path, capsys):
    recipe = tmp_path / "mom.yaml"
    recipe.write_text(resources.files("mimkit.core").joinpath("recipes", "mom.yaml").read_text())
    args = ["pretrain", "--config", str(recipe), "--data", str(objects / "train"), "--out", str(tmp_path / "run")]
    assert main([*args, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == "mom" and printed["model"]["mom_weight"] == 20.0
    assert printed["data"]["hflip"] is True and printed["data"]["max_objects"] == 32  # the object data class
    assert printed["train"]["lr"] == 5e-5 and printed["train"]["batch_size"] == 4
    # the recipe's training settings with a tiny model: two steps
    assert main([*args, *MODEL, "--size", "null", "--max-steps", "2"]) == 0
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["train"]["lr"] == 5e-5 and config["train"]["weight_decay"] == 2e-5
    assert config["data"]["mean"] == pytest.approx([0.485, 0.456, 0.406]) and config["model"]["pool_size"] == 8


def test_image_folders_still_read_as_images_and_mom_names_the_layout_it_needs(tmp_path, capsys, make_pngs):
    images = make_pngs(tmp_path / "images", 4)
    assert main(["pretrain", "--data", str(images), "--out", str(tmp_path / "mae"), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["crop_scale"] == [0.2, 1.0] and "max_objects" not in printed["data"]
    assert main(["pretrain", "--method", "mom", "--data", str(images), "--out", str(tmp_path / "mom"), *TINY,
                 "--max-steps", "1"]) == 2
    assert "image_2" in capsys.readouterr().err


def test_object_data_measures_its_normalisation(objects):
    data = ObjectFolderData(root=str(objects / "train"))
    dataset = data.build({"encoder": {"img_size": 32}}, "mom")
    assert dataset[0]["image"].shape == (3, 32, 32) and len(data.mean) == 3
    pixels = torch.stack([dataset._pixels(path) for path in dataset.files])
    assert np.allclose(data.mean, pixels.mean((0, 2, 3)).numpy(), atol=1e-4)


def test_distance_metrics_are_distformers_definitions():
    true, predicted = np.array([2.0, 4.0, 10.0]), np.array([3.0, 4.0, 5.0])
    scores = distance_metrics(true, predicted)
    assert scores["abs_rel"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert scores["sq_rel"] == pytest.approx((1 / 2 + 0 + 25 / 10) / 3)
    assert scores["rmse"] == pytest.approx(np.sqrt((1 + 0 + 25) / 3))
    assert scores["rmse_log"] == pytest.approx(np.sqrt((np.log(1.5) ** 2 + np.log(0.5) ** 2) / 3))
    assert scores["delta_1"] == pytest.approx(1 / 3)  # only 4 -> 4 within a factor 1.25


def test_the_python_api_reads_a_folder_path_as_the_methods_own_data(objects, tmp_path):
    """`mimkit.pretrain(data=PATH, method="mom")` builds the object data section mom names, as the command does."""
    from mimkit.core import api

    assert isinstance(api._data(str(objects / "train"), "mom"), ObjectFolderData)
    assert type(api._data(str(objects / "train"), "mae")).__name__ == "ImageFolderData"
    out = tmp_path / "api"
    model = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "object_dim": 32,
             "object_depth": 1, "object_decoder_depth": 1, "object_num_heads": 2, "crop_size": [16, 16],
             "min_box_size": [4, 4]}
    train = api.TrainConfig(batch_size=8, max_steps=2, lr=1e-3, num_workers=0, progress=False, accelerator="cpu")
    summary = api.pretrain(str(objects / "train"), str(out), method="mom", model=model, train=train)
    assert summary["steps"] == 2 and (out / "model.safetensors").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["max_objects"] == 32
