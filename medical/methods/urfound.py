"""UrFound: Yu et al., "UrFound: Towards Universal Retinal Foundation Models via Knowledge-Guided Masked
Modeling", MICCAI 2024 (arXiv:2408.05618; official code: yukkai/UrFound).

One modality-agnostic ViT encodes colour fundus photographs and OCT B-scans alike (no modality-specific
parameters). Knowledge-guided masked modeling trains it with two losses: MAE reconstruction of the masked
patches, and prediction of masked words of the image's expert annotation ("A fundus photograph of diabetic
retinopathy") by a small text transformer that sees the unmasked words plus the encoded image.

As in the official code, the encoder sees the image downsized to `img_size` while the decoder rebuilds it at
`target_scale` times that size (each token predicts a patch `target_scale` times wider). Captions are read
from batch["text"] (one string per image) and tokenized with the BPE tokenizer open_clip ships with its
package (a local file: nothing is downloaded).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.core.decoders import MAEDecoder
from mimkit.core.encoders import EncoderConfig, LayerNorm, init_weights
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.masking import RandomMasker, RatioSchedule
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.targets import PixelTarget, masked_mean, masked_mse


@functools.lru_cache(maxsize=4)
def caption_tokenizer(context_length: int):
    """open_clip's CLIP BPE tokenizer (vocabulary read from the installed package), cached per length."""
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer(context_length=context_length)


class ImageConditionedTextModel(nn.Module):
    """UrFound's text branch: a bidirectional transformer over caption tokens that predicts the masked ones.

    The image enters as one vector (the mean of the encoder's visible patch tokens, projected) added to every
    token embedding, as the official code adds it to BERT's embeddings. The output layer is tied to the
    token embedding (as in BERT's masked-language-model head).
    """

    def __init__(self, vocab_size: int, context_length: int, image_dim: int, width: int = 384, depth: int = 6,
                 num_heads: int = 6, mlp_ratio: float = 4.0):
        super().__init__()
        self.vocab_size, self.mask_id = vocab_size, vocab_size  # one extra embedding row for the mask token
        self.token_embed = nn.Embedding(vocab_size + 1, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, width))
        self.embed_norm = LayerNorm(width)
        self.image_proj = nn.Linear(image_dim, width)
        self.blocks = nn.ModuleList([Block(width, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
                                     for _ in range(depth)])
        self.norm = LayerNorm(width)
        self.head_transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), LayerNorm(width))
        self.head_bias = nn.Parameter(torch.zeros(vocab_size))
        self.apply(init_weights)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, image_vector: torch.Tensor) -> torch.Tensor:
        """tokens (B, L), valid (B, L) bool (not padding), image_vector (B, D_img) -> logits (B, L, vocab)."""
        x = self.embed_norm(self.token_embed(tokens) + self.pos_embed[:, :tokens.shape[1]])
        x = x + self.image_proj(image_vector).unsqueeze(1)
        attend = valid[:, None, None, :]  # every token may attend to the caption's real tokens only
        for block in self.blocks:
            x = block(x, attn_mask=attend)
        x = self.head_transform(self.norm(x))
        return x @ self.token_embed.weight[:self.vocab_size].t() + self.head_bias


@register_method("urfound")
class UrFound(MIMMethod):
    """Modality-agnostic MAE whose encoded image also conditions masked-word prediction of its expert caption."""

    def __init__(self,
                 # official code `urmodel`: ViT-B/16 encoder; fundus and OCT images read as RGB
                 encoder: EncoderConfig = EncoderConfig(),
                 # official code `urmodel`: decoder 768 wide, 4 blocks, 6 heads
                 decoder_embed_dim: int = 768, decoder_depth: int = 4, decoder_num_heads: int = 6,
                 mask_ratio: float | RatioSchedule = 0.75,  # README pretraining command: --mask_ratio 0.75
                 norm_pix_loss: bool = True,  # README pretraining command: --norm_pix_loss
                 target_scale: int = 2,  # official code: encoder input resized 448 -> 224, decoder predicts 448
                 # official code's BERT text branch: 6 layers, width 384, 6 heads, 1536-wide MLP, 100 tokens
                 text_width: int = 384, text_depth: int = 6, text_num_heads: int = 6, context_length: int = 100,
                 text_mask_ratio: float = 0.5,  # official dataset code: each word masked with probability 0.5
                 text_loss_weight: float = 1.0,  # official engine: loss = image loss + text loss
                 # official: BERT's masked-LM loss with every position labelled (labels = the unmasked ids, no
                 # -100), so the cross-entropy averages over the whole context, padding included; "masked": only
                 # the hidden words (mimkit's earlier choice)
                 text_loss_positions: str = "all"):
        super().__init__()
        if text_loss_positions not in ("all", "masked"):
            raise ConfigError(f"text_loss_positions must be 'all' or 'masked', got {text_loss_positions!r}")
        self.text_loss_positions = text_loss_positions
        if int(target_scale) < 1:
            raise ConfigError(f"target_scale must be a positive integer, got {target_scale}")
        if not 0.0 < text_mask_ratio < 1.0:
            raise ConfigError(f"text_mask_ratio must be in (0, 1), got {text_mask_ratio}")
        self.encoder = enc = self.build_encoder(encoder)
        self.target_scale = int(target_scale)
        self.input_size = tuple(s * self.target_scale for s in enc.img_size)
        target_patch = tuple(p * self.target_scale for p in enc.patch_size)
        self.output_patch_size = target_patch  # pixels of the input image each token predicts (for pictures)
        self.masker = RandomMasker(mask_ratio)
        self.target = PixelTarget(target_patch, normalize=norm_pix_loss)
        self.decoder = MAEDecoder(enc.grid, enc.embed_dim, math.prod(target_patch) * enc.in_chans, decoder_embed_dim,
                                  decoder_depth, decoder_num_heads, enc.mlp_ratio,
                                  num_prefix_tokens=enc.num_prefix_tokens)
        tokenizer = caption_tokenizer(int(context_length))
        self.context_length = int(context_length)
        self.sot_id, self.eot_id = tokenizer.sot_token_id, tokenizer.eot_token_id
        vocab = len(tokenizer.encoder)
        self.text_model = ImageConditionedTextModel(vocab, self.context_length, enc.embed_dim, text_width,
                                                    text_depth, text_num_heads, enc.mlp_ratio)
        # BPE marks the last piece of each word with "</w>": whole words are masked, not word pieces
        word_end = torch.tensor([tokenizer.decoder[i].endswith("</w>") for i in range(vocab)])
        self.register_buffer("word_end", word_end, persistent=False)
        self.text_mask_ratio, self.text_loss_weight = float(text_mask_ratio), float(text_loss_weight)

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> tokens (B, context_length) and a (B, L) bool map of the caption's words (not sot/eot/pad)."""
        tokens = caption_tokenizer(self.context_length)(list(texts)).to(device)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        eot = (tokens == self.eot_id).int().argmax(1, keepdim=True)
        return tokens, (positions > 0) & (positions < eot)

    def mask_words(self, tokens: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Pick whole words to hide, each with probability `text_mask_ratio`, at least one per caption: (B, L) bool."""
        ends = self.word_end[tokens] & words
        # word index of each token: the number of word ends strictly before it
        word_index = (torch.cumsum(ends.int(), 1) - ends.int()).clamp_max(tokens.shape[1] - 1)
        hide = torch.rand(tokens.shape, device=tokens.device) < self.text_mask_ratio   # one draw per word slot
        num_words = ends.sum(1, keepdim=True)
        # a caption with no word drawn hides one word chosen at random
        forced = (torch.rand(num_words.shape, device=tokens.device) * num_words).long()
        slots = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        none_drawn = ~((hide & (slots < num_words)).any(1, keepdim=True))
        hide = hide | (none_drawn & (slots == forced))
        return torch.gather(hide, 1, word_index) & words

    # ------------------------------------------------------------------ training step
    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[2:]) != self.input_size:
            scale = f" ({self.target_scale} x img_size; or build with target_scale=1)" if self.target_scale > 1 else ""
            raise DataError(f"urfound expects images (B, C, {self.input_size[0]}, {self.input_size[1]}){scale}, "
                            f"got shape {tuple(images.shape)}")

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        self._check(images)
        texts = batch.get("text")
        # captions are needed to train; without them (pictures, inference in eval mode) only the image path runs
        image_only = texts is None and not self.training
        if not image_only and (texts is None or isinstance(texts, str) or len(texts) != images.shape[0]):
            raise DataError(f"urfound needs batch['text']: one caption string per image ({images.shape[0]}), "
                            f"got {type(texts).__name__ if texts is None or isinstance(texts, str) else len(texts)}")
        small = images if self.target_scale == 1 else F.interpolate(
            images.float(), size=self.encoder.img_size, mode="bicubic", align_corners=False).to(images.dtype)
        mask = self.masker(images.shape[0], self.encoder.num_patches, step=step, device=images.device)
        latent = self.encoder.forward_visible(small, mask.ids_keep)
        pred = self.decoder(latent, mask.ids_restore)
        image_loss = masked_mse(pred, self.target(images), mask.mask)
        if image_only:
            return MIMOutput(loss=image_loss, parts={"reconstruction": image_loss.detach()}, pred=pred, mask=mask.mask)

        tokens, words = self.tokenize(texts, images.device)
        hidden_words = self.mask_words(tokens, words)
        eot = (tokens == self.eot_id).int().argmax(1, keepdim=True)
        valid = torch.arange(tokens.shape[1], device=tokens.device) <= eot  # caption plus its start and end tokens
        image_vector = latent[:, self.encoder.num_prefix_tokens:].mean(1)
        logits = self.text_model(tokens.masked_fill(hidden_words, self.text_model.mask_id), valid, image_vector)
        per_token = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none")
        text_loss = per_token.mean() if self.text_loss_positions == "all" else masked_mean(per_token, hidden_words.float())
        loss = image_loss + self.text_loss_weight * text_loss
        return MIMOutput(loss=loss, parts={"reconstruction": image_loss.detach(), "text": text_loss.detach()},
                         pred=pred, mask=mask.mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.target.to_pixels(out.pred, self.images(batch))
