"""Face-forgery data: the datasets' layouts (tiny copies written here), frames sampled per video, per-video
scores and their metrics, the self-blended forgeries, and errors that name the file."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.core.errors import ConfigError, DataError
from mimkit.faces import synthetic
from mimkit.faces.data import (FaceData, FaceForgeryDataset, detection_metrics, equal_error_rate, parse_source,
                               read_videos, sample_frames)


def frames(folder, count=3, size=16, value=100):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((size, size, 3), value + i, np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def video(path, count=12, size=32):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (size, size))
    for i in range(count):
        writer.write(np.full((size, size, 3), 20 * i, np.uint8))
    writer.release()
    return path


def test_faceforensics_official_split_pairs_give_reals_and_both_fake_directions(tmp_path):
    root = tmp_path / "FF++"
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "train.json").write_text(json.dumps([["000", "001"]]))
    (root / "splits" / "test.json").write_text(json.dumps([["002", "003"]]))
    for stem in ("000", "001", "002", "003"):
        frames(root / "original_sequences/youtube/c23/frames" / stem)
    video(root / "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4")
    frames(root / "manipulated_sequences/Deepfakes/c23/frames/001_000")
    frames(root / "manipulated_sequences/FaceSwap/c23/frames/002_003")
    train = read_videos("ffpp", root, "train", manipulations=("Deepfakes",))
    assert sorted((v.name, v.label) for v in train) == [("Deepfakes/000_001", 1), ("Deepfakes/001_000", 1),
                                                        ("real/000", 0), ("real/001", 0)]
    test = read_videos("ffpp", root, "test")  # all five types: the ones on disk, the others left out
    assert sorted(v.name for v in test if v.label) == ["FaceSwap/002_003"]
    with pytest.raises(DataError, match=r"c40"):
        read_videos("ffpp", root, "train", compression="c40")
    with pytest.raises(DataError, match=r"splits/val.json"):
        read_videos("ffpp", root, "val")
    with pytest.raises(ConfigError, match="Deepfake"):
        read_videos("ffpp", root, "train", manipulations=("Deepfake",))


def test_celebdf_test_list_is_the_test_split_and_its_one_means_real(tmp_path):
    root = tmp_path / "Celeb-DF-v2"
    for name in ("Celeb-real/id0_0000.mp4", "YouTube-real/00001.mp4", "Celeb-synthesis/id0_id1_0000.mp4",
                 "Celeb-synthesis/id1_id0_0001.mp4"):
        video(root / name, count=4)
    (root / "List_of_testing_videos.txt").write_text("1 YouTube-real/00001.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n")
    test = {v.name: v.label for v in read_videos("celebdf", root, "test")}
    assert test == {"YouTube-real/00001.mp4": 0, "Celeb-synthesis/id0_id1_0000.mp4": 1}
    train = {v.name: v.label for v in read_videos("celebdf", root, "train")}
    assert train == {"Celeb-real/id0_0000.mp4": 0, "Celeb-synthesis/id1_id0_0001.mp4": 1}
    (root / "List_of_testing_videos.txt").write_text("real YouTube-real/00001.mp4\n")
    with pytest.raises(DataError, match="List_of_testing_videos.txt line 1"):
        read_videos("celebdf", root, "test")


def test_dfdc_metadata_wilddeepfake_dfd_and_real_fake_folders(tmp_path):
    part = tmp_path / "DFDC" / "dfdc_train_part_0"
    video(part / "aaa.mp4", 4)
    video(part / "bbb.mp4", 4)
    (part / "metadata.json").write_text(json.dumps({"aaa.mp4": {"label": "REAL", "split": "train"},
                                                    "bbb.mp4": {"label": "FAKE", "split": "train",
                                                                "original": "aaa.mp4"}}))
    assert {v.path.name: v.label for v in read_videos("dfdc", tmp_path / "DFDC", "train")} == {"aaa.mp4": 0,
                                                                                              "bbb.mp4": 1}
    wild = tmp_path / "WildDeepfake"
    frames(wild / "real_test" / "1" / "0")
    frames(wild / "fake_test" / "7" / "3")
    assert sorted((v.name, v.label) for v in read_videos("wilddeepfake", wild, "test")) == [
        ("fake_test/7", 1), ("real_test/1", 0)]
    dfd = tmp_path / "FF++"
    video(dfd / "original_sequences/actors/c23/videos/01__walking.mp4", 4)
    video(dfd / "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walking__X.mp4", 4)
    assert sorted(v.label for v in read_videos("dfd", dfd, "train")) == [0, 1]
    mine = tmp_path / "mine"
    frames(mine / "real" / "clip_a")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(frames(mine / "fake", 0) / "one.png")
    assert sorted((v.name, v.label) for v in read_videos("folder", mine, "test")) == [("fake/one.png", 1),
                                                                                       ("real/clip_a", 0)]
    with pytest.raises(DataError, match="expected real/ and fake/"):
        read_videos("folder", wild, "test")


def test_frames_per_video_are_a_fixed_seeded_number_spread_over_the_video():
    picks = sample_frames(300, 8, "Deepfakes/000_003")
    assert len(picks) == 8 and picks == sorted(picks) and len(set(picks)) == 8
    assert all(300 * i / 8 <= p < 300 * (i + 1) / 8 for i, p in enumerate(picks))  # one per eighth
    assert picks == sample_frames(300, 8, "Deepfakes/000_003")
    assert picks != sample_frames(300, 8, "Deepfakes/003_000")
    assert picks != sample_frames(300, 8, "Deepfakes/000_003", seed=1)
    assert sample_frames(5, 8, "short") == [0, 1, 2, 3, 4]


def test_dataset_reads_video_frames_and_frame_folders_with_domain_and_video_on_every_sample(tmp_path):
    clip = video(tmp_path / "fake" / "v.mp4", count=12)
    folder = frames(tmp_path / "real" / "f", count=5)
    dataset = FaceForgeryDataset([("A", read_videos("folder", tmp_path, "train")),
                                  ("B", [v for v in read_videos("folder", tmp_path, "train") if v.label == 0])],
                                 img_size=32, frames_per_video=3, train=True)
    assert dataset.domains == ["A", "B"] and len(dataset) == 9  # 3 frames of each of the 3 videos
    items = [dataset[(i, 7)] for i in range(len(dataset))]
    assert [it["domain"] for it in items] == [0] * 6 + [1] * 3
    assert all(it["image"].shape == (3, 32, 32) and it["image"].dtype == torch.float32 for it in items)
    assert sorted({(it["video"], it["label"]) for it in items}) == [(0, 0), (1, 1), (2, 0)]  # real/ first
    video_frames = [frame for number, frame in dataset.items if dataset.videos[number].path == clip]
    assert len(video_frames) == 3 and all(isinstance(f, int) for f in video_frames)
    assert torch.equal(dataset[(0, 7)]["image"], dataset[(0, 7)]["image"])  # augmentation fixed by the seed
    assert dataset.videos[0].path == folder


def test_per_video_aggregation_and_detection_metrics():
    # two real and two fake videos of three frames; one noisy fake frame spoils the frame AUC, not the video AUC
    scores = [0.1, 0.2, 0.3, 0.2, 0.1, 0.4, 0.9, 0.8, 0.05, 0.7, 0.8, 0.9]
    labels = [0] * 6 + [1] * 6
    videos = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    metrics = detection_metrics(scores, labels, videos)
    assert metrics["video_auc"] == 1.0 and metrics["frame_auc"] < 1.0
    assert metrics["num_videos"] == 4 and metrics["num_frames"] == 12
    assert metrics["video_accuracy"] == 1.0 and metrics["frame_accuracy"] == pytest.approx(11 / 12)
    assert metrics["video_eer"] == 0.0
    assert equal_error_rate([0, 0, 1, 1], [0.9, 0.8, 0.1, 0.2]) == pytest.approx(1.0)
    assert 0.2 < equal_error_rate([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) < 0.8


@pytest.mark.parametrize("kind", synthetic.FORGERY_KINDS)
def test_forgeries_change_only_the_masked_face_with_their_kinds_signature(kind):
    faces = synthetic.real_faces(64)
    assert len(faces) == 102 and faces[-1][0] == "grace_hopper" and faces[0][1].shape == (64, 64, 3)
    rng = np.random.default_rng(0)
    face = faces[-2][1]  # the astronaut, in colour
    forged, mask = synthetic.forge(face, kind, rng, donor=faces[-1][1])
    diff = np.abs(forged.astype(float) - face.astype(float)).mean(-1)
    assert diff[mask == 0].max() == 0                     # outside the mask: the real face
    assert diff[mask == 1].mean() > 3                     # inside: a change a detector can see

    def high_frequency(image):
        grey = image.astype(float).mean(-1)
        lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
        return np.abs(lap)[mask[1:-1, 1:-1] == 1].mean()

    if kind == "blur":
        assert high_frequency(forged) < 0.8 * high_frequency(face)
    if kind == "noise":
        assert high_frequency(forged) > 1.5 * high_frequency(face)
    if kind == "colour":
        shift = np.abs(forged[mask == 1].mean(0) - face[mask == 1].mean(0))
        assert shift.max() > 3


def test_forgery_strength_scales_the_departure_from_the_real_face():
    faces = synthetic.real_faces(64)
    face, donor = faces[-2][1], faces[-1][1]
    for kind in synthetic.FORGERY_KINDS:
        forged = {}
        for strength in (1.0, 2.0):
            rng = np.random.default_rng(3)  # the same draws: only the strength differs
            forged[strength], mask = synthetic.forge(face, kind, rng, donor=donor, strength=strength)
        inside = mask == 1
        if kind == "swap":  # the change is mostly the donor's face; the colour shift on top of it doubles
            shift = forged[2.0][inside].astype(float).mean(0) - forged[1.0][inside].astype(float).mean(0)
            assert np.abs(shift).min() > 3, shift
        else:
            change = {k: np.abs(v.astype(float) - face.astype(float))[inside].mean() for k, v in forged.items()}
            assert change[2.0] > 1.2 * change[1.0], (kind, change)


def test_errors_name_the_wrong_path_or_the_corrupt_file(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        read_videos("folder", tmp_path / "nowhere", "train")
    with pytest.raises(ConfigError, match="reader one of"):
        parse_source("faces:/x")
    assert parse_source("mine=folder:/data/a=b") == ("mine", "folder", "/data/a=b")
    assert parse_source("ffpp:/data/FF") == ("FaceForensics++", "ffpp", "/data/FF")
    bad_video = tmp_path / "fake" / "broken.mp4"
    bad_video.parent.mkdir(parents=True)
    bad_video.write_bytes(b"not a video" * 20)
    with pytest.raises(DataError, match="broken.mp4 cannot be opened"):
        FaceForgeryDataset([("x", read_videos("folder", tmp_path, "train"))])
    bad_video.unlink()
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "broken.png").write_bytes(b"\x89PNG garbage")
    dataset = FaceForgeryDataset([("x", read_videos("folder", tmp_path, "train"))], img_size=16)
    with pytest.raises(DataError, match="broken.png cannot be read"):
        dataset[0]
    with pytest.raises(ConfigError, match="--data.sources"):
        FaceData().dataset(32)
