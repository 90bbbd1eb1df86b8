"""``arena-bench``: forward+backward time and peak memory of every attention backend.

    arena-bench                                   # all registered backends, N = 1024 … 16384
    arena-bench --backends full longformer --lengths 1024 4096 --repeats 10
    arena-bench --opt linformer.k=128 --opt longformer.window=512 --threads 2
    arena-bench --peers                           # also time lucidrains / HF implementations
    arena-bench --device cuda --dtype bf16

What is timed: the WHOLE module (q/k/v/out projections included), forward of ``x`` (B, N, D) plus
backward of ``y.sum()`` w.r.t. ``x`` and every parameter, gradients set to None before each repeat
(outside the timed region). Median over ``--repeats`` after ``--warmup`` untimed steps; same seed
and same input for every backend; ``torch.set_num_threads(--threads)``. bf16/fp16 run under
``torch.autocast`` (on CPU too); the parameters and ``x`` stay fp32.

Peak memory ("peak MB") is the EXTRA memory one fwd+bwd step needs over the state just before it
(module, input and nothing else allocated):
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the step (tensor memory only, no allocator cache).
- CPU: process RSS. By default each (backend, N) runs in a FRESH subprocess (``--isolate``, the
  default), so memory freed by an earlier measurement cannot be silently reused. There the peak RSS
  (VmHWM) is reset through ``/proc/self/clear_refs`` right before the step, and the value is
  VmHWM after the step minus VmRSS before it; where clear_refs is not writable, a background thread
  samples VmRSS every 0.5 ms instead. This is the first step of a fresh process, so it includes a
  few MB of one-time lazy initialisation (thread pools, kernel caches). ``--no-isolate`` runs
  everything in this process: faster, but CPU memory numbers are then unreliable (glibc keeps
  freed memory and hands it out again without RSS growth).

FLOPs are "useful FLOPs" counted analytically (:func:`flops`): the matmul work the method has to
do, not what an implementation happens to execute (padding, masked-out band corners and the
exp/softmax element-wise work are not counted). fwd+bwd = 3 × forward. GFLOP/s is reported against
a dense GEMM measured in the same run (``--gemm-size`` square matmul, same dtype and threads).
"""

from __future__ import annotations

import argparse
import ast
import csv
import gc
import importlib.util
import inspect
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from .utils import proc_status_kb, reset_peak_rss

DEFAULT_LENGTHS = [1024, 2048, 4096, 8192, 16384]
NOISY_SPREAD = 1.25  # max/min of the repeats above this: the measurement is flagged as noisy
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CSV_COLUMNS = [
    "backend", "kind", "N", "status", "ms_median", "ms_min", "ms_max", "peak_mb",
    "speedup_vs_full", "gflops", "pct_gemm_peak", "useful_gflop", "params", "mem_method",
    "options", "error",
]

# Default hyper-parameters of each method, used by `flops` and for peers when our backend is not
# registered (our own backends' defaults are read from their constructor signatures instead).
METHOD_DEFAULTS = {
    "linformer": {"k": 256},
    "longformer": {"window": 256},
    "performer": {"num_features": 256},
}

# Public implementations (`--peers`): name -> (method, import name, pip requirement).
PEERS = {
    "peer:linformer": ("linformer", "linformer", "linformer==0.2.3"),
    "peer:performer": ("performer", "performer_pytorch", "performer-pytorch"),
    "peer:local-attention": ("longformer", "local_attention", "local-attention"),
    "peer:longformer-hf": ("longformer", "transformers", "transformers"),
}


# --------------------------------------------------------------------------------------------
# Useful FLOPs
# --------------------------------------------------------------------------------------------

def flops(name: str, N: int, B: int = 1, H: int = 4, d: int = 64, **kwargs) -> float | None:
    """Useful FLOPs of one forward + backward pass (≈ 3 × forward) of the whole module.

    Forward, with D = H·d and one multiply-add = 2 FLOPs:

    - every method: q/k/v/out projections ``4 · 2·B·N·D²``;
    - ``full``: ``QKᵀ`` and ``AV``: ``2 · 2·B·H·N²·d``;
    - ``linformer`` (``k``): projecting K and V along the sequence ``2 · 2·B·k·N·D``, then
      attention on k keys ``2 · 2·B·H·N·k·d``;
    - ``longformer`` (``window`` = total width): each query sees ``min(window + 1, N)`` keys,
      ``2 · 2·B·H·N·(window+1)·d``; global tokens ignored;
    - ``performer`` (``num_features`` = m): feature maps of q and k ``2 · 2·B·H·N·d·m``, the two
      linear-attention products ``φ(K)ᵀV`` and ``φ(Q)(φ(K)ᵀV)`` ``2 · 2·B·H·N·m·d``, and the
      normaliser ``φ(Q)(φ(K)ᵀ1)`` ``2·B·H·N·m``.

    ``peer:*`` names count as their method. Returns None for an unknown method.
    """
    method = PEERS[name][0] if name in PEERS else name
    D = H * d
    fwd = 4 * 2 * B * N * D * D
    if method == "full":
        fwd += 2 * 2 * B * H * N * N * d
    elif method == "linformer":
        k = int(kwargs.get("k", METHOD_DEFAULTS["linformer"]["k"]))
        fwd += 2 * 2 * B * k * N * D + 2 * 2 * B * H * N * k * d
    elif method == "longformer":
        w = int(kwargs.get("window", METHOD_DEFAULTS["longformer"]["window"]))
        fwd += 2 * 2 * B * H * N * min(w + 1, N) * d
    elif method == "performer":
        m = int(kwargs.get("num_features", METHOD_DEFAULTS["performer"]["num_features"]))
        fwd += 2 * 2 * B * H * N * d * m + 2 * 2 * B * H * N * m * d + 2 * B * H * N * m
    else:
        return None
    return 3.0 * fwd


# --------------------------------------------------------------------------------------------
# Options (--opt backend.key=value)
# --------------------------------------------------------------------------------------------

def parse_opts(items: list[str] | None) -> dict[str, dict]:
    """``["linformer.k=128", "longformer.window=512"]`` -> ``{"linformer": {"k": 128}, ...}``.

    Values are Python literals where they parse (``128``, ``0.1``, ``True``, ``None``), strings
    otherwise.
    """
    out: dict[str, dict] = {}
    for item in items or []:
        m = re.fullmatch(r"([^.=\s]+)\.([A-Za-z_]\w*)=(.*)", item.strip())
        if not m:
            raise ValueError(f"bad --opt {item!r}: expected BACKEND.KEY=VALUE, "
                             f"e.g. --opt linformer.k=128")
        backend, key, raw = m.groups()
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.setdefault(backend, {})[key] = value
    return out


def method_kwargs(name: str, opts: dict, N: int) -> dict:
    """Effective constructor options of our backend ``name`` at length N (defaults + --opt)."""
    from attention_arena.attention import get_attention_class

    kwargs = dict(METHOD_DEFAULTS.get(name, {}))
    try:
        sig = inspect.signature(get_attention_class(name).__init__)
        for p in sig.parameters.values():
            if p.name in ("self", "embed_dim", "num_heads", "dropout", "bias"):
                continue
            if p.default is not inspect.Parameter.empty and p.default is not None \
                    and p.kind is not p.VAR_KEYWORD:
                kwargs[p.name] = p.default
    except (ValueError, TypeError):
        pass
    if name == "linformer":
        kwargs["max_len"] = N  # E/F are (max_len, k): size them for this N unless told otherwise
    kwargs.update(opts.get(name, {}))
    return kwargs


def peer_kwargs(peer: str, opts: dict, N: int) -> dict:
    """A peer mirrors our method's settings (k / num_features / window): like with like."""
    from attention_arena.attention import available_attentions

    method = PEERS[peer][0]
    if method in available_attentions():
        mk = method_kwargs(method, opts, N)
    else:
        mk = {**METHOD_DEFAULTS[method], **opts.get(method, {})}
    keys = {"linformer": ["k"], "performer": ["num_features"], "longformer": ["window"]}[method]
    return {k: mk.get(k, METHOD_DEFAULTS[method][k]) for k in keys} | opts.get(peer, {})


# --------------------------------------------------------------------------------------------
# Peer wrappers: x (B, N, D) -> (B, N, D), the whole module
# --------------------------------------------------------------------------------------------

class _PeerLinformer(nn.Module):
    def __init__(self, D, H, N, k):
        super().__init__()
        from linformer import LinformerSelfAttention

        self.attn = LinformerSelfAttention(dim=D, seq_len=N, k=k, heads=H, dim_head=D // H)

    def forward(self, x):
        return self.attn(x)


class _PeerPerformer(nn.Module):
    def __init__(self, D, H, N, num_features):
        super().__init__()
        from performer_pytorch import SelfAttention

        self.attn = SelfAttention(dim=D, heads=H, dim_head=D // H, nb_features=num_features,
                                  causal=False)

    def forward(self, x):
        return self.attn(x)


class _PeerLocalAttention(nn.Module):
    """lucidrains ``LocalAttention`` (exact ±window/2) inside q/k/v/out Linear layers like ours."""

    def __init__(self, D, H, N, window):
        super().__init__()
        from local_attention import LocalAttention

        self.H = H
        self.q, self.k, self.v, self.out = (nn.Linear(D, D) for _ in range(4))
        self.attn = LocalAttention(window_size=window // 2, look_backward=1, look_forward=1,
                                   exact_windowsize=True, autopad=True, causal=False)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = (lin(x).view(B, N, self.H, D // self.H).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))
        o = self.attn(q, k, v)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


class _PeerLongformerHF(nn.Module):
    """HF ``LongformerSelfAttention`` (q/k/v inside) + an out Linear, N padded to the window."""

    def __init__(self, D, H, N, window):
        super().__init__()
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

        cfg = LongformerConfig(hidden_size=D, num_attention_heads=H, attention_window=[window],
                               attention_probs_dropout_prob=0.0, num_hidden_layers=1)
        self.window = window
        self.attn = LongformerSelfAttention(cfg, layer_id=0)
        self.out = nn.Linear(D, D)

    def forward(self, x):
        B, N, D = x.shape
        pad = (-N) % self.window
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        mask = torch.zeros(B, N + pad, device=x.device, dtype=x.dtype)
        mask[:, N:] = -10000.0  # HF convention: <0 no attention, 0 local, >0 global
        out = self.attn(x, attention_mask=mask, is_index_masked=mask < 0,
                        is_index_global_attn=mask > 0, is_global_attn=False)[0]
        return self.out(out[:, :N])


_PEER_CLASSES = {
    "peer:linformer": _PeerLinformer,
    "peer:performer": _PeerPerformer,
    "peer:local-attention": _PeerLocalAttention,
    "peer:longformer-hf": _PeerLongformerHF,
}


def peer_available(peer: str) -> bool:
    return importlib.util.find_spec(PEERS[peer][1]) is not None


def build_module(name: str, D: int, H: int, N: int, kwargs: dict) -> nn.Module:
    if name in PEERS:
        return _PEER_CLASSES[name](D, H, N, **kwargs)
    from attention_arena.attention import build_attention

    return build_attention(name, embed_dim=D, num_heads=H, dropout=0.0, **kwargs)


# --------------------------------------------------------------------------------------------
# One measurement (runs in a fresh subprocess by default)
# --------------------------------------------------------------------------------------------

class _RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.0005):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, 0, threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, proc_status_kb("VmRSS"))
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, proc_status_kb("VmRSS"))


def _cpu_peak_mb(step) -> tuple[float, str]:
    gc.collect()
    if reset_peak_rss():
        base = proc_status_kb("VmRSS")
        step()
        return (proc_status_kb("VmHWM") - base) / 1024, "rss-hwm"
    base = proc_status_kb("VmRSS")
    sampler = _RssSampler()
    sampler.start()
    step()
    return (sampler.stop() - base) / 1024, "rss-sampled"


def measure(cfg: dict) -> dict:
    """Time and measure one (backend, N). ``cfg`` holds name, N, batch, heads, head_dim, kwargs,
    device, dtype, threads, warmup, repeats, seed. Never raises: errors come back as status
    ``failed``."""
    try:
        return _measure(cfg)
    except Exception as err:  # noqa: BLE001 - a failing backend is a result, not a crash
        msg = f"{type(err).__name__}: {err}".strip()
        if cfg.get("device") == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"status": "failed", "error": msg[:500]}


def _measure(cfg: dict) -> dict:
    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    B, H, d, N = cfg["batch"], cfg["heads"], cfg["head_dim"], cfg["N"]
    D = H * d
    torch.manual_seed(cfg["seed"])
    module = build_module(cfg["name"], D, H, N, cfg["kwargs"]).to(device).train()
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    x = torch.randn(B, N, D, generator=gen).to(device).requires_grad_(True)
    params = [p for p in module.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    dtype = DTYPES[cfg["dtype"]]
    cuda = device.type == "cuda"

    def autocast():
        if dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def clear_grads():
        x.grad = None
        for p in params:
            p.grad = None

    glob = None
    if cfg.get("global_tokens"):  # the first G positions are global (ours only; peers: none)
        glob = torch.zeros(B, N, dtype=torch.bool, device=device)
        glob[:, : cfg["global_tokens"]] = True

    def step():
        with autocast():
            y = module(x) if glob is None else module(x, global_mask=glob)
        y.float().sum().backward()

    # 1. memory: the very first step of this process, with nothing else allocated
    clear_grads()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak_mb, mem_method = (torch.cuda.max_memory_allocated() - base) / 2**20, "cuda-max-alloc"
    else:
        peak_mb, mem_method = _cpu_peak_mb(step)
    if not cfg.get("isolated", False) and not cuda:
        mem_method += "-shared-process"

    # 2. warmup, 3. timed repeats (grads cleared outside the timed region)
    for _ in range(cfg["warmup"]):
        clear_grads()
        step()
    times = []
    for _ in range(cfg["repeats"]):
        clear_grads()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "status": "ok", "error": None, "ms_median": statistics.median(times),
        "ms_min": min(times), "ms_max": max(times), "ms_all": times,
        "peak_mb": peak_mb, "mem_method": mem_method, "params": n_params,
    }


def _worker_main() -> None:
    """Subprocess entry: a JSON cfg on stdin, one JSON result line on stdout."""
    cfg = json.loads(sys.stdin.read())
    cfg["isolated"] = True
    result = measure(cfg)
    sys.stdout.write("\n@@RESULT@@" + json.dumps(result) + "\n")
    sys.stdout.flush()


def measure_isolated(cfg: dict, timeout: float) -> dict:
    """Run :func:`measure` in a fresh Python process (clean memory accounting)."""
    code = "from attention_arena.bench import _worker_main; _worker_main()"
    try:
        proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(cfg),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    if proc.returncode < 0:
        sig = -proc.returncode
        hint = " (likely out of memory: killed by the OOM killer)" if sig == 9 else ""
        return {"status": "failed", "error": f"worker killed by signal {sig}{hint}"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "failed", "error": f"worker exited {proc.returncode}: {tail}"[:500]}


# --------------------------------------------------------------------------------------------
# GEMM peak
# --------------------------------------------------------------------------------------------

def gemm_peak(size: int, device: str, dtype: str, threads: int, repeats: int = 5) -> dict:
    """Dense ``size × size`` matmul GFLOP/s (median of ``repeats``), same dtype and threads."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dev, DTYPES[dtype])
    b = torch.randn(size, size, generator=gen).to(dev, DTYPES[dtype])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"size": size, "dtype": dtype, "ms": t * 1e3, "gflops": 2 * size**3 / t / 1e9}


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------

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
    opts: dict | None = None,
    peers: bool = False,
    isolate: bool = True,
    timeout: float = 900.0,
    gemm_size: int = 2048,
    log=print,
) -> dict:
    """Benchmark every backend (and peer) at every length; returns ``{"meta", "results"}``."""
    from attention_arena.attention import available_attentions

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but torch.cuda.is_available() is False")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    threads = threads or torch.get_num_threads()
    opts = opts or {}
    lengths = lengths or DEFAULT_LENGTHS
    names = list(backends or available_attentions())
    unknown = [n for n in names if n not in available_attentions()]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; available: {available_attentions()}")
    peer_names = list(PEERS) if peers else []

    load_before = os.getloadavg()
    gemm = gemm_peak(gemm_size, device, dtype, threads)
    log(f"GEMM peak: {gemm['size']}x{gemm['size']} {dtype} matmul {gemm['ms']:.1f} ms = "
        f"{gemm['gflops']:.1f} GFLOP/s ({threads} threads)")

    results = []
    for name in names + peer_names:
        kind = "peer" if name in PEERS else "ours"
        if kind == "peer" and not peer_available(name):
            pip = PEERS[name][2]
            log(f"skip {name}: package not installed (pip install {pip!r})")
            results.append({"backend": name, "kind": kind, "N": None, "status": "skipped",
                            "error": f"not installed: pip install {pip}"})
            continue
        for N in lengths:
            kwargs = peer_kwargs(name, opts, N) if kind == "peer" else method_kwargs(name, opts, N)
            cfg = {"name": name, "N": N, "batch": batch, "heads": heads, "head_dim": head_dim,
                   "kwargs": kwargs, "device": device, "dtype": dtype, "threads": threads,
                   "warmup": warmup, "repeats": repeats, "seed": seed,
                   "global_tokens": global_tokens if kind == "ours" else 0}
            res = measure_isolated(cfg, timeout) if isolate else measure(cfg)
            gf = flops(name, N, batch, heads, head_dim, **kwargs)
            row = {"backend": name, "kind": kind, "N": N, "options": kwargs,
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
        "global_tokens": global_tokens,
        "gemm": gemm, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "timing": "median ms of whole-module fwd + bwd of y.sum() w.r.t. x and params",
        "memory": ("peak extra MB of one fwd+bwd over the state before it: CUDA "
                   "max_memory_allocated; CPU peak RSS (VmHWM reset via /proc/self/clear_refs) "
                   "in a fresh subprocess per measurement"
                   + ("" if isolate else " -- NOT isolated here: CPU numbers unreliable")),
        "flops": "useful FLOPs, analytic (see attention_arena.bench.flops), fwd+bwd = 3x fwd",
    }
    return {"meta": meta, "results": results}


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(report: dict) -> str:
    cols = ["backend", "N", "ms (median)", "peak MB", "speed-up vs full", "GFLOP/s",
            "% GEMM peak"]
    rows = []
    for r in report["results"]:
        if r["status"] == "skipped":
            continue
        if r["status"] != "ok":
            rows.append([r["backend"], str(r["N"]), f"FAILED: {r['error'][:80]}"])
            continue
        noisy = r.get("ms_min") and r["ms_max"] / r["ms_min"] > NOISY_SPREAD
        ms = _fmt(r["ms_median"], ".1f") + (" ~" if noisy else "")
        rows.append([r["backend"], str(r["N"]), ms,
                     _fmt(r["peak_mb"], ".1f"), _fmt(r.get("speedup_vs_full"), ".2f"),
                     _fmt(r.get("gflops"), ".1f"), _fmt(r.get("pct_gemm_peak"), ".1f")])
    full_rows = [row for row in rows if len(row) == len(cols)]
    widths = [max([len(c)] + [len(row[i]) for row in full_rows]) for i, c in enumerate(cols)]
    widths[0] = max([widths[0]] + [len(row[0]) for row in rows])
    widths[1] = max([widths[1]] + [len(row[1]) for row in rows])

    def fmt(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [c.rjust(widths[i + 1]) if len(cells) == len(cols) or i == 0 else c
                  for i, c in enumerate(cells[1:])]
        return "  ".join(parts)

    line = fmt(cols)
    out = [line, "-" * len(line)] + [fmt(row) for row in rows]
    if any(row[2].endswith(" ~") for row in rows if len(row) == len(cols)):
        out.append(f"~ = the repeats spread by more than {NOISY_SPREAD - 1:.0%} (max/min): "
                   "was the machine busy? re-run on a quiet one")
    return "\n".join(out)


def peer_ratios(report: dict) -> list[dict]:
    """ours / peer time and memory ratios per method and N (< 1: ours is faster / smaller)."""
    ok = {(r["backend"], r["N"]): r for r in report["results"] if r["status"] == "ok"}
    out = []
    for (name, N), peer in ok.items():
        if name not in PEERS:
            continue
        ours = ok.get((PEERS[name][0], N))
        if ours is None:
            continue
        out.append({"method": PEERS[name][0], "peer": name, "N": N,
                    "time_ratio": ours["ms_median"] / peer["ms_median"],
                    "mem_ratio": (ours["peak_mb"] / peer["peak_mb"]
                                  if peer["peak_mb"] and peer["peak_mb"] > 0 else None)})
    return out


def format_peer_ratios(ratios: list[dict]) -> str:
    if not ratios:
        return ""
    lines = ["ours / peer (time ratio < 1 = ours faster; memory ratio < 1 = ours smaller):",
             f"{'method':<11} {'peer':<22} {'N':>6} {'time ours/peer':>15} {'mem ours/peer':>14}"]
    for r in sorted(ratios, key=lambda r: (r["method"], r["peer"], r["N"])):
        lines.append(f"{r['method']:<11} {r['peer']:<22} {r['N']:>6} "
                     f"{r['time_ratio']:>15.2f} {_fmt(r['mem_ratio'], '.2f'):>14}")
    return "\n".join(lines)


def write_outputs(report: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "bench.csv", "json": out / "bench.json", "png": out / "bench.png"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in report["results"]:
            row = {k: r.get(k) for k in CSV_COLUMNS}
            row["options"] = json.dumps(r.get("options", {}), sort_keys=True)
            w.writerow(row)
    report = {**report, "peer_ratios": peer_ratios(report)}
    paths["json"].write_text(json.dumps(report, indent=2, default=str))
    plot_bench(report, paths["png"])
    return paths


def plot_bench(report: dict, path: str | Path) -> Path:
    from attention_arena.plotting import (
        line_style,
        plain_log_y,
        save_figure,
        setup_length_axis,
        subplots,
    )

    meta = report["meta"]
    ok = [r for r in report["results"] if r["status"] == "ok"]
    fig, (ax_t, ax_m) = subplots(2)
    names = list(dict.fromkeys(r["backend"] for r in ok))
    for name in names:
        rs = sorted((r for r in ok if r["backend"] == name), key=lambda r: r["N"])
        ns = [r["N"] for r in rs]
        ax_t.plot(ns, [r["ms_median"] for r in rs], label=name, **line_style(name))
        mem = [(r["N"], r["peak_mb"]) for r in rs if r["peak_mb"] and r["peak_mb"] > 0]
        if mem:
            ax_m.plot([m[0] for m in mem], [m[1] for m in mem], label=name, **line_style(name))
    failed = sorted({r["backend"] for r in report["results"] if r["status"] == "failed"})
    lengths = meta.get("lengths") or [r["N"] for r in ok]
    for ax, ylabel, title in ((ax_t, "fwd+bwd time (ms, median)", "time vs N"),
                              (ax_m, "peak extra memory (MB)", "memory vs N")):
        setup_length_axis(ax, lengths)
        plain_log_y(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    note = (f"{meta['device']} {meta['dtype']}, {meta['threads']} threads, B={meta['batch']}, "
            f"{meta['heads']}x{meta['head_dim']} heads; GEMM peak "
            f"{meta['gemm']['gflops']:.0f} GFLOP/s")
    if failed:
        note += f"; failed (some N): {', '.join(failed)}"
    fig.suptitle(f"attention fwd+bwd — {note}", fontsize=9)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arena-bench",
        description="Forward+backward time and peak memory of each attention backend vs N.",
        epilog=("Backend options: --opt BACKEND.KEY=VALUE (repeatable), e.g. --opt linformer.k=128 "
                "--opt longformer.window=512 --opt performer.num_features=128. linformer gets "
                "max_len=N unless set. Peers mirror our method's k / num_features / window; "
                "override with e.g. --opt peer:linformer.k=64. Memory: peak extra RSS of one "
                "fwd+bwd in a fresh subprocess (CPU) or max_memory_allocated (CUDA). "
                "FLOPs are analytic 'useful FLOPs' (see attention_arena.bench.flops)."),
    )
    p.add_argument("--backends", nargs="+", default=None,
                   help="backends to time (default: every registered one)")
    p.add_argument("--lengths", nargs="+", type=int, default=DEFAULT_LENGTHS)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="bf16/fp16 use torch.autocast (also on CPU)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's current setting)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--global-tokens", type=int, default=0,
                   help="mark the first G positions global (our backends; e.g. 1 = a CLS token)")
    p.add_argument("--opt", action="append", default=[], metavar="BACKEND.KEY=VALUE")
    p.add_argument("--peers", action="store_true",
                   help="also time public implementations (pip install 'attention-arena[peers]')")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                   help="one fresh subprocess per (backend, N) (default; needed for CPU memory)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds per isolated measurement before it is recorded as failed")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--out", default="bench_out", help="output directory (CSV, JSON, PNG)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        opts = parse_opts(args.opt)
        report = run_bench(
            args.backends, args.lengths, batch=args.batch, heads=args.heads,
            head_dim=args.head_dim, device=args.device, dtype=args.dtype, threads=args.threads,
            warmup=args.warmup, repeats=args.repeats, seed=args.seed, opts=opts,
            global_tokens=args.global_tokens,
            peers=args.peers, isolate=args.isolate, timeout=args.timeout,
            gemm_size=args.gemm_size,
        )
    except (ValueError, RuntimeError) as err:
        print(f"arena-bench: error: {err}", file=sys.stderr)
        return 2
    print()
    print(format_table(report))
    ratios = format_peer_ratios(peer_ratios(report))
    if ratios:
        print()
        print(ratios)
    paths = write_outputs(report, args.out)
    print()
    print(f"memory: {report['meta']['memory']}")
    print(f"flops:  {report['meta']['flops']}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    n_failed = sum(r["status"] == "failed" for r in report["results"])
    if n_failed:
        print(f"{n_failed} measurement(s) failed (recorded in the CSV/JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
