"""`mimkit-faces demo`: GM-DF on real faces that packages ship and their self-blended forgeries, no download.

It writes the faces (scikit-image's LFW crops and astronaut, matplotlib's Grace Hopper) and four kinds of forgery,
one domain each (`synthetic.py`); pretrains a small GM-DF without labels, encoder unfrozen (no CLIP weights ship
anywhere, so this masked-reconstruction pretraining on the training faces stands in for CLIP's); then trains the
detector as the paper does (encoder frozen; experts, prompts and decoder learning, meta-learning episodes over the
four domains) from the pretrained weights and from the same model at random initialisation, and reports frame and
video AUC, EER and accuracy on the held-out identities.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

# a small GM-DF for 2 CPU cores: 64 x 64 faces in 8 x 8 patches, 4 blocks of width 64; a 2-layer text tower
DEMO_MODEL = dict(encoder=dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4, pos_embed="learned"),
                  text_width=64, text_depth=2, text_heads=4, context_length=24, text_embed_dim=64, adapter_dim=16,
                  decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4)
DEMO_PRETRAIN = dict(batch_size=64, max_steps=200, base_lr=1.5e-3, warmup_steps=15, weight_decay=0.05,
                     checkpoint_every=100, log_every=10, picture_every=0, seed=0)
DEMO_DETECTOR = dict(steps=100, batch_size=32, lr=1e-3)


def run_demo(out: str = "runs/faces-demo", quick: bool = False, steps: int | None = None,
             detector_steps: int | None = None, num_workers: int = 0) -> dict:
    """Pretrain a small GM-DF on shipped real faces (no labels), train it as a forgery detector on four kinds of
    self-blended forgeries (one domain each) and compare it with the same model at random init; writes report.md.

    Args:
        out: the demo folder (data, run, report); an interrupted demo resumes its pretraining from it
        quick: a one-minute smoke run
        steps: pretraining steps (default 200; quick: 30)
        detector_steps: detector training steps (default 100; quick: 20)
        num_workers: data-loading processes
    """
    from mimkit.benchmarks.runner import run_task
    from mimkit.core.checkpoints import load_method_weights
    from mimkit.core.demo import write_report
    from mimkit.core.registry import build_method
    from mimkit.core.runs import update_metrics
    from mimkit.core.train import TrainConfig, pretrain

    from .data import FaceData
    from .synthetic import FORGERY_KINDS, write_dataset

    out = Path(out)
    started = time.perf_counter()
    root = out / "data"
    if not all((root / kind / "test").is_dir() for kind in FORGERY_KINDS):
        print("mimkit-faces demo: writing real faces and their forgeries", file=sys.stderr)
        write_dataset(root, size=64, frames=3, seed=0)
    kinds = sorted(FORGERY_KINDS)  # the benchmark reader's domain order
    data = FaceData(sources=[f"{k}=folder:{root / k}" for k in kinds], frames_per_video=3, labelled=False)
    dataset = data.dataset(64)
    pretrain_model = dict(DEMO_MODEL, domains=kinds, freeze_encoder=False)
    detector_model = dict(DEMO_MODEL, domains=kinds, freeze_encoder=True)  # the paper's frozen encoder
    train = dict(DEMO_PRETRAIN, num_workers=num_workers)
    detector = dict(DEMO_DETECTOR)
    if quick:
        train.update(max_steps=30, warmup_steps=3, checkpoint_every=15)
        detector.update(steps=20)
    if steps:
        train.update(max_steps=steps, warmup_steps=max(1, steps // 15))
    if detector_steps:
        detector.update(steps=detector_steps)
    run_dir = out / "run"
    resume = (run_dir / "checkpoints" / "last.ckpt").exists()
    print(f"mimkit-faces demo: pretraining GM-DF (masked reconstruction, encoder unfrozen) on {len(dataset)} "
          f"unlabelled face frames for {train['max_steps']} steps{' (resuming)' if resume else ''}", file=sys.stderr)
    summary = pretrain("gm_df", dataset, run_dir, TrainConfig(**train), method_config=pretrain_model, resume=resume,
                       run_config={"method": "gm_df", "model": pretrain_model, "train": train,
                                   "data": {"sources": data.sources, "frames_per_video": 3}})
    method = build_method("gm_df", **detector_model)
    load_method_weights(method, run_dir / "model.safetensors", strict=True)
    print(f"mimkit-faces demo: training the detector ({detector['steps']} steps, encoder frozen), pretrained and "
          f"random init", file=sys.stderr)
    rows = [{**row, "method": "gm_df"} for row in
            run_task("faces-synthetic", method, root, run_config={"method": "gm_df", "model": detector_model},
                     compare_random_init=True, seed=0, reader_options={"frames_per_video": 3}, **detector)]
    extra = []
    for row in rows:  # the other measures, as rows of their own in the table
        for key in ("frame_auc", "frame_eer", "video_eer", "video_accuracy"):
            extra.append({**row, "metric": key, "value": round(100 * row["details"][key], 2)})
    rows += extra
    update_metrics(run_dir, {"results": rows})
    data_line = (f"Data: {len(dataset)} unlabelled training frames ({len(dataset.videos)} videos: 102 real faces "
                 f"shipped by scikit-image and matplotlib, split by identity, and their forgeries of four kinds: "
                 f"{', '.join(kinds)}); values are percentages (EER: lower is better).")
    return write_report(out, "mimkit-faces demo: GM-DF on shipped faces and self-blended forgeries, pretrained vs "
                        "random init", summary, data_line, rows, started, "Reconstructions: run/pictures/"
                        "reconstruction.png")


__all__ = ["run_demo", "DEMO_MODEL", "DEMO_PRETRAIN", "DEMO_DETECTOR"]
