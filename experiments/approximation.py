"""How close do Performer, Linformer and Nyströmformer get to exact softmax attention?

Relative error ‖A(q, k, v) − softmax(q kᵀ/√d) v‖ / ‖softmax(q kᵀ/√d) v‖ for
- Performer (FAVOR+) as the number of random features m grows,
- Linformer as its rank k grows, with fixed segment-mean projections (E = F average k equal
  segments of the sequence; exact at k = N). Untrained random projections are far worse (their
  error is > 1 at every k here); trained ones can do better than segment means, and
- Nyströmformer as its number of landmarks m grows (segment means of q and k, the backend's
  default 6 pseudo-inverse iterations; exact at m = N with an exact pseudo-inverse),
at several query/key scales σ (q, k ~ N(0, σ²); larger σ = peakier attention).

    python experiments/approximation.py --out results/approximation

writes approximation.csv, approximation.md and approximation.png.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from attention_arena.attention import reference_attention
from attention_arena.attention.linformer import linformer_attention, segment_means
from attention_arena.attention.nystrom import nystrom_attention
from attention_arena.attention.performer import favor_attention, orthogonal_random_features

# method -> (its size's symbol, what the size means)
METHODS = {"performer": ("m", "random features m"),
           "linformer": ("k", "projection rank k (segment means)"),
           "nystrom": ("m", "landmarks m (segment means)")}


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx - exact).norm() / exact.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results/approximation"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    rows = []
    N, d = args.length, args.head_dim
    for sigma in args.sigmas:
        for size in args.sizes:
            perf, lin, nys = [], [], []
            for seed in range(args.seeds):
                g = torch.Generator().manual_seed(seed)
                q, k = (torch.randn(1, args.heads, N, d, generator=g) * sigma for _ in range(2))
                v = torch.randn(1, args.heads, N, d, generator=g)
                exact = reference_attention(q, k, v)
                w = orthogonal_random_features(size, d, g)
                perf.append(relative_error(favor_attention(q, k, v, w), exact))
                if size <= N:
                    e = segment_means(N, size)
                    lin.append(relative_error(linformer_attention(q, k, v, e, e), exact))
                    nys.append(relative_error(nystrom_attention(q, k, v, size), exact))
            rows.append({"sigma": sigma, "size": size, "performer_error": mean(perf),
                         "linformer_error": mean(lin), "nystrom_error": mean(nys)})
            print(f"sigma={sigma:<5} size={size:<5} "
                  + "  ".join(f"{m} {rows[-1][f'{m}_error']:.3f}" for m in METHODS))

    with open(args.out / "approximation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    sizes = args.sizes
    lines = [f"Relative error vs exact softmax (N={N}, d={d}, mean of {args.seeds} seeds)", "",
             "| method | σ | " + " | ".join(f"{s}" for s in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for method, (symbol, _) in METHODS.items():
        for sigma in args.sigmas:
            errs = [r[f"{method}_error"] for r in rows if r["sigma"] == sigma]
            lines.append(f"| {method} ({symbol}) | {sigma} | "
                         + " | ".join(f"{e:.3f}" for e in errs) + " |")
    (args.out / "approximation.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METHODS), figsize=(5 * len(METHODS), 4), sharey=True)
    for ax, (method, (_, label)) in zip(axes, METHODS.items(), strict=True):
        for sigma in args.sigmas:
            # Linformer and Nyström at size N are (nearly) exact: left out so the axis stays
            # readable
            pts = [(r["size"], r[f"{method}_error"]) for r in rows
                   if r["sigma"] == sigma and (method == "performer" or r["size"] < N)]
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"σ = {sigma}")
        ax.set(xscale="log", yscale="log", xlabel=label, title=method.capitalize())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("relative error vs softmax")
    fig.suptitle(f"Approximation error of softmax attention, N={N}, d={d}")
    fig.tight_layout()
    fig.savefig(args.out / "approximation.png", dpi=120)
    print(f"wrote {args.out}/approximation.{{csv,md,png}}")


if __name__ == "__main__":
    main()
