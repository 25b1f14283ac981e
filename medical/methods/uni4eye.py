"""Uni4Eye: Cai et al., "Uni4Eye: Unified 2D and 3D Self-supervised Pre-training via Masked Image Modeling
Transformer for Ophthalmic Image Classification", MICCAI 2022.

One ViT encodes 2D images (fundus, OCTA projections) and 3D volumes (OCT) through a unified patch embedding;
a dual-branch decoder reconstructs the masked patches of the image and of its gradient map.

A batch may carry both kinds at once, since 2D and 3D tensors cannot be stacked:
`{"image": (B, C, H, W), "volume": (B3, C3, D, H, W)}`. Either key alone also works, and "image" may itself
be a 3D volume. Each tensor is masked, encoded and decoded on its own; the step's loss is the sum of their
losses, so one backward pass trains on both.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from mimkit.core.decoders import MaskedTokenDecoder, decoder_blocks
from mimkit.core.encoders import EncoderConfig, UnifiedViTEncoder, init_weights
from mimkit.core.errors import DataError
from mimkit.core.masking import RandomMasker, RatioSchedule
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.targets import GradientTarget, PixelTarget, masked_mse
from mimkit.core.tokens import sincos_pos_embed


class UnifiedDecoderBranch(MaskedTokenDecoder):
    """One branch of Uni4Eye's decoder: MAE decoder blocks shared by 2D and 3D tokens, with fixed sin-cos
    positions and a prediction head for each dimensionality."""

    def __init__(self, grid: Sequence[int], volume_grid: Sequence[int], in_dim: int, out_dim: int,
                 volume_out_dim: int, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, num_prefix_tokens: int = 1):
        super().__init__(grid, in_dim, out_dim, decoder_embed_dim,
                         decoder_blocks(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio),
                         num_prefix_tokens)
        self.grids = {2: self.grid, 3: tuple(volume_grid)}
        self.pos_embed_3d = nn.Parameter(sincos_pos_embed(decoder_embed_dim, volume_grid).unsqueeze(0),
                                         requires_grad=False)
        self.pred_3d = nn.Linear(decoder_embed_dim, volume_out_dim)
        init_weights(self.pred_3d)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        """latent (B, prefix + K, D_enc) of 2D or 3D tokens -> predictions for every token (B, N, out_dim)."""
        positions = self.pos_embed if spatial_dims == 2 else self.pos_embed_3d
        x = self.tokens(latent, ids_restore, positions, self.grids[spatial_dims])
        for block in self.blocks:
            x = block(x)
        return self.predict(x, self.pred if spatial_dims == 2 else self.pred_3d)


@register_method("uni4eye")
class Uni4Eye(MIMMethod):
    """MAE over 2D images and 3D volumes in one ViT; two decoders rebuild the masked pixels and gradient map."""

    def __init__(self,
                 # Uni4Eye++ reference code: ViT-L/16 encoder with MAE's 512-wide, 8-block decoder; the 2D image side
                 encoder: EncoderConfig = EncoderConfig(embed_dim=1024, depth=24, num_heads=16),
                 # Uni4Eye++ reference code (Davidczy/Uni4Eye_pp): volumes of img x img x img/2 voxels, here (D, H, W)
                 volume_size: int | tuple[int, ...] = (112, 224, 224),
                 volume_patch_size: int | tuple[int, ...] | None = None, volume_chans: int | None = None,
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 mask_ratio: float | RatioSchedule = 0.75,  # reference code: 75%
                 norm_pix_loss: bool = False,  # reference code: raw-pixel target unless --norm_pix_loss
                 gradient_loss_weight: float = 1.0):  # image and gradient losses weighted equally
        super().__init__()
        # one encoder for 2D images and 3D volumes: 2D by configuration, volumes enter through volume_size
        self.encoder = enc = self.build_encoder(encoder, UnifiedViTEncoder, volume_size=volume_size,
                                                volume_patch_size=volume_patch_size, volume_chans=volume_chans)
        self.masker = RandomMasker(mask_ratio)
        self.gradient_loss_weight = float(gradient_loss_weight)
        patches = {2: enc.patch_size, 3: enc.volume_patch_size}
        self.pixel_targets = {d: PixelTarget(p, normalize=norm_pix_loss) for d, p in patches.items()}
        self.gradient_targets = {d: GradientTarget(p, normalize=norm_pix_loss) for d, p in patches.items()}
        out_2d, out_3d = math.prod(enc.patch_size) * enc.in_chans, math.prod(enc.volume_patch_size) * enc.volume_chans
        branch = dict(grid=enc.grid, volume_grid=enc.volume_grid, in_dim=enc.embed_dim, out_dim=out_2d,
                      volume_out_dim=out_3d, decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                      decoder_num_heads=decoder_num_heads, mlp_ratio=enc.mlp_ratio,
                      num_prefix_tokens=enc.num_prefix_tokens)
        self.image_decoder = UnifiedDecoderBranch(**branch)
        self.gradient_decoder = UnifiedDecoderBranch(**branch)

    def inputs(self, batch: dict) -> list[torch.Tensor]:
        """The batch's tensors to train on: "image" (2D or 3D) and/or "volume" (3D)."""
        found = [batch[key] for key in ("image", "volume") if key in batch]
        if not found:
            raise DataError(f"a uni4eye batch needs an 'image' (B, C, H, W) and/or a 'volume' (B, C, D, H, W) "
                            f"tensor; got keys {sorted(batch)}")
        if "volume" in batch and batch["volume"].ndim != 5:
            raise DataError(f"batch['volume'] must be 3D volumes (B, C, D, H, W), "
                            f"got shape {tuple(batch['volume'].shape)}")
        return found

    def images(self, batch: dict) -> torch.Tensor:
        return self.inputs(batch)[0]

    def _step(self, images: torch.Tensor, step: int | None):
        """Mask, encode and decode one 2D or 3D tensor; returns the two losses, image predictions and mask."""
        dims = images.ndim - 2
        num_tokens = math.prod(self.encoder.patch_embed.check(images))
        mask = self.masker(images.shape[0], num_tokens, step=step, device=images.device)
        latent = self.encoder.forward_visible(images, mask.ids_keep)
        pred = self.image_decoder(latent, mask.ids_restore, dims)
        pred_gradient = self.gradient_decoder(latent, mask.ids_restore, dims)
        image_loss = masked_mse(pred, self.pixel_targets[dims](images), mask.mask)
        gradient_loss = masked_mse(pred_gradient, self.gradient_targets[dims](images), mask.mask)
        return image_loss, gradient_loss, pred, mask.mask

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        loss, parts, first = 0.0, {}, None
        for images in self.inputs(batch):
            image_loss, gradient_loss, pred, mask = self._step(images, step)
            loss = loss + image_loss + self.gradient_loss_weight * gradient_loss
            tag = f"{images.ndim - 2}d"
            for name, value in ((f"image_{tag}", image_loss), (f"gradient_{tag}", gradient_loss)):
                parts[name] = parts.get(name, 0.0) + value.detach()
            first = first or (pred, mask)
        # pred / mask describe the first tensor (batch["image"] when present), the one `reconstruct` rebuilds
        return MIMOutput(loss=loss, parts=parts, pred=first[0], mask=first[1])

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        images = self.images(batch)
        return self.pixel_targets[images.ndim - 2].to_pixels(out.pred, images)
