"""A throwaway verifier for tests/test_evaluators.py, registered on import: in the test process (by a fixture
that unregisters it afterwards) and in the job workers it starts, which import this module because
$MARGINLENS_VERIFIER_MODULES names it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marginlens.core.experiments.verifiers import Verifier, register_verifier

NAME = "test-answer-or-length"


def check(response: str, row: Mapping[str, Any]) -> float:
    """1 when the answer appears in the response; else a share of its length (so scores differ per prompt)."""
    if row["answer"].lower() in response.lower():
        return 1.0
    return min(len(response), 40) / 80


VERIFIER = register_verifier(Verifier(NAME, "1", "test only: answer found, else length / 80", check))
