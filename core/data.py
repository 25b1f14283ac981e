"""Generic 2D image data: readers, an image-folder dataset, MAE augmentation, resumable sampling."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import albumentations as A
import cv2
import numpy as np
import tifffile
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .errors import ConfigError, DataError
from .tokens import as_tuple, grid_shape

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")
# PIL modes -> channel count after `_PIL_CONVERT` (palette and CMYK become RGB).
_PIL_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "I;16L": 1, "I;16B": 1, "F": 1, "LA": 2,
                 "RGB": 3, "P": 3, "CMYK": 3, "YCbCr": 3, "RGBA": 4, "PA": 4}
_PIL_CONVERT = {"1": "L", "P": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "PA": "RGBA"}


def _png_is_16bit_colour(path: Path) -> bool:
    """PIL decodes 16-bit RGB(A) PNGs to 8 bits; the IHDR header says whether this file is one."""
    with open(path, "rb") as f:
        head = f.read(26)
    # IHDR is the first chunk: bit depth at byte 24, colour type (2 RGB, 6 RGBA) at byte 25.
    return head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _tiff_channel_last(axes: str, shape: Sequence[int], path: Path) -> bool:
    if len(shape) == 2:
        return False
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 2D image (H,W), (C,H,W) or (H,W,C), found shape {tuple(shape)} "
                        f"(axes {axes}); 3D volumes are read by mimkit.medical")
    return axes.endswith("S")  # tifffile's "S" = samples per pixel, stored channel-last


def probe_image(path: str | Path) -> tuple[int, int, int]:
    """Cheaply read a file's header (no full decode): (channels, height, width); DataError if unreadable."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # header + size check only
            if array.dtype.kind not in "biuf" or array.ndim not in (2, 3):
                raise DataError(f"{path}: expected a numeric (H,W) or (C,H,W) array, "
                                f"found dtype {array.dtype} and shape {array.shape}")
            return (1, *array.shape) if array.ndim == 2 else tuple(array.shape)
        if suffix in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes = series.shape, series.axes
            if len(shape) == 2:
                return (1, *shape)
            return (shape[2], shape[0], shape[1]) if _tiff_channel_last(axes, shape, path) else tuple(shape)
        with Image.open(path) as img:
            mode, (width, height) = img.mode, img.size
            img.verify()  # PNG: chunk checksums; JPEG: marker structure
        if mode not in _PIL_CHANNELS:
            raise DataError(f"{path}: unsupported image mode {mode!r}")
        return _PIL_CHANNELS[mode], height, width
    except DataError:
        raise
    except Exception as error:  # each library has its own exception types for a broken file
        raise DataError(f"{path}: cannot read image header ({type(error).__name__}: {error})") from error


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an array (C,H,W) in its stored dtype; DataError if unreadable."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            return array[None] if array.ndim == 2 else array
        if suffix in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                array, axes = tif.series[0].asarray(), tif.series[0].axes
            if array.ndim == 2:
                return array[None]
            return np.moveaxis(array, -1, 0) if _tiff_channel_last(axes, array.shape, path) else array
        if suffix == ".png" and _png_is_16bit_colour(path):
            array = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
            if array is None:
                raise ValueError("OpenCV could not decode it")
            order = [2, 1, 0, 3][: array.shape[2]]  # OpenCV stores BGR(A)
            return np.moveaxis(array[..., order], -1, 0)
        with Image.open(path) as img:
            if img.mode in _PIL_CONVERT:
                img = img.convert(_PIL_CONVERT[img.mode])
            array = np.asarray(img)
        return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from error


def check_finite(image: np.ndarray, path: str | Path) -> None:
    """DataError naming `path` when a float image holds NaN or infinite values (one would make the loss NaN)."""
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        nan, inf = int(np.isnan(image).sum()), int(np.isinf(image).sum())
        raise DataError(f"{path}: {nan} NaN and {inf} infinite value(s) among {image.size}; expected finite pixels")


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """Integer images divided by their dtype's maximum (uint8 /255, uint16 /65535); floats kept. float32."""
    if image.dtype.kind in "iu":
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32)


def mae_train_transform(img_size: int | Sequence[int], scale: Sequence[float] = (0.2, 1.0),
                        hflip: bool = True) -> A.Compose:
    """MAE pretraining augmentation: random resized crop, scale (0.2, 1), bicubic, then horizontal flip."""
    size = as_tuple(img_size, 2, "img_size")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"crop scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
    # MAE main_pretrain.py: RandomResizedCrop(scale=(0.2, 1.0), interpolation=bicubic) + RandomHorizontalFlip.
    return A.Compose([A.RandomResizedCrop(size, scale=tuple(scale), interpolation=cv2.INTER_CUBIC),
                      A.HorizontalFlip(p=0.5 if hflip else 0.0)])


def eval_transform(img_size: int | Sequence[int], crop_pct: float = 224 / 256) -> A.Compose:
    """Evaluation: resize (keeping aspect, bicubic) so the image covers img_size / crop_pct, then center crop."""
    height, width = as_tuple(img_size, 2, "img_size")
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
    # MAE's fine-tuning evaluation uses crop_pct = 224/256; crop_pct=1 resizes straight to the crop.
    cover = (round(height / crop_pct), round(width / crop_pct))
    return A.Compose([A.SmallestMaxSize(max_size_hw=cover, interpolation=cv2.INTER_CUBIC),
                      A.CenterCrop(height, width)])


def center_crop_transform(img_size: int | Sequence[int]) -> A.Compose:
    """Center crop without resampling (keeps the pixel scale); images must be at least img_size."""
    return A.Compose([A.CenterCrop(*as_tuple(img_size, 2, "img_size"))])


_TRANSFORMS = {"train": mae_train_transform, "eval": eval_transform, "center_crop": center_crop_transform}


class ChannelStats:
    """Per-channel mean / std of pixels, accumulated in float64 so large images do not lose precision."""

    def __init__(self, channels: int, constant_below: float = 1e-6):
        self.total = np.zeros(channels)
        self.squares = np.zeros(channels)
        self.count = 0
        self.constant_below = constant_below

    def add(self, pixels) -> None:
        """Adds an array (C, ...) of pixels: channels first, any number of pixel axes."""
        pixels = np.asarray(pixels).astype(np.float64)
        axes = tuple(range(1, pixels.ndim))
        self.total += pixels.sum(axis=axes)
        self.squares += (pixels ** 2).sum(axis=axes)
        self.count += pixels[0].size

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) per channel; a channel whose std is below `constant_below` gets std 1."""
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean ** 2, 0))
        std[std < self.constant_below] = 1.0  # a constant channel: centre it, do not divide by zero
        return mean, std


def per_channel(name: str, values, channels: int, what: str | None = None) -> np.ndarray:
    """`values` as float32, one per channel: a single value is repeated, another count is a ConfigError.

    `what` ends the error message, saying what has `channels` channels (default: "the images have N channels").
    """
    values = np.asarray(values, np.float32).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, channels)
    if values.size != channels:
        raise ConfigError(f"{name} has {values.size} values but {what or f'the images have {channels} channels'}")
    return values


def normalisation_stats(mean, std, channels: int, what: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 (mean, std) from one value or one per channel (see per_channel); std must be positive."""
    mean, std = per_channel("mean", mean, channels, what), per_channel("std", std, channels, what)
    if (std <= 0).any():
        raise ConfigError(f"std must be positive, got {std.tolist()}")
    return mean, std


class NormalisedDataset(Dataset):
    """A dataset whose images are normalised per channel with float32 `mean` / `std`, labelled from `classes`."""

    mean: np.ndarray
    std: np.ndarray
    classes: list

    @property
    def stats(self) -> tuple[list[float], list[float]]:
        """Per-channel (mean, std) used for normalisation."""
        return self.mean.tolist(), self.std.tolist()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def list_files(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Files with one of `suffixes` under `folder`, recursively, sorted; hidden files and folders skipped."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def scan_folder(root: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES, labelled: bool | None = None
                ) -> tuple[list[Path], list[int], list[str], bool]:
    """(files, class indices, class names, labelled) of a class-subfolder or flat folder.

    `labelled=None` decides from the layout: files directly under `root` mean a flat, unlabelled folder
    (searched recursively); only subfolders mean one subfolder per class.
    """
    top_files = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes]
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labelled is None:
        labelled = not top_files and bool(folders)
    if not labelled:
        return list_files(root, suffixes), [], [], False
    files, targets, classes = [], [], []
    for folder in folders:
        found = list_files(folder, suffixes)
        if found:
            files += found
            targets += [len(classes)] * len(found)
            classes.append(folder.name)
    return files, targets, classes, True


class ImageFolderDataset(NormalisedDataset):
    """Images from class subfolders (labelled) or a flat folder searched recursively (unlabelled).

    `dataset[i]` (fixed augmentation seed i) or `dataset[(i, sample_seed)]` (from ResumableSampler) returns
    {"image": float32 (C,H,W), "index": int} plus "label" when labelled. Intensities are scaled to [0, 1]
    by dtype, then normalised per channel with `mean`/`std` or with statistics of up to 256 images.
    """

    def __init__(self, root: str | Path, img_size: int | Sequence[int] = 224, patch_size: int | Sequence[int] = 16,
                 in_chans: int | None = None, transform: str | A.BaseCompose = "train",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 labelled: bool | None = None, strict: bool = False, stats_images: int = 256):
        self.root = Path(root)
        self.img_size = as_tuple(img_size, 2, "img_size")
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        grid_shape(self.img_size, self.patch_size)  # errors with a fix when they do not divide
        self.strict = strict
        if isinstance(transform, str):
            if transform not in _TRANSFORMS:
                raise ConfigError(f"transform must be one of {sorted(_TRANSFORMS)} or an albumentations "
                                  f"Compose, got {transform!r}")
            self.transform_name, transform = transform, _TRANSFORMS[transform](self.img_size)
        else:
            self.transform_name = "custom"
        self.transform = transform
        self.files, self.targets, self.classes = self._scan(labelled)
        self.skipped: list[tuple[Path, str]] = []
        self._check_headers(in_chans)
        self.mean, self.std = self._stats(mean, std, stats_images)

    def _scan(self, labelled: bool | None) -> tuple[list[Path], list[int], list[str]]:
        if not self.root.exists():
            raise DataError(f"data folder {self.root} does not exist")
        if not self.root.is_dir():
            raise DataError(f"data path {self.root} is a file; expected a folder of images")
        files, targets, classes, labelled = scan_folder(self.root, IMAGE_SUFFIXES, labelled)
        if not files:
            raise DataError(f"no image files under {self.root} "
                            f"({'class subfolders' if labelled else 'searched recursively'}; "
                            f"accepted suffixes: {' '.join(IMAGE_SUFFIXES)})")
        return files, targets, classes

    def _skip(self, path: Path, reason: str, warn: bool = True) -> None:
        if self.strict:
            raise DataError(f"{reason} (strict=True; pass strict=False to skip unreadable files)")
        if path not in {p for p, _ in self.skipped}:
            if warn:
                logger.warning("skipping unreadable file: %s", reason)
            self.skipped.append((path, reason))

    def _check_headers(self, in_chans: int | None) -> None:
        """Open every header once (threads: it is I/O bound) so broken, mis-shaped files show up front."""
        def probe(path: Path):
            try:
                return probe_image(path)
            except DataError as error:
                return str(error)

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(probe, self.files))
        good = [i for i, r in enumerate(results) if not isinstance(r, str)]
        for i, r in enumerate(results):
            if isinstance(r, str):
                self._skip(self.files[i], r, warn=False)
        if not good:
            raise DataError(f"none of the {len(self.files)} image files under {self.root} could be read; "
                            f"first: {self.skipped[0][1]}")
        if self.skipped:
            logger.warning("skipped %d of %d files under %s that could not be read (dataset.skipped lists them)",
                           len(self.skipped), len(self.files), self.root)
        self.files = [self.files[i] for i in good]
        self.targets = [self.targets[i] for i in good] if self.targets else []
        shapes = [results[i] for i in good]
        self.in_chans = in_chans or Counter(s[0] for s in shapes).most_common(1)[0][0]
        wrong = [(p, s[0]) for p, s in zip(self.files, shapes) if s[0] != self.in_chans]
        if wrong:
            same = len(wrong) == len(self.files) and len({c for _, c in wrong}) == 1
            hint = f"; pass --in-chans {wrong[0][1]}" if same else ""
            raise DataError(f"{wrong[0][0]} has {wrong[0][1]} channel(s) but in_chans is {self.in_chans} "
                            f"({len(wrong)} of {len(self.files)} files differ{hint}; "
                            f".npy arrays are read as (C,H,W) or (H,W))")
        need = self.img_size if self.transform_name == "center_crop" else self.patch_size
        what = "the center crop size" if self.transform_name == "center_crop" else "one patch"
        small = [(p, s) for p, s in zip(self.files, shapes) if s[1] < need[0] or s[2] < need[1]]
        if small:
            path, shape = small[0]
            raise DataError(f"{path} is {shape[1]}x{shape[2]} pixels, smaller than {what} "
                            f"({need[0]}x{need[1]}); {len(small)} file(s) are too small")

    def _stats(self, mean, std, stats_images: int) -> tuple[np.ndarray, np.ndarray]:
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std, or neither (then they are computed from the data)")
        if mean is None:
            # Evenly spaced files, raw (un-augmented) pixels.
            picks = np.unique(np.linspace(0, len(self.files) - 1, min(stats_images, len(self.files))).round())
            accumulator = ChannelStats(self.in_chans)
            for i in picks.astype(int):
                try:
                    image = self._read(int(i))
                except DataError as error:
                    self._skip(self.files[int(i)], str(error))
                    continue
                accumulator.add(image)
            if not accumulator.count:
                raise DataError(f"no image under {self.root} could be decoded to compute mean/std")
            mean, std = accumulator.result()
        return normalisation_stats(mean, std, self.in_chans)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> np.ndarray:
        path = self.files[index]
        image = read_image(path)
        if image.shape[0] != self.in_chans:
            raise DataError(f"{path}: decoded to {image.shape[0]} channel(s), expected in_chans={self.in_chans}")
        check_finite(image, path)
        return to_unit_range(image)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))
        for attempt in range(min(len(self.files), 16)):
            # A file that fails now is replaced by the next one, the same one on every run and worker.
            current = (index + attempt) % len(self.files)
            try:
                image = self._read(current)
                break
            except DataError as error:
                self._skip(self.files[current], str(error))
        else:
            raise DataError(f"{self.files[index]} and the files after it under {self.root} could not be read")
        # One shared generator pair for the whole pipeline, so the transforms draw different numbers.
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        image = self.transform(image=np.ascontiguousarray(image.transpose(1, 2, 0)))["image"]
        if image.ndim == 2:
            image = image[..., None]
        image = (image - self.mean) / self.std
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32)),
                  "index": current}
        if self.classes:
            sample["label"] = self.targets[current]
        return sample


# Folder formats besides plain image folders, by module name (each builds on this module, so it is found by name,
# as the registry finds methods): module.dataset_class(root) -> the dataset class that reads `root`, or None.
FOLDER_FORMATS = ("mimkit.core.shards",)


def image_dataset(root: str | Path, **options) -> ImageFolderDataset:
    """An image folder, or a shard folder written by `mimkit shard` (core.shards), read the same way."""
    import importlib

    for name in FOLDER_FORMATS:
        cls = importlib.import_module(name).dataset_class(root)
        if cls is not None:
            return cls(root, **options)
    return ImageFolderDataset(root, **options)


class ReportedSkips(list):
    """A dataset's `skipped` list whose new entries are also appended to a file: a loader worker holds a copy of the
    dataset, so what it skips reaches the run's totals only through that file (one JSON line per skip)."""

    def __init__(self, items, path: str | Path):
        super().__init__(items)
        self.path = str(path)

    def append(self, item) -> None:
        super().append(item)
        file, reason = item
        line = json.dumps({"file": str(file), "reason": str(reason), "pid": os.getpid()}) + "\n"
        with open(self.path, "a") as f:  # one short append per line: lines of several workers do not interleave
            f.write(line)


def report_skips(dataset, path: str | Path) -> None:
    """Make every `skipped` list of `dataset` (and of the datasets it holds) report to `path`, in any process."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()

    def visit(obj, depth: int) -> None:
        if id(obj) in seen or depth > 3 or not hasattr(obj, "__dict__"):
            return
        seen.add(id(obj))
        fields = vars(obj)
        if isinstance(fields.get("skipped"), list) and not isinstance(fields["skipped"], ReportedSkips):
            obj.skipped = ReportedSkips(fields["skipped"], path)
        for value in list(fields.values()):
            if isinstance(value, Dataset):
                visit(value, depth + 1)

    visit(dataset, 0)


def skip_totals(dataset, path: str | Path) -> list[dict]:
    """Every skip of a run, once: the main process's `dataset.skipped` and the lines the workers wrote to `path`."""
    entries = [{"file": str(file), "reason": str(reason)} for file, reason in getattr(dataset, "skipped", ())]
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a killed process
                continue
            entries.append({"file": record["file"], "reason": record["reason"]})
    unique: dict[tuple[str, str], dict] = {}
    for entry in entries:
        unique.setdefault((entry["file"], entry["reason"]), entry)
    return list(unique.values())


def sample_seed(seed: int, position: int) -> int:
    """Augmentation seed for a sampling position, a pure function of (seed, position)."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


class ResumableSampler(Sampler):
    """Deterministic, resumable sampling: global position p -> key (index, sample_seed).

    Epoch p // n shuffles range(n) with a generator seeded by (seed, epoch); index = perm[p % n].
    Rank r of world_size W takes positions r, r+W, ...; `start` skips the first `start` global positions,
    so a resumed run continues the uninterrupted sequence exactly. Infinite unless `stop` (global
    position, exclusive) is given; `length_from` makes len() count from another position than `start`.
    """

    def __init__(self, num_samples: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1,
                 stop: int | None = None, length_from: int | None = None):
        if num_samples <= 0:
            raise ConfigError(f"num_samples must be positive, got {num_samples}")
        if seed < 0 or start < 0:
            raise ConfigError(f"seed and start must be non-negative, got seed={seed}, start={start}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.num_samples, self.seed, self.start = num_samples, seed, start
        self.rank, self.world_size, self.stop = rank, world_size, stop
        self.length_from = start if length_from is None else length_from  # len() counts positions from here

    def _first(self, start: int | None = None) -> int:
        start = self.start if start is None else start
        return start + (self.rank - start) % self.world_size

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("ResumableSampler without stop is infinite")
        return len(range(self._first(self.length_from), self.stop, self.world_size))

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position, epoch, perm = self._first(), -1, None
        while self.stop is None or position < self.stop:
            if position // self.num_samples != epoch:
                epoch = position // self.num_samples
                perm = self.permutation(epoch)
            yield int(perm[position % self.num_samples]), sample_seed(self.seed, position)
            position += self.world_size


def make_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, sampler: Sampler | None = None,
                shuffle: bool = False, drop_last: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader with worker settings that keep loading off the critical path.

    shuffle=True without a sampler uses a one-epoch ResumableSampler(seed), so the order is reproducible.
    """
    if sampler is None and shuffle:
        sampler = ResumableSampler(len(dataset), seed=seed, stop=len(dataset))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=single_threaded_worker)


# OpenCV's thread pool must not run in a process that forks loader workers: a worker forked while a pool thread
# holds its lock hangs in cv2.setNumThreads below (seen with 13-band GeoTIFF tiles resized in the main process, then a
# second loader). The main process keeps OpenCV to one thread; torch's threads do the main process's heavy work.
cv2.setNumThreads(1)


def single_threaded_worker(worker_id: int) -> None:
    """One thread per loader process: OpenCV's and torch's thread pools in every worker would fight the
    training threads for the same cores (measured: 5x slower steps on 2 cores)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    # Ctrl+C reaches every process of the terminal's group: the main process stops training with a checkpoint
    # (core.train.StopOnSignal) and needs its workers for the batches until then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def labelled_dataset(folder: str | Path, encoder, data: dict, what: str = "data"):
    """A class-subfolder image folder prepared for `encoder` (its size and channels) with a run's data settings
    (mean/std, crop_pct); `what` names the argument in the error for a folder without classes."""
    img_size = tuple(encoder.img_size)
    dataset = image_dataset(folder, img_size=img_size, patch_size=encoder.patch_size, in_chans=encoder.in_chans,
                                 transform=eval_transform(img_size, crop_pct=data.get("crop_pct", 1.0)),
                                 mean=data.get("mean"), std=data.get("std"), labelled=True)
    if not dataset.classes:
        raise ConfigError(f"--{what} {folder} has no class subfolders: evaluation needs labelled images "
                          f"(one subfolder per class)")
    return dataset


def few_labels(dataset, per_class: int, seed: int = 0):
    """A stratified subset with `per_class` labelled images per class (seeded)."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(dataset.targets)
    keep = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        keep.extend(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist())
    return Subset(dataset, sorted(keep))




@dataclass
class ImageFolderData:
    """Unlabelled pretraining images from a folder, read and augmented as MAE's pretraining does.

    Args:
        root: a flat folder (searched recursively) or one subfolder per class: PNG, JPEG, TIFF (8/16-bit, grey or
            colour) or .npy arrays (C, H, W) of any channel count
        crop_scale: RandomResizedCrop's area range (MAE: 0.2 to 1)
        hflip: random horizontal flips (MAE: yes)
        mean: per-channel mean after scaling to [0, 1] (None: measured on up to 256 images)
        std: per-channel standard deviation (None: measured with the mean)
        strict: stop at the first unreadable file instead of skipping and counting it
    """

    root: str | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None
    strict: bool = False

    def build(self, model: dict, method: str) -> "ImageFolderDataset":
        """The dataset for a method of these `model` settings; the measured mean/std are kept on `self`."""
        from .config import encoder_setting
        from .registry import method_class

        if self.root is None:
            raise ConfigError("no data given: pass --data DIR (a folder of images)")
        img_size = encoder_setting(model, "img_size", method)
        views = getattr(method_class(method), "loader_transform", None)  # a method that cuts its own views (CropMAE)
        if views is not None and (tuple(self.crop_scale) != (0.2, 1.0) or not self.hflip):
            raise ConfigError(f"{method} makes its own crops and flips from the full image: leave data.crop_scale and "
                              f"data.hflip unset (got {list(self.crop_scale)} and {self.hflip})")
        dataset = image_dataset(
            self.root, img_size=img_size, in_chans=encoder_setting(model, "in_chans"),
            patch_size=encoder_setting(model, "patch_size", method),
            transform=views(model, img_size) if views is not None else
            mae_train_transform(img_size, scale=self.crop_scale, hflip=self.hflip),
            mean=self.mean, std=self.std, labelled=False, strict=self.strict)
        self.mean, self.std = [float(v) for v in dataset.stats[0]], [float(v) for v in dataset.stats[1]]
        return dataset
