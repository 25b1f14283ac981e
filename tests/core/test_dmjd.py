"""DMJD: disjoint masks (disjoint / covering), HOG against scikit-image, the two branches, loss falls."""
import itertools
import math

import numpy as np
import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.errors import ConfigError
from mimkit.core.masking import DisjointMasker
from mimkit.core.targets import HOGTarget

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=2)


@pytest.mark.parametrize("views", [2, 3, 4])
@pytest.mark.parametrize("ratio", [0.2, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9])
@pytest.mark.parametrize("unit", [1, 2])
def test_disjoint_masks_are_disjoint_or_covering_as_documented(views, ratio, unit):
    torch.manual_seed(views * 100 + int(ratio * 10) + unit)
    batch, grid = 5, (8, 8)
    masker = DisjointMasker(ratio, views, grid=grid, mask_unit=unit)
    masks = masker(batch, 64)
    hidden = masks.mask.reshape(views, batch, 64).bool()
    units = 64 // unit ** 2
    per_view = masker.num_masked(units, None) * unit ** 2   # hidden tokens per view
    assert torch.all(hidden.sum(-1) == per_view)
    counts = hidden.sum(0)                                   # how many views hide each token
    low, high = (views * per_view) // 64, math.ceil(views * per_view / 64)
    assert torch.all((counts == low) | (counts == high))
    pairs = list(itertools.combinations(range(views), 2))
    if views * per_view <= 64:      # hidden sets pairwise disjoint
        assert all(not (hidden[a] & hidden[b]).any() for a, b in pairs)
    else:                           # the ratio does not allow it: some token is hidden twice
        assert any((hidden[a] & hidden[b]).any() for a, b in pairs)
    if views * per_view >= 64:      # together they cover every token of every image
        assert torch.all(hidden.any(0))
    else:
        assert not torch.all(hidden.any(0))
    if views * (64 - per_view) <= 64:  # visible sets pairwise disjoint
        assert all(not (~hidden[a] & ~hidden[b]).any() for a, b in pairs)
    if unit == 2:                   # block mode: every 2x2 block is hidden or visible as a whole
        blocks = hidden.reshape(views, batch, 4, 2, 4, 2).float().mean((3, 5))
        assert torch.all((blocks == 0) | (blocks == 1))


def test_two_views_match_the_reference_rule():
    # DMJD's reference code: view 2 hides all of view 1's visible tokens (ratio >= 0.5) and the rest
    # inside view 1's hidden ones.
    torch.manual_seed(0)
    masks = DisjointMasker(0.75, 2)(4, 64)
    first, second = masks.mask.reshape(2, 4, 64).bool()
    assert torch.all(second[~first])
    assert torch.all(second.sum(-1) == 48) and torch.all((second & first).sum(-1) == 32)


def _test_image() -> np.ndarray:
    from skimage import data, transform
    image = transform.resize(data.astronaut(), (48, 64), anti_aliasing=True)  # float64 in [0, 1]
    return image.transpose(2, 0, 1)


def test_hog_matches_scikit_image():
    from skimage.feature import hog
    image = _test_image()
    l2 = HOGTarget(16, normalize="l2").normalized_cells(torch.from_numpy(image)[None])[0].numpy()
    # a tiny eps: the default 1e-5 (LayerNorm's, as the official code) is not negligible for a flat [0, 1] image
    standardized = HOGTarget(16, eps=1e-12).normalized_cells(torch.from_numpy(image)[None])[0].numpy()
    for channel in range(3):
        # one-cell blocks with L2 normalisation: scikit-image's per-cell histograms, L2-normalised
        reference = hog(image[channel], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1),
                        block_norm="L2", feature_vector=False)[:, :, 0, 0, :]
        assert reference.shape == l2[channel].shape == (6, 8, 9)
        np.testing.assert_allclose(l2[channel], reference, atol=1e-6)
        # standardisation ignores the scale, so it equals standardising scikit-image's histograms
        mean, std = reference.mean(-1, keepdims=True), reference.std(-1, keepdims=True)
        np.testing.assert_allclose(standardized[channel], (reference - mean) / std, atol=1e-4)


def test_hog_tokens_hold_their_patch_cells():
    image = torch.from_numpy(_test_image())[None].float()
    target = HOGTarget(16, normalize="none")
    cells = target.cell_histograms(image)[0]       # (3, 6, 8, 9)
    tokens = target(image)[0]                      # (3 * 4 patches, 2 * 2 cells * 3 channels * 9)
    assert tokens.shape == (12, 108) and target.dim(3) == 108
    token = tokens[1 * 4 + 2].reshape(2, 2, 3, 9)  # patch row 1, column 2
    torch.testing.assert_close(token[1, 0, 2], cells[2, 3, 4])
    with pytest.raises(ConfigError, match="cell_size"):
        HOGTarget(4, cell_size=8)


def test_views_are_stacked_and_both_branches_train():
    torch.manual_seed(0)
    dmjd = build_method("dmjd", **TINY)
    assert "dmjd" in list_methods()
    seen = []
    dmjd.encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    images = torch.rand(3, 3, 32, 32)
    out = dmjd({"image": images})
    # 2 views x 3 images; 16 tokens, 12 hidden (3 of 4 blocks of 2x2 tokens) -> 4 visible + class token
    assert seen == [torch.Size([6, 5, 32])]
    assert out.pred.shape == (6, 16, 9 * 3) and out.mask.shape == (6, 16)
    assert set(out.parts) == {"masked", "visible"}
    torch.testing.assert_close(out.loss, out.parts["masked"] + out.parts["visible"])
    out.loss.backward()
    assert dmjd.visible_head[0].weight.grad.abs().sum() > 0 and dmjd.decoder.pred.weight.grad.abs().sum() > 0
    assert dmjd.reconstruct({"image": images}, out) is None


def test_loss_falls_on_fixed_data(fixed_batch_training):
    torch.manual_seed(0)
    dmjd = build_method("dmjd", **{**TINY, "img_size": 32, "patch_size": 8})
    images = torch.rand(8, 3, 32, 32)
    run = fixed_batch_training(dmjd, {"image": images}, steps=40)
    assert run.last(5) < 0.7 * run.first(5)
