"""The training script: config composition, the job and its records, sweeps, failures, DDP, resume.

Unit tests run jobs in this process (:func:`conftest.train_in_process`); the ``integration`` ones
run ``python -m attention_arena.train`` / ``arena-compare-run`` in subprocesses (what users run),
with every output under ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import torch
from omegaconf import OmegaConf

import attention_arena.train as train_module
from attention_arena import utils
from attention_arena.attention import available_attentions
from attention_arena.callbacks import ProgressLog, StopWhenInterrupted, fraction_done
from attention_arena.lit_module import ArenaClassifier, warmup_cosine
from attention_arena.train import (
    CONF_DIR,
    METRIC_KEYS,
    ExitStatus,
    resolve_ckpt_path,
    run_job,
)
from attention_arena.utils import (
    RUN_KEYS,
    Interrupted,
    InterruptHandler,
    JobPosition,
    job_dirs,
    sweep_grid,
    sweep_jobs,
)
from conftest import (
    TINY,
    cli_env,
    compose_train,
    explain,
    read_metrics,
    run_train,
    train_in_process,
)

BACKENDS = available_attentions()
GROUPS = {
    "attention": sorted(p.stem for p in (CONF_DIR / "attention").glob("*.yaml")),
    "data": sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")),
    "model": ["small", "base"],
    "trainer": ["cpu", "gpu", "ddp"],
    "logger": ["wandb", "csv", "none"],
    "callbacks": ["default", "step_checkpoint"],
}
ALL_KEYS = [*METRIC_KEYS, *RUN_KEYS]


@pytest.fixture(autouse=True)
def _failures_are_recorded(monkeypatch):
    """In-process jobs record their failures (as arena-train does without these variables)."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("ARENA_RAISE", raising=False)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def logged(run_dir: Path, column: str) -> list[tuple[int, int, float]]:
    """(epoch, step, value) of every row of the CSV logger's metrics.csv that has ``column``."""
    return [(int(r["epoch"]), int(r["step"]), float(r[column]))
            for r in csv_rows(run_dir / "csv" / "metrics.csv") if r.get(column)]


# --------------------------------------------------------------------------- composition
def test_conf_dir_is_found():
    assert (CONF_DIR / "train.yaml").is_file()


def test_every_backend_has_a_config():
    """Adding a backend = one module + one YAML: fail if a registered backend lacks its YAML."""
    missing = set(BACKENDS) - set(GROUPS["attention"])
    assert not missing, f"add conf/attention/<name>.yaml for {sorted(missing)}"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_group_option_composes(group, tmp_path):
    for option in GROUPS[group]:
        value = "[default,step_checkpoint]" if option == "step_checkpoint" else option
        cfg = compose_train(f"{group}={value}", f"output_dir={tmp_path}")
        for key in ("attention", "model", "optim", "data", "callbacks"):
            OmegaConf.to_container(cfg[key], resolve=True)  # every interpolation resolves
        if cfg.get("trainer"):
            assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_default_callbacks_are_instantiated_from_their_configs(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from attention_arena.callbacks import DestroyProcessGroup, EpochSeededShuffle, NaNGuard

    cfg = compose_train("seed=7", f"output_dir={tmp_path}", "callbacks=[default,step_checkpoint]",
                        "callbacks.step_checkpoint.every_n_train_steps=5")
    callbacks = train_module.build_callbacks(cfg)
    kinds = [type(c) for c in callbacks]
    assert kinds == [ModelCheckpoint, ModelCheckpoint, NaNGuard, EpochSeededShuffle, ProgressLog,
                     ModelCheckpoint, StopWhenInterrupted, DestroyProcessGroup]
    best, last, steps = callbacks[0], callbacks[1], callbacks[5]
    assert best.monitor == "val/acc" and best.mode == "max" and best.save_top_k == 1
    assert last.monitor is None and last.filename == "last"
    assert Path(best.dirpath) == tmp_path / "checkpoints" == Path(steps.dirpath)
    assert steps._every_n_train_steps == 5
    assert callbacks[3].seed == 7


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
ONE_RUN = {"cheaper_bytes", "pretrain_bytes"}  # presets of single runs (experiments/*.sh loops)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose_and_override_the_defaults(name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    if name not in ONE_RUN:
        assert {"full", "linformer", "longformer", "performer"} <= set(
            params["attention"].split(","))
    for key in ("attention", "model", "optim", "data", "trainer"):
        OmegaConf.to_container(cfg[key], resolve=True)
    if name.startswith("lra_") or name.endswith("_gpu"):
        assert cfg.model.num_layers == 4 and cfg.trainer.accelerator == "gpu"
    if "lr" in (OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml").get("optim") or {}):
        assert cfg.optim.lr != compose_train().optim.lr  # the experiment wins over train.yaml
    assert cfg.trainer.enable_progress_bar is False  # sweeps print ProgressLog lines instead


def test_defaults():
    cfg = compose_train()
    assert cfg.attention.name == "full" and cfg.data.name == "bbc_news"
    assert cfg.trainer.accelerator == "cpu" and "wandb" in cfg.logger
    assert cfg.ckpt_path is None and cfg.test_after_fit is True
    assert cfg.data._target_ == "attention_arena.data.TextClassificationDataModule"
    assert list(cfg.callbacks) == ["model_checkpoint", "last_checkpoint", "nan_guard",
                                   "epoch_shuffle", "progress"]


def test_model_configs_hold_no_measured_numbers():
    for path in (CONF_DIR / "model").glob("*.yaml"):
        comments = " ".join(line.split("#", 1)[1] for line in path.read_text().splitlines()
                            if "#" in line)
        assert "%" not in comments and "minutes" not in comments, path


def test_attention_configs_match_backend_signatures():
    """Every key of conf/attention/<name>.yaml is an argument of that backend."""
    import inspect

    from attention_arena.attention import get_attention_class

    for name in BACKENDS:
        cfg = OmegaConf.to_container(compose_train(f"attention={name}").attention, resolve=True)
        assert cfg.pop("name") == name
        params = inspect.signature(get_attention_class(name).__init__).parameters
        assert set(cfg) <= set(params), f"{name}: unknown keys {set(cfg) - set(params)}"


def test_linformer_max_len_follows_padded_data_length():
    cfg = compose_train("attention=linformer", "data.max_length=1000",
                        "data.pad_to_multiple_of=64")
    assert cfg.attention.max_len == 1024 and cfg.model.max_length == 1024
    cfg = compose_train("attention=linformer", "data.max_length=512", "attention.max_len=2048")
    assert cfg.attention.max_len == 2048 and cfg.model.max_length == 512


def test_submitit_launchers_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, target in (("local", "LocalLauncher"), ("slurm", "SlurmLauncher")):
            cfg = compose("train", overrides=[f"hydra/launcher={name}", "trainer=ddp",
                                              "trainer.devices=4"], return_hydra_config=True)
            launcher = cfg.hydra.launcher
            assert launcher._target_.endswith(target)
            if name == "slurm":
                assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4


def test_resolve_ckpt_path(tmp_path):
    assert resolve_ckpt_path(None, tmp_path) is None
    with pytest.warns(UserWarning, match="does not exist: training from scratch"):
        assert resolve_ckpt_path("last", tmp_path) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    assert resolve_ckpt_path("last", tmp_path) == str(last)
    assert resolve_ckpt_path(str(last), tmp_path) == str(last)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)


def test_auto_precision_follows_the_accelerator(monkeypatch):
    from attention_arena.utils import auto_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert auto_precision("auto") == auto_precision("gpu") == "bf16-mixed"
    assert auto_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_precision("auto") == "32-true"


# --------------------------------------------------------------------------- the job wrapper
def test_metrics_json_says_running_while_the_job_runs_then_ok(tmp_path, monkeypatch):
    seen = {}

    def fake_train(cfg):
        seen.update(read_metrics(tmp_path))
        return {"val_acc": 0.5, "test_acc": 0.25, "notes": ["a note"]}

    monkeypatch.setattr(train_module, "train", fake_train)
    metrics = run_job(compose_train(*TINY, "seed=3", f"output_dir={tmp_path}"))
    assert seen["status"] == "running" and seen["error"] is None
    assert (seen["attention"], seen["max_length"], seen["seed"]) == ("full", 256, 3)
    assert seen["test_acc"] is None and seen["wall_time_s"] is None
    final = read_metrics(tmp_path)
    assert final == metrics and list(final) == ALL_KEYS
    assert final["status"] == "ok" and final["val_acc"] == 0.5 and final["test_acc"] == 0.25
    assert final["notes"] == ["a note"] and final["kind"] == "model" and final["job"] is None
    assert final["wall_time_s"] >= 0 and final["run_dir"] == str(tmp_path.resolve())
    assert (tmp_path / "config_resolved.yaml").is_file()


def test_a_failing_job_is_recorded_and_returns(tmp_path, monkeypatch, capsys):
    def fake_train(cfg):
        raise ValueError("bad\n  thing")

    monkeypatch.setattr(train_module, "train", fake_train)
    metrics = run_job(compose_train(*TINY, f"output_dir={tmp_path}"))
    assert metrics["status"] == "failed" and metrics["error"] == "ValueError: bad thing"
    assert read_metrics(tmp_path) == metrics
    assert (tmp_path / "error.log").read_text().startswith("Traceback")
    assert f"[arena] ERROR (full, bbc_news, run dir {tmp_path.resolve()}): ValueError: bad " \
           f"thing" in capsys.readouterr().err


def test_an_interrupted_job_is_recorded_then_stops_the_sweep(tmp_path, monkeypatch):
    def fake_train(cfg):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(train_module, "train", fake_train)
    with pytest.raises(Interrupted):
        run_job(compose_train(*TINY, f"output_dir={tmp_path}"))
    m = read_metrics(tmp_path)
    assert m["status"] == "failed" and m["error"] == "Interrupted: SIGTERM"


def test_signals_raise_interrupted_and_a_lost_one_is_raised_again(tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    with InterruptHandler().installed() as handler:
        for sig in (signal.SIGTERM, signal.SIGINT):  # every signal raises (a second Ctrl+C too)
            with pytest.raises(Interrupted) as info:
                os.kill(os.getpid(), sig)
                time.sleep(5)  # the handler raises at the next bytecode
            assert info.value.signum == sig and str(info.value) == sig.name
        assert handler.signum == signal.SIGTERM  # the first

        def lost() -> None:  # a signal during a __del__: Python only prints the exception
            class Finalized:
                def __del__(self):
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.5)
            Finalized()

        handler.signum = None
        lost()
        assert handler.signum == signal.SIGTERM
        monkeypatch.setattr(train_module, "train", lambda cfg: pytest.fail("job started"))
        with pytest.raises(Interrupted):  # ... so no further job starts
            run_job(compose_train(*TINY, f"output_dir={tmp_path}"))
        assert not (tmp_path / "metrics.json").exists()
        with pytest.raises(Interrupted):  # ... and a running one stops at its next batch
            StopWhenInterrupted().on_train_batch_start(None, None, None, 0)
    assert signal.getsignal(signal.SIGTERM) is before


# --------------------------------------------------------------------------- in-process runs
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One 2-epoch TINY job, its metrics, and what it printed."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HYDRA_FULL_ERROR", raising=False)
        with contextlib.redirect_stdout(out):
            metrics = train_in_process(run_dir, "trainer.max_epochs=2", "data.limit_examples=96")
    return SimpleNamespace(dir=run_dir, metrics=metrics, stdout=out.getvalue())


@pytest.fixture(scope="module")
def tiny_dm():
    """The data module of :func:`tiny_run`."""
    dm = hydra.utils.instantiate(compose_train(*TINY, "data.limit_examples=96").data)
    dm.setup()
    return dm


def test_run_writes_metrics_and_checkpoints(tiny_run):
    m = tiny_run.metrics
    assert read_metrics(tiny_run.dir) == m and list(m) == ALL_KEYS
    assert m["status"] == "ok", m["error"]
    for key in ("val_acc", "val_f1", "test_acc", "test_f1"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["parameters"] > 0 and m["steps"] > 0 and m["epochs"] == 2
    assert m["train_tokens_per_s"] > 0 and m["peak_memory_mb"] > 0 and m["wall_time_s"] > 0
    assert m["kind"] == "model" and m["notes"] == [] and m["tokenizer"] == "bpe"
    assert (tiny_run.dir / "checkpoints" / "last.ckpt").is_file()


def test_run_records_the_data_and_stores_the_tokenizer(tiny_run, tiny_dm):
    from attention_arena.data import load_tokenizer

    stats = tiny_run.metrics["data_stats"]
    assert stats == json.loads(json.dumps(tiny_dm.data_stats()))
    assert {split: s["n"] for split, s in stats.items()} == tiny_dm.split_sizes
    saved = load_tokenizer(tiny_run.dir)  # a checkpoint can be used on new text
    text = "Shares rose sharply after the announcement."
    assert saved.name == "bpe" and saved.encode(text) == tiny_dm.tokenizer.encode(text)


def test_predictions_csv_holds_every_val_and_test_example_of_the_evaluated_checkpoint(
        tiny_run, tiny_dm):
    dm = tiny_dm
    rows = csv_rows(tiny_run.dir / "predictions.csv")
    num_classes = dm.num_classes
    assert list(rows[0]) == ["split", "index", "id", "label", "pred",
                             *(f"prob_{c}" for c in range(num_classes))]
    assert [r["split"] for r in rows] == ["val"] * len(dm.datasets["val"]) + \
        ["test"] * len(dm.datasets["test"])
    for split in ("val", "test"):
        part = [r for r in rows if r["split"] == split]
        assert [int(r["index"]) for r in part] == list(range(len(part)))
        ids = [r["id"] for r in part]
        assert ids == dm.example_ids(split) and len(set(ids)) == len(ids)
        assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
        assert [int(r["label"]) for r in part] == dm.splits[split].labels.tolist()
        probs = torch.tensor([[float(r[f"prob_{c}"]) for c in range(num_classes)] for r in part])
        preds = torch.tensor([int(r["pred"]) for r in part])
        torch.testing.assert_close(probs.sum(-1), torch.ones(len(part)), atol=1e-5, rtol=0)
        assert torch.equal(preds, probs.argmax(-1))
        accuracy = (preds == torch.tensor([int(r["label"]) for r in part])).float().mean()
        assert float(accuracy) == pytest.approx(tiny_run.metrics[f"{split}_acc"], abs=1e-6)


def test_the_csv_logger_records_loss_lr_and_accuracy(tiny_run, tiny_dm):
    """What was logged: train/loss and lr at every step (lr on the warm-up + cosine schedule),
    val/acc once per epoch and once more for the best checkpoint, test/acc once."""
    m = tiny_run.metrics
    losses = logged(tiny_run.dir, "train/loss_step")
    assert [step for _, step, _ in losses] == list(range(m["steps"]))
    assert all(0.0 < loss < 3 * math.log(5) for _, _, loss in losses)  # 5 classes
    # the epoch loss is the batch-size-weighted mean of that epoch's step losses
    n_train = len(tiny_dm.datasets["train"])
    sizes = torch.full((m["steps"] // 2,), 8.0)
    sizes[-1] = n_train - 8 * (len(sizes) - 1)
    for epoch, _, epoch_loss in logged(tiny_run.dir, "train/loss_epoch"):
        steps = torch.tensor([loss for e, _, loss in losses if e == epoch])
        assert epoch_loss == pytest.approx(float((steps * sizes).sum() / n_train), rel=1e-5)
    total, lr = m["steps"], 1e-3
    for _, step, value in logged(tiny_run.dir, "lr"):
        assert value == pytest.approx(lr * warmup_cosine(step, int(0.1 * total), total, 0.1),
                                      rel=1e-5), step
    val = logged(tiny_run.dir, "val/acc")
    assert [epoch for epoch, _, _ in val] == [0, 1, 2]  # epochs 1 and 2, then the best ckpt
    n_val = tiny_dm.split_sizes["val"]
    for _, _, acc in val:
        assert 0.0 <= acc <= 1.0 and acc * n_val == pytest.approx(round(acc * n_val), abs=1e-4)
    assert val[-1][2] == pytest.approx(m["val_acc"])
    assert [v for _, _, v in logged(tiny_run.dir, "test/acc")] == [pytest.approx(m["test_acc"])]
    assert all(v > 0 for _, _, v in logged(tiny_run.dir, "train/tokens_per_s"))


def test_progress_prints_one_line_per_epoch(tiny_run):
    lines = [ln for ln in tiny_run.stdout.splitlines() if " epoch " in ln]
    val = logged(tiny_run.dir, "val/acc")
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"[arena] epoch {epoch}/2: val_acc {val[epoch - 1][2]:.4f}, ")
        assert "elapsed" in line and "left for the job" in line
    assert tiny_run.stdout.startswith("[arena] full L256 seed 0 (bbc_news): started in ")


def test_val_and_test_metrics_come_from_the_best_checkpoint(tmp_path):
    """The last epoch's weights are zeroed before its validation: the best checkpoint is an
    earlier epoch, and metrics.json must hold that epoch's numbers, not the last's."""
    run_dir = tmp_path / "run"
    m = train_in_process(run_dir, "data.limit_examples=400", "optim.lr=3e-3",
                         "trainer.max_epochs=4",
                         "+callbacks.ruin._target_=attention_arena.callbacks.RuinWeights",
                         "+callbacks.ruin.at_epoch=3")
    assert m["status"] == "ok", m["error"]
    per_epoch = [acc for epoch, _, acc in logged(run_dir, "val/acc")][:4]
    best = max(range(4), key=lambda e: per_epoch[e])
    assert best < 3 and per_epoch[3] < per_epoch[best]  # the run this test needs
    assert m["val_acc"] == pytest.approx(per_epoch[best], abs=1e-6)
    assert m["val_acc"] != pytest.approx(per_epoch[3], abs=1e-6)
    [best_ckpt] = (run_dir / "checkpoints").glob("best-*.ckpt")
    assert best_ckpt.name.startswith(f"best-epoch{best:02d}-")

    dm = hydra.utils.instantiate(compose_train(*TINY, "data.limit_examples=400").data)
    dm.setup()
    labels = torch.as_tensor(dm.splits["test"].labels)

    def test_preds(ckpt: Path) -> torch.Tensor:
        module = ArenaClassifier.load_from_checkpoint(ckpt, map_location="cpu")
        return module.predict_logits(dm.test_dataloader())[0].argmax(-1)

    last_ckpt = run_dir / "checkpoints" / "last.ckpt"  # the ruined weights of the last epoch
    assert torch.load(last_ckpt, weights_only=False)["epoch"] == 3
    best_preds, last_preds = test_preds(best_ckpt), test_preds(last_ckpt)
    assert m["test_acc"] == pytest.approx(float((best_preds == labels).float().mean()), abs=1e-6)
    assert m["test_acc"] != pytest.approx(float((last_preds == labels).float().mean()), abs=1e-6)
    written = [int(r["pred"]) for r in csv_rows(run_dir / "predictions.csv")
               if r["split"] == "test"]
    assert written == best_preds.tolist() != last_preds.tolist()


def test_linformer_k_is_capped_at_a_short_length_with_a_note(tmp_path):
    """data.max_length=64 with linformer's default k=256 used to fail every job."""
    run_dir = tmp_path / "run"
    m = train_in_process(run_dir, "attention=linformer", "data.max_length=64")
    assert m["status"] == "ok", m["error"]
    assert m["notes"] == ["linformer k capped from 256 to 64 = max_len"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["attention"]["k"] == 64


def test_listops_csv_logger(tmp_path):
    run_dir = tmp_path / "run"
    m = train_in_process(run_dir, "data=listops", "data.listops_min_length=50",
                         "data.listops_max_length=250", "data.listops_num_train=64",
                         "data.listops_num_val=16", "data.listops_num_test=16")
    assert m["status"] == "ok", m["error"]
    assert m["data"] == "listops" and m["tokenizer"] == "listops"
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for col in ("train/loss_step", "lr", "train/tokens_per_s", "val/acc", "val/f1", "test/acc",
                "sys/peak_memory_mb"):
        assert col in header, header


def test_files_data_no_logger(tmp_path):
    import random

    rng = random.Random(0)
    words = {"pos": ["good", "great", "fine", "superb"], "neg": ["bad", "awful", "poor", "sad"]}
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for i in range(80):
            label = "pos" if i % 2 else "neg"
            writer.writerow([" ".join(rng.choice(words[label]) for _ in range(20)) + f" #{i}",
                             label])
    run_dir = tmp_path / "run"
    m = train_in_process(run_dir, "data=files", f"data.path={path}", "data.text_column=review",
                         "data.label_column=sentiment", "logger=none")
    assert m["status"] == "ok", m["error"]
    assert m["data"] == "files" and (run_dir / "predictions.csv").is_file()
    assert not (run_dir / "csv").exists() and not (run_dir / "wandb").exists()


def test_resume_from_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    m1 = train_in_process(run_dir)
    assert m1["status"] == "ok" and m1["epochs"] == 1
    m2 = train_in_process(run_dir, "trainer.max_epochs=2", "ckpt_path=last")
    assert m2["status"] == "ok"
    assert m2["epochs"] == 2 and m2["steps"] == 2 * m1["steps"]
    # a checkpoint of another backend is refused with a clear message
    m3 = train_in_process(run_dir, "attention=longformer", "trainer.max_epochs=3",
                          "ckpt_path=last")
    assert m3["status"] == "failed" and read_metrics(run_dir) == m3
    assert "was trained with attention=full, but this run uses attention=longformer" in m3["error"]


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    m = train_in_process(run_dir, "trainer.max_epochs=3", "callbacks=[default,step_checkpoint]",
                         "callbacks.step_checkpoint.every_n_train_steps=2",
                         "+callbacks.nan._target_=attention_arena.callbacks.InjectNaN",
                         "+callbacks.nan.at_step=5")
    assert m["status"] == "failed"
    assert "non-finite loss (nan) at step 5" in m["error"]
    assert "attention=full" in m["error"]
    assert "last good checkpoint:" in m["error"]
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] <= 5
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


# --------------------------------------------------------------------------- sweeps
def write_multirun_yaml(sweep: Path, params: dict[str, str], task: list[str]) -> None:
    sweep.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "max_batch_size": None, "params": params},
        "overrides": {"task": task, "hydra": []}}}), sweep / "multirun.yaml")


def test_sweep_grid_expands_params_then_task_overrides_like_hydra(tmp_path):
    """Params first, command line after; a key given twice keeps its first place, the command
    line's values; later keys vary fastest."""
    write_multirun_yaml(tmp_path, {"attention": "full,linformer", "data.max_length": "64,128"},
                        ["data.max_length=32,256", "seed=0,1", "logger=csv"])
    expected = [[f"attention={a}", f"data.max_length={n}", f"seed={s}", "logger=csv"]
                for a in ("full", "linformer") for n in (32, 256) for s in (0, 1)]
    assert sweep_grid(tmp_path) == expected


def test_sweep_grid_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="multirun.yaml does not exist"):
        sweep_grid(tmp_path)
    OmegaConf.save(OmegaConf.create({"hydra": {"sweeper": {"_target_": "x.OptunaSweeper"},
                                               "overrides": {"task": []}}}),
                   tmp_path / "multirun.yaml")
    with pytest.raises(ValueError, match="only the basic sweeper"):
        sweep_grid(tmp_path)
    write_multirun_yaml(tmp_path, {}, ["seed=glob(*)"])  # a group glob needs the config loader
    with pytest.raises(ValueError, match="cannot expand the sweep's grid"):
        sweep_grid(tmp_path)


def fake_sweep(sweep: Path) -> None:
    """4 jobs: 0 ok, 1 started without metrics (killed), 2 never ran, 3 failed (odd dir name)."""
    write_multirun_yaml(sweep, {}, ["seed=0,1,2,3"])
    for name, num, status, wall in (("0_full", 0, "ok", 10.0), ("any_name", 3, "failed", 20.0)):
        (sweep / name).mkdir()
        (sweep / name / "metrics.json").write_text(json.dumps(
            {"status": status, "error": "E: x" if status == "failed" else None,
             "wall_time_s": wall, "job": {"num": num, "total": 4}}))
    (sweep / "1_full" / ".hydra").mkdir(parents=True)
    (sweep / "1_full" / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    num: 1\n")


def test_sweep_jobs_and_their_status(tmp_path):
    fake_sweep(tmp_path)
    assert job_dirs(tmp_path) == {0: tmp_path / "0_full", 1: tmp_path / "1_full",
                                  3: tmp_path / "any_name"}
    jobs = sweep_jobs(tmp_path)
    assert [(j.num, j.status) for j in jobs] == [(0, "ok"), (1, "running"), (2, "not run"),
                                                 (3, "failed")]
    assert jobs[2].run_dir is None and jobs[3].overrides == ["seed=3"]


def test_exit_status_fails_a_sweep_with_an_unfinished_job(tmp_path, capsys):
    fake_sweep(tmp_path)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as info:
        ExitStatus().on_multirun_end(config=config)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "3 of 4 job(s) failed" in err and "a job that never started" in err
    ok = tmp_path / "ok"
    write_multirun_yaml(ok, {}, ["seed=0"])
    (ok / "0").mkdir()
    (ok / "0" / "metrics.json").write_text('{"status": "ok", "job": {"num": 0}}')
    ExitStatus().on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(ok)}}}))
    ExitStatus().on_run_end(config=OmegaConf.create(
        {"hydra": {"runtime": {"output_dir": str(ok / "0")}}}))
    with pytest.raises(SystemExit):
        ExitStatus().on_run_end(config=OmegaConf.create(
            {"hydra": {"runtime": {"output_dir": str(tmp_path / "any_name")}}}))


def test_progress_estimates_the_time_left(tmp_path):
    trainer = SimpleNamespace(max_epochs=4, max_steps=-1, current_epoch=1, global_step=30,
                              num_training_batches=10, fit_loop=SimpleNamespace(
                                  epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(
                                      current=SimpleNamespace(completed=5)))))
    assert fraction_done(trainer) == pytest.approx(1.5 / 4)
    trainer.max_epochs, trainer.max_steps = -1, 120
    assert fraction_done(trainer) == pytest.approx(30 / 120)

    fake_sweep(tmp_path)  # job 0 took 10 s and job 3 20 s; job 1 runs, job 2 is still to run
    progress = ProgressLog()
    progress.position = JobPosition(1, 4, tmp_path)
    assert progress._sweep_left(job_left=5.0, job_estimate=99.0) == pytest.approx(5.0 + 15.0)
    progress.position = JobPosition(1, 4, tmp_path / "elsewhere")
    assert progress._sweep_left(5.0, 99.0) is None


# --------------------------------------------------------------------------- integration
def check_ok(run_dir: Path, proc=None) -> dict:
    assert (run_dir / "metrics.json").exists(), explain(proc) if proc else run_dir
    m = read_metrics(run_dir)
    assert list(m) == ALL_KEYS
    assert m["status"] == "ok", (m["error"], explain(proc) if proc else "")
    assert m["error"] is None
    for key in ("val_acc", "val_f1", "test_acc", "test_f1"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["parameters"] > 0 and m["steps"] > 0 and m["epochs"] >= 1
    assert m["train_tokens_per_s"] > 0 and m["peak_memory_mb"] > 0 and m["wall_time_s"] > 0
    assert Path(m["run_dir"]) == run_dir.resolve()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "predictions.csv").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists()
    return m


@pytest.mark.integration
def test_multirun_every_backend_with_wandb_offline(tmp_path):
    """One sweep job per registered backend, each with its own run dir and offline wandb run;
    the grid read back from multirun.yaml is the jobs' own overrides, in job order."""
    sweep = tmp_path / "sweep"
    proc = run_train(["-m", f"attention={','.join(BACKENDS)}", *TINY, "logger=wandb",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    dirs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert [d.name for d in dirs] == [f"{i}_{b}_L256_s0" for i, b in enumerate(BACKENDS)]
    grid = sweep_grid(sweep)
    wandb_runs = set()
    n = len(BACKENDS)
    for i, (d, backend) in enumerate(zip(dirs, BACKENDS, strict=True)):
        m = check_ok(d, proc)
        assert m["attention"] == backend and m["data"] == "bbc_news" and m["max_length"] == 256
        assert f"attention={backend}" in m["overrides"]
        assert m["job"] == {"num": i, "total": n}
        assert OmegaConf.load(d / ".hydra" / "overrides.yaml") == grid[i]
        cfg = OmegaConf.load(d / ".hydra" / "config.yaml")
        assert cfg.attention.name == backend
        runs = list((d / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, f"{d}: {runs}"
        wandb_runs.add(runs[0].name)
        assert f"[{i + 1}/{n}] {backend} L256 seed 0 (bbc_news): started in" in proc.stdout
        assert f"[{i + 1}/{n}] epoch 1/1: val_acc " in proc.stdout
    assert len(wandb_runs) == len(BACKENDS)  # wandb.finish() between jobs: one run per job
    assert f"[{n}/{n}] finished" in proc.stdout and "test_acc" in proc.stdout


@pytest.mark.integration
def test_failures_are_reported_and_the_sweep_goes_on(tmp_path):
    """num_heads=3 does not divide embed_dim=32: that job fails, the other runs; exit code 1."""
    sweep = tmp_path / "sweep"
    proc = run_train(["-m", *TINY, "model.num_heads=3,2", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path)
    assert proc.returncode == 1, explain(proc)
    failed, ok = read_metrics(sweep / "0_full_L256_s0"), read_metrics(sweep / "1_full_L256_s0")
    assert failed["status"] == "failed"
    assert failed["error"] == ("ValueError: embed_dim=32 is not divisible by num_heads=3; "
                               "choose e.g. num_heads=2")
    assert failed["test_acc"] is None and failed["attention"] == "full"
    assert "model.num_heads=3" in failed["overrides"]
    assert (sweep / "0_full_L256_s0" / "error.log").read_text().startswith("Traceback")
    assert ok["status"] == "ok"
    assert "[arena] ERROR" in proc.stderr and "not divisible by num_heads=3" in proc.stderr


@pytest.mark.integration
def test_single_run_failure_exit_code_and_one_line_error(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train([*TINY, "model.num_heads=3", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if "[arena] ERROR" in ln]
    assert len(lines) == 1 and "embed_dim=32 is not divisible by num_heads=3" in lines[0]
    assert "Traceback" not in proc.stderr
    assert read_metrics(run_dir)["status"] == "failed"


@pytest.mark.integration
@pytest.mark.parametrize("override, message", [
    ("attention=nope", "Could not find 'attention/nope'"),
    ("model.nope=1", "Could not override 'model.nope'"),
])
def test_config_errors_are_hydras_clear_messages(tmp_path, override, message):
    proc = run_train([override, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def wait_for_status(run_dir: Path, status: str, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (utils.read_metrics(run_dir) or {}).get("status") != status:
        assert proc.poll() is None, f"exited {proc.returncode} before {run_dir} was {status}"
        assert time.monotonic() < deadline, f"{run_dir} never {status}"
        time.sleep(0.02)


@pytest.mark.integration
def test_sigint_stops_a_sweep_with_a_nonzero_exit(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "attention_arena.train", "-m", *TINY, "seed=0,1",
         "trainer.max_epochs=3", "data.limit_examples=128", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_status(sweep / "0_full_L256_s0", "running", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, out[-2000:] + err[-3000:]
    m = read_metrics(sweep / "0_full_L256_s0")
    assert m["status"] == "failed" and m["error"] == "Interrupted: SIGINT"
    assert not (sweep / "1_full_L256_s1").exists()
    assert f"arena-compare-run --resume {sweep}" in err
    assert [j.status for j in sweep_jobs(sweep)] == ["failed", "not run"]


@pytest.mark.integration
def test_sigterm_to_compare_run_then_resume_runs_exactly_the_rest(tmp_path):
    """SIGTERM to arena-compare-run during job 2 of 3: non-zero exit, job 2 recorded as
    interrupted, job 3 never started; --resume runs jobs 2 and 3 and leaves job 1 untouched."""
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("data.max_length")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "attention_arena.compare_run", "--sweep-dir", str(sweep),
         "attention=full", "data.max_length=64", "seed=0,1,2", *tiny, "trainer.max_epochs=3",
         "data.limit_examples=128"],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_status(sweep / "1_full_L64_s1", "running", proc, timeout=300)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:] + err[-3000:]
    assert [j.status for j in sweep_jobs(sweep)] == ["ok", "failed", "not run"]
    assert read_metrics(sweep / "1_full_L64_s1")["error"] == "Interrupted: SIGTERM"
    assert f"arena-compare-run --resume {sweep}" in err
    first = sweep / "0_full_L64_s0"
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in first.rglob("*") if p.is_file()}

    resumed = subprocess.run(
        [sys.executable, "-m", "attention_arena.compare_run", "--resume", str(sweep)],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, explain(resumed)
    assert "1 of 3 jobs finished ok; running 2: 1 (failed), 2 (not run)" in resumed.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in first.rglob("*")
            if p.is_file()} == kept
    grid = sweep_grid(sweep)
    for job in sweep_jobs(sweep):
        assert job.status == "ok"
        m = check_ok(job.run_dir)
        assert m["job"] == {"num": job.num, "total": 3}
        assert OmegaConf.load(job.run_dir / ".hydra" / "overrides.yaml") == grid[job.num]
    assert [j.run_dir.name for j in sweep_jobs(sweep)] == \
        ["0_full_L64_s0", "1_full_L64_s1", "2_full_L64_s2"]
    assert "[3/3] epoch 3/3: val_acc" in resumed.stdout
    with open(sweep / "comparison" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    for name in ("full", "tfidf-logreg"):  # the baseline, skipped when interrupted, ran too
        assert sorted(r["seed"] for r in rows if r["attention"] == name) == ["0", "1", "2"]


@pytest.mark.integration
def test_ddp_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", *TINY,
                      "logger=csv", f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, explain(proc)
    m = check_ok(run_dir, proc)
    single = tmp_path / "single"
    check_ok(single, run_train([*TINY, f"hydra.run.dir={single}"], cwd=tmp_path))
    # the DistributedSampler gives each rank half of the batches
    assert m["steps"] == -(-read_metrics(single)["steps"] // 2), m
    assert "terminate called" not in proc.stderr
    # predictions: every example once (rank 0 predicts the whole split)
    assert len(csv_rows(run_dir / "predictions.csv")) == \
        len(csv_rows(single / "predictions.csv"))


@pytest.mark.integration
def test_ddp_inside_a_multirun(tmp_path):
    """-m with trainer=ddp: each job runs ddp_spawn (the data module must pickle)."""
    sweep = tmp_path / "sweep"
    proc = run_train(["-m", "trainer=ddp", "trainer.devices=2", "attention=full,performer",
                      *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, explain(proc)
    assert "ddp_spawn" in proc.stdout
    runs = sorted(sweep.glob("*/metrics.json"))
    assert len(runs) == 2
    for path in runs:
        m = check_ok(path.parent)
        assert m["steps"] > 0 and m["test_acc"] is not None, m


@pytest.mark.integration
def test_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train(["-m", "hydra/launcher=local", *TINY, "seed=0",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, explain(proc)
    check_ok(sweep / "0_full_L256_s0", proc)
    assert (sweep / ".submitit").is_dir()


@pytest.mark.integration
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """SIGKILL a run in the middle of epoch 2, resume from last.ckpt (end of epoch 1).

    Exact equality needs: no dropout (Lightning does not checkpoint RNG states), a checkpoint at
    an epoch boundary (plain DataLoaders cannot resume mid-epoch), and a per-epoch data order
    that does not depend on how many epochs this process has run.
    """
    common = [*TINY, "data.limit_examples=256", "trainer.max_epochs=3", "model.dropout=0.0",
              "trainer.deterministic=true"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = run_train([*common, f"hydra.run.dir={ref_dir}"], cwd=tmp_path)
    ref_m = check_ok(ref_dir, ref)
    per_epoch = ref_m["steps"] // 3

    killed = run_train([*common, f"hydra.run.dir={run_dir}",  # SIGKILL itself mid epoch 2
                        "+callbacks.kill._target_=attention_arena.callbacks.KillAtStep",
                        f"+callbacks.kill.at_step={per_epoch + per_epoch // 2}"], cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, explain(killed)
    assert read_metrics(run_dir)["status"] == "running"  # a killed job stays visible
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    resumed = run_train([*common, f"hydra.run.dir={run_dir}", "ckpt_path=last"], cwd=tmp_path)
    assert "resuming from" in resumed.stdout
    m = check_ok(run_dir, resumed)
    assert m["steps"] == ref_m["steps"] and m["epochs"] == ref_m["epochs"]
    for key in ("val_acc", "val_f1", "test_acc", "test_f1"):
        assert m[key] == pytest.approx(ref_m[key], abs=1e-6), key
    ref_ckpt = torch.load(ref_dir / "checkpoints" / "last.ckpt", weights_only=False)
    run_ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    for name, tensor in ref_ckpt["state_dict"].items():
        torch.testing.assert_close(run_ckpt["state_dict"][name], tensor, msg=name)


# --------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_small_model_learns_bbc_news(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(["data.max_length=512", "trainer.max_epochs=5", "logger=csv",
                      "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path, timeout=1800)
    m = check_ok(run_dir, proc)
    assert m["val_acc"] > 0.60, json.dumps(m, indent=2)


@pytest.mark.slow
@pytest.mark.parametrize("backend", available_attentions())
def test_every_backend_learns_bbc_news(tmp_path, backend):
    """The main job's tiny model, 2 epochs at 512 BPE tokens: every registered backend reaches
    80% test accuracy on BBC News (chance: 23%, the largest class)."""
    run_dir = tmp_path / "run"
    proc = run_train(["experiment=quick_compare", f"attention={backend}", "data.max_length=512",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=1800)
    m = check_ok(run_dir, proc)
    assert m["test_acc"] > 0.80, json.dumps(m, indent=2)


def test_a_run_without_test_examples_fails_before_training(tmp_path):
    m = train_in_process(tmp_path, "data.test_fraction=0")
    assert m["status"] == "failed" and m["steps"] in (None, 0)
    assert m["error"].startswith("DataError: the test split is empty")
    assert "test_after_fit=false" in m["error"]
