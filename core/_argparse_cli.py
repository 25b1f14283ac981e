"""TRANSITIONAL: the argparse command parts the medical and remote-sensing commands still use until they move to core.config (removed then).

Every option can also come from a recipe (`--config recipe.yaml` with sections `method`, `model`,
`train`, `data`); flags given on the command line win over the recipe.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from .errors import ConfigError, MimkitError

log = logging.getLogger("mimkit")

TRAIN_FLAGS = ("batch_size", "max_steps", "max_time", "base_lr", "lr", "min_lr", "weight_decay", "warmup_steps",
               "accumulate_grad_batches", "precision", "accelerator", "devices", "num_nodes", "strategy",
               "num_workers", "checkpoint_every", "picture_every", "log_every", "seed")
MODEL_FLAGS = ("img_size", "patch_size", "in_chans", "size", "embed_dim", "depth", "num_heads", "mask_ratio")
DATA_KEYS = ("img_size", "crop_scale", "hflip", "mean", "std", "crop_pct")


# ------------------------------------------------------------------------------------------ recipes
def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file holding a mapping; a clear error naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe {path} is not valid YAML: {error}") from None
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections (method, model, train, data)")
    return recipe


def read_recipe(path: str | Path | None) -> dict:
    """A pretraining recipe: {method, model: {...}, train: {...}, data: {...}}; a clear error for anything else."""
    if path is None:
        return {}
    recipe = read_yaml_mapping(path)
    allowed = {"method", "model", "train", "data", "finetune", "description", "source", "evaluate"}
    unknown = set(recipe) - allowed
    if unknown:
        raise ConfigError(f"recipe {path}: unknown section(s) {sorted(unknown)}; expected {sorted(allowed)}")
    return recipe


def recipe_train_settings(train: dict, dataset_size: int, batch_size: int, accumulate: int, world: int) -> dict:
    """Recipe training keys -> TrainConfig fields; papers' `epochs` / `warmup_epochs` become steps."""
    from .train import TrainConfig

    train = dict(train)
    steps_per_epoch = max(1, dataset_size // (batch_size * accumulate * world))
    if "epochs" in train:
        train["max_steps"] = int(train.pop("epochs") * steps_per_epoch)
    if "warmup_epochs" in train:
        train["warmup_steps"] = int(train.pop("warmup_epochs") * steps_per_epoch)
    fields = set(TrainConfig.__dataclass_fields__)
    unknown = set(train) - fields
    if unknown:
        raise ConfigError(f"unknown training setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    return train


def parse_value(text: str) -> Any:
    """`--set key=value`: the value is read as YAML (numbers, lists, booleans)."""
    return yaml.safe_load(text)


def parse_sets(items: Sequence[str]) -> dict:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


# ------------------------------------------------------------------------------------------ pretrain
def add_pretrain_arguments(parser: argparse.ArgumentParser, default_method: str = "mae") -> None:
    """The pretraining flags shared by `mimkit pretrain` and the domain commands."""
    parser.add_argument("--data", required=True, help="image folder (flat and unlabelled, or class subfolders)")
    parser.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    parser.add_argument("--method", default=None, help=f"method name (default {default_method}; see `mimkit methods`)")
    parser.add_argument("--config", help="recipe YAML with method/model/train/data sections")
    parser.add_argument("--pretrained", metavar="PATH",
                        help="start from local weights: a mimkit run's model.safetensors, an official MAE checkpoint "
                        "(with or without decoder) or a timm ViT state dict (format detected; nothing downloaded)")
    model = parser.add_argument_group("model")
    model.add_argument("--img-size", type=int, nargs="+", help="image size: one value, or H W (or D H W for 3D)")
    model.add_argument("--patch-size", type=int, nargs="+", help="patch size (default 16)")
    model.add_argument("--in-chans", type=int, help="channels (default: read from the data)")
    model.add_argument("--size", help="named encoder size: tiny, small, base, large, huge")
    model.add_argument("--embed-dim", type=int)
    model.add_argument("--depth", type=int)
    model.add_argument("--num-heads", type=int)
    model.add_argument("--mask-ratio", type=float)
    model.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other method argument, e.g. --set decoder_depth=4 (see `mimkit methods NAME`)")
    train = parser.add_argument_group("training")
    train.add_argument("--max-steps", type=int, help="optimiser steps (default 1000)")
    train.add_argument("--max-time", type=float, help="stop after this many seconds (a checkpoint is kept)")
    train.add_argument("--batch-size", type=int, help="per device (default 64)")
    train.add_argument("--accumulate-grad-batches", "--accumulate", dest="accumulate_grad_batches", type=int)
    train.add_argument("--base-lr", type=float, help="lr = base_lr x effective batch / 256 (default 1.5e-4)")
    train.add_argument("--lr", type=float, help="absolute learning rate (overrides --base-lr)")
    train.add_argument("--min-lr", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--warmup-steps", type=int, help="linear warmup (default 5%% of the steps)")
    train.add_argument("--precision", choices=["32", "bf16-mixed"], help="default 32; bf16-mixed autocasts")
    train.add_argument("--accelerator", help="cpu, gpu or auto (default)")
    train.add_argument("--devices", type=int, help="processes/GPUs on this machine (DDP when > 1)")
    train.add_argument("--num-nodes", type=int)
    train.add_argument("--strategy", help="Lightning strategy: auto, ddp, fsdp, ...")
    train.add_argument("--num-workers", type=int, help="data loading processes (default 2)")
    train.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    train.add_argument("--picture-every", type=int, help="steps between reconstruction pictures (default: end only)")
    train.add_argument("--log-every", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--strict-data", action="store_true", help="stop at the first unreadable file instead of skipping it")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")


def _flag(args, name):
    value = getattr(args, name, None)
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else list(value)
    return value


def resolve_pretrain(args, default_method: str = "mae") -> dict:
    """Merge recipe and flags into one resolved run configuration."""
    recipe = read_recipe(args.config)
    method = args.method or recipe.get("method") or default_method
    model = dict(recipe.get("model") or {})
    data = dict(recipe.get("data") or {})
    train = dict(recipe.get("train") or {})
    for name in MODEL_FLAGS:
        if _flag(args, name) is not None:
            model[name] = _flag(args, name)
    model.update(parse_sets(args.set))
    if "img_size" not in model:
        model["img_size"] = data.get("img_size", 224)
    data["img_size"] = model["img_size"]
    for name in TRAIN_FLAGS:
        if _flag(args, name) is not None:
            train[name] = _flag(args, name)
    # a step count given on the command line wins over the recipe's epochs
    if _flag(args, "max_steps") is not None:
        train.pop("epochs", None)
    if _flag(args, "warmup_steps") is not None:
        train.pop("warmup_epochs", None)
    return {"method": method, "model": model, "train": train, "data": data}


def build_pretrain_dataset(data_dir: str, data: dict, model: dict, strict: bool):
    """The generic image-folder dataset with MAE augmentation (domains pass their own builder)."""
    from .data import ImageFolderDataset, mae_train_transform

    img_size = model["img_size"]
    dataset = ImageFolderDataset(
        data_dir, img_size=img_size, patch_size=model.get("patch_size", 16), in_chans=model.get("in_chans"),
        transform=mae_train_transform(img_size, scale=data.get("crop_scale", (0.2, 1.0)), hflip=data.get("hflip", True)),
        mean=data.get("mean"), std=data.get("std"), labelled=False, strict=strict)
    data["mean"], data["std"] = dataset.stats
    return dataset


def run_pretrain(args, dataset_builder: Callable = build_pretrain_dataset, default_method: str = "mae") -> dict:
    """Resolve the configuration, build the data, train, and report (shared by the domain commands)."""
    from .train import TrainConfig, pretrain

    run = resolve_pretrain(args, default_method)
    out = Path(args.out)
    if args.resume and (out / "config.yaml").exists():  # continue with the stored settings
        stored = yaml.safe_load((out / "config.yaml").read_text())
        stored["train"].update({k: v for k, v in run["train"].items() if k in ("max_steps", "max_time", "num_workers")})
        run = stored
    dataset = dataset_builder(args.data, run["data"], run["model"], args.strict_data)
    model = run["model"]
    if model.get("in_chans") is None:
        model["in_chans"] = dataset.in_chans
    for key in ("img_size", "patch_size"):
        if isinstance(model.get(key), tuple):
            model[key] = list(model[key])
    train = recipe_train_settings(run["train"], len(dataset), run["train"].get("batch_size", 64),
                                  run["train"].get("accumulate_grad_batches", 1), run["train"].get("devices", 1))
    run["train"] = train
    config = TrainConfig(**train, progress=not args.no_progress)
    from .registry import method_arguments
    if "total_steps" in method_arguments(run["method"]) and model.get("total_steps") is None:
        model["total_steps"] = config.max_steps  # schedules inside a method (SelectiveMAE) span the whole run
    skipped = len(getattr(dataset, "skipped", ()))
    run["data"]["skipped_files"] = skipped
    print(f"mimkit: pretraining {run['method']} on {len(dataset)} images from {args.data}"
          f"{f' ({skipped} unreadable files skipped)' if skipped else ''}; effective batch {config.effective_batch}, "
          f"lr {config.learning_rate:.3g}, {config.max_steps} steps -> {out}", file=sys.stderr)
    source = {"data": str(args.data), **({"pretrained": str(args.pretrained)} if args.pretrained else {})}
    summary = pretrain(run["method"], dataset, out, config, method_config=model, resume=args.resume,
                       run_config={"method": run["method"], "model": model, "train": train, "data": run["data"],
                                   "source": source}, pretrained=args.pretrained)
    if summary:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return summary


# ------------------------------------------------------------------------------------------ evaluate
def markdown_table(rows: list[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def cmd_evaluate(args) -> None:
    from .registry import build_method
    from .data import few_labels, labelled_dataset
    from .evaluate import evaluate_encoders
    from .runs import load_run, update_metrics

    method, config = load_run(args.run)
    data = config.get("data", {})
    train_set = labelled_dataset(args.train, method.encoder, data, "train")
    test_set = labelled_dataset(args.test, method.encoder, data, "test")
    encoders = {"pretrained": method.encoder}
    if args.compare_random_init:
        import torch
        torch.manual_seed(args.seed)
        encoders["random"] = build_method(config.get("method", method.method_name), **config.get("model", {})).encoder
    finetune_set = few_labels(train_set, args.labels_per_class, args.seed) if args.labels_per_class else None
    options = {"knn": {"k": args.k}, "linear": {"seed": args.seed},
               "finetune": {"seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})}}
    if args.epochs and "linear" in args.protocol:
        options["linear"]["epochs"] = args.epochs
    rows = evaluate_encoders(encoders, args.protocol, train_set, test_set, options, finetune_set)
    for row in rows:
        row["data"] = Path(args.test).resolve().parent.name or str(args.test)
    update_metrics(args.run, {"results": rows})
    print(markdown_table(rows, ["protocol", "init", "metric", "value", "num_train"]))


# ------------------------------------------------------------------------------------------ others
def cmd_reconstruct(args) -> None:
    import torch

    from .data import ImageFolderDataset, eval_transform
    from .runs import load_run
    from .train import save_reconstruction

    method, config = load_run(args.run)
    encoder = method.encoder
    data = config.get("data", {})
    dataset = ImageFolderDataset(args.data, img_size=tuple(encoder.img_size), patch_size=encoder.patch_size,
                                 in_chans=encoder.in_chans, transform=eval_transform(tuple(encoder.img_size), 1.0),
                                 mean=data.get("mean"), std=data.get("std"), labelled=False)
    items = [dataset[i] for i in range(min(args.count, len(dataset)))]
    batch = {"image": torch.stack([item["image"] for item in items])}
    out = Path(args.out)
    path = save_reconstruction(method, batch, out)
    if path is None:
        raise ConfigError(f"method {method.method_name!r} predicts no pixels, so there is nothing to show")
    print(f"wrote {path}")


def cmd_export(args) -> None:
    from .checkpoints import export_timm

    source = Path(args.checkpoint) if args.checkpoint else Path(args.run) / "model.safetensors"
    if not source.is_file():
        raise ConfigError(f"nothing to export: {source} does not exist")
    path = export_timm(source, args.out)
    print(f"wrote the encoder as a timm state dict: {path}")


def cmd_methods(args) -> None:
    from .registry import list_methods, method_arguments, method_class

    if args.name:
        cls = method_class(args.name)
        print(f"{args.name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for key, value in method_arguments(args.name).items():
            print(f"  {key} = {value!r}")
        return
    for name in list_methods():
        doc = (method_class(name).__doc__ or "").strip().splitlines()
        print(f"{name:16s} {doc[0] if doc else ''}")


def cmd_info(args) -> None:
    import platform

    import torch

    from . import __version__
    from .registry import list_methods

    info = {"mimkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "bf16_cpu": torch.backends.mkldnn.is_available(), "methods": list_methods()}
    if args.run:
        run = Path(args.run)
        metrics = run / "metrics.json"
        info["run"] = json.loads(metrics.read_text()) if metrics.exists() else {}
        info["run"].get("train", {}).pop("history", None)
    print(json.dumps(info, indent=2))


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, steps=args.steps, quick=args.quick, precision=args.precision, num_workers=args.num_workers)


def cmd_pretrain(args) -> None:
    run_pretrain(args)


# ------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimkit", description="Masked-image-modeling pretraining, evaluation and export.",
        epilog="Start with `mimkit demo --out runs/demo`; each command has its own --help.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="pretrain a small MAE on embedded real images, evaluate it against random init",
                          description="The main job, no download: writes scikit-learn's handwritten digits as PNG "
                          "folders, pretrains a small MAE on the unlabelled training images, then compares the "
                          "pretrained encoder with the same encoder at random initialisation under kNN, linear probe "
                          "and fine-tuning with 10 labels per class. Writes report.md, metrics.json and pictures.")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--steps", type=int, help="pretraining steps (default 1200)")
    demo.add_argument("--quick", action="store_true", help="a smoke run: 60 steps and short evaluations (its numbers mean nothing)")
    demo.add_argument("--precision", choices=["32", "bf16-mixed"], default="32")
    demo.add_argument("--num-workers", type=int, default=1)
    demo.set_defaults(func=cmd_demo)

    pre = sub.add_parser("pretrain", help="pretrain a method on a folder of images",
                         description="Pretrain any registered method on an image folder (PNG/JPEG/TIFF incl. "
                         "16-bit, .npy of any channel count). Writes RUN/config.yaml, metrics.json, "
                         "checkpoints/ (last.ckpt for --resume), model.safetensors and pictures/.")
    add_pretrain_arguments(pre)
    pre.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("evaluate", help="evaluate a run's encoder: knn, linear probe, fine-tune",
                        description="Evaluate the pretrained encoder of RUN on labelled folders (one subfolder "
                        "per class). Results are printed and appended to RUN/metrics.json.")
    ev.add_argument("--run", required=True, help="a pretraining run folder")
    ev.add_argument("--protocol", nargs="+", choices=["knn", "linear", "finetune"], default=["knn"])
    ev.add_argument("--train", required=True, help="labelled training folder")
    ev.add_argument("--test", required=True, help="labelled test folder")
    ev.add_argument("--compare-random-init", action="store_true",
                    help="also evaluate the same architecture at random initialisation, side by side")
    ev.add_argument("--labels-per-class", type=int, help="fine-tune on only this many labelled images per class")
    ev.add_argument("--epochs", type=int, help="epochs for linear probe / fine-tuning")
    ev.add_argument("--k", type=int, default=20, help="neighbours for kNN (default 20)")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=cmd_evaluate)

    rec = sub.add_parser("reconstruct", help="save a reconstruction grid of a run on some images")
    rec.add_argument("--run", required=True)
    rec.add_argument("--data", required=True, help="folder of images")
    rec.add_argument("--out", required=True, help="PNG file to write")
    rec.add_argument("--count", type=int, default=8)
    rec.set_defaults(func=cmd_reconstruct)

    ex = sub.add_parser("export", help="write a run's encoder as a timm state dict")
    ex.add_argument("--run", help="a run folder (uses RUN/model.safetensors)")
    ex.add_argument("--checkpoint", help="or any mimkit / timm / official-MAE checkpoint")
    ex.add_argument("--out", required=True, help=".safetensors or .pth file to write")
    ex.set_defaults(func=cmd_export)

    me = sub.add_parser("methods", help="list registered methods, or one method's arguments")
    me.add_argument("name", nargs="?")
    me.set_defaults(func=cmd_methods)

    info = sub.add_parser("info", help="versions, threads, methods; with --run a run's summary")
    info.add_argument("--run")
    info.set_defaults(func=cmd_info)
    return parser


def quiet_lightning() -> None:
    """Lightning's start-up chatter (GPU/TPU availability, tips) hides what matters; keep its warnings."""
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen teachers are meant to be


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse and run; a MimkitError becomes one clear line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_lightning()
    try:
        args.func(args)
    except MimkitError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; --resume continues from the last checkpoint", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
