"""The papers' relative claims, reproduced small: each claim pits a method against its baseline on real pixels that
packages ship, over several seeds (mean +- std), at a stated budget, and says whether it holds at this scale.

    python -m mimkit.benchmarks.claims --out runs/claims [--claims NAME ...] [--seeds 0 1 2] [--steps 300]

Every arm uses the demo's encoder (ViT 128x6, patch 4, 32 px) and is scored on scikit-learn's digits (540 test
images) by fine-tuning with 10 labels per class (the demo's protocol, where pretraining shows) and by kNN (k=20) on
frozen features. "Equal time" arms train for as many steps as fit in the baseline's training time: their speed
relative to MAE is measured in this process (a short timed run of each, interleaved) and their step count scaled
by it, so that each arm ends its whole learning-rate schedule. A claim holds when the difference of the means
exceeds the larger of the two standard deviations, in the claimed direction; "not shown" when it is within them,
"does not hold" when it is past them the other way. Seeds run in the outer loop and the tables are rewritten after
each, so an interrupted run reports the seeds it finished. Writes claims.md/.csv/.json and arms.md/.csv/.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from mimkit.core.config import quiet_lightning

from .report import write_table


@dataclasses.dataclass(frozen=True)
class Arm:
    """One way of getting an encoder: a method pretrained on a data set for a budget (or no pretraining)."""

    name: str
    method: str | None                 # None: the encoder at random initialisation
    config: tuple = ()                 # method settings beyond the encoder, as (key, value) pairs
    data: str = "digits"               # "digits" (1,257 unlabelled digit scans) or "single_image" (skimage camera)
    equal_time: bool = False           # scale the steps to MAE's training time
    encoder: tuple = ()                # encoder settings beyond the set's, as (key, value) pairs (a recipe's)
    trainer: tuple = ()                # Lightning Trainer options, as (key, value) pairs (gradient clipping, ...)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A paper's relative claim: `arm` should beat `baseline` on `metric`."""

    name: str
    paper: str
    statement: str
    arm: Arm
    baseline: Arm
    metric: str = "finetune"           # "finetune" (10 labels per class) or "knn"


DECODER = (("decoder_embed_dim", 64), ("decoder_depth", 2), ("decoder_num_heads", 4))
MAE = Arm("mae", "mae", DECODER + (("mask_ratio", 0.75),))
RANDOM = Arm("random_init", None)
TEACHER = "teacher:mae"  # placeholder replaced by the same seed's MAE weights

CLAIMS = [
    Claim("mae_vs_random_init", "He et al., MAE, CVPR 2022",
          "MAE pretraining beats random initialisation when few labels are available", MAE, RANDOM),
    Claim("simmim_vs_mae_equal_time", "He et al., MAE, CVPR 2022, sec. 3 (vs Xie et al., SimMIM, CVPR 2022)",
          "at equal training time MAE is ahead of SimMIM: MAE's encoder sees only the visible quarter of the tokens, "
          "SimMIM's encodes every token", MAE,
          Arm("simmim_equal_time", "simmim", (("mask_patch_size", 8),), equal_time=True)),
    Claim("dmjd_vs_mae_equal_time", "Ma et al., DMJD, arXiv 2301.00230",
          "disjoint masking with joint distillation learns more per unit of training time than MAE",
          Arm("dmjd_equal_time", "dmjd", DECODER + (("hog_cell_size", 4), ("num_views", 2)), equal_time=True), MAE),
    Claim("maskalign_vs_mae_equal_time", "Xue et al., MaskAlign, CVPR 2023",
          "aligning visible features with a teacher's reaches MAE's accuracy in less training time (the teacher here "
          "is the same seed's MAE: no CLIP weights ship)",
          Arm("maskalign_equal_time", "maskalign", (("teacher", "mimkit"), ("teacher_weights", TEACHER),
                                                    ("aligned_layers", 3)), equal_time=True), MAE),
    Claim("lmd_vs_mae_equal_time", "Ma et al., LMD, arXiv 2312.07971",
          "masking in a frozen autoencoder's latent space trains faster than pixel MAE at similar quality (the "
          "first-stage autoencoder's training is not counted, as the paper takes it as given)",
          Arm("lmd_equal_time", "lmd", DECODER + (("autoencoder", "autoencoder"),), equal_time=True), MAE),
    Claim("cropmae_single_image", "Eymael et al., CropMAE, ECCV 2024",
          "CropMAE's two crops of one image let it learn transferable features from a single photograph",
          Arm("cropmae_single_image", "cropmae", DECODER, data="single_image"), RANDOM),
]


def _encoder():
    from mimkit.core.demo import DEMO_MODEL

    return {k: DEMO_MODEL[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")}


def write_single_image(root: Path, copies: int = 64) -> Path:
    """scikit-image's `camera` (512 x 512 grey photograph) as `copies` identical files: one image, and a batch of
    `copies` still draws that many different crop pairs from it."""
    from PIL import Image
    from skimage import data as skdata

    folder = root / "single_image"
    if not folder.is_dir() or len(list(folder.glob("*.png"))) != copies:
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(skdata.camera())
        for index in range(copies):
            image.save(folder / f"camera_{index:03d}.png")
    return folder


class Bench:
    """Trains and scores arms for one output folder; arms are cached on disk by name and seed."""

    def __init__(self, out: Path, steps: int, batch_size: int, lr: float, finetune_epochs: int, num_workers: int):
        from mimkit.core.synthetic import write_digits

        self.out, self.steps, self.batch_size, self.lr = out, steps, batch_size, lr
        self.finetune_epochs, self.num_workers = finetune_epochs, num_workers
        self.folders = write_digits(out / "data")
        self.folders["single_image"] = write_single_image(out / "data")
        self.speed: dict[str, float] = {}  # measured once per folder, so every seed of an arm runs the same steps
        if (out / "speeds.json").is_file():
            self.speed = json.loads((out / "speeds.json").read_text())
        self.scores: dict[tuple[str, int], dict] = {}
        self._stats = None

    # ------------------------------------------------------------------ data
    def stats(self):
        if self._stats is None:
            from mimkit.core.data import ImageFolderDataset, mae_train_transform

            dataset = ImageFolderDataset(self.folders["pretrain"], img_size=32, patch_size=4, in_chans=1,
                                         transform=mae_train_transform(32), labelled=False)
            self._stats = [float(v) for v in dataset.stats[0]], [float(v) for v in dataset.stats[1]]
        return self._stats

    def dataset(self, arm: Arm, model: dict):
        from mimkit.core.data import ImageFolderData

        mean, std = self.stats()  # the digits' statistics for every arm: the encoder is scored on digits
        root = self.folders["pretrain" if arm.data == "digits" else arm.data]
        return ImageFolderData(root=str(root), mean=mean, std=std).build(model, arm.method)

    # ------------------------------------------------------------------ arms
    def model(self, arm: Arm, seed: int, steps: int) -> dict:
        model = {**_encoder(), **dict(arm.encoder), **dict(arm.config)}
        if model.get("teacher_weights") == TEACHER:
            self.encoder(MAE, seed)
            model["teacher_weights"] = str(self.out / "arms" / f"{MAE.name}_seed{seed}" / "model.safetensors")
        if model.get("autoencoder") == "autoencoder":
            model["autoencoder"] = str(self.autoencoder())
            model["total_steps"] = steps  # LMD's mask ratio grows over the whole run
        return model

    def autoencoder(self) -> Path:
        """LMD's first stage, trained once (seed 0) on the unlabelled digits at the same steps and batch."""
        from mimkit.core.autoencoders import train_autoencoder

        folder = self.out / "autoencoder"
        weights = folder / "autoencoder.safetensors"
        if not weights.is_file():
            print("claims: training LMD's first-stage autoencoder", file=sys.stderr)
            train_autoencoder(str(self.folders["pretrain"]), str(folder), img_size=32, in_chans=1, channels=[32, 64],
                              max_steps=self.steps, batch_size=self.batch_size, lr=1e-3,
                              num_workers=self.num_workers, progress=False)
        return weights

    def train_config(self, steps: int, seed: int, **extra):
        from mimkit.core.train import TrainConfig

        return TrainConfig(batch_size=self.batch_size, max_steps=steps, lr=self.lr, warmup_steps=max(1, steps // 20),
                           checkpoint_every=steps, num_workers=self.num_workers, progress=False, log_every=10,
                           seed=seed, **extra)

    def relative_speed(self, arm: Arm, rounds: int = 2, steps: int = 30) -> float:
        """The arm's images/s over MAE's, from short runs of both, interleaved; the median of `rounds`."""
        from mimkit.core.train import pretrain

        if arm.name not in self.speed:
            ratios = []
            for round_ in range(rounds):
                rate = {}
                for subject in (MAE, arm):
                    folder = self.out / "speed" / f"{subject.name}_{round_}"
                    shutil.rmtree(folder, ignore_errors=True)
                    model = self.model(subject, 0, steps)
                    summary = pretrain(subject.method, self.dataset(subject, model), folder,
                                       self.train_config(steps, 0), method_config=model,
                                       trainer=dict(subject.trainer) or None)
                    rate[subject.name] = summary["images_per_second"]
                    shutil.rmtree(folder, ignore_errors=True)
                ratios.append(rate[arm.name] / rate[MAE.name])
            self.speed[arm.name] = float(np.median(ratios))
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "speeds.json").write_text(json.dumps(self.speed, indent=2) + "\n")
            print(f"claims: {arm.name} trains at {self.speed[arm.name]:.2f}x MAE's images/s", file=sys.stderr)
        return self.speed[arm.name]

    def steps_for(self, arm: Arm) -> int:
        return max(1, round(self.steps * self.relative_speed(arm))) if arm.equal_time else self.steps

    def encoder(self, arm: Arm, seed: int):
        """The arm's encoder for `seed`, trained (or loaded when its run finished before)."""
        from mimkit.benchmarks.runner import random_init
        from mimkit.core.runs import load_run, read_metrics
        from mimkit.core.train import pretrain

        if arm.method is None:
            return random_init(None, {"method": "mae", "model": {**_encoder(), **dict(MAE.config)}}, seed=seed), {}
        run = self.out / "arms" / f"{arm.name}_seed{seed}"
        if not (run / "model.safetensors").is_file():
            steps = self.steps_for(arm)
            model = self.model(arm, seed, steps)
            print(f"claims: pretraining {arm.name} seed {seed} for {steps} steps", file=sys.stderr)
            pretrain(arm.method, self.dataset(arm, model), run, self.train_config(steps, seed), method_config=model,
                     resume=(run / "checkpoints" / "last.ckpt").exists(), trainer=dict(arm.trainer) or None)
        return load_run(run)[0].encoder, read_metrics(run).get("train", {})

    def score(self, arm: Arm, seed: int) -> dict:
        """kNN and 10-labels-per-class fine-tuning accuracy (percent) of the arm's encoder for `seed`."""
        from mimkit.core.data import few_labels, labelled_dataset
        from mimkit.core.demo import LABELS_PER_CLASS
        from mimkit.core.evaluate import evaluate

        key = (arm.name, seed)
        stored = self.out / "scores" / f"{arm.name}_seed{seed}.json"
        if key not in self.scores and stored.is_file():  # scored by an earlier invocation on the same folder
            self.scores[key] = json.loads(stored.read_text())
        if key not in self.scores:
            encoder, summary = self.encoder(arm, seed)
            mean, std = self.stats()
            data = {"mean": mean, "std": std, "crop_pct": 1.0}
            train = labelled_dataset(self.folders["train"], encoder, data, "train")
            test = labelled_dataset(self.folders["test"], encoder, data, "test")
            knn = evaluate(encoder, "knn", train, test, k=20)["accuracy"]
            finetune = evaluate(encoder, "finetune", few_labels(train, LABELS_PER_CLASS, seed=seed), test,
                                epochs=self.finetune_epochs, batch_size=32,
                                warmup_epochs=max(1, self.finetune_epochs // 10), seed=seed)["accuracy"]
            self.scores[key] = {"arm": arm.name, "seed": seed, "knn": round(100 * knn, 2),
                                "finetune": round(100 * finetune, 2), "steps": summary.get("steps", 0),
                                "train_seconds": summary.get("seconds", 0.0)}
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_text(json.dumps(self.scores[key]) + "\n")
        return self.scores[key]


def verdict(arm: list[float], baseline: list[float]) -> tuple[float, str]:
    """The difference of the means and whether it exceeds the larger spread in the claimed direction."""
    difference = float(np.mean(arm) - np.mean(baseline))
    spread = max(float(np.std(arm)), float(np.std(baseline)))
    if len(arm) < 2:
        return difference, "one seed: no verdict"
    if difference > spread:
        return difference, "holds"
    return difference, "does not hold" if difference < -spread else "not shown (within the spread)"


def claim_rows(claims, bench: Bench, seeds) -> list[dict]:
    rows = []
    for claim in claims:
        arm = [bench.scores[(claim.arm.name, s)][claim.metric] for s in seeds if (claim.arm.name, s) in bench.scores]
        base = [bench.scores[(claim.baseline.name, s)][claim.metric] for s in seeds
                if (claim.baseline.name, s) in bench.scores]
        if not arm or not base:
            continue
        difference, outcome = verdict(arm, base)
        rows.append({"claim": claim.name, "paper": claim.paper, "statement": claim.statement,
                     "metric": "fine-tune, 10 labels per class" if claim.metric == "finetune" else "kNN k=20",
                     "arm": f"{claim.arm.name}: {np.mean(arm):.2f} +- {np.std(arm):.2f}",
                     "baseline": f"{claim.baseline.name}: {np.mean(base):.2f} +- {np.std(base):.2f}",
                     "difference": round(difference, 2), "seeds": len(arm), "outcome": outcome})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/claims")
    parser.add_argument("--claims", nargs="+", choices=[c.name for c in CLAIMS], help="a subset (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="MAE's pretraining steps (the budget)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-epochs", type=int, default=100)
    parser.add_argument("--num-workers", type=int, default=1)
    args = parser.parse_args(argv)
    quiet_lightning()

    out = Path(args.out)
    claims = [c for c in CLAIMS if not args.claims or c.name in args.claims]
    bench = Bench(out, args.steps, args.batch_size, args.lr, args.finetune_epochs, args.num_workers)
    started = time.perf_counter()
    header = (f"Budget: MAE {args.steps} steps of batch {args.batch_size} (lr {args.lr}), equal-time arms scaled by "
              f"their measured speed; scored on 540 test digits by fine-tuning with 10 labels per class "
              f"({args.finetune_epochs} epochs, MAE's recipe; label draw = seed) and kNN k=20; ViT 128x6 patch 4 at "
              f"32 px. Seeds {args.seeds}.")
    for seed in args.seeds:
        for claim in claims:
            for arm in (claim.baseline, claim.arm):
                bench.score(arm, seed)
        done = args.seeds[:args.seeds.index(seed) + 1]
        arms = sorted(bench.scores.values(), key=lambda row: (row["arm"], row["seed"]))
        for row in arms:
            row["speed_vs_mae"] = round(bench.speed.get(row["arm"], 1.0), 2) if row["arm"] != RANDOM.name else None
        minutes = (time.perf_counter() - started) / 60
        write_table(arms, ["arm", "seed", "steps", "train_seconds", "speed_vs_mae", "knn", "finetune"],
                    out / "arms", f"Every arm and seed ({minutes:.0f} min so far). {header}")
        print(write_table(claim_rows(claims, bench, done), ["claim", "paper", "statement", "metric", "arm", "baseline",
                                                            "difference", "seeds", "outcome"],
                          out / "claims", f"The papers' relative claims at small scale. {header}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
