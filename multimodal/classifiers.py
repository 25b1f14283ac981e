"""A fine-tuned classifier kept as a folder of its own: the backbone as trained (model.safetensors, which `load_run`
reads like any run), the head (head.safetensors), config.yaml (method, model, data and a `classifier` section) and the
test predictions (predictions.csv). The image + table classifiers (bench.py) and M3AE's VQA and caption classifiers
(vqa.py) are written and recognised here; each module rebuilds its own model from the folder."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

from torch import nn

from mimkit.core.errors import CheckpointError, ConfigError

HEAD_FILE, PREDICTIONS_FILE = "head.safetensors", "predictions.csv"
# classifier.kind in config.yaml: which module's loader rebuilds the model
TABLE, VQA, CAPTION = "image-table", "vqa", "caption-classification"


def save_classifier_folder(backbone: nn.Module, head: nn.Module, folder: str | Path, origin: dict, data: dict,
                           classifier: dict, predictions: tuple[Sequence[str], Iterable[Sequence]] | None = None
                           ) -> Path:
    """Write a classifier folder; `origin` is the pretraining run's method and model (what `load_run` rebuilds),
    `predictions` (a header, rows) becomes predictions.csv."""
    from safetensors.torch import save_file

    from mimkit.core.checkpoints import save_method, write_atomically
    from mimkit.core.runs import write_config

    if not origin.get("method") or origin.get("model") is None:
        raise ConfigError("saving a classifier needs the pretraining run's method and model (the task's prepare or "
                          "its reader options pass them as run_settings)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_method(backbone, folder / "model.safetensors", origin["model"])
    weights = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    write_atomically(folder / HEAD_FILE, lambda temporary: save_file(weights, str(temporary)), "head")
    write_config(folder, {"method": origin["method"], "model": origin["model"], "data": data,
                          "classifier": classifier})
    if predictions is not None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")  # questions and captions hold commas and quotes
        writer.writerow(predictions[0])
        writer.writerows(predictions[1])
        write_atomically(folder / PREDICTIONS_FILE, lambda temporary: Path(temporary).write_text(text.getvalue()),
                         "predictions")
    return folder


def load_head(head: nn.Module, folder: str | Path) -> nn.Module:
    """The folder's head.safetensors into `head`; a file that is not one, or whose tensors do not fit the head the
    config describes, is a CheckpointError naming it."""
    from safetensors.torch import load_file

    path = Path(folder) / HEAD_FILE
    try:
        head.load_state_dict(load_file(str(path)))
    except Exception as error:  # safetensors' header errors, torch's size / key mismatches
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not the head config.yaml describes ({first})") from None
    return head


def is_classifier(folder: str | Path) -> bool:
    """Whether a folder holds a classifier saved by `save_classifier_folder`."""
    return (Path(folder) / HEAD_FILE).is_file()


def classifier_kind(folder: str | Path) -> str:
    """TABLE, VQA or CAPTION: what a saved classifier's config.yaml says it is (folders from before the kinds are
    image + table classifiers)."""
    from mimkit.core.runs import read_config

    return (read_config(folder).get("classifier") or {}).get("kind", TABLE)


__all__ = ["HEAD_FILE", "PREDICTIONS_FILE", "TABLE", "VQA", "CAPTION", "save_classifier_folder", "load_head",
           "is_classifier", "classifier_kind"]
