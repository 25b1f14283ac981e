"""Decoders and prediction heads: the MAE decoder and simple linear / MLP heads."""
from __future__ import annotations

from typing import Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .encoders import LayerNorm, gather_tokens, init_weights
from .errors import DataError
from .tokens import sincos_pos_embed


def restore_tokens(visible: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """Put visible tokens (B, K, D) back in place among mask tokens: (B, N, D) in the original order."""
    batch, keep, dim = visible.shape
    num = ids_restore.shape[1]
    filled = torch.cat([visible, mask_token.to(visible.dtype).expand(batch, num - keep, dim)], dim=1)
    return gather_tokens(filled, ids_restore)


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder: embed, insert mask tokens, add sin-cos positions, blocks, predict patches."""

    def __init__(self, grid: Sequence[int], in_dim: int, out_dim: int, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_prefix_tokens: int = 1):
        super().__init__()
        self.grid, self.num_prefix_tokens = tuple(grid), num_prefix_tokens
        self.embed = nn.Linear(in_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(decoder_embed_dim, self.grid).unsqueeze(0),
                                      requires_grad=False)
        self.blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(decoder_depth)])
        self.norm = LayerNorm(decoder_embed_dim)
        self.pred = nn.Linear(decoder_embed_dim, out_dim)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, prefix + K, D_enc) -> predictions for every token (B, N, out_dim)."""
        x = self.embed(latent)
        prefix, visible = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        x = restore_tokens(visible, ids_restore, self.mask_token)
        pos = self.pos_embed
        if ids_restore.shape[1] != pos.shape[1]:
            raise DataError(f"the decoder was built for a {self.grid} token grid ({pos.shape[1]} tokens), "
                            f"got {ids_restore.shape[1]} tokens: pretrain at the model's image size")
        x = torch.cat([prefix, x + pos], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, self.num_prefix_tokens:]


class LinearHead(nn.Module):
    """One linear layer per token (SimMIM's prediction head)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MLPHead(nn.Module):
    """Linear - GELU - Linear per token (teacher-feature regression heads)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or in_dim * 4
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
