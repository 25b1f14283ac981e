"""MAE: registry, paper defaults, masked-only loss, 2D/3D shapes, loss falls."""
import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.errors import ConfigError
from mimkit.core.registry import method_arguments

TINY = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def test_registry_lists_and_builds_mae():
    assert "mae" in list_methods()
    args = method_arguments("mae")
    # the MAE paper's code names and defaults: a ViT-L/16 encoder
    for name in ("encoder.img_size", "encoder.patch_size", "encoder.in_chans", "encoder.embed_dim", "encoder.depth",
                 "encoder.num_heads", "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "mask_ratio",
                 "norm_pix_loss"):
        assert name in args
    assert (args["encoder.embed_dim"], args["encoder.depth"], args["encoder.num_heads"]) == (1024, 24, 16)
    assert args["mask_ratio"] == 0.75 and args["decoder_embed_dim"] == 512
    assert args["decoder_depth"] == 8 and args["decoder_num_heads"] == 16
    with pytest.raises(ConfigError, match="no argument"):
        build_method("mae", mask_ratioo=0.5)
    with pytest.raises(ConfigError, match="unknown method"):
        build_method("maee")


def test_mae_output_and_loss_on_masked_patches_only():
    torch.manual_seed(0)
    mae = build_method("mae", **TINY)
    images = torch.randn(3, 1, 32, 32)
    out = mae({"image": images})
    assert out.pred.shape == (3, 16, 64) and out.mask.shape == (3, 16)
    assert torch.all(out.mask.sum(1) == 12) and set(out.parts) == {"reconstruction"}
    # gradient reaches only the predictions of masked tokens
    pred_grad = torch.autograd.grad(out.loss, out.pred)[0]
    assert torch.all(pred_grad[out.mask == 0] == 0) and torch.all(pred_grad[out.mask == 1].abs().sum(-1) > 0)


def test_mae_3d_shapes_and_reconstruction():
    mae = build_method("mae", **{**TINY, "img_size": 16, "spatial_dims": 3})
    vol = torch.randn(2, 1, 16, 16, 16)
    out = mae({"image": vol})
    assert out.pred.shape == (2, 8, 512) and out.mask.sum(1).tolist() == [6.0, 6.0]
    assert mae.reconstruct({"image": vol}, out).shape == vol.shape


def test_mae_loss_falls_on_fixed_data(fixed_batch_training):
    torch.manual_seed(0)
    mae = build_method("mae", **TINY)
    images = torch.rand(8, 1, 32, 32)
    run = fixed_batch_training(mae, {"image": images}, steps=40)
    assert run.last(5) < 0.7 * run.first(5)


def test_nodata_pixels_do_not_count_in_the_loss():
    # batch["valid"] (remote-sensing tiles; the loader fills nodata with the mean, 0 once normalised): the loss is
    # the mean squared error over the valid values of the masked patches only
    from mimkit.core.tokens import patchify

    torch.manual_seed(0)
    model = build_method("mae", **TINY)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :, :20] = False  # the left part of every image is nodata (partly covering some patches)
    images = torch.randn(2, 1, 32, 32) * valid[:, None]
    torch.manual_seed(1)
    out = model({"image": images, "valid": valid})
    error = (out.pred - model.target(images)) ** 2
    weight = patchify(valid[:, None].float(), 8) * out.mask[..., None]
    assert torch.allclose(out.loss, (error * weight).sum(-1).div(weight.sum(-1).clamp_min(1)).sum()
                          / (weight.sum(-1) > 0).sum(), atol=1e-5)
    torch.manual_seed(1)
    assert not torch.allclose(model({"image": images}).loss, out.loss)  # without the mask nodata would count
