"""M3AE: Chen et al., "Multi-Modal Masked Autoencoders for Medical Vision-and-Language Pre-Training",
MICCAI 2022 (official code: zhjohnchan/M3AE).

An image ViT and a text transformer are projected to one width, tagged with modality-type embeddings and
fused by co-attention layers: each stream has its own layers of self-attention, cross-attention to the other
stream and a feed-forward block (BERT's cross layer, post-norm). Pretraining runs one forward per objective,
as the official `objectives.py` does:

- masked language modelling: 15% of the caption's word pieces chosen as whole words (BERT's 80/10/10
  corruption), the image intact; the head predicts the chosen pieces only;
- masked image modelling: 75% of the patches dropped before the image encoder; an MAE-style decoder (width
  384) reads the image stream after `mim_layer` fusion layers and regresses per-patch normalised pixels of the
  masked patches;
- image-text matching: half of the pairs keep their image, the other half get another image of the batch
  (the official code draws another image of the data set), classified from the two pooled streams.

Total = MLM + MIM + ITM (the official loss weights are all 1). Departures from the official code, named:
the image encoder is mimkit's ViT (timm blocks; CLIP's pre-norm `ln_pre` and QuickGELU are not reproduced,
and it starts from random init or `--pretrained FILE`, not OpenAI's CLIP); the text encoder is a transformer
of our own over open_clip's BPE tokens (the official one is a pretrained RoBERTa-base), see
`mimkit.multimodal.text`; the whole-word budget counts the caption's pieces (the official collator counts
the padded length).

Measured behaviour from random init (tiny models on scikit-learn's digits with captions naming the digit): ITM
leaves chance late. The head reads what the official `multi_modal_cls_feats` reads (each stream's first token
through its pooler) and the negatives follow the official rule (another image; with label captions about one in ten
is in fact a match). On one fixed batch of 16 pairs (lr 1e-3) the ITM objective alone leaves ln 2 within 20 steps;
with MLM and MIM beside it, it stays at chance for about 100 steps (scaling MLM by 0.1 or ITM by 30 did not change
that), and it leaves chance early when the images are separable to a random encoder (tests/multimodal/test_m3ae.py).
On the 1,348 training digits (width 64, batch 32, 600 steps, lr 1e-3) MLM fell from 10.9 to about 0.3, so the text
stream reads the digit from the image, while ITM stayed at 0.693 and zero-shot retrieval was at chance (recall@1 5.8
against 5.5 for random scores). The official model starts from CLIP and RoBERTa weights, whose first tokens already
summarise image and caption; from random init matching needs a longer budget than the demo's. The learning rate
matters more than the step count: on eight named patterns (tests/multimodal/test_retrieval.py, width 32, batch 32)
ITM left chance between steps 220 and 400 at lr 1e-3 over 8 seeds, while at 3e-3 two of 4 seeds stayed at chance
for 600 steps.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.core.decoders import MAEDecoder
from mimkit.core.encoders import EncoderConfig, init_weights
from mimkit.core.errors import ConfigError
from mimkit.core.masking import RandomMasker, RatioSchedule
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.targets import PixelTarget, masked_mse

from ..text import TextTokenizer, TextTransformer, check_texts, corrupt_chosen, whole_word_mask


class CoAttentionLayer(nn.Module):
    """One stream's fusion layer (BERT's cross layer): self-attention, cross-attention to the other stream, FFN;
    each a residual branch followed by LayerNorm (post-norm, eps 1e-12 as BertConfig)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(width, int(width * mlp_ratio)), nn.GELU(),
                                 nn.Linear(int(width * mlp_ratio), width))
        self.norms = nn.ModuleList([nn.LayerNorm(width, eps=1e-12) for _ in range(3)])
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, other: torch.Tensor, x_padding: torch.Tensor | None,
                other_padding: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, D) reads other (B, M, D); paddings (B, N) / (B, M) bool, True = not a token."""
        attended = self.self_attn(x, x, x, key_padding_mask=x_padding, need_weights=False)[0]
        x = self.norms[0](x + self.drop(attended))
        attended = self.cross_attn(x, other, other, key_padding_mask=other_padding, need_weights=False)[0]
        x = self.norms[1](x + self.drop(attended))
        return self.norms[2](x + self.drop(self.ffn(x)))


class Pooler(nn.Module):
    """BERT's pooler: the first token through a dense layer and tanh."""

    def __init__(self, width: int):
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class MLMHead(nn.Module):
    """BERT's masked-language-model head: dense, GELU, LayerNorm, then a linear map to the vocabulary plus a bias."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=1e-12))
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x)) + self.bias


@register_method("m3ae")
class M3AE(MIMMethod):
    """Image and caption fused by co-attention, trained by masked language, masked image modelling and matching."""

    def __init__(self,
                 # run_scripts/pretrain_m3ae.sh: `clip16` (ViT-B/16) at image_size=288
                 encoder: EncoderConfig = EncoderConfig(img_size=288, patch_size=16),
                 # text_roberta (RoBERTa-base: 768 wide, 12 layers, 12 heads); task_pretrain_m3ae: max_text_len=64
                 text_width: int = 768, text_depth: int = 12, text_num_heads: int = 12, context_length: int = 64,
                 # config.py: hidden_size=768, num_top_layer=6 co-attention layers per stream, 12 heads,
                 # mlp_ratio=4, drop_rate=0.1
                 hidden_size: int = 768, fusion_layers: int = 6, fusion_num_heads: int = 12, dropout: float = 0.1,
                 mlm_ratio: float = 0.15,  # config.py: mlm_prob=0.15, whole_word_masking=True
                 mask_ratio: float | RatioSchedule = 0.75,  # config.py: mim_prob=0.75
                 mim_layer: int = 3,  # task_pretrain_m3ae: mim_layer=3 (-1: after the last fusion layer)
                 # config.py: mim_decoder_hidden_size=384, mim_decoder_num_heads=6; mim_decoder_num_layers=4, but
                 # MIMHead builds Transformer(..., num_layers + 1, ...): 5 blocks are trained
                 decoder_embed_dim: int = 384, decoder_depth: int = 5, decoder_num_heads: int = 6,
                 norm_pix_loss: bool = True):  # config.py: norm_pix_loss=True
        super().__init__()
        if not -1 <= int(mim_layer) <= int(fusion_layers):
            raise ConfigError(f"mim_layer must be -1 (the last) or a fusion layer count in 0..{fusion_layers}, "
                              f"got {mim_layer}")
        self.encoder = enc = self.build_encoder(encoder)
        self.tokenizer = TextTokenizer(context_length)
        self.text_encoder = TextTransformer(self.tokenizer.vocab_size, int(context_length), text_width, text_depth,
                                            text_num_heads)
        self.text_proj = nn.Linear(text_width, hidden_size)
        self.image_proj = nn.Linear(enc.embed_dim, hidden_size)
        self.modality_embed = nn.Embedding(2, hidden_size)  # 0 = text, 1 = image
        self.text_layers = nn.ModuleList([CoAttentionLayer(hidden_size, fusion_num_heads, 4.0, dropout)
                                          for _ in range(fusion_layers)])
        self.image_layers = nn.ModuleList([CoAttentionLayer(hidden_size, fusion_num_heads, 4.0, dropout)
                                           for _ in range(fusion_layers)])
        self.text_pooler, self.image_pooler = Pooler(hidden_size), Pooler(hidden_size)
        self.mlm_head = MLMHead(hidden_size, self.tokenizer.vocab_size)
        self.itm_head = nn.Linear(2 * hidden_size, 2)
        for module in (self.text_proj, self.image_proj, self.modality_embed, self.text_layers, self.image_layers,
                       self.text_pooler, self.image_pooler, self.mlm_head, self.itm_head):
            module.apply(_bert_init)
        self.mim_layer = int(fusion_layers) if int(mim_layer) == -1 else int(mim_layer)
        self.mlm_ratio = float(mlm_ratio)
        self.masker = RandomMasker(mask_ratio)
        self.target = PixelTarget(enc.patch_size, normalize=norm_pix_loss)
        self.decoder = MAEDecoder(enc.grid, hidden_size, math.prod(enc.patch_size) * enc.in_chans,
                                  decoder_embed_dim, decoder_depth, decoder_num_heads, enc.mlp_ratio,
                                  num_prefix_tokens=enc.num_prefix_tokens)

    # ------------------------------------------------------------------ the two streams
    def text_stream(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Caption tokens encoded, projected to the fusion width and tagged as text."""
        x = self.text_proj(self.text_encoder(ids, valid))
        return x + self.modality_embed.weight[0]

    def image_stream(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded image tokens projected to the fusion width and tagged as image."""
        return self.image_proj(tokens) + self.modality_embed.weight[1]

    def fuse(self, text: torch.Tensor, image: torch.Tensor, valid: torch.Tensor, num_layers: int | None = None):
        """Run `num_layers` (default all) co-attention layers; both streams update from the previous layer's pair."""
        padding = ~valid
        for text_layer, image_layer in list(zip(self.text_layers, self.image_layers))[:num_layers]:
            text, image = text_layer(text, image, padding, None), image_layer(image, text, None, padding)
        return text, image

    # ------------------------------------------------------------------ objectives
    def masked_language_modelling(self, images: torch.Tensor, tokens) -> torch.Tensor:
        """Whole-word MLM with the image intact; the head reads only the chosen pieces."""
        chosen = whole_word_mask(tokens, self.mlm_ratio)
        corrupted = corrupt_chosen(tokens.ids, chosen, self.tokenizer.mask_id, self.tokenizer.vocab_size)
        text, _ = self.fuse(self.text_stream(corrupted, tokens.valid),
                            self.image_stream(self.encoder.forward_features(images)), tokens.valid)
        logits = self.mlm_head(text[chosen])
        return F.cross_entropy(logits.float(), tokens.ids[chosen])

    def masked_image_modelling(self, images: torch.Tensor, tokens, step: int | None):
        """MAE on the image stream: masked patches never enter the encoder; the decoder reads fusion layer
        `mim_layer`'s image tokens (the layers after it do not change the loss, so they are not run)."""
        mask = self.masker(images.shape[0], self.encoder.num_patches, step=step, device=images.device)
        latent = self.encoder.forward_visible(images, mask.ids_keep)
        _, image = self.fuse(self.text_stream(tokens.ids, tokens.valid), self.image_stream(latent), tokens.valid,
                             self.mim_layer)
        pred = self.decoder(image, mask.ids_restore)
        return masked_mse(pred, self.target(images), mask.mask), pred, mask.mask

    def image_text_matching(self, images: torch.Tensor, tokens) -> torch.Tensor:
        """Half the pairs (rounded down) keep their image, the rest get another image of the batch."""
        batch = images.shape[0]
        matched = torch.zeros(batch, dtype=torch.long, device=images.device)
        matched[:batch // 2] = 1
        matched = matched[torch.randperm(batch, device=images.device)]
        shift = int(torch.randint(1, batch, ()))  # another pair's image for every negative
        shown = torch.where(matched.bool()[:, None, None, None], images, images.roll(shift, 0))
        text, image = self.fuse(self.text_stream(tokens.ids, tokens.valid),
                                self.image_stream(self.encoder.forward_features(shown)), tokens.valid)
        logits = self.itm_head(torch.cat([self.text_pooler(text), self.image_pooler(image)], -1))
        return F.cross_entropy(logits.float(), matched)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        if batch.get("text") is None and not self.training:
            # pictures and inference without captions: MIM alone, the image stream fused with empty captions
            mim, pred, mask = self.masked_image_modelling(images, self.tokenizer([""] * len(images), images.device),
                                                          step)
            return MIMOutput(loss=mim, parts={"mim": mim.detach()}, pred=pred, mask=mask)
        tokens = self.tokenizer(check_texts(batch, images.shape[0], "m3ae"), images.device)
        mlm = self.masked_language_modelling(images, tokens)
        mim, pred, mask = self.masked_image_modelling(images, tokens, step)
        parts = {"mlm": mlm.detach(), "mim": mim.detach()}
        loss = mlm + mim
        if images.shape[0] > 1:  # one pair has no other image to mismatch with
            itm = self.image_text_matching(images, tokens)
            loss = loss + itm
            parts["itm"] = itm.detach()
        return MIMOutput(loss=loss, parts=parts, pred=pred, mask=mask)

    def multimodal_features(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """(B, 2 x hidden_size): the two pooled streams after every fusion layer, text first (the official
        `multi_modal_cls_feats`, which the VQA, classification and matching heads read)."""
        tokens = self.tokenizer(texts, images.device)
        text, image = self.fuse(self.text_stream(tokens.ids, tokens.valid),
                                self.image_stream(self.encoder.forward_features(images)), tokens.valid)
        return torch.cat([self.text_pooler(text), self.image_pooler(image)], -1)

    def embed(self, batch: dict, kind: str = "multimodal") -> torch.Tensor:
        """One vector per sample: `image` (the image encoder's CLS token, before fusion), `text` (the text
        encoder's first token, before fusion) or `multimodal` (`multimodal_features`)."""
        if kind == "image":
            return self.encoder.forward_features(self.images(batch))[:, 0]
        texts = check_texts(batch, len(batch["image"]) if "image" in batch else len(batch.get("text") or ()), "m3ae")
        if kind == "text":
            tokens = self.tokenizer(texts, self.modality_embed.weight.device)
            return self.text_encoder(tokens.ids, tokens.valid)[:, 0]
        if kind != "multimodal":
            raise ConfigError(f"m3ae embeds image, text or multimodal vectors, not {kind!r}")
        return self.multimodal_features(self.images(batch), texts)

    @torch.no_grad()
    def retrieval_scores(self, images: torch.Tensor, texts: list[str], chunk: int = 256) -> torch.Tensor:
        """(images, captions) matching scores: the ITM head's log-odds of "matched" for every pair, as the official
        image-text retrieval scores pairs with the ITM head (no ranking shortcut: len(images) x len(texts) fusions)."""
        tokens = self.tokenizer(texts, images.device)
        image = self.image_stream(self.encoder.forward_features(images))
        text = self.text_stream(tokens.ids, tokens.valid)
        pairs = torch.cartesian_prod(torch.arange(len(images)), torch.arange(len(texts))).to(images.device)
        scores = []
        for start in range(0, len(pairs), chunk):
            i, t = pairs[start:start + chunk].unbind(1)
            fused_text, fused_image = self.fuse(text[t], image[i], tokens.valid[t])
            logits = self.itm_head(torch.cat([self.text_pooler(fused_text), self.image_pooler(fused_image)], -1))
            scores.append(logits[:, 1] - logits[:, 0])
        return torch.cat(scores).view(len(images), len(texts))

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        out = out or self(batch)
        return self.target.to_pixels(out.pred, self.images(batch))


def _bert_init(module: nn.Module) -> None:
    """The official `init_weights`: normal(0, 0.02) linear and embedding weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        init_weights(module)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.MultiheadAttention):
        nn.init.normal_(module.in_proj_weight, std=0.02)
        nn.init.zeros_(module.in_proj_bias)
