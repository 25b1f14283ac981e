"""The contract every registered method meets, checked on a tiny build of each: forward in 2D (and in 3D where the
method trains on volumes) with a finite loss, gradients that reach the encoder, `reconstruct` at the image's
shape, a safetensors round trip, timm export of a plain ViT encoder, a signature jsonargparse can read; and the
one encoder configuration (flat keys, `encoder=`, conflicts) every method takes."""
import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import Attention

from mimkit.core import build_method, list_methods
from mimkit.core.checkpoints import export_timm, load_method, save_method, timm_kwargs
from mimkit.core.encoders import EncoderConfig, PatchEmbed, ViTEncoder, encoder_config
from mimkit.core.errors import ConfigError
from mimkit.core.registry import method_arguments, method_class, method_config

ENCODER = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2)
DECODER = dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)  # for the methods that take them
# a tiny random teacher that can be written into a method's saved config (no module objects)
TEACHER = dict(teacher="vit_tiny_patch16_224", allow_random_teacher=True,
               teacher_kwargs=dict(patch_size=8, depth=2, embed_dim=48, num_heads=2))
# what a method needs beyond the tiny encoder and decoder
EXTRA = {
    "cae": dict(regressor_depth=1),
    "gm_df": dict(text_width=32, text_depth=1, text_heads=2, context_length=24, text_embed_dim=32),
    "hiend_mae": dict(decoder_layers=(2, 1), decoder_self_depth=1),
    "lmd": dict(allow_random_autoencoder=True, autoencoder_kwargs=dict(channels=[8, 16])),  # a fresh 2x first stage
    "m3ae": dict(text_width=32, text_depth=1, text_num_heads=2, hidden_size=32, fusion_layers=2, fusion_num_heads=2,
                 mim_layer=1, context_length=24),
    "maskalign": dict(**TEACHER, aligned_layers=2),
    "maskembed": dict(**TEACHER, student_init="random"),
    "memmc_mae": dict(num_memory=4),
    "mom": dict(object_dim=32, object_depth=1, object_decoder_depth=1, object_num_heads=2, crop_size=(16, 16),
                min_box_size=(2, 2)),
    "mrmae": TEACHER,
    "pigeon": dict(num_codes=64, code_dim=8, tokenizer_decoder_dim=32, tokenizer_decoder_depth=1,
                   tokenizer_decoder_heads=2, reconstructor_width=32, reconstructor_depth=1, reconstructor_num_heads=2,
                   generator_heads=2),
    "simmim": dict(mask_patch_size=16),
    "smarties": dict(in_chans=None, sensor="rgb"),
    "tip": dict(image_encoder="vit", categorical_sizes=[3, 4], num_continuous=2, tabular_embed_dim=32, tabular_depth=1,
                multimodal_embed_dim=32, multimodal_depth=1, tabular_num_heads=2, projection_dim=16),
    "uni4eye": dict(volume_size=16, volume_patch_size=8),
    "urfound": dict(text_width=32, text_depth=1, text_num_heads=2, context_length=24),
    # random frozen CLIP-type and MAE encoders (tests only)
    "xformer": dict(clip_model="vit_tiny_patch16_224", allow_random_encoders=True,
                    clip_kwargs=dict(patch_size=8, depth=2, embed_dim=48, num_heads=2),
                    num_queries=4, query_width=32, query_depth=1, query_num_heads=2,
                    text_width=32, text_depth=1, text_num_heads=2, context_length=16, fusion_depth=1, caption_depth=1,
                    projection_dim=16),
    # random judges (tests only), a 3-level image decoder for 8-pixel patches, a tiny discriminator
    "vec2face": dict(identity_network="random", perceptual_net="squeeze", perceptual_backbone="random", z_channels=16,
                     decoder_channels=16, channel_multipliers=(1, 1, 2, 2), discriminator_dims=(8, 16)),
}
EXTRA_3D = {"simmim": dict(mask_patch_size=8)}  # 16^3 volumes of 8^3 patches: mask single patches
# methods whose 2D-configured encoder also takes 3D volumes (Uni4Eye's unified patch embedding)
VOLUMES_IN_2D_ENCODER = {"uni4eye"}
# MaskEmbed's output head starts at zero (reference code), so the encoder's first gradient is zero: one step first
STEPS_BEFORE_GRADIENT_CHECK = {"maskembed": 1}
METHODS = list_methods()


def config(name: str, spatial_dims: int = 2) -> dict:
    takes = method_arguments(name)
    out = {**ENCODER, **{k: v for k, v in DECODER.items() if k in takes}, **EXTRA.get(name, {})}
    out["spatial_dims"] = spatial_dims
    if spatial_dims == 3:
        out.update(img_size=16, **EXTRA_3D.get(name, {}))
    return out


def batch(name: str, cfg: dict, volume: bool = False, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    side = cfg["img_size"] * (2 if name == "urfound" else 1)  # UrFound reads images at target_scale x img_size
    shape = (2, cfg["in_chans"] or 3, *([16] * 3 if volume else [side] * cfg.get("spatial_dims", 2)))
    out = {"image": torch.rand(*shape, generator=g)}
    if name == "urfound":
        out["text"] = ["A fundus photograph of glaucoma", "An OCT image shows drusen"]
    if name in ("m3ae", "xformer"):
        out["text"] = ["a handwritten digit seven", "a handwritten digit three"]
    if name == "pigeon":  # two history images per target
        out["history"] = torch.rand(2, 2, *shape[1:], generator=g)
    if name == "tip":  # a table row per image: 2 categorical columns (3 and 4 categories), 2 continuous, one missing
        out["tabular"] = torch.tensor([[2, 0, 0.5, -1.0], [1, 3, -0.2, 0.7]])
        out["tabular_missing"] = torch.tensor([[False, False, True, False], [False, False, False, False]])
    if name == "mom":  # per-object boxes (x1, y1, x2, y2; NaN rows pad) and distances
        out["boxes"] = torch.tensor([[[2, 3, 20, 25], [10, 0, 31, 12]], [[0, 0, 16, 16], [float("nan")] * 4]])
        out["distances"] = torch.tensor([[4.0, 9.0], [2.5, float("nan")]])
    return out


def build(name: str, cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_method(name, **cfg)


def check_step(name: str, model, data: dict) -> None:
    """Finite loss, some encoder parameter gets a gradient, `reconstruct` (when it gives pixels) matches the image."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(STEPS_BEFORE_GRADIENT_CHECK.get(name, 0)):
        opt.zero_grad()
        model(data).loss.backward()
        opt.step()
    opt.zero_grad()
    torch.manual_seed(1)
    out = model(data)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss), out.loss
    assert all(torch.isfinite(v).all() for v in out.parts.values()), out.parts
    out.loss.backward()
    grads = [p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None]
    assert grads and max(grads) > 0, "the loss does not reach the encoder"
    with torch.no_grad():
        rebuilt = model.reconstruct(data, out)
    if rebuilt is not None:
        assert rebuilt.shape == data["image"].shape


@pytest.mark.parametrize("name", METHODS)
def test_forward_backward_reconstruct_2d(name):
    cfg = config(name)
    check_step(name, build(name, cfg), batch(name, cfg))


@pytest.mark.parametrize("name", METHODS)
def test_forward_backward_reconstruct_3d_or_refused(name):
    cls = method_class(name)
    if name in VOLUMES_IN_2D_ENCODER:
        cfg = config(name)
        check_step(name, build(name, cfg), batch(name, cfg, volume=True))
    elif 3 in cls.supported_dims:
        cfg = config(name, spatial_dims=3)
        check_step(name, build(name, cfg), batch(name, cfg))
    else:  # a 2D method says so when asked for 3D, instead of failing deep inside
        with pytest.raises(ConfigError, match="spatial_dims"):
            build(name, config(name, spatial_dims=3))


@pytest.mark.parametrize("name", METHODS)
def test_safetensors_round_trip_gives_the_same_loss(name, tmp_path):
    cfg = config(name)
    model, data = build(name, cfg), batch(name, cfg)

    def loss(method) -> float:
        method.eval()
        torch.manual_seed(3)
        with torch.no_grad():
            return method(data).loss.item()

    before = loss(model)
    loaded, stored = load_method(save_method(model, tmp_path / f"{name}.safetensors", cfg))
    assert type(loaded) is type(model) and stored["encoder"]["embed_dim"] == 32
    assert loss(loaded) == pytest.approx(before, rel=1e-6, abs=1e-7)
    assert loss(build(name, cfg, seed=5)) != pytest.approx(before, rel=1e-6, abs=1e-7)  # a fresh model differs


def plain_vit(encoder) -> bool:
    return (type(encoder) is ViTEncoder and type(encoder.patch_embed) is PatchEmbed and encoder.spatial_dims == 2
            and all(type(block.attn) is Attention for block in encoder.blocks))


@pytest.mark.parametrize("name", METHODS)
def test_timm_export_of_a_plain_vit_encoder(name, tmp_path):
    model = build(name, config(name)).eval()
    if not plain_vit(model.encoder):
        pytest.skip(f"{name}'s encoder is not a plain ViT ({type(model.encoder).__name__})")
    path = export_timm(model, tmp_path / "encoder.safetensors")
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, **timm_kwargs(model.encoder)).eval()
    vit.load_state_dict(load_file(path), strict=True)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit.forward_features(images), model.encoder.forward_features(images), atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_signature_is_readable_by_jsonargparse(name):
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(method_class(name), "model")
    parsed = parser.parse_args(["--model.encoder.embed_dim", "64", "--model.encoder.img_size", "[32, 48]"])
    defaults = method_arguments(name)
    assert parsed.model.encoder.embed_dim == 64 and tuple(parsed.model.encoder.img_size) == (32, 48)
    assert parsed.model.encoder.depth == defaults["encoder.depth"]  # the method's own default encoder


def test_encoder_fields_flat_nested_or_as_an_object():
    flat = build_method("mae", **ENCODER, **DECODER)
    nested = build_method("mae", encoder=ENCODER, **DECODER)
    whole = build_method("mae", encoder=EncoderConfig(**ENCODER), **DECODER)
    for model in (flat, nested, whole):
        assert model.encoder.embed_dim == 32 and model.encoder.img_size == (32, 32) and len(model.encoder.blocks) == 2
    # a mapping keeps the method's default for the fields it does not give: MAE's ViT-L/16
    partial = method_config("mae", {"encoder": {"img_size": 32}, "mask_ratio": 0.5})
    assert partial["encoder"] == EncoderConfig(img_size=32, embed_dim=1024, depth=24, num_heads=16)
    assert partial["mask_ratio"] == 0.5
    with pytest.raises(ConfigError, match="embed_dim given both"):
        build_method("mae", encoder={"embed_dim": 64}, embed_dim=32)
    with pytest.raises(ConfigError, match="img_size given both"):
        build_method("mae", encoder=EncoderConfig(**ENCODER), img_size=32)
    with pytest.raises(ConfigError, match="no field"):
        build_method("mae", encoder={"width": 64})
    with pytest.raises(ConfigError, match="no argument"):
        build_method("mae", **ENCODER, widht=64)


def test_a_named_size_sets_the_three_numbers_and_explicit_numbers_replace_it():
    assert (EncoderConfig(size="small").embed_dim, EncoderConfig(size="small").num_heads) == (384, 6)
    with pytest.raises(ConfigError, match="give one or the other"):
        build_method("mae", size="small", embed_dim=64)
    small = method_config("mae", {"size": "small"})["encoder"]
    assert (small.embed_dim, small.depth, small.num_heads) == (384, 12, 6)
    # a number given over a sized config replaces the size; the size's other numbers stay
    recipe = method_config("simmim", {"size": "base"})["encoder"]
    changed = encoder_config(recipe, embed_dim=64)
    assert (changed.size, changed.embed_dim, changed.depth, changed.num_heads) == (None, 64, 12, 12)
    with pytest.raises(ConfigError, match="unknown model size"):
        EncoderConfig(size="gigantic")
    # lists (from JSON or YAML) become tuples, so configs read back compare equal
    assert EncoderConfig(img_size=[32, 48]) == EncoderConfig(img_size=(32, 48))


def test_method_arguments_show_each_methods_paper_encoder():
    args = {name: method_arguments(name) for name in ("mae", "cropmae", "hiend_mae")}
    assert args["mae"]["encoder.embed_dim"] == 1024 and args["mae"]["encoder.depth"] == 24          # ViT-L/16
    assert args["cropmae"]["encoder.embed_dim"] == 384 and args["cropmae"]["encoder.num_heads"] == 6  # ViT-S/16
    assert args["hiend_mae"]["encoder.spatial_dims"] == 3 and args["hiend_mae"]["encoder.patch_size"] == 12
    assert not any(key in args["mae"] for key in ("embed_dim", "img_size", "encoder"))
