"""Batched generation from a causal LM over an eval set, cached per prompt so a killed run resumes.

Each prompt is one user turn rendered through the model's own chat template with the generation prompt
(core.scoring.tokenization.Renderer, the scorers' rendering; a tokenizer without a template gets the
plain one), left-padded into batches and decoded greedily unless sampling is asked for.

Cache: workspace/generations/KEY/responses.jsonl, one fsynced record per prompt id (core.keyed_log),
KEY naming (model identity incl. tokenizer files, eval-set fingerprint, generation params, dtype, device:
greedy decoding on CPU and on a GPU may part ways after a near-tie, so they never share a cache). The
starting model's responses are generated once and shared by its baseline row and every pairwise judge.
Batches are fixed chunks of the eval set in file order, and a chunk whose prompts are all stored is
skipped: a resumed run generates the missing chunks with the same batch (and, when sampling, the same
seed) as an uninterrupted one, and a record already stored always stands.

A response that stops at `max_new_tokens` without an end-of-sequence token is kept and marked
`truncated`, so evaluations can report how many answers the cap cut off.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from marginlens.core.atomic import create_json
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.eval_set import load_eval_set, rows_fingerprint
from marginlens.core.keyed_log import KeyedLog
from marginlens.core.workspace import Workspace

GENERATION_VERSION = 1  # bump when a change here changes what is generated for the same key


@dataclass(frozen=True)
class GenerationParams:
    """What the responses depend on. `batch_size` only changes how fast (and, through padding, the last
    bits of a float): it is part of the key, so one cache never mixes batchings."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    n: int = 1  # responses per prompt (self-play); evaluation reads the first
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise MarginLensError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.n < 1 or self.batch_size < 1:
            raise MarginLensError("n and batch_size must be at least 1")
        if self.do_sample and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise MarginLensError("sampling needs temperature > 0 and 0 < top_p <= 1")

    def key_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        if not self.do_sample:  # greedy ignores them: equal greedy runs share one cache
            fields.update(temperature=None, top_p=None, seed=None)
        return fields


def user_messages(row: dict[str, Any], system_prompt: str | None = None) -> list[dict[str, str]]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return [*system, {"role": "user", "content": row["prompt"]}]


def generation_key(model_identity: str, eval_fp: str, params: GenerationParams, dtype: str, device: str,
                   system_prompt: str | None = None) -> str:
    """`device`: the resolved one (cpu, cuda, cuda:N)."""
    what = {"version": GENERATION_VERSION, "model": model_identity, "eval_set": eval_fp, "dtype": dtype,
            "device": device, "params": params.key_fields()}
    if system_prompt is not None:  # only when set: keys made before the option existed stay valid
        what["system_prompt"] = system_prompt
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def generation_identity(spec: str) -> str:
    """The model's identity (weights and tokenizer files) plus, for a folder, its generation_config.json:
    the end-of-sequence ids there decide where a response stops."""
    from marginlens.core.scoring.model_content import generation_config_content
    from marginlens.core.scoring.models import model_identity, resolve_model

    identity = model_identity(spec)
    source = resolve_model(spec)
    config = Path(source.path) / "generation_config.json"
    if source.is_local and config.is_file():
        identity += ":gen-" + hashlib.sha256(generation_config_content(config)).hexdigest()[:12]
    return identity


def generation_store(ws: Workspace, key: str) -> KeyedLog:
    return KeyedLog(ws.root / "generations" / key / "responses.jsonl", key_of=lambda record: record["id"])


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the generation config's (often a list) and the tokenizer's EOS."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise MarginLensError("the model's tokenizer has no end-of-sequence token: generation could never stop")
    return sorted(ids)


def _decode(tokenizer: Any, new_ids: list[int], eos: set[int]) -> tuple[str, bool, int]:
    """(text up to the first EOS, whether the cap cut it, tokens generated incl. that EOS)."""
    for position, token in enumerate(new_ids):
        if token in eos:
            return tokenizer.decode(new_ids[:position], skip_special_tokens=True), False, position + 1
    # generate() pads rows that finished early: any row reaching here ran to the cap without an EOS.
    return tokenizer.decode(new_ids, skip_special_tokens=True), True, len(new_ids)


def _generate_chunk(model: Any, tokenizer: Any, texts: list[str], params: GenerationParams, eos: list[int],
                    seed: int) -> list[tuple[list[str], list[bool], list[int]]]:
    import torch

    encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
    options: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "num_return_sequences": params.n,
                               "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id}
    if params.do_sample:
        torch.manual_seed(seed)
        options.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
    else:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        out = model.generate(**encoded, **options)
    width = encoded["input_ids"].shape[1]
    eos_set = set(eos)
    results = []
    for i in range(len(texts)):
        decoded = [_decode(tokenizer, out[i * params.n + j, width:].tolist(), eos_set)
                   for j in range(params.n)]
        results.append(([d[0] for d in decoded], [d[1] for d in decoded], [d[2] for d in decoded]))
    return results


def generate_responses(ws: Workspace, model: str, eval_set: Path, params: GenerationParams = GenerationParams(), *,
                       device: str | None = None, dtype: str | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       check_cancel: Callable[[], None] | None = None,
                       log: Callable[[str], None] | None = None,
                       system_prompt: str | None = None) -> list[dict[str, Any]]:
    """One record per eval-set row, in file order (`system_prompt`: a system turn before each prompt):
    {"id", "responses": [str] * n, "truncated": [bool] * n, "new_tokens": [int] * n}.

    What the cache holds is never generated again; the model is loaded only when something is missing.
    `progress(done, total)` counts prompts (stored ones included); `check_cancel` is called between batches.
    """
    from marginlens.core.scoring.models import canonical_spec, dtype_for, resolve_device

    rows = load_eval_set(Path(eval_set))
    device = resolve_device(device)
    dtype = dtype_for(device, dtype)
    spec = canonical_spec(model)
    identity = generation_identity(spec)
    key = generation_key(identity, rows_fingerprint(rows), params, dtype, device, system_prompt)
    store = generation_store(ws, key)
    create_json(store.path.parent / "meta.json", {"model": spec, "model_identity": identity, "dtype": dtype, "device": device,
                                                  "eval_set": str(Path(eval_set).resolve()),
                                                  "eval_set_fingerprint": rows_fingerprint(rows),
                                                  "params": params.key_fields(), "version": GENERATION_VERSION})
    chunks = [rows[i:i + params.batch_size] for i in range(0, len(rows), params.batch_size)]
    stored = store.keys()
    pending = [(index, chunk) for index, chunk in enumerate(chunks) if any(r["id"] not in stored for r in chunk)]
    done = sum(len(chunk) for chunk in chunks) - sum(len(chunk) for _, chunk in pending)
    if progress:
        progress(done, len(rows))
    if pending:
        from marginlens.core.scoring.models import load_causal_lm
        from marginlens.core.scoring.tokenization import Renderer

        lm, tokenizer, _ = load_causal_lm(spec, device=device, dtype=dtype)
        tokenizer.padding_side = "left"
        renderer = Renderer(tokenizer)
        eos = _eos_ids(lm, tokenizer)
        if log:
            log(f"generating {sum(len(c) for _, c in pending)} of {len(rows)} prompts with {spec} "
                f"({device}, {dtype}, cache {key})")
        for index, chunk in pending:
            if check_cancel:
                check_cancel()
            texts = [renderer.render(user_messages(r, system_prompt), add_generation_prompt=True) for r in chunk]
            for row, (texts_out, truncated, n_new) in zip(
                    chunk, _generate_chunk(lm, tokenizer, texts, params, eos, params.seed * 1_000_003 + index),
                    strict=True):
                store.append({"id": row["id"], "responses": texts_out, "truncated": truncated, "new_tokens": n_new})
            done += len(chunk)
            if progress:
                progress(done, len(rows))
    by_id = {r["id"]: r for r in store.records()}
    return [by_id[r["id"]] for r in rows]
