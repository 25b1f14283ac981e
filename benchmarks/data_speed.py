"""Loader throughput beside what a GPU-class training step consumes: does the data pipeline keep the step fed?

For each kind of data, as files and as the same data in shards, the pretraining dataset mimkit builds (decoding,
MAE's random resized crop or MONAI's CT pipeline and 3D crop, normalisation) is read through `make_loader` with 0, 1
and 2 worker processes, and the samples per second are timed after the first batch:

- PNG folder: RGB photographs (scikit-image's astronaut.png, public domain, cropped and rescaled), MAE ViT-B/16 at 224
- 16-bit TIFF: grey 1024^2 radiograph-sized images (the same photograph's luminance in 16 bits), 224 crops
- NIfTI volumes with the CT pipeline: CT-like volumes in Hounsfield units (MONAI's create_test_image_3d), RAS,
  1.5 mm spacing, window [-175, 250], foreground crop, random 96^3 crops (Hi-End-MAE's setting)
- GeoTIFF tiles: 13-band Sentinel-2-like 224^2 tiles cut from synthetic scenes, reflectance scale 1e-4
- shards: `mimkit shard` (PNG, TIFF), `mimkit-medical shard` (volumes prepared once), `mimkit-rs tile --format litdata`

The step's consumption is computed, not measured (no GPU here): the FLOPs of one training step (forward + backward)
counted by torch on the real model (MAE ViT-B/16 at 224 for 2D; Hi-End-MAE's released ViT at 96^3 for 3D), at a stated
utilisation of a named GPU's bf16 peak, give the images per second one GPU consumes. The goal: the loader delivers at
least twice that; the table says how many loader processes one GPU needs at the measured per-process rate.

    python -m mimkit.benchmarks.data_speed [--samples 64] [--gpu H100] [--utilisation 0.4] [--out FILE_STEM]
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .cost import GPU_PEAK_TFLOPS, step_flops


def _astronaut(count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Real pixels: random crops of scikit-image's astronaut.png (512^2 RGB), rescaled to size^2."""
    import cv2
    from skimage import data

    image = data.astronaut()
    crops = []
    for _ in range(count):
        side = int(rng.integers(320, 513))
        y, x = (int(v) for v in rng.integers(0, 513 - side, 2))
        crops.append(cv2.resize(image[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_CUBIC))
    return crops


def write_data(root: Path, count: int, volumes: int) -> dict[str, Path]:
    """The four kinds of files, written once under `root`."""
    import tifffile
    from PIL import Image

    from mimkit.medical.synthetic import write_synthetic_organs
    from mimkit.remote_sensing import synthetic
    from mimkit.remote_sensing.data import write_tiles

    rng = np.random.default_rng(0)
    folders = {"png": root / "png", "tiff16": root / "tiff16"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(_astronaut(count, 512, rng)):
        Image.fromarray(crop).save(folders["png"] / f"{i:05d}.png")
    for i, crop in enumerate(_astronaut(count, 1024, rng)):
        grey = crop.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
        tifffile.imwrite(folders["tiff16"] / f"{i:05d}.tif", (grey * 257).astype(np.uint16))
    organs = write_synthetic_organs(root / "organs", cases=volumes + 1, size=128, validation=1, spacing=1.5)
    folders["nifti"] = organs / "imagesTr"
    scenes = root / "scenes"
    for i in range(max(1, math.ceil(count / 16))):  # 16 tiles of 224 in each 896^2 scene
        synthetic.write_scene(scenes / f"scene{i}.tif", 896, 896, seed=i, nodata_corner=0.0)
    write_tiles([scenes], root / "tiles", tile_size=224, sensor="sentinel2")
    folders["scenes"], folders["geotiff"] = scenes, root / "tiles"
    return folders


def datasets(folders: dict[str, Path], root: Path):
    """(kind, format, build) for every row: build() returns the pretraining dataset."""
    from mimkit.core.data import ImageFolderDataset, mae_train_transform
    from mimkit.core.shards import ShardDataset, write_shards
    from mimkit.medical.data import MedicalData, build_dataset
    from mimkit.medical.shards import MedicalShardDataset, write_medical_shards
    from mimkit.remote_sensing.data import GeoTiffDataset
    from mimkit.remote_sensing.shards import TileShardDataset, write_tile_shards

    image = dict(img_size=224, patch_size=16, transform=mae_train_transform(224))
    ct = MedicalData(root=str(folders["nifti"]), modality="ct", roi=[96], spacing=[1.5])
    pre = ct.preprocessing([96, 96, 96], 3)
    raster = dict(sensor="sentinel2", img_size=224, patch_size=16, scale=1e-4)
    rows = []
    for kind, folder in (("PNG 8-bit RGB", folders["png"]), ("TIFF 16-bit grey 1024^2", folders["tiff16"])):
        shards = root / f"shards_{folder.name}"
        rows.append((kind, "files", lambda folder=folder: ImageFolderDataset(folder, **image)))
        rows.append((kind, "LitData shards", lambda folder=folder, shards=shards: ShardDataset(
            _written(shards, lambda: write_shards(folder, shards)), **image)))
    volumes, tiles = root / "shards_ct", root / "shards_tiles"
    rows.append(("NIfTI CT 128^3 -> 96^3", "files (MONAI pipeline per sample)",
                 lambda: build_dataset(folders["nifti"], "folder", pre, labelled=False, patch_size=16, cache="none")))
    rows.append(("NIfTI CT 128^3 -> 96^3", "LitData shards (prepared once)",
                 lambda: MedicalShardDataset(_written(volumes, lambda: write_medical_shards(ct, volumes)), pre,
                                             patch_size=16)))
    rows.append(("GeoTIFF 13-band 224^2", "files", lambda: GeoTiffDataset(folders["geotiff"], **raster)))
    rows.append(("GeoTIFF 13-band 224^2", "LitData shards", lambda: TileShardDataset(
        _written(tiles, lambda: write_tile_shards([folders["scenes"]], tiles, tile_size=224, sensor="sentinel2")),
        **raster)))
    return rows


def _written(shards: Path, write) -> Path:
    """`shards`, written by `write()` unless an earlier run left them complete."""
    if not (shards / "index.json").is_file():
        write()
    return shards


def samples_per_second(dataset, workers: int, samples: int, batch: int) -> float:
    """Samples/s of a loader over `samples` samples (sampler as in pretraining), timed after the first batch."""
    from mimkit.core.data import ResumableSampler, make_loader

    sampler = ResumableSampler(len(dataset), seed=0, stop=samples + batch)
    loader = make_loader(dataset, batch, num_workers=workers, sampler=sampler)
    iterator = iter(loader)
    next(iterator)  # workers started, first batch decoded
    start, seen = time.perf_counter(), 0
    for item in iterator:
        seen += item["image"].shape[0]
    seconds = time.perf_counter() - start
    del iterator, loader
    return seen / seconds


def consumption(gpu: str, utilisation: float) -> dict[str, dict]:
    """Images/s one GPU's training step consumes, from the FLOPs counted on the real models (batch 1, CPU)."""
    from mimkit.benchmarks.cost import find_recipe
    from mimkit.core.config import read_yaml_mapping
    from mimkit.core.registry import build_method

    peak = GPU_PEAK_TFLOPS[gpu] * 1e12 * utilisation
    out = {}
    torch.manual_seed(0)
    mae = build_method("mae", encoder={"size": "base", "img_size": 224, "patch_size": 16})
    flops = step_flops(mae, {"image": torch.randn(1, 3, 224, 224)})
    out["2D"] = {"model": "MAE ViT-B/16 224", "gflops": flops / 1e9, "images_per_s": peak / flops}
    hiend = build_method("hiend_mae", **read_yaml_mapping(find_recipe("hiend_mae"))["model"])
    flops = step_flops(hiend, {"image": torch.randn(1, 1, 96, 96, 96)})
    out["3D"] = {"model": "Hi-End-MAE ViT-1536/12 96^3", "gflops": flops / 1e9, "images_per_s": peak / flops}
    return out


def measure_row(root: Path, row: int, workers: list[int], samples: int, batch: int) -> list[float]:
    """Samples/s of one row's dataset at each worker count (run in a process of its own: see main)."""
    kind, _, build = datasets(_folders(root), root)[row]
    dataset = build()
    if kind.startswith("NIfTI"):
        samples, batch = max(batch, samples // 4), max(1, batch // 4)
    return [samples_per_second(dataset, count, samples, batch) for count in workers]


def _folders(root: Path) -> dict[str, Path]:
    return {"png": root / "png", "tiff16": root / "tiff16", "nifti": root / "organs" / "imagesTr",
            "scenes": root / "scenes", "geotiff": root / "tiles"}


def main(argv=None) -> int:
    import json
    import subprocess

    from .report import write_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="2D samples timed per row (3D: a quarter)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--gpu", default="H100", choices=sorted(GPU_PEAK_TFLOPS))
    parser.add_argument("--utilisation", type=float, default=0.4, help="fraction of the bf16 dense peak reached")
    parser.add_argument("--data", default=None, help="a folder to write the data into (default: a temporary one)")
    parser.add_argument("--out", default=None, help="write OUT.md/.csv/.json")
    parser.add_argument("--row", type=int, default=None, help=argparse.SUPPRESS)  # one row, in a child process
    parser.add_argument("--row-timeout", type=float, default=600, help="seconds one measurement may take")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.row is not None:
        print(json.dumps(measure_row(Path(args.data), args.row, args.workers, args.samples, args.batch)))
        return 0
    step = consumption(args.gpu, args.utilisation)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.data or scratch)
        folders = write_data(root, args.samples, max(4, args.samples // 8))
        rows = []
        for index, (kind, form, _) in enumerate(datasets(folders, root)):
            # each row in a fresh process: loader workers fork from a process holding only that row's dataset (a
            # process that read earlier rows' shards holds LitData's reader threads, which forked workers inherit)
            rates = []
            for workers in args.workers:  # one process per worker count: a hung loader costs only its row
                try:
                    child = subprocess.run([sys.executable, "-m", "mimkit.benchmarks.data_speed", "--row", str(index),
                                            "--data", str(root), "--samples", str(args.samples), "--batch",
                                            str(args.batch), "--workers", str(workers)], capture_output=True,
                                           text=True, timeout=args.row_timeout)
                except subprocess.TimeoutExpired:
                    print(f"{kind} {form} workers {workers}: no result within {args.row_timeout} s (a loader worker "
                          f"hung)", file=sys.stderr, flush=True)
                    rates.append(None)
                    continue
                if child.returncode:
                    raise SystemExit(f"{kind} {form}: the measuring process failed:\n{child.stderr[-2000:]}")
                rates.append(json.loads(child.stdout.strip().splitlines()[-1])[0])
            dims = "3D" if kind.startswith("NIfTI") else "2D"
            single = dict(zip(args.workers, rates)).get(1)
            for workers, rate in zip(args.workers, rates):
                need = step[dims]["images_per_s"]
                rows.append({"data": kind, "format": form, "workers": workers, "samples_per_s": rate,
                             "model": step[dims]["model"], "gpu_consumes": need,
                             "ratio": rate / need if rate is not None else None,
                             "processes_for_2x": math.ceil(2 * need / single) if single else None})
    title = (f"Loader samples/s on this machine ({torch.get_num_threads()} thread per process, "
             f"{args.batch} per batch, 2D; {max(1, args.batch // 4)} per batch, 3D) beside what one {args.gpu} "
             f"consumes at {args.utilisation:.0%} of its {GPU_PEAK_TFLOPS[args.gpu]:.0f} TFLOP/s bf16 peak: "
             f"{step['2D']['model']} {step['2D']['gflops']:.1f} GFLOP per image and step "
             f"({step['2D']['images_per_s']:.0f} images/s), {step['3D']['model']} {step['3D']['gflops']:.1f} "
             f"GFLOP ({step['3D']['images_per_s']:.0f} volumes/s). ratio = loader / GPU; the goal is 2. "
             f"processes for 2x = loader processes one GPU needs at the measured 1-worker rate.")
    print(write_table(rows, {"data": "data", "format": "format", "workers": "workers",
                             "samples_per_s": "samples/s", "model": "step of", "gpu_consumes": "GPU consumes/s",
                             "ratio": "ratio", "processes_for_2x": "processes for 2x"}, args.out, title=title,
                      formats={"samples_per_s": ".1f", "gpu_consumes": ".0f", "ratio": ".3f", "workers": "d"}), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
