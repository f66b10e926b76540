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

from lm_eval_swift.confidence import CONFIDENCE_SCORERS, ConfidenceParams
from lm_eval_swift.decoding import Sampling
from lm_eval_swift.harness.models import HFSwiftLM, encode_prompt
from lm_eval_swift.swift.heads import HeadError, HeadMismatchError, SwiftHead
from lm_eval_swift.swift.rescoring import rescore, teacher_forced_scores


torch.set_num_threads(1)
CONTEXTS = ["Hello", "World! ", "2+2="]
SAMPLE = {
    "until": ["q", "z", "Q"],
    "max_gen_toks": 40,
    "do_sample": True,
    "temperature": 1.0,
}


def requests(gen_kwargs, n=6, contexts=CONTEXTS) -> list[Instance]:
    """n repeats of each context, interleaved (lm-eval sends repeats as identical requests)."""
    return [
        Instance("generate_until", {}, (ctx, dict(gen_kwargs)), 0)
        for _ in range(n)
        for ctx in contexts
    ]


def save_heads(heads, directory) -> str:
    return ",".join(f"{h.name}={h.save_pretrained(directory / h.name)}" for h in heads)


# Mistral with an 8-token sliding window, shorter than prompt + response: its layers keep HF's sliding-window cache
# (only full-attention layers are preallocated), and the reference's full forward masks beyond the window.
ARCHS = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "mistral-window8": {"sliding_window": 8},
}


@pytest.fixture(scope="module", params=list(ARCHS))
def lm(request, tiny_model_factory, tmp_path_factory):
    path = tiny_model_factory(
        request.param.split("-")[0], num_hidden_layers=4, **ARCHS[request.param]
    )
    heads = make_heads(AutoConfig.from_pretrained(path), str(path))
    spec = save_heads(heads, tmp_path_factory.mktemp("heads"))
    return HFSwiftLM(
        pretrained=str(path),
        device="cpu",
        batch_size=4,
        heads=spec,
        confidence="all",
        sample_cache=None,
    )


@pytest.mark.parametrize("batch_size", [4, 16])
def test_captured_scores_match_rescoring_and_reference(lm, batch_size, monkeypatch):
    """Batch 4 < N=6: questions follow each other through the batch; 16: packed, the 3 prompts (4, 5 and 7 tokens)
    side by side. Either way rows finish early and waiting rows take their places."""
    monkeypatch.setattr(lm, "batch_size_per_gpu", batch_size)
    reqs = requests(SAMPLE)
    out = lm.generate_until(reqs, disable_tqdm=True)
    assert {o.finish for o in out} == {"eos", "stop", "length"}
    for o in out:
        assert {
            "eos": o.token_ids[-1] == lm.tokenizer.eos_token_id,
            "length": len(o.token_ids) == 40,
            "stop": not any(s in o for s in SAMPLE["until"]),
        }[o.finish]
    for req, o in zip(reqs, out, strict=True):
        assert o.prompt_token_ids == tuple(encode_prompt(lm, req.args[0], 40))
    heads, aliases = list(lm.heads.values()), list(lm.heads)
    prompts, responses = [o.prompt_token_ids for o in out], [o.token_ids for o in out]
    captured = torch.tensor([[o.scores[a] for a in aliases] for o in out])
    rescored = rescore(
        lm.model, heads, prompts, responses, batch_size=5, disable_tqdm=True
    )
    reference = reference_rewards(lm.model, heads, prompts, responses)
    torch.testing.assert_close(captured, reference, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(rescored, reference, rtol=1e-3, atol=1e-5)
    # the confidence scores captured from the sampler's logits == the teacher-forced pass's, stop strings cut too
    _, confidence = teacher_forced_scores(
        lm.model, [], prompts, responses, batch_size=5, confidence=ConfidenceParams()
    )
    for o, want in zip(out, confidence, strict=True):
        assert set(want) == set(CONFIDENCE_SCORERS) <= set(o.scores)
        assert max(abs(o.scores[n] - want[n]) for n in want) <= 1e-4
    for q in range(len(CONTEXTS)):  # the best-of-N pick per question and head
        rows = slice(q, None, len(CONTEXTS))
        assert (
            captured[rows].argmax(0).tolist()
            == rescored[rows].argmax(0).tolist()
            == reference[rows].argmax(0).tolist()
        )


def test_samples_do_not_depend_on_batch_size_packing_or_heads(lm, monkeypatch):
    """The same samples and scores whatever the batch: one row at a time, 4 rows of one question, and packed
    batches of 4, 6 or all 12 rows mixing the questions' prompts of different lengths (4, 5 and 7 tokens)."""
    reqs = requests({**SAMPLE, "max_gen_toks": 20}, n=4)
    assert len({len(encode_prompt(lm, c, 20)) for c in CONTEXTS}) == len(CONTEXTS)
    out4 = lm.generate_until(reqs, disable_tqdm=True)
    runs = []
    for batch_size, packing in [(1, True), (4, False), (6, True), (12, True)]:
        monkeypatch.setattr(lm, "batch_size_per_gpu", batch_size)
        monkeypatch.setattr(lm, "packing", packing)
        runs.append(lm.generate_until(reqs, disable_tqdm=True))
    for out in runs:
        assert [(str(a), a.token_ids, a.finish) for a in out] == [
            (str(b), b.token_ids, b.finish) for b in out4
        ]
        for a, b in zip(out, out4, strict=True):
            assert a.scores == pytest.approx(b.scores, rel=1e-4, abs=1e-6)
    assert (
        len({o.finish for o in out4}) > 1
    )  # rows finish at different steps: places are refilled
    assert len({o.token_ids for o in out4}) > len(
        CONTEXTS
    )  # the repeats are different samples
    monkeypatch.setattr(lm, "projector", None)
    monkeypatch.setattr(lm, "heads", {})
    monkeypatch.setattr(lm, "confidence_params", None)
    plain = lm.generate_until(reqs, disable_tqdm=True)
    assert [(str(a), a.token_ids) for a in plain] == [
        (str(b), b.token_ids) for b in out4
    ]
    assert all(o.scores == {} for o in plain)


def test_greedy_equals_hflm(lm, monkeypatch):
    monkeypatch.setattr(
        lm, "_max_length", 30
    )  # left-truncates the long context to 30 - 20 tokens
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
    SwiftHead.for_model(
        AutoConfig.from_pretrained(path), f"some-org/{path.name}"
    ).save_pretrained(tmp_path / "mine")
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
        {
            "linear.weight": torch.full((2, 3 * config.hidden_size), float("nan")),
            "linear.bias": torch.zeros(2),
        },
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
        (
            head_for(num_hidden_layers=3),
            HeadMismatchError,
            "num_hidden_layers: head expects 3, model has 2",
        ),
        (head_for(vocab_size=config.vocab_size + 1), HeadMismatchError, "vocab_size"),
        (
            head_for(name="org/another-model"),
            HeadMismatchError,
            "made for 'org/another-model'",
        ),
        (nan, HeadError, "NaN"),
        (no_config, HeadError, "no config.json"),
        (corrupt, HeadError, "corrupt safetensors"),
    ]


def test_wrong_heads_fail_in_init(tiny_model_factory, tmp_path, monkeypatch):
    path = tiny_model_factory("llama")
    sampled = []
    monkeypatch.setattr(
        "lm_eval_swift.harness.models.decode", lambda *a, **k: sampled.append(a)
    )
    for head_dir, error, message in _broken_heads(path, tmp_path):
        with pytest.raises(error, match=message):
            HFSwiftLM(pretrained=str(path), device="cpu", heads=f"{head_dir}")
    assert not sampled


def test_sampling_is_inverse_cdf_of_hf_warped_probs():
    logits = torch.tensor([[0.2, 0.3, 0.5]]).log().expand(5, 3)
    u = torch.tensor([0.0, 0.1999, 0.2001, 0.4999, 0.9999])
    assert Sampling(True).pick(logits, u).tolist() == [0, 0, 1, 1, 2]
    assert Sampling(True, top_k=2).pick(logits, u).tolist() == [
        1,
        1,
        1,
        2,
        2,
    ]  # probs 0, .375, .625
    assert Sampling(True, top_p=0.4).pick(logits, u).tolist() == [2] * 5
    assert Sampling(False, temperature=0.0).pick(logits, u).tolist() == [2] * 5
    with pytest.raises(ValueError, match="temperature > 0"):
        Sampling(True, temperature=0.0)


def test_unsupported_gen_kwargs(lm):
    with pytest.raises(
        ValueError, match=r"does not support generation kwargs \['num_beams'\]"
    ):
        lm.generate_until(requests({**SAMPLE, "num_beams": 2}, n=1), disable_tqdm=True)
    assert json.loads(json.dumps(SAMPLE)) == SAMPLE  # requests are not mutated


@pytest.mark.parametrize(
    "arch, window, attn",
    [("llama", None, "sdpa"), ("llama", None, "eager"), ("mistral", 4, "sdpa")],
)
def test_packed_cache_decodes_like_hf_dynamic_cache(
    tiny_model_factory, arch, window, attn
):
    """Rows of three prompts of different lengths decode in one PackedCache; midway a row leaves and a fourth
    prompt's row takes its place: every row's logits equal those of its prompt decoded alone with HF's
    DynamicCache (with a 4-token sliding window: shorter than every sequence; sdpa's boolean masks and eager's
    additive ones). Too many rows is an error; so is an attention that takes no per-row mask."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from lm_eval_swift.decoding import PackedCache

    kw = {} if window is None else {"sliding_window": window}
    path = tiny_model_factory(arch, num_hidden_layers=4, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()
    prompts = [[5, 9, 13], [4, 8, 15, 16, 23, 42, 7], [11, 12, 13, 14, 15], [30, 31]]
    feed = torch.randint(
        5, 60, (len(prompts), 8), generator=torch.Generator().manual_seed(0)
    )

    def prefill(p):
        cache = DynamicCache(config=model.config)
        logits = model(
            input_ids=torch.tensor([prompts[p]]), cache=cache, use_cache=True
        ).logits[:, -1]
        return cache, logits

    with torch.no_grad():
        want = {}
        for p in range(len(prompts)):
            cache, logits = prefill(p)
            want[p] = [logits[0]]
            for tok in feed[p]:
                want[p].append(
                    model(input_ids=tok.view(1, 1), cache=cache, use_cache=True).logits[
                        0, -1
                    ]
                )
        packed, rows = (
            PackedCache(model, rows=3),
            [],
        )  # rows: [prompt, tokens fed] per live row
        for p in range(3):
            cache, logits = prefill(p)
            packed.admit(cache, 1, len(prompts[p]) + 8)
            rows.append([p, 0])
            torch.testing.assert_close(logits[0], want[p][0])
        for step in range(8):
            if step == 4:
                order = packed.keep([True, False, True])
                rows = [rows[o] for o in order]
                cache, _ = prefill(3)
                packed.admit(cache, 1, len(prompts[3]) + 8)
                rows.append([3, 0])
            position_ids, mask = packed.step_inputs()
            tokens = torch.stack([feed[p, n] for p, n in rows])[:, None]
            logits = model(
                input_ids=tokens,
                position_ids=position_ids,
                attention_mask=mask,
                cache=packed,
                use_cache=True,
            ).logits[:, -1]
            packed.advance()
            for (p, n), got in zip(rows, logits, strict=True):
                torch.testing.assert_close(got, want[p][n + 1], rtol=1e-5, atol=1e-5)
            rows = [[p, n + 1] for p, n in rows]
        with pytest.raises(RuntimeError, match="4 rows exceed the 3 allocated"):
            packed.admit(cache, 1, 10)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(NotImplementedError, match="needs attn_implementation 'sdpa'"):
        PackedCache(model, 1)
