"""mimkit-faces end to end on a few shipped faces: synthetic -> pretrain -> train-detector -> detect -> evaluate,
the recipe read by the command's own parser, and one-line errors for a wrong path or source."""
import csv
import json

import pytest
import yaml

from mimkit.faces.cli import main

TINY = {"method": "gm_df",
        "model": {"encoder": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
                  "text_width": 32, "text_depth": 1, "text_heads": 2, "context_length": 24, "text_embed_dim": 32,
                  "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2},
        "train": {"max_steps": 3, "batch_size": 8, "checkpoint_every": 3, "log_every": 1, "picture_every": 0,
                  "warmup_steps": 1, "progress": False}}


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    assert main(["synthetic", "--out", str(root / "data"), "--count", "6", "--frames", "2", "--size", "32",
                 "--kind", "colour", "blur"]) == 0
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return root


def test_pretrain_train_detector_detect_evaluate(faces, capsys):
    data, config = faces / "data", str(faces / "tiny.yaml")
    sources = ["--sources", f"colour=folder:{data / 'colour'}", f"blur=folder:{data / 'blur'}"]
    assert main(["pretrain", "--config", config, *sources, "--out", str(faces / "pre"),
                 "--model.freeze_encoder", "false"]) == 0
    assert main(["train-detector", "--config", config, *sources, "--out", str(faces / "det"),
                 "--pretrained", str(faces / "pre" / "model.safetensors")]) == 0
    run = yaml.safe_load((faces / "det" / "config.yaml").read_text())
    assert run["model"]["domains"] == ["colour", "blur"] and run["data"]["labelled"] is True
    assert yaml.safe_load((faces / "pre" / "config.yaml").read_text())["data"]["labelled"] is False
    assert (faces / "det" / "model.safetensors").is_file()

    scores = faces / "scores.csv"
    fakes = data / "colour" / "test" / "fake"
    assert main(["detect", "--run", str(faces / "det"), "--input", str(fakes), "--out", str(scores),
                 "--frames-per-video", "2"]) == 0
    rows = list(csv.DictReader(scores.open()))
    videos = sorted(p.name for p in fakes.iterdir())
    assert sorted({r["video"] for r in rows}) == videos and len(rows) == 2 * len(videos)
    for name in videos:
        mine = [float(r["score"]) for r in rows if r["video"] == name]
        assert all(0 <= s <= 1 for s in mine)
        assert float(next(r["video_score"] for r in rows if r["video"] == name)) == pytest.approx(
            sum(mine) / len(mine), abs=1e-5)

    capsys.readouterr()
    assert main(["evaluate", "--run", str(faces / "det"), "--data", str(data), "--task", "faces-synthetic",
                 "--steps", "2", "--batch-size", "8", "--frames-per-video", "1", "--compare-random-init"]) == 0
    results = json.loads((faces / "det" / "metrics.json").read_text())["results"]
    assert {r["init"] for r in results} == {"pretrained", "random"}
    assert all(r["task"] == "faces-synthetic" and r["metric"] == "video_auc" and 0 <= r["value"] <= 100
               and r["details"]["num_videos"] > 0 for r in results)
    assert "faces-synthetic" in capsys.readouterr().out


def test_the_recipe_is_read_by_the_commands_parser(faces, capsys):
    assert main(["recipes"]) == 0
    listed = dict(line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.strip())
    assert listed == {"gm_df": "train-detector", "vec2face": "pretrain"}  # each with the command that takes it
    assert main(["recipes", "gm_df"]) == 0
    recipe = faces / "gm_df.yaml"
    recipe.write_text(capsys.readouterr().out)
    assert main(["train-detector", "--config", str(recipe), "--print_config"]) == 0  # every key is one it takes
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["mask_ratio"] == 0.5 and printed["model"]["encoder"]["embed_dim"] == 768


def test_errors_are_one_line_naming_the_path_or_source(faces, capsys):
    assert main(["detect", "--run", str(faces / "det"), "--input", str(faces / "nowhere")]) == 2
    error = capsys.readouterr().err.strip()
    assert "nowhere does not exist" in error and len(error.splitlines()) == 1
    assert main(["train-detector", "--config", str(faces / "tiny.yaml"), "--sources", "bogus:/x",
                 "--out", str(faces / "bad")]) == 2
    error = capsys.readouterr().err.strip()
    assert "bogus:/x" in error and len(error.splitlines()) == 1
    assert main(["train-detector", "--config", str(faces / "tiny.yaml"), "--sources",
                 f"folder:{faces / 'missing'}", "--out", str(faces / "bad2")]) == 2
    assert "missing does not exist" in capsys.readouterr().err



def _forgery_differences(root) -> dict:
    """Per forgery kind, the mean absolute pixel difference between each fake frame and the real frame of the same
    face (a fake frame moves as its real one, so the difference is the forgery's alone)."""
    import numpy as np
    from PIL import Image

    differences = {}
    for fake in sorted(root.glob("*/*/fake/*/frame_*.png")):
        real = fake.parents[2] / "real" / fake.parent.name / fake.name
        with Image.open(fake) as a, Image.open(real) as b:
            kind = fake.relative_to(root).parts[0]
            differences.setdefault(kind, []).append(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())
    return {kind: float(np.mean(values)) for kind, values in differences.items()}


def test_synthetic_strength_flag_reaches_the_forgeries(tmp_path):
    common = ["synthetic", "--count", "4", "--frames", "1", "--size", "32", "--kind", "colour", "swap", "blur", "noise"]
    measured = {}
    for strength in (1, 3):
        out = tmp_path / f"s{strength}"
        assert main([*common, "--out", str(out), "--strength", str(strength)]) == 0
        assert json.loads((out / "synthetic.json").read_text())["strength"] == strength
        measured[strength] = _forgery_differences(out)
    assert set(measured[1]) == {"colour", "swap", "blur", "noise"}
    for kind in measured[1]:  # a stronger forgery departs further from its real face, in every kind
        assert measured[3][kind] > measured[1][kind] > 0, (kind, measured)
    # the real frames are the same at both strengths: the flag changes the forgeries only
    for real in (tmp_path / "s1").glob("*/*/real/*/frame_*.png"):
        assert real.read_bytes() == (tmp_path / "s3" / real.relative_to(tmp_path / "s1")).read_bytes()


def test_synthetic_strength_must_be_positive(tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path / "x"), "--count", "2", "--strength", "0"]) != 0
    assert "--strength" in capsys.readouterr().err
