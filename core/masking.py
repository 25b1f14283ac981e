"""Maskers pick which tokens an encoder sees; schedules change the mask ratio during training.

Every masker keeps exactly `int(N * (1 - ratio))` tokens per sample (the official MAE, MaskAlign, CropMAE
and DMJD count; SimMIM's `GridMasker` hides `ceil(ratio * units)` as its code does), so the visible tokens
stack into one (B, K) index tensor and an encoder can process visible tokens only.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import ConfigError


@dataclass
class Mask:
    """A batch of masks. `mask` is 1 where a token is hidden, in the original token order."""

    ids_keep: torch.Tensor      # (B, K) indices of visible tokens, ascending
    ids_restore: torch.Tensor   # (B, N) position of each original token in [visible..., masked...]
    mask: torch.Tensor          # (B, N) float, 1 = masked

    @property
    def ids_masked(self) -> torch.Tensor:
        """(B, N - K) indices of masked tokens, ascending."""
        order = torch.argsort(self.ids_restore, dim=1)
        return order[:, self.ids_keep.shape[1]:]

    @classmethod
    def from_bool(cls, masked: torch.Tensor) -> "Mask":
        """Build from a (B, N) boolean 'hidden' map with the same number of hidden tokens in every row."""
        counts = masked.sum(1)
        if not bool((counts == counts[0]).all()):
            raise ConfigError("every sample must hide the same number of tokens")
        # stable sort puts visible tokens (0) first, each group in ascending token order
        order = torch.argsort(masked.to(torch.int8), dim=1, stable=True)
        keep = masked.shape[1] - int(counts[0])
        return cls(ids_keep=order[:, :keep], ids_restore=torch.argsort(order, dim=1), mask=masked.float())


# --------------------------------------------------------------------------- schedules
class RatioSchedule:
    """Mask ratio as a function of the training step.

    Kinds: constant; linear (start -> end); cosine (half-cosine start -> end); step (`values` from `milestones`
    on); piecewise (linear between `values` at `knots`, fractions of `total_steps`); diffusion_cosine (start ->
    end along the improved-DDPM cosine curve over the first `ramp` of training, then end: LMD's default).
    """

    KINDS = ("constant", "linear", "cosine", "step", "piecewise", "diffusion_cosine")

    def __init__(self, kind: str = "constant", start: float = 0.75, end: float | None = None,
                 total_steps: int = 1, milestones: Sequence[int] = (), values: Sequence[float] = (),
                 knots: Sequence[float] = (), ramp: float = 1.0):
        if kind not in self.KINDS:
            raise ConfigError(f"mask-ratio schedule must be one of {', '.join(self.KINDS)}, got {kind!r}")
        if kind == "step" and len(values) != len(milestones):
            raise ConfigError("a step schedule needs one value per milestone")
        knots = [float(k) for k in knots]
        if kind == "piecewise" and (len(knots) < 2 or len(knots) != len(values) or knots != sorted(knots)
                                    or knots[0] != 0.0 or knots[-1] > 1.0):
            raise ConfigError(f"a piecewise schedule needs ascending knots from 0 to at most 1 (fractions of "
                              f"training), one value each; got knots {knots} and values {list(values)}")
        if kind == "diffusion_cosine" and not 0.0 < float(ramp) <= 1.0:
            raise ConfigError(f"ramp (the share of training the ratio grows over) must be in (0, 1], got {ramp}")
        self.kind, self.start = kind, float(start)
        self.end = float(start if end is None else end)
        self.total_steps = max(1, int(total_steps))
        self.milestones, self.values = list(milestones), [float(v) for v in values]
        self.knots, self.ramp = knots, float(ramp)

    def __call__(self, step: int | None) -> float:
        if step is None or self.kind == "constant":
            return self.start
        t = min(max(step / self.total_steps, 0.0), 1.0)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "piecewise":
            for (k0, v0), (k1, v1) in zip(zip(self.knots, self.values), zip(self.knots[1:], self.values[1:])):
                if t < k1:
                    return v0 + (v1 - v0) * (t - k0) / (k1 - k0)
            return self.values[-1]
        if self.kind == "diffusion_cosine":
            # LMD's engine_pretrain.py: the curve spans int(ramp * total) steps, s = 0.008 (Nichol & Dhariwal 2021)
            ramp_steps = max(1, int(self.ramp * self.total_steps))
            u = min(max(step / ramp_steps, 0.0), 1.0)
            return self.start + (self.end - self.start) * (1.0 - improved_ddpm_alpha_bar(u))
        ratio = self.start
        for milestone, value in zip(self.milestones, self.values):
            if step >= milestone:
                ratio = value
        return ratio


def improved_ddpm_alpha_bar(u: float, s: float = 0.008) -> float:
    """The improved-DDPM cosine curve cos^2(((u + s) / (1 + s)) pi / 2), normalised to 1 at u = 0."""
    def f(x: float) -> float:
        return math.cos((x + s) / (1 + s) * math.pi / 2) ** 2
    return f(u) / f(0.0)


def _as_schedule(mask_ratio: float | RatioSchedule) -> RatioSchedule:
    if isinstance(mask_ratio, RatioSchedule):
        return mask_ratio
    if not 0.0 <= float(mask_ratio) < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return RatioSchedule("constant", float(mask_ratio))


class Masker(abc.ABC):
    """Base: `masker(batch_size, num_tokens, step=..., scores=...) -> Mask`."""

    def __init__(self, mask_ratio: float | RatioSchedule = 0.75):
        self.schedule = _as_schedule(mask_ratio)

    def num_masked(self, num_tokens: int, step: int | None) -> int:
        """Hidden tokens: N - int(N * (1 - ratio)), the official MAE's `len_keep` (at least one token visible)."""
        return min(num_tokens - 1, num_tokens - int(num_tokens * (1 - self.schedule(step))))

    @abc.abstractmethod
    def __call__(self, batch_size: int, num_tokens: int, *, step: int | None = None,
                 scores: torch.Tensor | None = None, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> Mask:
        """Masks for a batch; `scores` (B, N), where a masker uses them, rank tokens to keep."""


class RandomMasker(Masker):
    """MAE's per-sample uniform random masking (argsort of noise); `scores` (B, N) bias it: higher = kept."""

    def __call__(self, batch_size, num_tokens, *, step=None, scores=None, device=None, generator=None):
        device = scores.device if scores is not None else device
        noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
        if scores is not None:  # keep high-score tokens first, noise breaks ties
            noise = noise - scores.float()
        keep = num_tokens - self.num_masked(num_tokens, step)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_keep = torch.sort(ids_shuffle[:, :keep], dim=1).values
        masked = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=device)
        masked.scatter_(1, ids_keep, False)
        return Mask.from_bool(masked)


def _fix_count(masked: torch.Tensor, target: int, generator: torch.Generator | None) -> torch.Tensor:
    """Add or remove random tokens so each row hides exactly `target` tokens (keeps the block shape mostly)."""
    out = masked.clone()
    for row in out:
        diff = int(row.sum()) - target
        if diff == 0:
            continue
        candidates = torch.nonzero(row if diff > 0 else ~row).flatten()
        pick = candidates[torch.randperm(len(candidates), generator=generator, device="cpu")[: abs(diff)].to(row.device)]
        row[pick] = diff < 0
    return out


class BlockMasker(Masker):
    """BEiT's block-wise masking: random rectangles (area >= 16 tokens, aspect in [0.3, 1/0.3]) until the ratio is met.

    Needs the token `grid` (h, w). The count is then made exact by a few random tokens.
    """

    def __init__(self, mask_ratio=0.5, grid: Sequence[int] = (14, 14), min_block: int = 16,
                 max_block: int | None = None, min_aspect: float = 0.3):
        super().__init__(mask_ratio)
        self.grid = tuple(grid)
        self.min_block, self.max_block = min_block, max_block
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def _one(self, target: int, generator) -> torch.Tensor:
        h, w = self.grid
        masked = torch.zeros(h, w, dtype=torch.bool)
        max_block = self.max_block or target
        for _ in range(100):  # BEiT's bounded retry loop
            count = int(masked.sum())
            if count >= target:
                break
            r = torch.rand(3, generator=generator)
            area = self.min_block + float(r[0]) * (max(self.min_block, min(max_block, target - count)) - self.min_block)
            aspect = math.exp(self.log_aspect[0] + float(r[1]) * (self.log_aspect[1] - self.log_aspect[0]))
            bh = max(1, min(h, int(round(math.sqrt(area * aspect)))))
            bw = max(1, min(w, int(round(math.sqrt(area / aspect)))))
            top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
            masked[top:top + bh, left:left + bw] = True
        return masked.flatten()

    def __call__(self, batch_size, num_tokens, *, step=None, scores=None, device=None, generator=None):
        if self.grid[0] * self.grid[1] != num_tokens:
            raise ConfigError(f"BlockMasker grid {self.grid} does not match {num_tokens} tokens")
        target = self.num_masked(num_tokens, step)
        masked = torch.stack([self._one(target, generator) for _ in range(batch_size)])
        return Mask.from_bool(_fix_count(masked, target, generator).to(device))


class GridMasker(Masker):
    """SimMIM's masking: random masking on a coarser grid of `mask_unit` x `mask_unit` tokens, upsampled.

    SimMIM: mask patch 32 px over 4 px... tokens of a 192 px image, ratio 0.6 -> `mask_unit` = 32 / patch.
    Hides ceil(ratio * units) units, as SimMIM's `MaskGenerator` (`mask_count`).
    """

    def __init__(self, mask_ratio=0.6, grid: Sequence[int] = (48, 48), mask_unit: int = 8):
        super().__init__(mask_ratio)
        self.grid, self.unit = tuple(grid), int(mask_unit)
        if any(g % self.unit for g in self.grid):
            raise ConfigError(f"token grid {self.grid} is not divisible by mask unit {self.unit}")

    def __call__(self, batch_size, num_tokens, *, step=None, scores=None, device=None, generator=None):
        coarse = tuple(g // self.unit for g in self.grid)
        n_coarse = math.prod(coarse)
        n_masked = math.ceil(self.schedule(step) * n_coarse)
        n_masked = min(max(n_masked, 0), n_coarse - 1)
        noise = torch.rand(batch_size, n_coarse, generator=generator)
        coarse_mask = torch.zeros(batch_size, n_coarse, dtype=torch.bool)
        coarse_mask.scatter_(1, torch.argsort(noise, 1)[:, :n_masked], True)
        m = coarse_mask.reshape(batch_size, *coarse)
        for axis in range(len(coarse)):
            m = m.repeat_interleave(self.unit, dim=axis + 1)
        return Mask.from_bool(m.reshape(batch_size, -1).to(device))


class TubeMasker(Masker):
    """Tube masking for 3D token grids (d, h, w): one random 2D mask over (h, w) repeated along d."""

    def __init__(self, mask_ratio=0.75, grid: Sequence[int] = (8, 14, 14)):
        super().__init__(mask_ratio)
        self.grid = tuple(grid)

    def __call__(self, batch_size, num_tokens, *, step=None, scores=None, device=None, generator=None):
        d, h, w = self.grid
        if d * h * w != num_tokens:
            raise ConfigError(f"TubeMasker grid {self.grid} does not match {num_tokens} tokens")
        plane = RandomMasker(self.schedule)(batch_size, h * w, step=step, generator=generator)
        masked = plane.mask.bool().reshape(batch_size, 1, h * w).expand(batch_size, d, h * w)
        return Mask.from_bool(masked.reshape(batch_size, -1).to(device))


class DisjointMasker(Masker):
    """DMJD's disjoint masking: `num_views` masks per image, each hiding the same number M of its N tokens.

    Ma et al., "Disjoint Masking with Joint Distillation for Efficient Masked Image Modeling", 2023.
    The views are drawn one after another; each view hides the M tokens that the views before it hid least
    often (random among ties). This is our K-view form of the paper's disjoint regulation; for two views it
    is exactly its reference code (prediction ratio 1): the second view hides as many of the first view's
    visible tokens as it can and takes the rest from the first view's hidden ones.
    Consequence, for every image: each token is hidden floor(K*M/N) or ceil(K*M/N) times over the K views, so
      * K * M <= N: the hidden sets are pairwise disjoint;
      * K * M >= N: together they cover every token;
      * K * (N - M) <= N: the visible sets are pairwise disjoint.
    `mask_unit` > 1 applies this on a coarse grid of `mask_unit`-sided token blocks (DMJD's block mode),
    with M, N counted in blocks. Returns ONE Mask of K * batch_size rows, view-major: rows
    [k * batch_size, (k + 1) * batch_size) are view k of images 0..batch_size-1.
    """

    def __init__(self, mask_ratio: float | RatioSchedule = 0.75, num_views: int = 2,
                 grid: Sequence[int] | None = None, mask_unit: int = 1):
        super().__init__(mask_ratio)
        if int(num_views) < 1:
            raise ConfigError(f"num_views must be at least 1, got {num_views}")
        self.num_views, self.unit = int(num_views), int(mask_unit)
        self.grid = tuple(grid) if grid is not None else None
        if self.unit < 1:
            raise ConfigError(f"mask_unit must be at least 1, got {mask_unit}")
        if self.unit > 1 and self.grid is None:
            raise ConfigError("DisjointMasker needs the token grid when mask_unit > 1")
        if self.unit > 1 and any(g % self.unit for g in self.grid):
            raise ConfigError(f"token grid {self.grid} is not divisible by mask unit {self.unit}")

    def hidden_counts(self, masks: Mask, batch_size: int) -> torch.Tensor:
        """(batch_size, N) how many of the K views hide each token."""
        return masks.mask.reshape(self.num_views, batch_size, -1).sum(0)

    def __call__(self, batch_size, num_tokens, *, step=None, scores=None, device=None, generator=None):
        if self.grid is not None and math.prod(self.grid) != num_tokens:
            raise ConfigError(f"DisjointMasker grid {self.grid} does not match {num_tokens} tokens")
        coarse = tuple(g // self.unit for g in self.grid) if self.unit > 1 else (num_tokens,)
        units = math.prod(coarse)
        hide = self.num_masked(units, step)
        counts = torch.zeros(batch_size, units)
        views = []
        for _ in range(self.num_views):
            # noise < 1 only breaks ties: tokens hidden fewer times so far always come first
            order = torch.argsort(counts + torch.rand(batch_size, units, generator=generator), dim=1)
            hidden = torch.zeros(batch_size, units, dtype=torch.bool)
            hidden.scatter_(1, order[:, :hide], True)
            counts += hidden
            views.append(hidden)
        masked = torch.cat(views).reshape(-1, *coarse)
        if self.unit > 1:
            for axis in range(len(coarse)):
                masked = masked.repeat_interleave(self.unit, dim=axis + 1)
        return Mask.from_bool(masked.reshape(len(views) * batch_size, -1).to(device))


MASKERS: dict[str, Callable[..., Masker]] = {
    "random": RandomMasker, "block": BlockMasker, "grid": GridMasker, "tube": TubeMasker,
    "disjoint": DisjointMasker,
}


# ----------------------------------------------------------------------------- SelectiveMAE's token selection
@dataclass
class SelectiveMask(Mask):
    """A Mask whose hidden tokens are only partly reconstructed: `ids_target` (B, R), ascending, are the ones."""

    ids_target: torch.Tensor | None = None

    @property
    def target(self) -> torch.Tensor:
        """(B, N) float, 1 where a token is reconstructed."""
        out = torch.zeros_like(self.mask)
        return out.scatter_(1, self.ids_target, 1.0)


class SelectiveMasker(Masker):
    """SelectiveMAE's semantic token selection: few visible tokens, and only a subset of the hidden ones reconstructed.

    Wang et al., "Harnessing Massive Satellite Imagery with Efficient Masked Image Modeling" (ICCV 2025,
    arXiv 2406.11933, "Scaling Efficient Masked Image Modeling on Large Remote Sensing Dataset").
    With K = int(N * (1 - mask_ratio)) visible tokens:
      1. K // 2 tokens are sampled without replacement with probabilities softmax(`scores`) (HOG-based scores:
         semantically rich patches are picked more often);
      2. the other visible tokens are added in `expansion_rounds` rounds by their highest cosine similarity
         (of `features`) to the tokens picked so far: progressive semantic token selection (PSTS) adds the most
         similar tokens first, then blends to the least similar ones (complementary content), then to random
         ones, at the fractions `expansion_schedule` = (near-to-far start, far, far-to-random start, random)
         of `total_steps` (the official code: epochs 280, 300, 580, 600 of 800);
      3. round(target_ratio * N) of the hidden tokens, sampled with the same probabilities, are reconstructed.
    Without `total_steps` (or `step`) the selection stays in the first stage (most similar tokens).
    """

    def __init__(self, mask_ratio: float | RatioSchedule = 0.85, target_ratio: float = 0.25,
                 total_steps: int | None = None,
                 expansion_schedule: Sequence[float] = (0.35, 0.375, 0.725, 0.75), expansion_rounds: int = 2):
        super().__init__(mask_ratio)
        schedule = tuple(float(v) for v in expansion_schedule)
        if len(schedule) != 4 or list(schedule) != sorted(schedule) or not 0 <= schedule[0] <= schedule[-1] <= 1:
            raise ConfigError(f"expansion_schedule must be 4 ascending fractions of training in [0, 1], got {schedule}")
        if not 0.0 < float(target_ratio) <= self.schedule(None):
            raise ConfigError(f"target_ratio (share of all tokens reconstructed) must be in (0, mask_ratio="
                              f"{self.schedule(None)}], got {target_ratio}")
        if int(expansion_rounds) < 1:
            raise ConfigError(f"expansion_rounds must be at least 1, got {expansion_rounds}")
        self.target_ratio, self.total_steps = float(target_ratio), total_steps
        self.expansion_schedule, self.expansion_rounds = schedule, int(expansion_rounds)

    def stage(self, step: int | None) -> tuple[float, float]:
        """(near, random) shares of the expanded tokens at `step`; the rest are the least similar ones."""
        if step is None or not self.total_steps:
            return 1.0, 0.0
        t = step / self.total_steps
        a, b, c, d = self.expansion_schedule
        if t < a:
            return 1.0, 0.0
        if t < b:
            return 1.0 - (t - a) / (b - a), 0.0
        if t < c:
            return 0.0, 0.0
        if t < d:
            return 0.0, (t - c) / (d - c)
        return 0.0, 1.0

    @staticmethod
    def _sample(probs: torch.Tensor, allowed: torch.Tensor, count: int, generator) -> torch.Tensor:
        """`count` distinct indices per row among `allowed`, with probabilities `probs`."""
        weights = probs * allowed
        # a row whose allowed probabilities all underflow falls back to uniform over the allowed tokens
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, allowed.to(weights))
        return torch.multinomial(weights, count, replacement=False, generator=generator)

    def __call__(self, batch_size, num_tokens, *, step=None, scores=None, device=None, generator=None,
                 features: torch.Tensor | None = None) -> SelectiveMask:
        device = scores.device if scores is not None else device
        probs = (torch.softmax(scores.float(), dim=1) if scores is not None
                 else torch.full((batch_size, num_tokens), 1.0 / num_tokens, device=device))
        hide = self.num_masked(num_tokens, step)
        keep = num_tokens - hide
        visible = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=device)
        visible.scatter_(1, self._sample(probs, ~visible, max(1, keep // 2), generator), True)
        near_share, random_share = self.stage(step)
        cosine = None
        if features is not None:
            normed = torch.nn.functional.normalize(features.detach().float(), dim=-1)
            cosine = normed @ normed.transpose(1, 2)                                  # (B, N, N)
        remaining = keep - int(visible[0].sum())
        for round_ in range(self.expansion_rounds):
            count = remaining // self.expansion_rounds + (remaining % self.expansion_rounds
                                                          if round_ == self.expansion_rounds - 1 else 0)
            if count == 0:
                continue
            rand = torch.rand(batch_size, num_tokens, device=device, generator=generator)
            if cosine is None:
                similarity = rand
                near, far, randoms = 0, 0, count
            else:
                similarity = cosine.masked_fill(~visible[:, None, :], -2.0).amax(-1)
                randoms = int(round(random_share * count))
                near = int(round(near_share * (count - randoms)))
                far = count - randoms - near
            similarity = similarity.masked_fill(visible, float("nan"))
            chosen = torch.zeros_like(visible)
            if near:
                chosen.scatter_(1, torch.nan_to_num(similarity, nan=-3.0).topk(near, dim=1).indices, True)
            if far:
                order = torch.nan_to_num(similarity, nan=3.0).masked_fill(chosen, 3.0)
                chosen.scatter_(1, (-order).topk(far, dim=1).indices, True)
            if randoms:
                free = rand.masked_fill(visible | chosen, -1.0)
                chosen.scatter_(1, free.topk(randoms, dim=1).indices, True)
            visible |= chosen
        hidden = ~visible
        targets = min(int(round(self.target_ratio * num_tokens)), hide)
        ids_target = torch.sort(self._sample(probs, hidden, max(1, targets), generator), dim=1).values
        base = Mask.from_bool(hidden)
        return SelectiveMask(base.ids_keep, base.ids_restore, base.mask, ids_target=ids_target)


# ----------------------------------------------------------------------------- ChA-MAEViT's channel-patch masking
@dataclass
class ChannelPatchMask(Mask):
    """A Mask over channel-major per-channel tokens, with the channels hidden whole and the strategy used."""

    channels_masked: torch.Tensor | None = None   # (B, C) bool, True = the whole channel is hidden
    strategy: str = "patch"


class ChannelPatchMasker(Masker):
    """ChA-MAEViT's dynamic channel-patch masking over C x N channel-major tokens.

    Pham et al., "ChA-MAEViT: Unifying Channel-Aware Masked Autoencoders and Multi-Channel Vision Transformers
    for Improved Cross-Channel Learning", NeurIPS 2025. Each call picks a strategy: with probability `p_patch`
    patch masking only (every channel keeps int(N * (1 - mask_ratio)) random patches), with probability
    `p_channel` channel masking only (a random number of whole channels, 0 or 1 to C - 1, hidden; the same
    channels for the whole batch, as in the official code), otherwise both (the union). The paper's two
    settings: alternate (p_patch = p_channel = 0.5, mask_ratio 0.75) and combined (0, 0, mask_ratio 0.25).
    """

    STRATEGIES = ("patch", "channel", "both")

    def __init__(self, mask_ratio: float | RatioSchedule = 0.75, p_patch: float = 0.5, p_channel: float = 0.5,
                 at_least_one_channel: bool = False):
        super().__init__(mask_ratio)
        if p_patch < 0 or p_channel < 0 or p_patch + p_channel > 1 + 1e-9:
            raise ConfigError(f"p_patch and p_channel must be >= 0 with a sum <= 1, got {p_patch} and {p_channel}")
        self.p_patch, self.p_channel, self.at_least_one_channel = float(p_patch), float(p_channel), at_least_one_channel

    def pick_strategy(self, generator=None) -> str:
        u = float(torch.rand(1, generator=generator))
        return "patch" if u < self.p_patch else "channel" if u < self.p_patch + self.p_channel else "both"

    def __call__(self, batch_size, num_tokens, *, num_channels: int = 1, step=None, scores=None, device=None,
                 generator=None, strategy: str | None = None) -> ChannelPatchMask:
        if num_tokens % num_channels:
            raise ConfigError(f"{num_tokens} tokens do not split into {num_channels} channels")
        strategy = strategy or self.pick_strategy(generator)
        if strategy not in self.STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(self.STRATEGIES)}, got {strategy!r}")
        per_channel = num_tokens // num_channels
        hidden = torch.zeros(batch_size, num_channels, per_channel, dtype=torch.bool)
        channels = torch.zeros(batch_size, num_channels, dtype=torch.bool)
        if strategy in ("patch", "both"):
            hide = self.num_masked(per_channel, step)
            order = torch.argsort(torch.rand(batch_size, num_channels, per_channel, generator=generator), dim=-1)
            hidden.scatter_(2, order[..., :hide], True)
        if strategy in ("channel", "both") and num_channels > 1:
            low = 1 if self.at_least_one_channel else 0
            count = int(torch.randint(low, num_channels, (1,), generator=generator))
            picked = torch.randperm(num_channels, generator=generator)[:count]
            channels[:, picked] = True
            hidden |= channels[:, :, None]
        base = Mask.from_bool(hidden.reshape(batch_size, num_tokens).to(device))
        return ChannelPatchMask(base.ids_keep, base.ids_restore, base.mask,
                                channels_masked=channels.to(device), strategy=strategy)
