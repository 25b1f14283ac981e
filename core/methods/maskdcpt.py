"""MaskDCPT: Hu et al., "Universal Image Restoration Pre-training via Masked Degradation Classification", 2025."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..decoders import MAEDecoder
from ..degradations import FIVE_D, DegradationSynthesiser
from ..encoders import EncoderConfig, init_weights
from ..errors import ConfigError, DataError
from ..masking import GridMasker, Mask, RatioSchedule
from ..registry import register_method
from ..targets import PixelTarget
from ..tokens import unpatchify
from .base import MIMMethod, MIMOutput


def to_unit_range(images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None):
    """Normalised images -> [0, 1] and the inverse map; without the data's mean/std, each image's own min-max."""
    if mean is not None:
        m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images * s + m).clamp(0, 1), lambda x: (x - m) / s
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    span = (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
    return (images - low) / span, lambda x: x * span + low


class DegradationClassifier(nn.Module):
    """Degradation-classification decoder: a softmax-weighted mix of several encoder levels, pooled, then linear.

    MaskDCPT's `PromptIR_DC` (basicsr/archs/degrad_classify_arch.py) mixes multi-level features with learnable
    softmax weights before a linear classifier; its convolutional stages do not apply to ViT tokens, so each
    level here gets a LayerNorm + linear projection instead (this implementation's choice).
    """

    def __init__(self, dim: int, num_levels: int, num_classes: int):
        super().__init__()
        self.levels = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(num_levels))
        self.mixing_weights = nn.Parameter(torch.ones(num_levels))  # as PromptIR_DC: softmax over levels
        self.fc = nn.Sequential(nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, num_classes))
        self.apply(init_weights)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        weights = torch.softmax(self.mixing_weights, 0)
        mixed = sum(w * level(f).mean(1) for w, level, f in zip(weights, self.levels, features))
        return self.fc(mixed)


@register_method("maskdcpt")
class MaskDCPT(MIMMethod):
    """Classify the degradations of a masked low-quality image and reconstruct its clean version (L1 + CE).

    Each clean batch is degraded on the fly by `DegradationSynthesiser` (or a batch brings its own `degraded`
    images and `degradation` targets); half of the low-quality image's 16-pixel cells are hidden (official
    Mask* archs: `mask_ratio = 0.5`, masking on a grid of `window_size` pixels; the issue's 16-pixel grid is
    the default here, a ViT/16 token each). The ViT encodes only the visible cells, so masked features stay
    masked through every block (the role sparse masking plays in the official CNNs). A classification decoder
    reads several encoder levels; an MAE-style decoder predicts the clean image at every patch, L1 on all pixels.
    The classification loss is cross-entropy (official basicsr/losses/basic_loss.py: CrossEntropyLoss); with
    `per_image > 1` degradations per image the targets are multi-hot and the loss binary cross-entropy (ours).
    Official code releases inference only; decoder sizes, the feature levels and the loss weight are ours.
    """

    def __init__(self, encoder: EncoderConfig = EncoderConfig(),  # ViT-B/16 (the paper's nets are CNN/Swin)
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,  # MAE's decoder
                 mask_ratio: float | RatioSchedule = 0.5,  # official Mask*Net archs: mask_ratio = 0.5
                 mask_patch_size: int = 16,  # the masking grid in pixels (official CNN archs: window_size 8)
                 degradations: Sequence[str] = FIVE_D,  # the README's 5D all-in-one task
                 levels: Sequence[int] = (1, 2, 3), per_image: int = 1,
                 classification_weight: float = 1.0,  # ours: the official training code is not released
                 feature_levels: int = 4,  # ours: four evenly spaced blocks feed the classifier
                 data_mean: Sequence[float] | None = None, data_std: Sequence[float] | None = None):
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)
        units = {m // p for m, p in zip((mask_patch_size,) * 2, enc.patch_size)}
        if any(mask_patch_size % p for p in enc.patch_size) or len(units) != 1:
            raise ConfigError(f"mask_patch_size {mask_patch_size} must be a multiple of the patch size "
                              f"{enc.patch_size}")
        self.masker = GridMasker(mask_ratio, grid=enc.grid, mask_unit=units.pop())
        self.synthesiser = DegradationSynthesiser(degradations, levels, per_image)
        depth = len(enc.blocks)
        self.feature_layers = sorted({max(1, round(depth * (i + 1) / feature_levels)) for i in range(feature_levels)})
        self.classifier = DegradationClassifier(enc.embed_dim, len(self.feature_layers), self.synthesiser.num_classes)
        self.target = PixelTarget(enc.patch_size, normalize=False)  # the clean image itself, L1
        self.decoder = MAEDecoder(enc.grid, enc.embed_dim, math.prod(enc.patch_size) * enc.in_chans,
                                  decoder_embed_dim, decoder_depth, decoder_num_heads, enc.mlp_ratio,
                                  num_prefix_tokens=enc.num_prefix_tokens)
        if (data_mean is None) != (data_std is None):
            raise ConfigError("give both data_mean and data_std (the data's normalisation), or neither")
        self.data_mean = None if data_mean is None else [float(v) for v in data_mean]
        self.data_std = None if data_std is None else [float(v) for v in data_std]
        self.classification_weight = float(classification_weight)

    def degrade(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The low-quality images (normalised like the batch) and their (B, K) degradation targets."""
        images = self.images(batch)
        if "degraded" in batch:
            if "degradation" not in batch:
                raise DataError("a batch with 'degraded' images must also hold their 'degradation' targets (B, K)")
            return batch["degraded"], batch["degradation"].float()
        unit, back = to_unit_range(images.float(), self.data_mean, self.data_std)
        # seeded from torch's generator, which the trainer seeds per step: a run replays the same degradations
        generator = torch.Generator().manual_seed(int(torch.randint(2 ** 31 - 1, ())))
        degraded = self.synthesiser(unit, generator)
        return back(degraded.images).to(images.dtype), degraded.targets

    def encode(self, images: torch.Tensor, mask: Mask):
        return self.encoder.forward_visible(images, mask.ids_keep, return_layers=self.feature_layers)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        clean = self.images(batch)
        low_quality, targets = self.degrade(batch)
        mask = self.masker(clean.shape[0], self.encoder.num_patches, step=step, device=clean.device)
        latent, levels = self.encode(low_quality, mask)
        prefix = self.encoder.num_prefix_tokens
        logits = self.classifier([h[:, prefix:] for h in levels])
        pred = self.decoder(latent, mask.ids_restore)
        reconstruction = (pred.float() - self.target(clean)).abs().mean()
        if self.synthesiser.per_image == 1 and "degraded" not in batch:
            classification = F.cross_entropy(logits.float(), targets.argmax(1))
        else:
            classification = F.binary_cross_entropy_with_logits(logits.float(), targets)
        loss = reconstruction + self.classification_weight * classification
        accuracy = ((logits > 0).float() == targets).all(1).float().mean() if self.synthesiser.per_image > 1 \
            else (logits.argmax(1) == targets.argmax(1)).float().mean()
        return MIMOutput(loss=loss, pred=pred, mask=mask.mask,
                         parts={"reconstruction": reconstruction.detach(), "classification": classification.detach(),
                                "classification_accuracy": accuracy.detach()})

    @torch.no_grad()
    def restore(self, low_quality: torch.Tensor) -> torch.Tensor:
        """The clean image predicted from an unmasked low-quality image (restoration; same normalisation)."""
        enc = self.encoder
        b = low_quality.shape[0]
        ids = torch.arange(enc.num_patches, device=low_quality.device).expand(b, -1)
        pred = self.decoder(enc.forward_visible(low_quality, ids), ids)
        return unpatchify(pred.float(), enc.patch_size, enc.grid, enc.in_chans)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        enc = self.encoder
        return unpatchify(out.pred.float(), enc.patch_size, enc.grid, enc.in_chans)
