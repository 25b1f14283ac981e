"""Scaling on paper: memory per GPU and images/s on 1, 8 and 64 GPUs for MAE at ViT-B/L/H, 2D 224 and 3D 96^3.

Counted, not guessed: each model is built and one training step (forward + backward, batch 1) runs on this CPU; torch's
FlopCounterMode counts its FLOPs and a saved-tensors hook adds up the bytes autograd keeps for the backward pass
(the activations: each storage once, parameters left out), once plainly and once with activation checkpointing on
the ViT blocks (then plus the largest block's own activations, which its recompute holds in the backward pass). From these and the stated
assumptions below (each a flag):

- memory per GPU = weights + gradients + AdamW's two moments (4 + 4 + 8 bytes per parameter: fp32 master weights, as
  Lightning keeps them under bf16-mixed), divided by the GPU count under FSDP, plus activations x per-GPU batch
  (fp32 activations as counted; bf16-mixed keeps most of them in 2 bytes, so these are upper bounds);
- step time = the larger of compute (FLOPs x batch / (peak x utilisation)) and gradient communication (DDP: ring
  all-reduce of fp32 gradients, 2 (N-1)/N x 4 bytes per parameter; FSDP: all-gather in forward and backward plus a
  reduce-scatter, 3 (N-1)/N x 4 bytes per parameter) over the slowest link, assuming the communication overlaps the
  backward pass (DDP buckets, FSDP prefetching); images/s = GPUs x batch / step time.

    python -m mimkit.benchmarks.scaling [--gpu H100] [--utilisation 0.4] [--out benchmarks/results/scaling]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from .cost import GPU_PEAK_TFLOPS

# (name, method, model settings, image shape (C, spatial...), per-GPU batch of the paper's recipe)
MODELS = [
    # MAE (He et al. 2022), main_pretrain.py: 4096 images per step over 64 GPUs (64 per GPU), mask 0.75, decoder 512x8
    ("MAE ViT-B/16 2D 224", "mae", {"encoder": {"size": "base", "img_size": 224, "patch_size": 16}}, (3, 224, 224), 64),
    ("MAE ViT-L/16 2D 224", "mae", {"encoder": {"size": "large", "img_size": 224, "patch_size": 16}}, (3, 224, 224),
     64),
    ("MAE ViT-H/14 2D 224", "mae", {"encoder": {"size": "huge", "img_size": 224, "patch_size": 14}}, (3, 224, 224),
     64),
    # 3D at 96^3 (Hi-End-MAE's crops): MAE ViT-B/16 (216 tokens), and Hi-End-MAE's released ViT (1536 wide, p12),
    # batch 24 per GPU (its main.py)
    ("MAE ViT-B/16 3D 96^3", "mae", {"encoder": {"size": "base", "img_size": 96, "patch_size": 16, "in_chans": 1,
                                                 "spatial_dims": 3}}, (1, 96, 96, 96), 24),
    ("Hi-End-MAE ViT-1536/12 3D 96^3", "hiend_mae", "recipe", (1, 96, 96, 96), 24),
]
# Interconnect, per GPU, one direction, effective all-reduce bandwidth (GB/s), stated assumptions:
# NVLink 4 (H100 SXM): 450 GB/s per direction per GPU, of which NCCL reaches about 80% as bus bandwidth;
# across nodes: one 400 Gb/s NDR InfiniBand NIC per GPU = 50 GB/s, about 80% reached.
LINKS = {"intra_node_gbs": 360.0, "inter_node_gbs": 40.0, "gpus_per_node": 8}


def _model_settings(method: str, model):
    if model != "recipe":
        return model
    from mimkit.benchmarks.cost import find_recipe
    from mimkit.core.config import read_yaml_mapping

    return dict(read_yaml_mapping(find_recipe(method))["model"])


def measure(method: str, model: dict, shape) -> dict:
    """Parameters, FLOPs of one training step and the bytes autograd keeps, per image (batch 1, this CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mimkit.core.encoders import set_activation_checkpointing
    from mimkit.core.registry import build_method

    torch.manual_seed(0)
    built = build_method(method, **_model_settings(method, model))
    batch = {"image": torch.randn(1, *shape)}
    out = {"params": sum(p.numel() for p in built.parameters() if p.requires_grad),
           "encoder_params": sum(p.numel() for p in built.encoder.parameters())}
    from timm.models.vision_transformer import Block

    weights = {p.untyped_storage().data_ptr() for p in built.parameters()}
    blocks = [module for module in built.modules() if isinstance(module, Block)]
    current: list = [None]
    for block in blocks:  # which block's forward is running, to charge its activations to it
        block.register_forward_pre_hook(lambda module, args: current.__setitem__(0, module))
        block.register_forward_hook(lambda module, args, output: current.__setitem__(0, None))
    for checkpointing in (False, True):
        set_activation_checkpointing(built, checkpointing)
        kept, seen, per_block = [0], set(), {}

        def keep(tensor):
            # each storage once (views and repeated saves share it); weights are counted with the parameters
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                kept[0] += storage.nbytes()
                if current[0] is not None:
                    per_block[current[0]] = per_block.get(current[0], 0) + storage.nbytes()
            return tensor

        start = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            torch.manual_seed(1)
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
                loss = built(batch).loss
            loss.backward()
        built.zero_grad(set_to_none=True)
        if checkpointing:  # what stays between forward and backward, plus one block recomputed at a time
            out["activation_bytes_checkpointed"] = kept[0] + out["largest_block_bytes"]
        else:
            out["flops"], out["activation_bytes"] = float(counter.get_total_flops()), kept[0]
            out["largest_block_bytes"] = max(per_block.values())
            out["cpu_seconds"] = time.perf_counter() - start
    return out


def memory_rows(measured: dict, gpus: int) -> list[dict]:
    """Per model: what one GPU holds at the recipe's batch, DDP (replicated) and FSDP over `gpus` GPUs."""
    gib = 2 ** 30
    rows = []
    for name, (m, batch) in measured.items():
        static = 16 * m["params"]  # fp32 weights, fp32 gradients, AdamW exp_avg and exp_avg_sq
        rows.append({
            "model": name, "params_m": m["params"] / 1e6, "encoder_params_m": m["encoder_params"] / 1e6,
            "weights_grads_adam_gib": static / gib, "batch": batch,
            "activations_per_image_mib": m["activation_bytes"] / 2 ** 20,
            "activations_per_image_ckpt_mib": m["activation_bytes_checkpointed"] / 2 ** 20,
            "ddp_gib": (static + batch * m["activation_bytes"]) / gib,
            "ddp_ckpt_gib": (static + batch * m["activation_bytes_checkpointed"]) / gib,
            f"fsdp{gpus}_ckpt_gib": (static / gpus + batch * m["activation_bytes_checkpointed"]) / gib})
    return rows


def scaling_rows(measured: dict, gpu: str, utilisation: float, links: dict, counts=(1, 8, 64)) -> list[dict]:
    """Images/s on `counts` GPUs: compute from counted FLOPs at `utilisation` of `gpu`'s bf16 peak, communication of
    the gradients over the slowest link, overlapped."""
    peak = GPU_PEAK_TFLOPS[gpu] * 1e12 * utilisation
    rows = []
    for name, (m, batch) in measured.items():
        compute = batch * m["flops"] / peak
        for n in counts:
            bandwidth = (links["intra_node_gbs"] if n <= links["gpus_per_node"] else links["inter_node_gbs"]) * 1e9
            ring = 2 * (n - 1) / n * 4 * m["params"] if n > 1 else 0.0
            ddp_comm = ring / bandwidth
            fsdp_comm = 1.5 * ring / bandwidth
            step = max(compute, ddp_comm)
            rows.append({"model": name, "gpus": n, "batch_per_gpu": batch, "gflops_per_image": m["flops"] / 1e9,
                         "compute_ms": 1e3 * compute, "ddp_allreduce_gb": ring / 1e9, "ddp_comm_ms": 1e3 * ddp_comm,
                         "fsdp_comm_ms": 1e3 * fsdp_comm, "images_per_s": n * batch / step,
                         "fsdp_images_per_s": n * batch / max(compute, fsdp_comm),
                         "bound": "compute" if compute >= ddp_comm else "communication"})
    return rows


def main(argv=None) -> int:
    from .report import write_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", default="H100", choices=sorted(GPU_PEAK_TFLOPS))
    parser.add_argument("--utilisation", type=float, default=0.4, help="fraction of the bf16 dense peak reached")
    parser.add_argument("--intra-node-gbs", type=float, default=LINKS["intra_node_gbs"])
    parser.add_argument("--inter-node-gbs", type=float, default=LINKS["inter_node_gbs"])
    parser.add_argument("--fsdp-gpus", type=int, default=8)
    parser.add_argument("--models", nargs="*", help="names (substrings) of the models to count (default: all)")
    parser.add_argument("--out", default=None, help="write OUT_memory.md/.csv/.json and OUT_throughput.*")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    measured = {}
    for name, method, model, shape, batch in MODELS:
        if args.models and not any(word in name for word in args.models):
            continue
        print(f"counting {name} ...", file=sys.stderr, flush=True)
        measured[name] = (measure(method, model, shape), batch)
    links = {"intra_node_gbs": args.intra_node_gbs, "inter_node_gbs": args.inter_node_gbs, "gpus_per_node": 8}
    memory = memory_rows(measured, args.fsdp_gpus)
    print(write_table(memory, {
        "model": "model", "params_m": "params (M)", "encoder_params_m": "encoder (M)",
        "weights_grads_adam_gib": "weights+grads+AdamW (GiB)", "batch": "batch/GPU",
        "activations_per_image_mib": "activations/image (MiB)",
        "activations_per_image_ckpt_mib": "with act. ckpt (MiB)", "ddp_gib": "DDP per GPU (GiB)",
        "ddp_ckpt_gib": "DDP + act. ckpt (GiB)", f"fsdp{args.fsdp_gpus}_ckpt_gib":
        f"FSDP x{args.fsdp_gpus} + act. ckpt (GiB)"}, f"{args.out}_memory" if args.out else None,
        title="Memory per GPU at the recipe's batch, computed from counted parameters and counted fp32 activations "
              "(training step of batch 1 on the CPU; mask ratio 0.75)", formats={"batch": "d"}), end="\n")
    throughput = scaling_rows(measured, args.gpu, args.utilisation, links)
    print(write_table(throughput, {
        "model": "model", "gpus": "GPUs", "batch_per_gpu": "batch/GPU", "gflops_per_image": "GFLOP/image (fwd+bwd)",
        "compute_ms": "compute ms/step", "ddp_allreduce_gb": "all-reduce GB/GPU/step", "ddp_comm_ms": "DDP comm ms",
        "fsdp_comm_ms": "FSDP comm ms", "images_per_s": "DDP images/s", "fsdp_images_per_s": "FSDP images/s",
        "bound": "DDP bound by"}, f"{args.out}_throughput" if args.out else None,
        title=f"Images/s of {args.gpu} GPUs at {args.utilisation:.0%} of the {GPU_PEAK_TFLOPS[args.gpu]:.0f} TFLOP/s "
              f"bf16 peak; gradients fp32; links {args.intra_node_gbs:g} GB/s within a node of 8, "
              f"{args.inter_node_gbs:g} GB/s per GPU across nodes; communication overlapped with backward",
        formats={"gpus": "d", "batch_per_gpu": "d"}), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
