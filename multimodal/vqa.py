"""M3AE's downstream heads: medical VQA as answer classification and image + caption (report) classification.

As the official M3AE fine-tuning (zhjohnchan/M3AE, `m3ae_module.py` and `objectives.py`): a head of two linear
layers (2h -> 2h, LayerNorm, GELU, 2h -> classes, weights normal(0, 0.02)) reads `multi_modal_cls_feats`, the
text and image streams' pooled first tokens after the last fusion layer (`M3AE.multimodal_features`), and the
whole model is fine-tuned. VQA: one class per answer of the training split; the loss is binary cross-entropy on
the answer's (one-hot) target times the number of answers (`compute_vqa`); a test answer the training split does
not hold counts as wrong. Accuracy is reported over all test questions and separately over the open and the closed
ones, as the `answer_type` of each question (VQA-RAD, SLAKE) says. Classification: cross-entropy over the label
column's classes. Ours: AdamW with a warmup-cosine schedule over `max_steps` (the official runs count epochs and
give the heads a larger learning rate, `head_lr_scale` here).

Tasks (registered through mimkit.multimodal.bench): `vqa-rad` (ROOT/trainset.json, testset.json; images in
ROOT/"VQA_RAD Image Folder"), `slake` (ROOT/train.json, test.json, English questions; images in ROOT/imgs),
`image-caption-classification` (ROOT/captions_train.csv, captions_test.csv: image, text, label), and on what
`mimkit-multimodal synthetic --kind digits` writes: `synthetic-digits-vqa` (open "which digit is shown?", closed
"is the digit even?") and `synthetic-digits-caption-classification` (the digit from image + caption; the caption
names the digit, so the text alone suffices there: a check of the pipeline, not of the image side).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.benchmarks.tasks import Task
from mimkit.core.errors import ConfigError, DataError

from .classifiers import CAPTION, HEAD_FILE, VQA, classifier_kind, is_classifier, load_head, save_classifier_folder
from .data import ImageTextDataset, VQADataset, _records

LOSSES = ("bce", "ce")
STRATEGIES = ("trainable", "frozen")
ANSWER_TYPES = ("open", "closed")


class VisionLanguageClassifier(nn.Module):
    """An image-text backbone (copied) with the official M3AE head on its pooled multimodal features."""

    def __init__(self, method: nn.Module, num_classes: int, frozen: bool = False):
        super().__init__()
        if not callable(getattr(method, "multimodal_features", None)):
            raise ConfigError(f"VQA and caption classification need a method with fused image-text features (m3ae); "
                              f"got {getattr(method, 'method_name', type(method).__name__)!r}")
        self.backbone = copy.deepcopy(method)
        width = 2 * self.backbone.text_pooler.dense.out_features
        self.head = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(),
                                  nn.Linear(width, num_classes))
        for module in self.head.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.frozen = frozen
        if frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # a frozen backbone keeps its dropout off
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.backbone.multimodal_features(batch["image"], list(batch["text"])))


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """`bce`: the official VQA loss, binary cross-entropy on one-hot targets times the number of answers;
    `ce`: cross-entropy."""
    if loss == "bce":
        targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets) * logits.shape[1]
    return F.cross_entropy(logits, labels)


class VisionLanguageModule(L.LightningModule):
    """Fine-tunes a VisionLanguageClassifier: AdamW, warmup + cosine, the head at `head_lr_scale` x lr."""

    def __init__(self, model: VisionLanguageClassifier, loss: str, lr: float, weight_decay: float, max_steps: int,
                 head_lr_scale: float, seed: int):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.model, self.loss, self.lr, self.weight_decay = model, loss, lr, weight_decay
        self.max_steps, self.head_lr_scale, self.seed = max_steps, head_lr_scale, seed
        self.losses: list[float] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        from mimkit.core.train import step_seed

        torch.manual_seed(step_seed(self.seed, self.global_step, self.global_rank))
        loss = classifier_loss(self.model(batch), batch["label"], self.loss)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch["label"]))
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        from mimkit.core.train import adamw, parameter_groups, warmup_cosine

        groups = parameter_groups(self.model.backbone, self.weight_decay)
        for group in parameter_groups(self.model.head, self.weight_decay):
            groups.append({**group, "lr": self.lr * self.head_lr_scale})
        optimizer = adamw(groups, lr=self.lr, betas=(0.9, 0.999))
        warmup = max(1, self.max_steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, self.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 64, device=None) -> np.ndarray:
    """The predicted class of every sample, in order."""
    from mimkit.core.data import make_loader
    from mimkit.core.evaluate import default_device

    device = default_device(device)
    model = model.to(device).eval()
    out = []
    for batch in make_loader(dataset, batch_size):
        out.append(model({"image": batch["image"].to(device), "text": batch["text"]}).argmax(-1).cpu())
    return torch.cat(out).numpy()


def vqa_accuracy(predicted: Sequence[int], labels: Sequence[int], answer_types: Sequence[str]) -> dict:
    """Accuracy (fractions) over all questions and over the open and the closed ones (None where there are none);
    a label of -1 (an answer outside the training answers) is never right."""
    right = np.asarray(predicted) == np.asarray(labels)
    kinds = np.asarray([str(t).lower() for t in answer_types])
    result = {"accuracy": float(right.mean()) if len(right) else None}
    for kind in ANSWER_TYPES:
        chosen = kinds == kind
        result[f"{kind}_accuracy"] = float(right[chosen].mean()) if chosen.any() else None
        result[f"num_{kind}"] = int(chosen.sum())
    return result


def fit_steps(module: L.LightningModule, train_set, max_steps: int, batch_size: int, seed: int, device: torch.device,
              progress: bool | None) -> int:
    """Train `module` for `max_steps` seeded batches of `train_set` on the Lightning Trainer (one device, no logger or
    checkpoints); the steps taken."""
    from mimkit.core.data import ResumableSampler, make_loader

    sampler = ResumableSampler(len(train_set), seed=seed, stop=max_steps * batch_size)
    loader = make_loader(train_set, batch_size, 0, sampler=sampler, drop_last=len(train_set) >= batch_size)
    trainer = L.Trainer(max_steps=max_steps, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=sys.stderr.isatty() if progress is None else progress,
                        num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader)
    return trainer.global_step


def fit_vision_language(method: nn.Module, train_set, test_set, classes: int, *, loss: str = "ce",
                        max_steps: int = 300, batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 0.01,
                        head_lr_scale: float = 1.0, strategy: str = "trainable", seed: int = 0, device=None,
                        progress: bool | None = None, keep_model: bool = False) -> tuple[np.ndarray, dict]:
    """Fine-tune the method with the head (`trainable`, M3AE's protocol) or the head alone (`frozen`) on the
    training samples (those with a label >= 0); (the test predictions, {"steps", "final_train_loss"} and with
    `keep_model` the trained VisionLanguageClassifier as "model")."""
    from mimkit.core.evaluate import default_device

    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be trainable (M3AE's fine-tuning) or frozen, got {strategy!r}")
    device = default_device(device)
    usable = [i for i, t in enumerate(train_set.targets) if t >= 0]
    if not usable:
        raise DataError("no training sample has a label")
    train = train_set if len(usable) == len(train_set) else _Labelled(train_set, usable)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionLanguageClassifier(method, classes, frozen=strategy == "frozen")
    module = VisionLanguageModule(model, loss, lr, weight_decay, max_steps, head_lr_scale, seed)
    steps = fit_steps(module, train, max_steps, batch_size, seed, device, progress)
    predicted = predict(model, test_set, device=device)
    info = {"steps": steps, "final_train_loss": float(np.mean(module.losses[-10:])) if module.losses else None}
    return predicted, {**info, **({"model": model.cpu().eval()} if keep_model else {})}


class _Labelled(torch.utils.data.Dataset):
    """The samples of a dataset that have a label; keys may carry the sampler's seed, (index, seed)."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            return self.dataset[(self.indices[int(key[0])], *key[1:])]
        return self.dataset[self.indices[int(key)]]


def vqa_runner(subject: nn.Module, train_set: VQADataset, test_set: VQADataset, root: Path, max_steps: int = 300,
               batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 0.01, head_lr_scale: float = 1.0,
               strategy: str = "trainable", seed: int = 0, device=None, save_dir: str | None = None) -> dict:
    """VQA as answer classification over the training answers; accuracy overall, open and closed (fractions), and
    the majority answer's accuracy per type for reference. With `save_dir` the fine-tuned classifier is kept there
    (`save_vision_language_classifier`)."""
    predicted, info = fit_vision_language(subject, train_set, test_set, len(train_set.answers), loss="bce",
                                          max_steps=max_steps, batch_size=batch_size, lr=lr,
                                          weight_decay=weight_decay, head_lr_scale=head_lr_scale,
                                          strategy=strategy, seed=seed, device=device,
                                          keep_model=save_dir is not None)
    model = info.pop("model", None)
    result = {**vqa_accuracy(predicted, test_set.targets, test_set.answer_types), **info,
              "num_answers": len(train_set.answers)}
    majority = np.bincount([t for t in train_set.targets if t >= 0], minlength=len(train_set.answers)).argmax()
    result["majority_accuracy"] = vqa_accuracy([majority] * len(test_set), test_set.targets,
                                               test_set.answer_types)["accuracy"]
    if model is not None:
        save_vision_language_classifier(model, save_dir, train_set, test_set, predicted, {
            "strategy": strategy, "seed": seed, "steps": info["steps"],
            **{k: result[k] for k in ("accuracy", "open_accuracy", "closed_accuracy")}})
    return result


def classification_runner(subject: nn.Module, train_set, test_set, root: Path, max_steps: int = 300,
                          batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 0.01,
                          head_lr_scale: float = 1.0, strategy: str = "trainable", seed: int = 0,
                          device=None, save_dir: str | None = None) -> dict:
    """Image + caption classification: accuracy (fraction) on the test split, and the majority class's. With
    `save_dir` the fine-tuned classifier is kept there (`save_vision_language_classifier`)."""
    predicted, info = fit_vision_language(subject, train_set, test_set, len(train_set.classes), loss="ce",
                                          max_steps=max_steps, batch_size=batch_size, lr=lr,
                                          weight_decay=weight_decay, head_lr_scale=head_lr_scale,
                                          strategy=strategy, seed=seed, device=device,
                                          keep_model=save_dir is not None)
    model = info.pop("model", None)
    labels = np.asarray(test_set.targets)
    majority = np.bincount(np.asarray(train_set.targets), minlength=len(train_set.classes)).argmax()
    result = {"accuracy": float((predicted == labels).mean()),
              "majority_accuracy": float((labels == majority).mean()), **info}
    if model is not None:
        save_vision_language_classifier(model, save_dir, train_set, test_set, predicted, {
            "strategy": strategy, "seed": seed, "steps": info["steps"], "accuracy": result["accuracy"]})
    return result


# ============================================================================================ saved classifiers
def save_vision_language_classifier(model: VisionLanguageClassifier, folder: str | Path, train_set, test_set,
                                    predicted: Sequence[int], record: dict) -> Path:
    """A fine-tuned VQA or caption classifier as a folder (classifiers.py): the backbone as trained, the head,
    config.yaml (the run's method and model, the image statistics, `classifier`: kind, task, the answers or classes
    in head order and `record`) and predictions.csv (each test sample's image, question or caption, label,
    prediction and, for VQA, answer type)."""
    is_vqa = isinstance(train_set, VQADataset)
    origin = getattr(train_set, "run_settings", None) or {}
    classes = list(train_set.answers if is_vqa else train_set.classes)
    texts = test_set.questions if is_vqa else test_set.texts
    truth = test_set.answer_texts if is_vqa else [classes[t] for t in test_set.targets]
    header = ["row", "image", "question" if is_vqa else "text", "label", "predicted"] + (["answer_type"] if is_vqa
                                                                                          else [])
    rows = ([i, str(file), text, label, classes[int(p)], *([test_set.answer_types[i]] if is_vqa else [])]
            for i, (file, text, label, p) in enumerate(zip(test_set.files, texts, truth, predicted)))
    mean, std = train_set.stats
    return save_classifier_folder(model.backbone, model.head, folder, origin, {"mean": mean, "std": std},
                                  {"kind": VQA if is_vqa else CAPTION, "task": origin.get("task"),
                                   "inputs": "image + text", "classes": classes, **record}, (header, rows))


def load_vision_language_classifier(folder: str | Path) -> tuple[VisionLanguageClassifier, dict]:
    """(the VisionLanguageClassifier, the folder's config.yaml) of a classifier `save_vision_language_classifier`
    wrote."""
    from mimkit.core.runs import load_run

    if not is_classifier(folder) or classifier_kind(folder) not in (VQA, CAPTION):
        raise ConfigError(f"{folder} holds no saved VQA or caption classifier ({HEAD_FILE} with classifier.kind "
                          f"{VQA} or {CAPTION}): give a folder that `mimkit-multimodal finetune --task ...` wrote "
                          f"under OUT/classifiers/")
    method, config = load_run(folder)
    classes = (config.get("classifier") or {}).get("classes")
    if not classes:
        raise ConfigError(f"{folder}/config.yaml: the classifier section lists no classes")
    model = VisionLanguageClassifier(method, len(classes))
    load_head(model.head, folder)
    return model.eval(), config


def score_vision_language_classifier(folder: str | Path, root: str | Path, task: str | None = None,
                                     device=None) -> dict:
    """Score a saved VQA or caption classifier as it is (no training) on the test split of its task (or `task`) at
    ROOT, with the answers or classes it was trained on; {"accuracy", open/closed for VQA, "num_test", "task"}."""
    from mimkit.benchmarks.tasks import get_task

    model, config = load_vision_language_classifier(folder)
    info, data = config["classifier"], config.get("data") or {}
    name = task or info.get("task")
    if name not in VISION_LANGUAGE_TASKS:
        raise ConfigError(f"{folder}: name the task to score it on (--task, one of {', '.join(VISION_LANGUAGE_TASKS)})"
                          f"; the classifier records {name!r}")
    encoder = model.backbone.encoder
    _, test = get_task(name).load(Path(root), img_size=encoder.img_size, in_chans=encoder.in_chans,
                                  mean=data.get("mean"), std=data.get("std"), classes=info["classes"])
    predicted = predict(model, test, device=device)
    if isinstance(test, VQADataset):
        result = vqa_accuracy(predicted, test.targets, test.answer_types)
    else:
        result = {"accuracy": float((predicted == np.asarray(test.targets)).mean())}
    return {**result, "num_test": len(test), "task": name, "predicted": predicted}


# ============================================================================================ readers
class LabelledCaptions(ImageTextDataset):
    """Images with a caption and a class label (column `label_column`); `classes` from the training split."""

    def __init__(self, path: str | Path, label_column: str = "label", classes: Sequence[str] | None = None,
                 **options):
        super().__init__(path, **options)
        records = _records(Path(path))
        if records and label_column not in records[0]:
            raise ConfigError(f"{path}: no label column {label_column!r}; columns: {', '.join(map(str, records[0]))}")
        names = [str(records[n][label_column]).strip() for n in self.row_numbers]
        self.classes = list(classes) if classes is not None else sorted(set(names), key=_natural)
        lookup = {c: i for i, c in enumerate(self.classes)}
        self.targets = [lookup.get(name, -1) for name in names]

    def __getitem__(self, key) -> dict:
        return {**super().__getitem__(key), "label": self.targets[int(key[0] if isinstance(key, tuple) else key)]}


def _natural(name: str):
    return (0, float(name), "") if name.replace(".", "", 1).lstrip("-").isdigit() else (1, 0.0, name)


def vqa_reader(layout: str, train_file: str, test_file: str, image_folder: str | None = None):
    """A task reader: read(root, img_size, in_chans, mean, std, image_root, language, train_file, test_file) ->
    (train, test) VQADatasets; the answers (classes) are the training split's."""

    def read(root: Path, img_size=32, in_chans: int | None = None, mean=None, std=None,
             image_root: str | None = None, language: str = "en", strict: bool = False,
             train_file: str = train_file, test_file: str = test_file, preprocessing=None, image_column=None,
             run_settings=None, classes: Sequence[str] | None = None):
        images = image_root if image_root is not None else (str(Path(root) / image_folder) if image_folder else None)
        common = dict(layout=layout, image_root=images, language=language, img_size=img_size, transform="eval",
                      strict=strict)
        # `classes`: a saved classifier's answers, in its head's order
        train = VQADataset(Path(root) / train_file, answers=classes, in_chans=in_chans, mean=mean, std=std, **common)
        mean, std = train.images.stats
        test = VQADataset(Path(root) / test_file, answers=train.answers, in_chans=train.in_chans, mean=mean, std=std,
                          **common)
        train.run_settings = run_settings  # what a saved classifier records
        return train, test
    return read


def caption_classification_reader(train_file: str = "captions_train.csv", test_file: str = "captions_test.csv"):
    """A task reader: read(root, img_size, in_chans, mean, std, layout, label_column, ...) -> (train, test)
    LabelledCaptions; the classes are the training split's."""

    def read(root: Path, img_size=32, in_chans: int | None = None, mean=None, std=None, layout: str = "csv",
             image_root: str | None = None, image_column: str | None = None, text_column: str | None = None,
             label_column: str = "label", strict: bool = False, train_file: str = train_file,
             test_file: str = test_file, preprocessing=None, run_settings=None,
             classes: Sequence[str] | None = None):
        common = dict(layout=layout, image_root=image_root, image_column=image_column, text_column=text_column,
                      img_size=img_size, transform="eval", strict=strict, label_column=label_column)
        # `classes`: a saved classifier's, in its head's order
        train = LabelledCaptions(Path(root) / train_file, classes=classes, in_chans=in_chans, mean=mean, std=std,
                                 **common)
        mean, std = train.stats
        test = LabelledCaptions(Path(root) / test_file, classes=train.classes, in_chans=train.in_chans, mean=mean,
                                std=std, **common)
        train.run_settings = run_settings  # what a saved classifier records
        return train, test
    return read


def vision_language_tasks(prepare) -> list[Task]:
    """The VQA and caption-classification tasks, with the domain's `prepare` (images at the run's size)."""
    vqa = ("Medical VQA as answer classification (M3AE's head on the fused image-question features, fine-tuned), "
           "accuracy (%) over all test questions; open and closed accuracy in the details")
    cls = "Image + caption classification (M3AE's head on the fused features, fine-tuned), accuracy (%)"
    # ours, CPU-sized: the synthetic tasks' budget
    small = {"max_steps": 300, "batch_size": 32, "lr": 5e-4, "weight_decay": 0.01}
    return [
        Task("vqa-rad", "multimodal", "VQA-RAD", "finetune", "accuracy",
             vqa_reader("vqa-rad", "trainset.json", "testset.json", "VQA_RAD Image Folder"),
             f"{vqa}; ROOT holds trainset.json and testset.json (VQA-RAD's keys) and 'VQA_RAD Image Folder'",
             runner=vqa_runner, prepare=prepare),
        Task("slake", "multimodal", "SLAKE", "finetune", "accuracy", vqa_reader("slake", "train.json", "test.json"),
             f"{vqa}; ROOT holds SLAKE's train.json, test.json and imgs/ (English questions)",
             runner=vqa_runner, prepare=prepare),
        Task("image-caption-classification", "multimodal", "image + caption (local)", "finetune", "accuracy",
             caption_classification_reader(),
             f"{cls}; ROOT holds captions_train.csv and captions_test.csv (image, text, label)",
             runner=classification_runner, prepare=prepare),
        Task("synthetic-digits-vqa", "multimodal", "mimkit synthetic digits VQA", "finetune", "accuracy",
             vqa_reader("vqa-rad", "vqa_train.json", "vqa_test.json", "."),
             f"{vqa}; scikit-learn's digits: 'which digit is shown?' (open, 10 answers), 'is the digit even?' "
             f"(closed, yes / no)", runner=vqa_runner, prepare=prepare, settings=small),
        Task("synthetic-digits-caption-classification", "multimodal", "mimkit synthetic digits + captions",
             "finetune", "accuracy", caption_classification_reader(),
             f"{cls}; scikit-learn's digits with captions from their labels (the caption names the digit)",
             runner=classification_runner, prepare=prepare, settings=small),
    ]


VISION_LANGUAGE_TASKS = ("vqa-rad", "slake", "image-caption-classification", "synthetic-digits-vqa",
                         "synthetic-digits-caption-classification")

__all__ = ["VisionLanguageClassifier", "VisionLanguageModule", "classifier_loss", "vqa_accuracy",
           "fit_vision_language", "vqa_runner", "STRATEGIES", "classification_runner", "LabelledCaptions", "vqa_reader",
           "caption_classification_reader", "vision_language_tasks", "VISION_LANGUAGE_TASKS", "LOSSES",
           "save_vision_language_classifier", "load_vision_language_classifier", "score_vision_language_classifier"]
