"""The remote-sensing and medical papers' claims against MAE on their own domains' sets, reproduced small with the
machinery of `mimkit.benchmarks.claims` (its Arm, Claim, verdict rule, equal-time scaling and arm cache).

    python -m mimkit.benchmarks.domain_claims --out runs/domain_claims [--sets eurosat eurosat_patch4 oct xray] [--claims NAME ...]
        [--seeds 0 1 2] [--steps 600]

Sets (the domains' generated sets; no download):
- eurosat: the remote-sensing demo's data, 13-band Sentinel-2 GeoTIFF tiles in EuroSAT's torchgeo layout drawn from
  spectral signatures (`mimkit.remote_sensing.synthetic.write_eurosat`, 10 classes); the demo's encoder (ViT 64x4,
  patch 8, 32 px, 13 bands). Pretraining reads the training split's tiles without labels; scores are the
  eurosat-knn, eurosat-linear and eurosat-finetune tasks (fine-tuning on 10 labels per class) on the test split.
- eurosat_patch4: the same tiles (the same files) with patch 4, 64 tokens per tile instead of 16: the
  SelectiveMAE claims again, at a token count where encoding and decoding fewer tokens can save more than the
  selection costs (at 16 tokens it trained at 0.7x to 1.2x MAE's images/s on a shared 2-core CPU, at 64 tokens at
  1.3x; each run measures its own, in the tables).
- oct: OCT-like B-scans (NORMAL / DRUSEN / CNV class folders, grey, 32 px: `mimkit.medical.synthetic`); a ViT 64x4,
  patch 4. Pretraining reads the training folders; scores are kNN, the oct2017-linear task and oct2017-finetune
  with 10 labels per class on the test folders.
- xray: 16-bit radiograph-like PNGs in the ChestX-ray14 layout, 3 findings drawn as bright disks, multi-label
  (`mimkit.medical.synthetic`); the same ViT as oct. Pretraining reads train_val_list's images; scores are the
  linear probe and synthetic-chestxray14-finetune on test_list, mean ROC-AUC over the findings (all training
  labels: a few-label draw per class does not exist for multi-label data).
None of the sets is made of real pixels: no package ships labelled multispectral tiles, OCT B-scans or chest
radiographs with findings (/work/shared/ASSETS.md lists what ships), so the claims run on the sets the domains' demos
and tests use.

The data are written once under OUT/data/<eurosat|oct|xray>. An arm is trained once per set and seed and cached
under OUT/<set>/arms (scores under OUT/<set>/scores); the
tables OUT/claims.{md,csv,json} and OUT/arms.{md,csv,json} hold the sets of one invocation and are rewritten after
every seed (run the sets together, or give each invocation its own OUT). Seeds run in parallel processes or on other
machines (`--seeds 2 --out OTHER`) come together by copying OTHER/<set>/scores into OUT/<set>/scores and running
again with `--cached-only`, which trains nothing and tabulates the seeds whose scores are there.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from mimkit.core.config import quiet_lightning

from .claims import DECODER, MAE, RANDOM, Arm, Bench, Claim, verdict
from .report import write_table

SETS = ("eurosat", "eurosat_patch4", "oct", "xray")
KINDS = {"eurosat": "eurosat", "eurosat_patch4": "eurosat", "oct": "oct", "xray": "xray"}  # which data a set writes
# each set's encoder: the remote-sensing demo's (remote_sensing.demo.DEMO_MODEL) and a small grey one
ENCODERS = {
    "eurosat": dict(img_size=32, patch_size=8, in_chans=13, embed_dim=64, depth=4, num_heads=4),
    "eurosat_patch4": dict(img_size=32, patch_size=4, in_chans=13, embed_dim=64, depth=4, num_heads=4),
    "oct": dict(img_size=32, patch_size=4, in_chans=1, embed_dim=64, depth=4, num_heads=4),
    "xray": dict(img_size=32, patch_size=4, in_chans=1, embed_dim=64, depth=4, num_heads=4),
}
# every method's decoder at the MAE arm's size, the rest at each paper's default
SMALL_DECODER = DECODER
METRIC_NAMES = {"finetune": "fine-tune, 10 labels per class", "linear": "linear probe, all training labels",
                "knn": "kNN k=20"}
SET_METRIC_NAMES = {("xray", "finetune"): "fine-tune, all training labels, mean ROC-AUC",
                    ("xray", "linear"): "linear probe, all training labels, mean ROC-AUC"}
# pretraining data settings of an arm's recipe beyond the set's (medical.MedicalData fields)
DATA_OPTIONS = {"thorax_mae": {"crop_scale": (0.5, 1.0)}}  # Thorax MAE PRETRAIN.md: --random_resize_range 0.5 1.0


@dataclasses.dataclass(frozen=True)
class DomainClaim:
    """A claim of a domain paper, pitted on one of SETS."""

    set: str
    claim: Claim


SELECTIVE_MAE = Arm("selective_mae", "selective_mae", SMALL_DECODER)
SELECTIVE_MAE_EQUAL_TIME = dataclasses.replace(SELECTIVE_MAE, name="selective_mae_equal_time", equal_time=True)
CHA_MAE = Arm("cha_mae", "cha_mae", (("decoder_num_heads", 4),))  # decoder at the encoder's width, 2 blocks
# with what its recipe (remote_sensing/recipes/cha_mae.yaml, the official So2Sat command) adds to the defaults
CHA_MAE_RECIPE = Arm("cha_mae_recipe", "cha_mae", CHA_MAE.config, encoder=(("layer_scale", 1.0),),  # init_values=1
                     trainer=(("gradient_clip_val", 1.0),))  # max_grad_norm=1
SMARTIES = Arm("smarties", "smarties", SMALL_DECODER)
UNI4EYE = Arm("uni4eye", "uni4eye", SMALL_DECODER)
# Thorax MAE's defaults: mask 0.9, raw-pixel target (decoder scaled like MAE's: both 2 blocks here)
THORAX_MAE = Arm("thorax_mae", "thorax_mae", SMALL_DECODER)
# UrFound's text branch scaled to the encoder (paper: 384 wide, 6 blocks, 100 tokens). Context 12: the OCT caption
# template "An Optical Coherence Tomography Image shows [CLS]" is 11-12 CLIP BPE tokens with start and end, and the
# loss over the 49,408-word vocabulary at every position is most of a step's time. The captions name the class.
URFOUND = Arm("urfound", "urfound", SMALL_DECODER + (("text_width", 64), ("text_depth", 2), ("text_num_heads", 4),
                                                     ("context_length", 12)))

SELECTIVE_PAPER = "Wang et al., SelectiveMAE, ICCV 2025 (arXiv 2406.11933)"
DOMAIN_CLAIMS = [
    DomainClaim("eurosat", Claim(
        "mae_vs_random_init_eurosat", "He et al., MAE, CVPR 2022",
        "MAE pretraining beats random initialisation when few labels are available (does pretraining show at this "
        "budget on this set at all?)", MAE, RANDOM)),
    DomainClaim("eurosat", Claim(
        "selective_mae_vs_mae_equal_time", SELECTIVE_PAPER,
        "\"SelectiveMAE increases training efficiency over 2 times\" (abstract): at MAE's training time its encoder "
        "is ahead of MAE's", SELECTIVE_MAE_EQUAL_TIME, MAE)),
    DomainClaim("eurosat", Claim(
        "selective_mae_vs_mae_equal_steps", SELECTIVE_PAPER + ", v1 abstract",
        "\"improves training efficiency by 2.2-2.7 times and enhances the classification ... performance of the "
        "baseline MIM model\": at MAE's steps its encoder is ahead of MAE's", SELECTIVE_MAE, MAE)),
    DomainClaim("eurosat_patch4", Claim(
        "selective_mae_vs_mae_equal_time_patch4", SELECTIVE_PAPER,
        "\"SelectiveMAE increases training efficiency over 2 times\" (abstract): at MAE's training time its encoder "
        "is ahead of MAE's (64 tokens per tile)", SELECTIVE_MAE_EQUAL_TIME, MAE)),
    DomainClaim("eurosat_patch4", Claim(
        "selective_mae_vs_mae_equal_steps_patch4", SELECTIVE_PAPER + ", v1 abstract",
        "\"improves training efficiency by 2.2-2.7 times and enhances the classification ... performance of the "
        "baseline MIM model\": at MAE's steps its encoder is ahead of MAE's (64 tokens per tile)", SELECTIVE_MAE,
        MAE)),
    DomainClaim("eurosat", Claim(
        "cha_mae_vs_mae", "Pham et al., ChA-MAEViT, NeurIPS 2025 (arXiv 2503.19331)",
        "random-patch MAEs \"primarily learn local structures within individual channels ... limiting their MCI "
        "effectiveness\" (abstract): at MAE's steps ChA-MAEViT's encoder is ahead of MAE's on 13-band tiles",
        CHA_MAE, MAE)),
    DomainClaim("eurosat", Claim(
        "cha_mae_recipe_vs_mae", "Pham et al., ChA-MAEViT, NeurIPS 2025 (arXiv 2503.19331)",
        "as cha_mae_vs_mae, with the layer scale 1.0 and gradient clipping 1.0 of its official training command",
        CHA_MAE_RECIPE, MAE)),
    DomainClaim("eurosat", Claim(
        "smarties_vs_mae", "Sumbul et al., SMARTIES, ICCV 2025 (arXiv 2506.19585)",
        "\"SMARTIES outperforms previous models that rely on sensor-specific pretraining\" (abstract): at MAE's "
        "steps its encoder is ahead of an MAE pretrained on the same sensor's bands", SMARTIES, MAE)),
    DomainClaim("oct", Claim(
        "mae_vs_random_init_oct", "He et al., MAE, CVPR 2022",
        "MAE pretraining beats random initialisation when few labels are available (does pretraining show at this "
        "budget on this set at all?)", MAE, RANDOM)),
    DomainClaim("oct", Claim(
        "uni4eye_vs_mae", "Cai et al., Uni4Eye, MICCAI 2022 (arXiv 2203.04614)",
        "\"The superiority of Uni4Eye is successfully established through comparisons to other state-of-the-art SSL "
        "pre-training methods\" (abstract; MAE among them): at MAE's steps its 2D path (image + gradient-map "
        "branches) is ahead of MAE's", UNI4EYE, MAE)),
    DomainClaim("oct", Claim(
        "urfound_vs_mae", "Yu et al., UrFound, MICCAI 2024 (arXiv 2408.05618)",
        "\"UrFound significantly outperforms the state-of-the-art retinal foundation model\" (RETFound, an MAE; "
        "abstract): at MAE's steps its encoder is ahead of MAE's. Its captions carry the training images' class "
        "names (the paper's expert annotations), which MAE never sees", URFOUND, MAE)),
    DomainClaim("xray", Claim(
        "mae_vs_random_init_xray", "He et al., MAE, CVPR 2022",
        "MAE pretraining beats random initialisation (does pretraining show at this budget on this set at all?)",
        MAE, RANDOM)),
    DomainClaim("xray", Claim(
        "thorax_mae_vs_mae", "Xiao et al., Thorax MAE, WACV 2023 (arXiv 2210.12843)",
        "\"medical reconstruction requires a much smaller proportion of an image (10% vs. 25%) and a more moderate "
        "random resized crop range (0.5~1.0 vs. 0.2~1.0) compared with natural imaging\" (abstract): at MAE's steps "
        "the chest X-ray recipe (mask 0.9, crops 0.5-1, raw-pixel target) is ahead of MAE's natural-image one (mask "
        "0.75, crops 0.2-1, normalised-pixel target)", THORAX_MAE, MAE)),
]


def rs_paths(root: Path) -> dict[str, list[Path]]:
    """The EuroSAT-layout set's GeoTIFF files by split, from its torchgeo split files."""
    from torchgeo.datasets import EuroSAT

    folder = root / EuroSAT.base_dir
    return {split: [folder / name.rsplit("_", 1)[0] / name.replace(".jpg", ".tif")
                    for name in (root / EuroSAT.split_filenames[split]).read_text().split()]
            for split in ("train", "val", "test")}


def class_folder_paths(root: Path) -> dict[str, list[Path]]:
    """The class-folder set's images by split (train/, test/)."""
    return {split: sorted((root / split).rglob("*.png")) for split in ("train", "test")}


class DomainBench(Bench):
    """Bench on one of SETS: same arms, cache layout per set, equal-time scaling and verdicts as claims.Bench, with
    the set's pretraining data and its registered tasks as the scorer."""

    def __init__(self, set_name: str, out: Path, steps: int, batch_size: int, lr: float, finetune_epochs: int,
                 num_workers: int, per_class: int | None = None, linear_epochs: int = 90):
        if set_name not in SETS:
            raise ValueError(f"set must be one of {', '.join(SETS)}, got {set_name!r}")
        self.set_name, self.kind, self.out = set_name, KINDS[set_name], Path(out)
        self.steps, self.batch_size, self.lr = steps, batch_size, lr
        self.finetune_epochs, self.num_workers, self.linear_epochs = finetune_epochs, num_workers, linear_epochs
        self.speed: dict[str, float] = {}
        self.scores: dict[tuple[str, int], dict] = {}
        self._stats = None
        self.data_sections: dict[str, dict] = {}
        self.root = self.write_data(per_class)

    # ------------------------------------------------------------------ data
    def write_data(self, per_class: int | None) -> Path:
        """Write the set's data once, shared by the sets of its kind (a finished set is kept); returns the root its
        tasks read."""
        root = self.out.parent / "data" / self.kind
        if self.kind == "eurosat":
            from torchgeo.datasets import EuroSAT

            from mimkit.remote_sensing.synthetic import write_eurosat

            if not (root / EuroSAT.split_filenames["test"]).is_file():
                # 60/20/20 per class: 60 unlabelled pretraining tiles, 20 test tiles per class by default
                write_eurosat(root, per_class=per_class or 100, size=32)
            return root
        from mimkit.medical.synthetic import write_synthetic_chestxray14, write_synthetic_classes

        if self.kind == "xray":
            if not (root / "test_list.txt").is_file():
                # 4 x per_class radiographs, a third held out: 400 training and 200 test by default
                write_synthetic_chestxray14(root, count=4 * (per_class or 150), size=32, findings=3,
                                            test_fraction=1 / 3)
            return root
        if not (root / "test").is_dir():
            # a third of each class held out: 100 training and 50 test B-scans per class by default
            write_synthetic_classes(root, "oct", per_class=per_class or 150, size=32, test_fraction=1 / 3)
        return root

    def split_paths(self) -> dict[str, list[Path]]:
        if self.kind == "xray":
            return {split: [self.root / "images" / name for name in (self.root / listed).read_text().split()]
                    for split, listed in (("train", "train_val_list.txt"), ("test", "test_list.txt"))}
        return rs_paths(self.root) if self.kind == "eurosat" else class_folder_paths(self.root)

    def dataset(self, arm: Arm, model: dict):
        """The unlabelled pretraining data (the training split only); the run's data section is kept by arm."""
        from mimkit.core.data import mae_train_transform

        size = model["encoder"]["img_size"]
        if self.kind == "eurosat":
            from torchgeo.datasets import EuroSAT

            from mimkit.core.registry import method_arguments
            from mimkit.remote_sensing.data import GeoTiffDataset

            bands = list(EuroSAT.all_band_names)
            dataset = GeoTiffDataset(self.split_paths()["train"], sensor="sentinel2", bands=bands, img_size=size,
                                     patch_size=model["encoder"]["patch_size"], transform=mae_train_transform(size),
                                     scale=1e-4, labelled=False, cache_dir=self.root.parent)
            mean, std = ([float(v) for v in s] for s in dataset.stats)
            if arm.method is not None and "bands" in method_arguments(arm.method):
                model.update(sensor="sentinel2", bands=dataset.band_names)  # spectrum-aware: the data's bands
            self.data_sections[arm.name] = {"sensor": "sentinel2", "bands": bands, "band_names": dataset.band_names,
                                            "scale": 1e-4, "mean": mean, "std": std}
            return dataset
        from mimkit.medical.data import MedicalData

        if self.kind == "xray":  # train_val_list's radiographs, without their findings
            data = MedicalData(root=str(self.root), modality="xray", layout="chestxray14",
                               **DATA_OPTIONS.get(arm.method, {}))
        else:  # class folders (labels dropped unless the method learns from captions: UrFound)
            data = MedicalData(root=str(self.root / "train"), modality="oct", layout="classes",
                               **DATA_OPTIONS.get(arm.method, {}))
        dataset = data.build(model, arm.method or "mae")
        settings = json.loads(json.dumps(dataclasses.asdict(data)))  # tuples as lists, as config.yaml stores them
        self.data_sections[arm.name] = {k: v for k, v in settings.items() if v is not None}
        return dataset

    # ------------------------------------------------------------------ arms
    def model(self, arm: Arm, seed: int, steps: int) -> dict:
        from mimkit.core.registry import method_arguments

        model = {"encoder": dict(ENCODERS[self.set_name]), **dict(arm.config)}
        if arm.method == "mae" or arm.method is None:
            model.update(dict(MAE.config))
        if arm.method is not None and "total_steps" in method_arguments(arm.method):
            model["total_steps"] = steps  # SelectiveMAE's token-expansion schedule spans the whole run
        if arm.method == "cha_mae":
            model["encoder"]["pos_embed"] = "learned"  # ChA-MAEViT's default encoder (official: learned positions)
        model["encoder"].update(dict(arm.encoder))
        return model

    def run_config(self, arm: Arm, model: dict, steps: int, seed: int) -> dict:
        config = {"method": arm.method or "mae", "model": model, "data": self.data_sections[arm.name],
                  "train": {"max_steps": steps, "batch_size": self.batch_size, "lr": self.lr, "seed": seed}}
        if arm.trainer:  # the run's config.yaml records the options its Trainer got
            config["trainer"] = dict(arm.trainer)
        return config

    def encoder(self, arm: Arm, seed: int):
        """(the arm's method or encoder, its run config, its training summary) for `seed`."""
        from mimkit.benchmarks.runner import random_init
        from mimkit.core.runs import load_run, read_metrics
        from mimkit.core.train import pretrain

        if arm.method is None:
            model = self.model(MAE, seed, self.steps)
            self.dataset(arm, model)  # the data's statistics, as MAE's run records them
            config = {**self.run_config(arm, model, 0, seed), "method": "mae"}
            return random_init(None, config, seed=seed), config, {}
        run = self.out / "arms" / f"{arm.name}_seed{seed}"
        if not (run / "model.safetensors").is_file():
            steps = self.steps_for(arm)
            model = self.model(arm, seed, steps)
            dataset = self.dataset(arm, model)
            print(f"domain claims: pretraining {arm.name} on {self.set_name} seed {seed} for {steps} steps",
                  file=sys.stderr)
            pretrain(arm.method, dataset, run, self.train_config(steps, seed), method_config=model,
                     run_config=self.run_config(arm, model, steps, seed),
                     resume=(run / "checkpoints" / "last.ckpt").exists(), trainer=dict(arm.trainer) or None)
        method, config = load_run(run)
        return method, config, read_metrics(run).get("train", {})

    def tasks(self) -> dict:
        """metric -> (task, protocol options) of this set; fine-tuning draws 10 labels per class, except on the
        multi-label radiographs."""
        from mimkit.benchmarks.tasks import get_task

        finetune = dict(epochs=self.finetune_epochs, batch_size=32, warmup_epochs=max(1, self.finetune_epochs // 10))
        if self.kind == "xray":
            task = get_task("synthetic-chestxray14-finetune")
            linear = dataclasses.replace(task, name="synthetic-chestxray14-linear", protocol="linear",
                                         description="linear probe on the synthetic ChestX-ray14 radiographs")
            return {"linear": (linear, {"epochs": self.linear_epochs}), "finetune": (task, finetune)}
        finetune["labels_per_class"] = 10
        if self.kind == "eurosat":
            return {"knn": (get_task("eurosat-knn"), {"k": 20}),
                    "linear": (get_task("eurosat-linear"), {"epochs": self.linear_epochs}),
                    "finetune": (get_task("eurosat-finetune"), finetune)}
        linear = get_task("oct2017-linear")
        knn = dataclasses.replace(linear, name="oct-knn", protocol="knn", description="kNN on the OCT class folders")
        return {"knn": (knn, {"k": 20}), "linear": (linear, {"epochs": self.linear_epochs}),
                "finetune": (get_task("oct2017-finetune"), finetune)}

    def score_file(self, arm: Arm, seed: int) -> Path:
        """Where the arm's scores for `seed` are kept (OUT/<set>/scores)."""
        return self.out / "scores" / f"{arm.name}_seed{seed}.json"

    def stored(self, arm: Arm, seed: int) -> bool:
        """Whether the arm's scores for `seed` are at hand (measured by this process or stored under OUT/scores)."""
        return (arm.name, seed) in self.scores or self.score_file(arm, seed).is_file()

    def score(self, arm: Arm, seed: int) -> dict:
        """kNN, linear-probe and 10-labels-per-class fine-tuning accuracy (percent) of the arm for `seed`."""
        from mimkit.benchmarks.runner import run_task

        key = (arm.name, seed)
        stored = self.score_file(arm, seed)
        if key not in self.scores and stored.is_file():
            self.scores[key] = json.loads(stored.read_text())
        if key not in self.scores:
            subject, config, summary = self.encoder(arm, seed)
            row = {"set": self.set_name, "arm": arm.name, "seed": seed, "steps": summary.get("steps", 0),
                   "train_seconds": summary.get("seconds", 0.0)}
            for metric, (task, options) in self.tasks().items():
                (result,) = run_task(task, subject, self.root, run_config=config, seed=seed, **options)
                row[metric] = result["value"]
                row[f"{metric}_train"], row[f"{metric}_test"] = result["num_train"], result["num_test"]
            self.scores[key] = row
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_text(json.dumps(row) + "\n")
        return self.scores[key]


def claim_rows(claims: list[DomainClaim], benches: dict[str, DomainBench], seeds, budget: str) -> list[dict]:
    """One row per claim with scores: the two arms' mean +- std on the claim's metric, the difference and the
    verdict of claims.verdict; rows carry the paper, its statement, the set and the budget."""
    rows = []
    for entry in claims:
        claim, bench = entry.claim, benches.get(entry.set)
        if bench is None:
            continue
        values = [[bench.scores[(a.name, s)][claim.metric] for s in seeds if (a.name, s) in bench.scores]
                  for a in (claim.arm, claim.baseline)]
        if not values[0] or not values[1]:
            continue
        difference, outcome = verdict(*values)
        speed = bench.speed.get(claim.arm.name)
        rows.append({"claim": claim.name, "set": entry.set, "paper": claim.paper, "statement": claim.statement,
                     "metric": SET_METRIC_NAMES.get((entry.set, claim.metric), METRIC_NAMES[claim.metric]),
                     "arm": f"{claim.arm.name}: {np.mean(values[0]):.2f} +- {np.std(values[0]):.2f}",
                     "baseline": f"{claim.baseline.name}: {np.mean(values[1]):.2f} +- {np.std(values[1]):.2f}",
                     "difference": round(difference, 2), "seeds": len(values[0]),
                     "budget": budget + (f"; arm at {speed:.2f}x MAE's images/s: {bench.steps_for(claim.arm)} steps"
                                         if claim.arm.equal_time and speed else ""),
                     "outcome": outcome})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/domain_claims")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--claims", nargs="+", choices=[c.claim.name for c in DOMAIN_CLAIMS],
                        help="a subset (default: every claim of the sets)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600, help="MAE's pretraining steps (the demo's budget)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-epochs", type=int, default=100)
    parser.add_argument("--linear-epochs", type=int, default=90)
    parser.add_argument("--per-class", type=int, default=None,
                        help="images per class to write (eurosat: 100, 60 of them training; oct: 150, 100 training; "
                             "xray: 4 x this many radiographs, default 600, 400 training)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--cached-only", action="store_true",
                        help="train and score nothing: write the tables from the scores stored under OUT (seeds run "
                             "by other processes or machines, their OUT/<set>/scores copied in)")
    args = parser.parse_args(argv)
    quiet_lightning()

    out = Path(args.out)
    claims = [c for c in DOMAIN_CLAIMS if c.set in args.sets and (not args.claims or c.claim.name in args.claims)]
    benches = {name: DomainBench(name, out / name, args.steps, args.batch_size, args.lr, args.finetune_epochs,
                                 args.num_workers, args.per_class, args.linear_epochs)
               for name in args.sets if any(c.set == name for c in claims)}
    budget = (f"MAE {args.steps} steps of batch {args.batch_size} (lr {args.lr}); fine-tune {args.finetune_epochs} "
              f"epochs on 10 labels per class (label draw = seed; xray: on all its training labels), linear probe "
              f"{args.linear_epochs} epochs")
    header = (f"Budget: {budget}; equal-time arms scaled by their measured speed. Sets: eurosat = 13-band "
              f"EuroSAT-layout tiles drawn from spectral signatures (ViT 64x4 patch 8, 32 px; eurosat_patch4: the same "
              f"with patch 4), oct = OCT-like B-scans in 3 class folders (ViT 64x4 patch 4, 32 px), xray = "
              f"radiograph-like PNGs with 3 findings (ViT 64x4 patch 4, 32 px). Seeds {args.seeds}.")
    started = time.perf_counter()
    for seed in args.seeds:
        for entry in claims:
            for arm in (entry.claim.baseline, entry.claim.arm):
                if not args.cached_only or benches[entry.set].stored(arm, seed):
                    benches[entry.set].score(arm, seed)
        done = args.seeds[:args.seeds.index(seed) + 1]
        arms = sorted((row for bench in benches.values() for row in bench.scores.values()),
                      key=lambda row: (row["set"], row["arm"], row["seed"]))
        for row in arms:  # the speed relative to MAE's is measured for equal-time arms only
            speed = benches[row["set"]].speed.get(row["arm"])
            row["speed_vs_mae"] = round(speed, 2) if speed is not None else None
            row["seconds_per_step"] = round(row["train_seconds"] / row["steps"], 3) if row["steps"] else None
        minutes = (time.perf_counter() - started) / 60
        write_table(arms, ["set", "arm", "seed", "steps", "train_seconds", "seconds_per_step", "speed_vs_mae", "knn",
                           "linear", "finetune"], out / "arms",
                    f"Every arm and seed ({minutes:.0f} min so far). {header}")
        print(write_table(claim_rows(claims, benches, done, budget),
                          ["claim", "set", "paper", "statement", "metric", "arm", "baseline", "difference", "seeds",
                           "budget", "outcome"], out / "claims",
                          f"The domain papers' claims against MAE on their domains' sets. {header}"))
    (out / "speeds.json").write_text(json.dumps({n: b.speed for n, b in benches.items()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
