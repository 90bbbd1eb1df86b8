"""arena-bench on tiny sizes: outputs, failure recording, peers, and the FLOP formulas."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from attention_arena import bench
from attention_arena.attention import SelfAttention, available_attentions, register_attention
from attention_arena.attention import registry as attention_registry
from attention_arena.bench import CSV_COLUMNS, PEERS, flops, main, parse_opts, run_bench

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# keep every registered backend tiny and valid at N = 64 / 128
SMALL_OPTS = ["--opt", "linformer.k=32", "--opt", "longformer.window=32",
              "--opt", "performer.num_features=32"]
TINY = ["--lengths", "64", "128", "--repeats", "1", "--warmup", "0", "--threads", "1",
        "--gemm-size", "128", "--heads", "2", "--head-dim", "16"]


def _read_csv(path):
    with open(path) as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


# ------------------------------------------------------------------ FLOP formulas

def test_flops_full_exact_and_quadratic():
    B, H, d, N = 1, 4, 64, 1024
    D = H * d
    assert flops("full", N, B, H, d) == 3 * (4 * 2 * B * N * D * D + 2 * 2 * B * H * N * N * d)
    big = 1 << 16
    assert flops("full", 2 * big) / flops("full", big) > 3.9  # ~4x: N² dominates


@pytest.mark.parametrize("name, kw", [("linformer", {"k": 256}), ("longformer", {"window": 256}),
                                      ("performer", {"num_features": 256})])
def test_flops_efficient_linear_in_n(name, kw):
    assert flops(name, 16384, **kw) / flops(name, 8192, **kw) == pytest.approx(2.0)
    # and far below full attention at long N
    assert flops(name, 16384, **kw) < flops("full", 16384) / 10


def test_flops_options_and_peers():
    assert flops("linformer", 4096, k=128) < flops("linformer", 4096, k=256)
    assert flops("longformer", 4096, window=512) > flops("longformer", 4096, window=256)
    # window wider than N: never more than full attention's work
    assert flops("longformer", 64, window=256) == flops("full", 64)
    assert flops("peer:linformer", 4096, k=64) == flops("linformer", 4096, k=64)
    assert flops("peer:local-attention", 4096, window=256) == flops("longformer", 4096)
    assert flops("no-such-method", 1024) is None


def test_parse_opts():
    assert parse_opts(["linformer.k=128", "longformer.window=512", "x.flag=True", "x.s=abc"]) == {
        "linformer": {"k": 128}, "longformer": {"window": 512}, "x": {"flag": True, "s": "abc"}}
    assert parse_opts(["peer:linformer.k=64"]) == {"peer:linformer": {"k": 64}}
    with pytest.raises(ValueError, match="BACKEND.KEY=VALUE"):
        parse_opts(["k=128"])


# ------------------------------------------------------------------ the tool

def test_bench_all_registered_writes_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(TINY + SMALL_OPTS + ["--no-isolate", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "speed-up vs full" in printed and "% GEMM peak" in printed

    fields, rows = _read_csv(out / "bench.csv")
    assert fields == CSV_COLUMNS
    backends = available_attentions()
    assert {(r["backend"], int(r["N"])) for r in rows} == {(b, n) for b in backends
                                                           for n in (64, 128)}
    for r in rows:
        assert r["status"] == "ok", r
        assert float(r["ms_median"]) > 0
        assert float(r["gflops"]) > 0 and float(r["pct_gemm_peak"]) > 0
    full = [r for r in rows if r["backend"] == "full"]
    assert all(float(r["speedup_vs_full"]) == pytest.approx(1.0) for r in full)

    report = json.loads((out / "bench.json").read_text())
    assert report["meta"]["gemm"]["gflops"] > 0 and report["meta"]["threads"] == 1
    assert len(report["results"]) == len(rows)
    png = (out / "bench.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 1000


def test_bench_isolated_subprocess_measures_memory(tmp_path):
    # batch 64 x N 1024 x D 64: x, q, k, v, output and their grads are 16 MiB each
    report = run_bench(["full"], [1024], batch=64, heads=2, head_dim=32, threads=1, warmup=0,
                       repeats=1, gemm_size=128, isolate=True, log=lambda *_: None)
    (row,) = report["results"]
    assert row["status"] == "ok", row
    assert row["mem_method"] in ("rss-hwm", "rss-sampled")
    assert row["params"] == 4 * (64 * 64 + 64)
    assert 50 < row["peak_mb"] < 2000, row  # the activations, not zero, not the whole process


def test_bad_option_is_recorded_not_raised(tmp_path):
    # isolated: the error comes back from the worker process
    out = tmp_path / "out"
    assert main(TINY + ["--backends", "full", "--opt", "full.bogus=1", "--out", str(out)]) == 0
    _, rows = _read_csv(out / "bench.csv")
    assert len(rows) == 2 and all(r["status"] == "failed" for r in rows)
    assert all("bogus" in r["error"] for r in rows)
    assert (out / "bench.png").read_bytes()[:8] == PNG_MAGIC  # plot still written


@pytest.mark.skipif("linformer" not in available_attentions(), reason="linformer not registered")
def test_linformer_max_len_too_small_fails_cleanly(tmp_path):
    report = run_bench(["full", "linformer"], [64, 128], heads=2, head_dim=16, threads=1,
                       warmup=0, repeats=1, gemm_size=128, isolate=False,
                       opts={"linformer": {"k": 16, "max_len": 64}}, log=lambda *_: None)
    status = {(r["backend"], r["N"]): r["status"] for r in report["results"]}
    assert status[("full", 64)] == status[("full", 128)] == "ok"
    assert status[("linformer", 64)] == "ok"
    assert status[("linformer", 128)] == "failed"


@pytest.fixture
def broken_backend():
    available_attentions()  # discover the real ones first

    class Broken(SelfAttention):
        def attend(self, q, k, v, key_padding_mask=None, global_mask=None):
            if q.shape[2] > 64:
                raise RuntimeError("simulated out of memory")
            return v

    register_attention("bench_test_broken")(Broken)
    yield "bench_test_broken"
    attention_registry._REGISTRY.pop("bench_test_broken", None)


def test_failing_backend_recorded_and_run_continues(broken_backend, tmp_path):
    report = run_bench([broken_backend, "full"], [64, 128], heads=2, head_dim=16, threads=1,
                       warmup=0, repeats=1, gemm_size=128, isolate=False, log=lambda *_: None)
    rows = {(r["backend"], r["N"]): r for r in report["results"]}
    assert rows[(broken_backend, 64)]["status"] == "ok"
    bad = rows[(broken_backend, 128)]
    assert bad["status"] == "failed" and "simulated out of memory" in bad["error"]
    assert rows[("full", 128)]["status"] == "ok"  # kept going after the failure
    assert "FAILED: RuntimeError: simulated out of memory" in bench.format_table(report)
    paths = bench.write_outputs(report, tmp_path)
    _, csv_rows = _read_csv(paths["csv"])
    assert [r["status"] for r in csv_rows].count("failed") == 1


def test_unknown_backend_is_a_clear_error(capsys):
    assert main(["--backends", "nope", "--lengths", "64"]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_peers_run_or_skip(monkeypatch):
    kw = dict(heads=2, head_dim=16, threads=1, warmup=0, repeats=1, gemm_size=128,
              isolate=False, log=lambda *_: None,
              opts={"linformer": {"k": 32}, "performer": {"num_features": 32},
                    "longformer": {"window": 32}})
    report = run_bench(["full"], [128], peers=True, **kw)
    by_name = {r["backend"]: r for r in report["results"]}
    assert set(PEERS) <= set(by_name)
    for name in PEERS:
        r = by_name[name]
        if bench.peer_available(name):
            assert r["status"] == "ok", r
            assert r["speedup_vs_full"] > 0
        else:
            assert r["status"] == "skipped"

    monkeypatch.setattr(bench, "peer_available", lambda name: False)
    report = run_bench(["full"], [64], peers=True, **kw)
    skipped = [r for r in report["results"] if r["status"] == "skipped"]
    assert {r["backend"] for r in skipped} == set(PEERS)
    assert all("pip install" in r["error"] for r in skipped)
    assert "peer:" not in bench.format_table(report)


def test_peer_matches_our_settings():
    assert bench.peer_kwargs("peer:linformer", {"linformer": {"k": 64}}, 1024) == {"k": 64}
    assert bench.peer_kwargs("peer:longformer-hf", {}, 1024) == {"window": 256}
    assert bench.peer_kwargs("peer:performer", {"peer:performer": {"num_features": 8}},
                             1024) == {"num_features": 8}


def test_peer_wrappers_shape():
    torch.manual_seed(0)
    x = torch.randn(1, 100, 32)
    for name in PEERS:
        if not bench.peer_available(name):
            continue
        kwargs = bench.peer_kwargs(name, {"linformer": {"k": 16}, "longformer": {"window": 16},
                                          "performer": {"num_features": 16}}, 100)
        module = bench.build_module(name, 32, 2, 100, kwargs)
        assert module(x).shape == x.shape, name


def test_global_tokens_reach_our_backends(monkeypatch, tmp_path):
    seen = []
    original = bench.build_module

    def spy(name, *args, **kwargs):
        module = original(name, *args, **kwargs)
        forward = module.forward

        def recording_forward(x, key_padding_mask=None, global_mask=None):
            seen.append(None if global_mask is None else int(global_mask.sum()))
            return forward(x, key_padding_mask=key_padding_mask, global_mask=global_mask)

        module.forward = recording_forward
        return module

    monkeypatch.setattr(bench, "build_module", spy)
    report = run_bench(["longformer"], [128], heads=2, head_dim=16, threads=1, warmup=0,
                       repeats=1, isolate=False, gemm_size=64, global_tokens=2,
                       opts={"longformer": {"window": 32}})
    assert report["results"][0]["status"] == "ok" and report["meta"]["global_tokens"] == 2
    assert seen and set(seen) == {2}
