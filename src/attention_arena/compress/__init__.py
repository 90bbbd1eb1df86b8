"""Making a trained model cheaper: bf16, int8 dynamic quantization, magnitude pruning and
structured head pruning, measured side by side on the run's test split (``arena-compress``).

    >>> from attention_arena.compress import compress_run, load_compressed
    >>> rows, meta, paths = compress_run("outputs/my_run", "fp32,int8,heads50")  # doctest: +SKIP
    >>> model = load_compressed("outputs/my_run/compress/models/int8.pt")       # doctest: +SKIP

The pieces: :mod:`.run` (a trained run read back), :mod:`.recipes` (the variants, head
importance, save / load), :mod:`.measure` (latency, memory), :mod:`.report` (the table).
"""

from .cli import DEFAULT_VARIANTS, compress_run, finetune, main
from .recipes import (
    DTYPES,
    INT8_DEFAULT,
    Variant,
    apply_variant,
    convert_dtype,
    head_importance,
    load_compressed,
    magnitude_prune,
    make_permanent,
    parse_variant,
    prune_heads,
    prune_variant,
    save_compressed,
    sparsity,
)
from .run import Run, RunError, load_run

__all__ = [
    "DEFAULT_VARIANTS", "DTYPES", "INT8_DEFAULT", "Run", "RunError", "Variant", "apply_variant",
    "compress_run", "convert_dtype", "finetune", "head_importance", "load_compressed",
    "load_run", "magnitude_prune", "main", "make_permanent", "parse_variant", "prune_heads",
    "prune_variant",
    "save_compressed", "sparsity",
]
