"""CropMAE: Eymaël et al., "Efficient Image Pre-Training with Siamese Cropped Masked Autoencoders", ECCV 2024.

Two views of one image: a global random-resized crop of the full-resolution image, and a local random-resized
crop of the global view (both at the model's image size, bilinear with antialiasing, each flipped on its own),
as the official `GlobalToLocal` strategy. The global view is encoded whole; the local view is masked at 98.5%
(int(196 x 0.015) = 2 visible tokens at 224 px), so the encoder sees a handful of its tokens. The official
decoder block (post-norm; cross-attention to the global view -> FFN 2048 -> self-attention; dropout 0.1)
reconstructs the local view's pixels (MSE on masked patches).
The views are made in the loader (`CropMAEViews`, side by side in one (C, H, 2W) image), where the full
resolution is still there; a batch of plain images (the Python API, tests) is cut here with `roi_align`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
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


class CropMAEViews:
    """Loader transform: (global, local) views side by side, (H, W, C) -> (size, 2 * size, C) float32.

    Official `GlobalToLocal`: the global view is a random-resized crop of the whole image (area in
    `global_scale`, aspect log-uniform in `aspect_ratio`, a box larger than the image clipped to it instead of
    retried, as the official `RRC`); the local view is one of the global view; bilinear resizing with
    antialiasing; each view flipped horizontally with `flip_prob` on its own. Called as albumentations is.
    """

    def __init__(self, img_size: int | Sequence[int], global_scale: Sequence[float] = (0.2, 1.0),
                 local_scale: Sequence[float] = (0.2, 1.0), aspect_ratio: Sequence[float] = (3 / 4, 4 / 3),
                 flip_prob: float = 0.5):
        self.size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.aspect_ratio, self.flip_prob = tuple(aspect_ratio), float(flip_prob)
        self.rng = np.random.default_rng()

    def set_random_state(self, rng: np.random.Generator, *_) -> None:
        self.rng = rng

    def _crop(self, image: torch.Tensor, scale: Sequence[float]) -> torch.Tensor:
        height, width = image.shape[-2:]
        area = height * width * self.rng.uniform(*scale)
        aspect = math.exp(self.rng.uniform(math.log(self.aspect_ratio[0]), math.log(self.aspect_ratio[1])))
        w = min(int(round(math.sqrt(area * aspect))), width)
        h = min(int(round(math.sqrt(area / aspect))), height)
        top, left = int(self.rng.integers(0, height - h + 1)), int(self.rng.integers(0, width - w + 1))
        return F.interpolate(image[None, :, top:top + h, left:left + w], size=self.size, mode="bilinear",
                             align_corners=False, antialias=True)[0]

    def __call__(self, image: np.ndarray, **_) -> dict:
        pixels = torch.from_numpy(np.ascontiguousarray(image, np.float32)).permute(2, 0, 1)
        global_view = self._crop(pixels, self.global_scale)
        views = [global_view, self._crop(global_view, self.local_scale)]  # the local view: a crop of the global one
        views = [v.flip(-1) if self.rng.random() < self.flip_prob else v for v in views]  # after cropping, each alone
        return {"image": torch.cat(views, dim=-1).permute(1, 2, 0).numpy()}


class CropMAEDecoderBlock(nn.Module):
    """The official CropMAE decoder block: post-norm cross-attention -> FFN -> self-attention (GELU, LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norm_cross, self.norm_ffn, self.norm_self = (nn.LayerNorm(dim, eps=1e-6) for _ in range(3))
        self.drop_cross, self.drop_ffn, self.drop_self = (nn.Dropout(dropout) for _ in range(3))
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.norm_cross(x + self.drop_cross(self.cross_attn(x, context, context, need_weights=False)[0]))
        x = self.norm_ffn(x + self.drop_ffn(self.ffn(x)))
        return self.norm_self(x + self.drop_self(self.self_attn(x, x, x, need_weights=False)[0]))


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
                 norm_pix_loss: bool = True,  # official ImageNet script: --norm_pix_loss
                 decoder_block: str = "official",  # "official" (CropMAEDecoderBlock) or "prenorm" (core's block)
                 decoder_ffn_dim: int = 2048,  # official DecoderBlock: dim_feedforward 2048
                 decoder_dropout: float = 0.1):  # official DecoderBlock: dropout 0.1
        super().__init__()
        if decoder_block not in ("official", "prenorm"):
            raise ConfigError(f"decoder_block must be 'official' or 'prenorm', got {decoder_block!r}")
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
        # "prenorm": mimkit's earlier pre-norm block (self -> cross -> MLP of mlp_ratio), kept as a named option
        self.decoder_blocks = nn.ModuleList([
            CropMAEDecoderBlock(dim, decoder_num_heads, decoder_ffn_dim, decoder_dropout) if decoder_block == "official"
            else CrossAttentionBlock(dim, decoder_num_heads, enc.mlp_ratio, self_attention=True)
            for _ in range(decoder_depth)])
        self.decoder_norm = LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, math.prod(enc.patch_size) * enc.in_chans)
        for module in (self.decoder_embed, self.decoder_norm, self.decoder_pred):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ the two views
    @classmethod
    def loader_transform(cls, model: dict, img_size) -> CropMAEViews:
        """The loader's transform for these settings: the two views from the full-resolution image."""
        import inspect

        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        keys = ("global_scale", "local_scale", "aspect_ratio", "flip_prob")
        return CropMAEViews(img_size, **{k: model.get(k, defaults[k]) for k in keys})

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
        """The global view and the local view cut from inside it, both at the model's image size.

        A (B, C, H, 2W) batch from `CropMAEViews` holds both side by side; other batches are cut here.
        """
        height, width = self.encoder.img_size
        if tuple(images.shape[-2:]) == (height, 2 * width):
            return images[..., :width], images[..., width:]
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
