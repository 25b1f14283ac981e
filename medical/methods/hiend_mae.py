"""Hi-End-MAE: Tang et al., "Hi-End-MAE: Hierarchical encoder-driven masked autoencoders are stronger vision
learners for medical image segmentation", Medical Image Analysis 2025 (arXiv:2502.08347; official code:
FengheTan9/Hi-End-MAE).

The encoder sees the visible 25% of a CT volume's patches. The decoder starts from the last encoder layer
(with mask tokens), runs self-attention blocks, then cross-attention blocks that each query one earlier
encoder layer, from deep to shallow ("encoder-driven hierarchical dense decoding"). The loss is MSE on the
masked patches' per-patch normalised voxels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from mimkit.core.decoders import HierarchicalDecoder
from mimkit.core.encoders import EncoderConfig
from mimkit.core.errors import ConfigError
from mimkit.core.masking import RandomMasker, RatioSchedule
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.targets import PixelTarget, masked_mse


@register_method("hiend_mae")
class HiEndMAE(MIMMethod):
    """3D MAE whose decoder cross-attends to encoder blocks 10, 7 and 4 in turn after two self-attention blocks."""

    supported_dims = (2, 3)

    def __init__(self,
                 # official main.py: --img_size 96 (96^3 CT crops), --in_chans 1; released model "ViT-p12/1536":
                 # 12 blocks, 1536 wide, 16 heads (networks/vit.py vit_large_patch12_96; p16 also provided)
                 encoder: EncoderConfig = EncoderConfig(img_size=96, patch_size=12, in_chans=1, embed_dim=1536,
                                                        depth=12, num_heads=16, spatial_dims=3),
                 # networks/vit.py decoder_large_patch12_96: 528 wide, 2 self-attention + 3 cross-attention blocks
                 decoder_embed_dim: int = 528, decoder_self_depth: int = 2, decoder_num_heads: int = 16,
                 # Encoder blocks (1-based) read by the cross-attention blocks, deep to shallow: the released
                 # code reads entries 9, 6, 3 of its 0-based list of block outputs, i.e. blocks 10, 7, 4 (the
                 # paper names them layers 9, 6, 3)
                 decoder_layers: Sequence[int] = (10, 7, 4),
                 mask_ratio: float | RatioSchedule = 0.75,  # official main.py: --mask_ratio 0.75
                 norm_pix_loss: bool = True):  # official code: target normalised per patch (affine-free LayerNorm)
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)
        self.decoder_layers = tuple(int(layer) for layer in decoder_layers)
        if not self.decoder_layers or any(not 1 <= layer <= enc.depth for layer in self.decoder_layers):
            raise ConfigError(f"decoder_layers must be encoder block numbers between 1 and depth={enc.depth}, "
                              f"got {self.decoder_layers}")
        self.masker = RandomMasker(mask_ratio)
        self.target = PixelTarget(enc.patch_size, normalize=norm_pix_loss)
        self.decoder = HierarchicalDecoder(enc.grid, enc.embed_dim, math.prod(enc.patch_size) * enc.in_chans,
                                           num_contexts=len(self.decoder_layers), decoder_embed_dim=decoder_embed_dim,
                                           self_depth=decoder_self_depth, decoder_num_heads=decoder_num_heads,
                                           mlp_ratio=enc.mlp_ratio, num_prefix_tokens=enc.num_prefix_tokens)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        mask = self.masker(images.shape[0], self.encoder.num_patches, step=step, device=images.device)
        latent, hidden = self.encoder.forward_visible(images, mask.ids_keep, return_layers=self.decoder_layers)
        # forward_tokens returns the hidden states in block order; reorder them as the decoder reads them
        by_layer = dict(zip(sorted(set(self.decoder_layers)), hidden))
        pred = self.decoder(latent, mask.ids_restore, [by_layer[layer] for layer in self.decoder_layers])
        loss = masked_mse(pred, self.target(images), mask.mask)
        return MIMOutput(loss=loss, parts={"reconstruction": loss.detach()}, pred=pred, mask=mask.mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.target.to_pixels(out.pred, self.images(batch))
