"""Training any registered method with Lightning: the MAE paper's optimiser and LR rules.

AdamW with betas (0.9, 0.95), weight decay 0.05 except on biases, norms and tokens; lr = base_lr x
effective batch / 256; per-step linear warmup then cosine decay. Lightning provides precision (fp32,
bf16-mixed), DDP/FSDP, gradient accumulation, checkpoints and the progress bar.

Every step's randomness (masks, drop path) and every sample's augmentation are functions of the seed and
the position in the run, so a resumed run ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from .config import check_number, lightning_console, range_rule, trainer_options
from .distributed import FSDP2, check_launcher, gathered, is_fsdp2, strategy_for
from .encoders import set_activation_checkpointing, set_fused_attention
from .errors import CheckpointError, ConfigError, DataError, TrainingError
from .methods.base import MIMMethod
from .registry import build_method
from .runs import update_metrics, write_config

log = logging.getLogger("mimkit")


@dataclass
class TrainConfig:
    """Training settings; defaults follow the MAE paper's pretraining recipe where it has one."""

    batch_size: int = 64                # per device
    max_steps: int | None = None        # optimiser steps; None: from `epochs`, else 1000; wins over `epochs`
    epochs: float | None = None         # passes over the data (papers count epochs), turned into steps
    warmup_epochs: float | None = None  # turned into warmup_steps when those are not given
    max_time: float | None = None       # seconds; stops early, checkpoint kept
    base_lr: float = 1.5e-4             # MAE: blr 1.5e-4, lr = blr x batch / 256
    lr: float | None = None             # absolute learning rate; overrides base_lr
    min_lr: float = 0.0
    weight_decay: float = 0.05          # MAE
    betas: tuple[float, float] = (0.9, 0.95)  # MAE
    warmup_steps: int | None = None     # None: 5% of max_steps (MAE: 40 of 800 epochs)
    accumulate_grad_batches: int = 1
    precision: str = "32"               # "32", "bf16-mixed", or "auto" (bf16-mixed where bf16 is native)
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"              # "ddp", "fsdp2" (FSDP2 on the ViT blocks, core.distributed), ... (Lightning)
    activation_checkpointing: bool = False  # recompute each ViT block in backward: less memory, ~1 more forward
    compile: bool = False               # torch.compile each ViT block (core.distributed.compile_blocks)
    compile_backend: str = "inductor"   # torch.compile's backend ("aot_eager": no code generation, quick to start)
    channels_last: bool | None = None   # images to the model channels-last; None: on CUDA (core.distributed)
    num_workers: int = 2
    checkpoint_every: int = 500         # steps
    picture_every: int = 0              # steps; 0 = only at the end
    log_every: int = 10
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.precision not in ("32", "bf16-mixed", "16-mixed", "bf16-true", "auto"):
            raise ConfigError(f"precision must be 32, bf16-mixed or auto, got {self.precision!r}")
        gpu = self.accelerator in ("gpu", "cuda") or (self.accelerator == "auto" and torch.cuda.is_available())
        self.precision = auto_precision(self.precision, "cuda" if gpu else "cpu")  # config.yaml keeps what ran
        for item in dataclasses.fields(self):  # each number within its range (core.config.RANGES)
            check_number(f"train.{item.name}", getattr(self, item.name), range_rule(f"train.{item.name}"))
        self.betas = tuple(self.betas)
        if self.compile:
            from .distributed import check_compile_backend

            check_compile_backend(self.compile_backend)

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accumulate_grad_batches * self.world_size

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.effective_batch / 256

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.max_steps // 20)

    def for_data(self, num_samples: int) -> "TrainConfig":
        """Steps from epochs for a data set of `num_samples` (an epoch = the samples / the effective batch)."""
        steps_per_epoch = max(1, num_samples // self.effective_batch)
        steps = self.max_steps
        if steps is None:
            steps = max(1, round(self.epochs * steps_per_epoch)) if self.epochs else 1000
        warmup = self.warmup_steps
        if warmup is None and self.warmup_epochs is not None:
            warmup = min(steps, round(self.warmup_epochs * steps_per_epoch))
        return dataclasses.replace(self, max_steps=steps, warmup_steps=warmup)


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether bf16 matrix products run natively here (CUDA: the GPU says so; CPU: AVX512-BF16 or AMX).

    Without them torch still computes bf16 on the CPU, by conversion: 16x slower than fp32 for ViT-Tiny
    on an AVX2 machine (measured, issue 15), so bf16 autocast only pays where this is True.
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512" / "AVX2" / "DEFAULT"...; AMX shows here too
    if "AMX" in capability.upper():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to ask, so no claim
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def auto_precision(precision: str, device_type: str = "cpu") -> str:
    """`precision` with "auto" resolved: bf16-mixed where `native_bf16`, else 32."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if native_bf16(device_type) else "32"


def adamw(groups, lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where every parameter allows it (3x faster steps on the CPU, measured
    for ViT-Tiny MAE: 10 vs 30 ms), else its default implementation."""
    params = [p for group in groups for p in group["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and biases / norms / 1-D parameters / tokens without decay."""
    skip: set[str] = set()
    for name, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            skip |= {f"{name}.{n}" if name else n for n in module.no_weight_decay()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip or name.endswith("token"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup over `warmup` steps, then half-cosine to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_seed(seed: int, step: int, rank: int) -> int:
    """The global RNG seed of one training step on one process."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


class MIMModule(L.LightningModule):
    """Trains any method: `method(batch, step) -> MIMOutput`; it never looks inside the method."""

    def __init__(self, method: MIMMethod, config: TrainConfig):
        super().__init__()
        self.method, self.config = method, config
        self.last_loss: float | None = None

    def configure_model(self) -> None:
        from .distributed import shard_blocks

        shard_blocks(self.method, self.trainer.strategy)  # FSDP2 only: each ViT block its own unit

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        from .distributed import channels_last_batch, use_channels_last

        return channels_last_batch(batch) if use_channels_last(self.config.channels_last, self.device.type) else batch

    def on_fit_start(self) -> None:
        set_fused_attention(self.method, self.device.type, "bf16" in str(self.trainer.precision))
        set_activation_checkpointing(self.method, self.config.activation_checkpointing)
        if self.config.compile:  # after checkpointing: the compiled forward is the recomputed one
            from .distributed import compile_blocks

            compile_blocks(self.method, self.config.compile_backend)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        torch.manual_seed(step_seed(self.config.seed, self.global_step * self.config.accumulate_grad_batches
                                    + batch_idx % self.config.accumulate_grad_batches, self.global_rank))
        out = self.method(batch, step=self.global_step)
        if not torch.isfinite(out.loss):
            raise TrainingError(
                f"the loss became {out.loss.item()} at step {self.global_step}; training stopped. The last good "
                f"checkpoint is kept in {Path(self.trainer.default_root_dir) / 'checkpoints'}. Lower the learning "
                f"rate, or train in 32-bit precision (--precision 32).")
        batch_size = batch["image"].shape[0] if torch.is_tensor(batch.get("image")) else None
        self.log("loss", out.loss.detach(), prog_bar=True, batch_size=batch_size)
        for name, value in out.parts.items():
            self.log(f"loss/{name}", value.detach().float(), batch_size=batch_size)
        self.last_loss = float(out.loss.detach())
        return out.loss

    def configure_optimizers(self):
        cfg = self.config
        optimizer = adamw(parameter_groups(self.method, cfg.weight_decay), cfg.learning_rate, cfg.betas)
        min_ratio = cfg.min_lr / cfg.learning_rate if cfg.learning_rate else 0.0
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, cfg.warmup, cfg.max_steps, min_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class MIMDataModule(L.LightningDataModule):
    """Feeds a map-style dataset through a resumable sampler: a resumed run sees the samples it had not seen."""

    def __init__(self, dataset, config: TrainConfig):
        super().__init__()
        self.dataset, self.config = dataset, config

    def train_dataloader(self):
        from .data import ResumableSampler, make_loader

        cfg, trainer = self.config, self.trainer
        samples_per_step = cfg.batch_size * cfg.accumulate_grad_batches * trainer.world_size
        start = trainer.global_step * samples_per_step  # restored before the loaders are built on resume
        total = cfg.max_steps * samples_per_step
        # A run is one Lightning epoch: on resume Lightning counts the batches of the epoch before `start` as done,
        # so the sampler's length counts from position 0 too (else the epoch ends early and the samples repeat).
        sampler = ResumableSampler(len(self.dataset), seed=cfg.seed, start=start, rank=trainer.global_rank,
                                   world_size=trainer.world_size, stop=max(start, total), length_from=0)
        return make_loader(self.dataset, cfg.batch_size, cfg.num_workers, sampler=sampler, drop_last=True)


class History(Callback):
    """Keeps the loss (and its parts) every `log_every` steps, and saves pictures on schedule."""

    def __init__(self, config: TrainConfig, out_dir: Path, picture_batch: dict | None):
        self.config, self.out_dir, self.picture_batch = config, out_dir, picture_batch
        self.rows: list[dict] = []
        self.started = self.seconds = 0.0
        self.first_step = 0

    def on_train_start(self, trainer, module):
        self.started, self.first_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if (batch_idx + 1) % self.config.accumulate_grad_batches:
            return
        if step % self.config.log_every == 0 or step == 1:
            metrics = trainer.callback_metrics
            row = {"step": step, "loss": module.last_loss,
                   "lr": trainer.optimizers[0].param_groups[0]["lr"]}
            row.update({k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("loss/")})
            self.rows.append(row)
        every = self.config.picture_every
        if every and step % every == 0 and trainer.is_global_zero:
            _write_picture(lambda path: save_reconstruction(module.method, self.picture_batch, path),
                           self.out_dir / "pictures" / f"reconstruction_step{step:06d}.png")

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.started


def save_reconstruction(method: MIMMethod, batch: dict | None, path: Path) -> Path | None:
    """Reconstruction grid of a fixed batch (methods that predict pixels only)."""
    from .viz import reconstruction_grid

    if batch is None:
        return None
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            device = next(method.parameters()).device
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            generator_state = torch.get_rng_state()
            torch.manual_seed(0)  # the same masks in every picture
            out = method(batch)
            recon = method.reconstruct(batch, out)
            torch.set_rng_state(generator_state)
        if recon is None or out.mask is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        # a method whose tokens predict larger patches than its encoder reads (UrFound) says so
        patch_size = getattr(method, "output_patch_size", method.encoder.patch_size)
        shown = out.images if out.images is not None else batch["image"]
        return reconstruction_grid(shown.cpu(), out.mask.cpu(), recon.cpu(), patch_size, path)
    finally:
        method.train(was_training)


def load_initial_weights(method: MIMMethod, path: str | Path) -> dict:
    """Start from a local file: the whole method when the file has it (mimkit, official MAE with decoder),
    else the encoder alone (timm, encoder-only MAE) with the rest freshly initialised. Returns the report."""
    from .checkpoints import load_encoder, load_method_weights
    from .errors import CheckpointError

    try:
        return load_method_weights(method, path, strict=True)
    except CheckpointError as whole_error:
        try:
            report = load_encoder(method.encoder, path, strict=True)
        except CheckpointError as encoder_error:
            raise CheckpointError(f"{path} fits neither the whole {getattr(method, 'method_name', 'method')} "
                                  f"({whole_error}) nor its encoder ({encoder_error})") from None
        log.info("initialised the encoder from %s; the other parts start fresh", path)
        return {**report, "scope": "encoder"}


class StopOnSignal(Callback):
    """SIGTERM (what SLURM and Kubernetes send before a kill) and SIGINT (Ctrl+C) end training after the current
    step with a checkpoint, so `--resume` continues exactly. The signal is only noted; at the end of each optimiser
    step every process asks the others whether any noted one (Lightning's `reduce_boolean_decision`: a signal may
    reach one rank only, or ranks at different steps), so all ranks save the same step's checkpoint together and
    then hand the stop to Lightning's own SIGTERM handling, which ends the loops on every rank at once. No collective
    runs inside a signal handler. A second Ctrl+C interrupts at once.

    Lightning's SLURM auto-requeue signal (SIGUSR1 before the time limit) under DDP is deferred the same way: its
    handler saves a checkpoint, a collective that deadlocked when run inside the handler of each rank; here every rank
    saves last.ckpt and runs that handler (checkpoint, `scontrol requeue` from rank 0) at one agreed step."""

    def __init__(self, last: Path):
        self.last, self.signal, self.step = last, None, None
        self._previous: dict = {}
        self._lightning = None
        self.requeue_signal, self.requeue_noted, self._requeue = None, False, None

    def on_train_start(self, trainer, module) -> None:  # after Lightning installed (and noted) its handlers
        if threading.current_thread() is not threading.main_thread():
            return
        self._lightning = signal.getsignal(signal.SIGTERM)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._note)
        environment = getattr(trainer.strategy, "cluster_environment", None)  # parallel strategies only
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and trainer.world_size > 1 \
                and signal.getsignal(environment.requeue_signal) is not None:
            self.requeue_signal = environment.requeue_signal
            self._requeue = self._previous[self.requeue_signal] = signal.getsignal(self.requeue_signal)
            signal.signal(self.requeue_signal, self._note_requeue)

    def _note(self, signum, frame) -> None:
        if self.signal == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = self.signal or signal.Signals(signum).name  # the first one names the stop

    def _note_requeue(self, signum, frame) -> None:
        self.requeue_noted = True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # in the middle of an accumulated step: stop after the optimiser step
        if self._requeue is not None and trainer.strategy.reduce_boolean_decision(self.requeue_noted, all=False):
            # once per process (every rank stops asking at this same step): the signal may reach a rank a step late
            requeue, self._requeue = self._requeue, None
            trainer.save_checkpoint(self.last, weights_only=False)  # what --resume (and a requeued run) reads
            if callable(requeue):
                requeue(self.requeue_signal, None)  # Lightning's: its hpc checkpoint, then scontrol requeue
        # every rank takes part at every step (one small all-reduce under DDP), so they agree on the step
        noted = self.signal is not None or trainer.received_sigterm
        if not trainer.strategy.reduce_boolean_decision(noted, all=False):
            return
        self.step = trainer.global_step
        trainer.save_checkpoint(self.last, weights_only=False)  # rank 0 writes; all ranks meet at its barrier
        self.signal = self.signal or "SIGTERM"  # the rank that saw none stops for the rank that did
        if not trainer.received_sigterm and callable(self._lightning):
            # Lightning's handler, called on every rank at this same point (its broadcast is matched): it marks
            # received_sigterm, so the loops raise SIGTERMException together after this step
            self._lightning(signal.SIGTERM, None)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        self._restore()  # Lightning calls no teardown hook after an exception

    def teardown(self, trainer, module, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class RunInterrupted(TrainingError):
    """Training stopped by SIGTERM or SIGINT after saving a checkpoint; `exit_code` is the shell's 128 + signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _slurm_requeued() -> bool:
    """A SLURM job started again by a requeue (Lightning's auto-requeue, or scontrol requeue after preemption)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect() and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def portable_weights(method_config: dict, out_dir: Path, resume: bool) -> tuple[dict, dict]:
    """(the config to build the method with, the config to store): files named by `*weights` settings (a teacher's)
    are linked or copied into RUN/teacher/ and stored relative to the run, so a copied run folder rebuilds."""
    build, stored = dict(method_config), dict(method_config)
    for key, value in method_config.items():
        if not key.endswith("weights") or not isinstance(value, str) or not value:
            continue
        source = Path(value)
        inside = out_dir / source if not source.is_absolute() else None
        if inside is not None and inside.is_file() and (resume or not source.is_file()):
            build[key] = str(inside)  # already relative to the run
            continue
        if not source.is_file() or resume:
            continue  # build_teacher names the missing file
        target = out_dir / "teacher" / source.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)  # no second copy on the same file system
            except OSError:
                shutil.copy2(source, target)
        build[key], stored[key] = str(target), str(target.relative_to(out_dir))
    return build, stored


def pretrain(method: str | MIMMethod, dataset, out_dir: str | Path, config: TrainConfig | None = None, *,
             method_config: dict | None = None, resume: bool = False, callbacks: Sequence[Callback] = (),
             run_config: dict | None = None, pretrained: str | Path | None = None,
             trainer: dict | None = None) -> dict[str, Any]:
    """Pretrain `method` (a name or a built method) on `dataset` and write one run folder.

    The folder holds `config.yaml` (written by the caller or from `run_config`), `metrics.json`,
    `checkpoints/` (Lightning checkpoints, `last.ckpt` for --resume), `model.safetensors` and `pictures/`.
    `pretrained` starts a new run from a local weights file (see `load_initial_weights`). `trainer` passes other
    Lightning Trainer options through (logger, callbacks, profiler, gradient clipping, ...; `trainer_options`);
    the default logger is a CSV logger writing RUN/logs/.
    While it runs, RUN/.lock refuses a second writer; resuming takes the newest intact checkpoint; SIGTERM / SIGINT
    stop with a checkpoint (RunInterrupted). Returns the training summary also stored under "train" in metrics.json.
    """
    from .runs import RunLock

    lightning_console()
    out_dir = Path(out_dir)
    with RunLock(out_dir):
        summary = _pretrain(method, dataset, out_dir, config, method_config=method_config, resume=resume,
                            callbacks=callbacks, run_config=run_config, pretrained=pretrained, trainer=trainer)
    from .distributed import release_process_group

    release_process_group()  # a finished run only: after an error another rank may still be in a collective
    return summary


def _pretrain(method, dataset, out_dir: Path, config, *, method_config, resume, callbacks, run_config, pretrained,
              trainer) -> dict[str, Any]:
    from .checkpoints import AtomicCheckpointIO, resume_checkpoint, save_method
    from .data import report_skips, skip_totals
    from .viz import loss_curve

    config = (config or TrainConfig()).for_data(len(dataset))
    method_config = dict(method_config or {})
    options = trainer_options(trainer, out_dir)
    extra_callbacks = options.pop("callbacks")
    checkpoint_dir = out_dir / "checkpoints"
    last = checkpoint_dir / "last.ckpt"
    found = resume_checkpoint(out_dir)
    if not resume and found is not None and _slurm_requeued():
        resume = True  # the requeued job runs the same command line: it continues its own run
    if resume and found is None:
        raise ConfigError(f"--resume: no checkpoint to resume from in {checkpoint_dir}")
    if not resume and found is not None:
        raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    build_config, stored_config = portable_weights(method_config, out_dir, resume)
    if isinstance(method, str):
        L.seed_everything(config.seed, workers=True, verbose=False)
        method = build_method(method, **build_config)
    elif not method_config:
        raise ConfigError("pretrain() of a built method needs its method_config, so the saved model can be rebuilt")
    if run_config is not None and isinstance(run_config.get("model"), dict):
        moved = {k: v for k, v in stored_config.items()  # only the paths portable_weights rewrote
                 if k.endswith("weights") and k in run_config["model"] and isinstance(v, str)}
        run_config = {**run_config, "model": {**run_config["model"], **moved}}
    name = getattr(method, "method_name", type(method).__name__.lower())
    if pretrained is not None and not resume:  # a resumed run restores its own weights
        load_initial_weights(method, pretrained)
    out_dir.mkdir(parents=True, exist_ok=True)
    if run_config is not None:
        write_config(out_dir, run_config)
    skip_log = out_dir / "logs" / "skipped_files.jsonl"
    report_skips(dataset, skip_log)  # what loader workers skip reaches the totals below
    resume_from = None
    if resume:
        resume_from, sentence = found
        print(f"mimkit: {sentence}", file=sys.stderr)

    picture_batch = _picture_batch(dataset)
    history = History(config, out_dir, picture_batch)
    check_launcher(config.num_nodes)
    if config.strategy == FSDP2 and config.picture_every:
        raise ConfigError("picture_every draws on rank 0 alone, which a model sharded by --strategy fsdp2 cannot do; "
                          "leave it 0 (the final pictures are drawn)")
    # no version counter: last.ckpt written by a signal (StopOnSignal) is overwritten later, not kept beside a last-v1
    checkpointing = ModelCheckpoint(dirpath=checkpoint_dir, filename="step{step:06d}", auto_insert_metric_name=False,
                                    every_n_train_steps=config.checkpoint_every, save_top_k=-1, save_last=True,
                                    enable_version_counter=False)
    stopper = StopOnSignal(last)
    plugins = options.pop("plugins", None) or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    trainer = L.Trainer(
        default_root_dir=out_dir, max_steps=config.max_steps,
        max_time={"seconds": config.max_time} if config.max_time else None,
        accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy=strategy_for(config.strategy, config.world_size), precision=config.precision,
        accumulate_grad_batches=config.accumulate_grad_batches, use_distributed_sampler=False,
        callbacks=[checkpointing, history, stopper, *callbacks, *extra_callbacks], enable_model_summary=False,
        enable_progress_bar=config.progress, log_every_n_steps=config.log_every, num_sanity_val_steps=0,
        max_epochs=-1, plugins=plugins, **options)
    module = MIMModule(method, config)
    try:
        trainer.fit(module, datamodule=MIMDataModule(dataset, config),
                    ckpt_path=str(resume_from) if resume_from else None)
    except SIGTERMException:
        code = 130 if stopper.signal == "SIGINT" else 143
        if not trainer.is_global_zero:
            code = 0  # rank 0 reports the stop; a rank exiting non-zero makes its launcher kill all ranks
        saved = (f"after step {stopper.step}; the checkpoint {last} holds it" if stopper.step is not None else
                 "; its newest step checkpoint holds it")
        raise RunInterrupted(f"stopped by {stopper.signal or 'a signal'} {saved}: --resume --out {out_dir} continues",
                             code) from None
    except DataError as error:  # raised in a loader worker: torch wraps it in that worker's traceback
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise DataError(lines[-1].split("DataError: ", 1)[-1] if len(lines) > 1 else str(error)) from None
    # Lightning may stop on max_time between checkpoints: keep that state resumable too (every rank takes part: under
    # FSDP2 the weights are gathered; rank 0 writes)
    if trainer.global_step % config.checkpoint_every:
        trainer.save_checkpoint(last, weights_only=False)
    if is_fsdp2(trainer.strategy):  # rank 0 saves and pictures a plain copy of the sharded method
        method = gathered(method, lambda: build_method(name, **build_config))
    if not trainer.is_global_zero:
        return {}
    save_method(method, out_dir / "model.safetensors", stored_config)
    pictures = out_dir / "pictures"
    _write_picture(lambda path: save_reconstruction(method, picture_batch, path), pictures / "reconstruction.png")
    if history.rows:
        _write_picture(lambda path: loss_curve(history.rows, path), pictures / "loss_curve.png")
    steps_run = trainer.global_step - history.first_step
    summary = {
        "method": name, "steps": trainer.global_step, "steps_this_session": steps_run,
        "seconds": round(history.seconds, 2),
        "images_per_second": round(steps_run * config.effective_batch / history.seconds, 1) if history.seconds else None,
        "final_loss": history.rows[-1]["loss"] if history.rows else module.last_loss,
        "effective_batch": config.effective_batch, "learning_rate": config.learning_rate,
        "history": history.rows,
    }
    skipped = skip_totals(dataset, skip_log)
    data = {"images": len(dataset), "skipped_files": len({entry["file"] for entry in skipped}), "skipped": skipped}
    partial = [{"file": str(file), "reason": reason} for file, reason in getattr(dataset, "partial", ())]
    if partial:  # files kept with some pixels read as nodata (remote sensing: NaN where the file declares nodata)
        data.update(partial_files=len(partial), partial=partial)
    update_metrics(out_dir, {"method": name, "train": summary, "data": data})
    return summary


def _write_picture(write, path: Path) -> Path | None:
    """`write(temporary)` then rename onto `path` (a picture is whole or absent); a failed write (disk full) is a
    TrainingError naming `path`."""
    temporary = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # the suffix picks the format
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if write(temporary) is None and not temporary.exists():
            return None  # nothing to show (a method that predicts no pixels)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise TrainingError(f"cannot write picture {path}: {error.strerror or error}") from None
    return path


def _picture_batch(dataset, count: int = 8) -> dict | None:
    """A fixed, unaugmented batch for reconstruction pictures (the dataset's eval view when it has one)."""
    view = getattr(dataset, "eval_view", None)
    source = view() if callable(view) else dataset
    items = [source[i] for i in range(min(count, len(source)))]
    if not items or not torch.is_tensor(items[0].get("image")):
        return None
    # every tensor the items share at one shape: a method may need more than images (MoM: padded boxes)
    shared = [key for key, value in items[0].items() if torch.is_tensor(value)
              and all(torch.is_tensor(item.get(key)) and item[key].shape == value.shape for item in items)]
    return {key: torch.stack([item[key] for item in items]) for key in shared}


__all__ = ["TrainConfig", "MIMModule", "MIMDataModule", "pretrain", "RunInterrupted", "StopOnSignal", "parameter_groups", "warmup_cosine",
           "save_reconstruction"]
