"""The `mimkit-multimodal` command: pretrain, evaluate, finetune, embed, recipes, synthetic, demo.

The core's configuration system (core.config) with multimodal data underneath: `pretrain` is the core's command
reading an image + table file through `ImageTableData` (the fitted table preprocessing is kept in the run's
config.yaml and in RUN/tabular.json); `evaluate` and `finetune` run the image + table benchmark tasks (complete
and incomplete tables) through mimkit.benchmarks' runner; `embed` writes image, table or multimodal embeddings.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Literal, Sequence

from mimkit.core import api
from mimkit.core.cli import pretrain_command, recipes_command
from mimkit.core.config import Command, Tool
from mimkit.core.errors import ConfigError

from .data import ImageTableData
from .text_data import TEXT_METHODS, ImageTextData

TABLE_FLAGS = ("image_column", "image_root", "target", "features", "exclude", "categorical", "continuous")


# ------------------------------------------------------------------------------------------ pretrain
@functools.wraps(api.pretrain)
def pretrain(*args, **kwargs) -> dict:
    kwargs.update(zip(("data", "out"), args))
    data = kwargs["data"]
    if isinstance(data, (str, Path)):
        kwargs["data"] = data = _data_for(kwargs.get("method"))(root=str(data))
    summary = api.pretrain(**kwargs)
    if getattr(data, "preprocessing", None):
        from .tables import TablePreprocessor

        path = TablePreprocessor.from_dict(data.preprocessing).save(kwargs["out"])
        print(f"mimkit-multimodal: the table preprocessing (vocabularies, scalers) is in {path}", file=sys.stderr)
    return summary


def pretrain_multimodal() -> Command:
    command = pretrain_command(
        ImageTableData, default_method=lambda argv: "tip",
        description="Pretrain TIP (or another registered image + table method) on a CSV / Parquet table with an "
        "image-path column: column types are inferred (numbers with more than 10 values: continuous) unless named "
        "with --categorical / --continuous; empty cells are missing; rows whose image does not exist or whose value "
        "has the wrong type are left out and counted (--strict-data stops instead). Writes RUN/config.yaml (with the "
        "fitted preprocessing), RUN/tabular.json, metrics.json, checkpoints/ and model.safetensors. A recipe "
        "(`mimkit-multimodal recipes tip`) gives the paper's settings: --config FILE. With --method m3ae or xformer the "
        "data is a CSV / JSONL of image paths and captions (ImageTextData: --data.layout roco, medicat, csv, r2gen); "
        "with --method pigeon a table of users' interactions, one row per (user, image), read as sliding windows of "
        "--data.num_history history images and the next one (PreferenceHistoryData: --data.user_column, "
        "--data.order_column).")
    flags = {"--" + key.replace("_", "-"): f"--data.{key}" for key in TABLE_FLAGS}
    return dataclasses.replace(command, function=pretrain, aliases={**command.aliases, **flags},
                               groups={**command.groups, "data": _data_class})


def _data_class(argv: list[str]) -> tuple[type, None]:
    """Image + caption files for the image-text methods (m3ae, xformer), users' image histories for pigeon, image +
    table files otherwise."""
    from mimkit.core.config import config_value

    return _data_for(config_value(argv, "method")), None


def _data_for(method: str | None) -> type:
    from .histories import PreferenceHistoryData

    return ImageTextData if method in TEXT_METHODS else PreferenceHistoryData if method == "pigeon" else ImageTableData


# ------------------------------------------------------------------------------------------ evaluate / finetune
def _tasks(task: list[str] | None, patterns: list[str] | None, rates: list[float] | None) -> list[str]:
    from .bench import MISSING_RATES
    from .data import MISSING_PATTERNS

    if task:
        return list(task)
    names = ["image-table-complete"]
    for pattern in patterns or MISSING_PATTERNS:
        if pattern not in MISSING_PATTERNS:
            raise ConfigError(f"--patterns {pattern} is not one of {', '.join(MISSING_PATTERNS)}")
        for rate in rates or MISSING_RATES:
            if rate not in MISSING_RATES:
                raise ConfigError(f"--rates {rate} is not one of {', '.join(map(str, MISSING_RATES))} (0: complete)")
            names.append(f"image-table-{pattern.replace('_', '-')}-{rate}")
    return names


def _score(run: str, data: str, target: str | None, task, patterns, rates, inputs, strategy, compare_random_init,
           max_steps, batch_size, lr, weight_decay, image_column, seed, out, save: bool = False) -> list[dict]:
    from mimkit.benchmarks.report import write_table
    from mimkit.benchmarks.runner import random_init, run_task
    from mimkit.core.runs import load_run, update_metrics

    from .classifiers import is_classifier
    from .vqa import VISION_LANGUAGE_TASKS

    if is_classifier(run) and strategy == "frozen" and not (patterns or rates or inputs or compare_random_init):
        return _score_saved(run, data, task, seed, out)
    method, config = load_run(run)
    target = target or (config.get("data") or {}).get("target")  # the label column pretraining left out
    reader = {**({"target": target} if target else {}), **({"image_column": image_column} if image_column else {})}
    settings = {"strategy": strategy, "max_steps": max_steps, "batch_size": batch_size, "seed": seed,
                **({"lr": lr} if lr is not None else {}),
                **({"weight_decay": weight_decay} if weight_decay is not None else {})}
    subjects = {"pretrained": method}
    if compare_random_init:
        subjects["random"] = random_init(method, config, seed)
    rows = []
    for name in _tasks(task, patterns, rates):
        if name in VISION_LANGUAGE_TASKS:  # M3AE's VQA / caption heads: no table, one head on the fused features
            # the run's method and model (and the task) go with the data, so the classifier can be saved as a run
            reader_options = {"run_settings": {"method": config.get("method"), "model": config.get("model"),
                                               "task": name}, **({"image_column": image_column} if image_column
                                                                 else {})}
            for init, subject in subjects.items():  # only the pretrained model's classifier is kept
                keep = {"save_dir": str(Path(out or run) / "classifiers" / name)} if save and init == "pretrained" \
                    else {}
                for row in run_task(name, subject, data, run_config=config, seed=seed, reader_options=reader_options,
                                    **keep, **{k: v for k, v in settings.items() if k != "seed"}):
                    details = row["details"]
                    rows.append({**row, "init": init, "inputs": "image + text", **{
                        key: round(100 * details[key], 2) if details.get(key) is not None else None
                        for key in ("open_accuracy", "closed_accuracy")}})
            continue
        for kind in inputs or ["multimodal"]:
            for init, subject in subjects.items():  # only the pretrained model's classifier is kept
                keep = {"save_dir": str(Path(out or run) / "classifiers" / _classifier_name(name, kind))} \
                    if save and init == "pretrained" else {}
                for row in run_task(name, subject, data, run_config=config, seed=seed, reader_options=reader,
                                    inputs=kind, **keep, **{k: v for k, v in settings.items() if k != "seed"}):
                    rows.append({**row, "init": init, "inputs": kind, "auc": round(100 * row["details"]["auc"], 2)
                                 if row["details"].get("auc") is not None else None})
    update_metrics(out or run, {"results": rows})
    if save:
        print(f"mimkit-multimodal: the fine-tuned classifiers are in {Path(out or run) / 'classifiers'} (evaluate "
              f"--run FOLDER scores one as it is; embed --run FOLDER writes its embeddings or --kind "
              f"probabilities)", file=sys.stderr)
    columns = ["task", "inputs", "init", "metric", "value", "auc", "num_train", "num_test"]
    if any("open_accuracy" in row for row in rows):
        columns[6:6] = ["open_accuracy", "closed_accuracy"]
    print(write_table(rows, columns), end="")
    return rows


def _classifier_name(task: str, inputs: str) -> str:
    return task if inputs == "multimodal" else f"{task}-{inputs}"


def _score_saved(folder: str, data: str, task: list[str] | None, seed: int, out: str | None) -> list[dict]:
    """Score a saved classifier as it is on the data's test split: an image + table one with its task's missing
    pattern (or the given task's), a VQA or caption one on its task's (or the given task's) test split."""
    from mimkit.benchmarks.report import write_table
    from mimkit.benchmarks.tasks import get_task
    from mimkit.core.runs import read_config, update_metrics

    from .bench import score_classifier
    from .classifiers import TABLE, classifier_kind
    from .vqa import score_vision_language_classifier

    info = read_config(folder).get("classifier") or {}
    rows = []
    if classifier_kind(folder) != TABLE:
        for name in task or [None]:
            result = score_vision_language_classifier(folder, data, name)
            rows.append({"task": result["task"], "inputs": info.get("inputs"), "init": "fine-tuned (saved)",
                         "metric": "accuracy", "value": round(100 * result["accuracy"], 2),
                         **{key: round(100 * result[key], 2) if result.get(key) is not None else None
                            for key in ("open_accuracy", "closed_accuracy")},
                         "num_test": result["num_test"], "classifier": str(folder)})
        update_metrics(out or folder, {"results": rows})
        print(write_table(rows, ["task", "inputs", "init", "metric", "value", "open_accuracy", "closed_accuracy",
                                 "num_test"]), end="")
        return rows
    conditions = [(name, get_task(name).settings) for name in task] if task else [(None, info)]
    for name, settings in conditions:
        result = score_classifier(folder, data, settings.get("pattern"), settings.get("rate"), seed)
        rows.append({"task": name or Path(folder).name, "inputs": info.get("inputs"), "init": "fine-tuned (saved)",
                     "metric": "accuracy", "value": round(100 * result["accuracy"], 2),
                     "auc": round(100 * result["auc"], 2) if result["auc"] is not None else None,
                     "num_test": result["num_test"], "missing_pattern": result["missing_pattern"],
                     "missing_rate": result["missing_rate"], "classifier": str(folder)})
    update_metrics(out or folder, {"results": rows})
    print(write_table(rows, ["task", "inputs", "init", "metric", "value", "auc", "num_test"]), end="")
    return rows


def evaluate(run: str, data: str, target: str | None = None, task: list[str] | None = None,
             patterns: list[str] | None = None, rates: list[float] | None = None,
             inputs: list[Literal["multimodal", "image", "table", "ensemble"]] | None = None,
             compare_random_init: bool = False,
             max_steps: int = 300, batch_size: int = 64, lr: float | None = None, weight_decay: float | None = None,
             image_column: str | None = None, seed: int = 0, out: str | None = None) -> list[dict]:
    """Score a TIP run on labelled image + table data as TIP's evaluation does: the backbone frozen, a linear head on
    the multimodal CLS, with complete tables and with cells hidden by each missing pattern (random values, random
    features, most / least important features) at rates 0.3, 0.6, 0.9; accuracy and macro AUC (percent), printed and
    appended to RUN/metrics.json. RUN may be a classifier `finetune` saved (OUT/classifiers/TASK): it is then scored
    as it is, without training, on the test split with the missing cells of its own task (or of --task); a VQA or
    caption classifier on its task's (or --task's) test split with the answers or classes it was trained on.

    Args:
        run: a `mimkit-multimodal pretrain` run folder (its model and table preprocessing), or a saved classifier
        data: a folder with train.csv and test.csv (or .parquet): image paths and the target column
        target: the target column (default: the one pretraining left out of the features, or the task's)
        task: registered task(s) instead of the pattern x rate grid (`image-table-complete`, `synthetic-digits-...`);
            for an m3ae run: vqa-rad, slake, image-caption-classification, synthetic-digits-vqa,
            synthetic-digits-caption-classification (the head alone is trained here; open / closed accuracy shown)
        patterns: missing patterns to run (default all: value, feature, most_important, least_important)
        rates: missing rates to run (default 0.3 0.6 0.9; complete tables always)
        inputs: the vectors a head reads: multimodal (default), image (image-only), table (table-only), ensemble
            (three heads on the image, table and multimodal vectors, logits averaged: TIP's finetune_ensemble)
        compare_random_init: also score the same architecture at random initialisation, side by side
        max_steps: training steps of the head
        batch_size: samples per step
        lr: learning rate (default: the task's; TIP's evaluation 1e-4)
        weight_decay: weight decay (default: the task's; TIP's evaluation 0)
        image_column: the image-path column (default: the run's)
        seed: seed of the head, the missing cells and the random-init model
        out: write metrics.json here instead of into the run
    """
    return _score(run, data, target, task, patterns, rates, inputs, "frozen", compare_random_init, max_steps,
                  batch_size, lr, weight_decay, image_column, seed, out)


def finetune(run: str, data: str, target: str | None = None, task: list[str] | None = None,
             patterns: list[str] | None = None, rates: list[float] | None = None,
             inputs: list[Literal["multimodal", "image", "table", "ensemble"]] | None = None,
             compare_random_init: bool = False,
             max_steps: int = 300, batch_size: int = 64, lr: float | None = None, weight_decay: float | None = None,
             image_column: str | None = None, seed: int = 0, out: str | None = None) -> list[dict]:
    """Fine-tune a TIP run end to end (backbone and linear head, AdamW, warmup + cosine) on labelled image + table data
    with complete and incomplete tables, as `evaluate` does with a frozen backbone; results as there. Each fine-tuned
    classifier (backbone, head, the table preprocessing with the target's classes, test predictions) is kept in
    OUT/classifiers/TASK[-INPUTS], a folder `evaluate --run` and `embed --run` read; for an m3ae run's VQA and caption
    tasks, OUT/classifiers/TASK holds the backbone, head, answers or classes and each test question's prediction.

    Args:
        run: a `mimkit-multimodal pretrain` run folder
        data: a folder with train.csv and test.csv (or .parquet): image paths and the target column
        target: the target column (default: the one pretraining left out of the features, or the task's)
        task: registered task(s) instead of the pattern x rate grid; for an m3ae run: vqa-rad, slake,
            image-caption-classification, synthetic-digits-vqa, synthetic-digits-caption-classification (M3AE's
            heads on the fused features, fine-tuned with the backbone; open / closed accuracy shown)
        patterns: missing patterns to run (default all)
        rates: missing rates to run (default 0.3 0.6 0.9; complete tables always)
        inputs: multimodal (default), image (image-only), table (table-only), ensemble (TIP's finetune_ensemble)
        compare_random_init: also fine-tune the same architecture from random initialisation
        max_steps: training steps
        batch_size: samples per step
        lr: learning rate (default: the task's)
        weight_decay: weight decay (default: the task's)
        image_column: the image-path column (default: the run's)
        seed: seed of the head, the missing cells and the random-init model
        out: write metrics.json here instead of into the run
    """
    return _score(run, data, target, task, patterns, rates, inputs, "trainable", compare_random_init, max_steps,
                  batch_size, lr, weight_decay, image_column, seed, out, save=True)


# ------------------------------------------------------------------------------------------ embed
def embed(run: str, data: str, out: str,
          kind: Literal["multimodal", "image", "table", "text", "probabilities"] = "multimodal",
          batch_size: int = 128, layout: str | None = None, image_column: str | None = None,
          text_column: str | None = None) -> Path:
    """Write one embedding per row of a data file: for a TIP run, an image + table file (the multimodal CLS, the image
    vector or the tabular CLS, with the run's table preprocessing); for an M3AE run, an image + text file (the fused
    multimodal vector, the image CLS or the text's first token). .safetensors (`embeddings`, with the image paths in
    the metadata) or .parquet. A classifier `finetune` saved (OUT/classifiers/TASK) gives its fine-tuned backbone's
    vectors, or with --kind probabilities its class probabilities (the class or answer names in the metadata; a VQA
    classifier reads the questions as the text column).

    Args:
        run: a `mimkit-multimodal pretrain` run folder, or a classifier folder `finetune` saved
        data: TIP: a CSV / Parquet table with the run's image column and feature columns; M3AE: a CSV / JSONL of image
            paths and texts (or a layout of `pretrain --data.layout`)
        out: the file to write, .safetensors or .parquet
        kind: multimodal, image, table (TIP), text (M3AE), or probabilities (a saved classifier's)
        batch_size: rows per forward pass
        layout: image + text files: roco, medicat, csv, mimic-cxr, iu-xray (default: the run's, else csv)
        image_column: image + text files: the image-path column (default: the run's, else the layout's)
        text_column: image + text files: the text column (default: the run's, else the layout's)
    """
    import torch

    from mimkit.core.data import make_loader
    from mimkit.core.runs import load_run

    from .bench import fit_run, load_classifier
    from .classifiers import TABLE, classifier_kind, is_classifier
    from .data import ImageTableDataset, ImageTextDataset
    from .tables import TablePreprocessor
    from .vqa import load_vision_language_classifier

    out_path = Path(out)
    if out_path.suffix not in (".safetensors", ".parquet"):
        raise ConfigError(f"--out {out}: the suffix picks the format, one of .safetensors, .parquet")
    classifier = None
    if kind == "probabilities":
        if not is_classifier(run):
            raise ConfigError(f"--kind probabilities needs a classifier folder that finetune saved "
                              f"(OUT/classifiers/TASK); {run} holds none")
        load = load_classifier if classifier_kind(run) == TABLE else load_vision_language_classifier
        classifier, config = load(run)
        method = classifier.backbone
    else:
        method, config = load_run(run)
    options = fit_run(method.encoder, config)
    if callable(getattr(method, "multimodal_features", None)):  # image + text (m3ae)
        if kind == "table":
            raise ConfigError(f"{run} is an image + text run ({config.get('method')}): --kind multimodal, image, text "
                              f"or probabilities")
        section = config.get("data") or {}
        dataset = ImageTextDataset(data, layout or section.get("layout") or "csv",
                                   image_column=image_column or section.get("image_column"),
                                   text_column=text_column or section.get("text_column"),
                                   img_size=options["img_size"], in_chans=options["in_chans"], transform="eval",
                                   mean=options.get("mean"), std=options.get("std"))
    elif "preprocessing" in options:
        if kind == "text":
            raise ConfigError(f"{run} is an image + table run ({config.get('method')}): --kind multimodal, image, "
                              f"table or probabilities")
        dataset = ImageTableDataset(data, options.get("image_column", "image"),
                                    preprocessor=TablePreprocessor.from_dict(options["preprocessing"]),
                                    img_size=options["img_size"], in_chans=options["in_chans"], transform="eval",
                                    mean=options.get("mean"), std=options.get("std"), labelled=False)
    else:
        raise ConfigError(f"{run}: embed reads TIP runs (image + table) and M3AE runs (image + text); this run's method "
                          f"is {config.get('method')!r}")
    method.eval()
    vectors = []
    with torch.no_grad():
        for batch in make_loader(dataset, batch_size):
            vectors.append(classifier(batch).float().softmax(-1) if classifier is not None
                           else method.embed(batch, kind))
    features = torch.cat(vectors).float().contiguous()
    names = [str(f) for f in dataset.files]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".safetensors":
        from safetensors.torch import save_file

        extra = {"classes": json.dumps(config["classifier"]["classes"])} if classifier is not None else {}
        save_file({"embeddings": features}, str(out_path), metadata={"images": json.dumps(names), "kind": kind,
                                                                     "run": str(run), **extra})
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"image": names, "embedding": [row.tolist() for row in features]}), out_path)
    print(f"wrote {len(names)} {kind} embeddings of width {features.shape[1]} to {out_path}"
          f"{f' ({len(dataset.skipped)} rows left out)' if dataset.skipped else ''}", file=sys.stderr)
    return out_path


# ------------------------------------------------------------------------------------------ recipes, synthetic
def synthetic(out: str,
              kind: list[Literal["all", "digits", "digits-outcome", "crops", "dicom", "histories"]] | None = None,
              size: int = 32,
              missing_rate: float = 0.2, seed: int = 0) -> dict:
    """Write small image + table (and caption, VQA) sets from real pixels that packages ship: scikit-learn's digits
    with a table measured on each image, scikit-image picture crops with measured tables, pydicom's test files with
    their DICOM header fields; each holds train.csv, test.csv and images/. `histories`: users' digit sequences
    (each user prefers one digit) for Pigeon, histories.csv and images/. `digits-outcome`: the digits whose target
    needs the table too (the demo's: the digit in a random arm A, the digit + 5 mod 10 in arm B).

    Args:
        out: the folder to write into (one sub-folder per kind)
        kind: any of digits, digits-outcome, crops, dicom, histories, or all (default)
        size: image side in pixels (DICOM: twice this)
        missing_rate: share of table cells left empty (digits, crops)
        seed: seed of the noise, the missing cells and the split
    """
    from . import synthetic as write

    kinds = set(kind or ["all"])
    root, written = Path(out), {}
    if kinds & {"all", "digits"}:
        written["digits"] = write.write_digits(root / "digits", size=size, missing_rate=missing_rate, seed=seed)
    if kinds & {"all", "digits-outcome"}:
        written["digits-outcome"] = write.write_digits(root / "digits-outcome", size=size, missing_rate=missing_rate,
                                                       seed=seed, outcome=True)
    if kinds & {"all", "crops"}:
        written["crops"] = write.write_crops(root / "crops", size=size, missing_rate=missing_rate, seed=seed)
    if kinds & {"all", "dicom"}:
        written["dicom"] = Path(write.write_dicom_table(root / "dicom", size=2 * size, seed=seed)["root"])
    if kinds & {"all", "histories"}:
        written["histories"] = write.write_histories(root / "histories", size=size, seed=seed) / "histories.csv"
    targets = {"digits": "(target column: digit)", "digits-outcome": "(target column: outcome)", "crops": "(target column: picture)",
               "dicom": "(target column: Modality)", "histories": "(pretrain --method pigeon --data this file)"}
    for name, path in written.items():
        print(f"{name:14s} {path}   {targets[name]}")
    return written


# ------------------------------------------------------------------------------------------ the tool
def build_tool() -> Tool:
    from .demo import run_demo

    return Tool("mimkit-multimodal", "Multimodal pretraining: images with tables (TIP) and with text.", [
        Command("demo", run_demo, "pretrain TIP on digits + a measured table, compare with random init, image-only "
                "and table-only models on complete and incomplete tables"),
        pretrain_multimodal(),
        Command("evaluate", evaluate, "score a run with a frozen backbone on complete and incomplete tables"),
        Command("finetune", finetune, "fine-tune a run end to end on complete and incomplete tables"),
        Command("embed", embed, "write multimodal, image or table embeddings of a table's rows"),
        recipes_command("mimkit.multimodal", "mimkit-multimodal", "the multimodal methods' recipes"),
        Command("synthetic", synthetic, "write small image + table sets from shipped pixels (digits, crops, DICOM)"),
    ], epilog="Start with `mimkit-multimodal demo --out runs/mm-demo`; each command has its own --help.")


def main(argv: Sequence[str] | None = None) -> int:
    return build_tool().run(argv)


if __name__ == "__main__":
    sys.exit(main())
