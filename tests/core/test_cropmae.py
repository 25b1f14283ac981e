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
    # 64 tokens: the global view whole, the local view at 98.5% -> round(63.04) = 63 hidden, 1 visible
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
    run = fixed_batch_training(cropmae, {"image": images}, steps=40)
    assert run.last(5) < 0.7 * run.first(5)
