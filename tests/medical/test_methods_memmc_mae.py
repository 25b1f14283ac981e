"""MemMC-MAE: memory-augmented encoder attention, multi-level gated cross-attention decoder, anomaly maps."""
import math

import pytest
import torch
import torch.nn.functional as F

from mimkit.core import build_method, list_methods
from mimkit.core.errors import ConfigError, DataError
from mimkit.medical.methods.memmc_mae import MemoryAugmentedAttention

TINY = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
            decoder_depth=2, decoder_num_heads=2, num_memory=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(32, 32), mode="bilinear", align_corners=True)


@pytest.fixture(scope="module")
def trained(fixed_batch_training):
    """A tiny model trained on 'normal' images (smooth fields) only, with its loss curve."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_method("memmc_mae", **TINY)
    normal = smooth_images(16)
    run = fixed_batch_training(model, {"image": normal}, steps=80, lr=2e-3)
    torch.set_num_threads(threads)
    return model, run.losses, normal


def test_encoder_attention_also_attends_to_learned_memory():
    torch.manual_seed(0)
    attn = MemoryAugmentedAttention(dim=8, num_heads=2, num_memory=3)
    x = torch.randn(2, 5, 8)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 8).unbind(2)
    keys = torch.cat([k, math.sqrt(4) * attn.memory_keys.expand(2, -1, -1)], 1)
    values = torch.cat([v, math.sqrt(3) * attn.memory_values.expand(2, -1, -1)], 1)
    expected = []
    for h in range(2):  # explicit softmax attention per head over the 5 tokens and the 3 memory slots
        sl = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., sl] @ keys[..., sl].transpose(1, 2) / 2.0, -1)
        assert weights[..., 5:].sum(-1).min() > 0  # every token gives some attention to the memory
        expected.append(weights @ values[..., sl])
    assert torch.allclose(attn(x), attn.proj(torch.cat(expected, -1)), atol=1e-5)
    model = build_method("memmc_mae", **TINY)
    assert all(isinstance(b.attn, MemoryAugmentedAttention) for b in model.encoder.blocks)
    model({"image": smooth_images(2)}).loss.backward()
    assert model.encoder.blocks[0].attn.memory_values.grad.abs().sum() > 0  # the memory is learned


def test_every_decoder_block_reads_all_encoder_levels_through_gates():
    torch.manual_seed(0)
    model = build_method("memmc_mae", **TINY)
    assert model.cross_levels == (1, 2)
    block_outputs, keys = {}, []
    for n, block in enumerate(model.encoder.blocks, start=1):
        block.register_forward_hook(lambda m, a, out, n=n: block_outputs.__setitem__(n, out))
    for block in model.decoder.blocks:
        block.cross_attn.register_forward_pre_hook(lambda m, args, b=block: keys.append((b, args[1])))
    model({"image": smooth_images(2)})
    assert len(keys) == 2 * 2  # 2 decoder blocks x 2 encoder levels
    for i, (block, key) in enumerate(keys):
        level = (1, 2)[i % 2]
        assert torch.allclose(key, block.context_norms[i % 2](block_outputs[level]))
    # each level changes the output: the gates mix all of them
    block = model.decoder.blocks[0]
    x = torch.randn(2, 17, 32)
    levels = [block_outputs[1], block_outputs[2]]
    base = block(x, levels)
    for j in range(2):
        changed = list(levels)
        changed[j] = torch.randn_like(levels[j])
        assert not torch.allclose(block(x, changed), base)


def test_covering_masks_and_anomaly_map_shapes():
    model = build_method("memmc_mae", **TINY)
    masks = model.covering_masks(3)
    assert len(masks) == 4 and all(m.mask.sum(1).tolist() == [12.0] * 3 for m in masks)  # training ratio 75%
    assert torch.all(sum(m.mask for m in masks) == 3)  # every token hidden in all passes but one
    images = smooth_images(3)
    amap = model.anomaly_map(images)
    assert amap.shape == (3, 1, 32, 32) and torch.all(amap >= 0)
    assert torch.allclose(model.anomaly_score(images), amap.flatten(1).mean(1))
    assert torch.equal(model.anomaly_map(images), amap)  # same seed, same passes
    vol_model = build_method("memmc_mae", **{**TINY, "img_size": 16, "spatial_dims": 3})
    assert vol_model.anomaly_map(torch.rand(2, 1, 16, 16, 16)).shape == (2, 1, 16, 16, 16)
    assert vol_model({"image": torch.rand(2, 1, 16, 16, 16)}).pred.shape == (2, 8, 512)
    with pytest.raises(DataError, match="channel"):
        model.anomaly_map(torch.rand(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="cross_levels"):
        build_method("memmc_mae", **{**TINY, "cross_levels": (0, 2)})


def test_registered_and_loss_falls_on_normal_images(trained):
    assert "memmc_mae" in list_methods()
    _, losses, _ = trained
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_anomalies_score_higher_and_light_up_the_map(trained):
    model, _, normal = trained
    clean = normal[:4]
    lesion = clean.clone()
    lesion[:, :, 8:16, 8:16] += 1.0  # a bright square the normal images never had
    assert torch.all(model.anomaly_score(lesion) > model.anomaly_score(clean))
    amap = model.anomaly_map(lesion)
    inside = amap[:, :, 8:16, 8:16].flatten(1).mean(1)
    assert torch.all(inside > 3 * amap.flatten(1).mean(1))


def test_recipe_matches_the_method_defaults():
    from importlib import resources

    import yaml

    from mimkit.core.registry import method_arguments
    recipe = yaml.safe_load(resources.files("mimkit.medical").joinpath("recipes", "memmc_mae.yaml").read_text())
    defaults = {k.removeprefix("encoder."): v for k, v in method_arguments("memmc_mae").items()}
    assert recipe["method"] == "memmc_mae" and recipe["data"]["normal_only"] is True
    model = dict(recipe["model"])
    model.update(model.pop("encoder"))
    for key, value in model.items():
        assert key in defaults and value == defaults[key], key
