"""Reformer attention: shared-QK attention restricted by locality-sensitive hashing (Kitaev et al.
2020).

Queries double as keys: the key of token j is its query normalised to unit length, k̂ⱼ = qⱼ/‖qⱼ‖.
Each of ``n_hashes`` rounds hashes the keys with a random rotation R (d × b/2) into b buckets,
bucket = argmax [k̂R, −k̂R]; sorts the tokens by bucket (stable: ties by position); cuts the sorted
order into chunks of ``bucket_size`` tokens; and lets every query attend, with a softmax, to the
keys of its own bucket in its own chunk and the chunk before. A token attends to itself only when
it has no other key. The rounds are merged by log-sum-exp: outᵢ = Σᵣ wᵣ oᵢʳ with
wᵣ = softmaxᵣ(lseᵢʳ), which is one softmax over every round's keys (a key met in two rounds counts
twice). O(N · n_hashes · (bucket_size + b) · d) time: no N × N matrix.

The b buckets of a sequence follow its L real tokens, b = 2⌈L / (2 · bucket_size)⌉, so a bucket
holds ``bucket_size`` tokens on average whatever the padding. Padding (and the positions added to
fill the last chunk: any N works) sorts after every real token and is never a key, so outputs at
real positions do not depend on padding. Column j of every round's R depends only on the seed and
j, so sequences of different lengths in one batch hash as they would alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SelfAttention, plain_linears
from .registry import register_attention


def num_buckets(lengths: Tensor, bucket_size: int) -> Tensor:
    """Buckets per sequence, (B,) real lengths -> (B,): 2⌈L / (2 · bucket_size)⌉, at least 2."""
    return 2 * torch.div(lengths + 2 * bucket_size - 1, 2 * bucket_size,
                         rounding_mode="floor").clamp_min(1)


def lsh_rotations(n_hashes: int, dim: int, n_half: int, seed: int) -> Tensor:
    """Gaussian rotations (n_hashes, dim, n_half); column j depends only on ``(seed, j)``, so
    the rotations for more buckets extend those for fewer."""
    columns = []
    for j in range(n_half):
        generator = torch.Generator().manual_seed((seed * 1_000_003 + j) % 2**63)
        columns.append(torch.randn(n_hashes, dim, generator=generator))
    return torch.stack(columns, dim=-1)


def lsh_buckets(keys: Tensor, rotations: Tensor, n_buckets: Tensor) -> Tensor:
    """Bucket of every key in every round: keys (B, H, N, d) (their lengths do not matter),
    rotations (R, d, >= b/2), n_buckets (B,) even -> (B, H, R, N) long.

    Sequence i uses the first b_i / 2 columns: bucket argmax [k̂R, −k̂R], numbered j for column
    j of k̂R and h + j for column j of −k̂R, where h = max_i b_i / 2 (same order as argmax)."""
    half = n_buckets // 2
    h = int(half.max())
    if rotations.shape[-1] < h:
        raise ValueError(f"lsh_buckets needs {h} rotation columns for {2 * h} buckets, got "
                         f"{rotations.shape[-1]}")
    B, H, N, d = keys.shape
    R = rotations.shape[0]
    rotations = rotations[..., :h].to(keys.dtype).permute(1, 0, 2).reshape(d, R * h)
    x = (keys.reshape(-1, d) @ rotations).view(B, H, N, R, h)  # one GEMM for every round
    if bool((half < h).any()):  # shorter sequences: their extra columns never win
        unused = (torch.arange(h, device=keys.device) >= half[:, None])[:, None, None, None]
        top, top_idx = x.masked_fill(unused, float("-inf")).max(-1)
        low, low_idx = x.masked_fill(unused, float("inf")).min(-1)
    else:
        top, top_idx = x.max(-1)
        low, low_idx = x.min(-1)
    return torch.where(top >= -low, top_idx, low_idx + h).transpose(2, 3)


def _look_back(t: Tensor, fill: int) -> Tensor:
    """(..., C, c) -> (..., C, 2c): every chunk preceded by the chunk before (``fill`` before
    the first)."""
    return torch.cat([F.pad(t, (0, 0, 1, 0), value=fill)[..., :-1, :], t], dim=-1)


def _with_previous(t: Tensor) -> Tensor:
    """(G·C, c, d) -> (G·C, 2c, d): every chunk preceded by the chunk before (zeros before the
    first), as overlapping windows of one padded copy (a strided view: no per-chunk copies)."""
    n, c, d = t.shape
    flat = torch.cat([t.new_zeros(c, d), t.reshape(n * c, d)])  # (c + n·c, d)
    return flat.as_strided((n, 2 * c, d), (c * d, d, 1))


def _pair_products(a: Tensor, b: Tensor) -> Tensor:
    """Scores of every chunk with the chunk before and its own:
    a, b (G·C, c, d) -> (G·C, c, 2c) = [a_i b_{i-1}ᵀ | a_i b_iᵀ] (zeros for i = 0). One batched
    product with a contiguous result (writing into slices of a larger result makes the CPU
    kernel loop over the G·C chunks one by one)."""
    return a @ _with_previous(b).transpose(1, 2)


def _weighted_sums(w: Tensor, b: Tensor) -> Tensor:
    """The inverse pairing: w (G·C, c, 2c), b (G·C, c, d) -> w_i[:, :c] b_{i-1} + w_i[:, c:] b_i."""
    return w @ _with_previous(b)


def _weighted_sums_t(w: Tensor, a: Tensor) -> Tensor:
    """The transposed pairing: w (G·C, c, 2c), a (G·C, c, d) -> w_iᵀ[c:] a_i + w_{i+1}ᵀ[:c] a_{i+1}
    (what each chunk of keys receives from its own chunk of queries and the next)."""
    c = a.shape[1]
    out = torch.bmm(w[:, :, c:].transpose(1, 2), a)
    out[:-1].baddbmm_(w[1:, :, :c].transpose(1, 2), a[1:])
    return out


class _ChunkedAttention(torch.autograd.Function):
    """Softmax attention of each chunk of c sorted queries to the 2c keys of its own chunk and
    the one before.

    q, k, v (G, C·c, d) sorted, k already scaled by 1/√d; blocked (G, C, c, 2c) bool, at least
    one False per row -> out (G, C·c, d) and each row's log-sum-exp (G, C·c). The chunks of all
    G rows are processed as one sequence of G·C chunks: the pairs that cross from one row into
    the next are blocked (the first chunk of a row has no chunk before it).

    The hand-written backward keeps the work over the (G·C, c, 2c) weights P to batched products
    and two element-wise passes: dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O) + dlse), which includes the
    gradient through the log-sum-exp (the rounds' merge weights).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, blocked: Tensor, c: int):
        G, Np, d = q.shape
        qc, kc, vc = q.reshape(-1, c, d), k.reshape(-1, c, d), v.reshape(-1, c, d)
        scores = _pair_products(qc, kc)  # (G·C, c, 2c)
        scores.masked_fill_(blocked.view_as(scores), float("-inf"))
        top = scores.amax(-1, keepdim=True)
        weights = scores.sub_(top).exp_()  # softmax in the scores' buffer (no second one)
        total = weights.sum(-1, keepdim=True)
        weights.div_(total)
        lse = top + total.log()
        out = _weighted_sums(weights, vc)  # (G·C, c, d)
        ctx.save_for_backward(qc, kc, vc, weights, out)
        return out.view(G, Np, d), lse.view(G, Np)

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_lse: Tensor):
        qc, kc, vc, weights, out = ctx.saved_tensors
        G, Np, d = grad_out.shape
        c = qc.shape[1]
        grad_out = grad_out.reshape(-1, c, d)
        delta = (grad_out * out).sum(-1, keepdim=True) - grad_lse.reshape(-1, c, 1)
        grad_scores = _pair_products(grad_out, vc)  # dO Vᵀ
        grad_scores.sub_(delta).mul_(weights)  # dS
        grad_q = _weighted_sums(grad_scores, kc).view(G, Np, d)
        grad_k = _weighted_sums_t(grad_scores, qc).view(G, Np, d)
        grad_v = _weighted_sums_t(weights, grad_out).view(G, Np, d)
        return grad_q, grad_k, grad_v, None, None


def lsh_pattern(qk: Tensor, rotations: Tensor, n_buckets: Tensor, keep: Tensor,
                bucket_size: int) -> tuple[Tensor, Tensor]:
    """Who attends to whom in every round, for qk (B, H, Np, d) with Np a multiple of
    ``bucket_size`` = c and ``keep`` (B, Np) True = real token: (order, blocked).

    ``order`` (B, H, R, Np): each round's positions sorted by bucket (stable); ``blocked``
    (B, H, R, C, c, 2c) bool: sorted query s of chunk i may not use key t of chunks i - 1, i
    (another bucket, padding, or itself unless it has no other key)."""
    B, H, Np, _ = qk.shape
    R, c = rotations.shape[0], bucket_size
    C = Np // c
    buckets = lsh_buckets(qk, rotations, n_buckets)  # (B, H, R, Np)
    never = int(n_buckets.max())  # padding's bucket: after every real one
    buckets = buckets.masked_fill(~keep[:, None, None, :], never)
    buckets, order = buckets.sort(dim=-1, stable=True)  # order: positions, sorted
    b_q = buckets.view(B, H, R, C, c)
    b_k = _look_back(b_q, fill=-1)  # (B, H, R, C, 2c)
    pos_q = order.view(B, H, R, C, c)
    pos_k = _look_back(pos_q, fill=-1)
    # blocked: another bucket, padding, or itself ...
    itself = pos_q[..., :, None] == pos_k[..., None, :]  # (B, H, R, C, c, 2c)
    blocked = b_q[..., :, None] != b_k[..., None, :]
    blocked |= (b_k == never)[..., None, :]
    blocked |= itself
    # ... but a token with no other key attends to itself (in place: these are N · 2c each)
    itself &= blocked.all(-1, keepdim=True)
    blocked ^= itself
    return order, blocked


def lsh_attention_weights(qk: Tensor, rotations: Tensor, bucket_size: int,
                          key_padding_mask: Tensor | None = None) -> Tensor:
    """The map (B, H, N, N) that :func:`lsh_attention` (same arguments) applies to the values:
    one softmax of qᵢ·k̂ⱼ/√d over every round's keys, key j counted once per round that
    gives it to query i. O(N²): for inspection."""
    B, H, N, d = qk.shape
    c = bucket_size
    Np = math.ceil(N / c) * c
    keep = torch.ones(B, N, dtype=torch.bool, device=qk.device)
    if key_padding_mask is not None:
        keep = ~key_padding_mask
    n_buckets = num_buckets(keep.sum(-1), c)
    qk = qk.to(torch.promote_types(qk.dtype, torch.float32))
    qk_p, keep_p = F.pad(qk, (0, 0, 0, Np - N)), F.pad(keep, (0, Np - N), value=False)
    order, blocked = lsh_pattern(qk_p, rotations, n_buckets, keep_p, c)
    R, C = order.shape[2], Np // c
    pos_q = order.view(B, H, R, C, c, 1).expand(-1, -1, -1, -1, -1, 2 * c)
    pos_k = _look_back(order.view(B, H, R, C, c), fill=-1)[..., None, :].expand_as(pos_q)
    use = ~blocked & (pos_q < N)  # positions Np > N are never queries
    b = torch.arange(B, device=qk.device).view(B, 1, 1, 1, 1, 1).expand_as(use)[use]
    h = torch.arange(H, device=qk.device).view(1, H, 1, 1, 1, 1).expand_as(use)[use]
    counts = torch.zeros(B, H, N, N, dtype=qk.dtype, device=qk.device)
    counts.index_put_((b, h, pos_q[use], pos_k[use]), torch.ones_like(b, dtype=qk.dtype),
                      accumulate=True)  # (B, H, N, N): rounds in which i sees j
    keys = qk / qk.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scores = qk @ keys.transpose(-1, -2) * d**-0.5
    scores = scores - scores.amax(-1, keepdim=True)
    weights = counts * scores.exp()
    return weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(qk.dtype).tiny)


def lsh_attention(
    qk: Tensor,
    v: Tensor,
    rotations: Tensor,
    bucket_size: int,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """Shared-QK LSH attention: qk, v (B, H, N, d), rotations (n_hashes, d, >= b/2) -> (B, H, N, d).

    Args:
        rotations: one rotation per hashing round; sequence i uses its first b_i / 2 columns.
        bucket_size: tokens per chunk (the average bucket size).
        key_padding_mask: bool (B, N), True = padding: never a key. A padded query attends to
            itself (finite, discarded by the caller).

    Computed in fp32 (fp64 stays fp64) with autocast off.
    """
    B, H, N, d = qk.shape
    R, c = rotations.shape[0], bucket_size
    C = math.ceil(N / c)
    Np = C * c  # padded length: whole chunks
    keep = torch.ones(B, N, dtype=torch.bool, device=qk.device)
    if key_padding_mask is not None:
        keep = ~key_padding_mask
    n_buckets = num_buckets(keep.sum(-1), c)
    dtype = torch.promote_types(qk.dtype, torch.float32)
    with torch.autocast(device_type=qk.device.type, enabled=False):
        qk, v = qk.to(dtype), v.to(dtype)
        if Np > N:
            qk, v = F.pad(qk, (0, 0, 0, Np - N)), F.pad(v, (0, 0, 0, Np - N))
            keep = F.pad(keep, (0, Np - N), value=False)

        with torch.no_grad():  # the hashing, sorting and masks carry no gradient
            order, blocked = lsh_pattern(qk, rotations, n_buckets, keep, c)
            # rows of (B·H·Np, d) in each round's sorted order, and of (B·H·R·Np, d) back
            arange = torch.arange(B * H * R, device=qk.device).view(B, H, R, 1)
            sort_rows = (order + arange // R * Np).flatten()
            unsort_rows = (order.argsort(-1) + arange * Np).flatten()

        def sort(t: Tensor) -> Tensor:  # (B, H, Np, d) -> (B·H·R, Np, d), in each round's order
            return t.reshape(-1, d).index_select(0, sort_rows).view(B * H * R, Np, d)

        sorted_qk = sort(qk)
        # the key of a token: its query at unit length (here also divided by √d)
        inv_norm = sorted_qk.norm(dim=-1, keepdim=True).clamp_min(1e-12).reciprocal()
        keys = sorted_qk * (inv_norm * d**-0.5)
        out, lse = _ChunkedAttention.apply(sorted_qk, keys, sort(v), blocked.flatten(0, 2), c)

        # back to positions, then merge the rounds by their log-sum-exp
        out = out.reshape(-1, d).index_select(0, unsort_rows).view(B, H, R, Np, d)
        lse = lse.flatten().index_select(0, unsort_rows).view(B, H, R, Np)
        out = (torch.softmax(lse, dim=2)[..., None] * out).sum(2)  # (B, H, Np, d)
    return out[:, :, :N].to(v.dtype)


@register_attention("reformer")
class ReformerAttention(SelfAttention):
    """Shared-QK LSH attention, O(N · n_hashes · (bucket_size + N / bucket_size) · d).

    Args:
        n_hashes: hashing rounds (more = fewer missed neighbours, proportionally slower).
        bucket_size: tokens per chunk, and the average tokens per bucket.
        redraw: draw new rotations at every training forward pass (as the paper and the
            reference implementations do); False keeps the evaluation rotations throughout.
            Evaluation always uses the same rotations, so it is deterministic.
        seed: seed of the rotations (each draw is a function of ``seed`` and the number of
            training passes); None takes one from torch's global RNG, so ``torch.manual_seed``
            fixes it and stacked layers hash differently. Saved with the module's state.

    Queries and keys share one projection, W_qk = (W_q + W_k) / 2 (and its bias alike): the
    ``q_proj`` and ``k_proj`` layers stay, so state dicts move between backends, and both train.
    ``global_mask`` is accepted and ignored (every token may reach any other through its
    buckets). ``dropout`` is not applied (as in ``performer``, ``nystrom`` and ``linear``).
    """

    def __init__(self, embed_dim: int, num_heads: int, n_hashes: int = 2, bucket_size: int = 64,
                 redraw: bool = True, seed: int | None = None, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias)
        for name, value in (("n_hashes", n_hashes), ("bucket_size", bucket_size)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"reformer {name} must be a positive integer, got {value!r}")
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.n_hashes, self.bucket_size, self.redraw = n_hashes, bucket_size, bool(redraw)
        # plain ints (checkpointed through get/set_extra_state)
        self.seed, self.calls = int(seed), 0  # calls = training forward passes so far
        self._cached: tuple[tuple, Tensor] | None = None  # (draw, columns, device) -> rotations

    def get_extra_state(self) -> dict:
        return {"seed": self.seed, "calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.seed, self.calls = int(state["seed"]), int(state["calls"])
        self._cached = None

    def project_tokens(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The shared query-key projection and the values in one GEMM: (qk, qk, v), each
        (B, N, H, d). Quantized or hook-masked projections (see :func:`~.base.plain_linears`)
        are called as modules."""
        heads = (self.num_heads, self.head_dim)
        if not plain_linears(self.q_proj, self.k_proj, self.v_proj):
            qk = ((self.q_proj(x) + self.k_proj(x)) / 2).unflatten(-1, heads)
            return qk, qk, self.v_proj(x).unflatten(-1, heads)
        w_qk = (self.q_proj.weight + self.k_proj.weight) / 2
        weight = torch.cat([w_qk, self.v_proj.weight])
        bias = None
        if self.q_proj.bias is not None:
            bias = torch.cat([(self.q_proj.bias + self.k_proj.bias) / 2, self.v_proj.bias])
        qk, v = F.linear(x, weight, bias).unflatten(-1, (2, *heads)).unbind(2)
        return qk, qk, v

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(qk, qk, v) of :meth:`project_tokens` with the heads at dim 1 (B, H, N, d)."""
        qk, _, v = self.project_tokens(x)
        qk = qk.transpose(1, 2)
        return qk, qk, v.transpose(1, 2)

    def rotations(self, n_half: int, device: torch.device) -> Tensor:
        """The rotations (n_hashes, head_dim, >= n_half) of this pass: draw number ``calls``
        in training (if ``redraw``), draw 0 otherwise."""
        draw = self.calls if self.training and self.redraw else 0
        if self._cached is not None:
            (c_draw, c_half, c_device), rotations = self._cached
            if c_draw == draw and c_half >= n_half and c_device == device:
                return rotations
        seed = (self.seed * 1_000_003 + draw) % 2**63
        rotations = lsh_rotations(self.n_hashes, self.head_dim, n_half, seed).to(device)
        self._cached = ((draw, n_half, device), rotations)
        return rotations

    def attend(self, q, k, v, key_padding_mask=None, global_mask=None) -> Tensor:
        # q is the shared query-key (project_tokens returns it as k too)
        lengths = torch.full((q.shape[0],), q.shape[2], device=q.device)
        if key_padding_mask is not None:
            lengths = (~key_padding_mask).sum(-1)
        n_half = int(num_buckets(lengths, self.bucket_size).max()) // 2
        rotations = self.rotations(n_half, q.device)
        if self.training:
            self.calls += 1
        return lsh_attention(q, v, rotations, self.bucket_size, key_padding_mask)

    def attention_weights(self, q, k, key_padding_mask=None, global_mask=None) -> Tensor:
        """The bucketed pattern's map (B, H, N, N) for the current rotations (eval: draw 0);
        see :func:`lsh_attention_weights`."""
        lengths = torch.full((q.shape[0],), q.shape[2], device=q.device)
        if key_padding_mask is not None:
            lengths = (~key_padding_mask).sum(-1)
        n_half = int(num_buckets(lengths, self.bucket_size).max()) // 2
        return lsh_attention_weights(q, self.rotations(n_half, q.device), self.bucket_size,
                                     key_padding_mask)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_hashes={self.n_hashes}, "
                f"bucket_size={self.bucket_size}, redraw={self.redraw}")

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """As :meth:`SelfAttention.flops` with three projections, not four (shared QK)."""
        shared = 2 * batch * seq_len * self.embed_dim * self.inner_dim
        return super().flops(seq_len, batch) - 3.0 * shared

    def attention_flops(self, seq_len: int, batch: int = 1) -> float:
        """Per round: the hash ``2·B·H·N·d·b/2`` (b = buckets at length N) and the chunked
        ``QKᵀ`` and ``AV`` over ``2 · bucket_size`` keys per query ``2 · 2·B·H·N·2c·d``."""
        bh, n, d, c = batch * self.num_heads, seq_len, self.head_dim, self.bucket_size
        half = int(num_buckets(torch.tensor([n]), c)) // 2
        return self.n_hashes * (2 * bh * n * d * half + 2 * 2 * bh * n * 2 * c * d)
