"""Masked Object Modeling (DistFormer): per-object token masking, crop reconstruction weights, both losses reach the
backbone, the KITTI-style reader. Real pixels: scikit-image's coffee / rocket / hubble_deep_field photographs with
its chelsea and astronaut images pasted at known boxes (`core.objects.pasted_objects`)."""
import pytest
import torch

from mimkit.core import build_method
from mimkit.core.errors import DataError
from mimkit.core.objects import (KittiObjects, object_boxes, pad_objects, pasted_objects, read_kitti_labels,
                                 write_pasted_kitti)
from mimkit.core.registry import method_arguments
from mimkit.core.train import TrainConfig, pretrain

TINY = dict(img_size=64, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, object_dim=32,
            object_depth=1, object_decoder_depth=1, object_num_heads=2, crop_size=(16, 16), min_box_size=(4, 4))


def build(**kwargs):
    torch.manual_seed(0)
    return build_method("mom", **{**TINY, **kwargs})


def batch_of(samples, max_objects: int = 3) -> dict:
    padded = [pad_objects(s["boxes"], s["distances"], max_objects) for s in samples]
    return {"image": torch.stack([s["image"] for s in samples]), "boxes": torch.stack([p[0] for p in padded]),
            "distances": torch.stack([p[1] for p in padded])}


@pytest.fixture(scope="module")
def samples():
    return pasted_objects(6, 64, objects_per_image=2, seed=0)


def test_registered_with_the_official_kitti_values():
    args = method_arguments("mom")
    assert (args["mask_ratio"], args["pool_size"], args["mom_weight"]) == (0.5, 8, 20.0)
    assert tuple(args["crop_size"]) == (120, 120) and tuple(args["min_box_size"]) == (25, 25)
    assert args["object_depth"] == 6 and args["object_decoder_depth"] == 2


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_exactly_the_configured_share_of_each_objects_tokens_is_masked(samples, ratio):
    model = build(mask_ratio=ratio)
    seen = {}
    original = model.object_encoder.forward

    def spy(x):
        seen["visible"] = x.shape
        return original(x)
    model.object_encoder.forward = spy
    out = model(batch_of(samples))
    objects = sum(len(s["boxes"]) for s in samples)
    assert out.mask.shape == (objects, 64)
    assert torch.all(out.mask.sum(1) == int(ratio * 64))  # per object, not on average
    assert seen["visible"] == (objects, 64 - int(ratio * 64), 32)
    assert not torch.equal(out.mask[0], out.mask[1])  # each object draws its own tokens


def test_both_losses_send_gradients_to_the_shared_backbone(samples):
    def backbone_gradient(model, batch) -> float:
        torch.manual_seed(1)
        out = model(batch)
        grads = torch.autograd.grad(out.loss, [p for p in model.encoder.parameters() if p.requires_grad],
                                    allow_unused=True)
        return sum(float(g.abs().sum()) for g in grads if g is not None), out

    batch = batch_of(samples)
    only_mom = {k: v for k, v in batch.items() if k != "distances"}  # no distance targets: the MoM term alone
    mom_grad, out = backbone_gradient(build(), only_mom)
    assert set(out.parts) == {"mom"} and mom_grad > 0
    distance_grad, out = backbone_gradient(build(mom_weight=0.0), batch)  # the distance term alone
    assert distance_grad > 0 and set(out.parts) == {"distance"}
    both_grad, out = backbone_gradient(build(), batch)
    assert set(out.parts) == {"distance", "mom"}
    assert both_grad > 0 and both_grad != pytest.approx(mom_grad) and both_grad != pytest.approx(distance_grad)


def test_dark_or_small_boxes_weigh_nothing(samples):
    model = build(min_box_size=(20, 20))
    boxes = torch.tensor([[0, 0, 30, 30], [0, 0, 10, 30], [0, 0, 30, 30]], dtype=torch.float32)
    crops = torch.rand(3, 3, 16, 16) + 0.1
    crops[2] = 0.001  # a dark crop
    assert model.object_weights(crops, boxes).tolist() == [1.0, 0.0, 0.0]
    # a batch whose only boxes are tiny: MoM contributes nothing, the distance still trains
    tiny = [{**s, "boxes": s["boxes"][:, [0, 1, 0, 1]] + torch.tensor([0, 0, 5, 5.0])} for s in samples[:2]]
    out = build(min_box_size=(20, 20))(batch_of(tiny))
    assert float(out.parts["mom"]) == 0 and float(out.parts["distance"]) > 0


def test_loss_falls_on_fixed_data(samples, fixed_batch_training):
    model = build()
    run = fixed_batch_training(model, batch_of(samples), steps=40, lr=2e-3, reseed=1)
    assert run.last(part="distance") < 0.5 * run.first(part="distance")
    assert run.last(part="mom") < 0.8 * run.first(part="mom")
    predicted = model.predict_distances(batch_of(samples)["image"], [s["boxes"] for s in samples])
    assert [len(p) for p in predicted] == [len(s["boxes"]) for s in samples]


def test_pasted_objects_have_known_boxes_and_pinhole_distances(samples):
    for s in samples:
        x1, y1, x2, y2 = s["boxes"][0].tolist()
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        assert s["distances"][0] == pytest.approx(64 * 1.0 / (y2 - y1))
    again = pasted_objects(6, 64, objects_per_image=2, seed=0)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(samples, again))


def test_kitti_reader_round_trip_and_errors(tmp_path):
    root = write_pasted_kitti(tmp_path / "kitti", 3, 64, seed=2)
    label = root / "label_2" / "000000.txt"
    label.write_text(label.read_text() + "DontCare -1 -1 -10 1 2 3 4 -1 -1 -1 -1000 -1000 -1000 -10\n")
    boxes, distances, names = read_kitti_labels(label)
    assert boxes.shape == (2, 4) and names == ["Car", "Car"]  # DontCare dropped
    reference = pasted_objects(3, 64, seed=2)[0]
    assert torch.allclose(torch.from_numpy(boxes), reference["boxes"], atol=0.01)
    assert torch.allclose(torch.from_numpy(distances), reference["distances"], atol=1e-3)
    data = KittiObjects(root, img_size=(32, 64), max_objects=4)
    item = data[0]
    assert item["image"].shape == (3, 32, 64) and item["boxes"].shape == (4, 4)
    assert torch.allclose(item["boxes"][:2], reference["boxes"] * torch.tensor([1, 0.5, 1, 0.5]), atol=0.01)
    assert torch.isnan(item["boxes"][2:]).all()
    bad = tmp_path / "bad.txt"
    bad.write_text("Car 0 0 0 1 2 3\n")
    with pytest.raises(DataError, match="bad.txt:1"):
        read_kitti_labels(bad)
    with pytest.raises(DataError, match="boxes"):
        build()({"image": torch.rand(1, 3, 64, 64)})
    lists = object_boxes({"boxes": [reference["boxes"]], "distances": [reference["distances"]]})
    assert torch.equal(lists[0][0], reference["boxes"])


def test_trains_with_the_shared_trainer_on_a_kitti_folder(tmp_path):
    root = write_pasted_kitti(tmp_path / "kitti", 8, 64, seed=3)
    data = KittiObjects(root, img_size=64, max_objects=2)
    config = TrainConfig(batch_size=4, max_steps=2, num_workers=0, progress=False, accelerator="cpu",
                         checkpoint_every=2, log_every=1)
    summary = pretrain("mom", data, tmp_path / "run", config, method_config=TINY)
    assert summary["method"] == "mom" and summary["steps"] == 2
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_without_the_mom_term_every_object_token_is_visible_and_nothing_is_reconstructed(samples):
    model = build(mom_weight=0.0)
    seen = {}
    original = model.object_encoder.forward

    def spy(x):
        seen["visible"] = x.shape
        return original(x)
    model.object_encoder.forward = spy
    model.object_decoder.forward = lambda x: pytest.fail("the decoder runs with mom_weight 0")
    out = model(batch_of(samples))
    assert seen["visible"] == (sum(len(s["boxes"]) for s in samples), 64, 32)  # as the official encode_only path
    assert out.mask is None and out.pred is None


def test_crops_are_clean_pixels_whatever_the_loaders_normalisation(samples):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    raw = batch_of(samples[:2])
    normalised = (raw["image"] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    model = build(data_mean=mean, data_std=std)
    boxes = object_boxes(raw)[0]
    crops = model.object_crops(normalised, boxes)
    assert torch.allclose(crops, build().object_crops(raw["image"], boxes), atol=1e-5)
    grey = torch.full((1, 3, 16, 16), 0.3)  # a mid-grey crop: dark once normalised (< 0), not in pixels
    box = torch.tensor([[0, 0, 30, 30.0]])
    assert model.object_weights(grey, box).item() == 1
    assert model.object_weights((grey - 0.485) / 0.229, box).item() == 0
    with pytest.raises(DataError, match="data_mean"):
        build(data_mean=mean)


def test_kitti_flips_image_and_boxes_together_from_the_samplers_seed(tmp_path):
    root = write_pasted_kitti(tmp_path / "kitti", 2, 64, seed=4)
    data = KittiObjects(root, img_size=64, max_objects=2, hflip=True)
    plain = data[0]
    seeds = [s for s in range(20) if not torch.equal(data[(0, s)]["image"], plain["image"])]
    assert 0 < len(seeds) < 20  # about half of the seeds flip
    flipped = data[(0, seeds[0])]
    assert torch.equal(flipped["image"], plain["image"].flip(-1)) and torch.equal(flipped["image"],
                                                                                 data[(0, seeds[0])]["image"])
    x1, y1, x2, y2 = plain["boxes"].unbind(-1)
    assert torch.allclose(flipped["boxes"], torch.stack([64 - x2, y1, 64 - x1, y2], -1))
    assert torch.equal(flipped["distances"], plain["distances"])
    assert torch.equal(KittiObjects(root, img_size=64, max_objects=2)[(0, seeds[0])]["image"], plain["image"])
