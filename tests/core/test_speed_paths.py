"""The speed paths of issue 15 give the same results as the plain forms they replace: patchify through
channels-last, HOG histograms in one scatter, SelectiveMAE's targets for its reconstructed tokens only, fused
AdamW; bf16 is chosen only where the CPU has it natively; kNN and the linear probe share one encoding."""
import inspect
import math

import pytest
import torch

from mimkit.core import build_method
from mimkit.core import evaluate as evaluation
from mimkit.core import train as training
from mimkit.core.encoders import ViTEncoder
from mimkit.core.targets import HOGTarget, PixelTarget, masked_mse, valid_values
from mimkit.core.tokens import patchify


def plain_patchify(images, patch):
    """The definition: (B, C, g0, p0, g1, p1, ...) -> (B, g0 g1 ..., p0 p1 ... C)."""
    batch, chans, *spatial = images.shape
    grid = [s // patch for s in spatial]
    split = [batch, chans] + [n for g in grid for n in (g, patch)]
    dims = len(spatial)
    x = images.reshape(split).permute(0, *[2 + 2 * i for i in range(dims)], *[3 + 2 * i for i in range(dims)], 1)
    return x.reshape(batch, math.prod(grid), patch ** dims * chans)


@pytest.mark.parametrize("shape", [(2, 3, 16, 24), (2, 1, 16, 16), (1, 2, 8, 8, 16)])
def test_patchify_equals_its_definition_for_any_memory_layout(shape):
    x = torch.randn(shape)
    assert torch.equal(patchify(x, 4), plain_patchify(x, 4))
    if x.ndim == 4:
        assert torch.equal(patchify(x.contiguous(memory_format=torch.channels_last), 4), plain_patchify(x, 4))


def loop_histograms(images, orientations, cell):
    """HOG cell histograms from the definition, one cell and one bin at a time."""
    x = images.double()
    g_row, g_col = torch.zeros_like(x), torch.zeros_like(x)
    g_row[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    g_col[:, :, :, 1:-1] = x[:, :, :, 2:] - x[:, :, :, :-2]
    magnitude = torch.hypot(g_row, g_col)
    angle = torch.rad2deg(torch.atan2(g_row, g_col)) % 180
    bins = (angle // (180 / orientations)).clamp(0, orientations - 1)
    rows, cols = x.shape[2] // cell, x.shape[3] // cell
    out = torch.zeros(*x.shape[:2], rows, cols, orientations, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            m = magnitude[:, :, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
            b = bins[:, :, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
            for o in range(orientations):
                out[:, :, r, c, o] = (m * (b == o)).sum((2, 3)) / cell ** 2
    return out


def test_hog_histograms_in_one_pass_equal_the_per_cell_per_bin_sums():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 20, 28)  # not a multiple of the cell: the border pixels are left out
    images[:, :, 5:9] = 0.5            # flat rows: zero gradients fall in bin 0 with no weight
    fast = HOGTarget(4, orientations=9, cell_size=4, normalize="none").cell_histograms(images)
    assert fast.shape == (2, 3, 5, 7, 9)
    assert torch.allclose(fast.double(), loop_histograms(images, 9, 4), atol=1e-5)
    doubled = HOGTarget(4, orientations=6, cell_size=4, normalize="none").cell_histograms(images.double())
    assert doubled.dtype == torch.float64 and torch.allclose(doubled, loop_histograms(images, 6, 4), atol=1e-12)


def test_pixel_target_of_selected_tokens_is_the_gathered_full_target():
    images = torch.randn(2, 3, 16, 16)
    ids = torch.tensor([[0, 5, 15], [3, 4, 9]])
    for normalize in (True, False):
        target = PixelTarget(4, normalize=normalize)
        full = target(images)
        assert torch.equal(target(images, ids), torch.gather(full, 1, ids[..., None].expand(-1, -1, 48)))


def test_selective_mae_loss_on_its_targets_equals_the_loss_over_all_tokens_with_its_mask():
    torch.manual_seed(0)
    model = build_method("selective_mae", img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4,
                         decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :6, :10] = False           # nodata: some tokens partly, two wholly
    batch = {"image": torch.randn(2, 3, 32, 32), "valid": valid}
    masks = []
    masker = model.masker
    model.masker = lambda *a, **k: masks.append(masker(*a, **k)) or masks[-1]
    out = model(batch)
    # the loss as written before: every token's normalised target, the reconstructed ones weighted 1
    expected = masked_mse(out.pred, model.target(batch["image"]), masks[0].target,
                          valid_values(batch, batch["image"], 4))
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert out.pred.shape == (2, 64, 48) and torch.all(out.pred[masks[0].target == 0] == 0)


def fake_cpu(monkeypatch, capability, flags):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    text = f"processor\t: 0\nflags\t\t: {flags}\n"
    real = training.Path.read_text
    monkeypatch.setattr(training.Path, "read_text",
                        lambda self, *a, **k: text if str(self) == "/proc/cpuinfo" else real(self, *a, **k))


@pytest.mark.parametrize("capability, flags, native", [
    ("AVX2", "fpu sse avx avx2 fma", False),                           # this project's AMD EPYC (Zen 3)
    ("AVX512", "avx2 avx512f avx512bw avx512vl", False),               # AVX-512 without its bf16 extension
    ("AVX512", "avx2 avx512f avx512bw avx512vl avx512_bf16", True),    # Zen 4, Cooper Lake
    ("AVX512", "avx512f amx_tile amx_bf16", True),                     # Sapphire Rapids
    ("AMX", "avx512f", True),
])
def test_bf16_is_chosen_only_where_the_cpu_has_it_natively(monkeypatch, capability, flags, native):
    fake_cpu(monkeypatch, capability, flags)
    assert training.native_bf16("cpu") is native
    assert training.auto_precision("auto", "cpu") == ("bf16-mixed" if native else "32")
    assert training.auto_precision("32", "cpu") == "32"                 # asked for: kept
    assert training.auto_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert training.TrainConfig(precision="auto", accelerator="cpu").precision == ("bf16-mixed" if native else "32")


def test_the_demo_picks_its_precision_unless_told():
    from mimkit.core.demo import run_demo
    assert inspect.signature(run_demo).parameters["precision"].default == "auto"


def test_fused_adamw_takes_the_same_steps_as_the_plain_one():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    plain = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    plain.load_state_dict(model.state_dict())
    fused = training.adamw(training.parameter_groups(model, 0.05), 1e-2, (0.9, 0.95))
    reference = torch.optim.AdamW(training.parameter_groups(plain, 0.05), lr=1e-2, betas=(0.9, 0.95), foreach=False)
    assert fused.defaults["fused"] is True
    x = torch.randn(32, 8)
    for _ in range(5):
        for net, optimizer in ((model, fused), (plain, reference)):
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(model[0].weight, torch.nn.Linear(8, 16).weight)


def test_knn_and_linear_probe_encode_each_split_once_per_encoder(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(3, 16, 16, generator=generator), "label": i % 2} for i in range(16)]
    train, test = data[:10], data[10:]
    encoders = {name: ViTEncoder(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
                for name in ("pretrained", "random")}
    calls = []
    real = evaluation.extract_features
    monkeypatch.setattr(evaluation, "extract_features", lambda *a, **k: calls.append(a[:2]) or real(*a, **k))
    rows = evaluation.evaluate_encoders(encoders, ["knn", "linear"], train, test,
                                        {"knn": {"k": 3}, "linear": {"epochs": 2, "batch_size": 8}})
    assert {(row["protocol"], row["init"]) for row in rows} == {(p, i) for p in ("knn", "linear") for i in encoders}
    assert len(calls) == 4  # (train, test) x 2 encoders; without the cache the linear probe encoded them again
    assert {(id(e), id(d)) for e, d in calls} == {(id(e), id(d)) for e in encoders.values() for d in (train, test)}


@pytest.mark.parametrize("mask", [None, "bool", "additive"])
def test_cross_attention_written_out_equals_fused_and_follows_the_switch(mask):
    from mimkit.core.decoders import CrossAttentionBlock
    from mimkit.core.encoders import set_fused_attention

    torch.manual_seed(0)
    block = CrossAttentionBlock(32, 4, context_dim=24, self_attention=True)
    queries, context = torch.randn(2, 5, 32), torch.randn(2, 7, 24)
    allowed = torch.rand(2, 1, 5, 7) > 0.3
    allowed[..., 0] = True  # every query may attend to something
    attn_mask = {None: None, "bool": allowed, "additive": torch.randn(2, 1, 5, 7)}[mask]
    fused = block(queries, context, attn_mask=attn_mask)
    set_fused_attention(block, "cpu", bf16=True)  # written out on the CPU in bf16, as timm's blocks
    assert block.cross_attn.fused_attn is False and block.self_attn.fused_attn is False
    written = block(queries, context, attn_mask=attn_mask)
    assert torch.allclose(fused, written, atol=1e-5)
    if mask == "bool":  # the mask matters: without it the output differs
        assert not torch.allclose(written, block(queries, context), atol=1e-3)
