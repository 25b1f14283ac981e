"""One registry of methods: `build_method(name, **config)`, `list_methods()`.

Methods register themselves with `@register_method("name")` when their module is imported; the core
and every domain subpackage's `methods` package are imported on first use.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import fields
from typing import Callable, Mapping

from torch import nn

from .errors import ConfigError

_METHODS: dict[str, type[nn.Module]] = {}
_METHOD_PACKAGES = (
    "mimkit.core.methods", "mimkit.medical.methods", "mimkit.remote_sensing.methods",
    "mimkit.faces.methods", "mimkit.multimodal.methods",
)
_loaded = False


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: make a method buildable by `name`."""
    def wrap(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ConfigError(f"method name {name!r} is registered twice ({_METHODS[name].__module__}, {cls.__module__})")
        _METHODS[name] = cls
        cls.method_name = name
        return cls
    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package in _METHOD_PACKAGES:
        if importlib.util.find_spec(package.rsplit(".", 1)[0]) and importlib.util.find_spec(package):
            importlib.import_module(package)


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    _load_all()
    return sorted(_METHODS)


def method_class(name: str) -> type[nn.Module]:
    _load_all()
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}") from None


def method_config(name: str, config: dict) -> dict:
    """A method's constructor keywords with the encoder fields folded into one EncoderConfig under "encoder".

    Flat encoder fields (`img_size=32, embed_dim=64`), an `encoder` mapping of some fields, or an EncoderConfig
    are all accepted; fields not given keep the method's default encoder (its paper's). A field given both flat
    and in `encoder` is an error.
    """
    from .encoders import ENCODER_FIELDS, EncoderConfig, encoder_config

    params = inspect.signature(method_class(name).__init__).parameters
    if "encoder" not in params:
        return dict(config)
    config = dict(config)
    given = config.pop("encoder", None)
    flat = {k: config.pop(k) for k in list(config) if k in ENCODER_FIELDS and k not in params}
    default = params["encoder"].default
    if isinstance(given, EncoderConfig):
        both = sorted(flat)
    elif isinstance(given, Mapping):
        both = sorted(set(flat) & set(given))
    elif given is None:
        both = []
    else:
        raise ConfigError(f"method {name!r}: encoder must be an EncoderConfig or a mapping of its fields, "
                          f"got {type(given).__name__}")
    if both:
        raise ConfigError(f"method {name!r}: {', '.join(both)} given both as flat argument(s) and in encoder; "
                          f"give each once")
    base = default if isinstance(default, EncoderConfig) else None
    config["encoder"] = encoder_config(encoder_config(given, base), **flat)
    return config


def build_method(name: str, **config) -> nn.Module:
    """Build a registered method from keyword arguments (unknown arguments are a clear error).

    Encoder fields may be given flat (`build_method("mae", img_size=32, embed_dim=64)`) or as `encoder`
    (an EncoderConfig or a mapping of some of its fields); see `method_config`.
    """
    cls = method_class(name)
    config = method_config(name, config)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(config) - set(params))
        if unknown:
            raise ConfigError(f"method {name!r} has no argument(s) {', '.join(unknown)}; it takes: "
                              f"{', '.join(method_arguments(name))} (encoder fields also flat: embed_dim=...)")
    return cls(**config)


def method_arguments(name: str) -> dict[str, object]:
    """A method's constructor arguments and their defaults (for `mimkit methods` and recipes); the encoder's
    fields appear as `encoder.<field>` with the method's default encoder."""
    from .encoders import EncoderConfig

    params = inspect.signature(method_class(name).__init__).parameters
    out = {}
    for key, p in params.items():
        if key == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if isinstance(p.default, EncoderConfig):
            out.update({f"{key}.{field.name}": getattr(p.default, field.name) for field in fields(p.default)})
        else:
            out[key] = None if p.default is p.empty else p.default
    return out
