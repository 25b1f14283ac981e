"""X-Former: both frozen encoders (CLIP-type and MAE) get no gradient and do not change in training, the output
is one token per query whatever the image grid, the reconstruction decoder reads the queries' effect, hard
negatives follow the similarities and skip identical captions, the loss falls on fixed data, and the frozen
encoders need local weights. Images: scikit-learn's handwritten digits, captions made from their labels."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimkit.core import build_method
from mimkit.core.errors import ConfigError, DataError

WORDS = "zero one two three four five six seven eight nine".split()
CLIP = dict(clip_model="vit_tiny_patch16_224", clip_kwargs=dict(patch_size=8, depth=2, embed_dim=48, num_heads=2),
            allow_random_encoders=True)
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, **CLIP, num_queries=4, query_width=32,
            query_depth=1, query_num_heads=2, text_width=32, text_depth=1, text_num_heads=2, context_length=16,
            fusion_depth=1, caption_depth=1, projection_dim=16, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=2)


def digit_pairs(count: int, size: int = 32, seed: int = 0) -> dict:
    """scikit-learn's 8 x 8 handwritten digits (upsampled, RGB) with a caption made from each label."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    index = np.random.default_rng(seed).choice(len(digits.images), count, replace=False)
    images = torch.tensor(digits.images[index] / 16.0, dtype=torch.float32)[:, None]
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return {"image": images, "text": [f"a handwritten digit {WORDS[k]}" for k in digits.target[index]]}


def tiny(**extra):
    torch.manual_seed(0)
    return build_method("xformer", **{**TINY, **extra})


def test_both_frozen_encoders_get_no_gradient_and_stay_unchanged():
    model, batch = tiny(), digit_pairs(4)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()
              if name.startswith(("encoder.mae.", "encoder.clip."))}
    assert frozen and not any(p.requires_grad for n, p in model.named_parameters() if n in frozen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # all parameters handed over: frozen ones must not move
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(batch).loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    assert all(params[n].grad is None for n in frozen)
    assert all(torch.equal(params[n], value) for n, value in frozen.items())
    assert not model.encoder.mae.training and not model.encoder.clip.training  # no dropout / drop-path in them
    trained = [p for n, p in params.items() if n.startswith("encoder.") and n not in frozen]
    assert all(p.grad is not None for p in trained) and any(p.grad.abs().sum() > 0 for p in trained)


@pytest.mark.parametrize("num_queries", [1, 4, 7])
def test_the_output_is_one_token_per_query(num_queries):
    model = tiny(num_queries=num_queries).eval()
    with torch.no_grad():
        tokens = model.encoder.forward_features(digit_pairs(3)["image"])
        pooled = model.encoder(digit_pairs(3)["image"])
    assert tokens.shape == (3, num_queries, 32)  # 16 MAE patches, 17 CLIP tokens: still one token per query
    assert pooled.shape == (3, 32)


def test_reconstruction_reads_the_queries():
    model, batch = tiny().eval(), digit_pairs(3)
    torch.manual_seed(0)
    with torch.no_grad():
        before = model.reconstruction(batch["image"], None)[1]
        model.encoder.queries.add_(torch.randn_like(model.encoder.queries))
    torch.manual_seed(0)  # the same mask
    with torch.no_grad():
        after = model.reconstruction(batch["image"], None)[1]
    assert not torch.allclose(before, after)
    assert model.reconstruction(batch["image"], None)[2].sum(1).eq(12).all()  # MAE's 75% of 16 patches


def test_hard_negatives_follow_the_similarities_and_skip_identical_captions(monkeypatch):
    model, batch = tiny(), digit_pairs(3)
    texts = ["a digit one", "a digit two", "a digit one"]
    tokens = model.tokenizer(texts)
    queries = torch.randn(3, 4, 32)
    text = torch.randn(3, 16, 32)
    similarity = torch.tensor([[0.0, 5.0, -5.0], [-5.0, 0.0, 5.0], [5.0, -5.0, 0.0]])
    seen = {}
    original = model.matching_logits
    monkeypatch.setattr(model, "matching_logits", lambda t, v, q, e: seen.update(text=t, queries=q) or original(
        t, v, q, e))
    torch.manual_seed(0)
    model.matching(queries, text, tokens, texts, similarity)
    negative_text, negative_queries = seen["text"][3:6], seen["queries"][6:9]
    # image 0: its own caption (0) and the same text (2) are excluded, so caption 1; image 1: caption 2 (e^10)
    assert torch.equal(negative_text[0], text[1]) and torch.equal(negative_text[2], text[1])
    assert torch.equal(negative_text[1], text[2])
    assert torch.equal(negative_queries[1], queries[0])  # caption 1: image 0 is e^10 times likelier than image 2


def test_loss_falls_on_fixed_data(fixed_batch_training):
    model, batch = tiny(), digit_pairs(6)
    run = fixed_batch_training(model, batch, steps=15, lr=5e-3, reseed=4)
    assert run.last(3) < 0.85 * run.first(3)
    for part in ("itc", "itg", "reconstruction"):
        assert run.last(3, part) < run.first(3, part), part


def test_frozen_encoders_need_local_weights_and_batches_need_captions():
    with pytest.raises(ConfigError, match="mae_weights, clip_weights"):
        build_method("xformer", **{**TINY, "allow_random_encoders": False})
    with pytest.raises(DataError, match=r"batch\['text'\]"):
        tiny()({"image": torch.rand(2, 3, 32, 32)})


def test_without_captions_evaluation_runs_the_reconstruction_alone():
    model, batch = tiny().eval(), digit_pairs(2)
    with torch.no_grad():
        out = model({"image": batch["image"]})
    assert set(out.parts) == {"reconstruction"}
    assert model.reconstruct({"image": batch["image"]}, out).shape == batch["image"].shape
    assert model.encoder.patch_size == (8, 8) and model.encoder.img_size == (32, 32)


def test_the_recipe_holds_the_methods_defaults():
    from pathlib import Path

    import yaml

    from mimkit.core.registry import method_arguments

    recipe = yaml.safe_load((Path(__file__).parents[2] / "multimodal" / "recipes" / "xformer.yaml").read_text())
    assert recipe["method"] == "xformer"
    defaults = method_arguments("xformer")
    model = {**{f"encoder.{k}": v for k, v in recipe["model"].pop("encoder").items()}, **recipe["model"]}
    assert {key: defaults[key] for key in model} == model  # every key is an argument, at its default
