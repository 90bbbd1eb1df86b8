"""The sweep: every backend (and peer) at every length, with its options, FLOPs and speed-up."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from .measure import DTYPES, build_module, gemm_peak, measure, measure_isolated
from .options import default_options, resolve_options, valid_options
from .peers import PEERS

DEFAULT_LENGTHS = [1024, 2048, 4096, 8192, 16384]


def useful_flops(name: str, seq_len: int, batch: int, heads: int, head_dim: int,
                 options: dict[str, Any]) -> float | None:
    """Useful FLOPs of one forward + backward of ``name`` with ``options`` (our module's
    ``flops``; a peer counts as its method with the same settings). None where the backend does
    not count them, or cannot be built with these options (the measurement records why)."""
    from attention_arena.attention import available_attentions

    peer = PEERS.get(name)
    method = peer.method if peer else name
    if method not in available_attentions():
        return None
    if peer is not None:  # our module with the peer's (mirrored) settings
        allowed = valid_options(method)
        options = {**default_options(method, seq_len),
                   **{k: v for k, v in options.items() if k in allowed}}
    try:
        module = build_module(method, heads * head_dim, heads, seq_len, options)
    except (TypeError, ValueError):
        return None
    return module.flops(seq_len, batch)  # a registered backend is a SelfAttention


def run_bench(
    backends: list[str] | None = None,
    lengths: list[int] | None = None,
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    device: str = "cpu",
    dtype: str = "fp32",
    global_tokens: int = 0,
    threads: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    opts: dict[str, dict[str, Any]] | None = None,
    imports: list[str] | None = None,
    peers: bool = False,
    isolate: bool = True,
    timeout: float = 900.0,
    gemm_size: int = 2048,
    log=print,
) -> dict:
    """Benchmark every backend (and peer) at every length; returns ``{"meta", "results"}``.

    ``overrides`` ({KEY: VALUE}, like ``attention.KEY=VALUE``) go to every benchmarked backend
    that has the option; ``opts`` ({BACKEND: {KEY: VALUE}}) to one backend or peer, on top.
    ``imports``: modules that register backends, imported here and in every isolated worker.
    """
    from attention_arena.attention import available_attentions, import_modules

    imports = list(imports or [])
    import_modules(imports)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but torch.cuda.is_available() is False")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    threads = threads or torch.get_num_threads()
    lengths = lengths or DEFAULT_LENGTHS
    names = list(backends or available_attentions())
    unknown = [n for n in names if n not in available_attentions()]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; available: {available_attentions()}")
    # the peers of the benchmarked methods (all of them when no --backends is given)
    peer_names = [p for p in PEERS if PEERS[p].method in names] if peers else []
    # our backends and the methods the peers mirror take option changes; then the peers' own
    methods = list(dict.fromkeys(names + [PEERS[p].method for p in peer_names]))
    valid = {m: valid_options(m) for m in methods} | {p: PEERS[p].valid_options()
                                                       for p in peer_names}
    changes = resolve_options(methods, overrides, opts, valid)

    load_before = os.getloadavg()
    gemm = gemm_peak(gemm_size, device, dtype, threads)
    log(f"GEMM peak: {gemm['size']}x{gemm['size']} {dtype} matmul {gemm['ms']:.1f} ms = "
        f"{gemm['gflops']:.1f} GFLOP/s ({threads} threads)")

    results = []
    for name in names + peer_names:
        peer = PEERS.get(name)
        kind = "ours" if peer is None else "peer"
        if peer is not None and not peer.available():
            log(f"skip {name}: package not installed (pip install {peer.requirement!r})")
            results.append({"backend": name, "kind": kind, "N": None, "status": "skipped",
                            "error": f"not installed: pip install {peer.requirement}"})
            continue
        for N in lengths:
            if peer is None:
                options = {**default_options(name, N), **changes.get(name, {})}
            else:
                options = peer.options(N, changes.get(peer.method), changes.get(name))
            cfg = {"name": name, "N": N, "batch": batch, "heads": heads, "head_dim": head_dim,
                   "options": options, "device": device, "dtype": dtype, "threads": threads,
                   "warmup": warmup, "repeats": repeats, "seed": seed, "imports": imports,
                   "global_tokens": global_tokens if kind == "ours" else 0}
            res = measure_isolated(cfg, timeout) if isolate else measure(cfg)
            gf = useful_flops(name, N, batch, heads, head_dim, options)
            row = {"backend": name, "kind": kind, "N": N, "options": options,
                   "useful_gflop": None if gf is None else gf / 1e9, **res}
            if row["status"] == "ok" and gf is not None:
                row["gflops"] = gf / (row["ms_median"] / 1e3) / 1e9
                row["pct_gemm_peak"] = 100.0 * row["gflops"] / gemm["gflops"]
            results.append(row)
            if row["status"] == "ok":
                log(f"  {name:<22} N={N:<6} {row['ms_median']:9.1f} ms  "
                    f"{row['peak_mb']:8.1f} MB")
            else:
                log(f"  {name:<22} N={N:<6} FAILED: {row['error']}")

    full = {r["N"]: r["ms_median"] for r in results
            if r["backend"] == "full" and r["status"] == "ok"}
    for r in results:
        if r["status"] == "ok" and r["N"] in full:
            r["speedup_vs_full"] = full[r["N"]] / r["ms_median"]

    meta = {
        "device": device, "dtype": dtype, "threads": threads, "batch": batch, "heads": heads,
        "head_dim": head_dim, "embed_dim": heads * head_dim, "warmup": warmup,
        "repeats": repeats, "seed": seed, "lengths": lengths, "isolate": isolate,
        "global_tokens": global_tokens, "overrides": overrides or {}, "opts": opts or {},
        "imports": imports,
        "gemm": gemm, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "timing": "median ms of whole-module fwd + bwd of y.sum() w.r.t. x and params",
        "memory": ("peak extra MB of one fwd+bwd over the state before it: CUDA "
                   "max_memory_allocated; CPU peak RSS (VmHWM reset via /proc/self/clear_refs) "
                   "in a fresh subprocess per measurement"
                   + ("" if isolate else " -- NOT isolated here: CPU numbers unreliable")),
        "flops": ("useful FLOPs, analytic: each backend's SelfAttention.flops (a peer counts as "
                  "its method), fwd+bwd = 3x fwd; '-' where a backend does not count them"),
    }
    return {"meta": meta, "results": results}
