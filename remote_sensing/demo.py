"""`mimkit-rs demo`: the remote-sensing main job on synthetic Sentinel-2 GeoTIFFs, no download.

It writes 13-band tiles drawn from typical spectral signatures (`synthetic.py`) in EuroSAT's layout plus
segmentation pairs, pretrains a small MAE on the unlabelled training tiles, and compares the pretrained encoder
with the same encoder at random initialisation on the EuroSAT tasks (linear probe, fine-tuning) and on
GeoTIFF segmentation, through the same task readers that read the real datasets.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("mimkit")

DEMO_MODEL = dict(encoder=dict(img_size=32, patch_size=8, in_chans=13, embed_dim=64, depth=4, num_heads=4),
                  decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, mask_ratio=0.75, norm_pix_loss=True)
DEMO_TRAIN = dict(batch_size=64, max_steps=600, base_lr=1.5e-3, warmup_steps=30, weight_decay=0.05,
                  checkpoint_every=300, log_every=20, picture_every=0, seed=0)


def save_rgb_reconstruction(run_dir: str | Path, dataset, path: str | Path | None = None,
                            count: int = 8) -> Path | None:
    """Reconstruction grid of a finished run as RGB composites of the dataset's red, green, blue bands."""
    from mimkit.core.runs import load_run
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


def run_demo(out: str = "runs/rs-demo", quick: bool = False, steps: int | None = None, num_workers: int = 1) -> dict:
    """Pretrain a small MAE on synthetic 13-band Sentinel-2 tiles (EuroSAT's layout, no download) and compare it
    with random initialisation on eurosat-linear, eurosat-finetune and geotiff-segmentation; writes report.md,
    metrics.json and RGB reconstruction pictures.

    Args:
        out: the demo folder (data, run, report); an interrupted demo resumes from it
        quick: a few-minute smoke run
        steps: pretraining steps (default 600; quick: 60)
        num_workers: data-loading processes
    """
    from torchgeo.datasets import EuroSAT

    from mimkit.benchmarks.runner import run_task
    from mimkit.core.data import mae_train_transform
    from mimkit.core.demo import write_report
    from mimkit.core.runs import load_run, update_metrics
    from mimkit.core.train import TrainConfig, pretrain

    from . import synthetic
    from .data import GeoTiffDataset

    out = Path(out)
    started = time.perf_counter()
    per_class, segmentation_tiles = (12, 8) if quick else (40, 24)
    eurosat_root, seg_root = out / "data" / "eurosat", out / "data" / "segmentation"
    if not (eurosat_root / EuroSAT.split_filenames["train"]).exists():
        synthetic.write_eurosat(eurosat_root, per_class=per_class, size=32)
    if not (seg_root / "classes.json").exists():
        synthetic.write_segmentation(seg_root, count=segmentation_tiles, size=32)
    # pretraining sees the training split's tiles without their labels, bands in EuroSAT's file order
    names = (eurosat_root / EuroSAT.split_filenames["train"]).read_text().split()
    folder = eurosat_root / EuroSAT.base_dir
    files = [folder / n.rsplit("_", 1)[0] / n.replace(".jpg", ".tif") for n in names]
    bands = list(EuroSAT.all_band_names)
    dataset = GeoTiffDataset(files, sensor="sentinel2", bands=bands, img_size=32, patch_size=8,
                             transform=mae_train_transform(32), scale=1e-4, labelled=False, cache_dir=out / "data")
    mean, std = dataset.stats
    data = {"sensor": "sentinel2", "bands": bands, "band_names": bands, "scale": 1e-4, "mean": mean, "std": std}
    train = dict(DEMO_TRAIN, num_workers=num_workers)
    if quick:
        train.update(max_steps=60, warmup_steps=6, checkpoint_every=30)
    if steps:
        train.update(max_steps=steps, warmup_steps=max(1, steps // 20))
    run_dir = out / "run"
    resume = (run_dir / "checkpoints" / "last.ckpt").exists()
    print(f"mimkit-rs demo: pretraining MAE on {len(dataset)} unlabelled 13-band tiles for {train['max_steps']} "
          f"steps of batch {train['batch_size']}{' (resuming)' if resume else ''}", file=sys.stderr)
    summary = pretrain("mae", dataset, run_dir, TrainConfig(**train), method_config=DEMO_MODEL, resume=resume,
                       run_config={"method": "mae", "model": DEMO_MODEL, "train": train, "data": data})
    picture = save_rgb_reconstruction(run_dir, dataset)
    method, run_config = load_run(run_dir)
    options = {"eurosat-linear": {"epochs": 20 if quick else 90},
               "eurosat-finetune": {"epochs": 5 if quick else 30, "batch_size": 32, "warmup_epochs": 1 if quick else 3},
               "geotiff-segmentation": {"epochs": 10 if quick else 40, "lr": 1e-2, "batch_size": 8}}
    rows = []
    for name, protocol_options in options.items():
        root = seg_root if name == "geotiff-segmentation" else eurosat_root
        print(f"mimkit-rs demo: {name}, pretrained and random init", file=sys.stderr)
        # the task reads the data as pretraining did (the run's bands, scale and statistics); random init is the
        # same architecture built from the run's config with seed 0
        for row in run_task(name, method, root, run_config=run_config, compare_random_init=True, seed=0,
                            **protocol_options):
            rows.append({**row, "method": "mae"})
    update_metrics(run_dir, {"results": rows})
    data_line = (f"Data: {len(dataset)} unlabelled tiles (EuroSAT-shaped synthetic copy, training split), "
                 f"{segmentation_tiles} segmentation tiles per split; values are percentages.")
    return write_report(out, "mimkit-rs demo: MAE on synthetic 13-band Sentinel-2 tiles, pretrained vs random init",
                        summary, data_line, rows, started,
                        f"Reconstructions (RGB = B04, B03, B02): {picture or 'run/pictures/reconstruction.png'}")


__all__ = ["run_demo", "save_rgb_reconstruction", "DEMO_MODEL", "DEMO_TRAIN"]
