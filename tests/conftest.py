"""Shared test set-up. Hub loads hang on these machines without network: force offline mode."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# "auto" scores in float32 on every test machine, AMX or not: expected numbers do not depend on the CPU
# (tests of bf16 ask for it explicitly; tests of the detection set this themselves).
os.environ.setdefault("MARGINLENS_CPU_BF16", "0")
# One training slot per test session, not the machine's: train jobs of this session still queue behind each
# other, but not behind another session's (a colleague's test run, a real training run).
os.environ.setdefault("MARGINLENS_TRAIN_LOCK", f"/tmp/marginlens-test-train-{os.getpid()}.lock")

import pytest  # noqa: E402
from marginlens.core.workspace import Workspace  # noqa: E402


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "workspace")
