"""MixedAE: invertible mixing, homologous TopK attention, homologous contrastive loss, loss falls."""
import math

import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.errors import ConfigError
from mimkit.core.encoders import gather_tokens
from mimkit.core.methods.mixedae import (homologous_contrastive_loss, mix, mixing_assignment, topk_attention_mask,
                                         unmix)
from mimkit.core.tokens import patchify

TINY = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=2)


@pytest.mark.parametrize("num_images", [2, 4])
def test_mixing_is_invertible_from_the_assignment(num_images):
    torch.manual_seed(0)
    images = torch.rand(3 * num_images, 3, 32, 32)
    patches = patchify(images, 4)                                   # (B, 64, 48)
    assignment = mixing_assignment(3, 64, num_images)
    # every image gets an equal share of the positions
    for slot in range(num_images):
        assert torch.all((assignment == slot).sum(1) == 64 // num_images)
    mixed = mix(patches, assignment)                                # (3, 64, 48)
    grouped = patches.reshape(3, num_images, 64, 48)
    for g in range(3):
        for p in range(64):
            assert torch.equal(mixed[g, p], grouped[g, assignment[g, p], p])
    own, mask = unmix(mixed, assignment, num_images)
    assert own.shape == (3 * num_images, 64 // num_images, 48)
    # each image gets back exactly its own patches, at its own positions
    assert torch.equal(own, gather_tokens(patches, mask.ids_keep))
    # and the images of a group partition the positions
    assert torch.all(mask.mask.reshape(3, num_images, 64).sum(1) == num_images - 1)


def test_topk_attention_keeps_homologous_tokens_when_they_score_highest():
    torch.manual_seed(0)
    assignment = mixing_assignment(2, 16, 4)                        # 4 images, 4 tokens each
    same = (assignment.unsqueeze(2) == assignment.unsqueeze(1)).float()
    scores = torch.randn(2, 3, 17, 17)
    scores[..., 1:, 1:] += 10 * same.unsqueeze(1)                   # homologous keys score highest
    allowed = topk_attention_mask(scores, k=4)
    assert torch.equal(allowed[..., 1:, 1:], same.bool().unsqueeze(1).expand(-1, 3, -1, -1))
    assert not allowed[..., 1:, 0].any() and allowed[..., 0, :].all()
    # whatever the scores, each patch query keeps exactly K patch keys
    allowed = topk_attention_mask(torch.randn(2, 3, 17, 17), k=4)
    assert torch.all(allowed[..., 1:, 1:].sum(-1) == 4)


def test_encoder_blocks_get_the_topk_mask_and_ignore_other_tokens():
    torch.manual_seed(0)
    mixedae = build_method("mixedae", **TINY)
    masks = []
    block = mixedae.encoder.blocks[0]
    block.register_forward_pre_hook(lambda m, args, kwargs: masks.append(kwargs["attn_mask"]), with_kwargs=True)
    out = mixedae({"image": torch.rand(8, 3, 32, 32)})
    assert len(masks) == 1 and masks[0].shape == (2, 2, 65, 65)     # 2 mixes of 4 images, 2 heads, cls + 64
    assert torch.all(torch.isfinite(masks[0][..., 1:, 1:]).sum(-1) == 16)
    assert out.pred.shape == (8, 64, 48) and torch.all(out.mask.sum(1) == 48)
    # a patch query's output does not change when a token outside its TopK changes
    x = torch.cat([mixedae.encoder.cls_token.expand(1, 1, -1), torch.randn(1, 64, 32)], dim=1)
    mask = mixedae.homologous_mask(block, x)
    outside = torch.nonzero(~torch.isfinite(mask[0, :, 1]).any(0)).flatten()  # keys no head lets token 1 see
    assert len(outside) > 0
    changed = x.clone()
    changed[0, outside] += 5.0
    first = block(x, attn_mask=mask)[0, 1]
    second = block(changed, attn_mask=mask)[0, 1]
    torch.testing.assert_close(first, second)


def test_homologous_contrastive_loss_rewards_grouping_by_image():
    torch.manual_seed(0)
    assignment = mixing_assignment(2, 16, 4)
    grouped = torch.nn.functional.one_hot(assignment, 4).float() + 0.05 * torch.randn(2, 16, 4)
    shuffled = grouped[:, torch.randperm(16)]
    good = homologous_contrastive_loss(grouped, assignment, 0.1)
    bad = homologous_contrastive_loss(shuffled, assignment, 0.1)
    assert good < 0.5 * bad


def test_mask_ratio_sets_the_number_of_images():
    assert build_method("mixedae", **TINY, mask_ratio=0.5).num_images == 2
    assert build_method("mixedae", **TINY).num_images == 4
    assert "mixedae" in list_methods()
    with pytest.raises(ConfigError, match="mask_ratio"):
        build_method("mixedae", **TINY, mask_ratio=0.6)
    with pytest.raises(ConfigError, match="num_images"):
        build_method("mixedae", **TINY, mask_ratio=0.75, num_images=2)


def test_batch_not_divisible_by_group_and_reconstruct():
    torch.manual_seed(0)
    mixedae = build_method("mixedae", **TINY)
    images = torch.rand(5, 3, 32, 32)
    out = mixedae({"image": images})
    assert out.pred.shape == (5, 64, 48) and set(out.parts) == {"reconstruction", "homologous"}
    assert mixedae.reconstruct({"image": images}, out).shape == images.shape


def test_loss_falls_and_tokens_learn_their_image_on_fixed_data(fixed_batch_training):
    torch.manual_seed(0)
    mixedae = build_method("mixedae", **{**TINY, "patch_size": 8})   # 16 tokens, 4 per image
    # images of distinct colours with smooth texture: their tokens can be told apart
    images = torch.rand(8, 3, 1, 1) + 0.3 * torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4), size=32,
                                                                             mode="bilinear")
    run = fixed_batch_training(mixedae, {"image": images}, steps=40, lr=3e-3)
    assert run.last(5) < 0.7 * run.first(5)
    # the contrastive loss ends near its floor, log(3): each token puts equal weight on its 3 homologous tokens
    assert run.last(5, "homologous") < math.log(3) + 0.15 < run.first(5, "homologous")
