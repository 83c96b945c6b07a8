"""The implicit scorer's CPU layout: one row per pair, [prompt | chosen | rejected], under a tree mask.

On CPU the shared-prompt layout of core.scoring.logprobs costs more than it saves: three forwards per
pair (prompt, then each response from a copy of its KV cache), or, batched, every response padded to the
longer one of its pair. Here a pair is one sequence: the prompt runs once, neither response is padded,
and rows of similar length share a forward (bench/scoring.py measures the result).

The mask lets the rejected response see the prompt and itself but not the chosen one, and its
position ids restart where the prompt ends, so each response is scored exactly as if it followed the
prompt alone. Worked example (repeated by tests/test_pair_tree.py): prompt [p0 p1], chosen [c0 c1],
rejected [r0], so the row is p0 p1 c0 c1 r0 with positions 0 1 2 3 2 and (1 = may attend)

        p0 p1 c0 c1 r0
    p0   1  .  .  .  .
    p1   1  1  .  .  .
    c0   1  1  1  .  .
    c1   1  1  1  1  .
    r0   1  1  .  .  1

Token t of a response is predicted by the position before it, and each response's first token by the
prompt's last position: c0 by 1, c1 by 2, r0 by 1 (not by c1 at 3).

Models that mask by themselves in ways a given mask would override (sliding windows, hybrid layers), that
place tokens by their index in the row rather than by position ids (ALiBi: r0 would be C tokens further
from the prompt than it is), or attention kernels that take no 4-D mask keep the shared-prompt layout
(`supports_tree`; core.scoring.model_masking decides).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from marginlens.core.scoring.model_masking import mask_driven_refusal, text_config
from marginlens.core.scoring.tokenization import TokenizedPair

# Padded tokens per forward: on a 16-core AMX CPU (SmolLM2-135M, bf16 and float32 alike) 2,048 ran 15-20%
# faster than one pair per forward and 10% faster than 8,192.
TREE_TOKEN_BUDGET = 2048
# "marginlens_packed" (core.scoring.packing) is sdpa for every call that is not packed.
_MASKING_KERNELS = ("sdpa", "eager", "marginlens_packed")


def supports_tree(model: Any) -> bool:
    """Whether a 4-D mask and position ids passed to `model` are applied as given and are all the masking
    and placing there is."""
    if getattr(text_config(model), "_attn_implementation", None) not in _MASKING_KERNELS:
        return False
    return mask_driven_refusal(model) is None


def row_length(pair: TokenizedPair) -> int:
    return len(pair.prompt) + len(pair.chosen) + len(pair.rejected)


def plan_tree_batches(pairs: Sequence[TokenizedPair], token_budget: int, max_pairs: int) -> list[list[int]]:
    """Indices of `pairs` sorted by row length, grouped while (rows x longest row) fits the budget."""
    order = sorted(range(len(pairs)), key=lambda i: (row_length(pairs[i]), len(pairs[i].prompt)))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so the row being added is the longest of the batch.
        if current and (len(current) >= max_pairs or (len(current) + 1) * row_length(pairs[i]) > token_budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def tree_layout(pair: TokenizedPair) -> tuple[list[int], list[int], list[int], list[int]]:
    """(ids, position ids, predictor positions, target positions) of one pair's row; the scored tokens are
    the chosen ones past `chosen_skip`, then the rejected ones past `rejected_skip`."""
    P, C, R = len(pair.prompt), len(pair.chosen), len(pair.rejected)
    ids = [*pair.prompt, *pair.chosen, *pair.rejected]
    positions = [*range(P + C), *range(P, P + R)]
    chosen_targets = list(range(P + pair.chosen_skip, P + C))
    rejected_targets = list(range(P + C + pair.rejected_skip, P + C + R))
    predictors = [t - 1 for t in chosen_targets] + [P - 1 if t == P + C else t - 1 for t in rejected_targets]
    return ids, positions, predictors, chosen_targets + rejected_targets


def tree_mask(pair: TokenizedPair, width: int, dtype: Any) -> Any:
    """The additive [width, width] mask of one row (0: attend, dtype's min: not); padding attends to itself
    only, so that no row of the attention is fully masked (NaNs in some kernels)."""
    import torch

    P, C = len(pair.prompt), len(pair.chosen)
    length = row_length(pair)
    i = torch.arange(width)
    chosen = (i >= P) & (i < P + C)
    rejected = (i >= P + C) & (i < length)
    padding = i >= length
    real = ~padding
    allowed = (i[None, :] <= i[:, None]) & ~(rejected[:, None] & chosen[None, :]) & real[:, None] & real[None, :]
    allowed |= torch.diag(padding)
    return torch.zeros(width, width, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)


def tree_logprob_sums(base: Any, token_logps: Callable[[Any, Any], Any], pairs: Sequence[TokenizedPair],
                      pad_id: int) -> list[tuple[float, int, float, int]]:
    """(chosen sum, chosen count, rejected sum, rejected count) per pair: one forward of `base` (a causal LM's
    body) over the rows, then `token_logps(hidden, targets)` once over every scored token of the batch."""
    import torch

    device, dtype = next(base.parameters()).device, next(base.parameters()).dtype
    width = max(row_length(p) for p in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(pairs), width), dtype=torch.long)
    mask = torch.empty((len(pairs), 1, width, width), dtype=dtype)
    rows, predictors, targets, counts = [], [], [], []
    for b, pair in enumerate(pairs):
        row_ids, row_positions, row_predictors, row_targets = tree_layout(pair)
        ids[b, : len(row_ids)] = torch.tensor(row_ids)
        positions[b, : len(row_positions)] = torch.tensor(row_positions)
        mask[b, 0] = tree_mask(pair, width, dtype)
        counts.append((len(pair.chosen) - pair.chosen_skip, len(pair.rejected) - pair.rejected_skip))
        rows += [b] * len(row_targets)
        predictors += row_predictors
        targets += row_targets
    with torch.inference_mode():
        hidden = base(input_ids=ids.to(device), position_ids=positions.to(device),
                      attention_mask=mask.to(device)).last_hidden_state
        row_index = torch.tensor(rows, dtype=torch.long)
        logps = token_logps(hidden[row_index.to(device), torch.tensor(predictors, device=device)],
                            ids[row_index, torch.tensor(targets)].to(device)).double().cpu()
    out, start = [], 0
    for n_chosen, n_rejected in counts:
        chosen = logps[start : start + n_chosen].sum().item()
        rejected = logps[start + n_chosen : start + n_chosen + n_rejected].sum().item()
        out.append((chosen, n_chosen, rejected, n_rejected))
        start += n_chosen + n_rejected
    return out
