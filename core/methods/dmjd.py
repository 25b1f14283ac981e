"""DMJD: Ma et al., "Disjoint Masking with Joint Distillation for Efficient Masked Image Modeling", 2023
(IEEE Transactions on Multimedia; arXiv 2301.00230).

Disjoint masking: each image is masked K times at the same ratio, the views' hidden sets spread over the
image as evenly as possible (see `DisjointMasker`), and the K views are stacked along the batch.
Joint distillation: an MAE decoder predicts the masked tokens' HOG features (L2 loss on masked tokens) and
a projector on the encoder's visible tokens predicts their HOG features (smooth-L1 with beta 2.0, weight
theta). HOG (9 orientations, 8x8-pixel cells, each cell standardised) is the paper's default target.
The official code pairs this with a ConvViT encoder; here the encoder is the plain ViT.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..decoders import MAEDecoder
from ..encoders import EncoderConfig, LayerNorm, gather_tokens, init_weights
from ..masking import DisjointMasker, RatioSchedule
from ..registry import register_method
from ..targets import HOGTarget, masked_mse
from .base import MIMMethod, MIMOutput


def visible_projector(in_dim: int, dim: int, out_dim: int) -> nn.Sequential:
    """The visible-token branch: a three-layer projector (last LayerNorm without affine) and a linear predictor."""
    return nn.Sequential(
        nn.Linear(in_dim, dim), LayerNorm(dim), nn.GELU(),
        nn.Linear(dim, dim), LayerNorm(dim), nn.GELU(),
        nn.Linear(dim, dim), LayerNorm(dim, elementwise_affine=False),
        nn.Linear(dim, out_dim))


@register_method("dmjd")
class DMJD(MIMMethod):
    """K disjointly masked views per image; HOG of masked tokens (decoder) and of visible tokens (projector)."""

    def __init__(self, encoder: EncoderConfig = EncoderConfig(),  # ViT-B/16
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,  # official
                 mask_ratio: float | RatioSchedule = 0.75,  # official default
                 num_views: int = 2,  # official: two masked views
                 mask_unit: int = 2,  # official block mode: masks 2x2-patch blocks
                 theta: float = 1.0,  # official weight of the visible branch
                 smooth_l1_beta: float = 2.0,  # official
                 hog_orientations: int = 9, hog_cell_size: int = 8,  # paper: 9 bins, 8x8 cells
                 hog_normalize: str = "standardize"):  # official: per-cell instance standardisation
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)  # HOG targets are defined for 2D images only
        self.masker = DisjointMasker(mask_ratio, num_views, grid=enc.grid, mask_unit=mask_unit)
        self.num_views, self.theta, self.beta = int(num_views), float(theta), float(smooth_l1_beta)
        self.target = HOGTarget(enc.patch_size, hog_orientations, hog_cell_size, hog_normalize)
        target_dim = self.target.dim(enc.in_chans)
        self.decoder = MAEDecoder(enc.grid, enc.embed_dim, target_dim, decoder_embed_dim, decoder_depth,
                                  decoder_num_heads, enc.mlp_ratio, num_prefix_tokens=enc.num_prefix_tokens)
        self.visible_head = visible_projector(enc.embed_dim, decoder_embed_dim, target_dim)
        for layer in self.visible_head:  # the affine-free LayerNorm has no weights to initialise
            if isinstance(layer, nn.Linear):
                init_weights(layer)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        batch_size, views = images.shape[0], self.num_views
        mask = self.masker(batch_size, self.encoder.num_patches, step=step, device=images.device)
        stacked = images.repeat(views, *([1] * (images.ndim - 1)))  # view-major, as the masker's rows
        latent = self.encoder.forward_visible(stacked, mask.ids_keep)
        with torch.no_grad():
            target = self.target(images).repeat(views, 1, 1)
        pred = self.decoder(latent, mask.ids_restore)
        masked_loss = masked_mse(pred, target, mask.mask)
        visible_pred = self.visible_head(latent[:, self.encoder.num_prefix_tokens:])
        visible_loss = F.smooth_l1_loss(visible_pred.float(), gather_tokens(target, mask.ids_keep), beta=self.beta)
        loss = masked_loss + self.theta * visible_loss
        return MIMOutput(loss=loss, parts={"masked": masked_loss.detach(), "visible": visible_loss.detach()},
                         pred=pred, mask=mask.mask)
