"""SMARTIES: Sumbul et al., "SMARTIES: Spectrum-Aware Multi-Sensor Auto-Encoder for Remote Sensing Images", ICCV 2025.

One model for any combination of bands from any sensor: each band's patch goes through the projection of its
spectral range (`SpectralPatchEmbed`), so a band is embedded by its wavelength. Pretraining reconstructs two
views of a scene taken by two sensors after cross-sensor token mixup (half of each view's tokens come from
the other sensor) under one random mask shared by both views.

Batch: "image" (B, C, H, W) with "wavelengths" (nm, (C,) or (B, C)) and optionally "bandwidths" and
"band_names" (see `mimkit.remote_sensing.sensors.band_spec`); without wavelengths the model's default bands
(`sensor`, `bands`) are assumed. The second sensor's view is "image2" with "wavelengths2" (and optionally
"bandwidths2", "band_names2") when the batch has one; otherwise it is made from the same scene by picking,
for every band of the `second_view` sensor, the input band nearest in centre wavelength, which must lie inside
that band (Sentinel-2 -> RGB takes B04, B03, B02), so single-sensor data still trains the cross-sensor mixup;
inputs without such bands (Sentinel-1 for an RGB view) train without mixup.

Nodata (our choice, not the paper's): pixels where "valid" is False ("valid2" for "image2") are set to
0, the band mean once normalised, before embedding, and do not count in the loss; a token without data drops
out of the average, as in MAE's masked_mse.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from mimkit.core.decoders import MAEDecoder
from mimkit.core.encoders import EncoderConfig, SpectralRange, SpectralViTEncoder, encoder_config, gather_tokens
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.masking import RandomMasker, RatioSchedule
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.targets import PixelTarget, masked_mean

from ..sensors import Band, resolve_bands
from .nodata import nodata_filled, valid_token_mean

# The paper's spectral ranges (gsumbul/SMARTIES config/electromagnetic_spectrum.yaml): one per band of its
# pretraining sensors (Sentinel-2 without the cirrus band B10, an RGB camera, Sentinel-1 VV / VH).
SMARTIES_RANGES = (
    SpectralRange("s2_aerosol", 422, 463),        # Sentinel-2 B01
    SpectralRange("s2_blue", 427, 558),           # B02
    SpectralRange("rgb_blue", 430, 545),
    SpectralRange("rgb_green", 466, 620),
    SpectralRange("s2_green", 524, 595),          # B03
    SpectralRange("rgb_red", 590, 710),
    SpectralRange("s2_red", 634, 696),            # B04
    SpectralRange("s2_red_edge_1", 689, 719),     # B05
    SpectralRange("s2_red_edge_2", 726, 755),     # B06
    SpectralRange("s2_nir_1", 728, 938),          # B08
    SpectralRange("s2_nir_2", 761, 802),          # B07
    SpectralRange("s2_nir_3", 843, 886),          # B8A
    SpectralRange("s2_water_vapour", 923, 964),   # B09
    SpectralRange("s2_swir_1", 1516, 1704),       # B11
    SpectralRange("s2_swir_2", 2002, 2376),       # B12
    SpectralRange("VV", 5.5e7, 5.6e7),            # Sentinel-1 C band, told apart by name
    SpectralRange("VH", 5.5e7, 5.6e7),
)


# The official hard band-to-projection table (config/electromagnetic_spectrum.yaml, `projection_idx`): each band of
# a pretraining sensor has a projection of its own. Bands not in it (other sensors; Landsat's, which the official
# table averages over listed projections) use the inverse-distance blend of `spectral_weights`.
OFFICIAL_PROJECTIONS = {
    "B01": "s2_aerosol", "B02": "s2_blue", "B03": "s2_green", "B04": "s2_red", "B05": "s2_red_edge_1",
    "B06": "s2_red_edge_2", "B07": "s2_nir_2", "B08": "s2_nir_1", "B8A": "s2_nir_3", "B09": "s2_water_vapour",
    "B11": "s2_swir_1", "B12": "s2_swir_2", "red": "rgb_red", "green": "rgb_green", "blue": "rgb_blue",
}


class SpectralPredictionHeads(nn.Module):
    """One linear pixel predictor per spectral range; a band's prediction mixes them like its projection."""

    def __init__(self, ranges: Sequence[SpectralRange], in_dim: int, pixels: int):
        super().__init__()
        self.ranges = tuple(ranges)
        self.weight = nn.Parameter(torch.empty(len(self.ranges), pixels, in_dim))
        self.bias = nn.Parameter(torch.zeros(len(self.ranges), pixels))
        for w in self.weight.data:
            nn.init.xavier_uniform_(w)

    def forward(self, hidden: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        """hidden (B, N, D), mix (C, R) band-to-range weights -> (B, N, C, pixels)."""
        weight = torch.einsum("cr,rpd->cpd", mix, self.weight)
        return torch.einsum("bnd,cpd->bncp", hidden, weight) + (mix @ self.bias)[None, None]


def _names(names) -> list[str] | None:
    """Band names as a flat list; a default-collated batch holds one tuple of B names per band."""
    if names is None:
        return None
    return [n[0] if isinstance(n, (list, tuple)) else n for n in names]


@register_method("smarties")
class SMARTIES(MIMMethod):
    """Spectrum-aware MAE over two sensors' views with cross-sensor token mixup and a shared random mask."""

    def __init__(self,
                 # the paper's ViT-B/16 (its ViT-L: size="large"); in_chans None: the number of default bands
                 encoder: EncoderConfig = EncoderConfig(in_chans=None),
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 mask_ratio: float | RatioSchedule = 0.75,  # paper: 75%
                 norm_pix_loss: bool = True, sensor: str = "sentinel2", bands: Sequence[str] | None = None,
                 second_view: str | None = "rgb", mixup_ratio: float = 0.5,  # paper: half the tokens swapped
                 projection_scale: float = 12.0,  # paper: C_max, 12 bands in pretraining
                 ranges: Sequence[SpectralRange | Sequence] | None = None,
                 # "official": a band of the official table (OFFICIAL_PROJECTIONS) takes its own projection alone
                 # (projection_idx); "blend": every band the inverse-distance blend of the ranges it overlaps
                 projection: str = "official"):
        super().__init__()
        if projection not in ("official", "blend"):
            raise ConfigError(f"projection must be 'official' or 'blend', got {projection!r}")
        self.projection = projection
        self.ranges = tuple(r if isinstance(r, SpectralRange) else SpectralRange(*r)
                            for r in (ranges or SMARTIES_RANGES))
        default_bands = resolve_bands(sensor, bands)
        encoder = encoder_config(encoder)
        if encoder.in_chans is not None and encoder.in_chans != len(default_bands):
            raise ConfigError(f"encoder.in_chans={encoder.in_chans} but the default bands ({sensor}: "
                              f"{', '.join(b.name for b in default_bands)}) are {len(default_bands)}")
        self.second_bands: list[Band] | None = resolve_bands(second_view) if second_view else None
        if not 0.0 <= mixup_ratio <= 1.0:
            raise ConfigError(f"mixup_ratio must be in [0, 1], got {mixup_ratio}")
        self.mixup_ratio, self.norm_pix_loss = float(mixup_ratio), norm_pix_loss
        self.encoder = enc = self.build_encoder(
            encoder, SpectralViTEncoder, in_chans=len(default_bands), ranges=self.ranges,
            wavelengths=[b.center_nm for b in default_bands], bandwidths=[b.width_nm for b in default_bands],
            band_names=[b.name for b in default_bands], projection_scale=projection_scale,
            band_aliases=OFFICIAL_PROJECTIONS if projection == "official" else None)
        self.masker = RandomMasker(mask_ratio)
        # the MAE decoder up to its last norm; the per-range heads below turn its tokens into band pixels
        self.decoder = MAEDecoder(enc.grid, enc.embed_dim, decoder_embed_dim, decoder_embed_dim, decoder_depth,
                                  decoder_num_heads, enc.mlp_ratio, num_prefix_tokens=enc.num_prefix_tokens)
        self.decoder.pred = nn.Identity()
        self.heads = SpectralPredictionHeads(self.ranges, decoder_embed_dim, math.prod(enc.patch_size))

    # ------------------------------------------------------------------ views
    def views(self, batch: dict) -> tuple[dict, dict | None]:
        """The batch's first view and the second sensor's view (given, derived, or None without mixup)."""
        images, valid = nodata_filled(batch, self.images(batch))  # nodata at 0, whatever the batch held there
        first = {"image": images, "wavelengths": batch.get("wavelengths"), "bandwidths": batch.get("bandwidths"),
                 "band_names": _names(batch.get("band_names")), "valid": valid}
        if first["wavelengths"] is None:
            enc = self.encoder
            first.update(wavelengths=enc.band_wavelengths, bandwidths=enc.band_widths, band_names=enc.band_names)
            if images.shape[1] != enc.in_chans:
                raise DataError(f"the batch's images have {images.shape[1]} band(s) but no 'wavelengths'; the "
                                f"model's default bands are {enc.in_chans}")
        if "image2" in batch:
            if batch.get("wavelengths2") is None:
                raise DataError("a batch with 'image2' needs 'wavelengths2' (nm) for the second sensor's bands")
            image2, valid2 = nodata_filled(batch, batch["image2"], "valid2")
            return first, {"image": image2, "wavelengths": batch["wavelengths2"], "valid": valid2,
                           "bandwidths": batch.get("bandwidths2"), "band_names": _names(batch.get("band_names2"))}
        if self.second_bands is None:
            return first, None
        second = self.derive_view(first)
        return first, None if second is None else {**second, "valid": valid}  # the same scene: the same nodata

    def derive_view(self, view: dict) -> dict | None:
        """The same scene seen by the `second_view` sensor: for each of its bands, the input band nearest in centre
        wavelength, which must lie inside that band; None (no mixup) when the input has no such band."""
        images = view["image"]
        source = torch.as_tensor(view["wavelengths"], dtype=torch.float64, device=images.device)
        target = torch.tensor([b.center_nm for b in self.second_bands], dtype=torch.float64, device=images.device)
        half_width = torch.tensor([b.width_nm / 2 for b in self.second_bands], dtype=torch.float64,
                                  device=images.device)
        distance = (source.unsqueeze(-1) - target).abs()                          # (C, C2) or (B, C, C2)
        nearest = distance.argmin(-2)                                               # (C2,) or (B, C2)
        if bool((distance.amin(-2) > half_width).any()):
            return None
        if nearest.ndim == 1:
            picked = images[:, nearest]
        else:
            picked = torch.gather(images, 1, nearest[:, :, None, None].expand(-1, -1, *images.shape[2:]))
        return {"image": picked, "wavelengths": target, "bandwidths": torch.tensor(
                    [b.width_nm for b in self.second_bands], dtype=torch.float64, device=images.device),
                "band_names": [b.name for b in self.second_bands]}

    def mixup(self, tokens_a: torch.Tensor, tokens_b: torch.Tensor, generator: torch.Generator | None = None):
        """Cross-sensor token mixup: two sequences, each taking a random `mixup_ratio` of its tokens from the other
        view (complementary positions). Returns (mixed_a, mixed_b, from_b) with from_b (B, N) True where
        mixed_a holds view b's token (and mixed_b view a's)."""
        batch, num = tokens_a.shape[:2]
        swap = int(round(self.mixup_ratio * num))
        order = torch.argsort(torch.rand(batch, num, device=tokens_a.device, generator=generator), dim=1)
        from_b = torch.zeros(batch, num, dtype=torch.bool, device=tokens_a.device)
        from_b.scatter_(1, order[:, num - swap:], True)
        pick = from_b.unsqueeze(-1)
        return torch.where(pick, tokens_b, tokens_a), torch.where(pick, tokens_a, tokens_b), from_b

    # ------------------------------------------------------------------ pieces of a step
    def _mix(self, view: dict) -> torch.Tensor:
        """Band-to-range weights (C, R) of a view (first row for per-sample band sets of equal bands)."""
        wl = torch.as_tensor(view["wavelengths"])
        bw = view.get("bandwidths")
        if wl.ndim == 2:
            if not bool((wl == wl[:1]).all()):
                raise DataError("SMARTIES predicts pixels for one band set per batch; got per-sample wavelengths "
                                "that differ (batch images of one sensor together)")
            wl, bw = wl[0], (None if bw is None else torch.as_tensor(bw).reshape(wl.shape)[0])
        # the encoder's own band-to-range weights (its band_aliases: the official hard projection)
        return self.encoder.patch_embed.weights(wl, bw, view.get("band_names")).to(self.heads.weight)

    def _target(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, C * pixels) band-major patch pixels, normalised per token as MAE's norm_pix_loss."""
        patches = self.encoder.patch_embed.band_patches(images.float())          # (B, C, N, P)
        target = patches.permute(0, 2, 1, 3).flatten(2)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        return target

    def _embed(self, view: dict) -> torch.Tensor:
        return self.encoder.embed(view["image"], view["wavelengths"], view.get("bandwidths"), view.get("band_names"))

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        first, second = self.views(batch)
        enc = self.encoder
        tokens_a = self._embed(first)
        batch_size, num = tokens_a.shape[:2]
        mask = self.masker(batch_size, num, step=step, device=tokens_a.device)   # one mask for both views
        mix_a, target_a = self._mix(first), self._target(first["image"])

        def decode(tokens: torch.Tensor) -> torch.Tensor:
            return self.decoder(enc.forward_tokens(gather_tokens(tokens, mask.ids_keep)), mask.ids_restore)

        def valid_values(view: dict) -> torch.Tensor | None:
            """(B, N, C * pixels) band-major like the target: 1 where a value is data; None: all are."""
            if view["valid"] is None:
                return None
            per_band = enc.patch_embed.band_patches(view["valid"].float())[:, 0]      # (B, N, pixels)
            return per_band.repeat(1, 1, view["image"].shape[1])

        def token_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None):
            """Per-token MSE over the valid values, and which tokens hold any (None: every token)."""
            return valid_token_mean((pred.flatten(2).float() - target) ** 2, valid)

        def masked(per_token: torch.Tensor, has_data: torch.Tensor) -> torch.Tensor:
            return masked_mean(per_token, mask.mask * has_data.to(mask.mask))  # hidden tokens that hold data

        valid_a = valid_values(first)
        if second is None:
            pred_a = self.heads(decode(tokens_a), mix_a)
            loss = masked(*token_loss(pred_a, target_a, valid_a))
            parts = {"reconstruction": loss.detach()}
        else:
            if second["image"].shape[0] != batch_size or second["image"].shape[2:] != first["image"].shape[2:]:
                raise DataError(f"the second view {tuple(second['image'].shape)} must show the same scenes at the "
                                f"same size as the first {tuple(first['image'].shape)}")
            seq_a, seq_b, from_b = self.mixup(tokens_a, self._embed(second))
            mix_b, target_b, valid_b = self._mix(second), self._target(second["image"]), valid_values(second)
            hidden_a, hidden_b = decode(seq_a), decode(seq_b)
            # each token is predicted in the bands of the sensor it came from
            pred_a_in_a, pred_b_in_a = self.heads(hidden_a, mix_a), self.heads(hidden_b, mix_a)

            def pick(from_second, from_first):  # each token's (loss, holds data) in the view it came from
                return tuple(torch.where(from_b, b, a) for b, a in zip(from_second, from_first))

            loss_a = masked(*pick(token_loss(self.heads(hidden_a, mix_b), target_b, valid_b),
                                  token_loss(pred_a_in_a, target_a, valid_a)))
            loss_b = masked(*pick(token_loss(pred_b_in_a, target_a, valid_a),
                                  token_loss(self.heads(hidden_b, mix_b), target_b, valid_b)))
            loss = 0.5 * (loss_a + loss_b)
            parts = {"reconstruction_first": loss_a.detach(), "reconstruction_second": loss_b.detach()}
            pred_a = torch.where(from_b[:, :, None, None], pred_b_in_a, pred_a_in_a)
        # (B, N, C, P) band-major -> patchify's (B, N, P * C) pixel-major order
        pred = pred_a.transpose(2, 3).flatten(2)
        return MIMOutput(loss=loss, parts=parts, pred=pred, mask=mask.mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        images = self.images(batch)
        return PixelTarget(self.encoder.patch_size, normalize=self.norm_pix_loss).to_pixels(out.pred, images)
