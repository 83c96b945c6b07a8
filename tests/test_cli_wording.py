"""Issue 12, CLI wording: `marginlens --help` opens with what the tool does (not developer notes),
`--metric` says what it does and its default, and `info` prints counts as whole numbers and explains flags."""

from __future__ import annotations

import pytest
from helpers_data import make_dataset
from marginlens.core.cli import main


def test_top_level_help_is_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert out.split("\n\n")[1].startswith("MarginLens: find the preference pairs worth training on")
    assert "Command modules import heavy libraries" not in out and "entry points" not in out
    assert "marginlens select hh --metric map --ratio 0.4 --out hh-map.jsonl" in out
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    assert "how pairs are ranked (default map)" in " ".join(capsys.readouterr().out.split())


def test_info_counts_are_integers_and_flags_are_explained(ws, tmp_path, capsys):
    human, bot = "\n\nHuman: ", "\n\nAssistant: "
    rows = [{"chosen": f"{human}Hi {i}?{bot}Hello {i}.", "rejected": f"{human}Hi {i}?{bot}Go away."} for i in range(4)]
    rows.append({"chosen": f"{human}Hi?{bot}Hello.{human}And?{bot}More.", "rejected": f"{human}Hi?{bot}No."})
    make_dataset(ws, "hh", rows, tmp_path, fmt="hh-rlhf")
    capsys.readouterr()
    assert main(["info", "hh", "--workspace", str(ws.root)]) == 0
    out = capsys.readouterr().out
    turns = next(line for line in out.splitlines() if "prompt turns" in line)
    assert "min 1  median 1" in turns and "max 1" in turns and ".0" not in turns  # counts, not 1.0
    assert "multi_turn_response: 1 pair -- chosen or rejected goes on for more turns" in out
