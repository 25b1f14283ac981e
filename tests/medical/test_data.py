"""mimkit.medical's data, readers, transforms and layouts: readers (NIfTI, DICOM, 16-bit PNG), MONAI pipelines,
caching, per-sample seeds, layouts, and bad input (wrong dimensions, mixed DICOM series, NaN voxels, impossible
spacing) as clear errors or counted skips."""
import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.core.data import ResumableSampler, make_loader
from mimkit.core.errors import ConfigError, DataError
from mimkit.medical import transforms as medical_transforms
from mimkit.medical.data import MedicalDataset, UnifiedDataset, build_dataset, preprocessing_from
from mimkit.medical.layouts import CHESTXRAY14_CLASSES, CHEXPERT_CLASSES, chexpert_items
from mimkit.medical.readers import probe_input


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors run faster on one thread when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_nifti(path, array, spacing=(1.0, 1.0, 1.0), affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), affine), str(path))
    return path


def write_dicom_series(folder, slices=6, size=16, mixed=False, values=None):
    """A small CT series (int16, RescaleIntercept -1024); with `mixed` the second half has another SeriesInstanceUID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, other, study = generate_uid(), generate_uid(), generate_uid()
    for i in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, other if mixed and i >= slices // 2 else series
        ds.Modality, ds.PatientID = "CT", "anonymous"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * i], [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber, ds.RescaleSlope, ds.RescaleIntercept = i + 1, 1, -1024
        hu = np.full((size, size), 40 * i if values is None else values[i], np.int16)
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"slice_{i:03d}.dcm", enforce_file_format=True)
    return folder


def ct(data=None, size=16, **extra):
    return preprocessing_from({"img_size": size, **(data or {})}, "ct", 3)


def volumes(tmp_path, count=3, shape=(16, 16, 16), value=100.0):
    for i in range(count):
        write_nifti(tmp_path / "vols" / f"v{i}.nii.gz", np.full(shape, value + i, np.float32))
    return tmp_path / "vols"


# ------------------------------------------------------------------------------------------------ readers
def test_nifti_is_reoriented_to_ras_and_resampled_to_the_spacing(tmp_path):
    array = np.zeros((8, 16, 16), np.float32)   # 2 mm along the first axis
    array[0, 0, 0] = 200.0                      # one bright voxel at the first corner
    lps = np.diag([-2.0, -1.0, 1.0, 1.0])       # LPS: the first two axes run the other way in RAS
    path = write_nifti(tmp_path / "vol.nii.gz", array, affine=lps)
    assert probe_input(path).spacing == (2.0, 1.0, 1.0)
    pre = preprocessing_from({"img_size": 16, "spacing": 1.0, "intensity_range": [-100, 300], "foreground": False},
                             "ct", 3)
    dataset = MedicalDataset([{"image": str(path)}], pre, train=False, patch_size=8)
    prepared = dataset._prepared(0)["image"]
    assert prepared.shape == (1, 16, 16, 16)     # 8 voxels of 2 mm -> 16 of 1 mm
    # the bright corner moved to the far end of both flipped axes
    bright = torch.nonzero(prepared[0] == prepared.max())[0].tolist()
    assert bright[0] >= 14 and bright[1] == 15 and bright[2] == 0


def test_ct_window_clips_and_scales_hounsfield_units(tmp_path):
    hu = np.full((16, 16, 16), -1000.0, np.float32)
    hu[:, :, :4], hu[:, :, 4:8], hu[:, :, 8:12] = 1000.0, 37.5, -175.0
    path = write_nifti(tmp_path / "ct.nii.gz", hu)
    dataset = MedicalDataset([{"image": str(path)}], ct({"foreground": False}), patch_size=8)
    image = dataset._prepared(0)["image"][0]
    assert dataset.stats == ([0.0], [1.0])          # the window already fixes the scale
    assert torch.allclose(image[:, :, :4], torch.tensor(1.0))
    assert torch.allclose(image[:, :, 4:8], torch.tensor(0.5))   # halfway between -175 and 250
    assert torch.allclose(image[:, :, 8:], torch.tensor(0.0))    # clipped below the window


def test_foreground_crop_keeps_the_body_and_pads_to_the_roi(tmp_path):
    hu = np.full((40, 40, 40), -1000.0, np.float32)
    hu[10:30, 12:24, 5:35] = 50.0                    # the "body"
    path = write_nifti(tmp_path / "ct.nii.gz", hu)
    dataset = MedicalDataset([{"image": str(path)}], ct(size=16), patch_size=8)
    assert tuple(dataset._prepared(0)["image"].shape) == (1, 20, 16, 30)   # 12 wide -> padded to the ROI's 16


def test_dicom_series_folder_is_one_volume_with_hounsfield_units(tmp_path):
    folder = write_dicom_series(tmp_path / "patient" / "series1")
    probe = probe_input(folder)
    assert probe.shape == (16, 16, 6) and probe.spacing == (0.8, 0.8, 2.5)
    pre = preprocessing_from({"img_size": [16, 16, 6], "intensity_range": [-100, 300], "foreground": False}, "ct", 3)
    dataset = build_dataset(tmp_path / "patient", "folder", pre, train=False, patch_size=2)
    assert len(dataset) == 1 and dataset.skipped == []
    image = dataset._prepared(0)["image"][0]
    # slice i holds 40 * i HU: windowed to (40 i + 100) / 400, and slices stay in order along the last axis
    expected = (40 * torch.arange(6) + 100) / 400
    assert torch.allclose(image[0, 0], expected, atol=1e-5)


def test_dicom_folder_mixing_series_is_skipped_and_counted_or_refused(tmp_path, caplog):
    write_dicom_series(tmp_path / "data" / "good")
    write_dicom_series(tmp_path / "data" / "mixed", mixed=True)
    pre = preprocessing_from({"img_size": [16, 16, 6], "foreground": False}, "ct", 3)
    dataset = build_dataset(tmp_path / "data", "folder", pre, patch_size=2)
    assert len(dataset) == 1
    assert len(dataset.skipped) == 1 and "mixes 2 series" in dataset.skipped[0][1]
    assert "skipped 1 of 2" in caplog.text
    with pytest.raises(DataError, match="mixes 2 series"):
        build_dataset(tmp_path / "data", "folder", pre, patch_size=2, strict=True)


def test_single_dicom_radiograph_scaled_by_bit_depth_and_monochrome1_inverted(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.zeros((32, 32), np.uint16)
    pixels[:, 16:] = 4095                             # 12-bit maximum
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = "1.2.840.10008.5.1.4.1.1.1.1", ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", 32, 32, 1
    ds.PhotometricInterpretation = "MONOCHROME1"      # white = low values
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    (tmp_path / "xr").mkdir()
    ds.save_as(tmp_path / "xr" / "chest.dcm", enforce_file_format=True)
    pre = preprocessing_from({"img_size": 32}, "xray", 2)
    dataset = build_dataset(tmp_path / "xr", "folder", pre, train=False, patch_size=8, mean=[0.0], std=[1.0])
    image = dataset[0]["image"][0]
    assert torch.allclose(image[:, :14], torch.tensor(1.0), atol=1e-3)   # 0 of 4095, inverted
    assert torch.allclose(image[:, 18:], torch.tensor(0.0), atol=1e-3)


def test_16_bit_png_keeps_its_precision(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)     # 4096 distinct 16-bit values
    (tmp_path / "xr").mkdir()
    Image.fromarray(ramp).save(tmp_path / "xr" / "ramp.png")
    pre = preprocessing_from({"img_size": 64}, "xray", 2)
    dataset = build_dataset(tmp_path / "xr", "folder", pre, train=False, patch_size=8, mean=[0.0], std=[1.0])
    image = dataset[0]["image"]
    assert len(torch.unique(image)) == 4096                     # not squeezed into 256 levels
    assert abs(float(image.max()) - ramp.max() / 65535) < 1e-6


# ------------------------------------------------------------------------------------------------ bad input
def test_wrong_dimensions_nan_voxels_and_impossible_spacing_are_counted_skips(tmp_path):
    folder = volumes(tmp_path, count=2)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "flat.png")           # 2D among volumes
    nan = np.full((16, 16, 16), 100.0, np.float32)
    nan[3, 4, 5] = np.nan
    write_nifti(folder / "nan.nii.gz", nan)
    write_nifti(folder / "tiny.nii.gz", np.full((4, 16, 16), 100.0, np.float32))      # 4 voxels at 1 mm
    pre = ct({"spacing": 1.0}, size=16)
    dataset = build_dataset(folder, "folder", pre, patch_size=8, cache="memory")
    assert len(dataset) == 2
    reasons = dict((p.split("/")[-1], r) for p, r in dataset.skipped)
    assert set(reasons) == {"flat.png", "nan.nii.gz", "tiny.nii.gz"}
    assert "a 2D image" in reasons["flat.png"] and "expected 3D volumes" in reasons["flat.png"]
    assert "1 of 4096 values are NaN" in reasons["nan.nii.gz"]
    assert "mostly padding" in reasons["tiny.nii.gz"]
    assert all(torch.isfinite(dataset[i]["image"]).all() for i in range(len(dataset)))
    with pytest.raises(DataError, match="NaN"):
        MedicalDataset([{"image": str(folder / "nan.nii.gz")}], pre, patch_size=8, cache="memory", strict=True)


def test_nan_found_lazily_without_a_cache_is_replaced_and_counted(tmp_path):
    folder = volumes(tmp_path, count=2)
    nan = np.full((16, 16, 16), 100.0, np.float32)
    nan[0, 0, 0] = np.inf
    write_nifti(folder / "v0.nii.gz", nan)                     # the header is fine; the values are not
    dataset = build_dataset(folder, "folder", ct(size=16), patch_size=8, cache="none")
    sample = dataset[0]
    assert sample["index"] == 1 and torch.isfinite(sample["image"]).all()
    assert len(dataset.skipped) == 1 and "NaN or infinite" in dataset.skipped[0][1]


def test_a_spacing_that_explodes_the_volume_is_refused(tmp_path):
    path = write_nifti(tmp_path / "v.nii.gz", np.zeros((64, 64, 64), np.float32))
    with pytest.raises(DataError, match="coarser --spacing"):
        MedicalDataset([{"image": str(path)}], ct({"spacing": 0.05}), patch_size=8, strict=True)


def test_configuration_errors_name_the_setting():
    with pytest.raises(ConfigError, match="--hu-window"):
        ct({"intensity_range": [250, -175]})
    with pytest.raises(ConfigError, match="--spacing"):
        ct({"spacing": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="--modality"):
        preprocessing_from({}, "pet", 3)
    with pytest.raises(ConfigError, match="--spacing resamples volumes"):
        preprocessing_from({"spacing": 1.5}, "xray", 2)


# ------------------------------------------------------------------------------------------------ seeds, caching
def test_random_crops_follow_the_sample_seed(tmp_path):
    hu = np.random.default_rng(0).uniform(-100, 300, (32, 32, 32)).astype(np.float32)
    path = write_nifti(tmp_path / "v.nii.gz", hu)
    pre = ct({"flip_prob": 0.5, "rotate90_prob": 0.5, "foreground": False}, size=16)
    dataset = MedicalDataset([{"image": str(path)}], pre, patch_size=8, cache="memory", samples_per_volume=4)
    assert len(dataset) == 4
    first, again, other = dataset[(2, 1234)], dataset[(2, 1234)], dataset[(2, 98765)]
    assert torch.equal(first["image"], again["image"])
    assert not torch.equal(first["image"], other["image"])
    assert first["image"].shape == (1, 16, 16, 16)
    loader = make_loader(dataset, 2, sampler=ResumableSampler(len(dataset), seed=3, stop=8))
    batches = [b["image"] for b in loader]
    resumed = make_loader(dataset, 2, sampler=ResumableSampler(len(dataset), seed=3, start=4, stop=8))
    assert all(torch.equal(a, b) for a, b in zip(batches[2:], [b["image"] for b in resumed]))


def test_memory_cache_decodes_each_file_once(tmp_path, monkeypatch):
    folder = volumes(tmp_path, count=3)
    calls = []
    original = medical_transforms.read_input
    monkeypatch.setattr(medical_transforms, "read_input", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    dataset = build_dataset(folder, "folder", ct(size=16), patch_size=8, cache="memory")
    decoded = len(calls)
    assert decoded == 3
    for step in range(12):
        dataset[(step % 3, step)]
    assert len(calls) == decoded


def test_disk_cache_is_reused_by_a_new_dataset(tmp_path, monkeypatch):
    folder = volumes(tmp_path, count=2)
    options = dict(patch_size=8, cache="disk", cache_dir=tmp_path / "cache")
    first = build_dataset(folder, "folder", ct(size=16), **options)
    reference = [first[(i, 7)]["image"] for i in range(2)]
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 2
    calls = []
    original = medical_transforms.read_input
    monkeypatch.setattr(medical_transforms, "read_input", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    second = build_dataset(folder, "folder", ct(size=16), **options)
    assert all(torch.equal(second[(i, 7)]["image"], reference[i]) for i in range(2))
    assert calls == []                                       # read back from the cache, not decoded
    with pytest.raises(ConfigError, match="--cache-dir"):
        build_dataset(folder, "folder", ct(size=16), patch_size=8, cache="disk")


# ------------------------------------------------------------------------------------------------ channels, batches
def test_any_number_of_channels_2d_3d_and_unified_batches(tmp_path):
    write_nifti(tmp_path / "mr" / "brain.nii.gz", np.random.default_rng(0).random((16, 16, 16, 4)) + 0.5)
    mr = build_dataset(tmp_path / "mr", "folder", preprocessing_from({"img_size": 16}, "mr", 3), patch_size=8)
    assert mr.in_chans == 4 and mr[0]["image"].shape == (4, 16, 16, 16)
    image = mr._prepared(0)["image"]
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1) < 1e-2   # MR z-score per channel
    np.save(tmp_path / "mr" / "five.npy", np.random.default_rng(1).random((5, 16, 16, 16)).astype(np.float32))
    with pytest.raises(DataError, match="channel"):
        build_dataset(tmp_path / "mr", "folder", preprocessing_from({"img_size": 16}, "mr", 3), patch_size=8,
                      in_chans=4, strict=True)
    for i in range(4):
        Image.fromarray((np.random.default_rng(i).random((40, 48, 3)) * 255).astype(np.uint8)).save(
            tmp_path / f"fundus_{i}.png")
    images = MedicalDataset([{"image": str(tmp_path / f"fundus_{i}.png")} for i in range(4)],
                            preprocessing_from({"img_size": 32}, "fundus", 2), patch_size=8)
    assert images.in_chans == 3
    unified = UnifiedDataset(images, mr)
    batch = next(iter(make_loader(unified, 2, sampler=ResumableSampler(len(unified), stop=2))))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["volume"].shape == (2, 4, 16, 16, 16)


def test_grey_radiographs_feed_three_channel_models(tmp_path):
    (tmp_path / "xr").mkdir()
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).save(tmp_path / "xr" / "a.png")
    dataset = build_dataset(tmp_path / "xr", "folder", preprocessing_from({"img_size": 32}, "xray", 2), patch_size=8,
                            in_chans=3, train=False)
    image = dataset[0]["image"]
    assert image.shape == (3, 32, 32) and torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_slices_of_volumes_are_2d_inputs(tmp_path):
    hu = np.zeros((20, 20, 10), np.float32)
    hu[..., 5] = 200.0
    write_nifti(tmp_path / "v" / "a.nii.gz", hu)
    pre = preprocessing_from({"img_size": 16, "slices": True, "foreground": False}, "ct", 2)
    dataset = build_dataset(tmp_path / "v", "folder", pre, patch_size=8)
    assert dataset[(0, 1)]["image"].shape == (1, 16, 16)
    resampled = preprocessing_from({"img_size": 16, "slices": True, "spacing": [2.0, 2.0, 1.0]}, "ct", 2)
    prepared = build_dataset(tmp_path / "v", "folder", resampled, patch_size=8)._prepared(0)["image"]
    assert prepared.shape == (1, 10, 10, 10)                 # resampled before slicing
    middle = dataset.eval_view()[0]["image"]                 # the middle (index 5) axial slice is the bright one
    assert torch.allclose(middle, torch.tensor((200 + 175) / 425), atol=1e-5)   # the rest is 0 HU: 175 / 425


# ------------------------------------------------------------------------------------------------ layouts
def test_decathlon_layout_pairs_images_with_label_maps(tmp_path):
    root = tmp_path / "Task09"
    hu = np.full((24, 24, 24), -50.0, np.float32)
    label = np.zeros((24, 24, 24), np.uint8)
    hu[4:12, 4:12, 4:12], label[4:12, 4:12, 4:12] = 200.0, 1
    entries = []
    for i in range(3):
        write_nifti(root / "imagesTr" / f"c{i}.nii.gz", hu)
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", label)
        entries.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "spleen"},
                                                   "training": entries, "test": []}))
    pre = ct({"foreground": False, "crop": "rand_pos_neg"}, size=16)
    train = build_dataset(root, "msd", pre, split="train", patch_size=8)
    test = build_dataset(root, "msd", pre, split="test", train=False, whole_volume=True, patch_size=8)
    assert (len(train), len(test)) == (2, 1) and train.classes == ["background", "spleen"]   # last case held out
    for seed in range(4):
        sample = train[(0, seed)]
        assert sample["label"].shape == (1, 16, 16, 16) and sample["label"].dtype == torch.int64
        # the label map moved with the image: organ voxels are exactly the bright ones
        assert torch.equal(sample["label"][0] == 1, sample["image"][0] > 0.5)
    assert test[0]["image"].shape == (1, 24, 24, 24)
    unlabelled = build_dataset(root, "msd", pre, patch_size=8)
    assert len(unlabelled) == 3 and "label" not in unlabelled[0]


def test_chestxray14_csv_and_official_split(tmp_path):
    root = tmp_path / "nih"
    (root / "images_001" / "images").mkdir(parents=True)
    rows = [("a.png", "Cardiomegaly|Effusion"), ("b.png", "No Finding"), ("c.png", "Hernia"), ("gone.png", "Mass")]
    for name, _ in rows[:3]:
        Image.fromarray(np.zeros((32, 32), np.uint16)).save(root / "images_001" / "images" / name)
    with (root / "Data_Entry_2017.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image Index", "Finding Labels", "Patient ID"])
        writer.writerows([(name, labels, i) for i, (name, labels) in enumerate(rows)])
    (root / "train_val_list.txt").write_text("a.png\nb.png\ngone.png\n")
    (root / "test_list.txt").write_text("c.png\n")
    pre = preprocessing_from({"img_size": 32}, "xray", 2)
    train = build_dataset(root, "chestxray14", pre, split="train", patch_size=8)
    test = build_dataset(root, "chestxray14", pre, split="test", patch_size=8)
    labels = {item["image"].split("/")[-1]: item["label"] for item in train.items}
    expected = [float(c in ("Cardiomegaly", "Effusion")) for c in CHESTXRAY14_CLASSES]
    assert labels == {"a.png": expected, "b.png": [0.0] * 14}
    assert len(train.skipped) == 1 and "gone.png" in train.skipped[0][1]     # listed but absent: counted
    assert test[0]["label"].tolist() == [float(c == "Hernia") for c in CHESTXRAY14_CLASSES]
    assert test[0]["label"].dtype == torch.float32
    # Thorax MAE's lists: train_official for training, val_official held out (train_val_list holds both)
    (root / "train_official.txt").write_text("a.png\n")
    (root / "val_official.txt").write_text("b.png\n")
    official = build_dataset(root, "chestxray14", pre, split="train_official", patch_size=8)
    held_out = build_dataset(root, "chestxray14", pre, split="val_official", patch_size=8)
    assert [i["image"].split("/")[-1] for i in official.items] == ["a.png"]
    assert [i["image"].split("/")[-1] for i in held_out.items] == ["b.png"]
    with pytest.raises(DataError, match="test_official.txt"):
        build_dataset(root, "chestxray14", pre, split="test_official", patch_size=8)


def test_chexpert_csv_uncertainty_policies(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    image = root / "train" / "patient1" / "study1" / "view1_frontal.jpg"
    image.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    row = {"Path": "CheXpert-v1.0-small/train/patient1/study1/view1_frontal.jpg", "Frontal/Lateral": "Frontal"}
    row.update({name: "" for name in CHEXPERT_CLASSES})
    row.update({"Cardiomegaly": "1.0", "Edema": "-1.0", "Atelectasis": "0.0"})   # Pleural Effusion blank
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    picked = ["Cardiomegaly", "Edema", "Atelectasis", "Pleural Effusion"]
    ones, _ = chexpert_items(root, "train", "ones", picked)
    zeros, _ = chexpert_items(root, "train", "zeros", picked)
    assert ones[0]["label"] == [1.0, 1.0, 0.0, 0.0]        # U-Ones: uncertain Edema is positive
    assert zeros[0]["label"] == [1.0, 0.0, 0.0, 0.0]       # U-Zeros: negative; blank is negative in both
    with pytest.raises(ConfigError, match="U-Ones"):
        chexpert_items(root, "train", "ignore", picked)


def test_class_folders_for_oct_and_fundus(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for label in ("NORMAL", "CNV"):
            folder = tmp_path / "oct" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((32, 32), 50 if label == "NORMAL" else 200, np.uint8)).save(folder / f"{i}.png")
    pre = preprocessing_from({"img_size": 32}, "oct", 2)
    train = build_dataset(tmp_path / "oct", "classes", pre, split="train", patch_size=8)
    assert train.classes == ["CNV", "NORMAL"] and sorted(train.targets) == [0, 0, 0, 1, 1, 1]
    assert len(build_dataset(tmp_path / "oct", "classes", pre, split="test", patch_size=8)) == 4
    captioned = build_dataset(tmp_path / "oct", "classes", pre, split="train", patch_size=8,
                              caption="An OCT image shows [CLS]")
    assert captioned[0]["text"] == "An OCT image shows CNV"
    # UrFound's AugmentDescription: a category name is swapped for one of its expert descriptions, or kept
    described = build_dataset(tmp_path / "oct", "classes", pre, split="train", patch_size=8,
                              caption="An OCT image shows [CLS]",
                              descriptions={"CNV": ["choroidal neovascularization", "new vessels under the retina"]})
    texts = {described[(0, seed)]["text"] for seed in range(40)}
    assert texts == {"An OCT image shows CNV", "An OCT image shows choroidal neovascularization",
                     "An OCT image shows new vessels under the retina"}


def test_recipe_data_sections_become_preprocessing_and_unused_keys_are_named(caplog):
    import logging
    from importlib import resources

    import yaml

    def recipe(name):
        return yaml.safe_load(resources.files("mimkit.medical").joinpath("recipes", f"{name}.yaml").read_text())

    with caplog.at_level(logging.WARNING):
        pre = preprocessing_from({**recipe("hiend_mae")["data"], "img_size": 96}, "ct", 3)
    assert pre.intensity_range == (-175.0, 250.0) and pre.spacing == (1.5, 1.5, 1.5) and pre.img_size == (96,) * 3
    assert pre.crop == "rand_pos_neg" and (pre.crop_pos, pre.crop_neg) == (6.0, 2.0)
    assert (pre.flip_prob, pre.rotate90_prob, pre.scale_intensity, pre.shift_intensity) == (0.5, 0.3, (0.1, 0.1),
                                                                                             (0.1, 0.1))
    assert "not used" not in caplog.text
    mr = preprocessing_from({**recipe("mr_hiend_mae")["data"], "img_size": 96}, "mr", 3)
    assert mr.spacing == (1.0, 1.0, 1.0) and mr.intensity_range is None and mr.foreground
    xray = preprocessing_from(recipe("thorax_mae_pretrain")["data"], "xray", 2)
    assert xray.crop_scale == (0.5, 1.0) and xray.hflip
    with caplog.at_level(logging.WARNING):
        preprocessing_from({"crop_scale": [0.5, 1.0], "interpolation": "bicubic"}, "xray", 2)
    assert "interpolation" in caplog.text     # named, not silently dropped


def test_oct_volume_as_a_tiff_stack(tmp_path):
    import tifffile

    (tmp_path / "oct").mkdir()
    stack = np.zeros((8, 32, 32), np.uint8)
    stack[:, 10:14] = 255                                    # a bright retinal layer in every B-scan
    tifffile.imwrite(tmp_path / "oct" / "eye.tif", stack)
    pre = preprocessing_from({"img_size": [8, 16, 16]}, "oct", 3)
    dataset = build_dataset(tmp_path / "oct", "folder", pre, patch_size=8, train=False, mean=[0.0], std=[1.0])
    assert probe_input(tmp_path / "oct" / "eye.tif").shape == (8, 32, 32)
    volume = dataset._prepared(0)["image"]
    assert volume.shape == (1, 8, 32, 32) and float(volume.max()) == 1.0       # uint8 / 255
    assert dataset[0]["image"].shape == (1, 8, 16, 16)
    # a TIFF states no voxel size, so resampling it would invent one: refused, by name
    resample = preprocessing_from({"img_size": [8, 16, 16], "spacing": 0.5}, "oct", 3)
    with pytest.raises(DataError, match="states no voxel spacing"):
        build_dataset(tmp_path / "oct", "folder", resample, patch_size=8, strict=True)
