"""SwiftHead: the reward formula, the disk format, compatibility checks and head discovery."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig

from lm_eval_swift.swift.heads import (
    HeadError,
    HeadMismatchError,
    SwiftHead,
    resolve_heads,
    swift_reward,
)


MODEL = "/models/tiny-llama"
CONFIG = LlamaConfig(
    num_hidden_layers=3,
    hidden_size=8,
    intermediate_size=16,
    num_attention_heads=2,
    vocab_size=20,
)


def make_head(**kw) -> SwiftHead:
    torch.manual_seed(0)
    return SwiftHead.for_model(CONFIG, MODEL, **kw)


@pytest.fixture
def heads_env(tmp_path, monkeypatch):
    """An empty $LM_EVAL_SWIFT_HEADS dir (the repo's heads/ stays searched after it)."""
    monkeypatch.setenv("LM_EVAL_SWIFT_HEADS", str(tmp_path / "heads"))
    (tmp_path / "heads").mkdir()
    return tmp_path / "heads"


@pytest.mark.parametrize("gate", [True, False])
def test_swift_reward_matches_direct_sum(gate):
    torch.manual_seed(0)
    parts = torch.randn(3, 5, 2)
    mask = torch.tensor(
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool
    )
    got = swift_reward(parts, mask, gate)
    for b in range(3):
        g, r = torch.sigmoid(parts[b, :, 0]).tolist(), parts[b, :, 1].tolist()
        ts = [t for t in range(5) if mask[b, t]]
        if gate:
            want = sum(g[t] * r[t] for t in ts) / max(sum(g[t] for t in ts), 1e-8)
        else:
            want = sum(r[t] for t in ts) / len(ts) if ts else 0.0
        assert got[b].item() == pytest.approx(want, rel=1e-6, abs=1e-7)


def test_reward_is_linear_in_entries():
    head = make_head(layers=[1, -1])
    assert head.layers == (1, 3) and head.linear.in_features == 16
    feats = torch.randn(2, 4, 16)
    per_entry, bias = head.projections()
    split = feats.split(8, dim=-1)
    parts = (
        sum(h @ per_entry[e].T for e, h in zip(head.entries, split, strict=True)) + bias
    )
    torch.testing.assert_close(head(feats), parts)
    assert head.reward(feats, torch.ones(2, 4)).shape == (2,)


@pytest.mark.parametrize(
    "kw",
    [{}, {"layers": [2, 3], "gate": False}, {"kind": "logits", "name": "logit-head"}],
)
def test_save_load_roundtrip(tmp_path, kw):
    head = make_head(training={"steps": 3}, **kw)
    head.save_pretrained(tmp_path / "h")
    back = SwiftHead.from_pretrained(tmp_path / "h")
    assert back.config() == head.config()
    feats = torch.randn(2, 3, head.linear.in_features)
    torch.testing.assert_close(back(feats), head(feats))
    assert (
        json.loads((tmp_path / "h" / "config.json").read_text())["base_model"][
            "vocab_size"
        ]
        == 20
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_hidden_layers", 4, "num_hidden_layers: head expects 3, model has 4"),
        ("hidden_size", 16, "hidden_size: head expects 8, model has 16"),
        ("vocab_size", 21, "vocab_size: head expects 20, model has 21"),
    ],
)
def test_check_compatible_dims(field, value, message):
    other = LlamaConfig(**{**CONFIG.to_dict(), field: value})
    with pytest.raises(HeadMismatchError, match=message):
        make_head().check_compatible(other, MODEL)


def test_check_compatible_name():
    make_head().check_compatible(CONFIG, "/elsewhere/tiny-llama/")
    with pytest.raises(
        HeadMismatchError, match="made for '/models/tiny-llama', model is 'org/other'"
    ):
        make_head().check_compatible(CONFIG, "org/other")


def _corrupt(path, how):
    if how == "missing config":
        (path / "config.json").unlink()
    elif how == "bad json":
        (path / "config.json").write_text("{nope")
    elif how == "missing field":
        cfg = json.loads((path / "config.json").read_text())
        del cfg["base_model"]
        (path / "config.json").write_text(json.dumps(cfg))
    elif how == "corrupt safetensors":
        (path / "head.safetensors").write_bytes(b"\x00garbage" * 10)
    elif how == "missing weights":
        (path / "head.safetensors").unlink()
    else:
        from safetensors.torch import save_file

        tensors = {
            "wrong shape": {
                "linear.weight": torch.zeros(2, 5),
                "linear.bias": torch.zeros(2),
            },
            "missing key": {"linear.weight": torch.zeros(2, 32)},
            "nan": {
                "linear.weight": torch.full((2, 32), float("nan")),
                "linear.bias": torch.zeros(2),
            },
        }[how]
        save_file(tensors, path / "head.safetensors")


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing config", "no config.json"),
        ("bad json", "unreadable"),
        ("missing field", "missing or malformed field"),
        ("corrupt safetensors", "corrupt safetensors"),
        ("missing weights", "no head.safetensors"),
        ("wrong shape", r"shape \(2, 5\)"),
        ("missing key", "expected"),
        ("nan", "NaN"),
    ],
)
def test_broken_head_files(tmp_path, how, message):
    make_head().save_pretrained(tmp_path / "h")
    _corrupt(tmp_path / "h", how)
    with pytest.raises(HeadError, match=message):
        SwiftHead.from_pretrained(tmp_path / "h")
    with pytest.raises(HeadError, match=message):
        resolve_heads(str(tmp_path / "h"), MODEL, CONFIG)


def test_resolve_explicit_paths_names_and_aliases(tmp_path, heads_env):
    make_head(name="hs").save_pretrained(tmp_path / "a")
    make_head(kind="logits", name="lg").save_pretrained(heads_env / "lg-head")
    heads = resolve_heads(f"{tmp_path / 'a'}, lg-head", MODEL, CONFIG)
    assert list(heads) == ["swift", "lg"] and heads["lg"].kind == "logits"
    heads = resolve_heads(f"mine={tmp_path / 'a'},other=lg-head", MODEL, CONFIG)
    assert list(heads) == ["mine", "other"]
    with pytest.raises(HeadError, match="two SWIFT heads are called 'x'"):
        resolve_heads(f"x={tmp_path / 'a'},x=lg-head", MODEL, CONFIG)
    with pytest.raises(HeadError, match="'nowhere' not found"):
        resolve_heads("nowhere", MODEL, CONFIG)
    with pytest.raises(
        HeadError, match="not loadable from the Hub"
    ):  # HF_HUB_OFFLINE=1 in the tests
        resolve_heads("some-org/some-head", MODEL, CONFIG)
    with pytest.raises(HeadMismatchError):
        resolve_heads(str(tmp_path / "a"), "org/other-model", CONFIG)
    assert (
        resolve_heads("none", MODEL, CONFIG)
        == resolve_heads("", MODEL, CONFIG)
        == resolve_heads("off", MODEL, CONFIG)
        == {}
    )


def test_resolve_auto(tmp_path, heads_env, caplog):
    caplog.set_level("INFO", logger="lm_eval_swift.swift.heads")
    assert resolve_heads("auto", MODEL, CONFIG) == {}
    assert (
        "heads=auto: no SWIFT head for model 'tiny-llama'" in caplog.text
    )  # says that it found none
    caplog.clear()
    assert (
        resolve_heads("none", MODEL, CONFIG) == {} and not caplog.records
    )  # asked for none: nothing to say
    SwiftHead.for_model(CONFIG, "org/unrelated").save_pretrained(
        heads_env / "unrelated"
    )
    (heads_env / "not-a-head").mkdir()
    assert resolve_heads(None, MODEL, CONFIG) == {}
    make_head(name="first").save_pretrained(heads_env / "first")
    caplog.clear()
    heads = resolve_heads(None, "hub-org/tiny-llama", CONFIG)  # matched on the basename
    assert list(heads) == ["swift"] and heads["swift"].name == "first"
    assert (
        f"heads=auto: SWIFT head for model 'tiny-llama': {heads_env / 'first'}"
        in caplog.text
    )  # says which
    make_head(name="second").save_pretrained(heads_env / "second")
    with pytest.raises(
        HeadError, match="several SWIFT heads match model 'tiny-llama'.*first.*second"
    ):
        resolve_heads("auto", MODEL, CONFIG)


def test_head_refuses_other_weights_of_the_same_shape(tmp_path):
    """A head records a probe of its base model's embeddings: a same-named, same-shaped model with other weights is
    refused; the same weights in bf16 are accepted; a head saved without a probe stays loadable and unchecked."""
    from lm_eval_swift.toy_models import char_tokenizer, random_model

    tok = char_tokenizer()
    trained_on, other = (
        random_model(tokenizer=tok, seed=0),
        random_model(tokenizer=tok, seed=1),
    )
    name = "/models/tiny-llama"
    head = SwiftHead.for_model(trained_on.config, name, weights=trained_on)
    assert len(head.base.embedding_probe) == 32
    head.save_pretrained(tmp_path / "h")
    assert json.loads((tmp_path / "h" / "config.json").read_text())["base_model"][
        "embedding_probe"
    ]
    assert list(
        resolve_heads(str(tmp_path / "h"), name, trained_on.config, model=trained_on)
    ) == ["swift"]
    assert resolve_heads(
        str(tmp_path / "h"),
        name,
        trained_on.config,
        model=trained_on.to(torch.bfloat16),
    )
    with pytest.raises(HeadMismatchError, match="weights: .*other weights"):
        resolve_heads(str(tmp_path / "h"), name, other.config, model=other)
    old = json.loads((tmp_path / "h" / "config.json").read_text())
    del old["base_model"]["embedding_probe"]  # as heads saved before the probe existed
    (tmp_path / "h" / "config.json").write_text(json.dumps(old))
    assert resolve_heads(str(tmp_path / "h"), name, other.config, model=other)
