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
from attention_arena.compress import (
    INT8_DEFAULT,
    Variant,
    apply_variant,
    convert_dtype,
    head_importance,
    load_compressed,
    magnitude_prune,
    make_permanent,
    parse_variant,
    prune_heads,
    prune_variant,
    save_compressed,
    sparsity,
)
from attention_arena.compress.recipes import block_linears
from attention_arena.compress.report import write_report
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


# --- the model-level recipes ------------------------------------------------------------------

def tiny_model(name: str = "full", **kw) -> TransformerClassifier:
    torch.manual_seed(0)
    args = dict(vocab_size=60, num_classes=3, embed_dim=D, num_heads=H, ff_dim=64, num_layers=2,
                max_length=64, positions="sinusoidal", pooling="mean",
                attention={"name": name, **OPTIONS.get(name, {})})
    return TransformerClassifier(**{**args, **kw}).eval()


def tiny_batch(B: int = 3, N: int = 48, seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 60, (B, N), generator=g)
    ids[:, 0] = 1
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[-1, N - 10:] = True
    return {"input_ids": ids.masked_fill(pad, 0), "padding_mask": pad,
            "labels": torch.arange(B) % 3}


def logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], batch["padding_mask"]).float()


def op_counts(model, batch) -> dict[str, int]:
    """How often each ATen / quantized op ran in one forward."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        logits(model, batch)
    return Counter(e.name for e in prof.events())


INT8_KERNEL = {"int8_dynamic": "quantized::linear_dynamic", "int8_torchao": "aten::_int_mm"}


@pytest.mark.parametrize("name", BACKENDS)
def test_int8_runs_every_linear_layer_in_int8_for_every_backend(name):
    model = tiny_model(name)
    batch = tiny_batch()
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    expected = logits(model, batch)
    quantized = convert_dtype(copy.deepcopy(model), "int8_dynamic")
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())  # all replaced
    # every projection of the backend went through an int8 kernel (none through the fused
    # float GEMM of project_qkv, which would bypass the quantized modules)
    assert op_counts(quantized, batch)["quantized::linear_dynamic"] == linears
    got = logits(quantized, batch)
    assert not torch.equal(got, expected)  # really another computation ...
    torch.testing.assert_close(got, expected, atol=0.05 * expected.abs().max(), rtol=0)  # ... close


def test_torchao_int8_uses_int8_matmuls_and_agrees_with_fp32():
    model = tiny_model("full")
    batch = tiny_batch()
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    quantized = convert_dtype(copy.deepcopy(model), "int8_torchao")
    assert quantized.blocks[0].attn.q_proj.weight.dtype == torch.float32  # a quantized subclass
    assert type(quantized.blocks[0].attn.q_proj.weight) is not nn.Parameter
    assert op_counts(quantized, batch)["aten::_int_mm"] == linears
    expected, got = logits(model, batch), logits(quantized, batch)
    assert not torch.equal(got, expected)
    torch.testing.assert_close(got, expected, atol=0.05 * expected.abs().max(), rtol=0)


def test_int8_state_dict_is_under_30_percent_of_fp32():
    from attention_arena.compress.measure import state_dict_bytes

    model = tiny_model(vocab_size=2000)  # an embedding table as large as a BPE vocabulary's
    for dtype in ("int8_dynamic", "int8_torchao"):
        small = convert_dtype(copy.deepcopy(model), dtype)
        assert state_dict_bytes(small) < 0.3 * state_dict_bytes(model), dtype


def test_bf16_holds_every_weight_in_bf16_and_agrees_with_fp32():
    model = tiny_model()
    batch = tiny_batch()
    half = convert_dtype(copy.deepcopy(model), "bf16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    expected = logits(model, batch)
    torch.testing.assert_close(logits(half, batch), expected,
                               atol=0.03 * expected.abs().max(), rtol=0)


def test_magnitude_pruning_zeroes_the_smallest_weights_permanently():
    model = tiny_model()
    before = {n: m.weight.detach().clone() for n, m in model.blocks.named_modules()
              if isinstance(m, nn.Linear)}
    magnitude_prune(model, 0.5)
    make_permanent(model)
    weights = [m.weight for m in block_linears(model)]
    total = sum(w.numel() for w in weights)
    assert sparsity(model) == pytest.approx(round(0.5 * total) / total)
    # permanent: plain parameters, no masks, no hooks; the state dict has the usual keys
    assert all(type(w) is nn.Parameter for w in weights)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    assert not any(m._forward_pre_hooks for m in model.modules())
    # global: the zeroed weights were the smallest in magnitude over all layers together
    old = torch.cat([w.flatten() for w in before.values()])
    new = torch.cat([m.weight.detach().flatten() for m in block_linears(model)])
    assert old[new == 0].abs().max() <= old[new != 0].abs().min()
    assert torch.equal(new[new != 0], old[new != 0])  # the rest untouched
    assert model.head.weight.ne(0).all()  # the classifier is not pruned


def test_fine_tuning_a_magnitude_pruned_model_keeps_its_zeros():
    model = tiny_model()
    batch = tiny_batch()

    def finetune(m, epochs):  # a few plain SGD steps through the pruning masks
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        for _ in range(3 * epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(logits_with_grad(m, batch),
                                              batch["labels"]).backward()
            opt.step()

    before = torch.cat([m.weight.detach().flatten() for m in block_linears(model)])
    counts = prune_variant(model, parse_variant("prune50+ft1"), finetune=finetune)
    after = torch.cat([m.weight.detach().flatten() for m in block_linears(model)])
    assert counts["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert not any(k.endswith("_mask") for k in model.state_dict())
    kept = after != 0
    assert not torch.equal(after[kept], before[kept])  # the fine-tune changed the kept weights
    assert (after == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)  # none regrew


def logits_with_grad(model, batch):
    return model(batch["input_ids"], batch["padding_mask"]).float()


def test_gradient_head_importance_is_the_loss_change_per_head_gate():
    model = tiny_model()
    batch = {k: v[:1] for k, v in tiny_batch().items()}  # one document: |dL/dxi| exactly
    scores = head_importance(model, "gradient", [batch])
    assert scores.shape == (2, H)
    # finite difference: scale head h of layer l by (1 ± eps) through its out_proj columns
    eps, d = 1e-3, D // H
    for layer in range(2):
        for h in range(H):
            losses = []
            for sign in (1, -1):
                m = copy.deepcopy(model)
                with torch.no_grad():
                    m.blocks[layer].attn.out_proj.weight[:, h * d:(h + 1) * d] *= 1 + sign * eps
                losses.append(torch.nn.functional.cross_entropy(
                    logits(m, batch).double(), batch["labels"]).item())
            fd = abs(losses[0] - losses[1]) / (2 * eps)
            assert scores[layer, h].item() == pytest.approx(fd, rel=0.02, abs=1e-6)


def test_prune_heads_keeps_the_most_important_heads_of_each_layer():
    model = tiny_model()
    importance = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.7, 0.0, 0.3, 0.8]])
    kept = prune_heads(model, 0.5, importance)
    assert kept == [[1, 2], [0, 3]]
    assert [b.attn.num_heads for b in model.blocks] == [2, 2]
    assert model.blocks[0].attn.q_proj.weight.shape == (2 * D // H, D)
    norms = head_importance(tiny_model(), "norm")
    assert norms.shape == (2, H) and (norms > 0).all()


@pytest.mark.parametrize("variant", ["fp32", "bf16", "int8", "int8_torchao", "prune50",
                                     "heads50", "heads50+prune30+int8"])
def test_compressed_model_round_trips_through_save_and_load(tmp_path, variant):
    model = tiny_model("bigbird")
    spec = parse_variant(variant)
    args = dict(vocab_size=60, num_classes=3, embed_dim=D, num_heads=H, ff_dim=64, num_layers=2,
                max_length=64, positions="sinusoidal", pooling="mean",
                attention={"name": "bigbird", **OPTIONS["bigbird"]})
    recipe = apply_variant(model, spec, importance=torch.rand(2, H))
    size = save_compressed(model, tmp_path / f"{variant}.pt", recipe, args)
    assert size == (tmp_path / f"{variant}.pt").stat().st_size
    loaded = load_compressed(tmp_path / f"{variant}.pt")
    batch = tiny_batch()
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    if spec.heads:  # the pruned heads are gone from the reloaded model too
        assert [b.attn.num_heads for b in loaded.blocks] == [2, 2]


def test_load_compressed_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="arena-compress"):
        load_compressed(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a model saved by arena-compress"):
        load_compressed(tmp_path / "other.pt")


@pytest.mark.parametrize("name,expected", [
    ("fp32", Variant("fp32")),
    ("int8", Variant("int8", dtype=INT8_DEFAULT)),
    ("heads50+int8_torchao", Variant("heads50+int8_torchao", heads=0.5, dtype="int8_torchao")),
    ("prune70", Variant("prune70", magnitude=0.7)),
    ("heads50+ft1+int8", Variant("heads50+ft1+int8", heads=0.5, dtype=INT8_DEFAULT, finetune=1)),
])
def test_parse_variant(name, expected):
    assert parse_variant(name) == expected


@pytest.mark.parametrize("name,match", [("int4", "unknown variant step"),
                                        ("bf16+int8", "two number formats"),
                                        ("prune30+prune50", "two prune steps"),
                                        ("heads0", "prunes nothing"),
                                        ("bf16+ft1", "prunes nothing")])
def test_parse_variant_errors(name, match):
    with pytest.raises(ValueError, match=match):
        parse_variant(name)


# --- the report -------------------------------------------------------------------------------

def test_report_writes_markdown_csv_json_and_plot(tmp_path):
    rows = [{"variant": "fp32", "dtype": "fp32", "test_acc": 0.9, "acc_low": 0.85,
             "acc_high": 0.94, "test_f1": 0.89, "f1_low": 0.84, "f1_high": 0.93, "params": 1000,
             "nonzero_params": 1000, "size_bytes": 4 * 2**20, "size_vs_fp32": 1.0,
             "ms_b1": 2.0, "ms_batch": 1.0, "speedup_b1": 1.0, "speedup_batch": 1.0,
             "attn_ms_batch": 0.5, "attn_speedup": 1.0, "ms_b1_long": None,
             "ms_batch_long": None, "peak_mb": 50.0, "notes": ["not timed at 256 tokens: x"],
             "preds": [0, 1]},
            {"variant": "int8", "dtype": "int8_dynamic", "test_acc": 0.895, "acc_low": 0.85,
             "acc_high": 0.93, "test_f1": 0.88, "f1_low": 0.83, "f1_high": 0.92,
             "diff_vs_fp32": -0.005, "diff_low": -0.02, "diff_high": 0.01, "mcnemar_p": 1.0,
             "params": 1000, "nonzero_params": 1000, "size_bytes": 2**20, "size_vs_fp32": 0.25,
             "ms_b1": 1.0, "ms_batch": 0.5, "speedup_b1": 2.0, "speedup_batch": 2.0,
             "attn_ms_batch": 0.25, "attn_speedup": 2.0, "ms_b1_long": 4.0,
             "ms_batch_long": 3.0, "peak_mb": 30.0, "notes": [], "preds": [0, 0]}]
    meta = {"run_dir": "r", "checkpoint": "best.ckpt", "attention": "full", "model": "m",
            "max_length": 64, "long_length": 256, "batch": 16, "threads": 2, "torch": "x",
            "cpu": "cpu", "load_before": "1", "load_after": "1", "repeats": 5, "warmup": 1,
            "test_docs": 2}
    paths = write_report(rows, meta, tmp_path)
    md = paths["md"].read_text()
    assert "| `int8` | 89.5 [85.0, 93.0] |" in md
    assert "-0.5 [-2.0, +1.0], p=1" in md and "0.50 (2.00×)" in md and "1.00 (0.25×)" in md
    assert "not timed at 256 tokens" in md
    with open(paths["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == ["fp32", "int8"] and table[1]["speedup_batch"] == "2.0"
    data = json.loads(paths["json"].read_text())
    assert data["meta"]["batch"] == 16 and "preds" not in data["rows"][0]
    assert paths["png"].stat().st_size > 1000


# --- arena-compress on a tiny trained run -----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from conftest import train_in_process

    run_dir = tmp_path_factory.mktemp("compress") / "run"
    metrics = train_in_process(run_dir, "model.num_heads=4", "model.positions=sinusoidal")
    assert metrics["status"] == "ok", metrics.get("error")
    return run_dir


def test_arena_compress_on_a_tiny_run(tiny_run, tmp_path):
    from attention_arena.compress import main

    out = tmp_path / "out"
    code = main([str(tiny_run), "--variants", "fp32,int8,heads50", "--out", str(out),
                 "--repeats", "1", "--warmup", "0", "--threads", "1", "--batch", "2",
                 "--finetune-epochs", "1", "--importance-batches", "2"])
    assert code == 0
    data = json.loads((out / "compress.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["fp32", "int8", "heads50+ft1"]  # --finetune-epochs: pruned ones
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert rows["fp32"]["test_acc"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    heads = rows["heads50+ft1"]
    assert heads["finetune_epochs"] == 1 and rows["int8"]["finetune_epochs"] == 0
    assert heads["heads_kept"] and all(len(k) == 2 for k in heads["heads_kept"])
    assert heads["params"] < rows["fp32"]["params"]
    assert rows["int8"]["size_vs_fp32"] < 0.5
    for r in rows.values():  # 4 x the run's 256 tokens: sinusoidal positions are extended
        assert r["ms_b1"] > 0 and r["ms_batch_long"] > 0 and r["peak_mb"] > 0
    for ext in ("md", "csv", "png"):
        assert (out / f"compress.{ext}").stat().st_size > 0
    # every saved model reloads and classifies the test split as the table says
    from attention_arena.compress import load_run
    from attention_arena.compress.measure import predict

    run = load_run(tiny_run)
    loader = run.datamodule().test_dataloader()
    for name in rows:
        model = load_compressed(out / "models" / f"{name}.pt")
        preds, labels = predict(model, loader)
        assert sum(p == y for p, y in zip(preds, labels, strict=True)) / len(labels) == \
            pytest.approx(rows[name]["test_acc"])


def test_arena_compress_bad_inputs_name_the_fix(tmp_path, capsys):
    from attention_arena.compress import main

    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / "config_resolved.yaml").write_text("data: {max_length: 8}\n")
    assert main([str(tmp_path / "run")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main([str(tmp_path / "run"), "--variants", "fp16"]) == 2
    assert "unknown variant step" in capsys.readouterr().err
