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

from .base import SelfAttention, check_heads, fusable, zero_padding
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
    q_land, used = segment_means(q, m, key_padding_mask)
    q_land = q_land * scale
    k_land, _ = segment_means(k, m, key_padding_mask)
    keep = None if key_padding_mask is None else ~key_padding_mask
    kernel_1 = softmax_over(q @ (k_land * scale).transpose(-1, -2), used)  # (B, H, N, m)
    kernel_3 = softmax_over(q_land @ k.transpose(-1, -2), keep)  # (B, H, m, N)
    return kernel_1, middle_pinv(q_land, k_land, used, pinv_iterations), kernel_3


def segment_means(x: Tensor, m: int, key_padding_mask: Tensor | None
                  ) -> tuple[Tensor, Tensor | None]:
    """Landmarks of x (B, H, N, d): the means of the m segments of the real tokens
    (B, H, m, d), and which landmarks have a token, bool (B, m); None when every segment has
    N / m tokens (no padding, N a multiple of m: plain means)."""
    B, H, N, d = x.shape
    if key_padding_mask is None and N % m == 0:
        return x.unflatten(2, (m, N // m)).mean(3), None
    keep = torch.ones(B, N, dtype=torch.bool, device=x.device)
    if key_padding_mask is not None:
        keep = ~key_padding_mask
    means, counts = landmark_means(x, landmark_segments(keep, m), m)
    return means, counts > 0


def softmax_over(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last dim of scores (B, ·, ·, M), with the columns not ``allowed``
    (bool (B, M), None = all) at a finite minimum: a row with none allowed stays finite."""
    if allowed is not None:
        scores = scores.masked_fill(~allowed[:, None, None, :], torch.finfo(scores.dtype).min)
    return torch.softmax(scores, -1)


def middle_pinv(q_land: Tensor, k_land: Tensor, used: Tensor | None,
                pinv_iterations: int | None) -> Tensor:
    """A⁺ for A = softmax(Q̃ K̃ᵀ/√d), landmarks (B, H, m, d) with ``q_land`` already scaled ->
    (B, H, m, m). Empty landmarks (not ``used`` (B, m)) get identity rows and no weight as keys,
    so A = blockdiag(A_real, I) up to a permutation and they stay apart in A⁺."""
    kernel_2 = softmax_over(q_land @ k_land.transpose(-1, -2), used)
    if used is not None:
        eye = torch.eye(kernel_2.shape[-1], dtype=kernel_2.dtype, device=kernel_2.device)
        kernel_2 = torch.where(used[:, None, :, None], kernel_2, eye)
    if pinv_iterations is None:
        return torch.linalg.pinv(kernel_2)
    return iterative_pinv(kernel_2, pinv_iterations)


def nystrom_module(x: Tensor, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear,
                   out_proj: nn.Linear, num_heads: int, num_landmarks: int,
                   pinv_iterations: int | None, key_padding_mask: Tensor | None) -> Tensor:
    """The whole module (without the convolution) computed from x (B, N, D), the same function
    as projecting and calling :func:`nystrom_attention`; padded rows are not yet zeroed.

    Q, K and V are never formed: landmarks are segment means of X, projected (the mean of the
    projections); Q K̃ᵀ = X (W_qᵀ K̃ᵀ) + b_q K̃ᵀ and Q̃ Kᵀ = (Q̃ W_k) Xᵀ + Q̃ b_kᵀ; kernel₃ V =
    (kernel₃ X) W_vᵀ + b_v (kernel₃'s rows sum to 1); the output projection joins the last
    product: y = Σₕ kernel₁ (A⁺ kernel₃ V) W_oᵀ + b_o = kernel₁ (B, N, H·m) @ M (H·m, D) + b_o.
    Each N-row product is then as large as the projection it replaces; no N × d per-head
    products, no head transposes.
    """
    B, N, D = x.shape
    H, d = num_heads, q_proj.weight.shape[0] // num_heads
    m = min(num_landmarks, N)
    scale = d**-0.5
    x_land, used = segment_means(x[:, None], m, key_padding_mask)  # (B, 1, m, D)
    # (an empty segment's landmark is the bias here, 0 on the per-head path: no weight either way)
    q_land, k_land = (p(x_land[:, 0]).unflatten(-1, (H, d)).transpose(1, 2)  # (B, H, m, d)
                      for p in (q_proj, k_proj))
    q_land = q_land * scale
    # kernel₁ = softmax(Q K̃ᵀ/√d), in the token layout (B, N, H, m)
    k_scaled = k_land * scale
    a = torch.einsum("hdD,bhmd->bDhm", q_proj.weight.view(H, d, D), k_scaled).flatten(2)
    scores_1 = x @ a  # (B, N, H·m)
    if q_proj.bias is not None:  # b_q K̃ᵀ/√d, (B, 1, H·m)
        bias_1 = torch.einsum("hd,bhmd->bhm", q_proj.bias.view(H, d), k_scaled)
        scores_1 += bias_1.flatten(1)[:, None]
    kernel_1 = softmax_over(scores_1.unflatten(-1, (H, m)), used)
    # kernel₃ = softmax(Q̃ Kᵀ/√d), (B, H, m, N)
    c = (q_land @ k_proj.weight.view(H, d, D)).flatten(1, 2)  # (B, H·m, D)
    scores_3 = c @ x.transpose(1, 2)  # (B, H·m, N)
    if k_proj.bias is not None:
        scores_3 += (q_land @ k_proj.bias.view(H, d, 1)).flatten(1, 2)
    keep = None if key_padding_mask is None else ~key_padding_mask
    kernel_3 = softmax_over(scores_3.unflatten(1, (H, m)), keep)
    # kernel₃ V, then A⁺ and the output projection: M (B, H·m, D)
    v_land = (kernel_3.flatten(1, 2) @ x).unflatten(1, (H, m)) @ v_proj.weight.view(H, d, D).mT
    if v_proj.bias is not None:
        v_land = v_land + v_proj.bias.view(H, 1, d)
    w = middle_pinv(q_land, k_land, used, pinv_iterations) @ v_land  # (B, H, m, d)
    m_out = (w @ out_proj.weight.view(D, H, d).permute(1, 2, 0)).flatten(1, 2)
    y = kernel_1.flatten(2) @ m_out  # (B, N, D)
    if out_proj.bias is not None:
        y += out_proj.bias
    return y


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

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None,
                global_mask: Tensor | None = None) -> Tensor:
        """As :meth:`SelfAttention.forward`; without the convolution, with plain float
        projections in fp32/fp64 and autocast off, by :func:`nystrom_module` (the same
        function)."""
        layers = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        if self.conv is not None or not fusable(x, *layers):
            return super().forward(x, key_padding_mask, global_mask)
        self.check_input(x, key_padding_mask, global_mask)
        y = nystrom_module(x, *layers, self.num_heads, self.num_landmarks,
                           self.pinv_iterations, key_padding_mask)
        return zero_padding(y, key_padding_mask)

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
