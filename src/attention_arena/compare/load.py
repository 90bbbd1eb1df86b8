"""Reading a sweep back: one dict per run (``metrics.json`` or a bare ``.hydra/`` folder) and the
per-document ``predictions.csv`` of a run."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils import METRIC_KEYS

#: metrics.json keys newer than :data:`METRIC_KEYS` (all optional for readers, see CONTRACTS)
EXTRA_KEYS = ("kind", "tokenizer", "notes", "job", "data_stats")
RUN_KEYS = tuple(dict.fromkeys((*METRIC_KEYS, *EXTRA_KEYS)))
CSV_COLUMNS = ["run", *RUN_KEYS, "predictions", "source"]
#: run statuses of the report: ok / failed as recorded, not_run = never started or never finished
STATUSES = ("ok", "failed", "not_run")
#: Hydra job name of ``python -m attention_arena.baseline`` -> the name its runs record
#: (``attention_arena.baseline.NAME``; kept here so that reading a sweep does not import torch)
BASELINE_JOBS = {"baseline": "tfidf-logreg"}
NOT_FINISHED = "did not finish (no metrics.json)"
STILL_RUNNING = "did not finish (metrics.json still says running)"


def _read_yaml(path: Path):
    try:
        import yaml

        with open(path) as f:
            return yaml.safe_load(f)
    except Exception:  # noqa: BLE001 - a broken file just yields no information
        return None


def _find_key(node, key: str):
    """Breadth-first search for ``key`` in nested dicts/lists; the first value found."""
    queue = [node]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            if key in cur and not isinstance(cur[key], dict | list):
                return cur[key]
            queue.extend(cur.values())
        elif isinstance(cur, list):
            queue.extend(cur)
    return None


def as_int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


def plain(v):
    """A usable scalar from a saved config (unresolved ``${...}`` interpolations are not)."""
    if isinstance(v, str) and "${" in v:
        return None
    return v if isinstance(v, str | int | float) and not isinstance(v, bool) else None


def override_values(overrides) -> dict[str, str]:
    """``{key: value}`` of Hydra override strings (``+``/``~`` prefixes dropped)."""
    out = {}
    for item in overrides if isinstance(overrides, list | tuple) else []:
        if isinstance(item, str) and "=" in item:
            key, value = item.split("=", 1)
            out[key.lstrip("+~")] = value
    return out


def _hydra_info(run_dir: Path) -> dict:
    """attention / data / max_length / seed / overrides of a run, from its ``.hydra`` folder.

    Priority (the same values ``arena-train`` writes to metrics.json first): ``config.yaml``
    (``attention.name``, ``data.name``, ``data.max_length``, ``seed``), then the group choices in
    ``hydra.yaml``, then ``overrides.yaml``, then any ``max_length`` / ``seed`` key in the config.
    """
    hydra = run_dir / ".hydra"
    found: dict[str, list] = {k: [] for k in ("attention", "data", "max_length", "seed")}
    overrides = _read_yaml(hydra / "overrides.yaml")
    config = _read_yaml(hydra / "config.yaml")
    hydra_cfg = _read_yaml(hydra / "hydra.yaml")
    if isinstance(config, dict):
        for group in ("attention", "data"):
            node = config.get(group)
            if isinstance(node, dict):
                found[group].append(plain(node.get("name")))
                if group == "data":
                    found["max_length"].append(plain(node.get("max_length")))
            else:
                found[group].append(plain(node))
        found["seed"].append(plain(config.get("seed")))
    job_name = None
    if isinstance(hydra_cfg, dict):
        node = hydra_cfg.get("hydra") or {}
        choices = (node.get("runtime") or {}).get("choices") or {}
        for group in ("attention", "data"):
            found[group].append(plain(choices.get(group)))
        job_name = (node.get("job") or {}).get("name")
    info: dict = {}
    if isinstance(overrides, list):
        info["overrides"] = overrides
        for key, value in override_values(overrides).items():
            last = key.split(".")[-1]
            if last in ("max_length", "seed") or (last in ("attention", "data") and key == last):
                found[last].append(value)  # attention.window=…: an option, not the choice
    if isinstance(config, dict):
        for key in ("max_length", "seed"):
            found[key].append(plain(_find_key(config, key)))
    for key, values in found.items():
        info[key] = next((v for v in values if v is not None), None)
    for key in ("max_length", "seed"):
        info[key] = as_int(info.get(key))
    baseline = BASELINE_JOBS.get(job_name)
    if baseline is not None:  # the baseline app runs on the training config: ignore its model
        info.update(attention=baseline, max_length=None, kind="baseline")
    return info


def blank_run() -> dict:
    return dict.fromkeys(CSV_COLUMNS)


def _status(recorded) -> tuple[str, str | None]:
    """Report status and default reason of a metrics.json ``status``."""
    if recorded in (None, "ok"):
        return "ok", None
    if recorded == "running":
        return "not_run", STILL_RUNNING
    return "failed", "status failed (no error message recorded)"


def load_runs(sweep_dir: str | Path) -> list[dict]:
    """Every run under ``sweep_dir``: one dict per ``metrics.json`` plus one per ``.hydra/`` run
    directory without a ``metrics.json`` (status ``not_run``: it never finished).

    Each dict has every key of :data:`CSV_COLUMNS`; ``status`` is one of :data:`STATUSES`
    (a metrics.json still saying ``running`` is ``not_run``); ``run`` is the directory relative
    to ``sweep_dir``, ``run_dir`` the directory as found and ``predictions`` the path of its
    ``predictions.csv`` (None if absent). Raises FileNotFoundError when ``sweep_dir`` is
    missing, ValueError when it holds no runs.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {str(root)!r} does not exist (or is not a "
                                f"directory); pass the multirun folder, e.g. multirun/DATE/TIME")
    runs = []
    metric_dirs = set()
    for path in sorted(root.rglob("metrics.json")):
        run = blank_run()
        run_dir = path.parent
        metric_dirs.add(run_dir)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            data = {"status": "failed", "error": f"unreadable metrics.json: {err}"}
            data.update({k: v for k, v in _hydra_info(run_dir).items() if v is not None})
        for key in RUN_KEYS:
            run[key] = data.get(key)
        run["status"], reason = _status(data.get("status"))
        if run["status"] != "ok" and (not run["error"] or run["status"] == "not_run"):
            run["error"] = reason
        needed = ("attention", "seed") if run["kind"] == "baseline" else (
            "attention", "max_length", "seed")  # the baseline has no max_length
        if any(run[k] is None for k in needed) and (run_dir / ".hydra").is_dir():
            for k, v in _hydra_info(run_dir).items():
                if run.get(k) is None:
                    run[k] = v
        run["run_dir"] = str(run_dir)
        run["source"] = "metrics.json"
        runs.append(run)

    for hydra in sorted(root.rglob(".hydra")):
        run_dir = hydra.parent
        if not hydra.is_dir() or any(run_dir == d or run_dir in d.parents for d in metric_dirs):
            continue
        run = blank_run()
        run.update({k: v for k, v in _hydra_info(run_dir).items() if k in run})
        run.update(status="not_run", error=NOT_FINISHED, run_dir=str(run_dir),
                   source=".hydra only")
        runs.append(run)

    if not runs:
        raise ValueError(f"no runs found under {str(root)!r}: looked for metrics.json files and "
                         f"run directories with a .hydra/ folder")
    for run in runs:
        rel = Path(run["run_dir"]).relative_to(root)
        run["run"] = str(rel) if str(rel) != "." else root.name
        normalize(run)
        pred = Path(run["run_dir"]) / "predictions.csv"
        run["predictions"] = str(pred) if pred.is_file() else None
    runs.sort(key=run_sort_key)
    return runs


def normalize(run: dict) -> dict:
    """Names as strings, length and seed as ints, ``kind`` defaulting to ``model``."""
    for key in ("attention", "data"):
        if run[key] is not None:
            run[key] = str(run[key])
    run["max_length"] = as_int(run["max_length"])
    run["seed"] = as_int(run["seed"])
    run["kind"] = run.get("kind") or "model"
    return run


def sort_val(v):
    return (0, v, "") if isinstance(v, int | float) else (1, 0, str(v))


def run_sort_key(run: dict):
    return (str(run.get("data") or ""), sort_val(run.get("max_length")),
            str(run.get("attention") or ""), sort_val(run.get("seed")), run.get("run") or "")


# --------------------------------------------------------------------------------------------
# predictions.csv
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Predictions:
    """One split of a run's ``predictions.csv``: ids, labels and predicted labels (N,)."""

    ids: list[str]
    labels: np.ndarray
    preds: np.ndarray
    num_classes: int

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.preds


def read_predictions(path: str | Path, split: str = "test") -> Predictions:
    """The rows of ``split`` in a ``predictions.csv`` (columns ``split,index,id,label,pred,
    prob_0..``), ordered by ``index``. Raises ValueError naming the problem."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"split", "id", "label", "pred"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: predictions.csv lacks the column(s) "
                             f"{', '.join(sorted(missing))}")
        num_classes = sum(1 for c in reader.fieldnames or [] if c.startswith("prob_"))
        rows = [r for r in reader if r["split"] == split]
    if not rows:
        raise ValueError(f"{path}: predictions.csv has no {split!r} rows")
    try:
        if "index" in rows[0]:
            rows.sort(key=lambda r: int(r["index"]))
        labels = np.array([int(r["label"]) for r in rows])
        preds = np.array([int(r["pred"]) for r in rows])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: predictions.csv has a non-integer index/label/pred ({err})") \
            from err
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: predictions.csv repeats ids in its {split!r} rows")
    k = num_classes or int(max(labels.max(), preds.max()) + 1)
    return Predictions(ids, labels, preds, k)
