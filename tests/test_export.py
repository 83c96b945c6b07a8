"""Export: round trip through the real ingester, TRL's DPOTrainer, manifest, no overwrite, atomicity, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers_data import conversational_records, hh_records, make_dataset, random_logprobs, standard_records
from marginlens.core.cli import main
from marginlens.core.data.ingest import import_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.selection import export as export_mod
from marginlens.core.selection.export import export_selection
from marginlens.core.selection.filters import parse_filter
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.select import SelectionSpec, select
from marginlens.core.workspace import Workspace

SOURCES = {
    "std": (standard_records, "trl-standard"),
    "conv": (lambda n: [{k: v for k, v in r.items() if not k.startswith("score")} for r in conversational_records(n)],
             "trl-conversational"),
    "uf": (conversational_records, "ultrafeedback-binarized"),
    "hh": (hh_records, "hh-rlhf"),
}


@pytest.fixture
def ws(tmp_path):
    ws = Workspace(tmp_path / "ws")
    for name, (records, _) in SOURCES.items():
        make_dataset(ws, name, records(20), tmp_path)
        random_logprobs(ws, name)
    return ws


def selection_of(ws, name, metric="implicit", **kw):
    margins = load_margins(ws, name, policy_fp="pol")
    return select(margins, SelectionSpec(metric=metric, **kw)), margins


@pytest.mark.parametrize("name", list(SOURCES))
@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_round_trip_same_pairs_same_layout(ws, name, fmt):
    sel, margins = selection_of(ws, name)
    result = export_selection(ws, name, sel, margins, f"{name}.{fmt}", fmt)
    assert result.rows == 8 and result.path.parent == ws.exports_dir
    import_dataset(result.path, name=f"{name}-back", workspace=ws)
    assert ws.dataset_manifest(f"{name}-back")["format"] == SOURCES[name][1]
    back = ws.load_pairs(f"{name}-back")
    # same pairs (content-hash ids), in pair-table order, with the same explicit scores
    assert list(back["pair_id"]) == sorted(sel.pair_ids, key=list(margins["pair_id"]).index)
    orig = ws.load_pairs(name).select(sorted(margins["row"].to_numpy()[sel.positions].tolist()))
    assert back["score_chosen"] == orig["score_chosen"]


def test_byte_identical_and_source_layouts(ws):
    sel, margins = selection_of(ws, "hh")
    a = export_selection(ws, "hh", sel, margins, "a.jsonl")
    b = export_selection(ws, "hh", sel, margins, "b.jsonl")
    assert a.path.read_bytes() == b.path.read_bytes()
    first = json.loads(a.path.read_text().splitlines()[0])
    assert list(first) == ["chosen", "rejected"] and first["chosen"].startswith("\n\nHuman: Tell me fact")
    for fmt in ("parquet", "hf"):
        x = export_selection(ws, "conv", *selection_of(ws, "conv"), f"x.{fmt}", fmt, include_metrics=True)
        y = export_selection(ws, "conv", *selection_of(ws, "conv"), f"y.{fmt}", fmt, include_metrics=True)
        files = sorted(p.name for p in x.path.glob("*.arrow")) if fmt == "hf" else [""]
        for f in files:
            assert (x.path / f).read_bytes() == (y.path / f).read_bytes() if f else x.path.read_bytes() == y.path.read_bytes()
    table = pq.read_table(ws.exports_dir / "x.parquet")
    assert table.column_names == ["prompt", "chosen", "rejected", "pair_id", "m_ex", "m_im", "score", "rank"]
    assert table.column("chosen")[0].as_py()[0]["role"] == "assistant"
    assert sorted(table.column("rank").to_pylist()) == list(range(1, 9))


def test_explicit_layout_for_hh_has_prompt_column(ws):
    sel, margins = selection_of(ws, "hh")
    out = export_selection(ws, "hh", sel, margins, "hh-explicit.jsonl", layout="explicit")
    rec = json.loads(out.path.read_text().splitlines()[0])
    assert rec["prompt"].endswith("\n\nAssistant:") and rec["chosen"].startswith(" Fact")


def test_manifest_contents(ws):
    ids = list(ws.load_pairs("std")["pair_id"])
    from helpers_data import save_rewards

    save_rewards(ws, "std", "rm", ids, np.arange(20.0), np.zeros(20))
    margins = load_margins(ws, "std", policy_fp="pol", reward_fp="rm")
    spec = SelectionSpec(metric="map", weight=2.5, ratio=0.5, seed=7, filters=[parse_filter("m_ex>=2")])
    sel = select(margins, spec)
    result = export_selection(ws, "std", sel, margins, "m.jsonl")
    m = json.loads(result.manifest_path.read_text())
    assert result.manifest_path.name == "m.jsonl.manifest.json"
    assert m["source"]["dataset"] == "std" and m["source"]["fingerprint"] == ws.dataset_manifest("std")["fingerprint"]
    assert m["scorers"]["policy"]["fingerprint"] == "pol" and m["scorers"]["policy"]["model"] == "model-pol"
    assert m["scorers"]["reward"]["fingerprint"] == "rm" and m["scorers"]["reference"] is None
    assert m["margins"] == {"m_ex": "reward:rm", "m_im": "simpo", "beta": None}
    s = m["selection"]
    assert (s["metric"], s["weight"], s["ratio"], s["seed"], s["filter_stage"]) == ("map", 2.5, 0.5, 7, "before")
    assert s["filters"] == [{"field": "m_ex", "op": ">=", "value": 2.0}] and "stable" in s["tie_break"]
    assert m["counts"] == {"total": 20, "missing_margins": 0, "candidates": 18, "k": 9, "selected": 9, "exported": 9}
    assert m["summaries"]["candidates"]["m_ex"]["min"] == 2.0 and m["summaries"]["selected"]["score"]["n"] == 9
    assert m["tool_version"] and m["created"] and m["output"]["rows"] == 9
    import hashlib

    assert m["output"]["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()
    hf = export_selection(ws, "std", sel, margins, "m-hf", "hf")
    assert json.loads((hf.path / "marginlens_manifest.json").read_text())["counts"]["exported"] == 9


def test_no_overwrite_outside_workspace_and_offline_push(ws, tmp_path):
    sel, margins = selection_of(ws, "std")
    first = export_selection(ws, "std", sel, margins, "same.jsonl")
    before = first.path.read_bytes()
    other, _ = selection_of(ws, "std", metric="random")
    with pytest.raises(MarginLensError, match="already exists; pass --overwrite"):
        export_selection(ws, "std", other, margins, "same.jsonl")
    assert first.path.read_bytes() == before
    export_selection(ws, "std", other, margins, "same.jsonl", overwrite=True)
    assert first.path.read_bytes() != before
    outside = tmp_path / "elsewhere" / "out.jsonl"
    with pytest.raises(MarginLensError, match="outside the workspace"):
        export_selection(ws, "std", sel, margins, outside)
    assert not outside.exists()
    assert export_selection(ws, "std", sel, margins, outside, allow_outside=True).path == outside


def test_select_with_push_to_hub_offline_refuses_before_writing(ws, capsys):
    code = main(["--workspace", str(ws.root), "select", "std", "--metric", "implicit", "--out", "pushed.jsonl",
                 "--push-to-hub", "me/subset", "--token", "x"])
    assert code == 2 and "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert not (ws.exports_dir / "pushed.jsonl").exists()


def test_failed_write_leaves_old_file_and_no_debris(ws, monkeypatch):
    sel, margins = selection_of(ws, "std")
    old = export_selection(ws, "std", sel, margins, "atomic.parquet", "parquet")
    before = old.path.read_bytes()

    def crash(table, where):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(export_mod.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        export_selection(ws, "std", sel, margins, "atomic.parquet", "parquet", overwrite=True)
    assert old.path.read_bytes() == before
    assert sorted(p.name for p in ws.exports_dir.iterdir()) == ["atomic.parquet", "atomic.parquet.manifest.json"]


def test_cli_select_and_compare(ws, capsys):
    root = str(ws.root)
    assert main(["select", "conv", "--workspace", root, "--metric", "map", "--ratio", "0.5",
                 "--filter", "text~colour", "--out", "cli.jsonl", "--with-metrics"]) == 2  # conv has no m_ex
    err = capsys.readouterr().err
    assert "--metric map cannot run on 'conv'" in err and "Metrics that run now: implicit, random" in err
    assert main(["select", "uf", "--workspace", root, "--metric", "map", "--ratio", "0.5",
                 "--filter", "text~colour", "--out", "cli.jsonl", "--format", "jsonl"]) == 0
    assert "selected 10 of 20" in capsys.readouterr().out
    manifest = json.loads((ws.exports_dir / "cli.jsonl.manifest.json").read_text())
    assert manifest["scorers"]["policy"]["fingerprint"] == "pol"  # the newest logprob table by default
    margins = load_margins(ws, "uf", policy_fp="pol")
    expected = select(margins, SelectionSpec(metric="map", ratio=0.5))
    lines = (ws.exports_dir / "cli.jsonl").read_text().splitlines()
    assert len(lines) == 10
    exported = {json.loads(line)["chosen"][0]["content"] for line in lines}
    assert exported == set(margins["row"].iloc[expected.positions].map(
        lambda r: ws.load_pairs("uf")[int(r)]["chosen"]))
    assert main(["select", "uf", "--workspace", root, "--out", "cli.jsonl"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["compare", "uf", "--workspace", root, "--ratio", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "overlap of the top-k sets" in out and "spearman" in out and "high_potential" in out
    assert main(["compare", "uf", "--workspace", root, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["overlap"]) == 55 and report["k"] == 8  # 11 metrics run (not the DPO-form rule): 11 choose 2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [json.dumps(r) for f in (standard_records, conversational_records, hh_records) for r in f(20)]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(words + ["user assistant system"], trainers.WordLevelTrainer(
        special_tokens=["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
    folder = tmp_path_factory.mktemp("tiny-llama")
    fast.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name,with_metrics", [("conv", True), ("std", False), ("hh", False)])
def test_dpo_trainer_accepts_export(ws, tiny_model, tmp_path, name, with_metrics):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    sel, margins = selection_of(ws, name)
    out = export_selection(ws, name, sel, margins, f"{name}-train.jsonl", include_metrics=with_metrics)
    train = datasets.load_dataset("json", data_files=str(out.path), split="train",
                                  cache_dir=str(tmp_path / "hf-cache"))
    args = DPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, bf16=False,
                     gradient_checkpointing=False, use_cpu=True, report_to="none", logging_steps=1,
                     save_strategy="no")
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args, train_dataset=train,
                         processing_class=AutoTokenizer.from_pretrained(tiny_model))
    result = trainer.train()
    assert result.global_step == 1 and np.isfinite(result.training_loss)
    assert trainer.state.log_history[0]["logps/chosen"] < 0


def test_mapped_columns_export_the_imported_pair_not_the_sources_own_columns(tmp_path):
    """A source with its own (stale) chosen/rejected columns, imported through --map: the export must carry
    the mapped texts that were scored and selected, not the source's unmapped columns."""
    from marginlens.core.data.ingest import import_dataset
    from marginlens.core.selection.margins import load_margins
    from marginlens.core.selection.select import SelectionSpec, select

    ws = Workspace(tmp_path / "ws")
    records = [{"prompt": f"q{i}", "chosen": f"OLD good {i}", "rejected": f"OLD bad {i}", "fixed_good": f"NEW good {i}",
                "fixed_bad": f"NEW bad {i}", "score_chosen": float(i), "score_rejected": 0.0} for i in range(6)]
    src = tmp_path / "mapped.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    import_dataset(src, "mapped", ws, mapping={"chosen": "fixed_good", "rejected": "fixed_bad"})
    margins = load_margins(ws, "mapped")
    result = export_selection(ws, "mapped", select(margins, SelectionSpec(metric="explicit", ratio=0.5)), margins,
                              "mapped-out.jsonl")
    rows = [json.loads(line) for line in result.path.read_text().splitlines()]
    assert len(rows) == 3
    assert all(r["chosen"].startswith("NEW good") and r["rejected"].startswith("NEW bad") for r in rows)
    assert {r["prompt"] for r in rows} == {"q3", "q4", "q5"}
