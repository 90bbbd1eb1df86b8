"""``arena-compress RUN_DIR``: evaluate cheaper variants of a trained run on its test split.

    arena-compress outputs/my_run                                  # the default variants
    arena-compress outputs/my_run --variants fp32,int8,heads50,heads50+int8 --finetune-epochs 1

Writes ``compress.{md,csv,json,png}`` and ``models/<variant>.pt`` (reload one with
:func:`attention_arena.compress.load_compressed`) to ``RUN_DIR/compress/`` or ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import stats
from .measure import (
    attention_call,
    extend_positions,
    forward_call,
    peak_memory_mb,
    predict,
    state_dict_bytes,
    time_interleaved,
)
from .recipes import (
    IMPORTANCE,
    Variant,
    convert_dtype,
    head_importance,
    parse_variant,
    prune_variant,
    save_compressed,
)
from .report import write_report
from .run import Run, load_run

DEFAULT_VARIANTS = "fp32,bf16,int8,int8_torchao,prune30,prune50,prune70,heads50"


def finetune(model: torch.nn.Module, run: Run, datamodule, epochs: int,
             lr: float | None = None) -> None:
    """Train ``model`` in place for ``epochs`` on the run's training split with the run's setup:
    its optimizer settings (AdamW, warm-up and cosine over these epochs; ``lr`` default: a tenth
    of the run's), gradient clipping and seed; on the CPU, no checkpoints or logger."""
    import lightning.pytorch as pl
    from omegaconf import OmegaConf

    from ..lit_module import ArenaClassifier

    optim = OmegaConf.to_container(run.cfg.optim, resolve=True)
    optim["lr"] = lr if lr is not None else optim["lr"] / 10
    module = ArenaClassifier(run.model_args["vocab_size"], run.model_args["num_classes"],
                             model=run.hparams["model"], attention=run.hparams["attention"],
                             **optim)
    module.model = model.train()  # Lightning keeps the modes it finds (dropout on)
    pl.seed_everything(int(run.cfg.seed), workers=True)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         gradient_clip_val=run.cfg.trainer.get("gradient_clip_val"),
                         limit_val_batches=0)
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader())
    model.eval()


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it lies below it (as typed)."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def compress_run(run_dir: str | Path, variants: str | list[str] = DEFAULT_VARIANTS,
                 out: str | Path | None = None, checkpoint: str = "best",
                 threads: int | None = None, batch: int = 16, long_factor: int = 4,
                 repeats: int = 5, warmup: int = 1, finetune_epochs: int = 0,
                 finetune_lr: float | None = None, importance: str = "gradient",
                 importance_batches: int = 8, save: bool = True, memory: bool = True,
                 log=print) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Path]]:
    """Measure every variant of the run in ``run_dir``; returns (rows, meta, report paths).
    Arguments as the command-line options (``arena-compress --help``). ``fp32`` is always
    measured first: the reference of every ratio and paired test."""
    names = variants.split(",") if isinstance(variants, str) else list(variants)
    parsed = [parse_variant(n) for n in names if n.strip()]
    if finetune_epochs:  # the default fine-tune of pruned variants that name none
        parsed = [parse_variant(f"{v.name}+ft{finetune_epochs}")
                  if v.pruned and not v.finetune else v for v in parsed]
    parsed = [Variant("fp32"), *[v for v in parsed if v.name != "fp32"]]
    if len({v.name for v in parsed}) != len(parsed):
        raise ValueError(f"variants listed twice in {names}")
    if importance not in IMPORTANCE:
        raise ValueError(f"--head-importance must be one of {IMPORTANCE}, got {importance!r}")
    for key, value, low in (("batch", batch, 1), ("long_factor", long_factor, 1),
                            ("repeats", repeats, 1), ("warmup", warmup, 0),
                            ("finetune_epochs", finetune_epochs, 0),
                            ("importance_batches", importance_batches, 1)):
        if value < low:
            raise ValueError(f"{key} must be >= {low}, got {value}")
    if threads:
        torch.set_num_threads(threads)
    run = load_run(run_dir, checkpoint)
    out = Path(out) if out is not None else run.run_dir / "compress"
    dm = run.datamodule()
    test_loader = dm.test_dataloader()
    L = run.max_length
    long = L * long_factor
    meta: dict[str, Any] = {
        "run_dir": _shown(run.run_dir), "checkpoint": run.checkpoint.name,
        "attention": run.hparams["attention"]["name"],
        "model": ", ".join(f"{k}={v}" for k, v in run.hparams["model"].items()
                           if k in ("embed_dim", "num_heads", "ff_dim", "num_layers",
                                    "positions")),
        "max_length": L, "long_length": long, "batch": batch, "repeats": repeats,
        "warmup": warmup, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": _cpu_name(), "load_before": _load(), "test_docs": len(dm.splits["test"]),
        "head_importance": importance, "finetune_epochs": finetune_epochs,
    }
    if any(v.finetune for v in parsed):
        lr = finetune_lr if finetune_lr is not None else float(run.cfg.optim.lr) / 10
        meta["finetune"] = (f"`ft<N>`: fine-tuned N epochs on the training split after pruning "
                            f"(peak lr {lr:g}, the run's other training settings), before the "
                            "number format was applied.")
    reference = run.load_model()
    scores: torch.Tensor | None = None  # head importance, computed once on the fp32 model
    pruned: dict[tuple, tuple[torch.nn.Module, dict[str, Any]]] = {}  # by Variant.structure
    rows: list[dict[str, Any]] = []
    models: dict[str, torch.nn.Module] = {}

    def tune(model, epochs: int) -> None:
        finetune(model, run, dm, epochs, finetune_lr)

    for variant in parsed:  # build, score and save every variant
        start = time.perf_counter()
        if variant.heads is not None and scores is None:
            batches = []  # the first training batches (the gradient criterion needs data)
            for i, b in enumerate(dm.train_dataloader() if importance == "gradient" else []):
                if i >= importance_batches:
                    break
                batches.append(b)
            scores = head_importance(reference, importance, batches)
            meta["head_importance_scores"] = scores.tolist()
        if variant.structure not in pruned:  # prune (and fine-tune) once per structure
            model = copy.deepcopy(reference)
            pruned[variant.structure] = model, prune_variant(model, variant, scores, tune)
        model, counts = pruned[variant.structure]
        model = convert_dtype(copy.deepcopy(model), variant.dtype)
        recipe = {"variant": variant.name, "dtype": variant.dtype, **counts}
        row = score_variant(model, variant, recipe, run, test_loader, out,
                            rows[0] if rows else None, save=save)
        row["finetune_epochs"] = variant.finetune
        rows.append(row)
        models[variant.name] = model
        log(f"[compress] {variant.name}: test acc {100 * row['test_acc']:.1f}%, "
            f"{row['size_bytes'] / 2**20:.2f} MB ({time.perf_counter() - start:.0f} s)")
    log(f"[compress] timing {len(models)} variants in turns ({repeats} rounds)")
    time_variants(models, rows, L, long, batch, repeats, warmup)
    if memory:
        for row, model in zip(rows, models.values(), strict=True):
            row["peak_mb"] = peak_memory_mb(model, batch, L)
    fp32 = rows[0]
    for row in rows:
        row["size_vs_fp32"] = row["size_bytes"] / fp32["size_bytes"]
        for key, ratio in (("ms_b1", "speedup_b1"), ("ms_batch", "speedup_batch"),
                           ("attn_ms_batch", "attn_speedup")):
            row[ratio] = fp32[key] / row[key]
        log(f"[compress] {row['variant']}: {row['ms_batch']:.2f} ms/doc at B={batch} "
            f"({row['speedup_batch']:.2f}x fp32), attention {row['attn_speedup']:.2f}x")
    meta["load_after"] = _load()
    paths = write_report(rows, meta, out)
    log(f"[compress] wrote {paths['md']} (and .csv, .json, .png)")
    return rows, meta, paths


def score_variant(model, variant: Variant, recipe: dict[str, Any], run: Run, test_loader,
                  out: Path, fp32: dict[str, Any] | None, save: bool = True) -> dict[str, Any]:
    """A row of the table without timings: test accuracy and macro-F1 with their intervals,
    the paired test against ``fp32`` (its row; None for fp32 itself), size and parameters."""
    preds, labels = predict(model, test_loader)
    k = int(run.hparams["num_classes"])
    acc = stats.bootstrap_interval(labels, preds, "acc")
    f1 = stats.bootstrap_interval(labels, preds, "f1", num_classes=k)
    row: dict[str, Any] = {
        "variant": variant.name, "dtype": variant.dtype, "heads_kept": recipe["heads_kept"],
        "test_acc": acc.mean, "acc_low": acc.low, "acc_high": acc.high,
        "test_f1": f1.mean, "f1_low": f1.low, "f1_high": f1.high, "notes": [],
        "preds": preds, "params": recipe["params"], "nonzero_params": recipe["nonzero_params"],
        "sparsity": recipe["sparsity"] if variant.magnitude is not None else None,
    }
    if fp32 is not None:
        correct = [p == y for p, y in zip(preds, labels, strict=True)]
        ref = [p == y for p, y in zip(fp32["preds"], labels, strict=True)]
        test = stats.paired_bootstrap([(ref, correct)])
        row.update(diff_vs_fp32=test.diff, diff_low=test.low, diff_high=test.high,
                   mcnemar_p=test.mcnemar_p,
                   agree_with_fp32=sum(a == b for a, b in zip(preds, fp32["preds"],
                                                              strict=True)) / len(preds))
    if save:
        path = out / "models" / f"{variant.name}.pt"
        row["size_bytes"] = save_compressed(model, path, recipe, run.model_args)
    else:
        row["size_bytes"] = state_dict_bytes(model)
    return row


def time_variants(models: dict[str, torch.nn.Module], rows: list[dict[str, Any]], length: int,
                  long: int, batch: int, repeats: int, warmup: int) -> None:
    """Fill the latency columns of ``rows`` (in the order of ``models``), every cell timed
    across all variants in turns (:func:`~.measure.time_interleaved`)."""
    cells = {"ms_b1": (forward_call, 1, length), "ms_batch": (forward_call, batch, length),
             "attn_ms_batch": (attention_call, batch, length),
             "ms_b1_long": (forward_call, 1, long), "ms_batch_long": (forward_call, batch, long)}
    long_ok = {}
    for (name, model), row in zip(models.items(), rows, strict=True):
        why = extend_positions(model, long)
        if why is None:
            try:  # a backend may be built for at most `length` tokens (linformer's max_len)
                forward_call(model, 1, long)()
            except ValueError as err:
                why = str(err).split(";")[0]
        long_ok[name] = why is None
        if why is not None:
            row["notes"].append(f"not timed at {long} tokens: {why}")
    for key, (make, b, n) in cells.items():
        calls = {name: make(model, b, n) for name, model in models.items()
                 if n == length or long_ok[name]}
        rounds = repeats if not (key == "ms_batch_long") else max(1, (repeats + 1) // 2)
        seconds = time_interleaved(calls, rounds, warmup)
        for name, row in zip(models, rows, strict=True):
            row[key] = 1e3 * seconds[name] / b if name in seconds else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arena-compress",
        description="Evaluate cheaper variants (bf16, int8, magnitude and head pruning) of a "
                    "trained arena-train run on its test split: accuracy with 95% intervals, "
                    "size, CPU latency, memory. Writes compress.{md,csv,json,png} and "
                    "models/<variant>.pt.")
    p.add_argument("run_dir", help="an arena-train run directory (checkpoints/, .hydra/)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="comma-separated variants; each is '+'-joined steps: fp32, bf16, int8 "
                        "(= int8_dynamic), int8_dynamic, int8_torchao, prune<P>, heads<P>, "
                        "ft<N> (fine-tune N epochs after pruning), e.g. heads50+ft1+int8 "
                        "(default: %(default)s; fp32 is always measured)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/compress)")
    p.add_argument("--checkpoint", default="best", help="best (default), last or a .ckpt path")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice)")
    p.add_argument("--batch", type=int, default=16, help="the batched latency's batch size")
    p.add_argument("--long-factor", type=int, default=4,
                   help="also time inputs this many times the run's length (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="fine-tune every pruned variant without an ft<N> step this many epochs "
                        "on the training split (default 0; a variant's own ft<N> wins)")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="peak learning rate of the fine-tune (default: the run's optim.lr / 10)")
    p.add_argument("--head-importance", choices=IMPORTANCE, default="gradient",
                   help="head ranking for heads<P>: gradient (Michel et al. 2019, default) or "
                        "norm (out_proj column norms)")
    p.add_argument("--importance-batches", type=int, default=8,
                   help="training batches for the gradient head importance (default 8)")
    p.add_argument("--no-save", action="store_true",
                   help="do not write models/<variant>.pt (size: the state dict's tensor bytes)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        compress_run(args.run_dir, args.variants, out=args.out, checkpoint=args.checkpoint,
                     threads=args.threads, batch=args.batch, long_factor=args.long_factor,
                     repeats=args.repeats, warmup=args.warmup,
                     finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                     importance=args.head_importance,
                     importance_batches=args.importance_batches, save=not args.no_save,
                     memory=not args.no_memory)
    except (ValueError, FileNotFoundError, IndexError) as err:
        print(f"arena-compress: error: {err}", file=sys.stderr)
        return 2
    return 0
