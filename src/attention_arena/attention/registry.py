"""The attention registry: a backend is one module with one ``@register_attention`` decorator."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}
_DISCOVERED = False


def register_attention(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes a backend available as ``build_attention(name, ...)``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"attention backend {name!r} is already registered by "
                f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}; pick another name"
            )
        cls.backend_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _discover() -> None:
    """Import every module of this package once, so their decorators run (no list to edit)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")
    _DISCOVERED = True


def available_attentions() -> list[str]:
    """Names of every registered backend, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_attention_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; a clear error listing the valid names otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown attention backend {name!r}; valid names: {', '.join(sorted(_REGISTRY))} "
            "(register a new one with @register_attention in src/attention_arena/attention/)"
        )
    return _REGISTRY[name]


def build_attention(name: str, **kwargs) -> nn.Module:
    """Build a backend by name: ``build_attention("longformer", embed_dim=256, num_heads=4)``."""
    cls = get_attention_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        import inspect

        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise TypeError(
            f"attention {name!r}: {err}. Valid options: {', '.join(params)}"
        ) from err
