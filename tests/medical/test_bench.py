"""mimkit.medical.bench: its tasks through the shared runner (UNETR-head segmentation fine-tuning scored by Dice,
anomaly AUC, multi-label AUC) on the project's synthetic data, the UNETR head they use (core.heads), and the
published figures they are compared with."""
import pytest
import torch
from monai.networks.blocks import UnetrPrUpBlock, UnetrUpBlock

from mimkit.benchmarks.published import published_results
from mimkit.benchmarks.report import compare
from mimkit.benchmarks.runner import model_name, run_task
from mimkit.benchmarks.tasks import get_task, list_tasks
from mimkit.core import build_method
from mimkit.core.encoders import build_encoder
from mimkit.core.errors import ConfigError
from mimkit.core.heads import InterpolateUpBlock, ViTSegmenter
from mimkit.medical.bench import anomaly_auc
from mimkit.medical.synthetic import write_synthetic


@pytest.fixture(autouse=True)
def one_thread():
    """Small 3D convolutions run far faster on one thread when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def encoder3d(img_size=16, patch_size=8, depth=2, **extra):
    return build_encoder(img_size=img_size, patch_size=patch_size, in_chans=1, embed_dim=32, depth=depth,
                         num_heads=2, spatial_dims=3, **extra)


def test_segmenter_follows_unetr_for_a_12_block_vit_with_16_voxel_patches():
    encoder = build_encoder(img_size=32, patch_size=16, in_chans=1, embed_dim=24, depth=12, num_heads=2,
                            spatial_dims=3)
    model = ViTSegmenter(encoder, num_classes=3, feature_size=4)
    head = model.head
    # MONAI's UNETR reads hidden_states_out[3], [6], [9]: blocks 4, 7, 10 (z12 enters the decoder)
    assert head.skip_layers == (4, 7, 10)
    assert [block.__class__ for block in head.skips] == [UnetrPrUpBlock] * 3
    # skip j is upsampled 3, 2, 1 times from the token grid: UNETR's encoder2..4 (num_layer 2, 1, 0)
    assert [len(block.blocks) for block in head.skips] == [2, 1, 0]
    assert isinstance(head.final, UnetrUpBlock)
    assert model(torch.rand(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_segmenter_reads_the_chosen_hidden_states():
    """Changing a block after the deepest skip layer changes only the decoder's bottom input, not the skips."""
    encoder = encoder3d(depth=4)
    model = ViTSegmenter(encoder, num_classes=2, feature_size=4, skip_layers=(1, 2))
    x = torch.rand(1, 1, 16, 16, 16)
    grid = (2, 2, 2)
    captured = []
    hook = model.head.skips[1].register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].clone()))
    model(x)
    with torch.no_grad():
        model.encoder.blocks[3].mlp.fc2.weight.mul_(3.0)      # block 4: after both skips
    model(x)
    hook.remove()
    assert torch.equal(captured[0], captured[1])
    expected = model.encoder.forward_features(x, return_layers=[2])[1][0][:, 1:].transpose(1, 2).reshape(1, 32, *grid)
    assert torch.allclose(captured[1], expected)


@pytest.mark.parametrize("patch,img,dims", [(8, 16, 3), (4, 16, 3), (12, 24, 3), (8, 32, 2)])
def test_segmenter_shapes_for_2d_3d_and_non_power_of_two_patches(patch, img, dims):
    encoder = build_encoder(img_size=img, patch_size=patch, in_chans=2, embed_dim=32, depth=2, num_heads=2,
                            spatial_dims=dims)
    model = ViTSegmenter(encoder, num_classes=4, feature_size=4)
    assert isinstance(model.head.final, InterpolateUpBlock) == (patch == 12)   # Hi-End-MAE's UNETR for 12^3 patches
    assert model(torch.rand(2, 2, *([img] * dims))).shape == (2, 4, *([img] * dims))


def test_segmenter_refuses_what_it_cannot_decode():
    with pytest.raises(ConfigError, match="same patch size"):
        ViTSegmenter(build_encoder(img_size=16, patch_size=(4, 8, 8), in_chans=1, embed_dim=32, depth=2,
                                   num_heads=2, spatial_dims=3), 2)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        ViTSegmenter(encoder3d(), 1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return {kind: write_synthetic(root, kind) for kind in ("organs", "chestxray14", "oct", "anomaly")}


def test_segmentation_through_the_runner_beats_the_untrained_head(synthetic):
    task = get_task("synthetic-organs-segmentation")
    assert (task.head, task.metric_key) == ("unetr", "dice_mean")
    train, test = task.load(synthetic["organs"], img_size=(16, 16, 16), patch_size=(8, 8, 8), in_chans=1,
                            cache="memory")
    assert train.classes == ["background", "organ_1", "organ_2", "organ_3"] and len(test) == 2
    torch.manual_seed(0)
    encoder = encoder3d()
    snapshot = {k: v.clone() for k, v in encoder.state_dict().items()}
    settings = {"batch_size": 2, "lr": 2e-3, "warmup_steps": 5, "head_options": {"feature_size": 8},
                "progress": False}
    before, = run_task(task, encoder, synthetic["organs"], max_steps=0, **settings)
    after, = run_task(task, encoder, synthetic["organs"], max_steps=50, **settings)
    assert before["protocol"] == "segmentation" and before["metric"] == "dice" and before["num_test"] == 2
    assert len(before["details"]["dice_per_class"]) == 3      # background excluded
    # the BTCV recipe's settings reach core.finetune; the test's own override them
    assert after["settings"]["weight_decay"] == 1e-5 and after["settings"]["max_steps"] == 50
    assert after["settings"]["head"] == "unetr" and after["settings"]["head_options"] == {"feature_size": 8}
    assert after["value"] > before["value"] + 10              # percent
    # the encoder handed in is not modified: the runner fine-tunes a copy
    assert all(torch.equal(value, snapshot[key]) for key, value in encoder.state_dict().items())


MEMMC = {"img_size": 32, "patch_size": 8, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2,
         "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "num_memory": 4}


def test_anomaly_task_runs_its_own_protocol_beside_a_random_memmc_model(synthetic):
    torch.manual_seed(0)
    method = build_method("memmc_mae", **MEMMC)
    train, test = get_task("synthetic-anomaly").load(synthetic["anomaly"], img_size=(32, 32), patch_size=(8, 8),
                                                     in_chans=1)
    assert "label" not in train[0] and sorted(test.classes) == ["abnormal", "normal"]
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    optimizer = torch.optim.AdamW(method.parameters(), lr=2e-3)
    for _ in range(30):                                      # normal images only, as the paper trains
        loss = method({"image": images}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rows = run_task("synthetic-anomaly", method, synthetic["anomaly"], run_config={"method": "memmc_mae",
                                                                                  "model": MEMMC},
                    compare_random_init=True)
    trained, untrained = rows
    assert (trained["init"], untrained["init"]) == ("pretrained", "random")
    assert trained["settings"] == untrained["settings"] and trained["settings"]["normal_class"] == "normal"
    assert trained["details"]["num_normal"] == trained["details"]["num_anomalous"] == 12
    assert trained["value"] > 90 and trained["details"]["pixel_auroc"] > 0.9
    assert trained["details"]["pixel_auroc"] != untrained["details"]["pixel_auroc"]   # another model was scored
    direct = anomaly_auc(method, test, masks=synthetic["anomaly"] / "masks")
    assert round(100 * direct["auroc"], 2) == trained["value"]


def test_registered_tasks_and_the_published_records_they_meet():
    names = {task.name for task in list_tasks("medical")}
    assert {"chestxray14-finetune", "chexpert-finetune", "btcv-segmentation", "msd-segmentation",
            "oct2017-finetune", "fundus-finetune", "xray-anomaly", "synthetic-organs-segmentation"} <= names
    assert get_task("btcv-segmentation").protocol == "segmentation" and get_task("btcv-segmentation").metric == "dice"
    small = build_encoder("small", img_size=224, patch_size=16)
    assert model_name(small) == "ViT-S/16" and model_name(encoder3d()) == "ViT-32x2/8"
    # a Thorax MAE ViT-S/16 result on the ChestX-ray14 task lines up with the paper's figure
    rows = compare([{"task": "chestxray14-finetune", "method": "thorax_mae", "model": model_name(small),
                     "value": 80.0}])
    assert [(r["published"], r["difference"]) for r in rows] == [(82.3, pytest.approx(-2.3))]
    # Thorax MAE's CheXpert figures are the 5 competition observations, not the 14-label task
    assert published_results(method="thorax_mae", data="CheXpert (5 competition tasks)")
    assert not [p for p in published_results(method="thorax_mae") if p.data == "CheXpert"]


def test_run_task_on_synthetic_chest_xrays_reports_percent_auc(synthetic):
    torch.manual_seed(0)
    method = build_method("mae", img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                          decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    row, = run_task("synthetic-chestxray14-finetune", method, synthetic["chestxray14"], epochs=3, batch_size=8,
                    base_lr=0.05, progress=False)
    assert row["data"] == "mimkit synthetic ChestX-ray14" and row["metric"] == "auroc"
    assert 0.0 <= row["value"] <= 100.0 and row["num_test"] == 16
    assert row["value"] == round(100 * row["details"]["auc_macro"], 2)
    assert row["details"]["auc_classes_used"] == 3               # the three drawn findings; the others are absent
    with pytest.raises(ConfigError, match="single-label"):
        run_task("synthetic-chestxray14-finetune", method, synthetic["chestxray14"], labels_per_class=2)
    with pytest.raises(ConfigError, match="does not score anomalies"):
        run_task("synthetic-anomaly", method, synthetic["anomaly"])


def test_dice_of_a_perfect_prediction_leaves_out_classes_absent_from_the_ground_truth():
    """The Dice the segmentation tasks report (core.finetune's, MONAI's compute_dice per volume)."""
    from mimkit.core.finetune import build_metrics

    label = torch.zeros(1, 20, 20, 20, dtype=torch.long)
    label[0, 2:8, 2:8, 2:8], label[0, 10:18, 10:18, 10:18] = 1, 3        # class 2 never appears
    logits = 10 * torch.nn.functional.one_hot(label[0], 4).movedim(-1, 0).float()[None]
    metrics = build_metrics("dice", 4)
    metrics.update(logits, label[:, None])
    result = metrics.result()
    assert result["dice_per_class"] == [1.0, None, 1.0] and result["dice_mean"] == 1.0
