"""The Score page's engine fields (local, or an actor pool on a Ray cluster) and the Ray line of a job's panel.

Running on a cluster is an operator's decision: the pairs' text and the job's params travel to whatever
cluster the address names, so viewers never see the fields, and `engine_env` refuses them again. The
address is a Ray address only (`host:port`, `ray://host:port`, `auto`): no credentials, no other scheme.
Ray's dashboard accepts job submissions from whoever reaches it, so its link is shown to operators only.
"""

from __future__ import annotations

import re
from typing import Any

import streamlit as st
from marginlens.app import access
from marginlens.app.widgets import md_escape
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring import ray_cluster

ENGINE_KEY, ADDRESS_KEY, ACTORS_KEY = "_score_engine", "_score_ray_address", "_score_ray_actors"
_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9._-]+:\d{1,5})$")


def draw() -> None:
    """The engine choice, inside the Score form (operators only)."""
    if not access.can_operate():
        return
    with st.expander("Engine: this machine or a Ray cluster (docs/RAY.md)"):
        st.radio("Engine", ray_cluster.ENGINES, key=ENGINE_KEY, horizontal=True,
                 help="ray: the same scorers in an actor pool on a Ray cluster; the tables are the same")
        c1, c2 = st.columns([3, 1])
        c1.text_input("Ray address", key=ADDRESS_KEY, placeholder="ray-head:6379 (empty: a local Ray for the job)",
                      help="`ray start --head` prints it; empty: $RAY_ADDRESS of the server, else a local Ray")
        c2.number_input("Actors (0 = from the cluster)", min_value=0, step=1, key=ACTORS_KEY)


def check_address(text: str) -> str | None:
    """The typed address, checked (None: empty)."""
    text = text.strip()
    if not text:
        return None
    if not _ADDRESS.match(text):
        raise MarginLensError(f"Ray address {text!r}: expected host:port, ray://host:port or auto "
                              "(what `ray start --head` prints)")
    return text


def engine_env(state: Any = None, device: str = "auto") -> dict[str, str]:
    """The job worker's environment for the engine chosen in the form (core.scoring.ray_cluster); `device`: the
    form's Device ("cpu" keeps the actors off the cluster's GPUs, as the CLI's --device cpu does)."""
    state = st.session_state if state is None else state
    if state.get(ENGINE_KEY, "local") != "ray":
        return {}
    if not access.can_operate():
        raise MarginLensError("running on a Ray cluster needs the operator's sign-in")
    actors = int(state.get(ACTORS_KEY) or 0) or None
    return ray_cluster.engine_env("ray", check_address(str(state.get(ADDRESS_KEY) or "")), actors, device)


@st.cache_data(ttl=30, show_spinner=False)
def _reachable(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=0.5):  # noqa: S310 (an http URL Ray reported)
            return True
    except (OSError, ValueError):
        return False


def ray_line(extra: dict[str, Any], operator: bool) -> str | None:
    """The Ray figures of a score job's status (blocks, actors, retries), with Ray's dashboard link for operators
    when it answers; None for a job on the local engine."""
    if extra.get("engine") != "ray":
        return None
    parts = [f"Ray at {md_escape(str(extra.get('ray_address') or '?'))}",
             f"blocks {extra.get('blocks_done', 0)}/{extra.get('blocks_total', '?')}"]
    if extra.get("actors_alive") is not None:
        parts.append(f"actors alive {extra['actors_alive']}")
    parts.append(f"actor restarts {extra.get('actor_restarts', 0)}")
    if extra.get("duplicate_pairs"):
        parts.append(f"pairs computed twice by retries {extra['duplicate_pairs']} (written once)")
    url = extra.get("ray_dashboard")
    if operator and isinstance(url, str) and url.startswith("http") and _reachable(url):
        parts.append(f"[Ray dashboard]({url})")
    return " · ".join(parts)


def resume_env(job: Any) -> dict[str, str]:
    """A Resume continues on the engine the job last ran on (its status records it): the same cluster, or a local
    Ray again for a job whose local Ray stopped with it."""
    extra = job.status().extra or {}
    if extra.get("engine") != "ray":
        return {}
    address = extra.get("ray_address")
    return ray_cluster.engine_env("ray", None if address in (None, "local", "current") else str(address))
