"""hf-swift: scores captured while sampling == rescoring == the output_hidden_states reference; seeds, greedy
equivalence with HFLM, and head errors raised before any sampling."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_heads, reference_rewards
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from safetensors.torch import save_file
from transformers import AutoConfig

from lm_eval_swift.heads import HeadError, HeadMismatchError, SwiftHead
from lm_eval_swift.models import HFSwiftLM, Sampling, encode_prompt
from lm_eval_swift.rescoring import rescore

torch.set_num_threads(1)
CONTEXTS = ["Hello", "World! ", "2+2="]
SAMPLE = {"until": ["q", "z", "Q"], "max_gen_toks": 40, "do_sample": True, "temperature": 1.0}


def requests(gen_kwargs, n=6, contexts=CONTEXTS) -> list[Instance]:
    """n repeats of each context, interleaved (lm-eval sends repeats as identical requests)."""
    return [Instance("generate_until", {}, (ctx, dict(gen_kwargs)), 0) for _ in range(n) for ctx in contexts]


def save_heads(heads, directory) -> str:
    return ",".join(f"{h.name}={h.save_pretrained(directory / h.name)}" for h in heads)


# Mistral with an 8-token sliding window, shorter than prompt + response: its layers keep HF's sliding-window cache
# (only full-attention layers are preallocated), and the reference's full forward masks beyond the window.
ARCHS = {"llama": {}, "mistral": {}, "qwen2": {}, "mistral-window8": {"sliding_window": 8}}


@pytest.fixture(scope="module", params=list(ARCHS))
def lm(request, tiny_model_factory, tmp_path_factory):
    path = tiny_model_factory(request.param.split("-")[0], num_hidden_layers=4, **ARCHS[request.param])
    heads = make_heads(AutoConfig.from_pretrained(path), str(path))
    spec = save_heads(heads, tmp_path_factory.mktemp("heads"))
    return HFSwiftLM(pretrained=str(path), device="cpu", batch_size=4, heads=spec, sample_cache=None)


def test_captured_scores_match_rescoring_and_reference(lm):
    reqs = requests(SAMPLE)
    out = lm.generate_until(reqs, disable_tqdm=True)
    assert {o.finish for o in out} == {"eos", "stop", "length"}
    for o in out:
        assert {
            "eos": o.token_ids[-1] == lm.tokenizer.eos_token_id,
            "length": len(o.token_ids) == 40,
            "stop": not any(s in o for s in SAMPLE["until"]),
        }[o.finish]
    for req, o in zip(reqs, out):
        assert o.prompt_token_ids == tuple(encode_prompt(lm, req.args[0], 40))
    heads, aliases = list(lm.heads.values()), list(lm.heads)
    prompts, responses = [o.prompt_token_ids for o in out], [o.token_ids for o in out]
    captured = torch.tensor([[o.scores[a] for a in aliases] for o in out])
    rescored = rescore(lm.model, heads, prompts, responses, batch_size=5, disable_tqdm=True)
    reference = reference_rewards(lm.model, heads, prompts, responses)
    torch.testing.assert_close(captured, reference, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(rescored, reference, rtol=1e-3, atol=1e-5)
    for q in range(len(CONTEXTS)):  # the best-of-N pick per question and head
        rows = slice(q, None, len(CONTEXTS))
        assert (
            captured[rows].argmax(0).tolist() == rescored[rows].argmax(0).tolist() == reference[rows].argmax(0).tolist()
        )


def test_samples_do_not_depend_on_batch_size_or_heads(lm, monkeypatch):
    reqs = requests({**SAMPLE, "max_gen_toks": 20}, n=4)
    out4 = lm.generate_until(reqs, disable_tqdm=True)
    monkeypatch.setattr(lm, "batch_size_per_gpu", 1)
    out1 = lm.generate_until(reqs, disable_tqdm=True)
    assert [(str(a), a.token_ids, a.finish) for a in out1] == [(str(b), b.token_ids, b.finish) for b in out4]
    for a, b in zip(out1, out4):
        assert a.scores == pytest.approx(b.scores, rel=1e-4, abs=1e-6)
    assert len({o.token_ids for o in out4}) > len(CONTEXTS)  # the repeats are different samples
    monkeypatch.setattr(lm, "projector", None)
    monkeypatch.setattr(lm, "heads", {})
    plain = lm.generate_until(reqs, disable_tqdm=True)
    assert [(str(a), a.token_ids) for a in plain] == [(str(b), b.token_ids) for b in out4]
    assert all(o.scores == {} for o in plain)


def test_greedy_equals_hflm(lm, monkeypatch):
    monkeypatch.setattr(lm, "_max_length", 30)  # left-truncates the long context to 30 - 20 tokens
    greedy = {"until": ["\n\n", "q"], "max_gen_toks": 20, "do_sample": False}
    contexts = [*CONTEXTS, "a long context " * 5]
    reqs = requests(greedy, n=2, contexts=contexts)
    ours = lm.generate_until(reqs, disable_tqdm=True)
    theirs = HFLM.generate_until(lm, reqs, disable_tqdm=True)
    assert [str(o) for o in ours] == theirs
    assert len(ours[3].prompt_token_ids) == 10 and ours[3] is ours[7]


def test_auto_head_and_no_heads(tiny_model_factory, tmp_path, monkeypatch):
    path = tiny_model_factory("llama")
    monkeypatch.setenv("LM_EVAL_SWIFT_HEADS", str(tmp_path))
    SwiftHead.for_model(AutoConfig.from_pretrained(path), f"some-org/{path.name}").save_pretrained(tmp_path / "mine")
    assert list(HFSwiftLM(pretrained=str(path), device="cpu").heads) == ["swift"]
    assert HFSwiftLM(pretrained=str(path), device="cpu", heads=None).heads == {}


def _broken_heads(path, tmp_path):
    """(head dir, expected error) for heads that must be refused for the model at ``path``."""
    config = AutoConfig.from_pretrained(path)

    def head_for(name=str(path), **changes):
        d = tmp_path / f"h{len(list(tmp_path.iterdir()))}"
        cfg = type(config)(**{**config.to_dict(), **changes})
        return SwiftHead.for_model(cfg, name).save_pretrained(d)

    nan, no_config, corrupt = head_for(), head_for(), head_for()
    save_file(
        {"linear.weight": torch.full((2, 3 * config.hidden_size), float("nan")), "linear.bias": torch.zeros(2)},
        nan / "head.safetensors",
    )
    (no_config / "config.json").unlink()
    (corrupt / "head.safetensors").write_bytes(b"not safetensors")
    return [
        (
            head_for(hidden_size=64, num_attention_heads=4),
            HeadMismatchError,
            "hidden_size: head expects 64, model has 32",
        ),
        (head_for(num_hidden_layers=3), HeadMismatchError, "num_hidden_layers: head expects 3, model has 2"),
        (head_for(vocab_size=config.vocab_size + 1), HeadMismatchError, "vocab_size"),
        (head_for(name="org/another-model"), HeadMismatchError, "made for 'org/another-model'"),
        (nan, HeadError, "NaN"),
        (no_config, HeadError, "no config.json"),
        (corrupt, HeadError, "corrupt safetensors"),
    ]


def test_wrong_heads_fail_in_init(tiny_model_factory, tmp_path, monkeypatch):
    path = tiny_model_factory("llama")
    sampled = []
    monkeypatch.setattr(HFSwiftLM, "sample_question", lambda *a, **k: sampled.append(a))
    for head_dir, error, message in _broken_heads(path, tmp_path):
        with pytest.raises(error, match=message):
            HFSwiftLM(pretrained=str(path), device="cpu", heads=f"{head_dir}")
    assert not sampled


def test_sampling_is_inverse_cdf_of_hf_warped_probs():
    logits = torch.tensor([[0.2, 0.3, 0.5]]).log().expand(5, 3)
    u = torch.tensor([0.0, 0.1999, 0.2001, 0.4999, 0.9999])
    assert Sampling(True).pick(logits, u).tolist() == [0, 0, 1, 1, 2]
    assert Sampling(True, top_k=2).pick(logits, u).tolist() == [1, 1, 1, 2, 2]  # probs 0, .375, .625
    assert Sampling(True, top_p=0.4).pick(logits, u).tolist() == [2] * 5
    assert Sampling(False, temperature=0.0).pick(logits, u).tolist() == [2] * 5
    with pytest.raises(ValueError, match="temperature > 0"):
        Sampling(True, temperature=0.0)


def test_unsupported_gen_kwargs(lm):
    with pytest.raises(ValueError, match=r"does not support generation kwargs \['num_beams'\]"):
        lm.generate_until(requests({**SAMPLE, "num_beams": 2}, n=1), disable_tqdm=True)
    assert json.loads(json.dumps(SAMPLE)) == SAMPLE  # requests are not mutated


def test_preallocated_cache_decodes_like_hf_dynamic_cache(tiny_model_factory):
    """Prefill, expand to 3 rows, decode, drop a row, decode: same logits as HF's DynamicCache; overflow is an error."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from lm_eval_swift.models import preallocated_cache

    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", num_hidden_layers=4)).eval()
    prompt = torch.tensor([[5, 9, 13, 17, 21]])
    steps = torch.randint(5, 60, (8, 3), generator=torch.Generator().manual_seed(0))
    caches = {"ours": preallocated_cache(model.config, 5 + 8), "hf": DynamicCache(config=model.config)}
    logits = {}
    with torch.no_grad():
        for name, cache in caches.items():
            model(input_ids=prompt, cache=cache, use_cache=True)
            cache.reorder_cache(torch.zeros(3, dtype=torch.long))
            out = []
            for t in range(8):
                if t == 4:
                    cache.reorder_cache(torch.tensor([0, 2]))
                rows = steps[t] if t < 4 else steps[t, [0, 2]]
                out.append(model(input_ids=rows[:, None], cache=cache, use_cache=True).logits[:, -1])
            logits[name] = out
        for a, b in zip(logits["ours"], logits["hf"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match="exceed the 13 allocated"):
            model(input_ids=steps[0, :2, None], cache=caches["ours"], use_cache=True)
