"""The Vec2Face commands of mimkit-faces: `generate` (a saved model -> one image subfolder per identity) and
`train-identity` (ArcFace on identity subfolders -> a recognizer file)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.core import build_method
from mimkit.core.errors import ConfigError
from mimkit.faces.identity import IResNet, load_identity_network, save_identity_network

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=2, identity_network="random", perceptual_weight=0.0, z_channels=16,
            decoder_channels=8, channel_multipliers=(1, 1, 2, 2), res_blocks=1, discriminator_dims=(8, 16))


def test_generate_command_writes_the_folder_from_a_saved_model(tmp_path):
    from mimkit.core.checkpoints import save_method
    from mimkit.faces.cli import main

    torch.manual_seed(0)
    model = build_method("vec2face", **TINY)
    model.identity_norm.fill_(18.0)  # as if trained on vectors of that length
    model.identity_count.fill_(100)
    path = save_method(model, tmp_path / "run" / "model.safetensors", TINY)
    recognizer = save_identity_network(IResNet(18, (8, 8, 16, 16), 32, 32), tmp_path / "judge.safetensors")
    assert main(["generate", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "faces"), "--identities", "3",
                 "--images-per-identity", "4", "--max-similarity", "0.25", "--seed", "1",
                 "--measure", str(recognizer)]) == 0
    assert sorted(p.name for p in (tmp_path / "faces").iterdir() if p.is_dir()) == ["00000", "00001", "00002"]
    summary = json.loads((tmp_path / "faces" / "generation.json").read_text())
    assert summary["images"] == 12 and summary["norm"] == pytest.approx(18.0)
    assert summary["largest_pairwise_similarity"] < 0.25
    measured = summary["measured"]  # by another recognizer (random here: the numbers only have to be there)
    assert measured["identities"] == 3 and measured["images"] == 12 and 0 <= measured["verification_accuracy"] <= 1
    assert np.linalg.norm(np.load(tmp_path / "faces" / "identities.npy"), axis=1) == pytest.approx([18.0] * 3)
    # a model of another method is refused by name
    other = save_method(build_method("mae", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                     decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
                        tmp_path / "mae.safetensors", dict(img_size=32, patch_size=8, embed_dim=32, depth=1,
                                                           num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                                                           decoder_num_heads=2))
    assert path.is_file()
    with pytest.raises(ConfigError, match="'mae' model; a vec2face one is needed"):
        from mimkit.faces.generate import load_generator
        load_generator(other)


def test_train_identity_command(tmp_path):
    from mimkit.faces.cli import main
    from mimkit.faces.synthetic import real_faces

    for index, (_, face) in enumerate(real_faces(32)[:3]):
        folder = tmp_path / "people" / f"person{index}"
        folder.mkdir(parents=True)
        for k in range(4):
            Image.fromarray(np.roll(face, k, axis=1)).save(folder / f"{k}.png")
    out = tmp_path / "recognizer.safetensors"
    assert main(["train-identity", "--data", str(tmp_path / "people"), "--out", str(out), "--train.depth", "18",
                 "--train.widths", "[8, 8, 16, 16]", "--train.embedding_dim", "32", "--train.img_size", "32",
                 "--train.batch_size", "6", "--train.max_steps", "3",
                 "--train.extra", "{enable_progress_bar: false, accelerator: cpu}"]) == 0
    network = load_identity_network(out)
    assert network.config["embedding_dim"] == 32 and network.config["widths"] == [8, 8, 16, 16]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["classes"] == ["person0", "person1", "person2"] and len(record["losses"]) == 3

