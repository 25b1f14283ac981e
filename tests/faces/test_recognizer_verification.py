"""The verification benchmark of a recognizer trained on a generated face set (faces/bench.py): LFW-style pairs
(balanced, distinct images, balanced folds), what the accuracy gives for a perfect and a constant embedding, the
held-out split, and the whole task through mimkit.benchmarks' run_task on shipped faces with a tiny recognizer."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mimkit.benchmarks.runner import run_task
from mimkit.core import build_method
from mimkit.core.errors import ConfigError, DataError
from mimkit.faces.bench import RECOGNIZER_TASK, face_views, verification_reader
from mimkit.faces.identity import verification_accuracy, verification_pairs

TINY_VEC2FACE = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                     decoder_depth=1, decoder_num_heads=2, identity_network="random", perceptual_weight=0.0,
                     z_channels=16, decoder_channels=8, channel_multipliers=(1, 1, 2, 2), res_blocks=1,
                     discriminator_dims=(8, 16))
TINY_RECOGNIZER = {"depth": 18, "widths": [8, 8, 16, 16], "embedding_dim": 32, "img_size": 32, "batch_size": 16,
                   "max_steps": 6, "learning_rate": 0.05}


def test_pairs_are_balanced_and_of_distinct_images_in_every_fold():
    owners = torch.tensor([i for i in range(12) for _ in range(3)])
    first, second, same, fold = verification_pairs(owners, folds=10, seed=0)
    assert (first != second).all()  # never an image with itself
    assert (same == (owners[first] == owners[second]).numpy()).all()
    assert same.sum() == (~same).sum() == 30  # 12 x 3 same-identity pairs (36) cut to a multiple of 10
    for k in range(10):
        assert same[fold == k].sum() == (~same[fold == k]).sum() == 3
    assert len({(a, b) for a, b in zip(first.tolist(), second.tolist())}) == len(first)  # no pair twice
    with pytest.raises(ConfigError, match="same-identity"):
        verification_pairs(torch.arange(8), folds=10)  # one image per identity: no same pairs
    small = torch.tensor([0, 0, 1, 1, 2, 2])  # 3 same pairs: 3 folds of one same and one different pair
    _, _, same, fold = verification_pairs(small, folds=10)
    assert fold.max() == 2 and all(same[fold == k].sum() == (~same[fold == k]).sum() == 1 for k in range(3))


def test_a_perfect_embedding_scores_one_and_a_constant_one_a_half():
    owners = torch.tensor([i for i in range(10) for _ in range(4)])
    perfect = F.one_hot(owners, 10).float()
    assert verification_accuracy(perfect, owners) == 1.0
    assert verification_accuracy(torch.ones(40, 8), owners) == 0.5
    swapped = perfect[torch.randperm(40, generator=torch.Generator().manual_seed(0))]  # who is who, lost
    assert verification_accuracy(swapped, owners) < 0.75


def test_views_are_distinct_images_of_one_face_and_reproducible():
    rng = np.random.default_rng(0)
    face = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    views = face_views(face, 4, seed=3)
    assert len(views) == 4 and np.array_equal(views[0], face)
    assert all(not np.array_equal(views[i], views[j]) for i in range(4) for j in range(i + 1, 4))
    assert all(np.array_equal(a, b) for a, b in zip(views, face_views(face, 4, seed=3)))


@pytest.fixture(scope="module")
def faces_root(tmp_path_factory):
    """Ten shipped faces aligned for recognition (MTCNN when its weights are installed, else cut crops)."""
    from mimkit.faces.synthetic import write_identity_faces

    root = tmp_path_factory.mktemp("faces")
    write_identity_faces(root / "identities", size=32, count=10)
    return root


def test_held_out_faces_are_never_training_faces(faces_root):
    train, test = verification_reader(faces_root, size=32, views=3)
    assert not set(train.names) & set(test.names)
    assert len(train.names) + len(test.names) == len(list((faces_root / "identities").glob("*.png")))
    assert len(test) == 3 * len(test.names) and test.targets == [i for i in range(len(test.names)) for _ in range(3)]
    with pytest.raises(DataError, match="at least 4"):
        verification_reader(faces_root / "nowhere", size=32)


def test_the_task_trains_recognizers_on_a_generated_folder_and_on_as_many_real_images(tmp_path, faces_root):
    # a stand-in for a `mimkit-faces generate` folder: 3 identities of 4 images (noise faces: nobody real)
    generated = tmp_path / "generated"
    rng = np.random.default_rng(0)
    for person in range(3):
        (generated / f"{person:05d}").mkdir(parents=True)
        base = rng.random((32, 32, 3)) * 255
        for k in range(4):
            image = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(generated / f"{person:05d}" / f"{k:03d}.png")
    torch.manual_seed(0)
    generator = build_method("vec2face", **TINY_VEC2FACE)  # not used: the folder is given
    rows = run_task(RECOGNIZER_TASK, generator, faces_root, seed=0,
                    reader_options={"size": 32, "views": 3},
                    generated=str(generated), train=TINY_RECOGNIZER, batch_size=16)
    [row] = rows
    details = row["details"]
    assert row["metric"] == "verification_accuracy" and row["value"] == round(100 * details["verification_accuracy"], 2)
    assert details["generated_identities"] == 3 and details["generated_images"] == 12 and details["steps"] == 6
    assert details["real_images"] >= 12 and details["real_identities"] == row["num_train"]
    assert details["test_images"] == 3 * details["test_identities"] == row["num_test"]
    for key in ("verification_accuracy", "untrained_verification_accuracy", "real_verification_accuracy"):
        assert 0 <= details[key] <= 1
    # three recognizers: the trained ones moved away from their common start, so their accuracies are their own
    assert len({details["verification_accuracy"], details["untrained_verification_accuracy"],
                details["real_verification_accuracy"]}) >= 2


def test_without_a_folder_the_task_generates_one_with_the_model(faces_root):
    torch.manual_seed(0)
    generator = build_method("vec2face", **TINY_VEC2FACE)  # untrained: it has recorded no vector length
    [row] = run_task(RECOGNIZER_TASK, generator, faces_root, seed=0, reader_options={"size": 32, "views": 3},
                     identities=3, per_identity=4, compare_real=False, train=TINY_RECOGNIZER, batch_size=16)
    details = row["details"]
    assert details["generated_identities"] == 3 and details["generated_images"] == 12
    assert "real_verification_accuracy" not in details and 0 <= details["verification_accuracy"] <= 1


class NoGenerator(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(1, 1)


def test_the_task_needs_a_generated_folder_or_a_generator(tmp_path, faces_root):
    with pytest.raises(ConfigError, match="generated"):
        run_task(RECOGNIZER_TASK, NoGenerator(), faces_root, reader_options={"size": 32, "views": 3},
                 train=TINY_RECOGNIZER)
    with pytest.raises(DataError, match="one image subfolder per identity"):
        run_task(RECOGNIZER_TASK, NoGenerator(), faces_root, reader_options={"size": 32, "views": 3},
                 generated=str(tmp_path), train=TINY_RECOGNIZER)
