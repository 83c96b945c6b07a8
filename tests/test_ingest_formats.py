"""Every supported layout and file type imports into the same canonical pairs."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
from marginlens.core.data.ingest import import_dataset
from marginlens.core.data.pairs import pair_id

PROMPT = "What is the capital of France?"
GOOD = "The capital of France is Paris."
BAD = "The capital of France is Berlin."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def only_pair(ws, name):
    pairs = ws.load_pairs(name)
    assert pairs.num_rows >= 1
    return pairs[0]


def test_trl_standard_jsonl(ws, tmp_path):
    src = write_jsonl(tmp_path / "std.jsonl", [{"prompt": PROMPT, "chosen": GOOD, "rejected": BAD, "id": 7}])
    report = import_dataset(src, "std", ws)
    assert report.format == "trl-standard" and report.imported == 1
    row = only_pair(ws, "std")
    assert row["prompt"] == [{"role": "user", "content": PROMPT}]
    assert (row["chosen"], row["rejected"]) == (GOOD, BAD)
    assert row["source_row"] == 0
    assert row["score_chosen"] is None
    assert json.loads(row["source_json"])["id"] == 7  # other columns preserved for export


def test_trl_conversational_explicit_prompt(ws, tmp_path):
    record = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
        "chosen": [{"role": "assistant", "content": GOOD}],
        "rejected": [{"role": "assistant", "content": BAD}],
    }
    report = import_dataset(write_jsonl(tmp_path / "conv.jsonl", [record]), "conv", ws)
    assert report.format == "trl-conversational"
    row = only_pair(ws, "conv")
    assert row["prompt"] == record["prompt"]
    assert (row["chosen"], row["rejected"]) == (GOOD, BAD)


def test_trl_conversational_implicit_prompt_is_shared_prefix(ws, tmp_path):
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": PROMPT},
    ]
    record = {
        "chosen": history + [{"role": "assistant", "content": GOOD}],
        "rejected": history + [{"role": "assistant", "content": BAD}],
    }
    report = import_dataset(write_jsonl(tmp_path / "impl.jsonl", [record]), "impl", ws)
    assert report.format == "trl-conversational-implicit"
    row = only_pair(ws, "impl")
    assert row["prompt"] == history
    assert (row["chosen"], row["rejected"]) == (GOOD, BAD)


def test_ultrafeedback_binarized_parquet(ws, tmp_path):
    conv = lambda text: [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": text}]  # noqa: E731
    frame = pd.DataFrame([{"prompt": PROMPT, "prompt_id": "p1", "chosen": conv(GOOD), "rejected": conv(BAD),
                           "messages": conv(GOOD), "score_chosen": 9.0, "score_rejected": 3.5}])
    frame.to_parquet(tmp_path / "ufb.parquet")
    report = import_dataset(tmp_path / "ufb.parquet", "ufb", ws)
    assert report.format == "ultrafeedback-binarized"
    row = only_pair(ws, "ufb")
    assert row["prompt"] == [{"role": "user", "content": PROMPT}]
    assert (row["score_chosen"], row["score_rejected"]) == (9.0, 3.5)
    assert ws.dataset_manifest("ufb")["has_scores"] is True


def armorm_record(scores, chosen=GOOD, rejected=BAD):
    candidates = [GOOD, "Paris, I think.", BAD]
    conv = lambda text: [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": text}]  # noqa: E731
    return {"prompt_id": "x", "prompt": PROMPT, "all_generated_responses": candidates, "all_rm_scores": scores,
            "chosen": conv(chosen), "rejected": conv(rejected)}


def test_simpo_armorm_uses_max_minus_min_and_reports_non_argmax_rows(ws, tmp_path):
    rows = [armorm_record([0.9, 0.5, 0.1]), armorm_record([0.2, 0.7, 0.1], rejected=BAD)]
    rows[1]["prompt"] = rows[1]["chosen"][0]["content"] = rows[1]["rejected"][0]["content"] = "Capital of France?"
    report = import_dataset(write_jsonl(tmp_path / "armorm.jsonl", rows), "armorm", ws)
    assert report.format == "simpo-armorm" and report.imported == 2
    pairs = ws.load_pairs("armorm")
    assert (pairs[0]["score_chosen"], pairs[0]["score_rejected"]) == (0.9, 0.1)
    assert pairs[0]["flags"] == []
    # row 1: chosen (GOOD, candidate 0) is not the argmax (candidate 1): kept, flagged and reported
    assert (pairs[1]["score_chosen"], pairs[1]["score_rejected"]) == (0.7, 0.1)
    assert pairs[1]["flags"] == ["not_argmax"]
    warnings = ws.dataset_manifest("armorm")["warnings"]
    assert warnings == [{"row": 1, "line": 2, "message": "chosen is not the argmax candidate (#1)"}]


def test_hh_rlhf_text_json_and_csv(ws, tmp_path):
    chosen = f"\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: {PROMPT}\n\nAssistant: {GOOD}"
    rejected = f"\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: {PROMPT}\n\nAssistant: {BAD}"
    (tmp_path / "hh.json").write_text(json.dumps([{"chosen": chosen, "rejected": rejected}]))
    with open(tmp_path / "hh.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["chosen", "rejected"])
        writer.writeheader()
        writer.writerow({"chosen": chosen, "rejected": rejected})
    for name, path in (("hhjson", tmp_path / "hh.json"), ("hhcsv", tmp_path / "hh.csv")):
        assert import_dataset(path, name, ws).format == "hh-rlhf"
        row = only_pair(ws, name)
        assert row["prompt"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                 {"role": "user", "content": PROMPT}]
        assert (row["chosen"], row["rejected"]) == (GOOD, BAD)


def test_conversational_csv_cells_hold_json(ws, tmp_path):
    with open(tmp_path / "conv.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerow({"prompt": json.dumps([{"role": "user", "content": PROMPT}]),
                         "chosen": json.dumps([{"role": "assistant", "content": GOOD}]),
                         "rejected": json.dumps([{"role": "assistant", "content": BAD}])})
    assert import_dataset(tmp_path / "conv.csv", "convcsv", ws).format == "trl-conversational"
    assert only_pair(ws, "convcsv")["chosen"] == GOOD


def test_save_to_disk_folder_and_gzip(ws, tmp_path):
    rows = [{"prompt": f"{PROMPT} ({i})", "chosen": GOOD, "rejected": BAD} for i in range(3)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "disk"))
    assert import_dataset(tmp_path / "disk", "disk", ws).imported == 3
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    assert import_dataset(tmp_path / "rows.jsonl.gz", "gz", ws).imported == 3
    assert ws.load_pairs("disk")["pair_id"] == ws.load_pairs("gz")["pair_id"]


def test_explicit_column_mapping_for_unknown_layout(ws, tmp_path):
    src = write_jsonl(tmp_path / "odd.jsonl", [{"question": PROMPT, "good": GOOD, "bad": BAD, "s1": 2, "s2": "1.5"}])
    mapping = {"prompt": "question", "chosen": "good", "rejected": "bad", "score_chosen": "s1", "score_rejected": "s2"}
    report = import_dataset(src, "odd", ws, mapping=mapping)
    row = only_pair(ws, "odd")
    assert report.format == "trl-standard"
    assert (row["chosen"], row["score_chosen"], row["score_rejected"]) == (GOOD, 2.0, 1.5)


def test_pair_id_is_content_hash_stable_under_reordering(ws, tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    import_dataset(write_jsonl(tmp_path / "a.jsonl", rows), "a", ws)
    import_dataset(write_jsonl(tmp_path / "b.jsonl", rows[::-1]), "b", ws)
    ids_a = dict(zip(ws.load_pairs("a")["chosen"], ws.load_pairs("a")["pair_id"], strict=True))
    ids_b = dict(zip(ws.load_pairs("b")["chosen"], ws.load_pairs("b")["pair_id"], strict=True))
    assert ids_a == ids_b and len(set(ids_a.values())) == 20
    assert ids_a["good 3"] == pair_id([{"role": "user", "content": "q3"}], "good 3", "bad 3")
    assert ws.load_pairs("b")["source_row"] == list(range(20))


def test_reimport_same_source_is_noop_and_other_source_needs_replace(ws, tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", [{"prompt": PROMPT, "chosen": GOOD, "rejected": BAD}])
    first = import_dataset(src, "x", ws)
    again = import_dataset(src, "x", ws)
    assert again.unchanged and "no-op" in again.summary()
    assert again.manifest["fingerprint"] == first.manifest["fingerprint"]
    other = write_jsonl(tmp_path / "y.jsonl", [{"prompt": PROMPT, "chosen": BAD, "rejected": GOOD}])
    with pytest.raises(Exception, match="--replace"):
        import_dataset(other, "x", ws)
    import_dataset(other, "x", ws, replace=True)
    assert only_pair(ws, "x")["chosen"] == BAD
    assert len(list(ws.dataset_dir("x").glob("data-*"))) == 1  # the replaced data folder is gone
