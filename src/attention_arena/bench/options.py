"""The options each benchmarked backend is built with, and the two ways to change them.

Defaults come from the backend's training config ``conf/attention/<name>.yaml`` (the one source of
truth: ``arena-train attention=<name>`` reads the same file, from this package or from a package
declared under the ``attention_arena.configs`` entry point); values that the training config
derives from the data by interpolation (linformer's ``max_len``) become the benchmarked length N.
A backend without a YAML falls back to its constructor's keyword defaults.

Two override forms, applied in this order on top of the defaults:

- ``attention.KEY=VALUE`` (:func:`parse_overrides`), the syntax of ``arena-train``: to every
  benchmarked backend that has the option ``KEY``;
- ``--opt BACKEND.KEY=VALUE`` (:func:`parse_opts`): to one backend (or peer) only.

Values are parsed by Hydra's override grammar in both: ``128``, ``1e-4``, ``true``, ``null``,
``[1,2]``, ``abc``.
"""

from __future__ import annotations

import inspect
import re
from importlib import resources
from importlib.metadata import entry_points
from typing import Any

from omegaconf import DictConfig, OmegaConf

# set by the bench itself (sizes), never a backend option
BENCH_ARGS = ("embed_dim", "num_heads")
# constructor arguments that are not the method's own: valid options, but not listed as defaults
COMMON_ARGS = ("dropout", "bias")


def attention_config(name: str) -> DictConfig | None:
    """The training config of backend ``name``, found where ``arena-train attention=<name>``
    finds it: ``conf/attention/<name>.yaml`` of this package, else of a package declared under the
    ``attention_arena.configs`` entry point. None if there is none."""
    from attention_arena.train import CONF_DIR
    from hydra_plugins.attention_arena_configs import ENTRY_POINT_GROUP

    candidates = [CONF_DIR / "attention" / f"{name}.yaml"]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            candidates.append(resources.files(ep.value) / "attention" / f"{name}.yaml")
        except ModuleNotFoundError:  # a broken entry point: Hydra's search path skips it too
            continue
    for path in candidates:
        if path.is_file():
            return OmegaConf.create(path.read_text())
    return None


def _constructor_params(cls) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p for p in params
            if p.name != "self" and p.name not in BENCH_ARGS
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _backend_class(name: str):
    from attention_arena.attention import available_attentions, get_attention_class

    return get_attention_class(name) if name in available_attentions() else None


def default_options(name: str, seq_len: int) -> dict[str, Any]:
    """Options of backend ``name`` at length ``seq_len``: its YAML (interpolations -> seq_len),
    else its constructor's keyword defaults (``dropout``/``bias`` left out), else ``{}``."""
    cfg = attention_config(name)
    if cfg is not None:
        raw = OmegaConf.to_container(cfg, resolve=False)
        return {key: seq_len if OmegaConf.is_interpolation(cfg, key) else value
                for key, value in raw.items() if key != "name"}
    cls = _backend_class(name)
    if cls is None:
        return {}
    return {key: p.default for key, p in _constructor_params(cls).items()
            if p.default is not p.empty and key not in COMMON_ARGS}


def valid_options(name: str) -> list[str]:
    """Every option backend ``name`` takes: its constructor keywords and its YAML keys."""
    cls = _backend_class(name)
    keys = set(_constructor_params(cls)) if cls is not None else set()
    cfg = attention_config(name)
    if cfg is not None:
        keys |= set(cfg) - {"name"}
    return sorted(keys)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

def _parse(expr: str, item: str | None = None):
    """``expr`` in Hydra's override grammar (a hydra Override); a ValueError quoting ``item``
    (default ``expr``), the user's text, for bad syntax or a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    item = item or expr
    try:
        override = OverridesParser.create().parse_override(expr)
    except HydraException as err:
        raise ValueError(f"bad override {item!r}: {err}") from None
    if override.is_sweep_override():
        raise ValueError(f"{item!r} is a sweep; arena-bench takes one value per option "
                         "(run it once per value)")
    return override


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["attention.k=128", "attention.init=uniform"]`` -> ``{"k": 128, "init": "uniform"}``.

    The ``arena-train`` syntax, parsed by Hydra (``+``/``++`` prefixes accepted); a later item
    wins. Anything but ``attention.KEY=VALUE`` is a ValueError saying what to use instead."""
    from hydra.core.override_parser.types import OverrideType

    out: dict[str, Any] = {}
    for item in items or []:
        override = _parse(item)
        group, _, key = override.key_or_group.partition(".")
        if group != "attention" or not key or "." in key or override.package is not None:
            hint = ("pick backends with --backends" if override.key_or_group == "attention"
                    else "lengths: --lengths; sizes: --heads, --head-dim, --batch")
            raise ValueError(f"bad override {item!r}: arena-bench takes attention.KEY=VALUE "
                             f"(e.g. attention.k=128); {hint}")
        if override.type is OverrideType.DEL:
            raise ValueError(f"bad override {item!r}: options cannot be removed; set a value "
                             f"instead (attention.{key}=VALUE)")
        out[key] = override.value()
    return out


_OPT = re.compile(r"([^.=\s]+)\.([A-Za-z_]\w*)=(.*)", re.DOTALL)


def parse_opts(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["linformer.k=128", "peer:performer.num_features=64"]`` ->
    ``{"linformer": {"k": 128}, "peer:performer": {"num_features": 64}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        m = _OPT.fullmatch(item.strip())
        if m is None:
            raise ValueError(f"bad --opt {item!r}: expected BACKEND.KEY=VALUE, "
                             "e.g. --opt linformer.k=128")
        backend, key, text = m.groups()
        out.setdefault(backend, {})[key] = _parse(f"{key}={text}", f"--opt {item}").value()
    return out


# --------------------------------------------------------------------------------------------
# Checking and merging
# --------------------------------------------------------------------------------------------

def _listing(valid: dict[str, list[str]]) -> str:
    return "; ".join(f"{name}: {', '.join(keys) or '(none)'}" for name, keys in valid.items())


def resolve_options(
    backends: list[str],
    overrides: dict[str, Any] | None,
    opts: dict[str, dict[str, Any]] | None,
    valid: dict[str, list[str]],
) -> dict[str, dict[str, Any]]:
    """Per-backend option changes: ``overrides`` go to every backend of ``backends`` that has
    the key, then ``opts`` (per backend or peer) on top. ``valid`` maps every benchmarked name
    (backends and peers) to its options. A key no backend has, or an ``--opt`` for a name that is
    not benchmarked or an option it lacks, is a ValueError naming the valid choices."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in (overrides or {}).items():
        takers = [b for b in backends if key in valid[b]]
        if not takers:
            raise ValueError(f"attention.{key}: none of the benchmarked backends has an option "
                             f"{key!r}; valid options: "
                             f"{_listing({b: valid[b] for b in backends})}")
        for b in takers:
            out.setdefault(b, {})[key] = value
    for name, changes in (opts or {}).items():
        if name not in valid:
            raise ValueError(f"--opt {name}.{next(iter(changes))}: {name!r} is not benchmarked "
                             f"here; benchmarked: {', '.join(valid)} (peers need --peers)")
        bad = sorted(set(changes) - set(valid[name]))
        if bad:
            raise ValueError(f"--opt {name}.{bad[0]}: {name} has no option {bad[0]!r}; valid "
                             f"options: {_listing({name: valid[name]})}")
        out.setdefault(name, {}).update(changes)
    return out
