"""attention-arena: train and compare efficient attention backends on long documents.

The attention modules live in :mod:`attention_arena.attention`; the command-line tools are
``arena-train``, ``arena-bench``, ``arena-compare`` and ``arena-compare-run``.
"""

__version__ = "0.1.0"
