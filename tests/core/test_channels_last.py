"""Channels-last batches (train.channels_last; default on CUDA): the same tokens and losses as contiguous ones, for
the matmul patch embedding (MAE) and the convolution ones (Uni4Eye's 2D/3D embedding)."""
import json

import pytest
import torch

from mimkit.core import build_method
from mimkit.core.distributed import channels_last_batch, use_channels_last
from mimkit.core.encoders import UnifiedViTEncoder
from mimkit.core.train import TrainConfig, pretrain

TINY = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=2)


def test_channels_last_is_automatic_on_cuda_only_unless_set():
    assert use_channels_last(None, "cuda") and not use_channels_last(None, "cpu")
    assert use_channels_last(True, "cpu") and not use_channels_last(False, "cuda")


def test_a_channels_last_batch_holds_the_same_values_in_the_other_layout(astronaut_crops_of):
    images = astronaut_crops_of(2, 32)
    batch = channels_last_batch({"image": images, "volume": torch.rand(1, 1, 8, 8, 8), "index": torch.arange(2)})
    assert batch["image"].is_contiguous(memory_format=torch.channels_last) and not batch["image"].is_contiguous()
    assert batch["volume"].is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(batch["image"], images) and torch.equal(batch["index"], torch.arange(2))


def test_the_convolution_patch_embeddings_give_the_same_tokens_channels_last(astronaut_crops_of):
    torch.manual_seed(0)
    encoder = UnifiedViTEncoder(img_size=32, patch_size=8, in_chans=3, volume_size=16, volume_patch_size=8,
                                volume_chans=1, embed_dim=32, depth=1, num_heads=2).eval()
    images, volumes = astronaut_crops_of(2, 32), torch.rand(2, 1, 16, 16, 16)
    for x in (images, volumes):
        plain = encoder.forward_features(x)
        fast = encoder.forward_features(channels_last_batch({"image": x})["image"])
        assert fast.shape == plain.shape and torch.allclose(fast, plain, rtol=1e-5, atol=1e-6)


def test_training_on_channels_last_batches_gives_the_same_losses(make_pngs, tmp_path):
    from mimkit.core.data import ImageFolderDataset

    colour = {**TINY, "in_chans": 3}
    data = ImageFolderDataset(make_pngs(tmp_path / "rgb", 16, channels=3), img_size=32, patch_size=8, in_chans=3)
    layouts, losses = [], []
    for setting in (False, True):
        seen = []
        torch.manual_seed(0)
        method = build_method("mae", **colour)
        method.encoder.patch_embed.register_forward_pre_hook(  # training steps only (not the final pictures)
            lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                             and not args[0].is_contiguous()) if module.training else None)
        cfg = TrainConfig(batch_size=4, max_steps=3, num_workers=0, log_every=1, progress=False, accelerator="cpu",
                          lr=1e-3, warmup_steps=1, channels_last=setting)
        pretrain(method, data, tmp_path / str(setting), cfg, method_config=colour)
        layouts.append(seen)
        losses.append([row["loss"] for row in json.loads((tmp_path / str(setting) / "metrics.json").read_text())
                       ["train"]["history"]])
    assert layouts == [[False] * 3, [True] * 3]  # the method saw the layout asked for, at every step
    assert losses[1] == losses[0] and len(losses[0]) == 3
