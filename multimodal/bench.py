"""Multimodal benchmark tasks, registered with mimkit.benchmarks on import and run by
`mimkit.benchmarks.runner.run_task`.

Image + table classification with complete and incomplete tables, TIP's downstream evaluation: the training,
validation-free and test tables lose cells by one of TIP's missing patterns (random values, random features, the
most or least important features by a random forest's importance on the training table) at a rate of 0, 0.3, 0.6
or 0.9, and a linear head on the interaction module's CLS (or, for the image-only and table-only models, on the
image vector or the tabular CLS) is trained with the backbone frozen (TIP's default) or trainable; accuracy and
macro one-vs-rest ROC-AUC (percent) on the test split. Missing cells are hidden by the tabular encoder's mask token,
as TIP's code does.

Tasks: `image-table-<pattern>-<rate>` (and `image-table-complete`) read a local ROOT with train.csv / test.csv (or
.parquet) holding an image-path column and a target column (reader options image_column, target);
`synthetic-digits-table-*` read what `mimkit-multimodal synthetic --kind digits` writes, `synthetic-digits-outcome-*`
the demo's digits whose target needs the table's arm (`synthetic.write_digits(outcome=True)`). Image-text
retrieval (retrieval.py) and M3AE's VQA and caption classification (vqa.py) are registered here too.
"""
from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.benchmarks.tasks import Task, register_task
from mimkit.core.errors import ConfigError, DataError
from mimkit.multimodal import published  # noqa: F401  (registers the multimodal papers' published figures)

from .classifiers import HEAD_FILE, TABLE, classifier_kind, is_classifier, load_head, save_classifier_folder
from .data import MISSING_PATTERNS, ImageTableDataset, feature_importance, missing_mask
from .retrieval import retrieval_tasks
from .tables import TablePreprocessor
from .vqa import fit_steps, vision_language_tasks

MISSING_RATES = (0.3, 0.6, 0.9)
INPUTS = ("multimodal", "image", "table", "ensemble")
STRATEGIES = ("frozen", "trainable")


# ============================================================================================ the classifier
class EnsembleHead(nn.Module):
    """The official TIPBackboneEnsemble's heads: one linear classifier each on the image vector, the tabular CLS and
    the multimodal CLS (the slices of TIP's `ensemble` embedding), their logits averaged."""

    def __init__(self, dims: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        self.image, self.table, self.multimodal = (nn.Linear(d, num_classes) for d in self.dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, table, multimodal = x.split(self.dims, dim=-1)
        return (self.image(image) + self.table(table) + self.multimodal(multimodal)) / 3


class TableImageClassifier(nn.Module):
    """A TIP backbone (copied) with a linear head on one vector per sample: the interaction module's CLS
    (`multimodal`, TIP's default), the image vector (`image`), the tabular CLS (`table`), or three heads on the three
    with their logits averaged (`ensemble`, TIP's finetune_ensemble option)."""

    def __init__(self, method: nn.Module, num_classes: int, inputs: str = "multimodal", frozen: bool = False):
        super().__init__()
        if inputs not in INPUTS:
            raise ConfigError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
        if not hasattr(method, "embed_dims"):
            raise ConfigError(f"image + table classification needs a tip model, got "
                              f"{getattr(method, 'method_name', type(method).__name__)!r}")
        self.backbone, self.inputs, self.frozen = copy.deepcopy(method), inputs, frozen
        dims = self.backbone.embed_dims
        self.head = EnsembleHead((dims["image"], dims["table"], dims["multimodal"]), num_classes) \
            if inputs == "ensemble" else nn.Linear(dims[inputs], num_classes)
        if frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # a frozen backbone keeps its batch norms and dropout as they are
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        if "features" in batch:  # a frozen backbone's vectors, computed once
            return self.head(batch["features"])
        return self.head(self.backbone.embed(batch, self.inputs))

    @torch.no_grad()
    def features(self, dataset, batch_size: int = 128, device=None) -> "FeatureSet":
        """The frozen backbone's vectors of a dataset (in order) with its labels, to train the head on."""
        from mimkit.core.data import make_loader
        from mimkit.core.evaluate import default_device

        device = default_device(device)
        backbone = self.backbone.to(device).eval()
        vectors, labels = [], []
        for batch in make_loader(dataset, batch_size):
            vectors.append(backbone.embed({k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)},
                                          self.inputs).float().cpu())
            labels.append(batch["label"])
        return FeatureSet(torch.cat(vectors), torch.cat(labels))


class FeatureSet(torch.utils.data.Dataset):
    """Precomputed vectors with their labels: {"features", "label"}."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels
        self.targets = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key) -> dict:
        index = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        return {"features": self.features[index], "label": int(self.labels[index])}


class ClassifierModule(L.LightningModule):
    """Trains a TableImageClassifier with cross-entropy, AdamW and a warmup-cosine schedule."""

    def __init__(self, model: TableImageClassifier, lr: float, weight_decay: float, max_steps: int, seed: int):
        super().__init__()
        self.model, self.lr, self.weight_decay, self.max_steps, self.seed = model, lr, weight_decay, max_steps, seed
        self.losses: list[float] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        from mimkit.core.train import step_seed

        torch.manual_seed(step_seed(self.seed, self.global_step, self.global_rank))
        loss = F.cross_entropy(self.model(batch), batch["label"])
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch["label"]))
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        from mimkit.core.train import adamw, parameter_groups, warmup_cosine

        optimizer = adamw(parameter_groups(self.model, self.weight_decay), lr=self.lr, betas=(0.9, 0.999))
        warmup = max(1, self.max_steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, self.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def macro_auc(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC-AUC over the classes with both positive and negative test samples (None: none)."""
    from sklearn.metrics import roc_auc_score

    scores = [roc_auc_score(labels == c, probabilities[:, c]) for c in range(probabilities.shape[1])
              if 0 < (labels == c).sum() < len(labels)]
    return float(np.mean(scores)) if scores else None


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 128, device=None) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (N, C), labels (N,)) of a dataset, in order."""
    from mimkit.core.data import make_loader
    from mimkit.core.evaluate import default_device

    device = default_device(device)
    model = model.to(device).eval()
    probabilities, labels = [], []
    for batch in make_loader(dataset, batch_size):
        inputs = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        probabilities.append(model(inputs).float().softmax(-1).cpu())
        labels.append(batch["label"])
    return torch.cat(probabilities).numpy(), torch.cat(labels).numpy()


def fit_classifier(method: nn.Module, train_set, test_set, *, inputs: str = "multimodal",
                   strategy: str = "frozen", max_steps: int = 300, batch_size: int = 64, lr: float = 1e-4,
                   weight_decay: float = 0.0, seed: int = 0, device=None, progress: bool | None = None,
                   keep_model: bool = False) -> dict:
    """Train a linear head (and the backbone unless frozen) on `train_set`, score the last weights on `test_set`:
    {"accuracy", "auc", "balanced_accuracy", "steps", ...} as fractions; `keep_model` adds the trained
    TableImageClassifier ("model") and the test probabilities ("probabilities")."""
    from mimkit.core.evaluate import default_device
    from mimkit.core.finetune import classification_metrics

    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be frozen (TIP's default) or trainable, got {strategy!r}")
    classes = len(getattr(train_set, "classes", ()) or ()) or int(max(train_set.targets)) + 1
    device = default_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TableImageClassifier(method, classes, inputs, frozen=strategy == "frozen")
    if strategy == "frozen":  # the backbone never changes: its vectors are computed once
        train_set, test_set = model.features(train_set, device=device), model.features(test_set, device=device)
    module = ClassifierModule(model, lr, weight_decay, max_steps, seed)
    steps = fit_steps(module, train_set, max_steps, batch_size, seed, device, progress)
    probabilities, labels = predict(model, test_set, device=device)
    result = classification_metrics(torch.from_numpy(probabilities), torch.from_numpy(labels))
    result.update(auc=macro_auc(probabilities, labels), steps=steps,
                  final_train_loss=float(np.mean(module.losses[-10:])) if module.losses else None)
    if keep_model:
        result.update(model=model.cpu().eval(), probabilities=probabilities)
    return result


# ============================================================================================ saved classifiers
def save_classifier(model: TableImageClassifier, folder: str | Path, train_set: ImageTableDataset, record: dict,
                    probabilities: np.ndarray | None = None, labels=None) -> Path:
    """A trained classifier as a folder that `load_run` / `load_classifier` read (classifiers.py): the backbone as
    trained, the head, config.yaml (method, model, the table preprocessing with the target's classes, image column
    and statistics, and `classifier`: `record`) and, given the test probabilities, predictions.csv."""
    origin = getattr(train_set, "run_settings", None) or {}
    mean, std = train_set.stats
    classes = list(train_set.classes)
    data = {"preprocessing": train_set.preprocessor.to_dict(), "target": train_set.preprocessor.target,
            "image_column": origin.get("image_column", "image"), "mean": mean, "std": std}
    predictions = None
    if probabilities is not None:
        rows = ([i, classes[int(label)], classes[int(np.argmax(p))], *(f"{v:.6g}" for v in p)]
                for i, (p, label) in enumerate(zip(probabilities, labels)))
        predictions = (["row", "label", "predicted", *(f"p_{c}" for c in classes)], rows)
    return save_classifier_folder(model.backbone, model.head, folder, origin, data,
                                  {"kind": TABLE, "inputs": model.inputs, "classes": classes, **record}, predictions)


def load_classifier(folder: str | Path) -> tuple[TableImageClassifier, dict]:
    """(the TableImageClassifier, the folder's config.yaml) of a classifier saved by `save_classifier`."""
    from mimkit.core.runs import load_run

    if not is_classifier(folder):
        raise ConfigError(f"{folder} holds no saved classifier ({HEAD_FILE}): give a folder that "
                          f"`mimkit-multimodal finetune` wrote under OUT/classifiers/")
    kind = classifier_kind(folder)
    if kind != TABLE:
        raise ConfigError(f"{folder} holds a {kind} classifier, not an image + table one "
                          f"(mimkit.multimodal.vqa.load_vision_language_classifier reads it)")
    method, config = load_run(folder)
    info = config.get("classifier") or {}
    if not info.get("classes") or info.get("inputs") not in INPUTS:
        raise ConfigError(f"{folder}/config.yaml: the classifier section needs classes and inputs (one of "
                          f"{', '.join(INPUTS)}); found {sorted(info)}")
    model = TableImageClassifier(method, len(info["classes"]), info["inputs"])
    load_head(model.head, folder)
    return model.eval(), config


def score_classifier(folder: str | Path, root: str | Path, pattern: str | None = None, rate: float | None = None,
                     seed: int | None = None, batch_size: int = 128, device=None) -> dict:
    """Score a saved classifier, as it is (no training), on ROOT's test split with the missing pattern and rate it
    was trained with (or those given): the same cells go missing as in its training run for the same seed.
    {"accuracy", "auc", ..., "probabilities", "labels"}."""
    from mimkit.core.finetune import classification_metrics

    model, config = load_classifier(folder)
    info, data = config["classifier"], config.get("data") or {}
    pattern = pattern or info.get("pattern", "value")
    rate = info.get("rate", 0.0) if rate is None else rate
    seed = info.get("seed", 0) if seed is None else seed
    fitted = TablePreprocessor.from_dict(data["preprocessing"])
    common = dict(image_column=data.get("image_column", "image"), preprocessor=fitted,
                  img_size=fit_run(model.backbone.encoder, config)["img_size"],
                  in_chans=getattr(model.backbone.encoder, "in_chans", None), transform="eval", labelled=True,
                  mean=data.get("mean"), std=data.get("std"))
    root = Path(root)
    train = ImageTableDataset(_split_file(root, "train"), **common)
    test = ImageTableDataset(_split_file(root, "test"), **common)
    _, test, _ = apply_missing(train, test, pattern, float(rate), seed)
    probabilities, labels = predict(model, test, batch_size, device)
    result = classification_metrics(torch.from_numpy(probabilities), torch.from_numpy(labels))
    return {**result, "auc": macro_auc(probabilities, labels), "missing_pattern": pattern, "missing_rate": rate,
            "probabilities": probabilities, "labels": labels, "num_test": len(test)}


# ============================================================================================ missing data
def apply_missing(train_set: ImageTableDataset, test_set: ImageTableDataset, pattern: str, rate: float,
                  seed: int = 0) -> tuple[ImageTableDataset, ImageTableDataset, dict]:
    """Both splits with TIP's missing pattern added: random values drawn per split (seeds seed and seed + 1),
    random features the same columns in both, important features ranked on the training table."""
    if rate == 0:
        return train_set, test_set, {}
    importance = None
    if pattern in ("most_important", "least_important"):
        importance = feature_importance(train_set.values.numpy(), train_set.missing.numpy(), train_set.targets, seed)
    shape = lambda d: tuple(d.missing.shape)  # noqa: E731
    test_seed = seed + 1 if pattern == "value" else seed
    train_mask = missing_mask(shape(train_set), pattern, rate, seed, importance)
    test_mask = missing_mask(shape(test_set), pattern, rate, test_seed, importance)
    info = {"hidden_columns": [train_set.preprocessor.names[j] for j in np.flatnonzero(train_mask.all(0))]} \
        if pattern != "value" else {}
    return train_set.with_missing(train_mask), test_set.with_missing(test_mask), info


def classification_runner(subject: nn.Module, train_set, test_set, root: Path, pattern: str = "value",
                          rate: float = 0.0, inputs: str = "multimodal", strategy: str = "frozen",
                          max_steps: int = 300, batch_size: int = 64, lr: float = 1e-4, weight_decay: float = 0.0,
                          seed: int = 0, device=None, save_dir: str | None = None) -> dict:
    """The image + table tasks' protocol: the missing pattern on both splits, then `fit_classifier` (defaults:
    TIP's evaluation, a frozen backbone with a linear head, lr 1e-4, no weight decay); with `save_dir` the trained
    classifier is kept there (`save_classifier`)."""
    train, test, info = apply_missing(train_set, test_set, pattern, rate, seed)
    result = fit_classifier(subject, train, test, inputs=inputs, strategy=strategy, max_steps=max_steps,
                            batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, device=device,
                            keep_model=save_dir is not None)
    if save_dir is not None:
        labels = np.asarray(test.targets)
        record = {"pattern": pattern, "rate": rate, "strategy": strategy, "seed": seed, "steps": result["steps"],
                  "accuracy": result["accuracy"], "auc": result["auc"]}
        save_classifier(result.pop("model"), save_dir, train, record, result.pop("probabilities"), labels)
    return {**result, **info, "missing_pattern": pattern, "missing_rate": rate,
            "missing_cells_test": float(test.missing.float().mean() if test.extra_missing is None
                                        else (test.missing | test.extra_missing).float().mean())}


# ============================================================================================ reading
def _split_file(root: Path, split: str) -> Path:
    for suffix in (".csv", ".parquet", ".tsv", ".jsonl"):
        if (root / f"{split}{suffix}").is_file():
            return root / f"{split}{suffix}"
    raise DataError(f"{root}: no {split}.csv (or .parquet, .tsv, .jsonl) with an image column and a target column")


def table_reader(default_target: str | None = None):
    """A task reader: read(root, target, image_column, img_size, in_chans, preprocessing, mean, std) -> (train,
    test) ImageTableDatasets; the pretraining run's preprocessing (vocabularies, scalers) is applied unchanged,
    the target's classes are read from the training split."""

    def read(root: Path, target: str | None = default_target, image_column: str = "image", img_size=32,
             in_chans: int | None = None, preprocessing: dict | None = None, mean=None, std=None,
             image_root: str | None = None, strict: bool = False,
             run_settings: dict | None = None) -> tuple[ImageTableDataset, ImageTableDataset]:
        if target is None:
            raise ConfigError("image + table tasks need the target column: --target NAME")
        from .tables import read_table, target_classes

        train_file, test_file = _split_file(root, "train"), _split_file(root, "test")
        frame = read_table(train_file)
        if target not in frame.columns:
            raise ConfigError(f"{train_file}: no target column {target!r}; columns: "
                              f"{', '.join(map(str, frame.columns))}")
        fitted = (TablePreprocessor.from_dict(preprocessing) if preprocessing else
                  TablePreprocessor.fit(frame, target=target, exclude=[image_column]))
        fitted = TablePreprocessor(fitted.columns, target, target_classes(frame[target]))
        common = dict(image_column=image_column, image_root=image_root, preprocessor=fitted, img_size=img_size,
                      in_chans=in_chans, transform="eval", strict=strict, labelled=True)
        train = ImageTableDataset(train_file, mean=mean, std=std, **common)
        mean, std = train.stats
        test = ImageTableDataset(test_file, mean=mean, std=std, **{**common, "in_chans": train.in_chans})
        train.run_settings = {**(run_settings or {}), "image_column": image_column}  # what a saved classifier records
        return train, test
    return read


def fit_run(encoder: nn.Module, run_config: dict | None) -> dict:
    """A task's `prepare`: the images at the run's size and channels, its table preprocessing and image stats."""
    from mimkit.core.config import encoder_setting

    run_config = dict(run_config or {})
    model, data = dict(run_config.get("model") or {}), dict(run_config.get("data") or {})
    method = run_config.get("method") or "tip"
    size = getattr(encoder, "img_size", None) or (encoder_setting(model, "img_size", method) if model else None)
    chans = getattr(encoder, "in_chans", None) or (encoder_setting(model, "in_chans", method) if model else None)
    options = {"img_size": tuple(size) if isinstance(size, (list, tuple)) else (size or 32), "in_chans": chans}
    for key in ("preprocessing", "image_column", "mean", "std"):
        if data.get(key) is not None:
            options[key] = data[key]
    return options


def fit_table_run(encoder: nn.Module, run_config: dict | None) -> dict:
    """The image + table tasks' `prepare`: `fit_run`'s options and the run's method and model (`run_settings`), so a
    trained classifier can be saved as a run of its own."""
    run_config = dict(run_config or {})
    settings = {"method": run_config.get("method"), "model": run_config.get("model")}
    return {**fit_run(encoder, run_config), "run_settings": settings}


def _tasks(prefix: str, dataset: str, description: str, target: str | None, settings: dict) -> list[Task]:
    reader = table_reader(target)
    conditions = [("value", 0.0)] + [(p, r) for p in MISSING_PATTERNS for r in MISSING_RATES]
    tasks = []
    for pattern, rate in conditions:
        name = f"{prefix}-complete" if rate == 0 else f"{prefix}-{pattern.replace('_', '-')}-{rate}"
        what = "complete tables" if rate == 0 else f"{pattern.replace('_', ' ')} missing at rate {rate}"
        tasks.append(Task(name, "multimodal", dataset, "finetune", "accuracy", reader, f"{description}; {what}",
                          runner=classification_runner, prepare=fit_table_run, metric_key="accuracy",
                          settings={**settings, "pattern": pattern, "rate": rate}))
    return tasks


TASKS = [
    *_tasks("image-table", "image + table (local)",
            "Image + table classification, TIP's evaluation (frozen backbone, linear head on the multimodal CLS), "
            "accuracy (%) and macro AUC; ROOT holds train.csv and test.csv with an image-path column (image_column) "
            "and the target column (target)", None, {}),
    # the project's own data (`mimkit-multimodal synthetic --kind digits`): for tests and the demo; a CPU-sized
    # protocol of ours (end-to-end fine-tuning, lr 1e-3, 300 steps)
    *_tasks("synthetic-digits-table", "mimkit synthetic digits + table",
            "scikit-learn's digits at 32x32 with a measured table (20% of cells missing), 10 classes", "digit",
            {"strategy": "trainable", "lr": 1e-3, "weight_decay": 0.05, "max_steps": 300}),
    # the same digits with a trial arm the image lacks; the target depends on digit and arm (TIP's point; the demo)
    *_tasks("synthetic-digits-outcome", "mimkit synthetic digits + table (outcome)",
            "scikit-learn's digits at 32x32 with a measured table and a random arm A / B (20% of cells missing); "
            "target: the digit in arm A, the digit + 5 (mod 10) in arm B", "outcome",
            {"strategy": "trainable", "lr": 1e-3, "weight_decay": 0.05, "max_steps": 300}),
]
TASKS += retrieval_tasks(fit_run)  # image-text retrieval, recall@1/5/10 (multimodal/retrieval.py)
TASKS += vision_language_tasks(fit_run)  # M3AE's VQA and caption classification heads (multimodal/vqa.py)
for _task in TASKS:
    register_task(_task)


__all__ = ["TableImageClassifier", "ClassifierModule", "fit_classifier", "classification_runner", "apply_missing",
           "macro_auc", "predict", "FeatureSet", "table_reader", "fit_run", "fit_table_run", "save_classifier",
           "load_classifier", "score_classifier", "is_classifier", "TASKS", "MISSING_RATES", "INPUTS",
           "STRATEGIES"]
