"""MAE pretraining speed: mimkit's MAE beside MONAI's MaskedAutoEncoderViT, a plain-PyTorch reference and peers.

    python -m mimkit.benchmarks.speed [--steps 10 --repeats 5 --batch-size 32 --precision fp32 bf16
                                       --device cpu|cuda --size tiny --img-size 224 --spatial-dims 2 --out DIR]

All three models have the same architecture (ViT-Tiny/16 encoder at 224 by default, decoder 128 wide and
4 deep, 75% masking, normalised-pixel loss on masked patches); their trainable parameter counts are printed
so that this is visible. One training step is forward + backward + AdamW step on one fixed batch.
Optional rows (`--models`): `selective_mae` (SelectiveMAE at the same sizes), `lightly` (lightly's MAE modules on
timm's ViT; needs `pip install 'lightly==1.6.*'`) and `compiled` (mimkit's MAE with torch.compile'd blocks;
its warm-up compiles, minutes on a small CPU). A model that cannot be built or trained here gets a row of n/a
and a note saying why.

- Throughput: the models take turns (the order rotates every repeat) so that a busy machine slows them
  alike; each repeat times `--steps` steps; the table gives the median over `--repeats` repeats.
- FLOPs: one forward + backward counted with torch.utils.flop_counter.FlopCounterMode (matrix products,
  convolutions and attention; the elementwise work and the optimiser step are not counted).
- MFU (model FLOP utilisation): achieved FLOP/s divided by the FLOP/s of a large torch.matmul timed on
  this machine in the same precision (a measured peak, not the vendor's figure).
- Peak memory: measured in a fresh process per model and precision over `--memory-steps` steps, counting
  weights, gradients, AdamW state and activations, not the input batch. On CUDA:
  torch.cuda.max_memory_allocated. On CPU: the rise of the process's peak resident set size
  (VmHWM in /proc/self/status, see `peak_rss_kib`), which includes allocator slack.

`--spatial-dims 3` runs the 3D models (one-channel 96^3 volumes by default); MONAI's 3D sin-cos positions
need widths divisible by 6, so the 3D decoder is 192 wide by default.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils import flop_counter

from mimkit.core.encoders import set_fused_attention, vit_size
from mimkit.core.errors import ConfigError, TrainingError

from .reference_mae import ReferenceMAE
from .report import write_table

MODELS = {
    "mimkit": "mimkit MAE",
    "monai": "MONAI MaskedAutoEncoderViT",
    "reference": "plain PyTorch reference",
    "selective_mae": "mimkit SelectiveMAE (mask 0.85, 25% reconstructed)",
    "lightly": "lightly MAE (MaskedVisionTransformerTIMM + MAEDecoderTIMM)",
    "compiled": "mimkit MAE, timm blocks torch.compile'd",
}
DEFAULT_MODELS = ("mimkit", "monai", "reference")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Architecture:
    """The one MAE architecture every model is built with."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    spatial_dims: int = 2
    embed_dim: int = 192       # ViT-Tiny
    depth: int = 12
    num_heads: int = 3
    decoder_dim: int = 128
    decoder_depth: int = 4
    decoder_heads: int = 4
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75   # MAE paper's default

    def describe(self) -> str:
        shape = "x".join([str(self.img_size)] * self.spatial_dims)
        return (f"{self.spatial_dims}D {self.in_chans}x{shape}, patch {self.patch_size}, encoder {self.embed_dim} x "
                f"{self.depth} ({self.num_heads} heads), decoder {self.decoder_dim} x {self.decoder_depth} "
                f"({self.decoder_heads} heads), mask ratio {self.mask_ratio}")


class MimkitRunner(nn.Module):
    """mimkit's registered MAE; returns the loss of one batch."""

    def __init__(self, arch: Architecture):
        super().__init__()
        from mimkit.core import build_method
        self.model = build_method(
            "mae", img_size=arch.img_size, patch_size=arch.patch_size, in_chans=arch.in_chans,
            embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
            decoder_embed_dim=arch.decoder_dim, decoder_depth=arch.decoder_depth,
            decoder_num_heads=arch.decoder_heads, mlp_ratio=arch.mlp_ratio, mask_ratio=arch.mask_ratio,
            norm_pix_loss=True, spatial_dims=arch.spatial_dims)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # as mimkit's training does (core.train.MIMModule.on_fit_start)
        set_fused_attention(self.model, images.device.type, torch.is_autocast_enabled(images.device.type)
                            and torch.get_autocast_dtype(images.device.type) == torch.bfloat16)
        return self.model({"image": images}).loss


class MonaiRunner(nn.Module):
    """MONAI's MaskedAutoEncoderViT at the same architecture, with MAE's normalised-pixel masked MSE."""

    def __init__(self, arch: Architecture):
        super().__init__()
        from monai.networks.nets import MaskedAutoEncoderViT

        from mimkit.core.targets import PixelTarget
        if arch.spatial_dims == 3 and (arch.embed_dim % 6 or arch.decoder_dim % 6):
            raise ConfigError(f"MONAI's 3D sin-cos positions need widths divisible by 6; got encoder "
                              f"{arch.embed_dim} and decoder {arch.decoder_dim} (try --decoder-dim 192, or "
                              f"--models mimkit reference)")
        self.net = MaskedAutoEncoderViT(
            in_channels=arch.in_chans, img_size=arch.img_size, patch_size=arch.patch_size,
            hidden_size=arch.embed_dim, mlp_dim=int(arch.embed_dim * arch.mlp_ratio), num_layers=arch.depth,
            num_heads=arch.num_heads, masking_ratio=arch.mask_ratio, decoder_hidden_size=arch.decoder_dim,
            decoder_mlp_dim=int(arch.decoder_dim * arch.mlp_ratio), decoder_num_layers=arch.decoder_depth,
            decoder_num_heads=arch.decoder_heads, spatial_dims=arch.spatial_dims,
            qkv_bias=True)  # MAE's ViT has qkv biases; MONAI's default has none
        self.target = PixelTarget(arch.patch_size, normalize=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from mimkit.core.targets import masked_mse
        pred, mask = self.net(images)  # mask: 1 = masked, as in MAE
        return masked_mse(pred, self.target(images), mask.to(torch.float32))


class ReferenceRunner(ReferenceMAE):
    """The plain-PyTorch MAE of `reference_mae.py` at the same architecture."""

    def __init__(self, arch: Architecture):
        super().__init__(img_size=arch.img_size, patch_size=arch.patch_size, in_chans=arch.in_chans,
                         embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
                         decoder_dim=arch.decoder_dim, decoder_depth=arch.decoder_depth,
                         decoder_heads=arch.decoder_heads, mlp_ratio=arch.mlp_ratio, mask_ratio=arch.mask_ratio,
                         spatial_dims=arch.spatial_dims)


class SelectiveRunner(nn.Module):
    """SelectiveMAE with the same encoder and decoder sizes and its paper's ratios (mask 0.85, 25% of the
    tokens reconstructed): the row that shows what selecting tokens saves against plain MAE."""

    def __init__(self, arch: Architecture):
        super().__init__()
        from mimkit.core import build_method
        if arch.spatial_dims != 2:
            raise ConfigError("SelectiveMAE scores 2D patches by HOG: drop selective_mae from --models in 3D")
        self.model = build_method(
            "selective_mae", img_size=arch.img_size, patch_size=arch.patch_size, in_chans=arch.in_chans,
            embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
            decoder_embed_dim=arch.decoder_dim, decoder_depth=arch.decoder_depth,
            decoder_num_heads=arch.decoder_heads, mlp_ratio=arch.mlp_ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        set_fused_attention(self.model, images.device.type, torch.is_autocast_enabled(images.device.type)
                            and torch.get_autocast_dtype(images.device.type) == torch.bfloat16)
        return self.model({"image": images}).loss


class LightlyRunner(nn.Module):
    """lightly's MAE parts (its MAE example's forward: timm ViT encoding the kept tokens, lightly's decoder) at
    the same architecture, with MAE's normalised-pixel masked MSE."""

    def __init__(self, arch: Architecture):
        super().__init__()
        if arch.spatial_dims != 2:
            raise ConfigError("lightly's MAE modules are 2D: drop lightly from --models in 3D")
        try:
            from lightly.models import utils
            from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
        except ImportError as error:
            raise ImportError(f"lightly is not installed (pip install 'lightly==1.6.*'): {error}") from error
        from timm.models.vision_transformer import VisionTransformer
        vit = VisionTransformer(img_size=arch.img_size, patch_size=arch.patch_size, in_chans=arch.in_chans,
                                embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
                                mlp_ratio=arch.mlp_ratio, num_classes=0)
        self.utils, self.arch = utils, arch
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        with warnings.catch_warnings():  # lightly 1.6 announces MAEDecoderTIMM's removal in 1.7; 1.6 is measured
            warnings.simplefilter("ignore", FutureWarning)
            self.decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=arch.patch_size,
                                          in_chans=arch.in_chans, embed_dim=arch.embed_dim,
                                          decoder_embed_dim=arch.decoder_dim, decoder_depth=arch.decoder_depth,
                                          decoder_num_heads=arch.decoder_heads, mlp_ratio=arch.mlp_ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        utils, length = self.utils, self.backbone.sequence_length
        idx_keep, idx_mask = utils.random_token_mask((images.shape[0], length), self.arch.mask_ratio,
                                                     device=images.device)
        encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        tokens = utils.repeat_token(self.decoder.mask_token, (images.shape[0], length))
        tokens = utils.set_at_index(tokens, idx_keep, self.decoder.embed(encoded).type_as(tokens))
        pred = self.decoder.predict(utils.get_at_index(self.decoder.decode(tokens), idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.arch.patch_size), idx_mask - 1).float()
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        return nn.functional.mse_loss(pred.float(), target)


class CompiledRunner(MimkitRunner):
    """mimkit's MAE with each timm block compiled by torch.compile (inductor) as `--compile` does in training
    (core.distributed.compile_blocks); the masking, gathers and loss stay eager. The first steps compile (minutes on a
    small CPU): the warm-up takes them."""

    def __init__(self, arch: Architecture):
        from mimkit.core.distributed import compile_blocks

        super().__init__(arch)
        compile_blocks(self.model)


_RUNNERS = {"mimkit": MimkitRunner, "monai": MonaiRunner, "reference": ReferenceRunner,
            "selective_mae": SelectiveRunner, "lightly": LightlyRunner, "compiled": CompiledRunner}


def build_runner(name: str, arch: Architecture) -> nn.Module:
    """One of the compared models; `runner(images)` returns its training loss."""
    if name not in _RUNNERS:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(_RUNNERS)}")
    return _RUNNERS[name](arch)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_optimizer(model: nn.Module, fused: bool = True) -> torch.optim.Optimizer:
    # MAE pretraining optimiser (paper Table 8): AdamW, betas (0.9, 0.95), weight decay 0.05; torch's fused
    # kernel for every model as mimkit's training uses it (core.train.adamw), the for-loop one with fused=False
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05,
                             **({"fused": True} if fused else {"foreach": False}))


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, precision: str) -> torch.Tensor:
    """Forward, backward and one AdamW step; returns the detached loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device, precision):
        loss = model(images)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ----------------------------------------------------------------------------------------- FLOPs
def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                              **kwargs) -> int:
    # Model FLOPs: the four products of the backward pass (twice the forward's two), as for attention
    # written out with matmuls. torch's own formula adds the recomputation fused kernels do.
    return 2 * flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_mapping() -> dict:
    """Counting rules for fused attention, so that fused and written-out attention count alike."""
    aten = torch.ops.aten
    # torch has no rule for the CPU kernel that F.scaled_dot_product_attention calls; without one,
    # mimkit's (timm's) attention would go uncounted on CPU.
    forward = ["_scaled_dot_product_flash_attention_for_cpu"]
    backward = ["_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention_backward",
                "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward"]
    mapping = {getattr(aten, op): _attention_flops for op in forward if hasattr(aten, op)}
    mapping.update({getattr(aten, op): _attention_backward_flops for op in backward if hasattr(aten, op)})
    return mapping


def _eager():
    """A context in which torch.compile'd modules run eagerly (FLOP counting sees plain operations)."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


def step_flops_of(loss_fn) -> int:
    """FLOPs (matrix products, convolutions, attention) of `loss_fn()` and its backward pass."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        loss_fn().backward()
    return counter.get_total_flops()


def step_flops(model: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """FLOPs of one forward + backward pass of a model, and the number of its trainable parameters that
    got no gradient (created but unused)."""
    flops = step_flops_of(lambda: model(images))
    unused = sum(p.numel() for p in model.parameters() if p.requires_grad and p.grad is None)
    model.zero_grad(set_to_none=True)
    return flops, unused


def matmul_peak(device: torch.device, precision: str, size: int, repeats: int = 5) -> float:
    """FLOP/s of a size x size matmul in this precision on this machine (median of `repeats`)."""
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times)


# ------------------------------------------------------------------------------------ throughput
def measure_throughput(runners: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                       images: torch.Tensor, precision: str, steps: int, repeats: int,
                       warmup: int) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """Median images/s per model over interleaved repeats, each model's last loss, and the models that
    cannot train in this precision (name -> the error)."""
    names, failures = [], {}
    for name in runners:
        try:
            for _ in range(max(warmup, 1)):
                train_step(runners[name], optimizers[name], images, precision)
            names.append(name)
        except RuntimeError as error:  # e.g. a model that does not support autocast
            failures[name] = str(error).strip().splitlines()[0]
            optimizers[name].zero_grad(set_to_none=True)
    if not names:
        return {}, {}, failures
    rates: dict[str, list[float]] = {name: [] for name in names}
    losses: dict[str, float] = {}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:  # rotate who goes first
            synchronize(images.device)
            start = time.perf_counter()
            for _ in range(steps):
                loss = train_step(runners[name], optimizers[name], images, precision)
            synchronize(images.device)
            rates[name].append(images.shape[0] * steps / (time.perf_counter() - start))
            losses[name] = float(loss)
            if not math.isfinite(losses[name]):
                raise TrainingError(f"{MODELS[name]} gave a non-finite loss ({losses[name]}) in {precision}")
    return {name: statistics.median(r) for name, r in rates.items()}, losses, failures


# ---------------------------------------------------------------------------------------- memory
def _input_batch(arch: Architecture, batch_size: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, arch.in_chans) + (arch.img_size,) * arch.spatial_dims
    return torch.randn(shape, generator=generator).to(device)


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB.

    Linux: VmHWM of /proc/self/status. Not ru_maxrss: Linux carries the parent's RSS at fork into the
    child's ru_maxrss across exec, so a probe started from a big process would see its parent's size.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    scale = 1024 if sys.platform == "darwin" else 1  # macOS reports bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // scale


def _memory_probe(spec: dict) -> dict:
    """Run in a fresh process: build one model, train a few steps, report its peak memory in MiB."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    arch = Architecture(**spec["arch"])
    images = _input_batch(arch, spec["batch_size"], device)
    import monai.networks.nets  # noqa: F401  (imports happen before the baseline, for every model alike)
    import mimkit.core  # noqa: F401
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = peak_rss_kib()
    model = build_runner(spec["model"], arch).to(device)
    optimizer = make_optimizer(model)
    for _ in range(spec["steps"]):
        train_step(model, optimizer, images, spec["precision"])
    synchronize(device)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    else:
        peak = (peak_rss_kib() - before) / 1024
    return {"peak_mib": peak}


def measure_memory(name: str, arch: Architecture, batch_size: int, precision: str, device: torch.device,
                   steps: int, threads: int | None) -> float | None:
    """Peak training memory (MiB) of one model in a fresh Python process; None (with a message) on failure."""
    spec = {"model": name, "arch": asdict(arch), "batch_size": batch_size, "precision": precision,
            "device": str(device), "steps": steps, "threads": threads}
    command = [sys.executable, "-m", "mimkit.benchmarks.speed", "--memory-probe", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"memory probe for {name} ({precision}) failed: {done.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


# ----------------------------------------------------------------------------------------- report
COLUMNS = ("model", "precision", "params_M", "images_per_s", "ms_per_step", "gflop_per_step", "tflop_per_s",
           "mfu_percent", "peak_memory_mib", "loss")
HEADERS = ("model", "precision", "params (M)", "images/s", "ms/step", "GFLOP/step", "TFLOP/s", "MFU %",
           "peak memory (MiB)", "last loss")


def _format(column: str, value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    digits = {"params_M": 3, "images_per_s": 1, "ms_per_step": 1, "gflop_per_step": 1, "tflop_per_s": 3,
              "mfu_percent": 1, "peak_memory_mib": 0, "loss": 3}[column]
    return f"{value:.{digits}f}"


def markdown(rows: Sequence[dict], notes: Sequence[str], path: Path | None = None) -> str:
    """The notes as a list above the table; with `path` also PATH.md, .csv and .json (benchmarks.report)."""
    return write_table(rows, dict(zip(COLUMNS, HEADERS)), path, "\n".join(f"- {note}" for note in notes),
                       formats={column: partial(_format, column) for column in COLUMNS})


def write_tables(rows: Sequence[dict], notes: Sequence[str], out_dir: Path) -> tuple[Path, Path]:
    """speed.md, speed.csv and speed.json in out_dir; returns the markdown and CSV paths."""
    markdown(rows, notes, out_dir / "speed")
    return out_dir / "speed.md", out_dir / "speed.csv"


# --------------------------------------------------------------------------------------- profile
PROFILE_KINDS = (  # kind of operation -> substrings of the aten op names it covers (first match wins)
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution", "mkldnn_convolution",
                "gemm")),
    ("attention kernels", ("scaled_dot_product", "flash_attention", "efficient_attention", "softmax")),
    ("GELU", ("gelu",)),
    ("layer norm", ("layer_norm",)),
    ("optimizer", ("adamw", "_foreach_", "addcmul_", "addcdiv_", "lerp_")),
    ("copies and dtype casts", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")),
    ("masking: gather, scatter, sort", ("gather", "scatter", "sort", "index", "multinomial", "topk")),
    ("other elementwise and reductions", ("aten::",)),
)


def profile_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, precision: str,
                 steps: int = 2) -> dict[str, float]:
    """Milliseconds per training step by kind of operation (self time from torch.profiler: CPU time, or the
    GPU's kernel time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = images.device.type == "cuda"
    train_step(model, optimizer, images, precision)  # warm
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            train_step(model, optimizer, images, precision)
        synchronize(images.device)
    kinds = {kind: 0.0 for kind, _ in PROFILE_KINDS}
    for event in profiler.key_averages():
        spent = event.self_device_time_total if cuda else event.self_cpu_time_total
        for kind, names in PROFILE_KINDS:
            if any(name in event.key for name in names):
                kinds[kind] += spent / 1000 / steps
                break
    return kinds


def profile_models(args: argparse.Namespace) -> str:
    """A markdown table: where each model's step spends its time, per precision (`--profile`)."""
    device = torch.device(args.device)
    arch = architecture_from_args(args)
    images = _input_batch(arch, args.batch_size, device)
    columns, shares = [], {kind: [] for kind, _ in PROFILE_KINDS}
    for name in args.models:
        for precision in args.precision:
            try:
                model = build_runner(name, arch).to(device)
                kinds = profile_step(model, make_optimizer(model, fused=not args.plain_adamw), images, precision)
            except (ImportError, RuntimeError) as error:
                print(f"profile of {MODELS[name]} ({precision}) failed: {str(error).strip().splitlines()[0]}",
                      file=sys.stderr)
                continue
            total = sum(kinds.values()) or 1.0
            columns.append(f"{MODELS[name]}, {precision}: ms/step (share)")
            for kind, value in kinds.items():
                shares[kind].append(f"{value:.0f} ({100 * value / total:.1f}%)")
    lines = ["| kind of operation | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {kind} | " + " | ".join(values) + " |" for kind, values in shares.items()]
    what = "GPU kernel time" if device.type == "cuda" else "self CPU time"
    return f"Where a training step's time goes (torch.profiler, {what}, mean of 2 steps):\n\n" + "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- main
def architecture_from_args(args: argparse.Namespace) -> Architecture:
    size = vit_size(args.size)
    three_d = args.spatial_dims == 3
    return Architecture(
        img_size=args.img_size or (96 if three_d else 224), patch_size=args.patch_size,
        in_chans=args.in_chans or (1 if three_d else 3), spatial_dims=args.spatial_dims,
        embed_dim=args.embed_dim or size.embed_dim, depth=args.depth or size.depth,
        num_heads=args.num_heads or size.num_heads,
        decoder_dim=args.decoder_dim or (192 if three_d else 128), decoder_depth=args.decoder_depth,
        decoder_heads=args.decoder_heads, mask_ratio=args.mask_ratio)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mimkit.benchmarks.speed", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(DEFAULT_MODELS),
                        help="default: mimkit monai reference; add selective_mae for its row")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; the table gives the median")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model and precision first")
    parser.add_argument("--size", default="tiny", help="encoder size: tiny, small, base, large, huge")
    parser.add_argument("--embed-dim", type=int, help="encoder width (overrides --size)")
    parser.add_argument("--depth", type=int, help="encoder depth (overrides --size)")
    parser.add_argument("--num-heads", type=int, help="encoder heads (overrides --size)")
    parser.add_argument("--img-size", type=int, help="image side (default 224, or 96 with --spatial-dims 3)")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--in-chans", type=int, help="image channels (default 3, or 1 with --spatial-dims 3)")
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2)
    parser.add_argument("--decoder-dim", type=int, help="decoder width (default 128, or 192 in 3D)")
    parser.add_argument("--decoder-depth", type=int, default=4)
    parser.add_argument("--decoder-heads", type=int, default=4)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--matmul-size", type=int, help="side of the matmul timed for the peak "
                                                        "(default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--memory-steps", type=int, default=2, help="training steps in each memory probe")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--out", type=Path, help="folder for speed.md, speed.csv and speed.json")
    parser.add_argument("--profile", action="store_true",
                        help="also profile each model's step (torch.profiler): time by kind of operation, "
                             "printed and written to speed_profile.md")
    parser.add_argument("--plain-adamw", action="store_true",
                        help="torch's for-loop AdamW for every model instead of the fused kernel")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: one probe, JSON spec
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Measure every model and precision; returns the table rows and the notes printed above them."""
    for name, value in (("--steps", args.steps), ("--repeats", args.repeats), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda (optionally cuda:N), got {args.device!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = architecture_from_args(args)
    torch.manual_seed(0)
    images = _input_batch(arch, args.batch_size, device)
    runners, unbuilt = {}, {}
    for name in args.models:
        try:
            runners[name] = build_runner(name, arch).to(device)
        except (ImportError, RuntimeError) as error:  # a peer that is not installed, or does not build here
            unbuilt[name] = str(error).strip().splitlines()[0]
    params = {name: trainable_parameters(model) for name, model in runners.items()}
    with _eager():  # count a compiled model's FLOPs on its eager form (the same operations)
        counted = {name: step_flops(model, images) for name, model in runners.items()}
    flops = {name: count[0] for name, count in counted.items()}
    unused = {name: count[1] for name, count in counted.items() if count[1]}
    optimizers = {name: make_optimizer(model, fused=not args.plain_adamw) for name, model in runners.items()}
    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    peaks = {p: matmul_peak(device, p, matmul_size) for p in args.precision}

    memory_how = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                  else "rise of the peak resident set size (VmHWM)")
    notes = [
        f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                               f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        f"torch {torch.__version__}; architecture: {arch.describe()}; batch {args.batch_size}",
        "trainable parameters: " + ", ".join(f"{MODELS[n]} {params[n]:,}" for n in runners)
        + "".join(f"; {MODELS[n]} has {count:,} that get no gradient (unused layers)" for n, count in unused.items()),
        f"timing: median of {args.repeats} interleaved repeats of {args.steps} steps (forward + backward + "
        f"{'for-loop' if args.plain_adamw else 'fused'} AdamW), "
        f"after {args.warmup} warm-up steps",
        "measured matmul peak: " + ", ".join(f"{p} {peaks[p] / 1e12:.3f} TFLOP/s" for p in args.precision)
        + f" ({matmul_size}x{matmul_size}"
        + (f", TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}" if device.type == "cuda" else "")
        + "); MFU = model FLOP/s / this peak",
        f"peak memory: {memory_how}, fresh process per model, over {args.memory_steps} steps "
        "(weights + gradients + AdamW state + activations)" if not args.no_memory else "peak memory: not measured",
    ]
    rows = []
    for name, error in unbuilt.items():
        notes.append(f"{MODELS[name]} could not be built here: {error}")
        rows += [{"model": MODELS[name], "precision": p, **{c: None for c in COLUMNS[2:]}} for p in args.precision]
    if "compiled" in runners and not args.no_memory:
        notes.append(f"{MODELS['compiled']}: peak memory not measured (its probe process would compile again)")
    for precision in args.precision:
        rates, losses, failures = measure_throughput(runners, optimizers, images, precision, args.steps,
                                                     args.repeats, args.warmup)
        for name in runners:
            if name in failures:
                notes.append(f"{MODELS[name]} cannot train in {precision} here: {failures[name]}")
                rows.append({"model": MODELS[name], "precision": precision, "params_M": params[name] / 1e6,
                             **{c: None for c in COLUMNS[3:]}})
                continue
            achieved = flops[name] * rates[name] / args.batch_size
            memory = None if args.no_memory or name == "compiled" else measure_memory(
                name, arch, args.batch_size, precision, device, args.memory_steps, args.threads)
            rows.append({
                "model": MODELS[name], "precision": precision, "params_M": params[name] / 1e6,
                "images_per_s": rates[name], "ms_per_step": 1000 * args.batch_size / rates[name],
                "gflop_per_step": flops[name] / 1e9, "tflop_per_s": achieved / 1e12,
                "mfu_percent": 100 * achieved / peaks[precision], "peak_memory_mib": memory, "loss": losses[name],
            })
    return rows, notes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # MONAI's 3D position code calls torch.meshgrid without `indexing`; the warning is not ours to fix.
    warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
    if args.memory_probe:
        print(json.dumps(_memory_probe(json.loads(args.memory_probe))))
        return 0
    try:
        rows, notes = run(args)
    except (ConfigError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown(rows, notes), end="")
    if args.out:
        md_path, csv_path = write_tables(rows, notes, args.out)
        print(f"\nwrote {md_path}, {csv_path} and speed.json")
    if args.profile:
        table = profile_models(args)
        print("\n" + table, end="")
        if args.out:
            (args.out / "speed_profile.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
