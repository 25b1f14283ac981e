"""Teachers: local weights only, frozen, one interface over mimkit / timm / open_clip, true CLS attention."""
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from mimkit.core.encoders import build_encoder
from mimkit.core.errors import CheckpointError, ConfigError
from mimkit.core.teachers import AttentionMasker, build_teacher

TINY_TIMM = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


def tiny_timm_vit(**kwargs):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32,
                             **{**TINY_TIMM, **kwargs})


def test_named_teacher_without_weights_is_a_clear_error():
    with pytest.raises(ConfigError, match="teacher_weights=PATH"):
        build_teacher("vit_tiny_patch16_224", None, img_size=32)
    with pytest.raises(CheckpointError, match="no_such_teacher.safetensors"):
        build_teacher("vit_tiny_patch16_224", "/nowhere/no_such_teacher.safetensors", img_size=32)
    with pytest.raises(ConfigError, match="never downloads"):
        build_teacher("hf-hub:timm/vit_tiny_patch16_224", None, allow_random=True)
    with pytest.raises(ConfigError, match="timm model name"):
        build_teacher("not_a_model_at_all", None, allow_random=True)


def test_weights_file_is_loaded_and_mismatch_is_reported(tmp_path):
    torch.manual_seed(0)
    source = tiny_timm_vit().eval()
    path = tmp_path / "teacher.safetensors"
    save_file(source.state_dict(), str(path))
    teacher = build_teacher("vit_tiny_patch16_224", path, img_size=32, model_kwargs=TINY_TIMM)
    x = torch.randn(2, 3, 32, 32)
    # a freshly built model would differ: equality shows the file's weights are the teacher's
    assert torch.allclose(teacher(x).tokens, source.forward_features(x), atol=1e-5)
    with pytest.raises(CheckpointError, match="teacher.safetensors"):
        build_teacher("vit_tiny_patch16_224", path, img_size=32, model_kwargs={**TINY_TIMM, "embed_dim": 64})


def test_teacher_is_frozen_and_stays_in_eval_mode():
    teacher = build_teacher(tiny_timm_vit(drop_rate=0.5, drop_path_rate=0.5))
    holder = torch.nn.ModuleDict({"teacher": teacher})
    holder.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = teacher(x, layers=[1, 2])
    assert not out.tokens.requires_grad and not any(h.requires_grad for h in out.hidden)
    # eval mode: dropout and drop-path off, so two passes agree
    assert torch.equal(out.tokens, teacher(x).tokens)


def test_hidden_states_and_features_match_the_models_own_forward():
    torch.manual_seed(0)
    timm_vit = tiny_timm_vit()
    teacher = build_teacher(timm_vit)
    x = torch.randn(3, 3, 32, 32)
    out = teacher(x, layers=[2, 1])
    assert [h.shape for h in out.hidden] == [(3, 17, 32)] * 2 and out.features.shape == (3, 16, 32)
    assert torch.allclose(timm_vit.norm(out.hidden[0]), timm_vit.forward_features(x), atol=1e-5)
    assert teacher.grid == (4, 4) and teacher.depth == 2 and teacher.embed_dim == 32 and teacher.num_prefix_tokens == 1
    encoder = build_encoder(None, img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2)
    mimkit_teacher = build_teacher(encoder)
    full, hidden = encoder.forward_features(x, return_layers=[1])
    out = mimkit_teacher(x, layers=[1])
    assert torch.allclose(out.tokens, full, atol=1e-5) and torch.allclose(out.hidden[0], hidden[0], atol=1e-5)
    # run only the first block: the final norm is applied to block 1's output
    assert torch.allclose(mimkit_teacher(x, num_blocks=1).tokens, encoder.norm(hidden[0]), atol=1e-5)


def _attention_from_inside(model, block, x):
    """The probabilities timm itself computes in `block` (unfused path, caught at attn_drop)."""
    seen = []
    block.attn.fused_attn = False
    handle = block.attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o))
    model.forward_features(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("kind", ["timm", "mimkit"])
def test_cls_attention_is_the_last_blocks_real_attention(kind):
    torch.manual_seed(0)
    if kind == "timm":
        model = tiny_timm_vit()
    else:
        model = build_encoder(None, img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2)
    teacher = build_teacher(model)
    x = torch.randn(2, 3, 32, 32)
    probs = _attention_from_inside(model, model.blocks[-1], x)  # (B, heads, T, T)
    expected = probs[:, :, 0, 1:].mean(1)
    got = teacher.cls_attention(x)
    assert got.shape == (2, 16) and torch.allclose(got, expected, atol=1e-5)


def test_open_clip_tower_by_name_with_weights_and_normalisation(tmp_path):
    import open_clip
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
              "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "mimkit-test-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "mimkit-test-tiny-clip.json")
    torch.manual_seed(0)
    clip = open_clip.create_model("mimkit-test-tiny-clip", pretrained=None)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))  # full CLIP: image + text towers
    imagenet = dict(data_mean=(0.485, 0.456, 0.406), data_std=(0.229, 0.224, 0.225))
    teacher = build_teacher("open_clip:mimkit-test-tiny-clip", path, img_size=32, **imagenet)
    assert teacher.kind == "open_clip" and teacher.grid == (4, 4) and teacher.embed_dim == 32
    pixels = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (imagenet["data_mean"], imagenet["data_std"]))
    clip_mean, clip_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (clip.visual.image_mean, clip.visual.image_std))
    # the teacher converts loader-normalised images to CLIP's normalisation before its own tower
    visual = clip.visual.eval()
    out = teacher((pixels - mean) / std, layers=[2], cls_attention=True)
    reference = visual.ln_post(visual.transformer(visual._embeds((pixels - clip_mean) / clip_std)))
    assert torch.allclose(out.tokens, reference, atol=1e-5)
    assert torch.allclose(out.hidden[0], visual.transformer(visual._embeds((pixels - clip_mean) / clip_std)), atol=1e-5)
    attention = out.cls_attention  # class token's share on each patch: positive, at most 1 in total
    assert attention.shape == (2, 16) and bool((attention > 0).all()) and bool((attention.sum(1) <= 1 + 1e-5).all())


def test_cnn_teacher_gives_features_only():
    teacher = build_teacher("resnet18", None, img_size=64, allow_random=True)
    feats = teacher.features(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 4, 512)  # 2x2 final map flattened to tokens
    with pytest.raises(ConfigError, match="not a ViT"):
        teacher.hidden_states(torch.randn(2, 3, 64, 64), [1])


def test_attention_masker_keeps_the_attended_tokens():
    scores = torch.full((4, 16), 1e-6)
    scores[:, [1, 5, 9, 13]] = 1.0
    mask = AttentionMasker(0.75)(4, 16, scores=scores, generator=torch.Generator().manual_seed(0))
    assert mask.ids_keep.tolist() == [[1, 5, 9, 13]] * 4
    # sampling, not top-k: with flat scores the kept sets differ from row to row
    flat = AttentionMasker(0.5)(8, 16, scores=torch.ones(8, 16), generator=torch.Generator().manual_seed(0))
    assert len({tuple(row) for row in flat.ids_keep.tolist()}) > 1
    with pytest.raises(ConfigError, match="scores"):
        AttentionMasker(0.5)(2, 16)
