"""Medical fine-tuning benchmarks, registered with mimkit.benchmarks on import.

Tasks: multi-label chest X-ray classification (ChestX-ray14, CheXpert; macro ROC-AUC in percent), 3D organ
segmentation with a UNETR-style decoder over the pretrained ViT (BTCV, any Decathlon task; mean Dice in
percent, MONAI's DiceMetric), OCT / fundus classification (accuracy in percent) and anomaly detection
(image-level ROC-AUC in percent, MemMC-MAE). Each reads a local copy of the public dataset in its usual
layout (see mimkit.medical.layouts); the `synthetic-*` tasks read the small data that
`mimkit-medical synthetic` writes, for tests and the demo. Importing this module also registers the
medical papers' published figures (mimkit.medical.published).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mimkit.benchmarks.tasks import Task, get_task, register_task
from mimkit.core.encoders import VIT_SIZES
from mimkit.core.errors import ConfigError, DataError, TrainingError
from mimkit.medical import published  # noqa: F401  (registers the medical papers' published figures)
from mimkit.medical.data import build_dataset, preprocessing_from
from mimkit.medical.layouts import CHEXPERT_COMPETITION


# ============================================================================================ segmentation
class InterpolateUpBlock(nn.Module):
    """The last decoder stage when the patch size is not a power of two (Hi-End-MAE's UNETR for 12^3 patches):
    interpolate to the skip's size, a 3x3 convolution, concatenate the skip, a UNETR convolution block."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm_name: str | tuple,
                 res_block: bool = True):
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock, get_conv_layer

        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        self.conv = get_conv_layer(spatial_dims, in_channels, out_channels, kernel_size=3, stride=1, conv_only=True)
        block = UnetResBlock if res_block else UnetBasicBlock
        self.block = block(spatial_dims, 2 * out_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False))
        return self.block(torch.cat([x, skip], dim=1))


class ViTSegmenter(nn.Module):
    """UNETR-style segmentation over a mimkit ViTEncoder (Hatamizadeh et al., "UNETR: Transformers for 3D
    Medical Image Segmentation", WACV 2022): hidden states of evenly spaced blocks feed MONAI's UNETR blocks.

    For a 12-block ViT with 16^3 patches this is UNETR: the outputs of blocks 3, 6 and 9 (the paper's z3, z6,
    z9; MONAI's code reads blocks 4, 7, 10) become skips at 1/2, 1/4 and 1/8 resolution through
    UnetrPrUpBlock, the final normed output enters the first UnetrUpBlock, and the input itself is the
    full-resolution skip (UnetrBasicBlock). A patch of 2^k has k decoder stages and k - 1 hidden skips; any
    other patch (Hi-End-MAE's 12) gets floor(log2 p) transposed-convolution stages and a last stage that
    interpolates to the input size, as Hi-End-MAE's UNETR does.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, feature_size: int = 16,
                 norm_name: str | tuple = "instance", res_block: bool = True, conv_block: bool = True,
                 skip_layers: Sequence[int] | None = None, copy_encoder: bool = True):
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock

        dims = getattr(encoder, "spatial_dims", None)
        if dims not in (2, 3) or not hasattr(encoder, "forward_features"):
            raise ConfigError(f"ViTSegmenter needs a mimkit ViTEncoder with spatial_dims 2 or 3, got "
                              f"{type(encoder).__name__} (spatial_dims={dims})")
        if getattr(encoder, "volume_grid", None) is not None:
            raise ConfigError("ViTSegmenter reads plain 2D or 3D encoders; a unified 2D/3D encoder (Uni4Eye) "
                              "segments through its 2D path only")
        patch = tuple(encoder.patch_size)
        if len(set(patch)) != 1 or patch[0] < 2:
            raise ConfigError(f"ViTSegmenter needs the same patch size (2 or more) on every axis, got {patch}")
        if num_classes < 2:
            raise ConfigError(f"segmentation needs at least 2 classes (background and one more), got {num_classes}")
        p = patch[0]
        stages = int(math.floor(math.log2(p)))
        self.power_of_two = 2 ** stages == p
        num_skips = stages - 1 if self.power_of_two else stages
        depth = len(encoder.blocks)
        if skip_layers is None:  # evenly spaced: 3, 6, 9 for 12 blocks and 3 skips (UNETR)
            skip_layers = [min(depth, max(1, round(depth * j / (num_skips + 1)))) for j in range(1, num_skips + 1)]
        self.skip_layers = tuple(int(layer) for layer in skip_layers)
        if len(self.skip_layers) != num_skips or any(not 1 <= layer <= depth for layer in self.skip_layers):
            raise ConfigError(f"skip_layers must name {num_skips} encoder blocks between 1 and {depth} for patch "
                              f"size {p}, got {self.skip_layers}")
        self.encoder = copy.deepcopy(encoder) if copy_encoder else encoder
        self.spatial_dims, self.num_classes = dims, num_classes
        width = encoder.embed_dim
        self.stem = UnetrBasicBlock(dims, encoder.in_chans, feature_size, kernel_size=3, stride=1,
                                    norm_name=norm_name, res_block=res_block)
        # skip j (1 = finest) is upsampled num_skips - j + 1 times from the token grid
        self.skips = nn.ModuleList([
            UnetrPrUpBlock(dims, width, feature_size * 2 ** j, num_layer=num_skips - j, kernel_size=3, stride=1,
                           upsample_kernel_size=2, norm_name=norm_name, conv_block=conv_block, res_block=res_block)
            for j in range(1, num_skips + 1)])
        self.ups = nn.ModuleList()
        channels = width
        for j in range(num_skips, 0, -1):
            self.ups.append(UnetrUpBlock(dims, channels, feature_size * 2 ** j, kernel_size=3, upsample_kernel_size=2,
                                         norm_name=norm_name, res_block=res_block))
            channels = feature_size * 2 ** j
        self.final = (UnetrUpBlock(dims, channels, feature_size, kernel_size=3, upsample_kernel_size=2,
                                   norm_name=norm_name, res_block=res_block) if self.power_of_two
                      else InterpolateUpBlock(dims, channels, feature_size, norm_name, res_block))
        self.head = UnetOutBlock(dims, feature_size, num_classes)

    def _feature_map(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(B, prefix + N, D) tokens -> (B, D, *grid): patch tokens are in row-major grid order."""
        tokens = tokens[:, self.encoder.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(self.encoder.patch_embed.check(x))
        out, hidden = self.encoder.forward_features(x, return_layers=self.skip_layers)
        by_layer = dict(zip(sorted(set(self.skip_layers)), hidden))
        skips = [block(self._feature_map(by_layer[layer], grid)) for block, layer in zip(self.skips, self.skip_layers)]
        h = self._feature_map(out, grid)
        for up, skip in zip(self.ups, reversed(skips)):
            h = up(h, skip)
        return self.head(self.final(h, self.stem(x)))


def _num_segmentation_classes(train_set) -> int:
    classes = getattr(train_set, "classes", None)
    if classes:
        return len(classes)
    view = train_set.eval_view() if hasattr(train_set, "eval_view") else train_set
    return int(max(int(view[i]["label"].max()) for i in range(len(view)))) + 1


def segmentation_dice(model: nn.Module, test_set, num_classes: int, roi_size: Sequence[int], *, overlap: float = 0.5,
                      device=None, sw_batch_size: int = 4) -> dict:
    """Mean Dice over the foreground classes (MONAI's DiceMetric, background excluded, classes absent from a
    volume's ground truth ignored) with sliding-window inference over each whole test volume."""
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric

    device = device or next(model.parameters()).device
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True, get_not_nans=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(len(test_set)):
                sample = test_set[i]
                image, label = sample["image"][None].to(device), sample["label"][None].to(device)
                logits = sliding_window_inference(image, roi_size=tuple(roi_size), sw_batch_size=sw_batch_size,
                                                  predictor=model, overlap=overlap)
                predicted = F.one_hot(logits.argmax(1), num_classes).movedim(-1, 1)
                truth = F.one_hot(label[:, 0].clamp_max(num_classes - 1), num_classes).movedim(-1, 1)
                metric(predicted, truth)
    finally:
        model.train(was_training)
    per_class, counted = (t.cpu() for t in metric.aggregate())
    metric.reset()
    # a class absent from every test volume's ground truth has no Dice (MONAI reports 0 for it): leave it out
    present = counted > 0
    return {"dice_mean": float(per_class[present].mean()) if present.any() else float("nan"),
            "dice_per_class": [round(float(v), 4) if ok else None for v, ok in zip(per_class, present)],
            "num_test": len(test_set)}


def finetune_segmentation(encoder: nn.Module, train_set, test_set, *, num_classes: int | None = None,
                          steps: int = 500, batch_size: int = 2, lr: float = 1e-4, weight_decay: float = 1e-5,
                          warmup_steps: int | None = None, feature_size: int = 16, overlap: float = 0.5,
                          seed: int = 0, device=None, num_workers: int = 0, return_model: bool = False) -> dict:
    """Fine-tune a ViTSegmenter over a copy of `encoder` and score mean Dice on `test_set`.

    The recipe of UNETR's and Hi-End-MAE's BTCV code: DiceCE loss (softmax, squared prediction), AdamW with lr
    1e-4 and weight decay 1e-5, linear warmup then cosine decay. `train_set` yields random crops of the
    encoder's input size with their label maps; `test_set` yields whole volumes (sliding-window inference).
    steps=0 scores the untrained decoder (the baseline a fine-tune must beat).
    """
    from monai.losses import DiceCELoss

    from mimkit.core.data import ResumableSampler, make_loader
    from mimkit.core.evaluate import default_device
    from mimkit.core.train import warmup_cosine

    if steps < 0 or batch_size < 1:
        raise ConfigError(f"steps must be >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    device = default_device(device)
    num_classes = num_classes or _num_segmentation_classes(train_set)
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    model = ViTSegmenter(encoder, num_classes, feature_size=feature_size).to(device)
    torch.set_rng_state(generator_state)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = warmup_steps if warmup_steps is not None else max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, max(steps, 1)))
    history = []
    if steps:
        sampler = ResumableSampler(len(train_set), seed=seed, stop=steps * batch_size)
        loader = make_loader(train_set, batch_size, num_workers, sampler=sampler, drop_last=True)
        model.train()
        for step, batch in enumerate(loader):
            images, labels = batch["image"].to(device), batch["label"].to(device)
            loss = loss_fn(model(images), labels)
            if not torch.isfinite(loss):
                raise TrainingError(f"segmentation loss became {loss.item()} at step {step}; lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(round(loss.item(), 4))
    roi = tuple(encoder.img_size)
    result = {"protocol": "segmentation", "steps": steps, "num_train": len(train_set), "num_classes": num_classes,
              "train_loss": history, **segmentation_dice(model, test_set, num_classes, roi, overlap=overlap)}
    if return_model:
        result["model"] = model
    return result


# ============================================================================================ anomaly detection
def _binary_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    return float(roc_auc_score(labels, np.asarray(scores))) if len(np.unique(labels)) == 2 else None


def anomaly_scores(method: nn.Module, dataset, batch_size: int = 16, seed: int = 0, device=None,
                   with_maps: bool = False):
    """Scores (N,) from `method.anomaly_score` (higher = more anomalous), labels (N,) when the data has them,
    and the (N, 1, H, W) anomaly maps when `with_maps`."""
    from mimkit.core.evaluate import default_device

    if not hasattr(method, "anomaly_map"):
        raise ConfigError(f"method {getattr(method, 'method_name', type(method).__name__)!r} does not score "
                          f"anomalies; train a memmc_mae run (mimkit-medical pretrain --method memmc_mae)")
    device = default_device(device)
    home = next(method.parameters()).device
    method.to(device)
    scores, labels, maps = [], [], []
    try:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([item["image"] for item in items]).to(device)
            amap = method.anomaly_map(images, seed=seed).cpu()
            scores.append(amap.flatten(1).mean(1))
            labels += [item.get("label") for item in items]
            if with_maps:
                maps.append(amap)
    finally:
        method.to(home)
    out = torch.cat(scores).numpy(), labels
    return (*out, torch.cat(maps)) if with_maps else out


def normal_labels(dataset, normal_class: str = "normal") -> np.ndarray:
    """1 for anomalous, 0 for the normal class (matched case-insensitively among the dataset's classes)."""
    lowered = [c.lower() for c in dataset.classes]
    if normal_class.lower() not in lowered:
        raise DataError(f"no class folder named {normal_class!r} (case-insensitive) among {dataset.classes}; "
                        f"name the normal class with --normal-class")
    normal = lowered.index(normal_class.lower())
    return np.asarray([0 if item["label"] == normal else 1 for item in dataset.items])


def anomaly_auc(method: nn.Module, test_set, normal_class: str = "normal", masks: str | Path | None = None,
                batch_size: int = 16, seed: int = 0, device=None) -> dict:
    """Image-level ROC-AUC of the anomaly scores (normal class 0, every other class 1); with a `masks` folder
    (a PNG per anomalous image, same name, non-zero = anomalous) also the pixel-level ROC-AUC."""
    labels = normal_labels(test_set, normal_class)
    scores, _, maps = anomaly_scores(method, test_set, batch_size, seed, device, with_maps=True)
    result = {"protocol": "anomaly", "auroc": _binary_auc(labels, scores), "num_normal": int((labels == 0).sum()),
              "num_anomalous": int((labels == 1).sum())}
    if masks is not None and Path(masks).is_dir():
        from PIL import Image

        truth = []
        for item, amap in zip(test_set.items, maps):
            path = Path(masks) / Path(item["image"]).name
            mask = np.asarray(Image.open(path)) > 0 if path.is_file() else np.zeros(amap.shape[1:], bool)
            mask = torch.from_numpy(mask.astype(np.float32))[None, None]
            truth.append(F.interpolate(mask, size=amap.shape[1:], mode="nearest")[0, 0] > 0.5)
        result["pixel_auroc"] = _binary_auc(torch.stack(truth).flatten().numpy(), maps[:, 0].flatten().numpy())
    return result


# ============================================================================================ task readers
def _reader(layout: str, modality: str, spatial_dims: int, splits: tuple[str, str],
            options: dict | None = None) -> Callable[..., tuple[Dataset, Dataset]]:
    """A task reader: read(root, img_size, patch_size=16, in_chans=None, mean=None, std=None, augment=True,
    data=None, layout_options=None, **dataset_options) -> (train MedicalDataset, test MedicalDataset). The test
    set uses the training set's mean/std; `data` holds preprocessing settings (a recipe's data section) and
    `layout_options` the layout's (json_name, uncertainty, classes, views)."""

    def read(root: Path, img_size=None, patch_size=16, in_chans=None, mean=None, std=None, augment: bool = True,
             data: dict | None = None, layout_options: dict | None = None,
             **dataset_options) -> tuple[Dataset, Dataset]:
        settings = dict(data or {})
        if img_size is not None:
            settings["img_size"] = img_size
        pre = preprocessing_from(settings, modality, spatial_dims)
        common = dict(patch_size=patch_size, in_chans=in_chans, options={**(options or {}), **(layout_options or {})},
                      **dataset_options)
        train = build_dataset(root, layout, pre, split=splits[0], train=augment, mean=mean, std=std, **common)
        mean, std = train.stats
        test = build_dataset(root, layout, pre, split=splits[1], train=False, mean=mean, std=std,
                             whole_volume=layout == "msd", **{**common, "in_chans": train.in_chans})
        if layout != "msd" and train.classes != test.classes:
            raise DataError(f"{root}: the training and test splits hold different classes "
                            f"({train.classes} vs {test.classes})")
        return train, test
    return read


def _anomaly_reader(modality: str = "xray") -> Callable[..., tuple[Dataset, Dataset]]:
    """train/ (normal images only, unlabelled) and test/<class>/ folders with a normal class; `masks/` beside
    them is optional. Images are not augmented: anomaly scores compare them as they are."""

    def read(root: Path, img_size=None, patch_size=16, in_chans=None, mean=None, std=None, augment: bool = False,
             data: dict | None = None, layout_options: dict | None = None, **dataset_options):
        settings = {**(data or {}), **({"img_size": img_size} if img_size is not None else {})}
        pre = preprocessing_from(settings, modality, 2)
        common = dict(patch_size=patch_size, train=False, **dataset_options)
        train = build_dataset(Path(root) / "train", "folder", pre, labelled=False, in_chans=in_chans, mean=mean,
                              std=std, **common)
        mean, std = train.stats
        test = build_dataset(root, "classes", pre, split="test", in_chans=train.in_chans, mean=mean, std=std,
                             options=layout_options, **common)
        return train, test
    return read


_DESCRIPTION = {
    "chestxray14": "root holds Data_Entry_2017.csv, train_val_list.txt, test_list.txt and the PNGs (any sub-folder)",
    "chexpert": "root is CheXpert-v1.0(-small) with train.csv and valid.csv (valid.csv is the test split); "
                "uncertain labels as U-Ones",
    "msd": "root holds dataset.json ('training' and 'validation' lists, or the MSD's 'training' with the last "
           "20% held out) and the NIfTI images and label maps",
    "classes": "root holds train/<class>/ and test/<class>/ image folders",
    "anomaly": "root holds train/normal/ (normal images only), test/<class>/ with a 'normal' class and "
               "optionally masks/<image name> marking anomalous pixels",
}

TASKS = [
    Task("chestxray14-finetune", "medical", "ChestX-ray14", "finetune", "auroc",
         _reader("chestxray14", "xray", 2, ("train", "test")),
         "NIH ChestX-ray14, 14 findings, fine-tuned, mean ROC-AUC (%) on the official test list; "
         + _DESCRIPTION["chestxray14"]),
    Task("chestxray14-linear", "medical", "ChestX-ray14", "linear", "auroc",
         _reader("chestxray14", "xray", 2, ("train", "test")),
         "NIH ChestX-ray14, linear probe on frozen features, mean ROC-AUC (%); " + _DESCRIPTION["chestxray14"]),
    Task("chexpert-finetune", "medical", "CheXpert", "finetune", "auroc",
         _reader("chexpert", "xray", 2, ("train", "test")),
         "CheXpert, 14 observations, fine-tuned, mean ROC-AUC (%); " + _DESCRIPTION["chexpert"]),
    Task("chexpert-competition-finetune", "medical", "CheXpert (5 competition tasks)", "finetune", "auroc",
         _reader("chexpert", "xray", 2, ("train", "test"), {"classes": list(CHEXPERT_COMPETITION)}),
         "CheXpert, the 5 competition observations, fine-tuned, mean ROC-AUC (%); " + _DESCRIPTION["chexpert"]),
    Task("btcv-segmentation", "medical", "BTCV", "segmentation", "dice",
         _reader("msd", "ct", 3, ("train", "test"), {"json_name": "dataset_0.json"}),
         "BTCV abdomen CT, 13 organs, UNETR-style decoder fine-tuned, mean Dice (%) on the 'validation' list of "
         "dataset_0.json (the UNETR/Swin UNETR split); CT window [-175, 250] HU, 1.5 mm spacing, 96^3 crops"),
    Task("msd-segmentation", "medical", "MSD", "segmentation", "dice",
         _reader("msd", "ct", 3, ("train", "test")),
         "A Medical Segmentation Decathlon CT task, UNETR-style decoder fine-tuned, mean Dice (%); "
         + _DESCRIPTION["msd"]),
    Task("oct2017-finetune", "medical", "OCT2017", "finetune", "accuracy",
         _reader("classes", "oct", 2, ("train", "test")),
         "Kermany et al. OCT2017 (CNV, DME, DRUSEN, NORMAL), fine-tuned, accuracy (%); " + _DESCRIPTION["classes"]),
    Task("oct2017-linear", "medical", "OCT2017", "linear", "accuracy",
         _reader("classes", "oct", 2, ("train", "test")),
         "OCT2017, linear probe on frozen features, accuracy (%); " + _DESCRIPTION["classes"]),
    Task("fundus-finetune", "medical", "Fundus (class folders)", "finetune", "accuracy",
         _reader("classes", "fundus", 2, ("train", "test")),
         "Colour fundus photographs in class folders (e.g. APTOS, IDRiD grades), fine-tuned, accuracy (%); "
         + _DESCRIPTION["classes"]),
    Task("xray-anomaly", "medical", "Chest X-ray anomaly (normal vs abnormal)", "anomaly", "auroc",
         _anomaly_reader("xray"),
         "Anomaly detection trained on normal radiographs only (MemMC-MAE), image-level ROC-AUC (%); "
         + _DESCRIPTION["anomaly"]),
    # The project's own small data (`mimkit-medical synthetic --out DIR`): for tests and the demo.
    Task("synthetic-organs-segmentation", "medical", "mimkit synthetic organs (3D)", "segmentation", "dice",
         _reader("msd", "ct", 3, ("train", "test")),
         "32^3 CT-like volumes with 3 spherical organ classes (MONAI's create_test_image_3d), mean Dice (%)"),
    Task("synthetic-chestxray14-finetune", "medical", "mimkit synthetic ChestX-ray14", "finetune", "auroc",
         _reader("chestxray14", "xray", 2, ("train", "test")),
         "32^2 16-bit radiograph-like PNGs in the ChestX-ray14 layout, 3 findings drawn, mean ROC-AUC (%)"),
    Task("synthetic-chexpert-finetune", "medical", "mimkit synthetic CheXpert", "finetune", "auroc",
         _reader("chexpert", "xray", 2, ("train", "test"),
                 {"classes": ["Cardiomegaly", "Edema", "Pleural Effusion"]}),
         "32^2 radiograph-like PNGs in the CheXpert layout, 3 observations (U-Ones), mean ROC-AUC (%)"),
    Task("synthetic-oct-finetune", "medical", "mimkit synthetic OCT", "finetune", "accuracy",
         _reader("classes", "oct", 2, ("train", "test")),
         "32^2 OCT-like B-scans, NORMAL / DRUSEN / CNV class folders, accuracy (%)"),
    Task("synthetic-fundus-finetune", "medical", "mimkit synthetic fundus", "finetune", "accuracy",
         _reader("classes", "fundus", 2, ("train", "test")),
         "32^2 fundus-like RGB images, normal / haemorrhage / exudate class folders, accuracy (%)"),
    Task("synthetic-anomaly", "medical", "mimkit synthetic anomaly", "anomaly", "auroc", _anomaly_reader("xray"),
         "32^2 images, train/normal only; test/abnormal carry a bright square lesion (masks/), ROC-AUC (%)"),
]
for _task in TASKS:
    register_task(_task)

SYNTHETIC_TASK_DATA = {"synthetic-organs-segmentation": "organs", "synthetic-chestxray14-finetune": "chestxray14",
                       "synthetic-chexpert-finetune": "chexpert", "synthetic-oct-finetune": "oct",
                       "synthetic-fundus-finetune": "fundus", "synthetic-anomaly": "anomaly"}


# ============================================================================================ running a task
def model_name(encoder: nn.Module) -> str:
    """The usual short name of an encoder: "ViT-S/16" for a named size, else "ViT-<width>x<depth>/<patch>"."""
    patch = tuple(encoder.patch_size)
    patch_text = str(patch[0]) if len(set(patch)) == 1 else "x".join(map(str, patch))
    for name, size in VIT_SIZES.items():
        if (size.embed_dim, size.depth, size.num_heads) == (encoder.embed_dim, len(encoder.blocks), encoder.num_heads):
            return f"ViT-{name[0].upper()}/{patch_text}"
    return f"ViT-{encoder.embed_dim}x{len(encoder.blocks)}/{patch_text}"


def _reader_options(encoder: nn.Module, data: dict | None, extra: dict | None) -> dict:
    """The reader arguments that make the data fit the encoder (size, channels) and its pretraining stats."""
    data = dict(data or {})
    options = {"img_size": tuple(encoder.img_size), "patch_size": tuple(encoder.patch_size),
               "in_chans": encoder.in_chans, "data": {k: v for k, v in data.items()
                                                      if k not in ("img_size", "mean", "std", "skipped_files")}}
    if data.get("mean") is not None and data.get("std") is not None:
        options.update(mean=data["mean"], std=data["std"])
    options.update(extra or {})
    return options


def run_task(name: str, method: nn.Module, root: str | Path, *, data: dict | None = None,
             reader_options: dict | None = None, protocol_options: dict | None = None) -> dict:
    """Run one registered medical task with a pretrained method (its encoder, or the whole method for anomaly
    tasks): returns {"task", "data", "protocol", "metric", "value" (percent), "details"}.

    `data` is the pretraining run's data section (spacing, window, mean/std...), so the task's images are
    prepared as the encoder saw them in pretraining.
    """
    from mimkit.core.evaluate import evaluate

    task = get_task(name)
    if task.domain != "medical":
        raise ConfigError(f"task {name!r} belongs to the {task.domain} domain; `mimkit-medical bench` runs medical "
                          f"tasks only")
    encoder = method.encoder
    options = dict(protocol_options or {})
    augment = task.protocol in ("finetune", "segmentation")
    train, test = task.load(root, **_reader_options(encoder, data, {**(reader_options or {}), "augment": augment}))
    if task.protocol == "segmentation":
        details = finetune_segmentation(encoder, train, test, **options)
        value = details["dice_mean"]
    elif task.protocol == "anomaly":
        details = anomaly_auc(method, test, masks=Path(root) / "masks", **options)
        value = details["auroc"]
    else:
        details = evaluate(encoder, task.protocol, train, test, **options)
        value = details.get("auc_macro") if task.metric == "auroc" else details.get("accuracy")
    if value is None or not math.isfinite(value):
        raise DataError(f"task {name!r}: the {task.metric} could not be computed on {root} (every test label the "
                        f"same, or no foreground class present); details: "
                        f"{ {k: v for k, v in details.items() if k not in ('model', 'train_loss')} }")
    details.pop("model", None)
    return {"task": name, "data": task.dataset, "protocol": task.protocol, "metric": task.metric,
            "value": round(100 * float(value), 2), "num_train": len(train), "num_test": len(test),
            "skipped_files": len(train.skipped) + len(test.skipped),
            "details": {k: v for k, v in details.items() if k != "train_loss"}}


__all__ = ["ViTSegmenter", "InterpolateUpBlock", "finetune_segmentation", "segmentation_dice", "anomaly_scores",
           "anomaly_auc", "normal_labels", "TASKS", "SYNTHETIC_TASK_DATA", "model_name", "run_task"]
