"""A plain-PyTorch MAE written from the paper's description, as a speed baseline for mimkit's MAE.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022, Section 3 and Appendix A.1:
patches are embedded by a linear projection with fixed sin-cos positions; a random 25% are kept by
shuffling the token list and dropping its tail; a ViT encodes the kept tokens (plus a class token) only;
a narrower decoder gets the encoded tokens and shared mask tokens, unshuffled, with its own positions,
and predicts each patch's normalised pixels; the loss is the mean squared error on masked patches.

Only torch is used (no timm, no mimkit), and attention is written out with matmul and softmax, so this is
what a careful hand-written MAE costs. It handles 2D and 3D images (`spatial_dims`).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention, written out: softmax(q k^T / sqrt(d)) v."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        weights = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
        out = weights.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_positions(dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """Fixed sin-cos positions (N, dim): each axis gets an even share of the channels (rest zero)."""
    per_axis = dim // len(grid) // 2 * 2
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    frequencies = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / (per_axis / 2))
    parts = []
    for axis in coords:
        angles = axis.reshape(-1, 1) * frequencies
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1])).float()


class ReferenceMAE(nn.Module):
    """MAE (He et al. 2022) in plain PyTorch; `forward(images)` returns the masked reconstruction loss."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192,
                 depth: int = 12, num_heads: int = 3, decoder_dim: int = 128, decoder_depth: int = 4,
                 decoder_heads: int = 4, mlp_ratio: float = 4.0, mask_ratio: float = 0.75,
                 spatial_dims: int = 2, norm_pix_loss: bool = True):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.patch_size, self.spatial_dims, self.mask_ratio = patch_size, spatial_dims, mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.grid = (img_size // patch_size,) * spatial_dims
        self.num_patches = math.prod(self.grid)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.patch_embed = conv(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("positions", sincos_positions(embed_dim, self.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_positions", sincos_positions(decoder_dim, self.grid).unsqueeze(0),
                             persistent=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_dim, decoder_heads, mlp_ratio) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size ** spatial_dims * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        # Appendix A.1: xavier-uniform for all Transformer layers (the patch projection too, seen as linear).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, N, patch_size^dims * C), patches in row-major grid order."""
        batch, channels = images.shape[:2]
        p, dims = self.patch_size, self.spatial_dims
        split = [batch, channels]
        for g in self.grid:
            split += [g, p]
        x = images.reshape(split)
        # (B, C, g1, p1, g2, p2, ...) -> (B, g1, g2, ..., p1, p2, ..., C)
        order = [0] + [2 + 2 * i for i in range(dims)] + [3 + 2 * i for i in range(dims)] + [1]
        return x.permute(order).reshape(batch, self.num_patches, -1)

    def random_masking(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shuffle each image's tokens and keep the head: (ids_keep, ids_restore, mask with 1 = masked)."""
        keep = int(self.num_patches * (1 - self.mask_ratio))
        ids_shuffle = torch.rand(batch, self.num_patches, device=device).argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        mask = torch.ones(batch, self.num_patches, device=device)
        mask[:, :keep] = 0
        return ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore)

    def encode(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Embed all patches, keep the visible ones, prepend the class token, run the encoder."""
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2) + self.positions
        tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Append mask tokens, unshuffle, add positions, run the decoder: predictions (B, N, patch pixels)."""
        x = self.decoder_embed(latent)
        visible = x[:, 1:]
        masks = self.mask_token.to(x.dtype).expand(x.shape[0], self.num_patches - visible.shape[1], -1)
        full = torch.cat([visible, masks], dim=1)
        full = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1])) + self.decoder_positions
        x = torch.cat([x[:, :1], full], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ids_keep, ids_restore, mask = self.random_masking(images.shape[0], images.device)
        pred = self.decode(self.encode(images, ids_keep), ids_restore)
        target = self.patchify(images).float()
        if self.norm_pix_loss:  # Section 3: each patch normalised by its own mean and std
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = ((pred.float() - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()
