"""Padding-free scoring: pairs packed into one row, each response a document of its own.

A pair becomes two documents, prompt + chosen and prompt + rejected, laid end to end in one row of
T real tokens with position ids restarting at 0 for each document. Attention stays inside a
document through `packed_attention`, registered with transformers' AttentionInterface as
"marginlens_packed": on CUDA in bf16/fp16 it is torch's variable-length flash kernel
(torch.nn.attention.varlen), which computes no padding and no cross-document block; elsewhere one
causal sdpa call per document. Both are exact against the per-pair computation (tests/test_packing.py).

The trade against the padded path (core.scoring.logprobs): a prompt is computed twice here and
once there, and there padding is computed. Short prompts and ragged responses favour packing;
bench/gpu_check.py measures both on the same pairs.

Layout of one pair (prompt [p0 p1], chosen [c0 EOS], rejected [r0 r1 EOS]):

    ids       p0 p1 c0 EOS | p0 p1 r0 r1 EOS
    positions  0  1  2  3  |  0  1  2  3  4
    scored        ^  ^     |     ^  ^  ^        hidden state at position i predicts token i+1

so a response of n tokens starting at offset o of the row is scored from hidden states o-1 .. o+n-2.

Why an attention function of our own: transformers (5.17 and 5.24 alike) detects packed rows from
position ids that restart at 0 (masking_utils.find_packed_sequence_indices) only when no attention
mask and no cache are passed, and then builds a block-diagonal causal mask; sdpa and eager compute
every block of it (a [T, T] mask, T^2 work), and only flash-attention kernels, a package we cannot
count on, skip the off-diagonal blocks. transformers passes the document boundaries
(`cu_seq_lens_q`, `max_length_q`) given to a model's forward on to its attention functions as
keyword arguments; `score_packed` checks that every layer's attention got them (`check_used`), so a
model whose attention ignores them, in any layer, fails loudly instead of attending across documents.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.model_masking import attention_layers, mask_driven_refusal, text_config
from marginlens.core.scoring.tokenization import TokenizedPair

ATTENTION_NAME = "marginlens_packed"
log = logging.getLogger(__name__)

# Which kernel packed attention used, per process (bench/gpu_check.py reports it).
KERNEL_CALLS: dict[str, int] = {"varlen_flash": 0, "sdpa_per_document": 0}
_varlen_failed: list[str] = []


def packed_cost(pair: TokenizedPair) -> int:
    """Real tokens this pair occupies packed: its prompt twice, each response once."""
    return 2 * len(pair.prompt) + len(pair.chosen) + len(pair.rejected)


def plan_packs(pairs: Sequence[TokenizedPair], token_budget: int, max_pairs: int) -> list[list[int]]:
    """Indices of `pairs` grouped into packs of at most `token_budget` real tokens, in length order.

    Length order is not needed for padding here; it keeps a plan deterministic and near-equal in
    size across packs, like the padded plan.
    """
    order = sorted(range(len(pairs)), key=lambda i: (packed_cost(pairs[i]), len(pairs[i].prompt)))
    packs: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        cost = packed_cost(pairs[i])
        if current and (len(current) >= max_pairs or used + cost > token_budget):
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += cost
    if current:
        packs.append(current)
    return packs


def supports_packing(model: Any) -> str | None:
    """None when `model` can be scored packed; otherwise why not."""
    config = text_config(model)
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ("sdpa", ATTENTION_NAME):
        return f"attention implementation {impl!r} (packing replaces sdpa only)"
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping"  # packed_attention's kernels do not cap
    # Also ALiBi: Falcon's bias rides on the mask, which packed_attention ignores (silently, every layer called).
    return mask_driven_refusal(model)


def enable_packing(model: Any) -> None:
    """Route the model's attention through `packed_attention` (sdpa, unchanged, when not packing)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, packed_attention)
    # Unpacked calls get the mask sdpa would get.
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    if model.config._attn_implementation != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: per-document causal attention when `cu_seq_lens_q` is given, sdpa
    otherwise. query [1, H, T, D], key/value [1, Hkv, T, D]; returns [1, T, H, D] like sdpa's."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.pop("cu_seq_lens_q", None)
    max_len = kwargs.pop("max_length_q", None)
    for k in ("cu_seq_lens_k", "max_length_k"):
        kwargs.pop(k, None)
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise MarginLensError("packed attention expects one packed row")
    groups = query.shape[1] // key.shape[1]
    # Grouped-query attention: every query head reads its key/value head (a copy, kept version-independent).
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if query.is_cuda and query.dtype in half_dtypes() and not _varlen_failed:
        try:
            out = _varlen(query, key, value, cu, int(max_len), scaling)
            if not _varlen_checked:
                _check_varlen(out, _per_document(query, key, value, cu.tolist(), scaling))
            KERNEL_CALLS["varlen_flash"] += 1
            return out, None
        except (RuntimeError, TypeError, ValueError, ImportError, AttributeError) as exc:
            # A torch without this kernel or with another signature: the exact fallback below.
            _varlen_failed.append(f"{type(exc).__name__}: {exc}")
            log.warning("varlen flash attention unavailable (%s); one sdpa call per document instead", exc)
    KERNEL_CALLS["sdpa_per_document"] += 1
    return _per_document(query, key, value, cu.tolist(), scaling), None


_varlen_checked: list[bool] = []


def _check_varlen(out: Any, reference: Any) -> None:
    """Once per process: the kernel agrees with per-document sdpa (a signature whose meaning changed
    between torch releases would otherwise go unnoticed)."""
    diff = (out.float() - reference.float()).abs().max().item()
    scale = reference.float().abs().max().item()
    if not diff <= 0.02 * max(scale, 1.0):  # bf16 rounding of two kernels, far below any masking error
        raise ValueError(f"varlen attention differs from per-document sdpa by {diff:.3g} (scale {scale:.3g})")
    _varlen_checked.append(True)


def half_dtypes() -> tuple[Any, ...]:
    import torch

    return (torch.bfloat16, torch.float16)


def varlen_failure() -> str | None:
    return _varlen_failed[0] if _varlen_failed else None


def _varlen(query: Any, key: Any, value: Any, cu: Any, max_len: int, scaling: float | None) -> Any:
    import torch
    from torch.nn.attention.varlen import varlen_attn

    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, H, D]
    cu = cu.to(device=q.device, dtype=torch.int32)
    params = inspect.signature(varlen_attn).parameters
    # Early releases take is_causal; later ones express causality as a window of (-1, 0).
    options: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "scale" in params:
        options["scale"] = scaling
    elif scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-6:
        raise TypeError("this torch's varlen_attn takes no scale, and the model's is not 1/sqrt(head_dim)")
    out = varlen_attn(q, k, v, cu, cu, max_len, max_len, **options)
    return out[None]  # [1, T, H, D]


def _per_document(query: Any, key: Any, value: Any, bounds: list[int], scaling: float | None) -> Any:
    import torch

    pieces = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        pieces.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling))
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous()


def score_packed(scorer: Any, pairs: Sequence[TokenizedPair]) -> list[tuple[float, int, float, int]]:
    """(chosen_logp, chosen_ntok, rejected_logp, rejected_ntok) per pair from one packed forward of
    `scorer.base`; `scorer` is a core.scoring.logprobs.ImplicitScorer (its device, base and head)."""
    import torch

    ids: list[int] = []
    positions: list[int] = []
    bounds = [0]
    rows: list[int] = []  # per scored token: which response (2*pair + side) it belongs to
    hidden_at: list[int] = []  # per scored token: the row position whose hidden state predicts it
    targets: list[int] = []
    for i, p in enumerate(pairs):
        for side, (resp, skip) in enumerate(((p.chosen, p.chosen_skip), (p.rejected, p.rejected_skip))):
            start = len(ids) + len(p.prompt)
            doc = [*p.prompt, *resp]
            ids.extend(doc)
            positions.extend(range(len(doc)))
            bounds.append(len(ids))
            for t in range(skip, len(resp)):
                rows.append(2 * i + side)
                hidden_at.append(start + t - 1)
                targets.append(resp[t])
    dev = scorer.device
    cu = torch.tensor(bounds, device=dev, dtype=torch.int32)
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    calls_before = sum(KERNEL_CALLS.values())
    with torch.inference_mode():
        out = scorer.base(
            input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([positions], device=dev),
            # A 4D mask is passed through untouched: no [T, T] mask is built, packed_attention ignores it.
            attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=dev), use_cache=False,
            cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths),
        )
        check_used(calls_before, attention_layers(scorer.base))
        hidden = out.last_hidden_state[0, torch.tensor(hidden_at, device=dev, dtype=torch.long)]
        logps = scorer._token_logps(hidden, torch.tensor(targets, device=dev, dtype=torch.long))
        index = torch.tensor(rows, device=dev, dtype=torch.long)
        sums = torch.zeros(2 * len(pairs), dtype=torch.float64, device=dev).index_add_(0, index, logps.double())
        del out, hidden
    counts = [0] * (2 * len(pairs))
    for r in rows:
        counts[r] += 1
    s = sums.cpu().tolist()
    return [(s[2 * i], counts[2 * i], s[2 * i + 1], counts[2 * i + 1]) for i in range(len(pairs))]


def check_used(calls_before: int, layers: int) -> None:
    """Every attention layer went through packed attention: one that did not attended across documents."""
    calls = sum(KERNEL_CALLS.values()) - calls_before
    if calls != layers:
        raise MarginLensError(f"{calls} of this model's {layers} attention layers went through packed attention (the "
                              "others ignore transformers' attention interface); score it with packing off")
