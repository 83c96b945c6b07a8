"""Starting and resuming an audit from the dashboard: core.audit.audit_job's submit, with the key of the judge's
own URL only (app.llm_endpoints) and the endpoint pre-check made with that key, not this process's."""

from __future__ import annotations

from collections.abc import Callable

from marginlens.app import llm_endpoints
from marginlens.app.access import EndpointChoice
from marginlens.core import jobs
from marginlens.core.audit.audit_params import AuditParams
from marginlens.core.verdicts import VerdictStore
from marginlens.core.workspace import Workspace


def start(ws: Workspace, params: AuditParams, picked: list[EndpointChoice | None],
          on_warning: Callable[[str], None] | None = None) -> jobs.Job:
    """Start, resume or find finished the audit of `params`. The key sent is the one for the URL the params ask
    (the endpoint picked for it, or the configured one there; else none). The endpoint must answer first when
    calls remain; what only looks wrong (the model not in the server's list) goes to `on_warning`."""
    choice = llm_endpoints.for_url(params.endpoint.base_url, [c for c in picked if c is not None])
    if params.pending(VerdictStore.for_dataset(ws, params.dataset)):
        warning = llm_endpoints.check(params.endpoint.model, choice, params.endpoint.timeout)
        if warning and on_warning is not None:
            on_warning(warning)
    return jobs.submit(ws, "audit", params.to_dict(), env=llm_endpoints.key_env(choice))
