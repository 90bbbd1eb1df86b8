"""``arena-bench`` command line: parse, run the sweep, print the table, write the outputs."""

from __future__ import annotations

import argparse
import sys

from .measure import DTYPES
from .options import parse_opts, parse_overrides
from .report import format_peer_ratios, format_table, peer_ratios, write_outputs
from .sweep import DEFAULT_LENGTHS, run_bench

EXAMPLES = """\
examples:
  arena-bench                                   # every registered backend, N = 1024 ... 16384
  arena-bench --backends full longformer --lengths 1024 4096 --repeats 10
  arena-bench --backends linformer attention.k=128
  arena-bench attention.window=512 --opt performer.num_features=128 --threads 2
  arena-bench --peers                           # also time the public implementations
  arena-bench --device cuda --dtype bf16

backend options (defaults: conf/attention/<name>.yaml, as arena-train; else the constructor's):
  attention.KEY=VALUE         arena-train's syntax, anywhere on the line: set KEY on every
                              benchmarked backend that has it (an error if none has it)
  --opt BACKEND.KEY=VALUE     one backend only (or a peer: --opt peer:linformer.k=64); wins
                              over attention.KEY=VALUE
  Values as in Hydra: 128, 1e-4, true, null, abc. Options the training config derives from
  the data (linformer's max_len) are set to N. Peers mirror their method's k / num_features /
  window.

memory: peak extra RSS of one fwd+bwd in a fresh subprocess (CPU), or max_memory_allocated
(CUDA). FLOPs: each backend's SelfAttention.flops ('-' where a backend does not count them).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arena-bench",
        description="Forward+backward time and peak memory of each attention backend vs N.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="attention.KEY=VALUE",
                   help="option for every benchmarked backend that has KEY (see below)")
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
    p.add_argument("--opt", action="append", default=[], metavar="BACKEND.KEY=VALUE",
                   help="option for one backend or peer (repeatable)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, to register the backends it defines (repeatable)")
    p.add_argument("--peers", action="store_true",
                   help="also time the public implementations of the benchmarked backends (pip "
                        "install 'attention-arena[peers]')")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                   help="one fresh subprocess per (backend, N) (default; needed for CPU memory)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds per isolated measurement before it is recorded as failed")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--out", default="bench_out", help="output directory (CSV, JSON, PNG)")
    return p


def split_overrides(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list, list]:
    """(other arguments, KEY=VALUE overrides): an override may follow a list option such as
    ``--backends linformer attention.k=128``, which argparse alone would read as a backend."""
    # options that take exactly one value: that value is never an override (--opt a.k=1)
    one_value = {s for a in parser._actions if a.option_strings and a.nargs is None
                 for s in a.option_strings}
    rest, overrides = [], []
    takes_value = False
    for arg in argv:
        if not takes_value and not arg.startswith("-") and "=" in arg:
            overrides.append(arg)
        else:
            rest.append(arg)
        takes_value = arg in one_value
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv), parser)
    args = parser.parse_args(rest)
    try:
        report = run_bench(
            args.backends, args.lengths, batch=args.batch, heads=args.heads,
            head_dim=args.head_dim, device=args.device, dtype=args.dtype, threads=args.threads,
            warmup=args.warmup, repeats=args.repeats, seed=args.seed,
            overrides=parse_overrides(args.overrides + overrides), opts=parse_opts(args.opt),
            imports=args.imports, global_tokens=args.global_tokens, peers=args.peers,
            isolate=args.isolate, timeout=args.timeout, gemm_size=args.gemm_size,
        )
    except (ValueError, RuntimeError, ImportError) as err:
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
