"""Nodata pixels in the losses of the remote-sensing methods: the batch's "valid" mask (True = data) hides them."""
from __future__ import annotations

import torch

from mimkit.core.errors import DataError


def nodata_filled(batch: dict, images: torch.Tensor, key: str = "valid") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images with nodata pixels at 0, valid (B, 1, H, W) bool or None when every pixel is valid).

    0 is the band mean once normalised, what the loader puts there; setting it here too means whatever a batch holds
    at nodata pixels (NaN, a fill value) cannot reach the encoder."""
    valid = batch.get(key)
    if valid is None:
        return images, None
    valid = torch.as_tensor(valid, device=images.device)
    if valid.numel() != images.shape[0] * images[0, 0].numel():
        raise DataError(f"batch[{key!r}] {tuple(valid.shape)} must hold one flag per pixel of the images "
                        f"{tuple(images.shape)}: (B, H, W)")
    valid = valid.reshape(images.shape[0], 1, *images.shape[2:]).bool()
    if bool(valid.all()):
        return images, None
    return torch.where(valid, images, torch.zeros((), dtype=images.dtype, device=images.device)), valid


def valid_token_mean(error: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token mean of `error` (..., values) over its valid values (None: all valid), and (...) bool: which
    tokens hold any valid value (a token without one drops out of the average, as in MAE's masked_mse)."""
    if valid is None:
        return error.mean(-1), torch.ones(error.shape[:-1], dtype=torch.bool, device=error.device)
    valid = valid.to(error)
    count = valid.sum(-1)
    return (error * valid).sum(-1) / count.clamp_min(1.0), count > 0
