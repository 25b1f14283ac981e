"""Pigeon's masked preference reconstruction, small: Xu et al., "Personalized Image Generation with Large
Multimodal Models", WWW 2025 (official code: YiyanXu/Pigeon, `models/mutual_mask_generator.py` and
`models/lavit_for_pigeon.py`).

A user's history images and a target image become discrete visual tokens. A mask generator reads the tokens
and keeps the history tokens most relevant to the target and masks target tokens; a model then rebuilds the
target's tokens from the filtered history and the masked target. As in the official code:

- the mask generator adds sin-cos positions (each image's tokens numbered from 1) and type embeddings
  (history / target) to the token embeddings, then LayerNorm, dropout 0.2, a post-norm transformer encoder
  (1 layer, 4 heads: run_sft.sh), LayerNorm, a dense layer, tanh and dropout; a token's relevance is the
  cosine similarity of its embedding and that output;
- history: keep probabilities are the softmax of the relevances over all of a sample's history tokens, and
  the top `max(1, int(n x (1 - history_mask_ratio)))` of a Gumbel-softmax draw are kept (hist_mask_ratio 0.2,
  run_sft.sh); target: the same with the probabilities 1 - softmax (training masks the *most* relevant target
  tokens) and a mask ratio drawn uniformly from [0, 1) each step (`forward`: random.uniform(0, 1));
- the decisions are hard 0 / 1 with the straight-through estimator (hard - soft.detach() + soft); dropped
  tokens enter the model as zero embeddings; the loss is cross-entropy on every target token.

What is ours, because the paper runs on a 7B multimodal LLM (LaVIT) this package does not have:
- the LLM (LoRA-tuned LaVIT-7B) is replaced by a small bidirectional transformer that predicts all target
  tokens at once from [history tokens, target tokens] (learned slot embeddings say which image a token is
  from); LaVIT's frozen visual tokenizer is replaced by `mimkit.multimodal.vq.VQTokenizer`, trained jointly
  on the data (its pixel + VQ loss is added to the total; `tokenizer_loss_weight`), so `self.encoder` (the
  tokenizer's ViT) is the transferable backbone;
- the decisions multiply the token embeddings (zero where dropped) instead of replacing them by index, so the
  reconstruction loss reaches the mask generator through the straight-through path;
- the mask generator reads the (detached) code embeddings of the reconstruction model, as the official one
  reads the frozen LLM's input embeddings; its feed-forward width is 4 x width (PyTorch's default 2048 in the
  official code, next to a 4096-wide model);
- `target_mask_ratio` may be fixed (a named option); the default draws it as the official code does.

Batches: `image` (B, C, H, W) the target image and `history` (B, K, C, H, W) the user's K history images.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.core.encoders import EncoderConfig, LayerNorm, init_weights
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.tokens import sincos_pos_embed

from ..vq import VQTokenizer

HISTORY, TARGET = 1, 2  # the official type ids (0 = padding, which fixed-size histories do not need)


def gumbel_top_k(keep_prob: torch.Tensor, allowed: torch.Tensor, mask_ratio: float, tau: float = 1.0) -> torch.Tensor:
    """Keep decisions (B, L) in {0, 1}: among each row's `allowed` tokens the top max(1, int(n (1 - mask_ratio)))
    of a Gumbel-softmax draw over log(keep_prob); straight-through (the gradient is the soft draw's)."""
    logits = keep_prob.clamp_min(1e-20).log()
    gumbels = -torch.empty_like(logits).exponential_().log()
    scores = ((logits + gumbels) / tau).masked_fill(~allowed, float("-inf"))
    soft = scores.softmax(-1)
    counts = allowed.sum(1)
    keep = torch.clamp((counts.double() * (1 - mask_ratio)).long(), min=1).clamp_max(counts)
    ranks = scores.argsort(1, descending=True).argsort(1)
    hard = (ranks < keep[:, None]) & allowed
    return hard.to(soft.dtype) - soft.detach() + soft


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """exp(scores) normalised over each row's allowed positions (zero elsewhere), as the official `Masked_softmax`."""
    weights = scores.exp() * allowed
    return weights / weights.sum(-1, keepdim=True)


class MutualMaskGenerator(nn.Module):
    """Scores each history and target token's relevance and draws which to keep (see the module docstring)."""

    def __init__(self, width: int, num_heads: int = 4, num_layers: int = 1, dropout: float = 0.2,
                 max_positions: int = 1024):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, num_heads, dim_feedforward=4 * width, dropout=0.1,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.register_buffer("positions", sincos_pos_embed(width, (max_positions,)), persistent=False)
        self.type_embed = nn.Embedding(3, width)
        self.norm = nn.LayerNorm(width, eps=1e-5)
        self.dense = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def relevance(self, embeds: torch.Tensor, position_ids: torch.Tensor, type_ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, L) of each token's embedding and the generator's output for it."""
        x = self.drop(self.norm(embeds + self.positions[position_ids] + self.type_embed(type_ids)))
        x = self.drop(torch.tanh(self.dense(self.norm(self.encoder(x)))))
        return F.cosine_similarity(embeds, x, dim=-1)

    def forward(self, embeds: torch.Tensor, position_ids: torch.Tensor, type_ids: torch.Tensor,
                target_mask_ratio: float, history_mask_ratio: float, tau: float = 1.0,
                inference: bool = False) -> torch.Tensor:
        """Keep decisions (B, L): history tokens by relevance, target tokens against it when training."""
        relevance = self.relevance(embeds, position_ids, type_ids)
        history, target = type_ids == HISTORY, type_ids == TARGET
        keep = gumbel_top_k(masked_softmax(relevance, history), history, history_mask_ratio, tau) * history
        target_prob = masked_softmax(relevance, target)
        if not inference:  # training hides the target tokens most relevant to the history (the harder task)
            target_prob = (1 - target_prob) * target
        return keep + gumbel_top_k(target_prob, target, target_mask_ratio, tau) * target


@register_method("pigeon")
class Pigeon(MIMMethod):
    """Rebuild a target image's visual tokens from a user's history tokens kept by a learned, relevance-based mask."""

    def __init__(self,
                 encoder: EncoderConfig = EncoderConfig(img_size=224, patch_size=16),  # ours: the VQ tokenizer's ViT
                 num_codes: int = 1024, code_dim: int = 32,  # ours (LaVIT's own tokenizer is not used)
                 tokenizer_decoder_dim: int = 256, tokenizer_decoder_depth: int = 2, tokenizer_decoder_heads: int = 4,
                 # ours: the reconstructor that stands in for the 7B LLM
                 reconstructor_width: int = 256, reconstructor_depth: int = 4, reconstructor_num_heads: int = 4,
                 generator_heads: int = 4, generator_layers: int = 1,  # run_sft.sh: --num_heads 4 --num_layers 1
                 generator_dropout: float = 0.2,  # run_sft.sh: --drop_prob 0.2
                 history_mask_ratio: float = 0.2,  # run_sft.sh: --hist_mask_ratio 0.2
                 target_mask_ratio: float | None = None,  # None: uniform in [0, 1) per step (lavit_for_pigeon.forward)
                 tau: float = 1.0,  # mutual_mask_generator.Gumbel_softmax_topk: tau=1.0
                 max_history: int = 8,  # ours: how many history slots the slot embedding has
                 tokenizer_loss_weight: float = 1.0):  # ours: the tokenizer trains with the method
        super().__init__()
        if not 0.0 <= history_mask_ratio < 1.0:
            raise ConfigError(f"history_mask_ratio must be in [0, 1), got {history_mask_ratio}")
        if target_mask_ratio is not None and not 0.0 <= target_mask_ratio < 1.0:
            raise ConfigError(f"target_mask_ratio must be in [0, 1) or None (drawn each step), got {target_mask_ratio}")
        self.encoder = enc = self.build_encoder(encoder)
        self.tokenizer = VQTokenizer(enc, num_codes, code_dim, tokenizer_decoder_dim, tokenizer_decoder_depth,
                                     tokenizer_decoder_heads)
        width = reconstructor_width
        self.code_embed = nn.Embedding(num_codes, width)
        self.mask_generator = MutualMaskGenerator(width, generator_heads, generator_layers, generator_dropout,
                                                  max_positions=enc.num_patches + 1)
        self.register_buffer("positions", sincos_pos_embed(width, enc.grid).unsqueeze(0), persistent=False)
        self.slot_embed = nn.Embedding(max_history + 1, width)  # history images 0..K-1, the target last
        self.blocks = nn.ModuleList([Block(width, reconstructor_num_heads, 4.0, qkv_bias=True, norm_layer=LayerNorm)
                                     for _ in range(reconstructor_depth)])
        self.norm = LayerNorm(width)
        self.head = nn.Linear(width, num_codes)
        for module in (self.blocks, self.norm, self.head):
            module.apply(init_weights)
        nn.init.normal_(self.code_embed.weight, std=0.02)
        nn.init.normal_(self.slot_embed.weight, std=0.02)
        self.max_history = int(max_history)
        self.history_mask_ratio, self.target_mask_ratio = float(history_mask_ratio), target_mask_ratio
        self.tau, self.tokenizer_loss_weight = float(tau), float(tokenizer_loss_weight)

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images(batch)
        history = batch.get("history")
        if not isinstance(history, torch.Tensor) or history.ndim != images.ndim + 1 \
                or history.shape[0] != images.shape[0] or history.shape[2:] != images.shape[1:]:
            found = "nothing" if history is None else f"shape {tuple(getattr(history, 'shape', ()))}"
            raise DataError(f"pigeon needs batch['history']: (B, K, C, H, W) history images for the "
                            f"{tuple(images.shape)} targets, found {found}")
        if not 1 <= history.shape[1] <= self.max_history:
            raise DataError(f"pigeon takes 1 to max_history={self.max_history} history images per target, "
                            f"got {history.shape[1]}")
        return images, history

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images, history = self._inputs(batch)
        batch_size, num_history = history.shape[:2]
        tokens, tokenizer_loss = self.tokenizer(torch.cat([history.flatten(0, 1), images]))
        codes = tokens.codes.detach()
        num = codes.shape[1]
        history_codes = codes[:-batch_size].reshape(batch_size, num_history * num)
        target_codes = codes[-batch_size:]
        sequence = torch.cat([history_codes, target_codes], 1)  # (B, (K + 1) N)
        type_ids = torch.full_like(sequence, HISTORY)
        type_ids[:, -num:] = TARGET
        position_ids = (torch.arange(num, device=codes.device) + 1).repeat(num_history + 1).expand_as(sequence)
        ratio = float(torch.rand(())) if self.target_mask_ratio is None else self.target_mask_ratio
        embeds = self.code_embed(sequence)
        keep = self.mask_generator(embeds.detach(), position_ids, type_ids, ratio, self.history_mask_ratio, self.tau)

        slots = torch.cat([torch.arange(num_history, device=codes.device).repeat_interleave(num),
                           torch.full((num,), self.max_history, device=codes.device)])
        x = embeds * keep.unsqueeze(-1) + self.positions.repeat(1, num_history + 1, 1) + self.slot_embed(slots)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x[:, -num:]))
        reconstruction = F.cross_entropy(logits.flatten(0, 1).float(), target_codes.flatten())
        loss = reconstruction + self.tokenizer_loss_weight * tokenizer_loss
        with torch.no_grad():  # the target as its predicted tokens decode, for pictures
            pred = self.tokenizer.decode_codes(logits.argmax(-1))
        masked = 1.0 - keep[:, -num:].detach()
        parts = {"reconstruction": reconstruction.detach(), "tokenizer": tokenizer_loss.detach(),
                 "kept_history": keep[:, :-num].detach().mean()}
        return MIMOutput(loss=loss, parts=parts, pred=pred, mask=masked)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.tokenizer.target.to_pixels(out.pred, self.images(batch))
