"""arena-bench: FLOPs on the backend classes, options (YAML defaults, overrides), a toy backend,
failure recording, peers, and tiny real runs that write CSV / JSON / PNG. No timed assertions."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

import attention_arena.train
from attention_arena import bench
from attention_arena.attention import (
    SelfAttention,
    available_attentions,
    build_attention,
    register_attention,
)
from attention_arena.attention import registry as attention_registry
from attention_arena.bench import (
    CSV_COLUMNS,
    PEERS,
    default_options,
    main,
    parse_opts,
    parse_overrides,
    run_bench,
    useful_flops,
)
from attention_arena.bench import options as bench_options
from attention_arena.bench.peers import Peer
from attention_arena.bench.report import line_style_of
from attention_arena.plotting import line_style
from conftest import REPO, cli_env, explain

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# every registered backend small and valid at N = 64 / 128 (arena-train's override syntax)
SMALL = ["attention.k=32", "attention.window=32", "attention.num_features=32"]
TINY = ["--lengths", "64", "128", "--repeats", "1", "--warmup", "0", "--threads", "1",
        "--gemm-size", "128", "--heads", "2", "--head-dim", "16"]
QUIET = dict(heads=2, head_dim=16, threads=1, warmup=0, repeats=1, gemm_size=64,
             isolate=False, log=lambda *_: None)


def _read_csv(path):
    with open(path) as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


# ------------------------------------------------------------------ useful FLOPs on the classes

# D = 8, H = 2, d = 4, N = 16, B = 1. Projections 4·2·B·N·D² = 8192 in every backend.
# full:        QKᵀ, AV       2·2·B·H·N²·d = 8192                       -> 3 · 16384 = 49152
# linformer 4: Eᵀ K, Fᵀ V    2·2·B·k·N·D = 2048, attention 2·2·B·H·N·k·d = 2048
#                                                                       -> 3 · 12288 = 36864
# longformer 4: 5 keys each  2·2·B·H·N·5·d = 2560                      -> 3 · 10752 = 32256
# performer 8: φ(q), φ(k)    2·2·B·H·N·d·m = 4096, φ(K)ᵀV and φ(Q)(·) 4096, normaliser
#              2·B·H·N·m = 512                                          -> 3 · 16896 = 50688
# bigbird block 2, 3 window + 1 random blocks: 8 keys each  2·2·B·H·N·8·d = 4096
#                                                                       -> 3 · 12288 = 36864
HAND_FLOPS = [
    ("full", {}, 49152),
    ("linformer", {"k": 4, "max_len": 16}, 36864),
    ("longformer", {"window": 4}, 32256),
    ("longformer", {"window": 32}, 49152),  # window wider than N: exactly full's work
    ("performer", {"num_features": 8}, 50688),
    ("bigbird", {"block_size": 2, "num_random_blocks": 1}, 36864),
    ("bigbird", {"block_size": 4, "num_random_blocks": 2}, 49152),  # 20 keys > N: full's work
]


@pytest.mark.parametrize("name, options, expected", HAND_FLOPS)
def test_flops_match_hand_computed_values(name, options, expected):
    module = build_attention(name, embed_dim=8, num_heads=2, **options)
    assert module.flops(16) == expected
    assert module.flops(16, batch=3) == 3 * expected


@pytest.mark.parametrize("name, options, expected", HAND_FLOPS)
def test_bench_counts_with_the_class_and_peers_as_their_method(name, options, expected):
    assert useful_flops(name, 16, 1, 2, 4, options) == expected
    for peer in PEERS.values():
        if peer.method == name:  # our module with the peer's (mirrored) settings
            mirrored = {k: v for k, v in options.items() if k in peer.mirrors}
            assert useful_flops(peer.name, 16, 1, 2, 4, mirrored) == expected, peer.name


@pytest.mark.parametrize("name", available_attentions())
def test_every_shipped_backend_counts_its_flops(name):
    module = build_attention(name, embed_dim=8, num_heads=2, **default_options(name, 512))
    assert module.flops(64) > module.flops(32) > 0


# ------------------------------------------------------------------ a toy backend

@pytest.fixture
def toy_backend():
    """A backend registered here: no YAML, no flops, options ``width`` and ``span``."""
    available_attentions()  # discover the real ones first

    class Toy(SelfAttention):
        def __init__(self, embed_dim, num_heads, width: int = 3, span: int | None = None,
                     dropout=0.0, bias=True):
            super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias)
            self.width, self.span = width, span

        def attend(self, q, k, v, key_padding_mask=None, global_mask=None):
            return v * self.width

    register_attention("bench_toy")(Toy)
    yield "bench_toy"
    attention_registry._REGISTRY.pop("bench_toy", None)


def test_toy_backend_benchmarks_with_no_flops_and_its_own_colour(toy_backend, tmp_path):
    report = run_bench([toy_backend, "full"], [64], **QUIET)
    rows = {r["backend"]: r for r in report["results"]}
    toy = rows[toy_backend]
    assert toy["status"] == "ok" and toy["ms_median"] > 0
    assert toy["options"] == {"width": 3, "span": None}  # its constructor's defaults
    assert toy["useful_gflop"] is None and "gflops" not in toy and "pct_gemm_peak" not in toy
    assert rows["full"]["gflops"] > 0

    (line,) = [ln for ln in bench.format_table(report).splitlines()
               if ln.startswith(toy_backend)]
    assert line.split()[-2:] == ["-", "-"]  # GFLOP/s and % GEMM peak

    paths = bench.write_outputs(report, tmp_path)
    _, csv_rows = _read_csv(paths["csv"])
    assert [r["useful_gflop"] for r in csv_rows if r["backend"] == toy_backend] == [""]
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC

    colours = [line_style(name)["color"] for name in available_attentions()]
    assert len(set(colours)) == len(colours)  # the toy's is not any other backend's
    assert line_style(toy_backend)["color"] in colours


def test_eight_more_backends_all_get_distinct_colours():
    available_attentions()
    names = [f"bench_colour_{i}" for i in range(8)]
    try:
        for name in names:
            register_attention(name)(type(name, (SelfAttention,), {}))
        colours = [line_style(name)["color"] for name in available_attentions()]
    finally:
        for name in names:
            attention_registry._REGISTRY.pop(name, None)
    assert len(colours) >= 12 and len(set(colours)) == len(colours)


def test_peers_share_their_method_colour_dashed_with_own_markers():
    for peer in PEERS.values():
        style = line_style_of(peer.name)
        assert style["color"] == line_style(peer.method)["color"]
        assert style["linestyle"] == "--" and line_style(peer.method)["linestyle"] == "-"
    by_method: dict[str, set] = {}
    for peer in PEERS.values():
        by_method.setdefault(peer.method, set()).add(line_style_of(peer.name)["marker"])
    assert all(len(m) == sum(p.method == method for p in PEERS.values())
               for method, m in by_method.items())
    assert line_style("full (bbc)") == line_style("full")  # compare's labels


# ------------------------------------------------------------------ defaults from the YAML

def test_defaults_come_from_the_backend_yaml():
    cfg = OmegaConf.load(attention_arena.train.CONF_DIR / "attention" / "linformer.yaml")
    for n in (512, 2048):
        opts = default_options("linformer", n)
        assert opts["max_len"] == n  # an interpolation in the training config: the length
        assert opts["k"] == cfg.k and opts["init"] == cfg.init and "name" not in opts
    longformer = OmegaConf.load(attention_arena.train.CONF_DIR / "attention" / "longformer.yaml")
    assert default_options("longformer", 64) == {k: v for k, v in longformer.items()
                                                  if k != "name"}
    assert default_options("full", 64) == {}


def test_yaml_wins_over_the_constructor_and_reaches_the_run(toy_backend, tmp_path, monkeypatch):
    assert default_options(toy_backend, 128) == {"width": 3, "span": None}  # no YAML yet
    (tmp_path / "attention").mkdir()
    (tmp_path / "attention" / f"{toy_backend}.yaml").write_text(
        f"name: {toy_backend}\nwidth: 7\nspan: ${{data.max_length}}\n")
    monkeypatch.setattr(attention_arena.train, "CONF_DIR", tmp_path)
    assert default_options(toy_backend, 128) == {"width": 7, "span": 128}
    (row,) = run_bench([toy_backend], [64], **QUIET)["results"]
    assert row["status"] == "ok" and row["options"] == {"width": 7, "span": 64}


def test_yaml_of_another_package_is_found_like_arena_train_finds_it(toy_backend, tmp_path,
                                                                    monkeypatch):
    """A package declaring its configs under the ``attention_arena.configs`` entry point."""
    conf = tmp_path / "bench_user_pkg" / "conf"
    (conf / "attention").mkdir(parents=True)
    for init in (tmp_path / "bench_user_pkg" / "__init__.py", conf / "__init__.py"):
        init.write_text("")
    (conf / "attention" / f"{toy_backend}.yaml").write_text(f"name: {toy_backend}\nwidth: 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = SimpleNamespace(name="bench_user_pkg", value="bench_user_pkg.conf")
    monkeypatch.setattr(bench_options, "entry_points",
                        lambda group: [entry] if group == "attention_arena.configs" else [])
    assert default_options(toy_backend, 64) == {"width": 5}
    assert bench_options.valid_options(toy_backend) == ["bias", "dropout", "span", "width"]


# ------------------------------------------------------------------ overrides

def test_parse_overrides_like_hydra():
    items = ["attention.k=128", "attention.init=uniform", "attention.share_kv=true",
             "attention.block=null", "attention.eps=1e-3", "+attention.seed=5",
             "attention.lengths=[1,2]", "attention.k=64"]
    assert parse_overrides(items) == {"k": 64, "init": "uniform", "share_kv": True,
                                      "block": None, "eps": 0.001, "seed": 5,
                                      "lengths": [1, 2]}


@pytest.mark.parametrize("item, message", [
    ("k=128", r"takes attention\.KEY=VALUE"),
    ("data.max_length=512", r"takes attention\.KEY=VALUE.*--lengths"),
    ("attention=linformer", r"pick backends with --backends"),
    ("attention.a.b=1", r"takes attention\.KEY=VALUE"),
    ("attention.k=64,128", r"is a sweep; arena-bench takes one value"),
    ("~attention.k", r"options cannot be removed"),
    ("attention.k=[1", r"bad override 'attention\.k=\[1'"),
])
def test_bad_overrides_are_clear_errors(item, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides([item])


def test_parse_opts():
    assert parse_opts(["linformer.k=128", "longformer.window=512", "x.flag=True", "x.s=abc",
                       "peer:linformer.k=64"]) == {
        "linformer": {"k": 128}, "longformer": {"window": 512}, "x": {"flag": True, "s": "abc"},
        "peer:linformer": {"k": 64}}
    with pytest.raises(ValueError, match="BACKEND.KEY=VALUE"):
        parse_opts(["k=128"])
    with pytest.raises(ValueError, match=r"bad override '--opt linformer\.k=\[1'"):
        parse_opts(["linformer.k=[1"])


def test_override_goes_to_every_backend_that_has_it_and_opt_wins():
    report = run_bench(["full", "linformer", "longformer"], [64],
                       overrides={"k": 8, "window": 16, "bias": False},
                       opts={"longformer": {"window": 8}}, **QUIET)
    rows = {r["backend"]: r for r in report["results"]}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["full"]["options"] == {"bias": False}
    assert rows["linformer"]["options"]["k"] == 8 and rows["linformer"]["options"]["max_len"] == 64
    assert rows["longformer"]["options"]["window"] == 8  # --opt over attention.window
    assert rows["full"]["params"] == 4 * 32 * 32  # bias=False reached the module
    assert report["meta"]["overrides"] == {"k": 8, "window": 16, "bias": False}


@pytest.mark.parametrize("kwargs, message", [
    ({"overrides": {"k": 8}},
     r"attention\.k: none of the benchmarked backends has an option 'k'; valid options: "
     r"full: bias, dropout; longformer: bias, block, dropout, window"),
    ({"opts": {"linformr": {"k": 8}}}, r"--opt linformr\.k: 'linformr' is not benchmarked"),
    ({"opts": {"full": {"bogus": 1}}}, r"full has no option 'bogus'; valid options: full: bias"),
    ({"opts": {"peer:linformer": {"k": 8}}}, r"peers need --peers"),
])
def test_options_no_backend_takes_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_bench(["full", "longformer"], [64], **QUIET, **kwargs)


def test_cli_overrides_after_a_list_option(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(TINY + ["--backends", "linformer", "attention.k=8", "--opt",
                        "linformer.init=uniform", "--no-isolate", "--out", str(out)]) == 0
    _, rows = _read_csv(out / "bench.csv")
    assert [json.loads(r["options"]) for r in rows] == [
        {"k": 8, "max_len": n, "init": "uniform", "share_kv": False} for n in (64, 128)]

    assert main(["--backends", "full", "attention.k=8", "--lengths", "64"]) == 2
    assert "none of the benchmarked backends has an option 'k'" in capsys.readouterr().err
    assert main(["--backends", "full", "data.max_length=8"]) == 2
    assert "bad override 'data.max_length=8'" in capsys.readouterr().err


# ------------------------------------------------------------------ runs, failures, peers

def test_bench_all_registered_writes_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(TINY + SMALL + ["--no-isolate", "--out", str(out)]) == 0
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
        N = int(r["N"])
        flops = useful_flops(r["backend"], N, 1, 2, 16, json.loads(r["options"]))
        assert float(r["useful_gflop"]) == pytest.approx(flops / 1e9)
    full = [r for r in rows if r["backend"] == "full"]
    assert all(float(r["speedup_vs_full"]) == pytest.approx(1.0) for r in full)

    report = json.loads((out / "bench.json").read_text())
    assert report["meta"]["gemm"]["gflops"] > 0 and report["meta"]["threads"] == 1
    assert len(report["results"]) == len(rows)
    png = (out / "bench.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 1000


@pytest.mark.integration
def test_isolated_run_writes_outputs_and_records_a_failing_build(tmp_path):
    out = tmp_path / "out"
    # isolated: each measurement in its own process; linformer k=0 fails in the worker
    assert main(TINY + ["--backends", "full", "linformer", "--opt", "linformer.k=0",
                        "--out", str(out)]) == 0
    _, rows = _read_csv(out / "bench.csv")
    status = {(r["backend"], int(r["N"])): r for r in rows}
    for n in (64, 128):
        assert status[("full", n)]["status"] == "ok"
        assert status[("full", n)]["mem_method"] in ("rss-hwm", "rss-sampled")
        bad = status[("linformer", n)]
        assert bad["status"] == "failed" and "k (0)" in bad["error"], bad
        assert bad["useful_gflop"] == ""
    assert json.loads((out / "bench.json").read_text())["meta"]["isolate"] is True
    assert (out / "bench.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.integration
def test_isolated_subprocess_measures_memory():
    # batch 64 x N 1024 x D 64: x, q, k, v, output and their grads are 16 MiB each
    report = run_bench(["full"], [1024], batch=64, heads=2, head_dim=32, threads=1, warmup=0,
                       repeats=1, gemm_size=128, isolate=True, log=lambda *_: None)
    (row,) = report["results"]
    assert row["status"] == "ok", row
    assert row["mem_method"] in ("rss-hwm", "rss-sampled")
    assert row["params"] == 4 * (64 * 64 + 64)
    assert 50 < row["peak_mb"] < 2000, row  # the activations, not zero, not the whole process


@pytest.mark.integration
def test_imported_backend_runs_in_isolated_workers(tmp_path, monkeypatch):
    (tmp_path / "bench_ext_toy.py").write_text(
        "from attention_arena.attention import SelfAttention, register_attention\n\n\n"
        "@register_attention('bench_ext_toy')\nclass Toy(SelfAttention):\n"
        "    def attend(self, q, k, v, key_padding_mask=None, global_mask=None):\n"
        "        return v\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{REPO / 'src'}")
    try:
        report = run_bench(["bench_ext_toy"], [64], imports=["bench_ext_toy"],
                           **{**QUIET, "isolate": True})
    finally:
        attention_registry._REGISTRY.pop("bench_ext_toy", None)
    (row,) = report["results"]
    assert row["status"] == "ok", row
    assert row["useful_gflop"] is None and row["mem_method"] in ("rss-hwm", "rss-sampled")


@pytest.mark.integration
def test_python_m_help_documents_both_override_forms():
    proc = subprocess.run([sys.executable, "-m", "attention_arena.bench", "--help"],
                          env=cli_env(PYTHONPATH=str(REPO / "src")), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, explain(proc)
    assert "attention.KEY=VALUE" in proc.stdout and "--opt BACKEND.KEY=VALUE" in proc.stdout


@pytest.mark.skipif("linformer" not in available_attentions(), reason="linformer not registered")
def test_linformer_max_len_too_small_fails_cleanly():
    report = run_bench(["full", "linformer"], [64, 128],
                       opts={"linformer": {"k": 16, "max_len": 64}}, **QUIET)
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
    report = run_bench([broken_backend, "full"], [64, 128], **QUIET)
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


def test_peers_mirror_our_settings_run_or_skip(monkeypatch):
    methods = sorted({peer.method for peer in PEERS.values()})
    report = run_bench(methods, [64], peers=True, **QUIET)
    by_name = {r["backend"]: r for r in report["results"]}
    assert set(PEERS) <= set(by_name)
    for name, peer in PEERS.items():
        if peer.available():
            assert by_name[name]["status"] == "ok", by_name[name]
        else:
            assert by_name[name]["status"] == "skipped"
            assert peer.requirement in by_name[name]["error"]
    if not any(p.available() for p in PEERS.values()):
        assert "peer:" not in bench.format_table(report)  # skipped peers: no table rows

    # pretend every peer is installed: the options they get mirror ours, overrides included
    monkeypatch.setattr(Peer, "available", lambda self: True)
    report = run_bench(methods, [64], peers=True, overrides={"k": 16, "window": 8},
                       opts={"peer:performer": {"num_features": 4}}, **QUIET)
    options = {r["backend"]: r["options"] for r in report["results"]}
    assert options["peer:linformer"] == {"k": 16}
    assert options["peer:local-attention"] == options["peer:longformer-hf"] == {"window": 8}
    assert options["peer:performer"] == {"num_features": 4}


def test_peers_are_those_of_the_benchmarked_backends(monkeypatch):
    monkeypatch.setattr(Peer, "available", lambda self: False)  # skipped: nothing is timed
    report = run_bench(["linear", "longformer"], [64], peers=True, **QUIET)
    peers = {r["backend"] for r in report["results"] if r["kind"] == "peer"}
    assert peers == {"peer:linear-einsum", "peer:local-attention", "peer:longformer-hf"}
    assert not [r for r in run_bench(["full"], [64], peers=True, **QUIET)["results"]
                if r["kind"] == "peer"]


def test_peer_requirements_are_the_peers_extra():
    text = (REPO / "pyproject.toml").read_text()
    extra = re.search(r"^peers = \[(.*)\]$", text, re.MULTILINE).group(1)
    assert sorted(re.findall(r'"([^"]+)"', extra)) == sorted({p.requirement
                                                             for p in PEERS.values()})


def test_peer_wrappers_shape():
    torch.manual_seed(0)
    x = torch.randn(1, 100, 32)
    for name, peer in PEERS.items():
        if not peer.available():
            continue
        options = peer.options(100, {"k": 16, "window": 16, "num_features": 16})
        module = bench.build_module(name, 32, 2, 100, options)
        assert module(x).shape == x.shape, name


def test_global_tokens_reach_our_backends(monkeypatch):
    seen = []
    original = bench.measure.build_module

    def spy(name, *args, **kwargs):
        module = original(name, *args, **kwargs)
        forward = module.forward

        def recording_forward(x, key_padding_mask=None, global_mask=None):
            seen.append(None if global_mask is None else int(global_mask.sum()))
            return forward(x, key_padding_mask=key_padding_mask, global_mask=global_mask)

        module.forward = recording_forward
        return module

    monkeypatch.setattr(bench.measure, "build_module", spy)
    report = run_bench(["longformer"], [128], global_tokens=2, opts={"longformer": {"window": 32}},
                       **QUIET)
    assert report["results"][0]["status"] == "ok" and report["meta"]["global_tokens"] == 2
    assert seen and set(seen) == {2}


def test_workers_wait_passively_unless_the_user_says_otherwise(monkeypatch):
    from attention_arena.bench.measure import worker_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("ARENA_BENCH_PROBE", "kept")
    env = worker_env()
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["ARENA_BENCH_PROBE"] == "kept"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert worker_env()["OMP_WAIT_POLICY"] == "ACTIVE"
