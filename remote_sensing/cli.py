"""The `mimkit-rs` command: remote-sensing pretraining, fine-tuning, evaluation, tiling, recipes, sensors, demo.

It reuses the core's pretraining flags and training loop (`mimkit.core.cli`); what it adds is how GeoTIFF data
is read (sensor, bands, reflectance scale, nodata, tiles of large scenes) and the remote-sensing benchmark tasks.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

from mimkit.core._argparse_cli import add_pretrain_arguments, resolve_pretrain, run_command, run_pretrain
from mimkit.core.runs import load_run, update_metrics
from mimkit.core.errors import CheckpointError, ConfigError

log = logging.getLogger("mimkit")

RASTER_KEYS = ("sensor", "bands", "scale", "offset", "nodata", "tile_size", "stride")


# ------------------------------------------------------------------------------------------ shared flags
def add_raster_arguments(parser: argparse.ArgumentParser, pretraining: bool = True) -> None:
    """How GeoTIFF files are read: sensor, bands, reflectance scale, nodata, tiles."""
    group = parser.add_argument_group("rasters")
    group.add_argument("--sensor", help="the files' sensor: sentinel2 (13 bands, default), sentinel2_l2a (12), "
                       "landsat8, landsat9, sentinel1, rgb, naip, or none (bands by index; see `mimkit-rs sensors`)")
    group.add_argument("--bands", nargs="+", help="bands to read, by name (B04 B03 B02) or 0-based index (3 2 1), "
                       "or 'rgb'; default all")
    group.add_argument("--scale", type=float, help="reflectance = value x scale + offset for integer files "
                       "(Sentinel-2 L2A: 1e-4); default: values as stored")
    group.add_argument("--offset", type=float, help="added after --scale (Landsat C2 L2: -0.2 with scale 2.75e-5)")
    group.add_argument("--nodata", type=float, help="nodata value when the files do not declare one")
    if pretraining:
        group.add_argument("--tile-size", type=int, help="cut each file into tiles of this size (large scenes); "
                           "default: one sample per file")
        group.add_argument("--stride", type=int, help="step between tiles (default: the tile size)")
    group.add_argument("--allow-ungeoreferenced", action="store_true",
                       help="read GeoTIFFs without a CRS / transform instead of skipping them")
    group.add_argument("--cache-dir", help="where per-band statistics are cached (default: beside the data)")


def _set_flags(args, data: dict) -> dict:
    for key in RASTER_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    return data


def _method_takes(method: str, name: str) -> bool:
    from mimkit.core.registry import method_arguments

    return name in method_arguments(method)


def geotiff_builder(args, method: str):
    """A `run_pretrain` dataset builder for GeoTIFF folders, with this command's raster flags."""
    from mimkit.core.data import mae_train_transform

    from .data import SENTINEL2_L2A, GeoTiffDataset

    def build(data_dir: str, data: dict, model: dict, strict: bool):
        _set_flags(args, data)
        for key in ("second_sensor", "second_bands"):
            if key in data:  # paired scenes of a second sensor are not read: the method derives its second view
                log.info("recipe data.%s=%s: mimkit-rs reads one sensor's files; %s derives the second view from "
                         "their bands", key, data[key], method)
        img_size = model["img_size"]
        dataset = GeoTiffDataset(
            data_dir, sensor=data.get("sensor", "sentinel2"), bands=data.get("bands"), img_size=img_size,
            patch_size=model.get("patch_size", 16), tile_size=data.get("tile_size"), stride=data.get("stride"),
            transform=mae_train_transform(img_size, scale=data.get("crop_scale", (0.2, 1.0)),
                                          hflip=data.get("hflip", True)),
            scale=data.get("scale"), offset=data.get("offset", 0.0), nodata=data.get("nodata"),
            mean=data.get("mean"), std=data.get("std"), labelled=False, strict=strict,
            require_georeference=not getattr(args, "allow_ungeoreferenced", False),
            cache_dir=getattr(args, "cache_dir", None))
        if data.get("scale") is None and dataset.selection.bands is not None and \
                all(b.center_nm < 3000 for b in dataset.selection.bands):
            log.info("optical data read as stored (no --scale); Sentinel-2 L2A digital numbers need --scale 1e-4 "
                     "to be reflectances")
        data["mean"], data["std"] = dataset.stats
        data["band_names"] = dataset.band_names
        if dataset.wavelengths is not None:
            data["wavelengths"] = dataset.wavelengths.tolist()
        if dataset.selection.bands is not None and _method_takes(method, "bands"):
            # a spectrum-aware model's default bands are the data's bands
            sensor_name = "sentinel2" if dataset.sensor is SENTINEL2_L2A else dataset.sensor.name
            model["sensor"], model["bands"] = sensor_name, dataset.band_names
        build.dataset = dataset
        return dataset

    return build


def save_rgb_reconstruction(run_dir: str | Path, dataset, path: str | Path | None = None,
                            count: int = 8) -> Path | None:
    """Reconstruction grid of a finished run as RGB composites of the dataset's red, green, blue bands."""
    from mimkit.core.viz import reconstruction_grid

    channels = getattr(dataset, "rgb_channels", None)
    if not channels:
        return None
    method, _ = load_run(run_dir)
    view = dataset.eval_view() if hasattr(dataset, "eval_view") else dataset
    # evenly spread samples: folders are sorted by class, so the first few would all look alike
    picks = sorted({round(i * (len(view) - 1) / max(1, count - 1)) for i in range(min(count, len(view)))})
    items = [view[i] for i in picks]
    batch = {"image": torch.stack([i["image"] for i in items])}
    for key in ("wavelengths", "bandwidths"):
        if key in items[0]:
            batch[key] = torch.stack([i[key] for i in items])
    if "band_names" in items[0]:
        batch["band_names"] = items[0]["band_names"]
    method.eval()
    state = torch.get_rng_state()
    torch.manual_seed(0)  # the same masks as the core's pictures
    with torch.no_grad():
        out = method(batch)
        recon = method.reconstruct(batch, out)
    torch.set_rng_state(state)
    patch = getattr(method, "output_patch_size", method.encoder.patch_size)
    grid = [s // p for s, p in zip(batch["image"].shape[2:], patch)]
    if recon is None or out.mask is None or out.mask.shape[1] != grid[0] * grid[1]:
        log.info("%s does not predict one pixel patch per token; no RGB reconstruction picture", method.method_name)
        return None
    path = Path(path) if path else Path(run_dir) / "pictures" / "reconstruction_rgb.png"
    return reconstruction_grid(batch["image"], out.mask, recon, patch, path, channels=channels)


# ------------------------------------------------------------------------------------------ pretrain
def cmd_pretrain(args) -> None:
    method = resolve_pretrain(args, "mae")["method"]
    builder = geotiff_builder(args, method)
    summary = run_pretrain(args, dataset_builder=builder, default_method="mae")
    if summary and getattr(builder, "dataset", None) is not None:
        picture = save_rgb_reconstruction(args.out, builder.dataset)
        if picture:
            print(f"mimkit-rs: RGB composite of the reconstructions: {picture}", file=sys.stderr)


# ------------------------------------------------------------------------------------------ evaluate / finetune
def _data_bands(dataset):
    selection = getattr(dataset, "selection", None)
    return list(selection.bands or ()) if selection is not None else list(getattr(dataset, "bands", ()))


def checkpoint_encoder(path: str | Path, in_chans: int, img_size, adapt: str | None, data_bands,
                       checkpoint_sensor: str, num_heads: int | None):
    """A ViTEncoder shaped like a timm / torchgeo / mimkit checkpoint (width, depth, patch read from its weights),
    with `in_chans` channels; `adapt` adapts the patch embedding when the channel counts differ."""
    from functools import partial

    from mimkit.core.checkpoints import _encoder_state, adapt_patch_embed, load_encoder, read_state_dict
    from mimkit.core.encoders import ViTEncoder

    from .data import band_indices_by_wavelength, resolve_sensor

    state, _ = _encoder_state(read_state_dict(path)[0])
    weight = state.get("patch_embed.proj.weight")
    if weight is None or weight.ndim != 4:
        raise CheckpointError(f"checkpoint {path}: no 2D patch embedding (patch_embed.proj.weight) to build a ViT from")
    embed_dim, depth = weight.shape[0], len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    encoder = ViTEncoder(img_size=img_size, patch_size=tuple(weight.shape[2:]), in_chans=in_chans, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads or max(1, embed_dim // 64))  # 64-dim heads: timm's sizes
    adapter = adapt
    if adapt == "select":
        source = resolve_sensor(checkpoint_sensor)
        if source is None or not data_bands:
            raise ConfigError("--adapt-in-chans select maps bands by wavelength: it needs --checkpoint-sensor and "
                              "data whose sensor is known")
        if len(source.bands) != weight.shape[1]:
            raise ConfigError(f"--checkpoint-sensor {source.name} has {len(source.bands)} bands but the checkpoint "
                              f"reads {weight.shape[1]} channels")
        indices = band_indices_by_wavelength(source.bands, data_bands)
        if all(i is None for i in indices):
            raise ConfigError(f"no band of the data lies within 40 nm of a {source.name} band")
        adapter = partial(adapt_patch_embed, mode="select", band_indices=indices)
    report = load_encoder(encoder, path, strict=True, adapt_in_chans=adapter)
    if report["resized"]:
        print(f"mimkit-rs: adapted {', '.join(report['resized'])} of {path} to this data", file=sys.stderr)
    return encoder


def _reader_options(args, task) -> dict:
    """The raster flags as reader options (they win over what the pretraining run recorded)."""
    from .bench import prepare_geotiff

    flags = {"--sensor": ("sensor", args.sensor), "--scale": ("scale", args.scale),
             "--offset": ("offset", args.offset), "--nodata": ("nodata", args.nodata),
             "--cache-dir": ("cache_dir", args.cache_dir),
             "--allow-ungeoreferenced": ("require_georeference", False if args.allow_ungeoreferenced else None)}
    given = {flag: option for flag, option in flags.items() if option[1] is not None}
    if given and task.prepare is not prepare_geotiff:
        raise ConfigError(f"{', '.join(given)} read GeoTIFF files; task {task.name} reads {task.dataset} through "
                          f"torchgeo, which takes --bands only")
    return {**({"bands": args.bands} if args.bands else {}), **dict(given.values())}


def _protocol_options(args, protocol: str) -> dict:
    options = {}
    if protocol == "knn":
        options["k"] = args.k
    if args.epochs is not None and protocol != "knn":
        options["epochs"] = args.epochs
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    for key in ("lr", "base_lr", "warmup_epochs"):
        if protocol in ("finetune", "segmentation") and getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    if protocol == "segmentation":
        options["freeze_encoder"] = not getattr(args, "finetune_encoder", False)
    return options


def run_tasks(args, finetuning: bool) -> list[dict]:
    """Evaluate the encoder of --run or --checkpoint (and, if asked, the same architecture at random init) on tasks
    through mimkit.benchmarks' runner; `finetuning` keeps each fine-tuned model in OUT/<task>/<init>/."""
    import dataclasses

    from mimkit.benchmarks.report import write_table
    from mimkit.benchmarks.runner import run_task
    from mimkit.benchmarks.tasks import get_task

    from .bench import prepare_geotiff

    if bool(args.run) == bool(args.checkpoint):
        raise ConfigError("give exactly one of --run (a mimkit-rs pretraining run) and --checkpoint (a timm, "
                          "torchgeo or mimkit weights file)")
    subject, run_config = load_run(args.run) if args.run else (None, None)
    out = Path(args.out) if getattr(args, "out", None) else (Path(args.run) if args.run else None)
    rows = []
    for name in args.task:
        task = get_task(name)
        if finetuning and task.protocol not in ("finetune", "segmentation"):
            raise ConfigError(f"`finetune` runs fine-tuning or segmentation tasks; {name} is a {task.protocol} task "
                              f"(use `mimkit-rs evaluate`)")
        if task.protocol == "segmentation":
            task = dataclasses.replace(task, head_options={**task.head_options, "decoder": args.head})
        reader_options = _reader_options(args, task)
        encoder = subject
        if encoder is None:  # the checkpoint's encoder is built for the task's bands: read them first
            img_size = tuple(args.img_size) if len(args.img_size) == 2 else (args.img_size[0],) * 2
            geotiff = {"patch_size": (16, 16)} if task.prepare is prepare_geotiff else {}
            train_set, _ = task.load(args.data, **{"img_size": img_size, **geotiff, **reader_options})
            encoder = checkpoint_encoder(args.checkpoint, train_set.in_chans, img_size, args.adapt_in_chans,
                                         _data_bands(train_set), args.checkpoint_sensor, args.num_heads)
        results = run_task(task, encoder, args.data, run_config=run_config,
                           compare_random_init=args.compare_random_init, labels_per_class=args.labels_per_class,
                           seed=args.seed, reader_options=reader_options,
                           out_dir=out / name if finetuning and out is not None else None,
                           **_protocol_options(args, task.protocol))
        for row in results:
            row["method"] = (run_config or {}).get("method", "checkpoint")
            weights = row["details"].get("model_path")
            if weights:
                row["weights"] = weights
        rows += results
    if out is not None:
        update_metrics(out, {"results": rows})
    print(write_table(rows, ["task", "init", "metric", "value", "num_train", "num_test"]), end="")
    return rows


def cmd_evaluate(args) -> None:
    run_tasks(args, finetuning=False)


def cmd_finetune(args) -> None:
    run_tasks(args, finetuning=True)


# ------------------------------------------------------------------------------------------ other commands
def cmd_tile(args) -> None:
    from .data import write_tiles

    summary = write_tiles(args.scenes, args.out, tile_size=args.tile_size, stride=args.stride,
                          shard_size=args.shard_size, sensor=args.sensor, bands=args.bands, nodata=args.nodata,
                          min_valid=args.min_valid,
                          require_georeference=not args.allow_ungeoreferenced, strict=args.strict,
                          progress=not args.no_progress)
    summary.pop("tiles")
    print(json.dumps(summary, indent=2))


def recipe_files() -> dict[str, object]:
    """The packaged remote-sensing recipes, by name (found through importlib.resources, so they work installed)."""
    folder = resources.files("mimkit.remote_sensing").joinpath("recipes")
    return {entry.name[:-5]: entry for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml")}


def cmd_recipes(args) -> None:
    recipes = recipe_files()
    if args.name:
        if args.name not in recipes:
            raise ConfigError(f"no recipe {args.name!r}; available: {', '.join(recipes)}")
        print(recipes[args.name].read_text(), end="")
        return
    for name, entry in recipes.items():
        first = next((line.lstrip("# ").strip() for line in entry.read_text().splitlines() if line.startswith("#")), "")
        print(f"{name:16s} {first}")
    print("\nPrint one with `mimkit-rs recipes NAME`, save it, and train with `mimkit-rs pretrain --config FILE ...`.")


def cmd_sensors(args) -> None:
    from .data import SENTINEL2_L2A
    from .sensors import SENSORS

    for sensor in [*SENSORS.values(), SENTINEL2_L2A]:
        if args.name and sensor.name != args.name:
            continue
        bands = ", ".join(f"{b.name} {b.center_nm:g}nm" for b in sensor.bands)
        print(f"{sensor.name:14s} {len(sensor.bands):2d} bands: {bands}")


def cmd_synthetic(args) -> None:
    from . import synthetic

    out = Path(args.out)
    kinds = set(args.kind)
    written = {}
    if kinds & {"all", "eurosat"}:
        written["eurosat"] = synthetic.write_eurosat(out / "eurosat", per_class=args.count, size=args.size)
    if kinds & {"all", "bigearthnet"}:
        written["bigearthnet"] = synthetic.write_bigearthnet(out / "bigearthnet", count=args.count * 4, size=args.size)
    if kinds & {"all", "segmentation"}:
        written["segmentation"] = synthetic.write_segmentation(out / "segmentation", count=args.count, size=args.size)
    if kinds & {"all", "tiles"}:
        for split, seed in (("train", 0), ("test", 1)):
            synthetic.write_classification_folders(out / "tiles" / split, per_class=args.count, size=args.size,
                                                   seed=seed, start=seed * 10_000)
        written["tiles"] = out / "tiles"
    if kinds & {"all", "scene"}:
        written["scene"] = synthetic.write_scene(out / "scene.tif", args.size * 8, args.size * 8)
    for kind, path in written.items():
        print(f"{kind:13s} {path}")


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, steps=args.steps, num_workers=args.num_workers)


# ------------------------------------------------------------------------------------------ parser
def _add_encoder_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="a `mimkit-rs pretrain` run folder (its encoder, bands and statistics)")
    parser.add_argument("--checkpoint", help="or a weights file: timm / torchgeo ViT state dict, official MAE, mimkit")
    parser.add_argument("--img-size", type=int, nargs="+", default=[224], help="with --checkpoint: image size "
                        "(default 224; positions are resampled)")
    parser.add_argument("--num-heads", type=int, help="with --checkpoint: attention heads (default width / 64)")
    parser.add_argument("--adapt-in-chans", choices=["repeat", "mean", "select"],
                        help="with --checkpoint whose channels differ from the data's: repeat or average its patch "
                        "kernels over the bands, or select kernels by wavelength (see --checkpoint-sensor)")
    parser.add_argument("--checkpoint-sensor", default="rgb", help="the checkpoint's bands for --adapt-in-chans "
                        "select (default rgb: an ImageNet / timm model)")
    parser.add_argument("--task", nargs="+", required=True,
                        help="benchmark task(s): eurosat-knn, eurosat-linear, eurosat-finetune, bigearthnet-linear, "
                        "bigearthnet-finetune, so2sat-linear, so2sat-finetune, geotiff-tiles-knn / -linear / "
                        "-finetune, geotiff-segmentation")
    parser.add_argument("--data", required=True, help="the task's local data folder (nothing is downloaded)")
    parser.add_argument("--compare-random-init", action="store_true", help="also score the same architecture at "
                        "random initialisation, side by side")
    parser.add_argument("--labels-per-class", type=int, help="train on this many labelled samples per class")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    add_raster_arguments(parser, pretraining=False)


def build_parser() -> argparse.ArgumentParser:
    from mimkit.core.heads import SEGMENTATION_DECODERS

    parser = argparse.ArgumentParser(
        prog="mimkit-rs", description="Masked-image-modeling for remote sensing: multispectral GeoTIFFs, "
        "Sentinel-2 / Landsat / Sentinel-1 / RGB sensors, torchgeo benchmarks.",
        epilog="Start with `mimkit-rs demo --out runs/rs-demo --quick`; each command has its own --help.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pre = sub.add_parser(
        "pretrain", help="pretrain a method on GeoTIFF tiles or scenes",
        description="Pretrain any registered method (mae, smarties, cha_mae, selective_mae, ...) on a folder of "
        "GeoTIFF / COG files (searched recursively; tiles from `mimkit-rs tile`, or whole scenes with --tile-size). "
        "Each sample carries its bands' wavelengths, so spectrum-aware methods (smarties) see them. Writes "
        "RUN/config.yaml, metrics.json, checkpoints/, model.safetensors and pictures/ (reconstruction_rgb.png: "
        "red, green, blue composites). A recipe (`mimkit-rs recipes`) gives a paper's settings.")
    add_pretrain_arguments(pre, default_method="mae")
    add_raster_arguments(pre)
    pre.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser(
        "evaluate", help="score an encoder on benchmark tasks: kNN, linear probe, fine-tune, segmentation",
        description="Evaluate the encoder of a pretraining run (--run) or of a timm / torchgeo checkpoint "
        "(--checkpoint; --adapt-in-chans when its channel count differs) on registered tasks: eurosat-knn / "
        "-linear / -finetune, bigearthnet-linear / -finetune (mAP), so2sat-linear / -finetune, geotiff-tiles-*, "
        "geotiff-segmentation (mIoU). Results are printed (percent) and appended to RUN/metrics.json, where "
        "`python -m mimkit.benchmarks.report --run RUN` compares them with published figures.")
    _add_encoder_source(ev)
    ev.add_argument("--k", type=int, default=20, help="neighbours for kNN (default 20)")
    ev.add_argument("--head", choices=SEGMENTATION_DECODERS, default="linear", help="segmentation head (default linear)")
    ev.add_argument("--lr", type=float, help="fine-tuning / segmentation learning rate")
    ev.add_argument("--out", help="write metrics.json here instead of into the run")
    ev.set_defaults(func=cmd_evaluate)

    ft = sub.add_parser(
        "finetune", help="fine-tune an encoder on a task and save the fine-tuned weights",
        description="Fine-tune the encoder of --run or --checkpoint end to end on fine-tuning tasks "
        "(eurosat-finetune, bigearthnet-finetune, so2sat-finetune, geotiff-tiles-finetune; MAE's recipe: AdamW, "
        "layer-wise lr decay, warmup + cosine) or train a segmentation head (geotiff-segmentation; with "
        "--finetune-encoder the encoder too). Writes OUT/TASK/<init>/model.safetensors (encoder and head: "
        "mimkit.core.finetune.load_finetuned), its checkpoints and logs, and OUT/metrics.json.")
    _add_encoder_source(ft)
    ft.add_argument("--out", help="folder for the fine-tuned weights and metrics (default: the run folder)")
    ft.add_argument("--lr", type=float, help="absolute learning rate")
    ft.add_argument("--base-lr", type=float, help="lr = base_lr x batch / 256 (fine-tuning; default 1e-3)")
    ft.add_argument("--warmup-epochs", type=float)
    ft.add_argument("--head", choices=SEGMENTATION_DECODERS, default="linear", help="segmentation head (default linear)")
    ft.add_argument("--finetune-encoder", action="store_true", help="segmentation: train the encoder too")
    ft.add_argument("--k", type=int, default=20, help=argparse.SUPPRESS)
    ft.set_defaults(func=cmd_finetune)

    tile = sub.add_parser(
        "tile", help="cut large scenes into georeferenced tiles, in shards, for large-scale pretraining",
        description="Cut GeoTIFF / COG scenes into tiles read window by window (a scene is never loaded whole). "
        "Each tile keeps the scene's CRS with its own transform, nodata value and band names; all-nodata tiles "
        "(and tiles below --min-valid) are skipped and counted. Tiles go to OUT/shard-00000/ ... with "
        "--shard-size tiles each; OUT/index.json lists them. Then: `mimkit-rs pretrain --data OUT ...`.")
    tile.add_argument("scenes", nargs="+", help="scene files or folders of them")
    tile.add_argument("--out", required=True, help="output folder")
    tile.add_argument("--tile-size", type=int, default=256, help="tile side in pixels (default 256)")
    tile.add_argument("--stride", type=int, help="step between tiles (default: the tile size, no overlap)")
    tile.add_argument("--shard-size", type=int, default=1000, help="tiles per shard folder (default 1000)")
    tile.add_argument("--sensor", help="check the band count against a sensor and name the bands (default: none)")
    tile.add_argument("--bands", nargs="+", help="keep only these bands (names with --sensor, or 0-based indices)")
    tile.add_argument("--nodata", type=float, help="nodata value when the scenes do not declare one")
    tile.add_argument("--min-valid", type=float, default=0.0, help="skip tiles with a smaller valid fraction")
    tile.add_argument("--allow-ungeoreferenced", action="store_true", help="cut scenes without georeferencing too")
    tile.add_argument("--strict", action="store_true", help="stop at the first unusable scene instead of skipping it")
    tile.add_argument("--no-progress", action="store_true")
    tile.set_defaults(func=cmd_tile)

    rec = sub.add_parser("recipes", help="list the papers' recipes, or print one",
                         description="The remote-sensing methods' recipes (SMARTIES, ChA-MAEViT, SelectiveMAE), each "
                         "default annotated with its source. Print one, edit it, pass it as `pretrain --config`.")
    rec.add_argument("name", nargs="?")
    rec.set_defaults(func=cmd_recipes)

    sen = sub.add_parser("sensors", help="list the sensor descriptions: bands, centre wavelengths")
    sen.add_argument("name", nargs="?")
    sen.set_defaults(func=cmd_sensors)

    syn = sub.add_parser("synthetic", help="write synthetic Sentinel-2 GeoTIFFs (EuroSAT / BigEarthNet layouts, ...)",
                         description="Write georeferenced multispectral GeoTIFFs drawn from typical spectral "
                         "signatures of water, vegetation, bare soil and urban surfaces: a EuroSAT-shaped and a "
                         "BigEarthNet-shaped copy (torchgeo layouts), class folders, segmentation pairs, one scene.")
    syn.add_argument("--out", required=True)
    syn.add_argument("--kind", nargs="+", default=["all"],
                     choices=["all", "eurosat", "bigearthnet", "segmentation", "tiles", "scene"])
    syn.add_argument("--count", type=int, default=10, help="tiles per class (or per split for segmentation)")
    syn.add_argument("--size", type=int, default=64, help="tile size in pixels (default 64)")
    syn.set_defaults(func=cmd_synthetic)

    demo = sub.add_parser("demo", help="pretrain a small MAE on synthetic Sentinel-2 tiles and benchmark it",
                          description="No download: writes synthetic 13-band Sentinel-2 tiles in EuroSAT's layout and "
                          "segmentation pairs, pretrains a small MAE on the unlabelled training tiles, then compares "
                          "it with random initialisation on eurosat-linear, eurosat-finetune and geotiff-segmentation. "
                          "Writes report.md, metrics.json and RGB reconstruction pictures.")
    demo.add_argument("--out", default="runs/rs-demo")
    demo.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    demo.add_argument("--steps", type=int, help="pretraining steps")
    demo.add_argument("--num-workers", type=int, default=1)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
