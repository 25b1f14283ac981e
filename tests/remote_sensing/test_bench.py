"""Remote-sensing benchmark tasks: registration, published figures, the segmentation protocol learning on synthetic
GeoTIFFs, and the tasks run on copies written in the public datasets' layouts."""
import numpy as np
import pytest
import torch

from mimkit.benchmarks.published import published_results
from mimkit.benchmarks.tasks import get_task, list_tasks
from mimkit.core.encoders import ViTEncoder
from mimkit.core.errors import ConfigError
from mimkit.core.evaluate import knn_evaluate
from mimkit.core.registry import build_method
from mimkit.remote_sensing import synthetic
from mimkit.remote_sensing.bench import (evaluate_task, eurosat_reader, segmentation_evaluate, segmentation_metrics,
                                         segmentation_reader)

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def encoder(in_chans=13, seed=0):
    torch.manual_seed(seed)
    return ViTEncoder(in_chans=in_chans, **TINY)


@pytest.fixture(scope="module")
def eurosat_copy(tmp_path_factory):
    return synthetic.write_eurosat(tmp_path_factory.mktemp("eurosat"), per_class=5, size=32, classes=3)


def test_tasks_and_published_figures_are_registered():
    names = {t.name: t for t in list_tasks("remote_sensing")}
    assert {"eurosat-linear", "eurosat-finetune", "bigearthnet-linear", "so2sat-finetune",
            "geotiff-segmentation"} <= set(names)
    assert (names["eurosat-linear"].metric, names["bigearthnet-finetune"].metric) == ("accuracy", "map")
    assert names["geotiff-segmentation"].protocol == "segmentation"
    aid = published_results(method="selective_mae", data="AID", model="ViT-B/16")
    assert sorted(r.value for r in aid) == [96.90, 97.10, 98.12, 98.28]
    assert all("Fengxiang23/SelectiveMAE" in r.source for r in aid)


def test_segmentation_metrics_from_a_confusion_matrix():
    metrics = segmentation_metrics(np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]]))
    assert metrics["iou_per_class"] == [0.75, 0.8, None]  # class 2 absent in labels and predictions: not averaged
    assert metrics["miou"] == pytest.approx(0.775) and metrics["pixel_accuracy"] == pytest.approx(7 / 8)


def test_segmentation_head_learns_land_cover_on_synthetic_tiles(tmp_path):
    root = synthetic.write_segmentation(tmp_path / "seg", count=8, size=32)
    train, test = segmentation_reader(root, img_size=32, patch_size=8)
    assert train.classes == list(synthetic.MATERIALS)
    labels = torch.cat([test[i]["mask"].flatten() for i in range(len(test))])
    majority = torch.bincount(labels[labels >= 0]).max().item() / (labels >= 0).sum().item()
    frozen = encoder()
    before = frozen.state_dict()["blocks.0.attn.qkv.weight"].clone()
    untrained = segmentation_evaluate(frozen, train, test, epochs=1, lr=1e-9)
    trained = segmentation_evaluate(frozen, train, test, epochs=25, lr=1e-2, batch_size=4)
    assert trained["train_loss"][-1] < 0.6 * trained["train_loss"][0]
    assert trained["miou"] > untrained["miou"] + 0.2 and trained["pixel_accuracy"] > majority + 0.15
    assert torch.equal(frozen.state_dict()["blocks.0.attn.qkv.weight"], before)  # the encoder stays untouched


def test_eurosat_task_runs_the_protocol_on_a_local_copy(eurosat_copy):
    tiny = encoder()
    row = evaluate_task("eurosat-knn", tiny, eurosat_copy, k=3)
    train, test = eurosat_reader(eurosat_copy, img_size=32)
    direct = knn_evaluate(tiny, train, test, k=3)
    assert row["value"] == pytest.approx(100 * direct["accuracy"], abs=0.01)
    assert (row["data"], row["metric"], row["num_train"], row["num_test"]) == ("EuroSAT", "accuracy", 9, 3)
    assert np.allclose(test.mean, train.mean)  # the test split is normalised with the training statistics


def test_bigearthnet_task_reports_mean_average_precision(tmp_path):
    root = synthetic.write_bigearthnet(tmp_path / "ben", count=12, size=24)
    row = evaluate_task("bigearthnet-linear", encoder(12), root, epochs=3)
    assert row["metric"] == "map" and 0 < row["value"] <= 100
    assert row["details"]["average_precision_macro"] == pytest.approx(row["value"] / 100, abs=1e-4)


def test_encoder_that_reads_other_bands_is_refused(eurosat_copy):
    with pytest.raises(ConfigError, match=r"reads 3 channel\(s\).*13 band\(s\).*--bands"):
        evaluate_task("eurosat-linear", encoder(3), eurosat_copy)
    # a spectrum-aware encoder knows its bands: the same count in another order is refused too
    smarties = build_method("smarties", **TINY, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    with pytest.raises(ConfigError, match="select the same bands in the same order"):
        evaluate_task("eurosat-linear", smarties.encoder, eurosat_copy)  # EuroSAT stores B8A last


def test_task_reader_options_pick_bands(eurosat_copy):
    row = evaluate_task("eurosat-knn", encoder(3), eurosat_copy, reader_options={"bands": ["B04", "B03", "B02"]}, k=3)
    assert 0 <= row["value"] <= 100 and get_task("eurosat-knn").dataset == "EuroSAT"
