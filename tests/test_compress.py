"""Making a trained model cheaper: head pruning, magnitude pruning, int8, bf16, save/load, the
report and ``arena-compress`` on a tiny run."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from attention_arena.attention import available_attentions, build_attention
from attention_arena.model import TransformerClassifier

BACKENDS = available_attentions()
D, H = 32, 4  # head dim 8
# Small options, and the per-head parts switched on (nystrom's convolution, bigbird's random
# blocks at this length), so that every per-head parameter or buffer is exercised.
OPTIONS = {"linformer": {"k": 8, "max_len": 64}, "longformer": {"window": 8},
           "performer": {"num_features": 16}, "nystrom": {"num_landmarks": 8, "conv_kernel": 3},
           "bigbird": {"block_size": 4, "num_random_blocks": 2},
           "reformer": {"bucket_size": 8}}


def make_attention(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_attention(name, embed_dim=D, num_heads=H, **OPTIONS.get(name, {})).eval()


def inputs(B: int = 2, N: int = 48, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g)
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[1, N - 13:] = True  # a padded tail on the second sequence
    glob = torch.zeros(B, N, dtype=torch.bool)
    glob[:, 0] = True
    return x, pad, glob


def zero_heads(attn: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of ``attn`` whose other heads contribute nothing (their out_proj columns zeroed)."""
    ref = copy.deepcopy(attn)
    d = attn.head_dim
    with torch.no_grad():
        for h in range(attn.num_heads):
            if h not in keep:
                ref.out_proj.weight[:, h * d:(h + 1) * d] = 0.0
    return ref


# --- structured head pruning ------------------------------------------------------------------

@pytest.mark.parametrize("name", BACKENDS)
def test_prune_heads_equals_the_model_with_those_heads_zeroed(name):
    attn = make_attention(name)
    keep = [1, 3]
    reference = zero_heads(attn, keep)
    pruned = copy.deepcopy(attn)
    pruned.prune_heads(keep)
    x, pad, glob = inputs()
    with torch.no_grad():
        expected = reference(x, key_padding_mask=pad, global_mask=glob)
        got = pruned(x, key_padding_mask=pad, global_mask=glob)
    real = ~pad[..., None]
    torch.testing.assert_close(got * real, expected * real, atol=2e-5, rtol=1e-4)
    # the heads are really gone: every projection has half its inner rows / columns
    d = attn.head_dim
    assert pruned.num_heads == 2 and pruned.inner_dim == 2 * d and pruned.embed_dim == D
    for proj in (pruned.q_proj, pruned.k_proj, pruned.v_proj):
        assert proj.weight.shape == (2 * d, D) and proj.bias.shape == (2 * d,)
    assert pruned.out_proj.weight.shape == (D, 2 * d)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in attn.parameters())
    # the kept heads' weights are the originals
    torch.testing.assert_close(pruned.q_proj.weight, attn.q_proj.weight[[*range(d, 2 * d),
                                                                         *range(3 * d, 4 * d)]])


def test_prune_heads_slices_the_per_head_convolution_of_nystrom():
    attn = make_attention("nystrom")
    pruned = copy.deepcopy(attn)
    pruned.prune_heads([0, 2])
    assert pruned.conv.weight.shape == (2, 1, 3, 1) and pruned.conv.groups == 2
    torch.testing.assert_close(pruned.conv.weight, attn.conv.weight[[0, 2]])


def test_bigbird_pruned_heads_keep_their_random_blocks_through_save_and_load():
    attn = make_attention("bigbird")
    attn.prune_heads([3, 1])  # sorted: heads 1 and 3 stay
    assert attn.head_ids == (1, 3)
    attn.prune_heads([1])  # of those, the second: original head 3
    assert attn.head_ids == (3,)
    fresh = make_attention("bigbird")
    fresh.prune_heads([0])
    fresh.load_state_dict(attn.state_dict())
    assert fresh.head_ids == (3,)
    x, pad, glob = inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, pad, glob), attn(x, pad, glob))


@pytest.mark.parametrize("keep,error", [([], ValueError), ([4], IndexError), ([-1], IndexError),
                                        ([1, 1], ValueError)])
def test_prune_heads_rejects_bad_head_lists(keep, error):
    with pytest.raises(error, match="head"):
        make_attention("full").prune_heads(keep)


def test_flops_count_the_pruned_projections():
    attn = make_attention("full")
    before = attn.flops(64)
    attn.prune_heads([0, 1])
    assert attn.flops(64) == pytest.approx(before / 2)
