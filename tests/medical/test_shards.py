"""Medical shards (medical.shards): volumes prepared once by the CT pipeline read back as the folder's samples,
split across processes and loader workers without overlap, tied to their preprocessing, and read by pretrain."""
import json

import pytest
import torch
import yaml

from mimkit.core.data import ResumableSampler, make_loader
from mimkit.core.errors import ConfigError
from mimkit.medical.cli import main
from mimkit.medical.data import MedicalData, build_dataset
from mimkit.medical.shards import MedicalShardDataset, write_medical_shards
from mimkit.medical.synthetic import write_synthetic_organs

TINY = ["--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--max-steps", "2", "--batch-size", "2",
        "--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def organs(tmp_path_factory):
    """A folder of six CT-like NIfTI volumes (Hounsfield values, 1.5 mm) and one broken file."""
    root = write_synthetic_organs(tmp_path_factory.mktemp("organs") / "organs", cases=6, size=32, validation=1)
    (root / "imagesTr" / "broken.nii.gz").write_bytes(b"not a volume")
    return root / "imagesTr"  # the volumes without their label maps


@pytest.fixture(scope="module")
def shards(organs, tmp_path_factory):
    data = MedicalData(root=str(organs), modality="ct", layout="folder", roi=[16], spacing=[2.0])
    out = tmp_path_factory.mktemp("shards") / "ct"
    return out, write_medical_shards(data, out), data


def test_the_shards_hold_the_prepared_volumes_and_name_the_broken_file(shards):
    out, meta, _ = shards
    assert meta["count"] == 6 and meta["in_chans"] == 1 and len(meta["paths"]) == 6
    assert meta["preprocessing"]["spacing"] == [2.0, 2.0, 2.0]                  # resampled once, at writing
    assert meta["preprocessing"]["intensity_range"] == [-175.0, 250.0]          # CT's window by default
    assert [s["path"].rsplit("/", 1)[-1] for s in meta["skipped"]] == ["broken.nii.gz"]
    assert json.loads((out / "mimkit_medical_shards.json").read_text())["key"] == meta["key"]
    # the source path is stored as text: LitData would store a string naming a .nii.gz as the whole volume
    assert "nifti" not in json.loads((out / "index.json").read_text())["config"]["data_format"]


def test_a_shard_sample_equals_the_folder_sample_for_the_same_key(organs, shards):
    out, _, data = shards
    pre = data.preprocessing([16, 16, 16], 3)
    options = dict(patch_size=8)
    folder = build_dataset(organs, "folder", pre, labelled=False, cache="none", **options)
    stored = MedicalShardDataset(out, pre, **options)
    assert len(folder) == len(stored) == 6 and [p for p, _ in stored.skipped] == [p for p, _ in folder.skipped]
    for key in [(0, 3), (4, 77), (5, 2024)]:
        a, b = folder[key]["image"], stored[key]["image"]
        assert a.shape == (1, 16, 16, 16) and torch.equal(a, b)
    # the random crop is drawn per key, from the stored (resampled, windowed) volume
    assert not torch.equal(stored[(0, 3)]["image"], stored[(0, 4)]["image"])


def test_two_processes_with_two_workers_each_see_disjoint_volumes_that_cover_the_epoch(shards):
    out, _, data = shards
    stored = MedicalShardDataset(out, data.preprocessing([16, 16, 16], 3), patch_size=8)
    seen = []
    for rank in range(2):  # each DDP rank's share of the sampler, read through two loader worker processes
        sampler = ResumableSampler(len(stored), seed=0, rank=rank, world_size=2, stop=len(stored))
        seen.append([int(i) for batch in make_loader(stored, 1, num_workers=2, sampler=sampler)
                     for i in batch["index"]])
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(6))


def test_shards_refuse_a_run_asking_for_another_spacing(shards):
    out, _, data = shards
    other = MedicalData(root=str(out), modality="ct", roi=[16], spacing=[1.0]).preprocessing([16, 16, 16], 3)
    with pytest.raises(ConfigError, match=r"prepared with spacing=\[2.0, 2.0, 2.0\] but this run asks for spacing="):
        MedicalShardDataset(out, other, patch_size=8)


def test_shard_command_then_pretrain_reads_the_shards_with_their_settings(organs, tmp_path, capsys):
    shards, run = tmp_path / "s", tmp_path / "run"
    assert main(["shard", "--data", str(organs), "--modality", "ct", "--roi", "16", "--spacing", "2",
                 "--out", str(shards)]) == 0
    assert "wrote 6 prepared volumes" in capsys.readouterr().out
    # no --modality, --spacing or --roi: the shards' own
    assert main(["pretrain", "--data", str(shards), "--out", str(run), "--patch-size", "8", *TINY,
                 "--set", "decoder_embed_dim=32", "--set", "decoder_self_depth=1", "--set", "decoder_num_heads=2",
                 "--set", "decoder_layers=[1]"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "hiend_mae" and config["model"]["encoder"]["img_size"] == [16, 16, 16]
    assert config["data"]["spacing"] == [2.0, 2.0, 2.0] and config["data"]["modality"] == "ct"
    assert (run / "model.safetensors").is_file()
