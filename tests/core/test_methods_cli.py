"""Every core method runs end to end from the command line: `mimkit pretrain --method NAME`, then kNN."""
import json

import pytest

from mimkit.core.cli import main

ENCODER = ["--img-size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
           "--batch-size", "4", "--num-workers", "0", "--no-progress", "--accelerator", "cpu", "--max-steps", "2"]
DECODER = ["--set", "decoder_embed_dim=32", "--set", "decoder_depth=1", "--set", "decoder_num_heads=2"]
EXTRA = {
    "mae": DECODER,
    "simmim": ["--set", "mask_patch_size=16"],
    "cae": DECODER + ["--set", "regressor_depth=1"],
    "dmjd": DECODER,
    "cropmae": DECODER,
    "mixedae": DECODER,
    "maskalign": ["--set", "aligned_layers=2"],
    "mrmae": DECODER,
    "maskembed": ["--set", "decoder_depth=1"],
}
TEACHER = {"maskalign", "mrmae", "maskembed"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, make_pngs_module):
    root = tmp_path_factory.mktemp("methods")
    return (make_pngs_module(root / "pretrain", 12), make_pngs_module(root / "train", 12, classes=3, seed=1),
            make_pngs_module(root / "test", 6, classes=3, seed=2))


@pytest.fixture(scope="module")
def teacher(folders, tmp_path_factory):
    """A tiny MAE run: the local teacher file that teacher-based methods must be given."""
    run = tmp_path_factory.mktemp("teacher") / "mae"
    assert main(["pretrain", "--data", str(folders[0]), "--out", str(run), *ENCODER, *DECODER]) == 0
    return run / "model.safetensors"


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_pretrain_then_knn_from_the_command_line(name, folders, teacher, tmp_path, capsys):
    pretrain_dir, train, test = folders
    extra = list(EXTRA[name])
    if name in TEACHER:
        extra += ["--set", "teacher=mimkit", "--set", f"teacher_weights={teacher}"]
    run = tmp_path / name
    assert main(["pretrain", "--method", name, "--data", str(pretrain_dir), "--out", str(run), *ENCODER, *extra]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == name and metrics["train"]["steps"] == 2
    assert main(["evaluate", "--run", str(run), "--protocol", "knn", "--train", str(train), "--test", str(test),
                 "--k", "3"]) == 0
    results = json.loads((run / "metrics.json").read_text())["results"]
    assert [r["protocol"] for r in results] == ["knn", "knn"] and 0 <= results[0]["value"] <= 100


def test_teacher_methods_refuse_a_missing_teacher_file(folders, tmp_path, capsys):
    code = main(["pretrain", "--method", "mrmae", "--data", str(folders[0]), "--out", str(tmp_path / "run"),
                 *ENCODER, *DECODER, "--set", "teacher=mimkit", "--set", f"teacher_weights={tmp_path}/nope.safetensors"])
    assert code == 2 and "nope.safetensors" in capsys.readouterr().err
