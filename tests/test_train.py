"""The training script: config composition, CLI runs, sweeps, failures, DDP, resume, NaN guard.

CLI tests run ``python -m attention_arena.train`` in a subprocess (what users run), with every
output under ``tmp_path``.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attention_arena.attention import available_attentions
from attention_arena.train import CONF_DIR, METRIC_KEYS, resolve_ckpt_path
from conftest import TINY, explain, read_metrics, run_train

BACKENDS = available_attentions()
GROUPS = {
    "attention": sorted(p.stem for p in (CONF_DIR / "attention").glob("*.yaml")),
    "data": sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")),
    "model": ["small", "base"],
    "trainer": ["cpu", "gpu", "ddp"],
    "logger": ["wandb", "csv", "none"],
}


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


# --------------------------------------------------------------------------- composition
def test_conf_dir_is_found():
    assert (CONF_DIR / "train.yaml").is_file()


def test_every_backend_has_a_config():
    """Adding a backend = one module + one YAML: fail if a registered backend lacks its YAML."""
    missing = set(BACKENDS) - set(GROUPS["attention"])
    assert not missing, f"add conf/attention/<name>.yaml for {sorted(missing)}"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_group_option_composes(group):
    for option in GROUPS[group]:
        cfg = composed(f"{group}={option}")
        for key in ("attention", "model", "optim", "checkpoint", "data"):
            OmegaConf.to_container(cfg[key], resolve=True)  # every interpolation resolves
        if cfg.get("trainer"):
            assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose_and_override_the_defaults(name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert {"full", "linformer", "longformer", "performer"} <= set(params["attention"].split(","))
    for key in ("attention", "model", "optim", "data", "trainer"):
        OmegaConf.to_container(cfg[key], resolve=True)
    if name.startswith("lra_") or name.endswith("_gpu"):
        assert cfg.model.num_layers == 4 and cfg.trainer.accelerator == "gpu"
    if "lr" in (OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml").get("optim") or {}):
        assert cfg.optim.lr != composed().optim.lr  # the experiment wins over train.yaml


def test_defaults():
    cfg = composed()
    assert cfg.attention.name == "full" and cfg.data.name == "bbc_news"
    assert cfg.trainer.accelerator == "cpu" and "wandb" in cfg.logger
    assert cfg.ckpt_path is None and cfg.test_after_fit is True
    assert cfg.data._target_ == "attention_arena.data.TextClassificationDataModule"


def test_attention_configs_match_backend_signatures():
    """Every key of conf/attention/<name>.yaml is an argument of that backend."""
    import inspect

    from attention_arena.attention import get_attention_class

    for name in BACKENDS:
        cfg = OmegaConf.to_container(composed(f"attention={name}").attention, resolve=True)
        assert cfg.pop("name") == name
        params = inspect.signature(get_attention_class(name).__init__).parameters
        assert set(cfg) <= set(params), f"{name}: unknown keys {set(cfg) - set(params)}"


def test_linformer_max_len_follows_padded_data_length():
    cfg = composed("attention=linformer", "data.max_length=1000", "data.pad_to_multiple_of=64")
    assert cfg.attention.max_len == 1024 and cfg.model.max_length == 1024
    cfg = composed("attention=linformer", "data.max_length=512", "attention.max_len=2048")
    assert cfg.attention.max_len == 2048 and cfg.model.max_length == 512


def test_submitit_launchers_compose():
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


# --------------------------------------------------------------------------- CLI runs
def check_ok(run_dir: Path, proc=None) -> dict:
    assert (run_dir / "metrics.json").exists(), explain(proc) if proc else run_dir
    m = read_metrics(run_dir)
    assert list(m) == list(METRIC_KEYS)
    assert m["status"] == "ok", (m["error"], explain(proc) if proc else "")
    assert m["error"] is None
    for key in ("val_acc", "val_f1", "test_acc", "test_f1"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["parameters"] > 0 and m["steps"] > 0 and m["epochs"] >= 1
    assert m["train_tokens_per_s"] > 0 and m["peak_memory_mb"] > 0 and m["wall_time_s"] > 0
    assert Path(m["run_dir"]) == run_dir.resolve()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists()
    return m


def test_multirun_every_backend_with_wandb_offline(tmp_path):
    """One sweep job per registered backend, each with its own run dir and offline wandb run."""
    sweep = tmp_path / "sweep"
    proc = run_train(["-m", f"attention={','.join(BACKENDS)}", *TINY, "logger=wandb",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    dirs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert [d.name for d in dirs] == [f"{i}_{b}_L256_s0" for i, b in enumerate(BACKENDS)]
    wandb_runs = set()
    for d, backend in zip(dirs, BACKENDS, strict=True):
        m = check_ok(d, proc)
        assert m["attention"] == backend and m["data"] == "bbc_news" and m["max_length"] == 256
        assert f"attention={backend}" in m["overrides"]
        cfg = OmegaConf.load(d / ".hydra" / "config.yaml")
        assert cfg.attention.name == backend
        runs = list((d / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, f"{d}: {runs}"
        wandb_runs.add(runs[0].name)
    assert len(wandb_runs) == len(BACKENDS)  # wandb.finish() between jobs: one run per job
    assert "[arena] finished" in proc.stdout and "test_acc" in proc.stdout


def test_listops_csv_logger(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(["data=listops", *TINY, "data.listops_min_length=50",
                      "data.listops_max_length=250", "data.listops_num_train=64",
                      "data.listops_num_val=16", "data.listops_num_test=16",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    m = check_ok(run_dir, proc)
    assert m["data"] == "listops"
    metrics_csv = run_dir / "csv" / "metrics.csv"
    assert metrics_csv.exists()
    header = metrics_csv.read_text().splitlines()[0].split(",")
    for col in ("train/loss_step", "lr", "train/tokens_per_s", "val/acc", "val/f1", "test/acc",
                "sys/peak_memory_mb"):
        assert col in header, header


def test_files_data_no_logger(tmp_path):
    import csv
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
    proc = run_train(["data=files", f"data.path={path}", "data.text_column=review",
                      "data.label_column=sentiment", *TINY, "logger=none",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    m = check_ok(run_dir, proc)
    assert m["data"] == "files"
    assert not (run_dir / "csv").exists() and not (run_dir / "wandb").exists()


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


def test_single_run_failure_exit_code_and_one_line_error(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train([*TINY, "model.num_heads=3", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if "[arena] ERROR" in ln]
    assert len(lines) == 1 and "embed_dim=32 is not divisible by num_heads=3" in lines[0]
    assert "Traceback" not in proc.stderr
    assert read_metrics(run_dir)["status"] == "failed"


@pytest.mark.parametrize("override, message", [
    ("attention=nope", "Could not find 'attention/nope'"),
    ("model.nope=1", "Could not override 'model.nope'"),
])
def test_config_errors_are_hydras_clear_messages(tmp_path, override, message):
    proc = run_train([override, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


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


def test_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train(["-m", "hydra/launcher=local", *TINY, "seed=0",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, explain(proc)
    check_ok(sweep / "0_full_L256_s0", proc)
    assert (sweep / ".submitit").is_dir()


def test_resume_from_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, f"hydra.run.dir={run_dir}"]
    first = run_train(args, cwd=tmp_path)
    m1 = check_ok(run_dir, first)
    assert m1["epochs"] == 1
    second = run_train([*args, "trainer.max_epochs=2", "ckpt_path=last"], cwd=tmp_path)
    assert "resuming from" in second.stdout, explain(second)
    m2 = check_ok(run_dir, second)
    assert m2["epochs"] == 2 and m2["steps"] == 2 * m1["steps"]
    # a checkpoint of another backend is refused with a clear message
    third = run_train([*args, "attention=longformer", "trainer.max_epochs=3", "ckpt_path=last"],
                      cwd=tmp_path)
    assert third.returncode == 1
    m3 = read_metrics(run_dir)
    assert m3["status"] == "failed"
    assert "was trained with attention=full, but this run uses attention=longformer" in m3["error"]


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train([*TINY, "trainer.max_epochs=3", "checkpoint.every_n_train_steps=2",
                      "+callbacks.nan._target_=attention_arena.callbacks.InjectNaN",
                      "+callbacks.nan.at_step=5", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 1
    m = read_metrics(run_dir)
    assert m["status"] == "failed"
    assert "non-finite loss (nan) at step 5" in m["error"]
    assert "attention=full" in m["error"]
    assert "last good checkpoint:" in m["error"]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.exists()
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] <= 5
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


# --------------------------------------------------------------------------- slow
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
    assert not (run_dir / "metrics.json").exists()
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


@pytest.mark.slow
def test_small_model_learns_bbc_news(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(["data.max_length=512", "trainer.max_epochs=5", "logger=csv",
                      "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path, timeout=1800)
    m = check_ok(run_dir, proc)
    assert m["val_acc"] > 0.60, json.dumps(m, indent=2)



def test_auto_precision_follows_the_accelerator(monkeypatch):
    from attention_arena.utils import auto_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert auto_precision("auto") == auto_precision("gpu") == "bf16-mixed"
    assert auto_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_precision("auto") == "32-true"
