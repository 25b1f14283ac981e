"""What reproducing a published figure would cost, before anyone spends it.

For a published row: the pretraining recipe that would reproduce it (method, model size, epochs, batch, schedule,
each with the recipe's source), the FLOPs of one training step counted with torch's FLOP counter on the real model
(forward + backward), the step time measured on this machine, and from these the total compute, the time on this
machine and the GPU-hours at a stated utilisation of a named GPU's dense bf16 peak.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from mimkit.core.errors import ConfigError

from .published import PublishedResult, published_results

# Dense bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets (without sparsity).
GPU_PEAK_TFLOPS = {"V100": 125.0, "A100": 312.0, "L40S": 362.0, "H100": 989.0, "H200": 989.0}
# Training images of the pretraining sets whose size is a fact of the data set itself.
PRETRAIN_IMAGES = {"ImageNet-1K": 1_281_167}
_MODEL = re.compile(r"ViT-(Ti|S|B|L|H|g)/(\d+)$")
_SIZES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}
DOMAINS = ("core", "medical", "remote_sensing", "faces", "multimodal")


def published_rows() -> list[PublishedResult]:
    """Every published figure in a stable order; `mimkit-bench cost N` picks the N-th (1-based)."""
    return sorted(published_results(), key=lambda p: (p.method, p.data, p.protocol, p.model, p.img_size, p.setting,
                                                      p.source, p.table))


def find_recipe(method: str) -> Path | None:
    """The method's pretraining recipe in its domain's recipes folder (<method>.yaml), if there is one."""
    root = Path(__file__).resolve().parent.parent
    for domain in DOMAINS:
        for name in (f"{method}.yaml", f"{method}_pretrain.yaml"):
            path = root / domain / "recipes" / name
            if path.is_file():
                return path
    return None


def reproduction_recipe(row: PublishedResult) -> dict:
    """The settings that would reproduce `row`'s pretraining, from the method's recipe, with the row's model."""
    from mimkit.core.config import read_yaml_mapping

    path = find_recipe(row.method)
    if path is None:
        raise ConfigError(f"method {row.method!r} has no pretraining recipe (<domain>/recipes/{row.method}.yaml); "
                          f"without one the cost of {row.model} on {row.data} cannot be estimated")
    recipe = read_yaml_mapping(path)
    model = dict(recipe.get("model") or {})
    encoder = dict(model.get("encoder") or {})
    match = _MODEL.match(row.model)
    if match and match.group(1) in _SIZES:
        encoder.update(size=_SIZES[match.group(1)], patch_size=int(match.group(2)))
        for key in ("embed_dim", "depth", "num_heads"):  # the named size decides these
            encoder.pop(key, None)
    encoder.setdefault("img_size", 224)
    model["encoder"] = encoder
    train = dict(recipe.get("train") or {})
    # the published row's own schedule wins over the recipe's ("1600-epoch pre-training")
    stated = re.search(r"(\d+)[- ]epochs?\b", f"{row.setting} {row.note}")
    epochs = int(stated.group(1)) if stated else train.get("epochs")
    return {"recipe": str(path), "method": row.method, "model": model, "epochs": epochs,
            "epochs_from": "the published row's setting" if stated else "the recipe",
            "batch_size": train.get("batch_size"), "warmup_epochs": train.get("warmup_epochs"),
            "base_lr": train.get("base_lr"), "source": _first_comment(path)}


def _first_comment(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(lines)


def step_flops(method: torch.nn.Module, batch: dict) -> float:
    """FLOPs of one training step's forward and backward on `batch`, counted by torch (matmuls, convolutions,
    attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    method.train()
    with FlopCounterMode(display=False) as counter:
        out = method(batch)
        out.loss.backward()
    method.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def step_seconds(method: torch.nn.Module, batch: dict, repeats: int = 2) -> float:
    """Median wall time of one forward + backward + AdamW step on this machine (after one warm-up step)."""
    params = [p for p in method.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for step in range(repeats + 1):
        start = time.perf_counter()
        method(batch).loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def estimate(row: PublishedResult, images: int | None = None, gpu: str = "A100", utilisation: float = 0.4,
             batch: int = 2, measure: bool = True) -> dict:
    """The cost of reproducing `row`'s pretraining: FLOPs per image counted on the real model, the total over the
    recipe's epochs, hours on this machine (measured step time) and GPU-hours at `utilisation` of `gpu`'s peak."""
    from mimkit.core.registry import build_method

    if gpu not in GPU_PEAK_TFLOPS:
        raise ConfigError(f"unknown GPU {gpu!r}; choose one of {', '.join(GPU_PEAK_TFLOPS)}")
    if not 0 < utilisation <= 1:
        raise ConfigError(f"utilisation must be in (0, 1], got {utilisation}")
    recipe = reproduction_recipe(row)
    images = images or PRETRAIN_IMAGES.get(row.data)
    if images is None:
        raise ConfigError(f"the pretraining set of {row.method} for {row.data} has no size known here; give --images N "
                          f"(the number of pretraining images)")
    if not recipe["epochs"]:
        raise ConfigError(f"recipe {recipe['recipe']} states no train.epochs")
    try:
        method = build_method(row.method, **recipe["model"])
    except Exception as error:  # a teacher file, a second sensor...: say what the model needs
        raise ConfigError(f"cannot build {row.method} {row.model} from {recipe['recipe']} to count its FLOPs: "
                          f"{error}") from None
    enc = method.encoder
    size = enc.img_size if isinstance(enc.img_size, (tuple, list)) else (enc.img_size,) * 2
    x = torch.randn(batch, enc.in_chans, *size, generator=torch.Generator().manual_seed(0))
    sample = {"image": x}
    flops_per_image = step_flops(method, sample) / batch
    total = flops_per_image * images * recipe["epochs"]
    peak = GPU_PEAK_TFLOPS[gpu] * 1e12
    out = {"row": f"{row.method} {row.model} {row.protocol} {row.metric} {row.value} on {row.data} "
                  f"({row.source}, {row.table})",
           **{k: recipe[k] for k in ("recipe", "epochs", "epochs_from", "batch_size", "warmup_epochs", "base_lr", "source")},
           "images": images, "gflops_per_image_step": round(flops_per_image / 1e9, 2),
           "total_exaflops": round(total / 1e18, 2), "gpu": gpu, "utilisation": utilisation,
           "gpu_hours": round(total / (peak * utilisation) / 3600, 1)}
    if measure:
        seconds = step_seconds(method, sample) / batch
        out["cpu_seconds_per_image"] = round(seconds, 3)
        out["this_machine_days"] = round(seconds * images * recipe["epochs"] / 86400, 1)
        out["this_machine_threads"] = torch.get_num_threads()
    return out


__all__ = ["GPU_PEAK_TFLOPS", "PRETRAIN_IMAGES", "published_rows", "find_recipe", "reproduction_recipe", "step_flops",
           "step_seconds", "estimate"]
