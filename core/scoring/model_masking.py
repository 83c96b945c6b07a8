"""Which of the implicit scorer's layouts are exact for a model's kind of attention: the one place that
decides it, for the CPU tree rows (core.scoring.pair_tree), packing (core.scoring.packing) and the padded
shared-prompt batches (core.scoring.logprobs). tests/test_attention_kinds.py checks every layout against a
plain forward for each kind (full, grouped-query, sliding-window, mixed sliding/full, ALiBi).

- Tree rows and packing encode a pair's structure in the mask and the position ids they pass. A model that
  also masks by itself (a sliding window, chunked or hybrid layers) would see its own mask override or add
  to ours, and one whose positions come from the token's index in the sequence (ALiBi) would measure a
  response's distance to its prompt across the other response: both refuse such models
  (`mask_driven_refusal`), and the scorer falls back to the shared-prompt layout.
- Padded shared-prompt batches right-pad prompts, so a continuation's KV-cache slot is its position plus
  the padding of its prompt. Attention that counts slots -- a window or chunk narrower than the padded row,
  ALiBi built from the slot index (MPT's) -- then sees the wrong context; such a batch is scored in groups
  of equal prompt length (`prompt_padding_exact`). Bloom's and Falcon's ALiBi count only the tokens the
  2-D mask keeps, so padding leaves them exact.
"""

from __future__ import annotations

import inspect
from typing import Any

# ALiBi models whose bias is built from the running count of the 2-D attention mask (padding not counted).
_ALIBI_FROM_MASK = ("bloom", "falcon")


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


def alibi(model: Any) -> bool:
    """Whether the model adds an ALiBi bias (from token indices) instead of taking position ids."""
    config = text_config(model)
    return bool(getattr(config, "alibi", False) or getattr(getattr(config, "attn_config", None), "alibi", False)
                or getattr(config, "position_embedding_type", None) == "alibi"
                or getattr(config, "model_type", None) in ("bloom", "mpt"))


def mask_driven_refusal(model: Any) -> str | None:
    """None when a given 4-D mask and position ids are all that decide what each token sees and where it
    is (what tree rows and packing need); otherwise why not."""
    masking = own_masking(model)
    if masking:
        return masking
    if alibi(model):
        return "ALiBi position bias (from the token's index, not from position ids)"
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return "a forward that takes no position ids"
    return None


def slot_window(model: Any) -> int | None:
    """The narrowest sliding window or attention chunk of any layer, counted in KV-cache slots; None: none."""
    config = text_config(model)
    sizes = []
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        sizes.append(int(config.sliding_window))
    if getattr(config, "attention_chunk_size", None):
        sizes.append(int(config.attention_chunk_size))
    return min(sizes) if sizes else None


def prompt_padding_exact(model: Any, width: int) -> bool:
    """Whether right-padding the prompts of a batch whose rows span `width` KV-cache slots (padded prompt
    plus padded continuation) leaves every token's context as it is unpadded."""
    if alibi(model) and getattr(text_config(model), "model_type", None) not in _ALIBI_FROM_MASK:
        return False
    window = slot_window(model)
    # A window that holds the whole row never drops a token, wherever the padding sits.
    return window is None or width <= window


def attention_layers(model: Any) -> int:
    """How many attention calls one forward makes (every layer is one, where `own_masking` is None)."""
    return int(text_config(model).num_hidden_layers)
