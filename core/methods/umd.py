"""UMD: Hansen-Estruch et al., "Unified Auto-Encoding with Masked Diffusion", 2024 (arXiv 2406.17688)."""
from __future__ import annotations

import math

import torch

from ..autoencoders import build_autoencoder
from ..diffusion import SCHEDULES, LatentTimestepViTEncoder, NoiseSchedule, TimestepDecoder, TimestepViTEncoder
from ..encoders import EncoderConfig, encoder_config, require_2d
from ..errors import ConfigError
from ..masking import RandomMasker
from ..registry import register_method
from ..targets import PixelTarget, masked_mean
from ..tokens import unpatchify
from .base import MIMMethod, MIMOutput


@register_method("umd")
class UMD(MIMMethod):
    """A ViT autoencoder conditioned on the diffusion timestep (adaLN) that both unmasks and denoises.

    Each batch splits: the last int(B x `no_noise_prob`) images stay clean (timestep 0, `mask_ratio_no_noise`
    hidden, MSE of the predicted x0 on masked patches); the others are noised at t ~ U{0..T-1} (conditioned on
    t + 1), `mask_ratio` hidden, loss (eps MSE on visible + x0 MSE on masked) / 2. Total: the two losses weighted
    by the shares of the batch. The decoder predicts x0 and eps for every patch; `sample` draws images with DDIM.
    With `autoencoder` (Latent-UMD) all of this happens on a frozen KL autoencoder's latents (the official code:
    Stable Diffusion's VAE, a posterior sample times its scaling factor, the linear schedule); `encoder.patch_size`
    stays in pixels (the official patch 2 on the 32 x 32 latent of 256 px images is 16 px), and reconstructions
    and samples are decoded to pixels.
    Defaults: the official UMD-B/4 recipe (github.com/philippe-eecs/small-vision, big_vision/configs/ae_i1k.py,
    models/ae.py, trainers/train_ae.py, vae_utils.py). Targets are the loader's images as normalised (the official
    pipeline scales pixels to [-1, 1]: data mean = std = 0.5 does the same).
    """

    def __init__(self,
                 encoder: EncoderConfig = EncoderConfig(img_size=64, patch_size=4,  # ae_i1k.py: B/4 at 64 px
                                                        pos_embed="learned"),  # ae.py: learned pos_embedding
                 decoder_depth: int = 4,  # ae.py: dec_depth 4 for B (S 4, L 8), at the encoder's width
                 num_class_tokens: int = 4,  # ae.py: num_cls 4, averaged into the representation
                 no_noise_prob: float = 0.5,  # ae_i1k.py
                 mask_ratio: float = 0.375,  # ae_i1k.py: the noised part
                 mask_ratio_no_noise: float = 0.75,  # ae_i1k.py: the clean part
                 noise_schedule: str = "cosine",  # ae_i1k.py: cosine for pixels, linear for latents
                 timesteps: int = 1000,  # ae_i1k.py
                 sampling_steps: int = 125,  # ae_i1k.py: "about same FID/IS as 250"
                 eta: float = 1.0,  # ae_i1k.py: DDIM eta 1.0
                 autoencoder: str | None = None,  # Latent-UMD: a `mimkit autoencoder` file or a diffusers VAE folder
                 autoencoder_scale: float | None = None,  # None: the VAE's scaling_factor (vae_utils.py: scale=True)
                 autoencoder_sample_posterior: bool = True,  # vae_utils.py: latent_dist.sample(key)
                 autoencoder_data_mean: list[float] | None = None,  # a diffusers VAE: the loader's normalisation
                 autoencoder_data_std: list[float] | None = None,
                 autoencoder_kwargs: dict | None = None, allow_random_autoencoder: bool = False):
        super().__init__()
        if not 0.0 <= no_noise_prob <= 1.0:
            raise ConfigError(f"no_noise_prob must be in [0, 1], got {no_noise_prob}")
        for name, value in (("mask_ratio", mask_ratio), ("mask_ratio_no_noise", mask_ratio_no_noise)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if noise_schedule not in SCHEDULES:
            raise ConfigError(f"noise_schedule must be one of {', '.join(SCHEDULES)}, got {noise_schedule!r}")
        config = encoder_config(encoder)
        self.latent = autoencoder is not None or allow_random_autoencoder
        if self.latent:
            require_2d(config.spatial_dims, "Latent-UMD")
            kwargs = dict(autoencoder_kwargs or {})
            if autoencoder is None and config.in_chans is not None:
                kwargs.setdefault("in_chans", config.in_chans)
            first_stage = build_autoencoder(autoencoder, allow_random=allow_random_autoencoder, kwargs=kwargs,
                                            scale=autoencoder_scale, data_mean=autoencoder_data_mean,
                                            data_std=autoencoder_data_std,
                                            sample_posterior=autoencoder_sample_posterior)
            self.encoder = enc = self.build_encoder(config, LatentTimestepViTEncoder, autoencoder=first_stage,
                                                    num_class_tokens=num_class_tokens)
            self.channels, self.space_patch = enc.latent_chans, enc.latent_patch_size
        else:
            self.encoder = enc = self.build_encoder(config, TimestepViTEncoder, num_class_tokens=num_class_tokens)
            self.channels, self.space_patch = enc.in_chans, enc.patch_size
        patch_pixels = math.prod(self.space_patch) * self.channels
        self.decoder = TimestepDecoder(enc.grid, enc.embed_dim, 2 * patch_pixels, decoder_depth, enc.num_heads,
                                       enc.mlp_ratio, enc.num_prefix_tokens)
        self.diffusion = NoiseSchedule(noise_schedule, timesteps)
        self.no_noise_prob = float(no_noise_prob)
        self.masker = RandomMasker(mask_ratio)
        self.clean_masker = RandomMasker(mask_ratio_no_noise)
        self.target = PixelTarget(self.space_patch, normalize=False)
        self.sampling_steps, self.eta = int(sampling_steps), float(eta)

    def to_space(self, images: torch.Tensor) -> torch.Tensor:
        """What is diffused and unmasked: the images, or (Latent-UMD) the first stage's latents of them."""
        return self.encoder.to_latents(images) if self.latent else images

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Back from that space to images (the first stage's decoder for latents)."""
        return self.encoder.autoencoder.decode(x) if self.latent else x

    def split(self, batch_size: int) -> tuple[int, int]:
        """(noised, clean) image counts of a batch: the clean share is int(B x no_noise_prob), taken from its end."""
        clean = int(batch_size * self.no_noise_prob)
        return batch_size - clean, clean

    def diffuse(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, eps): t ~ U{0..T-1} per image, eps ~ N(0, I), x_t = q_sample(x0, t, eps)."""
        t = torch.randint(0, self.diffusion.timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        return self.diffusion.q_sample(x0, t, noise), t, noise

    def predict(self, x: torch.Tensor, condition: torch.Tensor, masker: RandomMasker | None = None,
                step: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network on `x` (images; latents for Latent-UMD) at timestep conditions `condition` (0 = clean): x0
        and eps predictions per token, (B, N, patch values) each, and the mask (B, N) (all visible without a masker)."""
        enc = self.encoder
        cond = enc.condition(condition)
        if masker is None:
            ids_keep = ids_restore = None
            mask = torch.zeros(x.shape[0], enc.num_patches, device=x.device)
        else:
            drawn = masker(x.shape[0], enc.num_patches, step=step, device=x.device)
            ids_keep, ids_restore, mask = drawn.ids_keep, drawn.ids_restore, drawn.mask
        encode = enc.forward_latents if self.latent else enc.forward_visible  # x is already latents there
        out = self.decoder(encode(x, ids_keep, cond=cond), ids_restore, cond)
        # each token predicts (patch pixels, 2C): the first C channels are x0, the last C eps
        out = out.float().unflatten(-1, (-1, 2 * self.channels))
        x0, eps = out[..., :self.channels].flatten(2), out[..., self.channels:].flatten(2)
        return x0, eps, mask

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.to_space(self.images(batch))
        batch_size = images.shape[0]
        noised, clean = self.split(batch_size)
        parts, preds, masks = {}, [], []
        loss = images.new_zeros((), dtype=torch.float32)
        if noised:
            x0 = images[:noised]
            x_t, t, noise = self.diffuse(x0)
            pred_x0, pred_eps, mask = self.predict(x_t, t + 1, self.masker, step)
            x0_se = ((pred_x0 - self.target(x0)) ** 2).mean(-1)
            eps_se = ((pred_eps - self.target(noise)) ** 2).mean(-1)
            if mask.sum() > 0:
                diffusion = (masked_mean(eps_se, 1 - mask) + masked_mean(x0_se, mask)) / 2
            else:  # nothing masked: DiT's denoising loss on every patch
                diffusion = (eps_se.mean() + x0_se.mean()) / 2
            loss = loss + diffusion * (noised / batch_size)
            parts["diffusion"] = diffusion.detach()
            preds.append(pred_x0)
            masks.append(mask)
        if clean:
            x0 = images[noised:]
            zero = torch.zeros(clean, dtype=torch.long, device=images.device)
            pred_x0, _, mask = self.predict(x0, zero, self.clean_masker, step)
            reconstruction = masked_mean(((pred_x0 - self.target(x0)) ** 2).mean(-1), mask)
            loss = loss + reconstruction * (clean / batch_size)
            parts["reconstruction"] = reconstruction.detach()
            preds.append(pred_x0)
            masks.append(mask)
        return MIMOutput(loss=loss, parts=parts, pred=torch.cat(preds), mask=torch.cat(masks))

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        """The x0 predictions as images (for the noised rows: the denoised and unmasked estimate)."""
        out = out or self(batch)
        space = self.to_space(self.images(batch))
        return self.to_images(self.target.to_pixels(out.pred, space))

    @torch.no_grad()
    def sample(self, count: int, steps: int | None = None, eta: float | None = None,
               clip: tuple[float, float] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """`count` images drawn by DDIM from noise (eps predictions, no masking), (count, C, H, W), in the loader's
        normalisation; `clip` bounds each x0 estimate (the official pixel sampler clips to its [-1, 1] range)."""
        enc = self.encoder
        grid, patch = enc.grid, self.space_patch
        device = enc.pos_embed.device

        def predict_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            _, eps, _ = self.predict(x, t + 1)
            return unpatchify(eps, patch, grid, self.channels)

        shape = (count, self.channels, *(g * p for g, p in zip(grid, patch)))
        x0 = self.diffusion.ddim_sample(predict_eps, shape, steps or self.sampling_steps,
                                        self.eta if eta is None else eta, clip, generator, device)
        return self.to_images(x0)

