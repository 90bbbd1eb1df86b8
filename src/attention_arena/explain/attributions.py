"""Word attributions for one document: Integrated Gradients, KernelSHAP, LIME, attention.

Every method scores the W words of a :class:`~.run.Document` for the predicted class's
probability (positive = evidence for it):

- ``ig``: Captum ``LayerIntegratedGradients`` on the token embedding, from a baseline where
  every document token is PAD's embedding (CLS and the positions stay, and no token is masked,
  so the path is a straight line in embedding space); token attributions are summed into
  words. Completeness: the sum is f(x) − f(baseline) up to the integral's error (reported).
- ``shap`` / ``lime``: Captum ``KernelShap`` and ``Lime`` with one feature per word; a word is
  removed by turning its tokens into PAD *and masking them* (the model never sees it). LIME
  fits a ridge regression, weighting samples by exp(−(d / 0.25)²) with d the cosine distance of
  the kept-word vector to all-ones (the original LIME text explainer's kernel).
- ``attention``: the last layer's attention to the pooled output (the CLS row, or the mean of
  the real rows for mean pooling), averaged over heads; ``rollout``: attention rollout through
  all layers (:func:`~.maps.attention_rollout`). Both summed into words.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..data.tokenizer import PAD_ID
from .maps import attention_rollout, record_attention
from .run import Document, Run

METHODS = ("attention", "rollout", "ig", "shap", "lime")
"""Every method :func:`explain` knows, in display order."""


def to_words(token_scores: Tensor, word_of: Tensor, num_words: int) -> Tensor:
    """Sum token scores (L,) into word scores (W,) (``word_of`` (L,): the word of each token)."""
    out = torch.zeros(num_words, dtype=token_scores.dtype)
    return out.index_add_(0, word_of, token_scores)


@dataclass
class Explanation:
    """What :func:`explain` found for one document and one run."""

    document: Document
    probabilities: Tensor  # (C,)
    target: int  # the predicted class
    words: dict[str, Tensor] = field(default_factory=dict)  # method -> (W,)
    maps: list[Tensor] = field(default_factory=list)  # per layer (H, N, N), N = 1 + L
    seconds: dict[str, float] = field(default_factory=dict)
    ig_delta: float | None = None  # sum of IG attributions − (f(x) − f(baseline))
    ig_gap: float | None = None  # f(x) − f(baseline)

    @property
    def predicted(self) -> int:
        return self.target


# ----------------------------------------------------------------------------- attention
def attention_scores(run: Run, doc: Document) -> tuple[list[Tensor], Tensor, Tensor]:
    """The maps of every layer (H, 1+L, 1+L), the last layer's attention to the pooled output
    (L,) and the rollout to it (L,), both over the document tokens (CLS left out)."""
    with torch.no_grad(), record_attention(run.model) as maps:
        run.logits(doc.ids[None])
    maps = [m[0] for m in maps]  # (H, N, N) per layer
    last = maps[-1].mean(0)  # (N, N), heads averaged
    pooled = last[0] if run.model.pooling == "cls" else last.mean(0)
    rollout = attention_rollout([m[None] for m in maps], pooling=run.model.pooling)[0]
    return maps, pooled[1:], rollout[1:]


# ----------------------------------------------------------------------------- gradients
def integrated_gradients(run: Run, doc: Document, target: int, n_steps: int = 50,
                         internal_batch_size: int | None = 25) -> tuple[Tensor, float, float]:
    """IG token attributions (L,) for class ``target``, the completeness error (sum −
    (f(x) − f(baseline))) and f(x) − f(baseline), f = the class probability."""
    from captum.attr import LayerIntegratedGradients

    ids = doc.ids[None]  # (1, L)
    real = torch.zeros_like(ids, dtype=torch.bool)  # nothing masked, on the whole path

    def forward(ids: Tensor, padding_mask: Tensor) -> Tensor:
        return run.probabilities(ids, padding_mask)

    lig = LayerIntegratedGradients(forward, run.model.tok_emb)
    attributions, delta = lig.attribute(
        ids, baselines=torch.full_like(ids, PAD_ID), target=target,
        additional_forward_args=(real,), n_steps=n_steps, method="gausslegendre",
        internal_batch_size=internal_batch_size, return_convergence_delta=True)
    # (1, 1 + L, D): the CLS row is the same at both ends, so its attribution is 0
    tokens = attributions.sum(-1)[0, 1:].detach()
    with torch.no_grad():
        gap = (forward(ids, real) - forward(torch.full_like(ids, PAD_ID), real))[0, target]
    return tokens, float(delta.item()), float(gap)


# ----------------------------------------------------------------------------- perturbations
def _deleting_forward(run: Run):
    """f(ids) = class probabilities with PAD tokens masked out (a removed word is not seen)."""

    def forward(ids: Tensor) -> Tensor:
        return run.probabilities(ids)

    return forward


def kernel_shap(run: Run, doc: Document, target: int, n_samples: int = 200,
                batch: int = 50, seed: int = 0) -> Tensor:
    """KernelSHAP word attributions (W,) with ``n_samples`` coalitions."""
    from captum.attr import KernelShap

    torch.manual_seed(seed)
    with torch.no_grad():
        scores = KernelShap(_deleting_forward(run)).attribute(
            doc.ids[None], baselines=PAD_ID, target=target, feature_mask=doc.word_of[None],
            n_samples=n_samples, perturbations_per_eval=batch)
    return _per_word(scores[0], doc)


def lime(run: Run, doc: Document, target: int, n_samples: int = 200, batch: int = 50,
         seed: int = 0, kernel_width: float = 0.25, alpha: float = 1.0) -> Tensor:
    """LIME word attributions (W,): ridge (``alpha``) coefficients on ``n_samples`` random
    subsets of words, weighted by the LIME text kernel (see the module docstring)."""
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    def similarity(original, perturbed, interpretable_sample, **kwargs) -> float:
        z = interpretable_sample.float().flatten()
        cosine = z.sum() / (z.norm() * z.numel() ** 0.5).clamp_min(1e-12)
        return float(torch.exp(-((1 - cosine) / kernel_width) ** 2))

    torch.manual_seed(seed)
    explainer = Lime(_deleting_forward(run), interpretable_model=SkLearnRidge(alpha=alpha),
                     similarity_func=similarity)
    with torch.no_grad():
        scores = explainer.attribute(
            doc.ids[None], baselines=PAD_ID, target=target, feature_mask=doc.word_of[None],
            n_samples=n_samples, perturbations_per_eval=batch)
    return _per_word(scores[0], doc)


def _per_word(token_scores: Tensor, doc: Document) -> Tensor:
    """Perturbation methods give each token its word's score: read it once per word."""
    first = torch.full((doc.num_words,), -1, dtype=torch.long)
    positions = torch.arange(len(doc.word_of))
    first.scatter_reduce_(0, doc.word_of, positions, reduce="amin", include_self=False)
    return token_scores[first].detach().float()


# ----------------------------------------------------------------------------- all together
def explain(run: Run, doc: Document, methods: tuple[str, ...] | list[str] = METHODS,
            ig_steps: int = 50, n_samples: int = 200, seed: int = 0) -> Explanation:
    """Explain the run's prediction for ``doc`` with ``methods`` (a subset of
    :data:`METHODS`); the attention maps are always recorded. Timings in ``seconds``."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown explanation method(s) {unknown}; valid: {', '.join(METHODS)}")
    with torch.no_grad():
        probs = run.probabilities(doc.ids[None])[0]
    target = int(probs.argmax())
    out = Explanation(doc, probs, target)

    start = time.perf_counter()
    out.maps, pooled, rollout = attention_scores(run, doc)
    out.seconds["attention"] = time.perf_counter() - start
    if "attention" in methods:
        out.words["attention"] = to_words(pooled, doc.word_of, doc.num_words)
    if "rollout" in methods:
        out.words["rollout"] = to_words(rollout, doc.word_of, doc.num_words)
    if "ig" in methods:
        start = time.perf_counter()
        tokens, out.ig_delta, out.ig_gap = integrated_gradients(run, doc, target, ig_steps)
        out.words["ig"] = to_words(tokens, doc.word_of, doc.num_words)
        out.seconds["ig"] = time.perf_counter() - start
    if "shap" in methods:
        start = time.perf_counter()
        out.words["shap"] = kernel_shap(run, doc, target, n_samples, seed=seed)
        out.seconds["shap"] = time.perf_counter() - start
    if "lime" in methods:
        start = time.perf_counter()
        out.words["lime"] = lime(run, doc, target, n_samples, seed=seed)
        out.seconds["lime"] = time.perf_counter() - start
    return out
