"""The task and published-result registries: duplicates, unknown names, filtering, local readers."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.benchmarks import published, tasks
from mimkit.core.bench import image_folder_reader
from mimkit.core.errors import ConfigError, DataError


@pytest.fixture
def task_registry(monkeypatch):
    """A private copy of the task registry, so tests can register freely."""
    tasks.list_tasks()  # load the built-in and domain tasks first
    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))
    return tasks


@pytest.fixture
def result_registry(monkeypatch):
    monkeypatch.setattr(published, "_RESULTS", dict(published._RESULTS))
    return published


def _reader(root, **options):
    return [], []


def _task(name="toy-linear", domain="medical", protocol="linear"):
    return tasks.Task(name=name, domain=domain, dataset="Toy", protocol=protocol, metric="top1", reader=_reader)


def test_task_registry_rejects_duplicates_and_unknown_names(task_registry):
    first = task_registry.register_task(_task())
    assert task_registry.get_task("toy-linear") is first
    with pytest.raises(ConfigError, match="registered twice"):
        task_registry.register_task(_task())
    with pytest.raises(ConfigError, match="unknown task 'nope'.*imagenet1k-linear.*toy-linear"):
        task_registry.get_task("nope")


def test_task_checks_protocol_and_domain():
    with pytest.raises(ConfigError, match="protocol must be one of.*knn"):
        _task(protocol="probe")
    with pytest.raises(ConfigError, match="domain must be one of"):
        _task(domain="space")


def test_list_tasks_filters_by_domain(task_registry):
    task_registry.register_task(_task("toy-knn", protocol="knn"))
    medical = task_registry.list_tasks(domain="medical")
    assert "toy-knn" in [t.name for t in medical]
    assert all(t.domain == "medical" for t in medical)
    core = [t.name for t in task_registry.list_tasks(domain="core")]
    assert "imagenet1k-finetune" in core and "toy-knn" not in core
    assert len(task_registry.list_tasks()) >= len(medical) + len(core)
    with pytest.raises(ConfigError, match="unknown domain"):
        task_registry.list_tasks(domain="space")


def _image_folder(root, classes, per_class=2, size=20):
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_image_folder_task_reads_a_local_folder(tmp_path):
    _image_folder(tmp_path / "train", ["cat", "dog"], per_class=3)
    _image_folder(tmp_path / "val", ["cat", "dog"], per_class=1)
    train, test = tasks.get_task("imagenet1k-linear").load(tmp_path, img_size=16)
    assert (len(train), len(test)) == (6, 2)
    sample = train[4]
    assert sample["image"].shape == (3, 16, 16) and sample["label"] == 1
    assert torch.isfinite(sample["image"]).all()


def test_image_folder_reader_reports_bad_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        tasks.get_task("imagenet1k-linear").load(tmp_path / "missing")
    _image_folder(tmp_path / "train", ["cat", "dog"])
    with pytest.raises(DataError, match="val"):
        image_folder_reader()(tmp_path)
    _image_folder(tmp_path / "val", ["cat"])
    with pytest.raises(DataError, match="different classes"):
        image_folder_reader()(tmp_path)


def _result(value=80.0, model="ViT-S/16", protocol="linear", table="Table 9"):
    return published.PublishedResult(value=value, metric="top1", protocol=protocol, model=model, method="toy",
                                     data="Toy", source="Someone et al. 2030", table=table)


def test_published_registry_rejects_duplicates(result_registry):
    result_registry.register_result(_result())
    with pytest.raises(ConfigError, match="registered twice"):
        result_registry.register_result(_result(value=81.0))
    result_registry.register_result(_result(table="Table 10"))  # the same figure from another table is fine


def test_published_result_checks_its_fields():
    with pytest.raises(ConfigError, match="protocol"):
        _result(protocol="probe")
    with pytest.raises(ConfigError, match="finite"):
        _result(value=math.nan)


def test_published_results_filter_on_every_given_field(result_registry):
    result_registry.register_results([_result(), _result(model="ViT-B/16"), _result(protocol="finetune")])
    everything = result_registry.published_results()
    for query in ({"method": "toy"}, {"method": "toy", "protocol": "linear"}, {"method": "mae", "model": "ViT-B/16"},
                  {"data": "ImageNet-1K", "protocol": "finetune", "metric": "top1"}):
        found = result_registry.published_results(**query)
        expected = [r for r in everything if all(getattr(r, k) == v for k, v in query.items())]
        assert found == expected and found
    assert len(result_registry.published_results(method="toy", protocol="linear")) == 2
    with pytest.raises(ConfigError, match="no published result has method='nope'; known:.*mae.*toy"):
        result_registry.published_results(method="nope")


def test_seeded_mae_figures_name_their_source():
    records = published.published_results(method="mae")
    assert {r.protocol for r in records} >= {"finetune", "linear"}
    assert all(r.source and r.table and r.data == "ImageNet-1K" for r in records)
