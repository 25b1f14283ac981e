"""The identity network (faces/identity.py): insightface's IResNet layout and files, the ArcFace margin, and ArcFace
training on real faces (faces.synthetic's LFW crops and portraits) giving a recognizer that tells them apart."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mimkit.core.errors import CheckpointError, DataError
from mimkit.faces.identity import (ArcFaceHead, IdentityTrainConfig, IResNet, embed_faces, load_identity_network,
                                   save_identity_network, train_identity)

SMALL = dict(layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), embedding_dim=64, img_size=32)


def test_iresnet_has_insightface_keys_and_depths():
    keys = set(IResNet(18, widths=(8, 8, 16, 16), embedding_dim=32).state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv2.weight",
                "layer1.0.bn3.bias", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
                "layer4.1.prelu.weight", "bn2.weight", "fc.weight", "features.running_mean"):
        assert key in keys, key
    assert len({k.split(".")[1] for k in IResNet(100, (8, 8, 8, 8), 16).state_dict() if k.startswith("layer3.")}) == 30
    net = IResNet(**SMALL).eval()
    assert net.fc.in_features == 32 * 2 * 2  # 32 px through four stride-2 stages
    assert net(torch.rand(3, 3, 32, 32)).shape == (3, 64)
    assert not net.features.weight.requires_grad  # insightface keeps the feature BN's scale at 1


def test_an_insightface_style_pth_loads_with_its_shape_read_from_the_keys(tmp_path):
    torch.manual_seed(0)
    net = IResNet(**SMALL).eval()
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # a DataParallel-saved file
    loaded = load_identity_network(path)
    assert loaded.config == {**IResNet(**SMALL).config}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(loaded(x), net(x), atol=1e-6)
    again = load_identity_network(save_identity_network(loaded, tmp_path / "net.safetensors"))
    assert torch.allclose(again(x), net(x), atol=1e-6) and not any(p.requires_grad for p in again.parameters())
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an insightface IResNet"):
        load_identity_network(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_identity_network(tmp_path / "missing.pth")


def test_arcface_adds_the_angular_margin_to_the_true_class_only():
    torch.manual_seed(0)
    head = ArcFaceHead(16, 5, scale=64.0, margin=0.5)
    features, labels = torch.randn(6, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    cosine = F.normalize(features) @ F.normalize(head.weight).T
    logits = head(features, labels)
    true = torch.zeros_like(cosine, dtype=torch.bool).scatter(1, labels[:, None], True)
    assert torch.allclose(logits[~true], 64 * cosine[~true], atol=1e-4)
    theta = torch.acos(cosine[true])
    expected = torch.where(theta + 0.5 <= math.pi, torch.cos(theta + 0.5), cosine[true] - 0.5 * math.sin(0.5))
    assert torch.allclose(logits[true], 64 * expected, atol=1e-4)
    assert (logits[true] < 64 * cosine[true]).all()  # the margin makes the true class harder
    head.margin = 0.0
    assert torch.allclose(head(features, labels), 64 * cosine, atol=1e-4)


def _augment(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A shifted, rescaled, brightness-changed view of a face (the same identity)."""
    size = face.shape[0]
    crop = int(size * rng.uniform(0.8, 0.95))
    top, left = rng.integers(0, size - crop + 1, 2)
    view = Image.fromarray(face[top:top + crop, left:left + crop]).resize((size, size), Image.BILINEAR)
    return np.clip(np.asarray(view) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)


def test_arcface_training_on_real_faces_learns_to_tell_them_apart(tmp_path):
    from mimkit.faces.synthetic import real_faces

    rng = np.random.default_rng(0)
    people = [image for _, image in real_faces(32)][:6]  # six real LFW faces, one identity each
    for index, face in enumerate(people):
        folder = tmp_path / "train" / f"id{index}"
        folder.mkdir(parents=True)
        for k in range(8):
            Image.fromarray(_augment(face, rng)).save(folder / f"{k}.png")
    config = IdentityTrainConfig(depth=18, widths=(8, 16, 16, 32), embedding_dim=64, img_size=32, batch_size=16,
                                 learning_rate=0.05, max_steps=60, margin=0.3, scale=16.0,
                                 extra=dict(enable_progress_bar=False, accelerator="cpu"))
    torch.manual_seed(0)
    untrained = IResNet(18, config.widths, config.embedding_dim, config.img_size).eval()
    network, losses = train_identity(tmp_path / "train", tmp_path / "net.safetensors", config)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    # new views of the same six faces: same-person pairs are closer than different-person pairs
    views = np.stack([_augment(face, rng) for face in people for _ in range(4)])
    images = torch.tensor(views).permute(0, 3, 1, 2).float() / 127.5 - 1
    same = torch.arange(24)[:, None] // 4 == torch.arange(24)[None] // 4
    off_diagonal = ~torch.eye(24, dtype=torch.bool)

    def gap(model):
        features = embed_faces(model, images)
        similarity = features @ features.T
        return (similarity[same & off_diagonal].mean() - similarity[~same].mean()).item()

    assert gap(network) > 0.2 and gap(network) > gap(untrained) + 0.1
    loaded = load_identity_network(tmp_path / "net.safetensors")
    assert torch.allclose(embed_faces(loaded, images), embed_faces(network, images), atol=1e-5)


def test_training_needs_two_identities(tmp_path):
    folder = tmp_path / "one" / "only"
    folder.mkdir(parents=True)
    for k in range(2):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / f"{k}.png")
    with pytest.raises(DataError, match="at least 2 identity subfolders"):
        train_identity(tmp_path / "one", tmp_path / "x.safetensors", IdentityTrainConfig(img_size=32, max_steps=1))


def _people(tmp_path, count=4, views=5, seed=0):
    """Identity folders of augmented views of real faces (faces.synthetic), one subfolder per person."""
    from mimkit.faces.synthetic import real_faces

    rng = np.random.default_rng(seed)
    faces = [image for _, image in real_faces(112)]
    chosen = faces[:count - 2] + faces[-2:]  # LFW crops and the two portraits
    for index, face in enumerate(chosen):
        folder = tmp_path / f"person{index}"
        folder.mkdir(parents=True)
        for k in range(views):
            Image.fromarray(_augment(face, rng)).save(folder / f"{k}.png")
    return tmp_path


def test_identity_statistics_and_verification_accuracy(tmp_path):
    from mimkit.faces.identity import identity_statistics, read_identity_folder, verification_accuracy

    images, owners, names = read_identity_folder(_people(tmp_path, count=4, views=5))
    assert names == ["person0", "person1", "person2", "person3"]
    assert owners.tolist() == [i for i in range(4) for _ in range(5)]
    g = torch.Generator().manual_seed(0)
    perfect = F.one_hot(owners, 4).float() + 0.1 * torch.randn(20, 4, generator=g)  # features that know who is who
    noise = torch.randn(20, 4, generator=g)
    good, bad = identity_statistics(perfect, owners), identity_statistics(noise, owners)
    assert good["intra"] > 0.9 and good["inter"] < 0.1 and good["separation"] > 0.8
    assert bad["separation"] < good["separation"] - 0.5 and good["identities"] == 4 and good["images"] == 20
    assert verification_accuracy(perfect, owners) == 1.0
    assert verification_accuracy(noise, owners) < 0.8


def test_dlib_recognizer_tells_real_faces_apart(tmp_path):
    pytest.importorskip("dlib", reason="optional extra: pip install dlib-bin face-recognition-models")
    if __import__("importlib").util.find_spec("face_recognition_models") is None:
        pytest.skip("optional extra: pip install dlib-bin face-recognition-models")
    from mimkit.faces.identity import DlibRecognizer, identity_statistics, read_identity_folder

    images, owners, _ = read_identity_folder(_people(tmp_path, count=4, views=3))
    features = DlibRecognizer()(images)
    assert features.shape == (12, 128)
    stats = identity_statistics(features, owners)
    assert stats["intra"] > stats["inter"] + 0.05  # views of one person are closer than two people
