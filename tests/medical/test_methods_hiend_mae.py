"""Hi-End-MAE: cross-attention blocks read the assigned encoder layers; masked, per-patch-normalised loss."""
import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.errors import ConfigError
from mimkit.core.registry import method_arguments
from mimkit.core.targets import masked_mse
from mimkit.core.tokens import patchify


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = dict(img_size=16, patch_size=8, in_chans=1, embed_dim=48, depth=4, num_heads=2, decoder_embed_dim=36,
            decoder_self_depth=1, decoder_num_heads=2, decoder_layers=(3, 2, 1))


def test_paper_defaults():
    args = method_arguments("hiend_mae")
    assert args["encoder.img_size"] == 96 and args["encoder.patch_size"] == 12 and args["encoder.spatial_dims"] == 3
    assert args["mask_ratio"] == 0.75 and args["decoder_layers"] == (10, 7, 4) and args["norm_pix_loss"] is True
    assert args["decoder_self_depth"] == 2


def test_each_cross_attention_block_reads_its_assigned_encoder_layer():
    torch.manual_seed(0)
    model = build_method("hiend_mae", **TINY)
    block_outputs, contexts = {}, {}
    for number, block in enumerate(model.encoder.blocks, start=1):
        block.register_forward_hook(lambda m, a, out, n=number: block_outputs.__setitem__(n, out))
    for i, block in enumerate(model.decoder.cross_blocks):
        block.register_forward_pre_hook(lambda m, args, i=i: contexts.__setitem__(i, args[1]))
    model({"image": torch.rand(2, 1, 16, 16, 16)})
    assert len(contexts) == 3
    for i, layer in enumerate((3, 2, 1)):  # deep to shallow, as the paper orders them
        expected = model.decoder.context_proj[i](block_outputs[layer])
        assert torch.allclose(contexts[i], expected)
        # the context is the visible tokens (and class token) of that layer: 2 of 8 tokens + 1
        assert contexts[i].shape == (2, 1 + 2, 36)
    # a context is read only by its own block: the layers differ, so the contexts differ
    assert not torch.allclose(contexts[0], model.decoder.context_proj[0](block_outputs[2]))


def test_loss_is_masked_mse_on_per_patch_normalised_voxels():
    torch.manual_seed(0)
    model = build_method("hiend_mae", **TINY)
    vol = torch.rand(2, 1, 16, 16, 16) * 5 + 3
    out = model({"image": vol})
    patches = patchify(vol, 8)
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert torch.isclose(out.loss, masked_mse(out.pred, target, out.mask))
    grad = torch.autograd.grad(out.loss, out.pred)[0]
    assert torch.all(grad[out.mask == 0] == 0) and torch.all(grad[out.mask == 1].abs().sum(-1) > 0)


def test_shapes_3d_and_2d_and_bad_layers():
    model = build_method("hiend_mae", **TINY)
    vol = torch.rand(2, 1, 16, 16, 16)
    out = model({"image": vol})
    assert out.pred.shape == (2, 8, 512) and out.mask.sum(1).tolist() == [6.0, 6.0]
    assert model.reconstruct({"image": vol}, out).shape == vol.shape
    flat = build_method("hiend_mae", **{**TINY, "img_size": 32, "spatial_dims": 2})
    assert flat({"image": torch.rand(2, 1, 32, 32)}).pred.shape == (2, 16, 64)
    with pytest.raises(ConfigError, match="decoder_layers"):
        build_method("hiend_mae", **{**TINY, "decoder_layers": (5, 2)})


def test_registered_and_loss_falls_on_fixed_data(fixed_batch_training):
    assert "hiend_mae" in list_methods()
    g = torch.Generator().manual_seed(0)
    # one fixed pattern at four contrasts and offsets: its per-patch normalised target is learnable,
    # unlike that of white noise, whose masked patches cannot be predicted
    pattern = torch.rand(1, 1, 16, 16, 16, generator=g)
    vol = pattern * (0.5 + torch.rand(4, 1, 1, 1, 1, generator=g)) + torch.rand(4, 1, 1, 1, 1, generator=g)
    torch.manual_seed(0)
    model = build_method("hiend_mae", **TINY)
    run = fixed_batch_training(model, {"image": vol}, steps=60, lr=3e-3)
    assert run.last(5) < 0.7 * run.first(5)


def test_recipe_matches_the_method_defaults():
    from importlib import resources

    import yaml
    recipe = yaml.safe_load(resources.files("mimkit.medical").joinpath("recipes", "hiend_mae.yaml").read_text())
    defaults = {k.removeprefix("encoder."): v for k, v in method_arguments("hiend_mae").items()}
    model = dict(recipe["model"])
    model.update(model.pop("encoder"))
    assert recipe["method"] == "hiend_mae" and recipe["data"]["spatial_dims"] == model["spatial_dims"] == 3
    for key, value in model.items():
        assert key in defaults and (tuple(value) if isinstance(value, list) else value) == defaults[key], key


def test_default_cross_blocks_read_blocks_10_7_4_as_the_released_code():
    # the released code reads entries 9, 6, 3 of its 0-based list of block outputs: blocks 10, 7, 4 (1-based)
    settings = {k: v for k, v in TINY.items() if k != "decoder_layers"}
    model = build_method("hiend_mae", **{**settings, "depth": 12, "embed_dim": 16})
    outputs, contexts = {}, []
    for number, block in enumerate(model.encoder.blocks, start=1):
        block.register_forward_hook(lambda m, a, o, number=number: outputs.__setitem__(number, o))
    for proj in model.decoder.context_proj:
        proj.register_forward_hook(lambda m, a, o: contexts.append(a[0]))
    model({"image": torch.rand(1, 1, 16, 16, 16)})
    read = [next(n for n, o in outputs.items() if o.shape == c.shape and torch.equal(o, c)) for c in contexts]
    assert read == [10, 7, 4]
