"""Pieces shared by the block-sparse backends (``longformer``, ``bigbird``).

Softmax attention over a union of disjoint key sets is the per-set softmax outputs oₚ merged by
their log-sum-exps lₚ (the log of each set's softmax denominator):

    o = Σₚ wₚ oₚ,   wₚ = exp(lₚ − L),   L = log Σₚ exp(lₚ)

so a query can see a band of keys, a few gathered blocks and the global tokens without
concatenating them: :func:`merged_attention` runs one attention per key set and merges them
exactly. :func:`block_sparse_attention` adds the global tokens as one more (small) key set,
computed once for all queries, and lets global queries attend to every real key.

Layout: queries in blocks, q (X, Y, M, d) with X·Y·M rows (e.g. (B·H, blocks, block, d)); every
key set has keys and values (X, Y, S, d) (expanded views are fine) and an optional bool ``allowed``
mask broadcastable to (X, Y, M, S). No module here registers a backend (leading underscore).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .full import full_attention

KeySet = tuple[Tensor, Tensor, Tensor | None]  # k, v (X, Y, S, d), allowed or None

# PyTorch's CPU flash-attention kernels (private ATen ops that also return the log-sum-exp);
# without them every key set takes the reference path.
_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_flash_backward = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward",
                          None)


def merged_attention(q: Tensor, key_sets: list[KeySet], dropout_p: float = 0.0,
                     rows: Tensor | None = None, values: Tensor | None = None) -> Tensor:
    """Softmax attention of every query over the union of its key sets: q (X, Y, M, d) -> same.

    The key sets must be disjoint (a key in two sets would count twice). A query with no allowed
    key in any set gets zeros (or, on the reference path, some finite value). Optionally the
    outputs of the query rows ``rows`` (n,) (indices into the X·Y·M rows) are ``values`` (n, d)
    instead, computed elsewhere; the key sets then get no gradient from those rows.
    """
    if _use_flash(q, dropout_p):
        flat = [t for key_set in key_sets for t in _with_bias(key_set, q.dtype)]
        return _FlashMerge.apply(q, rows, values, *flat)
    outs, lses = zip(*(_attention_with_lse(q, k, v, allowed, dropout_p)
                       for k, v, allowed in key_sets), strict=True)
    out = sum(w[..., None] * o for w, o in zip(_merge_weights(lses), outs, strict=True))
    if rows is not None:
        out = out.flatten(0, -2).index_copy(0, rows, values.to(out.dtype)).view_as(out)
    return out.to(q.dtype)


def _use_flash(q: Tensor, dropout_p: float) -> bool:
    """PyTorch's CPU flash kernel returns the log-sum-exp but has no dropout; elsewhere (CUDA,
    dropout) the reference path forms the scores of each block explicitly."""
    kernels = _flash is not None and _flash_backward is not None
    return kernels and q.device.type == "cpu" and dropout_p == 0.0


def _merge_weights(lses: list[Tensor]) -> list[Tensor]:
    """wₚ = exp(lₚ − L), L = log Σₚ exp(lₚ), for lses (..., M). Rows where every lₚ is -inf
    (no key at all) get weight 0 everywhere, hence zeros."""
    total = torch.stack(lses).logsumexp(0)
    total = total.masked_fill(total.isneginf(), 0.0)
    return [(lse - total).exp() for lse in lses]


def _attention_with_lse(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None,
                        dropout_p: float) -> tuple[Tensor, Tensor]:
    """The reference path: explicit scores (X, Y, M, S), differentiable by autograd.

    Returns the output and the log-sum-exp, both in fp32 at least. A row with no allowed key
    has its scores clamped to the dtype's minimum rather than -inf (finite gradients): its
    log-sum-exp is then about that minimum, so its weight in the merge is 0 whenever another
    set has a key."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(device_type=q.device.type, enabled=False):
        scores = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * q.shape[-1] ** -0.5
        if allowed is not None:
            scores = scores.masked_fill(~allowed, torch.finfo(dtype).min)
        lse = scores.logsumexp(-1)
        weights = F.dropout((scores - lse[..., None]).exp(), dropout_p)
        return weights @ v.to(dtype), lse


def _with_bias(key_set: KeySet, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
    """(k, v, allowed) -> (k, v, additive bias: 0 where allowed, -inf elsewhere, or None)."""
    k, v, allowed = key_set
    if allowed is None:
        return k, v, None
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return k, v, bias.masked_fill_(~allowed, float("-inf"))


# Key sets with at most this many keys (the global tokens) get explicit scores, products and
# in-place updates; larger ones go through the flash kernel.
SMALL_KEY_SET = 16


class _FlashMerge(torch.autograd.Function):
    """:func:`merged_attention` through PyTorch's CPU flash-attention kernels.

    Forward: each key set's kernel returns oₚ and lₚ; they are merged in place into the first
    kernel output. A small key set (at most ``SMALL_KEY_SET`` keys) gets explicit scores
    instead and adds its wₚ Pₚ Vₚ in place, one key at a time.

    Backward: with L the merged log-sum-exp, the merged attention weights of set p are
    exp(sₚ − L) = wₚ Pₚ, and the gradient of its scores is exp(sₚ − L) ⊙ (dO Vₚᵀ − D) with
    D = rowsum(dO ⊙ o), o the MERGED output. That is exactly what set p's flash backward
    computes when given L in place of lₚ and o in place of oₚ: one backward kernel call per set,
    on the unchanged dO, no attention matrix stored. A small set computes it explicitly and adds
    its part of dQ to the kernel's in place (products of dO in slices, no temporary of the
    output's size). Rows overridden by ``values`` get L = +inf: zero weight in the backward.
    """

    @staticmethod
    def forward(ctx, q: Tensor, rows: Tensor | None, values: Tensor | None,
                *flat: Tensor | None) -> Tensor:
        sets = [flat[i:i + 3] for i in range(0, len(flat), 3)]  # (k, v, bias)
        dtype = torch.promote_types(q.dtype, torch.float32)
        outs, lses, scores = [], [], []
        for k, v, bias in sets:
            if k.shape[-2] <= SMALL_KEY_SET:
                s = _scores(q, k, bias, dtype)  # (X, Y, M, S)
                out, lse = None, s.logsumexp(-1)
            else:
                s = None
                out, lse = _flash(q, k, v, attn_mask=bias)
                if bias is not None:  # the kernel reports 0 for a row without keys: make it -inf
                    lse = lse.masked_fill(bias.isneginf().all(-1).expand_as(lse), float("-inf"))
            outs.append(out)
            lses.append(lse)
            scores.append(s)
        total = torch.stack(lses).logsumexp(0)  # L: (X, Y, M)
        total = total.masked_fill(total.isneginf(), 0.0).contiguous()  # no keys: weights 0

        # o = Σ wₚ oₚ with wₚ = exp(lₚ − L), in place in the first kernel output (any layout)
        out = next((o for o in outs if o is not None), None)
        if out is None:
            out = torch.zeros_like(q)
        for o, lse, s, (_, v, _) in zip(outs, lses, scores, sets, strict=True):
            if o is out and len(sets) > 1:
                out.mul_((lse - total).exp()[..., None])
            elif o is not None and o is not out:
                out.addcmul_((lse - total).exp()[..., None], o)
            elif o is None:  # out += exp(sₚ − L) Vₚ, one key at a time
                weights = (s - total[..., None]).exp()  # (X, Y, M, S)
                for j in range(weights.shape[-1]):
                    out.addcmul_(weights[..., j:j + 1], v[..., j:j + 1, :])
        del outs
        if rows is not None:
            out[_unravel(rows, q.shape)] = values.to(out.dtype)
            total.view(-1).index_fill_(0, rows, float("inf"))
        ctx.save_for_backward(q, out, rows, total, *flat, *scores)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, out, rows, total, *rest = ctx.saved_tensors
        n = len(rest) // 4
        flat, scores = rest[:3 * n], rest[3 * n:]
        scale = q.shape[-1] ** -0.5
        grads: list[Tensor | None] = [None] * (3 * n)

        grad_q = None
        for p in (p for p in range(n) if scores[p] is None):  # kernel sets
            k, v, bias = flat[3 * p:3 * p + 3]
            dq, grads[3 * p], grads[3 * p + 1] = _flash_backward(
                grad_out, q, k, v, out, total, 0.0, False, attn_mask=bias)
            grad_q = dq if grad_q is None else grad_q.add_(dq)
            del dq
        if grad_q is None:
            grad_q = torch.zeros_like(q)

        # Small sets, key by key: dsⱼ = aⱼ ⊙ dO·(vⱼ − o) with aⱼ = exp(sⱼ − L) (dO·o is D),
        # dvⱼ = Σ_rows aⱼ dO, dkⱼ = Σ_rows dsⱼ q / √d, dQ += dsⱼ kⱼ / √d.
        for p in (p for p in range(n) if scores[p] is not None):
            k, v, _ = flat[3 * p:3 * p + 3]
            weights = (scores[p] - total[..., None]).exp()  # (X, Y, M, S)
            dks, dvs = [], []
            for j in range(k.shape[-2]):
                a_j, v_j = weights[..., j:j + 1], v[..., j:j + 1, :]
                ds_j = a_j * _sliced(_row_dot_diff, grad_out, v_j, out)  # (X, Y, M, 1)
                dks.append(scale * ds_j.transpose(-1, -2) @ q.to(ds_j.dtype))
                dvs.append(_sliced(_weighted_row_sum, grad_out, a_j))  # (X, Y, 1, d)
                grad_q.addcmul_(ds_j, k[..., j:j + 1, :], value=scale)
            grads[3 * p] = torch.cat(dks, -2).to(k.dtype)
            grads[3 * p + 1] = torch.cat(dvs, -2).to(v.dtype)

        grad_values = None
        if rows is not None:  # grad_out need not be contiguous: index it in 3 dimensions
            grad_values = grad_out[_unravel(rows, q.shape)]
        return grad_q, None, grad_values, *grads


def _scores(q: Tensor, k: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Scaled scores q kᵀ / √d (+ bias) in ``dtype``: (X, Y, M, d), (X, Y, S, d) -> (X, Y, M, S)."""
    scores = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores if bias is None else scores + bias


def _unravel(rows: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor, Tensor]:
    """Flat row indices into (X, Y, M, d) -> indices of dims 0, 1, 2 (for any memory layout).
    (``torch.unravel_index`` allocates far more than this.)"""
    _, Y, M, _ = shape
    return rows // (Y * M), rows // M % Y, rows % M


def _row_dot_diff(g: Tensor, v: Tensor, o: Tensor) -> Tensor:
    """Σ_d g·(v − o) in fp32 at least: (..., M, d) x3 (broadcast) -> (..., M, 1)."""
    dtype = torch.promote_types(g.dtype, torch.float32)
    return (g.to(dtype) * (v.to(dtype) - o.to(dtype))).sum(-1, keepdim=True)


def _weighted_row_sum(g: Tensor, w: Tensor) -> Tensor:
    """Σ_M w·g in fp32 at least: g (..., M, d), w (..., M, 1) -> (..., 1, d)."""
    dtype = torch.promote_types(g.dtype, torch.float32)
    return (w.to(dtype) * g.to(dtype)).sum(-2, keepdim=True)


def _sliced(fn, *tensors: Tensor, rows: int = 1 << 12) -> Tensor:
    """``fn(*tensors)`` on slices of dimension 0 (about ``rows`` rows of the first, a
    (X, Y, M, d) tensor, each), concatenated: element-wise temporaries stay small (in cache)."""
    a = tensors[0]
    step = max(1, rows // (a.shape[1] * a.shape[2]))
    return torch.cat([fn(*(t[i:i + step] for t in tensors)) for i in range(0, a.shape[0], step)])


# --------------------------------------------------------------------------------------------
# Blocks and windows in the (B·H, blocks, rows, d) layout
# --------------------------------------------------------------------------------------------

def query_blocks(t: Tensor, block: int) -> Tensor:
    """(B, H, N, d) -> (B·H, nb, block, d), N zero-padded to nb·block (contiguous)."""
    B, H, N, d = t.shape
    nb = math.ceil(N / block)
    return F.pad(t, (0, 0, 0, nb * block - N)).reshape(B * H, nb, block, d)


def pad_keys(t: Tensor, block: int, halo: int) -> Tensor:
    """(B, H, N, d) -> (B, H, (nb + 2·halo)·block, d): ``halo`` blocks of zeros before, and
    after the last (partial) block. Position p sits at p + halo·block."""
    N = t.shape[2]
    return F.pad(t, (0, 0, halo * block, (math.ceil(N / block) + halo) * block - N))


def key_windows(tp: Tensor, block: int, r: int) -> Tensor:
    """Zero-copy windows of padded keys (:func:`pad_keys` with halo r):
    (B, H, (nb + 2r)·block, d) -> (B·H, nb, (2r+1)·block, d).

    Window i holds positions (i - r)·block ... (i + r + 1)·block - 1 (zeros outside [0, N))."""
    return _Windows.apply(tp, block, r).flatten(0, 1)


class _Windows(torch.autograd.Function):
    """``unfold`` into windows of 2r + 1 blocks, stride one block: (B, H, L, d) ->
    (B, H, L / block - 2r, (2r+1)·block, d), a view. The backward adds the 2r + 1 block slices
    of the windows' gradient into place (``unfold``'s own backward is several times slower)."""

    @staticmethod
    def forward(ctx, tp: Tensor, block: int, r: int) -> Tensor:
        ctx.block, ctx.r = block, r
        return tp.unfold(2, (2 * r + 1) * block, block).transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        B, H, nb, _, d = grad.shape
        block, width = ctx.block, 2 * ctx.r + 1
        out = grad.new_zeros(B, H, nb + width - 1, block, d)
        for j, piece in enumerate(grad.unflatten(3, (width, block)).unbind(3)):
            out[:, :, j:j + nb] += piece  # block j of window i is block i + j
        return out.flatten(2, 3), None, None


def mask_windows(m: Tensor, block: int, r: int, nb: int) -> Tensor:
    """The same windows for a bool (B, N) mask: -> (B, nb, (2r+1)·block), False outside."""
    m = F.pad(m, (r * block, (nb + r) * block - m.shape[1]), value=False)
    return m.unfold(1, (2 * r + 1) * block, block)


def per_head(mask: Tensor, heads: int) -> Tensor:
    """A mask (B, ...) for every head: (B·H, ...); a broadcast view when B = 1."""
    if mask.shape[0] == 1:
        return mask
    return mask[:, None].expand(mask.shape[0], heads, *mask.shape[1:]).flatten(0, 1)


# --------------------------------------------------------------------------------------------
# Global tokens, and the whole block-sparse computation
# --------------------------------------------------------------------------------------------

def block_sparse_attention(q: Tensor, kp: Tensor, vp: Tensor, key_sets: list[KeySet],
                           block: int, halo: int, keep: Tensor, global_mask: Tensor | None,
                           dropout_p: float = 0.0) -> Tensor:
    """Queries in blocks of ``block`` over their ``key_sets`` plus the global tokens:
    q (B, H, N, d) -> (B, H, N, d).

    ``kp``, ``vp``: keys and values padded by :func:`pad_keys` with ``halo``; ``key_sets`` hold
    (B·H, nb, S, d) keys taken from them (windows, gathered blocks) and must leave the global
    keys out. ``keep`` (B, N) True = real token; ``global_mask`` (B, N) real global tokens, or
    None. Every query also sees the global keys (one extra key set), and a global query attends
    to every real key instead.
    """
    B, H, N, d = q.shape
    nb = math.ceil(N / block)
    offset = halo * block  # of position 0 in kp, vp
    glob = None
    if global_mask is not None and global_mask.any():
        idx, ok = glob = global_positions(global_mask)  # (B, G) each
        keep_p = F.pad(keep, (offset, kp.shape[2] - N - offset), value=False)
        # Computed first, so that autograd runs its backward after the blocks' (a smaller
        # peak); on kp, vp, which the key sets keep alive anyway.
        out_glob = full_attention(take_rows(q, idx), kp, vp, ~keep_p, dropout_p=dropout_p)
        kg, vg = (take_rows(t, idx + offset).flatten(0, 1)[:, None] for t in (kp, vp))
        allowed = None if bool(ok.all()) else per_head(ok[:, None, None, :], H)
        key_sets = [*key_sets, (kg.expand(-1, nb, -1, -1), vg.expand(-1, nb, -1, -1), allowed)]
    rows = values = None
    if glob is not None:  # the global queries' rows: their attention to every real key
        batch, slot = ok.nonzero(as_tuple=True)  # (n,) each: the real global tokens
        heads = torch.arange(H, device=q.device)
        rows = ((batch[:, None] * H + heads) * (nb * block) + idx[batch, slot][:, None]).flatten()
        values = out_glob[batch, :, slot].flatten(0, 1)  # (n·H, d), the same order
    out = merged_attention(query_blocks(q, block), key_sets, dropout_p, rows, values)
    out = out.reshape(B, H, nb * block, d)
    return out[:, :, :N]


def global_positions(global_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B, N) bool -> (idx, ok), both (B, G) with G the most global tokens of a row: each row's
    global positions in order, then filler slots (``ok`` False)."""
    G = int(global_mask.sum(-1).max())
    idx = torch.argsort((~global_mask).to(torch.int8), dim=1, stable=True)[:, :G]
    return idx, global_mask.gather(1, idx)


def take_rows(t: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` (B, G) of every head: t (B, H, N, d) -> (B, H, G, d).

    Indexing rather than ``gather``, whose backward keeps all of ``t`` alive."""
    batch = torch.arange(t.shape[0], device=t.device)[:, None]
    return t[batch, :, idx].transpose(1, 2)  # t[batch, :, idx] is (B, G, H, d)
