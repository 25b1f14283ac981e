"""The ViT encoder that encodes visible tokens only, and its patch embeddings.

The state dict of a 2D `ViTEncoder` has exactly the keys of timm's `VisionTransformer` of the same size
(with `num_classes=0`), so `timm_model.load_state_dict(encoder.state_dict(), strict=True)` works.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from .errors import ConfigError, DataError
from .tokens import as_tuple, grid_shape, patchify, sincos_pos_embed


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


@dataclass(frozen=True)
class EncoderConfig:
    """The ViT encoder's shape, one object for every method (`--model.encoder.embed_dim 384` on the command line).

    `size` (tiny, small, base, large, huge), when given, sets `embed_dim`, `depth` and `num_heads` to that named
    size, overriding the three. `img_size` and `patch_size` are one int for every axis or one per axis ((H, W) or
    (D, H, W)).
    """

    img_size: int | tuple[int, ...] = 224
    patch_size: int | tuple[int, ...] = 16
    in_chans: int | None = 3  # None: the method derives it (SMARTIES: from its default bands)
    size: str | None = None
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    spatial_dims: int = 2
    pos_embed: str = "sincos"  # "sincos" (fixed) or "learned"
    class_token: bool = True
    # each block's residual branches scaled by a learned per-channel factor starting here (CaiT's layer scale, as
    # timm's `init_values`; BEiT and CAE train with 0.1); None: no layer scale, as MAE's ViT
    layer_scale: float | None = None

    def __post_init__(self):
        # lists (from JSON / YAML) become tuples, so that configs compare and hash alike
        for name in ("img_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if self.size is not None:
            named = vit_size(self.size)
            # a value that is neither the field's default nor the size's was asked for (a flag over a recipe's size):
            # say so, rather than train a different model than the one asked for
            given = {name: getattr(self, name) for name in ("embed_dim", "depth", "num_heads")
                     if getattr(self, name) not in (_DEFAULTS[name], getattr(named, name))}
            if given:
                raise ConfigError(size_clash(self.size, given))
            for name in ("embed_dim", "depth", "num_heads"):
                object.__setattr__(self, name, getattr(named, name))

    def encoder_arguments(self) -> dict:
        """Keyword arguments of `ViTEncoder` (every field but `size`, which is already applied)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "size"}


ENCODER_FIELDS = tuple(f.name for f in fields(EncoderConfig))
_DEFAULTS = {f.name: f.default for f in fields(EncoderConfig)}


def size_clash(size: str, given: Mapping[str, int]) -> str:
    named = vit_size(size)
    return (f"encoder.size={size!r} sets embed_dim={named.embed_dim}, depth={named.depth}, num_heads={named.num_heads};"
            f" got {', '.join(f'{k}={v}' for k, v in given.items())} too: give one or the other (with a recipe's size,"
            " --model.encoder.size null and all three numbers)")


def encoder_config(config: EncoderConfig | Mapping | None = None, base: EncoderConfig | None = None,
                   **overrides) -> EncoderConfig:
    """An EncoderConfig from a config, a mapping of its fields (applied over `base`) or nothing, plus overrides."""
    if config is None:
        config = base or EncoderConfig()
    elif isinstance(config, Mapping):
        overrides = {**config, **overrides}
        config = base or EncoderConfig()
    elif not isinstance(config, EncoderConfig):
        raise ConfigError(f"encoder must be an EncoderConfig or a mapping of its fields, got {type(config).__name__}")
    unknown = sorted(set(overrides) - set(ENCODER_FIELDS))
    if unknown:
        raise ConfigError(f"encoder has no field(s) {', '.join(unknown)}; its fields: {', '.join(ENCODER_FIELDS)}")
    numbers = [k for k in ("embed_dim", "depth", "num_heads") if k in overrides]
    if overrides.get("size") is not None:
        named = vit_size(overrides["size"])
        clash = {k: overrides[k] for k in numbers if overrides[k] != getattr(named, k)}
        if clash:
            raise ConfigError(size_clash(overrides["size"], clash))
        overrides.update({k: getattr(named, k) for k in ("embed_dim", "depth", "num_heads")})  # not the base's
    elif numbers and "size" not in overrides:
        overrides["size"] = None  # explicit numbers replace a named size of the base config
    return replace(config, **overrides) if overrides else config


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

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) tokens, or (B, K, D) for the patches at `ids_keep` only.

        The convolution is computed as one matrix product over the patch pixels (the same weights, timm's
        layout), so that masked patches are never embedded: MAE discards 75% of them anyway.
        """
        self.check(x)
        patches = patchify(x, self.patch_size)  # (B, N, prod(patch) * C), pixels (patch..., C) inside
        if ids_keep is not None:
            patches = gather_tokens(patches, ids_keep)
        weight = self.proj.weight  # (D, C, *patch) -> (D, *patch, C) to match the patch pixel order
        weight = weight.permute(0, *range(2, weight.ndim), 1).reshape(weight.shape[0], -1)
        return F.linear(patches, weight, self.proj.bias)


class ViTEncoder(nn.Module):
    """ViT (timm blocks, fused attention) over 2D or 3D patches with fixed sin-cos or learned positions.

    `forward_visible(x, ids_keep)` runs only the visible tokens through the blocks (MAE); the class token
    is kept first. `forward_features(x)` encodes every token.
    """

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int | Sequence[int] = 16,
                 in_chans: int = 3, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 spatial_dims: int = 2, pos_embed: str = "sincos", class_token: bool = True,
                 layer_scale: float | None = None, patch_embed: nn.Module | None = None):
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if layer_scale is not None and not layer_scale > 0:
            raise ConfigError(f"encoder.layer_scale is the layer scale's initial value, > 0 (or null for none); "
                              f"got {layer_scale}")
        self.layer_scale = layer_scale
        self.spatial_dims = spatial_dims
        self.img_size = as_tuple(img_size, spatial_dims, "img_size")
        self.patch_size = as_tuple(patch_size, spatial_dims, "patch_size")
        self.grid = grid_shape(self.img_size, self.patch_size)
        self.num_patches = int(torch.tensor(self.grid).prod())
        self.in_chans, self.embed_dim, self.num_features = in_chans, embed_dim, embed_dim
        self.depth, self.num_heads, self.mlp_ratio = depth, num_heads, mlp_ratio
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
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i], norm_layer=LayerNorm,
                  init_values=layer_scale)
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
        return run_blocks(self.blocks, self.norm, tokens, return_layers)

    # ------------------------------------------------------------------ public interface
    def forward_visible(self, x: torch.Tensor, ids_keep: torch.Tensor | None,
                        return_layers: Sequence[int] | None = None):
        """Encode only the tokens at `ids_keep` (B, K); returns (B, prefix + K, D)."""
        if ids_keep is not None and isinstance(self.patch_embed, PatchEmbed):  # embed visible patches only
            grid = self.patch_embed.check(x)
            positions = self.positions(grid).expand(x.shape[0], -1, -1)
            tokens = self.patch_embed(x, ids_keep) + gather_tokens(positions, ids_keep)
            return self.forward_tokens(tokens, return_layers)
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

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by layer, as timm's VisionTransformer: for timm.optim.param_groups_layer_decay."""
        return dict(stem=r"^cls_token|pos_embed|patch_embed",
                    blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])


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
                 embed_dim: int = 768, pos_embed: str = "sincos", spatial_dims: int = 2, **kwargs):
        require_2d(spatial_dims, "a unified 2D/3D encoder (3D volumes enter through volume_size)")
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


def set_fused_attention(model: nn.Module, device_type: str, bf16: bool) -> nn.Module:
    """Choose fused attention (scaled_dot_product_attention) or the written-out form in every timm block.

    Fused everywhere except on the CPU in bf16, where torch's fused kernel was measured 1.5x slower than
    the written-out matmul-softmax-matmul for ViT-Tiny at 224 (0.46 vs 0.31 s per step, 2 cores); in fp32
    both take the same time, and on GPUs the fused kernel is the fast one.
    """
    fused = not (device_type == "cpu" and bf16)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    return model


def set_activation_checkpointing(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Recompute each transformer block's activations in the backward pass instead of keeping them (memory for
    compute: about one more forward), in every timm Block of `model` (encoders and decoders); gradients are unchanged.
    The switch is on the instances (no new parameters or state-dict keys)."""
    for module in model.modules():
        if isinstance(module, Block):
            if enabled:
                module.forward = partial(_recomputed_forward, module, type(module).forward)
            else:
                module.__dict__.pop("forward", None)
    return model


def _recomputed_forward(block: nn.Module, forward, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    if not torch.is_grad_enabled():
        return forward(block, *args, **kwargs)
    # non-reentrant checkpointing restores the RNG state, so drop path draws the same paths when recomputing
    return checkpoint(forward, block, *args, use_reentrant=False, **kwargs)


def run_blocks(blocks: Sequence[nn.Module], norm: nn.Module, tokens: torch.Tensor,
               return_layers: Sequence[int] | None = None):
    """Run the blocks and the final norm; with `return_layers` (1-based) also those blocks' outputs."""
    hidden = []
    wanted = set(return_layers or ())
    for i, block in enumerate(blocks, start=1):
        tokens = block(tokens)
        if i in wanted:
            hidden.append(tokens)
    out = norm(tokens)
    return (out, hidden) if return_layers is not None else out


def require_2d(spatial_dims: int, what: str) -> None:
    """Refuse a 3D configuration for an encoder that reads 2D images only."""
    if spatial_dims != 2:
        raise ConfigError(f"{what} reads 2D images: encoder.spatial_dims must be 2, got {spatial_dims}")


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


def build_encoder(config: EncoderConfig | Mapping | str | None = None, encoder_class: type[ViTEncoder] | None = None,
                  **overrides) -> ViTEncoder:
    """A ViT encoder from an EncoderConfig (or a mapping of its fields) plus field overrides.

    A string is a named size whose embed_dim, depth and num_heads the overrides may still change
    (`build_encoder("tiny", depth=1)`). Keys that are not EncoderConfig fields go to `encoder_class`
    (default ViTEncoder), e.g. a ChannelViTEncoder's `num_memory_tokens`.
    """
    if isinstance(config, str):
        named = vit_size(config)
        config = EncoderConfig(embed_dim=named.embed_dim, depth=named.depth, num_heads=named.num_heads)
    config = encoder_config(config, **{k: v for k, v in overrides.items() if k in ENCODER_FIELDS})
    if config.in_chans is None:
        raise ConfigError("encoder.in_chans is not set: give the number of input channels")
    extra = {k: v for k, v in overrides.items() if k not in ENCODER_FIELDS}
    return (encoder_class or ViTEncoder)(**config.encoder_arguments(), **extra)


# ----------------------------------------------------------------------------- spectrum-aware patch embedding
@dataclass(frozen=True)
class SpectralRange:
    """A range of the electromagnetic spectrum (nm) with its own patch projection in a spectrum-aware embedding."""

    name: str
    min_nm: float
    max_nm: float

    @property
    def center_nm(self) -> float:
        return 0.5 * (self.min_nm + self.max_nm)


def spectral_weights(ranges: Sequence[SpectralRange], wavelengths: torch.Tensor,
                     bandwidths: torch.Tensor | None = None, band_names: Sequence[str] | None = None) -> torch.Tensor:
    """How much each spectral range's projection contributes to each band: (C, R), rows sum to 1.

    A band named like a range (e.g. "VV") uses that range alone. Otherwise the candidates are the ranges the
    band's interval [centre - width/2, centre + width/2] overlaps (without widths: the ranges holding its
    centre); a band that overlaps none uses the nearest range below and above its centre. The candidates are
    averaged with inverse-distance weights between the band's centre and each range's centre, so a band
    centred on a range uses that range alone and a band between two ranges blends them linearly.
    """
    wl = torch.as_tensor(wavelengths, dtype=torch.float64).flatten().cpu()
    widths = (torch.zeros_like(wl) if bandwidths is None
              else torch.as_tensor(bandwidths, dtype=torch.float64).flatten().cpu())
    if widths.shape != wl.shape:
        raise DataError(f"bandwidths has {widths.numel()} entries but wavelengths has {wl.numel()}")
    if band_names is not None and len(band_names) != wl.numel():
        raise DataError(f"band_names has {len(band_names)} entries but wavelengths has {wl.numel()}")
    if not bool(torch.isfinite(wl).all()) or bool((wl <= 0).any()):
        raise DataError(f"wavelengths must be positive numbers in nanometres, got {wl.tolist()}")
    lo_r = torch.tensor([r.min_nm for r in ranges], dtype=torch.float64)
    hi_r = torch.tensor([r.max_nm for r in ranges], dtype=torch.float64)
    centers = 0.5 * (lo_r + hi_r)
    names = {r.name.lower(): i for i, r in enumerate(ranges)}
    weights = torch.zeros(wl.numel(), len(ranges), dtype=torch.float64)
    for c in range(wl.numel()):
        if band_names is not None and str(band_names[c]).lower() in names:
            weights[c, names[str(band_names[c]).lower()]] = 1.0
            continue
        lo, hi = wl[c] - widths[c] / 2, wl[c] + widths[c] / 2
        candidates = (lo_r <= hi) & (hi_r >= lo)
        if not bool(candidates.any()):
            below, above = centers <= wl[c], centers > wl[c]
            if bool(below.any()):
                candidates[torch.where(below, centers, torch.full_like(centers, -float("inf"))).argmax()] = True
            if bool(above.any()):
                candidates[torch.where(above, centers, torch.full_like(centers, float("inf"))).argmin()] = True
        distance = (centers - wl[c]).abs()
        # a range centred on the band (within 1e-6 relative) takes it alone
        exact = candidates & (distance <= 1e-6 * wl[c])
        if bool(exact.any()):
            weights[c] = exact.double() / exact.sum()
        else:
            inverse = torch.where(candidates, 1.0 / distance, torch.zeros_like(distance))
            weights[c] = inverse / inverse.sum()
    return weights.float()


class SpectralPatchEmbed(nn.Module):
    """Spectrum-aware patch embedding: one linear projection per spectral range, applied to each band's patch.

    SMARTIES (Sumbul et al., ICCV 2025): a band's patch pixels go through the projection(s) of the spectral
    range(s) it belongs to (see `spectral_weights`); the band embeddings of a patch are averaged and scaled by
    `scale` (the paper's C_max, the largest number of bands seen in pretraining), so any set of bands from any
    sensor gives one token per patch and a band's embedding depends on its wavelength, not on its position.
    """

    def __init__(self, ranges: Sequence[SpectralRange], patch_size: int | Sequence[int] = 16, embed_dim: int = 768,
                 scale: float = 1.0, band_aliases: Mapping[str, str] | None = None):
        super().__init__()
        if not ranges:
            raise ConfigError("a spectral patch embedding needs at least one spectral range")
        self.ranges = tuple(ranges)
        # band name -> range name: such a band takes that range's projection alone (SMARTIES' projection_idx)
        known = {r.name for r in self.ranges}
        self.band_aliases = {k: v for k, v in (band_aliases or {}).items() if v in known}
        self.spatial_dims = 2
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        self.pixels = self.patch_size[0] * self.patch_size[1]
        self.scale = float(scale)
        # one nn.Linear(pixels, embed_dim) per range, stored stacked so bands can mix ranges in one einsum
        self.weight = nn.Parameter(torch.empty(len(self.ranges), embed_dim, self.pixels))
        self.bias = nn.Parameter(torch.zeros(len(self.ranges), embed_dim))
        for w in self.weight.data:
            nn.init.xavier_uniform_(w)

    def check(self, x: torch.Tensor) -> tuple[int, ...]:
        """Validate an input batch and return its token grid."""
        if x.ndim != 4:
            raise DataError(f"expected images shaped (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
        return grid_shape(x.shape[2:], self.patch_size)

    def weights(self, wavelengths: torch.Tensor, bandwidths: torch.Tensor | None = None,
                band_names: Sequence[str] | None = None) -> torch.Tensor:
        """(C, R) range weights of each band (see `spectral_weights`; `band_aliases` rename bands first)."""
        if band_names is not None and self.band_aliases:
            band_names = [self.band_aliases.get(str(n), n) for n in band_names]
        return spectral_weights(self.ranges, wavelengths, bandwidths, band_names).to(self.weight.device)

    def band_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, N, pixels): every band's patches, row-major."""
        batch, chans, height, width = x.shape
        ph, pw = self.patch_size
        x = x.reshape(batch, chans, height // ph, ph, width // pw, pw).permute(0, 1, 2, 4, 3, 5)
        return x.reshape(batch, chans, -1, self.pixels)

    def band_embeddings(self, x: torch.Tensor, wavelengths: torch.Tensor, bandwidths: torch.Tensor | None = None,
                        band_names: Sequence[str] | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, N, D): each band's patches through its range projection(s)."""
        self.check(x)
        wl = torch.as_tensor(wavelengths)
        bw = None if bandwidths is None else torch.as_tensor(bandwidths)
        if wl.ndim == 2 and wl.shape[0] == x.shape[0] and bool((wl == wl[:1]).all()):
            wl, bw = wl[0], (None if bw is None else bw.reshape(wl.shape)[0])
        patches = self.band_patches(x)
        if wl.ndim == 1:
            if wl.numel() != x.shape[1]:
                raise DataError(f"the images have {x.shape[1]} band(s) but {wl.numel()} wavelength(s) were given")
            mix = self.weights(wl, bw, band_names).to(patches.dtype)                 # (C, R)
            weight = torch.einsum("cr,rdp->cdp", mix, self.weight.to(patches.dtype))
            bias = mix @ self.bias.to(patches.dtype)
            return torch.einsum("bcnp,cdp->bcnd", patches, weight) + bias[None, :, None]
        if wl.shape != x.shape[:2]:
            raise DataError(f"wavelengths must be (C,) or (B, C) = {tuple(x.shape[:2])}, got {tuple(wl.shape)}")
        # per-sample band sets: one pass per distinct set
        out = patches.new_empty(*patches.shape[:3], self.weight.shape[1])
        bw2 = None if bw is None else bw.reshape(wl.shape)
        rows, inverse = torch.unique(wl, dim=0, return_inverse=True)
        for i in range(rows.shape[0]):
            pick = inverse == i
            first = int(pick.nonzero()[0])
            out[pick] = self.band_embeddings(x[pick], wl[first], None if bw2 is None else bw2[first], band_names)
        return out

    def forward(self, x: torch.Tensor, wavelengths: torch.Tensor, bandwidths: torch.Tensor | None = None,
                band_names: Sequence[str] | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D): scale x the mean of the band embeddings."""
        return self.scale * self.band_embeddings(x, wavelengths, bandwidths, band_names).mean(1)


class SpectralViTEncoder(ViTEncoder):
    """A ViTEncoder over a `SpectralPatchEmbed`: any combination of bands, described by their wavelengths.

    Every encoding method takes optional `wavelengths` ((C,) or (B, C), nm), `bandwidths` and `band_names`;
    without them the encoder's default bands (given at construction) are assumed, so the generic
    `forward_features(x)` / `pool` evaluation works for images of those bands.
    """

    def __init__(self, ranges: Sequence[SpectralRange], wavelengths: Sequence[float],
                 bandwidths: Sequence[float] | None = None, band_names: Sequence[str] | None = None,
                 img_size: int | Sequence[int] = 224, patch_size: int | Sequence[int] = 16, embed_dim: int = 768,
                 projection_scale: float = 1.0, in_chans: int | None = None, spatial_dims: int = 2,
                 band_aliases: Mapping[str, str] | None = None, **kwargs):
        require_2d(spatial_dims, "a spectrum-aware encoder")
        if in_chans is not None and in_chans != len(wavelengths):
            raise ConfigError(f"in_chans={in_chans} but the encoder's default bands are {len(wavelengths)}")
        embedder = SpectralPatchEmbed(ranges, patch_size, embed_dim, projection_scale, band_aliases)
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=len(wavelengths), embed_dim=embed_dim,
                         spatial_dims=2, patch_embed=embedder, **kwargs)
        self.register_buffer("band_wavelengths", torch.tensor(list(wavelengths), dtype=torch.float32))
        self.register_buffer("band_widths", torch.tensor(list(bandwidths if bandwidths is not None
                                                              else [0.0] * len(wavelengths)), dtype=torch.float32))
        self.band_names = list(band_names) if band_names is not None else None

    def _bands(self, x: torch.Tensor, wavelengths, bandwidths, band_names):
        if wavelengths is None:
            if x.shape[1] != self.in_chans:
                raise DataError(f"images with {x.shape[1]} band(s) need their `wavelengths`; the encoder's default "
                                f"bands are {self.in_chans}")
            return self.band_wavelengths, self.band_widths, self.band_names
        return wavelengths, bandwidths, band_names

    def patch_tokens(self, x: torch.Tensor, wavelengths=None, bandwidths=None, band_names=None):
        """Embed patches (no positions yet): (B, N, D) and the token grid."""
        grid = self.patch_embed.check(x)
        return self.patch_embed(x, *self._bands(x, wavelengths, bandwidths, band_names)), tuple(grid)

    def embed(self, x: torch.Tensor, wavelengths=None, bandwidths=None, band_names=None) -> torch.Tensor:
        tokens, grid = self.patch_tokens(x, wavelengths, bandwidths, band_names)
        return tokens + self.positions(grid)

    def forward_visible(self, x: torch.Tensor, ids_keep: torch.Tensor | None,
                        return_layers: Sequence[int] | None = None, wavelengths=None, bandwidths=None,
                        band_names=None):
        tokens = self.embed(x, wavelengths, bandwidths, band_names)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        return self.forward_tokens(tokens, return_layers)

    def forward_features(self, x: torch.Tensor, return_layers: Sequence[int] | None = None, wavelengths=None,
                         bandwidths=None, band_names=None):
        return self.forward_visible(x, None, return_layers, wavelengths, bandwidths, band_names)

    def forward(self, x: torch.Tensor, wavelengths=None, bandwidths=None, band_names=None) -> torch.Tensor:
        return self.pool(self.forward_features(x, None, wavelengths, bandwidths, band_names))


# ----------------------------------------------------------------------------- per-channel patch tokens
class ChannelPatchEmbed(nn.Module):
    """Per-channel patch tokens: one projection shared by all channels plus a learned embedding per channel.

    As in ChannelViT / ChA-MAEViT: each channel's patches become tokens of their own, so an image of C channels
    gives C x N tokens (channel-major); `channel_embed` (orthogonally initialised) tells the channels apart
    and lets a model take any subset of its `max_channels` channels.
    """

    def __init__(self, patch_size: int | Sequence[int] = 16, max_channels: int = 3, embed_dim: int = 768):
        super().__init__()
        self.spatial_dims = 2
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        self.in_chans = self.max_channels = int(max_channels)
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        nn.init.xavier_uniform_(self.proj.weight.data.view(embed_dim, -1))
        nn.init.zeros_(self.proj.bias)
        self.channel_embed = nn.Parameter(torch.empty(self.max_channels, embed_dim))
        orthogonal = torch.empty(embed_dim, self.max_channels)
        nn.init.orthogonal_(orthogonal)  # orthonormal columns when embed_dim >= max_channels
        self.channel_embed.data.copy_(orthogonal.t())

    def check(self, x: torch.Tensor) -> tuple[int, ...]:
        if x.ndim != 4:
            raise DataError(f"expected images shaped (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] > self.max_channels:
            raise DataError(f"the model takes at most {self.max_channels} channel(s) but the images have {x.shape[1]}")
        return grid_shape(x.shape[2:], self.patch_size)

    def channel_ids(self, num_channels: int, channel_ids=None, device=None) -> torch.Tensor:
        """The channel indices (C,) of an input: `channel_ids` checked, or 0..C-1 for a full set of channels."""
        if channel_ids is None:
            if num_channels != self.max_channels:
                raise DataError(f"an image with {num_channels} of the model's {self.max_channels} channels needs "
                                f"`channel_ids` saying which channels it holds")
            return torch.arange(num_channels, device=device)
        ids = torch.as_tensor(channel_ids, dtype=torch.long, device=device).flatten()
        if ids.numel() != num_channels:
            raise DataError(f"channel_ids has {ids.numel()} entries but the images have {num_channels} channel(s)")
        if bool((ids < 0).any()) or bool((ids >= self.max_channels).any()) or ids.unique().numel() != ids.numel():
            raise DataError(f"channel_ids must be distinct indices in [0, {self.max_channels}), got {ids.tolist()}")
        return ids

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, N, D): every channel's patches through the shared projection."""
        batch, chans = x.shape[:2]
        tokens = self.proj(x.reshape(batch * chans, 1, *x.shape[2:])).flatten(2).transpose(1, 2)
        return tokens.reshape(batch, chans, tokens.shape[1], tokens.shape[2])

    def forward(self, x: torch.Tensor, channel_ids=None) -> torch.Tensor:
        """(B, C, H, W) -> (B, C * N, D) channel-major tokens with their channel embeddings added."""
        self.check(x)
        ids = self.channel_ids(x.shape[1], channel_ids, x.device)
        return (self.project(x) + self.channel_embed[ids][None, :, None]).flatten(1, 2)


class ChannelViTEncoder(ViTEncoder):
    """A ViT over per-channel patch tokens (`ChannelPatchEmbed`), with optional memory tokens after the class token.

    Tokens are channel-major (channel 0's N patches, then channel 1's, ...); every channel's tokens get the same
    spatial positions. Memory (register) tokens are learned tokens that join the class token in front
    (ChA-MAEViT); `num_prefix_tokens` = 1 + `num_memory_tokens`. Every encoding method takes optional
    `channel_ids` (which of the `in_chans` channels the image holds), so the model accepts channel subsets.
    """

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int | Sequence[int] = 16,
                 in_chans: int = 3, embed_dim: int = 768, num_memory_tokens: int = 0, spatial_dims: int = 2,
                 **kwargs):
        require_2d(spatial_dims, "a per-channel encoder")
        embedder = ChannelPatchEmbed(patch_size, in_chans, embed_dim)
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         spatial_dims=2, patch_embed=embedder, **kwargs)
        if self.cls_token is None:
            raise ConfigError("a ChannelViTEncoder needs its class token")
        self.num_memory_tokens = int(num_memory_tokens)
        self.memory_tokens = (nn.Parameter(torch.zeros(1, self.num_memory_tokens, embed_dim))
                              if self.num_memory_tokens else None)
        if self.memory_tokens is not None:
            nn.init.trunc_normal_(self.memory_tokens, std=0.02)
        self.num_prefix_tokens = 1 + self.num_memory_tokens

    def positions(self, grid: Sequence[int]) -> torch.Tensor:
        """Spatial positions (1, N, D) of one channel's patches (position 0 of `pos_embed` is the class token's)."""
        if tuple(grid) == self.grid:
            return self.pos_embed[:, 1:]
        if self.fixed_pos:
            return sincos_pos_embed(self.embed_dim, grid).unsqueeze(0).to(self.pos_embed)
        raise DataError(f"the model was built for a {self.grid} token grid and has learned positions; "
                        f"got images giving a {tuple(grid)} grid (resize them to {self.img_size})")

    def patch_tokens(self, x: torch.Tensor, channel_ids=None):
        """Per-channel tokens with channel embeddings, no positions: (B, C * N, D) and the spatial grid."""
        grid = self.patch_embed.check(x)
        return self.patch_embed(x, channel_ids), tuple(grid)

    def embed(self, x: torch.Tensor, channel_ids=None) -> torch.Tensor:
        tokens, grid = self.patch_tokens(x, channel_ids)
        return tokens + self.positions(grid).repeat(1, x.shape[1], 1)

    def forward_tokens(self, tokens: torch.Tensor, return_layers: Sequence[int] | None = None):
        """Prepend the class and memory tokens, run the blocks and the final norm."""
        prefix = [(self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)]
        if self.memory_tokens is not None:
            prefix.append(self.memory_tokens.expand(tokens.shape[0], -1, -1))
        tokens = torch.cat(prefix + [tokens], dim=1)
        return run_blocks(self.blocks, self.norm, tokens, return_layers)

    def forward_visible(self, x: torch.Tensor, ids_keep: torch.Tensor | None,
                        return_layers: Sequence[int] | None = None, channel_ids=None):
        """Encode only the tokens at `ids_keep` (B, K), indices into the C * N channel-major tokens."""
        tokens = self.embed(x, channel_ids)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        return self.forward_tokens(tokens, return_layers)

    def forward_features(self, x: torch.Tensor, return_layers: Sequence[int] | None = None, channel_ids=None):
        return self.forward_visible(x, None, return_layers, channel_ids)

    def forward(self, x: torch.Tensor, channel_ids=None) -> torch.Tensor:
        return self.pool(self.forward_features(x, None, channel_ids))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "memory_tokens", "patch_embed.channel_embed"}
