"""The worked examples in the scoring docstrings, number for number: reference-mode tokenisation with a
boundary merge (core/scoring/tokenization.py) and the implicit margin of 2-token responses through
ImplicitScorer.score_batch (core/scoring/logprobs.py) and LogprobScorer.compute."""

from __future__ import annotations

import math
import types

import pytest
import torch
from marginlens.core.scoring.builtin_scorers import LogprobConfig, LogprobScorer
from marginlens.core.scoring.logprobs import ImplicitScorer, PairLogprobs
from marginlens.core.scoring.scorers import PairBatch
from marginlens.core.scoring.tokenization import TokenizedPair, tokenize_pairs
from marginlens.core.selection.margins import simpo_margin
from tiny_models import single_thread

single_thread()

QA_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }} A: "
               "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


def qa_tokenizer():
    """The docstring's tokenizer: byte-level BPE trained here on two lines, vocabulary 280."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Q: Capital of France? A: Paris", "Q: Capital of Italy? A: Rome"], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = QA_TEMPLATE
    return fast


def test_reference_mode_example_with_a_boundary_merge():
    tokenizer = qa_tokenizer()
    assert (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id) == (280, 0, 1)
    messages = [{"role": "user", "content": "Capital of France?"}]

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    assert prompt == "Q: Capital of France? A: "
    assert ids(prompt) == [50, 27, 267, 266, 277, 272, 273, 32, 264, 27, 222]
    assert tokenizer.convert_ids_to_tokens(ids(prompt)) == ["Q", ":", "ĠCapital", "Ġof", "ĠFr", "an", "ce", "?",
                                                            "ĠA", ":", "Ġ"]
    assert ids(prompt + "Paris</s>")[8:] == [264, 27, 279, 276, 1]  # the trailing space merged into ĠPa
    assert tokenizer.convert_ids_to_tokens([279, 276]) == ["ĠPa", "ris"]
    assert ids(prompt + "</s>")[8:] == [264, 27, 222, 1]  # no merge

    (pair,) = tokenize_pairs(tokenizer, [messages], ["Paris"], [""], mode="reference")
    assert pair == TokenizedPair(prompt=[0, 50, 27, 267, 266, 277, 272, 273, 32, 264, 27],
                                 chosen=[279, 276, 1], rejected=[222, 1], chosen_skip=0, rejected_skip=1)
    assert (pair.chosen_ntok, pair.rejected_ntok) == (3, 1)

    (clean,) = tokenize_pairs(tokenizer, [messages], ["Paris"], [""], mode="clean")
    assert clean == TokenizedPair(prompt=[50, 27, 267, 266, 277, 272, 273, 32, 264, 27, 222],
                                  chosen=[270, 276, 1], rejected=[1])
    assert tokenizer.convert_ids_to_tokens([270]) == ["Pa"]


# ------------------------------------------------------------------------------------------------
# The implicit margin of 2-token responses
# ------------------------------------------------------------------------------------------------
PAD, Q, A, B, EOS = range(5)
NEXT = {Q: [1 / 16, 1 / 16, 1 / 2, 1 / 4, 1 / 8], A: [1 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 2],
        B: [3 / 16, 3 / 16, 3 / 16, 3 / 16, 1 / 4]}


def bigram_llama():
    """A real one-layer Llama whose logits we set: attention and MLP write nothing to the residual stream,
    the final norm maps token i's embedding to the unit vector e_i, and the head's column i holds the
    log-probabilities of the token after i."""
    from transformers import LlamaConfig, LlamaForCausalLM

    V, H = 5, 8
    config = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-12, pad_token_id=PAD,
                         tie_word_embeddings=False, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :V] = torch.eye(V)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1 / math.sqrt(H))  # rms(e_i) = 1/sqrt(H)
        for previous in range(V):
            model.lm_head.weight[:, previous] = torch.log(torch.tensor(NEXT.get(previous, [1 / V] * V)))
    return model


# The scorer reads only the pad id and the chat template from a tokenizer (token ids are given here).
STUB_TOKENIZER = types.SimpleNamespace(chat_template="{{ messages }}", pad_token_id=PAD, name_or_path="bigram")
PAIRS = [TokenizedPair([Q], [A, EOS], [B, EOS]), TokenizedPair([Q], [B, EOS], [A, EOS])]
LOG2 = math.log(2)


def test_the_model_is_the_bigram_of_the_docstring():
    model = bigram_llama()
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([[Q, A, B]])).logits[0].double(), dim=-1)
    assert logps[0, A].item() == pytest.approx(math.log(1 / 2), abs=1e-5)  # after Q
    assert logps[0, B].item() == pytest.approx(math.log(1 / 4), abs=1e-5)
    assert logps[1, EOS].item() == pytest.approx(math.log(1 / 2), abs=1e-5)  # after A
    assert logps[2, EOS].item() == pytest.approx(math.log(1 / 4), abs=1e-5)  # after B


def test_implicit_margin_of_two_token_responses():
    scorer = ImplicitScorer(bigram_llama(), STUB_TOKENIZER)
    got = scorer.score_batch(PAIRS)  # B = 2: the batched path of the docstring
    expected = [PairLogprobs(-2 * LOG2, 2, -4 * LOG2, 2), PairLogprobs(-4 * LOG2, 2, -2 * LOG2, 2)]
    for g, e in zip(got, expected, strict=True):
        assert (g.chosen_ntok, g.rejected_ntok) == (e.chosen_ntok, e.rejected_ntok) == (2, 2)
        assert (g.chosen_logp, g.rejected_logp) == pytest.approx((e.chosen_logp, e.rejected_logp), abs=1e-5)
    assert (round(got[0].chosen_logp, 4), round(got[0].rejected_logp, 4)) == (-1.3863, -2.7726)
    margins = [float(simpo_margin(g.chosen_logp, g.chosen_ntok, g.rejected_logp, g.rejected_ntok)) for g in got]
    assert margins == pytest.approx([LOG2, -LOG2], abs=1e-5)
    assert round(margins[0], 4) == 0.6931
    # One pair alone takes the unpadded path: the same numbers.
    (alone,) = scorer.score_batch(PAIRS[:1])
    assert (alone.chosen_logp, alone.rejected_logp) == pytest.approx((-2 * LOG2, -4 * LOG2), abs=1e-5)
    # Packed (core.scoring.packing): the pairs as four documents [Q A EOS][Q B EOS][Q B EOS][Q A EOS] in one row.
    packed = ImplicitScorer(bigram_llama(), STUB_TOKENIZER, packing=True).score_batch(PAIRS)
    for g, e in zip(packed, expected, strict=True):
        assert (g.chosen_ntok, g.rejected_ntok) == (2, 2)
        assert (g.chosen_logp, g.rejected_logp) == pytest.approx((e.chosen_logp, e.rejected_logp), abs=1e-5)


def test_logprob_scorer_compute_rows():
    """The registered scorer's `compute` on the same pairs: one table row each, in batch order."""
    scorer = LogprobScorer(LogprobConfig(model="bigram", identity="-", dtype="float32", mode="clean",
                                         max_length=64, max_prompt_length=32))
    scorer.engine = ImplicitScorer(bigram_llama(), STUB_TOKENIZER, max_pairs=8)  # what setup() loads
    rows = scorer.compute(PairBatch(["p0", "p1"], [{}, {}], PAIRS))
    assert [sorted(r) for r in rows] == [["chosen_logp", "chosen_ntok", "rejected_logp", "rejected_ntok",
                                          "truncated"]] * 2
    assert [(r["chosen_ntok"], r["rejected_ntok"], r["truncated"]) for r in rows] == [(2, 2, False)] * 2
    assert [(r["chosen_logp"], r["rejected_logp"]) for r in rows] == [
        pytest.approx((-2 * LOG2, -4 * LOG2), abs=1e-5), pytest.approx((-4 * LOG2, -2 * LOG2), abs=1e-5)]
