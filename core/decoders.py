"""Decoders and prediction heads: MAE decoder, cross-attention block, hierarchical decoder, linear / MLP heads."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from timm.models.vision_transformer import Attention, Block
from torch import nn

from .encoders import LayerNorm, gather_tokens, init_weights
from .errors import ConfigError, DataError
from .tokens import sincos_pos_embed


def restore_tokens(visible: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """Put visible tokens (B, K, D) back in place among mask tokens: (B, N, D) in the original order."""
    batch, keep, dim = visible.shape
    num = ids_restore.shape[1]
    filled = torch.cat([visible, mask_token.to(visible.dtype).expand(batch, num - keep, dim)], dim=1)
    return gather_tokens(filled, ids_restore)


class MaskedTokenDecoder(nn.Module):
    """The start MAE-style decoders share: embed the encoder's tokens, mask tokens at the hidden positions, fixed
    sin-cos positions, blocks, a final norm and a linear prediction per token.

    Subclasses give the blocks and run them in `forward` between `tokens` and `predict`. `in_dim=None` leaves out
    the embedding (for decoders that build their own queries); `store_positions=False` keeps the positions as a
    buffer outside the state dict instead of MAE's frozen `pos_embed` parameter.
    """

    def __init__(self, grid: Sequence[int], in_dim: int | None, out_dim: int, decoder_embed_dim: int,
                 blocks: Sequence[nn.Module], num_prefix_tokens: int = 1, store_positions: bool = True):
        super().__init__()
        self.grid, self.num_prefix_tokens = tuple(grid), num_prefix_tokens
        if in_dim is not None:
            self.embed = nn.Linear(in_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        positions = sincos_pos_embed(decoder_embed_dim, self.grid).unsqueeze(0)
        if store_positions:
            self.pos_embed = nn.Parameter(positions, requires_grad=False)
        else:
            self.register_buffer("pos_embed", positions, persistent=False)
        self.blocks = nn.ModuleList(blocks)
        self.norm = LayerNorm(decoder_embed_dim)
        self.pred = nn.Linear(decoder_embed_dim, out_dim)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def tokens(self, latent: torch.Tensor, ids_restore: torch.Tensor, positions: torch.Tensor | None = None,
               grid: Sequence[int] | None = None) -> torch.Tensor:
        """The blocks' input: the embedded encoder tokens (B, prefix + K, D_enc) back in place among mask tokens,
        plus the positions (`pos_embed` of `grid` unless others are given): (B, prefix + N, D)."""
        positions = self.pos_embed if positions is None else positions
        x = self.embed(latent)
        prefix, visible = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        if ids_restore.shape[1] != positions.shape[1]:
            raise DataError(f"the decoder was built for a {tuple(grid or self.grid)} token grid ({positions.shape[1]} "
                            f"tokens), got {ids_restore.shape[1]} tokens: use images of the model's size")
        x = restore_tokens(visible, ids_restore, self.mask_token)
        return torch.cat([prefix, x + positions], dim=1)

    def predict(self, x: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """Final norm and prediction (`pred` unless another head is given) of every non-prefix token."""
        return (head or self.pred)(self.norm(x))[:, self.num_prefix_tokens:]


def decoder_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float) -> list[nn.Module]:
    """`depth` pre-norm self-attention blocks of an MAE decoder (timm's Block, qkv bias, LayerNorm eps 1e-6)."""
    return [Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)]


class MAEDecoder(MaskedTokenDecoder):
    """MAE's lightweight decoder: embed, insert mask tokens, add sin-cos positions, blocks, predict patches."""

    def __init__(self, grid: Sequence[int], in_dim: int, out_dim: int, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_prefix_tokens: int = 1):
        super().__init__(grid, in_dim, out_dim, decoder_embed_dim,
                         decoder_blocks(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio),
                         num_prefix_tokens)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, prefix + K, D_enc) -> predictions for every token (B, N, out_dim)."""
        x = self.tokens(latent, ids_restore)
        for block in self.blocks:
            x = block(x)
        return self.predict(x)


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


class CrossAttention(nn.Module):
    """Multi-head attention from query tokens to separate key / value tokens (fused scaled dot-product, or the
    written-out form when `fused_attn` is False: `set_fused_attention` switches it like timm's blocks)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, context_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"cross-attention width {dim} must be divisible by num_heads {num_heads}")
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.fused_attn = True
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.v = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """queries (B, Nq, D), keys / values (B, Nk, Dc) -> (B, Nq, D); `attn_mask` as in
        `scaled_dot_product_attention` (bool: True = may attend; or additive), broadcastable to (B, heads, Nq, Nk)."""
        batch, num_q, dim = queries.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, x.shape[1], self.num_heads, -1).transpose(1, 2)

        q, k, v = heads(self.q(queries)), heads(self.k(keys)), heads(self.v(values))
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            elif attn_mask is not None:
                scores = scores + attn_mask
            out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, num_q, dim))


class CrossAttentionBlock(nn.Module):
    """Pre-norm transformer block for query tokens that read context tokens.

    Optional self-attention among the queries, then cross-attention from the queries to the context, then an
    MLP; each a residual branch with optional layer scale and drop path. Position embeddings, when given, are
    added to the queries and to the keys but not to the values (as in CAE's latent regressor). Queries and
    context are normalised separately (keys and values each get their own LayerNorm).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 context_dim: int | None = None, self_attention: bool = False, init_values: float | None = None,
                 drop_path: float = 0.0):
        super().__init__()
        context_dim = context_dim or dim
        self.self_attn = Attention(dim, num_heads, qkv_bias=qkv_bias) if self_attention else None
        self.norm_self = LayerNorm(dim) if self_attention else None
        self.ls_self = LayerScale(dim, init_values) if self_attention and init_values else nn.Identity()
        self.norm_q = LayerNorm(dim)
        self.norm_k = LayerNorm(context_dim)
        self.norm_v = LayerNorm(context_dim)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias, context_dim)
        self.ls_cross = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm_mlp = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls_mlp = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, context: torch.Tensor, *, attn_mask: torch.Tensor | None = None,
                self_attn_mask: torch.Tensor | None = None, query_pos: torch.Tensor | None = None,
                context_pos: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Nq, D) queries, context (B, Nk, Dc) -> (B, Nq, D).

        `attn_mask` restricts the cross-attention (B or 1, heads or 1, Nq, Nk); `self_attn_mask` the
        self-attention (Nq, Nq); bool masks are True where attending is allowed.
        """
        if self.self_attn is not None:
            x = x + self.drop_path(self.ls_self(self.self_attn(self.norm_self(x), attn_mask=self_attn_mask)))
        queries = x if query_pos is None else x + query_pos
        keys = context if context_pos is None else context + context_pos
        attended = self.cross_attn(self.norm_q(queries), self.norm_k(keys), self.norm_v(context), attn_mask)
        x = x + self.drop_path(self.ls_cross(attended))
        return x + self.drop_path(self.ls_mlp(self.mlp(self.norm_mlp(x))))


class HierarchicalDecoder(MaskedTokenDecoder):
    """An MAE decoder whose later blocks read intermediate encoder layers (Hi-End-MAE's hierarchical decoding).

    The final encoder tokens plus mask tokens, with sin-cos positions, go through `self_depth` self-attention
    blocks; then cross-attention block i (self-attention, cross-attention, MLP) attends to context i, an
    encoder hidden state projected to the decoder width by its own linear layer.
    """

    def __init__(self, grid: Sequence[int], in_dim: int, out_dim: int, num_contexts: int,
                 decoder_embed_dim: int = 512, self_depth: int = 2, decoder_num_heads: int = 16,
                 mlp_ratio: float = 4.0, num_prefix_tokens: int = 1, context_dim: int | None = None):
        super().__init__(grid, in_dim, out_dim, decoder_embed_dim,
                         decoder_blocks(decoder_embed_dim, self_depth, decoder_num_heads, mlp_ratio), num_prefix_tokens)
        self.context_proj = nn.ModuleList([nn.Linear(context_dim or in_dim, decoder_embed_dim)
                                           for _ in range(num_contexts)])
        self.context_proj.apply(init_weights)
        self.cross_blocks = nn.ModuleList([
            CrossAttentionBlock(decoder_embed_dim, decoder_num_heads, mlp_ratio, self_attention=True)
            for _ in range(num_contexts)])

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor,
                contexts: Sequence[torch.Tensor]) -> torch.Tensor:
        """latent (B, prefix + K, D_enc), contexts: one (B, M, D_ctx) per cross block -> (B, N, out_dim)."""
        if len(contexts) != len(self.cross_blocks):
            raise ConfigError(f"the decoder has {len(self.cross_blocks)} cross-attention blocks but got "
                              f"{len(contexts)} encoder layers to read")
        x = self.tokens(latent, ids_restore)
        for block in self.blocks:
            x = block(x)
        for block, proj, context in zip(self.cross_blocks, self.context_proj, contexts):
            x = block(x, proj(context))
        return self.predict(x)
