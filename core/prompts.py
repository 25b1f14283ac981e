"""Frequency-domain visual prompts restricted to a band of spatial frequencies, and k-means prototypes that pick one.

RobustMAE (Huang et al., ICCV 2023, arXiv 2308.10315) learns one prompt per cluster of the pretraining data's
features, occupying the medium/high frequencies; at test time the nearest prototype picks the prompt added to
the image. The band, the prompt parametrisation and the online k-means are this module's choices.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError, DataError


def radial_frequency(size: Sequence[int]) -> torch.Tensor:
    """Radius sqrt(fy^2 + fx^2) in cycles per pixel of each rfft2 coefficient of an (H, W) image: (H, W // 2 + 1)."""
    h, w = size
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fy ** 2 + fx ** 2)


def band_mask(size: Sequence[int], band: Sequence[float]) -> torch.Tensor:
    """1 where the radial frequency lies in (low, high], else 0; Nyquist is 0.5 cycles per pixel per axis."""
    low, high = float(band[0]), float(band[1])
    if not 0 <= low < high:
        raise ConfigError(f"a frequency band needs 0 <= low < high (cycles per pixel), got {tuple(band)}")
    r = radial_frequency(size)
    return ((r > low) & (r <= high)).float()


class FrequencyPrompts(nn.Module):
    """`num_prompts` additive image prompts, each learned as rfft2 coefficients inside a frequency band.

    The spatial prompt is irfft2 of the coefficients times the band mask, so its spectrum is zero outside the
    band by construction (no DC: the prompt never shifts an image's mean when `low` > 0).
    """

    def __init__(self, num_prompts: int, channels: int, size: Sequence[int], band: Sequence[float] = (0.125, 1.0),
                 init_std: float = 0.01):
        super().__init__()
        self.size = tuple(int(s) for s in size)
        self.register_buffer("mask", band_mask(self.size, band), persistent=False)
        shape = (num_prompts, channels, self.size[0], self.size[1] // 2 + 1)
        self.real = nn.Parameter(torch.randn(shape) * init_std)
        self.imag = nn.Parameter(torch.randn(shape) * init_std)

    def spatial(self) -> torch.Tensor:
        """All prompts in image space: (K, C, H, W)."""
        spectrum = torch.complex(self.real, self.imag) * self.mask
        return torch.fft.irfft2(spectrum, s=self.size, norm="ortho")

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """The prompts of a batch, (B, C, H, W), for prompt indices (B,)."""
        return self.spatial()[index]


def kmeans_prototypes(features: torch.Tensor, num_prototypes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means (scikit-learn, k-means++, 10 starts) of (N, D) features: (K, D) centres and the (K,) cluster sizes."""
    from sklearn.cluster import KMeans

    if len(features) < num_prototypes:
        raise DataError(f"k-means of {num_prototypes} prototypes needs at least as many feature vectors, "
                        f"got {len(features)}")
    kmeans = KMeans(n_clusters=num_prototypes, n_init=10, random_state=seed)
    kmeans.fit(features.detach().double().cpu().numpy())
    centres = torch.from_numpy(kmeans.cluster_centers_).to(features)
    counts = torch.bincount(torch.from_numpy(kmeans.labels_).long(), minlength=num_prototypes).to(features)
    return centres, counts


def nearest_prototype(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the prototype nearest (Euclidean) to each feature vector (B, D)."""
    return torch.cdist(features.float(), prototypes.float()).argmin(1)


class Prototypes(nn.Module):
    """K prototypes of the feature space: fitted offline by k-means, or kept online as running cluster means.

    Online (while training, before any offline fit): the first batch seeds the centres by k-means++
    (scikit-learn, fixed random state; unfitted prototypes outside training are seeded the same way from the
    batch at hand, without counting it), then each batch assigns its features to the nearest centre and moves
    it to the running mean of all features assigned so far (sequential k-means, MacQueen 1967).
    """

    def __init__(self, num_prototypes: int, dim: int):
        super().__init__()
        self.register_buffer("centres", torch.zeros(num_prototypes, dim))
        self.register_buffer("counts", torch.zeros(num_prototypes))

    @property
    def ready(self) -> bool:
        return bool(self.counts.sum() > 0)

    def fit(self, features: torch.Tensor, seed: int = 0) -> None:
        centres, counts = kmeans_prototypes(features, len(self.centres), seed)
        self.centres.copy_(centres)
        self.counts.copy_(counts)

    @torch.no_grad()
    def assign(self, features: torch.Tensor, update: bool = False) -> torch.Tensor:
        """Nearest prototype of each feature; with `update`, the online k-means step (seeding first if needed)."""
        features = features.detach().float()
        if not self.ready:  # nothing fitted or seen yet: seed from this batch (k-means++, fixed random state)
            self._seed(features)
        index = nearest_prototype(features, self.centres)
        if update:
            sums = torch.zeros_like(self.centres).index_add_(0, index, features)
            added = torch.bincount(index, minlength=len(self.centres)).to(self.counts)
            total = self.counts + added
            seen = total > 0
            self.centres[seen] = (self.centres[seen] * self.counts[seen, None] + sums[seen]) / total[seen, None]
            self.counts.copy_(total)
        return index

    def _seed(self, features: torch.Tensor) -> None:
        from sklearn.cluster import kmeans_plusplus

        k = len(self.centres)
        pool = features if len(features) >= k else features[torch.arange(k) % len(features)]
        centres, _ = kmeans_plusplus(pool.double().cpu().numpy(), n_clusters=k, random_state=0)
        self.centres.copy_(torch.from_numpy(centres).to(self.centres))
