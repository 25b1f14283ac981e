"""ChA-MAEViT: channel-patch masking removes whole channels, channel subsets at inference, memory tokens,
hybrid token fusion, the paper's loss terms and weights, loss falls."""
import pytest
import torch

from mimkit.core import build_method
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.masking import ChannelPatchMasker

TINY = dict(img_size=32, patch_size=8, in_chans=4, embed_dim=32, depth=2, num_heads=4, decoder_depth=1,
            decoder_num_heads=4, num_memory_tokens=2)


def textured_images(n, chans, seed=0):
    """Fixed data: one texture per channel in every patch, with random per-patch gains and per-image offsets,
    so a normalised patch is its channel's texture: learnable only by knowing which channel a token is."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.rand(chans, 8, 8, generator=g).repeat(1, 4, 4)
    gain = torch.rand(n, chans, 4, 4, generator=g).repeat_interleave(8, 2).repeat_interleave(8, 3) + 0.5
    return gain * pattern + torch.rand(n, chans, 1, 1, generator=g)


def test_channel_patch_masker_strategies():
    g = torch.Generator().manual_seed(0)
    masker = ChannelPatchMasker(0.75, p_patch=0.5, p_channel=0.5)
    patch = masker(3, 4 * 16, num_channels=4, strategy="patch", generator=g)
    hidden = patch.mask.reshape(3, 4, 16)
    assert torch.all(hidden.sum(-1) == 12) and not patch.channels_masked.any()   # 75% of every channel
    for _ in range(10):
        chan = masker(3, 64, num_channels=4, strategy="channel", generator=g)
        hidden = chan.mask.reshape(3, 4, 16)
        # whole channels hidden (the same ones for every image), the others fully visible
        assert torch.equal(hidden.all(-1), chan.channels_masked) and torch.equal(hidden.any(-1), hidden.all(-1))
        assert torch.equal(chan.channels_masked, chan.channels_masked[:1].expand(3, -1))
        assert chan.channels_masked[0].sum() <= 3
    both = masker(3, 64, num_channels=4, strategy="both", generator=torch.Generator().manual_seed(3))
    hidden = both.mask.reshape(3, 4, 16).bool()
    kept = ~both.channels_masked[0]
    assert hidden[:, ~kept].all() and torch.all(hidden[:, kept].sum(-1) == 12)
    # the strategy is drawn per call with the configured probabilities
    picks = [masker(1, 64, num_channels=4, generator=g).strategy for _ in range(200)]
    assert set(picks) == {"patch", "channel"} and 70 < picks.count("patch") < 130
    assert {ChannelPatchMasker(0.25, 0, 0)(1, 64, num_channels=4).strategy} == {"both"}
    with pytest.raises(ConfigError):
        ChannelPatchMasker(0.75, 0.7, 0.5)


def test_channel_masking_removes_whole_channels_from_the_encoder():
    torch.manual_seed(0)
    model = build_method("cha_mae", **TINY, p_patch=0.0, p_channel=1.0, at_least_one_channel=True)
    seen, masks = [], []
    masker = model.masker
    model.masker = lambda *a, **k: masks.append(masker(*a, **k)) or masks[-1]
    model.encoder.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    out = model({"image": torch.randn(2, 4, 32, 32)})
    kept = int((~masks[0].channels_masked[0]).sum())
    assert 1 <= kept <= 3
    assert seen == [1 + 2 + kept * 16]                     # class + memory tokens + every patch of kept channels
    keep_channel = masks[0].ids_keep // 16
    assert set(keep_channel.flatten().tolist()) == set(torch.nonzero(~masks[0].channels_masked[0]).flatten().tolist())
    # the hidden channels are reconstructed: the loss covers exactly their tokens
    assert torch.equal(masks[0].mask.reshape(2, 4, 16).all(-1), masks[0].channels_masked)
    pred_grad = torch.autograd.grad(out.loss, out.pred)[0].reshape(2, 4, 16, 64)
    hidden = masks[0].channels_masked
    assert torch.all(pred_grad[~hidden] == 0) and torch.all(pred_grad[hidden].abs().sum(-1) > 0)
    assert out.mask.shape == (2, 16) and torch.all(out.mask == 1)   # every patch has a hidden channel


def test_channel_subsets_at_inference():
    torch.manual_seed(0)
    model = build_method("cha_mae", **TINY).eval()
    enc = model.encoder
    x = torch.randn(2, 4, 32, 32)
    full = enc.forward_features(x)
    assert full.shape == (2, 1 + 2 + 4 * 16, 32) and enc.num_prefix_tokens == 3
    subset = enc.forward_features(x[:, [0, 2]], channel_ids=[0, 2])
    assert subset.shape == (2, 1 + 2 + 2 * 16, 32)
    # the channel identity matters: the same pixels said to be channels 1 and 3 encode differently
    assert not torch.allclose(subset, enc.forward_features(x[:, [0, 2]], channel_ids=[1, 3]), atol=1e-4)
    assert enc.pool(subset).shape == (2, 32) and enc.pool(subset, "token").shape == (2, 32)
    with pytest.raises(DataError, match="channel_ids"):
        enc.forward_features(x[:, :2])
    with pytest.raises(DataError, match="at most 4"):
        enc.forward_features(torch.randn(1, 5, 32, 32))
    # pretraining on a channel subset works too
    out = model.train()({"image": x[:, [1, 3]], "channel_ids": torch.tensor([1, 3])})
    assert torch.isfinite(out.loss) and out.pred.shape == (2, 32, 64)


def test_hybrid_token_fusion_uses_class_and_patch_tokens():
    torch.manual_seed(0)
    enc = build_method("cha_mae", **TINY).encoder
    feats = torch.randn(2, 3 + 64, 32)
    changed_patches = feats.clone()
    changed_patches[:, 3:] += 1.0
    changed_memory = feats.clone()
    changed_memory[:, 1:3] += 1.0
    pooled = enc.pool(feats)
    assert not torch.allclose(pooled, enc.pool(changed_patches))       # patch tokens are pooled in
    assert torch.allclose(pooled, enc.pool(changed_memory))            # memory tokens are not
    changed_cls = feats.clone()
    changed_cls[:, 0] += 1.0
    assert torch.allclose(enc.pool(changed_cls) - pooled, torch.ones(2, 32), atol=1e-5)  # "add" fusion


def test_loss_terms_and_weights():
    torch.manual_seed(0)
    model = build_method("cha_mae", **TINY, num_classes=3)
    out = model({"image": torch.randn(2, 4, 32, 32), "label": torch.tensor([0, 2])})
    p = out.parts
    assert set(p) == {"mse", "fourier", "reconstruction", "patch_diversity", "channel_diversity", "classification"}
    assert torch.allclose(p["reconstruction"], 0.99 * p["mse"] + 0.01 * p["fourier"])
    expected = 0.99 * p["reconstruction"] + 1e-5 * p["patch_diversity"] + 1e-4 * p["channel_diversity"] \
        + 0.01 * p["classification"]
    assert torch.allclose(out.loss.detach(), expected, rtol=1e-5)
    # without labels the supervised term is absent; bad labels are a clear error
    assert "classification" not in model({"image": torch.randn(2, 4, 32, 32)}).parts
    with pytest.raises(DataError, match="label"):
        model({"image": torch.randn(2, 4, 32, 32), "label": torch.rand(2, 3)})


def test_cha_mae_loss_falls_on_fixed_data(fixed_batch_training):
    torch.manual_seed(0)
    model = build_method("cha_mae", **TINY)
    batch = {"image": textured_images(8, 4)}
    run = fixed_batch_training(model, batch, steps=40, lr=3e-3)
    assert run.last(5) < 0.6 * run.first(5)
    assert model.reconstruct(batch, run.out).shape == (8, 4, 32, 32)


def test_learned_positions_over_class_memory_and_patch_tokens_as_official():
    from mimkit.core.registry import method_arguments

    assert method_arguments("cha_mae")["encoder.pos_embed"] == "learned"
    model = build_method("cha_mae", **TINY, p_patch=1.0, p_channel=0.0)  # 2 memory tokens; patches hidden
    enc = model.encoder
    assert enc.pos_embed.requires_grad and enc.memory_pos_embed.shape == (1, 2, 32)
    seen = []
    enc.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    out = model({"image": torch.randn(2, 4, 32, 32)})
    # the memory tokens enter the blocks with their own learned positions
    assert torch.allclose(seen[0][0, 1:3], (enc.memory_tokens + enc.memory_pos_embed)[0])
    out.loss.backward()
    assert enc.memory_pos_embed.grad.abs().sum() > 0 and enc.pos_embed.grad.abs().sum() > 0


def test_recipe_masks_channels_as_the_official_code_reads_its_flag():
    from importlib import resources

    import yaml

    recipe = yaml.safe_load(resources.files("mimkit.remote_sensing").joinpath("recipes", "cha_mae.yaml").read_text())
    # the code reads decoder.dcp_at_least_mask_one_channel (False); the script's top-level override never reaches it
    assert recipe["model"]["at_least_one_channel"] is False
    assert recipe["model"]["encoder"]["pos_embed"] == "learned"


def test_nodata_pixels_do_not_count_whatever_the_batch_holds_there():
    torch.manual_seed(0)
    model = build_method("cha_mae", **TINY)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :, :12] = False   # whole and partial patches of nodata
    valid[1, 20:, 20:] = False
    clean = textured_images(2, 4) * valid[:, None]  # nodata at 0, as the loader fills it
    junk = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1)) * 1e4
    junk[..., ::3, :] = float("nan")
    garbage = torch.where(valid[:, None], clean, junk)

    def parts(images, **extra):
        torch.manual_seed(1)  # the same channel-patch mask
        out = model({"image": images, **extra})
        return out.loss, out.parts

    (reference, terms), (dirty, dirty_terms) = parts(clean, valid=valid), parts(garbage, valid=valid)
    assert torch.isfinite(reference) and torch.equal(dirty, reference)
    assert all(torch.equal(dirty_terms[k], terms[k]) for k in terms)  # MSE, Fourier and diversity terms alike
    unmasked = parts(clean)[1]
    assert not torch.allclose(unmasked["mse"], terms["mse"]) and not torch.allclose(unmasked["fourier"],
                                                                                     terms["fourier"])
