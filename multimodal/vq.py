"""A small VQ image tokenizer of mimkit's own, trained on the data: ViT patch features quantised to a codebook.

VQ-VAE's quantiser (van den Oord et al., 2017): each patch feature is replaced by its nearest code; the codebook
term pulls codes to the features, the commitment term (beta = 0.25, VQ-VAE's value) pulls features to their
codes, and the straight-through estimator passes the decoder's gradient to the encoder. A light transformer
decoder rebuilds each patch's pixels from the codes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.core.decoders import decoder_blocks
from mimkit.core.encoders import LayerNorm, ViTEncoder, init_weights
from mimkit.core.errors import ConfigError
from mimkit.core.targets import PixelTarget
from mimkit.core.tokens import sincos_pos_embed


@dataclass
class Quantized:
    """A quantiser's result: `codes` (..., N) indices, `vectors` the chosen codes (straight-through), `loss`."""

    codes: torch.Tensor
    vectors: torch.Tensor
    loss: torch.Tensor


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with VQ-VAE's codebook + beta x commitment loss and the straight-through gradient."""

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25):
        super().__init__()
        if num_codes < 2:
            raise ConfigError(f"a codebook needs at least 2 codes, got num_codes={num_codes}")
        self.codebook = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / num_codes, 1.0 / num_codes)  # VQ-VAE's initialisation
        self.beta = float(beta)

    def forward(self, features: torch.Tensor) -> Quantized:
        """features (..., D) -> the nearest code of each vector."""
        flat = features.reshape(-1, features.shape[-1]).float()
        distances = torch.cdist(flat, self.codebook.weight.float())
        codes = distances.argmin(1).reshape(features.shape[:-1])
        chosen = self.codebook(codes).to(features.dtype)
        loss = F.mse_loss(chosen, features.detach()) + self.beta * F.mse_loss(features, chosen.detach())
        return Quantized(codes, features + (chosen - features).detach(), loss)


class VQTokenizer(nn.Module):
    """Images to discrete patch tokens and back: ViT encoder -> linear -> codebook -> transformer decoder -> pixels."""

    def __init__(self, encoder: ViTEncoder, num_codes: int = 1024, code_dim: int = 32, decoder_dim: int = 256,
                 decoder_depth: int = 2, decoder_num_heads: int = 4):
        super().__init__()
        self.encoder = encoder
        self.to_code = nn.Linear(encoder.embed_dim, code_dim)
        self.quantizer = VectorQuantizer(num_codes, code_dim)
        self.from_code = nn.Linear(code_dim, decoder_dim)
        self.register_buffer("pos_embed", sincos_pos_embed(decoder_dim, encoder.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(decoder_blocks(decoder_dim, decoder_depth, decoder_num_heads, 4.0))
        self.norm = LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, math.prod(encoder.patch_size) * encoder.in_chans)
        self.target = PixelTarget(encoder.patch_size, normalize=False)  # raw pixels, so codes decode to images
        for module in (self.to_code, self.from_code, self.blocks, self.norm, self.pred):
            module.apply(init_weights)

    @property
    def num_codes(self) -> int:
        return self.quantizer.codebook.num_embeddings

    def quantize(self, images: torch.Tensor) -> Quantized:
        """images (B, C, H, W) -> one code per patch (B, N)."""
        features = self.encoder.forward_features(images)[:, self.encoder.num_prefix_tokens:]
        return self.quantizer(self.to_code(features))

    def decode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, N, code_dim) -> patch pixels (B, N, patch_dim)."""
        x = self.from_code(vectors) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code indices (B, N) -> patch pixels (B, N, patch_dim)."""
        return self.decode(self.quantizer.codebook(codes))

    def forward(self, images: torch.Tensor) -> tuple[Quantized, torch.Tensor]:
        """Tokenize and rebuild: the quantised tokens and the tokenizer's loss (pixel MSE + VQ terms)."""
        quantized = self.quantize(images)
        rebuilt = self.decode(quantized.vectors)
        return quantized, F.mse_loss(rebuilt, self.target(images)) + quantized.loss
