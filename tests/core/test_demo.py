"""The demo's data and report: real digits written in the layout a user's data takes."""
from PIL import Image

from mimkit.core.data import ImageFolderDataset
from mimkit.core.synthetic import TEST_FRACTION, write_digits


def test_digits_are_written_as_pretrain_train_and_test_folders(tmp_path):
    folders = write_digits(tmp_path)
    pretrain = sorted(folders["pretrain"].glob("*.png"))
    train = ImageFolderDataset(folders["train"], img_size=32, patch_size=4, transform="eval", labelled=True)
    test = ImageFolderDataset(folders["test"], img_size=32, patch_size=4, transform="eval", labelled=True)
    assert len(pretrain) + len(test) == 1797 and len(train) == len(pretrain)
    assert abs(len(test) / 1797 - TEST_FRACTION) < 0.01
    assert train.classes == [str(d) for d in range(10)] and test.classes == train.classes
    # pretraining images carry no labels, and no test image is among them
    assert {p.name for p in pretrain}.isdisjoint(p.name for p in test.files)
    image = Image.open(pretrain[0])
    assert image.size == (32, 32) and image.mode == "L"


def test_report_lists_both_initialisations_and_is_written(tmp_path, capsys):
    import time

    from mimkit.core.demo import write_report

    rows = [{"protocol": "knn", "init": "pretrained", "metric": "accuracy", "value": 80.0},
            {"protocol": "knn", "init": "random", "metric": "accuracy", "value": 70.0}]
    summary = {"steps": 10, "effective_batch": 8, "images_per_second": 5.0, "final_loss": 0.5}
    out = write_report(tmp_path, "title", summary, "Data: 3 images.", rows, time.perf_counter(), "Pictures: here")
    report = (tmp_path / "report.md").read_text()
    assert out["report"] == str(tmp_path / "report.md") and report.startswith("# title")
    assert "| knn | accuracy | 80 | 70 | 10 |" in report and "Data: 3 images." in report
    assert "Pictures: here; loss curve" in report and report in capsys.readouterr().out
    # a demo run again on its folder reuses the finished pretraining (no step now: no speed): said, not a crash
    again = {"steps": 10, "effective_batch": 8, "images_per_second": None, "final_loss": None, "seconds": 0.0}
    write_report(tmp_path, "title", again, "Data: 3 images.", rows, time.perf_counter(), "Pictures: here")
    assert "Pretraining: 10 steps, effective batch 8, finished in an earlier invocation, reused." in \
        (tmp_path / "report.md").read_text()
