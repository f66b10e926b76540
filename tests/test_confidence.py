"""Confidence scorers: the formulas against direct definitions, the running state against the all-at-once pass,
captured while decoding (packed, rows refilled) == the teacher-forced pass, and their rows."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from lm_eval_swift.bon.rollouts import Response
from lm_eval_swift.bon.rows import ETAS, bon_table, rows, score_rows
from lm_eval_swift.bon.selectors import filter_vote, weighted_vote
from lm_eval_swift.confidence import (
    CONFIDENCE_SCORERS,
    ConfidenceParams,
    parse_confidence,
)
from lm_eval_swift.confidence.compute import (
    ConfidenceCapture,
    summarise,
    token_stats,
)
from lm_eval_swift.decoding import Job, Sampling, decode
from lm_eval_swift.swift.rescoring import teacher_forced_scores


torch.set_num_threads(1)
PARAMS = ConfidenceParams(top_k=5, window=4, tail=3)


def direct(logits: torch.Tensor, tokens: list[int], params: ConfidenceParams) -> dict:
    """The scores by their definitions, one token at a time in float64."""
    p = torch.softmax(logits.double(), -1).tolist()
    v = len(p[0])
    logprob = sum(math.log(p[t][y]) for t, y in enumerate(tokens)) / len(tokens)
    kl = [
        sum((1 / v) * math.log((1 / v) / p[t][j]) for j in range(v))
        for t in range(len(tokens))
    ]
    ent = [
        -sum(p[t][j] * math.log(p[t][j]) for j in range(v)) for t in range(len(tokens))
    ]
    c = [
        -sum(math.log(x) for x in sorted(p[t])[-params.top_k :]) / params.top_k
        for t in range(len(tokens))
    ]
    w = params.window
    groups = [sum(c[i : i + w]) / w for i in range(len(c) - w + 1)] or [sum(c) / len(c)]
    tail = c[-params.tail :]
    return {
        "logprob": logprob,
        "self_certainty": sum(kl) / len(kl),
        "neg_entropy": -sum(ent) / len(ent),
        "deepconf_lowest": min(groups),
        "deepconf_tail": sum(tail) / len(tail),
    }


@pytest.mark.parametrize("length", [1, 3, 4, 11])
def test_formulas_match_definitions(length):
    g = torch.Generator().manual_seed(length)
    logits = torch.randn(length, 30, generator=g) * 3
    tokens = torch.randint(0, 30, (length,), generator=g).tolist()
    got = summarise(token_stats(logits, torch.tensor(tokens), PARAMS.top_k), PARAMS)
    assert got == pytest.approx(direct(logits, tokens, PARAMS), rel=1e-5, abs=1e-5)
    assert (
        got["self_certainty"] >= 0 and got["logprob"] <= 0 and got["neg_entropy"] <= 0
    )
    assert got["deepconf_tail"] > 0 and got["deepconf_lowest"] > 0


def test_running_state_equals_all_at_once():
    """Rows of different lengths fed step by step, compacted when rows finish, scored on prefixes as a cut stop
    string leaves them: equal to scoring the prefix at once."""
    g = torch.Generator().manual_seed(0)
    steps, rows, vocab = 40, 3, 25
    logits = torch.randn(rows, steps, vocab, generator=g) * 2
    tokens = torch.randint(0, vocab, (rows, steps), generator=g)
    cap = ConfidenceCapture(rows, PARAMS, lag=6)
    cap.reset(slice(0, rows))
    for t in range(steps):
        cap.update(logits[:, t], tokens[:, t])
    cap.move(torch.tensor([0, 1]), torch.tensor([2, 0]))  # row 2 -> 0, row 0 -> 1
    for row, original in ((0, 2), (1, 0)):
        for length in (steps, steps - 1, steps - 6):
            got = cap.detach(row).finish(0, length)
            want = summarise(
                token_stats(logits[original, :length], tokens[original, :length], 5),
                PARAMS,
            )
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert cap.detach(0).finish(0, steps - 7) is None  # cut more than lag tokens


def sampled(model, prompts, n, batch_size, max_new_tokens=30):
    jobs = [
        Job(p, list(range(100 * j, 100 * j + n)), Sampling(do_sample=True, temperature=1.5, top_p=0.9),
            max_new_tokens, lambda ids: ids[-1] % 7 == 0)
        for j, p in enumerate(prompts)
    ]  # fmt: skip
    out = {}
    for finished in decode(model, jobs, batch_size, confidence=PARAMS):
        for f in finished:
            out[(f.job, f.sample)] = f
    return [out[(j, i)] for j in range(len(prompts)) for i in range(n)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_captured_equals_teacher_forced(arch, tiny_model_factory):
    """Packed decoding of 3 prompts of different lengths, batch 5 < 12 rows (rows refilled and moved), at
    temperature 1.5 and top-p 0.9 (the scores read the raw logits): captured == one teacher-forced pass, within
    1e-4, on the whole sample and with its last 2 tokens cut off."""
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_factory(arch, num_hidden_layers=2)
    ).eval()
    prompts = [[1, 5, 9], [2, 4, 6, 8, 10, 12], [11, 13, 15, 17]]
    finished = sampled(
        model, prompts, 4, batch_size=5
    )  # a token id divisible by 7 ends a sample
    assert len({len(f.ids) for f in finished}) > 2
    all_prompts = [prompts[f.job] for f in finished]
    for cut in (0, 2):
        ids = [f.ids[: len(f.ids) - cut] for f in finished]
        _, want = teacher_forced_scores(
            model, [], all_prompts, ids, batch_size=3, confidence=PARAMS
        )
        for f, w, r in zip(finished, want, ids, strict=True):
            got = f.confidence.finish(0, len(r))
            assert got.keys() == w.keys() == (set(CONFIDENCE_SCORERS) if r else set())
            for name in w:
                assert abs(got[name] - w[name]) <= 1e-4, (name, got[name], w[name])


def response(answer_class: int, correct: float, **scores) -> Response:
    return Response(
        str(answer_class), str(answer_class), correct, answer_class, 1, scores=scores
    )


def test_filter_then_vote():
    """Keep the top eta% by score (at least one), then majority vote among them."""
    rs = [response(1, 0.0, c=0.1), response(1, 0.0, c=0.2), response(1, 0.0, c=0.3),
          response(2, 1.0, c=0.9), response(2, 1.0, c=0.8), response(3, 0.0, c=0.95)]  # fmt: skip
    assert (
        filter_vote(rs, "c", eta=10).answer_class == 3
    )  # round(0.6) = 1 kept: the best
    assert filter_vote(rs, "c", eta=50).answer_class == 2  # 3 kept: 3, 2, 2
    assert filter_vote(rs, "c", eta=100).answer_class == 1  # all kept: majority
    assert filter_vote(rs, "missing", eta=10).answer_class == 1  # no scores: the first


def test_confidence_rows_and_weights():
    table = rows(
        ["swift", "deepconf_tail", "logprob", "skywork"],
        reward_models={"skywork"},
        etas=ETAS,
    )
    names = list(table)
    assert (
        names.index("swift_top90")
        < names.index("logprob")
        < names.index("deepconf_tail")
        < names.index("skywork")
    )
    assert table["logprob_vote"] == ("vote", {"score": "logprob", "weight": "exp"})
    assert table["deepconf_tail_top10"] == (
        "top",
        {"score": "deepconf_tail", "eta": 10},
    )
    assert "swift+logprob_scaling" not in table and "swift+skywork_scaling" in table
    assert list(score_rows("x", etas=(25,))) == ["x", "x_vote", "x_top25"]
    # exp weights: a -0.1 mean log-prob weighs more than two at -2
    rs = [
        response(1, 1.0, lp=-0.1),
        response(2, 0.0, lp=-2.0),
        response(2, 0.0, lp=-2.0),
    ]
    assert weighted_vote(rs, "lp", "exp").answer_class == 1
    # value weights: negatives weigh 0, so all tie and the earliest class wins
    assert weighted_vote(rs, "lp", "value").answer_class == 1
    with pytest.raises(ValueError, match="unknown confidence scorer"):
        parse_confidence("logprob,perplexity")
    assert (
        parse_confidence("all") == tuple(CONFIDENCE_SCORERS)
        and parse_confidence("none") == ()
    )


def test_filter_then_vote_rows_in_the_table():
    """report's table: ``<score>_top<eta>`` at each k > 1 only (at k = 1 it is ``first``), none unless asked."""
    from lm_eval_swift.bon.rollouts import QuestionRollout

    rs = [
        response(c, float(c == 2), logprob=v)
        for c, v in ((1, -1.0), (2, -0.1), (1, -2.0), (2, -0.2))
    ]
    q = QuestionRollout("t", 0, "gsm8k", "q", "q", "2", rs)
    table = bon_table([q], ks=(1, 2, 4), etas=(50,))
    assert table["logprob_top50"] == {
        2: 1.0,
        4: 1.0,
    }  # k=4: the two best (class 2) vote
    assert table["maj"] == {
        1: 0.0,
        2: 0.0,
        4: 0.0,
    }  # k=4: a 2-2 tie goes to the first class
    assert "logprob_top50" not in bon_table([q], ks=(1, 2, 4))
