"""SelectiveMAE: token counts through encoder and decoder, HOG-scored selection, progressive similarity
expansion, loss on the selected hidden tokens only, loss falls."""
import pytest
import torch
import torch.nn.functional as F

from mimkit.core import build_method
from mimkit.core.errors import ConfigError
from mimkit.core.masking import SelectiveMasker
from mimkit.core.targets import patch_hog_scores

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=32,
            decoder_depth=2, decoder_num_heads=4)


def smooth_images(n, chans=3, seed=0):
    """Fixed, learnable data: smooth two-component scenes."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 2, 4, 4, generator=g), size=32, mode="bilinear", align_corners=False)
    return torch.einsum("bkhw,kc->bchw", base, torch.rand(2, chans, generator=g))


def test_token_counts_through_encoder_and_decoder_match_the_ratios():
    torch.manual_seed(0)
    model = build_method("selective_mae", **TINY)          # paper defaults: mask 0.85, 25% reconstructed
    encoder_in, decoder_q, decoder_kv = [], [], []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: encoder_in.append(i[0].shape[1]))

    def count_decoder_tokens(module, inputs, output):
        decoder_q.append(inputs[0].shape[1])
        decoder_kv.append(inputs[1].shape[1])

    for block in model.decoder.blocks:
        block.register_forward_hook(count_decoder_tokens)
    masks, masker = [], model.masker
    model.masker = lambda *a, **k: masks.append(masker(*a, **k)) or masks[-1]
    out = model({"image": torch.randn(2, 3, 32, 32)})
    n = 64
    visible = int(n * (1 - 0.85))                          # 9 of 64, the official int(N * keep_rate)
    assert encoder_in == [1 + visible]
    assert decoder_q == [round(0.25 * n)] * 2 and decoder_kv == [1 + visible] * 2
    assert torch.all(out.mask.sum(1) == n - visible)
    # the loss covers exactly the 16 reconstructed tokens, all of them hidden ones
    target = masks[0].target
    assert torch.all(target.sum(1) == 16) and torch.all(out.mask[target.bool()] == 1)
    pred_grad = torch.autograd.grad(out.loss, out.pred)[0]
    assert torch.all(pred_grad[target == 0] == 0) and torch.all(pred_grad[target == 1].abs().sum(-1) > 0)
    with pytest.raises(ConfigError, match="target_ratio"):
        build_method("selective_mae", **TINY, mask_ratio=0.5, target_ratio=0.6)


def test_hog_scores_rank_textured_patches_first():
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, 8:16, 16:24] = torch.rand(2, 3, 8, 8)          # one textured 8x8 region = token (1, 2) of a 4x4 grid
    scores = patch_hog_scores(x, 8)
    assert scores.shape == (2, 16) and torch.all(scores.argmax(1) == 6)
    assert torch.allclose(scores.mean(1), torch.zeros(2), atol=1e-5)


def test_visible_and_reconstructed_tokens_follow_the_scores():
    masker = SelectiveMasker(0.75, 0.25)
    scores = torch.zeros(1, 64)
    scores[:, :8] = 4.0                                    # 8 rich tokens
    g = torch.Generator().manual_seed(0)
    picked = torch.zeros(64)
    for _ in range(50):
        mask = masker(1, 64, scores=scores, generator=g)   # no features: expansion is random
        picked += 1 - mask.mask[0]
        assert mask.ids_keep.shape == (1, 16) and mask.ids_target.shape == (1, 16)
        assert torch.all(mask.mask[0, mask.ids_target[0]] == 1)     # reconstructed tokens are hidden ones
    # half the visible tokens are drawn by score: the 8 rich tokens are almost always visible
    assert picked[:8].mean() > 40 and picked[8:].mean() < 15


def test_progressive_expansion_from_similar_to_dissimilar_tokens():
    # features: tokens 0-31 point one way, 32-63 the other; scores pick seeds among 0-31 only
    features = torch.zeros(1, 64, 4)
    features[0, :32, 0], features[0, 32:, 1] = 1.0, 1.0
    features += 0.01 * torch.randn(1, 64, 4, generator=torch.Generator().manual_seed(0))
    scores = torch.full((1, 64), -30.0)
    scores[:, :32] = 0.0
    masker = SelectiveMasker(0.75, 0.25, total_steps=1000)
    assert masker.stage(0) == (1.0, 0.0) and masker.stage(400) == (0.0, 0.0) and masker.stage(900) == (0.0, 1.0)
    near = masker(1, 64, step=0, scores=scores, features=features, generator=torch.Generator().manual_seed(1))
    far = masker(1, 64, step=500, scores=scores, features=features, generator=torch.Generator().manual_seed(1))
    # 8 seeds among 0-31; the 8 expanded tokens are similar (0-31) early and dissimilar (32-63) later
    assert (near.ids_keep < 32).all()
    assert int((far.ids_keep >= 32).sum()) == 8
    half = masker.stage(362.5)                             # midway through the near-to-far blend
    assert half == pytest.approx((0.5, 0.0))


def test_selective_mae_loss_falls_on_fixed_data(fixed_batch_training):
    torch.manual_seed(0)
    model = build_method("selective_mae", **TINY)
    batch = {"image": smooth_images(8)}
    run = fixed_batch_training(model, batch, steps=40)
    assert run.last(5) < 0.5 * run.first(5)
    assert model.reconstruct(batch, run.out).shape == (8, 3, 32, 32)


def test_official_score_is_constant_so_selection_ignores_the_image_and_hog_energy_is_a_named_option():
    # the released HOGLayerC standardises each patch's histogram vector and then averages it: every patch gets ~0
    model = build_method("selective_mae", **TINY)
    assert model.score == "official"
    seen = []
    original = model.masker
    model.masker = lambda *a, **k: seen.append(k.get("scores")) or original(*a, **k)
    textured = torch.zeros(1, 3, 32, 32)
    textured[..., 8:12, 8:12] = torch.rand(1, 3, 4, 4)  # patch (2, 2) of the 8 x 8 grid: token 18
    model.select(textured, torch.randn(1, 64, 32))
    assert seen[-1] is None  # no scores: uniform selection probabilities, as the constant official score gives
    energy = build_method("selective_mae", **TINY, score="hog_energy")
    energy.masker = lambda *a, **k: seen.append(k.get("scores")) or original(*a, **k)
    energy.select(textured, torch.randn(1, 64, 32))
    assert seen[-1] is not None and int(seen[-1].argmax()) == 18  # the textured patch ranks first
