"""The one benchmark runner: a core task on a tiny labelled folder, both initialisations under one protocol, the
random initialisation built one way, partial fine-tuning and few labels, and clear errors."""
import pytest
import torch

from mimkit.benchmarks.runner import model_name, random_init, run_task
from mimkit.core import build_method
from mimkit.core.encoders import build_encoder
from mimkit.core.errors import ConfigError, DataError

MODEL = {"img_size": 32, "patch_size": 8, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2,
         "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}
CONFIG = {"method": "mae", "model": MODEL, "data": {"mean": [0.3], "std": [0.2], "crop_pct": 1.0}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, make_pngs_module):
    """ImageNet's layout in miniature: train/ and val/ with three classes that differ in brightness."""
    root = tmp_path_factory.mktemp("imagenet")
    make_pngs_module(root / "train", 24, classes=3, seed=1)
    make_pngs_module(root / "val", 12, classes=3, seed=2)
    return root


def blind_method():
    """A method whose encoder sees no pixels (zero patch embedding): every image gives the same features."""
    torch.manual_seed(1)
    method = build_method("mae", **MODEL)
    with torch.no_grad():
        method.encoder.patch_embed.proj.weight.zero_()
        method.encoder.patch_embed.proj.bias.zero_()
    return method


def test_both_initialisations_run_the_same_protocol_with_the_same_settings(folder):
    rows = run_task("imagenet1k-knn", blind_method(), folder, run_config=CONFIG, compare_random_init=True, k=5)
    pretrained, random = rows
    assert (pretrained["init"], random["init"]) == ("pretrained", "random")
    for row in rows:
        assert (row["task"], row["data"], row["protocol"], row["metric"]) == ("imagenet1k-knn", "ImageNet-1K", "knn",
                                                                              "top1")
        assert (row["model"], row["seed"], row["num_train"], row["num_test"]) == ("ViT-32x2/8", 0, 24, 12)
        assert row["value"] == round(100 * row["details"]["accuracy"], 2)
    assert pretrained["settings"] == random["settings"] and pretrained["settings"]["k"] == 5
    # the blind encoder votes for one class (4 of 12 right); the random one sees brightness
    assert pretrained["value"] == 33.33 and random["value"] != pretrained["value"]


def test_random_init_is_built_one_way_and_leaves_the_global_generator_alone():
    method = blind_method()
    state = torch.random.get_rng_state()
    first, second = random_init(method, CONFIG, seed=3), random_init(method, CONFIG, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert type(first) is type(method) and all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                                              second.state_dict().values()))
    assert not torch.equal(first.encoder.patch_embed.proj.weight, method.encoder.patch_embed.proj.weight)
    encoder = random_init(method.encoder, CONFIG, seed=3)       # an encoder for an encoder
    assert torch.equal(encoder.blocks[0].mlp.fc1.weight, first.encoder.blocks[0].mlp.fc1.weight)
    # without the run's config: a copy with every learned parameter drawn again
    with torch.no_grad():  # as if trained: no parameter at its initial value (norms at 1, biases at 0)
        for parameter in method.encoder.parameters():
            parameter.add_(0.5 if parameter.requires_grad else 0.0)
    copy = random_init(method.encoder, None, seed=3)
    for (name, old), new in zip(method.encoder.named_parameters(), copy.parameters()):
        assert torch.equal(old, new) == (not old.requires_grad), name     # fixed sin-cos positions stay
    assert copy.patch_embed.proj.weight.abs().sum() > 0


def test_partial_finetuning_and_few_labels(folder):
    encoder = blind_method().encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    row, = run_task("imagenet1k-partial-finetune", encoder, folder, run_config=CONFIG, labels_per_class=2,
                    max_steps=2, batch_size=4, progress=False, tuned_blocks=1)
    assert row["num_train"] == 6 and row["settings"]["tuned_blocks"] == 1 and row["settings"]["max_steps"] == 2
    assert row["settings"]["head"] == "linear" and 0 <= row["value"] <= 100
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())   # a copy was tuned
    with pytest.raises(ConfigError, match="tuned_blocks"):
        run_task("imagenet1k-partial-finetune", encoder, folder, run_config=CONFIG, tuned_blocks=3, max_steps=1)


def test_wrong_task_folder_or_options_are_clear_errors(folder, tmp_path):
    encoder = build_encoder(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(ConfigError, match="unknown task 'no-such-task'; available: .*imagenet1k-knn"):
        run_task("no-such-task", encoder, folder)
    with pytest.raises(DataError, match="does not exist .*never downloads"):
        run_task("imagenet1k-knn", encoder, tmp_path / "missing")
    with pytest.raises(ConfigError, match="do not apply to protocol 'knn'"):
        run_task("imagenet1k-knn", encoder, folder, epochs=3)
    with pytest.raises(ConfigError, match="a method .* or a mimkit encoder"):
        run_task("imagenet1k-knn", torch.nn.Linear(2, 2), folder)


def test_model_names():
    assert model_name(build_encoder("tiny", img_size=224, patch_size=16)) == "ViT-Ti/16"
    assert model_name(build_encoder("base", img_size=224, patch_size=14)) == "ViT-B/14"
    assert model_name(build_encoder(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2,
                                    num_heads=2)) == "ViT-32x2/8"


@pytest.mark.parametrize("protocol", ["anomaly", "retrieval", "generation"])
def test_a_protocol_core_cannot_run_needs_the_tasks_own_runner(protocol):
    """Without its runner such a task would silently be run as fine-tuning; declaring it is refused instead."""
    from mimkit.benchmarks.tasks import Task

    with pytest.raises(ConfigError, match=f"the {protocol} protocol needs the task's own runner"):
        Task(name="x", domain="faces", dataset="x", protocol=protocol, metric="accuracy", reader=lambda root, **_: None)
