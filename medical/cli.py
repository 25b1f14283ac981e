"""The `mimkit-medical` command: pretrain, evaluate, finetune, anomaly, bench, recipes, synthetic.

It reuses the core command's parts (core/cli.py): the same pretraining flags, recipes and run folders, with
medical data underneath (NIfTI, DICOM, 16-bit X-rays, OCT, fundus; MONAI transforms; see mimkit.medical.data).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Sequence

import yaml

from mimkit.core._argparse_cli import add_pretrain_arguments, markdown_table, read_recipe, read_yaml_mapping, run_command, run_pretrain
from mimkit.core.data import few_labels
from mimkit.core.evaluate import evaluate_encoders
from mimkit.core.runs import load_run, update_metrics
from mimkit.core.errors import ConfigError

from .data import CACHES, MODALITIES, UnifiedDataset, build_dataset, preprocessing_from
from .layouts import LAYOUTS, UNCERTAINTY_POLICIES
from .synthetic import SYNTHETIC_KINDS, write_synthetic

# The method each modality pretrains with unless --method says otherwise.
DEFAULT_METHODS = {"ct": "hiend_mae", "mr": "hiend_mae", "xray": "thorax_mae", "oct": "uni4eye", "fundus": "uni4eye"}
DEFAULT_DIMS = {"ct": 3, "mr": 3, "xray": 2, "oct": 2, "fundus": 2}
# UrFound's caption templates (util/flair_dataloader/transforms.py), "[CLS]" = the class folder's name.
CAPTIONS = {"fundus": "A fundus photograph of [CLS]", "oct": "An Optical Coherence Tomography Image shows [CLS]"}


# ============================================================================================ pretrain
def _stored_config(args) -> dict:
    path = Path(args.out) / "config.yaml"
    return yaml.safe_load(path.read_text()) or {} if args.resume and path.is_file() else {}


def _resolve_modality(args) -> tuple[str, int, dict]:
    """Modality and spatial dims from the flags, else the recipe's data section, else a stored run."""
    recipe = read_recipe(args.config)
    stored = _stored_config(args)
    data = {**(stored.get("data") or {}), **(recipe.get("data") or {})}
    modality = args.modality or data.get("modality")
    if modality is None:
        raise ConfigError(f"--modality is required ({', '.join(MODALITIES)}): it picks the readers, intensity "
                          f"transforms and the default method")
    if modality not in MODALITIES:
        raise ConfigError(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    model = {**(stored.get("model") or {}), **(recipe.get("model") or {})}
    slices = args.slices or data.get("slices")  # 2D slices of volumes train a 2D model
    dims = args.spatial_dims or data.get("spatial_dims") or model.get("spatial_dims") or \
        (2 if slices else DEFAULT_DIMS[modality])
    return modality, int(dims), recipe


def _medical_settings(args, data: dict, modality: str, dims: int) -> dict:
    """Flags over the recipe's / stored run's data section; the result is stored in RUN/config.yaml."""
    flags = {"modality": modality, "spatial_dims": dims, "layout": args.layout, "spacing": args.spacing,
             "intensity_range": args.hu_window, "slices": True if args.slices else None,
             "crops_per_volume": args.crops_per_volume, "cache": args.cache, "cache_dir": args.cache_dir,
             "normal_only": True if args.normal_only else None, "volume_data": args.volume_data,
             "roi": args.roi}
    for key, value in flags.items():
        if value is not None:
            data[key] = list(value) if isinstance(value, (list, tuple)) else value
    data.setdefault("layout", "folder")
    if data["layout"] not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {data['layout']!r}")
    return data


def build_pretrain_dataset(data_dir: str, data: dict, model: dict, strict: bool, *, args, method: str):
    """The medical pretraining data for `run_pretrain`: fills the run's data and model sections as it goes."""
    from mimkit.core.registry import method_arguments

    modality, dims = data["modality"], int(data["spatial_dims"])
    accepted = method_arguments(method)
    unified = data.get("volume_data") is not None
    if "spatial_dims" in accepted:
        model.setdefault("spatial_dims", dims)
        if int(model["spatial_dims"]) != dims:
            raise ConfigError(f"the recipe's model.spatial_dims={model['spatial_dims']} contradicts "
                              f"--spatial-dims {dims}")
    elif dims == 3 and method != "uni4eye":
        raise ConfigError(f"method {method!r} is 2D only; use --spatial-dims 2 (or --slices for 2D slices of "
                          f"volumes), or a 3D method such as hiend_mae")
    if unified and method != "uni4eye":
        raise ConfigError(f"--volume-data gives unified 2D + 3D batches, which only uni4eye trains on (got {method!r})")
    patch = model.get("patch_size") or accepted.get("patch_size", 16)
    img_size = model["img_size"]
    if method == "urfound":  # UrFound reads images at target_scale x the encoder's size (see urfound.py)
        scale = int(model.get("target_scale", accepted.get("target_scale", 2)))
        img_size = [int(v) * scale for v in ([img_size] if isinstance(img_size, int) else img_size)]
    settings = {k: v for k, v in data.items() if k not in ("roi",)}
    pre = preprocessing_from({**settings, "img_size": img_size}, modality, dims)
    volumes = pre.volumes
    caption = None
    if method == "urfound":
        if data["layout"] != "classes":
            raise ConfigError("urfound learns from captions: use --layout classes (the class folder names fill "
                              "the caption template)")
        caption = data.get("caption") or data.get(f"caption_{modality}") or CAPTIONS.get(modality, "[CLS]")
        caption = caption.replace("[ATR] ", "")
    options = dict(patch_size=patch, in_chans=model.get("in_chans"), mean=data.get("mean"), std=data.get("std"),
                   cache=data.get("cache") or ("memory" if volumes else "none"), cache_dir=data.get("cache_dir"),
                   samples_per_volume=int(data.get("crops_per_volume") or 1), strict=strict)
    layout_options = {k: data[k] for k in ("normal_only", "normal_class", "uncertainty", "views") if k in data}
    dataset = build_dataset(data_dir, data["layout"], pre, labelled=caption is not None, options=layout_options,
                            caption=caption, **options)
    data["mean"], data["std"] = dataset.stats
    for key in ("spacing", "intensity_range"):  # store what was applied, defaults included
        if getattr(pre, key) is not None:
            data[key] = list(getattr(pre, key))
    if method == "uni4eye":
        if dims == 3:  # volumes only: they go through Uni4Eye's 3D path, at the ROI size
            model["volume_size"], model["img_size"] = list(pre.img_size), list(pre.img_size[1:])
            model.setdefault("volume_chans", dataset.in_chans)
        elif unified:
            roi = data.get("roi") or model.get("volume_size") or accepted.get("volume_size")
            vol_pre = preprocessing_from({**settings, "img_size": roi, "slices": False}, modality, 3)
            volumes_set = build_dataset(data["volume_data"], "folder", vol_pre, labelled=False,
                                        **{**options, "in_chans": model.get("volume_chans"),
                                           "cache": data.get("cache") or "memory", "mean": None, "std": None})
            model["volume_size"], model["volume_chans"] = list(vol_pre.img_size), volumes_set.in_chans
            data["volume_mean"], data["volume_std"] = volumes_set.stats
            return UnifiedDataset(dataset, volumes_set)
    return dataset


def cmd_pretrain(args) -> None:
    modality, dims, recipe = _resolve_modality(args)
    stored = _stored_config(args)
    args.method = args.method or recipe.get("method") or stored.get("method") or DEFAULT_METHODS[modality]
    if args.roi and dims == 3 and args.volume_data is None:
        if args.img_size and list(args.img_size) != list(args.roi):
            raise ConfigError(f"--roi {args.roi} and --img-size {args.img_size} disagree: for 3D inputs the ROI is "
                              f"the model's input size; give one of them")
        args.img_size = list(args.roi)
    size_given = args.img_size or "img_size" in (recipe.get("model") or {}) or "img_size" in (recipe.get("data") or {})
    if not size_given and not stored:
        # MAE's 224 for 2D images; Hi-End-MAE's 96^3 crops for volumes
        args.img_size = [96] if dims == 3 else [224]

    def builder(data_dir, data, model, strict):
        _medical_settings(args, data, modality, dims)
        return build_pretrain_dataset(data_dir, data, model, strict, args=args, method=args.method)

    run_pretrain(args, dataset_builder=builder, default_method=args.method)


# ============================================================================================ evaluate / finetune
def _run_geometry(method, config: dict, args) -> tuple[str, int, dict]:
    data = dict(config.get("data") or {})
    modality = getattr(args, "modality", None) or data.get("modality")
    if modality is None:
        raise ConfigError(f"{args.run}: the run's config.yaml names no modality (not a mimkit-medical run?); "
                          f"pass --modality")
    encoder = method.encoder
    dims = 3 if getattr(encoder, "spatial_dims", 2) == 3 else 2
    return modality, dims, data


def _labelled_reader(args, method, config: dict, augment: bool, recipe_data: dict | None = None):
    """The reader of --data in --layout and its options for a run's encoder, prepared as in pretraining."""
    from .bench import _reader, _reader_options

    modality, dims, data = _run_geometry(method, config, args)
    if args.layout == "folder":
        raise ConfigError("evaluation needs labels: --layout classes (train/ and test/ class folders), "
                          "chestxray14, chexpert or msd")
    layout_options = {"uncertainty": args.uncertainty} if args.uncertainty else {}
    reader = _reader(args.layout, modality, dims, ("train", "test"), layout_options)
    data = {k: v for k, v in data.items() if k not in ("modality", "spatial_dims", "layout", "cache", "cache_dir",
                                                         "crops_per_volume", "volume_data", "roi", "normal_only")}
    data.update(recipe_data or {})
    options = _reader_options(method.encoder, data, {"augment": augment, "cache": "memory" if dims == 3 else "none"})
    return reader, options


def _labelled_sets(args, method, config: dict, augment: bool, recipe_data: dict | None = None):
    """(train, test) datasets for a run's encoder from --data in --layout, prepared as in pretraining."""
    reader, options = _labelled_reader(args, method, config, augment, recipe_data)
    return reader(Path(args.data), **options)


def _encoders(method, config: dict, compare: bool, seed: int) -> dict:
    from mimkit.benchmarks.runner import random_init

    encoders = {"pretrained": method.encoder}
    if compare:
        encoders["random"] = random_init(method, config, seed).encoder
    return encoders


def _finish(args, rows: list[dict], columns: Sequence[str]) -> None:

    for row in rows:
        row.setdefault("data", f"{Path(args.data).resolve().name} ({args.layout})")
    update_metrics(args.run, {"results": rows})
    print(markdown_table(rows, columns))


def cmd_evaluate(args) -> None:
    method, config = load_run(args.run)
    if args.layout == "msd":
        raise ConfigError("segmentation is a fine-tuning protocol: use `mimkit-medical finetune --layout msd`")
    train, test = _labelled_sets(args, method, config, augment=False)
    options = {"knn": {"k": args.k}, "linear": {"seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})}}
    if "knn" in args.protocol and train.label_kind == "multilabel":
        raise ConfigError("kNN needs single-label data; ChestX-ray14 and CheXpert are multi-label: "
                          "use --protocol linear")
    rows = evaluate_encoders(_encoders(method, config, args.compare_random_init, args.seed), args.protocol, train,
                             test, options)
    _finish(args, rows, ["protocol", "init", "metric", "value", "num_train"])


RECIPE_DATA_KEYS = ("crop_scale", "hflip", "horizontal_flip", "mean", "std", "crop_pct", "flip_prob", "rotate90_prob",
                    "scale_intensity", "shift_intensity", "spacing", "intensity_range", "crop", "crop_pos", "crop_neg")


# A segmentation recipe's train keys: the BTCV recipe's names (steps, feature_size) and FineTuneConfig's.
SEGMENTATION_RECIPE_KEYS = ("steps", "warmup_steps", "lr", "weight_decay", "batch_size", "feature_size", "overlap",
                            "num_workers")


def _finetune_recipe(path: str | None, segmentation: bool = False) -> tuple[dict, dict]:
    """A fine-tuning recipe's (train options for core.evaluate.finetune, or for segmentation fine-tuning, and its
    data settings); its other keys (protocol, pretrained, evaluation, the hardware) describe the paper's setting."""
    import inspect

    from mimkit.core.evaluate import finetune

    if path is None:
        return {}, {}
    recipe = read_yaml_mapping(path)
    allowed = set(SEGMENTATION_RECIPE_KEYS) if segmentation else set(inspect.signature(finetune).parameters) - {
        "encoder", "train_set", "test_set", "return_model", "device"}
    train = {k: v for k, v in (recipe.get("train") or recipe.get("finetune") or {}).items() if k in allowed}
    data = {k: v for k, v in (recipe.get("data") or {}).items() if k in RECIPE_DATA_KEYS}
    if "eval_resize" in (recipe.get("data") or {}) and "img_size" in (recipe.get("data") or {}):
        data["crop_pct"] = recipe["data"]["img_size"] / recipe["data"]["eval_resize"]
    return train, data


def _segment(args, method, config: dict, train_options: dict, recipe_data: dict) -> list[dict]:
    """Segmentation fine-tuning of --data (a Decathlon layout) through the benchmark runner, as msd-segmentation
    with the run's modality and the recipe's settings."""
    from dataclasses import replace

    from mimkit.benchmarks.runner import run_task
    from mimkit.benchmarks.tasks import get_task

    reader, reader_options = _labelled_reader(args, method, config, augment=True, recipe_data=recipe_data)
    options = dict(train_options)
    for flag in ("steps", "batch_size", "lr"):
        if getattr(args, flag):
            options[flag] = getattr(args, flag)
    if "steps" in options:
        options["max_steps"] = options.pop("steps")
    if "feature_size" in options:
        options["head_options"] = {"feature_size": options.pop("feature_size")}
    task = replace(get_task("msd-segmentation"), reader=reader)
    rows = run_task(task, method, args.data, run_config=config, compare_random_init=args.compare_random_init,
                    seed=args.seed, reader_options=reader_options, **options)
    return [{"protocol": "segmentation", "init": row["init"], "metric": task.value_key, "value": row["value"],
             "num_train": row["num_train"], "steps": row["settings"]["max_steps"],
             "dice_per_class": row["details"]["dice_per_class"]} for row in rows]


def cmd_finetune(args) -> None:
    method, config = load_run(args.run)
    segmentation = args.layout == "msd"
    train_options, recipe_data = _finetune_recipe(args.config, segmentation)
    if segmentation:
        _finish(args, _segment(args, method, config, train_options, recipe_data),
                ["protocol", "init", "metric", "value", "num_train", "steps"])
        return
    train, test = _labelled_sets(args, method, config, augment=True, recipe_data=recipe_data)
    encoders = _encoders(method, config, args.compare_random_init, args.seed)
    options = dict(train_options, seed=args.seed)
    if args.steps:
        raise ConfigError("--steps is for segmentation (--layout msd); classification fine-tuning counts --epochs")
    for flag in ("epochs", "batch_size", "lr"):
        if getattr(args, flag):
            options[flag] = getattr(args, flag)
    subset = few_labels(train, args.labels_per_class, args.seed) if args.labels_per_class else None
    if subset is not None and train.label_kind != "class":
        raise ConfigError("--labels-per-class needs single-label class folders (--layout classes)")
    rows = evaluate_encoders(encoders, ["finetune"], train, test, {"finetune": options}, subset)
    _finish(args, rows, ["protocol", "init", "metric", "value", "num_train"])


# ============================================================================================ anomaly
def _save_map(image, amap, path: Path, score: float) -> None:
    """Side by side: the image (first channel, percentile-scaled) and its anomaly map (heat colours)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    import numpy as np

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


def cmd_anomaly(args) -> None:
    import numpy as np


    from .bench import _binary_auc, anomaly_scores, normal_labels

    method, config = load_run(args.run)
    if not hasattr(method, "anomaly_map"):
        raise ConfigError(f"{args.run} is a {method.method_name!r} run; anomaly scores come from memmc_mae runs "
                          f"(mimkit-medical pretrain --method memmc_mae on normal images)")
    modality, dims, data = _run_geometry(method, config, args)
    if dims != 2:
        raise ConfigError("anomaly maps are written for 2D images; this run's encoder is 3D")
    encoder = method.encoder
    root = Path(args.data)
    has_classes = root.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    pre = preprocessing_from({"img_size": tuple(encoder.img_size)}, modality, 2)
    dataset = build_dataset(root, "classes" if has_classes else "folder", pre, train=False,
                            patch_size=tuple(encoder.patch_size), in_chans=encoder.in_chans, mean=data.get("mean"),
                            std=data.get("std"), strict=args.strict_data)
    scores, _, maps = anomaly_scores(method, dataset, batch_size=args.batch_size, seed=args.seed, with_maps=True)
    out = Path(args.out) if args.out else Path(args.run) / "anomaly"
    (out / "maps").mkdir(parents=True, exist_ok=True)
    labels = normal_labels(dataset, args.normal_class) if has_classes else None
    with (out / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score"] + (["anomalous"] if labels is not None else []))
        for i, item in enumerate(dataset.items):
            writer.writerow([item["image"], f"{scores[i]:.6g}"] + ([int(labels[i])] if labels is not None else []))
    order = np.argsort(-scores)[: args.maps]  # the most anomalous first
    for rank, i in enumerate(order):
        _save_map(dataset.eval_view()[int(i)]["image"], maps[int(i)],
                  out / "maps" / f"{rank:03d}_{Path(dataset.items[int(i)]['image']).stem}.png", float(scores[i]))
    summary = {"images": len(dataset), "skipped_files": len(dataset.skipped), "scores": str(out / "scores.csv"),
               "maps": str(out / "maps")}
    if labels is not None:
        auc = _binary_auc(labels, scores)
        summary.update(auroc=None if auc is None else round(auc, 4), anomalous=int(labels.sum()),
                       normal=int((labels == 0).sum()))
        if auc is not None:
            update_metrics(args.run, {"results": [{"protocol": "anomaly", "init": "pretrained", "metric": "auroc",
                                                   "value": round(100 * auc, 2), "data": root.resolve().name}]})
    print(json.dumps(summary, indent=2))


# ============================================================================================ bench
def cmd_bench(args) -> None:
    from mimkit.benchmarks.report import compare, comparison_table
    from mimkit.benchmarks.runner import run_task
    from mimkit.benchmarks.tasks import get_task, list_tasks

    if args.list or not args.task:
        for task in list_tasks("medical"):
            print(f"{task.name:32s} {task.protocol:12s} {task.metric:8s} {task.dataset}")
        if not args.list:
            print("\n(choose one with --task NAME --root DIR --run RUN)", file=sys.stderr)
        return
    if not args.root or not args.run:
        raise ConfigError("--task needs --root (the data folder) and --run (a pretraining run)")
    method, config = load_run(args.run)
    task = get_task(args.task)
    if task.domain != "medical":
        raise ConfigError(f"task {args.task!r} belongs to the {task.domain} domain; `mimkit-medical bench` runs "
                          f"medical tasks only")
    protocol = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "steps": args.steps}
    allowed = {"segmentation": ("steps", "batch_size", "lr"), "anomaly": ("batch_size",),
               "finetune": ("epochs", "batch_size", "lr"), "linear": ("epochs", "batch_size", "lr"),
               "knn": ("batch_size",)}.get(task.protocol, ())
    ignored = [k for k, v in protocol.items() if v is not None and k not in allowed]
    if ignored:
        raise ConfigError(f"--{ignored[0].replace('_', '-')} does not apply to the {task.protocol} protocol of "
                          f"{args.task}")
    options = {"max_steps" if k == "steps" else k: v for k, v in protocol.items() if v is not None}
    rows = run_task(task, method, args.root, run_config=config, compare_random_init=args.compare_random_init,
                    seed=args.seed, **options)
    for row in rows:
        row["method"] = config.get("method", method.method_name)
    update_metrics(args.run, {"results": rows})
    table = []
    for row in rows:
        matched = compare([{k: v for k, v in row.items()
                            if k in ("task", "data", "protocol", "metric", "method", "model", "value")}])
        if row["init"] != "pretrained":  # the comparison row says which encoder it is
            for entry in matched:
                entry["method"] = f"{entry['method']} [{row['init']} init]"
        table += matched
    out = Path(args.out) if args.out else Path(args.run)
    print(comparison_table(table, out / f"report_{args.task}"), end="")
    for row in rows:
        print(f"{row['init']}: {row['metric']} {row['value']} on {row['num_test']} test inputs "
              f"({row['num_train']} training, {row['skipped_files']} files skipped)", file=sys.stderr)


# ============================================================================================ recipes, synthetic
def _recipe_files() -> dict[str, object]:
    folder = resources.files("mimkit.medical").joinpath("recipes")
    return {entry.name[:-5]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def cmd_recipes(args) -> None:
    recipes = _recipe_files()
    if not recipes:
        raise ConfigError("no recipes found in the installed mimkit.medical package (recipes/*.yaml is package data)")
    if args.name:
        if args.name not in recipes:
            raise ConfigError(f"unknown recipe {args.name!r}; available: {', '.join(sorted(recipes))}")
        print(recipes[args.name].read_text(), end="")
        return
    for name in sorted(recipes):
        text = recipes[name].read_text()
        first = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
        content = yaml.safe_load(text) or {}
        print(f"{name:28s} {str(content.get('method', '')):12s} {first}")
    print("\nshow one: mimkit-medical recipes NAME; use one: mimkit-medical pretrain --config FILE "
          "(save it with `mimkit-medical recipes NAME > FILE`)", file=sys.stderr)


def cmd_synthetic(args) -> None:
    from .bench import SYNTHETIC_TASK_DATA

    kinds = SYNTHETIC_KINDS if args.kind == ["all"] else args.kind
    tasks = {kind: name for name, kind in SYNTHETIC_TASK_DATA.items()}
    for kind in kinds:
        folder = write_synthetic(args.out, kind, seed=args.seed, size=args.size)
        print(f"{kind:12s} {folder}   (task {tasks[kind]})")


# ============================================================================================ parser
def _add_medical_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("medical data")
    group.add_argument("--modality", choices=MODALITIES,
                       help="ct, mr, xray, oct or fundus: picks readers, intensity transforms and the default method "
                            "(ct/mr: hiend_mae, 3D; xray: thorax_mae; oct/fundus: uni4eye)")
    group.add_argument("--spatial-dims", type=int, choices=(2, 3), help="2D images or 3D volumes (default: ct/mr 3, "
                       "others 2)")
    group.add_argument("--layout", choices=LAYOUTS, help="folder (plain, unlabelled; default), classes (class "
                       "sub-folders), msd (dataset.json), chestxray14, chexpert")
    group.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                       help="resample volumes to this voxel spacing in mm (one value or three; Hi-End-MAE: 1.5)")
    group.add_argument("--hu-window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="CT intensity window in HU, scaled to [0, 1] (default for ct: -175 250)")
    group.add_argument("--roi", type=int, nargs="+", help="3D sub-volume size: one value or D H W (default 96)")
    group.add_argument("--slices", action="store_true", help="train a 2D model on random slices of 3D volumes")
    group.add_argument("--crops-per-volume", type=int, help="random sub-volumes drawn from each volume per pass")
    group.add_argument("--cache", choices=CACHES, help="keep decoded, resampled inputs: memory (MONAI CacheDataset; "
                       "default for volumes), disk (PersistentDataset, with --cache-dir) or none (default for 2D)")
    group.add_argument("--cache-dir", help="folder for --cache disk")
    group.add_argument("--normal-only", action="store_true",
                       help="pretrain on DATA/normal only (anomaly detection trains on normal images)")
    group.add_argument("--volume-data", help="a folder of 3D volumes to pair with the 2D --data images in unified "
                       "2D + 3D batches (uni4eye)")


def _add_labelled_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a pretraining run folder (mimkit-medical pretrain --out)")
    parser.add_argument("--data", required=True, help="the labelled data folder (train and test splits inside)")
    parser.add_argument("--layout", required=True, choices=[l for l in LAYOUTS if l != "folder"],
                        help="classes: DATA/train/<class>/ and DATA/test/<class>/; chestxray14: Data_Entry_2017.csv "
                             "with the official split lists; chexpert: train.csv + valid.csv (the test split); msd: "
                             "dataset.json with training and validation lists (segmentation, finetune only)")
    parser.add_argument("--modality", choices=MODALITIES, help="default: the run's modality")
    parser.add_argument("--uncertainty", choices=UNCERTAINTY_POLICIES,
                        help="CheXpert uncertain (-1) labels: ones (U-Ones, default) or zeros (U-Zeros)")
    parser.add_argument("--compare-random-init", action="store_true",
                        help="also evaluate the same architecture at random initialisation, side by side")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimkit-medical",
        description="Masked-image-modeling for medical images: CT and MR volumes (NIfTI, DICOM), chest X-rays "
                    "(16-bit PNG/TIFF, DICOM), OCT and fundus photographs, read through MONAI. Nothing is downloaded.",
        epilog="Try it without data: `mimkit-medical synthetic --out data`, then `mimkit-medical pretrain --data "
               "data/organs --layout msd --modality ct --out runs/ct ...`. Each command has its own --help.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pre = sub.add_parser("pretrain", help="pretrain a method on medical images or volumes",
                         description="Pretrain any registered method (default per modality) on a folder of medical "
                         "images or volumes. CT: orientation RAS, --spacing resampling, HU window, foreground crop, "
                         "random --roi sub-volumes; MR: z-score inside the body; X-ray/OCT/fundus: random resized "
                         "crops. Unusable files (wrong dimensions, mixed DICOM series, NaN voxels, a spacing that "
                         "leaves the volume smaller than the ROI) are skipped and counted, or stop the run with "
                         "--strict-data. Writes RUN/config.yaml, metrics.json, checkpoints/, model.safetensors and "
                         "pictures/ like `mimkit pretrain`.")
    add_pretrain_arguments(pre, default_method="per modality")
    _add_medical_data_arguments(pre)
    pre.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("evaluate", help="frozen-encoder evaluation: kNN, linear probe (AUC for multi-label)",
                        description="Evaluate a run's frozen encoder on labelled data: kNN and linear probe for class "
                        "folders (accuracy), linear probe for ChestX-ray14 / CheXpert (macro ROC-AUC over the "
                        "findings). Results are printed and appended to RUN/metrics.json.")
    _add_labelled_arguments(ev)
    ev.add_argument("--protocol", nargs="+", choices=["knn", "linear"], default=["linear"])
    ev.add_argument("--epochs", type=int, help="linear-probe epochs (default 90)")
    ev.add_argument("--k", type=int, default=20, help="neighbours for kNN (default 20)")
    ev.set_defaults(func=cmd_evaluate)

    ft = sub.add_parser("finetune", help="fine-tune a run's encoder: classification, multi-label AUC, 3D segmentation",
                        description="Fine-tune a copy of a run's encoder end to end (MAE recipe, layer-wise lr decay) "
                        "on class folders (accuracy) or ChestX-ray14 / CheXpert (macro ROC-AUC); with --layout msd a "
                        "UNETR-style decoder over the ViT is trained for 3D segmentation (mean Dice, MONAI's "
                        "DiceMetric). --config takes a fine-tuning recipe such as thorax_mae_finetune.")
    _add_labelled_arguments(ft)
    ft.add_argument("--config", help="fine-tuning recipe YAML (its train section: epochs, base_lr, layer_decay, ...)")
    ft.add_argument("--epochs", type=int, help="classification fine-tuning epochs (default 50, or the recipe's)")
    ft.add_argument("--steps", type=int, help="segmentation fine-tuning steps (default 500, or the recipe's)")
    ft.add_argument("--batch-size", type=int)
    ft.add_argument("--lr", type=float, help="absolute learning rate")
    ft.add_argument("--labels-per-class", type=int, help="fine-tune on only this many labelled images per class")
    ft.set_defaults(func=cmd_finetune)

    an = sub.add_parser("anomaly", help="score images for anomalies with a memmc_mae run; AUC and anomaly maps",
                        description="Score every image of DATA with a MemMC-MAE run (trained on normal images): the "
                        "reconstruction error of each patch while it is masked. DATA with class sub-folders gives the "
                        "image-level ROC-AUC (--normal-class against all others). Writes scores.csv and PNG anomaly "
                        "maps of the most anomalous images to --out (default RUN/anomaly).")
    an.add_argument("--run", required=True)
    an.add_argument("--data", required=True, help="images to score: a flat folder, or class sub-folders")
    an.add_argument("--normal-class", default="normal", help="the class folder of normal images (case-insensitive)")
    an.add_argument("--modality", choices=MODALITIES, help="default: the run's modality")
    an.add_argument("--out", help="output folder (default RUN/anomaly)")
    an.add_argument("--maps", type=int, default=16, help="anomaly maps to save (the highest scores first)")
    an.add_argument("--batch-size", type=int, default=16)
    an.add_argument("--seed", type=int, default=0, help="seed of the covering masks")
    an.add_argument("--strict-data", action="store_true", help="stop at the first unreadable file")
    an.set_defaults(func=cmd_anomaly)

    be = sub.add_parser("bench", help="run a registered medical benchmark task, beside the published numbers",
                        description="Run one task of mimkit.benchmarks' medical registry (ChestX-ray14 / CheXpert "
                        "AUC, BTCV / MSD Dice, OCT / fundus accuracy, anomaly AUC, and synthetic-* versions on the "
                        "data `mimkit-medical synthetic` writes) with a run's encoder; prints the result beside the "
                        "published figures of the same method and model and writes RUN/report_TASK.md/.csv.")
    be.add_argument("--list", action="store_true", help="list the medical tasks")
    be.add_argument("--task", help="task name (see --list)")
    be.add_argument("--root", help="the task's data folder (a local copy; never downloaded)")
    be.add_argument("--run", help="a pretraining run folder")
    be.add_argument("--compare-random-init", action="store_true")
    be.add_argument("--epochs", type=int, help="fine-tuning / linear-probe epochs")
    be.add_argument("--steps", type=int, help="segmentation fine-tuning steps")
    be.add_argument("--batch-size", type=int)
    be.add_argument("--lr", type=float)
    be.add_argument("--seed", type=int, default=0)
    be.add_argument("--out", help="where the report goes (default: the run folder)")
    be.set_defaults(func=cmd_bench)

    rc = sub.add_parser("recipes", help="list the medical recipes, or print one",
                        description="The papers' settings as YAML recipes (each value annotated with its source), "
                        "installed with the package. Without NAME: list them.")
    rc.add_argument("name", nargs="?")
    rc.set_defaults(func=cmd_recipes)

    sy = sub.add_parser("synthetic", help="write small synthetic data sets in the public layouts (tests, demo)",
                        description="Write small data sets that mimkit makes itself, in the layouts of the public "
                        "ones: CT-like volumes with organ label maps (Decathlon dataset.json, from MONAI's "
                        "create_test_image_3d), 16-bit radiographs (ChestX-ray14 and CheXpert CSVs), OCT and fundus "
                        "class folders, and an anomaly set with lesion masks. Each matches a synthetic-* bench task.")
    sy.add_argument("--out", required=True, help="folder to write into (one sub-folder per kind)")
    sy.add_argument("--kind", nargs="+", choices=["all", *SYNTHETIC_KINDS], default=["all"])
    sy.add_argument("--size", type=int, help="image / volume side in pixels (default 32)")
    sy.add_argument("--seed", type=int, default=0)
    sy.set_defaults(func=cmd_synthetic)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
