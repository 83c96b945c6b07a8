"""The real HH-RLHF harmless-base test split from ../shared/data (2,312 pairs)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from marginlens.core.data.formats import HH_ASSISTANT
from marginlens.core.data.ingest import import_dataset

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
pytestmark = pytest.mark.skipif(not HH.exists(), reason=f"{HH} is absent (a clone without ../shared)")


def hh_text(messages: list[dict]) -> str:
    return "".join(f"\n\nHuman: {m['content']}" if m["role"] == "user" else f"\n\nAssistant: {m['content']}"
                   for m in messages)


def test_every_hh_pair_parses_with_the_prompt_before_the_final_assistant_turn(ws):
    records = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
    assert len(records) == 2312
    report = import_dataset(HH, "hh", ws, allow_empty_responses=True)
    assert report.format == "hh-rlhf" and report.imported == 2312 and not report.rejected
    pairs = ws.load_pairs("hh")
    for row, prompt, chosen, rejected in zip(pairs["source_row"], pairs["prompt"], pairs["chosen"],
                                             pairs["rejected"], strict=True):
        record = records[row]
        # the prompt is the text before the final "\n\nAssistant:" (of the side whose final turn is shared)
        cut = min(record["chosen"].rfind(HH_ASSISTANT), record["rejected"].rfind(HH_ASSISTANT))
        before = record["chosen"][:cut]
        assert " ".join(hh_text(prompt).split()) == " ".join(before.split())
        assert prompt[-1]["role"] == "user"
        assert record["chosen"][cut + len(HH_ASSISTANT):].strip() == chosen
        assert record["rejected"][cut + len(HH_ASSISTANT):].strip() == rejected
    # 5 rows carry a longer continuation on one side only: kept, flagged
    assert sum("multi_turn_response" in f for f in pairs["flags"]) == 5


def test_hh_rejecting_empty_responses_skips_the_four_by_line(ws):
    report = import_dataset(HH, "hh", ws, policy="skip", allow_empty_responses=False)
    assert report.imported == 2308 and report.rejected == {"empty_content": 4}
    rejects = [json.loads(line) for line in report.rejects_path.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [87, 517, 926, 1104]
    assert all(r["field"] == "chosen" for r in rejects)
