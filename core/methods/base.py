"""What every method returns, and the small base class they share."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..encoders import EncoderConfig, ViTEncoder, build_encoder, encoder_config
from ..errors import ConfigError, DataError


@dataclass
class MIMOutput:
    """One training step's result: the loss to minimise, its named parts, and what was predicted where."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    pred: torch.Tensor | None = None     # (B, N, patch_dim) predictions in token space, when there are any
    mask: torch.Tensor | None = None     # (B, N) 1 = masked
    images: torch.Tensor | None = None   # the images pred/mask refer to, when not batch["image"] (e.g. a crop)


class MIMMethod(nn.Module):
    """Base of all methods: `self.encoder` is the transferable backbone; `forward(batch) -> MIMOutput`."""

    encoder: nn.Module
    # the encoder.spatial_dims a method trains on: (2, 3) for methods that also take (B, C, D, H, W) volumes
    supported_dims: tuple[int, ...] = (2,)

    def build_encoder(self, config: EncoderConfig, encoder_class: type[ViTEncoder] | None = None,
                      **extra) -> ViTEncoder:
        """The method's encoder from its EncoderConfig; a dimensionality the method does not train on is refused."""
        config = encoder_config(config)
        if config.spatial_dims not in self.supported_dims:
            name = getattr(self, "method_name", type(self).__name__)
            raise ConfigError(f"{name} trains on {' or '.join(f'{d}D' for d in self.supported_dims)} images: "
                              f"encoder.spatial_dims must be {' or '.join(map(str, self.supported_dims))}, "
                              f"got {config.spatial_dims}")
        return build_encoder(config, encoder_class, **extra)

    def images(self, batch: dict) -> torch.Tensor:
        """The batch's images, checked against the encoder's expectations."""
        if "image" not in batch:
            raise DataError(f"a batch must hold an 'image' tensor; got keys {sorted(batch)}")
        return batch["image"]

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor | None:
        """Images rebuilt from `out.pred`, for pictures; None for methods that predict no pixels."""
        return None
