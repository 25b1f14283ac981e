"""MixedAE: Chen et al., "Mixed Autoencoder for Self-supervised Visual Representation Learning", CVPR 2023.

Groups of `num_images` images are mixed patch-wise into one image by a random assignment that gives each
image an equal share of the positions (4 images -> 25% each, the token budget of MAE's 75% masking). The
encoder sees the whole mixed image. Homologous recognition keeps each image's tokens apart although they
share one sequence: in every encoder block each patch query attends only to the `N / num_images` keys it
scores highest (homologous attention: TopK over the attention scores, the query must find its own image's
tokens), and a homologous contrastive loss on the encoder's patch features takes the tokens of the same
image as positives and the others as negatives. Segment embeddings (one per image slot) are added to the
mixed tokens. The mixed tokens are then unmixed with the assignment and an MAE decoder reconstructs each
image from its own tokens. At fine-tuning the encoder is a plain ViT (homologous attention is replaced by
ordinary attention, and segment embeddings are dropped).

The paper's code is not public and its full text could not be consulted while writing this file: the
mechanisms above follow our reading of its description (abstract, figures, method names). Values not
checked against the paper (contrastive temperature, weight and projection head) are marked as our choice.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..decoders import MAEDecoder, MLPHead
from ..encoders import EncoderConfig, gather_tokens
from ..errors import ConfigError, DataError
from ..masking import Mask
from ..registry import register_method
from ..targets import PixelTarget, masked_mse
from .base import MIMMethod, MIMOutput


def mixing_assignment(groups: int, num_tokens: int, num_images: int, device=None) -> torch.Tensor:
    """(groups, N) which image slot each position of a mixed sample takes; each slot gets N / num_images positions."""
    rank = torch.argsort(torch.argsort(torch.rand(groups, num_tokens, device=device), dim=1), dim=1)
    return torch.div(rank * num_images, num_tokens, rounding_mode="floor")


def mix(tokens: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Tokens (G * M, N, D) of G groups of M images (image g * M + m) -> (G, N, D) mixed by the assignment."""
    groups, num = assignment.shape
    per_group = tokens.shape[0] // groups
    grouped = tokens.reshape(groups, per_group, num, tokens.shape[-1])
    index = assignment[:, None, :, None].expand(-1, 1, -1, tokens.shape[-1])
    return torch.gather(grouped, 1, index).squeeze(1)


def unmix(mixed: torch.Tensor, assignment: torch.Tensor, num_images: int) -> tuple[torch.Tensor, Mask]:
    """Inverse of `mix`: each image's own tokens (G * M, N / M, D) in position order, and its Mask (1 = elsewhere)."""
    slots = torch.arange(num_images, device=assignment.device).view(1, -1, 1)
    hidden = assignment.unsqueeze(1) != slots                      # (G, M, N)
    mask = Mask.from_bool(hidden.reshape(-1, assignment.shape[1]))
    own = gather_tokens(mixed.repeat_interleave(num_images, dim=0), mask.ids_keep)
    return own, mask


def topk_attention_mask(scores: torch.Tensor, k: int, prefix: int = 1) -> torch.Tensor:
    """Homologous attention: bool (B, heads, L, L), True where a query may attend.

    Each patch query keeps the `k` patch keys it scores highest (not the class token); the class token's
    query reads every token.
    """
    patch = scores[..., prefix:, prefix:]
    top = patch.topk(k, dim=-1).indices
    allowed = torch.zeros_like(scores, dtype=torch.bool)
    allowed[..., prefix:, prefix:] = torch.zeros_like(patch, dtype=torch.bool).scatter_(-1, top, True)
    allowed[..., :prefix, :] = True
    return allowed


def homologous_contrastive_loss(features: torch.Tensor, assignment: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised-contrastive loss over the patch features (G, N, D) of each mixed sample.

    For every token the other tokens of its own image are positives, the remaining tokens negatives.
    """
    z = F.normalize(features.float(), dim=-1)
    logits = z @ z.transpose(1, 2) / temperature
    itself = torch.eye(logits.shape[-1], dtype=torch.bool, device=logits.device)
    log_prob = logits.masked_fill(itself, float("-inf")).log_softmax(-1)
    positive = (assignment.unsqueeze(2) == assignment.unsqueeze(1)) & ~itself
    per_token = -log_prob.masked_fill(~positive, 0.0).sum(-1) / positive.sum(-1).clamp_min(1)
    return per_token.mean()


@register_method("mixedae")
class MixedAE(MIMMethod):
    """Mix images patch-wise, recognise each image's tokens (TopK attention + contrastive loss), rebuild each image."""

    def __init__(self, encoder: EncoderConfig = EncoderConfig(),  # ViT-B/16
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,  # MAE's decoder
                 mask_ratio: float | None = None, num_images: int | None = None,
                 homologous_attention: bool = True, segment_embedding: bool = True,
                 contrastive_weight: float = 1.0, temperature: float = 0.1,  # our choice (not checked)
                 norm_pix_loss: bool = True):
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)
        self.num_images = self._num_images(mask_ratio, num_images)
        if enc.num_patches % self.num_images:
            raise ConfigError(f"MixedAE gives each of {self.num_images} images an equal share of the "
                              f"{enc.num_patches} tokens; choose num_images dividing {enc.num_patches}")
        self.homologous_attention = bool(homologous_attention)
        self.contrastive_weight, self.temperature = float(contrastive_weight), float(temperature)
        self.segment_embed = (nn.Parameter(torch.zeros(self.num_images, enc.embed_dim))
                              if segment_embedding else None)
        if self.segment_embed is not None:
            nn.init.trunc_normal_(self.segment_embed, std=0.02)
        # the contrastive loss reads the patch features through a projection head (our choice: the usual
        # practice of contrastive losses, so the loss does not act on the transferred features directly)
        self.contrastive_head = MLPHead(enc.embed_dim, enc.embed_dim)
        self.target = PixelTarget(enc.patch_size, normalize=norm_pix_loss)
        # the decoder gets one image's own tokens only (no class token: it holds every image of the mix)
        self.decoder = MAEDecoder(enc.grid, enc.embed_dim, math.prod(enc.patch_size) * enc.in_chans,
                                  decoder_embed_dim, decoder_depth, decoder_num_heads, enc.mlp_ratio,
                                  num_prefix_tokens=0)

    @staticmethod
    def _num_images(mask_ratio: float | None, num_images: int | None) -> int:
        if mask_ratio is None:
            return 4 if num_images is None else int(num_images)  # 25% each, like MAE's 75% masking
        share = 1.0 - float(mask_ratio)
        implied = round(1.0 / share) if share > 0 else 0
        if implied < 2 or abs(implied * share - 1.0) > 1e-6:
            raise ConfigError(f"MixedAE's mask_ratio is 1 - 1 / num_images (0.5, 0.667, 0.75, ...); got {mask_ratio}")
        if num_images is not None and int(num_images) != implied:
            raise ConfigError(f"mask_ratio {mask_ratio} means {implied} images per mix, but num_images is {num_images}")
        return implied

    def homologous_mask(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Additive attention mask for one timm block: each patch query keeps its TopK keys (K = N / images)."""
        attn = block.attn
        with torch.no_grad():
            batch, length, _ = x.shape
            qkv = attn.qkv(block.norm1(x)).reshape(batch, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
            scores = attn.q_norm(qkv[0]) @ attn.k_norm(qkv[1]).transpose(-2, -1)
            allowed = topk_attention_mask(scores, self.encoder.num_patches // self.num_images,
                                          self.encoder.num_prefix_tokens)
        return torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, float("-inf"))

    def encode_mixed(self, tokens: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
        """Mixed tokens with positions (G, N, D) -> encoder output (G, prefix + N, D) under homologous attention."""
        enc = self.encoder
        if self.segment_embed is not None:
            tokens = tokens + self.segment_embed[assignment]
        if enc.cls_token is not None:
            cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        for block in enc.blocks:
            mask = self.homologous_mask(block, tokens) if self.homologous_attention else None
            tokens = block(tokens, attn_mask=mask)
        return enc.norm(tokens)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        count, per_mix = images.shape[0], self.num_images
        if count < 1:
            raise DataError("MixedAE got an empty batch")
        # a batch that does not divide into groups reuses its first images to fill the last group
        padded = images[torch.arange(math.ceil(count / per_mix) * per_mix, device=images.device) % count]
        groups = padded.shape[0] // per_mix
        assignment = mixing_assignment(groups, self.encoder.num_patches, per_mix, images.device)
        latent = self.encode_mixed(mix(self.encoder.embed(padded), assignment), assignment)
        patches = latent[:, self.encoder.num_prefix_tokens:]
        own, mask = unmix(patches, assignment, per_mix)
        pred = self.decoder(own, mask.ids_restore)
        reconstruction = masked_mse(pred, self.target(padded), mask.mask)
        contrastive = homologous_contrastive_loss(self.contrastive_head(patches), assignment, self.temperature)
        loss = reconstruction + self.contrastive_weight * contrastive
        return MIMOutput(loss=loss, parts={"reconstruction": reconstruction.detach(), "homologous": contrastive.detach()},
                         pred=pred[:count], mask=mask.mask[:count])

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.target.to_pixels(out.pred, self.images(batch))
