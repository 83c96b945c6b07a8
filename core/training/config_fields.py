"""The fields of TRL's config classes (DPOConfig, CPOConfig and their TrainingArguments base) read from their
source files, without importing trl.

Importing trl imports transformers and torch: seconds of a dashboard page's first load and of every CLI
plan, only to learn which settings exist and their types. The classes are plain dataclasses, so their
annotated class attributes are their fields; bases are followed through the module's own imports. When
anything does not parse as expected (a trl release that moved a class), `config_field_types` imports the
real class instead: slower, never wrong. tests/test_config_fields.py holds the parsed fields to the real ones.
"""

from __future__ import annotations

import ast
import builtins
import enum
import functools
import importlib.util
import typing
from pathlib import Path
from typing import Any

# where each method's config class lives: (top-level package, module path inside it, class name)
CONFIG_CLASSES = {
    "dpo": ("trl", "trainer/dpo_config.py", "DPOConfig"),
    "simpo": ("trl", "experimental/cpo/cpo_config.py", "CPOConfig"),
}
# bases imported from a package's lazy __init__ (no class statement there to follow): where they live
KNOWN_BASES = {"TrainingArguments": ("transformers", "training_args.py")}
_TYPING_NAMES = {name: getattr(typing, name) for name in ("Any", "Optional", "Union", "Literal", "Callable",
                                                          "Dict", "List", "Tuple", "Type", "Sequence")}


class _Unknown(dict):
    """An annotation's namespace: builtins and typing's names as themselves; any other name (in these
    classes: transformers' str enums such as SchedulerType) as a str enum, which takes a string value."""

    def __missing__(self, key: str) -> Any:
        if hasattr(builtins, key):
            return getattr(builtins, key)
        return enum.Enum(key, {"VALUE": "value"}, type=str)


def _package_root(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # a top-level package: located, not imported
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _module_file(current: Path, level: int, module: str | None) -> Path | None:
    """The file of `from <level dots><module> import ...` written in `current`, or of an absolute import."""
    if level:
        base = current.parent
        for _ in range(level - 1):
            base = base.parent
    else:
        top = (module or "").split(".")[0]
        root = _package_root(top) if top else None
        if root is None:
            return None
        base, module = root, ".".join((module or "").split(".")[1:])
    target = base.joinpath(*module.split(".")) if module else base
    for candidate in (target.with_suffix(".py"), target / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _annotation(node: ast.expr) -> Any:
    try:
        return eval(ast.unparse(node), {"__builtins__": __builtins__}, _Unknown(_TYPING_NAMES))  # noqa: S307
    except Exception:  # an annotation that does not evaluate as written: let the config class judge the value
        return Any


def _class_fields(path: Path, name: str, depth: int = 0) -> dict[str, Any] | None:
    """{field: annotation} of dataclass `name` in `path`, its bases' first; None when not found."""
    if depth > 8:
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if node is None:
        return None
    fields: dict[str, Any] = {}
    for base in node.bases:
        if not isinstance(base, ast.Name) or base.id == "object":
            return None
        found = _base(tree, path, base.id)
        inherited = _class_fields(found, base.id, depth + 1) if found else None
        if inherited is None:
            return None
        fields.update(inherited)
    for item in node.body:
        if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
            continue
        if "ClassVar" in ast.unparse(item.annotation) or _no_init(item.value):
            continue
        fields[item.target.id] = _annotation(item.annotation)
    return fields


def _base(tree: ast.Module, path: Path, name: str) -> Path | None:
    if name in KNOWN_BASES:
        package, module = KNOWN_BASES[name]
        root = _package_root(package)
        return root / module if root else None
    if any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body):
        return path
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return _module_file(path, node.level, node.module)
    return None


def _no_init(value: ast.expr | None) -> bool:
    return (isinstance(value, ast.Call) and any(k.arg == "init" and isinstance(k.value, ast.Constant)
                                                and k.value.value is False for k in value.keywords))


@functools.cache
def parsed_field_types(method: str) -> dict[str, Any] | None:
    """{field: annotation} of the method's config class from its source; None when it cannot be read."""
    package, module, name = CONFIG_CLASSES[method]
    root = _package_root(package)
    path = root / module if root else None
    if path is None or not path.is_file():
        return None
    try:
        return _class_fields(path, name)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def config_field_types(method: str) -> dict[str, Any]:
    """{field: annotation} of the TRL config class of `method` (init fields only), parsed when possible."""
    parsed = parsed_field_types(method)
    if parsed is not None:
        return parsed
    from marginlens.core.training.presets import trl_fields

    return {key: field.type for key, field in trl_fields(method).items()}


def training_arguments_fields() -> set[str]:
    """The names of transformers' TrainingArguments fields (for the fields transformers 5 renamed)."""
    package, module = KNOWN_BASES["TrainingArguments"]
    root = _package_root(package)
    try:
        parsed = _class_fields(root / module, "TrainingArguments") if root else None
    except (OSError, SyntaxError, UnicodeDecodeError):
        parsed = None
    if parsed is not None:
        return set(parsed)
    import dataclasses

    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}
