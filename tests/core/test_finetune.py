"""Fine-tuning on Lightning (core.finetune, core.heads): layer-decay groups, bit-identical resume, best-checkpoint
selection, augmentations only when named, multi-label / segmentation / UNETR switches, save-load, DDP."""
import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score
from torch import nn

from mimkit.core.encoders import build_encoder
from mimkit.core.errors import CheckpointError, ConfigError
from mimkit.core.finetune import (FineTuneConfig, FineTuneModule, SampleAugment, TaskView, finetune, load_finetuned,
                                  optimizer_groups, segmentation_metrics, split_validation)
from mimkit.core.heads import FineTuneModel, build_head

TINY = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)
FAST = dict(progress=False, accelerator="cpu", num_workers=0, batch_size=8, lr=3e-3, warmup_steps=0, drop_path=0.0,
            log_every=1)


def tiny_encoder(**overrides):
    torch.manual_seed(0)
    return build_encoder(**{**TINY, **overrides})




def images_of(items):
    return torch.stack([item["image"] for item in items])


class StopAt(Callback):
    """Simulates a run killed right after step `step` (and its checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class SpoilAt(Callback):
    """From step `step` on the head predicts class 0 for everything: later validations score 1/4 (chance)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                module.model.head.fc.weight.zero_()
                module.model.head.fc.bias.copy_(torch.tensor([100.0, 0.0, 0.0, 0.0]))


class _Recorded(nn.Module):
    def __init__(self, loss, targets):
        super().__init__()
        self.inner, self.targets = loss, targets

    def forward(self, logits, target):
        self.targets.append(target.detach().clone())
        return self.inner(logits, target)


class Record(Callback):
    """The training batches' images (after per-sample augmentation) and the targets the loss receives."""

    def __init__(self):
        self.images, self.targets = [], []

    def on_fit_start(self, trainer, module):
        module.loss = _Recorded(module.loss, self.targets)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.images.append(batch["image"].clone())


# ---------------------------------------------------------------------------------------------- optimiser
def scales_and_decays(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    found = [(names[id(p)], g.get("lr_scale", 1.0), g["weight_decay"]) for g in groups for p in g["params"]]
    assert len(found) == len({name for name, _, _ in found})  # every parameter in one group only
    return {name: scale for name, scale, _ in found}, {name: decay for name, _, decay in found}


def test_layer_decay_follows_beit_rule_and_biases_norms_tokens_skip_weight_decay():
    encoder = tiny_encoder(pos_embed="learned")
    model = FineTuneModel(encoder, build_head("linear", encoder, 4))
    scale, decay = scales_and_decays(model, optimizer_groups(model, 0.05, layer_decay=0.5))
    assert set(scale) == {n for n, p in model.named_parameters() if p.requires_grad}
    # BEiT / MAE lr_decay.py: stem = layer 0, block i = layer i + 1, head = layer depth + 1 with scale 1
    for name, value in scale.items():
        expected = (1.0 if name.startswith("head.") else 0.5 if ".blocks.1." in name else
                    0.25 if ".blocks.0." in name else 0.125)
        assert value == pytest.approx(expected), name
    assert scale["encoder.patch_embed.proj.weight"] == scale["encoder.cls_token"] == scale["encoder.pos_embed"]
    for name in ("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed.proj.bias", "head.fc.bias",
                 "encoder.blocks.0.norm1.weight", "encoder.blocks.1.attn.qkv.bias", "head.fc_norm.weight"):
        assert decay[name] == 0.0, name
    for name in ("encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight",
                 "encoder.blocks.1.mlp.fc2.weight", "head.fc.weight"):
        assert decay[name] == 0.05, name
    # the class-token head keeps the encoder's final norm, which BEiT puts with the head, not the last block
    token_model = FineTuneModel(encoder, build_head("linear", encoder, 4, pool="token"))
    token_scale, _ = scales_and_decays(token_model, optimizer_groups(token_model, 0.05, layer_decay=0.5))
    assert token_scale["encoder.norm.weight"] == 1.0 and token_scale["encoder.blocks.1.norm1.weight"] == 0.5
    # no decay (1) gives the weight-decay groups only; the module sets each group's lr to lr x its scale
    assert {g.get("lr_scale", 1.0) for g in optimizer_groups(model, 0.05, layer_decay=1.0)} == {1.0}
    config = FineTuneConfig(lr=1e-3, layer_decay=0.5, max_steps=10, warmup_steps=0)
    module = FineTuneModule(model, config, loss="cross_entropy", metric="classification", num_outputs=4)
    optimizer = module.configure_optimizers()["optimizer"]
    assert sorted({round(g["initial_lr"], 12) for g in optimizer.param_groups}) == [1.25e-4, 2.5e-4, 5e-4, 1e-3]
    assert optimizer.defaults["fused"] is True  # fine-tuning takes pretraining's fused AdamW step


# ---------------------------------------------------------------------------------------------- resume
def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, patterns):
    train, test, val = patterns(32, 1), patterns(16, 2), patterns(16, 3)
    run = dict(val_set=val, max_steps=6, checkpoint_every=3, val_every=3, **FAST)
    # spoiling the head after step 4 makes the step-3 weights the best: the resumed run must remember that score
    whole = finetune(tiny_encoder(), train, test, tmp_path / "whole", callbacks=[SpoilAt(4)], **run)
    stopped = finetune(tiny_encoder(), train, test, tmp_path / "resumed", callbacks=[SpoilAt(4), StopAt(3)], **run)
    assert stopped["steps"] == 3
    resumed = finetune(tiny_encoder(), train, test, tmp_path / "resumed", resume=True, callbacks=[SpoilAt(4)], **run)
    assert resumed["steps"] == 6 and resumed["train_loss"] == whole["train_loss"][3:]
    assert whole["best_step"] == resumed["best_step"] == 3
    first, second = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "resumed"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    last = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
            for name in ("whole", "resumed")]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    assert resumed["test"] == whole["test"]
    with pytest.raises(ConfigError, match="resume=True"):
        finetune(tiny_encoder(), train, test, tmp_path / "whole", **run)
    with pytest.raises(ConfigError, match="no checkpoint"):
        finetune(tiny_encoder(), train, test, tmp_path / "empty", resume=True, **run)


def test_a_finished_run_resumed_with_more_steps_continues_it(tmp_path, patterns):
    # max_steps sets the cosine schedule, so only a constant learning rate (min_lr = lr, no warmup) makes 3 steps
    # then 3 more the same run as 6 steps
    train, test, val = patterns(32, 1), patterns(16, 2), patterns(16, 3)
    run = dict(val_set=val, checkpoint_every=3, val_every=3, **{**FAST, "min_lr": FAST["lr"]})
    whole = finetune(tiny_encoder(), train, test, tmp_path / "whole", max_steps=6, **run)
    finetune(tiny_encoder(), train, test, tmp_path / "extended", max_steps=3, **run)
    extended = finetune(tiny_encoder(), train, test, tmp_path / "extended", max_steps=6, resume=True, **run)
    assert extended["steps"] == 6 and extended["train_loss"] == whole["train_loss"][3:]
    first, second = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "extended"))
    assert all(torch.equal(first[k], second[k]) for k in first)


# ---------------------------------------------------------------------------------------------- best checkpoint
def logged_validations(out_dir):
    """(global step, val accuracy) from the CSV log; Lightning logs the 0-based index of the step's batch."""
    with open(out_dir / "logs" / "version_0" / "metrics.csv") as f:
        return [(int(row["step"]) + 1, float(row["val/accuracy"])) for row in csv.DictReader(f) if row["val/accuracy"]]


def accuracy(model, items):
    with torch.no_grad():
        predicted = model(images_of(items)).argmax(1)
    return float((predicted == torch.tensor([item["label"] for item in items])).float().mean())


def test_best_checkpoint_is_the_best_logged_validation_and_is_the_saved_model(tmp_path, patterns):
    train, test, val = patterns(32, 1), patterns(16, 2), patterns(16, 3)
    row = finetune(tiny_encoder(), train, test, tmp_path, val_set=val, max_steps=8, val_every=2, return_model=True,
                   callbacks=[SpoilAt(5)], **FAST)
    history = logged_validations(tmp_path)
    assert [step for step, _ in history] == [2, 4, 6, 8] and [v for _, v in history[2:]] == [0.25, 0.25]
    best_value = max(value for _, value in history)
    assert best_value > 0.25 and row["steps"] == 8
    assert row["best_step"] == next(step for step, value in history if value == best_value)  # the first of ties
    assert row["val"]["accuracy"] == pytest.approx(best_value)
    assert row["best_checkpoint"].endswith(f"best-step{row['best_step']:06d}.ckpt")
    saved, config = load_finetuned(tmp_path / "model.safetensors")
    assert config["best_step"] == row["best_step"]
    assert accuracy(saved, val) == pytest.approx(best_value)
    assert row["test"]["accuracy"] == pytest.approx(accuracy(saved, test))  # the test scores the best weights
    assert row["test"]["accuracy"] > 0.25  # not the spoiled last weights


def test_validation_split_is_seeded_and_stratified(patterns):
    data = patterns(40, 1)
    train, val = split_validation(data, 0.2, seed=3)
    again, _ = split_validation(data, 0.2, seed=3)
    other, _ = split_validation(data, 0.2, seed=4)
    assert sorted(train.indices + val.indices) == list(range(40)) and train.indices == again.indices
    assert train.indices != other.indices
    assert np.bincount([data[i]["label"] for i in val.indices]).tolist() == [2, 2, 2, 2]  # 20% of each class


# ---------------------------------------------------------------------------------------------- save / load
def test_saved_model_reloads_with_the_same_logits(tmp_path, patterns):
    encoder, test = tiny_encoder(), patterns(8, 2)
    row = finetune(encoder, patterns(16, 1), test, tmp_path, head="attentive", head_options={"mlp_ratio": 2.0},
                   val_fraction=0, max_steps=2, return_model=True, **FAST)
    loaded, config = load_finetuned(row["model_path"])
    assert config["head"] == "attentive" and config["head_options"] == {"mlp_ratio": 2.0}
    assert config["num_outputs"] == 4 and config["encoder"]["depth"] == 2
    with torch.no_grad():
        expected, found = row["model"](images_of(test)), loaded(images_of(test))
    assert torch.equal(expected, found)
    save_file(encoder.state_dict(), tmp_path / "encoder.safetensors")
    with pytest.raises(CheckpointError, match="not a fine-tuned model"):
        load_finetuned(tmp_path / "encoder.safetensors")


def test_a_frozen_encoder_encodes_the_training_split_once_and_learns_the_same_head(patterns):
    train, test = patterns(16, 1), patterns(8, 2)
    runs = {}
    for cache in (True, False):
        encoder, seen = tiny_encoder(), []
        encoder.patch_embed.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
        row = finetune(encoder, train, test, head="bn_linear", freeze_encoder=True, cache_features=cache,
                       val_fraction=0, max_steps=6, return_model=True, **FAST)  # the model's copy keeps the hook
        runs[cache] = row, sum(seen)
    assert runs[True][1] == 16 + 8 and runs[False][1] == 6 * 8 + 8  # train split once, test once; or every step
    (cached, _), (uncached, _) = runs[True], runs[False]
    assert cached["test"] == uncached["test"]
    assert torch.allclose(cached["model"].head.fc.weight, uncached["model"].head.fc.weight, atol=1e-6)


# ---------------------------------------------------------------------------------------------- augmentations
def test_mixup_and_cutmix_give_soft_targets_only_when_named(patterns):
    train, test = patterns(16, 1), patterns(8, 2)
    plain, mixed = Record(), Record()
    row = finetune(tiny_encoder(), train, test, val_fraction=0, max_steps=2, callbacks=[plain], **FAST)
    assert row["loss"] == "cross_entropy" and all(t.dtype == torch.long and t.ndim == 1 for t in plain.targets)
    raw = images_of(train)
    assert all((raw == image).flatten(1).all(1).any() for batch in plain.images for image in batch)  # untouched
    row = finetune(tiny_encoder(), train, test, val_fraction=0, max_steps=2, mixup=0.8, cutmix=1.0,
                   callbacks=[mixed], **FAST)
    assert row["loss"] == "soft_target_cross_entropy"
    targets = torch.cat(mixed.targets)
    assert targets.shape == (16, 4) and torch.allclose(targets.sum(1), torch.ones(16))
    # label smoothing 0.1 puts 0.025 on every class; mixing puts more than that on a second class
    assert ((targets > 0.03).sum(1) >= 2).any() and (targets.max(1).values < 0.9).any()
    with pytest.raises(ConfigError, match="soft_target_cross_entropy"):
        finetune(tiny_encoder(), train, test, mixup=0.8, loss="cross_entropy", max_steps=1, **FAST)
    with pytest.raises(ConfigError, match="batch_size must be even"):
        finetune(tiny_encoder(), train, test, mixup=0.8, max_steps=1, **{**FAST, "batch_size": 3})


def test_rand_augment_is_seeded_per_sample_and_reaches_the_training_batches(patterns):
    train = patterns(16, 1)
    augment = SampleAugment("rand-m9-mstd0.5-inc1", 0.0, [0.0], [1.0], 16)
    view, plain = TaskView(train, augment=augment), TaskView(train)
    assert torch.equal(plain[(0, 5)]["image"], train[0]["image"])
    outputs = [view[(0, seed)]["image"] for seed in range(4)]
    assert torch.equal(outputs[1], view[(0, 1)]["image"])  # same sample seed, same picture
    assert len({tuple(o.flatten().tolist()) for o in outputs}) > 1  # other seeds, other pictures
    record = Record()
    finetune(tiny_encoder(), train, patterns(8, 2), val_fraction=0, max_steps=2, rand_augment="rand-m9-mstd0.5-inc1",
             callbacks=[record], **FAST)
    raw = images_of(train)
    changed = [not (raw == image).flatten(1).all(1).any() for batch in record.images for image in batch]
    assert sum(changed) >= len(changed) // 2
    with pytest.raises(ConfigError, match="rand_augment 'rand-x9'"):
        SampleAugment("rand-x9", 0.0, [0.0], [1.0], 16)


def test_random_erasing_fills_one_box_with_noise(patterns):
    image = patterns(1, 1)[0]["image"]
    torch.manual_seed(0)
    import random

    random.seed(0)
    erased = SampleAugment(None, 1.0, [0.0], [1.0], 16)(image)
    changed = (erased != image)[0]
    rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all() and changed.sum() == box.numel()  # one filled rectangle, nothing outside it
    assert 0.02 * 256 <= changed.sum() <= 256 / 3 + 16  # timm's area range (2% to 1/3, rounded sides)
    assert torch.equal(image, patterns(1, 1)[0]["image"])  # the input is not erased in place
    assert SampleAugment(None, 0.0, [0.0], [1.0], 16)(image) is image


def test_augmentations_that_cannot_apply_are_config_errors_naming_the_setting(patterns):
    volumes = [{"image": torch.rand(1, 8, 8, 8), "label": i % 2} for i in range(8)]
    encoder3d = tiny_encoder(img_size=8, spatial_dims=3)
    for setting in ("rand_augment", "random_erasing", "cutmix"):
        value = {"rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "cutmix": 1.0}[setting]
        with pytest.raises(ConfigError, match=setting):
            finetune(encoder3d, volumes, volumes, max_steps=1, **{**FAST, setting: value})
    masks = [{"image": item["image"], "label": (item["image"][0] > 0.5).long()} for item in patterns(8, 1)]
    with pytest.raises(ConfigError, match="rand_augment") as error:
        finetune(tiny_encoder(), masks, masks, head="segmentation", rand_augment="rand-m9-mstd0.5-inc1", max_steps=1,
                 **FAST)
    assert "segmentation" in str(error.value)


# ---------------------------------------------------------------------------------------------- task kinds
def test_multi_hot_labels_train_with_bce_and_score_macro_auc(patterns):
    def multi_hot(items):  # "striped" (classes 0, 1) and "has vertical structure" (1, 3)
        return [{"image": item["image"], "label": torch.tensor([float(item["label"] in (0, 1)),
                                                                 float(item["label"] in (1, 3))])} for item in items]

    train, test = multi_hot(patterns(16, 1)), multi_hot(patterns(12, 2))
    row = finetune(tiny_encoder(), train, test, val_fraction=0, max_steps=2, return_model=True, **FAST)
    assert row["loss"] == "bce" and row["metric"] == "auc_macro" and row["num_outputs"] == 2
    with torch.no_grad():
        scores = row["model"](images_of(test))
    expected = roc_auc_score(torch.stack([item["label"] for item in test]).numpy(), scores.numpy(), average="macro")
    assert row["test"]["auc_macro"] == pytest.approx(expected, abs=1e-6)
    assert row["value"] == round(100 * row["test"]["auc_macro"], 2) and row["test"]["auc_classes_used"] == 2


def test_label_maps_switch_to_iou_and_skip_ignored_pixels(patterns):
    def masks(items):
        out = []
        for item in items:
            mask = (item["image"][0] > 0.5).long()
            mask[:2] = -1  # nodata rows (the remote-sensing convention)
            out.append({"image": item["image"], "label": mask})
        return out

    train, test = masks(patterns(16, 1)), masks(patterns(8, 2))
    row = finetune(tiny_encoder(), train, test, head="segmentation", ignore_index=-1, val_fraction=0, max_steps=2,
                   return_model=True, **FAST)
    assert row["protocol"] == "segmentation" and row["metric"] == "miou" and row["loss"] == "cross_entropy"
    assert row["num_outputs"] == 2 and row["test"]["num_pixels"] == 8 * 14 * 16
    with torch.no_grad():
        predicted = row["model"](images_of(test)).argmax(1)
    truth = torch.stack([item["label"] for item in test])
    valid = truth >= 0
    confusion = np.zeros((2, 2))
    np.add.at(confusion, (truth[valid].numpy(), predicted[valid].numpy()), 1)
    assert row["test"]["miou"] == pytest.approx(segmentation_metrics(confusion)["miou"])


def test_unetr_on_a_3d_encoder_reports_dice():
    from monai.metrics import DiceMetric

    def cubes(n, seed):
        generator, items = torch.Generator().manual_seed(seed), []
        for _ in range(n):
            label = torch.zeros(16, 16, 16, dtype=torch.long)
            corner = torch.randint(0, 8, (3,), generator=generator)
            label[corner[0]:corner[0] + 8, corner[1]:corner[1] + 8, corner[2]:corner[2] + 8] = 1
            image = label[None].float() + 0.1 * torch.randn(1, 16, 16, 16, generator=generator)
            items.append({"image": image, "label": label})
        return items

    encoder = tiny_encoder(embed_dim=16, spatial_dims=3)
    train, test = cubes(4, 1), cubes(2, 2)
    row = finetune(encoder, train, test, head="unetr", head_options={"feature_size": 4}, metric="dice", val_fraction=0,
                   max_steps=2, return_model=True, **{**FAST, "batch_size": 2})
    assert row["metric"] == "dice_mean" and row["loss"] == "dice_ce" and row["protocol"] == "segmentation"
    assert row["test"]["num_samples"] == 2 and len(row["test"]["dice_per_class"]) == 1
    with torch.no_grad():
        logits = row["model"](images_of(test))
    assert logits.shape == (2, 2, 16, 16, 16)
    truth = torch.stack([item["label"] for item in test])[:, None]
    predicted = logits.argmax(1, keepdim=True)
    dice = DiceMetric(include_background=False, ignore_empty=True)
    dice(torch.cat([predicted == 0, predicted == 1], 1).float(), torch.cat([truth == 0, truth == 1], 1).float())
    assert row["test"]["dice_mean"] == pytest.approx(float(dice.aggregate()), abs=1e-5)
    assert 0 <= row["value"] <= 100


# ---------------------------------------------------------------------------------------------- DDP
DDP_SCRIPT = """
import json, os, sys, torch
from mimkit.core.encoders import build_encoder
from mimkit.core.finetune import finetune

data = torch.load(sys.argv[1], weights_only=True)
torch.manual_seed(0)
encoder = build_encoder(**{tiny})
row = finetune(encoder, data["train"], data["test"], sys.argv[2], devices=2, strategy="ddp", **{settings})
with open(sys.argv[2] + f"/row{{os.environ.get('LOCAL_RANK', '0')}}.json", "w") as f:
    json.dump({{"test": row["test"], "val": row["val"], "steps": row["steps"], "best_step": row["best_step"]}}, f)
"""


def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_effective_batch(tmp_path, patterns):
    train, test = patterns(40, 1), patterns(24, 2)
    run = dict(max_steps=4, val_every=2, checkpoint_every=2, **FAST)
    single = finetune(tiny_encoder(), train, test, tmp_path / "single", **run)
    torch.save({"train": train, "test": test}, tmp_path / "data.pt")
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tiny=TINY, settings={**run, "batch_size": 4})))
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "data.pt"), str(tmp_path / "ddp")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads((tmp_path / "ddp" / f"row{rank}.json").read_text()) for rank in (0, 1)]
    assert rows[0] == rows[1]  # metrics are synchronised over the processes
    assert rows[0]["test"]["num_samples"] == 24 and rows[0]["steps"] == 4
    # same samples per step (rank r takes positions r, r + 2, ...) and averaged gradients: the same run up to
    # float summation order (weights within 1e-4 after moving ~1e-2; accuracy within one test image)
    assert rows[0]["best_step"] == single["best_step"]
    assert rows[0]["test"]["accuracy"] == pytest.approx(single["test"]["accuracy"], abs=1 / 24)
    ddp, one = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "single" / "model.safetensors")
    assert max(float((ddp[k] - one[k]).abs().max()) for k in one) < 1e-4
    init = tiny_encoder().state_dict()
    assert float((one["encoder.blocks.0.attn.qkv.weight"] - init["blocks.0.attn.qkv.weight"]).abs().max()) > 1e-3
    assert torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
