"""MaskDCPT: the seeded degradation synthesiser (each kind's own signature), masked degradation classification +
clean reconstruction, restoration scores. Real pixels: scikit-image's `astronaut.png` (public domain)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from mimkit.core import build_method
from mimkit.core.cli import main
from mimkit.core.degradations import (DEGRADATIONS, FIVE_D, DegradationSynthesiser, downsample, jpeg, low_light,
                                      motion_blur)
from mimkit.core.errors import ConfigError
from mimkit.core.registry import method_arguments
from mimkit.core.restoration import method_restorer, restoration_scores

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, mask_patch_size=8)


@pytest.fixture(scope="module")
def astronaut():
    """The astronaut photograph, (3, 64, 64) in [0, 1]."""
    image = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float() / 255
    return F.interpolate(image[None], size=(64, 64), mode="area")[0]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grad_energy(image: torch.Tensor) -> tuple[float, float]:
    """Mean squared horizontal and vertical differences."""
    return (float((image[..., :, 1:] - image[..., :, :-1]).pow(2).mean()),
            float((image[..., 1:, :] - image[..., :-1, :]).pow(2).mean()))


def shift_corr(x: torch.Tensor, dy: int, dx: int) -> float:
    a = x[..., : x.shape[-2] - dy, : x.shape[-1] - dx].flatten()
    b = x[..., dy:, dx:].flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_registered_with_the_official_mask_ratio():
    args = method_arguments("maskdcpt")
    assert args["mask_ratio"] == 0.5 and args["mask_patch_size"] == 16 and tuple(args["degradations"]) == FIVE_D


def test_noise_adds_zero_mean_noise_of_the_levels_sigma():
    grey = torch.full((3, 64, 64), 0.5)
    for level, sigma in ((1, 15 / 255), (3, 50 / 255)):
        residual = DEGRADATIONS["noise"](grey, level, gen()) - grey
        assert abs(float(residual.mean())) < 0.01 and float(residual.std()) == pytest.approx(sigma, rel=0.05)


def test_blur_removes_detail_and_keeps_the_brightness(astronaut):
    before = sum(grad_energy(astronaut))
    mild, strong = (DEGRADATIONS["blur"](astronaut, level, gen()) for level in (1, 3))
    assert sum(grad_energy(strong)) < sum(grad_energy(mild)) < 0.6 * before
    assert float(strong.mean()) == pytest.approx(float(astronaut.mean()), abs=0.01)


def test_motion_blur_smears_along_its_direction_only():
    stripes = torch.rand(1, 64, 64, generator=gen(3))  # random texture: both directions carry detail
    gx0, gy0 = grad_energy(stripes)
    gx, gy = grad_energy(motion_blur(stripes, 3, gen(), angle=0.0))  # horizontal motion
    assert gx / gx0 < 0.1 and gy / gy0 > 3 * (gx / gx0)
    gx, gy = grad_energy(motion_blur(stripes, 3, gen(), angle=math.pi / 2))  # vertical motion
    assert gy / gy0 < 0.1 and gx / gx0 > 3 * (gy / gy0)


def test_jpeg_leaves_8x8_block_edges_and_lower_quality_errs_more(astronaut):
    def blockiness(image):  # differences across the 8-pixel block borders over differences inside blocks
        diff = (image[..., :, 1:] - image[..., :, :-1]).abs().mean((0, 1))
        border = diff[7::8].mean()
        inner = torch.cat([diff[i::8] for i in range(7)]).mean()
        return float(border / inner)

    low = jpeg(astronaut, 3, gen())
    assert blockiness(low) > 1.3 * blockiness(astronaut)
    errors = [float((jpeg(astronaut, level, gen()) - astronaut).abs().mean()) for level in (1, 3)]
    assert errors[1] > errors[0] > 0


def test_haze_lowers_contrast_and_lifts_towards_the_airlight(astronaut):
    mild, strong = (DEGRADATIONS["haze"](astronaut, level, gen(1)) for level in (1, 3))
    assert float(strong.std()) < float(mild.std()) < float(astronaut.std())
    assert float(strong.mean()) > float(mild.mean()) > float(astronaut.mean())


def test_rain_only_brightens_in_near_vertical_streaks_while_snow_is_round(astronaut):
    rain = DEGRADATIONS["rain"](astronaut, 3, gen(2)) - astronaut
    snow = DEGRADATIONS["snow"](astronaut, 3, gen(2)) - astronaut
    assert float(rain.min()) >= -1e-6 and float(snow.min()) >= -1e-6 and rain.abs().sum() > 0 and snow.abs().sum() > 0
    rain_layer, snow_layer = rain.mean(0), snow.mean(0)
    assert shift_corr(rain_layer, 3, 0) > shift_corr(rain_layer, 0, 3) + 0.3  # streaks run vertically
    assert abs(shift_corr(snow_layer, 1, 0) - shift_corr(snow_layer, 0, 1)) < 0.15  # flakes: no direction


def test_low_light_darkens_but_keeps_the_order_of_brightness(astronaut):
    dark = low_light(astronaut, 2, gen())
    assert float(dark.mean()) < 0.4 * float(astronaut.mean())
    order = astronaut.flatten().argsort()
    assert torch.all(dark.flatten()[order].diff() >= 0)


def test_downsampling_erases_the_finest_pattern_but_keeps_smooth_ramps():
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = ((yy + xx) % 2).float()[None] * 0.5 + 0.25
    ramp = (xx.float() / 63)[None]
    assert float(downsample(checker, 1, gen()).std()) < 0.1 * float(checker.std())
    assert float((downsample(ramp, 1, gen()) - ramp)[..., 4:-4, 4:-4].abs().max()) < 0.02


def test_each_degradation_is_reproducible_with_its_seed(astronaut):
    for name, degrade in DEGRADATIONS.items():
        a, b = degrade(astronaut, 2, gen(7)), degrade(astronaut, 2, gen(7))
        assert torch.equal(a, b), name
        assert not torch.allclose(a, astronaut, atol=1e-3), f"{name} leaves the image unchanged"
    synth = DegradationSynthesiser(per_image=2)
    batch = astronaut[None].repeat(4, 1, 1, 1)
    one, two, other = synth(batch, gen(5)), synth(batch, gen(5)), synth(batch, gen(6))
    assert torch.equal(one.images, two.images) and one.applied == two.applied
    assert not torch.equal(one.images, other.images)


def test_class_targets_match_the_applied_degradations(astronaut):
    synth = DegradationSynthesiser(tuple(DEGRADATIONS), per_image=2)
    out = synth(astronaut[None].repeat(6, 1, 1, 1), gen(11))
    for row, applied in zip(out.targets, out.applied):
        assert {synth.kinds[i] for i in row.nonzero().flatten().tolist()} == {kind for kind, _ in applied}
        assert len(applied) == 2
    # replaying one image's draw by hand gives the same image: the record is what was applied
    g = gen(3)
    single = DegradationSynthesiser(FIVE_D)
    out = single(astronaut[None], g)
    g = gen(3)
    chosen = single.draw(g)
    assert chosen == out.applied[0]
    assert torch.equal(single.apply(astronaut, chosen, g), out.images[0])
    with pytest.raises(ConfigError, match="degradations must be"):
        DegradationSynthesiser(("fog",))


def test_half_of_the_cells_are_hidden_and_the_encoder_sees_only_the_rest():
    torch.manual_seed(0)
    model = build_method("maskdcpt", **{**TINY, "mask_patch_size": 16})
    seen = {}
    original = model.encoder.forward_visible

    def spy(x, ids_keep, return_layers=None):
        seen["ids_keep"] = ids_keep
        return original(x, ids_keep, return_layers)
    model.encoder.forward_visible = spy
    out = model({"image": torch.rand(3, 3, 32, 32)})
    mask = out.mask.reshape(3, 4, 4)
    cells = mask.reshape(3, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(3, 4, 4)  # 2x2 tokens per 16-px cell
    assert torch.all(cells == cells[..., :1])  # a cell is hidden or visible as a whole
    assert torch.all(mask.sum((1, 2)) == 8) and seen["ids_keep"].shape == (3, 8)


def test_a_batch_may_bring_its_own_degraded_images_and_targets():
    torch.manual_seed(0)
    model = build_method("maskdcpt", **TINY).eval()
    clean = torch.rand(4, 3, 32, 32)
    base = {"image": clean, "degraded": clean + 0.1}

    def parts(rows):
        torch.manual_seed(1)
        return model({**base, "degradation": torch.eye(5)[rows]}).parts
    one, other = parts([0, 1, 2, 3]), parts([4, 4, 4, 4])
    assert one["reconstruction"] == other["reconstruction"]  # same images, same mask
    assert one["classification"] != other["classification"]  # the loss reads the batch's targets
    with pytest.raises(Exception, match="degradation"):
        model(base)


def test_loss_falls_on_fixed_data(fixed_batch_training):
    torch.manual_seed(0)
    model = build_method("maskdcpt", **TINY)
    batch = {"image": torch.rand(8, 3, 32, 32, generator=gen(1))}
    run = fixed_batch_training(model, batch, steps=40, lr=2e-3, reseed=1)  # one fixed mask and degradation draw
    assert run.last(part="reconstruction") < 0.8 * run.first(part="reconstruction")
    assert run.last(part="classification") < 0.8 * run.first(part="classification")


def test_restoration_scores_rank_an_oracle_above_the_input_and_the_input_equals_identity(astronaut):
    clean = astronaut[None, :, :32, :32].repeat(2, 1, 1, 1)
    identity = restoration_scores(lambda x: x, clean, ["noise", "haze"])
    for kind, s in identity.items():
        assert s["psnr"] == pytest.approx(s["psnr_input"]) and s["ssim"] == pytest.approx(s["ssim_input"])
    oracle = restoration_scores(lambda x: clean, clean, ["noise"])
    assert oracle["noise"]["psnr"] > oracle["noise"]["psnr_input"] + 20 and oracle["noise"]["ssim"] > 0.99
    torch.manual_seed(0)
    model = build_method("maskdcpt", **TINY)
    scores = restoration_scores(method_restorer(model, [0.5] * 3, [0.25] * 3), clean, FIVE_D)
    assert set(scores) == set(FIVE_D) and all(math.isfinite(s["psnr"]) for s in scores.values())


def test_pretrain_from_the_command_line(tmp_path, make_pngs):
    folder = make_pngs(tmp_path / "images", 8, channels=3)
    run = tmp_path / "run"
    args = ["pretrain", "--method", "maskdcpt", "--data", str(folder), "--out", str(run), "--img-size", "32",
            "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--batch-size", "4",
            "--num-workers", "0", "--no-progress", "--accelerator", "cpu", "--max-steps", "2",
            "--set", "decoder_embed_dim=32", "--set", "decoder_depth=1", "--set", "decoder_num_heads=2",
            "--set", "mask_patch_size=8"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "maskdcpt" and metrics["train"]["steps"] == 2
    assert (run / "model.safetensors").exists()
