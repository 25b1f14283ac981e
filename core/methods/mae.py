"""MAE: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022."""
from __future__ import annotations

import math

import torch

from ..decoders import MAEDecoder
from ..encoders import EncoderConfig
from ..masking import RandomMasker, RatioSchedule
from ..registry import register_method
from ..targets import PixelTarget, masked_mse, valid_values
from .base import MIMMethod, MIMOutput


@register_method("mae")
class MAE(MIMMethod):
    """Encode the 25% visible patches, decode all with mask tokens, regress the masked patches' pixels."""

    supported_dims = (2, 3)

    def __init__(self,
                 encoder: EncoderConfig = EncoderConfig(embed_dim=1024, depth=24, num_heads=16),  # paper: ViT-L/16
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 mask_ratio: float | RatioSchedule = 0.75,  # paper: 75%
                 norm_pix_loss: bool = True):
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)
        self.masker = RandomMasker(mask_ratio)
        self.target = PixelTarget(enc.patch_size, normalize=norm_pix_loss)
        self.decoder = MAEDecoder(enc.grid, enc.embed_dim, math.prod(enc.patch_size) * enc.in_chans,
                                  decoder_embed_dim, decoder_depth, decoder_num_heads, enc.mlp_ratio,
                                  num_prefix_tokens=enc.num_prefix_tokens)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        mask = self.masker(images.shape[0], self.encoder.num_patches, step=step, device=images.device)
        latent = self.encoder.forward_visible(images, mask.ids_keep)
        pred = self.decoder(latent, mask.ids_restore)
        # nodata pixels (batch["valid"], remote-sensing tiles) do not count
        loss = masked_mse(pred, self.target(images), mask.mask, valid_values(batch, images, self.encoder.patch_size))
        return MIMOutput(loss=loss, parts={"reconstruction": loss.detach()}, pred=pred, mask=mask.mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.target.to_pixels(out.pred, self.images(batch))
