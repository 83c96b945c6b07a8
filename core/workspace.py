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
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marginlens.core.errors import MarginLensError
from marginlens.core.integrity import REPAIR_COMMAND, DamagedFile, check_sha256, read_json_object

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_ROOT = "marginlens-workspace"
ENV_VAR = "MARGINLENS_WORKSPACE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# What a dataset manifest must hold for the readers to find and describe the data.
MANIFEST_FIELDS = ("data", "fingerprint", "format", "rows", "source")
# pyarrow's and datasets' errors for a file that is not the Arrow stream it should be
_READ_ERRORS = (OSError, ValueError, EOFError)


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

    def doctor_command(self, repair: bool = True) -> str:
        """`marginlens doctor --repair`, with --workspace when this is not the default workspace."""
        command = REPAIR_COMMAND if repair else REPAIR_COMMAND.replace(" --repair", "")
        default = Workspace.resolve(None).root
        return command if self.root == default else f"{command} --workspace {shlex.quote(str(self.root))}"

    def damaged(self, path: str | os.PathLike, problem: str) -> DamagedFile:
        return DamagedFile(path, problem, self.doctor_command())

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
        """The dataset's manifest; DamagedFile when it is not one the readers below can follow."""
        path = self.manifest_path(name)
        manifest = read_json_object(path, self.doctor_command, required=MANIFEST_FIELDS)
        if manifest is None:
            known = ", ".join(self.dataset_names()) or "none"
            raise MarginLensError(f"no dataset named {name!r} in {self.root} (known: {known})")
        rows, data = manifest["rows"], manifest["data"]
        if not (isinstance(rows, dict) and all(isinstance(rows.get(k), int) for k in ("read", "imported", "rejected"))):
            raise self.damaged(path, "its 'rows' field is not {read, imported, rejected} counts")
        if not (isinstance(data, str) and data not in ("", ".", "..") and "/" not in data and "\\" not in data):
            raise self.damaged(path, f"its 'data' field {data!r} does not name a data folder")
        return manifest

    def pairs_path(self, name: str) -> Path:
        return self._pairs_file(name)[0]

    def _pairs_file(self, name: str) -> tuple[Path, dict[str, Any]]:
        """pairs.arrow and the manifest that points at it, read once: a re-import switching the manifest in
        between must not read as a mismatch."""
        manifest = self.dataset_manifest(name)
        path = self.dataset_dir(name) / manifest["data"] / "pairs.arrow"
        if not path.is_file():
            if self.dataset_manifest(name)["data"] != manifest["data"]:
                return self._pairs_file(name)  # a re-import switched in (and pruned the old folder) meanwhile
            raise self.damaged(path, f"missing ({self.manifest_path(name)} points at it)")
        return path, manifest

    def pairs_table(self, name: str) -> pa.Table:
        """The canonical pair table, memory-mapped with pyarrow alone (no `datasets` import)."""
        return self._read_pairs(name)[0]

    def _read_pairs(self, name: str) -> tuple[pa.Table, Path, dict[str, Any]]:
        import pyarrow as pa

        path, manifest = self._pairs_file(name)
        try:
            # not closed here: the table's buffers live in the mapping
            table = pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()
        except _READ_ERRORS as exc:
            raise self.damaged(path, f"cannot be read as an Arrow stream ({exc})") from None
        self._check_rows(path, manifest, table.num_rows)
        return table, path, manifest

    def load_pairs(self, name: str):
        """The canonical pair table as a memory-mapped `datasets.Dataset`."""
        import datasets

        path, manifest = self._pairs_file(name)
        try:
            pairs = datasets.Dataset.from_file(str(path), in_memory=False)
        except _READ_ERRORS as exc:
            raise self.damaged(path, f"cannot be read as an Arrow stream ({exc})") from None
        self._check_rows(path, manifest, pairs.num_rows)
        return pairs

    def _check_rows(self, path: Path, manifest: dict[str, Any], rows: int) -> None:
        # A stream cut between two record batches still reads: its row count is what gives it away.
        if rows != manifest["rows"]["imported"]:
            raise self.damaged(path, f"holds {rows} pairs, its manifest says {manifest['rows']['imported']}")

    def verify_dataset(self, name: str) -> None:
        """Read the dataset whole: manifest, pairs.arrow, and its sha256 where the manifest records one
        (imports of earlier versions did not). Raises DamagedFile; a slow read for `marginlens doctor` and
        a no-op import, not for every page."""
        _, path, manifest = self._read_pairs(name)
        check_sha256(path, manifest.get("pairs_sha256"), self.doctor_command())

    def prune_dataset(self, name: str) -> None:
        """Remove data folders the manifest no longer points at (left by replaced imports or crashes)."""
        current = self.dataset_manifest(name)["data"]
        for path in [*self.dataset_dir(name).glob("data-*"), *self.dataset_dir(name).glob(".import-*")]:
            if path.name != current:
                shutil.rmtree(path, ignore_errors=True)
