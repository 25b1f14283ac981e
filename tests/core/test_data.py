"""core/data.py: readers, the image-folder dataset, seeded augmentation and resumable sampling."""
import logging
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from mimkit.core.data import (ImageFolderDataset, ResumableSampler, make_loader, read_image,
                              to_unit_range)
from mimkit.core.errors import DataError

RNG = np.random.default_rng(0)


def rgb(path: Path, size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def identity(tmp_path, **kwargs):
    """Dataset whose pixels come back unchanged: no resampling, mean 0, std 1."""
    return ImageFolderDataset(tmp_path, img_size=16, patch_size=8, transform="center_crop", mean=[0.0], std=[1.0],
                              **kwargs)


def test_16bit_png_and_tiff_scale_exactly(tmp_path):
    values = RNG.integers(0, 65536, (16, 16, 3), dtype=np.uint16)
    values[0, 0] = [0, 65535, 1]
    cv2.imwrite(str(tmp_path / "rgb16.png"), values[..., ::-1])  # OpenCV writes BGR
    tifffile.imwrite(tmp_path / "rgb16.tif", values)  # channel-last (YXS)
    tifffile.imwrite(tmp_path / "planar16.tif", np.moveaxis(values, -1, 0), photometric="minisblack")
    chw = np.moveaxis(values, -1, 0)
    for name in ("rgb16.png", "rgb16.tif", "planar16.tif"):
        read = read_image(tmp_path / name)
        assert read.dtype == np.uint16 and np.array_equal(read, chw), name
    dataset = identity(tmp_path)
    expected = torch.from_numpy(chw.astype(np.float64) / 65535)
    for i in range(len(dataset)):
        assert torch.allclose(dataset[i]["image"].double(), expected, atol=1e-7, rtol=0)
    assert dataset[0]["image"][1, 0, 0] == 1.0 and dataset[0]["image"][0, 0, 0] == 0.0


def test_16bit_grayscale_png(tmp_path):
    values = RNG.integers(0, 65536, (16, 16), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    read = read_image(tmp_path / "gray16.png")
    assert read.shape == (1, 16, 16) and np.array_equal(read[0], values)
    assert np.array_equal(to_unit_range(read)[0], values.astype(np.float32) / 65535)
    assert to_unit_range(np.array([255], np.uint8))[0] == 1.0
    floats = np.array([-0.5, 3.0])
    assert np.array_equal(to_unit_range(floats), floats)  # floats are kept as they are


@pytest.mark.parametrize("shape,channels", [((16, 16), 1), ((1, 16, 16), 1), ((5, 16, 16), 5)])
def test_npy_channels(tmp_path, shape, channels):
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", RNG.random(shape, dtype=np.float32))
    dataset = ImageFolderDataset(tmp_path, img_size=8, patch_size=4, transform="train")
    assert dataset.in_chans == channels and dataset.classes == [] and dataset.num_classes == 0
    sample = dataset[(1, 7)]
    assert sample["image"].shape == (channels, 8, 8) and sample["image"].dtype == torch.float32
    assert len(dataset.stats[0]) == channels and "label" not in sample


def test_class_folders_give_labels(tmp_path):
    for name, count in (("cat", 2), ("dog", 3)):
        for i in range(count):
            rgb(tmp_path / name / f"{i}.png")
    rgb(tmp_path / "dog" / "nested" / "deep.jpg")
    dataset = identity(tmp_path)
    assert dataset.classes == ["cat", "dog"] and dataset.num_classes == 2 and len(dataset) == 6
    labels = [dataset[i]["label"] for i in range(len(dataset))]
    assert labels == [dataset.classes.index(f.relative_to(tmp_path).parts[0]) for f in dataset.files]
    assert sorted(labels) == [0, 0, 1, 1, 1, 1]


def test_flat_folder_is_unlabelled_and_recursive(tmp_path):
    rgb(tmp_path / "top.png")
    rgb(tmp_path / "a" / "b" / "deep.jpeg")
    rgb(tmp_path / "a" / "mid.tiff")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = identity(tmp_path)
    assert len(dataset) == 3 and dataset.classes == []
    assert "label" not in dataset[0] and dataset[2]["index"] == 2


def test_corrupt_file_skipped_and_counted_or_strict_raises(tmp_path, caplog):
    for i in range(4):
        rgb(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "broken.npy").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="mimkit.core.data"):
        dataset = identity(tmp_path)
    assert len(dataset) == 4
    assert sorted(p.name for p, _ in dataset.skipped) == ["broken.npy", "broken.png"]
    assert any("skipped 2 of 6" in record.getMessage() for record in caplog.records)
    with pytest.raises(DataError, match="broken"):
        identity(tmp_path, strict=True)


def test_file_failing_at_read_time_is_replaced_deterministically(tmp_path):
    for i in range(3):
        rgb(tmp_path / f"{i}.png")
    dataset = identity(tmp_path)
    strict = identity(tmp_path, strict=True)
    expected = dataset[2]["image"]
    # Header stays valid, pixel data is cut: only a full decode can notice.
    data = (tmp_path / "1.png").read_bytes()
    (tmp_path / "1.png").write_bytes(data[: len(data) // 2])
    replaced = dataset[1]
    assert replaced["index"] == 2 and torch.equal(replaced["image"], expected)
    assert [p.name for p, _ in dataset.skipped] == ["1.png"]
    with pytest.raises(DataError, match="1.png"):
        strict[1]


def test_bad_paths_give_data_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        ImageFolderDataset(missing)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty.*\.png.*\.npy"):
        ImageFolderDataset(empty)


def test_wrong_channel_count_suggests_flag(tmp_path):
    for i in range(2):
        Image.fromarray(RNG.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(DataError, match=r"0\.png.*1 channel.*--in-chans 1"):
        ImageFolderDataset(tmp_path, img_size=16, patch_size=8, in_chans=3)


def test_too_small_images(tmp_path):
    rgb(tmp_path / "big.png", (16, 16))
    rgb(tmp_path / "tiny.png", (16, 4))
    with pytest.raises(DataError, match=r"tiny\.png.*16x4.*one patch \(8x8\)"):
        ImageFolderDataset(tmp_path, img_size=16, patch_size=8)
    (tmp_path / "tiny.png").unlink()
    rgb(tmp_path / "small.png", (12, 12))
    ImageFolderDataset(tmp_path, img_size=16, patch_size=8, transform="train")  # upsampling crop is fine
    with pytest.raises(DataError, match=r"small\.png.*12x12.*center crop size \(16x16\)"):
        ImageFolderDataset(tmp_path, img_size=16, patch_size=8, transform="center_crop")


def test_augmentation_is_a_function_of_the_key(tmp_path):
    for i in range(4):
        rgb(tmp_path / f"{i}.png", (32, 24))
    dataset = ImageFolderDataset(tmp_path, img_size=16, patch_size=8)
    first = dataset[(2, 123)]["image"]
    dataset[(0, 5)]  # other calls in between must not matter
    assert torch.equal(first, dataset[(2, 123)]["image"])
    assert torch.equal(dataset[2]["image"], dataset[2]["image"])
    others = [dataset[(2, seed)]["image"] for seed in (1, 2, 3)]
    assert all(not torch.equal(first, other) for other in others)
    # The same keys through 0 and 2 worker processes give the same batches.
    keys = list(islice(ResumableSampler(len(dataset), seed=1), 8))
    batches = [torch.cat([b["image"] for b in make_loader(dataset, 4, workers, sampler=keys)])
               for workers in (0, 2)]
    assert torch.equal(*batches)


def test_eval_transform_shape_and_determinism(tmp_path):
    rgb(tmp_path / "wide.png", (20, 40))
    dataset = ImageFolderDataset(tmp_path, img_size=(16, 8), patch_size=8, transform="eval")
    assert dataset[0]["image"].shape == (3, 16, 8)
    assert torch.equal(dataset[(0, 1)]["image"], dataset[(0, 2)]["image"])  # no randomness at evaluation


def test_computed_stats_match_the_data(tmp_path):
    images = [RNG.random((2, 8, 8), dtype=np.float32) * (i + 1) for i in range(5)]
    for i, image in enumerate(images):
        np.save(tmp_path / f"{i}.npy", image)
    mean, std = ImageFolderDataset(tmp_path, img_size=8, patch_size=4).stats
    stacked = np.stack(images).astype(np.float64)
    assert np.allclose(mean, stacked.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(std, stacked.std(axis=(0, 2, 3)), atol=1e-5)


def test_sampler_epochs_resume_and_ranks():
    n, seed = 7, 3
    full = list(islice(ResumableSampler(n, seed=seed), 40))
    for epoch in range(5):
        assert sorted(i for i, _ in full[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert full[:n] != full[n:2 * n]  # a new permutation each epoch
    assert len({s for _, s in full}) == 40  # every position its own augmentation seed
    assert list(islice(ResumableSampler(n, seed=seed, start=12), 28)) == full[12:]
    assert list(islice(ResumableSampler(n, seed=seed + 1), 40)) != full
    ranks = [list(ResumableSampler(n, seed=seed, start=5, rank=r, world_size=2, stop=40)) for r in range(2)]
    assert ranks[0] == full[6:40:2] and ranks[1] == full[5:40:2]
    assert len(ResumableSampler(n, seed=seed, start=5, rank=0, world_size=2, stop=40)) == len(ranks[0]) == 17
    with pytest.raises(TypeError):
        len(ResumableSampler(n))
