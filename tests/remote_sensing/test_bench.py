"""Remote-sensing benchmark tasks: registration, published figures, what `prepare` and `check` do, segmentation
through core.finetune learning on synthetic GeoTIFFs, and the tasks run by mimkit.benchmarks' runner on copies
written in the public datasets' layouts."""
import numpy as np
import pytest
import torch

from mimkit.benchmarks.published import published_results
from mimkit.benchmarks.runner import run_task
from mimkit.benchmarks.tasks import get_task, list_tasks
from mimkit.core.encoders import ViTEncoder
from mimkit.core.errors import ConfigError
from mimkit.core.evaluate import knn_evaluate
from mimkit.core.finetune import segmentation_metrics
from mimkit.core.registry import build_method
from mimkit.remote_sensing import synthetic
from mimkit.remote_sensing.bench import check_encoder_fits, eurosat_reader, segmentation_reader

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
BANDS = ["B04", "B03", "B02", "B08"]


def encoder(in_chans=13, seed=0):
    torch.manual_seed(seed)
    return ViTEncoder(in_chans=in_chans, **TINY)


def run_config(bands=BANDS, scale=1e-4):
    """The data section a `mimkit-rs pretrain` run records: bands in the encoder's order and their statistics."""
    return {"method": "mae", "data": {"sensor": "sentinel2", "band_names": list(bands), "scale": scale,
                                      "mean": [0.1 * (i + 1) for i in range(len(bands))],
                                      "std": [1.0 + i for i in range(len(bands))]}}


@pytest.fixture(scope="module")
def eurosat_copy(tmp_path_factory):
    return synthetic.write_eurosat(tmp_path_factory.mktemp("eurosat"), per_class=5, size=32, classes=3)


@pytest.fixture(scope="module")
def segmentation_copy(tmp_path_factory):
    return synthetic.write_segmentation(tmp_path_factory.mktemp("seg"), count=8, size=32)


def test_tasks_and_published_figures_are_registered():
    names = {t.name: t for t in list_tasks("remote_sensing")}
    assert {"eurosat-linear", "eurosat-finetune", "bigearthnet-linear", "so2sat-finetune",
            "geotiff-segmentation"} <= set(names)
    assert (names["eurosat-linear"].metric, names["bigearthnet-finetune"].metric) == ("accuracy", "map")
    # SMARTIES reports micro mAP: the task does too, and the macro one is a task of its own
    assert names["bigearthnet-linear"].value_key == "average_precision_micro"
    assert names["bigearthnet-linear-macro"].value_key == "average_precision_macro"
    assert names["bigearthnet-linear"].protocol_details["metric_variant"] == "micro"
    segmentation = names["geotiff-segmentation"]
    assert (segmentation.protocol, segmentation.head, segmentation.value_key) == ("segmentation", "segmentation",
                                                                                  "miou")
    assert segmentation.settings["freeze_encoder"] and segmentation.settings["target_key"] == "mask"
    assert all(t.check is check_encoder_fits and t.prepare is not None for t in names.values())
    aid = published_results(method="selective_mae", data="AID", model="ViT-B/16")
    assert sorted(r.value for r in aid) == [96.90, 97.10, 98.12, 98.28]
    assert all("Fengxiang23/SelectiveMAE" in r.source for r in aid)


def test_segmentation_metrics_from_a_confusion_matrix():
    metrics = segmentation_metrics(np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]]))
    assert metrics["iou_per_class"] == [0.75, 0.8, None]  # class 2 absent in labels and predictions: not averaged
    assert metrics["miou"] == pytest.approx(0.775) and metrics["pixel_accuracy"] == pytest.approx(7 / 8)


def test_segmentation_head_learns_land_cover_on_synthetic_tiles(segmentation_copy):
    train, test = segmentation_reader(segmentation_copy, img_size=32, patch_size=8)
    assert train.classes == list(synthetic.MATERIALS)
    labels = torch.cat([test[i]["mask"].flatten() for i in range(len(test))])
    majority = torch.bincount(labels[labels >= 0]).max().item() / (labels >= 0).sum().item()
    frozen = encoder()
    before = frozen.state_dict()["blocks.0.attn.qkv.weight"].clone()
    untrained, = run_task("geotiff-segmentation", frozen, segmentation_copy, max_steps=0)
    trained, = run_task("geotiff-segmentation", frozen, segmentation_copy, epochs=25, lr=1e-2, batch_size=4)
    assert untrained["details"]["steps"] == 0 and trained["details"]["steps"] == 50  # 25 epochs of 2 batches
    assert trained["settings"]["freeze_encoder"] and trained["settings"]["head_options"] == {"decoder": "linear"}
    assert trained["value"] == pytest.approx(100 * trained["details"]["miou"], abs=0.01)
    assert trained["details"]["miou"] > untrained["details"]["miou"] + 0.2
    assert trained["details"]["pixel_accuracy"] > majority + 0.15
    assert torch.equal(frozen.state_dict()["blocks.0.attn.qkv.weight"], before)  # the encoder stays untouched


def test_eurosat_task_runs_the_protocol_on_a_local_copy(eurosat_copy):
    tiny = encoder()
    rows = run_task("eurosat-knn", tiny, eurosat_copy, compare_random_init=True, k=3)
    train, test = eurosat_reader(eurosat_copy, img_size=32)
    direct = knn_evaluate(tiny, train, test, k=3)
    assert [r["init"] for r in rows] == ["pretrained", "random"]
    row = rows[0]
    assert row["value"] == pytest.approx(100 * direct["accuracy"], abs=0.01)
    assert (row["data"], row["metric"], row["num_train"], row["num_test"]) == ("EuroSAT", "accuracy", 9, 3)
    assert np.allclose(test.mean, train.mean)  # the test split is normalised with the training statistics


def test_bigearthnet_task_reports_mean_average_precision(tmp_path):
    root = synthetic.write_bigearthnet(tmp_path / "ben", count=12, size=24)
    row, = run_task("bigearthnet-linear", encoder(12), root, epochs=3)
    assert row["metric"] == "map" and 0 < row["value"] <= 100
    assert row["details"]["average_precision_micro"] == pytest.approx(row["value"] / 100, abs=1e-4)
    assert 0 < row["details"]["average_precision_macro"] <= 1


def test_encoder_that_reads_other_bands_is_refused(eurosat_copy):
    with pytest.raises(ConfigError, match=r"reads 3 channel\(s\).*13 band\(s\).*--bands"):
        run_task("eurosat-linear", encoder(3), eurosat_copy)
    # a spectrum-aware encoder knows its bands: the same count in another order is refused too
    smarties = build_method("smarties", **TINY, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    with pytest.raises(ConfigError, match="select the same bands in the same order"):
        run_task("eurosat-linear", smarties, eurosat_copy)  # EuroSAT stores B8A last


def test_task_reader_options_pick_bands(eurosat_copy):
    row, = run_task("eurosat-knn", encoder(3), eurosat_copy, reader_options={"bands": ["B04", "B03", "B02"]}, k=3)
    assert 0 <= row["value"] <= 100 and get_task("eurosat-knn").dataset == "EuroSAT"


def test_prepare_reads_the_pretraining_bands_in_order_with_the_run_statistics(eurosat_copy, segmentation_copy):
    tiny = encoder(4)
    for name, root in (("eurosat-linear", eurosat_copy), ("geotiff-segmentation", segmentation_copy)):
        task = get_task(name)
        options = task.prepare(tiny, run_config())
        assert options["img_size"] == (32, 32) and options["bands"] == BANDS
        train, test = task.load(root, **options)
        assert train.band_names == BANDS and train.in_chans == 4
        assert np.allclose(train.mean, [0.1, 0.2, 0.3, 0.4]) and np.allclose(test.std, [1, 2, 3, 4])
        task.check(tiny, train)
        # bands asked for by the user take the run's statistics of those bands
        train, _ = task.load(root, **{**options, "bands": ["B02", "B04"]})
        assert np.allclose(train.mean, [0.3, 0.1])
        # statistics of data read at another scale do not apply: the training split's own are used
        own, _ = task.load(root, **task.prepare(tiny, run_config(scale=None)))
        assert own.band_names == BANDS and not np.allclose(own.mean, [0.1, 0.2, 0.3, 0.4])
    # bands the dataset does not have (another sensor's names): its default bands are read
    assert "bands" not in get_task("eurosat-knn").prepare(tiny, run_config(["VV", "VH"]))
