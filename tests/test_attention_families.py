"""Nyströmformer, linear attention and Reformer against naive float64 references, and the
invariances every backend owes its users (padding, empty rows, gradients, half precision)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from attention_arena.attention import build_attention, reference_attention
from attention_arena.attention.base import SelfAttention
from attention_arena.attention.linear import linear_attention
from attention_arena.attention.nystrom import (
    iterative_pinv,
    landmark_means,
    landmark_segments,
    nystrom_attention,
)
from attention_arena.attention.reformer import lsh_attention, lsh_rotations, num_buckets
from attention_arena.bench import useful_flops
from attention_arena.bench.peers import PEERS
from attention_arena.model import TransformerClassifier
from attention_arena.train import CONF_DIR

FAMILIES = ["nystrom", "linear", "reformer"]
D, H = 32, 4
# options small enough that the approximations have structure at test sizes
SMALL = {"nystrom": {"num_landmarks": 8}, "linear": {}, "reformer": {"bucket_size": 4}}
VARIANTS = [("nystrom", {"num_landmarks": 8}), ("nystrom", {"num_landmarks": 64}),
            ("nystrom", {"num_landmarks": 8, "conv_kernel": 5}), ("linear", {}),
            ("reformer", {"bucket_size": 4}), ("reformer", {"bucket_size": 4, "n_hashes": 3}),
            ("reformer", {})]


def make(name: str, **kw):
    torch.manual_seed(0)
    return build_attention(name, embed_dim=D, num_heads=H, **kw)


def qkv(B=2, N=40, d=8, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, d, generator=g, dtype=dtype) * scale for _ in range(3)]


def tail_padding(lengths: list[int], N: int) -> torch.Tensor:
    return torch.arange(N)[None, :] >= torch.tensor(lengths)[:, None]  # (B, N) True = pad


def allowed_keys(pad: torch.Tensor, H: int = H) -> torch.Tensor:
    """(B, H, N, N): every real key, for every query."""
    B, N = pad.shape
    return (~pad)[:, None, None, :].expand(B, H, N, N)


# --- Nyströmformer --------------------------------------------------------------------------

def test_landmark_segments_cut_the_real_tokens_in_order():
    keep = torch.tensor([[True, False, True, True, False, True, True]])  # L = 5 real tokens
    # ranks 0, -, 1, 2, -, 3, 4 -> floor(rank · 2 / 5) = 0, 0, 0, 1, 1; padding -> slot 2
    assert landmark_segments(keep, 2).tolist() == [[0, 2, 0, 0, 2, 1, 1]]
    x = torch.arange(7.0, dtype=torch.float64).view(1, 1, 7, 1)
    means, counts = landmark_means(x, landmark_segments(keep, 2), 2)
    assert means.flatten().tolist() == [(0 + 2 + 3) / 3, (5 + 6) / 2]
    assert counts.tolist() == [[3, 2]]
    # more landmarks than real tokens: floor(rank · 8 / 5) = 0, 1, 3, 4, 6, the rest empty
    means, counts = landmark_means(x, landmark_segments(keep, 8), 8)
    assert counts.tolist() == [[1, 1, 0, 1, 1, 0, 1, 0]]
    assert means.flatten().tolist() == [0.0, 2.0, 0.0, 3.0, 5.0, 0.0, 6.0, 0.0]


def test_iterative_pinv_converges_to_the_pseudo_inverse():
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(3, 16, 16, generator=g, dtype=torch.float64), -1)
    torch.testing.assert_close(iterative_pinv(a, 40), torch.linalg.pinv(a), atol=1e-8, rtol=0)
    # block-diagonal input (an empty landmark's identity block) stays block-diagonal
    block = torch.block_diag(a[0], torch.eye(3, dtype=torch.float64))
    z = iterative_pinv(block, 40)
    assert (z[:16, 16:] == 0).all() and (z[16:, :16] == 0).all()
    torch.testing.assert_close(z[16:, 16:], torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("N,m", [(40, 40), (40, 64), (33, 40)])
def test_nystrom_with_a_landmark_per_token_equals_full_attention(N, m):
    q, k, v = qkv(N=N)
    pad = tail_padding([N, N - 11], N)
    for p in (None, pad):
        allowed = None if p is None else allowed_keys(p)
        ref = reference_attention(q, k, v, allowed)
        real = torch.ones(2, N, dtype=torch.bool) if p is None else ~p
        real = real[:, None, :, None]
        for iterations in (None, 60):  # exact pseudo-inverse, and the iteration converged
            out = nystrom_attention(q, k, v, m, iterations, p)
            torch.testing.assert_close(out * real, ref * real, atol=1e-8, rtol=0)
    # the paper's 6 iterations have not converged on this 40 × 40 matrix: not exact
    assert (nystrom_attention(q, k, v, 40, 6) - reference_attention(q, k, v)).abs().max() > 1e-4


def test_nystrom_error_falls_as_landmarks_grow():
    errors = []
    for m in (8, 32, 128, 256):
        err = 0.0
        for seed in range(4):
            q, k, v = qkv(B=1, N=256, d=16, seed=seed)
            exact = reference_attention(q, k, v)
            err += ((nystrom_attention(q, k, v, m) - exact).norm() / exact.norm()).item()
        errors.append(err / 4)
    assert errors[0] > errors[1] > errors[2] > errors[3], errors
    assert errors[3] < 0.2 < errors[0], errors


def test_nystrom_padding_anywhere_equals_the_sequence_without_it():
    q, k, v = qkv(B=1, N=50, seed=3)
    pad = torch.zeros(1, 50, dtype=torch.bool)
    pad[0, [0, 7, 8, 9, 30, 49]] = True  # not only at the end
    junk = pad[:, None, :, None]
    qj, kj, vj = (t.masked_fill(junk, 1e3) for t in (q, k, v))
    out = nystrom_attention(qj, kj, vj, 8, key_padding_mask=pad)
    real = ~pad[0]
    alone = nystrom_attention(q[:, :, real], k[:, :, real], v[:, :, real], 8)
    torch.testing.assert_close(out[:, :, real], alone, atol=1e-12, rtol=0)


def test_nystrom_empty_landmarks_drop_out():
    """More landmarks than real tokens = one landmark per real token, also with the paper's
    6 iterations (the empty ones change neither the iteration nor its starting scale)."""
    q, k, v = qkv(N=30, seed=4)
    pad = tail_padding([30, 19], 30)
    out = nystrom_attention(q, k, v, 64, 6, pad)
    for b, L in enumerate((30, 19)):
        alone = nystrom_attention(q[b:b + 1, :, :L], k[b:b + 1, :, :L], v[b:b + 1, :, :L], L, 6)
        torch.testing.assert_close(out[b:b + 1, :, :L], alone, atol=1e-12, rtol=0)


def test_nystrom_conv_residual_is_a_depthwise_convolution_of_values():
    attn = make("nystrom", num_landmarks=4, conv_kernel=3).double()
    x = torch.randn(2, 12, D, dtype=torch.float64)
    pad = tail_padding([12, 9], 12)
    q, k, v = attn.project_qkv(x)
    out = attn.attend(q, k, v, key_padding_mask=pad)
    w = attn.conv.weight[:, 0, :, 0]  # (H, 3): one kernel per head
    v0 = F.pad(v.masked_fill(pad[:, None, :, None], 0.0), (0, 0, 1, 1))  # zeros around
    by_hand = sum(w[None, :, t, None, None] * v0[:, :, t:t + 12] for t in range(3))
    expected = nystrom_attention(q, k, v, 4, 6, pad) + by_hand
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert sum(p.numel() for p in attn.conv.parameters()) == H * 3


def test_nystrom_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="num_landmarks must be a positive integer"):
        make("nystrom", num_landmarks=0)
    with pytest.raises(ValueError, match="pinv_iterations must be a positive integer"):
        make("nystrom", pinv_iterations=0)
    with pytest.raises(ValueError, match="conv_kernel must be an odd positive integer"):
        make("nystrom", conv_kernel=32)
    assert make("nystrom", conv_kernel=0).conv is None


# --- linear attention -----------------------------------------------------------------------

def explicit_linear(q, k, v, key_padding_mask=None):
    """φ(Q) φ(K)ᵀ written out as an N × N matrix, in float64."""
    a = (F.elu(q.double()) + 1) @ (F.elu(k.double()) + 1).transpose(-1, -2)  # (B, H, N, N)
    if key_padding_mask is not None:
        a = a * ~key_padding_mask[:, None, None, :]
    return (a @ v.double()) / a.sum(-1, keepdim=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_linear_equals_explicit_feature_computation(dtype, tol):
    q, k, v = qkv(N=60, d=16, dtype=dtype)
    pad = tail_padding([60, 41], 60)
    for p in (None, pad):
        out = linear_attention(q, k, v, p)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), explicit_linear(q, k, v, p), atol=tol, rtol=tol)


def test_linear_accumulates_in_fp32_under_autocast():
    q, k, v = (t.bfloat16() for t in qkv(B=1, N=16384, d=16, dtype=torch.float32, seed=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    # exactly the fp32 computation, rounded once at the end (bf16 sums would not be)
    assert torch.equal(out, linear_attention(q.float(), k.float(), v.float()).bfloat16())
    exact = linear_attention(q.double(), k.double(), v.double())
    assert ((out.double() - exact).norm() / exact.norm()).item() < 3e-3


def test_linear_matches_fast_transformers_formula():
    """The einsum port of fast-transformers' LinearAttention (arena-bench's peer) with our
    weights: the same outputs up to its ε = 1e-6 in the denominator."""
    from attention_arena.bench.peers import _PeerLinearEinsum

    ours = make("linear").double()
    peer = _PeerLinearEinsum(D, H, 50).double()
    for mine, theirs in ((ours.q_proj, peer.q), (ours.k_proj, peer.k), (ours.v_proj, peer.v),
                         (ours.out_proj, peer.out)):
        theirs.load_state_dict(mine.state_dict())
    x = torch.randn(2, 50, D, dtype=torch.float64)
    torch.testing.assert_close(ours(x), peer(x), atol=1e-7, rtol=1e-6)


# --- Reformer -------------------------------------------------------------------------------

def lsh_reference(qk, v, rotations, bucket_size, pad=None, chunked=True):
    """Dense Reformer, one (sequence, head, round) at a time: the hash buckets from the same
    rotations, each token's rank in the (bucket, position) order by counting, allowed pairs =
    same bucket, chunk of the key = chunk of the query or the one before (``chunked``), a real
    key, not itself unless no other; rounds merged by log-sum-exp."""
    B, Hh, N, d = qk.shape
    pad = torch.zeros(B, N, dtype=torch.bool) if pad is None else pad
    keys = qk / qk.norm(dim=-1, keepdim=True)
    out = torch.zeros_like(v)
    pos = torch.arange(N)
    for b in range(B):
        real = ~pad[b]
        L = int(real.sum())
        half = max(1, math.ceil(L / (2 * bucket_size)))
        for h in range(Hh):
            outs, lses = [], []
            for rot in rotations:
                x = keys[b, h] @ rot[:, :half]
                bucket = torch.cat([x, -x], -1).argmax(-1).masked_fill(~real, 2 * half)
                before = (bucket[None, :] < bucket[:, None]) | (
                    (bucket[None, :] == bucket[:, None]) & (pos[None, :] < pos[:, None]))
                chunk = before.sum(-1) // bucket_size  # rank // bucket_size
                near = (chunk[None, :] == chunk[:, None]) | (chunk[None, :] == chunk[:, None] - 1)
                near |= not chunked
                allowed = (bucket[None, :] == bucket[:, None]) & near & real[None, :]
                allowed &= ~torch.eye(N, dtype=torch.bool)
                alone = ~allowed.any(-1)
                allowed[alone, alone] = True
                scores = (qk[b, h] @ keys[b, h].T / math.sqrt(d)).masked_fill(~allowed, -math.inf)
                lses.append(scores.logsumexp(-1))
                outs.append(torch.softmax(scores, -1) @ v[b, h])
            w = torch.softmax(torch.stack(lses), 0)  # (R, N)
            out[b, h] = (w[..., None] * torch.stack(outs)).sum(0)
    return out


@pytest.mark.parametrize("N,bucket_size,n_hashes,lengths", [
    (100, 8, 2, [100, 100]),
    (100, 8, 3, [100, 61]),  # two bucket counts in one batch
    (37, 4, 2, [30, 37]),  # N not a multiple of the chunk
    (9, 64, 1, [9, 5]),  # one chunk, fewer tokens than a bucket
])
def test_reformer_equals_dense_softmax_over_the_same_buckets_and_chunks(N, bucket_size, n_hashes,
                                                                        lengths):
    qk, _, v = qkv(N=N, d=8, seed=N)
    pad = tail_padding(lengths, N)
    half = int(num_buckets(torch.tensor(lengths), bucket_size).max()) // 2
    rotations = lsh_rotations(n_hashes, 8, half, seed=5).double()
    out = lsh_attention(qk, v, rotations, bucket_size, pad)
    ref = lsh_reference(qk, v, rotations, bucket_size, pad)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    if N > 2 * bucket_size:  # the chunks matter here: whole buckets would give another result
        assert not torch.allclose(out, lsh_reference(qk, v, rotations, bucket_size, pad, False))


def test_reformer_tokens_attend_to_themselves_only_when_alone():
    # bucket_size 1: a chunk is one token, so each query sees itself and the token before it
    qk, _, v = qkv(B=1, N=6, d=4, seed=2)
    rotations = lsh_rotations(1, 4, 3, seed=0).double()  # 6 buckets for 6 tokens
    out = lsh_attention(qk, v, rotations, 1)
    keys = F.normalize(qk[0, 0], dim=-1)
    x = keys @ rotations[0]
    bucket = torch.cat([x, -x], -1).argmax(-1)
    order = torch.sort(bucket, stable=True).indices
    for rank, i in enumerate(order.tolist()):
        j = order[rank - 1].item() if rank else None
        if j is not None and bucket[j] == bucket[i]:  # its predecessor: the only other key
            expected = v[0, 0, j]
        else:  # alone: itself
            expected = v[0, 0, i]
        torch.testing.assert_close(out[0, 0, i], expected, atol=1e-12, rtol=0)


def test_reformer_any_length_works():
    attn = make("reformer").eval()
    for N in (1, 2, 63, 64, 65, 129, 300):
        y = attn(torch.randn(2, N, D))
        assert y.shape == (2, N, D) and torch.isfinite(y).all()


def test_reformer_sequences_hash_as_they_would_alone():
    attn = make("reformer", bucket_size=4).double().eval()
    x = torch.randn(2, 40, D, dtype=torch.float64)
    pad = tail_padding([40, 13], 40)  # 10 and 4 buckets
    both = attn(x, pad)
    torch.testing.assert_close(both[1:, :13], attn(x[1:, :13]), atol=1e-12, rtol=0)
    torch.testing.assert_close(both[:1], attn(x[:1]), atol=1e-12, rtol=0)


def test_reformer_rotation_columns_do_not_depend_on_their_number():
    three, seven = lsh_rotations(2, 8, 3, seed=1), lsh_rotations(2, 8, 7, seed=1)
    assert three.shape == (2, 8, 3) and torch.equal(three, seven[..., :3])
    assert not torch.equal(lsh_rotations(2, 8, 3, seed=1), lsh_rotations(2, 8, 3, seed=2))


def test_reformer_shares_one_query_key_projection():
    attn = make("reformer", bucket_size=4).double().eval()
    x = torch.randn(2, 20, D, dtype=torch.float64)
    swapped = make("reformer", bucket_size=4, seed=attn.seed).double().eval()
    swapped.load_state_dict(attn.state_dict())
    with torch.no_grad():  # W_qk = (W_q + W_k) / 2 is symmetric in the two layers
        swapped.q_proj.weight.copy_(attn.k_proj.weight)
        swapped.k_proj.weight.copy_(attn.q_proj.weight)
        swapped.q_proj.bias.copy_(attn.k_proj.bias)
        swapped.k_proj.bias.copy_(attn.q_proj.bias)
    torch.testing.assert_close(swapped(x), attn(x), atol=1e-12, rtol=0)
    qk, k, v = attn.project_qkv(x)
    assert qk is k
    w_qk = (attn.q_proj.weight + attn.k_proj.weight) / 2
    b_qk = (attn.q_proj.bias + attn.k_proj.bias) / 2
    torch.testing.assert_close(qk, attn.split_heads(F.linear(x, w_qk, b_qk)))
    torch.testing.assert_close(v, attn.split_heads(attn.v_proj(x)))


def test_reformer_hashes_deterministically_in_eval_and_redraws_in_training():
    x = torch.randn(1, 64, D)
    a = make("reformer", bucket_size=4, seed=7).eval()
    first = a(x)
    assert torch.equal(a(x), first)  # eval: the same rotations every time
    a.train()
    training = [a(x) for _ in range(3)]
    assert a.calls == 3
    assert not torch.allclose(training[1], training[2])  # new rotations per training pass
    a.eval()
    assert torch.equal(a(x), first)
    # the seed and the pass count travel with the state dict
    b = make("reformer", bucket_size=4, seed=1)
    b.load_state_dict(a.state_dict())
    assert (b.seed, b.calls) == (7, 3)
    assert torch.equal(b.eval()(x), first)
    c = make("reformer", bucket_size=4, seed=7, redraw=False).train()
    assert torch.equal(c(x), first) and torch.equal(c(x), first)
    assert not torch.equal(make("reformer", bucket_size=4, seed=8).eval()(x), first)


def test_reformer_layers_hash_differently():
    torch.manual_seed(0)
    model = TransformerClassifier(10, 2, embed_dim=D, num_heads=H, num_layers=2,
                                  attention={"name": "reformer"})
    first, second = (b.attn for b in model.blocks)
    assert first.seed != second.seed
    assert not torch.equal(first.rotations(4, torch.device("cpu")),
                           second.rotations(4, torch.device("cpu")))


def test_reformer_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="bucket_size must be a positive integer"):
        make("reformer", bucket_size=0)
    with pytest.raises(ValueError, match="n_hashes must be a positive integer"):
        make("reformer", n_hashes=1.5)


# --- linear and nystrom: the module computed from x (projections folded in) -----------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("N", [48, 50])
@pytest.mark.parametrize("name,kw", [("linear", {}), ("nystrom", {"num_landmarks": 8}),
                                     ("nystrom", {"num_landmarks": 64}),
                                     ("nystrom", {"num_landmarks": 8, "pinv_iterations": None})])
def test_fused_module_equals_the_per_head_path(name, kw, N, bias):
    """In fp64/fp32 without autocast, ``linear`` and ``nystrom`` compute the whole module from
    x and the projection weights; the per-head path (project, attend, out_proj) must give the
    same outputs and gradients: equal segments or not, padding (a row all padding), pruned heads."""
    attn = make(name, bias=bias, **kw).double()
    x = torch.randn(3, N, D, dtype=torch.float64, requires_grad=True)
    pad = tail_padding([N, 31, 0], N)
    pad[0, 5] = True  # padding in the middle too
    for pruned in (False, True):
        if pruned:
            attn.prune_heads([0, 2, 3])
        for mask in (None, pad):
            fused, per_head = attn(x, mask), SelfAttention.forward(attn, x, mask)
            torch.testing.assert_close(fused, per_head, atol=1e-12, rtol=0)
            if kw.get("pinv_iterations", 6) is None:
                continue  # the SVD pseudo-inverse's backward is ill-conditioned: outputs only
            g = torch.randn_like(fused)
            params = [x, *attn.parameters()]
            for a, b in zip(torch.autograd.grad(fused, params, g),
                            torch.autograd.grad(per_head, params, g), strict=True):
                torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_fused_module_is_skipped_under_autocast_and_for_hooked_projections():
    """Autocast (half-precision projections) and non-plain projections keep the per-head path."""
    attn = make("linear")
    x = torch.randn(2, 20, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attn(x).dtype == torch.bfloat16  # out_proj ran under autocast, as before
    torch.nn.utils.prune.l1_unstructured(attn.q_proj, "weight", amount=0.5)
    torch.testing.assert_close(attn(x), SelfAttention.forward(attn, x), atol=0, rtol=0)


# --- all three: invariances, gradients, half precision, configs, FLOPs ------------------------

@pytest.mark.parametrize("name,kw", VARIANTS)
def test_padding_with_junk_does_not_change_real_outputs(name, kw):
    attn = make(name, **kw).double().eval()
    x = torch.randn(2, 30, D, dtype=torch.float64)
    base = attn(x, tail_padding([30, 30], 30))
    for extra in (1, 17, 70):
        junk = torch.randn(2, extra, D, dtype=torch.float64) * 100
        out = attn(torch.cat([x, junk], dim=1), tail_padding([30, 30], 30 + extra))
        torch.testing.assert_close(out[:, :30], base, atol=1e-10, rtol=0)
        assert (out[:, 30:] == 0).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_all_padding_rows_are_zeros_with_finite_gradients(name):
    attn = make(name, **SMALL[name])
    x = (torch.randn(2, 20, D) * 10).requires_grad_()
    pad = tail_padding([0, 13], 20)
    y = attn(x, pad)
    assert torch.isfinite(y).all() and (y[0] == 0).all() and (y[1, 13:] == 0).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name,kw", VARIANTS)
def test_module_gradcheck_with_padding(name, kw):
    attn = make(name, **kw).double().eval()
    x = torch.randn(2, 11, D, dtype=torch.float64, requires_grad=True)
    pad = tail_padding([11, 7], 11)
    assert torch.autograd.gradcheck(lambda t: attn(t, pad), (x,), atol=1e-6, fast_mode=True)


def test_core_gradchecks():
    q, k, v = (t.requires_grad_() for t in qkv(B=2, N=9, d=4))
    pad = tail_padding([9, 6], 9)
    rotations = lsh_rotations(2, 4, 3, seed=0).double()  # 6 buckets for 9 tokens
    cores = [lambda q, k, v: nystrom_attention(q, k, v, 4, 6, pad),
             lambda q, k, v: nystrom_attention(q, k, v, 16, None, pad),
             lambda q, k, v: linear_attention(q, k, v, pad),
             lambda q, k, v: lsh_attention(q, v, rotations, 2, pad) + 0 * k.sum()]
    for core in cores:
        assert torch.autograd.gradcheck(core, (q, k, v), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", FAMILIES)
def test_autocast_at_16k_forward_and_backward_are_finite(name, dtype):
    N = 16384
    attn = build_attention(name, embed_dim=16, num_heads=2)
    x = (torch.randn(1, N, 16) * 3).requires_grad_()
    pad = tail_padding([N - 1000], N)
    with torch.autocast("cpu", dtype=dtype):
        y = attn(x, pad)
    y.float().pow(2).sum().backward()
    assert torch.isfinite(y).all() and y[:, : N - 1000].abs().sum() > 0
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_runs_from_its_yaml(name):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "attention" / f"{name}.yaml"))
    assert cfg.pop("name") == name
    attn = build_attention(name, embed_dim=D, num_heads=H, **cfg).eval()
    x = torch.randn(2, 150, D)
    pad = tail_padding([150, 90], 150)
    y = attn(x, pad)
    assert torch.isfinite(y).all() and (y[1, 90:] == 0).all()
    torch.manual_seed(0)
    model = TransformerClassifier(50, 3, embed_dim=D, num_heads=H, num_layers=2,
                                  attention={"name": name, **cfg}).eval()
    logits = model(torch.randint(1, 50, (2, 150)).masked_fill(pad, 0), pad)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


# embed_dim 8, 2 heads (d = 4), N = 16; projections 4 · 2·16·8² = 8192 (reformer: 3 · … = 6144)
HAND_FLOPS = [
    # 4·2·2·16·4·4 + 2·2·2·4²·4 + 6 · 4·2·2·4³ = 4096 + 512 + 6144
    ("nystrom", {"num_landmarks": 4}, 3 * (8192 + 10752)),
    # ... + 2·2·16·4·3 for the convolution
    ("nystrom", {"num_landmarks": 4, "conv_kernel": 3}, 3 * (8192 + 10752 + 768)),
    # 2·2·2·16·4·5
    ("linear", {}, 3 * (8192 + 2560)),
    # 2 rounds · (hash 2·2·16·4·2 + 2·2·2·16·8·4), 4 buckets at N = 16
    ("reformer", {"bucket_size": 4}, 3 * (6144 + 2 * (512 + 4096))),
]


@pytest.mark.parametrize("name,options,expected", HAND_FLOPS)
def test_flops_match_hand_computed_values(name, options, expected):
    module = build_attention(name, embed_dim=8, num_heads=2, **options)
    assert module.flops(16) == expected
    assert module.flops(16, batch=3) == 3 * expected
    # arena-bench counts the same, and a public implementation as its method
    assert useful_flops(name, 16, 1, 2, 4, options) == expected
    for peer in PEERS.values():
        if peer.method == name:
            mirrored = {k: v for k, v in options.items() if k in peer.mirrors}
            assert useful_flops(peer.name, 16, 1, 2, 4, mirrored) == expected, peer.name


def test_every_family_has_a_peer():
    assert {p.method for p in PEERS.values()} >= set(FAMILIES)


def test_nystrom_flops_cap_landmarks_at_the_length():
    attn = build_attention("nystrom", embed_dim=8, num_heads=2, num_landmarks=64)
    assert attn.attention_flops(16) == build_attention(
        "nystrom", embed_dim=8, num_heads=2, num_landmarks=16).attention_flops(16)
