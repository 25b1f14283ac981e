"""The `mimkit-rs` command: remote-sensing pretraining, fine-tuning, evaluation, tiling, recipes, sensors, demo.

Each command is a typed function on the core's configuration system (core.config): --config FILE, --print_config
and dotted keys everywhere, the short flags users know spelled out to them. `pretrain` is the core's, reading
GeoTIFFs through `GeoTiffData` (sensor, bands, reflectance scale, nodata, windows of large scenes); evaluation and
fine-tuning run the remote-sensing benchmark tasks through mimkit.benchmarks' runner.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from mimkit.core import api
from mimkit.core.cli import positional, pretrain_command, recipes_command, resume_from_run
from mimkit.core.config import Command, Tool, config_value, current_config, read_yaml_mapping
from mimkit.core.errors import CheckpointError, ConfigError

from .data import GeoTiffData
from .shards import GeoTiffShardsData  # GeoTiffData that also reads tile shards (`tile --format litdata`)

RASTER_FLAGS = ("sensor", "bands", "scale", "offset", "nodata", "allow_ungeoreferenced", "cache_dir")


# ------------------------------------------------------------------------------------------ pretrain
# the core's pretrain (its signature, help and config), on GeoTIFFs, plus the RGB composite of the reconstructions
@functools.wraps(api.pretrain)
def pretrain(*args, **kwargs) -> dict:
    kwargs.update(zip(("data", "out"), args))
    data = kwargs["data"]
    if isinstance(data, (str, Path)):
        kwargs["data"] = data = GeoTiffShardsData(root=str(data))
    summary = api.pretrain(**kwargs)
    if summary:
        from mimkit.core.config import encoder_setting
        from mimkit.core.runs import read_config

        from .demo import save_rgb_reconstruction

        config = read_config(kwargs["out"])
        size, patch = (encoder_setting(config["model"], key, config["method"]) for key in ("img_size", "patch_size"))
        picture = save_rgb_reconstruction(kwargs["out"], data.dataset(size, patch, "eval"))
        if picture:
            print(f"mimkit-rs: RGB composite of the reconstructions: {picture}", file=sys.stderr)
    return summary


def pretrain_rs() -> Command:
    command = pretrain_command(
        GeoTiffShardsData, description="Pretrain any registered method (mae, smarties, cha_mae, selective_mae, ...) on a "
        "folder of GeoTIFF / COG files (searched recursively; tiles from `mimkit-rs tile`, or whole scenes with "
        "--tile-size). Each sample carries its bands' wavelengths, so spectrum-aware methods (smarties) see them. "
        "Writes RUN/config.yaml, metrics.json, checkpoints/, model.safetensors and pictures/ "
        "(reconstruction_rgb.png: red, green, blue composites). A recipe (`mimkit-rs recipes`) gives a paper's "
        "settings: --config FILE.")
    raster = {"--" + key.replace("_", "-"): f"--data.{key}" for key in (*RASTER_FLAGS, "tile_size", "stride",
                                                                        "band_order", "min_valid",
                                                                        "clip_percentiles", "second_root",
                                                                        "second_sensor", "second_bands")}
    return dataclasses.replace(command, function=pretrain, aliases={**command.aliases, **raster})


# ------------------------------------------------------------------------------------------ evaluate / finetune
@dataclass
class ReaderOptions:
    """How a GeoTIFF task reads its files, over what the pretraining run recorded (torchgeo tasks take bands only).

    Args:
        sensor: the files' sensor (see `mimkit-rs sensors`)
        bands: bands to read, by name or 0-based index, or rgb
        scale: reflectance = value x scale + offset for integer files (Sentinel-2 L2A: 1e-4)
        offset: added after scale
        nodata: nodata value when the files do not declare one
        allow_ungeoreferenced: read GeoTIFFs without a CRS / transform instead of skipping them
        cache_dir: where per-band statistics are cached (default: beside the data)
    """

    sensor: str | None = None
    bands: list[str | int] | str | None = None
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None
    allow_ungeoreferenced: bool = False
    cache_dir: str | None = None

    def for_task(self, task) -> dict:
        """The options as the task's reader takes them; GeoTIFF-only options on a torchgeo task are refused."""
        from .bench import prepare_geotiff

        given = {f"--{key.replace('_', '-')}": (key, getattr(self, key))
                 for key in ("sensor", "scale", "offset", "nodata", "cache_dir") if getattr(self, key) is not None}
        if self.allow_ungeoreferenced:
            given["--allow-ungeoreferenced"] = ("require_georeference", False)
        if given and task.prepare is not prepare_geotiff:
            raise ConfigError(f"{', '.join(given)} read GeoTIFF files; task {task.name} reads {task.dataset} through "
                              f"torchgeo, which takes --bands only")
        return {**({"bands": self.bands} if self.bands else {}), **dict(given.values())}


def _data_bands(dataset):
    selection = getattr(dataset, "selection", None)
    return list(selection.bands or ()) if selection is not None else list(getattr(dataset, "bands", ()))


def checkpoint_encoder(path: str | Path, in_chans: int, img_size, adapt: str | None, data_bands,
                       checkpoint_sensor: str, num_heads: int | None):
    """A ViTEncoder shaped like a timm / torchgeo / mimkit checkpoint (width, depth, patch read from its weights),
    with `in_chans` channels; `adapt` adapts the patch embedding when the channel counts differ."""
    from mimkit.core.checkpoints import _encoder_state, adapt_patch_embed, load_encoder, read_state_dict
    from mimkit.core.encoders import ViTEncoder

    from .data import band_indices_by_wavelength, resolve_sensor

    state, _ = _encoder_state(read_state_dict(path)[0])
    weight = state.get("patch_embed.proj.weight")
    if weight is None or weight.ndim != 4:
        raise CheckpointError(f"checkpoint {path}: no 2D patch embedding (patch_embed.proj.weight) to build a ViT from")
    embed_dim, depth = weight.shape[0], len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    encoder = ViTEncoder(img_size=img_size, patch_size=tuple(weight.shape[2:]), in_chans=in_chans, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads or max(1, embed_dim // 64),  # 64-dim heads: timm's sizes
                         # layer-scale weights (BEiT, CAE, DINOv2): the blocks need their gammas, loaded below
                         layer_scale=1.0 if "blocks.0.ls1.gamma" in state else None)
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
        adapter = functools.partial(adapt_patch_embed, mode="select", band_indices=indices)
    report = load_encoder(encoder, path, strict=True, adapt_in_chans=adapter)
    if report["resized"]:
        print(f"mimkit-rs: adapted {', '.join(report['resized'])} of {path} to this data", file=sys.stderr)
    return encoder


def run_tasks(task: Sequence[str], data: str, run: str | None, checkpoint: str | None, out: str | None,
              finetuning: bool, reader: ReaderOptions, img_size: int | Sequence[int], num_heads: int | None,
              adapt_in_chans: str | None, checkpoint_sensor: str, head: str, compare_random_init: bool,
              labels_per_class: int | None, seed: int, protocol_options: dict) -> list[dict]:
    """Score the encoder of `run` or `checkpoint` (and, if asked, the same architecture at random init) on tasks
    through mimkit.benchmarks' runner; `finetuning` keeps each fine-tuned model in OUT/<task>/<init>/."""
    from mimkit.benchmarks.report import write_table
    from mimkit.benchmarks.runner import run_task
    from mimkit.benchmarks.tasks import get_task
    from mimkit.core.heads import SEGMENTATION_DECODERS
    from mimkit.core.runs import load_run, update_metrics

    from .bench import prepare_geotiff

    if bool(run) == bool(checkpoint):
        raise ConfigError("give exactly one of --run (a mimkit-rs pretraining run) and --checkpoint (a timm, "
                          "torchgeo or mimkit weights file)")
    if head not in SEGMENTATION_DECODERS:
        raise ConfigError(f"--head {head}: the segmentation head is one of {', '.join(SEGMENTATION_DECODERS)}")
    subject, run_config = load_run(run) if run else (None, None)
    out_dir = Path(out) if out else (Path(run) if run else None)
    size = tuple(img_size) if isinstance(img_size, (list, tuple)) else (img_size,) * 2
    size = size * 2 if len(size) == 1 else size
    rows = []
    for name in task:
        spec = get_task(name)
        if finetuning and spec.protocol not in ("finetune", "segmentation"):
            raise ConfigError(f"`finetune` runs fine-tuning or segmentation tasks; {name} is a {spec.protocol} task "
                              f"(use `mimkit-rs evaluate`)")
        if spec.protocol == "segmentation":
            spec = dataclasses.replace(spec, head_options={**spec.head_options, "decoder": head})
        reader_options = reader.for_task(spec)
        encoder = subject
        if encoder is None:  # the checkpoint's encoder is built for the task's bands: read them first
            geotiff = {"patch_size": (16, 16)} if spec.prepare is prepare_geotiff else {}
            train_set, _ = spec.load(data, **{"img_size": size, **geotiff, **reader_options})
            encoder = checkpoint_encoder(checkpoint, train_set.in_chans, size, adapt_in_chans, _data_bands(train_set),
                                         checkpoint_sensor, num_heads)
        options = {k: v for k, v in protocol_options.items() if v is not None and _applies(k, spec.protocol)}
        if options.get("resume") and not (out_dir and list((out_dir / name).glob("*/checkpoints/last.ckpt"))):
            options.pop("resume")  # a task the interrupted command had not started yet starts now
        results = run_task(spec, encoder, data, run_config=run_config, compare_random_init=compare_random_init,
                           labels_per_class=labels_per_class, seed=seed, reader_options=reader_options,
                           out_dir=out_dir / name if finetuning and out_dir is not None else None, **options)
        for row in results:
            row["method"] = (run_config or {}).get("method", "checkpoint")
            weights = row["details"].get("model_path")
            if weights:
                row["weights"] = weights
        rows += results
    if out_dir is not None:
        update_metrics(out_dir, {"results": rows})
    print(write_table(rows, ["task", "init", "metric", "value", "num_train", "num_test"]), end="")
    return rows


def _applies(option: str, protocol: str) -> bool:
    """Which protocol takes which option: k for kNN, epochs for the trained ones, learning rates for fine-tuning."""
    if option == "k":
        return protocol == "knn"
    if option == "epochs":
        return protocol != "knn"
    if option in ("lr", "base_lr", "warmup_epochs", "resume"):
        return protocol in ("finetune", "segmentation")
    if option == "freeze_encoder":
        return protocol == "segmentation"
    return True


def evaluate(task: list[str], data: str, run: str | None = None, checkpoint: str | None = None,
             out: str | None = None, compare_random_init: bool = False, labels_per_class: int | None = None,
             epochs: int | None = None, batch_size: int | None = None, k: int = 20, head: str = "linear",
             lr: float | None = None, seed: int = 0, img_size: int | list[int] = 224, num_heads: int | None = None,
             adapt_in_chans: Literal["repeat", "mean", "select"] | None = None, checkpoint_sensor: str = "rgb",
             reader: ReaderOptions = ReaderOptions()) -> list[dict]:
    """Evaluate the encoder of a pretraining run (--run) or of a timm / torchgeo checkpoint (--checkpoint;
    --adapt-in-chans when its channel count differs) on registered tasks. Results are printed (percent) and appended
    to RUN/metrics.json, where `python -m mimkit.benchmarks.report --run RUN` compares them with published figures.

    Args:
        task: benchmark task(s): eurosat-knn, eurosat-linear, eurosat-finetune, bigearthnet-linear / -finetune (mAP),
            so2sat-linear / -finetune, geotiff-tiles-knn / -linear / -finetune, geotiff-segmentation (mIoU)
        data: the task's local data folder (nothing is downloaded)
        run: a `mimkit-rs pretrain` run folder (its encoder, bands and statistics)
        checkpoint: or a weights file: timm / torchgeo ViT state dict, official MAE, mimkit
        out: write metrics.json here instead of into the run
        compare_random_init: also score the same architecture at random initialisation, side by side
        labels_per_class: train on this many labelled samples per class
        epochs: epochs of the linear probe, fine-tuning or segmentation head (default: the task's)
        batch_size: batch size of the protocol (default: the task's)
        k: neighbours for kNN
        head: segmentation head: linear or conv
        lr: fine-tuning / segmentation learning rate
        seed: seed of the label subset, the heads and the random-init encoder
        img_size: with --checkpoint: image size (positions are resampled)
        num_heads: with --checkpoint: attention heads (default width / 64)
        adapt_in_chans: with --checkpoint whose channels differ from the data's: repeat or average its patch
            kernels over the bands, or select kernels by wavelength (see checkpoint_sensor)
        checkpoint_sensor: the checkpoint's bands for --adapt-in-chans select (rgb: an ImageNet / timm model)
        reader: how GeoTIFF tasks read their files, over what the run recorded
    """
    return run_tasks(task, data, run, checkpoint, out, False, reader, img_size, num_heads, adapt_in_chans,
                     checkpoint_sensor, head, compare_random_init, labels_per_class, seed,
                     {"k": k, "epochs": epochs, "batch_size": batch_size, "lr": lr})


def finetune(task: list[str], data: str, run: str | None = None, checkpoint: str | None = None,
             out: str | None = None, compare_random_init: bool = False, labels_per_class: int | None = None,
             epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
             base_lr: float | None = None, warmup_epochs: float | None = None, head: str = "linear",
             finetune_encoder: bool = False, seed: int = 0, img_size: int | list[int] = 224,
             num_heads: int | None = None, adapt_in_chans: Literal["repeat", "mean", "select"] | None = None,
             checkpoint_sensor: str = "rgb", reader: ReaderOptions = ReaderOptions(), resume: bool = False
             ) -> list[dict]:
    """Fine-tune the encoder of --run or --checkpoint end to end on fine-tuning tasks (MAE's recipe: AdamW,
    layer-wise lr decay, warmup + cosine) or train a segmentation head (geotiff-segmentation; with
    --finetune-encoder the encoder too). Writes OUT/TASK/<init>/model.safetensors (encoder and head:
    mimkit.core.finetune.load_finetuned), its checkpoints and logs, OUT/metrics.json and OUT/config.yaml.

    Args:
        task: eurosat-finetune, bigearthnet-finetune, so2sat-finetune, geotiff-tiles-finetune, geotiff-segmentation
        data: the task's local data folder (nothing is downloaded)
        run: a `mimkit-rs pretrain` run folder (its encoder, bands and statistics)
        checkpoint: or a weights file: timm / torchgeo ViT state dict, official MAE, mimkit
        out: folder for the fine-tuned weights and metrics (default: the run folder)
        compare_random_init: also fine-tune the same architecture from random initialisation, side by side
        labels_per_class: train on this many labelled samples per class
        epochs: fine-tuning epochs (default: the task's)
        batch_size: batch size (default: the task's)
        lr: absolute learning rate
        base_lr: lr = base_lr x batch / 256 (fine-tuning; default 1e-3)
        warmup_epochs: linear warm-up epochs
        head: segmentation head: linear or conv
        finetune_encoder: segmentation: train the encoder too
        seed: seed of the label subset, the heads and the random-init encoder
        img_size: with --checkpoint: image size (positions are resampled)
        num_heads: with --checkpoint: attention heads (default width / 64)
        adapt_in_chans: with --checkpoint whose channels differ from the data's: repeat or average its patch
            kernels over the bands, or select kernels by wavelength (see checkpoint_sensor)
        checkpoint_sensor: the checkpoint's bands for --adapt-in-chans select (rgb: an ImageNet / timm model)
        reader: how GeoTIFF tasks read their files, over what the run recorded
        resume: continue the fine-tuning in OUT from each task's last checkpoints (OUT/config.yaml is read first)
    """
    from mimkit.core.runs import write_config

    if out and not resume and not (Path(out) / "config.yaml").exists():  # never over a pretraining run's own
        config = dict(current_config.get() or {})
        if config:
            Path(out).mkdir(parents=True, exist_ok=True)
            write_config(Path(out), config)
    options = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "base_lr": base_lr, "warmup_epochs": warmup_epochs,
               "freeze_encoder": not finetune_encoder, "resume": resume or None}
    return run_tasks(task, data, run, checkpoint, out, True, reader, img_size, num_heads, adapt_in_chans,
                     checkpoint_sensor, head, compare_random_init, labels_per_class, seed, options)


def resume_finetuning(argv: list[str]) -> list[str]:
    """`--resume --out OUT` reads OUT/config.yaml when a `finetune` wrote it (not a pretraining run's own)."""
    out = config_value(argv, "out")
    stored = Path(str(out)) / "config.yaml" if out is not None else None
    if stored is not None and stored.is_file() and "task" not in read_yaml_mapping(stored):
        return argv
    return resume_from_run(argv)


# ------------------------------------------------------------------------------------------ other commands
def tile(scenes: list[str], out: str, tile_size: int = 256, stride: int | None = None, shard_size: int = 1000,
         sensor: str | None = None, bands: list[str | int] | str | None = None, nodata: float | None = None,
         min_valid: float = 0.0, allow_ungeoreferenced: bool = False, strict: bool = False,
         progress: bool = True, format: Literal["tiles", "litdata"] = "tiles", chunk_bytes: str = "256MB",
         num_workers: int = 1, overwrite: bool = False) -> dict:
    """Cut GeoTIFF / COG scenes into tiles read window by window (a scene is never loaded whole). Each tile keeps
    the scene's CRS with its own transform, nodata value and band names; all-nodata tiles (and tiles below
    min_valid) are skipped and counted. Tiles go to OUT/shard-00000/ ... with shard_size tiles each; OUT/index.json
    lists them. Then: `mimkit-rs pretrain --data OUT ...`.

    Args:
        scenes: scene files or folders of them (the first positional arguments)
        out: output folder
        tile_size: tile side in pixels
        stride: step between tiles (default: the tile size, no overlap)
        shard_size: tiles per shard folder
        sensor: check the band count against a sensor and name the bands (default: none)
        bands: keep only these bands (names with sensor, or 0-based indices)
        nodata: nodata value when the scenes do not declare one
        min_valid: skip tiles with a smaller valid fraction
        allow_ungeoreferenced: cut scenes without georeferencing too
        strict: stop at the first unusable scene instead of skipping it
        progress: show a progress bar (--no-progress: none)
        format: tiles (GeoTIFF tiles in shard folders, with index.json) or litdata (LitData shards: raw bands,
            validity masks and georeferencing per tile, read by pretrain --data OUT in place of a tile folder)
        chunk_bytes: litdata: the size of one chunk file
        num_workers: litdata: processes writing the shards
        overwrite: litdata: replace the shards already in --out
    """
    from .data import write_tiles

    if format == "litdata":
        from .shards import write_tile_shards

        summary = write_tile_shards(scenes, out, tile_size=tile_size, stride=stride, sensor=sensor, bands=bands,
                                    nodata=nodata, min_valid=min_valid, require_georeference=not allow_ungeoreferenced,
                                    strict=strict, progress=progress, chunk_bytes=chunk_bytes,
                                    num_workers=num_workers, overwrite=overwrite)
        print(json.dumps({k: v for k, v in summary.items() if k not in ("paths", "valid_fraction")}, indent=2))
        return summary
    summary = write_tiles(scenes, out, tile_size=tile_size, stride=stride, shard_size=shard_size, sensor=sensor,
                          bands=bands, nodata=nodata, min_valid=min_valid,
                          require_georeference=not allow_ungeoreferenced, strict=strict, progress=progress)
    summary.pop("tiles")
    print(json.dumps(summary, indent=2))
    return summary


def sensors(name: str | None = None) -> None:
    """List the sensor descriptions: bands and their centre wavelengths.

    Args:
        name: one sensor (default: all)
    """
    from .data import SENTINEL2_L2A
    from .sensors import SENSORS

    for sensor in [*SENSORS.values(), SENTINEL2_L2A]:
        if name and sensor.name != name:
            continue
        bands = ", ".join(f"{b.name} {b.center_nm:g}nm" for b in sensor.bands)
        print(f"{sensor.name:14s} {len(sensor.bands):2d} bands: {bands}")


def synthetic(out: str, kind: list[Literal["all", "eurosat", "bigearthnet", "segmentation", "tiles", "scene"]] | None
              = None, count: int = 10, size: int = 64) -> dict:
    """Write georeferenced multispectral GeoTIFFs drawn from typical spectral signatures of water, vegetation, bare
    soil and urban surfaces: a EuroSAT-shaped and a BigEarthNet-shaped copy (torchgeo layouts), class folders,
    segmentation pairs, one scene.

    Args:
        out: the folder to write into
        kind: what to write: all, eurosat, bigearthnet, segmentation, tiles, scene (default: all)
        count: tiles per class (or per split for segmentation)
        size: tile size in pixels
    """
    from . import synthetic as write

    root = Path(out)
    kinds = set(kind or ["all"])
    written = {}
    if kinds & {"all", "eurosat"}:
        written["eurosat"] = write.write_eurosat(root / "eurosat", per_class=count, size=size)
    if kinds & {"all", "bigearthnet"}:
        written["bigearthnet"] = write.write_bigearthnet(root / "bigearthnet", count=count * 4, size=size)
    if kinds & {"all", "segmentation"}:
        written["segmentation"] = write.write_segmentation(root / "segmentation", count=count, size=size)
    if kinds & {"all", "tiles"}:
        for split, seed in (("train", 0), ("test", 1)):
            write.write_classification_folders(root / "tiles" / split, per_class=count, size=size, seed=seed,
                                               start=seed * 10_000)
        written["tiles"] = root / "tiles"
    if kinds & {"all", "scene"}:
        written["scene"] = write.write_scene(root / "scene.tif", size * 8, size * 8)
    for name, path in written.items():
        print(f"{name:13s} {path}")
    return written


# ------------------------------------------------------------------------------------------ the tool
READER_ALIASES = {"--" + key.replace("_", "-"): f"--reader.{key}" for key in RASTER_FLAGS}


def build_tool() -> Tool:
    from .demo import run_demo

    progress = {"--no-progress": "--progress=false"}
    return Tool("mimkit-rs", "Masked-image-modeling for remote sensing: multispectral GeoTIFFs, Sentinel-2 / Landsat / "
                "Sentinel-1 / RGB sensors, torchgeo benchmarks.", [
                    Command("demo", run_demo, "pretrain a small MAE on synthetic Sentinel-2 tiles and benchmark it"),
                    pretrain_rs(),
                    Command("evaluate", evaluate, "score an encoder on benchmark tasks: kNN, linear probe, "
                            "fine-tune, segmentation", aliases=dict(READER_ALIASES)),
                    Command("finetune", finetune, "fine-tune an encoder on a task and save the fine-tuned weights",
                            aliases=dict(READER_ALIASES), preprocess=resume_finetuning),
                    Command("tile", tile, "cut large scenes into georeferenced tiles, in shards, for large-scale "
                            "pretraining", aliases=progress, preprocess=positional("scenes")),
                    recipes_command("mimkit.remote_sensing", "mimkit-rs", "the remote-sensing recipes (SMARTIES, ChA-MAEViT, SelectiveMAE)"),
                    Command("sensors", sensors, "list the sensor descriptions: bands, centre wavelengths",
                            preprocess=positional("name")),
                    Command("synthetic", synthetic, "write synthetic Sentinel-2 GeoTIFFs (EuroSAT / BigEarthNet "
                            "layouts, ...)"),
                ], epilog="Start with `mimkit-rs demo --out runs/rs-demo --quick`; each command has its own --help.")


def main(argv: Sequence[str] | None = None) -> int:
    return build_tool().run(argv)


if __name__ == "__main__":
    sys.exit(main())
