"""Content hashes of a local model folder: what decides the numbers, not how the files happen to be written.

`models.model_fingerprint` and `models.model_identity` are built from these. A score table, a generation
cache and a training run are keyed by them, so they must change when the numbers can change and only then.
Hashing file bytes failed the second half: saving the same model again rewrites bytes that change no number
(config.json's `transformers_version`, `_name_or_path` and a converter's name; the safetensors header's
`__metadata__`; how the weights are split into shards; whether the chat template sits in
`chat_template.jinja` or in tokenizer_config.json; a tokenizer saved with `is_local`). A new transformers
release re-converting the built-in SmolLM2 folder then made every table scored with it stale. So:

- weights: each tensor's name, dtype, shape and data, read from the safetensors headers and sorted by name
  (the file names, shard split, offsets and header metadata do not count). Checkpoints up to 64 MiB hash
  every byte; bigger ones hash evenly spaced 16 KiB slices of every tensor (4096 slices in all, 64 MiB, but
  at least two a tensor), which keeps a 16 GB checkpoint instant while any training or conversion, which
  moves every value of the tensors it touches, still changes the hash (one edited number in a big
  checkpoint may not). Other weight formats (.bin, .pt, .gguf) hash their file bytes, sampled likewise.
- config.json as canonical JSON (sorted keys) without version stamps and path keys (`CONFIG_STAMPS`), and
  with the pre-5.0 key `torch_dtype` read as `dtype`.
- the tokenizer: tokenizer.json, tokenizer_config.json and the other vocab files as canonical JSON without
  stamps and load-time keys (`TOKENIZER_STAMPS`), and the chat templates by name wherever they are stored.
"""

from __future__ import annotations

import functools
import hashlib
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".pth")
# The scheme itself is hashed: a later change of what counts makes new identities instead of colliding.
SCHEME = b"marginlens-model-content/2\n"

# Written by whoever saved the file, not read by the model: the library version, where it was loaded from,
# the GGUF converter's name for the model, the Hub commit, and whether attention was picked automatically.
CONFIG_STAMPS = frozenset({"transformers_version", "_name_or_path", "_model_name_or_path", "_commit_hash",
                           "_attn_implementation_autoset"})
# How a tokenizer was loaded (from a local folder, offline), where from, and the library that saved it.
TOKENIZER_STAMPS = frozenset({"is_local", "local_files_only", "name_or_path", "_commit_hash",
                              "transformers_version", "tokenizer_file", "chat_template"})
# The tokenizer's content besides tokenizer.json and tokenizer_config.json: JSON files are canonicalised,
# the others (sentencepiece models, plain-text vocabularies) hashed as they are.
_TOKENIZER_JSON = ("special_tokens_map.json", "vocab.json", "added_tokens.json")
_TOKENIZER_RAW = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "merges.txt", "vocab.txt")

WHOLE_LIMIT = 64 << 20  # weights up to this size are hashed whole
_SLICE = 16 << 10
_SLICES = 4096  # slices read in all from a bigger checkpoint: 64 MiB


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _without(value: Any, keys: frozenset[str]) -> Any:
    """`value` with `keys` dropped from every object at any depth (a composite model nests its configs)."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def config_content(folder: Path) -> bytes:
    config = _without(json.loads((folder / "config.json").read_bytes()), CONFIG_STAMPS)
    if "torch_dtype" in config:  # transformers 5 writes the same setting as `dtype`
        config.setdefault("dtype", config.pop("torch_dtype"))
    return canonical_json(config)


def generation_config_content(path: Path) -> bytes:
    """generation_config.json (its end-of-sequence ids decide where a generated response stops) as canonical
    JSON without the stamps, `_from_model_config` (a note that it was derived from config.json) included."""
    return canonical_json(_without(json.loads(path.read_bytes()), CONFIG_STAMPS | {"_from_model_config"}))


def _safetensors_index(path: Path) -> list[tuple[str, str, list[int], Path, int, int]] | None:
    """(name, dtype, shape, file, start, end) of each tensor in a safetensors file, from its header alone;
    None when the file has no valid header (it is then hashed as bytes, and loading it will say what is wrong)."""
    file_size = path.stat().st_size
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if 8 + size > file_size:
            return None
        try:
            header = json.loads(fh.read(size))
            header.pop("__metadata__", None)
            base = 8 + size
            tensors = [(name, t["dtype"], t["shape"], path, base + t["data_offsets"][0], base + t["data_offsets"][1])
                       for name, t in header.items()]
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            return None
    return tensors if all(start <= end <= file_size for *_, start, end in tensors) else None


def _sampled(fh: Any, start: int, end: int, slices: int, hasher: Any) -> None:
    """Feed bytes [start, end) of an open file to `hasher`: all of them, or `slices` evenly spaced slices."""
    n = end - start
    if slices <= 0 or n <= slices * _SLICE:
        fh.seek(start)
        hasher.update(fh.read(n))
        return
    for i in range(slices):
        fh.seek(start + (n - _SLICE) * i // (slices - 1))
        hasher.update(fh.read(_SLICE))


def weights_content(folder: Path, hasher: Any, whole_limit: int = WHOLE_LIMIT) -> None:
    """Feed the weights' content to `hasher`: tensors by name for safetensors, file bytes for other formats."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    indexed = {p: index for p in files if p.suffix == ".safetensors" and (index := _safetensors_index(p)) is not None}
    # by name: which shard holds a tensor, and where in it, is layout
    tensors = sorted((t for index in indexed.values() for t in index), key=lambda t: t[0])
    total = sum(end - start for *_, start, end in tensors)
    per_tensor = 0 if total <= whole_limit else max(2, min(16, _SLICES // max(len(tensors), 1)))
    with ExitStack() as stack:
        handles = {p: stack.enter_context(open(p, "rb")) for p in indexed}
        for name, dtype, shape, path, start, end in tensors:
            hasher.update(canonical_json([name, dtype, shape, end - start]))
            _sampled(handles[path], start, end, per_tensor, hasher)
    for path in files:
        if path not in indexed:
            size = path.stat().st_size
            hasher.update(canonical_json([path.name, size]))
            with open(path, "rb") as fh:
                _sampled(fh, 0, size, 0 if size <= whole_limit else 16, hasher)


def _chat_templates(folder: Path, tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """Every chat template by name, read in the order from_pretrained lets them override one another."""
    templates: dict[str, str] = {}
    for source in (tokenizer_config.get("chat_template"),
                   _read_json(folder / "chat_template.json").get("chat_template")):
        if isinstance(source, str):
            templates["default"] = source
        elif isinstance(source, list):
            templates.update({t["name"]: t["template"] for t in source})
    if (folder / "chat_template.jinja").is_file():
        templates["default"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    extra = folder / "additional_chat_templates"
    for path in sorted(extra.glob("*.jinja")) if extra.is_dir() else []:
        templates[path.stem] = path.read_text(encoding="utf-8")
    return templates


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_bytes()) if path.is_file() else {}


@functools.lru_cache(maxsize=16)
def _fast_tokenizer_digest(path: str, size: int, mtime_ns: int) -> bytes:
    """tokenizer.json canonicalised and hashed; memoised per file version (size and mtime), since a big
    vocabulary takes a second to canonicalise and one command may ask for a model's identity more than once."""
    fast = json.loads(Path(path).read_bytes())
    merges = (fast.get("model") or {}).get("merges")
    if merges and isinstance(merges[0], str):  # tokenizers < 0.20 wrote a merge as "a b", newer as ["a", "b"]
        fast["model"]["merges"] = [m.split(" ", 1) for m in merges]
    return hashlib.sha256(canonical_json(fast)).digest()


def tokenizer_content(folder: Path, hasher: Any) -> None:
    """Feed what decides tokenisation and the chat prompt to `hasher`."""
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    hasher.update(b"tokenizer_config" + canonical_json(_without(tokenizer_config, TOKENIZER_STAMPS)))
    hasher.update(b"chat_templates" + canonical_json(_chat_templates(folder, tokenizer_config)))
    if (folder / "tokenizer.json").is_file():
        stat = (folder / "tokenizer.json").stat()
        hasher.update(b"tokenizer.json" + _fast_tokenizer_digest(str(folder / "tokenizer.json"), stat.st_size,
                                                                 stat.st_mtime_ns))
    for name in _TOKENIZER_JSON:
        if (folder / name).is_file():
            hasher.update(name.encode() + canonical_json(_read_json(folder / name)))
    for name in _TOKENIZER_RAW:
        if (folder / name).is_file():
            hasher.update(name.encode() + (folder / name).read_bytes())


def weights_digest(folder: Path, whole_limit: int = WHOLE_LIMIT) -> str:
    """The weights and config.json of a local model folder: what `models.model_fingerprint` returns for it."""
    hasher = hashlib.sha256(SCHEME)
    hasher.update(config_content(folder))
    weights_content(folder, hasher, whole_limit)
    return "sha256:" + hasher.hexdigest()[:24]


def with_tokenizer(fingerprint: str, folder: Path) -> str:
    """A weights fingerprint extended by the folder's tokenizer and chat templates."""
    hasher = hashlib.sha256(SCHEME + fingerprint.encode())
    tokenizer_content(folder, hasher)
    return "sha256:" + hasher.hexdigest()[:24]
