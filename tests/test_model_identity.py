"""A local model's identity covers what decides its numbers: a re-save with other metadata keeps it, a real
change of a weight, the config, the tokenizer or the chat template changes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from marginlens.core.experiments.generation import generation_identity
from marginlens.core.scoring.model_content import weights_digest
from marginlens.core.scoring.models import model_fingerprint, model_identity, resolve_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import CHATML_TEMPLATE, make_tiny_llama, single_thread

single_thread()


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("original"))


def _ids(folder: Path) -> tuple[str, str]:
    return model_fingerprint(resolve_model(str(folder))), model_identity(str(folder))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def _logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits


def _resave_as_another_release(original: Path, out: Path) -> Path:
    """The same model saved again the way another transformers/tokenizers release or a converter writes it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(original).save_pretrained(out, max_shard_size="100KB")  # sharded
    AutoTokenizer.from_pretrained(original).save_pretrained(out)
    # another release and path in config.json, and a converter's name for the model
    _edit_json(out / "config.json", lambda c: c.update(transformers_version="4.56.0", _name_or_path="/elsewhere/m",
                                                       _model_name_or_path="Tiny Llama Converted"))
    _edit_json(out / "generation_config.json", lambda c: c.update(transformers_version="4.56.0"))
    # pre-5.0 key name for the dtype
    _edit_json(out / "config.json", lambda c: c.update(torch_dtype=c.pop("dtype")) if "dtype" in c else None)
    # the chat template inside tokenizer_config.json (transformers < 4.47), not in chat_template.jinja
    template = (out / "chat_template.jinja").read_text()
    (out / "chat_template.jinja").unlink()
    _edit_json(out / "tokenizer_config.json", lambda c: c.update(chat_template=template, is_local=False))
    # merges in the "a b" form of tokenizers < 0.20
    _edit_json(out / "tokenizer.json", lambda t: t["model"].update(merges=[" ".join(m) for m in t["model"]["merges"]]))
    # other safetensors header metadata in one shard
    shard = sorted(out.glob("*.safetensors"))[0]
    save_file(load_file(shard), shard, metadata={"format": "pt", "converted_by": "some-converter 1.2"})
    return out


def test_a_resave_with_other_metadata_and_layout_keeps_the_identity(original, tmp_path):
    resaved = _resave_as_another_release(original, tmp_path / "resaved")
    assert len(list(resaved.glob("*.safetensors"))) > 1 and (resaved / "model.safetensors.index.json").is_file()
    assert (resaved / "config.json").read_bytes() != (original / "config.json").read_bytes()
    with safe_open(str(sorted(resaved.glob("*.safetensors"))[0]), "pt") as fh:
        assert fh.metadata()["converted_by"] == "some-converter 1.2"
    # the numbers are the same, so is the identity
    torch.testing.assert_close(_logits(resaved), _logits(original), rtol=0, atol=0)
    assert _ids(resaved) == _ids(original)
    assert generation_identity(str(resaved)) == generation_identity(str(original))  # the lab's generation cache
    # and the sampled digest of big checkpoints sees no difference either
    assert weights_digest(resaved, whole_limit=0) == weights_digest(original, whole_limit=0)


def _copy(original: Path, out: Path) -> Path:
    shutil.copytree(original, out)
    return out


def test_one_changed_weight_changes_fingerprint_and_identity(original, tmp_path):
    changed = _copy(original, tmp_path / "changed")
    tensors = load_file(changed / "model.safetensors")
    tensors["model.layers.1.mlp.down_proj.weight"][3, 5] += 1e-3
    with safe_open(str(original / "model.safetensors"), "pt") as fh:
        save_file(tensors, changed / "model.safetensors", metadata=fh.metadata())
    fingerprint, identity = _ids(original)
    assert model_fingerprint(resolve_model(str(changed))) != fingerprint
    assert model_identity(str(changed)) != identity


def test_a_retrained_big_checkpoint_changes_its_sampled_digest(original, tmp_path):
    retrained = make_tiny_llama(tmp_path / "retrained", seed=1)
    assert weights_digest(retrained, whole_limit=0) != weights_digest(original, whole_limit=0)


def test_another_stop_token_changes_the_generation_identity(original, tmp_path):
    changed = _copy(original, tmp_path / "changed")
    _edit_json(changed / "generation_config.json", lambda c: c.update(eos_token_id=[c["eos_token_id"], 7]))
    assert _ids(changed) == _ids(original)  # scoring does not read it
    assert generation_identity(str(changed)) != generation_identity(str(original))


@pytest.mark.parametrize("change", ["chat template", "eos token", "vocabulary"])
def test_a_tokenizer_change_changes_the_identity_not_the_weights_fingerprint(original, tmp_path, change):
    changed = _copy(original, tmp_path / "changed")
    if change == "chat template":
        (changed / "chat_template.jinja").write_text(CHATML_TEMPLATE.replace("{{ bos_token }}", ""))
    elif change == "eos token":
        _edit_json(changed / "tokenizer_config.json", lambda c: c.update(eos_token="<|pad|>"))
    else:
        def swap_two_tokens(t: dict) -> None:
            vocab = t["model"]["vocab"]
            a, b = sorted(vocab, key=vocab.get)[300:302]
            vocab[a], vocab[b] = vocab[b], vocab[a]
        _edit_json(changed / "tokenizer.json", swap_two_tokens)
    fingerprint, identity = _ids(original)
    assert model_fingerprint(resolve_model(str(changed))) == fingerprint
    assert model_identity(str(changed)) != identity


def test_a_config_change_changes_the_fingerprint(original, tmp_path):
    changed = _copy(original, tmp_path / "changed")
    _edit_json(changed / "config.json", lambda c: c.update(rms_norm_eps=c["rms_norm_eps"] * 10))
    assert _ids(changed)[0] != _ids(original)[0]
    assert model_identity(str(changed), trust_remote_code=True) == _ids(changed)[1] + ":remote-code"
