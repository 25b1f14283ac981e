"""Loading timm / torchgeo ViT checkpoints whose input channels differ from the encoder's: an explicit adaptation
of the patch embedding (repeat, mean, select by wavelength), never a silent mismatch."""
from functools import partial

import pytest
import timm
import torch

from mimkit.core.checkpoints import adapt_patch_embed, load_encoder
from mimkit.core.encoders import ViTEncoder
from mimkit.core.errors import CheckpointError, ConfigError
from mimkit.remote_sensing.data import band_indices_by_wavelength
from mimkit.remote_sensing.sensors import SENSORS

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def timm_checkpoint(tmp_path, in_chans, seed=0):
    """A timm VisionTransformer's state dict, as timm and torchgeo publish ViT weights."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=in_chans, **TINY)
    path = tmp_path / f"timm_{in_chans}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def patch_embedding(encoder, images):
    return encoder.patch_tokens(images)[0]


def test_channel_mismatch_without_adaptation_names_the_fix(tmp_path):
    _, path = timm_checkpoint(tmp_path, 3)
    with pytest.raises(CheckpointError, match=r"reads 3 input channel\(s\), the model 13.*adapt_in_chans"):
        load_encoder(ViTEncoder(in_chans=13, **TINY), path)


@pytest.mark.parametrize("mode,in_chans", [("repeat", 6), ("mean", 13)])
def test_repeat_and_mean_keep_the_embedding_of_a_grey_image(tmp_path, mode, in_chans):
    model, path = timm_checkpoint(tmp_path, 3)
    encoder = ViTEncoder(in_chans=in_chans, **TINY)
    report = load_encoder(encoder, path, adapt_in_chans=mode)
    assert report["resized"] == ["patch_embed.proj.weight"]
    grey = torch.rand(2, 1, 32, 32)  # every channel the same picture
    expected = model.patch_embed(grey.expand(-1, 3, -1, -1))
    assert torch.allclose(patch_embedding(encoder, grey.expand(-1, in_chans, -1, -1)), expected, atol=1e-5)


def test_repeat_cycles_the_kernels_with_the_timm_scale():
    weight = torch.randn(4, 3, 2, 2)
    out = adapt_patch_embed(weight, 13, "repeat")
    assert out.shape == (4, 13, 2, 2)
    assert torch.allclose(out[:, 4], weight[:, 1] * 3 / 13) and torch.allclose(out[:, 12], weight[:, 0] * 3 / 13)


def test_rgb_checkpoint_selected_into_sentinel2_bands_by_wavelength(tmp_path):
    model, path = timm_checkpoint(tmp_path, 3)
    s2 = SENSORS["sentinel2"].bands
    indices = band_indices_by_wavelength(SENSORS["rgb"].bands, s2)
    names = [b.name for b in s2]
    assert {names[i]: indices[i] for i in range(13) if indices[i] is not None} == {"B02": 2, "B03": 1, "B04": 0}
    encoder = ViTEncoder(in_chans=13, **TINY)
    load_encoder(encoder, path, adapt_in_chans=partial(adapt_patch_embed, mode="select", band_indices=indices))
    scene = torch.rand(2, 13, 32, 32)
    rgb = scene[:, [names.index("B04"), names.index("B03"), names.index("B02")]]
    # the Sentinel-2 encoder embeds a scene exactly as the RGB model embeds its red, green and blue bands
    assert torch.allclose(patch_embedding(encoder, scene), model.patch_embed(rgb), atol=1e-5)


def test_multispectral_checkpoint_into_an_rgb_encoder(tmp_path):
    model, path = timm_checkpoint(tmp_path, 13)
    encoder = ViTEncoder(in_chans=3, **TINY)
    load_encoder(encoder, path, adapt_in_chans=partial(adapt_patch_embed, mode="select", band_indices=[3, 2, 1]))
    assert torch.equal(encoder.patch_embed.proj.weight, model.patch_embed.proj.weight[:, [3, 2, 1]])


def test_bad_adaptation_requests_are_errors():
    weight = torch.randn(4, 3, 2, 2)
    with pytest.raises(ConfigError, match="band_indices"):
        adapt_patch_embed(weight, 13, "select")
    with pytest.raises(ConfigError, match="outside"):
        adapt_patch_embed(weight, 2, "select", band_indices=[0, 5])
    with pytest.raises(ConfigError, match="mode"):
        adapt_patch_embed(weight, 13, "nearest")
    with pytest.raises(ConfigError, match="adapt_in_chans"):
        load_encoder(ViTEncoder(in_chans=13, **TINY), "unused.pth", adapt_in_chans="select")


def test_a_layer_scale_checkpoint_builds_an_encoder_with_its_gammas(tmp_path):
    """DINOv2- / BEiT-style timm weights have layer scale (blocks.N.ls1.gamma): the encoder built from the file's
    shapes has it too and computes what the timm model computes."""
    from mimkit.remote_sensing.cli import checkpoint_encoder

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=3, init_values=0.5,
                              **TINY).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.ls1.gamma.uniform_(0.1, 1.0)
    path = tmp_path / "ls.pth"
    torch.save(model.state_dict(), path)
    encoder = checkpoint_encoder(path, 3, 32, None, [], "rgb", num_heads=2).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder.forward_features(images), model.forward_features(images), atol=1e-5)
