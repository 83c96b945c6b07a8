"""core.actor: the backstop behind the dashboard's roles. Whatever a page shows, a viewer's session cannot
start a job, cancel one, write an export or flag pairs: each refusal happens in core, and nothing is written."""

from __future__ import annotations

import contextvars

import pytest
from helpers_app import DATASET, build_workspace
from marginlens.core import actor, jobs
from marginlens.core.data.flags import flag_pairs, unflag_pairs
from marginlens.core.selection.export import export_selection
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.select import SelectionSpec, select


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def as_viewer(fn, *args, **kwargs):
    def run():
        actor.act_as(actor.Actor("viewer", may_write=False))
        return fn(*args, **kwargs)

    return contextvars.copy_context().run(run)


def test_a_viewer_writes_nothing_through_core(tmp_path, capsys):
    ws = build_workspace(tmp_path / "ws", n=20)
    margins = load_margins(ws, DATASET)
    selection = select(margins, SelectionSpec(metric="random", ratio=0.5))
    pair = margins["pair_id"].iloc[0]
    before = _files(ws.root)
    for attempt in (lambda: jobs.submit(ws, "import", {"source": "x"}),
                    lambda: export_selection(ws, DATASET, selection, margins, "v.jsonl"),
                    lambda: flag_pairs(ws, DATASET, [pair]),
                    lambda: unflag_pairs(ws, DATASET)):
        with pytest.raises(actor.ReadOnlyError, match="viewer"):
            as_viewer(attempt)
    assert _files(ws.root) == before
    # the same calls as the CLI's user (the default actor) go through, and the job records who started it
    assert flag_pairs(ws, DATASET, [pair]) == 1
    job = jobs.submit(ws, "import", {"source": str(tmp_path / "missing.jsonl"), "name": "m"})
    assert job.spec["started_by"].endswith("(cli)")
    from marginlens.core.cli import main

    assert main(["jobs", "--workspace", str(ws.root)]) == 0
    assert job.spec["started_by"][:16] in capsys.readouterr().out
    with pytest.raises(actor.ReadOnlyError):
        as_viewer(job.cancel)
    assert not (job.dir / "cancel").exists()


def test_the_dashboard_process_default_is_read_only():
    def run():
        previous = actor._DEFAULT
        actor.set_process_default(actor.Actor("not signed in", may_write=False))
        try:
            with pytest.raises(actor.ReadOnlyError):
                actor.require_write("start a job")
        finally:
            actor.set_process_default(previous)

    contextvars.copy_context().run(run)
