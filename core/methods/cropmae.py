"""CropMAE: Eymaël et al., "Efficient Image Pre-Training with Siamese Cropped Masked Autoencoders", ECCV 2024.

Two views of one image: a global random-resized crop, and a local crop taken inside it (both resized to
the model's image size). The global view is encoded whole; the local view is masked at 98.5%, so the
encoder sees a handful of its tokens. A decoder whose blocks self-attend over the local view's tokens and
cross-attend to the global view's tokens reconstructs the local view's pixels (MSE on masked patches).
The views are made here, from the loader's (already augmented) images, with `roi_align`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from ..decoders import CrossAttentionBlock, restore_tokens
from ..encoders import EncoderConfig, LayerNorm, init_weights
from ..errors import ConfigError
from ..masking import RandomMasker, RatioSchedule
from ..registry import register_method
from ..targets import PixelTarget, masked_mse
from ..tokens import sincos_pos_embed
from .base import MIMMethod, MIMOutput


@dataclass
class CropMAEOutput(MIMOutput):
    """MIMOutput plus the two views, (global, local): `pred` and `mask` refer to the local view."""

    views: tuple[torch.Tensor, torch.Tensor] | None = None


def random_boxes(width: torch.Tensor, height: torch.Tensor, scale: Sequence[float],
                 ratio: Sequence[float]) -> torch.Tensor:
    """Random-resized-crop boxes (x1, y1, x2, y2) inside (0, 0, width, height) regions, one per entry.

    Area fraction uniform in `scale`, aspect ratio log-uniform in `ratio` (torchvision's sampling); a box
    larger than its region is clipped to it (instead of torchvision's retries).
    """
    count = width.shape[0]
    area = width * height * (scale[0] + (scale[1] - scale[0]) * torch.rand(count, device=width.device))
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(count, device=width.device)
    aspect = torch.exp(log_ratio)
    w = torch.minimum(torch.sqrt(area * aspect), width)
    h = torch.minimum(torch.sqrt(area / aspect), height)
    x1 = (width - w) * torch.rand(count, device=width.device)
    y1 = (height - h) * torch.rand(count, device=width.device)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


@register_method("cropmae")
class CropMAE(MIMMethod):
    """Reconstruct a 98.5%-masked local crop from itself and the whole global crop it was cut from."""

    def __init__(self,
                 encoder: EncoderConfig = EncoderConfig(embed_dim=384, depth=12, num_heads=6),  # official: ViT-S/16
                 decoder_embed_dim: int = 256, decoder_depth: int = 4, decoder_num_heads: int = 8,  # official
                 mask_ratio: float | RatioSchedule = 0.985,  # paper: 98.5%
                 global_scale: Sequence[float] = (0.2, 1.0),  # official argument default
                 local_scale: Sequence[float] = (0.2, 1.0),  # official argument default (of the global view)
                 aspect_ratio: Sequence[float] = (3 / 4, 4 / 3),  # official
                 flip_prob: float = 0.5,  # official: each view flipped independently
                 norm_pix_loss: bool = True):  # official ImageNet script: --norm_pix_loss
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)  # CropMAE crops 2D images; it has no 3D form
        for name, pair in (("global_scale", global_scale), ("local_scale", local_scale), ("aspect_ratio", aspect_ratio)):
            if len(pair) != 2 or not 0 < pair[0] <= pair[1] or (name != "aspect_ratio" and pair[1] > 1):
                raise ConfigError(f"{name} must be (low, high) with 0 < low <= high{' <= 1' if name != 'aspect_ratio' else ''}, "
                                  f"got {tuple(pair)}")
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.aspect_ratio, self.flip_prob = tuple(aspect_ratio), float(flip_prob)
        self.masker = RandomMasker(mask_ratio)
        self.target = PixelTarget(enc.patch_size, normalize=norm_pix_loss)
        dim = decoder_embed_dim
        self.decoder_embed = nn.Linear(enc.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(dim, enc.grid, cls_token=enc.num_prefix_tokens > 0)
                                              .unsqueeze(0), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            CrossAttentionBlock(dim, decoder_num_heads, enc.mlp_ratio, self_attention=True)
            for _ in range(decoder_depth)])
        self.decoder_norm = LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, math.prod(enc.patch_size) * enc.in_chans)
        for module in (self.decoder_embed, self.decoder_norm, self.decoder_pred):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ the two views
    def crop_boxes(self, batch_size: int, height: int, width: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(global, local) boxes (B, 4) as (x1, y1, x2, y2) pixels; each local box lies inside its global box."""
        full_w = torch.full((batch_size,), float(width), device=device)
        full_h = torch.full((batch_size,), float(height), device=device)
        outer = random_boxes(full_w, full_h, self.global_scale, self.aspect_ratio)
        inner = random_boxes(outer[:, 2] - outer[:, 0], outer[:, 3] - outer[:, 1], self.local_scale, self.aspect_ratio)
        inner = inner + outer[:, :2].repeat(1, 2)  # from the global box's frame to the image's
        return outer, torch.minimum(inner, outer[:, 2:].repeat(1, 2))  # float rounding stays inside

    def _crop(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        index = torch.arange(images.shape[0], device=images.device, dtype=boxes.dtype).unsqueeze(1)
        views = roi_align(images.float(), torch.cat([index, boxes], dim=1), self.encoder.img_size,
                          spatial_scale=1.0, sampling_ratio=-1, aligned=True).to(images.dtype)
        flip = torch.rand(images.shape[0], device=images.device) < self.flip_prob
        return torch.where(flip.view(-1, 1, 1, 1), views.flip(-1), views)

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The global view and the local view cut from inside it, both at the model's image size."""
        outer, inner = self.crop_boxes(images.shape[0], images.shape[-2], images.shape[-1], images.device)
        return self._crop(images, outer), self._crop(images, inner)

    # ------------------------------------------------------------------ training step
    def decode(self, context: torch.Tensor, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Local-view latents (B, prefix + K, D) + global-view tokens (B, prefix + N, D) -> (B, N, patch pixels)."""
        prefix = self.encoder.num_prefix_tokens
        context = self.decoder_embed(context)
        x = self.decoder_embed(latent)
        x = torch.cat([x[:, :prefix], restore_tokens(x[:, prefix:], ids_restore, self.mask_token)], dim=1)
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x, context)
        return self.decoder_pred(self.decoder_norm(x))[:, prefix:]

    def forward(self, batch: dict, step: int | None = None) -> CropMAEOutput:
        images = self.images(batch)
        global_view, local_view = self.views(images)
        context = self.encoder.forward_features(global_view)
        mask = self.masker(images.shape[0], self.encoder.num_patches, step=step, device=images.device)
        latent = self.encoder.forward_visible(local_view, mask.ids_keep)
        pred = self.decode(context, latent, mask.ids_restore)
        loss = masked_mse(pred, self.target(local_view), mask.mask)
        return CropMAEOutput(loss=loss, parts={"reconstruction": loss.detach()}, pred=pred, mask=mask.mask,
                             views=(global_view, local_view), images=local_view)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        """The local view rebuilt from `out.pred` (the local view, not the batch image, is what is predicted)."""
        out = out if isinstance(out, CropMAEOutput) and out.views is not None else self(batch)
        return self.target.to_pixels(out.pred, out.views[1])
