"""Training data: the TRL-format file or folder of an export, checked and loaded for TRL; the exports
a workspace holds; content fingerprints and provenance manifests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from marginlens.core.atomic import read_json
from marginlens.core.errors import MarginLensError, RowError
from marginlens.core.workspace import Workspace

RESPONSE_COLUMNS = ("prompt", "chosen", "rejected")


def data_fingerprint(path: str | os.PathLike) -> str:
    """Content hash of a data file or save_to_disk folder: a rewritten export makes a new run."""
    path = Path(path)
    hasher = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        hasher.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                hasher.update(block)
    return "sha256:" + hasher.hexdigest()[:24]


def _read_dataset(path: Path) -> Any:
    import datasets

    if path.is_dir():
        if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            raise MarginLensError(f"{path}: a folder, but not a datasets save_to_disk folder")
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise MarginLensError(f"{path}: the saved DatasetDict has no 'train' split (splits: {list(loaded)})")
            loaded = loaded["train"]
        return loaded
    builders = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    builder = builders.get(path.suffix.lower())
    if builder is None:
        raise MarginLensError(f"{path}: training data must be .jsonl, .json, .parquet or a save_to_disk folder")
    return datasets.load_dataset(builder, data_files=str(path), split="train")


def _first_bad_row(column: Any, is_text: bool) -> int | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    empty = pc.is_null(column)
    size = pc.utf8_length(column) if is_text else pc.list_value_length(column)
    empty = pc.or_(empty, pc.equal(pc.fill_null(size, 0), 0))
    index = pc.index(empty, True).as_py()
    return None if index < 0 else index


def _column_kind(path: Path, table: Any, name: str) -> str:
    import pyarrow as pa

    arrow_type = table.schema.field(name).type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "text"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return "messages"
    raise MarginLensError(
        f"{path}: field '{name}' is {arrow_type}; expected a string or a list of {{role, content}} messages"
    )


def _check_filled(path: Path, dataset: Any, names: tuple[str, ...], reason: str) -> dict[str, str]:
    table = dataset.data.table
    kinds = {}
    for name in names:
        kinds[name] = _column_kind(path, table, name)
        bad = _first_bad_row(table.column(name), kinds[name] == "text")
        if bad is not None:
            raise RowError(str(path), bad, name, "empty", reason)
    return kinds


def load_training_data(path: str | os.PathLike) -> Any:
    """The prompt/chosen/rejected columns of a TRL-format file or folder, checked, as a datasets.Dataset.

    Accepts what TRL's preference trainers accept: standard (strings) or conversational (message lists),
    with an explicit prompt column or an implicit one (whole transcripts in chosen/rejected, e.g. an
    hh-rlhf export; the shared prefix becomes the prompt through TRL's own extract_prompt). A prompt
    given as messages with plain-string responses is turned into the conversational form, since TRL
    cannot concatenate a message list with a string. Other columns are dropped.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MarginLensError(f"training data {path} not found")
    try:
        dataset = _read_dataset(path)
    except MarginLensError:
        raise
    except Exception as exc:  # arrow/json errors: unreadable or mixed-type columns
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MarginLensError(f"{path}: cannot read as preference data: {first}") from None
    missing = [c for c in ("chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise MarginLensError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}: TRL preference data needs "
            f"chosen and rejected, and a prompt column or transcripts that share it (has: "
            f"{', '.join(dataset.column_names)})"
        )
    if len(dataset) == 0:
        raise MarginLensError(f"{path}: no rows to train on")
    explicit = "prompt" in dataset.column_names
    dataset = dataset.select_columns([c for c in RESPONSE_COLUMNS if c in dataset.column_names])
    kinds = _check_filled(path, dataset, ("chosen", "rejected"), "missing or empty; every pair needs both responses")
    if kinds["chosen"] != kinds["rejected"]:
        raise MarginLensError(f"{path}: 'chosen' is {kinds['chosen']} but 'rejected' is {kinds['rejected']}")
    if not explicit:
        from trl.data_utils import extract_prompt

        dataset = dataset.map(extract_prompt, desc="extracting the shared prompt")
        reason = "chosen and rejected share no prompt (an implicit prompt is their common beginning)"
    else:
        reason = "missing or empty; every pair needs a prompt"
    kinds.update(_check_filled(path, dataset, ("prompt",), reason))
    if kinds["prompt"] == "text" and kinds["chosen"] == "messages":
        raise MarginLensError(
            f"{path}: 'prompt' is text but the responses are message lists; use all strings or all message lists"
        )
    if kinds["prompt"] == "messages" and kinds["chosen"] == "text":
        dataset = dataset.map(
            lambda row: {
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            },
            desc="wrapping responses as assistant messages",
        )
    return dataset.select_columns(list(RESPONSE_COLUMNS))


def export_manifest(data: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance manifest core.selection.export writes beside (or inside) an export; None for other files."""
    from marginlens.core.selection.export import manifest_path_for

    path = Path(data)
    try:
        return read_json(manifest_path_for(path, "hf" if path.is_dir() else "jsonl"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def list_exports(ws: Workspace) -> list[dict[str, Any]]:
    """The finished exports under the workspace's exports/ folder, newest first.

    An export is finished once its manifest exists (core.selection.export writes it last): PATH beside
    PATH.manifest.json, or a save_to_disk folder holding marginlens_manifest.json. Each entry:
    {"path", "name", "format", "rows", "dataset", "created", "manifest"}.
    """
    from marginlens.core.selection.export import HF_MANIFEST

    root = ws.exports_dir
    if not root.is_dir():
        return []
    found: list[tuple[Path, Path]] = []
    for manifest in root.rglob("*.manifest.json"):
        data = manifest.with_name(manifest.name[: -len(".manifest.json")])
        if data.is_file():
            found.append((data, manifest))
    for manifest in root.rglob(HF_MANIFEST):
        found.append((manifest.parent, manifest))
    exports = []
    for data, manifest_path in found:
        try:
            manifest = read_json(manifest_path) or {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # not one of ours, or being rewritten: it shows up on the next listing
        output = manifest.get("output") or {}
        exports.append({
            "path": str(data),
            "name": str(data.relative_to(root)),
            "format": output.get("format") or ("hf" if data.is_dir() else data.suffix.lstrip(".")),
            "rows": output.get("rows"),
            "dataset": (manifest.get("source") or {}).get("dataset"),
            "created": manifest.get("created", ""),
            "manifest": str(manifest_path),
        })
    return sorted(exports, key=lambda e: (e["created"], e["name"]), reverse=True)


def write_flipped(src: str | os.PathLike, dst: str | os.PathLike, flip: Any) -> int:
    """A lab arm's training data with some pairs' chosen and rejected exchanged (a cleaning rule's flip arm,
    core.selection.signal_cleaning): `src` is a JSONL export, `flip` one bool per record in its order. Writes
    `dst`, then `dst`'s manifest (src's, recording the flip), last: a run killed in between leaves no manifest,
    and the lab rebuilds `dst` from `src`. Returns the number of pairs flipped."""
    from marginlens.core.atomic import read_jsonl, write_json, write_jsonl
    from marginlens.core.selection.export import _swap, manifest_path_for

    src, dst = Path(src), Path(dst)
    records = read_jsonl(src)
    flags = [bool(f) for f in flip]
    if len(flags) != len(records):
        raise MarginLensError(f"{src}: {len(records)} records but {len(flags)} flip marks; delete {src.parent} and "
                              "resubmit the experiment to select it again")
    for record, swap in zip(records, flags, strict=True):
        if swap:
            _swap(record)  # the export's own swap, so a flipped pair reads as an export's swapped flag does
    write_jsonl(dst, records)
    manifest = read_json(manifest_path_for(src, "jsonl")) or {}
    manifest["output"] = {**(manifest.get("output") or {}), "path": str(dst)}
    manifest["flipped"] = {"pairs": sum(flags), "from": src.name,
                           "why": "the rule's flagged pairs, trained with chosen and rejected exchanged"}
    write_json(manifest_path_for(dst, "jsonl"), manifest)
    return sum(flags)
