"""A trained run read back: its config, checkpoint, model and data (the test split it was scored
on, with the tokenizer it was trained with)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..model import TransformerClassifier
from ..runs import RunError, read_config
from ..runs import find_checkpoint as find_run_checkpoint


@dataclass
class Run:
    """A trained ``arena-train`` run: ``run_dir``, the ``checkpoint`` used, the module's
    ``hparams`` (``vocab_size``, ``num_classes``, ``model``, ``attention``, ...) and the run's
    composed config ``cfg``."""

    run_dir: Path
    checkpoint: Path
    hparams: dict[str, Any]
    cfg: DictConfig
    state_dict: dict[str, torch.Tensor]

    @property
    def model_args(self) -> dict[str, Any]:
        """Keyword arguments of :class:`TransformerClassifier` that rebuild the run's model."""
        hp = self.hparams
        return {"vocab_size": int(hp["vocab_size"]), "num_classes": int(hp["num_classes"]),
                "attention": dict(hp["attention"]), **dict(hp["model"])}

    @property
    def max_length(self) -> int:
        """Tokens per document the run was trained and tested with (``data.max_length``)."""
        return int(self.cfg.data.max_length)

    def load_model(self) -> TransformerClassifier:
        """A fresh fp32 copy of the run's model with the checkpoint's weights, in eval mode."""
        model = TransformerClassifier(**self.model_args)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def datamodule(self):
        """The run's data module, set up; a clear error if its tokenizer, vocabulary or classes
        differ from the ones the run was trained with (e.g. a changed data cache)."""
        import hydra

        from ..data import load_tokenizer
        from ..data.tokenizer import tokenizer_to_json

        dm = hydra.utils.instantiate(self.cfg.data, _convert_="all")
        dm.prepare_data()
        dm.setup("test")
        saved = self.run_dir / "tokenizer.json"
        if saved.is_file() and tokenizer_to_json(load_tokenizer(saved)) != \
                tokenizer_to_json(dm.tokenizer):
            raise RunError(f"the data module rebuilt from {self.run_dir} has another tokenizer "
                           f"than the run saved in {saved}; rebuild the data cache the run used "
                           "(same data.* and tokenizer.* settings) or retrain the run")
        for key, value in (("vocab_size", dm.vocab_size), ("num_classes", dm.num_classes)):
            if int(self.hparams[key]) != int(value):
                raise RunError(f"{key}: the checkpoint has {self.hparams[key]}, the data module "
                               f"rebuilt from the run's config has {value}; the data changed "
                               "since training: retrain the run")
        return dm


def find_checkpoint(run_dir: Path, checkpoint: str = "best") -> Path:
    """``best`` (``checkpoints/best*.ckpt``, else ``last.ckpt``), ``last``, or a path."""
    if checkpoint in ("best", "last"):
        return find_run_checkpoint(run_dir, checkpoint)[0]
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise RunError(f"checkpoint {checkpoint} does not exist; pass best, last or the path "
                       "of a .ckpt file")
    return path


def load_run(run_dir: str | Path, checkpoint: str = "best") -> Run:
    """Read the run in ``run_dir`` (its best checkpoint by default)."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist; pass the directory of an "
                       "arena-train run (it holds checkpoints/ and .hydra/)")
    cfg = read_config(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    hparams = dict(saved.get("hyper_parameters") or {})
    missing = [k for k in ("vocab_size", "num_classes", "model", "attention") if k not in hparams]
    if missing or "state_dict" not in saved:
        raise RunError(f"{path} is not an arena-train checkpoint (missing "
                       f"{', '.join(missing) or 'state_dict'})")
    state = {k.removeprefix("model."): v for k, v in saved["state_dict"].items()
             if k.startswith("model.")}
    return Run(run_dir, path, hparams, cfg, state)
