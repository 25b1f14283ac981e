"""Core parts: tokens, position embeddings, maskers, schedules, encoder, decoder, targets."""
import math

import pytest
import timm
import torch

from mimkit.core.decoders import MAEDecoder
from mimkit.core.encoders import VIT_SIZES, build_encoder
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.masking import BlockMasker, GridMasker, Mask, RandomMasker, RatioSchedule, TubeMasker
from mimkit.core.targets import PixelTarget, masked_mse
from mimkit.core.tokens import patchify, sincos_pos_embed, unpatchify


@pytest.mark.parametrize("shape,patch", [((2, 3, 32, 48), 8), ((2, 1, 16, 8), 4), ((2, 5, 24, 24), (8, 4)),
                                         ((2, 2, 16, 32, 8), 8), ((1, 7, 8, 16, 24), (4, 8, 8))])
def test_patchify_round_trip_any_channels_and_shape(shape, patch):
    x = torch.randn(shape)
    tokens = patchify(x, patch)
    p = (patch,) * (len(shape) - 2) if isinstance(patch, int) else patch
    grid = tuple(s // q for s, q in zip(shape[2:], p))
    assert tokens.shape == (shape[0], math.prod(grid), math.prod(p) * shape[1])
    assert torch.equal(unpatchify(tokens, patch, grid, shape[1]), x)


def test_patchify_token_holds_its_patch_pixels():
    x = torch.arange(2 * 8 * 8, dtype=torch.float).reshape(1, 2, 8, 8)
    tokens = patchify(x, 4)
    # token 1 is row 0, column 1: pixels rows 0..3, columns 4..7, channels last inside the patch
    expected = x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1)
    assert torch.equal(tokens[0, 1], expected)


def test_image_size_not_divisible_names_the_fix():
    with pytest.raises(ConfigError, match="--img-size 32"):
        patchify(torch.randn(1, 1, 30, 32), 8)


def test_sincos_2d_matches_mae_layout():
    emb = sincos_pos_embed(16, (2, 3), cls_token=True)
    assert emb.shape == (7, 16) and torch.all(emb[0] == 0)
    # MAE: first half encodes the column, second half the row; sin(0)=0, cos(0)=1
    row0_col2, row1_col0 = emb[1 + 2], emb[1 + 3]
    assert torch.allclose(row1_col0[:8], sincos_pos_embed(16, (1, 1))[0, :8])  # column 0
    assert not torch.allclose(row0_col2[:8], row1_col0[:8])
    assert torch.allclose(row0_col2[8:], sincos_pos_embed(16, (1, 1))[0, 8:])  # row 0


def test_sincos_3d_distinguishes_every_position():
    emb = sincos_pos_embed(48, (3, 4, 5))
    assert emb.shape == (60, 48)
    assert torch.cdist(emb, emb).add(torch.eye(60)).min() > 1e-3


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_random_masker_exact_count_and_consistency(ratio):
    m = RandomMasker(ratio)(8, 64, generator=torch.Generator().manual_seed(0))
    assert torch.all(m.mask.sum(1) == 64 - int(64 * (1 - ratio)))
    assert torch.all(m.mask.gather(1, m.ids_keep) == 0)
    assert torch.all(m.mask.gather(1, m.ids_masked) == 1)
    # ids_restore undoes the [visible, masked] order
    order = torch.cat([m.ids_keep, m.ids_masked], 1)
    assert torch.equal(order.gather(1, m.ids_restore), torch.arange(64).expand(8, -1))
    assert len({tuple(r.tolist()) for r in m.ids_keep}) > 1  # per-sample masks differ


def test_random_masker_scores_keep_high_scoring_tokens():
    scores = torch.zeros(2, 16)
    scores[:, :4] = 10.0
    m = RandomMasker(0.75)(2, 16, scores=scores)
    assert torch.equal(m.ids_keep, torch.arange(4).expand(2, -1))


def test_block_masker_masks_contiguous_blocks():
    masker = BlockMasker(0.5, grid=(14, 14))
    m = masker(4, 196, generator=torch.Generator().manual_seed(1))
    assert torch.all(m.mask.sum(1) == 98)
    grid = m.mask.reshape(4, 14, 14)
    # blocks: most masked tokens have a masked 4-neighbour (random masking would give ~75%)
    padded = torch.nn.functional.pad(grid, (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    assert ((neighbours > 0) & (grid > 0)).sum() / grid.sum() > 0.9
    assert (neighbours * grid).sum() / grid.sum() > 2.5


def test_grid_masker_masks_whole_units():
    m = GridMasker(0.6, grid=(8, 8), mask_unit=4)(3, 64)
    units = m.mask.reshape(3, 2, 4, 2, 4).permute(0, 1, 3, 2, 4).reshape(3, 4, 16)
    assert torch.all((units.sum(-1) == 0) | (units.sum(-1) == 16))
    # SimMIM's MaskGenerator hides ceil(0.6 * 4) = 3 of the 4 units (rounding would hide 2)
    assert torch.all(m.mask.sum(1) == 3 * 16)


@pytest.mark.parametrize("ratio, kept", [(0.75, 49), (0.9, 19), (0.985, 2)])
def test_random_masker_keeps_the_official_count(ratio, kept):
    # official MAE / MaskAlign / CropMAE / DMJD: len_keep = int(L * (1 - mask_ratio)); 196 tokens of a 224 px image.
    # 0.9 and 0.985 (CropMAE's 2 visible patches) differ from rounding the hidden count (20 and 3 kept)
    m = RandomMasker(ratio)(2, 196, generator=torch.Generator().manual_seed(0))
    assert m.ids_keep.shape == (2, kept)
    assert torch.all(m.mask.sum(1) == 196 - kept)


def test_tube_masker_repeats_along_depth():
    m = TubeMasker(0.75, grid=(3, 4, 4))(2, 48)
    planes = m.mask.reshape(2, 3, 16)
    assert torch.equal(planes[:, 0], planes[:, 1]) and torch.equal(planes[:, 0], planes[:, 2])
    assert torch.all(planes[:, 0].sum(1) == 12)


def test_mask_from_bool_rejects_uneven_counts():
    with pytest.raises(ConfigError):
        Mask.from_bool(torch.tensor([[True, False], [False, False]]))


def test_ratio_schedules():
    assert RatioSchedule("constant", 0.6)(500) == 0.6
    lin = RatioSchedule("linear", 0.5, 0.9, total_steps=100)
    assert lin(0) == 0.5 and lin(50) == pytest.approx(0.7) and lin(200) == pytest.approx(0.9)
    cos = RatioSchedule("cosine", 0.5, 0.9, total_steps=100)
    assert cos(0) == pytest.approx(0.5) and cos(50) == pytest.approx(0.7) and cos(100) == pytest.approx(0.9)
    step = RatioSchedule("step", 0.5, milestones=[10, 20], values=[0.6, 0.8])
    assert [step(s) for s in (0, 10, 19, 25)] == [0.5, 0.6, 0.6, 0.8]
    m = RandomMasker(lin)
    # int(100 * (1 - 0.9)) = int(9.999...) = 9 kept, exactly as the official MAE expression computes it
    assert m(1, 100, step=0).mask.sum() == 50 and m(1, 100, step=100).mask.sum() == 91
    with pytest.raises(ConfigError):
        RatioSchedule("exponential")


@pytest.mark.parametrize("img_size,in_chans", [(32, 1), ((32, 48), 4)])
def test_encoder_state_dict_loads_strictly_into_timm(img_size, in_chans):
    enc = build_encoder(img_size=img_size, patch_size=8, in_chans=in_chans, embed_dim=64, depth=2, num_heads=4).eval()
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=img_size,
                            patch_size=8, in_chans=in_chans, embed_dim=64, depth=2, num_heads=4).eval()
    vit.load_state_dict(enc.state_dict(), strict=True)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = torch.randn(2, in_chans, h, w)
    assert torch.allclose(vit.forward_features(x), enc.forward_features(x), atol=1e-5)


def test_named_sizes_and_free_sizes():
    assert (VIT_SIZES["base"].embed_dim, VIT_SIZES["base"].depth, VIT_SIZES["base"].num_heads) == (768, 12, 12)
    enc = build_encoder("tiny", img_size=32, patch_size=8, depth=1)
    assert enc.embed_dim == 192 and len(enc.blocks) == 1
    with pytest.raises(ConfigError, match="tiny, small, base, large, huge"):
        build_encoder("gigantic")


def test_forward_visible_encodes_only_visible_tokens():
    enc = build_encoder(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2).eval()
    seen = []
    enc.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    x = torch.randn(2, 1, 32, 32)
    ids = torch.tensor([[0, 5, 9, 15], [1, 2, 3, 4]])
    out = enc.forward_visible(x, ids)
    assert out.shape == (2, 5, 32) and seen == [5]
    # a visible token's output does not depend on the hidden tokens' content
    x2 = x.clone()
    x2[0, :, 8:16, 0:8] = 9.0  # patch 4 is hidden for sample 0
    assert torch.allclose(enc.forward_visible(x2, ids)[0], out[0], atol=1e-6)


def test_encoder_3d_and_wrong_channels():
    enc = build_encoder(img_size=16, patch_size=8, in_chans=2, embed_dim=32, depth=1, num_heads=2, spatial_dims=3)
    assert enc.forward_features(torch.randn(1, 2, 16, 16, 16)).shape == (1, 9, 32)
    with pytest.raises(DataError, match="--in-chans 3"):
        enc.forward_features(torch.randn(1, 3, 16, 16, 16))


def test_mae_decoder_predicts_every_token():
    dec = MAEDecoder((4, 4), in_dim=32, out_dim=48, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    m = RandomMasker(0.75)(2, 16)
    latent = torch.randn(2, 1 + 4, 32)
    assert dec(latent, m.ids_restore).shape == (2, 16, 48)


def test_pixel_target_normalisation_and_inverse():
    images = torch.rand(2, 3, 16, 16) * 5 + 2
    target = PixelTarget(8, normalize=True)(images)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 4), atol=1e-4)
    assert torch.allclose(target.std(-1), torch.ones(2, 4), atol=1e-3)
    assert torch.allclose(PixelTarget(8, True).to_pixels(target, images), images, atol=1e-4)
    raw = PixelTarget(8, normalize=False)(images)
    assert torch.equal(raw, patchify(images, 8))


def test_masked_mse_counts_masked_tokens_only():
    pred, target = torch.zeros(1, 4, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((4 + 16) / 2)
