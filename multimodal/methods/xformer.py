"""X-Former: Swetha et al., "X-Former: Unifying Contrastive and Reconstruction Learning for MLLMs", ECCV 2024
(arXiv:2407.13851). No code is public.

From the paper: a lightweight transformer with learnable queries fuses two frozen image encoders, a contrastive
one (CLIP-ViT) and a masked-image-modelling one (MAE-ViT), through dual cross-attention; its first stage trains
it with image-text contrastive (ITC), image-text matching (ITM) and image-grounded text generation (ITG)
objectives, as BLIP-2's Q-Former, plus reconstruction of the MAE's masked input; its output, a fixed number of
visual tokens (one per query), goes to a frozen LLM (the second stage, out of scope here).

Every choice below is ours, because the paper's text read here does not fix it:
- one X-Former layer = queries read the MAE tokens (self-attention over the queries, cross-attention, MLP),
  the MAE tokens read the queries (cross-attention, MLP: the second direction of the dual cross-attention),
  then the queries read the CLIP tokens (cross-attention, MLP); pre-norm blocks (`CrossAttentionBlock`);
- ITC, ITM and ITG read the queries of the whole image; reconstruction is a second pass in which the MAE
  encodes 25% of the patches (MAE's 75% mask), the layers run on those tokens, and an MAE-style decoder
  rebuilds the masked patches' per-patch normalised pixels from the MAE tokens as the queries left them;
- ITC: BLIP-2's form: projected, L2-normalised query outputs and caption features; a pair's similarity is
  the maximum over the queries; learnable temperature starting at 0.07 (kept in [0.001, 0.5]);
- ITM: BLIP-2's hard negatives: one negative caption per image and one negative image per caption, drawn
  with probabilities softmax(similarity), never the pair itself or a pair with the same caption text; the
  caption tokens read the queries through `fusion_depth` blocks; a 2-way classifier on the end token;
- ITG: a small causal text decoder of our own whose tokens read the queries (cross-attention), next-token
  cross-entropy over the caption (a local stand-in for the captioning loss; no LLM);
- total = ITC + ITM + ITG + reconstruction, each weight 1;
- sizes: 32 queries and a 768-wide, 12-layer stack (BLIP-2's Q-Former); the frozen encoders default to
  open_clip's EVA01-g-14 (BLIP-2's image encoder) and an MAE ViT-L/16; the text transformers are ours
  (open_clip's BPE). Both frozen encoders need local weight files (`clip_weights`, `mae_weights`: a
  mimkit, timm or official-MAE file); `allow_random_encoders` is for tests only.

`self.encoder` (an `XFormerEncoder`: the two frozen encoders plus the trainable queries and layers) is what
transfers: `encoder(images)` gives one vector, `encoder.forward_features(images)` the `num_queries` tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.core.decoders import CrossAttentionBlock, MAEDecoder
from mimkit.core.encoders import EncoderConfig, LayerNorm, ViTEncoder, init_weights
from mimkit.core.errors import ConfigError
from mimkit.core.masking import RandomMasker, RatioSchedule
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.targets import PixelTarget, masked_mse
from mimkit.core.teachers import Teacher, build_teacher

from ..text import TextTokenizer, TextTransformer, check_texts


class XFormerLayer(nn.Module):
    """Queries read the MAE tokens, the MAE tokens read the queries, the queries read the CLIP tokens."""

    def __init__(self, width: int, num_heads: int, clip_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.read_mae = CrossAttentionBlock(width, num_heads, mlp_ratio, self_attention=True)
        self.mae_reads_queries = CrossAttentionBlock(width, num_heads, mlp_ratio)
        self.read_clip = CrossAttentionBlock(width, num_heads, mlp_ratio, context_dim=clip_dim)

    def forward(self, queries: torch.Tensor, mae: torch.Tensor, clip: torch.Tensor):
        queries = self.read_mae(queries, mae)
        mae = self.mae_reads_queries(mae, queries)
        return self.read_clip(queries, clip), mae


class XFormerEncoder(nn.Module):
    """Frozen CLIP and MAE encoders plus learnable queries fused by X-Former layers: images -> `num_queries` tokens."""

    def __init__(self, mae: Teacher, clip: Teacher, num_queries: int = 32, width: int = 768, depth: int = 12,
                 num_heads: int = 12):
        super().__init__()
        if width % num_heads:
            raise ConfigError(f"query_width {width} must be divisible by query_num_heads {num_heads}")
        self.mae, self.clip = mae, clip  # Teachers: frozen, always in eval mode
        self.num_queries, self.embed_dim, self.num_features = num_queries, width, width
        self.num_prefix_tokens = 0
        self.queries = nn.Parameter(torch.zeros(1, num_queries, width))
        self.mae_proj = nn.Linear(mae.model.embed_dim, width)
        self.layers = nn.ModuleList([XFormerLayer(width, num_heads, clip.embed_dim) for _ in range(depth)])
        self.norm = LayerNorm(width)
        self.mae_norm = LayerNorm(width)
        for module in (self.mae_proj, self.norm, self.mae_norm):
            module.apply(init_weights)
        nn.init.normal_(self.queries, std=0.02)

    @property
    def mae_encoder(self) -> ViTEncoder:
        return self.mae.model

    @property
    def model_name(self) -> str:
        """A short name for result tables: query count and width, and the frozen MAE's shape."""
        mae = self.mae_encoder
        return (f"X-Former-{self.num_queries}x{self.embed_dim} "
                f"(MAE ViT-{mae.embed_dim}x{len(mae.blocks)}/{mae.patch_size[0]})")

    # the images it reads are the MAE's (size, channels, patches: also the grid of reconstruction pictures)
    img_size = property(lambda self: self.mae_encoder.img_size)
    in_chans = property(lambda self: self.mae_encoder.in_chans)
    patch_size = property(lambda self: self.mae_encoder.patch_size)

    def fuse(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None):
        """Query tokens (B, Q, D) and the MAE tokens as the layers left them (B, 1 + K, D); the MAE sees only the
        patches at `ids_keep` when given."""
        with torch.no_grad():
            mae = self.mae_encoder.forward_visible(images, ids_keep)
            clip = self.clip(images).tokens
        mae = self.mae_proj(mae)
        queries = self.queries.expand(images.shape[0], -1, -1)
        for layer in self.layers:
            queries, mae = layer(queries, mae, clip)
        return self.norm(queries), self.mae_norm(mae)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The visual tokens for a language model: (B, num_queries, D)."""
        return self.fuse(images)[0]

    def pool(self, features: torch.Tensor, mode: str = "avg") -> torch.Tensor:
        """One vector per image: the mean of the query tokens (there is no class token)."""
        return features.mean(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(images))


class CaptionDecoder(nn.Module):
    """A small causal text decoder whose tokens also read the visual tokens (cross-attention): next-token logits."""

    def __init__(self, vocab_size: int, context_length: int, width: int, depth: int, num_heads: int,
                 visual_dim: int):
        super().__init__()
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, width))
        self.blocks = nn.ModuleList([CrossAttentionBlock(width, num_heads, context_dim=visual_dim,
                                                         self_attention=True) for _ in range(depth)])
        self.norm = LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)
        for module in (self.norm, self.head):
            module.apply(init_weights)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.01)

    def forward(self, ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = self.token_embed(ids) + self.pos_embed[:, :length]
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        for block in self.blocks:
            x = block(x, visual, self_attn_mask=causal)
        return self.head(self.norm(x))


@register_method("xformer")
class XFormer(MIMMethod):
    """Learnable queries fusing frozen CLIP and MAE encoders, trained by ITC, ITM, ITG and masked reconstruction."""

    def __init__(self,
                 # the frozen MAE: ViT-L/16 (ours)
                 encoder: EncoderConfig = EncoderConfig(img_size=224, patch_size=16, embed_dim=1024, depth=24,
                                                        num_heads=16),
                 mae_weights: str | None = None,
                 clip_model: str = "open_clip:EVA01-g-14", clip_weights: str | None = None,
                 clip_kwargs: dict | None = None,
                 allow_random_encoders: bool = False,  # tests only: frozen random encoders teach nothing
                 num_queries: int = 32, query_width: int = 768, query_depth: int = 12, query_num_heads: int = 12,
                 text_width: int = 768, text_depth: int = 12, text_num_heads: int = 12, context_length: int = 32,
                 fusion_depth: int = 2, caption_depth: int = 4, projection_dim: int = 256,
                 mask_ratio: float | RatioSchedule = 0.75,  # MAE's
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,  # MAE's decoder
                 norm_pix_loss: bool = True):
        super().__init__()
        if (mae_weights is None or clip_weights is None) and not allow_random_encoders:
            named = (("mae_weights", mae_weights), ("clip_weights", clip_weights))
            missing = ", ".join(name for name, weights in named if weights is None)
            raise ConfigError(f"xformer fuses two frozen pretrained encoders: give local files for {missing} "
                              "(random frozen encoders teach nothing)")
        mae = self.build_encoder(encoder)
        mae_teacher = build_teacher(mae, mae_weights)
        clip = build_teacher(clip_model, clip_weights, img_size=mae.img_size, in_chans=mae.in_chans,
                             allow_random=allow_random_encoders, model_kwargs=clip_kwargs)
        self.encoder = XFormerEncoder(mae_teacher, clip, num_queries, query_width, query_depth, query_num_heads)
        self.tokenizer = TextTokenizer(context_length)
        vocab = self.tokenizer.vocab_size
        self.text_encoder = TextTransformer(vocab, int(context_length), text_width, text_depth, text_num_heads)
        self.vision_proj = nn.Linear(query_width, projection_dim)
        self.text_proj = nn.Linear(text_width, projection_dim)
        self.temperature = nn.Parameter(torch.tensor(0.07))  # BLIP-2's initial temperature
        self.itm_fusion = nn.ModuleList([CrossAttentionBlock(text_width, text_num_heads, context_dim=query_width,
                                                             self_attention=True) for _ in range(fusion_depth)])
        self.itm_head = nn.Linear(text_width, 2)
        self.caption_decoder = CaptionDecoder(vocab, int(context_length), text_width, caption_depth, text_num_heads,
                                              query_width)
        for module in (self.vision_proj, self.text_proj, self.itm_head):
            module.apply(init_weights)
        mae_grid = self.encoder.mae_encoder
        self.masker = RandomMasker(mask_ratio)
        self.target = PixelTarget(mae_grid.patch_size, normalize=norm_pix_loss)
        self.decoder = MAEDecoder(mae_grid.grid, query_width, math.prod(mae_grid.patch_size) * mae_grid.in_chans,
                                  decoder_embed_dim, decoder_depth, decoder_num_heads,
                                  num_prefix_tokens=mae_grid.num_prefix_tokens)

    # ------------------------------------------------------------------ objectives
    def similarity(self, queries: torch.Tensor, text: torch.Tensor, tokens) -> torch.Tensor:
        """(images, captions) contrastive similarities: the best-matching query's cosine similarity (BLIP-2)."""
        image_features = F.normalize(self.vision_proj(queries), dim=-1)                           # (B, Q, P)
        eot = text[torch.arange(text.shape[0], device=text.device), tokens.eot_position]
        text_features = F.normalize(self.text_proj(eot), dim=-1)                                  # (T, P)
        return torch.einsum("iqp,tp->itq", image_features, text_features).amax(-1)                # (B, T)

    @torch.no_grad()
    def retrieval_scores(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """(images, captions) scores for image-text retrieval: the contrastive similarities."""
        tokens = self.tokenizer(texts, images.device)
        return self.similarity(self.encoder.forward_features(images), self.text_encoder(tokens.ids, tokens.valid),
                               tokens)

    def contrastive(self, queries: torch.Tensor, text: torch.Tensor, tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """ITC loss and the image-to-text similarity matrix (max over queries)."""
        similarity = self.similarity(queries, text, tokens)
        logits = similarity / self.temperature.clamp(0.001, 0.5)
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.t().float(), labels)) / 2
        return loss, similarity.detach()

    def matching_logits(self, text: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor,
                        eot: torch.Tensor) -> torch.Tensor:
        x = text
        padding = valid[:, None, None, :] | torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
        for block in self.itm_fusion:
            x = block(x, queries, self_attn_mask=padding)
        return self.itm_head(x[torch.arange(x.shape[0], device=x.device), eot])

    def matching(self, queries: torch.Tensor, text: torch.Tensor, tokens, texts: list[str],
                 similarity: torch.Tensor) -> torch.Tensor:
        """ITM on the true pairs, one hard negative caption per image and one hard negative image per caption."""
        batch = queries.shape[0]
        same = torch.tensor([[a == b for b in texts] for a in texts], device=queries.device)
        eye = torch.eye(batch, dtype=torch.bool, device=queries.device)

        def draw(scores: torch.Tensor) -> torch.Tensor:
            weights = scores.float().softmax(1).masked_fill(same | eye, 0.0)
            # a row whose every other pair has the same caption falls back to any other pair
            fallback = (~eye).float()
            weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, fallback)
            return torch.multinomial(weights, 1).squeeze(1)

        negative_text = draw(similarity)        # for each image
        negative_image = draw(similarity.t())   # for each caption
        all_text = torch.cat([text, text[negative_text], text])
        all_valid = torch.cat([tokens.valid, tokens.valid[negative_text], tokens.valid])
        all_eot = torch.cat([tokens.eot_position, tokens.eot_position[negative_text], tokens.eot_position])
        all_queries = torch.cat([queries, queries, queries[negative_image]])
        labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(queries.device)
        logits = self.matching_logits(all_text, all_valid, all_queries, all_eot)
        return F.cross_entropy(logits.float(), labels)

    def captioning(self, queries: torch.Tensor, tokens) -> torch.Tensor:
        """Next-token cross-entropy over each caption (up to its end token), reading the visual tokens."""
        logits = self.caption_decoder(tokens.ids[:, :-1], queries)
        targets = tokens.ids[:, 1:]
        scored = tokens.valid[:, 1:]
        return F.cross_entropy(logits[scored].float(), targets[scored])

    def reconstruction(self, images: torch.Tensor, step: int | None):
        """The MAE encodes the visible 25%; the decoder rebuilds the masked patches from the fused MAE tokens."""
        mae = self.encoder.mae_encoder
        mask = self.masker(images.shape[0], mae.num_patches, step=step, device=images.device)
        _, fused = self.encoder.fuse(images, mask.ids_keep)
        pred = self.decoder(fused, mask.ids_restore)
        return masked_mse(pred, self.target(images), mask.mask), pred, mask.mask

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        if batch.get("text") is None and not self.training:  # pictures and inference without captions
            recon, pred, mask = self.reconstruction(images, step)
            return MIMOutput(loss=recon, parts={"reconstruction": recon.detach()}, pred=pred, mask=mask)
        texts = check_texts(batch, images.shape[0], "xformer")
        tokens = self.tokenizer(texts, images.device)
        queries, _ = self.encoder.fuse(images)
        text = self.text_encoder(tokens.ids, tokens.valid)
        itc, similarity = self.contrastive(queries, text, tokens)
        itg = self.captioning(queries, tokens)
        recon, pred, mask = self.reconstruction(images, step)
        loss = itc + itg + recon
        parts = {"itc": itc.detach(), "itg": itg.detach(), "reconstruction": recon.detach()}
        if images.shape[0] > 1:  # a single pair has no negative
            itm = self.matching(queries, text, tokens, texts, similarity)
            loss = loss + itm
            parts["itm"] = itm.detach()
        return MIMOutput(loss=loss, parts=parts, pred=pred, mask=mask)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.target.to_pixels(out.pred, self.images(batch))
