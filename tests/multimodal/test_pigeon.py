"""Pigeon (small): the mask generator keeps the configured share of history tokens and masks the configured
share of target tokens, with hard 0/1 decisions whose gradient reaches the generator through the
straight-through path; training hides the most relevant target tokens; the VQ tokenizer picks nearest codes and
passes gradients to its encoder; the loss falls on fixed data. Images: scikit-learn's handwritten digits, each
target's history made of other digits of the same class."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimkit.core import build_method
from mimkit.core.errors import DataError
from mimkit.multimodal.methods import pigeon as pigeon_module
from mimkit.multimodal.methods.pigeon import HISTORY, TARGET, gumbel_top_k
from mimkit.multimodal.vq import VectorQuantizer

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_codes=64, code_dim=8,
            tokenizer_decoder_dim=32, tokenizer_decoder_depth=1, tokenizer_decoder_heads=2, reconstructor_width=32,
            reconstructor_depth=2, reconstructor_num_heads=2, generator_heads=2)


def digit_histories(count: int, num_history: int = 3, size: int = 32, seed: int = 0) -> dict:
    """Targets from scikit-learn's 8 x 8 digits (upsampled, RGB), each with `num_history` other digits of its class."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(seed)
    pixels = F.interpolate(torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None], size=size,
                           mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    targets = rng.choice(len(digits.images), count, replace=False)
    others = np.arange(len(digits.target))
    histories = [rng.choice(np.flatnonzero((digits.target == digits.target[t]) & (others != t)), num_history,
                            replace=False) for t in targets]
    return {"image": pixels[targets], "history": pixels[np.stack(histories)],
            "label": torch.tensor(digits.target[targets])}


def tiny(**extra):
    torch.manual_seed(0)
    return build_method("pigeon", **{**TINY, **extra})


def generator_inputs(model, batch: int = 4, num_history: int = 3):
    num = model.encoder.num_patches
    codes = torch.randint(0, 64, (batch, (num_history + 1) * num))
    type_ids = torch.full_like(codes, HISTORY)
    type_ids[:, -num:] = TARGET
    positions = (torch.arange(num) + 1).repeat(num_history + 1).expand_as(codes)
    return model.code_embed(codes).detach(), positions, type_ids


@pytest.mark.parametrize("history_ratio,target_ratio", [(0.2, 0.5), (0.5, 0.75), (0.0, 0.1)])
def test_the_kept_shares_are_as_configured_and_decisions_are_hard(history_ratio, target_ratio):
    model = tiny()
    embeds, positions, type_ids = generator_inputs(model)
    keep = model.mask_generator(embeds, positions, type_ids, target_ratio, history_ratio)
    history, target = keep[type_ids == HISTORY].view(4, -1), keep[type_ids == TARGET].view(4, -1)
    assert set(keep.detach().unique().tolist()) <= {0.0, 1.0}
    assert history.sum(1).tolist() == [int(48 * (1 - history_ratio))] * 4  # 3 images x 16 tokens
    assert target.sum(1).tolist() == [max(1, int(16 * (1 - target_ratio)))] * 4


def test_a_forward_pass_keeps_the_configured_share_of_history():
    out = tiny(history_mask_ratio=0.25, target_mask_ratio=0.5)(digit_histories(4))
    assert out.parts["kept_history"].item() == pytest.approx(36 / 48)
    assert out.mask.sum(1).tolist() == [8.0] * 4  # half the target tokens hidden


def test_gradients_reach_the_mask_generator_through_the_straight_through_path(monkeypatch):
    batch = digit_histories(4)

    def generator_gradient(model) -> float:
        model(batch).loss.backward()
        return sum(p.grad.abs().sum().item() for p in model.mask_generator.parameters() if p.grad is not None)

    assert generator_gradient(tiny(target_mask_ratio=0.5)) > 0
    # the same model with the decisions detached (hard only, no straight-through): nothing reaches the generator
    straight_through = pigeon_module.gumbel_top_k
    monkeypatch.setattr(pigeon_module, "gumbel_top_k", lambda *a, **k: straight_through(*a, **k).detach())
    assert generator_gradient(tiny(target_mask_ratio=0.5)) == 0


def test_gumbel_top_k_has_the_soft_draws_gradient_and_follows_the_probabilities():
    torch.manual_seed(0)
    prob = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).repeat(2000, 1).requires_grad_()
    allowed = torch.ones(2000, 4, dtype=torch.bool)
    keep = gumbel_top_k(prob, allowed, mask_ratio=0.5)
    assert keep.sum(1).eq(2).all()
    rates = keep.detach().mean(0)
    assert (rates[:-1] > rates[1:]).all()  # likelier tokens are kept more often
    keep[:, 0].sum().backward()
    assert prob.grad.abs().sum() > 0


def test_training_hides_the_most_relevant_target_tokens_and_inference_the_least(monkeypatch):
    model = tiny().eval()
    # the official 1 - softmax over 16 tokens is nearly flat, so the training bias is weak: many draws
    embeds, positions, type_ids = generator_inputs(model, batch=4000)
    relevance = torch.linspace(-1, 1, 16).repeat(4).expand(4000, -1)  # the same ordering in every image
    monkeypatch.setattr(model.mask_generator, "relevance", lambda *a: relevance)
    torch.manual_seed(0)
    train_keep = model.mask_generator(embeds, positions, type_ids, 0.5, 0.5)[:, -16:]
    infer_keep = model.mask_generator(embeds, positions, type_ids, 0.5, 0.5, inference=True)[:, -16:]
    history_keep = model.mask_generator(embeds, positions, type_ids, 0.5, 0.5)[:, :-16]

    def mean_relevance(keep, kept: bool):
        chosen = keep.detach().bool() if kept else ~keep.detach().bool()
        return relevance[:, :keep.shape[1]][chosen].mean().item()

    assert mean_relevance(train_keep, kept=False) > mean_relevance(train_keep, kept=True)  # hides relevant ones
    assert mean_relevance(infer_keep, kept=False) < mean_relevance(infer_keep, kept=True)
    assert mean_relevance(history_keep, kept=True) > mean_relevance(history_keep, kept=False)


def test_the_quantizer_picks_nearest_codes_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 4)
    features = torch.randn(3, 5, 4, requires_grad=True)
    out = quantizer(features)
    distances = ((features.detach()[..., None, :] - quantizer.codebook.weight.detach()) ** 2).sum(-1)
    assert torch.equal(out.codes, distances.argmin(-1))
    assert torch.allclose(out.vectors, quantizer.codebook.weight[out.codes])
    (out.vectors * torch.arange(4.0)).sum().backward()
    assert torch.allclose(features.grad, torch.arange(4.0).expand(3, 5, 4))  # identity gradient


def test_loss_falls_on_fixed_data(fixed_batch_training):
    model, batch = tiny(generator_dropout=0.0), digit_histories(6)
    run = fixed_batch_training(model, batch, steps=30, lr=3e-3, reseed=4)
    assert run.last(5) < 0.8 * run.first(5)
    for part in ("reconstruction", "tokenizer"):
        assert run.last(5, part) < run.first(5, part), part


def test_a_batch_without_history_is_refused_naming_the_key():
    with pytest.raises(DataError, match=r"batch\['history'\]"):
        tiny()({"image": torch.rand(2, 3, 32, 32)})


def test_the_recipe_holds_the_methods_defaults():
    from pathlib import Path

    import yaml

    from mimkit.core.registry import method_arguments

    recipe = yaml.safe_load((Path(__file__).parents[2] / "multimodal" / "recipes" / "pigeon.yaml").read_text())
    assert recipe["method"] == "pigeon"
    defaults = method_arguments("pigeon")
    model = {**{f"encoder.{k}": v for k, v in recipe["model"].pop("encoder").items()}, **recipe["model"]}
    assert {key: defaults[key] for key in model} == model  # every key is an argument, at its default
