"""The `mimkit-medical` command: pretrain, evaluate, finetune, anomaly, bench, recipes, synthetic.

The core's configuration system (core.config) with medical data underneath: `pretrain` is core's command with
`MedicalData` (NIfTI, DICOM, 16-bit X-rays, OCT, fundus; MONAI transforms) and the modality's default method; the
others are typed functions. Every command takes `--config FILE` (a recipe: `mimkit-medical recipes`) and
`--print_config`; the short flags (`--modality ct --roi 96 --hu-window -175 250`) are spelled out to their keys.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

from mimkit.core.cli import pretrain_command, recipes_command
from mimkit.core.config import Command, Tool, config_value
from mimkit.core.errors import ConfigError
from mimkit.core.finetune import FineTuneConfig

from .data import DEFAULT_METHODS, PREPROCESSING_FIELDS, MedicalData

# flags of the earlier medical commands -> their keys
DATA_ALIASES = {"--data": "--data.root", "--modality": "--data.modality", "--layout": "--data.layout",
                "--spatial-dims": "--data.spatial_dims", "--spacing": "--data.spacing",
                "--hu-window": "--data.intensity_range", "--roi": "--data.roi", "--slices": "--data.slices",
                "--crops-per-volume": "--data.crops_per_volume", "--cache": "--data.cache",
                "--cache-dir": "--data.cache_dir", "--normal-only": "--data.normal_only",
                "--normal-class": "--data.normal_class", "--uncertainty": "--data.uncertainty",
                "--volume-data": "--data.volume_data", "--strict-data": "--data.strict"}
FINETUNE_ALIASES = {"--epochs": "--finetune.epochs", "--steps": "--finetune.max_steps",
                    "--max-steps": "--finetune.max_steps", "--batch-size": "--finetune.batch_size",
                    "--lr": "--finetune.lr", "--base-lr": "--finetune.base_lr", "--devices": "--finetune.devices",
                    "--accelerator": "--finetune.accelerator", "--precision": "--finetune.precision",
                    "--num-workers": "--finetune.num_workers", "--seed": "--finetune.seed",
                    "--no-progress": "--finetune.progress=false"}
# data settings that shape pretraining only; evaluate and finetune take the run's encoder as it is
PRETRAINING_ONLY = ("roi", "crops_per_volume", "cache", "cache_dir", "normal_only", "volume_data", "caption",
                    "volume_mean", "volume_std")
METRICS = {"classes": "accuracy", "msd": "dice", "chestxray14": "auroc", "chexpert": "auroc"}


def _modality_method(argv: list[str]) -> str:
    """The method the command line picks before parsing: --method, else the modality's (mae until one is given,
    for --help; pretraining itself then asks for --modality)."""
    modality = config_value(argv, "modality") or config_value(argv, "data.modality")
    if modality is None:  # shards from `mimkit-medical shard` know theirs
        from .shards import shard_modality

        modality = shard_modality(config_value(argv, "data") or config_value(argv, "data.root"))
    return DEFAULT_METHODS.get(modality, "mae")


# ============================================================================================ evaluate / finetune
def _labelled_task(run: str, data: MedicalData, protocol: str, augment: bool):
    """(method, run config, the task for the labelled splits of data.root, its reader options): the data prepared
    for the run's encoder as in pretraining; data settings given here win over the run's."""
    from mimkit.core.runs import load_run

    from .bench import RUN_DATA_KEYS, _reader, _reader_options, _task

    defaults = MedicalData()
    given = [name for name in PRETRAINING_ONLY if getattr(data, name) != getattr(defaults, name)]
    if given:
        raise ConfigError(f"data.{given[0]} applies to pretraining only; {protocol} reads the data at the run's "
                          f"encoder size")
    if data.root is None:
        raise ConfigError("no data given: pass --data DIR (the labelled data, train and test splits inside)")
    method, config = load_run(run)
    stored = dict(config.get("data") or {})
    modality = data.modality or stored.get("modality")
    if modality is None:
        raise ConfigError(f"{run}: the run's config.yaml names no modality (not a mimkit-medical run?); pass "
                          f"--modality")
    if data.layout == "folder":
        raise ConfigError("evaluation needs labels: --layout classes (train/ and test/ class folders), chestxray14, "
                          "chexpert or msd")
    dims = 3 if getattr(method.encoder, "spatial_dims", 2) == 3 else 2
    if data.spatial_dims is not None and int(data.spatial_dims) != dims:
        raise ConfigError(f"--spatial-dims {data.spatial_dims} contradicts the run's {dims}D encoder")
    settings = {k: v for k, v in stored.items() if k in RUN_DATA_KEYS + ("slices",)}
    settings.update({k: getattr(data, k) for k in PREPROCESSING_FIELDS + ("mean", "std")
                     if getattr(data, k) is not None and (k != "slices" or data.slices)})
    reader = _reader(data.layout, modality, dims, ("train", "test"), {"uncertainty": data.uncertainty})
    dataset = f"{Path(data.root).resolve().name} ({data.layout})"
    task = _task(f"{data.layout}-{protocol}", dataset, protocol, METRICS[data.layout], reader,
                 f"{data.root} in the {data.layout} layout")
    options = _reader_options(method.encoder, settings, {"augment": augment, "strict": data.strict,
                                                         **({"cache": "memory"} if dims == 3 else {})})
    return method, config, task, options


def _report(run: str, rows: list[dict]) -> None:
    from mimkit.benchmarks.report import write_table
    from mimkit.core.runs import update_metrics

    update_metrics(run, {"results": rows})
    print(write_table(rows, ["protocol", "init", "metric", "value", "num_train", "num_test"]), end="")


def evaluate(run: str, data: MedicalData = MedicalData(), protocol: list[str] | None = None, epochs: int | None = None,
             k: int = 20, compare_random_init: bool = False, seed: int = 0) -> list[dict]:
    """Evaluate a run's frozen encoder on labelled data: kNN and linear probe for class folders (accuracy),
    linear probe for ChestX-ray14 / CheXpert (macro ROC-AUC over the findings); results are printed and appended
    to RUN/metrics.json.

    Args:
        run: a pretraining run folder (mimkit-medical pretrain --out)
        data: the labelled data: root with train and test splits inside, its layout (classes, chestxray14,
            chexpert), and preprocessing settings over the run's
        protocol: any of knn, linear (default: linear)
        epochs: linear-probe epochs (default: the probe's 90)
        k: neighbours for kNN
        compare_random_init: also evaluate the same architecture at random initialisation, side by side
        seed: seed of the probe and the random-init encoder
    """
    from mimkit.benchmarks.runner import run_task

    protocols = list(protocol or ["linear"])
    unknown = sorted(set(protocols) - {"knn", "linear"})
    if unknown:
        raise ConfigError(f"--protocol {', '.join(unknown)} is not one of knn, linear (fine-tuning: `mimkit-medical "
                          f"finetune`)")
    if data.layout == "msd":
        raise ConfigError("segmentation is a fine-tuning protocol: use `mimkit-medical finetune --layout msd`")
    rows = []
    for name in protocols:
        method, config, task, options = _labelled_task(run, data, name, augment=False)
        if name == "knn":
            task = dataclasses.replace(task, check=_single_label)
        settings = {"k": k} if name == "knn" else ({"epochs": epochs} if epochs else {})
        rows += run_task(task, method, data.root, run_config=config, compare_random_init=compare_random_init,
                         seed=seed, reader_options=options, **settings)
    _report(run, rows)
    return rows


def _single_label(encoder, train) -> None:
    if getattr(train, "label_kind", None) == "multilabel":
        raise ConfigError("kNN needs single-label data; ChestX-ray14 and CheXpert are multi-label: use --protocol "
                          "linear")


def finetune(run: str, data: MedicalData = MedicalData(), finetune: FineTuneConfig = FineTuneConfig(),
             feature_size: int | None = None, labels_per_class: int | None = None, compare_random_init: bool = False,
             out: str | None = None) -> list[dict]:
    """Fine-tune a copy of a run's encoder end to end (MAE's recipe, layer-wise lr decay) on class folders
    (accuracy) or ChestX-ray14 / CheXpert (macro ROC-AUC); with --layout msd a UNETR-style decoder over the ViT is
    trained for 3D segmentation (mean Dice, MONAI's DiceMetric; the BTCV recipe's settings by default). Results are
    printed and appended to RUN/metrics.json; --config takes a fine-tuning recipe such as thorax_mae_finetune.

    Args:
        run: a pretraining run folder (mimkit-medical pretrain --out)
        data: the labelled data: root with train and test splits inside, its layout (classes, chestxray14,
            chexpert, msd), and preprocessing and augmentation settings over the run's
        finetune: the fine-tuning settings (epochs or max_steps, base_lr, layer_decay, drop_path, rand_augment,
            mixup, cutmix, label_smoothing, random_erasing, batch_size, devices, ...)
        feature_size: segmentation: the UNETR decoder's width (default 16; Hi-End-MAE's BTCV recipe: 32)
        labels_per_class: fine-tune on only this many labelled images per class (seeded; class folders)
        compare_random_init: also fine-tune the same architecture from random initialisation, side by side
        out: keep each fine-tuned model and its checkpoints in OUT/<init>/ (needed with several devices)
    """
    from mimkit.benchmarks.runner import run_task

    protocol = "segmentation" if data.layout == "msd" else "finetune"
    method, config, task, options = _labelled_task(run, data, protocol, augment=True)
    settings = {f.name: getattr(finetune, f.name) for f in dataclasses.fields(FineTuneConfig) if f.name != "seed"}
    settings["progress"] = finetune.progress and sys.stderr.isatty()
    if feature_size is not None:
        settings["head_options"] = {"feature_size": feature_size}
    rows = run_task(task, method, data.root, run_config=config, compare_random_init=compare_random_init,
                    labels_per_class=labels_per_class, seed=finetune.seed, reader_options=options, out_dir=out,
                    **settings)
    _report(run, rows)
    return rows


def segmentation_defaults(parser, argv: list[str]) -> None:
    """With --layout msd the fine-tuning settings default to the BTCV recipe's (bench.SEGMENTATION_SETTINGS)."""
    from .bench import SEGMENTATION_HEAD, SEGMENTATION_SETTINGS

    if (config_value(argv, "layout") or config_value(argv, "data.layout")) == "msd":
        fields = {f.name for f in dataclasses.fields(FineTuneConfig)}
        parser.set_defaults({f"finetune.{k}": v for k, v in SEGMENTATION_SETTINGS.items() if k in fields})
        parser.set_defaults({"feature_size": SEGMENTATION_HEAD["feature_size"]})


# ============================================================================================ anomaly
def _save_map(image, amap, path: Path, score: float) -> None:
    """Side by side: the image (first channel, percentile-scaled) and its anomaly map (heat colours)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    picture = image[0].numpy()
    low, high = (float(v) for v in np.percentile(picture, [1, 99]))
    figure = Figure(figsize=(4, 2.2), dpi=100)
    FigureCanvasAgg(figure)
    for column, (title, values, cmap) in enumerate((("image", picture, "gray"), (f"anomaly {score:.4f}",
                                                                                  amap[0].numpy(), "inferno"))):
        axis = figure.add_subplot(1, 2, column + 1)
        kwargs = {"vmin": low, "vmax": max(high, low + 1e-6)} if column == 0 else {}
        axis.imshow(values, cmap=cmap, **kwargs)
        axis.set_title(title, fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path)


def anomaly(run: str, data: str, normal_class: str = "normal", modality: str | None = None, out: str | None = None,
            maps: int = 16, batch_size: int = 16, seed: int = 0, strict: bool = False) -> dict:
    """Score every image of DATA with a MemMC-MAE run (trained on normal images): the reconstruction error of each
    patch while it is masked. DATA with class sub-folders gives the image-level ROC-AUC (normal_class against all
    others). Writes scores.csv (.md, .json) and PNG anomaly maps of the most anomalous images to OUT.

    Args:
        run: a memmc_mae pretraining run folder
        data: images to score: a flat folder, or class sub-folders
        normal_class: the class folder of normal images (case-insensitive)
        modality: default: the run's modality
        out: output folder (default RUN/anomaly)
        maps: anomaly maps to save (the highest scores first)
        batch_size: images per forward pass
        seed: seed of the covering masks
        strict: stop at the first unreadable file
    """
    import numpy as np

    from mimkit.benchmarks.report import write_table
    from mimkit.core.runs import load_run, update_metrics

    from .bench import _binary_auc, anomaly_scores, normal_labels
    from .data import build_dataset, preprocessing_from

    method, config = load_run(run)
    if not hasattr(method, "anomaly_map"):
        raise ConfigError(f"{run} is a {method.method_name!r} run; anomaly scores come from memmc_mae runs "
                          f"(mimkit-medical pretrain --method memmc_mae on normal images)")
    settings = config.get("data") or {}
    modality = modality or settings.get("modality")
    if modality is None:
        raise ConfigError(f"{run}: the run's config.yaml names no modality (not a mimkit-medical run?); pass "
                          f"--modality")
    encoder = method.encoder
    if getattr(encoder, "spatial_dims", 2) != 2:
        raise ConfigError("anomaly maps are written for 2D images; this run's encoder is 3D")
    root = Path(data)
    has_classes = root.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    pre = preprocessing_from({"img_size": tuple(encoder.img_size)}, modality, 2)
    dataset = build_dataset(root, "classes" if has_classes else "folder", pre, train=False,
                            patch_size=tuple(encoder.patch_size), in_chans=encoder.in_chans,
                            mean=settings.get("mean"), std=settings.get("std"), strict=strict)
    scores, _, amaps = anomaly_scores(method, dataset, batch_size=batch_size, seed=seed, with_maps=True)
    folder = Path(out) if out else Path(run) / "anomaly"
    (folder / "maps").mkdir(parents=True, exist_ok=True)
    labels = normal_labels(dataset, normal_class) if has_classes else None
    rows = [{"path": item["image"], "score": float(scores[i]),
             **({"anomalous": int(labels[i])} if labels is not None else {})} for i, item in enumerate(dataset.items)]
    write_table(rows, ["path", "score"] + (["anomalous"] if labels is not None else []), folder / "scores",
                formats={"score": ".6g"})
    view = dataset.eval_view()
    for rank, i in enumerate(np.argsort(-scores)[:maps]):  # the most anomalous first
        _save_map(view[int(i)]["image"], amaps[int(i)],
                  folder / "maps" / f"{rank:03d}_{Path(dataset.items[int(i)]['image']).stem}.png", float(scores[i]))
    summary = {"images": len(dataset), "skipped_files": len(dataset.skipped), "scores": str(folder / "scores.csv"),
               "maps": str(folder / "maps")}
    if labels is not None:
        auc = _binary_auc(labels, scores)
        summary.update(auroc=None if auc is None else round(auc, 4), anomalous=int(labels.sum()),
                       normal=int((labels == 0).sum()))
        if auc is not None:
            update_metrics(run, {"results": [{"protocol": "anomaly", "init": "pretrained", "metric": "auroc",
                                              "value": round(100 * auc, 2), "data": root.resolve().name}]})
    print(json.dumps(summary, indent=2))
    return summary


# ============================================================================================ bench
def bench(task: str | None = None, root: str | None = None, run: str | None = None, list_tasks: bool = False,
          compare_random_init: bool = False, epochs: int | None = None, steps: int | None = None,
          batch_size: int | None = None, lr: float | None = None, seed: int = 0, out: str | None = None) -> list[dict]:
    """Run one task of mimkit.benchmarks' medical registry (ChestX-ray14 / CheXpert AUC, BTCV / MSD Dice, OCT /
    fundus accuracy, anomaly AUC, and synthetic-* versions on the data `mimkit-medical synthetic` writes) with a
    run's encoder; prints the result beside the published figures of the same method and model and writes
    RUN/report_TASK.md/.csv/.json.

    Args:
        task: task name (see --list)
        root: the task's data folder (a local copy; never downloaded)
        run: a pretraining run folder
        list_tasks: list the medical tasks
        compare_random_init: also run the task at random initialisation
        epochs: fine-tuning / linear-probe epochs
        steps: segmentation fine-tuning steps
        batch_size: the protocol's batch size
        lr: the protocol's learning rate
        seed: seed of the protocol and the random-init encoder
        out: where the report goes (default: the run folder)
    """
    from mimkit.benchmarks.report import compare, comparison_table
    from mimkit.benchmarks.runner import run_task
    from mimkit.benchmarks.tasks import get_task
    from mimkit.benchmarks.tasks import list_tasks as registered
    from mimkit.core.runs import load_run, update_metrics

    if list_tasks or not task:
        for entry in registered("medical"):
            print(f"{entry.name:32s} {entry.protocol:12s} {entry.metric:8s} {entry.dataset}")
        if not list_tasks:
            print("\n(choose one with --task NAME --root DIR --run RUN)", file=sys.stderr)
        return []
    if not root or not run:
        raise ConfigError("--task needs --root (the data folder) and --run (a pretraining run)")
    method, config = load_run(run)
    chosen = get_task(task)
    if chosen.domain != "medical":
        raise ConfigError(f"task {task!r} belongs to the {chosen.domain} domain; `mimkit-medical bench` runs medical "
                          f"tasks only")
    protocol = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "steps": steps}
    allowed = {"segmentation": ("steps", "batch_size", "lr"), "anomaly": ("batch_size",),
               "finetune": ("epochs", "batch_size", "lr"), "linear": ("epochs", "batch_size", "lr"),
               "knn": ("batch_size",)}.get(chosen.protocol, ())
    refused = [k for k, v in protocol.items() if v is not None and k not in allowed]
    if refused:
        raise ConfigError(f"--{refused[0].replace('_', '-')} does not apply to the {chosen.protocol} protocol of "
                          f"{task}")
    options = {"max_steps" if k == "steps" else k: v for k, v in protocol.items() if v is not None}
    rows = run_task(chosen, method, root, run_config=config, compare_random_init=compare_random_init, seed=seed,
                    **options)
    for row in rows:
        row["method"] = config.get("method", method.method_name)
    update_metrics(run, {"results": rows})
    table = []
    for row in rows:
        matched = compare([{k: v for k, v in row.items()
                            if k in ("task", "data", "protocol", "metric", "method", "model", "value")}])
        if row["init"] != "pretrained":  # the comparison row says which encoder it is
            for entry in matched:
                entry["method"] = f"{entry['method']} [{row['init']} init]"
        table += matched
    print(comparison_table(table, Path(out or run) / f"report_{task}"), end="")
    for row in rows:
        print(f"{row['init']}: {row['metric']} {row['value']} on {row['num_test']} test inputs "
              f"({row['num_train']} training, {row['skipped_files']} files skipped)", file=sys.stderr)
    return rows


# ============================================================================================ recipes, synthetic
def synthetic(out: str, kind: list[str] | None = None, size: int | None = None, seed: int = 0) -> list[Path]:
    """Write small data sets that mimkit makes itself, in the layouts of the public ones: CT-like volumes with
    organ label maps (Decathlon dataset.json, from MONAI's create_test_image_3d), 16-bit radiographs (ChestX-ray14
    and CheXpert CSVs), OCT and fundus class folders, and an anomaly set with lesion masks. Each matches a
    synthetic-* bench task.

    Args:
        out: folder to write into (one sub-folder per kind)
        kind: any of organs, chestxray14, chexpert, oct, fundus, anomaly, or all (default)
        size: image / volume side in pixels (default 32)
        seed: seed of the generated data
    """
    from .bench import SYNTHETIC_TASK_DATA
    from .synthetic import SYNTHETIC_KINDS, write_synthetic

    kinds = list(kind or ["all"])
    unknown = sorted(set(kinds) - {"all", *SYNTHETIC_KINDS})
    if unknown:
        raise ConfigError(f"--kind {', '.join(unknown)} is not one of all, {', '.join(SYNTHETIC_KINDS)}")
    tasks = {value: name for name, value in SYNTHETIC_TASK_DATA.items()}
    folders = []
    for chosen in (SYNTHETIC_KINDS if "all" in kinds else kinds):
        folders.append(write_synthetic(out, chosen, seed=seed, size=size))
        print(f"{chosen:12s} {folders[-1]}   (task {tasks[chosen]})")
    return folders


# ============================================================================================ shard
def shard(data: MedicalData, out: str, img_size: int | list[int] | None = None, in_chans: int | None = None,
          chunk_bytes: str = "256MB", num_workers: int = 1, overwrite: bool = False) -> dict:
    """Prepare images or volumes once (MONAI: orientation, --spacing, --hu-window, foreground crop, padding to the
    ROI) into LitData shards that `mimkit-medical pretrain --data SHARDS` reads in place of the folder: the random
    crops stay per step, the expensive steps run once.

    Args:
        data: the folder, its layout and modality, and the preprocessing the runs will use (--roi for volumes)
        out: the shard folder to write
        img_size: 2D input size (default 224); volumes take --roi (default 96)
        in_chans: channels of the inputs (default: read from the files)
        chunk_bytes: the size of one chunk file (LitData's chunk_bytes)
        num_workers: processes preparing the inputs
        overwrite: replace the shards already in --out
    """
    from .shards import shard_summary, write_medical_shards

    if num_workers < 1:
        raise ConfigError(f"--num-workers must be at least 1, got {num_workers}")
    meta = write_medical_shards(data, out, img_size=img_size, in_chans=in_chans, chunk_bytes=chunk_bytes,
                                num_workers=num_workers, overwrite=overwrite)
    print("\n".join(shard_summary(meta, out)))
    return meta


# ============================================================================================ the tool
def build_tool() -> Tool:
    from .shards import MedicalShardsData

    pretrain = pretrain_command(
        MedicalShardsData, default_method=_modality_method,
        description="Pretrain any registered method (default per modality: ct/mr hiend_mae, xray thorax_mae, "
        "oct/fundus uni4eye) on a folder of medical images or volumes. CT: orientation RAS, --spacing resampling, "
        "--hu-window, foreground crop, random --roi sub-volumes; MR: z-score inside the body; X-ray/OCT/fundus: "
        "random resized crops. Unusable files (wrong dimensions, mixed DICOM series, NaN voxels, a spacing that "
        "leaves the volume smaller than the ROI) are skipped and counted, or stop the run with --strict-data. "
        "Writes RUN/config.yaml, metrics.json, checkpoints/, model.safetensors and pictures/ like `mimkit pretrain`.")
    pretrain.aliases.update(DATA_ALIASES)
    labelled = {**DATA_ALIASES, "--protocol": "--protocol"}
    return Tool("mimkit-medical", "Masked-image modeling for medical images: CT and MR volumes (NIfTI, DICOM), chest "
                "X-rays (16-bit PNG/TIFF, DICOM), OCT and fundus photographs, read through MONAI. Nothing is "
                "downloaded.", [
                    pretrain,
                    Command("evaluate", evaluate, "frozen-encoder evaluation: kNN, linear probe (AUC for multi-label)",
                            aliases=labelled),
                    Command("finetune", finetune, "fine-tune a run's encoder: classification, multi-label AUC, 3D "
                            "segmentation (UNETR-style decoder)", aliases={**DATA_ALIASES, **FINETUNE_ALIASES},
                            extend=segmentation_defaults),
                    Command("anomaly", anomaly, "score images for anomalies with a memmc_mae run; AUC and maps",
                            aliases={"--strict-data": "--strict"}),
                    Command("bench", bench, "run a registered medical benchmark task, beside the published numbers",
                            aliases={"--list": "--list_tasks"}),
                    recipes_command("mimkit.medical", "mimkit-medical", "the medical recipes"),
                    Command("synthetic", synthetic, "write small synthetic data sets in the public layouts (tests, "
                            "demo)"),
                    Command("shard", shard, "prepare images or volumes once into LitData shards (read by pretrain "
                            "--data like a folder)", aliases=DATA_ALIASES),
                ], epilog="Try it without data: `mimkit-medical synthetic --out data`, then `mimkit-medical pretrain "
                "--data data/organs --layout msd --modality ct --out runs/ct ...`. Each command has its own --help.")


def main(argv: Sequence[str] | None = None) -> int:
    return build_tool().run(argv)


if __name__ == "__main__":
    sys.exit(main())
