"""Checkpoints: mimkit round trip, official-MAE / timm / Lightning import, timm export, refusal of bad files."""
import argparse

import pytest
import timm
import torch
from safetensors.torch import save_file

from mimkit.core import build_method
from mimkit.core.checkpoints import (export_timm, load_encoder, load_method, load_method_weights,
                                     read_state_dict, save_method, timm_kwargs)
from mimkit.core.encoders import ViTEncoder
from mimkit.core.errors import CheckpointError, ConfigError

CONFIG = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2,
              decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
TIMM_ARGS = dict(pretrained=False, num_classes=0, img_size=32, patch_size=8, in_chans=1, embed_dim=32,
                 depth=2, num_heads=2)


def tiny_mae(seed):
    torch.manual_seed(seed)
    return build_method("mae", **CONFIG).eval()


def images(seed=123):
    return torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def mae_output(method):
    torch.manual_seed(7)  # the same random mask for every call
    with torch.no_grad():
        return method({"image": images()}).pred


def features(encoder):
    with torch.no_grad():
        return encoder.forward_features(images())


def official_names(state):
    """A mimkit MAE state dict renamed to facebookresearch/mae's MaskedAutoencoderViT keys and shapes."""
    renames = {"decoder.embed.": "decoder_embed.", "decoder.blocks.": "decoder_blocks.",
               "decoder.norm.": "decoder_norm.", "decoder.pred.": "decoder_pred.",
               "decoder.mask_token": "mask_token", "encoder.": ""}
    out = {}
    for key, value in state.items():
        if key == "decoder.pos_embed":  # official MAE keeps an all-zero class-token slot in front
            out["decoder_pos_embed"] = torch.cat([torch.zeros_like(value[:, :1]), value], dim=1)
            continue
        prefix = next(p for p in renames if key.startswith(p))
        out[renames[prefix] + key[len(prefix):]] = value.clone()
    return out


def test_save_load_round_trip(tmp_path):
    method = tiny_mae(0)
    path = save_method(method, tmp_path / "mae.safetensors", CONFIG)
    loaded, config = load_method(path)
    assert type(loaded) is type(method)
    # the encoder's fields are stored nested, complete (the method's defaults filled in)
    assert config["decoder_embed_dim"] == 32 and config["encoder"]["embed_dim"] == 32
    assert config["encoder"]["mlp_ratio"] == 4.0 and config["encoder"]["img_size"] == 32
    assert not torch.equal(mae_output(tiny_mae(1)), mae_output(method))  # a fresh model differs...
    assert torch.equal(mae_output(loaded), mae_output(method))          # ...the loaded one does not
    assert read_state_dict(path)[1] == "mimkit"


def test_file_with_a_flat_config_still_loads(tmp_path):
    """Files written before the encoder fields were nested hold them flat in the metadata."""
    import json

    from mimkit.core.checkpoints import _unshared

    method = tiny_mae(0)
    path = tmp_path / "flat.safetensors"
    save_file(_unshared(method.state_dict()), str(path),
              metadata={"format": "mimkit", "method": "mae", "config": json.dumps(CONFIG)})
    loaded, config = load_method(path)
    assert config == CONFIG and loaded.encoder.embed_dim == 32
    assert torch.equal(mae_output(loaded), mae_output(method))


def test_save_tied_weights(tmp_path):
    method = tiny_mae(0)
    method.encoder.blocks[1].attn.qkv.weight = method.encoder.blocks[0].attn.qkv.weight
    loaded, _ = load_method(save_method(method, tmp_path / "tied.safetensors", CONFIG))
    assert torch.equal(mae_output(loaded), mae_output(method))


def test_official_mae_full_checkpoint(tmp_path):
    method = tiny_mae(0)
    path = tmp_path / "checkpoint-799.pth"
    # main_pretrain.py saves its argparse arguments next to the weights
    torch.save({"model": official_names(method.state_dict()), "epoch": 799,
                "args": argparse.Namespace(model="mae_vit_tiny", norm_pix_loss=True)}, path)
    assert read_state_dict(path)[1] == "official_mae"
    fresh = tiny_mae(1)
    report = load_method_weights(fresh, path)
    assert report["missing"] == [] and report["unexpected"] == []
    assert torch.equal(mae_output(fresh), mae_output(method))


def test_official_encoder_only_checkpoint(tmp_path):
    method = tiny_mae(0)
    encoder_state = {k: v for k, v in official_names(method.state_dict()).items()
                     if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder_state}, tmp_path / "mae_pretrain.pth")
    encoder = tiny_mae(1).encoder
    report = load_encoder(encoder, tmp_path / "mae_pretrain.pth")
    assert report["format"] == "official_mae" and report["missing"] == [] and report["dropped"] == []
    assert torch.equal(features(encoder), features(method.encoder))
    with pytest.raises(CheckpointError, match="decoder"):  # a whole MAE cannot be filled from an encoder
        load_method_weights(tiny_mae(2), tmp_path / "mae_pretrain.pth")


def test_official_full_checkpoint_into_encoder_drops_decoder(tmp_path):
    method = tiny_mae(0)
    torch.save({"model": official_names(method.state_dict())}, tmp_path / "full.pth")
    encoder = tiny_mae(1).encoder
    report = load_encoder(encoder, tmp_path / "full.pth")
    assert "decoder_pred.weight" in report["dropped"] and "mask_token" in report["dropped"]
    assert torch.equal(features(encoder), features(method.encoder))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_checkpoint_loads_into_encoder(tmp_path, suffix):
    torch.manual_seed(3)
    model = timm.create_model("vit_base_patch16_224", **{**TIMM_ARGS, "num_classes": 5}).eval()
    path = tmp_path / f"timm{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    assert read_state_dict(path)[1] == "timm"
    encoder = tiny_mae(0).encoder
    report = load_encoder(encoder, path)
    assert sorted(report["dropped"]) == ["head.bias", "head.weight"]
    with torch.no_grad():
        assert torch.allclose(features(encoder), model.forward_features(images()), atol=1e-6)


def test_lightning_checkpoint(tmp_path):
    method = tiny_mae(0)
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 40, "pytorch-lightning_version": "2.6.0",
                "state_dict": {"method." + k: v for k, v in method.state_dict().items()},
                "hyper_parameters": {"lr": 1e-3}}, path)
    assert read_state_dict(path)[1] == "lightning"
    fresh = tiny_mae(1)
    load_method_weights(fresh, path)
    assert torch.equal(mae_output(fresh), mae_output(method))
    encoder = tiny_mae(2).encoder
    assert load_encoder(encoder, path)["format"] == "lightning"
    assert torch.equal(features(encoder), features(method.encoder))


@pytest.mark.parametrize("source", ["method", "encoder", "path"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_export_timm_loads_strictly(tmp_path, source, suffix):
    method = tiny_mae(0)
    if source == "path":
        torch.save({"model": official_names(method.state_dict())}, tmp_path / "official.pth")
    given = {"method": method, "encoder": method.encoder, "path": tmp_path / "official.pth"}[source]
    out = export_timm(given, tmp_path / f"export{suffix}")
    state, fmt = read_state_dict(out)
    assert fmt == "timm"
    model = timm.create_model("vit_base_patch16_224", **TIMM_ARGS).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(images()), features(method.encoder), atol=1e-6)


def test_timm_kwargs_build_a_matching_model(tmp_path):
    encoder = ViTEncoder(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                         mlp_ratio=2.0, class_token=False)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, **timm_kwargs(encoder))
    model.load_state_dict(read_state_dict(export_timm(encoder, tmp_path / "e.safetensors"))[0], strict=True)


def test_a_layer_scale_encoder_matches_timm_rebuilds_from_its_config_and_a_plain_one_refuses_it(tmp_path):
    """BEiT / CAE / SimMIM blocks scale each residual branch by a learned vector (timm's `init_values`)."""
    from mimkit.core.finetune import encoder_config

    torch.manual_seed(0)
    encoder = ViTEncoder(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                         layer_scale=0.1).eval()
    gammas = [block.ls1.gamma for block in encoder.blocks] + [block.ls2.gamma for block in encoder.blocks]
    assert all(torch.equal(g, torch.full((32,), 0.1)) for g in gammas)  # starts at the given value, then learns
    with torch.no_grad():
        for gamma in gammas:
            gamma.uniform_(0.01, 2.0)  # as after training: the export must carry every entry
    path = export_timm(encoder, tmp_path / "ls.safetensors")
    model = timm.create_model("vit_base_patch16_224", **{**TIMM_ARGS, "class_token": True},
                              init_values=timm_kwargs(encoder)["init_values"]).eval()
    model.load_state_dict(read_state_dict(path)[0], strict=True)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(images()), features(encoder), atol=1e-5)
    rebuilt = ViTEncoder(**encoder_config(encoder)).eval()  # what a saved fine-tuned model is rebuilt from
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    assert torch.equal(features(rebuilt), features(encoder))
    plain = ViTEncoder(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(CheckpointError, match="ls1.gamma"):
        load_encoder(plain, path)
    with pytest.raises(ConfigError, match="layer_scale"):
        ViTEncoder(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, layer_scale=0.0)


@pytest.mark.parametrize("name,official", [("cae", 0.1), ("simmim", 0.1), ("mae", None)])
def test_layer_scale_defaults_are_the_official_encoders(name, official):
    """CAE (--layer_scale_init_value 0.1) and SimMIM (MODEL.VIT.INIT_VALUES 0.1) train BEiT-style blocks; MAE not."""
    config = {k: v for k, v in CONFIG.items() if not k.startswith("decoder") or name != "simmim"}
    encoder = build_method(name, **config).encoder
    assert encoder.layer_scale == official
    assert all((block.ls1.gamma[0].item() == pytest.approx(official)) if official else not hasattr(block.ls1, "gamma")
               for block in encoder.blocks)


class NotATensor:
    pass


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"cls_token": torch.zeros(1)}, "payload": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights_only") as error:
        read_state_dict(path)
    assert str(path) in str(error.value)


def test_bad_files_name_the_path(tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(CheckpointError, match="does not exist") as error:
        read_state_dict(missing)
    assert str(missing) in str(error.value)
    good = export_timm(tiny_mae(0), tmp_path / "good.safetensors")
    good_pth = export_timm(tiny_mae(0), tmp_path / "good.pth")
    for name, data in [("garbage.pth", b"not a checkpoint at all"), ("garbage.safetensors", b"\x00" * 40),
                       ("cut.safetensors", good.read_bytes()[:200]), ("cut.pth", good_pth.read_bytes()[:300])]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as error:
            load_encoder(tiny_mae(0).encoder, path)
        assert str(path) in str(error.value)


def test_unknown_layout_names_first_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "bn1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="conv1.weight") as error:
        read_state_dict(path)
    assert str(path) in str(error.value)
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no tensors.*epoch"):
        read_state_dict(tmp_path / "empty.pth")


def test_pos_embed_resized_from_4x4_to_8x8(tmp_path):
    small = ViTEncoder(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, pos_embed="learned")
    with torch.no_grad():  # channel 0 encodes the row, channel 1 the column of each patch
        rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
        small.pos_embed[0, 1:, 0] = rows.flatten()
        small.pos_embed[0, 1:, 1] = cols.flatten()
    path = export_timm(small, tmp_path / "small.safetensors")
    large = ViTEncoder(img_size=64, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, pos_embed="learned")
    report = load_encoder(large, path)
    assert report["resized"] == ["pos_embed"]
    pos = large.pos_embed.detach()
    assert pos.shape == (1, 65, 32)
    assert torch.equal(pos[0, 0], small.pos_embed[0, 0].detach())  # the class token's position is kept
    row_map, col_map = pos[0, 1:, 0].reshape(8, 8), pos[0, 1:, 1].reshape(8, 8)
    assert torch.allclose(row_map, row_map[:, :1].expand(8, 8), atol=1e-5)  # rows stay rows...
    assert torch.allclose(col_map, col_map[:1, :].expand(8, 8), atol=1e-5)  # ...columns stay columns
    assert (row_map[1:, 0] > row_map[:-1, 0]).all() and row_map[0, 0] < 0.5 and row_map[-1, 0] > 2.5
    assert large.forward_features(torch.randn(1, 1, 64, 64)).shape == (1, 65, 32)


def test_unfixable_shapes_name_key_and_shapes(tmp_path):
    path = export_timm(tiny_mae(0), tmp_path / "one_channel.safetensors")
    three = ViTEncoder(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(CheckpointError, match=r"patch_embed.proj.weight.*\(32, 1, 8, 8\).*\(32, 3, 8, 8\)"):
        load_encoder(three, path)
    wide = ViTEncoder(img_size=32, patch_size=8, in_chans=1, embed_dim=64, depth=2, num_heads=2)
    with pytest.raises(CheckpointError, match=r"has shape \(.*32,?\), the model expects \(.*64,?\)"):
        load_encoder(wide, path)
    # the optional hook adapts the input channels when asked to
    report = load_encoder(three, path, adapt_in_chans=lambda w, n: w.repeat(1, n, 1, 1) / n)
    assert report["resized"] == ["patch_embed.proj.weight"]
    assert torch.allclose(three.patch_embed.proj.weight[:, 2], tiny_mae(0).encoder.patch_embed.proj.weight[:, 0] / 3)


def test_strict_false_reports_missing(tmp_path):
    state = {k: v for k, v in tiny_mae(0).encoder.state_dict().items() if not k.startswith("blocks.1.")}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="blocks.1"):
        load_encoder(tiny_mae(1).encoder, tmp_path / "partial.pth")
    report = load_encoder(tiny_mae(1).encoder, tmp_path / "partial.pth", strict=False)
    assert report["missing"] and all(k.startswith("blocks.1.") for k in report["missing"])


def test_a_text_file_is_named_as_not_a_checkpoint(tmp_path):
    from mimkit.core.checkpoints import read_state_dict
    from mimkit.core.errors import CheckpointError

    for name, text in (("word.pth", "garbage\n"), ("notes.pth", "these are notes, not weights\n")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(CheckpointError) as error:
            read_state_dict(path)
        message = str(error.value)
        assert name in message and "refused" not in message  # not mistaken for an unsafe pickle
        assert "is not a PyTorch or safetensors file" in message or "cannot be read as a PyTorch file" in message
