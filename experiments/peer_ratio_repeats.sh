#!/usr/bin/env bash
# The ours ÷ public-implementation time ratios of some backends, measured RUNS times in a row
# (each an `arena-bench --peers` run of its own), to see how much they move between runs:
#   bash experiments/peer_ratio_repeats.sh [OUT_DIR] [RUNS] [BACKENDS...]
# Defaults: results/peer_ratio_repeats, 5 runs, linear nystrom, N = 16,384, 2 threads.
set -euo pipefail
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
out=${1:-results/peer_ratio_repeats}; runs=${2:-5}; shift 2 || shift $# || true
backends=("$@"); [ ${#backends[@]} -eq 0 ] && backends=(linear nystrom)
for i in $(seq 1 "$runs"); do
  mkdir -p "$out/run$i"
  arena-bench --backends "${backends[@]}" --lengths 16384 --threads 2 --repeats 5 --warmup 2 \
    --peers --out "$out/run$i" > "$out/run$i/stdout.txt" 2>&1 || { cat "$out/run$i/stdout.txt"; exit 1; }
done
python - "$out" "$runs" <<'PY'
import json, statistics, sys
from pathlib import Path
out, runs = Path(sys.argv[1]), int(sys.argv[2])
ratios = {}
for i in range(1, runs + 1):
    for r in json.loads((out / f"run{i}" / "bench.json").read_text())["peer_ratios"]:
        ratios.setdefault((r["method"], r["peer"]), []).append(r["time_ratio"])
lines = ["| method | peer | ours ÷ peer time, per run | median |", "|---|---|---|---|"]
for (method, peer), xs in ratios.items():
    lines.append(f"| `{method}` | `{peer}` | {', '.join(f'{x:.2f}' for x in xs)} | "
                 f"{statistics.median(xs):.2f} |")
(out / "ratios.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
