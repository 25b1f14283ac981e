"""UMD: one adaLN ViT autoencoder that unmasks clean images and denoises masked noised ones; DDIM sampling."""
import json
import math

import pytest
import torch
from PIL import Image

from mimkit.core import build_method
from mimkit.core.cli import main
from mimkit.core.diffusion import NoiseSchedule, beta_schedule
from mimkit.core.errors import ConfigError
from mimkit.core.registry import method_arguments

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, decoder_depth=1)


CROPS = dict(origin=(0, 20), step=(30, 25))  # where this file's astronaut crops start and move


def build(**kwargs):
    torch.manual_seed(0)
    return build_method("umd", **{**TINY, **kwargs})


class Recorder:
    """Wraps a model's `predict` and `diffuse` to keep every call's inputs and outputs."""

    def __init__(self, model):
        self.calls, self.diffused = [], []
        predict, diffuse = model.predict, model.diffuse

        def recorded_predict(x, condition, masker=None, step=None):
            out = predict(x, condition, masker, step)
            self.calls.append(dict(x=x, condition=condition, masker=masker, x0=out[0], eps=out[1], mask=out[2]))
            return out

        def recorded_diffuse(x0):
            out = diffuse(x0)
            self.diffused.append(dict(x0=x0, x_t=out[0], t=out[1], noise=out[2]))
            return out

        model.predict, model.diffuse = recorded_predict, recorded_diffuse


def test_defaults_follow_the_official_recipe():
    args = method_arguments("umd")
    assert (args["no_noise_prob"], args["mask_ratio"], args["mask_ratio_no_noise"]) == (0.5, 0.375, 0.75)
    assert (args["noise_schedule"], args["timesteps"]) == ("cosine", 1000)
    assert (args["sampling_steps"], args["eta"]) == (125, 1.0)
    assert (args["encoder.img_size"], args["encoder.patch_size"], args["encoder.embed_dim"]) == (64, 4, 768)
    assert args["encoder.pos_embed"] == "learned" and args["decoder_depth"] == 4 and args["num_class_tokens"] == 4
    for bad in (dict(no_noise_prob=1.5), dict(mask_ratio=1.0), dict(noise_schedule="sigmoid")):
        with pytest.raises(ConfigError):
            build(**bad)


def test_the_noise_schedules_match_their_formulas():
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    cosine = NoiseSchedule("cosine", 1000)
    expected = torch.tensor([f((t + 1) / 1000) / f(0) for t in range(1000)], dtype=torch.float64)
    # the product of (1 - beta) telescopes to alpha_bar(t + 1) / alpha_bar(0) until betas hit their 0.999 cap
    capped = int((beta_schedule("cosine", 1000) >= 0.999).sum())
    assert capped == 1 and float(cosine.betas[-1]) == 0.999
    assert torch.allclose(cosine.alphas_cumprod[:-1], expected[:-1], rtol=1e-9, atol=1e-15)
    linear = NoiseSchedule("linear", 1000)
    assert torch.allclose(linear.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    assert float(NoiseSchedule("linear", 500).betas[-1]) == pytest.approx(0.04)  # scaled by 1000 / T
    x0, noise, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([0, 500, 999])
    abar = cosine.alphas_cumprod[t].float().view(3, 1, 1, 1)
    assert torch.allclose(cosine.q_sample(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise, atol=1e-6)
    t = torch.tensor([0, 300, 600])  # (at t = 999, abar ~ 1e-9: the inversion is float32 rounding)
    assert torch.allclose(cosine.x0_from_eps(cosine.q_sample(x0, t, noise), t, noise), x0, atol=1e-4)


def test_the_clean_part_has_no_noise_and_timestep_zero(astronaut_crops_of):
    model = build()
    rec = Recorder(model)
    images = astronaut_crops_of(8, **CROPS)
    out = model({"image": images})
    noised, clean = rec.calls
    # the noised half: q_sample of the first images, conditioned on t + 1 in 1..T, the noised masker (0.375)
    (diffused,) = rec.diffused
    assert torch.equal(diffused["x0"], images[:4]) and torch.equal(noised["x"], diffused["x_t"])
    assert torch.equal(noised["condition"], diffused["t"] + 1) and 1 <= int(noised["condition"].min())
    assert int(noised["condition"].max()) <= 1000 and noised["masker"] is model.masker
    assert not torch.allclose(noised["x"], images[:4])
    # the clean half: the last images as they are, timestep 0, the clean masker (0.75)
    assert torch.equal(clean["x"], images[4:]) and torch.equal(clean["condition"], torch.zeros(4, dtype=torch.long))
    assert clean["masker"] is model.clean_masker
    assert torch.all(out.mask[:4].sum(1) == model.masker.num_masked(16, None))        # 6 of 16 hidden
    assert torch.all(out.mask[4:].sum(1) == model.clean_masker.num_masked(16, None))  # 12 of 16 hidden


def test_each_part_regresses_what_the_recipe_says(astronaut_crops_of):
    model = build()
    rec = Recorder(model)
    images = astronaut_crops_of(4, **CROPS)
    out = model({"image": images})
    noised, clean = rec.calls
    grads = torch.autograd.grad(out.loss, [noised["x0"], noised["eps"], clean["x0"], clean["eps"]],
                                allow_unused=True, materialize_grads=True)
    hidden_n, hidden_c = noised["mask"].bool(), clean["mask"].bool()
    # noised: eps on visible patches only, x0 on masked patches only
    assert torch.all(grads[1][hidden_n] == 0) and torch.all(grads[1][~hidden_n].abs().sum(-1) > 0)
    assert torch.all(grads[0][~hidden_n] == 0) and torch.all(grads[0][hidden_n].abs().sum(-1) > 0)
    # clean: x0 on masked patches only, eps not at all
    assert torch.all(grads[3] == 0) and torch.all(grads[2][~hidden_c] == 0)
    assert torch.all(grads[2][hidden_c].abs().sum(-1) > 0)
    # the values: (eps MSE visible + x0 MSE masked) / 2 and x0 MSE masked, weighted by the shares of the batch
    patches = lambda x: model.target(x)  # noqa: E731
    d = rec.diffused[0]
    eps_se = ((noised["eps"] - patches(d["noise"])) ** 2).mean(-1)
    x0_se = ((noised["x0"] - patches(images[:2])) ** 2).mean(-1)
    diffusion = (eps_se[~hidden_n].mean() + x0_se[hidden_n].mean()) / 2
    reconstruction = ((clean["x0"] - patches(images[2:])) ** 2).mean(-1)[hidden_c].mean()
    assert torch.allclose(out.parts["diffusion"], diffusion)
    assert torch.allclose(out.parts["reconstruction"], reconstruction)
    assert torch.allclose(out.loss, 0.5 * diffusion + 0.5 * reconstruction)


@pytest.mark.parametrize("probability, batch, clean",
                         [(0.0, 8, 0), (0.25, 8, 2), (0.5, 5, 2), (0.75, 8, 6), (1.0, 4, 4)])
def test_the_split_follows_no_noise_prob(probability, batch, clean, astronaut_crops_of):
    model = build(no_noise_prob=probability)
    rec = Recorder(model)
    out = model({"image": astronaut_crops_of(batch, **CROPS)})
    sizes = {("clean" if bool((call["condition"] == 0).all()) else "noised"): call["x"].shape[0] for call in rec.calls}
    assert sizes.get("clean", 0) == clean and sizes.get("noised", 0) == batch - clean
    assert model.split(batch) == (batch - clean, clean)
    parts = out.parts
    expected = parts.get("diffusion", 0) * (batch - clean) / batch + parts.get("reconstruction", 0) * clean / batch
    assert torch.allclose(out.loss, torch.as_tensor(expected, dtype=torch.float32))


def test_without_masks_the_noised_part_is_dits_loss(astronaut_crops_of):
    model = build(no_noise_prob=0.0, mask_ratio=0.0)
    rec = Recorder(model)
    out = model({"image": astronaut_crops_of(2, **CROPS)})
    (call,), d = rec.calls, rec.diffused[0]
    assert call["mask"].sum() == 0
    eps = ((call["eps"] - model.target(d["noise"])) ** 2).mean()
    x0 = ((call["x0"] - model.target(d["x0"])) ** 2).mean()
    assert torch.allclose(out.loss, (eps + x0) / 2)


def test_ddim_recovers_the_one_point_a_perfect_model_knows():
    schedule = NoiseSchedule("cosine", 1000)
    assert schedule.ddim_timesteps(125)[:3] == [999, 991, 983] and schedule.ddim_timesteps(125)[-2:] == [7, 0]
    assert len(schedule.ddim_timesteps(125)) == 126
    target = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    oracle = lambda x, t: schedule.eps_from_x0(x, t, target)  # noqa: E731
    for eta in (0.0, 1.0):
        sample = schedule.ddim_sample(oracle, target.shape, steps=10, eta=eta,
                                      generator=torch.Generator().manual_seed(1))
        assert torch.allclose(sample, target, atol=1e-4), eta
    clipped = schedule.ddim_sample(oracle, target.shape, steps=10, clip=(-0.5, 0.5))
    assert clipped.abs().max() <= 0.5


def test_sampling_conditions_on_t_plus_one_and_is_reproducible():
    model = build()
    model.eval()
    rec = Recorder(model)
    first = model.sample(2, steps=4, generator=torch.Generator().manual_seed(0))
    assert first.shape == (2, 3, 32, 32) and torch.isfinite(first).all()
    conditions = [int(call["condition"][0]) for call in rec.calls]
    assert conditions == [1000, 750, 500, 250, 1] and all(call["masker"] is None for call in rec.calls)
    again = model.sample(2, steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again)


def test_the_encoder_reads_clean_images_for_evaluation(astronaut_crops_of):
    model = build()
    images = astronaut_crops_of(2, **CROPS)
    enc = model.encoder
    with torch.no_grad():  # adaLN-Zero starts as the identity: give the modulation and class tokens some weight
        for block in enc.blocks:
            block.modulation.weight.normal_(std=0.1)
        enc.cls_token.normal_(std=0.02)
    features = enc.forward_features(images)
    assert features.shape == (2, 4 + 16, 32)  # four class tokens, then the patches
    zero = torch.zeros(2, dtype=torch.long)
    assert torch.allclose(features, enc.forward_visible(images, None, t=zero))
    assert not torch.allclose(enc.forward_visible(images, None, t=zero + 500), features)  # t does condition
    assert torch.allclose(enc(images), features[:, :4].mean(1))


def test_loss_falls_on_fixed_data(fixed_batch_training, astronaut_crops_of):
    model = build()
    run = fixed_batch_training(model, {"image": astronaut_crops_of(4, **CROPS)}, steps=40, reseed=4)
    assert run.last() < 0.8 * run.first(), run.losses


def test_pretrain_then_knn_from_the_command_line(tmp_path, make_pngs):
    images = make_pngs(tmp_path / "images", 12, channels=3)
    train = make_pngs(tmp_path / "train", 9, classes=3, seed=1, channels=3)
    test = make_pngs(tmp_path / "test", 6, classes=3, seed=2, channels=3)
    run = tmp_path / "umd"
    assert main(["pretrain", "--method", "umd", "--data", str(images), "--out", str(run), "--img-size", "32",
                 "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--batch-size", "4",
                 "--num-workers", "0", "--no-progress", "--accelerator", "cpu", "--max-steps", "2",
                 "--set", "decoder_depth=1", "--trainer.callbacks+=mimkit.core.diffusion.SamplePictures",
                 "--trainer.callbacks.count=4", "--trainer.callbacks.steps=2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "umd" and metrics["train"]["steps"] == 2
    with Image.open(run / "pictures" / "samples.png") as samples:  # 2 x 2 DDIM samples, 32 px tiles enlarged 3x
        assert samples.size == (192, 192) and samples.mode == "RGB"
    assert {"diffusion", "reconstruction"} <= set(metrics["train"]["history"][-1])
    assert (run / "pictures" / "reconstruction.png").is_file()
    assert main(["evaluate", "--run", str(run), "--protocol", "knn", "--train", str(train), "--test", str(test),
                 "--k", "3"]) == 0
    # the linear probe reads the encoder through a head (which asks the patch embedding for the images' token grid)
    assert main(["evaluate", "--run", str(run), "--protocol", "linear", "--train", str(train), "--test", str(test),
                 "--epochs", "2"]) == 0
    results = json.loads((run / "metrics.json").read_text())["results"]
    assert [r["protocol"] for r in results] == ["knn", "knn", "linear", "linear"]
    assert all(0 <= r["value"] <= 100 for r in results)


def test_the_readme_figures_are_registered_with_their_source():
    import mimkit.core.bench  # noqa: F401  (registers core's published figures)
    from mimkit.benchmarks.published import published_results

    umd = {(r.model, r.protocol, r.metric, r.value) for r in published_results(method="umd")}
    assert {("ViT-B/4", "few-shot", "top1", 31.8), ("ViT-B/4", "finetune", "fid10k", 19.8),
            ("ViT-L/2", "few-shot", "top1", 54.4), ("ViT-L/2", "finetune", "fid10k", 3.96)} <= umd
    mae = [r for r in published_results(method="mae", model="ViT-B/4")]
    assert [r.value for r in mae] == [36.6] and mae[0].img_size == 64
    assert all("philippe-eecs/small-vision, README.md" in r.source for r in published_results(method="umd") + mae)


def test_latent_umd_diffuses_and_unmasks_the_first_stage_latents(astronaut_crops_of):
    model = build(allow_random_autoencoder=True, autoencoder_kwargs=dict(channels=[8, 16]), noise_schedule="linear",
                  autoencoder_sample_posterior=False)
    first_stage = model.encoder.autoencoder
    rec = Recorder(model)
    seen = []
    model.encoder.patch_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images = astronaut_crops_of(4, **CROPS)
    out = model({"image": images})
    latents = first_stage.latents(images)                  # (4, 4, 16, 16): a 2x first stage
    (diffused,), (noised, clean) = rec.diffused, rec.calls
    assert torch.equal(diffused["x0"], latents[:2]) and torch.equal(clean["x"], latents[2:])
    assert torch.equal(noised["x"], model.diffusion.q_sample(latents[:2], diffused["t"], diffused["noise"]))
    assert [tuple(x.shape) for x in seen] == [(2, 4, 16, 16)] * 2  # the ViT reads latents only
    assert out.pred.shape == (4, 16, 4 * 4 * 4) and model.diffusion.kind == "linear"
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in first_stage.parameters())
    rebuilt = model.reconstruct({"image": images}, out)
    assert rebuilt.shape == images.shape
    model.eval()
    samples = model.sample(2, steps=2, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 3, 32, 32)  # decoded to pixels by the first stage


def test_latent_umd_takes_a_diffusers_vaes_scaling_factor(tmp_path, astronaut_crops_of):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=0.3)
    vae.save_pretrained(tmp_path / "vae")
    half = [0.5, 0.5, 0.5]  # the loader's [-1, 1] pixels (data mean = std = 0.5), as the official pipeline
    model = build(autoencoder=str(tmp_path / "vae"), autoencoder_data_mean=half, autoencoder_data_std=half,
                  autoencoder_sample_posterior=False)
    images = astronaut_crops_of(2, **CROPS).clamp(-1, 1)
    assert model.encoder.autoencoder.scale == 0.3
    with torch.no_grad():
        expected = 0.3 * vae.encode(images).latent_dist.mode()
    assert torch.allclose(model.to_space(images), expected, atol=1e-5)
    assert torch.isfinite(model({"image": images}).loss)
