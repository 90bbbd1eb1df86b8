"""How long does explaining one full-length document take?

For each run, the first test document that fills the model's input (512 tokens for the L512
runs) is explained with every method of ``arena-explain`` (IG with 50 steps, KernelSHAP and LIME
with 200 samples), two torch threads. Wall-clock and process CPU seconds per method are recorded
with the machine's load average (``os.getloadavg``), since the machine may be shared.

    python experiments/explain_timing.py RUN_DIR [RUN_DIR ...] --out results/explain
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from attention_arena.explain import load_run
from attention_arena.explain.attributions import (
    attention_scores,
    integrated_gradients,
    kernel_shap,
    lime,
)


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="results/explain")
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--samples", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = []
    for path in args.runs:
        run = load_run(path)
        texts, _ = run.datamodule.split_texts("test")
        index = next(i for i, t in enumerate(texts)
                     if run.tokenizer.num_tokens(t) > run.max_tokens)
        doc = run.test_document(index)
        with torch.no_grad():
            target = int(run.probabilities(doc.ids[None])[0].argmax())
        row = {"run": run.name, "backend": run.backend, "index": index,
               "tokens": len(doc.ids) + 1, "words": doc.num_words,
               "ig_steps": args.ig_steps, "samples": args.samples,
               "load_before": os.getloadavg()[0]}
        jobs = {
            "attention": (attention_scores, (run, doc)),
            "ig": (integrated_gradients, (run, doc, target, args.ig_steps)),
            "shap": (kernel_shap, (run, doc, target, args.samples)),
            "lime": (lime, (run, doc, target, args.samples)),
        }
        for name, (fn, fn_args) in jobs.items():
            result, wall, cpu = timed(fn, *fn_args)
            row[f"{name}_s"], row[f"{name}_cpu_s"] = round(wall, 2), round(cpu, 2)
            if name == "ig":
                row["ig_rel_completeness_error"] = abs(result[1]) / abs(result[2])
        row["load_after"] = os.getloadavg()[0]
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "timing.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
