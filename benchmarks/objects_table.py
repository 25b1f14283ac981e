"""Masked Object Modeling (DistFormer's MoM) beside a distance head alone and an MAE-pretrained encoder, on the
pasted-object set at the methods table's budget: per-object distance errors on held-out images, training
throughput and final loss, all measured in one run.

    python -m mimkit.benchmarks.objects_table --out runs/objects [--steps 300] [--batch-size 64]

The set (core.synthetic.write_objects, real pixels): crops of scikit-image's `coffee`, `rocket` and
`hubble_deep_field` photographs with its `chelsea` and the `astronaut`'s upper body pasted at known boxes, two per
64 px image, distance = 64 / box height (a pinhole camera). Every row gets the demo encoder's size (ViT 128 wide,
6 deep, 4 heads, 8 x 8 tokens: patch 8 at 64 px) and the same steps, batch, learning rate and seed:
(a) `distance_only`: mom with mom_weight 0 (the MoM branch off, every object token visible), from scratch;
(b) `mom`: mom at its default mom_weight (20, DistFormer's KITTI script), from scratch;
(c) `mae`: MAE pretrained on the same training images (no boxes), then `mae_then_distance`: (a) started from that
encoder. Errors are DistFormer's (utils/metrics.py): abs_rel, sq_rel, rmse, rmse_log, delta_1 (share within a
factor 1.25), on every object of the test split with every token visible. `train_mean` predicts the training
objects' mean distance for every object: what a model must beat. Writes objects.md, objects.csv, objects.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mimkit.core.config import quiet_lightning
from mimkit.core.data import ImageFolderData
from mimkit.core.demo import DEMO_MODEL
from mimkit.core.objects import KittiObjects, ObjectFolderData, distance_metrics, evaluate_distances, object_boxes
from mimkit.core.runs import load_run
from mimkit.core.synthetic import write_objects
from mimkit.core.train import TrainConfig, pretrain

from .report import write_table

IMG_SIZE = 64
# the demo encoder's width, depth and heads; patch 8 at 64 px keeps its 8 x 8 tokens on images whose objects are
# 10 to 31 px high
ENCODER = {"img_size": IMG_SIZE, "patch_size": 8, "in_chans": 3,
           **{k: DEMO_MODEL[k] for k in ("embed_dim", "depth", "num_heads")}}
MOM = {"object_dim": DEMO_MODEL["embed_dim"], "object_num_heads": DEMO_MODEL["num_heads"],  # the demo's width
       "object_depth": 6, "object_decoder_depth": 2,  # DistFormer kitti.sh: 6 encoder, 2 decoder layers
       "pool_size": 8, "mask_ratio": 0.5,  # kitti.sh
       "crop_size": (32, 32),  # ours: 4 x 4 pixels per token cell (kitti.sh: 120 x 120 on 375 x 1242 frames)
       "min_box_size": (4, 4)}  # ours: kitti.sh's 25 px of a 375 px frame, at 64 px
MAE = {"decoder_embed_dim": 64, "decoder_depth": 2, "decoder_num_heads": 4, "mask_ratio": 0.75}  # methods table's


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/objects")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=600)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of every training run (the data set stays the same)")
    parser.add_argument("--speed-rounds", type=int, default=5,
                        help="rounds of the interleaved throughput measurement (one step of each model per round)")
    args = parser.parse_args(argv)
    quiet_lightning()

    out = Path(args.out)
    print(f"objects_table: writing the pasted-object set ({args.train_images} + {args.test_images} images)",
          file=sys.stderr)
    folders = write_objects(out / "data", train=args.train_images, test=args.test_images, size=IMG_SIZE)
    objects = ObjectFolderData(root=str(folders["train"]))
    train_set = objects.build({"encoder": ENCODER}, "mom")
    test_set = KittiObjects(folders["test"], img_size=IMG_SIZE, mean=objects.mean, std=objects.std, max_objects=32)
    # MAE reads the same images without boxes, normalised the same way, with its own crops and flips
    mae_set = ImageFolderData(root=str(folders["train"] / "image_2"), mean=objects.mean, std=objects.std).build(
        {**ENCODER, **MAE}, "mae")

    def train(name: str, method: str, dataset, config: dict, pretrained: Path | None = None) -> dict:
        run = out / name
        settings = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, lr=args.lr,
                               warmup_steps=max(1, args.steps // 20), checkpoint_every=args.steps,
                               num_workers=args.num_workers, progress=False, log_every=10, seed=args.seed)
        finished = json.loads((run / "metrics.json").read_text()).get("train", {}) \
            if (run / "metrics.json").is_file() and (run / "model.safetensors").is_file() else {}
        if finished.get("steps") == args.steps and finished.get("effective_batch") == args.batch_size:
            return finished  # trained before: its own numbers (a resumed finished run would have none)
        print(f"objects_table: training {name} for {args.steps} steps", file=sys.stderr)
        resume = (run / "checkpoints" / "last.ckpt").exists()
        return pretrain(method, dataset, run, settings, method_config=config, resume=resume,
                        pretrained=None if resume else pretrained)

    stats = {"data_mean": objects.mean, "data_std": objects.std}
    distance_only = {"encoder": ENCODER, **MOM, **stats, "mom_weight": 0.0}
    summaries = {
        "distance_only": train("distance_only", "mom", train_set, distance_only),
        "mom": train("mom", "mom", train_set, {"encoder": ENCODER, **MOM, **stats}),
        "mae": train("mae", "mae", mae_set, {**ENCODER, **MAE}),
    }
    summaries["mae_then_distance"] = train("mae_then_distance", "mom", train_set, distance_only,
                                           pretrained=out / "mae" / "model.safetensors")

    train_distances = np.concatenate([d.numpy() for i in range(len(train_set))
                                      for d in object_boxes({k: v[None] for k, v in train_set[i].items()})[1]])
    test_distances = np.concatenate([d.numpy() for i in range(len(test_set))
                                     for d in object_boxes({k: v[None] for k, v in test_set[i].items()})[1]])
    rows = [{"row": "train_mean", "pretraining": "-", **_rounded(distance_metrics(
        test_distances, np.full_like(test_distances, train_distances.mean()))), "objects": len(test_distances)}]
    pretraining = {"distance_only": "none", "mom": "none (MoM with the distance)", "mae": "MAE (no boxes)",
                   "mae_then_distance": "MAE, then (a)"}
    for name, summary in summaries.items():
        row = {"row": name, "pretraining": pretraining[name]}
        if name != "mae":
            row.update(_rounded(evaluate_distances(load_run(out / name)[0], test_set, batch_size=args.batch_size)))
        last = (summary.get("history") or [{}])[-1]
        row.update(images_per_second=summary.get("images_per_second"), final_loss=_round(summary.get("final_loss"), 4),
                   final_distance_loss=_round(last.get("distance"), 4), final_mom_loss=_round(last.get("mom"), 4))
        rows.append(row)
    speeds = interleaved_speed({"distance_only": ("mom", distance_only, train_set),
                                "mom": ("mom", {"encoder": ENCODER, **MOM, **stats}, train_set),
                                "mae": ("mae", {**ENCODER, **MAE}, mae_set)}, args.batch_size, args.speed_rounds)
    speeds["mae_then_distance"] = speeds["distance_only"]  # the same model and step
    for row in rows:
        speed = speeds.get(row["row"])
        row["throughput_vs_distance_only"] = round(speed / speeds["distance_only"], 2) if speed else None
        row["throughput_vs_mae"] = round(speed / speeds["mae"], 2) if speed else None
    columns = ["row", "pretraining", "abs_rel", "sq_rel", "rmse", "rmse_log", "delta_1", "objects",
               "images_per_second", "throughput_vs_distance_only", "throughput_vs_mae", "final_loss",
               "final_distance_loss", "final_mom_loss"]
    header = (f"Pasted-object set (scikit-image photographs, {args.train_images} training / {args.test_images} test "
              f"images, 64 px, 2 objects each, distance = 64 / box height in [2, 6.4]); ViT 128x6 patch 8, "
              f"{args.steps} steps of batch {args.batch_size}, lr {args.lr}, seed {args.seed} for every trained row; "
              f"distance errors on every test object with all tokens visible (DistFormer's metrics: abs_rel, sq_rel, "
              f"rmse, rmse_log, delta_1 = share within a factor 1.25). train_mean: the training objects' mean distance "
              f"for every object. mae: the pretraining stage of mae_then_distance (no distance head). final_loss: the "
              f"training loss at the last logged step (mom: distance + 20 x MoM), with its two parts. "
              f"images_per_second: each run's own; the throughput ratios: one training step of each model in turn on "
              f"one batch of {args.batch_size}, median of {args.speed_rounds} rounds (a shared machine's load falls "
              f"on every model alike).")
    print(write_table(rows, columns, out / "objects", header))
    return 0


def interleaved_speed(models: dict[str, tuple[str, dict, object]], batch_size: int, rounds: int) -> dict[str, float]:
    """Training images per second of each (method, config, dataset), one optimiser step of each in turn per round on
    a fixed batch, median over rounds: on a shared machine the others' load then falls on every model alike."""
    import time

    import torch

    from mimkit.core import build_method

    steps = {}
    for name, (method, config, dataset) in models.items():
        model = build_method(method, **config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = torch.utils.data.default_collate([dataset[(i, i)] for i in range(batch_size)])
        steps[name] = (model, optimizer, batch)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds + 1):  # the first round warms up
        for name, (model, optimizer, batch) in steps.items():
            started = time.perf_counter()
            optimizer.zero_grad()
            model(batch).loss.backward()
            optimizer.step()
            if round_:
                times[name].append(time.perf_counter() - started)
    return {name: batch_size / float(np.median(values)) for name, values in times.items()}


def _round(value, digits: int):
    return None if value is None else round(float(value), digits)


def _rounded(scores: dict) -> dict:
    return {k: (v if k == "objects" else _round(v, 4)) for k, v in scores.items()}


if __name__ == "__main__":
    sys.exit(main())
