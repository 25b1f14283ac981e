"""Evaluation protocols: weighted kNN, linear probe, fine-tuning with layer-wise lr decay, metrics."""
import pytest
import torch
from sklearn.metrics import roc_auc_score
from timm.layers import DropPath
from torch import nn

from mimkit.core.encoders import build_encoder
from mimkit.core.errors import ConfigError
from mimkit.core.evaluate import classification_metrics, evaluate, extract_features, fit_linear_probe, knn_scores


def tiny_encoder(seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)
    return build_encoder(**{**config, **overrides})




def state(module):
    return {name: value.clone() for name, value in module.state_dict().items()}


def test_knn_is_perfect_on_separated_clusters(patterns):
    result = evaluate(tiny_encoder(), "knn", patterns(80, 1), patterns(80, 2))
    assert result["accuracy"] == 1.0 and result["balanced_accuracy"] == 1.0
    assert result["k"] == 20 and result["num_samples"] == 80


def test_knn_is_at_chance_on_random_labels(patterns):
    train, test = patterns(300, 1, noise=0.1), patterns(300, 2, noise=0.1)
    generator = torch.Generator().manual_seed(3)
    for item in train + test:
        item["label"] = int(torch.randint(4, (1,), generator=generator))
    result = evaluate(tiny_encoder(), "knn", train, test)
    assert 0.15 < result["accuracy"] < 0.35  # chance is 0.25; 300 test samples give a std of 0.025


def test_knn_temperature_weighting_changes_the_vote():
    # One very close neighbour of class 0 against two distant ones of class 1.
    train = torch.tensor([[1.0, 0.05], [0.1, 1.0], [0.1, -1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    weighted = knn_scores(train, labels, test, k=3, temperature=0.07)
    uniform = knn_scores(train, labels, test, k=3, temperature=None)
    assert weighted.argmax(1).item() == 0
    assert uniform.argmax(1).item() == 1
    assert torch.allclose(uniform, torch.tensor([[1.0, 2.0]]))
    closest = torch.nn.functional.cosine_similarity(train[:1], test)
    assert torch.allclose(weighted[:, 0], (closest / 0.07).exp())  # exp(similarity / T)


def test_linear_probe_learns_with_a_frozen_encoder(patterns):
    encoder = tiny_encoder().train()
    before = state(encoder)
    result = evaluate(encoder, "linear", patterns(80, 1), patterns(80, 2))
    assert result["accuracy"] >= 0.95
    assert encoder.training  # mode restored
    after = encoder.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_linear_probe_head_separates_a_linearly_separable_feature_set():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(600, 16, generator=generator)
    direction = torch.randn(16, generator=generator)
    projection = features @ direction
    keep = projection.abs() > 0.5 * direction.norm()  # a margin around the hyperplane; not clustered
    features, labels = features[keep], (projection[keep] > 0).long()
    head = fit_linear_probe(features[:200], labels[:200], batch_size=64, device="cpu")
    with torch.no_grad():
        predicted = head(features).argmax(1)
    assert (predicted[:200] == labels[:200]).all()
    assert (predicted[200:] == labels[200:]).float().mean() >= 0.95
    assert isinstance(head.norm, nn.BatchNorm1d) and not head.norm.affine


def test_linear_probe_is_deterministic_under_a_seed_and_sklearn_agrees(patterns):
    encoder, train, test = tiny_encoder(), patterns(40, 1), patterns(40, 2)
    first = evaluate(encoder, "linear", train, test, epochs=5, seed=7)
    second = evaluate(encoder, "linear", train, test, epochs=5, seed=7)
    assert first == second
    assert evaluate(encoder, "linear", train, test, method="sklearn")["accuracy"] >= 0.95


def test_drop_path_follows_the_linear_rule_on_a_copy(patterns):
    encoder = tiny_encoder(depth=4)
    before = state(encoder)
    model = evaluate(encoder, "finetune", patterns(8, 1), patterns(8, 2), epochs=1, drop_path=0.3,
                     return_model=True)["model"]
    blocks = model.encoder.blocks
    assert isinstance(blocks[0].drop_path1, nn.Identity) and isinstance(blocks[0].drop_path2, nn.Identity)
    for i, expected in [(1, 0.1), (2, 0.2), (3, 0.3)]:
        for module in (blocks[i].drop_path1, blocks[i].drop_path2):
            assert isinstance(module, DropPath) and module.drop_prob == pytest.approx(expected)
    # the original encoder keeps its Identity slots, its final norm and its weights
    assert all(isinstance(b.drop_path1, nn.Identity) and isinstance(b.drop_path2, nn.Identity) for b in encoder.blocks)
    assert isinstance(encoder.norm, nn.LayerNorm) and isinstance(model.encoder.norm, nn.Identity)
    with torch.no_grad():
        model.encoder.blocks[0].attn.qkv.weight.add_(1.0)
    assert all(torch.equal(before[name], value) for name, value in encoder.state_dict().items())


def test_finetune_raises_accuracy_above_chance_and_leaves_the_encoder_alone(patterns):
    encoder = tiny_encoder()
    before = state(encoder)
    train, test = patterns(48, 1), patterns(48, 2)
    untrained = evaluate(encoder, "finetune", train, test, epochs=1, lr=0.0, batch_size=16)
    result = evaluate(encoder, "finetune", train, test, epochs=6, batch_size=16, base_lr=0.1, warmup_epochs=1)
    assert untrained["accuracy"] <= 0.5
    assert result["accuracy"] >= 0.75
    assert result["train_loss"][-1] < result["train_loss"][0]
    assert all(torch.equal(before[name], value) for name, value in encoder.state_dict().items())


def test_macro_auc_matches_sklearn_and_skips_constant_classes():
    labels = torch.tensor([[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0], [1, 0, 1], [0, 0, 1]]).float()
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.4, 0.5, 0.7], [0.3, 0.2, 0.6],
                           [0.2, 0.9, 0.8], [0.8, 0.3, 0.1], [0.5, 0.4, 0.9]])
    metrics = classification_metrics(scores, labels)
    expected = roc_auc_score(labels[:, [0, 2]].numpy(), scores[:, [0, 2]].numpy(), average="macro")
    assert metrics["auc_macro"] == pytest.approx(expected)
    assert metrics["auc_classes_skipped"] == 1 and metrics["auc_classes_used"] == 2


def test_multilabel_linear_probe_reports_auc_and_knn_refuses(patterns):
    train, test = patterns(40, 1), patterns(40, 2)
    for item in train + test:  # multi-hot: "striped" (classes 0, 1) and "has vertical structure" (1, 3)
        label = item["label"]
        item["label"] = torch.tensor([float(label in (0, 1)), float(label in (1, 3))])
    result = evaluate(tiny_encoder(), "linear", train, test, epochs=30)
    assert result["auc_macro"] > 0.95 and result["auc_classes_skipped"] == 0
    with pytest.raises(ConfigError, match="single-label"):
        evaluate(tiny_encoder(), "knn", train, test)


def test_bf16_features_match_fp32(patterns):
    encoder, data = tiny_encoder(), patterns(8, 1)
    full, labels = extract_features(encoder, data, precision="fp32", device="cpu")
    half, _ = extract_features(encoder, data, precision="bf16", device="cpu")
    assert half.dtype == torch.float32 and labels.tolist() == [0, 1, 2, 3] * 2
    assert torch.nn.functional.cosine_similarity(full, half).min() > 0.98


def test_unknown_protocol_and_option_raise_config_error(patterns):
    encoder, data = tiny_encoder(), patterns(8, 1)
    with pytest.raises(ConfigError, match="knn, linear, finetune"):
        evaluate(encoder, "segmentation", data, data)
    with pytest.raises(ConfigError, match="layer_decay"):
        evaluate(encoder, "knn", data, data, layer_decay=0.5)
