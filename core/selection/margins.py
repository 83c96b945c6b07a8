"""The margin frame: one row per pair with its explicit and implicit margins, joined by pair_id.

`load_margins` is what the dashboard, the CLI and the metrics read. Columns (in pair-table order):
  row            position in the pair table (how filters find the full texts)
  pair_id, source_row
  score_chosen, score_rejected          explicit scores carried by the dataset (NaN if none)
  chosen_reward, rejected_reward        from a reward score table (only with reward_fp)
  chosen_logp, chosen_ntok, rejected_logp, rejected_ntok    policy table (only with policy_fp)
  ref_chosen_logp, ref_rejected_logp    reference table (only with reference_fp)
  m_ex           reward-table difference when reward_fp is given, else score_chosen - score_rejected
  m_im           SimPO form (mean per-token log-prob difference, the reference's default), or with
                 reference_fp the DPO form beta * ((pol_c - ref_c) - (pol_r - ref_r)) on summed
                 log-probs; NaN where the pair is not scored (yet)
  r_rejected     the rejected answer's explicit reward on m_ex's scale: rejected_reward with reward_fp,
                 else score_rejected (RIP's rule reads it; m_ex alone cannot say how good the rejected answer is)
  m_im_dpo       m_im when it is in the DPO form, else NaN (rules defined on the DPO implicit reward read it,
                 so they cannot run on the SimPO form by mistake)
  judge_rejected 1.0 where an audit's judge preferred the rejected answer in both orders, else 0.0
                 (core.selection.judge_signal: one signal of the cleaning rule)
  truncated      any score table truncated this pair
  scored         every score table joined holds this pair (a sampled scoring holds some); True when none is
  flagged, flags ingest warnings (bool, and joined with "; "); not the noisy-pair flags an audit sets
                 (core.data.flags: audits/DATASET/flags.json, applied by exports, shown on the Audit page)
  prompt_preview first characters of the last user turn; prompt_chars, chosen_chars, rejected_chars
The frame never holds full texts: `pair_texts` reads them for a few pair ids and `load_texts` gives
the memory-mapped pair table for text search. `frame.attrs` records where every column came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from marginlens.core.data.pairs import load_texts
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.score_tables import list_score_tables, load_score_table, score_manifest
from marginlens.core.selection.judge_signal import JUDGE_COLUMN, judge_rejected
from marginlens.core.workspace import Workspace
from numpy.typing import ArrayLike

DEFAULT_BETA = 0.01  # DPO beta of the DPO-form implicit margin: the paper's DPO recipe
PREVIEW_CHARS = 160


def simpo_margin(chosen_logp: ArrayLike, chosen_ntok: ArrayLike, rejected_logp: ArrayLike,
                 rejected_ntok: ArrayLike) -> np.ndarray:
    """m_im in the SimPO form: mean per-token log-prob of chosen minus that of rejected (arrays or scalars).
    A response with no scored token has no mean: its margin is NaN (missing), never inf."""
    c_ntok = np.asarray(chosen_ntok, dtype=np.float64)
    r_ntok = np.asarray(rejected_ntok, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.asarray(chosen_logp, dtype=np.float64) / c_ntok - np.asarray(rejected_logp, dtype=np.float64) / r_ntok
    return np.where((c_ntok > 0) & (r_ntok > 0), margin, np.nan)


def dpo_margin(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike, ref_rejected: ArrayLike,
               beta: float = DEFAULT_BETA) -> np.ndarray:
    """m_im in the DPO form: beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))), summed log-probs.
    Identically 0 when the policy is the reference."""
    as_array = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
    return beta * ((as_array(policy_chosen) - as_array(ref_chosen)) - (as_array(policy_rejected) - as_array(ref_rejected)))


def pair_texts(ws: Workspace, dataset: str, pair_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Full rows (prompt messages, chosen, rejected, flags, source_json, ...) for a few pair ids, in the
    order asked; ids not in the dataset are skipped."""
    table = load_texts(ws, dataset)
    wanted = list(dict.fromkeys(str(p) for p in pair_ids))
    if not wanted:
        return []
    rows = table.filter(pc.is_in(table.column("pair_id"), value_set=pa.array(wanted))).to_pylist()
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_id.setdefault(row["pair_id"], row)
    return [by_id[p] for p in wanted if p in by_id]


def _prompt_stats(column: pa.ChunkedArray | pa.Array, preview_chars: int) -> tuple[pa.Array, np.ndarray]:
    """Preview of each prompt's last user turn (last message if none) and its total characters."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(column)
    flat = pc.list_flatten(column)
    parents = pc.list_parent_indices(column).to_numpy()
    roles = pc.struct_field(flat, "role")
    contents = pc.fill_null(pc.struct_field(flat, "content"), "")
    lengths = pc.utf8_length(contents).to_numpy(zero_copy_only=False)
    # cut before gathering, so only the previews' characters are copied
    short = pc.utf8_slice_codeunits(contents, 0, preview_chars)
    if len(flat) == n and (parents == np.arange(n)).all():  # one message per prompt: nothing to gather
        return short, lengths.astype(np.int64)
    total = np.bincount(parents, weights=lengths, minlength=n).astype(np.int64)

    def last_per_parent(positions: np.ndarray, out: np.ndarray) -> None:
        # positions ascend, so their parents do too: the last of each run is the last message
        p = parents[positions]
        last = np.r_[p[1:] != p[:-1], True] if p.size else np.zeros(0, dtype=bool)
        out[p[last]] = positions[last]

    pick = np.full(n, -1, dtype=np.int64)
    last_per_parent(np.arange(len(flat)), pick)
    is_user = pc.fill_null(pc.equal(roles, "user"), False).to_numpy(zero_copy_only=False)
    last_per_parent(np.flatnonzero(is_user), pick)
    preview = short.take(pa.array(np.where(pick < 0, 0, pick))) if len(flat) else pa.array([""] * n)
    preview = pc.if_else(pa.array(pick >= 0), preview, "")
    return preview, total


def _text_stats(table: pa.Table, preview_chars: int) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]:
    """(prompt preview, prompt characters, chosen characters, rejected characters) per pair."""
    preview, prompt_chars = _prompt_stats(table.column("prompt"), preview_chars)

    def chars(column: str) -> np.ndarray:
        return pc.fill_null(pc.utf8_length(table.column(column)), 0).to_numpy(zero_copy_only=False)

    return preview, prompt_chars, chars("chosen"), chars("rejected")


def _joined(frame_ids: pa.Array, table: pa.Table, columns: list[str]) -> tuple[dict[str, np.ndarray], int]:
    """Columns of a score table aligned to the frame's pair ids (NaN where absent) and the hit count.

    A table written in pair-table order (what a scoring job writes) is aligned as is; otherwise
    Arrow's hash lookup maps every frame id to the table's first row with that id, in C (a pandas
    index over a million string ids costs about a second).
    """
    ids = table.column("pair_id").combine_chunks()
    if ids.type != frame_ids.type:
        ids = ids.cast(frame_ids.type)
    aligned = ids.equals(frame_ids)
    if aligned:
        where = np.arange(len(frame_ids), dtype=np.int64)
    else:
        where = pc.fill_null(pc.index_in(frame_ids, value_set=ids), -1).to_numpy(zero_copy_only=False)
    hit = where >= 0
    take = where[hit]
    out = {}
    for name in columns:
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        if aligned:
            out[name] = values
            continue
        col = np.full(len(frame_ids), np.nan)
        col[hit] = values[take]
        out[name] = col
    out["truncated"] = np.zeros(len(frame_ids), dtype=bool)
    out["hit"] = hit
    if "truncated" in table.column_names:
        trunc = pc.fill_null(table.column("truncated"), False).to_numpy(zero_copy_only=False)
        out["truncated"][hit] = trunc[take]
    return out, int(hit.sum())


def _score_table(ws: Workspace, dataset: str, fingerprint: str, kind: str, role: str) -> pa.Table:
    manifest = score_manifest(ws, dataset, fingerprint)
    if manifest is None:
        known = ", ".join(m["fingerprint"] for m in list_score_tables(ws, dataset, kind)) or "none"
        raise MarginLensError(
            f"no finished {kind} score table {fingerprint!r} for dataset {dataset!r} ({role}; known: {known})"
        )
    if manifest.get("kind") != kind:
        raise MarginLensError(
            f"score table {fingerprint!r} of dataset {dataset!r} is a {manifest.get('kind')} table, "
            f"but the {role} needs a {kind} table"
        )
    return load_score_table(ws, dataset, fingerprint)


TOKENISATION_KEYS = ("mode", "max_length", "max_prompt_length", "chat_template")


def check_same_tokenisation(ws: Workspace, dataset: str, policy_fp: str, reference_fp: str) -> None:
    """The DPO form subtracts the reference's log-probs from the policy's response by response: both tables
    must have cut and templated the same tokens, or the difference measures the tokenisation."""
    specs = [(score_manifest(ws, dataset, fp) or {}).get("spec", {}) for fp in (policy_fp, reference_fp)]
    differ = [k for k in TOKENISATION_KEYS if specs[0].get(k) != specs[1].get(k)]
    if differ:
        def show(spec: dict[str, Any], key: str) -> str:
            value = spec.get(key)
            if key == "chat_template":
                return "own template" if value is None else f"template {hashlib.sha256(value.encode()).hexdigest()[:8]}"
            return f"{key} {value}"

        what = "; ".join(f"policy {show(specs[0], k)}, reference {show(specs[1], k)}" for k in differ)
        raise MarginLensError(
            f"dataset {dataset!r}: the policy table {policy_fp} and the reference table {reference_fp} were tokenised "
            f"differently ({what}); the DPO-form margin needs both scored with the same --mode, max lengths and "
            "--chat-template: score the reference again with the policy's settings")


def load_margins(
    ws: Workspace,
    dataset: str,
    policy_fp: str | None = None,
    reference_fp: str | None = None,
    reward_fp: str | None = None,
    beta: float = DEFAULT_BETA,
    preview_chars: int = PREVIEW_CHARS,
) -> pd.DataFrame:
    """The margin frame of `dataset` (see the module docstring for its columns and attrs)."""
    if reference_fp and not policy_fp:
        raise MarginLensError("the DPO-form implicit margin needs a policy score table as well as the reference")
    manifest = ws.dataset_manifest(dataset)
    table = load_texts(ws, dataset)
    n = table.num_rows
    # The text statistics scan every character of the dataset in Arrow kernels, which release the GIL: on a
    # thread they overlap with reading and joining the score tables below (a third of a first Explore
    # render at 1M pairs on two cores).
    texts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="margins-text-stats")
    text_stats = texts.submit(_text_stats, table, preview_chars)
    texts.shutdown(wait=False)
    flags = table.column("flags")
    # one contiguous array, not the memory-mapped table's many record batches: taking a few rows of a
    # chunked string column first concatenates every chunk, a copy of the whole column per rerun
    ids = table.column("pair_id").combine_chunks()
    frame = pd.DataFrame(
        {
            "row": np.arange(n, dtype=np.int64),
            "pair_id": ids.to_pandas(),
            "source_row": table.column("source_row").to_numpy(),
            "score_chosen": table.column("score_chosen").to_numpy(zero_copy_only=False).astype(np.float64),
            "score_rejected": table.column("score_rejected").to_numpy(zero_copy_only=False).astype(np.float64),
        }
    )
    frame["m_ex"] = frame["score_chosen"] - frame["score_rejected"]
    frame["r_rejected"] = frame["score_rejected"]
    m_ex_source = "dataset:score_chosen-score_rejected"
    truncated = np.zeros(n, dtype=bool)
    scored = np.ones(n, dtype=bool)
    coverage: dict[str, int] = {}

    if reward_fp:
        cols, coverage["reward"] = _joined(ids, _score_table(ws, dataset, reward_fp, "reward", "explicit margin"),
                                           ["chosen_reward", "rejected_reward"])
        frame["chosen_reward"], frame["rejected_reward"] = cols["chosen_reward"], cols["rejected_reward"]
        frame["m_ex"] = frame["chosen_reward"] - frame["rejected_reward"]
        frame["r_rejected"] = frame["rejected_reward"]
        truncated |= cols["truncated"]
        scored &= cols["hit"]
        m_ex_source = f"reward:{reward_fp}"

    m_im_form = None
    frame["m_im"] = np.nan
    if policy_fp:
        logp_cols = ["chosen_logp", "chosen_ntok", "rejected_logp", "rejected_ntok"]
        cols, coverage["policy"] = _joined(ids, _score_table(ws, dataset, policy_fp, "logprob", "policy"), logp_cols)
        for name in logp_cols:
            frame[name] = cols[name]
        truncated |= cols["truncated"]
        scored &= cols["hit"]
        if reference_fp:
            check_same_tokenisation(ws, dataset, policy_fp, reference_fp)
            ref, coverage["reference"] = _joined(
                ids, _score_table(ws, dataset, reference_fp, "logprob", "reference"), ["chosen_logp", "rejected_logp"]
            )
            frame["ref_chosen_logp"], frame["ref_rejected_logp"] = ref["chosen_logp"], ref["rejected_logp"]
            truncated |= ref["truncated"]
            scored &= ref["hit"]
            frame["m_im"] = dpo_margin(frame["chosen_logp"], frame["rejected_logp"], frame["ref_chosen_logp"],
                                       frame["ref_rejected_logp"], beta)
            m_im_form = "dpo"
        else:
            frame["m_im"] = simpo_margin(frame["chosen_logp"], frame["chosen_ntok"], frame["rejected_logp"],
                                         frame["rejected_ntok"])
            m_im_form = "simpo"

    frame["m_im_dpo"] = frame["m_im"] if m_im_form == "dpo" else np.nan
    frame[JUDGE_COLUMN] = judge_rejected(ws, dataset, ids)
    frame["truncated"] = truncated
    frame["scored"] = scored
    frame["flagged"] = pc.fill_null(pc.list_value_length(flags), 0).to_numpy(zero_copy_only=False) > 0
    frame["flags"] = pc.fill_null(pc.binary_join(flags, "; "), "").combine_chunks().to_pandas()
    preview, prompt_chars, chosen_chars, rejected_chars = text_stats.result()
    frame["prompt_preview"] = preview.to_pandas()
    frame["prompt_chars"] = prompt_chars
    frame["chosen_chars"] = chosen_chars
    frame["rejected_chars"] = rejected_chars
    frame.attrs.update(
        {
            "dataset": dataset,
            "dataset_fingerprint": manifest.get("fingerprint"),
            "format": manifest.get("format"),
            "policy_fp": policy_fp,
            "reference_fp": reference_fp,
            "reward_fp": reward_fp,
            "m_ex_source": m_ex_source,
            "m_im_form": m_im_form,
            "beta": beta if m_im_form == "dpo" else None,
            "coverage": coverage,
        }
    )
    return frame


def scored_counts(margins: pd.DataFrame) -> tuple[int, int]:
    """(pairs scored, pairs in the dataset) of a margin frame: what pages and commands show as
    "N of M pairs scored" when a sampled scoring covers part of the dataset."""
    n_total = len(margins)
    if "scored" not in margins:
        return n_total, n_total
    return int(margins["scored"].to_numpy(dtype=bool).sum()), n_total


def default_margins(ws: Workspace, dataset: str, policy_fp: str | None = None,
                    reward_fp: str | None = None) -> pd.DataFrame:
    """The margin frame of the tables named, each one not named being the newest (default_scorers): what
    commands read once, then ask which metrics run (margin_sources), how much is scored and what to select."""
    defaults = default_scorers(ws, dataset)
    return load_margins(ws, dataset, policy_fp=policy_fp or defaults["policy"],
                        reward_fp=reward_fp or defaults["reward"])


def scored_note(margins: pd.DataFrame) -> str | None:
    """The line that says a frame is scored in part ("200 of 2,308 pairs scored ..."); None when whole."""
    n_scored, n_total = scored_counts(margins)
    if n_scored == n_total:
        return None
    return (f"{n_scored:,} of {n_total:,} pairs scored: selection, audits and exports use the scored pairs "
            "(score a larger --sample, or all, for more)")


def has_dataset_scores(ws: Workspace, dataset: str) -> bool:
    """Does the dataset carry explicit scores of its own (score_chosen on some pair)?"""
    table = load_texts(ws, dataset)
    return table.num_rows > 0 and table.column("score_chosen").null_count < table.num_rows


def default_scorers(ws: Workspace, dataset: str) -> dict[str, str | None]:
    """Score tables to use when the user names none: the newest logprob table scored in the policy role
    (a model scored only as a reference is not mistaken for the policy), and the newest reward table only
    when the dataset carries no explicit scores of its own. Tables scored on an earlier import of the
    dataset (another dataset fingerprint) are skipped."""
    current = ws.dataset_manifest(dataset)["fingerprint"]

    def fresh(kind: str) -> list[dict[str, Any]]:
        tables = list_score_tables(ws, dataset, kind)
        return [m for m in tables if m.get("spec", {}).get("dataset_fingerprint", current) == current]

    logprob = fresh("logprob")
    policy = [m for m in logprob if m.get("spec", {}).get("role") == "policy"] or logprob
    reward = [] if has_dataset_scores(ws, dataset) else fresh("reward")
    return {
        "policy": policy[0]["fingerprint"] if policy else None,
        "reward": reward[0]["fingerprint"] if reward else None,
    }
