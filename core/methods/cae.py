"""CAE: Chen et al., "Context Autoencoder for Self-Supervised Representation Learning", IJCV 2023.

The encoder sees only the visible patches. A latent regressor (cross-attention blocks) turns one mask query
per masked patch, with that patch's position, into a predicted latent, reading the visible latents as keys
and values. Those predictions are aligned with the encoder's own latents of the masked patches (computed
without gradient, so the alignment only trains the predicting side), and a decoder that sees nothing but
the predicted latents reconstructs the masked patches.

The paper's first version reconstructed DALL-E tokens; here the decoder regresses (normalised) pixels, as
the issue asks: loss = reconstruction + 2 x alignment (the official `--align_loss_weight 2`).
The regressor block is the official `RegressorBlock` (the cross-attention result is layer-normalised on the
residual stream itself before the MLP); regressor and decoder use drop path rising linearly to
`decoder_drop_path_rate` (official: --drop_path 0.1 for both). The encoder's blocks have layer scale 0.1 as the
official BEiT-style encoder (`encoder.layer_scale`). Official keys have no bias; ours do (a small departure).

A regressor narrower than the encoder (`decoder_embed_dim` < the encoder's width) goes through the official
projection, one trainable Linear + LayerNorm on both sides of the alignment (the regressor's context and the
alignment target). Measured on the digits (ViT 128 x 6, 600 steps of batch 128): at width 64 CAE nearly
collapsed (reconstruction loss flat at 0.75-0.80, fine-tuning with 10 labels per class 51.4%), at the
encoder's width 128 it fine-tuned at 87.5% (MAE 85.7%); the paper's ViT-B has both at 768
(benchmarks/results/methods_table_600x128.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from timm.models.vision_transformer import Block
from torch import nn

from ..decoders import CrossAttention, CrossAttentionBlock
from ..encoders import EncoderConfig, LayerNorm, gather_tokens, init_weights
from ..errors import ConfigError
from ..masking import BlockMasker, Mask, RatioSchedule
from ..registry import register_method
from ..targets import PixelTarget
from ..tokens import sincos_pos_embed
from .base import MIMMethod, MIMOutput


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Drop-path rate per block, rising linearly from 0 to `rate` (CAE's torch.linspace(0, drop_path, depth))."""
    return [float(r) for r in torch.linspace(0, rate, depth)] if depth else []


class CAERegressorBlock(nn.Module):
    """The official CAE `RegressorBlock`: x = q + cross_attn(LN(q + pos_q), LN(kv + pos_k), LN(kv));
    x = LN(x) (the residual stream itself is re-normalised); x = x + MLP(x). Layer scale on both branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, init_values: float | None = None,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm_q, self.norm_k, self.norm_v, self.norm_cross = (LayerNorm(dim) for _ in range(4))
        self.cross_attn = CrossAttention(dim, num_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls_cross = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.ls_mlp = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, context: torch.Tensor, *, query_pos: torch.Tensor,
                context_pos: torch.Tensor) -> torch.Tensor:
        attended = self.cross_attn(self.norm_q(x + query_pos), self.norm_k(context + context_pos), self.norm_v(context))
        x = self.norm_cross(x + self.drop_path(self.ls_cross(attended)))
        return x + self.drop_path(self.ls_mlp(self.mlp(x)))


class CAEDecoder(nn.Module):
    """Self-attention blocks over the predicted latents of the masked patches only, then a linear head."""

    def __init__(self, dim: int, out_dim: int, depth: int, num_heads: int, mlp_ratio: float, init_values: float | None,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, qkv_bias=True, init_values=init_values,
                                           drop_path=rate, norm_layer=LayerNorm)
                                     for rate in drop_path_rates(drop_path_rate, depth)])
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        self.apply(init_weights)

    def forward(self, latents: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """latents, positions (B, M, D) of the masked patches -> (B, M, out_dim)."""
        x = latents + positions
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


@register_method("cae")
class CAE(MIMMethod):
    """Context autoencoder: regress masked latents from visible ones, align them, decode pixels from them."""

    def __init__(self,
                 # paper: ViT-B/16; --drop_path 0.1; --layer_scale_init_value 0.1 (the encoder's blocks)
                 encoder: EncoderConfig = EncoderConfig(drop_path_rate=0.1, layer_scale=0.1),
                 decoder_embed_dim: int = 768, regressor_depth: int = 4, decoder_depth: int = 4,  # paper: 4 and 4
                 decoder_num_heads: int = 12,
                 mask_ratio: float | RatioSchedule = 0.5,  # paper: 98 of 196 patches, BEiT block masking
                 alignment_weight: float = 2.0,  # official --align_loss_weight 2
                 layer_scale: float | None = 0.1,  # official --decoder_layer_scale_init_value 0.1 (base)
                 norm_pix_loss: bool = True,
                 decoder_drop_path_rate: float = 0.1,  # official: --drop_path 0.1 also in regressor and decoder
                 regressor_block: str = "official"):  # "official" (CAERegressorBlock) or "prenorm" (core's block)
        super().__init__()
        if regressor_block not in ("official", "prenorm"):
            raise ConfigError(f"regressor_block must be 'official' or 'prenorm', got {regressor_block!r}")
        self.encoder = enc = self.build_encoder(encoder)
        self.alignment_weight = float(alignment_weight)
        self.masker = BlockMasker(mask_ratio, grid=enc.grid)
        self.target = PixelTarget(enc.patch_size, normalize=norm_pix_loss)
        dim = decoder_embed_dim
        # CAE projects encoder latents to the regressor width (linear + LayerNorm) when the widths differ
        self.to_regressor = (nn.Sequential(nn.Linear(enc.embed_dim, dim), LayerNorm(dim))
                             if dim != enc.embed_dim else nn.Identity())
        self.pos_embed = nn.Parameter(sincos_pos_embed(dim, enc.grid).unsqueeze(0), requires_grad=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # "prenorm": mimkit's earlier block (pre-norm MLP on an un-normalised residual), kept as a named option
        self.regressor = nn.ModuleList([
            CAERegressorBlock(dim, decoder_num_heads, enc.mlp_ratio, init_values=layer_scale, drop_path=rate)
            if regressor_block == "official" else
            CrossAttentionBlock(dim, decoder_num_heads, enc.mlp_ratio, init_values=layer_scale, drop_path=rate)
            for rate in drop_path_rates(decoder_drop_path_rate, regressor_depth)])
        self.regressor_norm = LayerNorm(dim)
        self.decoder = CAEDecoder(dim, math.prod(enc.patch_size) * enc.in_chans, decoder_depth, decoder_num_heads,
                                  enc.mlp_ratio, layer_scale, decoder_drop_path_rate)
        self.to_regressor.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def predict_latents(self, images: torch.Tensor, mask: Mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predicted and target latents of the masked patches (B, M, D), and the masked patches' positions."""
        enc = self.encoder
        prefix = enc.num_prefix_tokens
        visible = self.to_regressor(enc.forward_visible(images, mask.ids_keep))[:, prefix:]
        with torch.no_grad():  # the alignment target: the same encoder on the masked patches, no gradient
            target = self.to_regressor(enc.forward_visible(images, mask.ids_masked))[:, prefix:]
        batch = images.shape[0]
        positions = self.pos_embed.expand(batch, -1, -1)
        pos_visible = gather_tokens(positions, mask.ids_keep)
        pos_masked = gather_tokens(positions, mask.ids_masked)
        queries = self.mask_token.expand(batch, pos_masked.shape[1], -1)
        context_pos = torch.cat([pos_visible, pos_masked], dim=1)
        for block in self.regressor:
            # keys / values: the visible latents and the current queries (as in the official regressor)
            queries = block(queries, torch.cat([visible, queries], dim=1), query_pos=pos_masked,
                            context_pos=context_pos)
        return self.regressor_norm(queries), target.detach(), pos_masked

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        mask = self.masker(images.shape[0], self.encoder.num_patches, step=step, device=images.device)
        predicted, target, pos_masked = self.predict_latents(images, mask)
        patches = self.decoder(predicted, pos_masked)
        pixel_target = gather_tokens(self.target(images), mask.ids_masked)
        reconstruction = F.mse_loss(patches.float(), pixel_target)
        alignment = F.mse_loss(predicted.float(), target.float())
        loss = reconstruction + self.alignment_weight * alignment
        # predictions back in token order (zeros at the visible tokens, which are never predicted)
        pred = patches.new_zeros(images.shape[0], self.encoder.num_patches, patches.shape[-1])
        pred.scatter_(1, mask.ids_masked.unsqueeze(-1).expand(-1, -1, patches.shape[-1]), patches)
        return MIMOutput(loss=loss, parts={"reconstruction": reconstruction.detach(), "alignment": alignment.detach()},
                         pred=pred, mask=mask.mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.target.to_pixels(out.pred, self.images(batch))
