"""Every backend on a CUDA device against a float64 CPU reference, and which SDPA kernel runs.

    python experiments/gpu_check.py --out results/gpu          # on a machine with a GPU

For each registered backend (its default options, eval mode, so hashing and random features are
fixed), B = 2 documents of N tokens, the second padded after 70%, a global first token:

- forward in fp32 and under bf16 autocast on the GPU, compared with the same module in float64
  on the CPU: max |error| over the real positions, relative to max |reference|;
- the fp32 gradient of the input on the GPU against the float64 one (same measure);
- padded positions zero and everything finite.

Then the profiler names the CUDA kernels behind ``full`` (PyTorch SDPA) in bf16 with and without
a padding mask: SDPA's flash kernel takes no mask, so padded batches run another fused kernel.
Writes ``gpu_check.json`` and prints a table; exits 1 if a backend misses its tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from attention_arena.attention import available_attentions, build_attention
from attention_arena.bench.options import default_options

# Allowed error relative to the reference's scale: in fp32 (TF32 off) the largest error; under
# bf16 autocast (8 mantissa bits) the mean error, since rounded projections move some tokens of
# reformer to another LSH bucket (a large but legitimate change of their outputs: measured on CPU,
# 3-8% mean error at N = 256-1024, against 0.3% for the other backends).
TOL = {"fp32": 1e-3, "bf16": 2e-2}
TOL_BF16 = {"reformer": 0.15}


def inputs(batch: int, n: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, dim, generator=gen, dtype=torch.float64)
    pad = torch.zeros(batch, n, dtype=torch.bool)
    pad[1, int(0.7 * n):] = True
    glob = torch.zeros(batch, n, dtype=torch.bool)
    glob[:, 0] = True
    return x, pad, glob


def rel_err(out: torch.Tensor, ref: torch.Tensor, real: torch.Tensor, reduce=torch.amax
            ) -> float:
    """reduce(|out - ref|) / reduce(|ref|) over the real positions."""
    diff = reduce((out.double().cpu() - ref)[real].abs())
    return float(diff / reduce(ref[real].abs()).clamp_min(1e-30))


def check_backend(name: str, n: int, dim: int, heads: int, device: str = "cuda") -> dict:
    torch.manual_seed(0)
    module = build_attention(name, embed_dim=dim, num_heads=heads,
                             **{**default_options(name, n), "dropout": 0.0}).eval()
    x, pad, glob = inputs(2, n, dim)
    real = ~pad

    ref_module = module.double()
    xr = x.clone().requires_grad_(True)
    ref = ref_module(xr, key_padding_mask=pad, global_mask=glob)
    (ref[real] ** 2).sum().backward()
    ref, ref_grad = ref.detach(), xr.grad

    gpu = module.float().to(device)
    row: dict = {"backend": name, "N": n}
    for dtype in ("fp32", "bf16"):
        xg = x.float().to(device).requires_grad_(True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = gpu(xg, key_padding_mask=pad.to(device), global_mask=glob.to(device))
        (out.float()[real.to(device)] ** 2).sum().backward()
        row[f"{dtype}_finite"] = bool(out.isfinite().all() and xg.grad.isfinite().all())
        row[f"{dtype}_pad_zero"] = bool((out[pad.to(device)] == 0).all())
        row[f"{dtype}_out_err"] = rel_err(out, ref, real)
        row[f"{dtype}_grad_err"] = rel_err(xg.grad, ref_grad, real)
        row[f"{dtype}_out_mean_err"] = rel_err(out, ref, real, torch.mean)
        row[f"{dtype}_grad_mean_err"] = rel_err(xg.grad, ref_grad, real, torch.mean)
    row["ok"] = (all(row[f"{d}_finite"] and row[f"{d}_pad_zero"] for d in TOL)
                 and row["fp32_out_err"] <= TOL["fp32"] and row["fp32_grad_err"] <= TOL["fp32"]
                 and max(row["bf16_out_mean_err"], row["bf16_grad_mean_err"])
                 <= TOL_BF16.get(name, TOL["bf16"]))
    return row


def sdpa_kernels(n: int, heads: int, head_dim: int) -> dict[str, list[str]]:
    """CUDA kernel names of one bf16 fwd+bwd of ``full`` with and without a padding mask."""
    from torch.profiler import ProfilerActivity, profile

    module = build_attention("full", embed_dim=heads * head_dim, num_heads=heads).cuda()
    found = {}
    for label, masked in (("no_mask", False), ("padding_mask", True)):
        x = torch.randn(2, n, heads * head_dim, device="cuda", requires_grad=True)
        pad = torch.zeros(2, n, dtype=torch.bool, device="cuda")
        if masked:
            pad[1, n // 2:] = True
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                module(x, key_padding_mask=pad if masked else None).float().sum().backward()
            torch.cuda.synchronize()
        names = {e.key for e in prof.key_averages()}
        found[label] = sorted(k for k in names if any(
            s in k.lower() for s in ("flash", "fmha", "attention", "efficient", "cutlass")))
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--backends", nargs="+", default=None)
    p.add_argument("--out", default="results/gpu")
    p.add_argument("--device", default="cuda", help="cpu: a dry run of this script")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for n in args.lengths:
        for name in args.backends or available_attentions():
            try:
                row = check_backend(name, n, args.heads * args.head_dim, args.heads, args.device)
            except Exception as err:  # noqa: BLE001 - report every backend
                row = {"backend": name, "N": n, "ok": False,
                       "error": f"{type(err).__name__}: {err}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    cuda = args.device == "cuda"
    kernels = sdpa_kernels(4096, args.heads, args.head_dim) if cuda else {}
    print("SDPA kernels:", json.dumps(kernels, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "tolerance": TOL}
    (out / "gpu_check.json").write_text(json.dumps(
        {"meta": meta, "backends": rows, "sdpa_kernels": kernels}, indent=1))
    print(f"\n{'backend':<11}{'N':>6}  fp32 max err out / grad   bf16 mean err out / grad   ok")
    for r in rows:
        if "error" in r:
            print(f"{r['backend']:<11}{r['N']:>6}  {r['error'][:60]}")
            continue
        print(f"{r['backend']:<11}{r['N']:>6}  {r['fp32_out_err']:.1e} / {r['fp32_grad_err']:.1e}"
              f"          {r['bf16_out_mean_err']:.1e} / {r['bf16_grad_mean_err']:.1e}"
              f"          {r['ok']}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
