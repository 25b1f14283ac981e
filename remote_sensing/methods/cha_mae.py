"""ChA-MAEViT: Pham et al., "ChA-MAEViT: Unifying Channel-Aware Masked Autoencoders and Multi-Channel Vision
Transformers for Improved Cross-Channel Learning", NeurIPS 2025.

Every channel's patches are tokens of their own (one shared projection plus a channel embedding), so the model
takes any subset of its channels. Pretraining hides patches, whole channels, or both (dynamic channel-patch
masking, drawn per step), adds memory tokens to the class token, reconstructs every hidden channel-patch with a
channel-aware decoder (channel embeddings added to the decoder tokens), and pools with hybrid token fusion
(class token + attention-pooled patch tokens). The loss is the official code's: 0.99 x reconstruction
(0.99 normalised-pixel MSE + 0.01 Fourier loss) + 1e-5 x patch-token diversity + 1e-4 x channel-token
diversity (DiChaViT's regularisers) + 0.01 x classification when the batch has labels (the paper trains
the supervised term jointly; without labels that term is simply absent).

Batch: "image" (B, C, H, W) with C <= encoder.in_chans; optional "channel_ids" (C,) saying which of the model's
channels the image holds (default: all of them, in order), and "label" (B,) class indices when `num_classes` > 0.

Nodata (our choice, not the paper's): pixels where the batch's "valid" is False are set to 0, the band mean once
normalised, before embedding; they count in neither the MSE nor the Fourier term (both the prediction and the target
are zeroed there before the transform), and a channel-patch without data drops out of both averages.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.core.decoders import MaskedTokenDecoder, decoder_blocks
from mimkit.core.encoders import ChannelViTEncoder, EncoderConfig, gather_tokens, init_weights, run_blocks
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.masking import ChannelPatchMasker, RatioSchedule
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.targets import masked_mean

from .nodata import nodata_filled, valid_token_mean


class HybridTokenFusion(nn.Module):
    """Class token fused with an attention pooling of the patch tokens (ChA-MAEViT's hybrid token fusion).

    A learned query attends over the patch tokens (a Set Transformer multi-head attention block); the result is
    added to the class token ("add", the paper's So2Sat setting) or gates it through a sigmoid ("gate").
    """

    def __init__(self, dim: int, num_heads: int, mode: str = "add"):
        super().__init__()
        if mode not in ("add", "gate"):
            raise ConfigError(f"fusion must be 'add' or 'gate', got {mode!r}")
        self.mode, self.num_heads = mode, num_heads
        self.query = nn.Parameter(torch.zeros(1, dim))
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.apply(init_weights)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """cls (B, D), patches (B, L, D) -> (B, D)."""
        batch, _, dim = patches.shape
        q = self.q(self.query).expand(batch, 1, dim)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, x.shape[1], self.num_heads, -1).transpose(1, 2)

        # Set Transformer's block scales by the full width, not the head width
        pooled = F.scaled_dot_product_attention(heads(q), heads(self.k(patches)), heads(self.v(patches)),
                                                scale=1.0 / math.sqrt(dim))
        pooled = q + pooled.transpose(1, 2).reshape(batch, 1, dim)
        pooled = (pooled + F.relu(self.out(pooled))).squeeze(1)
        return cls * torch.sigmoid(pooled) if self.mode == "gate" else cls + pooled


class ChAMAEEncoder(ChannelViTEncoder):
    """The transferable ChA-MAEViT backbone: per-channel tokens, memory tokens, hybrid-token-fusion pooling.

    `pool(features)` (mode "fusion", the default) is the class token fused with the attention-pooled patch
    tokens; mode "token" is the class token alone, "avg" the mean patch token (memory tokens excluded).
    """

    def __init__(self, fusion: str = "add", **kwargs):
        super().__init__(**kwargs)
        self.fusion = HybridTokenFusion(self.embed_dim, self.num_heads, fusion)
        # official: one learned position table over the class token, the memory tokens and one channel's patches
        # (trunc-normal 0.02); the memory tokens' rows live here, the others in pos_embed
        self.memory_pos_embed = (nn.Parameter(torch.zeros(1, self.num_memory_tokens, self.embed_dim))
                                 if self.num_memory_tokens and not self.fixed_pos else None)
        if self.memory_pos_embed is not None:
            nn.init.trunc_normal_(self.memory_pos_embed, std=0.02)

    def forward_tokens(self, tokens: torch.Tensor, return_layers: Sequence[int] | None = None):
        """Prepend the class and memory tokens (each with its learned position), run the blocks and the norm."""
        prefix = [(self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)]
        if self.memory_tokens is not None:
            memory = self.memory_tokens if self.memory_pos_embed is None else self.memory_tokens + self.memory_pos_embed
            prefix.append(memory.expand(tokens.shape[0], -1, -1))
        return run_blocks(self.blocks, self.norm, torch.cat(prefix + [tokens], dim=1), return_layers)

    def pool(self, features: torch.Tensor, mode: str = "fusion") -> torch.Tensor:
        if mode == "fusion":
            return self.fusion(features[:, 0], features[:, self.num_prefix_tokens:])
        return super().pool(features, mode)


class ChannelAwareDecoder(MaskedTokenDecoder):
    """MAE decoder over channel-major per-channel tokens: mask tokens, positions and channel embeddings, blocks.

    The encoder's channel embeddings, mapped into the decoder width by the encoder-to-decoder projection, are
    added to every token of their channel so the decoder knows which channel each patch belongs to.
    """

    def __init__(self, grid: Sequence[int], in_dim: int, out_dim: int, decoder_embed_dim: int, decoder_depth: int,
                 decoder_num_heads: int, mlp_ratio: float = 4.0, num_prefix_tokens: int = 1):
        super().__init__(grid, in_dim, out_dim, decoder_embed_dim,
                         decoder_blocks(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio),
                         num_prefix_tokens, store_positions=False)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, channel_embed: torch.Tensor) -> torch.Tensor:
        """latent (B, prefix + K, D_enc), ids_restore (B, C * N), channel_embed (C, D_enc) -> (B, C * N, out)."""
        chans = channel_embed.shape[0]
        if ids_restore.shape[1] != chans * self.pos_embed.shape[1]:
            raise DataError(f"the decoder was built for a {self.grid} token grid per channel; got "
                            f"{ids_restore.shape[1]} tokens for {chans} channel(s)")
        channels = F.linear(channel_embed, self.embed.weight)                       # (C, D_dec)
        extra = (self.pos_embed[:, None] + channels[None, :, None]).flatten(1, 2)   # (1, C * N, D_dec)
        x = self.tokens(latent, ids_restore, extra)
        for block in self.blocks:
            x = block(x)
        return self.predict(x)


def patch_diversity_loss(tokens: torch.Tensor, channel_of: torch.Tensor, rows: torch.Tensor | None,
                         gamma_same: float, gamma_other: float) -> torch.Tensor:
    """DiChaViT's token diversification: push the cosine similarity of patch tokens down, within a channel
    (weight `gamma_same`) and across channels (`gamma_other`); `rows` (B, L) limits the anchors (visible tokens)."""
    feats = F.normalize(tokens.float(), dim=-1)
    similarity = feats @ feats.transpose(1, 2)                                       # (B, L, L)
    same = channel_of[:, None] == channel_of[None, :]
    eye = torch.eye(len(channel_of), dtype=torch.bool, device=tokens.device)
    pos, neg = (same & ~eye).float()[None], (~same).float()[None]
    if rows is not None:
        pos, neg = pos * rows[:, :, None], neg * rows[:, :, None]
    pos_mean = (pos * similarity).sum((1, 2)) / (pos.sum((1, 2)) + 1e-6)
    neg_mean = (neg * similarity).sum((1, 2)) / (neg.sum((1, 2)) + 1e-6)
    return (gamma_same * pos_mean + gamma_other * neg_mean).mean()


def proxy_loss(proxies: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Proxy-based classification: cross-entropy over minus squared distances of scaled unit vectors."""
    distance = torch.cdist(scale * F.normalize(embeddings, dim=-1), scale * F.normalize(proxies, dim=-1)) ** 2
    return F.cross_entropy(-distance, labels)


def channel_patches(images: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * N, ph * pw): every channel's patches, channel-major, pixels row-major."""
    batch, chans, height, width = images.shape
    ph, pw = patch_size
    x = images.float().reshape(batch, chans, height // ph, ph, width // pw, pw).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(batch, chans * (height // ph) * (width // pw), ph * pw)


def fourier_loss(pred: torch.Tensor, target: torch.Tensor, patch_size: Sequence[int],
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token L1 distance between the 2D Fourier magnitudes of predicted and true patches: (B, L).
    `valid` (B, L, pixels): nodata pixels are zeroed in both before the transform, so they do not count."""
    if valid is not None:
        valid = valid.to(pred.device, torch.float32)
        pred, target = pred.float() * valid, target.float() * valid
    shape = (*pred.shape[:2], *patch_size)
    spectrum = torch.fft.fft2(pred.float().reshape(shape)).abs()
    return (spectrum - torch.fft.fft2(target.float().reshape(shape)).abs()).abs().flatten(2).mean(-1)


@register_method("cha_mae")
class ChAMAE(MIMMethod):
    """Channel-aware MAE over per-channel tokens with dynamic channel-patch masking and memory tokens."""

    def __init__(self,  # paper: ViT-S; official: learned positions (pos_embed over class, memory and patch tokens)
                 encoder: EncoderConfig = EncoderConfig(embed_dim=384, depth=12, num_heads=6, pos_embed="learned"),
                 decoder_embed_dim: int | None = None, decoder_depth: int = 2,  # official config: 2 blocks
                 decoder_num_heads: int = 16,
                 mask_ratio: float | RatioSchedule = 0.75,  # official "alternate" setting: 0.75
                 p_patch: float = 0.5, p_channel: float = 0.5, at_least_one_channel: bool = False,
                 num_memory_tokens: int = 4,  # official config: 4 (So2Sat: 8)
                 norm_pix_loss: bool = True, fusion: str = "add",
                 reconstruction_weight: float = 0.99, fourier_weight: float = 0.01,
                 patch_diversity_weight: float = 1e-5, patch_diversity_gammas: Sequence[float] = (1.0, 4.0),
                 channel_diversity_weight: float = 1e-4, channel_diversity_temperature: float = 0.1,
                 num_classes: int = 0, classification_weight: float = 0.01,
                 classification_temperature: float = 10.0):
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder, ChAMAEEncoder, fusion=fusion,
                                                num_memory_tokens=num_memory_tokens)
        embed_dim = enc.embed_dim
        self.masker = ChannelPatchMasker(mask_ratio, p_patch, p_channel, at_least_one_channel)
        # the official decoder width is the encoder's
        self.decoder = ChannelAwareDecoder(enc.grid, embed_dim, math.prod(enc.patch_size),
                                           decoder_embed_dim or embed_dim, decoder_depth, decoder_num_heads,
                                           enc.mlp_ratio, num_prefix_tokens=enc.num_prefix_tokens)
        self.norm_pix_loss = norm_pix_loss
        self.weights = {"reconstruction": reconstruction_weight, "fourier": fourier_weight,
                        "patch_diversity": patch_diversity_weight, "channel_diversity": channel_diversity_weight,
                        "classification": classification_weight}
        self.gammas = tuple(float(g) for g in patch_diversity_gammas)
        # channel-token proxies, orthogonal like the official code
        self.channel_proxies = nn.Parameter(torch.empty(enc.in_chans, embed_dim))
        nn.init.orthogonal_(self.channel_proxies)
        self.channel_scale = math.sqrt(1.0 / channel_diversity_temperature)
        self.num_classes, self.classification_temperature = int(num_classes), float(classification_temperature)
        self.classifier = (nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.GELU(),
                                         nn.Linear(4 * embed_dim, self.num_classes)) if self.num_classes else None)

    def channel_ids(self, batch: dict) -> torch.Tensor:
        images = self.images(batch)
        ids = batch.get("channel_ids")
        if torch.is_tensor(ids) and ids.ndim == 2:  # default-collated (B, C): one channel set per batch
            if not bool((ids == ids[:1]).all()):
                raise DataError("every image of a batch must hold the same channel_ids")
            ids = ids[0]
        return self.encoder.patch_embed.channel_ids(images.shape[1], ids, images.device)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C * N, pixels): each channel's patch pixels, channel-major, normalised per token."""
        target = channel_patches(images, self.encoder.patch_size)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        return target

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images, valid = nodata_filled(batch, self.images(batch))  # nodata at 0, whatever the batch held there
        enc = self.encoder
        grid = enc.patch_embed.check(images)
        ids = self.channel_ids(batch)
        batch_size, chans = images.shape[:2]
        raw = enc.patch_embed.project(images)                                        # (B, C, N, D)
        channel_embed = enc.patch_embed.channel_embed[ids]
        tokens = (raw + channel_embed[None, :, None]).flatten(1, 2) + enc.positions(grid).repeat(1, chans, 1)
        num = tokens.shape[1]
        mask = self.masker(batch_size, num, num_channels=chans, step=step, device=images.device)
        latent = enc.forward_tokens(gather_tokens(tokens, mask.ids_keep))
        pred = self.decoder(latent, mask.ids_restore, channel_embed)
        target = self.target(images)
        # (B, C * N, pixels) like the target, 1 where a value is data (the same pixels in every channel)
        values = None if valid is None else channel_patches(valid.float(), enc.patch_size).repeat(1, chans, 1)
        per_token, has_data = valid_token_mean((pred.float() - target) ** 2, values)
        hidden = mask.mask * has_data.to(mask.mask)  # hidden channel-patches that hold data
        mse = masked_mean(per_token, hidden)
        fourier = masked_mean(fourier_loss(pred, target, enc.patch_size, values), hidden)
        w = self.weights
        parts = {"mse": mse, "fourier": fourier,
                 "reconstruction": (1 - w["fourier"]) * mse + w["fourier"] * fourier}
        channel_of = torch.arange(chans, device=images.device).repeat_interleave(num // chans)
        parts["patch_diversity"] = patch_diversity_loss(raw.flatten(1, 2), channel_of, 1.0 - mask.mask, *self.gammas)
        seen = ids[~mask.channels_masked[0]]
        parts["channel_diversity"] = proxy_loss(self.channel_proxies, enc.patch_embed.channel_embed[seen], seen,
                                                self.channel_scale)
        loss = (w["reconstruction"] * parts["reconstruction"] + w["patch_diversity"] * parts["patch_diversity"]
                + w["channel_diversity"] * parts["channel_diversity"])
        if self.classifier is not None and batch.get("label") is not None:
            labels = torch.as_tensor(batch["label"], device=images.device)
            if labels.shape != (batch_size,) or labels.dtype.is_floating_point:
                raise DataError(f"'label' must hold one class index per image, shape ({batch_size},); got "
                                f"{tuple(labels.shape)} {labels.dtype}")
            logits = self.classifier(enc.pool(latent))
            parts["classification"] = F.cross_entropy(logits / self.classification_temperature, labels)
            loss = loss + w["classification"] * parts["classification"]
        parts = {k: v.detach() for k, v in parts.items()}
        # `pred` is per channel-token (B, C * N, pixels); `mask` is per spatial patch (B, N) for pictures:
        # 1 where any channel of the patch is hidden
        spatial = mask.mask.reshape(batch_size, chans, -1).amax(1)
        return MIMOutput(loss=loss, parts=parts, pred=pred, mask=spatial)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        """Images predicted at every channel-patch (normalisation undone per token)."""
        out = out or self(batch)
        images = self.images(batch)
        batch_size, chans, height, width = images.shape
        ph, pw = self.encoder.patch_size
        pred = out.pred.float()
        if self.norm_pix_loss:
            x = channel_patches(images, (ph, pw))
            pred = pred * (x.var(-1, keepdim=True) + 1e-6) ** 0.5 + x.mean(-1, keepdim=True)
        pred = pred.reshape(batch_size, chans, height // ph, width // pw, ph, pw).permute(0, 1, 2, 4, 3, 5)
        return pred.reshape(batch_size, chans, height, width)
