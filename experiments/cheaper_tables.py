"""Tables of README "Making models cheaper" (self-pretraining, distillation) from the run
directories that experiments/cheaper_bytes.sh writes: ``results/pretrain/table.{md,json}`` and
``results/distill/table.{md,json}``.

Each row is a group of runs (one per seed): test accuracy and macro-F1 as mean ± half-width of
the 95% t-interval over seeds (``attention_arena.stats.t_interval``), and the difference to a
reference row in points with a paired bootstrap over the test documents, pooled over seeds
(``attention_arena.stats.paired_bootstrap``, as in ``arena-compare``).

    python experiments/cheaper_tables.py [--results results]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from attention_arena import stats


def load_group(results: Path, pattern: str | tuple[str, ...]) -> list[dict]:
    """The finished runs matching ``results/<pattern>`` (or any of several patterns), by seed,
    with their test predictions."""
    runs = []
    patterns = (pattern,) if isinstance(pattern, str) else pattern
    for run_dir in sorted(d for p in patterns for d in results.glob(p)):
        m = json.loads((run_dir / "metrics.json").read_text())
        if m.get("status") != "ok":
            raise SystemExit(f"{run_dir}: status {m.get('status')} ({m.get('error')})")
        with open(run_dir / "predictions.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
        m["correct"] = {r["id"]: r["label"] == r["pred"] for r in rows}
        runs.append(m)
    if not runs:
        raise SystemExit(f"no runs match {' or '.join(str(results / p) for p in patterns)}")
    return sorted(runs, key=lambda m: m["seed"])


def fmt(iv: stats.Interval) -> str:
    if iv.low is None:
        return f"{100 * iv.mean:.2f}"
    return f"{100 * iv.mean:.2f} ± {100 * (iv.high - iv.mean):.2f}"


def paired(ref: list[dict], other: list[dict]) -> stats.PairedTest:
    by_seed = {m["seed"]: m for m in ref}
    groups = []
    for m in other:
        r = by_seed[m["seed"]]
        ids = sorted(r["correct"])
        if sorted(m["correct"]) != ids:
            raise SystemExit(f"seed {m['seed']}: the runs were tested on different documents")
        groups.append(([r["correct"][i] for i in ids], [m["correct"][i] for i in ids]))
    return stats.paired_bootstrap(groups)


def p_text(test: stats.PairedTest) -> str:
    return f"{test.p_value:.3g}" if test.p_value >= 0.001 else "<0.001"


def interval_text(test: stats.PairedTest) -> str:
    return f"{100 * test.diff:+.2f} [{100 * test.low:+.2f}, {100 * test.high:+.2f}]"


def table(
    results: Path, rows: list[tuple[str, str | tuple[str, ...], str | None]], title: str, note: str
) -> dict:
    """``rows``: (label, glob(s) under results, label of the reference row or None)."""
    groups = {label: load_group(results, pattern) for label, pattern, _ in rows}
    out, lines = [], [
        f"# {title}", "",
        "| model | seeds | test acc % | test F1 % | Δ acc, points [95% CI] | p | steps | wall s |",
        "|:---|---:|---:|---:|:---|---:|---:|---:|"]
    for label, _, ref in rows:
        runs = groups[label]
        acc = stats.t_interval([m["test_acc"] for m in runs])
        f1 = stats.t_interval([m["test_f1"] for m in runs])
        row = {"model": label, "seeds": [m["seed"] for m in runs], "test_acc": acc.mean,
               "test_acc_ci": [acc.low, acc.high], "test_f1": f1.mean,
               "test_f1_ci": [f1.low, f1.high], "steps": int(np.mean([m["steps"] for m in runs])),
               "wall_time_s": float(np.mean([m["wall_time_s"] for m in runs])),
               "runs": [m["run_dir"] for m in runs]}
        delta, p = "reference" if ref is None else "", ""
        if ref is not None:
            test = paired(groups[ref], runs)
            row.update(reference=ref, diff=test.diff, diff_ci=[test.low, test.high],
                       p_value=test.p_value)
            bold = "**" if test.p_value < 0.05 else ""
            delta, p = f"{bold}{interval_text(test)}{bold} vs {ref}", p_text(test)
        lines.append(f"| {label} | {len(runs)} | {fmt(acc)} | {fmt(f1)} | {delta} | {p} | "
                     f"{row['steps']} | {row['wall_time_s']:.0f} |")
        out.append(row)
    lines += ["", note, ""]
    return {"title": title, "rows": out, "markdown": "\n".join(lines), "groups": groups}


def write(folder: Path, result: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result.pop("groups")  # the loaded runs, for the caller; the JSON lists their folders
    (folder / "table.md").write_text(result.pop("markdown"))
    (folder / "table.json").write_text(json.dumps(result, indent=2) + "\n")
    print((folder / "table.md").read_text())


NOTE = ("Byte-level BBC News, 512 bytes, tiny model (2 layers x 64), 2 epochs of supervised "
        "training (`experiment=cheaper_bytes`), 3 seeds. Test accuracy / macro-F1: mean ± "
        "half-width of the 95% t-interval over seeds. Δ acc: paired bootstrap over the test "
        "documents pooled over seeds (10,000 resamples); **bold** = p < 0.05. wall s: per run, "
        "on a 2-core CPU shared with other jobs at very different loads (load average 1 to 19): "
        "not comparable between rows.")


T_PRE = "teacher: full, self-pretrained 1 epoch"
T_PRE10 = "teacher: full, self-pretrained 10 epochs"
T_SCRATCH = "teacher: full, from scratch"
CONV_FULL = "full + conv5, self-pretrained 10 epochs"
T_CONV = "teacher: " + CONV_FULL
S_CONV = "linformer + conv5, from scratch"
LONG = "full, from scratch, 540 steps"
LONG5 = LONG + ", seeds 0-4"  # conv_long30_seeds: seeds 3 and 4 added
T_CONV_LONG = "teacher: full + conv5, self-pretrained 10 epochs, 540 steps"
S_CONV_LONG = "linformer + conv5, from scratch, 540 steps"
L_CONV = "longformer + conv5, from scratch"
L_CONV_LONG = "longformer + conv5, from scratch, 540 steps"
S_PLAIN = "linformer, from scratch"
BACKENDS = ("performer", "linear", "nystrom", "bigbird")  # distill_backends students
T_PRE10_10 = T_PRE10 + ", seeds 0-9"  # distill_linear_seeds: seeds 3 to 9 added
LIN10 = "linear, from scratch, seeds 0-9"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    r = args.results
    pre = table(r, [
        ("full, from scratch", "bytes_full_512/*_full_L512_s*", None),
        ("full, self-pretrained 1 epoch", "pretrain/init_full_L512_s*", "full, from scratch"),
        ("full, self-pretrained 10 epochs", "pretrain/init10_full_L512_s*", "full, from scratch"),
        ("linformer, from scratch", "pretrain/scratch_linformer_L512_s*", None),
        ("linformer, self-pretrained 1 epoch (full)", "pretrain/init_linformer_L512_s*",
         "linformer, from scratch"),
        ("linformer, self-pretrained 10 epochs (full)", "pretrain/init10_linformer_L512_s*",
         "linformer, from scratch"),
        ("full + conv5, from scratch", "pretrain/scratch_conv5_full_L512_s*",
         "full, from scratch"),
        (CONV_FULL, "pretrain/init_conv5_full_L512_s*", "full, from scratch"),
        (S_CONV, "pretrain/scratch_conv5_linformer_L512_s*", "linformer, from scratch"),
        ("linformer + conv5, self-pretrained 10 epochs (full)",
         "pretrain/init_conv5_linformer_L512_s*", "linformer, from scratch"),
        (LONG, "pretrain/long_scratch_full_L512_s*", None),
        ("full + conv5, from scratch, 540 steps", "pretrain/long_scratch_conv5_full_L512_s*",
         LONG),
        ("full + conv5, self-pretrained 10 epochs, 540 steps",
         "pretrain/long_init_conv5_full_L512_s*", LONG),
        ("full + conv5, self-pretrained 30 epochs, 540 steps",
         "pretrain/long_init30_conv5_full_L512_s*", LONG),
        ("full + conv5, self-pretrained 30 epochs, 540 steps (against 10 epochs)",
         "pretrain/long_init30_conv5_full_L512_s*",
         "full + conv5, self-pretrained 10 epochs, 540 steps"),
        ("full + conv5, self-pretrained 30 epochs", "pretrain/init30_conv5_full_L512_s*",
         "full, from scratch"),
        (L_CONV_LONG, "pretrain/long_scratch_conv5_longformer_L512_s*", None),
        ("longformer + conv5, self-pretrained 30 epochs (full), 540 steps",
         "pretrain/long_init30_conv5_longformer_L512_s*", L_CONV_LONG),
        (S_CONV_LONG, "pretrain/long_scratch_conv5_linformer_L512_s*", None),
        ("linformer + conv5, self-pretrained 30 epochs (full), 540 steps",
         "pretrain/long_init30_conv5_linformer_L512_s*", S_CONV_LONG),
        (LONG5, ("pretrain/long_scratch_full_L512_s*", "pretrain/extra_long_scratch_full_L512_s*"),
         None),
        ("full + conv5, from scratch, 540 steps, seeds 0-4",
         ("pretrain/long_scratch_conv5_full_L512_s*",
          "pretrain/extra_long_scratch_conv5_full_L512_s*"), LONG5),
        ("full + conv5, self-pretrained 30 epochs, 540 steps, seeds 0-4",
         ("pretrain/long_init30_conv5_full_L512_s*",
          "pretrain/extra_long_init30_conv5_full_L512_s*"), LONG5),
        ("full, from scratch, 540 steps, lr 1e-3", "pretrain/long_scratch_lr1e-3_full_L512_s*",
         LONG),
        ("full + conv5, self-pretrained 10 epochs, 540 steps, lr 1e-3",
         "pretrain/long_init_conv5_lr1e-3_full_L512_s*", LONG),
    ], "Self-pretraining: fine-tuning a masked-byte pretrained encoder vs training from scratch",
        NOTE + " Pretraining: `arena-pretrain experiment=pretrain_bytes attention=full seed=0` "
        "for 1 epoch (259 steps) or with `trainer.max_epochs=10` (2,590 steps); one run each, "
        "shared by every fine-tuning seed. `+ conv5`: `model.embedding_conv=5` (a depthwise "
        "convolution over the embeddings) in pretraining and fine-tuning; its pretraining: "
        "`model.embedding_conv=5 trainer.max_epochs=10` (2,590 steps), `30 epochs`: "
        "`trainer.max_epochs=30` (7,770 steps). `540 steps`: 10 epochs of supervised training "
        "instead of 2 (`trainer.max_epochs=10`). `lr 1e-3`: `optim.lr=1e-3` instead of the "
        "preset's 2e-3. `seeds 0-4`: the 3-seed rows with seeds 3 and 4 added.")
    write(r / "pretrain", pre)
    # distilled row -> (runs, its teacher's row, the same student from scratch[, the row its Δ is
    # measured against when that is not the student from scratch])
    students = {
        "linformer, distilled (alpha 0.5)": (
            "distill/student_linformer_L512_s*", T_PRE, S_PLAIN),
        "linformer, distilled (alpha 0.9)": (
            "distill/student_a09_linformer_L512_s*", T_PRE, S_PLAIN),
        "linformer, distilled (alpha 1.0)": (
            "distill/student_a10_linformer_L512_s*", T_PRE, S_PLAIN),
        "linformer, distilled from full from scratch (alpha 0.9)": (
            "distill/student_scratchteacher_a09_linformer_L512_s*", T_SCRATCH, S_PLAIN),
        "linformer, distilled from full self-pretrained 10 epochs (alpha 0.9)": (
            "distill/student10_a09_linformer_L512_s*", T_PRE10, S_PLAIN),
        "linformer + conv5, distilled from full + conv5 self-pretrained (alpha 0.9)": (
            "distill/student_conv5_a09_linformer_L512_s*", T_CONV, S_CONV),
        "linformer + conv5, 540 steps, distilled from full + conv5 self-pretrained (alpha 0.9)": (
            "distill/long_student_conv5_a09_linformer_L512_s*", T_CONV_LONG, S_CONV_LONG),
        "longformer + conv5, distilled from full + conv5 self-pretrained (alpha 0.9)": (
            "distill/student_conv5_a09_longformer_L512_s*", T_CONV, L_CONV),
        "longformer + conv5, 540 steps, distilled from full + conv5 self-pretrained "
        "(alpha 0.9)": ("distill/long_student_conv5_a09_longformer_L512_s*", T_CONV_LONG,
                        L_CONV_LONG),
        **{f"{a}, distilled from full self-pretrained 10 epochs (alpha 0.9)": (
            f"distill/student10_a09_{a}_L512_s*", T_PRE10, f"{a}, from scratch")
           for a in BACKENDS},
        "linear, distilled from full self-pretrained 10 epochs (alpha 0.9), seeds 0-9": (
            ("distill/student10_a09_linear_L512_s*", "distill/extra_student10_a09_linear_L512_s*"),
            T_PRE10_10, LIN10),
        "linear, distilled from full self-pretrained 10 epochs (alpha 0.9, temperature 4), "
        "seeds 0-9": ("distill/student10_a09_t4_linear_L512_s*", T_PRE10_10, LIN10),
    }
    for a, teacher, scratch, tail in (("linformer", T_PRE10, S_PLAIN, ""),
                                      ("linear", T_PRE10_10, LIN10, ", seeds 0-9")):
        init = f"{a}, initialised from its teacher{tail}"
        students[init] = (f"pretrain/initteacher_{a}_L512_s*", teacher, scratch)
        students[f"{a}, initialised from its teacher and distilled (alpha 0.9){tail}"] = (
            f"distill/student10_a09_initteacher_{a}_L512_s*", teacher, scratch, init)
    dis = table(r, [
        (T_PRE, "pretrain/init_full_L512_s*", None),
        (T_PRE10, "pretrain/init10_full_L512_s*", None),
        (T_SCRATCH, "bytes_full_512/*_full_L512_s*", None),
        (T_CONV, "pretrain/init_conv5_full_L512_s*", None),
        (S_PLAIN, "pretrain/scratch_linformer_L512_s*", None),
        *((f"{a}, from scratch", f"pretrain/scratch_{a}_L512_s*", None) for a in BACKENDS),
        (S_CONV, "pretrain/scratch_conv5_linformer_L512_s*", None),
        (T_CONV_LONG, "pretrain/long_init_conv5_full_L512_s*", None),
        (S_CONV_LONG, "pretrain/long_scratch_conv5_linformer_L512_s*", None),
        (L_CONV, "pretrain/scratch_conv5_longformer_L512_s*", None),
        (L_CONV_LONG, "pretrain/long_scratch_conv5_longformer_L512_s*", None),
        (T_PRE10_10, ("pretrain/init10_full_L512_s*", "pretrain/extra_init10_full_L512_s*"), None),
        (LIN10, ("pretrain/scratch_linear_L512_s*", "pretrain/extra_scratch_linear_L512_s*"), None),
        *((label, pattern, spec[-1]) for label, (pattern, _, *spec) in students.items()),
    ], "Distillation: efficient-attention students taught by a full-attention teacher",
        NOTE + " Teacher of seed s: the full run of seed s named in the row; temperature 2 "
        "unless the row says otherwise. "
        "`+ conv5` and `540 steps`: as in the self-pretraining table. `seeds 0-9`: the 3-seed "
        "rows with seeds 3 to 9 added (their teachers fine-tuned from the same pretraining).")
    rows = {row["model"]: row for row in dis["rows"]}
    dis["gap_recovered"] = {}
    for label, (_, teacher, reference, *other) in students.items():
        scratch = rows[reference]["test_acc"]
        gap = rows[teacher]["test_acc"] - scratch
        if gap < 0.01:  # under a point: nothing to recover, no share to report
            dis["gap_recovered"][label] = None
            dis["markdown"] += (f"{label}: no gap to recover, the student from scratch is within "
                                f"a point of its teacher ({teacher}): {100 * gap:+.2f} points.\n")
            continue
        share = (rows[label]["test_acc"] - scratch) / gap
        dis["gap_recovered"][label] = share
        vs_scratch = ""
        if other:  # its Δ column is against another row: the paired test against scratch here
            test = paired(dis["groups"][reference], dis["groups"][label])
            vs_scratch = f"; against {reference}: {interval_text(test)} points, p {p_text(test)}"
        dis["markdown"] += (f"{label}: share of the student's gap to its teacher ({teacher}) "
                            f"recovered, (distilled − scratch) / (teacher − scratch) = "
                            f"{100 * share:.0f}% (of the mean accuracies){vs_scratch}.\n")
    write(r / "distill", dis)


if __name__ == "__main__":
    main()
