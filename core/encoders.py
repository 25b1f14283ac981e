"""The ViT encoder that encodes visible tokens only, and its patch embeddings.

The state dict of a 2D `ViTEncoder` has exactly the keys of timm's `VisionTransformer` of the same size
(with `num_classes=0`), so `timm_model.load_state_dict(encoder.state_dict(), strict=True)` works.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .errors import ConfigError, DataError
from .tokens import as_tuple, grid_shape, sincos_pos_embed


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int


# The ViT paper's sizes (tiny/small from DeiT); `mlp_ratio` 4 throughout.
VIT_SIZES = {
    "tiny": ViTSize(192, 12, 3),
    "small": ViTSize(384, 12, 6),
    "base": ViTSize(768, 12, 12),
    "large": ViTSize(1024, 24, 16),
    "huge": ViTSize(1280, 32, 16),
}

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def vit_size(name: str) -> ViTSize:
    """Look up a named ViT size (tiny, small, base, large, huge)."""
    try:
        return VIT_SIZES[name]
    except KeyError:
        raise ConfigError(f"unknown model size {name!r}; choose one of {', '.join(VIT_SIZES)}") from None


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with one strided convolution, 2D or 3D (`spatial_dims`)."""

    def __init__(self, patch_size: int | Sequence[int] = 16, in_chans: int = 3, embed_dim: int = 768,
                 spatial_dims: int = 2):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.patch_size = as_tuple(patch_size, spatial_dims, "patch_size")
        self.in_chans = in_chans
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.proj = conv(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def check(self, x: torch.Tensor) -> tuple[int, ...]:
        """Validate an input batch and return its token grid."""
        if x.ndim != self.spatial_dims + 2:
            raise DataError(
                f"expected {self.spatial_dims}D images shaped (B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W), "
                f"got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise DataError(f"the model takes {self.in_chans} channel(s) but the images have {x.shape[1]}; "
                            f"set --in-chans {x.shape[1]} or convert the images")
        return grid_shape(x.shape[2:], self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTEncoder(nn.Module):
    """ViT (timm blocks, fused attention) over 2D or 3D patches with fixed sin-cos or learned positions.

    `forward_visible(x, ids_keep)` runs only the visible tokens through the blocks (MAE); the class token
    is kept first. `forward_features(x)` encodes every token.
    """

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int | Sequence[int] = 16,
                 in_chans: int = 3, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 spatial_dims: int = 2, pos_embed: str = "sincos", class_token: bool = True,
                 patch_embed: nn.Module | None = None):
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.spatial_dims = spatial_dims
        self.img_size = as_tuple(img_size, spatial_dims, "img_size")
        self.patch_size = as_tuple(patch_size, spatial_dims, "patch_size")
        self.grid = grid_shape(self.img_size, self.patch_size)
        self.num_patches = int(torch.tensor(self.grid).prod())
        self.in_chans, self.embed_dim, self.num_features = in_chans, embed_dim, embed_dim
        self.depth, self.num_heads = depth, num_heads
        self.num_prefix_tokens = 1 if class_token else 0
        self.patch_embed = patch_embed or PatchEmbed(self.patch_size, in_chans, embed_dim, spatial_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        if pos_embed not in ("sincos", "learned"):
            raise ConfigError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        self.fixed_pos = pos_embed == "sincos"
        self.pos_embed = nn.Parameter(
            sincos_pos_embed(embed_dim, self.grid, cls_token=class_token).unsqueeze(0),
            requires_grad=not self.fixed_pos)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i], norm_layer=LayerNorm)
            for i in range(depth)])
        self.norm = LayerNorm(embed_dim)
        self.apply(init_weights)
        if isinstance(self.patch_embed, PatchEmbed):  # MAE: init the patch projection like a linear layer
            w = self.patch_embed.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if not self.fixed_pos:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    # ------------------------------------------------------------------ building blocks
    def positions(self, grid: Sequence[int]) -> torch.Tensor:
        """Patch position embeddings (1, N, D) for a token grid; fixed sin-cos follows any grid size."""
        pos = self.pos_embed[:, self.num_prefix_tokens:]
        if tuple(grid) == self.grid:
            return pos
        if self.fixed_pos:
            return sincos_pos_embed(self.embed_dim, grid).unsqueeze(0).to(pos)
        raise DataError(f"the model was built for a {self.grid} token grid and has learned positions; "
                        f"got images giving a {tuple(grid)} grid (resize them to {self.img_size})")

    def patch_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Embed patches (no positions yet): (B, N, D) and the token grid."""
        grid = self.patch_embed.check(x) if hasattr(self.patch_embed, "check") else self.grid
        return self.patch_embed(x), tuple(grid)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with positions added, (B, N, D), no class token."""
        tokens, grid = self.patch_tokens(x)
        return tokens + self.positions(grid)

    def forward_tokens(self, tokens: torch.Tensor, return_layers: Sequence[int] | None = None):
        """Prepend the class token, run the blocks and the final norm.

        With `return_layers` (1-based block indices) also return those blocks' outputs (before the norm).
        """
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        hidden = []
        wanted = set(return_layers or ())
        for i, block in enumerate(self.blocks, start=1):
            tokens = block(tokens)
            if i in wanted:
                hidden.append(tokens)
        out = self.norm(tokens)
        return (out, hidden) if return_layers is not None else out

    # ------------------------------------------------------------------ public interface
    def forward_visible(self, x: torch.Tensor, ids_keep: torch.Tensor | None,
                        return_layers: Sequence[int] | None = None):
        """Encode only the tokens at `ids_keep` (B, K); returns (B, prefix + K, D)."""
        tokens = self.embed(x)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        return self.forward_tokens(tokens, return_layers)

    def forward_features(self, x: torch.Tensor, return_layers: Sequence[int] | None = None):
        """Encode every token: (B, prefix + N, D)."""
        return self.forward_visible(x, None, return_layers)

    def pool(self, features: torch.Tensor, mode: str = "token") -> torch.Tensor:
        """One vector per image: the class token ('token') or the mean of patch tokens ('avg')."""
        if mode == "token" and self.num_prefix_tokens:
            return features[:, 0]
        return features[:, self.num_prefix_tokens:].mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


class UnifiedPatchEmbed(nn.Module):
    """One patch embedding for 2D images and 3D volumes (Uni4Eye's unified patch embedding).

    A Conv2d embeds (B, C, H, W) images and a Conv3d embeds (B, C3, D, H, W) volumes into the same token
    width, so one ViT encodes both. The 2D convolution is named `proj` like timm's, so a 2D encoder's
    state dict still loads into timm once the `proj_3d` keys are dropped.
    """

    def __init__(self, patch_size: int | Sequence[int] = 16, in_chans: int = 3, embed_dim: int = 768,
                 volume_patch_size: int | Sequence[int] | None = None, volume_chans: int | None = None):
        super().__init__()
        self.spatial_dims = 2
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        self.volume_patch_size = as_tuple(patch_size if volume_patch_size is None else volume_patch_size, 3,
                                          "volume_patch_size")
        self.in_chans = in_chans
        self.volume_chans = in_chans if volume_chans is None else volume_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.proj_3d = nn.Conv3d(self.volume_chans, embed_dim, kernel_size=self.volume_patch_size,
                                 stride=self.volume_patch_size)
        for conv in (self.proj, self.proj_3d):  # MAE: init the patch projections like linear layers
            nn.init.xavier_uniform_(conv.weight.data.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)

    def check(self, x: torch.Tensor) -> tuple[int, ...]:
        """Validate a 2D or 3D batch and return its token grid."""
        if x.ndim not in (4, 5):
            raise DataError(f"expected 2D images (B, C, H, W) or 3D volumes (B, C, D, H, W), got a tensor of "
                            f"shape {tuple(x.shape)}")
        chans, patch, what = ((self.in_chans, self.patch_size, "2D images") if x.ndim == 4
                              else (self.volume_chans, self.volume_patch_size, "3D volumes"))
        if x.shape[1] != chans:
            raise DataError(f"the model takes {chans} channel(s) for {what} but got {x.shape[1]} "
                            f"(tensor of shape {tuple(x.shape)})")
        return grid_shape(x.shape[2:], patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        proj = self.proj if x.ndim == 4 else self.proj_3d
        return proj(x).flatten(2).transpose(1, 2)


class UnifiedViTEncoder(ViTEncoder):
    """A ViT whose blocks are shared by 2D images and 3D volumes, with one position embedding per dimensionality.

    Uni4Eye (Cai et al., MICCAI 2022): a `UnifiedPatchEmbed` feeds 2D or 3D tokens to the same blocks.
    `pos_embed` (2D, timm's key) and `pos_embed_3d` hold the positions of the `img_size` and `volume_size` grids.
    """

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int | Sequence[int] = 16,
                 in_chans: int = 3, volume_size: int | Sequence[int] = (112, 224, 224),
                 volume_patch_size: int | Sequence[int] | None = None, volume_chans: int | None = None,
                 embed_dim: int = 768, pos_embed: str = "sincos", **kwargs):
        embedder = UnifiedPatchEmbed(patch_size, in_chans, embed_dim, volume_patch_size, volume_chans)
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         pos_embed=pos_embed, spatial_dims=2, patch_embed=embedder, **kwargs)
        self.volume_size = as_tuple(volume_size, 3, "volume_size")
        self.volume_patch_size = embedder.volume_patch_size
        self.volume_chans = embedder.volume_chans
        self.volume_grid = grid_shape(self.volume_size, self.volume_patch_size)
        self.num_volume_patches = math.prod(self.volume_grid)
        self.pos_embed_3d = nn.Parameter(sincos_pos_embed(embed_dim, self.volume_grid).unsqueeze(0),
                                         requires_grad=not self.fixed_pos)
        if not self.fixed_pos:
            nn.init.trunc_normal_(self.pos_embed_3d, std=0.02)

    def positions(self, grid: Sequence[int]) -> torch.Tensor:
        """Patch positions for a 2D grid (`pos_embed`) or a 3D grid (`pos_embed_3d`)."""
        if len(grid) == 2:
            return super().positions(grid)
        if tuple(grid) == self.volume_grid:
            return self.pos_embed_3d
        if self.fixed_pos:
            return sincos_pos_embed(self.embed_dim, grid).unsqueeze(0).to(self.pos_embed_3d)
        raise DataError(f"the model was built for a {self.volume_grid} volume token grid and has learned "
                        f"positions; got volumes giving a {tuple(grid)} grid (resize them to {self.volume_size})")

    def grid_of(self, spatial_dims: int) -> tuple[int, ...]:
        """The token grid the model was built for, for 2D images or 3D volumes."""
        return self.grid if spatial_dims == 2 else self.volume_grid

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "pos_embed_3d", "cls_token"}


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), ids (B, K) -> (B, K, D)."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear layers, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_encoder(size: str | None = None, **kwargs) -> ViTEncoder:
    """A ViTEncoder from a named size (tiny/small/base/large/huge) plus any overrides, or free sizes."""
    if size is not None:
        s = vit_size(size)
        kwargs = {"embed_dim": s.embed_dim, "depth": s.depth, "num_heads": s.num_heads, **kwargs}
    return ViTEncoder(**kwargs)
