"""Diffusion parts: DDPM noise schedules, q_sample, DDIM sampling, and adaLN timestep conditioning for ViTs.

Written from the definitions of Ho et al. (DDPM, 2020: linear betas 1e-4 -> 0.02), Nichol & Dhariwal (improved
DDPM, 2021: the cosine schedule, betas capped at 0.999), Song et al. (DDIM, 2021) and Peebles & Xie (DiT, 2023:
adaptive LayerNorm with zero-initialised gates), as UMD's official code (philippe-eecs/small-vision,
big_vision/gaussian_diffusion.py, models/vit.py, models/embeddings.py) uses them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn

from .autoencoders import LatentViTEncoder
from .decoders import restore_tokens
from .encoders import LayerNorm, ViTEncoder, gather_tokens, init_weights
from .errors import ConfigError, DataError
from .tokens import sincos_pos_embed

SCHEDULES = ("cosine", "linear")


def cosine_alpha_bar(u: float, s: float = 0.008) -> float:
    """Improved DDPM's cumulative signal level before normalisation: cos^2(((u + s) / (1 + s)) pi / 2)."""
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def beta_schedule(kind: str = "cosine", timesteps: int = 1000) -> torch.Tensor:
    """Betas (float64, `timesteps`): 'linear' (DDPM, 1e-4 -> 0.02 scaled by 1000 / timesteps) or 'cosine'
    (improved DDPM: 1 - alpha_bar(t + 1) / alpha_bar(t), capped at 0.999)."""
    if timesteps < 1:
        raise ConfigError(f"timesteps must be at least 1, got {timesteps}")
    if kind == "linear":
        scale = 1000 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    if kind == "cosine":
        return torch.tensor([min(1 - cosine_alpha_bar((i + 1) / timesteps) / cosine_alpha_bar(i / timesteps), 0.999)
                             for i in range(timesteps)], dtype=torch.float64)
    raise ConfigError(f"noise schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")


class NoiseSchedule(nn.Module):
    """A discrete Gaussian diffusion: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for t in 0..T-1 (t = 0: one
    step of noise), and the conversions between x_0 and eps predictions. Buffers are derived, not stored."""

    def __init__(self, kind: str = "cosine", timesteps: int = 1000):
        super().__init__()
        self.kind, self.timesteps = kind, int(timesteps)
        betas = beta_schedule(kind, timesteps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)
        self.register_buffer("alphas_cumprod_prev", torch.cat([torch.ones(1, dtype=torch.float64),
                                                               alphas_cumprod[:-1]]), persistent=False)

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values[t.long()].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noised data at steps `t` (B,): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        abar = self._at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        abar = self._at(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        abar = self._at(self.alphas_cumprod, t, x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    def ddim_timesteps(self, steps: int) -> list[int]:
        """The visited steps, as the official sampler: T-1, T-1-T//steps, ... (above 0), then 0."""
        if not 1 <= steps <= self.timesteps:
            raise ConfigError(f"sampling steps must be in 1..{self.timesteps}, got {steps}")
        return list(range(self.timesteps - 1, 0, -(self.timesteps // steps))) + [0]

    @torch.no_grad()
    def ddim_sample(self, predict_eps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: Sequence[int],
                    steps: int = 125, eta: float = 1.0, clip: tuple[float, float] | None = None,
                    generator: torch.Generator | None = None, device: torch.device | str | None = None
                    ) -> torch.Tensor:
        """DDIM (eta = 0 deterministic, eta = 1 DDPM-like) from pure noise; `predict_eps(x_t, t)` with t (B,) the
        diffusion step. Each step predicts x_0 from eps (clipped to `clip` when given), re-derives eps, and moves
        to the next visited step; the last prediction of x_0 at t = 0 is returned."""
        device = device or self.alphas_cumprod.device
        x = torch.randn(*shape, generator=generator, device="cpu").to(device)
        visited = self.ddim_timesteps(steps)
        batch = shape[0]
        for t, t_next in zip(visited[:-1], visited[1:]):
            x = self._ddim_step(predict_eps, x, t, t_next, eta, clip, generator)
        t0 = torch.zeros(batch, dtype=torch.long, device=device)
        x0 = self.x0_from_eps(x, t0, predict_eps(x, t0))
        return x0.clamp(*clip) if clip is not None else x0

    def _ddim_step(self, predict_eps, x, t: int, t_next: int, eta: float, clip, generator) -> torch.Tensor:
        steps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0 = self.x0_from_eps(x, steps, predict_eps(x, steps))
        if clip is not None:
            x0 = x0.clamp(*clip)
        eps = self.eps_from_x0(x, steps, x0)
        abar, abar_next = float(self.alphas_cumprod[t]), float(self.alphas_cumprod[t_next])
        sigma = eta * math.sqrt((1 - abar_next) / (1 - abar)) * math.sqrt(1 - abar / abar_next)
        mean = x0 * math.sqrt(abar_next) + math.sqrt(max(1 - abar_next - sigma ** 2, 0.0)) * eps
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x)
        return mean + sigma * noise


# ---------------------------------------------------------------------------------------------- conditioning
class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of the (integer) timestep, then Linear(2w) - SiLU - Linear(w) (UMD's TimeEmb and trunk)."""

    def __init__(self, width: int):
        super().__init__()
        if width % 2 or width < 4:
            raise ConfigError(f"the timestep embedding needs an even width of at least 4, got {width}")
        half = width // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10000) / (half - 1) * torch.arange(half)),
                             persistent=False)
        self.trunk = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
        for layer in (self.trunk[0], self.trunk[2]):  # flax Dense's default: LeCun normal, zero bias
            nn.init.normal_(layer.weight, std=layer.in_features ** -0.5)
            nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float().view(-1, 1) * self.frequencies
        return self.trunk(torch.cat([angles.sin(), angles.cos()], dim=-1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNBlock(nn.Module):
    """A pre-norm transformer block whose norms are shifted and scaled, and whose branches are gated, by a condition
    vector (adaLN-Zero: the modulation starts at zero, so the block starts as the identity)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = LayerNorm(dim)
        # flax's nn.gelu is the tanh approximation
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.apply(init_weights)
        self.modulation = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class TimestepViTEncoder(ViTEncoder):
    """A ViT whose blocks are conditioned on the diffusion timestep by adaLN (UMD's encoder).

    `num_class_tokens` learned tokens (no positions) are prepended; the representation is their mean. Timestep 0
    means clean input, the default for `forward_visible` / `forward_features`, so evaluation reads clean images.
    """

    def __init__(self, *, num_class_tokens: int = 4, class_token: bool = True, **kwargs):
        super().__init__(class_token=False, **kwargs)
        dim = self.embed_dim
        self.blocks = nn.ModuleList([AdaLNBlock(dim, self.num_heads, self.mlp_ratio, kwargs.get("qkv_bias", True))
                                     for _ in range(self.depth)])
        self.time_embed = TimestepEmbedding(dim)
        count = int(num_class_tokens) if class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, count, dim)) if count else None  # ae.py: zeros
        self.num_prefix_tokens = count
        if not self.fixed_pos:  # ae.py: normal(1 / sqrt(number of patches))
            nn.init.normal_(self.pos_embed, std=self.num_patches ** -0.5)

    def positions(self, grid: Sequence[int]) -> torch.Tensor:
        """Patch positions (1, N, D); the class tokens have none, so `pos_embed` holds patches only."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        if self.fixed_pos:
            return sincos_pos_embed(self.embed_dim, grid).unsqueeze(0).to(self.pos_embed)
        raise DataError(f"the model was built for a {self.grid} token grid and has learned positions; got images "
                        f"giving a {tuple(grid)} grid (resize them to {self.img_size})")

    def condition(self, t: torch.Tensor) -> torch.Tensor:
        """The condition every block reads: SiLU(trunk(sinusoid(t))), (B, D)."""
        return F.silu(self.time_embed(t))

    def forward_tokens(self, tokens: torch.Tensor, return_layers: Sequence[int] | None = None,
                       cond: torch.Tensor | None = None):
        if cond is None:
            cond = self.condition(torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device))
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        hidden, wanted = [], set(return_layers or ())
        for i, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, cond)
            if i in wanted:
                hidden.append(tokens)
        out = self.norm(tokens)
        return (out, hidden) if return_layers is not None else out

    def forward_visible(self, x: torch.Tensor, ids_keep: torch.Tensor | None,
                        return_layers: Sequence[int] | None = None, t: torch.Tensor | None = None,
                        cond: torch.Tensor | None = None):
        """Encode the tokens at `ids_keep` (all when None) of `x` at timesteps `t` (default 0: clean)."""
        tokens = self.embed(x)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        if cond is None and t is not None:
            cond = self.condition(t)
        return self.forward_tokens(tokens, return_layers, cond)

    def pool(self, features: torch.Tensor, mode: str = "token") -> torch.Tensor:
        """The mean of the class tokens ('token', UMD's representation) or of the patch tokens ('avg')."""
        if mode == "token" and self.num_prefix_tokens:
            return features[:, :self.num_prefix_tokens].mean(1)
        return features[:, self.num_prefix_tokens:].mean(1)


class LatentTimestepViTEncoder(LatentViTEncoder, TimestepViTEncoder):
    """The timestep-conditioned ViT over a frozen first stage's latents (Latent-UMD): images in, latents to blocks."""


class TimestepDecoder(nn.Module):
    """UMD's decoder at the encoder's width: mask tokens and learned positions, the representation token first,
    adaLN blocks, a final norm with adaLN shift/scale, and a linear map per token to its patch's outputs."""

    def __init__(self, grid: Sequence[int], dim: int, out_dim: int, depth: int = 4, num_heads: int = 12,
                 mlp_ratio: float = 4.0, num_prefix_tokens: int = 4):
        super().__init__()
        self.grid, self.num_prefix_tokens = tuple(grid), num_prefix_tokens
        num = math.prod(self.grid)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)         # ae.py: image_mask_embedding
        self.pos_embed = nn.Parameter(torch.randn(1, num, dim) * num ** -0.5)  # ae.py: dec_pos_embedding
        self.blocks = nn.ModuleList([AdaLNBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = LayerNorm(dim)
        self.final_modulation = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        self.pred = nn.Linear(dim, out_dim)  # ae.py: a patch-sized transposed convolution, normal(0.02) kernel
        nn.init.normal_(self.pred.weight, std=0.02)
        nn.init.zeros_(self.pred.bias)

    def forward(self, encoded: torch.Tensor, ids_restore: torch.Tensor | None, cond: torch.Tensor) -> torch.Tensor:
        """encoded (B, prefix + K, D), cond (B, D) -> (B, N, out_dim) for every token."""
        prefix, tokens = encoded[:, :self.num_prefix_tokens], encoded[:, self.num_prefix_tokens:]
        rep = prefix.mean(1) if self.num_prefix_tokens else tokens.mean(1)
        if ids_restore is not None:
            tokens = restore_tokens(tokens, ids_restore, self.mask_token)
        if tokens.shape[1] != self.pos_embed.shape[1]:
            raise DataError(f"the decoder was built for a {self.grid} token grid ({self.pos_embed.shape[1]} tokens), "
                            f"got {tokens.shape[1]}: use images of the model's size")
        x = torch.cat([rep[:, None], tokens + self.pos_embed.to(tokens.dtype)], dim=1)
        for block in self.blocks:
            x = block(x, cond)
        x = self.norm(x)[:, 1:]
        shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
        return self.pred(modulate(x, shift, scale))


# ---------------------------------------------------------------------------------------------- pictures
def save_sample_grid(images: torch.Tensor, path: str | Path, tile_px: int = 96) -> Path:
    """PNG grid of generated images (B, C, H, W): each scaled by its own 1st-99th percentiles, one or three
    channels shown, tiles enlarged (nearest) to at least `tile_px` pixels."""
    from PIL import Image

    images = images.detach().float().cpu()
    if images.ndim != 4:
        raise DataError(f"samples must be (B, C, H, W), got shape {tuple(images.shape)}")
    images = images[:, :3] if images.shape[1] >= 3 else images[:, :1]
    count, _, height, width = images.shape
    zoom = max(1, math.ceil(tile_px / max(height, width)))
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = torch.zeros(images.shape[1], rows * height * zoom, columns * width * zoom)
    for i, image in enumerate(images):
        low, high = torch.quantile(image.flatten(), torch.tensor([0.01, 0.99])).tolist()
        tile = ((image - low) / max(high - low, 1e-6)).clamp(0, 1)
        tile = tile.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)
        r, c = divmod(i, columns)
        grid[:, r * height * zoom:(r + 1) * height * zoom, c * width * zoom:(c + 1) * width * zoom] = tile
    array = (grid * 255).round().byte().permute(1, 2, 0).squeeze(-1).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


class SamplePictures(L.Callback):
    """Writes RUN/pictures/samples.png at the end of pretraining for a method that generates (`method.sample`):
    `--trainer.callbacks+=mimkit.core.diffusion.SamplePictures`."""

    def __init__(self, count: int = 16, steps: int | None = None, seed: int = 0,
                 clip: tuple[float, float] | None = None):
        self.count, self.steps, self.seed, self.clip = count, steps, seed, clip

    def on_train_end(self, trainer, module) -> None:
        method = getattr(module, "method", module)
        if not trainer.is_global_zero or not callable(getattr(method, "sample", None)):
            return
        was_training = method.training
        method.eval()
        try:
            samples = method.sample(self.count, steps=self.steps, clip=self.clip,
                                    generator=torch.Generator().manual_seed(self.seed))
        finally:
            method.train(was_training)
        save_sample_grid(samples, Path(trainer.default_root_dir) / "pictures" / "samples.png")
