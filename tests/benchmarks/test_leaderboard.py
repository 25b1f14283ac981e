"""mimkit-bench: result files, the merged leaderboard beside published figures (comparable only under the same
protocol), compare, the regression check, the self-contained HTML page in a real headless browser, reproduction
cost, and `run` end to end on a synthetic task."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mimkit.benchmarks import cost as cost_module
from mimkit.benchmarks.cli import main
from mimkit.benchmarks.leaderboard import (SCHEMA, build_leaderboard, check_regressions, compare_results,
                                           read_results, result_record, source_url, summarise, write_html,
                                           write_result)
from mimkit.benchmarks.published import PublishedResult
from mimkit.benchmarks.tasks import get_task
from mimkit.core import build_method
from mimkit.core.checkpoints import save_method
from mimkit.core.errors import DataError

TASK = get_task("imagenet1k-linear")


def rows(values, model="ViT-B/16", init="pretrained"):
    return [{"task": TASK.name, "value": v, "init": init, "seed": s, "model": model} for s, v in enumerate(values)]


def record(subject, values, model="ViT-B/16", img_size=224, random=None, **details):
    found = rows(values, model) + (rows(random, model, "random") if random else [])
    return result_record(subject, TASK, found, method="mae", img_size=img_size, protocol_details=details)


PAPER = PublishedResult(value=68.0, metric="top1", protocol="linear", model="ViT-B/16", method="mae",
                        data="ImageNet-1K", source="He et al., MAE, CVPR 2022 (arXiv:2111.06377)", table="Table 12")


def test_a_result_file_holds_each_seed_the_mean_and_the_sample_std(tmp_path):
    rec = record("run-a", [60.0, 62.0, 64.0], random=[40.0, 41.0, 42.0])
    assert rec["results"]["pretrained"] == {"values": [60.0, 62.0, 64.0], "mean": 62.0, "std": 2.0, "seeds": [0, 1, 2]}
    assert rec["results"]["random"]["mean"] == 41.0 and rec["results"]["random"]["std"] == 1.0
    path = write_result(rec, tmp_path)
    assert path == tmp_path / "run-a" / "imagenet1k-linear.json"
    assert read_results([tmp_path]) == [json.loads(path.read_text())]
    assert summarise([5.0]) == {"values": [5.0], "mean": 5.0, "std": 0.0}


def test_broken_and_foreign_result_files_are_named_or_ignored(tmp_path):
    bad = tmp_path / "torn.json"
    bad.write_text('{"schema": "mimkit-bench-res')
    with pytest.raises(DataError, match="torn.json"):
        read_results([bad])
    (tmp_path / "table.json").write_text(json.dumps({"title": "a table", "rows": []}))
    with pytest.raises(DataError, match="no mimkit-bench result files"):
        read_results([tmp_path])  # the folder has JSON, but no result file (the torn one is skipped in a folder)
    nan = record("x", [1.0])
    nan["results"]["pretrained"]["mean"] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(nan))
    with pytest.raises(DataError, match="nan.json"):
        read_results([tmp_path / "nan.json"])


def test_leaderboard_merges_machines_and_puts_published_figures_beside_only_like_for_like():
    small = record("tiny-run", [50.0, 52.0], model="ViT-Ti/16")
    base = {**record("base-run", [66.0, 67.0]), "machine": "other-host"}
    other_split = record("base-run-minival", [70.0], split="minival")
    paper = PublishedResult(**{**PAPER.__dict__})
    object.__setattr__(paper, "protocol_details", {"split": "val"})  # a record stating its split
    board = build_leaderboard([small, base, other_split], published=[paper])
    names = [r["name"] for r in board.rows]
    assert names[:3] == ["tiny-run", "base-run", "base-run-minival"] and "He et al." in names[3]
    assert board.rows[1]["imagenet1k-linear"]["text"] == "66.50 ± 0.71 (n=2)"
    beside = {r["subject"]: r for r in board.beside}
    assert beside["base-run"]["comparable"] and beside["base-run"]["difference"] == pytest.approx(-1.5)
    assert not beside["tiny-run"]["comparable"] and beside["tiny-run"]["difference"] is None
    assert "model: ViT-Ti/16 here vs ViT-B/16" in beside["tiny-run"]["why_not"]
    assert beside["base-run-minival"]["why_not"] == "split: minival here vs val"


def test_a_published_figure_at_another_input_size_is_not_comparable():
    board = build_leaderboard([record("r", [60.0], img_size=32)], published=[PAPER])
    assert board.beside[0]["why_not"] == "input size: 32 here vs 224"


def test_check_fails_beyond_the_measured_spread_and_passes_within_it():
    baseline = [record("r", [60.0, 62.0, 64.0])]                   # std 2
    assert check_regressions([record("r", [59.0, 60.0, 61.0])], baseline) == []  # 60 vs 62: within 2
    failures = check_regressions([record("r", [58.0, 59.0, 57.0])], baseline)     # 58 vs 62: beyond
    assert [(f["task"], f["init"]) for f in failures] == [(TASK.name, "pretrained")] and "fell by 4" in failures[0]["why"]
    assert check_regressions([record("r", [58.0, 59.0, 57.0])], baseline, tolerance=3.0) == []
    missing = check_regressions([], baseline)
    assert missing[0]["why"] == "missing from the results"


def test_for_an_error_rate_a_rise_is_the_regression():
    task = get_task("imagenet1k-linear")
    lower = {**record("r", [10.0, 10.0]), "metric": "eer"}
    worse = {**record("r", [14.0, 14.0]), "metric": "eer"}
    better = {**record("r", [6.0, 6.0]), "metric": "eer"}
    assert task and check_regressions([better], [lower]) == []
    assert "rose by 4" in check_regressions([worse], [lower])[0]["why"]


def test_compare_reports_difference_and_spread():
    out = compare_results([record("r", [60.0, 62.0])], [record("r", [70.0, 71.0])])
    assert out[0]["difference"] == pytest.approx(9.5) and out[0]["beyond_spread"] is True
    assert out[0]["a"] == "61.00 ± 1.41 (n=2)"


def test_check_command_exit_status(tmp_path):
    write_result(record("r", [60.0, 62.0, 64.0]), tmp_path / "base")
    write_result(record("r", [50.0, 51.0, 52.0]), tmp_path / "worse")
    write_result(record("r", [61.0, 62.0, 63.0]), tmp_path / "same")
    assert main(["check", str(tmp_path / "worse"), "--against", str(tmp_path / "base")]) == 1
    assert main(["check", str(tmp_path / "same"), "--against", str(tmp_path / "base")]) == 0
    assert main(["check", str(tmp_path / "nowhere"), "--against", str(tmp_path / "base")]) == 2


def test_source_links():
    assert source_url("He et al., MAE, CVPR 2022 (arXiv:2111.06377)") == "https://arxiv.org/abs/2111.06377"
    assert source_url("facebookresearch/mae, FINETUNE.md") == "https://github.com/facebookresearch/mae"
    assert source_url("a book, page 3") is None


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_the_html_page_sorts_and_links_every_published_value_in_a_real_browser(tmp_path):
    records = [record("run-a", [61.0, 63.0]), record("run-b", [70.5]), record("run-c", [55.0, 56.0])]
    board = build_leaderboard(records, published=[PAPER])
    png = tmp_path / "suite.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 16)
    page = write_html(board, tmp_path / "board.html", [png])
    text = page.read_text()
    assert "http" not in re.sub(r'href="[^"]+"', "", text)  # nothing to fetch: only the source links point out
    assert "data:image/png;base64," in text
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                          "--dump-dom", page.as_uri() + "#selftest"], capture_output=True, text=True, timeout=120).stdout
    result = json.loads(re.search(r'<pre id="selftest">(.*?)</pre>', dom).group(1).replace("&quot;", '"'))
    ascending = [float(v) for v in result["ascending"]]
    assert ascending == sorted(ascending) == [55.5, 62.0, 68.0, 70.5]
    assert [float(v) for v in result["descending"]] == [70.5, 68.0, 62.0, 55.5]
    published_cells = re.findall(r'<tr class="published">(.*?)</tr>', dom)
    assert published_cells and all('href="https://arxiv.org/abs/2111.06377"' in c and "Table 12" in c
                                   for c in published_cells)


def tiny_mae():
    torch.manual_seed(0)
    return build_method("mae", img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def test_step_flops_are_counted_per_sample_and_the_estimate_follows_its_formula(monkeypatch):
    method = tiny_mae()
    one = cost_module.step_flops(method, {"image": torch.randn(2, 1, 16, 16)})
    two = cost_module.step_flops(method, {"image": torch.randn(4, 1, 16, 16)})
    assert one > 0 and two == pytest.approx(2 * one)
    model = {"encoder": dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2),
             "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}
    monkeypatch.setattr(cost_module, "reproduction_recipe", lambda row: {
        "recipe": "tiny.yaml", "method": "mae", "model": model, "epochs": 10, "epochs_from": "the recipe",
        "batch_size": 8, "warmup_epochs": 1, "base_lr": 1e-3, "source": "test"})
    out = cost_module.estimate(PAPER, images=1000, gpu="H100", utilisation=0.5, measure=False)
    per_image = out["gflops_per_image_step"] * 1e9
    assert out["total_exaflops"] == pytest.approx(per_image * 1000 * 10 / 1e18, abs=0.01)
    assert out["gpu_hours"] == pytest.approx(per_image * 1e4 / (989e12 * 0.5) / 3600, abs=0.05)


def test_the_published_rows_schedule_wins_over_the_recipes():
    row = PublishedResult(value=83.9, metric="top1", protocol="finetune", model="ViT-L/16", method="cae",
                          data="ImageNet-1K", source="x", table="y", setting="1600-epoch pre-training")
    recipe = cost_module.reproduction_recipe(row)
    assert recipe["epochs"] == 1600 and recipe["epochs_from"] == "the published row's setting"
    assert recipe["model"]["encoder"]["size"] == "large" and recipe["model"]["encoder"]["patch_size"] == 16


def test_run_writes_one_result_per_task_over_seeds_and_check_guards_it(tmp_path, capsys):
    """The quick regression guard CI runs: a synthetic task, 2 seeds; the same checkpoint passes its own baseline
    and a spoiled one fails it."""
    from mimkit.medical.synthetic import write_synthetic

    data = write_synthetic(tmp_path / "data", "oct")
    method = tiny_mae()
    config = {"encoder": dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2),
              "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}
    good = save_method(method, tmp_path / "good.safetensors", config)
    common = ["--task", "synthetic-oct-finetune", "--data-root", str(data), "--seeds", "[0, 1]", "--max-steps", "30",
              "--batch-size", "16", "--lr", "0.003"]
    assert main(["run", "--checkpoint", str(good), "--out", str(tmp_path / "base"), *common]) == 0
    result = json.loads((tmp_path / "base" / "good" / "synthetic-oct-finetune.json").read_text())
    assert result["schema"] == SCHEMA and result["results"]["pretrained"]["seeds"] == [0, 1]
    assert len(result["results"]["pretrained"]["values"]) == 2 and result["img_size"] == 16
    assert main(["check", str(tmp_path / "base"), "--against", str(tmp_path / "base")]) == 0
    with torch.no_grad():  # a spoiled encoder: every weight replaced by a constant
        for p in method.encoder.parameters():
            p.fill_(0.01)
    save_method(method, tmp_path / "spoiled.safetensors", config)
    assert main(["run", "--checkpoint", str(tmp_path / "spoiled.safetensors"), "--name", "good",
                 "--out", str(tmp_path / "after"), *common]) == 0
    assert main(["check", str(tmp_path / "after"), "--against", str(tmp_path / "base")]) == 1
    assert main(["leaderboard", str(tmp_path / "base"), "--out", str(tmp_path / "board")]) == 0
    assert (tmp_path / "board" / "leaderboard.html").is_file() and (tmp_path / "board" / "suite_medical.png").is_file()
    assert "good" in (tmp_path / "board" / "leaderboard.md").read_text()
