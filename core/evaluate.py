"""Evaluation protocols for a pretrained `ViTEncoder`: weighted kNN, linear probe, full fine-tuning.

kNN follows DINO (Caron et al., 2021) and InstDisc (Wu et al., 2018); the linear probe and fine-tuning
follow the MAE paper's code (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners"),
including BEiT's layer-wise learning-rate decay, and train through core.finetune's FineTuneModule on the
Lightning Trainer (these functions keep the simple signatures; `core.finetune.finetune` adds the validation
split, checkpoints, resume, loggers and devices). Datasets yield dicts {"image": tensor, "label": int or
multi-hot float tensor, ...}; multi-hot labels switch the linear probe and fine-tuning to multi-label.
"""
from __future__ import annotations

import inspect
import sys
import warnings
from contextlib import nullcontext
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .errors import ConfigError, DataError
from .finetune import as_labels, classification_metrics, device_settings, epoch_means
from .finetune import finetune as finetune_run

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
    return torch.cat(outputs), as_labels(torch.cat(labels))


# ---------------------------------------------------------------------------------------- features
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


class FeatureCache:
    """Features of (encoder, data set, pool, precision, device), encoded once and reused: kNN and the linear
    probe of one encoder share them (`evaluate_encoders` passes one cache to both). The encoders must not change
    while the cache is in use."""

    def __init__(self):
        self._store: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.encoded = 0  # data sets actually encoded (the rest came from the cache)

    def features(self, encoder: nn.Module, data, **extract) -> tuple[torch.Tensor, torch.Tensor]:
        """`extract_features(encoder, data, **extract)`, computed on the first call only."""
        key = (id(encoder), id(data), extract.get("pool", "token"), extract.get("precision", "fp32"),
               str(default_device(extract.get("device"))))
        if key not in self._store:
            self._store[key] = extract_features(encoder, data, **extract)
            self.encoded += 1
        return self._store[key]


def _encode_pair(encoder, train_set, test_set, cache: FeatureCache | None, **extract):
    """(train features, train labels, test features, test labels), through `cache` when given."""
    encode = cache.features if cache is not None else extract_features
    return (*encode(encoder, train_set, **extract), *encode(encoder, test_set, **extract))


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
    train_labels = as_labels(train_labels)
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
                 num_workers: int = 0, progress: bool | None = None, features: FeatureCache | None = None) -> dict:
    """Weighted kNN on frozen features (DINO protocol): accuracy and balanced accuracy on `test_set`; `features`
    shares encoded features with other protocols."""
    _check_knn_options(k, temperature)  # before the costly feature extraction
    extract = dict(batch_size=batch_size, pool=pool, precision=precision, device=device,
                   num_workers=num_workers, progress=progress)
    train_x, train_y, test_x, test_y = _encode_pair(encoder, train_set, test_set, features, **extract)
    _single_label_for_knn(train_y)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    scores = knn_scores(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=num_classes)
    return {"protocol": "knn", "k": min(k, len(train_x)), "temperature": temperature, "pool": pool,
            "num_train": len(train_x), **classification_metrics(scores, test_y)}


# ---------------------------------------------------------------------------------------- linear probe
def _trainer_settings(batch_size: int, precision: str, seed: int, device, num_workers: int,
                      progress: bool | None) -> dict:
    """The FineTuneConfig settings these protocols share, from their arguments."""
    _choice("precision", precision, PRECISIONS)
    return dict(batch_size=batch_size, precision="bf16-mixed" if precision == "bf16" else "32", seed=seed,
                num_workers=num_workers, progress=sys.stderr.isatty() if progress is None else progress,
                **device_settings(device))


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int | None = None,
                     epochs: int = 90, base_lr: float = 0.1, lr: float | None = None, min_lr: float = 0.0,
                     batch_size: int = 256, warmup_epochs: float = 10, seed: int = 0, device=None,
                     progress: bool | None = None) -> nn.Module:
    """Train MAE's linear-probe head ("bn_linear": BatchNorm without affine, Linear) on precomputed features with
    SGD (momentum 0.9, no weight decay) through FineTuneModule; returns the head in eval mode.

    MAE trains this head with LARS at batch 16384; on the small data sets this toolkit meets, plain SGD
    with the same lr rule (lr = base_lr * batch_size / 256), warmup and cosine decay is the simpler choice.
    """
    _positive(epochs=epochs, batch_size=batch_size)
    labels = as_labels(labels)
    if len(features) < 2:
        raise DataError(f"a linear probe needs at least 2 training samples, got {len(features)}")
    num_outputs = labels.shape[1] if labels.ndim == 2 else (num_classes or int(labels.max()) + 1)
    items = [{"features": x, "label": y} for x, y in zip(features.float(), labels)]
    row = finetune_run(None, items, head="bn_linear", num_outputs=num_outputs, val_fraction=0, return_model=True,
                       **_probe_settings(epochs, base_lr, lr, min_lr, warmup_epochs),
                       **_trainer_settings(batch_size, "fp32", seed, device, 0, progress))
    return row["model"].head


def _probe_settings(epochs, base_lr, lr, min_lr, warmup_epochs) -> dict:
    # MAE's linear probe: no weight decay, no layer decay, no drop path, no label smoothing
    return dict(freeze_encoder=True, optimizer="sgd", momentum=0.9, weight_decay=0.0, layer_decay=1.0,
                drop_path=0.0, label_smoothing=0.0, epochs=epochs, base_lr=base_lr, lr=lr, min_lr=min_lr,
                warmup_epochs=warmup_epochs)


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
                 seed: int = 0, device=None, num_workers: int = 0, progress: bool | None = None,
                 features: FeatureCache | None = None) -> dict:
    """Linear probe on frozen features encoded once, train and test split (MAE protocol, `method="sgd"`:
    FineTuneModule with the "bn_linear" head; or scikit-learn's logistic regression, `method="sklearn"`); the
    encoder is never changed; `features` shares encoded features with other protocols."""
    _choice("method", method, ("sgd", "sklearn"))
    _choice("pool", pool, POOLS)
    _positive(epochs=epochs, batch_size=batch_size, max_iter=max_iter)
    result = {"protocol": "linear", "method": method, "pool": pool}
    extract = dict(batch_size=batch_size, pool=pool, precision=precision, device=device,
                   num_workers=num_workers, progress=progress)
    train_x, train_y, test_x, test_y = _encode_pair(encoder, train_set, test_set, features, **extract)
    if train_y.ndim != test_y.ndim or (train_y.ndim == 2 and train_y.shape[1] != test_y.shape[1]):
        raise DataError(f"train and test labels differ in kind: shapes {tuple(train_y.shape)} "
                        f"and {tuple(test_y.shape)}")
    num_outputs = train_y.shape[1] if train_y.ndim == 2 else int(max(train_y.max(), test_y.max())) + 1
    if method == "sgd":
        # the head trains on the features (in fp32: they are stored so), as on the frozen encoder's outputs
        train_items = [{"features": x, "label": y} for x, y in zip(train_x, train_y)]
        test_items = [{"features": x, "label": y} for x, y in zip(test_x, test_y)]
        row = finetune_run(None, train_items, test_items, head="bn_linear", num_outputs=num_outputs, val_fraction=0,
                           **_probe_settings(epochs, base_lr, lr, 0.0, warmup_epochs),
                           **_trainer_settings(batch_size, "fp32", seed, device, 0, progress))
        return {**result, "num_train": row["num_train"], "epochs": epochs, "lr": row["learning_rate"],
                **row["test"]}
    scores = _sklearn_probe(train_x, train_y, test_x, num_outputs, seed, max_iter)
    return {**result, "num_train": len(train_x), **classification_metrics(scores, test_y)}


# ---------------------------------------------------------------------------------------- fine-tuning
def finetune(encoder: nn.Module, train_set, test_set, *, num_classes: int | None = None, epochs: int = 50,
             base_lr: float = 1e-3, lr: float | None = None, min_lr: float = 1e-6, batch_size: int = 64,
             warmup_epochs: float = 5, weight_decay: float = 0.05, layer_decay: float = 0.75,
             drop_path: float = 0.1, label_smoothing: float = 0.1, pool: str = "avg", precision: str = "fp32",
             seed: int = 0, device=None, num_workers: int = 0, progress: bool | None = None,
             return_model: bool = False, mixup: float = 0.0, cutmix: float = 0.0, rand_augment: str | None = None,
             random_erasing: float = 0.0, val_fraction: float = 0.0) -> dict:
    """Fine-tune a copy of the encoder end to end with MAE's recipe (core.finetune: AdamW, layer-wise lr decay,
    warmup + cosine, drop path, label smoothing; mixup/cutmix, RandAugment, random erasing when asked) and score it
    on `test_set`; the given encoder is not modified. `val_fraction` > 0 keeps the best validation checkpoint."""
    _positive(epochs=epochs, batch_size=batch_size)
    _choice("pool", pool, POOLS)
    row = finetune_run(encoder, train_set, test_set, head="linear", head_options={"pool": pool},
                       num_outputs=num_classes, val_fraction=val_fraction, return_model=return_model,
                       epochs=epochs, base_lr=base_lr, lr=lr, min_lr=min_lr, warmup_epochs=warmup_epochs,
                       weight_decay=weight_decay, layer_decay=layer_decay, drop_path=drop_path,
                       label_smoothing=label_smoothing, mixup=mixup, cutmix=cutmix, rand_augment=rand_augment,
                       random_erasing=random_erasing,
                       **_trainer_settings(batch_size, precision, seed, device, num_workers, progress))
    result = {"protocol": "finetune", "pool": pool, "epochs": epochs, "lr": row["learning_rate"],
              "num_train": row["num_train"], "train_loss": epoch_means(row), **row["test"]}
    if return_model:
        result["model"] = row["model"]
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
      num_classes (default: from the labels), return_model=False (True adds the fine-tuned "model");
      MAE's augmentations when asked: mixup=0.8, cutmix=1.0, rand_augment="rand-m9-mstd0.5-inc1",
      random_erasing=0.25; val_fraction > 0 scores the best checkpoint on a held-out validation split.

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


def evaluate_encoders(encoders: dict, protocols: Sequence[str], train_set, test_set, options: dict,
                      finetune_set=None) -> list[dict]:
    """Run each protocol on each encoder (e.g. pretrained and random init); rows for metrics.json."""
    rows, cache = [], FeatureCache()  # kNN and the linear probe of one encoder share its features
    for protocol in protocols:
        for init, encoder in encoders.items():
            train = finetune_set if (protocol == "finetune" and finetune_set is not None) else train_set
            shared = {"features": cache} if protocol in ("knn", "linear") else {}
            result = evaluate(encoder, protocol, train, test_set, **options.get(protocol, {}), **shared)
            for metric in ("accuracy", "balanced_accuracy", "auc_macro"):
                if result.get(metric) is not None:  # in percent, as papers (and the published registry) print them
                    rows.append({"protocol": protocol, "init": init, "metric": metric,
                                 "value": round(100 * float(result[metric]), 2), "num_train": len(train)})
    return rows


