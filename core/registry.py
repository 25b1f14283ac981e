"""One registry of methods: `build_method(name, **config)`, `list_methods()`.

Methods register themselves with `@register_method("name")` when their module is imported; the core
and every domain subpackage's `methods` package are imported on first use.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Callable

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


def build_method(name: str, **config) -> nn.Module:
    """Build a registered method from keyword arguments (unknown arguments are a clear error)."""
    cls = method_class(name)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(config) - set(params))
        if unknown:
            allowed = ", ".join(p for p in params if p != "self")
            raise ConfigError(f"method {name!r} has no argument(s) {', '.join(unknown)}; it takes: {allowed}")
    return cls(**config)


def method_arguments(name: str) -> dict[str, object]:
    """A method's constructor arguments and their defaults (for `mimkit methods` and recipes)."""
    params = inspect.signature(method_class(name).__init__).parameters
    return {k: (None if p.default is p.empty else p.default) for k, p in params.items()
            if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
