"""benchmarks/scaling.py in bf16-mixed: autocast's bf16 weight copies are counted apart from the activations (once
per step, not per image), most kept activations are bf16, and the bf16 activations take fewer bytes than fp32's."""
import torch

from mimkit.benchmarks.scaling import is_weight_copy, measure, memory_rows

TINY = {"encoder": {"size": None, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 8},
        "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}


def test_a_cast_of_a_parameter_is_a_weight_copy_and_a_cast_of_an_input_is_not():
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).sum()
    kinds = sorted(is_weight_copy(t, {id(p) for p in layer.parameters()}) for t in saved)
    assert kinds == [False, True]  # the input's cast, and the weight's (saved as its transposed view)


def test_bf16_counts_keep_weight_copies_apart_and_fewer_activation_bytes():
    fp32, bf16 = measure("mae", TINY, (3, 32, 32), "32"), measure("mae", TINY, (3, 32, 32), "bf16-mixed")
    assert fp32["weight_copy_bytes"] == 0 and fp32["low_precision_share"] == 0
    assert 0.5 * 2 * fp32["params"] < bf16["weight_copy_bytes"] <= 2 * fp32["params"]
    assert bf16["low_precision_share"] > 0.5
    assert 0.4 * fp32["activation_bytes"] < bf16["activation_bytes"] < 0.8 * fp32["activation_bytes"]
    rows = memory_rows({("tiny", "32"): (fp32, 10), ("tiny", "bf16-mixed"): (bf16, 10)}, gpus=8)
    assert [row["precision"] for row in rows] == ["32", "bf16-mixed"]
    gib = 2 ** 30  # the copies are added once, the activations once per image
    assert rows[1]["ddp_gib"] * gib == 16 * bf16["params"] + bf16["weight_copy_bytes"] + 10 * bf16["activation_bytes"]
