"""The text side of the image-text methods: open_clip's BPE tokenizer, whole-word masking, a small text transformer.

The tokenizer is the one open_clip ships inside its package (its vocabulary is a local file; nothing is
downloaded). Text transformers are built here with random initialisation; weights come only from local files,
through the method that holds them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.core.encoders import LayerNorm, init_weights
from mimkit.core.errors import ConfigError, DataError


@functools.lru_cache(maxsize=8)
def bpe_tokenizer(context_length: int):
    """open_clip's CLIP BPE tokenizer (vocabulary read from the installed package), cached per length."""
    from open_clip.tokenizer import SimpleTokenizer
    if int(context_length) < 3:
        raise ConfigError(f"context_length must hold at least a start token, one word and an end token, "
                          f"got {context_length}")
    return SimpleTokenizer(context_length=int(context_length))


@functools.lru_cache(maxsize=2)
def _word_end_table() -> torch.Tensor:
    tokenizer = bpe_tokenizer(77)
    # BPE marks the last piece of each word with "</w>": a word is the pieces up to and including that one
    return torch.tensor([tokenizer.decoder[i].endswith("</w>") for i in range(len(tokenizer.encoder))])


@dataclass
class Tokens:
    """Captions as token ids: `ids` (B, L); `valid` (B, L) the caption with its start and end tokens (not padding);
    `words` (B, L) the caption's word pieces only; `word_index` (B, L) which word each piece belongs to (-1 if none)."""

    ids: torch.Tensor
    valid: torch.Tensor
    words: torch.Tensor
    word_index: torch.Tensor

    @property
    def eot_position(self) -> torch.Tensor:
        """(B,) the position of each caption's end token (its summary token in CLIP's text tower)."""
        return self.valid.sum(1) - 1


class TextTokenizer:
    """Captions to `Tokens` with open_clip's BPE (lower-cased, truncated to `context_length` with the end kept)."""

    def __init__(self, context_length: int = 77):
        tokenizer = bpe_tokenizer(context_length)
        self.context_length = int(context_length)
        self.vocab_size = len(tokenizer.encoder)
        self.sot_id, self.eot_id = tokenizer.sot_token_id, tokenizer.eot_token_id
        self.mask_id = self.vocab_size  # one extra embedding row: the [MASK] token BPE does not have

    def __call__(self, texts: Sequence[str], device=None) -> Tokens:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise DataError(f"batch['text'] must be a list of caption strings, got {type(texts).__name__}"
                            + ("" if isinstance(texts, str) else f" of {sorted({type(t).__name__ for t in texts})}"))
        ids = bpe_tokenizer(self.context_length)(list(texts)).to(device)
        positions = torch.arange(ids.shape[1], device=ids.device)
        eot = (ids == self.eot_id).int().argmax(1, keepdim=True)
        valid = positions <= eot
        words = (positions > 0) & (positions < eot)
        ends = _word_end_table().to(ids.device)[ids] & words
        word_index = torch.cumsum(ends.int(), 1) - ends.int()  # ends strictly before a piece = its word's number
        word_index = torch.where(words, word_index, torch.full_like(word_index, -1))
        return Tokens(ids, valid, words, word_index)


def whole_word_mask(tokens: Tokens, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose whole words to predict: (B, L) bool, about `ratio` of each caption's word pieces.

    As Hugging Face's whole-word-masking collator (which M3AE trains with): the budget is round(ratio x pieces),
    at least one; words are visited in random order and taken while they fit the budget; the first word is
    always taken, so every caption predicts something.
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"the text mask ratio must be in (0, 1), got {ratio}")
    chosen = torch.zeros_like(tokens.words)
    for row in range(tokens.ids.shape[0]):
        index = tokens.word_index[row]
        num_pieces = int(tokens.words[row].sum())
        if num_pieces == 0:
            continue
        budget = max(1, round(num_pieces * ratio))
        num_words = int(index.max()) + 1
        sizes = torch.bincount(index[index >= 0], minlength=num_words)
        order = torch.randperm(num_words, generator=generator).tolist()
        taken, used = [], 0
        for word in order:
            size = int(sizes[word])
            if used + size > budget and taken:
                continue
            taken.append(word)
            used += size
            if used >= budget:
                break
        chosen[row] = torch.isin(index, torch.tensor(taken, device=index.device))
    return chosen


def corrupt_chosen(ids: torch.Tensor, chosen: torch.Tensor, mask_id: int, vocab_size: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """BERT's input corruption of the chosen pieces: 80% become [MASK], 10% a random token, 10% stay."""
    draw = torch.rand(ids.shape, generator=generator).to(ids.device)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator).to(ids.device)
    out = torch.where(chosen & (draw < 0.8), torch.full_like(ids, mask_id), ids)
    return torch.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, out)


class TextTransformer(nn.Module):
    """A small text transformer of our own: token + learned position embeddings, pre-norm timm blocks, final norm.

    Bidirectional over the caption's tokens (padding is never attended to), or causal with `causal=True`
    (for captioning decoders). The embedding has one extra row for the [MASK] token.
    """

    def __init__(self, vocab_size: int, context_length: int, width: int = 512, depth: int = 12, num_heads: int = 8,
                 mlp_ratio: float = 4.0, causal: bool = False):
        super().__init__()
        if width % num_heads:
            raise ConfigError(f"text width {width} must be divisible by text num_heads {num_heads}")
        self.width, self.causal, self.context_length = width, causal, context_length
        self.token_embed = nn.Embedding(vocab_size + 1, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, width))
        self.blocks = nn.ModuleList([Block(width, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
                                     for _ in range(depth)])
        self.norm = LayerNorm(width)
        self.apply(init_weights)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.01)

    def attention_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """(B, 1, L, L) bool: who may attend to whom (real tokens only; earlier ones only when causal)."""
        allowed = valid[:, None, None, :]
        if self.causal:
            length = valid.shape[1]
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
        # a padding query row with nothing allowed would give NaN: let it see itself
        return allowed | torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids (B, L), valid (B, L) bool -> token features (B, L, width)."""
        x = self.token_embed(ids) + self.pos_embed[:, :ids.shape[1]]
        mask = self.attention_mask(valid)
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        return self.norm(x)


def check_texts(batch: dict, count: int, method: str) -> list[str]:
    """batch['text'] as a list of one caption per image, or a one-line error naming what was found."""
    texts = batch.get("text")
    if texts is None or isinstance(texts, str) or len(texts) != count:
        found = "nothing" if texts is None else ("one string" if isinstance(texts, str) else f"{len(texts)} items")
        raise DataError(f"{method} needs batch['text']: one caption string per image ({count}), found {found}")
    return list(texts)
