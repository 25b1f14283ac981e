"""The image + table benchmark (TIP's missing patterns on both splits, accuracy and AUC from the last weights) and
`mimkit-multimodal`: pretrain on a table writes its preprocessing, evaluate / embed reuse it."""
import json

import numpy as np
import pytest
import torch
import yaml

from mimkit.benchmarks.tasks import get_task, list_tasks
from mimkit.core import build_method
from mimkit.core.errors import ConfigError

TINY = dict(image_encoder="vit", encoder=dict(img_size=16, patch_size=8, in_chans=1, embed_dim=32, depth=1,
                                              num_heads=2),
            tabular_embed_dim=32, tabular_depth=1, multimodal_embed_dim=32, multimodal_depth=1, tabular_num_heads=2,
            projection_dim=16)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from mimkit.multimodal.synthetic import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"), count=160, size=16)


def test_every_pattern_and_rate_is_a_registered_task():
    names = {t.name for t in list_tasks("multimodal")}
    for prefix in ("image-table", "synthetic-digits-table"):
        assert f"{prefix}-complete" in names
        for pattern in ("value", "feature", "most-important", "least-important"):
            assert {f"{prefix}-{pattern}-{rate}" for rate in (0.3, 0.6, 0.9)} <= names
    task = get_task("image-table-feature-0.6")
    assert task.settings["pattern"] == "feature" and task.settings["rate"] == 0.6 and task.metric == "accuracy"


def test_missing_patterns_apply_to_both_splits_as_tip_does(digits):
    from mimkit.multimodal.bench import apply_missing

    task = get_task("synthetic-digits-table-complete")
    train, test = task.load(digits, img_size=16, in_chans=1)
    assert train.classes == [str(d) for d in range(10)] and test.preprocessor is train.preprocessor
    a, b, info = apply_missing(train, test, "feature", 0.3, seed=0)
    hidden = a.extra_missing.all(0)
    assert hidden.sum() == int(0.3 * train.missing.shape[1]) and torch.equal(hidden, b.extra_missing.all(0))
    assert info["hidden_columns"] == [n for n, h in zip(train.preprocessor.names, hidden) if h]
    assert all(a[i]["tabular_missing"][hidden].all() for i in range(3))
    a, b, _ = apply_missing(train, test, "most_important", 0.3, seed=0)
    ranked = a.extra_missing[0]
    # the forest ranks the label-linked or measured columns above the pure-noise ones
    assert not ranked[train.preprocessor.names.index("noise")] and not ranked[train.preprocessor.names.index("site")]
    a, b, _ = apply_missing(train, test, "value", 0.6, seed=0)
    assert a.extra_missing.float().mean().item() == pytest.approx(0.6, abs=0.01)
    assert not torch.equal(a.extra_missing[:len(b)], b.extra_missing)  # drawn per split


def test_run_task_scores_accuracy_and_auc_for_each_input_and_random_init(digits):
    from mimkit.benchmarks.runner import run_task

    task = get_task("synthetic-digits-table-complete")
    train, _ = task.load(digits, img_size=16, in_chans=1)
    model = {**TINY, "categorical_sizes": train.preprocessor.categorical_sizes,
             "num_continuous": train.preprocessor.num_continuous}
    torch.manual_seed(0)
    method = build_method("tip", **model)
    config = {"method": "tip", "model": model}
    rows = run_task("synthetic-digits-table-value-0.3", method, digits, run_config=config, compare_random_init=True,
                    max_steps=4, batch_size=16)
    assert [r["init"] for r in rows] == ["pretrained", "random"]
    for row in rows:
        assert 0 <= row["value"] <= 100 and 0 <= row["details"]["auc"] <= 1 and row["details"]["steps"] == 4
        assert row["details"]["missing_rate"] == 0.3 and row["settings"]["strategy"] == "trainable"
    table = run_task("synthetic-digits-table-complete", method, digits, run_config=config, inputs="table",
                     max_steps=2, batch_size=16, strategy="frozen")[0]
    assert table["settings"]["inputs"] == "table" and table["settings"]["strategy"] == "frozen"
    with pytest.raises(ConfigError, match="frozen .* or trainable"):
        run_task("synthetic-digits-table-complete", method, digits, run_config=config, strategy="partial")


def test_a_frozen_backbone_learns_only_its_head(digits):
    from mimkit.multimodal.bench import TableImageClassifier

    method = build_method("tip", **{**TINY, "categorical_sizes": [2, 2, 3], "num_continuous": 7})
    model = TableImageClassifier(method, 10, "multimodal", frozen=True).train()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    assert not model.backbone.training                      # batch norms and dropout as they are
    assert model.head.in_features == 32


def test_the_ensemble_head_averages_an_image_a_table_and_a_multimodal_head(digits):
    from mimkit.core.data import make_loader
    from mimkit.multimodal.bench import TableImageClassifier

    train, _ = get_task("synthetic-digits-table-complete").load(digits, img_size=16, in_chans=1)
    torch.manual_seed(0)
    method = build_method("tip", **{**TINY, "categorical_sizes": train.preprocessor.categorical_sizes,
                                    "num_continuous": train.preprocessor.num_continuous}).eval()
    model = TableImageClassifier(method, 10, "ensemble").eval()
    batch = next(iter(make_loader(train, 4)))
    with torch.no_grad():
        vectors = [model.backbone.embed(batch, kind) for kind in ("image", "table", "multimodal")]
        expected = (model.head.image(vectors[0]) + model.head.table(vectors[1]) + model.head.multimodal(vectors[2])) / 3
        assert torch.allclose(model(batch), expected, atol=1e-6)
    assert model.head.dims == (32, 32, 32) and method.embed_dims["ensemble"] == 96


@pytest.fixture(scope="module")
def tiny_run(digits, tmp_path_factory):
    """A 3-step `mimkit-multimodal pretrain` run of a tiny TIP on the digits table."""
    from mimkit.multimodal.cli import main

    folder = tmp_path_factory.mktemp("tip-run")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({"method": "tip", "model": TINY}))
    run = folder / "run"
    assert main(["pretrain", "--config", str(config), "--data", str(digits / "train.csv"), "--target", "digit",
                 "--out", str(run), "--max-steps", "3", "--batch-size", "16", "--num-workers", "0",
                 "--no-progress", "--data.crop_scale", "[0.7, 1.0]"]) == 0
    return run


def test_cli_pretrain_writes_the_preprocessing_and_embed_and_evaluate_reuse_it(digits, tiny_run, tmp_path, capsys):
    from mimkit.multimodal.cli import main

    run = tiny_run
    stored = yaml.safe_load((run / "config.yaml").read_text())
    columns = stored["data"]["preprocessing"]["columns"]
    assert [c["name"] for c in columns][:3] == ["parity", "closed_loop", "site"] and "digit" not in \
        [c["name"] for c in columns]
    kinds = [c["kind"] for c in columns]
    assert stored["model"]["categorical_sizes"] == [len(c["vocabulary"]) for c in columns if c["kind"] == "categorical"]
    assert stored["model"]["num_continuous"] == kinds.count("continuous") >= 5
    assert json.loads((run / "tabular.json").read_text())["columns"] == columns
    out = tmp_path / "table.safetensors"
    assert main(["embed", "--run", str(run), "--data", str(digits / "test.csv"), "--out", str(out),
                 "--kind", "table"]) == 0
    from safetensors import safe_open

    with safe_open(str(out), "pt") as handle:
        assert handle.get_tensor("embeddings").shape == (40, 32)
        assert len(json.loads(handle.metadata()["images"])) == 40
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(digits), "--task", "synthetic-digits-table-complete",
                 "--max-steps", "2", "--batch-size", "16"]) == 0
    assert "synthetic-digits-table-complete" in capsys.readouterr().out
    results = json.loads((run / "metrics.json").read_text())["results"]
    assert results[-1]["settings"]["strategy"] == "frozen" and results[-1]["auc"] is not None


def test_finetune_keeps_its_classifier_and_a_reloaded_one_predicts_the_same(digits, tiny_run, tmp_path, capsys):
    from safetensors import safe_open

    from mimkit.core.runs import load_run
    from mimkit.multimodal.bench import load_classifier, score_classifier
    from mimkit.multimodal.cli import main

    name, out = "synthetic-digits-table-value-0.3", tmp_path / "tuned"
    assert main(["finetune", "--run", str(tiny_run), "--data", str(digits), "--task", name, "--max-steps", "3",
                 "--batch-size", "16", "--out", str(out)]) == 0
    row = json.loads((out / "metrics.json").read_text())["results"][-1]
    folder = out / "classifiers" / name
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "head.safetensors", "config.yaml",
                                                  "predictions.csv"}
    stored = yaml.safe_load((folder / "config.yaml").read_text())
    assert stored["data"]["preprocessing"]["target"] == "digit"
    assert stored["classifier"]["classes"] == [str(d) for d in range(10)] and stored["classifier"]["rate"] == 0.3
    # reloaded: the fine-tuned backbone (not the pretrained one), the same test probabilities and accuracy
    model, _ = load_classifier(folder)
    pretrained, _ = load_run(tiny_run)
    assert not torch.equal(model.backbone.tabular.cls_token, pretrained.tabular.cls_token)
    written = np.loadtxt(folder / "predictions.csv", delimiter=",", skiprows=1, usecols=range(3, 13))
    again = score_classifier(folder, digits)  # the same cells missing as in fine-tuning (same pattern and seed)
    assert np.allclose(again["probabilities"], written, atol=1e-5)
    assert round(100 * again["accuracy"], 2) == row["value"]
    capsys.readouterr()
    assert main(["evaluate", "--run", str(folder), "--data", str(digits)]) == 0  # as it is: no training
    scored = json.loads((folder / "metrics.json").read_text())["results"][-1]
    assert (scored["value"], scored["auc"], scored["missing_rate"]) == (row["value"], row["auc"], 0.3)
    probabilities_file = tmp_path / "probabilities.safetensors"
    assert main(["embed", "--run", str(folder), "--data", str(digits / "test.csv"), "--out", str(probabilities_file),
                 "--kind", "probabilities"]) == 0
    with safe_open(str(probabilities_file), "pt") as handle:
        probabilities = handle.get_tensor("embeddings").numpy()
        assert json.loads(handle.metadata()["classes"]) == [str(d) for d in range(10)]
    complete = score_classifier(folder, digits, rate=0.0)["probabilities"]  # the table as it is in the file
    assert np.allclose(probabilities, complete, atol=1e-5) and np.abs(probabilities - written).max() > 1e-4
    capsys.readouterr()
    assert main(["embed", "--run", str(tiny_run), "--data", str(digits / "test.csv"), "--out",
                 str(probabilities_file), "--kind", "probabilities"]) != 0
    assert "--kind probabilities needs a classifier folder" in capsys.readouterr().err


def test_recipes_lists_the_four_methods_and_a_printed_one_is_what_pretrain_reads(capsys):
    from mimkit.multimodal.cli import main

    assert main(["recipes"]) == 0
    listed = dict(line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.strip())
    assert listed == {name: "pretrain" for name in ("m3ae", "pigeon", "tip", "xformer")}
    assert main(["recipes", "tip"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["method"] == "tip"
    assert main(["recipes", "mae"]) == 2
    assert "no recipe 'mae'; available: m3ae, pigeon, tip, xformer" in capsys.readouterr().err
