"""MaskAlign: visible-only alignment to a frozen teacher, Dynamic Alignment gets gradients, attention-guided masks."""
import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.encoders import build_encoder
from mimkit.core.errors import ConfigError
from mimkit.core.masking import Mask
from mimkit.core.registry import method_arguments

STUDENT = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)


def tiny_teacher(depth=3, width=48):
    torch.manual_seed(1)
    return build_encoder(None, img_size=32, patch_size=8, in_chans=3, embed_dim=width, depth=depth, num_heads=2)


def build(**kwargs):
    torch.manual_seed(0)
    return build_method("maskalign", **{**STUDENT, "teacher": tiny_teacher(), "aligned_layers": 2, **kwargs})


def fixed_mask(batch, keep=((0, 3, 5, 10, 15),)):
    masked = torch.ones(batch, 16, dtype=torch.bool)
    for row, ids in zip(range(batch), keep * batch):
        masked[row, list(ids)] = False
    return Mask.from_bool(masked)


def test_registered_defaults_and_teacher_weights_required():
    assert "maskalign" in list_methods()
    args = method_arguments("maskalign")
    assert args["mask_ratio"] == 0.7 and args["aligned_layers"] == 5 and args["attention_masking"] is True
    assert args["teacher_weights"] is None
    with pytest.raises(ConfigError, match="teacher_weights=PATH"):
        build_method("maskalign", **STUDENT)  # the default CLIP teacher without a weights file
    with pytest.raises(ConfigError, match="token grid"):
        build_method("maskalign", **{**STUDENT, "patch_size": 4}, teacher=tiny_teacher(), aligned_layers=2)


def test_layers_paired_and_alignment_starts_at_identity_plus_small():
    model = build()
    assert model.teacher_layers == [2, 3]  # the teacher's last two of three blocks
    # teacher block 2 of 3 pairs with student block 1 of 2, block 3 with block 2
    expected = torch.full((2, 2), 0.01) + torch.eye(2)
    assert torch.allclose(model.alignment.detach(), expected)


def test_loss_reads_the_teacher_at_visible_positions_only():
    model = build(attention_masking=False)
    images = torch.randn(2, 3, 32, 32)
    mask = fixed_mask(2)
    model.masker = lambda *args, **kwargs: mask
    clean = model({"image": images}).loss
    original = model.teacher.forward

    def corrupted(where):
        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            for h in out.hidden:  # noise on patch tokens (after the class token); not a constant: whitening removes that
                patches = h[:, 1:]
                patches[where] += 10 * torch.randn_like(patches[where])
            return out
        return forward

    model.teacher.forward = corrupted(mask.mask.bool())  # every masked position
    assert torch.allclose(model({"image": images}).loss, clean)
    one_visible = torch.zeros(2, 16, dtype=torch.bool)
    one_visible[0, 3] = True
    model.teacher.forward = corrupted(one_visible)
    assert (model({"image": images}).loss - clean).abs() > 1e-5


def test_student_encodes_visible_tokens_only_and_alignment_gets_gradients():
    model = build(attention_masking=False)
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    out = model({"image": torch.randn(2, 3, 32, 32)})
    assert seen[0] == (2, 1 + 4, 32)  # class token + int(16 * 0.3) = 4 patches, official MaskAlign's len_keep
    assert out.mask.sum(1).tolist() == [12.0, 12.0] and set(out.parts) == {"alignment"}
    out.loss.backward()
    grad = model.alignment.grad
    assert grad is not None and bool((grad != 0).all())  # off-diagonal mixing weights learn too
    assert all(p.grad is None for p in model.teacher.parameters())
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_attention_guided_masking_keeps_what_the_teacher_attends_to():
    model = build(attention_masking=True)
    original = model.teacher.forward
    focus = [2, 6, 12, 14]  # int(16 * (1 - 0.7)) = 4 kept

    def focused(*args, **kwargs):
        out = original(*args, **kwargs)
        assert out.cls_attention is not None and out.cls_attention.shape == (3, 16)
        out.cls_attention = torch.full_like(out.cls_attention, 1e-9)
        out.cls_attention[:, focus] = 1.0
        return out

    model.teacher.forward = focused
    out = model({"image": torch.randn(3, 3, 32, 32)})
    kept = (out.mask == 0).nonzero()[:, 1].reshape(3, -1)
    assert kept.tolist() == [focus] * 3


def test_loss_falls_on_fixed_data(fixed_batch_training):
    model = build(attention_masking=False)
    images = torch.randn(8, 3, 32, 32)
    teacher_before = [p.clone() for p in model.teacher.parameters()]
    run = fixed_batch_training(model, {"image": images}, steps=30, reseed=4)  # a few fixed masks
    assert run.last(5) < 0.7 * run.first(5)
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.parameters()))


IMAGENET = dict(data_mean=[0.485, 0.456, 0.406], data_std=[0.229, 0.224, 0.225])
TIMM_TEACHER = dict(teacher="vit_tiny_patch16_224", allow_random_teacher=True, aligned_layers=2,
                    teacher_kwargs=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2))


def test_teacher_sees_its_own_normalisation_not_the_loaders():
    # official MaskAlign's forward_clip turns ImageNet-normalised batches into CLIP-normalised ones
    model = build(**TIMM_TEACHER, **IMAGENET)
    cfg = model.teacher.model.pretrained_cfg
    assert tuple(cfg["mean"]) != tuple(IMAGENET["data_mean"])
    seen = []
    model.teacher.model.patch_embed.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    pixels = torch.rand(2, 3, 32, 32)
    view = lambda v: torch.tensor(v).view(1, 3, 1, 1)  # noqa: E731
    model({"image": (pixels - view(IMAGENET["data_mean"])) / view(IMAGENET["data_std"])})
    assert torch.allclose(seen[0], (pixels - view(cfg["mean"])) / view(cfg["std"]), atol=1e-5)


def test_pretrain_gives_the_teacher_the_datas_statistics(tmp_path, make_pngs):
    import yaml

    from mimkit.core.api import pretrain
    from mimkit.core.train import TrainConfig

    image_folder = make_pngs(tmp_path / "images", 8, channels=3)
    train = TrainConfig(max_steps=1, batch_size=4, num_workers=0, progress=False, accelerator="cpu")
    pretrain(data=str(image_folder), out=str(tmp_path / "run"), method="maskalign",
             model={**STUDENT, **TIMM_TEACHER}, train=train)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["data"]["mean"] is not None
    assert config["model"]["data_mean"] == config["data"]["mean"]
    assert config["model"]["data_std"] == config["data"]["std"]
