"""CropMAE: the local crop lies inside the global one, the masked view keeps a handful of tokens, loss falls."""
import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.errors import ConfigError
from mimkit.core.registry import method_arguments

TINY = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=2)


def test_registered_with_paper_defaults():
    assert "cropmae" in list_methods()
    args = method_arguments("cropmae")
    assert args["mask_ratio"] == 0.985 and args["global_scale"] == (0.2, 1.0)
    with pytest.raises(ConfigError, match="local_scale"):
        build_method("cropmae", **TINY, local_scale=(0.5, 1.5))


def test_local_crop_lies_inside_the_global_crop():
    torch.manual_seed(0)
    cropmae = build_method("cropmae", **TINY)
    outer, inner = cropmae.crop_boxes(500, 48, 64)
    assert torch.all(outer[:, :2] >= 0) and torch.all(outer[:, 2] <= 64) and torch.all(outer[:, 3] <= 48)
    assert torch.all(inner[:, :2] >= outer[:, :2]) and torch.all(inner[:, 2:] <= outer[:, 2:])
    # crops are proper random-resized crops: area fractions spread over the configured range
    outer_area = (outer[:, 2] - outer[:, 0]) * (outer[:, 3] - outer[:, 1]) / (48 * 64)
    inner_area = (inner[:, 2] - inner[:, 0]) * (inner[:, 3] - inner[:, 1])
    relative = inner_area / ((outer[:, 2] - outer[:, 0]) * (outer[:, 3] - outer[:, 1]))
    assert outer_area.min() < 0.3 and outer_area.max() > 0.9 and relative.min() < 0.3
    assert torch.all(outer_area > 0.2 - 1e-4) and torch.all(relative <= 1 + 1e-4)


def test_views_show_the_pixels_of_their_boxes():
    # an image whose channels hold each pixel's x and y coordinate: a view's values say where it came from
    torch.manual_seed(1)
    cropmae = build_method("cropmae", **{**TINY, "in_chans": 2}, flip_prob=0.0)
    ys, xs = torch.meshgrid(torch.arange(48.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
    image = torch.stack([xs, ys]).unsqueeze(0).repeat(4, 1, 1, 1)
    torch.manual_seed(2)
    outer, inner = cropmae.crop_boxes(4, 48, 64)
    torch.manual_seed(2)
    global_view, local_view = cropmae.views(image)
    assert global_view.shape == local_view.shape == (4, 2, 32, 32)
    for view, boxes in ((global_view, outer), (local_view, inner)):
        for b in range(4):
            x, y = view[b, 0], view[b, 1]
            assert x.min() >= boxes[b, 0] - 1e-3 and x.max() <= boxes[b, 2] + 1e-3
            assert y.min() >= boxes[b, 1] - 1e-3 and y.max() <= boxes[b, 3] + 1e-3


def test_masked_view_keeps_the_expected_number_of_tokens():
    torch.manual_seed(0)
    cropmae = build_method("cropmae", **TINY)
    seen = []
    cropmae.encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    out = cropmae({"image": torch.rand(3, 3, 40, 40)})
    # 64 tokens: the global view whole, the local view at 98.5% -> int(64 * 0.015) = 0 kept, raised to 1 visible
    assert seen == [(3, 65, 32), (3, 2, 32)]
    assert torch.all(out.mask.sum(1) == 63) and out.pred.shape == (3, 64, 48)
    # pictures show the local view, the one that is predicted
    global_view, local_view = out.views
    assert cropmae.reconstruct({"image": torch.rand(3, 3, 40, 40)}, out).shape == local_view.shape


def test_decoder_depends_on_the_global_view():
    torch.manual_seed(0)
    cropmae = build_method("cropmae", **TINY)
    mask = cropmae.masker(2, 64)
    local_view = torch.rand(2, 3, 32, 32)
    latent = cropmae.encoder.forward_visible(local_view, mask.ids_keep)
    first = cropmae.decode(cropmae.encoder.forward_features(torch.rand(2, 3, 32, 32)), latent, mask.ids_restore)
    second = cropmae.decode(cropmae.encoder.forward_features(torch.rand(2, 3, 32, 32)), latent, mask.ids_restore)
    assert (first - second).abs().mean() > 1e-4


def test_loss_falls_on_fixed_data(fixed_batch_training):
    torch.manual_seed(0)
    cropmae = build_method("cropmae", **{**TINY, "mask_ratio": 0.9})
    images = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8), size=32, mode="bilinear")
    run = fixed_batch_training(cropmae, {"image": images}, steps=80)  # new random views every step
    assert run.last(5) < 0.7 * run.first(5)


def test_official_count_two_visible_patches_of_196():
    # paper and official code: int(196 * (1 - 0.985)) = 2 visible patches (rounding the hidden count gave 3)
    cropmae = build_method("cropmae", img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                           decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    seen = []
    cropmae.encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    cropmae({"image": torch.rand(1, 3, 224, 224)})
    assert seen == [1 + 196, 1 + 2]


def test_official_decoder_block_is_post_norm_cross_ffn_self():
    from mimkit.core.methods.cropmae import CropMAEDecoderBlock

    cropmae = build_method("cropmae", **TINY)
    block = cropmae.decoder_blocks[0]
    assert isinstance(block, CropMAEDecoderBlock)
    assert block.ffn[0].out_features == 2048 and block.cross_attn.dropout == 0.1  # official dim_feedforward, dropout
    order = []
    for name in ("cross_attn", "ffn", "self_attn", "norm_self"):
        getattr(block, name).register_forward_hook(lambda m, a, o, name=name: order.append(name))
    block.eval()
    out = block(torch.randn(2, 5, 32), torch.randn(2, 7, 32))
    assert order == ["cross_attn", "ffn", "self_attn", "norm_self"]
    # post-norm: the block's output is layer-normalised (unit LayerNorm at initialisation)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(out.std(-1, unbiased=False), torch.ones(2, 5), atol=1e-3)
    prenorm = build_method("cropmae", **TINY, decoder_block="prenorm").decoder_blocks[0]
    assert not isinstance(prenorm, CropMAEDecoderBlock)


def test_loader_cuts_the_views_from_the_full_resolution_image(tmp_path):
    import numpy as np
    from PIL import Image

    from mimkit.core.data import ImageFolderData

    # a 1-pixel checkerboard at 128 px: a view cut from the full resolution keeps it, one cut from an image
    # first resized to 32 px would be flat grey
    board = ((np.indices((128, 128)).sum(0) % 2) * 255).astype(np.uint8)
    for i in range(2):
        Image.fromarray(np.stack([board] * 3, -1)).save(tmp_path / f"board_{i}.png")
    model = {"img_size": 32, "patch_size": 4, "global_scale": (1 / 16, 1 / 16), "local_scale": (1.0, 1.0),
             "aspect_ratio": (1.0, 1.0), "flip_prob": 0.0}
    data = ImageFolderData(root=str(tmp_path), mean=[0.5] * 3, std=[0.5] * 3)
    sample = data.build(model, "cropmae")[0]["image"]
    assert sample.shape == (3, 32, 64)  # (global | local) side by side
    global_view, local_view = sample[..., :32], sample[..., 32:]
    assert global_view.std() > 0.9  # the checkerboard at native resolution (values -1 and 1)
    assert torch.allclose(local_view, global_view, atol=1e-5)  # local scale 1: the local view is the global view
    cropmae = build_method("cropmae", **TINY)
    views = cropmae.views(sample[None])
    assert torch.equal(views[0][0], global_view) and torch.equal(views[1][0], local_view)
    # the generic crop and flip are not applied on top of CropMAE's own views
    with pytest.raises(ConfigError, match="crop_scale"):
        ImageFolderData(root=str(tmp_path), crop_scale=(0.5, 1.0)).build(model, "cropmae")
