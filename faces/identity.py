"""The identity network: a face recognizer from a local file, or one mimkit trains with the ArcFace loss.

Vec2Face generates faces from a recognizer's identity vectors and trains with its identity loss; its official
code uses insightface's IResNet-100 trained with ArcFace on Glint360K. `IResNet` here has the same layout and
state-dict keys, so such a file (a plain `torch.save(state_dict)`) loads directly; `train_identity` trains one
on a folder with one subfolder per identity (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019). Images are 112 x 112 RGB scaled to [-1, 1] (mean 0.5, std 0.5), as insightface's.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.core.errors import CheckpointError, ConfigError

# insightface's depths: blocks per stage
IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


class IBasicBlock(nn.Module):
    """insightface's pre-activation-style basic block: BN, conv, BN, PReLU, conv (stride here), BN, + shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """insightface's IResNet face recognizer (keys match its files): 4 stride-2 stages, BN-dropout-FC-BN head.

    `layers` is one of IRESNET_LAYERS or four block counts; `widths` the four stage widths (insightface: 64 to
    512; smaller for tests); the output is the unnormalised `embedding_dim` feature.
    """

    def __init__(self, layers: int | Sequence[int] = 50, widths: Sequence[int] = (64, 128, 256, 512),
                 embedding_dim: int = 512, img_size: int = 112, dropout: float = 0.0):
        super().__init__()
        if isinstance(layers, int):
            if layers not in IRESNET_LAYERS:
                raise ConfigError(f"identity network depth must be one of {sorted(IRESNET_LAYERS)} or four block "
                                  f"counts, got {layers}")
            layers = IRESNET_LAYERS[layers]
        layers, widths = tuple(int(n) for n in layers), tuple(int(w) for w in widths)
        if len(layers) != 4 or len(widths) != 4:
            raise ConfigError(f"identity network: layers and widths need 4 entries each, got {layers} and {widths}")
        if img_size % 16:
            raise ConfigError(f"identity network img_size must be a multiple of 16 (4 stride-2 stages), got {img_size}")
        self.config = dict(layers=list(layers), widths=list(widths), embedding_dim=embedding_dim, img_size=img_size,
                           dropout=dropout)
        self.img_size = img_size
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        for stage, (count, planes) in enumerate(zip(layers, widths), 1):
            blocks = [IBasicBlock(inplanes if i == 0 else planes, planes, 2 if i == 0 else 1) for i in range(count)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-5)
        self.dropout = nn.Dropout(dropout)  # insightface trains with 0 (its default config)
        self.fc = nn.Linear(widths[3] * (img_size // 16) ** 2, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        for module in self.modules():  # insightface's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # insightface keeps this scale fixed at 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.img_size, self.img_size):
            images = F.interpolate(images, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = self.prelu(self.bn1(self.conv1(images)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class ArcFaceHead(nn.Module):
    """ArcFace logits: s * cos(theta_y + m) for the true class, s * cos(theta_j) for the others (Deng et al.)."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.scale, self.margin = scale, margin

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(features), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cosine.gather(1, labels[:, None])
        theta = torch.acos(target)
        # past pi the angle would wrap and the logit grow again: use the linear continuation the paper's code uses
        shifted = torch.where(theta + self.margin <= math.pi, torch.cos(theta + self.margin),
                              target - self.margin * math.sin(self.margin))
        return self.scale * cosine.scatter(1, labels[:, None], shifted)


# ---------------------------------------------------------------------------------------------- files
def _infer_iresnet(state: dict[str, torch.Tensor], path: Path) -> dict:
    """IResNet constructor arguments from an insightface state dict's shapes."""
    try:
        layers = [len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in range(1, 5)]
        widths = [state[f"layer{s}.0.conv1.weight"].shape[0] for s in range(1, 5)]
        fc = state["fc.weight"]
    except KeyError as error:
        raise CheckpointError(f"identity network file {path}: not an insightface IResNet state dict "
                              f"(missing {error}); expected keys conv1, layer1..4, fc, features") from None
    side = math.isqrt(fc.shape[1] // widths[3])
    return dict(layers=layers, widths=widths, embedding_dim=fc.shape[0], img_size=side * 16)


def load_identity_network(path: str | Path) -> IResNet:
    """A frozen recognizer from a local file: mimkit's safetensors (train_identity) or an insightface .pth."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"identity network file {str(path)!r} does not exist")
    config = None
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if "identity_network" in metadata:
            config = json.loads(metadata["identity_network"])
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"identity network file {path} cannot be read as a torch state dict "
                                  f"({str(error).splitlines()[0]})") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = IResNet(**(config or _infer_iresnet(state, path)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(f"identity network file {path} does not fit IResNet{tuple(model.config['layers'])}: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return freeze(model)


def save_identity_network(model: IResNet, path: str | Path) -> Path:
    """Write a recognizer as safetensors with its constructor arguments, for load_identity_network."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"identity network save path {path} must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"identity_network": json.dumps(model.config)})
    return path


def freeze(model: nn.Module) -> nn.Module:
    """Evaluation mode and no gradients for the module's own weights (inputs still get gradients)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def random_identity_network(embedding_dim: int = 512, img_size: int = 112, seed: int = 0, **kwargs) -> IResNet:
    """A small random IResNet-18 from a fixed seed: for tests only (it recognises no one)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = IResNet(18, kwargs.pop("widths", (16, 16, 32, 32)), embedding_dim, img_size, **kwargs)
    finally:
        torch.random.set_rng_state(generator_state)
    return freeze(model)


@torch.no_grad()
def embed_faces(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised identity features of images in [-1, 1], in batches."""
    model.eval()
    return torch.cat([F.normalize(model(images[i:i + batch_size]).float()) for i in range(0, len(images), batch_size)])


# ---------------------------------------------------------------------------------------------- training
@dataclass
class IdentityTrainConfig:
    """ArcFace training of an IResNet; defaults from Vec2Face's README config for HSFace10K (R50, SGD)."""

    depth: int = 50                   # README: config.depth = "50"
    widths: tuple[int, ...] = (64, 128, 256, 512)
    embedding_dim: int = 512          # README: embedding_size 512
    img_size: int = 112               # README: input_size [112, 112]
    margin: float = 0.5               # README: margin 0.5
    scale: float = 64.0               # insightface's ArcFace scale
    batch_size: int = 128             # README: batch_size 128
    learning_rate: float = 0.1        # README: lr 0.1, momentum 0.9, weight_decay 5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 26                  # README: 26 epochs, lr x0.1 at epochs 12, 20, 24
    milestones: tuple[int, ...] = (12, 20, 24)
    max_steps: int | None = None      # overrides epochs (tests)
    flip: bool = True                 # README's training transform: resize, horizontal flip
    seed: int = 0
    num_workers: int = 0
    extra: dict = field(default_factory=dict)  # Lightning Trainer keywords (accelerator, devices, precision)


class IdentityModule:
    """Built lazily so that importing mimkit.faces.identity does not import Lightning."""

    def __new__(cls, network: IResNet, num_classes: int, config: IdentityTrainConfig, steps_per_epoch: int):
        import lightning as L

        class _Module(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.network = network
                self.head = ArcFaceHead(network.config["embedding_dim"], num_classes, config.scale, config.margin)
                self.losses: list[float] = []

            def training_step(self, batch, batch_idx):
                logits = self.head(self.network(batch["image"]), batch["label"])
                loss = F.cross_entropy(logits, batch["label"])
                self.losses.append(float(loss.detach()))
                self.log("loss", loss, prog_bar=True, batch_size=len(logits))
                return loss

            def configure_optimizers(self):
                optimizer = torch.optim.SGD(self.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                            weight_decay=config.weight_decay)
                steps = [m * steps_per_epoch for m in config.milestones]
                schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma=0.1)
                return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

        return _Module()


def train_identity(folder: str | Path, out: str | Path, config: IdentityTrainConfig = IdentityTrainConfig()
                   ) -> tuple[IResNet, list[float]]:
    """Train a recognizer with ArcFace on `folder` (one subfolder per identity); save it to `out` (.safetensors)."""
    import albumentations as A
    import lightning as L

    from mimkit.core.data import ImageFolderDataset, ResumableSampler, make_loader
    from mimkit.core.errors import DataError

    transform = A.Compose([A.Resize(config.img_size, config.img_size)]
                          + ([A.HorizontalFlip(p=0.5)] if config.flip else []))
    data = ImageFolderDataset(folder, img_size=config.img_size, patch_size=16, in_chans=3, transform=transform,
                              mean=(0.5,) * 3, std=(0.5,) * 3, labelled=True)
    if len(data.classes) < 2:
        raise DataError(f"identity training folder {folder}: needs at least 2 identity subfolders, "
                        f"found {len(data.classes)}")
    torch.manual_seed(config.seed)
    network = IResNet(config.depth, config.widths, config.embedding_dim, config.img_size)
    batch_size = min(config.batch_size, len(data))
    steps_per_epoch = max(1, len(data) // batch_size)
    steps = config.max_steps or config.epochs * steps_per_epoch
    module = IdentityModule(network, len(data.classes), config, steps_per_epoch)
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, **{"enable_progress_bar": True, **config.extra})
    # every epoch reshuffled and every sample its own augmentation seed, for exactly `steps` batches
    sampler = ResumableSampler(len(data), seed=config.seed, stop=steps * batch_size)
    trainer.fit(module, train_dataloaders=make_loader(data, batch_size, config.num_workers, sampler=sampler))
    save_identity_network(network, out)
    with open(Path(out).with_suffix(".json"), "w") as f:
        json.dump({"classes": data.classes, "config": {k: v for k, v in asdict(config).items() if k != "extra"},
                   "losses": module.losses}, f, indent=1, default=list)
    return freeze(network), module.losses



def train_identity_command(data: str, out: str, train: IdentityTrainConfig = IdentityTrainConfig()) -> dict:
    """Train a face recognizer (IResNet, ArcFace loss) on DATA, one subfolder per identity; write OUT (.safetensors,
    plus OUT.json with the identity names and losses). Use it as Vec2Face's identity_network.

    Args:
        data: a folder with one subfolder of face images per identity (aligned crops)
        out: the .safetensors file to write
        train: the training settings (defaults: Vec2Face README's ArcFace R50 config)
    """
    _, losses = train_identity(data, out, train)
    print(f"trained an IResNet with ArcFace on {data} ({len(losses)} steps, last loss {losses[-1]:.4f}); wrote {out}")
    return {"out": str(out), "steps": len(losses), "last_loss": losses[-1]}


# ---------------------------------------------------------------------------------------------- measuring a face set
class DlibRecognizer:
    """dlib's 128-d face-recognition ResNet with its 5-point alignment, on already-cropped faces: an independent,
    non-differentiable judge of identity (optional: `pip install dlib-bin face-recognition-models`)."""

    def __init__(self):
        import importlib.util

        spec = importlib.util.find_spec("face_recognition_models")
        try:
            import dlib
        except ImportError:
            dlib = None
        if dlib is None or spec is None:
            raise ConfigError("the dlib recognizer needs the optional packages dlib-bin and face-recognition-models "
                              "(pip install dlib-bin face-recognition-models); "
                              f"missing: {'dlib ' if dlib is None else ''}"
                              f"{'face_recognition_models' if spec is None else ''}")
        # read the files' paths without importing the package (it imports pkg_resources, gone from new setuptools)
        models = Path(spec.submodule_search_locations[0]) / "models"
        self.dlib = dlib
        self.shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.model = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def __call__(self, images: Sequence) -> torch.Tensor:
        """(N, 128) descriptors of H x W x 3 uint8 face crops (the whole image is the face box)."""
        import numpy as np

        out = []
        for image in images:
            image = np.ascontiguousarray(image, dtype=np.uint8)
            box = self.dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
            out.append(np.asarray(self.model.compute_face_descriptor(image, self.shape(image, box))))
        return torch.tensor(np.stack(out), dtype=torch.float32)


def network_embedder(model: nn.Module, batch_size: int = 64):
    """A `faces -> features` function from a recognizer that takes tensors in [-1, 1] (an IResNet)."""
    import numpy as np

    def embed(images: Sequence) -> torch.Tensor:
        batch = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return embed_faces(model, batch, batch_size)
    return embed


def read_identity_folder(folder: str | Path) -> tuple[list, torch.Tensor, list[str]]:
    """(images as H x W x 3 uint8, identity index of each, identity names) of a folder with one subfolder each."""
    import numpy as np
    from PIL import Image

    from mimkit.core.data import IMAGE_SUFFIXES
    from mimkit.core.errors import DataError

    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    images, owners = [], []
    for index, name in enumerate(names):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as image:
                    images.append(np.asarray(image.convert("RGB")))
                owners.append(index)
    if len(set(owners)) < 2:
        raise DataError(f"{folder}: expected one image subfolder per identity (at least 2), found {len(set(owners))}")
    return images, torch.tensor(owners), names


def identity_statistics(features: torch.Tensor, owners: torch.Tensor) -> dict:
    """Intra-identity consistency and identity separation of face features (cosine similarities).

    intra: mean similarity of two images of one identity; inter: mean similarity of two identities' mean features;
    inter_max: the closest two identities; separation = intra - inter.
    """
    unit = F.normalize(features.float(), dim=-1)
    similarity = unit @ unit.T
    same = owners[:, None] == owners[None]
    pairs = same & ~torch.eye(len(owners), dtype=torch.bool)
    centres = F.normalize(torch.stack([unit[owners == i].mean(0) for i in owners.unique()]), dim=-1)
    between = (centres @ centres.T)[~torch.eye(len(centres), dtype=torch.bool)]
    intra = float(similarity[pairs].mean()) if pairs.any() else float("nan")
    return dict(intra=intra, inter=float(between.mean()), inter_max=float(between.max()),
                separation=intra - float(between.mean()), identities=len(centres), images=len(owners))


def verification_pairs(owners: torch.Tensor, folds: int = 10, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """LFW-style pairs of distinct images: (first, second, same, fold) index arrays. Every fold holds as many
    same-identity pairs as different-identity ones (LFW: 300 and 300 in each of 10 folds): all same-identity pairs
    (i < j) are shuffled and as many different-identity pairs drawn without replacement, both cut to a multiple of
    the folds, then dealt into them. A set with fewer than `folds` pairs of a kind gets as many folds as it has
    (at least 2)."""
    import numpy as np

    owners = np.asarray(owners)
    rng = np.random.default_rng(seed)
    first, second = np.triu_indices(len(owners), 1)
    same = owners[first] == owners[second]
    positives, negatives = rng.permutation(np.flatnonzero(same)), rng.permutation(np.flatnonzero(~same))
    folds = min(folds, len(positives), len(negatives))
    if folds < 2:
        raise ConfigError(f"verification needs at least 2 same-identity and 2 different-identity pairs (2 folds); "
                          f"found {len(positives)} and {len(negatives)}")
    per_fold = min(len(positives), len(negatives)) // folds
    chosen = np.concatenate([positives[:per_fold * folds], negatives[:per_fold * folds]])
    fold = np.concatenate([np.repeat(np.arange(folds), per_fold)] * 2)
    return first[chosen], second[chosen], same[chosen], fold


def verification_accuracy(features: torch.Tensor, owners: torch.Tensor, folds: int = 10, seed: int = 0) -> float:
    """LFW's 10-fold verification accuracy on `verification_pairs`: each fold is scored at the cosine threshold
    best on the other folds (LFW's protocol, as insightface evaluates it); the mean over the folds."""
    import numpy as np

    unit = F.normalize(features.float(), dim=-1)
    first, second, labels, fold = verification_pairs(owners, folds, seed)
    scores = (unit[first] * unit[second]).sum(-1).numpy()
    accuracies = []
    for k in range(int(fold.max()) + 1):
        train, test = fold != k, fold == k
        accuracies.append(((scores[test] >= _best_threshold(scores[train], labels[train])) == labels[test]).mean())
    return float(np.mean(accuracies))


def _best_threshold(scores, labels) -> float:
    """The score threshold (predict "same" at or above it) with the highest accuracy, cut only between two
    different scores (tied scores get one decision): midway between the lowest score called "same" and the next
    one below it; above every score when calling nothing "same" is best."""
    import numpy as np

    order = np.argsort(-scores, kind="stable")
    ranked, positives = scores[order], labels[order]
    true_positives = np.cumsum(positives)
    called = np.arange(1, len(scores) + 1)
    accuracy = true_positives + (~labels).sum() - (called - true_positives)
    cuts = np.flatnonzero(np.append(ranked[1:] < ranked[:-1], True))  # the last index of each run of ties
    candidates = np.concatenate([[(~labels).sum()], accuracy[cuts]])   # first: nothing called "same"
    best = int(np.argmax(candidates))
    if best == 0:
        return float(ranked[0] + 1e-6)
    last = cuts[best - 1]
    return float((ranked[last] + ranked[last + 1]) / 2) if last + 1 < len(ranked) else float(ranked[-1] - 1e-6)
