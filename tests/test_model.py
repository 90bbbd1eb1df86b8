"""TransformerClassifier and ArenaClassifier: shapes, masking, pooling, errors, optimizer groups."""

from __future__ import annotations

import math

import pytest
import torch

from attention_arena.attention import available_attentions
from attention_arena.lit_module import (
    ArenaClassifier,
    CheckpointMismatchError,
    check_checkpoint_compatible,
    warmup_cosine,
)
from attention_arena.model import TransformerClassifier, sinusoidal_positions

BACKENDS = available_attentions()
# small, CPU-cheap settings per backend (kwargs the backend needs for short sequences)
BACKEND_KWARGS = {
    "linformer": {"k": 8, "max_len": 64},
    "longformer": {"window": 8},
    "performer": {"num_features": 32},
}


def attention_cfg(name: str) -> dict:
    return {"name": name, **BACKEND_KWARGS.get(name, {})}


def tiny_model(name: str = "full", **kw) -> TransformerClassifier:
    args = dict(vocab_size=50, num_classes=3, embed_dim=32, num_heads=4, ff_dim=64, num_layers=2,
                dropout=0.0, max_length=64, attention=attention_cfg(name))
    args.update(kw)
    return TransformerClassifier(**args)


def batch(B: int = 3, N: int = 40, lengths=(40, 25, 9), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (B, N), generator=g)
    pad = torch.arange(N)[None, :] >= torch.tensor(lengths)[:, None]  # (B, N) True = pad
    ids = ids.masked_fill(pad, 0)
    return ids, pad


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_output_shape_and_finite(name, pooling):
    torch.manual_seed(0)
    model = tiny_model(name, pooling=pooling).eval()
    ids, pad = batch()
    logits = model(ids, pad)
    assert logits.shape == (3, 3)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_padding_invariance(name, pooling, positions):
    """Appending padding must not change the logits of the real tokens."""
    torch.manual_seed(0)
    model = tiny_model(name, pooling=pooling, positions=positions).eval()
    ids, pad = batch(N=40)
    extra = 24
    ids_long = torch.cat([ids, torch.zeros(3, extra, dtype=torch.long)], dim=1)
    pad_long = torch.cat([pad, torch.ones(3, extra, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        short, long = model(ids, pad), model(ids_long, pad_long)
    torch.testing.assert_close(long, short, atol=1e-4, rtol=1e-4)
    # ... and padding content is ignored too
    ids_noise = ids_long.masked_fill(pad_long, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(ids_noise, pad_long), short, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["full", "longformer", "linear"])
def test_embedding_conv_mixes_neighbours_and_ignores_padding(name):
    """The embedding convolution: padding-invariant like the rest of the model, and a token's
    state depends on its neighbours within kernel // 2 before any attention (encode of a
    model whose attention is cut off: only the convolution can carry the change)."""
    torch.manual_seed(0)
    model = tiny_model(name, embedding_conv=5).eval()
    x = torch.randn(2, 9, 32)
    assert torch.equal(model.embed_conv(x, None), x)  # zero-initialised: the identity
    torch.nn.init.normal_(model.embed_conv.conv.weight)  # a trained convolution
    ids, pad = batch(N=40)
    ids_long = torch.cat([ids, torch.full((3, 24), 7)], dim=1)
    pad_long = torch.cat([pad, torch.ones(3, 24, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids_long, pad_long), model(ids, pad), atol=1e-4,
                                   rtol=1e-4)
    for block in model.blocks:  # no token mixing but the convolution's
        block.attn.forward = lambda x, **kw: torch.zeros_like(x)
    changed = ids.clone()
    changed[:, 20] = (changed[:, 20] % 40) + 2
    with torch.no_grad():
        diff = (model.encode(changed) - model.encode(ids)).abs().amax(-1)  # (B, N)
    moved = diff > 1e-6
    assert moved[:, 18:23].all() and not moved[:, :18].any() and not moved[:, 23:].any()
    assert tiny_model(name, embedding_conv=None).embed_conv is None


def test_padding_is_not_ignored_without_mask():
    """Sanity check that the invariance test can fail: without the mask, padding leaks in."""
    torch.manual_seed(0)
    model = tiny_model("full", pooling="mean").eval()
    ids, pad = batch()
    with torch.no_grad():
        assert not torch.allclose(model(ids, pad), model(ids, None), atol=1e-4)


@pytest.mark.parametrize("name", BACKENDS)
def test_cls_is_passed_as_global_token(name, monkeypatch):
    model = tiny_model(name).eval()
    seen = []
    for block in model.blocks:
        original = block.attn.forward

        def spy(x, key_padding_mask=None, global_mask=None, _orig=original):
            seen.append((key_padding_mask, global_mask))
            return _orig(x, key_padding_mask=key_padding_mask, global_mask=global_mask)

        monkeypatch.setattr(block.attn, "forward", spy)
    ids, pad = batch()
    model(ids, pad)
    assert len(seen) == len(model.blocks)
    for key_padding_mask, global_mask in seen:
        assert key_padding_mask is pad
        expected = torch.zeros_like(pad)
        expected[:, 0] = True
        assert torch.equal(global_mask, expected)


def test_cls_global_can_be_disabled(monkeypatch):
    model = tiny_model(cls_global=False).eval()
    seen = []
    original = model.blocks[0].attn.forward
    monkeypatch.setattr(model.blocks[0].attn, "forward",
                        lambda x, key_padding_mask=None, global_mask=None:
                        seen.append(global_mask) or original(x, key_padding_mask))
    model(*batch())
    assert seen == [None]


@pytest.mark.parametrize("name", BACKENDS)
def test_gradients_flow_to_every_parameter(name):
    torch.manual_seed(0)
    model = tiny_model(name, dropout=0.1).train()
    ids, pad = batch()
    loss = torch.nn.functional.cross_entropy(model(ids, pad), torch.tensor([0, 1, 2]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), pname
    assert model.head.weight.grad.abs().sum() > 0
    assert model.tok_emb.weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0


def test_too_long_input_is_a_clear_error():
    model = tiny_model(max_length=16)
    ids = torch.ones(2, 17, dtype=torch.long)
    with pytest.raises(ValueError, match=r"sequence length 17 exceeds the model's max_length=16"):
        model(ids)


def test_sinusoidal_positions_table():
    table = sinusoidal_positions(10, 6)
    assert table.shape == (10, 6)
    assert torch.allclose(table[0, 0::2], torch.zeros(3)) and torch.allclose(table[0, 1::2],
                                                                             torch.ones(3))
    assert sinusoidal_positions(5, 7).shape == (5, 7)  # odd widths work too


@pytest.mark.parametrize("kwargs, match", [
    ({"pooling": "max"}, "pooling must be one of"),
    ({"positions": "rope"}, "positions must be one of"),
    ({"num_heads": 3}, "embed_dim=32 is not divisible by num_heads=3"),
    ({"attention": {"name": "nope"}}, "unknown attention backend 'nope'"),
    ({"attention": {"window": 4}}, "needs a 'name'"),
    ({"embedding_conv": 4}, "embedding_conv must be an odd positive kernel length"),
    ({"embedding_conv": -3}, "embedding_conv must be an odd positive kernel length"),
])
def test_bad_config_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_model(**kwargs)


def test_weight_decay_groups():
    module = ArenaClassifier(vocab_size=50, num_classes=3, model={"embed_dim": 32, "num_heads": 4,
                             "ff_dim": 64, "num_layers": 1, "max_length": 64},
                             attention={"name": "full"}, weight_decay=0.1)
    decay, no_decay = module.parameter_groups()
    decay_ids = {id(p) for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    m = module.model
    assert id(m.head.weight) in decay_ids and id(m.blocks[0].attn.q_proj.weight) in decay_ids
    for p in (m.tok_emb.weight, m.pos_emb.weight, m.head.bias, m.ln_f.weight,
              m.blocks[0].ln1.bias):
        assert id(p) not in decay_ids
    n_all = sum(1 for _ in module.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_all


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 0, math.inf, 0.1) == 1.0
    values = [warmup_cosine(s, 10, 100, 0.0) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_checkpoint_of_another_backend_is_rejected():
    saved = {"attention": {"name": "longformer", "window": 256}, "model": {"embed_dim": 32}}
    current = {"attention": {"name": "full"}, "model": {"embed_dim": 32}}
    with pytest.raises(CheckpointMismatchError,
                       match="trained with attention=longformer, but this run uses attention=full"):
        check_checkpoint_compatible(saved, current)
    with pytest.raises(CheckpointMismatchError, match=r"model.embed_dim: 32 -> 64"):
        check_checkpoint_compatible(saved, {"attention": saved["attention"],
                                            "model": {"embed_dim": 64}})
    check_checkpoint_compatible(saved, {"attention": dict(saved["attention"]),
                                        "model": {"embed_dim": 32, "dropout": 0.3}})


def test_lightning_module_step_logs_and_loss():
    module = ArenaClassifier(vocab_size=50, num_classes=3, model={"embed_dim": 32, "num_heads": 4,
                             "ff_dim": 64, "num_layers": 1, "max_length": 64})
    ids, pad = batch()
    out = module._shared_step({"input_ids": ids, "padding_mask": pad,
                               "labels": torch.tensor([0, 1, 2])}, "val")
    assert out.ndim == 0 and torch.isfinite(out)
    assert module.hparams.attention_name == "full"
    assert module.hparams.attention == {"name": "full"}


def test_epoch_seeded_shuffle_depends_only_on_seed_and_epoch():
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from attention_arena.callbacks import EpochSeededShuffle

    def order(epochs_before: int, epoch: int) -> list[int]:
        loader = DataLoader(list(range(20)), batch_size=20, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        cb = EpochSeededShuffle(seed=3)
        for e in range(epochs_before):  # earlier epochs of this process
            cb.on_train_epoch_start(SimpleNamespace(train_dataloader=loader, current_epoch=e),
                                    None)
            next(iter(loader))
        cb.on_train_epoch_start(SimpleNamespace(train_dataloader=loader, current_epoch=epoch),
                                None)
        return next(iter(loader)).tolist()

    assert order(0, 2) == order(2, 2)  # a resumed run sees the same epoch-2 order
    assert order(0, 1) != order(0, 2)  # ... and epochs still differ


def test_peak_memory_is_reset_per_job():
    import mmap
    import sys

    import pytest

    from attention_arena.lit_module import peak_memory_mb, reset_peak_memory
    from attention_arena.utils import reset_peak_rss

    if not sys.platform.startswith("linux") or not reset_peak_rss():
        pytest.skip("this kernel refuses or ignores /proc/self/clear_refs (the fake-proc test "
                    "below covers the check)")
    size, page = 64 * 2**20, mmap.PAGESIZE
    reset_peak_memory()
    before = peak_memory_mb()
    # 64 MiB of new pages, touched: a fresh mapping, since a malloc'd tensor may reuse free heap
    # pages that earlier tests left resident, and then the RSS does not grow
    block = mmap.mmap(-1, size)
    for offset in range(0, size, page):
        block[offset] = 1
    during = peak_memory_mb()
    block.close()
    reset_peak_memory()
    after = peak_memory_mb()
    assert during >= before + 48
    assert after <= during - 48


def test_reset_peak_rss_reports_a_kernel_that_keeps_the_old_peak(tmp_path, monkeypatch):
    from attention_arena import utils

    monkeypatch.setattr(utils, "PROC_SELF", tmp_path)
    status = tmp_path / "status"
    status.write_text("VmHWM:\t  972000 kB\nVmRSS:\t  400000 kB\n")  # write accepted, peak kept
    assert utils.proc_status_kb("VmHWM") == 972000
    assert not utils.reset_peak_rss()
    assert (tmp_path / "clear_refs").read_text() == "5"
    status.write_text("VmHWM:\t  400100 kB\nVmRSS:\t  400000 kB\n")  # peak reset to the RSS
    assert utils.reset_peak_rss()
    status.unlink()  # no figures at all: nothing to trust
    assert not utils.reset_peak_rss()
    monkeypatch.setattr(utils, "PROC_SELF", tmp_path / "missing")  # the write itself fails
    assert not utils.reset_peak_rss()


def test_predict_logits_keeps_order_and_mode():
    torch.manual_seed(0)
    module = ArenaClassifier(vocab_size=50, num_classes=3, model={
        "embed_dim": 32, "num_heads": 4, "ff_dim": 64, "num_layers": 1, "max_length": 64,
        "dropout": 0.5})
    batches = []
    for seed in (0, 1):
        ids, pad = batch(seed=seed)
        batches.append({"input_ids": ids, "padding_mask": pad, "labels": torch.tensor([2, 0, 1])})
    module.train()
    logits, labels = module.predict_logits(batches)
    assert module.training  # restored
    module.eval()
    expected = torch.cat([module(b["input_ids"], b["padding_mask"]) for b in batches])
    torch.testing.assert_close(logits, expected)  # eval mode: no dropout
    assert labels.tolist() == [2, 0, 1, 2, 0, 1]


# --------------------------------------------------------------------------- fit_to_length
def test_fit_to_length_default_and_linformer_cap():
    from attention_arena.attention.base import SelfAttention
    from attention_arena.attention.linformer import LinformerAttention

    options = {"window": 256}
    fitted, notes = SelfAttention.fit_to_length(options, 16)
    assert fitted == options and fitted is not options and notes == []
    assert LinformerAttention.fit_to_length({"k": 32, "max_len": 64}, 64) == (
        {"k": 32, "max_len": 64}, [])
    assert LinformerAttention.fit_to_length({"k": 256, "max_len": 64}, 64) == (
        {"k": 64, "max_len": 64}, ["linformer k capped from 256 to 64 = max_len"])
    # the shorter of the sequence length and the projection's rows; k's default counts too
    assert LinformerAttention.fit_to_length({"k": 100, "max_len": 2048}, 48)[0]["k"] == 48
    assert LinformerAttention.fit_to_length({"k": 100, "max_len": 40}, 64)[0]["k"] == 40
    assert LinformerAttention.fit_to_length({}, 64) == (
        {"k": 64}, ["linformer k capped from 256 to 64 = max_len"])


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_with_its_config_defaults_runs_at_a_short_length(name):
    """A length grid shorter than a backend's defaults (conf/attention/<name>.yaml) works."""
    from omegaconf import OmegaConf

    from attention_arena.train import fit_attention_to_length
    from conftest import compose_train

    length = 16
    cfg = compose_train(f"attention={name}", f"data.max_length={length}")
    attention, notes = fit_attention_to_length(
        OmegaConf.to_container(cfg.attention, resolve=True), length)
    assert (notes != []) == (name == "linformer")
    model = tiny_model(name, max_length=length, attention=attention).eval()
    ids, pad = batch(N=length, lengths=(16, 9, 3))
    assert torch.isfinite(model(ids, pad)).all()
