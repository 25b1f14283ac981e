"""Past one process: two simulated nodes on loopback (Lightning's environment detection from torchrun-style
variables), FSDP2 on CPU (gloo) matching DDP step for step, and activation checkpointing that leaves the gradients
as they are."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from mimkit.core import build_method
from mimkit.core.encoders import set_activation_checkpointing

TINY = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=2)

# One training run of `pretrain`, as the CLI runs it; each rank writes its losses, its environment and its weights.
SCRIPT = """
import json, sys, torch
from lightning.pytorch.callbacks import Callback
from mimkit.core.data import ImageFolderDataset
from mimkit.core.train import TrainConfig, pretrain

folder, out, strategy, devices, nodes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
# optional: {{"tag": file prefix, "stop_at": step, "resume": bool, "train": TrainConfig fields}}
extra = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {{}}
tag = extra.get("tag", "")

class Record(Callback):
    losses = []
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(module.last_loss)
        trainer.should_stop = trainer.should_stop or trainer.global_step == extra.get("stop_at")
    def on_train_end(self, trainer, module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(module.method, options=StateDictOptions(full_state_dict=True))  # every rank
        rank = trainer.global_rank
        torch.save({{k: v.detach().clone() for k, v in state.items()}}, f"{{out}}/{{tag}}weights{{rank}}.pt")
        environment = trainer.strategy.cluster_environment
        with open(f"{{out}}/{{tag}}rank{{rank}}.json", "w") as f:
            json.dump({{"losses": self.losses, "world_size": trainer.world_size, "node_rank": trainer.node_rank,
                       "environment": type(environment).__name__, "strategy": type(trainer.strategy).__name__}}, f)

data = ImageFolderDataset(folder, img_size=32, patch_size=8, in_chans=1)
cfg = TrainConfig(batch_size=4, max_steps=3, checkpoint_every=2, num_workers=0, progress=False, lr=1e-3,
                  accelerator="cpu", devices=devices, num_nodes=nodes, strategy=strategy, warmup_steps=1,
                  **extra.get("train", {{}}))
pretrain("mae", data, out + "/run", cfg, method_config={tiny}, callbacks=[Record()], resume=extra.get("resume", False))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "run.py"
    path.write_text(textwrap.dedent(SCRIPT.format(tiny=TINY)))
    return path


def launch(script, folder, out, strategy, devices, nodes, env_per_process, **extra):
    """Start one process per environment, wait for all; returns each rank's record (`extra`: the script's options)."""
    out.mkdir(parents=True, exist_ok=True)
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    arguments = [str(folder), str(out), strategy, str(devices), str(nodes), json.dumps(extra)]
    procs = [subprocess.Popen([sys.executable, str(script), *arguments],
                              env={**base, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
             for extra in env_per_process]
    try:
        logs = [proc.communicate(timeout=400)[0] for proc in procs]
    finally:  # a timed-out launch leaves no process behind: each launch is its own process group, with the ranks
        for proc in procs:  # Lightning's launcher started from it
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
    world = len(env_per_process) * devices
    tag = extra.get("tag", "")
    return [json.loads((out / f"{tag}rank{r}.json").read_text()) for r in range(world)], \
        [torch.load(out / f"{tag}weights{r}.pt", weights_only=True) for r in range(world)]


def test_two_nodes_on_loopback_train_together_and_end_with_the_same_weights(image_folder, tmp_path, script):
    # what a launcher on each of two machines sets (torchrun / a cluster's job script), one device per node
    port = str(free_port())
    nodes = [{"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(rank), "LOCAL_RANK": "0",
              "WORLD_SIZE": "2"} for rank in (0, 1)]
    records, weights = launch(script, image_folder, tmp_path / "nodes", "ddp", 1, 2, nodes)
    assert [(r["world_size"], r["node_rank"], r["environment"]) for r in records] == [
        (2, 0, "LightningEnvironment"), (2, 1, "LightningEnvironment")]
    assert len(records[0]["losses"]) == len(records[1]["losses"]) == 3
    assert records[0]["losses"] != records[1]["losses"]            # each node trained on its own share of the data
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # gradients were all-reduced
    torch.manual_seed(0)
    start = build_method("mae", **TINY).state_dict()
    assert not torch.equal(weights[0]["encoder.blocks.0.attn.qkv.weight"], start["encoder.blocks.0.attn.qkv.weight"])
    assert (tmp_path / "nodes" / "run" / "model.safetensors").is_file()  # written once, by global rank 0


def test_fsdp2_on_cpu_matches_ddp_step_for_step(image_folder, tmp_path, script):
    ddp, ddp_weights = launch(script, image_folder, tmp_path / "ddp", "ddp", 2, 1, [{}])
    fsdp, fsdp_weights = launch(script, image_folder, tmp_path / "fsdp", "fsdp2", 2, 1, [{}])
    assert fsdp[0]["strategy"] == "ModelParallelStrategy" and ddp[0]["strategy"] == "DDPStrategy"
    for rank in (0, 1):  # the same samples, masks and updates: the same losses, sharded or replicated
        assert fsdp[rank]["losses"] == pytest.approx(ddp[rank]["losses"], rel=1e-5, abs=1e-6)
    assert max(float((fsdp_weights[0][k] - ddp_weights[0][k]).abs().max()) for k in ddp_weights[0]) < 1e-5
    run = tmp_path / "fsdp" / "run"
    from safetensors.torch import load_file

    saved = load_file(run / "model.safetensors")  # the gathered weights, as a plain run stores them
    assert all(torch.allclose(saved[k], fsdp_weights[0][k]) for k in fsdp_weights[0])
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_fsdp2_stopped_and_resumed_with_activation_checkpointing_ends_with_the_uninterrupted_weights(
        image_folder, tmp_path, script):
    full, full_weights = launch(script, image_folder, tmp_path / "full", "fsdp2", 2, 1, [{}])
    # the same run with each block recomputed in backward, stopped after step 2 (its checkpoint) and resumed
    checkpointed = {"activation_checkpointing": True}
    cut, _ = launch(script, image_folder, tmp_path / "cut", "fsdp2", 2, 1, [{}], tag="cut", stop_at=2,
                    train=checkpointed)
    assert torch.load(tmp_path / "cut" / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    resumed, resumed_weights = launch(script, image_folder, tmp_path / "cut", "fsdp2", 2, 1, [{}], tag="resumed",
                                      resume=True, train=checkpointed)
    for rank in (0, 1):  # steps 1-2 before the stop, step 3 after: each rank's losses of the uninterrupted run
        assert cut[rank]["losses"] + resumed[rank]["losses"] == pytest.approx(full[rank]["losses"], rel=1e-5,
                                                                               abs=1e-6)
    assert max(float((resumed_weights[0][k] - full_weights[0][k]).abs().max()) for k in full_weights[0]) < 1e-5
    assert torch.load(tmp_path / "cut" / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_fsdp2_trains_in_bf16_mixed_with_activation_checkpointing(image_folder, tmp_path, script):
    # bf16 matrix products are emulated on this CPU (no AVX512-BF16): a tiny model keeps it to seconds
    fp32, _ = launch(script, image_folder, tmp_path / "fp32", "fsdp2", 2, 1, [{}])
    bf16, weights = launch(script, image_folder, tmp_path / "bf16", "fsdp2", 2, 1, [{}],
                           train={"precision": "bf16-mixed", "activation_checkpointing": True})
    for rank in (0, 1):  # bf16 keeps 8 bits of mantissa: the same losses to within 2%, not exactly
        assert bf16[rank]["losses"] == pytest.approx(fp32[rank]["losses"], rel=2e-2)
        assert bf16[rank]["losses"] != fp32[rank]["losses"]  # the products did run in bf16
    assert all(value.dtype == torch.float32 for value in weights[0].values())  # autocast: the weights stay fp32


def test_activation_checkpointing_recomputes_the_blocks_and_keeps_the_gradients(astronaut_crops_of):
    batch = {"image": astronaut_crops_of(4, 32)[:, :1]}
    grads, calls, kept = [], [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        method = build_method("mae", **{**TINY, "drop_path_rate": 0.2})  # drop path: the recompute must replay it
        set_activation_checkpointing(method, checkpointing)
        count, saved = [0, 0], [0]
        for i, block in enumerate((method.encoder.blocks[0], method.decoder.blocks[0])):  # encoder and decoder
            block.attn.register_forward_hook(lambda *args, i=i: count.__setitem__(i, count[i] + 1))

        def keep(tensor):  # what autograd keeps for the backward pass, in elements
            saved[0] += tensor.numel()
            return tensor

        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            loss = method(batch).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None})
        calls.append(list(count))
        kept.append(saved[0])
    assert calls == [[1, 1], [2, 2]]  # checkpointed: each block ran again in the backward pass
    assert kept[1] < 0.5 * kept[0]    # and its activations were not kept from the forward pass
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_several_nodes_without_a_launcher_is_an_error_at_once_and_any_launcher_lets_it_through(monkeypatch):
    from mimkit.core.distributed import LAUNCHER_VARIABLES, check_launcher
    from mimkit.core.errors import ConfigError

    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    check_launcher(1)  # one machine needs none
    with pytest.raises(ConfigError, match="num_nodes is 2, but this process was not started by a cluster launcher"):
        check_launcher(2)
    for name in ("SLURM_NTASKS", "MASTER_ADDR", "WORLD_SIZE"):
        monkeypatch.setenv(name, "2")
        check_launcher(2)
        monkeypatch.delenv(name)
