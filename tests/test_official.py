"""Importing the SWIFT authors' checkpoints: the imported head gives the authors' R, and bad files are clear errors."""

from __future__ import annotations

import argparse

import pytest
import torch

from lm_eval_swift.commands import add_import_arguments
from lm_eval_swift.swift.features import FeatureExtractor, load_base_model
from lm_eval_swift.swift.heads import SwiftHead
from lm_eval_swift.swift.official import (
    OfficialCheckpointError,
    cmd_import,
    import_official,
)
from lm_eval_swift.swift.rescoring import rescore


PAIRS = [
    ("<s><|user|>1+1?</s><|assistant|>", "2, since one and one make two."),
    ("<s><|user|>hi</s><|assistant|>", "hello"),
    ("<s>x", "y z"),
]


@pytest.fixture(scope="module")
def lm(tiny_model_factory):
    path = str(tiny_model_factory("llama"))
    model, tok = load_base_model(path, device="cpu")
    prompts = [tok.encode(p, add_special_tokens=False) for p, _ in PAIRS]
    responses = [
        tok.encode(r, add_special_tokens=False) + [tok.eos_token_id] for _, r in PAIRS
    ]
    return path, model, prompts, responses


def authors_reward(model, prompt, response, state, layers=None, logits=False) -> float:
    """The authors' LinearRewardModel on their features, from one unpadded forward with output_hidden_states."""
    out = model(input_ids=torch.tensor([prompt + response]), output_hidden_states=True)
    s, e = len(prompt), len(prompt) + len(response)
    if logits:
        x = out.logits[0, s:e]
    else:
        keys = sorted(range(len(out.hidden_states)) if layers is None else layers)
        x = torch.cat([out.hidden_states[k][0, s:e] for k in keys], dim=-1)
    if "fused_layer.weight" in state:
        y = x @ state["fused_layer.weight"].T + state["fused_layer.bias"]
        g = torch.sigmoid(y[:, 0])
        return float((g * y[:, 1]).sum() / g.sum().clamp(min=1e-8))
    y = x @ state["reward_layer.weight"].T + state["reward_layer.bias"]
    return float(y[:, 0].sum() / len(y))


def checkpoint(tmp_path, n_features: int, gated: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows, prefix = (2, "fused_layer") if gated else (1, "reward_layer")
    state = {
        f"{prefix}.weight": torch.randn(rows, n_features, generator=g),
        f"{prefix}.bias": torch.randn(rows, generator=g),
    }
    torch.save(state, tmp_path / "reward_model.pt")
    return tmp_path / "reward_model.pt", state


@pytest.mark.parametrize(
    "gated, layers, logits, n_entries",
    [
        (True, None, False, 3),
        (False, None, False, 3),
        (True, [-1, 1], False, 2),
        (False, [2, 0], False, 2),
        (True, None, True, None),
    ],
    ids=["gated", "gateless", "layer-subset", "gateless-subset", "logits"],
)
def test_import_reproduces_authors_reward(
    lm, tmp_path, gated, layers, logits, n_entries
):
    path, model, prompts, responses = lm
    n_features = (
        model.config.vocab_size if logits else n_entries * model.config.hidden_size
    )
    file, state = checkpoint(tmp_path, n_features, gated)
    head = import_official(file, path, tmp_path / "head", layers=layers, logits=logits)
    want = torch.tensor(
        [
            authors_reward(model, p, r, state, layers, logits)
            for p, r in zip(prompts, responses, strict=True)
        ]
    )

    loaded = SwiftHead.from_pretrained(tmp_path / "head")
    assert loaded.gate == gated and loaded.kind == (
        "logits" if logits else "hidden_states"
    )
    assert loaded.training_info["imported_from"] == str(file.resolve())
    features, mask = FeatureExtractor(model, loaded.entries)(
        prompts, responses
    )  # batched, right-padded
    torch.testing.assert_close(
        loaded.reward(features, mask).detach(), want, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        rescore(model, [loaded], prompts, responses, disable_tqdm=True)[:, 0],
        want,
        rtol=1e-4,
        atol=1e-4,
    )
    torch.testing.assert_close(head.linear.weight, loaded.linear.weight)


def test_wrong_feature_count_is_a_clear_error(lm, tmp_path):
    path, model, _, _ = lm
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    file, _ = checkpoint(tmp_path, 2 * hidden, gated=True)
    with pytest.raises(
        OfficialCheckpointError,
        match=rf"F = {2 * hidden} features.*F = {3 * hidden}.*2 hidden-state entries",
    ):
        import_official(file, path, tmp_path / "head")
    assert not (tmp_path / "head").exists()
    with pytest.raises(
        OfficialCheckpointError, match=rf"F = {2 * hidden}.*vocab_size {vocab}"
    ):
        import_official(file, path, tmp_path / "head", logits=True)
    file, _ = checkpoint(tmp_path, vocab, gated=False)
    with pytest.raises(OfficialCheckpointError, match="pass --logits"):
        import_official(file, path, tmp_path / "head", layers=[0, 1])


def test_not_an_authors_checkpoint(lm, tmp_path):
    path = lm[0]
    bad = tmp_path / "bad.pt"
    torch.save(
        {"linear.weight": torch.zeros(2, 96), "linear.bias": torch.zeros(2)}, bad
    )
    with pytest.raises(OfficialCheckpointError, match="expected keys.*found"):
        import_official(bad, path, tmp_path / "head")
    torch.save(
        {"fused_layer.weight": torch.zeros(3, 96), "fused_layer.bias": torch.zeros(3)},
        bad,
    )
    with pytest.raises(OfficialCheckpointError, match=r"expected \[2, F\]"):
        import_official(bad, path, tmp_path / "head")
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(OfficialCheckpointError, match="not readable"):
        import_official(bad, path, tmp_path / "head")
    with pytest.raises(OfficialCheckpointError, match="not both"):
        import_official(bad, path, tmp_path / "head", layers=[1], logits=True)


def test_cli_import(lm, tmp_path, capsys):
    path, model, _, _ = lm
    file, _ = checkpoint(tmp_path, 2 * model.config.hidden_size, gated=True)
    parser = argparse.ArgumentParser()
    add_import_arguments(parser)
    cmd_import(
        parser.parse_args(
            [
                str(file),
                "--base-model",
                path,
                "--layers",
                "2",
                "0",
                "--out",
                str(tmp_path / "head"),
            ]
        )
    )
    head = SwiftHead.from_pretrained(tmp_path / "head")
    assert head.layers == (0, 2) and head.gate
    assert "saved to" in capsys.readouterr().out
