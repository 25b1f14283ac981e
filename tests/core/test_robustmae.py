"""RobustMAE: band-limited frequency prompts, nearest-prototype selection, k-means prototypes, L-inf PGD robust
accuracy. Real pixels: scikit-learn's `digits` (1,797 8x8 handwritten digits, sklearn/datasets/data/digits.csv.gz)."""
import json

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from mimkit.core import build_method
from mimkit.core.adversarial import clean_and_robust_accuracy, pgd_linf, robustness
from mimkit.core.cli import main
from mimkit.core.prompts import FrequencyPrompts, Prototypes, band_mask, kmeans_prototypes, radial_frequency
from mimkit.core.registry import method_arguments

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, num_prompts=3)


def build(**kwargs):
    torch.manual_seed(0)
    return build_method("robustmae", **{**TINY, **kwargs})


@pytest.fixture(scope="module")
def digits():
    """(N, 1, 8, 8) digit images in [0, 1] and their labels."""
    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32)[:, None] / 16, torch.tensor(d.target)


def test_registered_with_maes_defaults():
    args = method_arguments("robustmae")
    assert args["mask_ratio"] == 0.75 and args["norm_pix_loss"] is True and tuple(args["prompt_band"]) == (0.125, 1.0)


def test_the_prompts_spectral_energy_lies_in_the_band():
    prompts = FrequencyPrompts(4, 3, (32, 32), band=(0.125, 0.3), init_std=1.0)
    spatial = prompts.spatial().detach()
    assert spatial.shape == (4, 3, 32, 32) and spatial.abs().max() > 0
    energy = torch.fft.rfft2(spatial, norm="ortho").abs() ** 2
    inside = band_mask((32, 32), (0.125, 0.3)).bool()
    assert float(energy[..., ~inside].sum()) < 1e-8 * float(energy[..., inside].sum())
    assert torch.allclose(spatial.mean((2, 3)), torch.zeros(4, 3), atol=1e-6)  # no DC: the mean is untouched
    r = radial_frequency((32, 32))
    assert float(r[0, 0]) == 0 and float(r.max()) == pytest.approx(0.5 * 2 ** 0.5)
    # a method's prompts, after training steps, still sit in their band
    model = build()
    batch = {"image": torch.rand(4, 3, 32, 32)}
    opt = torch.optim.SGD(model.prompts.parameters(), lr=10.0)
    for _ in range(3):
        opt.zero_grad()
        model(batch).loss.backward()
        opt.step()
    energy = torch.fft.rfft2(model.prompts.spatial().detach(), norm="ortho").abs() ** 2
    assert float(energy[..., ~model.prompts.mask.bool()].sum()) < 1e-8 * float(energy.sum())


def test_the_nearest_prototype_picks_the_prompt():
    model = build().eval()
    images = torch.rand(3, 3, 32, 32)
    features = torch.randn(3, 32)
    model.prototypes.centres.copy_(features[[2, 0, 1]] + 0.01)  # image i is nearest to prototype (i + 1) % 3
    model.prototypes.counts.fill_(1)
    model.features = lambda x: features
    assert model.select(images).tolist() == [1, 2, 0]
    added = model.prompt(images) - images
    spatial = model.prompts.spatial().detach()
    for i, k in enumerate([1, 2, 0]):
        assert torch.allclose(added[i], spatial[k], atol=1e-6)


def test_kmeans_prototypes_find_the_clusters_and_online_means_follow_the_data():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centres])
    found, counts = kmeans_prototypes(points, 3)
    assert sorted(counts.tolist()) == [20, 20, 20]
    assert torch.cdist(found, centres).min(0).values.max() < 0.1
    online = Prototypes(3, 2)
    online.assign(points[::2], update=True)  # seeds then updates: every centre is the mean of its members
    online.assign(points[1::2], update=True)
    index = online.assign(points)
    for k in range(3):
        assert torch.allclose(online.centres[k], points[index == k].mean(0), atol=1e-5)
    assert online.counts.sum() == 60


def test_pgd_raises_the_loss_within_epsilon_and_robust_accuracy_falls(digits):
    images, labels = digits
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 10)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(head(images.flatten(1)), labels).backward()
        opt.step()
    head.requires_grad_(False)
    classify = lambda x: head(x.flatten(1))  # noqa: E731
    test_x, test_y = images[:300], labels[:300]
    adv = pgd_linf(classify, test_x, test_y, epsilon=0.1, steps=10, step_size=0.02,
                   generator=torch.Generator().manual_seed(0))
    assert float((adv - test_x).abs().max()) <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    per_clean = F.cross_entropy(classify(test_x), test_y, reduction="none")
    per_adv = F.cross_entropy(classify(adv), test_y, reduction="none")
    assert (per_adv > per_clean).float().mean() > 0.95  # nearly every perturbed input really raises its loss
    scores = clean_and_robust_accuracy(classify, test_x, test_y, epsilon=0.1, steps=10, step_size=0.02)
    assert scores["clean_accuracy"] > 90 and scores["robust_accuracy"] < scores["clean_accuracy"] - 30
    assert scores["robust_loss"] > scores["clean_loss"]
    none = clean_and_robust_accuracy(classify, test_x, test_y, epsilon=0.0, steps=1, step_size=0.01)
    assert none["robust_accuracy"] == none["clean_accuracy"]


def test_robustness_reports_plain_and_prompted_pipelines(digits):
    images, labels = digits
    x = F.interpolate(images[:60], size=(32, 32), mode="bilinear").repeat(1, 3, 1, 1)
    model = build()
    model.fit_prototypes(model.features((x - 0.5) / 0.25))
    out = robustness(model, x[:40], labels[:40], x[40:], labels[40:60], [0.5] * 3, [0.25] * 3, epochs=2,
                     epsilon=8 / 255, steps=2, step_size=4 / 255)
    assert set(out) == {"plain", "prompted"}
    for scores in out.values():
        assert scores["robust_loss"] > scores["clean_loss"] and 0 <= scores["robust_accuracy"] <= 100


def test_loss_falls_on_fixed_data_and_the_prompts_learn(fixed_batch_training):
    model = build()
    before = model.prompts.spatial().detach().clone()
    batch = {"image": torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))}
    run = fixed_batch_training(model, batch, steps=50, lr=3e-3, reseed=1)
    assert run.last() < 0.85 * run.first()
    assert not torch.allclose(model.prompts.spatial().detach(), before)


def test_a_frozen_encoder_learns_only_prompts_and_decoder():
    model = build(freeze_encoder=True)
    model({"image": torch.rand(4, 3, 32, 32)}).loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.prompts.real.grad is not None and model.prompts.real.grad.abs().sum() > 0


def test_pretrain_from_the_command_line(tmp_path, make_pngs):
    folder = make_pngs(tmp_path / "images", 8, channels=3)
    run = tmp_path / "run"
    assert main(["pretrain", "--method", "robustmae", "--data", str(folder), "--out", str(run), "--img-size", "32",
                 "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--batch-size", "4",
                 "--num-workers", "0", "--no-progress", "--accelerator", "cpu", "--max-steps", "2",
                 "--set", "decoder_embed_dim=32", "--set", "decoder_depth=1", "--set", "decoder_num_heads=2",
                 "--set", "num_prompts=2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "robustmae" and metrics["train"]["steps"] == 2
