"""Thorax MAE (Xiao et al. WACV 2023): MAE with the paper's chest X-ray defaults; its recipes load and build."""
from importlib import resources

import pytest
import torch
import yaml

from mimkit.core import build_method, list_methods
from mimkit.core.registry import method_arguments


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def recipe(name: str) -> dict:
    return yaml.safe_load(resources.files("mimkit.medical").joinpath("recipes", name).read_text())


def test_default_mask_hides_90_percent_of_tokens():
    torch.manual_seed(0)
    model = build_method("thorax_mae")  # the paper's ViT-S/16 at 224 with a 512 x 2 decoder
    assert model.encoder.embed_dim == 384 and len(model.encoder.blocks) == 12 and len(model.decoder.blocks) == 2
    out = model({"image": torch.rand(2, 3, 224, 224)})
    assert out.mask.shape == (2, 196)
    # MAE's len_keep = int(196 * (1 - 0.9)) = int(19.59...) = 19 visible, 177 hidden
    assert out.mask.sum(1).tolist() == [177.0, 177.0]
    args = method_arguments("thorax_mae")
    assert args["mask_ratio"] == 0.9 and args["norm_pix_loss"] is False and args["decoder_depth"] == 2


def test_pretrain_recipe_loads_and_builds_the_method():
    pre = recipe("thorax_mae_pretrain.yaml")
    assert pre["method"] == "thorax_mae"
    assert pre["model"]["mask_ratio"] == 0.9 and pre["data"]["crop_scale"] == [0.5, 1.0]
    assert pre["train"]["base_lr"] == 1.5e-4 and pre["train"]["epochs"] == 800
    encoder = {**pre["model"]["encoder"], "img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2}
    model = build_method(pre["method"], **{**pre["model"], "encoder": encoder, "decoder_embed_dim": 32,
                                           "decoder_num_heads": 2})
    assert model.masker.num_masked(16, None) == 15  # the recipe's 90% on a 4 x 4 grid: int(1.6) = 1 kept


def test_finetune_recipe_values_and_names():
    ft = recipe("thorax_mae_finetune.yaml")
    train = ft["finetune"]
    assert train["layer_decay"] == 0.55 and train["drop_path"] == 0.2 and train["base_lr"] == 2.5e-4
    assert train["epochs"] == 75 and train["rand_augment"].startswith("rand-m6")
    assert ft["data"]["layout"] == "chestxray14" and ft["data"]["crop_pct"] == 224 / 256   # 14 findings, multi-label


def test_registered_2d_3d_shapes_and_loss_falls(fixed_batch_training):
    assert "thorax_mae" in list_methods()
    tiny = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                decoder_embed_dim=32, decoder_num_heads=2)
    vol_model = build_method("thorax_mae", **{**tiny, "img_size": 16, "spatial_dims": 3})
    assert vol_model({"image": torch.rand(2, 1, 16, 16, 16)}).pred.shape == (2, 8, 512)
    torch.manual_seed(0)
    model = build_method("thorax_mae", **tiny)
    images = torch.rand(8, 1, 32, 32)
    run = fixed_batch_training(model, {"image": images}, steps=40)
    assert run.out.pred.shape == (8, 16, 64)
    assert run.last(5) < 0.7 * run.first(5)


def test_finetune_recipe_runs_the_multilabel_auc_evaluation():
    import inspect

    from mimkit.core.evaluate import evaluate, finetune
    ft = recipe("thorax_mae_finetune.yaml")
    options = {k: v for k, v in ft["finetune"].items() if k in inspect.signature(finetune).parameters}
    # every recipe setting is a fine-tuning option except the hardware
    assert set(ft["finetune"]) - set(options) == {"devices"}
    torch.manual_seed(0)
    model = build_method("thorax_mae", img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                         decoder_embed_dim=32, decoder_num_heads=2)
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(24, 3, generator=g) < 0.5).float()
    labels[0], labels[1] = 1.0, 0.0  # both values present in every class
    # class c brightens quadrant c: learnable, so the AUC is about the labels, not chance
    images = torch.rand(24, 3, 32, 32, generator=g) * 0.2
    for c in range(3):
        images[:, :, (c // 2) * 16:(c // 2) * 16 + 16, (c % 2) * 16:(c % 2) * 16 + 16] += labels[:, c, None, None, None]
    data = [{"image": im, "label": lab} for im, lab in zip(images, labels)]
    result = evaluate(model.encoder, "finetune", data, data,
                      **{**options, "epochs": 8, "warmup_epochs": 1, "batch_size": 8, "base_lr": 0.05,
                         "progress": False})
    assert result["auc_classes_used"] == 3 and result["auc_classes_skipped"] == 0
    assert result["auc_macro"] > 0.8


def test_published_figures_are_registered():
    from mimkit.benchmarks.published import published_results
    from mimkit.medical import published  # noqa: F401  (registers on import)

    records = {(r.model, r.data, r.metric): r.value for r in published_results(method="thorax_mae")}
    assert records[("ViT-S/16", "ChestX-ray14", "auroc")] == 82.3
    assert records[("ViT-B/16", "ChestX-ray14", "auroc")] == 83.0
    assert len(records) == 6
