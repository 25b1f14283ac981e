"""TIP's defining mechanisms: masked cells alone are scored, a missing cell's value never reaches an output and is
no attention key, hard negatives follow the similarity matrix, the augmented view resamples columns' marginals,
and the loss falls on fixed data."""
import math

import pytest
import torch
import torch.nn.functional as F

from mimkit.core import build_method
from mimkit.core.errors import ConfigError, DataError
from mimkit.multimodal.methods.tip import hard_negatives, reconstruction_loss

TABLE = dict(categorical_sizes=[3, 4], num_continuous=3)
TINY = dict(image_encoder="vit", img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
            tabular_embed_dim=32, tabular_depth=2, multimodal_embed_dim=32, multimodal_depth=1, tabular_num_heads=2,
            projection_dim=16, **TABLE)


def tiny(seed=0, **changes):
    torch.manual_seed(seed)
    return build_method("tip", **{**TINY, **changes})


def batch(b=8, seed=0, missing_rate=0.0):
    g = torch.Generator().manual_seed(seed)
    values = torch.cat([torch.randint(0, 3, (b, 1), generator=g), torch.randint(0, 4, (b, 1), generator=g),
                        torch.randn(b, 3, generator=g)], 1).float()
    return {"image": torch.rand(b, 3, 32, 32, generator=g), "tabular": values,
            "tabular_missing": torch.rand(b, 5, generator=g) < missing_rate}


def test_reconstruction_is_scored_on_masked_cells_only_as_defined():
    g = torch.Generator().manual_seed(1)
    logits, continuous = torch.randn(4, 2, 7, generator=g), torch.randn(4, 3, generator=g)
    target = torch.tensor([[2, 1, 0.5, -1, 2], [0, 3, 1, 1, 1], [1, 0, 0, 0, 0], [2, 2, -2, 3, 1]])
    offsets = torch.tensor([0, 3])
    scored = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]]).bool()
    loss = reconstruction_loss(logits, continuous, target, offsets, scored)
    # from the definition: CE over all 7 categories (column offset added) on scored categorical cells, MSE on scored
    # continuous cells, each a mean over its scored cells, the two averaged
    ce = [F.cross_entropy(logits[i, j][None], (target[i, j].long() + offsets[j])[None])
          for i in range(4) for j in range(2) if scored[i, j]]
    se = [(continuous[i, j] - target[i, 2 + j]) ** 2 for i in range(4) for j in range(3) if scored[i, 2 + j]]
    expected = (torch.stack(ce).mean() + torch.stack(se).mean()) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # an unscored cell's target and prediction do not matter; a scored one's do
    changed_target, changed_logits = target.clone(), logits.clone()
    changed_target[2] = torch.tensor([0, 0, 9, 9, 9])
    changed_logits[0, 1] += 5
    assert reconstruction_loss(changed_logits, continuous, changed_target, offsets, scored).item() == \
        pytest.approx(loss.item(), rel=1e-6)
    changed_target[0, 2] = 7.0
    assert reconstruction_loss(logits, continuous, changed_target, offsets, scored).item() != \
        pytest.approx(loss.item(), rel=1e-3)


def test_a_missing_cells_value_cannot_reach_any_output():
    model = tiny().eval()
    data = batch(4)
    data["tabular_missing"][:, 1] = True       # a categorical column
    data["tabular_missing"][1, 3] = True       # a continuous cell
    changed = {**data, "tabular": data["tabular"].clone()}
    changed["tabular"][:, 1] = 3               # other valid categories
    changed["tabular"][1, 3] = float("nan")    # even a NaN is never read
    with torch.no_grad():
        for kind in ("table", "multimodal"):
            assert torch.equal(model.embed(data, kind), model.embed(changed, kind))
        tokens = model.tabular(data["tabular"], data["tabular_missing"])
        assert torch.equal(tokens, model.tabular(changed["tabular"], changed["tabular_missing"]))
    # the same change to a present cell does change the output
    present = {**data, "tabular": data["tabular"].clone()}
    present["tabular"][1, 2] += 3
    with torch.no_grad():
        assert not torch.allclose(model.embed(data, "multimodal"), model.embed(present, "multimodal"))
    # the loss stays finite with NaN in missing cells, and so do its gradients
    model.train()
    out = model(changed)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                            if p.grad is not None)


def test_hidden_cells_are_no_attention_keys_for_the_other_tokens():
    model = tiny().eval()
    data = batch(3)
    hidden = torch.zeros(3, 5, dtype=torch.bool)
    hidden[:, 4] = True
    with torch.no_grad():
        before = model.tabular(data["tabular"], hidden)
        model.tabular.mask_token.add_(torch.randn_like(model.tabular.mask_token))  # what the hidden token carries
        after = model.tabular(data["tabular"], hidden)
    others = [0, 1, 2, 3, 4]  # CLS and the four present cells (token 5 is the hidden cell)
    assert torch.allclose(before[:, others], after[:, others], atol=1e-6)
    assert not torch.allclose(before[:, 5], after[:, 5])  # the hidden token keeps itself as a key


def test_hard_negatives_follow_the_similarity_matrix_and_never_pick_the_pair():
    torch.manual_seed(0)
    b = 5
    permutation = torch.tensor([3, 0, 4, 1, 2])
    logits = torch.zeros(b, b)
    logits[torch.arange(b), permutation] = 20.0           # image i is most similar to table permutation[i]
    logits[torch.arange(b), torch.arange(b)] = 10.0       # the true pair: never a negative, however similar
    tables, images = hard_negatives(logits)
    assert torch.equal(tables, permutation)
    assert torch.equal(images, permutation.argsort())     # for table j: the image most similar to it
    # over many draws the frequencies are softmax(row) + 1e-4 renormalised without the diagonal
    logits = torch.randn(4, 4) * 2
    draws = torch.stack([hard_negatives(logits)[0] for _ in range(1500)])
    weights = logits.softmax(1) + 1e-4
    weights.fill_diagonal_(0)
    expected = weights / weights.sum(1, keepdim=True)
    for row in range(4):
        counts = torch.bincount(draws[:, row], minlength=4).float() / len(draws)
        assert counts[row] == 0
        assert torch.allclose(counts, expected[row], atol=0.05)


def test_the_augmented_view_resamples_int_0_3_columns_from_the_columns_marginals():
    model = tiny()
    data = batch(16, seed=3)
    torch.manual_seed(5)
    values, missing = model.augment(data["tabular"], data["tabular_missing"])
    changed = values != data["tabular"]
    assert changed.sum(1).max() <= int(5 * 0.3)  # official corruption_rate 0.3 -> int(0.3 x 5) = 1 cell per row
    for column in range(5):  # every value comes from the same column of some row
        assert set(values[:, column].tolist()) <= set(data["tabular"][:, column].tolist())
    cells = model.pick_cells(16, 5, 0.5, "cpu")
    assert (cells.sum(1) == round(5 * 0.5)).all()  # the masked view: round(0.5 x columns) per row


def test_loss_falls_on_fixed_data_and_every_part_learns(fixed_batch_training):
    model = tiny()
    data = batch(16, seed=2, missing_rate=0.1)
    run = fixed_batch_training(model, data, steps=40, lr=3e-3, reseed=4)
    assert run.last() < 0.7 * run.first()
    for part in ("contrastive", "matching", "reconstruction"):
        assert run.last(part=part) < run.first(part=part), part


def test_the_papers_resnet50_image_encoder_and_clear_errors():
    model = tiny(image_encoder="resnet50")
    data = batch(2)
    tokens, vector = model.image_features(data["image"])
    assert tokens.shape == (2, 1, 2048) and vector.shape == (2, 2048)  # 32 px / 32 = one position
    assert torch.isfinite(model(data).loss)
    with pytest.raises(ConfigError, match="categorical_sizes"):
        build_method("tip", **{**TINY, "categorical_sizes": None, "num_continuous": 0})
    with pytest.raises(DataError, match="6 columns"):
        tiny().embed({**data, "tabular": torch.zeros(2, 6), "tabular_missing": torch.zeros(2, 6, dtype=torch.bool)},
                     "table")
    with pytest.raises(DataError, match="at least 2"):
        tiny()({k: v[:1] for k, v in data.items()})
