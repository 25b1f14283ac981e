"""Multimodal data: column types inferred and overridable, the fitted preprocessing saved and reused unchanged,
bad rows named and counted, the text and VQA layouts, TIP's missing patterns, and the shipped-pixel sets whose
tables really depend on their images."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mimkit.core.errors import ConfigError, DataError
from mimkit.multimodal.data import (ImageTableDataset, ImageTextDataset, VQADataset, missing_mask)
from mimkit.multimodal.tables import TablePreprocessor


def images(folder, count, size=16):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return [f"images/{i}.png" for i in range(count)]


@pytest.fixture
def table(tmp_path):
    names = images(tmp_path / "images", 12)
    frame = pd.DataFrame({
        "image": names, "sex": ["M", "F"] * 6, "stage": [1, 2, 3] * 4,                  # 3 numbers: categorical
        "age": [20.0 + 3 * i for i in range(12)], "code": [str(100 + i) for i in range(12)],  # 12 numbers: continuous
        "label": ["healthy", "ill", "ill"] * 4})
    frame.loc[1, "sex"] = None
    frame.loc[2, "age"] = None
    return tmp_path, frame


def test_types_are_inferred_overridable_and_the_fitted_preprocessing_is_reused_unchanged(table, tmp_path):
    root, frame = table
    frame.to_csv(root / "train.csv", index=False)
    train = ImageTableDataset(root / "train.csv", target="label")
    fitted = train.preprocessor
    kinds = {c.name: c.kind for c in fitted.columns}
    assert kinds == {"sex": "categorical", "stage": "categorical", "age": "continuous", "code": "continuous"}
    assert fitted.names[:2] == ["sex", "stage"]        # TIP's order: categorical columns first
    assert fitted.categorical_sizes == [2, 3] and fitted.num_continuous == 2 and fitted.classes == ["healthy", "ill"]
    overridden = TablePreprocessor.fit(frame, target="label", exclude=["image"], categorical=["code"],
                                       continuous=["stage"])
    assert {c.name: c.kind for c in overridden.columns}["code"] == "categorical"
    with pytest.raises(ConfigError, match="both categorical and continuous"):
        TablePreprocessor.fit(frame, exclude=["image"], categorical=["age"], continuous=["age"])
    # missing cells: 0 in the tensor, True in the mask; continuous values standardised with the training rows
    assert train[1]["tabular_missing"].tolist() == [True, False, False, False] and train[1]["tabular"][0] == 0
    ages = frame["age"].dropna()
    assert train[0]["tabular"][2].item() == pytest.approx((20 - ages.mean()) / ages.std(ddof=0), rel=1e-5)
    # saved and read back: the same mapping; a test table with other category frequencies keeps the indices, and a
    # category never seen in fitting is missing
    loaded = TablePreprocessor.load(fitted.save(tmp_path / "run"))
    assert loaded == fitted and (tmp_path / "run" / "tabular.json").is_file()
    test = frame.iloc[:4].copy()
    test["sex"] = ["F", "F", "F", "X"]
    values, missing, bad = loaded.transform(test)
    assert values[:3, 0].tolist() == [fitted.categorical[0].vocabulary.index("F")] * 3
    assert missing[3, 0] and not bad


def test_bad_rows_are_named_counted_and_strict_stops(table, caplog):
    root, frame = table
    frame.loc[4, "image"] = "images/none.png"
    frame["age"] = frame["age"].astype(object)
    frame.loc[7, "age"] = "forty"
    frame.loc[9, "label"] = None
    frame.to_csv(root / "train.csv", index=False)
    dataset = ImageTableDataset(root / "train.csv", target="label", continuous=["age"])
    assert len(dataset) == 9 and len(dataset.skipped) == 3
    reasons = dict(dataset.skipped)
    assert "does not exist" in reasons["row 6"] and "'forty' is not a number" in reasons["row 9"]
    assert "missing" in reasons["row 11"]                   # CSV line numbers, the header being line 1
    assert "left out 3 of 12 rows" in caplog.text
    with pytest.raises(DataError, match="strict"):
        ImageTableDataset(root / "train.csv", target="label", continuous=["age"], strict=True)
    with pytest.raises(ConfigError, match="no image column 'picture'"):
        ImageTableDataset(root / "train.csv", image_column="picture")


def test_parquet_reads_like_csv(table):
    pytest.importorskip("pyarrow")
    root, frame = table
    frame.to_parquet(root / "train.parquet")
    frame.to_csv(root / "train.csv", index=False)
    a, b = (ImageTableDataset(root / name, target="label") for name in ("train.parquet", "train.csv"))
    assert a.preprocessor.names == b.preprocessor.names and a.values.allclose(b.values)


def test_text_layouts_roco_medicat_r2gen_and_vqa(tmp_path):
    names = images(tmp_path / "images", 4)
    pd.DataFrame({"name": names[:3] + ["images/gone.png"], "caption": ["CT of the  chest", "MR", "", "x"]}).to_csv(
        tmp_path / "roco.csv", index=False)
    roco = ImageTextDataset(tmp_path / "roco.csv", "roco", img_size=16)
    assert roco.texts == ["CT of the chest", "MR"] and len(roco.skipped) == 2
    (tmp_path / "medicat.jsonl").write_text("\n".join(json.dumps({"fig_uri": n, "s2_caption": f"figure {i}"})
                                                      for i, n in enumerate(names)))
    assert len(ImageTextDataset(tmp_path / "medicat.jsonl", "medicat", img_size=16)) == 4
    annotation = {"train": [{"id": "a", "report": "No acute findings.", "image_path": names[:2]}], "test": []}
    (tmp_path / "annotation.json").write_text(json.dumps(annotation))
    iu = ImageTextDataset(tmp_path / "annotation.json", "iu-xray", img_size=16)
    assert len(iu) == 2 and iu[1]["text"] == "No acute findings." and iu[1]["image"].shape == (3, 16, 16)
    with pytest.raises(DataError, match="no 'val'"):
        ImageTextDataset(tmp_path / "annotation.json", "mimic-cxr", split="val")
    questions = [{"image_name": names[0], "question": "Is there a fracture?", "answer": "No", "answer_type": "CLOSED"},
                 {"image_name": names[1], "question": "Which organ?", "answer": "liver", "answer_type": "OPEN"}]
    (tmp_path / "vqa.json").write_text(json.dumps(questions))
    vqa = VQADataset(tmp_path / "vqa.json", "vqa-rad", image_root=tmp_path, img_size=16)
    assert vqa.answers == ["liver", "no"] and vqa[0]["label"] == 1 and vqa[0]["answer_type"] == "closed"
    slake = [{**q, "img_name": q["image_name"], "q_lang": lang} for q, lang in zip(questions, ["en", "zh"])]
    (tmp_path / "slake.json").write_text(json.dumps(slake))
    assert len(VQADataset(tmp_path / "slake.json", "slake", image_root=tmp_path, img_size=16)) == 1


def test_missing_patterns_follow_tip():
    value = missing_mask((10, 6), "value", 0.3, seed=1)
    assert value.sum() == int(60 * 0.3) and len(set(map(tuple, value))) > 1
    feature = missing_mask((10, 6), "feature", 0.5, seed=1)
    assert (feature == feature[0]).all() and feature[0].sum() == 3
    importance = np.array([0.1, 0.5, 0.05, 0.3, 0.0, 0.05])
    assert np.flatnonzero(missing_mask((4, 6), "most_important", 0.3, importance=importance)[0]).tolist() == [1]
    least = np.flatnonzero(missing_mask((4, 6), "least_important", 0.5, importance=importance)[0])
    assert set(least.tolist()) == {4, 2, 5}
    with pytest.raises(ConfigError, match="importance"):
        missing_mask((4, 6), "most_important", 0.3)


def test_shipped_pixel_tables_depend_on_their_images(tmp_path):
    from mimkit.multimodal.synthetic import write_crops, write_dicom_table, write_digits

    root = write_digits(tmp_path / "digits", count=150, missing_rate=0.2)
    frame = pd.concat([pd.read_csv(root / "train.csv"), pd.read_csv(root / "test.csv")])
    assert len(frame) == 150 and 0.15 < frame.drop(columns=["image", "digit"]).isna().mean().mean() < 0.25
    ink = frame.dropna(subset=["ink"])
    means = [np.asarray(Image.open(root / p), float).mean() / 255 for p in ink["image"]]
    assert np.corrcoef(means, ink["ink"])[0, 1] > 0.9            # the ink column is measured on the image
    assert abs(np.corrcoef(ink["noise"].fillna(0), means)[0, 1]) < 0.3  # the noise column is not
    parity = frame.dropna(subset=["parity"])
    agree = (parity["parity"] == np.where(parity["digit"] % 2, "odd", "even")).mean()
    assert 0.75 < agree < 0.95                                      # linked to the label, 15% wrong
    captions = pd.read_csv(root / "captions_train.csv")
    assert captions["text"].str.startswith("a handwritten digit").all()
    crops = pd.read_csv(write_crops(tmp_path / "crops", per_picture=3) / "train.csv")
    assert crops["picture"].nunique() >= 5
    dicom = write_dicom_table(tmp_path / "dicom", pattern="*_small.dcm")
    table = pd.read_csv(tmp_path / "dicom" / "table.csv")
    ct = table[table["image"].str.endswith("/CT_small.png")].iloc[0]
    assert ct["Modality"] == "CT" and ct["Rows"] == 128 and dicom["written"] == len(table)
