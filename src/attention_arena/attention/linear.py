"""Linear attention: a positive feature map instead of the softmax (Katharopoulos et al. 2020).

outᵢ = φ(qᵢ)ᵀ Σⱼ φ(kⱼ) vⱼᵀ / φ(qᵢ)ᵀ Σⱼ φ(kⱼ) with φ(x) = elu(x) + 1 > 0. Forming the d × d sums
first costs O(N · d²) time and O(N · d) memory: no N × N matrix. Padded keys are left out of both
sums, so outputs at real positions do not depend on padding. The sums accumulate in fp32 (fp64
stays fp64) with autocast off: in half precision a sum over 16K keys loses its small terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SelfAttention
from .registry import register_attention


def elu_features(x: Tensor) -> Tensor:
    """φ(x) = elu(x) + 1, positive everywhere."""
    return F.elu(x) + 1.0


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None
) -> Tensor:
    """φ(Q) (φ(K)ᵀ V) / φ(Q) (φ(K)ᵀ 1): q, k, v (B, H, N, d) -> (B, H, N, d).

    ``key_padding_mask`` bool (B, N), True = padding: those keys are in neither sum. A row with no
    real key (all padding) gives zeros.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(device_type=q.device.type, enabled=False):
        fq, fk = elu_features(q.to(dtype)), elu_features(k.to(dtype))  # (B, H, N, d)
        if key_padding_mask is not None:  # padded keys: no value, no count
            fk = fk.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        kv = fk.transpose(-1, -2) @ v.to(dtype)  # Σⱼ φ(kⱼ) vⱼᵀ, (B, H, d, d)
        k_sum = fk.sum(-2).unsqueeze(-1)  # Σⱼ φ(kⱼ), (B, H, d, 1)
        out = fq @ torch.cat([kv, k_sum], dim=-1)  # [numerator | denominator], (B, H, N, d + 1)
        out = out[..., :-1] / out[..., -1:].clamp_min(torch.finfo(dtype).tiny)  # 0 / tiny = 0
    return out.to(v.dtype)


@register_attention("linear")
class LinearAttention(SelfAttention):
    """Linear attention with the φ(x) = elu(x) + 1 feature map, O(N · d²). No options.

    Every token attends to every other, so ``global_mask`` is accepted and ignored. There is no
    attention matrix, so ``dropout`` is not applied here.
    """

    def attend(self, q, k, v, key_padding_mask=None, global_mask=None) -> Tensor:
        return linear_attention(q, k, v, key_padding_mask)

    def attention_weights(self, q, k, key_padding_mask=None, global_mask=None) -> Tensor:
        """The implied map φ(qᵢ)·φ(kⱼ) / Σⱼ φ(qᵢ)·φ(kⱼ) over real keys, (B, H, N, N)."""
        dtype = torch.promote_types(q.dtype, torch.float32)
        fq, fk = elu_features(q.to(dtype)), elu_features(k.to(dtype))
        if key_padding_mask is not None:
            fk = fk.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        kernel = fq @ fk.transpose(-1, -2)  # (B, H, N, N)
        return kernel / kernel.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)

    def attention_flops(self, seq_len: int, batch: int = 1) -> float:
        """``φ(K)ᵀV``, ``φ(Q)(φ(K)ᵀV)`` and the normaliser ``φ(Q)Σφ(K)``:
        ``2 · 2·B·H·N·d·(d + 1)`` (φ itself and the sum of φ(K) not counted)."""
        d = self.head_dim
        return 2 * 2 * batch * self.num_heads * seq_len * d * (d + 1)
