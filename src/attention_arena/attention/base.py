"""What every backend shares: the q/k/v/out projections, the head split, and input checks.

A backend subclasses :class:`SelfAttention` and implements :meth:`SelfAttention.attend`, which maps
per-head ``q, k, v`` of shape (B, H, N, d) to (B, H, N, d). A backend whose core is faster in the
projections' own token layout (B, N, H, d) may also override :meth:`SelfAttention.attend_tokens`,
which ``forward`` calls (by default it moves the heads to dim 1 and calls ``attend``). Parameter
names are identical across backends, so weights move between them with
``load_state_dict(..., strict=False)``.

The projections map the model width D to the inner width H·d and back. They start equal (H·d = D);
:meth:`SelfAttention.prune_heads` removes heads, so the inner width shrinks while D stays.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_masks(
    x: Tensor, key_padding_mask: Tensor | None, global_mask: Tensor | None
) -> None:
    """Raise a clear error unless the masks are bool (B, N) matching ``x`` (B, N, D)."""
    for name, mask in (("key_padding_mask", key_padding_mask), ("global_mask", global_mask)):
        if mask is None:
            continue
        if mask.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor (True = {name.split('_')[0]}), "
                            f"got {mask.dtype}; convert it with `.bool()`")
        if mask.shape != x.shape[:2]:
            raise ValueError(f"{name} has shape {tuple(mask.shape)} but x is "
                             f"{tuple(x.shape)}; the mask must be (batch, seq_len)")


class SelfAttention(nn.Module):
    """Multi-head self-attention skeleton: ``x`` (B, N, D) -> (B, N, D).

    Args:
        embed_dim: model width D; must be divisible by ``num_heads``.
        num_heads: number of heads H (head dim d = D / H).
        dropout: dropout on the attention probabilities (where the backend forms them).
        bias: whether the four projections carry a bias.
    """

    backend_name = "base"
    stochastic_map = True  # attention_weights rows sum to 1 over real keys (False: see there)

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim ({embed_dim}) and num_heads ({num_heads}) "
                             "must be positive")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}; "
                             f"choose e.g. num_heads={_divisor_near(embed_dim, num_heads)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @property
    def inner_dim(self) -> int:
        """Width of the heads side by side, H·d (= ``embed_dim`` until heads are pruned)."""
        return self.num_heads * self.head_dim

    def split_heads(self, t: Tensor) -> Tensor:  # (B, N, H·d) -> (B, H, N, d)
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def merge_heads(self, t: Tensor) -> Tensor:  # (B, H, N, d) -> (B, N, H·d)
        return t.transpose(1, 2).flatten(2)

    def project_tokens(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, N, H, d) of x (B, N, D): one fused GEMM while the projections are plain
        float ``nn.Linear`` layers (same result as the three layers, faster); otherwise
        (quantized, or masked by ``torch.nn.utils.prune``) each projection module is called."""
        heads = (self.num_heads, self.head_dim)
        if not plain_linears(self.q_proj, self.k_proj, self.v_proj):
            return tuple(p(x).unflatten(-1, heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        bias = None
        if self.q_proj.bias is not None:
            bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        return tuple(t.unflatten(-1, heads) for t in F.linear(x, weight, bias).chunk(3, dim=-1))

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, H, N, d) of x (B, N, D): :meth:`project_tokens` with the heads at dim 1."""
        return tuple(t.transpose(1, 2) for t in self.project_tokens(x))

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        global_mask: Tensor | None = None,
    ) -> Tensor:
        """``x`` (B, N, D); masks bool (B, N): True = padding / True = global token."""
        self.check_input(x, key_padding_mask, global_mask)
        q, k, v = self.project_tokens(x)  # (B, N, H, d)
        out = self.attend_tokens(q, k, v, key_padding_mask=key_padding_mask,
                                 global_mask=global_mask)  # (B, N, H, d)
        return self.finish(out.transpose(1, 2), key_padding_mask)

    def check_input(self, x: Tensor, key_padding_mask: Tensor | None,
                    global_mask: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"{type(self).__name__} expects x of shape (batch, seq_len, "
                             f"{self.embed_dim}), got {tuple(x.shape)}")
        check_masks(x, key_padding_mask, global_mask)

    def finish(self, out: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """Merge heads, project out, and zero the padded positions (B, H, N, d) -> (B, N, D)."""
        return zero_padding(self.out_proj(self.merge_heads(out)), key_padding_mask)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None = None,
        global_mask: Tensor | None = None,
    ) -> Tensor:
        """Per-head attention core: (B, H, N, d) x3 -> (B, H, N, d)."""
        raise NotImplementedError

    def attend_tokens(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None = None,
        global_mask: Tensor | None = None,
    ) -> Tensor:
        """:meth:`attend` in the token layout: (B, N, H, d) x3 -> (B, N, H, d). The default
        moves the heads to dim 1 and back (views); override it to skip those transposes."""
        out = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          key_padding_mask=key_padding_mask, global_mask=global_mask)
        return out.transpose(1, 2)

    def attention_weights(
        self,
        q: Tensor,
        k: Tensor,
        key_padding_mask: Tensor | None = None,
        global_mask: Tensor | None = None,
    ) -> Tensor:
        """The attention map this backend applies to the values, (B, H, N, N), in eval mode.

        ``q``, ``k`` as :meth:`project_qkv` returns them; for a real query i, ``map[i] @ v``
        is :meth:`attend`'s output i, and padded keys get weight 0. Backends without an
        N × N matrix build the one their computation implies (only on request: see
        ``attention_arena.explain.record_attention``). Default: dense softmax attention.
        """
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, N, N)
        return masked_softmax(scores, key_padding_mask)

    @torch.no_grad()
    def prune_heads(self, keep: Sequence[int]) -> None:
        """Remove every head not in ``keep`` (indices into the current heads), physically.

        The rows of the other heads leave ``q_proj``, ``k_proj`` and ``v_proj`` and their columns
        leave ``out_proj`` (new, smaller ``nn.Linear`` layers; D stays), so the output equals
        this module's with those heads' contributions zeroed, at the cost of ``len(keep)`` heads.
        Backends with per-head parameters or buffers extend this to slice theirs.
        """
        keep = check_heads(keep, self.num_heads)
        if not plain_linears(self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            raise TypeError(f"{type(self).__name__}.prune_heads needs plain float nn.Linear "
                            "projections: prune heads before quantizing (or magnitude pruning)")
        d = self.head_dim
        rows = (torch.tensor(keep)[:, None] * d + torch.arange(d)).flatten()  # (len(keep)·d,)
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(self, name)
            setattr(self, name, _linear_like(old, old.weight[rows],
                                             None if old.bias is None else old.bias[rows]))
        self.out_proj = _linear_like(self.out_proj, self.out_proj.weight[:, rows],
                                     self.out_proj.bias)
        self.num_heads = len(keep)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"

    def flops(self, seq_len: int, batch: int = 1) -> float | None:
        """Useful FLOPs of one forward + backward pass (3 × forward) on ``batch`` sequences of
        ``seq_len`` tokens: the four projections ``4 · 2·B·N·D·H·d`` (``4 · 2·B·N·D²`` unless
        heads were pruned) plus :meth:`attention_flops`
        (one multiply-add = 2 FLOPs). None where the backend does not count its core."""
        core = self.attention_flops(seq_len, batch)
        if core is None:
            return None
        projections = 4 * 2 * batch * seq_len * self.embed_dim * self.inner_dim
        return 3.0 * (projections + core)

    def attention_flops(self, seq_len: int, batch: int = 1) -> float | None:
        """Forward FLOPs of the attention core: the matmul work the method has to do with this
        instance's options (not padding, masked-out corners or element-wise softmax work).
        Backends override it; None = not counted (``arena-bench`` shows '-')."""
        return None

    @classmethod
    def fit_to_length(cls, options: dict, max_len: int) -> tuple[dict, list[str]]:
        """``options`` (this backend's keyword arguments) adapted to sequences of at most
        ``max_len`` tokens, and one note per change. Default: unchanged."""
        return dict(options), []


def masked_softmax(scores: Tensor, key_padding_mask: Tensor | None = None,
                   allowed: Tensor | None = None) -> Tensor:
    """Softmax over the last dimension of scores (B, H, N, N) with padded keys
    (``key_padding_mask`` (B, N)) and, optionally, keys not ``allowed`` (broadcastable bool)
    given weight 0; a row with no key left is all zeros."""
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def zero_padding(y: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """``y`` (B, N, D) with the padded positions (``key_padding_mask`` (B, N)) set to 0: what
    every backend's output holds there."""
    return y if key_padding_mask is None else y.masked_fill(key_padding_mask[..., None], 0.0)


def plain_linears(*modules: nn.Module) -> bool:
    """True if every module is an ``nn.Linear`` whose weight is an ordinary float parameter:
    not a quantized module or tensor, not a weight recomputed by a pruning hook."""
    return all(isinstance(m, nn.Linear) and type(m.weight) is nn.Parameter
               and m.weight.is_floating_point() for m in modules)


def fusable(x: Tensor, *layers: nn.Module) -> bool:
    """True where a backend may compute its module as one function of ``x`` and the layers'
    weights instead of calling them: plain float ``nn.Linear`` layers, an fp32 or fp64 input,
    autocast off. Otherwise (quantized or pruning-masked layers, half precision, autocast,
    which runs the projections in half precision) the per-head path keeps those semantics."""
    return (plain_linears(*layers) and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(x.device.type))


def linear_bias(module: nn.Module) -> Tensor | None:
    """The bias of a Linear layer, float or quantized (``torch.ao`` modules return it from a
    method)."""
    bias = getattr(module, "bias", None)
    return bias() if callable(bias) else bias


def check_heads(keep: Sequence[int], num_heads: int) -> list[int]:
    """``keep`` as a sorted list of distinct head indices in [0, num_heads); a clear error for
    an empty, out-of-range or repeated one."""
    heads = [int(h) for h in keep]
    if not heads:
        raise ValueError("prune_heads needs at least one head to keep, got an empty list")
    bad = [h for h in heads if not 0 <= h < num_heads]
    if bad:
        raise IndexError(f"heads {bad} out of range: this attention has {num_heads} heads "
                         f"(indices 0..{num_heads - 1})")
    if len(set(heads)) != len(heads):
        raise ValueError(f"prune_heads got repeated heads in {heads}; list each head once")
    return sorted(heads)


def _linear_like(old: nn.Linear, weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """A new ``nn.Linear`` holding copies of ``weight`` (out, in) and ``bias``, on ``old``'s
    device and dtype, with its ``requires_grad``."""
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    new.requires_grad_(old.weight.requires_grad)
    return new


def _divisor_near(n: int, target: int) -> int:
    return min((h for h in range(1, n + 1) if n % h == 0), key=lambda h: abs(h - target))
