"""GM-DF: the router's experts are the only ones trained per sample, the domain alignment distance, disjoint
meta-learning episodes, frozen CLIP weights, the loss falling on fixed data, and CLIP weights read as open_clip's."""
import json

import pytest
import torch
import torch.nn.functional as F

from mimkit.core import build_method
from mimkit.core.errors import ConfigError
from mimkit.core.train import parameter_groups
from mimkit.faces.methods.gm_df import ALIGNMENT_BANDWIDTH, mmd, split_domains

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, text_width=32, text_depth=1, text_heads=2,
            context_length=24, text_embed_dim=32, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
            domains=["colour", "swap", "blur"])


def tiny(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_method("gm_df", **{**TINY, **overrides})


def labelled_batch(n: int = 12, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, 32, 32, generator=g), "label": torch.arange(n) % 2,
            "domain": (torch.arange(n) // 2) % 3}


def test_a_sample_trains_only_the_experts_its_router_selects():
    model = tiny(top_k=1)
    for block in model.encoder.blocks:  # experts start as no-ops; give them weights so every part has a gradient
        for expert in block.experts:
            torch.nn.init.normal_(expert.up.weight, std=0.1)
    model.train()
    out = model({"image": torch.rand(1, 3, 32, 32)})  # no label: the reconstruction branch, one routing per block
    out.loss.backward()
    for block in model.encoder.blocks:
        chosen = set(block.last_route[0].tolist())
        assert len(chosen) == 1
        for e, expert in enumerate(block.experts):
            grads = [p.grad for p in expert.parameters()]
            if e in chosen:
                assert all(g is not None and g.abs().sum() > 0 for g in grads), e
            else:
                assert all(g is None or not g.any() for g in grads), e
        assert block.router.weight.grad.abs().sum() > 0  # the router learns through its gate


def test_alignment_loss_is_zero_for_identical_sets_and_grows_with_a_shift():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    assert mmd(x, x).abs().item() < 1e-6
    distances = [mmd(x, x + shift).item() for shift in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 0
    # a change of spread alone counts too (CORAL-like second moments, and a mean shift above)
    assert mmd(x, 2 * x).item() > mmd(x, 1.1 * x).item() > 0


def test_fixed_width_alignment_keeps_its_gradient_bounded_as_features_collapse():
    # unit-norm features of a fresh tower lie close together; the median heuristic's gradient grows as 1 / spread
    torch.manual_seed(0)
    centre = F.normalize(torch.randn(1, 16), dim=-1)

    def gradient(spread: float, bandwidth):
        x = F.normalize(centre + spread * torch.randn(8, 16), dim=-1).requires_grad_(True)
        y = F.normalize(centre + spread * torch.randn(16, 16), dim=-1)
        mmd(x, y, bandwidth=bandwidth).backward()
        return x.grad.norm().item()

    assert gradient(1e-3, None) > 100 * gradient(1e-1, None)            # median heuristic: grows as spread shrinks
    assert gradient(1e-3, ALIGNMENT_BANDWIDTH) < gradient(1e-1, ALIGNMENT_BANDWIDTH)  # GM-DF's: does not


def test_meta_train_and_meta_test_domains_are_disjoint_in_every_episode():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        domains = torch.randint(0, 5, (16,), generator=g)
        meta_train, meta_test = split_domains(domains, generator=g)
        present = set(domains.tolist())
        assert not set(meta_train) & set(meta_test)
        assert set(meta_train) | set(meta_test) == present
        if len(present) >= 2:
            assert meta_train and meta_test
    model = tiny().train()
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        out = model(labelled_batch())
        meta_train, meta_test = model.last_episode
        assert meta_train and meta_test and not set(meta_train) & set(meta_test)
        assert set(meta_train) | set(meta_test) == {0, 1, 2}
        assert {"meta_train", "meta_test", "alignment"} <= set(out.parts)
        seen.add(tuple(meta_test))
    assert len(seen) > 1  # episodes change from batch to batch


def test_frozen_clip_weights_do_not_change_and_the_additions_do():
    model = tiny().train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("encoder.blocks.0.attn") for n in frozen) and any(n.startswith("text.") for n in frozen)
    assert all(".experts." in n or ".router." in n or n.startswith(("prompts.", "decoder."))
               for n in trained), sorted(trained)
    opt = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-2)  # as the trainer builds it, with weight decay
    for step in range(3):
        opt.zero_grad()
        model(labelled_batch(seed=step)).loss.backward()
        opt.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert not torch.equal(after["prompts.context"], trained["prompts.context"])
    assert not torch.equal(after["encoder.blocks.1.experts.0.up.weight"], trained["encoder.blocks.1.experts.0.up.weight"])


def test_unfreezing_the_last_blocks_trains_those_blocks_and_nothing_else_of_clip():
    """The departure for runs without CLIP weights: the last N blocks and the final norm learn; the patch
    embedding, positions, class token, pre-norm, earlier blocks, text tower and projection stay as they were."""
    model = tiny(unfreeze_last_blocks=1, depth=3).train()
    unfrozen = ("encoder.blocks.2.", "encoder.norm.")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trained if n.startswith("encoder.") and ".experts." not in n and ".router." not in n} == {
        n for n, _ in model.encoder.named_parameters(prefix="encoder")
        if n.startswith(unfrozen) and ".experts." not in n and ".router." not in n}
    for name in ("encoder.patch_embed.proj.weight", "encoder.pos_embed", "encoder.cls_token", "encoder.norm_pre.weight",
                 "encoder.blocks.1.attn.qkv.weight", "text.transformer.resblocks.0.attn.in_proj_weight",
                 "image_projection.weight"):
        assert name in frozen, name
    opt = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-2)
    for step in range(3):
        opt.zero_grad()
        model(labelled_batch(seed=step)).loss.backward()
        opt.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    for name in ("encoder.blocks.2.attn.qkv.weight", "encoder.blocks.2.mlp.fc1.weight", "encoder.norm.weight"):
        assert not torch.equal(after[name], trained[name]), name
    with pytest.raises(ConfigError, match="unfreeze_last_blocks must lie in 0..3"):
        tiny(unfreeze_last_blocks=4, depth=3)


def test_detector_loss_falls_on_fixed_data(fixed_batch_training):
    model = tiny(meta_learning=False).train()
    batch = labelled_batch(8)
    batch["image"][batch["label"] == 1, :, 8:24, 8:24] += 0.5  # a visible "forgery" in the fakes
    run = fixed_batch_training(model, batch, steps=30, lr=3e-3, reseed=2)
    assert run.last(5, "classification") < 0.5 * run.first(5, "classification")
    assert run.last(5) < run.first(5)
    with torch.no_grad():
        scores = model.eval().detect(batch["image"])
    assert scores[batch["label"] == 1].min() > scores[batch["label"] == 0].max()


def test_meta_learning_loss_falls_on_fixed_data(fixed_batch_training):
    run = fixed_batch_training(tiny().train(), labelled_batch(12), steps=25, lr=3e-3, reseed=3)
    assert run.last(5) < run.first(5)


def test_clip_weights_load_as_open_clips_towers(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    config = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                              "patch_size": 8},
              "text_cfg": {"context_length": 24, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "mimkit-faces-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "mimkit-faces-tiny-clip.json")
    torch.manual_seed(1)
    clip = open_clip.create_model("mimkit-faces-tiny-clip", pretrained=None).eval()
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    model = tiny(clip_weights=str(path), num_context=1).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.image_features(images), F.normalize(clip.encode_image(images), dim=-1), atol=1e-5)
        # with the learned context set to the word it stands in for, a prompt's features are CLIP's text features
        model.prompts.context.copy_(clip.token_embedding(model.prompts.tokens[0, 1:2]))
        text = model.prompts(model.text)
        assert torch.allclose(text, clip.encode_text(model.prompts.tokens), atol=1e-5)
    assert model.logit_scale == clip.logit_scale


def test_clip_weights_errors_name_the_file(tmp_path):
    from mimkit.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        tiny(clip_weights=str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"patch_embed.proj.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="bad.pt: not an open_clip"):
        tiny(clip_weights=str(bad))


def test_real_fake_head_learns_real_faces_and_their_self_blended_forgeries(fixed_batch_training):
    """The labels reach the prompt logits: on a fixed batch of shipped real faces and their forgeries the
    classification term falls from chance (ln 2) to well below it, and the fakes score above the reals. The encoder
    is unfrozen: a frozen random encoder gives the experts too little to work with (issue 9)."""
    import numpy as np

    from mimkit.faces import synthetic

    faces = synthetic.real_faces(32)[:8]
    rng = np.random.default_rng(0)
    kinds = ["colour", "swap", "blur", "noise"]
    images, labels, domains = [], [], []
    for i, (_, face) in enumerate(faces):
        kind = kinds[i % 4]
        forged, _ = synthetic.forge(face, kind, rng, donor=faces[(i + 1) % len(faces)][1])
        for label, pixels in ((0, face), (1, forged)):
            images.append(torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1)
            labels.append(label)
            domains.append(min(kinds.index(kind), 2))
    batch = {"image": torch.stack(images), "label": torch.tensor(labels), "domain": torch.tensor(domains)}
    model = tiny(meta_learning=False, freeze_encoder=False).train()
    run = fixed_batch_training(model, batch, steps=40, lr=1e-3, reseed=2)
    assert run.first(3, "classification") > 0.6
    assert run.last(3, "classification") < 0.3
    with torch.no_grad():
        scores = model.eval().detect(batch["image"])
    fake, real = scores[batch["label"] == 1], scores[batch["label"] == 0]
    assert (fake[:, None] > real[None, :]).float().mean() > 0.9  # frame AUC on the batch


def test_random_towers_are_said_once_at_training_unless_weights_were_loaded(caplog):
    import logging

    batch = labelled_batch(6)
    with caplog.at_level(logging.WARNING, logger="mimkit"):
        fresh = tiny().train()
        assert "RANDOM" not in caplog.text  # building alone says nothing: weights may still be loaded
        fresh(batch)
        fresh(batch)
        assert caplog.text.count("are RANDOM") == 1  # once per model, at its first training step
        caplog.clear()
        loaded = tiny(seed=1)
        loaded.load_state_dict(tiny(seed=2).state_dict())  # a pretrained run's weights, as the demo loads them
        loaded.train()(batch)
        assert "RANDOM" not in caplog.text
