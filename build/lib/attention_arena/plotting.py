"""Shared matplotlib helpers for ``arena-bench`` and ``arena-compare`` (headless, PNG only).

One colour per attention method everywhere, so a backend looks the same in every figure; public
peer implementations (``peer:*``) reuse their method's colour with a dashed line.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

_METHOD_COLOURS = {
    "full": "tab:blue",
    "linformer": "tab:orange",
    "longformer": "tab:green",
    "performer": "tab:red",
}
_OTHER_COLOURS = ["tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]

# peer name -> the method of ours it implements (used for colours and ratios)
PEER_METHOD = {
    "peer:linformer": "linformer",
    "peer:performer": "performer",
    "peer:local-attention": "longformer",
    "peer:longformer-hf": "longformer",
}
_PEER_MARKERS = {"peer:local-attention": "^", "peer:longformer-hf": "v"}


def line_style(name: str) -> dict:
    """Matplotlib kwargs (color, linestyle, marker) for a backend or peer name."""
    peer = name.startswith("peer:")
    method = PEER_METHOD.get(name, name.split(":", 1)[-1]) if peer else name
    base = method.split(" ")[0]  # "full (bbc)" -> "full"
    colour = _METHOD_COLOURS.get(base)
    if colour is None:
        colour = _OTHER_COLOURS[sum(map(ord, base)) % len(_OTHER_COLOURS)]
    return {
        "color": colour,
        "linestyle": "--" if peer else "-",
        "marker": _PEER_MARKERS.get(name, "s" if peer else "o"),
    }


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
