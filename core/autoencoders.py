"""KL autoencoders: the frozen first stage that maps images to a latent grid (latent diffusion, LMD).

Two kinds, one interface (`FrozenAutoencoder`): diffusers' `AutoencoderKL` read from a local folder (Stable
Diffusion's VAE: 8x downsampling, 4 latent channels), when diffusers is installed; or mimkit's small
`KLAutoencoder`, trained on the user's own images by `train_autoencoder` (`mimkit autoencoder`) and stored as one
safetensors file with its configuration. Weights are never downloaded.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .encoders import PatchEmbed, ViTEncoder
from .errors import CheckpointError, ConfigError, DataError
from .tokens import as_tuple, grid_shape

FILE_FORMAT = "mimkit-autoencoder"
AUTOENCODER_FILE = "autoencoder.safetensors"


# ---------------------------------------------------------------------------------------------- the small VAE
class DiagonalGaussian:
    """A diagonal Gaussian posterior from (mean, log-variance) channels, log-variance clamped as in LDM."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def kl(self) -> torch.Tensor:
        """KL to the standard normal, summed over each sample's latent elements: (B,)."""
        return 0.5 * (self.mean ** 2 + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Two GroupNorm-SiLU-3x3 convolutions with a residual (1x1 projection when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                  _norm(out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class KLAutoencoder(nn.Module):
    """A small convolutional VAE (KL-regularised, diagonal Gaussian latent), shaped like LDM's first stage.

    One residual block per level of `channels`, a stride-2 convolution between levels (downsampling factor
    2 ** (levels - 1)), a middle block, and a mirrored decoder with nearest upsampling. Smaller than Stable
    Diffusion's VAE and without its attention blocks: our choice, for first stages trained on small data.
    """

    def __init__(self, in_chans: int = 3, latent_channels: int = 4, channels: Sequence[int] = (64, 128, 256, 256)):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1 or latent_channels < 1 or in_chans < 1:
            raise ConfigError(f"KLAutoencoder needs in_chans, latent_channels >= 1 and a non-empty list of level "
                              f"widths; got in_chans={in_chans}, latent_channels={latent_channels}, "
                              f"channels={channels}")
        self.in_chans, self.latent_channels, self.channels = int(in_chans), int(latent_channels), channels
        self.downsample = 2 ** (len(channels) - 1)
        down: list[nn.Module] = [nn.Conv2d(in_chans, channels[0], 3, padding=1)]
        width = channels[0]
        for level, out in enumerate(channels):
            down.append(ResBlock(width, out))
            width = out
            if level < len(channels) - 1:
                down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        down += [ResBlock(width, width), _norm(width), nn.SiLU(), nn.Conv2d(width, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*down)
        up: list[nn.Module] = [nn.Conv2d(latent_channels, width, 3, padding=1), ResBlock(width, width)]
        for level, out in reversed(list(enumerate(channels))):
            up.append(ResBlock(width, out))
            width = out
            if level > 0:
                up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
        up += [_norm(width), nn.SiLU(), nn.Conv2d(width, in_chans, 3, padding=1)]
        self.decoder = nn.Sequential(*up)

    def config(self) -> dict:
        return {"in_chans": self.in_chans, "latent_channels": self.latent_channels, "channels": list(self.channels)}

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        return self.decode(posterior.sample()), posterior


def autoencoder_loss(x: torch.Tensor, recon: torch.Tensor, posterior: DiagonalGaussian,
                     kl_weight: float = 1e-6) -> dict[str, torch.Tensor]:
    """L1 reconstruction (mean over pixels) + kl_weight x KL per pixel: LDM's ratio of the two terms
    (sum over pixels + kl_weight x summed KL, kl-f8 config: 1e-6), without its LPIPS and GAN terms."""
    reconstruction = (x.float() - recon.float()).abs().mean()
    kl = posterior.kl().mean() / x[0].numel()
    return {"loss": reconstruction + kl_weight * kl, "reconstruction": reconstruction, "kl": kl}


def save_autoencoder(model: KLAutoencoder, path: str | Path, extra: dict | None = None) -> Path:
    """One safetensors file with the weights and, in its metadata, the configuration (and `extra` facts)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"autoencoder path {path} must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FILE_FORMAT, "config": json.dumps(model.config()), "extra": json.dumps(extra or {})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    return path


def load_autoencoder(path: str | Path) -> tuple[KLAutoencoder, dict]:
    """A `KLAutoencoder` from a file written by `save_autoencoder`: (model, the stored extra facts)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"autoencoder file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for non-safetensors files
        raise CheckpointError(f"{path} is not a safetensors file written by `mimkit autoencoder`: {error}") from None
    if metadata.get("format") != FILE_FORMAT:
        raise CheckpointError(f"{path} was not written by `mimkit autoencoder` (format {metadata.get('format')!r}, "
                              f"expected {FILE_FORMAT!r})")
    model = KLAutoencoder(**json.loads(metadata["config"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model, json.loads(metadata.get("extra", "{}"))


# ---------------------------------------------------------------------------------------------- the frozen wrapper
class FrozenAutoencoder(nn.Module):
    """A first stage that never trains: images (normalised as the loader gives them) <-> latents.

    `latents(x)` is the posterior mode (or a sample, `sample_posterior`) times `scale` (LMD's official code: SD's
    VAE, mode, no scaling; UMD's latent variant: a sample times SD's scaling factor 0.18215); `scale=None` takes
    a diffusers VAE's own `scaling_factor` (1 for mimkit's). `decode(z)` returns images in the loader's
    normalisation. A diffusers VAE reads [-1, 1] pixels, so it needs
    the loader's per-channel `data_mean`/`data_std` to undo the normalisation; a mimkit VAE was trained on
    normalised images and needs neither.
    """

    def __init__(self, model: nn.Module, scale: float | None = 1.0, data_mean: Sequence[float] | None = None,
                 data_std: Sequence[float] | None = None, sample_posterior: bool = False):
        super().__init__()
        self.model = model
        self.kind = "mimkit" if isinstance(model, KLAutoencoder) else "diffusers"
        for p in self.model.parameters():
            p.requires_grad_(False)
        if scale is None:
            scale = float(getattr(model.config, "scaling_factor", 1.0)) if self.kind == "diffusers" else 1.0
        self.scale, self.sample_posterior = float(scale), bool(sample_posterior)
        if self.kind == "diffusers":
            cfg = model.config
            self.in_chans, self.latent_channels = int(cfg.in_channels), int(cfg.latent_channels)
            self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
            if data_mean is None or data_std is None:
                raise ConfigError("a diffusers autoencoder reads [-1, 1] pixels: give autoencoder_data_mean and "
                                  "autoencoder_data_std, the loader's normalisation (data.mean / data.std)")
            if len(data_mean) != self.in_chans or len(data_std) != self.in_chans:
                raise ConfigError(f"autoencoder_data_mean/std need {self.in_chans} values (one per channel), got "
                                  f"{list(data_mean)} and {list(data_std)}")
        else:
            self.in_chans, self.latent_channels = model.in_chans, model.latent_channels
            self.downsample = model.downsample
        stats = (None, None) if data_mean is None else (
            torch.tensor(data_mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(data_std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("data_mean", stats[0], persistent=False)
        self.register_buffer("data_std", stats[1], persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenAutoencoder":
        """Always in eval mode, whatever its parent does."""
        return super().train(False)

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, latent_channels, H / f, W / f) latents, without gradients."""
        if self.kind == "diffusers":
            pixels = (images.float() * self.data_std + self.data_mean) * 2.0 - 1.0
            posterior = self.model.encode(pixels).latent_dist
        else:
            posterior = self.model.encode(images.float())
        z = posterior.sample() if self.sample_posterior else posterior.mode()
        return z * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in the loader's normalisation."""
        z = latents.float() / self.scale
        if self.kind == "diffusers":
            pixels = self.model.decode(z).sample
            return ((pixels + 1.0) / 2.0 - self.data_mean) / self.data_std
        return self.model.decode(z)


def build_autoencoder(source: str | None = None, *, allow_random: bool = False, kwargs: dict | None = None,
                      scale: float | None = 1.0, data_mean: Sequence[float] | None = None,
                      data_std: Sequence[float] | None = None, sample_posterior: bool = False) -> FrozenAutoencoder:
    """A frozen first stage from a local file (`mimkit autoencoder` output) or a diffusers `AutoencoderKL` folder
    (config.json + weights, e.g. Stable Diffusion's `vae` folder); `allow_random` builds a fresh `KLAutoencoder`
    of `kwargs` instead (tests only: a random first stage encodes nothing useful)."""
    if source is None:
        if not allow_random:
            raise ConfigError("no first-stage autoencoder given: set autoencoder to a file written by `mimkit "
                              "autoencoder` or to a local diffusers AutoencoderKL folder (nothing is downloaded)")
        return FrozenAutoencoder(KLAutoencoder(**(kwargs or {})), scale, data_mean, data_std, sample_posterior)
    if kwargs:
        raise ConfigError(f"autoencoder_kwargs {sorted(kwargs)} only shape a fresh autoencoder; the file "
                          f"{source} brings its own configuration")
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"autoencoder folder {path} has no config.json: expected a diffusers "
                                  f"AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors)")
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise ConfigError(f"{path} is a diffusers AutoencoderKL folder; reading it needs diffusers "
                              f"(pip install diffusers)") from None
        model = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        return FrozenAutoencoder(model, scale, data_mean, data_std, sample_posterior)
    model, _ = load_autoencoder(path)
    return FrozenAutoencoder(model, scale, data_mean, data_std, sample_posterior)


class LatentPatchEmbed(PatchEmbed):
    """A latent ViT's patch embedding: it embeds latent patches, and `check` validates what the encoder is given:
    images from outside (heads read the token grid of the images), latents while the encoder reads latents."""

    def __init__(self, latent_patch: Sequence[int], latent_chans: int, embed_dim: int, image_patch: Sequence[int],
                 image_chans: int):
        super().__init__(latent_patch, latent_chans, embed_dim, 2)
        self.image_patch, self.image_chans = tuple(image_patch), image_chans
        self.reading_latents = False

    def check(self, x: torch.Tensor) -> tuple[int, ...]:
        if self.reading_latents:
            return super().check(x)
        if x.ndim != 4 or x.shape[1] != self.image_chans:
            raise DataError(f"expected images shaped (B, {self.image_chans}, H, W), got {tuple(x.shape)}")
        return grid_shape(x.shape[2:], self.image_patch)


class LatentViTEncoder(ViTEncoder):
    """A ViT over a frozen first stage's latent grid: it takes images, and its blocks see only their latents.

    `img_size`, `patch_size` and `in_chans` describe the images (what the loader, evaluation and pictures use);
    a token covers `patch_size` pixels, i.e. `patch_size / f` latent cells for a first stage that downsamples
    f times. The first stage is part of the backbone (kNN, probes and fine-tuning read images) but never trains.
    """

    def __init__(self, autoencoder: FrozenAutoencoder, img_size: int | Sequence[int] = 224,
                 patch_size: int | Sequence[int] = 32, in_chans: int = 3, spatial_dims: int = 2, **kwargs):
        if spatial_dims != 2:
            raise ConfigError(f"a latent ViT reads 2D images: encoder.spatial_dims must be 2, got {spatial_dims}")
        image, patch, factor = as_tuple(img_size, 2, "img_size"), as_tuple(patch_size, 2, "patch_size"), \
            autoencoder.downsample
        if in_chans != autoencoder.in_chans:
            raise ConfigError(f"encoder.in_chans is {in_chans} but the first-stage autoencoder reads "
                              f"{autoencoder.in_chans} channel(s)")
        if any(p % factor for p in patch):
            raise ConfigError(f"encoder.patch_size {patch} (pixels) must be a multiple of the autoencoder's "
                              f"downsampling factor {factor}: a token covers patch_size / {factor} latent cells")
        grid_shape(image, patch)
        latent_patch = tuple(p // factor for p in patch)
        embedder = LatentPatchEmbed(latent_patch, autoencoder.latent_channels, kwargs.get("embed_dim", 768), patch,
                                    in_chans)
        super().__init__(img_size=tuple(s // factor for s in image), patch_size=latent_patch,
                         in_chans=autoencoder.latent_channels, spatial_dims=2, patch_embed=embedder, **kwargs)
        self.autoencoder = autoencoder
        self.latent_size, self.latent_patch_size, self.latent_chans = self.img_size, self.patch_size, self.in_chans
        self.img_size, self.patch_size, self.in_chans = image, patch, in_chans

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the first stage's latents, without gradients."""
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise DataError(f"expected images shaped (B, {self.in_chans}, H, W), got {tuple(images.shape)}")
        if any(s % p for s, p in zip(images.shape[2:], self.patch_size)):
            raise DataError(f"image size {tuple(images.shape[2:])} is not divisible by the patch size "
                            f"{self.patch_size}; resize the images to {self.img_size}")
        return self.autoencoder.latents(images)

    def forward_latents(self, latents: torch.Tensor, ids_keep: torch.Tensor | None,
                        return_layers: Sequence[int] | None = None, **kwargs):
        """Encode latents (B, latent_channels, h, w) directly: only the tokens at `ids_keep` when given (`kwargs`,
        such as a timestep, go to the ViT)."""
        self.patch_embed.reading_latents = True
        try:
            return super().forward_visible(latents, ids_keep, return_layers, **kwargs)
        finally:
            self.patch_embed.reading_latents = False

    def forward_visible(self, x: torch.Tensor, ids_keep: torch.Tensor | None,
                        return_layers: Sequence[int] | None = None, **kwargs):
        """Images -> latents -> the visible tokens (all when `ids_keep` is None) through the ViT."""
        return self.forward_latents(self.to_latents(x), ids_keep, return_layers, **kwargs)


# ---------------------------------------------------------------------------------------------- training it
class AutoencoderModule(L.LightningModule):
    """Trains a `KLAutoencoder` with Adam (LDM's first-stage betas 0.5, 0.9)."""

    def __init__(self, model: KLAutoencoder, lr: float, kl_weight: float):
        super().__init__()
        self.model, self.lr, self.kl_weight = model, lr, kl_weight
        self.history: list[dict] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        recon, posterior = self.model(images)
        parts = autoencoder_loss(images, recon, posterior, self.kl_weight)
        self.log("loss", parts["loss"].detach(), prog_bar=True, batch_size=images.shape[0])
        self.history.append({"step": self.global_step + 1, **{k: float(v.detach()) for k, v in parts.items()}})
        return parts["loss"]

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=(0.5, 0.9))


def train_autoencoder(data: str, out: str, img_size: int = 256, in_chans: int | None = None,
                      latent_channels: int = 4, channels: list[int] = [64, 128, 256, 256], max_steps: int = 10000,
                      batch_size: int = 16, lr: float = 4.5e-6 * 16, kl_weight: float = 1e-6,
                      crop_scale: tuple[float, float] = (0.2, 1.0), num_workers: int = 2, accelerator: str = "auto",
                      precision: str = "32", seed: int = 0, progress: bool = True) -> dict:
    """Train a small KL autoencoder on a folder of images: LMD's first stage, written to OUT/autoencoder.safetensors
    (pass that file as `--model.autoencoder`), with a reconstruction picture and metrics.json.

    Args:
        data: a folder of images (searched recursively)
        out: the folder to write
        img_size: training crop size (a multiple of the downsampling factor)
        in_chans: image channels (None: read from the data)
        latent_channels: channels of the latent grid (Stable Diffusion's VAE: 4)
        channels: width of each level; the image is downsampled 2 ** (levels - 1) times (4 levels: 8x, as SD's VAE)
        max_steps: optimiser steps
        batch_size: images per step
        lr: Adam learning rate (LDM's first stage: 4.5e-6 x batch size)
        kl_weight: weight of the KL term per pixel (LDM's kl-f8: 1e-6)
        crop_scale: RandomResizedCrop's area range
        num_workers: data loading processes
        accelerator: Lightning accelerator (cpu, gpu, auto)
        precision: Lightning precision (32, bf16-mixed)
        seed: seed of the weights and of the sample order
        progress: show a progress bar
    """
    from .config import quiet_lightning
    from .data import ImageFolderDataset, ResumableSampler, mae_train_transform, make_loader
    from .runs import update_metrics
    from .viz import loss_curve, reconstruction_grid

    quiet_lightning()
    out_dir = Path(out)
    L.seed_everything(seed, workers=True, verbose=False)
    factor = 2 ** (len(channels) - 1)
    dataset = ImageFolderDataset(data, img_size=img_size, patch_size=factor, in_chans=in_chans,
                                 transform=mae_train_transform(img_size, scale=crop_scale), labelled=False)
    model = KLAutoencoder(dataset.in_chans, latent_channels, channels)
    module = AutoencoderModule(model, lr, kl_weight)
    sampler = ResumableSampler(len(dataset), seed=seed, stop=max_steps * batch_size)
    loader = make_loader(dataset, batch_size, num_workers, sampler=sampler, drop_last=True)
    print(f"mimkit: training a KL autoencoder ({factor}x downsampling, {latent_channels} latent channels) on "
          f"{len(dataset)} images from {data} for {max_steps} steps -> {out_dir}", file=sys.stderr)
    trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, accelerator=accelerator, devices=1, precision=precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=progress,
                        enable_model_summary=False, default_root_dir=out_dir)
    trainer.fit(module, train_dataloaders=loader)
    model = model.cpu().eval()
    mean, std = (list(map(float, v)) for v in dataset.stats)
    # the reconstruction picture and its error on fixed, unaugmented images (the first 8)
    view = ImageFolderDataset(data, img_size=img_size, patch_size=factor, in_chans=dataset.in_chans,
                              transform="eval", mean=mean, std=std, labelled=False)
    images = torch.stack([view[i]["image"] for i in range(min(8, len(view)))])
    with torch.no_grad():
        recon = model.decode(model.encode(images).mode())
    error = float((recon - images).abs().mean())
    path = save_autoencoder(model, out_dir / AUTOENCODER_FILE,
                            {"mean": mean, "std": std, "img_size": img_size, "steps": trainer.global_step})
    pictures = out_dir / "pictures"
    # every pixel "masked": the grid's reconstruction columns show the decoded latents
    reconstruction_grid(images, torch.ones(len(images), 1), recon, img_size, pictures / "reconstruction.png")
    history = module.history
    if history:
        loss_curve([{k: v for k, v in row.items()} for row in history], pictures / "loss_curve.png")
    summary = {"file": str(path), "steps": trainer.global_step, "downsample": factor,
               "latent_channels": latent_channels, "final_loss": history[-1]["loss"] if history else None,
               "eval_l1": round(error, 5), "mean": mean, "std": std}
    update_metrics(out_dir, {"autoencoder": summary})
    print(json.dumps(summary, indent=2))
    return summary
