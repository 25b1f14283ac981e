"""SelectiveMAE: Wang et al., "Harnessing Massive Satellite Imagery with Efficient Masked Image Modeling", ICCV 2025
(arXiv 2406.11933, first titled "Scaling Efficient Masked Image Modeling on Large Remote Sensing Dataset").

An MAE that both encodes and decodes few tokens. HOG scores pick semantically rich visible tokens (half sampled
by score, the rest added by similarity, progressively from the most to the least similar: PSTS), only a
subset of the hidden tokens is reconstructed (mask ratio 0.85, 25% of all tokens reconstructed), and the
decoder is cross-attention only: queries for the selected hidden positions read the encoder's tokens, so
neither the encoder nor the decoder sees the other hidden tokens. With N tokens the encoder runs on
1 + (1 - mask_ratio) N tokens and the decoder on target_ratio N queries.

Token scores (`score`): the released code standardises each patch's HOG vector and then averages it, which
gives every patch the same score, so its softmax is uniform and the first half of the visible tokens (and the
reconstructed ones) are drawn uniformly: `score="official"` (the default) reproduces that. `score="hog_energy"`
is mimkit's reading of the paper's intent: the HOG energy of each patch standardised over the image, so edges
and texture are picked more often. Absent: the official training also prunes the data set with InfoBatch
(prune ratio 0.5, delta 0.875), which needs per-sample losses fed back to the sampler; mimkit does not do it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from mimkit.core.decoders import CrossAttentionBlock, MaskedTokenDecoder
from mimkit.core.encoders import EncoderConfig, gather_tokens
from mimkit.core.errors import ConfigError
from mimkit.core.masking import Mask, RatioSchedule, SelectiveMasker
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.targets import PixelTarget, masked_mse, patch_hog_scores, valid_values


class CrossAttentionDecoder(MaskedTokenDecoder):
    """Decoder whose queries (mask token + position, one per reconstructed token) only cross-attend to the encoder."""

    def __init__(self, grid: Sequence[int], in_dim: int, out_dim: int, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 self_attention: bool = False):
        # keys and values come straight from the encoder's width, as in the official code (no embedding)
        blocks = [CrossAttentionBlock(decoder_embed_dim, decoder_num_heads, mlp_ratio, context_dim=in_dim,
                                      self_attention=self_attention) for _ in range(decoder_depth)]
        super().__init__(grid, None, out_dim, decoder_embed_dim, blocks, num_prefix_tokens=0, store_positions=False)

    def forward(self, latent: torch.Tensor, ids_target: torch.Tensor) -> torch.Tensor:
        """latent (B, prefix + K, D_enc), ids_target (B, R) -> predictions (B, R, out_dim)."""
        pos = self.pos_embed.expand(ids_target.shape[0], -1, -1)
        x = gather_tokens(pos, ids_target) + self.mask_token
        for block in self.blocks:
            x = block(x, latent)
        return self.predict(x)


@register_method("selective_mae")
class SelectiveMAE(MIMMethod):
    """MAE on HOG-selected visible tokens that reconstructs only a selected subset of the hidden tokens."""

    def __init__(self, encoder: EncoderConfig = EncoderConfig(),  # paper: ViT-B/16
                 decoder_embed_dim: int = 512, decoder_depth: int = 8,  # official train.sh: 8 (README: 12)
                 decoder_num_heads: int = 16,
                 mask_ratio: float | RatioSchedule = 0.85,  # paper: 85% hidden
                 target_ratio: float = 0.25,  # paper ("kept mask ratio"): 25% of all tokens reconstructed
                 norm_pix_loss: bool = True, total_steps: int | None = None,
                 expansion_schedule: Sequence[float] = (0.35, 0.375, 0.725, 0.75),  # epochs 280/300/580/600 of 800
                 expansion_rounds: int = 2, hog_orientations: int = 9, decoder_self_attention: bool = False,
                 score: str = "official"):  # "official" (constant HOG score: uniform) or "hog_energy"
        super().__init__()
        if score not in ("official", "hog_energy"):
            raise ConfigError(f"score must be 'official' or 'hog_energy', got {score!r}")
        self.score = score
        self.encoder = enc = self.build_encoder(encoder)
        self.masker = SelectiveMasker(mask_ratio, target_ratio, total_steps, expansion_schedule, expansion_rounds)
        self.target = PixelTarget(enc.patch_size, normalize=norm_pix_loss)
        self.hog_orientations = hog_orientations
        self.decoder = CrossAttentionDecoder(enc.grid, enc.embed_dim, math.prod(enc.patch_size) * enc.in_chans,
                                             decoder_embed_dim, decoder_depth, decoder_num_heads, enc.mlp_ratio,
                                             decoder_self_attention)

    def select(self, images: torch.Tensor, tokens: torch.Tensor, step: int | None = None):
        """The visible and reconstructed tokens of a batch (a `SelectiveMask`)."""
        # the official score is the same for every patch: no scores = uniform selection probabilities
        scores = (patch_hog_scores(images, self.encoder.patch_size, self.hog_orientations)
                  if self.score == "hog_energy" else None)
        return self.masker(images.shape[0], tokens.shape[1], step=step, scores=scores, features=tokens)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        tokens = self.encoder.embed(images)              # positions included, as the official selection sees them
        mask = self.select(images, tokens, step)
        latent = self.encoder.forward_tokens(gather_tokens(tokens, mask.ids_keep))
        pred = self.decoder(latent, mask.ids_target)     # (B, R, patch_dim)
        # predictions in place among N tokens (zeros elsewhere); the loss covers the reconstructed tokens only,
        # and only their targets are computed (a quarter of the patches: normalising all was a third of a step)
        index = mask.ids_target.unsqueeze(-1).expand_as(pred)
        full = pred.new_zeros(pred.shape[0], tokens.shape[1], pred.shape[-1]).scatter(1, index, pred)
        valid = valid_values(batch, images, self.encoder.patch_size)  # nodata pixels (batch["valid"]) do not count
        every = pred.new_ones(pred.shape[:2], dtype=torch.float32)
        loss = masked_mse(full.gather(1, index), self.target(images, mask.ids_target), every,
                          None if valid is None else valid.gather(1, index))
        # `mask` marks every hidden token; `pred` holds predictions for the reconstructed ones only
        return MIMOutput(loss=loss, parts={"reconstruction": loss.detach()}, pred=full, mask=mask.mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        """Images predicted at every token from the visible tokens of `out` (the decoder can query any position)."""
        out = out or self(batch)
        images = self.images(batch)
        ids_keep = Mask.from_bool(out.mask.bool()).ids_keep
        latent = self.encoder.forward_visible(images, ids_keep)
        every = torch.arange(out.mask.shape[1], device=images.device).expand(images.shape[0], -1)
        return self.target.to_pixels(self.decoder(latent, every), images)

