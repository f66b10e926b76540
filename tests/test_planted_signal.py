"""A planted signal that only the LAST kept response token carries: training, capture and rescoring must all
recover it. Generation stops right after one of two marker tokens (by the stop sequence "!" inside the marker
token, so no EOS follows it) or at the token limit; the marker alone tells correct from incorrect. An off-by-one
in the response-token rule or a missing final hidden state (never fed back during plain generation) would leave
the heads blind to it."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from transformers import AutoModelForCausalLM

from lm_eval_swift.bon.metrics import within_question_auroc
from lm_eval_swift.bon.rollouts import build_rollout, write_rollouts
from lm_eval_swift.harness.models import HFSwiftLM
from lm_eval_swift.reports.report import bon_table
from lm_eval_swift.scores import Rescoring, add_scores
from lm_eval_swift.swift.heads import SwiftHead
from lm_eval_swift.swift.training import train_head
from lm_eval_swift.toy_models import char_tokenizer, random_causal_lm


RIGHT, WRONG = (
    " \\boxed{7}!",
    " \\boxed{8}!",
)  # one token each; the stop string "!" ends generation inside them
GOLD, N = "7", 8
GEN = {"until": ["!"], "do_sample": True, "temperature": 1.0, "max_gen_toks": 12}


@pytest.fixture(scope="module")
def marker_model(tmp_path_factory):
    """A random Llama over a small vocabulary whose two marker tokens are likely at every step and whose special
    tokens (EOS included) are not: residual dimension 0 is held at a constant, so lm_head's column 0 acts as a
    bias (the embedding sets it; no layer writes to it)."""
    tok = char_tokenizer(charset="0123456789+=? abcdefgh")
    tok.add_tokens([RIGHT, WRONG])
    path = random_causal_lm(
        tmp_path_factory.mktemp("marker-llama"),
        "llama",
        num_hidden_layers=2,
        hidden_size=32,
        tokenizer=tok,
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 4.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        bias = torch.zeros(len(tok))
        bias[tok.all_special_ids] = -3.0
        bias[tok.convert_tokens_to_ids([RIGHT, WRONG])] = 0.5
        model.lm_head.weight[:, 0] = bias
    model.save_pretrained(path)
    return path, tok


def rollouts_of(lm: HFSwiftLM, questions: list[str], task: str):
    reqs = [
        Instance("generate_until", {}, (q, dict(GEN)), i)
        for i, q in enumerate(questions)
        for _ in range(N)
    ]
    out = lm.generate_until(reqs, disable_tqdm=True)
    return [
        build_rollout(task, i, "gsm8k", q, q, GOLD, out[i * N : (i + 1) * N])
        for i, q in enumerate(questions)
    ]


def test_last_token_signal_is_recovered(marker_model, tmp_path):
    path, tok = marker_model
    torch.manual_seed(0)
    plain = HFSwiftLM(
        pretrained=str(path),
        device="cpu",
        batch_size=8,
        heads=None,
        dtype="float32",
        sample_cache=None,
    )
    train = rollouts_of(plain, [f"{i} abc 3+4=?" for i in range(40)], "train")
    endings = [r.token_ids[-1] for q in train for r in q.responses]
    markers = {tok.convert_tokens_to_ids(RIGHT), tok.convert_tokens_to_ids(WRONG)}
    assert sum(e in markers for e in endings) > len(endings) / 3, (
        "the marker model should often end on a marker"
    )
    assert all(r.finish in ("stop", "length") for q in train for r in q.responses)
    assert all(
        r.correct == float(r.token_ids[-1] == tok.convert_tokens_to_ids(RIGHT))
        for q in train
        for r in q.responses
    )
    write_rollouts(train, tmp_path / "train.jsonl")

    head = train_head(
        [tmp_path / "train.jsonl"],
        str(path),
        tmp_path / "head",
        lr=3e-2,
        epochs=25,
        patience=25,
        batch_size=32,
        device="cpu",
        dtype="float32",
        max_gen_toks=GEN["max_gen_toks"],
        progress=False,
    )
    assert head.training_info["metrics"]["within_auroc"] > 0.99

    lm = HFSwiftLM(
        pretrained=str(path),
        device="cpu",
        batch_size=8,
        heads=str(tmp_path / "head"),
        dtype="float32",
        sample_cache=None,
    )
    test = rollouts_of(lm, [f"{i} hg 4+3=?" for i in range(20)], "test")
    captured = [[r.scores["swift"] for r in q.responses] for q in test]
    add_scores(
        test,
        Rescoring(
            {"rescored": SwiftHead.from_pretrained(tmp_path / "head")},
            lambda: (lm.model, lm.tokenizer, None),
            max_gen_toks=GEN["max_gen_toks"],
        ),
    )
    for q, caps in zip(test, captured, strict=True):
        for r, cap in zip(q.responses, caps, strict=True):
            assert r.scores["rescored"] == pytest.approx(cap, rel=1e-3, abs=1e-4)
    labels = [[r.correct for r in q.responses] for q in test]
    for score in ("swift", "rescored"):
        groups = [
            ([r.scores[score] for r in q.responses], ys)
            for q, ys in zip(test, labels, strict=True)
        ]
        assert within_question_auroc(groups) > 0.99
    table = bon_table(test, ks=(1, 4, 8))
    assert table["swift"] == table["oracle"] and table["rescored"] == table["oracle"]
    assert table["oracle"][8] > table["first"][1]  # selection had work to do
