"""Why did a model decide: attention maps of every backend, word attributions (Integrated
Gradients, KernelSHAP, LIME, attention, rollout), an HTML report and a faithfulness test.

    from attention_arena.explain import record_attention, load_run, explain
    with record_attention(model) as maps:   # one (B, H, N, N) map per layer, only while active
        model(input_ids, padding_mask)
"""

from .attributions import METHODS, Explanation, explain, to_words
from .maps import MAX_MAP_LENGTH, attention_modules, attention_rollout, record_attention
from .run import Document, Run, RunError, group_into_words, load_run

__all__ = [
    "MAX_MAP_LENGTH", "METHODS", "Document", "Explanation", "Run", "RunError",
    "attention_modules", "attention_rollout", "explain", "group_into_words", "load_run",
    "record_attention", "to_words",
]
