"""Which Ray a score job runs on, and what the driver reads back from it for the job's progress.

The engine is chosen per run, never per job: `marginlens score --engine ray` (or the Score page) puts
it in the worker's environment (`engine_env`), not in the job's params, so the job id, its results
folder and its tables are the same on both engines and a job stopped on one resumes on the other.

  MARGINLENS_SCORE_ENGINE=ray        score through Ray (unset or "local": the local engine)
  RAY_ADDRESS=ADDR                   an existing cluster (`ray start --head` prints it); unset: a local
                                     Ray started for the job and stopped with it
  MARGINLENS_RAY_ACTORS=N            actors in the pool (default: one per GPU, else one per CPU)
  MARGINLENS_RAY_DEVICE=auto|cpu     cpu: CPU actors even on a cluster with GPUs
  MARGINLENS_RAY_BLOCK_PAIRS=N       pairs per block (one actor call; default 256)
  MARGINLENS_RAY_CPUS, MARGINLENS_RAY_OBJECT_STORE_MB, MARGINLENS_RAY_DASHBOARD=0|1
                                     the local Ray's size, object store and dashboard (tests keep it small)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marginlens.core.errors import MarginLensError

ENGINE_ENV = "MARGINLENS_SCORE_ENGINE"
ADDRESS_ENV = "RAY_ADDRESS"
ACTORS_ENV = "MARGINLENS_RAY_ACTORS"
DEVICE_ENV = "MARGINLENS_RAY_DEVICE"
BLOCK_ENV = "MARGINLENS_RAY_BLOCK_PAIRS"
ENGINES = ("local", "ray")
# The environment the actors get (Ray passes it to every worker process, on every node): where models are
# cached and whether the Hub may be reached. Never keys: runtime_env is visible on Ray's dashboard.
ACTOR_ENV_PREFIXES = ("MARGINLENS_MODEL_CACHE", "MARGINLENS_SCORER_MODULES", "MARGINLENS_CPU_BF16", "HF_HUB_OFFLINE",
                      "HF_HOME", "TRANSFORMERS_OFFLINE")
INSTALL_HINT = "pip install 'marginlens[ray]'"


@dataclass(frozen=True)
class RaySettings:
    """The Ray engine's run settings, from the worker's environment (none enters a fingerprint)."""

    address: str | None
    actors: int | None
    device: str
    block_pairs: int

    @classmethod
    def from_env(cls) -> RaySettings:
        return cls(os.environ.get(ADDRESS_ENV) or None, _positive(ACTORS_ENV), os.environ.get(DEVICE_ENV, "auto"),
                   _positive(BLOCK_ENV) or 256)


def _positive(name: str) -> int | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise MarginLensError(f"{name} must be a positive integer, not {raw!r}")
    return int(raw)


def requested() -> bool:
    """This worker runs the Ray engine."""
    engine = os.environ.get(ENGINE_ENV, "local")
    if engine not in ENGINES:
        raise MarginLensError(f"{ENGINE_ENV}={engine!r}: expected one of {', '.join(ENGINES)}")
    return engine == "ray"


def engine_env(engine: str, address: str | None = None, actors: int | None = None,
               device: str = "auto") -> dict[str, str]:
    """What a submitter passes to the job worker (core.jobs.submit's `env`) to run `engine`."""
    if engine not in ENGINES:
        raise MarginLensError(f"unknown engine {engine!r} (expected one of {', '.join(ENGINES)})")
    if engine == "local":
        return {ENGINE_ENV: "local"}
    check_installed()
    if actors is not None and actors < 1:
        raise MarginLensError(f"--ray-actors must be at least 1, got {actors}")
    env = {ENGINE_ENV: "ray", DEVICE_ENV: "cpu" if device == "cpu" else "auto"}
    if address:
        env[ADDRESS_ENV] = address
    if actors:
        env[ACTORS_ENV] = str(actors)
    return env


def check_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise MarginLensError(f"the Ray engine needs Ray Data: {INSTALL_HINT}")


def connect(settings: RaySettings, log: Callable[[str], None]) -> dict[str, Any]:
    """Join the cluster at `settings.address`, or start a local Ray for this job. Returns what the job's
    progress records: the address, Ray's dashboard URL (None without one) and whether Ray is ours to stop."""
    check_installed()
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(ACTOR_ENV_PREFIXES)}
    runtime_env = {"env_vars": env}
    if settings.address:
        log(f"ray: joining the cluster at {settings.address}")
        context = ray.init(address=settings.address, runtime_env=runtime_env, log_to_driver=False)
    else:
        cpus = _positive("MARGINLENS_RAY_CPUS")
        store = _positive("MARGINLENS_RAY_OBJECT_STORE_MB")
        dashboard = os.environ.get("MARGINLENS_RAY_DASHBOARD")
        log("ray: starting a local Ray for this job" + (f" ({cpus} CPUs)" if cpus else ""))
        context = ray.init(address="local", num_cpus=cpus, object_store_memory=store * 2**20 if store else None,
                           include_dashboard=None if dashboard is None else dashboard == "1",
                           runtime_env=runtime_env, log_to_driver=False)
    url = getattr(context, "dashboard_url", None) or None
    return {"ray_address": settings.address or "local", "ray_dashboard": f"http://{url}" if url and "://" not in url
            else url}


def pool_facts(class_fragment: str = "ScorerActor") -> dict[str, int] | None:
    """Actors of this job's pool alive now and their restarts so far, from Ray's actor table (GCS; no
    dashboard needed). None when the table cannot be read (a Ray without this developer API)."""
    import ray

    try:
        from ray._private import state

        table = state.actors(job_id=ray.JobID.from_hex(ray.get_runtime_context().get_job_id()))
    except Exception:  # a figure for the panel: never a reason to stop scoring
        return None
    mine = [a for a in table.values() if class_fragment in str(a.get("ActorClassName", ""))]
    alive = sum(1 for a in mine if str(a.get("State")) in ("ALIVE", "2"))
    return {"actors_alive": alive, "actor_restarts": sum(int(a.get("NumRestarts") or 0) for a in mine)}


def cluster_size(settings: RaySettings) -> tuple[int, bool]:
    """Actors to start, and whether each takes a GPU: `--ray-actors` or one per GPU of the cluster (GPUs
    unless the user chose the CPU), else one per CPU."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if settings.device != "cpu" else 0
    size = settings.actors or gpus or max(1, int(resources.get("CPU", 1)))
    return size, gpus > 0
