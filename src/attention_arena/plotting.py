"""Shared matplotlib helpers for ``arena-bench`` and ``arena-compare`` (headless, PNG only).

One colour per attention backend everywhere (by registry order, so a new backend gets its own
without an edit here), so a backend looks the same in every figure; public implementations reuse
their method's colour with a dashed line.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

# Qualitative colours, tab10 first: backend i of the registry (sorted names) gets colour i.
PALETTE = list(mcolors.TABLEAU_COLORS) + [mcolors.to_hex(c) for c in plt.get_cmap("tab20b").colors]
_PEER_MARKERS = ["s", "^", "v", "D", "P", "X"]


def method_colour(name: str) -> str:
    """The colour of a backend: its index in :func:`available_attentions`, so every registered
    backend has its own; a name outside the registry gets one of the rest (by a stable hash)."""
    from attention_arena.attention import available_attentions

    names = available_attentions()
    if name in names:
        return PALETTE[names.index(name) % len(PALETTE)]
    rest = PALETTE[len(names):] or PALETTE
    return rest[zlib.crc32(name.encode()) % len(rest)]


def line_style(name: str, peer: int = 0) -> dict:
    """Matplotlib kwargs (color, linestyle, marker) for a backend (``"full"``, or a label such as
    ``"full (bbc)"``). ``peer`` = i >= 1: the i-th public implementation of that backend, drawn
    in its colour with a dashed line and its own marker."""
    colour = method_colour(name.split(" ")[0])  # "full (bbc)" -> "full"
    if not peer:
        return {"color": colour, "linestyle": "-", "marker": "o"}
    return {"color": colour, "linestyle": "--",
            "marker": _PEER_MARKERS[(peer - 1) % len(_PEER_MARKERS)]}


def _int_ticks(value: float, _pos: int) -> str:
    return f"{int(value)}" if value >= 1 and float(value).is_integer() else f"{value:g}"


def setup_length_axis(ax, lengths) -> None:
    """Log2 x axis with the sequence lengths as plain tick labels."""
    ax.set_xscale("log", base=2)
    ticks = sorted({int(n) for n in lengths})
    if ticks:
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(_int_ticks))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    ax.set_xlabel("sequence length N (tokens)")
    ax.grid(True, which="major", alpha=0.3)


def plain_log_y(ax) -> None:
    """Log y axis labelled with plain numbers (12, 100, 2000) instead of powers of ten."""
    ax.set_yscale("log")
    def fmt(v: float, _pos=None) -> str:
        return f"{v:,.0f}" if v >= 1 else f"{v:g}"

    def minor(v: float, _pos=None) -> str:  # label only 2·10^k and 5·10^k between decades
        lead = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        return fmt(v) if lead in (2, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(fmt))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def save_figure(fig, path: str | Path) -> Path:
    """Save as PNG (dpi 120, tight) and close the figure; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def subplots(ncols: int, width: float = 5.5, height: float = 4.2):
    """A 1 × ``ncols`` figure; returns (fig, list of axes)."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])
