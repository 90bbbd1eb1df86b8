"""The self-contained ``explain.html``: shaded words, probabilities and attention images.

Everything is in one file (images as base64 PNG data URIs, inline CSS, no network); the PNGs
are also written beside it. A small inline script records, once the page has loaded, how many
images decoded (``#image-check``, ``data-natural-width`` on every image), so a headless browser's
DOM dump shows whether the page really rendered.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import torch

from .attributions import Explanation
from .run import Run

METHOD_TITLES = {
    "attention": "Attention to the pooled output (last layer, heads averaged)",
    "rollout": "Attention rollout to the pooled output (all layers)",
    "ig": "Integrated Gradients (token embedding, PAD baseline)",
    "shap": "KernelSHAP (words removed)",
    "lime": "LIME (words removed, ridge)",
}

CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.runs { display: flex; gap: 1.5em; align-items: flex-start; }
.run { flex: 1; min-width: 0; }
.doc { line-height: 1.9; border: 1px solid #ddd; padding: .6em; max-height: 30em;
       overflow-y: auto; white-space: pre-wrap; }
.w { border-radius: 3px; padding: 0 1px; }
.unseen { color: #999; }
table.probs td { padding: 0 .6em; }
.bar { display: inline-block; height: .8em; background: #4a7; }
img { max-width: 100%; height: auto; }
.note { color: #666; font-size: 90%; }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img'), ok = 0;
  imgs.forEach(function (im) {
    im.setAttribute('data-natural-width', im.naturalWidth);
    if (im.complete && im.naturalWidth > 0) { ok += 1; }
  });
  document.getElementById('image-check').textContent =
    'images decoded: ' + ok + '/' + imgs.length;
});
"""


def shade(score: float, scale: float) -> str:
    """Background colour: red for evidence for the predicted class, blue against."""
    a = 0.0 if scale <= 0 else min(abs(score) / scale, 1.0)
    rgb = "220, 50, 47" if score >= 0 else "38, 110, 200"
    return f"rgba({rgb}, {0.85 * a:.3f})"


def shaded_text(ex: Explanation, method: str) -> str:
    """The document as HTML, each word shaded by ``method``'s score (text past the model's
    input length greyed)."""
    doc, scores = ex.document, ex.words[method]
    scale = float(scores.abs().max()) if len(scores) else 0.0
    parts, pos = [], 0
    for i, (start, end) in enumerate(doc.words):
        parts.append(html.escape(doc.text[pos:start]))
        s = float(scores[i])
        parts.append(f'<span class="w" style="background:{shade(s, scale)}" '
                     f'title="{s:+.4g}">{html.escape(doc.text[start:end])}</span>')
        pos = end
    rest = doc.text[pos:]
    if rest.strip():
        parts.append(f'<span class="unseen" title="past the model\'s input length">'
                     f'{html.escape(rest)}</span>')
    else:
        parts.append(html.escape(rest))
    return "".join(parts)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def heatmap_png(weights: torch.Tensor, title: str) -> bytes:
    """A (N, N) map as a PNG heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    im = ax.imshow(weights.float().numpy(), cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def to_pooled_png(maps: list[torch.Tensor], pooling: str, title: str) -> bytes:
    """Attention to the pooled output per layer (heads averaged) over key positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    for i, m in enumerate(maps):
        mean = m.mean(0)
        row = mean[0] if pooling == "cls" else mean.mean(0)
        ax.plot(row.float().numpy(), lw=0.8, label=f"layer {i}")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key position (0 = CLS)")
    ax.set_ylabel("weight")
    ax.legend(fontsize=7)
    return _png(fig)


def _img(data: bytes, alt: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def run_images(run: Run, ex: Explanation, out: Path, layer: int | None = None,
               head: int | None = None) -> list[tuple[str, str]]:
    """Write the run's PNGs into ``out``; (alt text, <img> tag) for each."""
    maps = ex.maps
    layers = range(len(maps)) if layer is None else [layer]
    if layer is not None and not 0 <= layer < len(maps):
        raise ValueError(f"--layer {layer} is out of range: the model has {len(maps)} layers "
                         f"(0 .. {len(maps) - 1})")
    heads = maps[0].shape[0]
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"--head {head} is out of range: the model has {heads} heads "
                         f"(0 .. {heads - 1})")
    images = []
    pooled = "CLS" if run.model.pooling == "cls" else "mean-pooled output"
    stem = run.name
    for i in layers:
        m = maps[i].mean(0) if head is None else maps[i][head]
        which = "mean over heads" if head is None else f"head {head}"
        alt = f"{run.backend}: layer {i} attention ({which})"
        data = heatmap_png(m, alt)
        name = f"{stem}_layer{i}" + ("" if head is None else f"_head{head}") + ".png"
        (out / name).write_bytes(data)
        images.append((alt, _img(data, alt)))
    alt = f"{run.backend}: attention to the {pooled} per layer"
    data = to_pooled_png(maps, run.model.pooling, alt)
    (out / f"{stem}_attention_to_pooled.png").write_bytes(data)
    images.append((alt, _img(data, alt)))
    return images


def run_section(run: Run, ex: Explanation, images: list[tuple[str, str]]) -> str:
    """One run's column: header, probabilities, shaded texts per method, images."""
    names = run.class_names
    rows = "".join(
        f"<tr><td>{html.escape(names[c])}</td><td>{float(p):.4f}</td>"
        f'<td><span class="bar" style="width:{100 * float(p):.0f}px"></span></td></tr>'
        for c, p in enumerate(ex.probabilities))
    label = ex.document.label
    truth = ("" if label is None else
             f"<p>True label: <b>{html.escape(names[label])}</b></p>")
    parts = [f'<div class="run"><h2>{html.escape(run.backend)} '
             f'<span class="note">({html.escape(run.name)})</span></h2>',
             f"<p>Predicted: <b>{html.escape(names[ex.target])}</b> "
             f"({float(ex.probabilities[ex.target]):.3f})</p>", truth,
             f'<table class="probs">{rows}</table>',
             f'<p class="note">checkpoint {html.escape(run.checkpoint.name)}; '
             f"{len(ex.document.ids)} tokens after CLS, {ex.document.num_words} words; "
             + ", ".join(f"{m} {s:.1f} s" for m, s in ex.seconds.items()) + "</p>"]
    if ex.ig_delta is not None:
        parts.append(f'<p class="note">IG completeness: sum of attributions − (f(x) − '
                     f"f(baseline)) = {ex.ig_delta:+.2e} (f(x) − f(baseline) = "
                     f"{ex.ig_gap:+.4f})</p>")
    for method in ex.words:
        parts.append(f'<h3>{html.escape(METHOD_TITLES.get(method, method))}</h3>'
                     f'<div class="doc" data-method="{method}">{shaded_text(ex, method)}</div>')
    parts.append("<h3>Attention maps</h3>")
    parts.extend(f"<figure>{tag}<figcaption>{html.escape(alt)}</figcaption></figure>"
                 for alt, tag in images)
    parts.append("</div>")
    return "\n".join(parts)


def write_report(explanations: list[tuple[Run, Explanation]], out_dir: str | Path,
                 layer: int | None = None, head: int | None = None) -> Path:
    """Write ``explain.html`` (one column per run) and the PNGs into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = [run_section(run, ex, run_images(run, ex, out, layer, head))
                for run, ex in explanations]
    doc = explanations[0][1].document
    title = f"Why the model decided: {doc.source}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">Red: evidence for the predicted class, blue: against (each method scaled to
its largest score; hover a word for its value). Grey text lies past the model's input length.
</p>
<p id="image-check">images not checked (scripts off)</p>
<div class="runs">
{"".join(sections)}
</div>
<script>{SCRIPT}</script>
</body></html>
"""
    path = out / "explain.html"
    path.write_text(page, encoding="utf-8")
    return path
