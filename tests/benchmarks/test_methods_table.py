"""The core methods table keeps each measured row with its settings: a second invocation with the same settings
continues from them (nothing measured twice), other settings measure again."""
import json

from mimkit.benchmarks import methods_table


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _same(a: dict, b: dict) -> bool:
    """The same tensors (the file's metadata order may differ between writes)."""
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_row_is_kept_only_for_the_settings_it_was_measured_at(tmp_path):
    path = tmp_path / "mae" / methods_table.ROW_FILE
    assert methods_table._kept_row(path, {"steps": 600}) is None
    path.parent.mkdir()
    path.write_text(json.dumps({"settings": {"steps": 600}, "row": {"method": "mae", "knn_accuracy": 85.0}}))
    assert methods_table._kept_row(path, {"steps": 600}) == {"method": "mae", "knn_accuracy": 85.0}
    assert methods_table._kept_row(path, {"steps": 300}) is None
    path.write_text('{"settings": {"steps": 6')  # cut short by an interruption
    assert methods_table._kept_row(path, {"steps": 600}) is None


def test_a_second_invocation_keeps_the_measured_rows_and_trains_nothing(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--steps", "2", "--batch-size", "8", "--methods", "mae", "--num-workers", "0",
            "--finetune-seeds", "1", "--finetune-epochs", "1"]
    assert methods_table.main(argv) == 0
    first = json.loads((tmp_path / "methods.json").read_text())
    weights = _weights(tmp_path / "mae" / "model.safetensors")
    capsys.readouterr()
    assert methods_table.main(argv) == 0
    assert "mae measured before, kept" in capsys.readouterr().err
    assert json.loads((tmp_path / "methods.json").read_text()) == first
    assert _same(_weights(tmp_path / "mae" / "model.safetensors"), weights)
    assert [row["method"] for row in first["rows"]] == ["random_init", "mae"]
    assert first["rows"][1]["finetune_10_per_class"] is not None
    # other settings: measured again
    assert methods_table.main(argv[:-1] + ["2"]) == 0
    assert "kept" not in capsys.readouterr().err
    # the finished pretraining run is reused (resumed at its last step: the same weights), not trained again
    assert _same(_weights(tmp_path / "mae" / "model.safetensors"), weights)
