"""Evaluation protocols for a pretrained `ViTEncoder`: weighted kNN, linear probe, full fine-tuning.

kNN follows DINO (Caron et al., 2021) and InstDisc (Wu et al., 2018); the linear probe and fine-tuning
follow the MAE paper's code (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners"),
including BEiT's layer-wise learning-rate decay. Datasets yield dicts {"image": tensor, "label": int or
multi-hot float tensor, ...}; multi-hot labels switch the linear probe and fine-tuning to multi-label.
"""
from __future__ import annotations

import copy
import inspect
import math
import sys
import warnings
from contextlib import contextmanager, nullcontext
from typing import Callable

import numpy as np
import torch
from timm.layers import DropPath
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .encoders import LayerNorm
from .errors import ConfigError, DataError, TrainingError

PROTOCOLS = ("knn", "linear", "finetune")
POOLS = ("token", "avg")
PRECISIONS = ("fp32", "bf16")


# ---------------------------------------------------------------------------------------- small helpers
def default_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _positive(**values) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value!r}")


def _autocast(device: torch.device, precision: str):
    _choice("precision", precision, PRECISIONS)
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def _bar(iterable, desc: str, progress: bool | None):
    # Default: show a bar only when a person is watching the terminal.
    return tqdm(iterable, desc=desc, disable=not (sys.stderr.isatty() if progress is None else progress))


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch for a block and restore the caller's random state afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _lr_at(epoch: float, epochs: int, warmup_epochs: float, lr: float, min_lr: float) -> float:
    """MAE's schedule, per iteration: linear warmup, then a half-cycle cosine down to `min_lr`."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _as_labels(labels, where: str = "labels") -> torch.Tensor:
    """Class indices (N,) as int64, or multi-hot (N, C) as float32."""
    labels = torch.as_tensor(labels)
    if labels.ndim == 1:
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise DataError(f"{where}: expected integer class indices or multi-hot vectors, got fractional values")
        return labels.long()
    if labels.ndim == 2:
        if not torch.isin(labels, torch.tensor([0, 1], dtype=labels.dtype)).all():
            raise DataError(f"{where}: multi-hot labels must hold only 0 and 1")
        return labels.float()
    raise DataError(f"{where}: expected a class index or a multi-hot vector per sample, "
                    f"got shape {tuple(labels.shape)}")


def _collate(items: list) -> dict:
    """Stack only "image" and "label": other keys (paths, boxes) need not stack."""
    for item in items:
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            found = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise DataError(f"evaluation needs dataset items that are dicts with 'image' and 'label', got {found}")
    images = torch.stack([torch.as_tensor(item["image"]) for item in items])
    return {"image": images, "label": torch.stack([torch.as_tensor(item["label"]) for item in items])}


def _loader(data, batch_size: int, *, shuffle: bool = False, seed: int = 0, num_workers: int = 0) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise ConfigError(f"expected a torch Dataset or DataLoader, got {type(data).__name__}")
    if len(data) == 0:
        raise DataError("the evaluation dataset is empty")
    _positive(batch_size=batch_size)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, collate_fn=_collate)


def _batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
        raise DataError("evaluation needs batches that are dicts with 'image' and 'label'")
    return batch["image"], torch.as_tensor(batch["label"])


@torch.no_grad()
def _forward_all(fn: Callable, loader, device, precision, progress, desc) -> tuple[torch.Tensor, torch.Tensor]:
    outputs, labels = [], []
    for batch in _bar(loader, desc, progress):
        images, batch_labels = _batch(batch)
        with _autocast(device, precision):
            outputs.append(fn(images.to(device)).float().cpu())
        labels.append(batch_labels)
    if not outputs:
        raise DataError("the evaluation dataset is empty")
    return torch.cat(outputs), _as_labels(torch.cat(labels))


# ---------------------------------------------------------------------------------------- features, metrics
def extract_features(encoder: nn.Module, data, *, batch_size: int = 64, pool: str = "token",
                     precision: str = "fp32", device=None, num_workers: int = 0,
                     progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every image once in eval mode: (features (N, D) float32 on the CPU, labels (N,) or (N, C)).

    `pool` is "token" (class token) or "avg" (mean of patch tokens); the encoder's mode and device are
    restored afterwards.
    """
    _choice("pool", pool, POOLS)
    _choice("precision", precision, PRECISIONS)
    device = default_device(device)
    was_training = encoder.training
    home = next(encoder.parameters()).device
    encoder.eval().to(device)
    try:
        return _forward_all(lambda x: encoder.pool(encoder.forward_features(x), pool),
                            _loader(data, batch_size, num_workers=num_workers), device, precision, progress,
                            "features")
    finally:
        encoder.train(was_training).to(home)


def classification_metrics(scores, labels) -> dict:
    """Accuracy and balanced accuracy from class scores (N, C), or macro ROC-AUC for multi-hot labels (N, C)."""
    scores = torch.as_tensor(scores).float().cpu()
    labels = _as_labels(torch.as_tensor(labels).cpu())
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise DataError(f"expected scores shaped (N, classes) for {labels.shape[0]} labels, got {tuple(scores.shape)}")
    if labels.ndim == 2:
        return multilabel_metrics(scores, labels)
    from sklearn.metrics import balanced_accuracy_score

    predicted, true = scores.argmax(1).numpy(), labels.numpy()
    with warnings.catch_warnings():  # sklearn warns when a predicted class is absent from the labels
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(true, predicted)
    return {"accuracy": float((predicted == true).mean()), "balanced_accuracy": float(balanced),
            "num_samples": len(true)}


def multilabel_metrics(scores, labels) -> dict:
    """Macro ROC-AUC and average precision over the classes that have both label values in `labels`."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    # A class whose labels are all 0 (or all 1) has no ROC curve: skip it and say how many were skipped.
    used = [c for c in range(labels.shape[1]) if len(np.unique(labels[:, c])) == 2]
    auc = float(np.mean([roc_auc_score(labels[:, c], scores[:, c]) for c in used])) if used else None
    ap = float(np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in used])) if used else None
    return {"auc_macro": auc, "average_precision_macro": ap, "auc_classes_used": len(used),
            "auc_classes_skipped": labels.shape[1] - len(used), "num_samples": labels.shape[0]}


# ---------------------------------------------------------------------------------------- kNN
def _single_label_for_knn(labels) -> None:
    if torch.as_tensor(labels).ndim != 1:
        raise ConfigError("kNN evaluation supports single-label data only; for multi-hot labels use the "
                          "'linear' or 'finetune' protocol")


def _check_knn_options(k, temperature) -> None:
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if temperature is not None:
        _positive(temperature=temperature)


def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, *,
               k: int = 20, temperature: float | None = 0.07, num_classes: int | None = None,
               chunk_size: int = 1024) -> torch.Tensor:
    """Class votes (M, C) from the k most cosine-similar training samples, each weighing exp(similarity / T).

    Weighted kNN of InstDisc (Wu et al., 2018) as used by DINO (k=20, T=0.07); `temperature=None` gives
    plain majority votes.
    """
    _single_label_for_knn(train_labels)
    _check_knn_options(k, temperature)
    train_labels = _as_labels(train_labels)
    k = min(k, len(train_features))
    num_classes = num_classes or int(train_labels.max()) + 1
    train = nn.functional.normalize(train_features.float(), dim=1)
    scores = []
    for chunk in nn.functional.normalize(test_features.float(), dim=1).split(chunk_size):
        similarity, nearest = (chunk @ train.T).topk(k, dim=1)
        weights = torch.ones_like(similarity) if temperature is None else (similarity / temperature).exp()
        votes = torch.zeros(len(chunk), num_classes, dtype=weights.dtype, device=weights.device)
        scores.append(votes.scatter_add_(1, train_labels.to(nearest.device)[nearest], weights))
    return torch.cat(scores)


def knn_evaluate(encoder: nn.Module, train_set, test_set, *, k: int = 20, temperature: float | None = 0.07,
                 pool: str = "token", batch_size: int = 64, precision: str = "fp32", device=None,
                 num_workers: int = 0, progress: bool | None = None) -> dict:
    """Weighted kNN on frozen features (DINO protocol): accuracy and balanced accuracy on `test_set`."""
    _check_knn_options(k, temperature)  # before the costly feature extraction
    extract = dict(batch_size=batch_size, pool=pool, precision=precision, device=device,
                   num_workers=num_workers, progress=progress)
    train_x, train_y = extract_features(encoder, train_set, **extract)
    _single_label_for_knn(train_y)
    test_x, test_y = extract_features(encoder, test_set, **extract)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    scores = knn_scores(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=num_classes)
    return {"protocol": "knn", "k": min(k, len(train_x)), "temperature": temperature, "pool": pool,
            "num_train": len(train_x), **classification_metrics(scores, test_y)}


# ---------------------------------------------------------------------------------------- linear probe
def linear_probe_head(in_features: int, num_outputs: int) -> nn.Sequential:
    """MAE's linear-probe head: BatchNorm without affine parameters (eps 1e-6), then a Linear layer."""
    linear = nn.Linear(in_features, num_outputs)
    nn.init.trunc_normal_(linear.weight, std=0.01)  # MAE, following MoCo v3
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(in_features, affine=False, eps=1e-6), linear)


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int | None = None,
                     epochs: int = 90, base_lr: float = 0.1, lr: float | None = None, min_lr: float = 0.0,
                     batch_size: int = 256, warmup_epochs: float = 10, seed: int = 0, device=None,
                     progress: bool | None = None) -> nn.Sequential:
    """Train `linear_probe_head` on precomputed features with SGD (momentum 0.9, no weight decay).

    MAE trains this head with LARS at batch 16384; on the small data sets this toolkit meets, plain SGD
    with the same lr rule (lr = base_lr * batch_size / 256), warmup and cosine decay is the simpler choice.
    """
    _positive(epochs=epochs, batch_size=batch_size)
    labels = _as_labels(labels)
    if len(features) < 2:
        raise DataError(f"a linear probe needs at least 2 training samples, got {len(features)}")
    multilabel = labels.ndim == 2
    num_outputs = labels.shape[1] if multilabel else (num_classes or int(labels.max()) + 1)
    device = default_device(device)
    lr = base_lr * batch_size / 256 if lr is None else lr
    x, y = features.float().to(device), labels.to(device)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    order_rng = torch.Generator().manual_seed(seed)
    with _seeded(seed, device):
        head = linear_probe_head(x.shape[1], num_outputs).to(device)
        optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)  # MAE: no wd
        for epoch in _bar(range(epochs), "linear probe", progress):
            batches = torch.randperm(len(x), generator=order_rng).split(batch_size)
            if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on a single sample
                batches = batches[:-1]
            for i, index in enumerate(batches):
                _set_lr(optimizer, _lr_at(epoch + i / len(batches), epochs, warmup_epochs, lr, min_lr))
                loss = loss_fn(head(x[index.to(device)]), y[index.to(device)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return head.eval()


def _sklearn_probe(train_x, train_y, test_x, num_outputs: int, seed: int, max_iter: int) -> torch.Tensor:
    """Scores from a scikit-learn logistic regression on standardised features (one-vs-rest if multi-label)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x.numpy())
    classifier = LogisticRegression(max_iter=max_iter, random_state=seed)
    if train_y.ndim == 2:
        classifier = OneVsRestClassifier(classifier)
    with warnings.catch_warnings():  # one-vs-rest warns about classes that are constant in training
        warnings.simplefilter("ignore", UserWarning)
        classifier.fit(scaler.transform(train_x.numpy()), train_y.numpy())
        test = scaler.transform(test_x.numpy())
        if train_y.ndim == 2:
            return torch.as_tensor(classifier.decision_function(test)).float()
        scores = np.zeros((len(test), num_outputs))
        scores[:, classifier.classes_] = classifier.predict_proba(test)  # classes absent from training score 0
    return torch.as_tensor(scores).float()


def linear_probe(encoder: nn.Module, train_set, test_set, *, method: str = "sgd", epochs: int = 90,
                 base_lr: float = 0.1, lr: float | None = None, batch_size: int = 256,
                 warmup_epochs: float = 10, max_iter: int = 1000, pool: str = "token", precision: str = "fp32",
                 seed: int = 0, device=None, num_workers: int = 0, progress: bool | None = None) -> dict:
    """Linear probe on frozen features extracted once (MAE protocol, `method="sgd"`) or scikit-learn's
    logistic regression (`method="sklearn"`); the encoder is never changed."""
    _choice("method", method, ("sgd", "sklearn"))
    _positive(epochs=epochs, batch_size=batch_size, max_iter=max_iter)
    extract = dict(batch_size=batch_size, pool=pool, precision=precision, device=device,
                   num_workers=num_workers, progress=progress)
    train_x, train_y = extract_features(encoder, train_set, **extract)
    test_x, test_y = extract_features(encoder, test_set, **extract)
    if train_y.ndim != test_y.ndim or (train_y.ndim == 2 and train_y.shape[1] != test_y.shape[1]):
        raise DataError(f"train and test labels differ in kind: shapes {tuple(train_y.shape)} "
                        f"and {tuple(test_y.shape)}")
    num_outputs = train_y.shape[1] if train_y.ndim == 2 else int(max(train_y.max(), test_y.max())) + 1
    result = {"protocol": "linear", "method": method, "pool": pool, "num_train": len(train_x)}
    if method == "sklearn":
        scores = _sklearn_probe(train_x, train_y, test_x, num_outputs, seed, max_iter)
    else:
        head = fit_linear_probe(train_x, train_y, num_classes=num_outputs, epochs=epochs, base_lr=base_lr, lr=lr,
                                batch_size=batch_size, warmup_epochs=warmup_epochs, seed=seed, device=device,
                                progress=progress)
        with torch.no_grad():
            scores = head(test_x.to(next(head.parameters()).device)).float().cpu()
        result.update(epochs=epochs, lr=base_lr * batch_size / 256 if lr is None else lr)
    return {**result, **classification_metrics(scores, test_y)}


# ---------------------------------------------------------------------------------------- fine-tuning
def set_drop_path(encoder: nn.Module, rate: float) -> nn.Module:
    """Stochastic depth rising linearly from 0 (first block) to `rate` (last block), timm's rule; in place."""
    if not 0 <= rate < 1:
        raise ConfigError(f"drop_path must be in [0, 1), got {rate!r}")
    for block, p in zip(encoder.blocks, torch.linspace(0, rate, len(encoder.blocks)).tolist()):
        # timm builds an Identity when the rate is 0, so both slots are replaced, never edited.
        block.drop_path1 = DropPath(p) if p > 0 else nn.Identity()
        block.drop_path2 = DropPath(p) if p > 0 else nn.Identity()
    return encoder


class FineTuneModel(nn.Module):
    """A deep copy of a pretrained encoder with a classification head (MAE fine-tuning).

    pool="avg" (MAE's default): mean of patch tokens, then a LayerNorm (fc_norm, replacing the encoder's
    final norm) and a Linear head; pool="token": the normed class token and a Linear head.
    """

    def __init__(self, encoder: nn.Module, num_outputs: int, *, pool: str = "avg", drop_path: float = 0.1):
        super().__init__()
        _choice("pool", pool, POOLS)
        self.pool = pool
        self.encoder = set_drop_path(copy.deepcopy(encoder), drop_path)
        self.fc_norm = nn.Identity()
        if pool == "avg":
            self.encoder.norm = nn.Identity()
            self.fc_norm = LayerNorm(encoder.embed_dim)
        self.head = nn.Linear(encoder.embed_dim, num_outputs)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE fine-tuning's head init
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.encoder.pool(self.encoder.forward_features(images), self.pool)))

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}


def layer_id(name: str, depth: int) -> int:
    """BEiT/MAE layer of a parameter: 0 for patch embedding, class token and positions, i + 1 for block i,
    depth + 1 for everything after the blocks (norms, head)."""
    name = name.removeprefix("encoder.")
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_param_groups(model: FineTuneModel, *, lr: float, weight_decay: float = 0.05,
                             layer_decay: float = 0.75) -> list[dict]:
    """Optimizer parameter groups with layer-wise lr decay (BEiT; MAE fine-tuning).

    A parameter of layer l gets lr * layer_decay ** (depth + 1 - l) (stored as "lr_scale"); biases, norms,
    other 1-D parameters, the class token and positions get no weight decay.
    """
    if not 0 < layer_decay <= 1:
        raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
    depth = len(model.encoder.blocks)
    no_decay = model.no_weight_decay()
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:  # fixed sin-cos positions
            continue
        layer = layer_id(name, depth)
        decay = param.ndim > 1 and name not in no_decay
        scale = layer_decay ** (depth + 1 - layer)
        group = groups.setdefault((layer, decay), {
            "params": [], "names": [], "layer": layer, "lr_scale": scale, "lr": lr * scale,
            "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def _output_size(data, num_classes: int | None) -> tuple[int, bool]:
    """(number of outputs, multi-label?) from the first label, `num_classes`, `.classes` or one label pass."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if len(dataset) == 0:
        raise DataError("the training dataset is empty")
    first = torch.as_tensor(_collate([dataset[0]])["label"][0])
    if first.ndim == 1:
        if num_classes not in (None, first.numel()):
            raise ConfigError(f"num_classes={num_classes} but the multi-hot labels have {first.numel()} entries")
        return first.numel(), True
    if num_classes:
        return num_classes, False
    if getattr(dataset, "classes", None) is not None:
        return len(dataset.classes), False
    return int(max(int(dataset[i]["label"]) for i in range(len(dataset)))) + 1, False


def finetune(encoder: nn.Module, train_set, test_set, *, num_classes: int | None = None, epochs: int = 50,
             base_lr: float = 1e-3, lr: float | None = None, min_lr: float = 1e-6, batch_size: int = 64,
             warmup_epochs: float = 5, weight_decay: float = 0.05, layer_decay: float = 0.75,
             drop_path: float = 0.1, label_smoothing: float = 0.1, pool: str = "avg", precision: str = "fp32",
             seed: int = 0, device=None, num_workers: int = 0, progress: bool | None = None,
             return_model: bool = False) -> dict:
    """Fine-tune a copy of the encoder end to end (MAE recipe: AdamW, layer-wise lr decay, warmup + cosine,
    drop path, label smoothing) and score it on `test_set`; the given encoder is not modified."""
    _positive(epochs=epochs, batch_size=batch_size)
    device = default_device(device)
    num_outputs, multilabel = _output_size(train_set, num_classes)
    loader = _loader(train_set, batch_size, shuffle=True, seed=seed, num_workers=num_workers)
    lr = base_lr * batch_size / 256 if lr is None else lr  # MAE: absolute lr = base lr * batch / 256
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history = []
    with _seeded(seed, device):
        model = FineTuneModel(encoder, num_outputs, pool=pool, drop_path=drop_path).to(device)
        optimizer = torch.optim.AdamW(
            layer_decay_param_groups(model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay), lr=lr)
        for epoch in _bar(range(epochs), "fine-tune", progress):
            model.train()
            total, seen = 0.0, 0
            for i, batch in enumerate(loader):
                images, labels = _batch(batch)
                labels = _as_labels(labels, "training labels").to(device)
                _set_lr(optimizer, _lr_at(epoch + i / len(loader), epochs, warmup_epochs, lr, min_lr))
                with _autocast(device, precision):
                    logits = model(images.to(device))
                loss = loss_fn(logits.float(), labels)
                if not torch.isfinite(loss):
                    raise TrainingError(f"fine-tuning loss became {loss.item()} at epoch {epoch}; lower lr/base_lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, seen = total + loss.item() * len(images), seen + len(images)
            history.append(total / seen)
    model.eval()
    scores, test_labels = _forward_all(model, _loader(test_set, batch_size, num_workers=num_workers), device,
                                       precision, progress, "fine-tune test")
    result = {"protocol": "finetune", "pool": pool, "epochs": epochs, "lr": lr, "num_train": len(loader.dataset),
              "train_loss": history, **classification_metrics(scores, test_labels)}
    if return_model:
        result["model"] = model
    return result


# ---------------------------------------------------------------------------------------- entry point
_RUNNERS = {"knn": knn_evaluate, "linear": linear_probe, "finetune": finetune}


def evaluate(encoder: nn.Module, protocol: str, train_set, test_set, **options) -> dict:
    """Evaluate a pretrained encoder on a labelled train/test pair with one protocol; returns a JSON-able dict.

    Datasets (or DataLoaders) yield dicts {"image": tensor, "label": int or multi-hot float tensor}.
    Options shared by all protocols: pool ("token"; "avg" for finetune), batch_size, precision ("fp32" or
    "bf16" autocast), device (CUDA if available, else CPU), num_workers (0), progress (tqdm bar; default:
    only on a terminal).

    - "knn" (DINO): k=20, temperature=0.07 (None: majority vote), batch_size=64.
      Single-label only. Reports accuracy, balanced_accuracy.
    - "linear" (MAE, features extracted once): method="sgd" (BatchNorm + Linear head, SGD momentum 0.9,
      no weight decay) or "sklearn" (logistic regression, max_iter=1000); epochs=90, base_lr=0.1 or an
      absolute lr (default base_lr * batch_size / 256), batch_size=256, warmup_epochs=10, seed=0.
    - "finetune" (MAE): epochs=50, base_lr=1e-3 or lr, min_lr=1e-6, batch_size=64, warmup_epochs=5,
      weight_decay=0.05, layer_decay=0.75, drop_path=0.1, label_smoothing=0.1, pool="avg", seed=0,
      num_classes (default: from the labels), return_model=False (True adds the fine-tuned "model").

    Multi-hot labels: linear and finetune train with BCE-with-logits and report auc_macro (classes with a
    single label value skipped, counted in auc_classes_skipped) and average_precision_macro.
    """
    if protocol not in _RUNNERS:
        raise ConfigError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if not isinstance(encoder, nn.Module) or not hasattr(encoder, "forward_features"):
        raise ConfigError(f"encoder must be a mimkit ViTEncoder, got {type(encoder).__name__}")
    run = _RUNNERS[protocol]
    allowed = list(inspect.signature(run).parameters)[3:]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"option(s) {', '.join(unknown)} do not apply to protocol {protocol!r}; "
                          f"it takes {', '.join(allowed)}")
    return run(encoder, train_set, test_set, **options)
