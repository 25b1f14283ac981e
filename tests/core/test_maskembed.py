"""MaskEmbed: teacher sees masked images, student sees the whole image, its embeddings are masked in the decoder."""
import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.encoders import build_encoder
from mimkit.core.errors import ConfigError
from mimkit.core.registry import method_arguments

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, decoder_depth=1)


def tiny_teacher(width=32):
    torch.manual_seed(1)
    return build_encoder(None, img_size=32, patch_size=8, in_chans=3, embed_dim=width, depth=2, num_heads=2)


def build(**kwargs):
    torch.manual_seed(0)
    return build_method("maskembed", **{**TINY, "teacher": tiny_teacher(), **kwargs})


def test_registered_defaults_and_teacher_weights_required():
    assert "maskembed" in list_methods()
    args = method_arguments("maskembed")
    assert args["skip_blocks"] == 1 and args["decoder_depth"] == 2 and args["mask_sampling"] == "uniform"
    assert args["antithetical"] is True and args["include_null"] is True and args["student_init"] == "teacher"
    with pytest.raises(ConfigError, match="teacher_weights=PATH"):
        build_method("maskembed", **TINY, teacher="vit_tiny_patch16_224")
    with pytest.raises(ConfigError, match="do not fit the student"):
        build(teacher=tiny_teacher(width=48))  # a student cannot fork a teacher of another size


def test_student_starts_as_a_copy_of_the_teacher():
    model = build()
    teacher_state = model.teacher.model.state_dict()
    for key, value in model.encoder.state_dict().items():
        if not key.startswith("norm."):  # the output norm is reset, as in the reference
            assert torch.equal(value, teacher_state[key]), key
    assert torch.equal(model.encoder.norm.weight, torch.ones(32))


def test_masks_come_as_random_complement_and_full():
    model = build()
    keep = model.sample_masks(64)
    assert keep.shape == (192, 16)
    random, complement, full = keep[0::3], keep[1::3], keep[2::3]
    assert torch.equal(complement, 1 - random) and torch.all(full == 1)
    fractions = random.mean(1)
    assert fractions.min() < 0.25 and fractions.max() > 0.75  # uniform: the kept fraction itself varies


def test_target_on_masked_image_student_on_whole_image():
    model = build()
    images = torch.randn(2, 3, 32, 32)
    keep = torch.ones(6, 16)
    keep[0, [0, 5, 9]] = 0      # image 0, mask 0 hides three patches
    keep[1] = 1 - keep[0]       # its complement
    keep[3, :8] = 0             # image 1 hides the top half
    keep[4] = 1 - keep[3]
    model.sample_masks = lambda batch_size, device=None: keep
    seen_teacher, seen_student = [], []
    original = model.teacher.forward
    model.teacher.forward = lambda images, **kw: seen_teacher.append(images.clone()) or original(images, **kw)
    model.encoder.patch_embed.register_forward_pre_hook(lambda m, args: seen_student.append(args[0].clone()))
    out = model({"image": images})
    assert torch.equal(seen_student[0], images)  # the student: each whole image, once
    teacher_in = seen_teacher[0]
    assert teacher_in.shape == (6, 3, 32, 32)
    pixel_keep = keep.reshape(6, 1, 4, 1, 4, 1).expand(6, 1, 4, 8, 4, 8).reshape(6, 1, 32, 32)
    assert torch.equal(teacher_in, images.repeat_interleave(3, 0) * pixel_keep)
    assert torch.all(teacher_in[0, :, 0:8, 0:8] == 0) and torch.equal(teacher_in[0, :, 0:8, 8:16], images[0, :, 0:8, 8:16])
    assert torch.equal(teacher_in[2], images[0]) and torch.equal(teacher_in[5], images[1])  # the empty mask
    assert out.mask.tolist() == (1 - keep[[0, 3]]).tolist() and set(out.parts) == {"embedding"}


def test_decoder_sees_only_the_kept_patch_embeddings():
    model = build()
    tokens = torch.randn(2, 17, 32, requires_grad=True)
    keep = torch.ones(2, 16)
    keep[0, [1, 2, 3]] = 0
    model.decoder(tokens, keep).sum().backward()
    grad = tokens.grad.abs().sum(-1)
    assert torch.all(grad[:, 0] == 0)                   # the class token is hidden as in the reference
    assert torch.all(grad[0, 1 + torch.tensor([1, 2, 3])] == 0)
    assert torch.all(grad[1, 1:] > 0) and grad[0, 1 + 4] > 0


def test_loss_falls_on_fixed_data(fixed_batch_training):
    model = build()
    images = torch.randn(8, 3, 32, 32)
    run = fixed_batch_training(model, {"image": images}, steps=30, reseed=4)
    assert 0.5 < run.losses[0] < 2.0  # unit-variance targets, zero-initialised head
    assert run.last(5) < 0.7 * run.first(5)
