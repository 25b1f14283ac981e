"""The report: the one table writer (markdown, CSV, JSON), the init pivot, matching run results to published
figures and their differences."""
import csv
import json

import pytest

from mimkit.benchmarks import report
from mimkit.benchmarks.published import PublishedResult
from mimkit.core.errors import ConfigError

PUBLISHED = [
    PublishedResult(value=70.0, metric="top1", protocol="linear", model="ViT-B/16", method="mae", data="Toy",
                    source="Paper A 2021", table="Table 1"),
    PublishedResult(value=71.5, metric="top1", protocol="linear", model="ViT-B/16", method="mae", data="Toy",
                    source="Repo B", table="README"),
    PublishedResult(value=90.0, metric="top1", protocol="finetune", model="ViT-B/16", method="mae", data="Toy",
                    source="Paper A 2021", table="Table 2"),
    PublishedResult(value=92.0, metric="top1", protocol="finetune", model="ViT-B/16", method="mae", data="Toy",
                    source="Paper A 2021", table="Table 2", img_size=448),
    PublishedResult(value=75.0, metric="top1", protocol="linear", model="ViT-L/16", method="mae", data="Toy",
                    source="Paper A 2021", table="Table 1"),
]


def _run(**fields):
    return {"data": "Toy", "method": "mae", "model": "ViT-B/16", "protocol": "linear", "metric": "top1",
            "value": 68.5, **fields}


def test_compare_matches_on_data_protocol_metric_and_model():
    rows = report.compare([_run()], PUBLISHED)
    assert [(r["source"], r["published"]) for r in rows] == [("Paper A 2021", 70.0), ("Repo B", 71.5)]
    assert [r["difference"] for r in rows] == pytest.approx([-1.5, -3.0])
    assert all(r["ours"] == 68.5 and r["model"] == "ViT-B/16" for r in rows)


def test_compare_keeps_unmatched_results_and_respects_image_size():
    rows = report.compare([_run(method="simmim"), _run(protocol="finetune", value=91.0, img_size=448)], PUBLISHED)
    assert rows[0]["published"] is None and rows[0]["difference"] is None and rows[0]["method"] == "simmim"
    assert len(rows) == 2 and rows[1]["published"] == 92.0 and rows[1]["difference"] == pytest.approx(-1.0)
    # Without an image size the run is compared with both the 224 and the 448 figure.
    assert [r["img_size"] for r in report.compare([_run(protocol="finetune")], PUBLISHED)] == [224, 448]


def test_compare_reads_data_protocol_and_metric_from_a_task():
    rows = report.compare([{"task": "imagenet1k-finetune", "method": "mae", "model": "ViT-B/16", "value": 83.0,
                            "img_size": 224}])
    assert rows and all(r["data"] == "ImageNet-1K" and r["protocol"] == "finetune" for r in rows)
    assert all(r["difference"] == pytest.approx(83.0 - r["published"]) for r in rows)


def test_compare_rejects_incomplete_results():
    with pytest.raises(ConfigError, match="#0 lacks model, protocol"):
        report.compare([{"data": "Toy", "method": "mae", "metric": "top1", "value": 1.0}], PUBLISHED)
    with pytest.raises(ConfigError, match="finite number"):
        report.compare([_run(value="high")], PUBLISHED)


def test_comparison_table_markdown_and_csv(tmp_path):
    rows = report.compare([_run(), _run(model="ViT-L/16", value=76.25)], PUBLISHED)
    report.comparison_table(rows, tmp_path / "out" / "report")
    lines = (tmp_path / "out" / "report.md").read_text().splitlines()
    assert lines[0].startswith("| data | protocol | metric | method | model")
    assert len(lines) == 2 + len(rows)
    assert "| Toy | linear | top1 | mae | ViT-L/16 | 224 | 76.25 | 75 | +1.25 | Paper A 2021 | Table 1 |" in lines[-1]
    assert "| 68.5 | 71.5 | -3 | Repo B |" in lines[3]
    with (tmp_path / "out" / "report.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    assert [float(r["difference"]) for r in table] == pytest.approx([r["difference"] for r in rows])
    assert table[2]["published"] == "75.0" and table[2]["source"] == "Paper A 2021"


def test_write_table_files_agree_with_each_other(tmp_path):
    rows = [{"task": "toy", "value": 84.567, "note": "a|b", "details": {"k": [1, 2]}, "missing": None},
            {"task": "other", "value": 0.00012, "note": "", "details": {}, "missing": 3}]
    columns = {"task": "task", "value": "value (%)", "note": "note", "details": "details", "missing": "missing"}
    text = report.write_table(rows, columns, tmp_path / "table.md", title="# Toy results", formats={"value": ".1f"})
    assert (tmp_path / "table.md").read_text() == text
    lines = text.splitlines()
    assert lines[:3] == ["# Toy results", "", "| task | value (%) | note | details | missing |"]
    assert lines[4] == '| toy | 84.6 | a/b | {"k": [1, 2]} |  |'          # "|" cannot break the table
    with (tmp_path / "table.csv").open() as handle:
        table = list(csv.DictReader(handle))
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["title"] == "# Toy results" and saved["columns"] == list(columns)
    assert [r["task"] for r in table] == [r["task"] for r in saved["rows"]] == ["toy", "other"]
    assert [float(r["value"]) for r in table] == [r["value"] for r in saved["rows"]] == [84.567, 0.00012]
    assert [r["missing"] for r in table] == ["", "3"] and [r["missing"] for r in saved["rows"]] == [None, 3]
    assert json.loads(table[0]["details"]) == saved["rows"][0]["details"] == {"k": [1, 2]}
    # without a path nothing is written; numbers default to at most 3 decimals, tiny ones to 3 digits
    assert "| other | 0.00012 |" in report.write_table(rows[1:], ["task", "value"])


def test_pivot_inits_puts_both_initialisations_side_by_side():
    rows = [{"task": "t", "protocol": "knn", "metric": "top1", "init": "pretrained", "value": 84.6},
            {"task": "t", "protocol": "knn", "metric": "top1", "init": "random", "value": 75.4},
            {"task": "t", "protocol": "linear", "metric": "top1", "init": "pretrained", "value": 90.0}]
    assert report.pivot_inits(rows) == [
        {"task": "t", "protocol": "knn", "metric": "top1", "pretrained": 84.6, "random": 75.4, "gain": 9.2},
        {"task": "t", "protocol": "linear", "metric": "top1", "pretrained": 90.0}]


def test_command_line_reads_metrics_json(tmp_path, capsys):
    metrics = {"method": "mae", "model": "ViT-B/16", "img_size": 224,
               "results": [{"data": "ImageNet-1K", "protocol": "linear", "metric": "top1", "value": 60.0},
                           {"data": "ImageNet-1K", "protocol": "finetune", "metric": "top1", "value": 80.0,
                            "model": "ViT-L/16"}]}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert report.main(["--run", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "report.md").read_text()
    body = printed.splitlines()[2:]
    assert any("| ViT-B/16 | 224 | 60 | 68 | -8 |" in line for line in body)
    assert all("ViT-L/16" in line for line in body if "| finetune |" in line)
    assert (tmp_path / "report.csv").exists() and (tmp_path / "report.json").exists()


def test_command_line_reports_a_bad_metrics_file(tmp_path, capsys):
    assert report.main(["--run", str(tmp_path)]) == 2
    assert "metrics.json" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text("{not json")
    assert report.main(["--run", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_a_published_figure_with_other_protocol_details_is_beside_ours_but_not_compared():
    published = [PublishedResult(value=50.0, metric="map", protocol="linear", model="ViT-B/16", method="mae",
                                 data="Toy", source="Paper C", table="Table 4",
                                 protocol_details={"metric_variant": "micro", "split": "official"})]
    same, other = report.compare([_run(metric="map", protocol_details={"metric_variant": "micro"}),
                                  _run(metric="map", protocol_details={"metric_variant": "macro"})], published)
    assert same["difference"] == pytest.approx(18.5) and same["differences"] == ""
    assert other["difference"] is None and other["published"] == 50.0
    assert other["differences"] == "metric_variant: macro here vs micro"


def test_known_protocols_of_the_published_records_and_tasks():
    from mimkit.benchmarks.published import published_results
    from mimkit.benchmarks.tasks import get_task, load_domain_tasks

    load_domain_tasks()
    # Thorax MAE's CheXpert 89.2 is the 5-label competition protocol: it sits beside that task only
    chexpert = {p.value: p for p in published_results(method="thorax_mae") if "CheXpert" in p.data}
    assert chexpert[89.2].data == get_task("chexpert-competition-finetune").dataset
    assert get_task("chexpert-finetune").dataset != chexpert[89.2].data
    # ChestX-ray14 trains on Thorax MAE's train_official list, as the published figures do
    nih = [p for p in published_results(method="thorax_mae", data="ChestX-ray14")]
    task = get_task("chestxray14-finetune")
    assert all(p.protocol_details["split"] == task.protocol_details["split"] for p in nih)
    rows = report.compare([{"task": "chestxray14-finetune", "method": "thorax_mae", "model": "ViT-S/16",
                            "value": 80.0}])
    assert [r["difference"] for r in rows] == pytest.approx([-2.3])
    # BigEarthNet: micro mAP (SMARTIES) and macro as separate tasks; segmentation Dice states its background
    assert get_task("bigearthnet-finetune").protocol_details["metric_variant"] == "micro"
    assert get_task("btcv-segmentation").protocol_details["background"] == "excluded"
