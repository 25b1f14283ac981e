"""Face datasets from Vec2Face: identities from sampled vectors, variation by perturbation, attribute steering.

What the official scripts do (HaiyuWu/Vec2Face image_generation.py, pose_image_generation.py, model_vec2face.py
`gen_image`), and what is ours:
- identities: the official script reads precomputed identity vectors; the paper keeps sampled vectors whose
  mutual cosine similarity stays under a bound. Ours: Gaussian directions scaled to the vectors' typical norm
  (the norm the model saw in training), accepted greedily while every pair stays under `max_similarity`.
- intra-identity variation: Gaussian noise of std 0.3 / 0.5 / 0.7 per coordinate on 40% / 40% / 20% of an
  identity's images, each sample renormalised to the identity vector's norm (official `sample_nearby_vectors`).
  Ours: `min_similarity` redraws a sample whose cosine to its identity falls under the bound.
- attribute control: Adam (lr 0.1) on the vector to lower an attribute loss plus 100 x the identity loss
  (1 - cos between the recognizer's feature of the image and the identity); a step counts only when the
  identity similarity is at least `min_similarity` (official: identity loss <= 0.3) and the attribute loss is
  within its tolerance. The official loop repeats steps until enough count, which can run forever; ours stops
  after `max_steps` and says which samples never met the bounds.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mimkit.core.errors import ConfigError

log = logging.getLogger(__name__)

# official image_generation.py: noise scales and the share of an identity's images drawn at each
PERTURBATION_SCALES = (0.3, 0.5, 0.7)
PERTURBATION_FRACTIONS = (0.4, 0.4, 0.2)


def pairwise_similarity(vectors: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of rows, (N, N)."""
    unit = F.normalize(vectors.float(), dim=-1)
    return unit @ unit.T


def sample_identities(count: int, dim: int = 512, max_similarity: float = 0.3, norm: float = 1.0, seed: int = 0,
                      max_draws: int | None = None) -> torch.Tensor:
    """`count` random identity vectors (count, dim) of length `norm` whose pairwise cosine stays below the bound."""
    if count < 1 or dim < 1:
        raise ConfigError(f"sample_identities: count and dim must be positive, got count={count}, dim={dim}")
    generator = torch.Generator().manual_seed(seed)
    max_draws = max_draws or 100 * count + 1000
    accepted = torch.empty(0, dim)
    draws = 0
    while len(accepted) < count and draws < max_draws:
        batch = F.normalize(torch.randn(min(4096, max_draws - draws), dim, generator=generator), dim=-1)
        draws += len(batch)
        for candidate in batch:  # greedy: each accepted vector must be far from all accepted so far
            if not len(accepted) or (accepted @ candidate).max() < max_similarity:
                accepted = torch.cat([accepted, candidate[None]])
                if len(accepted) == count:
                    break
    if len(accepted) < count:
        raise ConfigError(f"sample_identities: only {len(accepted)} of {count} identities with pairwise similarity "
                          f"< {max_similarity} in {draws} draws ({dim}-d); raise max_similarity or lower count")
    return accepted * norm


def perturb(vectors: torch.Tensor, per_identity: int, scales: Sequence[float] = PERTURBATION_SCALES,
            fractions: Sequence[float] = PERTURBATION_FRACTIONS, min_similarity: float | None = None, seed: int = 0,
            max_tries: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples (N * per_identity, dim), identity index of each): noise at `scales` on `fractions` of each identity's
    samples, renormalised to the identity's norm; with `min_similarity`, samples under it are redrawn."""
    if len(scales) != len(fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ConfigError(f"perturb: one fraction per scale, summing to 1; got scales {list(scales)}, "
                          f"fractions {list(fractions)}")
    generator = torch.Generator().manual_seed(seed)
    counts = [int(per_identity * f) for f in fractions]
    counts[0] += per_identity - sum(counts)  # rounding leftovers go to the smallest noise
    stds = torch.cat([torch.full((c,), float(s)) for s, c in zip(scales, counts)])
    vectors = vectors.float()
    samples, owners = [], []
    for index, vector in enumerate(vectors):
        std = stds[torch.randperm(per_identity, generator=generator)]  # the official script shuffles the scales
        out = _noisy(vector, std, generator)
        if min_similarity is not None:
            for _ in range(max_tries):
                low = F.cosine_similarity(out, vector[None], dim=-1) < min_similarity
                if not low.any():
                    break
                out[low] = _noisy(vector, std[low], generator)
            else:
                raise ConfigError(f"perturb: identity {index}: noise of std {std[low].tolist()[:3]} keeps giving "
                                  f"similarity < {min_similarity} after {max_tries} tries; lower the bound or the "
                                  f"scales (the noise is per coordinate, relative to a vector of norm "
                                  f"{float(vector.norm()):.3g})")
        samples.append(out)
        owners.append(torch.full((per_identity,), index))
    return torch.cat(samples), torch.cat(owners)


def _noisy(vector: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noisy = vector + torch.randn(len(std), len(vector), generator=generator) * std[:, None]
    return noisy / noisy.norm(dim=-1, keepdim=True) * vector.norm()


def steer(model, vectors: torch.Tensor, attribute_loss: Callable[[torch.Tensor], torch.Tensor],
          min_similarity: float = 0.7, attribute_tolerance: float = float("inf"), steps: int = 1,
          max_steps: int = 50, lr: float = 0.1, identity_weight: float = 100.0,
          identity: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors, met (B,) bool): gradient steps on the vectors toward an attribute, identity kept above a bound.

    `attribute_loss(images in [-1, 1]) -> (B,)` is any differentiable per-image loss (a pose or quality model's).
    Each sample keeps the last vector at which both bounds held; after `steps` such steps it stops moving;
    after `max_steps` in all, a sample that never met them keeps its input vector and `met` is False.
    `identity`: the features the similarity is measured against (official: the input vectors themselves).
    """
    start = vectors.detach().float()
    identity = start if identity is None else identity.detach().float()
    current = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([current], lr=lr)
    best, counted = start.clone(), torch.zeros(len(start), dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_steps):
            drop = model.generation_ratio.minimum
            ratio = max(float(model.generation_ratio.sample()), drop)
            images = model.forward_vectors(current, ratio, drop)[0].clamp(-1, 1)
            similarity = F.cosine_similarity(model.identity_of(images), identity, dim=-1)
            attribute = attribute_loss(images)
            ok = (similarity >= min_similarity) & (attribute <= attribute_tolerance)
            ok = ok.detach() & (counted < steps)
            best[ok] = current.detach()[ok]
            counted += ok.long()
            active = (counted < steps).float()
            if not active.any():
                break
            loss = ((identity_weight * (1 - similarity) + attribute) * active).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        model.train(was_training)
    met = counted > 0
    if not met.all():
        log.warning("steer: %d of %d vectors never met the identity/attribute bounds in %d steps; kept as given",
                    int((~met).sum()), len(met), max_steps)
    return best, met


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def generate_dataset(model, out: str | Path, identities: int = 10, images_per_identity: int = 5,
                     max_similarity: float = 0.3, min_similarity: float | None = None,
                     scales: Sequence[float] = PERTURBATION_SCALES,
                     fractions: Sequence[float] = PERTURBATION_FRACTIONS, norm: float | None = None,
                     batch_size: int = 64, seed: int = 0) -> dict:
    """Write OUT/<identity>/<k>.png for sampled identities and their perturbations, plus OUT/identities.npy
    and OUT/generation.json (settings and the identities' largest pairwise similarity)."""
    out = Path(out)
    if norm is None:
        if not float(model.identity_count):
            raise ConfigError("generate: the model has not recorded the length of its training identity vectors "
                              "(trained before it did, or untrained); give norm=<typical vector length>")
        norm = float(model.identity_norm)
    centres = sample_identities(identities, model.identity_dim, max_similarity, norm, seed)
    samples, owners = perturb(centres, images_per_identity, scales, fractions, min_similarity, seed + 1)
    device = next(model.parameters()).device
    torch.manual_seed(seed)  # the generation masks
    written = 0
    for start in range(0, len(samples), batch_size):
        images = to_uint8(model.generate(samples[start:start + batch_size].to(device)))
        for offset, image in enumerate(images):
            index = start + offset
            folder = out / f"{int(owners[index]):05d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index % images_per_identity:03d}.png")
            written += 1
    np.save(out / "identities.npy", centres.numpy())
    similarity = pairwise_similarity(centres)
    largest = float(similarity.fill_diagonal_(-1).max()) if identities > 1 else None
    summary = dict(identities=identities, images_per_identity=images_per_identity, images=written,
                   max_similarity=max_similarity, largest_pairwise_similarity=largest, min_similarity=min_similarity,
                   scales=list(scales), fractions=list(fractions), norm=norm, seed=seed)
    (out / "generation.json").write_text(json.dumps(summary, indent=1))
    return summary


def measure_folder(folder: str | Path, recognizer: str = "dlib", seed: int = 0) -> dict:
    """Identity separation, intra-identity consistency and verification accuracy of a face folder (one subfolder
    per identity) by a recognizer that did not make it: "dlib" (128-d ResNet, optional extra) or a recognizer file."""
    from .identity import (DlibRecognizer, identity_statistics, load_identity_network, network_embedder,
                           read_identity_folder, verification_accuracy)

    images, owners, _ = read_identity_folder(folder)
    embed = DlibRecognizer() if recognizer == "dlib" else network_embedder(load_identity_network(recognizer))
    features = embed(images)
    result = identity_statistics(features, owners)
    result["verification_accuracy"] = verification_accuracy(features, owners, seed=seed)
    result["recognizer"] = recognizer
    return result


def load_generator(model: str | Path):
    """A trained vec2face method from its .safetensors file or a run folder holding model.safetensors."""
    from mimkit.core.checkpoints import load_method
    from mimkit.core.runs import WEIGHTS

    path = Path(model)
    if path.is_dir():
        path = path / WEIGHTS
    method, _ = load_method(path)
    if getattr(method, "method_name", None) != "vec2face":
        raise ConfigError(f"generate: {path} holds a {getattr(method, 'method_name', type(method).__name__)!r} model; "
                          f"a vec2face one is needed")
    return method


def generate_command(model: str, out: str, identities: int = 10, images_per_identity: int = 5,
                     max_similarity: float = 0.3, min_similarity: float | None = None,
                     scales: list[float] = list(PERTURBATION_SCALES),
                     fractions: list[float] = list(PERTURBATION_FRACTIONS),
                     norm: float | None = None, batch_size: int = 64, seed: int = 0, device: str = "cpu",
                     measure: str | None = None) -> dict:
    """Generate a face dataset with a trained Vec2Face model: OUT/<identity>/<k>.png, one subfolder per identity,
    plus identities.npy and generation.json.

    Args:
        model: a vec2face run folder or its model.safetensors
        out: the folder to write
        identities: how many identities (sampled vectors)
        images_per_identity: images of each identity (perturbations of its vector)
        max_similarity: largest cosine similarity allowed between two identities' vectors
        min_similarity: smallest cosine similarity of a perturbed vector to its identity (redrawn below it)
        scales: per-coordinate noise std of the perturbations (official: 0.3, 0.5, 0.7)
        fractions: share of each identity's images at each scale (official: 0.4, 0.4, 0.2)
        norm: length of the sampled vectors (default: the mean length the model saw in training)
        batch_size: images generated at once
        seed: random seed of the vectors, perturbations and masks
        device: torch device to generate on
        measure: afterwards, measure the folder with an independent recognizer: "dlib" or a recognizer file
            (identity separation, intra-identity consistency, verification accuracy; into generation.json)
    """
    generator = load_generator(model).to(device)
    summary = generate_dataset(generator, out, identities, images_per_identity, max_similarity, min_similarity,
                               scales, fractions, norm, batch_size, seed)
    if measure:
        summary["measured"] = measure_folder(out, measure, seed)
        (Path(out) / "generation.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary["measured"]))
    print(f"wrote {summary['images']} images of {identities} identities to {out} (largest pairwise identity "
          f"similarity {summary['largest_pairwise_similarity']})")
    return summary
