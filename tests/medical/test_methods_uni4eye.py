"""Uni4Eye: unified 2D/3D patch embedding, dual-branch (pixels + gradient map) decoder, mixed batches."""
import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.errors import DataError
from mimkit.core.masking import Mask
from mimkit.core.targets import masked_mse, sobel_gradient
from mimkit.core.tokens import patchify



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = dict(img_size=32, patch_size=8, in_chans=3, volume_size=16, volume_chans=1, embed_dim=48, depth=2,
            num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def mixed_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(4, 3, 32, 32, generator=g), "volume": torch.rand(2, 1, 16, 16, 16, generator=g)}


def grads(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].grad for n in names}


def test_one_training_step_on_a_mixed_batch_trains_both_embeddings_and_heads():
    torch.manual_seed(0)
    model = build_method("uni4eye", **TINY)
    out = model(mixed_batch())
    assert set(out.parts) == {"image_2d", "gradient_2d", "image_3d", "gradient_3d"}
    assert torch.isclose(out.loss.detach(), sum(out.parts.values()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out.loss.backward()  # one backward over both dimensionalities
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    for name in ("encoder.patch_embed.proj.weight", "encoder.patch_embed.proj_3d.weight",
                 "image_decoder.pred.weight", "image_decoder.pred_3d.weight",
                 "gradient_decoder.pred.weight", "gradient_decoder.pred_3d.weight", "encoder.blocks.0.attn.qkv.weight"):
        assert name in changed, name


def test_blocks_shared_positions_and_heads_per_dimensionality():
    torch.manual_seed(0)
    model = build_method("uni4eye", **TINY)
    enc = model.encoder
    assert enc.positions((4, 4)).shape == (1, 16, 48) and enc.positions((2, 2, 2)) is enc.pos_embed_3d
    only_2d = ["encoder.patch_embed.proj.weight", "image_decoder.pred.weight", "gradient_decoder.pred.weight"]
    only_3d = ["encoder.patch_embed.proj_3d.weight", "image_decoder.pred_3d.weight", "gradient_decoder.pred_3d.weight"]
    shared = ["encoder.blocks.1.mlp.fc1.weight", "image_decoder.blocks.0.attn.qkv.weight",
              "gradient_decoder.blocks.0.attn.qkv.weight"]
    batch = mixed_batch()
    for key, used, unused in (("image", only_2d, only_3d), ("volume", only_3d, only_2d)):
        model.zero_grad(set_to_none=True)
        model({key: batch[key]}).loss.backward()
        got = grads(model, used + unused + shared)
        assert all(got[n] is not None and got[n].abs().sum() > 0 for n in used + shared)
        assert all(got[n] is None for n in unused)


def test_sobel_gradient_of_ramps_and_constants():
    ramp = torch.arange(8.0).reshape(1, 1, 1, 8).expand(2, 3, 8, 8)
    g = sobel_gradient(ramp)
    assert g.shape == ramp.shape
    assert torch.allclose(g[..., 1:-1], torch.ones_like(g[..., 1:-1]))  # slope 1 inside, borders replicated
    assert torch.all(sobel_gradient(torch.full((1, 1, 6, 6, 6), 3.0)) == 0)
    depth_ramp = 2.0 * torch.arange(6.0).reshape(1, 1, 6, 1, 1).expand(1, 1, 6, 6, 6)
    assert torch.allclose(sobel_gradient(depth_ramp)[:, :, 1:-1], torch.full((1, 1, 4, 6, 6), 2.0))


def test_gradient_branch_regresses_the_gradient_map_of_the_masked_patches():
    torch.manual_seed(0)
    model = build_method("uni4eye", **TINY)
    images = mixed_batch()["image"]
    hidden = torch.zeros(4, 16, dtype=torch.bool)
    hidden[:, 4:] = True
    fixed = Mask.from_bool(hidden)
    model.masker = lambda *args, **kwargs: fixed
    out = model({"image": images})
    latent = model.encoder.forward_visible(images, fixed.ids_keep)
    pred_gradient = model.gradient_decoder(latent, fixed.ids_restore, 2)
    expected = masked_mse(pred_gradient, patchify(sobel_gradient(images), 8), fixed.mask)
    assert torch.isclose(out.parts["gradient_2d"], expected.detach())
    pred_pixels = model.image_decoder(latent, fixed.ids_restore, 2)
    assert torch.isclose(out.parts["image_2d"], masked_mse(pred_pixels, patchify(images, 8), fixed.mask).detach())


def test_shapes_2d_and_3d():
    model = build_method("uni4eye", **TINY)
    out = model({"image": torch.rand(2, 3, 32, 32)})
    assert out.pred.shape == (2, 16, 8 * 8 * 3) and out.mask.sum(1).tolist() == [12.0, 12.0]
    vol = torch.rand(2, 1, 16, 16, 16)
    out = model({"image": vol})  # a 3D tensor under "image" is encoded as a volume
    assert out.pred.shape == (2, 8, 8 ** 3) and set(out.parts) == {"image_3d", "gradient_3d"}
    assert model.reconstruct({"image": vol}, out).shape == vol.shape
    features = model.encoder.forward_features(vol)
    assert features.shape == (2, 1 + 8, 48)


def test_bad_inputs_raise_clear_errors():
    model = build_method("uni4eye", **TINY)
    with pytest.raises(DataError, match="'image'.*'volume'"):
        model({"label": torch.zeros(2)})
    with pytest.raises(DataError, match="volume"):
        model({"volume": torch.rand(2, 1, 16, 16)})
    with pytest.raises(DataError, match="1 channel"):
        model({"volume": torch.rand(2, 3, 16, 16, 16)})


def test_registered_and_loss_falls_on_fixed_mixed_data(fixed_batch_training):
    assert "uni4eye" in list_methods()
    torch.manual_seed(0)
    model = build_method("uni4eye", **TINY)
    run = fixed_batch_training(model, mixed_batch(), steps=40)
    assert run.last(5) < 0.7 * run.first(5)


def test_recipe_matches_the_method_defaults():
    from importlib import resources

    import yaml

    from mimkit.core.registry import method_arguments
    recipe = yaml.safe_load(resources.files("mimkit.medical").joinpath("recipes", "uni4eye.yaml").read_text())
    defaults = {k.removeprefix("encoder."): v for k, v in method_arguments("uni4eye").items()}
    assert recipe["method"] == "uni4eye"
    model = dict(recipe["model"])
    model.update(model.pop("encoder"))
    for key, value in model.items():
        assert key in defaults and (tuple(value) if isinstance(value, list) else value) == defaults[key], key
