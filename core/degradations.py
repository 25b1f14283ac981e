"""A seeded, composable synthesiser of image degradations with levels (MaskDCPT's low-quality inputs).

Every degradation is a plain function of a (C, H, W) image in [0, 1], its level (1 = mild .. 3 = strong) and a
torch.Generator, so one seed reproduces the same degraded image. `DegradationSynthesiser` draws which
degradations (and levels) each image of a batch gets and returns the class targets with the images.

The kinds follow MaskDCPT's list (github.com/MILab-PKU/MaskDCPT, README: 5D/12D all-in-one restoration); the
numbers of each level are this module's choices unless a comment names their source.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ConfigError

Degrade = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _check_level(level: int) -> int:
    if level not in (1, 2, 3):
        raise ConfigError(f"a degradation level must be 1, 2 or 3, got {level}")
    return level


def _convolve(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel 2D convolution with reflect padding (keeps the mean of a flat image)."""
    c = image.shape[0]
    kh, kw = kernel.shape
    padded = F.pad(image[None], (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    weight = kernel.to(image)[None, None].expand(c, 1, kh, kw)
    return F.conv2d(padded, weight, groups=c)[0]


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = g[:, None] * g[None, :]
    return kernel / kernel.sum()


def line_kernel(length: int, angle: float) -> torch.Tensor:
    """A normalised line of `length` pixels at `angle` radians (0 = horizontal motion)."""
    size = length if length % 2 else length + 1
    kernel = torch.zeros(size, size)
    centre = size // 2
    for t in torch.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length):
        x = round(centre + float(t) * math.cos(angle))
        y = round(centre - float(t) * math.sin(angle))
        kernel[y, x] = 1.0
    return kernel / kernel.sum()


# ------------------------------------------------------------------------------------------ the degradations
NOISE_SIGMA = {1: 15 / 255, 2: 25 / 255, 3: 50 / 255}   # the denoising benchmarks' sigma 15 / 25 / 50
BLUR_SIGMA = {1: 1.0, 2: 2.0, 3: 3.0}
MOTION_LENGTH = {1: 5, 2: 9, 3: 15}
JPEG_QUALITY = {1: 50, 2: 30, 3: 10}
HAZE_BETA = {1: 0.8, 2: 1.5, 3: 2.5}
RAIN_DENSITY = {1: 0.004, 2: 0.008, 3: 0.016}           # share of pixels that start a streak
LOW_LIGHT = {1: (1.5, 0.6), 2: (2.0, 0.4), 3: (2.5, 0.25)}  # (gamma, gain)
SNOW_DENSITY = {1: 0.003, 2: 0.006, 3: 0.012}
DOWNSAMPLE_FACTOR = {1: 2, 2: 3, 3: 4}


def add_noise(image: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    """Additive white Gaussian noise of sigma 15, 25 or 50 (of 255)."""
    sigma = NOISE_SIGMA[_check_level(level)]
    noise = torch.randn(image.shape, generator=generator).to(image) * sigma
    return (image + noise).clamp(0, 1)


def gaussian_blur(image: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    """Isotropic Gaussian blur of sigma 1, 2 or 3 pixels."""
    return _convolve(image, gaussian_kernel(BLUR_SIGMA[_check_level(level)]))


def motion_blur(image: torch.Tensor, level: int, generator: torch.Generator,
                angle: float | None = None) -> torch.Tensor:
    """Linear motion blur over 5, 9 or 15 pixels at a random angle (or `angle`, radians)."""
    angle = _uniform(generator, 0, math.pi) if angle is None else angle
    return _convolve(image, line_kernel(MOTION_LENGTH[_check_level(level)], angle))


def jpeg(image: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    """JPEG compression at quality 50, 30 or 10 (Pillow's encoder, 8x8 blocks)."""
    quality = JPEG_QUALITY[_check_level(level)]
    array = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    mode = "L" if array.shape[2] == 1 else "RGB"
    if array.shape[2] not in (1, 3):  # JPEG holds 1 or 3 channels: code each channel as its own grey image
        return torch.stack([jpeg(channel[None], level, generator)[0] for channel in image])
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if mode == "L" else array, mode).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(mode), dtype=np.float32) / 255
    decoded = decoded[..., None] if decoded.ndim == 2 else decoded
    return torch.from_numpy(decoded).permute(2, 0, 1).to(image)


def haze(image: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    """Atmospheric scattering I = J t + A (1 - t), t = exp(-beta d) over a random linear depth ramp d in [0, 1]."""
    beta = HAZE_BETA[_check_level(level)]
    airlight = _uniform(generator, 0.8, 1.0)
    angle = _uniform(generator, 0, 2 * math.pi)
    h, w = image.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    depth = 0.5 + 0.5 * ramp / ramp.abs().max().clamp_min(1e-6)
    t = torch.exp(-beta * (0.5 + 0.5 * depth)).to(image)  # depth in [0.5, 1]: the near side is hazy too
    return image * t + airlight * (1 - t)


def _streaks(shape: Sequence[int], density: float, length: int, angle: float, generator: torch.Generator,
             width_sigma: float | None = None) -> torch.Tensor:
    """A (H, W) layer in [0, 1]: sparse random seeds smeared along `angle` (rain) or blurred round (snow)."""
    h, w = shape
    seeds = (torch.rand(h, w, generator=generator) < density).float()
    seeds = seeds * (0.6 + 0.4 * torch.rand(h, w, generator=generator))
    kernel = line_kernel(length, angle) if width_sigma is None else gaussian_kernel(width_sigma)
    layer = _convolve(seeds[None], kernel)[0]
    return (layer / layer.max().clamp_min(1e-6)).clamp(0, 1)


def rain(image: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    """Rain streaks: sparse drops smeared into bright lines about 75-105 degrees from horizontal, screen-blended."""
    angle = _uniform(generator, math.radians(75), math.radians(105))
    layer = _streaks(image.shape[-2:], RAIN_DENSITY[_check_level(level)], 11, angle, generator).to(image) * 0.8
    return 1 - (1 - image) * (1 - layer)


def low_light(image: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    """Low light: gamma then gain (I = gain * J^gamma), gamma 1.5 / 2 / 2.5, gain 0.6 / 0.4 / 0.25."""
    gamma, gain = LOW_LIGHT[_check_level(level)]
    return gain * image.clamp(0, 1) ** gamma


def snow(image: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    """Snow: round bright flakes (blurred seeds) laid over the image by the lighter of the two."""
    layer = _streaks(image.shape[-2:], SNOW_DENSITY[_check_level(level)], 1, 0.0, generator, width_sigma=0.8)
    return torch.maximum(image, layer.to(image).expand_as(image))


def downsample(image: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    """Bicubic downsampling by 2, 3 or 4 and back up to the same size (super-resolution input)."""
    factor = DOWNSAMPLE_FACTOR[_check_level(level)]
    h, w = image.shape[-2:]
    small = F.interpolate(image[None], size=(max(1, h // factor), max(1, w // factor)), mode="bicubic",
                          align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)


DEGRADATIONS: dict[str, Degrade] = {
    "noise": add_noise, "blur": gaussian_blur, "motion_blur": motion_blur, "jpeg": jpeg, "haze": haze,
    "rain": rain, "low_light": low_light, "snow": snow, "downsample": downsample,
}
# the 5D all-in-one benchmark of MaskDCPT's README: dehazing, deraining, denoising, deblurring (motion), low light
FIVE_D = ("haze", "rain", "noise", "motion_blur", "low_light")


@dataclass
class Degraded:
    """A degraded batch: the images, a (B, K) 0/1 target of the kinds applied, and each image's (kind, level) list."""

    images: torch.Tensor
    targets: torch.Tensor
    applied: list[list[tuple[str, int]]]


class DegradationSynthesiser:
    """Draw `per_image` distinct degradations (and levels) for each image and apply them in a fixed order.

    `kinds` are names of `DEGRADATIONS` (their order is the class order); `levels` the levels drawn from.
    Calls with generators of the same seed give identical results.
    """

    def __init__(self, kinds: Sequence[str] = tuple(DEGRADATIONS), levels: Sequence[int] = (1, 2, 3),
                 per_image: int = 1):
        unknown = [k for k in kinds if k not in DEGRADATIONS]
        if unknown or not kinds:
            raise ConfigError(f"degradations must be some of {', '.join(DEGRADATIONS)}; got {list(kinds)}")
        if not 1 <= per_image <= len(kinds):
            raise ConfigError(f"per_image must be between 1 and the number of kinds ({len(kinds)}), got {per_image}")
        self.kinds, self.levels, self.per_image = tuple(kinds), tuple(_check_level(v) for v in levels), per_image

    @property
    def num_classes(self) -> int:
        return len(self.kinds)

    def draw(self, generator: torch.Generator) -> list[tuple[str, int]]:
        """One image's degradations, in the canonical order of `kinds`."""
        chosen = sorted(torch.randperm(len(self.kinds), generator=generator)[:self.per_image].tolist())
        levels = torch.randint(len(self.levels), (len(chosen),), generator=generator).tolist()
        return [(self.kinds[i], self.levels[j]) for i, j in zip(chosen, levels)]

    def apply(self, image: torch.Tensor, applied: Sequence[tuple[str, int]],
              generator: torch.Generator) -> torch.Tensor:
        for kind, level in applied:
            image = DEGRADATIONS[kind](image, level, generator)
        return image

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> Degraded:
        """Degrade a (B, C, H, W) batch in [0, 1]."""
        generator = generator or torch.Generator().manual_seed(int(torch.randint(2 ** 31, ())))
        out, applied = [], []
        targets = torch.zeros(images.shape[0], self.num_classes)
        for b, image in enumerate(images.detach()):
            chosen = self.draw(generator)
            applied.append(chosen)
            out.append(self.apply(image.float().cpu(), chosen, generator))
            for kind, _ in chosen:
                targets[b, self.kinds.index(kind)] = 1
        return Degraded(torch.stack(out).to(images), targets.to(images.device), applied)
