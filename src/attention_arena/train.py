"""Train one attention backend on one data set: `arena-train` (`python -m attention_arena.train`).

Examples::

    arena-train                                      # full attention, BBC News, small CPU model
    arena-train attention=longformer data.max_length=2048 logger=csv
    arena-train -m attention=full,longformer seed=0,1          # a sweep, one run dir per job
    arena-train hydra.run.dir=outputs/<run> ckpt_path=last     # resume a killed run

Every run directory holds ``.hydra/config.yaml`` (the composed config, as Hydra writes it),
``config_resolved.yaml`` (every interpolation resolved), ``checkpoints/`` (``last.ckpt`` and the
best by ``val/acc``), ``metrics.json`` (:data:`METRIC_KEYS` then :data:`RUN_KEYS`),
``predictions.csv`` (every val and test example, from the best checkpoint) and, on failure,
``error.log``.

The pieces: :func:`train` fits one configuration, evaluates its best checkpoint and returns the
metrics; :func:`run_job` is the job around it: ``metrics.json`` says ``status: running`` from the
moment the job starts, then ``ok`` or ``failed``, so a killed job stays visible.

Failures: a job catches its own exception, records ``status: failed`` with the one-line error
(the traceback goes to ``<run dir>/error.log``), prints that line and returns, so a sweep goes on
with the next job. At the end, :class:`ExitStatus` (a Hydra callback) reads the jobs' metrics.json
and exits with status 1 if any failed. ``HYDRA_FULL_ERROR=1`` or ``ARENA_RAISE=1`` re-raises
instead, with the full traceback.

Interruptions: SIGINT or SIGTERM stops the job in progress (its metrics.json says ``failed``,
``Interrupted: SIGTERM``) and the sweep; the process exits with status 128 + the signal number.
``arena-compare-run --resume SWEEP_DIR`` runs the jobs of a sweep that did not finish.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from .attention import import_modules
from .data.errors import DataError
from .distill import distill_options, load_teacher, teacher_length
from .transfer import check_encoder_shape, check_same_tokenizer, load_encoder, read_run
from .utils import (
    METRIC_KEYS,
    RUN_KEYS,
    Interrupted,
    InterruptHandler,
    format_table,
    job_position,
    raise_if_interrupted,
    read_metrics,
    register_resolvers,
    sweep_jobs,
)

CONF_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package

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


def run_directory(cfg: DictConfig) -> Path:
    """``cfg.output_dir`` (Hydra's job directory), or the working directory outside Hydra."""
    try:
        return Path(str(cfg.get("output_dir") or os.getcwd())).resolve()
    except Exception:  # noqa: BLE001 - ${hydra:...} does not resolve outside a Hydra app
        return Path(os.getcwd()).resolve()


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


def build_callbacks(cfg: DictConfig) -> list[Any]:
    """Instantiate ``cfg.callbacks`` (a mapping name -> ``{_target_: ..., kwargs}``; see
    ``conf/callbacks/``), plus the two every run needs: a stop at the next batch after a lost
    interrupt, and the process-group cleanup of DDP."""
    from .callbacks import DestroyProcessGroup, StopWhenInterrupted

    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()
                 if c is not None]
    return [*callbacks, StopWhenInterrupted(), DestroyProcessGroup()]


def build_trainer(cfg: DictConfig, run_dir: Path):
    """The Lightning Trainer of ``cfg.trainer`` with the run's callbacks and loggers."""
    kwargs: dict[str, Any] = {}
    _, multirun = _hydra_info()
    if multirun and cfg.trainer.get("strategy") == "ddp" and "SLURM_JOB_ID" not in os.environ:
        # strategy=ddp re-launches `sys.argv`, which would re-run the whole sweep in each rank
        print("[arena] multirun: using strategy=ddp_spawn instead of ddp", flush=True)
        kwargs["strategy"] = "ddp_spawn"
    return hydra.utils.instantiate(
        cfg.trainer, callbacks=build_callbacks(cfg), logger=build_loggers(cfg) or False,
        default_root_dir=str(run_dir), _convert_="all", **kwargs,
    )


def fit_attention_to_length(attention: dict[str, Any], max_len: int
                            ) -> tuple[dict[str, Any], list[str]]:
    """``attention`` (``{"name": backend, **options}``) adapted by the backend's
    :meth:`~attention_arena.attention.base.SelfAttention.fit_to_length` to sequences of at most
    ``max_len`` tokens, and one note per change (printed, and kept in metrics.json)."""
    from .attention import get_attention_class

    options = dict(attention)
    name = options.pop("name")
    options, notes = get_attention_class(name).fit_to_length(options, max_len)
    for note in notes:
        print(f"[arena] note: {note}", flush=True)
    return {"name": name, **options}, notes


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one configuration, then validate and test its best checkpoint (by ``val/acc``) and
    write ``predictions.csv``; returns the metrics (the keys of metrics.json this run measures).

    ``cfg.output_dir`` is the run directory (Hydra sets it; set it when calling from Python).
    """
    import lightning.pytorch as pl

    from .lit_module import ArenaClassifier, check_checkpoint_compatible

    run_dir = Path(str(cfg.output_dir)).resolve()
    import_modules(cfg.get("imports") or [])  # user backends named on the command line
    pl.seed_everything(cfg.seed, workers=True)

    distill = distill_options(OmegaConf.to_container(cfg.get("distill") or {}, resolve=True))
    teacher_run = read_run(distill["teacher"], prefer="best") if distill else None

    # data: set up here to learn num_classes / vocab_size (Lightning calls setup again, cheaply)
    extra = {"teacher_max_length": teacher_length(teacher_run)} if teacher_run else {}
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all", **extra)
    datamodule.prepare_data()
    datamodule.setup("fit")
    if cfg.get("test_after_fit", True) and not datamodule.split_sizes["test"]:
        raise DataError("the test split is empty, so this run would train and then have nothing "
                        "to be tested on; fix: raise data.test_fraction, give the data set a test "
                        "split or more examples, or set test_after_fit=false.")

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    attention_cfg, notes = fit_attention_to_length(
        OmegaConf.to_container(cfg.attention, resolve=True), int(model_cfg["max_length"]))
    module = ArenaClassifier(
        vocab_size=datamodule.vocab_size, num_classes=datamodule.num_classes, model=model_cfg,
        attention=attention_cfg, data_name=cfg.data.name, max_length=cfg.data.max_length,
        class_names=datamodule.class_names, distill=distill,
        **OmegaConf.to_container(cfg.optim, resolve=True),
    )
    if cfg.get("init_from"):
        notes += init_encoder(module.model, str(cfg.init_from), datamodule, model_cfg)
    if teacher_run is not None:
        teacher = load_teacher(teacher_run, datamodule.tokenizer, datamodule.vocab_size,
                               datamodule.class_names, cfg.data.name)
        module.set_teacher(teacher.model)
        notes.append(f"distilled from {teacher.description}, alpha {distill['alpha']}, "
                     f"temperature {distill['temperature']}")
        print(f"[arena] {notes[-1]}", flush=True)
    if cfg.get("compile"):
        module.model.compile()  # in place: checkpoints keep the plain parameter names
    trainer = build_trainer(cfg, run_dir)
    if _global_rank() == 0:
        datamodule.save_tokenizer(run_dir)  # so that a checkpoint works on new text

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    if ckpt_path:  # fail early, with a clear message, on a checkpoint of another model
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
        check_checkpoint_compatible(saved.get("hyper_parameters", {}), module.hparams, ckpt_path)
        del saved
        print(f"[arena] resuming from {ckpt_path}", flush=True)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_metrics = dict(trainer.callback_metrics)
    metrics: dict[str, Any] = {
        "parameters": module.model.num_parameters(),
        "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step),
        "train_tokens_per_s": _float(fit_metrics, "train/tokens_per_s_epoch"),
        "peak_memory_mb": _float(fit_metrics, "sys/peak_memory_mb"),
        "val_acc": _float(fit_metrics, "val/acc"), "val_f1": _float(fit_metrics, "val/f1"),
        "notes": notes, "tokenizer": datamodule.tokenizer.name,
        "data_stats": datamodule.data_stats(),
    }
    last = run_dir / "checkpoints" / "last.ckpt"
    if metrics["steps"] == 0 and last.exists():  # ddp_spawn keeps the loop state in its workers
        saved = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
        metrics["epochs"], metrics["steps"] = int(saved["epoch"]) + 1, int(saved["global_step"])
    if cfg.get("test_after_fit", True):
        metrics.update(evaluate_best(trainer, module, datamodule, run_dir, metrics))
    return metrics


def init_encoder(model, path: str, datamodule, model_cfg: dict[str, Any]) -> list[str]:
    """``init_from=<run>``: copy the encoder of a pretraining (or any trained) run into ``model``,
    its classifier head left fresh (:func:`attention_arena.transfer.load_encoder`); the report
    lines (printed, and kept in metrics.json's notes)."""
    run = read_run(hydra.utils.to_absolute_path(path), prefer="best")
    check_same_tokenizer(run, datamodule.tokenizer, datamodule.vocab_size, "init_from run")
    check_encoder_shape(run, model_cfg, "init_from run")
    report = load_encoder(model, run.model_state(), where=str(run.checkpoint))
    lines = [f"init_from {run.checkpoint}: {line}" for line in report.lines()]
    for line in lines:
        print(f"[arena] {line}", flush=True)
    return lines


def evaluate_best(trainer, module, datamodule, run_dir: Path, fit: dict[str, Any]
                  ) -> dict[str, Any]:
    """Validate and test the best checkpoint (the final weights if there is none), and write its
    ``predictions.csv`` (global rank 0): the val/test metrics of metrics.json."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best if best and Path(best).exists() else None
    if ckpt is None:
        print("[arena] no best checkpoint: evaluating the final weights", flush=True)
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    test = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    val, test = (val[0] if val else {}), (test[0] if test else {})
    metrics = {"val_acc": _float(val, "val/acc"), "val_f1": _float(val, "val/f1"),
               "test_acc": _float(test, "test/acc"), "test_f1": _float(test, "test/f1")}
    mem = _float(dict(trainer.callback_metrics), "sys/peak_memory_mb")
    if mem is not None:
        metrics["peak_memory_mb"] = max(mem, fit.get("peak_memory_mb") or 0.0)
    if trainer.is_global_zero:
        if ckpt is not None:
            state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
            module.load_state_dict(state)
        module.to(trainer.strategy.root_device)
        with trainer.precision_plugin.test_step_context():
            write_predictions(run_dir / "predictions.csv", module, datamodule)
    return metrics


def write_predictions(path: Path, module, datamodule) -> None:
    """``predictions.csv``: ``split,index,id,label,pred,prob_0..prob_{C-1}``, one row per val and
    test example in dataset order (``pred`` = argmax of the logits, ``prob_c`` = softmax)."""
    num_classes = int(module.hparams.num_classes)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "index", "id", "label", "pred",
                         *(f"prob_{c}" for c in range(num_classes))])
        for split, loader in (("val", datamodule.val_dataloader()),
                              ("test", datamodule.test_dataloader())):
            logits, labels = module.predict_logits(loader)  # (N, C), (N,)
            ids = datamodule.example_ids(split)
            if len(ids) != len(labels):
                raise RuntimeError(f"{split}: {len(ids)} example ids for {len(labels)} examples")
            probs = logits.softmax(-1).tolist()
            for i, (id_, label, pred) in enumerate(
                    zip(ids, labels.tolist(), logits.argmax(-1).tolist(), strict=True)):
                writer.writerow([split, i, id_, label, pred, *(f"{p:.6g}" for p in probs[i])])


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """``metrics.json``: :data:`METRIC_KEYS` then :data:`RUN_KEYS` (missing ones: null)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {key: metrics.get(key) for key in (*METRIC_KEYS, *RUN_KEYS)}
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(run_dir / "metrics.json")  # atomic: a reader never sees half a file


def job_label(metrics: dict[str, Any]) -> str:
    """``linformer L512 seed 1`` (no length for a job that reads whole texts)."""
    length = "" if metrics.get("max_length") is None else f" L{metrics['max_length']}"
    return f"{metrics.get('attention')}{length} seed {metrics.get('seed')}"


def failure_line(metrics: dict[str, Any]) -> str:
    return (f"[arena] ERROR ({metrics.get('attention')}, {metrics.get('data')}, run dir "
            f"{metrics.get('run_dir')}): {metrics.get('error')}")


def run_job(cfg: DictConfig, work: Callable[[DictConfig], dict[str, Any]] | None = None,
            identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """One job: ``work(cfg)`` (default :func:`train`) with its bookkeeping. ``metrics.json``
    says ``running`` from the start, then ``ok`` with the metrics or ``failed`` with the one-line
    error (written by global rank 0); then the job's wandb run and process group are closed.
    Returns the metrics. ``identity`` replaces what the job is (``attention``, ``max_length``,
    ``kind``; default: the configured backend and length, kind ``model``).

    An :class:`Interrupted` (or other non-``Exception``) is recorded, then re-raised.
    """
    raise_if_interrupted()  # a signal whose exception got lost: start no further job
    start = time.time()
    run_dir = run_directory(cfg)
    overrides, _ = _hydra_info()
    position = job_position()
    metrics: dict[str, Any] = {
        "status": "running", "run_dir": str(run_dir), "overrides": overrides, "kind": "model",
        "job": None if position is None else {"num": position.num, "total": position.total},
    }
    error: BaseException | None = None
    try:
        metrics.update({"attention": cfg.attention.name, "data": cfg.data.name,
                        "max_length": int(cfg.data.max_length), "seed": int(cfg.seed),
                        **(identity or {})})
        if _global_rank() == 0:
            print(f"{position or '[arena]'} {job_label(metrics)} ({metrics['data']}): started "
                  f"in {run_dir}", flush=True)
            write_metrics(run_dir, metrics)
            (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        with open_dict(cfg):
            cfg.output_dir = str(run_dir)
        metrics.update((work or train)(cfg), status="ok")
    except BaseException as err:  # noqa: BLE001 - a job reports its own failure (module doc)
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        # Lightning raises SIGTERMException on SIGTERM if our handler's exception got lost
        error = Interrupted(signal.SIGTERM) if isinstance(err, SIGTERMException) else err
        metrics.update(status="failed", error=_one_line(error))
    metrics["wall_time_s"] = round(time.time() - start, 3)
    metrics = {key: metrics.get(key) for key in (*METRIC_KEYS, *RUN_KEYS)}
    rank = _global_rank()  # known for sure only now (DDP sets it while fitting)
    if rank == 0:
        write_metrics(run_dir, metrics)
        if error is not None:
            (run_dir / "error.log").write_text("".join(
                traceback.format_exception(type(error), error, error.__traceback__)))
    _finish_wandb()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

    if error is not None:
        print(failure_line(metrics), file=sys.stderr, flush=True)
        if not isinstance(error, Exception):  # interrupted: stop the sweep too
            if position is not None and rank == 0:
                print(f"[arena] sweep interrupted; run its unfinished jobs with: "
                      f"arena-compare-run --resume {position.sweep_dir}", file=sys.stderr,
                      flush=True)
            raise error
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("ARENA_RAISE") == "1":
            raise error
    elif rank == 0:
        shown = ("attention", "data", "max_length", "parameters", "epochs", "steps", "val_acc",
                 "val_f1", "test_acc", "test_f1", "train_tokens_per_s", "peak_memory_mb")
        print(f"\n{position or '[arena]'} finished {job_label(metrics)} in "
              f"{metrics['wall_time_s']:.1f} s ({run_dir})\n"
              + format_table({k: metrics[k] for k in shown}), flush=True)
    return metrics


class ExitStatus(Callback):
    """Hydra callback: at the end of a run or a sweep, exit with status 1 if any of its jobs did
    not finish ``ok``. It reads the jobs' ``metrics.json``, so it also covers launchers that run
    the jobs in other processes (submitit)."""

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._exit_if_failed([Path(str(config.hydra.runtime.output_dir))], several=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            dirs = [job.run_dir for job in sweep_jobs(sweep_dir)]
        except ValueError:  # a sweeper without a grid (optuna): every job directory
            dirs = [p.parent for p in sweep_dir.glob("*/metrics.json")]
        self._exit_if_failed(dirs, several=True)

    @staticmethod
    def _exit_if_failed(dirs: list[Path | None], several: bool) -> None:
        if _global_rank() != 0:
            return
        failed = []
        for run_dir in dirs:
            metrics = (read_metrics(run_dir) if run_dir else None) or {}
            if metrics.get("status") != "ok":
                failed.append(failure_line(metrics) if metrics.get("error") else
                              f"[arena] NOT FINISHED: {run_dir or 'a job that never started'}")
        if failed:
            if several:
                print(f"[arena] {len(failed)} of {len(dirs)} job(s) failed:\n" +
                      "\n".join(failed), file=sys.stderr, flush=True)
            raise SystemExit(1)


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
    return run_job(cfg).get("val_acc")  # the objective for sweepers (e.g. optuna)


def main(app: Callable[[], Any] | None = None) -> None:
    """Console entry point (``arena-train``): the Hydra app (``app``, default this module's).
    Exit status 1 if a job failed (:class:`ExitStatus`), 128 + N if signal N (SIGINT, SIGTERM)
    interrupted it."""
    handler = InterruptHandler()
    with handler.installed():
        try:
            (app or hydra_main)()
        except (Interrupted, SystemExit):  # SystemExit: ExitStatus, or Lightning on SIGTERM
            if handler.signum is None:
                raise
    if handler.signum is not None:
        print(f"[arena] stopped by {signal.Signals(handler.signum).name}", file=sys.stderr,
              flush=True)
        sys.exit(128 + handler.signum)


if __name__ == "__main__":
    main()
