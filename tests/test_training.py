"""Training SWIFT heads: convergence on a separable toy signal, best-epoch selection, resume after a kill, the
question-level split, pairwise losses, logits features, the feature cache, metrics and the command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import make_rollouts

from lm_eval_swift.bon.metrics import auroc
from lm_eval_swift.bon.rollouts import (
    read_rollouts,
    write_rollouts,
)
from lm_eval_swift.commands import add_train_arguments
from lm_eval_swift.swift.features import (
    FeatureCache,
    FeatureExtractor,
    feature_source,
    load_base_model,
)
from lm_eval_swift.swift.heads import SwiftHead
from lm_eval_swift.swift.training import (
    CHECKPOINT,
    ThroughOutputEmbedding,
    TrainingData,
    cmd_train,
    correct_incorrect_pairs,
    objective,
    output_embedding,
    question_key,
    split_questions,
    train_head,
)
from lm_eval_swift.toy_models import char_tokenizer


FAST = {"lr": 1e-2, "batch_size": 16, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def model(tiny_model_factory) -> str:
    return str(tiny_model_factory("llama"))


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> Path:
    return make_rollouts(tmp_path_factory.mktemp("rollouts") / "toy.jsonl")


@pytest.fixture(scope="module")
def trained(model, rollouts, tmp_path_factory) -> tuple[SwiftHead, Path]:
    out = tmp_path_factory.mktemp("trained") / "head"
    return train_head([rollouts], model, out, epochs=8, patience=8, **FAST), out


def val_rewards(head: SwiftHead, model: str, rollouts: Path, seed: int = 0):
    """(R, labels, pairs) of the validation responses, computed from scratch with the saved head."""
    lm, tok = load_base_model(model, device="cpu")
    data = TrainingData.load([rollouts], tok, 1024)
    _, val_q = split_questions([question_key(r) for r in data.rollouts], 0.2, seed)
    idx = data.responses_of(val_q)
    features, mask = FeatureExtractor(lm, head.entries, tok.pad_token_id)(
        [data.prompts[i] for i in idx], [data.responses[i] for i in idx]
    )
    labels = data.labels[idx]
    return (
        head.reward(features, mask).detach(),
        labels,
        correct_incorrect_pairs([data.question[i] for i in idx], labels.tolist()),
    )


# ---- metrics and split ----------------------------------------------------------------------------------------


def test_pairs_and_pairwise_losses():
    questions, labels = [0, 0, 0, 1, 1, 2], [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    c, i = correct_incorrect_pairs(questions, labels)
    assert sorted(zip(c.tolist(), i.tolist(), strict=True)) == [(0, 1), (0, 2), (3, 4)]
    r = torch.tensor([2.0, 0.5, 2.0, 0.0, 3.0, 9.0])
    hinge = objective(r, torch.tensor(labels), (c, i), "hinge")
    dpo = objective(r, torch.tensor(labels), (c, i), "dpo")
    assert float(hinge) == pytest.approx((0 + 1 + 4) / 3)
    assert float(dpo) == pytest.approx(
        float(-torch.nn.functional.logsigmoid(torch.tensor([1.5, 0.0, -3.0])).mean())
    )
    assert (
        objective(
            r, torch.tensor(labels), correct_incorrect_pairs([0, 1], [1.0, 0.0]), "dpo"
        )
        is None
    )


def test_split_is_by_question_and_seeded():
    keys = [("a", q % 7) for q in range(30)]  # each question appears several times
    train, val = split_questions(keys, 0.2, seed=3)
    assert sorted(train + val) == list(range(30))
    assert not {keys[i] for i in train} & {keys[i] for i in val}
    assert len({keys[i] for i in val}) == 1  # round(0.2 * 7)
    assert (train, val) == split_questions(keys, 0.2, seed=3)
    assert (
        val != split_questions(keys, 0.2, seed=4)[1]
        or val != split_questions(keys, 0.2, seed=5)[1]
    )
    with pytest.raises(ValueError, match="val_fraction"):
        split_questions(keys, 0.0, 0)


def test_training_never_validates_on_a_training_question(model, tmp_path):
    # the same questions (task, doc_id) sampled in two files must land on one side together
    a = make_rollouts(tmp_path / "a.jsonl", n_questions=10, seed=1)
    b = make_rollouts(tmp_path / "b.jsonl", n_questions=10, seed=2)
    head = train_head([a, b], model, tmp_path / "head", epochs=1, **FAST)
    info = head.training_info
    val = {tuple(k) for k in info["validation_questions"]}
    assert (
        len(val) == 2 and len(info["validation_questions"]) == 4
    )  # each held-out question from both files
    all_keys = [question_key(r) for path in (a, b) for r in read_rollouts(path)]
    assert info["n_train_questions"] == sum(k not in val for k in all_keys) == 16


# ---- training -------------------------------------------------------------------------------------------------


def test_converges_on_separable_signal(trained, model, rollouts):
    head, out = trained
    info = head.training_info
    metrics = info["metrics"]
    assert metrics["within_auroc"] >= 0.95 and metrics["auroc"] >= 0.95
    assert metrics["val_bce"] < 0.3
    assert set(metrics["bon"]) >= {"swift", "swift_vote", "maj", "oracle"}
    assert set(metrics["bon"]["swift"]) == {"1", "4"}  # k=8 > N=6 responses
    assert metrics["bon"]["swift"]["4"] >= metrics["bon"]["maj"]["4"]
    assert (
        info["train_tokens_per_s"] > 0
        and info["loss"] == "bce"
        and info["feature_cache"] is False
    )
    assert [h["epoch"] for h in info["history"]] == list(range(1, 9))
    # the saved directory is a regular head whose R reproduces the recorded metrics
    loaded = SwiftHead.from_pretrained(out)
    assert loaded.training_info["best_epoch"] == info[
        "best_epoch"
    ] and loaded.entries == (0, 1, 2)
    r, labels, pairs = val_rewards(loaded, model, rollouts)
    assert auroc(r.tolist(), labels.tolist()) == pytest.approx(metrics["auroc"])
    c, i = pairs
    diff = r[c] - r[i]
    assert float(
        ((diff > 0).double() + 0.5 * (diff == 0).double()).mean()
    ) == pytest.approx(metrics["within_auroc"])


def test_keeps_best_epoch_not_last(model, tmp_path):
    # label noise on validation questions only: val loss falls while margins are small, then rises
    keys = [("toy", q) for q in range(20)]
    _, val_q = split_questions(keys, 0.2, seed=0)
    path = make_rollouts(
        tmp_path / "noisy.jsonl", flip={(q, j) for q in val_q for j in (0, 1)}
    )
    head = train_head(
        [path],
        model,
        tmp_path / "head",
        epochs=20,
        patience=2,
        early_stop="loss",
        **FAST,
    )
    info = head.training_info
    losses = [h["val_loss"] for h in info["history"]]
    best = info["best_epoch"]
    assert (
        losses[best - 1] == min(losses) and best < info["epochs_run"] < 20
    )  # stopped early after a rise
    assert info["epochs_run"] == best + 2 and losses[-1] > losses[best - 1]
    r, labels, pairs = val_rewards(
        SwiftHead.from_pretrained(tmp_path / "head"), model, path
    )
    assert float(objective(r, labels, pairs, "bce")) == pytest.approx(
        losses[best - 1], rel=1e-5
    )
    assert info["metrics"]["val_loss"] == losses[best - 1]


CHILD = """
import sys, time, torch
torch.set_num_threads(1)
step = torch.optim.AdamW.step
def slow_step(self, *args, **kwargs):  # slow enough to be killed mid-epoch
    time.sleep(0.05)
    return step(self, *args, **kwargs)
torch.optim.AdamW.step = slow_step
from lm_eval_swift.swift.training import train_head
train_head([sys.argv[1]], sys.argv[2], sys.argv[3], epochs=5, patience=5, lr=1e-2, batch_size=16, device="cpu", progress=False)
"""


def test_resumes_after_kill_with_same_result(model, rollouts, trained, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(rollouts), model, str(out)], env=env
    )
    try:
        deadline = time.monotonic() + 50
        while (
            not (out / CHECKPOINT).is_file()
            and child.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert (out / CHECKPOINT).is_file(), "no checkpoint written"
        time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    done = torch.load(out / CHECKPOINT, weights_only=True)["state"]["epoch"]
    assert (
        1 <= done < 5 and not (out / "config.json").exists()
    )  # interrupted before the end

    resumed = train_head([rollouts], model, out, epochs=5, patience=5, **FAST)
    straight = train_head(
        [rollouts], model, tmp_path / "straight", epochs=5, patience=5, **FAST
    )
    torch.testing.assert_close(
        resumed.linear.state_dict(), straight.linear.state_dict(), rtol=1e-5, atol=1e-6
    )
    a, b = resumed.training_info, straight.training_info
    assert (
        a["best_epoch"] == b["best_epoch"] and a["epochs_run"] == b["epochs_run"] == 5
    )
    assert [h["val_loss"] for h in a["history"]] == pytest.approx(
        [h["val_loss"] for h in b["history"]], rel=1e-5
    )
    # a finished run started again only re-saves its head; other settings refuse the checkpoint
    again = train_head([rollouts], model, out, epochs=5, patience=5, **FAST)
    torch.testing.assert_close(again.linear.state_dict(), resumed.linear.state_dict())
    with pytest.raises(ValueError, match="other settings.*lr"):
        train_head([rollouts], model, out, epochs=5, patience=5, **{**FAST, "lr": 1e-3})


@pytest.mark.parametrize("loss", ["hinge", "dpo"])
def test_pairwise_losses_train(model, rollouts, tmp_path, loss):
    head = train_head(
        [rollouts],
        model,
        tmp_path / loss,
        loss=loss,
        early_stop="within_auroc",
        epochs=4,
        **FAST,
    )
    info = head.training_info
    assert info["loss"] == loss and info["metrics"]["within_auroc"] >= 0.9
    assert info["metrics"]["val_loss"] != info["metrics"]["val_bce"]


def test_pairwise_loss_without_pairs_is_an_error(model, tmp_path):
    rollouts = [
        replace(r, responses=[replace(x, correct=1.0) for x in r.responses])
        for r in read_rollouts(make_rollouts(tmp_path / "r.jsonl"))
    ]
    path = write_rollouts(
        rollouts, tmp_path / "all_correct.jsonl"
    )  # no incorrect response: no pairs
    with pytest.raises(ValueError, match="both correct and incorrect"):
        train_head([path], model, tmp_path / "head", loss="dpo", **FAST)


def test_logits_features_and_gateless_head(model, rollouts, tmp_path):
    head = train_head(
        [rollouts], model, tmp_path / "head", logits=True, gate=False, epochs=8, **FAST
    )
    assert (
        head.kind == "logits"
        and not head.gate
        and head.training_info["logits_via_output_embedding"]
    )
    assert (
        head.linear.in_features == len(char_tokenizer())
        and head.linear.out_features == 1
    )
    assert head.training_info["metrics"]["within_auroc"] >= 0.9
    with pytest.raises(ValueError, match="not both"):
        train_head([rollouts], model, tmp_path / "x", logits=True, layers=[1], **FAST)


def test_logits_head_trains_through_the_output_embedding(model):
    """On final hidden states h, ThroughOutputEmbedding gives a logits head the rewards and gradients it has on the
    logits W_out h; a model whose logits are not W_out h (here a bias) trains on the logits themselves."""
    lm, _ = load_base_model(model, device="cpu")
    w_out = output_embedding(lm)
    assert torch.equal(w_out, lm.get_output_embeddings().weight)
    head = SwiftHead.for_model(lm.config, model, kind="logits")
    torch.nn.init.normal_(head.linear.weight, std=0.5)
    hidden = torch.randn(
        3, 5, lm.config.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    mask = torch.arange(5) < torch.tensor([[5], [2], [0]])
    via = ThroughOutputEmbedding(head, w_out).reward(hidden, mask)
    grads = torch.autograd.grad(via.sum(), list(head.parameters()))
    direct = head.reward(torch.nn.functional.linear(hidden, w_out), mask)
    torch.testing.assert_close(via, direct, rtol=1e-5, atol=1e-5)
    for a, b in zip(
        grads, torch.autograd.grad(direct.sum(), list(head.parameters())), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    lm.lm_head.bias = torch.nn.Parameter(torch.ones(lm.config.vocab_size))
    assert output_embedding(lm) is None


def test_layer_subset_features(model, rollouts):
    lm, tok = load_base_model(model, device="cpu")
    data = TrainingData.load([rollouts], tok, 1024)
    twin = next(  # another response to question 0, of another length
        i
        for i in range(1, len(data.prompts))
        if data.prompts[i] == data.prompts[0]
        and len(data.responses[i]) != len(data.responses[0])
    )
    idx = [0, 7, twin, 13]  # a token-ids response, a text-only one, ...
    prompts, responses = (
        [data.prompts[i] for i in idx],
        [data.responses[i] for i in idx],
    )
    assert prompts[0] == prompts[2] and len(responses[0]) != len(responses[2])
    feats, mask = FeatureExtractor(lm, (2, 0), tok.pad_token_id)(prompts, responses)
    assert feats.dtype == torch.float32 and feats.shape == (
        4,
        max(map(len, responses)),
        64,
    )
    for b in range(
        4
    ):  # each response alone, unpadded, straight from output_hidden_states
        seq = torch.tensor([prompts[b] + responses[b]])
        hs = lm(input_ids=seq, output_hidden_states=True).hidden_states
        start, t = len(prompts[b]), len(responses[b])
        want = torch.cat([hs[2][0, start : start + t], hs[0][0, start : start + t]], -1)
        torch.testing.assert_close(feats[b, :t], want, rtol=1e-4, atol=1e-5)
        assert mask[b].sum() == t and not feats[b, t:].any()


def test_feature_cache_matches_streaming(model, rollouts, trained, tmp_path):
    cache = tmp_path / "cache"
    head = train_head(
        [rollouts],
        model,
        tmp_path / "cached",
        epochs=8,
        patience=8,
        cache_dir=cache,
        cache_budget_gb=1.0,
        **FAST,
    )
    streamed = trained[0]
    assert (
        head.training_info["feature_cache"] is True
        and len(list(cache.glob("*/features.f16"))) == 1
    )
    torch.testing.assert_close(
        head.linear.weight, streamed.linear.weight, rtol=0, atol=2e-3
    )
    for k in ("auroc", "within_auroc", "val_bce"):
        assert head.training_info["metrics"][k] == pytest.approx(
            streamed.training_info["metrics"][k], abs=2e-3
        )
    # the cached features are the streamed ones up to fp16 rounding; a too small budget streams
    lm, tok = load_base_model(model, device="cpu")
    data = TrainingData.load([rollouts], tok, 1024)
    extractor = FeatureExtractor(lm, (0, 1, 2), tok.pad_token_id)
    kwargs = {
        "batch_size": 8,
        "key": json.dumps([model, None, "torch.float32"]),
        "cache_dir": cache,
        "progress": False,
    }
    cached = feature_source(
        extractor, data.prompts, data.responses, cache_budget_gb=1.0, **kwargs
    )
    assert isinstance(cached, FeatureCache)
    (fc, mc), (fs, ms) = (
        cached([3, 40, 41]),
        extractor(
            [data.prompts[i] for i in (3, 40, 41)],
            [data.responses[i] for i in (3, 40, 41)],
        ),
    )
    assert torch.equal(mc, ms)
    torch.testing.assert_close(fc, fs, rtol=1e-3, atol=1e-3)
    assert not isinstance(
        feature_source(
            extractor, data.prompts, data.responses, cache_budget_gb=1e-9, **kwargs
        ),
        FeatureCache,
    )


def test_feature_cache_of_a_subset_is_copied_from_a_cached_superset(
    model, rollouts, tmp_path
):
    """After an all-layers cache exists, a cache of some of its entries is copied from its columns, without running
    the model, and holds the same numbers as one built by the model."""
    lm, tok = load_base_model(model, device="cpu")
    data = TrainingData.load([rollouts], tok, 1024)
    kwargs = {"batch_size": 8, "key": "k", "progress": False}
    FeatureCache.open_or_build(
        tmp_path / "a",
        FeatureExtractor(lm, (0, 1, 2), tok.pad_token_id),
        data.prompts,
        data.responses,
        **kwargs,
    )
    forwards = []
    lm.register_forward_pre_hook(lambda *a: forwards.append(1))
    subset = FeatureExtractor(lm, (2, 0), tok.pad_token_id)
    copied = FeatureCache.open_or_build(
        tmp_path / "a", subset, data.prompts, data.responses, **kwargs
    )
    assert not forwards and len(list((tmp_path / "a").glob("*/meta.json"))) == 2
    built = FeatureCache.open_or_build(
        tmp_path / "b", subset, data.prompts, data.responses, **kwargs
    )
    assert forwards
    idx = list(range(0, len(data.responses), 7))
    assert all(torch.equal(a, b) for a, b in zip(copied(idx), built(idx), strict=True))


def test_feature_cache_build_resumes_after_an_interruption(
    model, rollouts, tmp_path, monkeypatch
):
    """A build stopped after 3 batches (Ctrl-C) resumes with the 4th and ends with the features of a straight one."""
    lm, tok = load_base_model(model, device="cpu")
    data = TrainingData.load([rollouts], tok, 1024)
    kwargs = {"batch_size": 8, "key": "k", "progress": False}
    extractor = FeatureExtractor(lm, (0, 2), tok.pad_token_id)
    monkeypatch.setattr(FeatureCache, "RECORD_EVERY", 0.0)  # record every batch
    fed, stop = [], [4]
    real = FeatureExtractor.__call__

    def stopped(self, prompts, responses):
        if len(fed) + 1 == stop[0]:
            raise KeyboardInterrupt
        fed.append(len(responses))
        return real(self, prompts, responses)

    monkeypatch.setattr(FeatureExtractor, "__call__", stopped)
    args = (extractor, data.prompts, data.responses)
    with pytest.raises(KeyboardInterrupt):
        FeatureCache.open_or_build(tmp_path / "a", *args, **kwargs)
    first, stop[0] = sum(fed), 0
    resumed = FeatureCache.open_or_build(tmp_path / "a", *args, **kwargs)
    assert len(fed) > 3 and sum(fed) == len(data.responses)  # each response once
    assert not list((tmp_path / "a").glob("*/partial.json"))
    straight = FeatureCache.open_or_build(tmp_path / "b", *args, **kwargs)
    assert first and sum(fed) == len(data.responses) * 2
    idx = list(range(len(data.responses)))
    assert all(
        torch.equal(a, b) for a, b in zip(resumed(idx), straight(idx), strict=True)
    )


@pytest.mark.parametrize("damage", ["features cut short", "meta.json garbled"])
def test_a_damaged_feature_cache_is_built_again(model, rollouts, tmp_path, damage):
    """A cache whose features file was cut short (a full disk, a copy stopped half-way) or whose records are not
    JSON is built again by the model, not read as features or a crash."""
    lm, tok = load_base_model(model, device="cpu")
    data = TrainingData.load([rollouts], tok, 1024)
    args = (
        FeatureExtractor(lm, (0, 2), tok.pad_token_id),
        data.prompts,
        data.responses,
    )
    kwargs = {"batch_size": 8, "key": "k", "progress": False}
    idx = list(range(0, len(data.responses), 5))
    good = FeatureCache.open_or_build(tmp_path, *args, **kwargs)(idx)
    (directory,) = [p.parent for p in tmp_path.glob("*/meta.json")]
    if damage == "features cut short":
        with open(directory / FeatureCache.FEATURES, "r+b") as f:
            f.truncate(1000)
    else:
        (directory / FeatureCache.META).write_text('{"key": ')
    forwards = []
    lm.register_forward_pre_hook(lambda *a: forwards.append(1))
    again = FeatureCache.open_or_build(tmp_path, *args, **kwargs)
    assert forwards and all(
        torch.equal(a, b) for a, b in zip(again(idx), good, strict=True)
    )
    forwards.clear()
    FeatureCache.open_or_build(tmp_path, *args, **kwargs)
    assert not forwards


def test_cli_train(model, rollouts, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    out = tmp_path / "head"
    args = parser.parse_args(
        [
            str(rollouts),
            "--base-model",
            model,
            "--out",
            str(out),
            "--layers",
            "-1",
            "1",
            "--no-gate",
            "--epochs",
            "2",
            "--lr",
            "1e-2",
            "--device",
            "cpu",
        ]
    )
    cmd_train(args)
    head = SwiftHead.from_pretrained(out)
    assert head.layers == (2, 1) and not head.gate and head.training_info["epochs"] == 2
    assert "best epoch" in capsys.readouterr().out
