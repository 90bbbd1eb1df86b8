"""The attention backends against naive references, and the invariances users rely on."""

from __future__ import annotations

import copy

import pytest
import torch

from attention_arena.attention import (
    SelfAttention,
    available_attentions,
    build_attention,
    full_attention,
    longformer,
    reference_attention,
    register_attention,
)
from attention_arena.attention.linformer import linformer_attention
from attention_arena.attention.longformer import sliding_window_attention
from attention_arena.attention.performer import favor_attention, orthogonal_random_features
from attention_arena.attention.registry import _REGISTRY

BACKENDS = available_attentions()  # a newly registered backend gets every generic test
D, H = 32, 4


def make(name: str, **kw) -> SelfAttention:
    torch.manual_seed(0)
    defaults = {"linformer": {"k": 16, "max_len": 256}, "longformer": {"window": 8},
                "performer": {"num_features": 64},
                "bigbird": {"block_size": 8, "num_random_blocks": 2}}
    return build_attention(name, embed_dim=D, num_heads=H, **{**defaults.get(name, {}), **kw})


def qkv(B=2, N=40, d=8, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, d, generator=g, dtype=dtype) * scale for _ in range(3)]


# --- registry and shared API ------------------------------------------------------------------

def test_registry_lists_the_four_backends():
    assert {"full", "linformer", "longformer", "performer"} <= set(available_attentions())


def test_unknown_backend_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*full.*linformer.*longformer.*performer"):
        build_attention("flash9000", embed_dim=D, num_heads=H)


def test_a_new_backend_is_one_decorator():
    @register_attention("mean_pool_test")
    class MeanPool(SelfAttention):
        def attend(self, q, k, v, key_padding_mask=None, global_mask=None):
            return v.mean(dim=2, keepdim=True).expand_as(v)

    try:
        assert "mean_pool_test" in available_attentions()
        y = build_attention("mean_pool_test", embed_dim=D, num_heads=H)(torch.randn(2, 5, D))
        assert y.shape == (2, 5, D)
    finally:
        _REGISTRY.pop("mean_pool_test")


def test_bad_options_give_clear_errors():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        build_attention("full", embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="positive even"):
        build_attention("longformer", embed_dim=D, num_heads=H, window=7)
    with pytest.raises(ValueError, match="positive even"):
        build_attention("longformer", embed_dim=D, num_heads=H, window=0)
    with pytest.raises(ValueError, match="k=64 is larger than max_len=32"):
        build_attention("linformer", embed_dim=D, num_heads=H, k=64, max_len=32)
    with pytest.raises(TypeError, match="Valid options: .*window"):
        build_attention("longformer", embed_dim=D, num_heads=H, windw=8)
    attn = make("linformer", max_len=32)
    with pytest.raises(ValueError, match="exceeds linformer max_len=32"):
        attn(torch.randn(1, 33, D))


@pytest.mark.parametrize("name", BACKENDS)
def test_bad_masks_are_rejected(name):
    attn, x = make(name), torch.randn(2, 10, D)
    with pytest.raises(TypeError, match="bool"):
        attn(x, key_padding_mask=torch.zeros(2, 10))
    with pytest.raises(ValueError, match="shape"):
        attn(x, key_padding_mask=torch.zeros(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="expects x of shape"):
        attn(torch.randn(2, 10, D + 1))


@pytest.mark.parametrize("name", BACKENDS)
def test_weights_move_between_backends(name):
    full, other = make("full"), make(name)
    assert {"q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"} <= set(
        other.state_dict())
    missing, unexpected = other.load_state_dict(full.state_dict(), strict=False)
    assert not unexpected
    assert all(not m.endswith("_proj.weight") or "proj_" in m for m in missing)
    assert torch.equal(other.q_proj.weight, full.q_proj.weight)


# --- exactness against naive references -------------------------------------------------------

def banded_reference(q, k, v, window, key_padding_mask=None, global_mask=None):
    """Dense O(N²) Longformer: |i - j| <= window/2, plus global rows and columns."""
    B, _, N, _ = q.shape
    i = torch.arange(N)
    allowed = ((i[:, None] - i[None, :]).abs() <= window // 2).expand(B, N, N).clone()
    keep = torch.ones(B, N, dtype=torch.bool) if key_padding_mask is None else ~key_padding_mask
    if global_mask is not None:
        g = global_mask & keep
        allowed |= g[:, None, :] | g[:, :, None]
    return reference_attention(q, k, v, allowed & keep[:, None, :])


def masks(B, N):
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[1, N - N // 3:] = True
    glob = torch.zeros(B, N, dtype=torch.bool)
    glob[:, 0] = True
    glob[0, N // 2] = True
    return pad, glob


@pytest.mark.parametrize("N,window,block", [(40, 8, None), (100, 10, None), (257, 64, None),
                                            (300, 32, 16), (77, 2, None), (130, 128, None)])
def test_longformer_equals_dense_banded_reference(N, window, block):
    q, k, v = qkv(N=N)
    pad, glob = masks(2, N)
    for p, g in [(None, None), (pad, None), (None, glob), (pad, glob)]:
        out = sliding_window_attention(q, k, v, window, p, g, block=block)
        ref = banded_reference(q, k, v, window, p, g)
        real = torch.ones(2, N, dtype=torch.bool) if p is None else ~p
        torch.testing.assert_close(out * real[:, None, :, None], ref * real[:, None, :, None],
                                   atol=1e-10, rtol=0)


@pytest.mark.parametrize("N", [24, 64, 100])
def test_longformer_dense_and_blocked_paths_agree(N, band_paths):
    q, k, v = qkv(N=N)
    pad, glob = masks(2, N)
    real = ~pad[:, None, :, None]
    dense = sliding_window_attention(q, k, v, 16, pad, glob)  # N <= 3 blocks of 64: dense
    blocked = sliding_window_attention(q, k, v, 16, pad, glob, block=4)
    assert band_paths == ["_dense_band_attention", "_blocked_band_attention"]
    torch.testing.assert_close(dense * real, blocked * real, atol=1e-10, rtol=0)


@pytest.fixture
def band_paths(monkeypatch) -> list[str]:
    """The names of the longformer band pieces that ran, in call order."""
    called = []
    for name in ("_dense_band_attention", "_blocked_band_attention"):
        piece = getattr(longformer, name)

        def spy(*args, _piece=piece, _name=name, **kwargs):
            called.append(_name)
            return _piece(*args, **kwargs)

        monkeypatch.setattr(longformer, name, spy)
    return called


def test_longformer_with_window_over_2n_equals_full():
    full, local = make("full"), make("longformer", window=128)
    local.load_state_dict(full.state_dict())
    x = torch.randn(2, 40, D)
    pad, glob = masks(2, 40)
    real = ~pad[..., None]
    torch.testing.assert_close(local(x, pad, glob) * real, full(x, pad) * real, atol=1e-5, rtol=0)
    torch.testing.assert_close(local(x), full(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("piece", ["_dense_band_attention", "_blocked_band_attention"])
def test_longformer_band_wider_than_the_input_equals_full(piece):
    # The dispatcher short-cuts this case to full attention: call the band pieces directly.
    N = 40
    q, k, v = qkv(N=N)
    pad, glob = masks(2, N)
    real = ~pad[:, None, :, None]
    band = getattr(longformer, piece)
    kw = {"block": 8} if piece == "_blocked_band_attention" else {}
    no_pad = torch.ones(2, N, dtype=torch.bool)
    for half in (N, 2 * N):  # window = 2N and 4N
        out = band(q, k, v, half, no_pad, None, 0.0, **kw)
        torch.testing.assert_close(out, full_attention(q, k, v), atol=1e-10, rtol=0)
        out = band(q, k, v, half, ~pad, glob & ~pad, 0.0, **kw)
        torch.testing.assert_close(out * real, full_attention(q, k, v, pad) * real, atol=1e-10,
                                   rtol=0)


@pytest.mark.parametrize("block,path", [(None, "_dense_band_attention"),
                                        (4, "_blocked_band_attention")])
def test_longformer_global_token_at_a_padded_position_is_padding(block, path, band_paths):
    N = 40
    q, k, v = qkv(N=N)
    pad, glob = masks(2, N)
    glob_on_pad = glob.clone()
    glob_on_pad[1, N - 2] = True  # padded in row 1: no weight as a key, no effect as a query
    assert pad[1, N - 2]
    real = ~pad[:, None, :, None]
    out = sliding_window_attention(q, k, v, 8, pad, glob_on_pad, block=block)
    assert band_paths == [path]
    ref = banded_reference(q, k, v, 8, pad, glob)
    torch.testing.assert_close(out * real, ref * real, atol=1e-10, rtol=0)


def test_linformer_with_identity_projection_equals_full():
    N = 24
    full, lin = make("full"), make("linformer", k=N, max_len=N)
    lin.load_state_dict(full.state_dict(), strict=False)
    with torch.no_grad():
        lin.proj_k.copy_(torch.eye(N))
        lin.proj_v.copy_(torch.eye(N))
    x = torch.randn(2, N, D)
    torch.testing.assert_close(lin(x), full(x), atol=1e-5, rtol=0)


def test_linformer_pool_init_starts_as_segment_means():
    attn = make("linformer", k=8, max_len=64, init="pool")
    torch.testing.assert_close(attn.proj_k.sum(0), torch.ones(8), atol=0.2, rtol=0)
    segment = attn.proj_k.argmax(dim=1)  # row n belongs to segment n // 8
    assert torch.equal(segment, torch.arange(64) // 8)
    with pytest.raises(ValueError, match="'pool' or 'uniform'"):
        make("linformer", init="xavier")


@pytest.mark.parametrize("share_kv", [False, True])
def test_linformer_module_equals_functional_core(share_kv):
    attn = make("linformer", share_kv=share_kv).double()
    x = torch.randn(2, 50, D, dtype=torch.float64)
    pad, _ = masks(2, 50)
    q, k, v = (attn.split_heads(p(x)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    proj_v = attn.proj_k if share_kv else attn.proj_v
    ref = attn.finish(linformer_attention(q, k, v, attn.proj_k, proj_v, pad), pad)
    torch.testing.assert_close(attn(x, key_padding_mask=pad), ref, atol=1e-12, rtol=0)


def explicit_favor(q, k, v, w, key_padding_mask=None, eps=1e-4):
    """φ(Q) φ(K)ᵀ written out as an N × N matrix, in float64."""
    d = q.shape[-1]

    def phi(x, per_row, keep=None):
        x = x.double() * d**-0.25
        e = x @ w.double().T - 0.5 * (x * x).sum(-1, keepdim=True)
        if keep is not None:
            e = e.masked_fill(~keep[:, None, :, None], float("-inf"))
        c = e.amax(-1, keepdim=True) if per_row else e.amax((-1, -2), keepdim=True)
        f = torch.exp(e - c) + eps
        return f if keep is None else f * keep[:, None, :, None]

    keep = None if key_padding_mask is None else ~key_padding_mask
    a = phi(q, True) @ phi(k, False, keep).transpose(-1, -2)  # (B, H, N, N)
    return (a @ v.double()) / a.sum(-1, keepdim=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_performer_equals_explicit_feature_computation(dtype, tol):
    q, k, v = qkv(N=60, d=16, dtype=dtype)
    w = orthogonal_random_features(48, 16, torch.Generator().manual_seed(1))
    pad, _ = masks(2, 60)
    for p in (None, pad):
        out = favor_attention(q, k, v, w, p)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), explicit_favor(q, k, v, w, p), atol=tol,
                                   rtol=tol)


@pytest.mark.parametrize("eps", [0.0, 1e-4, 0.1])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_performer_gradient_is_exact(eps, scale):
    # The stabiliser c = max(exponent) cancels only for eps = 0: the backward must follow it.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 4, generator=g, dtype=torch.float64) * scale
               for _ in range(3))
    w = orthogonal_random_features(8, 4, torch.Generator().manual_seed(1)).double()
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: favor_attention(q, k, v, w, pad, eps=eps),
                                    inputs)


def test_performer_error_shrinks_with_more_features():
    errors = []
    for m in (16, 64, 256):
        err = 0.0
        for seed in range(4):
            q, k, v = qkv(B=1, N=256, d=32, dtype=torch.float32, scale=0.5, seed=seed)
            w = orthogonal_random_features(m, 32, torch.Generator().manual_seed(seed))
            exact = reference_attention(q, k, v)
            err += ((favor_attention(q, k, v, w) - exact).norm() / exact.norm()).item()
        errors.append(err / 4)
    assert errors[0] > errors[1] > errors[2], errors


def test_orthogonal_features_are_orthogonal_within_blocks():
    w = orthogonal_random_features(64, 32, torch.Generator().manual_seed(0))
    block = w[:32] / w[:32].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(32), atol=1e-5, rtol=0)


def test_performer_training_call_t_uses_the_documented_draw():
    seed, every, m = 7, 2, 16
    attn = make("performer", redraw_interval=every, seed=seed, num_features=m).train()
    x = torch.randn(1, 8, D)

    def draw(i: int):  # the documented formula, with a generator built here
        generator = torch.Generator().manual_seed(seed * 1_000_003 + i)
        return orthogonal_random_features(m, D // H, generator)

    assert torch.equal(attn.projection, draw(0))
    for t in range(1, 8):  # training call t uses draw (t - 1) // redraw_interval
        y = attn(x)
        expected = draw((t - 1) // every)
        assert torch.equal(attn.projection, expected), t
        fixed = copy.deepcopy(attn).eval()
        fixed.projection.copy_(expected)
        assert torch.equal(y, fixed(x)), t  # the call itself computed with that draw
    assert not torch.equal(draw(0), draw(1))


def test_performer_redraws_in_training_only():
    a = make("performer", redraw_interval=2, seed=7).train()
    x = torch.randn(1, 8, D)
    for _ in range(3):
        a(x)
    a.eval()
    fixed = a.projection.clone()
    for _ in range(5):
        a(x)
    assert torch.equal(a.projection, fixed)
    one, two = make("performer", seed=1), make("performer", seed=2)
    assert not torch.equal(one.projection, two.projection)
    # the draw count and seed travel with the state dict: a reload redraws on schedule
    c = make("performer", redraw_interval=2, seed=3)
    c.load_state_dict(a.state_dict())
    assert (c.seed, c.calls) == (7, 3) and torch.equal(c.projection, a.projection)


def test_performer_layers_draw_different_features():
    from attention_arena.model import TransformerClassifier

    torch.manual_seed(0)
    model = TransformerClassifier(10, 2, embed_dim=D, num_heads=H, num_layers=2,
                                  attention={"name": "performer", "num_features": 16})
    first, second = (b.attn.projection for b in model.blocks)
    assert not torch.equal(first, second)


def test_performer_is_stable_with_large_norms():
    q, k, v = qkv(N=128, d=16, dtype=torch.float32, scale=30.0)
    w = orthogonal_random_features(64, 16, torch.Generator().manual_seed(0))
    pad, _ = masks(2, 128)
    assert torch.isfinite(favor_attention(q, k, v, w, pad)).all()


@pytest.mark.parametrize("q_scale,k_scale", [(60.0, 1.0), (1.0, 300.0)])
def test_performer_is_exact_when_the_exponent_is_below_minus_1e4(q_scale, k_scale):
    # d = 16: ||x'||^2 / 2 exceeds 1e4 for many queries (scale 60) or for every real key (scale
    # 300); only all-padding rows need a guard against an infinite stabiliser
    q, k, v = qkv(N=128, d=16, dtype=torch.float64)
    q, k = q * q_scale, k * k_scale
    w = orthogonal_random_features(64, 16, torch.Generator().manual_seed(0))
    pad, _ = masks(2, 128)
    half_sq_q, half_sq_k = (0.5 * (x * x).sum(-1) / 4 for x in (q, k))  # ||x'||^2 / 2
    real = ~pad[:, None, :].expand_as(half_sq_k)
    assert (half_sq_q > 1e4).any() or (half_sq_k[real] > 1e4).all()
    torch.testing.assert_close(favor_attention(q, k, v, w, pad), explicit_favor(q, k, v, w, pad),
                               atol=1e-10, rtol=1e-10)


# --- invariances and robustness, every backend ------------------------------------------------

@pytest.mark.parametrize("name,kw", [(b, {}) for b in BACKENDS] + [("longformer", {"block": 4})])
def test_padding_does_not_change_real_outputs(name, kw):
    attn = make(name, **kw).double().eval()
    x = torch.randn(2, 30, D, dtype=torch.float64)
    glob = torch.zeros(2, 30, dtype=torch.bool)
    glob[:, 0] = True
    base = attn(x, torch.zeros(2, 30, dtype=torch.bool), glob)
    for extra in (1, 17, 70):
        xp = torch.cat([x, torch.randn(2, extra, D, dtype=torch.float64) * 100], dim=1)
        pad = torch.zeros(2, 30 + extra, dtype=torch.bool)
        pad[:, 30:] = True
        gp = torch.cat([glob, torch.zeros(2, extra, dtype=torch.bool)], dim=1)
        out = attn(xp, pad, gp)
        torch.testing.assert_close(out[:, :30], base, atol=1e-10, rtol=0)
        assert (out[:, 30:] == 0).all()


@pytest.mark.parametrize("name", BACKENDS)
def test_all_padding_rows_give_zeros_not_nan(name):
    attn = make(name)
    x = torch.randn(2, 20, D, requires_grad=True)
    pad = torch.zeros(2, 20, dtype=torch.bool)
    pad[0] = True
    glob = torch.zeros(2, 20, dtype=torch.bool)
    glob[:, 0] = True
    y = attn(x, pad, glob)
    assert torch.isfinite(y).all() and (y[0] == 0).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_full_core_gives_zeros_for_rows_without_keys():
    from attention_arena.attention import full_attention

    q, k, v = qkv(N=10, dtype=torch.float32)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1] = True
    out = full_attention(q, k, v, pad)
    assert (out[1] == 0).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("name", BACKENDS)
def test_gradients_reach_every_parameter(name):
    attn = make(name).train()
    x = torch.randn(2, 24, D, requires_grad=True)
    pad, glob = masks(2, 24)
    attn(x, pad, glob).pow(2).sum().backward()
    for pname, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


# Small options that keep gradcheck fast; a backend not listed runs with its defaults.
GRADCHECK_OPTIONS = {"linformer": {"k": 4, "max_len": 10}, "longformer": {"window": 4},
                     "performer": {"num_features": 8},
                     "bigbird": {"block_size": 2, "num_random_blocks": 1}}


def gradcheck_module(attn: SelfAttention, N: int = 10) -> bool:
    """gradcheck in float64 of ``attn`` with respect to its input and every parameter, with a
    padding mask and global tokens (one of them at a padded position)."""
    attn = attn.double().eval()  # eval: fixed Performer features, no dropout
    torch.manual_seed(1)
    x = torch.randn(2, N, attn.embed_dim, dtype=torch.float64, requires_grad=True)
    pad, glob = masks(2, N)
    glob[1, N - 1] = True
    names = [name for name, _ in attn.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in attn.parameters()]

    def f(x, *params):
        return torch.func.functional_call(attn, dict(zip(names, params, strict=True)),
                                          (x, pad, glob))

    return torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("name", BACKENDS)
def test_gradcheck_every_backend(name):
    torch.manual_seed(0)
    attn = build_attention(name, embed_dim=8, num_heads=2, **GRADCHECK_OPTIONS.get(name, {}))
    assert gradcheck_module(attn)


@pytest.mark.parametrize("block,path", [(None, "_dense_band_attention"),
                                        (2, "_blocked_band_attention")])
def test_gradcheck_longformer_paths(block, path, band_paths):
    torch.manual_seed(0)
    attn = build_attention("longformer", embed_dim=8, num_heads=2, window=4, block=block)
    assert gradcheck_module(attn, N=10)  # block 2: 5 blocks of queries, 3 key blocks each
    assert set(band_paths) == {path}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", BACKENDS)
def test_autocast_at_16k_with_long_padded_tail(name, dtype):
    N = 16384
    kw = {"linformer": {"max_len": N, "k": 64}, "longformer": {"window": 64},
          "performer": {"num_features": 32}}.get(name, {})
    attn = build_attention(name, embed_dim=16, num_heads=2, **kw)
    x = torch.randn(1, N, 16) * 3
    pad = torch.zeros(1, N, dtype=torch.bool)
    pad[:, 1000:] = True
    glob = torch.zeros(1, N, dtype=torch.bool)
    glob[:, 0] = True
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        y = attn(x, pad, glob)
    assert torch.isfinite(y).all()
    assert y[:, :1000].abs().sum() > 0


@pytest.mark.parametrize("name", BACKENDS)
def test_autocast_backward_is_finite(name):
    attn = make(name)
    x = torch.randn(2, 64, D, requires_grad=True)
    pad, glob = masks(2, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x, pad, glob)
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()
