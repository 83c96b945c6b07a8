"""Export selected pairs in a layout TRL reads directly, with a provenance manifest.

Layouts (`layout=`):
  source    the dataset's own layout (default): hh-rlhf keeps its "\\n\\nHuman: ..." transcripts in
            chosen/rejected (verbatim from the source record), trl-conversational-implicit keeps whole
            conversations, trl-standard keeps its prompt/chosen/rejected strings verbatim, and the
            conversational layouts (trl-conversational, ultrafeedback-binarized, simpo-armorm) become
            explicit conversational pairs (prompt messages; chosen/rejected = [assistant message]).
  explicit  always an explicit prompt column: strings for string sources, messages otherwise.
score_chosen/score_rejected are kept when the dataset carries them (so a re-import keeps m_ex);
`include_metrics` adds pair_id, m_ex, m_im, score and rank.

Noisy-pair flags (core.data.flags, set after an LLM-judge audit) apply unless `apply_flags=False`: selected
pairs flagged "exclude" are left out (not replaced by the next-ranked pair, so the export is the
Explore selection minus them), and pairs flagged "swap" have chosen/rejected exchanged together with
score_chosen/score_rejected and the signs of m_ex and m_im (score and rank stay the selection's:
they say why the pair was selected). The manifest's "flags" records the flags file, the flagged ids,
whether they were applied, and how many exported pairs each action touched.

Files: PATH (jsonl or parquet) plus PATH.manifest.json; `hf` writes a save_to_disk folder with
marginlens_manifest.json inside. Rows are in pair-table order, JSON is written with fixed key order
and no timestamps, so the same inputs give byte-identical data files. Every write is atomic.
Where PATH may be and what `overwrite` may replace is core.selection.export_target's decision: PATH
lies in the workspace's exports/ folder (a relative PATH is placed there), or outside the workspace with
`allow_outside=True`; `overwrite=True` replaces only a previous MarginLens export at PATH.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from marginlens.core import __version__, actor
from marginlens.core.atomic import write_json
from marginlens.core.data.flags import flags_summary
from marginlens.core.data.formats import HH_ASSISTANT, hh_prompt_cut
from marginlens.core.data.pairs import MESSAGE_TYPE, load_texts
from marginlens.core.data.sources import file_sha256
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.score_tables import score_manifest
from marginlens.core.selection.export_target import (
    EXPORT_KIND,
    HF_MANIFEST,
    install,
    manifest_path_for,
    resolve_output,
)
from marginlens.core.selection.export_target import ExportExists as ExportExists  # the errors callers catch
from marginlens.core.selection.export_target import NotAnExport as NotAnExport
from marginlens.core.selection.export_target import OutsideWorkspace as OutsideWorkspace
from marginlens.core.selection.export_target import ProtectedPath as ProtectedPath
from marginlens.core.selection.select import Selection
from marginlens.core.workspace import Workspace

FORMATS = ("jsonl", "parquet", "hf")
LAYOUTS = ("source", "explicit")
_STRING_FORMATS = ("trl-standard", "hh-rlhf")
_MESSAGES = pa.list_(MESSAGE_TYPE)


@dataclass
class ExportResult:
    path: Path
    manifest_path: Path
    rows: int
    manifest: dict[str, Any]


# A file's extension names its format; a save_to_disk folder ("hf") has none.
EXTENSIONS = {".jsonl": "jsonl", ".parquet": "parquet"}


def format_for(out: str | os.PathLike, fmt: str | None = None) -> str:
    """The format an export to `out` is written in: `fmt` if given, else what the extension says
    (no extension: a save_to_disk folder). An extension that contradicts `fmt` is an error, so that a
    `.parquet` file never holds JSON lines."""
    suffix = Path(out).suffix.lower()
    if suffix == ".json":  # tools read a .json file as one JSON document, which no export format is
        raise MarginLensError(f"{Path(out).name!r}: a .json file would be read as one JSON document, but exports "
                              "are JSON Lines (one pair a line): name it .jsonl, or .parquet for Parquet "
                              "(--format jsonl|parquet|hf)")
    implied = EXTENSIONS.get(suffix) if suffix else "hf"
    if fmt is None:
        if implied is None:
            raise MarginLensError(f"cannot tell the export format of {Path(out).name!r} from its extension "
                                  f"{suffix!r}: name it .jsonl or .parquet, or give the format (--format)")
        return implied
    if fmt not in FORMATS:
        raise MarginLensError(f"unknown export format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if implied is not None and suffix and implied != fmt:
        raise MarginLensError(f"{Path(out).name!r} has the extension of {implied}, but the format asked is {fmt}: "
                              f"rename it or change the format")
    return fmt


def _split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    cut = hh_prompt_cut(chosen, rejected)  # the ingester's cut
    if cut < 0:
        raise MarginLensError("hh-rlhf record without a shared '\\n\\nAssistant:' prompt")
    start = cut + len(HH_ASSISTANT)
    return chosen[:start], chosen[start:], rejected[start:]


def _prompt_string(messages: list[dict[str, str]]) -> str:
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    roles = {"user": "Human", "assistant": "Assistant"}
    turns = "".join(f"\n\n{roles.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)
    return turns + HH_ASSISTANT


def _shape(fmt_name: str, layout: str) -> str:
    """One of: strings, strings-implicit, messages, messages-implicit."""
    if fmt_name in _STRING_FORMATS:
        return "strings-implicit" if layout == "source" and fmt_name == "hh-rlhf" else "strings"
    if layout == "source" and fmt_name == "trl-conversational-implicit":
        return "messages-implicit"
    return "messages"


def _record(shape: str, fmt_name: str, row: dict[str, Any]) -> dict[str, Any]:
    prompt = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
    if shape == "messages":
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
    if shape == "messages-implicit":
        return {
            "chosen": prompt + [{"role": "assistant", "content": row["chosen"]}],
            "rejected": prompt + [{"role": "assistant", "content": row["rejected"]}],
        }
    # The original text is written verbatim only where it is the imported pair: with a column mapping
    # the source's own `chosen`/`rejected` columns may hold something else entirely.
    source = json.loads(row["source_json"]) if row.get("source_json") else {}
    if fmt_name == "hh-rlhf" and isinstance(source.get("chosen"), str) and isinstance(source.get("rejected"), str):
        p, c, r = _split_hh(source["chosen"], source["rejected"])
        if (c.strip(), r.strip()) == (row["chosen"], row["rejected"]):
            if shape == "strings-implicit":
                return {"chosen": source["chosen"], "rejected": source["rejected"]}
            return {"prompt": p, "chosen": c, "rejected": r}
    verbatim = [source.get(k) for k in ("prompt", "chosen", "rejected")]
    if all(isinstance(v, str) for v in verbatim) and verbatim[1:] == [row["chosen"], row["rejected"]] \
            and prompt == [{"role": "user", "content": verbatim[0]}]:
        return dict(zip(("prompt", "chosen", "rejected"), verbatim, strict=True))
    # mapped columns or a message-list prompt: render the canonical pair as strings
    text = _prompt_string(prompt)
    if shape == "strings-implicit":
        return {"chosen": text + " " + row["chosen"], "rejected": text + " " + row["rejected"]}
    return {"prompt": text, "chosen": row["chosen"], "rejected": row["rejected"]}


def _schema(shape: str, with_scores: bool, with_metrics: bool) -> pa.Schema:
    text = pa.string() if shape.startswith("strings") else _MESSAGES
    fields = [] if shape.endswith("implicit") else [("prompt", text)]
    fields += [("chosen", text), ("rejected", text)]
    if with_scores:
        fields += [("score_chosen", pa.float64()), ("score_rejected", pa.float64())]
    if with_metrics:
        fields += [("pair_id", pa.string()), ("m_ex", pa.float64()), ("m_im", pa.float64()),
                   ("score", pa.float64()), ("rank", pa.int64())]
    return pa.schema(fields)


def _num(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _summary(values: np.ndarray) -> dict[str, Any] | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    return {"n": int(values.size), "min": float(values.min()), "mean": float(values.mean()),
            "median": float(np.median(values)), "max": float(values.max()), "std": float(values.std())}


def _scorer(ws: Workspace, dataset: str, fingerprint: str | None) -> dict[str, Any] | None:
    if not fingerprint:
        return None
    manifest = score_manifest(ws, dataset, fingerprint) or {}
    return {"fingerprint": fingerprint, "kind": manifest.get("kind"), "model": manifest.get("model"),
            "spec": manifest.get("spec"), "rows": manifest.get("rows")}


def build_records(
    ws: Workspace, dataset: str, selection: Selection, margins: pd.DataFrame,
    layout: str = "source", include_metrics: bool = False, swapped: frozenset[str] = frozenset(),
    ranked: Selection | None = None,
) -> tuple[pa.Table, str]:
    """The export table (pair-table order) and its shape; pure function of the inputs. Pairs whose
    ids are in `swapped` get chosen and rejected (and their scores and margins) exchanged. `rank` comes
    from `ranked` (default `selection`): the metric's own ranking, before flags removed any pair."""
    if layout not in LAYOUTS:
        raise MarginLensError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    fmt_name = ws.dataset_manifest(dataset).get("format") or ""
    shape = _shape(fmt_name, layout)
    positions = selection.in_source_order()
    rows_idx = margins["row"].to_numpy()[positions]
    texts = load_texts(ws, dataset).take(pa.array(rows_idx, type=pa.int64()))
    rows = texts.select(["pair_id", "prompt", "chosen", "rejected", "source_json"]).to_pylist()
    with_scores = bool(np.isfinite(margins["score_chosen"].to_numpy(np.float64, na_value=np.nan)).any())
    records = [_record(shape, fmt_name, row) for row in rows]
    if with_scores:
        sc = texts.column("score_chosen").to_pylist()
        sr = texts.column("score_rejected").to_pylist()
        for rec, c, r in zip(records, sc, sr, strict=True):
            rec["score_chosen"], rec["score_rejected"] = c, r
    if include_metrics:
        rank = np.empty(len(margins), dtype=np.int64)
        ranked_positions = (ranked or selection).positions
        rank[ranked_positions] = np.arange(1, ranked_positions.size + 1)
        m_ex = margins["m_ex"].to_numpy(np.float64, na_value=np.nan)
        m_im = margins["m_im"].to_numpy(np.float64, na_value=np.nan)
        for rec, row, pos in zip(records, rows, positions, strict=True):
            rec.update(pair_id=row["pair_id"], m_ex=_num(m_ex[pos]), m_im=_num(m_im[pos]),
                       score=_num(selection.scores[pos]), rank=int(rank[pos]))
    for rec, row in zip(records, rows, strict=True):
        if row["pair_id"] in swapped:
            _swap(rec)
    return pa.Table.from_pylist(records, schema=_schema(shape, with_scores, include_metrics)), shape


def _swap(rec: dict[str, Any]) -> None:
    """Exchange the two responses of one record; every shape keys them as chosen/rejected, with the
    prompt (if any) shared, so the swap is the same for all layouts."""
    rec["chosen"], rec["rejected"] = rec["rejected"], rec["chosen"]
    if "score_chosen" in rec:
        rec["score_chosen"], rec["score_rejected"] = rec["score_rejected"], rec["score_chosen"]
    for margin in ("m_ex", "m_im"):
        if rec.get(margin) is not None:
            rec[margin] = -rec[margin]


def apply_flags_to(ws: Workspace, dataset: str, selection: Selection,
                   apply: bool = True) -> tuple[Selection, frozenset[str], dict[str, Any]]:
    """The selection minus pairs flagged "exclude", the selected ids flagged "swap", and the
    manifest's record of both. With apply=False nothing changes, but the record still lists the flags
    (someone reading the manifest should know they existed and were ignored)."""
    summary = flags_summary(ws, dataset)
    record = {**summary, "applied": bool(apply), "excluded_in_export": 0, "swapped_in_export": 0}
    if not apply:
        return selection, frozenset(), record
    excluded = set(summary["excluded"])
    keep = np.array([pid not in excluded for pid in selection.pair_ids], dtype=bool)
    kept = dataclasses.replace(selection, positions=selection.positions[keep],
                               pair_ids=[pid for pid in selection.pair_ids if pid not in excluded])
    swapped = frozenset(summary["swapped"]).intersection(kept.pair_ids)
    record.update(excluded_in_export=int((~keep).sum()), swapped_in_export=len(swapped))
    return kept, swapped, record


def _jsonl_bytes(table: pa.Table) -> bytes:
    lines = (json.dumps(rec, ensure_ascii=False) + "\n" for rec in table.to_pylist())
    return "".join(lines).encode("utf-8")


def export_selection(
    ws: Workspace,
    dataset: str,
    selection: Selection,
    margins: pd.DataFrame,
    out: str | os.PathLike,
    fmt: str | None = None,
    *,
    layout: str = "source",
    include_metrics: bool = False,
    overwrite: bool = False,
    allow_outside: bool = False,
    apply_flags: bool = True,
    within: Path | None = None,
) -> ExportResult:
    """Write the selected pairs of `margins` (the frame `selection` was computed on) and a manifest.
    Noisy-pair flags are applied unless `apply_flags` is False (see the module docstring). `overwrite`
    replaces only a previous export at that path; `allow_outside` admits a path outside the workspace
    (the CLI's --outside-workspace only); `within` is a job's own results folder, used instead of exports/
    (core.selection.export_target)."""
    fmt = format_for(out, fmt)
    actor.require_write("write an export")
    path = resolve_output(ws, out, fmt, allow_outside, overwrite, within)
    selected = selection  # what the metric picked; from here on `selection` is what gets written
    selection, swapped, flags = apply_flags_to(ws, dataset, selected, apply_flags)
    table, shape = build_records(ws, dataset, selection, margins, layout, include_metrics, swapped, ranked=selected)
    source = ws.dataset_manifest(dataset)
    positions = selection.positions
    cand = np.isfinite(selection.scores)
    attrs = margins.attrs
    m_ex = margins["m_ex"].to_numpy(np.float64, na_value=np.nan)
    m_im = margins["m_im"].to_numpy(np.float64, na_value=np.nan)
    manifest: dict[str, Any] = {
        "tool": "marginlens",
        "kind": EXPORT_KIND,  # what lets a later --overwrite recognise this path as an export to replace
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"dataset": dataset, "fingerprint": source.get("fingerprint"), "format": source.get("format"),
                   "source": source.get("source"), "rows": int(len(margins))},
        "scorers": {role: _scorer(ws, dataset, attrs.get(f"{role}_fp")) for role in ("policy", "reference", "reward")},
        "margins": {"m_ex": attrs.get("m_ex_source"), "m_im": attrs.get("m_im_form"), "beta": attrs.get("beta")},
        "selection": selection.spec.to_dict(),
        "counts": {**selected.counts(), "exported": table.num_rows},  # selected - flags.excluded_in_export
        "flags": flags,
        "summaries": {
            "candidates": {"m_ex": _summary(m_ex[cand]), "m_im": _summary(m_im[cand]),
                           "score": _summary(selection.scores[cand])},
            "selected": {"m_ex": _summary(m_ex[positions]), "m_im": _summary(m_im[positions]),
                         "score": _summary(selection.scores[positions])},
        },
        "warnings": list(selection.warnings),
        "output": {"path": str(path), "format": fmt, "layout": layout, "shape": shape,
                   "columns": table.column_names, "rows": table.num_rows, "order": "pair-table order"},
    }
    manifest_path = manifest_path_for(path, fmt)
    if fmt == "hf":
        _write_hf(path, table, manifest, overwrite)
    else:
        def write(staged: Path) -> None:
            if fmt == "jsonl":
                staged.write_bytes(_jsonl_bytes(table))
            else:
                pq.write_table(table, staged)
            manifest["output"]["sha256"] = file_sha256(staged)

        install(path, fmt, overwrite, write)
        write_json(manifest_path, manifest)  # written last: its presence marks a finished export
    return ExportResult(path, manifest_path, table.num_rows, manifest)


def _write_hf(path: Path, table: pa.Table, manifest: dict[str, Any], overwrite: bool) -> None:
    import datasets

    # A fixed, content-derived fingerprint keeps state.json identical across runs (datasets would
    # otherwise draw a random one for an in-memory table).
    digest = hashlib.sha256(_jsonl_bytes(table)).hexdigest()[:16]

    def write(staged: Path) -> None:
        datasets.Dataset(table, fingerprint=digest).save_to_disk(str(staged))
        manifest["output"]["sha256"] = digest
        write_json(staged / HF_MANIFEST, manifest)  # inside the folder, renamed into place with it

    install(path, "hf", overwrite, write)
