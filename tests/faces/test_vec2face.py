"""Vec2Face (faces/methods/vec2face.py): the truncated-normal mask ratio, MAGE drop/mask sets, the identity token in
masked places, the per-dimension expansion, the loss terms and their official weights, the discriminator's
start and LSGAN loss, LPIPS with a local backbone file, and the loss falling on real faces (faces.synthetic:
scikit-image's LFW crops, astronaut, matplotlib's Grace Hopper)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mimkit.core import build_method
from mimkit.core.errors import ConfigError, DataError
from mimkit.faces.methods.vec2face import TruncatedNormalRatio, build_lpips, identity_token_mask

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=2, identity_network="random", perceptual_net="squeeze", perceptual_backbone="random",
            z_channels=16, decoder_channels=8, channel_multipliers=(1, 1, 2, 2), res_blocks=1,
            discriminator_dims=(8, 16))


def tiny(**overrides):
    torch.manual_seed(0)
    return build_method("vec2face", **{**TINY, **overrides})


@pytest.fixture(scope="module")
def faces():
    """Eight real faces at 32 px in [-1, 1] (the official normalisation)."""
    from mimkit.faces.synthetic import real_faces

    chosen = [image for _, image in real_faces(32)][-8:]  # 6 LFW crops, astronaut, Grace Hopper
    return torch.tensor(np.stack(chosen)).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_mask_ratio_follows_its_truncated_normal():
    torch.manual_seed(0)
    draw = TruncatedNormalRatio(0.5, 1.0, 0.75, 0.25)  # official training arguments
    samples = draw.sample(20000).numpy()
    assert samples.min() >= 0.5 and samples.max() <= 1.0
    reference = stats.truncnorm((0.5 - 0.75) / 0.25, (1.0 - 0.75) / 0.25, loc=0.75, scale=0.25)
    assert samples.mean() == pytest.approx(reference.mean(), abs=0.005)
    assert samples.std() == pytest.approx(reference.std(), abs=0.005)
    assert stats.kstest(samples, reference.cdf).pvalue > 0.01
    # not the untruncated normal: a quarter of its mass would lie outside [0.5, 1]
    assert stats.kstest(samples, stats.norm(0.75, 0.25).cdf).pvalue < 1e-6
    # one draw per batch: the model draws a single ratio per forward
    model = tiny()
    assert model.train_ratio.mean == 0.75 and model.generation_ratio.mean == 0.15  # image_generation.py: 0.15


def test_dropped_tokens_are_masked_and_counts_follow_the_ratios():
    torch.manual_seed(0)
    for ratio in (0.5, 0.62, 0.9, 1.0):
        ids_keep, dropped, masked = identity_token_mask(4, 49, ratio, 0.5)
        assert (dropped.sum(1) == math.ceil(49 * 0.5)).all() and (masked.sum(1) == math.ceil(49 * ratio)).all()
        assert not (dropped & ~masked).any()  # every dropped token is a masked one
        kept = torch.zeros_like(dropped).scatter(1, ids_keep, True)
        assert torch.equal(kept, ~dropped) and (ids_keep.diff(dim=1) > 0).all()  # the others, in order


def test_expansion_is_one_linear_map_per_dimension():
    model = tiny()
    vectors = torch.randn(3, 512)
    identity, features = model.tokens(vectors)
    assert identity.shape == (3, 32) and features.shape == (3, 16, 32)  # 4 x 4 tokens of width 32
    w, b = model.expand.weight[:, 0], model.expand.bias  # Linear(1, N) applied to each of the D coordinates
    expected = identity[:, None, :] * w[None, :, None] + b[None, :, None]
    assert torch.allclose(features, expected, atol=1e-6)
    with pytest.raises(DataError, match=r"\(B, 512\)"):
        model.tokens(torch.randn(3, 128))


def test_masked_places_hold_the_identity_token():
    """At ratio 1 every feature token is replaced by the identity token, so the expansion cannot matter; at the
    drop ratio (nothing masked beyond the dropped) it does."""
    model = tiny().eval()
    vectors = torch.randn(2, 512)

    def image(ratio, seed=3):
        torch.manual_seed(seed)
        return model.forward_vectors(vectors, ratio, 0.5)[0]

    before_all, before_some = image(1.0), image(0.5)
    with torch.no_grad():
        model.expand.weight.add_(1.0)
    assert torch.allclose(image(1.0), before_all, atol=1e-6)
    assert not torch.allclose(image(0.5), before_some, atol=1e-3)


def test_loss_is_the_official_weighted_sum_of_its_parts(faces):
    model = tiny()
    assert model.weights == dict(pixel=1.0, perceptual=0.2, ssim=0.1, token=1.0, identity=1.0, adversarial=1.0)
    batch = {"image": faces[:4]}
    torch.manual_seed(1)
    out = model(batch, step=0)  # before the discriminator starts
    assert set(out.parts) == {"pixel", "perceptual", "ssim", "token", "identity"}
    total = sum(model.weights[k] * v for k, v in out.parts.items())
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-5)
    # the identity term compares the recognizer's feature of the generated image with the input vector
    vectors = model.identity_network(faces[:4])
    torch.manual_seed(1)
    given = model({**batch, "identity": vectors}, step=0)
    assert given.loss.item() == pytest.approx(out.loss.item(), rel=1e-5)
    rebuilt = model.reconstruct(batch, out)
    expected = 1 - F.cosine_similarity(model.identity_network(rebuilt), vectors, dim=-1).mean()
    assert out.parts["identity"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_discriminator_starts_late_with_the_lsgan_loss(faces):
    model = tiny(discriminator_start_step=100)
    batch = {"image": faces[:2]}
    early = model(batch, step=99)
    early.loss.backward()
    assert "discriminator" not in early.parts
    assert all(p.grad is None for p in model.discriminator.parameters())
    torch.manual_seed(2)
    late = model(batch, step=100)
    fake = model.reconstruct(batch, late)
    with torch.no_grad():
        real_logits, fake_logits = model.discriminator(faces[:2]), model.discriminator(fake)
    lsgan = 0.5 * (((real_logits - 1) ** 2).mean() + (fake_logits ** 2).mean())
    assert late.parts["discriminator"].item() == pytest.approx(lsgan.item(), rel=1e-4)
    assert late.parts["adversarial"].item() == pytest.approx(-fake_logits.mean().item(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("official", [True, False])
def test_what_trains_the_discriminator(faces, official):
    """Official loop: the discriminator's gradient is that of its LSGAN loss plus the generator term; the option
    leaves it the LSGAN loss alone."""
    model = tiny(discriminator_start_step=0, generator_term_trains_discriminator=official).eval()
    batch = {"image": faces[:2]}
    torch.manual_seed(4)
    out = model(batch, step=0)
    out.loss.backward()
    got = [p.grad.clone() for p in model.discriminator.parameters()]
    model.zero_grad()
    fake = model.reconstruct(batch, out).detach()
    d = model.discriminator
    lsgan = 0.5 * (((d(faces[:2]) - 1) ** 2).mean() + (d(fake) ** 2).mean())
    want = lsgan - d(fake).mean() if official else lsgan
    expected = torch.autograd.grad(want, list(d.parameters()))
    assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(got, expected))


def test_loss_falls_on_real_faces(faces, fixed_batch_training):
    model = tiny(discriminator_start_step=10**9)
    run = fixed_batch_training(model, {"image": faces[:4]}, steps=25, lr=5e-4, reseed=4)
    assert run.last() < 0.9 * run.first(), (run.first(), run.last())
    for part in ("pixel", "ssim", "identity"):
        assert run.last(part=part) < run.first(part=part), part
    assert float(model.identity_count) == 25 * 4  # the training vectors' mean length is recorded
    norms = model.identity_network(faces[:4]).norm(dim=-1)
    assert float(model.identity_norm) == pytest.approx(norms.mean().item(), rel=1e-4)


def test_generates_112_pixel_faces_with_the_official_decoder_depth():
    model = tiny(img_size=112, patch_size=16, channel_multipliers=(1, 1, 2, 2, 4), decoder_channels=8, z_channels=8,
                 perceptual_weight=0.0, discriminator_dims=(8, 16, 16, 16))
    images = model.generate(torch.randn(2, 512))
    assert images.shape == (2, 3, 112, 112) and images.abs().max() <= 1
    assert model.encoder.grid == (7, 7)  # 49 feature tokens, as the official model's
    assert model.discriminator(images).shape == (2, 1, 11, 11)  # its patch logits at 112 px


def test_lpips_backbone_from_a_local_torchvision_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    backbone = torchvision.models.squeezenet1_1(weights=None)
    path = tmp_path / "squeezenet.pth"
    torch.save(backbone.state_dict(), path)
    lpips_model = build_lpips("squeeze", str(path))
    assert torch.equal(lpips_model.net.slice1[0].weight, backbone.features[0].weight)
    assert not any(p.requires_grad for p in lpips_model.parameters())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert lpips_model(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert lpips_model(x, -x).item() > 0


def test_clear_errors():
    with pytest.raises(ConfigError, match="identity_network=PATH"):
        tiny(identity_network=None)
    with pytest.raises(ConfigError, match="perceptual_backbone=PATH"):
        tiny(perceptual_backbone=None)
    with pytest.raises(ConfigError, match="channel_multipliers"):
        tiny(channel_multipliers=(1, 2))
    with pytest.raises(ConfigError, match="decoder_embed_dim"):
        tiny(decoder_embed_dim=48)
    with pytest.raises(DataError, match=r"\(B, 3, 32, 32\)"):
        tiny(perceptual_weight=0.0)({"image": torch.rand(2, 3, 48, 48)})


def test_the_recipe_is_a_pretrain_config_with_the_official_values(capsys, tmp_path):
    import yaml
    from importlib import resources

    from mimkit.core.cli import main

    recipe = resources.files("mimkit.faces").joinpath("recipes", "vec2face.yaml")
    assert main(["pretrain", "--config", str(recipe), "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                 "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]
    assert config["method"] == "vec2face" and model["encoder"]["img_size"] == 112 and model["encoder"]["size"] == "base"
    assert (model["mask_ratio_min"], model["mask_ratio_max"], model["mask_ratio_mean"], model["mask_ratio_std"]) == \
        (0.5, 1.0, 0.75, 0.25)
    assert model["channel_multipliers"] == [1, 1, 2, 2, 4] and model["perceptual_weight"] == 0.2
    assert config["train"]["betas"] == [0.9, 0.99] and config["trainer"]["gradient_clip_val"] == 2.0
    assert config["train"]["strategy"] == "ddp_find_unused_parameters_true"
    assert config["data"]["mean"] == [0.5] * 3 and config["data"]["hflip"] is False


def test_a_pretraining_run_generates_faces(tmp_path):
    """Through the core's pretraining (Lightning, one run folder): the run records its vectors' length and the
    generate step reads the run folder."""
    from PIL import Image

    from mimkit.core import api
    from mimkit.core.data import ImageFolderData
    from mimkit.core.train import TrainConfig
    from mimkit.faces.generate import generate_dataset, load_generator
    from mimkit.faces.synthetic import real_faces

    (tmp_path / "faces").mkdir()
    for name, image in real_faces(32)[:8]:
        Image.fromarray(image).save(tmp_path / "faces" / f"{name}.png")
    encoder_keys = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")
    model = {**{k: v for k, v in TINY.items() if k not in encoder_keys},
             "encoder": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
             "discriminator_start_step": 1}
    data = ImageFolderData(root=str(tmp_path / "faces"), crop_scale=(1.0, 1.0), hflip=False, mean=[0.5] * 3,
                           std=[0.5] * 3)
    result = api.pretrain(data, str(tmp_path / "run"), method="vec2face", model=model,
                          train=TrainConfig(max_steps=3, batch_size=4, num_workers=0, progress=False, lr=1e-3))
    assert result["steps"] == 3
    generator = load_generator(tmp_path / "run")
    assert float(generator.identity_count) == 12 and float(generator.identity_norm) > 0
    summary = generate_dataset(generator, tmp_path / "generated", identities=2, images_per_identity=3)
    assert summary["images"] == 6 and summary["norm"] == pytest.approx(float(generator.identity_norm))
