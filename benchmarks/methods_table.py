"""The core methods side by side on the demo data: kNN, linear-probe and 10-labels-per-class fine-tuning
accuracy after the same short pretraining budget, and training throughput relative to MAE, all measured in
one run, with the same encoder at random initialisation as the first row.

    python -m mimkit.benchmarks.methods_table --out runs/methods [--steps 300] [--batch-size 64]

Every method gets the demo's encoder (ViT 128 wide, 6 deep, patch 4 on 32 px digits) and the same steps,
batch, learning rate and seed. Teacher-based methods (MaskAlign, MR-MAE, MaskEmbed) learn from the MAE
encoder trained first in the same run, loaded from its local file as a real run would. Fine-tuning
(the demo's protocol: 10 labels per class, 100 epochs, MAE's recipe) is repeated for `--finetune-seeds`
label draws and seeds and reported as mean +- std. Writes methods.md, methods.csv and methods.json, and each
method's row to OUT/<method>/row.json: an invocation with the same settings keeps a row already measured (an
interrupted table continues; a table split over processes shares one OUT), with the throughput of the
invocation that measured it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mimkit.core.config import quiet_lightning
from mimkit.core.data import labelled_dataset
from mimkit.core.runs import load_run
from mimkit.core.data import ImageFolderData, ImageFolderDataset, few_labels, mae_train_transform
from mimkit.core.demo import DEMO_MODEL, LABELS_PER_CLASS
from mimkit.core.synthetic import write_digits
from mimkit.core.evaluate import evaluate
from mimkit.core.train import TrainConfig, pretrain

from .report import write_table

ENCODER = {k: DEMO_MODEL[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")}
DECODER = dict(decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4)
ROW_FILE = "row.json"  # OUT/<method>/row.json: the method's measured row, with the settings it was measured at


def method_configs(teacher_file: Path, autoencoder_file: Path | None = None) -> dict[str, dict]:
    """Each method at the demo size; method-specific values scaled to 32 px images, 4 px patches."""
    teacher = dict(teacher="mimkit", teacher_weights=str(teacher_file))
    autoencoder_file = autoencoder_file or teacher_file.parents[1] / "autoencoder" / "autoencoder.safetensors"
    return {
        "mae": {**DECODER, "mask_ratio": 0.75},
        "simmim": {"mask_patch_size": 8},                      # 2 x 2 tokens per mask unit (paper: 32 px / 4 px)
        # regressor at the encoder's width, as the paper (768 / 768): a narrower one puts the trainable projection
        # (Linear + LayerNorm) on both sides of the alignment, and at 64 CAE nearly collapsed here (fine-tune 51.4
        # vs 87.5 at 128; methods_table_600x128.md)
        "cae": {**DECODER, "decoder_embed_dim": ENCODER["embed_dim"], "regressor_depth": 2},
        "dmjd": {**DECODER, "hog_cell_size": 4, "num_views": 2},
        "cropmae": DECODER,
        "mixedae": DECODER,
        "maskalign": {**teacher, "aligned_layers": 3},
        "mrmae": {**DECODER, **teacher},
        "maskembed": {**teacher, "decoder_depth": 1},
        "maskdcpt": {**DECODER, "mask_patch_size": 8},             # 2 x 2 tokens per hidden cell (paper: 16 px)
        "robustmae": {**DECODER, "num_prompts": 4},
        # mom is not here: it needs object boxes and distances, which the digits have not (benchmarks/objects_table.py)
        # a 2x first stage (trained first, same steps): 16 x 16 latents, a 4-px token = 2 x 2 latent cells
        "lmd": {**DECODER, "autoencoder": str(autoencoder_file)},
        "umd": {"decoder_depth": 2},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/methods")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--methods", nargs="+", help="subset to run (mae always runs first)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--finetune-seeds", type=int, default=3,
                        help="label draws + seeds of the 10-labels-per-class fine-tuning (0 skips it)")
    parser.add_argument("--finetune-epochs", type=int, default=100)
    args = parser.parse_args(argv)
    quiet_lightning()

    out = Path(args.out)
    folders = write_digits(out / "data")
    pretrain_set = ImageFolderDataset(folders["pretrain"], img_size=32, patch_size=4, in_chans=1,
                                      transform=mae_train_transform(32), labelled=False)
    mean, std = pretrain_set.stats
    data = {"mean": mean, "std": std, "crop_pct": 1.0}
    configs = method_configs(out / "mae" / "model.safetensors")
    names = ["mae"] + [m for m in (args.methods or configs) if m != "mae"]
    if "lmd" in names:
        configs["lmd"]["total_steps"] = args.steps  # LMD's mask ratio grows over the whole run
    if "lmd" in names and not Path(configs["lmd"]["autoencoder"]).is_file():
        from mimkit.core.autoencoders import train_autoencoder

        print("methods_table: training LMD's first-stage autoencoder", file=sys.stderr)
        train_autoencoder(str(folders["pretrain"]), str(Path(configs["lmd"]["autoencoder"]).parent), img_size=32,
                          in_chans=1, channels=[32, 64], max_steps=args.steps, batch_size=args.batch_size, lr=1e-3,
                          num_workers=args.num_workers, progress=False)
    rows = []
    settings = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "finetune_seeds", "finetune_epochs")}
    for name in ["random_init"] + names:
        kept = _kept_row(out / name / ROW_FILE, settings)
        if kept is not None:  # measured by an earlier invocation with the same settings (interrupted, or split)
            print(f"methods_table: {name} measured before, kept from {out / name / ROW_FILE}", file=sys.stderr)
            rows.append(kept)
            _write(rows, args, out)
            continue
        if name == "random_init":
            # the demo encoder untrained: what every pretraining must beat (seeded like the methods)
            from .runner import random_init

            encoder = random_init(None, {"method": "mae", "model": {**ENCODER, **configs["mae"]}}, seed=0)
            summary = {}
        else:
            run = out / name
            config = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, lr=args.lr,
                                 warmup_steps=max(1, args.steps // 20), checkpoint_every=args.steps,
                                 num_workers=args.num_workers, progress=False, log_every=10, seed=0)
            method_config = {**ENCODER, **configs[name]}
            # each method's own loader transform where it has one (CropMAE cuts its views from the full image),
            # as `mimkit pretrain` builds it; MAE's crop and flip otherwise
            dataset = ImageFolderData(root=str(folders["pretrain"]), mean=mean, std=std).build(method_config, name)
            print(f"methods_table: pretraining {name} for {args.steps} steps", file=sys.stderr)
            summary = pretrain(name, dataset, run, config, method_config=method_config,
                               resume=(run / "checkpoints" / "last.ckpt").exists())
            encoder = load_run(run)[0].encoder
        train_set = labelled_dataset(folders["train"], encoder, data, "train")
        test_set = labelled_dataset(folders["test"], encoder, data, "test")
        knn = evaluate(encoder, "knn", train_set, test_set, k=20)
        linear = evaluate(encoder, "linear", train_set, test_set, epochs=90, seed=0)
        row = {"method": name, "knn_accuracy": round(100 * knn["accuracy"], 2),
               "linear_accuracy": round(100 * linear["accuracy"], 2),
               "final_loss": _rounded(summary.get("final_loss"), 4),
               "images_per_second": summary.get("images_per_second")}
        if args.finetune_seeds:
            print(f"methods_table: fine-tuning {name} with {LABELS_PER_CLASS} labels per class, "
                  f"{args.finetune_seeds} seeds", file=sys.stderr)
            scores = [100 * evaluate(encoder, "finetune", few_labels(train_set, LABELS_PER_CLASS, seed=seed), test_set,
                                     epochs=args.finetune_epochs, batch_size=32,
                                     warmup_epochs=max(1, args.finetune_epochs // 10), seed=seed)["accuracy"]
                      for seed in range(args.finetune_seeds)]
            row["finetune_10_per_class"] = round(float(np.mean(scores)), 2)
            row["finetune_std"] = round(float(np.std(scores)), 2)
        rows.append(row)
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / ROW_FILE).write_text(json.dumps({"settings": settings, "row": row}) + "\n")
        _write(rows, args, out)  # after each method, so an interrupted run keeps the rows it measured
    return 0


def _kept_row(path: Path, settings: dict) -> dict | None:
    """A method's row an earlier invocation wrote with the same settings, else None (a row of other settings is
    measured again, never mixed in)."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a half-written file: measure again
    return stored.get("row") if stored.get("settings") == settings else None


def _write(rows: list[dict], args, out: Path) -> None:
    base = rows[1]["images_per_second"] if len(rows) > 1 else None
    for row in rows:
        # a run resumed after it had finished trains no step, so it has no throughput of this session
        row["throughput_vs_mae"] = round(row["images_per_second"] / base, 2) if base and row["images_per_second"] else None
    columns = ["method", "knn_accuracy", "linear_accuracy"] + (["finetune_10_per_class", "finetune_std"] if args.finetune_seeds else []) \
        + ["images_per_second", "throughput_vs_mae", "final_loss"]
    header = (f"Digits demo data, ViT 128x6 patch 4 at 32 px, {args.steps} steps of batch {args.batch_size}, "
              f"lr {args.lr}, seed 0; accuracy in percent on 540 test digits: kNN k=20, linear probe 90 epochs on frozen "
              f"features" + (f", fine-tuning with {LABELS_PER_CLASS} labels per class ({args.finetune_epochs} epochs, "
                             f"MAE's recipe; mean +- std over {args.finetune_seeds} label draws and seeds)"
                             if args.finetune_seeds else "") + ". random_init: the same encoder untrained.")
    print(write_table(rows, columns, out / "methods", header))


def _rounded(value, digits: int):
    return None if value is None else round(value, digits)


if __name__ == "__main__":
    sys.exit(main())
