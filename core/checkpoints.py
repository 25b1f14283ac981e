"""Weights files: save/load mimkit methods as safetensors; import timm and official-MAE files; export to timm.

Formats are detected from the file's keys, so `pretrained=PATH` accepts any of:
  "mimkit"        save_method's safetensors (or any state dict with `encoder.` / `decoder.` keys)
  "official_mae"  facebookresearch/mae checkpoints: {"model": state}, with or without the decoder
  "timm"          a timm VisionTransformer state dict (cls_token, pos_embed, patch_embed.proj, blocks.N, norm)
  "lightning"     a Lightning .ckpt: {"state_dict": ...} whose keys carry the LightningModule's prefix
`torch.load` runs only with `weights_only=True`: a checkpoint is untrusted input.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from safetensors import safe_open
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from .errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Official MAE names -> mimkit MAE names (models_mae.py's MaskedAutoencoderViT attributes).
_OFFICIAL_DECODER = {
    "decoder_embed.": "decoder.embed.", "decoder_blocks.": "decoder.blocks.",
    "decoder_norm.": "decoder.norm.", "decoder_pred.": "decoder.pred.",
    "decoder_pos_embed": "decoder.pos_embed", "mask_token": "decoder.mask_token",
}
# Classification heads of fine-tuned timm / MAE models: not part of the encoder, dropped on import.
_HEAD_PREFIXES = ("head.", "fc_norm.", "head_drop.")
# Prefixes a LightningModule may put before the method's own keys.
_WRAPPER_PREFIXES = ("method.", "model.", "module.", "net.")


# ---------------------------------------------------------------------------------------------- writing
def write_atomically(path: str | Path, write: Callable[[Path], None], what: str = "file") -> Path:
    """`write(temporary)` then fsync and rename onto `path`: a reader sees the old file or the new one, never half
    of one. A failed write (disk full, ...) is a CheckpointError naming `path`; the file it would replace is kept."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except Exception as error:  # OSError, or torch's RuntimeError around a failed write
        temporary.unlink(missing_ok=True)
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise CheckpointError(f"cannot write {what} {path}: {_first_line(error)}{kept}") from None
    try:  # the rename itself is durable once the folder is synced (not possible on every file system)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        pass
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing each .ckpt atomically (write_atomically) and reading with weights_only."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        write_atomically(path, lambda temporary: torch.save(checkpoint, temporary), "checkpoint")

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def _checkpoint_step(path: Path) -> int:
    """A Lightning checkpoint's global step, read without loading its tensors; CheckpointError if it is damaged."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["global_step"])
    except Exception as error:
        raise CheckpointError(f"{path.name} is damaged ({_first_line(error)})") from None


def resume_checkpoint(run_dir: str | Path) -> tuple[Path, str] | None:
    """The newest intact checkpoint of a run (checkpoints/last.ckpt, checkpoints/stepNNNNNN.ckpt or Lightning's SLURM
    hpc_ckpt_N.ckpt) and a sentence saying which was taken and why; None when the run has no checkpoint."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    numbered = [(int(m.group(1)), f) for f in (run_dir / "checkpoints").glob("step*.ckpt")
                if (m := re.fullmatch(r"step(\d+)\.ckpt", f.name))]
    numbered += [(_hpc_step(f), f) for f in run_dir.glob("hpc_ckpt_*.ckpt")]
    if not last.exists() and not numbered:
        return None
    problems, last_step = [], -1
    if last.exists():
        try:
            last_step = _checkpoint_step(last)
        except CheckpointError as error:
            problems.append(str(error))
    for step, path in sorted(numbered, key=lambda item: item[0], reverse=True):
        if step <= last_step:
            break
        try:
            _checkpoint_step(path)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        why = "; ".join(problems) if problems else (f"it is newer than last.ckpt (step {last_step})"
                                                    if last_step >= 0 else "")
        return path, f"resuming from {path.relative_to(run_dir)} (step {step}){': ' + why if why else ''}"
    if last_step >= 0:
        return last, f"resuming from checkpoints/last.ckpt (step {last_step})"
    raise CheckpointError(f"no intact checkpoint in {run_dir / 'checkpoints'} to resume from: {'; '.join(problems)}")


def _hpc_step(path: Path) -> int:
    try:
        return _checkpoint_step(path)
    except CheckpointError:
        return -1


# ---------------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read any supported weights file: (flat state dict, format name)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as error:  # safetensors raises its own error types for truncated/garbage files
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({_first_line(error)})") from None
        if metadata.get("format") == "mimkit":
            return state, "mimkit"
        return _classify(state, path)
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"checkpoint {path}: unknown file type {path.suffix!r}; "
                              f"expected .safetensors or one of {', '.join(TORCH_SUFFIXES)}")
    return _unwrap(_torch_load(path), path)


def _torch_load(path: Path):
    # argparse.Namespace is allowed because official MAE training checkpoints store their `args` in one;
    # it is a plain attribute holder, so unpickling it runs no code.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported operand" in str(error) or "invalid load key" in str(error):
            raise CheckpointError(f"checkpoint {path} is not a PyTorch or safetensors file (corrupt, or another "
                                  f"format)") from None
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain containers, so it is refused: "
            f"unpickling them could run code (mimkit loads with torch.load(weights_only=True)); "
            f"torch said: {_first_line(error)}") from None
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} cannot be read as a PyTorch file (truncated, or not a "
                              f"checkpoint?): {_first_line(error)}") from None


def _unwrap(obj, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    if isinstance(obj.get("state_dict"), dict):
        return _strip_wrapper(_tensors(obj["state_dict"]), path), "lightning"
    if isinstance(obj.get("model"), dict):  # official MAE (and DeiT) nest the weights under "model"
        state, layout = _classify(_tensors(obj["model"]), path)
        return state, ("official_mae" if layout in ("timm", "official_mae") else layout)
    if not _tensors(obj):
        raise CheckpointError(f"checkpoint {path} holds no tensors; top-level keys found: {list(obj)[:8]}")
    return _classify(_tensors(obj), path)


def _tensors(obj: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _layout(keys) -> str | None:
    keys = list(keys)
    if any(k.startswith(("encoder.", "decoder.")) for k in keys):
        return "mimkit"
    if any(k.startswith(("decoder_embed.", "decoder_blocks.", "decoder_pred.")) or k == "mask_token" for k in keys):
        return "official_mae"
    if "patch_embed.proj.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "timm"
    return None


def _classify(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    layout = _layout(state)
    if layout is None:
        raise CheckpointError(
            f"checkpoint {path}: unrecognised layout; expected mimkit (encoder.*), timm (patch_embed.proj.weight, "
            f"blocks.N.*) or official MAE keys; first keys found: {list(state)[:8]}")
    return state, layout


def _strip_wrapper(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Lightning keys are '<attribute>.<method keys>': keep the part under the wrapper attribute."""
    if _layout(state):
        return state
    for prefix in _WRAPPER_PREFIXES:
        inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if _layout(inner):
            if len(inner) < len(state):
                log.info("%s: kept %d keys under %r, left out %d others", path, len(inner), prefix, len(state) - len(inner))
            return inner
    return _classify(state, path)[0]  # raises the unrecognised-layout error


# ---------------------------------------------------------------------------------------------- key mapping
def _encoder_state(state: dict) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map any format to encoder keys (== timm's); return (encoder state, dropped keys)."""
    if _layout(state) == "mimkit":
        encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        return encoder, [k for k in state if not k.startswith("encoder.")]
    dropped = [k for k in state if _is_decoder_or_head(k)]
    return {k: v for k, v in state.items() if not _is_decoder_or_head(k)}, dropped


def _is_decoder_or_head(key: str) -> bool:
    return key.startswith(_HEAD_PREFIXES) or any(key.startswith(p) for p in _OFFICIAL_DECODER)


def _method_state(state: dict) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map any format to a mimkit method's keys (official MAE names renamed); return (state, dropped keys)."""
    if _layout(state) == "mimkit":
        return dict(state), []
    out, dropped = {}, []
    for key, value in state.items():
        new = next((mimkit + key[len(official):] for official, mimkit in _OFFICIAL_DECODER.items()
                    if key.startswith(official)), None)
        if new == "decoder.pos_embed" and value.ndim == 3 and not value[:, 0].any():
            value = value[:, 1:]  # official MAE keeps an all-zero class-token slot; mimkit's decoder has none
        if new is None and key.startswith(_HEAD_PREFIXES):
            dropped.append(key)
            continue
        out[new or "encoder." + key] = value
    return out, dropped


# ---------------------------------------------------------------------------------------------- fitting
def _fit_encoder(state: dict[str, torch.Tensor], encoder: nn.Module, path: Path,
                 adapt_in_chans: Callable[[torch.Tensor, int], torch.Tensor] | None = None
                 ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Make the encoder-key state fit `encoder`: resize a 2D pos_embed, adapt in_chans; else shape errors."""
    expected = encoder.state_dict()
    fitted, resized = {}, []
    for key, value in state.items():
        want = expected.get(key)
        if want is not None and value.shape != want.shape:
            if key == "pos_embed":
                value = _resize_pos_embed(value, encoder, path)
                resized.append(key)
            elif key == "patch_embed.proj.weight" and adapt_in_chans is not None and value.shape[1] != want.shape[1] \
                    and value.shape[:1] + value.shape[2:] == want.shape[:1] + want.shape[2:]:
                value = adapt_in_chans(value, want.shape[1])
                resized.append(key)
            _check_shape(key, value, want, path)
        fitted[key] = value
    return fitted, resized


def _resize_pos_embed(pos: torch.Tensor, encoder: nn.Module, path: Path) -> torch.Tensor:
    """Bicubic resampling of the patch positions to the encoder's grid (as timm does); prefix tokens kept."""
    want = encoder.pos_embed
    prefix = getattr(encoder, "num_prefix_tokens", 1)
    grid = tuple(encoder.grid)
    side = math.isqrt(max(pos.shape[1] - prefix, 0))
    if len(grid) != 2 or pos.ndim != 3 or pos.shape[-1] != want.shape[-1] or side * side != pos.shape[1] - prefix:
        _check_shape("pos_embed", pos, want, path)  # cannot be resized: raises with both shapes
    log.info("%s: resized pos_embed from a %dx%d to a %dx%d token grid", path, side, side, *grid)
    return resample_abs_pos_embed(pos, new_size=list(grid), old_size=[side, side], num_prefix_tokens=prefix)


def _check_shape(key: str, found: torch.Tensor, want: torch.Tensor, path: Path) -> None:
    if found.shape != want.shape:
        hint = " (in_chans or patch size differ)" if "patch_embed" in key else ""
        if key == "patch_embed.proj.weight" and found.ndim == want.ndim and found.shape[1] != want.shape[1] \
                and found.shape[:1] + found.shape[2:] == want.shape[:1] + want.shape[2:]:
            hint = (f": the checkpoint reads {found.shape[1]} input channel(s), the model {want.shape[1]}. Adapt the "
                    f"patch embedding explicitly: load_encoder(..., adapt_in_chans='repeat' or 'mean'), or "
                    f"adapt_patch_embed(mode='select', band_indices=...) to map bands (e.g. RGB into Sentinel-2)")
        raise CheckpointError(f"checkpoint {path}: {key} has shape {tuple(found.shape)}, the model expects "
                              f"{tuple(want.shape)}{hint}")


def _load(module: nn.Module, state: dict, path: Path, strict: bool, report: dict) -> dict:
    expected = module.state_dict()
    for key, value in state.items():
        if key in expected:
            _check_shape(key, value, expected[key], path)
    report.update(loaded=sorted(k for k in state if k in expected),
                  missing=sorted(k for k in expected if k not in state),
                  unexpected=sorted(k for k in state if k not in expected))
    if strict and (report["missing"] or report["unexpected"]):
        raise CheckpointError(f"checkpoint {path} ({report['format']}) does not match the model: "
                              f"missing {report['missing'][:8]}, unexpected {report['unexpected'][:8]}")
    module.load_state_dict({k: state[k] for k in report["loaded"]}, strict=False)
    if report.get("dropped"):
        log.info("%s: left out %d decoder/head keys", path, len(report["dropped"]))
    return report


def load_encoder(encoder: nn.Module, path: str | Path, strict: bool = True,
                 adapt_in_chans: Callable[[torch.Tensor, int], torch.Tensor] | str | None = None) -> dict:
    """Load the encoder part of any supported file into a ViTEncoder; returns a report of what happened.

    `adapt_in_chans(weight, in_chans)`, if given, turns a patch projection with another channel count into
    one for `in_chans` channels; a string is an `adapt_patch_embed` mode ("repeat" or "mean"). Without it a
    channel mismatch is a CheckpointError. The report holds format, loaded, missing, unexpected, dropped, resized.
    """
    if isinstance(adapt_in_chans, str):
        if adapt_in_chans not in ("repeat", "mean"):
            raise ConfigError(f"adapt_in_chans must be 'repeat', 'mean' or a function, got {adapt_in_chans!r} "
                              f"('select' needs band_indices: pass partial(adapt_patch_embed, mode='select', ...))")
        mode = adapt_in_chans
        adapt_in_chans = lambda weight, in_chans: adapt_patch_embed(weight, in_chans, mode)  # noqa: E731
    path = Path(path)
    state, fmt = read_state_dict(path)
    state, dropped = _encoder_state(state)
    state, resized = _fit_encoder(state, encoder, path, adapt_in_chans)
    return _load(encoder, state, path, strict, {"format": fmt, "dropped": dropped, "resized": resized})


ADAPT_MODES = ("repeat", "mean", "select")


def adapt_patch_embed(weight: torch.Tensor, in_chans: int, mode: str = "repeat",
                      band_indices: Sequence[int | None] | None = None) -> torch.Tensor:
    """A patch projection (D, C, *patch) rewritten for `in_chans` input channels, for checkpoints of another sensor.

    - "repeat": the C kernels repeated cyclically over the new channels and scaled by C / in_chans (timm's
      adapt_input_conv rule, for any C), so an image whose channels are all equal embeds as before when
      in_chans is a multiple of C.
    - "mean": every new channel gets the mean kernel scaled by C / in_chans: the same invariance, no channel order.
    - "select": new channel i takes checkpoint channel band_indices[i] unchanged, or a zero kernel for None
      (the channel starts out ignored): e.g. an RGB checkpoint in a Sentinel-2 encoder, B04/B03/B02 taking R/G/B.
    """
    if mode not in ADAPT_MODES:
        raise ConfigError(f"adapt_patch_embed mode must be one of {', '.join(ADAPT_MODES)}, got {mode!r}")
    if weight.ndim < 3:
        raise CheckpointError(f"expected a patch projection weight (D, C, *patch), got shape {tuple(weight.shape)}")
    if in_chans < 1:
        raise ConfigError(f"in_chans must be positive, got {in_chans}")
    source = weight.shape[1]
    if mode == "select":
        if band_indices is None or len(band_indices) != in_chans:
            raise ConfigError(f"mode 'select' needs band_indices with one entry (a checkpoint channel or None) per "
                              f"new channel: {in_chans}, got {None if band_indices is None else len(band_indices)}")
        bad = [i for i in band_indices if i is not None and not 0 <= i < source]
        if bad:
            raise ConfigError(f"band_indices {bad} are outside the checkpoint's {source} channel(s)")
        out = weight.new_zeros(weight.shape[0], in_chans, *weight.shape[2:])
        for new, old in enumerate(band_indices):
            if old is not None:
                out[:, new] = weight[:, old]
        return out
    if band_indices is not None:
        raise ConfigError(f"band_indices only apply to mode 'select', not {mode!r}")
    if mode == "mean":
        kernel = weight.float().mean(1, keepdim=True) * (source / in_chans)
        return kernel.expand(-1, in_chans, *([-1] * (weight.ndim - 2))).clone().to(weight.dtype)
    repeats = -(-in_chans // source)
    return (weight.float().repeat(1, repeats, *([1] * (weight.ndim - 2)))[:, :in_chans]
            * (source / in_chans)).to(weight.dtype)


def load_method_weights(method: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load a whole method (encoder and decoder) from a mimkit, Lightning or official-MAE file; returns a report."""
    path = Path(path)
    state, fmt = read_state_dict(path)
    state, dropped = _method_state(state)
    encoder_part = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    encoder_part, resized = _fit_encoder(encoder_part, method.encoder, path)
    state.update({"encoder." + k: v for k, v in encoder_part.items()})
    return _load(method, state, path, strict,
                 {"format": fmt, "dropped": dropped, "resized": ["encoder." + k for k in resized]})


# ---------------------------------------------------------------------------------------------- mimkit files
def save_method(method: nn.Module, path: str | Path, config: dict) -> Path:
    """Save a method's full state dict as safetensors, with its registry name and constructor config (JSON; the
    encoder's fields nested under "encoder"). Files with a flat config, written before, load too."""
    path = Path(path)
    name = getattr(method, "method_name", None)
    if name is None:
        raise ConfigError(f"{type(method).__name__} is not a registered method (no method_name); cannot save it")
    if path.suffix != ".safetensors":
        raise ConfigError(f"save path {path} must end in .safetensors")
    config = _stored_config(name, config)
    for key, value in config.items():
        try:
            json.dumps(value)
        except TypeError:
            raise ConfigError(f"config value {key}={value!r} ({type(value).__name__}) cannot be stored as JSON; "
                              f"pass plain numbers, strings and lists") from None
    state = _unshared(method.state_dict())
    metadata = {"format": "mimkit", "method": name, "config": json.dumps(config)}
    return write_atomically(path, lambda temporary: save_file(state, str(temporary), metadata=metadata), "weights")


def _stored_config(name: str, config: dict) -> dict:
    """A registered method's config as stored: its encoder fields (flat or not) as one nested "encoder" mapping."""
    from .encoders import EncoderConfig
    from .registry import list_methods, method_config  # late: the registry imports every methods package

    if name not in list_methods():
        return dict(config)
    config = method_config(name, config)
    return {k: (dict(vars(v)) if isinstance(v, EncoderConfig) else v) for k, v in config.items()}


def load_method(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a method saved by `save_method` and load its weights strictly: (method, config)."""
    from .registry import build_method  # late: the registry imports every methods package

    path = Path(path)
    state, fmt = read_state_dict(path)
    metadata = {}
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
    if metadata.get("format") != "mimkit" or "method" not in metadata:
        raise CheckpointError(f"checkpoint {path} ({fmt}) was not written by save_method, so it does not say which "
                              f"method to build; build the method yourself and use load_method_weights / load_encoder")
    try:
        config = json.loads(metadata.get("config", "{}"))
        # files a run keeps inside itself (a teacher's weights) are stored relative to it: the folder may have moved
        build = {k: str(path.parent / v) if k.endswith("weights") and isinstance(v, str) and v
                 and not Path(v).is_absolute() and (path.parent / v).is_file() else v for k, v in config.items()}
        method = build_method(metadata["method"], **build)
    except (ValueError, ConfigError) as error:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild method {metadata['method']!r}: {error}") from None
    _load(method, state, path, True, {"format": fmt})
    return method, config


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied weights): clone every repeat, make all contiguous."""
    seen, out = set(), {}
    for key, value in state.items():
        value = value.detach()
        storage = (value.untyped_storage().data_ptr(), value.device)
        out[key] = value.clone().contiguous() if storage in seen else value.contiguous()
        seen.add(storage)
    return out


# ---------------------------------------------------------------------------------------------- timm export
def export_timm(source: nn.Module | str | Path, out_path: str | Path) -> Path:
    """Write an encoder's timm-format state dict (.safetensors, or .pth/.pt/.bin via torch.save)."""
    out_path = Path(out_path)
    if isinstance(source, (str, Path)):
        state, fmt = read_state_dict(source)
        state = _encoder_state(state)[0]
    elif isinstance(getattr(source, "encoder", None), nn.Module):
        state = source.encoder.state_dict()
    elif isinstance(source, nn.Module):
        state = source.state_dict()
    else:
        raise ConfigError(f"export_timm takes a method, an encoder or a checkpoint path, got {type(source).__name__}")
    weight = state.get("patch_embed.proj.weight")
    if weight is None or weight.ndim != 4:
        raise ConfigError("only a 2D ViT encoder with a plain patch embedding can be exported to timm "
                          f"(patch_embed.proj.weight: {None if weight is None else tuple(weight.shape)})")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".safetensors":
        save_file(_unshared(state), str(out_path), metadata={"format": "timm"})
    elif out_path.suffix in (".pth", ".pt", ".bin"):
        torch.save({k: v.detach().contiguous() for k, v in state.items()}, out_path)
    else:
        raise ConfigError(f"export path {out_path} must end in .safetensors, .pth, .pt or .bin")
    return out_path


def timm_kwargs(encoder: nn.Module) -> dict:
    """Arguments for `timm.create_model('vit_base_patch16_224', **timm_kwargs(encoder))` matching the encoder."""
    block = encoder.blocks[0]
    has_cls = getattr(encoder, "cls_token", None) is not None
    return dict(num_classes=0, img_size=tuple(encoder.img_size), patch_size=tuple(encoder.patch_size),
                in_chans=encoder.in_chans, embed_dim=encoder.embed_dim, depth=len(encoder.blocks),
                num_heads=encoder.num_heads, mlp_ratio=block.mlp.fc1.out_features / encoder.embed_dim,
                qkv_bias=block.attn.qkv.bias is not None, class_token=has_cls,
                init_values=getattr(encoder, "layer_scale", None),  # timm makes ls1 / ls2.gamma when set
                global_pool="token" if has_cls else "avg", fc_norm=False)  # mimkit norms before pooling


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
