"""SimMIM: Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..decoders import LinearHead
from ..encoders import EncoderConfig
from ..errors import ConfigError
from ..masking import GridMasker, RatioSchedule
from ..registry import register_method
from ..targets import PixelTarget, masked_mean
from ..tokens import as_tuple
from .base import MIMMethod, MIMOutput


@register_method("simmim")
class SimMIM(MIMMethod):
    """Replace masked patches by a learnable mask token inside the encoder, predict their raw pixels linearly (L1).

    The encoder sees every position; masking is random on a coarse grid of `mask_patch_size` pixels.
    Defaults follow the official ViT-B config (github.com/microsoft/SimMIM,
    configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml). That ViT uses a shared relative
    position bias and layer scale; mimkit's encoder keeps its fixed sin-cos positions instead.
    """

    supported_dims = (2, 3)

    def __init__(self,
                 # ViT-B/16; config: DROP_PATH_RATE 0.1, MODEL.VIT.INIT_VALUES 0.1 (layer scale in every block)
                 encoder: EncoderConfig = EncoderConfig(drop_path_rate=0.1, layer_scale=0.1),
                 mask_ratio: float | RatioSchedule = 0.6,  # SimMIM: 0.6
                 mask_patch_size: int = 32):  # SimMIM: masks 32x32-pixel patches
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)
        mask_patch = as_tuple(mask_patch_size, enc.spatial_dims, "mask_patch_size")
        units = {m // p for m, p in zip(mask_patch, enc.patch_size)}
        if any(m % p for m, p in zip(mask_patch, enc.patch_size)) or len(units) != 1:
            raise ConfigError(f"mask_patch_size {mask_patch_size} must be the same multiple of the patch size "
                              f"{enc.patch_size} along every axis")
        self.masker = GridMasker(mask_ratio, grid=enc.grid, mask_unit=units.pop())
        # SimMIM: one learnable token (trunc-normal, std .02) stands in for every masked patch
        self.mask_token = nn.Parameter(torch.zeros(1, 1, enc.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        # SimMIM's head, a 1x1 convolution + pixel shuffle, is one linear map per token to its patch's pixels
        self.head = LinearHead(enc.embed_dim, math.prod(enc.patch_size) * enc.in_chans)
        self.target = PixelTarget(enc.patch_size, normalize=False)  # SimMIM regresses raw (normalised-image) pixels

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        enc = self.encoder
        mask = self.masker(images.shape[0], enc.num_patches, step=step, device=images.device)
        tokens, grid = enc.patch_tokens(images)
        hidden = mask.mask.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1 - hidden) + self.mask_token.to(tokens.dtype) * hidden
        latent = enc.forward_tokens(tokens + enc.positions(grid))[:, enc.num_prefix_tokens:]
        pred = self.head(latent)
        # L1 averaged over the masked pixels only (SimMIM: sum over masked pixels / their count / channels)
        per_token = (pred.float() - self.target(images)).abs().mean(-1)
        loss = masked_mean(per_token, mask.mask)
        return MIMOutput(loss=loss, parts={"reconstruction": loss.detach()}, pred=pred, mask=mask.mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.target.to_pixels(out.pred, self.images(batch))
