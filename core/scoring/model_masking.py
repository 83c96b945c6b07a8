"""Whether a model's attention masking is only what the scorer passes: what both of the implicit
scorer's mask-driven layouts need, the CPU tree rows (core.scoring.pair_tree) and the CUDA packing
(core.scoring.packing). A model that also masks by itself (a sliding window, chunked or hybrid layers)
would see its own mask override or add to ours, and score each response against the wrong context.
"""

from __future__ import annotations

from typing import Any


def text_config(model: Any) -> Any:
    """The language model's config (a multimodal model's holds it as its text config)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def own_masking(model: Any) -> str | None:
    """None when every layer is full attention under the mask it is given; otherwise what else masks."""
    config = text_config(model)
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    other = sorted({str(t) for t in getattr(config, "layer_types", None) or ()} - {"full_attention"})
    if other:
        return f"layers of type {', '.join(other)}"
    return None


def attention_layers(model: Any) -> int:
    """How many attention calls one forward makes (every layer is one, where `own_masking` is None)."""
    return int(text_config(model).num_hidden_layers)
