"""The ways to make a trained :class:`~attention_arena.model.TransformerClassifier` cheaper, and
the file format that saves and reloads the result.

A *variant* is named by ``+``-joined steps (``heads50+int8``), applied in this order:

1. ``heads<P>``: structured head pruning: in every layer the P% least important heads are
   removed (at least one head stays), shrinking ``q/k/v_proj`` and ``out_proj``
   (:meth:`~attention_arena.attention.SelfAttention.prune_heads`);
2. ``prune<P>``: global magnitude pruning: the P% smallest-magnitude weights of all Linear layers
   of the Transformer blocks (attention projections and MLPs; not the embeddings, LayerNorms or
   the classifier) are zeroed, by ``torch.nn.utils.prune.global_unstructured``; the tensors
   stay dense;
3. ``ft<N>``: fine-tune N epochs on the training split (pruning masks kept, so pruned weights
   stay zero), before the masks are made permanent;
4. one number format: ``fp32`` (as trained), ``bf16`` (every weight in bfloat16), ``int8``
   (:data:`INT8_DEFAULT`), ``int8_dynamic`` (``torch.ao.quantization.quantize_dynamic``, per-channel
   int8 weights, activations quantized on the fly) or ``int8_torchao`` (torchao's
   ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``). int8 covers every
   ``nn.Linear`` (the blocks' and the classifier's: int8 weights, per output channel, and int8
   activations, per tensor for ``int8_dynamic`` and per row for torchao) and the embedding
   tables (int8 weights per row, weight-only: a lookup has no arithmetic to speed up, but the
   table of a BPE vocabulary is most of a small model's bytes).

Head importance (:func:`head_importance`): ``gradient`` (default), Michel, Levy & Neubig (2019),
"Are Sixteen Heads Really Better than One?": a gate ξₕ = 1 multiplies each head's output, and
Iₕ = mean over training documents of |∂L/∂ξₕ| (L the cross-entropy of that document), the
first-order loss change when the head is removed; ``norm``: the Frobenius norm of the head's
columns of ``out_proj`` (no data needed).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune

from ..model import TransformerClassifier

DTYPES = ("fp32", "bf16", "int8_dynamic", "int8_torchao")
#: what ``int8`` means: measured faster than torchao's int8 path on this project's 2-core x86 CPU
#: (README, "Making models cheaper"), at the same accuracy
INT8_DEFAULT = "int8_dynamic"
IMPORTANCE = ("gradient", "norm")
FORMAT = "attention-arena-compressed/1"


@dataclass(frozen=True)
class Variant:
    """One way to compress: ``heads`` / ``magnitude`` = fraction of heads per layer / of block
    weights removed (None = not pruned), ``finetune`` epochs after pruning, and a number format
    ``dtype`` (:data:`DTYPES`)."""

    name: str
    heads: float | None = None
    magnitude: float | None = None
    dtype: str = "fp32"
    finetune: int = 0

    @property
    def pruned(self) -> bool:
        return self.heads is not None or self.magnitude is not None

    @property
    def structure(self) -> tuple:
        """What the variant is before its number format (variants that share it share the
        pruned, fine-tuned model)."""
        return self.heads, self.magnitude, self.finetune


def parse_variant(name: str) -> Variant:
    """``"heads50+int8"`` -> ``Variant(heads=0.5, dtype="int8_dynamic")``; a clear error for an
    unknown step or two steps of one kind."""
    heads = magnitude = dtype = None
    finetune = 0
    for step in name.strip().split("+"):
        match = re.fullmatch(r"(heads|prune)(\d{1,2})", step)
        epochs = re.fullmatch(r"ft(\d+)", step)
        if epochs:
            if finetune:
                raise ValueError(f"variant {name!r} has two ft steps; keep one")
            finetune = int(epochs[1])
        elif match:
            kind, fraction = match[1], int(match[2]) / 100
            if fraction <= 0:
                raise ValueError(f"variant {name!r}: {step} prunes nothing; use 1..99")
            if (heads if kind == "heads" else magnitude) is not None:
                raise ValueError(f"variant {name!r} has two {kind} steps; keep one")
            if kind == "heads":
                heads = fraction
            else:
                magnitude = fraction
        elif step in (*DTYPES, "int8"):
            if dtype is not None:
                raise ValueError(f"variant {name!r} has two number formats ({dtype}, {step}); "
                                 "keep one")
            dtype = INT8_DEFAULT if step == "int8" else step
        else:
            raise ValueError(f"unknown variant step {step!r} in {name!r}; valid steps: "
                             f"{', '.join(DTYPES)}, int8 (= {INT8_DEFAULT}), prune<P>, heads<P> "
                             "(P = percent removed, 1..99), ft<N> (fine-tune N epochs after "
                             "pruning), joined by '+', e.g. heads50+ft1+int8")
    if finetune and heads is None and magnitude is None:
        raise ValueError(f"variant {name!r}: ft{finetune} fine-tunes after pruning, but the "
                         "variant prunes nothing; add heads<P> or prune<P>")
    return Variant(name.strip(), heads, magnitude, dtype or "fp32", finetune)


# --- structured head pruning ------------------------------------------------------------------

def _attentions(model: TransformerClassifier) -> list[nn.Module]:
    return [block.attn for block in model.blocks]


@torch.no_grad()
def _norm_importance(model: TransformerClassifier) -> Tensor:
    rows = []
    for attn in _attentions(model):
        w = attn.out_proj.weight.float()  # (D, H·d)
        rows.append(w.unflatten(1, (attn.num_heads, attn.head_dim)).pow(2).sum((0, 2)).sqrt())
    return torch.stack(rows)


def _gradient_importance(model: TransformerClassifier,
                         batches: Iterable[Mapping[str, Tensor]]) -> Tensor:
    attns = _attentions(model)
    gates: list[Tensor | None] = [None] * len(attns)
    total = torch.zeros(len(attns), attns[0].num_heads)
    docs = 0

    def gate_hook(i: int):
        def hook(module, args):  # the merged heads (B, N, H·d) on their way into out_proj
            (x,) = args
            attn = attns[i]
            gates[i] = torch.ones(x.shape[0], attn.num_heads, dtype=x.dtype,
                                  requires_grad=True)
            heads = x.unflatten(-1, (attn.num_heads, attn.head_dim))  # (B, N, H, d)
            return ((heads * gates[i][:, None, :, None]).flatten(-2),)
        return hook

    handles = [attn.out_proj.register_forward_pre_hook(gate_hook(i))
               for i, attn in enumerate(attns)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            logits = model(batch["input_ids"], batch["padding_mask"])
            # summed loss: ∂/∂ξ[b, h] is document b's own gradient (documents are independent)
            loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
            grads = torch.autograd.grad(loss, gates)
            total += torch.stack([g.abs().sum(0) for g in grads]).float()
            docs += batch["labels"].shape[0]
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if docs == 0:
        raise ValueError("gradient head importance needs at least one batch of documents")
    return total / docs


def head_importance(model: TransformerClassifier, method: str = "gradient",
                    batches: Iterable[Mapping[str, Tensor]] = ()) -> Tensor:
    """Importance (L, H) of every head of every layer (module docstring); ``batches`` (dicts of
    ``input_ids``, ``padding_mask``, ``labels``) are needed for ``gradient``."""
    if method == "gradient":
        return _gradient_importance(model, batches)
    if method == "norm":
        return _norm_importance(model)
    raise ValueError(f"unknown head importance {method!r}; valid: {', '.join(IMPORTANCE)}")


def prune_heads(model: TransformerClassifier, fraction: float, importance: Tensor
                ) -> list[list[int]]:
    """Remove the ``fraction`` least important heads of every layer (⌊fraction · H + ½⌋,
    keeping at least one) by ``importance`` (L, H); returns the kept heads of each layer."""
    kept = []
    for attn, scores in zip(_attentions(model), importance, strict=True):
        n_keep = max(1, attn.num_heads - math.floor(fraction * attn.num_heads + 0.5))
        keep = sorted(scores.topk(n_keep).indices.tolist())
        attn.prune_heads(keep)
        kept.append(keep)
    return kept


# --- magnitude pruning ------------------------------------------------------------------------

def block_linears(model: TransformerClassifier) -> list[nn.Linear]:
    """The Linear layers of the Transformer blocks (what magnitude pruning prunes)."""
    return [m for m in model.blocks.modules() if isinstance(m, nn.Linear)]


def magnitude_prune(model: TransformerClassifier, amount: float) -> None:
    """Zero the ``amount`` fraction of smallest |w| over all block Linear weights jointly. The
    zeros are kept by pruning masks (so a fine-tune keeps them) until :func:`make_permanent`."""
    params = [(m, "weight") for m in block_linears(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)


def make_permanent(model: TransformerClassifier) -> None:
    """``prune.remove`` every pruning mask: plain weights with the zeros in them."""
    for module in model.modules():
        masks = [name for name, _ in module.named_buffers(recurse=False)
                 if name.endswith("_mask")]
        for name in masks:  # "weight_mask": the mask of "weight"
            prune.remove(module, name.removesuffix("_mask"))


def sparsity(model: TransformerClassifier) -> float:
    """Fraction of zeros among the block Linear weights."""
    weights = [m.weight for m in block_linears(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


# --- number formats ---------------------------------------------------------------------------

def convert_dtype(model: TransformerClassifier, dtype: str) -> TransformerClassifier:
    """``model`` in number format ``dtype`` (:data:`DTYPES`), in place (returned)."""
    if dtype == "fp32":
        return model.float()
    if dtype == "bf16":
        return model.to(torch.bfloat16)
    if dtype == "int8_dynamic":
        with warnings.catch_warnings():  # the eager API is deprecated but still runs
            warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
            qconfigs = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig,
                        nn.Embedding: torch.ao.quantization.float_qparams_weight_only_qconfig}
            return torch.ao.quantization.quantize_dynamic(model, qconfigs, inplace=True)
    if dtype == "int8_torchao":
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
        from torchao.quantization.granularity import PerRow

        quantize_(model, Int8DynamicActivationInt8WeightConfig())  # every nn.Linear
        quantize_(model, Int8WeightOnlyConfig(granularity=PerRow()),
                  filter_fn=lambda module, _: isinstance(module, nn.Embedding))
        return model
    raise ValueError(f"unknown number format {dtype!r}; valid: {', '.join(DTYPES)}")


def prune_variant(model: TransformerClassifier, variant: Variant,
                  importance: Tensor | None = None,
                  finetune: Callable[[TransformerClassifier, int], None] | None = None
                  ) -> dict[str, Any]:
    """The pruning steps of ``variant`` on ``model`` (fp32, eval), in place: heads, magnitude,
    then ``finetune(model, epochs)`` if the variant asks for epochs, then the masks made
    permanent. Returns ``heads_kept`` (the kept heads of each layer, or None), ``params``,
    ``nonzero_params`` and the block weights' ``sparsity``. ``importance`` (L, H) is needed for
    head pruning."""
    heads_kept = None
    if variant.heads is not None:
        if importance is None:
            raise ValueError(f"variant {variant.name}: head pruning needs the head importance")
        heads_kept = prune_heads(model, variant.heads, importance)
    if variant.magnitude is not None:
        magnitude_prune(model, variant.magnitude)
    if variant.finetune:
        if finetune is None:
            raise ValueError(f"variant {variant.name} asks for a fine-tune but no fine-tuning "
                             "function was given")
        finetune(model, variant.finetune)
    make_permanent(model)
    model.eval()
    params = list(model.parameters())
    return {"heads_kept": heads_kept, "params": sum(p.numel() for p in params),
            "nonzero_params": sum(int((p != 0).sum()) for p in params),
            "sparsity": sparsity(model)}


def apply_variant(model: TransformerClassifier, variant: Variant,
                  importance: Tensor | None = None,
                  finetune: Callable[[TransformerClassifier, int], None] | None = None
                  ) -> dict[str, Any]:
    """Compress ``model`` (fp32, eval) in place as ``variant`` says: :func:`prune_variant`,
    then :func:`convert_dtype`. Returns the recipe that :func:`save_compressed` records
    (``variant``, ``dtype``, ``heads_kept``) with the counts of :func:`prune_variant`."""
    recipe = {"variant": variant.name, "dtype": variant.dtype,
              **prune_variant(model, variant, importance, finetune)}
    convert_dtype(model, variant.dtype)
    return recipe


# --- save and load ----------------------------------------------------------------------------

def save_compressed(model: TransformerClassifier, path: str | Path, recipe: Mapping[str, Any],
                    model_args: Mapping[str, Any]) -> int:
    """Write the compressed model to ``path`` (one ``torch.save`` file: the recipe, the model's
    constructor arguments and its state dict); returns the file size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "variant": recipe["variant"], "dtype": recipe["dtype"],
                "heads_kept": recipe["heads_kept"], "model_args": dict(model_args),
                "state_dict": model.state_dict()}, path)
    return path.stat().st_size


def load_compressed(path: str | Path) -> TransformerClassifier:
    """A model saved by ``arena-compress`` (``<out>/models/<variant>.pt``), ready for inference:
    the run's architecture is rebuilt, the saved heads are pruned, the number format applied,
    and the saved weights loaded (eval mode, CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compressed model at {path}; arena-compress writes them to "
                                "<out>/models/<variant>.pt")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a model saved by arena-compress ({FORMAT})")
    model = TransformerClassifier(**saved["model_args"]).eval()
    if saved["heads_kept"] is not None:
        for attn, keep in zip(_attentions(model), saved["heads_kept"], strict=True):
            attn.prune_heads(keep)
    convert_dtype(model, saved["dtype"])
    model.load_state_dict(saved["state_dict"])
    return model
