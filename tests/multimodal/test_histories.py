"""Pigeon's data section: a table of (user, image) interactions read as sliding windows of K history images and the
next one (the official windows of six, five of them history), in the order column's order; bad rows and short users
counted; `mimkit-multimodal pretrain --method pigeon` trains from such a table end to end. Images: scikit-learn's
digits (`synthetic.write_histories`: each user prefers one digit)."""
import json

import pandas as pd
import pytest
import torch
import yaml

from mimkit.core.errors import ConfigError, DataError
from mimkit.multimodal.histories import PreferenceHistoryData, PreferenceHistoryDataset

TINY = dict(encoder=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), num_codes=64, code_dim=8,
            tokenizer_decoder_dim=32, tokenizer_decoder_depth=1, tokenizer_decoder_heads=2, reconstructor_width=32,
            reconstructor_depth=2, reconstructor_num_heads=2, generator_heads=2, generator_dropout=0.0)


@pytest.fixture(scope="module")
def histories(tmp_path_factory):
    from mimkit.multimodal.synthetic import write_histories

    return write_histories(tmp_path_factory.mktemp("histories"), users=6, per_user=8, size=16) / "histories.csv"


def test_windows_are_each_users_consecutive_interactions_in_the_order_columns_order(histories, tmp_path):
    frame = pd.read_csv(histories)
    shuffled = frame.sample(frac=1.0, random_state=0)  # the rows out of order: the step column restores it
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    for path in (histories, tmp_path / "shuffled.csv"):
        dataset = PreferenceHistoryDataset(path, order_column="step", image_root=histories.parent, num_history=5,
                                           img_size=16)
        assert len(dataset) == 6 * (8 - 5)  # per user: windows of six sliding one step over eight interactions
        assert sorted(set(dataset.users)) == [f"user_{u:03d}" for u in range(6)]
        for index in range(len(dataset)):
            user = dataset.users[index]
            first = dataset.users[:index].count(user)  # the user's how-many-th window
            expected = frame[frame.user == user].sort_values("step").image.tolist()[first:first + 6]
            assert [dataset.files[i].relative_to(histories.parent).as_posix()
                    for i in dataset.windows[index]] == expected
    item = dataset[4]
    assert item["history"].shape == (5, 1, 16, 16) and item["image"].shape == (1, 16, 16)
    pixels = [dataset.images(dataset.files[i], 0) for i in dataset.windows[4]]  # eval images: no random draw
    assert torch.equal(item["history"], torch.stack(pixels[:5])) and torch.equal(item["image"], pixels[5])


def test_bad_rows_and_short_users_are_left_out_and_counted(histories, tmp_path):
    frame = pd.read_csv(histories)
    frame.loc[1, "image"] = "images/not_there.png"
    frame.loc[9, "user"] = None
    frame = pd.concat([frame, pd.DataFrame([{"user": "newcomer", "image": frame.image[0], "step": 0}])],
                      ignore_index=True)
    frame["image"] = [str(histories.parent / p) for p in frame.image]
    frame.to_csv(tmp_path / "bad.csv", index=False)
    dataset = PreferenceHistoryDataset(tmp_path / "bad.csv", order_column="step", num_history=5, img_size=16)
    assert [reason for _, reason in dataset.skipped] == [f"image {frame.image.iloc[1]} does not exist", "no user"]
    assert dataset.skipped[0][0] == "row 3"  # the CSV's line number
    assert dataset.short_users == ["newcomer"]
    assert len(dataset) == 4 * 3 + 2 * 2  # two users lost an interaction each
    with pytest.raises(DataError, match="strict"):
        PreferenceHistoryDataset(tmp_path / "bad.csv", num_history=5, img_size=16, strict=True)
    with pytest.raises(DataError, match="no user has more than num_history=8"):
        PreferenceHistoryDataset(histories, num_history=8, img_size=16)
    frame["step"] = frame["step"].astype(object)
    frame.loc[3, "step"] = "later"
    frame.to_csv(tmp_path / "bad_order.csv", index=False)
    with pytest.raises(DataError, match="order column 'step' holds 'later'"):
        PreferenceHistoryDataset(tmp_path / "bad_order.csv", order_column="step", num_history=5, img_size=16)
    with pytest.raises(ConfigError, match="no user column 'customer'"):
        PreferenceHistoryDataset(histories, user_column="customer", img_size=16)


def test_the_data_section_refuses_more_history_than_the_model_has_slots(histories):
    data = PreferenceHistoryData(root=str(histories), num_history=5)
    with pytest.raises(ConfigError, match="model.max_history is 4"):
        data.build({**TINY, "max_history": 4}, "pigeon")
    dataset = data.build(dict(TINY), "pigeon")
    assert len(dataset) == 18 and data.mean is not None and data.default_method() == "pigeon"


def test_cli_pretrains_pigeon_from_an_interaction_table(histories, tmp_path):
    from mimkit.core.runs import load_run
    from mimkit.multimodal.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"method": "pigeon", "model": TINY}))
    run = tmp_path / "run"
    assert main(["pretrain", "--method", "pigeon", "--config", str(config), "--data", str(histories),
                 "--data.order_column", "step", "--data.num_history", "3", "--out", str(run), "--max-steps", "12",
                 "--batch-size", "6", "--lr", "3e-3", "--warmup-steps", "0", "--log-every", "1",
                 "--num-workers", "0", "--no-progress"]) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["method"] == "pigeon" and stored["data"]["num_history"] == 3
    assert stored["data"]["order_column"] == "step" and stored["data"]["mean"] is not None
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["images"] == 6 * (8 - 3) and metrics["train"]["steps"] == 12
    history = metrics["train"]["history"]
    assert len(history) >= 10 and all(abs(h["kept_history"] - int(3 * 16 * 0.8) / 48) < 1e-6 for h in history)
    first = sum(h["loss"] for h in history[:3]) / 3
    last = sum(h["loss"] for h in history[-3:]) / 3
    assert last < first  # it learned
    method, _ = load_run(run)
    assert type(method).__name__ == "Pigeon" and method.encoder.in_chans == 1
    dataset = PreferenceHistoryData(**{k: v for k, v in stored["data"].items()}).build(stored["model"], "pigeon")
    batch = {k: torch.stack([dataset[i][k] for i in range(2)]) for k in ("image", "history")}
    with torch.no_grad():
        out = method.eval()(batch)
    assert out.pred.shape == (2, 16, 64) and torch.isfinite(out.loss)
