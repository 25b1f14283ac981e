"""`mimkit demo`: the main job on embedded real images, no download.

scikit-learn ships 1,797 real 8x8 scans of handwritten digits (UCI optical digits). The demo writes them
as 32x32 PNG folders (the layout a user's own data takes), pretrains a small MAE on the unlabelled
training split with fresh random-resized crops every step, then compares the pretrained encoder with
the same encoder at random initialisation under kNN, linear probe and fine-tuning with 10 labels per class.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


# The demo's settings; measured on 2 CPU cores (see README).
DEMO_MODEL = dict(img_size=32, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4,
                  decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, mask_ratio=0.75, norm_pix_loss=True)
DEMO_TRAIN = dict(batch_size=256, max_steps=1200, base_lr=1.5e-4 * 10, warmup_steps=60, weight_decay=0.05,
                  checkpoint_every=400, log_every=20, picture_every=0, seed=0)
LABELS_PER_CLASS = 10


def run_demo(out: str | Path = "runs/demo", steps: int | None = None, quick: bool = False,
             precision: str = "auto", num_workers: int = 1) -> dict:
    """The main job, no download: write scikit-learn's handwritten digits as PNG folders, pretrain a small MAE on the
    unlabelled training images, then compare the pretrained encoder with the same encoder at random initialisation
    under kNN, linear probe and fine-tuning with 10 labels per class. Writes report.md, metrics.json and pictures.

    Args:
        out: the output folder (data/, run/, report.md); an interrupted demo resumes from its last checkpoint
        steps: pretraining steps (default 1200)
        quick: a smoke run: 60 steps and short evaluations (its numbers mean nothing)
        precision: auto (bf16-mixed where the CPU or GPU computes bf16 natively, else 32), 32 or bf16-mixed
        num_workers: data-loading processes
    """
    from mimkit.benchmarks.runner import random_init

    from .data import ImageFolderDataset, few_labels, labelled_dataset, mae_train_transform
    from .evaluate import evaluate_encoders
    from .runs import update_metrics
    from .synthetic import write_digits
    from .train import TrainConfig, auto_precision, pretrain

    out = Path(out)
    precision = auto_precision(precision)  # the report and config.yaml name what ran
    started = time.perf_counter()
    folders = write_digits(out / "data")
    train = dict(DEMO_TRAIN, precision=precision, num_workers=num_workers)
    if quick:
        train.update(max_steps=60, warmup_steps=6, checkpoint_every=30)
    if steps:
        train.update(max_steps=steps, warmup_steps=max(1, steps // 20))
    dataset = ImageFolderDataset(folders["pretrain"], img_size=32, patch_size=4, in_chans=1,
                                 transform=mae_train_transform(32), labelled=False)
    mean, std = dataset.stats
    data = {"img_size": 32, "mean": mean, "std": std, "crop_pct": 1.0}
    run_dir = out / "run"
    resume = (run_dir / "checkpoints" / "last.ckpt").exists()
    print(f"mimkit demo: pretraining MAE on {len(dataset)} unlabelled digit images for {train['max_steps']} steps "
          f"of batch {train['batch_size']}{' (resuming)' if resume else ''}", file=sys.stderr)
    summary = pretrain("mae", dataset, run_dir, TrainConfig(**train), method_config=DEMO_MODEL, resume=resume,
                       run_config={"method": "mae", "model": DEMO_MODEL, "train": train, "data": data})
    pretrained = summary_method(run_dir)

    random_encoder = random_init(pretrained.encoder, {"method": "mae", "model": DEMO_MODEL}, seed=0)
    train_set = labelled_dataset(folders["train"], pretrained.encoder, data, "train")
    test_set = labelled_dataset(folders["test"], pretrained.encoder, data, "test")
    few = few_labels(train_set, LABELS_PER_CLASS, seed=0)
    # evaluation in the pretraining's precision (bf16 autocast where pretraining used it) and loader processes
    evaluation = {"precision": "bf16" if precision == "bf16-mixed" else "fp32", "num_workers": num_workers}
    options = {"knn": {"k": 20, **evaluation}, "linear": {"epochs": 10 if quick else 90, "seed": 0, **evaluation},
               "finetune": {"epochs": 5 if quick else 100, "batch_size": 32, "warmup_epochs": 1 if quick else 10,
                            "seed": 0, **evaluation}}
    print("mimkit demo: evaluating pretrained vs random-init encoders (kNN, linear probe, fine-tune with "
          f"{LABELS_PER_CLASS} labels per class)", file=sys.stderr)
    rows = evaluate_encoders({"pretrained": pretrained.encoder, "random": random_encoder},
                             ["knn", "linear", "finetune"], train_set, test_set, options, few)
    for row in rows:
        row["data"] = "sklearn-digits-32px"
    update_metrics(run_dir, {"results": rows})
    data_line = (f"Data: {len(dataset)} unlabelled training images (pretraining), {len(train_set)} labelled for kNN "
                 f"/ linear probe, {len(few)} ({LABELS_PER_CLASS} per class) for fine-tuning, {len(test_set)} test "
                 f"images.")
    return write_report(out, "mimkit demo: MAE on real handwritten digits (scikit-learn), pretrained vs random init",
                        summary, data_line, rows, started, "Reconstructions: run/pictures/reconstruction.png")


def pretraining_line(summary: dict) -> str:
    """One line on the pretraining; a run finished before (a demo run again on its folder) trained no step now."""
    speed = (f"{summary['images_per_second']} images/s" if summary.get("images_per_second") else
             "finished in an earlier invocation, reused")
    loss = f", final loss {summary['final_loss']:.4f}" if summary.get("final_loss") is not None else ""
    return f"Pretraining: {summary['steps']} steps, effective batch {summary['effective_batch']}, {speed}{loss}."


def write_report(out: Path, title: str, summary: dict, data_line: str, rows: list[dict], started: float,
                 pictures_line: str) -> dict:
    """A demo's report.md (printed too): the pretraining summary, the data, and pretrained vs random init."""
    from mimkit.benchmarks.report import pivot_inits, write_table

    minutes = (time.perf_counter() - started) / 60
    report = "\n".join([
        f"# {title}", "",
        pretraining_line(summary),
        data_line, f"Total time {minutes:.1f} min.", "",
        write_table(pivot_inits(rows), {"protocol": "protocol", "metric": "metric (%)", "pretrained": "pretrained",
                                        "random": "random", "gain": "gain"}).rstrip(), "",
        f"{pictures_line}; loss curve: run/pictures/loss_curve.png.", ""])
    (out / "report.md").write_text(report)
    print(report)
    return {"summary": summary, "results": rows, "report": str(out / "report.md")}


def summary_method(run_dir: Path):
    from .runs import load_run

    method, _ = load_run(run_dir)
    return method


__all__ = ["run_demo", "write_report", "DEMO_MODEL", "DEMO_TRAIN"]
