"""Real faces that packages ship, and self-blended forgeries made from them, for tests and the demo.

Real pixels: scikit-image's `lfw_subset` (its first 100 entries are real LFW face crops, 25 x 25 grey), its
`astronaut` portrait and matplotlib's `grace_hopper.jpg` (face boxes below, cut by hand). No generator is
involved: a forgery is the face's inner region replaced, under a soft ellipse mask, by a transformed copy of
itself or of another face (Shiohara & Yamasaki's self-blended images, CVPR 2022, are the model), so the blending
boundary and a colour or frequency mismatch are real signals a detector can find. Each forgery kind is one
"domain" of the multi-domain protocols.

The folder `write_dataset` writes is the generic real/ + fake/ layout `mimkit.faces.data` reads:
    ROOT/<kind>/{train,test}/{real,fake}/<video>/frame_<k>.png
one "video" per source face: a few frames that differ by a small shift and scale, as consecutive video frames do;
a fake video has the same motion as its real one.

`write_identity_faces` writes the same real faces aligned for face recognition (ArcFace template, 112 x 112), one
file per identity, for Vec2Face's generation tasks: ROOT/identities/<name>.png plus identities.json.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

# Forgery kinds, one per domain: what is put inside the face mask
FORGERY_KINDS = ("colour", "swap", "blur", "noise")
# how far a forgery departs from the real face (`forge`). At 1 (the default) hand-made chroma and frequency features
# separate every kind (held-out AUC 0.80-0.97) but a tiny CNN stays at chance after 200 steps of 32 frames (0.52);
# at 2 (the amplitudes before they were halved: colour offsets up to 12, swap shifts and patterns up to 16-20 grey
# levels) the same CNN reaches 0.69 (issue 9's closing note has the commands; measured while a fake video's frames
# still moved independently of its real one's)
FORGERY_STRENGTH = 1.0
# face boxes (top, bottom, left, right) cut by hand from the two portraits
PORTRAIT_BOXES = {"astronaut": (45, 185, 170, 310), "grace_hopper": (120, 310, 185, 375)}


def real_faces(size: int = 64) -> list[tuple[str, np.ndarray]]:
    """(name, H x W x 3 uint8) real face crops resized to `size`: 100 LFW crops and the two portraits."""
    from skimage import data

    faces = []
    lfw = data.lfw_subset()[:100]  # the first 100 are faces, the last 100 are not
    for i, face in enumerate(lfw):
        grey = (np.clip(face, 0, 1) * 255).astype(np.uint8)
        faces.append((f"lfw_{i:03d}", _resize(np.stack([grey] * 3, -1), size)))
    for name, image in (("astronaut", data.astronaut()), ("grace_hopper", _grace_hopper())):
        top, bottom, left, right = PORTRAIT_BOXES[name]
        faces.append((name, _resize(image[top:bottom, left:right, :3], size)))
    return faces


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook as cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        return np.asarray(image.convert("RGB"))


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def face_mask(size: int, rng: np.random.Generator, softness: float = 0.08) -> np.ndarray:
    """A soft ellipse over the inner face (H x W float in [0, 1]), its centre and axes jittered a little."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    cy, cx = 0.55 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.04, 0.04)
    ay, ax = rng.uniform(0.28, 0.36), rng.uniform(0.22, 0.3)
    radius = np.sqrt(((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2)
    return np.clip((1 + softness - radius) / (2 * softness), 0, 1)  # 1 inside, 0 outside, a ramp between


def _blur(image: np.ndarray, factor: float) -> np.ndarray:
    """Down- and up-sampling: the resolution mismatch of a face generated at a lower resolution."""
    size = image.shape[0]
    small = max(4, round(size / factor))
    return np.asarray(Image.fromarray(image).resize((small, small), Image.BILINEAR).resize((size, size),
                                                                                          Image.BILINEAR))


def forge(face: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray | None = None,
          mask: np.ndarray | None = None, strength: float = FORGERY_STRENGTH) -> tuple[np.ndarray, np.ndarray]:
    """(forged face, mask): the face with its inner region replaced by a transformed source, blended softly.

    colour: the face itself with shifted colour balance and contrast (self-blended, SBI's colour mismatch);
    swap: another face (`donor`) with its colour moved a little off the target's (a face swap);
    blur: the face itself down- and up-sampled (a low-resolution generated face);
    noise: the face itself with a periodic 2 x 2 pattern and noise (up-sampling artefacts of a generator).
    `strength` scales every departure from the real face (colour gains and offsets, contrast, the swap's colour
    offset, the pattern and noise amplitudes; the blur factor by 1 + (strength - 1) / 2); 1 is the subtlest set.
    """
    if kind not in FORGERY_KINDS:
        raise ValueError(f"forgery kind must be one of {', '.join(FORGERY_KINDS)}, got {kind!r}")
    size = face.shape[0]
    mask = face_mask(size, rng) if mask is None else mask
    base = face.astype(np.float32)
    k = strength
    if kind == "colour":
        gain = 1 + k * rng.uniform(0.06, 0.12) * rng.choice([-1, 1], size=3)
        source = (base - base.mean()) * (1 + k * rng.uniform(0.05, 0.15)) + base.mean()
        source = source * gain + k * rng.uniform(-6, 6, size=3)
    elif kind == "swap":
        if donor is None:
            raise ValueError("a swap forgery needs a donor face")
        other = donor.astype(np.float32)
        source = other + k * rng.uniform(4, 10) * rng.choice([-1, 1], size=3)
    elif kind == "blur":
        source = _blur(face, (1 + (k - 1) / 2) * rng.uniform(2.0, 3.0)).astype(np.float32)
    else:
        yy, xx = np.mgrid[0:size, 0:size]
        checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0)[..., None]
        source = base + k * rng.uniform(4, 8) * checker + rng.normal(0, 3 * k, base.shape)
    blended = mask[..., None] * source + (1 - mask[..., None]) * base
    return np.clip(blended, 0, 255).round().astype(np.uint8), mask


def jitter(face: np.ndarray, rng: np.random.Generator, shift: int = 2, zoom: float = 0.06) -> np.ndarray:
    """One "frame" of a face video: the crop moved by a pixel or two and scaled a little."""
    size = face.shape[0]
    scale = 1 + rng.uniform(-zoom, zoom)
    image = Image.fromarray(face).resize((round(size * scale),) * 2, Image.BICUBIC)
    big = np.asarray(image)
    pad = np.pad(big, ((shift + size, shift + size), (shift + size, shift + size), (0, 0)), mode="edge")
    dy, dx = rng.integers(-shift, shift + 1, 2)
    top = (pad.shape[0] - size) // 2 + dy
    left = (pad.shape[1] - size) // 2 + dx
    return pad[top:top + size, left:left + size]


def write_dataset(root: str | Path, kinds: Sequence[str] = FORGERY_KINDS, size: int = 64, frames: int = 3,
                  test_fraction: float = 0.3, seed: int = 0, count: int | None = None,
                  strength: float = FORGERY_STRENGTH) -> Path:
    """Write each forgery kind as a domain in the real/ + fake/ layout (see the module docstring).

    Every real face appears as one real video and one fake video per kind; faces are split into train and test by
    identity (the same face is never on both sides), the same split for every kind; `count` keeps the first faces
    only (small test sets); `strength`: see `forge`. Returns `root`.
    """
    root = Path(root)
    faces = real_faces(size)[:count]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(faces))
    test = set(order[:max(1, round(test_fraction * len(faces)))].tolist())
    for k, kind in enumerate(kinds):
        kind_rng = np.random.default_rng([seed, k])
        for i, (name, face) in enumerate(faces):
            split = "test" if i in test else "train"
            donor = faces[(i + 1 + int(kind_rng.integers(len(faces) - 1))) % len(faces)][1]
            forged, _ = forge(face, kind, kind_rng, donor=donor, strength=strength)
            # the fake video moves as its real one (FF++'s fakes are made from their source videos frame by frame)
            motion = kind_rng.integers(2 ** 32, size=frames)
            for label, image in (("real", face), ("fake", forged)):
                folder = root / kind / split / label / name
                folder.mkdir(parents=True, exist_ok=True)
                for f in range(frames):
                    frame = jitter(image, np.random.default_rng(motion[f]))
                    Image.fromarray(frame).save(folder / f"frame_{f}.png")
    import json

    # what was written, so that a reader (the demo) can tell whether a folder holds the forgeries it wants
    (root / "synthetic.json").write_text(json.dumps({"kinds": list(kinds), "size": size, "frames": frames,
                                                     "seed": seed, "count": count, "strength": strength}))
    return root


def identity_faces(size: int = 112, aligner=None, count: int | None = None
                   ) -> tuple[list[tuple[str, np.ndarray]], str, list[str]]:
    """(faces, alignment, missed): the shipped real faces aligned on their five MTCNN landmarks to the ArcFace
    template at `size` (alignment "mtcnn"; an LFW crop is enlarged to 75 pixels on a grey 150-pixel canvas first,
    as MTCNN needs some room around a face); faces MTCNN does not find are left out and named in `missed`.
    Without MTCNN's weights: the hand-cut crops resized (alignment "crop"). `count`: the first faces only."""
    from skimage import data

    from mimkit.core.errors import CheckpointError, ConfigError

    if aligner is None:
        from .detection import FaceAligner

        try:
            aligner = FaceAligner(size=size)
        except (ConfigError, CheckpointError):
            return real_faces(size)[:count], "crop", []
    sources = []
    for i, face in enumerate(data.lfw_subset()[:100]):
        grey = np.asarray(Image.fromarray((np.clip(face, 0, 1) * 255).astype(np.uint8)).resize((75, 75),
                                                                                               Image.BICUBIC))
        canvas = np.full((150, 150), 128, np.uint8)
        canvas[38:113, 38:113] = grey
        sources.append((f"lfw_{i:03d}", np.repeat(canvas[..., None], 3, axis=2)))
    sources += [("astronaut", data.astronaut()), ("grace_hopper", _grace_hopper())]
    faces, missed = [], []
    for name, image in sources[:count]:
        aligned = aligner(image)
        if aligned is None:
            missed.append(name)
        else:
            faces.append((name, aligned))
    return faces, "mtcnn", missed


def write_identity_faces(root: str | Path, size: int = 112, count: int | None = None) -> Path:
    """Write the shipped real faces aligned for recognition (identity_faces) as ROOT/<name>.png, one identity
    each, with ROOT/identities.json (size, alignment, the faces left out). Returns `root`."""
    import json
    import logging

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    faces, alignment, missed = identity_faces(size, count=count)
    for name, face in faces:
        Image.fromarray(face).save(root / f"{name}.png")
    if missed:
        logging.getLogger("mimkit").warning("MTCNN found no face in %d shipped images (%s): left out of %s",
                                            len(missed), ", ".join(missed), root)
    (root / "identities.json").write_text(json.dumps({"size": size, "alignment": alignment, "faces": len(faces),
                                                      "missed": missed}, indent=1))
    return root


__all__ = ["FORGERY_KINDS", "FORGERY_STRENGTH", "real_faces", "face_mask", "forge", "jitter", "write_dataset", "identity_faces",
           "write_identity_faces"]
