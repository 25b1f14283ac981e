"""The Python API is the command line's: mimkit.pretrain / finetune / evaluate / embed, same names and defaults."""
import inspect
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import mimkit
from mimkit.core.cli import build_tool, main
from mimkit.core.finetune import FineTuneConfig, load_finetuned
from mimkit.core.train import TrainConfig

TINY = {"encoder": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}
TINY_FLAGS = ["--img-size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
              "--set", "decoder_embed_dim=32", "--set", "decoder_depth=1", "--set", "decoder_num_heads=2"]


def test_the_commands_are_derived_from_the_api_functions():
    tool = build_tool()
    for name in ("pretrain", "finetune", "evaluate", "embed"):
        function = getattr(mimkit, name)
        assert tool.commands[name].function is function
        parser = tool.parser(tool.commands[name], [])
        dests = {action.dest.split(".")[0] for action in parser._actions}
        assert set(inspect.signature(function).parameters) <= dests


def test_api_pretrain_equals_the_command(tmp_path, image_folder):
    train = TrainConfig(max_steps=3, batch_size=4, num_workers=0, progress=False, accelerator="cpu")
    summary = mimkit.pretrain(data=str(image_folder), out=str(tmp_path / "api"), model=TINY, train=train)
    assert summary["steps"] == 3
    assert main(["pretrain", "--data", str(image_folder), "--out", str(tmp_path / "cli"), *TINY_FLAGS,
                 "--max-steps", "3", "--batch-size", "4", "--num-workers", "0", "--no-progress",
                 "--accelerator", "cpu"]) == 0
    a, b = load_file(tmp_path / "api" / "model.safetensors"), load_file(tmp_path / "cli" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the API run's config.yaml re-runs from the command line
    assert main(["pretrain", "--config", str(tmp_path / "api" / "config.yaml"), "--out", str(tmp_path / "again")]) == 0
    c = load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_pngs_module):
    root = tmp_path_factory.mktemp("api")
    make_pngs_module(root / "train", 30, classes=3, seed=1)
    make_pngs_module(root / "test", 15, classes=3, seed=2)
    train = TrainConfig(max_steps=2, batch_size=4, num_workers=0, progress=False, accelerator="cpu")
    mimkit.pretrain(data=str(root / "train"), out=str(root / "run"), model=TINY, train=train)
    return root


def test_finetune_writes_encoder_and_head_and_resumes(tiny_run, tmp_path):
    settings = FineTuneConfig(max_steps=6, batch_size=8, checkpoint_every=3, progress=False, accelerator="cpu",
                              drop_path=0.0)
    row = mimkit.finetune(train=str(tiny_run / "train"), test=str(tiny_run / "test"), out=str(tmp_path / "ft"),
                          run=str(tiny_run / "run"), finetune=settings)
    assert row["metric"] == "accuracy" and 0 <= row["value"] <= 100 and row["num_test"] == 15
    assert row["num_train"] + row["num_val"] == 30  # a seeded validation split picks the best checkpoint
    model, config = load_finetuned(tmp_path / "ft" / "model.safetensors")
    assert config["num_outputs"] == 3 and model.head.head_name == "linear"
    stored = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert stored["finetune"]["max_steps"] == 6 and stored["head"] == "linear"
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["results"][0]["value"] == row["value"]
    # a second fine-tuning into the same folder is refused; resume is the way to continue
    with pytest.raises(mimkit.core.errors.ConfigError):
        mimkit.finetune(train=str(tiny_run / "train"), out=str(tmp_path / "ft"), run=str(tiny_run / "run"),
                        finetune=settings)


def test_embed_parquet_holds_file_names_and_the_safetensors_embeddings(tiny_run, tmp_path):
    import pyarrow.parquet as pq
    from safetensors import safe_open

    data = tiny_run / "test"
    mimkit.embed(run=str(tiny_run / "run"), data=str(data), out=str(tmp_path / "e.parquet"))
    mimkit.embed(run=str(tiny_run / "run"), data=str(data), out=str(tmp_path / "e.safetensors"))
    table = pq.read_table(tmp_path / "e.parquet").to_pydict()
    with safe_open(str(tmp_path / "e.safetensors"), "pt") as f:
        embeddings, files = f.get_tensor("embeddings"), json.loads(f.metadata()["files"])
    assert table["file"] == files and len(files) == 15 and files[0].startswith("0/")
    assert torch.allclose(torch.tensor(table["embedding"]), embeddings)
