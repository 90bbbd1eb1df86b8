"""``arena-explain``: why did a trained run decide as it did?

    arena-explain RUN_DIR --split test --index 3            # -> explain/explain.html + PNGs
    arena-explain RUN_DIR --text "Shares rose ..." --methods attention,ig --layer 1 --head 0
    arena-explain --compare RUN_A RUN_B ... --file doc.txt  # several runs side by side
    arena-explain --faithfulness RUN_A RUN_B ... --n 100 --k 10 --out results/explain
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .attributions import METHODS

DEFAULT_METHODS = "attention,rollout,ig,shap,lime"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="arena-explain", description="Explain a trained run's predictions: attention maps, "
        "Integrated Gradients, KernelSHAP and LIME word attributions, as a self-contained HTML "
        "page; or measure the attributions' faithfulness by deleting words.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directory (with checkpoints/ and tokenizer.json); several with "
                        "--compare or --faithfulness")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--compare", action="store_true",
                      help="explain the same document with every run, side by side")
    what.add_argument("--faithfulness", action="store_true",
                      help="deletion test over --n test documents (writes faithfulness.json/md)")
    doc = p.add_argument_group("the document (one of)")
    doc.add_argument("--text", help="the text to explain")
    doc.add_argument("--file", help="a UTF-8 text file to explain")
    doc.add_argument("--split", default=None, help="a split of the run's data (test, val, train)")
    doc.add_argument("--index", type=int, default=None, help="document index in --split")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    p.add_argument("--layer", type=int, default=None,
                   help="layer of the heatmap (default: every layer)")
    p.add_argument("--head", type=int, default=None,
                   help="head of the heatmap (default: mean over heads)")
    p.add_argument("--out", default=None,
                   help="output folder (default: RUN_DIR/explain, or ./explain_compare, or "
                        "./faithfulness)")
    p.add_argument("--ig-steps", type=int, default=50, help="Integrated Gradients steps")
    p.add_argument("--samples", type=int, default=200, help="KernelSHAP / LIME samples")
    p.add_argument("--n", type=int, default=100, help="--faithfulness: documents")
    p.add_argument("--k", type=float, default=10.0, help="--faithfulness: %% of words deleted")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and random deletions")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown or 'empty list'}; valid: {','.join(METHODS)}")
    if len(args.runs) > 1 and not (args.compare or args.faithfulness):
        p.error("several run directories need --compare or --faithfulness")
    if not args.faithfulness:
        given = [args.text is not None, args.file is not None,
                 args.split is not None or args.index is not None]
        if sum(given) != 1:
            p.error("give exactly one document: --text, --file, or --split SPLIT --index I")
        if given[2] and args.index is None:
            p.error("--split needs --index I (the document's position in the split)")
        args.split = args.split or ("test" if given[2] else None)
    return args


def read_document(run, args):
    """The document the arguments name, tokenized for ``run``."""
    from .run import RunError

    if args.text is not None:
        return run.document(args.text)
    if args.file is not None:
        path = Path(args.file)
        if not path.is_file():
            raise RunError(f"--file {path} does not exist; pass a UTF-8 text file")
        return run.document(path.read_text(encoding="utf-8"), source=str(path))
    return run.test_document(args.index, args.split)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from .run import RunError, load_run

    torch.manual_seed(args.seed)
    try:
        runs = [load_run(r) for r in args.runs]
        if args.faithfulness:
            from .faithfulness import faithfulness, write_faithfulness

            results = []
            for run in runs:  # written after every run: a long job keeps what it measured
                results.append(faithfulness(run, n=args.n, k=args.k, methods=tuple(args.methods),
                                            ig_steps=args.ig_steps, n_samples=args.samples,
                                            seed=args.seed))
                table = write_faithfulness(results, args.out or "faithfulness")
            print(table.read_text())
            print(f"[explain] wrote {table} and {table.with_suffix('.json')}")
            return 0

        from .attributions import explain
        from .html import write_report

        explanations = []
        for run in runs:
            doc = read_document(run, args)
            ex = explain(run, doc, args.methods, ig_steps=args.ig_steps,
                         n_samples=args.samples, seed=args.seed)
            for note in run.notes:
                print(f"[explain] {run.name}: note: {note}")
            times = ", ".join(f"{m} {s:.1f} s" for m, s in ex.seconds.items())
            print(f"[explain] {run.name} ({run.backend}): predicted "
                  f"{run.class_names[ex.target]} ({float(ex.probabilities[ex.target]):.3f}); "
                  f"{times}")
            explanations.append((run, ex))
        default_out = Path("explain_compare") if args.compare else runs[0].directory / "explain"
        page = write_report(explanations, Path(args.out) if args.out else default_out,
                            layer=args.layer, head=args.head)
        print(f"[explain] wrote {page}")
        return 0
    except (RunError, ValueError, FileNotFoundError) as err:
        print(f"arena-explain: error: {err}", file=sys.stderr)
        return 2
