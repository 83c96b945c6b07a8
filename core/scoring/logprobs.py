"""The implicit scorer: summed response log-probabilities under a causal LM, batched.

For each pair it returns (chosen_logp, chosen_ntok, rejected_logp, rejected_ntok): the SUM of the
log-probs of the response tokens given the prompt, and how many there are. The SimPO margin
(mean per token) and the DPO margin (beta * log-ratio to a reference) are derived from these in
core/ without running a model again (`core.selection.margins.simpo_margin`, `dpo_margin`).

Why it is fast:
- pairs are sorted by length and packed into batches under a token budget, so padding is small;
- the prompt runs once per pair; its KV cache is repeated for the two responses, which then run
  as a batch of 2*B continuations (prompt tokens are never computed twice; core.scoring.shared_prompt);
- the LM head runs only on scored positions, in chunks, and a log-prob is the target's logit
  minus a logsumexp, so no [batch, seq, vocab] float32 log-softmax ever exists;
- torch.inference_mode; the dtype is the caller's (core.scoring.models.dtype_for: bf16 on CUDA and on CPUs
  with native bf16 matmul); logits become float32 before the logsumexp and sums are float64, so only
  the model's own layers run in bf16;
- on CPU a pair is one row, [prompt | chosen | rejected] under a tree mask (core.scoring.pair_tree);
- on CUDA out-of-memory the token budget halves and the batch is retried;
- on CUDA in bf16/fp16, no padding at all: pairs are packed into one row (core.scoring.packing), each
  response with its own copy of the prompt, and a variable-length kernel attends per document. It
  computes every prompt twice, yet on an H200 it scored 1.86x the pairs/s of padded batches
  (bench/gpu_check.py, docs/BENCHMARKS.md); `packing=False` keeps the padded layout, `True` forces packing.

Prompts and continuations are right-padded: a padded query then still sees real keys, so no row
of the attention is fully masked (which gives NaNs in some kernels), and explicit position ids
keep every continuation at its own prompt's length. Padding inside a prompt still takes KV-cache slots:
for attention that counts slots (a sliding window narrower than the row, MPT's ALiBi) a batch is scored
in groups of equal prompt length (core.scoring.model_masking decides which layout is exact for what).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.pair_tree import (
    TREE_TOKEN_BUDGET,
    plan_tree_batches,
    supports_tree,
    tree_logprob_sums,
)
from marginlens.core.scoring.shared_prompt import check_conditioned, shared_prompt_sums
from marginlens.core.scoring.tokenization import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MAX_PROMPT_LENGTH,
    Renderer,
    TokenizedPair,
    tokenize_pairs,
)

if TYPE_CHECKING:
    from marginlens.core.data.pairs import Message

# Bytes of float32 logits per head chunk: bounds the one vocab-sized temporary.
LOGIT_CHUNK_BYTES = 128 << 20
CPU_TOKEN_BUDGET = 4096
MAX_PAIRS_PER_BATCH = 256


@dataclass(frozen=True)
class PairLogprobs:
    chosen_logp: float
    chosen_ntok: int
    rejected_logp: float
    rejected_ntok: int


def pair_cost(pair: TokenizedPair) -> int:
    """Padded tokens this pair occupies in a batch: its prompt, plus its longer response twice."""
    return len(pair.prompt) + 2 * max(len(pair.chosen), len(pair.rejected))


def plan_batches(pairs: Sequence[TokenizedPair], token_budget: int, max_pairs: int = MAX_PAIRS_PER_BATCH
                 ) -> list[list[int]]:
    """Indices of `pairs` grouped into batches of similar length under a padded-token budget."""
    order = sorted(range(len(pairs)), key=lambda i: (pair_cost(pairs[i]), len(pairs[i].prompt)))
    batches: list[list[int]] = []
    current: list[int] = []
    max_prompt = max_cont = 0
    for i in order:
        p = pairs[i]
        new_prompt = max(max_prompt, len(p.prompt))
        new_cont = max(max_cont, len(p.chosen), len(p.rejected))
        if current and (len(current) >= max_pairs or (len(current) + 1) * (new_prompt + 2 * new_cont) > token_budget):
            batches.append(current)
            current, new_prompt, new_cont = [], len(p.prompt), max(len(p.chosen), len(p.rejected))
        current.append(i)
        max_prompt, max_cont = new_prompt, new_cont
    if current:
        batches.append(current)
    return batches


def _head_postprocess(config: Any) -> Callable[[Any], Any]:
    """Output-logit transforms some architectures apply after the LM head (softcap, scaling)."""
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divide = getattr(config, "logits_scaling", None)

    def post(logits):
        if scale is not None and not isinstance(scale, bool):
            logits = logits * scale
        if divide:
            logits = logits / divide
        if cap:
            logits = (logits / cap).tanh() * cap
        return logits

    return post


class BatchedScorer:
    """Length-bucketed batching with out-of-memory back-off; subclasses define `score_batch`."""

    append_eos = True

    def __init__(self, model: Any, tokenizer: Any, *, mode: str = "clean", max_length: int = DEFAULT_MAX_LENGTH,
                 max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH, token_budget: int | None = None,
                 max_pairs: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.mode = mode
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.renderer = Renderer(tokenizer)
        self.device = next(model.parameters()).device
        self.token_budget = token_budget or auto_token_budget(model)
        # None: one pair per batch on CPU, where a single sequence already keeps the cores busy (bench/scoring.py:
        # batching only adds padding there); up to MAX_PAIRS_PER_BATCH under the token budget on accelerators.
        self.max_pairs = max_pairs or (1 if self.device.type == "cpu" else MAX_PAIRS_PER_BATCH)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def tokenize(self, prompts: Sequence[Sequence[Message]], chosen: Sequence[str], rejected: Sequence[str]
                 ) -> list[TokenizedPair]:
        return tokenize_pairs(self.tokenizer, prompts, chosen, rejected, mode=self.mode, max_length=self.max_length,
                              max_prompt_length=self.max_prompt_length, append_eos=self.append_eos,
                              renderer=self.renderer)

    def score(self, prompts: Sequence[Sequence[Message]], chosen: Sequence[str], rejected: Sequence[str]
              ) -> list[Any]:
        """Convenience: tokenize and score a list of pairs, results in input order."""
        pairs = self.tokenize(prompts, chosen, rejected)
        results: list[Any] = [None] * len(pairs)
        for indices, batch_results in self.iter_scored(pairs):
            for i, r in zip(indices, batch_results, strict=True):
                results[i] = r
        return results

    def iter_scored(self, pairs: Sequence[TokenizedPair], batches: list[list[int]] | None = None
                    ) -> Iterator[tuple[list[int], list[Any]]]:
        """Yield (indices into `pairs`, their results) batch by batch, in length order."""
        for indices in batches if batches is not None else self.plan(pairs):
            yield from self._score_with_backoff(pairs, indices)

    def plan(self, pairs: Sequence[TokenizedPair]) -> list[list[int]]:
        return plan_batches(pairs, self.token_budget, self.max_pairs)

    def score_batch(self, pairs: Sequence[TokenizedPair]) -> list[Any]:
        raise NotImplementedError

    def _score_with_backoff(self, pairs: Sequence[TokenizedPair], indices: list[int]
                            ) -> Iterator[tuple[list[int], list[Any]]]:
        import torch

        try:
            yield indices, self.score_batch([pairs[i] for i in indices])
        except torch.OutOfMemoryError:
            if len(indices) == 1:
                raise MarginLensError(
                    f"out of memory scoring a single pair of {pairs[indices[0]].n_tokens} tokens; "
                    "lower --max-length or use a larger device"
                ) from None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.token_budget = max(1, self.token_budget // 2)
            half = len(indices) // 2
            yield from self._score_with_backoff(pairs, indices[:half])
            yield from self._score_with_backoff(pairs, indices[half:])

    def padded(self, rows: Sequence[Sequence[int]], width: int) -> tuple[Any, Any]:
        """Right-padded ids [len(rows), width] and the lengths, on the model's device."""
        import torch

        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, : len(row)] = torch.tensor(row)
        return ids.to(self.device), torch.tensor([len(r) for r in rows], device=self.device)


class ImplicitScorer(BatchedScorer):
    """Summed response log-probs and token counts under one causal LM already on its device."""

    def __init__(self, model: Any, tokenizer: Any, *, packing: bool | None = None, tree: bool | None = None,
                 **options: Any):
        super().__init__(model, tokenizer, **options)
        self.packing = self._use_packing(packing)
        if self.packing and options.get("max_pairs") is None:
            self.max_pairs = MAX_PAIRS_PER_BATCH  # packed, more pairs add no padding, on CPU too
        # CPU: one row per pair under a tree mask (core.scoring.pair_tree), rows of similar length batched.
        # `tree`: None picks it where it applies; False keeps the shared-prompt layout.
        self.tree = tree is not False and not self.packing and self.device.type == "cpu" and supports_tree(model)
        if self.tree:
            self.max_pairs = options.get("max_pairs") or MAX_PAIRS_PER_BATCH
            self.token_budget = options.get("token_budget") or TREE_TOKEN_BUDGET
        self.base = getattr(model, model.base_model_prefix)
        self.head = model.get_output_embeddings()
        self.post = _head_postprocess(model.config)
        vocab = self.head.out_features if hasattr(self.head, "out_features") else model.config.vocab_size
        self.chunk_rows = max(16, LOGIT_CHUNK_BYTES // (4 * vocab))
        # transformers 5 renamed `past_key_values` to `cache` (the old name still works, with a warning).
        self.cache_arg = "cache" if "cache" in inspect.signature(self.base.forward).parameters else "past_key_values"

    def _use_packing(self, packing: bool | None) -> bool:
        """Padding-free packing (core.scoring.packing). None: on where its kernel runs, CUDA in a half dtype,
        for a model it supports; measured there at 1.86x the padded layout (H200, Llama-3-8B shape). On
        CPU it loses (SmolLM2, 24 HH pairs: 1.2 pairs/s packed, 1.5 one pair at a time), and float32 on CUDA
        would fall back to one attention call per document."""
        from marginlens.core.scoring import packing as packing_mod

        if packing is None:
            dtype = next(self.model.parameters()).dtype
            packing = (self.device.type == "cuda" and dtype in packing_mod.half_dtypes()
                       and packing_mod.supports_packing(self.model) is None)
        why_not = packing_mod.supports_packing(self.model) if packing else None
        if why_not:
            raise MarginLensError(f"packing is not supported for this model: {why_not}")
        if packing:
            packing_mod.enable_packing(self.model)
        return packing

    def plan(self, pairs: Sequence[TokenizedPair]) -> list[list[int]]:
        if self.packing:
            from marginlens.core.scoring.packing import plan_packs

            return plan_packs(pairs, self.token_budget, self.max_pairs)
        if self.tree:
            return plan_tree_batches(pairs, self.token_budget, self.max_pairs)
        return super().plan(pairs)

    def score_batch(self, pairs: Sequence[TokenizedPair]) -> list[PairLogprobs]:
        """Summed log-probs of a batch in this scorer's layout: packed, tree rows, or the shared-prompt layouts
        (core.scoring.shared_prompt, whose `score_padded` works an example through)."""
        check_conditioned(pairs)
        if self.packing:
            from marginlens.core.scoring.packing import score_packed

            return [PairLogprobs(*sums) for sums in score_packed(self, pairs)]
        if self.tree:
            return [PairLogprobs(*sums) for sums in tree_logprob_sums(self.base, self._token_logps, pairs, self.pad_id)]
        return [PairLogprobs(*sums) for sums in shared_prompt_sums(self, pairs)]

    def _token_logps(self, hidden: Any, targets: Any) -> Any:
        import torch

        pieces = []
        for start in range(0, hidden.shape[0], self.chunk_rows):
            logits = self.post(self.head(hidden[start : start + self.chunk_rows])).float()
            target_logit = logits.gather(1, targets[start : start + self.chunk_rows, None])[:, 0]
            pieces.append(target_logit - torch.logsumexp(logits, dim=-1))
        return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def auto_token_budget(model: Any) -> int:
    """Padded tokens per batch. CUDA: from free memory (then OOM back-off refines it); CPU: fixed.

    On CPU throughput is flat beyond a few thousand tokens per batch (bench/scoring.py), and
    bigger batches only cost memory.
    """
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    free, _ = torch.cuda.mem_get_info(device)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = getattr(config, "hidden_size", 4096)
    layers = getattr(config, "num_hidden_layers", 32)
    kv = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", 32)
    head_dim = getattr(config, "head_dim", None) or hidden // getattr(config, "num_attention_heads", 32)
    elem = next(model.parameters()).element_size()
    # Per token: the KV cache of all layers, plus roughly 16 hidden-size activations in flight.
    per_token = elem * (2 * layers * kv * head_dim + 16 * hidden + 4 * getattr(config, "intermediate_size", 4 * hidden))
    budget = int(0.6 * free / per_token)
    return max(512, min(budget, 1 << 17))


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: Any, n_tokens: int, context: float = 0.0) -> float:
    """Approximate forward FLOPs: 2 * params per token, plus attention's 4 * layers * hidden * context."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0)
    hidden = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)
    return n_tokens * (2.0 * n_params(model) + 4.0 * layers * hidden * context)
