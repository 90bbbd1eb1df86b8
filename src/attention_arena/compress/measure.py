"""What a variant costs and how well it classifies: test predictions, CPU latency per document,
the attention blocks' share of it, and peak memory.

Latency inputs are random token ids of exactly the asked length with an all-False padding mask
(the path real batches take); the time of a call is the median of ``repeats`` timed calls after
``warmup`` untimed ones (:func:`time_interleaved`: every variant in turn), per document.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from ..model import TransformerClassifier, sinusoidal_positions
from ..utils import proc_status_kb, reset_peak_rss


@torch.inference_mode()
def predict(model: TransformerClassifier, loader: Iterable[Mapping[str, Tensor]]
            ) -> tuple[list[int], list[int]]:
    """Predicted and true labels of every document of ``loader``, in order."""
    preds, labels = [], []
    for batch in loader:
        logits = model(batch["input_ids"], batch["padding_mask"])
        preds += logits.argmax(-1).tolist()
        labels += batch["labels"].tolist()
    return preds, labels


def extend_positions(model: TransformerClassifier, length: int) -> str | None:
    """Let ``model`` read ``length`` tokens if it can: a sinusoidal table is extended (its first
    rows are unchanged, so shorter inputs give the same outputs). Returns why not, or None."""
    if length <= model.max_length:
        return None
    if model.positions != "sinusoidal":
        return (f"learned positions: the table has {model.max_length} rows, so inputs of "
                f"{length} tokens cannot be read")
    table = model.pos_table
    model.pos_table = sinusoidal_positions(length, table.shape[1]).to(table.dtype)
    model.max_length = length
    return None


def _inputs(model: TransformerClassifier, batch: int, length: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = model.tok_emb.num_embeddings
    ids = torch.randint(2, max(vocab, 3), (batch, length), generator=g)
    ids[:, 0] = 1  # CLS
    return ids, torch.zeros(batch, length, dtype=torch.bool)


def forward_call(model: TransformerClassifier, batch: int, length: int) -> Callable[[], None]:
    """One inference forward of the whole model on ``batch`` documents of ``length`` tokens."""
    ids, pad = _inputs(model, batch, length)

    def call() -> None:
        with torch.inference_mode():
            model(ids, pad)

    return call


def attention_call(model: TransformerClassifier, batch: int, length: int) -> Callable[[], None]:
    """The attention modules of all blocks (projections and core) on random inputs of the
    model's width, in its activation dtype."""
    dtype = model.ln_f.weight.dtype
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, model.ln_f.normalized_shape[0], generator=g).to(dtype)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    glob = pad.clone()
    glob[:, 0] = model.cls_global

    def call() -> None:
        with torch.inference_mode():
            for block in model.blocks:
                block.attn(x, key_padding_mask=pad, global_mask=glob)

    return call


def time_interleaved(calls: Mapping[str, Callable[[], None]], repeats: int = 5,
                     warmup: int = 1) -> dict[str, float]:
    """Median seconds of each call, timed in turns: ``warmup`` untimed calls of each, then
    ``repeats`` rounds that time every call once. Interleaving spreads any change in the
    machine's load over all of them, so their ratios stay fair on a shared machine."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _release_free_memory() -> None:
    gc.collect()
    try:  # return freed heap memory to the OS, so the next peak starts from a clean RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(model: TransformerClassifier, batch: int, length: int, repeats: int = 2
                   ) -> float | None:
    """Peak resident memory of one forward of ``batch`` documents of ``length`` tokens: the
    model's weights (the bytes of its state dict) plus the rise of the process's peak RSS
    (VmHWM, reset before the call; the smallest of ``repeats`` calls). None where Linux
    does not let the peak be reset."""
    ids, pad = _inputs(model, batch, length)
    rises = []
    for _ in range(repeats):
        _release_free_memory()
        before = proc_status_kb("VmRSS")
        if not reset_peak_rss() or not before:
            return None
        with torch.inference_mode():
            model(ids, pad)
        rises.append(max(0, proc_status_kb("VmHWM") - before))
    return (state_dict_bytes(model) / 2**10 + min(rises)) / 2**10


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of the tensors in the model's state dict (quantized weights as stored)."""
    total = 0
    for value in model.state_dict().values():
        total += _tensor_bytes(value)
    return total


def _tensor_bytes(value) -> int:
    if isinstance(value, tuple | list):
        return sum(_tensor_bytes(v) for v in value)
    if not isinstance(value, Tensor):
        return 0
    if value.is_quantized:
        return value.numel() * value.element_size()
    if type(value) is not Tensor and hasattr(value, "__tensor_flatten__"):  # torchao tensors
        names, _ = value.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(value, n)) for n in names)
    return value.numel() * value.element_size()
