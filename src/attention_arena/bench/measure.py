"""One measurement: build a module, time its forward + backward, measure its peak memory.

By default :func:`measure_isolated` runs :func:`measure` in a fresh Python process per
(backend, N), so memory freed by an earlier measurement cannot be reused silently (see the
package docstring for what is measured and how). :func:`gemm_peak` is the reference for the
"% GEMM peak" column.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import nullcontext

import torch
from torch import nn

from attention_arena.utils import proc_status_kb, reset_peak_rss

from .peers import PEERS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_module(name: str, D: int, H: int, N: int, options: dict) -> nn.Module:
    """Our backend ``name`` (dropout 0 unless ``options`` say otherwise) or a peer's wrapper."""
    if name in PEERS:
        return PEERS[name].build(D, H, N, **options)
    from attention_arena.attention import build_attention

    return build_attention(name, embed_dim=D, num_heads=H, **{"dropout": 0.0, **options})


# --------------------------------------------------------------------------------------------
# CPU memory
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


# --------------------------------------------------------------------------------------------
# One measurement (runs in a fresh subprocess by default)
# --------------------------------------------------------------------------------------------

def measure(cfg: dict) -> dict:
    """Time and measure one (backend, N). ``cfg`` holds name, N, batch, heads, head_dim, options,
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
    module = build_module(cfg["name"], D, H, N, cfg["options"]).to(device).train()
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
    from attention_arena.attention import import_modules

    cfg = json.loads(sys.stdin.read())
    cfg["isolated"] = True
    import_modules(cfg.get("imports", []))
    result = measure(cfg)
    sys.stdout.write("\n@@RESULT@@" + json.dumps(result) + "\n")
    sys.stdout.flush()


def worker_env() -> dict[str, str]:
    """The worker's environment: ours, with ``OMP_WAIT_POLICY=PASSIVE`` unless already set.
    Spinning OpenMP threads (the default) make many-op modules several times slower on small
    VMs where the two threads share cores with the rest of the system."""
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def measure_isolated(cfg: dict, timeout: float) -> dict:
    """Run :func:`measure` in a fresh Python process (clean memory accounting)."""
    code = "from attention_arena.bench.measure import _worker_main; _worker_main()"
    try:
        proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(cfg),
                              capture_output=True, text=True, timeout=timeout, env=worker_env())
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
