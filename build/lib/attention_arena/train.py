"""Train one attention backend on one data set: `arena-train` (`python -m attention_arena.train`).

Examples::

    arena-train                                      # full attention, BBC News, small CPU model
    arena-train attention=longformer data.max_length=2048 logger=csv
    arena-train -m attention=full,longformer seed=0,1          # a sweep, one run dir per job
    arena-train hydra.run.dir=outputs/<run> ckpt_path=last     # resume a killed run

Every run directory holds ``.hydra/config.yaml`` (the composed config, as Hydra writes it),
``config_resolved.yaml`` (every interpolation resolved), ``checkpoints/`` (``last.ckpt`` and the
best by ``val/acc``), ``metrics.json`` (see :data:`METRIC_KEYS`) and, on failure, ``error.log``.

Failures: a job catches its own exception, writes ``metrics.json`` with ``status: failed`` and the
one-line error, prints that line, and returns, so a multirun sweep goes on with the next job. The
process exits with status 1 at the end if any job of this process failed (single run or sweep
with the basic launcher). ``HYDRA_FULL_ERROR=1`` or ``ARENA_RAISE=1`` re-raises instead, with the
full traceback (the traceback is always written to ``<run dir>/error.log``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from .utils import METRIC_KEYS, format_table, register_resolvers

CONF_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package


_FAILURES: list[str] = []  # one line per failed job of this process

register_resolvers()


def _global_rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _hydra_info() -> tuple[list[str], bool]:
    """(task overrides, whether this is a multirun job); works outside Hydra too."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], False
    hc = HydraConfig.get()
    return list(hc.overrides.task), hc.mode == RunMode.MULTIRUN


def _one_line(err: BaseException) -> str:
    """``Type: message`` on one line; Hydra's InstantiationException is unwrapped to its cause."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    msg = " ".join(str(err).split()) or repr(err)
    return f"{type(err).__name__}: {msg}"


def _float(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return value


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``None`` | ``"last"`` (``<run_dir>/checkpoints/last.ckpt`` if present) | an existing file."""
    if ckpt_path in (None, "", "null", "none"):
        return None
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            return str(last)
        warnings.warn(f"ckpt_path=last but {last} does not exist: training from scratch "
                      f"(to resume, pass hydra.run.dir=<the run directory to resume>)",
                      stacklevel=2)
        return None
    path = Path(hydra.utils.to_absolute_path(str(ckpt_path)))
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist (looked at {path})")
    return str(path)


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Instantiate ``cfg.logger`` (a mapping name -> logger config; empty = no logger)."""
    loggers = []
    for lcfg in (cfg.get("logger") or {}).values():
        if lcfg is None:
            continue
        kwargs = OmegaConf.to_container(lcfg, resolve=True)
        cls = hydra.utils.get_class(kwargs.pop("_target_"))
        if "save_dir" in kwargs:
            Path(str(kwargs["save_dir"])).mkdir(parents=True, exist_ok=True)
        if "wandb" in cls.__name__.lower():
            # wandb.init(config=...) needs plain containers (an OmegaConf node crashes it)
            kwargs.setdefault("config", OmegaConf.to_container(cfg, resolve=True))
        loggers.append(cls(**kwargs))
    return loggers


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .callbacks import DestroyProcessGroup, EpochSeededShuffle, NaNGuard

    ck = cfg.checkpoint
    callbacks = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best-epoch{epoch:02d}-step{step}-acc{val/acc:.4f}",
            auto_insert_metric_name=False, monitor=ck.monitor, mode=ck.mode,
            save_top_k=ck.save_top_k, save_last=ck.save_last,
        ),
        NaNGuard(),
        DestroyProcessGroup(),
        EpochSeededShuffle(cfg.seed),
    ]
    if ck.get("every_n_train_steps"):
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True,
                                         every_n_train_steps=int(ck.every_n_train_steps),
                                         filename="step{step}", auto_insert_metric_name=False,
                                         save_top_k=1, monitor="step", mode="max"))
    for cb_cfg in (cfg.get("callbacks") or {}).values():
        if cb_cfg is not None:
            callbacks.append(hydra.utils.instantiate(cb_cfg))
    return callbacks


def train(cfg: DictConfig, result: dict[str, Any]) -> dict[str, Any]:
    """Fit (and test) one configuration; fills and returns ``result`` (the metrics.json dict)."""
    import lightning.pytorch as pl

    from .lit_module import ArenaClassifier, check_checkpoint_compatible

    run_dir = Path(result["run_dir"])
    pl.seed_everything(cfg.seed, workers=True)

    # data: set up here to learn num_classes / vocab_size (Lightning calls setup again, cheaply)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    attention_cfg = OmegaConf.to_container(cfg.attention, resolve=True)
    optim_cfg = OmegaConf.to_container(cfg.optim, resolve=True)
    module = ArenaClassifier(
        vocab_size=datamodule.vocab_size, num_classes=datamodule.num_classes, model=model_cfg,
        attention=attention_cfg, data_name=cfg.data.name, max_length=cfg.data.max_length,
        **optim_cfg,
    )
    result["parameters"] = module.model.num_parameters()
    if cfg.get("compile"):
        module.model.compile()  # in place: checkpoints keep the plain parameter names

    trainer_kwargs: dict[str, Any] = {}
    _, multirun = _hydra_info()
    if multirun and cfg.trainer.get("strategy") == "ddp" and "SLURM_JOB_ID" not in os.environ:
        # strategy=ddp re-launches `sys.argv`, which would re-run the whole sweep in each rank
        print("[arena] multirun: using strategy=ddp_spawn instead of ddp", flush=True)
        trainer_kwargs["strategy"] = "ddp_spawn"

    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=build_callbacks(cfg, run_dir), logger=build_loggers(cfg) or False,
        default_root_dir=str(run_dir), _convert_="all", **trainer_kwargs,
    )
    result["_trainer"] = trainer

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    if ckpt_path:  # fail early, with a clear message, on a checkpoint of another model
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
        check_checkpoint_compatible(saved.get("hyper_parameters", {}), module.hparams, ckpt_path)
        del saved
        print(f"[arena] resuming from {ckpt_path}", flush=True)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_metrics = dict(trainer.callback_metrics)
    result["epochs"] = int(trainer.current_epoch)
    result["steps"] = int(trainer.global_step)
    last = run_dir / "checkpoints" / "last.ckpt"
    if result["steps"] == 0 and last.exists():  # ddp_spawn keeps the loop state in its workers
        saved = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
        result["epochs"], result["steps"] = int(saved["epoch"]) + 1, int(saved["global_step"])
    result["train_tokens_per_s"] = _float(fit_metrics, "train/tokens_per_s_epoch")
    result["peak_memory_mb"] = _float(fit_metrics, "sys/peak_memory_mb")
    result["val_acc"] = _float(fit_metrics, "val/acc")
    result["val_f1"] = _float(fit_metrics, "val/f1")

    if cfg.get("test_after_fit", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best if best and Path(best).exists() else None
        if ckpt is None:
            print("[arena] no best checkpoint: evaluating the final weights", flush=True)
        val = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        test = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        val, test = (val[0] if val else {}), (test[0] if test else {})
        result["val_acc"], result["val_f1"] = _float(val, "val/acc"), _float(val, "val/f1")
        result["test_acc"], result["test_f1"] = _float(test, "test/acc"), _float(test, "test/f1")
        mem = _float(dict(trainer.callback_metrics), "sys/peak_memory_mb")
        if mem is not None:
            result["peak_memory_mb"] = max(mem, result["peak_memory_mb"] or 0.0)
        result["evaluated_checkpoint"] = ckpt
    result["status"] = "ok"
    return result


def run(cfg: DictConfig) -> dict[str, Any]:
    """One job: train, catch any failure, write ``metrics.json`` (rank 0), clean up."""
    start = time.time()
    overrides, multirun = _hydra_info()
    try:
        run_dir = Path(str(cfg.get("output_dir") or os.getcwd())).resolve()
    except Exception:  # noqa: BLE001 - ${hydra:...} does not resolve outside a Hydra app
        run_dir = Path(os.getcwd()).resolve()
    result: dict[str, Any] = {
        "status": "failed", "error": None, "attention": None, "data": None,
        "max_length": None, "seed": None, "parameters": None, "val_acc": None, "val_f1": None,
        "test_acc": None, "test_f1": None, "train_tokens_per_s": None, "peak_memory_mb": None,
        "wall_time_s": None, "epochs": None, "steps": None, "run_dir": str(run_dir),
        "overrides": overrides,
    }
    error: BaseException | None = None
    try:
        result["attention"] = cfg.attention.name
        result["data"] = cfg.data.name
        result["max_length"] = int(cfg.data.max_length)
        result["seed"] = int(cfg.seed)
        if _global_rank() == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        train(cfg, result)
    except Exception as err:  # noqa: BLE001 - a job reports its own failure (see module doc)
        error = err
        result["status"] = "failed"
        result["error"] = _one_line(err)
    trainer = result.pop("_trainer", None)
    result.pop("evaluated_checkpoint", None)
    result["wall_time_s"] = round(time.time() - start, 3)
    rank = trainer.global_rank if trainer is not None else _global_rank()

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = {key: result.get(key) for key in METRIC_KEYS}
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if error is not None:
            (run_dir / "error.log").write_text("".join(
                traceback.format_exception(type(error), error, error.__traceback__)))
    _finish_wandb()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

    if error is not None:
        line = f"[arena] ERROR ({result['attention']}, {result['data']}, " \
               f"run dir {run_dir}): {result['error']}"
        print(line, file=sys.stderr, flush=True)
        _FAILURES.append(line)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("ARENA_RAISE") == "1":
            raise error
    elif rank == 0:
        print(f"\n[arena] finished {cfg.run_name} in {result['wall_time_s']:.1f} s "
              f"({run_dir})\n" + format_table({k: result[k] for k in (
                  "attention", "data", "max_length", "parameters", "epochs", "steps", "val_acc",
                  "val_f1", "test_acc", "test_f1", "train_tokens_per_s", "peak_memory_mb")}),
              flush=True)
    return result


def _finish_wandb() -> None:
    """One wandb run per job: close it so the next multirun job starts a new one."""
    if "wandb" in sys.modules:
        try:
            import wandb

            if wandb.run is not None:
                wandb.finish()
        except Exception as err:  # noqa: BLE001 - never fail a job on logger cleanup
            print(f"[arena] warning: wandb.finish() failed: {err}", file=sys.stderr)


def _quiet_lightning_logs() -> None:
    """Lightning logs through its own handler and Hydra's root handler: print each line once
    (Hydra's, which also writes train.log), and drop its advertisement."""
    import lightning  # noqa: F401 - its import adds the handler removed here
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    _quiet_lightning_logs()
    result = run(cfg)
    return result.get("val_acc")  # the objective for sweepers (e.g. optuna)


def main() -> None:
    """Console entry point: run the Hydra app, then exit 1 if any job of this process failed."""
    _FAILURES.clear()
    hydra_main()
    if _FAILURES:
        if len(_FAILURES) > 1:
            print(f"[arena] {len(_FAILURES)} job(s) failed:\n" + "\n".join(_FAILURES),
                  file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
