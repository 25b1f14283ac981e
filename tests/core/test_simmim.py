"""SimMIM: the encoder sees every position (mask token inside), coarse-grid masks, L1 on masked pixels only."""
import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.errors import ConfigError
from mimkit.core.registry import method_arguments

TINY = dict(img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, mask_patch_size=8,
            drop_path_rate=0.0)


def test_registered_with_paper_defaults():
    assert "simmim" in list_methods()
    args = method_arguments("simmim")
    assert args["mask_ratio"] == 0.6 and args["mask_patch_size"] == 32 and args["encoder.patch_size"] == 16
    assert args["encoder.drop_path_rate"] == 0.1
    with pytest.raises(ConfigError, match="mask_patch_size"):
        build_method("simmim", **{**TINY, "mask_patch_size": 6})


def test_encoder_sees_all_patches_and_masked_ones_are_the_mask_token():
    torch.manual_seed(0)
    model = build_method("simmim", **TINY)
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    images = torch.randn(3, 1, 32, 32)
    out = model({"image": images})
    assert seen[0].shape == (3, 1 + 64, 32)  # class token + every one of the 8x8 patches
    # masked positions hold mask token + position only: they are identical across images
    positions = model.encoder.positions(model.encoder.grid)[0]
    tokens = seen[0][:, 1:] - positions
    masked = out.mask.bool()
    assert torch.allclose(tokens[masked], model.mask_token.detach()[0, 0].expand(int(masked.sum()), -1), atol=1e-6)
    assert not torch.allclose(tokens[~masked][0], model.mask_token.detach()[0, 0])
    # 60% of the 2x2 coarse mask units (16 of them): ceil(9.6) = 10 units (SimMIM's count) = 40 of 64 tokens, in 2x2 blocks
    assert out.mask.sum(1).tolist() == [40.0] * 3
    blocks = out.mask.reshape(3, 4, 2, 4, 2)
    assert torch.all(blocks.amax((2, 4)) == blocks.amin((2, 4)))


def test_loss_is_l1_over_masked_pixels_only():
    torch.manual_seed(0)
    model = build_method("simmim", **TINY)
    images = torch.randn(2, 1, 32, 32)
    out = model({"image": images})
    assert out.pred.shape == (2, 64, 16) and set(out.parts) == {"reconstruction"}
    grad = torch.autograd.grad(out.loss, out.pred)[0]
    assert torch.all(grad[out.mask == 0] == 0) and torch.all(grad[out.mask == 1].abs().sum(-1) > 0)
    # the value: mean absolute error over the masked pixels (raw, not per-patch normalised)
    error = (model.reconstruct({"image": images}, out) - images).abs()
    pixel_mask = out.mask.reshape(2, 1, 8, 1, 8, 1).expand(2, 1, 8, 4, 8, 4).reshape(2, 1, 32, 32)
    assert torch.allclose(out.loss, error[pixel_mask == 1].mean(), atol=1e-5)


def test_3d_volumes():
    model = build_method("simmim", **{**TINY, "img_size": 16, "spatial_dims": 3})
    vol = torch.randn(2, 1, 16, 16, 16)
    out = model({"image": vol})
    assert out.pred.shape == (2, 64, 64) and model.reconstruct({"image": vol}, out).shape == vol.shape
    blocks = out.mask.reshape(2, 2, 2, 2, 2, 2, 2)  # 2x2x2 coarse units of 2x2x2 tokens
    assert torch.all(blocks.amax((2, 4, 6)) == blocks.amin((2, 4, 6)))


def test_loss_falls_on_fixed_data(fixed_batch_training):
    torch.manual_seed(0)
    model = build_method("simmim", **{**TINY, "patch_size": 8, "mask_patch_size": 16})
    images = torch.rand(8, 1, 32, 32)
    run = fixed_batch_training(model, {"image": images}, steps=30)
    assert run.last(5) < 0.6 * run.first(5)
