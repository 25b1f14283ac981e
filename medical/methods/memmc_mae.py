"""MemMC-MAE: Tian et al., "Unsupervised Anomaly Detection in Medical Images with a Memory-augmented Multi-level
Cross-attentional Masked Autoencoder", MICCAI workshop MLMI 2023 (arXiv:2203.11725).

Trained on normal images only. Every encoder self-attention also attends to learned memory slots (keys and
values) meant to store normal patterns, and every decoder block cross-attends to all encoder layers at once,
mixing them with learned sigmoid gates. Both follow the Meshed-Memory Transformer (Cornia et al., CVPR 2020)
that the paper builds on. A patch's anomaly score is its reconstruction error while masked: `anomaly_map`
rebuilds every patch from passes in which it is hidden, `anomaly_score` averages that map per image.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn

from mimkit.core.decoders import CrossAttention, MaskedTokenDecoder
from mimkit.core.encoders import EncoderConfig, LayerNorm, init_weights
from mimkit.core.errors import ConfigError
from mimkit.core.masking import Mask, RandomMasker, RatioSchedule
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.targets import PixelTarget, masked_mse
from mimkit.core.tokens import unpatchify


class MemoryAugmentedAttention(nn.Module):
    """Self-attention whose keys and values are extended with `num_memory` learned slots.

    Keys and values are [W_k x; sqrt(d_head) M_k] and [W_v x; sqrt(m) M_v], the memory scaled as in the
    Meshed-Memory Transformer. `qkv` and `proj` keep timm's names, so the encoder's other weights still load
    into a timm ViT.
    """

    def __init__(self, dim: int, num_heads: int, num_memory: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"attention width {dim} must be divisible by num_heads {num_heads}")
        if num_memory < 1:
            raise ConfigError(f"num_memory must be at least 1, got {num_memory}")
        self.num_heads, self.head_dim, self.num_memory = num_heads, dim // num_heads, num_memory
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.memory_keys = nn.Parameter(torch.randn(1, num_memory, dim) / math.sqrt(self.head_dim))
        self.memory_values = nn.Parameter(torch.randn(1, num_memory, dim) / math.sqrt(num_memory))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ConfigError("memory-augmented attention takes no attention mask")
        batch, num, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = self.qkv(x).reshape(batch, num, 3, dim).unbind(2)
        memory_k = (math.sqrt(self.head_dim) * self.memory_keys).expand(batch, -1, -1).to(k.dtype)
        memory_v = (math.sqrt(self.num_memory) * self.memory_values).expand(batch, -1, -1).to(v.dtype)
        out = F.scaled_dot_product_attention(heads(q), heads(torch.cat([k, memory_k], 1)),
                                             heads(torch.cat([v, memory_v], 1)))
        return self.proj(out.transpose(1, 2).reshape(batch, num, dim))


class MultiLevelCrossAttentionBlock(nn.Module):
    """Decoder block: self-attention, then one cross-attention applied to every encoder level, the results
    mixed by per-level sigmoid gates alpha_i = sigmoid(W_i [x; C_i] + b_i) and summed / sqrt(levels), then MLP."""

    def __init__(self, dim: int, num_heads: int, num_levels: int, context_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_self = LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm_query = LayerNorm(dim)
        self.context_norms = nn.ModuleList([LayerNorm(context_dim) for _ in range(num_levels)])
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias=True, context_dim=context_dim)  # shared by levels
        self.gates = nn.ModuleList([nn.Linear(2 * dim, dim) for _ in range(num_levels)])
        self.norm_mlp = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """x (B, N, D) decoder tokens; levels: the encoder's hidden states, each (B, M, D_enc)."""
        x = x + self.self_attn(self.norm_self(x))
        query = self.norm_query(x)
        mixed = 0.0
        for norm, gate, level in zip(self.context_norms, self.gates, levels):
            context = norm(level)
            attended = self.cross_attn(query, context, context)
            mixed = mixed + torch.sigmoid(gate(torch.cat([query, attended], -1))) * attended
        x = x + mixed / math.sqrt(len(levels))
        return x + self.mlp(self.norm_mlp(x))


class MultiLevelDecoder(MaskedTokenDecoder):
    """MAE-style decoder (mask tokens, sin-cos positions) made of multi-level cross-attention blocks."""

    def __init__(self, grid: Sequence[int], in_dim: int, out_dim: int, num_levels: int,
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 mlp_ratio: float = 4.0, num_prefix_tokens: int = 1):
        blocks = [MultiLevelCrossAttentionBlock(decoder_embed_dim, decoder_num_heads, num_levels, in_dim, mlp_ratio)
                  for _ in range(decoder_depth)]
        super().__init__(grid, in_dim, out_dim, decoder_embed_dim, blocks, num_prefix_tokens)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.tokens(latent, ids_restore)
        for block in self.blocks:
            x = block(x, levels)
        return self.predict(x)


@register_method("memmc_mae")
class MemMCMAE(MIMMethod):
    """Masked autoencoder with memory-augmented encoder attention and multi-level cross-attention decoding,
    scoring anomalies by reconstruction error."""

    supported_dims = (2, 3)

    # The paper's network sizes could not be read from a public source; the encoder, decoder and mask ratio
    # default to MAE's ViT-B/16 setting and the memory to the Meshed-Memory Transformer's 40 slots.
    def __init__(self, encoder: EncoderConfig = EncoderConfig(),
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 mask_ratio: float | RatioSchedule = 0.75, num_memory: int = 40,
                 cross_levels: Sequence[int] | None = None,  # encoder blocks (1-based) the decoder reads; None: all
                 norm_pix_loss: bool = False):  # anomaly maps need absolute intensities, not per-patch normalised ones
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)
        for block in enc.blocks:  # every encoder self-attention gets its own memory
            block.attn = MemoryAugmentedAttention(enc.embed_dim, enc.num_heads, num_memory)
            block.attn.apply(init_weights)
        self.cross_levels = (tuple(range(1, enc.depth + 1)) if cross_levels is None
                             else tuple(int(c) for c in cross_levels))
        if not self.cross_levels or len(set(self.cross_levels)) != len(self.cross_levels) or \
                any(not 1 <= c <= enc.depth for c in self.cross_levels):
            raise ConfigError(f"cross_levels must be distinct encoder block numbers between 1 and depth={enc.depth}, "
                              f"got {self.cross_levels}")
        self.masker = RandomMasker(mask_ratio)
        self.target = PixelTarget(enc.patch_size, normalize=norm_pix_loss)
        self.decoder = MultiLevelDecoder(enc.grid, enc.embed_dim, math.prod(enc.patch_size) * enc.in_chans,
                                         len(self.cross_levels), decoder_embed_dim, decoder_depth, decoder_num_heads,
                                         enc.mlp_ratio, num_prefix_tokens=enc.num_prefix_tokens)

    def _predict(self, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        latent, hidden = self.encoder.forward_visible(images, mask.ids_keep, return_layers=self.cross_levels)
        by_level = dict(zip(sorted(self.cross_levels), hidden))
        return self.decoder(latent, mask.ids_restore, [by_level[c] for c in self.cross_levels])

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        mask = self.masker(images.shape[0], self.encoder.num_patches, step=step, device=images.device)
        pred = self._predict(images, mask)
        loss = masked_mse(pred, self.target(images), mask.mask)
        return MIMOutput(loss=loss, parts={"reconstruction": loss.detach()}, pred=pred, mask=mask.mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.target.to_pixels(out.pred, self.images(batch))

    # ------------------------------------------------------------------ anomaly scoring
    def covering_masks(self, batch_size: int, device=None, seed: int = 0) -> list[Mask]:
        """Masks at the training ratio whose visible sets split a random order of the tokens, so that every
        token is hidden in all passes but one (at least one pass when the ratio is 50% or more)."""
        num = self.encoder.num_patches
        keep = num - self.masker.num_masked(num, None)
        generator = torch.Generator().manual_seed(seed)
        order = torch.stack([torch.randperm(num, generator=generator) for _ in range(batch_size)])
        masks = []
        for start in range(0, num, keep):
            visible = order[:, [(start + i) % num for i in range(keep)]]  # the last pass wraps around
            hidden = torch.ones(batch_size, num, dtype=torch.bool)
            hidden.scatter_(1, visible, False)
            masks.append(Mask.from_bool(hidden.to(device)))
        return masks

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Per-pixel squared reconstruction error (mean over channels), (B, 1, *spatial): each patch is scored
        by the passes of `covering_masks` that hide it. Runs in eval mode."""
        self.encoder.patch_embed.check(images)
        was_training = self.training
        self.eval()
        try:
            target = self.target(images)
            error = torch.zeros_like(target)
            count = torch.zeros(target.shape[:2], device=target.device)
            for mask in self.covering_masks(images.shape[0], images.device, seed):
                pred = self._predict(images, mask).float()
                error += (pred - target) ** 2 * mask.mask.unsqueeze(-1)
                count += mask.mask
        finally:
            self.train(was_training)
        error = error / count.clamp_min(1).unsqueeze(-1)
        channels = images.shape[1]
        per_pixel = error.reshape(*error.shape[:2], -1, channels).mean(-1)   # patch pixels are (patch..., C)
        return unpatchify(per_pixel, self.encoder.patch_size, self.encoder.grid, 1)

    @torch.no_grad()
    def anomaly_score(self, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """One score per image (B,): the mean of its anomaly map (higher = more anomalous)."""
        return self.anomaly_map(images, seed).flatten(1).mean(1)
