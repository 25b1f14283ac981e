"""The `mimkit` command: demo, pretrain, evaluate, finetune, embed, autoencoder, synthetic, shard, reconstruct, export,
methods, info.

Each command is a typed function (the Python API's, core.api, for the main ones); core.config derives its
flags, `--config FILE`, `--print_config` and dotted overrides from it. The short flags of earlier versions
(`--img-size 32`, `--max-steps 100`, `--set decoder_depth=4`) are spelled out to their dotted keys.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Callable, Literal, Sequence

from .config import Command, Tool, add_trainer_arguments, config_value
from .errors import ConfigError

# encoder settings a short flag may name (`--img-size`); inside the method's `encoder` object when it has one
ENCODER_KEYS = ("img_size", "patch_size", "in_chans", "size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                "spatial_dims", "drop_path_rate")
TRAIN_FLAGS = ("batch_size", "max_steps", "max_time", "epochs", "base_lr", "lr", "min_lr", "weight_decay",
               "warmup_steps", "accumulate_grad_batches", "precision", "accelerator", "devices", "num_nodes",
               "strategy", "num_workers", "checkpoint_every", "picture_every", "log_every", "seed")
PRETRAIN_ALIASES = {
    **{"--" + key.replace("_", "-"): f"--train.{key}" for key in TRAIN_FLAGS},
    "--accumulate": "--train.accumulate_grad_batches", "--no-progress": "--train.progress=false",
    "--compile": "--train.compile=true",
    "--mask-ratio": "--model.mask_ratio", "--data": "--data.root", "--strict-data": "--data.strict",
}


def model_alias(default_method: Callable[[list[str]], str]) -> Callable[[str, list[str]], str | None]:
    """Short encoder flags (and `--set` keys) to the method's dotted key: `--img-size` is `--model.img_size` for a
    method with flat arguments and `--model.encoder.img_size` for one that takes an encoder object."""
    def alias(flag: str, argv: list[str]) -> str | None:
        from .registry import method_arguments

        key = flag[2:].replace("-", "_")
        arguments = method_arguments(config_value(argv, "method") or default_method(argv))
        if key in arguments:
            return f"--model.{key}"
        if f"encoder.{key}" in arguments:
            return f"--model.encoder.{key}"
        return None
    return alias


def method_group(default_method: Callable[[list[str]], str]):
    """The `model` group: the chosen method's constructor arguments, typed."""
    def resolve(argv: list[str]):
        from .registry import method_class

        return method_class(config_value(argv, "method") or default_method(argv)), "__init__"
    return resolve


def pretrain_extras(default_method: Callable[[list[str]], str]):
    def extend(parser, argv: list[str]) -> None:
        from .registry import method_arguments

        add_trainer_arguments(parser)
        arguments = method_arguments(config_value(argv, "method") or default_method(argv))
        # the channel count is read from the data unless given
        key = "model.in_chans" if "in_chans" in arguments else "model.encoder.in_chans"
        try:
            parser.set_defaults({key: None})
        except KeyError:
            pass
    return extend


def resume_from_run(argv: list[str]) -> list[str]:
    """`--resume --out RUN` continues with the run's own settings: RUN/config.yaml first, then the flags."""
    if "--resume" not in argv and "--resume=true" not in argv:
        return argv
    out = config_value(argv, "out")
    if out is None:
        raise ConfigError("--resume needs --out RUN, the run to continue")
    stored = Path(str(out)) / "config.yaml"
    return ["--config", str(stored), *argv] if stored.is_file() else argv


def pretrain_command(data_class: type, default_method: Callable[[list[str]], str] = lambda argv: "mae",
                     description: str | None = None) -> Command:
    """`pretrain` for a tool whose data is `data_class` (core: image folders; domains: their own)."""
    from .api import pretrain

    return Command("pretrain", pretrain, "pretrain a method on unlabelled data, writing one run folder",
                   aliases=dict(PRETRAIN_ALIASES), groups={"model": method_group(default_method),
                                                           "data": lambda argv: (data_class, None)},
                   skip={"trainer"}, alias=model_alias(default_method), extend=pretrain_extras(default_method),
                   preprocess=resume_from_run, description=description,
                   epilog="Encoder flags --img-size, --patch-size, --in-chans, --size, --embed-dim, --depth, "
                   "--num-heads set the method's encoder settings (model.encoder.* or model.*); --set KEY=VALUE sets "
                   "model.KEY; --resume --out RUN continues RUN with its own config.yaml.")


def method_data(default: type, default_method: Callable[[list[str]], str] = lambda argv: "mae"):
    """The `data` group: the data class the chosen method names (`data_class`: mom's boxes), else `default`."""
    def resolve(argv: list[str]):
        from .registry import method_class

        return getattr(method_class(config_value(argv, "method") or default_method(argv)), "data_class", default), None
    return resolve


# ------------------------------------------------------------------------------------------ small commands
def synthetic(out: str, kind: list[Literal["digits", "objects"]] | None = None, objects: int = 1000,
              seed: int = 0) -> dict:
    """Write the project's small data sets from real pixels that packages ship.

    Args:
        out: the folder to write into (one subfolder per kind)
        kind: any of digits (scikit-learn's handwritten digits: pretrain/, train/, test/) and objects (scikit-image
            photographs with objects pasted at known boxes and distances, KITTI layout: train/, test/); default both
        objects: training images of the object set (its test split: 30% as many)
        seed: seed of the split (digits) and of the pasted objects
    """
    from .synthetic import write_digits, write_objects

    kinds = list(kind or ["digits", "objects"])
    written = {}
    if "digits" in kinds:
        written["digits"] = write_digits(Path(out) / "digits", seed=seed)
    if "objects" in kinds:
        if objects < 1:
            raise ConfigError(f"--objects must be at least 1, got {objects}")
        written["objects"] = write_objects(Path(out) / "objects", train=objects, test=max(1, round(0.3 * objects)),
                                           seed=seed)
    for name, folders in written.items():
        print(f"{name:8s} " + "  ".join(f"{split}: {path}" for split, path in folders.items()))
    return written


def reconstruct(run: str, data: str, out: str, count: int = 8) -> Path:
    """Save a reconstruction grid of a run on some images.

    Args:
        run: a pretraining run folder
        data: a folder of images
        out: the PNG file to write
        count: how many images
    """
    import torch

    from .data import ImageFolderDataset, eval_transform
    from .runs import load_run
    from .train import save_reconstruction

    method, config = load_run(run)
    encoder = method.encoder
    settings = config.get("data", {})
    dataset = ImageFolderDataset(data, img_size=tuple(encoder.img_size), patch_size=encoder.patch_size,
                                 in_chans=encoder.in_chans, transform=eval_transform(tuple(encoder.img_size), 1.0),
                                 mean=settings.get("mean"), std=settings.get("std"), labelled=False)
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    path = save_reconstruction(method, {"image": torch.stack([item["image"] for item in items])}, Path(out))
    if path is None:
        raise ConfigError(f"method {method.method_name!r} predicts no pixels, so there is nothing to show")
    print(f"wrote {path}")
    return path


def export(out: str, run: str | None = None, checkpoint: str | None = None) -> Path:
    """Write a run's encoder as a timm ViT state dict (loads strictly into timm's VisionTransformer).

    Args:
        out: the .safetensors or .pth file to write
        run: a run folder (its model.safetensors)
        checkpoint: or any mimkit, timm or official-MAE checkpoint
    """
    from .checkpoints import export_timm

    if (run is None) == (checkpoint is None):
        raise ConfigError("give exactly one of --run RUN and --checkpoint FILE")
    source = Path(checkpoint) if checkpoint else Path(run) / "model.safetensors"
    if not source.is_file():
        raise ConfigError(f"nothing to export: {source} does not exist")
    path = export_timm(source, out)
    print(f"wrote the encoder as a timm state dict: {path}")
    return path


def shard(folder: str, out: str, chunk_bytes: str = "64MB", num_workers: int = 1, overwrite: bool = False,
          format: Literal["litdata", "webdataset"] = "litdata", samples_per_shard: int = 1000) -> dict:
    """Write an image folder as shards that every `--data` reads in its place: LitData (decoded once) or WebDataset
    tars (the files' own bytes).

    Args:
        folder: a folder of images (flat, or one subfolder per class)
        out: the shard folder to write
        chunk_bytes: the size of one chunk file (LitData's chunk_bytes, e.g. 64MB)
        num_workers: processes decoding the images (LitData)
        overwrite: replace the shards already in --out
        format: litdata (chunks of decoded arrays) or webdataset (000000.tar, ...: KEY.png / .jpg / ... and KEY.cls)
        samples_per_shard: images per tar (webdataset)
    """
    from .shards import shard_summary, write_shards, write_webdataset

    if num_workers < 1:
        raise ConfigError(f"--num-workers must be at least 1, got {num_workers}")
    if format == "webdataset":
        meta = write_webdataset(folder, out, samples_per_shard=samples_per_shard, overwrite=overwrite)
    else:
        meta = write_shards(folder, out, chunk_bytes=chunk_bytes, num_workers=num_workers, overwrite=overwrite)
    print("\n".join(shard_summary(meta, out)))
    return meta


def methods(name: str | None = None) -> None:
    """List the registered methods, or one method's arguments and defaults.

    Args:
        name: a method to describe
    """
    from .registry import list_methods, method_arguments, method_class

    if name:
        cls = method_class(name)
        print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for key, value in method_arguments(name).items():
            print(f"  {key} = {value!r}")
        return
    for method in list_methods():
        doc = (method_class(method).__doc__ or "").strip().splitlines()
        print(f"{method:16s} {doc[0] if doc else ''}")


def info(run: str | None = None) -> None:
    """Versions, threads and methods; with a run, its summary.

    Args:
        run: a run folder
    """
    import platform

    import torch

    from . import __version__
    from .registry import list_methods
    from .runs import read_metrics

    summary = {"mimkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
               "bf16_cpu": torch.backends.mkldnn.is_available(), "methods": list_methods()}
    if run:
        summary["run"] = read_metrics(run)
        summary["run"].get("train", {}).pop("history", None)
    print(json.dumps(summary, indent=2))


def positional(name: str) -> Callable[[list[str]], list[str]]:
    """`mimkit methods mae` as well as `mimkit methods --name mae`."""
    def rewrite(argv: list[str]) -> list[str]:
        return [f"--{name}", argv[0], *argv[1:]] if argv and not argv[0].startswith("-") else argv
    return rewrite


def recipe_files(package: str) -> dict[str, object]:
    """The YAML recipes packaged in `package` (e.g. "mimkit.medical"), by name; found through importlib.resources,
    so they work from a plain install."""
    folder = resources.files(package).joinpath("recipes")
    if not folder.is_dir():
        return {}
    return {entry.name[:-5]: entry for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml")}


def recipes_command(package: str, tool: str, what: str, commands: dict[str, str] | None = None) -> Command:
    """`TOOL recipes [NAME]` for the recipes packaged in `package`: list them (name, the command that takes it,
    the recipe's first comment line) or print one to save, edit and pass as `TOOL COMMAND --config FILE`.
    `commands` names the command of a recipe by its method (default: `pretrain` when it has a method, else
    `finetune`)."""
    def recipes(name: str | None = None) -> None:
        import yaml

        found = recipe_files(package)
        if not found:
            raise ConfigError(f"no recipes found in the installed {package} package (recipes/*.yaml is package data)")
        if name:
            if name not in found:
                raise ConfigError(f"no recipe {name!r}; available: {', '.join(found)}")
            print(found[name].read_text(), end="")
            return
        for key, entry in found.items():
            text = entry.read_text()
            first = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
            method = (yaml.safe_load(text) or {}).get("method")
            command = (commands or {}).get(method, "pretrain") if method else "finetune"
            print(f"{key:28s} {command:15s} {first}")
        print(f"\nshow one: {tool} recipes NAME; use one: {tool} COMMAND --config FILE (save it with "
              f"`{tool} recipes NAME > FILE`)", file=sys.stderr)

    recipes.__doc__ = (f"List {what} (the papers' settings, each value annotated with its source), or print one."
                       "\n\n    Args:\n        name: the recipe to print (default: list them)\n    ")
    return Command("recipes", recipes, f"list {what}, or print one", preprocess=positional("name"))


def build_tool() -> Tool:
    from .api import embed, evaluate, finetune
    from .autoencoders import train_autoencoder
    from .data import ImageFolderData
    from .demo import run_demo

    pretrain = pretrain_command(ImageFolderData)  # a method that reads more than images names its data (mom: boxes)
    return Tool("mimkit", "Masked-image-modeling pretraining, evaluation, fine-tuning and export.", [
        Command("demo", run_demo, "pretrain a small MAE on embedded real images, evaluate it against random init"),
        dataclasses.replace(pretrain, groups={**pretrain.groups, "data": method_data(ImageFolderData)}),
        Command("evaluate", evaluate, "evaluate a run's encoder: knn, linear probe, fine-tune",
                aliases={"--protocol": "--protocol"}),
        Command("finetune", finetune, "fine-tune a run's encoder with a head (MAE's recipe), on Lightning",
                skip={"trainer"}, extend=lambda parser, argv: add_trainer_arguments(parser),
                aliases={"--epochs": "--finetune.epochs", "--batch-size": "--finetune.batch_size",
                         "--devices": "--finetune.devices", "--strategy": "--finetune.strategy",
                         "--precision": "--finetune.precision", "--seed": "--finetune.seed",
                         "--no-progress": "--finetune.progress=false"},
                preprocess=resume_from_run),
        Command("embed", embed, "write one embedding per image (safetensors or Parquet, with the file names)"),
        Command("autoencoder", train_autoencoder, "train a small KL autoencoder on your images: LMD's first stage",
                aliases={"--no-progress": "--progress=false"}),
        Command("synthetic", synthetic, "write the small data sets the tests and benchmarks use (digits; objects "
                "with boxes and distances for mom)"),
        Command("shard", shard, "write an image folder as LitData or WebDataset shards (read by --data like a folder)",
                preprocess=positional("folder")),
        Command("reconstruct", reconstruct, "save a reconstruction grid of a run on some images"),
        Command("export", export, "write a run's encoder as a timm state dict"),
        recipes_command("mimkit.core", "mimkit", "the core methods' recipes"),
        Command("methods", methods, "list registered methods, or one method's arguments",
                preprocess=positional("name")),
        Command("info", info, "versions, threads, methods; with --run a run's summary"),
    ], epilog="Start with `mimkit demo --out runs/demo`; each command has its own --help.")


def main(argv: Sequence[str] | None = None) -> int:
    return build_tool().run(argv)


if __name__ == "__main__":
    sys.exit(main())
