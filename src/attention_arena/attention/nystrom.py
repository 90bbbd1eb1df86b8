"""Nyströmformer attention: softmax attention through m landmarks (Xiong et al. 2021).

softmax(QKᵀ/√d) ≈ softmax(Q K̃ᵀ/√d) · A⁺ · softmax(Q̃ Kᵀ/√d) with A = softmax(Q̃ K̃ᵀ/√d), where
the landmarks Q̃, K̃ (m × d) are the means of m contiguous segments of the queries and keys and A⁺
is the Moore–Penrose pseudo-inverse of the m × m middle matrix, computed by the paper's iteration.
O(N · m · d) time and memory: no N × N matrix.

Landmarks pool *real* tokens only. The L real tokens of a sequence (padding may sit anywhere) are
cut, in order, into m segments: the real token of rank r goes to segment ⌊r · m / L⌋. Landmarks,
and so the outputs at real positions, do not depend on how much padding there is. When L < m some
segments are empty: their landmarks get no weight in softmax(Q K̃ᵀ), and an identity block in A
keeps them apart from the real ones in A⁺, so they change nothing (and m is capped at N). With
m ≥ L every real token is its own landmark and, with an exact pseudo-inverse, the method equals
softmax attention (A⁺ cancels A).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SelfAttention, check_heads
from .registry import register_attention


def landmark_segments(keep: Tensor, num_landmarks: int) -> Tensor:
    """Segment of every token, bool (B, N) -> long (B, N): ⌊rank · m / L⌋ for the real tokens
    (rank among the L real tokens of the row), ``m`` (a discarded slot) for padding."""
    rank = keep.cumsum(-1) - 1
    length = keep.sum(-1, keepdim=True).clamp_min(1)
    segment = torch.div(rank * num_landmarks, length, rounding_mode="floor")
    return segment.masked_fill(~keep, num_landmarks)


def landmark_means(x: Tensor, segment: Tensor, num_landmarks: int) -> tuple[Tensor, Tensor]:
    """Segment means of x (B, H, N, d) -> (B, H, m, d), and tokens per segment (B, m).

    Empty segments give zero landmarks."""
    B, H, N, d = x.shape
    m = num_landmarks
    sums = x.new_zeros(B, H, m + 1, d).scatter_add(2, segment[:, None, :, None].expand_as(x), x)
    counts = x.new_zeros(B, m + 1).scatter_add(1, segment, x.new_ones(B, N))
    counts = counts[:, :m]
    return sums[:, :, :m] / counts.clamp_min(1)[:, None, :, None], counts


def iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """Moore–Penrose pseudo-inverse of a (..., m, m) by the iteration of Razavi et al. (2014)
    used in the paper: Z₀ = aᵀ / (‖a‖₁ ‖a‖∞), Z ← ¼ Z (13I − aZ (15I − aZ (7I − aZ))).

    The norms are each matrix's own (the official code takes the maximum over the whole batch,
    which couples the sequences of a batch)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm_1 = a.abs().sum(-2).amax(-1)  # largest column sum
    norm_inf = a.abs().sum(-1).amax(-1)  # largest row sum
    z = a.transpose(-1, -2) / (norm_1 * norm_inf)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    num_landmarks: int,
    pinv_iterations: int | None = 6,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """Nyström approximation of softmax attention: q, k, v (B, H, N, d) -> (B, H, N, d).

    Args:
        num_landmarks: m, the number of segment-mean landmarks.
        pinv_iterations: iterations of :func:`iterative_pinv`; None = exact ``torch.linalg.pinv``.
        key_padding_mask: bool (B, N), True = padding: excluded from landmarks and keys.

    Computed in fp32 (fp64 stays fp64) with autocast off: the pseudo-inverse iteration is not
    stable in half precision.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        kernel_1, pinv, kernel_3 = nystrom_kernels(q, k, num_landmarks, pinv_iterations,
                                                   key_padding_mask)
        out = kernel_1 @ (pinv @ (kernel_3 @ v.to(kernel_1.dtype)))  # (B, H, N, d), never N × N
    return out.to(v.dtype)


def nystrom_kernels(
    q: Tensor,
    k: Tensor,
    num_landmarks: int,
    pinv_iterations: int | None = 6,
    key_padding_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The three factors of :func:`nystrom_attention` (arguments alike), in fp32 at least:
    softmax(Q K̃ᵀ/√d) (B, H, N, m), A⁺ (B, H, m, m) and softmax(Q̃ Kᵀ/√d) (B, H, m, N)."""
    B, H, N, d = q.shape
    m = min(num_landmarks, N)  # more would only add empty landmarks (see the module docstring)
    dtype = torch.promote_types(q.dtype, torch.float32)
    scale = d**-0.5  # applied to the m landmarks, not to the N queries
    q, k = q.to(dtype), k.to(dtype)
    neg = torch.finfo(dtype).min  # finite: a row with every entry masked stays finite
    if key_padding_mask is None and N % m == 0:  # equal segments: plain means
        q_land = q.unflatten(2, (m, N // m)).mean(3) * scale  # (B, H, m, d)
        k_land = k.unflatten(2, (m, N // m)).mean(3)
        kernel_1 = torch.softmax(q @ (k_land * scale).transpose(-1, -2), -1)  # (B, H, N, m)
        kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2), -1)  # (B, H, m, m)
        kernel_3 = torch.softmax(q_land @ k.transpose(-1, -2), -1)  # (B, H, m, N)
    else:
        keep = torch.ones(B, N, dtype=torch.bool, device=q.device)
        if key_padding_mask is not None:
            keep = ~key_padding_mask
        segment = landmark_segments(keep, m)
        q_land, counts = landmark_means(q, segment, m)
        q_land = q_land * scale
        k_land, _ = landmark_means(k, segment, m)
        used = (counts > 0)[:, None, None, :]  # (B, 1, 1, m): landmarks with a token
        scores_1 = q @ (k_land * scale).transpose(-1, -2)
        kernel_1 = torch.softmax(scores_1.masked_fill(~used, neg), -1)
        kernel_2 = torch.softmax((q_land @ k_land.transpose(-1, -2)).masked_fill(~used, neg), -1)
        # empty landmarks: identity rows, so A = blockdiag(A_real, I) up to a permutation
        eye = torch.eye(m, dtype=torch.bool, device=q.device)
        kernel_2 = torch.where(used.transpose(-1, -2), kernel_2, eye.to(dtype))
        scores_3 = (q_land @ k.transpose(-1, -2)).masked_fill(~keep[:, None, None, :], neg)
        kernel_3 = torch.softmax(scores_3, -1)
    if pinv_iterations is None:
        pinv = torch.linalg.pinv(kernel_2)
    else:
        pinv = iterative_pinv(kernel_2, pinv_iterations)
    return kernel_1, pinv, kernel_3


@register_attention("nystrom")
class NystromAttention(SelfAttention):
    """Nyströmformer attention with ``num_landmarks`` segment-mean landmarks, O(N · m · d).

    Args:
        num_landmarks: landmarks m (more = closer to softmax attention, slower).
        pinv_iterations: iterations of the pseudo-inverse (the paper: 6); None = exact
            ``torch.linalg.pinv`` (slower, for checks).
        conv_kernel: if set, adds the paper's residual: a depthwise convolution of V along the
            sequence (one kernel of this odd length per head, shared over the head dimension;
            the paper uses 33). None or 0 = off.

    Every token attends to every other (approximately), so ``global_mask`` is accepted and
    ignored. There is no attention matrix, so ``dropout`` is not applied here.
    """

    stochastic_map = False  # the implied map: see attention_weights

    def __init__(self, embed_dim: int, num_heads: int, num_landmarks: int = 64,
                 pinv_iterations: int | None = 6, conv_kernel: int | None = None,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias)
        if not isinstance(num_landmarks, int) or num_landmarks <= 0:
            raise ValueError(f"nystrom num_landmarks must be a positive integer, "
                             f"got {num_landmarks!r}")
        if pinv_iterations is not None and (not isinstance(pinv_iterations, int)
                                            or pinv_iterations <= 0):
            raise ValueError(f"nystrom pinv_iterations must be a positive integer (the paper: "
                             f"6) or None for an exact pseudo-inverse, got {pinv_iterations!r}")
        conv_kernel = conv_kernel or None
        if conv_kernel is not None and (not isinstance(conv_kernel, int) or conv_kernel < 0
                                        or conv_kernel % 2 == 0):
            raise ValueError(f"nystrom conv_kernel must be an odd positive integer (the paper: "
                             f"33) or None/0 for no convolution, got {conv_kernel!r}")
        self.num_landmarks, self.pinv_iterations = num_landmarks, pinv_iterations
        self.conv_kernel = conv_kernel
        self.conv = None
        if conv_kernel:
            self.conv = nn.Conv2d(num_heads, num_heads, (conv_kernel, 1), groups=num_heads,
                                  padding=(conv_kernel // 2, 0), bias=False)

    def attend(self, q, k, v, key_padding_mask=None, global_mask=None) -> Tensor:
        out = nystrom_attention(q, k, v, self.num_landmarks, self.pinv_iterations,
                                key_padding_mask)
        if self.conv is not None:  # padded values are zeros to the convolution
            if key_padding_mask is not None:
                v = v.masked_fill(key_padding_mask[:, None, :, None], 0.0)
            out = out + self.conv(v)
        return out

    @torch.no_grad()
    def attention_weights(self, q, k, key_padding_mask=None, global_mask=None) -> Tensor:
        """The implied map softmax(Q K̃ᵀ/√d) A⁺ softmax(Q̃ Kᵀ/√d) (B, H, N, N), plus the banded
        matrix of the convolution if ``conv_kernel`` is set. Exact (map @ V is the output) but
        not a probability matrix: A⁺ may have negative entries, its rows sum to 1 only up to
        the iterative pseudo-inverse's error, and the convolution adds its own weights."""
        kernel_1, pinv, kernel_3 = nystrom_kernels(q, k, self.num_landmarks,
                                                   self.pinv_iterations, key_padding_mask)
        implied = kernel_1 @ pinv @ kernel_3
        if self.conv is not None:  # out[n] += Σₜ w[t] v[n + t - K//2]: a band per head
            N, half = q.shape[2], self.conv_kernel // 2
            i = torch.arange(N, device=q.device)
            offset = i[None, :] - i[:, None] + half  # (N, N): t
            inside = (offset >= 0) & (offset < self.conv_kernel)
            w = self.conv.weight[:, 0, :, 0].to(implied.dtype)  # (H, K)
            band = w[:, offset.clamp(0, self.conv_kernel - 1)] * inside  # (H, N, N)
            if key_padding_mask is not None:
                band = band * ~key_padding_mask[:, None, None, :]
            implied = implied + band
        return implied

    @torch.no_grad()
    def prune_heads(self, keep) -> None:
        """As :meth:`SelfAttention.prune_heads`; the depthwise convolution keeps the kernels of
        the kept heads."""
        keep = check_heads(keep, self.num_heads)
        super().prune_heads(keep)
        if self.conv is not None:
            old, h = self.conv, len(keep)
            self.conv = nn.Conv2d(h, h, old.kernel_size, groups=h, padding=old.padding,
                                  bias=False, device=old.weight.device, dtype=old.weight.dtype)
            self.conv.weight.copy_(old.weight[keep])  # (H, 1, kernel, 1) -> (h, 1, kernel, 1)
            self.conv.requires_grad_(old.weight.requires_grad)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_landmarks={self.num_landmarks}, "
                f"pinv_iterations={self.pinv_iterations}, conv_kernel={self.conv_kernel}")

    def attention_flops(self, seq_len: int, batch: int = 1) -> float:
        """With m = min(num_landmarks, N): the scores ``QK̃ᵀ`` and ``Q̃Kᵀ`` and the products
        ``kernel₃V`` and ``kernel₁(·)`` ``4 · 2·B·H·N·m·d``; ``Q̃K̃ᵀ`` and ``A⁺(·)``
        ``2 · 2·B·H·m²·d``; four m × m products per pseudo-inverse iteration ``4 · 2·B·H·m³``
        (none counted for the exact one); the convolution ``2·B·H·N·d·conv_kernel``. Landmark
        means and softmax are not counted."""
        bh, n, d = batch * self.num_heads, seq_len, self.head_dim
        m = min(self.num_landmarks, seq_len)
        flops = 4 * 2 * bh * n * m * d + 2 * 2 * bh * m * m * d
        flops += 4 * 2 * bh * m**3 * (self.pinv_iterations or 0)
        if self.conv_kernel:
            flops += 2 * bh * n * d * self.conv_kernel
        return flops
