"""Performer attention: FAVOR+ positive orthogonal random features (Choromanski et al. 2021).

softmax(q·k / √d) ≈ φ(q)·φ(k) with φ(x) = exp(W x′ − ‖x′‖² / 2 − c) + ε, x′ = d^(-1/4) x, where
the rows of W (m × d) are orthogonal Gaussian blocks rescaled to chi-distributed norms. Attention
is then φ(Q) (φ(K)ᵀ V) / φ(Q) Σⱼ φ(kⱼ): O(N · m · d) time, no N × N matrix.

Stabilisation: c is the max of the exponent, per row for queries and over all real keys and
features for keys (one constant per batch and head), so the largest feature is 1. As in
google-research's reference (whose max leaves out the −‖x′‖²/2 term), ε is added after the max
is subtracted, so c cancels in the ratio only when ε = 0: it is part of the function, and the
backward differentiates through it (the subgradient of the max). The features are computed in
fp32 even under autocast. Padded keys contribute to neither the numerator nor the denominator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SelfAttention
from .registry import register_attention


def orthogonal_random_features(
    num_features: int, dim: int, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """W (num_features, dim): stacked orthogonal blocks, rows scaled to chi(dim) norms."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator)
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.T)
    w = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator).norm(dim=1)
    return (w * norms[:, None]).to(device)


class _PositiveFeatures(torch.autograd.Function):
    """exp(z − c), z = W x − ‖x‖²/2, for x (B, H, N, d) -> (B, H, N, m); 0 where ``keep`` is False.

    c = max z over a row (``per_row``) or over all real rows and features (one per batch and
    head). A hand-written backward keeps the full-size (N × m) work to one product. With
    e = exp(z − c), g = grad and the max's subgradient ∂c/∂z = one-hot at the argmax a:
    dL/dz = g ⊙ e − [a] Σ(g ⊙ e) (the sum over c's domain), dL/dx = (dL/dz) W − x Σₘ dL/dz.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, keep: Tensor | None, per_row: bool) -> Tensor:
        B, H, N, _ = x.shape
        half_sq = 0.5 * (x * x).sum(-1, keepdim=True)  # (B, H, N, 1)
        if keep is not None:  # padded keys: exponent -inf, feature 0
            half_sq = half_sq.masked_fill(~keep[:, None, :, None], float("inf"))
        e = (x.flatten(0, -2) @ w.T).view(B, H, N, -1)  # (B, H, N, m), one GEMM
        m = e.shape[-1]
        # c and the flat index (row · m + feature) of the exponent's max, for the backward
        if per_row:
            row_max, col = e.max(-1, keepdim=True)  # (B, H, N, 1) each
            c = row_max - half_sq
            top = torch.arange(N, device=x.device)[:, None] * m + col
        else:  # one argmax per (batch, head): find its row first (an indexed max is slow)
            c, row = (e.amax(-1, keepdim=True) - half_sq).max(-2, keepdim=True)  # (B, H, 1, 1)
            top = row * m + e.gather(-2, row.expand(B, H, 1, m)).argmax(-1, keepdim=True)
        if keep is not None:  # rows of padding only: c = -inf; any finite c keeps them at 0
            c = c.masked_fill(c.isneginf(), 0.0)
        e.sub_(half_sq + c).exp_()
        ctx.per_row = per_row
        ctx.save_for_backward(x, w, e, top.flatten(-2))  # top: (B, H, N) or (B, H, 1)
        return e

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w, e, top = ctx.saved_tensors
        dz = (grad * e).contiguous()  # dL/dz with c held fixed, (B, H, N, m)
        flat = dz.view(*dz.shape[:2], -1)  # (B, H, N·m), the same memory
        # c moves with the z at its argmax: that entry loses the sum of g ⊙ e over c's domain
        domain_sum = dz.sum(-1) if ctx.per_row else flat.sum(-1, keepdim=True)
        flat.scatter_add_(-1, top, -domain_sum)
        grad_x = (dz.flatten(0, -2) @ w).view_as(x)
        if not ctx.per_row:  # per-row c leaves every row of dL/dz summing to zero
            grad_x.sub_(x * dz.sum(-1, keepdim=True))
        return grad_x, None, None, None


def _positive_features(x: Tensor, w: Tensor, keep: Tensor | None, per_row: bool) -> Tensor:
    dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 for half types, fp64 stays
    x = x.to(dtype) * x.shape[-1] ** -0.25  # x′ = d^(-1/4) x
    return _PositiveFeatures.apply(x, w.to(dtype), keep, per_row)


def favor_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor,
    key_padding_mask: Tensor | None = None,
    eps: float = 1e-4,
) -> Tensor:
    """Linear-time softmax approximation: q, k, v (B, H, N, d), projection (m, d) -> (B, H, N, d).

    Equals φ(Q) (φ(K)ᵀ V) / φ(Q) φ(K)ᵀ 1 with φ(x) = exp(W x′ − ‖x′‖²/2 − c) + ε and φ = 0 at
    padded keys. The ε terms are added algebraically (rank-one corrections) rather than to the
    N × m feature tensors.
    """
    keep = None if key_padding_mask is None else ~key_padding_mask
    with torch.autocast(device_type=q.device.type, enabled=False):
        eq = _positive_features(q, projection, None, per_row=True)  # (B, H, N, m), no ε yet
        ek = _positive_features(k, projection, keep, per_row=False)
        v1 = F.pad(v.to(eq.dtype), (0, 1), value=1.0)  # [v | 1]
        if keep is not None:
            v1 = v1 * keep[:, None, :, None]  # padded rows: no value, no count
        # [Σ φ(k) vᵀ | Σ φ(k)] with φ(k) = ek + ε on real keys: (B, H, m, d + 1)
        # (v1ᵀ ek)ᵀ rather than ekᵀ v1: the gradient reaching ek is then contiguous
        kv = (v1.transpose(-1, -2) @ ek).transpose(-1, -2) + eps * v1.sum(-2, keepdim=True)
        # φ(q) = eq + ε: [numerator | denominator] (B, H, N, d + 1)
        out = eq @ kv + eps * kv.sum(-2, keepdim=True)
        numerator, denominator = out[..., :-1], out[..., -1:]
        out = numerator / denominator.clamp_min(1e-30)
    return out.to(v.dtype)


@register_attention("performer")
class PerformerAttention(SelfAttention):
    """FAVOR+ attention with ``num_features`` positive orthogonal random features.

    Args:
        num_features: random features m (more = closer to softmax, slower).
        redraw_interval: draw new features every this many training forward passes (0 = never).
            Evaluation always uses the current features.
        seed: seed of the feature draws. Draw i is :func:`orthogonal_random_features` with a
            ``torch.Generator().manual_seed(seed * 1_000_003 + i)``; draw 0 at construction,
            and training call t (1, 2, ...) uses draw (t - 1) // redraw_interval. None takes a
            seed from torch's global RNG, so ``torch.manual_seed`` fixes it and stacked layers
            get different features.
        eps: the ε added to every feature.

    Every token attends to every other, so ``global_mask`` is accepted and ignored. There is no
    attention matrix, so ``dropout`` is not applied here.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_features: int = 256,
                 redraw_interval: int = 1000, seed: int | None = None, eps: float = 1e-4,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias)
        if num_features <= 0:
            raise ValueError(f"performer num_features must be positive, got {num_features}")
        if redraw_interval < 0:
            raise ValueError(f"performer redraw_interval must be >= 0 (0 = never), "
                             f"got {redraw_interval}")
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.num_features, self.redraw_interval, self.eps = num_features, redraw_interval, eps
        # plain ints (checkpointed through get/set_extra_state): no device sync per forward
        self.seed, self.calls = int(seed), 0  # calls = training forward passes so far
        self.register_buffer("projection", self._draw(0))

    def get_extra_state(self) -> dict:
        return {"seed": self.seed, "calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.seed, self.calls = int(state["seed"]), int(state["calls"])

    def _draw(self, index: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return orthogonal_random_features(self.num_features, self.head_dim, generator)

    @torch.no_grad()
    def redraw(self) -> None:
        """Draw the next set of features (deterministic in ``seed`` and the number of draws)."""
        index = self.calls // max(self.redraw_interval, 1)
        self.projection.copy_(self._draw(index))

    def attend(self, q, k, v, key_padding_mask=None, global_mask=None) -> Tensor:
        if self.training:
            if self.redraw_interval and self.calls and self.calls % self.redraw_interval == 0:
                self.redraw()
            self.calls += 1
        return favor_attention(q, k, v, self.projection, key_padding_mask, eps=self.eps)

    @torch.no_grad()
    def attention_weights(self, q, k, key_padding_mask=None, global_mask=None) -> Tensor:
        """The implied map φ(qᵢ)·φ(kⱼ) / Σⱼ φ(qᵢ)·φ(kⱼ) (B, H, N, N) with the current features:
        φ as in :func:`favor_attention` (ε included, φ = 0 at padded keys)."""
        keep = None if key_padding_mask is None else ~key_padding_mask
        fq = _positive_features(q, self.projection, None, per_row=True) + self.eps
        fk = _positive_features(k, self.projection, keep, per_row=False) + self.eps
        if keep is not None:
            fk = fk * keep[:, None, :, None]
        kernel = fq @ fk.transpose(-1, -2)  # (B, H, N, N)
        return kernel / kernel.sum(-1, keepdim=True).clamp_min(1e-30)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_features={self.num_features}, "
                f"redraw_interval={self.redraw_interval}")

    def attention_flops(self, seq_len: int, batch: int = 1) -> float:
        """Feature maps of q and k ``2 · 2·B·H·N·d·m``, the products ``φ(K)ᵀV`` and
        ``φ(Q)(φ(K)ᵀV)`` ``2 · 2·B·H·N·m·d``, and the normaliser ``φ(Q)(φ(K)ᵀ1)`` ``2·B·H·N·m``."""
        rows = batch * self.num_heads * seq_len  # B·H·N
        m, d = self.num_features, self.head_dim
        return 2 * 2 * rows * d * m + 2 * 2 * rows * m * d + 2 * rows * m
