"""The speed benchmark's peers: lightly's MAE at the same architecture as mimkit's, and a peer that cannot be
built here gets a row of n/a with the reason (no timing assertions)."""
import builtins

import pytest
import torch

from mimkit.benchmarks import speed

TINY = speed.Architecture(img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=3,
                          decoder_dim=32, decoder_depth=1, decoder_heads=2)
ARGS = ["--img-size", "32", "--patch-size", "8", "--embed-dim", "48", "--depth", "2", "--num-heads", "3",
        "--decoder-dim", "32", "--decoder-depth", "1", "--decoder-heads", "2", "--batch-size", "2", "--steps", "1",
        "--repeats", "1", "--warmup", "1", "--precision", "fp32", "--no-memory", "--matmul-size", "64",
        "--device", "cpu"]


def test_lightly_mae_has_mimkits_architecture_and_trains():
    pytest.importorskip("lightly")
    torch.manual_seed(0)
    images = speed._input_batch(TINY, 2, torch.device("cpu"))
    lightly, mimkit = speed.build_runner("lightly", TINY), speed.build_runner("mimkit", TINY)
    flops, unused = speed.step_flops(lightly, images)
    # the same weights but one: lightly's encoder holds a mask token that MAE's encoder never uses
    assert speed.trainable_parameters(lightly) - unused == speed.trainable_parameters(mimkit)
    assert unused == TINY.embed_dim
    # its encoder sees the kept tokens only, but timm's patch embedding embeds every patch first (as the
    # reference does) and its decoder predicts the masked tokens only (the reference predicts all)
    assert speed.step_flops(mimkit, images)[0] < flops < speed.step_flops(speed.build_runner("reference", TINY),
                                                                           images)[0]
    optimizer = speed.make_optimizer(lightly)
    losses = [float(speed.train_step(lightly, optimizer, images, "fp32")) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_a_peer_that_cannot_be_built_gets_a_row_saying_why(monkeypatch):
    real_import = builtins.__import__

    def no_lightly(name, *args, **kwargs):
        if name.startswith("lightly"):
            raise ImportError("No module named 'lightly'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lightly)
    rows, notes = speed.run(speed.parse_args(ARGS + ["--models", "mimkit", "lightly", "--plain-adamw"]))
    by_model = {row["model"]: row for row in rows}
    assert by_model[speed.MODELS["lightly"]]["images_per_s"] is None
    assert by_model[speed.MODELS["mimkit"]]["images_per_s"] > 0
    assert any("could not be built here" in note and "lightly==1.6" in note for note in notes)
    assert any("for-loop AdamW" in note for note in notes)


def test_profile_splits_a_step_by_kind_of_operation():
    torch.manual_seed(0)
    model = speed.build_runner("mimkit", TINY)
    kinds = speed.profile_step(model, speed.make_optimizer(model), speed._input_batch(TINY, 2, torch.device("cpu")),
                               "fp32")
    assert set(kinds) == {kind for kind, _ in speed.PROFILE_KINDS}
    assert kinds["matmul"] > 0 and kinds["attention kernels"] > 0 and kinds["optimizer"] > 0
    table = speed.profile_models(speed.parse_args(ARGS + ["--models", "mimkit", "reference"]))
    assert "mimkit MAE, fp32" in table and "plain PyTorch reference, fp32" in table
    assert table.count("\n| ") == len(speed.PROFILE_KINDS) + 1
