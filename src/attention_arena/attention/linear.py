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

from .base import SelfAttention, fusable, zero_padding
from .registry import register_attention


def elu_features(x: Tensor) -> Tensor:
    """φ(x) = elu(x) + 1, positive everywhere."""
    return F.elu(x) + 1.0


class _LinearAttention(torch.autograd.Function):
    """φ(Q) (φ(K)ᵀ V) / φ(Q) Σφ(K) in the token layout: q, k, v (B, N, H, d), ``pad`` (B, N)
    bool or None -> (B, N, H, d).

    The hand-written backward keeps only q, k, v (views of the projections), the d × d sums,
    the denominators and the output; φ is recomputed. With g = dL/dout, gₙ = g / den:
    dφ(Q) = gₙ KVᵀ + g_den Σφ(K)ᵀ with g_den = −Σₑ gₙ ⊙ out, d(KV) = φ(Q)ᵀ gₙ,
    dΣφ(K) = φ(Q)ᵀ g_den, dφ(K) = V d(KV)ᵀ + dΣφ(K), dV = φ(K) d(KV), and
    elu'(x) = min(φ(x), 1).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, pad: Tensor | None) -> Tensor:
        fq, fk = _features(q, k, pad)  # (B, N, H, d)
        kv = torch.einsum("bnhd,bnhe->bhde", fk, v)  # Σⱼ φ(kⱼ) vⱼᵀ, (B, H, d, d)
        k_sum = fk.sum(1)  # Σⱼ φ(kⱼ), (B, H, d)
        den = torch.einsum("bnhd,bhd->bnh", fq, k_sum)  # (B, N, H)
        den = den.clamp_min(torch.finfo(den.dtype).tiny).unsqueeze(-1)  # 0 / tiny = 0
        out = torch.einsum("bnhd,bhde->bnhe", fq, kv).div_(den)  # (B, N, H, d)
        ctx.pad = pad
        ctx.save_for_backward(q, k, v, kv, k_sum, den, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, kv, k_sum, den, out = ctx.saved_tensors
        fq, fk = _features(q, k, ctx.pad)
        grad_num = grad / den  # (B, N, H, d)
        grad_den = -(grad_num * out).sum(-1, keepdim=True)  # (B, N, H, 1)
        grad_fq = torch.einsum("bnhe,bhde->bnhd", grad_num, kv)
        grad_fq.addcmul_(grad_den, k_sum[:, None])
        grad_kv = torch.einsum("bnhd,bnhe->bhde", fq, grad_num)  # (B, H, d, d)
        grad_k_sum = torch.einsum("bnhd,bnh->bhd", fq, grad_den.squeeze(-1))
        grad_fk = torch.einsum("bnhe,bhde->bnhd", v, grad_kv).add_(grad_k_sum[:, None])
        grad_v = torch.einsum("bnhd,bhde->bnhe", fk, grad_kv)
        # elu'(x) = 1 for x > 0, eˣ = φ(x) otherwise; padded keys have φ = 0
        return grad_fq.mul_(fq.clamp_max_(1.0)), grad_fk.mul_(fk.clamp_max_(1.0)), grad_v, None


def _features(q: Tensor, k: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
    """φ(q), φ(k) (B, N, H, d), padded keys (``pad`` (B, N)) zero."""
    fq, fk = elu_features(q), elu_features(k)
    if pad is not None:
        fk = fk.masked_fill_(pad[:, :, None, None], 0.0)
    return fq, fk


def linear_attention_tokens(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None
) -> Tensor:
    """:func:`linear_attention` in the token layout: q, k, v (B, N, H, d) -> (B, N, H, d)."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(device_type=q.device.type, enabled=False):
        out = _LinearAttention.apply(q.to(dtype), k.to(dtype), v.to(dtype), key_padding_mask)
    return out.to(v.dtype)


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None
) -> Tensor:
    """φ(Q) (φ(K)ᵀ V) / φ(Q) (φ(K)ᵀ 1): q, k, v (B, H, N, d) -> (B, H, N, d).

    ``key_padding_mask`` bool (B, N), True = padding: those keys are in neither sum. A row with no
    real key (all padding) gives zeros.
    """
    heads_first = (t.transpose(1, 2) for t in (q, k, v))
    return linear_attention_tokens(*heads_first, key_padding_mask).transpose(1, 2)


class _FusedLinearAttention(torch.autograd.Function):
    """The whole module, projections included, with the value and output projections folded
    into the d × d sums: x (B, N, D), q/k/v/out_proj weights and biases (None if bias=False),
    H, ``pad`` (B, N) bool or None -> y (B, N, D), padded rows not yet zeroed.

    Per head, with Wᵥ and Wₒ its rows of ``v_proj`` and columns of ``out_proj``:
    φ(K)ᵀV = (φ(K)ᵀX) Wᵥᵀ + Σφ(K) bᵥᵀ and y = Σₕ S (φ(K)ᵀV Wₒᵀ) + bₒ with S = φ(Q) / den. The
    N-row products are then φ(K)ᵀX and S @ M with M (H·d, D), each as large as the projection it
    replaces; V and the per-head output are never formed. The backward is written out (the same
    products transposed; elu'(x) = min(φ(x), 1)) and reuses its N-row buffers: at 16K tokens
    each is 16 MB, and fewer of them alive means fewer fresh pages from the OS.
    """

    @staticmethod
    def forward(ctx, x, wq, bq, wk, bk, wv, bv, wo, bo, H, pad):
        B, N, D = x.shape
        d = wq.shape[0] // H
        fq = F.elu_(F.linear(x, wq, bq)).add_(1.0).view(B, N, H, d)  # φ(Q), (B, N, H, d)
        fk = F.elu_(F.linear(x, wk, bk)).add_(1.0).view(B, N, H, d)
        if pad is not None:  # padded keys: no value, no count
            fk.masked_fill_(pad[:, :, None, None], 0.0)
        k_sum = fk.sum(1)  # Σⱼ φ(kⱼ), (B, H, d)
        p = (fk.flatten(2).transpose(1, 2) @ x).view(B, H, d, D)  # φ(K)ᵀX per head
        kv = p @ wv.view(H, d, D).transpose(1, 2)  # φ(K)ᵀV, (B, H, d, d)
        if bv is not None:
            kv = kv + k_sum[..., None] * bv.view(H, 1, d)
        m = (kv @ wo.view(D, H, d).permute(1, 2, 0)).flatten(1, 2)  # (B, H·d, D)
        den = torch.einsum("bnhd,bhd->bnh", fq, k_sum).unsqueeze(-1)  # φ(qᵢ)·Σφ(K), (B, N, H, 1)
        den = torch.where(den > 0, den, 1.0)  # no real key: kv = 0, the output is 0
        s = fq.div_(den)  # S, in φ(Q)'s buffer
        y = torch.baddbmm(bo, s.flatten(2), m) if bo is not None else s.flatten(2) @ m
        ctx.num_heads, ctx.biases = H, (bq is not None, bk is not None)
        ctx.save_for_backward(x, wq, wk, wv, bv, wo, bo, s, fk, den, k_sum, p, kv, m)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, wq, wk, wv, bv, wo, bo, s, fk, den, k_sum, p, kv, m = ctx.saved_tensors
        B, N, H, d = s.shape
        D = x.shape[-1]
        grad_y = grad_y.contiguous()  # once, not in each product (y.sum() gives an expand)
        # y = S @ M + bₒ
        grad_m = (s.flatten(2).transpose(1, 2) @ grad_y).view(B, H, d, D)
        grad_s = (grad_y @ m.transpose(1, 2)).view(B, N, H, d)  # buffer 1
        # S = φ(Q) / den, den = φ(Q)·Σφ(K): dden = −Σ dS·S / den
        grad_den = torch.einsum("bnhd,bnhd->bnh", grad_s, s).unsqueeze(-1).div_(den).neg_()
        grad_k_sum = torch.einsum("bnhd,bnh->bhd", s, (grad_den * den).squeeze(-1))
        for g, s_, den_, grad_den_ in _row_slices(grad_s, s, den, grad_den):
            g.div_(den_).addcmul_(grad_den_, k_sum[:, None])  # dφ(Q) ...
            g.mul_(torch.mul(s_, den_).clamp_(max=1.0))  # ... ⊙ elu'(x) = min(φ(x), 1)
        grad_aq = grad_s
        # M = φ(K)ᵀV Wₒᵀ per head, φ(K)ᵀV = p Wᵥᵀ + Σφ(K) bᵥᵀ
        grad_kv = grad_m @ wo.view(D, H, d).transpose(0, 1)  # (B, H, d, d)
        grad_wo = torch.einsum("bhde,bhdo->ohe", kv, grad_m).reshape(D, H * d)
        grad_p = (grad_kv @ wv.view(H, d, D)).flatten(1, 2)  # (B, H·d, D)
        grad_wv = torch.einsum("bhde,bhdo->heo", grad_kv, p).reshape(H * d, D)
        grad_bv = None
        if bv is not None:
            grad_bv = torch.einsum("bhde,bhd->he", grad_kv, k_sum).flatten()
            grad_k_sum += torch.einsum("bhde,he->bhd", grad_kv, bv.view(H, d))
        # p = φ(K)ᵀX, and the q projection
        x2, grad_aq = x.reshape(B * N, D), grad_aq.view(B * N, H * d)
        grad_x = (grad_aq.view(B, N, H * d) @ wq).baddbmm_(fk.flatten(2), grad_p)  # buffer 2
        grad_wq, grad_bq = grad_aq.t() @ x2, grad_aq.sum(0) if ctx.biases[0] else None
        # dφ(K) into buffer 1, then the k projection
        grad_ak = torch.bmm(x, grad_p.transpose(1, 2), out=grad_aq.view(B, N, H * d))
        grad_ak = grad_ak.view(B, N, H, d)
        for g, fk_ in _row_slices(grad_ak, fk):  # dφ(K) ⊙ elu'; padded keys: φ = 0, so 0
            g.add_(grad_k_sum[:, None]).mul_(fk_.clamp(max=1.0))
        grad_ak = grad_ak.view(B * N, H * d)
        grad_x.view(B * N, D).addmm_(grad_ak, wk)
        grad_wk, grad_bk = grad_ak.t() @ x2, grad_ak.sum(0) if ctx.biases[1] else None
        grad_bo = grad_y.sum((0, 1)) if bo is not None else None
        return (grad_x, grad_wq, grad_bq, grad_wk, grad_bk, grad_wv, grad_bv, grad_wo, grad_bo,
                None, None)


def _row_slices(*tensors: Tensor, rows: int = 1024):
    """Slices of ``rows`` tokens of (B, N, ...) tensors, zipped: element-wise chains run on
    cache-sized pieces, with small temporaries."""
    for i in range(0, tensors[0].shape[1], rows):
        yield tuple(t[:, i:i + rows] for t in tensors)


@register_attention("linear")
class LinearAttention(SelfAttention):
    """Linear attention with the φ(x) = elu(x) + 1 feature map, O(N · d²). No options.

    Every token attends to every other, so ``global_mask`` is accepted and ignored. There is no
    attention matrix, so ``dropout`` is not applied here.
    """

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None,
                global_mask: Tensor | None = None) -> Tensor:
        """As :meth:`SelfAttention.forward`; with plain float projections in fp32/fp64 and
        autocast off, one fused pass (:class:`_FusedLinearAttention`, the same function)."""
        layers = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        if not fusable(x, *layers):
            return super().forward(x, key_padding_mask, global_mask)
        self.check_input(x, key_padding_mask, global_mask)
        params = [t for layer in layers for t in (layer.weight, layer.bias)]
        y = _FusedLinearAttention.apply(x, *params, self.num_heads, key_padding_mask)
        return zero_padding(y, key_padding_mask)

    def attend(self, q, k, v, key_padding_mask=None, global_mask=None) -> Tensor:
        return linear_attention(q, k, v, key_padding_mask)

    def attend_tokens(self, q, k, v, key_padding_mask=None, global_mask=None) -> Tensor:
        return linear_attention_tokens(q, k, v, key_padding_mask)  # no head transposes

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
