"""Training past one device: FSDP2 (torch's `fully_shard`) through Lightning's ModelParallelStrategy.

`--strategy fsdp2` shards every transformer block (timm `Block`: the auto-wrap unit) and then the rest of the method
over all processes (data-parallel mesh of the world size, no tensor parallelism); parameters, gradients and
optimiser state are split across ranks and gathered block by block in forward and backward. It runs on GPUs (NCCL)
and on CPUs (gloo). Lightning's `"fsdp"` strategy (FSDP1) needs an accelerator; FSDP2 does not.
Checkpoints hold the full (gathered) state, so a run saved under FSDP2 loads and resumes like any other.

`--compile` (`compile_blocks`) compiles each transformer block's forward with torch.compile: the blocks hold
nearly all the compute, while masking (argsort of random noise, gathers) stays eager, so a compiled run draws the
same masks as an eager one; the compiled function is an attribute of the block instance, so parameter names and
saved weights are those of the plain model (no `_orig_mod.` prefix), and FSDP2's hooks around each block stay eager.
`train.channels_last` (default: on CUDA) hands the method its images in channels-last memory.
"""
from __future__ import annotations

import os

from torch import nn

from .errors import ConfigError

FSDP2 = "fsdp2"
# what a launcher of one process per device sets: SLURM, torchrun / Lightning's own (MASTER_ADDR + NODE_RANK), MPI, LSF
LAUNCHER_VARIABLES = ("SLURM_NTASKS", "MASTER_ADDR", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_SIZE",
                      "LSB_JOBID")


def check_launcher(num_nodes: int) -> None:
    """A run across `num_nodes` > 1 machines needs a launcher (srun, torchrun, ...) on every node: started bare, its
    rendezvous waits for nodes that never come (a paper's recipe says 8 nodes). Said at once, before any process
    group is made."""
    if num_nodes > 1 and not any(os.environ.get(name) for name in LAUNCHER_VARIABLES):
        raise ConfigError(
            f"train.num_nodes is {num_nodes}, but this process was not started by a cluster launcher (none of "
            f"{', '.join(LAUNCHER_VARIABLES)} is set), so it would wait for the other nodes forever. Start each node "
            "with srun or torchrun (README: Past one machine), or run here with --num-nodes 1 --devices N (keep a "
            "recipe's effective batch with --accumulate K)")


def strategy_for(name: str, world_size: int):
    """The Lightning strategy for a `--strategy` name: FSDP2 as a ModelParallelStrategy, any other name as given."""
    if name != FSDP2:
        return name
    from lightning.pytorch.strategies import ModelParallelStrategy

    # pure data parallelism over every process; full checkpoints (one file, as with DDP)
    return ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1,
                                 save_distributed_checkpoint=False)


def is_fsdp2(strategy) -> bool:
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy)


def shard_blocks(model: nn.Module, strategy) -> nn.Module:
    """Under FSDP2: `fully_shard` each transformer block, then the whole model, on the data-parallel mesh (once)."""
    from timm.models.vision_transformer import Block
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if not is_fsdp2(strategy) or isinstance(model, FSDPModule):
        return model
    mesh = strategy.device_mesh["data_parallel"]
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def gathered(model: nn.Module, rebuild) -> nn.Module | None:
    """A plain (unsharded) copy of an FSDP2 `model` on rank 0, from `rebuild()` and the gathered weights; None on the
    other ranks. Every rank must call it (the gathering is collective)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    plain = rebuild()
    plain.load_state_dict(state)
    return plain


def release_process_group() -> None:
    """Destroy the default process group (after a finished run, on every rank): left to interpreter shutdown, gloo's
    worker threads can abort a process at exit ("terminate called without an active exception": once in seven
    2-process FSDP2 runs on this machine; pytorch/pytorch#190489). A later Trainer in this process starts a new one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def use_channels_last(setting: bool | None, device_type: str) -> bool:
    """`train.channels_last`: as set, or (None) on CUDA only, where cuDNN's convolutions run channels-last natively."""
    return device_type == "cuda" if setting is None else bool(setting)


def channels_last_batch(batch: dict) -> dict:
    """The batch with its 4D / 5D image tensors in channels-last memory (same values and shapes): patchify reads
    them without a transposing copy and the convolution patch embeddings (UnifiedPatchEmbed, ChannelPatchEmbed) get
    the layout GPU kernels prefer."""
    import torch

    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    return {key: value.contiguous(memory_format=formats[value.ndim])
            if torch.is_tensor(value) and value.is_floating_point() and value.ndim in formats else value
            for key, value in batch.items()} if isinstance(batch, dict) else batch


def check_compile_backend(backend: str) -> str:
    """`backend` if torch.compile knows it, else a ConfigError naming the known ones."""
    import torch._dynamo

    from .errors import ConfigError

    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(f"train.compile_backend: expected a torch.compile backend (inductor, aot_eager, eager, "
                          f"cudagraphs, ...), got {backend!r}")
    return backend


def compile_blocks(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile the forward of every timm `Block` in `model` (after activation checkpointing is set, so the
    recomputed forward is the one compiled); identical blocks share one compiled graph."""
    import torch
    from timm.models.vision_transformer import Block

    for module in model.modules():
        if isinstance(module, Block) and not hasattr(module.forward, "_torchdynamo_orig_callable"):  # not twice
            module.forward = torch.compile(module.forward, backend=backend)  # instance attribute: no new names
    return model


__all__ = ["FSDP2", "strategy_for", "is_fsdp2", "shard_blocks", "gathered", "compile_blocks", "check_compile_backend",
           "use_channels_last", "channels_last_batch", "release_process_group"]
