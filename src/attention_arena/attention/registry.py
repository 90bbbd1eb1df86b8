"""The attention registry: a backend is one module with one ``@register_attention`` decorator.

Backends are found in three places, in this order:

1. every module of this package (imported once, so their decorators run);
2. every entry point of the group ``attention_arena.backends`` of installed packages, e.g. in the
   user's ``pyproject.toml``: ``[project.entry-points."attention_arena.backends"]
   my_attention = "my_pkg.my_attention"`` (the module is imported; its decorator registers it);
3. modules named explicitly: :func:`import_modules` (``arena-train imports=[my_pkg.my_attention]``,
   ``arena-bench --import my_pkg.my_attention``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points

from torch import nn

ENTRY_POINT_GROUP = "attention_arena.backends"

_REGISTRY: dict[str, type[nn.Module]] = {}
_DISCOVERED = False


def register_attention(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes a backend available as ``build_attention(name, ...)``.

    The class must subclass :class:`~attention_arena.attention.SelfAttention`.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        from .base import SelfAttention

        if not (isinstance(cls, type) and issubclass(cls, SelfAttention)):
            raise TypeError(
                f"@register_attention({name!r}) decorates {cls!r}, which is not a subclass of "
                "attention_arena.attention.SelfAttention; subclass it and implement attend()"
            )
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"attention backend {name!r} is already registered by "
                f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}; pick another name"
            )
        cls.backend_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def import_modules(modules: Iterable[str]) -> None:
    """Import modules that register backends; a clear error for one that cannot be imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(
                f"cannot import {module!r}, named to register attention backends ({err}); "
                "check the module path and that its package is installed"
            ) from err


def _discover() -> None:
    """Import this package's modules and the installed entry points once (no list to edit)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:
            raise ImportError(
                f"the {ENTRY_POINT_GROUP!r} entry point {ep.name} = {ep.value!r} of package "
                f"{ep.dist.name if ep.dist else '?'} failed to load: {type(err).__name__}: {err}"
            ) from err


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
            f"(a new one: @register_attention in a module of attention_arena.attention, an "
            f"{ENTRY_POINT_GROUP!r} entry point of your package, or imports=[your.module])"
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
