"""TIP: Du et al., "TIP: Tabular-Image Pre-training for Multimodal Classification with Incomplete Data", ECCV 2024.

An image encoder (timm's ResNet-50 as in the paper's code, or a mimkit ViT), a tabular transformer and a
multimodal interaction module (tabular tokens attend to themselves and, by cross-attention, to the image tokens),
pretrained with three losses averaged (the official TIP3Loss):
- image-tabular contrastive (CLIP loss, temperature 0.1, both directions weighted 0.5) between the projected
  image vector and the projected tabular CLS of an augmented table (int(0.3 x columns) cells per row replaced by
  values of the same column from other rows: marginal resampling);
- image-tabular matching: the interaction module's CLS says whether table and image belong together; for each
  image a hard negative table and for each table a hard negative image are drawn with probability
  softmax(similarities) + 1e-4 (BLIP's rule, the pair itself excluded);
- masked tabular reconstruction: round(0.5 x columns) cells per row become a learned mask token and are removed
  as attention keys in the tabular encoder (every query but the cell's own); the interaction module's tokens
  predict them: cross-entropy over all columns' categories for categorical cells, MSE for continuous cells,
  scored on masked cells only, the two averaged.
Missing cells (`tabular_missing`) are treated as masked cells everywhere, so their stored value never reaches
an output, and they are never scored.

Ours, where the code does not apply: the official data loader resamples corrupted cells from the whole training
table; here the method does it from the batch (`tabular_augmented` in the batch, when the data supplies it,
takes precedence), and a resampled cell takes its source cell's missingness with it. A ViT's image tokens are its
class token and patch tokens, and its image vector is the class token (the official ViT option does the same).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.core.encoders import EncoderConfig, encoder_config
from mimkit.core.errors import ConfigError, DataError
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method

IMAGE_ENCODERS = ("resnet50", "resnet18", "vit")


def _init(module: nn.Module) -> None:
    """The official TIP initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Attention(nn.Module):
    """Multi-head attention from `x` to `context` (itself by default); `allowed` (B, Nq, Nk) marks usable keys."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"attention width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)                      # TIP: qkv_bias=False
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, d = x.shape
        heads = lambda t: t.reshape(b, t.shape[1], self.num_heads, d // self.num_heads).transpose(1, 2)  # noqa: E731
        k, v = self.kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(k), heads(v),
                                             attn_mask=None if allowed is None else allowed[:, None])
        return self.drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optionally cross-attention to image tokens, MLP (ratio 4)."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, drop: float = 0.0):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, num_heads, drop=drop)
        self.cross_norm = nn.LayerNorm(dim) if context_dim else None
        self.cross_attn = Attention(dim, num_heads, context_dim, drop) if context_dim else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(drop), nn.Linear(4 * dim, dim),
                                 nn.Dropout(drop))

    def forward(self, x, context=None, allowed=None):
        x = x + self.attn(self.norm1(x), allowed=allowed)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_norm(x), context)
        return x + self.mlp(self.norm2(x))


class TabularEncoder(nn.Module):
    """TIP's tabular transformer: one embedding table for every categorical column (per-column offsets), one
    linear map for continuous cells, a CLS token, column embeddings; masked and missing cells become the mask
    token and no other token attends to them."""

    def __init__(self, categorical_sizes: list[int], num_continuous: int, dim: int, depth: int, num_heads: int,
                 embedding_dropout: float = 0.0, drop: float = 0.0):
        super().__init__()
        self.num_categorical, self.num_continuous = len(categorical_sizes), num_continuous
        self.register_buffer("offsets", torch.tensor([0, *categorical_sizes[:-1]]).cumsum(0) if categorical_sizes
                             else torch.zeros(0, dtype=torch.long), persistent=False)
        self.num_categories = int(sum(categorical_sizes))
        self.categorical_embedding = nn.Embedding(max(1, self.num_categories), dim)
        self.continuous_embedding = nn.Linear(1, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.column_embedding = nn.Embedding(self.num_columns + 1, dim)  # the CLS has its own
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(embedding_dropout)
        self.blocks = nn.ModuleList(Block(dim, num_heads, drop=drop) for _ in range(depth))
        self.apply(_init)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def num_columns(self) -> int:
        return self.num_categorical + self.num_continuous

    def embed(self, values: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(B, 1 + columns, D): CLS then one token per cell; a hidden cell's value is never read."""
        c = self.num_categorical
        codes = torch.where(hidden[:, :c], 0, values[:, :c].long()) + self.offsets
        numbers = torch.where(hidden[:, c:], 0.0, values[:, c:].float())
        tokens = torch.cat([self.categorical_embedding(codes), self.continuous_embedding(numbers[..., None])], 1)
        tokens = torch.where(hidden[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], 1)
        return self.dropout(self.norm(tokens + self.column_embedding.weight))

    def forward(self, values: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        b, n = values.shape
        if n != self.num_columns:
            raise DataError(f"tabular batch has {n} columns; the model was built for {self.num_columns} "
                            f"({self.num_categorical} categorical + {self.num_continuous} continuous)")
        hidden = torch.zeros_like(values, dtype=torch.bool) if hidden is None else hidden.bool()
        keys = torch.cat([hidden.new_zeros(b, 1), hidden], 1)
        # a hidden cell is no key for the others; every token keeps itself (the official mask's diagonal)
        allowed = ~keys[:, None, :] | torch.eye(n + 1, dtype=torch.bool, device=values.device)
        x = self.embed(values, hidden)
        for block in self.blocks:
            x = block(x, allowed=allowed)
        return x


class Interaction(nn.Module):
    """TIP's multimodal interaction module: tabular tokens self-attend and cross-attend to the image tokens."""

    def __init__(self, image_dim: int, tabular_dim: int, dim: int, depth: int, num_heads: int):
        super().__init__()
        self.image_proj, self.image_norm = nn.Linear(image_dim, dim), nn.LayerNorm(dim)
        self.tabular_proj = nn.Linear(tabular_dim, dim) if tabular_dim != dim else nn.Identity()
        self.blocks = nn.ModuleList(Block(dim, num_heads, context_dim=dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(_init)

    def forward(self, tabular_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        image = self.image_norm(self.image_proj(image_tokens))
        x = self.tabular_proj(tabular_tokens)
        for block in self.blocks:
            x = block(x, context=image)
        return self.norm(x)


def projection_head(input_dim: int, hidden_dim: int, output_dim: int) -> nn.Sequential:
    """SimCLR's projection head as TIP takes it from lightly: linear (no bias), batch norm, ReLU, linear."""
    return nn.Sequential(nn.Linear(input_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                         nn.Linear(hidden_dim, output_dim))


def clip_loss(image: torch.Tensor, table: torch.Tensor, temperature: float, lambda_0: float = 0.5):
    """(loss, logits): cross-entropy of cosine similarities / temperature, image->table weighted lambda_0."""
    logits = F.normalize(image, dim=1) @ F.normalize(table, dim=1).T / temperature
    labels = torch.arange(len(logits), device=logits.device)
    loss = lambda_0 * F.cross_entropy(logits, labels) + (1 - lambda_0) * F.cross_entropy(logits.T, labels)
    return loss, logits


def hard_negatives(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a negative table for each image, a negative image for each table), drawn with probability
    softmax(similarity) + 1e-4 among the other samples (BLIP's rule, as TIP draws them)."""
    with torch.no_grad():
        eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        image_to_table = (logits.float().softmax(1) + 1e-4).masked_fill(eye, 0)
        table_to_image = (logits.float().T.softmax(1) + 1e-4).masked_fill(eye, 0)
        return torch.multinomial(image_to_table, 1)[:, 0], torch.multinomial(table_to_image, 1)[:, 0]


def reconstruction_loss(categorical_logits: torch.Tensor, continuous: torch.Tensor, target: torch.Tensor,
                        offsets: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """TIP's masked tabular reconstruction: cross-entropy over all categories for categorical cells, MSE for
    continuous cells, each averaged over the `scored` cells only, then the two averaged."""
    c = categorical_logits.shape[1]
    target = torch.where(scored, target.float().nan_to_num(0.0), 0.0)  # an unscored cell's value is never read
    terms = []
    if c and scored[:, :c].any():
        classes = (target[:, :c].long() + offsets).clamp(0, categorical_logits.shape[-1] - 1)
        ce = F.cross_entropy(categorical_logits.flatten(0, 1), classes.flatten(), reduction="none")
        terms.append(torch.where(scored[:, :c].flatten(), ce, 0.0).sum() / scored[:, :c].sum())
    if continuous.shape[1] and scored[:, c:].any():
        se = (continuous - target[:, c:]) ** 2
        terms.append(torch.where(scored[:, c:], se, 0.0).sum() / scored[:, c:].sum())
    if not terms:
        return categorical_logits.sum() * 0 + continuous.sum() * 0  # nothing scored in this batch
    return sum(terms) / len(terms)


@register_method("tip")
class TIP(MIMMethod):
    """Tabular-image pretraining: contrastive, matching with hard negatives, masked tabular reconstruction."""

    def __init__(self,
                 encoder: EncoderConfig = EncoderConfig(img_size=128, patch_size=16, embed_dim=384, depth=12,
                                                         num_heads=6),  # ViT-S/16, when image_encoder is vit
                 image_encoder: str = "resnet50",       # official configs: resnet50 (DVM and UK Biobank)
                 categorical_sizes: list[int] | None = None,  # categories per categorical column (from the data)
                 num_continuous: int | None = None,     # continuous columns (from the data)
                 tabular_embed_dim: int = 512,          # official: 512
                 tabular_depth: int = 4,                # official: 4 tabular transformer layers
                 multimodal_embed_dim: int = 512,       # official: 512
                 multimodal_depth: int = 4,             # official: 4 interaction layers
                 tabular_num_heads: int = 8,            # official Block default; the interaction module's too
                 projection_dim: int = 128,             # official: 128
                 temperature: float = 0.1,              # official: 0.1
                 lambda_0: float = 0.5,                 # official: image->table and table->image weighted equally
                 mask_ratio: float = 0.5,               # official replace_special_rate 0.5
                 corruption_rate: float = 0.3,          # official corruption_rate 0.3
                 embedding_dropout: float = 0.0, drop_rate: float = 0.0):  # official: 0, 0
        super().__init__()
        sizes = [int(s) for s in (categorical_sizes or [])]
        num_continuous = int(num_continuous or 0)
        if any(s < 1 for s in sizes) or num_continuous < 0 or not (sizes or num_continuous):
            raise ConfigError(f"tip needs the table's shape: categorical_sizes (categories per categorical column) "
                              f"and/or num_continuous; got {categorical_sizes} and {num_continuous}")
        if image_encoder not in IMAGE_ENCODERS:
            raise ConfigError(f"image_encoder must be one of {', '.join(IMAGE_ENCODERS)}, got {image_encoder!r}")
        for name, value in (("mask_ratio", mask_ratio), ("corruption_rate", corruption_rate)):
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        self.image_encoder = image_encoder
        config = encoder_config(encoder)
        if image_encoder == "vit":
            self.encoder = self.build_encoder(config)
            image_dim = self.encoder.embed_dim
        else:
            if config.spatial_dims not in self.supported_dims:
                raise ConfigError(f"tip trains on 2D images: encoder.spatial_dims must be 2, got {config.spatial_dims}")
            import timm

            # the official code takes torchvision's ResNet through pl_bolts; timm's has the same layers
            self.encoder = timm.create_model(image_encoder, pretrained=False, num_classes=0, global_pool="",
                                             in_chans=config.in_chans or 3)
            image_dim = self.encoder.num_features
        self.embed_dims = {"image": image_dim, "table": tabular_embed_dim, "multimodal": multimodal_embed_dim,
                           "ensemble": image_dim + tabular_embed_dim + multimodal_embed_dim}
        self.mask_ratio, self.corruption_rate = mask_ratio, corruption_rate
        self.temperature, self.lambda_0 = temperature, lambda_0
        self.tabular = TabularEncoder(sizes, num_continuous, tabular_embed_dim, tabular_depth, tabular_num_heads,
                                      embedding_dropout, drop_rate)
        self.interaction = Interaction(image_dim, tabular_embed_dim, multimodal_embed_dim, multimodal_depth,
                                       tabular_num_heads)
        # official: image projector (pooled, embedding_dim = pooled width, 128); tabular (D, D, 128)
        self.image_projector = projection_head(image_dim, image_dim, projection_dim)
        self.tabular_projector = projection_head(tabular_embed_dim, tabular_embed_dim, projection_dim)
        self.categorical_head = nn.Linear(multimodal_embed_dim, max(1, self.tabular.num_categories))
        self.continuous_head = nn.Linear(multimodal_embed_dim, 1)
        self.matching_head = nn.Linear(multimodal_embed_dim, 2)
        for module in (self.categorical_head, self.continuous_head):
            _init(module)

    # ------------------------------------------------------------------ encoders
    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image tokens (B, T, C) for the interaction module, one vector (B, C) per image)."""
        if self.image_encoder == "vit":
            tokens = self.encoder.forward_features(images)
            return tokens, tokens[:, 0]
        maps = self.encoder.forward_features(images)
        return maps.flatten(2).transpose(1, 2), maps.mean((2, 3))

    def table(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's (values, missing) with checks."""
        if "tabular" not in batch:
            raise DataError(f"tip reads a 'tabular' tensor (B, columns) from the batch; got keys {sorted(batch)}")
        values = batch["tabular"]
        missing = batch.get("tabular_missing")
        missing = torch.zeros_like(values, dtype=torch.bool) if missing is None else missing.bool()
        if values.shape != missing.shape:
            raise DataError(f"tabular {tuple(values.shape)} and tabular_missing {tuple(missing.shape)} differ")
        return values, missing

    def embed(self, batch: dict, kind: str = "multimodal") -> torch.Tensor:
        """One vector per sample: `image` (the image vector), `table` (the tabular CLS), `multimodal` (the
        interaction module's CLS over the table, missing cells hidden, and the image) or `ensemble` (the three
        concatenated in that order, for the official TIPBackboneEnsemble's three heads)."""
        if kind == "image":
            return self.image_features(self.images(batch))[1]
        values, missing = self.table(batch)
        tabular = self.tabular(values, missing)
        if kind == "table":
            return tabular[:, 0]
        if kind not in ("multimodal", "ensemble"):
            raise ConfigError(f"embedding kind must be image, table, multimodal or ensemble, got {kind!r}")
        image_tokens, image_vector = self.image_features(self.images(batch))
        fused = self.interaction(tabular, image_tokens)[:, 0]
        return fused if kind == "multimodal" else torch.cat([image_vector, tabular[:, 0], fused], 1)

    # ------------------------------------------------------------------ views
    def pick_cells(self, b: int, n: int, ratio: float, device, rounding=round) -> torch.Tensor:
        """(B, N) bool: `rounding(ratio x N)` random cells per row."""
        count = rounding(n * ratio)
        order = torch.rand(b, n, device=device).argsort(1)
        return order < count

    def augment(self, values: torch.Tensor, missing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Marginal resampling: int(corruption_rate x columns) cells per row take the value (and missingness)
        of the same column in a random row of the batch."""
        b, n = values.shape
        corrupt = self.pick_cells(b, n, self.corruption_rate, values.device, rounding=int)
        source = torch.randint(0, b, (b, n), device=values.device)
        return (torch.where(corrupt, values.gather(0, source), values),
                torch.where(corrupt, missing.gather(0, source), missing))

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        values, missing = self.table(batch)
        b, n = values.shape
        if b < 2:
            raise DataError("tip contrasts and matches samples within a batch: a batch needs at least 2 samples")
        image_tokens, image_vector = self.image_features(images)
        # contrastive: image vector vs the augmented table's CLS
        if "tabular_augmented" in batch:
            augmented = batch["tabular_augmented"], batch.get("tabular_augmented_missing", missing).bool()
        else:
            augmented = self.augment(values, missing)
        tabular = self.tabular(*augmented)
        contrastive, logits = clip_loss(self.image_projector(image_vector), self.tabular_projector(tabular[:, 0]),
                                        self.temperature, self.lambda_0)
        # matching: the positive pairs, then (table, hard negative image) and (hard negative table, image)
        negative_table, negative_image = hard_negatives(logits)
        pairs_tabular = torch.cat([tabular, tabular, tabular[negative_table]])
        pairs_image = torch.cat([image_tokens, image_tokens[negative_image], image_tokens])
        match_logits = self.matching_head(self.interaction(pairs_tabular, pairs_image)[:, 0])
        match_labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(values.device)
        matching = F.cross_entropy(match_logits, match_labels)
        # masked reconstruction of the unaugmented table
        masked = self.pick_cells(b, n, self.mask_ratio, values.device)
        fused = self.interaction(self.tabular(values, masked | missing), image_tokens)[:, 1:]
        c = self.tabular.num_categorical
        reconstruction = reconstruction_loss(self.categorical_head(fused[:, :c]),
                                             self.continuous_head(fused[:, c:])[..., 0], values,
                                             self.tabular.offsets, masked & ~missing)
        loss = (contrastive + matching + reconstruction) / 3  # official: the mean of the three
        return MIMOutput(loss=loss, parts={"contrastive": contrastive.detach(), "matching": matching.detach(),
                                           "reconstruction": reconstruction.detach()})


__all__ = ["TIP", "TabularEncoder", "Interaction", "clip_loss", "hard_negatives", "reconstruction_loss",
           "projection_head", "IMAGE_ENCODERS"]
