"""The speed benchmark's models: the plain-PyTorch reference MAE, same-architecture checks, the table.

No timing assertions: speed is measured by running `python -m mimkit.benchmarks.speed`, not by tests.
"""
import csv
import math
import subprocess
import sys

import pytest
import torch

from mimkit.benchmarks import speed
from mimkit.benchmarks.reference_mae import ReferenceMAE

TINY = speed.Architecture(img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=3,
                          decoder_dim=32, decoder_depth=1, decoder_heads=2)


def _reference(**overrides):
    config = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, decoder_dim=32, decoder_depth=1,
                  decoder_heads=2)
    return ReferenceMAE(**{**config, **overrides})


def test_reference_loss_is_finite_and_trainable():
    torch.manual_seed(0)
    model = _reference()
    loss = model(torch.randn(4, 3, 32, 32))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_reference_encoder_sees_only_visible_tokens():
    model = _reference(mask_ratio=0.75)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    model.decoder_blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    model(torch.randn(2, 3, 32, 32))
    # 16 patches, 25% kept: 4 visible + the class token in the encoder; all 16 + class token in the decoder.
    assert seen == [(2, 5, 48), (2, 17, 32)]


def test_reference_masking_and_patch_order():
    model = _reference(mask_ratio=0.75)
    ids_keep, ids_restore, mask = model.random_masking(3, torch.device("cpu"))
    assert (mask.sum(1) == 12).all()
    assert (torch.gather(mask, 1, ids_keep) == 0).all()  # kept tokens are exactly the unmasked ones
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    patches = model.patchify(images)
    # token 1 is row 0, column 1 of the 4x4 grid; its pixels are (row, column, channel) in order
    assert torch.equal(patches[:, 1], images[:, :, 0:8, 8:16].permute(0, 2, 3, 1).reshape(2, -1))


def test_reference_3d_volumes():
    model = _reference(img_size=16, in_chans=1, spatial_dims=3, embed_dim=48, decoder_dim=36)
    assert model.num_patches == 8
    loss = model(torch.randn(2, 1, 16, 16, 16))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("arch", [TINY, speed.Architecture(img_size=16, patch_size=8, in_chans=1, spatial_dims=3,
                                                           embed_dim=48, depth=2, num_heads=3, decoder_dim=36,
                                                           decoder_depth=1, decoder_heads=2)],
                         ids=["2d", "3d"])
def test_the_three_models_share_one_architecture(arch):
    torch.manual_seed(0)
    images = speed._input_batch(arch, 2, torch.device("cpu"))
    runners = {name: speed.build_runner(name, arch) for name in speed.DEFAULT_MODELS}
    params = {name: speed.trainable_parameters(model) for name, model in runners.items()}
    counted = {name: speed.step_flops(model, images) for name, model in runners.items()}
    assert params["mimkit"] == params["reference"]
    # MONAI's blocks create a LayerNorm for cross-attention that is never used; the rest is the same.
    assert params["monai"] - counted["monai"][1] == params["mimkit"]
    assert counted["mimkit"][1] == counted["reference"][1] == 0
    flops = {name: count[0] for name, count in counted.items()}
    assert flops["mimkit"] > 0 and flops["monai"] == flops["reference"]
    # mimkit embeds the visible patches only: the masked patches' embedding (forward and weight gradient,
    # 2 x 2 x rows x patch pixels x width) is the whole difference
    tokens = math.prod(arch.img_size // arch.patch_size for _ in range(arch.spatial_dims))
    masked = round(arch.mask_ratio * tokens)
    patch_pixels = arch.patch_size ** arch.spatial_dims * arch.in_chans
    assert flops["reference"] - flops["mimkit"] == 4 * images.shape[0] * masked * patch_pixels * arch.embed_dim


def test_fused_attention_is_counted_like_written_out_attention():
    query = torch.randn(2, 3, 10, 8, requires_grad=True)
    written = speed.step_flops_of(lambda: ((query @ query.transpose(-2, -1)).softmax(-1) @ query).sum())
    fused = speed.step_flops_of(lambda: torch.nn.functional.scaled_dot_product_attention(query, query, query).sum())
    assert fused == written > 0


def test_peak_rss_sees_a_large_allocation():
    # a fresh process, as the benchmark's probes use: a test worker's peak may already be above what it holds now
    probe = ("import torch; from mimkit.benchmarks import speed; before = speed.peak_rss_kib(); "
             "block = torch.ones(16 * 2 ** 20); print(speed.peak_rss_kib() - before)")  # 64 MiB, written: resident
    rise = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert rise >= 48 * 1024


def test_benchmark_table_rows_and_files(tmp_path):
    args = speed.parse_args(["--img-size", "32", "--patch-size", "8", "--embed-dim", "48", "--depth", "2",
                             "--num-heads", "3", "--decoder-dim", "32", "--decoder-depth", "1",
                             "--decoder-heads", "2", "--batch-size", "2", "--steps", "1",
                             "--repeats", "2", "--warmup", "1", "--precision", "fp32", "--no-memory",
                             "--matmul-size", "64", "--device", "cpu", "--out", str(tmp_path)])
    rows, notes = speed.run(args)
    assert [r["model"] for r in rows] == [speed.MODELS[name] for name in speed.DEFAULT_MODELS]
    assert all(r["images_per_s"] > 0 and torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # MONAI and the reference embed every patch; mimkit only the visible ones
    flops = {r["model"]: r["gflop_per_step"] for r in rows}
    assert flops[speed.MODELS["monai"]] == flops[speed.MODELS["reference"]] >= flops[speed.MODELS["mimkit"]]
    assert any("trainable parameters" in n for n in notes)
    assert any("encoder 48 x 2 (3 heads), decoder 32 x 1 (2 heads)" in n for n in notes)
    md_path, csv_path = speed.write_tables(rows, notes, tmp_path)
    with csv_path.open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["model"] for r in table] == [r["model"] for r in rows]
    assert float(table[0]["params_M"]) == pytest.approx(rows[0]["params_M"])
    assert md_path.read_text().count("| fp32 |") == 3


def test_the_compiled_row_compiles_every_block_as_training_does():
    """The `compiled` row is mimkit's MAE with `compile_blocks` (what `--compile` does): every timm block of encoder
    and decoder is compiled, not the method's forward, and the weight names stay plain."""
    compiled = speed._RUNNERS["compiled"](TINY)
    blocks = list(compiled.model.encoder.blocks) + list(compiled.model.decoder.blocks)
    assert blocks and all(hasattr(block.forward, "_torchdynamo_orig_callable") for block in blocks)
    assert not hasattr(compiled.model.forward, "_torchdynamo_orig_callable")
    plain = speed._RUNNERS["mimkit"](TINY)
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())  # plain weight names
