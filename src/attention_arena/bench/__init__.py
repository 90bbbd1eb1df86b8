"""``arena-bench``: forward+backward time and peak memory of every attention backend.

    arena-bench                                   # all registered backends, N = 1024 … 16384
    arena-bench --backends full longformer --lengths 1024 4096 --repeats 10
    arena-bench --backends linformer attention.k=128      # arena-train's override syntax
    arena-bench attention.window=512 --opt performer.num_features=128 --threads 2
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

FLOPs are "useful FLOPs" counted analytically by each backend
(:meth:`~attention_arena.attention.SelfAttention.flops`: the projections plus the backend's
``attention_flops`` with its own options): the matmul work the method has to do, not what an
implementation happens to execute (padding, masked-out band corners and the exp/softmax
element-wise work are not counted). fwd+bwd = 3 × forward. A peer counts as its method; a backend
that does not count them shows '-'. GFLOP/s is reported against a dense GEMM measured in the same
run (``--gemm-size`` square matmul, same dtype and threads).

Backend options: defaults from ``conf/attention/<name>.yaml`` (see :mod:`.options`), changed by
``attention.KEY=VALUE`` (every backend that has KEY) and ``--opt BACKEND.KEY=VALUE``.

The pieces: :mod:`.options` (defaults, overrides), :mod:`.peers` (public implementations),
:mod:`.measure` (one measurement, isolation, memory, GEMM probe), :mod:`.sweep`
(:func:`run_bench`), :mod:`.report` (table, ratios, CSV/JSON/PNG), :mod:`.cli` (:func:`main`).
"""

from .cli import build_parser, main
from .measure import DTYPES, build_module, gemm_peak, measure_isolated  # measure(): .measure
from .options import default_options, parse_opts, parse_overrides, valid_options
from .peers import PEERS, Peer
from .report import (
    CSV_COLUMNS,
    format_peer_ratios,
    format_table,
    peer_ratios,
    plot_bench,
    write_outputs,
)
from .sweep import DEFAULT_LENGTHS, run_bench, useful_flops

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_LENGTHS",
    "DTYPES",
    "PEERS",
    "Peer",
    "build_module",
    "build_parser",
    "default_options",
    "format_peer_ratios",
    "format_table",
    "gemm_peak",
    "main",
    "measure_isolated",
    "parse_opts",
    "parse_overrides",
    "peer_ratios",
    "plot_bench",
    "run_bench",
    "useful_flops",
    "valid_options",
    "write_outputs",
]
