"""LitData shards (core.shards): decoded once, read back sample-for-sample as the folder is, split across processes
and loader workers without overlap, resumed to the same weights, and written or refused with clear errors; WebDataset
tar shards read the same way."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mimkit.core.cli import main
from mimkit.core.data import ImageFolderDataset, ResumableSampler, image_dataset, make_loader
from mimkit.core.errors import DataError
from mimkit.core.shards import ShardDataset, WebDatasetShards, write_shards, write_webdataset
from mimkit.core.train import TrainConfig, pretrain

TINY = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


@pytest.fixture(scope="module")
def classes(tmp_path_factory, make_pngs_module):
    """Two class folders of 8-bit and 16-bit grey PNGs, plus one corrupt file."""
    root = tmp_path_factory.mktemp("classes")
    make_pngs_module(root / "a", 6, seed=1)
    rs = np.random.RandomState(2)
    (root / "b").mkdir()
    for i in range(6):
        Image.fromarray(rs.randint(0, 65535, (40, 36)).astype(np.uint16)).save(root / "b" / f"deep{i}.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


@pytest.fixture(scope="module")
def shards(classes, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "s"
    meta = write_shards(classes, out)
    return out, meta


def test_shards_hold_every_readable_image_and_name_the_one_that_is_not(shards):
    out, meta = shards
    assert meta["count"] == 12 and meta["classes"] == ["a", "b"] and meta["in_chans"] == 1
    assert [Path(s["path"]).name for s in meta["skipped"]] == ["broken.png"]
    assert json.loads((out / "mimkit_shards.json").read_text())["count"] == 12


def test_a_shard_sample_equals_the_folder_sample_for_the_same_index_and_seed(classes, shards):
    out, _ = shards
    options = dict(img_size=32, patch_size=8, in_chans=1, transform="train", labelled=True)
    folder, stored = ImageFolderDataset(classes, **options), image_dataset(out, **options)
    assert isinstance(stored, ShardDataset) and len(stored) == len(folder) == 12
    assert stored.targets == folder.targets and stored.classes == folder.classes
    assert np.allclose(stored.mean, folder.mean) and np.allclose(stored.std, folder.std)
    assert [Path(p).name for p, _ in stored.skipped] == ["broken.png"]
    for key in [(0, 5), (7, 123), (11, 9)]:
        a, b = folder[key], stored[key]
        assert torch.equal(a["image"], b["image"]) and a["label"] == b["label"]


def test_two_processes_with_two_workers_each_see_disjoint_samples_that_cover_the_epoch(shards):
    out, _ = shards
    data = ShardDataset(out, img_size=32, patch_size=8, transform="center_crop", labelled=False)
    seen = []
    for rank in range(2):  # what each DDP rank's loader reads: its sampler share, through 2 worker processes
        sampler = ResumableSampler(len(data), seed=0, rank=rank, world_size=2, stop=len(data))
        loader = make_loader(data, 2, num_workers=2, sampler=sampler)
        seen.append([int(i) for batch in loader for i in batch["index"]])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(len(data)))


def test_a_resumed_run_on_shards_ends_with_the_uninterrupted_runs_weights(shards, tmp_path):
    from lightning.pytorch.callbacks import Callback

    class StopAt(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            trainer.should_stop = trainer.global_step >= 3

    out, _ = shards
    data = ShardDataset(out, img_size=32, patch_size=8, in_chans=1, labelled=False)
    cfg = TrainConfig(batch_size=4, max_steps=6, checkpoint_every=3, num_workers=0, log_every=1, progress=False,
                      accelerator="cpu", lr=1e-3, warmup_steps=1)
    pretrain("mae", data, tmp_path / "full", cfg, method_config=TINY)
    pretrain("mae", data, tmp_path / "cut", cfg, method_config=TINY, callbacks=[StopAt()])
    pretrain("mae", data, tmp_path / "cut", cfg, method_config=TINY, resume=True)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shard_command_then_pretrain_reads_the_shards(classes, tmp_path, capsys):
    assert main(["shard", str(classes), "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out
    assert "wrote 12 images" in printed and "skipped 1 unreadable file" in printed
    assert main(["pretrain", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "run"), "--img-size", "32",
                 "--patch-size", "8", "--in-chans", "1", "--set", "embed_dim=32", "depth=2", "num_heads=2",
                 "decoder_embed_dim=32", "decoder_depth=1", "decoder_num_heads=2", "--max-steps", "2",
                 "--batch-size", "4", "--no-progress"]) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_writing_refuses_to_clobber_and_reading_refuses_torn_shards(classes, shards, tmp_path):
    out, _ = shards
    with pytest.raises(DataError, match="not empty"):
        write_shards(classes, out)
    with pytest.raises(DataError, match="inside the source"):
        write_shards(classes, classes / "a" / "shards")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not mimkit shards"):
        write_shards(classes, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    torn = tmp_path / "torn"
    torn.mkdir()
    for f in out.iterdir():
        (torn / f.name).write_bytes(f.read_bytes())
    meta = json.loads((torn / "mimkit_shards.json").read_text())
    (torn / "mimkit_shards.json").write_text(json.dumps({**meta, "count": 99}))
    with pytest.raises(DataError, match="interrupted write"):
        ShardDataset(torn, img_size=32, patch_size=8)


@pytest.fixture(scope="module")
def tars(classes, tmp_path_factory):
    """The readable images of the class folders as WebDataset tar shards of 5 samples: KEY.png and KEY.cls."""
    folder = ImageFolderDataset(classes, img_size=32, patch_size=8, labelled=True)
    out = tmp_path_factory.mktemp("tars")
    for start in range(0, len(folder.files), 5):
        with tarfile.open(out / f"{start // 5:06d}.tar", "w") as tar:
            for i in range(start, min(start + 5, len(folder.files))):
                tar.add(folder.files[i], arcname=f"sample{i:06d}.png")
                label = str(folder.targets[i]).encode()
                info = tarfile.TarInfo(f"sample{i:06d}.cls")
                info.size = len(label)
                tar.addfile(info, io.BytesIO(label))
    return out


def test_a_webdataset_sample_equals_the_folder_sample_for_the_same_index_and_seed(classes, tars):
    options = dict(img_size=32, patch_size=8, in_chans=1, transform="train", labelled=True)
    folder, stored = ImageFolderDataset(classes, **options), image_dataset(tars, **options)
    assert isinstance(stored, WebDatasetShards) and len(stored) == len(folder) == 12
    assert stored.targets == folder.targets and len(stored.classes) == 2  # the .cls files' labels
    assert np.allclose(stored.mean, folder.mean) and np.allclose(stored.std, folder.std)
    for key in [(0, 5), (7, 123), (11, 9)]:  # 8-bit and 16-bit PNGs, decoded from the tars' bytes
        a, b = folder[key], stored[key]
        assert torch.equal(a["image"], b["image"]) and a["label"] == b["label"]


def test_webdataset_shards_split_across_two_processes_with_two_workers(tars):
    data = WebDatasetShards(tars, img_size=32, patch_size=8, transform="center_crop", labelled=False)
    seen = []
    for rank in range(2):
        sampler = ResumableSampler(len(data), seed=0, rank=rank, world_size=2, stop=len(data))
        seen.append([int(i) for batch in make_loader(data, 2, num_workers=2, sampler=sampler) for i in batch["index"]])
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(len(data)))


def test_the_webdataset_writer_writes_tars_the_reader_reads_as_the_folder(classes, tmp_path, capsys):
    out = tmp_path / "wds"
    assert main(["shard", str(classes), "--out", str(out), "--format", "webdataset", "--samples-per-shard", "5"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 12 images" in printed and "3 WebDataset tar(s)" in printed and "skipped 1 unreadable" in printed
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "000001.tar", "000002.tar", "mimkit_webdataset.json"]
    with tarfile.open(out / "000000.tar") as tar:  # the files' own bytes under WebDataset's KEY.extension names
        names = tar.getnames()
        assert names[:2] == ["000000000.png", "000000000.cls"] and len(names) == 10
        options = dict(img_size=32, patch_size=8, in_chans=1, transform="train", labelled=True)
        folder = ImageFolderDataset(classes, **options)
        assert tar.extractfile("000000000.png").read() == Path(folder.files[0]).read_bytes()
    stored = image_dataset(out, **options)
    assert isinstance(stored, WebDatasetShards) and len(stored) == len(folder) == 12
    assert stored.classes == folder.classes == ["a", "b"] and stored.targets == folder.targets
    assert [Path(p).name for p, _ in stored.skipped] == ["broken.png"]
    for key in [(0, 5), (7, 123), (11, 9)]:  # 8-bit and 16-bit PNGs
        a, b = folder[key], stored[key]
        assert torch.equal(a["image"], b["image"]) and a["label"] == b["label"]
    first = (out / "000001.tar").read_bytes()
    write_webdataset(classes, out, samples_per_shard=5, overwrite=True)
    assert (out / "000001.tar").read_bytes() == first  # the same folder gives the same bytes
    write_webdataset(classes, out, samples_per_shard=12, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "mimkit_webdataset.json"]  # no stale tars left
    with pytest.raises(DataError, match="not empty"):
        write_webdataset(classes, out)
    with pytest.raises(DataError, match="samples_per_shard must be at least 1, got 0"):
        write_webdataset(classes, tmp_path / "none", samples_per_shard=0)


def test_a_flat_folder_as_webdataset_trains_like_the_folder(make_pngs, tmp_path):
    flat = make_pngs(tmp_path / "flat", 8)
    write_webdataset(flat, tmp_path / "wds", samples_per_shard=3)
    stored = image_dataset(tmp_path / "wds", img_size=32, patch_size=8, in_chans=1, transform="center_crop")
    folder = ImageFolderDataset(flat, img_size=32, patch_size=8, in_chans=1, transform="center_crop")
    assert stored.classes == [] and len(stored) == 8 and "label" not in stored[0]
    assert all(torch.equal(stored[i]["image"], folder[i]["image"]) for i in range(8))
