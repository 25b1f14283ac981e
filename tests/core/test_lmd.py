"""LMD: an MAE on a frozen KL autoencoder's latents, with LMD's growing mask ratio; the first-stage command."""
import json
import math

import pytest
import torch

from mimkit.core import build_method
from mimkit.core.autoencoders import (FrozenAutoencoder, KLAutoencoder, autoencoder_loss, build_autoencoder,
                                      load_autoencoder, save_autoencoder)
from mimkit.core.cli import main
from mimkit.core.errors import CheckpointError, ConfigError
from mimkit.core.masking import RatioSchedule
from mimkit.core.methods.lmd import lmd_schedule
from mimkit.core.registry import method_arguments
from mimkit.core.train import parameter_groups

# a 2x first stage (two levels) at 32 px: latents 4 x 16 x 16; an 8-px token covers 4 x 4 latent cells
FIRST_STAGE = dict(channels=[8, 16], latent_channels=4)
TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=2, allow_random_autoencoder=True, autoencoder_kwargs=FIRST_STAGE)


CROPS = dict(origin=(0, 96), step=(64, 32))  # where this file's astronaut crops start and move


def build(**kwargs):
    torch.manual_seed(0)
    return build_method("lmd", **{**TINY, **kwargs})


def official_cosine(step: int, total: int) -> float:
    """engine_pretrain.py's cosine schedule, written from its definition (s = 0.008, 0.15 -> 0.75 over 2/3)."""
    ramp = int(total * 2 / 3)
    if step > total * 2 / 3:
        return 0.75
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return 0.15 + 0.6 * (1 - f(step / ramp) / f(0))


def test_defaults_follow_the_official_code():
    args = method_arguments("lmd")
    assert args["mask_schedule"] == "cosine" and args["norm_pix_loss"] is True
    assert (args["mask_ratio_start"], args["mask_ratio_hold"], args["mask_ratio_end"]) == (0.15, 0.40, 0.75)
    assert args["encoder.img_size"] == 224 and args["encoder.patch_size"] == 32 and args["encoder.embed_dim"] == 768
    assert (args["decoder_embed_dim"], args["decoder_depth"]) == (512, 8) and args["autoencoder_scale"] == 1.0
    with pytest.raises(ConfigError, match="no first-stage autoencoder"):
        build_method("lmd", **{k: v for k, v in TINY.items() if k != "allow_random_autoencoder"})
    with pytest.raises(ConfigError, match="multiple of the autoencoder's downsampling factor 2"):
        build(patch_size=(8, 5), img_size=(32, 40))
    with pytest.raises(ConfigError, match="mask_schedule"):
        build(mask_schedule="exponential")


def test_each_schedule_at_its_knots():
    total = 600
    cosine = lmd_schedule("cosine", total)
    for step in (0, 1, 50, 100, 200, 300, 399, 400, 401, 500, 600):
        assert cosine(step) == pytest.approx(official_cosine(step, total), abs=1e-12), step
    assert cosine(0) == pytest.approx(0.15) and cosine(400) == pytest.approx(0.75) and cosine(600) == 0.75
    assert cosine(100) < 0.15 + 0.6 * 100 / 400  # the cosine curve starts slower than a straight line
    piecewise = lmd_schedule("piecewise", total)
    knots = {0: 0.15, 50: 0.275, 100: 0.40, 150: 0.40, 200: 0.40, 300: 0.575, 400: 0.75, 500: 0.75, 600: 0.75}
    for step, value in knots.items():
        assert piecewise(step) == pytest.approx(value), step
    linear = lmd_schedule("linear", total)
    assert [linear(s) for s in (0, 300, 600)] == pytest.approx([0.15, 0.45, 0.75])
    assert lmd_schedule("constant", total)(0) == 0.75
    for bad in (dict(knots=(0.1, 1.0), values=(0.1, 0.2)), dict(knots=(0, 0.5, 0.4), values=(0.1, 0.2, 0.3)),
                dict(knots=(0, 1), values=(0.1,))):
        with pytest.raises(ConfigError, match="piecewise"):
            RatioSchedule("piecewise", **bad)
    with pytest.raises(ConfigError, match="ramp"):
        RatioSchedule("diffusion_cosine", 0.15, 0.75, 100, ramp=0)


def test_the_method_masks_at_the_scheduled_ratio(astronaut_crops_of):
    model = build(total_steps=600, mask_schedule="piecewise")
    images = astronaut_crops_of(2, **CROPS)
    for step, ratio in ((0, 0.15), (150, 0.40), (300, 0.575), (600, 0.75), (None, 0.75)):
        out = model({"image": images}, step=step)
        hidden = out.mask.sum(1)
        assert torch.all(hidden == model.masker.num_masked(16, step if step is not None else 600))
        assert abs(float(hidden[0]) / 16 - ratio) <= 1 / 16 + 1e-9, (step, hidden)
    assert build()({"image": images}).mask.sum(1)[0] == model.masker.num_masked(16, 600)  # no total: the end ratio


def test_the_mae_never_sees_pixels(astronaut_crops_of):
    model = build()
    images = astronaut_crops_of(2, **CROPS)
    seen = []
    model.encoder.patch_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    torch.manual_seed(1)
    out = model({"image": images})
    latents = model.encoder.autoencoder.latents(images)
    assert latents.shape == (2, 4, 16, 16)
    assert len(seen) == 1 and torch.equal(seen[0], latents)  # the patch embedding reads latents, not pixels
    # the loss depends on the pixels only through the latents: other images with the same latents, same loss
    fixed, noise = latents.clone(), torch.randn_like(images)
    model.encoder.autoencoder.latents = lambda x: fixed
    torch.manual_seed(1)
    other = model({"image": noise})
    assert torch.equal(other.loss, out.loss)
    # and the target is the latent patches (norm-pix), not pixel patches
    assert out.pred.shape == (2, 16, 4 * 4 * 4)


def test_the_autoencoder_gets_no_gradient_and_stays_frozen(astronaut_crops_of):
    model = build()
    first_stage = model.encoder.autoencoder
    before = {k: v.clone() for k, v in first_stage.state_dict().items()}
    assert all(not p.requires_grad for p in first_stage.parameters())
    trainable = {id(p) for group in parameter_groups(model, 0.05) for p in group["params"]}
    assert not trainable & {id(p) for p in first_stage.parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # even an optimiser over every parameter
    model.train()
    assert not first_stage.training and not first_stage.model.training
    for _ in range(3):
        opt.zero_grad()
        model({"image": astronaut_crops_of(2, **CROPS)}).loss.backward()
        opt.step()
    assert all(p.grad is None for p in first_stage.parameters())
    assert all(torch.equal(v, first_stage.state_dict()[k]) for k, v in before.items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.blocks.parameters())


def test_reconstructions_are_decoded_back_to_pixels(astronaut_crops_of):
    model = build()
    images = astronaut_crops_of(2, **CROPS)
    out = model({"image": images})
    latents = model.encoder.autoencoder.latents(images)
    out.pred = model.target(latents)  # a perfect prediction of the (normalised) latent patches
    rebuilt = model.reconstruct({"image": images}, out)
    assert rebuilt.shape == images.shape
    assert torch.allclose(rebuilt, model.encoder.autoencoder.decode(latents), atol=1e-4)


def test_loss_falls_on_fixed_data(fixed_batch_training, astronaut_crops_of):
    model = build(mask_schedule="constant")
    run = fixed_batch_training(model, {"image": astronaut_crops_of(4, **CROPS)}, steps=40, reseed=4)
    assert run.last() < 0.8 * run.first(), run.losses


def test_first_stage_learns_and_its_file_round_trips(tmp_path, astronaut_crops_of):
    torch.manual_seed(0)
    vae = KLAutoencoder(3, **FIRST_STAGE)
    images = astronaut_crops_of(4, **CROPS)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        recon, posterior = vae(images)
        parts = autoencoder_loss(images, recon, posterior)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(parts["reconstruction"].item())
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses
    path = save_autoencoder(vae, tmp_path / "ae.safetensors", {"steps": 40})
    loaded, extra = load_autoencoder(path)
    assert extra == {"steps": 40} and loaded.downsample == 2
    with torch.no_grad():
        assert torch.equal(loaded.encode(images).mode(), vae.encode(images).mode())
    frozen = build_autoencoder(str(path))
    assert isinstance(frozen, FrozenAutoencoder) and frozen.latents(images).shape == (4, 4, 16, 16)
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="other.safetensors"):
        build_autoencoder(str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="does not exist"):
        build_autoencoder(str(tmp_path / "missing.safetensors"))


def test_a_local_diffusers_autoencoder_reads_pixels_in_its_own_range(tmp_path, astronaut_crops_of):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  latent_channels=4, norm_num_groups=8, sample_size=32)
    vae.save_pretrained(tmp_path / "vae")
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    with pytest.raises(ConfigError, match="autoencoder_data_mean"):
        build(autoencoder=str(tmp_path / "vae"), autoencoder_kwargs=None)
    model = build(autoencoder=str(tmp_path / "vae"), autoencoder_kwargs=None, autoencoder_data_mean=mean,
                  autoencoder_data_std=std)
    images = astronaut_crops_of(2, **CROPS)
    pixels = images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = vae.encode(2 * pixels - 1).latent_dist.mode()
    assert torch.allclose(model.encoder.autoencoder.latents(images), expected, atol=1e-5)
    assert model({"image": images}).loss.isfinite() and model.encoder.latent_size == (16, 16)


def test_first_stage_command_then_lmd_pretrain_and_knn(tmp_path, make_pngs):
    images = make_pngs(tmp_path / "images", 12, channels=3)
    train = make_pngs(tmp_path / "train", 9, classes=3, seed=1, channels=3)
    test = make_pngs(tmp_path / "test", 6, classes=3, seed=2, channels=3)
    stage = tmp_path / "stage1"
    assert main(["autoencoder", "--data", str(images), "--out", str(stage), "--img-size", "32", "--channels", "[8, 16]",
                 "--max-steps", "3", "--batch-size", "4", "--num-workers", "0", "--accelerator", "cpu",
                 "--no-progress"]) == 0
    summary = json.loads((stage / "metrics.json").read_text())["autoencoder"]
    assert summary["steps"] == 3 and summary["downsample"] == 2
    assert (stage / "pictures" / "reconstruction.png").is_file()
    run = tmp_path / "lmd"
    assert main(["pretrain", "--method", "lmd", "--data", str(images), "--out", str(run), "--img-size", "32",
                 "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--batch-size", "4",
                 "--num-workers", "0", "--no-progress", "--accelerator", "cpu", "--max-steps", "2",
                 "--set", "decoder_embed_dim=32", "--set", "decoder_depth=1", "--set", "decoder_num_heads=2",
                 "--set", f"autoencoder={stage / 'autoencoder.safetensors'}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "lmd" and metrics["train"]["steps"] == 2
    assert (run / "pictures" / "reconstruction.png").is_file()
    assert main(["evaluate", "--run", str(run), "--protocol", "knn", "--train", str(train), "--test", str(test),
                 "--k", "3"]) == 0
    # the linear probe reads the encoder through a head (which asks the patch embedding for the images' token grid)
    assert main(["evaluate", "--run", str(run), "--protocol", "linear", "--train", str(train), "--test", str(test),
                 "--epochs", "2"]) == 0
    results = json.loads((run / "metrics.json").read_text())["results"]
    assert [r["protocol"] for r in results] == ["knn", "knn", "linear", "linear"]
    assert all(0 <= r["value"] <= 100 for r in results)
