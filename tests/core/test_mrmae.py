"""MR-MAE: mimic on the encoder's visible tokens + MAE pixel loss on the masked ones, in one step."""
import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.encoders import build_encoder
from mimkit.core.errors import ConfigError
from mimkit.core.masking import Mask
from mimkit.core.registry import method_arguments

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def tiny_teacher():
    torch.manual_seed(1)
    return build_encoder(None, img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=2)


def build(**kwargs):
    torch.manual_seed(0)
    return build_method("mrmae", **{**TINY, "teacher": tiny_teacher(), **kwargs})


def test_registered_defaults_and_teacher_weights_required():
    assert "mrmae" in list_methods()
    args = method_arguments("mrmae")
    assert args["mask_ratio"] == 0.75 and args["norm_pix_loss"] is True and args["teacher_weights"] is None
    with pytest.raises(ConfigError, match="teacher_weights=PATH"):
        build_method("mrmae", **TINY)


def test_mimic_and_reconstruction_act_on_disjoint_token_sets():
    model = build()
    images = torch.randn(2, 3, 32, 32)
    keep = [[0, 5, 10, 15], [1, 2, 7, 12]]
    masked = torch.ones(2, 16, dtype=torch.bool)
    for row, ids in enumerate(keep):
        masked[row, ids] = False
    mask = Mask.from_bool(masked)
    model.masker = lambda *args, **kwargs: mask
    out = model({"image": images})
    assert set(out.parts) == {"reconstruction", "mimic"}
    assert torch.allclose(out.loss, out.parts["reconstruction"] + out.parts["mimic"])
    # reconstruction: only the decoder's predictions at masked tokens carry gradient
    grad = torch.autograd.grad(out.loss, out.pred, retain_graph=True)[0]
    assert torch.all(grad[~masked] == 0) and torch.all(grad[masked].abs().sum(-1) > 0)
    # mimic: only the teacher's features at visible tokens matter
    original = model.teacher.forward

    def corrupted(where):
        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            patches = out.tokens[:, 1:]
            patches[where] += 10 * torch.randn_like(patches[where])
            return out
        return forward

    model.teacher.forward = corrupted(masked)
    again = model({"image": images})
    assert torch.allclose(again.parts["mimic"], out.parts["mimic"])
    assert torch.allclose(again.parts["reconstruction"], out.parts["reconstruction"])
    one_visible = torch.zeros(2, 16, dtype=torch.bool)
    one_visible[1, 7] = True
    model.teacher.forward = corrupted(one_visible)
    assert (model({"image": images}).parts["mimic"] - out.parts["mimic"]).abs() > 1e-5


def test_focused_mimicking_draws_visible_tokens_from_teacher_attention():
    model = build(focused_mimicking=True)
    original = model.teacher.forward
    focus = [3, 4, 9, 14]

    def focused(*args, **kwargs):
        out = original(*args, **kwargs)
        out.cls_attention = torch.full_like(out.cls_attention, 1e-9)
        out.cls_attention[:, focus] = 1.0
        return out

    model.teacher.forward = focused
    out = model({"image": torch.randn(2, 3, 32, 32)})
    assert (out.mask == 0).nonzero()[:, 1].reshape(2, -1).tolist() == [focus] * 2


def test_loss_falls_on_fixed_data(fixed_batch_training):
    model = build()
    images = torch.rand(8, 3, 32, 32)
    run = fixed_batch_training(model, {"image": images}, steps=24, reseed=4)
    assert run.last(5) < 0.7 * run.first(5)
    assert run.last(5, "mimic") < 0.7 * run.first(5, "mimic")  # the mimic part learns too
