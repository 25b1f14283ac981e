"""Frozen teachers: pretrained models whose features other models learn to match.

`build_teacher(...)` makes one from a timm model name, an open_clip image tower (`"open_clip:NAME"`) or
a module (a mimkit `ViTEncoder`, a timm ViT, an open_clip visual tower), with weights from a local file.
`"mimkit"` with a file saved by mimkit uses that model's encoder.
The `Teacher` wrapper is always in eval mode, has no trainable parameters and runs without gradients.
Weights are never downloaded: a teacher without a weights file is an error unless `allow_random=True`
(for tests), because a randomly initialised teacher would silently teach nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import ViTEncoder
from .errors import CheckpointError, ConfigError
from .masking import Mask, Masker

log = logging.getLogger(__name__)

@dataclass
class TeacherOutput:
    """One teacher pass: final tokens, requested hidden states, and the class token's attention."""

    tokens: torch.Tensor                  # (B, prefix + N, D) after the final norm
    hidden: list[torch.Tensor]            # outputs of the requested blocks (before the norm), in request order
    cls_attention: torch.Tensor | None    # (B, N) last block's class-token attention to patches, head-averaged
    num_prefix_tokens: int

    @property
    def features(self) -> torch.Tensor:
        """Patch tokens only: (B, N, D)."""
        return self.tokens[:, self.num_prefix_tokens:]


class Teacher(nn.Module):
    """A frozen image model with one interface over mimkit, timm and open_clip ViTs (and timm CNNs for features)."""

    def __init__(self, model: nn.Module, img_size: Sequence[int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 data_mean: Sequence[float] | None = None, data_std: Sequence[float] | None = None):
        super().__init__()
        self.kind = _kind(model)
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.img_size = tuple(img_size) if img_size is not None else None
        # Map the loader's normalisation to the teacher's: x_teacher = x * scale + shift.
        scale = shift = None
        stats = (mean, std, data_mean, data_std)
        if all(v is not None for v in stats) and len(set(map(len, stats))) == 1 \
                and (tuple(mean) != tuple(data_mean) or tuple(std) != tuple(data_std)):
            t_mean, t_std, d_mean, d_std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in stats)
            scale, shift = d_std / t_std, (d_mean - t_mean) / t_std
        self.register_buffer("input_scale", scale, persistent=False)
        self.register_buffer("input_shift", shift, persistent=False)
        self.train(False)

    # ------------------------------------------------------------------ description
    @property
    def embed_dim(self) -> int:
        m = self.model
        if self.kind == "open_clip":
            return m.transformer.width
        return int(getattr(m, "embed_dim", None) or m.num_features)

    @property
    def depth(self) -> int | None:
        """Number of transformer blocks (None for a model without blocks, such as a CNN)."""
        blocks = self._blocks()
        return len(blocks) if blocks is not None else None

    @property
    def num_prefix_tokens(self) -> int:
        if self.kind == "open_clip":
            return 1
        return int(getattr(self.model, "num_prefix_tokens", 0))

    @property
    def grid(self) -> tuple[int, ...] | None:
        """The patch grid the teacher produces for its input size (None when unknown, e.g. CNNs)."""
        m = self.model
        if self.kind == "mimkit":
            return tuple(m.grid)
        if self.kind == "timm_vit":
            return tuple(m.patch_embed.grid_size)
        if self.kind == "open_clip":
            return tuple(m.grid_size)
        return None

    def train(self, mode: bool = True) -> "Teacher":
        """A teacher stays in eval mode whatever its parent does (no dropout, no drop-path)."""
        return super().train(False)

    # ------------------------------------------------------------------ running
    @torch.no_grad()
    def forward(self, images: torch.Tensor, layers: Sequence[int] = (), cls_attention: bool = False,
                num_blocks: int | None = None) -> TeacherOutput:
        """Run the teacher once on `images` (normalised like the loader's batches).

        `layers`: 1-based block indices whose outputs to return; `num_blocks`: run only the first blocks
        (the final norm is still applied); `cls_attention`: also return the last run block's class-token
        attention over the patches.
        """
        x = self._prepare(images)
        blocks = self._blocks()
        if blocks is None:  # a CNN or other non-ViT timm model: features only
            if layers or cls_attention or num_blocks is not None:
                raise ConfigError(f"teacher {type(self.model).__name__} is not a ViT: it gives final features only, "
                                  "not per-layer hidden states or attention")
            feats = self.model.forward_features(x)
            if feats.ndim == 4:  # (B, C, H, W) -> (B, HW, C)
                feats = feats.flatten(2).transpose(1, 2)
            return TeacherOutput(feats, [], None, self.num_prefix_tokens)
        depth = len(blocks)
        run = depth if num_blocks is None else int(num_blocks)
        wanted = [int(layer) for layer in layers]
        if not 1 <= run <= depth or any(not 1 <= layer <= run for layer in wanted):
            raise ConfigError(f"teacher layers {wanted} / num_blocks {num_blocks} out of range for a {depth}-block teacher")
        tokens = self._embed(x)
        hidden: dict[int, torch.Tensor] = {}
        attention = None
        for i, block in enumerate(blocks[:run], start=1):
            if cls_attention and i == run:
                attention = self._cls_attention(block, tokens)
            tokens = self._block(block, tokens)
            if i in wanted:
                hidden[i] = tokens
        return TeacherOutput(self._norm(tokens), [hidden[layer] for layer in wanted], attention,
                             self.num_prefix_tokens)

    def hidden_states(self, images: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of the given 1-based blocks, each (B, prefix + N, D), before the final norm."""
        return self(images, layers=layers).hidden

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Final patch tokens (B, N, D), prefix tokens removed."""
        return self(images).features

    def cls_attention(self, images: torch.Tensor) -> torch.Tensor:
        """The last block's class-token attention to each patch, averaged over heads: (B, N)."""
        return self(images, cls_attention=True).cls_attention

    # ------------------------------------------------------------------ model-specific pieces
    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.input_scale is not None and x.ndim == 4 and x.shape[1] == self.input_scale.shape[1]:
            x = x * self.input_scale + self.input_shift
        if self.img_size is not None and x.ndim == 4 and tuple(x.shape[-2:]) != self.img_size:
            # e.g. MaskAlign feeds CLIP-L/14 196 px so that its grid matches a /16 student at 224 px
            x = F.interpolate(x, size=self.img_size, mode="bicubic", align_corners=False)
        return x

    def _blocks(self):
        m = self.model
        if self.kind in ("mimkit", "timm_vit"):
            return m.blocks
        if self.kind == "open_clip":
            return m.transformer.resblocks
        return None

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.kind == "mimkit":
            tokens = m.embed(x)
            if m.cls_token is not None:
                cls = (m.cls_token + m.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
                tokens = torch.cat([cls, tokens], dim=1)
            return tokens
        if self.kind == "timm_vit":
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        return m._embeds(x)  # open_clip: patches, class token, positions, ln_pre

    def _block(self, block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "open_clip" and not self.model.transformer.batch_first:
            return block(tokens.transpose(0, 1)).transpose(0, 1)
        return block(tokens)

    def _norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.ln_post(tokens) if self.kind == "open_clip" else self.model.norm(tokens)

    def _cls_attention(self, block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Recompute a block's attention probabilities from its own norm and projections (class token row)."""
        prefix = self.num_prefix_tokens
        if prefix < 1:
            raise ConfigError("attention-guided masking needs a teacher with a class token; this teacher has none")
        if self.kind == "open_clip":
            attn = block.attn
            if not isinstance(attn, nn.MultiheadAttention):
                raise ConfigError(f"cannot read attention from open_clip block attention {type(attn).__name__}")
            y = block.ln_1(tokens)
            if not self.model.transformer.batch_first:
                y = y.transpose(0, 1)
            _, weights = attn(y, y, y, need_weights=True, average_attn_weights=True)  # (B, T, T)
            return weights[:, 0, prefix:]
        attn = getattr(block, "attn", None)
        if attn is None or not hasattr(attn, "qkv") or not hasattr(block, "norm1"):
            raise ConfigError(f"cannot read attention from teacher block {type(block).__name__}")
        batch, length, _ = tokens.shape
        heads = attn.num_heads
        qkv = attn.qkv(block.norm1(tokens)).reshape(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        scale = getattr(attn, "scale", q.shape[-1] ** -0.5)
        probs = ((q[:, :, :1] * scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, T)
        return probs[:, :, 0, prefix:].mean(1)


def _kind(model: nn.Module) -> str:
    from timm.models.vision_transformer import VisionTransformer
    if isinstance(model, ViTEncoder):
        return "mimkit"
    if isinstance(model, VisionTransformer):
        return "timm_vit"
    try:
        from open_clip.transformer import VisionTransformer as OpenCLIPVisionTransformer
        if isinstance(model, OpenCLIPVisionTransformer):
            return "open_clip"
    except ImportError:  # open_clip is a dependency, but a teacher that is not one still works without it
        pass
    if hasattr(model, "forward_features"):
        return "timm"
    raise ConfigError(f"a teacher must be a mimkit ViTEncoder, a timm model or an open_clip visual tower; "
                      f"got {type(model).__name__}")


class AttentionMasker(Masker):
    """Attention-guided masking: keep tokens drawn without replacement with probability proportional to `scores`.

    MaskAlign (Xue et al., CVPR 2023) draws the visible tokens from the teacher's class-token attention
    (its reference code: `torch.multinomial` over the head-averaged last-layer attention), so the student
    sees mostly the salient tokens while every token keeps a chance. Lives here because only teachers give
    such scores.
    """

    def __call__(self, batch_size, num_tokens, *, step=None, scores=None, device=None, generator=None):
        if scores is None or tuple(scores.shape) != (batch_size, num_tokens):
            found = None if scores is None else tuple(scores.shape)
            raise ConfigError(f"attention-guided masking needs scores of shape {(batch_size, num_tokens)}, got {found}")
        keep = num_tokens - self.num_masked(num_tokens, step)
        weights = scores.detach().float().clamp_min(0) + 1e-12  # every token keeps a (tiny) chance
        ids_keep = torch.multinomial(weights, keep, replacement=False, generator=generator)
        masked = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=scores.device)
        masked.scatter_(1, ids_keep, False)
        return Mask.from_bool(masked)


# ---------------------------------------------------------------------- weights
def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat state dict from a local weights file; mimkit method files give their encoder's weights."""
    from .checkpoints import read_state_dict
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"teacher weights file {str(path)!r} does not exist")
    try:
        state, layout = read_state_dict(path)  # mimkit, timm-ViT, official-MAE and Lightning files
    except CheckpointError as error:
        state, layout = _read_other(path, error), None  # open_clip, CNNs: layouts the encoder reader does not know
    if layout == "mimkit":
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_other(path: Path, first_error: CheckpointError) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        raise first_error from None
    while isinstance(state, dict) and len(state) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = [state[k] for k in ("state_dict", "model", "module") if isinstance(state.get(k), dict)]
        if not inner:
            break
        state = inner[0]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"teacher weights {str(path)!r} hold no state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load `state` into `module`: every module weight must be present with its shape; extra keys are counted."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        detail = (f"missing {len(missing)} key(s), e.g. {missing[:3]}" if missing else "") + \
                 (f"; {len(wrong)} shape mismatch(es), e.g. {wrong[:2]}" if wrong else "")
        raise CheckpointError(f"teacher weights {str(path)!r} do not fit the teacher "
                              f"{type(module).__name__}: {detail.strip('; ')}")
    extra = [k for k in state if k not in own]
    if extra:
        log.info("teacher weights %s: ignored %d key(s) the teacher does not have (e.g. %s)", path, len(extra), extra[:3])
    module.load_state_dict({k: state[k] for k in own}, strict=True)


# ---------------------------------------------------------------------- building
def build_teacher(teacher: str | nn.Module, teacher_weights: str | Path | None = None, *,
                  img_size: int | Sequence[int] | None = None, in_chans: int = 3, allow_random: bool = False,
                  model_kwargs: dict | None = None, data_mean: Sequence[float] | None = None,
                  data_std: Sequence[float] | None = None) -> Teacher:
    """A frozen `Teacher` from a timm name, `"open_clip:NAME"` or a module, with weights from a local file.

    `teacher="mimkit"` rebuilds a method saved by mimkit (`teacher_weights` = its .safetensors file) and
    uses its encoder. `img_size` is the teacher's input size (inputs of another size are resized to it).
    Batches come normalised per channel; with `data_mean` / `data_std` (that normalisation, [0, 1] scale)
    and a teacher that declares its own statistics (timm's pretrained config, open_clip's preprocessing
    config), images are converted to the teacher's normalisation; without them the normalised images are
    fed as they are. A named teacher needs `teacher_weights` unless `allow_random` (tests only); nothing
    is downloaded.
    """
    model_kwargs = dict(model_kwargs or {})
    if teacher is None or (isinstance(teacher, str) and not teacher.strip()):
        raise ConfigError("no teacher given: set teacher=<timm model name | open_clip:MODEL>, teacher_weights=PATH")
    if teacher_weights is not None and not Path(teacher_weights).is_file():
        raise CheckpointError(f"teacher weights file {str(teacher_weights)!r} does not exist")
    if isinstance(teacher, str) and teacher_weights is None and not allow_random:
        raise ConfigError(f"a teacher needs local weights: teacher_weights=PATH (teacher {teacher!r}); "
                          "a randomly initialised teacher would teach nothing")
    size = None if img_size is None else ((img_size,) * 2 if isinstance(img_size, int) else tuple(img_size))
    mean = std = None
    if isinstance(teacher, nn.Module):
        model = teacher
        if teacher_weights is not None:
            load_weights(model, read_weights(teacher_weights), teacher_weights)
        if size is None and _kind(model) == "timm_vit":  # timm ViTs take one input size only
            size = tuple(model.patch_embed.img_size)
    elif teacher == "mimkit":
        if teacher_weights is None:  # allow_random cannot help: the file says which model to build
            raise ConfigError("teacher='mimkit' rebuilds a saved mimkit model: give its file with teacher_weights=PATH")
        from .checkpoints import load_method
        model = load_method(teacher_weights)[0].encoder
    elif teacher.startswith("open_clip:"):
        model, mean, std = _build_open_clip(teacher[len("open_clip:"):], teacher_weights, size, in_chans, model_kwargs)
    else:
        model, mean, std = _build_timm(teacher, teacher_weights, size, in_chans, model_kwargs)
    return Teacher(model, img_size=size, mean=mean, std=std, data_mean=data_mean, data_std=data_std)


def _no_hub(name: str) -> None:
    if name.startswith(("hf-hub:", "hf_hub:", "http://", "https://")):
        raise ConfigError(f"teacher {name!r} names a download; mimkit never downloads weights: give the "
                          "architecture name and a local file with teacher_weights=PATH")


def _build_timm(name: str, weights, size, in_chans: int, kwargs: dict):
    import timm
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    _no_hub(name)
    args = dict(pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    try:
        try:
            model = timm.create_model(name, **args, **({"img_size": size} if size else {}))
        except TypeError:  # models without an img_size argument (CNNs)
            model = timm.create_model(name, **args)
    except RuntimeError as error:
        raise ConfigError(f"teacher {name!r} is neither a timm model name (see timm.list_models()) nor "
                          f"'open_clip:MODEL': {error}") from None
    if weights is not None:
        state = read_weights(weights)
        if isinstance(model, VisionTransformer):
            # converts OpenAI-CLIP / big_vision layouts and resamples positions to this image size
            state = checkpoint_filter_fn(state, model)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # the classifier is not used
        load_weights(model, state, weights)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return model, cfg.get("mean"), cfg.get("std")


def _build_open_clip(name: str, weights, size, in_chans: int, kwargs: dict):
    import open_clip
    from open_clip.model import resize_pos_embed
    _no_hub(name)
    if in_chans != 3:
        raise ConfigError(f"open_clip teachers take RGB images; the data has {in_chans} channel(s)")
    if name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    clip = open_clip.create_model(name, pretrained=None, force_image_size=size[0] if size else None, **kwargs)
    if weights is not None:
        state = read_weights(weights)
        if not any(k.startswith("visual.") for k in state):  # a file holding the image tower alone
            state = {f"visual.{k}": v for k, v in state.items()}
        resize_pos_embed(state, clip)  # to this image size
        visual_state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        load_weights(clip.visual, visual_state, weights)
    visual = clip.visual
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    return visual, cfg.get("mean", getattr(visual, "image_mean", None)), cfg.get("std", getattr(visual, "image_std", None))
