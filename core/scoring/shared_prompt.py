"""The implicit scorer's shared-prompt layouts (core.scoring.logprobs): the prompt runs once and its KV cache
is reused by both responses, either per pair (`score_one`, no padding) or for a batch of pairs (`score_padded`,
right-padded prompts and 2*B continuations).

A pair may share no prompt at all: in reference mode, near a short max_length, each response's context can
be cut at its own offset (core.scoring.tokenization), and then `prompt` is [] and each context rides in its
continuation as skipped tokens. Both layouts stay exact: `score_one` runs each continuation from scratch,
and `score_padded` scores such a pair as two pairs, each response with its own context as prompt (a padded
batch needs a real prompt in every row, or a row's prompt attention would be fully masked). Only a response
with no context at all is refused (`check_conditioned`): nothing predicts its first token.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.model_masking import prompt_padding_exact
from marginlens.core.scoring.tokenization import TokenizedPair

# Per pair: (chosen sum, chosen count, rejected sum, rejected count).
Sums = tuple[float, int, float, int]


def check_conditioned(pairs: Sequence[TokenizedPair]) -> None:
    """Refuse a pair in which a response has no context: no shared prompt and no skipped tokens of its own."""
    for p in pairs:
        if not p.prompt and (p.chosen_skip == 0 or p.rejected_skip == 0):
            raise MarginLensError(
                "a response has no context after templating (the prompt rendered to no tokens and the tokenizer "
                "adds no BOS token), so nothing conditions its first token; give `marginlens score` a chat template "
                "that renders the prompt (--chat-template NAME|FILE)")


def split_unshared(pair: TokenizedPair) -> tuple[TokenizedPair, TokenizedPair]:
    """A pair with no shared prompt as two pairs with one: each response after its own context, the other
    response left empty (it scores nothing)."""
    return (TokenizedPair(pair.chosen[: pair.chosen_skip], pair.chosen[pair.chosen_skip :], []),
            TokenizedPair(pair.rejected[: pair.rejected_skip], [], pair.rejected[pair.rejected_skip :]))


def shared_prompt_sums(scorer: Any, pairs: Sequence[TokenizedPair]) -> list[Sums]:
    """One pair alone without padding, several as a padded batch."""
    return [score_one(scorer, pairs[0])] if len(pairs) == 1 else score_padded(scorer, pairs)


def score_padded(scorer: Any, pairs: Sequence[TokenizedPair]) -> list[Sums]:
    """One forward over the prompts, one over the 2*B continuations, chunked log-probs; `scorer` is a
    core.scoring.logprobs.ImplicitScorer (its device, base, head and padding).

    Worked example (repeated by tests/test_scoring_examples.py). A bigram model over V = 5 tokens
    (0 pad, 1 Q, 2 A, 3 B, 4 EOS): the next token's probabilities depend on the current token only,
    after Q: A 1/2, B 1/4; after A: EOS 1/2; after B: EOS 1/4. B = 2 pairs, both with prompt [Q]:

        pair 0: chosen [A, EOS], rejected [B, EOS]      pair 1: chosen [B, EOS], rejected [A, EOS]

    prompt_ids is (B, P) = (2, 1); cont_ids (2B, R) = (4, 2), rows c0 r0 c1 r1. Token t of a
    continuation is predicted at position t-1 and token 0 at the prompt's last position, so `hidden`
    is (4, 2, H). Its logits would be (4, 2, V) = (4, 2, 5); the head runs only where `scored` (4, 2)
    is true -- response tokens, EOS included, past any context `skip` -- on (8, H) rows, giving
    (8, V) logits and per token logit[target] - logsumexp(logits):

        c0: log 1/2, log 1/2 = -0.6931, -0.6931      r0: log 1/4, log 1/4 = -1.3863, -1.3863
        c1: -1.3863, -1.3863                          r1: -0.6931, -0.6931

    index_add per row: sums (4,) = [-1.3863, -2.7726, -2.7726, -1.3863], counts (4,) = [2, 2, 2, 2],
    so PairLogprobs(-1.3863, 2, -2.7726, 2) and PairLogprobs(-2.7726, 2, -1.3863, 2). The SimPO
    margin is mean minus mean (core.selection.margins.simpo_margin): pair 0 -1.3863/2 - (-2.7726/2)
    = 0.6931 (log 2), pair 1 -0.6931.
    """
    import torch

    if any(not p.prompt for p in pairs):
        return _score_split(scorer, pairs)
    dev, B = scorer.device, len(pairs)
    P = max(len(p.prompt) for p in pairs)
    conts = [c for p in pairs for c in (p.chosen, p.rejected)]
    R = max(1, max(len(c) for c in conts))
    if len({len(p.prompt) for p in pairs}) > 1 and not prompt_padding_exact(scorer.model, P + R):
        return _by_prompt_length(scorer, pairs)
    prompt_ids, plen = scorer.padded([p.prompt for p in pairs], P)
    cont_ids, clen = scorer.padded(conts, R)
    skips = torch.tensor([s for p in pairs for s in (p.chosen_skip, p.rejected_skip)], device=dev)
    arange_p, arange_r = torch.arange(P, device=dev), torch.arange(R, device=dev)
    prompt_mask = (arange_p[None, :] < plen[:, None]).long()
    cont_mask = (arange_r[None, :] < clen[:, None]).long()
    cache_arg = scorer.cache_arg

    with torch.inference_mode():
        out = scorer.base(input_ids=prompt_ids, attention_mask=prompt_mask,
                          position_ids=arange_p[None, :].expand(B, P), use_cache=True)
        last_prompt_hidden = out.last_hidden_state[torch.arange(B, device=dev), plen - 1]
        cache = getattr(out, cache_arg)
        cache.batch_repeat_interleave(2)
        plen2 = plen.repeat_interleave(2)
        out2 = scorer.base(
            input_ids=cont_ids,
            attention_mask=torch.cat([prompt_mask.repeat_interleave(2, dim=0), cont_mask], dim=1),
            position_ids=plen2[:, None] + arange_r[None, :],
            use_cache=True,
            **{cache_arg: cache},
        )
        # Token t of a continuation is predicted by position t-1, and token 0 by the prompt's end.
        hidden = torch.cat([last_prompt_hidden.repeat_interleave(2, dim=0)[:, None, :],
                            out2.last_hidden_state[:, : R - 1, :]], dim=1)
        scored = (arange_r[None, :] >= skips[:, None]) & (arange_r[None, :] < clen[:, None])
        rows = scored.nonzero(as_tuple=True)[0]
        logps = scorer._token_logps(hidden[scored], cont_ids[scored])
        sums = torch.zeros(2 * B, dtype=torch.float64, device=dev).index_add_(0, rows, logps.double())
        counts = scored.sum(dim=1)
        del out, out2, cache, hidden
    s, n = sums.cpu().tolist(), counts.cpu().tolist()
    return [(s[2 * i], n[2 * i], s[2 * i + 1], n[2 * i + 1]) for i in range(B)]


def _score_split(scorer: Any, pairs: Sequence[TokenizedPair]) -> list[Sums]:
    """`score_padded` with every pair that shares no prompt scored as its two `split_unshared` halves."""
    check_conditioned(pairs)
    expanded: list[TokenizedPair] = []
    for p in pairs:
        expanded += split_unshared(p) if not p.prompt else [p]
    sums = iter(score_padded(scorer, expanded))
    results = []
    for p in pairs:
        if p.prompt:
            results.append(next(sums))
        else:
            chosen, rejected = next(sums), next(sums)
            results.append((chosen[0], chosen[1], rejected[2], rejected[3]))
    return results


def _by_prompt_length(scorer: Any, pairs: Sequence[TokenizedPair]) -> list[Sums]:
    """`score_padded` per group of equal prompt length: no padding inside a prompt, for models whose
    attention counts KV-cache slots (core.scoring.model_masking.prompt_padding_exact)."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(len(p.prompt), []).append(i)
    results: list[Sums] = [(0.0, 0, 0.0, 0)] * len(pairs)
    for indices in groups.values():
        for i, r in zip(indices, shared_prompt_sums(scorer, [pairs[i] for i in indices]), strict=True):
            results[i] = r
    return results


def score_one(scorer: Any, pair: TokenizedPair) -> Sums:
    """One pair without padding: the prompt once, then each response continuing from its KV cache (the
    chosen one from a copy: cropping back is not exact for sliding-window caches). Without a shared prompt
    each response runs alone from position 0; its first token is context (`check_conditioned`), not scored."""
    import torch

    check_conditioned([pair])
    dev, P = scorer.device, len(pair.prompt)
    last_prompt_hidden, prompt_cache = None, None
    sums, counts = [], []
    with torch.inference_mode():
        if P:
            out = scorer.base(input_ids=torch.tensor([pair.prompt], device=dev), use_cache=True)
            last_prompt_hidden = out.last_hidden_state[:, -1:, :]
            prompt_cache = getattr(out, scorer.cache_arg)
        for ids, skip, cache in ((pair.chosen, pair.chosen_skip, copy.deepcopy(prompt_cache)),
                                 (pair.rejected, pair.rejected_skip, prompt_cache)):
            if not ids:  # the absent half of a `split_unshared` pair
                sums.append(0.0)
                counts.append(0)
                continue
            cont = torch.tensor([ids], device=dev)
            past = {scorer.cache_arg: cache} if cache is not None else {}
            out2 = scorer.base(input_ids=cont, position_ids=torch.arange(P, P + len(ids), device=dev)[None, :],
                               use_cache=P > 0, **past)
            # Token t is predicted by position t-1, token 0 by the prompt's end (with no prompt, token 0 is
            # skipped context and the filler row in its place is never read).
            first = last_prompt_hidden if P else out2.last_hidden_state[:, :1, :]
            hidden = torch.cat([first, out2.last_hidden_state[:, :-1, :]], dim=1)[0]
            sums.append(scorer._token_logps(hidden[skip:], cont[0, skip:]).double().sum().item())
            counts.append(len(ids) - skip)
    return sums[0], counts[0], sums[1], counts[1]
