"""Face-forgery detection tasks, registered with mimkit.benchmarks on import and run by
`mimkit.benchmarks.runner.run_task`.

Every task trains a detector on its training domains and scores the test frames: frame and video AUC (mean frame
score per video), EER and accuracy at 0.5 (the task's headline metric is the video AUC, in percent). A GM-DF
method (anything with `detect`) is trained as a whole (its trainable parts, its own loss) for `steps` steps; any
other encoder is kept frozen and a logistic regression is fitted on its class tokens.

Protocols and the data root they read:
- faces-synthetic: the folder `mimkit-faces synthetic` writes (ROOT/<kind>/{train,test}/{real,fake}/...), each
  forgery kind a domain, trained and tested on all (the demo's task);
- ffpp-c23: FaceForensics++ c23, official train and test splits (ROOT = the FF++ folder);
- ffpp-to-{celebdf,dfdc,wilddeepfake,dfd}: the cross-dataset protocol, train on FF++ c23, test on the other
  dataset's test split; ROOT holds FaceForensics++/, Celeb-DF-v2/, DFDC/, WildDeepfake/ (DFD is read from
  FaceForensics++/, where it ships);
- gmdf-lodo-<dataset>: GM-DF's multi-dataset protocol, train on the training splits of the other four datasets
  (each a domain), test on the one left out; same ROOT.
GM-DF's own figures could not be found (see mimkit.faces.published): no published rows are registered for them.

Generation tasks (a Vec2Face model; ROOT holds identities/, written by `mimkit-faces synthetic`, or is itself a
folder of aligned face images, one identity each): each real face's vector from the model's identity network is
perturbed at the official scales (`per_identity` images each) and generated; a recognizer then embeds the generated
and the real faces: by default the model's own identity network (the vector space it was trained in, as the
paper's identity loss), or an independent one (`recognizer`: an IResNet file, or "dlib").
- vec2face-identity-consistency: mean cosine similarity of each generated face to the real face whose vector made
  it (intra-identity consistency);
- vec2face-identity-identification: rank-1 identification of the generated faces among all the real faces
  (identity separability; chance is 1 / identities).
Both also give the generated set's intra / inter-identity similarity, their gap and its LFW-style verification
accuracy. Their protocol is "generation" (run by the task's own runner).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.benchmarks.tasks import Task, register_task
from mimkit.core.errors import ConfigError, DataError
from mimkit.faces import published  # noqa: F401  (documents that no GM-DF figures are registered)

from .data import FaceForgeryDataset, detection_metrics, read_videos

log = logging.getLogger("mimkit")

# where the cross-dataset protocols find each dataset under their ROOT (their usual folder names)
DATASET_FOLDERS = {"ffpp": "FaceForensics++", "celebdf": "Celeb-DF-v2", "dfdc": "DFDC",
                   "wilddeepfake": "WildDeepfake", "dfd": "FaceForensics++"}
DATASET_TITLES = {"ffpp": "FaceForensics++", "celebdf": "Celeb-DF", "dfdc": "DFDC", "wilddeepfake": "WildDeepfake",
                  "dfd": "DFD"}


# ============================================================================================ readers
def _dataset(sources, img_size: int, frames_per_video: int, train: bool, seed: int) -> FaceForgeryDataset:
    return FaceForgeryDataset(sources, img_size=img_size, frames_per_video=frames_per_video, train=train, seed=seed)


def synthetic_reader(root: Path, img_size: int = 224, frames_per_video: int = 8, seed: int = 0, **_):
    """The synthetic folder: each forgery-kind subfolder is a domain in the real/ + fake/ layout."""
    kinds = sorted(p for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())
    if not kinds:
        raise DataError(f"{root}: expected forgery-kind folders with train/ and test/ (mimkit-faces synthetic)")
    split = {s: [(k.name, read_videos("folder", k, s)) for k in kinds] for s in ("train", "test")}
    return (_dataset(split["train"], img_size, frames_per_video, True, seed),
            _dataset(split["test"], img_size, frames_per_video, False, seed))


def protocol_reader(train_sets: Sequence[str], test_set: str, nested: bool = True):
    """A reader that trains on `train_sets` and tests on `test_set` (nested: ROOT holds each dataset's folder)."""
    def read(root: Path, img_size: int = 224, frames_per_video: int = 8, seed: int = 0, compression: str = "c23",
             **_):
        def where(name: str) -> Path:
            return root / DATASET_FOLDERS[name] if nested else root

        train = [(DATASET_TITLES[d], read_videos(d, where(d), "train", compression=compression)) for d in train_sets]
        test = [(DATASET_TITLES[test_set], read_videos(test_set, where(test_set), "test", compression=compression))]
        return (_dataset(train, img_size, frames_per_video, True, seed),
                _dataset(test, img_size, frames_per_video, False, seed))
    return read


def prepare_faces(encoder: nn.Module, run_config: dict) -> dict:
    """Frames are read at the encoder's image size."""
    return {"img_size": int(encoder.img_size[0])}


# ============================================================================================ the runner
def _batches(dataset, batch_size: int, seed: int, steps: int):
    from mimkit.core.data import ResumableSampler, make_loader

    sampler = ResumableSampler(len(dataset), seed=seed, start=0)
    loader = make_loader(dataset, batch_size, sampler=sampler, drop_last=True)
    for step, batch in enumerate(loader):
        if step >= steps:
            return
        yield batch


def score_frames(method: nn.Module, dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fake probability, label, video index) of every frame, with the method's `detect`."""
    from mimkit.core.data import make_loader

    view = dataset.eval_view() if hasattr(dataset, "eval_view") else dataset
    was_training = method.training
    method.eval()
    scores, labels, videos = [], [], []
    device = next(method.parameters()).device
    try:
        with torch.no_grad():
            for batch in make_loader(view, batch_size):
                scores.append(method.detect(batch["image"].to(device)).float().cpu())
                labels.append(torch.as_tensor(batch["label"]))
                videos.append(torch.as_tensor(batch["video"]))
    finally:
        method.train(was_training)
    return torch.cat(scores).numpy(), torch.cat(labels).numpy(), torch.cat(videos).numpy()


def train_detector(method: nn.Module, dataset, steps: int = 300, batch_size: int = 32, lr: float = 1e-3,
                   weight_decay: float = 0.05, seed: int = 0) -> list[float]:
    """Train a detector method's trainable parts on labelled frames with its own loss (AdamW, cosine to zero);
    the domains are passed only when the method was built for the data's domains. Returns the losses."""
    from mimkit.core.train import adamw, parameter_groups, warmup_cosine

    domains_match = list(getattr(method, "domains", [])) == list(getattr(dataset, "domains", [None]))
    if not domains_match:
        log.info("the detector's domains %s are not the data's %s: trained without domain labels (no meta-learning "
                 "episodes or domain prompts)", getattr(method, "domains", None), getattr(dataset, "domains", None))
    optimizer = adamw(parameter_groups(method, weight_decay), lr=lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, max(1, steps // 20), steps))
    device = next(method.parameters()).device
    method.train()
    losses = []
    torch.manual_seed(seed)
    for batch in _batches(dataset, batch_size, seed, steps):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if not domains_match:
            batch.pop("domain", None)
        out = method(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(out.loss.detach()))
    return losses


def detection_runner(subject: nn.Module, train_set, test_set, *, root: Path, steps: int = 300, batch_size: int = 32,
                     lr: float = 1e-3, weight_decay: float = 0.05, seed: int = 0) -> dict:
    """Train a detector (GM-DF: the method itself; another encoder: a logistic regression on its frozen class
    tokens) on `train_set` and measure it on `test_set`: frame/video AUC, EER, accuracy (fractions)."""
    if hasattr(subject, "detect"):
        method = copy.deepcopy(subject)
        losses = train_detector(method, train_set, steps, batch_size, lr, weight_decay, seed)
        scores, labels, videos = score_frames(method, test_set)
        extra = {"steps": len(losses), "first_loss": losses[0] if losses else None,
                 "last_loss": float(np.mean(losses[-10:])) if losses else None}
    else:
        from sklearn.linear_model import LogisticRegression

        from mimkit.benchmarks.runner import encoder_of
        from mimkit.core.evaluate import extract_features

        encoder = encoder_of(subject)
        train_x, train_y = extract_features(encoder, train_set.eval_view())
        test_x, labels = extract_features(encoder, test_set)
        probe = LogisticRegression(max_iter=2000, random_state=seed).fit(train_x.numpy(), train_y.numpy())
        scores = probe.predict_proba(test_x.numpy())[:, 1]
        labels = labels.numpy()
        videos = np.asarray([test_set.items[i][0] for i in range(len(test_set))])
        extra = {"detector": "logistic regression on frozen class tokens"}
    metrics = detection_metrics(scores, labels, videos)
    if metrics["video_auc"] is None:
        raise DataError(f"the test data under {root} hold only one class (real or fake): no AUC")
    return {**metrics, **extra}


# ============================================================================================ registration
DETECTION_SETTINGS = {"steps": 300, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05}  # ours (no GM-DF code)


def _task(name: str, dataset: str, reader, description: str) -> Task:
    return Task(name, "faces", dataset, "finetune", "video_auc", reader, description, runner=detection_runner,
                prepare=prepare_faces, settings=dict(DETECTION_SETTINGS))


TASKS = [
    _task("faces-synthetic", "mimkit-faces synthetic", synthetic_reader,
          "shipped real faces and their self-blended forgeries, one domain per kind; video AUC"),
    _task("ffpp-c23", "FaceForensics++", protocol_reader(["ffpp"], "ffpp", nested=False),
          "FaceForensics++ c23, official train/test split; video AUC"),
]
for _target in ("celebdf", "dfdc", "wilddeepfake", "dfd"):
    TASKS.append(_task(f"ffpp-to-{_target}", DATASET_TITLES[_target], protocol_reader(["ffpp"], _target),
                       f"cross-dataset: train on FaceForensics++ c23, test on {DATASET_TITLES[_target]}; video AUC"))
for _held in ("ffpp", "celebdf", "dfdc", "wilddeepfake", "dfd"):
    _rest = [d for d in ("ffpp", "celebdf", "dfdc", "wilddeepfake", "dfd") if d != _held]
    TASKS.append(_task(f"gmdf-lodo-{_held}", DATASET_TITLES[_held], protocol_reader(_rest, _held),
                       f"GM-DF multi-dataset: train on the other four datasets, test on {DATASET_TITLES[_held]}"))
for _registered in TASKS:
    register_task(_registered)


# ============================================================================================ generation (Vec2Face)
class IdentityFaces(torch.utils.data.Dataset):
    """Aligned face images, one identity each: {"image" in [-1, 1] (3, S, S), "label" = the face's index}."""

    def __init__(self, files: Sequence[Path], size: int):
        from .data import read_image

        self.files, self.size = list(files), size
        self.images = [read_image(f) for f in self.files]
        self.targets = list(range(len(self.files)))
        self.names = [f.stem for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        image = np.asarray(Image.fromarray(self.images[index]).resize((self.size, self.size), Image.BICUBIC))
        pixels = torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 127.5 - 1
        return {"image": pixels, "label": index}


def _identity_files(root: Path, least: int = 2) -> list[Path]:
    from .data import IMAGE_SUFFIXES

    folder = root / "identities" if (root / "identities").is_dir() else root
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if len(files) < least:
        raise DataError(f"{folder}: expected aligned face images, one identity each (at least {least}; "
                        f"`mimkit-faces synthetic OUT` writes OUT/identities/), found {len(files)}")
    return files


def identity_faces_reader(root: Path, size: int = 112, **_):
    """ROOT/identities/ (mimkit-faces synthetic) or ROOT: each image one identity; the same set both ways."""
    faces = IdentityFaces(_identity_files(root), size)
    return faces, faces


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _embedder(recognizer: str | None, method: nn.Module, batch_size: int):
    """(name, images in [-1, 1] -> features): the method's identity network, an IResNet file, or dlib's ResNet."""
    from .identity import DlibRecognizer, load_identity_network

    if recognizer == "dlib":
        from .generate import to_uint8

        judge = DlibRecognizer()
        return "dlib ResNet (128-d)", lambda images: judge(list(to_uint8(_resized(images, 150))))
    network = method.identity_network if recognizer is None else load_identity_network(recognizer)
    name = "the model's identity network" if recognizer is None else str(recognizer)
    device = next(method.parameters()).device
    network = network.to(device)

    @torch.no_grad()
    def embed(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([network(_resized(images[i:i + batch_size], network.img_size).to(device)).float().cpu()
                          for i in range(0, len(images), batch_size)])
    return name, embed


def generation_runner(subject: nn.Module, train_set, test_set, *, root: Path, per_identity: int = 5,
                      recognizer: str | None = None, batch_size: int = 32, seed: int = 0) -> dict:
    """Generate `per_identity` faces from perturbations of each real face's identity vector and measure them
    against the real faces with a recognizer (see the module docstring); fractions, cosine similarities as is."""
    from .generate import perturb
    from .identity import identity_statistics, verification_accuracy

    if not (hasattr(subject, "generate") and hasattr(subject, "identity_network")):
        given = getattr(subject, "method_name", None) or type(subject).__name__
        raise ConfigError(f"generation tasks need a vec2face model (one that generates faces); got {given}")
    if per_identity < 2:
        raise ConfigError(f"per_identity must be at least 2 (same-identity pairs), got {per_identity}")
    device = next(subject.parameters()).device
    real = torch.stack([test_set[i]["image"] for i in range(len(test_set))])
    _, own = _embedder(None, subject, batch_size)
    vectors = own(real)   # the generator's input: its own recognizer's vectors of the real faces
    samples, owners = perturb(vectors, per_identity, seed=seed)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)   # the generation masks
    try:
        generated = torch.cat([subject.generate(samples[i:i + batch_size].to(device)).float().cpu()
                               for i in range(0, len(samples), batch_size)])
    finally:
        torch.random.set_rng_state(state)
    name, embed = _embedder(recognizer, subject, batch_size)
    fake, genuine = F.normalize(embed(generated), dim=-1), F.normalize(embed(real), dim=-1)
    consistency = (fake * genuine[owners]).sum(-1)
    rank1 = ((fake @ genuine.T).argmax(1) == owners).float().mean()
    return {"identity_similarity": float(consistency.mean()), "rank1": float(rank1),
            "chance_rank1": 1 / len(real), **identity_statistics(fake, owners),
            "verification_accuracy": verification_accuracy(fake, owners, seed=seed), "recognizer": name,
            "per_identity": per_identity}


GENERATION_SETTINGS = {"per_identity": 5, "batch_size": 32}  # ours: 5 perturbations of each real face


# -------------------------------------------------------------------------- a recognizer trained on generated faces
def face_views(face: np.ndarray, views: int, seed: int) -> list[np.ndarray]:
    """`views` distinct images of one aligned face: the face itself, then seeded small changes of pose and light
    (albumentations: scale 0.93-1.07, shift up to 4%, rotation up to 6 degrees, a flip half the time, brightness and
    contrast up to 15%), since the shipped faces have one photograph per identity."""
    import albumentations as A

    change = A.Compose([A.Affine(scale=(0.93, 1.07), translate_percent=(-0.04, 0.04), rotate=(-6, 6),
                                 border_mode=1, p=1.0),  # border_mode 1: cv2.BORDER_REPLICATE
                        A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(0.15, 0.15, p=1.0)], seed=seed)
    return [face] + [change(image=face)["image"] for _ in range(views - 1)]


class FaceViews(torch.utils.data.Dataset):
    """`views` images of each aligned face (`face_views`), labelled by the face: {"image" in [-1, 1], "label"}."""

    def __init__(self, files: Sequence[Path], size: int, views: int = 4, seed: int = 0):
        from PIL import Image

        from .data import read_image

        if views < 2:
            raise ConfigError(f"views must be at least 2 (same-identity pairs need two images of a face), got {views}")
        self.files, self.size, self.views = list(files), size, views
        self.names = [f.stem for f in self.files]
        self.images, self.targets = [], []
        for index, file in enumerate(self.files):
            face = np.asarray(Image.fromarray(read_image(file)).resize((size, size), Image.BICUBIC))
            self.images += face_views(face, views, seed + index)
            self.targets += [index] * views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        pixels = torch.from_numpy(self.images[index].transpose(2, 0, 1).copy()).float() / 127.5 - 1
        return {"image": pixels, "label": self.targets[index]}


def verification_reader(root: Path, size: int = 112, views: int = 4, held_out: float = 0.5, split_seed: int = 0,
                        **_):
    """ROOT/identities/ (or ROOT), one real face per identity, split by identity (seeded): (the faces a real-data
    recognizer may train on, `views` images of each held-out face for the verification pairs)."""
    files = _identity_files(root, least=4)
    order = np.random.default_rng(split_seed).permutation(len(files))
    count = min(len(files) - 2, max(2, round(held_out * len(files))))
    test = sorted(order[:count].tolist())
    train = sorted(order[count:].tolist())
    return (IdentityFaces([files[i] for i in train], size),
            FaceViews([files[i] for i in test], size, views, seed=split_seed))


def _verify(network: nn.Module, faces, batch_size: int, seed: int) -> float:
    from .identity import embed_faces, verification_accuracy

    images = torch.stack([faces[i]["image"] for i in range(len(faces))])
    device = next(network.parameters()).device
    features = embed_faces(network, _resized(images, network.img_size).to(device), batch_size).cpu()
    return verification_accuracy(features, torch.as_tensor(faces.targets), seed=seed)


def _count_images(folder: Path) -> tuple[int, int]:
    from .data import IMAGE_SUFFIXES

    people = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    images = sum(1 for p in people for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(people) < 2 or not images:
        raise DataError(f"generated {folder}: expected one image subfolder per identity (`mimkit-faces generate`), "
                        f"found {len(people)} subfolders and {images} images")
    return len(people), images


def recognizer_verification_runner(subject: nn.Module, train_set, test_set, *, root: Path,
                                   generated: str | None = None, identities: int = 100, per_identity: int = 10,
                                   train: dict | None = None, compare_real: bool = True, batch_size: int = 64,
                                   seed: int = 0) -> dict:
    """Train mimkit's identity network (IResNet, ArcFace) on a generated face set and measure its LFW-style
    verification accuracy on held-out real faces; beside it the same network untrained (its starting weights)
    and, with `compare_real`, trained on as many images of the other real faces.

    Args:
        generated: a `mimkit-faces generate` folder (one subfolder per identity); default: generate one with the
            subject (`identities` x `per_identity` images, as `mimkit-faces generate` does)
        train: IdentityTrainConfig fields (default: Vec2Face README's R50 ArcFace config)
    """
    import dataclasses
    import math
    import sys
    import tempfile

    from PIL import Image

    from .generate import generate_dataset
    from .identity import IdentityTrainConfig, IResNet, freeze, train_identity

    options = dict(train or {})
    extra = {"enable_progress_bar": sys.stderr.isatty(), **options.pop("extra", {})}
    config = IdentityTrainConfig(**{**options, "seed": seed, "extra": extra})
    with tempfile.TemporaryDirectory(prefix="mimkit-verification-") as work:
        work = Path(work)
        if generated is None:
            if not hasattr(subject, "generate"):
                given = getattr(subject, "method_name", None) or type(subject).__name__
                raise ConfigError(f"give generated=<a mimkit-faces generate folder>, or a vec2face model to generate "
                                  f"one; got {given}")
            norm = float(subject.identity_norm) if float(getattr(subject, "identity_count", 0)) else None
            if norm is None:  # an untrained model never saw vectors: the length its recognizer gives real faces
                real = torch.stack([test_set[i]["image"] for i in range(len(test_set))])
                _, own = _embedder(None, subject, batch_size)
                norm = float(own(real).norm(dim=-1).mean())
            folder = work / "generated"
            generate_dataset(subject, folder, identities, per_identity, norm=norm, batch_size=batch_size, seed=seed)
        else:
            folder = Path(generated).expanduser()
        people, images = _count_images(folder)
        network, losses = train_identity(folder, work / "generated.safetensors", config)
        result = {"verification_accuracy": _verify(network, test_set, batch_size, seed),
                  "generated_identities": people, "generated_images": images, "steps": len(losses),
                  "last_loss": float(np.mean(losses[-10:]))}
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)  # the weights train_identity started from
        try:
            untrained = freeze(IResNet(config.depth, config.widths, config.embedding_dim, config.img_size))
        finally:
            torch.random.set_rng_state(generator_state)
        result["untrained_verification_accuracy"] = _verify(untrained, test_set, batch_size, seed)
        if compare_real and len(train_set) >= 2:
            # as many real images as generated ones: each training face's views (the held-out faces are never used)
            views = max(2, math.ceil(images / len(train_set)))
            for index, name in enumerate(train_set.names):
                person = work / "real" / name
                person.mkdir(parents=True)
                face = train_set.images[index]
                for k, view in enumerate(face_views(face, views, seed=10_000 + seed + index)):
                    Image.fromarray(view).save(person / f"{k:03d}.png")
            real_config = dataclasses.replace(config, max_steps=config.max_steps or len(losses))  # equal steps
            real_network, _ = train_identity(work / "real", work / "real.safetensors", real_config)
            result.update(real_verification_accuracy=_verify(real_network, test_set, batch_size, seed),
                          real_identities=len(train_set), real_images=views * len(train_set))
    result.update(test_identities=len(test_set.files), test_images=len(test_set))
    return result


# ours: 100 identities x 10 images when the task generates its own set; 4 images of each held-out real face
RECOGNIZER_SETTINGS = {"identities": 100, "per_identity": 10, "batch_size": 64, "compare_real": True}


def _generation_task(name: str, metric: str, description: str) -> Task:
    return Task(name, "faces", "shipped faces (LFW subset, astronaut, Grace Hopper)", "generation", metric,
                identity_faces_reader, description, runner=generation_runner, settings=dict(GENERATION_SETTINGS),
                protocol_details=dict(split="every shipped face MTCNN aligns, each its own identity",
                                      metric_variant=f"{metric} of generated faces against the real ones"))


GENERATION_TASKS = [
    _generation_task("vec2face-identity-consistency", "identity_similarity",
                     "Vec2Face: mean cosine similarity of faces generated from perturbed identity vectors to the real "
                     "face that gave the vector (intra-identity consistency)"),
    _generation_task("vec2face-identity-identification", "rank1",
                     "Vec2Face: rank-1 identification of faces generated from perturbed identity vectors among the "
                     "real faces (identity separability)"),
]
RECOGNIZER_TASK = Task(
    "vec2face-recognizer-verification", "faces", "shipped faces (LFW subset, astronaut, Grace Hopper)", "generation",
    "verification_accuracy", verification_reader,
    "Vec2Face: LFW-style verification accuracy of an ArcFace IResNet trained on the generated set, on held-out "
    "real faces; beside it the same network untrained and trained on as many real images",
    runner=recognizer_verification_runner, settings=dict(RECOGNIZER_SETTINGS),
    protocol_details=dict(split="half the shipped faces MTCNN aligns held out (seeded), 4 views each; 10 folds of "
                                "balanced same/different pairs, each fold at the threshold best on the other nine",
                          metric_variant="verification accuracy; same pairs are two views of one photograph "
                                         "(easier than LFW's, not comparable with published LFW figures)"))
for _registered in GENERATION_TASKS + [RECOGNIZER_TASK]:
    register_task(_registered)
TASKS += GENERATION_TASKS + [RECOGNIZER_TASK]


__all__ = ["detection_runner", "train_detector", "score_frames", "synthetic_reader", "protocol_reader", "TASKS",
           "DATASET_FOLDERS", "generation_runner", "identity_faces_reader", "IdentityFaces", "GENERATION_TASKS",
           "face_views", "FaceViews", "verification_reader", "recognizer_verification_runner", "RECOGNIZER_TASK"]
