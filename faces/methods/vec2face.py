"""Vec2Face: Wu et al., "Vec2Face: Scaling Face Dataset Generation with Loosely Constrained Vectors", ICLR 2025.

A face image is generated from a face recognizer's identity vector alone. Read from the official code
(HaiyuWu/Vec2Face: model_vec2face.py, discriminator_loss.py, engine_vec2face.py, vec2face.py):
- the 512-d vector -> a linear map to the encoder width (the identity token) plus a per-dimension expansion
  (a Linear(1, N) applied to every coordinate) into N = 7 x 7 feature tokens;
- MAGE-style masking, the ratio drawn once per batch from a truncated normal (training: min 0.5, max 1.0, mean
  0.75, std 0.25): the lowest-noise ceil(N * min) tokens are dropped from the encoder input, the others up to
  ceil(N * ratio) are replaced by the identity token; learned positions, LayerNorm and dropout 0.1 on the input;
- a ViT encoder and decoder (dropout 0.1 in every block); the decoder fills every masked position with its
  own identity token; its N tokens -> z channels -> a VQGAN-style convolutional decoder to the image;
- losses: pixel MSE + 0.2 LPIPS(vgg) + 0.1 (1 - SSIM) + token MSE (decoder tokens vs the unmasked expansion,
  detached) + identity (1 - cos(recognizer(image), vector)) and, from `discriminator_start_step` on, the
  generator term -mean(D(image)) of a patch discriminator trained with the least-squares (LSGAN) loss. As in
  the official loop, the discriminator's gradient is that of its loss plus the generator term (both backward
  passes reach it before its step); `generator_term_trains_discriminator=False` stops the latter.
Images are normalised with mean 0.5 / std 0.5 ([-1, 1]), as the official loader and recognizers take them.
The recognizer is a local file (faces.identity); LPIPS's linear heads ship with the lpips package, its
VGG16 backbone is a local torchvision file (`perceptual_backbone`). Ours: the discriminator starts at a step
(the official code counts epochs: 80 of 100 in its README); the classifier-free `rep_drop_prob` of the
official arguments is never used by its model and is left out.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.core.encoders import EncoderConfig, LayerNorm, gather_tokens, init_weights, run_blocks
from mimkit.core.errors import CheckpointError, ConfigError, DataError
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.tokens import patchify, unpatchify

from ..identity import freeze, load_identity_network, random_identity_network


# ---------------------------------------------------------------------------------------------- masking
class TruncatedNormalRatio:
    """A mask ratio drawn from a normal (mean, std) truncated to [minimum, maximum], with torch's RNG."""

    def __init__(self, minimum: float, maximum: float, mean: float, std: float):
        if not 0.0 <= minimum <= maximum <= 1.0 or std <= 0:
            raise ConfigError(f"mask ratio distribution needs 0 <= min <= max <= 1 and std > 0, got min={minimum}, "
                              f"max={maximum}, std={std}")
        self.minimum, self.maximum, self.mean, self.std = minimum, maximum, mean, std

    def sample(self, count: int = 1) -> torch.Tensor:
        return nn.init.trunc_normal_(torch.empty(count, dtype=torch.float64), self.mean, self.std,
                                     self.minimum, self.maximum)


def identity_token_mask(batch_size: int, num_tokens: int, ratio: float, drop_ratio: float,
                        device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAGE masking of N tokens: (ids_keep (B, N - dropped) in order, dropped (B, N), masked (B, N)) as booleans.

    The ceil(N * drop_ratio) lowest-noise tokens are dropped, the ceil(N * ratio) lowest are masked (a superset).
    """
    dropped_count, masked_count = math.ceil(num_tokens * drop_ratio), math.ceil(num_tokens * ratio)
    if masked_count < dropped_count:
        raise ConfigError(f"mask ratio {ratio} is below the drop ratio {drop_ratio}")
    order = torch.rand(batch_size, num_tokens, device=device).argsort(dim=1)
    rank = order.argsort(dim=1)  # each token's place in the noise order
    dropped, masked = rank < dropped_count, rank < masked_count
    ids_keep = order[:, dropped_count:].sort(dim=1).values
    return ids_keep, dropped, masked


# ---------------------------------------------------------------------------------------------- image decoder
def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)  # 32 groups (VQGAN), fewer for tiny widths


class ResnetBlock(nn.Module):
    """VQGAN's residual block: GroupNorm, SiLU, conv, GroupNorm, SiLU, conv, plus a 1x1 shortcut on width change."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(_group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, 1, 1),
                                  _group_norm(out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, 1, 1))
        self.shortcut = nn.Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the feature map's positions (VQGAN's middle block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class ImageDecoder(nn.Module):
    """VQGAN's convolutional decoder: z (B, z, g, g) -> image (B, 3, g * 2^(L-1), ...), L = len(channel_multipliers).

    conv in, middle (res, attention, res), then per level from the widest: `res_blocks + 1` residual blocks
    (attention too at `attention_resolutions`) and a nearest x2 upsampling + conv, then GroupNorm, SiLU, conv out.
    """

    def __init__(self, z_channels: int = 256, channels: int = 128, channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4),
                 res_blocks: int = 2, attention_resolutions: Sequence[int] = (16,), grid: int = 7,
                 out_channels: int = 3):
        super().__init__()
        widths = [channels * m for m in channel_multipliers]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, 1, 1)
        self.middle = nn.Sequential(ResnetBlock(widths[-1], widths[-1]), AttentionBlock(widths[-1]),
                                    ResnetBlock(widths[-1], widths[-1]))
        layers, width, resolution = [], widths[-1], grid
        for level in reversed(range(len(widths))):
            for _ in range(res_blocks + 1):
                layers.append(ResnetBlock(width, widths[level]))
                width = widths[level]
                if resolution in attention_resolutions:
                    layers.append(AttentionBlock(width))
            if level:
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, 1, 1)]
                resolution *= 2
        self.up = nn.Sequential(*layers)
        self.out = nn.Sequential(_group_norm(width), nn.SiLU(), nn.Conv2d(width, out_channels, 3, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.middle(self.conv_in(z))))


# ---------------------------------------------------------------------------------------------- discriminator
class PatchDiscriminator(nn.Module):
    """The ViT-VQGAN discriminator the official code uses: multi-kernel (3, 7, 15) stem, stride-2 conv + residual
    stages, a 4x4 conv to patch logits (11 x 11 at 112 px); LeakyReLU 0.1, GroupNorm(8)."""

    def __init__(self, dims: Sequence[int] = (64, 128, 256, 512), channels: int = 3, groups: int = 8,
                 stem_kernels: Sequence[int] = (3, 7, 15)):
        super().__init__()
        # the stem's widths halve per kernel, the last takes the rest (as in the reference layer)
        split = [dims[0] // 2 ** i for i in range(1, len(stem_kernels))]
        split.append(dims[0] - sum(split))
        self.stem = nn.ModuleList([nn.Conv2d(channels, w, k, 1, (k - 1) // 2)
                                   for k, w in zip(sorted(stem_kernels), split)])
        self.stages = nn.ModuleList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            self.stages.append(nn.ModuleDict(dict(
                down=nn.Sequential(nn.Conv2d(d_in, d_out, 4, 2, 1), nn.LeakyReLU(0.1), nn.GroupNorm(groups, d_out)),
                res=nn.Sequential(nn.GroupNorm(groups, d_out), nn.LeakyReLU(0.1), nn.Conv2d(d_out, d_out, 3, 1, 1)))))
        self.to_logits = nn.Sequential(nn.Conv2d(dims[-1], dims[-1], 1), nn.LeakyReLU(0.1), nn.Conv2d(dims[-1], 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(torch.cat([conv(x) for conv in self.stem], 1), 0.1)
        for stage in self.stages:
            x = stage["down"](x)
            x = x + stage["res"](x)
        return self.to_logits(x)


# ---------------------------------------------------------------------------------------------- perceptual loss
def build_lpips(net: str, backbone: str | None) -> nn.Module:
    """LPIPS with the package's shipped linear heads and the backbone from a local torchvision file ("random":
    tests only). The torchvision `features.N` weights map onto lpips' `net.sliceK.N`."""
    import lpips

    if backbone is None:
        raise ConfigError(f"Vec2Face's LPIPS term needs its {net} backbone as a local file: perceptual_backbone=PATH "
                          f"(torchvision's {'vgg16' if net == 'vgg' else net} state dict); or perceptual_weight=0")
    with warnings.catch_warnings():  # torchvision's note on its deprecated `pretrained` argument, which lpips passes
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    state = torch.load(str(heads), map_location="cpu", weights_only=True)
    if backbone != "random":
        path = Path(backbone)
        if not path.is_file():
            raise CheckpointError(f"perceptual_backbone file {backbone!r} does not exist")
        found = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in model.state_dict():
            if key.startswith("net.slice"):
                source = "features." + key.split(".", 2)[2]
                if source not in found:
                    raise CheckpointError(f"perceptual_backbone {path}: no {source!r}; expected torchvision's "
                                          f"{net} state dict (features.N.weight ...)")
                state[key] = found[source]
    missing = [k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.") and k not in state]
    if missing:
        raise CheckpointError(f"lpips heads {heads}: missing {missing[:3]}")
    model.load_state_dict(state, strict=False)
    return freeze(model)


# ---------------------------------------------------------------------------------------------- the method
class NoImagePatches(nn.Module):
    """Vec2Face's encoder reads identity vectors, not images: a clear error where a patch embedding would be."""

    def forward(self, x: torch.Tensor, ids_keep=None) -> torch.Tensor:
        raise DataError("vec2face's encoder takes identity vectors (batch['identity']), not image patches; "
                        "use method.generate(vectors) or method(batch)")


@register_method("vec2face")
class Vec2Face(MIMMethod):
    """Identity vector -> masked feature tokens -> ViT encoder/decoder -> convolutional image decoder (Wu et al.).

    `batch["image"]` in [-1, 1]; `batch["identity"]` (B, identity_dim) the recognizer's vectors of those images,
    computed here with the identity network when absent.
    """

    def __init__(self,
                 encoder: EncoderConfig = EncoderConfig(img_size=112, patch_size=16, embed_dim=768, depth=12,
                                                        num_heads=12, pos_embed="learned"),  # official: ViT-B, 7x7
                 decoder_embed_dim: int = 768, decoder_depth: int = 8, decoder_num_heads: int = 16,  # official
                 identity_dim: int = 512,                     # official: rep_dim 512 (ArcFace R100)
                 dropout: float = 0.1,                        # official: drop = attn_drop = 0.1 in every block
                 mask_ratio_min: float = 0.5, mask_ratio_max: float = 1.0,       # official training arguments
                 mask_ratio_mean: float = 0.75, mask_ratio_std: float = 0.25,
                 # image_generation.py: (min, max, mean, std) of the mask ratio when generating
                 generation_mask_ratio: tuple[float, float, float, float] = (0.1, 1.0, 0.15, 0.25),
                 z_channels: int = 256, decoder_channels: int = 128,             # official vqgan.yaml ddconfig
                 channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4), res_blocks: int = 2,
                 attention_resolutions: tuple[int, ...] = (16,),
                 identity_network: str | None = None,         # local file (faces.identity) or "random" (tests only)
                 perceptual_net: str = "vgg",                 # official: LPIPS with VGG16
                 perceptual_backbone: str | None = None,      # local torchvision file or "random" (tests only)
                 pixel_weight: float = 1.0, perceptual_weight: float = 0.2,  # official: 0.1 * (2 * LPIPS)
                 ssim_weight: float = 0.1, token_weight: float = 1.0, identity_weight: float = 1.0,
                 adversarial_weight: float = 1.0,             # official: d_weight 1 (adaptive weight disabled)
                 discriminator_dims: tuple[int, ...] = (64, 128, 256, 512),  # official Discriminator(dims=...)
                 discriminator_start_step: int = 10_000,      # ours (official: epoch 80 of 100)
                 generator_term_trains_discriminator: bool = True):  # official loop behaviour, see module doc
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder, patch_embed=NoImagePatches())
        if decoder_embed_dim != enc.embed_dim:
            raise ConfigError(f"vec2face: decoder_embed_dim ({decoder_embed_dim}) must equal encoder.embed_dim "
                              f"({enc.embed_dim}): the token loss compares decoder tokens with the encoder's")
        if enc.in_chans != 3:
            raise ConfigError(f"vec2face generates RGB faces: encoder.in_chans must be 3, got {enc.in_chans}")
        if enc.patch_size[0] != enc.patch_size[1] or 2 ** (len(channel_multipliers) - 1) != enc.patch_size[0]:
            raise ConfigError(f"vec2face: the image decoder upsamples by 2^(len(channel_multipliers) - 1) = "
                              f"{2 ** (len(channel_multipliers) - 1)}, which must equal the square patch size "
                              f"{enc.patch_size} (image {enc.img_size} / grid {enc.grid})")
        enc.cls_token = None  # the identity token takes the class token's place (and its position)
        dim, self.num_tokens = enc.embed_dim, enc.num_patches
        self.identity_dim = identity_dim
        self.vector_proj = nn.Linear(identity_dim, dim)
        self.expand = nn.Linear(1, self.num_tokens)  # every coordinate of the projected vector -> N tokens
        self.input_norm, self.input_dropout = LayerNorm(dim), nn.Dropout(dropout)
        self.train_ratio = TruncatedNormalRatio(mask_ratio_min, mask_ratio_max, mask_ratio_mean, mask_ratio_std)
        self.generation_ratio = TruncatedNormalRatio(*generation_mask_ratio)
        self.decoder_embed = nn.Linear(dim, decoder_embed_dim)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens + 1, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, enc.mlp_ratio, qkv_bias=True,
                                                   norm_layer=LayerNorm) for _ in range(decoder_depth)])
        self.decoder_norm = LayerNorm(decoder_embed_dim)
        self.to_z = nn.Linear(decoder_embed_dim, z_channels)
        self.image_decoder = ImageDecoder(z_channels, decoder_channels, channel_multipliers, res_blocks,
                                          attention_resolutions, enc.grid[0])
        self.apply(init_weights)
        nn.init.normal_(self.decoder_pos_embed, std=0.02)
        for block in [*enc.blocks, *self.decoder_blocks]:  # official blocks: dropout 0.1 on attention and MLP
            for module in (block.attn.attn_drop, block.attn.proj_drop, block.mlp.drop1, block.mlp.drop2):
                module.p = dropout
        self.weights = dict(pixel=pixel_weight, perceptual=perceptual_weight, ssim=ssim_weight, token=token_weight,
                            identity=identity_weight, adversarial=adversarial_weight)
        # the mean length of the identity vectors seen in training: generation samples new identities at it
        # (float64: a count of 100 epochs of a million images stays exact)
        self.register_buffer("identity_norm", torch.zeros((), dtype=torch.float64))
        self.register_buffer("identity_count", torch.zeros((), dtype=torch.float64))
        self.discriminator_start_step = discriminator_start_step
        self.generator_term_trains_discriminator = generator_term_trains_discriminator
        self.discriminator = PatchDiscriminator(discriminator_dims) if adversarial_weight > 0 else None
        # frozen judges: kept in eval mode by train(); saved with the method so a file generates on its own
        if identity_network is None:
            raise ConfigError("vec2face needs a face recognizer: identity_network=PATH (an insightface IResNet .pth "
                              "or `mimkit-faces train-identity` output); 'random' builds one for tests only")
        size = enc.img_size[0]
        self.identity_network = (random_identity_network(identity_dim, max(16, size // 16 * 16))
                                 if identity_network == "random" else load_identity_network(identity_network))
        found = self.identity_network.config["embedding_dim"]
        if found != identity_dim:
            raise ConfigError(f"identity_network {identity_network!r} gives {found}-d vectors; identity_dim is "
                              f"{identity_dim}")
        self.perceptual = build_lpips(perceptual_net, perceptual_backbone) if perceptual_weight > 0 else None
        from pytorch_msssim import SSIM
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)

    def train(self, mode: bool = True):
        super().train(mode)
        for judge in (self.identity_network, self.perceptual):
            if judge is not None:
                judge.eval()
        return self

    # ------------------------------------------------------------------ the generator
    def tokens(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(identity token (B, D), feature tokens (B, N, D)) of identity vectors."""
        if vectors.ndim != 2 or vectors.shape[1] != self.identity_dim:
            raise DataError(f"identity vectors must be (B, {self.identity_dim}), got {tuple(vectors.shape)}")
        identity = self.vector_proj(vectors)
        return identity, self.expand(identity.unsqueeze(-1)).transpose(1, 2)

    def forward_vectors(self, vectors: torch.Tensor, ratio: float, drop_ratio: float) -> tuple[torch.Tensor, ...]:
        """Images (B, 3, H, W), decoder tokens (B, 1 + N, D), target tokens (B, 1 + N, D), masked (B, N)."""
        identity, features = self.tokens(vectors)
        target = torch.cat([identity[:, None], features], 1).detach()
        batch = vectors.shape[0]
        ids_keep, dropped, masked = identity_token_mask(batch, self.num_tokens, ratio, drop_ratio,
                                                        vectors.device)
        features = torch.where(masked[..., None], identity[:, None].expand_as(features), features)
        x = torch.cat([identity[:, None], features], 1) + self.encoder.pos_embed
        x = self.input_dropout(self.input_norm(x))
        x = torch.cat([x[:, :1], gather_tokens(x[:, 1:], ids_keep)], 1)
        latent = self.decoder_embed(run_blocks(self.encoder.blocks, self.encoder.norm, x))
        # every position starts as the decoded identity token; the kept tokens go back to their places
        filled = latent[:, :1].expand(-1, self.num_tokens, -1).clone()
        filled = filled.scatter(1, ids_keep[..., None].expand(-1, -1, latent.shape[-1]), latent[:, 1:])
        filled = torch.where(masked[..., None], latent[:, :1].expand_as(filled), filled)
        x = torch.cat([latent[:, :1], filled], 1) + self.decoder_pos_embed
        tokens = run_blocks(self.decoder_blocks, self.decoder_norm, x)
        grid = self.encoder.grid
        z = self.to_z(tokens[:, 1:]).transpose(1, 2).reshape(batch, -1, *grid)
        return self.image_decoder(z), tokens, target, masked

    @torch.no_grad()
    def generate(self, vectors: torch.Tensor, ratio: float | None = None) -> torch.Tensor:
        """Images in [-1, 1] from identity vectors, masked as the official generation script does."""
        was_training = self.training
        self.eval()
        drop = self.generation_ratio.minimum
        ratio = float(self.generation_ratio.sample()) if ratio is None else max(ratio, drop)
        images = self.forward_vectors(vectors.float(), ratio, drop)[0].clamp(-1, 1)
        self.train(was_training)
        return images

    def identity_of(self, images: torch.Tensor) -> torch.Tensor:
        """The recognizer's (unnormalised) vectors of images in [-1, 1]."""
        return self.identity_network(images)

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        if images.ndim != 4 or images.shape[1:] != (3, *self.encoder.img_size):
            raise DataError(f"vec2face takes RGB images (B, 3, {self.encoder.img_size[0]}, {self.encoder.img_size[1]})"
                            f" in [-1, 1], got {tuple(images.shape)}")
        vectors = batch.get("identity")
        if vectors is None:
            with torch.no_grad():
                vectors = self.identity_of(images)
        if self.training:
            with torch.no_grad():
                count = self.identity_count + len(vectors)
                self.identity_norm += (vectors.double().norm(dim=-1).sum() - len(vectors) * self.identity_norm) / count
                self.identity_count.copy_(count)
        ratio = float(self.train_ratio.sample())
        generated, tokens, target, masked = self.forward_vectors(vectors.float(), ratio,
                                                                     self.train_ratio.minimum)
        w, parts = self.weights, {}
        parts["pixel"] = F.mse_loss(generated, images)
        parts["token"] = F.mse_loss(tokens[:, 1:], target[:, 1:])
        parts["ssim"] = 1 - self.ssim((generated.float() + 1) / 2, (images.float() + 1) / 2)
        parts["identity"] = (1 - F.cosine_similarity(self.identity_of(generated), vectors, dim=-1)).mean()
        if self.perceptual is not None:
            parts["perceptual"] = self.perceptual(generated, images).mean()
        loss = sum(w[name] * value for name, value in parts.items())
        if self.discriminator is not None and (step if step is not None else 0) >= self.discriminator_start_step:
            parts["adversarial"] = -self._discriminate(generated).mean()
            real, fake = self.discriminator(images), self.discriminator(generated.detach())
            parts["discriminator"] = 0.5 * (((real - 1) ** 2).mean() + (fake ** 2).mean())  # LSGAN ("mse")
            loss = loss + w["adversarial"] * parts["adversarial"] + parts["discriminator"]
        pred = patchify(generated, self.encoder.patch_size)
        return MIMOutput(loss=loss, parts={k: v.detach() for k, v in parts.items()}, pred=pred, mask=masked.float())

    def _discriminate(self, images: torch.Tensor) -> torch.Tensor:
        if self.generator_term_trains_discriminator:
            return self.discriminator(images)
        params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, params, (images,))

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return unpatchify(out.pred, self.encoder.patch_size, self.encoder.grid, 3)
