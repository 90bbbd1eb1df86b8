"""Attention maps of every backend: exact (map @ V is the output), rows, padding, cost when off."""

from __future__ import annotations

import math

import pytest
import torch

from attention_arena.attention import available_attentions, build_attention
from attention_arena.attention.linformer import segment_means
from attention_arena.explain import attention_rollout, record_attention
from attention_arena.model import TransformerClassifier

BACKENDS = available_attentions()  # a newly registered backend gets every test here
D, H, N = 16, 2, 70
SMALL = {"linformer": {"k": 16, "max_len": 128}, "longformer": {"window": 16},
         "bigbird": {"block_size": 8, "num_random_blocks": 2}, "nystrom": {"num_landmarks": 8},
         "performer": {"num_features": 64}, "reformer": {"bucket_size": 8}}


def make(name: str, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return build_attention(name, embed_dim=D, num_heads=H,
                           **{**SMALL.get(name, {}), **kw}).to(dtype).eval()


def inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, N, D, generator=g, dtype=dtype)
    pad = torch.zeros(2, N, dtype=torch.bool)
    pad[1, 45:] = True  # the second sequence has 45 real tokens
    glob = torch.zeros(2, N, dtype=torch.bool)
    glob[:, 0] = True
    return x, pad, glob


def recorded(module, x, pad, glob):
    with record_attention(module) as maps:
        out = module(x, key_padding_mask=pad, global_mask=glob)
    assert len(maps) == 1 and maps[0].shape == (2, H, N, N)
    return out, maps[0]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("name", BACKENDS)
def test_map_times_values_is_the_backends_output(name, dtype, tol):
    module = make(name, dtype)
    x, pad, glob = inputs(dtype)
    out, weights = recorded(module, x, pad, glob)
    _, _, v = module.project_qkv(x)
    rebuilt = module.finish(weights.to(dtype) @ v, pad)
    real = ~pad
    assert torch.allclose(rebuilt[real], out[real], atol=tol, rtol=tol)


@pytest.mark.parametrize("name", BACKENDS)
def test_rows_sum_to_one_over_real_keys_and_padding_gets_nothing(name):
    module = make(name)
    x, pad, glob = inputs()
    _, weights = recorded(module, x, pad, glob)
    assert weights[1, :, :, 45:].abs().max() == 0  # padded keys
    assert weights[1, :, 45:, :].abs().max() == 0  # padded queries: discarded
    if type(module).stochastic_map:
        real_rows = weights.sum(-1)[(~pad)[:, None, :].expand(2, H, N)]
        assert torch.allclose(real_rows, torch.ones_like(real_rows), atol=1e-10)
        assert weights.min() >= 0


@pytest.mark.parametrize("name,options", [("nystrom", {"conv_kernel": 5}),
                                          ("reformer", {"n_hashes": 3, "bucket_size": 4}),
                                          ("linformer", {"share_kv": True})])
def test_map_is_exact_for_other_options(name, options):
    module = make(name, **options)
    x, pad, glob = inputs()
    out, weights = recorded(module, x, pad, glob)
    rebuilt = module.finish(weights @ module.project_qkv(x)[2], pad)
    assert torch.allclose(rebuilt[~pad], out[~pad], atol=1e-10)


def test_nystrom_rows_sum_to_one_with_an_exact_pseudo_inverse():
    _, weights = recorded(make("nystrom", pinv_iterations=None), *inputs())
    rows = weights[0].sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-8)


def test_longformer_is_zero_outside_the_band_except_global_rows_and_columns():
    _, weights = recorded(make("longformer", window=16), *inputs())
    i = torch.arange(N)
    outside = (i[:, None] - i[None, :]).abs() > 8
    outside[0, :] = outside[:, 0] = False  # CLS is global
    assert weights[:, :, outside].abs().max() == 0
    assert (weights[0, :, 0, :] > 0).all()  # the global row sees every real key
    assert (weights[0, :, :, 0] > 0).all()  # and every query sees it
    assert (weights[0][:, ~outside] > 0).all()


def test_performer_map_is_the_explicit_normalised_feature_product():
    module = make("performer", dtype=torch.float32)
    x, pad, glob = inputs(torch.float32)
    _, weights = recorded(module, x, pad, glob)
    q, k, _ = module.project_qkv(x)
    w, d, keep = module.projection.double(), q.shape[-1], ~pad[:, None, :, None]

    def z(t):  # W x' - |x'|^2 / 2 with x' = d^(-1/4) x
        t = t.double() * d**-0.25
        return t @ w.T - 0.5 * (t * t).sum(-1, keepdim=True)

    zq, zk = z(q), z(k)
    phi_q = (zq - zq.amax(-1, keepdim=True)).exp() + module.eps
    c_k = zk.masked_fill(~keep, -math.inf).amax((-1, -2), keepdim=True)
    phi_k = ((zk - c_k).exp() + module.eps) * keep
    kernel = phi_q @ phi_k.transpose(-1, -2)
    explicit = kernel / kernel.sum(-1, keepdim=True)
    real = (~pad)[:, None, :].expand(2, H, N)
    assert torch.allclose(weights.double()[real], explicit[real], atol=1e-5)


def test_linformer_maps_are_the_explicit_projected_softmax():
    module = make("linformer")
    x, pad, glob = inputs()
    _, weights = recorded(module, x, pad, glob)
    q, k, _ = module.project_qkv(x)
    e, f = module.proj_k[:N], module.proj_v[:N]
    projected = torch.einsum("bhnd,nk->bhkd", k * (~pad)[:, None, :, None], e)
    p = torch.softmax(q @ projected.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
    assert torch.allclose(module.projected_attention_weights(q, k, pad), p)
    implied = (p @ f.T) * (~pad)[:, None, None, :]
    real = (~pad)[:, None, :].expand(2, H, N)
    assert torch.allclose(weights[real], implied[real], atol=1e-10)
    assert torch.allclose(p.sum(-1), torch.ones(2, H, N, dtype=p.dtype))


def test_linformer_implied_rows_sum_to_one_when_its_projection_averages():
    module = make("linformer", share_kv=True)
    with torch.no_grad():  # columns of E = F average a segment of the 64 tokens: sum to 1
        module.proj_k[:64] = segment_means(64, 16)
    x = inputs()[0][:, :64]
    with record_attention(module) as maps:
        module(x)
    rows = maps[0].sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-10)


def test_recording_leaves_no_hook_and_does_not_change_the_output():
    model = TransformerClassifier(50, 3, embed_dim=D, num_heads=H, ff_dim=32, num_layers=2,
                                  attention={"name": "longformer", "window": 8},
                                  pooling="mean").eval()
    ids = torch.randint(2, 50, (2, 30))
    pad = torch.zeros(2, 30, dtype=torch.bool)
    pad[0, 20:] = True
    plain = model(ids, pad)
    with record_attention(model) as maps:
        recorded_out = model(ids, pad)
    assert len(maps) == 2 and maps[0].shape == (2, H, 30, 30)
    assert torch.equal(plain, recorded_out)
    assert all(not m._forward_hooks for m in model.modules())
    rollout = attention_rollout(maps, pad, pooling="mean")
    assert torch.allclose(rollout.sum(-1), torch.ones(2))
    assert rollout[0, 20:].abs().max() == 0


def test_recording_needs_eval_mode_and_bounds_the_length():
    module = make("full").train()
    x, pad, glob = inputs()
    with pytest.raises(RuntimeError, match="eval mode"), record_attention(module):
        module(x, key_padding_mask=pad)
    module.eval()
    with pytest.raises(ValueError, match="exceeds max_length=32"), \
            record_attention(module, max_length=32):
        module(x)
    with pytest.raises(ValueError, match="no attention module"), \
            record_attention(torch.nn.Linear(2, 2)):
        pass
