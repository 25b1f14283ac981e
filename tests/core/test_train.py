"""Training: MAE's optimiser rules, resume equals an uninterrupted run, NaN stops with a checkpoint, DDP."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from mimkit.core import build_method
from mimkit.core.checkpoints import load_method
from mimkit.core.data import ImageFolderDataset
from mimkit.core.errors import ConfigError, TrainingError
from mimkit.core.methods.mae import MAE
from mimkit.core.registry import method_config
from mimkit.core.train import TrainConfig, parameter_groups, pretrain, warmup_cosine

TINY = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def config(**overrides):
    base = dict(batch_size=4, max_steps=8, checkpoint_every=4, num_workers=0, log_every=1, progress=False,
                accelerator="cpu", lr=1e-3, warmup_steps=2)
    return TrainConfig(**{**base, **overrides})


def test_learning_rate_rule_and_schedule():
    cfg = TrainConfig(batch_size=64, accumulate_grad_batches=2, devices=2, base_lr=1.5e-4)
    assert cfg.effective_batch == 256 and cfg.learning_rate == pytest.approx(1.5e-4)
    assert TrainConfig(batch_size=32, max_steps=1000).warmup == 50
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1) and warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5) and warmup_cosine(100, 10, 100) == pytest.approx(0.0)
    with pytest.raises(ConfigError):
        TrainConfig(precision="fp8")


def test_no_weight_decay_on_biases_norms_and_tokens():
    mae = build_method("mae", **TINY)
    decay, no_decay = parameter_groups(mae, 0.05)
    names = {id(p): n for n, p in mae.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "encoder.cls_token" in skipped and "decoder.mask_token" in skipped
    assert "encoder.blocks.0.norm1.weight" in skipped and "encoder.blocks.0.attn.qkv.bias" in skipped
    assert "encoder.blocks.0.attn.qkv.weight" in decayed and "encoder.patch_embed.proj.weight" in decayed
    assert "encoder.pos_embed" not in decayed | skipped  # fixed sin-cos: not trained
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


class StopAt(Callback):
    """Simulates a run killed right after its step-`step` checkpoint."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(image_folder, tmp_path):
    data = ImageFolderDataset(image_folder, img_size=32, patch_size=8, in_chans=1)
    full = pretrain("mae", data, tmp_path / "full", config(), method_config=TINY)
    assert full["steps"] == 8
    pretrain("mae", data, tmp_path / "cut", config(), method_config=TINY, callbacks=[StopAt(4)])
    assert (tmp_path / "cut" / "checkpoints" / "last.ckpt").exists()
    first = load_file(tmp_path / "cut" / "model.safetensors")
    resumed = pretrain("mae", data, tmp_path / "cut", config(), method_config=TINY, resume=True)
    assert resumed["steps"] == 8 and resumed["steps_this_session"] == 4
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(first[k], b[k]) for k in a)  # the resumed half did train
    # the run folder is complete: pictures, metrics, a loadable model
    assert (tmp_path / "full" / "pictures" / "reconstruction.png").exists()
    assert (tmp_path / "full" / "pictures" / "loss_curve.png").exists()
    method, cfg = load_method(tmp_path / "full" / "model.safetensors")
    assert cfg["encoder"]["embed_dim"] == 32  # stored nested (core.checkpoints.save_method)


def test_existing_run_needs_resume(image_folder, tmp_path):
    data = ImageFolderDataset(image_folder, img_size=32, patch_size=8, in_chans=1)
    with pytest.raises(ConfigError, match="--resume: no checkpoint"):
        pretrain("mae", data, tmp_path / "none", config(), method_config=TINY, resume=True)
    pretrain("mae", data, tmp_path / "run", config(max_steps=2, checkpoint_every=2), method_config=TINY)
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrain("mae", data, tmp_path / "run", config(max_steps=2, checkpoint_every=2), method_config=TINY)


class NaNAfter(MAE):
    def forward(self, batch, step=None):
        out = super().forward(batch, step)
        if step is not None and step >= 3:
            out.loss = out.loss * float("nan")
        return out


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(image_folder, tmp_path):
    data = ImageFolderDataset(image_folder, img_size=32, patch_size=8, in_chans=1)
    torch.manual_seed(0)
    with pytest.raises(TrainingError, match="loss became nan at step 3.*last good checkpoint"):
        pretrain(NaNAfter(**method_config("mae", TINY)), data, tmp_path / "run", config(checkpoint_every=2),
                 method_config=TINY)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_gradient_accumulation_and_bf16_train(image_folder, tmp_path):
    data = ImageFolderDataset(image_folder, img_size=32, patch_size=8, in_chans=1)
    out = pretrain("mae", data, tmp_path / "run", config(max_steps=3, accumulate_grad_batches=2,
                                                        precision="bf16-mixed"), method_config=TINY)
    assert out["steps"] == 3 and out["effective_batch"] == 8
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in out["history"])


DDP_SCRIPT = """
import sys, torch
from lightning.pytorch.callbacks import Callback
from mimkit.core.data import ImageFolderDataset
from mimkit.core.train import TrainConfig, pretrain

class SaveRank(Callback):
    def on_train_end(self, trainer, module):
        torch.distributed.barrier()
        torch.save({{k: v.detach().clone() for k, v in module.method.state_dict().items()}},
                   sys.argv[2] + f"/rank{{trainer.global_rank}}_of{{trainer.world_size}}.pt")

data = ImageFolderDataset(sys.argv[1], img_size=32, patch_size=8, in_chans=1)
cfg = TrainConfig(batch_size=4, max_steps=3, checkpoint_every=3, num_workers=0, progress=False, lr=1e-3,
                  accelerator="cpu", devices=2, strategy="ddp")
pretrain("mae", data, sys.argv[2] + "/run", cfg, method_config={tiny}, callbacks=[SaveRank()])
"""


def test_ddp_two_cpu_processes_gloo_keep_replicas_in_sync(image_folder, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tiny=TINY)))
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(image_folder), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}_of2.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # gradients were all-reduced
    torch.manual_seed(0)  # pretrain seeds the build with TrainConfig.seed = 0
    init = build_method("mae", **TINY).state_dict()
    assert not torch.equal(rank0["encoder.blocks.0.attn.qkv.weight"], init["encoder.blocks.0.attn.qkv.weight"])
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_a_quiet_pretraining_run_prints_no_lightning_warning_about_other_set_ups(image_folder, tmp_path):
    """`mimkit pretrain` should show a new user its progress, not Lightning's notes on set-ups it does not use (its
    module's batch hook passing over a data-module hook that does not exist, few loader workers, ...)."""
    import warnings

    from mimkit.core.config import quiet_lightning

    data = ImageFolderDataset(image_folder, img_size=32, patch_size=8, in_chans=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        pretrain("mae", data, tmp_path / "run", config(max_steps=2, checkpoint_every=2), method_config=TINY)
    lightning = [str(w.message) for w in caught if "lightning" in w.filename]
    assert lightning == []
