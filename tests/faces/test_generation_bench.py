"""Vec2Face's generation tasks (faces/bench.py): what they measure (a generator that gives back each real face
scores full consistency and identification, a collapsed one scores chance), the shipped faces they read, and a
tiny vec2face model through mimkit.benchmarks' run_task."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mimkit.core import build_method
from mimkit.core.errors import ConfigError, DataError
from mimkit.faces.bench import GENERATION_TASKS, generation_runner, identity_faces_reader
from mimkit.faces.identity import random_identity_network

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=2, identity_network="random", perceptual_weight=0.0, z_channels=16,
            decoder_channels=8, channel_multipliers=(1, 1, 2, 2), res_blocks=1, discriminator_dims=(8, 16))


@pytest.fixture(scope="module")
def faces_root(tmp_path_factory):
    """Six shipped faces (skimage LFW crops, aligned by MTCNN when its weights are installed, else cut crops)."""
    from mimkit.faces.synthetic import write_identity_faces

    root = tmp_path_factory.mktemp("faces")
    write_identity_faces(root / "identities", size=32, count=6)
    return root


class Recognizer(nn.Module):
    """A fixed random IResNet whose features are scaled to length 30 (a trained ArcFace's vectors are that long)."""

    def __init__(self):
        super().__init__()
        self.network, self.img_size = random_identity_network(64, 32), 32

    def forward(self, images):
        return F.normalize(self.network(images), dim=-1) * 30


class LookupGenerator(nn.Module):
    """Gives back, for a vector, the real face whose vector is nearest (`collapse`: always the first face)."""

    def __init__(self, faces: torch.Tensor, collapse: bool = False):
        super().__init__()
        self.identity_network = Recognizer()
        self.faces, self.collapse = faces, collapse
        self.vectors = self.identity_network(faces)

    def generate(self, vectors):
        if self.collapse:
            return self.faces[:1].expand(len(vectors), -1, -1, -1)
        nearest = (F.normalize(vectors, dim=-1) @ F.normalize(self.vectors, dim=-1).T).argmax(1)
        return self.faces[nearest]


def _real(faces_root) -> torch.Tensor:
    faces, _ = identity_faces_reader(faces_root, size=32)
    return torch.stack([faces[i]["image"] for i in range(len(faces))])


def test_a_generator_that_keeps_identity_scores_full_marks_and_a_collapsed_one_chance(faces_root):
    faces, _ = identity_faces_reader(faces_root, size=32)
    real = _real(faces_root)
    keeping = generation_runner(LookupGenerator(real), faces, faces, root=faces_root, per_identity=4)
    assert keeping["identity_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert keeping["rank1"] == 1.0 and keeping["intra"] == pytest.approx(1.0, abs=1e-5)
    assert keeping["separation"] > 0 and keeping["verification_accuracy"] > 0.9
    collapsed = generation_runner(LookupGenerator(real, collapse=True), faces, faces, root=faces_root,
                                  per_identity=4)
    assert collapsed["rank1"] == pytest.approx(1 / len(real)) == pytest.approx(collapsed["chance_rank1"])
    assert collapsed["separation"] == pytest.approx(0.0, abs=1e-5)   # every identity looks the same
    assert collapsed["identity_similarity"] < keeping["identity_similarity"] - 0.01


def test_the_shipped_faces_are_read_as_one_identity_each(faces_root):
    import json

    faces, test = identity_faces_reader(faces_root, size=32)
    record = json.loads((faces_root / "identities" / "identities.json").read_text())
    assert faces is test and len(faces) == record["faces"] == 6 - len(record["missed"])
    item = faces[0]
    assert item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() < item["image"].max() <= 1
    assert faces.targets == list(range(len(faces)))


def test_a_folder_without_faces_and_a_non_generator_are_refused(tmp_path, faces_root):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(DataError, match="at least 2"):
        identity_faces_reader(tmp_path)
    faces, _ = identity_faces_reader(faces_root, size=32)
    with pytest.raises(ConfigError, match="need a vec2face model"):
        generation_runner(nn.Linear(2, 2), faces, faces, root=faces_root)


def test_a_tiny_vec2face_runs_both_tasks_through_the_benchmark_runner(faces_root):
    from mimkit.benchmarks.runner import run_task

    torch.manual_seed(0)
    model = build_method("vec2face", **TINY)
    for task in GENERATION_TASKS:
        [row] = run_task(task.name, model, faces_root, per_identity=2)
        details = row["details"]
        assert row["protocol"] == "generation" and row["num_test"] == details["identities"]
        assert row["value"] == pytest.approx(100 * details[task.metric], abs=0.01)
        assert details["images"] == 2 * details["identities"] and details["chance_rank1"] == 1 / details["identities"]
        assert details["recognizer"] == "the model's identity network"
        assert row["settings"]["per_identity"] == 2


def test_evaluate_command_measures_a_vec2face_run_on_the_generation_tasks(tmp_path, faces_root, capsys):
    import json

    from mimkit.core.checkpoints import save_method
    from mimkit.core.runs import write_config
    from mimkit.faces.cli import main

    torch.manual_seed(0)
    save_method(build_method("vec2face", **TINY), tmp_path / "run" / "model.safetensors", TINY)
    write_config(tmp_path / "run", {"method": "vec2face", "model": TINY})
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--data", str(faces_root), "--per-identity", "2"]) == 0
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["results"]
    assert sorted(r["task"] for r in rows) == sorted(t.name for t in GENERATION_TASKS)   # a vec2face run's default
    assert all(r["method"] == "vec2face" and r["settings"]["per_identity"] == 2 for r in rows)
    assert "vec2face-identity-identification" in capsys.readouterr().out
