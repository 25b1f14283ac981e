"""`--compile` (core.distributed.compile_blocks): compiled ViT blocks train to the eager losses, the saved weights keep
their plain names, and config.yaml records the switch. The tests compile with the `aot_eager` backend (dynamo and
AOTAutograd, no code generation): inductor's C++ build of the first step takes ~36 s on this 2-core CPU."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mimkit.core import build_method
from mimkit.core.cli import main
from mimkit.core.distributed import compile_blocks
from mimkit.core.encoders import set_activation_checkpointing
from mimkit.core.errors import ConfigError
from mimkit.core.train import TrainConfig

TINY = ["--img-size", "32", "--patch-size", "8", "--in-chans", "1", "--set", "embed_dim=32", "depth=2",
        "num_heads=2", "decoder_embed_dim=32", "decoder_depth=1", "decoder_num_heads=2"]
TINY_CONFIG = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                   decoder_depth=1, decoder_num_heads=2)


def pretrain_cli(folder, out, *extra):
    assert main(["pretrain", "--data", str(folder), "--out", str(out), *TINY, "--max-steps", "4", "--batch-size", "4",
                 "--num-workers", "0", "--log-every", "1", "--no-progress", "--lr", "1e-3", *extra]) == 0
    return json.loads((out / "metrics.json").read_text())["train"]["history"]


def test_a_compiled_run_matches_the_eager_losses_and_saves_plain_weights(image_folder, tmp_path):
    eager = pretrain_cli(image_folder, tmp_path / "eager")
    compiled = pretrain_cli(image_folder, tmp_path / "compiled", "--compile", "--train.compile_backend", "aot_eager")
    assert [row["step"] for row in compiled] == [row["step"] for row in eager] == [1, 2, 3, 4]
    # the same masks and samples: only the order of floating-point operations may differ
    assert [row["loss"] for row in compiled] == pytest.approx([row["loss"] for row in eager], rel=1e-4, abs=1e-5)
    stored = yaml.safe_load((tmp_path / "compiled" / "config.yaml").read_text())
    assert stored["train"]["compile"] is True and stored["train"]["compile_backend"] == "aot_eager"
    assert yaml.safe_load((tmp_path / "eager" / "config.yaml").read_text())["train"]["compile"] is False
    saved = load_file(tmp_path / "compiled" / "model.safetensors")
    assert not any("_orig_mod" in key for key in saved)
    plain = build_method("mae", **TINY_CONFIG)
    plain.load_state_dict(saved)  # strict: every name of the uncompiled model, nothing else
    reference = load_file(tmp_path / "eager" / "model.safetensors")
    assert max(float((saved[k] - reference[k]).abs().max()) for k in reference) < 1e-4


def test_compiling_keeps_the_blocks_outputs_names_and_checkpointing(astronaut_crops_of):
    batch = {"image": astronaut_crops_of(4, 32)[:, :1]}
    torch.manual_seed(0)
    plain = build_method("mae", **TINY_CONFIG)
    compiled = build_method("mae", **TINY_CONFIG)
    compiled.load_state_dict(plain.state_dict())
    set_activation_checkpointing(compiled, True)
    compile_blocks(compiled, "aot_eager")
    compile_blocks(compiled, "aot_eager")  # a second call leaves the compiled forwards as they are
    block = compiled.encoder.blocks[0]
    assert hasattr(block.forward, "_torchdynamo_orig_callable")
    assert not hasattr(block.forward._torchdynamo_orig_callable, "_torchdynamo_orig_callable")
    assert list(compiled.state_dict()) == list(plain.state_dict())
    losses = []
    for method in (plain, compiled):
        torch.manual_seed(1)
        loss = method(batch).loss
        loss.backward()
        losses.append(float(loss.detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for (name, a), b in zip(plain.named_parameters(), compiled.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        assert a.grad is None or torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


def test_an_unknown_compile_backend_is_refused_by_name():
    with pytest.raises(ConfigError, match="train.compile_backend.*'fastest'"):
        TrainConfig(compile=True, compile_backend="fastest")
    assert TrainConfig(compile_backend="fastest").compile is False  # only checked when compiling
