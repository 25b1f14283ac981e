"""RobustMAE: Huang et al., "Improving Adversarial Robustness of Masked Autoencoders via Test-time
Frequency-domain Prompting", ICCV 2023 (arXiv 2308.10315)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..encoders import EncoderConfig
from ..masking import RatioSchedule
from ..prompts import FrequencyPrompts, Prototypes
from ..registry import register_method
from ..targets import masked_mse
from .base import MIMOutput
from .mae import MAE


@register_method("robustmae")
class RobustMAE(MAE):
    """MAE whose inputs carry a cluster-specific frequency-domain prompt, chosen by the nearest feature prototype.

    The paper's mechanism is test-time prompting of an MAE: the pretraining data's features are grouped by
    k-means, one prompt per cluster lives in the medium/high frequencies, and at test time the prototype nearest
    to an image's feature picks the prompt added to it (`prompt`). We read the abstract and introduction only
    (no code was available to us), so the training objective is ours: the MAE loss of the prompted image against
    the clean image's normalised pixels, which trains the prompts together with the encoder and decoder (start
    from a pretrained MAE with `--pretrained RUN/model.safetensors`; `freeze_encoder` learns the prompts and the
    decoder only). Prototypes are the mean-pooled encoder features of the clean images, kept by online k-means
    during training, or fitted offline by k-means with `fit_prototypes`. Band, count and init are ours.
    """

    supported_dims = (2,)  # the prompts are 2D spectra

    def __init__(self, encoder: EncoderConfig = EncoderConfig(),  # the paper evaluates ViT-B/16
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,  # MAE's decoder
                 mask_ratio: float | RatioSchedule = 0.75,  # MAE
                 norm_pix_loss: bool = True,  # MAE
                 num_prompts: int = 8,  # ours: the number of clusters
                 prompt_band: Sequence[float] = (0.125, 1.0),  # ours: above a quarter of Nyquist ("medium/high")
                 freeze_encoder: bool = False):
        super().__init__(encoder, decoder_embed_dim, decoder_depth, decoder_num_heads, mask_ratio, norm_pix_loss)
        enc = self.encoder
        self.prompts = FrequencyPrompts(num_prompts, enc.in_chans, enc.img_size, prompt_band)
        self.prototypes = Prototypes(num_prompts, enc.embed_dim)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            enc.requires_grad_(False)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The clean images' features the prototypes live in: mean of the encoder's patch tokens (B, D)."""
        return self.encoder.pool(self.encoder.forward_features(images), "avg")

    @torch.no_grad()
    def fit_prototypes(self, features: torch.Tensor, seed: int = 0) -> None:
        """Offline k-means of (N, D) features (from `features` over the pretraining data) into the prototypes."""
        self.prototypes.fit(features, seed)

    def select(self, images: torch.Tensor, update: bool = False) -> torch.Tensor:
        """Each image's prompt index: its nearest prototype."""
        return self.prototypes.assign(self.features(images), update=update)

    def prompt(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time prompting: add each image's prompt (picked by the nearest prototype)."""
        return images + self.prompts(self.select(images)).to(images)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        index = self.select(images, update=self.training)
        prompted = images + self.prompts(index).to(images)
        mask = self.masker(images.shape[0], self.encoder.num_patches, step=step, device=images.device)
        latent = self.encoder.forward_visible(prompted, mask.ids_keep)
        pred = self.decoder(latent, mask.ids_restore)
        loss = masked_mse(pred, self.target(images), mask.mask)
        return MIMOutput(loss=loss, parts={"reconstruction": loss.detach()}, pred=pred, mask=mask.mask)
