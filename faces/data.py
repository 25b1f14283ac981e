"""Face-forgery data: the usual datasets' local layouts, frames sampled per video, and per-video scores.

Each dataset is one domain; a sample is {"image", "label" (0 real, 1 fake), "domain" (index into the domains
list), "video" (index into `dataset.videos`)}. A "video" is a video file (read with OpenCV), a folder of
extracted frames, or one image; `frames_per_video` frames are drawn from each (a fixed number, seeded by the
video's name, evenly spread over its length), so scores can be averaged per video (video AUC) as the papers do.
Already-cropped faces (the layouts' frame folders, DeepfakeBench's crops) pass through; raw frames are cropped
with `faces="mtcnn"`: MTCNN (mimkit.faces.detection, the weights facenet-pytorch ships) finds the largest face and
its five landmarks, and the frame is aligned to the ArcFace template with `face_margin` more context around it.

Layouts read (ROOT is the dataset's folder; `compression` c0, c23 or c40 where it applies; videos may be replaced
by folders of frames of the same name, e.g. `videos/000.mp4` by `frames/000/`):
- ffpp: FaceForensics++: ROOT/original_sequences/youtube/<c>/{videos,frames}/<id>[.mp4] and
  ROOT/manipulated_sequences/<type>/<c>/{videos,frames}/<a>_<b>[.mp4] for the types Deepfakes, Face2Face,
  FaceSwap, NeuralTextures, FaceShifter; the official split files ROOT/splits/{train,val,test}.json (pairs
  [a, b]: real videos a and b, fakes a_b and b_a).
- celebdf: Celeb-DF v2: ROOT/{Celeb-real,YouTube-real,Celeb-synthesis}/*.mp4 and ROOT/List_of_testing_videos.txt
  (lines "<1 real | 0 fake> <folder>/<name>.mp4"): the listed videos are the test split, the others train.
- dfdc: DFDC: ROOT/**/metadata.json ({"name.mp4": {"label": "REAL"|"FAKE", "split": ...}}, videos beside it);
  a test set's ROOT/labels.csv (filename,label with 1 = fake) is the test split when present.
- wilddeepfake: WildDeepfake: ROOT/{real,fake}_{train,test}/<video>/.../*.png, each first-level folder a video.
- dfd: DeepFakeDetection (Google/Jigsaw, shipped with FF++): ROOT/original_sequences/actors/<c>/... and
  ROOT/manipulated_sequences/DeepFakeDetection/<c>/...; it has no official split, so every split is all of it
  (the cross-dataset protocol only tests on it).
- folder: ROOT/{real,fake}/ or ROOT/<split>/{real,fake}/, each entry a video file, an image or a frame folder.
"""
from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mimkit.core.errors import ConfigError, DataError

log = logging.getLogger("mimkit")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
FFPP_MANIPULATIONS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
COMPRESSIONS = ("c0", "c23", "c40", "raw")
SPLITS = ("train", "val", "test")
# CLIP's normalisation (open_clip OPENAI_DATASET_MEAN / STD): GM-DF's encoder is CLIP's
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Video:
    """One video of a dataset: where its frames are, its label (0 real, 1 fake) and a name unique in the dataset."""

    path: Path
    label: int
    name: str


# ============================================================================================ layouts
def _entry(path: Path) -> Path | None:
    """A video file, a frame folder or an image, or None when nothing is there."""
    if path.exists():
        return path
    for suffix in VIDEO_SUFFIXES:
        if path.with_suffix(suffix).is_file():
            return path.with_suffix(suffix)
    return None


def _sequence(root: Path, stem: str) -> Path | None:
    """FF++'s <root>/videos/<stem>.mp4 or <root>/frames/<stem>/ (extracted frames)."""
    for candidate in (root / "videos" / f"{stem}.mp4", root / "frames" / stem, root / stem):
        found = _entry(candidate)
        if found is not None:
            return found
    return None


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what}: {path} does not exist")
    return path


def read_ffpp(root: Path, split: str, compression: str = "c23",
              manipulations: Sequence[str] = FFPP_MANIPULATIONS) -> list[Video]:
    """FaceForensics++ videos of one official split (see the module docstring for the layout)."""
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    unknown = sorted(set(manipulations) - set(FFPP_MANIPULATIONS))
    if unknown:
        raise ConfigError(f"FaceForensics++ manipulation(s) {unknown}: choose from {', '.join(FFPP_MANIPULATIONS)}")
    split_file = _require(root / "splits" / f"{split}.json", "FaceForensics++ split file (official splits/*.json)")
    try:
        pairs = json.loads(split_file.read_text())
        pairs = [(str(a), str(b)) for a, b in pairs]
    except (ValueError, TypeError) as error:
        raise DataError(f"{split_file}: expected a JSON list of [a, b] video-id pairs ({error})") from None
    real_root = _require(root / "original_sequences" / "youtube" / compression, "FaceForensics++ real videos")
    videos, missing = [], 0
    for stem in sorted({s for pair in pairs for s in pair}):
        path = _sequence(real_root, stem)
        missing += path is None
        if path is not None:
            videos.append(Video(path, 0, f"real/{stem}"))
    for kind in manipulations:
        fake_root = root / "manipulated_sequences" / kind / compression
        if not fake_root.exists():
            log.warning("FaceForensics++: no %s videos at %s; left out", kind, fake_root)
            continue
        for a, b in pairs:
            for stem in (f"{a}_{b}", f"{b}_{a}"):
                path = _sequence(fake_root, stem)
                missing += path is None
                if path is not None:
                    videos.append(Video(path, 1, f"{kind}/{stem}"))
    if missing:
        log.warning("FaceForensics++ %s: %d videos of the split file are not on disk; left out", split, missing)
    return videos


def read_celebdf(root: Path, split: str) -> list[Video]:
    """Celeb-DF v2: List_of_testing_videos.txt is the test split, every other video the training split."""
    listing = _require(root / "List_of_testing_videos.txt", "Celeb-DF v2 test list")
    test = {}
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise DataError(f"{listing} line {number}: expected '<1|0> <folder>/<video>.mp4', found {line!r}")
        test[parts[1]] = 1 - int(parts[0])  # the list's 1 means real
    videos = []
    if split == "test":
        for relative, label in sorted(test.items()):
            path = _entry(root / relative) or _entry((root / relative).with_suffix(""))
            if path is None:
                raise DataError(f"{listing} lists {relative}, which is not under {root}")
            videos.append(Video(path, label, relative))
        return videos
    for folder, label in (("Celeb-real", 0), ("YouTube-real", 0), ("Celeb-synthesis", 1)):
        for path in sorted((root / folder).glob("*")) if (root / folder).is_dir() else []:
            relative = f"{folder}/{path.stem}.mp4"
            if relative not in test and (path.suffix.lower() in VIDEO_SUFFIXES or path.is_dir()):
                videos.append(Video(path, label, relative))
    return videos


def read_dfdc(root: Path, split: str) -> list[Video]:
    """DFDC: labels from metadata.json files (training parts) or a test set's labels.csv."""
    labels_csv = root / "labels.csv"
    if split == "test" and labels_csv.is_file():
        import csv

        with labels_csv.open() as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"filename", "label"} <= set(rows[0]):
            raise DataError(f"{labels_csv}: expected columns filename,label")
        found = {p.name: p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES}
        return [Video(found[r["filename"]], int(float(r["label"])), r["filename"]) for r in rows
                if r["filename"] in found]
    files = sorted(root.rglob("metadata.json"))
    if not files:
        raise DataError(f"DFDC: no metadata.json under {root}")
    videos = []
    for file in files:
        try:
            meta = json.loads(file.read_text())
        except ValueError as error:
            raise DataError(f"{file} is not valid JSON ({error})") from None
        for name, entry in sorted(meta.items()):
            if not isinstance(entry, dict) or str(entry.get("label", "")).upper() not in ("REAL", "FAKE"):
                raise DataError(f"{file}: entry {name!r} has no label REAL or FAKE")
            if split == "train" and entry.get("split") == "test":
                continue
            path = _entry(file.parent / name) or _entry(file.parent / Path(name).stem)
            if path is not None:
                videos.append(Video(path, int(entry["label"].upper() == "FAKE"), f"{file.parent.name}/{name}"))
    return videos


def read_wilddeepfake(root: Path, split: str) -> list[Video]:
    """WildDeepfake: ROOT/{real,fake}_<split>/<video>/ (frames anywhere below)."""
    split = "test" if split in ("val", "test") else "train"
    videos = []
    for label, kind in ((0, "real"), (1, "fake")):
        folder = _require(root / f"{kind}_{split}", "WildDeepfake folder")
        videos += [Video(p, label, f"{kind}_{split}/{p.name}") for p in sorted(folder.iterdir()) if p.is_dir()]
    return videos


def read_dfd(root: Path, split: str, compression: str = "c23") -> list[Video]:
    """DeepFakeDetection: every actor and manipulated video (no official split)."""
    videos = []
    for label, folder in ((0, root / "original_sequences" / "actors" / compression),
                          (1, root / "manipulated_sequences" / "DeepFakeDetection" / compression)):
        _require(folder, "DFD videos")
        sub = [folder / "videos", folder / "frames"]
        entries = [p for s in sub if s.is_dir() for p in sorted(s.iterdir())]
        videos += [Video(p, label, f"{label}/{p.stem}") for p in entries
                   if p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES]
    return videos


def read_folder(root: Path, split: str) -> list[Video]:
    """ROOT/{real,fake}/ or ROOT/<split>/{real,fake}/: each video file, image or frame folder is one video."""
    base = root / split if (root / split / "real").is_dir() or (root / split / "fake").is_dir() else root
    if not ((base / "real").is_dir() or (base / "fake").is_dir()):
        raise DataError(f"{root}: expected real/ and fake/ folders (or {split}/real, {split}/fake)")
    videos = []
    for label, kind in ((0, "real"), (1, "fake")):
        folder = base / kind
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
                videos.append(Video(path, label, f"{kind}/{path.name}"))
    return videos


READERS: dict[str, Callable[..., list[Video]]] = {
    "ffpp": read_ffpp, "celebdf": read_celebdf, "dfdc": read_dfdc, "wilddeepfake": read_wilddeepfake,
    "dfd": read_dfd, "folder": read_folder}
# the usual names of the datasets (the domain words of GM-DF's prompts)
DATASET_NAMES = {"ffpp": "FaceForensics++", "celebdf": "Celeb-DF", "dfdc": "DFDC", "wilddeepfake": "WildDeepfake",
                 "dfd": "DFD"}


def read_videos(reader: str, root: str | Path, split: str, **options) -> list[Video]:
    """The videos of one dataset split: `reader` is one of READERS."""
    if reader not in READERS:
        raise ConfigError(f"unknown face dataset layout {reader!r}; choose one of {', '.join(READERS)}")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{reader} data folder {root} does not exist")
    import inspect

    takes = inspect.signature(READERS[reader]).parameters
    videos = READERS[reader](root, split, **{k: v for k, v in options.items() if k in takes and v is not None})
    if not videos:
        raise DataError(f"no videos or images for the {split} split of {reader} under {root}")
    return videos


# ============================================================================================ frames
def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def video_frame_count(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DataError(f"video {path} cannot be opened (corrupt, or a codec OpenCV cannot read)")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    if count <= 0:
        raise DataError(f"video {path} has no frames (corrupt or empty)")
    return count


def sample_frames(count: int, number: int, key: str, seed: int = 0) -> list[int]:
    """`number` frame indices of `count`, one from each of `number` equal stretches, at an offset seeded by
    the video's name (the same frames every run); all frames when there are fewer."""
    if count <= number:
        return list(range(count))
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    edges = np.linspace(0, count, number + 1)
    return [int(min(count - 1, edges[i] + rng.uniform(0, edges[i + 1] - edges[i]))) for i in range(number)]


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 image; a DataError naming the file when it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise DataError(f"image {path} cannot be read (corrupt or not an image): {error}") from None


def read_video_frame(path: Path, index: int) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok or frame is None:
        raise DataError(f"video {path}: frame {index} cannot be decoded (corrupt video?)")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


# ============================================================================================ transforms
def face_transform(img_size: int, train: bool):
    """Albumentations: the detection papers' augmentations for training (JPEG compression, blur, colour jitter,
    horizontal flip; DeepfakeBench's set), resizing only for evaluation."""
    import albumentations as A

    steps = [A.Resize(img_size, img_size)]
    if train:
        steps = [A.HorizontalFlip(p=0.5),
                 A.ImageCompression(quality_range=(60, 100), p=0.3),
                 A.GaussianBlur(blur_limit=(3, 5), p=0.1),
                 A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.0, p=0.3),
                 *steps]
    return A.Compose(steps)


# ============================================================================================ dataset
class FaceForgeryDataset(Dataset):
    """Frames of face videos from one or more datasets (domains), with labels, domain and video indices."""

    def __init__(self, sources: Sequence[tuple[str, Sequence[Video]]], img_size: int = 224,
                 frames_per_video: int = 8, train: bool = False, seed: int = 0, labelled: bool = True,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, aligner=None):
        if frames_per_video < 1:
            raise ConfigError(f"frames_per_video must be at least 1, got {frames_per_video}")
        self.domains = [name for name, _ in sources]
        self.videos: list[Video] = []
        self.video_domains: list[int] = []
        self.items: list[tuple[int, int | Path]] = []   # (video index, frame index or frame file)
        for domain, (_, videos) in enumerate(sources):
            for video in videos:
                number = len(self.videos)
                for frame in self._frames(video, frames_per_video, seed):
                    self.items.append((number, frame))
                self.videos.append(video)
                self.video_domains.append(domain)
        if not self.items:
            raise DataError("no frames found in the face data given")
        self.img_size, self.train, self.labelled = img_size, train, labelled
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.stats = (list(mean), list(std))
        self.in_chans = 3
        self.transform = face_transform(img_size, train)
        self.targets = [self.videos[v].label for v, _ in self.items]
        # raw frames: a FaceAligner (mimkit.faces.detection); landmarks are kept per frame, since augmentation
        # comes after alignment and detection is the slow part
        self.aligner, self.landmarks, self.missed = aligner, {}, 0

    @staticmethod
    def _frames(video: Video, number: int, seed: int) -> list[int | Path]:
        path = video.path
        if path.is_dir():
            files = _frame_files(path)
            if not files:
                raise DataError(f"frame folder {path} holds no images ({' '.join(IMAGE_SUFFIXES)})")
            return [files[i] for i in sample_frames(len(files), number, video.name, seed)]
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return sample_frames(video_frame_count(path), number, video.name, seed)
        return [path]

    def __len__(self) -> int:
        return len(self.items)

    def eval_view(self) -> "FaceForgeryDataset":
        """The same frames without augmentation (pictures, scoring)."""
        import copy

        view = copy.copy(self)
        view.train, view.transform = False, face_transform(self.img_size, False)
        return view

    def _aligned(self, index: int, pixels: np.ndarray, where) -> np.ndarray:
        """The frame aligned on its largest face; the whole frame (counted in `missed`, logged) when none is found."""
        from .detection import align_face

        if index not in self.landmarks:
            self.landmarks[index] = self.aligner.landmarks(pixels)
            if self.landmarks[index] is None:
                self.missed += 1
                log.warning("no face found in %s: the whole frame is used (%d such frames so far in this process)",
                            where, self.missed)
        points = self.landmarks[index]
        return pixels if points is None else align_face(pixels, points, self.aligner.size, self.aligner.margin)

    def __getitem__(self, index):
        if isinstance(index, tuple):  # (index, sample seed) from core's ResumableSampler
            index, sample_seed = index
        else:
            sample_seed = index
        number, frame = self.items[index]
        video = self.videos[number]
        pixels = read_image(frame) if isinstance(frame, Path) else read_video_frame(video.path, frame)
        if self.aligner is not None:
            pixels = self._aligned(index, pixels, frame if isinstance(frame, Path) else f"{video.path} frame {frame}")
        if self.train:  # the augmentation is a pure function of the sample seed (resumable runs repeat it)
            import random

            self.transform.set_random_state(np.random.default_rng(sample_seed), random.Random(sample_seed))
        pixels = self.transform(image=pixels)["image"]
        image = (pixels.astype(np.float32) / 255 - self.mean) / self.std
        item = {"image": torch.from_numpy(image.transpose(2, 0, 1).copy()), "domain": self.video_domains[number],
                "video": number, "index": index}
        if self.labelled:
            item["label"] = video.label
        return item


# ============================================================================================ per-video scores
def video_scores(scores: Sequence[float], videos: Sequence[int], labels: Sequence[int]):
    """Mean frame score per video (the usual video-level aggregation): (video ids, scores, labels)."""
    scores, videos, labels = np.asarray(scores, float), np.asarray(videos), np.asarray(labels)
    ids = np.unique(videos)
    means = np.array([scores[videos == v].mean() for v in ids])
    video_labels = np.array([labels[videos == v][0] for v in ids])
    return ids, means, video_labels


def equal_error_rate(labels: Sequence[int], scores: Sequence[float]) -> float:
    """The error rate where false-positive and false-negative rates are equal (interpolated on the ROC curve)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    if i == 0:
        return float((fpr[0] + fnr[0]) / 2)
    # linear interpolation between the two ROC points around the crossing
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def detection_metrics(scores: Sequence[float], labels: Sequence[int], videos: Sequence[int],
                      threshold: float = 0.5) -> dict:
    """Frame and video AUC, EER and accuracy (at `threshold`) as fractions; AUC/EER None with one class only."""
    from sklearn.metrics import roc_auc_score

    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    _, video_score, video_label = video_scores(scores, videos, labels)
    both = len(np.unique(labels)) == 2
    return {"frame_auc": float(roc_auc_score(labels, scores)) if both else None,
            "video_auc": float(roc_auc_score(video_label, video_score)) if both else None,
            "frame_eer": equal_error_rate(labels, scores) if both else None,
            "video_eer": equal_error_rate(video_label, video_score) if both else None,
            "frame_accuracy": float(((scores >= threshold) == labels).mean()),
            "video_accuracy": float(((video_score >= threshold) == video_label).mean()),
            "num_frames": int(len(scores)), "num_videos": int(len(video_score))}


# ============================================================================================ the data section
def parse_source(text: str) -> tuple[str, str, str]:
    """"[name=]reader:path" -> (domain name, reader, path); the name defaults to the dataset's usual name (or the
    folder's name for `folder`)."""
    name, _, rest = text.partition("=") if "=" in text.split(":", 1)[0] else ("", "", text)
    reader, sep, path = rest.partition(":")
    if not sep or reader not in READERS:
        raise ConfigError(f"face data source {text!r}: expected [name=]reader:path with reader one of "
                          f"{', '.join(READERS)}")
    return name or DATASET_NAMES.get(reader) or Path(path).name, reader, path


@dataclass
class FaceData:
    """Face-forgery frames from local datasets, one domain each (the `data` section of mimkit-faces).

    Args:
        sources: the datasets, each "[name=]reader:path", reader one of ffpp, celebdf, dfdc, wilddeepfake, dfd,
            folder (e.g. "ffpp:/data/FaceForensics++", "mine=folder:/data/my_faces"); each is one domain
        split: train, val or test
        compression: FaceForensics++ / DFD compression (c0, c23, c40)
        manipulations: FaceForensics++ manipulation types (default: all five)
        frames_per_video: frames drawn from each video (a fixed number, seeded)
        labelled: give labels (detector training) or not (self-supervised pretraining)
        augment: JPEG compression, blur, colour jitter and flips while training
        seed: seed of the frame choice
        faces: "cropped" (frames are face crops: they pass through) or "mtcnn" (raw frames: detect the largest
            face with MTCNN and align it by its five landmarks; needs `pip install --no-deps facenet-pytorch`)
        face_weights: folder holding MTCNN's pnet.pt, rnet.pt, onet.pt (default: facenet-pytorch's installed ones)
        face_margin: context around the aligned face (0: the tight ArcFace crop; ours 0.3, the face 1 / 1.3 of the
            crop, keeps the face's outline, where blending leaves its traces)
    """

    sources: list[str] = field(default_factory=list)
    split: str = "train"
    compression: str = "c23"
    manipulations: list[str] | None = None
    frames_per_video: int = 8
    labelled: bool = True
    augment: bool = True
    seed: int = 0
    faces: Literal["cropped", "mtcnn"] = "cropped"
    face_weights: str | None = None
    face_margin: float = 0.3

    @property
    def root(self) -> str:
        return ", ".join(self.sources)

    def default_method(self) -> str:
        return "gm_df"

    def domain_names(self) -> list[str]:
        return [parse_source(s)[0] for s in self.sources]

    def dataset(self, img_size: int, split: str | None = None, train: bool | None = None) -> FaceForgeryDataset:
        if not self.sources:
            raise ConfigError("no face data given: pass --data.sources [name=]reader:path (e.g. folder:/data/faces)")
        split = split or self.split
        options = {"compression": self.compression,
                   "manipulations": tuple(self.manipulations) if self.manipulations else None}
        sources = [(name, read_videos(reader, path, split, **options))
                   for name, reader, path in map(parse_source, self.sources)]
        return FaceForgeryDataset(sources, img_size=img_size, frames_per_video=self.frames_per_video,
                                  train=self.augment if train is None else train, seed=self.seed,
                                  labelled=self.labelled, aligner=self.aligner(img_size))

    def aligner(self, img_size: int):
        """The FaceAligner for raw frames (`faces="mtcnn"`), at the detector's image size; None for crops."""
        if self.faces == "cropped":
            return None
        if self.faces != "mtcnn":
            raise ConfigError(f"data.faces must be 'cropped' or 'mtcnn', got {self.faces!r}")
        from .detection import FaceAligner

        return FaceAligner(self.face_weights, size=img_size, margin=self.face_margin)

    def build(self, model: dict, method: str) -> FaceForgeryDataset:
        """The training dataset for a method of these `model` settings (core.api.pretrain's data interface)."""
        from mimkit.core.config import encoder_setting

        size = encoder_setting(model, "img_size", method)
        size = size[0] if isinstance(size, (list, tuple)) else size
        return self.dataset(int(size))


__all__ = ["Video", "READERS", "DATASET_NAMES", "read_videos", "read_ffpp", "read_celebdf", "read_dfdc",
           "read_wilddeepfake", "read_dfd", "read_folder", "sample_frames", "FaceForgeryDataset", "FaceData",
           "face_transform", "video_scores", "equal_error_rate", "detection_metrics", "parse_source",
           "CLIP_MEAN", "CLIP_STD", "FFPP_MANIPULATIONS"]
