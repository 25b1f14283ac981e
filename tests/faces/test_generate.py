"""Face generation (faces/generate.py): identities under a similarity bound, perturbations at the official scales
kept above theirs, attribute steering that stops, and the image folder with one subfolder per identity."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mimkit.core import build_method
from mimkit.core.errors import ConfigError
from mimkit.faces.methods.vec2face import TruncatedNormalRatio
from mimkit.faces.generate import generate_dataset, pairwise_similarity, perturb, sample_identities, steer

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=2, identity_network="random", perceptual_weight=0.0, z_channels=16,
            decoder_channels=8, channel_multipliers=(1, 1, 2, 2), res_blocks=1, discriminator_dims=(8, 16))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_method("vec2face", **TINY)


@pytest.mark.parametrize("bound", [0.3, 0.12, 0.1])
def test_identities_stay_under_the_similarity_bound(bound):
    vectors = sample_identities(200, 512, max_similarity=bound, norm=25.0, seed=1)
    similarity = pairwise_similarity(vectors).fill_diagonal_(-1)
    assert vectors.shape == (200, 512) and similarity.max() < bound
    assert torch.allclose(vectors.norm(dim=-1), torch.full((200,), 25.0))
    # 200 unconstrained Gaussian directions break the tight bounds (their largest pair is near 0.18 in 512-d)
    free = pairwise_similarity(torch.randn(200, 512, generator=torch.Generator().manual_seed(0))).fill_diagonal_(-1)
    assert bound > 0.2 or free.max() > bound


def test_an_impossible_bound_is_a_clear_error():
    with pytest.raises(ConfigError, match="only .* of 50 identities"):
        sample_identities(50, 4, max_similarity=-0.5, max_draws=2000)


def test_perturbations_use_the_official_scales_and_keep_identity_above_the_bound():
    centres = sample_identities(6, 512, 0.3, norm=25.0, seed=0)
    samples, owners = perturb(centres, per_identity=10, seed=0)
    assert samples.shape == (60, 512) and torch.equal(owners, torch.arange(6).repeat_interleave(10))
    assert torch.allclose(samples.norm(dim=-1), centres[owners].norm(dim=-1), rtol=1e-5)  # renormalised
    # 4 / 4 / 2 samples per identity at std 0.3 / 0.5 / 0.7: three similarity levels
    similarity = F.cosine_similarity(samples, centres[owners], dim=-1).reshape(6, 10).sort(dim=1).values
    expected = [25 / np.sqrt(25 ** 2 + 512 * s ** 2) for s in (0.7, 0.5, 0.3)]  # E|noise|^2 = 512 s^2
    for low, high, level in ((0, 2, expected[0]), (2, 6, expected[1]), (6, 10, expected[2])):
        assert similarity[:, low:high].mean().item() == pytest.approx(level, abs=0.02)
    # with a bound, the samples below it are redrawn
    bound = 0.85
    free, _ = perturb(centres[:1], 200, seed=3)
    raw = F.cosine_similarity(free, centres[:1], dim=-1)
    assert (raw < bound).any()
    kept, owner = perturb(centres, 200, min_similarity=bound, seed=3)
    assert (F.cosine_similarity(kept, centres[owner], dim=-1) >= bound).all()
    with pytest.raises(ConfigError, match="keeps giving similarity"):
        perturb(centres[:1], 10, min_similarity=0.999, max_tries=5)
    with pytest.raises(ConfigError, match="one fraction per scale"):
        perturb(centres, 10, scales=(0.3, 0.5), fractions=(0.5, 0.4))


class PixelGenerator(nn.Module):
    """A stand-in generator whose image follows its vector (a fixed linear map) and a recognizer that reads the
    image (a fixed projection of its 4 x 4 pooled pixels): what steering needs, without a trained Vec2Face."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("pixels", torch.randn(512, 3 * 8 * 8, generator=g) / 512 ** 0.5)
        self.register_buffer("projection", torch.randn(48, 512, generator=g))
        self.generation_ratio = TruncatedNormalRatio(0.5, 1.0, 0.75, 0.25)

    def forward_vectors(self, vectors, ratio, drop_ratio):
        return torch.tanh(vectors @ self.pixels / 10).reshape(-1, 3, 8, 8), None, None, None

    def identity_of(self, images):
        return F.adaptive_avg_pool2d(images, 4).flatten(1) @ self.projection


def darkness(images):
    """A differentiable attribute: the distance of the mean intensity from a dark target."""
    return (images.mean(dim=(1, 2, 3)) + 0.5).abs()


def test_steering_moves_the_attribute_keeps_identity_and_stops():
    model = PixelGenerator()
    start = sample_identities(4, 512, 0.3, norm=20.0, seed=0)
    identity = model.identity_of(model.forward_vectors(start, 1.0, 0.5)[0])  # the recognizer's view of the start
    before = darkness(model.forward_vectors(start, 1.0, 0.5)[0])
    look = lambda vectors: model.forward_vectors(vectors, 1.0, 0.5)[0]  # noqa: E731
    similarity = lambda vectors: F.cosine_similarity(model.identity_of(look(vectors)), identity, dim=-1)  # noqa: E731
    steered, met = steer(model, start, darkness, min_similarity=0.9, steps=20, max_steps=60, identity=identity)
    assert met.all() and (darkness(look(steered)) < before).all() and (similarity(steered) >= 0.9).all()
    # without the identity term only the bound holds the identity: unbounded, the same steps go below it
    bounded, met = steer(model, start, darkness, min_similarity=0.95, steps=20, max_steps=60, identity_weight=0.0,
                         identity=identity)
    free, _ = steer(model, start, darkness, min_similarity=-1.0, steps=20, max_steps=60, identity_weight=0.0,
                    identity=identity)
    assert met.all() and (similarity(bounded) >= 0.95).all() and (similarity(free) < 0.95).any()
    assert (darkness(look(free)) < darkness(look(bounded))).all() and (darkness(look(bounded)) <= before).all()
    # an attribute tolerance that the identity bound does not allow: never met, inputs returned after max_steps
    same, never = steer(model, start, darkness, min_similarity=0.9, attribute_tolerance=0.01, max_steps=15,
                        identity=identity)
    assert torch.equal(same, start) and not never.any()


def test_steering_a_vec2face_model_keeps_the_identity_bound():
    """Every token masked at generation (mean 1, std 0.01) makes an image a function of its vector alone."""
    torch.manual_seed(0)
    model = build_method("vec2face", **{**TINY, "generation_mask_ratio": (0.0, 1.0, 1.0, 0.01)})
    start = sample_identities(2, 512, 0.3, norm=20.0, seed=0)
    identity = model.identity_of(model.generate(start))
    steered, met = steer(model, start, darkness, min_similarity=0.95, steps=3, max_steps=10, identity=identity)
    assert met.all() and not torch.equal(steered, start)
    similarity = F.cosine_similarity(model.identity_of(model.generate(steered)), identity, dim=-1)
    assert (similarity >= 0.95).all()


def test_writes_one_folder_per_identity(model, tmp_path):
    with pytest.raises(ConfigError, match="give norm"):
        generate_dataset(model, tmp_path / "none", identities=2, images_per_identity=1)
    summary = generate_dataset(model, tmp_path / "out", identities=4, images_per_identity=5, max_similarity=0.2,
                               norm=20.0, batch_size=8, seed=0)
    folders = sorted(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["00000", "00001", "00002", "00003"]
    assert all(sorted(f.name for f in p.iterdir()) == [f"{k:03d}.png" for k in range(5)] for p in folders)
    with Image.open(folders[0] / "000.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    centres = torch.tensor(np.load(tmp_path / "out" / "identities.npy"))
    assert centres.shape == (4, 512) and summary["largest_pairwise_similarity"] < 0.2
    assert json.loads((tmp_path / "out" / "generation.json").read_text())["images"] == 20



def test_measure_folder_with_dlib_on_real_faces(tmp_path):
    """The independent recognizer on real faces (faces.synthetic: LFW crops, astronaut, Grace Hopper), four views
    of each: they separate (optional extra dlib-bin + face-recognition-models; skipped when absent)."""
    pytest.importorskip("dlib", reason="optional extra: pip install dlib-bin face-recognition-models")
    if __import__("importlib").util.find_spec("face_recognition_models") is None:
        pytest.skip("optional extra: pip install dlib-bin face-recognition-models")
    from mimkit.faces.generate import measure_folder
    from mimkit.faces.synthetic import real_faces

    faces = [image for _, image in real_faces(112)]
    for index, face in enumerate(faces[:3] + faces[-2:]):
        folder = tmp_path / f"{index:05d}"
        folder.mkdir()
        for k, shift in enumerate((0, 2, -2, 4)):
            view = np.clip(np.roll(face, shift, axis=1).astype(float) * (1 + 0.05 * k), 0, 255).astype(np.uint8)
            Image.fromarray(view).save(folder / f"{k:03d}.png")
    result = measure_folder(tmp_path, "dlib")
    assert result["identities"] == 5 and result["images"] == 20 and result["recognizer"] == "dlib"
    assert result["separation"] > 0.05 and result["verification_accuracy"] > 0.8
