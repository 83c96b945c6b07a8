"""The workspace folder: everything a user produces lives under one root.

  datasets/NAME/manifest.json     points at the current data folder (switched atomically)
  datasets/NAME/data-FP/pairs.arrow   the canonical pair table (core.data.pairs.SCHEMA), memory-mapped
  datasets/NAME/data-FP/rejects.jsonl  rows skipped at import, with row, field and reason
  scores/NAME/FINGERPRINT/        score tables (core.scoring.score_tables)
  jobs/JOB_ID/                    background jobs
  exports/, audits/, runs/, models/
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from marginlens.core.atomic import read_json
from marginlens.core.errors import MarginLensError

DEFAULT_ROOT = "marginlens-workspace"
ENV_VAR = "MARGINLENS_WORKSPACE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise MarginLensError(
            f"invalid dataset name {name!r}: use letters, digits, '.', '_' or '-' (max 128, no leading dot)"
        )
    return name


def name_for_source(source: str) -> str:
    """A dataset name suggested by a file, folder or Hub id: its last part before the first dot, with any
    character a name may not hold replaced by '-' ('' when nothing usable is left)."""
    last = source.strip().rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", last.split(".")[0]).strip("-.")[:128]
    return stem if _NAME.match(stem) else ""


class Workspace:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    @classmethod
    def resolve(cls, root: str | os.PathLike | None = None) -> Workspace:
        """The explicit root, else $MARGINLENS_WORKSPACE, else ./marginlens-workspace."""
        return cls(root or os.environ.get(ENV_VAR) or DEFAULT_ROOT)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def _sub(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def datasets_dir(self) -> Path:
        return self._sub("datasets")

    @property
    def scores_dir(self) -> Path:
        return self._sub("scores")

    @property
    def jobs_dir(self) -> Path:
        return self._sub("jobs")

    @property
    def exports_dir(self) -> Path:
        return self._sub("exports")

    @property
    def audits_dir(self) -> Path:
        return self._sub("audits")

    @property
    def runs_dir(self) -> Path:
        return self._sub("runs")

    @property
    def models_dir(self) -> Path:
        return self._sub("models")

    # datasets -----------------------------------------------------------------------------------
    def dataset_dir(self, name: str) -> Path:
        return self.datasets_dir / check_name(name)

    def manifest_path(self, name: str) -> Path:
        return self.dataset_dir(name) / "manifest.json"

    def rejects_path(self, name: str) -> Path:
        """Rows skipped at import: inside the current data folder, so they switch with the pairs."""
        return self.dataset_dir(name) / self.dataset_manifest(name)["data"] / "rejects.jsonl"

    def dataset_names(self) -> list[str]:
        return sorted(p.parent.name for p in self.datasets_dir.glob("*/manifest.json"))

    def has_dataset(self, name: str) -> bool:
        return self.manifest_path(name).is_file()

    def dataset_manifest(self, name: str) -> dict[str, Any]:
        manifest = read_json(self.manifest_path(name))
        if manifest is None:
            known = ", ".join(self.dataset_names()) or "none"
            raise MarginLensError(f"no dataset named {name!r} in {self.root} (known: {known})")
        return manifest

    def pairs_path(self, name: str) -> Path:
        return self.dataset_dir(name) / self.dataset_manifest(name)["data"] / "pairs.arrow"

    def load_pairs(self, name: str):
        """The canonical pair table as a memory-mapped `datasets.Dataset`."""
        import datasets

        return datasets.Dataset.from_file(str(self.pairs_path(name)), in_memory=False)

    def prune_dataset(self, name: str) -> None:
        """Remove data folders the manifest no longer points at (left by replaced imports or crashes)."""
        current = self.dataset_manifest(name)["data"]
        for path in [*self.dataset_dir(name).glob("data-*"), *self.dataset_dir(name).glob(".import-*")]:
            if path.name != current:
                shutil.rmtree(path, ignore_errors=True)
