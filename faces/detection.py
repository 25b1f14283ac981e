"""Face detection, five landmarks and alignment for raw frames: MTCNN on the weights facenet-pytorch ships.

Zhang et al., "Joint Face Detection and Alignment using Multitask Cascaded Convolutional Networks", IEEE Signal
Processing Letters 2016. Three small networks in a cascade: P-Net proposes 12 x 12 windows over an image pyramid,
R-Net (24 x 24) and O-Net (48 x 48) re-score and refine them, O-Net also gives five landmarks (eyes, nose, mouth
corners). The networks here are written from the paper's figure; their weights are the state dicts facenet-pytorch
(MIT) ships in `facenet_pytorch/data/{pnet,rnet,onet}.pt` (the original authors' Caffe models, converted), read
with `weights_only=True` from the installed package or a local folder; nothing is downloaded.
Install them with `pip install --no-deps facenet-pytorch` (the package pins an old torch; mimkit never imports it).

What follows the published cascade (and the converted weights' conventions): pixels scaled as (x - 127.5) / 128;
pyramid factor 0.709 from 12 / min_face_size down to 12 pixels; stage thresholds 0.6 / 0.7 / 0.7; NMS at IoU 0.5
within a scale, 0.7 across scales and after R-Net, 0.7 on intersection-over-minimum after O-Net; boxes made square
before each next stage; landmarks as fractions of the O-Net input box; the dense layers read the feature map in
(width, height, channel) order, the layout the Caffe weights were trained in.
Ours: crops for R-Net / O-Net are taken with torchvision's roi_align (area-like averaging, black outside the
image, as the original's zero padding), and `FaceAligner` keeps the largest face of a frame.

Alignment: a similarity transform (least squares, scikit-image) of the five points onto insightface's 112 x 112
ArcFace template (the one Vec2Face's and most recognizers' training crops use), warped with OpenCV.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.core.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger("mimkit")

MTCNN_FILES = {"pnet": "pnet.pt", "rnet": "rnet.pt", "onet": "onet.pt"}
# insightface's ArcFace alignment template for 112 x 112 crops: left eye, right eye, nose tip, left and right
# mouth corner ("left" = smaller x in the image), in pixels
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


# ============================================================================================ the three networks
class PNet(nn.Module):
    """MTCNN's proposal network: fully convolutional, a face score and box offsets for every 12 x 12 window
    (stride 2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(face probability (B, H', W'), offsets (B, 4, H', W')) of normalised images."""
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x).softmax(1)[:, 1], self.conv4_2(x)


def _caffe_flatten(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, W*H*C): the order the converted Caffe dense weights expect."""
    return x.permute(0, 3, 2, 1).flatten(1)


class RNet(nn.Module):
    """MTCNN's refinement network: 24 x 24 crops -> face probability and box offsets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(3 * 3 * 64, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_caffe_flatten(self.prelu3(self.conv3(x)))))
        return self.dense5_1(x).softmax(1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """MTCNN's output network: 48 x 48 crops -> face probability, box offsets and five landmarks."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(3 * 3 * 128, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # x of the five points, then their y, as fractions of the box

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_caffe_flatten(self.prelu4(self.conv4(x)))))
        return self.dense6_1(x).softmax(1)[:, 1], self.dense6_2(x), self.dense6_3(x)


# ============================================================================================ weights
def mtcnn_weights_folder(folder: str | Path | None = None) -> Path:
    """The folder holding pnet.pt, rnet.pt and onet.pt: `folder`, or facenet-pytorch's installed data folder."""
    if folder is None:
        spec = importlib.util.find_spec("facenet_pytorch")  # finds the files without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("face detection needs MTCNN's weights: install them with "
                              "`pip install --no-deps facenet-pytorch` or give a folder holding "
                              f"{', '.join(MTCNN_FILES.values())}")
        folder = Path(spec.submodule_search_locations[0]) / "data"
    folder = Path(folder).expanduser()
    missing = [name for name in MTCNN_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"MTCNN weights folder {folder}: expected {', '.join(MTCNN_FILES.values())}, "
                              f"missing {', '.join(missing)}")
    return folder


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _load(network: nn.Module, path: Path) -> nn.Module:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which one
        raise CheckpointError(f"MTCNN weights {path} cannot be read as a torch state dict "
                              f"({_first_line(error)})") from None
    try:
        network.load_state_dict(state)
    except (RuntimeError, AttributeError) as error:
        raise CheckpointError(f"MTCNN weights {path} do not fit {type(network).__name__} "
                              f"({_first_line(error)})") from None
    return network.eval().requires_grad_(False)


# ============================================================================================ the cascade
@dataclass
class Faces:
    """The faces found in one image, most confident first: boxes (N, 4) as x0, y0, x1, y1 in pixels, scores (N,)
    and landmarks (N, 5, 2) as (x, y): left eye, right eye, nose, left and right mouth corner."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes grown to squares of their longer side about the same centre."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], 1)


def _refine(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Box regression: each corner moves by its offset times the box's width / height."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def nms_min(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS on intersection over the smaller box's area (MTCNN's last stage): kept indices, best first."""
    from torchvision.ops import box_area

    order = scores.argsort(descending=True)
    area = box_area(boxes)
    keep = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(int(best))
        corner0 = torch.maximum(boxes[best, :2], boxes[rest, :2])
        corner1 = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (corner1 - corner0).clamp(min=0).prod(1)
        order = rest[inter / torch.minimum(area[best], area[rest]) <= threshold]
    return torch.tensor(keep, dtype=torch.long)


class MTCNN(nn.Module):
    """The MTCNN cascade (Zhang et al. 2016) on local weights: `detect(image)` -> Faces.

    Args:
        weights: folder holding pnet.pt, rnet.pt, onet.pt (default: facenet-pytorch's installed data folder)
        min_face_size: smallest face side searched, in pixels (the pyramid starts at 12 / min_face_size)
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net
        factor: scale step of the image pyramid
    """

    def __init__(self, weights: str | Path | None = None, min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709):
        super().__init__()
        if len(thresholds) != 3:
            raise ConfigError(f"MTCNN thresholds: one per network (3), got {list(thresholds)}")
        if not 0 < factor < 1 or min_face_size < 12:
            raise ConfigError(f"MTCNN: factor must be in (0, 1) and min_face_size at least 12, got factor={factor}, "
                              f"min_face_size={min_face_size}")
        folder = mtcnn_weights_folder(weights)
        self.pnet = _load(PNet(), folder / MTCNN_FILES["pnet"])
        self.rnet = _load(RNet(), folder / MTCNN_FILES["rnet"])
        self.onet = _load(ONet(), folder / MTCNN_FILES["onet"])
        self.min_face_size, self.thresholds, self.factor = min_face_size, tuple(thresholds), factor

    @staticmethod
    def _normalise(pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - 127.5) / 128

    def _crops(self, image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
        from torchvision.ops import roi_align

        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
        return self._normalise(roi_align(image, rois, size, aligned=True))

    def _propose(self, image: torch.Tensor) -> torch.Tensor:
        """Stage 1: P-Net over the pyramid -> square candidate boxes (N, 4)."""
        from torchvision.ops import nms

        height, width = image.shape[-2:]
        scale = 12.0 / self.min_face_size
        found = []
        while min(height, width) * scale >= 12:
            size = (max(12, int(np.ceil(height * scale))), max(12, int(np.ceil(width * scale))))
            probability, offsets = self.pnet(self._normalise(F.interpolate(image, size=size, mode="area")))
            rows, cols = torch.nonzero(probability[0] >= self.thresholds[0], as_tuple=True)
            if len(rows):
                # each output cell is the 12 x 12 window at twice its position in the scaled image
                corner = torch.stack([cols, rows], 1).float() * 2
                boxes = torch.cat([corner, corner + 12], 1) / scale
                scores = probability[0, rows, cols]
                keep = nms(boxes, scores, 0.5)
                found.append((boxes[keep], scores[keep], offsets[0, :, rows, cols].T[keep]))
            scale *= self.factor
        if not found:
            return torch.zeros(0, 4)
        boxes, scores, offsets = (torch.cat(parts) for parts in zip(*found))
        keep = nms(boxes, scores, 0.7)
        return _square(_refine(boxes[keep], offsets[keep]))

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> Faces:
        """Faces in an H x W x 3 uint8 RGB image."""
        from torchvision.ops import nms

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"face detection expects an H x W x 3 RGB image, got shape {tuple(image.shape)}")
        pixels = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]
        none = Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        boxes = self._propose(pixels)
        if not len(boxes):
            return none
        # stage 2: R-Net re-scores and refines
        scores, offsets = self.rnet(self._crops(pixels, boxes, 24))
        passed = scores > self.thresholds[1]
        boxes, scores, offsets = boxes[passed], scores[passed], offsets[passed]
        keep = nms(boxes, scores, 0.7)
        boxes = _square(_refine(boxes[keep], offsets[keep]))
        if not len(boxes):
            return none
        # stage 3: O-Net re-scores, refines and places the landmarks (relative to its input box)
        scores, offsets, points = self.onet(self._crops(pixels, boxes, 48))
        passed = scores > self.thresholds[2]
        boxes, scores, offsets, points = boxes[passed], scores[passed], offsets[passed], points[passed]
        size = boxes[:, 2:] - boxes[:, :2]
        landmarks = torch.stack([points[:, :5], points[:, 5:]], -1) * size[:, None] + boxes[:, None, :2]
        boxes = _refine(boxes, offsets)
        keep = nms_min(boxes, scores, 0.7) if len(boxes) else torch.zeros(0, dtype=torch.long)
        return Faces(boxes[keep].numpy(), scores[keep].numpy(), landmarks[keep].numpy())


# ============================================================================================ alignment
def alignment_template(size: int = 112, margin: float = 0.0) -> np.ndarray:
    """The ArcFace five-point template for a `size` x `size` crop; `margin` > 0 shrinks it about the centre so
    that the crop shows that much more context (0.3: a face 1 / 1.3 as wide)."""
    if size < 16 or margin < 0:
        raise ConfigError(f"face alignment: size must be at least 16 and margin at least 0, got {size}, {margin}")
    centre = 56.0
    return ((ARCFACE_TEMPLATE - centre) / (1 + margin) + centre) * (size / 112)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112, margin: float = 0.0) -> np.ndarray:
    """A `size` x `size` crop whose five landmarks land on the ArcFace template (similarity transform, least
    squares); black where the crop leaves the image."""
    import cv2
    from skimage.transform import SimilarityTransform

    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (5, 2):
        raise DataError(f"face alignment expects five (x, y) landmarks, got an array of shape {landmarks.shape}")
    transform = SimilarityTransform.from_estimate(landmarks, alignment_template(size, margin))
    if not transform:  # degenerate points (all equal): no similarity fits
        raise DataError(f"face alignment: no similarity transform fits the landmarks {landmarks.tolist()}")
    return cv2.warpAffine(np.ascontiguousarray(image), transform.params[:2], (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


class FaceAligner:
    """Raw frame -> the aligned crop of its largest face, or None when MTCNN finds no face.

    Args:
        weights: MTCNN weights folder (default: facenet-pytorch's installed data folder)
        size: side of the aligned crop in pixels
        margin: extra context around the ArcFace template (see alignment_template)
        min_face_size: smallest face side searched, in pixels
    """

    def __init__(self, weights: str | Path | None = None, size: int = 112, margin: float = 0.0,
                 min_face_size: int = 20):
        alignment_template(size, margin)  # checks the arguments before the weights are read
        self.detector = MTCNN(weights, min_face_size=min_face_size)
        self.size, self.margin = size, margin

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """The five landmarks of the largest face (ours: largest, as frames of one person's video usually
        show them biggest), or None."""
        faces = self.detector.detect(image)
        if not len(faces):
            return None
        area = np.prod(faces.boxes[:, 2:] - faces.boxes[:, :2], axis=1)
        return faces.landmarks[int(np.argmax(area))]

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        points = self.landmarks(image)
        return None if points is None else align_face(image, points, self.size, self.margin)


__all__ = ["PNet", "RNet", "ONet", "MTCNN", "Faces", "FaceAligner", "align_face", "alignment_template",
           "mtcnn_weights_folder", "nms_min", "ARCFACE_TEMPLATE", "MTCNN_FILES"]
