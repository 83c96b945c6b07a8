"""Verifier functions: the reward of one response on a task with a checkable answer.

A verifier reads the response and the eval-set row it answers (the row holds `prompt` and, for
checkable tasks, `answer` and optionally `task`) and returns a score in [0, 1]. Verifiers are named
and versioned: the version is part of every fingerprint that depends on a verifier's scores, so a
changed rule is a new result, never a silently different one. The registry is the only list: the
experiments lab's `--eval verifier:NAME` and the demo's explicit reward read it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from marginlens.core.errors import MarginLensError


@dataclass(frozen=True)
class Verifier:
    name: str
    version: str
    description: str  # one line for the CLI help and the Experiments page
    check: Callable[[str, Mapping[str, Any]], float]  # (response, eval-set row) -> score in [0, 1]
    needs: tuple[str, ...] = ("answer",)  # the row fields it reads besides the prompt

    def score(self, response: str, row: Mapping[str, Any]) -> float:
        missing = [f for f in self.needs if row.get(f) in (None, "")]
        if missing:
            raise MarginLensError(f"verifier {self.name!r} needs the field(s) {', '.join(missing)} in every row; "
                                  f"row {row.get('id')!r} has none")
        return float(self.check(response, row))


_REGISTRY: dict[str, Verifier] = {}


def register_verifier(verifier: Verifier) -> Verifier:
    if verifier.name in _REGISTRY:
        raise MarginLensError(f"a verifier named {verifier.name!r} is already registered")
    _REGISTRY[verifier.name] = verifier
    return verifier


def verifier_names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(_REGISTRY)


def get_verifier(name: str) -> Verifier:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY) or "none"
        raise MarginLensError(f"unknown verifier {name!r} (known: {known})") from None


# Modules named here (comma-separated) are imported too, in the submitting process and in the job workers it
# starts (they inherit the environment): how verifiers from outside this package join, as scorers do.
PLUGINS_ENV = "MARGINLENS_VERIFIER_MODULES"


def _load_builtin() -> None:
    # The built-ins are plain specs registered here on first use: a built-in module that imported this
    # registry to register itself would close an import cycle.
    from marginlens.core.experiments.builtin_verifiers import BUILTIN

    for spec in BUILTIN:
        if spec["name"] not in _REGISTRY:
            register_verifier(Verifier(**spec))

    for module in (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",")):
        if module:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise MarginLensError(f"${PLUGINS_ENV} names {module!r}, which cannot be imported: {exc}") from None
