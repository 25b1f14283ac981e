"""Images with object boxes and per-object distances: a KITTI-style reader and a small pasted-object set.

A sample is a dict: `image` (C, H, W) normalised, `boxes` (M, 4) pixel x1, y1, x2, y2 and `distances` (M,),
both padded to `max_objects` rows with NaN so that the default collate stacks them; `object_boxes` recovers
the per-image lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .data import ChannelStats, normalisation_stats
from .errors import ConfigError, DataError

# KITTI object label columns (devkit readme): type, truncated, occluded, alpha, bbox left top right bottom,
# dimensions h w l, location x y z (camera coordinates, metres), rotation_y [, score]
KITTI_COLUMNS = 15


def read_kitti_labels(path: str | Path, classes: Sequence[str] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Boxes (M, 4), distances (M,) and class names of one KITTI label file.

    The distance is the location's z (the camera-axis depth of the 3D box centre), as DistFormer's
    "kitti_3D" centres (dataset/kitti_ds.py); DontCare rows and negative distances are dropped, as there.
    """
    path = Path(path)
    boxes, distances, names = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (KITTI_COLUMNS, KITTI_COLUMNS + 1):
            raise DataError(f"{path}:{number}: a KITTI label line has {KITTI_COLUMNS} (or 16 with score) fields, "
                            f"found {len(fields)}")
        name = fields[0]
        if name == "DontCare" or (classes is not None and name not in classes):
            continue
        try:
            box = [float(v) for v in fields[4:8]]
            z = float(fields[13])
        except ValueError:
            raise DataError(f"{path}:{number}: bbox and location must be numbers, "
                            f"found {' '.join(fields[4:14])}") from None
        if z < 0:
            continue
        boxes.append(box)
        distances.append(z)
        names.append(name)
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(distances, dtype=np.float32), names)


def write_kitti_labels(path: str | Path, boxes: np.ndarray, distances: np.ndarray, name: str = "Car") -> Path:
    """One KITTI label file for boxes and distances (other fields zero; z = distance)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{name} 0.00 0 0.00 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} 0.00 0.00 0.00 0.00 0.00 {z:.3f} 0.00"
             for (x1, y1, x2, y2), z in zip(np.asarray(boxes), np.asarray(distances))]
    path.write_text("\n".join(lines) + "\n")
    return path


def pad_objects(boxes: torch.Tensor, distances: torch.Tensor, max_objects: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, 4), (M,) -> (max_objects, 4), (max_objects,) with NaN rows after the M objects."""
    if len(boxes) > max_objects:
        raise DataError(f"an image holds {len(boxes)} objects, more than max_objects={max_objects}")
    out_boxes = torch.full((max_objects, 4), float("nan"))
    out_dist = torch.full((max_objects,), float("nan"))
    out_boxes[:len(boxes)] = boxes
    out_dist[:len(boxes)] = distances
    return out_boxes, out_dist


def object_boxes(batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Per-image boxes (M_i, 4) and distances (M_i,) from a batch: NaN-padded tensors or lists of tensors."""
    if "boxes" not in batch:
        raise DataError(f"this method needs per-object 'boxes' (B, M, 4) in the batch; got keys {sorted(batch)}")
    boxes, distances = batch["boxes"], batch.get("distances")
    if torch.is_tensor(boxes):
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise DataError(f"batch['boxes'] must be (B, M, 4) x1, y1, x2, y2, got shape {tuple(boxes.shape)}")
        valid = ~torch.isnan(boxes).any(-1)
        boxes = [b[v] for b, v in zip(boxes, valid)]
        if distances is not None:
            distances = [d[v] for d, v in zip(distances, valid)]
    return list(boxes), (None if distances is None else list(distances))


class KittiObjects(Dataset):
    """KITTI-layout folder: `image_2/NAME.png` and `label_2/NAME.txt`; images resized to `img_size`, boxes with them.

    `mean` / `std` None: measured on up to 256 evenly spaced images. With `hflip`, a sample asked for by the trainer's
    (index, seed) pair is flipped with its boxes half of the time (DistFormer's KITTI training: RandomHorizontalFlip
    p 0.5, dataset/kitti_ds.py); a plain index is never flipped.
    """

    in_chans = 3

    def __init__(self, root: str | Path, img_size: Sequence[int] | int = (96, 320), mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), max_objects: int = 16, classes: Sequence[str] | None = None,
                 hflip: bool = False, stats_images: int = 256):
        self.root = Path(root)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        images = self.root / "image_2"
        if not images.is_dir():
            raise DataError(f"{self.root}: expected a KITTI layout with image_2/ and label_2/, found no image_2/")
        self.files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        missing = [p.name for p in self.files if not (self.root / "label_2" / f"{p.stem}.txt").exists()]
        if missing or not self.files:
            raise DataError(f"{self.root}: every image in image_2/ needs label_2/NAME.txt; "
                            f"{'missing for ' + ', '.join(missing[:5]) if missing else 'no images found'}")
        self.max_objects, self.classes, self.hflip = max_objects, classes, hflip
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std, or neither (then they are measured on the images)")
        if mean is None:
            accumulator = ChannelStats(3)
            picks = np.unique(np.linspace(0, len(self.files) - 1, min(stats_images, len(self.files))).round())
            for i in picks.astype(int):
                accumulator.add(self._pixels(self.files[i]).numpy())
            mean, std = accumulator.result()
        self.mean, self.std = normalisation_stats(mean, std, 3)

    @property
    def stats(self) -> tuple[list[float], list[float]]:
        """Per-channel (mean, std) used for normalisation."""
        return self.mean.tolist(), self.std.tolist()

    def __len__(self) -> int:
        return len(self.files)

    def _pixels(self, path: Path) -> torch.Tensor:
        """(3, *img_size) [0, 1] pixels of one image."""
        try:
            image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        except OSError as error:
            raise DataError(f"{path}: cannot read the image ({error})") from None
        tensor = torch.from_numpy(image).permute(2, 0, 1)
        return F.interpolate(tensor[None], size=self.img_size, mode="bilinear", antialias=True, align_corners=False)[0]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), None)
        path = self.files[index]
        with Image.open(path) as image:
            w, h = image.size
        tensor = self._pixels(path)
        boxes, distances, _ = read_kitti_labels(self.root / "label_2" / f"{path.stem}.txt", self.classes)
        boxes = torch.from_numpy(boxes) * torch.tensor([self.img_size[1] / w, self.img_size[0] / h] * 2)
        if self.hflip and seed is not None and np.random.default_rng(seed).random() < 0.5:
            tensor = tensor.flip(-1)
            boxes = torch.stack([self.img_size[1] - boxes[:, 2], boxes[:, 1], self.img_size[1] - boxes[:, 0],
                                 boxes[:, 3]], dim=1)
        tensor = (tensor - torch.from_numpy(self.mean)[:, None, None]) / torch.from_numpy(self.std)[:, None, None]
        if len(boxes) > self.max_objects:
            raise DataError(f"{self.root / 'label_2' / (path.stem + '.txt')} holds {len(boxes)} objects, more than "
                            f"max_objects={self.max_objects} (data.max_objects)")
        boxes, distances = pad_objects(boxes, torch.from_numpy(distances), self.max_objects)
        return {"image": tensor, "boxes": boxes, "distances": distances}


@dataclass
class ObjectFolderData:
    """Images with object boxes and per-object distances in the KITTI layout, for methods that need boxes (mom).

    Args:
        root: a KITTI-layout folder: image_2/NAME.png and label_2/NAME.txt (`mimkit synthetic-objects` writes one)
        classes: object types to keep (the label files' first column; None: all but DontCare)
        max_objects: boxes per image: the batch pads each image's boxes to this many
        hflip: random horizontal flips of image and boxes (DistFormer's KITTI training: p 0.5)
        mean: per-channel mean after scaling to [0, 1] (None: measured on up to 256 images)
        std: per-channel standard deviation (None: measured with the mean)
    """

    root: str | None = None
    classes: list[str] | None = None
    max_objects: int = 32
    hflip: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None

    def default_method(self) -> str:
        return "mom"

    def build(self, model: dict, method: str) -> KittiObjects:
        """The dataset at the method's image size; the measured mean/std are kept on `self` (for config.yaml)."""
        from .config import encoder_setting

        if self.root is None:
            raise ConfigError("no data given: pass --data DIR (a KITTI-layout folder: image_2/ and label_2/)")
        dataset = KittiObjects(self.root, img_size=encoder_setting(model, "img_size", method), mean=self.mean,
                               std=self.std, max_objects=self.max_objects, classes=self.classes, hflip=self.hflip)
        self.mean, self.std = [float(v) for v in dataset.stats[0]], [float(v) for v in dataset.stats[1]]
        return dataset


def distance_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """DistFormer's per-object distance errors (utils/metrics.py; the monocular-depth set): abs_rel = mean |p - t| / t,
    sq_rel = mean (p - t)^2 / t, rmse, rmse_log (p clipped at float eps), delta_1 = share with max(p/t, t/p) < 1.25."""
    true, predicted = np.asarray(true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if true.shape != predicted.shape or true.size == 0:
        raise DataError(f"distance_metrics needs as many predictions as targets (at least one), got {predicted.shape} "
                        f"and {true.shape}")
    eps = np.finfo(np.float64).eps
    clipped = np.clip(predicted, eps, None)
    ratio = np.maximum(true / clipped, clipped / true)
    return {"abs_rel": float(np.mean(np.abs(predicted - true) / true)),
            "sq_rel": float(np.mean((predicted - true) ** 2 / true)),
            "rmse": float(np.sqrt(np.mean((predicted - true) ** 2))),
            "rmse_log": float(np.sqrt(np.mean((np.log(clipped) - np.log(true + eps)) ** 2))),
            "delta_1": float(np.mean(ratio < 1.25))}


@torch.no_grad()
def evaluate_distances(method, dataset, batch_size: int = 64) -> dict[str, float]:
    """`distance_metrics` of a method's `predict_distances` (every object token visible) over a box dataset."""
    from torch.utils.data import DataLoader

    was_training = method.training
    method.eval()
    true, predicted = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            boxes, distances = object_boxes(batch)
            device = next(method.parameters()).device
            outputs = method.predict_distances(batch["image"].to(device), [b.to(device) for b in boxes])
            true += [d.numpy() for d in distances]
            predicted += [p.cpu().numpy() for p in outputs]
    finally:
        method.train(was_training)
    return {**distance_metrics(np.concatenate(true), np.concatenate(predicted)), "objects": int(sum(map(len, true)))}


def _photo(name: str) -> np.ndarray:
    from skimage import data

    return np.asarray(getattr(data, name)(), dtype=np.float32) / 255


def pasted_objects(count: int, size: int = 64, objects_per_image: int = 2, seed: int = 0,
                   focal: float | None = None, object_height: float = 1.0) -> list[dict]:
    """Real photographs with real objects pasted at known boxes: (image [0, 1], boxes, distances) per sample.

    Backgrounds are random crops of scikit-image's `coffee`, `rocket` and `hubble_deep_field` photographs;
    objects are scikit-image's `chelsea` (a cat) and the `astronaut`'s upper body, scaled to a random height.
    The distance follows a pinhole camera: distance = focal * object_height / box_height (focal = `size` px).
    """
    rng = np.random.default_rng(seed)
    backgrounds = [_photo(n) for n in ("coffee", "rocket", "hubble_deep_field")]
    things = [_photo("chelsea"), _photo("astronaut")[20:300, 120:400]]
    focal = float(size if focal is None else focal)
    samples = []
    for _ in range(count):
        bg = backgrounds[rng.integers(len(backgrounds))]
        top, left = rng.integers(0, bg.shape[0] - 200), rng.integers(0, bg.shape[1] - 200)
        canvas = torch.from_numpy(bg[top:top + 200, left:left + 200]).permute(2, 0, 1)
        canvas = F.interpolate(canvas[None], size=(size, size), mode="area")[0].clone()
        boxes, distances = [], []
        for _ in range(objects_per_image):
            thing = things[rng.integers(len(things))]
            h = int(rng.integers(size // 6, size // 2))
            w = max(2, int(round(h * thing.shape[1] / thing.shape[0])))
            w = min(w, size)
            y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            patch = torch.from_numpy(thing).permute(2, 0, 1)
            canvas[:, y:y + h, x:x + w] = F.interpolate(patch[None], size=(h, w), mode="area")[0]
            boxes.append([x, y, x + w, y + h])
            distances.append(focal * object_height / h)
        samples.append({"image": canvas.clamp(0, 1), "boxes": torch.tensor(boxes, dtype=torch.float32),
                        "distances": torch.tensor(distances, dtype=torch.float32)})
    return samples


def write_pasted_kitti(root: str | Path, count: int, size: int = 64, seed: int = 0, **kwargs) -> Path:
    """`pasted_objects` written in the KITTI layout (image_2/*.png, label_2/*.txt) for the reader and runs."""
    root = Path(root)
    (root / "image_2").mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(pasted_objects(count, size, seed=seed, **kwargs)):
        array = (sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(root / "image_2" / f"{i:06d}.png")
        write_kitti_labels(root / "label_2" / f"{i:06d}.txt", sample["boxes"].numpy(), sample["distances"].numpy())
    return root
