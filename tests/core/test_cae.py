"""CAE: the alignment target carries no gradient, the decoder sees only predicted latents, block masks, loss falls."""
import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.registry import method_arguments
from mimkit.core.tokens import patchify

TINY = dict(img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=48,
            regressor_depth=2, decoder_depth=1, decoder_num_heads=2, drop_path_rate=0.0)


def test_registered_with_paper_defaults():
    assert "cae" in list_methods()
    args = method_arguments("cae")
    assert args["mask_ratio"] == 0.5 and args["alignment_weight"] == 2.0
    assert args["regressor_depth"] == 4 and args["decoder_depth"] == 4


def test_block_masking_hides_half_of_the_patches_in_blocks():
    torch.manual_seed(0)
    cae = build_method("cae", **TINY)
    mask = cae.masker(6, 64)
    assert torch.all(mask.mask.sum(1) == 32)
    # block masking: most hidden tokens have a hidden 4-neighbour (random masking would give far fewer)
    grid = mask.mask.reshape(6, 8, 8)
    padded = torch.nn.functional.pad(grid, (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    assert ((neighbours > 0) & (grid > 0)).sum() / grid.sum() > 0.9


def test_no_gradient_flows_through_the_alignment_target():
    torch.manual_seed(0)
    cae = build_method("cae", **TINY)
    images = torch.randn(2, 1, 32, 32, requires_grad=True)
    mask = cae.masker(2, 64)
    predicted, target, _ = cae.predict_latents(images, mask)
    assert not target.requires_grad and target.shape == predicted.shape == (2, 32, 48)
    alignment = torch.nn.functional.mse_loss(predicted, target)
    (grad,) = torch.autograd.grad(alignment, images)
    per_patch = patchify(grad, 4).abs().sum(-1)  # (2, 64)
    # the masked patches reach the loss only through the target: no gradient there at all
    assert torch.all(per_patch[mask.mask == 1] == 0)
    assert torch.all(per_patch[mask.mask == 0] > 0)
    # and the target is the encoder's own output on the masked patches
    with torch.no_grad():
        direct = cae.to_regressor(cae.encoder.forward_visible(images, mask.ids_masked))[:, 1:]
    torch.testing.assert_close(target, direct)


def test_decoder_sees_only_the_predicted_latents_of_masked_patches():
    torch.manual_seed(0)
    cae = build_method("cae", **TINY)
    seen, regressed = {}, {}
    cae.decoder.register_forward_hook(lambda m, args, out: seen.update(latents=args[0], positions=args[1]))
    cae.regressor_norm.register_forward_hook(lambda m, args, out: regressed.update(out=out))
    out = cae({"image": torch.randn(3, 1, 32, 32)})
    assert seen["latents"].shape == (3, 32, 48)  # 32 masked tokens, no visible ones
    assert torch.equal(seen["latents"], regressed["out"])
    # its positions are those of the masked tokens
    masked_ids = torch.nonzero(out.mask[0]).flatten()
    torch.testing.assert_close(seen["positions"][0], cae.pos_embed[0, masked_ids])
    # predictions exist only where tokens were masked
    assert torch.all(out.pred[out.mask == 0] == 0) and torch.all(out.pred[out.mask == 1].abs().sum(-1) > 0)
    assert set(out.parts) == {"reconstruction", "alignment"}
    torch.testing.assert_close(out.loss, out.parts["reconstruction"] + 2 * out.parts["alignment"])


def test_reconstruct_shape():
    cae = build_method("cae", **TINY)
    images = torch.randn(2, 1, 32, 32)
    assert cae.reconstruct({"image": images}).shape == images.shape


def test_loss_falls_on_fixed_data(fixed_batch_training):
    torch.manual_seed(0)
    cae = build_method("cae", **TINY)
    images = torch.rand(8, 1, 32, 32)
    run = fixed_batch_training(cae, {"image": images}, steps=40)
    assert run.last(5) < 0.7 * run.first(5)


def test_official_regressor_block_renormalises_the_residual_before_the_mlp():
    from mimkit.core.methods.cae import CAERegressorBlock

    model = build_method("cae", **{**TINY, "layer_scale": None})
    block = model.regressor[0]
    assert isinstance(block, CAERegressorBlock)
    torch.nn.init.zeros_(block.mlp.fc2.weight)  # silence the MLP branch: the output is then LN(q + cross-attention)
    torch.nn.init.zeros_(block.mlp.fc2.bias)
    queries, context = 5 * torch.randn(2, 3, 48) + 3, torch.randn(2, 7, 48)
    out = block(queries, context, query_pos=torch.zeros(2, 3, 48), context_pos=torch.zeros(2, 7, 48))
    # a pre-norm block would return q + attention, keeping the queries' offset and scale
    assert torch.allclose(out.mean(-1), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(out.std(-1, unbiased=False), torch.ones(2, 3), atol=1e-3)
    assert type(build_method("cae", **TINY, regressor_block="prenorm").regressor[0]).__name__ == "CrossAttentionBlock"


def test_drop_path_rises_to_the_official_rate_in_regressor_and_decoder():
    args = method_arguments("cae")
    assert args["decoder_drop_path_rate"] == 0.1  # official --drop_path 0.1, also used by regressor and decoder
    model = build_method("cae", **{**TINY, "regressor_depth": 3, "decoder_depth": 3, "decoder_drop_path_rate": 0.1})
    rates = lambda blocks: [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]  # noqa: E731
    assert rates(model.regressor) == pytest.approx([0.0, 0.05, 0.1])
    assert [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.decoder.blocks] == pytest.approx([0.0, 0.05, 0.1])
