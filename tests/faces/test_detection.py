"""MTCNN detection and five-point alignment on real faces that packages ship (scikit-image's astronaut and LFW
crops, matplotlib's grace_hopper.jpg), and raw frames through the face data. The weights are the state dicts
facenet-pytorch ships (`pip install --no-deps facenet-pytorch`); without them these tests skip."""
from pathlib import Path

import numpy as np
import pytest
import torch

from mimkit.core.errors import CheckpointError, ConfigError
from mimkit.faces.detection import (ARCFACE_TEMPLATE, MTCNN, FaceAligner, align_face, alignment_template,
                                    mtcnn_weights_folder, nms_min)


def _weights_or_skip() -> Path:
    try:
        return mtcnn_weights_folder()
    except (ConfigError, CheckpointError):
        pytest.skip("MTCNN weights absent (pip install --no-deps facenet-pytorch)")


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    _weights_or_skip()
    return MTCNN()


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # skimage/data/astronaut.png, public domain


def grace_hopper() -> np.ndarray:
    import matplotlib.cbook
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as image:  # mpl-data/sample_data
        return np.asarray(image.convert("RGB"))


def lfw_on_canvas(index: int = 0, at=(30, 40), side: int = 75) -> np.ndarray:
    """An LFW crop (skimage lfw_subset, 25 x 25 grey) enlarged to `side` and placed at (x, y) on a grey canvas."""
    import cv2
    from skimage import data

    face = cv2.resize((data.lfw_subset()[index] * 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((150, 150), 128, np.uint8)
    canvas[at[1]:at[1] + side, at[0]:at[0] + side] = face
    return np.repeat(canvas[..., None], 3, axis=2)


def _contains(box, region) -> bool:
    """box and region as x0, y0, x1, y1: the region lies inside the box."""
    return box[0] <= region[0] and box[1] <= region[1] and box[2] >= region[2] and box[3] >= region[3]


def _landmarks_in_order(points) -> None:
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]   # image-left first
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])  # eyes, nose, mouth


# the face regions (x0, y0, x1, y1) read off the pictures by eye: eyes to chin, cheek to cheek
@pytest.mark.parametrize("image, face, outside", [
    (astronaut, (195, 90, 255, 160), (120, 0, 330, 250)),
    (grace_hopper, (210, 180, 320, 290), (120, 50, 420, 420)),
])
def test_one_real_face_found_boxed_and_landmarked(detector, image, face, outside):
    faces = detector.detect(image())
    assert len(faces) == 1 and faces.scores[0] > 0.95
    box = faces.boxes[0]
    assert _contains(box, face) and _contains(outside, box)   # holds the face, and not the whole picture
    _landmarks_in_order(faces.landmarks[0])
    assert all(_contains(box, (*p, *p)) for p in faces.landmarks[0])


def test_lfw_crop_found_where_it_was_put(detector):
    at, side = (30, 40), 75
    faces = detector.detect(lfw_on_canvas(0, at, side))
    assert len(faces) == 1
    box = faces.boxes[0]
    centre = (box[:2] + box[2:]) / 2
    assert np.allclose(centre, (at[0] + side / 2, at[1] + side / 2), atol=side * 0.2)
    assert side * 0.5 < box[2] - box[0] < side * 1.3
    _landmarks_in_order(faces.landmarks[0])


def test_no_face_in_a_non_face_image(detector):
    from skimage import data

    assert len(detector.detect(np.repeat((data.lfw_subset()[150] * 255).astype(np.uint8)[..., None], 3, 2))) == 0
    assert len(detector.detect(np.full((120, 160, 3), 90, np.uint8))) == 0


def test_alignment_puts_the_landmarks_on_the_template():
    # five bright dots at a rotated, scaled and shifted copy of the template land on the template itself
    angle, scale, shift = np.deg2rad(20), 2.5, np.array([60.0, 40.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = ARCFACE_TEMPLATE @ rotation.T * scale + shift
    image = np.zeros((400, 400, 3), np.uint8)
    for x, y in points.round().astype(int):
        image[y - 2:y + 3, x - 2:x + 3] = 255
    crop = align_face(image, points, size=112)
    for x, y in ARCFACE_TEMPLATE.round().astype(int):
        assert crop[y, x].min() > 150
    assert crop.mean() < 30   # and nothing else is bright
    # a margin shrinks the template about the crop's centre
    wider = alignment_template(112, margin=0.5)
    assert np.allclose(wider - 56, (ARCFACE_TEMPLATE - 56) / 1.5)


def test_aligned_real_face_detects_on_the_template(detector):
    image = astronaut()
    crop = align_face(image, detector.detect(image).landmarks[0], size=112)
    again = MTCNN(min_face_size=40).detect(crop)
    assert len(again) >= 1
    assert np.abs(again.landmarks[0] - ARCFACE_TEMPLATE).max() < 8   # pixels, of a 112-pixel crop


def test_min_nms_drops_a_box_inside_a_larger_one():
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0, 100, 100], [10, 10, 40, 40], [200, 200, 260, 260]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert len(nms(boxes, scores, 0.7)) == 3       # IoU of the nested pair is 0.09
    assert nms_min(boxes, scores, 0.7).tolist() == [0, 2]   # intersection over the smaller box is 1


def test_missing_or_broken_weights_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="missing rnet.pt, onet.pt"):
        (tmp_path / "pnet.pt").write_bytes(b"")
        mtcnn_weights_folder(tmp_path)
    for name in ("rnet.pt", "onet.pt"):
        (tmp_path / name).write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="pnet.pt cannot be read"):
        MTCNN(tmp_path)


def test_raw_frames_are_aligned_in_the_face_data(tmp_path, detector):
    from PIL import Image

    from mimkit.faces.data import FaceData

    for kind, picture in (("real", astronaut()), ("fake", grace_hopper())):
        (tmp_path / kind).mkdir()
        Image.fromarray(picture).save(tmp_path / kind / "frame.png")
    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(tmp_path / "fake" / "blank.png")
    data = FaceData(sources=[f"folder:{tmp_path}"], faces="mtcnn", face_margin=0.0, augment=False)
    dataset = data.dataset(img_size=112)
    first = dataset[0]   # the astronaut, aligned: equal to aligning it by hand
    expected = align_face(astronaut(), detector.detect(astronaut()).landmarks[0], 112)
    pixels = (first["image"].numpy().transpose(1, 2, 0) * dataset.std + dataset.mean) * 255
    assert np.abs(pixels - expected).mean() < 2
    assert dataset.missed == 0
    dataset[1]   # the blank frame: no face, used whole and counted
    assert dataset.missed == 1
    assert FaceData(sources=[f"folder:{tmp_path}"]).dataset(img_size=112).aligner is None   # crops pass through


def test_detect_command_aligns_raw_frames_as_the_run_was_trained(tmp_path, detector, caplog):
    import csv
    import logging

    from PIL import Image

    from mimkit.core import build_method
    from mimkit.core.checkpoints import save_method
    from mimkit.core.runs import write_config
    from mimkit.faces.cli import main

    model = dict(encoder=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), text_width=32,
                 text_depth=1, text_heads=2, context_length=24, text_embed_dim=32, decoder_embed_dim=32,
                 decoder_depth=1, decoder_num_heads=2, domains=["raw"])
    torch.manual_seed(0)
    save_method(build_method("gm_df", **model), tmp_path / "run" / "model.safetensors", model)
    write_config(tmp_path / "run", {"method": "gm_df", "model": model,
                                    "data": {"sources": ["folder:/x"], "faces": "mtcnn", "face_margin": 0.3}})
    (tmp_path / "frames").mkdir()
    Image.fromarray(astronaut()).save(tmp_path / "frames" / "astronaut.png")
    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(tmp_path / "frames" / "blank.png")
    for faces, warned in ((None, True), ("cropped", False)):   # the run's setting, then crops passed through
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mimkit"):
            argv = ["detect", "--run", str(tmp_path / "run"), "--input", str(tmp_path / "frames"),
                    "--out", str(tmp_path / "scores.csv")] + (["--faces", faces] if faces else [])
            assert main(argv) == 0
        rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
        assert sorted(r["video"] for r in rows) == ["astronaut.png", "blank.png"]
        assert ("no face found in" in caplog.text and "blank.png" in caplog.text) is warned
        assert "astronaut.png: the whole frame" not in caplog.text
