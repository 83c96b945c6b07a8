"""Who is acting: the name recorded on every job and export, and whether they may change the workspace.

The CLI acts as the local user with full rights. The dashboard sets the actor of each script run from its
sign-in (`marginlens.app.access`), so a viewer's session reaching any write below fails here, in the one
place every job submission and export passes through, even if a page forgot to hide a button.
"""

from __future__ import annotations

import getpass
from contextvars import ContextVar
from dataclasses import dataclass

from marginlens.core.errors import MarginLensError


@dataclass(frozen=True)
class Actor:
    name: str  # shown beside each job: an e-mail under OIDC, "operator"/"viewer" under a token, the CLI's user
    may_write: bool  # start jobs, write exports, import


def _local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): still record something honest
        return "unknown"


_CURRENT: ContextVar[Actor | None] = ContextVar("marginlens_actor", default=None)
_DEFAULT: Actor | None = None


def current() -> Actor:
    return _CURRENT.get() or _DEFAULT or Actor(f"{_local_user()} (cli)", may_write=True)


def set_process_default(actor: Actor) -> None:
    """Who acts in threads that never called `act_as`. The dashboard's server sets a read-only nobody, so a
    thread that runs before a sign-in is checked (a widget callback in a fresh script thread) cannot write."""
    global _DEFAULT
    _DEFAULT = actor


def act_as(actor: Actor) -> None:
    """Make `actor` the one acting in this thread's context (a dashboard script run)."""
    _CURRENT.set(actor)


class ReadOnlyError(MarginLensError):
    def __init__(self, action: str, actor: Actor):
        super().__init__(f"{action}: {actor.name} signed in as a viewer, who may browse and download but not "
                         "change the workspace; sign in with the operator token")


def require_write(action: str) -> Actor:
    """The acting user, when they may change the workspace; ReadOnlyError otherwise."""
    actor = current()
    if not actor.may_write:
        raise ReadOnlyError(action, actor)
    return actor
