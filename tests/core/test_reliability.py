"""Reliability: bad pixels and numbers caught up front, torn and full-disk writes, signals, locks, portable runs."""
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from mimkit.core.checkpoints import AtomicCheckpointIO, resume_checkpoint
from mimkit.core.cli import main
from mimkit.core.data import ImageFolderDataset, single_threaded_worker
from mimkit.core.errors import CheckpointError, ConfigError, DataError, TrainingError
from mimkit.core.runs import LOCK, load_run
from mimkit.core.train import RunInterrupted, TrainConfig, pretrain

TINY = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
SHORT = ["--img-size", "32", "--patch-size", "8", "--depth", "2", "--embed-dim", "32", "--num-heads", "2",
         "--set", "decoder_depth=1", "decoder_embed_dim=32", "decoder_num_heads=2", "--batch-size", "4",
         "--num-workers", "0", "--no-progress", "--accelerator", "cpu"]


def config(**overrides):
    base = dict(batch_size=4, max_steps=8, checkpoint_every=4, num_workers=0, log_every=1, progress=False,
                accelerator="cpu", lr=1e-3, warmup_steps=2)
    return TrainConfig(**{**base, **overrides})


def dataset(folder, **kwargs):
    return ImageFolderDataset(folder, img_size=32, patch_size=8, in_chans=1, **kwargs)


def npy_folder(folder, count=12, bad=()):
    """Float arrays (1, 32, 32); `bad` maps a file name to the value planted at one pixel (nan, inf)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        np.save(folder / f"a{i:02d}.npy", rng.random((1, 32, 32), dtype=np.float32))
    for name, value in dict(bad).items():
        array = rng.random((1, 32, 32), dtype=np.float32)
        array[0, 3, 4] = value
        np.save(folder / name, array) if name.endswith(".npy") else tifffile.imwrite(folder / name, array[0])
    return folder


# ------------------------------------------------------------------------------------------- bad pixels
def test_nan_and_infinite_pixels_are_skipped_and_counted_or_stop_with_strict_data(tmp_path):
    folder = npy_folder(tmp_path / "d", bad={"m_nan.npy": np.nan, "n_inf.tif": np.inf})
    data = dataset(folder)  # mean/std measured: the statistics never see the bad files
    assert np.isfinite(data.stats[0]).all() and np.isfinite(data.stats[1]).all()
    reasons = dict((p.name, r) for p, r in data.skipped)
    assert set(reasons) == {"m_nan.npy", "n_inf.tif"}
    assert "1 NaN" in reasons["m_nan.npy"] and "1 infinite" in reasons["n_inf.tif"]
    samples = [data[i] for i in range(len(data))]
    assert all(torch.isfinite(s["image"]).all() for s in samples)  # each bad file replaced by the next one
    with pytest.raises(DataError, match=r"m_nan\.npy: 1 NaN and 0 infinite"):
        dataset(folder, strict=True)


def test_skips_found_in_loader_workers_are_counted_in_metrics_json(tmp_path):
    # the NaN file passes the header check and sorts last: only a loader worker decodes it (mean/std given,
    # the picture batch takes the first 8 files)
    folder = npy_folder(tmp_path / "d", count=11, bad={"z_nan.npy": np.nan})
    data = dataset(folder, mean=[0.5], std=[0.3])
    assert data.skipped == []
    pretrain("mae", data, tmp_path / "run", config(max_steps=3, num_workers=1, checkpoint_every=3),
             method_config=TINY)
    assert data.skipped == []  # the main process never saw it ...
    counted = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]
    assert counted["skipped_files"] == 1  # ... the run's totals did
    assert counted["skipped"][0]["file"].endswith("z_nan.npy") and "NaN" in counted["skipped"][0]["reason"]


# ------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("flags, named", [
    (["--batch-size", "0"], "--batch-size (train.batch_size) must be at least 1, found 0"),
    (["--patch-size", "0"], "--patch-size (model.encoder.patch_size) must be at least 1"),
    (["--log-every", "0"], "--log-every (train.log_every) must be at least 1"),
    (["--num-workers", "-1"], "--num-workers (train.num_workers) must be at least 0"),
    (["--lr", "-0.1"], "--lr (train.lr) must be at least 0"),
    (["--mask-ratio", "1.0"], "--mask-ratio (model.mask_ratio) must be in [0, 1)"),
    (["--max-time", "0"], "--max-time (train.max_time) must be above 0"),
])
def test_every_numeric_flag_is_checked_with_one_line_naming_it(tmp_path, image_folder, capsys, flags, named):
    code = main(["pretrain", "--data", str(image_folder), "--out", str(tmp_path / "run"), *SHORT, *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and named in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_recipe_value_out_of_range_names_the_key_and_the_file(tmp_path, image_folder, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  warmup_steps: -5\n")
    code = main(["pretrain", "--config", str(recipe), "--data", str(image_folder), "--out", str(tmp_path / "r"), *SHORT])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"--warmup-steps (train.warmup_steps) must be at least 0, found -5 (in {recipe})" in err
    with pytest.raises(ConfigError, match=r"train.betas must be in \[0, 1\)"):
        TrainConfig(betas=(0.9, 1.0))  # the Python API checks where the value is declared
    with pytest.raises(ConfigError, match="train.batch_size must be at least 1, found 0"):
        TrainConfig(batch_size=0)


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, make_pngs_module):
    """A run of 8 steps with checkpoints at steps 4 and 8 (and last.ckpt), copied by each test that damages it."""
    root = tmp_path_factory.mktemp("finished")
    images = make_pngs_module(root / "images", 24)
    pretrain("mae", dataset(images), root / "run", config(), method_config=TINY)
    return images, root / "run"


def test_a_torn_last_checkpoint_falls_back_to_the_newest_intact_step_checkpoint(finished_run, tmp_path, capsys):
    images, original = finished_run
    run = shutil.copytree(original, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # killed while writing it
    path, sentence = resume_checkpoint(run)
    assert path.name == "step000008.ckpt" and "last.ckpt is damaged" in sentence
    summary = pretrain("mae", dataset(images), run, config(max_steps=12), method_config=TINY, resume=True)
    assert summary["steps"] == 12 and summary["steps_this_session"] == 4
    assert "resuming from checkpoints/step000008.ckpt (step 8): last.ckpt is damaged" in capsys.readouterr().err
    # killed between writing a step checkpoint and last.ckpt: last.ckpt is older than the newest step checkpoint
    shutil.copy(run / "checkpoints" / "step000004.ckpt", last)
    path, sentence = resume_checkpoint(run)
    assert path.name == "step000012.ckpt" and "newer than last.ckpt (step 4)" in sentence
    # nothing intact at all: one line that says so, not torch's message
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        ckpt.write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(CheckpointError, match="no intact checkpoint in .*last.ckpt is damaged"):
        resume_checkpoint(run)


def full_disk(monkeypatch, module, name):
    """`module.name` writes a few bytes and then fails as a full disk does."""
    def fail(obj, target, *args, **kwargs):
        with open(target, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(module, name, fail)


def test_disk_full_while_writing_a_checkpoint_names_it_and_keeps_the_previous_one(finished_run, tmp_path,
                                                                                   monkeypatch):
    images, original = finished_run
    run = shutil.copytree(original, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    # simulated: torch.save inside the checkpoint writer fails half-way (no tmpfs can be mounted without root)
    full_disk(monkeypatch, torch, "save")
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*step000010\.ckpt: .*No space left"):
        pretrain("mae", dataset(images), run, config(max_steps=12, checkpoint_every=2), method_config=TINY,
                 resume=True)
    assert last.read_bytes() == before  # the previous checkpoint is intact and still resumes
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary left over
    assert not (run / LOCK).exists()  # the failed run let go of its folder
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*x\.ckpt: .*No space left.*"):
        AtomicCheckpointIO().save_checkpoint({"a": torch.ones(2)}, tmp_path / "x.ckpt")


def test_disk_full_while_writing_a_picture_names_it_and_keeps_the_checkpoints(image_folder, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    full_disk(monkeypatch, Figure, "savefig")
    with pytest.raises(TrainingError, match=r"cannot write picture .*reconstruction\.png: No space left"):
        pretrain("mae", dataset(image_folder), tmp_path / "run", config(max_steps=2, checkpoint_every=2),
                 method_config=TINY)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not list((tmp_path / "run" / "pictures").glob(".*"))


# ------------------------------------------------------------------------------------------- signals
class SignalAt(Callback):
    """Sends this process `signum` after optimiser step `step`, as a scheduler or Ctrl+C would."""

    def __init__(self, step, signum):
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_save_a_checkpoint_and_resume_continues_exactly(finished_run, tmp_path, signum, code):
    images, full = finished_run
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted, match=f"stopped by {signal.Signals(signum).name} after step 3") as stop:
        pretrain("mae", dataset(images), tmp_path / "run", config(), method_config=TINY,
                 callbacks=[SignalAt(2, signum)])  # noted at the end of step 3
    assert stop.value.exit_code == code
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # restored
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3  # between the step-4 checkpoints: saved because of the signal
    assert not (tmp_path / "run" / LOCK).exists()
    resumed = pretrain("mae", dataset(images), tmp_path / "run", config(), method_config=TINY, resume=True)
    assert resumed["steps"] == 8 and resumed["steps_this_session"] == 5
    a, b = load_file(full / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same weights as the uninterrupted run


DDP_SIGNAL_SCRIPT = """
import json, os, signal, sys
from pathlib import Path
import torch
from lightning.pytorch.callbacks import Callback
from mimkit.core.data import ImageFolderDataset
from mimkit.core.train import RunInterrupted, TrainConfig, pretrain

images, out, send, resume = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "resume"
torch.set_num_threads(1)

class Terminate(Callback):
    # rank 0 sends SIGTERM after step 2: to itself only (a kill of the launcher) or to every rank (SLURM's scancel)
    sent = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 2 and trainer.global_rank == 0 and send != "none" and not self.sent:
            self.sent = True
            others = [proc.pid for proc in trainer.strategy.launcher.procs] if send == "all" else []
            for pid in [os.getpid(), *others]:
                os.kill(pid, signal.SIGTERM)

config = TrainConfig(batch_size=2, max_steps=8, checkpoint_every=4, num_workers=0, log_every=1, progress=False,
                     accelerator="cpu", devices=2, strategy="ddp", lr=1e-3, warmup_steps=2)
data = ImageFolderDataset(images, img_size=32, patch_size=8, in_chans=1)
rank = int(os.environ.get("LOCAL_RANK", "0"))
try:
    summary = pretrain("mae", data, out, config, method_config={tiny}, resume=resume, callbacks=[Terminate()])
    result, code = {{"steps": summary.get("steps"), "this_session": summary.get("steps_this_session")}}, 0
except RunInterrupted as stop:
    result, code = {{"stopped": str(stop)}}, stop.exit_code
(out / f"rank{{rank}}.json").write_text(json.dumps({{**result, "exit": code}}))
sys.exit(code)
"""


@pytest.mark.parametrize("send", ["launcher", "all"])
def test_sigterm_under_ddp_saves_one_checkpoint_all_ranks_agree_on_and_resume_continues(image_folder, tmp_path, send):
    script, run = tmp_path / "ddp_signal.py", tmp_path / "run"
    script.write_text(DDP_SIGNAL_SCRIPT.format(tiny=TINY))
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}

    def launch(mode):  # the pipes close when every rank has exited: a rank left hanging times out
        return subprocess.run([sys.executable, str(script), str(image_folder), str(run), send, mode], env=env,
                              capture_output=True, text=True, timeout=300)

    stopped = launch("new")
    assert stopped.returncode == 143, stopped.stderr[-3000:]  # the shell's code for SIGTERM, after a clean stop
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all("stopped by SIGTERM after step 3" in rank["stopped"] for rank in ranks)  # the same step on both
    assert [rank["exit"] for rank in ranks] == [143, 0]  # a non-zero exit of rank 1 would make the launcher kill all
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3  # between the step-4 checkpoints: written because of the signal
    assert not (run / LOCK).exists()
    if send == "launcher":  # one resume is enough to show the checkpoint continues under DDP
        resumed = launch("resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert json.loads((run / "rank0.json").read_text()) == {"steps": 8, "this_session": 5, "exit": 0}


SLURM_REQUEUE_SCRIPT = """
import json, os, signal, sys
import torch
from lightning.pytorch.callbacks import Callback
from mimkit.core.data import ImageFolderDataset
from mimkit.core.train import TrainConfig, pretrain

torch.set_num_threads(1)
rank = int(os.environ["SLURM_PROCID"])

class RequeueSignal(Callback):
    # SLURM's --signal=USR1@T reaches every task, here rank r after step 2 + r: a step apart
    sent = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 2 + rank and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)

config = TrainConfig(batch_size=2, max_steps=6, checkpoint_every=4, num_workers=0, log_every=1, progress=False,
                     accelerator="cpu", devices=2, strategy="ddp", lr=1e-3, warmup_steps=2)
data = ImageFolderDataset(sys.argv[1], img_size=32, patch_size=8, in_chans=1)
summary = pretrain("mae", data, sys.argv[2], config, method_config={tiny}, callbacks=[RequeueSignal()])
"""


def test_slurm_requeue_signal_under_ddp_requeues_once_with_a_checkpoint_and_no_deadlock(image_folder, tmp_path):
    # two tasks as srun starts them (SLURM_PROCID ...); `scontrol` is a script that notes its arguments
    script, run, log = tmp_path / "requeue.py", tmp_path / "run", tmp_path / "scontrol.log"
    script.write_text(SLURM_REQUEUE_SCRIPT.format(tiny=TINY))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    procs = []
    try:
        for rank in (0, 1):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
                   "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "pretrain",
                   "SLURM_JOB_ID": "4242", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
                   "SLURM_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            with open(tmp_path / f"rank{rank}.err", "w") as err:  # a file: a full pipe would block the rank
                procs.append(subprocess.Popen([sys.executable, str(script), str(image_folder), str(run)], env=env,
                                              stdout=subprocess.DEVNULL, stderr=err))
        codes = [proc.wait(timeout=300) for proc in procs]  # before: each rank's handler saved inside itself: hung
    finally:
        for proc in procs:
            proc.kill()
    assert codes == [0, 0], (tmp_path / "rank0.err").read_text()[-3000:]
    assert log.read_text() == "requeue 4242\n"  # once, from rank 0, though the ranks saw the signal a step apart
    hpc = sorted(p.name for p in run.glob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue checkpoint
    assert hpc == ["hpc_ckpt_1.ckpt"] and torch.load(run / hpc[0], weights_only=True)["global_step"] == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step000004.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6  # no last-v1


def test_a_requeued_slurm_job_continues_its_run_with_the_same_command_line(finished_run, tmp_path, monkeypatch):
    images, original = finished_run
    run = shutil.copytree(original, tmp_path / "run")
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "pretrain", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "SLURM_NTASKS_PER_NODE": "1"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="already holds a run"):  # a first start does not resume by itself
        pretrain("mae", dataset(images), run, config(max_steps=12), method_config=TINY)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # SLURM sets it when it starts a requeued job again
    summary = pretrain("mae", dataset(images), run, config(max_steps=12), method_config=TINY)
    assert summary["steps"] == 12 and summary["steps_this_session"] == 4


def test_loader_workers_leave_ctrl_c_to_the_main_process():
    before = signal.getsignal(signal.SIGINT)
    try:
        single_threaded_worker(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# ------------------------------------------------------------------------------------------- lock
def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(image_folder, tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname(), "since": "now"}))
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {alive.pid} on {socket.gethostname()}"):
            pretrain("mae", dataset(image_folder), run, config(max_steps=2), method_config=TINY)
    finally:
        alive.kill()
        alive.wait()
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "now"}))  # cannot be checked
    with pytest.raises(ConfigError, match="pid 1 on elsewhere .*delete the lock file"):
        pretrain("mae", dataset(image_folder), run, config(max_steps=2), method_config=TINY)
    # the killed owner's pid no longer runs: its lock is stale
    (run / LOCK).write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname(), "since": "then"}))
    with caplog.at_level(logging.WARNING, logger="mimkit"):
        summary = pretrain("mae", dataset(image_folder), run, config(max_steps=2, checkpoint_every=2),
                           method_config=TINY)
    assert summary["steps"] == 2 and "taking over the stale lock" in caplog.text
    assert not (run / LOCK).exists()


def test_finetuning_takes_the_same_lock(finished_run, labelled_folders, tmp_path):
    from mimkit.core.api import finetune

    out = tmp_path / "ft"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    with pytest.raises(ConfigError, match=f"in use by another run \\(pid {os.getpid()}"):
        finetune(train=str(labelled_folders[0]), out=str(out), run=str(finished_run[1]))


# ------------------------------------------------------------------------------------------- console
def test_lightning_lines_are_printed_once_and_without_advertisement(image_folder, tmp_path, caplog, capfd):
    caplog.set_level(logging.INFO, logger="lightning.pytorch")  # the application shows INFO lines
    pretrain("mae", dataset(image_folder), tmp_path / "run", config(max_steps=1, checkpoint_every=1),
             method_config=TINY)
    printed = capfd.readouterr().err + caplog.text
    assert printed.count("GPU available") == 1
    assert "Tip:" not in printed and "litlogger" not in printed


# ------------------------------------------------------------------------------------------- portable
def test_a_copied_run_folder_evaluates_exports_and_resumes_without_its_original_paths(tmp_path, make_pngs, capsys):
    here, there = tmp_path / "here", tmp_path / "there"
    images = make_pngs(here / "images", 16)
    teacher_run = here / "teacher"
    assert main(["pretrain", "--data", str(images), "--out", str(teacher_run), *SHORT, "--max-steps", "1"]) == 0
    student = ["--method", "maskalign", "--img-size", "32", "--patch-size", "8", "--depth", "2", "--embed-dim", "32",
               "--num-heads", "2", "--set", "teacher=mimkit", f"teacher_weights={teacher_run / 'model.safetensors'}",
               "aligned_layers=2", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--accelerator", "cpu",
               "--checkpoint-every", "2"]
    assert main(["pretrain", "--data", str(images), "--out", str(here / "run"), *student, "--max-steps", "2"]) == 0
    shutil.move(here, there)  # another machine: none of the original paths exist
    run = there / "run"
    method, _ = load_run(run)  # what evaluate / embed / reconstruct do first
    assert method.method_name == "maskalign"
    assert main(["export", "--run", str(run), "--out", str(there / "encoder.safetensors")]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--resume", "--out", str(run), "--max-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert f"data folder {here / 'images'} does not exist here; give it again with --data DIR" in err
    assert main(["pretrain", "--resume", "--out", str(run), "--data", str(there / "images"), "--max-steps", "3"]) == 0
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 3


def test_loader_workers_fork_safely_after_the_main_process_used_opencv(tmp_path):
    """A loader worker forked while OpenCV's pool ran in the main process could hang in cv2.setNumThreads (seen: 13-band
    GeoTIFF tiles resized in the main process, then a second loader of 2 workers). The main process keeps OpenCV to
    one thread once mimkit's data module is imported, and repeated loaders after large resizes all finish."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "fork_after_cv2.py"
    script.write_text(textwrap.dedent("""
        import cv2, numpy as np, torch
        from mimkit.core.data import make_loader
        assert cv2.getNumThreads() == 1, cv2.getNumThreads()

        class Resized(torch.utils.data.Dataset):
            def __len__(self):
                return 8
            def __getitem__(self, index):
                image = np.random.default_rng(index).random((224, 224, 13), dtype=np.float32)
                return {"image": torch.from_numpy(cv2.resize(image, (112, 112)))}

        big = np.random.default_rng(0).random((1024, 1024, 4), dtype=np.float32)
        for workers in (1, 2, 2, 1, 2):
            for _ in range(20):
                cv2.resize(big, (700, 700))  # work the main process's OpenCV between loaders
            assert sum(b["image"].shape[0] for b in make_loader(Resized(), 4, num_workers=workers)) == 8
        print("ok")
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
