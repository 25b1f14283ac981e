"""Restoration evaluation: PSNR and SSIM (torchmetrics) of a restorer per degradation, against the degraded input.

Restoration fine-tuning is MaskDCPT itself trained without masking or classification
(`--model.mask_ratio 0 --model.classification_weight 0`, starting from a pretrained run's weights);
`restoration_scores` then measures it on clean images degraded by the seeded synthesiser.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from .degradations import DEGRADATIONS
from .errors import ConfigError


@torch.no_grad()
def restoration_scores(restore: Callable[[torch.Tensor], torch.Tensor], clean: torch.Tensor,
                       kinds: Sequence[str], level: int = 2, seed: int = 0) -> dict[str, dict[str, float]]:
    """For each degradation kind: PSNR (dB) and SSIM of `restore(degraded)` and of the degraded input itself.

    `clean` is a (B, C, H, W) batch in [0, 1]; `restore` maps [0, 1] images to [0, 1] images (clamped here).
    Image i of every kind is degraded with seed `seed + i`, so runs and models compare on identical inputs.
    """
    unknown = [k for k in kinds if k not in DEGRADATIONS]
    if unknown:
        raise ConfigError(f"unknown degradation(s) {unknown}; choose from {', '.join(DEGRADATIONS)}")
    scores = {}
    for kind in kinds:
        degraded = torch.stack([DEGRADATIONS[kind](image, level, torch.Generator().manual_seed(seed + i))
                                for i, image in enumerate(clean.float().cpu())]).to(clean)
        restored = restore(degraded).float().clamp(0, 1)
        scores[kind] = {
            "psnr_input": float(peak_signal_noise_ratio(degraded, clean, data_range=1.0)),
            "ssim_input": float(structural_similarity_index_measure(degraded, clean, data_range=1.0)),
            "psnr": float(peak_signal_noise_ratio(restored, clean, data_range=1.0)),
            "ssim": float(structural_similarity_index_measure(restored, clean, data_range=1.0)),
        }
    return scores


def method_restorer(method, mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A [0, 1] -> [0, 1] restorer from a method with `restore(normalised images)` and the data's normalisation."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def restore(images: torch.Tensor) -> torch.Tensor:
        was_training = method.training
        method.eval()
        try:
            out = method.restore((images - m.to(images)) / s.to(images))
        finally:
            method.train(was_training)
        return out * s.to(out) + m.to(out)
    return restore
