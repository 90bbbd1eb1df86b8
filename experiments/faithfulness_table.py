"""Merge the ``faithfulness.json`` files of several ``arena-explain --faithfulness`` calls into one
``faithfulness.json`` + ``faithfulness.md`` (runs measured in separate processes).

    python experiments/faithfulness_table.py A/faithfulness.json B/faithfulness.json --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attention_arena.explain.faithfulness import write_faithfulness


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    results = [r for path in args.files for r in json.loads(open(path).read())]
    results.sort(key=lambda r: Path(r["run"]).name)  # the sweep order: 0_full, 1_linformer, ...
    print(write_faithfulness(results, args.out).read_text())


if __name__ == "__main__":
    main()
