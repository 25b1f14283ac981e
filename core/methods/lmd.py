"""LMD: Ma et al., "LMD: Faster Image Reconstruction with Latent Masking Diffusion", AAAI 2024 (arXiv 2312.07971)."""
from __future__ import annotations

import math

import torch

from ..autoencoders import LatentViTEncoder, build_autoencoder
from ..decoders import MAEDecoder
from ..encoders import EncoderConfig, encoder_config, require_2d
from ..errors import ConfigError
from ..masking import RandomMasker, RatioSchedule
from ..registry import register_method
from ..targets import PixelTarget, masked_mse
from .base import MIMMethod, MIMOutput

SCHEDULES = ("cosine", "piecewise", "linear", "constant")


def lmd_schedule(kind: str = "cosine", total_steps: int = 1, start: float = 0.15, end: float = 0.75,
                 hold: float = 0.40) -> RatioSchedule:
    """LMD's mask-ratio schedulers (official engine_pretrain.py), over `total_steps` optimiser steps.

    cosine (the official default): start + (end - start)(1 - c(s)) with the improved-DDPM cosine curve c over the
    first two thirds of training, then end. piecewise: start -> hold over the first sixth, hold to a third,
    hold -> end by two thirds, then end (the official code, commented out, ramps the third segment from the
    absolute step and so overshoots; we ramp it from its own start). linear: start -> end. constant: end.
    """
    if kind == "cosine":
        return RatioSchedule("diffusion_cosine", start, end, total_steps, ramp=2 / 3)
    if kind == "piecewise":
        return RatioSchedule("piecewise", total_steps=total_steps, knots=(0, 1 / 6, 1 / 3, 2 / 3, 1),
                             values=(start, hold, hold, end, end))
    if kind == "linear":
        return RatioSchedule("linear", start, end, total_steps)
    if kind == "constant":
        return RatioSchedule("constant", end)
    raise ConfigError(f"mask_schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")


@register_method("lmd")
class LMD(MIMMethod):
    """An MAE on a frozen KL autoencoder's latent grid, with a mask ratio that grows during training.

    The first stage (Stable Diffusion's VAE in the official code: 224 px -> 28 x 28 x 4, posterior mode, no
    scaling) maps images to latents; the ViT encodes the visible latent patches, MAE's decoder predicts the
    masked ones (per-patch normalised MSE on masked tokens). `encoder.patch_size` is in pixels: the official
    patch 4 on the 28 x 28 latent of an 8x VAE is 32 px. Reconstructions are decoded back to pixels.
    Defaults: the official code (github.com/AnonymousPony/lmd: lmd.py, engine_pretrain.py, pretrain.sh).
    """

    def __init__(self,
                 encoder: EncoderConfig = EncoderConfig(img_size=224, patch_size=32),  # ViT-B, 4 latent cells
                 decoder_embed_dim: int = 512, decoder_depth: int = 8,  # lmd.py: dec512d8b
                 decoder_num_heads: int = 16,
                 norm_pix_loss: bool = True,  # pretrain.sh: --norm_pix_loss
                 mask_schedule: str = "cosine",  # engine_pretrain.py: the cosine scheduler is the one in use
                 mask_ratio_start: float = 0.15, mask_ratio_end: float = 0.75,  # engine_pretrain.py
                 mask_ratio_hold: float = 0.40,  # engine_pretrain.py: the piecewise scheduler's middle value
                 total_steps: int | None = None,  # the run's steps (set by pretrain); None: the end ratio throughout
                 subtract_decoder_positions: bool = True,  # lmd.py: x = x - decoder_pos_embed
                 autoencoder: str | None = None,  # a `mimkit autoencoder` file or a diffusers AutoencoderKL folder
                 autoencoder_scale: float = 1.0,  # engine_pretrain.py: posterior.mode(), not scaled
                 autoencoder_data_mean: list[float] | None = None,  # a diffusers VAE: the loader's normalisation
                 autoencoder_data_std: list[float] | None = None,
                 autoencoder_kwargs: dict | None = None, allow_random_autoencoder: bool = False):
        super().__init__()
        config = encoder_config(encoder)
        require_2d(config.spatial_dims, "LMD's latent MAE")
        if mask_schedule not in SCHEDULES:
            raise ConfigError(f"mask_schedule must be one of {', '.join(SCHEDULES)}, got {mask_schedule!r}")
        kwargs = dict(autoencoder_kwargs or {})
        if autoencoder is None and config.in_chans is not None:
            kwargs.setdefault("in_chans", config.in_chans)
        if not 0.0 <= min(mask_ratio_start, mask_ratio_end, mask_ratio_hold) <= max(
                mask_ratio_start, mask_ratio_end, mask_ratio_hold) < 1.0:
            raise ConfigError(f"LMD mask ratios must be in [0, 1): start {mask_ratio_start}, hold {mask_ratio_hold}, "
                              f"end {mask_ratio_end}")
        first_stage = build_autoencoder(autoencoder, allow_random=allow_random_autoencoder, kwargs=kwargs,
                                        scale=autoencoder_scale, data_mean=autoencoder_data_mean,
                                        data_std=autoencoder_data_std)
        self.encoder = enc = self.build_encoder(config, LatentViTEncoder, autoencoder=first_stage)
        self.total_steps = total_steps
        schedule = (lmd_schedule(mask_schedule, total_steps, mask_ratio_start, mask_ratio_end, mask_ratio_hold)
                    if total_steps else lmd_schedule("constant", 1, end=mask_ratio_end))
        self.masker = RandomMasker(schedule)
        self.target = PixelTarget(enc.latent_patch_size, normalize=norm_pix_loss)
        self.decoder = MAEDecoder(enc.grid, enc.embed_dim, math.prod(enc.latent_patch_size) * enc.latent_chans,
                                  decoder_embed_dim, decoder_depth, decoder_num_heads, enc.mlp_ratio,
                                  num_prefix_tokens=enc.num_prefix_tokens)
        self.position_sign = -1.0 if subtract_decoder_positions else 1.0

    def mask_ratio(self, step: int | None) -> float:
        """The ratio at `step`; without a step (pictures, evaluation) the ratio training ends with."""
        return self.masker.schedule(self.total_steps if step is None else step)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        enc = self.encoder
        latents = enc.to_latents(self.images(batch))  # the ViT never sees pixels
        step = self.total_steps if step is None else step
        mask = self.masker(latents.shape[0], enc.num_patches, step=step, device=latents.device)
        tokens = enc.forward_latents(latents, mask.ids_keep)
        x = self.decoder.tokens(tokens, mask.ids_restore, positions=self.position_sign * self.decoder.pos_embed)
        for block in self.decoder.blocks:
            x = block(x)
        pred = self.decoder.predict(x)
        loss = masked_mse(pred, self.target(latents), mask.mask)
        return MIMOutput(loss=loss, parts={"reconstruction": loss.detach()}, pred=pred, mask=mask.mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        """The predicted latents decoded to pixels by the first stage, (B, C, H, W)."""
        out = out or self(batch)
        latents = self.encoder.to_latents(self.images(batch))
        return self.encoder.autoencoder.decode(self.target.to_pixels(out.pred, latents))
