"""L-inf PGD (Madry et al., ICLR 2018) and clean / robust accuracy, optionally with test-time prompting.

Attacks act on [0, 1] pixels; `classify` maps [0, 1] images to logits (normalisation and any prompt inside),
so the attacker differentiates through the whole pipeline, prompt selection included (white box).
Defaults (ours): epsilon 4/255, 10 steps of 1/255, a uniform random start.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

Classifier = Callable[[torch.Tensor], torch.Tensor]


def pgd_linf(classify: Classifier, images: torch.Tensor, labels: torch.Tensor, epsilon: float = 4 / 255,
             steps: int = 10, step_size: float = 1 / 255, random_start: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial images within `epsilon` (L-inf) of `images` and inside [0, 1] that raise the cross-entropy."""
    if epsilon < 0 or steps < 1 or step_size <= 0:
        raise ConfigError(f"PGD needs epsilon >= 0, steps >= 1 and step_size > 0; got {epsilon}, {steps}, {step_size}")
    images = images.detach()
    adv = images.clone()
    if random_start:
        noise = torch.rand(images.shape, generator=generator).to(images) * 2 - 1
        adv = (adv + epsilon * noise).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(classify(adv), labels)
        grad, = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step_size * grad.sign()
        adv = torch.minimum(torch.maximum(adv, images - epsilon), images + epsilon).clamp(0, 1)
    return adv.detach()


def clean_and_robust_accuracy(classify: Classifier, images: torch.Tensor, labels: torch.Tensor,
                              **pgd) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy on clean and on PGD images (`pgd`: options of `pgd_linf`)."""
    adv = pgd_linf(classify, images, labels, **pgd)
    out = {}
    with torch.no_grad():
        for name, x in (("clean", images), ("robust", adv)):
            logits = classify(x)
            out[f"{name}_accuracy"] = float((logits.argmax(1) == labels).float().mean() * 100)
            out[f"{name}_loss"] = float(F.cross_entropy(logits, labels))
    return out


def prompted_classifier(method: nn.Module, head: nn.Module, mean: Sequence[float], std: Sequence[float],
                        prompt: bool = True) -> Classifier:
    """[0, 1] images -> logits: normalise, add the method's test-time prompt (RobustMAE) when `prompt`, encode
    (mean of patch tokens), `head`."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    if prompt and not hasattr(method, "prompt"):
        raise ConfigError(f"{type(method).__name__} has no test-time prompt; pass prompt=False")

    def classify(images: torch.Tensor) -> torch.Tensor:
        x = (images - m.to(images)) / s.to(images)
        if prompt:
            x = method.prompt(x)
        return head(method.encoder.pool(method.encoder.forward_features(x), "avg"))
    return classify


def robustness(method: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
               test_images: torch.Tensor, test_labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
               epochs: int = 90, seed: int = 0, **pgd) -> dict[str, dict[str, float]]:
    """Clean and robust accuracy of a linear probe on the method's encoder, without and with test-time prompts.

    Images are [0, 1] tensors; the probe (MAE's BatchNorm + linear, `fit_linear_probe`) is trained on clean
    features of the same pipeline it is tested with (prompted or not).
    """
    from .evaluate import fit_linear_probe

    method.eval()
    results = {}
    for prompt in ((False, True) if hasattr(method, "prompt") else (False,)):
        identity = prompted_classifier(method, nn.Identity(), mean, std, prompt)
        with torch.no_grad():
            features = identity(train_images)
        head = fit_linear_probe(features, train_labels, epochs=epochs, seed=seed, progress=False).to(features.device)
        head.requires_grad_(False)
        results["prompted" if prompt else "plain"] = clean_and_robust_accuracy(
            prompted_classifier(method, head, mean, std, prompt), test_images, test_labels, **pgd)
    return results
