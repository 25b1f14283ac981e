"""MR-MAE: Gao et al., "Mimic before Reconstruct: Enhancing Masked Autoencoders with Feature Mimicking", 2023."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..decoders import MAEDecoder
from ..encoders import EncoderConfig, gather_tokens, init_weights
from ..errors import ConfigError
from ..masking import RandomMasker, RatioSchedule
from ..registry import register_method
from ..targets import PixelTarget, masked_mse
from ..teachers import AttentionMasker, build_teacher
from .base import MIMMethod, MIMOutput


@register_method("mrmae")
class MRMAE(MIMMethod):
    """MAE plus a mimic loss: the encoder's visible tokens regress a frozen teacher's features at those positions.

    In one step the encoder's visible tokens (25%) mimic the teacher's (CLIP, DINO) high-level features
    through a linear head, and the MAE decoder reconstructs the pixels of the masked tokens (75%): the
    two targets act on disjoint token sets, so they do not compete (paper abstract, arXiv 2303.05475).
    The official code (github.com/Alpha-VL/ConvMAE, MR-MAE) was not available to us; choices not stated in
    the abstract are this implementation's and marked so: one teacher, the teacher's final patch tokens
    whitened per token (as MaskAlign does) and an MSE mimic loss of weight 1. `focused_mimicking` draws the
    visible tokens from the teacher's class-token attention (the paper's "focused mimicking"; off by default).
    `data_mean` / `data_std`: the loader's normalisation (filled in by `pretrain`); the teacher sees its own.
    """

    def __init__(self, encoder: EncoderConfig = EncoderConfig(),  # "MR-MAE base": ViT-B/16
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,  # MAE decoder
                 mask_ratio: float | RatioSchedule = 0.75,  # paper: 25% visible, 75% masked
                 norm_pix_loss: bool = True,  # MAE's normalised-pixel target
                 teacher: str | nn.Module = "open_clip:ViT-B-16-quickgelu",  # paper: CLIP (or DINO) features
                 teacher_weights: str | None = None, teacher_img_size: int | None = None,
                 teacher_kwargs: dict | None = None, allow_random_teacher: bool = False,
                 mimic_weight: float = 1.0,  # this implementation's choice
                 focused_mimicking: bool = False,
                 data_mean: list[float] | None = None, data_std: list[float] | None = None):
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)
        self.teacher = build_teacher(teacher, teacher_weights, img_size=teacher_img_size or enc.img_size,
                                     in_chans=enc.in_chans, allow_random=allow_random_teacher,
                                     model_kwargs=teacher_kwargs, data_mean=data_mean, data_std=data_std)
        if self.teacher.grid is not None and self.teacher.grid != tuple(enc.grid):
            raise ConfigError(f"the teacher's token grid {self.teacher.grid} differs from the student's "
                              f"{tuple(enc.grid)}; set teacher_img_size so that they match")
        self.focused_mimicking = focused_mimicking
        self.masker = AttentionMasker(mask_ratio) if focused_mimicking else RandomMasker(mask_ratio)
        self.target = PixelTarget(enc.patch_size, normalize=norm_pix_loss)
        self.decoder = MAEDecoder(enc.grid, enc.embed_dim, math.prod(enc.patch_size) * enc.in_chans,
                                  decoder_embed_dim, decoder_depth, decoder_num_heads, enc.mlp_ratio,
                                  num_prefix_tokens=enc.num_prefix_tokens)
        self.mimic_head = nn.Linear(enc.embed_dim, self.teacher.embed_dim)
        init_weights(self.mimic_head)
        self.mimic_weight = float(mimic_weight)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        enc = self.encoder
        teacher = self.teacher(images, cls_attention=self.focused_mimicking)
        if teacher.features.shape[1] != enc.num_patches:
            raise ConfigError(f"the teacher gives {teacher.features.shape[1]} feature tokens for "
                              f"{enc.num_patches} patches; set teacher_img_size so that they match")
        mask = self.masker(images.shape[0], enc.num_patches, step=step, scores=teacher.cls_attention,
                           device=images.device)
        latent = enc.forward_visible(images, mask.ids_keep)
        # reconstruct: pixels of the masked tokens, after the decoder (MAE)
        pred = self.decoder(latent, mask.ids_restore)
        reconstruction = masked_mse(pred, self.target(images), mask.mask)
        # mimic: the encoder's visible tokens against the teacher's features at the same positions
        visible = self.mimic_head(latent[:, enc.num_prefix_tokens:])
        target = gather_tokens(teacher.features.float(), mask.ids_keep)
        target = F.layer_norm(target, target.shape[-1:])  # whitened per token (this implementation's choice)
        mimic = F.mse_loss(visible.float(), target)
        loss = reconstruction + self.mimic_weight * mimic
        return MIMOutput(loss=loss, parts={"reconstruction": reconstruction.detach(), "mimic": mimic.detach()},
                         pred=pred, mask=mask.mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.target.to_pixels(out.pred, self.images(batch))
