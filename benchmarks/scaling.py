"""Scaling on paper: memory per GPU and images/s on 1, 8 and 64 GPUs for MAE at ViT-B/L/H, 2D 224 and 3D 96^3.

Counted, not guessed: each model is built and one training step (forward + backward, batch 1) runs on this CPU; torch's
FlopCounterMode counts its FLOPs and a saved-tensors hook adds up the bytes autograd keeps for the backward pass
(the activations: each storage once, parameters left out), once plainly and once with activation checkpointing on
the ViT blocks (then plus the largest block's own activations, which its recompute holds in the backward pass). From these and the stated
assumptions below (each a flag):

- memory per GPU = weights + gradients + AdamW's two moments (4 + 4 + 8 bytes per parameter: fp32 master weights, as
  Lightning keeps them under bf16-mixed), divided by the GPU count under FSDP, plus activations x per-GPU batch,
  counted in fp32 and again in CPU bf16 autocast (`--precisions`). Under bf16-mixed the matmul inputs, attention and
  MLP activations are kept in bf16, while autocast keeps in fp32 the residual stream (the sums each block adds to,
  which LayerNorm saves as its input, with its fp32 statistics), the token concatenations and the loss's targets
  and differences; autocast's bf16 copies of the weights are kept for the backward pass once per step (not per
  image, and not sharded by FSDP), counted apart. CUDA's autocast op lists differ from the CPU's in a few ops
  (softmax, some losses), not in the matmuls that hold most of the bytes;
- measured beside computed (`--measure`): the peak resident memory two training steps add above the built model in a
  fresh CPU process, next to gradients + AdamW moments + weight copies + batch x activations;
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


def is_weight_copy(tensor: torch.Tensor, parameters: set[int]) -> bool:
    """Whether a saved tensor is autocast's low-precision copy of a parameter (a cast whose input is the parameter):
    kept once per step whatever the batch, so not an activation."""
    function = (tensor._base if tensor._base is not None else tensor).grad_fn  # a matmul saves a transposed view
    if function is None or type(function).__name__ != "ToCopyBackward0":
        return False
    source = function.next_functions[0][0] if function.next_functions else None
    return source is not None and id(getattr(source, "variable", None)) in parameters


def measure(method: str, model: dict, shape, precision: str = "32") -> dict:
    """Parameters, FLOPs of one training step and the bytes autograd keeps, per image (batch 1, this CPU); under
    "bf16-mixed" the step runs in CPU bf16 autocast, and autocast's bf16 copies of the weights are counted apart."""
    import contextlib

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
    parameter_ids = {id(p) for p in built.parameters()}
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16-mixed" else \
        contextlib.nullcontext
    blocks = [module for module in built.modules() if isinstance(module, Block)]
    current: list = [None]
    for block in blocks:  # which block's forward is running, to charge its activations to it
        block.register_forward_pre_hook(lambda module, args: current.__setitem__(0, module))
        block.register_forward_hook(lambda module, args, output: current.__setitem__(0, None))
    for checkpointing in (False, True):
        set_activation_checkpointing(built, checkpointing)
        kept, seen, per_block, copies, low = [0], set(), {}, [0], [0]

        def keep(tensor):
            # each storage once (views and repeated saves share it); weights are counted with the parameters
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                if is_weight_copy(tensor, parameter_ids):
                    copies[0] += storage.nbytes()
                    return tensor
                kept[0] += storage.nbytes()
                low[0] += storage.nbytes() if tensor.dtype in (torch.bfloat16, torch.float16) else 0
                if current[0] is not None:
                    per_block[current[0]] = per_block.get(current[0], 0) + storage.nbytes()
            return tensor

        start = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            torch.manual_seed(1)
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), autocast():
                loss = built(batch).loss
            loss.backward()
        built.zero_grad(set_to_none=True)
        if checkpointing:  # what stays between forward and backward, plus one block recomputed at a time
            out["activation_bytes_checkpointed"] = kept[0] + out["largest_block_bytes"]
            out["weight_copy_bytes_checkpointed"] = copies[0]
        else:
            out["flops"], out["activation_bytes"] = float(counter.get_total_flops()), kept[0]
            out["weight_copy_bytes"], out["low_precision_share"] = copies[0], low[0] / kept[0]
            out["largest_block_bytes"] = max(per_block.values())
            out["cpu_seconds"] = time.perf_counter() - start
    return out


def memory_rows(measured: dict, gpus: int) -> list[dict]:
    """Per model and precision: what one GPU holds at the recipe's batch, DDP (replicated) and FSDP over `gpus` GPUs.
    Autocast's bf16 weight copies are kept once per step (not per image) and are not sharded by FSDP: the cast is of
    the gathered block."""
    gib = 2 ** 30
    rows = []
    for (name, precision), (m, batch) in measured.items():
        static = 16 * m["params"]  # fp32 weights, fp32 gradients, AdamW exp_avg and exp_avg_sq (also under bf16-mixed)
        copies, copies_ckpt = m.get("weight_copy_bytes", 0), m.get("weight_copy_bytes_checkpointed", 0)
        rows.append({
            "model": name, "precision": precision, "params_m": m["params"] / 1e6,
            "encoder_params_m": m["encoder_params"] / 1e6, "weights_grads_adam_gib": static / gib, "batch": batch,
            "activations_per_image_mib": m["activation_bytes"] / 2 ** 20,
            "low_precision_pct": 100 * m.get("low_precision_share", 0.0), "weight_copies_mib": copies / 2 ** 20,
            "activations_per_image_ckpt_mib": m["activation_bytes_checkpointed"] / 2 ** 20,
            "ddp_gib": (static + copies + batch * m["activation_bytes"]) / gib,
            "ddp_ckpt_gib": (static + copies_ckpt + batch * m["activation_bytes_checkpointed"]) / gib,
            f"fsdp{gpus}_ckpt_gib": (static / gpus + copies_ckpt + batch * m["activation_bytes_checkpointed"]) / gib})
    return rows


# Published per-GPU memory for these settings, where a source was seen (none gives a measured figure):
PUBLISHED_MEMORY = [
    {"model": "MAE ViT-L/16 2D 224", "setting": "batch 64/GPU, fp16 autocast (torch.cuda.amp), no act. ckpt",
     "figure": "fits a 32 GB V100 (`--use_volta32`); no measured figure",
     "source": "facebookresearch/mae PRETRAIN.md (and main_pretrain.py's NativeScaler)"},
]

# One training step in a fresh process: the peak resident memory it adds above the built model (fp32 weights).
PEAK_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from mimkit.benchmarks.speed import peak_rss_kib
from mimkit.core.registry import build_method
from mimkit.core.train import adamw, parameter_groups
method, batch, precision, shape = sys.argv[1], int(sys.argv[2]), sys.argv[3], eval(sys.argv[4])
settings = eval(sys.argv[5])
torch.manual_seed(0)
model = build_method(method, **settings)
optimizer = adamw(parameter_groups(model, 0.05), 1e-4, (0.9, 0.95))
images = torch.randn(batch, *shape)
before = peak_rss_kib()
for step in range(2):  # the first step allocates gradients and AdamW's moments; the second is a steady step
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        loss = model({"image": images}).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
print((peak_rss_kib() - before) * 1024)
"""


def measured_peak(method: str, model, shape, batch: int, precision: str) -> int:
    """Bytes of resident memory two training steps add above the built model, in a fresh process (the rise of its
    peak resident set size, VmHWM: benchmarks.speed.peak_rss_kib)."""
    import subprocess

    settings = _model_settings(method, model)
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, method, str(batch), precision, repr(tuple(shape)),
                             repr(settings)], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def measured_rows(measured: dict, runs: list[tuple[str, str, int]]) -> list[dict]:
    """For each (model, precision, batch) in `runs`: the measured peak above the model's weights beside the same
    quantity computed (gradients + AdamW moments + autocast weight copies + batch x activations)."""
    specs = {name: (method, model, shape) for name, method, model, shape, _ in MODELS}
    rows = []
    for name, precision, batch in runs:
        m, _ = measured[(name, precision)]
        method, model, shape = specs[name]
        computed = 12 * m["params"] + m.get("weight_copy_bytes", 0) + batch * m["activation_bytes"]
        peak = measured_peak(method, model, shape, batch, precision)
        rows.append({"model": name, "precision": precision, "batch": batch, "computed_mib": computed / 2 ** 20,
                     "measured_mib": peak / 2 ** 20, "ratio": peak / computed})
    return rows


def scaling_rows(measured: dict, gpu: str, utilisation: float, links: dict, counts=(1, 8, 64)) -> list[dict]:
    """Images/s on `counts` GPUs: compute from counted FLOPs at `utilisation` of `gpu`'s bf16 peak, communication of
    the gradients over the slowest link, overlapped."""
    peak = GPU_PEAK_TFLOPS[gpu] * 1e12 * utilisation
    rows = []
    for (name, precision), (m, batch) in measured.items():
        if precision != "32":
            continue  # FLOPs do not depend on the precision, and the utilisation is of the bf16 peak: one row each
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
    parser.add_argument("--precisions", nargs="*", default=["32", "bf16-mixed"], choices=["32", "bf16-mixed"],
                        help="precisions to count activations in (bf16 is emulated, so slow, on CPUs without it)")
    parser.add_argument("--measure", nargs="*",
                        default=["MAE ViT-B/16 2D 224:32:2", "MAE ViT-B/16 2D 224:bf16-mixed:2"],
                        help="MODEL:PRECISION:BATCH runs whose peak resident memory is measured on this CPU")
    parser.add_argument("--out", default=None, help="write OUT_memory.md/.csv/.json and OUT_throughput.*")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    measured = {}
    for name, method, model, shape, batch in MODELS:
        if args.models and not any(word in name for word in args.models):
            continue
        for precision in args.precisions:
            print(f"counting {name} in {precision} ...", file=sys.stderr, flush=True)
            measured[(name, precision)] = (measure(method, model, shape, precision), batch)
    links = {"intra_node_gbs": args.intra_node_gbs, "inter_node_gbs": args.inter_node_gbs, "gpus_per_node": 8}
    memory = memory_rows(measured, args.fsdp_gpus)
    print(write_table(memory, {
        "model": "model", "precision": "precision", "params_m": "params (M)", "encoder_params_m": "encoder (M)",
        "weights_grads_adam_gib": "weights+grads+AdamW (GiB)", "batch": "batch/GPU",
        "activations_per_image_mib": "activations/image (MiB)", "low_precision_pct": "of which bf16 (%)",
        "weight_copies_mib": "bf16 weight copies (MiB)",
        "activations_per_image_ckpt_mib": "with act. ckpt (MiB)", "ddp_gib": "DDP per GPU (GiB)",
        "ddp_ckpt_gib": "DDP + act. ckpt (GiB)", f"fsdp{args.fsdp_gpus}_ckpt_gib":
        f"FSDP x{args.fsdp_gpus} + act. ckpt (GiB)"}, f"{args.out}_memory" if args.out else None,
        title="Memory per GPU at the recipe's batch, computed from counted parameters and the activations counted in "
              "a training step of batch 1 on the CPU (mask ratio 0.75), in fp32 and in CPU bf16 autocast",
        formats={"batch": "d"}), end="\n")
    runs = []
    for spec in args.measure:
        name, precision, batch = spec.rsplit(":", 2)
        if (name, precision) in measured:
            print(f"measuring {name} in {precision} at batch {batch} ...", file=sys.stderr, flush=True)
            runs.append((name, precision, int(batch)))
    if runs:
        print(write_table(measured_rows(measured, runs), {
            "model": "model", "precision": "precision", "batch": "batch", "computed_mib": "computed (MiB)",
            "measured_mib": "measured (MiB)", "ratio": "measured / computed"},
            f"{args.out}_memory_measured" if args.out else None,
            title="Measured on this CPU: the peak resident memory two training steps add above the built model "
                  "(rise of VmHWM in a fresh process, 1 thread), beside the same quantity computed (gradients + "
                  "AdamW moments + bf16 weight copies + batch x activations)", formats={"batch": "d"}), end="\n")
    print(write_table(PUBLISHED_MEMORY, {"model": "model", "setting": "setting", "figure": "published figure",
                                         "source": "source"}, f"{args.out}_memory_published" if args.out else None,
                      title="Published per-GPU memory for these settings (the only one seen)"), end="\n")
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
