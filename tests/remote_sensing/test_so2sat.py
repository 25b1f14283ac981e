"""So2Sat LCZ42 read from a tiny copy written in the public h5 layout (torchgeo's file names and keys: sen1
(N, 32, 32, 8), sen2 (N, 32, 32, 10), one-hot label (N, 17)), and the registered So2Sat task run on it."""
import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from mimkit.benchmarks.runner import run_task  # noqa: E402
from mimkit.core.encoders import ViTEncoder  # noqa: E402
from mimkit.core.evaluate import linear_probe  # noqa: E402
from mimkit.remote_sensing.bench import so2sat_reader  # noqa: E402
from mimkit.remote_sensing.data import so2sat  # noqa: E402

PER_SPLIT = 12
CLASSES = (2, 9, 16)  # local climate zones used in the copy: none is class 0, so argmax is really read
C_BAND_NM = 299_792_458 / 5.405e9 * 1e9  # Sentinel-1 C band, 5.405 GHz, as a wavelength in nm
S2_NM = {"S2_B02": 492, "S2_B03": 560, "S2_B04": 665, "S2_B05": 704, "S2_B06": 740, "S2_B07": 783,
         "S2_B08": 833, "S2_B8A": 865, "S2_B11": 1614, "S2_B12": 2202}  # Sentinel-2A centre wavelengths (ESA)
NO_NORMALISATION = dict(mean=[0.0] * 18, std=[1.0] * 18)


def write_split(path, seed):
    rng = np.random.default_rng(seed)
    classes = np.array([CLASSES[i % len(CLASSES)] for i in range(PER_SPLIT)])
    offset = np.searchsorted(CLASSES, classes)[:, None, None, None].astype(np.float64)  # a learnable class signal
    sen1 = rng.normal(0.0, 0.1, (PER_SPLIT, 32, 32, 8)) + offset
    sen2 = rng.uniform(0.0, 0.3, (PER_SPLIT, 32, 32, 10)) + offset
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:  # the public files hold float64 arrays, channels last
        f["sen1"], f["sen2"], f["label"] = sen1, sen2, np.eye(17)[classes]
    return sen1, sen2, classes


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("so2sat")
    written = {split: write_split(root / f"{name}.h5", seed)
               for seed, (split, name) in enumerate([("train", "training"), ("validation", "validation"),
                                                     ("test", "testing")])}
    return root, written


def test_samples_hold_all_18_channels_their_wavelengths_and_the_class_index(copy):
    root, written = copy
    data = so2sat(root, "test", **NO_NORMALISATION)
    sen1, sen2, classes = written["test"]
    assert len(data) == PER_SPLIT and data.num_classes == 17
    for index in (0, 7):
        sample = data[index]
        expected = np.concatenate([sen1[index], sen2[index]], -1).transpose(2, 0, 1)
        assert sample["image"].shape == (18, 32, 32) and sample["image"].dtype == torch.float32
        assert np.allclose(sample["image"].numpy(), expected, atol=1e-5)
        assert isinstance(sample["label"], int) and sample["label"] == classes[index]
    wavelengths = data[0]["wavelengths"]
    assert torch.allclose(wavelengths[:8], torch.full((8,), C_BAND_NM), rtol=1e-3)
    assert torch.allclose(wavelengths[8:], torch.tensor(list(S2_NM.values()), dtype=torch.float32), atol=5)
    assert data.targets == classes.tolist()


def test_selected_bands_keep_the_order_asked_for_across_both_sensors(copy):
    root, written = copy
    bands = ("S2_B04", "S1_B2", "S2_B02", "S1_B7")  # torchgeo itself stacks Sentinel-1 first
    data = so2sat(root, "validation", bands=bands, mean=[0.0] * 4, std=[1.0] * 4)
    sen1, sen2, classes = written["validation"]
    sample = data[3]
    expected = np.stack([sen2[3][..., 2], sen1[3][..., 1], sen2[3][..., 0], sen1[3][..., 6]])
    assert sample["image"].shape == (4, 32, 32) and data.in_chans == 4
    assert np.allclose(sample["image"].numpy(), expected, atol=1e-5)
    assert sample["band_names"] == list(bands) and sample["label"] == classes[3]
    assert torch.allclose(sample["wavelengths"], torch.tensor([S2_NM["S2_B04"], C_BAND_NM, S2_NM["S2_B02"],
                                                               C_BAND_NM]), rtol=1e-2)


def test_version_3_split_is_read_from_its_folder(tmp_path):
    sen1, sen2, classes = write_split(tmp_path / "random" / "testing.h5", seed=5)
    data = so2sat(tmp_path, "test", version="3_random", bands=("S1_B1", "S2_B12"), mean=[0.0] * 2, std=[1.0] * 2)
    assert np.allclose(data[1]["image"].numpy(), np.stack([sen1[1][..., 0], sen2[1][..., 9]]), atol=1e-5)
    assert data[1]["label"] == classes[1]


def test_training_statistics_normalise_both_splits(copy):
    root, written = copy
    train, test = so2sat_reader(root, img_size=32)
    sen1, sen2, _ = written["train"]
    raw = np.concatenate([sen1, sen2], -1).reshape(-1, 18)
    assert np.allclose(train.mean, raw.mean(0), atol=1e-4) and np.allclose(test.mean, train.mean)
    channels = torch.stack([train[i]["image"] for i in range(len(train))]).transpose(0, 1).reshape(18, -1)
    assert torch.allclose(channels.mean(1), torch.zeros(18), atol=1e-3)


def test_registered_so2sat_task_runs_the_linear_protocol(copy):
    root, _ = copy
    torch.manual_seed(0)
    encoder = ViTEncoder(in_chans=18, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    options = dict(epochs=30, lr=0.05, batch_size=12)
    row, = run_task("so2sat-linear", encoder, root, **options)
    assert (row["data"], row["protocol"], row["metric"]) == ("So2Sat LCZ42", "linear", "accuracy")
    assert (row["num_train"], row["num_test"], row["details"]["num_samples"]) == (PER_SPLIT, PER_SPLIT, PER_SPLIT)
    accuracy = row["details"]["accuracy"]
    assert 0 <= accuracy <= 1 and row["value"] == pytest.approx(100 * accuracy, abs=0.01)
    assert accuracy * PER_SPLIT == pytest.approx(round(accuracy * PER_SPLIT))  # a count of the 12 test samples
    train, test = so2sat_reader(root, img_size=32)
    assert linear_probe(encoder, train, test, **options)["accuracy"] == pytest.approx(accuracy)
    assert accuracy > 1 / len(CLASSES)  # the class signal written into every channel is found
