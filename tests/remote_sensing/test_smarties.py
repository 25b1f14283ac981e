"""SMARTIES: spectrum-aware projection (wavelength, not position), any sensor's bands, cross-sensor mixup,
shared mask, loss falls."""
import pytest
import torch
import torch.nn.functional as F

from mimkit.core import build_method
from mimkit.core.encoders import SpectralPatchEmbed, SpectralRange, spectral_weights
from mimkit.core.errors import DataError
from mimkit.remote_sensing.methods.smarties import SMARTIES_RANGES
from mimkit.remote_sensing.sensors import band_spec

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=4)


def smooth_images(n, chans, seed=0):
    """Fixed, learnable data: smooth two-component scenes seen through `chans` band mixtures."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 2, 4, 4, generator=g), size=32, mode="bilinear", align_corners=False)
    return torch.einsum("bkhw,kc->bchw", base, torch.rand(2, chans, generator=g))


RANGES = [SpectralRange("blue", 450, 510), SpectralRange("red", 630, 690), SpectralRange("nir", 800, 900)]


def test_band_to_range_weights():
    w = spectral_weights(RANGES, torch.tensor([480.0, 660.0, 600.0, 2000.0]), torch.tensor([10.0, 40, 0, 100]))
    assert torch.allclose(w[0], torch.tensor([1.0, 0, 0])) and torch.allclose(w[1], torch.tensor([0, 1.0, 0]))
    # between blue (480) and red (660): inverse-distance blend, the nearer range weighs more
    assert torch.allclose(w[2], torch.tensor([60 / 180, 120 / 180, 0]), atol=1e-6)
    # beyond every range: the nearest below alone
    assert torch.allclose(w[3], torch.tensor([0, 0, 1.0]))
    # a band overlapping two ranges blends them; names pick a range exactly (Sentinel-1 VV / VH)
    wide = spectral_weights(RANGES, torch.tensor([570.0]), torch.tensor([200.0]))
    assert wide[0, 0] > 0 and wide[0, 1] > 0 and wide[0, 2] == 0
    sar = band_spec("sentinel1")
    w = spectral_weights(SMARTIES_RANGES, sar["wavelengths"], sar["bandwidths"], sar["band_names"])
    names = [r.name for r in SMARTIES_RANGES]
    assert w[0, names.index("VV")] == 1 and w[1, names.index("VH")] == 1


def test_band_embedding_depends_on_wavelength_not_position():
    torch.manual_seed(0)
    embed = SpectralPatchEmbed(RANGES, patch_size=8, embed_dim=16, scale=3.0)
    x = torch.randn(2, 3, 16, 16)
    wl = torch.tensor([480.0, 660.0, 850.0])
    perm = torch.tensor([2, 0, 1])
    bands = embed.band_embeddings(x, wl)
    # the same band at another position in the tensor gets the same embedding
    assert torch.allclose(embed.band_embeddings(x[:, perm], wl[perm]), bands[:, perm], atol=1e-5)
    assert torch.allclose(embed(x[:, perm], wl[perm]), embed(x, wl), atol=1e-5)
    # the same pixels labelled with other wavelengths are embedded differently
    assert not torch.allclose(embed(x, wl[perm]), embed(x, wl), atol=1e-3)
    # per-sample band sets ((B, C) wavelengths) give each sample its own bands' projections
    mixed = embed.band_embeddings(x, torch.stack([wl, wl[perm]]))
    assert torch.allclose(mixed[0], bands[0], atol=1e-5)
    assert torch.allclose(mixed[1], embed.band_embeddings(x[1:], wl[perm])[0], atol=1e-5)


def test_one_model_runs_on_sentinel2_landsat_and_rgb():
    torch.manual_seed(0)
    model = build_method("smarties", **TINY)
    features = []
    for name, chans in (("sentinel2", 13), ("landsat8", 11), ("rgb", 3)):
        batch = {"image": torch.randn(2, chans, 32, 32), **band_spec(name)}
        out = model(batch)
        assert torch.isfinite(out.loss) and out.pred.shape == (2, 16, 64 * chans)
        assert model.reconstruct(batch, out).shape == (2, chans, 32, 32)
        spec = band_spec(name)
        feats = model.encoder.forward_features(batch["image"], wavelengths=spec["wavelengths"],
                                               bandwidths=spec["bandwidths"])
        features.append(model.encoder.pool(feats))
    assert all(f.shape == (2, 32) for f in features)
    # without wavelengths the default bands (Sentinel-2, 13) are assumed; other band counts need them
    assert model.encoder(torch.randn(1, 13, 32, 32)).shape == (1, 32)
    with pytest.raises(DataError, match="wavelengths"):
        model({"image": torch.randn(1, 4, 32, 32)})


def test_second_view_is_derived_from_the_scene():
    model = build_method("smarties", **TINY)
    images = torch.randn(2, 13, 32, 32)
    first, second = model.views({"image": images, **band_spec("sentinel2")})
    # Sentinel-2 -> RGB picks B04, B03, B02 and labels them with the RGB camera's wavelengths
    assert torch.equal(second["image"], images[:, [3, 2, 1]])
    assert second["band_names"] == ["red", "green", "blue"]
    # radar bands hold no visible band: no RGB view, that batch trains without mixup
    assert model.views({"image": torch.randn(2, 2, 32, 32), **band_spec("sentinel1")})[1] is None
    out = model({"image": torch.randn(2, 2, 32, 32), **band_spec("sentinel1")})
    assert set(out.parts) == {"reconstruction"}
    radar = band_spec("sentinel1")
    given = {"image": images, **band_spec("sentinel2"), "image2": torch.randn(2, 2, 32, 32),
             "wavelengths2": radar["wavelengths"], "band_names2": radar["band_names"]}
    assert model.views(given)[1]["image"] is given["image2"]
    out = model(given)                                      # Sentinel-2 mixed with Sentinel-1 tokens
    assert torch.isfinite(out.loss) and set(out.parts) == {"reconstruction_first", "reconstruction_second"}
    with pytest.raises(DataError, match="wavelengths2"):
        model({"image": images, "image2": given["image2"]})


def test_cross_sensor_token_mixup_is_complementary():
    model = build_method("smarties", **TINY)
    a, b = torch.zeros(4, 16, 8), torch.ones(4, 16, 8)
    seq_a, seq_b, from_b = model.mixup(a, b, torch.Generator().manual_seed(0))
    assert torch.all(from_b.sum(1) == 8)                                  # half the tokens swapped
    assert torch.equal(seq_a[..., 0].bool(), from_b) and torch.equal(seq_b[..., 0].bool(), ~from_b)
    assert not torch.equal(from_b[0], from_b[1])                          # per-sample positions


def test_both_mixed_views_share_one_mask_and_are_reconstructed():
    torch.manual_seed(0)
    model = build_method("smarties", **TINY)
    calls, encoded = [], []
    masker, forward_tokens = model.masker, model.encoder.forward_tokens
    model.masker = lambda *a, **k: calls.append(masker(*a, **k)) or calls[-1]
    model.encoder.forward_tokens = lambda tokens, *a: encoded.append(tokens) or forward_tokens(tokens, *a)
    out = model({"image": torch.randn(2, 13, 32, 32), **band_spec("sentinel2")})
    assert len(calls) == 1 and len(encoded) == 2                           # one mask, two encoder passes
    assert encoded[0].shape == encoded[1].shape == (2, 4, 32)              # 25% of 16 tokens visible
    assert set(out.parts) == {"reconstruction_first", "reconstruction_second"}
    assert torch.equal(out.mask, calls[0].mask)


def test_smarties_loss_falls_on_fixed_data(fixed_batch_training):
    torch.manual_seed(0)
    model = build_method("smarties", **TINY)
    batch = {"image": smooth_images(8, 13), **band_spec("sentinel2")}
    run = fixed_batch_training(model, batch, steps=40)
    assert run.last(5) < 0.5 * run.first(5)


def test_official_hard_projection_per_band_and_the_blend_as_an_option():
    # official config/electromagnetic_spectrum.yaml: each Sentinel-2 / RGB band has a projection of its own
    spec = band_spec("sentinel2")
    names = [r.name for r in SMARTIES_RANGES]
    official = build_method("smarties", **TINY)
    w = official.encoder.patch_embed.weights(spec["wavelengths"], spec["bandwidths"], spec["band_names"])
    b02 = spec["band_names"].index("B02")
    assert official.projection == "official" and w[b02, names.index("s2_blue")] == 1 and w[b02].sum() == 1
    assert int((w > 0).sum()) == len(spec["band_names"]) - 1 + int((w[spec["band_names"].index("B10")] > 0).sum())
    blend = build_method("smarties", **TINY, projection="blend")
    wb = blend.encoder.patch_embed.weights(spec["wavelengths"], spec["bandwidths"], spec["band_names"])
    assert (wb[b02] > 0).sum() > 1  # B02's interval overlaps several ranges: blended
    # the heads predict with the same weights as the encoder embeds
    view = {"wavelengths": spec["wavelengths"], "bandwidths": spec["bandwidths"], "band_names": spec["band_names"]}
    assert torch.equal(official._mix(view), w)


def garbage_at(images, valid, seed=0):
    """`images` with NaN, huge and random values where `valid` (B, H, W) is False."""
    g = torch.Generator().manual_seed(seed)
    junk = torch.randn(images.shape, generator=g) * 1e4
    junk[..., ::3, :] = float("nan")
    return torch.where(valid[:, None], images, junk)


def test_nodata_pixels_do_not_count_whatever_the_batch_holds_there():
    torch.manual_seed(0)
    model = build_method("smarties", **TINY)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :, :12] = False   # one and a half patch columns of nodata (whole and partial patches)
    valid[1, 20:, 20:] = False
    clean = smooth_images(2, 13) * valid[:, None]  # nodata at 0, as the loader fills it
    spec = band_spec("sentinel2")

    def loss(images, **extra):
        torch.manual_seed(1)  # the same mask and mixup
        return model({"image": images, **spec, **extra}).loss

    reference = loss(clean, valid=valid)
    assert torch.isfinite(reference)
    assert torch.equal(loss(garbage_at(clean, valid), valid=valid), reference)  # derived RGB view: same nodata
    assert not torch.allclose(loss(clean), reference)  # without the mask the nodata pixels would count
    # a real second sensor with nodata of its own ("valid2")
    second = {"wavelengths2": torch.tensor([5.55e7, 5.55e7]), "band_names2": ["VV", "VH"]}
    valid2 = torch.ones(2, 32, 32, dtype=torch.bool)
    valid2[:, :8] = False
    image2 = torch.randn(2, 2, 32, 32) * valid2[:, None]
    reference = loss(clean, valid=valid, image2=image2, valid2=valid2, **second)
    assert torch.equal(loss(garbage_at(clean, valid), valid=valid, image2=garbage_at(image2, valid2, 1),
                            valid2=valid2, **second), reference)
    assert not torch.allclose(loss(clean, valid=valid, image2=image2, **second), reference)
