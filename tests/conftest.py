"""Shared fixtures: tiny image folders written by the tests themselves; a few training steps on one fixed batch."""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tiny models gain nothing from intra-op threads; the suite runs one worker per core (pytest -n 2) instead.
torch.set_num_threads(1)


def write_pngs(folder: Path, count: int, size: int = 32, seed: int = 0, classes: int = 0, channels: int = 1) -> Path:
    """Smooth random images (blobs), flat or in `classes` class subfolders whose images differ in brightness."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        label = i % classes if classes else None
        cy, cx = rng.uniform(0, size, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 6) ** 2))
        base = 0.3 + 0.5 * (label / max(1, classes - 1)) if classes else 0.5
        image = np.clip(base * blob + 0.1 * rng.random((size, size)), 0, 1)
        array = (image * 255).astype(np.uint8)
        if channels == 3:
            array = np.stack([array, array[::-1], array.T], -1)
        target = folder / str(label) if classes else folder
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(target / f"img_{i:03d}.png")
    return folder


@pytest.fixture
def make_pngs():
    """The `write_pngs` helper, for tests that need other folders."""
    return write_pngs


@pytest.fixture(scope="module")
def make_pngs_module():
    """`write_pngs` for module-scoped fixtures."""
    return write_pngs


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_pngs(tmp_path / "images", 24)


@pytest.fixture
def labelled_folders(tmp_path) -> tuple[Path, Path]:
    return (write_pngs(tmp_path / "train", 30, classes=3, seed=1), write_pngs(tmp_path / "test", 15, classes=3, seed=2))


@dataclass
class FixedBatchRun:
    """The losses of a few optimiser steps on one fixed batch, and the last step's output."""

    losses: list[float]
    parts: dict[str, list[float]] = field(default_factory=dict)  # each named loss part, step by step
    out: object = None

    def first(self, k: int = 5, part: str | None = None) -> float:
        """Mean loss (or loss part) of the first `k` steps."""
        values = self.losses if part is None else self.parts[part]
        return sum(values[:k]) / k

    def last(self, k: int = 5, part: str | None = None) -> float:
        """Mean loss (or loss part) of the last `k` steps."""
        values = self.losses if part is None else self.parts[part]
        return sum(values[-k:]) / k


def train_on_fixed_batch(model, batch: dict, steps: int, lr: float = 1e-3, reseed: int | None = None) -> FixedBatchRun:
    """`steps` AdamW steps of a method on one batch; `reseed=n` seeds step s with s % n (n fixed random masks)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    run = FixedBatchRun([])
    for step in range(steps):
        if reseed:
            torch.manual_seed(step % reseed)
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        run.losses.append(out.loss.item())
        for name, value in out.parts.items():
            run.parts.setdefault(name, []).append(float(value))
        run.out = out
    return run


@pytest.fixture(scope="session")
def fixed_batch_training():
    """`train_on_fixed_batch`: the "loss falls on fixed data" loop every method test shares."""
    return train_on_fixed_batch


def pattern_images(n: int, seed: int, noise: float = 0.05) -> list[dict]:
    """Four easy classes of 16x16 8-bit grey pictures (stripes both ways, checkerboard, bright left half)."""
    r = torch.arange(16)
    stripes = ((r // 2) % 2).float()
    bases = torch.stack([stripes[:, None].expand(16, 16), stripes[None, :].expand(16, 16),
                         ((r[:, None] // 4 + r[None, :] // 4) % 2).float(), (r[None, :] < 8).float().expand(16, 16)])
    labels = torch.arange(n) % 4
    images = bases[labels] + noise * torch.randn(n, 16, 16, generator=torch.Generator().manual_seed(seed))
    images = (images.clamp(0, 1) * 255).round() / 255  # 8-bit values: RandAugment's round trip is then exact
    return [{"image": images[i, None], "label": int(labels[i]), "path": f"image{i}.png"} for i in range(n)]


@pytest.fixture(scope="session")
def patterns():
    """`pattern_images`: the labelled set the evaluation and fine-tuning tests share."""
    return pattern_images


def astronaut_crops(count: int = 4, size: int = 32, origin: tuple[int, int] = (0, 96),
                    step: tuple[int, int] = (64, 32)) -> torch.Tensor:
    """Real pixels: `count` 256^2 crops of scikit-image's astronaut.png (public domain), the i-th at origin + i * step,
    downscaled to size x size and standardised per channel."""
    import torch.nn.functional as F
    from skimage import data

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    (y0, x0), (dy, dx) = origin, step
    crops = [image[:, y0 + dy * i: y0 + dy * i + 256, x0 + dx * i: x0 + dx * i + 256] for i in range(count)]
    batch = F.interpolate(torch.stack(crops), size=(size, size), mode="area")
    return (batch - batch.mean((0, 2, 3), keepdim=True)) / batch.std((0, 2, 3), keepdim=True)


@pytest.fixture(scope="session")
def astronaut_crops_of():
    """`astronaut_crops`: the real-pixel batches of the latent-MAE and diffusion tests."""
    return astronaut_crops
