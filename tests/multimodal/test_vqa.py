"""M3AE's downstream heads (multimodal/vqa.py): VQA as answer classification with open and closed accuracy taken
from each question's answer type, the head predicting among the training answers, and a learnable case fine-tuned
above chance; image + caption classification. Images: scikit-learn's digits (real pixels)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimkit.benchmarks.runner import run_task
from mimkit.benchmarks.tasks import get_task
from mimkit.core import build_method
from mimkit.core.errors import ConfigError

TINY = dict(encoder=dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2), text_width=32,
            text_depth=1, text_num_heads=2, hidden_size=32, fusion_layers=1, fusion_num_heads=2, context_length=16,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, mim_layer=1)
CONFIG = {"method": "m3ae", "model": TINY}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from mimkit.multimodal.synthetic import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"), count=120, size=32)


def tiny():
    torch.manual_seed(0)
    return build_method("m3ae", **TINY)


def test_open_and_closed_accuracy_follow_each_questions_answer_type(digits):
    from mimkit.multimodal.vqa import vqa_accuracy

    train, test = get_task("synthetic-digits-vqa").load(digits, img_size=32, in_chans=1)
    kinds = {q: t for q, t in zip(test.questions, test.answer_types)}
    assert kinds == {"which digit is shown?": "open", "is the digit even?": "closed"}
    labels = np.asarray(test.targets)
    closed = np.asarray(test.answer_types) == "closed"
    right_on_closed_only = np.where(closed, labels, (labels + 1) % len(train.answers))
    result = vqa_accuracy(right_on_closed_only, labels, test.answer_types)
    assert result["closed_accuracy"] == 1.0 and result["open_accuracy"] == 0.0
    assert result["num_open"] + result["num_closed"] == len(test) and result["accuracy"] == closed.mean()
    # an answer the training split never gave is wrong whatever is predicted
    assert vqa_accuracy([0, 0], [-1, 0], ["open", "closed"]) == {"accuracy": 0.5, "open_accuracy": 0.0,
                                                                  "num_open": 1, "closed_accuracy": 1.0,
                                                                  "num_closed": 1}


def test_the_head_predicts_among_the_training_answers_with_the_official_loss(digits):
    from mimkit.multimodal.vqa import VisionLanguageClassifier, classifier_loss

    train, test = get_task("synthetic-digits-vqa").load(digits, img_size=32, in_chans=1)
    assert set(train.answers) <= {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                                  "yes", "no"} and {"yes", "no"} <= set(train.answers)
    assert test.answers == train.answers  # the test split is scored against the training answers
    model = VisionLanguageClassifier(tiny(), len(train.answers))
    batch = {"image": torch.stack([test[i]["image"] for i in range(4)]), "text": test.questions[:4]}
    assert model(batch).shape == (4, len(train.answers))
    logits, labels = torch.randn(4, 12), torch.tensor([0, 3, 11, 5])
    expected = F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, 12).float()) * 12
    assert torch.allclose(classifier_loss(logits, labels, "bce"), expected)
    with pytest.raises(ConfigError, match="m3ae"):
        VisionLanguageClassifier(torch.nn.Linear(2, 2), 3)


def test_a_learnable_vqa_set_is_answered_above_chance(tmp_path):
    """Zeros and ones (distinct to a small ViT), two questions whose answers follow the digit and the question."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    (tmp_path / "images").mkdir()
    questions = []
    for i in np.flatnonzero(digits.target < 2)[:120]:
        name = f"images/{i}.png"
        Image.fromarray((digits.images[i] * 15).astype(np.uint8)).resize((32, 32), Image.BICUBIC).save(
            tmp_path / name)
        label = int(digits.target[i])
        questions += [{"image_name": name, "question": "which digit is shown?", "answer": ["zero", "one"][label],
                       "answer_type": "OPEN"},
                      {"image_name": name, "question": "is the digit even?", "answer": ["yes", "no"][label],
                       "answer_type": "CLOSED"}]
    (tmp_path / "vqa_train.json").write_text(json.dumps(questions[:160]))
    (tmp_path / "vqa_test.json").write_text(json.dumps(questions[160:]))
    row = run_task("synthetic-digits-vqa", tiny(), tmp_path, run_config=CONFIG, max_steps=60, batch_size=32,
                   lr=2e-3)[0]
    details = row["details"]
    # chance is 1/2 per question type (1/4 among the four answers); the untrained head sits near it
    assert details["num_answers"] == 4 and details["num_open"] == details["num_closed"] == 40
    assert details["open_accuracy"] >= 0.8 and details["closed_accuracy"] >= 0.8, details


def test_caption_classification_reads_the_label_column(digits):
    from mimkit.multimodal.vqa import LabelledCaptions

    train, test = get_task("synthetic-digits-caption-classification").load(digits, img_size=32, in_chans=1)
    assert isinstance(train, LabelledCaptions) and test.classes == train.classes
    assert train.classes == sorted(train.classes, key=int)
    for i in range(5):
        sample = train[i]
        assert train.classes[sample["label"]] in ("0123456789") and sample["text"] == train.texts[i]
        digit = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][
            int(train.classes[sample["label"]])]
        assert digit in sample["text"]  # the label is the one the caption was written from
    with pytest.raises(ConfigError, match="no label column 'diagnosis'"):
        get_task("synthetic-digits-caption-classification").load(digits, img_size=32, in_chans=1,
                                                                label_column="diagnosis")


@pytest.fixture(scope="module")
def m3ae_run(digits, tmp_path_factory):
    import yaml

    from mimkit.multimodal.cli import main

    folder = tmp_path_factory.mktemp("m3ae")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({"method": "m3ae", "model": TINY}))
    run = folder / "run"
    assert main(["pretrain", "--method", "m3ae", "--config", str(config), "--data", str(digits / "captions_train.csv"),
                 "--out", str(run), "--max-steps", "2", "--batch-size", "8", "--num-workers", "0",
                 "--no-progress"]) == 0
    return run


def test_finetune_and_evaluate_run_the_vqa_task_of_an_m3ae_run(digits, m3ae_run, tmp_path, capsys):
    from mimkit.multimodal.cli import main

    capsys.readouterr()
    for command, strategy in (("finetune", "trainable"), ("evaluate", "frozen")):
        assert main([command, "--run", str(m3ae_run), "--data", str(digits), "--task", "synthetic-digits-vqa",
                     "--max-steps", "2", "--batch-size", "8", "--out", str(tmp_path / command)]) == 0
        printed = capsys.readouterr().out
        assert "synthetic-digits-vqa" in printed and "open_accuracy" in printed
        row = json.loads((tmp_path / command / "metrics.json").read_text())["results"][-1]
        assert row["settings"]["strategy"] == strategy and row["details"]["steps"] == 2
        assert row["details"]["num_open"] == row["details"]["num_closed"] == 30
    # only finetune keeps its classifier
    assert not (tmp_path / "evaluate" / "classifiers").exists()


@pytest.mark.parametrize("task", ["synthetic-digits-vqa", "synthetic-digits-caption-classification"])
def test_finetune_keeps_a_vqa_or_caption_classifier_that_scores_the_same_when_reloaded(digits, m3ae_run, tmp_path,
                                                                                        task, capsys):
    import csv

    from mimkit.core.errors import ConfigError as Error
    from mimkit.core.runs import read_config
    from mimkit.multimodal.bench import load_classifier
    from mimkit.multimodal.cli import main
    from mimkit.multimodal.vqa import load_vision_language_classifier, predict, score_vision_language_classifier

    out = tmp_path / "ft"
    assert main(["finetune", "--run", str(m3ae_run), "--data", str(digits), "--task", task, "--max-steps", "6",
                 "--batch-size", "8", "--lr", "2e-3", "--out", str(out)]) == 0
    trained = json.loads((out / "metrics.json").read_text())["results"][-1]
    folder = out / "classifiers" / task
    stored = read_config(folder)
    info = stored["classifier"]
    is_vqa = task.endswith("vqa")
    train, test = get_task(task).load(digits, img_size=32, in_chans=1)
    assert info["kind"] == ("vqa" if is_vqa else "caption-classification") and info["task"] == task
    assert info["classes"] == (train.answers if is_vqa else train.classes)  # in the head's order
    assert stored["method"] == "m3ae" and stored["model"]["text_width"] == 32
    # predictions.csv: one row per test sample; its predictions are the finetune run's accuracy
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(test) == trained["num_test"]
    right = np.mean([r["predicted"] == r["label"] for r in rows])
    assert round(100 * right, 2) == trained["value"]
    if is_vqa:
        assert {r["answer_type"] for r in rows} == {"open", "closed"} and all(r["question"] for r in rows)
    # reloaded: the same predictions as the ones written, and evaluate --run FOLDER scores it as it is
    model, _ = load_vision_language_classifier(folder)
    again = score_vision_language_classifier(folder, digits)
    names = info["classes"]
    assert [names[p] for p in again["predicted"]] == [r["predicted"] for r in rows]
    assert [names[p] for p in predict(model, test)] == [r["predicted"] for r in rows]
    capsys.readouterr()
    assert main(["evaluate", "--run", str(folder), "--data", str(digits), "--out", str(tmp_path / "ev")]) == 0
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())["results"][-1]
    assert scored["value"] == trained["value"] and scored["init"] == "fine-tuned (saved)"
    with pytest.raises(Error, match="not an image \\+ table one"):
        load_classifier(folder)
    # a head file that is not this classifier's: named, not a torch traceback
    import shutil

    from safetensors.torch import save_file

    from mimkit.core.errors import CheckpointError

    hostile = tmp_path / "hostile"
    shutil.copytree(folder, hostile)
    save_file({"0.weight": torch.zeros(3, 3)}, str(hostile / "head.safetensors"))
    with pytest.raises(CheckpointError, match="hostile/head.safetensors: not the head config.yaml describes"):
        load_vision_language_classifier(hostile)
    (hostile / "head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="head.safetensors"):
        load_vision_language_classifier(hostile)
    # its class probabilities through embed, on an image + text file (the caption file's images and texts)
    assert main(["embed", "--run", str(folder), "--data", str(digits / "captions_test.csv"), "--kind",
                 "probabilities", "--out", str(tmp_path / "p.safetensors")]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "p.safetensors"), "pt") as f:
        probabilities = f.get_tensor("embeddings")
        assert json.loads(f.metadata()["classes"]) == names
    assert probabilities.shape[1] == len(names) and torch.allclose(probabilities.sum(1), torch.ones(len(probabilities)))


def test_embed_writes_image_text_and_fused_vectors_of_an_m3ae_run(digits, m3ae_run, tmp_path, capsys):
    from safetensors import safe_open

    from mimkit.core.runs import load_run
    from mimkit.multimodal.cli import main
    from mimkit.multimodal.data import ImageTextDataset

    data = digits / "captions_test.csv"
    vectors = {}
    for kind in ("image", "text", "multimodal"):
        assert main(["embed", "--run", str(m3ae_run), "--data", str(data), "--kind", kind,
                     "--out", str(tmp_path / f"{kind}.safetensors")]) == 0
        with safe_open(str(tmp_path / f"{kind}.safetensors"), "pt") as f:
            vectors[kind] = f.get_tensor("embeddings")
    method, config = load_run(m3ae_run)
    rows = ImageTextDataset(data, img_size=32, in_chans=1, mean=config["data"]["mean"], std=config["data"]["std"])
    assert [v.shape for v in vectors.values()] == [(len(rows), 32), (len(rows), 32), (len(rows), 64)]
    # the text vector reads only the text: rows with the same caption get the same vector, others differ
    texts = rows.texts
    same = [(i, j) for i in range(len(texts)) for j in range(i) if texts[i] == texts[j]]
    other = [(i, j) for i in range(len(texts)) for j in range(i) if texts[i] != texts[j]]
    assert same and other
    assert all(torch.allclose(vectors["text"][i], vectors["text"][j], atol=1e-5) for i, j in same[:20])
    assert not any(torch.allclose(vectors["text"][i], vectors["text"][j], atol=1e-5) for i, j in other[:20])
    # the fused vector is the method's multimodal_features of image and text (normalised with the run's statistics)
    method.eval()
    batch = {"image": torch.stack([rows[i]["image"] for i in range(4)]), "text": texts[:4]}
    with torch.no_grad():
        assert torch.allclose(vectors["multimodal"][:4], method.multimodal_features(batch["image"], batch["text"]),
                              atol=1e-5)
        assert torch.allclose(vectors["image"][:4], method.encoder.forward_features(batch["image"])[:, 0], atol=1e-5)
    capsys.readouterr()
    assert main(["embed", "--run", str(m3ae_run), "--data", str(data), "--kind", "table",
                 "--out", str(tmp_path / "t.safetensors")]) == 2
    assert "is an image + text run (m3ae): --kind multimodal, image, text" in capsys.readouterr().err
    assert not (tmp_path / "t.safetensors").exists()
