"""Block-sparse attention: the log-sum-exp merge of key sets, longformer's global tokens through
it, and bigbird against a dense masked softmax with the same block pattern (float64)."""

from __future__ import annotations

import copy

import pytest
import torch

from attention_arena.attention import _sparse, build_attention, reference_attention
from attention_arena.attention._sparse import merged_attention
from attention_arena.attention.bigbird import (
    _mul32,
    bigbird_attention,
    block_ranks,
    random_blocks,
)
from attention_arena.attention.longformer import sliding_window_attention
from test_attention import banded_reference, masks  # padding at the end of row 1, globals

PATHS = ["kernel", "explicit", "reference"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch) -> str:
    """Run the test through each way of computing a key set: the CPU flash kernel for every set,
    explicit scores for every set (the small-set path), or the autograd reference path (used
    with dropout and off the CPU)."""
    if request.param == "kernel":
        monkeypatch.setattr(_sparse, "SMALL_KEY_SET", 0)
    elif request.param == "explicit":
        monkeypatch.setattr(_sparse, "SMALL_KEY_SET", 10**9)
    else:
        monkeypatch.setattr(_sparse, "_use_flash", lambda q, dropout_p: False)
    return request.param


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def real_rows(out, pad):
    return out if pad is None else out * ~pad[:, None, :, None]


# --- merged_attention -------------------------------------------------------------------------

def key_sets_and_dense_mask(X=2, Y=3, M=5, d=4, sizes=(7, 20, 2)):
    """Disjoint key sets with random masks (one query row without any key) and the same keys
    concatenated, with the concatenated mask."""
    sets, ks, vs, allowed = [], [], [], []
    for i, S in enumerate(sizes):
        k, v = randn(X, Y, S, d, seed=2 * i + 1), randn(X, Y, S, d, seed=2 * i + 2)
        ok = torch.rand(X, Y, M, S, generator=torch.Generator().manual_seed(10 + i)) > 0.3
        ok[0, 0, 0] = False  # query row (0, 0, 0) sees no key at all
        sets.append((k, v, ok))
        ks.append(k)
        vs.append(v)
        allowed.append(ok)
    return sets, torch.cat(ks, -2), torch.cat(vs, -2), torch.cat(allowed, -1)


def test_merged_attention_equals_softmax_over_the_union_of_key_sets(path):
    q = randn(2, 3, 5, 4)
    sets, k, v, allowed = key_sets_and_dense_mask()
    out = merged_attention(q, sets)
    ref = reference_attention(q, k, v, allowed)
    has_key = allowed.any(-1, keepdim=True)
    torch.testing.assert_close(out * has_key, ref * has_key, atol=1e-12, rtol=0)
    assert torch.isfinite(out).all()
    if path != "reference":  # the fast paths give zeros to a row without keys
        assert (out[0, 0, 0] == 0).all()


def test_merged_attention_with_one_set_without_mask_is_plain_softmax(path):
    q, k, v = randn(2, 3, 5, 4, seed=1), randn(2, 3, 20, 4, seed=2), randn(2, 3, 20, 4, seed=3)
    torch.testing.assert_close(merged_attention(q, [(k, v, None)]), reference_attention(q, k, v),
                               atol=1e-12, rtol=0)


def test_merged_attention_rows_given_from_outside(path):
    q = randn(2, 3, 5, 4)
    sets, k, v, allowed = key_sets_and_dense_mask()
    rows = torch.tensor([3, 17, 29])  # flat indices into the 2·3·5 query rows
    values = randn(3, 4, seed=9)
    out = merged_attention(q, sets, rows=rows, values=values)
    ref = reference_attention(q, k, v, allowed).flatten(0, 2).index_copy(0, rows, values)
    has_key = allowed.any(-1).flatten()
    has_key[rows] = True
    torch.testing.assert_close(out.flatten(0, 2)[has_key], ref[has_key], atol=1e-12, rtol=0)


def test_merged_attention_gradients_are_exact(path):
    q = randn(2, 2, 3, 4).requires_grad_()
    sets, _, _, _ = key_sets_and_dense_mask(X=2, Y=2, M=3, sizes=(6, 18, 2))
    kvs = [t.clone().requires_grad_() for k, v, _ in sets for t in (k, v)]
    oks = [ok for _, _, ok in sets]
    rows = torch.tensor([1, 7])
    values = randn(2, 4, seed=5).requires_grad_()

    def f(q, values, *kvs):
        key_sets = [(kvs[2 * i], kvs[2 * i + 1], oks[i]) for i in range(len(oks))]
        return merged_attention(q, key_sets, rows=rows, values=values)

    assert torch.autograd.gradcheck(f, (q, values, *kvs))


def test_merged_attention_dropout_keeps_the_expectation():
    # dropout runs on the reference path: its expectation is the exact output
    q = randn(1, 1, 4, 4)
    sets, k, v, allowed = key_sets_and_dense_mask(X=1, Y=1, M=4, sizes=(5, 3))
    torch.manual_seed(0)
    draws = torch.stack([merged_attention(q, sets, dropout_p=0.3) for _ in range(4000)])
    ref = reference_attention(q, k, v, allowed)
    has_key = allowed.any(-1, keepdim=True)
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0) * has_key, ref * has_key, atol=0.03, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_merged_attention_in_half_precision_is_close_to_float64(path, dtype):
    q = randn(2, 3, 5, 4)
    sets, k, v, allowed = key_sets_and_dense_mask()
    half = [(k_.to(dtype), v_.to(dtype), ok) for k_, v_, ok in sets]
    out = merged_attention(q.to(dtype), half)
    assert out.dtype == dtype
    has_key = allowed.any(-1, keepdim=True)
    torch.testing.assert_close(out.double() * has_key, reference_attention(q, k, v, allowed)
                               * has_key, atol=0.05, rtol=0)


# --- longformer: the global tokens as one merged key set --------------------------------------

@pytest.mark.parametrize("N,window,block", [(100, 10, 4), (130, 32, 16), (64, 8, 8)])
def test_longformer_blocked_band_with_globals_equals_reference(path, N, window, block):
    q, k, v = (randn(2, 3, N, 8, seed=s) for s in range(3))
    pad, glob = masks(2, N)
    glob[1, 7:12] = True  # row 1: six global tokens, row 0: two (filler slots)
    for p, g in [(None, glob), (pad, glob), (pad, None)]:
        out = sliding_window_attention(q, k, v, window, p, g, block=block)
        ref = banded_reference(q, k, v, window, p, g)
        torch.testing.assert_close(real_rows(out, p), real_rows(ref, p), atol=1e-12, rtol=0)


def test_longformer_blocked_band_gradients_are_exact(path):
    q, k, v = (randn(2, 1, 24, 2, seed=s).requires_grad_() for s in range(3))
    pad, glob = masks(2, 24)
    glob[1, 23] = True  # a global token at a padded position is padding

    def f(q, k, v):
        return real_rows(sliding_window_attention(q, k, v, 6, pad, glob, block=4), pad)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_longformer_module_backward_with_globals_matches_reference_path(monkeypatch):
    # the module's real layouts (non-contiguous dO and q/k/v views) through the fast path
    torch.manual_seed(0)
    attn = build_attention("longformer", embed_dim=32, num_heads=4, window=16).double()
    x = randn(2, 300, 32).requires_grad_()
    pad, glob = masks(2, 300)
    grads = []
    for fast in (True, False):
        monkeypatch.setattr(_sparse, "_use_flash", lambda q, dropout_p, fast=fast: fast)
        x.grad = None
        attn.zero_grad()
        attn(x, pad, glob).pow(2).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in attn.parameters()])
    for fast, ref in zip(*grads, strict=True):
        torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)


# --- bigbird ----------------------------------------------------------------------------------

def bigbird_reference(q, k, v, block, num_window, num_random, seed, pad=None, glob=None):
    """Dense masked softmax with the block pattern written out naively: (B, H, N, N)."""
    B, H, N, _ = q.shape
    keep = torch.ones(B, N, dtype=torch.bool) if pad is None else ~pad
    g = torch.zeros(B, N, dtype=torch.bool) if glob is None else glob & keep
    key_ok = keep & ~g
    w, nb = (num_window - 1) // 2, -(-N // block)
    blk = torch.arange(N) // block
    allowed = ((blk[:, None] - blk[None, :]).abs() <= w).expand(B, H, N, N).clone()
    if num_random:
        eligible = torch.tensor([[bool(key_ok[b, j * block:(j + 1) * block].any())
                                  for j in range(nb)] for b in range(B)])
        idx, ok = random_blocks(seed, H, nb, num_random, w, eligible)
        for b, h, i, t in ok.nonzero().tolist():
            j = int(idx[b, h, i, t])
            allowed[b, h, i * block:(i + 1) * block, j * block:(j + 1) * block] = True
    allowed = (allowed & key_ok[:, None, None, :]) | g[:, None, None, :]
    # global queries: every real key
    allowed = torch.where(g[:, None, :, None], keep[:, None, None, :], allowed)
    return reference_attention(q, k, v, allowed)


@pytest.mark.parametrize("block,num_window,num_random", [(4, 3, 2), (8, 3, 3), (4, 1, 5),
                                                         (8, 5, 1), (16, 3, 0), (4, 3, 40)])
def test_bigbird_equals_dense_masked_softmax_with_the_same_blocks(path, block, num_window,
                                                                   num_random):
    N = 70  # not a multiple of any block size here
    q, k, v = (randn(2, 3, N, 8, seed=s) for s in range(3))
    pad, glob = masks(2, N)
    for p, g in [(None, None), (pad, None), (None, glob), (pad, glob)]:
        out = bigbird_attention(q, k, v, block, num_window, num_random, 7, p, g)
        ref = bigbird_reference(q, k, v, block, num_window, num_random, 7, p, g)
        torch.testing.assert_close(real_rows(out, p), real_rows(ref, p), atol=1e-12, rtol=0)


def test_bigbird_gradients_are_exact(path):
    q, k, v = (randn(2, 2, 26, 2, seed=s).requires_grad_() for s in range(3))
    pad, glob = masks(2, 26)
    glob[1, 25] = True  # a global token at a padded position is padding

    def f(q, k, v):
        return real_rows(bigbird_attention(q, k, v, 4, 3, 2, 3, pad, glob), pad)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_bigbird_random_blocks_are_distinct_far_and_eligible():
    nb, window, r = 40, 1, 5
    eligible = torch.ones(2, nb, dtype=torch.bool)
    eligible[1, 30:] = False  # row 1: padding from block 30 on
    eligible[1, 5] = False  # and a block of global tokens only
    idx, ok = random_blocks(11, 3, nb, r, window, eligible)
    assert idx.shape == ok.shape == (2, 3, nb, r)
    for b, h, i in torch.cartesian_prod(torch.arange(2), torch.arange(3), torch.arange(nb)):
        drawn = idx[b, h, i][ok[b, h, i]].tolist()
        candidates = [j for j in range(nb) if abs(j - int(i)) > window and eligible[b, j]]
        assert len(set(drawn)) == len(drawn) == min(r, len(candidates))
        assert set(drawn) <= set(candidates)
    assert not torch.equal(idx[0, 0], idx[0, 1])  # heads differ


def test_bigbird_with_few_blocks_takes_all_and_marks_filler_slots():
    eligible = torch.ones(1, 5, dtype=torch.bool)
    idx, ok = random_blocks(0, 1, 5, 4, 1, eligible)
    # block 0 sees 0, 1 in its window: 2, 3, 4 remain; block 2 sees 1, 2, 3: 0 and 4 remain
    assert sorted(idx[0, 0, 0][ok[0, 0, 0]].tolist()) == [2, 3, 4]
    assert sorted(idx[0, 0, 2][ok[0, 0, 2]].tolist()) == [0, 4]
    assert ok.sum(-1).tolist() == [[[3, 2, 2, 2, 3]]]
    assert (idx[~ok] == 0).all()


def test_bigbird_ranks_do_not_depend_on_the_number_of_blocks():
    small, large = block_ranks(5, 2, 10), block_ranks(5, 2, 37)
    assert torch.equal(small, large[:, :10, :10])
    assert not torch.equal(block_ranks(6, 2, 10), small)
    assert (large.sort(-1).values.diff(dim=-1) > 0).all()  # distinct within a row


def test_bigbird_random_blocks_are_drawn_uniformly():
    # Over 4 heads · 200 query blocks, every key block and every offset j - i (mod nb) is drawn
    # about as often as a uniform draw among each query block's candidates predicts: a
    # structured pattern (the same offsets for every block) fails the second count.
    nb, heads, r = 200, 4, 3
    idx, _ = random_blocks(1, heads, nb, r, 1, torch.ones(1, nb, dtype=torch.bool))
    by_block, by_offset = torch.zeros(2, nb), torch.zeros(2, nb)  # (drawn, expected)
    for i in range(nb):
        candidates = torch.tensor([j for j in range(nb) if abs(j - i) > 1])
        share = heads * r / len(candidates)
        by_block[1, candidates] += share
        by_offset[1, (candidates - i) % nb] += share
        by_block[0].index_add_(0, idx[0, :, i].flatten(), torch.ones(heads * r))
        by_offset[0].index_add_(0, (idx[0, :, i].flatten() - i) % nb, torch.ones(heads * r))
    for drawn, expected in (by_block, by_offset):
        used = expected > 0
        chi2 = ((drawn[used] - expected[used]) ** 2 / expected[used]).sum()
        assert chi2 < 2 * int(used.sum()), chi2  # about used.sum() for a uniform draw


def test_mul32_is_multiplication_modulo_2_to_the_32():
    xs = [0, 1, 0xFFFFFFFF, 0x12345678, 0xDEADBEEF, 2**31]
    for c in (0x85EBCA6B, 0xC2B2AE35, 1, 0xFFFFFFFF):
        got = _mul32(torch.tensor(xs), c).tolist()
        assert got == [(x * c) % 2**32 for x in xs]


def test_bigbird_padding_adds_blocks_without_changing_real_outputs():
    attn = build_attention("bigbird", embed_dim=32, num_heads=4, block_size=8,
                           num_random_blocks=3, seed=3).double().eval()
    x = randn(2, 70, 32)
    glob = torch.zeros(2, 70, dtype=torch.bool)
    glob[:, 0] = True
    base = attn(x, torch.zeros(2, 70, dtype=torch.bool), glob)
    xp = torch.cat([x, randn(2, 150, 32, seed=4) * 100], dim=1)  # 19 more blocks of junk
    pad = torch.zeros(2, 220, dtype=torch.bool)
    pad[:, 70:] = True
    out = attn(xp, pad, torch.cat([glob, torch.zeros(2, 150, dtype=torch.bool)], dim=1))
    torch.testing.assert_close(out[:, :70], base, atol=1e-12, rtol=0)


def test_bigbird_pattern_is_fixed_by_the_saved_seed():
    torch.manual_seed(0)
    one = build_attention("bigbird", embed_dim=32, num_heads=4, block_size=4,
                          num_random_blocks=2)
    two = build_attention("bigbird", embed_dim=32, num_heads=4, block_size=4,
                          num_random_blocks=2)
    assert one.seed != two.seed  # a new seed per layer from torch's RNG
    x = randn(1, 64, 32, dtype=torch.float32)
    y_train = one.train()(x)
    assert torch.equal(y_train, one(x)) and torch.equal(y_train, one.eval()(x))
    two.load_state_dict(one.state_dict())  # weights and the seed (extra state)
    assert two.seed == one.seed and torch.equal(two(x), one(x))
    three = copy.deepcopy(one)
    three.seed += 1
    assert not torch.equal(three(x), one(x))


def test_bigbird_bad_options_are_rejected():
    for kw, match in [({"block_size": 0}, "block_size"), ({"num_window_blocks": 2}, "odd"),
                      ({"num_window_blocks": 0}, "odd"), ({"num_random_blocks": -1}, ">= 0")]:
        with pytest.raises(ValueError, match=match):
            build_attention("bigbird", embed_dim=32, num_heads=4, **kw)
