"""The scorer protocol and its registry: one class per way of scoring a pair, found by name.

A scorer turns pairs into rows of its score table. Planning, fingerprints, submission, the job worker,
part files and the merge (score_spec, score_submit, score_job, score_parts) go through this protocol
only and never name a scorer, so adding one is one class, registered with @register, plus its test:

    @dataclass(frozen=True)
    class LengthConfig:
        unit: str                                   # everything its numbers depend on

    @register
    class LengthScorer(Scorer[LengthConfig]):
        name = "length"                             # registry key; `ScoreSpec(explicit="length", ...)`
        roles = ("length",)                         # the role its table fills (ScoringHandle.fingerprints)
        table_kind = "reward"                       # its table feeds the explicit margin
        config_type = LengthConfig
        inline = True                               # cheap: computed at submit, no job
        option = ExplicitOption("--length", "UNIT", "explicit margin: response length", "length", "chars")

        @classmethod
        def configure(cls, spec, value):
            return cls(LengthConfig(unit=value))

        def compute(self, batch):
            return [{"chosen_reward": len(r["chosen"]), "rejected_reward": len(r["rejected"])}
                    for r in batch.rows]

A scorer's life: `configure` at plan time (cheap: it may hash files, it never loads a model) -> its
fingerprint -> in the job worker (or inline at submit) `setup(run)`, where heavy loads happen -> for
each chunk of pairs `prepare(rows)`, `plan(prepared)` into batches, `compute(batch)` per batch. The
worker skips batches whose pairs are all written, so `prepare` and `plan` must be deterministic for a
resumed job to end with the numbers of an uninterrupted one.

Built-in scorers live in the modules of SCORER_MODULES (core.scoring.builtin_scorers). Modules named in
$MARGINLENS_SCORER_MODULES (comma-separated) are imported too, in the submitting process and in the job
workers it starts (they inherit the environment): that is how scorers from outside this package join.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from marginlens.core.errors import MarginLensError

if TYPE_CHECKING:
    import pyarrow as pa

SCORER_VERSION = 1  # bump when a change to the scorers changes their numbers (it is in every fingerprint)
SCORER_MODULES = ("marginlens.core.scoring.builtin_scorers", "marginlens.core.scoring.llm_rating")
PLUGINS_ENV = "MARGINLENS_SCORER_MODULES"

ConfigT = TypeVar("ConfigT")
S = TypeVar("S", bound="Scorer[Any]")


class ScoringSettings(Protocol):
    """The user's settings scorers configure themselves from (core.scoring.score_spec.ScoreSpec has them)."""

    device: str
    max_length: int
    max_prompt_length: int
    mode: str
    dtype: str  # "auto", "float32" or "bfloat16": what model scorers run in
    trust_remote_code: list[str]  # model specs the user allowed to run their own code


@dataclass(frozen=True)
class RunOptions:
    """How a scorer runs, never what it computes: nothing here enters a fingerprint."""

    device: str = "cpu"
    max_pairs: int | None = None  # most pairs per batch; None: chosen per device
    token_budget: int | None = None  # padded tokens per batch; None: chosen from the device
    dataset: str = "dataset"  # for messages about a row
    workspace: str | None = None  # the workspace root, for caches shared between jobs (LLM ratings)
    state_dir: str | None = None  # this task's folder in the job, for state a resume must keep (budget ledger)


@dataclass(frozen=True)
class ExplicitOption:
    """How users pick a scorer as the explicit-margin source: a `marginlens score` flag and a Score-page choice."""

    flag: str  # e.g. "--reward-model"
    metavar: str  # the flag's argument, e.g. "REWARD_MODEL"
    help: str  # the flag's help
    label: str  # the Score page's name for it, e.g. "reward model"
    hint: str  # what to enter, e.g. "a reward model id or folder"
    default: str | None = None  # the value when none is given; None: one is required


@dataclass(frozen=True)
class PairBatch:
    """The pairs one `compute` call scores, in the order its rows come back."""

    pair_ids: list[str]
    rows: list[dict[str, Any]]  # per pair, the dataset columns the scorer `reads`
    prepared: list[Any]  # per pair, what `prepare` made of it (token ids for model scorers)

    @classmethod
    def take(cls, indices: Sequence[int], pair_ids: Sequence[str], rows: Sequence[dict[str, Any]],
             prepared: Sequence[Any]) -> PairBatch:
        return cls([pair_ids[i] for i in indices], [rows[i] for i in indices], [prepared[i] for i in indices])

    def __len__(self) -> int:
        return len(self.pair_ids)


def slug(text: str) -> str:
    """A short, file-name-safe label for a model spec or name (its last path part), for fingerprints."""
    name = Path(text.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:48].strip("-.") or "model"


class Scorer(ABC, Generic[ConfigT]):
    """One way of scoring pairs. Subclasses set the class attributes and `configure` and `compute`."""

    name: ClassVar[str]  # registry key, and the explicit-source name users pick
    # The roles its tables fill (keys of ScoringHandle.fingerprints). Each belongs to one scorer: a job's
    # JSON names its tasks by role only, and the role finds the scorer again.
    roles: ClassVar[tuple[str, ...]]
    table_kind: ClassVar[str]  # "logprob" (implicit margin) or "reward" (explicit margin): what readers join
    config_type: ClassVar[type]  # its frozen config dataclass: everything its numbers depend on
    reads: ClassVar[tuple[str, ...]] = ("prompt", "chosen", "rejected")  # dataset columns `compute` sees
    needs_device: ClassVar[bool] = False  # loads a model onto a device (one per rank under scale-out)
    inline: ClassVar[bool] = False  # cheap enough to compute at submit time, without a job
    option: ClassVar[ExplicitOption | None] = None  # set: users can pick it as the explicit-margin source

    def __init__(self, config: ConfigT) -> None:
        # Cheap: a scorer is planned and fingerprinted long before (and often without) running.
        self.config = config
        self.run = RunOptions()

    # -- planning (no model) ----------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def configure(cls: type[S], spec: ScoringSettings, value: str) -> S:
        """The scorer for `value` (a model spec, score columns, ...) under the user's settings (a ScoreSpec)."""

    @classmethod
    def from_fingerprint_inputs(cls: type[S], inputs: Mapping[str, Any], trusted: Collection[str] = ()) -> S:
        """The scorer again, from the inputs its fingerprint hashed (all a job's JSON keeps). `trusted`: the
        model specs the user allowed to run their own code."""
        names = {f.name for f in fields(cls.config_type)}
        return cls(cls.config_type(**{k: v for k, v in inputs.items() if k in names}))

    @classmethod
    def output_schema(cls) -> pa.Schema:
        """Columns of its score table: its table kind's (score_tables.KIND_SCHEMAS), or a superset of them."""
        from marginlens.core.scoring.score_tables import KIND_SCHEMAS

        return KIND_SCHEMAS[cls.table_kind]

    def fingerprint_inputs(self) -> dict[str, Any]:
        """What the fingerprint hashes; also recorded in the table's manifest and the job's JSON."""
        return {"version": SCORER_VERSION, "kind": self.table_kind, **asdict(self.config)}

    def fingerprint(self) -> str:
        """`KIND-LABEL-HASH`: a finished table under it is a cache hit for the same inputs."""
        digest = hashlib.sha256(json.dumps(self.fingerprint_inputs(), sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.table_kind}-{slug(self.model or self.name)}-{digest}"

    @property
    def model(self) -> str | None:
        """The model spec it loads, if any."""
        return getattr(self.config, "model", None)

    @property
    def source(self) -> str:
        """Where its scores come from, as a table's manifest records it ("model")."""
        return self.model or self.name

    # -- running ----------------------------------------------------------------------------------
    def setup(self, run: RunOptions) -> None:
        """Heavy preparation (model loads) before the first batch; called once per process."""
        self.run = run

    def plan_settings(self) -> dict[str, Any]:
        """RunOptions fields chosen at setup that its batch plan depends on. The worker keeps them from the
        first setup and passes them back on a resume, so that a resumed job batches exactly as before."""
        return {}

    def prepare(self, rows: list[dict[str, Any]]) -> list[Any]:
        """Per-pair preparation of a chunk (tokenisation for model scorers)."""
        return rows

    def plan(self, prepared: list[Any]) -> list[list[int]]:
        """Indices of a chunk's pairs grouped into batches (deterministic)."""
        return [list(range(len(prepared)))] if prepared else []

    def n_tokens(self, batch: PairBatch) -> int:
        """Tokens a batch runs through a model, for the tokens/s shown while a job runs."""
        return 0

    @abstractmethod
    def compute(self, batch: PairBatch) -> list[dict[str, Any]]:
        """One row per pair of `batch`, in its order: every `output_schema` column but pair_id (`truncated`
        may be left out: nothing was cut)."""


def scored_rows(scorer: Scorer[Any], batch: PairBatch) -> list[dict[str, Any]]:
    """`compute`, checked, with each row's pair_id."""
    rows = scorer.compute(batch)
    if len(rows) != len(batch):
        raise MarginLensError(f"scorer {scorer.name!r} returned {len(rows)} rows for a batch of {len(batch)} pairs")
    return [{"truncated": False, **row, "pair_id": pid} for pid, row in zip(batch.pair_ids, rows, strict=True)]


# ------------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------------
SCORERS: dict[str, type[Scorer[Any]]] = {}


def register(cls: type[S]) -> type[S]:
    """Class decorator: add a scorer to SCORERS (names and roles must be unique; re-importing the same
    class, e.g. a module imported under a second name, replaces it)."""
    for attr in ("name", "roles", "table_kind", "config_type"):
        if not hasattr(cls, attr):
            raise TypeError(f"scorer {cls.__qualname__} does not set {attr}")

    def same(other: type[Scorer[Any]]) -> bool:
        return (other.__module__, other.__qualname__) == (cls.__module__, cls.__qualname__)

    if cls.name in SCORERS and not same(SCORERS[cls.name]):
        raise TypeError(f"two scorers named {cls.name!r}: {SCORERS[cls.name].__qualname__} and {cls.__qualname__}")
    for other in SCORERS.values():
        shared = set(other.roles) & set(cls.roles)
        if shared and not same(other):
            raise TypeError(f"role {sorted(shared)[0]!r} belongs to scorer {other.name!r} already")
    SCORERS[cls.name] = cls
    return cls


_loaded = False


def load_scorers() -> dict[str, type[Scorer[Any]]]:
    """SCORERS with the built-in and plugin modules imported (their imports register their scorers)."""
    global _loaded
    if not _loaded:
        plugins = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
        for module in (*SCORER_MODULES, *plugins):
            importlib.import_module(module)
        _loaded = True
    return SCORERS


def scorer_class(name: str) -> type[Scorer[Any]]:
    scorers = load_scorers()
    if name not in scorers:
        raise MarginLensError(f"unknown scorer {name!r} (known: {', '.join(sorted(scorers))})")
    return scorers[name]


def scorer_for_role(role: str) -> type[Scorer[Any]]:
    for cls in load_scorers().values():
        if role in cls.roles:
            return cls
    raise MarginLensError(f"no scorer fills the role {role!r} (a job from a MarginLens with other scorers?)")


def explicit_scorers() -> list[type[Scorer[Any]]]:
    """The scorers users can pick as the explicit-margin source, in registration order."""
    return [cls for cls in load_scorers().values() if cls.option is not None]
