"""Heads over a mimkit ViTEncoder, built by name: `build_head(name, encoder, num_outputs, **options)`.

A head declares what it reads from the encoder (`reads`): "pooled" (one vector per image), "tokens" (the
patch tokens) or "layers" (the final tokens, the hidden states of the blocks in `layers`, the input image).
`FineTuneModel` calls the encoder once and hands the head `head.select(output)`; that selection has no
parameters, so under a frozen encoder it can be computed once and cached (the linear-probe fast path).
A domain adds its own head with `@register_head("name")`.

    linear       MAE fine-tuning: avg pool + fc_norm LayerNorm (or the class token), Linear (std 2e-5)
    bn_linear    MAE linear probe: BatchNorm without affine (eps 1e-6), Linear (std 0.01)
    attentive    attentive probe (CAE, V-JEPA): a learned query cross-attends to the patch tokens, Linear
    unetr        UNETR-style decoder over hidden states, 2D and 3D, MONAI blocks (ViTSegmenter)
    segmentation a linear or small convolutional decoder over the patch tokens (SETR-naive / Segmenter linear)
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from .encoders import LayerNorm
from .errors import ConfigError
from .tokens import unpatchify

READS = ("pooled", "tokens", "layers")
POOLS = ("token", "avg")
_HEADS: dict[str, type[Head]] = {}


# ---------------------------------------------------------------------------------------------- registry
def register_head(name: str) -> Callable[[type], type]:
    """Class decorator: make a head buildable by `name`; its constructor is (encoder, num_outputs, **options)."""
    def wrap(cls: type) -> type:
        if name in _HEADS and _HEADS[name] is not cls:
            raise ConfigError(f"head name {name!r} is registered twice ({_HEADS[name].__module__}, {cls.__module__})")
        _HEADS[name] = cls
        cls.head_name = name
        return cls
    return wrap


def list_heads() -> list[str]:
    return sorted(_HEADS)


def build_head(name: str, encoder: nn.Module | int, num_outputs: int, **options) -> Head:
    """A registered head over `encoder` (or, for heads over pooled features, the feature width)."""
    if name not in _HEADS:
        raise ConfigError(f"unknown head {name!r}; available: {', '.join(list_heads())}")
    if not isinstance(num_outputs, int) or num_outputs < 1:
        raise ConfigError(f"num_outputs must be a positive integer, got {num_outputs!r}")
    try:
        head = _HEADS[name](encoder, num_outputs, **options)
    except TypeError as error:  # an option the head does not take
        raise ConfigError(f"head {name!r}: {error}") from None
    head.options = dict(options)
    return head


# ---------------------------------------------------------------------------------------------- interface
@dataclass
class EncoderOutput:
    """What one encoder pass gives a head."""

    tokens: torch.Tensor                       # (B, prefix + N, D) after the encoder's final norm
    image: torch.Tensor                        # the input, (B, C, *spatial)
    grid: tuple[int, ...]                      # token grid of this input
    encoder: nn.Module
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # block (1-based) -> output before the norm

    @property
    def patch_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.encoder.num_prefix_tokens:]

    def feature_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, prefix + N, D) tokens -> (B, D, *grid): patch tokens are in row-major grid order."""
        tokens = tokens[:, self.encoder.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)


class Head(nn.Module):
    """Base class: `select(output)` picks the head's input from an EncoderOutput; `forward` gives logits."""

    head_name = "head"
    reads = "pooled"                  # one of READS
    pool = "token"                    # for reads == "pooled"
    layers: tuple[int, ...] = ()      # hidden states wanted, for reads == "layers"
    keeps_encoder_norm = True         # False: the model replaces the encoder's final norm by Identity
    dense = False                     # per-pixel logits (segmentation)
    options: dict = {}

    def select(self, out: EncoderOutput):
        if self.reads == "pooled":
            return out.encoder.pool(out.tokens, self.pool)
        if self.reads == "tokens":
            return out.patch_tokens
        return out

    def no_weight_decay(self) -> set[str]:
        return set()


def _width(encoder: nn.Module | int) -> int:
    return encoder if isinstance(encoder, int) else encoder.embed_dim


def _pool(pool: str) -> str:
    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {', '.join(map(repr, POOLS))}, got {pool!r}")
    return pool


def _linear(width: int, num_outputs: int, std: float) -> nn.Linear:
    layer = nn.Linear(width, num_outputs)
    nn.init.trunc_normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)
    return layer


# ---------------------------------------------------------------------------------------------- classification
@register_head("linear")
class LinearHead(Head):
    """MAE's fine-tuning head. pool="avg" (MAE's default): mean of the patch tokens, then a LayerNorm (fc_norm,
    which replaces the encoder's final norm) and a Linear; pool="token": the normed class token and a Linear."""

    def __init__(self, encoder: nn.Module | int, num_outputs: int, pool: str = "avg"):
        super().__init__()
        self.pool = _pool(pool)
        self.keeps_encoder_norm = pool != "avg"
        width = _width(encoder)
        self.fc_norm = LayerNorm(width) if pool == "avg" else nn.Identity()
        self.fc = _linear(width, num_outputs, std=2e-5)  # MAE fine-tuning's head init

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc_norm(features))


@register_head("bn_linear")
class BatchNormLinearHead(Head):
    """MAE's linear-probe head: BatchNorm without affine parameters (eps 1e-6), then a Linear layer."""

    def __init__(self, encoder: nn.Module | int, num_outputs: int, pool: str = "token"):
        super().__init__()
        self.pool = _pool(pool)
        width = _width(encoder)
        self.norm = nn.BatchNorm1d(width, affine=False, eps=1e-6)
        self.fc = _linear(width, num_outputs, std=0.01)  # MAE, following MoCo v3

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(features))


@register_head("attentive")
class AttentiveHead(Head):
    """Attentive probe (CAE, Chen et al. 2023; V-JEPA, Bardes et al. 2024): a learned query cross-attends to every
    patch token (a cross-attention block with an MLP), then a Linear layer."""

    reads = "tokens"

    def __init__(self, encoder: nn.Module | int, num_outputs: int, num_heads: int | None = None,
                 mlp_ratio: float = 4.0):
        super().__init__()
        width = _width(encoder)
        num_heads = num_heads or getattr(encoder, "num_heads", 1)
        if width % num_heads:
            raise ConfigError(f"attentive head: width {width} must be divisible by num_heads {num_heads}")
        self.query = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm2 = LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.fc = _linear(width, num_outputs, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keys = self.norm(tokens)
        query = self.query.expand(tokens.shape[0], -1, -1)
        pooled = query + self.attn(query, keys, keys, need_weights=False)[0]
        pooled = pooled + self.mlp(self.norm2(pooled))
        return self.fc(pooled[:, 0])

    def no_weight_decay(self) -> set[str]:
        return {"query"}


# ---------------------------------------------------------------------------------------------- segmentation
class InterpolateUpBlock(nn.Module):
    """The last decoder stage when the patch size is not a power of two (Hi-End-MAE's UNETR for 12^3 patches):
    interpolate to the skip's size, a 3x3 convolution, concatenate the skip, a UNETR convolution block."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm_name: str | tuple,
                 res_block: bool = True):
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock, get_conv_layer

        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        self.conv = get_conv_layer(spatial_dims, in_channels, out_channels, kernel_size=3, stride=1, conv_only=True)
        block = UnetResBlock if res_block else UnetBasicBlock
        self.block = block(spatial_dims, 2 * out_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False))
        return self.block(torch.cat([x, skip], dim=1))


@register_head("unetr")
class UNETRHead(Head):
    """UNETR-style decoder (Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", WACV 2022):
    hidden states of evenly spaced blocks feed MONAI's UNETR blocks; 2D or 3D after the encoder.

    For a 12-block ViT with 16^3 patches this is UNETR: the outputs of blocks 4, 7 and 10 (MONAI's and
    Hi-End-MAE's code: hidden_states_out[3], [6], [9]; the paper calls them z3, z6, z9) become skips at 1/2, 1/4 and 1/8 resolution through
    UnetrPrUpBlock, the final normed output enters the first UnetrUpBlock, and the input itself is the
    full-resolution skip (UnetrBasicBlock). A patch of 2^k has k decoder stages and k - 1 hidden skips; any
    other patch (Hi-End-MAE's 12) gets floor(log2 p) transposed-convolution stages and a last stage that
    interpolates to the input size, as Hi-End-MAE's UNETR does.
    """

    reads = "layers"
    dense = True

    def __init__(self, encoder: nn.Module, num_outputs: int, feature_size: int = 16,
                 norm_name: str | tuple = "instance", res_block: bool = True, conv_block: bool = True,
                 skip_layers: Sequence[int] | None = None):
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock

        dims = getattr(encoder, "spatial_dims", None)
        if dims not in (2, 3) or not hasattr(encoder, "forward_features"):
            raise ConfigError(f"the UNETR head needs a mimkit ViTEncoder with spatial_dims 2 or 3, got "
                              f"{type(encoder).__name__} (spatial_dims={dims})")
        if getattr(encoder, "volume_grid", None) is not None:
            raise ConfigError("the UNETR head reads plain 2D or 3D encoders; a unified 2D/3D encoder (Uni4Eye) "
                              "segments through its 2D path only")
        patch = tuple(encoder.patch_size)
        if len(set(patch)) != 1 or patch[0] < 2:
            raise ConfigError(f"the UNETR head needs the same patch size (2 or more) on every axis, got {patch}")
        if num_outputs < 2:
            raise ConfigError(f"segmentation needs at least 2 classes (background and one more), got {num_outputs}")
        p = patch[0]
        stages = int(math.floor(math.log2(p)))
        self.power_of_two = 2 ** stages == p
        num_skips = stages - 1 if self.power_of_two else stages
        depth = len(encoder.blocks)
        if skip_layers is None:  # evenly spaced as MONAI's UNETR indexes them: blocks 4, 7, 10 of 12 for 3 skips
            skip_layers = [min(depth, round(depth * j / (num_skips + 1)) + 1) for j in range(1, num_skips + 1)]
        self.skip_layers = self.layers = tuple(int(layer) for layer in skip_layers)
        if len(self.skip_layers) != num_skips or any(not 1 <= layer <= depth for layer in self.skip_layers):
            raise ConfigError(f"skip_layers must name {num_skips} encoder blocks between 1 and {depth} for patch "
                              f"size {p}, got {self.skip_layers}")
        self.spatial_dims, self.num_classes = dims, num_outputs
        width = encoder.embed_dim
        self.stem = UnetrBasicBlock(dims, encoder.in_chans, feature_size, kernel_size=3, stride=1,
                                    norm_name=norm_name, res_block=res_block)
        # skip j (1 = finest) is upsampled num_skips - j + 1 times from the token grid
        self.skips = nn.ModuleList([
            UnetrPrUpBlock(dims, width, feature_size * 2 ** j, num_layer=num_skips - j, kernel_size=3, stride=1,
                           upsample_kernel_size=2, norm_name=norm_name, conv_block=conv_block, res_block=res_block)
            for j in range(1, num_skips + 1)])
        self.ups = nn.ModuleList()
        channels = width
        for j in range(num_skips, 0, -1):
            self.ups.append(UnetrUpBlock(dims, channels, feature_size * 2 ** j, kernel_size=3, upsample_kernel_size=2,
                                         norm_name=norm_name, res_block=res_block))
            channels = feature_size * 2 ** j
        self.final = (UnetrUpBlock(dims, channels, feature_size, kernel_size=3, upsample_kernel_size=2,
                                   norm_name=norm_name, res_block=res_block) if self.power_of_two
                      else InterpolateUpBlock(dims, channels, feature_size, norm_name, res_block))
        self.out = UnetOutBlock(dims, feature_size, num_outputs)

    def forward(self, out: EncoderOutput) -> torch.Tensor:
        skips = [block(out.feature_map(out.hidden[layer])) for block, layer in zip(self.skips, self.skip_layers)]
        h = out.feature_map(out.tokens)
        for up, skip in zip(self.ups, reversed(skips)):
            h = up(h, skip)
        return self.out(self.final(h, self.stem(out.image)))


SEGMENTATION_DECODERS = ("linear", "conv")


@register_head("segmentation")
class SegmentationHead(Head):
    """Per-pixel class logits from the patch tokens of a 2D encoder.

    decoder="linear": each token predicts the classes of every pixel of its patch with one linear map (SETR-naive /
    Segmenter's linear decoder); decoder="conv": a 1x1 projection, bilinear upsampling to the image and two
    convolutions, a light stand-in for UPerNet that sees neighbouring patches.
    """

    reads = "tokens"
    dense = True

    def __init__(self, encoder: nn.Module, num_outputs: int, decoder: str = "linear", hidden: int = 64):
        super().__init__()
        if decoder not in SEGMENTATION_DECODERS:
            raise ConfigError(f"segmentation decoder must be one of {', '.join(SEGMENTATION_DECODERS)}, "
                              f"got {decoder!r}")
        if len(tuple(encoder.grid)) != 2:
            raise ConfigError("the segmentation head needs a 2D encoder")
        self.decoder, self.num_classes = decoder, num_outputs
        self.grid, self.patch = tuple(encoder.grid), tuple(encoder.patch_size)
        dim = encoder.embed_dim
        if decoder == "linear":
            self.linear = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_outputs * math.prod(self.patch)))
        else:
            self.project = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU())
            self.refine = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                                        nn.Conv2d(hidden, num_outputs, 1))

    def select(self, out: EncoderOutput) -> torch.Tensor:
        tokens = out.patch_tokens
        if tokens.shape[1] != math.prod(self.grid):
            raise ConfigError(f"the encoder gives {tokens.shape[1]} patch tokens for a {self.grid} grid (one token "
                              f"per channel and patch?); segmentation needs one token per patch")
        return tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) -> logits (B, classes, H, W)."""
        if self.decoder == "linear":
            return unpatchify(self.linear(tokens), self.patch, self.grid, self.num_classes)
        maps = self.project(tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid))
        size = (self.grid[0] * self.patch[0], self.grid[1] * self.patch[1])
        return self.refine(F.interpolate(maps, size=size, mode="bilinear", align_corners=False))


# ---------------------------------------------------------------------------------------------- encoder + head
class FineTuneModel(nn.Module):
    """An encoder with a head: one encoder pass, the head gets what it reads. `encoder=None`: the head alone,
    over precomputed features."""

    method_name = "finetuned"  # the name save_method writes; rebuild with core.finetune.load_finetuned

    def __init__(self, encoder: nn.Module | None, head: Head, *, copy_encoder: bool = True):
        super().__init__()
        if head.reads not in READS:
            raise ConfigError(f"{type(head).__name__}.reads must be one of {', '.join(READS)}, got {head.reads!r}")
        if encoder is not None and copy_encoder:
            encoder = copy.deepcopy(encoder)
        if encoder is not None and not head.keeps_encoder_norm:
            encoder.norm = nn.Identity()
        self.encoder, self.head = encoder, head

    def encode(self, images: torch.Tensor) -> EncoderOutput:
        encoder = self.encoder
        check = getattr(encoder.patch_embed, "check", None)
        grid = tuple(check(images)) if check is not None else tuple(encoder.grid)
        layers = sorted(set(self.head.layers))
        if layers:
            tokens, hidden = encoder.forward_features(images, return_layers=layers)
            return EncoderOutput(tokens, images, grid, encoder, dict(zip(layers, hidden)))
        return EncoderOutput(encoder.forward_features(images), images, grid, encoder)

    def features(self, images: torch.Tensor):
        """The head's input for these images (cacheable when the encoder is frozen and the head reads tensors)."""
        return self.head.select(self.encode(images))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x if self.encoder is None else self.features(x))

    def no_weight_decay(self) -> set[str]:
        names = {f"head.{name}" for name in self.head.no_weight_decay()}
        if self.encoder is not None:
            names |= {f"encoder.{name}" for name in self.encoder.no_weight_decay()}
        return names

    def group_matcher(self, coarse: bool = False) -> dict:
        """The encoder's timm layer groups under "encoder."; everything else (the encoder's final norm, the head)
        falls in one last group, as in BEiT's rule (MAE's lr_decay.py): layer depth + 1."""
        if self.encoder is None or not hasattr(self.encoder, "group_matcher"):
            return {}
        groups = {}
        for name, spec in self.encoder.group_matcher(coarse).items():
            entries = [(spec, None)] if isinstance(spec, str) else spec
            # timm's (99999,) suffix joins the final norm to the last block; BEiT puts it with the head instead
            kept = [(_prefixed(pattern), suffix) for pattern, suffix in entries if suffix is None]
            if kept:
                groups[name] = kept
        return groups


def _prefixed(pattern: str) -> str:
    return rf"^encoder\.(?:{pattern.removeprefix('^')})"


class ViTSegmenter(FineTuneModel):
    """UNETR-style segmentation over a copy of a mimkit ViTEncoder: FineTuneModel with the "unetr" head."""

    def __init__(self, encoder: nn.Module, num_classes: int, feature_size: int = 16,
                 norm_name: str | tuple = "instance", res_block: bool = True, conv_block: bool = True,
                 skip_layers: Sequence[int] | None = None, copy_encoder: bool = True):
        head = build_head("unetr", encoder, num_classes, feature_size=feature_size, norm_name=norm_name,
                          res_block=res_block, conv_block=conv_block, skip_layers=skip_layers)
        super().__init__(encoder, head, copy_encoder=copy_encoder)


__all__ = ["register_head", "build_head", "list_heads", "Head", "EncoderOutput", "LinearHead", "BatchNormLinearHead",
           "AttentiveHead", "UNETRHead", "InterpolateUpBlock", "SegmentationHead", "FineTuneModel", "ViTSegmenter"]
